//! `doorstep-agent replay`: a recorded drive through the same decision code as a live van.
//!
//! The NMEA log goes through the same decoder, quality gate and [`Decider`] as the live
//! agent; scans from a JSON-lines file are interleaved by their GNSS time. Fleet IT uses
//! it to check a route's geofences against a real drive before a shift, and the tests use
//! it on the recorded drives in `../shared/data/nmea/drives/`.
//!
//! Scan file lines:
//!
//! ```json
//! {"time":"2010-04-11T08:24:10Z","code":"1Z999AA10123456784"}
//! {"time":"2010-04-11T08:24:30Z","code":"1Z999AA10123456785","photo":"pod/door.jpg"}
//! {"time":"2010-04-11T08:31:00Z","exception":"recipient_absent","code":"9400111899223197428490"}
//! ```

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use doorstep_proto::blob::MAX_PHOTO_LEN;
use doorstep_proto::{Event, ExceptionReason, HexBytes, PhotoRef, RouteManifest};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::decide::{Decided, Decider, ExceptionReport, Reply};
use crate::fix::{Fix, GoodFix, format_utc_ms};
use crate::gate::{Gate, GateConfig, Verdict};
use crate::geofence::GeofenceConfig;
use crate::gps::{AssemblerConfig, DecoderConfig, decode_all};

/// Longest scan-file line accepted, in bytes.
pub const MAX_SCAN_LINE: usize = 4096;

/// One line of a scan file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanLine {
    /// GNSS UTC time of the scan, RFC 3339.
    pub time: String,
    /// The code as scanned.
    pub code: String,
    /// A photo proof file (relative paths are taken from the scan file's folder).
    #[serde(default)]
    pub photo: Option<PathBuf>,
    /// When present, this line is a driver-reported exception with this reason code.
    #[serde(default)]
    pub exception: Option<String>,
    /// A note for an exception.
    #[serde(default)]
    pub note: Option<String>,
}

/// A scan ready for the decider: its time resolved, its photo hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedScan {
    /// GNSS UTC, milliseconds since the Unix epoch.
    pub utc_ms: i64,
    /// The code.
    pub code: String,
    /// The photo proof.
    pub photo: Option<PhotoRef>,
    /// The exception reason, for an exception line.
    pub exception: Option<ExceptionReason>,
    /// The exception note.
    pub note: Option<String>,
}

/// Why a scan file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScanFileError {
    /// A line is not valid JSON of the scan format.
    #[error("scan file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A photo could not be read.
    #[error("photo {path}: {source}")]
    Photo {
        /// The photo's path.
        path: PathBuf,
        /// The cause.
        source: PhotoError,
    },
}

/// Why a photo proof could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    /// The file could not be opened or read.
    #[error("cannot read it ({0}); check the path the app sent")]
    Io(#[from] std::io::Error),
    /// The file is larger than a photo may be.
    #[error("it is larger than {MAX_PHOTO_LEN} bytes; send a smaller photo")]
    TooLarge,
    /// The file is empty.
    #[error("it is empty; take the photo again")]
    Empty,
}

/// Hashes a photo proof (SHA-256) and records its size, reading at most the photo limit.
pub fn hash_photo(path: &Path) -> Result<PhotoRef, PhotoError> {
    let file = std::fs::File::open(path)?;
    let mut reader = file.take(MAX_PHOTO_LEN + 1);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    if size > MAX_PHOTO_LEN {
        return Err(PhotoError::TooLarge);
    }
    if size == 0 {
        return Err(PhotoError::Empty);
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(ctx.finish().as_ref());
    Ok(PhotoRef { sha256: HexBytes(sha256), size })
}

/// Parses an RFC 3339 time into milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("time {text:?} is not RFC 3339 like 2026-11-21T14:05:09Z ({e})"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("time {text:?} is out of range"))
}

/// Reads a scan file: one JSON object per line; blank lines and `#` comments are skipped.
/// Photos are hashed relative to `base`.
pub fn read_scans(text: &str, base: &Path) -> Result<Vec<TimedScan>, ScanFileError> {
    let mut scans = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |message: String| ScanFileError::Line { line: line_no, message };
        if trimmed.len() > MAX_SCAN_LINE {
            return Err(err(format!("longer than {MAX_SCAN_LINE} bytes")));
        }
        let parsed: ScanLine = serde_json::from_str(trimmed).map_err(|e| err(e.to_string()))?;
        let utc_ms = parse_rfc3339_ms(&parsed.time).map_err(err)?;
        let exception =
            parsed.exception.as_deref().map(str::parse::<ExceptionReason>).transpose().map_err(err)?;
        let photo = match parsed.photo {
            Some(p) => {
                let path = if p.is_absolute() { p } else { base.join(p) };
                Some(hash_photo(&path).map_err(|source| ScanFileError::Photo { path, source })?)
            }
            None => None,
        };
        scans.push(TimedScan { utc_ms, code: parsed.code, photo, exception, note: parsed.note });
    }
    scans.sort_by_key(|s| s.utc_ms);
    Ok(scans)
}

/// Everything a replay decided, in order, with the counters behind it.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    /// Decided events in time order.
    pub events: Vec<Decided>,
    /// The reply each scan got, with the scan's time.
    pub replies: Vec<(i64, Reply)>,
    /// Fixes decoded from the log.
    pub fixes: u64,
    /// Fixes refused by the gate, by reason.
    pub gated: BTreeMap<&'static str, u64>,
    /// The decider's counters.
    pub counters: BTreeMap<&'static str, u64>,
}

/// The date floor replays use by default: 2000-01-01, in days since the Unix epoch.
///
/// A live agent treats any date before its build-time floor as a GPS week rollover (the
/// receiver cannot be older than the firmware). A recording can be: the public drives are
/// from 2009 and 2010. Replays therefore keep dates after 2000, which still catches the
/// receivers that report 1999-2004 after the 2019 rollover only if the floor is raised.
pub const REPLAY_DATE_FLOOR_DAYS: i64 = 10_957;

/// Options of a replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Earliest believable date, in days since the Unix epoch (see [`REPLAY_DATE_FLOOR_DAYS`]).
    pub date_floor_days: i64,
    /// Quality gate thresholds.
    pub gate: GateConfig,
    /// Geofence parameters.
    pub geofence: GeofenceConfig,
    /// Keep the trail in the output, as the signed batches the van would send (off by
    /// default: the trail is not a decision).
    pub positions: bool,
    /// Stops past the furthest reached for which "nearby" may be said (see
    /// [`crate::decide::DEFAULT_NEARBY_LOOKAHEAD`]).
    pub nearby_lookahead: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            date_floor_days: REPLAY_DATE_FLOOR_DAYS,
            gate: GateConfig::default(),
            geofence: GeofenceConfig::default(),
            positions: false,
            nearby_lookahead: crate::decide::DEFAULT_NEARBY_LOOKAHEAD,
        }
    }
}

/// Replays gated fixes (already decoded) and scans through a fresh decider.
pub fn replay_fixes(
    fixes: impl IntoIterator<Item = GoodFix>,
    route: RouteManifest,
    scans: &[TimedScan],
    config: &ReplayConfig,
) -> ReplayOutcome {
    let interval = if config.positions { crate::decide::DEFAULT_POSITION_INTERVAL_MS } else { 0 };
    let mut decider = Decider::new(config.geofence.clone())
        .with_position_interval_ms(interval)
        .with_nearby_lookahead(config.nearby_lookahead);
    decider.load_route(route);
    let mut out = ReplayOutcome::default();
    let mut pending = scans.iter().peekable();
    for fix in fixes {
        while let Some(scan) = pending.next_if(|s| s.utc_ms < fix.utc_ms) {
            apply_scan(&mut decider, scan, &mut out);
        }
        out.events.extend(decider.on_fix(&fix));
    }
    for scan in pending {
        apply_scan(&mut decider, scan, &mut out);
    }
    // The batch being filled when the log ends, as a graceful stop would store it.
    out.events.extend(decider.flush_trail());
    out.counters = decider.counters().clone();
    out
}

fn apply_scan(decider: &mut Decider, scan: &TimedScan, out: &mut ReplayOutcome) {
    let (reply, event) = match scan.exception {
        Some(reason) => decider.on_exception(
            scan.utc_ms,
            ExceptionReport {
                reason,
                codes: vec![scan.code.clone()],
                stop_id: None,
                note: scan.note.clone(),
                photo: scan.photo,
            },
        ),
        None => decider.on_scan(scan.utc_ms, &scan.code, scan.photo),
    };
    out.replies.push((scan.utc_ms, reply));
    out.events.extend(event);
}

/// Decodes an NMEA log into fixes, with the replay's date floor.
pub fn decode_log(nmea: &[u8], config: &ReplayConfig) -> Vec<Fix> {
    let decoder_config = DecoderConfig {
        assembler: AssemblerConfig { date_floor_days: config.date_floor_days },
        ..DecoderConfig::default()
    };
    decode_all(nmea, decoder_config).0
}

/// Decodes an NMEA log, gates it and replays it with the scans.
pub fn replay_nmea(
    nmea: &[u8],
    route: RouteManifest,
    scans: &[TimedScan],
    config: &ReplayConfig,
) -> ReplayOutcome {
    let fixes = decode_log(nmea, config);
    let (good, gated) = gate_all(&fixes, config.gate);
    let mut out = replay_fixes(good, route, scans, config);
    out.fixes = fixes.len() as u64;
    out.gated = gated;
    out
}

/// Runs decoded fixes through a fresh quality gate: the good ones, and refusals by reason.
pub fn gate_all(fixes: &[Fix], config: GateConfig) -> (Vec<GoodFix>, BTreeMap<&'static str, u64>) {
    let mut gate = Gate::new(config);
    let mut gated: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut good = Vec::with_capacity(fixes.len());
    for fix in fixes {
        match gate.check(fix) {
            Verdict::Accept(g) => good.push(g),
            Verdict::Reject(reason) => *gated.entry(reason.as_str()).or_insert(0) += 1,
        }
    }
    (good, gated)
}

/// The replay CLI's JSON line for one event.
pub fn event_json(decided: &Decided) -> Value {
    let time = format_utc_ms(decided.utc_ms);
    let fix_fields = |v: &mut Value, fix: &doorstep_proto::FixEvidence| {
        v["lat"] = json!(fix.lat());
        v["lon"] = json!(fix.lon());
        if let Some(a) = fix.accuracy_m() {
            v["accuracy_m"] = json!(a);
        }
        v["fix_time"] = json!(format_utc_ms(fix.utc_ms));
    };
    let mut v = json!({"kind": decided.event.kind(), "time": time});
    match &decided.event {
        Event::Position(fix) => fix_fields(&mut v, fix),
        Event::Trail(trail) => {
            v["samples"] = json!(trail.steps.len() + 1);
            fix_fields(&mut v, &trail.first);
        }
        Event::Nearby(n) => {
            v["stop_id"] = json!(n.stop_id);
            v["distance_m"] = json!(n.distance_m);
            fix_fields(&mut v, &n.fix);
        }
        Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => {
            v["stop_id"] = json!(d.stop_id);
            v["distance_m"] = json!(d.distance_m);
            v["dwell_s"] = json!(d.dwell_s);
            v["tracking_numbers"] = json!(d.tracking_numbers);
            if let Some(p) = &d.photo {
                v["photo_sha256"] = json!(p.sha256.to_hex());
                v["photo_size"] = json!(p.size);
            }
            fix_fields(&mut v, &d.fix);
        }
        Event::Exception(e) => {
            v["stop_id"] = json!(e.stop_id);
            v["reason"] = json!(e.reason.as_str());
            v["distance_m"] = json!(e.distance_m);
            v["tracking_numbers"] = json!(e.tracking_numbers);
            if let Some(note) = &e.note {
                v["note"] = json!(note);
            }
            if let Some(fix) = &e.fix {
                fix_fields(&mut v, fix);
            }
        }
        Event::ScanNotOnRoute(s) => {
            v["code"] = json!(s.barcode);
            if let Some(fix) = &s.fix {
                fix_fields(&mut v, fix);
            }
        }
        // The decider never makes gap notices (the outbox does, when it evicts), but the
        // printer stays total over the contract.
        Event::Gap(g) => {
            v["first_seq"] = json!(g.first_seq);
            v["last_seq"] = json!(g.last_seq);
        }
    }
    v
}
