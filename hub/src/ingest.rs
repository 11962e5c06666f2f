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
//!   back in delivery order ([`Reorder`](writer::Reorder)), so each device's events stay in sequence and
//!   PUBACKs leave in the order the broker sent the messages. It takes as many messages
//!   as are waiting (up to `batch_max`) and, in ONE transaction, re-checks each device's
//!   key against the registry, dedupes on (device, seq) and event id, stores the raw
//!   envelope, applies gap notices, maps the event to per-parcel [`DeviceSignal`](crate::model::DeviceSignal)s, runs
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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use doorstep_proto::blob::BlobChunk;
use doorstep_proto::state::DeviceState;
use doorstep_proto::{
    DeviceId, Envelope, EnvelopeError, FixEvidence, HubMessage, KeyId, RouteAssignment, SigningKey, Topic,
};
use doorstep_runtime::backoff::Backoff;
use rumqttc::{AsyncClient, MqttOptions, Publish, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Assign, MqttSettings};
use crate::metrics::Metrics;
use crate::reconcile;
use crate::registry::Keys;
use crate::store::{Store, StoreError, StoreOptions};

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
/// Pauses between reconnect attempts to the broker: doubling to 30 s, jittered so the
/// hubs of a group that lost the same broker do not return in lockstep.
pub const RECONNECT: Backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(30) };
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
pub use doorstep_runtime::clock::now_ms;

mod apply;
pub mod assign;
mod held;
mod mqtt;
mod verify;
mod writer;

pub use apply::{
    ApplyError, Domain, Effects, ReconcileError, StoreOutcome, apply_to_shipment, apply_to_state,
    device_signals, new_event, note_parcels, shipment_state, store_inserted, store_verified,
};
pub use writer::{Writer, WriterCtx, WriterGone};

use mqtt::{drive, outbound};
use verify::Verifier;
use writer::{AckPacer, DispatcherWaker, WriterThread};

// ---- pipeline items ----------------------------------------------------------------------

/// A message the broker delivered; PUBACKed once its fate is committed.
type Delivery = Publish;

/// A verified event on its way to the writer.
#[derive(Debug, Clone)]
struct VerifiedEvent {
    topic: Topic,
    key_id: KeyId,
    envelope: Envelope,
    delivery: Delivery,
}

/// A message from the broker, checked by a verifier (cloned only to try a batch again
/// on PostgreSQL).
#[derive(Debug, Clone)]
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
    /// (see [`Reorder`](writer::Reorder)).
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
    /// A signed watch: someone looks at the van (not retained: it is over in minutes).
    Watch { topic: String, payload: Vec<u8> },
    /// A signed stop note: a customer's delivery instructions (not retained: the hub
    /// sends them again with the route).
    StopNote { topic: String, payload: Vec<u8> },
    /// The PUBACKs of one committed batch, in delivery order.
    PubAcks(Vec<Delivery>),
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

        // Which vans' topics to hold (`assign`), read before the first connection.
        let group = options.mqtt.shared_group.as_deref();
        let (filters, members) = match (options.mqtt.assign, group) {
            (Assign::ByVan, Some(group)) => {
                let store = Store::open(&options.database, options.store)?;
                let hub = &options.mqtt.client_id;
                let (members, filters) =
                    assign::Members::read(store, group, hub, Arc::clone(&metrics), cancel.clone())?;
                (filters, Some(members))
            }
            _ => {
                // The single vans' filters a kept session may hold, if this hub split by
                // van before; dropped at its first connection, so forgotten now (a crash
                // before they are dropped leaves a van heard twice: stored once).
                let fleet = if store.split_by_van_before(&options.mqtt.client_id)? {
                    let fleet = store.fleet_names()?;
                    store.forget_split(&options.mqtt.client_id)?;
                    fleet.into_iter().map(|(van, _)| van).collect()
                } else {
                    Vec::new()
                };
                // Every van, for good: the sender is not needed to read it.
                (tokio::sync::watch::channel(assign::Filters::every_van(group, &fleet)).1, None)
            }
        };

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
        if let Some(members) = members {
            threads.push(
                std::thread::Builder::new()
                    .name("hub-members".into())
                    .spawn(move || members.run())
                    .map_err(IngestError::Thread)?,
            );
        }
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
