//! Recorded car drives through the agent's whole decision chain: NMEA decoder, quality
//! gate, geofence tracker and decider, exactly as `doorstep-agent replay` runs them.
//!
//! Stops are planted where the car really stood still for at least the default dwell
//! (found by reading the logs: runs of fixes under 0.6 m/s), about 30 m from where it
//! parked, as a door across the pavement would be. Decoys are planted where the car drove
//! past at speed and far from anywhere it went. Parcels are scanned while the car stood
//! at each planted stop, and one parcel is scanned minutes after the car drove away.
//!
//! The same drives are replayed again with injected jitter (±30 m noise on every fix and
//! occasional 300 m jumps that claim an excellent HDOP): the events must not change.

use std::collections::BTreeMap;

use doorstep_agent::decide::Decided;
use doorstep_agent::fix::{Fix, GoodFix};
use doorstep_agent::geofence::{GeofenceConfig, StopEvent, Tracker};
use doorstep_agent::replay::{
    ReplayConfig, ReplayOutcome, TimedScan, decode_log, gate_all, parse_rfc3339_ms, replay_fixes,
};
use doorstep_proto::{Event, RouteManifest, Stop, StopId, TrackingNumber};

const DRIVES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmea/drives");

fn read_drive(name: &str) -> Vec<u8> {
    let path = format!("{DRIVES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{path}: {e}. The recorded drives live in ../shared/data/nmea/drives beside the repository")
    })
}

/// A stop of the plan: where, and whether the car really stood there.
struct Planted {
    id: &'static str,
    /// Where the car stood (mean of its stationary fixes), degrees.
    lat: f64,
    lon: f64,
    /// When the car stood there (RFC 3339), for the scans; `None` for decoys.
    parked: Option<(&'static str, &'static str)>,
}

impl Planted {
    const fn stop(id: &'static str, lat: f64, lon: f64, from: &'static str, to: &'static str) -> Self {
        Self { id, lat, lon, parked: Some((from, to)) }
    }

    const fn decoy(id: &'static str, lat: f64, lon: f64) -> Self {
        Self { id, lat, lon, parked: None }
    }
}

/// Regensburg, 2010-04-11, 26 min, 18 km, a fix every 2 s. The car stood still for 30 s
/// or more twice; its other stops were shorter than the dwell.
const REGENSBURG: &[Planted] = &[
    Planted::decoy("drive-past-1", 49.027263, 12.072788),
    Planted::decoy("drive-past-2", 49.039568, 12.094363),
    Planted::stop("west-end", 49.035306, 12.043195, "2010-04-11T17:12:10Z", "2010-04-11T17:13:02Z"),
    Planted::decoy("drive-past-3", 49.026865, 12.041882),
    Planted::stop("east-corner", 49.029904, 12.076942, "2010-04-11T17:20:36Z", "2010-04-11T17:21:10Z"),
    Planted::decoy("nowhere-near", 49.060000, 12.150000),
];

/// Munich, 2009-04-01, 31 min of urban stop-and-go at 1 Hz. Seven stands of 30 s or more.
const MUNICH: &[Planted] = &[
    Planted::stop("m1", 48.170494, 11.564383, "2009-04-01T12:44:20Z", "2009-04-01T12:45:01Z"),
    Planted::stop("m2", 48.151296, 11.558565, "2009-04-01T12:50:42Z", "2009-04-01T12:51:13Z"),
    Planted::stop("m3", 48.147921, 11.558792, "2009-04-01T12:52:31Z", "2009-04-01T12:53:20Z"),
    Planted::decoy("drive-past", 48.145407, 11.566598),
    Planted::stop("m4", 48.145520, 11.577303, "2009-04-01T12:57:32Z", "2009-04-01T12:58:13Z"),
    Planted::stop("m5", 48.161317, 11.586208, "2009-04-01T13:01:20Z", "2009-04-01T13:01:56Z"),
    Planted::stop("m6", 48.177198, 11.585302, "2009-04-01T13:06:06Z", "2009-04-01T13:07:11Z"),
    Planted::stop("m7", 48.176915, 11.567900, "2009-04-01T13:10:29Z", "2009-04-01T13:11:02Z"),
    Planted::decoy("nowhere-near", 48.200000, 11.500000),
];

/// The door: about 31 m north-east of where the van stood.
const DOOR_OFFSET_DEG: (f64, f64) = (0.0002, 0.0003);

fn tn(stop: usize, parcel: usize) -> TrackingNumber {
    TrackingNumber::new(format!("DS{stop:03}PARCEL{parcel:02}")).expect("valid tracking number")
}

fn route(plan: &[Planted]) -> RouteManifest {
    let stops = plan
        .iter()
        .enumerate()
        .map(|(i, p)| Stop {
            stop_id: StopId::new(p.id).expect("id"),
            lat: p.lat + DOOR_OFFSET_DEG.0,
            lon: p.lon + DOOR_OFFSET_DEG.1,
            tracking_numbers: (0..3).map(|k| tn(i, k)).collect(),
            approach_m: None,
            arrival_m: None,
            dwell_s: None,
            label: None,
        })
        .collect();
    let route = RouteManifest { route_id: "drive-test".parse().expect("id"), stops };
    route.validate().expect("planted route is valid");
    route
}

fn ms(t: &str) -> i64 {
    parse_rfc3339_ms(t).expect("time")
}

/// Two parcels scanned near the end of each stand; the third parcel of the first planted
/// stop is scanned five minutes after the car left it.
fn scans(plan: &[Planted]) -> (Vec<TimedScan>, TrackingNumber) {
    let mut scans = Vec::new();
    let scan = |utc_ms: i64, code: &TrackingNumber| TimedScan {
        utc_ms,
        code: code.to_string(),
        photo: None,
        exception: None,
        note: None,
    };
    let mut late = None;
    for (i, p) in plan.iter().enumerate() {
        if let Some((_, to)) = p.parked {
            scans.push(scan(ms(to) - 8_000, &tn(i, 0)));
            scans.push(scan(ms(to) - 4_000, &tn(i, 1)));
            if late.is_none() {
                late = Some((ms(to) + 300_000, tn(i, 2)));
            }
        }
    }
    let (when, code) = late.expect("a planted stop");
    scans.push(scan(when, &code));
    scans.sort_by_key(|s| s.utc_ms);
    (scans, code)
}

/// Arrivals per stop id, from the tracker alone over the same fixes.
fn arrivals(route: &RouteManifest, fixes: &[GoodFix]) -> BTreeMap<String, usize> {
    let mut tracker = Tracker::new(route, GeofenceConfig::default());
    let mut out = BTreeMap::new();
    for fix in fixes {
        for event in tracker.on_fix(fix) {
            if let StopEvent::Arrived { stop, .. } = event {
                *out.entry(stop.id.to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

fn stop_of(event: &Event) -> Option<&str> {
    match event {
        Event::Nearby(n) => Some(n.stop_id.as_str()),
        Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => Some(d.stop_id.as_str()),
        _ => None,
    }
}

/// The outcome every replay of a plan must have, jitter or not.
fn assert_plan_holds(
    name: &str,
    plan: &[Planted],
    fixes: &[GoodFix],
    outcome: &ReplayOutcome,
    late: &TrackingNumber,
) {
    let route = route(plan);
    let arrived = arrivals(&route, fixes);
    let events: Vec<&Decided> = outcome.events.iter().collect();
    for p in plan {
        let of_stop: Vec<&Decided> =
            events.iter().copied().filter(|e| stop_of(&e.event) == Some(p.id)).collect();
        let nearby: Vec<i64> =
            of_stop.iter().filter(|e| matches!(e.event, Event::Nearby(_))).map(|e| e.utc_ms).collect();
        let at: Vec<&Decided> =
            of_stop.iter().copied().filter(|e| matches!(e.event, Event::DeliveredAtAddress(_))).collect();
        match p.parked {
            Some((from, _)) => {
                assert_eq!(
                    nearby.len(),
                    1,
                    "{name}: planted stop {} needs exactly one nearby: {of_stop:#?}",
                    p.id
                );
                assert!(nearby[0] <= ms(from) + 60_000, "{name}: {}: nearby came late", p.id);
                assert_eq!(
                    at.len(),
                    2,
                    "{name}: both scans at {} are delivered at the address: {of_stop:#?}",
                    p.id
                );
                assert!(
                    at.iter().all(|d| d.utc_ms > nearby[0]),
                    "{name}: {}: nearby precedes delivery",
                    p.id
                );
                assert_eq!(
                    arrived.get(p.id),
                    Some(&1),
                    "{name}: planted stop {} gets exactly one arrival",
                    p.id
                );
            }
            None => {
                assert!(nearby.len() <= 1, "{name}: decoy {} has at most one nearby", p.id);
                assert!(at.is_empty(), "{name}: decoy {} has no delivery", p.id);
                assert_eq!(arrived.get(p.id), None, "{name}: decoy {} must get no arrival", p.id);
            }
        }
    }
    let away: Vec<&Decided> =
        events.iter().copied().filter(|e| matches!(e.event, Event::DeliveredAwayFromAddress(_))).collect();
    assert_eq!(away.len(), 1, "{name}: only the late scan is away from the address: {away:#?}");
    let Event::DeliveredAwayFromAddress(d) = &away[0].event else { unreachable!() };
    assert_eq!(&d.tracking_numbers[0], late);
    assert!(d.distance_m > 200, "{name}: the late scan was {} m from its stop", d.distance_m);
    assert!(
        events.iter().all(|e| !matches!(e.event, Event::ScanNotOnRoute(_))),
        "{name}: every scan is on the route"
    );
}

/// The decisions of a replay as (kind, stop, tracking numbers), for comparing runs.
type Decisions = Vec<(&'static str, Option<String>, Vec<String>)>;

fn run_plan(name: &str, file: &str, plan: &[Planted], jitter: Option<u64>) -> Decisions {
    let config = ReplayConfig::default();
    let mut fixes = decode_log(&read_drive(file), &config);
    if let Some(seed) = jitter {
        jitter_fixes(&mut fixes, seed);
    }
    let (good, gated) = gate_all(&fixes, config.gate);
    let (scans, late) = scans(plan);
    let outcome = replay_fixes(good.clone(), route(plan), &scans, &config);
    let kinds = outcome.events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.event.kind()).or_insert(0) += 1;
        m
    });
    eprintln!("{name}: {} fixes, {} good, gated {gated:?}; events {kinds:?}", fixes.len(), good.len());
    assert_plan_holds(name, plan, &good, &outcome, &late);
    outcome
        .events
        .iter()
        .map(|e| {
            let codes = match &e.event {
                Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => {
                    d.tracking_numbers.iter().map(ToString::to_string).collect()
                }
                _ => Vec::new(),
            };
            (e.event.kind(), stop_of(&e.event).map(str::to_owned), codes)
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*), so the jitter is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// ±30 m of noise on every fix, and every 37th fix thrown 300 m away while claiming an
/// excellent HDOP, as multipath near tall buildings does.
fn jitter_fixes(fixes: &mut [Fix], seed: u64) {
    let mut rng = Rng(seed);
    for (i, fix) in fixes.iter_mut().enumerate() {
        let (Some(lat), Some(lon)) = (fix.lat, fix.lon) else { continue };
        let m_per_deg_lon = 111_320.0 * lat.to_radians().cos();
        let (mut north, mut east) = (30.0 * rng.unit(), 30.0 * rng.unit());
        if i % 37 == 36 {
            let angle = std::f64::consts::PI * rng.unit();
            north = 300.0 * angle.sin();
            east = 300.0 * angle.cos();
            fix.hdop = Some(0.7);
        }
        fix.lat = Some(lat + north / 111_320.0);
        fix.lon = Some(lon + east / m_per_deg_lon);
    }
}

#[test]
fn regensburg_planted_stops_get_one_nearby_and_deliveries_and_decoys_nothing() {
    let _ = run_plan("regensburg", "genivi_20100411_Geko_Regensburg.nmea", REGENSBURG, None);
}

#[test]
fn munich_planted_stops_get_one_nearby_and_deliveries_and_decoys_nothing() {
    let _ = run_plan("munich", "genivi_munich-gps.nmea", MUNICH, None);
}

#[test]
fn regensburg_with_jitter_and_false_jumps_gives_the_same_events() {
    let file = "genivi_20100411_Geko_Regensburg.nmea";
    let clean = run_plan("regensburg", file, REGENSBURG, None);
    for seed in [0x5eed_0001, 0x5eed_0002, 0x5eed_0003] {
        assert_eq!(run_plan("regensburg+jitter", file, REGENSBURG, Some(seed)), clean, "seed {seed:#x}");
    }
}

#[test]
fn munich_with_jitter_and_false_jumps_gives_the_same_events() {
    let file = "genivi_munich-gps.nmea";
    let clean = run_plan("munich", file, MUNICH, None);
    for seed in [0x5eed_0001, 0x5eed_0002, 0x5eed_0003] {
        assert_eq!(run_plan("munich+jitter", file, MUNICH, Some(seed)), clean, "seed {seed:#x}");
    }
}
