//! The writer thread: it puts checked messages back in delivery order, commits them in
//! batches on the one read-write connection, and hands acks, PUBACKs, routes and watches
//! to the outbound task; and the [`Writer`] handle through which HTTP handlers write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use doorstep_proto::{
    Ack, BlobAck, Channel, DeviceId, FleetId, HubMessage, KeyId, RouteId, SigningKey, StopNote, Topic, Watch,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::blobs::{self, ChunkOutcome};
use crate::metrics::Metrics;
use crate::reconcile::Input;
use crate::store::{BatchParcels, BatchReads, Dialect, EventInsert, NewEvent, Store, StoreError, StoreTx};

use super::{
    ACK_INTERVAL, ApplyError, BATCH_LINGER, Delivery, Domain, Effects, Ingested, LINGER_FROM, Outbound,
    PublishError, StoreOutcome, TIME_IN_FUTURE, VerifiedEvent, WAKE_BATCH, WAKE_TICK, WriteItem,
    apply_to_shipment, new_event, note_parcels, now_ms, route_message, store_inserted, store_verified,
};

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
/// [`VERIFY_TAKE`](super::VERIFY_TAKE) signature checks). What waits here is at most what the other
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

/// What a [`Writer::call`] closure gets: the store, the domain, and the lane to devices.
pub struct WriterCtx<'a> {
    /// The read-write store.
    pub store: &'a mut Store,
    /// Reconciler, channel map, metrics.
    pub domain: &'a Domain,
    lane: DeviceLane<'a>,
}

impl WriterCtx<'_> {
    /// Signs a route message and queues it, retained, on the writer's outbound queue
    /// (after whatever the writer queued before). `reason` labels the counter
    /// (`posted`, ...). Call it after the transaction that stored the route committed.
    ///
    /// The customers' delivery instructions stored for the route's parcels follow it, as
    /// [`StopNote`]s: instructions left before the van had a route reach it with the route.
    pub fn publish_route(
        &self,
        fleet: &FleetId,
        message: &HubMessage,
        reason: &'static str,
    ) -> Result<(), PublishError> {
        self.lane.publish(fleet, message, reason)?;
        if let HubMessage::Route(assignment) = message {
            self.lane.publish_notes(
                self.store,
                fleet,
                &assignment.device,
                &assignment.route.route_id,
                reason,
            );
        }
        Ok(())
    }

    /// Signs a customer's delivery instructions for a stop and queues them on the writer's
    /// outbound queue, on the device's hub-message topic (`ack`), QoS 1, not retained, after
    /// whatever the writer queued before. A van offline meanwhile gets them from its broker
    /// session; one whose session is gone gets them with its route, which the hub publishes
    /// again when the van comes online. Call it after the transaction that stored them
    /// committed.
    pub fn publish_stop_note(&self, fleet: &FleetId, note: StopNote) -> Result<(), PublishError> {
        self.lane.send_note(fleet, &HubMessage::StopNote(note))
    }

    /// Signs a watch (someone looks at the van: it sends its live position every
    /// `every_s` for `for_s`) and queues it on the writer's outbound queue, after whatever
    /// the writer queued before (a route posted just before it leaves first), on the
    /// device's hub-message topic (`ack`): QoS 1 and not retained. A van offline meanwhile
    /// gets it from its broker session when it is back, and judges by `issued_ms` whether
    /// it is still on; a van that connects for the first time never finds an old one.
    pub fn publish_watch(&self, fleet: &FleetId, watch: Watch) -> Result<(), PublishError> {
        self.lane.send(fleet, &HubMessage::Watch(watch))
    }
}

/// Where hub messages the HTTP side asks for go (routes, watches): sealed with the hub key
/// onto the one outbound queue, so posted routes, repeats and watches leave in the order
/// the writer decided them.
#[derive(Clone, Copy)]
struct DeviceLane<'a> {
    hub_key: &'a SigningKey,
    out: &'a mpsc::Sender<Outbound>,
    metrics: &'a Metrics,
}

impl DeviceLane<'_> {
    /// A watch: on the device's `ack` topic, not retained.
    fn send(&self, fleet: &FleetId, message: &HubMessage) -> Result<(), PublishError> {
        let topic = Topic::new(fleet.clone(), message.device().clone(), Channel::Ack).to_string();
        let payload = message.seal(self.hub_key).map_err(PublishError::Seal)?;
        self.out
            .blocking_send(Outbound::Watch { topic, payload })
            .map_err(|_| PublishError::Mqtt("the outbound task has stopped".to_owned()))
    }

    /// A stop note: on the device's `ack` topic, not retained.
    fn send_note(&self, fleet: &FleetId, message: &HubMessage) -> Result<(), PublishError> {
        let topic = Topic::new(fleet.clone(), message.device().clone(), Channel::Ack).to_string();
        let payload = message.seal(self.hub_key).map_err(PublishError::Seal)?;
        self.out
            .blocking_send(Outbound::StopNote { topic, payload })
            .map_err(|_| PublishError::Mqtt("the outbound task has stopped".to_owned()))
    }

    /// Every stored instruction for a parcel of `device`'s route `route_id`, removals
    /// included, as stop notes after the route (`reason`: why the route went out). Each
    /// keeps the time it was saved, so a van that has it already sees nothing newer. A
    /// note that cannot be read or sent is logged; the route has gone out regardless.
    fn publish_notes(
        &self,
        store: &Store,
        fleet: &FleetId,
        device: &DeviceId,
        route_id: &RouteId,
        reason: &'static str,
    ) {
        let notes = match store.route_notes(device, route_id) {
            Ok(notes) => notes,
            Err(e) => {
                tracing::error!(device = %device, route = %route_id, error = %e, "cannot read the route's stop notes");
                return;
            }
        };
        let (count, mut sent) = (notes.len(), 0usize);
        for note in notes {
            let stop = note.stop_id.clone();
            let message = HubMessage::StopNote(StopNote {
                device: device.clone(),
                issued_ms: note.at_ms,
                route_id: route_id.clone(),
                stop_id: note.stop_id,
                tracking_number: note.tracking_number,
                text: note.text,
            });
            match self.send_note(fleet, &message) {
                Ok(()) => sent += 1,
                Err(e) => {
                    tracing::error!(device = %device, route = %route_id, stop = %stop, error = %e, reason, "cannot publish a stop note with the route")
                }
            }
        }
        if count > 0 {
            tracing::info!(device = %device, route = %route_id, notes = sent, reason, "stop notes published with the route");
        }
    }

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
    pub(super) tx: std_mpsc::SyncSender<WriteItem>,
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

/// The dispatcher's wake-up, once [`Ingest::wake_dispatcher_with`](super::Ingest::wake_dispatcher_with) has given it.
#[derive(Debug, Clone, Default)]
pub(super) struct DispatcherWaker(pub(super) Arc<std::sync::OnceLock<Arc<tokio::sync::Notify>>>);

impl DispatcherWaker {
    fn wake(&self) {
        if let Some(waker) = self.0.get() {
            waker.notify_one();
        }
    }
}

/// Acks committed but not yet handed out, and when each device's last ack left.
#[derive(Debug, Default)]
pub(super) struct AckPacer {
    /// Device → (fleet, highest committed contiguous seq), for the next ack.
    owed: BTreeMap<DeviceId, (FleetId, u64)>,
    /// Device → when its last ack was handed to the outbound task.
    sent: HashMap<DeviceId, Instant>,
}

pub(super) struct WriterThread {
    pub(super) store: Store,
    pub(super) domain: Domain,
    pub(super) hub_key: Arc<SigningKey>,
    pub(super) out: mpsc::Sender<Outbound>,
    pub(super) batch_max: usize,
    pub(super) live_verifiers: Arc<AtomicUsize>,
    pub(super) dispatcher: DispatcherWaker,
    pub(super) acks: AckPacer,
    /// Set by the MQTT task when the broker has no session for the hub (a fresh broker):
    /// every device's current route is published again.
    pub(super) republish_all: Arc<AtomicBool>,
    pub(super) cancel: CancellationToken,
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
    /// GNSS times of the stored events, ms (their lag to the commit is measured after it).
    event_times_ms: Vec<i64>,
    /// Devices whose state message said online: their current route is published again.
    came_online: Vec<DeviceId>,
}

impl AfterCommit {
    fn count(&mut self, outcome: &'static str, reason: &'static str) {
        *self.counted.entry((outcome, reason)).or_insert(0) += 1;
    }
}

/// Tries of one message stored alone on PostgreSQL before it is left to the broker's
/// redelivery.
const ALONE_ATTEMPTS: u64 = 20;
/// Tries of a whole batch on PostgreSQL before its messages are stored one at a time.
const BATCH_ATTEMPTS: u32 = 3;

/// Registry answers already read in this batch: key id → (device, its fleet while the
/// key is the device's active one).
type Registered = HashMap<KeyId, (DeviceId, Option<FleetId>)>;

impl WriterThread {
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<WriteItem>) {
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
                let lane =
                    DeviceLane { hub_key: &self.hub_key, out: &self.out, metrics: &self.domain.metrics };
                let mut ctx = WriterCtx { store: &mut self.store, domain: &self.domain, lane };
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
                            let lane = DeviceLane {
                                hub_key: &self.hub_key,
                                out: &self.out,
                                metrics: &self.domain.metrics,
                            };
                            f(&mut WriterCtx { store: &mut self.store, domain: &self.domain, lane })
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
        let lane = DeviceLane { hub_key: &self.hub_key, out: &self.out, metrics: &self.domain.metrics };
        for stored in routes {
            let route_id = stored.route.route_id.clone();
            let message = route_message(&stored.device, stored.route, stored.issued_ms);
            match lane.publish(&stored.fleet, &message, reason) {
                Ok(()) => {
                    tracing::info!(device = %stored.device, issued_ms = stored.issued_ms, reason, "route published again");
                    lane.publish_notes(&self.store, &stored.fleet, &stored.device, &route_id, reason);
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
        if self.store.dialect() == Dialect::Sqlite {
            // SQLite's one writer meets no other hub's transaction.
            match self.store_batch(batch, BatchReads::Checked) {
                Ok(after) => self.after_commit(after, started),
                Err(e) => self.batch_failed(&e),
            }
            return;
        }
        // On PostgreSQL a batch can meet another hub's transaction (a shipment it read
        // changed since, a deadlock, a serialization failure) or lose its connection:
        // nothing of it was stored. It is tried again with its shipments locked in id
        // order from the start (see store/batch.rs); should that meet another hub's
        // transaction too, its messages are stored one per transaction, each tried again
        // a few times. Events' keys make trying again safe.
        let mut reads = BatchReads::Checked;
        for attempt in 1..=BATCH_ATTEMPTS {
            match self.store_batch(batch.clone(), reads) {
                Ok(after) => return self.after_commit(after, started),
                Err(e) if e.is_transient() => {
                    let reason = if matches!(e, StoreError::Changed(_)) {
                        "shipment_changed"
                    } else {
                        "store_conflict"
                    };
                    tracing::debug!(error = %e, messages = batch.len(), attempt, "ingest batch met another hub's transaction; storing it again with its shipments locked");
                    self.domain.metrics.ingest("retried", reason);
                    reads = BatchReads::Locked;
                }
                Err(e) => return self.batch_failed(&e),
            }
        }
        tracing::warn!(
            messages = batch.len(),
            attempts = BATCH_ATTEMPTS,
            "ingest batch met other hubs' transactions every time; storing its messages one at a time"
        );
        for item in batch {
            self.commit_alone(item);
        }
    }

    /// Stores one message in a transaction of its own, tried again while PostgreSQL
    /// says trying again may succeed.
    fn commit_alone(&mut self, item: Ingested) {
        let started = Instant::now();
        for attempt in 1..=ALONE_ATTEMPTS {
            match self.store_batch(vec![item.clone()], BatchReads::Locked) {
                Ok(after) => return self.after_commit(after, started),
                Err(e) if e.is_transient() && attempt < ALONE_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(5 * attempt));
                }
                Err(e) => return self.batch_failed(&e),
            }
        }
    }

    fn batch_failed(&self, e: &StoreError) {
        // Nothing of it is stored, acked or PUBACKed: the broker redelivers it on the
        // next session and the devices resend what is not acked.
        tracing::error!(error = %e, "ingest transaction failed; rolled back");
        self.domain.metrics.ingest("rejected", "store_error");
    }

    /// Stores a batch in one transaction; what it owes the broker once committed.
    fn store_batch(&mut self, batch: Vec<Ingested>, reads: BatchReads) -> Result<AfterCommit, StoreError> {
        let now = now_ms();
        let mut after = AfterCommit::default();
        {
            let tx = self.store.transaction()?;
            let mut devices = Registered::new();
            // PostgreSQL: the batch's events are stored first, in one set-based statement
            // (one round trip, not one an event), then reconciled one by one in order.
            let mut inserted = if tx.dialect() == Dialect::Postgres {
                Self::insert_events_first(&tx, &self.domain, &batch, reads, now, &mut devices)?
            } else {
                HashMap::new()
            };
            for (i, item) in batch.into_iter().enumerate() {
                match item {
                    Ingested::Event(event) => {
                        // (SQLite: nothing was stored first.)
                        let first = if inserted.is_empty() { None } else { inserted.remove(&i) };
                        Self::store_event(&tx, &self.domain, *event, first, now, &mut after, &mut devices)?;
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
            // SQLite: inside the batch's transaction, which no other writer overlaps.
            if tx.dialect() == Dialect::Sqlite {
                for (device, (fleet, up_to)) in after.acks.iter_mut() {
                    *up_to = tx.advance_ack(fleet, device, now)?;
                }
            }
            let committing = Instant::now();
            tx.commit()?;
            self.domain.metrics.busy("commit", committing.elapsed());
        }
        // PostgreSQL: after the commit, so the contiguous run counts what other hubs
        // committed meanwhile; the stored ack only grows, whichever hub writes last.
        if self.store.dialect() == Dialect::Postgres && !after.acks.is_empty() {
            let vans: Vec<(FleetId, DeviceId)> =
                after.acks.iter().map(|(device, (fleet, _))| (fleet.clone(), device.clone())).collect();
            for (device, mark) in self.store.advance_acks(&vans, now)? {
                if let Some((_, up_to)) = after.acks.get_mut(&device) {
                    *up_to = mark;
                }
            }
        }
        Ok(after)
    }

    /// Counts a committed batch and sends what it owes: acks, blob acks, PUBACKs.
    fn after_commit(&mut self, after: AfterCommit, started: Instant) {
        let now = now_ms();
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
        metrics.committed(after.events, after.event_times_ms.iter().map(|gnss| now - gnss));
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

    /// Reads the shipments the batch's events touch (as `reads` says) and stores the
    /// events the registry accepts in one statement; what happened to each (with its id in hex),
    /// by its place in the batch.
    fn insert_events_first(
        tx: &StoreTx<'_>,
        domain: &Domain,
        batch: &[Ingested],
        reads: BatchReads,
        now: i64,
        devices: &mut Registered,
    ) -> Result<HashMap<usize, (EventInsert, String)>, StoreError> {
        // Every van's key looked up in one statement, not one a van.
        let mut pairs: Vec<(DeviceId, KeyId)> = batch
            .iter()
            .filter_map(|item| match item {
                Ingested::Event(event) => Some((event.envelope.device.clone(), event.key_id)),
                _ => None,
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        for ((device, key_id), fleet) in tx.active_devices(&pairs)? {
            devices.insert(key_id, (device, fleet));
        }
        let mut accepted = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            if let Ingested::Event(event) = item
                && Self::registered(tx, devices, event.key_id, &event.envelope.device)?.as_ref()
                    == Some(&event.topic.fleet)
            {
                accepted.push((i, &**event, event.envelope.event_id.to_hex()));
            }
        }
        let mut parcels = BatchParcels::default();
        for (_, event, _) in &accepted {
            note_parcels(&event.envelope, &mut parcels);
        }
        tx.read_batch(parcels, reads)?;
        let rows: Vec<NewEvent<'_>> = accepted
            .iter()
            .map(|(_, e, id)| new_event(domain, &e.envelope, id, &e.delivery.payload, now))
            .collect();
        let outcomes = tx.insert_events(&rows)?;
        drop(rows);
        Ok(accepted.into_iter().zip(outcomes).map(|((i, _, id), outcome)| (i, (outcome, id))).collect())
    }

    /// The fleet the registry has the device's key in (`None`: revoked or unknown), once
    /// per key and batch: the verifier's key snapshot may be a moment old.
    fn registered(
        tx: &StoreTx<'_>,
        devices: &mut Registered,
        key_id: KeyId,
        device: &DeviceId,
    ) -> Result<Option<FleetId>, StoreError> {
        Ok(match devices.get(&key_id) {
            Some((owner, fleet)) if owner == device => fleet.clone(),
            _ => {
                let fleet = tx.active_device(device, &key_id)?;
                devices.insert(key_id, (device.clone(), fleet.clone()));
                fleet
            }
        })
    }

    fn store_event(
        tx: &StoreTx<'_>,
        domain: &Domain,
        event: VerifiedEvent,
        inserted: Option<(EventInsert, String)>,
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
        match Self::registered(tx, devices, key_id, device)? {
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
        let stored = match inserted {
            Some((outcome, event_id)) => {
                store_inserted(tx, domain, &envelope, &event_id, &delivery.payload, now, outcome)?
            }
            None => store_verified(tx, domain, &envelope, &delivery.payload, now)?,
        };
        match stored {
            (StoreOutcome::Stored, effects) => {
                after.effects.merge(effects);
                after.count("stored", "ok");
                after.events += 1;
                after.event_times_ms.push(envelope.gnss_utc_ms);
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
                // stored event (see `store_verified`), and left out of the lag gauges and
                // histogram: its time is not to be believed.
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
    use rumqttc::{Publish, QoS};

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
