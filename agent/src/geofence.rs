//! The geofence tracker: turns gated GPS fixes and door scans into "nearby", "arrived",
//! "departed" and "delivered at / away from address" decisions for the stops of a route.
//!
//! [`Tracker`] is a pure state machine (invariant 2 in ARCHITECTURE.md): no clock, no I/O,
//! no async. Time arrives inside the inputs ([`GoodFix::utc_ms`] and the scan's time), so
//! the same code runs in the van, in unit tests and over recorded drives.
//!
//! ```text
//! Tracker::new(&route, GeofenceConfig::default())
//! tracker.on_fix(&good_fix)          -> Vec<StopEvent>   Nearby, Arrived, Departed
//! tracker.on_scan(utc_ms, &parcel)   -> ScanDecision     AtAddress, AwayFromAddress,
//!                                                        NotOnRoute, Duplicate
//! tracker.van_at(), last_fix(), stop_status(i)           for the driver's screen and `status`
//! ```
//!
//! # Zones
//!
//! Every stop has two circles around its coordinates:
//!
//! - the **approach zone** ("nearby", default [`DEFAULT_APPROACH_M`]). The van enters it
//!   when a fix lies inside, or when the straight segment between two consecutive fixes
//!   passes through it (crossing detection: with sparse fixes the van may drive through
//!   the zone between two of them). "Nearby" is said once per stop and never taken back,
//!   so this zone has no exit to track.
//! - the **arrival zone** ("at address", default [`DEFAULT_ARRIVAL_M`]). The van enters it
//!   when a fix lies within the radius `r`, and leaves it only once its fixes have stayed
//!   beyond `r + exit margin + the fix's own accuracy` for [`GeofenceConfig::exit_confirm`]
//!   and at least two fixes (hysteresis in space and in time). While inside, the time the
//!   van has been standing still without a break is its *dwell* (standing: Doppler speed at
//!   most [`GeofenceConfig::stopped_speed_mps`]; a lone fix beyond the zone while the speed
//!   says the van stands is noise and does not break it); the van has **arrived** once the
//!   dwell reaches the stop's requirement. A segment crossing the arrival zone proves
//!   nothing about stopping, so it never makes an arrival.
//!
//! The route's per-stop overrides (`approach_m`, `arrival_m`, `dwell_s`) replace the
//! defaults; an approach radius smaller than the stop's arrival radius is widened to it,
//! so that the arrival zone always lies inside the approach zone.
//!
//! # Events
//!
//! For each stop at most one [`StopEvent::Nearby`], at most one [`StopEvent::Arrived`] and at
//! most one [`StopEvent::Departed`] are emitted, in that order, whatever the GPS does. A van
//! that appears directly inside the arrival zone gets Nearby at once and Arrived after the
//! dwell. Events carry the evidence a reviewer needs: the fix, the distance to the stop and
//! the dwell. An event's `utc_ms` is the time of the fix that decided it, so events come
//! out in time order.
//!
//! # Scans
//!
//! The GPS is in the van, not in the driver's hand. A scan is [`ScanDecision::AtAddress`]
//! when the van was inside that stop's arrival zone at scan time, or left it at most
//! [`GeofenceConfig::scan_window`] before, *and* that visit either completed its dwell or
//! the van is standing still in the zone right now (a driver who scans before the dwell has
//! run is still at the door; one who scans while rolling through the zone is not). The
//! decision uses only fixes already seen, because the driver's app needs the answer now.
//! Otherwise the scan is [`ScanDecision::AwayFromAddress`], with the distance from the van's
//! last good position and the stop the van is at, if any. A code that belongs to no stop is
//! [`ScanDecision::NotOnRoute`]; a parcel scanned again is a [`ScanDecision::Duplicate`],
//! except that a parcel first scanned away from its address and then scanned at it counts
//! as delivered at the address (the driver heeded the "wrong stop" warning).
//!
//! # Robustness
//!
//! A fix that implies an impossible speed from the previous accepted fix (more than
//! [`GeofenceConfig::max_speed_mps`], after allowing two sigma of both fixes' accuracy) is
//! held as a suspect and changes nothing; if the next fix agrees with the suspect rather than
//! with the old position, the track re-anchors there. So a lone multipath jump of a few
//! hundred metres that still claims good accuracy neither creates an event at another stop
//! nor breaks the dwell or the visit at the current one. Fixes that repeat or go back in time
//! are ignored. The quality gate upstream catches many such fixes too; the tracker does not
//! rely on it.
//!
//! # Cost
//!
//! Stops are bucketed once, at construction, into a grid of [`CELL_M`] cells in latitude and
//! longitude; each stop is listed in every cell its approach circle touches. A fix looks up
//! only the cells covering the segment from the previous fix, and distances are computed in
//! each stop's local equirectangular frame (metres; exact enough at zone scale). Each such
//! look also yields how far the van can move before it could enter any zone, and fixes that
//! stay within that distance skip the look altogether (a parked van costs almost nothing).
//! Per-visit state exists only for the few stops whose arrival zone the van is in. On the
//! development machine (two shared cores, under load) a 300-stop route costs 0.2 to 0.3 µs
//! per fix over a realistic shift and 0.4 to 0.6 µs when the van never parks
//! (`cargo bench -p doorstep-agent --bench geofence`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use doorstep_proto::route::{MAX_DWELL_S, MAX_RADIUS_M};
use doorstep_proto::{RouteManifest, StopId, TrackingNumber};
use geo::{Distance, Haversine, Point};

use crate::fix::GoodFix;

/// Default approach ("nearby") radius in metres.
///
/// In town, at 30 to 50 km/h, 600 m is about one minute of driving before the van parks and
/// the driver walks to the door: enough warning to come to the door, and small enough that in
/// dense streets not every stop the van passes is told "nearby". Rural stops, where one minute
/// covers more than a kilometre, can widen it per stop with `approach_m`.
pub const DEFAULT_APPROACH_M: f64 = 600.0;

/// Default arrival ("at address") radius in metres.
///
/// Onfleet uses 150 m. Vans park up to about 100 m from the door (no space in front, a
/// loading bay round the corner), geocodes sit on the building or plot rather than the kerb
/// (another 20 to 40 m), and the van's fix is off by 5 to 20 m in streets. A smaller radius
/// turns honest deliveries into away-from-address exceptions for operations; a larger one
/// stops telling neighbouring addresses apart.
pub const DEFAULT_ARRIVAL_M: f64 = 150.0;

/// Default extra distance beyond the arrival radius before the van counts as leaving, in
/// metres (the fix's own accuracy is added on top). Two to three times a typical street
/// fix's one-sigma error: a parked van whose fixes wander must not "leave" and "re-enter".
pub const DEFAULT_EXIT_MARGIN_M: f64 = 30.0;

/// Default dwell: how long the van must stand still inside the arrival zone before it counts
/// as arrived, in seconds.
///
/// 30 s outlasts stop signs, give-way halts and most queueing, while even the quickest real
/// drop (park, walk 30 m, ring, hand over, walk back) takes over a minute, so a real stop
/// always reaches it. A red light longer than this inside a stop's arrival zone can still
/// make an arrival; it cannot make a delivery, which needs a scan.
pub const DEFAULT_DWELL_S: u64 = 30;

/// Default speed at or below which the van counts as standing still, in metres per second
/// (5.4 km/h). A receiver's Doppler speed for a parked van stays well below 1 m/s even when
/// its position wanders; a van creeping to the kerb or in a jam counts as stopped.
pub const DEFAULT_STOPPED_SPEED_MPS: f64 = 1.5;

/// Default time the van's fixes must stay beyond the exit radius before it counts as having
/// left the arrival zone, in seconds (at least two fixes are needed as well). Outlasts a short
/// run of multipath fixes in a street canyon without delaying departure noticeably.
pub const DEFAULT_EXIT_CONFIRM_S: u64 = 10;

/// Default scan window: a scan still counts as at the address if the van was last inside the
/// stop's arrival zone at most this long before the scan, in seconds.
///
/// Covers the driver finishing the scan or the photo on the app just after pulling away,
/// the van repositioning (a two-person crew, a traffic warden), and a fix gap in a garage
/// or under trees. At town speeds 120 s is under a kilometre, so a scan at the next street
/// still counts, but a scan at a later stop does not.
pub const DEFAULT_SCAN_WINDOW_S: u64 = 120;

/// Default longest gap between two fixes across which a straight-line crossing is inferred,
/// in seconds. Beyond a minute the van's real path has little to do with the straight line.
pub const DEFAULT_MAX_CROSSING_GAP_S: u64 = 60;

/// Default highest believable van speed, in metres per second (180 km/h). Used only to spot
/// position jumps; the quality gate upstream applies its own bound.
pub const DEFAULT_MAX_SPEED_MPS: f64 = 50.0;

/// Side of one cell of the stop index, in metres. With the default approach radius each stop
/// lands in about 40 cells, and a 1 Hz fix looks up one to four of them.
pub const CELL_M: f64 = 250.0;

/// Metres kept back from the quiet ball's radius, for the small disagreements between the
/// stops' local frames and the frame of the ball (millimetres at zone scale).
const QUIET_SAFETY_M: f64 = 1.0;

/// Approach radius beyond which a stop is not put in the grid but checked on every fix, in
/// metres: such stops would fill hundreds of cells each, and there are only ever a few.
const WIDE_RADIUS_M: f64 = 2_500.0;

/// Most grid cells one fix may look up; a longer segment (a sparse fix after a fast stretch)
/// checks every stop instead, which is rare and still cheap.
const MAX_QUERY_CELLS: i64 = 16;

/// The Earth's mean radius (IUGG, the same one `geo::Haversine` uses), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Metres per degree of latitude on that sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// How many one-sigma accuracies of each fix a position jump must exceed to count as one.
const JUMP_SIGMAS: f64 = 2.0;

/// Without a reported speed, the van counts as still while its fixes stay within this many
/// metres (or two sigma of the fix, if larger) of where it stopped.
const STILL_RADIUS_M: f64 = 20.0;

/// Without a reported speed, standing needs fixes spanning at least this long within the
/// still radius, in milliseconds. One fix says nothing about motion: a receiver that lost
/// its Doppler speed for one epoch must not turn a van passing at 45 km/h into a parked
/// one.
const STILL_EVIDENCE_MS: i64 = 5_000;

/// How old the last fix that showed the van standing may be for a scan to count as made
/// while standing, in milliseconds: a few epochs of the sparsest receivers. Older than
/// that, nobody knows whether the van still stands; only a completed dwell then counts.
const STANDING_FRESH_MS: i64 = 15_000;

/// Without a reported speed, the step from the previous fix may exceed what the standing
/// speed allows by this many metres of position noise. Consecutive fixes of a parked
/// receiver move by a metre or two; a van creeping round a corner between sparse fixes, or
/// pulling away from a red light inside the still radius, covers more.
const STILL_STEP_NOISE_M: f64 = 2.0;

/// Tunable parameters of the tracker. Per-stop overrides from the route take precedence over
/// the radii and the dwell.
///
/// Build it with [`GeofenceConfig::default`] and change what the fleet needs; the agent's
/// config loader calls [`GeofenceConfig::validate`] before handing it to [`Tracker::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeofenceConfig {
    /// Approach ("nearby") radius in metres; see [`DEFAULT_APPROACH_M`].
    pub approach_m: f64,
    /// Arrival ("at address") radius in metres; see [`DEFAULT_ARRIVAL_M`].
    pub arrival_m: f64,
    /// Extra distance before leaving the arrival zone, in metres; see
    /// [`DEFAULT_EXIT_MARGIN_M`].
    pub exit_margin_m: f64,
    /// Time standing still inside the arrival zone before arrival counts; see
    /// [`DEFAULT_DWELL_S`].
    pub dwell: Duration,
    /// Speed at or below which the van is standing still, m/s; see
    /// [`DEFAULT_STOPPED_SPEED_MPS`].
    pub stopped_speed_mps: f64,
    /// Time outside the exit radius before leaving counts; see [`DEFAULT_EXIT_CONFIRM_S`].
    pub exit_confirm: Duration,
    /// How long after the van left the arrival zone a scan still counts as at the address;
    /// see [`DEFAULT_SCAN_WINDOW_S`].
    pub scan_window: Duration,
    /// Longest gap between fixes bridged by crossing detection; see
    /// [`DEFAULT_MAX_CROSSING_GAP_S`].
    pub max_crossing_gap: Duration,
    /// Highest believable speed, m/s; faster jumps are held as suspect. See
    /// [`DEFAULT_MAX_SPEED_MPS`].
    pub max_speed_mps: f64,
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        Self {
            approach_m: DEFAULT_APPROACH_M,
            arrival_m: DEFAULT_ARRIVAL_M,
            exit_margin_m: DEFAULT_EXIT_MARGIN_M,
            dwell: Duration::from_secs(DEFAULT_DWELL_S),
            stopped_speed_mps: DEFAULT_STOPPED_SPEED_MPS,
            exit_confirm: Duration::from_secs(DEFAULT_EXIT_CONFIRM_S),
            scan_window: Duration::from_secs(DEFAULT_SCAN_WINDOW_S),
            max_crossing_gap: Duration::from_secs(DEFAULT_MAX_CROSSING_GAP_S),
            max_speed_mps: DEFAULT_MAX_SPEED_MPS,
        }
    }
}

/// Why a [`GeofenceConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeofenceConfigError {
    /// A value is not a number or lies outside its allowed range.
    #[error("geofence setting {field} = {value} is out of range: it must be {range}")]
    OutOfRange {
        /// The setting's name, as in the config file.
        field: &'static str,
        /// The value given (seconds for durations).
        value: f64,
        /// The allowed range, in words.
        range: &'static str,
    },
    /// The approach radius is smaller than the arrival radius.
    #[error(
        "geofence approach_m ({approach_m} m) is smaller than arrival_m ({arrival_m} m); \
         the approach zone must contain the arrival zone"
    )]
    ApproachInsideArrival {
        /// The approach radius given.
        approach_m: f64,
        /// The arrival radius given.
        arrival_m: f64,
    },
}

impl GeofenceConfig {
    /// Checks every value for range and consistency, naming the first bad one.
    pub fn validate(&self) -> Result<(), GeofenceConfigError> {
        let max_radius = f64::from(MAX_RADIUS_M);
        let max_dwell = f64::from(MAX_DWELL_S);
        let checks: [(&'static str, f64, bool, &'static str); 9] = [
            (
                "approach_m",
                self.approach_m,
                self.approach_m > 0.0 && self.approach_m <= max_radius,
                "more than 0 and at most 20000 metres",
            ),
            (
                "arrival_m",
                self.arrival_m,
                self.arrival_m > 0.0 && self.arrival_m <= max_radius,
                "more than 0 and at most 20000 metres",
            ),
            (
                "exit_margin_m",
                self.exit_margin_m,
                (0.0..=max_radius).contains(&self.exit_margin_m),
                "0 to 20000 metres",
            ),
            (
                "dwell",
                self.dwell.as_secs_f64(),
                self.dwell.as_secs_f64() <= max_dwell,
                "at most 3600 seconds",
            ),
            (
                "stopped_speed_mps",
                self.stopped_speed_mps,
                self.stopped_speed_mps > 0.0 && self.stopped_speed_mps <= 10.0,
                "more than 0 and at most 10 m/s",
            ),
            (
                "exit_confirm",
                self.exit_confirm.as_secs_f64(),
                self.exit_confirm.as_secs_f64() <= max_dwell,
                "at most 3600 seconds",
            ),
            (
                "scan_window",
                self.scan_window.as_secs_f64(),
                self.scan_window.as_secs_f64() <= 86_400.0,
                "at most 86400 seconds",
            ),
            (
                "max_crossing_gap",
                self.max_crossing_gap.as_secs_f64(),
                self.max_crossing_gap.as_secs_f64() <= max_dwell,
                "at most 3600 seconds",
            ),
            (
                "max_speed_mps",
                self.max_speed_mps,
                self.max_speed_mps >= 10.0 && self.max_speed_mps <= 500.0,
                "10 to 500 m/s",
            ),
        ];
        // `ok` is false for NaN, since every comparison with NaN is.
        if let Some((field, value, _, range)) = checks.into_iter().find(|check| !check.2) {
            return Err(GeofenceConfigError::OutOfRange { field, value, range });
        }
        if self.approach_m < self.arrival_m {
            return Err(GeofenceConfigError::ApproachInsideArrival {
                approach_m: self.approach_m,
                arrival_m: self.arrival_m,
            });
        }
        Ok(())
    }
}

/// A stop of the route as events name it: its position in the manifest and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StopRef {
    /// Index of the stop in the route manifest's `stops` (0-based; the driver's screen shows
    /// it plus one).
    pub index: usize,
    /// The stop's id from the manifest.
    pub id: StopId,
}

/// What the tracker concluded from a fix about one stop.
///
/// Per stop there is at most one of each kind, always in the order Nearby, Arrived, Departed.
#[derive(Debug, Clone, PartialEq)]
pub enum StopEvent {
    /// The van entered the stop's approach zone: tell the customer the driver is nearby.
    Nearby {
        /// The stop.
        stop: StopRef,
        /// Time of the fix that decided it (ms since the Unix epoch, GNSS UTC).
        utc_ms: i64,
        /// Distance from that fix to the stop, in metres.
        distance_m: f64,
        /// Closest the track came to the stop between the previous fix and this one, in
        /// metres; smaller than `distance_m` when the zone was entered by crossing.
        closest_m: f64,
        /// True when the fix itself lies outside the zone and the entry was inferred from
        /// the segment between two fixes.
        crossed: bool,
        /// The fix that decided it.
        fix: GoodFix,
    },
    /// The van stood still inside the stop's arrival zone for the stop's dwell.
    Arrived {
        /// The stop.
        stop: StopRef,
        /// Time of the fix that completed the dwell.
        utc_ms: i64,
        /// Distance from that fix to the stop, in metres.
        distance_m: f64,
        /// How long the van had stood still in the zone, in seconds.
        dwell_s: f64,
        /// The fix that completed the dwell.
        fix: GoodFix,
    },
    /// The van left the arrival zone of a stop it had arrived at.
    Departed {
        /// The stop.
        stop: StopRef,
        /// Time of the fix that confirmed the departure.
        utc_ms: i64,
        /// Time of the van's last fix inside the zone (its exit radius).
        last_inside_ms: i64,
        /// Distance from the confirming fix to the stop, in metres.
        distance_m: f64,
        /// Longest time the van stood still in the zone during the visit, in seconds.
        dwell_s: f64,
        /// The fix that confirmed the departure.
        fix: GoodFix,
    },
}

impl StopEvent {
    /// The stop the event is about.
    pub fn stop(&self) -> &StopRef {
        match self {
            StopEvent::Nearby { stop, .. }
            | StopEvent::Arrived { stop, .. }
            | StopEvent::Departed { stop, .. } => stop,
        }
    }

    /// The time of the fix that decided the event.
    pub fn utc_ms(&self) -> i64 {
        match self {
            StopEvent::Nearby { utc_ms, .. }
            | StopEvent::Arrived { utc_ms, .. }
            | StopEvent::Departed { utc_ms, .. } => *utc_ms,
        }
    }
}

/// What a scanned parcel code means, decided at once from the fixes seen so far.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanDecision {
    /// Delivered at the address: the van is (or was, within the scan window) inside the
    /// parcel's stop's arrival zone, stopped.
    AtAddress {
        /// The parcel's stop.
        stop: StopRef,
        /// Distance from the van's last fix inside the zone to the stop, in metres.
        distance_m: f64,
        /// Longest time the van had stood still in the zone during the visit, in seconds
        /// (below the stop's dwell when the driver scanned before the dwell had run).
        dwell_s: f64,
        /// Parcels of this stop not yet scanned, after this one.
        remaining: usize,
        /// True when this parcel had been scanned away from its address before: this scan
        /// corrects that delivery and does not count the parcel again.
        corrects_away: bool,
        /// The van's last fix at the scan (its speed is the speed at the scan): the evidence.
        fix: GoodFix,
    },
    /// Delivered away from the address: the hub treats it as an exception.
    AwayFromAddress {
        /// The parcel's stop.
        stop: StopRef,
        /// Distance from the van's last good position to the stop, in metres; `None` before
        /// the first good fix.
        distance_m: Option<f64>,
        /// The stop the van is at instead, if any ("belongs to stop N, you are at stop M").
        van_at: Option<StopRef>,
        /// Parcels of this stop not yet scanned, after this one.
        remaining: usize,
        /// The van's last good fix: the evidence.
        fix: Option<GoodFix>,
    },
    /// The code belongs to no stop of this route.
    NotOnRoute {
        /// The stop the van is at, if any.
        van_at: Option<StopRef>,
        /// The van's last good fix.
        fix: Option<GoodFix>,
    },
    /// The parcel was already scanned; nothing changes.
    Duplicate {
        /// The parcel's stop.
        stop: StopRef,
        /// Parcels of this stop not yet scanned.
        remaining: usize,
    },
}

/// Where a stop stands, for the driver's screen and `doorstep-agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStatus {
    /// The stop.
    pub stop: StopRef,
    /// Nearby has been emitted.
    pub nearby: bool,
    /// Arrived has been emitted.
    pub arrived: bool,
    /// Departed has been emitted.
    pub departed: bool,
    /// Parcels listed for the stop.
    pub parcels: usize,
    /// Parcels not yet scanned.
    pub remaining: usize,
}

/// The geofence state machine for one route. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    zones: Vec<Zone>,
    ids: Vec<StopId>,
    flags: Vec<StopFlags>,
    index: StopIndex,
    parcel_index: HashMap<TrackingNumber, usize>,
    parcels: Vec<Parcel>,
    parcels_per_stop: Vec<usize>,
    remaining: Vec<usize>,
    /// Visits in progress: stops whose arrival zone the van is in.
    visits: Vec<Visit>,
    /// Finished visits that reached their dwell, kept for the scan window.
    recent: Vec<Visit>,
    /// The last accepted fix.
    last: Option<GoodFix>,
    /// A fix held back because it implied an impossible jump from `last`.
    suspect: Option<GoodFix>,
    /// Reused buffer of candidate stops, so a fix allocates nothing.
    scratch: Vec<usize>,
    /// Where the last full look for zones to enter found room to move: while the van stays
    /// within this ball, it cannot enter any zone, and the look is skipped.
    quiet: Option<Quiet>,
}

/// A ball around a fix inside which no zone can be entered (see [`Tracker::enter_zones`]).
#[derive(Debug, Clone, Copy)]
struct Quiet {
    lat: f64,
    lon: f64,
    radius_m: f64,
}

/// The config with durations as milliseconds, as the hot path uses it.
#[derive(Debug, Clone)]
struct Settings {
    exit_margin_m: f64,
    stopped_speed_mps: f64,
    exit_confirm_ms: i64,
    scan_window_ms: i64,
    max_crossing_gap_ms: i64,
    max_speed_mps: f64,
}

/// One stop's geometry and thresholds, with the overrides applied.
#[derive(Debug, Clone, Copy)]
struct Zone {
    lat: f64,
    lon: f64,
    /// Metres per degree of longitude at the stop's latitude.
    m_per_deg_lon: f64,
    approach_m: f64,
    arrival_m: f64,
    dwell_ms: i64,
}

impl Zone {
    /// The point's offset from the stop in metres (east, north), in the stop's local
    /// equirectangular frame: within a few kilometres it is off by far less than a GPS fix.
    fn offset(&self, lat: f64, lon: f64) -> (f64, f64) {
        (wrap_degrees(lon - self.lon) * self.m_per_deg_lon, (lat - self.lat) * M_PER_DEG)
    }

    fn distance_m(&self, lat: f64, lon: f64) -> f64 {
        let (x, y) = self.offset(lat, lon);
        (x * x + y * y).sqrt()
    }

    /// Closest distance from the stop to the segment between two positions, in metres.
    fn segment_distance_m(&self, from: &GoodFix, to: &GoodFix) -> f64 {
        let (x0, y0) = self.offset(from.lat, from.lon);
        let (x1, y1) = self.offset(to.lat, to.lon);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 { (-(x0 * dx + y0 * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
        let (cx, cy) = (x0 + t * dx, y0 + t * dy);
        (cx * cx + cy * cy).sqrt()
    }
}

/// What has been said about a stop, and whether a visit is in progress.
#[derive(Debug, Clone, Copy, Default)]
struct StopFlags {
    nearby: bool,
    arrived: bool,
    departed: bool,
    visiting: bool,
}

/// A parcel of the route and what its scans decided.
#[derive(Debug, Clone, Copy)]
struct Parcel {
    stop: usize,
    state: ParcelState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParcelState {
    Pending,
    Away,
    AtAddress,
}

/// The van's stay inside one stop's arrival zone, from entry to confirmed exit.
#[derive(Debug, Clone)]
struct Visit {
    stop: usize,
    entered_ms: i64,
    /// The last fix within the exit radius.
    last_inside: GoodFix,
    /// Distance of the last accepted fix from the stop.
    distance_m: f64,
    /// The current unbroken stretch of standing still inside the zone, or, without a
    /// Doppler speed, the fix a stretch may start from once another confirms it.
    still: Option<Still>,
    /// Time of the last fix that was evidence of standing, if the visit's latest fix was.
    standing_ms: Option<i64>,
    longest_still_ms: i64,
    /// The dwell was reached during this visit.
    dwelled: bool,
    /// This visit produced the stop's Arrived event.
    announced: bool,
    /// First fix of the current run of fixes beyond the exit radius.
    outside_since_ms: Option<i64>,
    outside_fixes: u32,
}

impl Visit {
    /// Whether the van stands in the zone at `utc_ms` by evidence: its latest fix here was
    /// evidence of standing and is at most [`STANDING_FRESH_MS`] old.
    fn standing_at(&self, utc_ms: i64) -> bool {
        self.standing_ms.is_some_and(|t| utc_ms >= t && utc_ms - t <= STANDING_FRESH_MS)
    }
}

/// Where and when the van came to a standstill.
#[derive(Debug, Clone, Copy)]
struct Still {
    since_ms: i64,
    lat: f64,
    lon: f64,
    /// Backed by evidence: a Doppler speed at or below the threshold, or fixes spanning
    /// [`STILL_EVIDENCE_MS`] within the still radius. An unconfirmed stretch is only a
    /// candidate: it neither counts towards the dwell nor makes a scan at the address.
    confirmed: bool,
}

/// What one fix inside the arrival zone says about the van's motion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Motion {
    /// Standing, by the Doppler speed or by positions spanning some seconds.
    Standing,
    /// Moving, by the Doppler speed or by the positions.
    Moving,
    /// Neither: no Doppler speed and not yet enough fixes to tell.
    Unknown,
}

/// What one fix did to a visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VisitStep {
    Stay,
    Leave,
}

impl Tracker {
    /// Builds the tracker for a route. `config` should have passed
    /// [`GeofenceConfig::validate`]; the manifest should have passed
    /// [`RouteManifest::validate`] (a parcel listed twice belongs to its first stop).
    pub fn new(route: &RouteManifest, config: GeofenceConfig) -> Tracker {
        let settings = Settings {
            exit_margin_m: config.exit_margin_m,
            stopped_speed_mps: config.stopped_speed_mps,
            exit_confirm_ms: millis(config.exit_confirm),
            scan_window_ms: millis(config.scan_window),
            max_crossing_gap_ms: millis(config.max_crossing_gap),
            max_speed_mps: config.max_speed_mps,
        };
        let default_dwell_ms = millis(config.dwell);
        let zones: Vec<Zone> = route
            .stops
            .iter()
            .map(|stop| {
                let arrival_m = stop.arrival_m.map_or(config.arrival_m, f64::from);
                let approach_m = stop.approach_m.map_or(config.approach_m, f64::from);
                Zone {
                    lat: stop.lat,
                    lon: stop.lon,
                    m_per_deg_lon: M_PER_DEG * stop.lat.to_radians().cos(),
                    // The arrival zone must lie inside the approach zone, so that Nearby can
                    // always be said before Arrived.
                    approach_m: approach_m.max(arrival_m),
                    arrival_m,
                    dwell_ms: stop.dwell_s.map_or(default_dwell_ms, |s| i64::from(s).saturating_mul(1000)),
                }
            })
            .collect();
        let mut parcel_index = HashMap::new();
        let mut parcels = Vec::new();
        let mut parcels_per_stop = vec![0; route.stops.len()];
        for (i, stop) in route.stops.iter().enumerate() {
            for code in &stop.tracking_numbers {
                if !parcel_index.contains_key(code) {
                    parcel_index.insert(code.clone(), parcels.len());
                    parcels.push(Parcel { stop: i, state: ParcelState::Pending });
                    parcels_per_stop[i] += 1;
                }
            }
        }
        Tracker {
            settings,
            index: StopIndex::build(&zones),
            flags: vec![StopFlags::default(); zones.len()],
            zones,
            ids: route.stops.iter().map(|s| s.stop_id.clone()).collect(),
            parcel_index,
            parcels,
            remaining: parcels_per_stop.clone(),
            parcels_per_stop,
            visits: Vec::new(),
            recent: Vec::new(),
            last: None,
            suspect: None,
            scratch: Vec::new(),
            quiet: None,
        }
    }

    /// Feeds one gated fix and returns what it decided, in order (usually nothing).
    ///
    /// Fixes must come in time order; one that is not later than the last accepted fix is
    /// ignored, and so is a fix that implies an impossible jump (see the module docs).
    pub fn on_fix(&mut self, fix: &GoodFix) -> Vec<StopEvent> {
        let mut events = Vec::new();
        if !(fix.lat.is_finite() && fix.lon.is_finite()) {
            return events;
        }
        let Some(previous) = self.accept(fix) else {
            return events;
        };
        let gap_ok = previous
            .is_some_and(|p| fix.utc_ms.saturating_sub(p.utc_ms) <= self.settings.max_crossing_gap_ms);
        self.update_visits(fix, gap_ok, &mut events);
        let from = if gap_ok { previous } else { None };
        let quiet = self.quiet.is_some_and(|q| local_distance_m(q.lat, q.lon, fix.lat, fix.lon) < q.radius_m);
        if !quiet {
            self.enter_zones(fix, from.as_ref(), &mut events);
        }
        let window = self.settings.scan_window_ms;
        self.recent.retain(|v| v.last_inside.utc_ms.saturating_add(window) >= fix.utc_ms);
        self.last = Some(*fix);
        events
    }

    /// Decides what a scan of `code` at `utc_ms` means and records it.
    ///
    /// The decision uses only the fixes seen so far. A parcel counts once: a second scan is a
    /// duplicate, unless the first was away from the address and this one is at it.
    pub fn on_scan(&mut self, utc_ms: i64, code: &TrackingNumber) -> ScanDecision {
        let van_at = self.van_at_time(utc_ms);
        let Some(&parcel_ix) = self.parcel_index.get(code) else {
            return ScanDecision::NotOnRoute { van_at, fix: self.last };
        };
        let Some(parcel) = self.parcels.get_mut(parcel_ix) else {
            return ScanDecision::NotOnRoute { van_at, fix: self.last };
        };
        let stop = parcel.stop;
        let stop_ref = StopRef { index: stop, id: self.ids[stop].clone() };
        if parcel.state == ParcelState::AtAddress {
            return ScanDecision::Duplicate { stop: stop_ref, remaining: self.remaining[stop] };
        }
        let at_address = self
            .visits
            .iter()
            .chain(self.recent.iter())
            .filter(|v| v.stop == stop && (v.dwelled || v.standing_at(utc_ms)))
            .find(|v| {
                utc_ms >= v.entered_ms
                    && utc_ms <= v.last_inside.utc_ms.saturating_add(self.settings.scan_window_ms)
            });
        let zone = &self.zones[stop];
        match (at_address, parcel.state) {
            (Some(visit), state) => {
                let corrects_away = state == ParcelState::Away;
                if !corrects_away {
                    self.remaining[stop] = self.remaining[stop].saturating_sub(1);
                }
                parcel.state = ParcelState::AtAddress;
                ScanDecision::AtAddress {
                    stop: stop_ref,
                    distance_m: zone.distance_m(visit.last_inside.lat, visit.last_inside.lon),
                    dwell_s: seconds(visit.longest_still_ms),
                    remaining: self.remaining[stop],
                    corrects_away,
                    // The van's fix at the scan, so its speed travels as evidence (the
                    // hub re-checks a confirmation whose van was moving).
                    fix: self.last.unwrap_or(visit.last_inside),
                }
            }
            (None, ParcelState::Away) => {
                ScanDecision::Duplicate { stop: stop_ref, remaining: self.remaining[stop] }
            }
            (None, _) => {
                parcel.state = ParcelState::Away;
                self.remaining[stop] = self.remaining[stop].saturating_sub(1);
                ScanDecision::AwayFromAddress {
                    stop: stop_ref,
                    distance_m: self.last.map(|f| haversine_m(f.lat, f.lon, zone.lat, zone.lon)),
                    van_at,
                    remaining: self.remaining[stop],
                    fix: self.last,
                }
            }
        }
    }

    /// The stop the van is at as of its last fix: the nearest stop whose arrival zone it is
    /// in and where it has completed the dwell or is standing still.
    pub fn van_at(&self) -> Option<StopRef> {
        self.van_at_time(self.last.map_or(i64::MIN, |f| f.utc_ms))
    }

    /// The last accepted fix.
    pub fn last_fix(&self) -> Option<&GoodFix> {
        self.last.as_ref()
    }

    /// Number of stops in the route.
    pub fn stop_count(&self) -> usize {
        self.zones.len()
    }

    /// Where stop `index` stands; `None` past the end of the route.
    pub fn stop_status(&self, index: usize) -> Option<StopStatus> {
        let flags = self.flags.get(index)?;
        Some(StopStatus {
            stop: StopRef { index, id: self.ids.get(index)?.clone() },
            nearby: flags.nearby,
            arrived: flags.arrived,
            departed: flags.departed,
            parcels: *self.parcels_per_stop.get(index)?,
            remaining: *self.remaining.get(index)?,
        })
    }

    /// The stop the van is at for a decision at `utc_ms`: as [`Tracker::van_at`], and only if
    /// the van was last seen inside within the scan window.
    fn van_at_time(&self, utc_ms: i64) -> Option<StopRef> {
        let window = self.settings.scan_window_ms;
        self.visits
            .iter()
            .filter(|v| v.dwelled || v.standing_at(utc_ms))
            .filter(|v| utc_ms <= v.last_inside.utc_ms.saturating_add(window))
            .min_by(|a, b| a.distance_m.total_cmp(&b.distance_m))
            .map(|v| StopRef { index: v.stop, id: self.ids[v.stop].clone() })
    }

    /// Decides whether `fix` moves the track on. Returns `None` to ignore it, otherwise the
    /// fix the track comes from (`Some(None)` for the very first fix).
    fn accept(&mut self, fix: &GoodFix) -> Option<Option<GoodFix>> {
        let Some(last) = self.last else {
            return Some(None);
        };
        // The same instant again counts only as the receiver's speed arriving late for it
        // (the assembler's revision of an epoch): then it is judged like a new fix.
        let revision = fix.utc_ms == last.utc_ms && last.speed_mps.is_none() && fix.speed_mps.is_some();
        if fix.utc_ms < last.utc_ms || (fix.utc_ms == last.utc_ms && !revision) {
            return None;
        }
        if self.plausible(&last, fix) {
            self.suspect = None;
            return Some(Some(last));
        }
        // Two fixes in a row that agree with each other but not with the old position: the
        // old position was the outlier, or the van really is elsewhere. Re-anchor.
        match self.suspect.replace(*fix) {
            Some(s) if s.utc_ms < fix.utc_ms && self.plausible(&s, fix) => {
                self.suspect = None;
                // The track now comes from a fix the quiet ball knows nothing about.
                self.quiet = None;
                Some(Some(s))
            }
            _ => None,
        }
    }

    /// Whether the van could have moved from `a` to `b` in the time between them.
    fn plausible(&self, a: &GoodFix, b: &GoodFix) -> bool {
        let dt_s = seconds(b.utc_ms.saturating_sub(a.utc_ms));
        let slack = JUMP_SIGMAS * (sigma(a) + sigma(b));
        local_distance_m(a.lat, a.lon, b.lat, b.lon) <= self.settings.max_speed_mps * dt_s + slack
    }

    /// Advances every visit in progress by one fix: dwell, arrival, departure.
    fn update_visits(&mut self, fix: &GoodFix, gap_ok: bool, events: &mut Vec<StopEvent>) {
        let mut i = 0;
        while i < self.visits.len() {
            let step = self.step_visit(i, fix, gap_ok, events);
            if step == VisitStep::Leave {
                let visit = self.visits.swap_remove(i);
                self.leave(visit, fix, events);
            } else {
                i += 1;
            }
        }
    }

    /// Ends a visit: Departed if it was the visit that arrived, and keep it for the scan
    /// window if the van had stopped there.
    fn leave(&mut self, visit: Visit, fix: &GoodFix, events: &mut Vec<StopEvent>) {
        let flags = &mut self.flags[visit.stop];
        flags.visiting = false;
        // The stop's arrival zone can be entered again: look on the next fix.
        self.quiet = None;
        if visit.announced && !flags.departed {
            flags.departed = true;
            events.push(StopEvent::Departed {
                stop: StopRef { index: visit.stop, id: self.ids[visit.stop].clone() },
                utc_ms: fix.utc_ms,
                last_inside_ms: visit.last_inside.utc_ms,
                distance_m: visit.distance_m,
                dwell_s: seconds(visit.longest_still_ms),
                fix: *fix,
            });
        }
        if visit.dwelled {
            self.recent.push(visit);
        }
    }

    /// Applies one fix to visit `i`, pushing Arrived when its dwell completes.
    fn step_visit(
        &mut self,
        i: usize,
        fix: &GoodFix,
        gap_ok: bool,
        events: &mut Vec<StopEvent>,
    ) -> VisitStep {
        let settings = &self.settings;
        let visit = &mut self.visits[i];
        let zone = &self.zones[visit.stop];
        let distance_m = zone.distance_m(fix.lat, fix.lon);
        visit.distance_m = distance_m;
        let exit_m = zone.arrival_m + settings.exit_margin_m + sigma(fix);
        if distance_m > exit_m {
            // A stray fix while the Doppler speed says the van stands is position noise: it
            // neither adds to the dwell nor breaks it. Without a speed it breaks it.
            let standing = fix.speed_mps.is_some_and(|speed| speed <= settings.stopped_speed_mps);
            if !(standing && gap_ok && visit.still.is_some_and(|s| s.confirmed)) {
                visit.still = None;
                visit.standing_ms = None;
            }
            visit.outside_fixes = visit.outside_fixes.saturating_add(1);
            let since = *visit.outside_since_ms.get_or_insert(fix.utc_ms);
            let confirmed =
                visit.outside_fixes >= 2 && fix.utc_ms.saturating_sub(since) >= settings.exit_confirm_ms;
            return if confirmed { VisitStep::Leave } else { VisitStep::Stay };
        }
        visit.outside_since_ms = None;
        visit.outside_fixes = 0;
        let previous = visit.last_inside;
        visit.last_inside = *fix;
        let candidate = Still { since_ms: fix.utc_ms, lat: fix.lat, lon: fix.lon, confirmed: false };
        let (motion, still) = match (fix.speed_mps, visit.still.filter(|_| gap_ok)) {
            (Some(speed), _) if speed > settings.stopped_speed_mps => (Motion::Moving, None),
            // Standing by Doppler: an unbroken stretch goes on (a candidate started by
            // speedless fixes only if this fix is where it started), else one starts here.
            // The stretch keeps its start time but moves its place to this fix: a van
            // creeping to the kerb at walking pace stands by Doppler, and a later fix
            // without speed is judged against where it stands now.
            (Some(_), Some(still)) if still.confirmed || within_still(&still, fix) => {
                (Motion::Standing, Some(Still { confirmed: true, lat: fix.lat, lon: fix.lon, ..still }))
            }
            (Some(_), _) => (Motion::Standing, Some(Still { confirmed: true, ..candidate })),
            // No Doppler speed (a GGA-only receiver, or an epoch that lost its RMC):
            // judge by positions, and only with evidence from more than this one fix.
            (None, Some(still))
                if within_still(&still, fix)
                    && slow_step(&previous, fix, gap_ok, settings.stopped_speed_mps) =>
            {
                if still.confirmed || fix.utc_ms.saturating_sub(still.since_ms) >= STILL_EVIDENCE_MS {
                    (Motion::Standing, Some(Still { confirmed: true, ..still }))
                } else {
                    (Motion::Unknown, Some(still))
                }
            }
            // The positions moved: a stretch ends, and this fix may start the next one.
            (None, Some(still)) if still.confirmed => (Motion::Moving, Some(candidate)),
            (None, _) => (Motion::Unknown, Some(candidate)),
        };
        visit.still = still;
        visit.standing_ms = (motion == Motion::Standing).then_some(fix.utc_ms);
        if motion == Motion::Standing
            && let Some(still) = visit.still
        {
            let still_ms = fix.utc_ms.saturating_sub(still.since_ms);
            visit.longest_still_ms = visit.longest_still_ms.max(still_ms);
            visit.dwelled |= still_ms >= zone.dwell_ms;
        }
        let flags = &mut self.flags[visit.stop];
        if visit.dwelled && !flags.arrived {
            let stop = StopRef { index: visit.stop, id: self.ids[visit.stop].clone() };
            if !flags.nearby {
                // Cannot happen (a visit starts inside the approach zone), but the order
                // Nearby before Arrived is a promise, so keep it even then.
                flags.nearby = true;
                events.push(StopEvent::Nearby {
                    stop: stop.clone(),
                    utc_ms: fix.utc_ms,
                    distance_m,
                    closest_m: distance_m,
                    crossed: false,
                    fix: *fix,
                });
            }
            flags.arrived = true;
            visit.announced = true;
            events.push(StopEvent::Arrived {
                stop,
                utc_ms: fix.utc_ms,
                distance_m,
                dwell_s: seconds(visit.longest_still_ms),
                fix: *fix,
            });
        }
        VisitStep::Stay
    }

    /// Looks for stops whose approach zone the track from `from` to `fix` entered (Nearby)
    /// and stops whose arrival zone `fix` lies in (a new visit).
    ///
    /// It also measures how far the van can move before it could enter any zone it is not
    /// in: the nearest edge of such a zone among the candidates, or of the grid cell (zones
    /// of other stops do not reach into the cell). While later fixes stay within that
    /// distance, so do the segments between them, and [`Tracker::on_fix`] skips this look.
    /// A parked van, most of a shift, then costs almost nothing.
    fn enter_zones(&mut self, fix: &GoodFix, from: Option<&GoodFix>, events: &mut Vec<StopEvent>) {
        let mut candidates = std::mem::take(&mut self.scratch);
        candidates.clear();
        let cell = self.index.candidates(from, fix, &mut candidates);
        let mut room_m = cell.map_or(f64::NEG_INFINITY, |c| self.index.edge_distance_m(c, fix));
        // No point of the segment is further from `fix` than its length.
        let step_m = from.map_or(0.0, |from| local_distance_m(from.lat, from.lon, fix.lat, fix.lon));
        for &stop in &candidates {
            let flags = self.flags[stop];
            if flags.nearby && flags.visiting {
                continue;
            }
            let zone = self.zones[stop];
            let distance_m = zone.distance_m(fix.lat, fix.lon);
            if !flags.nearby {
                let closest_m = match from {
                    Some(from) if distance_m > zone.approach_m && distance_m - step_m <= zone.approach_m => {
                        zone.segment_distance_m(from, fix)
                    }
                    _ => distance_m,
                };
                if closest_m <= zone.approach_m {
                    self.flags[stop].nearby = true;
                    events.push(StopEvent::Nearby {
                        stop: StopRef { index: stop, id: self.ids[stop].clone() },
                        utc_ms: fix.utc_ms,
                        distance_m,
                        closest_m,
                        crossed: distance_m > zone.approach_m,
                        fix: *fix,
                    });
                }
            }
            if !flags.visiting && distance_m <= zone.arrival_m {
                self.flags[stop].visiting = true;
                self.visits.push(Visit {
                    stop,
                    entered_ms: fix.utc_ms,
                    last_inside: *fix,
                    distance_m,
                    still: None,
                    standing_ms: None,
                    longest_still_ms: 0,
                    dwelled: false,
                    announced: false,
                    outside_since_ms: None,
                    outside_fixes: 0,
                });
                // The entering fix may already complete a zero dwell.
                let last = self.visits.len() - 1;
                let _stays = self.step_visit(last, fix, false, events);
            }
            let flags = self.flags[stop];
            if !flags.nearby {
                room_m = room_m.min(distance_m - zone.approach_m);
            }
            if !flags.visiting {
                room_m = room_m.min(distance_m - zone.arrival_m);
            }
        }
        self.quiet = (room_m > QUIET_SAFETY_M).then_some(Quiet {
            lat: fix.lat,
            lon: fix.lon,
            radius_m: room_m - QUIET_SAFETY_M,
        });
        self.scratch = candidates;
    }
}

/// Stops bucketed by grid cell, so a fix examines only the stops it could be near.
#[derive(Debug, Clone)]
struct StopIndex {
    /// Reference point of the grid; longitudes are taken relative to it so a route near the
    /// antimeridian does not split.
    lat0: f64,
    lon0: f64,
    cell_lat_deg: f64,
    cell_lon_deg: f64,
    /// Cell key to a range of `members`.
    cells: HashMap<u64, (usize, usize), BuildHasherDefault<CellHasher>>,
    members: Vec<usize>,
    /// Stops with huge zones, checked on every fix.
    wide: Vec<usize>,
    /// Check every stop on every fix (tests compare the grid against this).
    linear: bool,
    len: usize,
}

impl StopIndex {
    fn build(zones: &[Zone]) -> StopIndex {
        let (lat0, lon0) = zones.first().map_or((0.0, 0.0), |z| (z.lat, z.lon));
        let cell_lat_deg = CELL_M / M_PER_DEG;
        let cell_lon_deg = CELL_M / (M_PER_DEG * lat0.to_radians().cos().max(0.01));
        let mut index = StopIndex {
            lat0,
            lon0,
            cell_lat_deg,
            cell_lon_deg,
            cells: HashMap::default(),
            members: Vec::new(),
            wide: Vec::new(),
            linear: false,
            len: zones.len(),
        };
        let mut entries: Vec<(u64, usize)> = Vec::new();
        for (stop, zone) in zones.iter().enumerate() {
            let half_lat = zone.approach_m / M_PER_DEG;
            // The circle is widest in longitude at its edge nearest the pole.
            let pole_lat = (zone.lat.abs() + half_lat).min(89.0);
            let half_lon = zone.approach_m / (M_PER_DEG * pole_lat.to_radians().cos());
            let (y0, y1) =
                (index.cell_y(zone.lat - half_lat * 1.001), index.cell_y(zone.lat + half_lat * 1.001));
            let (x0, x1) =
                (index.cell_x(zone.lon - half_lon * 1.001), index.cell_x(zone.lon + half_lon * 1.001));
            let cells = (i64::from(y1) - i64::from(y0) + 1) * (i64::from(x1) - i64::from(x0) + 1);
            if zone.approach_m > WIDE_RADIUS_M || !(1..=4096).contains(&cells) {
                index.wide.push(stop);
                continue;
            }
            for y in y0..=y1 {
                for x in x0..=x1 {
                    entries.push((cell_key(x, y), stop));
                }
            }
        }
        entries.sort_unstable();
        index.members = entries.iter().map(|&(_, stop)| stop).collect();
        let mut start = 0;
        while start < entries.len() {
            let key = entries[start].0;
            let end = start + entries[start..].iter().take_while(|e| e.0 == key).count();
            index.cells.insert(key, (start, end));
            start = end;
        }
        index
    }

    fn cell_y(&self, lat: f64) -> i32 {
        grid_coordinate((lat - self.lat0) / self.cell_lat_deg)
    }

    fn cell_x(&self, lon: f64) -> i32 {
        grid_coordinate(wrap_degrees(lon - self.lon0) / self.cell_lon_deg)
    }

    /// Appends the stops whose approach zone could hold `fix` or the segment from `from`.
    /// A stop may appear more than once. Returns the grid cell when the look covered
    /// exactly one.
    fn candidates(&self, from: Option<&GoodFix>, fix: &GoodFix, out: &mut Vec<usize>) -> Option<(i32, i32)> {
        let (mut y0, mut x0) = (self.cell_y(fix.lat), self.cell_x(fix.lon));
        let (mut y1, mut x1) = (y0, x0);
        if let Some(from) = from {
            let (y, x) = (self.cell_y(from.lat), self.cell_x(from.lon));
            (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
        }
        let cells = (i64::from(y1) - i64::from(y0) + 1) * (i64::from(x1) - i64::from(x0) + 1);
        if self.linear || cells > MAX_QUERY_CELLS {
            out.extend(0..self.len);
            return None;
        }
        out.extend_from_slice(&self.wide);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if let Some(&(start, end)) = self.cells.get(&cell_key(x, y)) {
                    out.extend_from_slice(&self.members[start..end]);
                }
            }
        }
        (cells == 1).then_some((x0, y0))
    }

    /// Distance from `fix` to the nearest edge of grid cell `(x, y)`, in metres (negative if
    /// the fix is not in it).
    fn edge_distance_m(&self, (x, y): (i32, i32), fix: &GoodFix) -> f64 {
        let lat_lo = self.lat0 + f64::from(y) * self.cell_lat_deg;
        let north_south = (fix.lat - lat_lo).min(lat_lo + self.cell_lat_deg - fix.lat) * M_PER_DEG;
        let lon = wrap_degrees(fix.lon - self.lon0);
        let lon_lo = f64::from(x) * self.cell_lon_deg;
        let m_per_deg_lon = M_PER_DEG * fix.lat.to_radians().cos();
        let east_west = (lon - lon_lo).min(lon_lo + self.cell_lon_deg - lon) * m_per_deg_lon;
        north_south.min(east_west)
    }
}

/// A grid coordinate from a position in cells, saturating far outside any route.
#[expect(clippy::cast_possible_truncation, reason = "clamped to the i32 range first")]
fn grid_coordinate(cells: f64) -> i32 {
    cells.floor().clamp(-1e9, 1e9) as i32
}

fn cell_key(x: i32, y: i32) -> u64 {
    (u64::from(x.cast_unsigned()) << 32) | u64::from(y.cast_unsigned())
}

/// A multiplicative hasher for cell keys (the std SipHash costs more than the lookup).
#[derive(Debug, Clone, Copy, Default)]
struct CellHasher(u64);

impl Hasher for CellHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `degrees` folded into [-180, 180).
fn wrap_degrees(degrees: f64) -> f64 {
    if (-180.0..180.0).contains(&degrees) { degrees } else { (degrees + 180.0).rem_euclid(360.0) - 180.0 }
}

/// Equirectangular distance between two nearby positions, in metres.
fn local_distance_m(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    let mid_lat = (0.5 * (lat_a + lat_b)).to_radians();
    let x = wrap_degrees(lon_b - lon_a) * M_PER_DEG * mid_lat.cos();
    let y = (lat_b - lat_a) * M_PER_DEG;
    (x * x + y * y).sqrt()
}

/// Great-circle distance in metres, for distances that may be long (a scan far away).
fn haversine_m(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    Haversine.distance(Point::new(lon_a, lat_a), Point::new(lon_b, lat_b))
}

/// A fix's one-sigma accuracy, with nonsense (negative, NaN) read as zero.
/// Whether `fix` lies within the still radius of where the stretch `still` started.
fn within_still(still: &Still, fix: &GoodFix) -> bool {
    local_distance_m(still.lat, still.lon, fix.lat, fix.lon) <= STILL_RADIUS_M.max(JUMP_SIGMAS * sigma(fix))
}

/// Whether the step from `previous` to `fix` is slow enough for a parked van: no faster
/// than `stopped_speed_mps` over the time between them, plus [`STILL_STEP_NOISE_M`].
/// Across a long gap nothing is known.
fn slow_step(previous: &GoodFix, fix: &GoodFix, gap_ok: bool, stopped_speed_mps: f64) -> bool {
    let dt_s = seconds(fix.utc_ms.saturating_sub(previous.utc_ms));
    if !gap_ok {
        return false;
    }
    if dt_s <= 0.0 {
        return true;
    }
    local_distance_m(previous.lat, previous.lon, fix.lat, fix.lon)
        <= stopped_speed_mps * dt_s + STILL_STEP_NOISE_M
}

fn sigma(fix: &GoodFix) -> f64 {
    fix.accuracy_m.max(0.0)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
#[expect(clippy::cast_possible_truncation, reason = "test tracks are built from small, known values")]
mod tests {
    use doorstep_proto::Stop;
    use proptest::prelude::*;

    use super::*;

    /// Where the test routes are: a street grid in Zürich.
    const BASE_LAT: f64 = 47.3769;
    const BASE_LON: f64 = 8.5417;
    /// 09:00 UTC on some day in 2026.
    const T0: i64 = 1_790_000_000_000;

    /// The position `east` and `north` metres from the base point.
    fn at(east: f64, north: f64) -> (f64, f64) {
        let m_per_deg_lon = M_PER_DEG * BASE_LAT.to_radians().cos();
        (BASE_LAT + north / M_PER_DEG, BASE_LON + east / m_per_deg_lon)
    }

    fn stop(id: &str, east: f64, north: f64, parcels: &[&str]) -> Stop {
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

    fn route(stops: Vec<Stop>) -> RouteManifest {
        let route = RouteManifest { route_id: "r-test".parse().expect("valid route id"), stops };
        route.validate().expect("valid route");
        route
    }

    /// Three stops along a street running east, 2 km apart.
    fn street() -> RouteManifest {
        route(vec![
            stop("s1", 0.0, 0.0, &["PARCEL1A", "PARCEL1B"]),
            stop("s2", 2000.0, 0.0, &["PARCEL2A"]),
            stop("s3", 4000.0, 0.0, &["PARCEL3A"]),
        ])
    }

    fn tracker(route: &RouteManifest) -> Tracker {
        Tracker::new(route, GeofenceConfig::default())
    }

    fn fix(t_s: f64, east: f64, north: f64, speed_mps: f64) -> GoodFix {
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

    fn code(s: &str) -> TrackingNumber {
        TrackingNumber::new(s).expect("valid tracking number")
    }

    /// A van's drive as fixes, built leg by leg at a fixed cadence.
    struct Drive {
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
    }

    /// A tiny deterministic PRNG (xorshift64*), so the tests need no rand dependency.
    struct Prng(u64);

    impl Prng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (x >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Uniform in [-a, a].
        fn within(&mut self, a: f64) -> f64 {
            (self.next_f64() * 2.0 - 1.0) * a
        }
    }

    const NO_EVENTS: [&str; 0] = [];

    /// The kinds of events for one stop, in the order they came.
    fn kinds_for(events: &[StopEvent], stop: usize) -> Vec<&'static str> {
        const KINDS: [&str; 3] = ["nearby", "arrived", "departed"];
        events.iter().filter(|e| e.stop().index == stop).map(|e| KINDS[kind_rank(e)]).collect()
    }

    fn kind_rank(event: &StopEvent) -> usize {
        match event {
            StopEvent::Nearby { .. } => 0,
            StopEvent::Arrived { .. } => 1,
            StopEvent::Departed { .. } => 2,
        }
    }

    #[test]
    fn a_parked_van_with_jittery_fixes_gets_one_nearby_then_one_arrival() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1500.0, 0.0).to(-80.0, 20.0, 12.0);
        let mut events = drive.feed(&mut tracker);
        // Ten minutes parked 80 m from the door, fixes wandering ±30 m, the Doppler speed
        // wandering up to 0.8 m/s.
        let mut prng = Prng(0x5eed);
        for k in 1..=600 {
            let (east, north) = (-80.0 + prng.within(30.0), 20.0 + prng.within(30.0));
            let mut f = fix(drive.t_s + f64::from(k), east, north, 0.0);
            f.speed_mps = Some(prng.next_f64() * 0.8);
            f.accuracy_m = 12.0;
            events.extend(tracker.on_fix(&f));
        }
        assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
        assert_eq!(tracker.van_at().map(|s| s.index), Some(0));
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-140.0, 0.0, 10.0);
        let mut events = drive.feed(&mut tracker);
        let mut prng = Prng(0xed9e);
        for k in 1..=180 {
            // Every 15 s one fix lands 70 m further out, beyond the exit radius (192 m).
            let east = if k % 15 == 0 { -210.0 } else { -140.0 + prng.within(30.0) };
            let mut f = fix(drive.t_s + f64::from(k), east, prng.within(10.0), 0.2);
            f.accuracy_m = 12.0;
            events.extend(tracker.on_fix(&f));
        }
        assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
        assert_eq!(tracker.van_at().map(|s| s.index), Some(0));
    }

    #[test]
    fn driving_past_a_stop_at_speed_gives_nearby_but_no_arrival() {
        let route = street();
        let mut tracker = tracker(&route);
        // Along the street at 30 km/h, passing s1 and s2 at 20 m: over 40 s inside each
        // arrival zone, but never standing.
        let events = Drive::from(-1000.0, 20.0).to(3000.0, 20.0, 8.0).feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), ["nearby"]);
        assert_eq!(kinds_for(&events, 1), ["nearby"]);
        assert_eq!(kinds_for(&events, 2), NO_EVENTS);
        assert_eq!(tracker.van_at(), None);
    }

    #[test]
    fn a_short_halt_inside_the_arrival_zone_is_not_an_arrival() {
        let route = street();
        let mut tracker = tracker(&route);
        let events = Drive::from(-1000.0, 20.0)
            .to(-50.0, 20.0, 12.0)
            .park(20.0)
            .to(1000.0, 20.0, 12.0)
            .feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), ["nearby"]);
    }

    #[test]
    fn sparse_fixes_crossing_the_arrival_zone_without_dwell_give_no_arrival() {
        let route = street();
        let mut tracker = tracker(&route);
        // One fix every 30 s at 8 m/s: fixes 230 m apart, one of them inside s1's arrival
        // zone, none standing still.
        let events = Drive::from(-2000.0, 10.0).every(30.0).to(1000.0, 10.0, 8.0).feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), ["nearby"]);
        assert!(!tracker.stop_status(0).expect("stop 0").arrived);
    }

    #[test]
    fn crossing_detection_gives_nearby_across_a_missing_fix() {
        let route = route(vec![stop("s1", 0.0, 0.0, &["PARCEL1A"])]);
        let config = GeofenceConfig { approach_m: 200.0, ..GeofenceConfig::default() };
        let mut tracker = Tracker::new(&route, config);
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
        let route = route(vec![stop("s1", 0.0, 0.0, &["PARCEL1A"])]);
        let config = GeofenceConfig { approach_m: 200.0, ..GeofenceConfig::default() };
        let mut tracker = Tracker::new(&route, config);
        assert!(tracker.on_fix(&fix(0.0, -900.0, 50.0, 10.0)).is_empty());
        assert!(tracker.on_fix(&fix(180.0, 900.0, 50.0, 10.0)).is_empty());
    }

    #[test]
    fn a_van_that_appears_inside_the_arrival_zone_gets_nearby_then_arrival() {
        let route = street();
        let mut tracker = tracker(&route);
        let events = Drive::from(30.0, 30.0).park(40.0).feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
        assert!(matches!(events[0], StopEvent::Nearby { crossed: false, .. }));
    }

    #[test]
    fn leaving_after_arrival_is_one_departure_and_coming_back_is_no_second_arrival() {
        let route = street();
        let mut tracker = tracker(&route);
        let events = Drive::from(-1000.0, 0.0)
            .to(-40.0, 0.0, 10.0)
            .park(60.0)
            .to(800.0, 0.0, 10.0)
            .to(-40.0, 0.0, 10.0)
            .park(60.0)
            .to(800.0, 0.0, 10.0)
            .feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), ["nearby", "arrived", "departed"]);
        let times: Vec<i64> = events.iter().map(StopEvent::utc_ms).collect();
        assert!(times.is_sorted(), "events in time order: {times:?}");
    }

    #[test]
    fn a_van_that_leaves_and_comes_straight_back_is_at_the_stop_again() {
        // All within one cell of the stop index, so no cell edge forces a fresh look.
        let route = route(vec![stop("s1", 0.0, 0.0, &["PARCEL1A"])]);
        let mut tracker = tracker(&route);
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-90.0, 30.0, 10.0).park(60.0);
        drive.feed(&mut tracker);
        let scan_ms = drive.now_ms() + 500;
        let decision = tracker.on_scan(scan_ms, &code("PARCEL1A"));
        let ScanDecision::AtAddress { stop, distance_m, dwell_s, remaining, corrects_away, .. } = decision
        else {
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(8.0);
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
        assert!(
            matches!(decision, ScanDecision::AtAddress { dwell_s, .. } if dwell_s < 30.0),
            "{decision:?}"
        );
    }

    #[test]
    fn a_scan_while_rolling_through_the_arrival_zone_is_away() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0);
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-30.0, 0.0, 12.5);
        drive.feed(&mut tracker);
        let mut passing = fix(drive.t_s + 2.0, 0.0, 0.0, 12.5);
        passing.speed_mps = None;
        tracker.on_fix(&passing);
        let decision = tracker.on_scan(passing.utc_ms, &code("PARCEL1A"));
        assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
        assert_eq!(tracker.van_at(), None, "one speedless fix places the van at no stop");
    }

    #[test]
    fn without_doppler_a_van_passing_by_never_stands_and_its_scan_is_away() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = without_speed(Drive::from(-1000.0, 0.0).to(0.0, 0.0, 7.0));
        let events = drive.feed(&mut tracker);
        assert!(!events.iter().any(|e| matches!(e, StopEvent::Arrived { .. })), "{events:?}");
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
        assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
    }

    #[test]
    fn without_doppler_a_van_pulling_away_from_a_halt_inside_the_still_radius_is_moving() {
        // Stood 10 s at a red light 15 m before the door, then pulled away: at the scan it
        // is 15 m from where it stood, inside the still radius, but its last step is fast.
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = without_speed(
            Drive::from(-1000.0, 0.0).to(-15.0, 0.0, 10.0).park(10.0).to(-10.0, 0.0, 2.5).to(0.0, 0.0, 7.0),
        );
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
        assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "{decision:?}");
    }

    #[test]
    fn without_doppler_a_parked_van_stands_once_fixes_span_some_seconds() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = without_speed(Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(2.0));
        drive.feed(&mut tracker);
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = without_speed(Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(40.0));
        let events = drive.feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), vec!["nearby", "arrived"], "{events:?}");
    }

    #[test]
    fn a_parked_van_whose_receiver_drops_the_speed_of_some_epochs_keeps_its_dwell() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(40.0);
        let parked_from = drive.fixes.len() - 40;
        for (i, f) in drive.fixes.iter_mut().enumerate().skip(parked_from) {
            if i % 3 != 0 {
                f.speed_mps = None;
            }
        }
        let events = drive.feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), vec!["nearby", "arrived"], "{events:?}");
    }

    #[test]
    fn a_scan_while_standing_carries_the_fix_and_speed_at_the_scan() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(3.0);
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
        let ScanDecision::AtAddress { fix, .. } = decision else { panic!("{decision:?}") };
        assert_eq!(fix.utc_ms, drive.now_ms());
        assert_eq!(fix.speed_mps, Some(0.1));
    }

    #[test]
    fn the_same_instant_again_with_the_speed_it_lacked_is_judged() {
        // The assembler reports an epoch at GSA, then again when the RMC brings the speed.
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-20.0, 0.0, 10.0).park(3.0);
        drive.feed(&mut tracker);
        let mut early = fix(drive.t_s + 1.0, 0.0, 0.0, 12.5);
        early.speed_mps = None;
        tracker.on_fix(&early);
        let revised = fix(drive.t_s + 1.0, 0.0, 0.0, 12.5);
        tracker.on_fix(&revised);
        assert_eq!(tracker.last_fix().and_then(|f| f.speed_mps), Some(12.5));
        let decision = tracker.on_scan(revised.utc_ms, &code("PARCEL1A"));
        assert!(matches!(decision, ScanDecision::AwayFromAddress { .. }), "moving at the scan: {decision:?}");
        // A second copy of the same instant changes nothing.
        assert!(tracker.on_fix(&revised).is_empty());
    }

    #[test]
    fn a_scan_just_after_pulling_away_is_still_at_address() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(60.0).to(500.0, 0.0, 10.0);
        drive.feed(&mut tracker);
        // The van left the zone about 35 s ago.
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1A"));
        assert!(matches!(decision, ScanDecision::AtAddress { .. }), "{decision:?}");
    }

    #[test]
    fn a_scan_after_driving_away_beyond_the_window_is_away_with_the_distance() {
        let route = street();
        let mut tracker = tracker(&route);
        // Parked at s1, then 1.7 km on along the street: two and a half minutes since s1's zone.
        let mut drive = Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(60.0).to(1700.0, 0.0, 10.0);
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL1B"));
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(1000.0, 0.0).to(1960.0, 10.0, 10.0).park(45.0);
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("PARCEL3A"));
        let ScanDecision::AwayFromAddress { stop, van_at, distance_m, .. } = decision else {
            panic!("expected away from address, got {decision:?}");
        };
        assert_eq!(stop.id.as_str(), "s3", "belongs to stop s3");
        assert_eq!(van_at.map(|s| s.id.as_str().to_owned()).as_deref(), Some("s2"), "you are at s2");
        assert!((distance_m.expect("fix") - 2040.0).abs() < 5.0);
    }

    #[test]
    fn a_parcel_scanned_at_the_wrong_stop_then_at_its_own_counts_once_at_its_address() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(1000.0, 0.0).to(1960.0, 10.0, 10.0).park(45.0);
        drive.feed(&mut tracker);
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
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(60.0);
        drive.feed(&mut tracker);
        let decision = tracker.on_scan(drive.now_ms(), &code("NOTOURS123"));
        let ScanDecision::NotOnRoute { van_at, fix } = decision else {
            panic!("expected not on route, got {decision:?}");
        };
        assert_eq!(van_at.map(|s| s.index), Some(0));
        assert!(fix.is_some());
    }

    #[test]
    fn scanning_the_same_parcel_twice_is_a_duplicate_not_a_second_delivery() {
        let route = street();
        let mut tracker = tracker(&route);
        let mut drive = Drive::from(-1000.0, 0.0).to(-40.0, 0.0, 10.0).park(60.0);
        drive.feed(&mut tracker);
        let t = drive.now_ms();
        assert!(matches!(
            tracker.on_scan(t, &code("PARCEL1A")),
            ScanDecision::AtAddress { remaining: 1, .. }
        ));
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
        let mut s = stop("s1", 0.0, 0.0, &["PARCEL1A"]);
        s.approach_m = Some(50);
        let route = route(vec![s]);
        let mut tracker = tracker(&route);
        let events = Drive::from(-120.0, 0.0).park(40.0).feed(&mut tracker);
        assert_eq!(kinds_for(&events, 0), ["nearby", "arrived"]);
    }

    #[test]
    fn a_zero_dwell_arrives_on_the_first_standing_fix_after_nearby() {
        let mut s = stop("s1", 0.0, 0.0, &["PARCEL1A"]);
        s.dwell_s = Some(0);
        let route = route(vec![s]);
        let mut tracker = tracker(&route);
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

    #[test]
    fn stops_across_the_antimeridian_are_still_found() {
        let mut s = stop("s1", 0.0, 0.0, &["PARCEL1A"]);
        (s.lat, s.lon) = (-16.5, 179.9995);
        let route = route(vec![s]);
        let mut tracker = tracker(&route);
        let f = GoodFix { lat: -16.5, lon: -179.9995, ..fix(0.0, 0.0, 0.0, 0.0) };
        let events = tracker.on_fix(&f);
        let [StopEvent::Nearby { distance_m, .. }] = events.as_slice() else {
            panic!("expected nearby, got {events:?}");
        };
        assert!((distance_m - 106.7).abs() < 1.0, "distance {distance_m}");
    }

    #[test]
    fn the_default_config_is_valid_and_nonsense_is_refused_by_name() {
        assert_eq!(GeofenceConfig::default().validate(), Ok(()));
        let nan = GeofenceConfig { arrival_m: f64::NAN, ..GeofenceConfig::default() };
        assert!(matches!(nan.validate(), Err(GeofenceConfigError::OutOfRange { field: "arrival_m", .. })));
        let inverted = GeofenceConfig { approach_m: 100.0, ..GeofenceConfig::default() };
        assert!(matches!(inverted.validate(), Err(GeofenceConfigError::ApproachInsideArrival { .. })));
    }

    /// A random route of stops 80 to 400 m apart and a random drive that parks at some
    /// of them and passes others, with jitter and occasional jumps.
    fn jittery_drive(
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
            east += 80.0 + prng.next_f64() * 320.0;
            north += prng.within(200.0);
            positions.push((east, north));
            manifest.push(stop(&format!("s{i}"), east, north, &[]));
        }
        let mut drive = Drive::from(-1000.0, 0.0).every(every_s);
        for &(e, n) in &positions {
            let (pe, pn) = (e + prng.within(100.0), n + prng.within(100.0));
            drive = drive.to(pe, pn, 5.0 + prng.next_f64() * 12.0);
            if prng.next_f64() < 0.6 {
                drive = drive.park(prng.next_f64() * 120.0);
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
            f.accuracy_m = 3.0 + prng.next_f64() * 20.0;
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

        #[test]
        fn the_grid_index_finds_exactly_what_checking_every_stop_finds(
            seed in any::<u64>(),
            stops in 1usize..40,
            every_s in prop_oneof![Just(1.0), Just(10.0), Just(45.0)],
        ) {
            let (route, fixes) = jittery_drive(seed, stops, 20.0, 0, every_s);
            let mut grid = tracker(&route);
            // The reference checks every stop on every fix, with no quiet ball.
            let mut linear = tracker(&route);
            linear.index.linear = true;
            // The order of events for different stops within one fix may differ.
            let sorted = |mut events: Vec<StopEvent>| {
                events.sort_by_key(|e| (e.stop().index, kind_rank(e)));
                events
            };
            for f in &fixes {
                prop_assert_eq!(sorted(grid.on_fix(f)), sorted(linear.on_fix(f)));
            }
        }
    }
}
