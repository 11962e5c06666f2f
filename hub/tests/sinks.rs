//! Business sinks end to end: milestones and alerts reconciled in the writer's transaction,
//! then delivered from the sinks' outbox to a real `nats-server` with JetStream, and to a
//! loopback Zendesk that checks each request against Zendesk's documented API.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::CanonicalStatus;
use doorstep_hub::reconcile::{Input, Rules};
use doorstep_hub::sinks::{Dispatcher, Sinks};
use doorstep_hub::store::{Store, StoreOptions};

mod sink_kit;

use sink_kit::{
    Case, EMAIL, T0, TRACKING, carrier, database, dispatched, domain, feed, outcomes, rows,
    shipment_with_consent, sinks,
};

// ---- a real nats-server with JetStream -------------------------------------------------

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A `nats-server -js` on a free loopback port with its store in a temp dir, stopped when
/// dropped.
struct NatsServer {
    port: u16,
    child: tokio::process::Child,
    _store: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> NatsServer {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        Self::start_on(port).await
    }

    /// [`NatsServer::start`] on a given port.
    async fn start_on(port: u16) -> NatsServer {
        let binary = [PathBuf::from(NATS_SERVER), PathBuf::from("/usr/bin/nats-server")]
            .into_iter()
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("{NATS_SERVER} is missing: the event stream tests need a real JetStream; `apt-get install nats-server`")
            });
        let store = tempfile::tempdir().expect("store dir");
        let child = tokio::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        let server = NatsServer { port, child, _store: store };
        // Ready when JetStream answers for the account.
        let mut last = String::new();
        for _ in 0..200 {
            match async_nats::connect(server.url()).await {
                // The raw API request: the account-info types of the newest client do not
                // read an older server's answer, and only the answer matters here.
                Ok(client) => match client.request("$JS.API.INFO", "".into()).await {
                    Ok(_) => return server,
                    Err(e) => last = format!("$JS.API.INFO: {e}"),
                },
                Err(e) => last = format!("connect: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server on port {port} did not become ready with JetStream: {last}");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Every message of `stream`: (subject, Nats-Msg-Id, body).
    async fn messages(&self, stream: &str) -> Vec<(String, String, serde_json::Value)> {
        let client = async_nats::connect(self.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("the hub created its stream");
        let state = stream.info().await.expect("info").state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..state.first_sequence + state.messages {
            let m = stream.get_raw_message(seq).await.expect("message");
            let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_default();
            out.push((m.subject.to_string(), id, serde_json::from_slice(&m.payload).expect("json")));
        }
        out
    }
}

impl NatsServer {
    /// The subjects a new durable pull consumer of `stream` receives, acking each, until
    /// a fetch comes back empty.
    async fn consume(&self, stream: &str) -> Vec<String> {
        use futures_util::StreamExt as _;
        let client = async_nats::connect(self.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(stream).await.expect("stream");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("shipper".into()),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut subjects = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(16)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .expect("fetch");
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.expect("message");
                subjects.push(message.subject.to_string());
                message.ack().await.expect("ack");
                got += 1;
            }
            if got == 0 {
                return subjects;
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn nats_sinks(url: &str) -> Sinks {
    sinks(&format!(
        "[[sinks]]\ntype = \"nats\"\nname = \"stream\"\nurl = \"{url}\"\nrequest_timeout_s = 2\nbackoff_base_s = 1\n"
    ))
}

#[tokio::test]
async fn committed_milestones_and_alerts_reach_the_stream_once_even_when_the_hub_publishes_again() {
    let nats = NatsServer::start().await;
    let case = Case::new(nats_sinks(&nats.url()));
    let (db, shipment, domain, dispatcher) = case.parts();

    feed(db, domain, TRACKING, dispatched(T0), T0, true);
    // A transaction that rolls back (the writer failed after reconciling) reports nothing.
    feed(db, domain, TRACKING, carrier(CanonicalStatus::Returning, T0 + 1), T0 + 1, false);
    assert_eq!(dispatcher.run_once(T0 + 2).await.expect("pass"), 1);
    let published = nats.messages("DOORSTEP").await;
    assert_eq!(published.len(), 1, "{published:?}");
    let key = format!("doorstep:stream:{TRACKING}:milestone:dispatched");
    assert_eq!(published[0].0, format!("doorstep.orders.{TRACKING}.dispatched"));
    assert_eq!(published[0].1, key, "Nats-Msg-Id is the row's stable key");
    assert_eq!(published[0].2["milestone"], "dispatched");
    assert_eq!(published[0].2["id"], key.as_str());

    // The hub stopped after JetStream stored the message but before it wrote the result:
    // the row is left in flight, resent at start-up, and JetStream drops the repeat.
    let conn = doorstep_hub::store::Store::open(db, Default::default()).expect("open");
    conn.raw()
        .execute(
            "UPDATE sink_outbox SET status = 'sending' WHERE event = 'milestone:dispatched'",
            doorstep_hub::store::NO_ARGS,
        )
        .expect("left in flight");
    assert_eq!(dispatcher.recover(T0 + 3).await.expect("recover"), (1, 0));
    assert_eq!(dispatcher.run_once(T0 + 3).await.expect("pass"), 1, "published again");
    assert_eq!(nats.messages("DOORSTEP").await.len(), 1, "stored once");
    let log = outcomes(db, shipment, "milestone:dispatched");
    let last = log.last().expect("entry");
    assert_eq!(last.0, "sent");
    assert!(last.1.as_deref().is_some_and(|d| d.contains("duplicate")), "{log:?}");

    // Committed this time: the exception and the alert it raised, one message each.
    feed(db, domain, TRACKING, carrier(CanonicalStatus::Returning, T0 + 1), T0 + 4, true);
    assert_eq!(dispatcher.run_once(T0 + 5).await.expect("pass"), 2);
    assert_eq!(dispatcher.run_once(T0 + 6).await.expect("pass"), 0, "nothing is sent twice");
    let published = nats.messages("DOORSTEP").await;
    let subjects: Vec<&str> = published.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("doorstep.orders.{TRACKING}.dispatched"),
            format!("doorstep.orders.{TRACKING}.exception"),
            format!("doorstep.orders.{TRACKING}.alert"),
        ]
    );
    assert_eq!(published[2].2["alert"], "carrier_returning");
    assert!(rows(db, shipment).iter().all(|(_, _, status)| status == "sent"));
}

#[tokio::test]
async fn a_stream_that_is_down_is_retried_with_backoff_and_gets_each_event_once_it_is_up() {
    let dir = tempfile::tempdir().expect("dir");
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    let shipment = database(&db, TRACKING);
    // Reserve a port, then start the server on it only after the first attempt failed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let sinks = nats_sinks(&format!("nats://127.0.0.1:{port}"));
    let domain = domain(&sinks);
    let dispatcher = Dispatcher::new(sinks, &db, Arc::new(Metrics::default())).expect("dispatcher");
    feed(&db, &domain, TRACKING, dispatched(T0), T0, true);
    assert_eq!(dispatcher.run_once(T0).await.expect("pass"), 1);
    assert_eq!(rows(&db, shipment)[0].2, "queued", "connection refused: nothing was sent");
    assert_eq!(outcomes(&db, shipment, "milestone:dispatched").last().expect("entry").0, "attempt_failed");
    assert_eq!(dispatcher.run_once(T0 + 500).await.expect("pass"), 0, "waits for its backoff");

    let nats = NatsServer::start_on(port).await;
    assert_eq!(dispatcher.run_once(T0 + 2_000).await.expect("pass"), 1);
    assert_eq!(nats.messages("DOORSTEP").await.len(), 1);
    assert_eq!(rows(&db, shipment)[0].2, "sent");
}

// ---- a loopback Zendesk --------------------------------------------------------------------

const ZD_EMAIL: &str = "ops@example.com";
const ZD_TOKEN: &str = "6wiIBWbGkBMo1mRDMuVwkw1EPsNkeUj95PIz2akv";
const TICKET: u64 = 35436;

/// The hub's helpdesk sink on the Zendesk at `base`, authenticating with `token`.
fn zendesk_sinks(base: &str, token: &str) -> Sinks {
    sinks(&format!(
        "[[sinks]]\ntype = \"zendesk\"\nname = \"helpdesk\"\nbase_url = \"{base}\"\nemail = \"{ZD_EMAIL}\"\n\
         api_token = \"{token}\"\nrequest_timeout_s = 1\nbackoff_base_s = 1\nmax_attempts = 3\n"
    ))
}

/// A scripted answer: status, a header, and a delay before it.
type Scripted = (u16, Option<(&'static str, &'static str)>, Duration);

/// One request the fake Zendesk accepted as valid: (method, path, Idempotency-Key, body).
type Seen = (String, String, Option<String>, serde_json::Value);

/// A loopback vendor's own record: the requests it accepted, and the answers scripted to
/// come before its checks.
#[derive(Clone, Default)]
struct Record<T> {
    seen: Arc<Mutex<Vec<T>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
}

impl<T: Clone> Record<T> {
    /// Every request accepted so far.
    fn seen(&self) -> Vec<T> {
        self.seen.lock().expect("lock").clone()
    }

    fn accept(&self, request: T) {
        self.seen.lock().expect("lock").push(request);
    }

    /// Answers the next request with `status` (and `header`) after `delay`, before any check.
    fn then_answer(&self, status: u16, header: Option<(&'static str, &'static str)>, delay: Duration) {
        self.script.lock().expect("lock").push_back((status, header, delay));
    }

    fn next_scripted(&self) -> Option<Scripted> {
        self.script.lock().expect("lock").pop_front()
    }
}

/// Serves `handler` over a fresh state `S` on a loopback port: the state, and the base URL.
async fn start_fake<S, H, T>(handler: H) -> (S, String)
where
    S: Clone + Default + Send + Sync + 'static,
    H: axum::handler::Handler<T, S>,
    T: 'static,
{
    let fake = S::default();
    let url = sink_kit::serve(Router::new().fallback(handler).with_state(fake.clone())).await;
    (fake, url)
}

/// A loopback Zendesk Support API: checks each request the way Zendesk documents it (path,
/// method, API-token Basic auth, JSON body shape), refuses what Zendesk would refuse (401
/// without the credentials, 422 for an invalid ticket), answers scripted statuses first
/// (429 with Retry-After), and otherwise answers as Zendesk does: 201 with the new ticket
/// (the same one for a repeated Idempotency-Key), 200 with the updated one.
#[derive(Clone, Default)]
struct FakeZendesk {
    record: Record<Seen>,
    keys: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Updates are applied, but answered only after this long (a lost answer).
    slow_updates: Arc<Mutex<Duration>>,
}

fn invalid(why: &str) -> Response {
    let body = serde_json::json!({
        "error": "RecordInvalid",
        "description": "Record validation errors",
        "details": { "base": [{ "description": why }] },
    });
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
}

async fn zendesk(
    State(fake): State<FakeZendesk>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ZD_EMAIL}/token:{ZD_TOKEN}"));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Basic {basic}")) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"Couldn't authenticate you"}"#).into_response();
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "").into_response();
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"Unprocessable JSON"}"#).into_response();
    };
    if let Some((status, header, delay)) = fake.record.next_scripted() {
        tokio::time::sleep(delay).await;
        let status = StatusCode::from_u16(status).expect("status");
        return match header {
            Some(h) => (status, [h], r#"{"error":"TooManyRequests"}"#).into_response(),
            None => (status, "").into_response(),
        };
    }
    let path = uri.path().to_owned();
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let ticket = &json["ticket"];
    let comment = &ticket["comment"];
    if !ticket.is_object() || !comment["body"].is_string() || comment["public"] != false {
        return invalid("a ticket with a private comment body is expected");
    }
    let answer = if method == Method::POST && path == "/api/v2/tickets.json" {
        let keys = ["subject", "comment", "external_id", "requester", "tags"];
        if !ticket["subject"].is_string()
            || !ticket["external_id"].is_string()
            || ticket.as_object().is_some_and(|t| t.keys().any(|k| !keys.contains(&k.as_str())))
            || (ticket.get("requester").is_some() && !ticket["requester"]["email"].is_string())
        {
            return invalid("subject, comment, external_id, requester {email}, tags");
        }
        // A new ticket per request, but the same one again for a repeated Idempotency-Key.
        let mut keys = fake.keys.lock().expect("lock");
        let next = TICKET + u64::try_from(keys.len()).expect("few");
        let id = match &key {
            Some(k) => *keys.entry(k.clone()).or_insert(next),
            None => next,
        };
        drop(keys);
        let body = serde_json::json!({ "ticket": { "id": id, "status": "new", "external_id": ticket["external_id"] } });
        (StatusCode::CREATED, axum::Json(body)).into_response()
    } else if method == Method::PUT && path == format!("/api/v2/tickets/{TICKET}.json") {
        let keys = ["comment", "status"];
        if ticket.as_object().is_some_and(|t| t.keys().any(|k| !keys.contains(&k.as_str())))
            || ticket.get("status").is_some_and(|s| s != "solved")
        {
            return invalid("comment and status only");
        }
        let slow = *fake.slow_updates.lock().expect("lock");
        fake.record.accept((method.to_string(), path, key, json.clone()));
        tokio::time::sleep(slow).await;
        let status = ticket.get("status").cloned().unwrap_or("open".into());
        let body =
            serde_json::json!({ "ticket": { "id": TICKET, "status": status }, "audit": { "events": [] } });
        return (StatusCode::OK, axum::Json(body)).into_response();
    } else {
        return (StatusCode::NOT_FOUND, r#"{"error":"InvalidEndpoint"}"#).into_response();
    };
    fake.record.accept((method.to_string(), path, key, json));
    answer
}

/// A loopback Zendesk, its URL, and a hub whose helpdesk sink uses it.
async fn zendesk_hub() -> (FakeZendesk, String, Case) {
    let (fake, base) = start_fake(zendesk).await;
    let case = Case::new(zendesk_sinks(&base, ZD_TOKEN));
    (fake, base, case)
}

#[tokio::test]
async fn an_exception_opens_one_ticket_later_events_are_private_comments_and_delivery_solves_it() {
    let (fake, _, case) = zendesk_hub().await;
    let (db, shipment, domain, dispatcher) = case.parts();

    // Dispatched: support hears nothing of a parcel that is fine.
    case.step(dispatched(T0), T0).await;
    assert!(fake.record.seen().is_empty());
    assert_eq!(outcomes(db, shipment, "milestone:dispatched").last().expect("entry").0, "skipped");

    // A failed attempt: the exception opens the ticket; Zendesk first asks us to wait.
    fake.record.then_answer(429, Some(("retry-after", "7")), Duration::ZERO);
    feed(db, domain, TRACKING, carrier(CanonicalStatus::AttemptFailed, T0 + 1), T0 + 1, true);
    dispatcher.run_once(T0 + 2).await.expect("pass");
    assert_eq!(rows(db, shipment)[1], ("helpdesk".into(), "milestone:exception".into(), "queued".into()));
    assert_eq!(dispatcher.run_once(T0 + 2 + 6_000).await.expect("pass"), 0, "Retry-After is honoured");
    assert_eq!(dispatcher.run_once(T0 + 2 + 7_000).await.expect("pass"), 1);
    let seen = fake.record.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (method, path, key, body) = &seen[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/v2/tickets.json"));
    assert_eq!(key.as_deref(), Some(format!("doorstep:helpdesk:{TRACKING}:milestone:exception").as_str()));
    assert_eq!(body["ticket"]["external_id"], TRACKING);
    assert_eq!(body["ticket"]["requester"]["email"], EMAIL, "the consented customer is the requester");
    let text = body["ticket"]["comment"]["body"].as_str().expect("comment body");
    assert!(text.contains(TRACKING) && text.contains("exception"), "{text}");

    // Delivered (the carrier's word, then the hold): a private comment that solves it.
    feed(db, domain, TRACKING, carrier(CanonicalStatus::Delivered, T0 + 3_600_000), T0 + 3_600_000, true);
    let later = T0 + 3_600_000 + Rules::default().hold_ms;
    feed(db, domain, TRACKING, Input::Wake { now_ms: later }, later, true);
    assert_eq!(dispatcher.run_once(later).await.expect("pass"), 1);
    let seen = fake.record.seen();
    assert_eq!(seen.len(), 2, "one ticket, then its update: {seen:?}");
    let (method, path, key, body) = &seen[1];
    assert_eq!((method.as_str(), path.as_str()), ("PUT", format!("/api/v2/tickets/{TICKET}.json").as_str()));
    assert_eq!(key, &None, "Zendesk takes no idempotency key on an update");
    assert_eq!(body["ticket"]["status"], "solved");
    assert_eq!(body["ticket"]["comment"]["public"], false);
    let statuses: Vec<String> = rows(db, shipment).into_iter().map(|(_, e, s)| format!("{e} {s}")).collect();
    assert_eq!(
        statuses,
        ["milestone:dispatched skipped", "milestone:exception sent", "milestone:delivered sent"]
    );
    assert_eq!(dispatcher.run_once(later + 60_000).await.expect("pass"), 0, "nothing is sent twice");
}

#[tokio::test]
async fn a_comment_whose_answer_never_came_is_not_repeated_and_a_refused_ticket_fails() {
    let (fake, base, case) = zendesk_hub().await;
    let (db, shipment, domain, dispatcher) = case.parts();
    feed(db, domain, TRACKING, carrier(CanonicalStatus::Returning, T0), T0, true);
    // The exception's ticket, then the alert as a comment Zendesk applies but whose answer
    // comes after the hub's timeout.
    *fake.slow_updates.lock().expect("lock") = Duration::from_secs(3);
    dispatcher.run_once(T0).await.expect("ticket and comment");
    let events: Vec<String> = rows(db, shipment).into_iter().map(|(_, e, s)| format!("{e} {s}")).collect();
    assert_eq!(events, ["milestone:exception sent", "alert:carrier_returning unknown"]);
    dispatcher.run_once(T0 + 3_600_000).await.expect("later");
    let methods: Vec<String> = fake.record.seen().into_iter().map(|(m, _, _, _)| m).collect();
    assert_eq!(methods, ["POST", "PUT"], "the ambiguous comment was not sent again");

    // Wrong credentials: Zendesk refuses, and the row fails without retries.
    let case = Case::new(zendesk_sinks(&base, "not-the-token"));
    case.step(carrier(CanonicalStatus::AttemptFailed, T0), T0).await;
    case.failed_for_good(case.shipment, "milestone:exception", &["401"]).await;
}

// ---- from the configuration, through `serve`, across a restart ---------------------------

/// How many messages the stream holds (0 before the hub created it).
async fn stored(nats: &NatsServer) -> u64 {
    let Ok(client) = async_nats::connect(nats.url()).await else { return 0 };
    let Ok(mut stream) = async_nats::jetstream::new(client).get_stream("DOORSTEP").await else { return 0 };
    stream.info().await.map_or(0, |i| i.state.messages)
}

/// Waits until `done` holds, or `timeout` passes; says which.
async fn until<F: std::future::Future<Output = bool>>(timeout: Duration, done: impl Fn() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done().await
}

/// Serves `text` until the returned token is cancelled; the handle ends with `serve`.
fn serve(
    text: &str,
    api: tokio::net::TcpListener,
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let settings = doorstep_hub::config::Config::parse(text).expect("parse").validate().expect("valid");
    let public = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    public.set_nonblocking(true).expect("nonblocking");
    let public = tokio::net::TcpListener::from_std(public).expect("listener");
    let stop = tokio_util::sync::CancellationToken::new();
    let shutdown = stop.clone();
    let hub = tokio::spawn(doorstep_hub::server::serve(
        settings,
        doorstep_hub::server::Listeners { public, api },
        async move { shutdown.cancelled().await },
    ));
    (stop, hub)
}

/// Stops a hub [`serve`] started, which must end cleanly within 15 s.
async fn stop_hub(
    stop: tokio_util::sync::CancellationToken,
    hub: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), hub)
        .await
        .expect("the hub stops")
        .expect("join")
        .expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_serving_its_configuration_publishes_each_milestone_once_across_a_restart_mid_send() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start().await;
    let broker = doorstep_testkit::mosquitto::Broker::start(Default::default())
        .await
        .expect("a test broker (install it: apt-get install mosquitto)");
    let dir = tempfile::tempdir().expect("dir");
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    let key = dir.path().join("hub.key");
    doorstep_runtime::keyfile::create(&key, false).expect("hub key");
    let api_token = {
        let mut store = Store::open(&db, StoreOptions::default()).expect("open");
        let issued = doorstep_hub::access::issue(&ring::rand::SystemRandom::new()).expect("key");
        store.create_api_key("orders", &issued.key_id, &issued.digest, "admin", 0).expect("api key");
        issued.token
    };
    let text = doorstep_hub::config::DEFAULT_CONFIG
        .replace("/var/lib/doorstep-hub/hub.db", &db.display().to_string())
        .replace("/var/lib/doorstep-hub/hub.key", &key.display().to_string())
        .replace("\"file:/var/lib/doorstep-hub/link.secret\"", "\"0123456789abcdef0123456789abcdef\"")
        .replace("port = 1883", &format!("port = {}", broker.port()))
        .replace("client_id = \"doorstep-hub\"", "client_id = \"doorstep-hub-sinks\"")
        + &format!(
            "\n[[sinks]]\ntype = \"nats\"\nname = \"stream\"\nurl = \"{}\"\nrequest_timeout_s = 2\n",
            nats.url()
        );

    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api_url = format!("http://{}", api.local_addr().expect("addr"));
    let (stop, hub) = serve(&text, api);
    let client = reqwest::Client::new();
    let shipment = serde_json::json!({"tracking_number": TRACKING, "carrier": "ups",
        "contacts": {"email": EMAIL}, "consent": true});
    let created =
        client.post(format!("{api_url}/v1/shipments")).bearer_auth(&api_token).json(&shipment).send().await;
    assert_eq!(created.expect("create").status(), 201);
    let dispatched = client
        .post(format!("{api_url}/v1/shipments/{TRACKING}/dispatched"))
        .bearer_auth(&api_token)
        .send()
        .await
        .expect("dispatched");
    assert!(dispatched.status().is_success(), "{}", dispatched.status());
    assert!(until(Duration::from_secs(10), || async { stored(&nats).await == 1 }).await, "published");
    stop_hub(stop, hub).await;

    // As if the hub had died after JetStream's ack and before writing it down.
    let conn = doorstep_hub::store::Store::open(&db, Default::default()).expect("open");
    let n = conn
        .raw()
        .execute(
            "UPDATE sink_outbox SET status = 'sending' WHERE event = 'milestone:dispatched'",
            doorstep_hub::store::NO_ARGS,
        )
        .expect("left in flight");
    assert_eq!(n, 1, "one row for the milestone");
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (stop, hub) = serve(&text, api);
    let shipment_id: i64 = conn
        .raw()
        .query_row("SELECT id FROM shipments", doorstep_hub::store::NO_ARGS, |r| r.get(0))
        .expect("shipment");
    let resent = || async {
        outcomes(&db, shipment_id, "milestone:dispatched").iter().filter(|(o, _)| o == "sent").count() == 2
    };
    assert!(
        until(Duration::from_secs(10), resent).await,
        "{:?}",
        outcomes(&db, shipment_id, "milestone:dispatched")
    );
    stop_hub(stop, hub).await;
    assert_eq!(stored(&nats).await, 1, "one message for the milestone, across the restart");
    let published = nats.messages("DOORSTEP").await;
    assert_eq!(published[0].0, format!("doorstep.orders.{TRACKING}.dispatched"));
    // What a shipper's service consuming the stream gets: the milestone once.
    let consumed = nats.consume("DOORSTEP").await;
    assert_eq!(consumed, [format!("doorstep.orders.{TRACKING}.dispatched")], "consumed once");
}

// ---- a loopback HubSpot ------------------------------------------------------------------

const HS_TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";
const HS_EVENT: &str = "pe1234567_doorstep_milestone";

/// The hub's CRM sink on the HubSpot at `base`, sending events as `event_name`.
fn hubspot_sinks(base: &str, event_name: &str) -> Sinks {
    sinks(&format!(
        "[[sinks]]\ntype = \"hubspot\"\nname = \"crm\"\nbase_url = \"{base}\"\naccess_token = \"{HS_TOKEN}\"\n\
         event_name = \"{event_name}\"\nrequest_timeout_s = 1\nbackoff_base_s = 1\n"
    ))
}

/// A loopback HubSpot custom-events API: checks each request the way HubSpot documents
/// `POST /events/v3/send` (Bearer private-app token, `eventName` of a defined event,
/// `email`, ISO 8601 `occurredAt`, `properties` of strings, `uuid`), answers 401 without the
/// token, 400 for an event it has no definition for, a scripted 429 with Retry-After, and
/// otherwise 204 with no body.
type FakeHubSpot = Record<serde_json::Value>;

async fn hubspot(
    State(fake): State<FakeHubSpot>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error = |status: StatusCode, message: &str| {
        let body =
            serde_json::json!({ "status": "error", "message": message, "category": "VALIDATION_ERROR" });
        (status, axum::Json(body)).into_response()
    };
    if method != Method::POST || uri.path() != "/events/v3/send" {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {HS_TOKEN}")) {
        return error(StatusCode::UNAUTHORIZED, "Authentication credentials not found");
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json expected");
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid input JSON");
    };
    if let Some((status, header, _)) = fake.next_scripted() {
        let status = StatusCode::from_u16(status).expect("status");
        let limit = r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT"}"#;
        return match header {
            Some(h) => (status, [h], limit).into_response(),
            None => (status, "").into_response(),
        };
    }
    let fields = ["eventName", "email", "occurredAt", "uuid", "properties"];
    let shaped = json.as_object().is_some_and(|o| o.keys().all(|k| fields.contains(&k.as_str())))
        && json["email"].as_str().is_some_and(|e| e.contains('@'))
        && json["occurredAt"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok())
        && json["uuid"].as_str().is_some_and(|u| u.len() == 36 && u.matches('-').count() == 4)
        && json["properties"].as_object().is_some_and(|p| p.values().all(serde_json::Value::is_string));
    if !shaped {
        return error(StatusCode::BAD_REQUEST, "Invalid event occurrence");
    }
    if json["eventName"] != HS_EVENT {
        return error(StatusCode::BAD_REQUEST, "Event definition not found");
    }
    fake.accept(json);
    StatusCode::NO_CONTENT.into_response()
}

#[tokio::test]
async fn each_milestone_of_a_consenting_customer_is_one_hubspot_event_and_others_are_skipped() {
    let (fake, base) = start_fake::<FakeHubSpot, _, _>(hubspot).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    let shipment = database(&db, TRACKING);
    let other = "1Z999AA10123456785";
    let quiet = shipment_with_consent(&db, other, false);
    let sinks = hubspot_sinks(&base, HS_EVENT);
    let domain = domain(&sinks);
    let dispatcher = Dispatcher::new(sinks, &db, Arc::new(Metrics::default())).expect("dispatcher");

    fake.then_answer(429, Some(("retry-after", "10")), Duration::ZERO);
    feed(&db, &domain, TRACKING, dispatched(T0), T0, true);
    dispatcher.run_once(T0).await.expect("pass");
    assert_eq!(rows(&db, shipment)[0].2, "queued", "429: wait and retry");
    assert_eq!(dispatcher.run_once(T0 + 9_000).await.expect("pass"), 0, "Retry-After is honoured");
    assert_eq!(dispatcher.run_once(T0 + 10_000).await.expect("pass"), 1);
    // The exception and its alert: alerts are not the marketing system's business.
    feed(&db, &domain, TRACKING, carrier(CanonicalStatus::Returning, T0 + 1), T0 + 20_000, true);
    dispatcher.run_once(T0 + 20_000).await.expect("pass");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["email"], EMAIL);
    assert_eq!(seen[0]["properties"]["doorstep_milestone"], "dispatched");
    assert_eq!(seen[0]["properties"]["doorstep_tracking_number"], TRACKING);
    assert_eq!(seen[0]["occurredAt"], "2025-07-01T08:00:00Z");
    assert_eq!(seen[1]["properties"]["doorstep_milestone"], "exception");
    assert_ne!(seen[0]["uuid"], seen[1]["uuid"]);
    let events: Vec<String> = rows(&db, shipment).into_iter().map(|(_, e, s)| format!("{e} {s}")).collect();
    assert_eq!(events, ["milestone:dispatched sent", "milestone:exception sent"]);

    // No consent to e-mail: no contact to tell.
    feed(&db, &domain, other, dispatched(T0), T0 + 30_000, true);
    dispatcher.run_once(T0 + 30_000).await.expect("pass");
    assert_eq!(rows(&db, quiet)[0].2, "skipped");
    assert_eq!(fake.seen().len(), 2);

    // An event HubSpot has no definition for is refused for good.
    let case = Case::new(hubspot_sinks(&base, "pe1234567_not_defined"));
    case.step(dispatched(T0), T0).await;
    case.failed_for_good(case.shipment, "milestone:dispatched", &["400", "Event definition not found"]).await;
}

#[tokio::test]
async fn a_ticket_whose_creation_was_cut_short_by_a_restart_is_not_opened_twice() {
    let (fake, _, case) = zendesk_hub().await;
    let (db, shipment, _, dispatcher) = case.parts();
    case.step(carrier(CanonicalStatus::AttemptFailed, T0), T0).await;
    // The hub died after Zendesk made the ticket and before it wrote the answer down.
    let conn = doorstep_hub::store::Store::open(db, Default::default()).expect("open");
    conn.raw()
        .execute_batch("UPDATE sink_outbox SET status = 'sending'; DELETE FROM sink_threads;")
        .expect("cut short");
    assert_eq!(dispatcher.recover(T0 + 1).await.expect("recover"), (1, 0), "a creation is resent");
    dispatcher.run_once(T0 + 1).await.expect("pass");
    let seen = fake.record.seen();
    let keys: Vec<Option<String>> = seen.iter().map(|(_, _, k, _)| k.clone()).collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the same Idempotency-Key both times");
    assert_eq!(fake.keys.lock().expect("lock").len(), 1, "Zendesk made one ticket");
    let store = Store::open(db, StoreOptions { full_sync: false }).expect("open");
    assert_eq!(store.sink_thread("helpdesk", shipment).expect("thread"), Some(TICKET.to_string()));
}

#[tokio::test]
async fn a_hubspot_event_whose_send_was_cut_short_by_a_restart_is_unknown_and_not_sent_again() {
    let (fake, base) = start_fake::<FakeHubSpot, _, _>(hubspot).await;
    let case = Case::new(hubspot_sinks(&base, HS_EVENT));
    let (db, shipment, _, dispatcher) = case.parts();
    case.step(dispatched(T0), T0).await;
    assert_eq!(fake.seen().len(), 1);
    // The hub died after HubSpot took the event and before the hub wrote it down: HubSpot
    // documents no de-duplication of custom events, so the event is not sent again.
    sink_kit::cut_short(db, "milestone:dispatched", false);
    assert_eq!(dispatcher.recover(T0 + 1).await.expect("recover"), (0, 1));
    dispatcher.run_once(T0 + 3_600_000).await.expect("later");
    assert_eq!(fake.seen().len(), 1, "HubSpot got the event once");
    assert_eq!(sink_kit::statuses(db, shipment), ["milestone:dispatched unknown"]);
}
