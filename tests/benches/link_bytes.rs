//! The in-cab unit's link budget: what `doorstep-agent run`, at its default configuration,
//! sends and receives over a shift, counted at the TCP level, TLS included.
//!
//! The two public drives in `../shared/data/nmea/drives` (Regensburg, 26 min with a fix
//! every 2 s; Munich, 31 min at 1 Hz) are replayed into the real agent through a
//! pseudo-terminal at their recorded pace sped up by a constant factor (20 by default,
//! `LINK_BYTES_SPEED` to change it), dated yesterday (a hub refuses what is dated ahead
//! of its clock; an agent takes dates before its build year for a GPS week rollover). The
//! agent takes time from the sentences, so its GNSS-time policies see the drive as driven.
//! It talks to a local Mosquitto through a counting proxy; the real hub runs in this
//! process (`doorstep_hub::server::serve`, default configuration, on the broker's plain
//! listener), so acks, routes and whatever else a hub sends are what a hub in service
//! sends. Each van's route has a stop wherever the car stood still for 30 s or more
//! (Regensburg 2, Munich 7), and the driver scans one parcel at each (35 s after the car
//! stopped, or as it moves off), so nearby and delivery confirmations are in the traffic.
//! No photos; nobody watches the vans (no tracking page, no operator).
//!
//! Four vans per drive, all at once on one broker and one hub:
//!
//! - **tls**: the agent with its fleet certificates on the broker's TLS listener. The
//!   proxy counts TCP payload bytes each way (TLS records included) and reads the record
//!   headers. Measured: bytes, records, connections. Estimated: TCP/IP headers, as 52
//!   bytes (IPv4, TCP, timestamps) per segment, a segment per started 1448-byte MSS of
//!   each read, one bare ACK per data segment (an upper bound: an answer within the
//!   delayed-ACK time carries the ACK instead), and seven control segments per connection.
//! - **mqtt**: the same over plain MQTT, so the proxy can read the packets: bytes per
//!   packet type and per topic kind (`evt`, `pos`, `blob`, `state` up; `ack`, `route`,
//!   `watch` down), and the keepalive from the CONNECT.
//! - **lossy**: over TLS, the proxy drops the connection 12 times, evenly over the
//!   drive's GNSS time. Per connection the meter reads whether the client offered a
//!   session ticket and whether the ServerHello took it (TLS 1.3 `pre_shared_key`), and
//!   the bytes until the broker's CONNACK (handshake, session tickets, CONNECT, CONNACK).
//!   The first connection is a full handshake: what every reconnect would cost without
//!   session resumption.
//! - **lossy-mqtt**: the same drops over plain MQTT, for what a reconnect costs beyond
//!   the handshake, packet by packet.
//!
//! Time compression distorts what runs on the wall clock. MQTT pings do (rumqttc pings
//! every keepalive whatever else is sent): the per-hour figures take out the pings seen
//! during the drive and put back one exchange per keepalive of driving time, at the size
//! measured on the wire (the keepalive is read from the CONNECT). The live position's
//! heartbeat (one send after 5 minutes without one) does too and is not corrected: on
//! these drives the van never stands or crawls for 5 minutes, so it would not fire in
//! real time either. Connecting, the route and the goodbye are counted once per shift;
//! the drive's traffic is scaled to 8 hours.
//!
//! `cargo bench -p doorstep-e2e --bench link_bytes`; `DOORSTEP_AGENT_BIN` runs another
//! agent binary (an older build, to compare). Without `--bench` (as in `cargo test
//! --all-targets`) it only says how to run it: a run takes about two minutes of wall time
//! after the build.
//!
//! Before (the agent at commit 1d193ff: a live position for every fix, a signed trail
//! event a minute, keepalive 60 s; this bench, speed 20, decimal kB):
//!
//! ```text
//! TLS, both ways     hours  per hour  per shift  +IP/hour  +IP/shift
//! Regensburg         0.438  359.1 kB  2877.1 kB  582.3 kB  4664.5 kB
//! Munich             0.518  628.6 kB  5033.6 kB  1004.1 kB 8038.7 kB
//! MQTT per hour      Regensburg                 Munich
//!   up pos           1757 x 166 B = 290.8 kB    3150 x 166 B = 522.3 kB
//!   up evt             71 x 171 B =  12.1 kB      87 x 175 B =  15.2 kB
//!   down ack           69 x 117 B =   8.0 kB      85 x 117 B =   9.9 kB
//!   pings, PUBACKs    60 + 60,  71 + 69          60 + 60,  87 + 85
//! Setup until CONNACK: full handshake 3337 B (838 up, 2499 down); resumed 1916 B
//! (1026 up, 890 down). 12 of 12 reconnects resumed: rumqttc keeps the agent's rustls
//! config, and Mosquitto 2.0 on OpenSSL 3 issues TLS 1.3 tickets (2 hours).
//! A reconnect also costs, over MQTT: CONNECT, two SUBSCRIBEs and SUBACKs, the online
//! state, and the route twice (retained, and the hub's republish on the online state).
//! ```

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
#![allow(clippy::cast_precision_loss, reason = "bytes and hours for display")]

#[path = "../common/served_hub.rs"]
mod hub;
#[path = "link_bytes/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use doorstep_e2e::daemon::{Tuning, link_up, outbox_depth};
use doorstep_e2e::drive::Standstill;
use doorstep_e2e::meter::{Connection, Framing, Phase};
use doorstep_e2e::{
    AgentDaemon, Broker, BrokerOptions, DaemonConfig, Drive, FleetPki, GnssFeed, LossyProxy, Meter, Pty,
    device,
};
use doorstep_proto::{DeviceId, PublicKey};
use serde_json::json;

/// The public drives, in `../shared/data/nmea/drives`.
const DRIVES: [(&str, &str); 2] =
    [("regensburg", "genivi_20100411_Geko_Regensburg.nmea"), ("munich", "genivi_munich-gps.nmea")];
/// GNSS time runs this many times faster than the wall clock unless `LINK_BYTES_SPEED` says.
const DEFAULT_SPEED: f64 = 20.0;
/// Names the speed-up factor.
const SPEED_ENV: &str = "LINK_BYTES_SPEED";
/// Connection drops in the lossy scenario, evenly spread over the drive.
const DROPS: u32 = 12;
/// A standstill at least this long is a stop on the route.
const STOP_MIN_S: f64 = 30.0;
/// The driver scans this long after the car stopped (the agent's default arrival dwell is
/// 30 s), or as the car moves off from a shorter stop.
const SCAN_AFTER_S: f64 = 35.0;
/// How long a van may take to get its route, and to empty its outbox after the drive.
const WAIT: Duration = Duration::from_secs(90);

/// How a van is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    /// TLS, no loss.
    Tls,
    /// Plain MQTT, no loss.
    Mqtt,
    /// TLS, dropped [`DROPS`] times.
    Lossy,
    /// Plain MQTT, dropped [`DROPS`] times: what a reconnect costs, by packet.
    LossyMqtt,
}

impl Scenario {
    const ALL: [Scenario; 4] = [Scenario::Tls, Scenario::Mqtt, Scenario::Lossy, Scenario::LossyMqtt];

    fn tag(self) -> &'static str {
        match self {
            Scenario::Tls => "tls",
            Scenario::Mqtt => "mqtt",
            Scenario::Lossy => "lossy",
            Scenario::LossyMqtt => "lossy-mqtt",
        }
    }

    /// One letter for tracking numbers (A-Z only).
    fn letter(self) -> char {
        ['T', 'M', 'L', 'P'][self as usize]
    }

    fn tls(self) -> bool {
        matches!(self, Scenario::Tls | Scenario::Lossy)
    }

    fn lossy(self) -> bool {
        matches!(self, Scenario::Lossy | Scenario::LossyMqtt)
    }
}

/// What one van's run left behind.
#[derive(Debug)]
struct Outcome {
    drive: usize,
    scenario: Scenario,
    connections: Vec<Connection>,
    drops: u64,
    scans: BTreeMap<String, u32>,
    epochs_written: u64,
    wall: Duration,
}

/// A van ready to start: provisioned, with its proxy, meter and serial line.
struct Van {
    drive: usize,
    scenario: Scenario,
    daemon: AgentDaemon,
    proxy: LossyProxy,
    meter: Arc<Meter>,
    pty: Pty,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("link_bytes: replays two 30-minute drives through the agent (a few minutes); run it with");
        println!("  cargo bench -p doorstep-e2e --bench link_bytes");
        return;
    }
    let speed = match std::env::var(SPEED_ENV) {
        Ok(s) => s.parse::<f64>().ok().filter(|v| (1.0..=100.0).contains(v)).unwrap_or_else(|| {
            panic!("{SPEED_ENV}={s}: give a factor from 1 (real time) to 100");
        }),
        Err(_) => DEFAULT_SPEED,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The hub warns about what it does not act on; a benchmark reports only failures.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = runtime.block_on(bench(speed));
    // Dropping the runtime drops the vans' tasks, which kills their agents.
    drop(runtime);
    if let Err(e) = result {
        println!("link_bytes failed: {e:#}");
        std::process::exit(1);
    }
}

/// Yesterday (UTC), in days since the Unix epoch: the day the drives are replayed as.
fn yesterday() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_secs() / 86_400).unwrap_or(0) - 1
}

fn drives_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nmea/drives")
}

/// The parcel for stop `i` (from 0) of the van of `drive` and `scenario`.
fn tracking_number(drive: usize, scenario: Scenario, i: usize) -> String {
    format!("LB{}{}{:04}", ["R", "M"][drive % 2], scenario.letter(), i + 1)
}

/// The van of `drive` and `scenario`: seven characters like a fleet's `van-017`, since
/// the device id is in every topic.
fn van_id(drive: usize, scenario: Scenario) -> DeviceId {
    device(&format!("van-{}{:02}", ["r", "m"][drive % 2], scenario as usize + 1))
}

/// The route of the van of `drive` and `scenario`: a stop wherever the car stood still,
/// one parcel each.
fn route(drive: usize, scenario: Scenario, stops: &[Standstill]) -> serde_json::Value {
    let stops: Vec<_> = stops
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"stop_id": format!("s-{:02}", i + 1), "lat": s.lat, "lon": s.lon,
                   "tracking_numbers": [tracking_number(drive, scenario, i)]})
        })
        .collect();
    json!({"route_id": format!("{}-{}", DRIVES[drive].0, scenario.tag()), "stops": stops})
}

async fn bench(speed: f64) -> anyhow::Result<()> {
    let day = yesterday();
    let drives: Vec<Arc<Drive>> = DRIVES
        .iter()
        .map(|(_, file)| Drive::load(&drives_dir().join(file)).map(|d| Arc::new(d.moved_to_day(day))))
        .collect::<anyhow::Result<_>>()?;
    let agent = doorstep_e2e::daemon::agent_binary();
    println!("Doorstep link budget: `doorstep-agent run` at its default configuration");
    println!("agent binary: {}", agent.display());
    println!("GNSS time runs {speed}x faster than the wall clock; the drives are replayed as yesterday's;");
    println!("nobody watches; the driver scans one parcel at every stop, no photos\n");

    let pki = FleetPki::new()?;
    let broker = Broker::start_tls(BrokerOptions::default(), pki.broker.clone())
        .await
        .context("a test broker (install it: apt-get install mosquitto)")?;
    let tls_port = broker.tls_port().context("TLS listener")?;

    let mut vans = Vec::new();
    for d in 0..DRIVES.len() {
        for scenario in Scenario::ALL {
            let id = van_id(d, scenario);
            let meter = Arc::new(Meter::new(if scenario.tls() { Framing::Tls } else { Framing::Mqtt }));
            let upstream = if scenario.tls() { tls_port } else { broker.port() };
            let proxy = LossyProxy::start_metered(upstream, Arc::clone(&meter)).await?;
            let pty = Pty::open_nonblocking()?;
            let uplink_extra = if scenario.tls() { pki.van(&id)?.uplink_table() } else { String::new() };
            let daemon = AgentDaemon::provision_with(
                &DaemonConfig {
                    device: id,
                    gps: pty.path().to_owned(),
                    route_json: String::new(),
                    position_interval_s: 0,
                    broker_port: proxy.port(),
                    uplink_extra,
                },
                Tuning::Defaults,
            )?;
            vans.push(Van { drive: d, scenario, daemon, proxy, meter, pty });
        }
    }
    let registered: Vec<(DeviceId, PublicKey)> =
        vans.iter().map(|v| (v.daemon.device().clone(), v.daemon.key().public_key())).collect();
    let hub = hub::Hub::start(broker.port(), &registered, "doorstep-hub-link-bench", "routes:write").await?;
    let mut plans = Vec::new();
    for drive in &drives {
        let stops = drive.stops(STOP_MIN_S);
        let lengths: Vec<String> = stops.iter().map(|s| format!("{:.0}", s.seconds())).collect();
        println!(
            "{}: {} epochs, {:.1} min of GNSS time; stops of {STOP_MIN_S} s or more (the route): {} ({} s)",
            drive.name,
            drive.epochs.len(),
            drive.duration_ms() as f64 / 60_000.0,
            stops.len(),
            lengths.join(", "),
        );
        plans.push(stops);
    }
    println!();
    for van in &vans {
        hub.post_route(van.daemon.device(), route(van.drive, van.scenario, &plans[van.drive])).await?;
    }

    let mut tasks = Vec::new();
    for van in vans {
        let drive = Arc::clone(&drives[van.drive]);
        let stops = plans[van.drive].clone();
        tasks.push(tokio::spawn(run_van(van, drive, stops, speed)));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.context("a van's task panicked")??);
    }
    hub.stop().await?;
    drop(broker);

    report::print(&drives, &outcomes, speed);
    Ok(())
}

/// One van's day: start the agent, wait for its route, replay the drive with the scans
/// (and drops), let the outbox empty, stop the agent.
async fn run_van(van: Van, drive: Arc<Drive>, stops: Vec<Standstill>, speed: f64) -> anyhow::Result<Outcome> {
    let Van { drive: d, scenario, daemon, proxy, meter, pty } = van;
    let started = tokio::time::Instant::now();
    let child = daemon.start()?;
    let pid = child.id().context("agent pid")?;
    let mut driver = daemon.driver().await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = driver.ask(&doorstep_testkit::driver::status()).await?;
        if status["message"].as_str().is_some_and(|m| m.starts_with("route ")) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{}: no route from the hub ({status})\n{}",
            daemon.device(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let t0 = drive.start_ms();
    let span = drive.duration_ms();
    let scans: Vec<(i64, String)> = stops
        .iter()
        .enumerate()
        .map(|(i, s)| {
            #[allow(clippy::cast_possible_truncation)] // seconds of a stop
            let at = (s.from_ms + (SCAN_AFTER_S * 1000.0) as i64).min(s.to_ms);
            (at, tracking_number(d, scenario, i))
        })
        .collect();
    let drops_at: Vec<i64> = if scenario.lossy() {
        (1..=i64::from(DROPS)).map(|k| t0 + span * k / (i64::from(DROPS) + 1)).collect()
    } else {
        Vec::new()
    };
    let mut results: BTreeMap<String, u32> = BTreeMap::new();

    meter.set_phase(Phase::Drive);
    let feed = GnssFeed::replay(pty, Arc::clone(&drive), speed);
    let (mut next_scan, mut next_drop) = (0, 0);
    let replay_deadline =
        tokio::time::Instant::now() + Duration::from_secs_f64(span as f64 / 1000.0 / speed) + WAIT;
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < replay_deadline,
            "{}: the replay did not finish",
            daemon.device()
        );
        let now = feed.gnss_ms();
        while next_scan < scans.len() && now >= scans[next_scan].0 {
            let reply = driver.scan(&scans[next_scan].1).await?;
            *results.entry(reply["result"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
            next_scan += 1;
        }
        while next_drop < drops_at.len() && now >= drops_at[next_drop] {
            proxy.drop_connections();
            next_drop += 1;
        }
        if feed.finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    meter.set_phase(Phase::Teardown);
    let (drained, status) = daemon.wait_for_status(WAIT, |s| link_up(s, pid) && outbox_depth(s) == 0).await?;
    anyhow::ensure!(drained, "{}: the outbox did not empty: {status}\n{}", daemon.device(), daemon.log());
    daemon.stop(child).await?;
    // The proxy sees the agent's goodbye and the close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Outcome {
        drive: d,
        scenario,
        connections: meter.connections(),
        drops: proxy.drops(),
        scans: results,
        epochs_written: feed.written(),
        wall: started.elapsed(),
    })
}
