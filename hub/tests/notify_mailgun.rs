//! Mailgun through the dispatcher: a loopback Mailgun that checks each request the way
//! Mailgun documents its Messages API (domain in the path, Basic `api:{key}`, the form
//! fields) and answers the way Mailgun does, and its signed event webhook through the
//! callbacks router.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_hub::notify::{self, Dispatcher};
use ring::hmac;
use serde_json::{Value, json};

mod fake_vendor;
use fake_vendor::*;

const DOMAIN: &str = "mg.example.com";
const API_KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
const SIGNING_KEY: &str = "whsk-5b9a1c3e7d2f4a6b8c0d1e2f3a4b5c6d";
const FROM: &str = "Doorstep <parcels@mg.example.com>";

/// A loopback Mailgun: `POST /v3/{domain}/messages` checked as Mailgun documents it.
/// Scripted answers (an outage, a refusal) replace the 200 of a request that passed the
/// checks; a request that fails them gets Mailgun's own refusal.
#[derive(Clone, Default)]
struct FakeMailgun {
    /// What it received, and the scripted answers.
    fake: Fake,
    queued: Arc<AtomicUsize>,
}

/// The message id Mailgun gives the `n`th message it queues (with its angle brackets).
fn mailgun_id(n: usize) -> String {
    format!("<20250701080000.{n}.5A1B3C7D9E@{DOMAIN}>")
}

fn refuse(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    (status, [("content-type", "application/json")], json!({ "message": message }).to_string())
        .into_response()
}

async fn messages(
    State(fake): State<FakeMailgun>,
    UrlPath(domain): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.fake.note(&method, &uri, headers.clone(), &body);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Basic {}", STANDARD.encode(format!("api:{API_KEY}"))) {
        // Mailgun's answer to a wrong key is a bare 401 "Forbidden".
        return (StatusCode::UNAUTHORIZED, "Forbidden").into_response();
    }
    if domain != DOMAIN {
        return refuse(404, &format!("Domain not found: {domain}"));
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded")
        && !content_type.starts_with("multipart/form-data")
    {
        return refuse(400, "expected a form");
    }
    let fields = form(&body);
    for required in ["from", "to", "subject"] {
        if fields.get(required).is_none_or(|v| v.trim().is_empty()) {
            return refuse(400, &format!("'{required}' parameter is missing"));
        }
    }
    if !["text", "html", "amp-html", "template"].iter().any(|k| fields.contains_key(*k)) {
        return refuse(
            400,
            "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters specified",
        );
    }
    if let Some(vars) = fields.get("t:variables")
        && !serde_json::from_str::<Value>(vars).is_ok_and(|v| v.is_object())
    {
        return refuse(400, "t:variables must be a valid JSON object");
    }
    let options: usize = fields
        .iter()
        .filter(|(k, _)| ["o:", "h:", "v:", "t:"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if options > 16 * 1024 {
        return refuse(
            400,
            "Send options (parameters starting with o:, h:, v:, or t:) are limited to 16 kB total",
        );
    }
    if let Some(answer) = fake.fake.next_scripted() {
        return answer.respond().await;
    }
    let n = fake.queued.fetch_add(1, Ordering::SeqCst) + 1;
    let answer = json!({ "id": mailgun_id(n), "message": "Queued. Thank you." });
    (StatusCode::OK, [("content-type", "application/json")], answer.to_string()).into_response()
}

async fn elsewhere(
    State(fake): State<FakeMailgun>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    fake.fake.note(&method, &uri, headers, &[]);
    (StatusCode::NOT_FOUND, "404 page not found").into_response()
}

impl FakeMailgun {
    async fn start() -> (Self, String) {
        let fake = Self::default();
        let app = Router::new()
            .route("/v3/{domain}/messages", post(messages))
            .fallback(elsewhere)
            .with_state(fake.clone());
        (fake, serve(app).await)
    }

    fn push(&self, answer: Answer) {
        self.fake.push(answer);
    }

    fn seen(&self) -> Vec<Seen> {
        self.fake.seen()
    }
}

/// A Mailgun entry of the `[notify]` table; `extra` adds keys.
fn mailgun_section(base: &str, extra: &str) -> String {
    format!(
        "[[providers]]\ntype = \"mailgun\"\nbase_url = \"{base}\"\ndomain = \"{DOMAIN}\"\n\
         api_key = \"{API_KEY}\"\nfrom = \"{FROM}\"\n{extra}"
    )
}

/// A fake Mailgun and a database whose shipment has a queued "delivered" e-mail row.
struct Case {
    mailgun: FakeMailgun,
    db: std::path::PathBuf,
    shipment: i64,
    id: i64,
    dispatcher: Dispatcher,
    _dir: tempfile::TempDir,
}

async fn case(extra: &str) -> Case {
    case_for(|base| mailgun_section(base, extra)).await
}

/// [`case`] with the `[notify]` text `section` gives for the fake's URL.
async fn case_for(section: impl FnOnce(&str) -> String) -> Case {
    let (mailgun, base) = FakeMailgun::start().await;
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let id = enqueue_at(&db, shipment, "delivered", "email", EMAIL, Some("Left with a neighbour."), 0);
    let dispatcher = dispatcher_for(&section(&base), &db);
    Case { mailgun, db, shipment, id, dispatcher, _dir }
}

/// [`case`] with the event webhook configured, the row sent, and the callbacks router.
async fn sent_case() -> (Case, Router) {
    let c = case(&format!("webhook_signing_key = \"{SIGNING_KEY}\"")).await;
    c.dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&c.db, c.id), "sent");
    let app = notify::callbacks_router(c.dispatcher.state());
    (c, app)
}

/// The message id as the webhook names it (no angle brackets).
fn webhook_id(n: usize) -> String {
    mailgun_id(n).trim_start_matches('<').trim_end_matches('>').to_owned()
}

fn now_s() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(since.as_secs()).expect("seconds")
}

/// `signature.signature` as Mailgun computes it: hex HMAC-SHA256 of timestamp ‖ token,
/// keyed with the webhook signing key.
fn mailgun_signature(key: &str, timestamp: &str, token: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    hex::encode(hmac::sign(&key, format!("{timestamp}{token}").as_bytes()))
}

/// A webhook body as Mailgun posts it, signed with `key` at `timestamp` with `token`.
fn signed(key: &str, timestamp: i64, token: &str, event_data: &Value) -> String {
    let ts = timestamp.to_string();
    json!({
        "signature": { "timestamp": ts, "token": token, "signature": mailgun_signature(key, &ts, token) },
        "event-data": event_data,
    })
    .to_string()
}

/// An event about the first message Mailgun queued for [`EMAIL`]; `row` adds the
/// custom variable, `extra` more fields (`severity`, `delivery-status`).
fn event(name: &str, row: Option<i64>, extra: Value) -> Value {
    let mut e = json!({
        "event": name,
        "id": "G9Bn5sl1TC6t2JJDscE3kA",
        "timestamp": 1751356860.25,
        "log-level": "info",
        "recipient": EMAIL,
        "recipient-domain": "example.com",
        "message": { "headers": { "message-id": webhook_id(1), "from": FROM, "to": EMAIL }, "size": 2012 },
        "tags": ["delivered"],
        "user-variables": {},
        "flags": { "is-authenticated": true, "is-test-mode": false },
    });
    if let Some(row) = row {
        e["user-variables"] = json!({ "doorstep_outbox_id": row.to_string() });
    }
    if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
        e.extend(extra.clone());
    }
    e
}

async fn post_event(app: &Router, body: String) -> (StatusCode, String) {
    call(app, "POST", "/callbacks/mailgun/events", &[("content-type", "application/json")], body).await
}

/// Posts `event_data` as Mailgun does, signed now with the signing key and a token of
/// Mailgun's length of its own (named after `tag`); the hub's status.
async fn post_signed(app: &Router, tag: &str, event_data: &Value) -> StatusCode {
    let token = format!("{:0<50}", format!("t-{tag}-"));
    post_event(app, signed(SIGNING_KEY, now_s(), &token, event_data)).await.0
}

/// [`post_signed`] of Mailgun's "delivered" event naming `row`.
async fn post_delivered(app: &Router, tag: &str, row: i64) -> StatusCode {
    post_signed(app, tag, &event("delivered", Some(row), json!({}))).await
}

fn opted_out(db: &Path, address: &str) -> bool {
    doorstep_hub::store::Store::open(db, doorstep_hub::store::StoreOptions { full_sync: false })
        .expect("open")
        .is_opted_out("email", address)
        .expect("query")
}

#[tokio::test]
async fn an_outbox_row_becomes_exactly_one_mailgun_request_and_the_row_is_sent_with_its_id() {
    let c = case("").await;
    assert_eq!(c.dispatcher.run_once(DAY).await.expect("pass").sent, 1);
    c.dispatcher.run_once(DAY + 60_000).await.expect("a second pass sends nothing");

    let seen = c.mailgun.seen();
    assert_eq!(seen.len(), 1, "exactly one request");
    assert_eq!((seen[0].method.as_str(), seen[0].uri.as_str()), ("POST", "/v3/mg.example.com/messages"));
    let auth = seen[0].headers.get("authorization").and_then(|v| v.to_str().ok()).expect("basic auth");
    assert_eq!(auth, format!("Basic {}", STANDARD.encode(format!("api:{API_KEY}"))));
    let fields = form(&seen[0].body);
    assert_eq!(fields.get("from").map(String::as_str), Some(FROM));
    assert_eq!(fields.get("to").map(String::as_str), Some(EMAIL));
    let id = c.id.to_string();
    assert_eq!(fields.get("v:doorstep_outbox_id"), Some(&id));
    assert_eq!(fields.get("o:tag").map(String::as_str), Some("delivered"));
    assert!(fields.get("subject").is_some_and(|s| !s.is_empty()));
    let text = fields.get("text").expect("text");
    assert!(text.contains("1Z999AA10123456784") && text.contains("https://track.example.com/t/"), "{text}");
    let html = fields.get("html").expect("html");
    assert!(html.contains("<a href=\"https://track.example.com/t/"), "{html}");
    assert!(!fields.contains_key("template") && !fields.contains_key("t:variables"));

    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent"]);
    assert_eq!(status(&c.db, c.id), "sent");
    let sent = last_outcome(&c.db, c.id);
    assert_eq!(sent.provider_id, Some(webhook_id(1)), "Mailgun's id without its angle brackets");
    assert_eq!(sent.provider.as_deref(), Some("mailgun"));

    // No signing key, no webhook: Mailgun's events are not taken unverified.
    let app = notify::callbacks_router(c.dispatcher.state());
    assert_eq!(post_delivered(&app, "unverifiable", c.id).await, StatusCode::NOT_FOUND);
    assert_eq!(status(&c.db, c.id), "sent");
}

#[tokio::test]
async fn a_milestone_with_a_stored_template_sends_its_name_and_the_variables_as_json() {
    // The shorthand table, an EU-style base URL (the loopback server), and a template.
    let Case { mailgun, db, id, dispatcher, _dir, .. } = case_for(|base| {
        format!(
            "[mailgun]\nbase_url = \"{base}\"\ndomain = \"{DOMAIN}\"\napi_key = \"{API_KEY}\"\nfrom = \"{FROM}\"\n\
             templates = {{ delivered = \"doorstep-delivered\" }}\n"
        )
    })
    .await;
    dispatcher.run_once(DAY).await.expect("pass");

    let seen = mailgun.seen();
    assert_eq!(seen.len(), 1);
    let fields = form(&seen[0].body);
    assert_eq!(fields.get("template").map(String::as_str), Some("doorstep-delivered"));
    let vars: Value = serde_json::from_str(fields.get("t:variables").expect("t:variables")).expect("json");
    assert_eq!(vars["tracking_number"], "1Z999AA10123456784");
    assert_eq!(vars["milestone"], "delivered");
    assert_eq!(vars["detail"], "Left with a neighbour.");
    assert!(vars["tracking_url"].as_str().is_some_and(|u| u.starts_with("https://track.example.com/t/")));
    assert!(!fields.contains_key("text") && !fields.contains_key("html"), "the stored template is the body");
    assert_eq!(fields.get("v:doorstep_outbox_id"), Some(&id.to_string()));
    assert_eq!(status(&db, id), "sent");
}

#[tokio::test]
async fn a_mailgun_5xx_or_429_is_retried_after_its_wait_and_both_attempts_are_recorded() {
    let c = case("").await;
    c.mailgun.push(Answer::ok(503, "Service Unavailable"));
    c.mailgun.push(Answer {
        header: Some(("retry-after", "120")),
        ..Answer::ok(429, r#"{"message":"Too many requests"}"#)
    });
    c.dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&c.db, c.id), "queued");
    c.dispatcher.run_once(DAY + 61_000).await.expect("the backoff has passed");
    assert_eq!(c.mailgun.seen().len(), 2);
    assert_eq!(status(&c.db, c.id), "queued");
    let throttled = last_outcome(&c.db, c.id);
    assert!(
        throttled.detail.as_deref().is_some_and(|d| d.contains("429") && d.contains("Too many requests"))
    );
    c.dispatcher.run_once(DAY + 150_000).await.expect("Retry-After not over");
    assert_eq!(c.mailgun.seen().len(), 2, "Mailgun asked for 120 s");
    c.dispatcher.run_once(DAY + 182_000).await.expect("retry");
    assert_eq!(c.mailgun.seen().len(), 3);
    assert_eq!(outcomes(&c.db, c.id), ["queued", "attempt_failed", "attempt_failed", "sent"]);
    assert_eq!(status(&c.db, c.id), "sent");
}

#[tokio::test]
async fn a_refused_request_fails_the_row_once_with_mailguns_reason() {
    let c = case("").await;
    c.mailgun.push(Answer::ok(
        400,
        r#"{"message":"'to' parameter is not a valid address. please check documentation"}"#,
    ));
    c.dispatcher.run_once(DAY).await.expect("pass");
    c.dispatcher.run_once(DAY + 300_000).await.expect("nothing more");
    assert_eq!(c.mailgun.seen().len(), 1, "a refusal is not repeated");
    assert_eq!(status(&c.db, c.id), "failed");
    let failed = last_outcome(&c.db, c.id);
    assert_eq!(failed.outcome, "failed");
    assert!(failed.detail.as_deref().is_some_and(|d| d.contains("not a valid address")), "{failed:?}");
}

#[tokio::test]
async fn a_wrong_api_key_is_mailguns_401_and_fails_the_row() {
    let (mailgun, base) = FakeMailgun::start().await;
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let id = enqueue_at(&db, shipment, "delivered", "email", EMAIL, None, 0);
    let section = mailgun_section(&base, "").replace(API_KEY, "key-wrong");
    let dispatcher = dispatcher_for(&section, &db);
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(mailgun.seen().len(), 1);
    assert_eq!(status(&db, id), "failed");
    assert!(
        last_outcome(&db, id).detail.as_deref().is_some_and(|d| d.contains("401") && d.contains("Forbidden"))
    );
}

#[tokio::test]
async fn a_timeout_after_sending_is_unknown_never_resent_and_settled_by_the_delivered_event() {
    let (c, app) = {
        let c = case(&format!("webhook_signing_key = \"{SIGNING_KEY}\"")).await;
        let app = notify::callbacks_router(c.dispatcher.state());
        (c, app)
    };
    // Mailgun queues it but answers after the hub's 1 s timeout.
    c.mailgun.push(Answer {
        delay: Duration::from_millis(2_500),
        ..Answer::ok(200, &json!({ "id": mailgun_id(1), "message": "Queued. Thank you." }).to_string())
    });
    c.dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&c.db, c.id), "unknown");
    c.dispatcher.run_once(DAY + 300_000).await.expect("never re-sent");
    assert_eq!(c.mailgun.seen().len(), 1, "no idempotency key: not sent twice");
    // The event names the row by its custom variable: the hub never saw the message id.
    assert_eq!(post_delivered(&app, "unknown-row", c.id).await, StatusCode::OK);
    assert_eq!(status(&c.db, c.id), "delivered");
}

#[tokio::test]
async fn a_signed_delivered_event_delivers_the_row_and_forged_stale_or_replayed_ones_change_nothing() {
    let (c, app) = sent_case().await;
    let delivered =
        event("delivered", Some(c.id), json!({ "delivery-status": { "code": 250, "message": "OK" } }));
    let token = "c6b9f89f0a11066af27834600e123e0b5477167110d68991ef";

    let forged = signed("not the signing key", now_s(), token, &delivered);
    let (code, _) = post_event(&app, forged).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let stale = signed(
        SIGNING_KEY,
        now_s() - 3_600,
        "t-stale-00000000000000000000000000000000000000000000",
        &delivered,
    );
    assert_eq!(post_event(&app, stale).await.0, StatusCode::FORBIDDEN);
    let ahead = signed(
        SIGNING_KEY,
        now_s() + 3_600,
        "t-ahead-00000000000000000000000000000000000000000000",
        &delivered,
    );
    assert_eq!(post_event(&app, ahead).await.0, StatusCode::FORBIDDEN);
    let mut tampered: Value =
        serde_json::from_str(&signed(SIGNING_KEY, now_s(), token, &delivered)).expect("json");
    tampered["signature"]["timestamp"] = json!((now_s() + 1).to_string());
    assert_eq!(
        post_event(&app, tampered.to_string()).await.0,
        StatusCode::FORBIDDEN,
        "the timestamp is signed"
    );
    assert_eq!(post_event(&app, "{\"signature\": ".into()).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        post_event(&app, json!({ "event-data": delivered }).to_string()).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent"], "nothing changed");
    assert_eq!(status(&c.db, c.id), "sent");

    let ts = now_s();
    let (code, _) = post_event(&app, signed(SIGNING_KEY, ts, token, &delivered)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status(&c.db, c.id), "delivered");
    let entry = last_outcome(&c.db, c.id);
    assert_eq!(entry.outcome, "delivered");
    assert_eq!(entry.provider_id, Some(webhook_id(1)));

    // Mailgun delivering the same event again: accepted, recorded once.
    assert_eq!(post_event(&app, signed(SIGNING_KEY, ts, token, &delivered)).await.0, StatusCode::OK);
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent", "delivered"]);
    // The captured signature on another event: refused (the signature does not cover it).
    let complaint = event("complained", Some(c.id), json!({}));
    assert_eq!(post_event(&app, signed(SIGNING_KEY, ts, token, &complaint)).await.0, StatusCode::FORBIDDEN);
    assert!(!opted_out(&c.db, EMAIL));
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent", "delivered"]);
}

#[tokio::test]
async fn a_complaint_opts_the_address_out_and_later_email_to_it_is_skipped() {
    let (c, app) = sent_case().await;
    assert_eq!(
        post_signed(&app, "complaint", &event("complained", Some(c.id), json!({}))).await,
        StatusCode::OK
    );
    assert!(opted_out(&c.db, EMAIL));
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent", "opted_out"]);

    let later = enqueue_at(&c.db, c.shipment, "out_for_delivery", "email", EMAIL, None, 0);
    c.dispatcher.run_once(DAY + 60_000).await.expect("pass");
    assert_eq!(c.mailgun.seen().len(), 1, "nothing more e-mailed to the address");
    assert_eq!(status(&c.db, later), "skipped");
    let skipped = last_outcome(&c.db, later);
    assert!(skipped.detail.as_deref().is_some_and(|d| d.starts_with("opted_out")), "{skipped:?}");
}

#[tokio::test]
async fn an_unsubscribe_found_by_message_id_alone_opts_the_address_out() {
    let (c, app) = sent_case().await;
    // No custom variable: the row is found by the message id it was sent with.
    assert_eq!(
        post_signed(&app, "unsubscribe", &event("unsubscribed", None, json!({}))).await,
        StatusCode::OK
    );
    assert!(opted_out(&c.db, EMAIL));
    assert_eq!(last_outcome(&c.db, c.id).outcome, "opted_out");

    let later = enqueue_at(&c.db, c.shipment, "exception", "email", EMAIL, Some("Address not found."), 0);
    c.dispatcher.run_once(DAY + 60_000).await.expect("pass");
    assert_eq!(c.mailgun.seen().len(), 1);
    assert_eq!(status(&c.db, later), "skipped");
}

#[tokio::test]
async fn a_temporary_failure_is_logged_and_the_row_waits_for_mailguns_final_word() {
    let (c, app) = sent_case().await;
    let temporary = event(
        "failed",
        Some(c.id),
        json!({ "severity": "temporary", "reason": "generic",
                "delivery-status": { "code": 452, "message": "4.2.2 The email account is over quota", "attempt-no": 1 } }),
    );
    assert_eq!(post_signed(&app, "temporary", &temporary).await, StatusCode::OK);
    assert_eq!(status(&c.db, c.id), "sent", "Mailgun keeps trying: the row is not over");
    let logged = last_outcome(&c.db, c.id);
    assert_eq!(logged.outcome, "temporary_failure");
    assert!(logged.detail.as_deref().is_some_and(|d| d.contains("over quota")), "{logged:?}");

    let permanent = event(
        "failed",
        Some(c.id),
        json!({ "severity": "permanent", "reason": "bounce",
                "delivery-status": { "code": 550, "message": "5.1.1 The email account that you tried to reach does not exist" } }),
    );
    assert_eq!(post_signed(&app, "permanent", &permanent).await, StatusCode::OK);
    assert_eq!(status(&c.db, c.id), "undelivered");
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent", "temporary_failure", "undelivered"]);
    assert!(!opted_out(&c.db, EMAIL), "a bounce is not an opt-out");
}

#[tokio::test]
async fn opens_deliver_clicks_are_logged_and_events_about_other_rows_are_acknowledged() {
    let (c, app) = sent_case().await;
    assert_eq!(post_signed(&app, "clicked", &event("clicked", Some(c.id), json!({}))).await, StatusCode::OK);
    assert_eq!(status(&c.db, c.id), "sent", "a click is logged, the status is the send's");
    assert_eq!(post_signed(&app, "opened", &event("opened", Some(c.id), json!({}))).await, StatusCode::OK);
    assert_eq!(status(&c.db, c.id), "delivered", "an open implies delivery");
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent", "clicked", "opened"]);

    // Another hub's row with the same id (another address), an unknown row, and an
    // event type the hub does not use: 200, so Mailgun does not retry, and no change.
    let mut other = event("delivered", Some(c.id), json!({ "recipient": "someone@else.example" }));
    other["message"]["headers"]["message-id"] = json!("other@mg.example.com");
    assert_eq!(post_signed(&app, "other", &other).await, StatusCode::OK);
    assert_eq!(
        post_signed(&app, "unknown", &event("failed", Some(9_999), json!({ "severity": "permanent" }))).await,
        StatusCode::OK
    );
    assert_eq!(
        post_signed(&app, "accepted", &event("accepted", Some(c.id), json!({}))).await,
        StatusCode::OK
    );
    assert_eq!(outcomes(&c.db, c.id), ["queued", "sent", "clicked", "opened"]);
}
