//! The hub's storage seam: every SQL statement the hub runs lives in this module, one
//! submodule per kind of record: `schema` (the migrations), `devices` (the registry, keys,
//! live state), `events` (device events, gaps, acks, rejections), `routes`, `shipments`
//! (shipments, timelines, wake-ups, carrier events), `outbox` (notifications and alerts), `dispatch` (sending them: claims,
//! the outcome log, opt-outs, providers' reports, alert escalation), `lease` (which hub
//! sends),
//! `carrier_jobs` (polls and registrations owed to carrier aggregators), `photos`, `access`
//! (API keys, the audit log, withdrawn tracking links), and `sinks` (the business sinks'
//! outbox). This file holds the
//! connection, its transactions and the shared error.
//!
//! PostgreSQL, for several hubs on several hosts, is being added beside SQLite in
//! `postgres` (its schema in `pg_schema`, its statements in `pg_*`). SQLite's statements
//! here keep SQLite's fast paths: new ids come from `last_insert_rowid()`, because SQLite
//! runs `RETURNING` as a trigger (it tripled a shipment insert's cost).
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
//! `UNIQUE(shipment_id, milestone, channel, recipient)` enqueued with `ON CONFLICT DO NOTHING`
//! (invariant 4).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use db::params;

pub use db::{Args, Db, Dialect, NO_ARGS, ToValue, Value};

mod access;
mod actions;
mod batch;
mod carrier_jobs;
mod console;
mod copy;
mod db;
mod devices;
mod dispatch;
mod events;
mod lease;
mod members;
mod named;
mod orders;
mod outbox;
mod pg_events;
mod pg_schema;
mod pg_shared;
mod photos;
mod postgres;
mod routes;
mod schema;
mod shipments;
mod sinks;
mod support;

pub use access::{ApiKeyRecord, AuditEntry};
pub use actions::{
    ALERT_NOT_HOME, Instructions, KIND_INSTRUCTIONS, KIND_NOT_HOME, RouteNote, SOURCE_CUSTOMER,
};
pub use batch::{BatchParcels, BatchReads, Pending, ReadBatch, StopParcels};
pub use carrier_jobs::{CarrierJobRecord, ClaimedJob, JobState, JobUpdate};
pub use console::{AlertState, ConsoleAlert, DayCarrierCounts, NumbersData, Resolve};
pub use devices::{DeviceRecord, DeviceStatus, LivePosition, LiveStatus};
pub use dispatch::{Ack, Alert, DueAlert, Finish, NewQuestion, NoticeLogged, Outcome};
pub use events::{EventInsert, GapApplied, NewEvent, NewGap};
pub use lease::{Acquired, LeaseClaim, Settled};
pub use named::{Named, StoredName};
pub use orders::{NewOrderEvent, OrderFields};
pub use outbox::{NewNotification, OutboxRow, OutboxStatus};
pub use pg_schema::PG_SCHEMA_VERSION;
pub use pg_shared::{LockedShipment, PhotoProgress};
pub use photos::PhotoRecord;
pub use postgres::{Migrated, PgStore};
pub use routes::StoredRoute;
pub use schema::SCHEMA_VERSION;
pub use shipments::{Contact, ContactChannel, NewShipment, Shipment, TimelineEntry, milestone_name};
pub use sinks::{SinkLogged, SinkOutcome, SinkRow, SinkStatus};
pub use support::{LeakChannel, LeakRow, SupportContactRecord, Told};

use schema::MIGRATIONS;

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

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused the operation (disk full, locked too long, corrupt file).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A query that must return a row found none (`.optional()` turns it into `None`).
    #[error("the query returned no row")]
    NoRow,
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
    /// PostgreSQL refused the operation, or could not be reached.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// PostgreSQL ended the transaction for a reason that passes: it met another hub's (a
    /// deadlock, a serialization failure) or the connection was lost. Nothing of it was
    /// kept; the same work may be tried again.
    #[error("PostgreSQL: {0} (nothing was kept; it can be tried again)")]
    Transient(String),
    /// Another hub (or a carrier webhook) changed shipments an ingest batch read without
    /// locks, before the batch saved them. Nothing of the batch was kept; it is stored
    /// again with its shipments locked.
    #[error("another hub changed {0} shipments this batch read (nothing was kept; it can be tried again)")]
    Changed(usize),
    /// Copying a SQLite database into PostgreSQL was refused or failed; nothing of it
    /// was kept.
    #[error("copying into PostgreSQL: {0}; nothing was copied")]
    Copy(String),
    /// `hub.database` is a URL of a database this hub cannot use.
    #[error(
        "hub.database {0:?} is a URL this hub cannot use: give a SQLite file's path, or a PostgreSQL \
         URL (postgres://user:password@host:5432/doorstep); see docs/scaling.md"
    )]
    NotAPath(String),
    /// The PostgreSQL server is set to lose commits in a crash.
    #[error(
        "the PostgreSQL server has {setting} = {value}: a crash could lose events the vans were already \
         acked for (and have deleted). Set {setting} = on (postgresql.conf or ALTER SYSTEM) and reload it"
    )]
    NotDurable {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: String,
    },
}

impl StoreError {
    /// Whether trying the same transaction again may succeed ([`StoreError::Transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Changed(_))
    }
}

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { what, detail: detail.to_string() }
}

/// A table and its columns, for the schema parity check: (name, declared type, not null)
/// per column, in column order.
pub type TableColumns = (String, Vec<(String, String, bool)>);

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
    /// Business sink outbox rows by status.
    pub sink_outbox_by_status: BTreeMap<String, i64>,
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

/// The hub database: one connection, to a SQLite file or a PostgreSQL server.
#[derive(Debug)]
pub struct Store {
    conn: Db,
}

/// One transaction. Dropped without [`StoreTx::commit`], it rolls back.
#[derive(Debug)]
pub struct StoreTx<'a> {
    tx: &'a Db,
    open: bool,
    /// What an ingest batch keeps on PostgreSQL from its first statement to its commit.
    batch: std::cell::RefCell<batch::Batch>,
}

/// What `hub.database` names: a PostgreSQL server (`postgres://` or `postgresql://`), or
/// `None` for a SQLite file's path. Any other URL is refused before anything is created:
/// it would otherwise become a SQLite file under a directory named like its scheme, a
/// database of its own on each hub host.
pub fn database_url(path: &Path) -> Result<Option<&str>, StoreError> {
    let text = path.to_str().unwrap_or_default();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return Ok(Some(text));
    }
    if path.to_string_lossy().contains("://") {
        return Err(StoreError::NotAPath(path.to_string_lossy().into_owned()));
    }
    Ok(None)
}

/// `hub.database` as logs and errors may show it: a URL's password replaced by `***`.
pub fn database_label(path: &Path) -> String {
    let text = path.to_string_lossy();
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.into_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => text.into_owned(),
    }
}

/// Refuses a `hub.database` that is neither a path nor a PostgreSQL URL.
pub fn check_database_path(path: &Path) -> Result<(), StoreError> {
    database_url(path).map(|_| ())
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode, and
    /// migrates it; or, where `path` is a `postgres://` URL, connects to that server
    /// (checking it keeps commits) and migrates it under an advisory lock.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        if let Some(url) = database_url(path)? {
            return Self::connect(url).map(|(store, _)| store);
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| corrupt("database directory", e))?;
        }
        // Hubs starting together on a new file: the first one switches it to WAL, and
        // SQLite answers "busy" at once (without waiting on the busy handler) to a
        // connection that opens it meanwhile. Setting up is idempotent, so try again
        // until the busy timeout has passed.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::setup(Connection::open(path)?, options) {
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    /// Connects to the PostgreSQL database at `url`; what migrating did to its schema.
    pub fn connect(url: &str) -> Result<(Self, Migrated), StoreError> {
        let (pg, migrated) = db::PgConn::connect(url)?;
        Ok((Self { conn: Db::Postgres(pg) }, migrated))
    }

    /// An in-memory database, for unit tests. With `DOORSTEP_TEST_BACKEND=postgres` (the
    /// test command's second pass over the store's tests), a new database on a PostgreSQL
    /// server the test process starts: the same tests then check both backends.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        #[cfg(test)]
        if std::env::var("DOORSTEP_TEST_BACKEND").is_ok_and(|b| b == "postgres") {
            let url = doorstep_testkit::postgres::Postgres::shared().fresh_database();
            return Self::connect(&url).map(|(store, _)| store);
        }
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
        Ok(Self { conn: Db::Sqlite(conn) })
    }

    /// The connection itself, for tests that look under the store's methods (a row's
    /// status, a row left in flight on purpose). Application code gets a method here.
    #[doc(hidden)]
    pub fn raw(&self) -> &Db {
        &self.conn
    }

    /// Which backend this store runs on.
    pub fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    /// Every table's columns: (name, declared type, not null), in column order, tables by
    /// name. The PostgreSQL schema is checked against it ([`PgStore::columns`]).
    pub fn columns(&self) -> Result<Vec<TableColumns>, StoreError> {
        let Db::Sqlite(conn) = &self.conn else {
            return Err(StoreError::Postgres(
                "columns() reads SQLite's catalogue; use PgStore::columns".into(),
            ));
        };
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            let columns = conn
                .prepare("SELECT name, type, \"notnull\" OR pk > 0 FROM pragma_table_info(?1) ORDER BY cid")?
                .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            out.push((table, columns));
        }
        Ok(out)
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.conn {
            Db::Sqlite(conn) => Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?),
            Db::Postgres(pg) => pg.run(|w| w.with_store(PgStore::schema_version)),
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`: the write lock is taken up front,
    /// so a concurrent writer waits at the start rather than failing at commit).
    pub fn transaction(&mut self) -> Result<StoreTx<'_>, StoreError> {
        self.shared_transaction()
    }

    /// Begins a write transaction from a shared reference: for callers that hold the
    /// store behind a lock of their own (the dispatcher's handle), so nothing else uses
    /// the connection meanwhile.
    pub fn shared_transaction(&self) -> Result<StoreTx<'_>, StoreError> {
        match &self.conn {
            Db::Sqlite(conn) => conn.execute_batch("BEGIN IMMEDIATE")?,
            Db::Postgres(pg) => {
                self.conn.execute_batch("BEGIN")?;
                pg.in_transaction.set(true);
            }
        }
        Ok(StoreTx { tx: &self.conn, open: true, batch: Default::default() })
    }

    /// Queue depths for the metrics endpoint.
    pub fn queue_depths(&self) -> Result<QueueDepths, StoreError> {
        let mut depths = QueueDepths::default();
        let mut stmt =
            self.conn.prepare_cached("SELECT status, count(*) FROM notification_outbox GROUP BY status")?;
        for row in stmt.query_map(params![], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (status, n) = row?;
            depths.outbox_by_status.insert(status, n);
        }
        depths.alerts_unsent =
            self.conn.query_row("SELECT count(*) FROM ops_alerts WHERE sent = 0", params![], |r| r.get(0))?;
        depths.wakeups = self.conn.query_row("SELECT count(*) FROM wakeups", params![], |r| r.get(0))?;
        depths.photos_partial = self.conn.query_row(
            "SELECT count(*) FROM (SELECT DISTINCT device, sha256 FROM photo_chunks) AS partial",
            params![],
            |r| r.get(0),
        )?;
        depths.devices_online = self.conn.query_row(
            "SELECT count(*) FROM device_status s JOIN devices d ON d.device = s.device
             WHERE s.online = 1 AND d.status = 'active'",
            params![],
            |r| r.get(0),
        )?;
        depths.sink_outbox_by_status = self.sink_depths()?;
        Ok(depths)
    }

    /// Runs `f` on the raw connection, for the rare maintenance read (checkpoints in
    /// benchmarks). Not for application queries: those get a method here.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        if let Db::Sqlite(conn) = &self.conn {
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        Ok(())
    }
}

impl StoreTx<'_> {
    /// Commits everything done in this transaction (first sending what a batch saved
    /// up: if that fails, nothing is committed).
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.settle()?;
        self.open = false;
        let committed = self.tx.execute_batch("COMMIT");
        self.end();
        if committed.is_err() {
            // SQLite keeps a transaction open after a failed COMMIT (SQLITE_BUSY);
            // PostgreSQL has ended it. Either way nothing of it stays.
            let _ = self.tx.execute_batch("ROLLBACK");
        }
        committed
    }

    fn end(&self) {
        if let Db::Postgres(pg) = self.tx {
            pg.in_transaction.set(false);
        }
    }
}

impl std::ops::Deref for StoreTx<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.tx
    }
}

impl Drop for StoreTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Not committed: undone. A failure here means the connection is gone, which
            // ends the transaction as surely.
            let _ = self.tx.execute_batch("ROLLBACK");
            self.end();
        }
    }
}

#[cfg(test)]
mod tests;
