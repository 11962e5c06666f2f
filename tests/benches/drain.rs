//! Drain after an outage, beside `mosquitto_pub`, and the agent's resident memory.
//!
//! One local Mosquitto (started here on a free port) and one acking receiver (the hub's
//! side of the ack protocol, verifying every signature). Then, in the same run:
//!
//! 1. `mosquitto_pub -q 1 -l` publishes N lines of the same size as the agent's events
//!    (read from a file on stdin, default in-flight window) to a topic the receiver also
//!    subscribes to. Its time is process start to exit; it exits once every message is
//!    PUBACKed by the broker.
//! 2. `agent-soak` (the agent's outbox and uplink in their own process) starts with N
//!    events queued in its SQLite outbox and drains them: published in seq order, QoS 1,
//!    deleted only on the receiver's signed acks. Its time is process start until the
//!    hub has acknowledged the last event, which is strictly more work than
//!    mosquitto_pub's broker PUBACKs; the comparison is conservative for the agent.
//!
//! The agent reports VmRSS/VmHWM from /proc/self/status with N events queued and after
//! the drain (VmHWM is the peak over the whole drain).
//!
//! Run with `cargo bench -p doorstep-e2e --bench drain` (N = 100 000). Without `--bench`
//! (as in `cargo test --all-targets`) it runs N = 500 as a smoke test.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use doorstep_agent::outbox::{Outbox, OutboxConfig};
use doorstep_e2e::{AckingReceiver, Broker, BrokerOptions, device, device_key, hub_key, position};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 100_000 } else { 500 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(bench(n));
}

async fn bench(n: u32) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let broker = Broker::start(BrokerOptions::default()).await.expect("broker");
    let van = device("van-soak");
    let key = device_key(1);
    let receiver = AckingReceiver::start(broker.port(), &[(van.clone(), &key)], hub_key()).await;

    // The outage: N position samples queued while offline.
    let db = dir.path().join("agent.db");
    let wire_len = {
        let db = db.clone();
        let key = device_key(1);
        tokio::task::spawn_blocking(move || {
            let mut outbox = Outbox::open(&db, OutboxConfig::new(device("van-soak"))).expect("open");
            let mut len = 0;
            for i in 1..=n {
                len = outbox.append(&key, position(i), 1_767_225_600_000, u64::from(i)).expect("append").wire_len;
            }
            len
        })
        .await
        .expect("prefill")
    };

    // mosquitto_pub: the same number of QoS 1 messages of the same size.
    let lines = dir.path().join("lines.txt");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&lines).expect("lines"));
        let line = vec![b'x'; wire_len];
        for _ in 0..n {
            file.write_all(&line).expect("write");
            file.write_all(b"\n").expect("write");
        }
    }
    let start = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-q", "1", "-l"])
        .args(["-t", "doorstep/v1/acme/mqpub/evt", "-i", "bench-mosquitto-pub"])
        .stdin(std::fs::File::open(&lines).expect("open lines"))
        .stdout(Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub (install it: apt-get install mosquitto-clients)");
    let pub_time = start.elapsed();
    assert!(status.success(), "mosquitto_pub failed: {status}");
    let pub_rate = f64::from(n) / pub_time.as_secs_f64();

    // The agent drains its backlog to the acking receiver.
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-soak"))
        .arg("--db")
        .arg(&db)
        .args(["--port", &broker.port().to_string(), "--device", "van-soak", "--seed", "1"])
        .args(["--hub-key", &hub_key().public_key().to_string()])
        .args(["--count", &n.to_string(), "--exit-when-drained", "--report-memory"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agent-soak");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut memory = Vec::new();
    let mut drained = None;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(300), out.next_line()).await.expect("agent drains") {
        if let Some(rest) = line.strip_prefix("memory ") {
            memory.push(rest.to_owned());
        }
        if line == "drained" && drained.is_none() {
            drained = Some(start.elapsed());
        }
    }
    let status = child.wait().await.expect("agent exit");
    assert!(status.success(), "agent-soak failed: {status}");
    let agent_time = drained.expect("agent reported drained");
    let agent_rate = f64::from(n) / agent_time.as_secs_f64();
    let held = receiver.received().contiguous(&van);
    assert_eq!(held, u64::from(n), "the receiver holds every event");

    println!("drain/{n} events of {wire_len} B, QoS 1, local mosquitto:");
    println!("  mosquitto_pub -q 1 -l : {:.3} s = {pub_rate:.0} msg/s (until broker PUBACKs)", pub_time.as_secs_f64());
    println!(
        "  agent outbox + uplink : {:.3} s = {agent_rate:.0} events/s (until hub acks) = {:.2}x mosquitto_pub",
        agent_time.as_secs_f64(),
        agent_rate / pub_rate
    );
    for (when, m) in ["with backlog queued", "after the drain"].iter().zip(&memory) {
        let f: Vec<u64> = m.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if let [rss, hwm, depth] = f[..] {
            println!(
                "  agent memory {when}: VmRSS {:.1} MB, VmHWM {:.1} MB (outbox depth {depth})",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
    }
}
