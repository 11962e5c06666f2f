//! ShipEngine (ShipStation API) `API_TRACK` webhooks.
//!
//! **Signature**, per ShipStation's "Webhook Validation" guide
//! (<https://docs.shipstation.com/apis/docs/guides/webhooks-validation>, found with the docs
//! search; the guide covers ShipStation API, formerly ShipEngine):
//!
//! 1. Three headers: `x-shipengine-rsa-sha256-key-id`, `x-shipengine-rsa-sha256-signature`
//!    and `x-shipengine-timestamp`. Missing headers: refuse.
//! 2. The timestamp must be recent; the guide suggests refusing anything more than
//!    5 minutes from the current time *in either direction* (clock skew can put it in the
//!    future).
//! 3. The raw, unparsed body exactly as received.
//! 4. The signed payload is `<timestamp header>.<raw body>`, verified as RSASSA-PKCS1-v1_5
//!    with SHA-256 against the public key whose `kid` matches the key-id header; keys are
//!    published as a JWKS at `https://api.shipengine.com/jwks`. The signature is base64.
//!
//! The guide's excerpt available to us stops at step 3; the payload construction
//! (`timestamp + "." + body`, base64 signature, JWKS key lookup) is what independent
//! published implementations of the guide do, and matches the scheme's header names.
//! The timestamp is ISO 8601 in those implementations; a Unix-seconds timestamp is also
//! accepted, defensively.
//!
//! Keys are configured, not fetched: this module does no I/O. The hub either loads a
//! JWKS document it fetched ([`Keys::from_jwks_json`]) or PEM files
//! ([`Keys::add_pem`], `BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
//!
//! **Payload**: `{"resource_url", "resource_type": "API_TRACK", "data": <tracking info>}`;
//! the bare tracking-info object (what `GET /v1/tracking` returns) is accepted too.

use base64::Engine as _;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;

use super::{
    Headers, KeyError, RawUpdate, WebhookError, check_size, from_json, lookup, non_blank, parse_time_ms,
    single_header,
};
use crate::model::{CanonicalStatus, Carrier};

/// The header naming the signing key.
pub const KEY_ID_HEADER: &str = "x-shipengine-rsa-sha256-key-id";
/// The base64 RSA-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-shipengine-rsa-sha256-signature";
/// The signing time, part of the signed payload.
pub const TIMESTAMP_HEADER: &str = "x-shipengine-timestamp";
/// The guide's suggested replay window: 5 minutes either side of now.
pub const DEFAULT_WINDOW_MS: i64 = 5 * 60 * 1000;

/// ShipEngine `status_code` → canonical status.
pub const STATUS_CODES: &[(&str, CanonicalStatus)] = &[
    ("UN", CanonicalStatus::Unknown),
    ("NY", CanonicalStatus::LabelCreated),
    ("AC", CanonicalStatus::Accepted),
    ("IT", CanonicalStatus::InTransit),
    ("AT", CanonicalStatus::AttemptFailed),
    ("DE", CanonicalStatus::Delivered),
    ("EX", CanonicalStatus::Exception),
    ("SP", CanonicalStatus::AvailableForPickup),
];

/// `status_code/status_detail_code` overrides, consulted before [`STATUS_CODES`]:
/// ShipEngine has no out-for-delivery status code, only a standardized detail code.
pub const STATUS_DETAIL_CODES: &[(&str, CanonicalStatus)] = &[
    ("IT/OUT_FOR_DELIVERY", CanonicalStatus::OutForDelivery),
    ("IT/AWAITING_COLLECTION_FROM_PICKUP_POINT", CanonicalStatus::AvailableForPickup),
];

/// Bounds on an RSA modulus we accept (2048 to 8192 bits, what ring verifies).
const MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;

/// One RSA public key, as ring's components.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

/// ShipEngine's signing keys by key id.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Vec<(String, RsaKey)>,
}

impl Keys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`) under `key_id`.
    pub fn add_pem(&mut self, key_id: &str, pem: &str) -> Result<(), KeyError> {
        let bad = |problem| KeyError::BadPublicKey { key_id: key_id.to_owned(), problem };
        let key = if let Some(der) = pem_body(pem, "PUBLIC KEY") {
            rsa_from_spki(&der).ok_or_else(|| bad("not an RSA SubjectPublicKeyInfo"))?
        } else if let Some(der) = pem_body(pem, "RSA PUBLIC KEY") {
            rsa_from_pkcs1(&der).ok_or_else(|| bad("not a PKCS#1 RSAPublicKey"))?
        } else {
            return Err(bad("no BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY block"));
        };
        check_rsa(&key).map_err(bad)?;
        self.insert(key_id, key);
        Ok(())
    }

    /// Loads every RSA key of a JWKS document (`{"keys": [{"kty": "RSA", "kid", "n", "e"}]}`),
    /// the format ShipEngine publishes.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: Option<String>,
            kid: Option<String>,
            n: Option<String>,
            e: Option<String>,
        }
        let jwks: Jwks =
            serde_json::from_slice(json).map_err(|e| KeyError::BadJwks { problem: e.to_string() })?;
        let mut keys = Self::new();
        for jwk in jwks.keys {
            if jwk.kty.as_deref() != Some("RSA") {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else {
                return Err(KeyError::BadJwks { problem: "an RSA key lacks kid, n or e".to_owned() });
            };
            let decode =
                |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
            let (Ok(n), Ok(e)) = (decode(&n), decode(&e)) else {
                return Err(KeyError::BadJwks { problem: format!("key {kid:?}: n or e is not base64url") });
            };
            let key = RsaKey { n: strip_zeros(&n).to_vec(), e: strip_zeros(&e).to_vec() };
            check_rsa(&key).map_err(|problem| KeyError::BadPublicKey { key_id: kid.clone(), problem })?;
            keys.insert(&kid, key);
        }
        if keys.keys.is_empty() {
            return Err(KeyError::BadJwks { problem: "no RSA keys".to_owned() });
        }
        Ok(keys)
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn insert(&mut self, key_id: &str, key: RsaKey) {
        self.keys.retain(|(k, _)| k != key_id);
        self.keys.push((key_id.to_owned(), key));
    }

    fn get(&self, key_id: &str) -> Option<&RsaKey> {
        self.keys.iter().find(|(k, _)| k == key_id).map(|(_, key)| key)
    }
}

fn check_rsa(key: &RsaKey) -> Result<(), &'static str> {
    if !MODULUS_BYTES.contains(&key.n.len()) {
        return Err("modulus must be 2048 to 8192 bits");
    }
    if key.e.is_empty() || key.e.len() > 4 {
        return Err("unusual public exponent");
    }
    Ok(())
}

/// Verifies ShipEngine's signature headers.
#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    window_ms: i64,
}

impl Verifier {
    /// A verifier with these keys and a replay window (see [`DEFAULT_WINDOW_MS`]).
    pub fn new(keys: Keys, window_ms: i64) -> Self {
        Self { keys, window_ms: window_ms.max(0) }
    }

    /// Checks headers, timestamp window and signature, in the guide's order. `now_ms` is
    /// the hub's current time (ms since the Unix epoch).
    pub fn verify<H: Headers + ?Sized>(
        &self,
        headers: &H,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), WebhookError> {
        check_size(body)?;
        let key_id = single_header(headers, KEY_ID_HEADER)?;
        let signature = single_header(headers, SIGNATURE_HEADER)?;
        let timestamp = single_header(headers, TIMESTAMP_HEADER)?;

        let signed_ms = parse_timestamp(timestamp).ok_or(WebhookError::MalformedSignature {
            header: TIMESTAMP_HEADER,
            problem: "not an ISO 8601 time or Unix seconds",
        })?;
        let skew_ms = now_ms.saturating_sub(signed_ms);
        if skew_ms.saturating_abs() > self.window_ms {
            return Err(WebhookError::StaleTimestamp { skew_ms, window_ms: self.window_ms });
        }

        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| WebhookError::UnknownKey { key_id: key_id.chars().take(80).collect() })?;
        let signature = base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| {
            WebhookError::MalformedSignature { header: SIGNATURE_HEADER, problem: "not base64" }
        })?;

        let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
        message.extend_from_slice(timestamp.as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        RsaPublicKeyComponents { n: &key.n, e: &key.e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, &message, &signature)
            .map_err(|_| WebhookError::BadSignature)
    }
}

fn parse_timestamp(text: &str) -> Option<i64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().ok()?.checked_mul(1000);
    }
    parse_time_ms(text)
}

// --- minimal DER, enough for an RSA SubjectPublicKeyInfo -------------------------------

/// rsaEncryption, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// One DER element: `(tag, contents, rest)`. Lengths up to two bytes (64 KiB), plenty for
/// an 8192-bit key.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (usize::from(b), rest)
        }
        0x82 => {
            let (bytes, rest) = (rest.get(..2)?, rest.get(2..)?);
            (usize::from(bytes[0]) << 8 | usize::from(bytes[1]), rest)
        }
        _ => return None,
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

fn rsa_from_spki(der: &[u8]) -> Option<RsaKey> {
    let (0x30, spki, _) = der_element(der)? else { return None };
    let (0x30, algorithm, rest) = der_element(spki)? else { return None };
    let (0x06, oid, _) = der_element(algorithm)? else { return None };
    if oid != RSA_ENCRYPTION_OID {
        return None;
    }
    let (0x03, bits, _) = der_element(rest)? else { return None };
    let (0, pkcs1) = bits.split_first()? else { return None };
    rsa_from_pkcs1(pkcs1)
}

fn rsa_from_pkcs1(der: &[u8]) -> Option<RsaKey> {
    let (0x30, seq, _) = der_element(der)? else { return None };
    let (0x02, n, rest) = der_element(seq)? else { return None };
    let (0x02, e, _) = der_element(rest)? else { return None };
    Some(RsaKey { n: strip_zeros(n).to_vec(), e: strip_zeros(e).to_vec() })
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The base64 body of the first `-----BEGIN <label>-----` block, decoded.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let text: String = pem[start..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

// --- payload ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Envelope {
    resource_type: Option<String>,
    data: Option<TrackingInfo>,
    // The bare tracking-info shape: these sit at the top level.
    #[serde(flatten)]
    bare: Option<TrackingInfo>,
}

#[derive(Debug, Deserialize)]
struct TrackingInfo {
    tracking_number: Option<String>,
    status_code: Option<String>,
    status_detail_code: Option<String>,
    status_description: Option<String>,
    carrier_status_description: Option<String>,
    estimated_delivery_date: Option<String>,
    actual_delivery_date: Option<String>,
    exception_description: Option<String>,
    #[serde(default)]
    events: Option<Vec<TrackEvent>>,
}

#[derive(Debug, Deserialize)]
struct TrackEvent {
    occurred_at: Option<String>,
    carrier_occurred_at: Option<String>,
    // 2019-era payloads (our recorded USPS sample) call it event_date.
    event_date: Option<String>,
    description: Option<String>,
}

impl TrackEvent {
    fn time_ms(&self) -> Option<i64> {
        [&self.occurred_at, &self.event_date, &self.carrier_occurred_at]
            .into_iter()
            .find_map(|t| t.as_deref().and_then(parse_time_ms))
    }
}

/// Parses a ShipEngine body into the parcel's current status. `Ok(None)` for webhook
/// resource types other than `API_TRACK`.
pub fn parse_update(body: &[u8]) -> Result<Option<RawUpdate>, WebhookError> {
    const C: Carrier = Carrier::ShipEngine;
    let envelope: Envelope = from_json(C, body)?;
    let info = match (envelope.resource_type.as_deref(), envelope.data, envelope.bare) {
        (Some("API_TRACK"), Some(data), _) => data,
        (Some("API_TRACK"), None, _) => return Err(WebhookError::MissingField { carrier: C, field: "data" }),
        (Some(_), _, _) => return Ok(None),
        (None, _, Some(bare)) if bare.tracking_number.is_some() => bare,
        (None, _, _) => return Err(WebhookError::MissingField { carrier: C, field: "resource_type" }),
    };
    let answer = read_info(info)?;
    answer.update.map(Some).ok_or(WebhookError::MissingField { carrier: C, field: OCCURRED_FIELDS })
}

/// Where the time of the current status comes from.
const OCCURRED_FIELDS: &str = "events[].occurred_at or actual_delivery_date";

/// What `GET /v1/tracking` says about a parcel.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackingAnswer {
    /// The tracking number as ShipEngine wrote it.
    pub tracking: String,
    /// ShipEngine's status code, with the detail code when there is one (`IT`,
    /// `IT/OUT_FOR_DELIVERY`, `NY`).
    pub raw_status: String,
    /// The status, through the same tables as the webhook.
    pub status: CanonicalStatus,
    /// The update to store, exactly as the webhook with the same tracking info would give
    /// it (so both find the same dedupe key); `None` while nothing is dated yet: `NY`, the
    /// carrier has not seen the parcel, comes without events.
    pub update: Option<RawUpdate>,
}

/// Parses the answer of `GET /v1/tracking?carrier_code=..&tracking_number=..`: the bare
/// tracking-info object a webhook carries in `data`, read with the webhook's mapping.
pub fn parse_tracking_info(body: &[u8]) -> Result<TrackingAnswer, WebhookError> {
    check_size(body)?;
    read_info(from_json(Carrier::ShipEngine, body)?)
}

fn read_info(info: TrackingInfo) -> Result<TrackingAnswer, WebhookError> {
    const C: Carrier = Carrier::ShipEngine;
    let number = non_blank(info.tracking_number.as_deref())
        .ok_or(WebhookError::MissingField { carrier: C, field: "tracking_number" })?
        .to_owned();
    let code = non_blank(info.status_code.as_deref())
        .ok_or(WebhookError::MissingField { carrier: C, field: "status_code" })?;
    let raw_status = match non_blank(info.status_detail_code.as_deref()) {
        Some(detail) => format!("{code}/{detail}"),
        None => code.to_owned(),
    };
    let status = lookup(STATUS_DETAIL_CODES, &raw_status)
        .or_else(|| lookup(STATUS_CODES, code))
        .unwrap_or(CanonicalStatus::Unknown);

    let events = info.events.unwrap_or_default();
    let latest = events.iter().filter_map(|e| e.time_ms().map(|t| (t, e))).max_by_key(|(t, _)| *t);
    let delivered_at = match status {
        CanonicalStatus::Delivered => info.actual_delivery_date.as_deref().and_then(parse_time_ms),
        _ => None,
    };
    let occurred_ms = delivered_at.or(latest.map(|(t, _)| t));

    let message = non_blank(info.exception_description.as_deref())
        .or(latest.and_then(|(_, e)| non_blank(e.description.as_deref())))
        .or(non_blank(info.carrier_status_description.as_deref()))
        .or(non_blank(info.status_description.as_deref()))
        .map(str::to_owned);

    let update = occurred_ms.map(|occurred_ms| RawUpdate {
        carrier: C,
        event_id: None,
        tracking: number.clone(),
        status,
        raw_status: raw_status.clone(),
        occurred_ms,
        expected_delivery: non_blank(info.estimated_delivery_date.as_deref()).map(str::to_owned),
        message,
    });
    Ok(TrackingAnswer { tracking: number, raw_status, status, update })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::test_support::*;
    use crate::carrier::{Verifier as AnyVerifier, parse};
    use proptest::prelude::*;
    use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

    const KID: &str = "se-key-1";
    const NOW: &str = "2026-08-07T16:10:01Z";

    fn private_key() -> RsaKeyPair {
        let der = pem_body(&test_data("shipengine_test_private_pkcs8.pem"), "PRIVATE KEY").expect("pem");
        RsaKeyPair::from_pkcs8(&der).expect("pkcs8")
    }

    fn keys() -> Keys {
        let mut keys = Keys::new();
        keys.add_pem(KID, &test_data("shipengine_test_public.pem")).expect("public key");
        keys
    }

    fn sign(timestamp: &str, body: &[u8]) -> String {
        let pair = private_key();
        let mut message = timestamp.as_bytes().to_vec();
        message.push(b'.');
        message.extend_from_slice(body);
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), &message, &mut sig).expect("sign");
        base64::engine::general_purpose::STANDARD.encode(sig)
    }

    fn signed_headers(timestamp: &str, body: &[u8]) -> Vec<(String, String)> {
        headers(&[
            ("X-ShipEngine-RSA-SHA256-Key-ID", KID),
            ("X-ShipEngine-RSA-SHA256-Signature", &sign(timestamp, body)),
            ("X-ShipEngine-Timestamp", timestamp),
        ])
    }

    fn usps() -> Vec<u8> {
        fixture("shipengine_api_track_webhook_usps_delivered.json")
    }

    #[test]
    fn a_fresh_signature_over_timestamp_dot_body_is_accepted() {
        let body = usps();
        let v = AnyVerifier::ShipEngine(Verifier::new(keys(), DEFAULT_WINDOW_MS));
        let event = v.receive(signed_headers(NOW, &body).as_slice(), &body, ms(NOW) + 30_000).expect("valid");
        assert_eq!(event.expect("update").status, CanonicalStatus::Delivered);
    }

    #[test]
    fn a_timestamp_outside_the_window_is_stale_in_either_direction() {
        let body = usps();
        let v = Verifier::new(keys(), DEFAULT_WINDOW_MS);
        let h = signed_headers(NOW, &body);
        let late = v.verify(h.as_slice(), &body, ms(NOW) + DEFAULT_WINDOW_MS + 1);
        assert_eq!(late.map_err(|e| e.reason()), Err("stale_timestamp"));
        let early = v.verify(h.as_slice(), &body, ms(NOW) - DEFAULT_WINDOW_MS - 1);
        assert_eq!(early.map_err(|e| e.reason()), Err("stale_timestamp"));
        assert!(v.verify(h.as_slice(), &body, ms(NOW) + DEFAULT_WINDOW_MS).is_ok());
    }

    #[test]
    fn one_flipped_byte_in_body_signature_or_timestamp_is_rejected() {
        let body = usps();
        let v = Verifier::new(keys(), DEFAULT_WINDOW_MS);
        let now = ms(NOW);
        let h = signed_headers(NOW, &body);

        let mut tampered = body.clone();
        tampered[body.len() / 2] ^= 0x01;
        assert_eq!(v.verify(h.as_slice(), &tampered, now), Err(WebhookError::BadSignature));

        let mut sig = base64::engine::general_purpose::STANDARD.decode(sign(NOW, &body)).expect("b64");
        sig[7] ^= 0x01;
        let sig = base64::engine::general_purpose::STANDARD.encode(sig);
        let h2 = headers(&[(KEY_ID_HEADER, KID), (SIGNATURE_HEADER, &sig), (TIMESTAMP_HEADER, NOW)]);
        assert_eq!(v.verify(h2.as_slice(), &body, now), Err(WebhookError::BadSignature));

        // The timestamp is signed: moving it (still inside the window) breaks the signature.
        let moved = "2026-08-07T16:10:02Z";
        let h3 = headers(&[
            (KEY_ID_HEADER, KID),
            (SIGNATURE_HEADER, &sign(NOW, &body)),
            (TIMESTAMP_HEADER, moved),
        ]);
        assert_eq!(v.verify(h3.as_slice(), &body, now), Err(WebhookError::BadSignature));
    }

    #[test]
    fn missing_headers_unknown_keys_and_other_keys_are_rejected_with_their_reasons() {
        let body = usps();
        let v = Verifier::new(keys(), DEFAULT_WINDOW_MS);
        let now = ms(NOW);
        let full = signed_headers(NOW, &body);
        for missing in [KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER] {
            let h: Vec<_> = full.iter().filter(|(k, _)| !k.eq_ignore_ascii_case(missing)).cloned().collect();
            assert_eq!(
                v.verify(h.as_slice(), &body, now),
                Err(WebhookError::MissingSignature { header: missing })
            );
        }
        let h = headers(&[
            (KEY_ID_HEADER, "se-key-2"),
            (SIGNATURE_HEADER, &sign(NOW, &body)),
            (TIMESTAMP_HEADER, NOW),
        ]);
        assert_eq!(v.verify(h.as_slice(), &body, now).map_err(|e| e.reason()), Err("unknown_key"));

        let mut other = Keys::new();
        other.add_pem(KID, &test_data("shipengine_other_public.pem")).expect("public key");
        let v_other = Verifier::new(other, DEFAULT_WINDOW_MS);
        assert_eq!(v_other.verify(full.as_slice(), &body, now), Err(WebhookError::BadSignature));

        let h = headers(&[
            (KEY_ID_HEADER, KID),
            (SIGNATURE_HEADER, &sign(NOW, &body)),
            (TIMESTAMP_HEADER, "soon"),
        ]);
        assert_eq!(v.verify(h.as_slice(), &body, now).map_err(|e| e.reason()), Err("malformed_signature"));
    }

    #[test]
    fn unix_second_timestamps_are_accepted_too() {
        let body = usps();
        let v = Verifier::new(keys(), DEFAULT_WINDOW_MS);
        let ts = (ms(NOW) / 1000).to_string();
        assert!(v.verify(signed_headers(&ts, &body).as_slice(), &body, ms(NOW)).is_ok());
    }

    #[test]
    fn keys_load_from_pkcs1_pem_and_from_a_jwks_document() {
        let pair = private_key();
        let parts = rsa_from_pkcs1(pair.public().as_ref()).expect("ring's public key is PKCS#1");
        let (n, e) = (&parts.n, &parts.e);
        let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "kid": "ignored"},
            {"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": b64u(n), "e": b64u(e)},
        ]});
        let keys = Keys::from_jwks_json(&serde_json::to_vec(&jwks).expect("json")).expect("jwks");
        assert_eq!(keys.len(), 1);
        let body = usps();
        let v = Verifier::new(keys, DEFAULT_WINDOW_MS);
        assert!(v.verify(signed_headers(NOW, &body).as_slice(), &body, ms(NOW)).is_ok());

        let pkcs1 = base64::engine::general_purpose::STANDARD.encode(pair.public().as_ref());
        let pem = format!("-----BEGIN RSA PUBLIC KEY-----\n{pkcs1}\n-----END RSA PUBLIC KEY-----\n");
        let mut keys = Keys::new();
        keys.add_pem(KID, &pem).expect("pkcs1");
        assert_eq!(keys.get(KID), self::keys().get(KID));
    }

    #[test]
    fn bad_key_material_is_a_configuration_error() {
        let mut keys = Keys::new();
        assert!(keys.add_pem("k", "not a key").is_err());
        assert!(keys.add_pem("k", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
        assert!(Keys::from_jwks_json(br#"{"keys":[]}"#).is_err());
        assert!(Keys::from_jwks_json(b"[]").is_err());
    }

    #[test]
    fn the_recorded_usps_webhook_maps_to_delivered_at_its_actual_delivery_time() {
        let e = parse(Carrier::ShipEngine, &usps()).expect("parses").expect("update");
        assert_eq!(e.tracking_number.as_str(), "9361269903502070406152");
        assert_eq!(e.status, CanonicalStatus::Delivered);
        assert_eq!(e.raw_status, "DE");
        assert_eq!(e.occurred_ms, ms("2019-04-12T17:45:26.734Z"));
        assert_eq!(e.expected_delivery, None);
        assert_eq!(e.message.as_deref(), Some("Delivered, Individual Picked Up at Post Office"));
        assert!(e.event_key.starts_with("sha256:"));
    }

    #[test]
    fn the_sdk_tracking_info_maps_unknown_with_its_estimate() {
        let e = parse(Carrier::ShipEngine, &fixture("shipengine_tracking_info_data_sdk_mock.json"))
            .expect("parses")
            .expect("update");
        assert_eq!(e.tracking_number.as_str(), "1026167028310292");
        assert_eq!(e.status, CanonicalStatus::Unknown);
        assert_eq!(e.raw_status, "UN");
        assert_eq!(e.occurred_ms, ms("2021-07-10T02:58:01Z"));
        assert_eq!(e.expected_delivery.as_deref(), Some("2021-07-19T07:00:00Z"));
        assert_eq!(e.message.as_deref(), Some("Electronic information submitted by shipper"));
    }

    #[test]
    fn out_for_delivery_comes_from_the_detail_code() {
        let body = br#"{"resource_type":"API_TRACK","data":{"tracking_number":"1Z999AA10123456784","status_code":"IT",
            "status_detail_code":"OUT_FOR_DELIVERY","events":[{"occurred_at":"2026-08-07T08:00:00Z"}]}}"#;
        let e = parse(Carrier::ShipEngine, body).expect("ok").expect("update");
        assert_eq!(e.status, CanonicalStatus::OutForDelivery);
        assert_eq!(e.raw_status, "IT/OUT_FOR_DELIVERY");
    }

    #[test]
    fn every_code_in_the_table_maps_to_what_the_table_says() {
        for (code, status) in STATUS_CODES {
            let body = format!(
                r#"{{"resource_type":"API_TRACK","data":{{"tracking_number":"ABCD1234","status_code":"{code}",
                "events":[{{"occurred_at":"2026-08-07T08:00:00Z"}}],"actual_delivery_date":"2026-08-07T09:00:00Z"}}}}"#
            );
            let e = parse(Carrier::ShipEngine, body.as_bytes()).expect("ok").expect("update");
            assert_eq!(e.status, *status, "{code}");
        }
    }

    #[test]
    fn a_polled_answer_maps_like_the_webhook_carrying_it_and_finds_the_same_dedupe_key() {
        let answer = fixture("shipengine_tracking_info_data_sdk_mock.json");
        let polled = parse_tracking_info(&answer).expect("parses");
        assert_eq!((polled.raw_status.as_str(), polled.status), ("UN", CanonicalStatus::Unknown));
        let polled = polled.update.expect("dated").into_event().expect("event");
        let info: serde_json::Value = serde_json::from_slice(&answer).expect("json");
        let webhook = serde_json::json!({"resource_url": "https://api.shipengine.com/v1/tracking?x",
            "resource_type": "API_TRACK", "data": info});
        let pushed = parse(Carrier::ShipEngine, &serde_json::to_vec(&webhook).expect("encode"))
            .expect("parses")
            .expect("update");
        assert_eq!(polled, pushed);
    }

    #[test]
    fn not_yet_in_system_without_events_is_an_answer_with_nothing_to_store() {
        let body = br#"{"tracking_number":"9405511899223197428490","status_code":"NY",
            "status_description":"Not Yet In System","carrier_status_code":null,"events":[]}"#;
        let answer = parse_tracking_info(body).expect("parses");
        assert_eq!(answer.raw_status, "NY");
        assert_eq!(answer.status, CanonicalStatus::LabelCreated);
        assert_eq!(answer.update, None);
        // The webhook path keeps refusing an undated update.
        let wrapped = format!(r#"{{"resource_type":"API_TRACK","data":{}}}"#, String::from_utf8_lossy(body));
        assert_eq!(
            parse(Carrier::ShipEngine, wrapped.as_bytes()).map_err(|e| e.reason()),
            Err("missing_field")
        );
    }

    #[test]
    fn a_delivered_answer_is_dated_by_its_actual_delivery() {
        let body =
            br#"{"tracking_number":"1Z999AA10123456784","status_code":"DE","status_detail_code":"DELIVERED",
            "actual_delivery_date":"2026-08-07T15:02:00Z",
            "events":[{"occurred_at":"2026-08-07T15:01:00Z","description":"Delivered, front door"}]}"#;
        let answer = parse_tracking_info(body).expect("parses");
        assert_eq!((answer.raw_status.as_str(), answer.status), ("DE/DELIVERED", CanonicalStatus::Delivered));
        let update = answer.update.expect("dated");
        assert_eq!(update.occurred_ms, ms("2026-08-07T15:02:00Z"));
        assert_eq!(update.message.as_deref(), Some("Delivered, front door"));
        assert!(parse_tracking_info(b"{}").is_err());
        assert!(parse_tracking_info(b"<html>502</html>").is_err());
    }

    #[test]
    fn other_resource_types_are_not_tracking_updates() {
        assert_eq!(
            parse(Carrier::ShipEngine, br#"{"resource_type":"API_BATCH","resource_url":"x"}"#),
            Ok(None)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512),
                                ts in ".{0,30}", sig in ".{0,40}") {
            let _ = parse(Carrier::ShipEngine, &body);
            let _ = parse_tracking_info(&body);
            let _ = der_element(&body);
            let _ = rsa_from_spki(&body);
            let v = Verifier::new(keys(), DEFAULT_WINDOW_MS);
            let h = headers(&[(KEY_ID_HEADER, KID), (SIGNATURE_HEADER, &sig), (TIMESTAMP_HEADER, &ts)]);
            let _ = v.verify(h.as_slice(), &body, 0);
            let _ = v.verify(h.as_slice(), &body, i64::MIN);
            let _ = v.verify(h.as_slice(), &body, i64::MAX);
        }

        #[test]
        fn json_shaped_garbage_never_panics(code in ".{0,6}", time in ".{0,30}", number in ".{0,45}") {
            let body = serde_json::json!({"resource_type": "API_TRACK", "data": {"tracking_number": number,
                "status_code": code, "actual_delivery_date": time, "events": [{"occurred_at": time}]}});
            let _ = parse(Carrier::ShipEngine, &serde_json::to_vec(&body).expect("encode"));
        }
    }
}
