//! Salesforce: a Platform Event per milestone and operations alert, for the shipper's own
//! flows, Apex triggers and subscribers (a case opened by Service Cloud, an account team
//! told of a key customer's exception) to start from Doorstep's word.
//!
//! Publishing a platform event is inserting a record of it:
//! `POST {instance_url}/services/data/v{api_version}/sobjects/{event}/` with a Bearer token
//! and the event's fields: `Tracking_Number__c`, `Milestone__c` (or `Alert__c` for an
//! alert), `Order_Name__c`, `Detail__c` (an exception's reason code, with `; expected
//! {date}` when the carrier gave a new one, or an alert's sentence; at most 255
//! characters), `Occurred_At__c` (when the hub committed it, ISO 8601) and `Event_Key__c`
//! (the row's stable key, for subscribers that want to drop a repeat themselves). The
//! shipper defines the event (`Doorstep_Delivery__e` unless configured) with these fields;
//! a field it lacks is refused with `INVALID_FIELD`. Fields without a value are left out.
//!
//! Salesforce answers 201 `{"id", "success": true, "errors": []}`, and newer API versions
//! answer success with `errors: [{"statusCode": "OPERATION_ENQUEUED", "message": <the
//! event's EventUuid>}]`: publishing is asynchronous and that entry says the event was
//! queued. It is a success, not an error: `success` decides, and the EventUuid (what
//! identifies the event message; the `id` does not) is recorded as the vendor id.
//! `success: false` is a refusal.
//!
//! Authentication is the OAuth 2.0 client-credentials flow of an external client app
//! (`POST {instance_url}/services/oauth2/token`, `grant_type=client_credentials`), which
//! answers an access token and no expiry: the org's session policy ends it. The token is
//! kept in the sink and fetched again once when Salesforce answers 401 `INVALID_SESSION_ID`.
//! Requests go to the configured URL, not the token answer's `instance_url`, so the token is
//! never sent anywhere the operator did not name (for the client-credentials flow, which
//! only a My Domain URL serves, the two are the same).
//!
//! Platform events carry no key Salesforce dedupes on, so a publish whose answer was lost
//! is `unknown`, not repeated. `403 REQUEST_LIMIT_EXCEEDED` (the org's daily API calls are
//! used up) is retried with backoff; other refusals fail the row. Operations alerts are
//! on by default: Salesforce here is the operations team's CRM, not a marketing list.

use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::registry::SinkConfigError;
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::notify::ratelimit::RateLimit;
use crate::notify::{Reply, SendResult, refused};
use crate::reconcile::ExceptionDetail;

/// The Salesforce sink type.
pub const TYPE: SinkType = SinkType {
    kind: "salesforce",
    // Salesforce counts API calls per 24 hours (from 100,000 by edition and licences) and
    // platform event publishing per hour; a steady 5 a second stays well inside both.
    rate: RateLimit { per_s: 5.0, burst: 25 },
    alerts: true,
    sample: r#"# name = "ops_crm"
# instance_url = "https://acme.my.salesforce.com"   # the org's My Domain URL
# client_id = "3MVG9doorstep"                      # the external client app's consumer key
# client_secret = "file:/etc/doorstep/salesforce.secret"
# event = "Doorstep_Delivery__e"                   # the platform event's API name
# api_version = "62.0"
"#,
    build,
};

/// The longest `Detail__c` sent: a platform event's text field holds at most 255.
pub const DETAIL_CHARS: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    instance_url: Option<String>,
    client_id: String,
    client_secret: String,
    #[serde(default = "default_event")]
    event: String,
    #[serde(default = "default_version")]
    api_version: String,
}

fn default_event() -> String {
    "Doorstep_Delivery__e".into()
}
fn default_version() -> String {
    "62.0".into()
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    let default = match &s.instance_url {
        Some(url) if url.starts_with("https://") => url.clone(),
        Some(_) => {
            return Err(
                b.invalid("instance_url", "the org's My Domain URL, https://{domain}.my.salesforce.com")
            );
        }
        None if b.unused_base_url() => String::new(),
        None => return Err(b.invalid("instance_url", "is required (or base_url)")),
    };
    let base_url = b.base_url(&default)?;
    let api_name = s.event.strip_suffix("__e").is_some_and(|name| {
        name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
    });
    if !api_name {
        return Err(b.invalid("event", "the platform event's API name, such as Doorstep_Delivery__e"));
    }
    let version = s.api_version.split_once('.').is_some_and(|(major, minor)| {
        !major.is_empty()
            && !minor.is_empty()
            && major.bytes().chain(minor.bytes()).all(|c| c.is_ascii_digit())
    });
    if !version {
        return Err(b.invalid("api_version", "a REST API version such as \"62.0\""));
    }
    if s.client_id.trim().is_empty() {
        return Err(b.invalid("client_id", "the external client app's consumer key"));
    }
    let client_secret = b.secret("client_secret", &s.client_secret)?;
    Ok(Arc::new(Salesforce {
        events_url: format!("{base_url}/services/data/v{}/sobjects/{}/", s.api_version, s.event),
        token_url: format!("{base_url}/services/oauth2/token"),
        client_id: s.client_id,
        client_secret,
        token: Mutex::new(None),
        timeout: b.request_timeout,
    }))
}

/// A configured Salesforce org.
pub struct Salesforce {
    events_url: String,
    token_url: String,
    client_id: String,
    client_secret: String,
    /// The access token of the client-credentials flow, until Salesforce ends its session.
    token: Mutex<Option<String>>,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce").field("events_url", &self.events_url).finish_non_exhaustive()
    }
}

/// The platform event's fields for one event (pure).
pub fn fields(event: &SinkEvent) -> serde_json::Value {
    let mut v = serde_json::json!({
        "Tracking_Number__c": event.tracking_number,
        "Event_Key__c": event.key,
    });
    match &event.kind {
        EventKind::Milestone(m) => v["Milestone__c"] = crate::store::milestone_name(*m).into(),
        EventKind::Alert(code) => v["Alert__c"] = code.as_str().into(),
    }
    if let Some(order) = &event.order_name {
        v["Order_Name__c"] = order.as_str().into();
    }
    if let Some(detail) = event.detail.as_deref() {
        // An exception's detail is the reconciler's JSON: its reason code (and the carrier's
        // new expectation) is what a flow branches on; an alert's is a sentence.
        let words = match ExceptionDetail::from_json(detail) {
            Some(ExceptionDetail { reason, expected: Some(expected) }) => {
                format!("{reason}; expected {expected}")
            }
            Some(ExceptionDetail { reason, expected: None }) => reason,
            None => detail.to_owned(),
        };
        v["Detail__c"] = words.chars().take(DETAIL_CHARS).collect::<String>().into();
    }
    if let Ok(at) = jiff::Timestamp::from_millisecond(event.occurred_ms) {
        v["Occurred_At__c"] = at.to_string().into();
    }
    v
}

/// One entry of a save result's `errors`.
#[derive(Debug, Deserialize)]
struct SaveError {
    #[serde(rename = "statusCode")]
    status_code: String,
    #[serde(default)]
    message: String,
}

/// A publish's save result.
#[derive(Debug, Deserialize)]
struct SaveResult {
    #[serde(default)]
    id: Option<String>,
    success: bool,
    #[serde(default)]
    errors: Vec<SaveError>,
}

/// What a 2xx answer to a publish means (pure): the event's id for the log, or why
/// Salesforce did not publish it. `OPERATION_ENQUEUED` in `errors` is how newer API versions
/// say the publish was queued: its message is the EventUuid, the id worth recording.
pub fn published(body: &[u8]) -> Result<(Option<String>, String), String> {
    let text = || String::from_utf8_lossy(body).chars().take(300).collect::<String>();
    let result: SaveResult = serde_json::from_slice(body)
        .map_err(|_| format!("Salesforce answered no save result: {}", text()))?;
    let codes: Vec<&str> = result.errors.iter().map(|e| e.status_code.as_str()).collect();
    if !result.success {
        return Err(format!("Salesforce did not publish it: {}", text()));
    }
    let uuid = result
        .errors
        .iter()
        .find(|e| e.status_code == "OPERATION_ENQUEUED" && !e.message.is_empty())
        .map(|e| e.message.clone());
    let detail = match (&uuid, codes.is_empty()) {
        (Some(uuid), _) => format!("published (queued, EventUuid {uuid})"),
        (None, true) => "published".to_owned(),
        (None, false) => format!("published, with {}", codes.join(", ")),
    };
    Ok((uuid.or(result.id), detail))
}

/// Whether an error answer names this error code (Salesforce answers a list of
/// `{"errorCode", "message"}`).
fn names(reply: &Reply, code: &str) -> bool {
    #[derive(Deserialize)]
    struct ApiError {
        #[serde(rename = "errorCode")]
        error_code: String,
    }
    serde_json::from_slice::<Vec<ApiError>>(&reply.body)
        .is_ok_and(|errors| errors.iter().any(|e| e.error_code == code))
}

impl Salesforce {
    /// The cached token, or a new one from the client-credentials flow (with `fresh`, or
    /// when none is cached). Nothing is published by asking, so a token request whose
    /// answer was lost is simply a retry.
    async fn token(&self, client: &reqwest::Client, fresh: bool) -> Result<String, SendResult> {
        let cached = if fresh { None } else { self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() };
        if let Some(token) = cached {
            return Ok(token);
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
        ];
        let request = client.post(&self.token_url).timeout(self.timeout).form(&form);
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(SendResult::Ambiguous { detail }) => {
                return Err(SendResult::Retry { detail: format!("token: {detail}"), retry_after: None });
            }
            Err(result) => return Err(result),
        };
        if !reply.status.is_success() {
            return Err(refused("Salesforce token", &reply));
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
        }
        let token = serde_json::from_slice::<Token>(&reply.body)
            .ok()
            .map(|t| t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SendResult::Rejected {
                detail: format!("Salesforce token: {} without an access_token", reply.status),
            })?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(token)
    }

    async fn publish(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        let body = fields(event);
        let mut fresh = false;
        loop {
            let token = match self.token(client, fresh).await {
                Ok(token) => token,
                Err(result) => return Delivery::NotTaken(result),
            };
            let request = client.post(&self.events_url).timeout(self.timeout).bearer_auth(&token).json(&body);
            let reply = match exchange(request).await {
                Ok(reply) => reply,
                Err(result) => return Delivery::NotTaken(result),
            };
            // The session ended (the org's timeout, a revoked token): nothing was published;
            // a new token, once.
            if reply.status == reqwest::StatusCode::UNAUTHORIZED
                && names(&reply, "INVALID_SESSION_ID")
                && !fresh
            {
                {
                    let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
                    if cached.as_deref() == Some(token.as_str()) {
                        *cached = None;
                    }
                }
                fresh = true;
                continue;
            }
            if reply.status.is_success() {
                return match published(&reply.body) {
                    Ok((vendor_id, detail)) => Delivery::Accepted { vendor_id, thread: None, detail },
                    Err(detail) => Delivery::NotTaken(SendResult::Rejected { detail }),
                };
            }
            // The org's daily API calls are used up: they come back within the day.
            if reply.status == reqwest::StatusCode::FORBIDDEN && names(&reply, "REQUEST_LIMIT_EXCEEDED") {
                let text = String::from_utf8_lossy(&reply.body).chars().take(300).collect::<String>();
                return Delivery::NotTaken(SendResult::Retry {
                    detail: format!("Salesforce HTTP 403: {text}"),
                    retry_after: reply.retry_after,
                });
            }
            return Delivery::NotTaken(refused("Salesforce", &reply));
        }
    }
}

impl Sink for Salesforce {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.publish(client, event))
    }

    // resend_safe: the default (false). Salesforce dedupes no platform event.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Milestone;

    fn event(kind: EventKind) -> SinkEvent {
        crate::sinks::test_event("ops_crm", kind)
    }

    #[test]
    fn the_event_names_the_parcel_and_milestone_or_alert_and_leaves_out_what_is_unknown() {
        let f = fields(&event(EventKind::Milestone(Milestone::Delivered)));
        assert_eq!(f["Tracking_Number__c"], "1Z999AA10123456784");
        assert_eq!(f["Milestone__c"], "delivered");
        assert_eq!(f["Order_Name__c"], "#1001");
        assert_eq!(f["Occurred_At__c"], "2025-07-01T08:00:00Z");
        assert_eq!(f["Event_Key__c"], "doorstep:ops_crm:1Z999AA10123456784:milestone:delivered");
        assert!(f.get("Alert__c").is_none() && f.get("Detail__c").is_none(), "{f}");
        assert!(!f.to_string().contains("ada@example.com"), "no customer address in the CRM event");
        let mut alert = event(EventKind::Alert("carrier_returning".into()));
        alert.detail = Some("é".repeat(300));
        let f = fields(&alert);
        assert_eq!(f["Alert__c"], "carrier_returning");
        assert!(f.get("Milestone__c").is_none());
        assert_eq!(f["Detail__c"].as_str().map(|d| d.chars().count()), Some(DETAIL_CHARS));
        let mut exception = event(EventKind::Milestone(Milestone::Exception));
        exception.detail = Some(r#"{"reason":"recipient_absent","expected":"2026-08-09"}"#.into());
        assert_eq!(fields(&exception)["Detail__c"], "recipient_absent; expected 2026-08-09");
    }

    #[test]
    fn operation_enqueued_is_a_success_and_success_false_is_a_refusal() {
        let plain = br#"{"id":"e00xx0000000001AAA","success":true,"errors":[]}"#;
        assert_eq!(published(plain), Ok((Some("e00xx0000000001AAA".into()), "published".into())));
        let queued = br#"{"id":"e01xx0000000001AAA","success":true,"errors":[{"statusCode":"OPERATION_ENQUEUED","message":"e981b488-81f3-4fcc-bd6f-f7033c9d7ac3","fields":[]}]}"#;
        let (id, detail) = published(queued).expect("a success");
        assert_eq!(
            id.as_deref(),
            Some("e981b488-81f3-4fcc-bd6f-f7033c9d7ac3"),
            "the EventUuid identifies it"
        );
        assert!(detail.contains("queued"), "{detail}");
        let refused = br#"{"id":null,"success":false,"errors":[{"statusCode":"LIMIT_EXCEEDED","message":"x","fields":[]}]}"#;
        assert!(published(refused).is_err_and(|d| d.contains("LIMIT_EXCEEDED")));
        assert!(published(b"<html>").is_err());
    }
}
