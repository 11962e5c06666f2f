//! Hub message open: `HubMessage::open`, the agent's check on every ack and route.
//!
//! The input is a message *body*; the target signs it with the golden vectors' hub key
//! and opens it (reaching the body decoder and the route validation behind the
//! signature). The raw input is also opened as a whole message.
//!
//! Holds: no panic; a message that opens re-seals and opens to the same message; a route
//! inside it is valid; it never opens under the device's key or with a bit of its
//! signature flipped; a hub message never opens as a device envelope (domain separation).

#![no_main]

use doorstep_fuzz::{DEVICE_SEED, HUB_SEED, flip_signature_bit, public_key, seal_raw, signing_key};
use doorstep_proto::envelope::MAX_EVENT_LEN;
use doorstep_proto::hub::HUB_DOMAIN;
use doorstep_proto::{Envelope, EnvelopeError, HubMessage, TrustedKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let hub = public_key(&HUB_SEED);
    if let Ok(message) = HubMessage::open(body, &hub) {
        let again = message.seal(&signing_key(&HUB_SEED)).expect("an opened message re-seals");
        assert_eq!(HubMessage::open(&again, &hub), Ok(message));
    }

    let wire = seal_raw(HUB_DOMAIN, &HUB_SEED, body);
    let Ok(message) = HubMessage::open(&wire, &hub) else { return };
    if let HubMessage::Route(assignment) = &message {
        assert!(assignment.route.validate().is_ok());
        // What the agent keeps and shows: the manifest's JSON form reads back the same.
        let json = assignment.route.to_json();
        let back = doorstep_proto::RouteManifest::from_json(json.as_bytes()).expect("route JSON reads back");
        assert_eq!(back, assignment.route);
    }
    let resealed = message.seal(&signing_key(&HUB_SEED)).expect("an opened message re-seals");
    assert_eq!(HubMessage::open(&resealed, &hub).as_ref(), Ok(&message));

    assert!(matches!(HubMessage::open(&wire, &public_key(&DEVICE_SEED)), Err(EnvelopeError::UnknownKey(_))));
    let which = body.first().copied().unwrap_or(0);
    assert_eq!(HubMessage::open(&flip_signature_bit(&wire, which), &hub), Err(EnvelopeError::BadSignature));
    // The hub's own key trusted as a device's: a hub signature is still not a device's.
    let as_device = TrustedKey { device: message.device().clone(), key: hub };
    let refused = Envelope::open(&wire, &as_device);
    if wire.len() <= MAX_EVENT_LEN {
        assert_eq!(refused, Err(EnvelopeError::BadSignature));
    } else {
        assert!(matches!(refused, Err(EnvelopeError::Oversized { .. })));
    }
});
