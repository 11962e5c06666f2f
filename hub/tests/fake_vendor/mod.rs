//! A fake vendor for the notification tests: a loopback HTTP server that records every
//! request and answers from a script (status, body, delay, header), and the database
//! fixtures the tests share (one shipment with consented contacts, enqueued rows, the
//! outcome log).

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use doorstep_hub::model::Milestone;
use doorstep_hub::notify::{NotifyConfig, NotifySettings};
use doorstep_hub::store::{Contact, ContactChannel, NewNotification, NewShipment, Store, StoreOptions};
use doorstep_proto::TrackingNumber;

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
    fake.seen.lock().expect("lock").push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        headers,
        body: body.to_vec(),
    });
    let answer = fake.script.lock().expect("lock").pop_front();
    let answer = answer
        .or_else(|| fake.default.lock().expect("lock").clone())
        .unwrap_or_else(|| Answer::ok(200, "ok"));
    tokio::time::sleep(answer.delay).await;
    let status = StatusCode::from_u16(answer.status).expect("status");
    match answer.header {
        Some((name, value)) => (status, [(name, value)], answer.body).into_response(),
        None => (status, answer.body).into_response(),
    }
}

impl Fake {
    pub async fn start(default: Answer) -> (Self, String) {
        let fake = Fake::default();
        *fake.default.lock().expect("lock") = Some(default);
        let app = Router::new().fallback(record).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (fake, format!("http://{addr}"))
    }

    pub fn push(&self, answer: Answer) {
        self.script.lock().expect("lock").push_back(answer);
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
    let mut store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    let mut contacts = BTreeMap::new();
    contacts.insert(ContactChannel::Sms, Contact { recipient: PHONE.into(), consent: true });
    contacts.insert(ContactChannel::Email, Contact { recipient: EMAIL.into(), consent: true });
    contacts.insert(ContactChannel::Whatsapp, Contact { recipient: PHONE.into(), consent: true });
    let id = tx
        .insert_shipment(
            &NewShipment {
                tracking_number: TrackingNumber::new(tracking).expect("tn"),
                carrier: Some("ups".into()),
                order_id: None,
                contacts,
                locale: "en-US".into(),
                time_zone: "Europe/Berlin".into(),
            },
            created_ms,
        )
        .expect("shipment");
    tx.save_reconcile(id, milestone, &serde_json::json!(null), created_ms).expect("milestone");
    tx.commit().expect("commit");
    id
}

pub fn enqueue(
    path: &Path,
    shipment: i64,
    milestone: &str,
    channel: &str,
    recipient: &str,
    detail: Option<&str>,
) -> i64 {
    enqueue_at(path, shipment, milestone, channel, recipient, detail, 0)
}

/// [`enqueue`] at `now_ms`.
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
        .map(|o| o.outcome)
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
