//! Storing events and advancing acks, SQLite beside PostgreSQL in one run: the part of
//! ingest that moves to the shared database first.
//!
//! The same verified events (100 vans × 1,000 by default, interleaved as a fleet sends
//! them, ~200-byte envelopes) are stored in batches of the hub's `batch_max`, each batch
//! followed by the acks of the vans it touched:
//! - SQLite: one transaction per batch (`insert_event` each, `advance_ack` each van), as
//!   the hub's writer does;
//! - PostgreSQL, one hub: `insert_events` (one set-based statement), then
//!   `advance_acks` for the batch's vans (one statement) after the commit, as SCALE.md
//!   prescribes;
//! - PostgreSQL, three hubs at once, the total rate (a lock convoy would show as three
//!   hubs slower than one), with the vans' messages dealt as a broker would: round-robin
//!   (Mosquitto's `$share`: every hub sees every van) and by van (EMQX's
//!   `hash_clientid`: a van stays on one hub).
//!
//! Both engines commit durably (SQLite `synchronous = FULL`, PostgreSQL `fsync` and
//! `synchronous_commit` on), on the same disk. Printed: events per second, the ratio to
//! SQLite, and CPU per event for this process and for the PostgreSQL server processes
//! (the test's own server and its backends, from /proc; not the machine's own instance),
//! so the cost of a bigger fleet can be projected. Signature checks,
//! reconciliation and the broker are not in it: `ingest` measures the whole path.
//!
//! `cargo bench -p doorstep-hub --bench event_store`; without `--bench` (as `cargo test
//! --all-targets` runs it) a tiny size as a smoke test. `DOORSTEP_BENCH_SIZE=<vans>x<events>`
//! and `DOORSTEP_BENCH_BATCH=<n>` change the size and the batch.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::cast_precision_loss)]

#[path = "common/proc_stat.rs"]
mod proc_stat;
#[path = "common/size.rs"]
mod size;

use std::collections::BTreeSet;
use std::time::Instant;

use doorstep_hub::config::IngestSection;
use doorstep_hub::store::{EventInsert, NewEvent, PgStore, Store, StoreOptions};
use doorstep_proto::{DeviceId, FleetId};
use doorstep_testkit::postgres::Postgres;
use proc_stat::{load_average, stat_cpu, tree_cpu};
use size::bench_size;

/// CPU seconds of this process.
fn own_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu(&s)).map_or(0.0, |c| c.1)
}

struct Fleet {
    fleet: FleetId,
    vans: Vec<DeviceId>,
    ids: Vec<String>,
    envelope: Vec<u8>,
    /// (van index, seq), interleaved across vans.
    order: Vec<(usize, u64)>,
}

impl Fleet {
    fn new(vans: usize, per_van: u64) -> Self {
        let order: Vec<(usize, u64)> = (1..=per_van).flat_map(|s| (0..vans).map(move |v| (v, s))).collect();
        Fleet {
            fleet: FleetId::new("acme").unwrap(),
            vans: (0..vans).map(|v| DeviceId::new(format!("van-{v}")).unwrap()).collect(),
            ids: order.iter().map(|(v, s)| format!("{v:08x}{s:024x}")).collect(),
            envelope: vec![0x5a; 200],
            order,
        }
    }

    fn event(&self, i: usize) -> NewEvent<'_> {
        let (v, seq) = self.order[i];
        NewEvent {
            device: &self.vans[v],
            seq,
            event_id: &self.ids[i],
            gnss_ms: i64::try_from(seq).unwrap() * 1000,
            kind: "position",
            envelope: &self.envelope,
            received_ms: 0,
            quarantine: None,
        }
    }

    /// The events of the vans `keep` selects, in batches, in the order they were sent.
    fn batches(&self, batch: usize, keep: impl Fn(usize) -> bool) -> Vec<Vec<NewEvent<'_>>> {
        let all: Vec<NewEvent<'_>> =
            (0..self.order.len()).filter(|&i| keep(self.order[i].0)).map(|i| self.event(i)).collect();
        all.chunks(batch).map(<[NewEvent<'_>]>::to_vec).collect()
    }
}

/// (events/s, CPU µs per event of this process).
fn sqlite_rate(fleet: &Fleet, batch: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("hub.db"), StoreOptions::default()).unwrap();
    let batches = fleet.batches(batch, |_| true);
    let (cpu, start) = (own_cpu(), Instant::now());
    for batch in &batches {
        let tx = store.transaction().unwrap();
        let mut touched = BTreeSet::new();
        for e in batch {
            assert_eq!(tx.insert_event(e).unwrap(), EventInsert::Stored);
            touched.insert(e.device);
        }
        for device in touched {
            tx.advance_ack(&fleet.fleet, device, 0).unwrap();
        }
        tx.commit().unwrap();
    }
    let n = fleet.order.len() as f64;
    (n / start.elapsed().as_secs_f64(), (own_cpu() - cpu) * 1e6 / n)
}

async fn store_share(store: &mut PgStore, fleet: &FleetId, batches: &[Vec<NewEvent<'_>>]) {
    for batch in batches {
        let results = store.insert_events(batch).await.unwrap();
        assert!(results.iter().all(|r| *r == EventInsert::Stored));
        let touched: Vec<(&FleetId, &DeviceId)> = batch.iter().map(|e| (fleet, e.device)).collect();
        store.advance_acks(&touched, 0).await.unwrap();
    }
}

/// How the broker spreads the vans' messages over the hubs.
#[derive(Clone, Copy)]
enum Deal {
    /// Round-robin, message by message (Mosquitto's `$share`): every hub sees every van.
    RoundRobin,
    /// By client id (EMQX's `hash_clientid`): each van's messages reach one hub.
    ByVan,
}

/// (events/s, CPU µs per event of this process, of PostgreSQL) with `hubs` connections.
async fn postgres_rate(
    pg: &Postgres,
    name: &str,
    fleet: &Fleet,
    batch: usize,
    hubs: usize,
    deal: Deal,
) -> (f64, f64, f64) {
    let url = pg.database(name);
    let mut stores = Vec::new();
    for _ in 0..hubs {
        stores.push(PgStore::connect(&url).await.unwrap().0);
    }
    let shares: Vec<Vec<Vec<NewEvent<'_>>>> = match deal {
        Deal::RoundRobin => {
            let all = fleet.batches(batch, |_| true);
            (0..hubs).map(|h| all.iter().skip(h).step_by(hubs).cloned().collect()).collect()
        }
        Deal::ByVan => (0..hubs).map(|h| fleet.batches(batch, |v| v % hubs == h)).collect(),
    };
    let postmaster = pg.postmaster_pid();
    let (cpu, pg_cpu, start) = (own_cpu(), tree_cpu(postmaster), Instant::now());
    let runs = stores.iter_mut().zip(&shares).map(|(store, share)| store_share(store, &fleet.fleet, share));
    futures_util::future::join_all(runs).await;
    let elapsed = start.elapsed().as_secs_f64();
    let n = fleet.order.len() as f64;
    let acked = pg.psql_in(name, "SELECT min(up_to_seq) FROM device_acks");
    assert_eq!(acked, fleet.order.last().unwrap().1.to_string(), "every van acked to its last seq");
    (n / elapsed, (own_cpu() - cpu) * 1e6 / n, (tree_cpu(postmaster) - pg_cpu) * 1e6 / n)
}

fn main() {
    let (_, vans, per_van) = bench_size();
    let batch: usize = std::env::var("DOORSTEP_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(IngestSection::default().batch_max);
    let fleet = Fleet::new(vans, per_van);
    println!("event_store: {vans} vans × {per_van} events, batches of {batch}, load {}", load_average());

    let (lite, lite_us) = sqlite_rate(&fleet, batch);
    println!("SQLite:              {lite:>8.0} events/s, {lite_us:.1} µs CPU each");

    let pg = Postgres::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (one, one_us, one_pg_us) =
        runtime.block_on(postgres_rate(&pg, "one", &fleet, batch, 1, Deal::RoundRobin));
    println!(
        "PostgreSQL, 1 hub:   {one:>8.0} events/s, {:.0}% of SQLite; CPU per event: hub {one_us:.1} µs, PostgreSQL {one_pg_us:.1} µs",
        100.0 * one / lite
    );
    for (deal, name, label) in
        [(Deal::RoundRobin, "three_rr", "round-robin"), (Deal::ByVan, "three_by_van", "by van     ")]
    {
        let (three, three_us, three_pg_us) =
            runtime.block_on(postgres_rate(&pg, name, &fleet, batch, 3, deal));
        println!(
            "PostgreSQL, 3 hubs, {label}: {three:>8.0} events/s in total, {:.2}× one hub; CPU per event: hubs {three_us:.1} µs, PostgreSQL {three_pg_us:.1} µs",
            three / one
        );
    }
    println!("load after: {}", load_average());
}
