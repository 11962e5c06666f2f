//! AfterShip webhook: the whole receive path (`carrier::Verifier::receive`) with a body
//! the fuzzer chose, signed with the configured secret, and the parse alone.
//!
//! Holds: no panic; a correctly signed body gives exactly what parsing it gives; the same
//! body with no signature, another secret's signature or a repeated header is refused as
//! an authentication failure before any parsing; see `check_carrier_parse` for what holds
//! of a parsed event.

#![no_main]

use base64::Engine as _;
use doorstep_fuzz::check_carrier_parse;
use doorstep_hub::carrier::{Verifier, aftership};
use doorstep_hub::model::Carrier;
use libfuzzer_sys::fuzz_target;
use ring::hmac;

const SECRET: &str = "doorstep fuzz aftership secret";
const NOW_MS: i64 = 1_786_118_400_000;

fn header(secret: &str, body: &[u8]) -> Vec<(String, String)> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body);
    let value = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    vec![(aftership::SIGNATURE_HEADER.to_owned(), value)]
}

fuzz_target!(|body: &[u8]| {
    let verifier = Verifier::AfterShip(aftership::Verifier::new(SECRET).expect("secret"));
    let parsed = check_carrier_parse(Carrier::AfterShip, body);
    assert_eq!(verifier.receive(header(SECRET, body).as_slice(), body, NOW_MS), parsed);

    let unsigned: Vec<(String, String)> = Vec::new();
    let forged = header("another secret", body);
    let mut repeated = header(SECRET, body);
    repeated.extend(header(SECRET, body));
    for headers in [unsigned, forged, repeated] {
        let refused = verifier.receive(headers.as_slice(), body, NOW_MS).expect_err("not signed right");
        assert!(refused.is_authentication_failure() || refused.reason() == "too_large", "{refused}");
    }
});
