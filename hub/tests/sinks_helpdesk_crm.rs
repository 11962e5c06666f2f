//! The Freshdesk and Salesforce sinks end to end: milestones and alerts reconciled in the
//! writer's transaction, delivered from the sinks' outbox to loopback vendors that check
//! each request against the vendor's documented API and answer as the vendor does (its
//! errors included), across retries, a lost answer and a hub stopped mid-send.

mod sink_kit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use doorstep_hub::model::CanonicalStatus;
use doorstep_hub::sinks::Sinks;
use doorstep_hub::store::{Store, StoreOptions};
use serde_json::{Value, json};
use sink_kit::{
    Case, EMAIL, Request, T0, TRACKING, Vendor, carrier, carrier_on, deliver, dispatched, failed_saying,
    feed, last_outcome, outcomes, shipment_with_consent, sinks, statuses,
};

/// A second parcel, whose customer did not consent to e-mail.
const OTHER: &str = "1Z999AA10123456785";

/// The keys of a JSON object that are not in `allowed`.
fn unknown_keys<'a>(json: &'a Value, allowed: &[&str]) -> Vec<&'a str> {
    json.as_object()
        .map(|o| o.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect())
        .unwrap_or_default()
}

// ---- a loopback Freshdesk ------------------------------------------------------------------

const FD_KEY: &str = "sFx7bHq2kLmN9pRtVwYz";
const FD_OPS: &str = "ops@example.com";
const FD_FIRST_TICKET: u64 = 4_201;

/// What the loopback Freshdesk holds: its tickets (status, notes) and its settings.
#[derive(Debug, Default)]
struct Helpdesk {
    /// Ticket id → (the creating request's body, status, private note bodies).
    tickets: BTreeMap<u64, (Value, u64, Vec<String>)>,
    /// A field the account requires before a ticket is resolved (Freshdesk's "required
    /// when closing"), unset on every ticket the hub opens.
    required_to_resolve: Option<&'static str>,
}

/// Freshdesk's 400 for a request that breaks its validation.
fn fd_invalid(field: &str, message: &str, code: &str) -> (StatusCode, Value) {
    let errors = json!([{ "field": field, "message": message, "code": code }]);
    (StatusCode::BAD_REQUEST, json!({ "description": "Validation failed", "errors": errors }))
}

/// A plausible e-mail address, as Freshdesk checks one (a dot in the domain).
fn fd_email(value: &Value) -> bool {
    value.as_str().and_then(|e| e.split_once('@')).is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    })
}

/// Freshdesk API v2 as its documentation describes the calls the hub makes: Basic
/// `{api_key}:X` (401 `invalid_credentials` otherwise), JSON bodies (415 otherwise), a ticket
/// `{email, subject, description, status, priority, source, tags}` answered 201 with its
/// `id`, a note `{body, private}` on an existing ticket answered 201, a status update
/// answered 200, and 400 `Validation failed` with `{field, message, code}` for any field it
/// does not know or any value of the wrong kind.
fn freshdesk(state: &Arc<Mutex<Helpdesk>>, request: &Request) -> (StatusCode, Value) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{FD_KEY}:X"));
    if request.header("authorization") != Some(&format!("Basic {basic}")) {
        let body = json!({ "code": "invalid_credentials", "message": "You have to be logged in to perform this action." });
        return (StatusCode::UNAUTHORIZED, body);
    }
    if request.header("content-type") != Some("application/json") {
        let body = json!({ "code": "invalid_content_type", "message": "Content-Type header should have application/json" });
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, body);
    }
    let Some(json) = request.json().filter(Value::is_object) else {
        return fd_invalid("", "Request body has invalid json format", "invalid_json");
    };
    let mut state = state.lock().expect("lock");
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let ticket_id = |s: &str| s.parse::<u64>().ok();
    match (&request.method, segments.as_slice()) {
        (&Method::POST, ["api", "v2", "tickets"]) => {
            let allowed = ["email", "subject", "description", "status", "priority", "source", "tags"];
            if let Some(field) = unknown_keys(&json, &allowed).first() {
                return fd_invalid(field, "Unexpected/invalid field in request", "invalid_field");
            }
            for field in ["email", "subject", "description", "status", "priority"] {
                if json.get(field).is_none() {
                    return fd_invalid(field, "It should be a/an String", "missing_field");
                }
            }
            if !fd_email(&json["email"]) {
                return fd_invalid(
                    "email",
                    "It should be in the 'valid email address' format",
                    "invalid_value",
                );
            }
            if json["subject"].as_str().is_none_or(str::is_empty) || !json["description"].is_string() {
                return fd_invalid("subject", "It should be a/an String", "datatype_mismatch");
            }
            let one_of =
                |field: &str, values: &[u64]| json[field].as_u64().is_some_and(|v| values.contains(&v));
            if !one_of("status", &[2, 3, 4, 5]) {
                return fd_invalid("status", "It should be one of these values: '2,3,4,5'", "invalid_value");
            }
            if !one_of("priority", &[1, 2, 3, 4]) {
                return fd_invalid(
                    "priority",
                    "It should be one of these values: '1,2,3,4'",
                    "invalid_value",
                );
            }
            if json.get("source").is_some() && !one_of("source", &[1, 2, 3, 5, 6, 7, 9, 10]) {
                return fd_invalid(
                    "source",
                    "It should be one of these values: '1,2,3,5,6,7,9,10'",
                    "invalid_value",
                );
            }
            let tags_ok =
                json.get("tags").is_none_or(|t| t.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
            if !tags_ok {
                return fd_invalid("tags", "It should be a/an Array", "datatype_mismatch");
            }
            let id = FD_FIRST_TICKET + u64::try_from(state.tickets.len()).expect("few");
            let status = json["status"].as_u64().expect("checked");
            state.tickets.insert(id, (json.clone(), status, Vec::new()));
            let answer = json!({
                "id": id, "subject": json["subject"], "status": status, "priority": json["priority"],
                "source": json["source"], "tags": json["tags"], "requester_id": 77_000_001,
                "description": json["description"], "created_at": "2025-07-01T08:00:00Z",
            });
            (StatusCode::CREATED, answer)
        }
        (&Method::POST, ["api", "v2", "tickets", id, "notes"]) => {
            let Some((_, _, notes)) = ticket_id(id).and_then(|id| state.tickets.get_mut(&id)) else {
                return (StatusCode::NOT_FOUND, Value::Null);
            };
            if let Some(field) =
                unknown_keys(&json, &["body", "private", "incoming", "notify_emails", "user_id"]).first()
            {
                return fd_invalid(field, "Unexpected/invalid field in request", "invalid_field");
            }
            let Some(body) = json["body"].as_str().filter(|b| !b.is_empty()) else {
                return fd_invalid("body", "It should be a/an String", "missing_field");
            };
            if json.get("private").is_some_and(|p| !p.is_boolean()) {
                return fd_invalid("private", "It should be a/an Boolean", "datatype_mismatch");
            }
            notes.push(body.to_owned());
            let note = 9_000 + u64::try_from(notes.len()).expect("few");
            let answer = json!({ "id": note, "body": body, "private": json["private"], "incoming": false, "ticket_id": id.parse::<u64>().expect("id") });
            (StatusCode::CREATED, answer)
        }
        (&Method::PUT, ["api", "v2", "tickets", id]) => {
            let required = state.required_to_resolve;
            let Some((_, status, _)) = ticket_id(id).and_then(|id| state.tickets.get_mut(&id)) else {
                return (StatusCode::NOT_FOUND, Value::Null);
            };
            if let Some(field) = unknown_keys(&json, &["status", "priority", "tags", "subject"]).first() {
                return fd_invalid(field, "Unexpected/invalid field in request", "invalid_field");
            }
            let new = json["status"].as_u64();
            if json.get("status").is_some() && !new.is_some_and(|s| [2, 3, 4, 5].contains(&s)) {
                return fd_invalid("status", "It should be one of these values: '2,3,4,5'", "invalid_value");
            }
            if let (Some(4 | 5), Some(field)) = (new, required) {
                return fd_invalid(
                    field,
                    "It should not be blank as this is a mandatory field",
                    "missing_field",
                );
            }
            if let Some(new) = new {
                *status = new;
            }
            (StatusCode::OK, json!({ "id": id.parse::<u64>().expect("id"), "status": *status }))
        }
        _ => (StatusCode::NOT_FOUND, Value::Null),
    }
}

fn freshdesk_sinks(base: &str, key: &str, requester_email: &str) -> Sinks {
    sinks(&format!(
        "[[sinks]]\ntype = \"freshdesk\"\nname = \"support\"\nbase_url = \"{base}\"\napi_key = \"{key}\"\n\
         requester_email = \"{requester_email}\"\nrequest_timeout_s = 1\nbackoff_base_s = 1\nmax_attempts = 3\n"
    ))
}

/// (method, path) of every request Freshdesk's checks accepted.
fn calls(vendor: &Vendor) -> Vec<(String, String)> {
    vendor.accepted().into_iter().map(|r| (r.method.to_string(), r.path)).collect()
}

#[tokio::test]
async fn freshdesk_an_exception_opens_one_ticket_for_the_customer_later_events_are_private_notes_and_delivery_resolves_it()
 {
    let (vendor, desk, case) = Case::with_vendor(freshdesk, |url| freshdesk_sinks(url, FD_KEY, FD_OPS)).await;
    let quiet = shipment_with_consent(&case.db, OTHER, false);
    let (db, shipment, domain, dispatcher) = case.parts();

    // Dispatched: support hears nothing of a parcel that is fine.
    assert_eq!(case.step(dispatched(T0), T0).await, 1);
    assert!(vendor.seen().is_empty());
    assert_eq!(last_outcome(db, shipment, "milestone:dispatched").0, "skipped");

    // Returning to sender: the exception opens the ticket, the alert it raised is a note.
    feed(db, domain, TRACKING, carrier(CanonicalStatus::Returning, T0 + 1), T0 + 1, true);
    assert_eq!(dispatcher.run_once(T0 + 2).await.expect("pass"), 2);
    let ticket = FD_FIRST_TICKET.to_string();
    let notes = format!("/api/v2/tickets/{ticket}/notes");
    assert_eq!(calls(&vendor), [("POST".into(), "/api/v2/tickets".into()), ("POST".into(), notes.clone())]);
    let created = &vendor.accepted()[0];
    let body = created.json().expect("json");
    assert_eq!(body["email"], EMAIL, "the consented customer is the requester");
    assert_eq!((&body["status"], &body["priority"], &body["source"]), (&json!(2), &json!(1), &json!(2)));
    assert_eq!(body["tags"], json!(["doorstep"]));
    assert!(body["subject"].as_str().is_some_and(|s| s.contains(TRACKING)), "{body}");
    let description = body["description"].as_str().expect("description");
    assert!(description.starts_with("<p>") && description.contains("delivery exception"), "{description}");
    assert!(description.contains("<p>Carrier reason: returning.</p>"), "{description}");
    let note = vendor.accepted()[1].json().expect("json");
    assert_eq!(note["private"], true, "what the hub says is for agents");
    assert!(note["body"].as_str().is_some_and(|b| b.contains("carrier_returning")), "{note}");
    let store = Store::open(db, StoreOptions { full_sync: false }).expect("open");
    assert_eq!(store.sink_thread("support", shipment).expect("thread"), Some(ticket.clone()));

    // Delivered: the ticket is resolved, then noted.
    let later = deliver(db, domain, TRACKING, T0 + 3_600_000);
    assert_eq!(dispatcher.run_once(later).await.expect("pass"), 1);
    let all = calls(&vendor);
    assert_eq!(all[2..], [("PUT".into(), format!("/api/v2/tickets/{ticket}")), ("POST".into(), notes)]);
    assert_eq!(vendor.accepted()[2].json().expect("json"), json!({ "status": 4 }));
    {
        let desk = desk.lock().expect("lock");
        let (_, status, notes) = &desk.tickets[&FD_FIRST_TICKET];
        assert_eq!(*status, 4, "resolved");
        assert_eq!(notes.len(), 2);
        assert!(notes[1].contains("was delivered") && notes[1].contains("resolved"), "{notes:?}");
    }
    assert_eq!(
        statuses(db, shipment),
        [
            "milestone:dispatched skipped",
            "milestone:exception sent",
            "alert:carrier_returning sent",
            "milestone:delivered sent"
        ]
    );

    // A customer who did not consent to e-mail: the operations mailbox is the requester.
    feed(db, domain, OTHER, carrier_on(OTHER, CanonicalStatus::AttemptFailed, later), later, true);
    assert_eq!(dispatcher.run_once(later + 1).await.expect("pass"), 1);
    let last = vendor.accepted().pop().expect("a ticket");
    assert_eq!((last.method.as_str(), last.path.as_str()), ("POST", "/api/v2/tickets"));
    assert_eq!(last.json().expect("json")["email"], FD_OPS);
    assert_eq!(statuses(db, quiet), ["milestone:exception sent"]);
    assert_eq!(dispatcher.run_once(later + 60_000).await.expect("pass"), 0, "nothing is sent twice");
    assert_eq!(desk.lock().expect("lock").tickets.len(), 2);
}

#[tokio::test]
async fn freshdesk_asking_to_wait_is_honoured_and_nothing_is_sent_before_its_retry_after() {
    let (vendor, desk, case) = Case::with_vendor(freshdesk, |url| freshdesk_sinks(url, FD_KEY, FD_OPS)).await;
    let (db, shipment, _, dispatcher) = case.parts();

    vendor.then_answer(
        429,
        Some(("retry-after", "7")),
        r#"{"message":"You have exceeded the limit of requests per minute"}"#,
    );
    case.step(carrier(CanonicalStatus::AttemptFailed, T0), T0).await;
    assert_eq!(statuses(db, shipment), ["milestone:exception queued"]);
    assert_eq!(vendor.seen().len(), 1);
    assert_eq!(dispatcher.run_once(T0 + 6_000).await.expect("pass"), 0, "Retry-After is honoured");
    assert_eq!(vendor.seen().len(), 1, "nothing was sent before the wait was over");
    assert_eq!(dispatcher.run_once(T0 + 7_000).await.expect("pass"), 1);
    assert_eq!(statuses(db, shipment), ["milestone:exception sent"]);
    assert_eq!(desk.lock().expect("lock").tickets.len(), 1);
    let log = outcomes(db, shipment, "milestone:exception");
    let kinds: Vec<&str> = log.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(kinds, ["queued", "attempt_failed", "sent"], "{log:?}");
}

#[tokio::test]
async fn freshdesk_refusals_fail_the_row_without_retries() {
    let (vendor, desk) = Vendor::with_state(freshdesk).await;

    // Wrong credentials: 401. A requester Freshdesk does not take as an e-mail address (a
    // customer who did not consent, so the operations mailbox): 400 Validation failed.
    let refusals: [(&str, &str, bool, &[&str]); 2] = [
        ("not-the-key", FD_OPS, true, &["401", "invalid_credentials"]),
        (FD_KEY, "ops@localhost", false, &["400", "Validation failed", "email"]),
    ];
    for (n, (key, requester, consent, words)) in refusals.into_iter().enumerate() {
        let case = Case::new(freshdesk_sinks(&vendor.url, key, requester));
        let (tracking, shipment) = match consent {
            true => (TRACKING, case.shipment),
            false => (OTHER, shipment_with_consent(&case.db, OTHER, false)),
        };
        let exception = carrier_on(tracking, CanonicalStatus::AttemptFailed, T0);
        feed(&case.db, &case.domain, tracking, exception, T0, true);
        case.dispatcher.run_once(T0).await.expect("pass");
        case.failed_for_good(shipment, "milestone:exception", words).await;
        assert_eq!(vendor.seen().len(), n + 1, "not retried");
    }
    assert!(desk.lock().expect("lock").tickets.is_empty());
}

#[tokio::test]
async fn freshdesk_a_ticket_whose_creation_was_cut_short_by_a_restart_is_unknown_and_not_opened_again() {
    let (vendor, desk, case) = Case::with_vendor(freshdesk, |url| freshdesk_sinks(url, FD_KEY, FD_OPS)).await;
    let (db, shipment) = (case.db.as_path(), case.shipment);
    case.step(carrier(CanonicalStatus::AttemptFailed, T0), T0).await;
    assert_eq!(desk.lock().expect("lock").tickets.len(), 1);

    // The hub died after Freshdesk opened the ticket and before it wrote the answer down.
    case.not_resent_after_a_restart("milestone:exception", true, "Freshdesk cannot dedupe a ticket").await;
    assert_eq!(vendor.seen().len(), 1, "the ticket was not opened again");
    assert_eq!(desk.lock().expect("lock").tickets.len(), 1);
    assert_eq!(statuses(db, shipment), ["milestone:exception unknown"]);
    let (_, detail) = last_outcome(db, shipment, "milestone:exception");
    assert!(detail.contains("not resent"), "{detail}");
}

#[tokio::test]
async fn freshdesk_a_lost_resolve_is_repeated_but_a_lost_note_is_not_and_each_note_is_added_once() {
    let (vendor, desk, case) = Case::with_vendor(freshdesk, |url| freshdesk_sinks(url, FD_KEY, FD_OPS)).await;
    let (db, shipment, domain, dispatcher) = case.parts();
    feed(db, domain, TRACKING, carrier(CanonicalStatus::AttemptFailed, T0), T0, true);
    dispatcher.run_once(T0).await.expect("the ticket");

    // Delivered: Freshdesk resolves the ticket but answers after the hub's timeout. Setting
    // a status again is harmless, and the note has not been sent: the delivery is retried.
    let later = deliver(db, domain, TRACKING, T0 + 60_000);
    vendor.answer_late(Duration::from_secs(2));
    assert_eq!(dispatcher.run_once(later).await.expect("pass"), 1);
    assert_eq!(statuses(db, shipment), ["milestone:exception sent", "milestone:delivered queued"]);
    assert!(desk.lock().expect("lock").tickets[&FD_FIRST_TICKET].2.is_empty(), "no note yet");
    vendor.answer_late(Duration::ZERO);
    assert_eq!(dispatcher.run_once(later + 5_000).await.expect("retry"), 1);
    let put = ("PUT".to_owned(), format!("/api/v2/tickets/{FD_FIRST_TICKET}"));
    let note = ("POST".to_owned(), format!("/api/v2/tickets/{FD_FIRST_TICKET}/notes"));
    assert_eq!(calls(&vendor)[1..], [put.clone(), put, note.clone()]);
    assert_eq!(statuses(db, shipment), ["milestone:exception sent", "milestone:delivered sent"]);
    {
        let desk = desk.lock().expect("lock");
        let (_, status, notes) = &desk.tickets[&FD_FIRST_TICKET];
        assert_eq!((*status, notes.len()), (4, 1), "resolved, one note");
    }

    // The carrier's exception after delivery alerts operations: a note Freshdesk adds but
    // answers too late, which is not added again.
    vendor.answer_late(Duration::from_secs(2));
    case.step(carrier(CanonicalStatus::Exception, later + 10_000), later + 10_000).await;
    vendor.answer_late(Duration::ZERO);
    dispatcher.run_once(later + 3_600_000).await.expect("later");
    let events = statuses(db, shipment);
    assert_eq!(events[2..], ["alert:exception_after_delivered unknown"], "{events:?}");
    let notes = &desk.lock().expect("lock").tickets[&FD_FIRST_TICKET].2;
    assert_eq!(notes.iter().filter(|n| n.contains("exception_after_delivered")).count(), 1, "{notes:?}");
    assert_eq!(calls(&vendor).iter().filter(|c| **c == note).count(), 2, "one note per event");
}

#[tokio::test]
async fn freshdesk_a_resolve_the_account_refuses_still_leaves_the_delivery_note_saying_so() {
    let (vendor, desk) = Vendor::with_state(freshdesk).await;
    desk.lock().expect("lock").required_to_resolve = Some("cf_resolution_reason");
    let case = Case::new(freshdesk_sinks(&vendor.url, FD_KEY, FD_OPS));
    let (db, shipment, domain, dispatcher) = case.parts();
    feed(db, domain, TRACKING, carrier(CanonicalStatus::AttemptFailed, T0), T0, true);
    let later = deliver(db, domain, TRACKING, T0 + 60_000);
    dispatcher.run_once(later).await.expect("pass");
    let desk = desk.lock().expect("lock");
    let (_, status, notes) = &desk.tickets[&FD_FIRST_TICKET];
    assert_eq!(*status, 2, "still open");
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].contains("refused to resolve") && notes[0].contains("cf_resolution_reason"),
        "{notes:?}"
    );
    let (outcome, detail) = last_outcome(db, shipment, "milestone:delivered");
    assert_eq!(outcome, "sent");
    assert!(detail.contains("refused"), "{detail}");
    assert_eq!(vendor.seen().len(), 3, "ticket, refused resolve, note");
}

// ---- a loopback Salesforce ----------------------------------------------------------------

const SF_CLIENT_ID: &str = "3MVG9doorstep.test.consumer.key";
const SF_SECRET: &str = "E2B5C7D9F1A3B5C7D9F1A3B5C7D9F1A3";
const SF_EVENT: &str = "Doorstep_Delivery__e";
/// An event defined without `Event_Key__c`: publishing the hub's fields to it is refused.
const SF_OLD_EVENT: &str = "Doorstep_Legacy__e";

/// What the loopback Salesforce org holds.
#[derive(Debug, Default)]
struct Org {
    /// Access tokens whose session is alive.
    sessions: BTreeSet<String>,
    /// Tokens issued so far.
    issued: u64,
    /// Every event published: (its type, its fields).
    published: Vec<(String, Value)>,
    /// Answer as newer API versions do: `OPERATION_ENQUEUED` with the EventUuid.
    enqueued: bool,
    /// End every session as soon as it is used (an org whose policy revokes the app).
    revoke_all: bool,
}

impl Org {
    /// Ends every session (the org's timeout).
    fn expire(&mut self) {
        self.sessions.clear();
    }
}

fn sf_error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!([{ "message": message, "errorCode": code }]))
}

/// The platform events this org defines, with their fields and kinds.
fn sf_definition(event: &str) -> Option<&'static [(&'static str, &'static str)]> {
    const TEXT: &str = "text";
    const WHEN: &str = "datetime";
    match event {
        SF_EVENT => Some(&[
            ("Tracking_Number__c", TEXT),
            ("Milestone__c", TEXT),
            ("Alert__c", TEXT),
            ("Order_Name__c", TEXT),
            ("Detail__c", TEXT),
            ("Occurred_At__c", WHEN),
            ("Event_Key__c", TEXT),
        ]),
        SF_OLD_EVENT => {
            Some(&[("Tracking_Number__c", TEXT), ("Milestone__c", TEXT), ("Occurred_At__c", WHEN)])
        }
        _ => None,
    }
}

/// Salesforce as its documentation describes the calls the hub makes: the OAuth 2.0
/// client-credentials flow on `/services/oauth2/token` (a form; 400 `invalid_client` for
/// wrong credentials) answering an access token without expiry; a platform event published
/// as `POST /services/data/vNN.N/sobjects/{Event__e}/` with a live Bearer session (401
/// `INVALID_SESSION_ID` otherwise), JSON (415 otherwise), only the event's defined fields
/// (400 `INVALID_FIELD`), text at most 255 long (`STRING_TOO_LONG`), date-times in ISO
/// 8601 (`JSON_PARSER_ERROR`), `Tracking_Number__c` required (`REQUIRED_FIELD_MISSING`),
/// answered 201 with a save result.
fn salesforce(org: &Arc<Mutex<Org>>, request: &Request) -> (StatusCode, Value) {
    let mut org = org.lock().expect("lock");
    if request.method == Method::POST && request.path == "/services/oauth2/token" {
        if request.header("content-type") != Some("application/x-www-form-urlencoded") {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "invalid_request", "error_description": "must use application/x-www-form-urlencoded" }),
            );
        }
        let form: BTreeMap<String, String> = form_urlencoded::parse(&request.body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "unsupported_grant_type", "error_description": "grant type not supported" }),
            );
        }
        if form.get("client_id").map(String::as_str) != Some(SF_CLIENT_ID)
            || form.get("client_secret").map(String::as_str) != Some(SF_SECRET)
        {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "invalid_client", "error_description": "invalid client credentials" }),
            );
        }
        org.issued += 1;
        let token = format!("00Dxx0000001gEH!AQ4AQ.session{}", org.issued);
        org.sessions.insert(token.clone());
        let answer = json!({
            "access_token": token, "signature": "Yl9oDxDwb7jbCDu5ObQgK8Gz6nBtAdpf6JQZ0KpCc4Y=",
            "scope": "api", "instance_url": "https://doorstep-test.my.salesforce.com",
            "id": "https://login.salesforce.com/id/00Dxx0000001gEHEAY/005xx000001SwiUAAS",
            "token_type": "Bearer", "issued_at": "1751356800000",
        });
        return (StatusCode::OK, answer);
    }
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let ["services", "data", version, "sobjects", event, ""] = segments.as_slice() else {
        return sf_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist");
    };
    let versioned = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
    if !versioned || request.method != Method::POST {
        return sf_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist");
    }
    let token = request.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
    if !org.sessions.contains(token) {
        return sf_error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid");
    }
    if org.revoke_all {
        org.sessions.clear();
        return sf_error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid");
    }
    if request.header("content-type") != Some("application/json") {
        return sf_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content type not supported",
        );
    }
    let Some(definition) = sf_definition(event) else {
        return sf_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist");
    };
    let Some(fields) = request.json().and_then(|j| j.as_object().cloned()) else {
        return sf_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", "Unexpected character");
    };
    for (name, value) in &fields {
        let Some((_, kind)) = definition.iter().find(|(n, _)| n == name) else {
            return sf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                &format!("No such column '{name}' on sobject of type {event}"),
            );
        };
        let Some(text) = value.as_str() else {
            return sf_error(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                &format!("Cannot deserialize {name}"),
            );
        };
        if *kind == "datetime" && text.parse::<jiff::Timestamp>().is_err() {
            let message = format!("Cannot deserialize instance of datetime from VALUE_STRING value {text}");
            return sf_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &message);
        }
        if text.chars().count() > 255 {
            return sf_error(
                StatusCode::BAD_REQUEST,
                "STRING_TOO_LONG",
                &format!("{name}: data value too large"),
            );
        }
    }
    if !fields.contains_key("Tracking_Number__c") {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [Tracking_Number__c]",
        );
    }
    org.published.push(((*event).to_owned(), Value::Object(fields)));
    let n = org.published.len();
    let id = format!("e00xx00000000{n:02}AAA");
    let errors = if org.enqueued {
        json!([{ "statusCode": "OPERATION_ENQUEUED", "message": format!("e981b488-81f3-4fcc-bd6f-f7033c9d7a{n:02}"), "fields": [] }])
    } else {
        json!([])
    };
    (StatusCode::CREATED, json!({ "id": id, "success": true, "errors": errors }))
}

fn salesforce_sinks(base: &str, secret: &str, event: &str) -> Sinks {
    sinks(&format!(
        "[[sinks]]\ntype = \"salesforce\"\nname = \"ops_crm\"\nbase_url = \"{base}\"\nclient_id = \"{SF_CLIENT_ID}\"\n\
         client_secret = \"{secret}\"\nevent = \"{event}\"\nrequest_timeout_s = 1\nbackoff_base_s = 1\nmax_attempts = 3\n"
    ))
}

/// A loopback Salesforce org, and a hub whose CRM sink has published [`TRACKING`]'s
/// dispatch to it as [`SF_EVENT`].
async fn salesforce_dispatched() -> (Vendor, Arc<Mutex<Org>>, Case) {
    let (vendor, org, case) =
        Case::with_vendor(salesforce, |url| salesforce_sinks(url, SF_SECRET, SF_EVENT)).await;
    case.step(dispatched(T0), T0).await;
    (vendor, org, case)
}

/// How many requests went to the token endpoint, and how many published (or tried to).
fn sf_counts(vendor: &Vendor) -> (usize, usize) {
    let seen = vendor.seen();
    let tokens = seen.iter().filter(|(r, _)| r.path == "/services/oauth2/token").count();
    (tokens, seen.len() - tokens)
}

#[tokio::test]
async fn salesforce_each_milestone_and_alert_is_one_platform_event_with_its_documented_fields() {
    let (vendor, org, case) =
        Case::with_vendor(salesforce, |url| salesforce_sinks(url, SF_SECRET, SF_EVENT)).await;
    let (db, shipment) = (case.db.as_path(), case.shipment);

    assert_eq!(case.step(dispatched(T0), T0).await, 1);
    assert_eq!(case.step(carrier(CanonicalStatus::Returning, T0 + 1_000), T0 + 1_000).await, 2);

    let publish =
        vendor.accepted().into_iter().find(|r| r.path != "/services/oauth2/token").expect("a publish");
    assert_eq!(publish.path, format!("/services/data/v62.0/sobjects/{SF_EVENT}/"), "the default API version");
    assert!(
        publish.header("authorization").is_some_and(|a| a.starts_with("Bearer 00Dxx")),
        "the flow's token"
    );
    let published = org.lock().expect("lock").published.clone();
    assert_eq!(published.len(), 3, "{published:?}");
    let (event, first) = &published[0];
    assert_eq!(event, SF_EVENT);
    assert_eq!(first["Tracking_Number__c"], TRACKING);
    assert_eq!(first["Milestone__c"], "dispatched");
    assert_eq!(first["Occurred_At__c"], "2025-07-01T08:00:00Z");
    assert_eq!(first["Event_Key__c"], format!("doorstep:ops_crm:{TRACKING}:milestone:dispatched"));
    assert!(first.get("Alert__c").is_none() && first.get("Order_Name__c").is_none(), "{first}");
    assert_eq!(published[1].1["Milestone__c"], "exception");
    assert_eq!(published[1].1["Detail__c"], "returning", "the exception's reason");
    assert_eq!(published[2].1["Alert__c"], "carrier_returning", "operations alerts too, by default");
    assert!(published[2].1.get("Milestone__c").is_none());
    assert_eq!(sf_counts(&vendor), (1, 3), "one token for every publish");
    assert_eq!(
        statuses(db, shipment),
        ["milestone:dispatched sent", "milestone:exception sent", "alert:carrier_returning sent"]
    );
    let store = Store::open(db, StoreOptions { full_sync: false }).expect("open");
    let row = store.sink_rows_for_shipment(shipment).expect("rows").remove(0);
    let log = store.sink_outcomes(row.id).expect("log");
    assert_eq!(log.last().and_then(|o| o.vendor_id.as_deref()), Some("e00xx0000000001AAA"));
}

#[tokio::test]
async fn salesforce_an_operation_enqueued_answer_is_a_success_recorded_with_its_event_uuid() {
    let (vendor, org) = Vendor::with_state(salesforce).await;
    org.lock().expect("lock").enqueued = true;
    let case = Case::new(salesforce_sinks(&vendor.url, SF_SECRET, SF_EVENT));
    let (db, shipment, _, dispatcher) = case.parts();
    assert_eq!(case.step(dispatched(T0), T0).await, 1);
    assert_eq!(statuses(db, shipment), ["milestone:dispatched sent"], "not an error");
    let store = Store::open(db, StoreOptions { full_sync: false }).expect("open");
    let row = store.sink_rows_for_shipment(shipment).expect("rows").remove(0);
    let sent = store.sink_outcomes(row.id).expect("log").pop().expect("entry");
    assert_eq!(sent.outcome, "sent");
    assert_eq!(sent.vendor_id.as_deref(), Some("e981b488-81f3-4fcc-bd6f-f7033c9d7a01"), "the EventUuid");
    assert!(sent.detail.as_deref().is_some_and(|d| d.contains("queued")), "{:?}", sent.detail);
    assert_eq!(dispatcher.run_once(T0 + 3_600_000).await.expect("later"), 0);
    assert_eq!(org.lock().expect("lock").published.len(), 1, "published once, not retried");
}

#[tokio::test]
async fn salesforce_an_ended_session_is_renewed_once_and_the_event_is_published_once() {
    let (vendor, org, case) = salesforce_dispatched().await;
    let (db, shipment, domain, dispatcher) = case.parts();
    assert_eq!(sf_counts(&vendor), (1, 1));

    // The org's session timeout ends the token: 401 INVALID_SESSION_ID, a new token, once.
    org.lock().expect("lock").expire();
    assert_eq!(case.step(carrier(CanonicalStatus::AttemptFailed, T0 + 1_000), T0 + 1_000).await, 1);
    let answered: Vec<u16> = vendor.seen().iter().map(|(_, s)| *s).collect();
    assert_eq!(answered, [200, 201, 401, 200, 201], "token, publish, expired, token, publish");
    let published = org.lock().expect("lock").published.clone();
    assert_eq!(published.len(), 2);
    assert_eq!(published[1].1["Milestone__c"], "exception");
    assert_eq!(statuses(db, shipment), ["milestone:dispatched sent", "milestone:exception sent"]);

    // An org that ends every session (the app revoked): one new token, then the row fails;
    // the sink does not loop on tokens.
    org.lock().expect("lock").revoke_all = true;
    let later = deliver(db, domain, TRACKING, T0 + 60_000);
    dispatcher.run_once(later).await.expect("pass");
    assert_eq!(sf_counts(&vendor), (3, 5), "one more token, two refused publishes");
    failed_saying(db, shipment, "milestone:delivered", &["401", "INVALID_SESSION_ID"]);
}

#[tokio::test]
async fn salesforce_asking_to_wait_is_honoured_and_nothing_is_published_before_its_retry_after() {
    let (vendor, org, case) = salesforce_dispatched().await;
    let (db, shipment, _, dispatcher) = case.parts();

    vendor.then_answer(
        429,
        Some(("retry-after", "10")),
        r#"[{"message":"Too many requests","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
    );
    case.step(carrier(CanonicalStatus::AttemptFailed, T0 + 1_000), T0 + 1_000).await;
    assert_eq!(statuses(db, shipment), ["milestone:dispatched sent", "milestone:exception queued"]);
    let before = vendor.seen().len();
    assert_eq!(dispatcher.run_once(T0 + 10_000).await.expect("pass"), 0, "Retry-After is honoured");
    assert_eq!(vendor.seen().len(), before, "nothing was sent before the wait was over");
    assert_eq!(dispatcher.run_once(T0 + 11_000).await.expect("pass"), 1);
    assert_eq!(statuses(db, shipment), ["milestone:dispatched sent", "milestone:exception sent"]);
    assert_eq!(org.lock().expect("lock").published.len(), 2);
    assert_eq!(sf_counts(&vendor).0, 1, "the token outlived the wait");
}

#[tokio::test]
async fn salesforce_refusals_fail_the_row_without_retries() {
    let (vendor, org) = Vendor::with_state(salesforce).await;

    // An event defined without one of the hub's fields: 400 INVALID_FIELD. A wrong client
    // secret: the token request is refused, nothing is published.
    // (client secret, event, what the log says, (token requests, publishes) so far)
    let refusals = [
        (SF_SECRET, SF_OLD_EVENT, &["400", "INVALID_FIELD", "Event_Key__c"][..], (1, 1)),
        ("not-the-secret", SF_EVENT, &["invalid_client"][..], (2, 1)),
    ];
    for (secret, event, words, counts) in refusals {
        let case = Case::new(salesforce_sinks(&vendor.url, secret, event));
        case.step(dispatched(T0), T0).await;
        case.failed_for_good(case.shipment, "milestone:dispatched", words).await;
        assert_eq!(sf_counts(&vendor), counts, "not retried");
    }
    assert!(org.lock().expect("lock").published.is_empty());
}

#[tokio::test]
async fn salesforce_an_event_whose_publish_was_cut_short_by_a_restart_is_unknown_and_not_published_again() {
    let (vendor, org, case) = salesforce_dispatched().await;
    let (db, shipment) = (case.db.as_path(), case.shipment);

    // The hub died after Salesforce took the event and before it wrote the answer down.
    case.not_resent_after_a_restart("milestone:dispatched", false, "Salesforce dedupes no event").await;
    assert_eq!(org.lock().expect("lock").published.len(), 1, "published once");
    assert_eq!(sf_counts(&vendor), (1, 1));
    assert_eq!(statuses(db, shipment), ["milestone:dispatched unknown"]);
}
