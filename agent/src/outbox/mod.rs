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
//! | `photo_chunks` | their bytes, cut into [`MAX_CHUNK_LEN`](doorstep_proto::blob::MAX_CHUNK_LEN) chunks                    |
//!
//! # Invariants
//!
//! - **Nothing is lost** (ARCHITECTURE.md invariant 3): [`Outbox::append`] returns only after
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
//! transaction, by one signed [`Gap`](doorstep_proto::Gap) notice stored at seq `a`, and rows `a+1..=b` go.
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
//!
//! One file per job: `open` (opening the file, the seq high-water mark, salvage),
//! `append` (append and eviction planning), `pending` (pending, ack and the counters),
//! `photos` (the photo lane) and `handle` (the thread and its async handle). This file
//! holds the types they share. Shell: the outbox works on the SQLite file.

mod append;
mod handle;
mod open;
mod pending;
mod photos;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use doorstep_proto::blob::MAX_PHOTO_LEN;
use doorstep_proto::{DeviceId, EnvelopeError, Event, EventId, HexBytes, PublicKey};
use ring::rand::SystemRandom;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

pub use handle::OutboxHandle;
pub use open::seq_hwm_path;
pub(crate) use pending::read_stats;
pub use photos::PendingPhoto;

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

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Outbox {
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
