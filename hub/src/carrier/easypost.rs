//! EasyPost `tracker.updated` webhooks.
//!
//! **Signature** (EasyPost webhooks guide and its client libraries'
//! `validate_webhook`): when the webhook has a secret, every request carries
//! `X-Hmac-Signature: hmac-sha256-hex=<hex>`, the hex HMAC-SHA256 of the raw body keyed
//! with the secret *after Unicode NFKD normalization*. The fixture in
//! `../shared/data/carriers/easypost_webhook_hmac_fixture.json` (secret `"sécret"`) is the
//! test: with a precomposed `é` the key bytes differ from the NFKD ones.
//!
//! **Payload**: an `Event` object; `description` names the event and `result` is the
//! `Tracker` (`tracking_code`, `status`, `status_detail`, `est_delivery_date`,
//! `tracking_details[]`). The time of the status is the latest tracking detail with the
//! tracker's status; EasyPost's own samples show details out of time order, so the maximum
//! is taken rather than the last element.

use ring::hmac;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization as _;

use super::{
    Headers, KeyError, RawUpdate, WebhookError, check_size, from_json, lookup, non_blank, parse_time_ms,
    required_time, single_header, verify_hmac,
};
use crate::model::{CanonicalStatus, Carrier};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-hmac-signature";
/// The prefix of its value.
pub const SIGNATURE_PREFIX: &str = "hmac-sha256-hex=";

/// EasyPost tracker `status` → canonical status. `error` is EasyPost failing to track
/// (a bad tracking code, a carrier outage), not a delivery problem, so it drives nothing.
pub const STATUSES: &[(&str, CanonicalStatus)] = &[
    ("unknown", CanonicalStatus::Unknown),
    ("pre_transit", CanonicalStatus::LabelCreated),
    ("in_transit", CanonicalStatus::InTransit),
    ("out_for_delivery", CanonicalStatus::OutForDelivery),
    ("delivered", CanonicalStatus::Delivered),
    ("available_for_pickup", CanonicalStatus::AvailableForPickup),
    ("return_to_sender", CanonicalStatus::Returning),
    ("failure", CanonicalStatus::Exception),
    ("cancelled", CanonicalStatus::CancelledOrExpired),
    ("error", CanonicalStatus::Unknown),
];

/// `status/status_detail` overrides, consulted before [`STATUSES`]. Keyed on the pair
/// because EasyPost publishes no mapping from `status_detail` to `status` and the detail
/// alone is informational; only these combinations refine the coarse status.
pub const STATUS_DETAILS: &[(&str, CanonicalStatus)] = &[
    ("in_transit/received_at_origin_facility", CanonicalStatus::Accepted),
    ("in_transit/return", CanonicalStatus::Returning),
];

/// Event descriptions that carry a tracker.
const TRACKER_EVENTS: &[&str] = &["tracker.updated", "tracker.created"];

/// Verifies `X-Hmac-Signature`.
#[derive(Debug)]
pub struct Verifier {
    key: hmac::Key,
}

impl Verifier {
    /// A verifier for the webhook's secret (normalized to NFKD here, as EasyPost does).
    pub fn new(secret: &str) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret { carrier: Carrier::EasyPost });
        }
        let normalized: String = secret.nfkd().collect();
        Ok(Self { key: hmac::Key::new(hmac::HMAC_SHA256, normalized.as_bytes()) })
    }

    /// Checks the header against the raw body, in constant time.
    pub fn verify<H: Headers + ?Sized>(&self, headers: &H, body: &[u8]) -> Result<(), WebhookError> {
        check_size(body)?;
        let value = single_header(headers, SIGNATURE_HEADER)?;
        let hex_part = value.strip_prefix(SIGNATURE_PREFIX).ok_or(WebhookError::MalformedSignature {
            header: SIGNATURE_HEADER,
            problem: "does not start with hmac-sha256-hex=",
        })?;
        let tag = hex::decode(hex_part)
            .map_err(|_| WebhookError::MalformedSignature { header: SIGNATURE_HEADER, problem: "not hex" })?;
        verify_hmac(&self.key, body, &tag)
    }
}

#[derive(Debug, Deserialize)]
struct Event {
    id: Option<String>,
    description: Option<String>,
    result: Option<Tracker>,
}

#[derive(Debug, Deserialize)]
struct Tracker {
    tracking_code: Option<String>,
    status: Option<String>,
    status_detail: Option<String>,
    est_delivery_date: Option<String>,
    updated_at: Option<String>,
    #[serde(default)]
    tracking_details: Option<Vec<Detail>>,
}

#[derive(Debug, Deserialize)]
struct Detail {
    message: Option<String>,
    status: Option<String>,
    datetime: Option<String>,
}

/// Parses an EasyPost Event into the tracker's current status. `Ok(None)` for events
/// that are not about a tracker.
pub fn parse_update(body: &[u8]) -> Result<Option<RawUpdate>, WebhookError> {
    const C: Carrier = Carrier::EasyPost;
    let event: Event = from_json(C, body)?;
    match event.description.as_deref() {
        Some(d) if TRACKER_EVENTS.contains(&d) => {}
        Some(_) => return Ok(None),
        None => return Err(WebhookError::MissingField { carrier: C, field: "description" }),
    }
    let tracker = event.result.ok_or(WebhookError::MissingField { carrier: C, field: "result (tracker)" })?;
    let code = non_blank(tracker.tracking_code.as_deref())
        .ok_or(WebhookError::MissingField { carrier: C, field: "result.tracking_code" })?
        .to_owned();
    let status_text = non_blank(tracker.status.as_deref())
        .ok_or(WebhookError::MissingField { carrier: C, field: "result.status" })?;
    let detail = non_blank(tracker.status_detail.as_deref());
    let raw_status = match detail {
        Some(d) => format!("{status_text}/{d}"),
        None => status_text.to_owned(),
    };
    let status = lookup(STATUS_DETAILS, &raw_status)
        .or_else(|| lookup(STATUSES, status_text))
        .unwrap_or(CanonicalStatus::Unknown);

    let details = tracker.tracking_details.unwrap_or_default();
    let dated = |d: &Detail| d.datetime.as_deref().and_then(parse_time_ms);
    let latest_same = details
        .iter()
        .filter(|d| d.status.as_deref() == Some(status_text))
        .filter_map(|d| dated(d).map(|t| (t, d)))
        .max_by_key(|(t, _)| *t);
    let latest_any = details.iter().filter_map(|d| dated(d).map(|t| (t, d))).max_by_key(|(t, _)| *t);
    let (occurred_ms, latest) = match latest_same.or(latest_any) {
        Some((t, d)) => (t, Some(d)),
        None => {
            let updated = non_blank(tracker.updated_at.as_deref())
                .ok_or(WebhookError::MissingField { carrier: C, field: "tracking_details or updated_at" })?;
            (required_time(C, "result.updated_at", updated)?, None)
        }
    };

    Ok(Some(RawUpdate {
        carrier: C,
        // EasyPost retries a failed delivery with the same Event id.
        event_id: non_blank(event.id.as_deref()).map(str::to_owned),
        tracking: code,
        status,
        raw_status,
        occurred_ms,
        expected_delivery: non_blank(tracker.est_delivery_date.as_deref()).map(str::to_owned),
        message: latest.and_then(|d| non_blank(d.message.as_deref())).map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::test_support::*;
    use crate::carrier::{Verifier as AnyVerifier, parse};
    use proptest::prelude::*;

    /// The signed body: the fixture file without its trailing newline (SOURCES.md).
    fn signed_body() -> Vec<u8> {
        let mut body = fixture("easypost_tracker_updated_event_body.json");
        while body.last() == Some(&b'\n') {
            body.pop();
        }
        body
    }

    fn hmac_fixture() -> (String, String) {
        let doc: serde_json::Value =
            serde_json::from_slice(&fixture("easypost_webhook_hmac_fixture.json")).expect("json");
        let secret = doc["secret"].as_str().expect("secret").to_owned();
        let signature = doc["hmac_signature"].as_str().expect("signature").to_owned();
        (secret, signature)
    }

    #[test]
    fn the_client_library_fixture_signature_verifies_with_the_nfkd_secret() {
        let (secret, signature) = hmac_fixture();
        let v = Verifier::new(&secret).expect("secret");
        v.verify(headers(&[("X-Hmac-Signature", &signature)]).as_slice(), &signed_body()).expect("valid");
    }

    #[test]
    fn the_same_secret_without_nfkd_would_not_verify() {
        // Guards the normalization step: the fixture's secret is precomposed.
        let (secret, signature) = hmac_fixture();
        let raw_key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let tag = hex::decode(signature.trim_start_matches(SIGNATURE_PREFIX)).expect("hex");
        assert!(hmac::verify(&raw_key, &signed_body(), &tag).is_err());
    }

    #[test]
    fn one_flipped_byte_is_rejected() {
        let (secret, signature) = hmac_fixture();
        let v = Verifier::new(&secret).expect("secret");
        let body = signed_body();
        for i in [0, body.len() / 2, body.len() - 1] {
            let mut tampered = body.clone();
            tampered[i] ^= 0x01;
            let h = headers(&[("X-Hmac-Signature", &signature)]);
            assert_eq!(v.verify(h.as_slice(), &tampered), Err(WebhookError::BadSignature), "byte {i}");
        }
        let mut sig = signature.clone().into_bytes();
        let last = sig.len() - 1;
        sig[last] = if sig[last] == b'0' { b'1' } else { b'0' };
        let sig = String::from_utf8(sig).expect("ascii");
        assert_eq!(
            v.verify(headers(&[("X-Hmac-Signature", &sig)]).as_slice(), &body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn a_trailing_newline_is_a_different_body() {
        let (secret, signature) = hmac_fixture();
        let v = Verifier::new(&secret).expect("secret");
        let mut body = signed_body();
        body.push(b'\n');
        assert_eq!(
            v.verify(headers(&[("X-Hmac-Signature", &signature)]).as_slice(), &body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_rejected_with_their_reasons() {
        let (secret, signature) = hmac_fixture();
        let v = Verifier::new(&secret).expect("secret");
        let body = signed_body();
        assert_eq!(
            v.verify(headers(&[]).as_slice(), &body).map_err(|e| e.reason()),
            Err("missing_signature")
        );
        let no_prefix = signature.trim_start_matches(SIGNATURE_PREFIX).to_owned();
        assert_eq!(
            v.verify(headers(&[("X-Hmac-Signature", &no_prefix)]).as_slice(), &body).map_err(|e| e.reason()),
            Err("malformed_signature")
        );
        assert_eq!(
            v.verify(headers(&[("X-Hmac-Signature", "hmac-sha256-hex=zz")]).as_slice(), &body)
                .map_err(|e| e.reason()),
            Err("malformed_signature")
        );
    }

    #[test]
    fn the_signed_fedex_event_maps_to_in_transit_but_its_tracking_code_is_refused() {
        // The client-library fixture uses tracking code "1"; Doorstep refuses tracking
        // numbers shorter than 4 characters (scanner noise), so the mapping is checked on
        // the raw update and the final step reports a typed reason.
        let raw = parse_update(&signed_body()).expect("parses").expect("update");
        assert_eq!(raw.tracking, "1");
        assert_eq!(raw.status, CanonicalStatus::InTransit);
        assert_eq!(raw.raw_status, "in_transit/arrived_at_facility");
        assert_eq!(raw.occurred_ms, ms("2024-08-02T18:50:00Z"));
        assert_eq!(raw.expected_delivery.as_deref(), Some("2024-08-05T00:00:00Z"));
        assert_eq!(raw.message.as_deref(), Some("Arrived at FedEx location"));
        assert_eq!(raw.event_id.as_deref(), Some("evt_1"));
        let (secret, signature) = hmac_fixture();
        let v = AnyVerifier::EasyPost(Verifier::new(&secret).expect("secret"));
        let err = v.receive(headers(&[("X-Hmac-Signature", &signature)]).as_slice(), &signed_body(), 0);
        assert_eq!(err.map_err(|e| e.reason()), Err("bad_tracking_number"));
    }

    #[test]
    fn the_landing_page_sample_maps_to_delivered() {
        let e = parse(Carrier::EasyPost, &fixture("easypost_tracker_updated_landing_page.json"))
            .expect("parses")
            .expect("update");
        assert_eq!(e.tracking_number.as_str(), "EZ4000000004");
        assert_eq!(e.status, CanonicalStatus::Delivered);
        assert_eq!(e.raw_status, "delivered");
        assert_eq!(e.occurred_ms, ms("2014-08-24T15:33:00Z"));
        assert_eq!(e.message.as_deref(), Some("DELIVERED"));
        assert_eq!(e.expected_delivery.as_deref(), Some("2014-08-27T00:00:00Z"));
        assert_eq!(e.event_key, "easypost:evt_qatAiJDM");
    }

    #[test]
    fn the_tracking_guide_sample_dates_delivered_by_its_delivered_detail_not_the_last_in_time() {
        // In this sample the DELIVERED detail is dated before OUT FOR DELIVERY; the status
        // is dated by the detail that carries it.
        let e = parse(Carrier::EasyPost, &fixture("easypost_tracker_updated_tracking_guide.json"))
            .expect("parses")
            .expect("update");
        assert_eq!(e.tracking_number.as_str(), "EZ4000000004");
        assert_eq!(e.status, CanonicalStatus::Delivered);
        assert_eq!(e.occurred_ms, ms("2014-11-19T10:51:54Z"));
        assert_eq!(e.expected_delivery.as_deref(), Some("2014-11-27T00:00:00Z"));
    }

    #[test]
    fn an_envelope_without_its_tracker_is_a_missing_field() {
        let err = parse(Carrier::EasyPost, &fixture("easypost_event_tracker_updated_envelope_only.json"));
        assert_eq!(
            err,
            Err(WebhookError::MissingField { carrier: Carrier::EasyPost, field: "result (tracker)" })
        );
    }

    #[test]
    fn events_about_other_objects_are_not_tracking_updates() {
        assert_eq!(parse(Carrier::EasyPost, br#"{"description":"batch.created","result":{}}"#), Ok(None));
    }

    #[test]
    fn every_status_in_the_table_maps_to_what_the_table_says() {
        for (raw, status) in STATUSES {
            let body = format!(
                r#"{{"id":"evt_x","description":"tracker.updated","result":{{"tracking_code":"EZ1000000001",
                "status":"{raw}","tracking_details":[{{"status":"{raw}","datetime":"2024-01-01T00:00:00Z"}}]}}}}"#
            );
            let e = parse(Carrier::EasyPost, body.as_bytes()).expect("ok").expect("update");
            assert_eq!(e.status, *status, "{raw}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), sig in ".{0,80}") {
            let _ = parse(Carrier::EasyPost, &body);
            let v = Verifier::new("k").expect("secret");
            let _ = v.verify(headers(&[(SIGNATURE_HEADER, &sig)]).as_slice(), &body);
        }

        #[test]
        fn json_shaped_garbage_never_panics(status in ".{0,20}", time in ".{0,30}", code in ".{0,45}") {
            let body = serde_json::json!({"description": "tracker.updated", "result": {"tracking_code": code,
                "status": status, "status_detail": status, "tracking_details": [{"status": status, "datetime": time}],
                "updated_at": time}});
            let _ = parse(Carrier::EasyPost, &serde_json::to_vec(&body).expect("encode"));
        }
    }
}
