//! Device envelope open: `Envelope::open`, the hub's first step on every event.
//!
//! The input is an envelope *body* (the postcard bytes a device signs); the target signs
//! it with the golden vectors' device key and opens it, so the fuzzer reaches the body
//! decoder and the limit checks behind the signature. The raw input is also opened as a
//! whole envelope.
//!
//! Holds: no panic; what opens re-seals and opens to the same envelope, and
//! `peek_unverified` agrees with it; the same bytes never open under another key, under
//! the right key held by another device, or with one signature bit flipped.

#![no_main]

use doorstep_fuzz::{
    DEVICE_SEED, OTHER_SEED, device_keyring, flip_signature_bit, public_key, seal_raw, signing_key,
};
use doorstep_proto::envelope::EVENT_DOMAIN;
use doorstep_proto::{DeviceId, Envelope, EnvelopeError, TrustedKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let keyring = device_keyring();
    // Whole-envelope input: almost always refused before the body, never a panic.
    if let Ok(envelope) = Envelope::open(body, &keyring) {
        let again = envelope.seal(&signing_key(&DEVICE_SEED)).expect("an opened envelope re-seals");
        assert_eq!(Envelope::open(&again, &keyring), Ok(envelope));
    }

    let wire = seal_raw(EVENT_DOMAIN, &DEVICE_SEED, body);
    let opened = Envelope::open(&wire, &keyring);
    let peeked = Envelope::peek_unverified(&wire);
    let Ok(envelope) = opened else {
        // A body that does not decode must not decode unverified either, unless what failed
        // was a check after decoding (size, ownership, limits).
        if let (Err(EnvelopeError::Malformed(_)), Ok((_, e))) = (&opened, &peeked) {
            assert!(e.event.check_limits().is_err() || matches!(e.event, doorstep_proto::Event::Gap(_)));
        }
        return;
    };
    assert_eq!(envelope.device, keyring.device);
    assert!(envelope.event.check_limits().is_ok());
    let (key_id, peeked) = peeked.expect("what opens can be peeked at");
    assert_eq!(key_id, keyring.key.key_id());
    assert_eq!(peeked, envelope);

    // Re-sealing gives an envelope that opens to the same value. (Not necessarily the same
    // bytes: postcard reads over-long varints, which only the key holder can sign.)
    let resealed = envelope.seal(&signing_key(&DEVICE_SEED)).expect("an opened envelope re-seals");
    assert_eq!(Envelope::open(&resealed, &keyring).as_ref(), Ok(&envelope));

    // The same bytes under any other trust are refused.
    let stranger = TrustedKey { device: keyring.device.clone(), key: public_key(&OTHER_SEED) };
    assert!(matches!(Envelope::open(&wire, &stranger), Err(EnvelopeError::UnknownKey(_))));
    let other_device = TrustedKey { device: DeviceId::new("van-18").expect("id"), key: keyring.key };
    assert!(matches!(Envelope::open(&wire, &other_device), Err(EnvelopeError::DeviceMismatch { .. })));
    let which = body.first().copied().unwrap_or(0);
    assert_eq!(Envelope::open(&flip_signature_bit(&wire, which), &keyring), Err(EnvelopeError::BadSignature));
    let mut tampered = wire.clone();
    let at = 9 + usize::from(which) % body.len().max(1);
    tampered[at] ^= 0x01;
    assert_eq!(Envelope::open(&tampered, &keyring), Err(EnvelopeError::BadSignature));
});
