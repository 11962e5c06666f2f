//! Ingest throughput through a real local Mosquitto.
//!
//! Many simulated devices publish pre-signed events (signing is the devices' work, done
//! before the clock starts); the hub verifies, stores, reconciles (every event names a
//! stop whose parcel has a shipment) and acks. Checking the acks' signatures is the
//! devices' work too: one collector session reads every ack as it comes and checks all
//! of them after the clock stops; the publishing sessions subscribe to nothing. The fleet
//! runs on a runtime of its own (threads named `fleet`), so the CPU line shows its share
//! apart from the hub's. The figure is events per second from the first publish until
//! every device's last event is acked, beside ring's verify-only rate (`Envelope::open`
//! on one core, and on all cores) measured in the same run.
//!
//! It also times the writer's work alone (store, reconcile, advance the acks; one thread,
//! no broker, no signature checks) on a copy of the same data: the ceiling the SQLite
//! side puts on ingest.
//!
//! `cargo bench -p doorstep-hub --bench ingest` runs the full size; without `--bench`
//! (as `cargo test --all-targets` runs it) it runs a tiny size as a smoke test.
//! `DOORSTEP_BENCH_SIZE=<devices>x<events>` changes the size, `DOORSTEP_BENCH_BATCH=<n>`
//! the events per transaction; `DOORSTEP_BENCH_ONLY=store` runs only the writer-alone part.
//! `DOORSTEP_BENCH_PG_HUBS=3` runs only the three-hub PostgreSQL run (`1,3` by default),
//! and `DOORSTEP_BENCH_STATEMENTS=1` prints each PostgreSQL run's costliest statements
//! (`pg_stat_statements`; their times include waiting for locks, so they are not CPU).

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::cast_possible_truncation)]

#[path = "common/proc_stat.rs"]
mod proc_stat;
#[path = "common/size.rs"]
mod size;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use doorstep_hub::config::{Assign, ChannelMap};
use doorstep_hub::ingest::{Domain, StoreOutcome, store_verified};
use doorstep_hub::metrics::Metrics;
use doorstep_hub::reconcile::Rules;
use doorstep_hub::store::{NewShipment, Store, StoreOptions};
use doorstep_proto::{DeviceId, Envelope, KeyId, RouteManifest, Stop, StopId, TrackingNumber, TrustedKey};
use doorstep_testkit::postgres::Postgres;
use proc_stat::{load_average, process_cpu, stat_cpu, tree_cpu};
use size::bench_size;
use support::*;

/// Stops per simulated route; events cycle through them.
const STOPS: u32 = 20;
/// Publishing MQTT sessions.
const PUBLISHERS: usize = 2;

fn main() {
    // The hubs' warnings and errors on stderr (a batch that failed says why).
    doorstep_runtime::logging::init("warn");
    let (full, devices, per_device) = bench_size();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The simulated fleet (publishing sessions and the ack collector) runs on threads of its
    // own, so the CPU line can tell the vans' share from the hub's.
    let fleet = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fleet")
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(devices, per_device, full, fleet.handle()));
}

fn tracking(device: usize, stop: u32) -> TrackingNumber {
    TrackingNumber::new(format!("1ZBENCH{device:04}{stop:04}")).unwrap()
}

fn setup(db: &std::path::Path, vans: &[(DeviceId, doorstep_proto::SigningKey)]) {
    let mut store = Store::open(db, StoreOptions::default()).unwrap();
    for (d, k) in vans {
        store.add_device(&fleet(), d, &k.public_key(), false, 0).unwrap();
    }
    let tx = store.transaction().unwrap();
    for (i, (d, _)) in vans.iter().enumerate() {
        let mut stops = Vec::new();
        for s in 0..STOPS {
            let tn = tracking(i, s);
            let contacts = [(
                doorstep_hub::store::ContactChannel::Sms,
                doorstep_hub::store::Contact { recipient: "+15555550100".into(), consent: true },
            )]
            .into_iter()
            .collect();
            tx.insert_shipment(
                &NewShipment {
                    tracking_number: tn.clone(),
                    carrier: Some("ups".into()),
                    order_id: None,
                    contacts,
                    locale: "en".into(),
                    time_zone: "UTC".into(),
                },
                0,
            )
            .unwrap();
            stops.push(Stop {
                stop_id: StopId::new(format!("s{s}")).unwrap(),
                lat: 47.0,
                lon: 8.0,
                tracking_numbers: vec![tn],
                approach_m: None,
                arrival_m: None,
                dwell_s: None,
                label: None,
            });
        }
        let route = RouteManifest { route_id: doorstep_proto::RouteId::new("route-1").unwrap(), stops };
        tx.upsert_route(&fleet(), d, &route, 0).unwrap();
    }
    tx.commit().unwrap();
}

/// CPU seconds of each thread of this process, summed by thread kind.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((name, cpu)) = stat_cpu(&stat) else { continue };
        let name = if name.starts_with("tokio") { "hub tokio workers".to_owned() } else { name };
        *out.entry(name).or_default() += cpu;
    }
    out
}

fn verify_rate(envelopes: &[Vec<u8>], keyring: &HashMap<KeyId, TrustedKey>, threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in envelopes.chunks(envelopes.len().div_ceil(threads)) {
            s.spawn(move || {
                for e in part {
                    Envelope::open(e, keyring).unwrap();
                }
            });
        }
    });
    envelopes.len() as f64 / start.elapsed().as_secs_f64()
}

/// The writer's per-event step on already verified events, in transactions of `batch`,
/// each advancing the acks of the devices it touched: what the writer thread does between
/// taking a batch and handing out its acks.
fn store_only_rate(db: &std::path::Path, messages: &[(String, Vec<u8>)], batch: usize) -> (f64, f64) {
    let mut store = Store::open(db, StoreOptions::default()).unwrap();
    let domain = Domain {
        rules: Rules { hold_ms: HubOptions::default().hold_ms, ..Rules::default() },
        channel_map: ChannelMap::default(),
        max_event_ahead_ms: doorstep_hub::ingest::DEFAULT_MAX_EVENT_AHEAD_MS,
        metrics: Arc::new(Metrics::default()),
        sinks: Default::default(),
    };
    // Decoding is the verifiers' work, as is the signature check.
    let decoded: Vec<(Envelope, &[u8])> =
        messages.iter().map(|(_, m)| (Envelope::peek_unverified(m).unwrap().1, m.as_slice())).collect();
    let now = doorstep_hub::ingest::now_ms();
    let cpu = || {
        std::fs::read_to_string("/proc/thread-self/stat").ok().and_then(|s| stat_cpu(&s)).map_or(0.0, |c| c.1)
    };
    let cpu_start = cpu();
    let start = Instant::now();
    for chunk in decoded.chunks(batch) {
        let tx = store.transaction().unwrap();
        let mut touched = std::collections::BTreeSet::new();
        for (envelope, signed) in chunk {
            let (outcome, _) = store_verified(&tx, &domain, envelope, signed, now).unwrap();
            assert_eq!(outcome, StoreOutcome::Stored);
            touched.insert(&envelope.device);
        }
        for device in touched {
            tx.advance_ack(&fleet(), device, now).unwrap();
        }
        tx.commit().unwrap();
    }
    let n = decoded.len() as f64;
    (n / start.elapsed().as_secs_f64(), (cpu() - cpu_start) * 1e6 / n)
}

async fn run(devices: usize, per_device: u64, full: bool, fleet_rt: &tokio::runtime::Handle) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let vans: Vec<_> = (0..devices)
        .map(|i| (device(&format!("van-{i}")), key(u8::try_from(i % 250).unwrap() + 1)))
        .collect();
    setup(&db, &vans);

    // Pre-sign every event, interleaved across devices as a fleet would send them.
    let mut messages: Vec<(String, Vec<u8>)> = Vec::with_capacity(devices * per_device as usize);
    for seq in 1..=per_device {
        for (d, k) in &vans {
            let stop = u32::try_from(seq % u64::from(STOPS)).unwrap();
            messages.push((
                evt_topic(d),
                seal(k, d, seq, nearby(u32::try_from(seq).unwrap(), &format!("s{stop}"))),
            ));
        }
    }
    let keyring: HashMap<KeyId, TrustedKey> = vans
        .iter()
        .map(|(d, k)| (k.key_id(), TrustedKey { device: d.clone(), key: k.public_key() }))
        .collect();
    let sample: Vec<Vec<u8>> =
        messages.iter().take(if full { 20_000 } else { 100 }).map(|(_, m)| m.clone()).collect();
    let verify_1 = verify_rate(&sample, &keyring, 1);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let verify_n = verify_rate(&sample, &keyring, cores);

    let store_db = dir.path().join("store-only.db");
    setup(&store_db, &vans);
    // DOORSTEP_BENCH_BATCH=<n> overrides the events per transaction (the hub's batch_max).
    let batch_max: usize = std::env::var("DOORSTEP_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(HubOptions::default().batch_max);
    let (store_rate, store_us) = store_only_rate(&store_db, &messages, batch_max);
    println!(
        "writer alone (store, reconcile, acks; 1 thread): {store_rate:.0} events/s, {store_us:.1} µs CPU each"
    );
    if std::env::var("DOORSTEP_BENCH_ONLY").is_ok_and(|v| v == "store") {
        return;
    }

    // DOORSTEP_BENCH_PG_HUBS=3 runs only the three-hub round-robin PostgreSQL run (to
    // profile it), =3v only the three hubs splitting by van; read first, so a mistyped
    // value stops the bench before it runs anything.
    let runs: Vec<(usize, Assign)> = match std::env::var("DOORSTEP_BENCH_PG_HUBS") {
        Ok(v) => v
            .split(',')
            .map(|n| {
                let n = n.trim();
                let (hubs, assign) = match n.strip_suffix('v') {
                    Some(hubs) => (hubs, Assign::ByVan),
                    None => (n, Assign::RoundRobin),
                };
                let hubs = hubs.parse().unwrap_or_else(|_| {
                    panic!("DOORSTEP_BENCH_PG_HUBS: {n:?} is not a number of hubs (3, or 3v: split by van)")
                });
                (hubs, assign)
            })
            .collect(),
        Err(_) => vec![(1, Assign::RoundRobin), (3, Assign::RoundRobin), (3, Assign::ByVan)],
    };
    let work = Load { messages: &messages, vans: &vans, per_device, full, fleet_rt, batch_max };
    let sqlite = through_broker(&db, 1, Assign::RoundRobin, work, None).await;
    let (rate, elapsed, hub) = (sqlite.rate, sqlite.elapsed, &sqlite.hubs[0]);
    let (cpu_before, cpu_after, broker_cpu) = (&sqlite.cpu_before, &sqlite.cpu_after, sqlite.broker_cpu);
    let (load_before, load_after, checked) = (&sqlite.load_before, &sqlite.load_after, sqlite.acks_checked);
    let total = messages.len();
    let commits = hub.metrics.get("doorstep_hub_commits_total", &[]);
    let enqueued: i64 = hub
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("doorstep_hub_notifications_enqueued_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum();
    let busy = |stage| hub.metrics.get("doorstep_hub_busy_us_total", &[("stage", stage)]) as f64 / 1e6;
    let (verify_s, writer_s, commit_s) = (busy("verify"), busy("writer"), busy("commit"));

    println!("ingest through mosquitto: {devices} devices x {per_device} events = {total} events");
    println!("  hub (verify, store, reconcile, ack): {rate:.0} events/s in {elapsed:.2} s");
    println!("  ring verify-only, 1 thread:           {verify_1:.0} events/s");
    println!("  ring verify-only, {cores} threads:          {verify_n:.0} events/s");
    println!("  ratio hub / verify-only 1 thread:     {:.0}%", 100.0 * rate / verify_1);
    println!("  ratio hub / verify-only {cores} threads:    {:.0}%", 100.0 * rate / verify_n);
    println!(
        "  transactions: {commits} (avg {:.0} events each); notifications enqueued: {enqueued}; acks: {checked}, each checked after the clock stopped",
        total as f64 / commits.max(1) as f64
    );
    println!(
        "  busy: verify {verify_s:.2} s (all threads), writer {writer_s:.2} s (of which commit {commit_s:.2} s), wall {elapsed:.2} s"
    );
    let mut cpu: Vec<String> = cpu_after
        .iter()
        .map(|(n, c)| (n, c - cpu_before.get(n).copied().unwrap_or(0.0)))
        .filter(|(_, c)| *c > 0.0)
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect();
    cpu.push(format!("mosquitto {broker_cpu:.2}"));
    println!("  CPU seconds while ingesting (hub, simulated fleet, broker): {}", cpu.join(", "));
    println!("  load average (1 min) before {load_before}, after {load_after}; {cores} cores");
    for hub in sqlite.hubs {
        hub.stop().await;
    }

    // The same fleet with the hub's state on PostgreSQL (a server of this run's own, on
    // this machine's two cores beside the broker and the hubs): one hub, then three hubs
    // of one group on one database, dealt round-robin by the broker, then splitting the
    // vans among them (`mqtt.assign = "by_van"`).
    // DOORSTEP_BENCH_STATEMENTS=1: print each run's costliest statements
    // (pg_stat_statements), to see where PostgreSQL's share goes.
    let statements = std::env::var_os("DOORSTEP_BENCH_STATEMENTS").is_some();
    let pg = if statements {
        Postgres::start_with(&["shared_preload_libraries=pg_stat_statements"])
    } else {
        Postgres::start()
    };
    let mut pg_rates = Vec::new();
    for &(hubs, assign) in &runs {
        let by_van = assign == Assign::ByVan;
        let db_name = format!("bench_{hubs}{}", if by_van { "_by_van" } else { "" });
        let url = std::path::PathBuf::from(pg.database(&db_name));
        setup(&url, &vans);
        if statements {
            pg.psql_in(&db_name, "CREATE EXTENSION pg_stat_statements");
            pg.psql_in(&db_name, "SELECT pg_stat_statements_reset()");
        }
        let run = through_broker(&url, hubs, assign, work, Some(pg.postmaster_pid())).await;
        // Every thread of this process but the simulated fleet's: the hubs'.
        let hub_cpu: f64 = run
            .cpu_after
            .iter()
            .filter(|(n, _)| n.as_str() != "fleet")
            .map(|(n, c)| c - run.cpu_before.get(n).copied().unwrap_or(0.0))
            .sum();
        let per_event = |cpu: f64| cpu * 1e6 / total as f64;
        let commits: i64 = run.hubs.iter().map(|h| h.metrics.get("doorstep_hub_commits_total", &[])).sum();
        println!(
            "  PostgreSQL, {hubs} hub{}: {:.0} events/s in {:.2} s ({:.0}% of SQLite in this run); CPU per event: hub {:.1} µs, PostgreSQL {:.1} µs, broker {:.1} µs",
            match (hubs, by_van) {
                (1, _) => "",
                (_, false) => "s (one shared subscription group, dealt round-robin)",
                (_, true) => "s (one group, split by van)",
            },
            run.rate,
            run.elapsed,
            100.0 * run.rate / rate,
            per_event(hub_cpu),
            per_event(run.database_cpu),
            per_event(run.broker_cpu),
        );
        let retried: i64 = run
            .hubs
            .iter()
            .flat_map(|h| {
                ["shipment_changed", "store_conflict"].map(|reason| {
                    h.metrics.get("doorstep_hub_ingest_total", &[("outcome", "retried"), ("reason", reason)])
                })
            })
            .sum();
        println!(
            "    transactions: {commits} (avg {:.0} events each); batch retries: {retried}",
            total as f64 / commits.max(1) as f64
        );
        if statements {
            let top = pg.psql_in(
                &db_name,
                "SELECT calls, round(total_exec_time::numeric, 1), rows,
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 120)
                 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 ORDER BY total_exec_time DESC LIMIT 12",
            );
            println!("    statements (calls|ms|rows|query):");
            for line in top.lines() {
                println!("      {line}");
            }
        }
        for hub in run.hubs {
            hub.stop().await;
        }
        pg_rates.push((hubs, assign, run.rate));
    }
    let rate_of = |n: usize, a: Assign| {
        pg_rates.iter().find(|(hubs, assign, _)| *hubs == n && (n == 1 || *assign == a)).map(|r| r.2)
    };
    let one = rate_of(1, Assign::RoundRobin);
    if let (Some(one), Some(three)) = (one, rate_of(3, Assign::RoundRobin)) {
        println!("  PostgreSQL, 3 hubs round-robin / 1 hub: {:.2}x", three / one);
    }
    if let (Some(one), Some(three)) = (one, rate_of(3, Assign::ByVan)) {
        println!("  PostgreSQL, 3 hubs by van / 1 hub: {:.2}x", three / one);
    }
}

/// What every run of the whole path carries: the same fleet, the same signed events.
#[derive(Clone, Copy)]
struct Load<'a> {
    messages: &'a [(String, Vec<u8>)],
    vans: &'a [(DeviceId, doorstep_proto::SigningKey)],
    per_device: u64,
    full: bool,
    fleet_rt: &'a tokio::runtime::Handle,
    batch_max: usize,
}

/// One run of the whole path through the broker.
struct Through {
    rate: f64,
    elapsed: f64,
    hubs: Vec<TestHub>,
    cpu_before: std::collections::BTreeMap<String, f64>,
    cpu_after: std::collections::BTreeMap<String, f64>,
    broker_cpu: f64,
    /// CPU seconds of the database server (PostgreSQL's postmaster and its backends).
    database_cpu: f64,
    load_before: String,
    load_after: String,
    acks_checked: usize,
}

/// Publishes every message through a broker of its own (no session of an earlier run
/// queues for a stopped hub) to `hubs` hubs on `db` (one shared
/// subscription group when several) and times it until every device's last event is
/// acked. The hubs are left running for their metrics.
async fn through_broker(
    db: &std::path::Path,
    hubs: usize,
    assign: Assign,
    work: Load<'_>,
    postmaster: Option<u32>,
) -> Through {
    let Load { messages, vans, per_device, full, fleet_rt, batch_max } = work;
    let broker = broker().await;
    let devices = vans.len();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut started = Vec::new();
    for h in 0..hubs {
        let options = HubOptions {
            verify_threads: cores,
            batch_max,
            client_id: format!("bench-hub-{h}"),
            shared_group: (hubs > 1).then(|| "bench".to_owned()),
            assign,
            ..HubOptions::default()
        };
        started.push(TestHub::start(broker.port(), db, options).await);
    }
    if assign == Assign::ByVan {
        // Before the clock starts: every hub sees the group and holds its vans' topics.
        assert!(
            split_settles(&started, vans.len(), Duration::from_secs(30)).await,
            "the hubs did not split the vans within 30 s"
        );
    }
    let hub = &started[0];
    let port = broker.port();
    let acks = fleet_rt
        .spawn(SimFleet::connect_with(port, "bench-acks", hub_key().public_key(), FleetMode::DeferVerify))
        .await
        .unwrap();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let name = format!("bench-pub-{p}");
        publishers.push(
            fleet_rt
                .spawn(async move {
                    SimFleet::connect_with(port, &name, hub_key().public_key(), FleetMode::PublishOnly).await
                })
                .await
                .unwrap(),
        );
    }
    let total = messages.len();
    let database_before = postmaster.map_or(0.0, tree_cpu);
    let load_before = load_average();
    let cpu_before = thread_cpu();
    let broker_before = process_cpu(broker.pid());
    let start = Instant::now();
    let mut tasks = Vec::new();
    // Each device's events stay on one session, in seq order.
    let mut per_publisher: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); PUBLISHERS];
    for (i, m) in messages.iter().enumerate() {
        per_publisher[(i % devices) % PUBLISHERS].push(m.clone());
    }
    for (publisher, batch) in publishers.iter().zip(per_publisher) {
        let client = publisher.client.clone();
        tasks.push(fleet_rt.spawn(async move {
            for (topic, payload) in batch {
                client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("published {total} in {:.2} s", start.elapsed().as_secs_f64());
    let timeout = Duration::from_secs(if full { 300 } else { 30 });
    let deadline = Instant::now() + timeout;
    let mut done = false;
    while Instant::now() < deadline && !done {
        done = acks
            .wait_for(Duration::from_secs(5), |i| {
                vans.iter().all(|(d, _)| i.acked.get(d) == Some(&per_device))
            })
            .await;
        if !done {
            let acked: u64 = acks.inbox.lock().unwrap().acked.values().sum();
            println!(
                "  progress at {:.1} s: acked {acked}, stored {}, rejected {}, commits {}, pending {}, overload {}",
                start.elapsed().as_secs_f64(),
                hub.metrics.ingest_outcome_total("stored"),
                hub.metrics.ingest_outcome_total("rejected"),
                hub.metrics.get("doorstep_hub_commits_total", &[]),
                hub.metrics.get("doorstep_hub_queue_depth", &[("queue", "mqtt_pending")]),
                hub.metrics
                    .get("doorstep_hub_ingest_total", &[("outcome", "rejected"), ("reason", "overload")]),
            );
        }
    }
    let elapsed = start.elapsed();
    if !done {
        // Say where it stopped: the hub's own high-water marks beside what the fleet saw.
        let inbox = acks.inbox.lock().unwrap();
        let lagging: Vec<String> = vans
            .iter()
            .filter(|(d, _)| inbox.acked.get(d) != Some(&per_device))
            .take(10)
            .map(|(d, _)| format!("{d} acked {:?}", inbox.acked.get(d)))
            .collect();
        println!("  devices not fully acked (first 10): {}", lagging.join(", "));
        println!("  hub metrics:\n{}", hub.metrics.render());
    }
    assert!(done, "not every event was acked within {timeout:?}");
    let cpu_after = thread_cpu();
    let broker_cpu = process_cpu(broker.pid()) - broker_before;
    let database_cpu = postmaster.map_or(0.0, tree_cpu) - database_before;
    let load_after = load_average();
    // The vans' side of the acks, off the clock: every one is signed by the hub.
    let acks_checked = acks.verify_deferred();
    assert!(acks.inbox.lock().unwrap().refused.is_empty(), "every ack decodes");
    for p in &publishers {
        p.stop();
    }
    acks.stop();
    let stored = Store::open(db, StoreOptions::default()).unwrap().total_events().unwrap();
    assert_eq!(stored, total as u64, "every event stored exactly once");
    Through {
        rate: total as f64 / elapsed.as_secs_f64(),
        elapsed: elapsed.as_secs_f64(),
        hubs: started,
        cpu_before,
        cpu_after,
        broker_cpu,
        database_cpu,
        load_before,
        load_after,
        acks_checked,
    }
}
