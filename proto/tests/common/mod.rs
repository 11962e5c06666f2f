//! Fixed keys and events shared by proto's tests, golden vectors and benchmarks.
#![allow(dead_code, unreachable_pub)]

use doorstep_proto::*;

/// The published test seed: NEVER use for a real device. Golden vectors are signed with it.
pub const TEST_SEED: [u8; 32] = *b"doorstep test key, never deploy!";
/// The published hub test seed.
pub const HUB_TEST_SEED: [u8; 32] = *b"doorstep hub test key, not real!";

pub fn device() -> DeviceId {
    DeviceId::new("van-17").expect("valid id")
}

pub fn test_key() -> SigningKey {
    SigningKey::from_seed(&TEST_SEED).expect("seed")
}

pub fn hub_key() -> SigningKey {
    SigningKey::from_seed(&HUB_TEST_SEED).expect("seed")
}

pub fn keyring() -> TrustedKey {
    TrustedKey { device: device(), key: test_key().public_key() }
}

pub fn tn(s: &str) -> TrackingNumber {
    TrackingNumber::new(s).expect("valid tracking number")
}

/// The van's fix in front of the stop: 3 m accuracy, 9 satellites, parked.
pub fn parked_fix() -> FixEvidence {
    FixEvidence::new(1_763_742_062_000, 47.376_887_4, 8.541_694_2)
        .with_accuracy_m(3.4)
        .with_hdop(0.9)
        .with_sats(9)
        .with_speed_mps(0.0)
}

/// Ten samples ten seconds apart, the van driving at about 12 m/s through Zurich, as one
/// trail.
pub fn driving_trail() -> Trail {
    let samples: Vec<FixEvidence> = (0..10)
        .map(|i| {
            let fix = FixEvidence::new(
                1_763_741_962_000 + i * 10_000,
                47.370_000_0 + 0.000_8 * i as f64,
                8.535_000_0 + 0.001_1 * i as f64,
            )
            .with_speed_mps(11.5 + 0.25 * i as f64);
            if i == 0 { fix.with_accuracy_m(4.1).with_hdop(1.1).with_sats(8) } else { fix }
        })
        .collect();
    Trail::from_samples(&samples).expect("a trail")
}

/// The size case: a delivered-at-address confirmation with a photo hash and three
/// tracking numbers (UPS, USPS, FedEx formats).
pub fn delivered_at_address() -> Envelope {
    Envelope {
        device: device(),
        seq: 1042,
        event_id: HexBytes(*b"\x8f\x1c\x02\x9a\x44\x10\x4e\x7b\xa1\x3d\x55\x0e\x61\xc2\x9b\x07"),
        gnss_utc_ms: 1_763_742_075_250,
        mono_ms: 29_473_120,
        event: Event::DeliveredAtAddress(Delivery {
            route_id: RouteId::new("r-2026-11-21-van17").expect("id"),
            stop_id: StopId::new("s-014").expect("id"),
            tracking_numbers: vec![
                tn("1Z999AA10123456784"),
                tn("9400111899223197428490"),
                tn("794644790138"),
            ],
            distance_m: 38,
            dwell_s: 95,
            fix: parked_fix(),
            photo: Some(PhotoRef {
                sha256: HexBytes::from_hex(
                    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                )
                .expect("hex"),
                size: 2_481_337,
            }),
        }),
    }
}

/// One envelope of every event kind, for golden vectors and round trips.
pub fn every_kind() -> Vec<(&'static str, Envelope)> {
    let base = delivered_at_address();
    let route = RouteId::new("r-2026-11-21-van17").expect("id");
    let stop = StopId::new("s-014").expect("id");
    let with = |seq: u64, event: Event| Envelope { seq, event, ..base.clone() };
    let Event::DeliveredAtAddress(delivery) = base.event.clone() else { unreachable!() };
    vec![
        ("position", with(1040, Event::Position(parked_fix()))),
        (
            "nearby",
            with(
                1041,
                Event::Nearby(Nearby {
                    route_id: route.clone(),
                    stop_id: stop.clone(),
                    distance_m: 412,
                    fix: parked_fix(),
                }),
            ),
        ),
        ("delivered_at_address", base.clone()),
        (
            "delivered_away_from_address",
            with(
                1043,
                Event::DeliveredAwayFromAddress(Delivery {
                    distance_m: 2_350,
                    dwell_s: 0,
                    photo: None,
                    ..delivery
                }),
            ),
        ),
        (
            "exception",
            with(
                1044,
                Event::Exception(DeliveryException {
                    route_id: Some(route.clone()),
                    stop_id: Some(stop),
                    reason: ExceptionReason::NoAccess,
                    note: Some("gate code 4711 rejected".into()),
                    tracking_numbers: vec![tn("1Z999AA10123456784")],
                    distance_m: Some(22),
                    fix: Some(parked_fix()),
                    photo: None,
                }),
            ),
        ),
        (
            "scan_not_on_route",
            with(
                1045,
                Event::ScanNotOnRoute(ScanNotOnRoute {
                    route_id: Some(route),
                    barcode: Barcode::new("420902109400111899223197428490").expect("barcode"),
                    fix: None,
                }),
            ),
        ),
        ("gap", with(1046, Event::Gap(Gap { first_seq: 1046, last_seq: 1187 }))),
        ("trail", with(1188, Event::Trail(driving_trail()))),
    ]
}
