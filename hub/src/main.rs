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
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use doorstep_hub::config::{Config, DEFAULT_CONFIG};
use doorstep_hub::ingest::now_ms;
use doorstep_hub::registry::parse_key_arg;
use doorstep_hub::store::{LiveStatus, Store, StoreOptions};
use doorstep_proto::{DeviceId, FleetId, SigningKey};

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        std::io::stdout().write_all(DEFAULT_CONFIG.as_bytes())?;
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
        Command::BrokerAcl(args) => doorstep_hub::acl::run(&cli.config, args),
    }
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
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.exists() && !force {
        bail!(
            "{} already exists; use --force to replace it (then give every agent the new public key)",
            path.display()
        );
    }
    let pkcs8 = SigningKey::generate_pkcs8(&ring::rand::SystemRandom::new())?;
    let key = SigningKey::from_pkcs8(&pkcs8)?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written with mode 0600 from the start, then renamed over the target: the private
    // key is never readable by others, not even for a moment.
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&pkcs8)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    writeln!(std::io::stdout(), "{}", key.public_key())?;
    writeln!(std::io::stderr(), "wrote {} (mode 0600); give agents the public key above", path.display())?;
    Ok(())
}

fn device(database: &Path, action: DeviceCommand) -> anyhow::Result<()> {
    let mut store = Store::open(database, StoreOptions::default())
        .with_context(|| format!("opening the hub database {}", database.display()))?;
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    // reqwest and rumqttc are built without a default crypto provider: choose ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding http.listen {}", settings.listen))?;
        doorstep_hub::server::serve(settings, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
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
