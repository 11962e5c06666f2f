//! Drain after an outage, beside `mosquitto_pub`, and the agent's resident memory.
//!
//! One local Mosquitto (started here on a free port) and an acking receiver (the hub's
//! side of the ack protocol). Then, in the same run:
//!
//! 1. `mosquitto_pub -q 1 --repeat N -m <payload>` publishes N messages of the same size
//!    as the agent's events to a topic the receiver also subscribes to, so the broker does
//!    the same fan-out work. Two times: process start to exit (every message PUBACKed by
//!    the broker), and until the receiver has had every one, the like of the agent's
//!    measure. (`mosquitto_pub -l` reading lines from stdin looks faster, but with QoS 1
//!    and its default in-flight window of 20, mosquitto 2.0.11's client silently drops
//!    about two thirds of a 100 000-line input; with `-M 65535` it delivers them all at
//!    about the `--repeat` rate. The bench checks that every message arrived.)
//! 2. `agent-soak` (the agent's outbox and uplink in their own process) starts with N
//!    events queued in its SQLite outbox and drains them: seq order, QoS 1, rows deleted
//!    only on the receiver's signed acks. Its time is process start until the hub has
//!    acknowledged the last event: strictly more work than mosquitto_pub's PUBACKs.
//!    Run twice: with a receiver that verifies every Ed25519 signature (what a hub
//!    does; on a shared two-core box the verification, about 12k/s per core, is the
//!    bottleneck), and with one that checks key id and body but not the signature, to
//!    show the agent's own rate.
//!
//! The agent reports VmRSS/VmHWM from /proc/self/status with N events queued and after
//! the drain (VmHWM is the peak over the whole drain).
//!
//! Run with `cargo bench -p doorstep-e2e --bench drain` (N = 100 000). Without `--bench`
//! (as in `cargo test --all-targets`) it runs N = 500 as a smoke test.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
#![allow(clippy::cast_precision_loss, reason = "rates and megabytes for display")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use doorstep_agent::outbox::{Outbox, OutboxConfig};
use doorstep_e2e::agent::agent_soak;
use doorstep_e2e::{
    AckingReceiver, Broker, BrokerOptions, ReceiverOptions, device, device_key, hub_key, position,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 100_000 } else { 500 };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(bench(n));
}

/// Queues `n` position samples for the soak device in a fresh outbox at `db`; returns
/// the size of one signed event.
async fn prefill(db: PathBuf, n: u32) -> usize {
    tokio::task::spawn_blocking(move || {
        let key = device_key(1);
        let mut outbox = Outbox::open(&db, OutboxConfig::new(device("van-soak"))).expect("open");
        let mut len = 0;
        for i in 1..=n {
            len = outbox.append(&key, position(i), 1_767_225_600_000, u64::from(i)).expect("append").wire_len;
        }
        len
    })
    .await
    .expect("prefill")
}

struct Drain {
    time: Duration,
    memory: Vec<(u64, u64, u64)>,
    cpu_ms: u64,
}

async fn drain(db: &Path, port: u16, n: u32) -> Drain {
    let start = Instant::now();
    let mut child = agent_soak(env!("CARGO_BIN_EXE_agent-soak"), db, port, "van-soak", 1, u64::from(n))
        .args(["--exit-when-drained", "--report-memory"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("agent-soak");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut memory = Vec::new();
    let mut drained = None;
    let mut cpu_ms = 0;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(600), out.next_line())
        .await
        .expect("agent drains in time")
        .expect("agent output")
    {
        if let Some(rest) = line.strip_prefix("memory ") {
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            if let [rss, hwm, depth] = f[..] {
                memory.push((rss, hwm, depth));
            }
        }
        if let Some(ms) = line.strip_prefix("cpu_ms ") {
            cpu_ms = ms.parse().unwrap_or(0);
        }
        if line == "drained" && drained.is_none() {
            drained = Some(start.elapsed());
        }
    }
    let status = child.wait().await.expect("agent exit");
    assert!(status.success(), "agent-soak failed: {status}");
    Drain { time: drained.expect("agent reported drained"), memory, cpu_ms }
}

async fn bench(n: u32) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let broker = Broker::start(BrokerOptions::default()).await.expect("broker");
    let van = device("van-soak");
    let key = device_key(1);

    // The outage: N position samples queued while offline (one outbox per run).
    let verified_db = dir.path().join("verified.db");
    let unverified_db = dir.path().join("unverified.db");
    let wire_len = prefill(verified_db.clone(), n).await;
    prefill(unverified_db.clone(), n).await;

    // mosquitto_pub: the same number of QoS 1 messages of the same size.
    let receiver = AckingReceiver::start(broker.port(), &[(van.clone(), &key)], hub_key()).await;
    let payload = "x".repeat(wire_len);
    let start = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-q", "1"])
        .args(["-t", "doorstep/v1/acme/mqpub/evt", "-i", "bench-mosquitto-pub"])
        .args(["--repeat", &n.to_string(), "-m", &payload])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub (install it: apt-get install mosquitto-clients)");
    let pub_time = start.elapsed();
    assert!(status.success(), "mosquitto_pub failed: {status}");
    // The receiver refuses these (they are not envelopes) but must have had every one.
    let count = usize::try_from(n).expect("fits");
    let all = receiver.wait_for(Duration::from_secs(60), |r| r.rejected.len() >= count).await;
    let got = receiver.received().rejected.len();
    let log = std::fs::read_to_string(broker.log_path()).unwrap_or_default();
    assert!(all, "the receiver got {got} of {n} mosquitto_pub messages; broker log:\n{log}");
    let pub_received = start.elapsed();
    let pub_rate = f64::from(n) / pub_time.as_secs_f64();
    let pub_received_rate = f64::from(n) / pub_received.as_secs_f64();
    println!("drain/{n} events of {wire_len} B, QoS 1, local mosquitto:");
    println!(
        "  mosquitto_pub --repeat, until it exits     : {:.3} s = {pub_rate:.0} msg/s",
        pub_time.as_secs_f64()
    );
    println!(
        "  mosquitto_pub, until the receiver has all  : {:.3} s = {pub_received_rate:.0} msg/s",
        pub_received.as_secs_f64()
    );

    let verified = drain(&verified_db, broker.port(), n).await;
    assert_eq!(receiver.received().contiguous(&van), u64::from(n), "the receiver holds every event");
    receiver.stop().await;
    let options = ReceiverOptions { verify_signatures: false, ..ReceiverOptions::default() };
    let receiver =
        AckingReceiver::start_with(broker.port(), &[(van.clone(), &key)], hub_key(), options).await;
    let unverified = drain(&unverified_db, broker.port(), n).await;
    assert_eq!(receiver.received().contiguous(&van), u64::from(n), "the receiver holds every event");

    for (label, run) in [("hub verifying signatures", &verified), ("hub not verifying      ", &unverified)] {
        let rate = f64::from(n) / run.time.as_secs_f64();
        println!(
            "  agent drain, {label}      : {:.3} s = {rate:.0} events/s = {:.2}x mosquitto_pub's exit rate, \
             {:.2}x its delivered rate (agent CPU {:.1} us/event)",
            run.time.as_secs_f64(),
            rate / pub_rate,
            rate / pub_received_rate,
            run.cpu_ms as f64 * 1000.0 / f64::from(n)
        );
    }
    for (when, (rss, hwm, depth)) in
        ["with the backlog queued", "after the drain"].iter().zip(&verified.memory)
    {
        println!(
            "  agent memory {when}: VmRSS {:.1} MB, VmHWM {:.1} MB (outbox depth {depth})",
            *rss as f64 / 1024.0,
            *hwm as f64 / 1024.0
        );
    }
}
