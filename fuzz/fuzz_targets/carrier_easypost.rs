//! EasyPost webhook: the whole receive path (`carrier::Verifier::receive`) with a body the
//! fuzzer chose, signed with the configured secret (hex HMAC behind `hmac-sha256-hex=`),
//! and the parse alone.
//!
//! Holds: no panic; a correctly signed body gives exactly what parsing it gives; the same
//! body with no signature, another secret's signature, a header without its prefix or a
//! repeated header is refused as an authentication failure before any parsing; see
//! `check_carrier_parse` for what holds of a parsed event.

#![no_main]

use doorstep_fuzz::check_carrier_parse;
use doorstep_hub::carrier::{Verifier, easypost};
use doorstep_hub::model::Carrier;
use libfuzzer_sys::fuzz_target;
use ring::hmac;

const SECRET: &str = "doorstep fuzz easypost secret";
const NOW_MS: i64 = 1_786_118_400_000;

fn signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body).as_ref())
}

fn header(value: String) -> Vec<(String, String)> {
    vec![(easypost::SIGNATURE_HEADER.to_owned(), value)]
}

fuzz_target!(|body: &[u8]| {
    let verifier = Verifier::EasyPost(easypost::Verifier::new(SECRET).expect("secret"));
    let parsed = check_carrier_parse(Carrier::EasyPost, body);
    let good = format!("{}{}", easypost::SIGNATURE_PREFIX, signature(SECRET, body));
    assert_eq!(verifier.receive(header(good.clone()).as_slice(), body, NOW_MS), parsed);

    let unsigned: Vec<(String, String)> = Vec::new();
    let forged = header(format!("{}{}", easypost::SIGNATURE_PREFIX, signature("another secret", body)));
    let bare = header(signature(SECRET, body));
    let mut repeated = header(good.clone());
    repeated.extend(header(good));
    for headers in [unsigned, forged, bare, repeated] {
        let refused = verifier.receive(headers.as_slice(), body, NOW_MS).expect_err("not signed right");
        assert!(refused.is_authentication_failure() || refused.reason() == "too_large", "{refused}");
    }
});
