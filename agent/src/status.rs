//! What `doorstep-agent status` reports, read from another process than the agent's.
//!
//! Two sources, both next to each other on disk: the outbox database (depth by kind,
//! oldest unacknowledged event, alarms, disk use), opened read-only, and the link
//! record, a small JSON file the uplink rewrites atomically (rename) whenever the link
//! changes and about once a second otherwise: link state, last successful publish, last
//! hub ack and the last fix. Neither read can disturb the running agent.
//!
//! `status` tells the truth or says it cannot: a missing or stale link record is shown
//! as such, never as a healthy link.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::outbox::{self, KindDepth, OutboxStats};

/// Suffix of the link record next to the database (`agent.db` → `agent.db.link.json`).
pub const LINK_RECORD_SUFFIX: &str = ".link.json";
/// A link record older than this is stale: the agent is stopped or hung.
pub const STALE_AFTER_MS: i64 = 30_000;

/// The link record for the database at `db`.
pub fn link_record_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(LINK_RECORD_SUFFIX);
    PathBuf::from(name)
}

/// The MQTT link's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not yet connected since the agent started.
    #[default]
    Connecting,
    /// Connected to the broker.
    Up,
    /// Lost; reconnecting with backoff.
    Down,
    /// The agent shut down cleanly.
    Stopped,
}

/// The last fix the uplink was given for live tracking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixRecord {
    /// GNSS UTC time of the fix, ms since the Unix epoch.
    pub utc_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Agent wall-clock time when it was received, ms since the Unix epoch.
    pub seen_ms: i64,
}

/// A watch running: someone (a customer whose stop is next, an operator) looks at the
/// van, so its live position goes out every few seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// The live position is sent every this many seconds.
    pub every_s: u16,
    /// When the watch ends (the last of them, if several), wall-clock ms.
    pub until_ms: i64,
}

/// The uplink's side of `status`, as written to the link record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The agent's process id.
    pub pid: u32,
    /// The link's state.
    pub link: LinkState,
    /// `host:port` of the broker.
    pub broker: String,
    /// When the link entered its state, wall-clock ms.
    pub since_ms: i64,
    /// Last publish the broker acknowledged (PUBACK), wall-clock ms.
    pub last_publish_ms: Option<i64>,
    /// Highest seq the hub acknowledged.
    pub last_hub_ack_seq: u64,
    /// When the hub last acknowledged something, wall-clock ms.
    pub last_hub_ack_ms: Option<i64>,
    /// Why the link last went down.
    pub last_error: Option<String>,
    /// The last fix given to the uplink.
    pub last_fix: Option<FixRecord>,
    /// Hub messages refused (bad signature, wrong device, malformed), since start.
    pub rejected_hub_messages: u64,
    /// Live positions sent since start.
    #[serde(default)]
    pub live_positions_sent: u64,
    /// When the last live position was sent, wall-clock ms.
    #[serde(default)]
    pub last_live_ms: Option<i64>,
    /// The hub's watch running now, if any.
    #[serde(default)]
    pub watch: Option<WatchRecord>,
    /// When this record was written, wall-clock ms.
    pub updated_ms: i64,
}

impl LinkRecord {
    /// Writes the record atomically (temp file and rename; no fsync: it is rewritten
    /// every second and a stale one is reported as stale).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::daemon::write_json_atomically(path, self)
    }

    /// Reads a record; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, StatusError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StatusError::LinkRecord { path: path.to_owned(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StatusError::LinkRecord { path: path.to_owned(), reason: e.to_string() }),
        }
    }
}

/// Why `status` could not read the agent's state.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The outbox database does not exist.
    #[error("no outbox database at {0}: has the agent ever run with this config?")]
    NoDatabase(PathBuf),
    /// The outbox database cannot be read.
    #[error("cannot read the outbox database {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The link record exists but cannot be read.
    #[error("cannot read the link record {path}: {reason}")]
    LinkRecord {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Everything `doorstep-agent status` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Wall-clock time of the report, ms since the Unix epoch.
    pub now_ms: i64,
    /// The link, as last recorded by the uplink; `None` if it never wrote one.
    pub link: Option<LinkRecord>,
    /// The link record is older than [`STALE_AFTER_MS`]: the agent is not running.
    pub link_stale: bool,
    /// The outbox.
    pub outbox: OutboxStats,
    /// Age of the oldest unacknowledged event, seconds (event time to now).
    pub oldest_unacked_age_s: Option<i64>,
    /// Age of the last fix, seconds.
    pub last_fix_age_s: Option<i64>,
    /// Alarms an operator must act on, in plain words.
    pub alarms: Vec<String>,
}

/// Reads the status of the agent whose outbox is `db_path` and whose link record is
/// `link_path` (normally [`link_record_path`]`(db_path)`).
pub fn read_status(db_path: &Path, link_path: &Path) -> Result<Status, StatusError> {
    if !db_path.exists() {
        return Err(StatusError::NoDatabase(db_path.to_owned()));
    }
    let db_err = |source| StatusError::Database { path: db_path.to_owned(), source };
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(2)).map_err(db_err)?;
    let stats = outbox::read_stats(&conn, db_path).map_err(db_err)?;
    let link = LinkRecord::read(link_path)?;
    Ok(Status::new(crate::util::wall_ms(), link, stats))
}

impl Status {
    /// Assembles a report from its parts at wall-clock time `now_ms`.
    pub fn new(now_ms: i64, link: Option<LinkRecord>, outbox: OutboxStats) -> Self {
        let link_stale = link
            .as_ref()
            .is_none_or(|l| l.link != LinkState::Stopped && now_ms - l.updated_ms > STALE_AFTER_MS);
        let oldest_unacked_age_s = outbox.oldest_unacked.map(|(_, t)| (now_ms - t).max(0) / 1000);
        let last_fix_age_s =
            link.as_ref().and_then(|l| l.last_fix).map(|f| (now_ms - f.seen_ms).max(0) / 1000);
        let mut alarms = Vec::new();
        if outbox.rejected_confirmations > 0 {
            alarms.push(format!(
                "OUTBOX FULL: {} confirmation(s) could NOT be stored; restore the uplink or free space",
                outbox.rejected_confirmations
            ));
        }
        if outbox.corrupt_files > 0 {
            alarms.push(format!(
                "CORRUPT DATABASE: {} file(s) moved aside; last: {}",
                outbox.corrupt_files,
                outbox.last_corrupt.as_deref().unwrap_or("?")
            ));
        }
        if link.as_ref().is_some_and(|l| l.rejected_hub_messages > 0) {
            let n = link.as_ref().map_or(0, |l| l.rejected_hub_messages);
            alarms.push(format!(
                "{n} hub message(s) refused (bad signature or wrong device): check the hub key"
            ));
        }
        Self { now_ms, link, link_stale, outbox, oldest_unacked_age_s, last_fix_age_s, alarms }
    }

    /// The report as JSON, for machines (`status --json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ago = |t: Option<i64>| match t {
            Some(t) => format!("{} ago", human_age((self.now_ms - t).max(0) / 1000)),
            None => "never".to_owned(),
        };
        match (&self.link, self.link_stale) {
            (None, _) => out.push_str("link:            unknown (no link record: is the agent running?)\n"),
            (Some(l), stale) => {
                let state = match l.link {
                    LinkState::Up => "UP",
                    LinkState::Down => "DOWN",
                    LinkState::Connecting => "connecting",
                    LinkState::Stopped => "stopped",
                };
                let _ = write!(
                    out,
                    "link:            {state} since {} (broker {})",
                    ago(Some(l.since_ms)),
                    l.broker
                );
                if stale {
                    let _ = write!(
                        out,
                        " — STALE: record last written {}; agent not running?",
                        ago(Some(l.updated_ms))
                    );
                }
                out.push('\n');
                if let Some(e) = &l.last_error
                    && l.link != LinkState::Up
                {
                    let _ = writeln!(out, "last error:      {e}");
                }
                let _ = writeln!(out, "last publish:    {}", ago(l.last_publish_ms));
                let _ =
                    writeln!(out, "last hub ack:    seq {} ({})", l.last_hub_ack_seq, ago(l.last_hub_ack_ms));
                match l.last_fix {
                    Some(f) => {
                        let _ = writeln!(
                            out,
                            "last fix:        {:.6}, {:.6} ({})",
                            f.lat,
                            f.lon,
                            ago(Some(f.seen_ms))
                        );
                    }
                    None => out.push_str("last fix:        none\n"),
                }
                let sent = format!("{} sent, last {}", l.live_positions_sent, ago(l.last_live_ms));
                match l.watch.filter(|w| w.until_ms > self.now_ms && !stale) {
                    Some(w) => {
                        let left = human_age((w.until_ms - self.now_ms + 999) / 1000);
                        let _ = writeln!(
                            out,
                            "live position:   WATCHED: every {} s for {left} more ({sent})",
                            w.every_s
                        );
                    }
                    None => {
                        let _ = writeln!(out, "live position:   adaptive, nobody watching ({sent})");
                    }
                }
            }
        }
        let o = &self.outbox;
        let _ = writeln!(out, "outbox depth:    {} events", o.depth());
        for (kind, KindDepth { count, bytes }) in &o.depth_by_kind {
            let _ = writeln!(out, "  {kind:<28} {count:>8}  ({})", human_bytes(*bytes));
        }
        if o.photos.count > 0 {
            let _ =
                writeln!(out, "  {:<28} {:>8}  ({})", "photos", o.photos.count, human_bytes(o.photos.bytes));
        }
        match self.oldest_unacked_age_s {
            Some(age) => {
                let seq = o.oldest_unacked.map_or(0, |(s, _)| s);
                let _ = writeln!(out, "oldest unacked:  seq {seq}, {} old", human_age(age));
            }
            None => out.push_str("oldest unacked:  none (everything acknowledged)\n"),
        }
        let _ = writeln!(out, "sequence:        next {}, hub acked {}", o.next_seq, o.acked_seq);
        let _ = writeln!(
            out,
            "disk use:        {} on disk, {} queued{}",
            human_bytes(o.disk_bytes),
            human_bytes(o.stored_bytes),
            if o.max_bytes > 0 { format!(" of {}", human_bytes(o.max_bytes)) } else { String::new() }
        );
        if o.evicted_positions > 0 {
            let _ =
                writeln!(out, "evicted:         {} position samples (outbox was full)", o.evicted_positions);
        }
        for alarm in &self.alarms {
            let _ = writeln!(out, "ALARM: {alarm}");
        }
        out
    }
}

fn human_age(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn human_bytes(b: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // Display only.
    let f = b as f64;
    match b {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", f / 1024.0),
        _ => format!("{:.1} MiB", f / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, OutboxConfig};
    use doorstep_proto::{DeviceId, Event, FixEvidence, SigningKey};

    #[test]
    fn status_reads_depth_and_link_from_another_connection_and_says_when_the_link_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("agent.db");
        let key = SigningKey::from_seed(&[1; 32]).expect("seed");
        let mut outbox =
            Outbox::open(&db, OutboxConfig::new(DeviceId::new("van-1").expect("id"))).expect("open");
        let now = crate::util::wall_ms();
        outbox
            .append(&key, Event::Position(FixEvidence::new(now - 90_000, 1.0, 2.0)), now - 90_000, 0)
            .expect("append");
        let link = LinkRecord {
            link: LinkState::Up,
            broker: "127.0.0.1:1883".into(),
            since_ms: now,
            updated_ms: now - 60_000,
            last_fix: Some(FixRecord { utc_ms: now, lat: 1.0, lon: 2.0, seen_ms: now - 5_000 }),
            ..LinkRecord::default()
        };
        link.write(&link_record_path(&db)).expect("write");

        let status = read_status(&db, &link_record_path(&db)).expect("status");
        assert_eq!(status.outbox.depth(), 1);
        assert_eq!(status.outbox.depth_by_kind.get("position").map(|d| d.count), Some(1));
        assert!(status.link_stale);
        assert!(status.oldest_unacked_age_s.is_some_and(|a| (89..=95).contains(&a)));
        let text = status.render();
        assert!(text.contains("UP since") && text.contains("STALE"), "{text}");
        assert!(text.contains("position"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&status.to_json()).expect("json");
        assert_eq!(json["outbox"]["depth_by_kind"]["position"]["count"], 1);
    }

    #[test]
    fn status_without_a_database_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("missing.db");
        let err = read_status(&db, &link_record_path(&db)).expect_err("no db");
        assert!(err.to_string().contains("no outbox database"), "{err}");
    }

    #[test]
    fn status_says_whether_someone_watches_the_van_and_until_when() {
        let now = 1_767_225_600_000;
        let link = |watch| LinkRecord {
            link: LinkState::Up,
            updated_ms: now,
            live_positions_sent: 42,
            last_live_ms: Some(now - 3_000),
            watch,
            ..LinkRecord::default()
        };
        let watched = link(Some(WatchRecord { every_s: 5, until_ms: now + 90_000 }));
        let text = Status::new(now, Some(watched), OutboxStats::default()).render();
        assert!(
            text.contains("live position:   WATCHED: every 5 s for 90 s more (42 sent, last 3 s ago)"),
            "{text}"
        );
        let ended = link(Some(WatchRecord { every_s: 5, until_ms: now - 1 }));
        let text = Status::new(now, Some(ended), OutboxStats::default()).render();
        assert!(text.contains("live position:   adaptive, nobody watching"), "{text}");
        // A record written before watches existed still reads.
        let old: LinkRecord = serde_json::from_str(
            r#"{"pid":1,"link":"up","broker":"b:1","since_ms":0,"last_publish_ms":null,"last_hub_ack_seq":0,
               "last_hub_ack_ms":null,"last_error":null,"last_fix":null,"rejected_hub_messages":0,"updated_ms":0}"#,
        )
        .expect("old record");
        assert_eq!(old.watch, None);
    }

    #[test]
    fn refused_confirmations_are_an_alarm() {
        let stats = OutboxStats { rejected_confirmations: 2, ..OutboxStats::default() };
        let status = Status::new(0, None, stats);
        assert!(status.render().contains("ALARM: OUTBOX FULL: 2 confirmation(s) could NOT be stored"));
    }
}
