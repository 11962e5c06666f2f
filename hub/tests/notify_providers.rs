//! The dispatcher against loopback fake providers that check each request the way the
//! provider documents it, and the tracking page and callbacks through the router.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::Milestone;
use doorstep_hub::notify::{self, Dispatcher};
use doorstep_hub::store::{Acquired, Finish, LeaseClaim, Settled, Store, StoreOptions};

mod fake_vendor;
use fake_vendor::*;

fn twilio_section(base: &str) -> String {
    format!(
        "[twilio]\nbase_url = \"{base}\"\naccount_sid = \"AC0001\"\nauth_token = \"secret-token\"\nfrom = \"+15005550006\"\n"
    )
}

/// WhatsApp's message id in the Cloud API's answer.
const WAMID: &str = "wamid.HBgLMTU1NTU1NTAxMDAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA";

/// A WhatsApp Business number whose approved template is `doorstep_update`, and a
/// WhatsApp-only delivered text with a line break and a tab: WhatsApp refuses both in a
/// template parameter, so the hub must flatten them.
fn whatsapp_section(base: &str) -> String {
    format!(
        "[whatsapp]\nbase_url = \"{base}\"\napi_version = \"v21.0\"\nphone_number_id = \"106540352242922\"\n\
         access_token = \"EAAG-system-user-token\"\ntemplate_name = \"doorstep_update\"\n\
         [[templates]]\nmilestone = \"delivered\"\nlocale = \"en\"\nchannel = \"whatsapp\"\n\
         body = \"Doorstep: your parcel {{tracking_number}} was delivered.\\nProof of delivery:\\t{{link}}\"\n"
    )
}

/// The Cloud API's answer to an accepted template message.
fn whatsapp_accepted() -> Answer {
    Answer::ok(
        200,
        &format!(
            r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"15555550100","wa_id":"15555550100"}}],"messages":[{{"id":"{WAMID}"}}]}}"#
        ),
    )
}

/// The Meta app's secret and the verify token typed into its dashboard.
const APP_SECRET: &str = "6f1c2a9be0d84c17a3f5e2d90b7c4e11";
const VERIFY_TOKEN: &str = "doorstep-verify-4hJ2k";

/// [`whatsapp_section`] with the status webhook configured.
fn whatsapp_webhook_section(base: &str) -> String {
    whatsapp_section(base).replacen(
        "[[templates]]",
        &format!("app_secret = \"{APP_SECRET}\"\nverify_token = \"{VERIFY_TOKEN}\"\n[[templates]]"),
        1,
    )
}

/// A fake provider, and a database with one shipment whose "delivered" row for `channel`
/// (to [`PHONE`]) is queued, with a dispatcher for it configured by `section` for the
/// fake's URL. The provider answers `first` to the first request (when given) and
/// `answer` to the rest.
struct Case {
    fake: Fake,
    base: String,
    db: std::path::PathBuf,
    shipment: i64,
    id: i64,
    metrics: Arc<Metrics>,
    dispatcher: Dispatcher,
    _dir: tempfile::TempDir,
}

async fn case(answer: Answer, first: Option<Answer>, channel: &str, section: fn(&str) -> String) -> Case {
    let (fake, base) = Fake::start(answer).await;
    if let Some(answer) = first {
        fake.push(answer);
    }
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let id = enqueue_at(&db, shipment, "delivered", channel, PHONE, None, 0);
    let metrics = Arc::new(Metrics::default());
    let dispatcher = Dispatcher::new(settings(&section(&base)), &db, Arc::clone(&metrics)).expect("new");
    Case { fake, base, db, shipment, id, metrics, dispatcher, _dir }
}

/// A fake Meta accepting every template message after `first` (when given), and a queued
/// WhatsApp row; `webhook` also configures the status webhook's keys.
async fn whatsapp_case(first: Option<Answer>, webhook: bool) -> Case {
    let section = if webhook { whatsapp_webhook_section } else { whatsapp_section };
    case(whatsapp_accepted(), first, "whatsapp", section).await
}

/// A fake Twilio queueing every message as `sid` after `first` (when given), and a queued
/// SMS row.
async fn twilio_case(sid: &str, first: Option<Answer>) -> Case {
    let queued = Answer::ok(201, &format!(r#"{{"sid":"{sid}","status":"queued"}}"#));
    case(queued, first, "sms", twilio_section).await
}

/// Two passes an hour apart: the provider is asked once (`why`), and the row ends `end`
/// (logged `queued`, then `end`); its last log entry.
async fn asked_once(c: &Case, why: &str, end: &str) -> doorstep_hub::store::Outcome {
    c.dispatcher.run_once(DAY).await.expect("pass");
    c.dispatcher.run_once(DAY + 3_600_000).await.expect("later pass");
    assert_eq!(c.fake.seen().len(), 1, "{why}");
    assert_eq!(status(&c.db, c.id), end);
    assert_eq!(outcomes(&c.db, c.id), ["queued", end]);
    last_outcome(&c.db, c.id)
}

/// A row whose first attempt failed: the backoff holds the retry, which sends it.
async fn retried_after_the_backoff(c: &Case) {
    c.dispatcher.run_once(DAY + 100).await.expect("not due yet");
    assert_eq!(c.fake.seen().len(), 1, "the backoff holds the retry");
    c.dispatcher.run_once(DAY + 5_000).await.expect("retry");
    assert_eq!(c.fake.seen().len(), 2);
    assert_eq!(outcomes(&c.db, c.id), ["queued", "attempt_failed", "sent"]);
    assert_eq!(status(&c.db, c.id), "sent");
}

/// `X-Hub-Signature-256` as Meta computes it: `sha256=` and the lowercase hex HMAC-SHA256
/// of the raw body, keyed with the app secret.
fn meta_signature(secret: &str, body: &str) -> String {
    doorstep_testkit::webhooks::meta(secret, body.as_bytes())
}

/// A Cloud API webhook body with one status of one message to [`PHONE`] from the
/// configured number; `extra` adds fields to the status object (`errors`,
/// `biz_opaque_callback_data`).
fn meta_status(wamid: &str, status: &str, extra: serde_json::Value) -> String {
    let mut s = serde_json::json!({
        "id": wamid,
        "status": status,
        "timestamp": "1751356860",
        "recipient_id": "15555550100",
        "conversation": { "id": "4c1b3e2a9f", "origin": { "type": "utility" } },
        "pricing": { "billable": true, "pricing_model": "PMP", "category": "utility" },
    });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    meta_change(serde_json::json!({ "statuses": [s] }))
}

/// A Cloud API webhook body with one `messages` change about the configured number.
fn meta_change(mut value: serde_json::Value) -> String {
    value["messaging_product"] = "whatsapp".into();
    value["metadata"] =
        serde_json::json!({ "display_phone_number": "15550783881", "phone_number_id": "106540352242922" });
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }],
    })
    .to_string()
}

/// POSTs a webhook body to the router with this `X-Hub-Signature-256` (none when empty).
async fn post_meta(app: &Router, body: &str, signature: &str) -> (StatusCode, String) {
    let mut headers = vec![("content-type", "application/json")];
    if !signature.is_empty() {
        headers.push(("x-hub-signature-256", signature));
    }
    call(app, "POST", "/callbacks/whatsapp", &headers, body.to_owned()).await
}

#[tokio::test]
async fn an_outbox_row_becomes_exactly_one_twilio_request_and_its_signed_callback_delivers_it() {
    let Case { fake: twilio, db, id, dispatcher, _dir, .. } = twilio_case("SM0001", None).await;
    let report = dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(report.sent, 1);
    dispatcher.run_once(DAY + 60_000).await.expect("second pass sends nothing");

    let seen = twilio.seen();
    assert_eq!(seen.len(), 1, "exactly one request");
    assert_eq!(seen[0].uri, "/2010-04-01/Accounts/AC0001/Messages.json");
    let auth = seen[0].headers.get("authorization").and_then(|v| v.to_str().ok()).expect("basic auth");
    assert_eq!(auth, format!("Basic {}", STANDARD.encode("AC0001:secret-token")));
    assert_eq!(
        seen[0].headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-www-form-urlencoded")
    );
    let fields = form(&seen[0].body);
    assert_eq!(fields.get("To").map(String::as_str), Some(PHONE));
    assert_eq!(fields.get("From").map(String::as_str), Some("+15005550006"));
    assert_eq!(
        fields.get("StatusCallback").map(String::as_str),
        Some("https://track.example.com/callbacks/twilio/status")
    );
    let body = fields.get("Body").expect("Body");
    assert!(body.contains("1Z999AA10123456784") && body.contains("https://track.example.com/t/"), "{body}");
    assert_eq!(outcomes(&db, id), ["queued", "sent"]);
    assert_eq!(status(&db, id), "sent");

    // Twilio's status callback, signed as Twilio signs it, completes the row.
    let app = router(&dispatcher);
    let params = [("AccountSid", "AC0001"), ("MessageSid", "SM0001"), ("MessageStatus", "delivered")];
    let (sig, encoded) = twilio_form("secret-token", "/callbacks/twilio/status", &params);
    let bad =
        call(&app, "POST", "/callbacks/twilio/status", &[("x-twilio-signature", "AAAA")], encoded.clone())
            .await;
    assert_eq!(bad.0, StatusCode::FORBIDDEN);
    let ok = call(&app, "POST", "/callbacks/twilio/status", &[("x-twilio-signature", &sig)], encoded.clone())
        .await;
    assert!(ok.0.is_success(), "{ok:?}");
    call(&app, "POST", "/callbacks/twilio/status", &[("x-twilio-signature", &sig)], encoded).await;
    assert_eq!(outcomes(&db, id), ["queued", "sent", "delivered"], "a redelivered callback adds nothing");
    assert_eq!(status(&db, id), "delivered");
}

#[tokio::test]
async fn a_delivered_sms_after_a_door_scan_is_timed_from_the_scan_to_the_providers_yes() {
    let (_twilio, base) = Fake::start(Answer::ok(201, r#"{"sid":"SM0001","status":"queued"}"#)).await;
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    // The van scanned at the door 90 s ago (GNSS time), as the ingest writes it.
    let scanned_ms = notify::now_ms() - 90_000;
    {
        let mut store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
        let tx = store.transaction().expect("tx");
        let evidence = serde_json::json!({"distance_m": 4, "stop_id": "stop-1"});
        tx.add_timeline(shipment, scanned_ms, "device", "delivered_at_address", &evidence).expect("timeline");
        tx.commit().expect("commit");
    }
    enqueue_at(&db, shipment, "delivered", "sms", PHONE, None, 0);
    let metrics = Arc::new(Metrics::default());
    let dispatcher =
        Dispatcher::new(settings(&twilio_section(&base)), &db, Arc::clone(&metrics)).expect("new");
    assert_eq!(dispatcher.run_once(DAY).await.expect("pass").sent, 1);
    let text = metrics.render();
    // The series' value, whatever the encoder's spelling of the bucket bounds (60 or 60.0).
    let value = |series: &str, le: Option<&str>| -> Option<f64> {
        text.lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            let wanted = name.starts_with(&format!("doorstep_hub_scan_to_message_seconds_{series}{{"))
                && name.contains("channel=\"sms\"")
                && le.is_none_or(|le| {
                    name.contains(&format!("le=\"{le}\"")) || name.contains(&format!("le=\"{le}.0\""))
                });
            wanted.then(|| v.parse().ok()).flatten()
        })
    };
    assert_eq!(value("count", None), Some(1.0), "{text}");
    assert_eq!(value("bucket", Some("60")), Some(0.0), "{text}");
    assert_eq!(value("bucket", Some("300")), Some(1.0), "{text}");
    let sum = value("sum", None).expect("sum");
    assert!((90.0..120.0).contains(&sum), "90 s from the scan to the provider's answer: {sum}");
}

#[tokio::test]
async fn a_500_is_retried_once_more_and_both_attempts_are_recorded() {
    let failed = Answer::ok(500, r#"{"code":20500,"message":"Internal Server Error"}"#);
    let c = twilio_case("SM0002", Some(failed)).await;
    c.dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&c.db, c.id), "queued");
    retried_after_the_backoff(&c).await;
}

#[tokio::test]
async fn an_sms_timeout_after_sending_is_unknown_and_never_resent() {
    let slow = Answer { delay: Duration::from_millis(2_500), ..Answer::ok(201, r#"{"sid":"SM0003"}"#) };
    asked_once(&twilio_case("SM0003", Some(slow)).await, "not re-sent", "unknown").await;
}

#[tokio::test]
async fn stop_opts_the_number_out_and_later_messages_are_skipped() {
    let (twilio, base) = Fake::start(Answer::ok(201, r#"{"sid":"SM0004","status":"queued"}"#)).await;
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let dispatcher = dispatcher_for(&twilio_section(&base), &db);
    let app = router(&dispatcher);
    let params = [("Body", "Stop"), ("From", PHONE), ("MessageSid", "SMin"), ("To", "+15005550006")];
    let (code, body) = post_twilio(&app, "secret-token", "/callbacks/twilio/inbound", &params).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("<Response>"), "{body}");
    let id = enqueue_at(&db, shipment, "delivered", "sms", PHONE, None, 0);
    dispatcher.run_once(DAY).await.expect("pass");
    assert!(twilio.seen().is_empty());
    assert_eq!(status(&db, id), "skipped");
    assert_eq!(outcomes(&db, id), ["queued", "skipped"]);
}

#[tokio::test]
async fn quiet_hours_skip_nearby_and_defer_delivered_to_the_morning() {
    let Case { fake: twilio, db, shipment, id: delivered, dispatcher, _dir, .. } =
        twilio_case("SM0005", None).await;
    // A nearby on a shipment still at nearby (a delivered shipment would supersede it).
    let mut store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    tx.save_reconcile(shipment, Milestone::Nearby, &serde_json::json!(null), 0).expect("milestone");
    tx.commit().expect("commit");
    drop(store);
    let nearby = enqueue_at(&db, shipment, "nearby", "sms", PHONE, None, 0);
    let report = dispatcher.run_once(NIGHT).await.expect("pass");
    assert_eq!((report.sent, report.skipped, report.deferred), (0, 1, 1));
    assert_eq!(status(&db, nearby), "skipped");
    assert_eq!(status(&db, delivered), "queued");
    assert!(twilio.seen().is_empty());
    // 08:00 Berlin on 2 July is 06:00Z: 9 hours after NIGHT.
    dispatcher.run_once(NIGHT + 9 * 3_600_000 - 1).await.expect("still quiet");
    assert!(twilio.seen().is_empty());
    dispatcher.run_once(NIGHT + 9 * 3_600_000).await.expect("morning");
    assert_eq!(twilio.seen().len(), 1);
    assert_eq!(outcomes(&db, delivered), ["queued", "deferred", "sent"]);
}

#[tokio::test]
async fn sendgrid_gets_a_documented_mail_send_body() {
    let (sendgrid, base) =
        Fake::start(Answer { header: Some(("x-message-id", "MSG-0001")), ..Answer::ok(202, "") }).await;
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let id = enqueue_at(&db, shipment, "delivered", "email", EMAIL, Some("Left with a neighbour."), 0);
    let section = format!(
        "[sendgrid]\nbase_url = \"{base}\"\napi_key = \"SG.key\"\nfrom_email = \"parcels@example.com\"\nfrom_name = \"Doorstep\"\n"
    );
    let dispatcher = dispatcher_for(&section, &db);
    dispatcher.run_once(DAY).await.expect("pass");
    let seen = sendgrid.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v3/mail/send");
    assert_eq!(seen[0].headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer SG.key"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json");
    assert_eq!(body["personalizations"][0]["to"][0]["email"], EMAIL);
    assert_eq!(body["personalizations"][0]["custom_args"]["doorstep_outbox_id"], id.to_string());
    assert_eq!(body["from"], serde_json::json!({"email": "parcels@example.com", "name": "Doorstep"}));
    assert_eq!(body["subject"], "Your parcel was delivered");
    assert_eq!(body["content"][0]["type"], "text/plain");
    assert_eq!(body["content"][1]["type"], "text/html");
    assert!(body["content"][0]["value"].as_str().expect("text").contains("https://track.example.com/t/"));
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    let log = store.outcomes(id).expect("log");
    assert_eq!(log.last().and_then(|o| o.provider_id.as_deref()), Some("MSG-0001"));
}

#[tokio::test]
async fn a_whatsapp_row_becomes_exactly_one_cloud_api_template_message() {
    let Case { fake: meta, base, db, shipment, id, dispatcher, _dir, .. } = whatsapp_case(None, false).await;
    let link = settings(&whatsapp_section(&base)).tracking_link(shipment, DAY);
    assert_eq!(dispatcher.run_once(DAY).await.expect("pass").sent, 1);
    dispatcher.run_once(DAY + 60_000).await.expect("second pass sends nothing");

    let seen = meta.seen();
    assert_eq!(seen.len(), 1, "exactly one request");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/v21.0/106540352242922/messages");
    assert_eq!(
        seen[0].headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some("Bearer EAAG-system-user-token")
    );
    assert_eq!(seen[0].headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["recipient_type"], "individual");
    assert_eq!(body["to"], "15555550100", "digits only, no '+'");
    assert_eq!(body["type"], "template");
    assert_eq!(body["template"]["name"], "doorstep_update");
    // The shipment says en-US; the text comes from the "en" template, so the message is
    // declared as English, the language the approved WhatsApp template must have.
    assert_eq!(body["template"]["language"]["code"], "en", "the language the text is written in");
    assert_eq!(body["template"]["components"][0]["type"], "body");
    let text = body["template"]["components"][0]["parameters"][0]["text"].as_str().expect("text");
    assert!(!text.contains(['\n', '\t']), "{text:?}");
    assert!(link.starts_with("https://track.example.com/t/"), "{link}");
    assert_eq!(
        body["template"]["components"][0]["parameters"][0],
        serde_json::json!({
            "type": "text",
            "text": format!("Doorstep: your parcel 1Z999AA10123456784 was delivered. Proof of delivery: {link}"),
        })
    );
    // Nothing beyond what the Cloud API documents: Meta answers an unexpected key with a 400.
    let keys = |v: &serde_json::Value| {
        let mut keys = v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&body),
        ["biz_opaque_callback_data", "messaging_product", "recipient_type", "template", "to", "type"]
    );
    // Meta copies it onto the message's statuses: how a row whose send timed out is found.
    let opaque = body["biz_opaque_callback_data"].as_str().expect("opaque data");
    assert!(
        opaque.starts_with(&format!("doorstep-outbox:{id}:")),
        "the row, tagged by this database: {opaque}"
    );
    assert_eq!(keys(&body["template"]), ["components", "language", "name"]);
    assert_eq!(body["template"]["components"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["template"]["components"][0]["parameters"].as_array().map(Vec::len), Some(1));

    assert_eq!(status(&db, id), "sent");
    assert_eq!(outcomes(&db, id), ["queued", "sent"]);
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    let log = store.outcomes(id).expect("log");
    assert_eq!(log.last().and_then(|o| o.provider_id.as_deref()), Some(WAMID));
}

#[tokio::test]
async fn a_whatsapp_timeout_after_sending_is_unknown_and_never_resent() {
    let slow = Answer { delay: Duration::from_millis(2_500), ..whatsapp_accepted() };
    let c = whatsapp_case(Some(slow), false).await;
    let last = asked_once(&c, "not re-sent: the Cloud API has no idempotency key", "unknown").await;
    assert_eq!(last.provider_id, None);
    let detail = last.detail.expect("detail");
    assert!(detail.contains("whatsapp has no idempotency guard"), "{detail}");
}

#[tokio::test]
async fn a_whatsapp_400_fails_the_row_once_with_metas_error_kept_for_the_operator() {
    let refused = Answer::ok(
        400,
        r#"{"error":{"message":"(#132001) Template name does not exist in the translation","type":"OAuthException","code":132001,"error_data":{"messaging_product":"whatsapp","details":"template name (doorstep_update) does not exist in en_US"},"fbtrace_id":"AbCdEfGh"}}"#,
    );
    let c = whatsapp_case(Some(refused), false).await;
    let detail = asked_once(&c, "a refused template is not retried", "failed").await.detail.expect("detail");
    assert!(detail.starts_with("whatsapp HTTP 400") && detail.contains("132001"), "{detail}");
}

#[tokio::test]
async fn whatsapp_throttling_is_a_400_that_is_retried_after_the_backoff() {
    // Meta's throughput limit for the sending number: HTTP 400, code 130429.
    let throttled = Answer::ok(
        400,
        r#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,"error_data":{"messaging_product":"whatsapp","details":"Cloud API message throughput has been reached."},"fbtrace_id":"Az8or2yhqkZfEZ"}}"#,
    );
    let c = whatsapp_case(Some(throttled), false).await;
    c.dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&c.db, c.id), "queued", "throttled, not refused");
    retried_after_the_backoff(&c).await;
}

#[tokio::test]
async fn a_signed_whatsapp_delivered_status_delivers_the_row_and_a_forged_one_changes_nothing() {
    let Case { db, id, metrics, dispatcher, _dir, .. } = whatsapp_case(None, true).await;
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&db, id), "sent");
    let app = router(&dispatcher);

    let body = meta_status(WAMID, "delivered", serde_json::json!({}));
    let forged = meta_signature("another-apps-secret", &body);
    assert_eq!(post_meta(&app, &body, &forged).await.0, StatusCode::FORBIDDEN);
    assert_eq!(post_meta(&app, &body, "").await.0, StatusCode::FORBIDDEN, "no signature");
    let signed = meta_signature(APP_SECRET, &body);
    let tampered = body.replace("1751356860", "1751356861");
    assert_eq!(post_meta(&app, &tampered, &signed).await.0, StatusCode::FORBIDDEN, "a changed body");
    assert_eq!(status(&db, id), "sent", "nothing changed");
    assert_eq!(outcomes(&db, id), ["queued", "sent"]);
    let rejected = [("carrier", "whatsapp"), ("outcome", "rejected"), ("reason", "bad_signature")];
    assert_eq!(metrics.get("doorstep_hub_webhooks_total", &rejected), 3);

    let (code, text) = post_meta(&app, &body, &signed).await;
    assert_eq!(code, StatusCode::OK, "Meta retries anything but a 200: {text}");
    let (code, _) = post_meta(&app, &body, &signed).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(outcomes(&db, id), ["queued", "sent", "delivered"], "a redelivered status adds nothing");
    assert_eq!(status(&db, id), "delivered");
    let last = last_outcome(&db, id);
    assert_eq!(last.provider_id.as_deref(), Some(WAMID));
    assert_eq!(last.detail.as_deref(), Some("whatsapp delivered"));
    let stored = [("carrier", "whatsapp"), ("outcome", "stored"), ("reason", "ok")];
    assert_eq!(metrics.get("doorstep_hub_webhooks_total", &stored), 2);
    let delivered = [("channel", "whatsapp"), ("outcome", "delivered")];
    assert_eq!(metrics.get("doorstep_hub_notifications_total", &delivered), 1);

    // Meta's own `sent` arrives late and `read` after it: neither moves the row back.
    let sent = meta_status(WAMID, "sent", serde_json::json!({}));
    assert_eq!(post_meta(&app, &sent, &meta_signature(APP_SECRET, &sent)).await.0, StatusCode::OK);
    let read = meta_status(WAMID, "read", serde_json::json!({}));
    assert_eq!(post_meta(&app, &read, &meta_signature(APP_SECRET, &read)).await.0, StatusCode::OK);
    assert_eq!(outcomes(&db, id), ["queued", "sent", "delivered", "opened"]);
    assert_eq!(status(&db, id), "delivered");
}

#[tokio::test]
async fn metas_verification_handshake_echoes_the_challenge_only_for_the_verify_token() {
    let (_dir, db) = hub_db();
    database(&db);
    let metrics = Arc::new(Metrics::default());
    let dispatcher =
        Dispatcher::new(settings(&whatsapp_webhook_section("http://127.0.0.1:9")), &db, Arc::clone(&metrics))
            .expect("new");
    let app = router(&dispatcher);
    let get = |query: String| {
        let app = app.clone();
        async move { call(&app, "GET", &format!("/callbacks/whatsapp?{query}"), &[], String::new()).await }
    };
    let (code, text) =
        get(format!("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}")).await;
    assert_eq!((code, text.as_str()), (StatusCode::OK, "1158201444"), "the challenge, as plain text only");
    let (code, text) = get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=guess".into()).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(!text.contains("1158201444"), "{text}");
    let (code, _) =
        get(format!("hub.mode=unsubscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "only a subscription is answered");
    assert_eq!(get("hub.mode=subscribe&hub.challenge=1158201444".into()).await.0, StatusCode::FORBIDDEN);
    let refused = [("carrier", "whatsapp"), ("outcome", "rejected"), ("reason", "bad_verify_token")];
    assert_eq!(metrics.get("doorstep_hub_webhooks_total", &refused), 3);

    // Without app_secret and verify_token the endpoint is not there, like SendGrid's.
    let plain = dispatcher_for(&whatsapp_section("http://127.0.0.1:9"), &db);
    let app = router(&plain);
    let query =
        format!("/callbacks/whatsapp?hub.mode=subscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}");
    assert_eq!(call(&app, "GET", &query, &[], String::new()).await.0, StatusCode::NOT_FOUND);
    let body = meta_status(WAMID, "delivered", serde_json::json!({}));
    let (code, _) = post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "no route without the webhook's keys");
}

#[tokio::test]
async fn a_failed_whatsapp_status_leaves_the_row_undelivered_with_metas_error_code() {
    let Case { db, shipment, id, metrics, dispatcher, _dir, .. } = whatsapp_case(None, true).await;
    dispatcher.run_once(DAY).await.expect("pass");
    let app = router(&dispatcher);

    let garbage = "{\"object\": \"whatsapp_business_account\", \"entry\": [";
    let (code, _) = post_meta(&app, garbage, &meta_signature(APP_SECRET, garbage)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "signed but not JSON");
    let bad_json = [("carrier", "whatsapp"), ("outcome", "rejected"), ("reason", "bad_json")];
    assert_eq!(metrics.get("doorstep_hub_webhooks_total", &bad_json), 1);
    assert_eq!(status(&db, id), "sent");

    let body = meta_status(
        WAMID,
        "failed",
        serde_json::json!({ "errors": [{
            "code": 131026,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": { "details": "Message Undeliverable." },
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }] }),
    );
    let (code, text) = post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    assert_eq!(status(&db, id), "undelivered", "Meta accepted it, then could not deliver it");
    assert_eq!(outcomes(&db, id), ["queued", "sent", "undelivered"]);
    let last = last_outcome(&db, id);
    assert_eq!(last.provider_id.as_deref(), Some(WAMID));
    assert_eq!(last.detail.as_deref(), Some("whatsapp failed: error 131026 Message undeliverable"));
    assert_eq!(
        metrics
            .get("doorstep_hub_notifications_total", &[("channel", "whatsapp"), ("outcome", "undelivered")]),
        1
    );

    // A status whose id some SMS row carries is not about that row.
    let sms = enqueue_at(&db, shipment, "delivered", "sms", PHONE, None, 0);
    {
        let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
        assert!(store.claim_notification(sms).expect("claim"));
        store.finish_notification(sms, DAY, &sent(Some("wamid.ON-AN-SMS-ROW"))).expect("sms");
    }
    let body = meta_status("wamid.ON-AN-SMS-ROW", "failed", serde_json::json!({}));
    assert_eq!(post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await.0, StatusCode::OK);
    assert_eq!(status(&db, sms), "sent", "WhatsApp statuses touch WhatsApp rows only");
    assert_eq!(outcomes(&db, sms), ["queued", "sent"]);
}

#[tokio::test]
async fn a_whatsapp_row_unknown_after_a_timeout_is_settled_by_metas_statuses() {
    let slow = Answer { delay: Duration::from_millis(2_500), ..whatsapp_accepted() };
    let Case { fake: meta, db, id, dispatcher, _dir, .. } = whatsapp_case(Some(slow), true).await;
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&db, id), "unknown");
    assert_eq!(last_outcome(&db, id).provider_id, None, "the hub never saw the wamid");
    // What the hub asked Meta to copy onto the statuses, from the request Meta received.
    let sent: serde_json::Value = serde_json::from_slice(&meta.seen()[0].body).expect("json");
    let opaque = sent["biz_opaque_callback_data"].clone();
    let app = router(&dispatcher);

    // The same row id, but sent to another number: another Doorstep database's row.
    let elsewhere = meta_status(WAMID, "sent", serde_json::json!({ "biz_opaque_callback_data": opaque }))
        .replace("\"recipient_id\":\"15555550100\"", "\"recipient_id\":\"4930901820\"");
    assert!(elsewhere.contains("4930901820"));
    let (code, _) = post_meta(&app, &elsewhere, &meta_signature(APP_SECRET, &elsewhere)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status(&db, id), "unknown", "not this row");

    let body = meta_status(WAMID, "sent", serde_json::json!({ "biz_opaque_callback_data": opaque }));
    let (code, text) = post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    assert_eq!(status(&db, id), "sent", "Meta did send it");
    assert_eq!(outcomes(&db, id), ["queued", "unknown", "sent"]);
    assert_eq!(last_outcome(&db, id).provider_id.as_deref(), Some(WAMID), "the wamid, learnt late");

    // Later statuses find the row by the wamid alone.
    let body = meta_status(WAMID, "delivered", serde_json::json!({}));
    post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(status(&db, id), "delivered");
    assert_eq!(outcomes(&db, id), ["queued", "unknown", "sent", "delivered"]);
    dispatcher.run_once(DAY + 3_600_000).await.expect("later pass");
    assert_eq!(meta.seen().len(), 1, "still never re-sent");
}

#[tokio::test]
async fn a_whatsapp_failure_reported_before_the_send_answer_is_written_is_kept() {
    let Case { db, id, dispatcher, _dir, .. } = whatsapp_case(None, true).await;
    let app = router(&dispatcher);
    // The dispatcher has claimed the row and its request is out; Meta's status is faster.
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    assert!(store.claim_notification(id).expect("claim"));
    let opaque = notify::whatsapp::OpaqueIds::new(SECRET).name(id);
    let error = serde_json::json!([{ "code": 131026, "title": "Message undeliverable" }]);
    let body = meta_status(
        WAMID,
        "failed",
        serde_json::json!({ "biz_opaque_callback_data": opaque, "errors": error }),
    );
    let (code, text) = post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    assert_eq!(status(&db, id), "undelivered");
    // Then the send's answer is written: logged, and the failure stands.
    store.finish_notification(id, DAY, &sent(Some(WAMID))).expect("finish");
    assert_eq!(status(&db, id), "undelivered");
    assert_eq!(outcomes(&db, id), ["queued", "undelivered", "sent"]);
}

#[tokio::test]
async fn stop_on_whatsapp_opts_the_number_out_of_whatsapp_only() {
    let Case { fake: meta, db, id, dispatcher, _dir, .. } = whatsapp_case(None, true).await;
    let app = router(&dispatcher);
    let body = meta_change(serde_json::json!({
        "contacts": [{ "profile": { "name": "Ada" }, "wa_id": "15555550100" }],
        "messages": [{
            "from": "15555550100", "id": "wamid.HBgLMTU1NTU1NTAxMDAVAgASGBQzQUVCRDk1NjAxRTI2OUZCQzE4OQA=",
            "timestamp": "1751356900", "type": "text", "text": { "body": " Stop " },
        }],
    }));
    let (code, text) = post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    assert!(store.is_opted_out("whatsapp", PHONE).expect("query"), "stored as rows hold it");
    assert!(!store.is_opted_out("sms", PHONE).expect("query"), "WhatsApp only");
    assert_eq!(dispatcher.run_once(DAY).await.expect("pass").skipped, 1, "the queued row");
    assert_eq!(status(&db, id), "skipped");
    assert!(meta.seen().is_empty());
}

#[tokio::test]
async fn a_signed_webhook_verifies_with_the_secret_and_an_ambiguous_failure_resends_the_same_id() {
    let (hook, base) = Fake::start(Answer::ok(204, "")).await;
    hook.push(Answer { delay: Duration::from_millis(2_500), ..Answer::ok(204, "") });
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let url = format!("{base}/hooks/doorstep");
    // The webhook contact is a URL; the shipment needs it as a consented contact.
    {
        let conn = doorstep_hub::store::Store::open(&db, Default::default()).expect("open");
        let contacts = serde_json::json!({ "webhook": { "recipient": url, "consent": true } });
        conn.raw()
            .execute(
                "UPDATE shipments SET contacts = ?1 WHERE id = ?2",
                [
                    doorstep_hub::store::Value::Text(contacts.to_string().into()),
                    doorstep_hub::store::Value::Int(shipment),
                ],
            )
            .expect("contacts");
    }
    let id = enqueue_at(&db, shipment, "delivered", "webhook", &url, None, 0);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let dispatcher = dispatcher_for(&format!("[webhook]\nsecret = \"{secret}\"\n"), &db);
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&db, id), "queued", "ambiguous on an idempotent channel: resend");
    dispatcher.run_once(DAY + 5_000).await.expect("resend");
    let seen = hook.seen();
    assert_eq!(seen.len(), 2);
    let signer = notify::webhook::WebhookSigner::new(secret).expect("secret");
    let header =
        |s: &Seen, n: &str| s.headers.get(n).and_then(|v| v.to_str().ok()).expect("header").to_owned();
    assert_eq!(header(&seen[0], "webhook-id"), header(&seen[1], "webhook-id"));
    for s in &seen {
        let ts: i64 = header(s, "webhook-timestamp").parse().expect("ts");
        assert!(signer.verify(&header(s, "webhook-id"), ts, &s.body, &header(s, "webhook-signature")));
    }
    let body: serde_json::Value = serde_json::from_slice(&seen[1].body).expect("json");
    assert_eq!(body["data"]["milestone"], "delivered");
    assert_eq!(status(&db, id), "sent");
}

#[tokio::test]
async fn operations_alerts_are_posted_to_slack_once() {
    let (slack, _dir, dispatcher) = alert_case(
        Answer::ok(200, "ok"),
        "delivered_away_from_address",
        "The van was 900 m away at handover.",
        |base| format!("[slack]\nwebhook_url = \"{base}/services/T000/B000/XXXX\"\n"),
    )
    .await;
    assert_eq!(dispatcher.run_once(DAY).await.expect("pass").alerts, 1);
    assert_eq!(dispatcher.run_once(DAY + 1).await.expect("pass").alerts, 0);
    let seen = slack.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/services/T000/B000/XXXX");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json");
    let text = body["text"].as_str().expect("text");
    assert!(text.contains("delivered_away_from_address") && text.contains("1Z999AA10123456784"), "{text}");
}

#[tokio::test]
async fn the_tracking_page_checks_its_token_and_never_shows_the_address() {
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    {
        let mut store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
        let tx = store.transaction().expect("tx");
        tx.add_timeline(
            shipment,
            DAY,
            "ups",
            "out_for_delivery",
            &serde_json::json!({"message": "12 Main Street"}),
        )
        .expect("timeline");
        tx.add_timeline(
            shipment,
            DAY + 60_000,
            "device",
            "delivered_at_address",
            &serde_json::json!({"distance_m": 9, "stop_id": "stop-3", "photo_sha256": null}),
        )
        .expect("timeline");
        tx.commit().expect("commit");
    }
    let s = settings("");
    let now = notify::now_ms();
    let good = s.link_signer.sign(shipment, now + 60_000);
    let expired = s.link_signer.sign(shipment, now - 1_000);
    let dispatcher = Dispatcher::new(s, &db, Arc::new(Metrics::default())).expect("new");
    let app = router(&dispatcher);
    let (code, html) = call(&app, "GET", &format!("/t/{good}"), &[], String::new()).await;
    assert_eq!(code, StatusCode::OK, "{html}");
    assert!(html.contains("Delivered") && html.contains("9 m from the address"), "{html}");
    assert!(!html.contains("Main Street") && !html.contains("stop-3"), "{html}");
    let (code, html) = call(&app, "GET", &format!("/t/{expired}"), &[], String::new()).await;
    assert_eq!(code, StatusCode::GONE);
    assert!(!html.contains("1Z999"));
    let mut tampered = good.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("utf8");
    let (code, html) = call(&app, "GET", &format!("/t/{tampered}"), &[], String::new()).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(!html.contains("1Z999"));
    let (code, _) = call(&app, "GET", &format!("/t/{good}/photo"), &[], String::new()).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "no photo proof");
}

/// Raises an operations alert for the shipment.
fn alert(path: &Path, shipment: i64, code: &str) {
    raise_alert(path, shipment, code, "raised by the test");
}

/// Waits until `done` holds, for at most five seconds.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_dispatching_on_one_database_send_each_message_and_alert_once() {
    // WhatsApp and Slack: channels outside the test's quiet hours, so the wall clock
    // these dispatchers run on cannot defer them.
    let (meta, meta_base) = Fake::start(whatsapp_accepted()).await;
    // Slack answers slowly: two dispatchers without a lease would both read the alerts
    // as unsent before either marked them posted.
    let (slack, slack_base) =
        Fake::start(Answer { delay: Duration::from_millis(300), ..Answer::ok(200, "ok") }).await;
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let row = enqueue_at(&db, shipment, "delivered", "whatsapp", PHONE, None, 0);
    for code in ["delivered_away_from_address", "carrier_delivered_van_never_arrived", "held_too_long"] {
        alert(&db, shipment, code);
    }
    let section = format!(
        "{}[slack]\nwebhook_url = \"{slack_base}/services/T000/B000/XXXX\"\n",
        whatsapp_section(&meta_base)
    );
    let lease = Duration::from_millis(900);
    let start = |holder: &'static str| {
        let dispatcher = dispatcher_for(&section, &db);
        let cancel = tokio_util::sync::CancellationToken::new();
        (dispatcher.spawn_with_lease(holder, lease, cancel.clone()), cancel)
    };
    let (a, stop_a) = start("hub-a");
    let (b, stop_b) = start("hub-b");

    assert!(eventually(|| meta.seen().len() == 1 && slack.seen().len() >= 3).await, "sent");
    // Several more passes of both dispatchers: nothing goes out twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(meta.seen().len(), 1, "the message once");
    assert_eq!(slack.seen().len(), 3, "each alert once");
    assert_eq!(status(&db, row), "sent");

    // The holder stops and gives the lease up; the other hub takes over and sends what
    // comes next, once.
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    let (first, _) = store.dispatch_lease_holder().expect("lease").expect("held");
    let ((stopping, stop), (other, keep_going), survivor) = if first == "hub-a" {
        ((a, stop_a), (b, stop_b), "hub-b")
    } else {
        ((b, stop_b), (a, stop_a), "hub-a")
    };
    stop.cancel();
    stopping.await.expect("stopped");
    alert(&db, shipment, "exception_after_delivery");
    assert!(eventually(|| slack.seen().len() >= 4).await, "the new alert goes out");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(slack.seen().len(), 4, "once");
    assert_eq!(store.dispatch_lease_holder().expect("lease").map(|(h, _)| h).as_deref(), Some(survivor));
    keep_going.cancel();
    other.await.expect("stopped");
}

#[test]
fn a_late_answer_from_a_hub_that_lost_the_lease_is_logged_and_keeps_the_new_holders_status() {
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let hook = enqueue_at(&db, shipment, "delivered", "webhook", "https://orders.example.com/hook", None, 0);
    let sms = enqueue_at(&db, shipment, "delivered", "sms", PHONE, None, 0);
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    // The old holder claims both; the lease passes and the new holder settles them.
    assert!(store.claim_notification(hook).expect("claim"));
    assert!(store.claim_notification(sms).expect("claim"));
    let claim =
        LeaseClaim { holder: "hub-b", token: "b1", first: true, ttl_ms: 30_000, resend_safe: &["webhook"] };
    let (took, settled) = store.take_dispatch_lease(&claim, DAY).expect("take over");
    assert_eq!(took, Acquired::TookOver(None));
    assert_eq!(settled, Settled { requeued: 1, unknown: 1 });
    assert_eq!(status(&db, hook), "queued", "the webhook goes again, with the same id");
    assert_eq!(status(&db, sms), "unknown");
    // Then the old holder's requests answer.
    store.finish_notification(hook, DAY + 1, &sent(Some("late"))).expect("finish");
    store.finish_notification(sms, DAY + 1, &sent(Some("SM-late"))).expect("finish");
    assert_eq!(status(&db, hook), "queued", "the new holder's plan stands");
    assert_eq!(outcomes(&db, hook), ["queued", "attempt_failed", "sent"], "the answer is logged");
    assert_eq!(status(&db, sms), "sent", "an unknown row learns it went out");
}

#[tokio::test]
async fn a_whatsapp_question_is_answered_with_a_text_reply_and_a_flood_is_cut_off() {
    let Case { fake: meta, db, dispatcher, _dir, .. } = whatsapp_case(None, true).await;
    let now = notify::now_ms();
    add_shipment_at(&db, "1Z999AA10123456791", Milestone::Nearby, now - 600_000);
    let app = router(&dispatcher);
    let ask = |n: usize| {
        meta_change(serde_json::json!({
            "contacts": [{ "profile": { "name": "Ada" }, "wa_id": "15555550100" }],
            "messages": [{
                "from": "15555550100", "id": format!("wamid.question{n}"),
                "timestamp": "1751356900", "type": "text", "text": { "body": "Where is my parcel?" },
            }],
        }))
    };
    let body = ask(0);
    let (code, text) = post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    assert!(eventually(|| meta.seen().len() == 1).await, "the answer is sent through the Cloud API");
    let sent = &meta.seen()[0];
    assert_eq!(sent.uri, "/v21.0/106540352242922/messages");
    assert_eq!(sent.headers["authorization"], "Bearer EAAG-system-user-token");
    let reply: serde_json::Value = serde_json::from_slice(&sent.body).expect("json");
    assert_eq!((reply["to"].as_str(), reply["type"].as_str()), (Some("15555550100"), Some("text")));
    let words = reply["text"]["body"].as_str().expect("text body");
    assert!(words.contains("1Z999AA10123456791") && words.contains("the driver is nearby"), "{words}");
    assert!(words.contains("https://track.example.com/t/"), "{words}");
    // Five answers an hour at most: a number writing in a loop does not run the bill up.
    for n in 1..8 {
        let body = ask(n);
        assert_eq!(post_meta(&app, &body, &meta_signature(APP_SECRET, &body)).await.0, StatusCode::OK);
    }
    assert!(eventually(|| meta.seen().len() == 5).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(meta.seen().len(), 5, "no sixth answer within the hour");
    let conn = doorstep_hub::store::Store::open(&db, Default::default()).expect("open");
    let too_many: i64 = conn
        .raw()
        .query_row(
            "SELECT count(*) FROM customer_questions WHERE kind = 'too_many'",
            doorstep_hub::store::NO_ARGS,
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(too_many, 3);
}

/// A send's answer as the dispatcher writes it: `sent`, with the provider's message id.
fn sent(provider_id: Option<&str>) -> Finish<'_> {
    Finish {
        status: doorstep_hub::store::OutboxStatus::Sent,
        next_attempt_ms: None,
        outcome: doorstep_hub::store::NoticeLogged::Sent,
        provider: None,
        provider_id,
        detail: None,
    }
}
