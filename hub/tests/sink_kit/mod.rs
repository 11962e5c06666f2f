//! What the business-sink tests share: a database with a shipment, reconciliation inside
//! the writer's transaction (as ingest runs it), the sinks' outbox read back, a hub that
//! stops mid-send, and a loopback vendor that records every request and answers through a
//! vendor's own checks, after any scripted answers (429 with `Retry-After`, a late answer).

#![allow(dead_code, unreachable_pub)]

#[path = "../fake_vendor/loopback.rs"]
mod loopback;
pub use loopback::serve;
use loopback::{insert_shipment, ups_shipment};

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use doorstep_hub::config::ChannelMap;
use doorstep_hub::ingest::{DEFAULT_MAX_EVENT_AHEAD_MS, Domain, apply_to_shipment};
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::{CanonicalStatus, Carrier, CarrierEvent};
use doorstep_hub::reconcile::{Input, Rules};
use doorstep_hub::sinks::{Dispatcher, Sinks, registry};
use doorstep_hub::store::{Contact, ContactChannel, Store, StoreOptions};
use doorstep_proto::TrackingNumber;

pub const TRACKING: &str = "1Z999AA10123456784";
pub const EMAIL: &str = "ada@example.com";
/// 2025-07-01 08:00Z.
pub const T0: i64 = 1_751_356_800_000;

// ---- the hub's side: a database, reconciliation in a transaction, the dispatcher ---------

/// The sinks of a `[[sinks]]` config text.
pub fn sinks(text: &str) -> Sinks {
    let table: toml::Table = toml::from_str(text).expect("toml");
    let entries: Vec<toml::Table> = table["sinks"]
        .as_array()
        .expect("[[sinks]]")
        .iter()
        .map(|v| v.as_table().expect("table").clone())
        .collect();
    registry::build(&entries).expect("sinks build")
}

/// The writer's domain, enqueuing for `sinks`.
pub fn domain(sinks: &Sinks) -> Domain {
    Domain {
        rules: Rules::default(),
        channel_map: ChannelMap::default(),
        max_event_ahead_ms: DEFAULT_MAX_EVENT_AHEAD_MS,
        metrics: Arc::new(Metrics::default()),
        sinks: sinks.subscriptions(),
    }
}

/// A dispatcher for `sinks` on the database at `db`.
pub fn dispatcher(sinks: Sinks, db: &Path) -> Dispatcher {
    Dispatcher::new(sinks, db, Arc::new(Metrics::default())).expect("dispatcher")
}

/// A database with one shipment whose customer consented to e-mail; returns its id.
pub fn database(path: &Path, tracking: &str) -> i64 {
    shipment_with_consent(path, tracking, true)
}

/// A shipment whose customer gave an e-mail address, consenting to it or not; its id.
pub fn shipment_with_consent(path: &Path, tracking: &str, consent: bool) -> i64 {
    let contacts = [(ContactChannel::Email, Contact { recipient: EMAIL.into(), consent })];
    insert_shipment(path, &ups_shipment(tracking, contacts, "en", "UTC"), T0, None)
}

/// Reconciles `input` for the shipment inside one writer transaction, committed or (with
/// `commit` false) rolled back.
pub fn feed(path: &Path, domain: &Domain, tracking: &str, input: Input, now: i64, commit: bool) {
    let mut store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    let shipment = tx
        .shipment_by_tracking(&TrackingNumber::new(tracking).expect("tracking"))
        .expect("read")
        .expect("shipment");
    apply_to_shipment(&tx, domain, &shipment, &input, now).expect("apply");
    if commit {
        tx.commit().expect("commit");
    }
}

/// The carrier's word on [`TRACKING`].
pub fn carrier(status: CanonicalStatus, at_ms: i64) -> Input {
    carrier_on(TRACKING, status, at_ms)
}

/// The carrier's word on any parcel.
pub fn carrier_on(tracking: &str, status: CanonicalStatus, at_ms: i64) -> Input {
    Input::Carrier(CarrierEvent {
        carrier: Carrier::EasyPost,
        event_key: format!("ev-{tracking}-{at_ms}"),
        tracking_number: TrackingNumber::new(tracking).expect("tracking"),
        status,
        raw_status: format!("{status:?}"),
        occurred_ms: at_ms,
        expected_delivery: None,
        message: Some("Receiver not available".into()),
        received_ms: None,
    })
}

/// The shipment left the depot at `at_ms` (not yet on a van's route).
pub fn dispatched(at_ms: i64) -> Input {
    Input::Dispatched { at_ms, on_route: false }
}

/// Delivered: the carrier's word at `at_ms`, then the hold; returns when it is final.
pub fn deliver(path: &Path, domain: &Domain, tracking: &str, at_ms: i64) -> i64 {
    feed(path, domain, tracking, carrier(CanonicalStatus::Delivered, at_ms), at_ms, true);
    let later = at_ms + Rules::default().hold_ms;
    feed(path, domain, tracking, Input::Wake { now_ms: later }, later, true);
    later
}

/// (sink, event, status) of every sink row of a shipment.
pub fn rows(path: &Path, shipment: i64) -> Vec<(String, String, String)> {
    let store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    store
        .sink_rows_for_shipment(shipment)
        .expect("rows")
        .into_iter()
        .map(|r| (r.sink, r.event, r.status.to_string()))
        .collect()
}

/// "event status" of every sink row of a shipment.
pub fn statuses(path: &Path, shipment: i64) -> Vec<String> {
    rows(path, shipment).into_iter().map(|(_, e, s)| format!("{e} {s}")).collect()
}

/// (outcome, detail) of every log entry of a shipment's row for `event`.
pub fn outcomes(path: &Path, shipment: i64, event: &str) -> Vec<(String, Option<String>)> {
    let store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    let row = store.sink_rows_for_shipment(shipment).expect("rows").into_iter().find(|r| r.event == event);
    let row = row.unwrap_or_else(|| panic!("no row for {event}"));
    store.sink_outcomes(row.id).expect("log").into_iter().map(|o| (o.outcome.to_string(), o.detail)).collect()
}

/// The last log entry of a shipment's row for `event`: (outcome, detail).
pub fn last_outcome(path: &Path, shipment: i64, event: &str) -> (String, String) {
    let log = outcomes(path, shipment, event);
    let (outcome, detail) = log.last().unwrap_or_else(|| panic!("no outcome for {event}")).clone();
    (outcome, detail.unwrap_or_default())
}

/// The shipment's row for `event` failed, its last log entry saying each of `words`.
pub fn failed_saying(path: &Path, shipment: i64, event: &str, words: &[&str]) {
    let (outcome, detail) = last_outcome(path, shipment, event);
    assert_eq!(outcome, "failed");
    assert!(words.iter().all(|w| detail.contains(w)), "{words:?} in {detail}");
}

/// As if the hub had died after the vendor acted on `event` and before the hub wrote the
/// answer down: the row is left `sending` (and, with `forget_thread`, what the answer
/// would have remembered is gone).
pub fn cut_short(path: &Path, event: &str, forget_thread: bool) {
    let conn = doorstep_hub::store::Store::open(path, Default::default()).expect("open");
    let n = conn
        .raw()
        .execute("UPDATE sink_outbox SET status = 'sending' WHERE event = ?1", [event])
        .expect("left in flight");
    assert_eq!(n, 1, "one row for {event}");
    if forget_thread {
        conn.raw().execute("DELETE FROM sink_threads", doorstep_hub::store::NO_ARGS).expect("forget");
    }
}

// ---- a loopback vendor ---------------------------------------------------------------------

/// One request as the vendor received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The vendor's own checks and answer: what the vendor documents for one request.
pub type Handler = Arc<dyn Fn(&Request) -> (StatusCode, serde_json::Value) + Send + Sync>;

/// A scripted answer, given before the vendor's checks run: status, a header, a body.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub header: Option<(&'static str, &'static str)>,
    pub body: &'static str,
}

#[derive(Clone)]
struct Inner {
    handler: Handler,
    /// Every request, with the status it was answered and whether that was scripted.
    seen: Arc<Mutex<Vec<(Request, u16, bool)>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    /// The vendor acts, then answers only after this long (an answer the hub never gets).
    late: Arc<Mutex<Duration>>,
}

/// A loopback vendor API on a free port.
#[derive(Clone)]
pub struct Vendor {
    inner: Inner,
    /// Its base URL.
    pub url: String,
}

async fn answer(
    State(v): State<Inner>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
        })
        .unwrap_or_default();
    let request = Request { method, path: uri.path().to_owned(), query, headers, body };
    let scripted = v.script.lock().expect("lock").pop_front();
    if let Some(s) = scripted {
        v.seen.lock().expect("lock").push((request, s.status, true));
        let status = StatusCode::from_u16(s.status).expect("status");
        return match s.header {
            Some(h) => (status, [h], s.body).into_response(),
            None => (status, s.body).into_response(),
        };
    }
    let (status, json) = (v.handler)(&request);
    v.seen.lock().expect("lock").push((request, status.as_u16(), false));
    let late = *v.late.lock().expect("lock");
    tokio::time::sleep(late).await;
    if json.is_null() {
        return status.into_response();
    }
    (status, axum::Json(json)).into_response()
}

impl Vendor {
    /// Serves `handler` on a loopback port, over the vendor's own state (fresh, and shared
    /// with the test).
    pub async fn with_state<S: Default + Send + 'static>(
        handler: fn(&Arc<Mutex<S>>, &Request) -> (StatusCode, serde_json::Value),
    ) -> (Self, Arc<Mutex<S>>) {
        let state = Arc::new(Mutex::new(S::default()));
        let shared = Arc::clone(&state);
        (Self::start(move |r| handler(&shared, r)).await, state)
    }

    /// Serves `handler` on a loopback port.
    pub async fn start(
        handler: impl Fn(&Request) -> (StatusCode, serde_json::Value) + Send + Sync + 'static,
    ) -> Self {
        let inner = Inner {
            handler: Arc::new(handler),
            seen: Arc::default(),
            script: Arc::default(),
            late: Arc::default(),
        };
        let url = serve(Router::new().fallback(answer).with_state(inner.clone())).await;
        Self { inner, url }
    }

    /// Answers the next request with `status` (and `header`) before any check.
    pub fn then_answer(&self, status: u16, header: Option<(&'static str, &'static str)>, body: &'static str) {
        self.inner.script.lock().expect("lock").push_back(Scripted { status, header, body });
    }

    /// From now on the vendor acts, then answers after `delay`.
    pub fn answer_late(&self, delay: Duration) {
        *self.inner.late.lock().expect("lock") = delay;
    }

    /// Every request, with the status it was answered.
    pub fn seen(&self) -> Vec<(Request, u16)> {
        self.inner.seen.lock().expect("lock").iter().map(|(r, s, _)| (r.clone(), *s)).collect()
    }

    /// The requests the vendor's checks accepted (a 2xx answer, not scripted).
    pub fn accepted(&self) -> Vec<Request> {
        let seen = self.inner.seen.lock().expect("lock");
        seen.iter()
            .filter(|(_, s, scripted)| !scripted && (200..300).contains(s))
            .map(|(r, _, _)| r.clone())
            .collect()
    }
}

// ---- one test's hub: a database with a shipment, its sinks and their dispatcher ----------

/// What most sink tests start from: a fresh database holding [`TRACKING`] (its customer
/// consented to e-mail), the writer's domain enqueuing for the sinks, and their dispatcher.
pub struct Case {
    _dir: tempfile::TempDir,
    pub db: std::path::PathBuf,
    pub shipment: i64,
    pub domain: Domain,
    pub dispatcher: Dispatcher,
}

impl Case {
    /// A loopback vendor over its own state (see [`Vendor::with_state`]), and a case for
    /// the sinks `sinks` configures for the vendor's URL.
    pub async fn with_vendor<S: Default + Send + 'static>(
        handler: fn(&Arc<Mutex<S>>, &Request) -> (StatusCode, serde_json::Value),
        sinks: impl FnOnce(&str) -> Sinks,
    ) -> (Vendor, Arc<Mutex<S>>, Case) {
        let (vendor, state) = Vendor::with_state(handler).await;
        let case = Case::new(sinks(&vendor.url));
        (vendor, state, case)
    }

    /// A case for `sinks`.
    pub fn new(sinks: Sinks) -> Case {
        let dir = tempfile::tempdir().expect("dir");
        let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
        let shipment = database(&db, TRACKING);
        let domain = domain(&sinks);
        let dispatcher = dispatcher(sinks, &db);
        Case { _dir: dir, db, shipment, domain, dispatcher }
    }

    /// `input` on [`TRACKING`] at `at`, committed, then a dispatcher pass at `at`; what
    /// it sent.
    pub async fn step(&self, input: Input, at: i64) -> usize {
        feed(&self.db, &self.domain, TRACKING, input, at, true);
        self.dispatcher.run_once(at).await.expect("pass")
    }

    /// The hub died after the vendor acted on `event` and before it wrote the answer down
    /// (see [`cut_short`]): recovery leaves the row unknown (`why`), and nothing is sent
    /// again, then or an hour later.
    pub async fn not_resent_after_a_restart(&self, event: &str, forget_thread: bool, why: &str) {
        cut_short(&self.db, event, forget_thread);
        assert_eq!(self.dispatcher.recover(T0 + 1).await.expect("recover"), (0, 1), "{why}");
        assert_eq!(self.dispatcher.run_once(T0 + 1).await.expect("pass"), 0);
        assert_eq!(self.dispatcher.run_once(T0 + 3_600_000).await.expect("later"), 0);
    }

    /// The row of `shipment` for `event` failed for good, its log saying each of `words`:
    /// a pass an hour later does not retry it.
    pub async fn failed_for_good(&self, shipment: i64, event: &str, words: &[&str]) {
        failed_saying(&self.db, shipment, event, words);
        self.dispatcher.run_once(T0 + 3_600_000).await.expect("later");
        assert_eq!(
            statuses(&self.db, shipment).last().map(String::as_str),
            Some(&*format!("{event} failed"))
        );
    }

    /// (database, shipment, domain, dispatcher), as the tests name them.
    pub fn parts(&self) -> (&Path, i64, &Domain, &Dispatcher) {
        (&self.db, self.shipment, &self.domain, &self.dispatcher)
    }
}
