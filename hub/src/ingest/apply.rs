//! Reconciliation inside the writer's transaction: the per-parcel signals of a verified
//! event, storing it (or quarantining it), and applying each input to its shipment with
//! the notifications, alerts and wake-ups it asks for.

use std::collections::BTreeSet;
use std::sync::Arc;

use doorstep_proto::{DeviceId, Envelope, Event, StopId, TrackingNumber};

use crate::config::ChannelMap;
use crate::metrics::Metrics;
use crate::model::{Action, DeviceSignal, DeviceSignalKind, Milestone, Notice};
use crate::reconcile::{self, DelayDetail, Input, Rules, ScanEvidence, ShipmentState};
use crate::store::{BatchParcels, EventInsert, NewEvent, NewGap, Shipment, StoreError, StoreTx};

use super::TIME_IN_FUTURE;

/// Why reconciliation could not run for a shipment.
#[derive(Debug, thiserror::Error)]
#[error("stored reconcile state of shipment {shipment} is unreadable: {detail}")]
pub struct ReconcileError {
    /// The shipment.
    pub shipment: i64,
    /// What is wrong.
    pub detail: String,
}

/// Everything the writer needs besides the store: the reconciliation rules, the channel
/// map, the bound on event times, metrics.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Reconciliation settings (the hold period, the evidence thresholds).
    pub rules: Rules,
    /// Which milestones go to which channels.
    pub channel_map: ChannelMap,
    /// How far a device event's GNSS time may be ahead of the hub's clock, ms; beyond it
    /// the event is quarantined ([`DEFAULT_MAX_EVENT_AHEAD_MS`](super::DEFAULT_MAX_EVENT_AHEAD_MS)).
    pub max_event_ahead_ms: i64,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Which business sinks receive which milestones and alerts (none by default).
    pub sinks: crate::sinks::Subscriptions,
}

/// What applying one input did, for counters updated after commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Notifications enqueued: (channel, milestone).
    pub enqueued: Vec<(String, String)>,
    /// Alerts raised: code.
    pub alerts: Vec<String>,
    /// Shipments whose milestone changed: (shipment id, new milestone).
    pub milestones: Vec<(i64, Milestone)>,
}

impl Effects {
    /// Counts the effects once their transaction has committed.
    pub fn record(&self, metrics: &Metrics) {
        for (channel, milestone) in &self.enqueued {
            metrics.notification_enqueued(channel, milestone);
        }
        for code in &self.alerts {
            metrics.alert(code);
        }
    }

    pub(crate) fn merge(&mut self, other: Effects) {
        self.enqueued.extend(other.enqueued);
        self.alerts.extend(other.alerts);
        self.milestones.extend(other.milestones);
    }
}

/// Why applying an input to a shipment failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored reconcile state is unreadable.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// The reconciler's stored state of a shipment, parsed.
pub fn shipment_state(shipment: &Shipment) -> Result<ShipmentState, ReconcileError> {
    match shipment.reconcile_state.as_deref() {
        None | Some("null") => Ok(ShipmentState { milestone: shipment.milestone, ..ShipmentState::new() }),
        Some(json) => serde_json::from_str(json)
            .map_err(|e| ReconcileError { shipment: shipment.id, detail: e.to_string() }),
    }
}

/// Applies one input to one shipment inside `tx`: reconcile, save, timeline, then the
/// actions (notifications per consented contact and channel map, alerts, wake-ups).
pub fn apply_to_shipment(
    tx: &StoreTx<'_>,
    domain: &Domain,
    shipment: &Shipment,
    input: &Input,
    now: i64,
) -> Result<Effects, ApplyError> {
    let current = shipment_state(shipment)?;
    apply_to_state(tx, domain, shipment, &current, input, now)
}

/// [`apply_to_shipment`] for a shipment whose state is already parsed: nothing here can
/// fail but the store, so a caller that parses first never leaves half an input applied.
pub fn apply_to_state(
    tx: &StoreTx<'_>,
    domain: &Domain,
    shipment: &Shipment,
    current: &ShipmentState,
    input: &Input,
    now: i64,
) -> Result<Effects, ApplyError> {
    let (next, actions) = reconcile::apply(current, input, &domain.rules);
    // A repeated signal (the tenth "nearby" of a stop) usually changes nothing.
    if next != *current || shipment.reconcile_state.is_none() {
        let json = serde_json::to_string(&next)
            .map_err(|e| ReconcileError { shipment: shipment.id, detail: e.to_string() })?;
        tx.save_reconcile_json(shipment.id, next.milestone, &json, now)?;
    }
    if let Some(entry) = timeline_entry(input) {
        tx.add_timeline_json(shipment.id, entry.occurred_ms, entry.source, entry.kind, &entry.detail)?;
    }
    let mut effects = Effects::default();
    if next.milestone != current.milestone {
        effects.milestones.push((shipment.id, next.milestone));
        // Reported to the business sinks from this transaction: only if it commits.
        let detail = actions.iter().find_map(|a| match a {
            Action::NotifyCustomer { milestone, detail } if *milestone == next.milestone => detail.as_deref(),
            _ => None,
        });
        let event = crate::sinks::EventKind::Milestone(next.milestone).key();
        tx.enqueue_sink_event(&domain.sinks.milestone(next.milestone), shipment.id, &event, detail, now)?;
    }
    for action in actions {
        match action {
            Action::NotifyCustomer { milestone, detail } => {
                let notice = Notice::Milestone(milestone);
                let on = |channel| domain.channel_map.allows(milestone, channel);
                for channel in tx.enqueue_to_contacts(shipment, &notice.key(), detail.as_deref(), now, on)? {
                    effects.enqueued.push((channel.as_str().to_owned(), notice.kind().to_owned()));
                }
            }
            Action::NotifyDelay { expected, previous } => {
                let notice = Notice::delayed(&expected);
                let detail = DelayDetail { expected, previous: Some(previous) }.to_json();
                // An update goes where news of the shipment's current milestone goes.
                let on = |channel| domain.channel_map.allows(next.milestone, channel);
                for channel in tx.enqueue_to_contacts(shipment, &notice.key(), Some(&detail), now, on)? {
                    effects.enqueued.push((channel.as_str().to_owned(), notice.kind().to_owned()));
                }
            }
            Action::AlertOperations { code, detail } => {
                if tx.raise_alert(shipment.id, &code, &detail, now)? {
                    let event = crate::sinks::EventKind::Alert(code.clone()).key();
                    tx.enqueue_sink_event(&domain.sinks.alerts(), shipment.id, &event, Some(&detail), now)?;
                    tracing::warn!(shipment = %shipment.tracking_number, code, detail, "operations alert");
                    effects.alerts.push(code);
                }
            }
            Action::WakeAt { at_ms } => tx.schedule_wake(shipment.id, at_ms)?,
        }
    }
    Ok(effects)
}

/// One timeline row, its detail already JSON text.
struct TimelineRow<'a> {
    occurred_ms: i64,
    source: &'a str,
    kind: &'a str,
    detail: String,
}

/// The timeline detail of a device signal, serialized straight to text.
#[derive(serde::Serialize)]
struct DeviceDetail<'a> {
    device: &'a DeviceId,
    seq: u64,
    stop_id: &'a Option<doorstep_proto::StopId>,
    distance_m: Option<u32>,
    reason: &'a Option<String>,
    photo_sha256: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_cmps: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dwell_s: Option<u32>,
}

fn timeline_entry(input: &Input) -> Option<TimelineRow<'_>> {
    match input {
        Input::Device(s) => {
            let detail = DeviceDetail {
                device: &s.device,
                seq: s.seq,
                stop_id: &s.stop_id,
                distance_m: s.distance_m,
                reason: &s.reason,
                photo_sha256: &s.photo_sha256,
                speed_cmps: s.speed_cmps,
                dwell_s: s.dwell_s,
            };
            Some(TimelineRow {
                occurred_ms: s.occurred_ms,
                source: "device",
                kind: s.kind.as_str(),
                detail: serde_json::to_string(&detail).ok()?,
            })
        }
        Input::Carrier(e) => {
            let kind = e.status.as_str();
            let detail = serde_json::json!({
                "raw_status": e.raw_status, "message": e.message, "expected_delivery": e.expected_delivery,
            });
            Some(TimelineRow {
                occurred_ms: e.occurred_ms,
                source: crate::carrier::carrier_slug(e.carrier),
                kind,
                detail: detail.to_string(),
            })
        }
        Input::Dispatched { at_ms, on_route } => Some(TimelineRow {
            occurred_ms: *at_ms,
            source: "hub",
            kind: "dispatched",
            detail: serde_json::json!({ "on_route": on_route }).to_string(),
        }),
        Input::Wake { .. } => None,
    }
}

/// Adds the parcels `envelope` names to `parcels`, as [`device_signals`] reads them (a
/// stop of the van's route, or tracking numbers): what a batch locks first on
/// PostgreSQL. One left out costs lock order only: its shipment is locked when its event
/// is reconciled.
pub fn note_parcels(envelope: &Envelope, parcels: &mut BatchParcels) {
    let stop = |parcels: &mut BatchParcels, route: &str, stop: &StopId| {
        parcels.devices.push(envelope.device.as_str().to_owned());
        parcels.routes.push(route.to_owned());
        parcels.stops.push(stop.as_str().to_owned());
    };
    let numbers = |parcels: &mut BatchParcels, numbers: &[TrackingNumber]| {
        parcels.numbers.extend(numbers.iter().map(|t| t.as_str().to_owned()));
    };
    match &envelope.event {
        Event::Position(_) | Event::Trail(_) | Event::ScanNotOnRoute(_) | Event::Gap(_) => {}
        Event::Nearby(n) => stop(parcels, n.route_id.as_str(), &n.stop_id),
        Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => {
            numbers(parcels, &d.tracking_numbers)
        }
        Event::Exception(e) => match (&e.route_id, &e.stop_id) {
            (Some(route), Some(at)) if e.tracking_numbers.is_empty() => stop(parcels, route.as_str(), at),
            _ => numbers(parcels, &e.tracking_numbers),
        },
    }
}

/// The per-parcel signals of a verified event, received by the hub at `received_ms`.
/// `Nearby` names a stop, not parcels: it becomes one signal per parcel of that stop on
/// the device's stored route. A delivered-at-address confirmation whose own evidence
/// shows the van moving ([`reconcile::moving_at_scan`], with the stop's dwell from the
/// stored route) becomes [`DeviceSignalKind::AtAddressWhileMoving`], not a delivery
/// signal.
pub fn device_signals(
    tx: &StoreTx<'_>,
    envelope: &Envelope,
    rules: &Rules,
    received_ms: i64,
) -> Result<Vec<DeviceSignal>, StoreError> {
    let base = |kind, tracking_number: TrackingNumber| DeviceSignal {
        kind,
        tracking_number,
        device: envelope.device.clone(),
        seq: envelope.seq,
        stop_id: None,
        occurred_ms: envelope.gnss_utc_ms,
        distance_m: None,
        reason: None,
        photo_sha256: None,
        speed_cmps: None,
        dwell_s: None,
        received_ms: Some(received_ms),
    };
    let mut out = Vec::new();
    match &envelope.event {
        Event::Position(_) | Event::Trail(_) | Event::ScanNotOnRoute(_) | Event::Gap(_) => {}
        Event::Nearby(n) => {
            for tn in tx.stop_parcels(&envelope.device, n.route_id.as_str(), &n.stop_id)? {
                out.push(DeviceSignal {
                    stop_id: Some(n.stop_id.clone()),
                    distance_m: Some(n.distance_m),
                    ..base(DeviceSignalKind::Nearby, tn)
                });
            }
        }
        Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => {
            let kind = if matches!(envelope.event, Event::DeliveredAwayFromAddress(_)) {
                DeviceSignalKind::DeliveredAwayFromAddress
            } else {
                // The stop's own dwell is looked up only when the speed alone could make
                // the confirmation a moving one: most are made standing still.
                let fast = d.fix.speed_cmps.is_some_and(|v| v > rules.standing_speed_cmps);
                let stop_dwell_s = if fast {
                    tx.stop_dwell_s(&envelope.device, d.route_id.as_str(), &d.stop_id)?
                } else {
                    None
                };
                let evidence =
                    ScanEvidence { speed_cmps: d.fix.speed_cmps, dwell_s: d.dwell_s, stop_dwell_s };
                if reconcile::moving_at_scan(&evidence, rules) {
                    tracing::warn!(device = %envelope.device, seq = envelope.seq, stop = %d.stop_id, speed_cmps = ?d.fix.speed_cmps, dwell_s = d.dwell_s, required_dwell_s = stop_dwell_s.unwrap_or(rules.default_dwell_s), "at-address confirmation made while moving; not a delivery signal");
                    DeviceSignalKind::AtAddressWhileMoving
                } else {
                    DeviceSignalKind::DeliveredAtAddress
                }
            };
            for tn in &d.tracking_numbers {
                out.push(DeviceSignal {
                    stop_id: Some(d.stop_id.clone()),
                    distance_m: Some(d.distance_m),
                    photo_sha256: d.photo.map(|p| p.sha256.to_hex()),
                    speed_cmps: d.fix.speed_cmps,
                    dwell_s: Some(d.dwell_s),
                    ..base(kind, tn.clone())
                });
            }
        }
        Event::Exception(e) => {
            let mut parcels = e.tracking_numbers.clone();
            if parcels.is_empty()
                && let (Some(route), Some(stop)) = (&e.route_id, &e.stop_id)
            {
                parcels = tx.stop_parcels(&envelope.device, route.as_str(), stop)?;
            }
            let reason = match &e.note {
                Some(note) => format!("{}: {note}", e.reason.as_str()),
                None => e.reason.as_str().to_owned(),
            };
            for tn in parcels {
                out.push(DeviceSignal {
                    stop_id: e.stop_id.clone(),
                    distance_m: e.distance_m,
                    reason: Some(reason.clone()),
                    photo_sha256: e.photo.map(|p| p.sha256.to_hex()),
                    ..base(DeviceSignalKind::DriverException, tn)
                });
            }
        }
    }
    Ok(out)
}

fn photo_of(event: &Event) -> Option<doorstep_proto::PhotoRef> {
    match event {
        Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => d.photo,
        Event::Exception(e) => e.photo,
        _ => None,
    }
}

/// What storing one verified event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// New: stored and reconciled.
    Stored,
    /// Already stored (a redelivery): acknowledged again, nothing changed.
    Duplicate,
    /// A gap notice on a seq that holds the sample it replaces: applied, not stored.
    GapOverStoredSeq,
    /// Conflicts with a stored event (`seq_conflict`, `event_id_reused`): not stored.
    Conflict(&'static str),
    /// New, stored and acked, but not acted on, for this reason ([`TIME_IN_FUTURE`]).
    Quarantined(&'static str),
}

/// The writer's step for one verified event of a registered device, inside `tx`: store
/// the signed bytes (deduplicated on (device, seq) and event id), apply a gap notice,
/// record a photo reference, and reconcile every parcel it names. `signed` is the exact
/// envelope received. The effects are for counters after the commit.
///
/// An event whose GNSS time is more than [`Domain::max_event_ahead_ms`] ahead of the
/// hub's clock (`now`) is **quarantined**: stored with the reason [`TIME_IN_FUTURE`],
/// acknowledged like any stored event, and never reconciled, so it moves no milestone,
/// sends no message and starts no hold. It is not refused, because refusing a signed,
/// valid event leaves its seq missing for good: the hub's ack is cumulative, so every
/// later event of that van would stay unacknowledged and its outbox would fill behind
/// the one the hub will never take (invariant 3: a van deletes only what the hub acked).
/// Stored, the signed bytes stay as evidence for operations, and a redelivery is a plain
/// duplicate. A gap notice is applied all the same (what it says does not depend on its
/// time), and a photo it names is still accepted, as evidence.
pub fn store_verified(
    tx: &StoreTx<'_>,
    domain: &Domain,
    envelope: &Envelope,
    signed: &[u8],
    now: i64,
) -> Result<(StoreOutcome, Effects), StoreError> {
    let event_id = envelope.event_id.to_hex();
    let outcome = tx.insert_event(&new_event(domain, envelope, &event_id, signed, now))?;
    store_inserted(tx, domain, envelope, &event_id, signed, now, outcome)
}

/// The row a verified event is stored as; `event_id` is its id in hex.
pub fn new_event<'a>(
    domain: &Domain,
    envelope: &'a Envelope,
    event_id: &'a str,
    signed: &'a [u8],
    now: i64,
) -> NewEvent<'a> {
    NewEvent {
        device: &envelope.device,
        seq: envelope.seq,
        event_id,
        gnss_ms: envelope.gnss_utc_ms,
        kind: envelope.event.kind(),
        envelope: signed,
        received_ms: now,
        quarantine: quarantine(domain, envelope, now),
    }
}

/// Why a verified event is stored but not acted on: its GNSS time is further ahead of
/// the hub's clock than the domain allows.
fn quarantine(domain: &Domain, envelope: &Envelope, now: i64) -> Option<&'static str> {
    let ahead_ms = envelope.gnss_utc_ms.saturating_sub(now);
    (ahead_ms > domain.max_event_ahead_ms).then_some(TIME_IN_FUTURE)
}

/// [`store_verified`] for an event whose insert already ran (`outcome`), as the writer
/// stores a batch's events on PostgreSQL in one statement before reconciling each;
/// `event_id` is its id in hex.
pub fn store_inserted(
    tx: &StoreTx<'_>,
    domain: &Domain,
    envelope: &Envelope,
    event_id: &str,
    signed: &[u8],
    now: i64,
    outcome: EventInsert,
) -> Result<(StoreOutcome, Effects), StoreError> {
    let device = &envelope.device;
    let ahead_ms = envelope.gnss_utc_ms.saturating_sub(now);
    let quarantine = quarantine(domain, envelope, now);
    // A gap notice is applied whether it is new, a redelivery, or lands on a seq that
    // already holds the position sample it replaces (the sample arrived before the agent
    // evicted it): in every case the device says the rest of the range will never come.
    if let Event::Gap(gap) = &envelope.event
        && outcome != EventInsert::EventIdReused
    {
        let applied = tx.apply_gap(&NewGap {
            device,
            first_seq: gap.first_seq,
            last_seq: gap.last_seq,
            event_id,
            envelope: signed,
            received_ms: now,
        })?;
        if applied.new {
            tracing::info!(device = %device, first_seq = gap.first_seq, last_seq = gap.last_seq, "gap notice: evicted position samples will not come");
        }
        if applied.new && applied.confirmations_in_range > 0 {
            tracing::warn!(device = %device, first_seq = gap.first_seq, last_seq = gap.last_seq, confirmations = applied.confirmations_in_range, "gap notice covers stored confirmations; they stay stored");
        }
    }
    Ok(match outcome {
        EventInsert::Stored => {
            tracing::debug!(device = %device, seq = envelope.seq, kind = envelope.event.kind(), "event stored");
            if let Some(photo) = photo_of(&envelope.event) {
                tx.add_photo_ref(&photo.sha256.to_hex(), device, envelope.seq, photo.size)?;
            }
            if let Some(reason) = quarantine {
                tracing::warn!(device = %device, seq = envelope.seq, kind = envelope.event.kind(), gnss_ms = envelope.gnss_utc_ms, ahead_ms, reason, "event quarantined: its GNSS time is ahead of the hub's clock; stored and acked, not acted on");
                return Ok((StoreOutcome::Quarantined(reason), Effects::default()));
            }
            let effects = match reconcile_event(tx, domain, envelope, now) {
                Ok(effects) => effects,
                Err(ApplyError::Store(e)) => return Err(e),
                Err(ApplyError::Reconcile(e)) => {
                    // The event is valid and stays stored (and acked); its shipment
                    // effects were never written. Logged for operations.
                    tracing::error!(device = %device, seq = envelope.seq, error = %e, "reconciliation failed; event stored without effects");
                    Effects::default()
                }
            };
            (StoreOutcome::Stored, effects)
        }
        EventInsert::Duplicate => {
            tracing::debug!(device = %device, seq = envelope.seq, "duplicate event; acked again");
            (StoreOutcome::Duplicate, Effects::default())
        }
        EventInsert::SeqConflict if matches!(envelope.event, Event::Gap(_)) => {
            tracing::debug!(device = %device, seq = envelope.seq, "gap notice on a seq already stored; applied");
            (StoreOutcome::GapOverStoredSeq, Effects::default())
        }
        EventInsert::SeqConflict | EventInsert::EventIdReused => {
            let reason = if outcome == EventInsert::SeqConflict { "seq_conflict" } else { "event_id_reused" };
            tracing::error!(device = %device, seq = envelope.seq, event_id, reason, "event rejected: conflicts with a stored event");
            (StoreOutcome::Conflict(reason), Effects::default())
        }
    })
}

/// Runs reconciliation for every parcel the event names. Every shipment's stored
/// state is read and parsed before anything is written, so an unreadable one fails
/// the event's effects as a whole (the event itself stays stored) without a savepoint
/// per event. Gap notices and position samples name no parcel and touch nothing.
fn reconcile_event(
    tx: &StoreTx<'_>,
    domain: &Domain,
    envelope: &Envelope,
    now: i64,
) -> Result<Effects, ApplyError> {
    let mut effects = Effects::default();
    if matches!(
        envelope.event,
        Event::Position(_) | Event::Trail(_) | Event::ScanNotOnRoute(_) | Event::Gap(_)
    ) {
        return Ok(effects);
    }
    let mut seen: BTreeSet<TrackingNumber> = BTreeSet::new();
    let mut targets = Vec::new();
    for signal in device_signals(tx, envelope, &domain.rules, now)? {
        if !seen.insert(signal.tracking_number.clone()) {
            continue;
        }
        let Some(shipment) = tx.shipment_by_tracking(&signal.tracking_number)? else {
            tracing::debug!(tracking = %signal.tracking_number, "signal for a parcel without a shipment");
            continue;
        };
        let state = shipment_state(&shipment)?;
        targets.push((shipment, state, signal));
    }
    for (shipment, state, signal) in targets {
        effects.merge(apply_to_state(tx, domain, &shipment, &state, &Input::Device(signal), now)?);
    }
    Ok(effects)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{CanonicalStatus, Carrier, CarrierEvent};
    use crate::store::{Contact, ContactChannel, NewShipment, Store};

    const T0: i64 = 1_786_082_400_000;

    fn carrier(at_ms: i64, expected: &str) -> Input {
        Input::Carrier(CarrierEvent {
            carrier: Carrier::EasyPost,
            event_key: format!("ev-{at_ms}"),
            tracking_number: TrackingNumber::new("1Z999AA10123456784").expect("tracking"),
            status: CanonicalStatus::InTransit,
            raw_status: "in_transit".into(),
            occurred_ms: at_ms,
            expected_delivery: Some(expected.into()),
            message: None,
            received_ms: None,
        })
    }

    #[test]
    fn a_delay_is_enqueued_once_per_new_date_to_consented_contacts_on_the_current_milestones_channels() {
        let mut store = Store::open_in_memory().expect("open");
        let domain = Domain {
            rules: Rules::default(),
            channel_map: ChannelMap::from_entries([(
                Milestone::Dispatched,
                vec![ContactChannel::Sms, ContactChannel::Whatsapp],
            )]),
            max_event_ahead_ms: super::super::DEFAULT_MAX_EVENT_AHEAD_MS,
            metrics: Arc::new(Metrics::default()),
            sinks: Default::default(),
        };
        let contact = |recipient: &str, consent| Contact { recipient: recipient.into(), consent };
        let contacts = BTreeMap::from([
            (ContactChannel::Sms, contact("+15555550100", true)),
            (ContactChannel::Whatsapp, contact("+15555550100", false)),
            (ContactChannel::Email, contact("ada@example.com", true)),
        ]);
        let tx = store.transaction().expect("tx");
        let new = NewShipment {
            tracking_number: TrackingNumber::new("1Z999AA10123456784").expect("tracking"),
            carrier: None,
            order_id: None,
            contacts,
            locale: "en".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, T0).expect("insert");
        let feed = |input: Input, now: i64| {
            let shipment = tx.shipment(id).expect("read").expect("shipment");
            apply_to_shipment(&tx, &domain, &shipment, &input, now).expect("apply").enqueued
        };
        let dispatched = Input::Dispatched { at_ms: T0, on_route: false };
        assert_eq!(feed(dispatched, T0), vec![("sms".to_owned(), "dispatched".to_owned())]);
        assert_eq!(feed(carrier(T0 + 1, "2026-08-08"), T0 + 1), vec![], "the first date is the baseline");
        let delayed = vec![("sms".to_owned(), "delayed".to_owned())];
        assert_eq!(feed(carrier(T0 + 2, "2026-08-10"), T0 + 2), delayed, "sms only: whatsapp lacks consent");
        assert_eq!(feed(carrier(T0 + 3, "2026-08-10"), T0 + 3), vec![]);
        assert_eq!(feed(carrier(T0 + 4, "2026-08-12"), T0 + 4), delayed);
        tx.commit().expect("commit");
        let rows = store.outbox_for_shipment(id).expect("outbox");
        let keys: Vec<String> = rows.iter().map(|r| r.milestone.to_string()).collect();
        assert_eq!(keys, ["dispatched", "delayed:2026-08-10", "delayed:2026-08-12"]);
        let detail = rows[1].detail.as_deref().and_then(DelayDetail::from_json).expect("detail");
        assert_eq!(
            detail,
            DelayDetail { expected: "2026-08-10".into(), previous: Some("2026-08-08".into()) }
        );
        let state = shipment_state(&store.shipment(id).expect("read").expect("shipment")).expect("state");
        assert_eq!(state.milestone, Milestone::Dispatched, "a delay moves no milestone");
    }
}
