//! Device ingest: MQTT in, verified events stored and reconciled, signed acks out.
//!
//! ```text
//! broker ─► mqtt task ─(by device)─► verifier threads ─► writer thread ─► outbound task ─► broker
//!           owns the EventLoop        Envelope::open       one SQLite tx      acks, PUBACKs,
//!           persistent session        topic/device checks  per batch          blob acks, routes
//! ```
//!
//! * The **mqtt task** owns rumqttc's event loop (nothing else polls it), with a fixed
//!   client id, `clean_session = false` and manual PUBACKs: the broker keeps the hub's
//!   session and everything not yet PUBACKed while the hub restarts, and a message is
//!   PUBACKed only after the transaction holding it has committed.
//! * **Verifier threads** (one per CPU by default; Ed25519 verification dominates the
//!   cost) check each message: topic shape, size, version, key, signature, body,
//!   topic device = envelope device = key owner, fleet. A device's messages always go to
//!   the same verifier, so its events reach the writer in the order the broker gave them.
//! * The **writer thread** owns the read-write SQLite connection. It takes as many
//!   messages as are waiting (up to `batch_max`) and, in ONE transaction, re-checks each
//!   device's key against the registry, dedupes on (device, seq) and event id, stores the
//!   raw envelope, maps the event to per-parcel [`DeviceSignal`]s, runs
//!   [`crate::reconcile::apply`] for every affected shipment and enqueues its notifications and alerts. Only after the
//!   commit does it hand the outbound task one cumulative signed ack per device touched
//!   (the highest contiguous seq stored) and the PUBACKs (invariant 3). HTTP handlers run
//!   their writes on the same thread through [`Writer::call`], so SQLite has one writer.
//!
//! Every rejection has a reason (`EnvelopeError::reason()`, `topic_mismatch`,
//! `unknown_device`, `seq_conflict`, ...), a counter (`doorstep_hub_ingest_total`), a
//! persistent count (`rejections` table) and a log line; nothing rejected is stored, and
//! a rejected event is never covered by an ack.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use doorstep_proto::blob::BlobChunk;
use doorstep_proto::topic::{all_devices, shared};
use doorstep_proto::{
    Ack, BlobAck, Channel, DeviceId, Envelope, EnvelopeError, Event, FleetId, HubMessage, KeyId,
    RouteAssignment, SigningKey, Topic, TrackingNumber,
};
use rumqttc::{AsyncClient, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::blobs::{self, ChunkOutcome};
use crate::config::{ChannelMap, MqttSettings};
use crate::metrics::Metrics;
use crate::model::{Action, DeviceSignal, DeviceSignalKind, Milestone};
use crate::reconcile::{self, Input, Rules, ShipmentState};
use crate::registry::Keys;
use crate::store::{
    EventInsert, NewEvent, NewNotification, Shipment, Store, StoreError, StoreOptions, StoreTx,
};

/// Messages waiting for each verifier thread.
pub const VERIFY_QUEUE: usize = 2048;
/// Verified messages waiting for the writer.
pub const WRITE_QUEUE: usize = 8192;
/// Acks, PUBACKs and blob acks waiting for the outbound task.
pub const OUTBOUND_QUEUE: usize = 8192;
/// rumqttc's request channel (publishes, PUBACKs, subscriptions).
pub const MQTT_REQUEST_QUEUE: usize = 16_384;
/// How often the verifiers' key snapshot is reloaded from the registry.
pub const KEYRING_REFRESH: Duration = Duration::from_secs(2);
/// Shortest interval between two reloads triggered by an unknown key id.
pub const KEYRING_MISS_RELOAD: Duration = Duration::from_millis(500);
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
/// messages are shed (not acknowledged; devices resend). Keep the broker's in-flight
/// window for the hub (Mosquitto: `max_inflight_messages`) below it.
pub const MAX_PENDING: usize = 65_536;
/// Payload bytes pending at most (photo chunks are up to 16 KiB each).
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// How long a graceful shutdown waits for the pipeline to drain and acks to go out.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
/// map, metrics.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Reconciliation settings (the hold period).
    pub rules: Rules,
    /// Which milestones go to which channels.
    pub channel_map: ChannelMap,
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

/// Applies one input to one shipment inside `tx`: reconcile, save, timeline, then the
/// actions (notifications per consented contact and channel map, alerts, wake-ups).
pub fn apply_to_shipment(
    tx: &StoreTx<'_>,
    domain: &Domain,
    shipment: &Shipment,
    input: &Input,
    now: i64,
) -> Result<Effects, ApplyError> {
    let current: ShipmentState = match shipment.reconcile_state.as_deref() {
        None | Some("null") => ShipmentState { milestone: shipment.milestone, ..ShipmentState::new() },
        Some(json) => serde_json::from_str(json)
            .map_err(|e| ReconcileError { shipment: shipment.id, detail: e.to_string() })?,
    };
    let (next, actions) = reconcile::apply(&current, input, &domain.rules);
    // A repeated signal (the tenth "nearby" of a stop) usually changes nothing.
    if next != current || shipment.reconcile_state.is_none() {
        let json = serde_json::to_string(&next)
            .map_err(|e| ReconcileError { shipment: shipment.id, detail: e.to_string() })?;
        tx.save_reconcile_json(shipment.id, next.milestone, &json, now)?;
    }
    if let Some((occurred_ms, source, kind, detail)) = timeline_entry(input) {
        tx.add_timeline(shipment.id, occurred_ms, &source, &kind, &detail)?;
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

fn timeline_entry(input: &Input) -> Option<(i64, String, String, serde_json::Value)> {
    match input {
        Input::Device(s) => {
            let kind = serde_json::to_value(s.kind).ok()?.as_str()?.to_owned();
            let detail = serde_json::json!({
                "device": s.device, "seq": s.seq, "stop_id": s.stop_id, "distance_m": s.distance_m,
                "reason": s.reason, "photo_sha256": s.photo_sha256,
            });
            Some((s.occurred_ms, "device".into(), kind, detail))
        }
        Input::Carrier(e) => {
            let kind = serde_json::to_value(e.status).ok()?.as_str()?.to_owned();
            let carrier = crate::carrier::carrier_slug(e.carrier).to_owned();
            let detail = serde_json::json!({
                "raw_status": e.raw_status, "message": e.message, "expected_delivery": e.expected_delivery,
            });
            Some((e.occurred_ms, carrier, kind, detail))
        }
        Input::Dispatched { at_ms, on_route } => {
            Some((*at_ms, "hub".into(), "dispatched".into(), serde_json::json!({ "on_route": on_route })))
        }
        Input::Wake { .. } => None,
    }
}

/// The per-parcel signals of a verified event. `Nearby` names a stop, not parcels: it
/// becomes one signal per parcel of that stop on the device's stored route.
pub fn device_signals(tx: &StoreTx<'_>, envelope: &Envelope) -> Result<Vec<DeviceSignal>, StoreError> {
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
            let kind = if matches!(envelope.event, Event::DeliveredAtAddress(_)) {
                DeviceSignalKind::DeliveredAtAddress
            } else {
                DeviceSignalKind::DeliveredAwayFromAddress
            };
            for tn in &d.tracking_numbers {
                out.push(DeviceSignal {
                    stop_id: Some(d.stop_id.clone()),
                    distance_m: Some(d.distance_m),
                    photo_sha256: d.photo.map(|p| p.sha256.to_hex()),
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
enum Ingested {
    Event(Box<VerifiedEvent>),
    Chunk { topic: Topic, chunk: Box<BlobChunk>, delivery: Delivery },
    Rejected { source: &'static str, reason: &'static str, delivery: Delivery },
}

/// What flows into the writer.
enum WriteItem {
    Ingested(Ingested),
    Call(Box<dyn FnOnce(&mut WriterCtx<'_>) + Send>),
}

/// What flows out to the broker.
#[derive(Debug)]
enum Outbound {
    Publish { topic: String, payload: Vec<u8>, retain: bool },
    PubAck(Delivery),
}

/// What a [`Writer::call`] closure gets: the store and the domain.
pub struct WriterCtx<'a> {
    /// The read-write store.
    pub store: &'a mut Store,
    /// Reconciler, channel map, metrics.
    pub domain: &'a Domain,
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
        let (write_tx, write_rx) = std_mpsc::sync_channel::<WriteItem>(WRITE_QUEUE);
        let live_verifiers = Arc::new(AtomicUsize::new(options.verify_threads.max(1)));
        let mut threads = Vec::new();

        let writer_state = WriterThread {
            store,
            domain,
            hub_key,
            out: out_tx,
            batch_max: options.batch_max.max(1),
            live_verifiers: Arc::clone(&live_verifiers),
            cancel: cancel.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("hub-writer".into())
                .spawn(move || writer_state.run(write_rx))
                .map_err(IngestError::Thread)?,
        );

        let mut verifier_txs = Vec::new();
        for i in 0..options.verify_threads.max(1) {
            let (tx, rx) = mpsc::channel::<Publish>(VERIFY_QUEUE);
            verifier_txs.push(tx);
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
                    .spawn(move || verifier.run(rx))
                    .map_err(IngestError::Thread)?,
            );
        }
        let writer = Writer { tx: write_tx };

        let filters = match &options.mqtt.shared_group {
            Some(group) => vec![shared(group, Channel::Evt), shared(group, Channel::Blob)],
            None => vec![all_devices(Channel::Evt), all_devices(Channel::Blob)],
        };
        let outbound_done = CancellationToken::new();
        tokio::spawn(outbound(client.clone(), out_rx, Arc::clone(&metrics), outbound_done.clone()));
        let mqtt_task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            verifier_txs,
            filters,
            Arc::clone(&metrics),
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
        Ok(Self { writer, client, keys, metrics, cancel, mqtt_task, threads })
    }

    /// The writer, for the HTTP API.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// The MQTT client, for publishing routes.
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

/// Publishes a hub message signed with the hub key: acks (QoS 1), routes (QoS 1, retained).
pub async fn publish_signed(
    client: &AsyncClient,
    hub_key: &SigningKey,
    fleet: &FleetId,
    message: &HubMessage,
    retain: bool,
) -> Result<(), PublishError> {
    let channel = match message {
        HubMessage::Route(_) => Channel::Route,
        HubMessage::Ack(_) | HubMessage::BlobAck(_) => Channel::Ack,
    };
    let topic = Topic::new(fleet.clone(), message.device().clone(), channel).to_string();
    let bytes = message.seal(hub_key).map_err(PublishError::Seal)?;
    client
        .publish(topic, QoS::AtLeastOnce, retain, bytes)
        .await
        .map_err(|e| PublishError::Mqtt(e.to_string()))
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

async fn drive(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    verifiers: Vec<mpsc::Sender<Publish>>,
    filters: Vec<String>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    outbound_done: CancellationToken,
) {
    let mut delay = Duration::from_millis(250);
    let mut verifiers = Some(verifiers);
    // Publishes read from the socket but not yet taken by a verifier. The event loop must
    // keep being polled while the pipeline is full, because the acks and PUBACKs that
    // drain it leave through this same event loop; the broker's in-flight window
    // (un-PUBACKed QoS 1 messages) is what bounds this queue in practice.
    let mut pending: VecDeque<(usize, Publish)> = VecDeque::new();
    let mut pending_bytes = 0usize;
    loop {
        let mut stop_feeding = false;
        let front = pending.front().map(|(i, _)| *i);
        let reserve = async {
            match (front, verifiers.as_ref()) {
                (Some(i), Some(txs)) => Some(txs[i].reserve().await),
                _ => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            biased;
            () = cancel.cancelled(), if verifiers.is_some() => {
                stop_feeding = true;
                None
            }
            () = outbound_done.cancelled() => break,
            permit = reserve => {
                match permit {
                    Some(Ok(permit)) => {
                        if let Some((_, publish)) = pending.pop_front() {
                            pending_bytes = pending_bytes.saturating_sub(publish.payload.len());
                            permit.send(publish);
                        }
                    }
                    _ => {
                        tracing::error!("verifier thread gone; stopping ingest");
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
            verifiers = None;
            pending.clear();
            pending_bytes = 0;
            continue;
        }
        let Some(event) = event else { continue };
        match event {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                delay = Duration::from_millis(250);
                metrics.mqtt_connected(true);
                tracing::info!(session_present = ack.session_present, "connected to the broker");
                for filter in &filters {
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!(filter, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                let Some(txs) = &verifiers else { continue };
                if pending.len() >= MAX_PENDING || pending_bytes >= MAX_PENDING_BYTES {
                    // Shed: not PUBACKed, not acked; the device resends it when its ack
                    // stalls. Only a broker with an in-flight window above MAX_PENDING
                    // (or a QoS 0 flood) gets here.
                    metrics.ingest("rejected", "overload");
                    tracing::warn!(topic = %publish.topic, pending = pending.len(), "ingest overloaded; message shed");
                    continue;
                }
                let mut h = std::collections::hash_map::DefaultHasher::new();
                publish.topic.hash(&mut h);
                let n = u64::try_from(txs.len()).unwrap_or(1).max(1);
                let i = usize::try_from(h.finish() % n).unwrap_or(0);
                match txs[i].try_send(publish) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(publish)) => {
                        pending_bytes += publish.payload.len();
                        pending.push_back((i, publish));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        tracing::error!("verifier thread gone; stopping ingest");
                        verifiers = None;
                        pending.clear();
                        pending_bytes = 0;
                    }
                }
                if pending.is_empty() {
                    metrics.queue_depth("mqtt_pending", 0);
                } else {
                    metrics.queue_depth("mqtt_pending", pending.len());
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected(false);
                if verifiers.is_none() {
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
    // Drain: let the verifiers and the writer finish and the acks go out, then say goodbye.
    drop(verifiers);
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
            Outbound::PubAck(publish) => client.ack(&publish).await,
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

impl Verifier {
    fn run(mut self, mut rx: mpsc::Receiver<Publish>) {
        while let Some(publish) = rx.blocking_recv() {
            let started = Instant::now();
            let item = self.check(publish);
            self.metrics.busy("verify", started.elapsed());
            if self.write.send(item).is_err() {
                break;
            }
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn reject(
        &self,
        source: &'static str,
        reason: &'static str,
        delivery: Delivery,
        detail: &str,
    ) -> WriteItem {
        tracing::warn!(topic = %delivery.topic, len = delivery.payload.len(), reason, detail, "{source} message rejected");
        WriteItem::Ingested(Ingested::Rejected { source, reason, delivery })
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

    fn check(&mut self, publish: Publish) -> WriteItem {
        let topic = match Topic::parse(&publish.topic) {
            Ok(t) => t,
            Err(e) => return self.reject("mqtt", "bad_topic", publish, &e.to_string()),
        };
        match topic.channel {
            Channel::Evt => {}
            Channel::Blob => return self.check_chunk(topic, publish),
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
        // Envelope::open found the key by this id, so the header holds it.
        let mut id = [0u8; 8];
        id.copy_from_slice(&publish.payload[1..doorstep_proto::envelope::HEADER_LEN]);
        let key_id = doorstep_proto::HexBytes(id);
        if self.keys.fleet_of(&key_id).as_ref() != Some(&topic.fleet) {
            let detail = format!("device {} published under fleet {}", envelope.device, topic.fleet);
            return self.reject("evt", "fleet_mismatch", publish, &detail);
        }
        WriteItem::Ingested(Ingested::Event(Box::new(VerifiedEvent {
            topic,
            key_id,
            envelope,
            delivery: publish,
        })))
    }

    fn check_chunk(&mut self, topic: Topic, publish: Publish) -> WriteItem {
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
        WriteItem::Ingested(Ingested::Chunk { topic, chunk: Box::new(chunk), delivery: publish })
    }
}

// ---- the writer -------------------------------------------------------------------------

struct WriterThread {
    store: Store,
    domain: Domain,
    hub_key: Arc<SigningKey>,
    out: mpsc::Sender<Outbound>,
    batch_max: usize,
    live_verifiers: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// What a committed batch owes the broker.
#[derive(Default)]
struct AfterCommit {
    acks: BTreeMap<DeviceId, (FleetId, u64)>,
    blob_acks: Vec<(FleetId, BlobAck)>,
    pubacks: Vec<Delivery>,
    effects: Effects,
    counted: Vec<(&'static str, &'static str, &'static str)>,
    blob_counted: Vec<(&'static str, &'static str)>,
    photos: Vec<&'static str>,
    events: usize,
    lag: Option<(i64, i64)>,
}

impl WriterThread {
    fn run(mut self, rx: std_mpsc::Receiver<WriteItem>) {
        let mut last_wake = Instant::now();
        loop {
            let first = match rx.recv_timeout(WAKE_TICK.min(Duration::from_millis(200))) {
                Ok(item) => Some(item),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut call = None;
            if let Some(first) = first {
                let mut next = Some(first);
                while let Some(item) = next.take() {
                    let item = match item {
                        WriteItem::Call(f) => {
                            call = Some(f);
                            break;
                        }
                        WriteItem::Ingested(item) => item,
                    };
                    batch.push(item);
                    if batch.len() >= self.batch_max {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch);
            }
            if let Some(f) = call {
                let mut ctx = WriterCtx { store: &mut self.store, domain: &self.domain };
                f(&mut ctx);
            }
            if last_wake.elapsed() >= WAKE_TICK {
                last_wake = Instant::now();
                self.wake_due();
            }
            self.domain.metrics.queue_depth("writer", 0);
            if self.cancel.is_cancelled() && self.live_verifiers.load(Ordering::SeqCst) == 0 {
                // Every verifier has exited, so nothing more can arrive from MQTT; finish
                // what is queued (calls from HTTP included) and stop.
                while let Ok(item) = rx.try_recv() {
                    match item {
                        WriteItem::Call(f) => {
                            f(&mut WriterCtx { store: &mut self.store, domain: &self.domain })
                        }
                        WriteItem::Ingested(other) => self.commit_batch(vec![other]),
                    }
                }
                break;
            }
        }
        tracing::debug!("writer stopped");
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
            Ok(effects) => effects.record(&self.domain.metrics),
            Err(e) => tracing::error!(error = %e, "cannot run due reconciler wake-ups"),
        }
    }

    fn commit_batch(&mut self, batch: Vec<Ingested>) {
        let started = Instant::now();
        let now = now_ms();
        let mut after = AfterCommit::default();
        let result = (|| -> Result<(), StoreError> {
            let tx = self.store.transaction()?;
            let mut devices = HashMap::new();
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
                    Ingested::Rejected { source, reason, delivery } => {
                        tx.count_rejection(source, reason, now)?;
                        if source == "blob" {
                            after.blob_counted.push(("rejected", reason));
                        } else {
                            after.counted.push(("rejected", reason, source));
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
        for (outcome, reason, _) in &after.counted {
            metrics.ingest(outcome, reason);
        }
        for (outcome, reason) in &after.blob_counted {
            metrics.blob_chunk(outcome, reason);
        }
        for outcome in &after.photos {
            metrics.photo(outcome);
        }
        after.effects.record(metrics);
        metrics.committed(after.events, after.lag.map(|(newest, oldest)| (now - newest, now - oldest)));
        for (device, (fleet, up_to_seq)) in after.acks {
            let message = HubMessage::Ack(Ack { device: device.clone(), up_to_seq });
            self.send_signed(&fleet, &message);
        }
        for (fleet, ack) in after.blob_acks {
            self.send_signed(&fleet, &HubMessage::BlobAck(ack));
        }
        for delivery in after.pubacks {
            if self.out.blocking_send(Outbound::PubAck(delivery)).is_err() {
                break;
            }
        }
        self.domain.metrics.busy("writer", started.elapsed());
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
        devices: &mut HashMap<(DeviceId, KeyId), Option<FleetId>>,
    ) -> Result<(), StoreError> {
        let VerifiedEvent { topic, key_id, envelope, delivery } = event;
        let device = &envelope.device;
        let reject = |after: &mut AfterCommit, reason: &'static str| -> Result<(), StoreError> {
            tx.count_rejection("evt", reason, now)?;
            after.counted.push(("rejected", reason, "evt"));
            Ok(())
        };
        // The verifier's key snapshot may be a moment old: the registry decides (once per
        // device and batch).
        let registered = match devices.get(&(device.clone(), key_id)) {
            Some(fleet) => fleet.clone(),
            None => {
                let fleet = tx.active_device(device, &key_id)?;
                devices.insert((device.clone(), key_id), fleet.clone());
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
        let event_id = envelope.event_id.to_hex();
        let new = NewEvent {
            device,
            seq: envelope.seq,
            event_id: &event_id,
            gnss_ms: envelope.gnss_utc_ms,
            kind: envelope.event.kind(),
            envelope: &delivery.payload,
            received_ms: now,
        };
        let outcome = tx.insert_event(&new)?;
        match outcome {
            EventInsert::Stored => {
                tracing::debug!(device = %device, seq = envelope.seq, kind = envelope.event.kind(), "event stored");
                if let Some(photo) = photo_of(&envelope.event) {
                    tx.add_photo_ref(&photo.sha256.to_hex(), device, envelope.seq, photo.size)?;
                }
                tx.begin_item()?;
                match Self::reconcile_event(tx, domain, &envelope, now) {
                    Ok(effects) => {
                        tx.release_item()?;
                        after.effects.merge(effects);
                    }
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(ApplyError::Reconcile(e)) => {
                        // The event is valid and stays stored (and acked); only its
                        // half-applied shipment effects are undone. Logged for operations.
                        tracing::error!(device = %device, seq = envelope.seq, error = %e, "reconciliation failed; event stored without effects");
                        tx.rollback_item()?;
                    }
                }
                after.counted.push(("stored", "ok", "evt"));
                after.events += 1;
                let lag = after.lag.get_or_insert((envelope.gnss_utc_ms, envelope.gnss_utc_ms));
                lag.0 = lag.0.max(envelope.gnss_utc_ms);
                lag.1 = lag.1.min(envelope.gnss_utc_ms);
                after.acks.entry(device.clone()).or_insert((topic.fleet, 0));
            }
            EventInsert::Duplicate => {
                tracing::debug!(device = %device, seq = envelope.seq, "duplicate event; acked again");
                after.counted.push(("duplicate", "duplicate", "evt"));
                after.acks.entry(device.clone()).or_insert((topic.fleet, 0));
            }
            EventInsert::SeqConflict | EventInsert::EventIdReused => {
                let reason =
                    if outcome == EventInsert::SeqConflict { "seq_conflict" } else { "event_id_reused" };
                tracing::error!(device = %device, seq = envelope.seq, event_id, reason, "event rejected: conflicts with a stored event");
                reject(after, reason)?;
            }
        }
        after.pubacks.push(delivery);
        Ok(())
    }

    fn reconcile_event(
        tx: &StoreTx<'_>,
        domain: &Domain,
        envelope: &Envelope,
        now: i64,
    ) -> Result<Effects, ApplyError> {
        let mut effects = Effects::default();
        let mut seen: BTreeSet<TrackingNumber> = BTreeSet::new();
        for signal in device_signals(tx, envelope)? {
            if !seen.insert(signal.tracking_number.clone()) {
                continue;
            }
            let Some(shipment) = tx.shipment_by_tracking(&signal.tracking_number)? else {
                tracing::debug!(tracking = %signal.tracking_number, "signal for a parcel without a shipment");
                continue;
            };
            effects.merge(apply_to_shipment(tx, domain, &shipment, &Input::Device(signal), now)?);
        }
        Ok(effects)
    }
}
