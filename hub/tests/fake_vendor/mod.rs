//! A fake vendor for the notification tests: a loopback HTTP server that records every
//! request and answers from a script (status, body, delay, header), and the database
//! fixtures the tests share (one shipment with consented contacts, enqueued rows, the
//! outcome log).

#![allow(dead_code, unreachable_pub)]

mod loopback;
pub use loopback::{insert_shipment, serve, ups_shipment};

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::Milestone;
use doorstep_hub::notify::{self, Dispatcher, NotifyConfig, NotifySettings};
use doorstep_hub::store::{Contact, ContactChannel, NewNotification, Store, StoreOptions};

pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const PHONE: &str = "+15555550100";
pub const EMAIL: &str = "ada@example.com";
/// 2025-07-01 08:00Z: 10:00 in Berlin, outside quiet hours.
pub const DAY: i64 = 1_751_356_800_000;
/// 2025-07-01 21:00Z: 23:00 in Berlin.
pub const NIGHT: i64 = 1_751_403_600_000;

/// One request a fake provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A canned answer: status, body, delay, extra header.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub header: Option<(&'static str, &'static str)>,
}

impl Answer {
    pub fn ok(status: u16, body: &str) -> Self {
        Self { status, body: body.into(), delay: Duration::ZERO, header: None }
    }

    /// The answer as the vendor gives it: after its delay, with its status, header and body.
    pub async fn respond(self) -> Response {
        tokio::time::sleep(self.delay).await;
        let status = StatusCode::from_u16(self.status).expect("status");
        match self.header {
            Some((name, value)) => (status, [(name, value)], self.body).into_response(),
            None => (status, self.body).into_response(),
        }
    }
}

#[derive(Clone, Default)]
pub struct Fake {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub script: Arc<Mutex<VecDeque<Answer>>>,
    pub default: Arc<Mutex<Option<Answer>>>,
}

pub async fn record(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.note(&method, &uri, headers, &body);
    let answer = fake.next_scripted();
    let answer = answer
        .or_else(|| fake.default.lock().expect("lock").clone())
        .unwrap_or_else(|| Answer::ok(200, "ok"));
    answer.respond().await
}

impl Fake {
    pub async fn start(default: Answer) -> (Self, String) {
        let fake = Fake::default();
        *fake.default.lock().expect("lock") = Some(default);
        let url = serve(Router::new().fallback(record).with_state(fake.clone())).await;
        (fake, url)
    }

    /// Records a request as the vendor received it.
    pub fn note(&self, method: &Method, uri: &Uri, headers: HeaderMap, body: &[u8]) {
        let seen = Seen { method: method.to_string(), uri: uri.to_string(), headers, body: body.to_vec() };
        self.seen.lock().expect("lock").push(seen);
    }

    pub fn push(&self, answer: Answer) {
        self.script.lock().expect("lock").push_back(answer);
    }

    /// The next scripted answer, if any is left.
    pub fn next_scripted(&self) -> Option<Answer> {
        self.script.lock().expect("lock").pop_front()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

pub fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub fn settings(extra: &str) -> NotifySettings {
    let text = format!(
        "backoff_base_s = 1\nbackoff_max_s = 60\nrequest_timeout_s = 1\nmax_attempts = 3\n\
         [quiet_hours]\nstart = \"21:00\"\nend = \"08:00\"\nchannels = [\"sms\", \"email\"]\n{extra}"
    );
    let table: toml::Table = toml::from_str(&text).expect("toml");
    NotifyConfig::from_table(Some(&table))
        .expect("parse")
        .validate("https://track.example.com", SECRET)
        .expect("valid")
}

/// A fresh hub database: (its directory, kept for the test's length, and its path).
pub fn hub_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    (dir, db)
}

/// A dispatcher for the `[notify]` text `notify` (over [`settings`]) on the database at `db`.
pub fn dispatcher_for(notify: &str, db: &Path) -> Dispatcher {
    Dispatcher::new(settings(notify), db, Arc::new(Metrics::default())).expect("new")
}

/// The tracking page and the providers' callbacks, as the hub serves them.
pub fn router(dispatcher: &Dispatcher) -> Router {
    notify::page_router(dispatcher.state()).merge(notify::callbacks_router(dispatcher.state()))
}

/// Raises an operations alert `code` for the shipment, saying `text`.
pub fn raise_alert(path: &Path, shipment: i64, code: &str, text: &str) {
    let mut store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    tx.raise_alert(shipment, code, text, 0).expect("alert");
    tx.commit().expect("commit");
}

/// A fake staff channel answering `answer`, and a database whose shipment ([`database`])
/// has the operations alert `code` raised, saying `text`, with a dispatcher configured by
/// `section` for the fake's URL: (the fake, the database's directory, the dispatcher).
pub async fn alert_case(
    answer: Answer,
    code: &str,
    text: &str,
    section: impl FnOnce(&str) -> String,
) -> (Fake, tempfile::TempDir, Dispatcher) {
    let (fake, base) = Fake::start(answer).await;
    let (dir, db) = hub_db();
    raise_alert(&db, database(&db), code, text);
    (fake, dir, dispatcher_for(&section(&base), &db))
}

/// Twilio's form `params` to the hub's callback at `path`, signed with `auth_token` as
/// Twilio signs it: (`X-Twilio-Signature`, the form body).
pub fn twilio_form(auth_token: &str, path: &str, params: &[(&str, &str)]) -> (String, String) {
    let params: Vec<(String, String)> =
        params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let url = format!("https://track.example.com{path}");
    let signature = notify::twilio::signature(auth_token, &url, &params);
    let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
    (signature, encoded)
}

/// POSTs Twilio's signed form `params` to the hub's callback at `path`.
pub async fn post_twilio(
    app: &Router,
    auth_token: &str,
    path: &str,
    params: &[(&str, &str)],
) -> (StatusCode, String) {
    let (signature, encoded) = twilio_form(auth_token, path, params);
    call(app, "POST", path, &[("x-twilio-signature", &signature)], encoded).await
}

pub fn last_outcome(path: &Path, id: i64) -> doorstep_hub::store::Outcome {
    doorstep_hub::store::Store::open(path, doorstep_hub::store::StoreOptions { full_sync: false })
        .expect("open")
        .outcomes(id)
        .expect("log")
        .pop()
        .expect("entry")
}

/// A database with one shipment (SMS, email and WhatsApp contacts, consented) and returns
/// its id.
pub fn database(path: &Path) -> i64 {
    add_shipment(path, "1Z999AA10123456784")
}

/// Another shipment for the same customer (the same contacts), by tracking number.
pub fn add_shipment(path: &Path, tracking: &str) -> i64 {
    add_shipment_at(path, tracking, Milestone::Delivered, 0)
}

/// [`add_shipment`] at `milestone`, created at `created_ms`.
pub fn add_shipment_at(path: &Path, tracking: &str, milestone: Milestone, created_ms: i64) -> i64 {
    let consented = |recipient: &str| Contact { recipient: recipient.into(), consent: true };
    let contacts = [
        (ContactChannel::Sms, consented(PHONE)),
        (ContactChannel::Email, consented(EMAIL)),
        (ContactChannel::Whatsapp, consented(PHONE)),
    ];
    let new = ups_shipment(tracking, contacts, "en-US", "Europe/Berlin");
    insert_shipment(path, &new, created_ms, Some(milestone))
}

/// Queues the shipment's `milestone` for `channel` to `recipient` (with `detail`) at
/// `now_ms`; the row's id.
pub fn enqueue_at(
    path: &Path,
    shipment: i64,
    milestone: &str,
    channel: &str,
    recipient: &str,
    detail: Option<&str>,
    now_ms: i64,
) -> i64 {
    let mut store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    let n = NewNotification { shipment_id: shipment, milestone, channel, recipient, detail, now_ms };
    assert!(tx.enqueue_notification(&n).expect("enqueue"));
    tx.commit().expect("commit");
    drop(store);
    let rows = Store::open(path, StoreOptions { full_sync: false })
        .expect("open")
        .outbox_for_shipment(shipment)
        .expect("rows");
    rows.iter().find(|r| r.milestone == milestone && r.channel == channel).expect("row").id
}

pub fn outcomes(path: &Path, id: i64) -> Vec<String> {
    doorstep_hub::store::Store::open(path, doorstep_hub::store::StoreOptions { full_sync: false })
        .expect("open")
        .outcomes(id)
        .expect("outcomes")
        .into_iter()
        .map(|o| o.outcome.name().into_owned())
        .collect()
}

pub fn status(path: &Path, id: i64) -> String {
    let conn = doorstep_hub::store::Store::open(path, Default::default()).expect("open");
    conn.raw()
        .query_row("SELECT status FROM notification_outbox WHERE id = ?1", [id], |r| r.get(0))
        .expect("status")
}

pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (StatusCode, String) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if method == "POST" && !headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let response =
        app.clone().oneshot(req.body(axum::body::Body::from(body)).expect("request")).await.expect("call");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
