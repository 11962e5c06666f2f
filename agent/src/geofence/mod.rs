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
//!
//! The files: `config` (the tunables and their defaults), `tracker` (the state machine),
//! `index` (the grid of stops a fix looks up) and `zone` (a stop's circles and the
//! distance arithmetic). All of it is pure.

mod config;
mod index;
#[cfg(test)]
mod tests;
mod tracker;
mod zone;

use doorstep_proto::StopId;

pub use config::{
    DEFAULT_APPROACH_M, DEFAULT_ARRIVAL_M, DEFAULT_DWELL_S, DEFAULT_EXIT_CONFIRM_S, DEFAULT_EXIT_MARGIN_M,
    DEFAULT_MAX_CROSSING_GAP_S, DEFAULT_MAX_SPEED_MPS, DEFAULT_SCAN_WINDOW_S, DEFAULT_STOPPED_SPEED_MPS,
    GeofenceConfig, GeofenceConfigError,
};
pub use index::CELL_M;
pub use tracker::Tracker;

use crate::fix::GoodFix;

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
