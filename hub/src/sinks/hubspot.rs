//! HubSpot: each milestone on the customer's contact, so the shipper's own workflows (a
//! review request after delivery, an apology after an exception) start from Doorstep's
//! word. Two ways, by `mode`:
//!
//! - `event` (the default): a custom behavioural event per milestone. `POST
//!   /events/v3/send` with a private app's token (Bearer): `eventName` is the event's fully
//!   qualified name (`pe{HubID}_{name}`, from the event definition the shipper made in
//!   HubSpot), `email` associates it with the contact, `occurredAt` is when the hub
//!   committed the milestone, and `properties` carry `doorstep_milestone` (or
//!   `doorstep_alert`), `doorstep_tracking_number`, `doorstep_order_name` and
//!   `doorstep_detail`, which the event definition must declare. HubSpot answers 204.
//!   Custom events need an Enterprise tier. The event carries `uuid` derived from the
//!   row's stable key, but HubSpot documents no de-duplication on it, so an ambiguous send
//!   is not repeated.
//! - `property`: a contact property set to the milestone's name, for every tier (a
//!   workflow enrols on "property is updated"). `PATCH
//!   /crm/v3/objects/contacts/{email}?idProperty=email` with `{"properties":
//!   {"doorstep_status": "delivered", "doorstep_tracking_number": "..."}}` (both names
//!   configurable); HubSpot answers 200 with the contact. The properties must exist in
//!   the portal: HubSpot refuses an unknown one with 400 `PROPERTY_DOESNT_EXIST`, which
//!   fails the row. The PATCH creates no contact: 404 for an address HubSpot does not
//!   know skips the row, as the event mode skips a customer who did not consent (a
//!   marketing system's contacts are the shipper's to add). Setting a value is the same
//!   however often it is done, so an ambiguous update is repeated. The property holds the
//!   delivery's latest milestone, so an alert (if `alerts = true`) sets nothing and is
//!   skipped.
//!
//! Either way only for a customer who consented to e-mail (a marketing system is no place
//! for a contact who did not): otherwise the row is skipped. Operations alerts are off
//! unless `alerts = true`.

use std::sync::Arc;

use serde::Deserialize;

use super::registry::SinkConfigError;
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::notify::ratelimit::RateLimit;
use crate::notify::{Reply, classify_status};

/// The HubSpot sink type.
pub const TYPE: SinkType = SinkType {
    kind: "hubspot",
    // HubSpot's burst limit is 100 to 190 requests per 10 seconds, by tier.
    rate: RateLimit { per_s: 9.0, burst: 50 },
    alerts: false,
    sample: r#"# name = "crm"
# milestones = ["exception", "delivered"]
# access_token = "file:/etc/doorstep/hubspot.token"   # a private app's token
# mode = "event"                                     # or "property" (any tier): property = "doorstep_status" instead of event_name
# event_name = "pe1234567_doorstep_milestone"        # the event definition's fully qualified name
"#,
    build,
};

/// The contact property set to the milestone unless configured.
pub const DEFAULT_PROPERTY: &str = "doorstep_status";
/// The contact property set to the tracking number unless configured.
pub const DEFAULT_TRACKING_PROPERTY: &str = "doorstep_tracking_number";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    access_token: String,
    #[serde(default)]
    mode: Option<String>,
    event_name: Option<String>,
    property: Option<String>,
    tracking_property: Option<String>,
}

/// What the sink does with a milestone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Sends a custom behavioural event of this fully qualified name.
    Event {
        /// `pe{HubID}_{name}`.
        event_name: String,
    },
    /// Sets a contact property to the milestone's name.
    Property {
        /// The property holding the milestone.
        property: String,
        /// The property holding the tracking number, if any.
        tracking_property: Option<String>,
    },
}

/// Whether `name` can be a HubSpot property's internal name (`doorstep_status`).
fn property_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn mode(b: &Build<'_>, s: &Section) -> Result<Mode, SinkConfigError> {
    match s.mode.as_deref().unwrap_or("event") {
        "event" => {
            for (key, given) in [("property", &s.property), ("tracking_property", &s.tracking_property)] {
                if given.is_some() {
                    return Err(b.invalid(key, "is for mode = \"property\""));
                }
            }
            let Some(event_name) = s.event_name.clone() else {
                return Err(b.invalid("event_name", "is required (or mode = \"property\")"));
            };
            let qualified = event_name.strip_prefix("pe").and_then(|rest| rest.split_once('_')).is_some_and(
                |(hub, name)| !hub.is_empty() && hub.bytes().all(|c| c.is_ascii_digit()) && !name.is_empty(),
            );
            if !qualified {
                return Err(b.invalid("event_name", "the event's fully qualified name, pe{HubID}_{name}"));
            }
            Ok(Mode::Event { event_name })
        }
        "property" => {
            if s.event_name.is_some() {
                return Err(b.invalid("event_name", "is for mode = \"event\""));
            }
            let property = s.property.clone().unwrap_or_else(|| DEFAULT_PROPERTY.to_owned());
            if !property_name(&property) {
                return Err(b.invalid("property", "a contact property's internal name (a-z, 0-9, _)"));
            }
            let tracking =
                s.tracking_property.clone().unwrap_or_else(|| DEFAULT_TRACKING_PROPERTY.to_owned());
            // An empty name sends no tracking number.
            if !tracking.is_empty() && !property_name(&tracking) {
                return Err(
                    b.invalid("tracking_property", "a contact property's internal name, or \"\" for none")
                );
            }
            Ok(Mode::Property { property, tracking_property: Some(tracking).filter(|t| !t.is_empty()) })
        }
        other => Err(b.invalid("mode", format!("{other:?}: \"event\" or \"property\""))),
    }
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    let base_url = b.base_url("https://api.hubapi.com")?;
    let mode = mode(b, &s)?;
    let token = b.secret("access_token", &s.access_token)?;
    Ok(Arc::new(HubSpot {
        base_url,
        authorization: format!("Bearer {token}"),
        mode,
        timeout: b.request_timeout,
    }))
}

/// A configured HubSpot account.
pub struct HubSpot {
    base_url: String,
    authorization: String,
    mode: Mode,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for HubSpot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpot").field("mode", &self.mode).finish_non_exhaustive()
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

/// The contact update for one milestone (pure): the property set to the milestone's
/// name, and the tracking number's property when configured.
pub fn property_body(
    property: &str,
    tracking_property: Option<&str>,
    event: &SinkEvent,
) -> Option<serde_json::Value> {
    let EventKind::Milestone(m) = &event.kind else { return None };
    let mut properties = serde_json::Map::new();
    properties.insert(property.to_owned(), crate::store::milestone_name(*m).into());
    if let Some(tracking) = tracking_property {
        properties.insert(tracking.to_owned(), event.tracking_number.as_str().into());
    }
    Some(serde_json::json!({ "properties": properties }))
}

/// `{base}/crm/v3/objects/contacts/{email}?idProperty=email`, the address encoded as one
/// path segment.
fn contact_url(base_url: &str, email: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(base_url).ok()?;
    url.path_segments_mut().ok()?.pop_if_empty().extend(["crm", "v3", "objects", "contacts", email]);
    url.query_pairs_mut().append_pair("idProperty", "email");
    Some(url)
}

/// A refusal in words: HubSpot's `category` and `message` (else the start of the body),
/// and what to do about a property the portal does not have.
fn said(reply: &Reply) -> String {
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let text = match (json["category"].as_str(), json["message"].as_str()) {
        (Some(category), Some(message)) => format!("{category}: {message}"),
        _ => String::from_utf8_lossy(&reply.body).into_owned(),
    };
    let mut out =
        format!("HubSpot answered {}: {}", reply.status, text.chars().take(300).collect::<String>());
    if text.contains("PROPERTY_DOESNT_EXIST") {
        out.push_str(
            " (create the contact property in HubSpot, or name an existing one in the sink's entry)",
        );
    }
    out
}

impl HubSpot {
    async fn send(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        let Some(email) = &event.customer_email else {
            return Delivery::Skipped {
                detail: "the customer did not consent to e-mail: no contact to tell".into(),
            };
        };
        let request = match &self.mode {
            Mode::Event { event_name } => {
                client.post(format!("{}/events/v3/send", self.base_url)).json(&body(event_name, event, email))
            }
            Mode::Property { property, tracking_property } => {
                let Some(update) = property_body(property, tracking_property.as_deref(), event) else {
                    return Delivery::Skipped {
                        detail: format!("{property} holds the delivery's milestone: an alert sets nothing"),
                    };
                };
                let Some(url) = contact_url(&self.base_url, email) else {
                    return Delivery::NotTaken(crate::notify::SendResult::Rejected {
                        detail: format!("no contact URL under {}", self.base_url),
                    });
                };
                client.patch(url).json(&update)
            }
        };
        let request =
            request.timeout(self.timeout).header(reqwest::header::AUTHORIZATION, &self.authorization);
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(result) => return Delivery::NotTaken(result),
        };
        if reply.status.is_success() {
            #[derive(Deserialize)]
            struct Contact {
                id: String,
            }
            let id = serde_json::from_slice::<Contact>(&reply.body).ok().map(|c| c.id);
            let detail = match (&self.mode, &id) {
                (Mode::Property { property, .. }, Some(id)) => format!("{property} set on contact {id}"),
                _ => format!("HubSpot answered {}", reply.status),
            };
            return Delivery::Accepted { vendor_id: id, thread: None, detail };
        }
        let not_found = reply.status == reqwest::StatusCode::NOT_FOUND
            && serde_json::from_slice::<serde_json::Value>(&reply.body)
                .is_ok_and(|v| v["category"] == "OBJECT_NOT_FOUND");
        if matches!(self.mode, Mode::Property { .. }) && not_found {
            return Delivery::Skipped {
                detail: "HubSpot has no contact with the customer's e-mail address (Doorstep creates none)"
                    .into(),
            };
        }
        Delivery::NotTaken(classify_status(reply.status, reply.retry_after, said(&reply)))
    }
}

impl Sink for HubSpot {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.send(client, event))
    }

    /// Setting a property is the same however often it is done; an event's `uuid` is not
    /// documented as deduplicated.
    fn resend_safe(&self, _event: &SinkEvent) -> bool {
        matches!(self.mode, Mode::Property { .. })
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

    fn event(kind: EventKind) -> SinkEvent {
        SinkEvent { order_name: None, ..crate::sinks::test_event("crm", kind) }
    }

    #[test]
    fn the_property_update_sets_the_milestone_and_the_tracking_number_and_an_alert_sets_nothing() {
        let delivered = event(EventKind::Milestone(Milestone::Delivered));
        let update = property_body("doorstep_status", Some("doorstep_tracking_number"), &delivered);
        assert_eq!(
            update,
            Some(serde_json::json!({ "properties": {
                "doorstep_status": "delivered", "doorstep_tracking_number": "1Z999AA10123456784"
            }}))
        );
        let update = property_body("parcel_state", None, &delivered).expect("a milestone");
        assert_eq!(update, serde_json::json!({ "properties": { "parcel_state": "delivered" } }));
        assert_eq!(property_body("doorstep_status", None, &event(EventKind::Alert("x".into()))), None);
    }

    #[test]
    fn the_contact_is_addressed_by_its_email_in_one_path_segment() {
        let url = contact_url("https://api.hubapi.com", "ada+parcels@example.com").expect("url");
        assert_eq!(url.path(), "/crm/v3/objects/contacts/ada+parcels@example.com");
        assert_eq!(url.query(), Some("idProperty=email"));
        let url = contact_url("http://127.0.0.1:9/", "a/b@example.com").expect("url");
        assert_eq!(url.path(), "/crm/v3/objects/contacts/a%2Fb@example.com");
    }

    #[test]
    fn each_mode_takes_its_own_keys_and_only_the_property_update_is_resent() {
        let build = |keys: &str| {
            let text = format!("[[sinks]]\ntype = \"hubspot\"\naccess_token = \"t\"\n{keys}");
            let table: toml::Table = toml::from_str(&text).expect("toml");
            let entries: Vec<toml::Table> = table["sinks"]
                .as_array()
                .expect("array")
                .iter()
                .map(|v| v.as_table().expect("t").clone())
                .collect();
            crate::sinks::registry::build(&entries)
        };
        let event_mode = build("event_name = \"pe1_doorstep\"").expect("event mode by default");
        let property_mode = build("mode = \"property\"").expect("property mode, default names");
        let delivered = event(EventKind::Milestone(Milestone::Delivered));
        assert!(!event_mode.all()[0].sink.resend_safe(&delivered));
        assert!(property_mode.all()[0].sink.resend_safe(&delivered));
        assert!(build("mode = \"property\"\nproperty = \"status\"\ntracking_property = \"\"").is_ok());
        for wrong in [
            "",
            "event_name = \"doorstep_milestone\"",
            "event_name = \"pe1_x\"\nproperty = \"doorstep_status\"",
            "mode = \"property\"\nevent_name = \"pe1_x\"",
            "mode = \"property\"\nproperty = \"Doorstep Status\"",
            "mode = \"contact\"",
        ] {
            assert!(build(wrong).is_err(), "{wrong}");
        }
    }
}
