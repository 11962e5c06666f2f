//! Opening the outbox file: schema, pragmas, the sequence high-water-mark side file, and
//! the salvage of a corrupt file into a fresh one. Shell: file and SQLite I/O.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use doorstep_proto::{DeviceId, Envelope, PublicKey, TrustedKey};
use ring::rand::SystemRandom;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{
    Outbox, OutboxConfig, OutboxError, ROW_OVERHEAD_BYTES, SCHEMA_VERSION, SEQ_HWM_SUFFIX, i64_of, set_meta,
    u64_of,
};
use crate::util::{sidecar, utc_stamp};

/// WAL file size kept after checkpoints, so that a burst does not leave a large file.
const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

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

/// The side file holding the sequence high-water mark for the database at `db`.
pub fn seq_hwm_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(SEQ_HWM_SUFFIX);
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

/// Writes the high-water mark in place, fixed width, and fsyncs it. Overwriting the same
/// bytes needs no new disk blocks, so this still works on a full disk; a 21-byte write
/// inside one sector is not torn by a power cut.
pub(super) fn write_hwm(path: &Path, value: u64) -> std::io::Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::tests::{device, key, nearby, open, with_nearby};

    #[test]
    fn a_corrupt_file_is_moved_aside_and_numbering_resumes_above_every_seq_handed_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("agent.db");
        {
            let mut outbox = with_nearby(dir.path(), 20);
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
            let outbox = with_nearby(dir.path(), 5);
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
}
