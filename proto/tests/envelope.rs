//! Properties of the signed envelope: round trips, tamper evidence, no panics on garbage.

mod common;

use doorstep_proto::*;
use proptest::prelude::*;

fn id(re: &'static str) -> impl Strategy<Value = String> {
    proptest::string::string_regex(re).expect("regex")
}

fn tracking() -> impl Strategy<Value = TrackingNumber> {
    id("[A-Z0-9]{4,40}").prop_map(|s| TrackingNumber::new(s).expect("valid"))
}

fn fix() -> impl Strategy<Value = FixEvidence> {
    (
        any::<i64>(),
        -900_000_000..=900_000_000i32,
        -1_800_000_000..=1_800_000_000i32,
        any::<Option<u16>>(),
        any::<Option<u16>>(),
        any::<Option<u8>>(),
        any::<Option<u16>>(),
    )
        .prop_map(|(utc_ms, lat_e7, lon_e7, accuracy_dm, hdop_centi, sats, speed_cmps)| FixEvidence {
            utc_ms,
            lat_e7,
            lon_e7,
            accuracy_dm,
            hdop_centi,
            sats,
            speed_cmps,
        })
}

fn photo() -> impl Strategy<Value = Option<PhotoRef>> {
    proptest::option::of(
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(h, size)| PhotoRef { sha256: HexBytes(h), size }),
    )
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        id("[A-Za-z0-9._-]{1,20}"),
        id("[A-Za-z0-9._-]{1,20}"),
        proptest::collection::vec(tracking(), 0..5),
        any::<u32>(),
        any::<u32>(),
        fix(),
        photo(),
    )
        .prop_map(|(route, stop, tracking_numbers, distance_m, dwell_s, fix, photo)| Delivery {
            route_id: RouteId::new(route).expect("valid"),
            stop_id: StopId::new(stop).expect("valid"),
            tracking_numbers,
            distance_m,
            dwell_s,
            fix,
            photo,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        fix().prop_map(Event::Position),
        (delivery(), any::<u32>()).prop_map(|(d, distance_m)| Event::Nearby(Nearby {
            route_id: d.route_id,
            stop_id: d.stop_id,
            distance_m,
            fix: d.fix
        })),
        delivery().prop_map(Event::DeliveredAtAddress),
        delivery().prop_map(Event::DeliveredAwayFromAddress),
        (
            delivery(),
            proptest::sample::select(ExceptionReason::ALL.to_vec()),
            proptest::option::of(id("[ -~]{0,60}"))
        )
            .prop_map(|(d, reason, note)| Event::Exception(DeliveryException {
                route_id: Some(d.route_id),
                stop_id: None,
                reason,
                note,
                tracking_numbers: d.tracking_numbers,
                distance_m: Some(d.distance_m),
                fix: Some(d.fix),
                photo: d.photo,
            })),
        (id("[!-~]{1,80}"), proptest::option::of(fix())).prop_map(|(code, fix)| Event::ScanNotOnRoute(
            ScanNotOnRoute { route_id: None, barcode: Barcode::new(code).expect("valid"), fix }
        )),
        (0..1_000_000u64).prop_map(|len| Event::Gap(Gap { first_seq: 0, last_seq: len })),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<u64>(), any::<[u8; 16]>(), any::<i64>(), any::<u64>(), event()).prop_map(
        |(seq, eid, gnss_utc_ms, mono_ms, mut event)| {
            // A gap notice travels at the seq it starts at.
            if let Event::Gap(gap) = &mut event {
                gap.last_seq = seq.saturating_add(gap.last_seq - gap.first_seq);
                gap.first_seq = seq;
            }
            Envelope { device: common::device(), seq, event_id: HexBytes(eid), gnss_utc_ms, mono_ms, event }
        },
    )
}

proptest! {
    #[test]
    fn every_envelope_round_trips_through_seal_and_open(env in envelope()) {
        let wire = env.seal(&common::test_key()).expect("seal");
        prop_assert!(wire.len() <= envelope::MAX_EVENT_LEN);
        prop_assert_eq!(Envelope::open(&wire, &common::keyring()), Ok(env));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Envelope::open(&bytes, &common::keyring());
        let _ = Envelope::peek_unverified(&bytes);
        let _ = HubMessage::open(&bytes, &common::hub_key().public_key());
        let _ = blob::BlobChunk::decode(&bytes);
        let _ = state::DeviceState::from_bytes(&bytes);
        let _ = RouteManifest::from_json(&bytes);
        let _ = Topic::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn garbage_behind_a_valid_header_never_panics_the_unverified_decoder(tail in proptest::collection::vec(any::<u8>(), 65..600)) {
        // peek_unverified parses bodies without a signature check: the deepest decoder path.
        let mut bytes = vec![envelope::VERSION];
        bytes.extend_from_slice(&common::test_key().key_id().0);
        bytes.extend_from_slice(&tail);
        let _ = Envelope::peek_unverified(&bytes);
        prop_assert_eq!(Envelope::open(&bytes, &common::keyring()), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn hub_messages_round_trip(up_to_seq in any::<u64>(), next_index in any::<u32>(), complete in any::<bool>(), h in any::<[u8; 32]>()) {
        let hub = common::hub_key();
        for message in [
            HubMessage::Ack(Ack { device: common::device(), up_to_seq }),
            HubMessage::BlobAck(BlobAck { device: common::device(), sha256: HexBytes(h), next_index, complete }),
        ] {
            let wire = message.seal(&hub).expect("seal");
            prop_assert_eq!(HubMessage::open(&wire, &hub.public_key()), Ok(message));
        }
    }
}

#[test]
fn flipping_any_bit_of_any_byte_of_a_signed_envelope_is_rejected() {
    let keyring = common::keyring();
    for (name, env) in common::every_kind() {
        let wire = env.seal(&common::test_key()).expect("seal");
        for i in 0..wire.len() {
            for bit in 0..8 {
                let mut tampered = wire.clone();
                tampered[i] ^= 1 << bit;
                let result = Envelope::open(&tampered, &keyring);
                assert!(result.is_err(), "{name}: flipping bit {bit} of byte {i} was accepted");
            }
        }
    }
}

#[test]
fn each_rejection_has_its_own_typed_reason() {
    let keyring = common::keyring();
    let wire = common::delivered_at_address().seal(&common::test_key()).expect("seal");

    let mut oversized = wire.clone();
    oversized.resize(envelope::MAX_EVENT_LEN + 1, 0);
    assert_eq!(Envelope::open(&oversized, &keyring).map_err(|e| e.reason()), Err("oversized"));
    assert_eq!(Envelope::open(&wire[..40], &keyring).map_err(|e| e.reason()), Err("truncated"));
    assert_eq!(Envelope::open(&[], &keyring).map_err(|e| e.reason()), Err("truncated"));

    let mut v2 = wire.clone();
    v2[0] = 2;
    assert_eq!(Envelope::open(&v2, &keyring), Err(EnvelopeError::UnknownVersion(2)));

    let stranger = SigningKey::from_seed(&[42; 32]).expect("seed");
    let forged = common::delivered_at_address().seal(&stranger).expect("seal");
    assert_eq!(Envelope::open(&forged, &keyring), Err(EnvelopeError::UnknownKey(stranger.key_id())));

    // A trusted key of another device cannot speak for van-17.
    let other =
        TrustedKey { device: DeviceId::new("van-99").expect("id"), key: common::test_key().public_key() };
    assert!(matches!(Envelope::open(&wire, &other), Err(EnvelopeError::DeviceMismatch { .. })));

    // Truncating the signature is caught by the signature, not by a parser.
    assert_eq!(Envelope::open(&wire[..wire.len() - 1], &keyring), Err(EnvelopeError::BadSignature));
}

#[test]
fn a_device_signature_is_never_accepted_as_a_hub_message() {
    // Same key used for both roles (a misconfiguration): the domains still keep them apart.
    let key = common::test_key();
    let wire = common::delivered_at_address().seal(&key).expect("seal");
    assert_eq!(HubMessage::open(&wire, &key.public_key()), Err(EnvelopeError::BadSignature));
    let ack = HubMessage::Ack(Ack { device: common::device(), up_to_seq: 9 }).seal(&key).expect("seal");
    assert_eq!(Envelope::open(&ack, &common::keyring()), Err(EnvelopeError::BadSignature));
}

#[test]
fn events_over_the_limits_are_refused_when_sealed_and_when_opened() {
    let mut env = common::delivered_at_address();
    if let Event::DeliveredAtAddress(d) = &mut env.event {
        d.tracking_numbers = (0..51).map(|i| common::tn(&format!("TN{i:08}"))).collect();
    }
    assert!(matches!(env.seal(&common::test_key()), Err(EnvelopeError::Malformed(_))));
}

#[test]
fn hub_messages_under_another_key_are_refused() {
    let wire = HubMessage::Ack(Ack { device: common::device(), up_to_seq: 5 })
        .seal(&common::test_key())
        .expect("seal");
    assert!(matches!(
        HubMessage::open(&wire, &common::hub_key().public_key()),
        Err(EnvelopeError::UnknownKey(_))
    ));
}

#[test]
fn a_gap_notice_must_travel_at_its_first_seq_and_not_end_before_it_starts() {
    let key = common::test_key();
    let mut env = common::delivered_at_address();
    env.seq = 50;
    env.event = Event::Gap(Gap { first_seq: 49, last_seq: 60 });
    assert!(matches!(env.seal(&key), Err(EnvelopeError::Malformed(_))));
    env.event = Event::Gap(Gap { first_seq: 50, last_seq: 49 });
    assert!(matches!(env.seal(&key), Err(EnvelopeError::Malformed(_))));
    env.event = Event::Gap(Gap { first_seq: 50, last_seq: 50 });
    let wire = env.seal(&key).expect("a one-seq gap is fine");
    assert_eq!(Envelope::open(&wire, &common::keyring()), Ok(env));
}
