//! The store-and-forward outbox: every signed event is committed to SQLite before any
//! send is tried, and deleted only when the hub's signed cumulative ack covers it.
//!
//! One SQLite file (WAL) holds the whole agent's durable state. The outbox owns these
//! tables in it:
//!
//! | table          | what                                                             |
//! |----------------|------------------------------------------------------------------|
//! | `meta`         | device id, next sequence number, last hub ack, alarm counters     |
//! | `events`       | one row per signed event: seq, kind, exact wire bytes, event time |
//! | `photos`       | proof photos waiting for the hub, with upload progress            |
//! | `photo_chunks` | their bytes, cut into [`MAX_CHUNK_LEN`] chunks                    |
//!
//! # Invariants
//!
//! - **Nothing is lost** (DESIGN.md invariant 3): [`Outbox::append`] returns only after
//!   the event is committed, and a confirmation's commit is fsync'd (see
//!   [`Durability`]). Rows are deleted only by [`Outbox::ack`], which only the hub's
//!   verified ack calls, and by eviction, which only ever takes position samples and
//!   leaves a signed gap notice in their place (see below). Confirmations are never
//!   evicted; when even they do not fit, `append` fails with a typed error, a counter
//!   moves and nothing stored is touched.
//! - **Nothing is doubled** (invariant 4): a sequence number is never handed out twice,
//!   across restarts, power loss and even a corrupt database:
//!   1. `next_seq` lives in `meta` and moves in the same transaction as the insert.
//!   2. A row leaves the outbox (through [`Outbox::pending`]) only once it is durable
//!      on disk, so a seq the hub may have seen can never be rolled back by power loss.
//!   3. Before `pending` hands out a seq, the side file `<db>.seq-hwm` records that every
//!      seq ever handed out is below its value (written atomically and fsync'd). If the
//!      database is lost or corrupt, numbering resumes at that high-water mark.
//!   4. A hub ack naming a seq at or above `next_seq` (which only happens when both the
//!      database and the side file were lost) moves `next_seq` past it.
//!
//!   The random 128-bit event id in every envelope is the last line of defence: a hub
//!   that sees one (device, seq) with two event ids knows a device store was lost.
//! - **Corrupt files are evidence**: a database that fails to open or fails
//!   `PRAGMA quick_check` is renamed to `<name>.corrupt-<UTC timestamp>` (with its WAL),
//!   never deleted; the agent raises an alarm (error log, counter, `status`), salvages
//!   what rows it can still read, and starts a fresh file.
//!
//! # Gaps in the sequence
//!
//! A full outbox thins position samples, oldest first. The hub acknowledges the highest
//! *contiguous* seq, so a silent hole would stop its ack for good and, behind it, every
//! later confirmation. Each evicted run of consecutive position seqs `a..=b` (runs end at
//! confirmations, which are never evicted) is therefore replaced, in the eviction's own
//! transaction, by one signed [`Gap`] notice stored at seq `a`, and rows `a+1..=b` go.
//! A gap row is kept like a confirmation (never evicted itself) and travels like any
//! other event; a hub that holds it may move its ack to `b`. The budget charges a notice
//! like any row and counts only what a replacement really frees; a lone sample between
//! two confirmations still becomes a (smaller) notice. While nothing has been handed to
//! the uplink (an outage), the next eviction grows the newest notice instead of adding
//! one; a notice that may have been published is never changed.
//!
//! The hub may already hold the first samples of a run that was evicted after they
//! were published. If its ack lands inside a gap's range, [`Outbox::ack`] re-issues the
//! rest of the range as a fresh notice at the seq after the ack, so no hole is left
//! that nothing covers.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use doorstep_proto::blob::{BlobChunk, MAX_CHUNK_LEN, MAX_PHOTO_LEN};
use doorstep_proto::{
    DeviceId, Envelope, EnvelopeError, Event, EventId, Gap, HexBytes, PublicKey, SigningKey, TrustedKey,
};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// Default byte budget for queued events: 64 MiB, about half a million events, days of
/// 1 Hz position samples, and a small share of a van unit's eMMC.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default byte budget for queued proof photos: 64 MiB, a dozen phone photos.
pub const DEFAULT_MAX_PHOTO_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes charged per stored event on top of its wire bytes (row header, index entry),
/// so that the budget tracks the file size rather than only the payloads.
pub const ROW_OVERHEAD_BYTES: u64 = 40;
/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = 1;
/// Suffix of the sequence high-water-mark side file next to the database.
pub const SEQ_HWM_SUFFIX: &str = ".seq-hwm";
/// Jobs that may wait for the outbox thread before callers are made to wait: the
/// backpressure bound between the async tasks and the SQLite thread.
pub const OUTBOX_QUEUE: usize = 64;
/// Fraction of the budget freed at once when positions must be evicted, so that a
/// full outbox does not evict on every append (1/64 of 64 MiB is 1 MiB).
const EVICT_BATCH_DIVISOR: u64 = 64;
/// WAL file size kept after checkpoints, so that a burst does not leave a large file.
const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;
/// Gap notices one eviction may write once it has freed what the new event needs. A
/// driver scanning at every house leaves short position runs between confirmations;
/// this keeps a batch eviction over them from signing thousands of notices at once.
const MAX_GAPS_PER_EVICTION: usize = 256;
/// The most a gap notice can grow when its run grows: `last_seq` is a varint of 1 to 10
/// bytes. Used to stop inside a run without signing a notice for every candidate end.
const GAP_GROWTH_BOUND: u64 = 9;
/// The `kind` column of a gap notice's row.
const GAP_KIND: &str = "gap";

/// How an outbox is sized and whose events it holds.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The device whose events these are; a database of another device is refused.
    pub device: DeviceId,
    /// Budget for queued events, in bytes ([`DEFAULT_MAX_BYTES`]).
    pub max_bytes: u64,
    /// Budget for queued photos, in bytes ([`DEFAULT_MAX_PHOTO_BYTES`]).
    pub max_photo_bytes: u64,
    /// A hard cap on the database file itself (`PRAGMA max_page_count`), for a
    /// partition shared with other data. `None`: only the disk's size limits it.
    pub max_file_bytes: Option<u64>,
    /// The device's public key. When set, rows salvaged from a corrupt database are
    /// kept only if their signature still verifies (a damaged row would be refused by
    /// the hub and stall its contiguous ack); otherwise only their device and seq are
    /// checked.
    pub public_key: Option<PublicKey>,
}

impl OutboxConfig {
    /// The default budgets for `device`.
    pub fn new(device: DeviceId) -> Self {
        Self {
            device,
            max_bytes: DEFAULT_MAX_BYTES,
            max_photo_bytes: DEFAULT_MAX_PHOTO_BYTES,
            max_file_bytes: None,
            public_key: None,
        }
    }

    /// Sets the device's public key, used to check salvaged rows.
    pub fn with_public_key(mut self, key: PublicKey) -> Self {
        self.public_key = Some(key);
        self
    }

    /// Applies the operator's limits from the config file.
    pub fn with_limits(mut self, limits: &OutboxLimits) -> Self {
        self.max_bytes = limits.max_bytes;
        self.max_photo_bytes = limits.max_photo_bytes;
        self.max_file_bytes = limits.max_file_bytes;
        self
    }
}

/// The `[outbox]` section of the agent's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxLimits {
    /// Budget for queued events, in bytes. Position samples are evicted (oldest first)
    /// to stay under it; confirmations never are.
    pub max_bytes: u64,
    /// Budget for queued proof photos, in bytes.
    pub max_photo_bytes: u64,
    /// Optional hard cap on the database file, in bytes.
    pub max_file_bytes: Option<u64>,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_MAX_BYTES, max_photo_bytes: DEFAULT_MAX_PHOTO_BYTES, max_file_bytes: None }
    }
}

/// Why the outbox could not do what was asked. Nothing already stored is ever lost
/// because of one of these.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// SQLite failed (I/O error, locked file, ...).
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The byte budget is used up by confirmations; the event was not stored.
    #[error(
        "outbox is full: {stored} of {max_bytes} bytes hold events that must not be evicted; \
         this {kind} event was NOT stored (restore the uplink, or raise outbox.max_bytes)"
    )]
    Full {
        /// The refused event's kind.
        kind: &'static str,
        /// Bytes in use.
        stored: u64,
        /// The budget.
        max_bytes: u64,
    },
    /// The disk (or `max_file_bytes`) is full; the event was not stored.
    #[error("the disk holding the outbox is full; this {kind} event was NOT stored (free space on it)")]
    DiskFull {
        /// The refused event's kind.
        kind: &'static str,
    },
    /// The photo budget is used up; the photo was not queued.
    #[error(
        "photo lane is full: {used} of {max} bytes in use; a {size}-byte photo was NOT queued \
         (restore the uplink, or raise outbox.max_photo_bytes)"
    )]
    PhotoLaneFull {
        /// The photo's size.
        size: u64,
        /// Bytes in use.
        used: u64,
        /// The budget.
        max: u64,
    },
    /// The photo is empty or larger than the wire contract allows.
    #[error("a photo must be 1 to {MAX_PHOTO_LEN} bytes; this one is {0}")]
    PhotoSize(u64),
    /// The photo's bytes do not hash to the SHA-256 it was registered under.
    #[error("photo bytes do not match SHA-256 {0}")]
    PhotoHash(HexBytes<32>),
    /// The event breaks a limit the hub would refuse it for; it was not stored.
    #[error("event cannot be sealed: {0}")]
    Seal(#[from] EnvelopeError),
    /// The database belongs to another device.
    #[error(
        "outbox database belongs to device {found:?}, not {expected}; point the agent at its own database"
    )]
    DeviceMismatch {
        /// The device named in the file.
        found: String,
        /// The configured device.
        expected: DeviceId,
    },
    /// The database was written by a newer agent.
    #[error(
        "outbox schema version {0} is newer than this agent understands ({SCHEMA_VERSION}); upgrade the agent"
    )]
    SchemaTooNew(u32),
    /// A file next to the database could not be written or moved.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The outbox thread has stopped (the agent is shutting down).
    #[error("the outbox has been closed")]
    Closed,
    /// The fresh database that replaced a corrupt one is corrupt too.
    #[error("the fresh outbox database is unusable as well ({0}); check the disk")]
    StillCorrupt(String),
    /// The outbox thread could not be started.
    #[error("cannot start the outbox thread: {0}")]
    Thread(std::io::Error),
}

impl OutboxError {
    /// Whether the event was refused for lack of space (the loud, counted case).
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            OutboxError::Full { .. } | OutboxError::DiskFull { .. } | OutboxError::PhotoLaneFull { .. }
        )
    }
}

/// The result of a successful [`Outbox::append`]: the event is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Its random event id.
    pub event_id: EventId,
    /// Size of its signed envelope.
    pub wire_len: usize,
}

/// How hard a commit is pushed to the disk.
///
/// The outbox runs in WAL mode. With `synchronous = NORMAL` a commit appends to the WAL
/// without fsync: it survives a crash of the agent but not a power cut. With `FULL` the
/// WAL is fsync'd at the commit, which also makes every earlier commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync'd before `append` returns. Confirmations: the driver has been told the scan
    /// is recorded, and vans lose power without warning when the ignition goes off, so
    /// the event must be on the flash before we answer (about one fsync per scan, a few
    /// milliseconds on eMMC, rare enough not to matter).
    Synced,
    /// Group-committed. Position samples arrive every second and are replaceable; they
    /// are fsync'd with the next confirmation or before the uplink reads them
    /// ([`Outbox::pending`]), so a power cut loses at most the unsent tail of the trail
    /// and never a seq the hub has seen.
    Grouped,
}

impl Durability {
    /// The durability an event kind gets.
    pub fn for_event(event: &Event) -> Self {
        if event.is_confirmation() { Durability::Synced } else { Durability::Grouped }
    }
}

/// How many events of one kind wait, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindDepth {
    /// Events waiting.
    pub count: u64,
    /// Their wire bytes.
    pub bytes: u64,
}

/// The outbox's counters and depth, as `status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStats {
    /// Waiting events by kind (`position`, `delivered_at_address`, ...).
    pub depth_by_kind: BTreeMap<String, KindDepth>,
    /// Oldest waiting event's seq and event time (GNSS UTC ms), if any.
    pub oldest_unacked: Option<(u64, i64)>,
    /// The next sequence number to be handed out.
    pub next_seq: u64,
    /// The last sequence number the hub acknowledged.
    pub acked_seq: u64,
    /// Bytes charged against the budget.
    pub stored_bytes: u64,
    /// The budget.
    pub max_bytes: u64,
    /// Photos waiting, and their remaining bytes.
    pub photos: KindDepth,
    /// Position samples evicted to make room, ever.
    pub evicted_positions: u64,
    /// Events refused for lack of space, ever (confirmations among them are the alarm).
    pub rejected_full: u64,
    /// Confirmations refused for lack of space, ever: should be zero.
    pub rejected_confirmations: u64,
    /// Event time of the last refusal, GNSS UTC ms.
    pub last_rejected_ms: Option<i64>,
    /// Corrupt databases moved aside, ever.
    pub corrupt_files: u64,
    /// Where the last corrupt database went, and what was salvaged from it.
    pub last_corrupt: Option<String>,
    /// Size of the database and its WAL on disk.
    pub disk_bytes: u64,
}

impl OutboxStats {
    /// Events waiting, all kinds.
    pub fn depth(&self) -> u64 {
        self.depth_by_kind.values().map(|d| d.count).sum()
    }
}

/// A photo waiting for the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingPhoto {
    /// SHA-256 of its bytes, as in the signed confirmation.
    pub sha256: HexBytes<32>,
    /// Its size.
    pub total_len: u64,
    /// The first chunk the hub has not acknowledged.
    pub next_index: u32,
}

/// The outbox: one SQLite connection, owned by one thread at a time.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    cfg: OutboxConfig,
    rng: SystemRandom,
    next_seq: u64,
    acked_seq: u64,
    /// Value in the `.seq-hwm` side file: every seq handed out is below it.
    seq_hwm: u64,
    /// Highest seq [`Outbox::pending`] returned since open (the side file may lag it
    /// when the disk is full).
    handed_out: u64,
    stored_bytes: u64,
    photo_bytes: u64,
    /// Commits since the last fsync (group-committed positions).
    unsynced: bool,
    synchronous_full: bool,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .field("device", &self.cfg.device)
            .field("next_seq", &self.next_seq)
            .field("acked_seq", &self.acked_seq)
            .field("stored_bytes", &self.stored_bytes)
            .finish_non_exhaustive()
    }
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    confirmation INTEGER NOT NULL,
    wire BLOB NOT NULL,
    event_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_class ON events (confirmation, seq);
CREATE TABLE IF NOT EXISTS photos (
    sha256 BLOB PRIMARY KEY NOT NULL,
    total_len INTEGER NOT NULL,
    next_index INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS photo_chunks (
    sha256 BLOB NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (sha256, idx)
);
";

/// Why opening a file failed: a corrupt file is moved aside, anything else is an error.
enum OpenFailure {
    Corrupt(String),
    Other(OutboxError),
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

fn classify(e: rusqlite::Error) -> OpenFailure {
    if is_corruption(&e) { OpenFailure::Corrupt(e.to_string()) } else { OpenFailure::Other(e.into()) }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn wall_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn utc_stamp() -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_else(|_| format!("{}ms", wall_ms()))
}

/// The side file holding the sequence high-water mark for the database at `db`.
pub fn seq_hwm_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(SEQ_HWM_SUFFIX);
    PathBuf::from(name)
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn read_hwm(path: &Path) -> u64 {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::error!(path = %path.display(), "sequence high-water-mark file is unreadable; ignoring it");
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the sequence high-water mark");
            0
        }
    }
}

/// Writes `value` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = sidecar(path, ".tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if sync && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes the high-water mark in place, fixed width, and fsyncs it. Overwriting the same
/// bytes needs no new disk blocks, so this still works on a full disk; a 21-byte write
/// inside one sector is not torn by a power cut.
fn write_hwm(path: &Path, value: u64) -> std::io::Result<()> {
    let created = !path.exists();
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    file.write_all(format!("{value:020}\n").as_bytes())?;
    file.sync_data()?;
    if created && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What could be read back from a corrupt file before it was replaced.
#[derive(Debug, Default)]
struct Salvage {
    next_seq: u64,
    acked_seq: u64,
    corrupt_files: u64,
    rows: Vec<(u64, String, bool, Vec<u8>, i64)>,
}

fn salvage(path: &Path, device: &DeviceId, public_key: Option<PublicKey>) -> Salvage {
    let mut out = Salvage::default();
    let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return out;
    };
    let meta = |key: &str| -> Option<i64> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0)).ok()
    };
    out.next_seq = meta("next_seq").map(u64_of).unwrap_or(0);
    out.acked_seq = meta("acked_seq").map(u64_of).unwrap_or(0);
    out.corrupt_files = meta("corrupt_files").map(u64_of).unwrap_or(0);
    let Ok(mut stmt) =
        conn.prepare("SELECT seq, kind, confirmation, wire, event_ms FROM events ORDER BY seq")
    else {
        return out;
    };
    let Ok(rows) = stmt.query_map([], |r| {
        Ok((
            u64_of(r.get(0)?),
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get(4)?,
        ))
    }) else {
        return out;
    };
    // Keep rows until the first unreadable one; a row is kept only if its envelope still
    // names this device and this seq and, when the key is known, still verifies.
    for row in rows {
        let Ok(row) = row else { break };
        let decoded = match public_key {
            Some(key) => Envelope::open(&row.3, &TrustedKey { device: device.clone(), key }),
            None => Envelope::peek_unverified(&row.3).map(|(_, env)| env),
        };
        let intact = decoded.is_ok_and(|env| env.device == *device && env.seq == row.0);
        if intact && row.0 > out.acked_seq {
            out.next_seq = out.next_seq.max(row.0 + 1);
            out.rows.push(row);
        }
    }
    out
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`.
    ///
    /// A file that SQLite calls corrupt, or that fails `PRAGMA quick_check`, is moved
    /// aside as `<name>.corrupt-<UTC timestamp>` with its WAL, an alarm is raised, the
    /// readable rows are salvaged into a fresh file, and numbering resumes above anything
    /// handed out before (see the module docs).
    pub fn open(path: &Path, cfg: OutboxConfig) -> Result<Outbox, OutboxError> {
        let hwm_path = seq_hwm_path(path);
        match Self::try_open(path, &cfg) {
            Ok(conn) => Self::finish_open(conn, path, cfg, None),
            Err(OpenFailure::Other(e)) => Err(e),
            Err(OpenFailure::Corrupt(reason)) => {
                let stamp = utc_stamp();
                let aside = sidecar(path, &format!(".corrupt-{stamp}"));
                for suffix in ["", "-wal", "-shm"] {
                    let from = sidecar(path, suffix);
                    if from.exists() {
                        let to = sidecar(&aside, suffix);
                        fs::rename(&from, &to).map_err(|source| OutboxError::File {
                            what: "cannot move the corrupt outbox aside to",
                            path: to,
                            source,
                        })?;
                    }
                }
                let salvaged = salvage(&aside, &cfg.device, cfg.public_key);
                let hwm = read_hwm(&hwm_path);
                tracing::error!(
                    device = %cfg.device,
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason,
                    salvaged_rows = salvaged.rows.len(),
                    seq_hwm = hwm,
                    "ALARM: outbox database is corrupt; moved it aside and started a fresh one"
                );
                let conn = Self::try_open(path, &cfg).map_err(|f| match f {
                    OpenFailure::Corrupt(r) => OutboxError::StillCorrupt(r),
                    OpenFailure::Other(e) => e,
                })?;
                let note = format!(
                    "{} at {stamp} ({reason}); {} unacknowledged events salvaged",
                    aside.display(),
                    salvaged.rows.len()
                );
                Self::finish_open(conn, path, cfg, Some((salvaged, note)))
            }
        }
    }

    fn try_open(path: &Path, cfg: &OutboxConfig) -> Result<Connection, OpenFailure> {
        let conn = Connection::open(path).map_err(classify)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(classify)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "outbox could not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT).map_err(classify)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(classify)?;
        if check != "ok" {
            return Err(OpenFailure::Corrupt(format!("quick_check: {check}")));
        }
        if let Some(max) = cfg.max_file_bytes {
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(classify)?;
            let pages = i64_of(max) / page.max(512);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).map_err(classify)?;
        }
        Ok(conn)
    }

    fn finish_open(
        mut conn: Connection,
        path: &Path,
        cfg: OutboxConfig,
        salvaged: Option<(Salvage, String)>,
    ) -> Result<Outbox, OutboxError> {
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(OutboxError::SchemaTooNew(version));
        }
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if version < 1 {
                tx.execute_batch(SCHEMA_V1)?;
            }
            // Future migrations: `if version < 2 { ... }`, each in this transaction.
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            let device: Option<String> =
                tx.query_row("SELECT value FROM meta WHERE key = 'device'", [], |r| r.get(0)).optional()?;
            match device {
                Some(found) if found != cfg.device.as_str() => {
                    return Err(OutboxError::DeviceMismatch { found, expected: cfg.device.clone() });
                }
                Some(_) => {}
                None => {
                    tx.execute("INSERT INTO meta (key, value) VALUES ('device', ?1)", [cfg.device.as_str()])?;
                }
            }
            if let Some((salvage, note)) = &salvaged {
                set_meta(&tx, "acked_seq", i64_of(salvage.acked_seq))?;
                set_meta(&tx, "next_seq", i64_of(salvage.next_seq.max(1)))?;
                set_meta(&tx, "corrupt_files", i64_of(salvage.corrupt_files + 1))?;
                tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_corrupt', ?1)", [note])?;
                let mut insert = tx.prepare(
                    "INSERT OR IGNORE INTO events (seq, kind, confirmation, wire, event_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (seq, kind, confirmation, wire, event_ms) in &salvage.rows {
                    insert.execute(params![i64_of(*seq), kind, confirmation, wire, event_ms])?;
                }
            }
            tx.commit()?;
        }
        // The fresh file after a corruption must be on disk before anything else happens.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; BEGIN IMMEDIATE; COMMIT; PRAGMA synchronous = NORMAL;",
        )?;

        let meta_u64 = |key: &str| -> Result<u64, rusqlite::Error> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0))
                .optional()?
                .map(u64_of)
                .unwrap_or(0))
        };
        let hwm_path = seq_hwm_path(path);
        let seq_hwm = read_hwm(&hwm_path);
        let mut next_seq = meta_u64("next_seq")?.max(1);
        if seq_hwm > next_seq {
            // The database is younger than the numbers already handed out (a corrupt or
            // deleted file): resume above them so that no seq is ever reused.
            tracing::warn!(device = %cfg.device, next_seq, seq_hwm, "resuming sequence numbers at the high-water mark");
            next_seq = seq_hwm;
        }
        let acked_seq = meta_u64("acked_seq")?;
        let (rows, wire_bytes): (i64, i64) =
            conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(wire)), 0) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let max_seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
        next_seq = next_seq.max(max_seq.map_or(0, |s| u64_of(s) + 1));
        let photo_bytes: i64 =
            conn.query_row("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM photo_chunks", [], |r| r.get(0))?;
        let mut outbox = Outbox {
            conn,
            path: path.to_owned(),
            rng: SystemRandom::new(),
            next_seq,
            acked_seq,
            seq_hwm,
            handed_out: 0,
            stored_bytes: u64_of(wire_bytes) + u64_of(rows) * ROW_OVERHEAD_BYTES,
            photo_bytes: u64_of(photo_bytes),
            unsynced: false,
            synchronous_full: false,
            cfg,
        };
        set_meta(&outbox.conn, "next_seq", i64_of(outbox.next_seq))?;
        outbox.unsynced = true;
        tracing::info!(
            device = %outbox.cfg.device,
            path = %outbox.path.display(),
            depth = rows,
            next_seq = outbox.next_seq,
            acked_seq = outbox.acked_seq,
            "outbox open"
        );
        // Make the resumed numbering durable before anything is handed out.
        outbox.sync()?;
        Ok(outbox)
    }

    /// The configured device.
    pub fn device(&self) -> &DeviceId {
        &self.cfg.device
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last sequence number the hub acknowledged.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Bytes charged against the event budget.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    fn set_synchronous(&mut self, full: bool) -> Result<(), OutboxError> {
        if self.synchronous_full != full {
            self.conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.synchronous_full = full;
        }
        Ok(())
    }

    /// Makes every commit so far durable (one fsync of the WAL), if any is not yet.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if !self.unsynced {
            return Ok(());
        }
        self.set_synchronous(true)?;
        // A commit that writes something: only a commit that appends a WAL frame syncs it.
        set_meta(&self.conn, "synced_next_seq", i64_of(self.next_seq))?;
        self.set_synchronous(false)?;
        self.unsynced = false;
        Ok(())
    }

    /// Signs `event` as the next event of this device and commits it.
    ///
    /// In one transaction: the next seq, a random 128-bit event id, the sealed envelope,
    /// the row, the bumped seq; if the budget needs it, the oldest position samples are
    /// evicted and each run of them replaced by a signed gap notice (see the module
    /// docs). A confirmation is fsync'd before this returns ([`Durability`]). On any
    /// error nothing changes and no seq is consumed.
    pub fn append(
        &mut self,
        key: &SigningKey,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
    ) -> Result<Appended, OutboxError> {
        self.append_with_state(key, event, gnss_utc_ms, mono_ms, None)
    }

    /// [`Outbox::append`], and in the same transaction the decision state that makes the
    /// event happen once (`(name, bytes)`, kept in the file's meta table; read it back with
    /// [`Outbox::state`]). A confirmation and the route progress that makes a second scan
    /// of the same parcel a duplicate are then on disk together or not at all: an agent
    /// killed between the two can neither lose the confirmation nor sign it twice.
    pub fn append_with_state(
        &mut self,
        key: &SigningKey,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
        state: Option<(&str, &[u8])>,
    ) -> Result<Appended, OutboxError> {
        let kind = event.kind();
        let confirmation = event.is_confirmation();
        let durability = Durability::for_event(&event);
        let seq = self.next_seq;
        let event_id = self.event_id()?;
        let envelope =
            Envelope { device: self.cfg.device.clone(), seq, event_id, gnss_utc_ms, mono_ms, event };
        let wire = envelope.seal(key)?;
        let row = NewRow { seq, kind, confirmation, wire: &wire, event_ms: gnss_utc_ms, durability, state };

        let result = self.insert(key, &row);
        let result = match result {
            Err(OutboxError::DiskFull { .. }) if confirmation => {
                // The file or the disk is full while the budget is not: make room from
                // positions and try once more before refusing a confirmation.
                let target = row.charge().max(self.cfg.max_bytes / EVICT_BATCH_DIVISOR);
                let freed = self.evict_positions(key, target)?;
                if freed > 0 { self.insert(key, &row) } else { Err(OutboxError::DiskFull { kind }) }
            }
            other => other,
        };
        match result {
            Ok(()) => {
                tracing::debug!(device = %self.cfg.device, seq, kind, wire_len = wire.len(), "event stored");
                Ok(Appended { seq, event_id, wire_len: wire.len() })
            }
            Err(e) => {
                if e.is_full() {
                    self.count_rejection(confirmation, gnss_utc_ms);
                    if confirmation {
                        tracing::error!(device = %self.cfg.device, kind, error = %e, "ALARM: confirmation NOT stored");
                    } else {
                        tracing::warn!(device = %self.cfg.device, kind, error = %e, "position sample not stored");
                    }
                }
                Err(e)
            }
        }
    }

    fn event_id(&self) -> Result<EventId, OutboxError> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| OutboxError::Random)?;
        Ok(HexBytes(id))
    }

    fn insert(&mut self, key: &SigningKey, row: &NewRow<'_>) -> Result<(), OutboxError> {
        // Decide the eviction before the transaction: which positions go, which gap
        // notices replace them, and whether the event fits at all once they have.
        let row_bytes = row.charge();
        let mut eviction = None;
        if self.stored_bytes + row_bytes > self.cfg.max_bytes {
            let need = self.stored_bytes + row_bytes - self.cfg.max_bytes;
            let target = need.max(self.cfg.max_bytes / EVICT_BATCH_DIVISOR);
            let plan = self.plan_eviction(key, need, target)?;
            if plan.net < need {
                return Err(OutboxError::Full {
                    kind: row.kind,
                    stored: self.stored_bytes,
                    max_bytes: self.cfg.max_bytes,
                });
            }
            eviction = Some(plan);
        }
        self.set_synchronous(row.durability == Durability::Synced)?;
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(plan) = &eviction {
                apply_eviction(&tx, plan)?;
            }
            insert_row(&tx, row)?;
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                if let Some(plan) = &eviction {
                    self.stored_bytes -= plan.net;
                    plan.log(&self.cfg.device, "outbox full");
                }
                self.stored_bytes += row_bytes;
                self.next_seq = row.seq + 1;
                self.unsynced = row.durability == Durability::Grouped;
                Ok(())
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => {
                Err(OutboxError::DiskFull { kind: row.kind })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Chooses the oldest position samples whose replacement by gap notices frees at
    /// least `need` bytes, and goes on to `target` (or [`MAX_GAPS_PER_EVICTION`] notices)
    /// so that a full outbox does not evict on every append. Signs the notices; changes
    /// nothing. A plan freeing less than `need` means even all positions are not enough.
    ///
    /// Runs are consecutive seqs: a confirmation (or an older gap notice) between two
    /// samples occupies a seq, so it ends the run. The plan is one pass over the
    /// positions, oldest first, signing at most two notices per run; it ends when the
    /// positions do, so an outbox of nothing but lone samples between confirmations
    /// yields a short plan and a refusal, never a loop.
    fn plan_eviction(&self, key: &SigningKey, need: u64, target: u64) -> Result<Eviction, OutboxError> {
        let done = |net: u64, runs: usize| net >= need && (net >= target || runs >= MAX_GAPS_PER_EVICTION);
        let mut plan = Eviction::default();
        let mut open: Option<GapRun> = None;
        let mut after = 0u64;
        'scan: loop {
            let batch: Vec<(u64, u64)> = self
                .conn
                .prepare_cached(
                    "SELECT seq, LENGTH(wire) FROM events WHERE confirmation = 0 AND seq > ?1 ORDER BY seq LIMIT 512",
                )?
                .query_map([i64_of(after)], |r| Ok((u64_of(r.get(0)?), u64_of(r.get(1)?))))?
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            for (seq, len) in batch {
                after = seq;
                let charge = len + ROW_OVERHEAD_BYTES;
                match &mut open {
                    Some(run) if run.last + 1 == seq => {
                        run.last = seq;
                        run.rows += 1;
                        run.positions += 1;
                        run.freed += charge;
                    }
                    _ => {
                        if let Some(run) = open.take() {
                            self.close_run(key, run, &mut plan)?;
                        }
                        if done(plan.net, plan.runs.len()) {
                            break 'scan;
                        }
                        open = Some(self.open_run(key, seq, charge)?);
                    }
                }
                // Stop inside a run as soon as it frees enough, counting its notice at
                // the largest it can grow to: the sealed one can only be smaller.
                if let Some(run) = &open {
                    let bound = run.charged() + GAP_GROWTH_BOUND;
                    if done(plan.net + run.freed.saturating_sub(bound), plan.runs.len() + 1) {
                        break 'scan;
                    }
                }
            }
        }
        if let Some(run) = open.take() {
            self.close_run(key, run, &mut plan)?;
        }
        Ok(plan)
    }

    /// Starts a run at the sample `seq`: the notice takes the sample's times, so it sorts
    /// where the samples it stands for would have.
    ///
    /// A gap notice that ends right before `seq` and was never handed to the uplink (it
    /// is at or above the seq high-water mark, as everything made during an outage is)
    /// is taken into the run: one notice grows instead of one more row per eviction. A
    /// notice that may have been published is never changed.
    fn open_run(&self, key: &SigningKey, seq: u64, charge: u64) -> Result<GapRun, OutboxError> {
        let previous: Option<(u64, u64, Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, LENGTH(wire), wire, event_ms FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([i64_of(seq)], |r| Ok((u64_of(r.get(0)?), u64_of(r.get(1)?), r.get(2)?, r.get(3)?)))
            .optional()?;
        if let Some((prev_seq, prev_len, wire, event_ms)) = previous
            && prev_seq >= self.seq_hwm
            && prev_seq > self.handed_out
            && let Ok((_, envelope)) = Envelope::peek_unverified(&wire)
            && let Event::Gap(gap) = envelope.event
            && gap.first_seq == prev_seq
            && gap.last_seq + 1 == seq
        {
            let mut run = GapRun {
                first: prev_seq,
                last: seq,
                rows: 2,
                positions: 1,
                freed: prev_len + ROW_OVERHEAD_BYTES + charge,
                gnss_utc_ms: event_ms,
                mono_ms: envelope.mono_ms,
                wire,
                sealed_last: seq,
            };
            run.wire = self.seal_gap(key, &run)?;
            return Ok(run);
        }
        let (wire, event_ms): (Vec<u8>, i64) = self
            .conn
            .prepare_cached("SELECT wire, event_ms FROM events WHERE seq = ?1")?
            .query_row([i64_of(seq)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mono_ms = Envelope::peek_unverified(&wire).map_or(0, |(_, env)| env.mono_ms);
        let mut run = GapRun {
            first: seq,
            last: seq,
            rows: 1,
            positions: 1,
            freed: charge,
            gnss_utc_ms: event_ms,
            mono_ms,
            wire,
            sealed_last: seq,
        };
        run.wire = self.seal_gap(key, &run)?;
        Ok(run)
    }

    /// Seals the run's final notice and adds it to the plan if it frees anything: only a
    /// single sample with an unusually short encoding could cost as much as its notice,
    /// and then the sample stays.
    fn close_run(&self, key: &SigningKey, mut run: GapRun, plan: &mut Eviction) -> Result<(), OutboxError> {
        if run.last != run.sealed_last {
            run.sealed_last = run.last;
            run.wire = self.seal_gap(key, &run)?;
        }
        match run.freed.checked_sub(run.charged()).filter(|net| *net > 0) {
            Some(net) => {
                plan.net += net;
                plan.positions += run.positions;
                plan.runs.push(run);
            }
            None => {
                tracing::debug!(device = %self.cfg.device, seq = run.first, "a gap notice would not be smaller than the sample; kept it")
            }
        }
        Ok(())
    }

    /// The signed gap notice for `run`, at the run's first seq.
    fn seal_gap(&self, key: &SigningKey, run: &GapRun) -> Result<Vec<u8>, OutboxError> {
        let envelope = Envelope {
            device: self.cfg.device.clone(),
            seq: run.first,
            event_id: self.event_id()?,
            gnss_utc_ms: run.gnss_utc_ms,
            mono_ms: run.mono_ms,
            event: Event::Gap(Gap { first_seq: run.first, last_seq: run.last }),
        };
        Ok(envelope.seal(key)?)
    }

    /// Evicts the oldest positions worth at least `target` bytes in its own transaction
    /// (a full disk, not a full budget); returns the bytes freed.
    fn evict_positions(&mut self, key: &SigningKey, target: u64) -> Result<u64, OutboxError> {
        let plan = self.plan_eviction(key, 1, target)?;
        if plan.runs.is_empty() {
            return Ok(0);
        }
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            apply_eviction(&tx, &plan)?;
            tx.commit()
        })();
        match outcome {
            Ok(()) => {}
            // Not even the smaller rows fit: the caller refuses the event.
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        self.stored_bytes = self.stored_bytes.saturating_sub(plan.net);
        self.unsynced = true;
        plan.log(&self.cfg.device, "disk full");
        Ok(plan.net)
    }

    fn count_rejection(&mut self, confirmation: bool, event_ms: i64) {
        // Best effort: on a full disk even this may fail, and the log line stays.
        let result = self.conn.execute_batch(&format!(
            "INSERT INTO meta (key, value) VALUES ('rejected_full', 1)
                 ON CONFLICT (key) DO UPDATE SET value = value + 1;
             INSERT INTO meta (key, value) VALUES ('rejected_confirmations', {c})
                 ON CONFLICT (key) DO UPDATE SET value = value + {c};
             INSERT OR REPLACE INTO meta (key, value) VALUES ('last_rejected_ms', {event_ms});",
            c = i64::from(confirmation)
        ));
        if let Err(e) = result {
            tracing::error!(device = %self.cfg.device, error = %e, "cannot count the refused event");
        }
    }

    /// Decision state `name` as last committed (see [`Outbox::append_with_state`]).
    pub fn state(&self, name: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        let value = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([state_key(name)], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        Ok(value)
    }

    /// Keeps decision state `name` on its own, synced (the last verified route, which
    /// must survive a power cut as surely as the events signed against it).
    pub fn set_state(&mut self, name: &str, value: &[u8]) -> Result<(), OutboxError> {
        self.set_synchronous(true)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        put_state(&tx, name, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` events after `after_seq`, in seq order, as (seq, exact wire bytes).
    ///
    /// Everything returned is durable, and the seq high-water mark covers it, before it
    /// is returned: a seq that may reach the hub can never be handed out again.
    pub fn pending(&mut self, after_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        self.sync()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(u64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT seq, wire FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![i64_of(after_seq), limit], |r| Ok((u64_of(r.get(0)?), r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if let Some((last, _)) = rows.last() {
            self.handed_out = self.handed_out.max(*last);
        }
        if let Some((last, _)) = rows.last()
            && *last >= self.seq_hwm
        {
            let path = seq_hwm_path(&self.path);
            match write_hwm(&path, self.next_seq) {
                Ok(()) => self.seq_hwm = self.next_seq,
                // Sending goes on: withholding events on a full disk would keep the disk
                // full. Reuse would now take a second fault (losing the database too).
                Err(e) => tracing::error!(
                    device = %self.cfg.device,
                    path = %path.display(),
                    error = %e,
                    "cannot write the sequence high-water mark"
                ),
            }
        }
        Ok(rows)
    }

    /// Applies the hub's cumulative ack: deletes every event with seq ≤ `up_to_seq` and
    /// returns how many were deleted. Only a verified hub ack may call this.
    ///
    /// An ack inside a gap notice's range (the hub got the first samples of the run
    /// before they were evicted) leaves the rest of the range uncovered: it is signed
    /// with `key` as a fresh notice at `up_to_seq + 1`, in the same transaction.
    pub fn ack(&mut self, key: &SigningKey, up_to_seq: u64) -> Result<usize, OutboxError> {
        if up_to_seq >= self.next_seq {
            // The hub holds numbers this store never handed out: our store and its
            // high-water mark were both lost. Never reuse them.
            tracing::error!(
                device = %self.cfg.device,
                up_to_seq,
                next_seq = self.next_seq,
                "hub acknowledged sequence numbers this outbox has not issued; skipping past them"
            );
            self.next_seq = up_to_seq + 1;
        }
        let rest = match self.gap_straddling(up_to_seq)? {
            Some(mut run) => {
                run.first = up_to_seq + 1;
                run.wire = self.seal_gap(key, &run)?;
                Some(run)
            }
            None => None,
        };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (rows, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(wire)), 0) FROM events WHERE seq <= ?1",
            [i64_of(up_to_seq)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.prepare_cached("DELETE FROM events WHERE seq <= ?1")?.execute([i64_of(up_to_seq)])?;
        if let Some(run) = &rest {
            insert_gap(&tx, run)?;
        }
        let acked = self.acked_seq.max(up_to_seq);
        set_meta(&tx, "acked_seq", i64_of(acked))?;
        set_meta(&tx, "next_seq", i64_of(self.next_seq))?;
        tx.commit()?;
        // Not fsync'd: an ack lost to a power cut only means the hub sees those events
        // once more, and it deduplicates.
        self.acked_seq = acked;
        self.stored_bytes =
            self.stored_bytes.saturating_sub(u64_of(bytes) + u64_of(rows) * ROW_OVERHEAD_BYTES);
        if let Some(run) = &rest {
            self.stored_bytes += run.charged();
            tracing::info!(
                device = %self.cfg.device,
                up_to_seq,
                first_seq = run.first,
                last_seq = run.last,
                "hub ack fell inside a gap; re-issued the rest of it"
            );
        }
        let deleted = usize::try_from(rows).unwrap_or(usize::MAX);
        tracing::debug!(device = %self.cfg.device, up_to_seq, deleted, "hub ack applied");
        Ok(deleted)
    }

    /// The stored gap notice whose range holds `seq` and goes past it, as a run with the
    /// notice's times (gap ranges never overlap, so only the last notice at or below
    /// `seq` can).
    fn gap_straddling(&self, seq: u64) -> Result<Option<GapRun>, OutboxError> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT wire, event_ms FROM events WHERE confirmation = 1 AND kind = ?1 AND seq <= ?2
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![GAP_KIND, i64_of(seq)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((wire, event_ms)) = row else { return Ok(None) };
        let Ok((_, envelope)) = Envelope::peek_unverified(&wire) else { return Ok(None) };
        Ok(match envelope.event {
            Event::Gap(gap) if gap.last_seq > seq => Some(GapRun {
                first: gap.first_seq,
                last: gap.last_seq,
                rows: 1,
                positions: 0,
                freed: 0,
                gnss_utc_ms: event_ms,
                mono_ms: envelope.mono_ms,
                wire,
                sealed_last: gap.last_seq,
            }),
            _ => None,
        })
    }

    /// Waiting events by kind.
    pub fn depth_by_kind(&self) -> Result<BTreeMap<String, KindDepth>, OutboxError> {
        Ok(depth_by_kind(&self.conn)?)
    }

    /// The oldest waiting event's seq and event time (GNSS UTC ms).
    pub fn oldest_unacked(&self) -> Result<Option<(u64, i64)>, OutboxError> {
        Ok(oldest_unacked(&self.conn)?)
    }

    /// Everything `status` shows about the outbox.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let mut stats = read_stats(&self.conn, &self.path)?;
        stats.max_bytes = self.cfg.max_bytes;
        Ok(stats)
    }

    /// Queues a proof photo for the photo lane. The bytes must hash to `sha256` (the
    /// value in the signed confirmation); they are copied into the database, so the
    /// upload survives restarts even if the original file goes. Queuing the same photo
    /// twice is harmless.
    pub fn add_photo(&mut self, sha256: HexBytes<32>, bytes: &[u8]) -> Result<(), OutboxError> {
        let size = bytes.len() as u64;
        if size == 0 || size > MAX_PHOTO_LEN {
            return Err(OutboxError::PhotoSize(size));
        }
        if ring::digest::digest(&ring::digest::SHA256, bytes).as_ref() != sha256.0.as_slice() {
            return Err(OutboxError::PhotoHash(sha256));
        }
        let known: bool = self.conn.query_row(
            "SELECT COUNT(*) > 0 FROM photos WHERE sha256 = ?1",
            [&sha256.0[..]],
            |r| r.get(0),
        )?;
        if known {
            return Ok(());
        }
        if self.photo_bytes + size > self.cfg.max_photo_bytes {
            tracing::error!(device = %self.cfg.device, sha256 = %sha256, size, "ALARM: photo lane full; photo NOT queued");
            return Err(OutboxError::PhotoLaneFull {
                size,
                used: self.photo_bytes,
                max: self.cfg.max_photo_bytes,
            });
        }
        self.set_synchronous(true)?;
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO photos (sha256, total_len, next_index, created_ms) VALUES (?1, ?2, 0, ?3)",
                params![&sha256.0[..], i64_of(size), wall_ms()],
            )?;
            let mut insert =
                tx.prepare("INSERT INTO photo_chunks (sha256, idx, data) VALUES (?1, ?2, ?3)")?;
            for (index, chunk) in bytes.chunks(MAX_CHUNK_LEN).enumerate() {
                insert.execute(params![&sha256.0[..], i64_of(index as u64), chunk])?;
            }
            drop(insert);
            tx.commit()
        })();
        self.set_synchronous(false)?;
        match result {
            Ok(()) => {
                self.photo_bytes += size;
                tracing::info!(device = %self.cfg.device, sha256 = %sha256, size, "photo queued");
                Ok(())
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => Err(OutboxError::PhotoLaneFull {
                size,
                used: self.photo_bytes,
                max: self.cfg.max_photo_bytes,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The oldest photo still waiting for the hub.
    pub fn next_photo(&self) -> Result<Option<PendingPhoto>, OutboxError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256, total_len, next_index FROM photos ORDER BY created_ms, sha256 LIMIT 1",
                [],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?
            .and_then(|(sha, total, next)| {
                Some(PendingPhoto {
                    sha256: HexBytes(sha.try_into().ok()?),
                    total_len: u64_of(total),
                    next_index: u32::try_from(next).unwrap_or(u32::MAX),
                })
            }))
    }

    /// Up to `limit` chunks of a photo from chunk `from_index` on, ready for the wire.
    pub fn photo_chunks(
        &self,
        photo: &PendingPhoto,
        from_index: u32,
        limit: usize,
    ) -> Result<Vec<BlobChunk>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT idx, data FROM photo_chunks WHERE sha256 = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
            )?
            .query_map(params![&photo.sha256.0[..], i64::from(from_index), limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(index, data)| BlobChunk {
                device: self.cfg.device.clone(),
                sha256: photo.sha256,
                total_len: photo.total_len,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                data,
            })
            .collect())
    }

    /// Applies the hub's photo ack: chunks before `next_index` are stored at the hub;
    /// `complete` means the hub has the whole photo and it matched its hash. Returns
    /// whether the photo is gone from the outbox.
    pub fn blob_ack(
        &mut self,
        sha256: &HexBytes<32>,
        next_index: u32,
        complete: bool,
    ) -> Result<bool, OutboxError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cut = if complete { i64::MAX } else { i64::from(next_index) };
        let freed: i64 = tx.query_row(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM photo_chunks WHERE sha256 = ?1 AND idx < ?2",
            params![&sha256.0[..], cut],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM photo_chunks WHERE sha256 = ?1 AND idx < ?2", params![&sha256.0[..], cut])?;
        if complete {
            tx.execute("DELETE FROM photos WHERE sha256 = ?1", [&sha256.0[..]])?;
        } else {
            tx.execute(
                "UPDATE photos SET next_index = MAX(next_index, ?2) WHERE sha256 = ?1",
                params![&sha256.0[..], i64::from(next_index)],
            )?;
        }
        tx.commit()?;
        self.photo_bytes = self.photo_bytes.saturating_sub(u64_of(freed));
        if complete {
            tracing::info!(device = %self.cfg.device, sha256 = %sha256, "photo delivered");
        }
        Ok(complete)
    }

    /// Moves the outbox onto its own thread and returns the async handle to it.
    ///
    /// The thread owns the SQLite connection (SQLite calls never run on the async
    /// workers); it stops when every handle is dropped.
    pub fn spawn(self, key: Arc<SigningKey>) -> Result<OutboxHandle, OutboxError> {
        let (tx, mut rx) = mpsc::channel::<Job>(OUTBOX_QUEUE);
        let (seq_tx, seq_rx) = watch::channel(self.next_seq);
        let device = self.cfg.device.clone();
        let mut outbox = self;
        std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut outbox);
                    seq_tx.send_if_modified(|s| {
                        let changed = *s != outbox.next_seq;
                        *s = outbox.next_seq;
                        changed
                    });
                }
                if let Err(e) = outbox.sync() {
                    tracing::error!(device = %outbox.cfg.device, error = %e, "final outbox sync failed");
                }
            })
            .map_err(OutboxError::Thread)?;
        Ok(OutboxHandle { tx, next_seq: seq_rx, key, device })
    }
}

/// An event about to be inserted, sealed.
struct NewRow<'a> {
    seq: u64,
    kind: &'static str,
    confirmation: bool,
    wire: &'a [u8],
    event_ms: i64,
    durability: Durability,
    /// Decision state committed with the row: a meta key and its value.
    state: Option<(&'a str, &'a [u8])>,
}

impl NewRow<'_> {
    /// What the row is charged against the budget.
    fn charge(&self) -> u64 {
        self.wire.len() as u64 + ROW_OVERHEAD_BYTES
    }
}

/// A run of consecutive position samples, `first..=last` (possibly starting with an
/// unpublished gap notice it absorbs), and the signed gap notice that stands in for it
/// at `first`.
#[derive(Debug)]
struct GapRun {
    first: u64,
    last: u64,
    /// Rows the notice replaces: the samples, and an absorbed notice.
    rows: u64,
    /// Position samples among them.
    positions: u64,
    /// What those rows are charged against the budget (wire bytes and row overhead).
    freed: u64,
    /// The first sample's GNSS time, which the notice carries.
    gnss_utc_ms: i64,
    /// The first sample's monotonic time, which the notice carries.
    mono_ms: u64,
    /// The sealed notice.
    wire: Vec<u8>,
    /// The last seq `wire` covers.
    sealed_last: u64,
}

impl GapRun {
    /// What the notice's row is charged against the budget.
    fn charged(&self) -> u64 {
        self.wire.len() as u64 + ROW_OVERHEAD_BYTES
    }
}

/// An eviction, decided and signed before its transaction.
#[derive(Debug, Default)]
struct Eviction {
    runs: Vec<GapRun>,
    /// Position samples it removes.
    positions: u64,
    /// Bytes it frees: the samples' charge less the notices'.
    net: u64,
}

impl Eviction {
    fn log(&self, device: &DeviceId, why: &str) {
        let (first, last) = (self.runs.first().map(|r| r.first), self.runs.last().map(|r| r.last));
        tracing::warn!(
            %device,
            from_seq = first,
            to_seq = last,
            positions = self.positions,
            gaps = self.runs.len(),
            bytes = self.net,
            "{why}: replaced the oldest position samples by signed gap notices"
        );
    }
}

/// Replaces each run of the plan by its notice and counts the evicted samples, inside
/// the caller's transaction. A run that is no longer all positions aborts it.
fn apply_eviction(tx: &rusqlite::Transaction<'_>, plan: &Eviction) -> Result<(), rusqlite::Error> {
    for run in &plan.runs {
        let deleted = tx
            .prepare_cached(
                "DELETE FROM events WHERE (confirmation = 0 OR kind = ?3) AND seq BETWEEN ?1 AND ?2",
            )?
            .execute(params![i64_of(run.first), i64_of(run.last), GAP_KIND])?;
        if deleted as u64 != run.rows {
            return Err(rusqlite::Error::StatementChangedRows(deleted));
        }
        insert_gap(tx, run)?;
    }
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('evicted_positions', ?1)
         ON CONFLICT (key) DO UPDATE SET value = value + ?1",
    )?
    .execute([i64_of(plan.positions)])?;
    Ok(())
}

/// Stores a new event and moves `next_seq` past it, inside the caller's transaction.
fn insert_row(tx: &rusqlite::Transaction<'_>, row: &NewRow<'_>) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO events (seq, kind, confirmation, wire, event_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![i64_of(row.seq), row.kind, row.confirmation, row.wire, row.event_ms])?;
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'next_seq'")?.execute([i64_of(row.seq + 1)])?;
    if let Some((name, value)) = row.state {
        put_state(tx, name, value)?;
    }
    Ok(())
}

/// The meta key under which decision state `name` is kept.
fn state_key(name: &str) -> String {
    format!("state:{name}")
}

fn put_state(tx: &rusqlite::Transaction<'_>, name: &str, value: &[u8]) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![state_key(name), value])?;
    Ok(())
}

/// Stores a gap notice at its first seq. Kept like a confirmation: never evicted.
fn insert_gap(tx: &rusqlite::Transaction<'_>, run: &GapRun) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO events (seq, kind, confirmation, wire, event_ms) VALUES (?1, ?2, 1, ?3, ?4)",
    )?
    .execute(params![i64_of(run.first), GAP_KIND, run.wire, run.gnss_utc_ms])?;
    Ok(())
}

fn set_meta(conn: &Connection, key: &str, value: i64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn depth_by_kind(conn: &Connection) -> Result<BTreeMap<String, KindDepth>, rusqlite::Error> {
    let mut stmt = conn
        .prepare_cached("SELECT kind, COUNT(*), COALESCE(SUM(LENGTH(wire)), 0) FROM events GROUP BY kind")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, KindDepth { count: u64_of(r.get(1)?), bytes: u64_of(r.get(2)?) }))
    })?;
    rows.collect()
}

fn oldest_unacked(conn: &Connection) -> Result<Option<(u64, i64)>, rusqlite::Error> {
    conn.query_row("SELECT seq, event_ms FROM events ORDER BY seq LIMIT 1", [], |r| {
        Ok((u64_of(r.get(0)?), r.get(1)?))
    })
    .optional()
}

/// Reads the outbox's statistics from any connection to its database (the agent's own,
/// or the read-only one of `doorstep-agent status`). `max_bytes` is left at 0: only the
/// agent's configuration knows it.
pub(crate) fn read_stats(conn: &Connection, path: &Path) -> Result<OutboxStats, rusqlite::Error> {
    let meta = |key: &str| -> Result<Option<i64>, rusqlite::Error> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
    };
    let depth = depth_by_kind(conn)?;
    let rows: u64 = depth.values().map(|d| d.count).sum();
    let wire: u64 = depth.values().map(|d| d.bytes).sum();
    let (photo_count, photo_bytes): (i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM photos), (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM photo_chunks)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let file_len = |p: PathBuf| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(OutboxStats {
        oldest_unacked: oldest_unacked(conn)?,
        next_seq: meta("next_seq")?.map_or(1, u64_of),
        acked_seq: meta("acked_seq")?.map_or(0, u64_of),
        stored_bytes: wire + rows * ROW_OVERHEAD_BYTES,
        max_bytes: 0,
        photos: KindDepth { count: u64_of(photo_count), bytes: u64_of(photo_bytes) },
        evicted_positions: meta("evicted_positions")?.map_or(0, u64_of),
        rejected_full: meta("rejected_full")?.map_or(0, u64_of),
        rejected_confirmations: meta("rejected_confirmations")?.map_or(0, u64_of),
        last_rejected_ms: meta("last_rejected_ms")?,
        corrupt_files: meta("corrupt_files")?.map_or(0, u64_of),
        last_corrupt: conn
            .query_row("SELECT value FROM meta WHERE key = 'last_corrupt'", [], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .flatten(),
        disk_bytes: file_len(path.to_owned()) + file_len(sidecar(path, "-wal")),
        depth_by_kind: depth,
    })
}

type Job = Box<dyn FnOnce(&mut Outbox) + Send>;

/// An async handle to the outbox thread. Cheap to clone; every call is queued (at most
/// [`OUTBOX_QUEUE`] waiting) and runs on the thread that owns the connection.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: mpsc::Sender<Job>,
    next_seq: watch::Receiver<u64>,
    key: Arc<SigningKey>,
    device: DeviceId,
}

impl fmt::Debug for OutboxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxHandle").field("device", &self.device).finish_non_exhaustive()
    }
}

impl OutboxHandle {
    /// Runs `f` on the outbox thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |outbox| {
            // The caller may have gone (shutdown); the work is done either way.
            let _ = reply.send(f(outbox));
        });
        self.tx.send(job).await.map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// Queues `f` to run on the outbox thread without waiting for it to run (only for
    /// queue space). `f` reports its own outcome.
    pub async fn submit<F>(&self, f: F) -> Result<(), OutboxError>
    where
        F: FnOnce(&mut Outbox) + Send + 'static,
    {
        self.tx.send(Box::new(f)).await.map_err(|_| OutboxError::Closed)
    }

    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The device's signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// Signs and stores an event; see [`Outbox::append`].
    pub async fn append(
        &self,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
    ) -> Result<Appended, OutboxError> {
        let key = Arc::clone(&self.key);
        self.call(move |o| o.append(&key, event, gnss_utc_ms, mono_ms)).await
    }

    /// [`Outbox::append_with_state`] on the outbox thread.
    pub async fn append_with_state(
        &self,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
        state: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Appended, OutboxError> {
        let key = Arc::clone(&self.key);
        self.call(move |o| {
            let state = state.as_ref().map(|(name, value)| (*name, value.as_slice()));
            o.append_with_state(&key, event, gnss_utc_ms, mono_ms, state)
        })
        .await
    }

    /// [`Outbox::state`] on the outbox thread.
    pub async fn state(&self, name: &'static str) -> Result<Option<Vec<u8>>, OutboxError> {
        self.call(move |o| o.state(name)).await
    }

    /// [`Outbox::set_state`] on the outbox thread.
    pub async fn set_state(&self, name: &'static str, value: Vec<u8>) -> Result<(), OutboxError> {
        self.call(move |o| o.set_state(name, &value)).await
    }

    /// See [`Outbox::pending`].
    pub async fn pending(&self, after_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        self.call(move |o| o.pending(after_seq, limit)).await
    }

    /// See [`Outbox::ack`].
    pub async fn ack(&self, up_to_seq: u64) -> Result<usize, OutboxError> {
        let key = Arc::clone(&self.key);
        self.call(move |o| o.ack(&key, up_to_seq)).await
    }

    /// See [`Outbox::add_photo`].
    pub async fn add_photo(&self, sha256: HexBytes<32>, bytes: Vec<u8>) -> Result<(), OutboxError> {
        self.call(move |o| o.add_photo(sha256, &bytes)).await
    }

    /// See [`Outbox::stats`].
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.call(|o| o.stats()).await
    }

    /// The last hub ack applied and the next seq: (acked, next).
    pub async fn cursor(&self) -> Result<(u64, u64), OutboxError> {
        self.call(|o| Ok((o.acked_seq(), o.next_seq()))).await
    }

    /// Watches the next seq: it changes whenever an event is appended.
    pub fn watch_appends(&self) -> watch::Receiver<u64> {
        self.next_seq.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_proto::{FixEvidence, Gap, Nearby, RouteId, StopId, TrustedKey};

    fn device() -> DeviceId {
        DeviceId::new("van-7").expect("id")
    }

    fn key() -> SigningKey {
        SigningKey::from_seed(&[3; 32]).expect("seed")
    }

    fn nearby(n: u32) -> Event {
        Event::Nearby(Nearby {
            route_id: RouteId::new("r-1").expect("id"),
            stop_id: StopId::new("s-1").expect("id"),
            distance_m: n,
            fix: FixEvidence::new(1_700_000_000_000, 47.0, 8.0),
        })
    }

    fn position(n: i64) -> Event {
        Event::Position(FixEvidence::new(1_700_000_000_000 + n, 47.0, 8.0))
    }

    fn open(dir: &Path, cfg: OutboxConfig) -> Outbox {
        Outbox::open(&dir.join("agent.db"), cfg).expect("open")
    }

    fn decode(wire: &[u8]) -> Envelope {
        let trusted = TrustedKey { device: device(), key: key().public_key() };
        Envelope::open(wire, &trusted).expect("verifies")
    }

    #[test]
    fn appended_events_are_signed_numbered_from_one_and_pending_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        let a = outbox.append(&key(), nearby(1), 10, 1).expect("append");
        let b = outbox.append(&key(), position(2), 11, 2).expect("append");
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_ne!(a.event_id, b.event_id);
        let pending = outbox.pending(0, 10).expect("pending");
        assert_eq!(pending.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        let env = decode(&pending[0].1);
        assert_eq!((env.seq, env.event_id, env.event), (1, a.event_id, nearby(1)));
        assert_eq!(outbox.pending(1, 10).expect("pending").len(), 1);
    }

    #[test]
    fn sequence_numbers_survive_a_restart_and_are_never_reused_after_acks() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut outbox = open(dir.path(), OutboxConfig::new(device()));
            for n in 0..5 {
                outbox.append(&key(), nearby(n), 0, 0).expect("append");
            }
            assert_eq!(outbox.ack(&key(), 5).expect("ack"), 5);
        }
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        assert_eq!(outbox.acked_seq(), 5);
        assert_eq!(outbox.append(&key(), nearby(9), 0, 0).expect("append").seq, 6);
    }

    #[test]
    fn ack_deletes_only_rows_up_to_the_acknowledged_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        for n in 0..10 {
            outbox.append(&key(), nearby(n), 0, 0).expect("append");
        }
        assert_eq!(outbox.ack(&key(), 4).expect("ack"), 4);
        assert_eq!(outbox.ack(&key(), 2).expect("stale ack"), 0);
        let pending = outbox.pending(0, 100).expect("pending");
        assert_eq!(pending.first().map(|p| p.0), Some(5));
        assert_eq!(outbox.stats().expect("stats").depth(), 6);
    }

    #[test]
    fn a_full_outbox_evicts_oldest_positions_and_keeps_every_confirmation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_bytes: 20_000, ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let mut confirmations = Vec::new();
        for n in 0..300 {
            let event = if n % 10 == 0 { nearby(n) } else { position(i64::from(n)) };
            let is_confirmation = event.is_confirmation();
            let appended = outbox.append(&key(), event, 0, 0).expect("positions make room");
            if is_confirmation {
                confirmations.push(appended.seq);
            }
        }
        assert!(outbox.stored_bytes() <= 20_000);
        let stats = outbox.stats().expect("stats");
        assert!(stats.evicted_positions > 0);
        let kept: Vec<u64> = outbox
            .pending(0, 1000)
            .expect("pending")
            .iter()
            .filter(|(_, wire)| matches!(decode(wire).event, Event::Nearby(_)))
            .map(|(seq, _)| *seq)
            .collect();
        assert_eq!(kept, confirmations);
        // The newest positions survive; the oldest went first.
        let last = outbox.pending(0, 1000).expect("pending").last().map(|p| p.0);
        assert_eq!(last, Some(300));
    }

    /// Every stored row, verified, in seq order.
    fn stored(outbox: &mut Outbox) -> Vec<Envelope> {
        outbox.pending(0, 100_000).expect("pending").iter().map(|(_, wire)| decode(wire)).collect()
    }

    /// Every stored row, read without handing anything to the uplink (no high-water mark).
    fn stored_unpublished(outbox: &Outbox) -> Vec<Envelope> {
        let mut stmt = outbox.conn.prepare("SELECT wire FROM events ORDER BY seq").expect("select");
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).expect("query");
        rows.map(|wire| decode(&wire.expect("row"))).collect()
    }

    /// The seqs the stored rows stand for: an event its own, a gap notice its range.
    fn covered(rows: &[Envelope]) -> Vec<u64> {
        rows.iter()
            .flat_map(|e| match e.event {
                Event::Gap(gap) => gap.first_seq..=gap.last_seq,
                _ => e.seq..=e.seq,
            })
            .collect()
    }

    fn gaps(rows: &[Envelope]) -> Vec<Gap> {
        rows.iter()
            .filter_map(|e| match e.event {
                Event::Gap(gap) => Some(gap),
                _ => None,
            })
            .collect()
    }

    /// What the budget is charged, recomputed from the table as `status` does.
    fn charged_in_table(outbox: &Outbox) -> u64 {
        outbox.stats().expect("stats").stored_bytes
    }

    #[test]
    fn each_evicted_run_of_positions_becomes_one_signed_gap_notice_at_its_first_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_bytes: 20_000, ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg.clone());
        let mut confirmations = Vec::new();
        // Runs of 1, 2, 7 and 30 positions between confirmations.
        for round in 0..60usize {
            for _ in 0..[1, 2, 7, 30][round % 4] {
                let n = outbox.next_seq();
                outbox.append(&key(), position(i64::try_from(n).expect("fits")), 0, n).expect("position");
                assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox), "accounting after seq {n}");
            }
            let n = outbox.next_seq();
            confirmations.push(outbox.append(&key(), nearby(1), 0, n).expect("confirmation").seq);
            assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox), "accounting after seq {n}");
            assert!(outbox.stored_bytes() <= cfg.max_bytes);
        }
        let rows = stored(&mut outbox);
        let gaps = gaps(&rows);
        assert!(gaps.len() >= 10, "{} gap notices", gaps.len());
        // Every seq handed out is accounted for exactly once, in order: no hole, no overlap.
        assert_eq!(covered(&rows), (1..outbox.next_seq()).collect::<Vec<_>>());
        // A notice stands only for positions; every confirmation is still there.
        for gap in &gaps {
            assert!(!confirmations.iter().any(|c| (gap.first_seq..=gap.last_seq).contains(c)), "{gap:?}");
        }
        let kept: Vec<u64> =
            rows.iter().filter(|e| matches!(e.event, Event::Nearby(_))).map(|e| e.seq).collect();
        assert_eq!(kept, confirmations);
        // A notice carries the first evicted sample's times.
        let first = rows.iter().find(|e| matches!(e.event, Event::Gap(_))).expect("a gap");
        assert_eq!(first.mono_ms, first.seq);
        let stats = outbox.stats().expect("stats");
        let evicted: u64 = gaps.iter().map(|g| g.last_seq - g.first_seq + 1).sum();
        assert_eq!(stats.evicted_positions, evicted);
        assert_eq!(stats.depth_by_kind["gap"].count, gaps.len() as u64);
        // The charge survives a restart: it is what the table holds.
        let before = outbox.stored_bytes();
        drop(outbox);
        assert_eq!(open(dir.path(), cfg).stored_bytes(), before);
    }

    #[test]
    fn lone_positions_between_confirmations_become_smaller_gap_notices_until_confirmations_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_bytes: 4_000, ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let mut confirmations = Vec::new();
        let mut position_len = 0;
        let mut refused = None;
        for i in 0..1_000 {
            let n = outbox.next_seq();
            if i % 2 == 0 {
                match outbox.append(&key(), nearby(1), 0, n) {
                    Ok(a) => confirmations.push(a.seq),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            } else if let Ok(a) = outbox.append(&key(), position(1), 0, n) {
                position_len = a.wire_len;
            }
            assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
        }
        // The outbox ends full of confirmations and notices, and says so: no endless eviction.
        let refused = refused.expect("a confirmation is refused once only notices are left to shrink");
        assert!(matches!(refused, OutboxError::Full { kind: "nearby", .. }), "{refused}");
        let rows = stored(&mut outbox);
        let gaps = gaps(&rows);
        assert!(gaps.len() >= 3, "{} gap notices", gaps.len());
        for gap in &gaps {
            assert_eq!(gap.first_seq, gap.last_seq, "a lone sample is a run of one");
        }
        let gap_len = outbox
            .pending(0, 1_000)
            .expect("pending")
            .iter()
            .find(|(_, wire)| matches!(decode(wire).event, Event::Gap(_)))
            .map(|(_, wire)| wire.len())
            .expect("a gap row");
        assert!(
            gap_len < position_len,
            "a notice ({gap_len} B) is smaller than the sample ({position_len} B)"
        );
        assert_eq!(covered(&rows), (1..outbox.next_seq()).collect::<Vec<_>>());
        let kept: Vec<u64> =
            rows.iter().filter(|e| matches!(e.event, Event::Nearby(_))).map(|e| e.seq).collect();
        assert_eq!(kept, confirmations);
    }

    #[test]
    fn an_ack_inside_a_gap_reissues_the_rest_of_it_at_the_next_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        for n in 1..=20 {
            outbox.append(&key(), position(n), 0, 0).expect("position");
        }
        outbox.append(&key(), nearby(1), 0, 0).expect("confirmation");
        // The hub got samples 1..=3 before the outbox had to evict 1..=k.
        let one_row = charged_in_table(&outbox) / 21;
        assert!(outbox.evict_positions(&key(), 8 * one_row).expect("evict") > 0);
        let rows = stored(&mut outbox);
        let first = gaps(&rows)[0];
        assert_eq!(first.first_seq, 1);
        assert!(first.last_seq > 4, "{first:?}");

        assert_eq!(outbox.ack(&key(), 3).expect("ack"), 1, "the notice at seq 1 is acknowledged");
        let rows = stored(&mut outbox);
        assert_eq!(rows[0].seq, 4, "the rest of the range travels at the seq after the ack");
        assert_eq!(rows[0].event, Event::Gap(Gap { first_seq: 4, last_seq: first.last_seq }));
        assert_eq!(covered(&rows), (4..=21).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
        // An ack at the end of a gap leaves nothing to re-issue.
        outbox.ack(&key(), first.last_seq).expect("ack");
        assert_eq!(covered(&stored(&mut outbox)), (first.last_seq + 1..=21).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
    }

    #[test]
    fn a_gap_notice_never_handed_out_grows_and_one_handed_out_is_never_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        for n in 1..=40 {
            outbox.append(&key(), position(n), 0, 0).expect("position");
        }
        let one_row = charged_in_table(&outbox) / 40;
        // An outage: nothing is handed to the uplink, so the notice grows in place.
        outbox.evict_positions(&key(), 5 * one_row).expect("evict");
        let small: Vec<Gap> = gaps(&stored_unpublished(&outbox));
        outbox.evict_positions(&key(), 5 * one_row).expect("evict");
        let grown: Vec<Gap> = gaps(&stored_unpublished(&outbox));
        assert_eq!(grown.len(), 1, "{grown:?}");
        assert_eq!(grown[0].first_seq, small[0].first_seq);
        assert!(grown[0].last_seq > small[0].last_seq, "{small:?} then {grown:?}");
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));

        // Once handed out it may be at the hub: it is never re-signed, the next one is new.
        let published = outbox.pending(0, 1).expect("pending")[0].1.clone();
        outbox.evict_positions(&key(), 5 * one_row).expect("evict");
        assert_eq!(outbox.pending(0, 1).expect("pending")[0].1, published);
        let rows = stored(&mut outbox);
        let after = gaps(&rows);
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(after[1].first_seq, grown[0].last_seq + 1);
        assert_eq!(covered(&rows), (1..=40).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
    }

    #[test]
    fn a_full_disk_makes_room_for_a_confirmation_by_replacing_positions_with_a_gap_notice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_file_bytes: Some(64 * 1024), ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        outbox.append(&key(), nearby(1), 0, 0).expect("confirmation");
        let err = loop {
            let n = outbox.next_seq();
            if let Err(e) = outbox.append(&key(), position(i64::try_from(n).expect("fits")), 0, n) {
                break e;
            }
            assert!(n < 100_000, "the file cap never bit");
        };
        assert!(matches!(err, OutboxError::DiskFull { kind: "position" }), "{err}");
        let seq = outbox.append(&key(), nearby(2), 0, 0).expect("positions make room").seq;
        let rows = stored(&mut outbox);
        assert_eq!(gaps(&rows).first().map(|g| g.first_seq), Some(2));
        assert_eq!(covered(&rows), (1..=seq).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
    }

    #[test]
    fn when_only_confirmations_remain_append_refuses_loudly_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_bytes: 2_000, ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let mut stored = 0u64;
        let err = loop {
            match outbox.append(&key(), nearby(1), 0, 0) {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, OutboxError::Full { kind: "nearby", .. }), "{err}");
        assert!(err.to_string().contains("NOT stored"));
        // The refusal consumed no seq, and every stored event is still there.
        assert_eq!(outbox.next_seq(), stored + 1);
        assert_eq!(outbox.pending(0, 1000).expect("pending").len() as u64, stored);
        let stats = outbox.stats().expect("stats");
        assert_eq!((stats.rejected_full, stats.rejected_confirmations), (1, 1));
        // Positions may still take what little room is left, and never count as refused
        // confirmations.
        let _ = outbox.append(&key(), position(1), 0, 0);
        assert_eq!(outbox.stats().expect("stats").rejected_confirmations, 1);
        // Once the hub acks, there is room again.
        outbox.ack(&key(), stored).expect("ack");
        assert!(outbox.append(&key(), nearby(2), 0, 0).is_ok());
    }

    #[test]
    fn a_full_disk_refuses_the_event_with_a_typed_error_and_keeps_what_was_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_file_bytes: Some(64 * 1024), ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let mut stored = 0u64;
        let err = loop {
            match outbox.append(&key(), nearby(1), 0, 0) {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100_000, "the file cap never bit");
        };
        assert!(matches!(err, OutboxError::DiskFull { .. }), "{err}");
        assert!(stored > 10);
        assert_eq!(outbox.pending(0, 100_000).expect("pending").len() as u64, stored);
        assert_eq!(outbox.next_seq(), stored + 1);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_numbering_resumes_above_every_seq_handed_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("agent.db");
        {
            let mut outbox = open(dir.path(), OutboxConfig::new(device()));
            for n in 0..20 {
                outbox.append(&key(), nearby(n), 0, 0).expect("append");
            }
            outbox.pending(0, 100).expect("hand out 1..=20");
            outbox.ack(&key(), 20).expect("ack");
        }
        fs::write(&db, vec![0x5A; 8192]).expect("garbage");
        let _ = fs::remove_file(sidecar(&db, "-wal"));
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        let moved: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("agent.db.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "the corrupt file is kept as evidence");
        assert_eq!(outbox.append(&key(), nearby(1), 0, 0).expect("append").seq, 21);
        let stats = outbox.stats().expect("stats");
        assert_eq!(stats.corrupt_files, 1);
        assert!(stats.last_corrupt.is_some_and(|s| s.contains("corrupt-")));
    }

    #[test]
    fn unacknowledged_rows_are_salvaged_from_a_file_that_fails_its_integrity_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("agent.db");
        {
            let mut outbox = open(dir.path(), OutboxConfig::new(device()));
            for n in 0..5 {
                outbox.append(&key(), nearby(n), 0, 0).expect("append");
            }
            outbox.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").expect("checkpoint");
        }
        // Break the secondary index only: the table itself stays readable.
        {
            let conn = Connection::open(&db).expect("open");
            let root: i64 = conn
                .query_row("SELECT rootpage FROM sqlite_master WHERE name = 'events_by_class'", [], |r| {
                    r.get(0)
                })
                .expect("index");
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).expect("page size");
            drop(conn);
            let mut bytes = fs::read(&db).expect("read");
            let start = usize::try_from((root - 1) * page).expect("offset");
            bytes[start + 8..start + 64].fill(0xEE);
            fs::write(&db, bytes).expect("write");
        }
        let mut outbox = open(dir.path(), OutboxConfig::new(device()).with_public_key(key().public_key()));
        assert_eq!(outbox.stats().expect("stats").corrupt_files, 1);
        let seqs: Vec<u64> = outbox.pending(0, 10).expect("pending").iter().map(|p| p.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(outbox.append(&key(), nearby(9), 0, 0).expect("append").seq, 6);
    }

    #[test]
    fn a_database_of_another_device_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), OutboxConfig::new(device())));
        let other = OutboxConfig::new(DeviceId::new("van-8").expect("id"));
        let err = Outbox::open(&dir.path().join("agent.db"), other).expect_err("mismatch");
        assert!(matches!(err, OutboxError::DeviceMismatch { .. }), "{err}");
    }

    #[test]
    fn a_hub_ack_beyond_the_issued_numbers_moves_numbering_past_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        outbox.ack(&key(), 41).expect("ack");
        assert_eq!(outbox.append(&key(), nearby(1), 0, 0).expect("append").seq, 42);
    }

    #[test]
    fn photos_are_chunked_resumable_and_deleted_when_the_hub_has_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let photo: Vec<u8> =
            (0..(2 * MAX_CHUNK_LEN + 100)).map(|i| u8::try_from(i % 251).expect("byte")).collect();
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &photo).as_ref());
        let sha = HexBytes(sha);
        {
            let mut outbox = open(dir.path(), OutboxConfig::new(device()));
            assert!(matches!(outbox.add_photo(HexBytes([0; 32]), &photo), Err(OutboxError::PhotoHash(_))));
            outbox.add_photo(sha, &photo).expect("queue");
            let pending = outbox.next_photo().expect("query").expect("a photo");
            assert_eq!(pending.next_index, 0);
            let chunks = outbox.photo_chunks(&pending, 0, 10).expect("chunks");
            assert_eq!(chunks.len(), 3);
            assert_eq!(chunks[2].data.len(), 100);
            outbox.blob_ack(&sha, 2, false).expect("partial ack");
        }
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        let pending = outbox.next_photo().expect("query").expect("still there after a restart");
        assert_eq!(pending.next_index, 2);
        assert_eq!(outbox.photo_chunks(&pending, 2, 10).expect("chunks").len(), 1);
        assert!(outbox.blob_ack(&sha, 3, true).expect("complete"));
        assert_eq!(outbox.next_photo().expect("query"), None);
        assert_eq!(outbox.stats().expect("stats").photos, KindDepth::default());
    }

    #[test]
    fn the_photo_lane_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_photo_bytes: 1000, ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let photo = vec![1u8; 2000];
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &photo).as_ref());
        assert!(matches!(outbox.add_photo(HexBytes(sha), &photo), Err(OutboxError::PhotoLaneFull { .. })));
    }

    #[tokio::test]
    async fn the_handle_runs_calls_on_the_outbox_thread_and_reports_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(dir.path(), OutboxConfig::new(device()));
        let handle = outbox.spawn(Arc::new(key())).expect("spawn");
        let mut appends = handle.watch_appends();
        let appended = handle.append(nearby(1), 0, 0).await.expect("append");
        assert_eq!(appended.seq, 1);
        appends.changed().await.expect("notified");
        assert_eq!(*appends.borrow(), 2);
        assert_eq!(handle.pending(0, 10).await.expect("pending").len(), 1);
        assert_eq!(handle.ack(1).await.expect("ack"), 1);
        assert_eq!(handle.cursor().await.expect("cursor"), (1, 2));
    }
}
