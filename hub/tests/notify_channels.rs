//! Push to customers' app accounts (OneSignal) and operations alerts to staff (Slack,
//! Microsoft Teams, Google Chat, Zapier) with their escalation, each against a loopback
//! fake that checks the request the way the vendor documents it and answers the way the
//! vendor does, quirks included.

use std::path::Path;
use std::time::Duration;

use doorstep_hub::notify::Dispatcher;
use doorstep_hub::store::{Contact, ContactChannel, Store, StoreOptions};
use serde_json::Value;

mod fake_vendor;
use fake_vendor::*;

const APP_ID: &str = "2f3c1a0e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
const EXTERNAL_ID: &str = "shop-user-4711";

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

/// A shipment whose customer has a push contact (the shop's user id) and returns its id.
fn push_shipment(path: &Path) -> i64 {
    let contacts = [(ContactChannel::Push, Contact { recipient: EXTERNAL_ID.into(), consent: true })];
    let new = ups_shipment("1Z999AA10123456784", contacts, "de-DE", "Europe/Berlin");
    insert_shipment(path, &new, 0, Some(doorstep_hub::model::Milestone::Delivered))
}

fn onesignal_section(base: &str) -> String {
    format!(
        "[[providers]]\ntype = \"onesignal\"\nbase_url = \"{base}\"\napp_id = \"{APP_ID}\"\napi_key = \"os-key\"\n"
    )
}

/// A database with one push row for OneSignal at `base`: (its directory, path, row, dispatcher).
fn push_case(base: &str) -> (tempfile::TempDir, std::path::PathBuf, i64, Dispatcher) {
    let (_dir, db) = hub_db();
    let shipment = push_shipment(&db);
    let id = enqueue_at(&db, shipment, "delivered", "push", EXTERNAL_ID, None, 0);
    let dispatcher = dispatcher_for(&onesignal_section(base), &db);
    (_dir, db, id, dispatcher)
}

/// Checks one request against OneSignal's Create Notification documentation.
fn check_onesignal(seen: &Seen) -> Value {
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/notifications");
    assert_eq!(seen.headers["authorization"], "Key os-key");
    assert!(seen.headers["content-type"].to_str().expect("ascii").starts_with("application/json"));
    let body = json(&seen.body);
    assert_eq!(body["app_id"], APP_ID);
    assert_eq!(body["include_aliases"]["external_id"], serde_json::json!([EXTERNAL_ID]));
    assert_eq!(body["target_channel"], "push");
    assert!(body["contents"]["en"].as_str().is_some_and(|t| !t.is_empty()), "English content is required");
    assert!(body["headings"]["en"].is_string());
    let key = body["idempotency_key"].as_str().expect("idempotency_key");
    assert_eq!(key.len(), 36, "a UUID: {key}");
    body
}

#[tokio::test]
async fn a_push_row_becomes_one_onesignal_notification_in_the_customers_language() {
    let (fake, base) = Fake::start(Answer::ok(200, r#"{"id":"b98881cc-1e94-4366-bbd9-db8f3429292b"}"#)).await;
    let (_dir, db, id, dispatcher) = push_case(&base);
    dispatcher.run_once(DAY).await.expect("pass");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let body = check_onesignal(&seen[0]);
    assert!(body["contents"]["de"].as_str().is_some_and(|t| t.contains("zugestellt")), "{body}");
    assert!(body["url"].as_str().is_some_and(|u| u.starts_with("https://track.example.com/t/")));
    assert_eq!(status(&db, id), "sent");
    let last = last_outcome(&db, id);
    assert_eq!(last.provider_id.as_deref(), Some("b98881cc-1e94-4366-bbd9-db8f3429292b"));
    assert_eq!(last.provider.as_deref(), Some("onesignal"));
}

#[tokio::test]
async fn onesignals_200_with_an_empty_id_is_a_failure_not_a_send() {
    let quirk = r#"{"id":"","errors":{"invalid_aliases":{"external_id":["shop-user-4711"]}}}"#;
    let (fake, base) = Fake::start(Answer::ok(200, quirk)).await;
    let (_dir, db, id, dispatcher) = push_case(&base);
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(status(&db, id), "failed", "nothing was sent");
    let detail = last_outcome(&db, id).detail.expect("detail");
    assert!(detail.contains("empty id") && detail.contains("invalid_aliases"), "{detail}");
}

#[tokio::test]
async fn a_push_that_timed_out_is_sent_again_under_the_same_idempotency_key() {
    let (fake, base) = Fake::start(Answer::ok(200, r#"{"id":"b98881cc-1e94-4366-bbd9-db8f3429292b"}"#)).await;
    fake.push(Answer { delay: Duration::from_millis(1_500), ..Answer::ok(200, r#"{"id":"first"}"#) });
    let (_dir, db, id, dispatcher) = push_case(&base);
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&db, id), "queued", "push carries an idempotency key, so a timeout is retried");
    dispatcher.run_once(DAY + 3_600_000).await.expect("retry");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(check_onesignal(&seen[0])["idempotency_key"], check_onesignal(&seen[1])["idempotency_key"]);
    assert_eq!(status(&db, id), "sent");
}

#[tokio::test]
async fn a_429_is_retried_after_onesignals_retry_after() {
    let (fake, base) = Fake::start(Answer::ok(200, r#"{"id":"b98881cc-1e94-4366-bbd9-db8f3429292b"}"#)).await;
    fake.push(Answer {
        header: Some(("retry-after", "600")),
        ..Answer::ok(429, r#"{"errors":["API rate limit exceeded"]}"#)
    });
    let (_dir, db, id, dispatcher) = push_case(&base);
    dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(status(&db, id), "queued");
    let conn = doorstep_hub::store::Store::open(&db, Default::default()).expect("open");
    let next: i64 = conn
        .raw()
        .query_row("SELECT next_attempt_ms FROM notification_outbox WHERE id = ?1", [id], |r| r.get(0))
        .expect("next");
    assert!(next >= DAY + 600_000, "Retry-After: 600 s is honoured (next at +{} ms)", next - DAY);
    dispatcher.run_once(DAY + 300_000).await.expect("too early");
    assert_eq!(fake.seen().len(), 1, "not before Retry-After");
    dispatcher.run_once(DAY + 700_000).await.expect("later");
    assert_eq!(status(&db, id), "sent");
}

// ---- operations alerts ----------------------------------------------------------------

fn raise(path: &Path, code: &str) -> i64 {
    let shipment = database(path);
    raise_alert(path, shipment, code, "Delivered by the carrier, no door scan by the van");
    let conn = doorstep_hub::store::Store::open(path, Default::default()).expect("open");
    conn.raw()
        .query_row("SELECT max(id) FROM ops_alerts", doorstep_hub::store::NO_ARGS, |r| r.get(0))
        .expect("id")
}

fn staff_section(base: &str, escalation: &str) -> String {
    format!(
        "[[providers]]\ntype = \"slack\"\nwebhook_url = \"{base}/slack/T0/B0/x\"\n\
         [[providers]]\ntype = \"teams\"\nwebhook_url = \"{base}/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=s1g\"\n\
         [[providers]]\ntype = \"google_chat\"\nwebhook_url = \"{base}/v1/spaces/AAAA/messages?key=k3y&token=t0k\"\n\
         [[providers]]\ntype = \"zapier\"\nwebhook_url = \"{base}/hooks/catch/123/abc/\"\n{escalation}"
    )
}

fn check_teams(seen: &Seen) {
    assert!(seen.uri.starts_with("/workflows/abc/") && seen.uri.contains("sig=s1g"), "{}", seen.uri);
    let body = json(&seen.body);
    assert_eq!(body["type"], "message");
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["contentType"], "application/vnd.microsoft.card.adaptive");
    assert!(attachment["contentUrl"].is_null());
    let card = &attachment["content"];
    assert!(card.is_object(), "content is the card object, not a string");
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4", "Workflows refuse cards above 1.4");
    assert!(seen.body.len() <= 28 * 1024);
    let text = card["body"].to_string();
    assert!(text.contains("delivered_without_scan") && text.contains("1Z999AA10123456784"), "{text}");
}

fn check_google_chat(seen: &Seen, alert: i64, step: u32) {
    let (path, query) = seen.uri.split_once('?').expect("query");
    assert_eq!(path, "/v1/spaces/AAAA/messages");
    let q = form(query.as_bytes());
    assert_eq!((q["key"].as_str(), q["token"].as_str()), ("k3y", "t0k"));
    assert_eq!(q["messageReplyOption"], "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
    assert_eq!(q["requestId"], format!("doorstep-alert-{alert}-{step}"));
    let body = json(&seen.body);
    assert_eq!(body["thread"]["threadKey"], "doorstep-1Z999AA10123456784", "one thread per shipment");
    assert!(body["text"].as_str().is_some_and(|t| t.contains("delivered_without_scan")));
}

fn paths(fake: &Fake) -> Vec<String> {
    fake.seen().iter().map(|s| s.uri.split('/').nth(1).unwrap_or("").to_owned()).collect()
}

#[tokio::test]
async fn without_an_escalation_list_an_alert_goes_to_the_first_staff_provider_that_takes_it() {
    let (fake, base) = Fake::start(Answer::ok(200, r#"{"name":"spaces/AAAA/messages/1"}"#)).await;
    // Slack is down (503), Teams' flow is gone (404): Google Chat takes it.
    fake.push(Answer::ok(503, "service unavailable"));
    fake.push(Answer::ok(404, "flow not found"));
    let (_dir, db) = hub_db();
    let alert = raise(&db, "delivered_without_scan");
    let dispatcher = dispatcher_for(&staff_section(&base, ""), &db);
    let report = dispatcher.run_once(DAY).await.expect("pass");
    assert_eq!(report.alerts, 1);
    let seen = fake.seen();
    assert_eq!(paths(&fake), ["slack", "workflows", "v1"], "Zapier, after Google Chat, is never asked");
    check_teams(&seen[1]);
    check_google_chat(&seen[2], alert, 3);
    dispatcher.run_once(DAY + 3_600_000).await.expect("later");
    assert_eq!(fake.seen().len(), 3, "posted once; no escalation without a list");
}

#[tokio::test]
async fn an_unacknowledged_alert_escalates_step_by_step_and_stops_when_acknowledged() {
    let (fake, base) = Fake::start(Answer::ok(200, r#"{"name":"spaces/AAAA/messages/1"}"#)).await;
    let (_dir, db) = hub_db();
    let escalation = "[alerts]\nack_timeout_s = 60\nescalation = [\n  { provider = \"slack\" },\n  \
                      { provider = \"teams\", after_s = 120 },\n  { provider = \"google_chat\" },\n  { provider = \"zapier\" },\n]\n";
    let dispatcher = dispatcher_for(&staff_section(&base, escalation), &db);
    let alert = raise(&db, "delivered_without_scan");
    let conn = doorstep_hub::store::Store::open(&db, Default::default()).expect("open");
    let level = || {
        conn.raw()
            .query_row("SELECT level FROM ops_alerts WHERE id = ?1", [alert], |r| r.get::<_, i64>(0))
            .expect("level")
    };

    dispatcher.run_once(DAY).await.expect("post");
    assert_eq!((paths(&fake), level()), (vec!["slack".to_owned()], 1));
    let slack = json(&fake.seen()[0].body);
    assert!(slack["text"].as_str().is_some_and(|t| t.contains("delivered_without_scan")), "{slack}");
    dispatcher.run_once(DAY + 59_000).await.expect("before the wait");
    assert_eq!(fake.seen().len(), 1, "not before ack_timeout_s");
    dispatcher.run_once(DAY + 61_000).await.expect("escalate");
    assert_eq!((paths(&fake), level()), (vec!["slack".to_owned(), "workflows".to_owned()], 2));
    check_teams(&fake.seen()[1]);
    dispatcher.run_once(DAY + 61_000 + 100_000).await.expect("teams waits its own after_s");
    assert_eq!(fake.seen().len(), 2);
    dispatcher.run_once(DAY + 61_000 + 121_000).await.expect("escalate again");
    assert_eq!(level(), 3);
    check_google_chat(&fake.seen()[2], alert, 3);

    // Someone is on it: the last step (Zapier) is never used.
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    assert_eq!(
        store.ack_alert(alert, "oncall", DAY + 200_000).expect("ack"),
        doorstep_hub::store::Ack::Acknowledged
    );
    dispatcher.run_once(DAY + 3_600_000).await.expect("after the ack");
    assert_eq!(fake.seen().len(), 3, "an acknowledged alert does not escalate");
}

#[tokio::test]
async fn an_alert_acknowledged_in_time_is_posted_once() {
    let (fake, base) = Fake::start(Answer::ok(200, "ok")).await;
    let (_dir, db) = hub_db();
    let escalation =
        "[alerts]\nack_timeout_s = 60\nescalation = [{ provider = \"zapier\" }, { provider = \"slack\" }]\n";
    let dispatcher = dispatcher_for(&staff_section(&base, escalation), &db);
    let alert = raise(&db, "delivered_without_scan");
    dispatcher.run_once(DAY).await.expect("post");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let zap = json(&seen[0].body);
    assert_eq!(
        (zap["alert_id"].as_i64(), zap["code"].as_str()),
        (Some(alert), Some("delivered_without_scan"))
    );
    assert_eq!(zap["tracking_number"], "1Z999AA10123456784");
    let store = Store::open(&db, StoreOptions { full_sync: false }).expect("open");
    store.ack_alert(alert, "oncall", DAY + 30_000).expect("ack");
    dispatcher.run_once(DAY + 61_000).await.expect("past the wait");
    dispatcher.run_once(DAY + 3_600_000).await.expect("much later");
    assert_eq!(fake.seen().len(), 1, "acknowledged within the wait: never escalated");
}

#[test]
fn an_escalation_step_must_name_a_provider_that_can_carry_alerts_and_say_to_whom_if_it_sends_to_a_person() {
    let try_settings = |extra: &str| {
        let text = format!(
            "[[providers]]\ntype = \"slack\"\nwebhook_url = \"https://hooks.slack.com/x\"\n\
             [[providers]]\ntype = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n{extra}"
        );
        let table: toml::Table = toml::from_str(&text).expect("toml");
        doorstep_hub::notify::NotifyConfig::from_table(Some(&table))
            .expect("parse")
            .validate("https://t.example", SECRET)
    };
    assert!(try_settings("[alerts]\nescalation = [{ provider = \"slack\" }, { provider = \"twilio\", to = \"+15555550100\" }]").is_ok());
    let missing = try_settings("[alerts]\nescalation = [{ provider = \"twilio\" }]").expect_err("no to");
    assert!(missing.to_string().contains("give `to`"), "{missing}");
    assert!(try_settings("[alerts]\nescalation = [{ provider = \"slack\", to = \"#ops\" }]").is_err());
    assert!(try_settings("[alerts]\nescalation = [{ provider = \"pagerduty\" }]").is_err());
    assert!(try_settings("[alerts]\nescalation = [{ provider = \"slack\", after_s = 1 }]").is_err());
}

// ---- one message per person and moment ------------------------------------------------

#[tokio::test]
async fn two_parcels_for_one_person_at_one_moment_are_one_sms_naming_both_with_both_links() {
    let (fake, base) = Fake::start(Answer::ok(201, r#"{"sid":"SM1","status":"queued"}"#)).await;
    let (_dir, db) = hub_db();
    let first = add_shipment(&db, "1Z999AA10123456784");
    let second = add_shipment(&db, "1Z999AA10123456791");
    let third = add_shipment(&db, "1Z999AA10123456792");
    let twilio = format!(
        "[[providers]]\ntype = \"twilio\"\nbase_url = \"{base}\"\naccount_sid = \"AC0001\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n"
    );
    let dispatcher = dispatcher_for(&twilio, &db);
    // Two door scans five seconds apart; a webhook for the first (a machine: never grouped).
    let a = enqueue_at(&db, first, "delivered", "sms", PHONE, None, DAY);
    let b = enqueue_at(&db, second, "delivered", "sms", PHONE, None, DAY + 5_000);
    dispatcher.run_once(DAY + 1_000).await.expect("held");
    assert!(fake.seen().is_empty(), "the first message waits group_hold_s for other parcels");
    dispatcher.run_once(DAY + 15_500).await.expect("send");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "one SMS for both parcels");
    let text = form(&seen[0].body)["Body"].clone();
    assert!(text.contains("1Z999AA10123456784") && text.contains("1Z999AA10123456791"), "{text}");
    assert_eq!(text.matches("https://track.example.com/t/").count(), 2, "each parcel's link: {text}");
    for id in [a, b] {
        assert_eq!(status(&db, id), "sent", "each parcel's milestone is told (row {id})");
    }
    assert!(last_outcome(&db, b).detail.expect("detail").contains(&format!("one message with outbox {a}")));
    // Twilio's "delivered" for that one SMS delivers both parcels' rows.
    let app = doorstep_hub::notify::callbacks_router(dispatcher.state());
    let params = [("MessageSid", "SM1"), ("MessageStatus", "delivered")];
    let (code, _) = post_twilio(&app, "t", "/callbacks/twilio/status", &params).await;
    assert_eq!(code, axum::http::StatusCode::NO_CONTENT);
    for id in [a, b] {
        assert_eq!(status(&db, id), "delivered", "row {id}");
    }
    // The third parcel's "delivered" an hour later is its own moment.
    let c = enqueue_at(&db, third, "delivered", "sms", PHONE, None, DAY + 3_600_000);
    dispatcher.run_once(DAY + 3_600_000 + 16_000).await.expect("later");
    assert_eq!(fake.seen().len(), 2);
    assert_eq!(status(&db, c), "sent");
    dispatcher.run_once(DAY + 7_200_000).await.expect("nothing left");
    assert_eq!(fake.seen().len(), 2, "every milestone told once");
}

// ---- e-mail failover ------------------------------------------------------------------

async fn email_pair(
    sendgrid_answer: Answer,
) -> (Fake, Fake, tempfile::TempDir, std::path::PathBuf, i64, Dispatcher) {
    let (sendgrid, sg_base) = Fake::start(sendgrid_answer).await;
    let (mailgun, mg_base) = Fake::start(Answer::ok(
        200,
        r#"{"id":"<20261202.1@mg.example.com>","message":"Queued. Thank you."}"#,
    ))
    .await;
    let section = format!(
        "[[providers]]\ntype = \"sendgrid\"\nbase_url = \"{sg_base}\"\napi_key = \"SG.key\"\nfrom_email = \"parcels@example.com\"\n\
         [[providers]]\ntype = \"mailgun\"\npriority = 2\nbase_url = \"{mg_base}\"\ndomain = \"mg.example.com\"\n\
         api_key = \"mg-key\"\nfrom = \"Doorstep <parcels@mg.example.com>\"\n"
    );
    let (_dir, db) = hub_db();
    let shipment = database(&db);
    let id = enqueue_at(&db, shipment, "delivered", "email", EMAIL, None, 0);
    let dispatcher = dispatcher_for(&section, &db);
    (sendgrid, mailgun, _dir, db, id, dispatcher)
}

fn providers_logged(db: &Path, id: i64) -> Vec<(String, Option<String>)> {
    doorstep_hub::store::Store::open(db, doorstep_hub::store::StoreOptions { full_sync: false })
        .expect("open")
        .outcomes(id)
        .expect("log")
        .into_iter()
        .map(|o| (o.outcome.name().into_owned(), o.provider))
        .collect()
}

#[tokio::test]
async fn a_sendgrid_outage_hands_the_email_to_mailgun_and_the_log_names_both() {
    for refusal in
        [Answer::ok(503, "upstream unavailable"), Answer::ok(400, r#"{"errors":[{"message":"bad from"}]}"#)]
    {
        let (sendgrid, mailgun, _dir, db, id, dispatcher) = email_pair(refusal).await;
        dispatcher.run_once(DAY).await.expect("pass");
        assert_eq!(sendgrid.seen().len(), 1);
        let sent = mailgun.seen();
        assert_eq!(sent.len(), 1, "the next e-mail provider sends it once");
        assert!(sent[0].uri.starts_with("/v3/mg.example.com/messages"), "{}", sent[0].uri);
        assert_eq!(form(&sent[0].body)["to"], EMAIL);
        assert_eq!(status(&db, id), "sent");
        assert_eq!(
            providers_logged(&db, id),
            [
                ("queued".to_owned(), None),
                ("handed_on".to_owned(), Some("sendgrid".to_owned())),
                ("sent".to_owned(), Some("mailgun".to_owned())),
            ]
        );
        assert_eq!(last_outcome(&db, id).provider_id.as_deref(), Some("20261202.1@mg.example.com"));
    }
}

#[tokio::test]
async fn an_email_that_may_have_left_through_sendgrid_is_never_sent_again_through_mailgun() {
    let slow = Answer { delay: Duration::from_millis(1_500), ..Answer::ok(202, "") };
    let (sendgrid, mailgun, _dir, db, id, dispatcher) = email_pair(slow).await;
    dispatcher.run_once(DAY).await.expect("pass");
    dispatcher.run_once(DAY + 3_600_000).await.expect("later");
    assert_eq!(sendgrid.seen().len(), 1);
    assert!(mailgun.seen().is_empty(), "an ambiguous send is not failed over");
    assert_eq!(status(&db, id), "unknown");
}

#[tokio::test]
async fn teams_202_is_accepted_by_the_flow_and_a_long_alert_is_cut_to_fit_the_28_kb_limit() {
    let long = "the van's log says more. ".repeat(3_000);
    let (fake, _dir, dispatcher) = alert_case(Answer::ok(202, ""), "delivered_without_scan", &long, |base| {
        format!(
            "[[providers]]\ntype = \"teams\"\nwebhook_url = \"{base}/workflows/abc/triggers/manual/paths/invoke?sig=s1g\"\n"
        )
    })
    .await;
    assert_eq!(dispatcher.run_once(DAY).await.expect("pass").alerts, 1, "202 from the flow is a post");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    check_teams(&seen[0]);
    assert!(seen[0].body.len() < 28 * 1024, "{} bytes", seen[0].body.len());
}

#[tokio::test]
async fn an_escalation_step_can_e_mail_the_operations_mailbox_through_an_email_provider() {
    let (fake, base) = Fake::start(Answer::ok(503, "slack is down")).await;
    let (mail, mail_base) = Fake::start(Answer::ok(202, "")).await;
    let (_dir, db) = hub_db();
    let alert = raise(&db, "delivered_without_scan");
    let section = format!(
        "[[providers]]\ntype = \"slack\"\nwebhook_url = \"{base}/slack/T0/B0/x\"\n\
         [[providers]]\ntype = \"sendgrid\"\nbase_url = \"{mail_base}\"\napi_key = \"SG.key\"\nfrom_email = \"parcels@example.com\"\n\
         [alerts]\nescalation = [{{ provider = \"slack\" }}, {{ provider = \"sendgrid\", to = \"ops@example.com\" }}]\n"
    );
    let dispatcher = dispatcher_for(&section, &db);
    assert_eq!(dispatcher.run_once(DAY).await.expect("pass").alerts, 1);
    assert_eq!(fake.seen().len(), 1, "Slack was tried first");
    let sent = mail.seen();
    assert_eq!(sent.len(), 1, "Slack did not take it: the next step, at once");
    let body = json(&sent[0].body);
    let personalization = &body["personalizations"][0];
    assert_eq!(personalization["to"][0]["email"], "ops@example.com");
    assert_eq!(personalization["custom_args"]["doorstep_alert_id"], alert.to_string());
    assert!(body["subject"].as_str().is_some_and(|s| s.contains("delivered_without_scan")), "{body}");
    // The customer's own address is never where an alert goes.
    assert!(!String::from_utf8_lossy(&sent[0].body).contains(EMAIL));
}

// ---- customers' questions by SMS ------------------------------------------------------

/// Posts a signed inbound SMS from `from` to Twilio's callback and returns the TwiML.
async fn ask(app: &axum::Router, from: &str, text: &str) -> String {
    let params = [("Body", text), ("From", from), ("MessageSid", "SMin"), ("To", "+15005550006")];
    let (code, body) = post_twilio(app, "t", "/callbacks/twilio/inbound", &params).await;
    assert_eq!(code, axum::http::StatusCode::OK, "{body}");
    assert!(body.starts_with("<?xml") && body.contains("<Response>"), "TwiML: {body}");
    body
}

#[tokio::test]
async fn where_is_my_parcel_by_sms_is_answered_at_once_and_never_about_someone_elses_parcel() {
    use doorstep_hub::model::Milestone;
    let (_dir, db) = hub_db();
    let now = doorstep_hub::notify::now_ms();
    add_shipment_at(&db, "1Z999AA10123456784", Milestone::OutForDelivery, now - 3_600_000);
    add_shipment_at(&db, "9400111899223197428490", Milestone::Delivered, now - 86_400_000);
    let twilio = "[[providers]]\ntype = \"twilio\"\naccount_sid = \"AC0001\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n";
    let dispatcher = dispatcher_for(twilio, &db);
    let app = doorstep_hub::notify::callbacks_router(dispatcher.state());

    // One open parcel: its status and its own tracking link, at once.
    let reply = ask(&app, PHONE, "Hi, where is my parcel?").await;
    assert!(reply.contains("<Message>") && reply.contains("1Z999AA10123456784"), "{reply}");
    assert!(
        reply.contains("out for delivery today") && reply.contains("https://track.example.com/t/"),
        "{reply}"
    );
    // Naming a parcel (spaces and case do not matter) answers for that one.
    let reply = ask(&app, PHONE, "status 9400 1118 9922 3197 4284 90").await;
    assert!(reply.contains("9400111899223197428490 is delivered"), "{reply}");
    // Two open parcels: which one?
    add_shipment_at(&db, "1Z999AA10123456791", Milestone::Dispatched, now - 60_000);
    let reply = ask(&app, PHONE, "wo ist mein paket").await;
    assert!(reply.contains("2 parcels") && !reply.contains("1Z999"), "{reply}");
    // A stranger naming a real tracking number learns nothing about it.
    let reply = ask(&app, "+15555550999", "where is 1Z999AA10123456784?").await;
    assert!(
        reply.contains("could not find a parcel") && !reply.contains("1Z999") && !reply.contains("/t/"),
        "{reply}"
    );
    // Thanks is not a question; STOP still opts out.
    assert!(!ask(&app, PHONE, "Thank you!").await.contains("<Message>"));
    assert!(!ask(&app, PHONE, "STOP").await.contains("<Message>"));
    let conn = doorstep_hub::store::Store::open(&db, Default::default()).expect("open");
    let kinds: Vec<String> = conn
        .raw()
        .prepare("SELECT kind FROM customer_questions ORDER BY id")
        .expect("sql")
        .query_map(doorstep_hub::store::NO_ARGS, |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("kinds");
    assert_eq!(kinds, ["only_open", "named", "which_one", "unknown_sender", "not_a_question"]);
    let opted: i64 = conn
        .raw()
        .query_row("SELECT count(*) FROM notification_opt_outs WHERE recipient = ?1", [PHONE], |r| r.get(0))
        .expect("opt-outs");
    assert_eq!(opted, 1);
}

#[tokio::test]
async fn a_person_with_one_parcel_is_not_kept_waiting_for_others() {
    let (fake, base) = Fake::start(Answer::ok(201, r#"{"sid":"SM1","status":"queued"}"#)).await;
    let (_dir, db) = hub_db();
    let only = add_shipment(&db, "1Z999AA10123456784");
    let twilio = format!(
        "[[providers]]\ntype = \"twilio\"\nbase_url = \"{base}\"\naccount_sid = \"AC0001\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n"
    );
    let dispatcher = dispatcher_for(&twilio, &db);
    let id = enqueue_at(&db, only, "delivered", "sms", PHONE, None, DAY);
    dispatcher.run_once(DAY + 100).await.expect("send");
    assert_eq!(fake.seen().len(), 1, "no other parcel in flight: sent at once, no group hold");
    assert_eq!(status(&db, id), "sent");
}
