//! The MQTT uplink: drains the outbox to the hub in sequence order and deletes events
//! only when the hub's signed ack covers them.
//!
//! Two tasks. The *driver* owns rumqttc's `EventLoop` (nothing else touches it): it polls
//! it, reconnects with exponential backoff and jitter, and forwards what matters over a
//! bounded channel. The *uplink* task owns the protocol as the shell around the pure
//! send [`Window`] (`window.rs`): it tells the window what the broker, the hub and the
//! outbox said, and does what the window answers (fetch rows, publish them). It also
//! verifies hub messages, applies acks to the outbox, keeps the live position and the
//! photo lane going, and writes the link record `status` reads.
//!
//! What the broker says is never taken as delivery: a PUBACK only moves the in-flight
//! window. After every reconnect, and whenever the hub's ack stalls for
//! `ack_timeout_s` with nothing in flight, everything above the hub's last ack is sent
//! again; the hub deduplicates by (device, seq). [`crate::window`] states these rules
//! and tests them against a model.
//!
//! Priorities: events first, in seq order; the live position (QoS 0, retained,
//! newest-only) goes out the moment the [`LivePacer`] says a fix is worth sending (moved,
//! turned, heartbeat, or every few seconds while the hub's signed watch says someone
//! looks), never queued behind the backlog because the uplink keeps rumqttc's request
//! queue nearly empty; photo chunks only when no event is waiting, at most
//! [`PHOTO_WINDOW`](crate::window::PHOTO_WINDOW) at a time.
//!
//! A watch is kept by the pacer on the uplink's own monotonic clock, so it ends on time
//! whether or not the link is up: a watch that ends while the van is out of coverage never
//! makes it send fast when it comes back, and one delivered late (queued at the broker
//! through a dead zone) is measured against its issue time by the van's GNSS clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use doorstep_proto::blob::MAX_CHUNK_LEN;
use doorstep_proto::hub::MAX_HUB_LEN;
use doorstep_proto::state::DeviceState;
use doorstep_proto::{
    Channel, DeviceId, Envelope, Event, FixEvidence, FleetId, HexBytes, HubMessage, KeyError, PublicKey,
    RouteAssignment, StopNote, Topic,
};
use doorstep_runtime::backoff::jitter;
use doorstep_runtime::tls::TlsError;
use ring::rand::{SecureRandom, SystemRandom};
use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::live::{LiveConfig, LivePacer, WatchOutcome};
use crate::outbox::{OutboxError, OutboxHandle};
use crate::status::{FixRecord, LinkRecord, LinkState, WatchRecord};
use crate::util::wall_ms;
use crate::window::{Next, Window, WindowConfig};

/// Rows fetched from the outbox at once.
pub const FETCH_BATCH: usize = 1024;
/// Events from the driver task waiting for the uplink task.
pub const LINK_EVENT_QUEUE: usize = 256;
/// Requests rumqttc may hold beyond the in-flight window (state, position, acks,
/// subscriptions), so that a publish never waits behind the backlog.
pub const REQUEST_HEADROOM: usize = 64;
/// How often the uplink checks for stalled acks, new photos, and rewrites the record.
pub const TICK: Duration = Duration::from_secs(1);

/// How long a clean shutdown waits for the goodbye to reach the broker.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Versions of this agent, for the online state message.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// See [`UplinkConfig::keepalive_s`] for why three minutes.
fn default_keepalive_s() -> u64 {
    180
}
fn default_inflight() -> u16 {
    64
}
fn default_max_unacked() -> u32 {
    4096
}
fn default_ack_timeout_s() -> u64 {
    60
}
fn default_backoff_min_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    120_000
}
fn default_connect_timeout_s() -> u64 {
    30
}

/// TLS material for the broker connection (PEM files).
pub use doorstep_runtime::tls::TlsFiles;

/// The `[uplink]` section of the agent's config file. The device id comes from the
/// outbox (one identity for the whole agent); the MQTT client id is the device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port; 8883 with TLS and 1883 without when absent.
    #[serde(default)]
    pub port: Option<u16>,
    /// The fleet the device belongs to (the topic's second level).
    pub fleet: FleetId,
    /// The hub's public key (`ed25519:<hex>`) or the path of a file holding it. Only
    /// messages signed by it are obeyed.
    pub hub_key: String,
    /// TLS; plain TCP when absent (tests and lab brokers only).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// MQTT keepalive, seconds (at least 5). The agent pings the broker this often
    /// whatever else it sends (rumqttc pings on a fixed clock), and the broker gives up on
    /// a van it has not heard from for one and a half times as long (its will then says
    /// offline); a link that died silently is noticed within two keepalives.
    ///
    /// The default, 180 s, is for cellular links. Carrier-grade NATs forget an idle TCP
    /// flow after as little as 4 to 5 minutes (and load balancers in front of cloud
    /// brokers after 4 to 6), and a van standing at a stop with nobody watching sends
    /// nothing else for longer than that: the ping must come first, or the next
    /// confirmation goes into a dead flow and waits for a timeout and a reconnect. Each
    /// ping costs a 24-byte TLS record each way and about three TCP/IP headers, some 200
    /// bytes on the air: 20 an hour at 180 s are about 33 kB of an 8-hour shift, where
    /// 60 s cost about 100 kB, a fifth of fleet IT's 0.5 MB budget (`cargo bench -p
    /// doorstep-e2e --bench link_bytes`). A SIM on a private APN whose NAT holds idle
    /// flows longer can take 600 or more; a carrier whose NAT is quicker needs a
    /// keepalive below its timeout.
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    /// QoS 1 publishes awaiting the broker's PUBACK.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Events published beyond the hub's last ack before the uplink waits for it.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: u32,
    /// With nothing in flight, how long the hub's ack may stall before everything
    /// above it is sent again, seconds.
    #[serde(default = "default_ack_timeout_s")]
    pub ack_timeout_s: u64,
    /// First reconnect delay, ms; doubles up to `backoff_max_ms`, with jitter.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest reconnect delay, ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// TCP + TLS + CONNACK timeout, seconds.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
}

impl UplinkConfig {
    /// A plain-TCP config with default tuning, for tests and examples.
    pub fn plain(host: impl Into<String>, port: u16, fleet: FleetId, hub_key: &PublicKey) -> Self {
        Self {
            host: host.into(),
            port: Some(port),
            fleet,
            hub_key: hub_key.to_string(),
            tls: None,
            keepalive_s: default_keepalive_s(),
            inflight: default_inflight(),
            max_unacked: default_max_unacked(),
            ack_timeout_s: default_ack_timeout_s(),
            backoff_min_ms: default_backoff_min_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            connect_timeout_s: default_connect_timeout_s(),
        }
    }

    /// Checks the config and loads what it points at (hub key, TLS files).
    pub fn validate(&self) -> Result<UplinkSettings, UplinkError> {
        if self.host.trim().is_empty() {
            return Err(UplinkError::Config("uplink.host is empty".into()));
        }
        if self.inflight == 0 || self.max_unacked == 0 {
            return Err(UplinkError::Config(
                "uplink.inflight and uplink.max_unacked must be at least 1".into(),
            ));
        }
        if self.backoff_min_ms == 0 || self.backoff_max_ms < self.backoff_min_ms {
            return Err(UplinkError::Config(
                "uplink.backoff_min_ms must be > 0 and <= backoff_max_ms".into(),
            ));
        }
        let hub_key = if self.hub_key.trim_start().starts_with(doorstep_proto::key::PUBLIC_KEY_PREFIX) {
            PublicKey::from_text(&self.hub_key)?
        } else {
            let text = std::fs::read_to_string(&self.hub_key).map_err(|e| {
                UplinkError::Config(format!("uplink.hub_key: cannot read hub key file {}: {e}", self.hub_key))
            })?;
            PublicKey::from_text(&text)?
        };
        let tls = self.tls.as_ref().map(tls_config).transpose()?;
        Ok(UplinkSettings {
            host: self.host.clone(),
            port: self.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
            fleet: self.fleet.clone(),
            hub_key,
            tls,
            keepalive: Duration::from_secs(self.keepalive_s.max(5)),
            inflight: self.inflight,
            max_unacked: u64::from(self.max_unacked),
            ack_timeout: Duration::from_secs(self.ack_timeout_s.max(1)),
            backoff_min: Duration::from_millis(self.backoff_min_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            connect_timeout_s: self.connect_timeout_s.max(1),
        })
    }
}

/// A validated [`UplinkConfig`].
#[derive(Clone)]
pub struct UplinkSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Fleet.
    pub fleet: FleetId,
    /// The hub's key.
    pub hub_key: PublicKey,
    /// TLS client config (rustls with the ring provider), if any.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// QoS 1 in-flight window.
    pub inflight: u16,
    /// Events beyond the hub's ack.
    pub max_unacked: u64,
    /// Ack stall before a resend.
    pub ack_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Connect timeout, seconds.
    pub connect_timeout_s: u64,
}

impl UplinkSettings {
    /// The bounds of the send window.
    pub fn window(&self) -> WindowConfig {
        WindowConfig {
            inflight: usize::from(self.inflight),
            max_unacked: self.max_unacked,
            ack_timeout: self.ack_timeout,
        }
    }
}

impl std::fmt::Debug for UplinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkSettings")
            .field("broker", &format_args!("{}:{}", self.host, self.port))
            .field("fleet", &self.fleet)
            .field("tls", &self.tls.is_some())
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

/// Why the uplink could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The config is inconsistent.
    #[error("uplink config: {0}")]
    Config(String),
    /// The hub key is not a valid public key.
    #[error("uplink.hub_key: {0}")]
    HubKey(#[from] KeyError),
    /// A TLS file is missing or unusable.
    #[error("uplink TLS file {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The outbox is gone.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// TLS sessions the agent keeps in memory: a van talks to one broker, perhaps a standby.
const TLS_SESSIONS: usize = 8;

/// The rustls client config for the broker, built once per `run` and shared by every
/// reconnect: rumqttc's transport holds this `Arc` and makes each connection's connector
/// from it, so the session store inside outlives the connections. A reconnect offers the
/// ticket the broker sent on the previous connection (TLS 1.3 `pre_shared_key`) and the
/// broker resumes the session: no certificate chains either way, no signatures; about
/// 1.9 kB until CONNACK instead of 3.3 kB with ECDSA certificates and no intermediate CA
/// (more is saved with RSA or a longer chain), measured by the link budget benchmark.
/// Tickets live in memory only: the first connection after a start, after a broker
/// restart (new ticket keys) or after a ticket's lifetime (2 hours with Mosquitto on
/// OpenSSL) is a full handshake.
fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, UplinkError> {
    let config = doorstep_runtime::tls::client_config(files).map_err(|e| match e {
        TlsError::File { path, reason } => UplinkError::Tls { path, reason },
        TlsError::Unpaired => UplinkError::Config("uplink.tls: cert and key must be given together".into()),
    })?;
    let mut config = Arc::unwrap_or_clone(config);
    config.resumption = rustls::client::Resumption::in_memory_sessions(TLS_SESSIONS);
    Ok(Arc::new(config))
}

/// The live position: the newest fix, for the `pos` topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivePosition {
    /// The fix.
    pub fix: FixEvidence,
    /// Agent monotonic ms when it was taken.
    pub mono_ms: u64,
}

/// What the uplink tells the rest of the agent (best effort: dropped when nobody reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkNotice {
    /// Connected to the broker.
    Connected {
        /// The broker kept our session.
        session_present: bool,
    },
    /// The link went down.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The hub acknowledged events up to `up_to_seq`; `deleted` rows left the outbox.
    Acked {
        /// Highest seq acknowledged.
        up_to_seq: u64,
        /// Rows deleted.
        deleted: usize,
    },
    /// The hub has a photo, verified against its hash.
    PhotoDelivered {
        /// The photo's SHA-256.
        sha256: HexBytes<32>,
    },
    /// A verified watch arrived: the live position goes out every `every_s` seconds, or,
    /// when `started` is false, the watch had ended before it arrived and is ignored.
    Watch {
        /// The pace it asks for, seconds.
        every_s: u16,
        /// Whether it runs (false: it arrived after it ended).
        started: bool,
    },
    /// The last running watch ended (by time, link up or down): back to the adaptive pace.
    WatchEnded,
    /// A hub message was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What the driver task forwards from the event loop.
#[derive(Debug)]
enum Link {
    Up { session_present: bool },
    Down(String),
    PubAck,
    Message { topic: String, payload: Vec<u8> },
}

/// Owns the event loop: polls it, reconnects with backoff and jitter, forwards events.
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Link>,
    stop: CancellationToken,
    backoff: (Duration, Duration),
    device: DeviceId,
) {
    let rng = SystemRandom::new();
    let mut delay = backoff.0;
    // A broker that cannot be reached (wrong address, a CA that does not match, a
    // refused certificate) is a warning the first time and whenever the reason changes,
    // so a van that has never connected says why at the default log level.
    let mut connected = false;
    let mut last_reason: Option<String> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        let link = match event {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                delay = backoff.0;
                connected = true;
                last_reason = None;
                Link::Up { session_present: ack.session_present }
            }
            Ok(rumqttc::Event::Incoming(Packet::PubAck(_))) => Link::PubAck,
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                Link::Message { topic: p.topic, payload: p.payload.to_vec() }
            }
            Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                // Our own resend logic replays everything above the hub's ack; rumqttc's
                // replay of its in-flight state would only double it.
                eventloop.pending.clear();
                let reason = describe(&e);
                if tx.send(Link::Down(reason.clone())).await.is_err() {
                    return;
                }
                let sleep = jitter(&rng, delay);
                let retry_in_ms = sleep.as_millis();
                if !connected && last_reason.as_ref() != Some(&reason) {
                    tracing::warn!(device = %device, reason, retry_in_ms, "cannot connect to the broker; retrying");
                } else {
                    tracing::info!(device = %device, reason, retry_in_ms, "uplink down; reconnecting");
                }
                connected = false;
                last_reason = Some(reason);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(sleep) => {}
                }
                delay = (delay * 2).min(backoff.1);
                continue;
            }
        };
        if tx.send(link).await.is_err() {
            return;
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    let text = e.to_string();
    if text.is_empty() { format!("{e:?}") } else { text }
}

/// The window's clock: tokio's, so that paused test time reaches it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The uplink: build it, give it its channels, [`Uplink::run`] it.
pub struct Uplink {
    settings: UplinkSettings,
    outbox: OutboxHandle,
    link_record: Option<PathBuf>,
    notices: Option<mpsc::Sender<UplinkNotice>>,
    positions: Option<watch::Receiver<Option<LivePosition>>>,
    routes: Option<watch::Sender<Option<RouteAssignment>>>,
    notes: Option<mpsc::Sender<StopNote>>,
    /// Issue time of the route the van already drives (kept from before a restart).
    kept_route_issued_ms: Option<i64>,
    agent_version: String,
    live: LiveConfig,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Uplink {
    /// An uplink for the outbox's device.
    pub fn new(settings: UplinkSettings, outbox: OutboxHandle) -> Self {
        Self {
            settings,
            outbox,
            link_record: None,
            notices: None,
            positions: None,
            routes: None,
            notes: None,
            kept_route_issued_ms: None,
            agent_version: AGENT_VERSION.to_owned(),
            live: LiveConfig::default(),
        }
    }

    /// Writes the link record for `status` at `path` (see [`crate::status::link_record_path`]).
    pub fn with_link_record(mut self, path: PathBuf) -> Self {
        self.link_record = Some(path);
        self
    }

    /// Connects the uplink to what `wiring` names besides its outbox (each field says
    /// what the uplink does with it).
    pub fn with_wiring(mut self, wiring: crate::daemon::UplinkWiring) -> Self {
        self.notices = wiring.notices;
        self.positions = wiring.positions;
        self.routes = wiring.routes;
        self.notes = wiring.notes;
        self.kept_route_issued_ms = wiring.kept_route_issued_ms;
        self.live = wiring.live;
        self
    }

    /// Overrides the agent version in the online state message.
    pub fn with_agent_version(mut self, version: impl Into<String>) -> Self {
        self.agent_version = version.into();
        self
    }

    /// Runs until `cancel` fires, then says goodbye (retained offline state, DISCONNECT)
    /// and returns. Errors only when the outbox is gone.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), UplinkError> {
        let device = self.outbox.device().clone();
        let s = &self.settings;
        let topic = |channel| Topic::new(s.fleet.clone(), device.clone(), channel).to_string();
        let mut options = MqttOptions::new(device.as_str(), s.host.clone(), s.port);
        options
            .set_keep_alive(s.keepalive)
            .set_clean_session(false)
            .set_inflight(s.inflight.saturating_add(8))
            .set_max_packet_size(MAX_HUB_LEN + 1024, MAX_CHUNK_LEN + 1024)
            .set_last_will(LastWill::new(
                topic(Channel::State),
                DeviceState::offline().to_bytes(),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(tls) = &s.tls {
            options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::clone(
                tls,
            ))));
        }
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(s.inflight) + REQUEST_HEADROOM);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(s.connect_timeout_s);
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);

        let (link_tx, link_rx) = mpsc::channel(LINK_EVENT_QUEUE);
        let stop_driver = CancellationToken::new();
        let driver = tokio::spawn(drive(
            eventloop,
            link_tx,
            stop_driver.clone(),
            (s.backoff_min, s.backoff_max),
            device.clone(),
        ));
        let (acked, _) = self.outbox.cursor().await?;
        let appends = self.outbox.watch_appends();
        let next_seq = *appends.borrow();
        let mut run = Run {
            topics: Topics {
                evt: topic(Channel::Evt),
                pos: topic(Channel::Pos),
                blob: topic(Channel::Blob),
                ack: topic(Channel::Ack),
                route: topic(Channel::Route),
                state: topic(Channel::State),
            },
            client,
            device,
            rng: SystemRandom::new(),
            window: Window::new(s.window(), acked, next_seq, now()),
            appends,
            record: LinkRecord {
                pid: std::process::id(),
                broker: format!("{}:{}", s.host, s.port),
                since_ms: wall_ms(),
                last_hub_ack_seq: acked,
                ..LinkRecord::default()
            },
            record_dirty: true,
            route_issued_ms: self.kept_route_issued_ms,
            latest: None,
            latest_at_ms: 0,
            pacer: LivePacer::new(self.live),
            started: Instant::now(),
            up: self,
        };
        let mut link_rx = link_rx;
        let result = run.main(&mut link_rx, &cancel).await;
        if run.goodbye() {
            // The driver ends once DISCONNECT is on the wire; keep reading so it never blocks.
            let drain = async { while link_rx.recv().await.is_some() {} };
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, drain).await;
        }
        stop_driver.cancel();
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, driver).await;
        run.record.link = LinkState::Stopped;
        run.record.since_ms = wall_ms();
        run.write_record().await;
        result
    }
}

struct Topics {
    evt: String,
    pos: String,
    blob: String,
    ack: String,
    route: String,
    state: String,
}

/// The uplink task's state.
struct Run {
    up: Uplink,
    topics: Topics,
    client: AsyncClient,
    device: DeviceId,
    rng: SystemRandom,
    /// What to send next: the event and photo windows, and whether the link is up.
    window: Window,
    appends: watch::Receiver<u64>,
    record: LinkRecord,
    record_dirty: bool,
    route_issued_ms: Option<i64>,
    latest: Option<LivePosition>,
    /// When `latest` reached the uplink, on [`Run::mono_ms`]'s clock.
    latest_at_ms: u64,
    /// Which fixes become the live position, and the hub's watches.
    pacer: LivePacer,
    /// The origin of the pacer's monotonic clock.
    started: Instant,
}

/// Waits for the live position to change; `None` once its sender is gone (and forever
/// pending when there is no position source).
async fn position_changed(
    positions: &mut Option<watch::Receiver<Option<LivePosition>>>,
) -> Option<Option<LivePosition>> {
    match positions {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

impl Run {
    async fn main(
        &mut self,
        link_rx: &mut mpsc::Receiver<Link>,
        cancel: &CancellationToken,
    ) -> Result<(), UplinkError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut positions = self.up.positions.take();
        loop {
            if self.window.is_connected() {
                match self.pump().await {
                    Err(OutboxError::Closed) => return Err(OutboxError::Closed.into()),
                    Err(e) => {
                        tracing::error!(device = %self.device, error = %e, "cannot read the outbox; retrying")
                    }
                    Ok(()) => {}
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                link = link_rx.recv() => match link {
                    Some(link) => {
                        self.on_link(link).await?;
                        // Take whatever else has arrived (a burst of PUBACKs) before
                        // publishing again: fewer wake-ups per event on a busy CPU.
                        for _ in 0..LINK_EVENT_QUEUE {
                            let Ok(link) = link_rx.try_recv() else { break };
                            self.on_link(link).await?;
                        }
                    }
                    None => return Ok(()),
                },
                changed = self.appends.changed() => {
                    if changed.is_err() {
                        return Err(OutboxError::Closed.into());
                    }
                }
                changed = position_changed(&mut positions) => match changed {
                    Some(latest) => {
                        self.latest = latest;
                        self.on_position();
                    }
                    None => positions = None,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    fn notice(&self, notice: UplinkNotice) {
        if let Some(tx) = &self.up.notices {
            let _ = tx.try_send(notice);
        }
    }

    async fn on_link(&mut self, link: Link) -> Result<(), UplinkError> {
        match link {
            Link::Up { session_present } => {
                tracing::info!(device = %self.device, session_present, resend_from = self.window.acked() + 1, "uplink connected");
                self.window.on_reconnect(now());
                let subscribed = self
                    .client
                    .try_subscribe(self.topics.ack.clone(), QoS::AtLeastOnce)
                    .and_then(|()| self.client.try_subscribe(self.topics.route.clone(), QoS::AtLeastOnce));
                if let Err(e) = subscribed {
                    tracing::error!(device = %self.device, error = %e, "cannot subscribe");
                }
                let depth = self.up.outbox.stats().await.map(|s| s.depth()).unwrap_or(0);
                let online = DeviceState::online(&self.up.agent_version, depth).to_bytes();
                if self.client.try_publish(self.topics.state.clone(), QoS::AtLeastOnce, true, online).is_ok()
                {
                    self.window.on_control_published();
                }
                // The hub's retained position may be from before the outage.
                self.publish_position("reconnected");
                self.set_link(LinkState::Up, None);
                self.notice(UplinkNotice::Connected { session_present });
            }
            Link::Down(reason) => {
                if self.window.is_connected() {
                    tracing::warn!(device = %self.device, reason, "uplink lost");
                }
                self.window.on_disconnect();
                self.set_link(LinkState::Down, Some(reason.clone()));
                self.notice(UplinkNotice::Disconnected { reason });
            }
            Link::PubAck => {
                self.window.on_puback();
                self.record.last_publish_ms = Some(wall_ms());
                self.record_dirty = true;
            }
            Link::Message { topic, payload } => self.on_message(&topic, &payload).await?,
        }
        Ok(())
    }

    fn set_link(&mut self, state: LinkState, error: Option<String>) {
        if self.record.link != state {
            self.record.since_ms = wall_ms();
        }
        self.record.link = state;
        if error.is_some() {
            self.record.last_error = error;
        }
        self.record_dirty = true;
    }

    fn refuse(&mut self, reason: String) {
        tracing::warn!(device = %self.device, reason, "hub message refused");
        self.record.rejected_hub_messages += 1;
        self.record_dirty = true;
        self.notice(UplinkNotice::Refused { reason });
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<(), UplinkError> {
        if topic != self.topics.ack && topic != self.topics.route {
            return Ok(());
        }
        if topic == self.topics.route && payload.is_empty() {
            return Ok(()); // A cleared retained route.
        }
        let message = match HubMessage::open(payload, &self.up.settings.hub_key) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(format!("{} on {topic}: {e}", e.reason()));
                return Ok(());
            }
        };
        if *message.device() != self.device {
            self.refuse(format!("message for device {} on our topic", message.device()));
            return Ok(());
        }
        match message {
            HubMessage::Ack(ack) => {
                if self.window.on_hub_ack(ack.up_to_seq, now()) {
                    // Applied on the outbox thread without waiting for it: publishing
                    // goes on meanwhile, and nothing at or below the ack is fetched
                    // again. If the delete fails, the rows stay until the next
                    // (cumulative) ack or a restart resends them; the hub dedupes.
                    let up_to_seq = ack.up_to_seq;
                    let device = self.device.clone();
                    let notices = self.up.notices.clone();
                    // The key re-signs the rest of a gap notice the ack falls inside.
                    let key = Arc::clone(self.up.outbox.key());
                    let applied = self.up.outbox.submit(move |outbox| match outbox.ack(&key, up_to_seq) {
                        Ok(deleted) => {
                            tracing::debug!(device = %device, seq = up_to_seq, deleted, "hub ack applied");
                            if let Some(tx) = notices {
                                let _ = tx.try_send(UplinkNotice::Acked { up_to_seq, deleted });
                            }
                        }
                        Err(e) => {
                            tracing::error!(device = %device, seq = up_to_seq, error = %e, "cannot apply hub ack");
                        }
                    });
                    applied.await?;
                    self.record.last_hub_ack_seq = up_to_seq;
                    self.record.last_hub_ack_ms = Some(wall_ms());
                    self.record_dirty = true;
                }
            }
            HubMessage::BlobAck(ack) => {
                let done = match self
                    .up
                    .outbox
                    .call(move |o| o.blob_ack(&ack.sha256, ack.next_index, ack.complete))
                    .await
                {
                    Ok(done) => done,
                    Err(OutboxError::Closed) => return Err(OutboxError::Closed.into()),
                    Err(e) => {
                        tracing::error!(device = %self.device, error = %e, "cannot apply photo ack");
                        return Ok(());
                    }
                };
                self.window.on_photo_ack(&ack.sha256, ack.next_index, done, now());
                if done {
                    self.notice(UplinkNotice::PhotoDelivered { sha256: ack.sha256 });
                }
            }
            HubMessage::Route(route) => {
                if self.route_issued_ms.is_some_and(|t| route.issued_ms <= t) {
                    tracing::info!(device = %self.device, issued_ms = route.issued_ms, "ignoring a route no newer than ours");
                    return Ok(());
                }
                self.route_issued_ms = Some(route.issued_ms);
                tracing::info!(device = %self.device, route = %route.route.route_id, "route received");
                if let Some(tx) = &self.up.routes {
                    tx.send_replace(Some(route));
                }
            }
            HubMessage::Watch(watch) => self.on_watch(&watch),
            HubMessage::StopNote(note) => {
                tracing::info!(device = %self.device, route = %note.route_id, stop = %note.stop_id, "stop note received");
                if let Some(tx) = &self.up.notes
                    && let Err(mpsc::error::TrySendError::Full(note)) = tx.try_send(note)
                {
                    tracing::warn!(device = %self.device, route = %note.route_id, stop = %note.stop_id, "stop note dropped: the brain is busy; the hub sends it again with the route");
                }
            }
        }
        Ok(())
    }

    /// Publishes as much as the windows allow: events first, then photo chunks.
    async fn pump(&mut self) -> Result<(), OutboxError> {
        loop {
            self.window.on_appended(*self.appends.borrow());
            match self.window.next_to_send(now()) {
                Next::Publish { seq, wire } => {
                    match self.client.try_publish(self.topics.evt.clone(), QoS::AtLeastOnce, false, wire) {
                        Ok(()) => tracing::trace!(device = %self.device, seq, "published"),
                        Err(e) => {
                            // The request queue is full (the link is going down): resend later.
                            tracing::debug!(device = %self.device, seq, error = %e, "publish deferred");
                            self.window.on_publish_refused();
                            break;
                        }
                    }
                }
                Next::Fetch { after } => {
                    let rows = self.up.outbox.pending(after, FETCH_BATCH).await?;
                    let empty = rows.is_empty();
                    self.window.on_fetched(rows);
                    if empty {
                        break;
                    }
                }
                Next::Wait => break,
            }
        }
        self.pump_photo().await
    }

    async fn pump_photo(&mut self) -> Result<(), OutboxError> {
        self.window.on_appended(*self.appends.borrow());
        if self.window.take_photo_lookup() {
            let found = self.up.outbox.call(|o| o.next_photo()).await?;
            self.window.on_photo_found(found, now());
        }
        let Some(want) = self.window.photo_chunks_wanted() else { return Ok(()) };
        let photo = want.photo;
        let chunks = self.up.outbox.call(move |o| o.photo_chunks(&photo, want.from, want.limit)).await?;
        for chunk in chunks {
            let index = chunk.index;
            let Ok(bytes) = chunk.encode() else {
                tracing::error!(device = %self.device, sha256 = %photo.sha256, index, "stored photo chunk is inconsistent");
                break;
            };
            if self.client.try_publish(self.topics.blob.clone(), QoS::AtLeastOnce, false, bytes).is_err() {
                break;
            }
            self.window.on_chunk_sent(index, now());
        }
        Ok(())
    }

    /// Milliseconds since the uplink started: the live position's clock (tokio's, so
    /// paused test time reaches it).
    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The van's GNSS time now: the newest fix's time plus the time since it arrived.
    fn gnss_now_ms(&self, now_ms: u64) -> Option<i64> {
        let live = self.latest?;
        let since = i64::try_from(now_ms.saturating_sub(self.latest_at_ms)).unwrap_or(i64::MAX);
        Some(live.fix.utc_ms.saturating_add(since))
    }

    /// A new fix: kept for `status`, and sent if the pacer says so.
    fn on_position(&mut self) {
        let Some(live) = self.latest else { return };
        let now = self.mono_ms();
        self.latest_at_ms = now;
        self.record.last_fix = Some(FixRecord {
            utc_ms: live.fix.utc_ms,
            lat: live.fix.lat(),
            lon: live.fix.lon(),
            seen_ms: wall_ms(),
        });
        self.record_dirty = true;
        self.expire_watches(now);
        if let Some(reason) = self.pacer.on_fix(&live.fix, now) {
            self.publish_position(reason.as_str());
        }
    }

    /// A verified watch for this device: someone looks at the van.
    fn on_watch(&mut self, watch: &doorstep_proto::Watch) {
        let now = self.mono_ms();
        match self.pacer.on_watch(watch, now, self.gnss_now_ms(now)) {
            WatchOutcome::Started { until_ms } => {
                tracing::info!(device = %self.device, for_s = watch.for_s, every_s = watch.every_s, left_s = until_ms.saturating_sub(now) / 1000, "watch received: sending the live position often");
                self.record_watch(now);
                self.notice(UplinkNotice::Watch { every_s: watch.every_s, started: true });
                if self.pacer.due(now).is_some() {
                    self.publish_position("watch_started");
                }
            }
            WatchOutcome::AlreadyOver { ended_ms_ago } => {
                tracing::info!(device = %self.device, for_s = watch.for_s, issued_ms = watch.issued_ms, ended_s_ago = ended_ms_ago / 1000, "watch arrived after it ended; ignored");
                self.notice(UplinkNotice::Watch { every_s: watch.every_s, started: false });
            }
        }
    }

    /// Forgets the watches that ended by `now`, link up or down.
    fn expire_watches(&mut self, now: u64) {
        if self.pacer.expire(now) {
            if self.pacer.watched(now).is_none() {
                tracing::info!(device = %self.device, "watch ended: the live position is back at its adaptive pace");
                self.notice(UplinkNotice::WatchEnded);
            }
            self.record_watch(now);
        }
    }

    /// Puts the running watch, if any, in the link record for `status`.
    fn record_watch(&mut self, now: u64) {
        self.record.watch = self.pacer.watched(now).map(|w| WatchRecord {
            every_s: w.every_s,
            until_ms: wall_ms()
                .saturating_add(i64::try_from(w.until_ms.saturating_sub(now)).unwrap_or(i64::MAX)),
        });
        self.record_dirty = true;
    }

    /// Sends the newest fix as the live position, when the link is up; `reason` says why
    /// (the pacer's reason, a reconnect, a watch starting).
    fn publish_position(&mut self, reason: &'static str) {
        let Some(live) = self.latest else { return };
        if !self.window.is_connected() {
            return;
        }
        let mut id = [0u8; 16];
        if self.rng.fill(&mut id).is_err() {
            return;
        }
        // Seq 0: a live position is not part of the numbered event stream; the hub shows
        // it and stores nothing (the trail travels as numbered Position events).
        let envelope = Envelope {
            device: self.device.clone(),
            seq: 0,
            event_id: HexBytes(id),
            gnss_utc_ms: live.fix.utc_ms,
            mono_ms: live.mono_ms,
            event: Event::Position(live.fix),
        };
        match envelope.seal(self.up.outbox.key()) {
            Ok(wire) => {
                // Newest-only: if the queue is full this one is skipped; the next replaces it.
                if self.client.try_publish(self.topics.pos.clone(), QoS::AtMostOnce, true, wire).is_ok() {
                    let now = self.mono_ms();
                    self.pacer.on_sent(&live.fix, now);
                    self.record.live_positions_sent += 1;
                    self.record.last_live_ms = Some(wall_ms());
                    self.record_dirty = true;
                    tracing::debug!(device = %self.device, reason, "live position sent");
                }
            }
            Err(e) => tracing::error!(device = %self.device, error = %e, "cannot seal the live position"),
        }
    }

    async fn on_tick(&mut self) {
        self.expire_watches(self.mono_ms());
        let resend = self.window.on_tick(now());
        if let Some(stall) = resend.events {
            tracing::warn!(
                device = %self.device,
                acked = stall.acked,
                published_up_to = stall.published_up_to,
                "hub ack stalled; resending everything above it"
            );
        }
        if let Some(sha256) = resend.photo {
            tracing::warn!(device = %self.device, sha256 = %sha256, "photo ack stalled; resending chunks");
        }
        if self.record_dirty || wall_ms() - self.record.updated_ms >= 1_000 {
            self.write_record().await;
        }
    }

    async fn write_record(&mut self) {
        let Some(path) = self.up.link_record.clone() else { return };
        self.record.updated_ms = wall_ms();
        self.record_dirty = false;
        let record = self.record.clone();
        let written = tokio::task::spawn_blocking(move || record.write(&path)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(device = %self.device, error = %e, "cannot write the link record");
        }
    }

    /// Publishes the offline state and DISCONNECT; returns whether there was a link to
    /// say goodbye on.
    fn goodbye(&mut self) -> bool {
        if !self.window.is_connected() {
            return false;
        }
        // A clean disconnect suppresses the will, so say offline ourselves.
        let offline = DeviceState::offline().to_bytes();
        let _ = self.client.try_publish(self.topics.state.clone(), QoS::AtLeastOnce, true, offline);
        let _ = self.client.try_disconnect();
        tracing::info!(device = %self.device, "uplink disconnecting");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> FleetId {
        FleetId::new("acme").expect("id")
    }

    #[test]
    fn config_defaults_suit_a_cellular_link_and_unknown_fields_are_refused() {
        let hub = doorstep_proto::SigningKey::from_seed(&[5; 32]).expect("seed").public_key();
        let text = format!("host = \"broker.example\"\nfleet = \"acme\"\nhub_key = \"{hub}\"\n");
        let cfg: UplinkConfig = toml_like(&text);
        let settings = cfg.validate().expect("valid");
        assert_eq!(settings.port, 1883);
        assert_eq!(settings.keepalive, Duration::from_secs(180), "below a 4-minute carrier NAT timeout");
        assert_eq!(settings.hub_key, hub);
        let bad = serde_json::from_str::<UplinkConfig>(
            r#"{"host":"h","fleet":"acme","hub_key":"x","keepalive":5}"#,
        );
        assert!(bad.is_err());
    }

    /// Parses the tiny `key = "value"` subset used above through serde_json, so the test
    /// needs no TOML dependency.
    fn toml_like(text: &str) -> UplinkConfig {
        let map: serde_json::Map<String, serde_json::Value> = text
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.trim_matches('"').to_owned())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).expect("config")
    }

    #[test]
    fn a_bad_hub_key_or_missing_tls_file_is_a_clear_error() {
        let mut cfg = UplinkConfig::plain(
            "h",
            1,
            fleet(),
            &doorstep_proto::SigningKey::from_seed(&[5; 32]).expect("seed").public_key(),
        );
        cfg.hub_key = "ed25519:00".into();
        assert!(matches!(cfg.validate(), Err(UplinkError::HubKey(_))));
        cfg.hub_key = "/nonexistent/hub.pub".into();
        assert!(cfg.validate().expect_err("missing").to_string().contains("cannot read hub key file"));
        let mut cfg = UplinkConfig::plain(
            "h",
            1,
            fleet(),
            &doorstep_proto::SigningKey::from_seed(&[5; 32]).expect("seed").public_key(),
        );
        cfg.tls = Some(TlsFiles { ca: "/nonexistent/ca.pem".into(), cert: None, key: None });
        let err = cfg.validate().expect_err("missing CA");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
