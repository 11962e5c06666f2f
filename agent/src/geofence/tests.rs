//! The tracker's behaviour over drives built in metres around a base point (parking,
//! passing, jitter, jumps, sparse and speedless fixes, scans), and the fixtures the other
//! geofence tests share.
#![expect(clippy::cast_possible_truncation, reason = "test tracks are built from small, known values")]

use doorstep_proto::{RouteManifest, Stop, StopId, TrackingNumber};
use proptest::prelude::*;

use super::zone::M_PER_DEG;
use super::*;
use crate::fix::GoodFix;

/// Where the test routes are: a street grid in Zürich.
pub(super) const BASE_LAT: f64 = 47.3769;
pub(super) const BASE_LON: f64 = 8.5417;
/// 09:00 UTC on some day in 2026.
pub(super) const T0: i64 = 1_790_000_000_000;

/// The position `east` and `north` metres from the base point.
pub(super) fn at(east: f64, north: f64) -> (f64, f64) {
    let m_per_deg_lon = M_PER_DEG * BASE_LAT.to_radians().cos();
    (BASE_LAT + north / M_PER_DEG, BASE_LON + east / m_per_deg_lon)
}

pub(super) fn stop(id: &str, east: f64, north: f64, parcels: &[&str]) -> Stop {
    let (lat, lon) = at(east, north);
    Stop {
        stop_id: StopId::new(id).expect("valid stop id"),
        lat,
        lon,
        tracking_numbers: parcels
            .iter()
            .map(|p| TrackingNumber::new(*p).expect("valid tracking number"))
            .collect(),
        approach_m: None,
        arrival_m: None,
        dwell_s: None,
        label: None,
    }
}

pub(super) fn route(stops: Vec<Stop>) -> RouteManifest {
    let route = RouteManifest { route_id: "r-test".parse().expect("valid route id"), stops };
    route.validate().expect("valid route");
    route
}

/// Three stops along a street running east, 2 km apart.
pub(super) fn street() -> RouteManifest {
    route(vec![
        stop("s1", 0.0, 0.0, &["PARCEL1A", "PARCEL1B"]),
        stop("s2", 2000.0, 0.0, &["PARCEL2A"]),
        stop("s3", 4000.0, 0.0, &["PARCEL3A"]),
    ])
}

pub(super) fn tracker(route: &RouteManifest) -> Tracker {
    Tracker::new(route, GeofenceConfig::default())
}

pub(super) fn fix(t_s: f64, east: f64, north: f64, speed_mps: f64) -> GoodFix {
    let (lat, lon) = at(east, north);
    GoodFix {
        utc_ms: T0 + (t_s * 1000.0).round() as i64,
        lat,
        lon,
        accuracy_m: 8.0,
        speed_mps: Some(speed_mps),
        hdop: Some(1.0),
        sats: Some(9),
    }
}

pub(super) fn code(s: &str) -> TrackingNumber {
    TrackingNumber::new(s).expect("valid tracking number")
}

/// A tracker with `config` on a route of one stop, s1 at the base point with parcel
/// PARCEL1A, as `adjust` leaves it.
fn one_stop(config: GeofenceConfig, adjust: impl FnOnce(&mut Stop)) -> Tracker {
    let mut s1 = stop("s1", 0.0, 0.0, &["PARCEL1A"]);
    adjust(&mut s1);
    Tracker::new(&route(vec![s1]), config)
}

/// A van that drove along [`street`] and stood a minute 40 m before s1.
fn parked_at_s1() -> Drive {
    Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(60.0)
}

/// Feeds `drive` on [`street`], then a parked van's wandering fixes, one a second for
/// `seconds`, that `make` builds from a PRNG seeded `seed`, the fix's time and its second.
/// Checks that s1 got one nearby and one arrival and that the van is still there; returns
/// the events.
fn park_wandering(
    mut drive: Drive,
    seconds: u32,
    seed: u64,
    mut make: impl FnMut(&mut Prng, f64, u32) -> GoodFix,
) -> Vec<StopEvent> {
    let (mut tracker, mut events) = drive.on_street();
    let mut prng = Prng(seed);
    for k in 1..=seconds {
        events.extend(tracker.on_fix(&make(&mut prng, drive.t_s + f64::from(k), k)));
    }
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
    assert_eq!(tracker.van_at().map(|s| s.index), Some(0));
    events
}

/// A van's drive as fixes, built leg by leg at a fixed cadence.
pub(super) struct Drive {
    t_s: f64,
    east: f64,
    north: f64,
    every_s: f64,
    fixes: Vec<GoodFix>,
    /// How many fixes have been fed to a tracker.
    fed: usize,
}

impl Drive {
    fn from(east: f64, north: f64) -> Drive {
        Drive { t_s: 0.0, east, north, every_s: 1.0, fixes: Vec::new(), fed: 0 }
    }

    /// The time of the last fix, in ms, for scans made "now".
    fn now_ms(&self) -> i64 {
        T0 + (self.t_s * 1000.0).round() as i64
    }

    fn every(mut self, seconds: f64) -> Drive {
        self.every_s = seconds;
        self
    }

    /// Drives in a straight line to (`east`, `north`) at `speed` m/s.
    fn to(mut self, east: f64, north: f64, speed: f64) -> Drive {
        let (dx, dy) = (east - self.east, north - self.north);
        let steps = ((dx.hypot(dy) / speed) / self.every_s).ceil().max(1.0) as usize;
        let (x0, y0) = (self.east, self.north);
        for k in 1..=steps {
            let f = k as f64 / steps as f64;
            self.t_s += self.every_s;
            self.fixes.push(fix(self.t_s, x0 + f * dx, y0 + f * dy, speed));
        }
        (self.east, self.north) = (east, north);
        self
    }

    /// Stands still for `seconds`.
    fn park(mut self, seconds: f64) -> Drive {
        let steps = (seconds / self.every_s).round() as usize;
        for _ in 0..steps {
            self.t_s += self.every_s;
            self.fixes.push(fix(self.t_s, self.east, self.north, 0.1));
        }
        self
    }

    /// Feeds the fixes not fed yet.
    fn feed(&mut self, tracker: &mut Tracker) -> Vec<StopEvent> {
        let events = self.fixes[self.fed..].iter().flat_map(|f| tracker.on_fix(f)).collect();
        self.fed = self.fixes.len();
        events
    }

    /// A tracker on [`street`] fed the whole drive, and the events it gave.
    fn on_street(&mut self) -> (Tracker, Vec<StopEvent>) {
        let mut tracker = tracker(&street());
        let events = self.feed(&mut tracker);
        (tracker, events)
    }

    /// What a scan of `parcel` is at the last fix of the drive on [`street`].
    fn scan_on_street(&mut self, parcel: &str) -> ScanDecision {
        let (mut tracker, _) = self.on_street();
        tracker.on_scan(self.now_ms(), &code(parcel))
    }
}

#[path = "../../tests/support/prng.rs"]
mod prng;
pub(super) use prng::Prng;

pub(super) const NO_EVENTS: [&str; 0] = [];

/// The kinds of events for one stop, in the order they came.
pub(super) fn kinds_for(events: &[StopEvent], stop: usize) -> Vec<&'static str> {
    const KINDS: [&str; 3] = ["nearby", "arrived", "departed"];
    events.iter().filter(|e| e.stop().index == stop).map(|e| KINDS[kind_rank(e)]).collect()
}

pub(super) fn kind_rank(event: &StopEvent) -> usize {
    match event {
        StopEvent::Nearby { .. } => 0,
        StopEvent::Arrived { .. } => 1,
        StopEvent::Departed { .. } => 2,
    }
}

#[test]
fn a_parked_van_with_jittery_fixes_gets_one_nearby_then_one_arrival() {
    // Ten minutes parked 80 m from the door, fixes wandering ±30 m, the Doppler speed
    // wandering up to 0.8 m/s.
    let drive = Drive::from(-1500.0, 0.0).to(-80.0, 20.0, 12.0);
    let events = park_wandering(drive, 600, 0x5eed, |prng, t, _| {
        let (east, north) = (-80.0 + prng.within(30.0), 20.0 + prng.within(30.0));
        GoodFix { speed_mps: Some(prng.unit() * 0.8), accuracy_m: 12.0, ..fix(t, east, north, 0.0) }
    });
    let Some(StopEvent::Arrived { dwell_s, distance_m, .. }) =
        events.iter().find(|e| matches!(e, StopEvent::Arrived { .. }))
    else {
        panic!("no arrival in {events:?}");
    };
    assert!(*dwell_s >= 30.0, "dwell {dwell_s}");
    assert!(*distance_m < 150.0, "distance {distance_m}");
}

#[test]
fn a_300_m_jump_that_claims_good_accuracy_neither_creates_nor_cancels_events() {
    // The van parks 60 m south of s1; the jump lands 300 m north of it, right on s2,
    // whose zones (150 m) the van never comes near.
    let mut s2 = stop("s2", 0.0, 240.0, &["PARCEL2A"]);
    s2.approach_m = Some(150);
    let route = route(vec![stop("s1", 0.0, 0.0, &["PARCEL1A"]), s2]);
    let mut tracker = tracker(&route);
    let mut drive = Drive::from(0.0, -1500.0).to(0.0, -60.0, 12.0).park(20.0);
    let mut events = drive.feed(&mut tracker);
    let mut t = drive.t_s;
    for round in 0..5 {
        t += 1.0;
        let mut jump = fix(t, 0.0, 240.0, 0.0);
        jump.accuracy_m = 3.0;
        events.extend(tracker.on_fix(&jump));
        for _ in 0..(10 + round) {
            t += 1.0;
            events.extend(tracker.on_fix(&fix(t, 0.0, -60.0, 0.0)));
        }
    }
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"], "the dwell ran through the jumps");
    assert_eq!(kinds_for(&events, 1), NO_EVENTS, "no nearby at the stop jumped to");
    assert_eq!(tracker.van_at().map(|s| s.index), Some(0));
    let scan = tracker.on_scan(T0 + (t * 1000.0) as i64, &code("PARCEL1A"));
    assert!(matches!(scan, ScanDecision::AtAddress { .. }), "{scan:?}");
}

#[test]
fn a_van_parked_at_the_edge_of_the_zone_does_not_leave_when_single_fixes_stray_beyond_it() {
    let drive = Drive::from(-1000.0, 0.0).to(-140.0, 0.0, 10.0);
    park_wandering(drive, 180, 0xed9e, |prng, t, k| {
        // Every 15 s one fix lands 70 m further out, beyond the exit radius (192 m).
        let east = if k % 15 == 0 { -210.0 } else { -140.0 + prng.within(30.0) };
        GoodFix { accuracy_m: 12.0, ..fix(t, east, prng.within(10.0), 0.2) }
    });
}

#[test]
fn driving_past_a_stop_at_speed_gives_nearby_but_no_arrival() {
    // Along the street at 30 km/h, passing s1 and s2 at 20 m: over 40 s inside each
    // arrival zone, but never standing.
    let (tracker, events) = Drive::from(-1000.0, 20.0).to(3000.0, 20.0, 8.0).on_street();
    assert_eq!(kinds_for(&events, 0), ["nearby"]);
    assert_eq!(kinds_for(&events, 1), ["nearby"]);
    assert_eq!(kinds_for(&events, 2), NO_EVENTS);
    assert_eq!(tracker.van_at(), None);
}

#[test]
fn a_short_halt_inside_the_arrival_zone_is_not_an_arrival() {
    let (_, events) =
        Drive::from(-1000.0, 20.0).to(-50.0, 20.0, 12.0).park(20.0).to(1000.0, 20.0, 12.0).on_street();
    assert_eq!(kinds_for(&events, 0), ["nearby"]);
}

#[test]
fn sparse_fixes_crossing_the_arrival_zone_without_dwell_give_no_arrival() {
    // One fix every 30 s at 8 m/s: fixes 230 m apart, one of them inside s1's arrival
    // zone, none standing still.
    let (tracker, events) = Drive::from(-2000.0, 10.0).every(30.0).to(1000.0, 10.0, 8.0).on_street();
    assert_eq!(kinds_for(&events, 0), ["nearby"]);
    assert!(!tracker.stop_status(0).expect("stop 0").arrived);
}

#[test]
fn crossing_detection_gives_nearby_across_a_missing_fix() {
    let mut tracker = one_stop(GeofenceConfig { approach_m: 200.0, ..GeofenceConfig::default() }, |_| {});
    // 1 Hz at 250 m/s would be absurd; this is a 30 s gap at 14 m/s: the fixes either side
    // are 210 m from the stop, the straight line between them passes 50 m from it.
    assert!(tracker.on_fix(&fix(0.0, -210.0, 50.0, 14.0)).is_empty());
    let events = tracker.on_fix(&fix(30.0, 210.0, 50.0, 14.0));
    let [StopEvent::Nearby { stop, crossed, closest_m, distance_m, .. }] = events.as_slice() else {
        panic!("expected one nearby, got {events:?}");
    };
    assert_eq!(stop.index, 0);
    assert!(crossed);
    assert!((closest_m - 50.0).abs() < 1.0, "closest {closest_m}");
    assert!(*distance_m > 200.0);
}

#[test]
fn no_crossing_is_inferred_across_a_long_gap() {
    let mut tracker = one_stop(GeofenceConfig { approach_m: 200.0, ..GeofenceConfig::default() }, |_| {});
    assert!(tracker.on_fix(&fix(0.0, -900.0, 50.0, 10.0)).is_empty());
    assert!(tracker.on_fix(&fix(180.0, 900.0, 50.0, 10.0)).is_empty());
}

#[test]
fn a_van_that_appears_inside_the_arrival_zone_gets_nearby_then_arrival() {
    let (_, events) = Drive::from(30.0, 30.0).park(40.0).on_street();
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
    assert!(matches!(events[0], StopEvent::Nearby { crossed: false, .. }));
}

#[test]
fn leaving_after_arrival_is_one_departure_and_coming_back_is_no_second_arrival() {
    let (_, events) =
        parked_at_s1().to(800.0, 0.0, 10.0).to(-40.0, 0.0, 10.0).park(60.0).to(800.0, 0.0, 10.0).on_street();
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived", "departed"]);
    let times: Vec<i64> = events.iter().map(StopEvent::utc_ms).collect();
    assert!(times.is_sorted(), "events in time order: {times:?}");
}

#[test]
fn a_van_that_leaves_and_comes_straight_back_is_at_the_stop_again() {
    // All within one cell of the stop index, so no cell edge forces a fresh look.
    let mut tracker = one_stop(GeofenceConfig::default(), |_| {});
    let mut drive = Drive::from(100.0, 100.0).park(40.0).to(150.0, 150.0, 5.0).park(15.0);
    let events = drive.feed(&mut tracker);
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived", "departed"]);
    assert_eq!(tracker.van_at(), None);
    drive = drive.to(100.0, 100.0, 5.0).park(5.0);
    assert_eq!(drive.feed(&mut tracker), []);
    assert_eq!(tracker.van_at().map(|s| s.index), Some(0));
}

#[test]
fn a_scan_while_parked_at_the_stop_is_at_address() {
    let mut drive = Drive::from(-1000.0, 0.0).to(-90.0, 30.0, 10.0).park(60.0);
    let (mut tracker, _) = drive.on_street();
    let decision = tracker.on_scan(drive.now_ms() + 500, &code("PARCEL1A"));
    let ScanDecision::AtAddress { stop, distance_m, dwell_s, remaining, corrects_away, .. } = decision else {
        panic!("expected at address, got {decision:?}");
    };
    assert_eq!(stop.id.as_str(), "s1");
    assert!((distance_m - 94.9).abs() < 1.0, "distance {distance_m}");
    assert!(dwell_s >= 59.0, "dwell {dwell_s}");
    assert_eq!(remaining, 1);
    assert!(!corrects_away);
}

#[test]
fn a_scan_right_after_parking_before_the_dwell_is_at_address() {
    let decision = Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(8.0).scan_on_street("PARCEL1A");
    assert!(matches!(decision, ScanDecision::AtAddress { dwell_s, .. } if dwell_s < 30.0), "{decision:?}");
}

#[test]
fn a_scan_while_rolling_through_the_arrival_zone_is_away() {
    let decision = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).scan_on_street("PARCEL1A");
    assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
}

/// Strips the Doppler speed from every fix of a drive (a GGA-only receiver).
fn without_speed(mut drive: Drive) -> Drive {
    drive.fixes.iter_mut().for_each(|f| f.speed_mps = None);
    drive
}

#[test]
fn one_speedless_fix_inside_the_zone_while_passing_is_not_standing() {
    // The SiRF drive-by: every fix has the Doppler speed of a van at 45 km/h except
    // the one epoch that lost its RMC, right at the door, where the driver scans.
    let mut drive = Drive::from(-1000.0, 0.0).to(-30.0, 0.0, 12.5);
    let (mut tracker, _) = drive.on_street();
    let passing = GoodFix { speed_mps: None, ..fix(drive.t_s + 2.0, 0.0, 0.0, 12.5) };
    tracker.on_fix(&passing);
    let decision = tracker.on_scan(passing.utc_ms, &code("PARCEL1A"));
    assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
    assert_eq!(tracker.van_at(), None, "one speedless fix places the van at no stop");
}

#[test]
fn without_doppler_a_van_passing_by_never_stands_and_its_scan_is_away() {
    let mut drive = without_speed(Drive::from(-1000.0, 0.0).to(0.0, 0.0, 7.0));
    let (mut tracker, events) = drive.on_street();
    assert!(!events.iter().any(|e| matches!(e, StopEvent::Arrived { .. })), "{events:?}");
    let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
    assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
}

#[test]
fn without_doppler_a_van_pulling_away_from_a_halt_inside_the_still_radius_is_moving() {
    // Stood 10 s at a red light 15 m before the door, then pulled away: at the scan it
    // is 15 m from where it stood, inside the still radius, but its last step is fast.
    let decision = without_speed(
        Drive::from(-1000.0, 0.0).to(-15.0, 0.0, 10.0).park(10.0).to(-10.0, 0.0, 2.5).to(0.0, 0.0, 7.0),
    )
    .scan_on_street("PARCEL1A");
    assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
}

#[test]
fn without_doppler_a_parked_van_stands_once_fixes_span_some_seconds() {
    let mut drive = without_speed(Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(2.0));
    let (mut tracker, _) = drive.on_street();
    // Two fixes 2 s apart: not yet evidence.
    let early = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
    assert!(matches!(early, ScanDecision::AwayFromAddress { .. }), "{early:?}");
    drive = without_speed(drive.park(6.0));
    drive.feed(&mut tracker);
    let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1B"));
    let ScanDecision::AtAddress { dwell_s, .. } = decision else { panic!("{decision:?}") };
    assert!(dwell_s >= 5.0, "the dwell counts from where the van stopped: {dwell_s}");
    // The parcel first scanned away is corrected by a scan now.
    let corrected = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
    assert!(matches!(corrected, ScanDecision::AtAddress { corrects_away: true, .. }), "{corrected:?}");
}

#[test]
fn without_doppler_a_parked_van_arrives_after_the_dwell() {
    let (_, events) = without_speed(Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(40.0)).on_street();
    assert_eq!(kinds_for(&events, 0), vec!["nearby", "arrived"], "{events:?}");
}

#[test]
fn a_parked_van_whose_receiver_drops_the_speed_of_some_epochs_keeps_its_dwell() {
    let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(40.0);
    let parked_from = drive.fixes.len() - 40;
    for (i, f) in drive.fixes.iter_mut().enumerate().skip(parked_from) {
        if i % 3 != 0 {
            f.speed_mps = None;
        }
    }
    let (_, events) = drive.on_street();
    assert_eq!(kinds_for(&events, 0), vec!["nearby", "arrived"], "{events:?}");
}

#[test]
fn a_scan_while_standing_carries_the_fix_and_speed_at_the_scan() {
    let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(3.0);
    let decision = drive.scan_on_street("PARCEL1A");
    let ScanDecision::AtAddress { fix, .. } = decision else { panic!("{decision:?}") };
    assert_eq!(fix.utc_ms, drive.now_ms());
    assert_eq!(fix.speed_mps, Some(0.1));
}

#[test]
fn the_same_instant_again_with_the_speed_it_lacked_is_judged() {
    // The assembler reports an epoch at GSA, then again when the RMC brings the speed.
    let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(3.0);
    let (mut tracker, _) = drive.on_street();
    let revised = fix(drive.t_s + 1.0, 0.0, 0.0, 12.5);
    tracker.on_fix(&GoodFix { speed_mps: None, ..revised });
    tracker.on_fix(&revised);
    assert_eq!(tracker.last_fix().and_then(|f| f.speed_mps), Some(12.5));
    let decision = tracker.on_scan(revised.utc_ms, &code("PARCEL1A"));
    assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "moving at the scan: {decision:?}");
    // A second copy of the same instant changes nothing.
    assert!(tracker.on_fix(&revised).is_empty());
}

#[test]
fn a_scan_just_after_pulling_away_is_still_at_address() {
    // The van left the zone about 35 s ago.
    let decision = parked_at_s1().to(500.0, 0.0, 10.0).scan_on_street("PARCEL1A");
    assert!(matches!(decision, ScanDecision::AtAddress { .. }), "{decision:?}");
}

#[test]
fn a_scan_after_driving_away_beyond_the_window_is_away_with_the_distance() {
    // Parked at s1, then 1.7 km on along the street: two and a half minutes since s1's zone.
    let decision = parked_at_s1().to(1700.0, 0.0, 10.0).scan_on_street("PARCEL1B");
    let ScanDecision::AwayFromAddress { stop, distance_m, van_at, remaining, fix } = decision else {
        panic!("expected away from address, got {decision:?}");
    };
    assert_eq!(stop.index, 0);
    let distance_m = distance_m.expect("a fix was seen");
    assert!((distance_m - 1700.0).abs() < 5.0, "distance {distance_m}");
    assert_eq!(van_at, None);
    assert_eq!(remaining, 1);
    assert!(fix.is_some());
}

#[test]
fn a_parcel_for_another_stop_names_both_stops() {
    let decision = Drive::from(1000.0, 0.0).to(1960.0, 10.0, 10.0).park(45.0).scan_on_street("PARCEL3A");
    let ScanDecision::AwayFromAddress { stop, van_at, distance_m, .. } = decision else {
        panic!("expected away from address, got {decision:?}");
    };
    assert_eq!(stop.id.as_str(), "s3", "belongs to stop s3");
    assert_eq!(van_at.map(|s| s.id.as_str().to_owned()).as_deref(), Some("s2"), "you are at s2");
    assert!((distance_m.expect("fix") - 2040.0).abs() < 5.0);
}

#[test]
fn a_parcel_scanned_at_the_wrong_stop_then_at_its_own_counts_once_at_its_address() {
    let mut drive = Drive::from(1000.0, 0.0).to(1960.0, 10.0, 10.0).park(45.0);
    let (mut tracker, _) = drive.on_street();
    let t = drive.now_ms();
    let first = tracker.on_scan(t, &code("PARCEL3A"));
    assert!(matches!(first, ScanDecision::AwayFromAddress { remaining: 0, .. }), "{first:?}");
    let again = tracker.on_scan(t + 5000, &code("PARCEL3A"));
    assert!(matches!(again, ScanDecision::Duplicate { .. }), "{again:?}");
    drive = drive.to(3980.0, 0.0, 12.0).park(40.0);
    drive.feed(&mut tracker);
    let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL3A"));
    assert!(
        matches!(decision, ScanDecision::AtAddress { remaining: 0, corrects_away: true, .. }),
        "{decision:?}"
    );
}

#[test]
fn an_unknown_code_is_not_on_route() {
    let decision = parked_at_s1().scan_on_street("NOTOURS123");
    let ScanDecision::NotOnRoute { van_at, fix } = decision else {
        panic!("expected not on route, got {decision:?}");
    };
    assert_eq!(van_at.map(|s| s.index), Some(0));
    assert!(fix.is_some());
}

#[test]
fn scanning_the_same_parcel_twice_is_a_duplicate_not_a_second_delivery() {
    let mut drive = parked_at_s1();
    let (mut tracker, _) = drive.on_street();
    let t = drive.now_ms();
    assert!(matches!(tracker.on_scan(t, &code("PARCEL1A")), ScanDecision::AtAddress { remaining: 1, .. }));
    assert!(matches!(
        tracker.on_scan(t + 2000, &code("PARCEL1A")),
        ScanDecision::Duplicate { remaining: 1, .. }
    ));
    assert!(matches!(
        tracker.on_scan(t + 4000, &code("PARCEL1B")),
        ScanDecision::AtAddress { remaining: 0, .. }
    ));
    let status = tracker.stop_status(0).expect("stop 0");
    assert_eq!((status.parcels, status.remaining), (2, 0));
}

#[test]
fn a_scan_before_any_fix_is_away_without_a_distance() {
    let route = street();
    let mut tracker = tracker(&route);
    let decision = tracker.on_scan(T0, &code("PARCEL1A"));
    assert!(matches!(decision, ScanDecision::AwayFromAddress { distance_m: None, fix: None, .. }));
}

#[test]
fn per_stop_overrides_are_honoured() {
    // s1: a farm gate 250 m from the yard, with a short dwell. s2: a city flat with a
    // tight zone and no approach warning beyond 150 m.
    let mut farm = stop("s1", 0.0, 0.0, &["PARCEL1A"]);
    (farm.arrival_m, farm.dwell_s, farm.approach_m) = (Some(300), Some(5), Some(2000));
    let mut flat = stop("s2", 5000.0, 0.0, &["PARCEL2A"]);
    (flat.arrival_m, flat.approach_m) = (Some(40), Some(150));
    let route = route(vec![farm, flat]);
    let mut tracker = tracker(&route);

    let mut drive = Drive::from(-3000.0, 0.0).to(-1900.0, 0.0, 20.0);
    assert_eq!(kinds_for(&drive.feed(&mut tracker), 0), ["nearby"], "2 km approach");
    drive = drive.to(-250.0, 0.0, 20.0).park(3.0);
    let events = drive.feed(&mut tracker);
    assert!(events.is_empty(), "standing 2 s is short of 5 s: {events:?}");
    drive = drive.park(6.0);
    assert_eq!(kinds_for(&drive.feed(&mut tracker), 0), ["arrived"], "300 m zone, 5 s dwell");

    drive = drive.to(4800.0, 0.0, 20.0);
    assert_eq!(kinds_for(&drive.feed(&mut tracker), 1), NO_EVENTS, "200 m is beyond 150 m");
    drive = drive.to(4940.0, 0.0, 10.0).park(40.0);
    let events = drive.feed(&mut tracker);
    assert_eq!(kinds_for(&events, 1), ["nearby"], "60 m is outside a 40 m arrival zone");
    drive = drive.to(4970.0, 0.0, 5.0).park(40.0);
    assert_eq!(kinds_for(&drive.feed(&mut tracker), 1), ["arrived"]);
}

#[test]
fn an_approach_override_smaller_than_the_arrival_zone_is_widened_to_it() {
    let mut tracker = one_stop(GeofenceConfig::default(), |s| s.approach_m = Some(50));
    let events = Drive::from(-120.0, 0.0).park(40.0).feed(&mut tracker);
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
}

#[test]
fn a_zero_dwell_arrives_on_the_first_standing_fix_after_nearby() {
    let mut tracker = one_stop(GeofenceConfig::default(), |s| s.dwell_s = Some(0));
    let events = tracker.on_fix(&fix(0.0, 10.0, 10.0, 0.0));
    assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
}

#[test]
fn fixes_that_repeat_or_go_back_in_time_are_ignored() {
    let route = street();
    let mut tracker = tracker(&route);
    assert_eq!(tracker.on_fix(&fix(10.0, 0.0, 0.0, 0.0)).len(), 1);
    assert!(tracker.on_fix(&fix(10.0, 2000.0, 0.0, 0.0)).is_empty());
    assert!(tracker.on_fix(&fix(5.0, 2000.0, 0.0, 0.0)).is_empty());
    assert_eq!(tracker.last_fix().map(|f| f.utc_ms), Some(T0 + 10_000));
}

#[test]
fn a_van_really_somewhere_else_is_followed_after_two_agreeing_fixes() {
    let route = street();
    let mut tracker = tracker(&route);
    tracker.on_fix(&fix(0.0, -5000.0, 0.0, 0.0));
    assert!(tracker.on_fix(&fix(1.0, 1990.0, 0.0, 0.0)).is_empty(), "one jump is held back");
    let events = tracker.on_fix(&fix(2.0, 1990.0, 0.0, 0.0));
    assert_eq!(kinds_for(&events, 1), ["nearby"]);
}

#[test]
fn without_a_reported_speed_standing_still_is_judged_by_the_spread_of_fixes() {
    let route = street();
    let mut tracker = tracker(&route);
    let mut drive = Drive::from(-400.0, 0.0).to(400.0, 0.0, 12.0);
    let passing = drive.fixes.len();
    drive = drive.to(30.0, 0.0, 10.0).park(40.0);
    for f in &mut drive.fixes {
        f.speed_mps = None;
    }
    let events: Vec<StopEvent> = drive.fixes[..passing].iter().flat_map(|f| tracker.on_fix(f)).collect();
    assert_eq!(kinds_for(&events, 0), ["nearby"], "driving through is not standing still");
    let events: Vec<StopEvent> = drive.fixes[passing..].iter().flat_map(|f| tracker.on_fix(f)).collect();
    assert_eq!(kinds_for(&events, 0), ["arrived"]);
}

/// A random route of stops 80 to 400 m apart and a random drive that parks at some
/// of them and passes others, with jitter and occasional jumps.
pub(super) fn jittery_drive(
    seed: u64,
    stops: usize,
    noise_m: f64,
    jump_every: u32,
    every_s: f64,
) -> (RouteManifest, Vec<GoodFix>) {
    let mut prng = Prng(seed | 1);
    let mut positions = Vec::new();
    let (mut east, mut north) = (0.0, 0.0);
    let mut manifest = Vec::new();
    for i in 0..stops {
        east += 80.0 + prng.unit() * 320.0;
        north += prng.within(200.0);
        positions.push((east, north));
        manifest.push(stop(&format!("s{i}"), east, north, &[]));
    }
    let mut drive = Drive::from(-1000.0, 0.0).every(every_s);
    for &(e, n) in &positions {
        let (pe, pn) = (e + prng.within(100.0), n + prng.within(100.0));
        drive = drive.to(pe, pn, 5.0 + prng.unit() * 12.0);
        if prng.unit() < 0.6 {
            drive = drive.park(prng.unit() * 120.0);
        }
    }
    let mut fixes = drive.fixes;
    for (k, f) in fixes.iter_mut().enumerate() {
        let m_per_deg_lon = M_PER_DEG * f.lat.to_radians().cos();
        let (mut de, mut dn) = (prng.within(noise_m), prng.within(noise_m));
        if jump_every > 0 && k % usize::try_from(jump_every).unwrap_or(1) == 0 {
            (de, dn) = (prng.within(400.0), prng.within(400.0));
        }
        f.lat += dn / M_PER_DEG;
        f.lon += de / m_per_deg_lon;
        f.accuracy_m = 3.0 + prng.unit() * 20.0;
        f.speed_mps = f.speed_mps.map(|s| (s + prng.within(0.5)).max(0.0));
    }
    (route(manifest), fixes)
}

proptest! {
    #[test]
    fn however_the_gps_jitters_each_stop_gets_at_most_one_of_each_event_in_order(
        seed in any::<u64>(),
        stops in 1usize..12,
        noise_m in 0.0f64..60.0,
        jump_every in 0u32..40,
        every_s in prop_oneof![Just(1.0), Just(2.0), Just(5.0), Just(30.0)],
    ) {
        let (route, fixes) = jittery_drive(seed, stops, noise_m, jump_every, every_s);
        let mut tracker = tracker(&route);
        let events: Vec<StopEvent> = fixes.iter().flat_map(|f| tracker.on_fix(f)).collect();
        for stop in 0..stops {
            let kinds = kinds_for(&events, stop);
            let allowed: [&[&str]; 4] = [&[], &["nearby"], &["nearby", "arrived"], &["nearby", "arrived", "departed"]];
            prop_assert!(allowed.contains(&kinds.as_slice()), "stop {}: {:?}", stop, kinds);
        }
        let times: Vec<i64> = events.iter().map(StopEvent::utc_ms).collect();
        prop_assert!(times.is_sorted());
    }

    #[test]
    fn nonsense_fixes_and_scans_never_panic(
        inputs in proptest::collection::vec(
            (any::<i64>(), -90.0f64..=90.0, -180.0f64..=180.0, any::<f64>(), proptest::option::of(any::<f64>()), any::<bool>()),
            1..60,
        ),
    ) {
        let route = street();
        let mut tracker = tracker(&route);
        for (utc_ms, lat, lon, accuracy_m, speed_mps, scan) in inputs {
            let f = GoodFix { utc_ms, lat, lon, accuracy_m, speed_mps, hdop: None, sats: None };
            tracker.on_fix(&f);
            if scan {
                tracker.on_scan(utc_ms, &code("PARCEL1A"));
            }
        }
    }
}
