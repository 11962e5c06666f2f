//! ShipEngine webhook: the parse, the whole receive path (RSA-SHA256 over
//! `timestamp.body`, a replay window) for some of the inputs, and the key loaders an
//! operator's files go through (`Keys::from_jwks_json`, `Keys::add_pem`: hand-written
//! DER and PEM readers).
//!
//! Holds: no panic; a correctly signed fresh body gives exactly what parsing it gives; the
//! same signature with a shifted timestamp, an unknown key id, a stale timestamp or no
//! headers is refused as an authentication failure; see `check_carrier_parse` for what
//! holds of a parsed event. Signing costs about a millisecond, so only inputs whose length
//! is a multiple of 8 are signed; the parse and the key loaders see every input.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use doorstep_fuzz::check_carrier_parse;
use doorstep_hub::carrier::{Verifier, shipengine};
use doorstep_hub::model::Carrier;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

const KID: &str = "se-fuzz-1";
const PUBLIC: &str = include_str!("../../hub/tests/data/shipengine_test_public.pem");
const PRIVATE: &str = include_str!("../../hub/tests/data/shipengine_test_private_pkcs8.pem");
/// 2026-08-07T16:10:01Z, and the same instant as the header carries it.
const NOW_MS: i64 = 1_786_119_001_000;
const NOW: &str = "2026-08-07T16:10:01Z";

fn private_key() -> &'static RsaKeyPair {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let b64: String = PRIVATE.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).expect("test key is base64");
        RsaKeyPair::from_pkcs8(&der).expect("test key is PKCS#8")
    })
}

fn verifier() -> Verifier {
    let mut keys = shipengine::Keys::new();
    keys.add_pem(KID, PUBLIC).expect("test public key");
    Verifier::ShipEngine(shipengine::Verifier::new(keys, shipengine::DEFAULT_WINDOW_MS))
}

fn headers(kid: &str, signature: &str, timestamp: &str) -> Vec<(String, String)> {
    vec![
        (shipengine::KEY_ID_HEADER.to_owned(), kid.to_owned()),
        (shipengine::SIGNATURE_HEADER.to_owned(), signature.to_owned()),
        (shipengine::TIMESTAMP_HEADER.to_owned(), timestamp.to_owned()),
    ]
}

fuzz_target!(|body: &[u8]| {
    let parsed = check_carrier_parse(Carrier::ShipEngine, body);

    // Key material from an operator's file: refused or loaded, never a panic.
    if let Ok(keys) = shipengine::Keys::from_jwks_json(body) {
        assert!(!keys.is_empty());
    }
    let _ = shipengine::Keys::new().add_pem(KID, &String::from_utf8_lossy(body));

    let verifier = verifier();
    let unsigned: Vec<(String, String)> = Vec::new();
    let refused = verifier.receive(unsigned.as_slice(), body, NOW_MS).expect_err("unsigned");
    assert!(refused.is_authentication_failure() || refused.reason() == "too_large");
    if !body.len().is_multiple_of(8) {
        return;
    }
    let pair = private_key();
    let mut message = NOW.as_bytes().to_vec();
    message.push(b'.');
    message.extend_from_slice(body);
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), &message, &mut signature).expect("sign");
    let signature = base64::engine::general_purpose::STANDARD.encode(signature);

    assert_eq!(verifier.receive(headers(KID, &signature, NOW).as_slice(), body, NOW_MS), parsed);
    for (kid, timestamp, reason) in [
        (KID, "2026-08-07T16:10:02Z", "bad_signature"),
        ("se-other", NOW, "unknown_key"),
        (KID, "2026-08-07T15:10:01Z", "stale_timestamp"),
    ] {
        let refused = verifier
            .receive(headers(kid, &signature, timestamp).as_slice(), body, NOW_MS)
            .expect_err("not signed right");
        assert!(refused.reason() == reason || refused.reason() == "too_large", "{refused}");
    }
});
