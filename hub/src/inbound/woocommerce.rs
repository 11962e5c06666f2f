//! WooCommerce: a completed order with Shipment Tracking items becomes shipments that
//! have left.
//!
//! Topic `order.updated` (and `order.created`, for shops that complete orders as they
//! create them); the body is the order. WooCommerce signs the raw body with the webhook's
//! secret (`X-WC-Webhook-Signature`, base64 HMAC-SHA256) and names each delivery
//! (`X-WC-Webhook-Delivery-ID`, the dedupe key). The order's `date_modified_gmt` orders
//! deliveries about the same order: an older one is stale. WooCommerce disables a webhook
//! after five failed deliveries, so everything genuine is answered 200, ignored or not.
//!
//! What Doorstep reads: an order whose `status` is `completed`, with the Shipment Tracking
//! extension's items (`meta_data` key `_wc_shipment_tracking_items`: `tracking_number`,
//! `tracking_provider` or `custom_tracking_provider`, `date_shipped` in Unix seconds);
//! contacts: the billing e-mail, consented (the customer gave it for this order). WooCommerce
//! keeps no SMS consent, so its phone numbers are not used.

use std::collections::BTreeMap;

use doorstep_proto::TrackingNumber;
use serde::Deserialize;
use serde_json::Value;

use super::orders::{self, OrderEvent, Parcel};
use super::{Inbound, Received, Refused, SharedSecret, Source, SourceError, one_header};
use crate::carrier::{Headers, non_blank, parse_time_ms};
use crate::store::{Contact, ContactChannel};

/// WooCommerce's signature header.
pub const SIGNATURE_HEADER: &str = "X-WC-Webhook-Signature";
/// The topic header.
pub const TOPIC_HEADER: &str = "X-WC-Webhook-Topic";
/// The delivery id header.
pub const DELIVERY_ID_HEADER: &str = "X-WC-Webhook-Delivery-ID";
/// The Shipment Tracking extension's order meta key.
pub const TRACKING_ITEMS_KEY: &str = "_wc_shipment_tracking_items";

/// The WooCommerce source, with the webhook's secret.
#[derive(Debug)]
pub struct WooCommerce(SharedSecret);

impl WooCommerce {
    /// A source checking signatures with `secret`.
    pub fn new(secret: &str) -> Result<Self, SourceError> {
        SharedSecret::new("orders.woocommerce", secret).map(WooCommerce)
    }
}

impl Source for WooCommerce {
    fn slug(&self) -> &'static str {
        "woocommerce"
    }

    fn receive(&self, headers: &dyn Headers, body: &[u8], _now_ms: i64) -> Result<Received, Refused> {
        self.0.verify(headers, SIGNATURE_HEADER, body)?;
        let delivery_id = one_header(headers, DELIVERY_ID_HEADER);
        // WooCommerce's first request to a new webhook is a signed form body
        // `webhook_id=<n>` (a ping), with no delivery id.
        if body.starts_with(b"webhook_id=") {
            return Ok(Received {
                delivery_id: delivery_id.unwrap_or("ping").to_owned(),
                triggered_ms: None,
                item: Inbound::Ignored("ping"),
            });
        }
        let delivery_id = delivery_id.ok_or_else(|| {
            Refused::malformed("missing_delivery_id", format!("no {DELIVERY_ID_HEADER} header"))
        })?;
        let topic = one_header(headers, TOPIC_HEADER).unwrap_or("");
        let (item, triggered_ms) = parse(topic, body)?;
        Ok(Received { delivery_id: delivery_id.to_owned(), triggered_ms, item })
    }
}

#[derive(Debug, Deserialize)]
struct Order {
    id: Option<Value>,
    number: Option<Value>,
    status: Option<String>,
    date_modified_gmt: Option<String>,
    billing: Option<Billing>,
    #[serde(default)]
    meta_data: Option<Vec<Meta>>,
}

#[derive(Debug, Deserialize)]
struct Billing {
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    key: Option<String>,
    value: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct TrackingItem {
    tracking_provider: Option<String>,
    custom_tracking_provider: Option<String>,
    tracking_number: Option<String>,
    date_shipped: Option<Value>,
}

/// Parses a verified body of `topic`: the order event (or why it is ignored) and the
/// order's modification time.
pub fn parse(topic: &str, body: &[u8]) -> Result<(Inbound, Option<i64>), Refused> {
    if !matches!(topic, "order.updated" | "order.created") {
        return Ok((Inbound::Ignored("topic_not_used"), None));
    }
    let order: Order = serde_json::from_slice(body)
        .map_err(|e| Refused::malformed("malformed", format!("malformed WooCommerce order: {e}")))?;
    let id = orders::id_text(order.id.as_ref())
        .ok_or_else(|| Refused::malformed("missing_field", "order has no id"))?;
    let modified = match non_blank(order.date_modified_gmt.as_deref()) {
        None => None,
        Some(text) => Some(parse_time_ms(text).ok_or_else(|| {
            Refused::malformed("bad_time", format!("date_modified_gmt {text:?} is not a date and time"))
        })?),
    };
    if !order.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("completed")) {
        return Ok((Inbound::Ignored("order_not_completed"), modified));
    }
    let items: Vec<TrackingItem> = order
        .meta_data
        .iter()
        .flatten()
        .filter(|m| m.key.as_deref() == Some(TRACKING_ITEMS_KEY))
        .filter_map(|m| m.value.clone())
        .filter_map(|v| serde_json::from_value::<Vec<TrackingItem>>(v).ok())
        .flatten()
        .collect();
    let mut parcels: Vec<Parcel> = Vec::new();
    let mut shipped: Option<i64> = None;
    for item in &items {
        let Some(Ok(tracking_number)) = item.tracking_number.as_deref().map(TrackingNumber::normalize) else {
            continue;
        };
        if parcels.iter().any(|p| p.tracking_number == tracking_number) {
            continue;
        }
        let provider = non_blank(item.custom_tracking_provider.as_deref())
            .or(non_blank(item.tracking_provider.as_deref()));
        if let Some(at) = item.date_shipped.as_ref().and_then(unix_seconds_ms) {
            shipped = Some(shipped.map_or(at, |s| s.min(at)));
        }
        parcels.push(Parcel {
            tracking_number,
            carrier: provider.and_then(orders::carrier_token),
            status: None,
        });
    }
    if parcels.is_empty() {
        return Ok((Inbound::Ignored("no_tracking_items"), modified));
    }
    let mut contacts = BTreeMap::new();
    if let Some(email) = order.billing.as_ref().and_then(|b| b.email.as_deref()).and_then(orders::email) {
        contacts.insert(ContactChannel::Email, Contact { recipient: email, consent: true });
    }
    let event = OrderEvent {
        object_key: format!("order/{id}"),
        order_id: id.clone(),
        order_name: orders::id_text(order.number.as_ref()).map(|n| format!("#{n}")),
        parcels,
        contacts,
        locale: None,
        // Completed with tracking is shipped: at the earliest date shipped, else when the
        // order was completed.
        shipped_ms: shipped.or(modified),
    };
    if event.shipped_ms.is_none() {
        return Err(Refused::malformed("missing_field", "a completed order has no date_modified_gmt"));
    }
    Ok((Inbound::Order(event), modified))
}

/// `date_shipped` as the extension stores it: Unix seconds, as a number or a string.
fn unix_seconds_ms(value: &Value) -> Option<i64> {
    let seconds = match value {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    (0..=253_402_300_799).contains(&seconds).then_some(seconds * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::test_support::{headers, ms, test_data};

    const SECRET: &str = "wc-webhook-secret";

    fn signed(topic: &str, body: &[u8], delivery: &str) -> Vec<(String, String)> {
        let sig = doorstep_testkit::webhooks::woocommerce(SECRET, body);
        headers(&[
            ("X-WC-Webhook-Source", "https://shop.example.com/"),
            ("X-WC-Webhook-Topic", topic),
            ("X-WC-Webhook-Resource", "order"),
            ("X-WC-Webhook-Event", "updated"),
            ("X-WC-Webhook-Signature", &sig),
            ("X-WC-Webhook-ID", "12"),
            ("X-WC-Webhook-Delivery-ID", delivery),
        ])
    }

    #[test]
    fn a_completed_order_with_tracking_items_is_shipped_parcels() {
        let body = test_data("woocommerce_order_updated.json");
        let source = WooCommerce::new(SECRET).expect("secret");
        let got = source
            .receive(&signed("order.updated", body.as_bytes(), "7f1c"), body.as_bytes(), 0)
            .expect("genuine");
        assert_eq!((got.delivery_id.as_str(), got.triggered_ms), ("7f1c", Some(ms("2026-12-01T10:05:10Z"))));
        let Inbound::Order(event) = got.item else { panic!("not an order: {:?}", got.item) };
        assert_eq!((event.object_key.as_str(), event.order_id.as_str()), ("order/727", "727"));
        assert_eq!(event.order_name.as_deref(), Some("#727"));
        let parcels: Vec<(&str, Option<&str>)> =
            event.parcels.iter().map(|p| (p.tracking_number.as_str(), p.carrier.as_deref())).collect();
        assert_eq!(
            parcels,
            [("9400111899223397863456", Some("usps")), ("AB123456789GB", Some("royal-mail"))]
        );
        assert_eq!(event.shipped_ms, Some(1_764_583_200_000), "the earliest date shipped");
        assert_eq!(event.contacts[&ContactChannel::Email].recipient, "john.doe@example.com");
        assert!(!event.contacts.contains_key(&ContactChannel::Sms), "no SMS consent in WooCommerce");
    }

    #[test]
    fn orders_not_completed_or_untracked_pings_and_other_topics_are_ignored() {
        let body = test_data("woocommerce_order_updated.json");
        let processing = body.replace("\"status\": \"completed\"", "\"status\": \"processing\"");
        assert_eq!(
            parse("order.updated", processing.as_bytes()).map(|r| r.0),
            Ok(Inbound::Ignored("order_not_completed"))
        );
        let untracked = body.replace("_wc_shipment_tracking_items", "_something_else");
        assert_eq!(
            parse("order.updated", untracked.as_bytes()).map(|r| r.0),
            Ok(Inbound::Ignored("no_tracking_items"))
        );
        assert_eq!(
            parse("product.updated", body.as_bytes()).map(|r| r.0),
            Ok(Inbound::Ignored("topic_not_used"))
        );
        let source = WooCommerce::new(SECRET).expect("secret");
        let ping = b"webhook_id=12";
        let mut h = signed("order.updated", ping, "x");
        h.retain(|(k, _)| k != "X-WC-Webhook-Delivery-ID");
        assert_eq!(source.receive(&h, ping, 0).map(|r| r.item), Ok(Inbound::Ignored("ping")));
        assert_eq!(
            parse(
                "order.updated",
                b"{\"id\": 1, \"status\": \"completed\", \"date_modified_gmt\": \"later\"}"
            )
            .map_err(|e| e.reason),
            Err("bad_time")
        );
    }

    #[test]
    fn forged_and_unnamed_deliveries_are_refused() {
        let body = test_data("woocommerce_order_updated.json");
        let source = WooCommerce::new(SECRET).expect("secret");
        let mut h = signed("order.updated", body.as_bytes(), "d-1");
        let e = source.receive(&h, body.replace("727", "728").as_bytes(), 0).expect_err("tampered");
        assert!(e.authentication && e.reason == "bad_signature");
        h.retain(|(k, _)| k != "X-WC-Webhook-Delivery-ID");
        assert_eq!(source.receive(&h, body.as_bytes(), 0).map_err(|e| e.reason), Err("missing_delivery_id"));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse("order.updated", &body);
        }
    }
}
