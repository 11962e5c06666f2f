//! Small file and clock helpers the agent's shells share (the outbox, the status record,
//! the daemon's state files). Shell: they touch the disk and read the wall clock.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) use doorstep_runtime::clock::now_ms as wall_ms;

/// The wall clock as a compact UTC stamp (`20240131T235959Z`), for file names.
pub(crate) fn utc_stamp() -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_else(|_| format!("{}ms", wall_ms()))
}

/// `path` with `suffix` appended to its file name (`agent.db` and `-wal`: `agent.db-wal`).
pub(crate) fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
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
