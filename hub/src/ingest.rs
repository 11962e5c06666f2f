//! Device ingest: MQTT in, verified events stored and reconciled, signed acks out.
//!
//! ```text
//! broker ─► mqtt task ─(ordinal)─► verifier threads ─► writer thread ─► outbound task ─► broker
//!           owns the EventLoop      Envelope::open       reorder, one     acks, PUBACKs,
//!           persistent session      topic/device checks  SQLite tx/batch  blob acks, routes
//! ```
//!
//! * The **mqtt task** owns rumqttc's event loop (nothing else polls it), with a fixed
//!   client id, `clean_session = false` and manual PUBACKs: the broker keeps the hub's
//!   session and everything not yet PUBACKed while the hub restarts, and a message is
//!   PUBACKed only after the transaction holding it has committed. It numbers each message
//!   in delivery order as it hands it to the verifiers.
//! * **Verifier threads** (one per CPU by default; Ed25519 verification dominates the
//!   cost) take the next message from one shared queue and check it: topic shape, size,
//!   version, key, signature, body, topic device = envelope device = key owner, fleet.
//! * The **writer thread** owns the read-write SQLite connection. It puts checked messages
//!   back in delivery order ([`Reorder`]), so each device's events stay in sequence and
//!   PUBACKs leave in the order the broker sent the messages. It takes as many messages
//!   as are waiting (up to `batch_max`) and, in ONE transaction, re-checks each device's
//!   key against the registry, dedupes on (device, seq) and event id, stores the raw
//!   envelope, applies gap notices, maps the event to per-parcel [`DeviceSignal`]s, runs
//!   [`crate::reconcile::apply`] for every affected shipment and enqueues its
//!   notifications and alerts. Only after the commit does it hand the outbound task one
//!   cumulative signed ack per device touched (the highest contiguous seq stored, moved
//!   past seqs a gap notice covers) and the batch's PUBACKs (invariant 3), and wake the
//!   notification dispatcher. HTTP handlers run their writes on the same thread through
//!   [`Writer::call`], so SQLite has one writer.
//! * Besides events and photo chunks, the hub keeps what each van last said on its
//!   retained `state` topic (online with agent version and outbox depth, or offline from
//!   its last will) and its newest signed live position from `pos`, for
//!   `doorstep-hub device list` and `/metrics`. Neither is an event: no seq, no ack.
//! * **Routes** live on the broker only as retained messages, and a broker that crashes
//!   (or a fresh one) loses them. The hub has them in its database, so the writer
//!   publishes a device's current route again, the same signed message, whenever it
//!   cannot be sure the broker still holds it: when the device says it is online (its
//!   `state` message), and for every device when the hub's own session comes up without
//!   a stored session (`session_present = false`: a fresh broker). Every route publish,
//!   posted or repeated, leaves through the writer's one outbound queue, so a repeat of
//!   an older route can never overtake a newly posted one.
//!
//! Every rejection has a reason (`EnvelopeError::reason()`, `topic_mismatch`,
//! `unknown_device`, `seq_conflict`, ...), a counter (`doorstep_hub_ingest_total`), a
//! persistent count (`rejections` table) and a log line; nothing rejected is stored, and
//! a rejected event is never covered by an ack. A signed, valid event the hub will not
//! act on because of what it says (its GNSS time too far ahead of the hub's clock) is
//! *quarantined* instead: stored and acked, never reconciled, counted with its reason
//! (see [`store_verified`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use doorstep_proto::blob::BlobChunk;
use doorstep_proto::state::DeviceState;
use doorstep_proto::topic::{all_devices, shared};
use doorstep_proto::{
    Ack, BlobAck, Channel, DeviceId, Envelope, EnvelopeError, Event, FixEvidence, FleetId, HubMessage, KeyId,
    RouteAssignment, SigningKey, Topic, TrackingNumber,
};
use rumqttc::{AsyncClient, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::blobs::{self, ChunkOutcome};
use crate::config::{ChannelMap, MqttSettings};
use crate::metrics::Metrics;
use crate::model::{Action, DeviceSignal, DeviceSignalKind, Milestone};
use crate::reconcile::{self, Input, Rules, ScanEvidence, ShipmentState};
use crate::registry::Keys;
use crate::store::{
    EventInsert, NewEvent, NewGap, NewNotification, Shipment, Store, StoreError, StoreOptions, StoreTx,
};

/// Messages waiting for the verifier threads (one queue they all take from).
pub const VERIFY_QUEUE: usize = 2048;
/// Verified messages waiting for the writer, at most (they travel in handfuls of up to
/// [`VERIFY_TAKE`], so the channel holds `WRITE_QUEUE / VERIFY_TAKE` items).
pub const WRITE_QUEUE: usize = 8192;
/// Messages a verifier takes from the queue at once, at most.
pub const VERIFY_TAKE: usize = 32;
/// Acks, PUBACKs and blob acks waiting for the outbound task.
pub const OUTBOUND_QUEUE: usize = 8192;
/// rumqttc's request channel (publishes, PUBACKs, subscriptions).
pub const MQTT_REQUEST_QUEUE: usize = 16_384;
/// How often the verifiers' key snapshot is reloaded from the registry.
pub const KEYRING_REFRESH: Duration = Duration::from_secs(2);
/// Shortest interval between two reloads triggered by an unknown key id.
pub const KEYRING_MISS_RELOAD: Duration = Duration::from_millis(500);
/// Shortest time between two acks to one device. A busy writer commits many small
/// batches; one signed ack per device per batch cost more CPU (signing, and the broker
/// carrying each ack) than the events themselves once batches were a few hundred events
/// over a hundred vans. The ack is cumulative, so the next one covers everything
/// committed meanwhile; a van waits at most this long longer for it (its resend timeout
/// is a minute).
pub const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// How long a busy writer waits for its batch to fill before committing. Under load the
/// writer keeps up with small batches, and each small commit rewrites the same hot index
/// pages into the WAL and signs acks for the same vans again; waiting this long for more
/// events costs less CPU than it saves. Never applied to a lone event (see
/// [`LINGER_FROM`]), so a quiet hub commits, acks and notifies at once.
pub const BATCH_LINGER: Duration = Duration::from_millis(10);
/// Events already taken before the writer lingers for more: the sign of a busy hub.
pub const LINGER_FROM: usize = 64;
/// How often the writer looks for due reconciler wake-ups (hold periods ending).
pub const WAKE_TICK: Duration = Duration::from_secs(1);
/// Wake-ups handled per tick at most.
pub const WAKE_BATCH: usize = 256;
/// Largest MQTT packet the hub reads. Envelopes and chunks are far smaller and are
/// refused with a counted reason by the verifiers; a packet above this makes rumqttc drop
/// the connection, and the broker would redeliver it to the persistent session forever,
/// so the broker must cap messages below it (Mosquitto: `message_size_limit 1048576`).
pub const MAX_PACKET: usize = 1024 * 1024 + 4096;
/// Longest pause between reconnect attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Publishes read from the broker but not yet taken by a verifier, at most. Above it,
/// messages are shed (not acknowledged; devices resend when their ack stalls). Keep the
/// broker's in-flight window for the hub (Mosquitto: `max_inflight_messages`) below it.
/// Mosquitto 2.0.11 (Debian 12) does not hold that window once PUBACKs flow: each PUBACK
/// of the oldest message lets up to a whole window more out of its queue (measured: a
/// subscriber acking in batches held 15,000 messages under a window of 2,000). A burst
/// from a fleet then lands here rather than in the broker's queue, so this bound is set
/// by memory ([`MAX_PENDING_BYTES`]) more than by count.
pub const MAX_PENDING: usize = 262_144;
/// Payload bytes pending at most (photo chunks are up to 16 KiB each).
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// How long a graceful shutdown waits for the pipeline to drain and acks to go out.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on how far a device event's GNSS time may be ahead of the hub's clock:
/// 10 minutes. A van stamps an event with the fix that decided it, and a valid fix's
/// GNSS time is within a second of true time, so a genuine event is never ahead of true
/// time. What puts one ahead is the hub's own clock running behind (a host whose NTP
/// lapsed: seconds to minutes) or a receiver with a wrong date (week-rollover and
/// date-change bugs put it days to years off). Ten minutes absorbs the first with room,
/// and refuses the second; within it, holds start at arrival, so a few minutes ahead cost
/// the customer nothing.
pub const DEFAULT_MAX_EVENT_AHEAD_MS: i64 = 10 * 60 * 1000;
/// The quarantine reason of an event dated beyond [`Domain::max_event_ahead_ms`].
pub const TIME_IN_FUTURE: &str = "time_in_future";

/// Current wall time, ms since the Unix epoch (the shell's clock; reconciliation gets it
/// as an input).
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

// ---- reconciliation -----------------------------------------------------------------------

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
    /// the event is quarantined ([`DEFAULT_MAX_EVENT_AHEAD_MS`]).
    pub max_event_ahead_ms: i64,
    /// Counters.
    pub metrics: Arc<Metrics>,
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
    }
    for action in actions {
        match action {
            Action::NotifyCustomer { milestone, detail } => {
                let name = crate::store::milestone_name(milestone);
                for (channel, contact) in &shipment.contacts {
                    if !contact.consent || !domain.channel_map.allows(milestone, *channel) {
                        continue;
                    }
                    let new = NewNotification {
                        shipment_id: shipment.id,
                        milestone: name,
                        channel: channel.as_str(),
                        recipient: &contact.recipient,
                        detail: detail.as_deref(),
                        now_ms: now,
                    };
                    if tx.enqueue_notification(&new)? {
                        effects.enqueued.push((channel.as_str().to_owned(), name.to_owned()));
                    }
                }
            }
            Action::AlertOperations { code, detail } => {
                if tx.raise_alert(shipment.id, &code, &detail, now)? {
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
        Event::Position(_) | Event::ScanNotOnRoute(_) | Event::Gap(_) => {}
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
    let device = &envelope.device;
    let event_id = envelope.event_id.to_hex();
    let ahead_ms = envelope.gnss_utc_ms.saturating_sub(now);
    let quarantine = (ahead_ms > domain.max_event_ahead_ms).then_some(TIME_IN_FUTURE);
    let new = NewEvent {
        device,
        seq: envelope.seq,
        event_id: &event_id,
        gnss_ms: envelope.gnss_utc_ms,
        kind: envelope.event.kind(),
        envelope: signed,
        received_ms: now,
        quarantine,
    };
    let outcome = tx.insert_event(&new)?;
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
            event_id: &event_id,
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
    if matches!(envelope.event, Event::Position(_) | Event::ScanNotOnRoute(_) | Event::Gap(_)) {
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

// ---- pipeline items ----------------------------------------------------------------------

/// A message the broker delivered; PUBACKed once its fate is committed.
type Delivery = Publish;

/// A verified event on its way to the writer.
#[derive(Debug)]
struct VerifiedEvent {
    topic: Topic,
    key_id: KeyId,
    envelope: Envelope,
    delivery: Delivery,
}

/// A message from the broker, checked by a verifier.
#[derive(Debug)]
enum Ingested {
    Event(Box<VerifiedEvent>),
    Chunk {
        topic: Topic,
        chunk: Box<BlobChunk>,
        delivery: Delivery,
    },
    /// A signed live position (the `pos` topic: newest only, QoS 0, retained).
    Position {
        topic: Topic,
        fix: FixEvidence,
        delivery: Delivery,
    },
    /// A device's retained online/offline state (its last will when offline).
    State {
        topic: Topic,
        state: DeviceState,
        delivery: Delivery,
    },
    Rejected {
        source: &'static str,
        reason: &'static str,
        delivery: Delivery,
    },
}

/// What flows into the writer.
enum WriteItem {
    /// Checked messages, each with its place in the order the broker delivered messages
    /// (see [`Reorder`]).
    Checked(Vec<(u64, Ingested)>),
    Call(Box<dyn FnOnce(&mut WriterCtx<'_>) + Send>),
}

/// What flows out to the broker.
#[derive(Debug)]
enum Outbound {
    /// A signed ack or blob ack.
    Publish { topic: String, payload: Vec<u8>, retain: bool },
    /// A signed route, retained.
    Route { topic: String, payload: Vec<u8> },
    /// The PUBACKs of one committed batch, in delivery order.
    PubAcks(Vec<Delivery>),
}

/// Puts checked messages back into the order the broker delivered them.
///
/// Any verifier takes the next message, so verifiers never sit idle while another has a
/// backlog, and they finish out of order. The writer restores the order, which keeps each
/// device's events in sequence and makes the PUBACKs leave in delivery order: Mosquitto
/// finds a PUBACKed message by walking the session's in-flight list from its oldest
/// entry, so PUBACKs that skip ahead of a lagging verifier cost the broker a walk over
/// up to its whole in-flight window each (most of its CPU, measured).
///
/// Every ordinal the MQTT task hands out reaches the writer (a verifier always answers,
/// even when a check panics), so a hole is filled within one verifier's handful (up to
/// [`VERIFY_TAKE`] signature checks). What waits here is at most what the other
/// verifiers checked meanwhile.
#[derive(Debug, Default)]
struct Reorder {
    next: u64,
    waiting: BTreeMap<u64, Ingested>,
}

impl Reorder {
    /// Takes one checked message; appends it, and whatever waited for it, to `out`.
    fn push(&mut self, ordinal: u64, item: Ingested, out: &mut Vec<Ingested>) {
        if ordinal > self.next {
            self.waiting.insert(ordinal, item);
            return;
        }
        out.push(item);
        if ordinal == self.next {
            self.next += 1;
            while let Some(item) = self.waiting.remove(&self.next) {
                out.push(item);
                self.next += 1;
            }
        }
    }

    /// Everything still waiting, in order (shutdown: nothing more will come).
    fn drain(&mut self) -> Vec<Ingested> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }
}

/// What a [`Writer::call`] closure gets: the store, the domain, and the route lane.
pub struct WriterCtx<'a> {
    /// The read-write store.
    pub store: &'a mut Store,
    /// Reconciler, channel map, metrics.
    pub domain: &'a Domain,
    routes: RouteLane<'a>,
}

impl WriterCtx<'_> {
    /// Signs a route message and queues it, retained, on the writer's outbound queue
    /// (after whatever the writer queued before). `reason` labels the counter
    /// (`posted`, ...). Call it after the transaction that stored the route committed.
    pub fn publish_route(
        &self,
        fleet: &FleetId,
        message: &HubMessage,
        reason: &'static str,
    ) -> Result<(), PublishError> {
        self.routes.publish(fleet, message, reason)
    }
}

/// Where route publishes go: sealed with the hub key onto the one outbound queue, so
/// posted routes and repeats leave in the order the writer decided them.
#[derive(Clone, Copy)]
struct RouteLane<'a> {
    hub_key: &'a SigningKey,
    out: &'a mpsc::Sender<Outbound>,
    metrics: &'a Metrics,
}

impl RouteLane<'_> {
    fn publish(
        &self,
        fleet: &FleetId,
        message: &HubMessage,
        reason: &'static str,
    ) -> Result<(), PublishError> {
        let topic = Topic::new(fleet.clone(), message.device().clone(), Channel::Route).to_string();
        let payload = message.seal(self.hub_key).map_err(PublishError::Seal)?;
        self.out
            .blocking_send(Outbound::Route { topic, payload })
            .map_err(|_| PublishError::Mqtt("the outbound task has stopped".to_owned()))?;
        self.metrics.route_published(reason);
        Ok(())
    }
}

impl std::fmt::Debug for WriterCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterCtx").finish_non_exhaustive()
    }
}

/// Why a call to the writer failed.
#[derive(Debug, thiserror::Error)]
#[error("the hub's writer thread has stopped")]
pub struct WriterGone;

/// A handle to the writer thread, for the HTTP API.
#[derive(Clone)]
pub struct Writer {
    tx: std_mpsc::SyncSender<WriteItem>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Runs `f` on the writer thread (between ingest batches) and returns its result.
    /// The closure does blocking SQLite work; the caller's task only awaits.
    pub async fn call<T, F>(&self, f: F) -> Result<T, WriterGone>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriterCtx<'_>) -> T + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let item = WriteItem::Call(Box::new(move |ctx: &mut WriterCtx<'_>| {
            let _ = reply.send(f(ctx));
        }));
        let sender = self.tx.clone();
        // The queue is bounded: wait for room on a blocking thread, not an async worker.
        tokio::task::spawn_blocking(move || sender.send(item).map_err(|_| WriterGone))
            .await
            .map_err(|_| WriterGone)??;
        rx.await.map_err(|_| WriterGone)
    }
}

// ---- start-up ---------------------------------------------------------------------------

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A thread could not be spawned.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
}

/// How ingest runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The SQLite file.
    pub database: PathBuf,
    /// Store options.
    pub store: StoreOptions,
    /// Broker.
    pub mqtt: MqttSettings,
    /// Verifier threads (at least 1).
    pub verify_threads: usize,
    /// Events per transaction, at most.
    pub batch_max: usize,
}

/// The running ingest pipeline.
#[derive(Debug)]
pub struct Ingest {
    writer: Writer,
    client: AsyncClient,
    keys: Keys,
    metrics: Arc<Metrics>,
    dispatcher: DispatcherWaker,
    cancel: CancellationToken,
    mqtt_task: tokio::task::JoinHandle<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Ingest {
    /// Opens the store, starts the writer, the verifiers, the outbound task and the MQTT
    /// session. Must be called inside a tokio runtime.
    pub fn start(
        options: &IngestOptions,
        hub_key: Arc<SigningKey>,
        domain: Domain,
    ) -> Result<Self, IngestError> {
        let store = Store::open(&options.database, options.store)?;
        let keys = Keys::default();
        keys.reload(&store)?;
        let metrics = Arc::clone(&domain.metrics);
        metrics.declare_alerts(reconcile::alert_codes());
        let cancel = CancellationToken::new();

        let mut mqtt =
            MqttOptions::new(options.mqtt.client_id.clone(), options.mqtt.host.clone(), options.mqtt.port);
        mqtt.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(options.mqtt.keepalive)
            .set_inflight(options.mqtt.inflight)
            .set_request_channel_capacity(MQTT_REQUEST_QUEUE)
            .set_max_packet_size(MAX_PACKET, doorstep_proto::hub::MAX_HUB_LEN + 4096);
        if let Some(tls) = &options.mqtt.tls {
            mqtt.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::clone(
                tls,
            ))));
        }
        let (client, eventloop) = AsyncClient::new(mqtt, MQTT_REQUEST_QUEUE);

        let (out_tx, out_rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
        let (write_tx, write_rx) = std_mpsc::sync_channel::<WriteItem>(WRITE_QUEUE / VERIFY_TAKE);
        let live_verifiers = Arc::new(AtomicUsize::new(options.verify_threads.max(1)));
        let mut threads = Vec::new();

        let dispatcher = DispatcherWaker::default();
        let republish_all = Arc::new(AtomicBool::new(false));
        let writer_state = WriterThread {
            store,
            domain,
            hub_key,
            out: out_tx,
            batch_max: options.batch_max.max(1),
            live_verifiers: Arc::clone(&live_verifiers),
            dispatcher: dispatcher.clone(),
            acks: AckPacer::default(),
            republish_all: Arc::clone(&republish_all),
            cancel: cancel.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("hub-writer".into())
                .spawn(move || writer_state.run(write_rx))
                .map_err(IngestError::Thread)?,
        );

        // One queue that every verifier takes from; the writer restores the order.
        let (verify_tx, verify_rx) = mpsc::channel::<(u64, Publish)>(VERIFY_QUEUE);
        let verify_rx = Arc::new(std::sync::Mutex::new(verify_rx));
        let verifiers = options.verify_threads.max(1);
        for i in 0..verifiers {
            let rx = Arc::clone(&verify_rx);
            let verifier = Verifier {
                keys: keys.clone(),
                reload_store: Store::open(&options.database, options.store)?,
                last_reload: Instant::now(),
                write: write_tx.clone(),
                metrics: Arc::clone(&metrics),
                live: Arc::clone(&live_verifiers),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hub-verify-{i}"))
                    .spawn(move || verifier.run(rx, verifiers))
                    .map_err(IngestError::Thread)?,
            );
        }
        let writer = Writer { tx: write_tx };

        let channels = [Channel::Evt, Channel::Blob, Channel::Pos, Channel::State];
        let filters = match &options.mqtt.shared_group {
            Some(group) => channels.iter().map(|c| shared(group, *c)).collect(),
            None => channels.iter().map(|c| all_devices(*c)).collect(),
        };
        let outbound_done = CancellationToken::new();
        tokio::spawn(outbound(client.clone(), out_rx, Arc::clone(&metrics), outbound_done.clone()));
        let mqtt_task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            verify_tx,
            filters,
            Arc::clone(&metrics),
            republish_all,
            cancel.clone(),
            outbound_done,
        ));
        let refresher = {
            let keys = keys.clone();
            let cancel = cancel.clone();
            let store = Store::open(&options.database, options.store)?;
            std::thread::Builder::new()
                .name("hub-keyring".into())
                .spawn(move || {
                    let mut last = Instant::now();
                    while !cancel.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(100));
                        if last.elapsed() >= KEYRING_REFRESH {
                            last = Instant::now();
                            if let Err(e) = keys.reload(&store) {
                                tracing::error!(error = %e, "cannot reload the device registry");
                            }
                        }
                    }
                })
                .map_err(IngestError::Thread)?
        };
        threads.push(refresher);
        Ok(Self { writer, client, keys, metrics, dispatcher, cancel, mqtt_task, threads })
    }

    /// Wakes the notification dispatcher (`notify::Dispatcher::waker`) after every write
    /// that may have enqueued a customer message or an alert, so it leaves within one
    /// dispatcher pass of the commit instead of up to a poll interval later.
    pub fn wake_dispatcher_with(&self, waker: Arc<tokio::sync::Notify>) {
        let _ = self.dispatcher.0.set(waker);
    }

    /// The writer, for the HTTP API.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// The MQTT client.
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// The verifiers' key snapshot.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops taking messages, commits and acks what was taken, disconnects, and joins
    /// every thread. Messages not yet taken stay with the broker (not PUBACKed) for the
    /// next session.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.mqtt_task.await;
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Why a hub message could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message could not be signed (a route over the size limit).
    #[error("cannot seal hub message: {0}")]
    Seal(EnvelopeError),
    /// The MQTT client is gone.
    #[error("cannot queue the publish: {0}")]
    Mqtt(String),
}

/// Builds the signed route message for a device.
pub fn route_message(device: &DeviceId, route: doorstep_proto::RouteManifest, issued_ms: i64) -> HubMessage {
    HubMessage::Route(RouteAssignment { device: device.clone(), issued_ms, route })
}

// ---- the mqtt task ----------------------------------------------------------------------

#[allow(clippy::too_many_arguments)] // the task's wiring, each a different thing it owns or shares.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    verify: mpsc::Sender<(u64, Publish)>,
    filters: Vec<String>,
    metrics: Arc<Metrics>,
    republish_all: Arc<AtomicBool>,
    cancel: CancellationToken,
    outbound_done: CancellationToken,
) {
    let mut delay = Duration::from_millis(250);
    let mut verify = Some(verify);
    // The place of each message handed to the verifiers in the broker's delivery order.
    // Given out only when a verifier queue takes the message, so the writer never waits
    // for an ordinal that was shed or dropped with a lost connection.
    let mut ordinal = 0u64;
    // Publishes read from the socket but not yet taken by a verifier. The event loop must
    // keep being polled while the pipeline is full, because the acks and PUBACKs that
    // drain it leave through this same event loop; the broker's in-flight window
    // (un-PUBACKed QoS 1 messages) is what bounds this queue in practice.
    let mut pending: VecDeque<Publish> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut reported_pending = usize::MAX;
    // Topic filters the broker granted in this session.
    let mut granted = 0usize;
    loop {
        let mut stop_feeding = false;
        let reserve = async {
            match (pending.is_empty(), verify.as_ref()) {
                (false, Some(tx)) => Some(tx.reserve().await),
                _ => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            biased;
            () = cancel.cancelled(), if verify.is_some() => {
                stop_feeding = true;
                None
            }
            () = outbound_done.cancelled() => break,
            permit = reserve => {
                match permit {
                    Some(Ok(permit)) => {
                        if let Some(publish) = pending.pop_front() {
                            pending_bytes = pending_bytes.saturating_sub(publish.payload.len());
                            permit.send((ordinal, publish));
                            ordinal += 1;
                        }
                    }
                    _ => {
                        tracing::error!("verifier threads gone; stopping ingest");
                        stop_feeding = true;
                    }
                }
                None
            }
            event = eventloop.poll() => Some(event),
        };
        if stop_feeding {
            // Stop feeding the pipeline; keep polling so the last acks go out. What is
            // still pending was never PUBACKed: the broker keeps it for the next session.
            verify = None;
            pending.clear();
            pending_bytes = 0;
            continue;
        }
        if let Some(event) = event {
            match event {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    delay = Duration::from_millis(250);
                    metrics.mqtt_connected(true);
                    granted = 0;
                    metrics.mqtt_subscriptions(granted);
                    tracing::info!(session_present = ack.session_present, "connected to the broker");
                    if !ack.session_present {
                        // A broker without this hub's session is a fresh one (or lost its
                        // state): its retained routes are gone too. The writer publishes
                        // every device's current route again.
                        republish_all.store(true, Ordering::SeqCst);
                    }
                    for filter in &filters {
                        if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            tracing::error!(filter, error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                    // A refused filter (a broker ACL) means vans this hub never hears.
                    // A grant at QoS 0 would let the broker drop events while the hub is
                    // away: not counted as heard.
                    for code in &ack.return_codes {
                        match code {
                            rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce) => {
                                tracing::error!(
                                    "the broker granted a subscription at QoS 0 only; events may be lost"
                                );
                            }
                            rumqttc::SubscribeReasonCode::Success(_) => granted += 1,
                            rumqttc::SubscribeReasonCode::Failure => {
                                tracing::error!(
                                    "the broker refused one of the hub's subscriptions; check its ACL"
                                );
                            }
                        }
                    }
                    metrics.mqtt_subscriptions(granted);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                    let Some(tx) = &verify else { continue };
                    if pending.len() >= MAX_PENDING || pending_bytes >= MAX_PENDING_BYTES {
                        // Shed: not PUBACKed, not acked; the device resends it when its ack
                        // stalls. Only a broker with an in-flight window above MAX_PENDING
                        // (or a QoS 0 flood) gets here.
                        metrics.ingest("rejected", "overload");
                        tracing::warn!(topic = %publish.topic, pending = pending.len(), "ingest overloaded; message shed");
                        continue;
                    }
                    if !pending.is_empty() {
                        // Keep the delivery order: nothing overtakes what already waits.
                        pending_bytes += publish.payload.len();
                        pending.push_back(publish);
                    } else {
                        match tx.try_send((ordinal, publish)) {
                            Ok(()) => ordinal += 1,
                            Err(mpsc::error::TrySendError::Full((_, publish))) => {
                                pending_bytes += publish.payload.len();
                                pending.push_back(publish);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                tracing::error!("verifier threads gone; stopping ingest");
                                verify = None;
                                pending.clear();
                                pending_bytes = 0;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.mqtt_connected(false);
                    granted = 0;
                    metrics.mqtt_subscriptions(granted);
                    if verify.is_none() {
                        break;
                    }
                    // Messages pending from the lost connection were not PUBACKed; the broker
                    // redelivers them on the resumed session.
                    pending.clear();
                    pending_bytes = 0;
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "broker connection lost; reconnecting");
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        }
        // The gauge only when it changes: this loop runs once per message.
        if pending.len() != reported_pending {
            reported_pending = pending.len();
            metrics.queue_depth("mqtt_pending", reported_pending);
        }
    }
    // Drain: let the verifiers and the writer finish and the acks go out, then say goodbye.
    drop(verify);
    let _ = client.try_disconnect();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    metrics.mqtt_connected(false);
}

async fn outbound(
    client: AsyncClient,
    mut rx: mpsc::Receiver<Outbound>,
    metrics: Arc<Metrics>,
    done: CancellationToken,
) {
    while let Some(item) = rx.recv().await {
        let result = match item {
            Outbound::Publish { topic, payload, retain } => {
                let r = client.publish(topic, QoS::AtLeastOnce, retain, payload).await;
                if r.is_ok() {
                    metrics.ack_published();
                }
                r
            }
            Outbound::Route { topic, payload } => {
                client.publish(topic, QoS::AtLeastOnce, true, payload).await
            }
            Outbound::PubAcks(deliveries) => {
                let mut result = Ok(());
                for publish in &deliveries {
                    result = client.ack(publish).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "mqtt client closed; outbound messages dropped (devices will resend)");
            break;
        }
    }
    done.cancel();
}

// ---- verifiers --------------------------------------------------------------------------

struct Verifier {
    keys: Keys,
    reload_store: Store,
    last_reload: Instant,
    write: std_mpsc::SyncSender<WriteItem>,
    metrics: Arc<Metrics>,
    live: Arc<AtomicUsize>,
}

/// Verifier time is added to the busy counter at most this often per thread (the counter
/// is shared with the writer; once per message would make it a point of contention).
const VERIFY_BUSY_FLUSH: Duration = Duration::from_millis(100);

impl Verifier {
    fn run(mut self, rx: Arc<std::sync::Mutex<mpsc::Receiver<(u64, Publish)>>>, verifiers: usize) {
        let mut busy = Duration::ZERO;
        let mut flushed = Instant::now();
        let mut taken: Vec<(u64, Publish)> = Vec::with_capacity(VERIFY_TAKE);
        loop {
            // Whoever holds the lock waits for the next message; the others wait for the
            // lock. The writer puts their results back in delivery order.
            {
                let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                if rx.is_empty() && !busy.is_zero() {
                    self.metrics.busy("verify", std::mem::take(&mut busy));
                    flushed = Instant::now();
                }
                let Some(first) = rx.blocking_recv() else { break };
                taken.push(first);
                // Under load, take this verifier's share of the backlog at once: one
                // wake-up and one hand-over to the writer per handful instead of per
                // message. A quiet hub's queue holds one message, taken alone.
                let share = (rx.len() / verifiers).min(VERIFY_TAKE - 1);
                for _ in 0..share {
                    match rx.try_recv() {
                        Ok(next) => taken.push(next),
                        Err(_) => break,
                    }
                }
            }
            let started = Instant::now();
            let checked: Vec<(u64, Ingested)> = taken
                .drain(..)
                .map(|(ordinal, publish)| {
                    // The writer waits for every ordinal, so even a bug in a check must
                    // answer: the message is rejected with a reason instead of stalling
                    // all ingest.
                    let copy = publish.clone();
                    let item = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.check(publish)
                    })) {
                        Ok(item) => item,
                        Err(_) => {
                            tracing::error!(topic = %copy.topic, "message check panicked; message rejected");
                            Ingested::Rejected { source: "mqtt", reason: "internal_error", delivery: copy }
                        }
                    };
                    (ordinal, item)
                })
                .collect();
            busy += started.elapsed();
            if flushed.elapsed() >= VERIFY_BUSY_FLUSH {
                self.metrics.busy("verify", std::mem::take(&mut busy));
                flushed = Instant::now();
            }
            if self.write.send(WriteItem::Checked(checked)).is_err() {
                break;
            }
        }
        self.metrics.busy("verify", busy);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn reject(
        &self,
        source: &'static str,
        reason: &'static str,
        delivery: Delivery,
        detail: &str,
    ) -> Ingested {
        tracing::warn!(topic = %delivery.topic, len = delivery.payload.len(), reason, detail, "{source} message rejected");
        Ingested::Rejected { source, reason, delivery }
    }

    fn open(&mut self, payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        match Envelope::open(payload, &self.keys) {
            // A device added a moment ago: reload once and try again.
            Err(EnvelopeError::UnknownKey(_)) if self.last_reload.elapsed() >= KEYRING_MISS_RELOAD => {
                self.last_reload = Instant::now();
                if let Err(e) = self.keys.reload(&self.reload_store) {
                    tracing::error!(error = %e, "cannot reload the device registry");
                }
                Envelope::open(payload, &self.keys)
            }
            other => other,
        }
    }

    fn check(&mut self, publish: Publish) -> Ingested {
        let topic = match Topic::parse(&publish.topic) {
            Ok(t) => t,
            Err(e) => return self.reject("mqtt", "bad_topic", publish, &e.to_string()),
        };
        match topic.channel {
            Channel::Evt => {}
            Channel::Blob => return self.check_chunk(topic, publish),
            Channel::Pos => return self.check_position(topic, publish),
            Channel::State => return self.check_state(topic, publish),
            _ => return self.reject("mqtt", "unexpected_channel", publish, topic.channel.as_str()),
        }
        let envelope = match self.open(&publish.payload) {
            Ok(e) => e,
            Err(EnvelopeError::UnknownKey(id)) => {
                let reason = if self.reload_store.devices().is_ok_and(|d| d.iter().any(|r| r.key_id == id)) {
                    "revoked_device"
                } else {
                    "unknown_device"
                };
                return self.reject("evt", reason, publish, &format!("key {id}"));
            }
            Err(e) => {
                let detail = e.to_string();
                return self.reject("evt", e.reason(), publish, &detail);
            }
        };
        if envelope.device != topic.device {
            let detail = format!("envelope of {} on {}'s topic", envelope.device, topic.device);
            return self.reject("evt", "topic_mismatch", publish, &detail);
        }
        // The store keeps seqs as SQLite integers; a larger one would fail the whole
        // batch's transaction on every redelivery instead of being refused alone.
        let last_seq = match &envelope.event {
            Event::Gap(gap) => gap.last_seq,
            _ => envelope.seq,
        };
        if i64::try_from(last_seq).is_err() {
            let detail = format!("seq {last_seq} is above {}", i64::MAX);
            return self.reject("evt", "seq_out_of_range", publish, &detail);
        }
        // Envelope::open found the key by this id, so the header holds it.
        let mut id = [0u8; 8];
        id.copy_from_slice(&publish.payload[1..doorstep_proto::envelope::HEADER_LEN]);
        let key_id = doorstep_proto::HexBytes(id);
        if self.keys.fleet_of(&key_id).as_ref() != Some(&topic.fleet) {
            let detail = format!("device {} published under fleet {}", envelope.device, topic.fleet);
            return self.reject("evt", "fleet_mismatch", publish, &detail);
        }
        Ingested::Event(Box::new(VerifiedEvent { topic, key_id, envelope, delivery: publish }))
    }

    /// A live position: signed like an event, at seq 0 (outside the numbered stream).
    fn check_position(&mut self, topic: Topic, publish: Publish) -> Ingested {
        let envelope = match self.open(&publish.payload) {
            Ok(e) => e,
            Err(EnvelopeError::UnknownKey(id)) => {
                return self.reject("pos", "unknown_device", publish, &format!("key {id}"));
            }
            Err(e) => {
                let detail = e.to_string();
                return self.reject("pos", e.reason(), publish, &detail);
            }
        };
        if envelope.device != topic.device {
            let detail = format!("position of {} on {}'s topic", envelope.device, topic.device);
            return self.reject("pos", "topic_mismatch", publish, &detail);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&publish.payload[1..doorstep_proto::envelope::HEADER_LEN]);
        if self.keys.fleet_of(&doorstep_proto::HexBytes(id)).as_ref() != Some(&topic.fleet) {
            let detail = format!("device {} published under fleet {}", envelope.device, topic.fleet);
            return self.reject("pos", "fleet_mismatch", publish, &detail);
        }
        match envelope.event {
            Event::Position(fix) if envelope.seq == 0 => Ingested::Position { topic, fix, delivery: publish },
            other => {
                let detail = format!("{} at seq {}", other.kind(), envelope.seq);
                self.reject("pos", "not_a_live_position", publish, &detail)
            }
        }
    }

    /// A retained state message: JSON, unsigned (the offline form is the broker's last
    /// will, which the device cannot sign at the moment it is sent). The writer keeps it
    /// only for a registered device under its own fleet.
    fn check_state(&mut self, topic: Topic, publish: Publish) -> Ingested {
        match DeviceState::from_bytes(&publish.payload) {
            Ok(state) => Ingested::State { topic, state, delivery: publish },
            Err(e) => self.reject("state", "malformed", publish, &e),
        }
    }

    fn check_chunk(&mut self, topic: Topic, publish: Publish) -> Ingested {
        let chunk = match BlobChunk::decode(&publish.payload) {
            Ok(c) => c,
            Err(e) => {
                let reason = blobs::chunk_error_reason(&e);
                return self.reject("blob", reason, publish, &e.to_string());
            }
        };
        if chunk.device != topic.device {
            let detail = format!("chunk of {} on {}'s topic", chunk.device, topic.device);
            return self.reject("blob", "topic_mismatch", publish, &detail);
        }
        if !self.keys.has_device(&chunk.device) {
            return self.reject("blob", "unknown_device", publish, chunk.device.as_str());
        }
        self.metrics.blob_chunk("received", "ok");
        Ingested::Chunk { topic, chunk: Box::new(chunk), delivery: publish }
    }
}

// ---- the writer -------------------------------------------------------------------------

/// The dispatcher's wake-up, once [`Ingest::wake_dispatcher_with`] has given it.
#[derive(Debug, Clone, Default)]
struct DispatcherWaker(Arc<std::sync::OnceLock<Arc<tokio::sync::Notify>>>);

impl DispatcherWaker {
    fn wake(&self) {
        if let Some(waker) = self.0.get() {
            waker.notify_one();
        }
    }
}

/// Acks committed but not yet handed out, and when each device's last ack left.
#[derive(Debug, Default)]
struct AckPacer {
    /// Device → (fleet, highest committed contiguous seq), for the next ack.
    owed: BTreeMap<DeviceId, (FleetId, u64)>,
    /// Device → when its last ack was handed to the outbound task.
    sent: HashMap<DeviceId, Instant>,
}

struct WriterThread {
    store: Store,
    domain: Domain,
    hub_key: Arc<SigningKey>,
    out: mpsc::Sender<Outbound>,
    batch_max: usize,
    live_verifiers: Arc<AtomicUsize>,
    dispatcher: DispatcherWaker,
    acks: AckPacer,
    /// Set by the MQTT task when the broker has no session for the hub (a fresh broker):
    /// every device's current route is published again.
    republish_all: Arc<AtomicBool>,
    cancel: CancellationToken,
}

/// What a committed batch owes the broker, and its counters (added once per batch, not
/// once per message).
#[derive(Default)]
struct AfterCommit {
    acks: BTreeMap<DeviceId, (FleetId, u64)>,
    blob_acks: Vec<(FleetId, BlobAck)>,
    pubacks: Vec<Delivery>,
    effects: Effects,
    /// (outcome, reason) → messages.
    counted: BTreeMap<(&'static str, &'static str), i64>,
    blob_counted: Vec<(&'static str, &'static str)>,
    /// (channel, outcome, reason) of state and live position messages.
    status_counted: Vec<(&'static str, &'static str, &'static str)>,
    photos: Vec<&'static str>,
    events: usize,
    lag: Option<(i64, i64)>,
    /// Devices whose state message said online: their current route is published again.
    came_online: Vec<DeviceId>,
}

impl AfterCommit {
    fn count(&mut self, outcome: &'static str, reason: &'static str) {
        *self.counted.entry((outcome, reason)).or_insert(0) += 1;
    }
}

/// Registry answers already read in this batch: key id → (device, its fleet while the
/// key is the device's active one).
type Registered = HashMap<KeyId, (DeviceId, Option<FleetId>)>;

impl WriterThread {
    fn run(mut self, rx: std_mpsc::Receiver<WriteItem>) {
        let mut last_wake = Instant::now();
        let mut reorder = Reorder::default();
        loop {
            let wait =
                WAKE_TICK.min(Duration::from_millis(200)).min(self.ack_wait().unwrap_or(Duration::MAX));
            let first = match rx.recv_timeout(wait) {
                Ok(item) => Some(item),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut call = None;
            let mut next = first;
            let mut linger_until: Option<Instant> = None;
            // Take everything waiting, up to a batch: one transaction (one fsync) for all.
            while let Some(item) = next.take() {
                match item {
                    WriteItem::Call(f) => {
                        call = Some(f);
                        break;
                    }
                    WriteItem::Checked(items) => {
                        for (ordinal, item) in items {
                            reorder.push(ordinal, item, &mut batch);
                        }
                    }
                }
                if batch.len() >= self.batch_max {
                    break;
                }
                next = rx.try_recv().ok();
                if next.is_none() && batch.len() >= LINGER_FROM {
                    // Under load, wait a moment for the batch to fill (see BATCH_LINGER).
                    let until = *linger_until.get_or_insert_with(|| Instant::now() + BATCH_LINGER);
                    next = rx.recv_timeout(until.saturating_duration_since(Instant::now())).ok();
                }
            }
            // Verifiers hand over handfuls, so the batch may pass batch_max by a few.
            self.commit_in_batches(batch);
            if let Some(f) = call {
                let routes =
                    RouteLane { hub_key: &self.hub_key, out: &self.out, metrics: &self.domain.metrics };
                let mut ctx = WriterCtx { store: &mut self.store, domain: &self.domain, routes };
                f(&mut ctx);
                // An API or webhook write may have enqueued a message; a pass that finds
                // nothing due costs one small query.
                self.dispatcher.wake();
            }
            if last_wake.elapsed() >= WAKE_TICK {
                last_wake = Instant::now();
                self.wake_due();
            }
            if self.republish_all.swap(false, Ordering::SeqCst) {
                self.republish_routes(None, "broker_session_new");
            }
            self.send_due_acks(false);
            self.domain.metrics.queue_depth("writer", reorder.waiting.len());
            if self.cancel.is_cancelled() && self.live_verifiers.load(Ordering::SeqCst) == 0 {
                // Every verifier has exited, so nothing more can arrive from MQTT; finish
                // what is queued (calls from HTTP included) and stop.
                let mut batch = Vec::new();
                while let Ok(item) = rx.try_recv() {
                    match item {
                        WriteItem::Call(f) => {
                            let routes = RouteLane {
                                hub_key: &self.hub_key,
                                out: &self.out,
                                metrics: &self.domain.metrics,
                            };
                            f(&mut WriterCtx { store: &mut self.store, domain: &self.domain, routes })
                        }
                        WriteItem::Checked(items) => {
                            for (ordinal, item) in items {
                                reorder.push(ordinal, item, &mut batch);
                            }
                        }
                    }
                }
                batch.extend(reorder.drain());
                self.commit_in_batches(batch);
                self.send_due_acks(true);
                break;
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Publishes the current route of one device, or of every active device, again: the
    /// same signed message as when it was posted (same `issued_ms`; Ed25519 signing is
    /// deterministic, so the bytes are the same too). An agent that has the route ignores
    /// it as not newer; one that lost it, or a broker that lost it, gets it back.
    fn republish_routes(&self, device: Option<&DeviceId>, reason: &'static str) {
        let routes = match self.store.current_routes(device) {
            Ok(routes) => routes,
            Err(e) => {
                tracing::error!(error = %e, device = ?device.map(DeviceId::as_str), "cannot read routes to publish again");
                return;
            }
        };
        let lane = RouteLane { hub_key: &self.hub_key, out: &self.out, metrics: &self.domain.metrics };
        for stored in routes {
            let message = route_message(&stored.device, stored.route, stored.issued_ms);
            match lane.publish(&stored.fleet, &message, reason) {
                Ok(()) => {
                    tracing::info!(device = %stored.device, issued_ms = stored.issued_ms, reason, "route published again")
                }
                Err(e) => {
                    tracing::error!(device = %stored.device, error = %e, reason, "cannot publish the route again")
                }
            }
        }
    }

    fn wake_due(&mut self) {
        let now = now_ms();
        let result = (|| -> Result<Effects, ApplyError> {
            let tx = self.store.transaction()?;
            let mut effects = Effects::default();
            for (shipment_id, _at) in tx.take_due_wakeups(now, WAKE_BATCH)? {
                let Some(shipment) = tx.shipment(shipment_id)? else { continue };
                effects.merge(apply_to_shipment(
                    &tx,
                    &self.domain,
                    &shipment,
                    &Input::Wake { now_ms: now },
                    now,
                )?);
            }
            tx.commit()?;
            Ok(effects)
        })();
        match result {
            Ok(effects) => {
                effects.record(&self.domain.metrics);
                if !effects.enqueued.is_empty() || !effects.alerts.is_empty() {
                    self.dispatcher.wake();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot run due reconciler wake-ups"),
        }
    }

    /// Commits `batch` in transactions of at most `batch_max` messages, in order.
    fn commit_in_batches(&mut self, mut batch: Vec<Ingested>) {
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(self.batch_max));
            self.commit_batch(std::mem::replace(&mut batch, rest));
        }
    }

    fn commit_batch(&mut self, batch: Vec<Ingested>) {
        let started = Instant::now();
        let now = now_ms();
        let mut after = AfterCommit::default();
        let result = (|| -> Result<(), StoreError> {
            let tx = self.store.transaction()?;
            let mut devices = Registered::new();
            for item in batch {
                match item {
                    Ingested::Event(event) => {
                        Self::store_event(&tx, &self.domain, *event, now, &mut after, &mut devices)?;
                    }
                    Ingested::Chunk { topic, chunk, delivery } => {
                        match blobs::accept_chunk(&tx, &chunk, now)? {
                            ChunkOutcome::Ack(ack) => {
                                after.blob_counted.push(("stored", "ok"));
                                after.blob_acks.push((topic.fleet, ack));
                            }
                            ChunkOutcome::Completed(ack) => {
                                after.blob_counted.push(("stored", "ok"));
                                after.photos.push("verified");
                                tracing::info!(device = %chunk.device, sha256 = %chunk.sha256, "photo complete and verified");
                                after.blob_acks.push((topic.fleet, ack));
                            }
                            ChunkOutcome::HashMismatch(ack) => {
                                after.photos.push("hash_mismatch");
                                tracing::warn!(device = %chunk.device, sha256 = %chunk.sha256, "photo does not match its signed hash; dropped");
                                after.blob_acks.push((topic.fleet, ack));
                            }
                            ChunkOutcome::Rejected(reason) => {
                                tracing::warn!(device = %chunk.device, sha256 = %chunk.sha256, reason, "photo chunk rejected");
                                after.blob_counted.push(("rejected", reason));
                                tx.count_rejection("blob", reason, now)?;
                            }
                        }
                        after.pubacks.push(delivery);
                    }
                    Ingested::Position { topic, fix, delivery } => {
                        // The registry decides, as for events: a revocation is exact here.
                        let ahead_ms = fix.utc_ms.saturating_sub(now);
                        if tx.active_fleet(&topic.device)?.as_ref() != Some(&topic.fleet) {
                            tx.count_rejection("pos", "revoked_device", now)?;
                            after.status_counted.push(("pos", "rejected", "revoked_device"));
                        } else if ahead_ms > self.domain.max_event_ahead_ms {
                            // Newest by GNSS time wins: a position dated tomorrow would
                            // hide every true one until tomorrow.
                            tracing::warn!(device = %topic.device, utc_ms = fix.utc_ms, ahead_ms, reason = TIME_IN_FUTURE, "live position refused: its GNSS time is ahead of the hub's clock");
                            tx.count_rejection("pos", TIME_IN_FUTURE, now)?;
                            after.status_counted.push(("pos", "rejected", TIME_IN_FUTURE));
                        } else {
                            let newer = tx.set_live_position(&topic.device, &fix, now)?;
                            after.status_counted.push(("pos", if newer { "stored" } else { "stale" }, "ok"));
                        }
                        after.pubacks.push(delivery);
                    }
                    Ingested::State { topic, state, delivery } => {
                        if tx.active_fleet(&topic.device)?.as_ref() == Some(&topic.fleet) {
                            tracing::info!(device = %topic.device, online = state.online, agent_version = ?state.agent_version, outbox_depth = ?state.outbox_depth, "device state");
                            tx.set_device_state(&topic.device, &state, now)?;
                            after.status_counted.push(("state", "stored", "ok"));
                            if state.online {
                                after.came_online.push(topic.device.clone());
                            }
                        } else {
                            tx.count_rejection("state", "unknown_device", now)?;
                            after.status_counted.push(("state", "rejected", "unknown_device"));
                        }
                        after.pubacks.push(delivery);
                    }
                    Ingested::Rejected { source, reason, delivery } => {
                        tx.count_rejection(source, reason, now)?;
                        match source {
                            "blob" => after.blob_counted.push(("rejected", reason)),
                            "pos" | "state" => after.status_counted.push((source, "rejected", reason)),
                            _ => after.count("rejected", reason),
                        }
                        after.pubacks.push(delivery);
                    }
                }
            }
            for (device, (fleet, up_to)) in after.acks.iter_mut() {
                *up_to = tx.advance_ack(fleet, device, now)?;
            }
            let committing = Instant::now();
            tx.commit()?;
            self.domain.metrics.busy("commit", committing.elapsed());
            Ok(())
        })();
        if let Err(e) = result {
            // Nothing of the batch is stored, acked or PUBACKed: the broker redelivers it
            // on the next session and the devices resend what is not acked.
            tracing::error!(error = %e, "ingest transaction failed; batch rolled back");
            self.domain.metrics.ingest("rejected", "store_error");
            return;
        }
        let metrics = &self.domain.metrics;
        for ((outcome, reason), n) in &after.counted {
            metrics.ingest_count(outcome, reason, *n);
        }
        for (outcome, reason) in &after.blob_counted {
            metrics.blob_chunk(outcome, reason);
        }
        for (channel, outcome, reason) in &after.status_counted {
            metrics.device_status(channel, outcome, reason);
        }
        for outcome in &after.photos {
            metrics.photo(outcome);
        }
        after.effects.record(metrics);
        if !after.effects.enqueued.is_empty() || !after.effects.alerts.is_empty() {
            self.dispatcher.wake();
        }
        metrics.committed(after.events, after.lag.map(|(newest, oldest)| (now - newest, now - oldest)));
        for (device, (fleet, up_to_seq)) in after.acks {
            let owed = self.acks.owed.entry(device).or_insert((fleet, up_to_seq));
            owed.1 = owed.1.max(up_to_seq);
        }
        self.send_due_acks(false);
        for (fleet, ack) in after.blob_acks {
            self.send_signed(&fleet, &HubMessage::BlobAck(ack));
        }
        if !after.pubacks.is_empty() {
            let _ = self.out.blocking_send(Outbound::PubAcks(after.pubacks));
        }
        // A van that comes online may have come back to a broker that lost its retained
        // route (a crash without persistence, a restore from an older snapshot): the
        // hub cannot tell, so it publishes the route again, once per online message.
        for device in &after.came_online {
            self.republish_routes(Some(device), "device_online");
        }
        self.domain.metrics.busy("writer", started.elapsed());
    }

    /// Signs and hands out the acks owed to devices whose previous ack left at least
    /// [`ACK_INTERVAL`] ago (all of them with `all`).
    fn send_due_acks(&mut self, all: bool) {
        let now = Instant::now();
        let sent = &self.acks.sent;
        let due: Vec<DeviceId> = self
            .acks
            .owed
            .keys()
            .filter(|d| all || sent.get(*d).is_none_or(|at| now.duration_since(*at) >= ACK_INTERVAL))
            .cloned()
            .collect();
        for device in due {
            let Some((fleet, up_to_seq)) = self.acks.owed.remove(&device) else { continue };
            self.acks.sent.insert(device.clone(), now);
            self.send_signed(&fleet, &HubMessage::Ack(Ack { device, up_to_seq }));
        }
    }

    /// How long the writer may wait for the next item before an owed ack falls due.
    fn ack_wait(&self) -> Option<Duration> {
        let now = Instant::now();
        self.acks
            .owed
            .keys()
            .map(|d| {
                self.acks.sent.get(d).map_or(Duration::ZERO, |at| ACK_INTERVAL.saturating_sub(now - *at))
            })
            .min()
    }

    fn send_signed(&self, fleet: &FleetId, message: &HubMessage) {
        let topic = Topic::new(fleet.clone(), message.device().clone(), Channel::Ack).to_string();
        match message.seal(&self.hub_key) {
            Ok(payload) => {
                let _ = self.out.blocking_send(Outbound::Publish { topic, payload, retain: false });
            }
            Err(e) => tracing::error!(error = %e, "cannot seal hub message"),
        }
    }

    fn store_event(
        tx: &StoreTx<'_>,
        domain: &Domain,
        event: VerifiedEvent,
        now: i64,
        after: &mut AfterCommit,
        devices: &mut Registered,
    ) -> Result<(), StoreError> {
        let VerifiedEvent { topic, key_id, envelope, delivery } = event;
        let device = &envelope.device;
        let reject = |after: &mut AfterCommit, reason: &'static str| -> Result<(), StoreError> {
            tx.count_rejection("evt", reason, now)?;
            after.count("rejected", reason);
            Ok(())
        };
        // The verifier's key snapshot may be a moment old: the registry decides (once per
        // key and batch).
        let registered = match devices.get(&key_id) {
            Some((owner, fleet)) if owner == device => fleet.clone(),
            _ => {
                let fleet = tx.active_device(device, &key_id)?;
                devices.insert(key_id, (device.clone(), fleet.clone()));
                fleet
            }
        };
        match registered {
            None => {
                tracing::warn!(device = %device, seq = envelope.seq, reason = "revoked_device", "event rejected at commit");
                reject(after, "revoked_device")?;
                after.pubacks.push(delivery);
                return Ok(());
            }
            Some(fleet) if fleet != topic.fleet => {
                reject(after, "fleet_mismatch")?;
                after.pubacks.push(delivery);
                return Ok(());
            }
            Some(_) => {}
        }
        match store_verified(tx, domain, &envelope, &delivery.payload, now)? {
            (StoreOutcome::Stored, effects) => {
                after.effects.merge(effects);
                after.count("stored", "ok");
                after.events += 1;
                let lag = after.lag.get_or_insert((envelope.gnss_utc_ms, envelope.gnss_utc_ms));
                lag.0 = lag.0.max(envelope.gnss_utc_ms);
                lag.1 = lag.1.min(envelope.gnss_utc_ms);
                after.acks.entry(device.clone()).or_insert((topic.fleet, 0));
            }
            (StoreOutcome::Duplicate, _) => {
                after.count("duplicate", "duplicate");
                after.acks.entry(device.clone()).or_insert((topic.fleet, 0));
            }
            (StoreOutcome::GapOverStoredSeq, _) => {
                after.count("duplicate", "gap_over_stored_seq");
                after.acks.entry(device.clone()).or_insert((topic.fleet, 0));
            }
            (StoreOutcome::Conflict(reason), _) => reject(after, reason)?,
            (StoreOutcome::Quarantined(reason), _) => {
                // Counted like a rejection (a reason operations must see), acked like a
                // stored event (see `store_verified`), and left out of the lag gauge: its
                // time is not to be believed.
                tx.count_rejection("quarantine", reason, now)?;
                after.count("quarantined", reason);
                after.events += 1;
                after.acks.entry(device.clone()).or_insert((topic.fleet, 0));
            }
        }
        after.pubacks.push(delivery);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(n: u8) -> Ingested {
        let publish = Publish::new(format!("t/{n}"), QoS::AtLeastOnce, vec![n]);
        Ingested::Rejected { source: "mqtt", reason: "bad_topic", delivery: publish }
    }

    fn payloads(items: &[Ingested]) -> Vec<u8> {
        items
            .iter()
            .map(|i| match i {
                Ingested::Rejected { delivery, .. } => delivery.payload[0],
                _ => u8::MAX,
            })
            .collect()
    }

    #[test]
    fn checked_messages_leave_in_the_order_the_broker_delivered_them() {
        let mut reorder = Reorder::default();
        let mut out = Vec::new();
        reorder.push(1, rejected(1), &mut out);
        reorder.push(2, rejected(2), &mut out);
        assert!(out.is_empty(), "1 and 2 wait for 0");
        reorder.push(0, rejected(0), &mut out);
        reorder.push(4, rejected(4), &mut out);
        assert_eq!(payloads(&out), [0, 1, 2]);
        reorder.push(3, rejected(3), &mut out);
        assert_eq!(payloads(&out), [0, 1, 2, 3, 4]);
        assert!(reorder.waiting.is_empty());
        reorder.push(6, rejected(6), &mut out);
        assert_eq!(payloads(&reorder.drain()), [6], "shutdown takes what still waits");
    }
}
