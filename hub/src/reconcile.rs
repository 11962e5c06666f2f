//! Reconciliation: a shipment's customer-facing milestone from carrier events and signed
//! device confirmations.
//!
//! [`apply`] is a pure state machine, `(state, input, rules) -> (state, actions)`: no
//! clock, no I/O, no async (invariant 2). Time arrives as an input: event times on the
//! facts, and the hub's clock only through [`Input::Wake`], which the hub sends when a
//! hold period asked for with [`Action::WakeAt`] ends.
//!
//! # How it decides
//!
//! The state keeps the *facts* it has seen, each folded in an order-independent way (the
//! earliest carrier "delivered", the earliest at-address confirmation, the latest
//! exception, ...), so a late-arriving or duplicated input cannot rewrite history. After
//! every input the rows of [`RULES`] are evaluated over those facts:
//!
//! - the first *milestone* row that holds names the milestone the facts support. The
//!   shipment moves there only if it ranks above where it is ([`Milestone`]'s order):
//!   forward-only, so an older event never moves it back. Each milestone is notified at
//!   most once (the notification outbox's unique key is the second guard).
//! - every *alert* row that holds raises its operations alert, once per code.
//!
//! Because every milestone row without a hold is monotone in the facts (more facts can
//! only support a higher milestone), the final milestone does not depend on the order in
//! which inputs arrive; `final_milestone_does_not_depend_on_arrival_order` checks this
//! over random permutations. Hold decisions depend on the hub's clock by design: they are
//! made when the [`Input::Wake`] comes, with the facts known by then.
//!
//! The same table, in words for operators, is `docs/reconciliation.md`; a test keeps the
//! two in step.
//!
//! # Delays
//!
//! A delay is usually a date that quietly slips, not an exception status. Beside the
//! table, the state keeps the carrier's latest expected delivery (from the newest event,
//! in event time, that gave a readable one) and the one the customer was last told: the
//! first the hub learned (the tracking page shows it), then each date a message named (a
//! delay message, an exception or out-for-delivery message with the carrier's date).
//! When the carrier's date lies later than the told one by more than
//! [`Rules::delay_tolerance_ms`] (compared as instants; a bare date stands for the middle
//! of its day) and no exception explains it (the milestone is not exception or delivered,
//! and the carrier's latest status is not an exception-like, delivered or cancelled one),
//! [`Action::NotifyDelay`] asks for one message, and the new date becomes what the
//! customer was told. An earlier date, or the same one again, says nothing. A delay never
//! moves the milestone, so a later delivery notifies as it always does.
//!
//! # One shipment per tracking number
//!
//! A [`ShipmentState`] is one parcel: one tracking number. Two parcels for one stop are
//! two shipments; each gets its own at-address scan, its own carrier events and its own
//! messages. Stop-level device signals (nearby) are fanned out by the hub to every parcel
//! of the stop. Grouping messages per order is the notification layer's business.

use doorstep_proto::{DeviceId, StopId};
use serde::{Deserialize, Serialize};

use crate::model::{Action, CanonicalStatus, CarrierEvent, DeviceSignal, DeviceSignalKind, Milestone};

/// Default delay tolerance: 12 hours. A carrier's date that moves by less (a delivery
/// window shifted within the day) is not worth a message; a day's slip always is.
pub const DEFAULT_DELAY_TOLERANCE_MS: i64 = 12 * 60 * 60 * 1000;

/// Default hold period: 30 minutes for a lone signal to stand uncontradicted.
pub const DEFAULT_HOLD_MS: i64 = 30 * 60 * 1000;

/// How far apart a carrier's clock and the van's GNSS time may be when the hub asks
/// whether the van had come to the stop by the carrier's "delivered": carriers stamp
/// events with their handhelds' or their servers' clocks, often rounded to the minute.
pub const CARRIER_CLOCK_SLACK_MS: i64 = 2 * 60 * 1000;

/// Default standing threshold: 1.5 m/s, the agent's `DEFAULT_STOPPED_SPEED_MPS`. A
/// receiver's Doppler speed of a parked van stays well below it; a van rolling past a
/// door is far above it.
pub const DEFAULT_STANDING_SPEED_CMPS: u16 = 150;

/// Default dwell a stop needs when its route does not override it: 30 s, the agent's
/// `DEFAULT_DWELL_S`.
pub const DEFAULT_DWELL_S: u32 = 30;

/// Reconciliation settings, from the hub's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// How long one delivery signal (a signed at-address confirmation, or the carrier's
    /// delivered) must stand without contradiction before the customer is told
    /// "delivered" on it alone.
    pub hold_ms: i64,
    /// Speed over ground above which a van is moving, cm/s: a delivered-at-address
    /// confirmation whose speed at the scan is above it, and whose dwell is below the
    /// stop's, is not a delivery signal (see [`moving_at_scan`]).
    pub standing_speed_cmps: u16,
    /// The dwell a stop needs when the hub does not know an override for it from the
    /// stop's route, seconds. Keep it in step with the agents' `geofence.dwell_s`.
    pub default_dwell_s: u32,
    /// How much later than what the customer was last told the carrier's expected
    /// delivery must move before the customer is told of a delay, ms.
    pub delay_tolerance_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            hold_ms: DEFAULT_HOLD_MS,
            standing_speed_cmps: DEFAULT_STANDING_SPEED_CMPS,
            default_dwell_s: DEFAULT_DWELL_S,
            delay_tolerance_ms: DEFAULT_DELAY_TOLERANCE_MS,
        }
    }
}

/// What a delivered-at-address confirmation says about the van at the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEvidence {
    /// The van's speed over ground at the scan, cm/s; `None` from a receiver without
    /// Doppler.
    pub speed_cmps: Option<u16>,
    /// The longest time the van stood still in the stop's arrival zone on this visit,
    /// seconds.
    pub dwell_s: u32,
    /// The stop's own dwell requirement from its route, when the hub knows the stop's
    /// route and the route overrides the default.
    pub stop_dwell_s: Option<u32>,
}

/// Whether a delivered-at-address confirmation's own evidence shows the van moving: its
/// speed at the scan above the standing threshold AND its dwell below the stop's
/// requirement. Such a confirmation is not a delivery signal (issue: a van rolling past
/// at 45 km/h was confirmed "at the address" by an agent that took a fix without a speed
/// for standing still; the hub does not take the device's word without its evidence).
///
/// A speed of `None` (a receiver without Doppler) is accepted: the agent then proves
/// standing by two fixes within its still radius, and the hub has nothing to contradict
/// it with. A dwell at or above the requirement is accepted at any speed: the van stood
/// at the door for the stop's dwell on this visit, and the driver scanned as it pulled
/// away.
pub fn moving_at_scan(evidence: &ScanEvidence, rules: &Rules) -> bool {
    let required = evidence.stop_dwell_s.unwrap_or(rules.default_dwell_s);
    evidence.speed_cmps.is_some_and(|v| v > rules.standing_speed_cmps) && evidence.dwell_s < required
}

/// One input to reconciliation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "input")]
pub enum Input {
    /// The shipment was dispatched: its route was published to a van (`on_route: true`),
    /// or the order system says so (`on_route: false`, no Doorstep van involved).
    Dispatched {
        /// When (ms since the Unix epoch).
        at_ms: i64,
        /// True when a Doorstep van carries it: the carrier's "delivered" then needs the
        /// van to have come to the stop.
        on_route: bool,
    },
    /// A verified, normalized carrier update.
    Carrier(CarrierEvent),
    /// A verified device confirmation about this parcel.
    Device(DeviceSignal),
    /// The hub's clock, sent at (or after) a time asked for with [`Action::WakeAt`].
    Wake {
        /// Now, ms since the Unix epoch.
        now_ms: i64,
    },
}

/// A device's signed word about the handover, kept as proof for the tracking page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProof {
    /// When (GNSS UTC, ms).
    pub at_ms: i64,
    /// The device that signed it.
    pub device: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// The stop.
    pub stop_id: Option<StopId>,
    /// Van-to-stop distance, metres.
    pub distance_m: Option<u32>,
    /// Photo hash (hex), when a photo was taken.
    pub photo_sha256: Option<String>,
    /// Speed over ground at the scan, cm/s, when the receiver reported one.
    #[serde(default)]
    pub speed_cmps: Option<u16>,
    /// Dwell in the stop's arrival zone on this visit, seconds.
    #[serde(default)]
    pub dwell_s: Option<u32>,
}

impl DeviceProof {
    fn from_signal(s: &DeviceSignal) -> Self {
        Self {
            at_ms: s.occurred_ms,
            device: s.device.clone(),
            seq: s.seq,
            stop_id: s.stop_id.clone(),
            distance_m: s.distance_m,
            photo_sha256: s.photo_sha256.clone(),
            speed_cmps: s.speed_cmps,
            dwell_s: s.dwell_s,
        }
    }

    /// Total order for "the earliest": time, then device and seq, so duplicates and ties
    /// resolve the same way whatever the arrival order.
    fn sort_key(&self) -> (i64, &str, u64) {
        (self.at_ms, self.device.as_str(), self.seq)
    }
}

/// An exception the customer is told about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionFact {
    /// When it happened (event time, ms).
    pub at_ms: i64,
    /// `attempt_failed`, `exception`, `available_for_pickup`, `returning` (carrier) or the
    /// driver's reason code.
    pub code: String,
    /// Text for the customer: what happened and the revised expectation, when known.
    pub detail: Option<String>,
}

impl ExceptionFact {
    fn sort_key(&self) -> (i64, &str, Option<&str>) {
        (self.at_ms, &self.code, self.detail.as_deref())
    }
}

/// The carrier's latest word, for the record and for "expected delivery" text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierFact {
    /// Normalized status.
    pub status: CanonicalStatus,
    /// The carrier's own code.
    pub raw_status: String,
    /// Event time, ms.
    pub at_ms: i64,
    /// The event's dedupe key (tie-breaker for equal times).
    pub event_key: String,
    /// The carrier's delivery expectation, verbatim.
    pub expected_delivery: Option<String>,
}

/// A carrier's expected delivery, from the event that gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedFact {
    /// The event's time, ms.
    pub at_ms: i64,
    /// The event's dedupe key (tie-breaker for equal times).
    pub event_key: String,
    /// The expectation, verbatim (trimmed); always readable by [`expected_ms`].
    pub text: String,
}

/// How "delivered" was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveredBy {
    /// A signed at-address confirmation and the carrier's delivered.
    TwoSignals,
    /// A signed at-address confirmation, uncontradicted for the hold period.
    DeviceThenHold,
    /// The carrier's delivered, uncontradicted for the hold period.
    CarrierThenHold,
}

/// Everything reconciliation knows about one shipment (one tracking number). Stored by
/// the hub as JSON; unknown fields are ignored and missing ones default, so the format
/// can grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipmentState {
    /// The customer-facing milestone. Only moves up in [`Milestone`]'s order.
    pub milestone: Milestone,
    /// Milestones the customer has been notified about (each at most once).
    pub notified: Vec<Milestone>,
    /// Operations alert codes already raised (each at most once).
    pub alerted: Vec<String>,
    /// How "delivered" was established, once it is.
    pub delivered_by: Option<DeliveredBy>,
    /// The hold deadline a wake was asked for, while one is pending.
    pub hold_deadline_ms: Option<i64>,

    /// Earliest dispatch.
    pub dispatched_at_ms: Option<i64>,
    /// A Doorstep van carries it.
    pub on_route: bool,
    /// Earliest carrier "out for delivery".
    pub carrier_out_for_delivery_at_ms: Option<i64>,
    /// Earliest carrier "delivered".
    pub carrier_delivered_at_ms: Option<i64>,
    /// When a hold on the carrier's delivered starts: the earliest, over its "delivered"
    /// events, of the event time and the hub's arrival time (see [`hold_from`]).
    pub carrier_delivered_hold_from_ms: Option<i64>,
    /// Earliest carrier "returning to sender".
    pub carrier_returning_at_ms: Option<i64>,
    /// Earliest carrier "cancelled or expired".
    pub carrier_cancelled_at_ms: Option<i64>,
    /// Latest carrier exception-like event (attempt failed, exception, pickup, returning).
    pub carrier_exception: Option<ExceptionFact>,
    /// Latest carrier event of any status.
    pub latest_carrier: Option<CarrierFact>,
    /// Earliest device "nearby".
    pub device_nearby_at_ms: Option<i64>,
    /// Earliest signed "delivered at address" (whose evidence holds up).
    pub at_address: Option<DeviceProof>,
    /// Latest signed "delivered at address": the van's last word at the door, which
    /// supersedes an earlier away scan for `carrier_delivered_device_away`.
    pub last_at_address: Option<DeviceProof>,
    /// When a hold on the at-address confirmation starts: the earliest, over them, of the
    /// event time and the hub's arrival time (see [`hold_from`]).
    pub at_address_hold_from_ms: Option<i64>,
    /// Earliest signed "delivered away from address".
    pub away: Option<DeviceProof>,
    /// Earliest signed "delivered at address" whose own evidence shows the van moving
    /// (see [`moving_at_scan`]): reconciled like an away scan.
    pub moving: Option<DeviceProof>,
    /// Latest signed away or moving scan: the van's last word *not* at the door.
    pub last_not_at_door: Option<DeviceProof>,
    /// Latest driver-reported exception.
    pub driver_exception: Option<ExceptionFact>,
    /// The latest hub time seen in a [`Input::Wake`].
    pub now_ms: Option<i64>,
    /// The carrier's latest readable expected delivery: from the newest event (in event
    /// time) that gave one.
    #[serde(default)]
    pub carrier_expected: Option<ExpectedFact>,
    /// The expected delivery the customer was last told, verbatim: the first one the hub
    /// learned, then the date each delay, exception or out-for-delivery message named.
    #[serde(default)]
    pub told_expected: Option<String>,
}

impl Default for ShipmentState {
    fn default() -> Self {
        Self {
            milestone: Milestone::Created,
            notified: Vec::new(),
            alerted: Vec::new(),
            delivered_by: None,
            hold_deadline_ms: None,
            dispatched_at_ms: None,
            on_route: false,
            carrier_out_for_delivery_at_ms: None,
            carrier_delivered_at_ms: None,
            carrier_delivered_hold_from_ms: None,
            carrier_returning_at_ms: None,
            carrier_cancelled_at_ms: None,
            carrier_exception: None,
            latest_carrier: None,
            device_nearby_at_ms: None,
            at_address: None,
            last_at_address: None,
            at_address_hold_from_ms: None,
            away: None,
            moving: None,
            last_not_at_door: None,
            driver_exception: None,
            now_ms: None,
            carrier_expected: None,
            told_expected: None,
        }
    }
}

impl ShipmentState {
    /// A shipment nothing has happened to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The van had come to the stop by `t` (give or take [`CARRIER_CLOCK_SLACK_MS`]). A
    /// carrier "delivered" dated before the van ever came near the door was premature,
    /// whatever the van does later: only the van's own confirmation can deliver then.
    pub fn van_arrived_by(&self, t: i64) -> bool {
        let first = match (self.device_nearby_at_ms, self.at_address.as_ref().map(|p| p.at_ms)) {
            (Some(n), Some(a)) => Some(n.min(a)),
            (n, a) => n.or(a),
        };
        first.is_some_and(|at| at <= t.saturating_add(CARRIER_CLOCK_SLACK_MS))
    }

    /// The latest exception time, carrier or driver.
    fn latest_exception_at(&self) -> Option<i64> {
        let c = self.carrier_exception.as_ref().map(|e| e.at_ms);
        let d = self.driver_exception.as_ref().map(|e| e.at_ms);
        c.max(d)
    }

    fn latest_exception(&self) -> Option<&ExceptionFact> {
        match (&self.carrier_exception, &self.driver_exception) {
            (Some(c), Some(d)) => Some(if d.sort_key() > c.sort_key() { d } else { c }),
            (c, d) => c.as_ref().or(d.as_ref()),
        }
    }

    /// When the earliest delivery signal happened (the handover time shown to people).
    pub fn delivered_at_ms(&self) -> Option<i64> {
        match (self.at_address.as_ref().map(|p| p.at_ms), self.carrier_delivered_at_ms) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }
}

// --- the facts the rules talk about -----------------------------------------------------

/// When a hold on a delivery signal starts: the earlier of its event time and the time
/// the hub received it. Event times order the facts (invariant 6), but a hold is a wait
/// on the hub's own clock: a van (or carrier) whose clock runs ahead must not delay its
/// own "delivered" by the difference, and an event that sat in an outbox for an hour has
/// already stood that hour uncontradicted.
pub fn hold_from(at_ms: i64, received_ms: Option<i64>) -> i64 {
    received_ms.map_or(at_ms, |r| r.min(at_ms))
}

fn elapsed(s: &ShipmentState, since_ms: i64, r: &Rules) -> bool {
    s.now_ms.is_some_and(|now| now >= since_ms.saturating_add(r.hold_ms))
}

/// A lone delivery signal: when it happened (what contradictions are compared with) and
/// when its hold started.
#[derive(Debug, Clone, Copy)]
struct Lone {
    at_ms: i64,
    hold_from_ms: i64,
}

/// Device basis: an at-address confirmation, no carrier delivered yet.
fn device_basis(s: &ShipmentState) -> Option<Lone> {
    match (&s.at_address, s.carrier_delivered_at_ms) {
        (Some(p), None) => {
            Some(Lone { at_ms: p.at_ms, hold_from_ms: s.at_address_hold_from_ms.unwrap_or(p.at_ms) })
        }
        _ => None,
    }
}

/// Carrier basis: the carrier's delivered, no at-address confirmation.
fn carrier_basis(s: &ShipmentState) -> Option<Lone> {
    match (&s.at_address, s.carrier_delivered_at_ms) {
        (None, Some(t)) => Some(Lone { at_ms: t, hold_from_ms: carrier_hold_from(s).unwrap_or(t) }),
        _ => None,
    }
}

/// When a hold on the carrier's delivered starts, if it said delivered.
fn carrier_hold_from(s: &ShipmentState) -> Option<i64> {
    s.carrier_delivered_at_ms.map(|t| s.carrier_delivered_hold_from_ms.unwrap_or(t))
}

/// An exception (carrier or driver) at or after `t`: the handover did not happen then.
fn exception_since(s: &ShipmentState, t: i64) -> bool {
    s.latest_exception_at().is_some_and(|e| e >= t)
}

/// The van signed a scan of the parcel somewhere other than parked at its door: away
/// from the address, or "at the address" while its own evidence shows it moving.
fn not_at_door(s: &ShipmentState) -> bool {
    s.away.is_some() || s.moving.is_some()
}

/// The van's last handover word for the parcel, in event time, was not at the door: no
/// at-address confirmation after its latest away or moving scan. A parcel first scanned
/// at the wrong stop and then at its own has a last word at the door.
fn last_word_not_at_door(s: &ShipmentState) -> bool {
    // State stored before the latest-word facts existed has only the earliest ones.
    let away = s.last_not_at_door.as_ref().or(s.away.as_ref()).or(s.moving.as_ref());
    let door = s.last_at_address.as_ref().or(s.at_address.as_ref());
    match (away, door) {
        (Some(away), Some(door)) => away.sort_key() > door.sort_key(),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn device_hold_contradicted(s: &ShipmentState, t: i64) -> bool {
    not_at_door(s) || exception_since(s, t)
}

fn carrier_hold_contradicted(s: &ShipmentState, t: i64) -> bool {
    not_at_door(s) || exception_since(s, t) || (s.on_route && !s.van_arrived_by(t))
}

fn delivered_two_signals(s: &ShipmentState, _: &Rules) -> bool {
    s.at_address.is_some() && s.carrier_delivered_at_ms.is_some()
}

fn delivered_device_then_hold(s: &ShipmentState, r: &Rules) -> bool {
    device_basis(s).is_some_and(|b| elapsed(s, b.hold_from_ms, r) && !device_hold_contradicted(s, b.at_ms))
}

fn delivered_carrier_then_hold(s: &ShipmentState, r: &Rules) -> bool {
    carrier_basis(s).is_some_and(|b| elapsed(s, b.hold_from_ms, r) && !carrier_hold_contradicted(s, b.at_ms))
}

fn carrier_exception(s: &ShipmentState, _: &Rules) -> bool {
    s.carrier_exception.is_some()
}

fn driver_exception(s: &ShipmentState, _: &Rules) -> bool {
    s.driver_exception.is_some()
}

fn device_nearby(s: &ShipmentState, _: &Rules) -> bool {
    s.device_nearby_at_ms.is_some() || s.at_address.is_some()
}

fn carrier_out_for_delivery(s: &ShipmentState, _: &Rules) -> bool {
    s.carrier_out_for_delivery_at_ms.is_some()
}

fn dispatched(s: &ShipmentState, _: &Rules) -> bool {
    s.dispatched_at_ms.is_some()
}

fn away_from_address(s: &ShipmentState, _: &Rules) -> bool {
    s.away.is_some()
}

fn at_address_while_moving(s: &ShipmentState, _: &Rules) -> bool {
    s.moving.is_some()
}

/// Decided when the carrier's delivered has stood for the hold, not when the pair is
/// first seen: an alert cannot be taken back, and the van's correcting at-address scan
/// may still be on its way (the carrier's webhook often arrives before the van's events,
/// or between its wrong-stop scan and its scan at the right door). The hold is the wait
/// the hub already gives a lone delivery signal for contradictions; a correction that
/// arrives later than that is too late for this alert.
fn carrier_delivered_device_away(s: &ShipmentState, r: &Rules) -> bool {
    carrier_delivered_device_away_pending(s) && carrier_hold_from(s).is_some_and(|t| elapsed(s, t, r))
}

/// The facts for `carrier_delivered_device_away` hold, whatever the hub's clock.
fn carrier_delivered_device_away_pending(s: &ShipmentState) -> bool {
    s.carrier_delivered_at_ms.is_some() && last_word_not_at_door(s)
}

fn van_never_arrived(s: &ShipmentState, r: &Rules) -> bool {
    // A van whose last word was a handover away from the door (or while moving) is
    // covered by `carrier_delivered_device_away`: one fact, one alert.
    s.milestone != Milestone::Delivered
        && s.on_route
        && !carrier_delivered_device_away_pending(s)
        && carrier_basis(s).is_some_and(|b| elapsed(s, b.hold_from_ms, r) && !s.van_arrived_by(b.at_ms))
}

fn hold_contradicted(s: &ShipmentState, r: &Rules) -> bool {
    s.milestone != Milestone::Delivered
        && device_basis(s)
            .or(carrier_basis(s))
            .is_some_and(|b| elapsed(s, b.hold_from_ms, r) && exception_since(s, b.at_ms))
}

fn exception_after_delivered(s: &ShipmentState, _: &Rules) -> bool {
    s.milestone == Milestone::Delivered
        && match (s.delivered_at_ms(), s.latest_exception_at()) {
            (Some(d), Some(e)) => e > d,
            _ => false,
        }
}

fn returning(s: &ShipmentState, _: &Rules) -> bool {
    s.carrier_returning_at_ms.is_some()
}

fn cancelled_or_expired(s: &ShipmentState, _: &Rules) -> bool {
    s.milestone != Milestone::Delivered && s.carrier_cancelled_at_ms.is_some()
}

// --- the table ---------------------------------------------------------------------------

/// What a rule row does when its condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// The facts support delivery, established this way (a milestone row).
    Delivered(DeliveredBy),
    /// The facts support this milestone (first matching milestone row wins).
    Milestone(Milestone),
    /// Raise this operations alert code (every matching alert row, once per code).
    Alert(&'static str),
}

/// One row of the reconciliation table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Stable id, also the row's name in `docs/reconciliation.md`.
    pub id: &'static str,
    /// The condition, in the words the docs use.
    pub when: &'static str,
    /// The outcome.
    pub then: Then,
    check: fn(&ShipmentState, &Rules) -> bool,
}

impl Rule {
    /// Whether the row holds for these facts.
    pub fn holds(&self, state: &ShipmentState, rules: &Rules) -> bool {
        (self.check)(state, rules)
    }
}

/// The rules, in evaluation order. Milestone rows are ordered by the milestone they
/// support, highest first; alert rows follow. `docs/reconciliation.md` mirrors this table.
pub const RULES: &[Rule] = &[
    Rule {
        id: "delivered_two_signals",
        when: "a signed at-address confirmation AND the carrier's delivered",
        then: Then::Delivered(DeliveredBy::TwoSignals),
        check: delivered_two_signals,
    },
    Rule {
        id: "delivered_device_then_hold",
        when: "a signed at-address confirmation, no carrier delivered, the hold has elapsed since it, and no \
               away-from-address or moving scan and no exception at or after it",
        then: Then::Delivered(DeliveredBy::DeviceThenHold),
        check: delivered_device_then_hold,
    },
    Rule {
        id: "delivered_carrier_then_hold",
        when: "the carrier's delivered, no at-address confirmation, the hold has elapsed since it, no \
               away-from-address or moving scan, no exception at or after it, and (not on a Doorstep route, or \
               the van had come to the stop by then)",
        then: Then::Delivered(DeliveredBy::CarrierThenHold),
        check: delivered_carrier_then_hold,
    },
    Rule {
        id: "carrier_exception",
        when: "the carrier reports attempt failed, exception, available for pickup or returning",
        then: Then::Milestone(Milestone::Exception),
        check: carrier_exception,
    },
    Rule {
        id: "driver_exception",
        when: "the driver reports a failed delivery (signed)",
        then: Then::Milestone(Milestone::Exception),
        check: driver_exception,
    },
    Rule {
        id: "device_nearby",
        when: "the van signs nearby (or an at-address confirmation)",
        then: Then::Milestone(Milestone::Nearby),
        check: device_nearby,
    },
    Rule {
        id: "carrier_out_for_delivery",
        when: "the carrier reports out for delivery",
        then: Then::Milestone(Milestone::OutForDelivery),
        check: carrier_out_for_delivery,
    },
    Rule {
        id: "dispatched",
        when: "the route was published, or the order system says dispatched",
        then: Then::Milestone(Milestone::Dispatched),
        check: dispatched,
    },
    Rule {
        id: "delivered_away_from_address",
        when: "the van signs a handover away from the address",
        then: Then::Alert("delivered_away_from_address"),
        check: away_from_address,
    },
    Rule {
        id: "at_address_while_moving",
        when: "the van signs a handover at the address, but its own evidence shows it moving: speed at the \
               scan above the standing threshold and dwell below the stop's requirement",
        then: Then::Alert("at_address_while_moving"),
        check: at_address_while_moving,
    },
    Rule {
        id: "carrier_delivered_device_away",
        when: "the carrier's delivered has stood for the hold, and the van's last handover scan (in event \
               time) was away from the address or moving, with no at-address confirmation after it",
        then: Then::Alert("carrier_delivered_device_away"),
        check: carrier_delivered_device_away,
    },
    Rule {
        id: "carrier_delivered_van_never_arrived",
        when: "on a Doorstep route, the carrier's delivered, the hold elapsed, and the van had not come to the \
               stop by the carrier's time",
        then: Then::Alert("carrier_delivered_van_never_arrived"),
        check: van_never_arrived,
    },
    Rule {
        id: "hold_contradicted",
        when: "a lone delivery signal's hold elapsed with an exception at or after it",
        then: Then::Alert("hold_contradicted"),
        check: hold_contradicted,
    },
    Rule {
        id: "exception_after_delivered",
        when: "already delivered, and an exception later than the handover arrives",
        then: Then::Alert("exception_after_delivered"),
        check: exception_after_delivered,
    },
    Rule {
        id: "carrier_returning",
        when: "the carrier reports the parcel returning to the sender",
        then: Then::Alert("carrier_returning"),
        check: returning,
    },
    Rule {
        id: "carrier_cancelled_or_expired",
        when: "not delivered, and the carrier reports the shipment cancelled or its tracking expired",
        then: Then::Alert("carrier_cancelled_or_expired"),
        check: cancelled_or_expired,
    },
];

/// Every operations alert code the table can raise, in table order (for metrics that
/// show each code from the start, at zero).
pub fn alert_codes() -> impl Iterator<Item = &'static str> {
    RULES.iter().filter_map(|rule| match rule.then {
        Then::Alert(code) => Some(code),
        Then::Delivered(_) | Then::Milestone(_) => None,
    })
}

// --- the state machine ---------------------------------------------------------------------

/// Folds `input` into `state` and says what to do about it. Pure: the same arguments
/// always give the same result, and applying an input twice changes nothing the second
/// time.
pub fn apply(state: &ShipmentState, input: &Input, rules: &Rules) -> (ShipmentState, Vec<Action>) {
    let mut s = state.clone();
    record(&mut s, input);
    let mut actions = Vec::new();

    let supported = RULES.iter().find_map(|rule| match rule.then {
        Then::Milestone(m) if rule.holds(&s, rules) => Some((m, None)),
        Then::Delivered(by) if rule.holds(&s, rules) => Some((Milestone::Delivered, Some(by))),
        _ => None,
    });
    if let Some((milestone, by)) = supported
        && milestone > s.milestone
    {
        s.milestone = milestone;
        s.delivered_by = s.delivered_by.or(by);
        if !s.notified.contains(&milestone) {
            s.notified.push(milestone);
            let detail = customer_detail(&s, milestone);
            if let Some(date) = named_date(milestone, detail.as_deref()) {
                s.told_expected = Some(date);
            }
            actions.push(Action::NotifyCustomer { milestone, detail });
        }
    }
    actions.extend(delay(&mut s, rules));

    for rule in RULES {
        if let Then::Alert(code) = rule.then
            && !s.alerted.iter().any(|c| c == code)
            && rule.holds(&s, rules)
        {
            s.alerted.push(code.to_owned());
            actions.push(Action::AlertOperations { code: code.to_owned(), detail: alert_detail(&s, code) });
        }
    }

    // Ask to be woken when a lone delivery signal's hold ends, or when the carrier's
    // delivered has stood long enough to decide `carrier_delivered_device_away`. A
    // deadline already in the past is still asked for: the hub's clock, not ours, decides
    // when it has passed.
    let lone = if s.milestone == Milestone::Delivered {
        None
    } else {
        device_basis(&s).or(carrier_basis(&s)).map(|b| b.hold_from_ms)
    };
    let away_alert = if carrier_delivered_device_away_pending(&s)
        && !s.alerted.iter().any(|c| c == "carrier_delivered_device_away")
    {
        carrier_hold_from(&s)
    } else {
        None
    };
    let deadline = match (lone, away_alert) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .map(|t| t.saturating_add(rules.hold_ms));
    if deadline != s.hold_deadline_ms {
        s.hold_deadline_ms = deadline;
        if let Some(at_ms) = deadline {
            actions.push(Action::WakeAt { at_ms });
        }
    }
    (s, actions)
}

/// Folds one input into the facts. Every fold is order-independent: earliest, latest
/// (with a total tie-break), or "ever seen".
fn record(s: &mut ShipmentState, input: &Input) {
    match input {
        Input::Dispatched { at_ms, on_route } => {
            s.dispatched_at_ms = earliest(s.dispatched_at_ms, *at_ms);
            s.on_route |= *on_route;
        }
        Input::Carrier(event) => record_carrier(s, event),
        Input::Device(signal) => record_device(s, signal),
        Input::Wake { now_ms } => s.now_ms = Some(s.now_ms.map_or(*now_ms, |n| n.max(*now_ms))),
    }
}

fn record_carrier(s: &mut ShipmentState, e: &CarrierEvent) {
    let fact = CarrierFact {
        status: e.status,
        raw_status: e.raw_status.clone(),
        at_ms: e.occurred_ms,
        event_key: e.event_key.clone(),
        expected_delivery: e.expected_delivery.clone(),
    };
    let newer =
        s.latest_carrier.as_ref().is_none_or(|l| (fact.at_ms, &fact.event_key) > (l.at_ms, &l.event_key));
    if newer {
        s.latest_carrier = Some(fact);
    }
    let t = e.occurred_ms;
    if let Some(text) = e.expected_delivery.as_deref().map(str::trim).filter(|t| expected_ms(t).is_some()) {
        let fact = ExpectedFact { at_ms: t, event_key: e.event_key.clone(), text: text.to_owned() };
        let newer = s
            .carrier_expected
            .as_ref()
            .is_none_or(|l| (fact.at_ms, &fact.event_key) > (l.at_ms, &l.event_key));
        if newer {
            s.carrier_expected = Some(fact);
        }
    }
    match e.status {
        CanonicalStatus::OutForDelivery => {
            s.carrier_out_for_delivery_at_ms = earliest(s.carrier_out_for_delivery_at_ms, t);
        }
        CanonicalStatus::Delivered => {
            s.carrier_delivered_at_ms = earliest(s.carrier_delivered_at_ms, t);
            s.carrier_delivered_hold_from_ms =
                earliest(s.carrier_delivered_hold_from_ms, hold_from(t, e.received_ms));
        }
        CanonicalStatus::AttemptFailed
        | CanonicalStatus::Exception
        | CanonicalStatus::AvailableForPickup
        | CanonicalStatus::Returning => {
            if e.status == CanonicalStatus::Returning {
                s.carrier_returning_at_ms = earliest(s.carrier_returning_at_ms, t);
            }
            let fact = ExceptionFact {
                at_ms: t,
                code: e.status.as_str().to_owned(),
                detail: carrier_exception_text(e),
            };
            s.carrier_exception = latest_exception(s.carrier_exception.take(), fact);
        }
        CanonicalStatus::CancelledOrExpired => {
            s.carrier_cancelled_at_ms = earliest(s.carrier_cancelled_at_ms, t)
        }
        CanonicalStatus::LabelCreated
        | CanonicalStatus::Accepted
        | CanonicalStatus::InTransit
        | CanonicalStatus::Unknown => {}
    }
}

fn record_device(s: &mut ShipmentState, signal: &DeviceSignal) {
    match signal.kind {
        DeviceSignalKind::Nearby => {
            s.device_nearby_at_ms = earliest(s.device_nearby_at_ms, signal.occurred_ms)
        }
        DeviceSignalKind::DeliveredAtAddress => {
            s.at_address = earliest_proof(s.at_address.take(), signal);
            s.last_at_address = latest_proof(s.last_at_address.take(), signal);
            s.at_address_hold_from_ms =
                earliest(s.at_address_hold_from_ms, hold_from(signal.occurred_ms, signal.received_ms));
        }
        DeviceSignalKind::DeliveredAwayFromAddress => {
            s.away = earliest_proof(s.away.take(), signal);
            s.last_not_at_door = latest_proof(s.last_not_at_door.take(), signal);
        }
        DeviceSignalKind::AtAddressWhileMoving => {
            s.moving = earliest_proof(s.moving.take(), signal);
            s.last_not_at_door = latest_proof(s.last_not_at_door.take(), signal);
        }
        DeviceSignalKind::DriverException => {
            let code = signal.reason.clone().unwrap_or_else(|| "driver_exception".to_owned());
            let detail = Some(driver_reason_text(&code));
            let fact = ExceptionFact { at_ms: signal.occurred_ms, code, detail };
            s.driver_exception = latest_exception(s.driver_exception.take(), fact);
        }
    }
}

fn earliest(current: Option<i64>, t: i64) -> Option<i64> {
    Some(current.map_or(t, |c| c.min(t)))
}

fn earliest_proof(current: Option<DeviceProof>, signal: &DeviceSignal) -> Option<DeviceProof> {
    let candidate = DeviceProof::from_signal(signal);
    match current {
        Some(c) if c.sort_key() <= candidate.sort_key() => Some(c),
        _ => Some(candidate),
    }
}

fn latest_proof(current: Option<DeviceProof>, signal: &DeviceSignal) -> Option<DeviceProof> {
    let candidate = DeviceProof::from_signal(signal);
    match current {
        Some(c) if c.sort_key() >= candidate.sort_key() => Some(c),
        _ => Some(candidate),
    }
}

fn latest_exception(current: Option<ExceptionFact>, candidate: ExceptionFact) -> Option<ExceptionFact> {
    match current {
        Some(c) if c.sort_key() >= candidate.sort_key() => Some(c),
        _ => Some(candidate),
    }
}

/// What the customer is told of a carrier's exception: its kind and the carrier's revised
/// expectation (the words are the notifier's, in the customer's language; see
/// [`ExceptionDetail`]).
fn carrier_exception_text(e: &CarrierEvent) -> Option<String> {
    Some(
        ExceptionDetail { reason: e.status.as_str().to_owned(), expected: e.expected_delivery.clone() }
            .to_json(),
    )
}

/// What the customer is told of a driver's exception: the reason code only. The driver's
/// note (`code: note` as ingest records it) is for operators, never the customer.
fn driver_reason_text(code: &str) -> String {
    let reason = code.split(':').next().unwrap_or(code).trim();
    ExceptionDetail { reason: reason.to_owned(), expected: None }.to_json()
}

/// An exception as the reconciler hands it to the notifier (the outbox row's `detail`, as
/// JSON): the reason code (a driver's, or the carrier's canonical status) and the
/// carrier's revised expected delivery, verbatim. The notifier turns it into words in the
/// customer's language, with what happens next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionDetail {
    /// `recipient_absent`, `no_access`, ... or `attempt_failed`, `exception`,
    /// `available_for_pickup`, `returning`.
    pub reason: String,
    /// The carrier's new expected delivery, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

impl ExceptionDetail {
    /// As stored in the outbox.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored detail; `None` for one written as plain text by an older hub.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// A delay as the reconciler hands it to the notifier (the outbox row's `detail`, as
/// JSON): the carrier's new expected delivery and the one the customer was told before,
/// both verbatim. The notifier words the new date in the customer's calendar and language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayDetail {
    /// The carrier's new expected delivery.
    pub expected: String,
    /// What the customer was told before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl DelayDetail {
    /// As stored in the outbox.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored detail.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// The instant a carrier's expected delivery stands for, ms since the Unix epoch: its own
/// time when it has one with an offset (`2026-08-09T18:00:00Z`), else the middle of its
/// day in UTC for a bare date (`2026-08-09`; a civil date-time without an offset counts as
/// its date), so that a date and any time on it are at most twelve hours apart. `None`
/// when it is neither: such a text is never compared, and never becomes what the customer
/// was told.
pub fn expected_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(instant) = text.parse::<jiff::Timestamp>() {
        return Some(instant.as_millisecond());
    }
    let date = text.parse::<jiff::civil::Date>().ok()?;
    let noon = date.at(12, 0, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(noon.timestamp().as_millisecond())
}

/// The expected delivery a milestone message names, when it names a readable one: an
/// exception's carrier date, or the out-for-delivery message's.
fn named_date(milestone: Milestone, detail: Option<&str>) -> Option<String> {
    let date = match milestone {
        Milestone::Exception => detail.and_then(ExceptionDetail::from_json)?.expected?,
        Milestone::OutForDelivery => detail?.trim().to_owned(),
        Milestone::Created | Milestone::Dispatched | Milestone::Nearby | Milestone::Delivered => return None,
    };
    expected_ms(&date).is_some().then_some(date)
}

/// Whether something other than a slipping date explains a later one: the shipment is
/// at an exception or delivered, or the carrier's latest word is an exception-like
/// status, its delivered (a hold may be running) or a cancellation. The customer then
/// hears about that, not about a delay.
fn delay_explained(s: &ShipmentState) -> bool {
    matches!(s.milestone, Milestone::Exception | Milestone::Delivered)
        || s.latest_carrier.as_ref().is_some_and(|c| {
            matches!(
                c.status,
                CanonicalStatus::AttemptFailed
                    | CanonicalStatus::Exception
                    | CanonicalStatus::AvailableForPickup
                    | CanonicalStatus::Returning
                    | CanonicalStatus::Delivered
                    | CanonicalStatus::CancelledOrExpired
            )
        })
}

/// The delay rule (see the module docs): takes the first expected delivery as what the
/// customer was told, and asks for a delay message when the carrier's moves later than
/// that beyond the tolerance, unexplained.
fn delay(s: &mut ShipmentState, rules: &Rules) -> Option<Action> {
    let current = s.carrier_expected.as_ref()?.text.clone();
    let Some(told) = s.told_expected.clone() else {
        s.told_expected = Some(current);
        return None;
    };
    if delay_explained(s) {
        return None;
    }
    let later_by = expected_ms(&current)?.saturating_sub(expected_ms(&told)?);
    if later_by <= rules.delay_tolerance_ms {
        return None;
    }
    s.told_expected = Some(current.clone());
    Some(Action::NotifyDelay { expected: current, previous: told })
}

fn customer_detail(s: &ShipmentState, milestone: Milestone) -> Option<String> {
    match milestone {
        Milestone::Exception => s.latest_exception().and_then(|e| e.detail.clone()),
        Milestone::OutForDelivery => s.latest_carrier.as_ref().and_then(|c| c.expected_delivery.clone()),
        Milestone::Created | Milestone::Dispatched | Milestone::Nearby | Milestone::Delivered => None,
    }
}

fn alert_detail(s: &ShipmentState, code: &str) -> String {
    let at = |t: Option<i64>| t.map_or_else(|| "an unknown time".to_owned(), format_ms);
    let carrier = at(s.carrier_delivered_at_ms);
    match code {
        "delivered_away_from_address" => format!(
            "The van signed a handover away from the address at {}; the customer has not been told it was delivered.",
            at(s.away.as_ref().map(|p| p.at_ms))
        ),
        "at_address_while_moving" => {
            let p = s.moving.as_ref();
            let speed = p
                .and_then(|p| p.speed_cmps)
                .map_or_else(|| "an unknown speed".to_owned(), |v| format!("{}.{:02} m/s", v / 100, v % 100));
            let dwell = p.and_then(|p| p.dwell_s).map_or_else(|| "unknown".to_owned(), |d| format!("{d} s"));
            format!(
                "The van signed a handover at the address at {} while moving ({speed} at the scan, dwell {dwell}); \
                 it is not taken as delivered and the customer has not been told delivered on it.",
                at(p.map(|p| p.at_ms))
            )
        }
        "carrier_delivered_device_away" => format!(
            "The carrier says delivered at {carrier}, but the van's last handover scan was not at the door \
             (away from the address, or while moving) at {}.",
            at(s.last_not_at_door.as_ref().map(|p| p.at_ms))
        ),
        "carrier_delivered_van_never_arrived" => format!(
            "The carrier says delivered at {carrier}, but the route's van had not come to the stop by then; \
             the customer is told only when the van hands it over at the address."
        ),
        "hold_contradicted" => format!(
            "A lone delivery signal was contradicted by an exception at {}; the customer has not been told it was delivered.",
            at(s.latest_exception_at())
        ),
        "exception_after_delivered" => format!(
            "Delivered at {}, then an exception at {}: check with the carrier and the customer.",
            at(s.delivered_at_ms()),
            at(s.latest_exception_at())
        ),
        "carrier_returning" => {
            format!(
                "The carrier is returning the parcel to the sender (since {}).",
                at(s.carrier_returning_at_ms)
            )
        }
        "carrier_cancelled_or_expired" => format!(
            "The carrier reports the shipment cancelled or its tracking expired (at {}).",
            at(s.carrier_cancelled_at_ms)
        ),
        other => format!("Reconciliation alert {other}."),
    }
}

/// RFC 3339 UTC for operator text; the raw milliseconds when out of range.
fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod support;

#[cfg(test)]
mod scenarios;

#[cfg(test)]
mod properties;
