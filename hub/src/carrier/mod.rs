//! Carrier webhooks: verification with each carrier's own scheme, parsing, and
//! normalization to [`CanonicalStatus`].
//!
//! Every receiver follows the same two steps, in this order:
//!
//! 1. **Verify** the signature over the *raw* request body, exactly as received
//!    ([`Verifier::verify`]). Nothing is parsed before this succeeds (invariant 5).
//! 2. **Parse** the verified body into at most one [`CarrierEvent`] ([`parse`]): the
//!    carrier's *current* status for the parcel, mapped through that carrier's `const`
//!    mapping table, with the carrier's raw code kept beside it.
//!
//! One event per webhook, not one per tracking detail: aggregators resend the whole
//! checkpoint history with every update, and their top-level status is their own
//! reconciliation of it. Replaying history into the reconciler would only produce stale
//! inputs it has to ignore (or, worse, an old "attempt failed" the customer no longer
//! needs to hear about). The hub stores the raw body for the record.
//!
//! This module does no I/O and knows no HTTP framework: headers come in through the small
//! [`Headers`] trait (implemented for `[(String, String)]`), the body as bytes, and the
//! current time, where a scheme needs one, as an argument. It must never panic on any
//! input; `garbage_never_panics` in each submodule checks that.
//!
//! The other direction, the hub asking aggregators, lives beside the receivers and reads
//! with their mappings: [`jobs`] runs durable, scheduled work per shipment ([`schedule`]
//! says when), one vendor per kind: [`poll`] asks ShipEngine about parcels of carriers that
//! never call, [`registration`] registers new parcels with AfterShip so its webhooks flow.

pub mod aftership;
pub mod easypost;
pub mod jobs;
pub mod poll;
pub mod registration;
pub mod schedule;
pub mod shipengine;

use doorstep_proto::TrackingNumber;
use ring::{digest, hmac};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::{CanonicalStatus, Carrier, CarrierEvent};

/// Largest webhook body accepted (1 MiB). AfterShip's largest trackings (a few hundred
/// checkpoints) stay well under this; anything bigger is refused before any HMAC work.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 1 << 20;

/// Why a webhook was refused. [`WebhookError::reason`] is the short label for counters
/// and logs (`carrier_webhooks_rejected_total{carrier, reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The signature header is absent.
    #[error("missing signature header {header:?}: the request was not signed by the carrier")]
    MissingSignature {
        /// Which header was expected.
        header: &'static str,
    },
    /// The signature header is present but cannot be decoded (bad base64/hex, wrong prefix,
    /// repeated header).
    #[error("malformed signature header {header:?}: {problem}")]
    MalformedSignature {
        /// Which header.
        header: &'static str,
        /// What was wrong with it.
        problem: &'static str,
    },
    /// The signature does not match the body: wrong secret/key, or a modified body.
    #[error("signature does not match the body (check the configured webhook secret or key)")]
    BadSignature,
    /// The signed timestamp is outside the accepted window (a replay, or a skewed clock).
    #[error("signed timestamp is {skew_ms} ms away from now, outside the {window_ms} ms window")]
    StaleTimestamp {
        /// `now - timestamp`, negative when the timestamp is in the future.
        skew_ms: i64,
        /// The configured window.
        window_ms: i64,
    },
    /// The signature names a key we were not configured with.
    #[error("unknown signing key id {key_id:?}: refresh the carrier's published keys")]
    UnknownKey {
        /// The key id from the header (truncated).
        key_id: String,
    },
    /// The body is larger than [`MAX_WEBHOOK_BODY_BYTES`].
    #[error("body of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not the JSON document this carrier sends.
    #[error("malformed {carrier:?} payload: {detail}")]
    Malformed {
        /// The carrier.
        carrier: Carrier,
        /// The parser's complaint (line/column for JSON errors).
        detail: String,
    },
    /// A field the event cannot do without is missing.
    #[error("{carrier:?} payload has no {field}")]
    MissingField {
        /// The carrier.
        carrier: Carrier,
        /// The field.
        field: &'static str,
    },
    /// A time field could not be read as a date and time.
    #[error("{carrier:?} field {field} is not a date and time: {value:?}")]
    BadTime {
        /// The carrier.
        carrier: Carrier,
        /// The field.
        field: &'static str,
        /// The text (truncated).
        value: String,
    },
    /// The tracking number is not one Doorstep can hold (see `TrackingNumber`).
    #[error("{carrier:?} tracking number {value:?} is invalid: {rule}")]
    BadTrackingNumber {
        /// The carrier.
        carrier: Carrier,
        /// The text (truncated).
        value: String,
        /// The rule it broke.
        rule: &'static str,
    },
}

impl WebhookError {
    /// A short, stable snake_case label for counters and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature { .. } => "missing_signature",
            Self::MalformedSignature { .. } => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp { .. } => "stale_timestamp",
            Self::UnknownKey { .. } => "unknown_key",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::MissingField { .. } => "missing_field",
            Self::BadTime { .. } => "bad_time",
            Self::BadTrackingNumber { .. } => "bad_tracking_number",
        }
    }

    /// True for failures of authenticity (signature, key, timestamp): the request must be
    /// treated as not coming from the carrier at all.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            Self::MissingSignature { .. }
                | Self::MalformedSignature { .. }
                | Self::BadSignature
                | Self::StaleTimestamp { .. }
                | Self::UnknownKey { .. }
        )
    }
}

/// Why a verifier could not be built from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An empty webhook secret would accept anything anyone signs with an empty key.
    #[error("the {carrier:?} webhook secret is empty")]
    EmptySecret {
        /// The carrier.
        carrier: Carrier,
    },
    /// The public key text is not PEM, or not an RSA public key ring accepts.
    #[error("invalid ShipEngine public key {key_id:?}: {problem}")]
    BadPublicKey {
        /// The key id it was configured under.
        key_id: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The JWKS document is not what ShipEngine publishes.
    #[error("invalid ShipEngine JWKS document: {problem}")]
    BadJwks {
        /// What is wrong.
        problem: String,
    },
}

/// Read access to request headers, case-insensitively. Implemented for a slice of
/// `(name, value)` pairs; the HTTP layer can implement it over its own header map.
pub trait Headers {
    /// Every value of the header `name` (ASCII case-insensitive), in order.
    fn values<'a>(&'a self, name: &str) -> Vec<&'a str>;
}

impl Headers for [(String, String)] {
    fn values<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

impl Headers for Vec<(String, String)> {
    fn values<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.as_slice().values(name)
    }
}

/// The one value of a signature header. A repeated signature header is refused rather
/// than guessed at: which copy a proxy or framework keeps differs, and an attacker can
/// append one.
pub(crate) fn single_header<'a, H: Headers + ?Sized>(
    headers: &'a H,
    name: &'static str,
) -> Result<&'a str, WebhookError> {
    let values = headers.values(name);
    match values.as_slice() {
        [] => Err(WebhookError::MissingSignature { header: name }),
        [one] => Ok(one.trim()),
        _ => Err(WebhookError::MalformedSignature { header: name, problem: "header repeated" }),
    }
}

pub(crate) fn check_size(body: &[u8]) -> Result<(), WebhookError> {
    if body.len() > MAX_WEBHOOK_BODY_BYTES {
        return Err(WebhookError::TooLarge { len: body.len(), max: MAX_WEBHOOK_BODY_BYTES });
    }
    Ok(())
}

/// Constant-time HMAC-SHA256 check (`ring::hmac::verify`).
fn verify_hmac(key: &hmac::Key, body: &[u8], tag: &[u8]) -> Result<(), WebhookError> {
    hmac::verify(key, body, tag).map_err(|_| WebhookError::BadSignature)
}

/// The scheme AfterShip, Shopify and WooCommerce share: the base64 HMAC-SHA256 of the raw
/// body under a shared secret, in one header, compared in constant time.
pub(crate) fn verify_base64_hmac<H: Headers + ?Sized>(
    headers: &H,
    header: &'static str,
    key: &hmac::Key,
    body: &[u8],
) -> Result<(), WebhookError> {
    use base64::Engine as _;
    check_size(body)?;
    let value = single_header(headers, header)?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| WebhookError::MalformedSignature { header, problem: "not base64" })?;
    verify_hmac(key, body, &tag)
}

/// A configured webhook verifier for one carrier integration.
#[derive(Debug)]
pub enum Verifier {
    /// AfterShip: base64 HMAC-SHA256 in `aftership-hmac-sha256`.
    AfterShip(aftership::Verifier),
    /// EasyPost: hex HMAC-SHA256 with an NFKD-normalized secret in `X-Hmac-Signature`.
    EasyPost(easypost::Verifier),
    /// ShipEngine: RSA-SHA256 over `timestamp.body` with a published key and a window.
    ShipEngine(shipengine::Verifier),
}

impl Verifier {
    /// The carrier this verifier is for.
    pub fn carrier(&self) -> Carrier {
        match self {
            Self::AfterShip(_) => Carrier::AfterShip,
            Self::EasyPost(_) => Carrier::EasyPost,
            Self::ShipEngine(_) => Carrier::ShipEngine,
        }
    }

    /// Checks the request's signature over the raw `body`. `now_ms` (ms since the Unix
    /// epoch) is only used by schemes with a signed timestamp.
    pub fn verify<H: Headers + ?Sized>(
        &self,
        headers: &H,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), WebhookError> {
        match self {
            Self::AfterShip(v) => v.verify(headers, body),
            Self::EasyPost(v) => v.verify(headers, body),
            Self::ShipEngine(v) => v.verify(headers, body, now_ms),
        }
    }

    /// Verifies, then parses: the whole receive path for one webhook request.
    /// `Ok(None)` is a genuine webhook that carries no tracking update (another event
    /// type); acknowledge it and move on.
    pub fn receive<H: Headers + ?Sized>(
        &self,
        headers: &H,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<CarrierEvent>, WebhookError> {
        self.verify(headers, body, now_ms)?;
        parse(self.carrier(), body)
    }
}

/// Parses a *verified* webhook body from `carrier` into its current tracking status.
/// `Ok(None)` means the webhook is not a tracking update (another event type).
pub fn parse(carrier: Carrier, body: &[u8]) -> Result<Option<CarrierEvent>, WebhookError> {
    check_size(body)?;
    let update = match carrier {
        Carrier::AfterShip => aftership::parse_update(body)?,
        Carrier::EasyPost => easypost::parse_update(body)?,
        Carrier::ShipEngine => shipengine::parse_update(body)?,
        // Shopify's fulfillment statuses arrive inside its order webhooks
        // (`inbound::shopify`), never on a carrier route.
        Carrier::Shopify => {
            return Err(WebhookError::Malformed { carrier, detail: "not a carrier webhook".into() });
        }
    };
    update.map(RawUpdate::into_event).transpose()
}

/// A tracking update as read from a payload, before the tracking number is validated.
/// Kept separate so tests can check the mapping even of payloads whose tracking number
/// Doorstep refuses (EasyPost's signed fixture uses the tracking code `"1"`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawUpdate {
    /// The integration.
    pub carrier: Carrier,
    /// The carrier's event id, when the payload has one.
    pub event_id: Option<String>,
    /// The tracking number as the carrier wrote it.
    pub tracking: String,
    /// Normalized status, from the carrier's mapping table.
    pub status: CanonicalStatus,
    /// The carrier's code(s) the status was mapped from, e.g. `Delivered/Delivered_001`.
    pub raw_status: String,
    /// When the current status happened (ms since the Unix epoch).
    pub occurred_ms: i64,
    /// The carrier's delivery expectation, verbatim.
    pub expected_delivery: Option<String>,
    /// The carrier's human-readable message.
    pub message: Option<String>,
}

impl RawUpdate {
    /// Validates the tracking number and builds the event, with its dedupe key: the
    /// carrier's event id when there is one, else a SHA-256 of tracking number, code and
    /// time (so a resent webhook maps to the same key).
    pub fn into_event(self) -> Result<CarrierEvent, WebhookError> {
        let tracking_number =
            TrackingNumber::normalize(&self.tracking).map_err(|e| WebhookError::BadTrackingNumber {
                carrier: self.carrier,
                value: truncate(&self.tracking),
                rule: e.rule,
            })?;
        let event_key = match &self.event_id {
            Some(id) => format!("{}:{}", carrier_slug(self.carrier), id),
            None => content_key(self.carrier, &tracking_number, &self.raw_status, self.occurred_ms),
        };
        Ok(CarrierEvent {
            carrier: self.carrier,
            event_key,
            tracking_number,
            status: self.status,
            raw_status: self.raw_status,
            occurred_ms: self.occurred_ms,
            expected_delivery: self.expected_delivery,
            message: self.message,
            // Set by the hub when it takes the webhook in.
            received_ms: None,
        })
    }
}

/// The snake_case name used in keys and logs.
pub fn carrier_slug(carrier: Carrier) -> &'static str {
    match carrier {
        Carrier::AfterShip => "aftership",
        Carrier::EasyPost => "easypost",
        Carrier::ShipEngine => "shipengine",
        Carrier::Shopify => "shopify",
    }
}

/// `sha256:<hex>` of `carrier|tracking|code|occurred_ms`: the dedupe key of an event
/// whose carrier gives it no id.
pub fn content_key(
    carrier: Carrier,
    tracking: &TrackingNumber,
    raw_status: &str,
    occurred_ms: i64,
) -> String {
    let text = format!("{}|{}|{}|{}", carrier_slug(carrier), tracking, raw_status, occurred_ms);
    format!("sha256:{}", hex::encode(digest::digest(&digest::SHA256, text.as_bytes())))
}

/// Looks `code` up in a carrier's `(raw, canonical)` table, ASCII case-insensitively.
pub(crate) fn lookup(table: &[(&str, CanonicalStatus)], code: &str) -> Option<CanonicalStatus> {
    table.iter().find(|(raw, _)| raw.eq_ignore_ascii_case(code)).map(|(_, s)| *s)
}

pub(crate) fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Parses a carrier time to ms since the Unix epoch. RFC 3339 first; then the offset-less
/// local form some carriers report through AfterShip (`2018-07-23T08:58:00`), read as UTC
/// because the payload gives nothing better; then a bare date (midnight UTC).
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return to_ms(t);
    }
    let naive = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    if let Ok(t) = time::PrimitiveDateTime::parse(text, &naive) {
        return to_ms(t.assume_utc());
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(text, &date) {
        return to_ms(d.midnight().assume_utc());
    }
    None
}

fn to_ms(t: OffsetDateTime) -> Option<i64> {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Reads a required time field, with a typed error naming it.
fn required_time(carrier: Carrier, field: &'static str, value: &str) -> Result<i64, WebhookError> {
    parse_time_ms(value).ok_or_else(|| WebhookError::BadTime { carrier, field, value: truncate(value) })
}

/// Deserializes JSON with a typed error naming the carrier.
fn from_json<'a, T: Deserialize<'a>>(carrier: Carrier, body: &'a [u8]) -> Result<T, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::Malformed { carrier, detail: e.to_string() })
}

/// Text that is present and not blank.
pub(crate) fn non_blank(text: Option<&str>) -> Option<&str> {
    text.map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Fixture helpers shared by the carrier tests.

    use std::path::PathBuf;

    /// `../shared/data/carriers/<name>` relative to the workspace, read as bytes.
    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/carriers").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// `hub/tests/data/<name>` as text.
    pub(crate) fn test_data(name: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Milliseconds since the Unix epoch of an RFC 3339 time, for assertions.
    pub(crate) fn ms(rfc3339: &str) -> i64 {
        super::parse_time_ms(rfc3339).expect("test time")
    }

    pub(crate) fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn times_parse_with_offsets_fractions_and_without_a_zone() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time_ms("2019-04-12T17:45:26.734Z"), Some(1_555_091_126_734));
        assert_eq!(parse_time_ms("2018-07-25T10:10:00+09:00"), parse_time_ms("2018-07-25T01:10:00Z"));
        assert_eq!(parse_time_ms("2018-07-23T08:58:00"), parse_time_ms("2018-07-23T08:58:00Z"));
        assert_eq!(parse_time_ms("2024-08-05"), parse_time_ms("2024-08-05T00:00:00Z"));
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(parse_time_ms(""), None);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_refuses_repeats() {
        let h = headers(&[("X-Hmac-Signature", "a")]);
        assert_eq!(single_header(h.as_slice(), "x-hmac-signature"), Ok("a"));
        let h = headers(&[("x-hmac-signature", "a"), ("X-HMAC-SIGNATURE", "b")]);
        assert_eq!(
            single_header(h.as_slice(), "x-hmac-signature").map_err(|e| e.reason()),
            Err("malformed_signature")
        );
        let h = headers(&[]);
        assert_eq!(
            single_header(h.as_slice(), "x-hmac-signature").map_err(|e| e.reason()),
            Err("missing_signature")
        );
    }

    #[test]
    fn events_without_a_carrier_id_get_a_stable_content_key() {
        let t = TrackingNumber::new("1Z999AA10123456784").expect("valid");
        let a = content_key(Carrier::ShipEngine, &t, "DE", 5);
        assert_eq!(a, content_key(Carrier::ShipEngine, &t, "DE", 5));
        assert_ne!(a, content_key(Carrier::ShipEngine, &t, "DE", 6));
        assert_ne!(a, content_key(Carrier::ShipEngine, &t, "IT", 5));
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let body = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
        for carrier in [Carrier::AfterShip, Carrier::EasyPost, Carrier::ShipEngine] {
            assert_eq!(parse(carrier, &body).map_err(|e| e.reason()), Err("too_large"));
        }
    }

    #[test]
    fn every_reason_code_is_snake_case() {
        let all = [
            WebhookError::MissingSignature { header: "h" },
            WebhookError::MalformedSignature { header: "h", problem: "p" },
            WebhookError::BadSignature,
            WebhookError::StaleTimestamp { skew_ms: 1, window_ms: 1 },
            WebhookError::UnknownKey { key_id: "k".into() },
            WebhookError::TooLarge { len: 1, max: 0 },
            WebhookError::Malformed { carrier: Carrier::EasyPost, detail: "d".into() },
            WebhookError::MissingField { carrier: Carrier::EasyPost, field: "f" },
            WebhookError::BadTime { carrier: Carrier::EasyPost, field: "f", value: "v".into() },
            WebhookError::BadTrackingNumber { carrier: Carrier::EasyPost, value: "1".into(), rule: "r" },
        ];
        for e in all {
            assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", e.reason());
        }
    }
}
