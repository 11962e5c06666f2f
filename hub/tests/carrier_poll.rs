//! Carriers that never call: the hub polls ShipEngine for their parcels and registers new
//! parcels with AfterShip, against loopback vendors that check each request the way the
//! vendor documents it and answer the way the vendor does, quirks included (ShipEngine's
//! "not yet in system" 200, AfterShip's "already exists" 400, both vendors' 429s).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use doorstep_hub::carrier::jobs::{self, JobSettings};
use doorstep_hub::carrier::poll::{PollSettings, ShipEnginePoll};
use doorstep_hub::carrier::registration::{AfterShipRegistration, RegisterSettings};
use doorstep_hub::carrier::schedule::Schedule;
use doorstep_hub::store::{CarrierJobRecord, JobState, Store, StoreOptions};
use doorstep_proto::TrackingNumber;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use support::*;

const SHIPENGINE_KEY: &str = "TEST_ZZaZZ2ZZZZvZZ0ZZZnZZZtZZZZZZ6ZZZZZZ";
const AFTERSHIP_KEY: &str = "asat_5b9a8d2c4e1f4a7bb0c1d2e3f4a5b6c7";
/// A USPS parcel (the hub polls USPS through ShipEngine).
const USPS: &str = "9405511899223197428490";

// ---- a loopback vendor --------------------------------------------------------------------

/// One request the vendor received.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An answer: status, headers, JSON body.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply { status, headers: Vec::new(), body: body.into() }
}

/// Answers a request, given the ones before it.
type Respond = Arc<dyn Fn(&Seen, &[Seen]) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Vendor {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Respond,
}

async fn answer(
    State(vendor): State<Vendor>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        at: Instant::now(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect(),
        headers,
        body: body.to_vec(),
    };
    let reply = {
        let mut all = vendor.seen.lock().unwrap();
        let reply = (vendor.respond)(&seen, &all);
        all.push(seen);
        reply
    };
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

impl Vendor {
    async fn start(respond: impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync + 'static) -> (Vendor, String) {
        let vendor = Vendor { seen: Arc::default(), respond: Arc::new(respond) };
        let app = axum::Router::new().fallback(answer).with_state(vendor.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (vendor, base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

// ---- what ShipEngine and AfterShip answer -------------------------------------------------

/// `GET /v1/tracking` for a parcel the carrier has not scanned yet: a 200, `NY`, no events.
fn not_yet_in_system(tracking: &str) -> Reply {
    reply(
        200,
        serde_json::json!({
            "tracking_number": tracking, "tracking_url": null, "status_code": "NY", "carrier_code": "usps",
            "carrier_id": 1, "carrier_detail_code": null, "status_description": "Not Yet In System",
            "carrier_status_code": null, "carrier_status_description": null, "ship_date": null,
            "estimated_delivery_date": null, "actual_delivery_date": null, "exception_description": null,
            "events": []
        })
        .to_string(),
    )
}

fn usps_event(at: &str, description: &str, status_code: &str) -> serde_json::Value {
    serde_json::json!({
        "occurred_at": at, "carrier_occurred_at": at, "description": description,
        "city_locality": "BROOKLYN", "state_province": "NY", "postal_code": "11201", "country_code": "US",
        "company_name": null, "signer": null, "event_code": "10", "carrier_detail_code": null,
        "status_code": status_code, "carrier_status_code": "10", "latitude": null, "longitude": null
    })
}

/// The tracking info ShipEngine answers a poll with, and carries in an `API_TRACK` webhook.
fn in_transit_info(tracking: &str) -> serde_json::Value {
    serde_json::json!({
        "tracking_number": tracking, "tracking_url": format!("https://tools.usps.com/go/TrackConfirmAction.action?tLabels={tracking}"),
        "status_code": "IT", "carrier_code": "usps", "carrier_id": 1, "carrier_detail_code": null,
        "status_description": "In Transit", "carrier_status_code": "10",
        "carrier_status_description": "Arrived at USPS Regional Facility", "ship_date": "2026-08-05T00:00:00Z",
        "estimated_delivery_date": "2026-08-08T00:00:00Z", "actual_delivery_date": null,
        "exception_description": null,
        "events": [usps_event("2026-08-06T21:14:00Z", "Arrived at USPS Regional Facility", "IT")]
    })
}

fn delivered_info(tracking: &str) -> serde_json::Value {
    let mut info = in_transit_info(tracking);
    info["status_code"] = "DE".into();
    info["status_detail_code"] = "DELIVERED".into();
    info["status_description"] = "Delivered".into();
    info["carrier_status_description"] = "Delivered, In/At Mailbox".into();
    info["actual_delivery_date"] = "2026-08-07T15:02:00Z".into();
    info["events"] = serde_json::json!([
        usps_event("2026-08-07T15:02:00Z", "Delivered, In/At Mailbox", "DE"),
        usps_event("2026-08-06T21:14:00Z", "Arrived at USPS Regional Facility", "IT"),
    ]);
    info
}

fn shipengine_error(status: u16, error_type: &str, code: &str, message: &str) -> Reply {
    reply(
        status,
        serde_json::json!({"request_id": "7f3e1c52-5b1e-4f0a-9d0c-2b1f0e6c9a11", "errors": [{
            "error_source": "shipengine", "error_type": error_type, "error_code": code, "message": message}]})
        .to_string(),
    )
}

/// AfterShip's 201 for a new tracking (2024-10: the tracking itself in `data`).
fn aftership_created(tracking: &str, slug: &str, id: &str) -> Reply {
    reply(
        201,
        serde_json::json!({
            "meta": {"code": 201, "message": "The request was successful and a resource was created.", "type": "Created"},
            "data": {"id": id, "tracking_number": tracking, "slug": slug, "active": true, "tag": "Pending",
                     "subtag": "Pending_001", "subtag_message": "Pending", "checkpoints": [],
                     "created_at": "2026-08-06T10:00:00+00:00", "updated_at": "2026-08-06T10:00:00+00:00"}
        })
        .to_string(),
    )
}

fn aftership_error(status: u16, code: i64, kind: &str, message: &str) -> Reply {
    reply(
        status,
        serde_json::json!({"meta": {"code": code, "message": message, "type": kind}, "data": {}}).to_string(),
    )
}

// ---- the hub's side -----------------------------------------------------------------------

/// Fast timing for tests: first attempt at once, polls 200 ms apart doubling to 400 ms,
/// retries from `retry`.
fn job_settings(retry: Duration, per_second: f64) -> JobSettings {
    JobSettings {
        per_second,
        schedule: Schedule {
            first: Duration::ZERO,
            interval: Duration::from_millis(200),
            max_interval: Duration::from_millis(400),
            retry,
            max_age: Duration::from_secs(24 * 3600),
        },
        sweep_every: Duration::from_millis(50),
        lease: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
    }
}

fn polling(base: &str, per_second: f64) -> ShipEnginePoll {
    ShipEnginePoll::new(PollSettings {
        api_key: SHIPENGINE_KEY.into(),
        base_url: base.into(),
        carrier_codes: PollSettings::codes_for(&["usps".to_owned()], &BTreeMap::new()),
        jobs: job_settings(Duration::from_millis(200), per_second),
    })
}

fn registering(base: &str, retry: Duration) -> AfterShipRegistration {
    let overrides = BTreeMap::from([("posty".to_owned(), "posty-express".to_owned())]);
    let register = ["ups", "fedex", "posty"].map(str::to_owned);
    AfterShipRegistration::new(RegisterSettings {
        api_key: AFTERSHIP_KEY.into(),
        base_url: base.into(),
        slugs: RegisterSettings::slugs_for(&register, &overrides),
        jobs: job_settings(retry, 20.0),
    })
}

/// A worker started on a test hub's writer, stopped with [`Worker::stop`].
struct Worker {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start<V: jobs::Vendor>(hub: &TestHub, vendor: V) -> Worker {
        let cancel = CancellationToken::new();
        let writer = hub.ingest.as_ref().unwrap().writer();
        let task = jobs::spawn(vendor, writer, Arc::clone(&hub.metrics), cancel.clone()).unwrap();
        Worker { cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the worker stops").unwrap();
    }
}

fn job(db: &Path, shipment: i64, kind: &str) -> Option<CarrierJobRecord> {
    Store::open(db, StoreOptions { full_sync: false }).unwrap().carrier_job(shipment, kind).unwrap()
}

fn carrier_events(db: &Path, tracking: &str) -> i64 {
    let conn = doorstep_hub::store::Store::open(db, Default::default()).unwrap();
    conn.raw()
        .query_row("SELECT count(*) FROM carrier_events WHERE tracking_number = ?1", [tracking], |r| r.get(0))
        .unwrap()
}

fn polls(hub: &TestHub, outcome: &str) -> i64 {
    hub.metrics.get("doorstep_hub_carrier_polls_total", &[("carrier", "usps"), ("outcome", outcome)])
}

fn registrations(hub: &TestHub, carrier: &str, outcome: &str) -> i64 {
    hub.metrics.get("doorstep_hub_carrier_registrations_total", &[("carrier", carrier), ("outcome", outcome)])
}

/// Posts `body` to the hub's ShipEngine webhook, signed as ShipEngine signs it.
async fn post_shipengine_webhook(hub: &TestHub, body: &[u8]) -> serde_json::Value {
    let timestamp = rfc3339(time::OffsetDateTime::now_utc());
    let r = hub.post_shipengine(body, &timestamp, &shipengine_signature(&timestamp, body)).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Checks a poll the way ShipEngine documents "Track a package".
fn assert_is_a_tracking_request(seen: &Seen, tracking: &str) {
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/v1/tracking"), "{seen:?}");
    let query: Vec<(&str, &str)> = seen.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(query, [("carrier_code", "usps"), ("tracking_number", tracking)]);
    assert_eq!(seen.header("api-key"), Some(SHIPENGINE_KEY));
    assert!(seen.body.is_empty());
}

/// Checks a registration the way AfterShip documents "Create a tracking" (2024-10).
fn assert_is_a_creation(seen: &Seen, tracking: &str, slug: &str) {
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/tracking/2024-10/trackings"),
        "{seen:?}"
    );
    assert_eq!(seen.header("as-api-key"), Some(AFTERSHIP_KEY));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.json(), serde_json::json!({"tracking_number": tracking, "slug": slug}));
}

// ---- ShipEngine polling -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_parcel_is_stored_through_the_webhooks_dedupe_and_polling_stops_at_delivered() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let hub = TestHub::start(broker.port(), &db, HubOptions::shipengine_webhooks()).await;
    // ShipEngine: not scanned yet, a 503, in transit twice (the same answer), a 429 asking
    // for a second, then delivered.
    let (shipengine, base) = Vendor::start(|seen, before| match before.len() {
        0 => not_yet_in_system(USPS),
        1 => shipengine_error(503, "system", "unspecified", "The service is temporarily unavailable."),
        2 | 3 => reply(200, in_transit_info(USPS).to_string()),
        4 => Reply {
            headers: vec![("retry-after", "1".into())],
            ..shipengine_error(429, "system", "rate_limit_exceeded", "You have exceeded the rate limit.")
        },
        _ => {
            assert!(seen.query.get("tracking_number").is_some_and(|t| t == USPS), "{seen:?}");
            reply(200, delivered_info(USPS).to_string())
        }
    })
    .await;
    // The order system writes the carrier its own way; a FedEx parcel is not polled.
    let id = hub.create_shipment(USPS, "USPS").await;
    let fedex = hub.create_shipment("1Z999AA10123456784", "fedex").await;
    let worker = Worker::start(&hub, polling(&base, 50.0));

    assert!(
        until(Duration::from_secs(20), || job(&db, id, "poll").is_some_and(|j| j.state == JobState::Done))
            .await,
        "polling did not end: {:?} after {} requests",
        job(&db, id, "poll"),
        shipengine.seen().len()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = shipengine.seen();
    assert_eq!(seen.len(), 6, "no poll after delivered: {seen:#?}");
    for request in &seen {
        assert_is_a_tracking_request(request, USPS);
    }
    // The 429's Retry-After held the next poll back.
    assert!(seen[5].at - seen[4].at >= Duration::from_secs(1), "{:?}", seen[5].at - seen[4].at);
    assert!(job(&db, fedex, "poll").is_none());

    // In transit and delivered, once each: the repeated answer is the webhook's duplicate.
    assert_eq!(carrier_events(&db, USPS), 2);
    for (outcome, n) in
        [("not_yet", 1), ("server_error", 1), ("stored", 2), ("duplicate", 1), ("rate_limited", 1)]
    {
        assert_eq!(polls(&hub, outcome), n, "{outcome}: {}", hub.metrics.render());
    }
    let record = job(&db, id, "poll").unwrap();
    assert_eq!(
        (record.last_status.as_deref(), record.outcome.as_deref()),
        (Some("DE/DELIVERED"), Some("stored"))
    );
    assert_eq!(record.attempts, 6);
    let kinds: Vec<String> = hub
        .timeline_from(USPS, "shipengine")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.ends_with(&["delivered".to_owned()]), "{kinds:?}");

    // ShipEngine's webhook with the same tracking info, after the poll, changes nothing.
    let webhook = serde_json::json!({"resource_url": format!("https://api.shipengine.com/v1/tracking?carrier_code=usps&tracking_number={USPS}"),
        "resource_type": "API_TRACK", "data": delivered_info(USPS)});
    let answer = post_shipengine_webhook(&hub, &serde_json::to_vec(&webhook).unwrap()).await;
    assert_eq!(answer["outcome"], "duplicate");
    assert_eq!(carrier_events(&db, USPS), 2);

    worker.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_is_a_configuration_error_that_pauses_polling_instead_of_spinning() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let (shipengine, base) = Vendor::start(|_, _| {
        shipengine_error(
            401,
            "security",
            "unauthorized",
            "The API key is invalid. Please see https://www.shipengine.com/docs/auth",
        )
    })
    .await;
    let first = hub.create_shipment(USPS, "usps").await;
    let second = hub.create_shipment("9405511899223197428491", "usps").await;
    // Two a second: the first answer is in long before the second poll may go.
    let worker = Worker::start(&hub, polling(&base, 2.0));

    assert!(until(Duration::from_secs(10), || polls(&hub, "auth_error") == 1).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(shipengine.seen().len(), 1, "every poll waits once the key is refused");
    assert_eq!(polls(&hub, "auth_error"), 1);
    let refused = [first, second].map(|id| job(&db, id, "poll").unwrap());
    let asked = refused.iter().find(|j| j.attempts == 1).expect("one poll went out");
    assert_eq!((asked.state, asked.outcome.as_deref()), (JobState::Pending, Some("auth_error")));
    assert!(asked.detail.as_deref().is_some_and(|d| d.contains("unauthorized")), "{asked:?}");
    // Held back by the pause, not failed.
    assert!(refused.iter().all(|j| j.state == JobState::Pending));

    worker.stop().await;
    hub.stop().await;
}

// ---- AfterShip registration ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_new_shipment_is_registered_with_aftership_once_and_what_is_owed_survives_a_restart() {
    let Ground { broker, dir: _dir, db } = ground().await;
    const UPS: &str = "1Z999AA10123456784";
    const FEDEX: &str = "794698765432";
    // AfterShip is down at first; later it creates the UPS tracking, and already has the
    // FedEx one.
    let (aftership, base) = Vendor::start(|seen, before| {
        let tracking = seen.json()["tracking_number"].as_str().unwrap_or_default().to_owned();
        match tracking.as_str() {
            UPS if before.is_empty() => {
                aftership_error(503, 503, "InternalError", "Something went wrong on AfterShip's end.")
            }
            UPS => aftership_created(UPS, "ups", "5b74f4958776db0e00b6f5ed"),
            FEDEX => aftership_error(400, 4003, "BadRequest", "Tracking already exists."),
            _ => aftership_error(400, 4005, "BadRequest", "The value of `tracking_number` is invalid."),
        }
    })
    .await;

    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let ups = hub.create_shipment(UPS, "UPS").await;
    let dhl = hub.create_shipment("JD014600006281230704", "dhl").await;
    // The retry would come in 30 s: the hub stops long before.
    let worker = Worker::start(&hub, registering(&base, Duration::from_secs(30)));
    assert!(
        until(Duration::from_secs(10), || job(&db, ups, "register").is_some_and(|j| j.errors == 1)).await
    );
    worker.stop().await;
    hub.stop().await;
    let owed = job(&db, ups, "register").unwrap();
    assert_eq!((owed.state, owed.outcome.as_deref()), (JobState::Pending, Some("server_error")));

    // After a restart, what was owed is still owed; it comes due and is registered.
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let worker = Worker::start(&hub, registering(&base, Duration::from_millis(100)));
    {
        // Due in 30 s (± 10%): move it to now, as time passing would.
        let conn = doorstep_hub::store::Store::open(&db, Default::default()).unwrap();
        conn.raw().execute("UPDATE carrier_jobs SET due_ms = 0 WHERE shipment_id = ?1", [ups]).unwrap();
    }
    let fedex = hub.create_shipment(FEDEX, "FedEx").await;
    assert!(
        until(Duration::from_secs(10), || {
            [ups, fedex].iter().all(|id| job(&db, *id, "register").is_some_and(|j| j.state == JobState::Done))
        })
        .await,
        "{:?}",
        aftership.seen()
    );
    let registered = job(&db, ups, "register").unwrap();
    assert_eq!(registered.outcome.as_deref(), Some("registered"));
    assert_eq!(registered.detail.as_deref(), Some("5b74f4958776db0e00b6f5ed"));
    assert_eq!(job(&db, fedex, "register").unwrap().outcome.as_deref(), Some("already_registered"));
    assert_eq!(registrations(&hub, "fedex", "already_registered"), 1);
    assert_eq!(registrations(&hub, "ups", "registered"), 1);
    worker.stop().await;
    hub.stop().await;

    // A third start owes AfterShip nothing.
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let worker = Worker::start(&hub, registering(&base, Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    worker.stop().await;
    hub.stop().await;

    let seen = aftership.seen();
    let mut by_parcel: BTreeMap<String, usize> = BTreeMap::new();
    for request in &seen {
        let tracking = request.json()["tracking_number"].as_str().unwrap().to_owned();
        assert_is_a_creation(request, &tracking, if tracking == UPS { "ups" } else { "fedex" });
        *by_parcel.entry(tracking).or_default() += 1;
    }
    // UPS: the 503 and the creation; FedEx: once; DHL is not registered.
    assert_eq!(by_parcel, BTreeMap::from([(UPS.to_owned(), 2), (FEDEX.to_owned(), 1)]));
    assert!(job(&db, dhl, "register").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aftership_rate_limit_holds_registrations_until_its_reset_second_and_a_refused_input_is_not_retried()
{
    let Ground { broker, dir: _dir, db } = ground().await;
    const UPS: &str = "1Z999AA10123456784";
    const POSTY: &str = "PX0000000001";
    let (aftership, base) = Vendor::start(|seen, before| {
        let tracking = seen.json()["tracking_number"].as_str().unwrap_or_default().to_owned();
        let tried = before.iter().filter(|s| s.json()["tracking_number"] == tracking.as_str()).count();
        match (tracking.as_str(), tried) {
            (UPS, 0) => {
                // The window resets two Unix seconds from now.
                let reset = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
                Reply {
                    headers: vec![
                        ("x-ratelimit-reset", reset.to_string()),
                        ("x-ratelimit-limit", "20".into()),
                        ("x-ratelimit-remaining", "0".into()),
                    ],
                    ..aftership_error(429, 429, "TooManyRequests", "You have exceeded the API call rate limit. The default limit is 20 requests per second.")
                }
            }
            (UPS, _) => aftership_created(UPS, "ups", "65a1f0c2b7d94e0012e4c5d6"),
            _ => aftership_error(400, 4010, "BadRequest", "The value of `slug` is invalid."),
        }
    })
    .await;
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let ups = hub.create_shipment(UPS, "ups").await;
    let worker = Worker::start(&hub, registering(&base, Duration::from_millis(100)));
    assert!(until(Duration::from_secs(10), || registrations(&hub, "ups", "rate_limited") == 1).await);
    let posty = hub.create_shipment(POSTY, "Posty").await;
    assert!(
        until(Duration::from_secs(10), || {
            job(&db, ups, "register").is_some_and(|j| j.state == JobState::Done)
                && job(&db, posty, "register").is_some_and(|j| j.state == JobState::Failed)
        })
        .await,
        "{:?}",
        aftership.seen()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;
    assert_eq!(registrations(&hub, "posty", "rejected"), 1);
    assert_eq!(registrations(&hub, "ups", "rate_limited"), 1);
    hub.stop().await;

    let seen = aftership.seen();
    let ups_requests: Vec<&Seen> = seen.iter().filter(|s| s.json()["tracking_number"] == UPS).collect();
    assert_eq!(ups_requests.len(), 2);
    assert!(
        ups_requests[1].at - ups_requests[0].at >= Duration::from_secs(1),
        "the reset second was honoured"
    );
    // Nothing went out while AfterShip's window was closed.
    for request in &seen {
        assert!(
            request.at <= ups_requests[0].at || request.at >= ups_requests[0].at + Duration::from_secs(1)
        );
    }
    let posty_requests: Vec<&Seen> = seen.iter().filter(|s| s.json()["tracking_number"] == POSTY).collect();
    assert_eq!(posty_requests.len(), 1, "a refused input is not retried");
    assert_is_a_creation(posty_requests[0], POSTY, "posty-express");
    let failed = job(&db, posty, "register").unwrap();
    assert_eq!(failed.outcome.as_deref(), Some("rejected"));
    assert!(failed.detail.as_deref().is_some_and(|d| d.contains("4010") && d.contains("slug")), "{failed:?}");
}

#[test]
fn the_tracking_numbers_here_are_ones_doorstep_holds() {
    for tracking in [USPS, "9405511899223197428491", "1Z999AA10123456784", "794698765432", "PX0000000001"] {
        TrackingNumber::new(tracking).unwrap();
    }
}

// ---- from the configuration, through `serve` ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_polls_the_carriers_its_configuration_lists_and_stops_cleanly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ground { broker, dir, db } = ground().await;
    let key = dir.path().join("hub.key");
    doorstep_runtime::keyfile::create(&key, false).unwrap();
    let api_token = {
        let mut store = Store::open(&db, StoreOptions::default()).unwrap();
        let issued = doorstep_hub::access::issue(&ring::rand::SystemRandom::new()).unwrap();
        store.create_api_key("orders", &issued.key_id, &issued.digest, "admin", 0).unwrap();
        issued.token
    };
    let (shipengine, base) = Vendor::start(|_, _| reply(200, delivered_info(USPS).to_string())).await;
    let text = doorstep_hub::config::DEFAULT_CONFIG
        .replace("/var/lib/doorstep-hub/hub.db", &db.display().to_string())
        .replace("/var/lib/doorstep-hub/hub.key", &key.display().to_string())
        .replace("\"file:/var/lib/doorstep-hub/link.secret\"", "\"0123456789abcdef0123456789abcdef\"")
        .replace("port = 1883", &format!("port = {}", broker.port()))
        .replace("client_id = \"doorstep-hub\"", "client_id = \"doorstep-hub-carrier-poll\"")
        .replace(
            "# poll = [\"usps\", \"ups\"]",
            &format!("poll = [\"usps\"]\napi_key = \"{SHIPENGINE_KEY}\""),
        )
        .replace("poll_base_url = \"https://api.shipengine.com\"", &format!("poll_base_url = \"{base}\""))
        .replace("poll_first_s = 60", "poll_first_s = 0");
    let settings = doorstep_hub::config::Config::parse(&text).unwrap().validate().unwrap();
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", api.local_addr().unwrap());
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let hub = tokio::spawn(doorstep_hub::server::serve(
        settings,
        doorstep_hub::server::Listeners { public, api },
        async move { shutdown.cancelled().await },
    ));

    let client = reqwest::Client::new();
    let shipment = serde_json::json!({"tracking_number": USPS, "carrier": "usps",
        "contacts": {"email": "ann@example.com"}, "consent": true});
    let created = client
        .post(format!("{api_url}/v1/shipments"))
        .bearer_auth(&api_token)
        .json(&shipment)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_i64().unwrap();
    assert!(
        until(Duration::from_secs(15), || job(&db, id, "poll").is_some_and(|j| j.state == JobState::Done))
            .await,
        "{:?}",
        job(&db, id, "poll")
    );
    let seen = shipengine.seen();
    assert_eq!(seen.len(), 1);
    assert_is_a_tracking_request(&seen[0], USPS);
    assert_eq!(carrier_events(&db, USPS), 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), hub).await.expect("the hub stops").unwrap().unwrap();
}
