//! `doorstep-agent run`: the in-cab daemon, wiring the pure decisions to real devices.
//!
//! ```text
//! GPS serial ─► gps::run_serial ─► Fix ─┐
//! scanner serial ─► driver::read_scanner ─┤           ┌─► outbox (SQLite, signed)
//! driver socket ─► driver::serve ─► Job ──┼─► brain ──┤
//! route (file, hub) ──────────────────────┘  (Gate +  └─► reply to the driver
//!                                             Decider)
//! ```
//!
//! The brain is the only task that decides. It answers a driver's scan only after the
//! confirmation is in the outbox, so "delivered" on the driver's screen means "stored, and
//! will reach the hub". Scans are stamped with GNSS time: the last good fix's time plus
//! the monotonic time since that fix arrived (vans often have no real-time clock).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use doorstep_proto::{RouteAssignment, RouteManifest, SigningKey, StopNote};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::decide::{Decided, Decider, Instruction, Reply};
use crate::driver::{self, Action, DriverCounters, Job, REQUEST_QUEUE};
use crate::fix::{Fix, format_utc_ms};
use crate::gate::{Gate, Verdict};
use crate::gps::{self, Backoff, Decoder, DecoderConfig, LinkStats, SerialConfig};
use crate::notes::{NoteOutcome, StopNotes};
use crate::outbox::OutboxError;
use crate::outbox::{Outbox, OutboxConfig, OutboxHandle};
use crate::uplink::{LivePosition, Uplink, UplinkError, UplinkNotice, UplinkSettings};
use crate::watchdog::{self, Heartbeat, Heartbeats};

/// Fixes waiting for the brain: a few seconds of 10 Hz output.
pub const FIX_QUEUE: usize = 64;
/// Routes waiting for the brain.
pub const ROUTE_QUEUE: usize = 4;
/// Stop notes waiting for the brain: a route's worth arrive together when the hub
/// publishes it again (more are dropped and come again with the next publish).
pub const NOTE_QUEUE: usize = 256;
/// How often the brain rewrites its state file for `doorstep-agent status`.
pub const STATE_INTERVAL: Duration = Duration::from_secs(2);
/// Name of the brain's state file in the state directory.
pub const BRAIN_STATE_FILE: &str = "decisions.json";
/// Name of the route progress file in the state directory, as earlier agents kept it.
/// Progress now lives in the outbox, committed with the events it decides; the file is
/// read only when the outbox has none (the first start after an upgrade).
pub const PROGRESS_FILE: &str = "progress.json";
/// The outbox state that holds the route progress ([`crate::decide::Progress`] as JSON).
pub const PROGRESS_STATE: &str = "route_progress";
/// The outbox state that holds the last route assignment the hub sent, verified (JSON,
/// with its issue time so an older retained route cannot replace it after a restart).
pub const ROUTE_STATE: &str = "hub_route";
/// The outbox state that holds the customers' delivery instructions the hub sent
/// ([`StopNotes`] as JSON), so a restart keeps them with the route.
pub const NOTES_STATE: &str = "stop_notes";

/// Why the brain could not store a decided event; the driver is told to keep the parcel.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The route progress could not be encoded (a bug, never the driver's doing).
    #[error("route progress cannot be encoded: {0}")]
    Progress(serde_json::Error),
    /// The outbox refused the event (full, disk full, closed).
    #[error(transparent)]
    Outbox(OutboxError),
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The key file is missing or invalid.
    #[error("device key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The route file is missing or invalid.
    #[error("route file {path}: {message}")]
    Route {
        /// The route file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state directory could not be created.
    #[error("state directory {path}: {source}; create it and give the agent's user write access")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The outbox could not be opened.
    #[error("outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    /// The driver socket could not be created.
    #[error("driver socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Loads the device's signing key.
pub fn load_key(path: &std::path::Path) -> Result<SigningKey, DaemonError> {
    doorstep_runtime::keyfile::load(path).map_err(|e| match e {
        doorstep_runtime::keyfile::KeyFileError::Io { source, .. } => DaemonError::Key {
            path: path.to_owned(),
            message: format!("{source}; create it with `doorstep-agent keygen --key {}`", path.display()),
        },
        other => DaemonError::Key { path: path.to_owned(), message: other.to_string() },
    })
}

/// The brain's view for `status`, written to [`BRAIN_STATE_FILE`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BrainState {
    /// When this file was written (GNSS-derived time when known).
    pub written_utc: Option<String>,
    /// The last good fix.
    pub last_fix: Option<FixState>,
    /// The loaded route.
    pub route_id: Option<String>,
    /// Stops of the route with parcels left.
    pub stops_with_parcels_left: usize,
    /// Parcels of the route with customers' delivery instructions in force.
    #[serde(default)]
    pub stop_notes: usize,
    /// Events stored in the outbox since start.
    pub events_stored: u64,
    /// Events that could not be stored (outbox full, disk full): must stay 0.
    pub store_failures: u64,
    /// Decision counters.
    pub decisions: std::collections::BTreeMap<String, u64>,
    /// Gate refusals by reason.
    pub gated: std::collections::BTreeMap<String, u64>,
    /// Driver-side counters.
    pub driver: std::collections::BTreeMap<String, u64>,
}

/// The last good fix in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixState {
    /// GNSS UTC of the fix.
    pub time: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Estimated accuracy, m.
    pub accuracy_m: f64,
    /// Seconds since the fix arrived (monotonic).
    pub age_s: f64,
}

/// The decision task: gate, decider, outbox. Owns all decision state.
#[derive(Debug)]
pub struct Brain {
    gate: Gate,
    decider: Decider,
    outbox: OutboxHandle,
    started: Instant,
    last_fix_at: Option<Instant>,
    events_stored: u64,
    store_failures: u64,
    live: watch::Sender<Option<LivePosition>>,
    /// The progress as last committed, to restore when its route is loaded again.
    saved_progress: Option<crate::decide::Progress>,
    /// Customers' delivery instructions for the route's stops, as the hub sent them.
    notes: StopNotes,
    heartbeat: Option<Heartbeat>,
}

impl Brain {
    /// A brain storing into `outbox`; the newest good fix goes to `live` for tracking.
    pub fn new(
        gate: Gate,
        decider: Decider,
        outbox: OutboxHandle,
        live: watch::Sender<Option<LivePosition>>,
    ) -> Self {
        Self {
            gate,
            decider,
            outbox,
            started: Instant::now(),
            last_fix_at: None,
            events_stored: 0,
            store_failures: 0,
            live,
            saved_progress: None,
            notes: StopNotes::default(),
            heartbeat: None,
        }
    }

    /// Restores the delivery instructions kept before a restart; those of another route
    /// than the one loaded are dropped.
    pub fn with_notes(mut self, mut notes: StopNotes) -> Self {
        if let Some(route) = self.decider.route() {
            notes.on_route(&route.route_id);
        }
        if !notes.is_empty() {
            tracing::info!(kept = notes.len(), "stop notes restored");
        }
        self.notes = notes;
        self
    }

    /// Restores the route's progress as last committed (from the outbox, or from an
    /// earlier agent's progress file), so a restart neither repeats a nearby nor counts a
    /// parcel twice.
    pub fn with_progress(mut self, progress: Option<crate::decide::Progress>) -> Self {
        if let Some(progress) = progress {
            if self.decider.restore(progress.clone()) {
                tracing::info!("route progress restored");
            }
            self.saved_progress = Some(progress);
        }
        self
    }

    /// Beats `heartbeat` from the brain's own loop, so the systemd watchdog is petted only
    /// while the brain really turns (see [`crate::watchdog`]).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// GNSS UTC now: the last fix's time plus the monotonic time since it arrived.
    fn gnss_now_ms(&self) -> Option<i64> {
        let fix = self.decider.last_fix()?;
        let since = self.last_fix_at?.elapsed().as_millis();
        Some(fix.utc_ms.saturating_add(i64::try_from(since).unwrap_or(i64::MAX)))
    }

    /// Stores decided events, in order. Every confirmation commits the route progress
    /// with it, in one transaction: the progress that makes a second scan of a parcel a
    /// duplicate is never behind the confirmation it follows from. A trail batch commits
    /// none: it goes just before the confirmation whose decision already moved the
    /// progress, and must not carry that progress to disk ahead of it.
    ///
    /// A trail batch that cannot be stored is logged and counted, and the events after it
    /// are still tried: the confirmation behind it may fit where the batch did not (on a
    /// full disk a confirmation evicts trail rows to make room, a batch does not). The
    /// error returned is a confirmation's.
    async fn store(&mut self, decided: Vec<Decided>) -> Result<(), StoreError> {
        for d in decided {
            let kind = d.event.kind();
            let confirmation = d.event.is_confirmation();
            let progress = confirmation.then(|| self.decider.progress());
            let state = match &progress {
                Some(p) => Some((PROGRESS_STATE, serde_json::to_vec(p).map_err(StoreError::Progress)?)),
                None => None,
            };
            match self.outbox.append_with_state(d.event, d.utc_ms, self.mono_ms(), state).await {
                Ok(appended) => {
                    self.events_stored += 1;
                    tracing::info!(seq = appended.seq, kind, "event stored");
                    if progress.is_some() {
                        self.saved_progress = progress;
                    }
                }
                Err(e) => {
                    self.store_failures += 1;
                    tracing::error!(kind, error = %e, "EVENT NOT STORED");
                    if confirmation {
                        return Err(StoreError::Outbox(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles one fix from the receiver.
    pub async fn on_fix(&mut self, fix: &Fix) {
        if let Verdict::Accept(good) = self.gate.check(fix) {
            self.last_fix_at = Some(Instant::now());
            let live = LivePosition { fix: crate::decide::evidence(&good), mono_ms: self.mono_ms() };
            self.live.send_replace(Some(live));
            let decided = self.decider.on_fix(&good);
            // A failed store is logged and counted inside; fixes keep flowing.
            let _ = self.store(decided).await;
        }
    }

    /// Loads a route (from the hub, already verified under the hub key and kept in the
    /// outbox by the hand-off in [`start_uplink`]).
    pub async fn on_route(&mut self, route: RouteManifest) {
        tracing::info!(route = %route.route_id, stops = route.stops.len(), "route loaded");
        let dropped = self.notes.on_route(&route.route_id);
        self.decider.load_route(route);
        if let Some(progress) = self.saved_progress.clone() {
            self.decider.restore(progress);
        }
        if dropped > 0 {
            tracing::info!(dropped, "stop notes of the previous route dropped");
            self.keep_notes().await;
        }
    }

    /// Takes a customer's delivery instructions for a stop (verified by the uplink under
    /// the hub key) and keeps them for a restart.
    pub async fn on_note(&mut self, note: StopNote, counters: &DriverCounters) {
        let outcome = self.notes.on_note(&note);
        counters.count(outcome.as_str());
        tracing::info!(route = %note.route_id, stop = %note.stop_id, chars = note.text.chars().count(), outcome = outcome.as_str(), "stop note");
        if outcome == NoteOutcome::Kept {
            self.keep_notes().await;
        }
    }

    /// Writes the notes to the outbox's state. A failure is logged: the notes stay shown
    /// until a restart, and the hub sends them again with the route.
    async fn keep_notes(&self) {
        match serde_json::to_vec(&self.notes) {
            Ok(bytes) => {
                if let Err(e) = self.outbox.set_state(NOTES_STATE, bytes).await {
                    tracing::warn!(error = %e, "stop notes could not be kept for a restart");
                }
            }
            Err(e) => tracing::warn!(error = %e, "stop notes could not be encoded to keep"),
        }
    }

    /// The instructions for stop `stop_id` of the loaded route.
    fn instructions_for(&self, stop_id: &doorstep_proto::StopId) -> Vec<Instruction> {
        let Some(route) = self.decider.route() else { return Vec::new() };
        self.notes
            .for_stop(&route.route_id, stop_id)
            .map(|(tn, text)| Instruction {
                stop_id: stop_id.to_string(),
                tracking_number: tn.to_string(),
                text: text.to_owned(),
            })
            .collect()
    }

    /// Adds the instructions for the stop a reply is about, with a sentence for the
    /// driver's screen.
    fn with_instructions(&self, mut reply: Reply, stop_id: Option<&doorstep_proto::StopId>) -> Reply {
        if let Some(stop_id) = stop_id {
            reply.instructions = self.instructions_for(stop_id);
        }
        for i in &reply.instructions {
            reply
                .message
                .push_str(&format!(" Customer's instructions for {}: {}", i.tracking_number, i.text));
        }
        reply
    }

    /// Handles one driver request and returns the reply.
    pub async fn on_action(&mut self, action: Action, counters: &DriverCounters) -> Reply {
        let now = self.gnss_now_ms();
        let (reply, decided, photo_path) = match action {
            Action::Status => return self.status_reply(),
            Action::Scan { code, photo, photo_path } => {
                let (reply, decided) = self.decider.on_scan(now.unwrap_or(0), &code, photo);
                let stop = reply.stop_id.as_deref().and_then(|s| doorstep_proto::StopId::new(s).ok());
                (self.with_instructions(reply, stop.as_ref()), decided, photo_path)
            }
            Action::Exception { report, photo_path } => {
                let (reply, decided) = self.decider.on_exception(now.unwrap_or(0), report);
                (reply, decided, photo_path)
            }
        };
        if decided.is_empty() {
            return reply;
        }
        if let (Some(path), Some(photo)) = (photo_path, decided.iter().find_map(photo_of)) {
            // The photo is stored before the confirmation that names it, so the hub can
            // always fetch what a confirmation promises.
            let stored = match tokio::fs::read(&path).await {
                Ok(bytes) => self.outbox.add_photo(photo.sha256, bytes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = stored {
                counters.count("photo_not_stored");
                // The trail batch that went with it is still the van's trail.
                let trail = decided.into_iter().filter(|d| !d.event.is_confirmation()).collect();
                let _ = self.store(trail).await;
                return Reply::refused(
                    "photo_unusable",
                    format!(
                        "Photo {} could not be kept ({e}); nothing was recorded, scan again",
                        path.display()
                    ),
                );
            }
        }
        crate::failpoint::hit("scan_decided");
        match self.store(decided).await {
            Ok(()) => {
                crate::failpoint::hit("scan_stored");
                reply
            }
            Err(e) => Reply::refused(
                "not_stored",
                format!("The agent could not store this ({e}). Keep the parcel and call dispatch"),
            ),
        }
    }

    /// On a graceful stop: stores the trail batch being accumulated, so a stop loses no
    /// trail (only a crash or power cut loses the batch in memory).
    pub async fn on_stop(&mut self) {
        if let Some(batch) = self.decider.flush_trail() {
            let _ = self.store(vec![batch]).await;
        }
    }

    fn status_reply(&self) -> Reply {
        let mut reply = Reply::refused("status", String::new());
        reply.ok = true;
        let fix = match self.last_fix_at {
            Some(at) => format!("GPS fix {:.0} s old", at.elapsed().as_secs_f64()),
            None => "no GPS fix yet".to_owned(),
        };
        let route =
            self.decider.route().map_or("no route loaded".to_owned(), |r| format!("route {}", r.route_id));
        reply.message = format!("{route}; {fix}; {} event(s) stored since start", self.events_stored);
        let next = self.decider.next_stop().map(|s| s.stop_id.clone());
        if let Some(stop) = &next {
            reply.stop_id = Some(stop.to_string());
            reply.message.push_str(&format!("; next stop {stop}."));
        }
        self.with_instructions(reply, next.as_ref())
    }

    /// The state for the status file.
    pub fn state(&self, driver: &DriverCounters) -> BrainState {
        BrainState {
            written_utc: self.gnss_now_ms().map(format_utc_ms),
            last_fix: self.decider.last_fix().zip(self.last_fix_at).map(|(f, at)| FixState {
                time: format_utc_ms(f.utc_ms),
                lat: f.lat,
                lon: f.lon,
                accuracy_m: f.accuracy_m,
                age_s: at.elapsed().as_secs_f64(),
            }),
            route_id: self.decider.route().map(|r| r.route_id.to_string()),
            stops_with_parcels_left: self.decider.stops_with_parcels_left(),
            stop_notes: self.decider.route().map_or(0, |r| self.notes.in_force(&r.route_id)),
            events_stored: self.events_stored,
            store_failures: self.store_failures,
            decisions: self.decider.counters().iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            gated: self.gate.stats().rejections().map(|(r, n)| (r.as_str().to_owned(), n)).collect(),
            driver: driver.snapshot().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }
}

fn photo_of(decided: &Decided) -> Option<doorstep_proto::PhotoRef> {
    use doorstep_proto::Event;
    match &decided.event {
        Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => d.photo,
        Event::Exception(e) => e.photo,
        _ => None,
    }
}

/// Writes `value` as JSON to `path` atomically, so `status` never reads half a file.
/// Not fsync'd: it is rewritten every few seconds and only describes.
pub fn write_json_atomically(path: &std::path::Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    crate::util::write_atomic(path, &text, false)
}

/// What flows into the brain.
#[derive(Debug)]
pub struct BrainInputs {
    /// Fixes from the receiver.
    pub fixes: mpsc::Receiver<Fix>,
    /// Routes from the hub (or the route file).
    pub routes: mpsc::Receiver<RouteManifest>,
    /// The hub's stop notes.
    pub notes: mpsc::Receiver<StopNote>,
    /// The driver's requests.
    pub jobs: mpsc::Receiver<Job>,
}

/// The brain's loop: fixes, routes, stop notes and driver jobs in; until cancelled.
pub async fn run_brain(
    mut brain: Brain,
    inputs: BrainInputs,
    driver_counters: DriverCounters,
    state_path: PathBuf,
    cancel: CancellationToken,
) {
    let BrainInputs { mut fixes, mut routes, mut notes, mut jobs } = inputs;
    let mut tick = tokio::time::interval(STATE_INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(fix) = fixes.recv() => brain.on_fix(&fix).await,
            Some(route) = routes.recv() => brain.on_route(route).await,
            Some(note) = notes.recv() => brain.on_note(note, &driver_counters).await,
            Some(job) = jobs.recv() => {
                let reply = brain.on_action(job.action, &driver_counters).await;
                let _ = job.reply.send(reply);
            }
            _ = tick.tick() => {
                if let Some(heartbeat) = &brain.heartbeat {
                    heartbeat.beat();
                }
                let state = brain.state(&driver_counters);
                let path = state_path.clone();
                let _ = tokio::task::spawn_blocking(move || write_json_atomically(&path, &state)).await;
            }
        }
    }
    brain.on_stop().await;
    let state = brain.state(&driver_counters);
    let _ = tokio::task::spawn_blocking(move || write_json_atomically(&state_path, &state)).await;
}

/// Everything `run` started, for the caller to add the uplink and wait on.
#[derive(Debug)]
pub struct Running {
    /// The outbox, shared with the uplink.
    pub outbox: OutboxHandle,
    /// Where hub routes go.
    pub routes: mpsc::Sender<RouteManifest>,
    /// Where the hub's stop notes go.
    pub notes: mpsc::Sender<StopNote>,
    /// The newest good fix, for the uplink's live position.
    pub live: watch::Receiver<Option<LivePosition>>,
    /// The tasks.
    pub tasks: TaskTracker,
    /// The brain's and the GPS reader's heartbeats, for the systemd watchdog.
    pub heartbeats: Heartbeats,
    /// Issue time of the hub route kept from before a restart, if any.
    pub kept_route_issued_ms: Option<i64>,
}

/// Reads decision state `name` from the outbox; a read error is logged and counts as none.
fn read_state(outbox: &Outbox, name: &str) -> Option<Vec<u8>> {
    outbox.state(name).unwrap_or_else(|e| {
        tracing::warn!(error = %e, state = name, "outbox state unreadable");
        None
    })
}

/// Starts the agent's tasks: GPS, scanner, driver socket, brain. Returns once they run.
pub async fn start(
    config: &Config,
    key: Arc<SigningKey>,
    cancel: CancellationToken,
) -> Result<Running, DaemonError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| DaemonError::StateDir { path: config.state_dir.clone(), source })?;
    // With the public key, rows rescued from a corrupt file are kept only if their
    // signature still verifies: a damaged row would otherwise stall the hub's ack.
    let outbox_config = OutboxConfig::new(config.device.clone())
        .with_limits(&config.outbox)
        .with_public_key(key.public_key());
    let outbox = Outbox::open(&config.outbox_path(), outbox_config)?;
    let kept_route = read_state(&outbox, ROUTE_STATE).and_then(|bytes| {
        match serde_json::from_slice::<doorstep_proto::RouteAssignment>(&bytes) {
            Ok(assignment) if assignment.device == config.device && assignment.route.validate().is_ok() => {
                Some(assignment)
            }
            Ok(_) => {
                tracing::warn!("kept hub route is not for this device or invalid; waiting for the hub");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "kept hub route unreadable; waiting for the hub to send it");
                None
            }
        }
    });
    let notes = read_state(&outbox, NOTES_STATE)
        .and_then(|bytes| match serde_json::from_slice::<StopNotes>(&bytes) {
            Ok(notes) => Some(notes),
            Err(e) => {
                tracing::warn!(error = %e, "kept stop notes unreadable; the hub sends them again with the route");
                None
            }
        })
        .unwrap_or_default();
    let progress = read_state(&outbox, PROGRESS_STATE)
        .or_else(|| std::fs::read(config.state_dir.join(PROGRESS_FILE)).ok())
        .and_then(|bytes| match serde_json::from_slice::<crate::decide::Progress>(&bytes) {
            Ok(progress) => Some(progress),
            Err(e) => {
                tracing::warn!(error = %e, "route progress unreadable; starting afresh");
                None
            }
        });
    let outbox = outbox.spawn(key)?;
    let tasks = TaskTracker::new();
    let (fix_tx, fix_rx) = mpsc::channel(FIX_QUEUE);
    let (route_tx, route_rx) = mpsc::channel(ROUTE_QUEUE);
    let (note_tx, note_rx) = mpsc::channel(NOTE_QUEUE);
    let (job_tx, job_rx) = mpsc::channel(REQUEST_QUEUE);
    let counters = DriverCounters::default();

    let mut decider = Decider::new(config.geofence.clone())
        .with_nearby_lookahead(config.nearby_lookahead)
        .with_trail(config.trail);
    if let Some(path) = &config.route_file {
        let bytes = std::fs::read(path)
            .map_err(|e| DaemonError::Route { path: path.clone(), message: e.to_string() })?;
        let route = RouteManifest::from_json(&bytes)
            .map_err(|e| DaemonError::Route { path: path.clone(), message: e.to_string() })?;
        decider.load_route(route);
    }
    // The last route the hub sent wins over the configured file: it is the newer word,
    // and the broker that carried it may have lost it since.
    let kept_route_issued_ms = kept_route.as_ref().map(|a| a.issued_ms);
    if let Some(assignment) = kept_route {
        tracing::info!(route = %assignment.route.route_id, "route kept from before the restart loaded");
        decider.load_route(assignment.route);
    }

    // The driver socket: replace a stale socket file left by a crash.
    let socket = &config.driver_socket;
    if let Some(dir) = socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|source| DaemonError::Socket { path: socket.clone(), source })?;
    tasks.spawn(driver::serve(listener, job_tx.clone(), counters.clone(), cancel.clone()));

    let gps_config =
        SerialConfig { path: config.gps.path.clone(), baud: config.gps.baud, backoff: Backoff::default() };
    let gps_cancel = cancel.clone();
    let mut heartbeats = Heartbeats::new();
    let gps_beat = heartbeats.register("gps");
    tasks.spawn(watchdog::keep_beating(gps_beat, async move {
        let mut decoder = Decoder::new(DecoderConfig::default());
        let mut link = LinkStats::default();
        let end = gps::run_serial(&gps_config, &mut decoder, &fix_tx, &gps_cancel, &mut link).await;
        tracing::info!(?end, "GPS reader stopped");
    }));

    if let Some(scanner) = config.scanner.clone() {
        let (jobs, counters, cancel) = (job_tx.clone(), counters.clone(), cancel.clone());
        tasks.spawn(async move { run_scanner(scanner, jobs, counters, cancel).await });
    }
    drop(job_tx);

    let (live_tx, live_rx) = watch::channel(None);
    let brain = Brain::new(Gate::new(config.gate), decider, outbox.clone(), live_tx)
        .with_progress(progress)
        .with_notes(notes)
        .with_heartbeat(heartbeats.register("brain"));
    tasks.spawn(run_brain(
        brain,
        BrainInputs { fixes: fix_rx, routes: route_rx, notes: note_rx, jobs: job_rx },
        counters,
        config.state_dir.join(BRAIN_STATE_FILE),
        cancel,
    ));
    Ok(Running {
        outbox,
        routes: route_tx,
        notes: note_tx,
        live: live_rx,
        tasks,
        heartbeats,
        kept_route_issued_ms,
    })
}

/// Starts the uplink to the hub when `[uplink]` is configured, with the hand-off of the
/// hub's routes (verified by the uplink under the hub key) to the brain. Returns whether
/// an uplink runs: without one, confirmations wait in the outbox until one is configured.
pub fn start_uplink(
    config: &Config,
    running: &Running,
    cancel: CancellationToken,
) -> Result<bool, crate::uplink::UplinkError> {
    let Some(uplink_config) = &config.uplink else {
        return Ok(false);
    };
    let settings = uplink_config.validate()?;
    let (route_tx, mut route_rx) = watch::channel(None);
    let wiring = UplinkWiring {
        positions: Some(running.live.clone()),
        routes: Some(route_tx),
        notes: Some(running.notes.clone()),
        kept_route_issued_ms: running.kept_route_issued_ms,
        live: config.live,
        ..UplinkWiring::default()
    };
    let link = spawn_uplink(settings, running.outbox.clone(), &config.outbox_path(), wiring, cancel.clone());
    running.tasks.spawn(async move {
        match link.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "uplink stopped"),
            Err(e) => tracing::error!(error = %e, "uplink task failed"),
        }
    });
    let routes = running.routes.clone();
    let outbox = running.outbox.clone();
    running.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = route_rx.changed() => if changed.is_err() { return },
            }
            let assignment = route_rx.borrow_and_update().clone();
            let Some(assignment) = assignment else { continue };
            // Kept before the brain drives it: after a restart the van has the route even
            // if the broker that carried it lost it.
            match serde_json::to_vec(&assignment) {
                Ok(bytes) => {
                    if let Err(e) = outbox.set_state(ROUTE_STATE, bytes).await {
                        tracing::warn!(error = %e, "route could not be kept for a restart");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "route could not be encoded to keep"),
            }
            if routes.send(assignment.route).await.is_err() {
                return;
            }
        }
    });
    Ok(true)
}

/// What an uplink is connected to besides its outbox. `run` hands the van's live
/// position in and the hub's routes out to the brain; a test or the soak binary reads
/// the notices.
#[derive(Debug, Default)]
pub struct UplinkWiring {
    /// Where the uplink reports what happened (best effort: a full channel, or nobody
    /// reading, drops them).
    pub notices: Option<mpsc::Sender<UplinkNotice>>,
    /// The live position: its newest value goes out on the `pos` topic when the live
    /// position's pace (`live`) says it is worth sending.
    pub positions: Option<watch::Receiver<Option<LivePosition>>>,
    /// Where verified routes for this device from the hub go (newest `issued_ms` wins).
    pub routes: Option<watch::Sender<Option<RouteAssignment>>>,
    /// Where verified stop notes (customers' delivery instructions) for this device from
    /// the hub go. The channel is bounded and never waited on: a note that finds it full
    /// is logged and dropped, and comes again with the route when the hub publishes it
    /// again.
    pub notes: Option<mpsc::Sender<StopNote>>,
    /// Issue time of the route kept from before a restart: a retained route no newer than
    /// it (a broker restored from an old backup) is ignored.
    pub kept_route_issued_ms: Option<i64>,
    /// When the live position is sent while nobody watches (`[live]`).
    pub live: crate::live::LiveConfig,
}

/// Starts the uplink over `outbox` (database at `db`) the way every agent runs it: the
/// link record that `status` reads beside the database, then the given wiring.
pub fn spawn_uplink(
    settings: UplinkSettings,
    outbox: OutboxHandle,
    db: &Path,
    wiring: UplinkWiring,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), UplinkError>> {
    let uplink = Uplink::new(settings, outbox)
        .with_link_record(crate::status::link_record_path(db))
        .with_wiring(wiring);
    tokio::spawn(uplink.run(cancel))
}

/// Opens the outbox at `db` (salvaging a damaged file as `run` does), starts its thread
/// signing with `key`, and starts the uplink over it: the outbox and uplink of `run`
/// without the GPS, the brain and the driver, for the end-to-end tests and the soak
/// binary.
pub async fn spawn_outbox_and_uplink(
    db: &Path,
    outbox_config: OutboxConfig,
    key: Arc<SigningKey>,
    settings: UplinkSettings,
    wiring: UplinkWiring,
    cancel: CancellationToken,
) -> Result<(OutboxHandle, tokio::task::JoinHandle<Result<(), UplinkError>>), OutboxError> {
    let path = db.to_owned();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&path, outbox_config))
        .await
        .map_err(|e| OutboxError::Thread(std::io::Error::other(e.to_string())))??;
    let outbox = outbox.spawn(key)?;
    let uplink = spawn_uplink(settings, outbox.clone(), db, wiring, cancel);
    Ok((outbox, uplink))
}

/// Reads the barcode scanner, reopening it with backoff when it disappears.
async fn run_scanner(
    port: crate::config::SerialPort,
    jobs: mpsc::Sender<Job>,
    counters: DriverCounters,
    cancel: CancellationToken,
) {
    let backoff = Backoff::default();
    let mut delay = backoff.initial;
    while !cancel.is_cancelled() {
        let (path, baud) = (port.path.clone(), port.baud);
        match tokio::task::spawn_blocking(move || gps::SerialReader::open(&path, baud)).await {
            Ok(Ok(reader)) => {
                delay = backoff.initial;
                tracing::info!(device = %port.path.display(), "barcode scanner open");
                driver::read_scanner(reader, jobs.clone(), counters.clone(), cancel.clone()).await;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, retry_in = ?delay, "barcode scanner unavailable"),
            Err(e) => tracing::warn!(error = %e, "barcode scanner open task failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = backoff.next(delay);
    }
}

impl Running {
    /// Waits for every task to finish after cancellation.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.json");
        write_json_atomically(&path, &BrainState::default()).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"events_stored\": 0"), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "no temporary file is left");
    }

    /// A dated, valid fix `t_s` seconds into a slow drive.
    fn fix_at(t_s: i64) -> Fix {
        Fix { speed_mps: Some(1.1), ..crate::fix::clear_sky_fix(t_s, 48.1 + t_s as f64 * 0.000_01, 11.5) }
    }

    fn note(route: &str, stop: &str, tn: &str, text: &str, issued_ms: i64) -> StopNote {
        StopNote {
            device: doorstep_proto::DeviceId::new("van-notes").expect("id"),
            issued_ms,
            route_id: doorstep_proto::RouteId::new(route).expect("id"),
            stop_id: doorstep_proto::StopId::new(stop).expect("id"),
            tracking_number: doorstep_proto::TrackingNumber::new(tn).expect("tn"),
            text: text.to_owned(),
        }
    }

    fn two_stop_route(route_id: &str) -> RouteManifest {
        RouteManifest::from_json(
            format!(
                r#"{{"route_id":"{route_id}","stops":[
                    {{"stop_id":"s1","lat":47.0,"lon":8.0,"tracking_numbers":["1ZNOTE0001"]}},
                    {{"stop_id":"s2","lat":47.01,"lon":8.0,"tracking_numbers":["1ZNOTE0002","1ZNOTE0003"]}}]}}"#
            )
            .as_bytes(),
        )
        .expect("route")
    }

    /// A brain with the default gate and geofence on a fresh outbox in `dir` for
    /// `device`, signing with key seed 9.
    fn test_brain(dir: &Path, device: &doorstep_proto::DeviceId) -> (Brain, OutboxHandle, Arc<SigningKey>) {
        let key = Arc::new(SigningKey::from_seed(&[9; 32]).expect("seed"));
        let outbox = Outbox::open(&dir.join("outbox.db"), OutboxConfig::new(device.clone()))
            .expect("open")
            .spawn(Arc::clone(&key))
            .expect("spawn");
        let (live, _live) = watch::channel(None);
        let decider = Decider::new(crate::geofence::GeofenceConfig::default());
        let brain = Brain::new(Gate::new(crate::gate::GateConfig::default()), decider, outbox.clone(), live);
        (brain, outbox, key)
    }

    /// `van-notes`'s brain with route `r1` loaded and the customers' `notes` on it.
    async fn notes_brain(dir: &Path, notes: &[StopNote], counters: &DriverCounters) -> (Brain, OutboxHandle) {
        let device = doorstep_proto::DeviceId::new("van-notes").expect("id");
        let (mut brain, outbox, _key) = test_brain(dir, &device);
        brain.on_route(two_stop_route("r1")).await;
        for note in notes {
            brain.on_note(note.clone(), counters).await;
        }
        (brain, outbox)
    }

    #[tokio::test]
    async fn the_drivers_status_shows_the_next_stops_instructions_and_a_restart_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counters = DriverCounters::default();
        let notes = [
            note("r1", "s1", "1ZNOTE0001", "Ring twice, dog is friendly", 10),
            note("r1", "s2", "1ZNOTE0003", "Neighbour at no. 12", 11),
        ];
        let (mut brain, outbox) = notes_brain(dir.path(), &notes, &counters).await;
        let reply = brain.on_action(Action::Status, &counters).await;
        assert!(reply.ok);
        assert_eq!(reply.stop_id.as_deref(), Some("s1"), "no stop done yet: s1 is next");
        assert_eq!(
            reply.instructions,
            [Instruction {
                stop_id: "s1".into(),
                tracking_number: "1ZNOTE0001".into(),
                text: "Ring twice, dog is friendly".into()
            }],
            "only the next stop's"
        );
        assert!(reply.message.contains("Ring twice, dog is friendly"), "{}", reply.message);
        let json = serde_json::to_string(&reply).expect("json");
        assert!(json.contains(r#""instructions":[{"stop_id":"s1","tracking_number":"1ZNOTE0001""#), "{json}");
        assert_eq!(brain.state(&counters).stop_notes, 2);
        assert_eq!(counters.snapshot().get("stop_note_kept"), Some(&2));

        // A restart: the notes come back from the outbox with the route.
        let kept = outbox.call(|o| o.state(NOTES_STATE)).await.expect("state").expect("kept");
        drop(brain);
        let mut decider = Decider::new(crate::geofence::GeofenceConfig::default());
        decider.load_route(two_stop_route("r1"));
        let gate = Gate::new(crate::gate::GateConfig::default());
        let brain = Brain::new(gate, decider, outbox.clone(), watch::channel(None).0)
            .with_notes(serde_json::from_slice(&kept).expect("notes"));
        assert_eq!(brain.state(&counters).stop_notes, 2, "kept across the restart");
        assert_eq!(brain.status_reply().instructions.len(), 1);
    }

    #[tokio::test]
    async fn a_scan_at_a_stop_with_instructions_shows_them_and_a_new_route_drops_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counters = DriverCounters::default();
        let notes = [note("r1", "s2", "1ZNOTE0003", "Leave it in the garage", 10)];
        let (mut brain, _outbox) = notes_brain(dir.path(), &notes, &counters).await;
        brain.on_fix(&fix_at(0)).await;
        // The van is far from s2: the scan is recorded away from the address, and the
        // driver still sees what the customer asked for at that stop.
        let reply = brain
            .on_action(Action::Scan { code: "1ZNOTE0002".into(), photo: None, photo_path: None }, &counters)
            .await;
        assert_eq!(reply.stop_id.as_deref(), Some("s2"), "{reply:?}");
        assert_eq!(reply.instructions.len(), 1, "{reply:?}");
        assert_eq!(reply.instructions[0].text, "Leave it in the garage");
        assert!(reply.message.ends_with("Customer's instructions for 1ZNOTE0003: Leave it in the garage"));

        brain.on_route(two_stop_route("r2")).await;
        assert_eq!(brain.state(&counters).stop_notes, 0, "another route, other customers");
        let reply = brain
            .on_action(Action::Scan { code: "1ZNOTE0002".into(), photo: None, photo_path: None }, &counters)
            .await;
        assert!(reply.instructions.is_empty(), "{reply:?}");
    }

    #[tokio::test]
    async fn a_graceful_stop_stores_the_trail_batch_being_filled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = doorstep_proto::DeviceId::new("van-stop").expect("id");
        // The defaults: a sample every 30 s, 20 to a batch; 100 s of fixes fill none.
        let (brain, outbox, key) = test_brain(dir.path(), &device);
        let (fix_tx, fix_rx) = mpsc::channel(FIX_QUEUE);
        let (_route_tx, route_rx) = mpsc::channel(ROUTE_QUEUE);
        let (_note_tx, note_rx) = mpsc::channel(NOTE_QUEUE);
        let (_job_tx, job_rx) = mpsc::channel(REQUEST_QUEUE);
        let cancel = CancellationToken::new();
        let brain = tokio::spawn(run_brain(
            brain,
            BrainInputs { fixes: fix_rx, routes: route_rx, notes: note_rx, jobs: job_rx },
            DriverCounters::default(),
            dir.path().join(BRAIN_STATE_FILE),
            cancel.clone(),
        ));
        for t in 0..100 {
            fix_tx.send(fix_at(t)).await.expect("brain runs");
        }
        // The brain took the last fix, and finishes a fix before it looks at the token.
        while fix_tx.capacity() < FIX_QUEUE {
            tokio::task::yield_now().await;
        }
        assert_eq!(outbox.stats().await.expect("stats").depth(), 0, "no batch is full yet");
        cancel.cancel();
        brain.await.expect("brain stops");

        let trusted = doorstep_proto::TrustedKey { device, key: key.public_key() };
        let rows = outbox.pending(0, 10).await.expect("pending");
        let events: Vec<doorstep_proto::Event> = rows
            .iter()
            .map(|(_, wire)| doorstep_proto::Envelope::open(wire, &trusted).expect("verifies").event)
            .collect();
        let [doorstep_proto::Event::Trail(trail)] = events.as_slice() else { panic!("{events:?}") };
        let times: Vec<i64> = trail
            .samples()
            .expect("samples")
            .iter()
            .map(|s| (s.utc_ms - crate::fix::TEST_NOON_MS) / 1000)
            .collect();
        assert_eq!(times, [0, 30, 60, 90], "the samples a stop would have lost");
    }
}
