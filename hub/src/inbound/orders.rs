//! Order events: what an order system says about an order's parcels, applied the way the
//! API applies its own calls (create the shipment, then "dispatched"), so a Shopify
//! fulfillment and a `POST /v1/shipments` + `/dispatched` pair leave the same state.
//!
//! Identity: a parcel is its tracking number; it knows its order (`order_id`, and the
//! order's display name). One order with several parcels is several shipments; the
//! order-level contacts reach each of them.

use std::collections::BTreeMap;

use doorstep_proto::TrackingNumber;
use serde::Serialize;

use super::{Outcome, apply_carrier};
use crate::carrier::content_key;
use crate::http::check_contact;
use crate::ingest::{ApplyError, Domain, Effects, apply_to_shipment};
use crate::model::{CanonicalStatus, Carrier, CarrierEvent};
use crate::reconcile::Input;
use crate::store::{Contact, ContactChannel, NewShipment, OrderFields, StoreTx};

/// An order system's news about one order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderEvent {
    /// The object the delivery is about (`fulfillment/123`, `order/456`): a stale retry is
    /// one older than the newest delivery already applied to the same object.
    pub object_key: String,
    /// The order system's order id.
    pub order_id: String,
    /// The order's name as the customer knows it (`#1001`).
    pub order_name: Option<String>,
    /// The parcels the event names.
    pub parcels: Vec<Parcel>,
    /// How to reach the customer, with their consent, from the order.
    pub contacts: BTreeMap<ContactChannel, Contact>,
    /// The customer's language, when the order has one.
    pub locale: Option<String>,
    /// When the parcels left (ms since the Unix epoch); `None` when the order system
    /// names them without shipping them yet.
    pub shipped_ms: Option<i64>,
}

/// One parcel of an order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parcel {
    /// Its tracking number.
    pub tracking_number: TrackingNumber,
    /// The carrier as the order system names it, reduced to a token (`ups`, `dhl-express`).
    pub carrier: Option<String>,
    /// A carrier-like status the order system keeps for it, when it has one.
    pub status: Option<StatusSignal>,
}

/// A status an order system reports for a parcel, mapped through its own table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusSignal {
    /// Which integration's table mapped it.
    pub carrier: Carrier,
    /// The normalized status.
    pub status: CanonicalStatus,
    /// The order system's own code.
    pub raw: String,
    /// When it was reported (ms since the Unix epoch).
    pub occurred_ms: i64,
}

/// Locale and time zone for shipments an order system creates (`[orders]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDefaults {
    /// Locale when the order has none.
    pub locale: String,
    /// IANA time zone (orders carry none).
    pub time_zone: String,
}

impl Default for OrderDefaults {
    fn default() -> Self {
        OrderDefaults { locale: "en".into(), time_zone: "UTC".into() }
    }
}

/// One verified delivery of an order event.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The source's slug.
    pub source: &'static str,
    /// The source's delivery id.
    pub delivery_id: &'a str,
    /// When the source triggered it.
    pub triggered_ms: i64,
    /// The raw body, kept for the record.
    pub raw: &'a [u8],
}

/// A carrier name reduced to what the API accepts for `carrier`: lower case, letters,
/// digits, `-` and `_` (`DHL Express` → `dhl-express`); `None` when nothing is left.
pub fn carrier_token(name: &str) -> Option<String> {
    let token: String = name
        .trim()
        .chars()
        .filter_map(|c| match c {
            c if c.is_ascii_alphanumeric() => Some(c.to_ascii_lowercase()),
            ' ' | '-' | '.' => Some('-'),
            '_' => Some('_'),
            _ => None,
        })
        .take(64)
        .collect();
    let token = token.trim_matches('-').to_owned();
    (!token.is_empty()).then_some(token)
}

/// A phone number as an order system writes it (`+49 170 1234-567`, `(0170) ...`) in
/// E.164, when it is one: a leading `+` and 8 to 15 digits once spaces, dashes, dots and
/// brackets are gone. A number without a country code cannot be texted safely: `None`.
pub fn e164(phone: &str) -> Option<String> {
    let kept: String = phone.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    check_contact(ContactChannel::Sms, &kept).is_ok().then_some(kept)
}

/// An order system's id (a JSON number or string) as text.
pub fn id_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => crate::carrier::non_blank(Some(s)).map(crate::carrier::truncate),
        _ => None,
    }
}

/// An e-mail address good enough to send to (as the API checks it).
pub fn email(address: &str) -> Option<String> {
    let address = address.trim();
    check_contact(ContactChannel::Email, address).is_ok().then(|| address.to_owned())
}

/// Applies an order event inside `tx`: recorded once per delivery id; stale if the same
/// object has a newer applied delivery; else each parcel's shipment is created (or its
/// order fields and contacts updated), "dispatched" is raised when the parcels left, and
/// the order system's status for a parcel goes in as a carrier-like signal.
pub fn apply_order(
    tx: &StoreTx<'_>,
    domain: &Domain,
    defaults: &OrderDefaults,
    delivery: &Delivery<'_>,
    order: &OrderEvent,
    now: i64,
) -> Result<(Outcome, Effects), ApplyError> {
    let newest = tx.newest_order_trigger(delivery.source, &order.object_key)?;
    let stale = newest.is_some_and(|newest| newest > delivery.triggered_ms);
    let normalized = serde_json::to_value(order).unwrap_or(serde_json::Value::Null);
    let new = tx.insert_order_event(&crate::store::NewOrderEvent {
        source: delivery.source,
        delivery_id: delivery.delivery_id,
        object_key: &order.object_key,
        triggered_ms: delivery.triggered_ms,
        raw_body: delivery.raw,
        normalized: &normalized,
        outcome: if stale { "stale" } else { "applied" },
        now_ms: now,
    })?;
    if !new {
        return Ok((Outcome::Duplicate, Effects::default()));
    }
    if stale {
        return Ok((Outcome::Stale, Effects::default()));
    }
    let mut effects = Effects::default();
    for parcel in &order.parcels {
        let fields = OrderFields {
            carrier: parcel.carrier.as_deref(),
            order_id: &order.order_id,
            order_name: order.order_name.as_deref(),
            source: delivery.source,
            contacts: &order.contacts,
        };
        let shipment = match tx.shipment_by_tracking(&parcel.tracking_number)? {
            Some(existing) => {
                tx.update_order_fields(existing.id, &fields, now)?;
                existing.id
            }
            None => {
                let new = NewShipment {
                    tracking_number: parcel.tracking_number.clone(),
                    carrier: parcel.carrier.clone(),
                    order_id: Some(order.order_id.clone()),
                    contacts: order.contacts.clone(),
                    locale: order.locale.clone().unwrap_or_else(|| defaults.locale.clone()),
                    time_zone: defaults.time_zone.clone(),
                };
                let id = tx.insert_shipment(&new, now)?;
                tx.update_order_fields(id, &fields, now)?;
                id
            }
        };
        if let Some(at_ms) = order.shipped_ms
            && let Some(shipment) = tx.shipment(shipment)?
        {
            let input = Input::Dispatched { at_ms, on_route: false };
            effects.merge(apply_to_shipment(tx, domain, &shipment, &input, now)?);
        }
        if let Some(signal) = &parcel.status {
            let event = CarrierEvent {
                carrier: signal.carrier,
                event_key: content_key(
                    signal.carrier,
                    &parcel.tracking_number,
                    &signal.raw,
                    signal.occurred_ms,
                ),
                tracking_number: parcel.tracking_number.clone(),
                status: signal.status,
                raw_status: signal.raw.clone(),
                occurred_ms: signal.occurred_ms,
                expected_delivery: None,
                message: None,
                received_ms: None,
            };
            let (_, applied) = apply_carrier(tx, domain, event, delivery.raw, now)?;
            effects.merge(applied);
        }
    }
    Ok((Outcome::Stored, effects))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_names_become_tokens() {
        assert_eq!(carrier_token("UPS").as_deref(), Some("ups"));
        assert_eq!(carrier_token("DHL Express").as_deref(), Some("dhl-express"));
        assert_eq!(carrier_token(" Royal Mail. ").as_deref(), Some("royal-mail"));
        assert_eq!(carrier_token("FedEx_Ground").as_deref(), Some("fedex_ground"));
        assert_eq!(carrier_token("Österreichische Post").as_deref(), Some("sterreichische-post"));
        assert_eq!(carrier_token("   "), None);
        assert_eq!(carrier_token("☃"), None);
    }

    #[test]
    fn phone_numbers_need_a_country_code() {
        assert_eq!(e164("+49 170 1234-567").as_deref(), Some("+491701234567"));
        assert_eq!(e164("+1 (613) 555-0100").as_deref(), Some("+16135550100"));
        assert_eq!(e164("0170 1234567"), None);
        assert_eq!(e164("555-555-SHIP"), None);
        assert_eq!(e164("+12"), None);
        assert_eq!(e164("+1234567890123456"), None);
    }

    #[test]
    fn email_addresses_are_checked_as_the_api_checks_them() {
        assert_eq!(email(" kim@example.com ").as_deref(), Some("kim@example.com"));
        assert_eq!(email("kim@localhost"), None);
        assert_eq!(email("@example.com"), None);
        assert_eq!(email("kim smith@example.com"), None);
    }
}
