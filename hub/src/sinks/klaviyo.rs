//! Klaviyo: one event per milestone on the customer's profile, so the shipper's flows (a
//! review request after delivery, an apology after an exception) start from Doorstep's
//! word rather than a carrier's guess.
//!
//! `POST https://a.klaviyo.com/api/events` with a private API key
//! (`Authorization: Klaviyo-API-Key pk_...`), the API revision the body is written for
//! (`revision: YYYY-MM-DD`, required by Klaviyo) and JSON:API media types
//! (`application/vnd.api+json`). The body is one `event` resource: its `metric` is named
//! per milestone (`Parcel Delivered` unless configured; Klaviyo makes the metric the first
//! time it sees the name, and flows trigger on it), its `profile` is the customer's e-mail
//! address, `time` is when the hub committed the milestone, and `properties` carry
//! `tracking_number`, `milestone` (or `alert`), `order_name` and `detail`. Klaviyo answers
//! 202 with no body once it validated the event: accepted for processing, not yet on the
//! profile.
//!
//! An event is sent only for a customer who consented to e-mail (a marketing system is no
//! place for a customer who did not): otherwise the row is skipped. Klaviyo creates the
//! profile when the address is new, but an event subscribes nobody to marketing.
//!
//! `unique_id` is the row's stable key, and Klaviyo records only the first event with a
//! given `unique_id` for the same profile and metric, so an event whose answer was lost
//! (a timeout, a hub stopped mid-send) is sent again safely. 429 comes with `Retry-After`
//! (and `RateLimit-Reset`, read when `Retry-After` is missing); other 4xx answers (an
//! invalid body, a revoked key) fail the row with Klaviyo's error in the log. Operations
//! alerts are off unless `alerts = true`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::registry::{MILESTONES, SinkConfigError};
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::model::Milestone;
use crate::notify::ratelimit::RateLimit;
use crate::notify::{Reply, classify_status};

/// The API revision the request body is written for, unless configured.
pub const DEFAULT_REVISION: &str = "2024-10-15";
/// Klaviyo's limit on a metric's name.
const MAX_METRIC_NAME: usize = 127;
/// JSON:API's media type, for the body and the answer.
const JSON_API: &str = "application/vnd.api+json";

/// The Klaviyo sink type.
pub const TYPE: SinkType = SinkType {
    kind: "klaviyo",
    // Creating events allows 350 per second and 3,500 per minute for the whole account,
    // which the shop's own integration shares: a third of the steady rate.
    rate: RateLimit { per_s: 20.0, burst: 100 },
    alerts: false,
    sample: r#"# name = "marketing"
# private_key = "file:/etc/doorstep/klaviyo.key"    # a private API key (pk_...) with events:write
# revision = "2024-10-15"                           # the API revision the events are written for
# metrics = { delivered = "Parcel Delivered", exception = "Parcel Delivery Exception" }   # per milestone (and alert)
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    private_key: String,
    #[serde(default = "default_revision")]
    revision: String,
    #[serde(default)]
    metrics: BTreeMap<String, String>,
}

fn default_revision() -> String {
    DEFAULT_REVISION.to_owned()
}

/// The metric an event is recorded under unless configured.
pub fn default_metric(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Milestone(Milestone::Created | Milestone::Dispatched) => "Parcel Dispatched",
        EventKind::Milestone(Milestone::OutForDelivery) => "Parcel Out for Delivery",
        EventKind::Milestone(Milestone::Nearby) => "Parcel Nearby",
        EventKind::Milestone(Milestone::Exception) => "Parcel Delivery Exception",
        EventKind::Milestone(Milestone::Delivered) => "Parcel Delivered",
        EventKind::Alert(_) => "Parcel Operations Alert",
    }
}

/// Whether `revision` has Klaviyo's shape, `YYYY-MM-DD` (a real date) with an optional
/// `.suffix` (`2024-10-15.pre`).
pub fn valid_revision(revision: &str) -> bool {
    let (date, suffix) = match revision.split_once('.') {
        Some((date, suffix)) => (date, Some(suffix)),
        None => (revision, None),
    };
    let shaped = date.len() == 10
        && date
            .bytes()
            .enumerate()
            .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    let suffix_ok = suffix
        .is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    shaped && suffix_ok && date.parse::<jiff::civil::Date>().is_ok()
}

/// The configured metric names, keyed by milestone name or `alert`, checked.
fn metric_names(
    b: &Build<'_>,
    given: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SinkConfigError> {
    let known = || {
        MILESTONES
            .map(crate::store::milestone_name)
            .into_iter()
            .chain(["alert"])
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (key, name) in &given {
        let is_milestone = MILESTONES.into_iter().any(|m| crate::store::milestone_name(m) == key);
        if !is_milestone && key != "alert" {
            return Err(b.invalid("metrics", format!("{key:?} is not one of: {}", known())));
        }
        if name.trim().is_empty() || name.chars().count() > MAX_METRIC_NAME {
            return Err(
                b.invalid("metrics", format!("{key}: a metric name of 1 to {MAX_METRIC_NAME} characters"))
            );
        }
    }
    Ok(given)
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    let base_url = b.base_url("https://a.klaviyo.com")?;
    if !valid_revision(&s.revision) {
        return Err(b.invalid("revision", "Klaviyo's API revision, YYYY-MM-DD (such as \"2024-10-15\")"));
    }
    let key = b.secret("private_key", &s.private_key)?;
    // The public key (site ID) is six characters; the server-side API takes only the
    // private key (pk_...).
    if key.len() == 6 && key.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(
            b.invalid("private_key", "a private API key (pk_...), not the six-character public site ID")
        );
    }
    let metrics = metric_names(b, s.metrics)?;
    Ok(Arc::new(Klaviyo {
        base_url,
        authorization: format!("Klaviyo-API-Key {key}"),
        revision: s.revision,
        metrics,
        timeout: b.request_timeout,
    }))
}

/// A configured Klaviyo account.
pub struct Klaviyo {
    base_url: String,
    authorization: String,
    revision: String,
    metrics: BTreeMap<String, String>,
    timeout: Duration,
}

impl std::fmt::Debug for Klaviyo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Klaviyo").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl Klaviyo {
    /// The metric `kind` is recorded under.
    fn metric(&self, kind: &EventKind) -> &str {
        let key = match kind {
            EventKind::Milestone(m) => crate::store::milestone_name(*m),
            EventKind::Alert(_) => "alert",
        };
        self.metrics.get(key).map_or_else(|| default_metric(kind), String::as_str)
    }
}

/// The JSON:API request body for one event of a consented customer (pure).
pub fn body(metric: &str, event: &SinkEvent, email: &str) -> serde_json::Value {
    let mut properties = serde_json::json!({ "tracking_number": event.tracking_number });
    match &event.kind {
        EventKind::Milestone(m) => properties["milestone"] = crate::store::milestone_name(*m).into(),
        EventKind::Alert(code) => properties["alert"] = code.as_str().into(),
    }
    if let Some(order) = &event.order_name {
        properties["order_name"] = order.as_str().into();
    }
    if let Some(detail) = &event.detail {
        properties["detail"] = detail.as_str().into();
    }
    let time =
        jiff::Timestamp::from_millisecond(event.occurred_ms).map(|t| t.to_string()).unwrap_or_default();
    serde_json::json!({
        "data": {
            "type": "event",
            "attributes": {
                "properties": properties,
                "time": time,
                "unique_id": event.key,
                "metric": { "data": { "type": "metric", "attributes": { "name": metric } } },
                "profile": { "data": { "type": "profile", "attributes": { "email": email } } },
            },
        },
    })
}

/// How long a 429 asks to wait: `Retry-After`, else the window's `RateLimit-Reset`.
fn wait(reply: &Reply) -> Option<Duration> {
    reply.retry_after.or_else(|| {
        let reset = reply.headers.get("ratelimit-reset")?.to_str().ok()?;
        reset.trim().parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// A refusal in words: Klaviyo's first JSON:API error (`code`, `detail`, the field it
/// points at), else the start of the body.
fn refusal(reply: &Reply) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let first = json.as_ref().and_then(|j| j["errors"].get(0));
    match first {
        Some(e) => {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            let mut out =
                format!("Klaviyo answered {}: {} {}", reply.status, text(&e["code"]), text(&e["detail"]));
            if let Some(pointer) = e["source"]["pointer"].as_str() {
                out.push_str(&format!(" (at {pointer})"));
            }
            out
        }
        None => {
            let text = String::from_utf8_lossy(&reply.body);
            format!("Klaviyo answered {}: {}", reply.status, text.chars().take(300).collect::<String>())
        }
    }
}

impl Klaviyo {
    async fn send(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        let Some(email) = &event.customer_email else {
            return Delivery::Skipped {
                detail: "the customer did not consent to e-mail: no profile to record it on".into(),
            };
        };
        let metric = self.metric(&event.kind);
        let body = serde_json::to_vec(&body(metric, event, email)).unwrap_or_default();
        let request = client
            .post(format!("{}/api/events", self.base_url))
            .timeout(self.timeout)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header("revision", &self.revision)
            .header(reqwest::header::CONTENT_TYPE, JSON_API)
            .header(reqwest::header::ACCEPT, JSON_API)
            .body(body);
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(result) => return Delivery::NotTaken(result),
        };
        if reply.status.is_success() {
            return Delivery::Accepted {
                vendor_id: None,
                thread: None,
                detail: format!("Klaviyo answered {}: {metric:?} accepted for processing", reply.status),
            };
        }
        Delivery::NotTaken(classify_status(reply.status, wait(&reply), refusal(&reply)))
    }
}

impl Sink for Klaviyo {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.send(client, event))
    }

    /// Klaviyo records one event per `unique_id` (the row's stable key), profile and
    /// metric.
    fn resend_safe(&self, _event: &SinkEvent) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::SendResult;

    fn event(kind: EventKind) -> SinkEvent {
        crate::sinks::test_event("marketing", kind)
    }

    #[test]
    fn the_event_is_one_json_api_resource_with_metric_profile_time_and_unique_id() {
        let e = event(EventKind::Milestone(Milestone::Delivered));
        let b = body("Parcel Delivered", &e, "ada@example.com");
        let a = &b["data"]["attributes"];
        assert_eq!(b["data"]["type"], "event");
        assert_eq!(a["metric"]["data"]["type"], "metric");
        assert_eq!(a["metric"]["data"]["attributes"]["name"], "Parcel Delivered");
        assert_eq!(a["profile"]["data"]["type"], "profile");
        assert_eq!(a["profile"]["data"]["attributes"]["email"], "ada@example.com");
        assert_eq!(a["time"], "2025-07-01T08:00:00Z");
        assert_eq!(a["unique_id"], e.key.as_str(), "the row's stable key: the same for every attempt");
        assert_eq!(a["properties"]["milestone"], "delivered");
        assert_eq!(a["properties"]["tracking_number"], "1Z999AA10123456784");
        assert_eq!(a["properties"]["order_name"], "#1001");
        assert!(a["properties"].get("detail").is_none(), "no detail, no property");
        let alert = body("x", &event(EventKind::Alert("carrier_returning".into())), "ada@example.com");
        assert_eq!(alert["data"]["attributes"]["properties"]["alert"], "carrier_returning");
    }

    #[test]
    fn each_milestone_has_its_metric_unless_configured() {
        let mut k = Klaviyo {
            base_url: String::new(),
            authorization: String::new(),
            revision: DEFAULT_REVISION.into(),
            metrics: BTreeMap::new(),
            timeout: Duration::from_secs(1),
        };
        let names: Vec<&str> = MILESTONES.map(|m| k.metric(&EventKind::Milestone(m))).to_vec();
        assert_eq!(
            names,
            [
                "Parcel Dispatched",
                "Parcel Out for Delivery",
                "Parcel Nearby",
                "Parcel Delivery Exception",
                "Parcel Delivered"
            ]
        );
        k.metrics.insert("delivered".into(), "Order Delivered".into());
        assert_eq!(k.metric(&EventKind::Milestone(Milestone::Delivered)), "Order Delivered");
        assert_eq!(k.metric(&EventKind::Alert("x".into())), "Parcel Operations Alert");
    }

    #[test]
    fn a_revision_is_a_real_date_with_an_optional_suffix() {
        assert!(valid_revision(DEFAULT_REVISION));
        assert!(valid_revision("2024-10-15.pre"));
        for bad in
            ["2024-13-01", "2024-02-30", "2024-1-15", "20241015", "2024-10-15.", "2024-10-15.Pre", "latest"]
        {
            assert!(!valid_revision(bad), "{bad}");
        }
    }

    #[test]
    fn a_refusal_names_klaviyos_error_and_a_429_waits_for_its_window() {
        let reply = |status: u16, headers: &[(&'static str, &'static str)], body: &str| Reply {
            status: reqwest::StatusCode::from_u16(status).expect("status"),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        reqwest::header::HeaderName::from_static(k),
                        reqwest::header::HeaderValue::from_static(v),
                    )
                })
                .collect(),
            body: body.as_bytes().to_vec(),
            retry_after: None,
        };
        let invalid = reply(
            400,
            &[],
            r#"{"errors":[{"id":"1","status":400,"code":"invalid","title":"Invalid input.","detail":"'email' is not a valid email address","source":{"pointer":"/data/attributes/profile/data/attributes/email"}}]}"#,
        );
        let text = refusal(&invalid);
        assert!(
            text.contains("400") && text.contains("invalid") && text.contains("/data/attributes/profile"),
            "{text}"
        );
        let result = classify_status(invalid.status, wait(&invalid), text);
        assert!(matches!(result, SendResult::Rejected { .. }), "a 400 is final");
        let limited = reply(429, &[("ratelimit-reset", "7")], r#"{"errors":[]}"#);
        assert_eq!(wait(&limited), Some(Duration::from_secs(7)));
    }
}
