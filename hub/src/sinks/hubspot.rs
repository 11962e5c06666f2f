//! HubSpot: a custom behavioural event per milestone, on the customer's contact, so the
//! shipper's own workflows (a review request after delivery, an apology after an
//! exception) start from Doorstep's word.
//!
//! `POST /events/v3/send` with a private app's token (Bearer): `eventName` is the event's
//! fully qualified name (`pe{HubID}_{name}`, from the event definition the shipper made in
//! HubSpot), `email` associates it with the contact, `occurredAt` is when the hub
//! committed the milestone, and `properties` carry `doorstep_milestone` (or
//! `doorstep_alert`), `doorstep_tracking_number`, `doorstep_order_name` and
//! `doorstep_detail`, which the event definition must declare. HubSpot answers 204.
//!
//! An event is sent only for a customer who consented to e-mail (a marketing system is no
//! place for a contact who did not): otherwise the row is skipped. It carries `uuid`
//! derived from the row's stable key, but HubSpot documents no de-duplication on it, so an
//! ambiguous send is not repeated. Operations alerts are off unless `alerts = true`.
//! Custom events need an Enterprise tier; the contact-property update
//! (`PATCH /crm/v3/objects/contacts/{email}?idProperty=email`) is not built yet.

use std::sync::Arc;

use serde::Deserialize;

use super::registry::SinkConfigError;
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::notify::classify_status;
use crate::notify::ratelimit::RateLimit;

/// The HubSpot sink type.
pub const TYPE: SinkType = SinkType {
    kind: "hubspot",
    // HubSpot's burst limit is 100 to 190 requests per 10 seconds, by tier.
    rate: RateLimit { per_s: 9.0, burst: 50 },
    alerts: false,
    sample: r#"# name = "crm"
# milestones = ["exception", "delivered"]
# access_token = "file:/etc/doorstep/hubspot.token"   # a private app's token
# event_name = "pe1234567_doorstep_milestone"        # the event definition's fully qualified name
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    access_token: String,
    event_name: String,
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    let base_url = b.base_url("https://api.hubapi.com")?;
    let qualified =
        s.event_name.strip_prefix("pe").and_then(|rest| rest.split_once('_')).is_some_and(|(hub, name)| {
            !hub.is_empty() && hub.bytes().all(|c| c.is_ascii_digit()) && !name.is_empty()
        });
    if !qualified {
        return Err(b.invalid("event_name", "the event's fully qualified name, pe{HubID}_{name}"));
    }
    let token = b.secret("access_token", &s.access_token)?;
    Ok(Arc::new(HubSpot {
        base_url,
        authorization: format!("Bearer {token}"),
        event_name: s.event_name,
        timeout: b.request_timeout,
    }))
}

/// A configured HubSpot account.
pub struct HubSpot {
    base_url: String,
    authorization: String,
    event_name: String,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for HubSpot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpot").field("event_name", &self.event_name).finish_non_exhaustive()
    }
}

/// A UUID-shaped identifier derived from the row's stable key (the same for every attempt).
pub fn uuid(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    // RFC 9562 version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The request body for one event of a consented customer (pure).
pub fn body(event_name: &str, event: &SinkEvent, email: &str) -> serde_json::Value {
    let mut properties = serde_json::json!({ "doorstep_tracking_number": event.tracking_number });
    match &event.kind {
        EventKind::Milestone(m) => properties["doorstep_milestone"] = crate::store::milestone_name(*m).into(),
        EventKind::Alert(code) => properties["doorstep_alert"] = code.as_str().into(),
    }
    if let Some(order) = &event.order_name {
        properties["doorstep_order_name"] = order.as_str().into();
    }
    if let Some(detail) = &event.detail {
        properties["doorstep_detail"] = detail.as_str().into();
    }
    let occurred =
        jiff::Timestamp::from_millisecond(event.occurred_ms).map(|t| t.to_string()).unwrap_or_default();
    serde_json::json!({
        "eventName": event_name,
        "email": email,
        "occurredAt": occurred,
        "uuid": uuid(&event.key),
        "properties": properties,
    })
}

impl HubSpot {
    async fn send(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        let Some(email) = &event.customer_email else {
            return Delivery::Skipped {
                detail: "the customer did not consent to e-mail: no contact to tell".into(),
            };
        };
        let request = client
            .post(format!("{}/events/v3/send", self.base_url))
            .timeout(self.timeout)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .json(&body(&self.event_name, event, email));
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(result) => return Delivery::NotTaken(result),
        };
        if reply.status.is_success() {
            return Delivery::Accepted {
                vendor_id: None,
                thread: None,
                detail: format!("HubSpot answered {}", reply.status),
            };
        }
        let text = String::from_utf8_lossy(&reply.body);
        let detail =
            format!("HubSpot answered {}: {}", reply.status, text.chars().take(300).collect::<String>());
        Delivery::NotTaken(classify_status(reply.status, reply.retry_after, detail))
    }
}

impl Sink for HubSpot {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.send(client, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Milestone;

    #[test]
    fn the_event_names_the_milestone_and_parcel_and_its_uuid_is_stable() {
        let event = SinkEvent {
            row_id: 1,
            key: "doorstep:crm:1Z999AA10123456784:milestone:delivered".into(),
            sink: "crm".into(),
            tracking_number: "1Z999AA10123456784".into(),
            fleet: None,
            kind: EventKind::Milestone(Milestone::Delivered),
            detail: None,
            occurred_ms: 1_751_356_800_000,
            order_name: Some("#1001".into()),
            customer_email: Some("ada@example.com".into()),
            thread: None,
        };
        let b = body("pe1234567_doorstep_milestone", &event, "ada@example.com");
        assert_eq!(b["occurredAt"], "2025-07-01T08:00:00Z");
        assert_eq!(b["properties"]["doorstep_milestone"], "delivered");
        assert_eq!(b["properties"]["doorstep_order_name"], "#1001");
        let id = uuid(&event.key);
        assert_eq!(id, uuid(&event.key));
        assert_eq!((id.len(), &id[14..15], id.matches('-').count()), (36, "8", 4));
        assert_ne!(id, uuid("doorstep:crm:1Z999AA10123456784:milestone:exception"));
    }
}
