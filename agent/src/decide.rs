//! The agent's decisions: gated fixes, scans and driver reports in; proto events and the
//! driver's reply out.
//!
//! [`Decider`] is the one piece of code that both `doorstep-agent run` (live) and
//! `doorstep-agent replay` (recorded) drive, so a replay shows exactly what a van would
//! have signed. It is pure: no clock, no I/O. Time arrives with every input: a fix
//! carries its GNSS time, and the shell stamps a scan with GNSS time derived from the
//! last fix plus the monotonic time since (`replay` takes it from the scan file).
//!
//! Nothing is decided before the first good fix: without a GNSS date and time there is
//! nothing honest to sign, so a scan then is refused with a reply that says why, and the
//! driver scans again once the GPS has a fix.
//!
//! # The trail
//!
//! Fleet IT pays for every cellular byte, so the trail does not travel as one signed
//! event per position sample. The decider takes a sample every
//! [`TrailConfig::interval_ms`] of GNSS time and keeps it in the batch being accumulated;
//! the batch goes out as one [`Event::Trail`] (delta-encoded, one signature) when
//!
//! - it holds [`TrailConfig::batch_samples`] samples,
//! - its oldest sample is [`TrailConfig::batch_max_age_ms`] old by the GNSS time of a fix
//!   (checked before the fix's own sample joins it, so a batch never spans that age),
//! - the decider is about to emit a confirmation or exception: the batch goes just before
//!   it, so the hub gets the trail leading to a delivery with it, in seq order,
//! - the next sample could not be encoded as a step from the one before (a van crossing
//!   the antimeridian),
//! - or the shell asks ([`Decider::flush_trail`], on a graceful stop).
//!
//! A sample is in exactly one batch, and batches leave in the order of their samples. The
//! batch being accumulated lives only in memory: if the process dies before it is
//! emitted, at most [`TrailConfig::batch_max_age_ms`] of GNSS time of trail (at most
//! [`TrailConfig::batch_samples`] samples) is lost. Confirmations are never held back.
//! The agent no longer emits numbered [`Event::Position`] events; the live position on
//! the `pos` topic is the uplink's business.

use std::collections::{BTreeMap, HashMap};

use doorstep_proto::event::MAX_NOTE_LEN;
use doorstep_proto::{
    Barcode, Delivery, DeliveryException, Event, ExceptionReason, FixEvidence, MAX_TRAIL_SAMPLES, Nearby,
    PhotoRef, RouteId, RouteManifest, ScanNotOnRoute, Stop, StopId, TrackingNumber, Trail,
};
use serde::Serialize;

use crate::fix::GoodFix;
use crate::geofence::{GeofenceConfig, ScanDecision, StopEvent, StopRef, Tracker};

/// Default interval between position samples kept for the hub's trail, in milliseconds.
///
/// The live position travels separately (newest only); the trail only needs to show the
/// route driven. Batched, a sample costs about 12 bytes instead of a ~130-byte signed
/// event, so the trail can afford twice the old 60 s resolution (a sample every 300 m at
/// city speed instead of every 600 m, enough to show which street the van took) and
/// still cost about a quarter of what one position a minute did: 2.2 kB of envelopes per
/// hour of driving (six batches of 20) against 8.0 kB for sixty position events, and six
/// MQTT messages instead of sixty (the test
/// `an_hour_of_trail_at_the_defaults_costs_a_quarter_of_a_position_a_minute` measures it).
pub const DEFAULT_POSITION_INTERVAL_MS: i64 = 30_000;

/// Default number of samples in one trail batch: ten minutes at the default interval.
/// The envelope and signature (about 130 bytes) are then shared by 20 samples; larger
/// batches save little more and hold more trail in memory.
pub const DEFAULT_TRAIL_BATCH_SAMPLES: usize = 20;

/// Default age of a batch's oldest sample (GNSS time) at which the batch goes out, in
/// milliseconds: ten minutes. It bounds how late the hub's trail may be, and how much of
/// it a crash or power cut can lose (the batch being accumulated is only in memory).
pub const DEFAULT_TRAIL_BATCH_MAX_AGE_MS: i64 = 600_000;

/// How the trail is sampled and batched. Time is GNSS time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailConfig {
    /// Time between samples, milliseconds (0: no trail).
    pub interval_ms: i64,
    /// Samples in a full batch (1 to [`MAX_TRAIL_SAMPLES`]).
    pub batch_samples: usize,
    /// Age of the oldest sample at which a batch goes out, milliseconds.
    pub batch_max_age_ms: i64,
}

impl Default for TrailConfig {
    fn default() -> Self {
        Self {
            interval_ms: DEFAULT_POSITION_INTERVAL_MS,
            batch_samples: DEFAULT_TRAIL_BATCH_SAMPLES,
            batch_max_age_ms: DEFAULT_TRAIL_BATCH_MAX_AGE_MS,
        }
    }
}

/// Default number of stops past the furthest stop reached for which "nearby" may be said.
///
/// A van passes many of its later stops on the way to earlier ones; telling the customer
/// of stop 70 "your driver is nearby" at 9:00 because the van drove down their street is
/// exactly the lie Doorstep exists to stop. A stop further ahead than this keeps its
/// nearby until the route has progressed to it (the van arrived at or delivered to a stop
/// no more than this many places before it) and the van is within its approach zone
/// again. Drivers reorder a few stops; three allows for that.
pub const DEFAULT_NEARBY_LOOKAHEAD: usize = 3;

/// An event the agent decided, with its GNSS UTC time, ready to be numbered and signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// GNSS UTC time of the event, milliseconds since the Unix epoch.
    pub utc_ms: i64,
    /// The event.
    pub event: Event,
}

/// What the driver's app or scanner shows after a request. Serialized as one JSON line on
/// the driver socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// Whether the request did what the driver meant (a delivery recorded at the address,
    /// an exception recorded). A scan away from the address is recorded but not `ok`.
    pub ok: bool,
    /// A stable code for the app: `delivered_at_address`, `delivered_away_from_address`,
    /// `not_on_route`, `duplicate`, `exception_recorded`, `no_gps_fix`, `no_route`,
    /// `bad_request`, ...
    pub result: &'static str,
    /// The parcel's stop, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_id: Option<String>,
    /// The parcel's stop number on the driver's list (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_number: Option<usize>,
    /// Parcels of that stop still to scan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<usize>,
    /// The stop the van is at, when that is not the parcel's stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub van_at_stop: Option<String>,
    /// One sentence for the driver's screen.
    pub message: String,
    /// The customers' delivery instructions for the stop the reply is about (the scanned
    /// parcel's stop; for `status`, the van's next stop), one per parcel that has them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instructions: Vec<Instruction>,
}

/// A customer's delivery instructions for one parcel, as the driver's app shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    /// The stop.
    pub stop_id: String,
    /// The parcel.
    pub tracking_number: String,
    /// What the customer asks, plain text.
    pub text: String,
}

impl Reply {
    /// A reply about a parcel of `stop`, of which `remaining` parcels are still to scan.
    fn about_stop(ok: bool, result: &'static str, stop: &StopRef, remaining: usize, message: String) -> Self {
        Self {
            ok,
            result,
            stop_id: Some(stop.id.to_string()),
            stop_number: Some(stop.index + 1),
            remaining: Some(remaining),
            van_at_stop: None,
            message,
            instructions: Vec::new(),
        }
    }

    /// A refusal: nothing was recorded.
    pub fn refused(result: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result,
            stop_id: None,
            stop_number: None,
            remaining: None,
            van_at_stop: None,
            message: message.into(),
            instructions: Vec::new(),
        }
    }
}

/// A driver-reported failed delivery, as the app sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionReport {
    /// The reason code.
    pub reason: ExceptionReason,
    /// Parcels concerned (raw codes as scanned or typed).
    pub codes: Vec<String>,
    /// The stop concerned, when the driver picked one.
    pub stop_id: Option<StopId>,
    /// Free text.
    pub note: Option<String>,
    /// A photo of the problem.
    pub photo: Option<PhotoRef>,
}

/// How a raw scanned code relates to the loaded route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    /// A parcel of the route.
    Parcel(TrackingNumber),
    /// A readable code that is no parcel of the route.
    Unknown(Barcode),
}

/// The agent's decision state: the route, its geofence tracker, and counters.
#[derive(Debug)]
pub struct Decider {
    geofence: GeofenceConfig,
    route: Option<Loaded>,
    last_fix: Option<GoodFix>,
    trail: TrailConfig,
    /// GNSS time of the last trail sample taken.
    last_sample_ms: Option<i64>,
    /// The trail batch being accumulated, oldest first: samples in no batch yet.
    pending_trail: Vec<FixEvidence>,
    nearby_lookahead: usize,
    counters: BTreeMap<&'static str, u64>,
}

/// What a route's drive has done so far, kept across agent restarts (vans reboot with the
/// ignition): which stops were announced as nearby and which parcels were handed over.
/// Restored only for the same route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Progress {
    /// The route this progress belongs to.
    pub route_id: Option<RouteId>,
    /// Stops whose nearby was decided.
    pub nearby: Vec<StopId>,
    /// Parcels delivered at their address.
    pub delivered: Vec<TrackingNumber>,
    /// Parcels scanned away from their address (a later scan at the address corrects them).
    pub away: Vec<TrackingNumber>,
    /// Index of the furthest stop the van arrived at or delivered to.
    #[serde(default)]
    pub reached: Option<usize>,
}

#[derive(Debug)]
struct Loaded {
    id: RouteId,
    manifest: RouteManifest,
    tracker: Tracker,
    /// Stops whose nearby was decided (the tracker's own memory does not survive a restart).
    nearby_done: std::collections::HashSet<StopId>,
    /// Parcels handed over: `true` at the address, `false` away from it.
    handed_over: HashMap<TrackingNumber, bool>,
    /// Index of the furthest stop the van arrived at or delivered to.
    reached: Option<usize>,
    /// Stops whose nearby came too early in the route; said later, when due and near.
    deferred_nearby: std::collections::BTreeSet<usize>,
    /// Tracking numbers of the route by length, for matching codes that wrap a tracking
    /// number in a longer label (a USPS GS1-128 label prefixes "420" and the ZIP code).
    by_suffix: HashMap<usize, Vec<TrackingNumber>>,
}

impl Decider {
    /// A decider with no route yet.
    pub fn new(geofence: GeofenceConfig) -> Self {
        Self {
            geofence,
            route: None,
            last_fix: None,
            trail: TrailConfig::default(),
            last_sample_ms: None,
            pending_trail: Vec::new(),
            nearby_lookahead: DEFAULT_NEARBY_LOOKAHEAD,
            counters: BTreeMap::new(),
        }
    }

    /// Sets how many stops past the furthest stop reached may be announced as nearby
    /// (0: any stop, whenever the van comes near it). See [`DEFAULT_NEARBY_LOOKAHEAD`].
    pub fn with_nearby_lookahead(mut self, stops: usize) -> Self {
        self.nearby_lookahead = stops;
        self
    }

    /// Sets how the trail is sampled and batched (see the module docs). A batch size
    /// outside 1 to [`MAX_TRAIL_SAMPLES`] is brought inside it.
    pub fn with_trail(mut self, trail: TrailConfig) -> Self {
        let batch_samples = trail.batch_samples.clamp(1, MAX_TRAIL_SAMPLES);
        self.trail = TrailConfig { batch_samples, ..trail };
        self
    }

    /// Sets the interval between trail position samples (0 disables them), keeping the
    /// batch settings.
    pub fn with_position_interval_ms(mut self, ms: i64) -> Self {
        self.trail.interval_ms = ms;
        self
    }

    /// Loads a route. The same route id again (a retained message delivered twice, a
    /// restart) keeps the progress made; a different route starts afresh.
    pub fn load_route(&mut self, manifest: RouteManifest) {
        if self.route.as_ref().is_some_and(|r| r.manifest == manifest) {
            return;
        }
        let mut tracker = Tracker::new(&manifest, self.geofence.clone());
        if let Some(fix) = self.last_fix {
            // Events for where the van already is come with its next fix.
            let _ = tracker.on_fix(&fix);
        }
        let mut by_suffix: HashMap<usize, Vec<TrackingNumber>> = HashMap::new();
        for tn in manifest.stops.iter().flat_map(|s| &s.tracking_numbers) {
            by_suffix.entry(tn.as_str().len()).or_default().push(tn.clone());
        }
        self.count("route_loaded");
        self.route = Some(Loaded {
            id: manifest.route_id.clone(),
            manifest,
            tracker,
            by_suffix,
            nearby_done: Default::default(),
            handed_over: HashMap::new(),
            reached: None,
            deferred_nearby: Default::default(),
        });
    }

    /// The progress to persist after each decision.
    pub fn progress(&self) -> Progress {
        let Some(route) = &self.route else {
            return Progress::default();
        };
        let mut nearby: Vec<StopId> = route.nearby_done.iter().cloned().collect();
        nearby.sort();
        let mut delivered: Vec<TrackingNumber> =
            route.handed_over.iter().filter(|(_, at)| **at).map(|(tn, _)| tn.clone()).collect();
        delivered.sort();
        let mut away: Vec<TrackingNumber> =
            route.handed_over.iter().filter(|(_, at)| !**at).map(|(tn, _)| tn.clone()).collect();
        away.sort();
        Progress { route_id: Some(route.id.clone()), nearby, delivered, away, reached: route.reached }
    }

    /// Restores progress saved for the loaded route; progress of another route is ignored
    /// (returns `false`).
    pub fn restore(&mut self, progress: Progress) -> bool {
        let Some(route) = self.route.as_mut() else {
            return false;
        };
        if progress.route_id.as_ref() != Some(&route.id) {
            return false;
        }
        route.nearby_done.extend(progress.nearby);
        route.handed_over.extend(progress.away.into_iter().map(|tn| (tn, false)));
        route.handed_over.extend(progress.delivered.into_iter().map(|tn| (tn, true)));
        route.reached = route.reached.max(progress.reached);
        self.count("progress_restored");
        true
    }

    /// The loaded route, if any.
    pub fn route(&self) -> Option<&RouteManifest> {
        self.route.as_ref().map(|r| &r.manifest)
    }

    /// The last good fix.
    pub fn last_fix(&self) -> Option<&GoodFix> {
        self.last_fix.as_ref()
    }

    /// Counters by reason (`scan_at_address`, `scan_garbage`, `scan_without_fix`, ...).
    pub fn counters(&self) -> &BTreeMap<&'static str, u64> {
        &self.counters
    }

    fn count(&mut self, name: &'static str) {
        self.count_by(name, 1);
    }

    fn count_by(&mut self, name: &'static str, n: u64) {
        if n > 0 {
            *self.counters.entry(name).or_insert(0) += n;
        }
    }

    /// The stop the van is at or heading to next: the first stop with parcels left from
    /// the furthest stop reached on (the first stop before any is reached), else the first
    /// with parcels left anywhere (one the driver skipped); `None` when all are done.
    pub fn next_stop(&self) -> Option<&Stop> {
        let route = self.route.as_ref()?;
        let stops = &route.manifest.stops;
        let from = route.reached.unwrap_or(0);
        let left = |i: &usize| route.remaining(*i) > 0;
        (from..stops.len()).find(left).or_else(|| (0..from).find(left)).and_then(|i| stops.get(i))
    }

    /// Stops of the loaded route that still have parcels to hand over.
    pub fn stops_with_parcels_left(&self) -> usize {
        self.route.as_ref().map_or(0, |r| (0..r.manifest.stops.len()).filter(|i| r.remaining(*i) > 0).count())
    }

    /// Feeds a gated fix; returns the nearby confirmations and trail batches it decided,
    /// in the order they must be numbered.
    pub fn on_fix(&mut self, fix: &GoodFix) -> Vec<Decided> {
        if self.last_fix.is_some_and(|last| fix.utc_ms <= last.utc_ms) {
            self.count("fix_out_of_order");
            return Vec::new();
        }
        self.last_fix = Some(*fix);
        let mut out = self.sample_trail(fix);
        let said = self.nearby_on_fix(fix);
        out.extend(self.trail_first(said));
        out
    }

    /// Takes a trail sample from `fix` when one is due, and returns the batches that are
    /// complete (by age before the sample joins, by count after).
    fn sample_trail(&mut self, fix: &GoodFix) -> Vec<Decided> {
        let mut out = Vec::new();
        let max_age = self.trail.batch_max_age_ms;
        if self.pending_trail.first().is_some_and(|oldest| fix.utc_ms - oldest.utc_ms >= max_age) {
            out.extend(self.flush_trail());
        }
        let due = self.trail.interval_ms > 0
            && self.last_sample_ms.is_none_or(|t| fix.utc_ms - t >= self.trail.interval_ms);
        if !due {
            return out;
        }
        self.last_sample_ms = Some(fix.utc_ms);
        let sample = evidence(fix);
        // A step that cannot be encoded from the sample before (a longitude jump across
        // the antimeridian overflows the delta) starts a new batch instead.
        if let Some(before) = self.pending_trail.last()
            && Trail::from_samples(&[*before, sample]).is_none()
        {
            out.extend(self.flush_trail());
        }
        self.pending_trail.push(sample);
        self.count("trail_sampled");
        if self.pending_trail.len() >= self.trail.batch_samples {
            out.extend(self.flush_trail());
        }
        out
    }

    /// Emits the trail batch being accumulated, if it holds any sample, as one
    /// [`Event::Trail`] timed at its newest sample. Each sample goes out once: the batch
    /// is empty afterwards. The daemon calls this on a graceful stop; the decider itself
    /// calls it before every confirmation it emits.
    pub fn flush_trail(&mut self) -> Option<Decided> {
        let samples = std::mem::take(&mut self.pending_trail);
        let newest = samples.last()?.utc_ms;
        let n = samples.len() as u64;
        match Trail::from_samples(&samples) {
            Some(trail) => {
                self.count("trail_batches");
                Some(Decided { utc_ms: newest, event: Event::Trail(trail) })
            }
            None => {
                // Unreachable by construction (fix times increase, batches stay within
                // MAX_TRAIL_SAMPLES, every step was checked as it joined); counted, not
                // a panic, should the proto's rules ever tighten.
                self.count_by("trail_samples_unencodable", n);
                None
            }
        }
    }

    /// The samples of the trail batch being accumulated, oldest first.
    pub fn pending_trail(&self) -> &[FixEvidence] {
        &self.pending_trail
    }

    /// `decided` preceded by the pending trail batch when it holds a confirmation: the
    /// hub then holds the trail leading to a delivery (or nearby, or exception) before
    /// the confirmation itself, in seq order.
    fn trail_first(&mut self, decided: impl IntoIterator<Item = Decided>) -> Vec<Decided> {
        let decided: Vec<Decided> = decided.into_iter().collect();
        let mut out = Vec::with_capacity(decided.len() + 1);
        if decided.iter().any(|d| d.event.is_confirmation()) {
            out.extend(self.flush_trail());
        }
        out.extend(decided);
        out
    }

    /// The nearby confirmations `fix` decides for the loaded route.
    fn nearby_on_fix(&mut self, fix: &GoodFix) -> Vec<Decided> {
        let mut out = Vec::new();
        let (default_approach, default_arrival) = (self.geofence.approach_m, self.geofence.arrival_m);
        let lookahead = self.nearby_lookahead;
        let Some(route) = self.route.as_mut() else {
            return out;
        };
        let mut deferred = 0u64;
        for stop_event in route.tracker.on_fix(fix) {
            // Arrival and departure are the tracker's state; the hub learns of a visit
            // through the deliveries made during it (and the trail). Arrival moves the
            // route's progress on, which decides which stops are due for "nearby".
            match stop_event {
                StopEvent::Arrived { stop, .. } => route.reached = route.reached.max(Some(stop.index)),
                StopEvent::Nearby { stop, utc_ms, distance_m, fix, .. } => {
                    if route.nearby_done.contains(&stop.id) {
                        continue;
                    }
                    if !route.due(stop.index, lookahead) {
                        route.deferred_nearby.insert(stop.index);
                        deferred += 1;
                        continue;
                    }
                    out.push(route.nearby(&stop, utc_ms, distance_m, &fix));
                }
                StopEvent::Departed { .. } => {}
            }
        }
        // Deferred stops that are now due, with the van inside their approach zone.
        let now_due: Vec<usize> =
            route.deferred_nearby.iter().copied().filter(|i| route.due(*i, lookahead)).collect();
        for index in now_due {
            let Some(stop) = route.manifest.stops.get(index) else { continue };
            // As the tracker does: the stop's override or the default, never inside arrival.
            let approach = stop
                .approach_m
                .map_or(default_approach, f64::from)
                .max(stop.arrival_m.map_or(default_arrival, f64::from));
            let distance_m = distance(fix, stop.lat, stop.lon);
            if distance_m <= approach {
                let stop = StopRef { index, id: stop.stop_id.clone() };
                route.deferred_nearby.remove(&index);
                if !route.nearby_done.contains(&stop.id) {
                    out.push(route.nearby(&stop, fix.utc_ms, distance_m, fix));
                }
            }
        }
        self.count_by("nearby_deferred", deferred);
        out
    }

    /// Decides a scan made at `utc_ms` (GNSS UTC) of `raw` with an optional photo proof.
    /// The events are the confirmation, if the scan decided one, preceded by the trail
    /// batch being accumulated; a refused or duplicate scan decides none.
    pub fn on_scan(&mut self, utc_ms: i64, raw: &str, photo: Option<PhotoRef>) -> (Reply, Vec<Decided>) {
        let code = raw.trim();
        let Ok(barcode) = Barcode::new(code) else {
            self.count("scan_garbage");
            let message = "Unreadable scan: please scan the parcel label again";
            return (Reply::refused("unreadable", message), Vec::new());
        };
        let Some(last_fix) = self.last_fix else {
            self.count("scan_without_fix");
            let message = "No GPS fix yet: nothing can be confirmed. Wait for the GPS and scan again";
            return (Reply::refused("no_gps_fix", message), Vec::new());
        };
        let Some(route) = self.route.as_mut() else {
            self.count("scan_without_route");
            let event = Event::ScanNotOnRoute(ScanNotOnRoute {
                route_id: None,
                barcode,
                fix: Some(evidence(&last_fix)),
            });
            let message = "No route loaded: the scan is recorded, but no stop can be confirmed";
            return (Reply::refused("no_route", message), self.trail_first([Decided { utc_ms, event }]));
        };
        let resolved = route.resolve(barcode);
        let (reply, event, counter) = match resolved {
            Resolved::Unknown(barcode) => {
                let van_at = route.tracker.van_at();
                let event = Event::ScanNotOnRoute(ScanNotOnRoute {
                    route_id: Some(route.id.clone()),
                    barcode,
                    fix: Some(evidence(&last_fix)),
                });
                let mut reply =
                    Reply::refused("not_on_route", "Not on this route: keep the parcel in the van");
                reply.van_at_stop = van_at.map(|s| s.id.to_string());
                (reply, Some(event), "scan_not_on_route")
            }
            Resolved::Parcel(tn) => route.deliver(utc_ms, tn, photo, &last_fix),
        };
        self.count(counter);
        (reply, self.trail_first(event.map(|event| Decided { utc_ms, event })))
    }

    /// Records a driver-reported failed delivery at `utc_ms`: the exception, preceded by
    /// the trail batch being accumulated, or no event when the report is refused.
    pub fn on_exception(&mut self, utc_ms: i64, report: ExceptionReport) -> (Reply, Vec<Decided>) {
        let Some(last_fix) = self.last_fix else {
            self.count("exception_without_fix");
            let message = "No GPS fix yet: wait for the GPS, then report the problem again";
            return (Reply::refused("no_gps_fix", message), Vec::new());
        };
        if report.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_LEN) {
            self.count("exception_bad_request");
            let message = format!("The note is too long: at most {MAX_NOTE_LEN} characters");
            return (Reply::refused("bad_request", message), Vec::new());
        }
        let mut tracking_numbers = Vec::new();
        for code in &report.codes {
            match TrackingNumber::normalize(code) {
                Ok(tn) => tracking_numbers.push(tn),
                Err(_) => {
                    self.count("exception_bad_request");
                    let message = format!("{code:?} is not a tracking number: scan the parcel label");
                    return (Reply::refused("bad_request", message), Vec::new());
                }
            }
        }
        let route = self.route.as_ref();
        let stop = report.stop_id.clone().or_else(|| {
            // The parcels name their stop when the driver did not pick one.
            let first = tracking_numbers.first()?;
            route?
                .manifest
                .stops
                .iter()
                .find(|s| s.tracking_numbers.contains(first))
                .map(|s| s.stop_id.clone())
        });
        let stop_entry = route.zip(stop.as_ref()).and_then(|(r, id)| {
            r.manifest
                .stops
                .iter()
                .enumerate()
                .find(|(_, s)| &s.stop_id == id)
                .map(|(i, s)| (i, s.lat, s.lon))
        });
        let unknown_stop = route.is_some() && stop.is_some() && stop_entry.is_none();
        let route_id = route.map(|r| r.id.clone());
        if unknown_stop {
            self.count("exception_bad_request");
            let id = stop.as_ref().map(ToString::to_string).unwrap_or_default();
            let message = format!("Stop {id} is not on this route: pick the stop from the list");
            return (Reply::refused("bad_request", message), Vec::new());
        }
        let distance_m = stop_entry.map(|(_, lat, lon)| metres(distance(&last_fix, lat, lon)));
        let event = Event::Exception(DeliveryException {
            route_id,
            stop_id: stop.clone(),
            reason: report.reason,
            note: report.note,
            tracking_numbers,
            distance_m,
            fix: Some(evidence(&last_fix)),
            photo: report.photo,
        });
        self.count("exception_recorded");
        let reply = Reply {
            ok: true,
            result: "exception_recorded",
            stop_id: stop.as_ref().map(ToString::to_string),
            stop_number: stop_entry.map(|(i, _, _)| i + 1),
            remaining: None,
            van_at_stop: None,
            message: format!(
                "Recorded: {}. Operations and the customer will be told.",
                report.reason.as_str()
            ),
            instructions: Vec::new(),
        };
        (reply, self.trail_first([Decided { utc_ms, event }]))
    }
}

impl Loaded {
    fn resolve(&self, barcode: Barcode) -> Resolved {
        if let Ok(tn) = TrackingNumber::normalize(barcode.as_str()) {
            if self.tracker_knows(&tn) {
                return Resolved::Parcel(tn);
            }
            // A label that wraps a route parcel's number (routing prefix + tracking number).
            let code = tn.as_str();
            for (len, candidates) in &self.by_suffix {
                let wraps = *len >= 10 && *len < code.len();
                if let Some(found) = candidates.iter().find(|c| wraps && code.ends_with(c.as_str())) {
                    return Resolved::Parcel(found.clone());
                }
            }
        }
        Resolved::Unknown(barcode)
    }

    /// Whether stop `index` may be announced as nearby: within `lookahead` stops of the
    /// furthest stop reached (the first `lookahead` stops before any is reached).
    fn due(&self, index: usize, lookahead: usize) -> bool {
        lookahead == 0 || self.reached.map_or(index < lookahead, |r| index <= r.saturating_add(lookahead))
    }

    /// The nearby event for `stop`, recorded as said.
    fn nearby(&mut self, stop: &StopRef, utc_ms: i64, distance_m: f64, fix: &GoodFix) -> Decided {
        self.nearby_done.insert(stop.id.clone());
        Decided {
            utc_ms,
            event: Event::Nearby(Nearby {
                route_id: self.id.clone(),
                stop_id: stop.id.clone(),
                distance_m: metres(distance_m),
                fix: evidence(fix),
            }),
        }
    }

    /// Parcels of stop `index` not yet handed over (at or away from the address).
    fn remaining(&self, index: usize) -> usize {
        self.manifest
            .stops
            .get(index)
            .map_or(0, |s| s.tracking_numbers.iter().filter(|tn| !self.handed_over.contains_key(*tn)).count())
    }

    fn tracker_knows(&self, tn: &TrackingNumber) -> bool {
        self.by_suffix.get(&tn.as_str().len()).is_some_and(|v| v.contains(tn))
    }

    fn deliver(
        &mut self,
        utc_ms: i64,
        tn: TrackingNumber,
        photo: Option<PhotoRef>,
        last_fix: &GoodFix,
    ) -> (Reply, Option<Event>, &'static str) {
        let label = |stop: &StopRef| format!("stop {} ({})", stop.index + 1, stop.id);
        if self.handed_over.get(&tn) == Some(&true) {
            let Some((index, stop)) =
                self.manifest.stops.iter().enumerate().find(|(_, s)| s.tracking_numbers.contains(&tn))
            else {
                return (Reply::refused("not_on_route", "Not on this route"), None, "scan_not_on_route");
            };
            let stop = StopRef { index, id: stop.stop_id.clone() };
            let remaining = self.remaining(index);
            let message = format!("Already delivered at {}. {remaining} parcel(s) to go there", label(&stop));
            return (Reply::about_stop(true, "duplicate", &stop, remaining, message), None, "scan_duplicate");
        }
        let decision = self.tracker.on_scan(utc_ms, &tn);
        match &decision {
            ScanDecision::AtAddress { stop, .. } => {
                self.handed_over.insert(tn.clone(), true);
                self.reached = self.reached.max(Some(stop.index));
            }
            ScanDecision::AwayFromAddress { .. } => {
                self.handed_over.entry(tn.clone()).or_insert(false);
            }
            _ => {}
        }
        let decision = match decision {
            ScanDecision::AtAddress { stop, distance_m, dwell_s, corrects_away, fix, .. } => {
                let remaining = self.remaining(stop.index);
                ScanDecision::AtAddress { stop, distance_m, dwell_s, remaining, corrects_away, fix }
            }
            ScanDecision::AwayFromAddress { stop, distance_m, van_at, fix, .. } => {
                let remaining = self.remaining(stop.index);
                ScanDecision::AwayFromAddress { stop, distance_m, van_at, remaining, fix }
            }
            ScanDecision::Duplicate { stop, .. } => {
                let remaining = self.remaining(stop.index);
                ScanDecision::Duplicate { stop, remaining }
            }
            other => other,
        };
        let delivery = |stop: StopRef, tn, distance_m: f64, dwell_s: u32, fix: &GoodFix, photo| Delivery {
            route_id: self.id.clone(),
            stop_id: stop.id,
            tracking_numbers: vec![tn],
            distance_m: metres(distance_m),
            dwell_s,
            fix: evidence(fix),
            photo,
        };
        match decision {
            ScanDecision::AtAddress { stop, distance_m, dwell_s, remaining, fix, .. } => {
                let message = if remaining == 0 {
                    format!("Delivered at {}. All parcels for this stop are done", label(&stop))
                } else {
                    format!("Delivered at {}. {remaining} more parcel(s) for this stop", label(&stop))
                };
                let reply = Reply::about_stop(true, "delivered_at_address", &stop, remaining, message);
                let event =
                    Event::DeliveredAtAddress(delivery(stop, tn, distance_m, seconds(dwell_s), &fix, photo));
                (reply, Some(event), "scan_at_address")
            }
            ScanDecision::AwayFromAddress { stop, distance_m, van_at, remaining, fix } => {
                let fix = fix.unwrap_or(*last_fix);
                let distance = distance_m.unwrap_or_else(|| {
                    let s = &self.manifest.stops[stop.index];
                    distance(&fix, s.lat, s.lon)
                });
                let message = match &van_at {
                    Some(at) => format!(
                        "Wrong stop: this parcel belongs to {}, you are at {}. Recorded as delivered away from its address",
                        label(&stop),
                        label(at)
                    ),
                    None => format!(
                        "Away from the address: this parcel belongs to {}, {} m from the van. Recorded as an exception",
                        label(&stop),
                        metres(distance)
                    ),
                };
                let reply = Reply {
                    van_at_stop: van_at.map(|s| s.id.to_string()),
                    ..Reply::about_stop(false, "delivered_away_from_address", &stop, remaining, message)
                };
                let event = Event::DeliveredAwayFromAddress(delivery(stop, tn, distance, 0, &fix, photo));
                (reply, Some(event), "scan_away_from_address")
            }
            ScanDecision::NotOnRoute { van_at, fix } => {
                // The resolver found the parcel but the tracker did not: treat as unknown.
                let barcode = Barcode::new(tn.as_str()).ok();
                let mut reply =
                    Reply::refused("not_on_route", "Not on this route: keep the parcel in the van");
                reply.van_at_stop = van_at.map(|s| s.id.to_string());
                let event = barcode.map(|barcode| {
                    Event::ScanNotOnRoute(ScanNotOnRoute {
                        route_id: Some(self.id.clone()),
                        barcode,
                        fix: Some(evidence(&fix.unwrap_or(*last_fix))),
                    })
                });
                (reply, event, "scan_not_on_route")
            }
            ScanDecision::Duplicate { stop, remaining } => {
                let message =
                    format!("Already scanned for {}. {remaining} parcel(s) to go there", label(&stop));
                (Reply::about_stop(true, "duplicate", &stop, remaining, message), None, "scan_duplicate")
            }
        }
    }
}

/// The wire evidence of a gated fix.
pub fn evidence(fix: &GoodFix) -> FixEvidence {
    let mut e = FixEvidence::new(fix.utc_ms, fix.lat, fix.lon).with_accuracy_m(fix.accuracy_m);
    if let Some(hdop) = fix.hdop {
        e = e.with_hdop(hdop);
    }
    if let Some(sats) = fix.sats {
        e = e.with_sats(sats);
    }
    if let Some(speed) = fix.speed_mps {
        e = e.with_speed_mps(speed);
    }
    e
}

/// Great-circle distance from a fix to a point, in metres.
fn distance(fix: &GoodFix, lat: f64, lon: f64) -> f64 {
    use geo::{Distance, Haversine, Point};
    Haversine.distance(Point::new(fix.lon, fix.lat), Point::new(lon, lat))
}

/// Whole metres for the wire, saturating.
#[allow(clippy::cast_possible_truncation)] // `as` from f64 saturates; that is the intent.
fn metres(m: f64) -> u32 {
    m.max(0.0).round() as u32
}

/// Whole seconds for the wire, saturating.
#[allow(clippy::cast_possible_truncation)]
fn seconds(s: f64) -> u32 {
    s.max(0.0).round() as u32
}

#[cfg(test)]
mod tests;
