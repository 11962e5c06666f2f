//! The geofence state machine: zones entered and left, dwell, arrival and departure,
//! and what a scan means given the fixes seen so far. Pure: no clock, no I/O; time
//! arrives inside the fixes and scans.

use std::collections::HashMap;
use std::time::Duration;

use doorstep_proto::{RouteManifest, StopId, TrackingNumber};

use super::index::StopIndex;
use super::zone::{M_PER_DEG, Zone, haversine_m, local_distance_m};
use super::{GeofenceConfig, ScanDecision, StopEvent, StopRef, StopStatus};
use crate::fix::GoodFix;

/// Metres kept back from the quiet ball's radius, for the small disagreements between the
/// stops' local frames and the frame of the ball (millimetres at zone scale).
const QUIET_SAFETY_M: f64 = 1.0;

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

/// The geofence state machine for one route. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    zones: Vec<Zone>,
    ids: Vec<StopId>,
    flags: Vec<StopFlags>,
    pub(super) index: StopIndex,
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

/// A fix's one-sigma accuracy, with nonsense (negative, NaN) read as zero.
fn sigma(fix: &GoodFix) -> f64 {
    fix.accuracy_m.max(0.0)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}
