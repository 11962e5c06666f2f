//! `doorstep-hub`: the service that turns signed device confirmations into customer messages.
//!
//! ```text
//! doorstep-hub --print-default-config
//! doorstep-hub [--config FILE] serve
//! doorstep-hub [--config FILE] keygen [--force]
//! doorstep-hub [--config FILE] pubkey
//! doorstep-hub [--config FILE] device add --fleet F --device D --key FILE|ed25519:<hex> [--replace]
//! doorstep-hub [--config FILE] device list
//! doorstep-hub [--config FILE] device revoke --device D
//! doorstep-hub [--config FILE] apikey create --name NAME --scope SCOPE [--scope ...]
//! doorstep-hub [--config FILE] apikey list
//! doorstep-hub [--config FILE] apikey revoke NAME
//! doorstep-hub [--config FILE] audit [--limit N] [--key NAME]
//! doorstep-hub [--config FILE] broker-acl [--out FILE]
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use doorstep_hub::access::{self, Scope};
use doorstep_hub::config::{Config, default_config};
use doorstep_hub::ingest::now_ms;
use doorstep_hub::registry::parse_key_arg;
use doorstep_hub::store::{LiveStatus, Store, StoreError, StoreOptions};
use doorstep_proto::{DeviceId, FleetId};

/// Where the hub looks for its configuration by default.
const DEFAULT_CONFIG_PATH: &str = "/etc/doorstep/hub.toml";

#[derive(Debug, Parser)]
#[command(name = "doorstep-hub", version, about = "Doorstep hub: verify, reconcile, notify.")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Print the commented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: MQTT ingest and the HTTP API.
    Serve,
    /// Generate the hub's signing key (mode 0600) at `hub.key`.
    Keygen {
        /// Replace an existing key (every agent must then be given the new public key).
        #[arg(long)]
        force: bool,
        /// Key file; defaults to `hub.key` from the configuration.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print the hub's public key (`ed25519:<hex>`), for the agents' `uplink.hub_key`.
    Pubkey {
        /// Key file; defaults to `hub.key` from the configuration.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Manage the device registry.
    Device {
        #[command(subcommand)]
        action: DeviceCommand,
        /// Database; defaults to `hub.database` from the configuration.
        #[arg(long, global = true)]
        database: Option<PathBuf>,
    },
    /// Manage the keys order systems and staff use on the private API (`api.listen`).
    #[command(after_help = SCOPES_HELP)]
    Apikey {
        #[command(subcommand)]
        action: ApiKeyCommand,
        /// Database; defaults to `hub.database` from the configuration.
        #[arg(long, global = true)]
        database: Option<PathBuf>,
    },
    /// Show the newest audit log lines: every write through the private API, and every
    /// refused attempt, with key, path, subject, status and outcome.
    Audit {
        /// How many lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this key's lines.
        #[arg(long)]
        key: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Database; defaults to `hub.database` from the configuration.
        #[arg(long)]
        database: Option<PathBuf>,
    },
    /// Create the hub database's schema, or bring it to this build's version, and say
    /// which. `serve` does the same when it starts; run this first when moving to
    /// PostgreSQL (`hub.database = "postgres://user:password@host:5432/doorstep"`), or to
    /// check a server's durability settings before the hubs start.
    ///
    /// Moving a hub that already has data: stop it, then
    /// `doorstep-hub migrate --database postgres://... --copy-from /var/lib/doorstep/hub.db`
    /// copies every row into the new, empty PostgreSQL database in one transaction.
    Migrate {
        /// A SQLite file's path or a postgres:// URL; defaults to `hub.database` from the
        /// configuration.
        #[arg(long)]
        database: Option<PathBuf>,
        /// A stopped hub's SQLite file to copy into the PostgreSQL database (which must
        /// hold no rows yet); the file is brought to this build's schema first.
        #[arg(long, value_name = "SQLITE_FILE")]
        copy_from: Option<PathBuf>,
    },
    /// Write the broker's access rules (Mosquitto ACL) from the device registry.
    BrokerAcl(doorstep_hub::acl::BrokerAclArgs),
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device's public key.
    Add {
        /// The device's fleet.
        #[arg(long)]
        fleet: String,
        /// The device id.
        #[arg(long)]
        device: String,
        /// The `device.pub` file the agent's keygen wrote, or `ed25519:<hex>`.
        #[arg(long)]
        key: String,
        /// Rotate the key of an already registered device.
        #[arg(long)]
        replace: bool,
    },
    /// List registered devices.
    List,
    /// Stop trusting a device's key.
    Revoke {
        /// The device id.
        #[arg(long)]
        device: String,
    },
}

const SCOPES_HELP: &str = "Scopes:
  orders:write     create shipments, mark them dispatched, withdraw tracking links
  routes:write     post vans' routes (the hub signs them; the van drives them)
  shipments:read   read a shipment with its contacts, timeline and notifications
  metrics:read     read /metrics (for Prometheus)
  admin            all of the above

Example: an order system that creates shipments and reads them back:
  doorstep-hub apikey create --name shop-orders --scope orders:write --scope shipments:read
It sends `Authorization: Bearer dsk_...` to the API listener (api.listen).";

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print its token once (only a hash is kept: store the token in
    /// the order system's secret store now).
    Create {
        /// A name for the key: who uses it (`shop-orders`, `prometheus`).
        #[arg(long)]
        name: String,
        /// What it may do; repeat for several.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
    },
    /// List keys: name, scopes, created, last used, revoked.
    List,
    /// Revoke a key: requests with it are refused (401) from now on.
    Revoke {
        /// The key's name.
        name: String,
    },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text).ok_or_else(|| {
        format!("unknown scope {text:?}; one of: {}", Scope::ALL.map(Scope::as_str).join(", "))
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        std::io::stdout().write_all(default_config().as_bytes())?;
        return Ok(());
    }
    let Some(command) = cli.command else {
        bail!("no command given; try `doorstep-hub --help`");
    };
    match command {
        Command::Serve => serve(&cli.config),
        Command::Keygen { force, key } => keygen(&key_path(&cli.config, key)?, force),
        Command::Pubkey { key } => {
            let key = doorstep_hub::server::load_key(&key_path(&cli.config, key)?)?;
            writeln!(std::io::stdout(), "{}", key.public_key())?;
            Ok(())
        }
        Command::Device { action, database } => {
            let database = match database {
                Some(db) => db,
                None => load_config(&cli.config)?.hub.database,
            };
            device(&database, action)
        }
        Command::Apikey { action, database } => {
            let database = database_path(&cli.config, database)?;
            apikey(&database, action)
        }
        Command::Audit { limit, key, json, database } => {
            let database = database_path(&cli.config, database)?;
            audit(&database, limit, key.as_deref(), json)
        }
        Command::Migrate { database, copy_from } => {
            migrate(&database_path(&cli.config, database)?, copy_from.as_deref())
        }
        Command::BrokerAcl(args) => doorstep_hub::acl::run(&cli.config, args),
    }
}

fn migrate(database: &Path, copy_from: Option<&Path>) -> anyhow::Result<()> {
    let label = doorstep_hub::store::database_label(database);
    let mut out = std::io::stdout().lock();
    match doorstep_hub::store::database_url(database)? {
        Some(url) => {
            let (mut target, migrated) =
                Store::connect(url).with_context(|| format!("connecting to the hub database {label}"))?;
            if migrated.from == migrated.to {
                writeln!(out, "{label}: PostgreSQL schema at version {}, nothing to do", migrated.to)?;
            } else {
                writeln!(
                    out,
                    "{label}: PostgreSQL schema migrated from version {} to {}",
                    migrated.from, migrated.to
                )?;
            }
            if let Some(file) = copy_from {
                // Opening a missing path would create an empty database and copy nothing.
                anyhow::ensure!(
                    file.is_file(),
                    "--copy-from {}: no such file (give the stopped hub's SQLite database, hub.database in its configuration)",
                    file.display()
                );
                let source = open_store(file)?;
                let copied = source.copy_into(&mut target)?;
                let rows: u64 = copied.iter().map(|(_, n)| n).sum();
                for (table, n) in copied.iter().filter(|(_, n)| *n > 0) {
                    writeln!(out, "  {table}: {n} rows")?;
                }
                writeln!(
                    out,
                    "{label}: copied {rows} rows of {} tables from {}",
                    copied.len(),
                    file.display()
                )?;
            }
        }
        None if copy_from.is_some() => {
            anyhow::bail!(
                "--copy-from copies into PostgreSQL: give --database postgres://user:password@host:5432/doorstep"
            )
        }
        None => {
            let store = open_store(database)?;
            writeln!(out, "{label}: SQLite schema at version {}", store.schema_version()?)?;
        }
    }
    Ok(())
}

fn database_path(config: &Path, database: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match database {
        Some(db) => Ok(db),
        None => Ok(load_config(config)?.hub.database),
    }
}

fn open_store(database: &Path) -> anyhow::Result<Store> {
    Store::open(database, StoreOptions::default()).with_context(|| {
        format!("opening the hub database {}", doorstep_hub::store::database_label(database))
    })
}

fn apikey(database: &Path, action: ApiKeyCommand) -> anyhow::Result<()> {
    let mut store = open_store(database)?;
    let mut out = std::io::stdout().lock();
    match action {
        ApiKeyCommand::Create { name, scopes } => {
            access::check_name(&name)?;
            let scopes = access::scopes_text(&scopes)?;
            let key = access::issue(&ring::rand::SystemRandom::new())?;
            store.create_api_key(&name, &key.key_id, &key.digest, &scopes, now_ms()).map_err(|e| match e {
                StoreError::Exists(_) => anyhow::anyhow!(
                    "a key named {name:?} exists (or existed: names are never reused, so the audit log stays clear); choose another name"
                ),
                other => other.into(),
            })?;
            writeln!(out, "{}", key.token)?;
            writeln!(
                std::io::stderr(),
                "created API key {name:?} with scopes {scopes}. The token above is shown once: store it \
                 in the order system's secret store and send it as `Authorization: Bearer <token>`."
            )?;
        }
        ApiKeyCommand::List => {
            writeln!(
                out,
                "{:<24} {:<14} {:<44} {:<20} {:<20} revoked",
                "name", "key id", "scopes", "created", "last used"
            )?;
            for key in store.api_keys()? {
                let when = |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), utc);
                writeln!(
                    out,
                    "{:<24} {:<14} {:<44} {:<20} {:<20} {}",
                    key.name,
                    key.key_id,
                    key.scopes,
                    utc(key.created_ms),
                    when(key.last_used_ms),
                    when(key.revoked_ms)
                )?;
            }
        }
        ApiKeyCommand::Revoke { name } => {
            if !store.revoke_api_key(&name, now_ms())? {
                bail!("no API key named {name:?} (see `doorstep-hub apikey list`)");
            }
            writeln!(out, "revoked API key {name:?}: requests with it are refused from now on")?;
        }
    }
    Ok(())
}

fn audit(database: &Path, limit: usize, key: Option<&str>, json: bool) -> anyhow::Result<()> {
    let store = open_store(database)?;
    let mut out = std::io::stdout().lock();
    let entries = store.audit_entries(limit, key)?;
    if json {
        for entry in &entries {
            writeln!(out, "{}", serde_json::to_string(entry)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<24} {:<6} {:<44} {:<40} {:>6} outcome",
        "time (UTC)", "key", "method", "path", "subject", "status"
    )?;
    for e in &entries {
        writeln!(
            out,
            "{:<20} {:<24} {:<6} {:<44} {:<40} {:>6} {}",
            utc(e.at_ms),
            e.key_name.as_deref().unwrap_or("-"),
            e.method,
            e.path,
            e.subject.as_deref().unwrap_or("-"),
            e.status,
            e.outcome
        )?;
    }
    Ok(())
}

/// `2026-12-02 09:15:00`.
fn utc(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| {
        format!(
            "loading {} (write one with `doorstep-hub --print-default-config > {}`)",
            path.display(),
            path.display()
        )
    })
}

fn key_path(config: &Path, key: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match key {
        Some(k) => Ok(k),
        None => Ok(load_config(config)?.hub.key),
    }
}

fn keygen(path: &Path, force: bool) -> anyhow::Result<()> {
    use doorstep_runtime::keyfile::{self, KeyFileError};
    let public = match keyfile::create(path, force) {
        Err(KeyFileError::Exists { .. }) => bail!(
            "{} already exists; use --force to replace it (then give every agent the new public key)",
            path.display()
        ),
        other => other?,
    };
    writeln!(std::io::stdout(), "{public}")?;
    writeln!(std::io::stderr(), "wrote {} (mode 0600); give agents the public key above", path.display())?;
    Ok(())
}

fn device(database: &Path, action: DeviceCommand) -> anyhow::Result<()> {
    let mut store = Store::open(database, StoreOptions::default()).with_context(|| {
        format!("opening the hub database {}", doorstep_hub::store::database_label(database))
    })?;
    let mut out = std::io::stdout().lock();
    match action {
        DeviceCommand::Add { fleet, device, key, replace } => {
            let fleet = FleetId::new(fleet)?;
            let device = DeviceId::new(device)?;
            let key = parse_key_arg(&key)?;
            let record = store.add_device(&fleet, &device, &key, replace, now_ms())?;
            writeln!(out, "added {}/{} key {} ({})", record.fleet, record.device, record.key_id, record.key)?;
        }
        DeviceCommand::List => {
            writeln!(
                out,
                "{:<16} {:<24} {:<8} {:<8} {:<10} {:>6} {:<34} {:<16} public key",
                "fleet", "device", "status", "link", "agent", "outbox", "last position", "key id"
            )?;
            let live = store.live_statuses()?;
            let now = now_ms();
            for d in store.devices()? {
                let status = live.get(&d.device).cloned().unwrap_or_default();
                let (link, agent, outbox, position) = live_columns(&status, now);
                writeln!(
                    out,
                    "{:<16} {:<24} {:<8} {link:<8} {agent:<10} {outbox:>6} {position:<34} {:<16} {}",
                    d.fleet,
                    d.device,
                    d.status.as_str(),
                    d.key_id,
                    d.key
                )?;
            }
        }
        DeviceCommand::Revoke { device } => {
            let device = DeviceId::new(device)?;
            if !store.revoke_device(&device, now_ms())? {
                bail!("device {device} is not registered (see `doorstep-hub device list`)");
            }
            writeln!(out, "revoked {device}: its events are rejected from now on")?;
        }
    }
    Ok(())
}

/// The `device list` columns from what a van last said on its `state` and `pos` topics:
/// link (online, offline, or `-` before its first state message), agent version, outbox
/// depth when it came online, and the newest live position with its age.
fn live_columns(status: &LiveStatus, now_ms: i64) -> (String, String, String, String) {
    let link = match status.online {
        Some(true) => "online",
        Some(false) => "offline",
        None => "-",
    };
    let agent = status.agent_version.clone().unwrap_or_else(|| "-".into());
    let outbox = status.outbox_depth.map_or_else(|| "-".into(), |d| d.to_string());
    let position = match status.position {
        Some(p) => format!(
            "{:.5},{:.5} {} ago",
            f64::from(p.lat_e7) / 1e7,
            f64::from(p.lon_e7) / 1e7,
            age(now_ms.saturating_sub(p.utc_ms))
        ),
        None => "-".into(),
    };
    (link.into(), agent, outbox, position)
}

/// A short age: `42s`, `17m`, `5h`, `3d`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn serve(config_path: &Path) -> anyhow::Result<()> {
    let settings =
        load_config(config_path)?.validate().with_context(|| format!("{}", config_path.display()))?;
    doorstep_runtime::logging::init("info");
    // reqwest and rumqttc are built without a default crypto provider: choose ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listeners = doorstep_hub::server::Listeners::bind(&settings).await?;
        doorstep_hub::server::serve(settings, listeners, doorstep_runtime::shutdown::signal()).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_hub::store::LivePosition;

    #[test]
    fn device_list_shows_link_agent_outbox_and_the_age_of_the_last_position() {
        let never = live_columns(&LiveStatus::default(), 0);
        assert_eq!(never, ("-".into(), "-".into(), "-".into(), "-".into()));
        let status = LiveStatus {
            online: Some(true),
            agent_version: Some("0.1.0".into()),
            outbox_depth: Some(3),
            state_ms: Some(1_000),
            position: Some(LivePosition {
                utc_ms: 1_000,
                lat_e7: 473_700_000,
                lon_e7: 85_400_000,
                accuracy_dm: None,
                received_ms: 1_000,
            }),
        };
        let (link, agent, outbox, position) = live_columns(&status, 1_000 + 125_000);
        assert_eq!((link.as_str(), agent.as_str(), outbox.as_str()), ("online", "0.1.0", "3"));
        assert_eq!(position, "47.37000,8.54000 2m ago");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(3 * 86_400_000), "3d");
    }
}
