//! Marketing and CRM sinks end to end: milestones reconciled in the writer's transaction,
//! then delivered from the sinks' outbox to a loopback Klaviyo, ActiveCampaign and HubSpot
//! (contact-property mode), each checking every request against the vendor's documented
//! API and answering as the vendor does: Klaviyo records one event per `unique_id`, a
//! contact has a tag once, a property holds one value.

mod sink_kit;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use doorstep_hub::model::CanonicalStatus;
use doorstep_hub::reconcile::Input;
use doorstep_hub::sinks::Dispatcher;
use serde_json::{Value, json};

use sink_kit::{
    EMAIL, T0, TRACKING, Vendor, carrier, cut_short, database, deliver, dispatcher, domain, feed,
    last_outcome, outcomes, shipment_with_consent, sinks, statuses,
};

const OTHER: &str = "1Z999AA10123456785";

fn dispatched(db: &Path, domain: &doorstep_hub::ingest::Domain, tracking: &str, at: i64) {
    feed(db, domain, tracking, Input::Dispatched { at_ms: at, on_route: false }, at, true);
}

/// A hub with one consenting customer's shipment (and a shipment whose customer did not
/// consent to e-mail) and the sink of `config`: (dispatcher, writer's domain, database,
/// its directory, the shipments' ids).
struct Hub {
    dispatcher: Dispatcher,
    domain: doorstep_hub::ingest::Domain,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
    shipment: i64,
    quiet: i64,
}

fn hub(config: &str) -> Hub {
    let dir = tempfile::tempdir().expect("dir");
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    let shipment = database(&db, TRACKING);
    let quiet = shipment_with_consent(&db, OTHER, false);
    let sinks = sinks(config);
    let domain = domain(&sinks);
    let dispatcher = dispatcher(sinks, &db);
    Hub { dispatcher, domain, db, _dir: dir, shipment, quiet }
}

impl Hub {
    /// `tracking` is dispatched at `at` and the dispatcher runs then; what it sent.
    async fn dispatch(&self, tracking: &str, at: i64) -> usize {
        dispatched(&self.db, &self.domain, tracking, at);
        self.dispatcher.run_once(at).await.expect("pass")
    }

    /// The vendor answers the dispatch with a 429 and `Retry-After: 10`: the row waits
    /// that long, and then it goes.
    async fn waits_out_a_429(&self, vendor: &Vendor) {
        self.dispatch(TRACKING, T0).await;
        assert_eq!(statuses(&self.db, self.shipment), ["milestone:dispatched queued"], "429: wait and retry");
        assert_eq!(self.dispatcher.run_once(T0 + 9_000).await.expect("pass"), 0, "Retry-After is honoured");
        assert_eq!(vendor.seen().len(), 1, "nothing sent before the wait");
        assert_eq!(self.dispatcher.run_once(T0 + 10_000).await.expect("pass"), 1);
    }

    /// The customer who did not consent to e-mail: their dispatch is skipped.
    async fn quiet_is_skipped(&self) {
        self.dispatch(OTHER, T0 + 20_000).await;
        assert_eq!(statuses(&self.db, self.quiet), ["milestone:dispatched skipped"]);
    }

    /// The vendor has no contact for the customer: the dispatch is skipped.
    async fn skipped_for_no_contact(&self) {
        self.dispatch(TRACKING, T0).await;
        assert_eq!(statuses(&self.db, self.shipment), ["milestone:dispatched skipped"]);
        assert!(last_outcome(&self.db, self.shipment, "milestone:dispatched").1.contains("no contact"));
    }

    /// The vendor refuses the dispatch for good: it fails at once, its log saying `code`
    /// and `words`, and it is never retried.
    async fn refused_for_good(&self, code: &str, words: &str) {
        self.dispatch(TRACKING, T0).await;
        let (outcome, detail) = last_outcome(&self.db, self.shipment, "milestone:dispatched");
        assert_eq!(outcome, "failed");
        assert!(detail.contains(code) && detail.contains(words), "{detail}");
        assert_eq!(self.dispatcher.run_once(T0 + 3_600_000).await.expect("pass"), 0, "not retried");
    }

    /// The hub dies after the vendor acted on `event` (sent at `at`) and before it wrote
    /// the answer down: recovery resends it (`why`), and it is sent.
    async fn resent_after_a_restart(&self, event: &str, at: i64, why: &str) {
        cut_short(&self.db, event, false);
        assert_eq!(self.dispatcher.recover(at + 1).await.expect("recover"), (1, 0), "{why}");
        assert_eq!(self.dispatcher.run_once(at + 1).await.expect("pass"), 1);
    }
}

// ---- a loopback Klaviyo --------------------------------------------------------------------

const KLAVIYO_KEY: &str = "pk_0123456789abcdef0123456789abcdef01";

/// One JSON:API error, as Klaviyo writes them.
fn klaviyo_error(status: StatusCode, code: &str, detail: &str, pointer: &str) -> (StatusCode, Value) {
    let error = json!({
        "id": "e7d2f1b0-0000-4000-8000-000000000000",
        "status": status.as_u16(),
        "code": code,
        "title": "Invalid input.",
        "detail": detail,
        "source": { "pointer": pointer },
    });
    (status, json!({ "errors": [error] }))
}

/// The events a fake Klaviyo recorded: (profile e-mail, metric, unique_id) → the event.
type Recorded = Arc<Mutex<BTreeMap<(String, String, String), Value>>>;

/// Klaviyo's `POST /api/events` (revision 2024-10-15): a private key, a `revision` of an
/// existing API revision, JSON:API media types, an `event` resource with `properties`, an
/// ISO 8601 `time` after 2000, a `metric` by name (under 128 characters) and a `profile`
/// with an e-mail address. 202 with no body; an event whose `unique_id` it has for the
/// same profile and metric is accepted and not recorded again.
async fn klaviyo() -> (Vendor, Recorded) {
    let recorded: Recorded = Arc::default();
    let events = Arc::clone(&recorded);
    let vendor = Vendor::start(move |r| {
        if r.method != Method::POST || r.path != "/api/events" {
            return klaviyo_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint", "/");
        }
        if r.header("authorization") != Some(&format!("Klaviyo-API-Key {KLAVIYO_KEY}")) {
            return klaviyo_error(
                StatusCode::UNAUTHORIZED,
                "not_authenticated",
                "Missing or invalid private key.",
                "/",
            );
        }
        // The revisions this fake knows: Klaviyo's GA revisions start at 2023-02-22.
        let revision = r.header("revision").unwrap_or_default();
        let date = revision.split('.').next().unwrap_or_default();
        if date.parse::<jiff::civil::Date>().is_err() || date < "2023-02-22" {
            return klaviyo_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("{revision:?} is not a valid revision"),
                "/",
            );
        }
        if r.header("content-type") != Some("application/vnd.api+json") {
            return klaviyo_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "application/vnd.api+json",
                "/",
            );
        }
        if r.header("accept").is_some_and(|a| a != "application/vnd.api+json") {
            return klaviyo_error(
                StatusCode::NOT_ACCEPTABLE,
                "not_acceptable",
                "application/vnd.api+json",
                "/",
            );
        }
        let Some(body) = r.json() else {
            return klaviyo_error(StatusCode::BAD_REQUEST, "parse_error", "malformed JSON", "/");
        };
        let invalid =
            |detail: &str, pointer: &str| klaviyo_error(StatusCode::BAD_REQUEST, "invalid", detail, pointer);
        let data = &body["data"];
        let a = &data["attributes"];
        if data["type"] != "event" {
            return invalid("must be 'event'", "/data/type");
        }
        if !a["properties"].is_object() {
            return invalid("properties is required", "/data/attributes/properties");
        }
        let time_ok = match &a["time"] {
            Value::Null => true,
            t => t
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t.as_second() > 946_684_800),
        };
        if !time_ok {
            return invalid("time must be an ISO 8601 date-time after 2000", "/data/attributes/time");
        }
        let metric = &a["metric"]["data"];
        let name = metric["attributes"]["name"].as_str().unwrap_or_default();
        if metric["type"] != "metric" || name.is_empty() || name.chars().count() >= 128 {
            return invalid("a metric with a name", "/data/attributes/metric/data/attributes/name");
        }
        let profile = &a["profile"]["data"];
        let email = profile["attributes"]["email"].as_str().unwrap_or_default();
        if profile["type"] != "profile" || !email.contains('@') {
            return invalid("a profile with an email", "/data/attributes/profile/data/attributes/email");
        }
        let unique = a["unique_id"].as_str().map_or_else(|| a["time"].to_string(), str::to_owned);
        events
            .lock()
            .expect("lock")
            .entry((email.to_owned(), name.to_owned(), unique))
            .or_insert_with(|| body.clone());
        (StatusCode::ACCEPTED, Value::Null)
    })
    .await;
    (vendor, recorded)
}

fn klaviyo_hub(url: &str, extra: &str) -> Hub {
    hub(&format!(
        "[[sinks]]\ntype = \"klaviyo\"\nname = \"marketing\"\nbase_url = \"{url}\"\nprivate_key = \"{KLAVIYO_KEY}\"\n\
         request_timeout_s = 1\nbackoff_base_s = 1\n{extra}"
    ))
}

#[tokio::test]
async fn each_milestone_of_a_consenting_customer_is_one_klaviyo_event_under_its_metric() {
    let (vendor, recorded) = klaviyo().await;
    let h = klaviyo_hub(&vendor.url, "metrics = { delivered = \"Order Delivered\" }\n");
    assert_eq!(h.dispatch(TRACKING, T0).await, 1);
    let at = deliver(&h.db, &h.domain, TRACKING, T0 + 60_000);
    h.dispatcher.run_once(at).await.expect("pass");
    assert_eq!(statuses(&h.db, h.shipment), ["milestone:dispatched sent", "milestone:delivered sent"]);

    let accepted = vendor.accepted();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0].header("revision"), Some("2024-10-15"), "the default revision");
    assert_eq!(accepted[0].header("accept"), Some("application/vnd.api+json"));
    let events = recorded.lock().expect("lock").clone();
    let keys: Vec<(String, String, String)> = events.keys().cloned().collect();
    let key = |event: &str| format!("doorstep:marketing:{TRACKING}:{event}");
    assert_eq!(
        keys,
        [
            (EMAIL.to_owned(), "Order Delivered".to_owned(), key("milestone:delivered")),
            (EMAIL.to_owned(), "Parcel Dispatched".to_owned(), key("milestone:dispatched")),
        ]
    );
    let first = &events[&keys[1]]["data"]["attributes"];
    assert_eq!(first["time"], "2025-07-01T08:00:00Z", "when the hub committed it");
    assert_eq!(first["properties"]["tracking_number"], TRACKING);
    assert_eq!(first["properties"]["milestone"], "dispatched");
    let (outcome, detail) = last_outcome(&h.db, h.shipment, "milestone:delivered");
    assert_eq!(outcome, "sent");
    assert!(detail.contains("202") && detail.contains("Order Delivered"), "{detail}");
}

#[tokio::test]
async fn klaviyo_is_waited_for_after_a_429_and_refusals_and_non_consenting_customers_end_the_row() {
    let (vendor, recorded) = klaviyo().await;
    let h = klaviyo_hub(&vendor.url, "");
    vendor.then_answer(
        429,
        Some(("retry-after", "10")),
        r#"{"errors":[{"id":"1","status":429,"code":"throttled","title":"Request was throttled.","detail":"Expected available in 10 seconds.","source":{"pointer":"/data/"}}]}"#,
    );
    h.waits_out_a_429(&vendor).await;
    assert_eq!((vendor.seen().len(), recorded.lock().expect("lock").len()), (2, 1));

    // No consent to e-mail: no profile to record it on, and no request.
    h.quiet_is_skipped().await;
    assert!(last_outcome(&h.db, h.quiet, "milestone:dispatched").1.contains("consent"));
    assert_eq!(vendor.seen().len(), 2);

    // A revision Klaviyo does not have: 400, failed at once, never retried.
    let old = klaviyo_hub(&vendor.url, "revision = \"2019-01-01\"\n");
    old.refused_for_good("400", "not a valid revision").await;
    assert_eq!(statuses(&old.db, old.shipment), ["milestone:dispatched failed"]);
    assert_eq!(vendor.seen().len(), 3);

    // A key Klaviyo does not know: 401, failed.
    let text = format!(
        "[[sinks]]\ntype = \"klaviyo\"\nbase_url = \"{}\"\nprivate_key = \"pk_revoked\"\nbackoff_base_s = 1\n",
        vendor.url
    );
    hub(&text).refused_for_good("401", "not_authenticated").await;
}

#[tokio::test]
async fn a_klaviyo_event_resent_after_a_restart_mid_send_is_recorded_once() {
    let (vendor, recorded) = klaviyo().await;
    let h = klaviyo_hub(&vendor.url, "");
    h.dispatch(TRACKING, T0).await;
    // The hub died after Klaviyo took the event and before it wrote the answer down.
    h.resent_after_a_restart("milestone:dispatched", T0, "resent: unique_id dedupes").await;
    let accepted = vendor.accepted();
    assert_eq!(accepted.len(), 2, "sent twice");
    let ids: Vec<Value> =
        accepted.iter().map(|r| r.json().expect("json")["data"]["attributes"]["unique_id"].clone()).collect();
    assert_eq!(ids[0], ids[1], "under the same unique_id");
    assert_eq!(recorded.lock().expect("lock").len(), 1, "Klaviyo recorded one event");
    let sent =
        outcomes(&h.db, h.shipment, "milestone:dispatched").iter().filter(|(o, _)| o == "sent").count();
    assert_eq!(sent, 2);
}

// ---- a loopback ActiveCampaign -------------------------------------------------------------

const AC_TOKEN: &str = "4f9c1a7e2b3d5c6a8e0f1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7";

/// A fake ActiveCampaign account: its contacts (e-mail → id), tags (id, name, type) and
/// contact tags (id, contact, tag).
#[derive(Default)]
struct Account {
    contacts: BTreeMap<String, String>,
    tags: Vec<(String, String, String)>,
    contact_tags: Vec<(String, String, String)>,
}

type Shared = Arc<Mutex<Account>>;

fn ac_errors(status: StatusCode, title: &str, pointer: &str) -> (StatusCode, Value) {
    let error =
        json!({ "title": title, "detail": "", "code": "field_invalid", "source": { "pointer": pointer } });
    (status, json!({ "errors": [error] }))
}

/// An id in a body: ActiveCampaign takes it as a string or a number.
fn ac_id(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned).or_else(|| v.as_u64().map(|n| n.to_string()))
}

/// ActiveCampaign's API v3 as far as Doorstep uses it: `Api-Token` (403 without it),
/// `GET /api/3/contacts?email=` (exact), `GET /api/3/tags?search=` (substring),
/// `POST /api/3/tags` (201 with the tag), `POST /api/3/contactTags` (201 with the contact
/// tag; 422 for a contact or tag it does not have; a tag the contact has is answered with
/// the one it has: a contact has a tag once).
async fn activecampaign(account: Account) -> (Vendor, Shared) {
    let shared: Shared = Arc::new(Mutex::new(account));
    let state = Arc::clone(&shared);
    let vendor = Vendor::start(move |r| {
        if r.header("api-token") != Some(AC_TOKEN) {
            return (StatusCode::FORBIDDEN, json!({ "message": "Forbidden" }));
        }
        let mut account = state.lock().expect("lock");
        let posted = || -> Option<Value> {
            (r.header("content-type") == Some("application/json")).then(|| r.json()).flatten()
        };
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/api/3/contacts") => {
                let email = r.query.get("email").cloned().unwrap_or_default();
                let found: Vec<Value> = account
                    .contacts
                    .iter()
                    .filter(|(e, _)| email.is_empty() || e.eq_ignore_ascii_case(&email))
                    .map(|(e, id)| json!({ "id": id, "email": e, "cdate": "2025-06-01T10:00:00-05:00" }))
                    .collect();
                let total = found.len().to_string();
                (StatusCode::OK, json!({ "scoreValues": [], "contacts": found, "meta": { "total": total } }))
            }
            ("GET", "/api/3/tags") => {
                let search = r.query.get("search").cloned().unwrap_or_default();
                let found: Vec<Value> = account
                    .tags
                    .iter()
                    .filter(|(_, name, _)| name.contains(&search))
                    .map(|(id, name, kind)| json!({ "id": id, "tag": name, "tagType": kind, "description": "" }))
                    .collect();
                let total = found.len().to_string();
                (StatusCode::OK, json!({ "tags": found, "meta": { "total": total } }))
            }
            ("POST", "/api/3/tags") => {
                let Some(body) = posted() else {
                    return ac_errors(StatusCode::BAD_REQUEST, "Invalid JSON", "/data");
                };
                let tag = &body["tag"];
                let name = tag["tag"].as_str().unwrap_or_default();
                if name.is_empty() || !matches!(tag["tagType"].as_str(), Some("contact" | "template")) {
                    return ac_errors(StatusCode::UNPROCESSABLE_ENTITY, "Tag name and type are required", "/data/attributes/tag");
                }
                let id = (account.tags.len() + 16).to_string();
                account.tags.push((id.clone(), name.to_owned(), tag["tagType"].as_str().unwrap_or_default().to_owned()));
                let answer = json!({ "tag": {
                    "tagType": tag["tagType"], "tag": name, "description": tag["description"],
                    "cdate": "2025-07-01T03:00:00-05:00", "id": id,
                }});
                (StatusCode::CREATED, answer)
            }
            ("POST", "/api/3/contactTags") => {
                let Some(body) = posted() else {
                    return ac_errors(StatusCode::BAD_REQUEST, "Invalid JSON", "/data");
                };
                let (Some(contact), Some(tag)) = (ac_id(&body["contactTag"]["contact"]), ac_id(&body["contactTag"]["tag"]))
                else {
                    return ac_errors(StatusCode::UNPROCESSABLE_ENTITY, "contact and tag are required", "/data/attributes");
                };
                if !account.contacts.values().any(|id| *id == contact) {
                    return ac_errors(StatusCode::UNPROCESSABLE_ENTITY, "Contact not found", "/data/attributes/contact");
                }
                if !account.tags.iter().any(|(id, _, _)| *id == tag) {
                    return ac_errors(StatusCode::UNPROCESSABLE_ENTITY, "Tag not found", "/data/attributes/tag");
                }
                let existing = account.contact_tags.iter().find(|(_, c, t)| *c == contact && *t == tag).map(|(id, _, _)| id.clone());
                let id = existing.unwrap_or_else(|| {
                    let id = (account.contact_tags.len() + 900).to_string();
                    account.contact_tags.push((id.clone(), contact.clone(), tag.clone()));
                    id
                });
                let answer = json!({ "contactTag": {
                    "contact": contact, "tag": tag, "cdate": "2025-07-01T03:00:00-05:00", "id": id,
                    "links": { "contact": format!("/api/3/contactTags/{id}/contact"), "tag": format!("/api/3/contactTags/{id}/tag") },
                }});
                (StatusCode::CREATED, answer)
            }
            _ => (StatusCode::NOT_FOUND, json!({ "message": "No Result found" })),
        }
    })
    .await;
    (vendor, shared)
}

/// An account that knows Ada (contact 7) and already has a `doorstep-delivered` tag (3),
/// beside a template tag and a longer name the search also matches.
fn ada() -> Account {
    Account {
        contacts: BTreeMap::from([
            (EMAIL.to_owned(), "7".to_owned()),
            ("bob@example.com".to_owned(), "8".to_owned()),
        ]),
        tags: vec![
            ("1".into(), "doorstep-delivered-late".into(), "contact".into()),
            ("2".into(), "doorstep-delivered".into(), "template".into()),
            ("3".into(), "doorstep-delivered".into(), "contact".into()),
        ],
        contact_tags: Vec::new(),
    }
}

fn ac_config(url: &str, token: &str) -> String {
    format!(
        "[[sinks]]\ntype = \"activecampaign\"\nname = \"automations\"\nbase_url = \"{url}\"\napi_token = \"{token}\"\n\
         request_timeout_s = 1\nbackoff_base_s = 1\nrate_per_s = 50\nburst = 10\n"
    )
}

/// The names of the tags contact `contact` has.
fn tags_of(account: &Shared, contact: &str) -> Vec<String> {
    let account = account.lock().expect("lock");
    account
        .contact_tags
        .iter()
        .filter(|(_, c, _)| c == contact)
        .filter_map(|(_, _, t)| {
            account.tags.iter().find(|(id, _, _)| id == t).map(|(_, name, _)| name.clone())
        })
        .collect()
}

#[tokio::test]
async fn each_milestone_tags_the_customers_activecampaign_contact_making_a_missing_tag_once() {
    let (vendor, account) = activecampaign(ada()).await;
    let h = hub(&ac_config(&vendor.url, AC_TOKEN));
    h.dispatch(TRACKING, T0).await;
    let at = deliver(&h.db, &h.domain, TRACKING, T0 + 60_000);
    h.dispatcher.run_once(at).await.expect("pass");
    assert_eq!(statuses(&h.db, h.shipment), ["milestone:dispatched sent", "milestone:delivered sent"]);
    assert_eq!(tags_of(&account, "7"), ["doorstep-dispatched", "doorstep-delivered"]);
    assert!(tags_of(&account, "8").is_empty(), "nobody else is tagged");

    let requests: Vec<String> =
        vendor.seen().iter().map(|(r, s)| format!("{} {} {s}", r.method, r.path)).collect();
    assert_eq!(
        requests,
        [
            "GET /api/3/contacts 200",
            "GET /api/3/tags 200",
            "POST /api/3/tags 201",
            "POST /api/3/contactTags 201",
            "GET /api/3/contacts 200",
            "GET /api/3/tags 200",
            "POST /api/3/contactTags 201",
        ],
        "doorstep-dispatched was made; doorstep-delivered was found (the contact tag, exactly)"
    );
    let seen = vendor.seen();
    assert_eq!(seen[0].0.query.get("email").map(String::as_str), Some(EMAIL));
    let created = seen[2].0.json().expect("json");
    assert_eq!(created["tag"]["tag"], "doorstep-dispatched");
    assert_eq!(created["tag"]["tagType"], "contact");
    assert!(created["tag"]["description"].is_string());
    assert_eq!(seen[6].0.json().expect("json"), json!({ "contactTag": { "contact": "7", "tag": "3" } }));
    let (_, detail) = last_outcome(&h.db, h.shipment, "milestone:delivered");
    assert!(detail.contains("doorstep-delivered") && detail.contains("contact 7"), "{detail}");

    // A third shipment's dispatch for the same customer: the tag's id is remembered.
    let third = "1Z999AA10123456786";
    shipment_with_consent(&h.db, third, true);
    h.dispatch(third, at + 1).await;
    let after: Vec<String> =
        vendor.seen()[7..].iter().map(|(r, _)| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(after, ["GET /api/3/contacts", "POST /api/3/contactTags"]);
    assert_eq!(tags_of(&account, "7"), ["doorstep-dispatched", "doorstep-delivered"], "still once each");

    // Someone deleted the tag in ActiveCampaign and made it again: the remembered id is
    // refused, and the tag is looked up afresh.
    {
        let mut a = account.lock().expect("lock");
        let old = a.tags.iter().position(|(_, name, _)| name == "doorstep-dispatched").expect("made");
        let (old_id, _, _) = a.tags.remove(old);
        a.contact_tags.retain(|(_, _, t)| *t != old_id);
        a.tags.push(("99".into(), "doorstep-dispatched".into(), "contact".into()));
    }
    let fourth = "1Z999AA10123456787";
    let fourth_id = shipment_with_consent(&h.db, fourth, true);
    h.dispatch(fourth, at + 2).await;
    let after: Vec<String> =
        vendor.seen()[9..].iter().map(|(r, s)| format!("{} {} {s}", r.method, r.path)).collect();
    assert_eq!(
        after,
        [
            "GET /api/3/contacts 200",
            "POST /api/3/contactTags 422",
            "GET /api/3/tags 200",
            "POST /api/3/contactTags 201"
        ]
    );
    assert_eq!(statuses(&h.db, fourth_id), ["milestone:dispatched sent"]);
    assert_eq!(tags_of(&account, "7"), ["doorstep-delivered", "doorstep-dispatched"]);
}

#[tokio::test]
async fn activecampaign_is_waited_for_after_a_429_and_unknown_or_non_consenting_customers_and_refusals_end_the_row()
 {
    let (vendor, account) = activecampaign(ada()).await;
    let h = hub(&ac_config(&vendor.url, AC_TOKEN));
    vendor.then_answer(429, Some(("retry-after", "10")), r#"{"message":"Too Many Requests"}"#);
    h.waits_out_a_429(&vendor).await;
    assert_eq!(tags_of(&account, "7"), ["doorstep-dispatched"]);

    // No consent to e-mail: no request at all.
    let before = vendor.seen().len();
    h.quiet_is_skipped().await;
    assert_eq!(vendor.seen().len(), before);

    // A customer ActiveCampaign has no contact for: skipped, and no contact is created.
    let (empty, nobody) = activecampaign(Account::default()).await;
    let h = hub(&ac_config(&empty.url, AC_TOKEN));
    h.skipped_for_no_contact().await;
    assert!(nobody.lock().expect("lock").contacts.is_empty());
    assert_eq!(empty.seen().len(), 1, "the lookup only");

    // A token ActiveCampaign does not know: 403, failed at once, never retried.
    let h = hub(&ac_config(&vendor.url, "not-the-token"));
    h.refused_for_good("403", "contact lookup").await;
}

#[tokio::test]
async fn an_activecampaign_tag_added_again_after_a_restart_mid_send_is_on_the_contact_once() {
    let (vendor, account) = activecampaign(ada()).await;
    let h = hub(&ac_config(&vendor.url, AC_TOKEN));
    let at = deliver(&h.db, &h.domain, TRACKING, T0);
    h.dispatcher.run_once(at).await.expect("pass");
    // The hub died after ActiveCampaign tagged the contact and before it wrote that down.
    h.resent_after_a_restart("milestone:delivered", at, "a tag is resent").await;
    let adds = vendor.accepted().iter().filter(|r| r.path == "/api/3/contactTags").count();
    assert_eq!(adds, 2, "added twice");
    assert_eq!(tags_of(&account, "7"), ["doorstep-delivered"], "on the contact once");
    assert_eq!(account.lock().expect("lock").contact_tags.len(), 1);
}

// ---- a loopback HubSpot, contact properties -------------------------------------------------

const HS_TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";

/// A fake HubSpot portal: its contact properties and contacts (e-mail → id, properties),
/// and every update it applied (e-mail, properties).
#[derive(Default)]
struct Portal {
    defined: Vec<&'static str>,
    contacts: BTreeMap<String, (String, BTreeMap<String, String>)>,
    updates: Vec<(String, Value)>,
}

fn hs_error(status: StatusCode, message: &str, category: &str) -> (StatusCode, Value) {
    let body = json!({
        "status": "error",
        "message": message,
        "correlationId": "3f1e2d4c-0000-4000-8000-000000000000",
        "category": category,
    });
    (status, body)
}

/// HubSpot's `PATCH /crm/v3/objects/contacts/{email}?idProperty=email`: a Bearer private
/// app token (401 otherwise), `{"properties":{...}}` of strings, every property defined in
/// the portal (400 `PROPERTY_DOESNT_EXIST` otherwise), a contact it has (404
/// `OBJECT_NOT_FOUND` otherwise: the update creates none). 200 with the contact.
async fn hubspot(portal: Portal) -> (Vendor, Arc<Mutex<Portal>>) {
    let shared = Arc::new(Mutex::new(portal));
    let state = Arc::clone(&shared);
    let vendor = Vendor::start(move |r| {
        if r.header("authorization") != Some(&format!("Bearer {HS_TOKEN}")) {
            return hs_error(StatusCode::UNAUTHORIZED, "Authentication credentials not found.", "INVALID_AUTHENTICATION");
        }
        let Some(email) = r.path.strip_prefix("/crm/v3/objects/contacts/") else {
            return hs_error(StatusCode::NOT_FOUND, "no such endpoint", "OBJECT_NOT_FOUND");
        };
        if r.method != Method::PATCH || r.query.get("idProperty").map(String::as_str) != Some("email") {
            return hs_error(StatusCode::METHOD_NOT_ALLOWED, "PATCH with idProperty=email expected", "VALIDATION_ERROR");
        }
        if r.header("content-type") != Some("application/json") {
            return hs_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json expected", "VALIDATION_ERROR");
        }
        let Some(properties) = r.json().and_then(|b| b["properties"].as_object().cloned()) else {
            return hs_error(StatusCode::BAD_REQUEST, "Invalid input JSON", "VALIDATION_ERROR");
        };
        let mut portal = state.lock().expect("lock");
        let mut invalid = Vec::new();
        for (name, value) in &properties {
            if !portal.defined.contains(&name.as_str()) {
                invalid.push(json!({
                    "isValid": false, "message": format!("Property \"{name}\" does not exist"),
                    "error": "PROPERTY_DOESNT_EXIST", "name": name, "localizedErrorMessage": format!("Property \"{name}\" does not exist"),
                }));
            } else if !value.is_string() {
                invalid.push(json!({ "isValid": false, "message": "a string", "error": "INVALID_OPTION", "name": name }));
            }
        }
        if !invalid.is_empty() {
            let message = format!("Property values were not valid: {}", Value::Array(invalid));
            return hs_error(StatusCode::BAD_REQUEST, &message, "VALIDATION_ERROR");
        }
        let Some((id, values)) = portal.contacts.get_mut(email) else {
            return hs_error(StatusCode::NOT_FOUND, "resource not found", "OBJECT_NOT_FOUND");
        };
        for (name, value) in &properties {
            values.insert(name.clone(), value.as_str().unwrap_or_default().to_owned());
        }
        let answer = json!({
            "id": id, "properties": values.clone(), "createdAt": "2025-06-01T10:00:00Z",
            "updatedAt": "2025-07-01T08:00:00Z", "archived": false,
        });
        portal.updates.push((email.to_owned(), Value::Object(properties)));
        (StatusCode::OK, answer)
    })
    .await;
    (vendor, shared)
}

fn portal_with_ada() -> Portal {
    Portal {
        defined: vec!["email", "firstname", "doorstep_status", "doorstep_tracking_number"],
        contacts: BTreeMap::from([(
            EMAIL.to_owned(),
            ("512".to_owned(), BTreeMap::from([("firstname".into(), "Ada".into())])),
        )]),
        updates: Vec::new(),
    }
}

fn hs_config(url: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\ntype = \"hubspot\"\nname = \"crm\"\nbase_url = \"{url}\"\naccess_token = \"{HS_TOKEN}\"\n\
         mode = \"property\"\nrequest_timeout_s = 1\nbackoff_base_s = 1\n{extra}"
    )
}

fn status_of(portal: &Arc<Mutex<Portal>>) -> Option<String> {
    portal.lock().expect("lock").contacts.get(EMAIL).and_then(|(_, p)| p.get("doorstep_status").cloned())
}

#[tokio::test]
async fn each_milestone_sets_the_customers_hubspot_contact_property() {
    let (vendor, portal) = hubspot(portal_with_ada()).await;
    let h = hub(&hs_config(&vendor.url, ""));
    h.dispatch(TRACKING, T0).await;
    assert_eq!(status_of(&portal).as_deref(), Some("dispatched"));
    // The exception raises an alert too: not the CRM's business (alerts are off).
    feed(&h.db, &h.domain, TRACKING, carrier(CanonicalStatus::Returning, T0 + 1), T0 + 1_000, true);
    h.dispatcher.run_once(T0 + 1_000).await.expect("pass");
    assert_eq!(statuses(&h.db, h.shipment), ["milestone:dispatched sent", "milestone:exception sent"]);
    let p = portal.lock().expect("lock");
    let updates: Vec<&Value> = p.updates.iter().map(|(_, u)| u).collect();
    assert_eq!(
        updates,
        [
            &json!({ "doorstep_status": "dispatched", "doorstep_tracking_number": TRACKING }),
            &json!({ "doorstep_status": "exception", "doorstep_tracking_number": TRACKING }),
        ]
    );
    assert_eq!(p.contacts[EMAIL].1["firstname"], "Ada", "nothing else changed");
    drop(p);
    let (outcome, detail) = last_outcome(&h.db, h.shipment, "milestone:exception");
    assert_eq!(outcome, "sent");
    assert!(detail.contains("doorstep_status") && detail.contains("512"), "{detail}");
}

#[tokio::test]
async fn hubspot_is_waited_for_after_a_429_and_unknown_properties_unknown_contacts_and_non_consent_end_the_row()
 {
    let (vendor, portal) = hubspot(portal_with_ada()).await;
    let h = hub(&hs_config(&vendor.url, ""));
    vendor.then_answer(
        429,
        Some(("retry-after", "10")),
        r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","category":"RATE_LIMITS"}"#,
    );
    h.waits_out_a_429(&vendor).await;
    assert_eq!(status_of(&portal).as_deref(), Some("dispatched"));

    // No consent to e-mail: no request.
    h.quiet_is_skipped().await;
    assert_eq!(vendor.seen().len(), 2);

    // A property the portal does not have: 400 PROPERTY_DOESNT_EXIST, failed, not retried.
    let h = hub(&hs_config(&vendor.url, "property = \"doorstep_state\"\n"));
    h.refused_for_good("400", "PROPERTY_DOESNT_EXIST").await;
    assert_eq!(status_of(&portal).as_deref(), Some("dispatched"), "unchanged");

    // A customer HubSpot has no contact for: 404, skipped (the update creates no contact).
    let (empty, nobody) = hubspot(Portal {
        defined: vec!["email", "doorstep_status", "doorstep_tracking_number"],
        ..Portal::default()
    })
    .await;
    let h = hub(&hs_config(&empty.url, ""));
    h.skipped_for_no_contact().await;
    assert!(nobody.lock().expect("lock").contacts.is_empty());
}

#[tokio::test]
async fn a_hubspot_property_set_again_after_a_restart_mid_send_holds_the_milestone() {
    let (vendor, portal) = hubspot(portal_with_ada()).await;
    let h = hub(&hs_config(&vendor.url, "tracking_property = \"\"\n"));
    let at = deliver(&h.db, &h.domain, TRACKING, T0);
    h.dispatcher.run_once(at).await.expect("pass");
    // The hub died after HubSpot updated the contact and before it wrote that down.
    h.resent_after_a_restart("milestone:delivered", at, "a property update is resent").await;
    assert_eq!(vendor.accepted().len(), 2, "updated twice");
    let p = portal.lock().expect("lock");
    assert!(
        p.updates.iter().all(|(_, u)| *u == json!({ "doorstep_status": "delivered" })),
        "{:?}",
        p.updates
    );
    assert_eq!(p.contacts[EMAIL].1.get("doorstep_status").map(String::as_str), Some("delivered"));
    assert_eq!(p.contacts.len(), 1, "no contact made");
    drop(p);
    assert_eq!(statuses(&h.db, h.shipment), ["milestone:delivered sent"]);
}
