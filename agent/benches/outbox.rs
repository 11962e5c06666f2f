//! Durable enqueue rate of the outbox, on a real file on disk (not tmpfs).
//!
//! - confirmations: each `append` commits with `synchronous = FULL` (one WAL fsync), as
//!   the driver's scan is answered only after it;
//! - position samples: group-committed (`synchronous = NORMAL`), with the uplink's
//!   `pending` read (which fsyncs once for the group) after every 100 appends, as the
//!   uplink would read them.
//!
//! Run with `cargo bench -p doorstep-agent --bench outbox`. Without `--bench` (as in
//! `cargo test --all-targets`) it runs a few events as a smoke test.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::Instant;

use doorstep_agent::outbox::{Outbox, OutboxConfig};
use doorstep_proto::{DeviceId, Event, FixEvidence, Nearby, RouteId, SigningKey, StopId};

fn nearby(n: u32) -> Event {
    Event::Nearby(Nearby {
        route_id: RouteId::new("route-1").expect("id"),
        stop_id: StopId::new("stop-1").expect("id"),
        distance_m: n,
        fix: FixEvidence::new(1_767_225_600_000, 47.37, 8.54).with_hdop(0.9).with_sats(11),
    })
}

fn position(n: u32) -> Event {
    Event::Position(
        FixEvidence::new(1_767_225_600_000 + i64::from(n), 47.37, 8.54).with_hdop(1.1).with_speed_mps(8.0),
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (confirmations, positions) = if full { (2_000u32, 50_000u32) } else { (20, 200) };
    // CARGO_TARGET_TMPDIR is under target/, on the same disk as a real deployment's
    // data; /tmp may be tmpfs, where fsync costs nothing.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let key = SigningKey::from_seed(&[1; 32]).expect("key");
    let device = DeviceId::new("van-bench").expect("id");

    let mut outbox = Outbox::open(&dir.path().join("c.db"), OutboxConfig::new(device.clone())).expect("open");
    let start = Instant::now();
    for n in 0..confirmations {
        outbox.append(&key, nearby(n), 0, 0).expect("append");
    }
    let elapsed = start.elapsed();
    let rate = f64::from(confirmations) / elapsed.as_secs_f64();
    println!(
        "outbox/enqueue confirmations (fsync each): {confirmations} in {:.3} s = {rate:.0} events/s ({:.2} ms each)",
        elapsed.as_secs_f64(),
        1000.0 / rate
    );

    let mut outbox = Outbox::open(&dir.path().join("p.db"), OutboxConfig::new(device)).expect("open");
    let start = Instant::now();
    for n in 0..positions {
        outbox.append(&key, position(n), 0, 0).expect("append");
        if n % 100 == 99 {
            let after = u64::from(n).saturating_sub(99);
            outbox.pending(after, 100).expect("pending");
        }
    }
    let elapsed = start.elapsed();
    let rate = f64::from(positions) / elapsed.as_secs_f64();
    println!(
        "outbox/enqueue positions (group commit, fsync per 100): {positions} in {:.3} s = {rate:.0} events/s",
        elapsed.as_secs_f64()
    );
}
