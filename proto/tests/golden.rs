//! Golden vectors: fixed key, fixed events, their exact bytes and signatures.
//!
//! `vectors/v1.json` is the contract any other implementation checks itself against.
//! This test rebuilds every vector from the fixed inputs and requires the committed file
//! to match byte for byte; it also opens each committed envelope. To change the file
//! deliberately (never for v1 once devices ship), run with `DOORSTEP_BLESS=1`.

mod common;

use doorstep_proto::*;
use serde_json::{Value, json};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v1.json");

fn build() -> Value {
    let key = common::test_key();
    let hub = common::hub_key();
    let events: Vec<Value> = common::every_kind()
        .into_iter()
        .map(|(name, envelope)| {
            let wire = envelope.seal(&key).expect("seal");
            json!({
                "name": name,
                "envelope": envelope,
                "len": wire.len(),
                "wire_hex": hex::encode(&wire),
                "signature_hex": hex::encode(&wire[wire.len() - 64..]),
            })
        })
        .collect();
    let route = RouteManifest::from_json(
        br#"{"route_id":"r-2026-11-21-van17","stops":[{"stop_id":"s-014","lat":47.3768874,"lon":8.5416942,"tracking_numbers":["1Z999AA10123456784"],"arrival_m":80}]}"#,
    )
    .expect("route");
    let hub_messages: Vec<Value> = [
        ("ack", HubMessage::Ack(Ack { device: common::device(), up_to_seq: 1042 })),
        (
            "route",
            HubMessage::Route(RouteAssignment {
                device: common::device(),
                issued_ms: 1_763_700_000_000,
                route,
            }),
        ),
        (
            "watch",
            HubMessage::Watch(Watch {
                device: common::device(),
                issued_ms: 1_763_742_000_000,
                for_s: 120,
                every_s: 5,
            }),
        ),
        (
            "stop_note",
            HubMessage::StopNote(StopNote {
                device: common::device(),
                issued_ms: 1_763_742_060_000,
                route_id: RouteId::new("r-2026-11-21-van17").expect("id"),
                stop_id: StopId::new("s-014").expect("id"),
                tracking_number: TrackingNumber::new("1Z999AA10123456784").expect("tn"),
                text: "Bitte beim Nachbarn in Nr. 12 abgeben, not at the back door".to_owned(),
            }),
        ),
    ]
    .into_iter()
    .map(|(name, message)| {
        let wire = message.seal(&hub).expect("seal");
        json!({"name": name, "message": message, "wire_hex": hex::encode(&wire)})
    })
    .collect();
    json!({
        "about": "Doorstep wire contract v1 golden vectors. Layout: version(1) key_id(8) postcard body signature(64); \
                  the signature is Ed25519 over domain || all bytes before it. The seeds are public test keys: never deploy them.",
        "device_key": {
            "seed_hex": hex::encode(common::TEST_SEED),
            "public_key": key.public_key().to_string(),
            "key_id_hex": key.key_id().to_hex(),
            "domain": String::from_utf8_lossy(doorstep_proto::envelope::EVENT_DOMAIN),
        },
        "hub_key": {
            "seed_hex": hex::encode(common::HUB_TEST_SEED),
            "public_key": hub.public_key().to_string(),
            "key_id_hex": hub.key_id().to_hex(),
            "domain": String::from_utf8_lossy(doorstep_proto::hub::HUB_DOMAIN),
        },
        "events": events,
        "hub_messages": hub_messages,
    })
}

#[test]
fn committed_golden_vectors_match_the_encoder_byte_for_byte() {
    let built = serde_json::to_string_pretty(&build()).expect("json") + "\n";
    if std::env::var_os("DOORSTEP_BLESS").is_some() {
        std::fs::write(VECTORS, &built).expect("write vectors");
    }
    let committed = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("{VECTORS}: {e}; run with DOORSTEP_BLESS=1 to create it"));
    assert!(committed == built, "the encoder no longer produces the committed v1 bytes; v1 is frozen");
}

#[test]
fn committed_envelopes_open_to_the_committed_events() {
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("vectors")).expect("json");
    let keyring = common::keyring();
    let events = vectors["events"].as_array().expect("events");
    assert_eq!(events.len(), 8, "one vector per event kind");
    for v in events {
        let wire = hex::decode(v["wire_hex"].as_str().expect("hex")).expect("hex");
        let opened = Envelope::open(&wire, &keyring).expect("committed envelope opens");
        let expected: Envelope = serde_json::from_value(v["envelope"].clone()).expect("envelope json");
        assert_eq!(opened, expected, "vector {}", v["name"]);
        assert_eq!(opened.event.kind(), v["name"].as_str().expect("name"));
    }
    let hub_public = common::hub_key().public_key();
    for v in vectors["hub_messages"].as_array().expect("hub messages") {
        let wire = hex::decode(v["wire_hex"].as_str().expect("hex")).expect("hex");
        let opened = HubMessage::open(&wire, &hub_public).expect("hub message opens");
        let expected: HubMessage = serde_json::from_value(v["message"].clone()).expect("json");
        assert_eq!(opened, expected);
    }
}

#[test]
fn a_trail_costs_bytes_per_sample_not_a_signature_per_sample() {
    let key = common::test_key();
    let trail = common::driving_trail();
    let samples = trail.samples().expect("samples");
    assert_eq!(samples.len(), 10);
    let batched = common::every_kind().into_iter().find(|(n, _)| *n == "trail").expect("trail").1;
    let one_by_one: usize = samples
        .iter()
        .map(|fix| {
            Envelope { event: Event::Position(*fix), ..batched.clone() }.seal(&key).expect("seal").len()
        })
        .sum();
    let wire = batched.seal(&key).expect("seal").len();
    eprintln!("10 trail samples: {wire} bytes as one trail, {one_by_one} bytes as 10 position events");
    assert!(wire * 4 < one_by_one, "{wire} vs {one_by_one}");
    // Round trip: the samples come back as they went in (quality figures on the first only).
    assert_eq!(Trail::from_samples(&samples), Some(trail));
}

#[test]
fn a_delivered_confirmation_with_photo_and_three_parcels_fits_in_400_bytes() {
    let wire = common::delivered_at_address().seal(&common::test_key()).expect("seal");
    // Printed so the figure can be read off the test output (`cargo test -p doorstep-proto
    // --test golden -- --nocapture`).
    eprintln!("delivered_at_address with photo and 3 tracking numbers: {} bytes on the wire", wire.len());
    assert!(wire.len() <= 400, "{} bytes; cellular data is paid per byte", wire.len());
}
