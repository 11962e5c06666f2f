//! The hub's storage seam: every SQL statement the hub runs lives in this file and its
//! submodule `access` (API keys, the audit log, withdrawn tracking links).
//!
//! One SQLite file in WAL mode, migrated with `PRAGMA user_version`. [`Store`] owns a
//! connection; [`StoreTx`] is one transaction over it. Ingest, the HTTP API and the
//! carrier webhooks do all their writes for one input inside one `StoreTx`, so an event,
//! the shipment it moves and the notifications it enqueues are committed together or not
//! at all (invariants 3 and 7). Callers never see SQL, so a shared database could back
//! several hubs later by reimplementing this module alone.
//!
//! Idempotency lives in the schema, not in the callers: events are `UNIQUE(device, seq)`
//! and `UNIQUE(event_id)`, carrier events `UNIQUE(carrier, event_key)`, notifications
//! `UNIQUE(shipment_id, milestone, channel, recipient)` enqueued with `INSERT OR IGNORE`
//! (invariant 4).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use doorstep_proto::{
    DeviceId, FleetId, KeyId, PublicKey, RouteManifest, StopId, TrackingNumber, TrustedKey,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::model::Milestone;

mod access;
pub use access::{ApiKeyRecord, AuditEntry};

/// The schema version this build writes. Each entry of [`MIGRATIONS`] moves the
/// database up by one.
pub const SCHEMA_VERSION: i64 = 5;

/// How long a connection waits for another writer before failing (another hub process,
/// the `device` CLI running beside `serve`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection. Ingest runs about fifteen distinct
/// statements per batch; rusqlite's default of 16 let them evict each other, so SQLite
/// parsed and planned statements again for every event.
pub const STATEMENT_CACHE: usize = 64;

/// SQLite page cache per connection, KiB (SQLite's default is 2 MiB). The event-id and
/// timeline indexes are touched at random places; with the default the writer re-read
/// their pages from the OS on almost every insert.
pub const PAGE_CACHE_KIB: i64 = 64 * 1024;

/// WAL pages written before a commit copies them back into the database file (SQLite's
/// default is 1000). Ingest rewrites the same hot index pages in every batch; one
/// checkpoint per several batches copies each of them once instead of once per batch.
pub const WAL_CHECKPOINT_PAGES: i64 = 8192;

/// Migrations, in order; entry `i` takes `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE devices (
    device      TEXT PRIMARY KEY,
    fleet       TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    key_id      TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    added_ms    INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    device       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,
    gnss_ms      INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    envelope     BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    UNIQUE (device, seq)
);
CREATE TABLE device_acks (
    device     TEXT PRIMARY KEY,
    fleet      TEXT NOT NULL,
    up_to_seq  INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE shipments (
    id               INTEGER PRIMARY KEY,
    tracking_number  TEXT NOT NULL UNIQUE,
    carrier          TEXT,
    order_id         TEXT,
    contacts         TEXT NOT NULL,
    locale           TEXT NOT NULL,
    time_zone        TEXT NOT NULL,
    milestone        TEXT NOT NULL,
    reconcile_state  TEXT,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
);
CREATE TABLE routes (
    id          INTEGER PRIMARY KEY,
    fleet       TEXT NOT NULL,
    device      TEXT NOT NULL,
    route_id    TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    issued_ms   INTEGER NOT NULL,
    UNIQUE (device, route_id)
);
CREATE TABLE route_stops (
    route_pk         INTEGER NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
    device           TEXT NOT NULL,
    route_id         TEXT NOT NULL,
    stop_id          TEXT NOT NULL,
    tracking_number  TEXT NOT NULL,
    lat              REAL NOT NULL,
    lon              REAL NOT NULL,
    PRIMARY KEY (device, route_id, stop_id, tracking_number)
);
CREATE INDEX route_stops_tracking ON route_stops (tracking_number);
CREATE TABLE carrier_events (
    id               INTEGER PRIMARY KEY,
    carrier          TEXT NOT NULL,
    event_key        TEXT NOT NULL,
    tracking_number  TEXT NOT NULL,
    raw_body         BLOB NOT NULL,
    normalized       TEXT NOT NULL,
    occurred_ms      INTEGER NOT NULL,
    received_ms      INTEGER NOT NULL,
    UNIQUE (carrier, event_key)
);
CREATE TABLE timeline (
    id           INTEGER PRIMARY KEY,
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    occurred_ms  INTEGER NOT NULL,
    source       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL
);
CREATE INDEX timeline_shipment ON timeline (shipment_id, occurred_ms);
CREATE TABLE photos (
    sha256       TEXT PRIMARY KEY,
    device       TEXT NOT NULL,
    total_len    INTEGER NOT NULL,
    bytes        BLOB NOT NULL,
    verified     INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL
);
CREATE TABLE photo_refs (
    sha256  TEXT NOT NULL,
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (sha256, device, seq)
);
CREATE TABLE photo_chunks (
    device     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    total_len  INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (device, sha256, idx)
);
CREATE TABLE rejections (
    source   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    count    INTEGER NOT NULL,
    last_ms  INTEGER NOT NULL,
    PRIMARY KEY (source, reason)
);
CREATE TABLE wakeups (
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    at_ms        INTEGER NOT NULL,
    PRIMARY KEY (shipment_id, at_ms)
);
CREATE INDEX wakeups_due ON wakeups (at_ms);
CREATE TABLE notification_outbox (
    id               INTEGER PRIMARY KEY,
    shipment_id      INTEGER NOT NULL REFERENCES shipments(id),
    milestone        TEXT NOT NULL,
    channel          TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    detail           TEXT,
    status           TEXT NOT NULL DEFAULT 'queued',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    UNIQUE (shipment_id, milestone, channel, recipient)
);
CREATE INDEX notification_outbox_due ON notification_outbox (status, next_attempt_ms);
CREATE TABLE notification_outcomes (
    id           INTEGER PRIMARY KEY,
    outbox_id    INTEGER NOT NULL REFERENCES notification_outbox(id),
    at_ms        INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    provider_id  TEXT,
    detail       TEXT
);
CREATE INDEX notification_outcomes_outbox ON notification_outcomes (outbox_id);
CREATE TABLE ops_alerts (
    id           INTEGER PRIMARY KEY,
    shipment_id  INTEGER REFERENCES shipments(id),
    code         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    sent         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (shipment_id, code)
);
"#,
    r#"
CREATE TABLE device_gaps (
    device       TEXT NOT NULL,
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    envelope     BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    PRIMARY KEY (device, first_seq, last_seq)
);
CREATE TABLE device_status (
    device           TEXT PRIMARY KEY,
    online           INTEGER,
    agent_version    TEXT,
    outbox_depth     INTEGER,
    state_ms         INTEGER,
    pos_utc_ms       INTEGER,
    pos_lat_e7       INTEGER,
    pos_lon_e7       INTEGER,
    pos_accuracy_dm  INTEGER,
    pos_ms           INTEGER
);
"#,
    r#"
CREATE TABLE dispatcher_lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT NOT NULL,
    token       TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL
);
"#,
    // `events.quarantine`: why a stored (and acked) event is not acted on, NULL when it
    // is. `route_stops.dwell_s`: the stop's dwell override, for re-checking at-address
    // evidence (NULL: no override, or a route stored before this version).
    r#"
ALTER TABLE events ADD COLUMN quarantine TEXT;
ALTER TABLE route_stops ADD COLUMN dwell_s INTEGER;
"#,
    // Who may use the private API (`api_keys`: a key's public id and the SHA-256 of the
    // whole token, never the token), what they wrote (`audit_log`), and tracking links
    // withdrawn per shipment (`link_revocations`). See `access` and `store::access`.
    r#"
CREATE TABLE api_keys (
    name          TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL UNIQUE,
    digest        BLOB NOT NULL,
    scopes        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_used_ms  INTEGER,
    revoked_ms    INTEGER
);
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    key_name  TEXT,
    method    TEXT NOT NULL,
    path      TEXT NOT NULL,
    subject   TEXT,
    status    INTEGER NOT NULL,
    outcome   TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
CREATE TABLE link_revocations (
    shipment_id  INTEGER PRIMARY KEY REFERENCES shipments (id),
    revoked_ms   INTEGER NOT NULL
);
"#,
];

// Every schema version has its migration.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused the operation (disk full, locked too long, corrupt file).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer hub.
    #[error("database schema version {found} is newer than this build's {SCHEMA_VERSION}; upgrade the hub")]
    TooNew {
        /// The version found in the file.
        found: i64,
    },
    /// A stored value does not parse (edited by hand, or written by a buggy build).
    #[error("stored {what} is invalid: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A unique value already exists (a tracking number, a device).
    #[error("{0} already exists")]
    Exists(String),
    /// The thing named does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { what, detail: detail.to_string() }
}

/// Whether a device's key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Events signed with its key are accepted.
    Active,
    /// Its key is no longer trusted; its events are rejected as `unknown_key`.
    Revoked,
}

impl DeviceStatus {
    /// `active` or `revoked`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(DeviceStatus::Active),
            "revoked" => Ok(DeviceStatus::Revoked),
            other => Err(corrupt("device status", other)),
        }
    }
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its fleet.
    pub fleet: FleetId,
    /// The device.
    pub device: DeviceId,
    /// Its public key.
    pub key: PublicKey,
    /// The key's id on the wire.
    pub key_id: KeyId,
    /// Trusted or not.
    pub status: DeviceStatus,
    /// When it was registered, ms since the Unix epoch.
    pub added_ms: i64,
}

/// A verified event about to be stored.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// The signing device.
    pub device: &'a DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// Its 128-bit id, hex.
    pub event_id: &'a str,
    /// GNSS time of the event.
    pub gnss_ms: i64,
    /// `Event::kind()`.
    pub kind: &'a str,
    /// The exact signed bytes received.
    pub envelope: &'a [u8],
    /// Hub time of arrival.
    pub received_ms: i64,
    /// Why the event is stored but not acted on (`time_in_future`), if it is not.
    pub quarantine: Option<&'a str>,
}

/// A verified gap notice: the device evicted the position samples `first_seq..=last_seq`
/// from a full outbox, so the ones the hub lacks will never come.
#[derive(Debug, Clone, Copy)]
pub struct NewGap<'a> {
    /// The signing device.
    pub device: &'a DeviceId,
    /// The first evicted seq (the notice travels at it).
    pub first_seq: u64,
    /// The last evicted seq.
    pub last_seq: u64,
    /// The notice's event id, hex.
    pub event_id: &'a str,
    /// The exact signed bytes of the notice: the hub's evidence for acknowledging past
    /// the hole.
    pub envelope: &'a [u8],
    /// Hub time of arrival.
    pub received_ms: i64,
}

/// What applying a gap notice did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapApplied {
    /// False when the same notice was applied before (a redelivery): nothing changed.
    pub new: bool,
    /// Stored events in the range that are neither position samples nor gap notices. A
    /// well-behaved agent never evicts a confirmation, so a non-zero count means the
    /// notice and the stored events disagree; the stored confirmations stay stored.
    pub confirmations_in_range: u64,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventInsert {
    /// New: stored.
    Stored,
    /// The same event (device, seq and event id) is already stored.
    Duplicate,
    /// Another event with this (device, seq) but a different event id is stored: the
    /// device reused a sequence number. Not stored.
    SeqConflict,
    /// This event id is stored under another (device, seq). Not stored.
    EventIdReused,
}

/// A channel a customer can be reached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactChannel {
    /// SMS (E.164 phone number).
    Sms,
    /// Email address.
    Email,
    /// WhatsApp (E.164 phone number).
    Whatsapp,
    /// A customer's own HTTPS endpoint (signed generic webhook).
    Webhook,
}

impl ContactChannel {
    /// Every channel.
    pub const ALL: [ContactChannel; 4] =
        [ContactChannel::Sms, ContactChannel::Email, ContactChannel::Whatsapp, ContactChannel::Webhook];

    /// The channel's name in the outbox table and config (`sms`, `email`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ContactChannel::Sms => "sms",
            ContactChannel::Email => "email",
            ContactChannel::Whatsapp => "whatsapp",
            ContactChannel::Webhook => "webhook",
        }
    }
}

/// How to reach a customer on one channel, and whether they agreed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Phone number, email address or URL.
    pub recipient: String,
    /// The customer consented to messages on this channel.
    pub consent: bool,
}

/// A shipment as stored (`shipments.contacts` holds [`Shipment::contacts`] as JSON:
/// `{"sms": {"recipient": "+1...", "consent": true}, ...}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shipment {
    /// Row id; the outbox's `shipment_id`.
    pub id: i64,
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// Carrier name as given by the order system (`ups`, `usps`, ...).
    pub carrier: Option<String>,
    /// The order system's id.
    pub order_id: Option<String>,
    /// Contacts per channel.
    pub contacts: BTreeMap<ContactChannel, Contact>,
    /// BCP 47 locale (`en-US`).
    pub locale: String,
    /// IANA time zone (`America/New_York`) for quiet hours and local times.
    pub time_zone: String,
    /// Current customer-facing milestone.
    pub milestone: Milestone,
    /// The reconciler's own state as JSON text (`reconcile::ShipmentState`), opaque to
    /// the store; `None` until the first input.
    pub reconcile_state: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_ms: i64,
}

/// A shipment to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewShipment {
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// Carrier name.
    pub carrier: Option<String>,
    /// Order id.
    pub order_id: Option<String>,
    /// Contacts per channel.
    pub contacts: BTreeMap<ContactChannel, Contact>,
    /// Locale.
    pub locale: String,
    /// Time zone.
    pub time_zone: String,
}

/// A notification to enqueue (one row of `notification_outbox`).
#[derive(Debug, Clone, Copy)]
pub struct NewNotification<'a> {
    /// The shipment.
    pub shipment_id: i64,
    /// The milestone, snake_case (`delivered`).
    pub milestone: &'a str,
    /// The channel (`sms`, `email`, ...).
    pub channel: &'a str,
    /// Phone, address or URL.
    pub recipient: &'a str,
    /// Extra template text (revised expectation, reason).
    pub detail: Option<&'a str>,
    /// When it was enqueued; also its first attempt time.
    pub now_ms: i64,
}

/// A row of the notification outbox, as the dispatcher reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// Row id (`notification_outcomes.outbox_id`).
    pub id: i64,
    /// The shipment.
    pub shipment_id: i64,
    /// Milestone, snake_case.
    pub milestone: String,
    /// Channel.
    pub channel: String,
    /// Recipient.
    pub recipient: String,
    /// Extra template text.
    pub detail: Option<String>,
    /// `queued`, `sending`, `sent`, `failed`, ...
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt, ms since the Unix epoch.
    pub next_attempt_ms: i64,
}

/// An entry of a shipment's timeline (for the tracking page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Event time, ms since the Unix epoch.
    pub occurred_ms: i64,
    /// `device` or the carrier's name.
    pub source: String,
    /// What happened (`delivered_at_address`, `in_transit`, `dispatched`, ...).
    pub kind: String,
    /// Details as JSON (distance, photo hash, carrier message).
    pub detail: serde_json::Value,
}

/// A stored photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoRecord {
    /// The device that took it.
    pub device: DeviceId,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// It hashed to its name.
    pub verified: bool,
}

/// What a device last said about itself on its retained `state` and `pos` topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStatus {
    /// The device's MQTT session is up (its online state, or its last will said offline);
    /// `None` until a state message arrived.
    pub online: Option<bool>,
    /// The agent version it reported when it last came online.
    pub agent_version: Option<String>,
    /// Events waiting in its outbox when it last came online.
    pub outbox_depth: Option<u64>,
    /// Hub time of the last state message, ms since the Unix epoch.
    pub state_ms: Option<i64>,
    /// The newest live position, signed by the device.
    pub position: Option<LivePosition>,
}

/// A device's newest live position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivePosition {
    /// GNSS UTC time of the fix, ms since the Unix epoch.
    pub utc_ms: i64,
    /// Latitude, degrees × 10⁷.
    pub lat_e7: i32,
    /// Longitude, degrees × 10⁷.
    pub lon_e7: i32,
    /// Horizontal uncertainty, decimetres, when known.
    pub accuracy_dm: Option<u16>,
    /// Hub time it arrived.
    pub received_ms: i64,
}

/// A device's current route as stored: what the hub last published to it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRoute {
    /// The device's fleet (the route topic's).
    pub fleet: FleetId,
    /// The device.
    pub device: DeviceId,
    /// The manifest.
    pub route: RouteManifest,
    /// When the hub issued it: part of the signed message, so publishing it again gives a
    /// message an agent that has it recognises as not newer.
    pub issued_ms: i64,
}

/// Queue depths for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Outbox rows by status.
    pub outbox_by_status: BTreeMap<String, i64>,
    /// Unsent operations alerts.
    pub alerts_unsent: i64,
    /// Pending reconciler wake-ups.
    pub wakeups: i64,
    /// Photos being reassembled (distinct device, hash).
    pub photos_partial: i64,
    /// Registered, active devices whose last state message said online.
    pub devices_online: i64,
}

/// Options for opening the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// `synchronous = FULL`: a commit survives power loss, not only a process crash.
    /// Acks are published after commit, so FULL is what makes an ack a promise.
    ///
    /// WAL with `NORMAL` looks tempting (an agent re-sends everything above its last ack,
    /// so a crash loses nothing unacked), but it does not hold for what *was* acked:
    /// under NORMAL a WAL commit reaches the disk only at the next checkpoint, so a power
    /// cut or kernel crash after the ack can undo a commit whose events the agent has
    /// already deleted on the strength of that ack. NORMAL would be safe only if acks
    /// waited for the next sync, which is FULL with extra steps. FULL costs one fsync per
    /// transaction; ingest batches up to `batch_max` events per transaction, so the cost
    /// is shared by the batch.
    pub full_sync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { full_sync: true }
    }
}

/// The hub database: one connection.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// One transaction. Dropped without [`StoreTx::commit`], it rolls back.
#[derive(Debug)]
pub struct StoreTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode, and migrates it.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| corrupt("database directory", e))?;
        }
        let conn = Connection::open(path)?;
        Self::setup(conn, options)
    }

    /// An in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?, StoreOptions::default())
    }

    fn setup(mut conn: Connection, options: StoreOptions) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // One plan per statement, whatever is bound. Without it SQLite (built with STAT4)
        // marks some statements to be planned again whenever a bound value changes, and
        // re-parsed `stop_parcels` on every "nearby" event (seen in the ingest profile).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        // ("memory" is the in-memory databases of unit tests.)
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(corrupt("journal mode", format!("SQLite kept {mode} instead of WAL")));
        }
        conn.pragma_update(None, "synchronous", if options.full_sync { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version });
        }
        // A current schema takes no lock (another hub may be in a long commit). Otherwise
        // each step reads the version again under the write lock: hubs of one shared
        // subscription group starting together on one file migrate it once.
        if version < SCHEMA_VERSION {
            loop {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
                if version > SCHEMA_VERSION {
                    return Err(StoreError::TooNew { found: version });
                }
                if version == SCHEMA_VERSION {
                    break;
                }
                let Some(sql) = usize::try_from(version).ok().and_then(|v| MIGRATIONS.get(v)) else {
                    return Err(corrupt(
                        "schema version",
                        format!("user_version {version} is not one this hub wrote"),
                    ));
                };
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version + 1)?;
                tx.commit()?;
            }
        }
        Ok(Self { conn })
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`: the write lock is taken up front,
    /// so a concurrent writer waits at the start rather than failing at commit).
    pub fn transaction(&mut self) -> Result<StoreTx<'_>, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(StoreTx { tx })
    }

    // ---- device registry -------------------------------------------------------------

    /// Registers a device with its public key. An existing device is an error unless
    /// `replace` is set, which rotates its key and makes it active again.
    pub fn add_device(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        key: &PublicKey,
        replace: bool,
        now_ms: i64,
    ) -> Result<DeviceRecord, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .query_row("SELECT device FROM devices WHERE device = ?1", [device.as_str()], |r| r.get(0))
            .optional()?;
        if existing.is_some() && !replace {
            return Err(StoreError::Exists(format!(
                "device {device} (use --replace to rotate its key, or revoke it first)"
            )));
        }
        let key_id = key.key_id().to_hex();
        let owner: Option<String> = tx
            .query_row("SELECT device FROM devices WHERE key_id = ?1", [&key_id], |r| r.get(0))
            .optional()?;
        if let Some(owner) = owner
            && owner != device.as_str()
        {
            return Err(StoreError::Exists(format!("key {key_id} (registered to device {owner})")));
        }
        tx.execute(
            "INSERT INTO devices (device, fleet, public_key, key_id, status, added_ms)
             VALUES (?1, ?2, ?3, ?4, 'active', ?5)
             ON CONFLICT (device) DO UPDATE SET fleet = ?2, public_key = ?3, key_id = ?4,
                 status = 'active', added_ms = ?5, revoked_ms = NULL",
            params![device.as_str(), fleet.as_str(), key.to_string(), key_id, now_ms],
        )?;
        tx.commit()?;
        Ok(DeviceRecord {
            fleet: fleet.clone(),
            device: device.clone(),
            key: *key,
            key_id: key.key_id(),
            status: DeviceStatus::Active,
            added_ms: now_ms,
        })
    }

    /// Revokes a device's key. Returns false when the device is unknown.
    pub fn revoke_device(&mut self, device: &DeviceId, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE devices SET status = 'revoked', revoked_ms = ?2 WHERE device = ?1",
            params![device.as_str(), now_ms],
        )?;
        Ok(n > 0)
    }

    /// Every registered device, by fleet and id.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT fleet, device, public_key, status, added_ms FROM devices ORDER BY fleet, device",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fleet, device, key, status, added_ms) = row?;
            let key = PublicKey::from_text(&key).map_err(|e| corrupt("device key", e))?;
            out.push(DeviceRecord {
                fleet: FleetId::new(fleet).map_err(|e| corrupt("fleet id", e))?,
                device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
                key,
                key_id: key.key_id(),
                status: DeviceStatus::parse(&status)?,
                added_ms,
            });
        }
        Ok(out)
    }

    /// One registered device.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.devices()?.into_iter().find(|d| d.device == *device))
    }

    /// The keys of every active device, by key id: the verifier's keyring.
    pub fn active_keys(&self) -> Result<HashMap<KeyId, (FleetId, TrustedKey)>, StoreError> {
        Ok(self
            .devices()?
            .into_iter()
            .filter(|d| d.status == DeviceStatus::Active)
            .map(|d| (d.key_id, (d.fleet, TrustedKey { device: d.device, key: d.key })))
            .collect())
    }

    // ---- reads ------------------------------------------------------------------------

    /// A shipment by row id.
    pub fn shipment(&self, id: i64) -> Result<Option<Shipment>, StoreError> {
        shipment_where(&self.conn, ShipmentKey::Id, rusqlite::types::Value::Integer(id))
    }

    /// A shipment by tracking number.
    pub fn shipment_by_tracking(&self, tracking: &TrackingNumber) -> Result<Option<Shipment>, StoreError> {
        shipment_where(&self.conn, ShipmentKey::Tracking, rusqlite::types::Value::Text(tracking.to_string()))
    }

    /// A shipment's timeline, oldest first.
    pub fn timeline(&self, shipment_id: i64) -> Result<Vec<TimelineEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT occurred_ms, source, kind, detail FROM timeline WHERE shipment_id = ?1
             ORDER BY occurred_ms, id",
        )?;
        let rows = stmt.query_map([shipment_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (occurred_ms, source, kind, detail) = row?;
            let detail = serde_json::from_str(&detail).map_err(|e| corrupt("timeline detail", e))?;
            out.push(TimelineEntry { occurred_ms, source, kind, detail });
        }
        Ok(out)
    }

    /// Notification rows due at `now_ms` with status `queued`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms
             FROM notification_outbox WHERE status = 'queued' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every notification row of a shipment, by id.
    pub fn outbox_for_shipment(&self, shipment_id: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms
             FROM notification_outbox WHERE shipment_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([shipment_id], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Operations alerts of a shipment: (code, detail).
    pub fn alerts_for_shipment(&self, shipment_id: i64) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT code, detail FROM ops_alerts WHERE shipment_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map([shipment_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of events stored for a device.
    pub fn event_count(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let n: i64 =
            self.conn.query_row("SELECT count(*) FROM events WHERE device = ?1", [device.as_str()], |r| {
                r.get(0)
            })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The stored sequence numbers of a device, ascending.
    pub fn event_seqs(&self, device: &DeviceId) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT seq FROM events WHERE device = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([device.as_str()], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for seq in rows {
            out.push(u64::try_from(seq?).map_err(|e| corrupt("seq", e))?);
        }
        Ok(out)
    }

    /// The exact signed bytes stored for (device, seq).
    pub fn event_envelope(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT envelope FROM events WHERE device = ?1 AND seq = ?2",
                params![device.as_str(), seq_param(seq)?],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The stored seqs of a device that are quarantined, with the reason, ascending.
    pub fn quarantined(&self, device: &DeviceId) -> Result<Vec<(u64, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, quarantine FROM events WHERE device = ?1 AND quarantine IS NOT NULL ORDER BY seq",
        )?;
        let rows =
            stmt.query_map([device.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, reason) = row?;
            out.push((u64::try_from(seq).map_err(|e| corrupt("seq", e))?, reason));
        }
        Ok(out)
    }

    /// The current route of every active device that has one (`device: None`), or of one
    /// device: the one issued last, under the fleet the device is registered in.
    pub fn current_routes(&self, device: Option<&DeviceId>) -> Result<Vec<StoredRoute>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.fleet, r.device, r.manifest, r.issued_ms FROM routes r
             JOIN devices d ON d.device = r.device AND d.fleet = r.fleet AND d.status = 'active'
             WHERE (?1 IS NULL OR r.device = ?1)
               AND r.id = (SELECT id FROM routes WHERE device = r.device ORDER BY issued_ms DESC, id DESC LIMIT 1)
             ORDER BY r.device",
        )?;
        let rows = stmt.query_map([device.map(DeviceId::as_str)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fleet, device, manifest, issued_ms) = row?;
            out.push(StoredRoute {
                fleet: FleetId::new(fleet).map_err(|e| corrupt("fleet id", e))?,
                device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
                route: RouteManifest::from_json(manifest.as_bytes())
                    .map_err(|e| corrupt("route manifest", e))?,
                issued_ms,
            });
        }
        Ok(out)
    }

    /// What every device last said on its `state` and `pos` topics, by device.
    pub fn live_statuses(&self) -> Result<BTreeMap<DeviceId, LiveStatus>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device, online, agent_version, outbox_depth, state_ms, pos_utc_ms, pos_lat_e7, pos_lon_e7,
                    pos_accuracy_dm, pos_ms FROM device_status",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let device = DeviceId::new(r.get::<_, String>(0)?).map_err(|e| corrupt("device id", e))?;
            let position = match (r.get::<_, Option<i64>>(5)?, r.get(6)?, r.get(7)?, r.get(9)?) {
                (Some(utc_ms), Some(lat_e7), Some(lon_e7), Some(received_ms)) => {
                    Some(LivePosition { utc_ms, lat_e7, lon_e7, accuracy_dm: r.get(8)?, received_ms })
                }
                _ => None,
            };
            let status = LiveStatus {
                online: r.get(1)?,
                agent_version: r.get(2)?,
                outbox_depth: r.get::<_, Option<i64>>(3)?.and_then(|d| u64::try_from(d).ok()),
                state_ms: r.get(4)?,
                position,
            };
            out.insert(device, status);
        }
        Ok(out)
    }

    /// The gap notices applied for a device: (first seq, last seq), ascending.
    pub fn gap_notices(&self, device: &DeviceId) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_seq, last_seq FROM device_gaps WHERE device = ?1 ORDER BY first_seq, last_seq",
        )?;
        let rows = stmt.query_map([device.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (first, last) = row?;
            let first = u64::try_from(first).map_err(|e| corrupt("gap seq", e))?;
            let last = u64::try_from(last).map_err(|e| corrupt("gap seq", e))?;
            out.push((first, last));
        }
        Ok(out)
    }

    /// The device's acknowledged high-water mark.
    pub fn ack_high_water(&self, device: &DeviceId) -> Result<u64, StoreError> {
        ack_high_water(&self.conn, device)
    }

    /// Total events stored.
    pub fn total_events(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Persistent rejection counters: (source, reason) → count.
    pub fn rejection_counts(&self) -> Result<BTreeMap<(String, String), u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT source, reason, count FROM rejections")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (source, reason, count) = row?;
            out.insert((source, reason), u64::try_from(count).unwrap_or(0));
        }
        Ok(out)
    }

    /// A stored photo by hash (hex).
    pub fn photo(&self, sha256_hex: &str) -> Result<Option<PhotoRecord>, StoreError> {
        let row: Option<(String, Vec<u8>, bool)> = self
            .conn
            .query_row("SELECT device, bytes, verified FROM photos WHERE sha256 = ?1", [sha256_hex], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        row.map(|(device, bytes, verified)| {
            Ok(PhotoRecord {
                device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
                bytes,
                verified,
            })
        })
        .transpose()
    }

    /// Whether the photo is proof: stored, hashed to its name, and referenced by a signed
    /// event of the device that uploaded it.
    pub fn photo_is_proof(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM photos p JOIN photo_refs r ON r.sha256 = p.sha256 AND r.device = p.device
             WHERE p.sha256 = ?1 AND p.verified = 1 AND r.size = p.total_len",
            [sha256_hex],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Queue depths for the metrics endpoint.
    pub fn queue_depths(&self) -> Result<QueueDepths, StoreError> {
        let mut depths = QueueDepths::default();
        let mut stmt =
            self.conn.prepare_cached("SELECT status, count(*) FROM notification_outbox GROUP BY status")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (status, n) = row?;
            depths.outbox_by_status.insert(status, n);
        }
        depths.alerts_unsent =
            self.conn.query_row("SELECT count(*) FROM ops_alerts WHERE sent = 0", [], |r| r.get(0))?;
        depths.wakeups = self.conn.query_row("SELECT count(*) FROM wakeups", [], |r| r.get(0))?;
        depths.photos_partial = self.conn.query_row(
            "SELECT count(*) FROM (SELECT DISTINCT device, sha256 FROM photo_chunks)",
            [],
            |r| r.get(0),
        )?;
        depths.devices_online = self.conn.query_row(
            "SELECT count(*) FROM device_status s JOIN devices d ON d.device = s.device
             WHERE s.online = 1 AND d.status = 'active'",
            [],
            |r| r.get(0),
        )?;
        Ok(depths)
    }

    /// Runs `f` on the raw connection, for the rare maintenance read (checkpoints in
    /// benchmarks). Not for application queries: those get a method here.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        shipment_id: r.get(1)?,
        milestone: r.get(2)?,
        channel: r.get(3)?,
        recipient: r.get(4)?,
        detail: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_attempt_ms: r.get(8)?,
    })
}

fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| corrupt("sequence number", format!("{seq} does not fit SQLite's integer")))
}

fn ack_high_water(conn: &Connection, device: &DeviceId) -> Result<u64, StoreError> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT up_to_seq FROM device_acks WHERE device = ?1")?
        .query_row([device.as_str()], |r| r.get(0))
        .optional()?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

fn milestone_str(m: Milestone) -> &'static str {
    match m {
        Milestone::Created => "created",
        Milestone::Dispatched => "dispatched",
        Milestone::OutForDelivery => "out_for_delivery",
        Milestone::Nearby => "nearby",
        Milestone::Exception => "exception",
        Milestone::Delivered => "delivered",
    }
}

/// The snake_case name of a milestone, as stored in `shipments.milestone` and
/// `notification_outbox.milestone`.
pub fn milestone_name(m: Milestone) -> &'static str {
    milestone_str(m)
}

fn parse_milestone(text: &str) -> Result<Milestone, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| corrupt("milestone", e))
}

type ShipmentRow =
    (i64, String, Option<String>, Option<String>, String, String, String, String, Option<String>, i64);

/// The two ways a shipment is looked up, as whole statements so the statement cache finds
/// them without building the SQL text on every event.
#[derive(Debug, Clone, Copy)]
enum ShipmentKey {
    Id,
    Tracking,
}

fn shipment_where(
    conn: &Connection,
    key: ShipmentKey,
    value: rusqlite::types::Value,
) -> Result<Option<Shipment>, StoreError> {
    let sql = match key {
        ShipmentKey::Id => {
            "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                    reconcile_state, created_ms FROM shipments WHERE id = ?1"
        }
        ShipmentKey::Tracking => {
            "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                    reconcile_state, created_ms FROM shipments WHERE tracking_number = ?1"
        }
    };
    let row: Option<ShipmentRow> = conn
        .prepare_cached(sql)?
        .query_row([value], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })
        .optional()?;
    let Some((id, tracking, carrier, order_id, contacts, locale, time_zone, milestone, state, created_ms)) =
        row
    else {
        return Ok(None);
    };
    Ok(Some(Shipment {
        id,
        tracking_number: TrackingNumber::new(tracking).map_err(|e| corrupt("tracking number", e))?,
        carrier,
        order_id,
        contacts: serde_json::from_str(&contacts).map_err(|e| corrupt("contacts", e))?,
        locale,
        time_zone,
        milestone: parse_milestone(&milestone)?,
        reconcile_state: state,
        created_ms,
    }))
}

impl StoreTx<'_> {
    /// Commits everything done in this transaction.
    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }

    /// Starts a nested unit (a savepoint) that can be undone alone with
    /// [`StoreTx::rollback_item`], or kept with [`StoreTx::release_item`].
    pub fn begin_item(&self) -> Result<(), StoreError> {
        self.tx.prepare_cached("SAVEPOINT item")?.execute([])?;
        Ok(())
    }

    /// Keeps the nested unit's changes (still subject to the transaction's commit).
    pub fn release_item(&self) -> Result<(), StoreError> {
        self.tx.prepare_cached("RELEASE item")?.execute([])?;
        Ok(())
    }

    /// Undoes the nested unit's changes.
    pub fn rollback_item(&self) -> Result<(), StoreError> {
        Ok(self.tx.execute_batch("ROLLBACK TO item; RELEASE item")?)
    }

    /// The fleet of an active device whose current key has this id, or `None` when the
    /// device is unknown, revoked, or has rotated to another key. Checked again inside the
    /// write transaction so a revocation made by the CLI a moment ago is honored exactly.
    pub fn active_device(&self, device: &DeviceId, key_id: &KeyId) -> Result<Option<FleetId>, StoreError> {
        let row: Option<String> = self
            .tx
            .prepare_cached(
                "SELECT fleet FROM devices WHERE device = ?1 AND key_id = ?2 AND status = 'active'",
            )?
            .query_row(params![device.as_str(), key_id.to_hex()], |r| r.get(0))
            .optional()?;
        row.map(|f| FleetId::new(f).map_err(|e| corrupt("fleet id", e))).transpose()
    }

    /// Stores a verified event unless it, or a conflicting one, is already stored.
    pub fn insert_event(&self, event: &NewEvent<'_>) -> Result<EventInsert, StoreError> {
        let seq = seq_param(event.seq)?;
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO events (device, seq, event_id, gnss_ms, kind, envelope, received_ms, quarantine)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                event.device.as_str(),
                seq,
                event.event_id,
                event.gnss_ms,
                event.kind,
                event.envelope,
                event.received_ms,
                event.quarantine
            ])?;
        if inserted == 1 {
            return Ok(EventInsert::Stored);
        }
        let held: Option<String> = self
            .tx
            .prepare_cached("SELECT event_id FROM events WHERE device = ?1 AND seq = ?2")?
            .query_row(params![event.device.as_str(), seq], |r| r.get(0))
            .optional()?;
        Ok(match held {
            Some(id) if id == event.event_id => EventInsert::Duplicate,
            Some(_) => EventInsert::SeqConflict,
            None => EventInsert::EventIdReused,
        })
    }

    /// Records a verified gap notice (idempotent: applying it twice changes nothing).
    /// [`StoreTx::advance_ack`] then moves past the seqs it covers.
    pub fn apply_gap(&self, gap: &NewGap<'_>) -> Result<GapApplied, StoreError> {
        let (first, last) = (seq_param(gap.first_seq)?, seq_param(gap.last_seq)?);
        if last < first {
            return Err(corrupt("gap notice", format!("seq {} ends before it starts", gap.first_seq)));
        }
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO device_gaps (device, first_seq, last_seq, event_id, envelope, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![gap.device.as_str(), first, last, gap.event_id, gap.envelope, gap.received_ms])?;
        let confirmations: i64 = self
            .tx
            .prepare_cached(
                "SELECT count(*) FROM events WHERE device = ?1 AND seq BETWEEN ?2 AND ?3
                 AND kind NOT IN ('position', 'gap')",
            )?
            .query_row(params![gap.device.as_str(), first, last], |r| r.get(0))?;
        Ok(GapApplied {
            new: inserted == 1,
            confirmations_in_range: u64::try_from(confirmations).unwrap_or(0),
        })
    }

    /// Moves the device's contiguous high-water mark over every stored seq that follows
    /// it without a gap, and over every seq a gap notice covers, records it, and returns
    /// it: the `up_to_seq` of the next ack.
    pub fn advance_ack(&self, fleet: &FleetId, device: &DeviceId, now_ms: i64) -> Result<u64, StoreError> {
        let start = ack_high_water(&self.tx, device)?;
        let mut high = start;
        {
            let mut stored = self.tx.prepare_cached(
                "SELECT seq FROM events WHERE device = ?1 AND seq > ?2 ORDER BY seq LIMIT 4096",
            )?;
            let mut covered = self.tx.prepare_cached(
                "SELECT max(last_seq) FROM device_gaps WHERE device = ?1 AND first_seq <= ?2 AND last_seq >= ?2",
            )?;
            loop {
                let before = high;
                let mut rows = stored.query(params![device.as_str(), seq_param(high)?])?;
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    if u64::try_from(seq).ok() != Some(high + 1) {
                        break;
                    }
                    high += 1;
                }
                // A whole page advanced: there may be more stored seqs right after it.
                if high - before == 4096 {
                    continue;
                }
                // `high + 1` is missing. The device may have said it never will come.
                let Some(next) = high.checked_add(1).filter(|n| i64::try_from(*n).is_ok()) else { break };
                let last: Option<i64> =
                    covered.query_row(params![device.as_str(), seq_param(next)?], |r| r.get(0))?;
                match last.and_then(|l| u64::try_from(l).ok()) {
                    Some(last) if last >= next => high = last,
                    _ => break,
                }
            }
        }
        if high != start || start == 0 {
            self.tx
                .prepare_cached(
                    "INSERT INTO device_acks (device, fleet, up_to_seq, updated_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (device) DO UPDATE SET up_to_seq = ?3, updated_ms = ?4, fleet = ?2",
                )?
                .execute(params![device.as_str(), fleet.as_str(), seq_param(high)?, now_ms])?;
        }
        Ok(high)
    }

    /// The fleet of a registered, active device (whatever its key), or `None`.
    pub fn active_fleet(&self, device: &DeviceId) -> Result<Option<FleetId>, StoreError> {
        let row: Option<String> = self
            .tx
            .prepare_cached("SELECT fleet FROM devices WHERE device = ?1 AND status = 'active'")?
            .query_row([device.as_str()], |r| r.get(0))
            .optional()?;
        row.map(|f| FleetId::new(f).map_err(|e| corrupt("fleet id", e))).transpose()
    }

    /// Records a device's retained state (online with its agent version and outbox depth,
    /// or offline from its last will). An offline message carries neither, so the last
    /// known version and depth stay.
    pub fn set_device_state(
        &self,
        device: &DeviceId,
        state: &doorstep_proto::state::DeviceState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let depth = state.outbox_depth.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        self.tx
            .prepare_cached(
                "INSERT INTO device_status (device, online, agent_version, outbox_depth, state_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device) DO UPDATE SET online = ?2,
                     agent_version = coalesce(?3, agent_version), outbox_depth = coalesce(?4, outbox_depth),
                     state_ms = ?5",
            )?
            .execute(params![device.as_str(), state.online, state.agent_version, depth, now_ms])?;
        Ok(())
    }

    /// Records a device's live position unless a newer one (by GNSS time) is already
    /// stored: a retained message redelivered after a restart never moves a van back.
    /// Returns whether it was newer.
    pub fn set_live_position(
        &self,
        device: &DeviceId,
        fix: &doorstep_proto::FixEvidence,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO device_status (device, pos_utc_ms, pos_lat_e7, pos_lon_e7, pos_accuracy_dm, pos_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device) DO UPDATE SET pos_utc_ms = ?2, pos_lat_e7 = ?3, pos_lon_e7 = ?4,
                     pos_accuracy_dm = ?5, pos_ms = ?6
                 WHERE pos_utc_ms IS NULL OR pos_utc_ms < ?2",
            )?
            .execute(params![device.as_str(), fix.utc_ms, fix.lat_e7, fix.lon_e7, fix.accuracy_dm, now_ms])?;
        Ok(n == 1)
    }

    /// Counts a rejected input in the persistent counters.
    pub fn count_rejection(&self, source: &str, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO rejections (source, reason, count, last_ms) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (source, reason) DO UPDATE SET count = count + 1, last_ms = ?3",
            )?
            .execute(params![source, reason, now_ms])?;
        Ok(())
    }

    // ---- shipments ---------------------------------------------------------------------

    /// Creates a shipment at milestone `created`.
    pub fn insert_shipment(&self, new: &NewShipment, now_ms: i64) -> Result<i64, StoreError> {
        let contacts = serde_json::to_string(&new.contacts).map_err(|e| corrupt("contacts", e))?;
        let n = self.tx.execute(
            "INSERT INTO shipments (tracking_number, carrier, order_id, contacts, locale, time_zone,
                 milestone, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'created', ?7, ?7) ON CONFLICT (tracking_number) DO NOTHING",
            params![
                new.tracking_number.as_str(),
                new.carrier,
                new.order_id,
                contacts,
                new.locale,
                new.time_zone,
                now_ms
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(format!("shipment {}", new.tracking_number)));
        }
        Ok(self.tx.last_insert_rowid())
    }

    /// A shipment by tracking number, read inside this transaction.
    pub fn shipment_by_tracking(&self, tracking: &TrackingNumber) -> Result<Option<Shipment>, StoreError> {
        shipment_where(&self.tx, ShipmentKey::Tracking, rusqlite::types::Value::Text(tracking.to_string()))
    }

    /// A shipment by id, read inside this transaction.
    pub fn shipment(&self, id: i64) -> Result<Option<Shipment>, StoreError> {
        shipment_where(&self.tx, ShipmentKey::Id, rusqlite::types::Value::Integer(id))
    }

    /// Saves the reconciler's result for a shipment (state as a JSON value).
    pub fn save_reconcile(
        &self,
        shipment_id: i64,
        milestone: Milestone,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.save_reconcile_json(shipment_id, milestone, &state.to_string(), now_ms)
    }

    /// Saves the reconciler's result for a shipment (state as JSON text, as ingest has it).
    pub fn save_reconcile_json(
        &self,
        shipment_id: i64,
        milestone: Milestone,
        state_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE shipments SET milestone = ?2, reconcile_state = ?3, updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![shipment_id, milestone_str(milestone), state_json, now_ms])?;
        Ok(())
    }

    /// Adds an entry to a shipment's timeline.
    pub fn add_timeline(
        &self,
        shipment_id: i64,
        occurred_ms: i64,
        source: &str,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.add_timeline_json(shipment_id, occurred_ms, source, kind, &detail.to_string())
    }

    /// Adds an entry to a shipment's timeline whose detail is already JSON text (what
    /// ingest writes for every device signal, without building a JSON tree first).
    pub fn add_timeline_json(
        &self,
        shipment_id: i64,
        occurred_ms: i64,
        source: &str,
        kind: &str,
        detail_json: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO timeline (shipment_id, occurred_ms, source, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![shipment_id, occurred_ms, source, kind, detail_json])?;
        Ok(())
    }

    /// Enqueues a notification; returns false when the same (shipment, milestone,
    /// channel, recipient) was already enqueued, which is how a retry never doubles.
    pub fn enqueue_notification(&self, n: &NewNotification<'_>) -> Result<bool, StoreError> {
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO notification_outbox
                     (shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?6)",
            )?
            .execute(params![n.shipment_id, n.milestone, n.channel, n.recipient, n.detail, n.now_ms])?;
        if inserted == 1 {
            let id = self.tx.last_insert_rowid();
            self.tx
                .prepare_cached(
                    "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome) VALUES (?1, ?2, 'queued')",
                )?
                .execute(params![id, n.now_ms])?;
        }
        Ok(inserted == 1)
    }

    /// Raises an operations alert; once per (shipment, code).
    pub fn raise_alert(
        &self,
        shipment_id: i64,
        code: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO ops_alerts (shipment_id, code, detail, created_ms, sent) VALUES (?1, ?2, ?3, ?4, 0)",
            )?
            .execute(params![shipment_id, code, detail, now_ms])?;
        Ok(n == 1)
    }

    /// Asks for the reconciler to be woken for a shipment at `at_ms`.
    pub fn schedule_wake(&self, shipment_id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO wakeups (shipment_id, at_ms) VALUES (?1, ?2)")?
            .execute(params![shipment_id, at_ms])?;
        Ok(())
    }

    /// Removes and returns wake-ups due at `now_ms`: (shipment id, wake time).
    pub fn take_due_wakeups(&self, now_ms: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        let due: Vec<(i64, i64)> = self
            .tx
            .prepare_cached(
                "SELECT shipment_id, at_ms FROM wakeups WHERE at_ms <= ?1 ORDER BY at_ms LIMIT ?2",
            )?
            .query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut delete =
            self.tx.prepare_cached("DELETE FROM wakeups WHERE shipment_id = ?1 AND at_ms = ?2")?;
        for (id, at) in &due {
            delete.execute(params![id, at])?;
        }
        Ok(due)
    }

    // ---- routes ------------------------------------------------------------------------

    /// Stores a route for a device with one row per parcel and stop. Publishing the same
    /// route id again replaces its stops. Returns the shipments of the route's parcels
    /// that exist (a parcel without a shipment is routed but nobody is notified).
    pub fn upsert_route(
        &self,
        fleet: &FleetId,
        device: &DeviceId,
        route: &RouteManifest,
        issued_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.tx.execute(
            "INSERT INTO routes (fleet, device, route_id, manifest, issued_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device, route_id) DO UPDATE SET fleet = ?1, manifest = ?4, issued_ms = ?5",
            params![fleet.as_str(), device.as_str(), route.route_id.as_str(), route.to_json(), issued_ms],
        )?;
        let route_pk: i64 = self.tx.query_row(
            "SELECT id FROM routes WHERE device = ?1 AND route_id = ?2",
            params![device.as_str(), route.route_id.as_str()],
            |r| r.get(0),
        )?;
        self.tx.execute("DELETE FROM route_stops WHERE route_pk = ?1", [route_pk])?;
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO route_stops (route_pk, device, route_id, stop_id, tracking_number, lat, lon, dwell_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut find = self.tx.prepare_cached("SELECT id FROM shipments WHERE tracking_number = ?1")?;
        let mut shipments = Vec::new();
        for stop in &route.stops {
            for tn in &stop.tracking_numbers {
                insert.execute(params![
                    route_pk,
                    device.as_str(),
                    route.route_id.as_str(),
                    stop.stop_id.as_str(),
                    tn.as_str(),
                    stop.lat,
                    stop.lon,
                    stop.dwell_s
                ])?;
                if let Some(id) = find.query_row([tn.as_str()], |r| r.get::<_, i64>(0)).optional()? {
                    shipments.push(id);
                }
            }
        }
        Ok(shipments)
    }

    /// The parcels of one stop of a device's route (what a `nearby` event is about).
    pub fn stop_parcels(
        &self,
        device: &DeviceId,
        route_id: &str,
        stop_id: &StopId,
    ) -> Result<Vec<TrackingNumber>, StoreError> {
        let rows: Vec<String> = self
            .tx
            .prepare_cached(
                "SELECT tracking_number FROM route_stops WHERE device = ?1 AND route_id = ?2 AND stop_id = ?3
                 ORDER BY tracking_number",
            )?
            .query_map(params![device.as_str(), route_id, stop_id.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(|t| TrackingNumber::new(t).map_err(|e| corrupt("tracking number", e))).collect()
    }

    /// The dwell override of a stop of a device's route, when the hub knows the route and
    /// the route sets one.
    pub fn stop_dwell_s(
        &self,
        device: &DeviceId,
        route_id: &str,
        stop_id: &StopId,
    ) -> Result<Option<u32>, StoreError> {
        let dwell: Option<Option<i64>> = self
            .tx
            .prepare_cached(
                "SELECT dwell_s FROM route_stops WHERE device = ?1 AND route_id = ?2 AND stop_id = ?3 LIMIT 1",
            )?
            .query_row(params![device.as_str(), route_id, stop_id.as_str()], |r| r.get(0))
            .optional()?;
        Ok(dwell.flatten().and_then(|d| u32::try_from(d).ok()))
    }

    /// The stop's address coordinates for a parcel on a device's route, if routed.
    pub fn parcel_stop(
        &self,
        device: &DeviceId,
        route_id: &str,
        tracking: &TrackingNumber,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT lat, lon FROM route_stops WHERE device = ?1 AND route_id = ?2 AND tracking_number = ?3",
            )?
            .query_row(params![device.as_str(), route_id, tracking.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    // ---- carrier events ----------------------------------------------------------------

    /// Stores a normalized carrier event with its raw body; returns false when this
    /// (carrier, event key) is already stored (a redelivered webhook).
    #[allow(clippy::too_many_arguments)] // one column each; a struct would only rename them.
    pub fn insert_carrier_event(
        &self,
        carrier: &str,
        event_key: &str,
        tracking: &str,
        raw_body: &[u8],
        normalized: &serde_json::Value,
        occurred_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO carrier_events (carrier, event_key, tracking_number, raw_body, normalized, occurred_ms, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (carrier, event_key) DO NOTHING",
            )?
            .execute(params![carrier, event_key, tracking, raw_body, normalized.to_string(), occurred_ms, now_ms])?;
        Ok(n == 1)
    }

    // ---- photos ------------------------------------------------------------------------

    /// Records that a signed event of `device` carries this photo hash and size.
    pub fn add_photo_ref(
        &self,
        sha256_hex: &str,
        device: &DeviceId,
        seq: u64,
        size: u64,
    ) -> Result<(), StoreError> {
        let size = i64::try_from(size).map_err(|e| corrupt("photo size", e))?;
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO photo_refs (sha256, device, seq, size) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![sha256_hex, device.as_str(), seq_param(seq)?, size])?;
        Ok(())
    }

    /// The photo size a signed event of `device` gives for this hash, if any references it.
    pub fn photo_ref_size(&self, sha256_hex: &str, device: &DeviceId) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> = self
            .tx
            .prepare_cached("SELECT size FROM photo_refs WHERE sha256 = ?1 AND device = ?2 LIMIT 1")?
            .query_row(params![sha256_hex, device.as_str()], |r| r.get(0))
            .optional()?;
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }

    /// Whether a complete photo with this hash is stored.
    pub fn photo_complete(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM photos WHERE sha256 = ?1 AND verified = 1")?
            .query_row([sha256_hex], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Stores one chunk (idempotent) and returns the first index still missing.
    pub fn put_photo_chunk(
        &self,
        device: &DeviceId,
        sha256_hex: &str,
        index: u32,
        total_len: u64,
        data: &[u8],
    ) -> Result<u32, StoreError> {
        let total = i64::try_from(total_len).map_err(|e| corrupt("photo size", e))?;
        // A different size under the same hash is a restarted upload with other
        // metadata; the old chunks cannot belong to it.
        self.tx
            .prepare_cached("DELETE FROM photo_chunks WHERE device = ?1 AND sha256 = ?2 AND total_len != ?3")?
            .execute(params![device.as_str(), sha256_hex, total])?;
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO photo_chunks (device, sha256, idx, total_len, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![device.as_str(), sha256_hex, index, total, data])?;
        let indexes: Vec<u32> = self
            .tx
            .prepare_cached("SELECT idx FROM photo_chunks WHERE device = ?1 AND sha256 = ?2 ORDER BY idx")?
            .query_map(params![device.as_str(), sha256_hex], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut next = 0u32;
        for i in indexes {
            if i != next {
                break;
            }
            next += 1;
        }
        Ok(next)
    }

    /// Concatenates the chunks of a photo, in order.
    pub fn photo_chunks_data(&self, device: &DeviceId, sha256_hex: &str) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        let mut stmt = self
            .tx
            .prepare_cached("SELECT data FROM photo_chunks WHERE device = ?1 AND sha256 = ?2 ORDER BY idx")?;
        let mut rows = stmt.query(params![device.as_str(), sha256_hex])?;
        while let Some(row) = rows.next()? {
            let data: Vec<u8> = row.get(0)?;
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Drops the chunks of a photo (completed, or failed its hash check).
    pub fn drop_photo_chunks(&self, device: &DeviceId, sha256_hex: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM photo_chunks WHERE device = ?1 AND sha256 = ?2")?
            .execute(params![device.as_str(), sha256_hex])?;
        Ok(())
    }

    /// Stores a complete photo that matched its hash.
    pub fn put_photo(
        &self,
        device: &DeviceId,
        sha256_hex: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let len = i64::try_from(bytes.len()).map_err(|e| corrupt("photo size", e))?;
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO photos (sha256, device, total_len, bytes, verified, received_ms)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)",
            )?
            .execute(params![sha256_hex, device.as_str(), len, bytes, now_ms])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).expect("id")
    }

    fn key(seed: u8) -> PublicKey {
        doorstep_proto::SigningKey::from_seed(&[seed; 32]).expect("seed").public_key()
    }

    fn event<'a>(d: &'a DeviceId, seq: u64, id: &'a str) -> NewEvent<'a> {
        NewEvent {
            device: d,
            seq,
            event_id: id,
            gnss_ms: 1,
            kind: "nearby",
            envelope: b"x",
            received_ms: 2,
            quarantine: None,
        }
    }

    #[test]
    fn migrations_bring_a_new_database_to_the_current_version() {
        let store = Store::open_in_memory().expect("open");
        assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
    }

    #[test]
    fn hubs_starting_together_on_one_new_file_migrate_it_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hub.db");
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        Store::open(&path, StoreOptions::default()).map(|store| store.schema_version())
                    })
                })
                .collect();
            for handle in opened {
                let version = handle.join().expect("thread").expect("open").expect("version");
                assert_eq!(version, SCHEMA_VERSION);
            }
        });
    }

    #[test]
    fn events_are_stored_once_and_conflicts_are_named() {
        let mut store = Store::open_in_memory().expect("open");
        let van = device("van-1");
        let tx = store.transaction().expect("tx");
        assert_eq!(tx.insert_event(&event(&van, 1, "a")).expect("insert"), EventInsert::Stored);
        assert_eq!(tx.insert_event(&event(&van, 1, "a")).expect("insert"), EventInsert::Duplicate);
        assert_eq!(tx.insert_event(&event(&van, 1, "b")).expect("insert"), EventInsert::SeqConflict);
        assert_eq!(tx.insert_event(&event(&van, 2, "a")).expect("insert"), EventInsert::EventIdReused);
        tx.commit().expect("commit");
        assert_eq!(store.event_count(&van).expect("count"), 1);
    }

    #[test]
    fn the_ack_high_water_stops_at_the_first_gap() {
        let mut store = Store::open_in_memory().expect("open");
        let van = device("van-1");
        let fleet = FleetId::new("acme").expect("fleet");
        let tx = store.transaction().expect("tx");
        for (seq, id) in [(1, "a"), (2, "b"), (4, "d")] {
            tx.insert_event(&event(&van, seq, id)).expect("insert");
        }
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 2);
        tx.insert_event(&event(&van, 3, "c")).expect("insert");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 4);
        tx.commit().expect("commit");
        assert_eq!(store.ack_high_water(&van).expect("hw"), 4);
    }

    fn sample<'a>(d: &'a DeviceId, seq: u64, id: &'a str) -> NewEvent<'a> {
        NewEvent { kind: "position", ..event(d, seq, id) }
    }

    fn gap<'a>(d: &'a DeviceId, first_seq: u64, last_seq: u64, id: &'a str) -> NewGap<'a> {
        NewGap { device: d, first_seq, last_seq, event_id: id, envelope: b"signed", received_ms: 3 }
    }

    #[test]
    fn the_ack_moves_past_seqs_a_gap_notice_covers() {
        let mut store = Store::open_in_memory().expect("open");
        let van = device("van-1");
        let fleet = FleetId::new("acme").expect("fleet");
        let tx = store.transaction().expect("tx");
        for (seq, id) in [(1, "a"), (2, "b")] {
            tx.insert_event(&sample(&van, seq, id)).expect("insert");
        }
        // Samples 3..=6 were evicted; the notice travels at seq 3. Seq 7 arrived already.
        tx.insert_event(&NewEvent { kind: "gap", ..event(&van, 3, "g") }).expect("insert");
        tx.insert_event(&event(&van, 7, "h")).expect("insert");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 3, "the notice's own seq; not applied yet");
        let applied = tx.apply_gap(&gap(&van, 3, 6, "g")).expect("gap");
        assert_eq!(applied, GapApplied { new: true, confirmations_in_range: 0 });
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 7);
        // Applying it again changes nothing.
        assert!(!tx.apply_gap(&gap(&van, 3, 6, "g")).expect("gap").new);
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 7);
        tx.commit().expect("commit");
        assert_eq!(store.ack_high_water(&van).expect("hw"), 7);
        assert_eq!(store.gap_notices(&van).expect("gaps"), vec![(3, 6)]);
    }

    #[test]
    fn a_gap_notice_over_a_stored_sample_still_moves_the_ack() {
        let mut store = Store::open_in_memory().expect("open");
        let van = device("van-1");
        let fleet = FleetId::new("acme").expect("fleet");
        let tx = store.transaction().expect("tx");
        for (seq, id) in [(1, "a"), (2, "b"), (3, "c")] {
            tx.insert_event(&sample(&van, seq, id)).expect("insert");
        }
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 3);
        // Sample 3 arrived, then the agent evicted 3..=5 before it saw the ack: the notice
        // at seq 3 conflicts with the stored sample, and is applied all the same.
        let notice = NewEvent { kind: "gap", ..event(&van, 3, "g") };
        assert_eq!(tx.insert_event(&notice).expect("insert"), EventInsert::SeqConflict);
        tx.apply_gap(&gap(&van, 3, 5, "g")).expect("gap");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 5);
        tx.insert_event(&event(&van, 6, "f")).expect("insert");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 6);
    }

    #[test]
    fn a_gap_notice_never_skips_a_hole_before_it() {
        let mut store = Store::open_in_memory().expect("open");
        let van = device("van-1");
        let other = device("van-2");
        let fleet = FleetId::new("acme").expect("fleet");
        let tx = store.transaction().expect("tx");
        tx.insert_event(&event(&van, 1, "a")).expect("insert");
        // Seq 2 (a confirmation still on its way) is missing; samples 3..=5 were evicted.
        tx.apply_gap(&gap(&van, 3, 5, "g")).expect("gap");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 1);
        tx.insert_event(&event(&van, 2, "b")).expect("insert");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 5);
        // Another device's notice is not this one's.
        tx.apply_gap(&gap(&other, 1, 100, "o")).expect("gap");
        assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 5);
    }

    #[test]
    fn a_gap_notice_over_stored_confirmations_says_so() {
        let mut store = Store::open_in_memory().expect("open");
        let van = device("van-1");
        let tx = store.transaction().expect("tx");
        tx.insert_event(&sample(&van, 1, "a")).expect("insert");
        tx.insert_event(&event(&van, 2, "b")).expect("insert");
        let applied = tx.apply_gap(&gap(&van, 1, 3, "g")).expect("gap");
        assert_eq!(applied.confirmations_in_range, 1);
    }

    #[test]
    fn live_state_and_position_keep_the_newest() {
        use doorstep_proto::FixEvidence;
        use doorstep_proto::state::DeviceState;
        let mut store = Store::open_in_memory().expect("open");
        let fleet = FleetId::new("acme").expect("fleet");
        let van = device("van-1");
        store.add_device(&fleet, &van, &key(1), false, 0).expect("add");
        let tx = store.transaction().expect("tx");
        assert_eq!(tx.active_fleet(&van).expect("fleet"), Some(fleet.clone()));
        tx.set_device_state(&van, &DeviceState::online("0.1.0", 12), 10).expect("state");
        assert!(tx.set_live_position(&van, &FixEvidence::new(2_000, 47.0, 8.0), 11).expect("pos"));
        assert!(!tx.set_live_position(&van, &FixEvidence::new(1_000, 46.0, 7.0), 12).expect("pos"), "older");
        tx.commit().expect("commit");
        assert_eq!(store.queue_depths().expect("depths").devices_online, 1);

        let tx = store.transaction().expect("tx");
        tx.set_device_state(&van, &DeviceState::offline(), 20).expect("state");
        tx.commit().expect("commit");
        let status = &store.live_statuses().expect("statuses")[&van];
        assert_eq!(status.online, Some(false));
        assert_eq!(status.agent_version.as_deref(), Some("0.1.0"), "the will keeps the last version");
        assert_eq!(status.outbox_depth, Some(12));
        assert_eq!(status.state_ms, Some(20));
        let position = status.position.expect("position");
        assert_eq!((position.utc_ms, position.lat_e7, position.received_ms), (2_000, 470_000_000, 11));
        assert_eq!(store.queue_depths().expect("depths").devices_online, 0);
    }

    #[test]
    fn a_devices_current_route_is_the_one_issued_last_and_revoked_devices_have_none() {
        let mut store = Store::open_in_memory().expect("open");
        let fleet = FleetId::new("acme").expect("fleet");
        for (i, name) in ["van-1", "van-2"].into_iter().enumerate() {
            store
                .add_device(&fleet, &device(name), &key(u8::try_from(i).expect("small") + 1), false, 0)
                .expect("add");
        }
        let route = |id: &str, dwell: Option<u32>| {
            let json = format!(
                r#"{{"route_id": "{id}", "stops": [{{"stop_id": "s1", "lat": 47.0, "lon": 8.0,
                    "tracking_numbers": ["1Z999AA10123456784"]{}}}]}}"#,
                dwell.map(|d| format!(r#", "dwell_s": {d}"#)).unwrap_or_default()
            );
            RouteManifest::from_json(json.as_bytes()).expect("route")
        };
        let tx = store.transaction().expect("tx");
        tx.upsert_route(&fleet, &device("van-1"), &route("monday", None), 100).expect("route");
        tx.upsert_route(&fleet, &device("van-1"), &route("tuesday", Some(20)), 200).expect("route");
        tx.upsert_route(&fleet, &device("van-2"), &route("tuesday-2", None), 150).expect("route");
        let s1 = StopId::new("s1").expect("stop");
        assert_eq!(tx.stop_dwell_s(&device("van-1"), "tuesday", &s1).expect("dwell"), Some(20));
        assert_eq!(tx.stop_dwell_s(&device("van-1"), "monday", &s1).expect("dwell"), None, "no override");
        assert_eq!(tx.stop_dwell_s(&device("van-1"), "unknown", &s1).expect("dwell"), None, "no route");
        tx.commit().expect("commit");

        let current = store.current_routes(None).expect("routes");
        let names: Vec<_> =
            current.iter().map(|r| (r.device.as_str(), r.route.route_id.as_str(), r.issued_ms)).collect();
        assert_eq!(names, [("van-1", "tuesday", 200), ("van-2", "tuesday-2", 150)]);
        assert_eq!(store.current_routes(Some(&device("van-2"))).expect("routes").len(), 1);
        store.revoke_device(&device("van-2"), 300).expect("revoke");
        assert!(
            store.current_routes(Some(&device("van-2"))).expect("routes").is_empty(),
            "revoked: not published"
        );
    }

    #[test]
    fn revoked_devices_leave_the_keyring() {
        let mut store = Store::open_in_memory().expect("open");
        let fleet = FleetId::new("acme").expect("fleet");
        store.add_device(&fleet, &device("van-1"), &key(1), false, 0).expect("add");
        store.add_device(&fleet, &device("van-2"), &key(2), false, 0).expect("add");
        assert!(store.add_device(&fleet, &device("van-1"), &key(3), false, 0).is_err());
        assert!(
            store.add_device(&fleet, &device("van-3"), &key(1), false, 0).is_err(),
            "a key has one owner"
        );
        assert!(store.revoke_device(&device("van-1"), 5).expect("revoke"));
        let keys = store.active_keys().expect("keys");
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_key(&key(2).key_id()));
        let tx = store.transaction().expect("tx");
        assert_eq!(tx.active_device(&device("van-1"), &key(1).key_id()).expect("q"), None);
        assert!(tx.active_device(&device("van-2"), &key(2).key_id()).expect("q").is_some());
    }

    #[test]
    fn a_notification_is_enqueued_once_per_key() {
        let mut store = Store::open_in_memory().expect("open");
        let tx = store.transaction().expect("tx");
        let new = NewShipment {
            tracking_number: TrackingNumber::new("1Z999AA10123456784").expect("tn"),
            carrier: Some("ups".into()),
            order_id: None,
            contacts: BTreeMap::new(),
            locale: "en-US".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, 0).expect("insert");
        assert!(matches!(tx.insert_shipment(&new, 0), Err(StoreError::Exists(_))));
        let n = NewNotification {
            shipment_id: id,
            milestone: "delivered",
            channel: "sms",
            recipient: "+15555550100",
            detail: None,
            now_ms: 1,
        };
        assert!(tx.enqueue_notification(&n).expect("enqueue"));
        assert!(!tx.enqueue_notification(&n).expect("enqueue again"));
        tx.commit().expect("commit");
        assert_eq!(store.outbox_due(10, 10).expect("due").len(), 1);
    }
}
