//! AfterShip tracking webhooks.
//!
//! **Signature** (AfterShip Tracking docs, "Webhook Signature"): every request carries an
//! `aftership-hmac-sha256` header, the base64 of HMAC-SHA256 over the raw request body
//! keyed with the account's webhook secret (Settings > Webhooks).
//!
//! **Payload**: `{"event": "tracking_update", "event_id", "msg": <tracking>, "ts"}` where
//! `msg` is the same tracking object `GET /trackings/...` returns under `data.tracking`;
//! that response shape is accepted too (our recorded fixture is one). Status comes from
//! the tracking's `tag` (AfterShip's 9 delivery statuses) refined by its `subtag`; the time
//! is the latest checkpoint carrying that tag.

use ring::hmac;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Headers, KeyError, RawUpdate, WebhookError, from_json, lookup, non_blank, parse_time_ms, required_time,
};
use crate::model::{CanonicalStatus, Carrier};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "aftership-hmac-sha256";

/// AfterShip `tag` → canonical status. `Pending` (no tracking information yet) and
/// `Expired` (no information for 30 days) are kept: `Pending` drives nothing, `Expired`
/// tells operations the parcel went dark.
pub const TAGS: &[(&str, CanonicalStatus)] = &[
    ("Pending", CanonicalStatus::Unknown),
    ("InfoReceived", CanonicalStatus::LabelCreated),
    ("InTransit", CanonicalStatus::InTransit),
    ("OutForDelivery", CanonicalStatus::OutForDelivery),
    ("AttemptFail", CanonicalStatus::AttemptFailed),
    ("Delivered", CanonicalStatus::Delivered),
    ("AvailableForPickup", CanonicalStatus::AvailableForPickup),
    ("Exception", CanonicalStatus::Exception),
    ("Expired", CanonicalStatus::CancelledOrExpired),
];

/// `subtag` overrides, consulted before [`TAGS`]: AfterShip files returns under the
/// `Exception` tag, and its acceptance scan under `InTransit`.
pub const SUBTAGS: &[(&str, CanonicalStatus)] = &[
    ("InTransit_002", CanonicalStatus::Accepted),
    ("Exception_010", CanonicalStatus::Returning),
    ("Exception_011", CanonicalStatus::Returning),
];

/// Verifies `aftership-hmac-sha256`.
#[derive(Debug)]
pub struct Verifier {
    key: hmac::Key,
}

impl Verifier {
    /// A verifier for the account's webhook secret.
    pub fn new(secret: &str) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret { carrier: Carrier::AfterShip });
        }
        Ok(Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()) })
    }

    /// Checks the header against the raw body, in constant time.
    pub fn verify<H: Headers + ?Sized>(&self, headers: &H, body: &[u8]) -> Result<(), WebhookError> {
        super::verify_base64_hmac(headers, SIGNATURE_HEADER, &self.key, body)
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    event: Option<String>,
    event_id: Option<String>,
    msg: Option<Tracking>,
    data: Option<Data>,
}

#[derive(Debug, Deserialize)]
struct Data {
    tracking: Option<Tracking>,
}

#[derive(Debug, Deserialize)]
struct Tracking {
    tracking_number: Option<String>,
    tag: Option<String>,
    subtag: Option<String>,
    subtag_message: Option<String>,
    updated_at: Option<String>,
    #[serde(default)]
    checkpoints: Option<Vec<Checkpoint>>,
    expected_delivery: Option<String>,
    // Newer fields with nested shapes that have changed over API versions: read loosely.
    latest_estimated_delivery: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Checkpoint {
    tag: Option<String>,
    checkpoint_time: Option<String>,
    message: Option<String>,
}

/// Parses an AfterShip body into the tracking's current status. `Ok(None)` for webhook
/// events other than `tracking_update`.
pub fn parse_update(body: &[u8]) -> Result<Option<RawUpdate>, WebhookError> {
    const C: Carrier = Carrier::AfterShip;
    let envelope: Envelope = from_json(C, body)?;
    if let Some(event) = envelope.event.as_deref()
        && event != "tracking_update"
    {
        return Ok(None);
    }
    let tracking = match (envelope.msg, envelope.data.and_then(|d| d.tracking)) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(WebhookError::MissingField { carrier: C, field: "msg (tracking)" }),
    };
    let number = non_blank(tracking.tracking_number.as_deref())
        .ok_or(WebhookError::MissingField { carrier: C, field: "tracking_number" })?
        .to_owned();
    let tag =
        non_blank(tracking.tag.as_deref()).ok_or(WebhookError::MissingField { carrier: C, field: "tag" })?;
    let subtag = non_blank(tracking.subtag.as_deref());
    let status = subtag
        .and_then(|s| lookup(SUBTAGS, s))
        .or_else(|| lookup(TAGS, tag))
        .unwrap_or(CanonicalStatus::Unknown);
    let raw_status = match subtag {
        Some(s) => format!("{tag}/{s}"),
        None => tag.to_owned(),
    };

    // The latest checkpoint with the tracking's own tag dates the status; checkpoints
    // whose time cannot be read are skipped rather than failing the whole update.
    let checkpoints = tracking.checkpoints.unwrap_or_default();
    let dated = |c: &&Checkpoint| c.checkpoint_time.as_deref().and_then(parse_time_ms);
    let latest_with_tag = checkpoints
        .iter()
        .filter(|c| c.tag.as_deref() == Some(tag))
        .filter_map(|c| dated(&c).map(|t| (t, c)))
        .max_by_key(|(t, _)| *t);
    let latest_any = checkpoints.iter().filter_map(|c| dated(&c).map(|t| (t, c))).max_by_key(|(t, _)| *t);
    let (occurred_ms, checkpoint) = match latest_with_tag.or(latest_any) {
        Some((t, c)) => (t, Some(c)),
        None => {
            let updated = non_blank(tracking.updated_at.as_deref())
                .ok_or(WebhookError::MissingField { carrier: C, field: "checkpoints or updated_at" })?;
            (required_time(C, "updated_at", updated)?, None)
        }
    };

    let message = checkpoint
        .and_then(|c| non_blank(c.message.as_deref()))
        .or(non_blank(tracking.subtag_message.as_deref()))
        .map(str::to_owned);
    let expected_delivery = non_blank(tracking.expected_delivery.as_deref())
        .map(str::to_owned)
        .or_else(|| estimated_delivery(tracking.latest_estimated_delivery.as_ref()));

    Ok(Some(RawUpdate {
        carrier: C,
        event_id: non_blank(envelope.event_id.as_deref()).map(str::to_owned),
        tracking: number,
        status,
        raw_status,
        occurred_ms,
        expected_delivery,
        message,
    }))
}

/// `latest_estimated_delivery.datetime`, else its `datetime_max` (a window's end).
fn estimated_delivery(edd: Option<&Value>) -> Option<String> {
    let edd = edd?;
    ["datetime", "datetime_max"]
        .iter()
        .find_map(|k| non_blank(edd.get(*k).and_then(Value::as_str)).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::test_support::*;
    use crate::carrier::{Verifier as AnyVerifier, parse};
    use proptest::prelude::*;

    const FIXTURE: &str = "aftership_get_tracking_fedex_delivered_sdk_fixture.json";

    fn sign(secret: &str, body: &[u8]) -> String {
        use base64::Engine as _;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body);
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    /// The fixture's tracking object wrapped the way AfterShip posts it.
    fn webhook_body() -> Vec<u8> {
        let doc: Value = serde_json::from_slice(&fixture(FIXTURE)).expect("json");
        let body = serde_json::json!({
            "event": "tracking_update",
            "event_id": "4f6f1f5b-0c1e-4d55-a2a2-8d3c6b9f0e11",
            "is_tracking_first_tag": false,
            "msg": doc["data"]["tracking"],
            "ts": 1_532_481_000,
        });
        serde_json::to_vec(&body).expect("encode")
    }

    #[test]
    fn the_recorded_fedex_tracking_maps_to_delivered_at_the_last_checkpoint() {
        let event = parse(Carrier::AfterShip, &fixture(FIXTURE)).expect("parses").expect("an update");
        assert_eq!(event.tracking_number.as_str(), "111111111111");
        assert_eq!(event.status, CanonicalStatus::Delivered);
        assert_eq!(event.raw_status, "Delivered/Delivered_001");
        assert_eq!(event.occurred_ms, ms("2018-07-25T01:10:00Z"));
        assert_eq!(event.message.as_deref(), Some("Delivered"));
        assert_eq!(event.expected_delivery.as_deref(), Some("2022-01-05T12:11:11+01:00"));
        assert!(event.event_key.starts_with("sha256:"), "no event id in a GET response: {}", event.event_key);
    }

    #[test]
    fn a_signed_webhook_is_accepted_and_keyed_by_its_event_id() {
        let body = webhook_body();
        let v = AnyVerifier::AfterShip(Verifier::new("s3cret").expect("secret"));
        let h = headers(&[("Aftership-Hmac-Sha256", &sign("s3cret", &body))]);
        let event = v.receive(h.as_slice(), &body, 0).expect("valid").expect("update");
        assert_eq!(event.status, CanonicalStatus::Delivered);
        assert_eq!(event.event_key, "aftership:4f6f1f5b-0c1e-4d55-a2a2-8d3c6b9f0e11");
    }

    #[test]
    fn one_flipped_byte_in_the_body_is_rejected() {
        let mut body = webhook_body();
        let sig = sign("s3cret", &body);
        let v = Verifier::new("s3cret").expect("secret");
        body[10] ^= 0x01;
        let h = headers(&[(SIGNATURE_HEADER, &sig)]);
        assert_eq!(v.verify(h.as_slice(), &body), Err(WebhookError::BadSignature));
    }

    #[test]
    fn one_flipped_byte_in_the_signature_is_rejected() {
        let body = webhook_body();
        let mut tag = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(sign("s3cret", &body)).expect("b64")
        };
        tag[0] ^= 0x80;
        let sig = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&tag)
        };
        let v = Verifier::new("s3cret").expect("secret");
        assert_eq!(
            v.verify(headers(&[(SIGNATURE_HEADER, &sig)]).as_slice(), &body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn a_missing_or_undecodable_header_is_rejected_with_its_reason() {
        let body = webhook_body();
        let v = Verifier::new("s3cret").expect("secret");
        assert_eq!(
            v.verify(headers(&[]).as_slice(), &body).map_err(|e| e.reason()),
            Err("missing_signature")
        );
        assert_eq!(
            v.verify(headers(&[(SIGNATURE_HEADER, "%%%")]).as_slice(), &body).map_err(|e| e.reason()),
            Err("malformed_signature")
        );
        let wrong = sign("other", &body);
        assert_eq!(
            v.verify(headers(&[(SIGNATURE_HEADER, &wrong)]).as_slice(), &body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn an_empty_secret_is_a_configuration_error() {
        assert!(Verifier::new("").is_err());
    }

    #[test]
    fn subtags_refine_the_tag_and_unknown_tags_stay_unknown() {
        let body = br#"{"msg":{"tracking_number":"1z999aa10123456784","tag":"Exception","subtag":"Exception_011",
            "checkpoints":[{"tag":"Exception","checkpoint_time":"2024-01-02T03:04:05Z","message":"Returned"}]}}"#;
        let e = parse(Carrier::AfterShip, body).expect("ok").expect("update");
        assert_eq!(e.status, CanonicalStatus::Returning);
        assert_eq!(e.tracking_number.as_str(), "1Z999AA10123456784");
        let body = br#"{"msg":{"tracking_number":"ABCD1234","tag":"Teleported","updated_at":"2024-01-02T03:04:05Z"}}"#;
        let e = parse(Carrier::AfterShip, body).expect("ok").expect("update");
        assert_eq!(e.status, CanonicalStatus::Unknown);
        assert_eq!(e.raw_status, "Teleported");
        assert_eq!(e.occurred_ms, ms("2024-01-02T03:04:05Z"));
    }

    #[test]
    fn other_webhook_events_are_not_tracking_updates() {
        assert_eq!(parse(Carrier::AfterShip, br#"{"event":"something_else","msg":{}}"#), Ok(None));
    }

    #[test]
    fn every_tag_in_the_table_maps_to_what_the_table_says() {
        for (tag, status) in TAGS {
            let body = format!(
                r#"{{"msg":{{"tracking_number":"ABCD1234","tag":"{tag}","updated_at":"2024-01-02T03:04:05Z"}}}}"#
            );
            let e = parse(Carrier::AfterShip, body.as_bytes()).expect("ok").expect("update");
            assert_eq!(e.status, *status, "{tag}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(Carrier::AfterShip, &body);
            let v = Verifier::new("k").expect("secret");
            let _ = v.verify(headers(&[(SIGNATURE_HEADER, "AAAA")]).as_slice(), &body);
        }

        #[test]
        fn json_shaped_garbage_never_panics(tag in ".{0,12}", time in ".{0,30}", number in ".{0,45}") {
            let body = serde_json::json!({"msg": {"tracking_number": number, "tag": tag,
                "checkpoints": [{"tag": tag, "checkpoint_time": time}], "updated_at": time}});
            let _ = parse(Carrier::AfterShip, &serde_json::to_vec(&body).expect("encode"));
        }
    }
}
