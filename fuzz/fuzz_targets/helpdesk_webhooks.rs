//! Helpdesks' new-ticket webhooks: Zendesk's `ticket.created` event (signed over its
//! timestamp and the body) and Freshdesk's automation body (a shared header), through
//! `inbound::Source::receive`, with a body the fuzzer chose. The first byte picks the
//! helpdesk.
//!
//! Holds: no panic; a genuine body is never refused as unauthenticated (only as
//! malformed), a forged or unsigned one always is, before parsing; a support contact
//! names 1 to 16 tracking numbers, each valid, each once, each found in the ticket's text
//! as written; its ticket id is 1 to 64 characters; a timestamp outside the window is
//! refused however the body looks.

#![no_main]

use base64::Engine as _;
use doorstep_hub::inbound::helpdesks::{
    Freshdesk, MAX_CANDIDATES, ZENDESK_SIGNATURE_HEADER, ZENDESK_TIMESTAMP_HEADER, ZENDESK_WINDOW_MS, Zendesk,
};
use doorstep_hub::inbound::{Inbound, Source};
use libfuzzer_sys::fuzz_target;
use ring::hmac;

const SECRET: &str = "doorstep fuzz helpdesk secret 0123";
const HEADER: &str = "X-Doorstep-Secret";
/// 2026-12-01T14:12:31Z.
const NOW_MS: i64 = 1_796_134_351_000;
const NOW: &str = "2026-12-01T14:12:31Z";

fn zendesk_headers(secret: &str, timestamp: &str, body: &[u8]) -> Vec<(String, String)> {
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), &signed);
    vec![
        (ZENDESK_SIGNATURE_HEADER.to_owned(), base64::engine::general_purpose::STANDARD.encode(tag.as_ref())),
        (ZENDESK_TIMESTAMP_HEADER.to_owned(), timestamp.to_owned()),
    ]
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, body)) = input.split_first() else { return };
    let zendesk = Zendesk::new(SECRET, "doorstep").expect("secret");
    let freshdesk = Freshdesk::new(HEADER, SECRET, "doorstep").expect("secret");
    let (source, genuine, forged): (&dyn Source, _, _) = if pick % 2 == 0 {
        (&zendesk, zendesk_headers(SECRET, NOW, body), zendesk_headers("another secret 0123456", NOW, body))
    } else {
        let with = |v: &str| vec![(HEADER.to_owned(), v.to_owned())];
        (&freshdesk, with(SECRET), with("another secret 0123456"))
    };
    let got = source.receive(&genuine, body, NOW_MS);
    if let Err(e) = &got {
        assert!(!e.authentication, "a genuine delivery refused as forged: {e}");
    }
    let refused = source.receive(&forged, body, NOW_MS).expect_err("forged");
    assert!(refused.authentication || refused.reason == "too_large", "{refused}");
    let unsigned: Vec<(String, String)> = Vec::new();
    let refused = source.receive(&unsigned, body, NOW_MS).expect_err("unsigned");
    assert!(refused.authentication || refused.reason == "too_large", "{refused}");
    if pick % 2 == 0 {
        let late = source.receive(&genuine, body, NOW_MS + ZENDESK_WINDOW_MS + 1_000).expect_err("replayed");
        assert!(late.authentication || late.reason == "too_large", "{late}");
    }

    let Ok(received) = got else { return };
    let Inbound::SupportContact(contact) = received.item else { return };
    assert!((1..=64).contains(&contact.ticket.len()), "ticket id {:?}", contact.ticket);
    assert_eq!(received.delivery_id, format!("ticket:{}", contact.ticket));
    assert!((1..=MAX_CANDIDATES).contains(&contact.candidates.len()));
    let text = String::from_utf8_lossy(body).to_ascii_uppercase();
    for (i, tracking) in contact.candidates.iter().enumerate() {
        assert!(!contact.candidates[..i].contains(tracking), "{tracking} twice");
        assert!(text.contains(tracking.as_str()), "{tracking} is not in the ticket");
    }
});
