//! Scan-to-provider latency on loopback: from the moment a van's signed delivery scan is
//! handed to the MQTT client until the (fake) Twilio API receives the customer's SMS.
//!
//! The path measured is the whole chain a customer waits on: broker, verification, the
//! ingest transaction (store, reconcile, enqueue), the dispatcher's pass, the Twilio
//! request. Each parcel's carrier has already reported "delivered", so the van's signed
//! at-address scan is the second agreeing signal and the customer is told at once: no
//! hold period is involved. Scans are published at a steady pace (a fleet's normal
//! traffic, not a burst), each for its own parcel and phone number, and the fake Twilio
//! answers as the real API does (201 with a message sid).
//!
//! `cargo bench -p doorstep-hub --bench notify_latency` runs 400 scans; without `--bench`
//! (as `cargo test --all-targets` runs it) it runs 10 as a smoke test. With
//! `DOORSTEP_BENCH_NO_WAKE=1` ingest does not wake the dispatcher, which then finds new
//! messages only on its poll interval (100 ms), for comparison.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::cast_possible_truncation)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use doorstep_hub::config::ChannelMap;
use doorstep_hub::ingest::{Domain, apply_to_shipment, now_ms};
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::{CanonicalStatus, Carrier, CarrierEvent};
use doorstep_hub::notify::{Dispatcher, NotifyConfig};
use doorstep_hub::reconcile::{Input, Rules};
use doorstep_hub::store::{Contact, ContactChannel, NewShipment, Store, StoreOptions};
use doorstep_proto::{Delivery, Event, FixEvidence, RouteId, StopId, TrackingNumber};
use support::*;

/// Time between two scans: 50 a second across the fleet.
const PACE: Duration = Duration::from_millis(20);
/// The issue's goal for the 99th percentile.
const GOAL_P99: Duration = Duration::from_millis(250);
/// Tracking-link secret for the bench's settings.
const LINK_SECRET: &[u8] = b"bench-link-secret-bench-link-secret!";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scans = if full { 400 } else { 10 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(scans, full));
}

fn tracking(i: usize) -> TrackingNumber {
    TrackingNumber::new(format!("1ZLAT{i:08}")).unwrap()
}

fn phone(i: usize) -> String {
    format!("+1555{i:07}")
}

/// When the fake Twilio received each recipient's message.
#[derive(Clone, Default)]
struct FakeTwilio {
    received: Arc<Mutex<HashMap<String, Instant>>>,
}

async fn twilio_messages(State(fake): State<FakeTwilio>, body: Bytes) -> (StatusCode, String) {
    let at = Instant::now();
    let form: BTreeMap<String, String> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let to = form.get("To").cloned().unwrap_or_default();
    let sid = format!("SM{:032}", fake.received.lock().unwrap().len());
    fake.received.lock().unwrap().entry(to).or_insert(at);
    (StatusCode::CREATED, format!(r#"{{"sid":"{sid}","status":"queued"}}"#))
}

/// Shipments with an SMS contact each, whose carrier has already said "delivered".
fn setup(db: &std::path::Path, scans: usize, domain: &Domain) {
    let mut store = Store::open(db, StoreOptions::default()).unwrap();
    store.add_device(&fleet(), &device("van-1"), &key(1).public_key(), false, 0).unwrap();
    let tx = store.transaction().unwrap();
    let now = now_ms();
    for i in 0..scans {
        let contacts =
            [(ContactChannel::Sms, Contact { recipient: phone(i), consent: true })].into_iter().collect();
        let new = NewShipment {
            tracking_number: tracking(i),
            carrier: Some("ups".into()),
            order_id: None,
            contacts,
            locale: "en".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, now).unwrap();
        let shipment = tx.shipment(id).unwrap().unwrap();
        let delivered = CarrierEvent {
            carrier: Carrier::AfterShip,
            event_key: format!("bench-{i}"),
            tracking_number: tracking(i),
            status: CanonicalStatus::Delivered,
            raw_status: "Delivered".into(),
            occurred_ms: now - 60_000,
            expected_delivery: None,
            message: None,
            received_ms: Some(now),
        };
        apply_to_shipment(&tx, domain, &shipment, &Input::Carrier(delivered), now).unwrap();
    }
    tx.commit().unwrap();
}

fn scan(i: usize) -> Event {
    Event::DeliveredAtAddress(Delivery {
        route_id: RouteId::new("route-1").unwrap(),
        stop_id: StopId::new(format!("s{i}")).unwrap(),
        tracking_numbers: vec![tracking(i)],
        distance_m: 4,
        dwell_s: 45,
        fix: FixEvidence::new(now_ms(), 47.37, 8.54),
        photo: None,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(scans: usize, full: bool) {
    let broker = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let options = HubOptions::default();
    let domain = Domain {
        rules: Rules { hold_ms: options.hold_ms, ..Rules::default() },
        channel_map: ChannelMap::default(),
        max_event_ahead_ms: doorstep_hub::ingest::DEFAULT_MAX_EVENT_AHEAD_MS,
        metrics: Arc::new(Metrics::default()),
        sinks: Default::default(),
    };
    setup(&db, scans, &domain);

    let fake = FakeTwilio::default();
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", axum::routing::post(twilio_messages))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let twilio = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let hub = TestHub::start(broker.port(), &db, options).await;
    // The default poll interval and batch; a Twilio rate well above the scan rate, so the
    // figure is the hub's latency and not an account's sending limit.
    let text = format!(
        "[twilio]\nbase_url = \"{twilio}\"\naccount_sid = \"AC0001\"\nauth_token = \"bench-token\"\n\
         from = \"+15005550006\"\nrate_per_s = 200\nburst = 50\n"
    );
    let table: toml::Table = toml::from_str(&text).unwrap();
    let settings = NotifyConfig::from_table(Some(&table))
        .unwrap()
        .validate("https://track.example.com", LINK_SECRET)
        .unwrap();
    let dispatcher = Dispatcher::new(settings, &db, Arc::clone(&hub.metrics)).unwrap();
    let wake = std::env::var("DOORSTEP_BENCH_NO_WAKE").is_err();
    if wake {
        hub.ingest.as_ref().unwrap().wake_dispatcher_with(dispatcher.waker());
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let dispatching = dispatcher.clone().spawn("bench-hub", cancel.clone());

    let van =
        SimFleet::connect_with(broker.port(), "bench-van", hub_key().public_key(), FleetMode::PublishOnly)
            .await;
    let (van_id, van_key) = (device("van-1"), key(1));
    // Sign first: the van's work, not the hub's.
    let signed: Vec<Vec<u8>> = (0..scans).map(|i| seal(&van_key, &van_id, i as u64 + 1, scan(i))).collect();
    let mut sent = Vec::with_capacity(scans);
    let mut next = tokio::time::Instant::now();
    for payload in signed {
        tokio::time::sleep_until(next).await;
        next += PACE;
        sent.push(Instant::now());
        van.publish(&evt_topic(&van_id), payload).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.received.lock().unwrap().len() < scans && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = fake.received.lock().unwrap().clone();
    assert_eq!(received.len(), scans, "every scan became exactly one SMS within 30 s");

    let mut latencies: Vec<Duration> = (0..scans).map(|i| received[&phone(i)] - sent[i]).collect();
    latencies.sort();
    let (p50, p99, max) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0), latencies[scans - 1]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "scan to provider (MQTT publish → fake Twilio request), {scans} scans, one every {} ms{}:",
        PACE.as_millis(),
        if wake { "" } else { ", dispatcher on its poll interval only" }
    );
    println!("  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", ms(p50), ms(p99), ms(max));
    if full {
        let verdict = if p99 <= GOAL_P99 { "met" } else { "NOT met" };
        println!("  goal p99 <= {} ms: {verdict}", GOAL_P99.as_millis());
    }
    println!(
        "  load average (1, 5, 15 min): {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    cancel.cancel();
    let _ = dispatching.await;
    van.stop();
    hub.stop().await;
}
