//! Conformance against a real peer: the agent's decoder versus gpsd, over gpsd's own
//! regression corpus (`../shared/data/nmea/gpsd`, about 100 receivers).
//!
//! Each `X.log` there has gpsd's decoded output beside it in `X.log.chk`. The oracle is
//! counted like this:
//!
//! - **gpsd's epochs** are the distinct times of day among the `.chk`'s TPV reports that
//!   have `mode >= 2` and a `time` field. gpsd also emits TPVs without `time` (after a
//!   GGA, before it has seen a date); those are not epochs here, because they cannot be
//!   matched to anything. Only the time of day counts, not the date: gpsd shifts the
//!   dates of some old logs by 1024 weeks, and so do we, by a different floor.
//! - gpsd may report an epoch several times as its sentences arrive. Almost always
//!   every report carries the same position; where they differ (3 logs: a chart
//!   plotter whose same-second sentences were sampled up to 2 m apart, and a timing
//!   receiver's proprietary averaged-position sentence), gpsd itself gave several
//!   answers for that time.
//! - **Our fix for an epoch** is the last fix we assembled with that time of day. It
//!   **agrees** when it has a position, `mode >= 2`, and latitude and longitude each
//!   within 1e-6 degrees of one of gpsd's TPV reports for that time. The test also
//!   prints, for information, the stricter agreement with gpsd's *last* report of each
//!   epoch.
//!
//! Two more figures, both against gpsd's **last** report of each epoch:
//!
//! - **strict position**: our last fix lies within 1e-6 degrees of gpsd's last report.
//!   Asserted at [`REQUIRED_STRICT`] (99 %) over the epochs whose last report took in
//!   the receiver's RMC for that second, and at [`REQUIRED_RAW_STRICT`] over all. For 38
//!   seconds of the B&G Zeus chart plotter's log (`bundg_zeus_9`, 09:48:17 to 09:48:54)
//!   gpsd's reports carry speed 0.000 and no course while the receiver's RMCs say 5 to 6
//!   knots: gpsd reported before the RMC and never after it, so its answer for those
//!   seconds is the GLL's position and no oracle for a decoder that reads the RMC too.
//!   Both counts are printed.
//! - **speed carried**: of the epochs where the receiver sent an RMC with a speed and
//!   gpsd's last report carries that speed, the share whose last fix of ours carries it.
//!   Asserted at [`REQUIRED_SPEED`] (99 %).
//!
//! The agreement figure above is asserted over the same epochs as the strict one.
//!
//! The test fails if fewer than 99 % of gpsd's epochs agree over the whole corpus, if
//! either figure above is short, if any log makes the decoder panic, or if the corpus is
//! missing. It prints per-log agreement and the disagreements, and, for information,
//! epochs where we report a position and gpsd reports none.

// The per-log table on stdout is this test's report.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use doorstep_agent::fix::Fix;
use doorstep_agent::gps::{DecoderConfig, decode_all};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmea/gpsd");

/// Agreement required over the whole corpus.
const REQUIRED_AGREEMENT: f64 = 0.99;

/// Share of gpsd's epochs whose last report our last fix must match within the
/// tolerance, and share of epochs with a receiver speed our fix must carry.
const REQUIRED_STRICT: f64 = 0.99;

/// Share of all gpsd's epochs, those whose report lacks the receiver's RMC included,
/// whose last report our last fix must match.
const REQUIRED_RAW_STRICT: f64 = 0.985;
const REQUIRED_SPEED: f64 = 0.99;

/// Largest speed difference still counted as carrying gpsd's speed, m/s (gpsd prints
/// three decimals; knots to m/s rounding differs in the last one).
const SPEED_TOLERANCE_MPS: f64 = 0.002;

/// One knot in m/s.
const KNOT_MPS: f64 = 1852.0 / 3600.0;

/// Largest latitude or longitude difference still counted as agreement, degrees.
const TOLERANCE_DEG: f64 = 1e-6;

/// Every position gpsd reported for one epoch, in report order (almost always one).
#[derive(Debug, Clone, Default)]
struct Reference {
    positions: Vec<(f64, f64)>,
    /// Speed in gpsd's last report of the epoch, m/s, when it carried one.
    last_speed: Option<f64>,
}

impl Reference {
    fn last(&self) -> Option<(f64, f64)> {
        self.positions.last().copied()
    }
}

fn close(a: (f64, f64), b: (f64, f64)) -> bool {
    (a.0 - b.0).abs() <= TOLERANCE_DEG && (a.1 - b.1).abs() <= TOLERANCE_DEG
}

/// Why one of gpsd's epochs did not agree.
enum Miss {
    NoEpoch,
    NoPosition,
    Mode(Option<u8>),
    /// Nearest difference to any of gpsd's reports of the epoch, degrees.
    Moved {
        dlat: f64,
        dlon: f64,
    },
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::NoEpoch => f.write_str("no fix with this time"),
            Miss::NoPosition => f.write_str("our fix has no position"),
            Miss::Mode(mode) => write!(f, "our fix has mode {mode:?}"),
            Miss::Moved { dlat, dlon } => {
                write!(f, "position differs by {dlat:+.2e} lat, {dlon:+.2e} lon degrees")
            }
        }
    }
}

#[derive(Default)]
struct LogResult {
    name: String,
    epochs: usize,
    agreed: usize,
    strict: usize,
    /// Epochs where the receiver sent an RMC with a speed and gpsd's last report has one.
    speed_epochs: usize,
    /// Of those, epochs whose last fix of ours carries the same speed.
    speed_carried: usize,
    ambiguous: usize,
    /// Epochs whose last gpsd report lacks the receiver's RMC for that second.
    rmc_dropped: usize,
    /// The other epochs, and of those, how many agree and how many match strictly.
    intact: usize,
    intact_agreed: usize,
    intact_strict: usize,
    /// Misses among the intact epochs.
    misses: Vec<(u32, Miss)>,
    speed_misses: Vec<u32>,
    strict_misses: Vec<u32>,
    extra: Vec<u32>,
    panicked: Option<String>,
}

fn corpus_logs() -> Vec<PathBuf> {
    let dir = Path::new(CORPUS);
    let entries = fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "the gpsd NMEA corpus is missing at {}: {e}. It lives in the shared data \
             directory beside the workspace (shared/data/nmea/gpsd); check it out there.",
            dir.display()
        )
    });
    let mut logs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    assert!(!logs.is_empty(), "no *.log files in the gpsd corpus at {}", dir.display());
    logs
}

/// "2007-12-23T19:32:21.000Z" to milliseconds since midnight.
fn tod_ms(time: &str) -> Option<u32> {
    let clock = time.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: u32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: u32 = s.parse().ok()?;
    let frac = format!("{frac:0<3}");
    let ms: u32 = frac.get(..3)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// gpsd's epochs: time of day to the last mode >= 2 TPV's position.
fn gpsd_epochs(chk: &str) -> BTreeMap<u32, Reference> {
    let mut epochs = BTreeMap::new();
    for line in chk.lines() {
        if !line.starts_with('{') || !line.contains("\"class\":\"TPV\"") {
            continue;
        }
        let Ok(tpv) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let mode = tpv["mode"].as_u64().unwrap_or(0);
        let (Some(time), Some(lat), Some(lon)) =
            (tpv["time"].as_str(), tpv["lat"].as_f64(), tpv["lon"].as_f64())
        else {
            continue;
        };
        if mode >= 2
            && let Some(tod) = tod_ms(time)
        {
            let reference = epochs.entry(tod).or_insert_with(Reference::default);
            if reference.positions.last() != Some(&(lat, lon)) {
                reference.positions.push((lat, lon));
            }
            reference.last_speed = tpv["speed"].as_f64();
        }
    }
    epochs
}

/// Times of day at which the log has an RMC sentence with a speed, and that speed in m/s.
fn rmc_speeds(log: &str) -> BTreeMap<u32, f64> {
    log.lines()
        .filter_map(|line| {
            let body = line.trim().strip_prefix('$')?;
            let body = body.split('*').next()?;
            let mut fields = body.split(',');
            let talker_kind = fields.next()?;
            if !talker_kind.ends_with("RMC") {
                return None;
            }
            let time = fields.next()?;
            let knots: f64 = fields.nth(5)?.parse().ok()?;
            if time.len() < 6 {
                return None;
            }
            let (h, m, s): (u32, u32, u32) =
                (time.get(0..2)?.parse().ok()?, time.get(2..4)?.parse().ok()?, time.get(4..6)?.parse().ok()?);
            let frac = time.get(6..).unwrap_or("").trim_start_matches('.');
            let frac = format!("{frac:0<3}");
            let ms: u32 = frac.get(..3)?.parse().ok()?;
            Some((((h * 60 + m) * 60 + s) * 1000 + ms, knots * KNOT_MPS))
        })
        .collect()
}

fn compare(
    name: String,
    fixes: &[Fix],
    reference: &BTreeMap<u32, Reference>,
    rmc: &BTreeMap<u32, f64>,
) -> LogResult {
    let mut ours: BTreeMap<u32, &Fix> = BTreeMap::new();
    for fix in fixes {
        ours.insert(fix.tod_ms, fix);
    }
    let mut result = LogResult {
        name,
        epochs: reference.len(),
        ambiguous: reference.values().filter(|r| r.positions.len() > 1).count(),
        ..LogResult::default()
    };
    for (&tod, r) in reference {
        // gpsd's last report did not take in the receiver's RMC for this second (its
        // speed is another, usually 0.000, or none): gpsd's answer for the second is
        // missing a sentence the receiver sent, so it is no oracle for the position.
        let rmc_dropped = rmc
            .get(&tod)
            .is_some_and(|&sent| r.last_speed.is_none_or(|speed| (sent - speed).abs() > SPEED_TOLERANCE_MPS));
        if rmc_dropped {
            result.rmc_dropped += 1;
        } else {
            result.intact += 1;
        }
        // gpsd sometimes reports a speed the receiver never sent (0.000 after a chart
        // plotter's RMC that it took as late); only the receiver's speed counts.
        if let Some(speed) = r.last_speed
            && rmc.get(&tod).is_some_and(|&sent| (sent - speed).abs() <= SPEED_TOLERANCE_MPS)
        {
            result.speed_epochs += 1;
            let carried = ours
                .get(&tod)
                .and_then(|fix| fix.speed_mps)
                .is_some_and(|ours| (ours - speed).abs() <= SPEED_TOLERANCE_MPS);
            if carried {
                result.speed_carried += 1;
            } else {
                result.speed_misses.push(tod);
            }
        }
        let miss = match ours.get(&tod) {
            None => Some(Miss::NoEpoch),
            Some(fix) => match (fix.position(), fix.mode.map(|m| m.as_gpsd())) {
                (None, _) => Some(Miss::NoPosition),
                (Some(_), mode) if mode < Some(2) => Some(Miss::Mode(mode)),
                (Some(ours), _) => {
                    let last = r.last().unwrap_or((f64::NAN, f64::NAN));
                    if close(ours, last) {
                        result.strict += 1;
                        result.intact_strict += usize::from(!rmc_dropped);
                    } else if !rmc_dropped {
                        result.strict_misses.push(tod);
                    }
                    let nearest = r
                        .positions
                        .iter()
                        .map(|p| (ours.0 - p.0, ours.1 - p.1))
                        .min_by(|a, b| (a.0.abs() + a.1.abs()).total_cmp(&(b.0.abs() + b.1.abs())))
                        .unwrap_or((f64::NAN, f64::NAN));
                    (!r.positions.iter().any(|&p| close(ours, p)))
                        .then_some(Miss::Moved { dlat: nearest.0, dlon: nearest.1 })
                }
            },
        };
        match miss {
            None => {
                result.agreed += 1;
                result.intact_agreed += usize::from(!rmc_dropped);
            }
            Some(miss) if !rmc_dropped => result.misses.push((tod, miss)),
            Some(_) => {}
        }
    }
    result.extra = ours
        .iter()
        .filter(|(tod, fix)| {
            !reference.contains_key(tod)
                && fix.position().is_some()
                && fix.mode.is_some_and(|m| m.as_gpsd() >= 2)
        })
        .map(|(&tod, _)| tod)
        .collect();
    result
}

fn hms(tod: u32) -> String {
    let (h, m, s, ms) = (tod / 3_600_000, tod / 60_000 % 60, tod / 1000 % 60, tod % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

#[test]
fn decoder_agrees_with_gpsd_on_at_least_99_percent_of_its_epochs() {
    let mut results = Vec::new();
    for log in corpus_logs() {
        let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = fs::read(&log).unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
        let chk_path = log.with_extension("log.chk");
        let chk = fs::read(&chk_path)
            .unwrap_or_else(|e| panic!("reading gpsd's oracle {}: {e}", chk_path.display()));
        let reference = gpsd_epochs(&String::from_utf8_lossy(&chk));
        let rmc = rmc_speeds(&String::from_utf8_lossy(&bytes));
        let decoded = panic::catch_unwind(|| decode_all(&bytes, DecoderConfig::default()).0);
        let result = match decoded {
            Ok(fixes) => compare(name, &fixes, &reference, &rmc),
            Err(payload) => LogResult {
                name,
                epochs: reference.len(),
                panicked: Some(
                    payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default(),
                ),
                ..LogResult::default()
            },
        };
        results.push(result);
    }

    let (mut epochs, mut agreed, mut strict, mut ambiguous) = (0, 0, 0, 0);
    let (mut dropped, mut intact, mut intact_agreed, mut intact_strict) = (0, 0, 0, 0);
    let (mut speed_epochs, mut speed_carried) = (0, 0);
    println!("{:<34} {:>6} {:>6} {:>7}  extra", "log", "gpsd", "agree", "rate");
    for r in &results {
        epochs += r.epochs;
        agreed += r.agreed;
        strict += r.strict;
        ambiguous += r.ambiguous;
        dropped += r.rmc_dropped;
        intact += r.intact;
        intact_agreed += r.intact_agreed;
        intact_strict += r.intact_strict;
        speed_epochs += r.speed_epochs;
        speed_carried += r.speed_carried;
        let rate = if r.epochs == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", 100.0 * r.agreed as f64 / r.epochs as f64)
        };
        println!("{:<34} {:>6} {:>6} {:>7}  {}", r.name, r.epochs, r.agreed, rate, r.extra.len());
    }
    let disagreeing: Vec<&LogResult> =
        results.iter().filter(|r| !r.misses.is_empty() || r.panicked.is_some()).collect();
    if !disagreeing.is_empty() {
        println!("\nlogs that disagree with gpsd:");
    }
    for r in &disagreeing {
        if let Some(msg) = &r.panicked {
            println!("  {}: PANICKED: {msg}", r.name);
            continue;
        }
        println!("  {}: {} of {} epochs", r.name, r.misses.len(), r.epochs);
        for (tod, miss) in r.misses.iter().take(8) {
            println!("    {} {miss}", hms(*tod));
        }
    }
    let strict_short: Vec<&LogResult> = results.iter().filter(|r| !r.strict_misses.is_empty()).collect();
    if !strict_short.is_empty() {
        println!("\nlogs where our last fix of an epoch is not gpsd's last report:");
    }
    for r in &strict_short {
        let first: Vec<String> = r.strict_misses.iter().take(4).map(|t| hms(*t)).collect();
        println!("  {}: {} of {} epochs, e.g. {}", r.name, r.strict_misses.len(), r.intact, first.join(" "));
    }
    let speed_short: Vec<&LogResult> = results.iter().filter(|r| !r.speed_misses.is_empty()).collect();
    if !speed_short.is_empty() {
        println!("\nlogs where our fix lacks the receiver's speed that gpsd reports:");
    }
    for r in &speed_short {
        let first: Vec<String> = r.speed_misses.iter().take(4).map(|t| hms(*t)).collect();
        println!("  {}: {} of {} epochs, e.g. {}", r.name, r.speed_carried, r.speed_epochs, first.join(" "));
    }
    let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    println!(
        "\nall {epochs} gpsd epochs: {agreed} agree ({:.2}%), {strict} match gpsd's last report \
         ({:.2}%); gpsd reported {ambiguous} epochs with more than one position",
        pct(agreed, epochs),
        pct(strict, epochs)
    );
    println!(
        "{dropped} epochs where gpsd's last report lacks the receiver's RMC for that second \
         (its speed differs or is missing) are no oracle for the position"
    );
    let rate = intact_agreed as f64 / intact.max(1) as f64;
    let strict_rate = intact_strict as f64 / intact.max(1) as f64;
    println!(
        "the other {intact}: {intact_agreed} agree ({:.2}%), {intact_strict} match gpsd's last \
         report ({:.2}%), {} logs disagree",
        100.0 * rate,
        100.0 * strict_rate,
        disagreeing.len()
    );
    let raw_strict_rate = strict as f64 / epochs.max(1) as f64;
    let speed_rate = speed_carried as f64 / speed_epochs.max(1) as f64;
    println!(
        "speed: {speed_carried} of {speed_epochs} epochs with an RMC speed that gpsd reports carry it \
         ({:.2}%)",
        100.0 * speed_rate
    );

    let panicked: Vec<&str> =
        results.iter().filter(|r| r.panicked.is_some()).map(|r| r.name.as_str()).collect();
    assert!(panicked.is_empty(), "the decoder panicked on {panicked:?}");
    assert!(
        rate >= REQUIRED_AGREEMENT,
        "only {intact_agreed} of {intact} gpsd epochs agree ({:.2}%, need {:.0}%); see the \
         per-log table above",
        100.0 * rate,
        100.0 * REQUIRED_AGREEMENT
    );
    assert!(
        strict_rate >= REQUIRED_STRICT,
        "only {intact_strict} of {intact} epochs match gpsd's last report ({:.2}%, need {:.0}%)",
        100.0 * strict_rate,
        100.0 * REQUIRED_STRICT
    );
    assert!(
        raw_strict_rate >= REQUIRED_RAW_STRICT,
        "only {strict} of all {epochs} epochs match gpsd's last report ({:.2}%, need {:.1}%)",
        100.0 * raw_strict_rate,
        100.0 * REQUIRED_RAW_STRICT
    );
    assert!(
        speed_rate >= REQUIRED_SPEED,
        "only {speed_carried} of {speed_epochs} epochs carry the receiver's speed ({:.2}%, need {:.0}%)",
        100.0 * speed_rate,
        100.0 * REQUIRED_SPEED
    );
}
