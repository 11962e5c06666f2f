//! Shopify: the shop's fulfillments become shipments and raise "dispatched".
//!
//! Topics `fulfillments/create` and `fulfillments/update` (the body is a fulfillment) and
//! `orders/fulfilled` (the body is the order, with its fulfillments). Shopify signs the raw
//! body with the app's client secret (`X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256), names
//! each delivery (`X-Shopify-Webhook-Id`, the same on every retry: the dedupe key) and
//! says when it triggered it (`X-Shopify-Triggered-At`). Shopify retries a failed delivery
//! with its *original* payload for hours, so a retry can arrive after a newer update of the
//! same fulfillment: it is stale and kept only for the record.
//!
//! What Doorstep reads:
//! - each tracking number of a fulfillment is a parcel, its carrier from
//!   `tracking_company`; a fulfillment whose `status` is `success` has left (at its
//!   `created_at`); `pending`/`open` ones create the shipments without dispatching them;
//!   cancelled, failed or errored ones are ignored;
//! - `shipment_status` is a carrier-like signal through [`SHIPMENT_STATUS`];
//! - contacts: the order's e-mail address, consented (Shopify's own shipping confirmation
//!   goes there; the customer gave it for this order); the phone only from an order whose
//!   customer subscribed to SMS (`sms_marketing_consent.state = "subscribed"`), never from
//!   a fulfillment's destination, which carries no consent; the order's `customer_locale`.

use std::collections::BTreeMap;

use doorstep_proto::TrackingNumber;
use serde::Deserialize;
use serde_json::Value;

use super::orders::{self, OrderEvent, Parcel, StatusSignal};
use super::{Inbound, Received, Refused, SharedSecret, Source, SourceError, one_header};
use crate::carrier::{self, Headers, lookup, non_blank, parse_time_ms};
use crate::model::{CanonicalStatus, Carrier};
use crate::store::{Contact, ContactChannel};

/// Shopify's signature header.
pub const SIGNATURE_HEADER: &str = "X-Shopify-Hmac-Sha256";
/// The topic header.
pub const TOPIC_HEADER: &str = "X-Shopify-Topic";
/// The delivery id header (the same on every retry).
pub const WEBHOOK_ID_HEADER: &str = "X-Shopify-Webhook-Id";
/// When Shopify triggered the delivery.
pub const TRIGGERED_AT_HEADER: &str = "X-Shopify-Triggered-At";

/// Shopify's fulfillment `shipment_status` values, normalized. `picked_up` is the customer
/// collecting it at a pickup point (the carrier's pickup is `carrier_picked_up`);
/// `delayed` carries no new date, so it is "in transit" (a delay message needs a date).
pub const SHIPMENT_STATUS: &[(&str, CanonicalStatus)] = &[
    ("label_printed", CanonicalStatus::LabelCreated),
    ("label_purchased", CanonicalStatus::LabelCreated),
    ("confirmed", CanonicalStatus::Accepted),
    ("carrier_picked_up", CanonicalStatus::Accepted),
    ("in_transit", CanonicalStatus::InTransit),
    ("delayed", CanonicalStatus::InTransit),
    ("out_for_delivery", CanonicalStatus::OutForDelivery),
    ("attempted_delivery", CanonicalStatus::AttemptFailed),
    ("ready_for_pickup", CanonicalStatus::AvailableForPickup),
    ("picked_up", CanonicalStatus::Delivered),
    ("delivered", CanonicalStatus::Delivered),
    ("failure", CanonicalStatus::Exception),
];

/// The Shopify source, with the app's client secret.
#[derive(Debug)]
pub struct Shopify(SharedSecret);

impl Shopify {
    /// A source checking signatures with `secret`.
    pub fn new(secret: &str) -> Result<Self, SourceError> {
        SharedSecret::new("orders.shopify", secret).map(Shopify)
    }
}

impl Source for Shopify {
    fn slug(&self) -> &'static str {
        "shopify"
    }

    fn receive(&self, headers: &dyn Headers, body: &[u8], _now_ms: i64) -> Result<Received, Refused> {
        self.0.verify(headers, SIGNATURE_HEADER, body)?;
        let delivery_id = one_header(headers, WEBHOOK_ID_HEADER).ok_or_else(|| {
            Refused::malformed("missing_delivery_id", format!("no {WEBHOOK_ID_HEADER} header"))
        })?;
        let triggered_ms = match one_header(headers, TRIGGERED_AT_HEADER) {
            None => None,
            Some(text) => Some(parse_time_ms(text).ok_or_else(|| {
                Refused::malformed(
                    "bad_time",
                    format!("{TRIGGERED_AT_HEADER} {text:?} is not a date and time"),
                )
            })?),
        };
        let item = parse(one_header(headers, TOPIC_HEADER).unwrap_or(""), body)?;
        Ok(Received { delivery_id: delivery_id.to_owned(), triggered_ms, item })
    }
}

#[derive(Debug, Deserialize)]
struct Fulfillment {
    id: Option<Value>,
    order_id: Option<Value>,
    name: Option<String>,
    status: Option<String>,
    shipment_status: Option<String>,
    tracking_company: Option<String>,
    tracking_number: Option<String>,
    #[serde(default)]
    tracking_numbers: Option<Vec<Option<String>>>,
    email: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Order {
    id: Option<Value>,
    name: Option<String>,
    email: Option<String>,
    contact_email: Option<String>,
    phone: Option<String>,
    customer_locale: Option<String>,
    customer: Option<Customer>,
    shipping_address: Option<Address>,
    #[serde(default)]
    fulfillments: Option<Vec<Fulfillment>>,
}

#[derive(Debug, Deserialize)]
struct Customer {
    phone: Option<String>,
    sms_marketing_consent: Option<SmsConsent>,
}

#[derive(Debug, Deserialize)]
struct SmsConsent {
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Address {
    phone: Option<String>,
}

/// Parses a verified body of `topic`.
pub fn parse(topic: &str, body: &[u8]) -> Result<Inbound, Refused> {
    match topic {
        "fulfillments/create" | "fulfillments/update" => {
            let f: Fulfillment = json(body)?;
            let mut contacts = BTreeMap::new();
            if let Some(email) = f.email.as_deref().and_then(orders::email) {
                contacts.insert(ContactChannel::Email, Contact { recipient: email, consent: true });
            }
            fulfillment_event(&f, None, contacts, None)
        }
        "orders/fulfilled" => {
            let order: Order = json(body)?;
            order_event(&order)
        }
        _ => Ok(Inbound::Ignored("topic_not_used")),
    }
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| Refused::malformed("malformed", format!("malformed Shopify payload: {e}")))
}

fn order_event(order: &Order) -> Result<Inbound, Refused> {
    let order_id = orders::id_text(order.id.as_ref())
        .ok_or_else(|| Refused::malformed("missing_field", "order has no id"))?;
    let mut contacts = BTreeMap::new();
    let email = order.email.as_deref().or(order.contact_email.as_deref()).and_then(orders::email);
    if let Some(email) = email {
        contacts.insert(ContactChannel::Email, Contact { recipient: email, consent: true });
    }
    let customer = order.customer.as_ref();
    let subscribed = customer
        .and_then(|c| c.sms_marketing_consent.as_ref())
        .and_then(|c| c.state.as_deref())
        .is_some_and(|s| s.eq_ignore_ascii_case("subscribed"));
    let phone = [
        order.phone.as_deref(),
        customer.and_then(|c| c.phone.as_deref()),
        order.shipping_address.as_ref().and_then(|a| a.phone.as_deref()),
    ]
    .into_iter()
    .flatten()
    .find_map(orders::e164);
    if subscribed && let Some(phone) = phone {
        contacts.insert(ContactChannel::Sms, Contact { recipient: phone, consent: true });
    }
    let locale = order.customer_locale.as_deref().and_then(locale_token);
    let mut merged: Option<OrderEvent> = None;
    for f in order.fulfillments.iter().flatten() {
        let Inbound::Order(event) = fulfillment_event(f, Some(&order_id), contacts.clone(), locale.clone())?
        else {
            continue;
        };
        match &mut merged {
            None => merged = Some(event),
            Some(all) => {
                all.parcels.extend(event.parcels);
                all.shipped_ms = match (all.shipped_ms, event.shipped_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
    Ok(match merged {
        Some(mut event) => {
            event.object_key = format!("order/{order_id}");
            event.order_name = order.name.as_deref().and_then(|n| non_blank(Some(n))).map(carrier::truncate);
            Inbound::Order(event)
        }
        None => Inbound::Ignored("no_shipped_parcel"),
    })
}

fn locale_token(text: &str) -> Option<String> {
    let ok = !text.is_empty()
        && text.len() <= 35
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| text.to_owned())
}

fn fulfillment_event(
    f: &Fulfillment,
    order_id: Option<&str>,
    contacts: BTreeMap<ContactChannel, Contact>,
    locale: Option<String>,
) -> Result<Inbound, Refused> {
    let status = f.status.as_deref().unwrap_or("success").to_ascii_lowercase();
    let shipped = match status.as_str() {
        "success" => true,
        "pending" | "open" => false,
        _ => return Ok(Inbound::Ignored("fulfillment_not_shipped")),
    };
    let id = orders::id_text(f.id.as_ref())
        .ok_or_else(|| Refused::malformed("missing_field", "fulfillment has no id"))?;
    let order_id = match order_id {
        Some(id) => id.to_owned(),
        None => orders::id_text(f.order_id.as_ref())
            .ok_or_else(|| Refused::malformed("missing_field", "fulfillment has no order_id"))?,
    };
    let time = |field: &'static str, text: Option<&str>| -> Result<Option<i64>, Refused> {
        match non_blank(text) {
            None => Ok(None),
            Some(t) => parse_time_ms(t).map(Some).ok_or_else(|| {
                Refused::malformed("bad_time", format!("fulfillment {field} {t:?} is not a date and time"))
            }),
        }
    };
    let created = time("created_at", f.created_at.as_deref())?;
    let updated = time("updated_at", f.updated_at.as_deref())?.or(created);
    let carrier = f.tracking_company.as_deref().and_then(orders::carrier_token);
    let status_signal = non_blank(f.shipment_status.as_deref()).and_then(|raw| {
        Some(StatusSignal {
            carrier: Carrier::Shopify,
            status: lookup(SHIPMENT_STATUS, raw).unwrap_or(CanonicalStatus::Unknown),
            raw: carrier::truncate(raw),
            occurred_ms: updated?,
        })
    });
    let mut numbers: Vec<&str> = f.tracking_numbers.iter().flatten().flatten().map(String::as_str).collect();
    numbers.extend(f.tracking_number.as_deref());
    let mut parcels: Vec<Parcel> = Vec::new();
    for text in numbers {
        let Ok(tracking_number) = TrackingNumber::normalize(text) else {
            // One unusable number does not sink the parcels beside it; none at all is
            // refused below.
            continue;
        };
        if parcels.iter().any(|p| p.tracking_number == tracking_number) {
            continue;
        }
        parcels.push(Parcel { tracking_number, carrier: carrier.clone(), status: status_signal.clone() });
    }
    if parcels.is_empty() {
        return Ok(Inbound::Ignored("no_tracking_number"));
    }
    Ok(Inbound::Order(OrderEvent {
        object_key: format!("fulfillment/{id}"),
        order_id,
        order_name: f.name.as_deref().and_then(|n| non_blank(Some(n))).map(|n| {
            // A fulfillment is named after its order: `#1001.1` is order `#1001`.
            carrier::truncate(n.rsplit_once('.').map_or(n, |(order, _)| order))
        }),
        parcels,
        contacts,
        locale,
        shipped_ms: match (shipped, created.or(updated)) {
            (false, _) => None,
            (true, Some(at)) => Some(at),
            (true, None) => {
                return Err(Refused::malformed("missing_field", "a shipped fulfillment has no created_at"));
            }
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::test_support::{headers, ms, test_data};

    const SECRET: &str = "shpss_test_client_secret";

    fn signed(topic: &str, body: &[u8], id: &str, at: &str) -> Vec<(String, String)> {
        let sig = doorstep_testkit::webhooks::shopify(SECRET, body);
        headers(&[
            ("X-Shopify-Topic", topic),
            ("X-Shopify-Hmac-Sha256", &sig),
            ("X-Shopify-Shop-Domain", "doorstep-demo.myshopify.com"),
            ("X-Shopify-Webhook-Id", id),
            ("X-Shopify-Triggered-At", at),
            ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
        ])
    }

    fn order(item: Inbound) -> OrderEvent {
        match item {
            Inbound::Order(order) => order,
            other => panic!("not an order event: {other:?}"),
        }
    }

    #[test]
    fn a_fulfillment_names_its_parcels_carrier_and_order() {
        let body = test_data("shopify_fulfillments_create.json");
        let source = Shopify::new(SECRET).expect("secret");
        let h = signed(
            "fulfillments/create",
            body.as_bytes(),
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            "2026-12-01T14:12:31.220Z",
        );
        let got = source.receive(&h, body.as_bytes(), 0).expect("genuine");
        assert_eq!(got.delivery_id, "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043");
        assert_eq!(got.triggered_ms, Some(ms("2026-12-01T14:12:31.220Z")));
        let event = order(got.item);
        assert_eq!(event.object_key, "fulfillment/4567890123");
        assert_eq!(event.order_id, "820982911946154508");
        assert_eq!(event.order_name.as_deref(), Some("#1001"));
        let numbers: Vec<&str> = event.parcels.iter().map(|p| p.tracking_number.as_str()).collect();
        assert_eq!(
            numbers,
            ["1Z999AA10123456784", "1Z999AA10123456795"],
            "tracking_number repeats the first"
        );
        assert!(event.parcels.iter().all(|p| p.carrier.as_deref() == Some("ups") && p.status.is_none()));
        assert_eq!(event.shipped_ms, Some(ms("2026-12-01T14:12:30Z")));
        // The e-mail, consented; the destination's phone carries no consent (and is no number).
        assert_eq!(event.contacts.len(), 1);
        assert_eq!(
            event.contacts[&ContactChannel::Email],
            Contact { recipient: "jon@example.com".into(), consent: true }
        );
        assert_eq!(event.locale, None);
    }

    #[test]
    fn an_order_brings_its_locale_and_an_sms_contact_only_with_sms_consent() {
        let body = test_data("shopify_orders_fulfilled.json");
        let event = order(parse("orders/fulfilled", body.as_bytes()).expect("parsed"));
        assert_eq!(event.object_key, "order/820982911946154508");
        assert_eq!(event.order_name.as_deref(), Some("#1002"));
        assert_eq!(event.locale.as_deref(), Some("de-DE"));
        assert_eq!(
            event.contacts[&ContactChannel::Sms],
            Contact { recipient: "+491701234567".into(), consent: true }
        );
        let parcel = &event.parcels[0];
        assert_eq!(parcel.tracking_number.as_str(), "JD014600006281230704");
        assert_eq!(parcel.carrier.as_deref(), Some("dhl-express"));
        let status = parcel.status.as_ref().expect("shipment_status");
        assert_eq!((status.status, status.raw.as_str()), (CanonicalStatus::Accepted, "confirmed"));

        let unsubscribed = body.replace("\"state\": \"subscribed\"", "\"state\": \"unsubscribed\"");
        let event = order(parse("orders/fulfilled", unsubscribed.as_bytes()).expect("parsed"));
        assert!(!event.contacts.contains_key(&ContactChannel::Sms), "{:?}", event.contacts);
        assert!(event.contacts.contains_key(&ContactChannel::Email));
    }

    #[test]
    fn every_shipment_status_maps_and_unknown_ones_stay_raw() {
        for (raw, status) in SHIPMENT_STATUS {
            let body = test_data("shopify_fulfillments_create.json")
                .replace("\"shipment_status\": null", &format!("\"shipment_status\": \"{raw}\""));
            let event = order(parse("fulfillments/update", body.as_bytes()).expect("parsed"));
            let signal = event.parcels[0].status.clone().expect("status");
            assert_eq!(
                (signal.status, signal.raw.as_str(), signal.carrier),
                (*status, *raw, Carrier::Shopify)
            );
        }
        let body = test_data("shopify_fulfillments_create.json")
            .replace("\"shipment_status\": null", "\"shipment_status\": \"teleported\"");
        let event = order(parse("fulfillments/update", body.as_bytes()).expect("parsed"));
        assert_eq!(event.parcels[0].status.as_ref().map(|s| s.status), Some(CanonicalStatus::Unknown));
    }

    #[test]
    fn unshipped_cancelled_and_untracked_fulfillments_and_other_topics() {
        let body = test_data("shopify_fulfillments_create.json");
        let pending = body.replace("\"status\": \"success\"", "\"status\": \"pending\"");
        let event = order(parse("fulfillments/create", pending.as_bytes()).expect("parsed"));
        assert_eq!((event.parcels.len(), event.shipped_ms), (2, None), "created, not dispatched");
        for status in ["cancelled", "error", "failure"] {
            let b = body.replace("\"status\": \"success\"", &format!("\"status\": \"{status}\""));
            assert_eq!(
                parse("fulfillments/update", b.as_bytes()),
                Ok(Inbound::Ignored("fulfillment_not_shipped"))
            );
        }
        let untracked = body
            .replace("\"tracking_number\": \"1Z999AA10123456784\"", "\"tracking_number\": null")
            .replace("[\"1Z999AA10123456784\", \"1Z999AA10123456795\"]", "[]");
        assert_eq!(
            parse("fulfillments/create", untracked.as_bytes()),
            Ok(Inbound::Ignored("no_tracking_number"))
        );
        assert_eq!(parse("orders/create", body.as_bytes()), Ok(Inbound::Ignored("topic_not_used")));
        let refused = parse("fulfillments/create", b"{\"id\": 1, \"order_id\": 2, \"created_at\": \"soon\", \"tracking_number\": \"1Z999AA10123456784\"}");
        assert_eq!(refused.map_err(|e| e.reason), Err("bad_time"));
        assert_eq!(parse("fulfillments/create", b"[1]").map_err(|e| e.reason), Err("malformed"));
    }

    #[test]
    fn forged_unsigned_and_unnamed_deliveries_are_refused() {
        let body = test_data("shopify_fulfillments_create.json");
        let source = Shopify::new(SECRET).expect("secret");
        let mut h = signed("fulfillments/create", body.as_bytes(), "id-1", "2026-12-01T14:12:31Z");
        let tampered = body.replace("jon@example.com", "eve@example.com");
        let e = source.receive(&h, tampered.as_bytes(), 0).expect_err("tampered");
        assert!(e.authentication && e.reason == "bad_signature", "{e:?}");
        let other = Shopify::new("another-shop-secret").expect("secret");
        assert!(other.receive(&h, body.as_bytes(), 0).expect_err("wrong secret").authentication);
        h.retain(|(k, _)| k != "X-Shopify-Webhook-Id");
        let e = source.receive(&h, body.as_bytes(), 0).expect_err("no id");
        assert!(!e.authentication && e.reason == "missing_delivery_id", "{e:?}");
        h.retain(|(k, _)| k != "X-Shopify-Hmac-Sha256");
        let e = source.receive(&h, body.as_bytes(), 0).expect_err("unsigned");
        assert!(e.authentication && e.reason == "missing_signature", "{e:?}");
        assert!(Shopify::new("").is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(topic in "(fulfillments/(create|update)|orders/fulfilled)", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&topic, &body);
        }
    }
}
