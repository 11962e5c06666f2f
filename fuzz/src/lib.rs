//! Helpers shared by Doorstep's fuzz targets: the published test keys, and signing
//! arbitrary bytes as if a device (or the hub) had signed them.
//!
//! Random bytes never carry a valid Ed25519 signature, so a target that only fed them to
//! `Envelope::open` would test the size and signature checks and nothing behind them.
//! The envelope targets therefore take the fuzzer's input as the *body*, wrap and sign it
//! here exactly as `doorstep_proto::envelope` does, and open the result: every body
//! decoder and limit check behind the signature is reached, as by a device whose key was
//! stolen or whose firmware is broken.

use doorstep_proto::envelope::{HEADER_LEN, VERSION};
use doorstep_proto::{DeviceId, PublicKey, SigningKey, TrustedKey};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// The device seed the golden vectors are signed with (`proto/tests/common`). Public:
/// never deploy it.
pub const DEVICE_SEED: [u8; 32] = *b"doorstep test key, never deploy!";
/// The hub seed of the golden vectors. Public: never deploy it.
pub const HUB_SEED: [u8; 32] = *b"doorstep hub test key, not real!";
/// A third key, trusted for nobody: opening under it must always fail.
pub const OTHER_SEED: [u8; 32] = [7; 32];
/// The device the golden vectors name.
pub const DEVICE: &str = "van-17";

/// The signing key for `seed`.
pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_seed(seed).expect("a 32-byte seed is always a key")
}

/// The public key for `seed`.
pub fn public_key(seed: &[u8; 32]) -> PublicKey {
    signing_key(seed).public_key()
}

/// The golden vectors' device and its trusted key.
pub fn device_keyring() -> TrustedKey {
    TrustedKey { device: DeviceId::new(DEVICE).expect("valid id"), key: public_key(&DEVICE_SEED) }
}

/// Wraps `body` as the wire format does (version, key id, body, signature over
/// `domain || everything before the signature`), signed with `seed`.
pub fn seal_raw(domain: &[u8], seed: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte seed is always a key");
    let key_id = public_key(seed).key_id();
    let mut signed = Vec::with_capacity(domain.len() + HEADER_LEN + body.len());
    signed.extend_from_slice(domain);
    signed.push(VERSION);
    signed.extend_from_slice(&key_id.0);
    signed.extend_from_slice(body);
    let signature = pair.sign(&signed);
    debug_assert_eq!(pair.public_key().as_ref(), public_key(seed).0.as_slice());
    let mut wire = signed.split_off(domain.len());
    wire.extend_from_slice(signature.as_ref());
    wire
}

/// `wire` with one bit of its signature flipped.
pub fn flip_signature_bit(wire: &[u8], which: u8) -> Vec<u8> {
    let mut bad = wire.to_vec();
    let len = bad.len();
    if let Some(b) = bad.get_mut(len - 1 - usize::from(which % 64)) {
        *b ^= 1 << (which % 8);
    }
    bad
}

/// Runs a future to completion on a current-thread runtime with time enabled.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

/// Parses a (verified) carrier webhook body and checks what must hold of the result: the
/// event names its carrier, holds a valid tracking number and a dedupe key of the
/// documented form, and survives the JSON round trip the hub's store and API put it
/// through; a refusal is a parse error, never an authentication one. Returns the result.
pub fn check_carrier_parse(
    carrier: doorstep_hub::model::Carrier,
    body: &[u8],
) -> Result<Option<doorstep_hub::model::CarrierEvent>, doorstep_hub::carrier::WebhookError> {
    use doorstep_hub::carrier::{carrier_slug, parse};
    use doorstep_hub::model::CarrierEvent;

    let parsed = parse(carrier, body);
    match &parsed {
        Ok(Some(event)) => {
            assert_eq!(event.carrier, carrier);
            assert!(doorstep_proto::TrackingNumber::new(event.tracking_number.as_str()).is_ok());
            let slug = format!("{}:", carrier_slug(carrier));
            assert!(
                event.event_key.starts_with(&slug)
                    || (event.event_key.starts_with("sha256:") && event.event_key.len() == 7 + 64),
                "{}",
                event.event_key
            );
            assert_eq!(event.received_ms, None);
            let json = serde_json::to_string(event).expect("an event serializes");
            let back: CarrierEvent = serde_json::from_str(&json).expect("an event reads back");
            assert_eq!(&back, event);
        }
        Ok(None) => {}
        Err(e) => {
            assert!(!e.is_authentication_failure(), "parse said {e}");
            assert!(!e.reason().is_empty() && !e.to_string().is_empty());
        }
    }
    parsed
}
