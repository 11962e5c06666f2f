//! `doorstep-agent`: the in-cab daemon and its tools.
//!
//! Only argument parsing and dispatch live here; each subcommand's logic is a function
//! in the library module it belongs to.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use doorstep_agent::gate::GateConfig;
use doorstep_agent::gps::{self, DecodeSource};

/// Doorstep's in-cab agent: reads the van's GPS and the driver's scans, decides on the
/// device when the van is at a stop, and sends signed confirmations to the hub.
#[derive(Debug, Parser)]
#[command(name = "doorstep-agent", version, propagate_version = true)]
struct Cli {
    /// Print the commented default configuration (what /etc/doorstep/agent.toml should
    /// start from) and exit.
    #[arg(long)]
    print_default_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the configuration is.
#[derive(Debug, Args)]
struct ConfigArg {
    /// The agent's configuration file.
    #[arg(long, short, default_value = doorstep_agent::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the in-cab daemon: GPS, scanner, driver socket, signed confirmations, uplink.
    ///
    /// Reads the configuration (see --print-default-config), opens the GNSS receiver and
    /// the barcode scanner (reopening them with backoff when they disappear), serves the
    /// driver app's socket, and keeps every confirmation in the outbox until the hub
    /// acknowledges it. Stops cleanly on SIGTERM or Ctrl-C.
    Run(ConfigArg),
    /// Create this device's Ed25519 signing key (mode 0600) and print its public key.
    ///
    /// Register the printed public key at the hub with
    /// `doorstep-hub device add --fleet <fleet> --device <id> --key <file.pub>`.
    /// Refuses to replace an existing key unless --force is given: a new key means the
    /// hub must be told, or it will refuse the device's events.
    Keygen(KeygenArgs),
    /// Print this device's public key, for registration at the hub.
    Pubkey(KeyArg),
    /// Show link state, outbox depth, the last fix and its age, and alarms.
    Status(StatusArgs),
    /// Work with the GPS receiver: decode NMEA from a log or a serial device.
    #[command(subcommand)]
    Gps(GpsCommand),
    /// Replay a recorded drive through the same decision code as a live van.
    ///
    /// Decodes the NMEA log, applies the quality gate, runs the route's geofences and
    /// interleaves the driver's scans by time. Prints one JSON line per event the van
    /// would have signed:
    ///
    ///   {"kind":"nearby","stop_id":"s-014","time":"2010-04-11T08:21:05Z","distance_m":587,...}
    ///   {"kind":"delivered_at_address","stop_id":"s-014","time":"...","distance_m":41,
    ///    "dwell_s":95,"tracking_numbers":["1Z999AA10123456784"],...}
    ///
    /// kinds: nearby, delivered_at_address, delivered_away_from_address, exception,
    /// scan_not_on_route (and trail with --positions). The reply each scan got, as the
    /// driver would have seen it, and a summary go to standard error.
    ///
    /// Route file: {"route_id":"r1","stops":[{"stop_id":"s1","lat":47.1,"lon":8.5,
    ///   "tracking_numbers":["1Z999AA10123456784"]}]}, with optional per-stop
    ///   "approach_m", "arrival_m" and "dwell_s".
    ///
    /// Scan file, one JSON object per line:
    ///   {"time":"2010-04-11T08:24:10Z","code":"1Z999AA10123456784"}
    ///   {"time":"2010-04-11T08:24:30Z","code":"1Z999AA10123456785","photo":"door.jpg"}
    ///   {"time":"2010-04-11T08:31:00Z","code":"...","exception":"recipient_absent"}
    ///
    /// Example:
    ///
    ///   doorstep-agent replay --nmea drive.nmea --route route.json --scans scans.jsonl
    #[command(verbatim_doc_comment)]
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The recorded NMEA log.
    #[arg(long)]
    nmea: PathBuf,
    /// The route manifest (JSON).
    #[arg(long)]
    route: PathBuf,
    /// The driver's scans (JSON lines); photo paths are relative to this file.
    #[arg(long)]
    scans: Option<PathBuf>,
    /// Also print the trail: the batches of position samples the van would send the hub.
    #[arg(long)]
    positions: bool,
}

#[derive(Debug, Subcommand)]
enum GpsCommand {
    /// Decode NMEA 0183 into one fix per epoch, as the agent sees it.
    ///
    /// Prints one JSON object per fix on standard output, the decoder's view before
    /// the quality gate together with the gate's verdict:
    ///
    ///   {"time":"2019-03-28T16:45:17Z","lat":48.1173,"lon":11.5167,"mode":3,
    ///    "speed_mps":0.2,"course":84.4,"hdop":0.9,"sats":8,"gate":"ok"}
    ///
    /// Fields the receiver did not report are left out. "time" is RFC 3339 UTC, with
    /// fractional seconds only when they are not zero; until the receiver has sent a
    /// date (RMC or ZDA) it is the time of day alone, like "16:45:17Z". Dates before
    /// 2024-01-01 are treated as GPS week rollover and moved forward by 1024 weeks.
    /// "mode" is gpsd's: 1 no fix, 2 two-dimensional, 3 three-dimensional. "speed_mps"
    /// is speed over ground in m/s, "course" degrees true, "eph" the receiver's own
    /// horizontal error estimate in metres (GST/GBS), when it sends one. "gate" is
    /// "ok" or the reason the fix would not be used: rmc_void, gga_quality_0,
    /// faa_mode_n, gll_void, no_position, no_date, hdop_too_high, eph_too_high,
    /// time_not_increasing, impossible_jump.
    ///
    /// At the end, a summary goes to standard error: input lines by what became of
    /// them (used, unused_sentence, proprietary, binary_junk, bad_checksum, ...) and
    /// fixes by verdict.
    ///
    /// Examples:
    ///
    ///   doorstep-agent gps decode drive.nmea
    ///
    ///   doorstep-agent gps decode /dev/ttyACM0 --baud 38400
    #[command(verbatim_doc_comment)]
    Decode(DecodeArgs),
}

#[derive(Debug, Args)]
struct KeyArg {
    /// The device key file.
    #[arg(long, default_value = "/var/lib/doorstep/device.key")]
    key: PathBuf,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Replace an existing key.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON for machines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// An NMEA log file, or a serial device. Any path under /dev, or any character
    /// device, is opened as a serial port (8N1, raw) and read until Ctrl-C, reopened
    /// with backoff if it disappears; anything else is read as a file to its end.
    source: PathBuf,

    /// Baud rate for a serial device (ignored for files). 9600 is what most modern
    /// receivers send by default; NMEA 0183's original rate is 4800, and u-blox or
    /// Quectel modules are often configured for 38400 or 115200.
    #[arg(long, default_value_t = 9600)]
    baud: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    doorstep_runtime::logging::init("warn");
    let cli = Cli::parse();
    if cli.print_default_config {
        std::io::stdout().write_all(doorstep_agent::config::DEFAULT_CONFIG.as_bytes())?;
        return Ok(());
    }
    let Some(command) = cli.command else {
        use clap::CommandFactory as _;
        Cli::command().print_help()?;
        anyhow::bail!("no command given");
    };
    match command {
        Command::Run(args) => run(args).await,
        Command::Keygen(args) => keygen(args),
        Command::Pubkey(args) => pubkey(args),
        Command::Status(args) => status(args),
        Command::Gps(GpsCommand::Decode(args)) => gps_decode(args).await,
        Command::Replay(args) => replay(args),
    }
}

async fn run(args: ConfigArg) -> anyhow::Result<()> {
    use doorstep_agent::{config::Config, daemon};
    let config =
        Config::load(&args.config).with_context(|| format!("configuration {}", args.config.display()))?;
    let key = std::sync::Arc::new(daemon::load_key(&config.key_path)?);
    // Watched before anything says the agent runs: a SIGTERM from then on stops it in order.
    let stop = doorstep_runtime::shutdown::signal();
    let cancel = CancellationToken::new();
    let running = daemon::start(&config, key, cancel.clone()).await?;
    if !daemon::start_uplink(&config, &running, cancel.clone())? {
        tracing::warn!("no [uplink] configured: confirmations stay in the outbox until one is");
    }
    // systemd (Type=notify): ready once every task runs; pets only while they beat.
    doorstep_agent::watchdog::ready();
    if let Some(timing) = doorstep_agent::watchdog::Timing::from_env() {
        let (heartbeats, watchdog_cancel) = (running.heartbeats.clone(), cancel.clone());
        let systemd = doorstep_agent::watchdog::Systemd;
        running.tasks.spawn(doorstep_agent::watchdog::run(heartbeats, timing, systemd, watchdog_cancel));
    }
    tracing::info!(device = %config.device, "agent running");
    stop.await;
    tracing::info!("stopping");
    doorstep_agent::watchdog::stopping();
    cancel.cancel();
    running.wait().await;
    Ok(())
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    use doorstep_runtime::keyfile::{self, KeyFileError};
    let path = &args.key.key;
    let key = match keyfile::create(path, args.force) {
        Err(KeyFileError::Exists { .. }) => anyhow::bail!(
            "{} already exists; this device already has a key. Use --force to replace it \
             (then register the new public key at the hub)",
            path.display()
        ),
        other => other?,
    };
    let public = key.to_string();
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    writeln!(std::io::stdout(), "{public}")?;
    writeln!(
        std::io::stderr(),
        "wrote {} (mode 0600) and {}; register it with: doorstep-hub device add --key {}",
        path.display(),
        pub_path.display(),
        pub_path.display()
    )?;
    Ok(())
}

fn pubkey(args: KeyArg) -> anyhow::Result<()> {
    let key = doorstep_agent::daemon::load_key(&args.key)?;
    writeln!(std::io::stdout(), "{}", key.public_key())?;
    Ok(())
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    use doorstep_agent::daemon::{BRAIN_STATE_FILE, BrainState};
    use doorstep_agent::{config::Config, status};
    let config = Config::load(&args.config.config)
        .with_context(|| format!("configuration {}", args.config.config.display()))?;
    let db = config.outbox_path();
    let report = status::read_status(&db, &status::link_record_path(&db))?;
    // The brain's state file, written by the running daemon; absent before its first
    // write, and unreadable only if a newer agent wrote it.
    let brain: Option<BrainState> = std::fs::read(config.state_dir.join(BRAIN_STATE_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json())?;
        value["decisions"] = serde_json::to_value(&brain)?;
        writeln!(out, "{value}")?;
    } else {
        write!(out, "{}", report.render())?;
        if let Some(brain) = brain {
            writeln!(
                out,
                "route: {}; stops with parcels left: {}; parcels with customer instructions: {}",
                brain.route_id.as_deref().unwrap_or("none loaded"),
                brain.stops_with_parcels_left,
                brain.stop_notes
            )?;
            writeln!(
                out,
                "events stored since start: {}; store failures: {}",
                brain.events_stored, brain.store_failures
            )?;
            writeln!(out, "decisions: {}", serde_json::to_string(&brain.decisions)?)?;
            writeln!(out, "fixes refused by the gate: {}", serde_json::to_string(&brain.gated)?)?;
        }
    }
    Ok(())
}

async fn gps_decode(args: DecodeArgs) -> anyhow::Result<()> {
    let source = DecodeSource::classify(&args.source, args.baud);
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let mut stdout = std::io::stdout().lock();
    let summary = gps::decode_command(&source, GateConfig::default(), &mut stdout, &cancel)
        .await
        .with_context(|| format!("gps decode {}", args.source.display()))?;
    let mut stderr = std::io::stderr().lock();
    writeln!(stderr, "{summary}")?;
    Ok(())
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use doorstep_agent::replay::{ReplayConfig, event_json, read_scans, replay_nmea};
    let nmea =
        std::fs::read(&args.nmea).with_context(|| format!("reading NMEA log {}", args.nmea.display()))?;
    let route_bytes =
        std::fs::read(&args.route).with_context(|| format!("reading route {}", args.route.display()))?;
    let route = doorstep_proto::RouteManifest::from_json(&route_bytes)
        .with_context(|| format!("route {}", args.route.display()))?;
    let scans = match &args.scans {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading scans {}", path.display()))?;
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            read_scans(&text, base).with_context(|| format!("scans {}", path.display()))?
        }
        None => Vec::new(),
    };
    let config = ReplayConfig { positions: args.positions, ..ReplayConfig::default() };
    let outcome = replay_nmea(&nmea, route, &scans, &config);
    let mut stdout = std::io::stdout().lock();
    for event in &outcome.events {
        writeln!(stdout, "{}", event_json(event))?;
    }
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    for (utc_ms, reply) in &outcome.replies {
        writeln!(
            stderr,
            "scan {}: {} - {}",
            doorstep_agent::fix::format_utc_ms(*utc_ms),
            reply.result,
            reply.message
        )?;
    }
    let kinds = outcome.events.iter().fold(std::collections::BTreeMap::new(), |mut m, e| {
        *m.entry(e.event.kind()).or_insert(0u64) += 1;
        m
    });
    writeln!(stderr, "fixes decoded: {}; refused by the gate: {:?}", outcome.fixes, outcome.gated)?;
    writeln!(stderr, "events: {kinds:?}")?;
    writeln!(stderr, "decisions: {:?}", outcome.counters)?;
    Ok(())
}
