//! A recorded drive: an NMEA 0183 log cut into epochs (every sentence a receiver sent for
//! one GNSS second), each with its GNSS time, position and speed, and the places where the
//! car stood still long enough to be a delivery stop.
//!
//! [`crate::gnss::GnssFeed::replay`] writes the epochs to the agent's serial line at the
//! log's own pace, sped up; a benchmark puts a route's stops where [`Drive::stops`] says
//! the car stopped, so "nearby" and "delivered" happen where they would on a real round.
//! Only what a replay needs is read here; the agent's decoder reads the sentences itself.

use std::path::Path;

use anyhow::{Context, bail};

/// Below this speed (knots, as RMC gives it) the car stands still; receivers report a
/// few tenths of a knot of noise when parked.
pub const STANDING_KNOTS: f64 = 1.0;

/// One GNSS second of a recorded log.
#[derive(Debug, Clone)]
pub struct Epoch {
    /// GNSS UTC time of the epoch, ms since the Unix epoch.
    pub utc_ms: i64,
    /// The receiver's sentences for this epoch, each ending in CR LF.
    pub sentences: String,
    /// RMC's position, when RMC was valid in this epoch: (latitude, longitude), degrees.
    pub position: Option<(f64, f64)>,
    /// RMC's speed over ground, knots.
    pub speed_knots: Option<f64>,
}

/// Where and how long the car stood still.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standstill {
    /// GNSS time of the first standing epoch, ms.
    pub from_ms: i64,
    /// GNSS time of the last standing epoch, ms.
    pub to_ms: i64,
    /// Mean latitude over the standing epochs, degrees.
    pub lat: f64,
    /// Mean longitude over the standing epochs, degrees.
    pub lon: f64,
}

impl Standstill {
    /// How long the car stood, seconds.
    pub fn seconds(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // a drive lasts hours, not millennia
        let ms = (self.to_ms - self.from_ms) as f64;
        ms / 1000.0
    }
}

/// A recorded drive, cut into epochs.
#[derive(Debug, Clone)]
pub struct Drive {
    /// The file's name without its directory, for reports.
    pub name: String,
    /// The epochs in the order recorded.
    pub epochs: Vec<Epoch>,
}

impl Drive {
    /// Reads an NMEA log (comment lines starting with `#` are skipped, as a receiver
    /// would never send them).
    pub fn load(path: &Path) -> anyhow::Result<Drive> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let name =
            path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
        let drive = Drive::parse(&name, &text)?;
        if drive.epochs.len() < 2 {
            bail!("{}: fewer than two timed epochs; not a drive", path.display());
        }
        Ok(drive)
    }

    /// Cuts `text` into epochs: a new epoch begins at the first sentence whose time of day
    /// (RMC, GGA, GLL or GNS) differs from the current one's. Untimed sentences (GSA,
    /// GSV, vendor sentences) stay with the epoch they follow. The date comes from RMC;
    /// a time of day that goes backwards starts the next day.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<Drive> {
        let mut epochs: Vec<Epoch> = Vec::new();
        let mut pending = String::new();
        let mut current_tod: Option<i64> = None;
        let mut first_date_ms: Option<i64> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if !line.starts_with('$') {
                continue;
            }
            let fields: Vec<&str> = line.split('*').next().unwrap_or(line).split(',').collect();
            let kind = fields[0].get(3..).unwrap_or("");
            let tod = match kind {
                "RMC" | "GGA" | "GNS" => fields.get(1).and_then(|t| time_of_day_ms(t)),
                "GLL" => fields.get(5).and_then(|t| time_of_day_ms(t)),
                _ => None,
            };
            if kind == "RMC" && first_date_ms.is_none() {
                first_date_ms = fields.get(9).and_then(|d| date_ms(d));
            }
            if let Some(tod) = tod
                && current_tod != Some(tod)
            {
                current_tod = Some(tod);
                if let Some(last) = epochs.last_mut() {
                    last.sentences.push_str(&std::mem::take(&mut pending));
                }
                epochs.push(Epoch {
                    utc_ms: tod,
                    sentences: String::new(),
                    position: None,
                    speed_knots: None,
                });
            }
            pending.push_str(line);
            pending.push_str("\r\n");
            if let Some(epoch) = epochs.last_mut() {
                epoch.sentences.push_str(&std::mem::take(&mut pending));
                if kind == "RMC" && fields.get(2) == Some(&"A") {
                    epoch.position = rmc_position(&fields);
                    epoch.speed_knots = fields.get(7).and_then(|s| s.parse().ok());
                }
            }
        }
        let Some(mut base) = first_date_ms else { bail!("{name}: no RMC sentence with a date") };
        // Times were read as time of day: the first is on the first RMC's date, and each
        // time of day that goes back by more than half a day is on the next day (a receiver
        // whose clock steps back a second, as the Munich log's does once, stays on its day).
        let mut previous = None;
        for epoch in &mut epochs {
            if previous.is_some_and(|p| epoch.utc_ms < p - 43_200_000) {
                base += 86_400_000;
            }
            previous = Some(epoch.utc_ms);
            epoch.utc_ms += base;
        }
        Ok(Drive { name: name.to_owned(), epochs })
    }

    /// The same drive on another day: every RMC date moved by the same number of days so
    /// that the first epoch falls on `day` (days since the Unix epoch), checksums redone.
    /// A hub refuses events dated ahead of its clock, and an agent takes dates before its
    /// build year for a GPS week rollover; a recording from 2010 replayed as yesterday's
    /// drive is neither.
    pub fn moved_to_day(&self, day: i64) -> Drive {
        let shift_days = day - self.start_ms().div_euclid(86_400_000);
        let epochs = self
            .epochs
            .iter()
            .map(|e| Epoch {
                utc_ms: e.utc_ms + shift_days * 86_400_000,
                sentences: e.sentences.lines().map(|l| shift_rmc_date(l, shift_days) + "\r\n").collect(),
                position: e.position,
                speed_knots: e.speed_knots,
            })
            .collect();
        Drive { name: self.name.clone(), epochs }
    }

    /// GNSS time from the first epoch to the last, ms.
    pub fn duration_ms(&self) -> i64 {
        match (self.epochs.first(), self.epochs.last()) {
            (Some(a), Some(b)) => b.utc_ms - a.utc_ms,
            _ => 0,
        }
    }

    /// GNSS time of the first epoch, ms.
    pub fn start_ms(&self) -> i64 {
        self.epochs.first().map_or(0, |e| e.utc_ms)
    }

    /// Every span of at least `min_s` seconds in which RMC's speed stayed below
    /// [`STANDING_KNOTS`], in order.
    pub fn stops(&self, min_s: f64) -> Vec<Standstill> {
        let mut stops = Vec::new();
        let mut run: Vec<(i64, f64, f64)> = Vec::new();
        let mut close = |run: &mut Vec<(i64, f64, f64)>| {
            if let (Some(first), Some(last)) = (run.first(), run.last()) {
                #[allow(clippy::cast_precision_loss)] // a handful of epochs
                let n = run.len() as f64;
                let stop = Standstill {
                    from_ms: first.0,
                    to_ms: last.0,
                    lat: run.iter().map(|r| r.1).sum::<f64>() / n,
                    lon: run.iter().map(|r| r.2).sum::<f64>() / n,
                };
                if stop.seconds() >= min_s {
                    stops.push(stop);
                }
            }
            run.clear();
        };
        for epoch in &self.epochs {
            match (epoch.position, epoch.speed_knots) {
                (Some((lat, lon)), Some(knots)) if knots < STANDING_KNOTS => {
                    run.push((epoch.utc_ms, lat, lon))
                }
                // An epoch without a valid RMC says nothing about motion; keep the run.
                (None, _) | (_, None) => {}
                _ => close(&mut run),
            }
        }
        close(&mut run);
        stops
    }
}

/// `line` with its RMC date (if it is an RMC with a date) moved by `days`, and its
/// checksum redone; any other line unchanged.
fn shift_rmc_date(line: &str, days: i64) -> String {
    let body = line.strip_prefix('$').and_then(|l| l.split('*').next()).unwrap_or("");
    let mut fields: Vec<String> = body.split(',').map(str::to_owned).collect();
    let Some(day_ms) = fields.get(9).filter(|_| fields[0].ends_with("RMC")).and_then(|d| date_ms(d)) else {
        return line.to_owned();
    };
    let (y, m, d) = civil_from_days(day_ms.div_euclid(86_400_000) + days);
    fields[9] = format!("{d:02}{m:02}{:02}", y.rem_euclid(100));
    let body = fields.join(",");
    let checksum = body.bytes().fold(0u8, |acc, b| acc ^ b);
    format!("${body}*{checksum:02X}")
}

/// The proleptic Gregorian date of a day since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `hhmmss[.ss]` as ms after midnight.
fn time_of_day_ms(text: &str) -> Option<i64> {
    if text.len() < 6 || !text.is_char_boundary(6) {
        return None;
    }
    let (hms, fraction) = text.split_at(6);
    let n: i64 = hms.parse().ok()?;
    let (h, m, s) = (n / 10_000, n / 100 % 100, n % 100);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let ms = match fraction.strip_prefix('.') {
        Some(f) if !f.is_empty() => {
            let f: f64 = format!("0.{f}").parse().ok()?;
            #[allow(clippy::cast_possible_truncation)] // below 1000
            let ms = (f * 1000.0).round() as i64;
            ms
        }
        _ => 0,
    };
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// RMC's `ddmmyy` as ms since the Unix epoch at midnight UTC (years 80-99 are 19xx).
fn date_ms(text: &str) -> Option<i64> {
    if text.len() != 6 {
        return None;
    }
    let n: i64 = text.parse().ok()?;
    let (d, m, y) = (n / 10_000, n / 100 % 100, n % 100);
    let year = if y >= 80 { 1900 + y } else { 2000 + y };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(year, m, d) * 86_400_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RMC's position, degrees.
fn rmc_position(fields: &[&str]) -> Option<(f64, f64)> {
    let angle = |value: &str, hemisphere: &str, degree_digits: usize| -> Option<f64> {
        if value.len() <= degree_digits || !value.is_char_boundary(degree_digits) {
            return None;
        }
        let (d, m) = value.split_at(degree_digits);
        let v = d.parse::<f64>().ok()? + m.parse::<f64>().ok()? / 60.0;
        match hemisphere {
            "N" | "E" => Some(v),
            "S" | "W" => Some(-v),
            _ => None,
        }
    };
    Some((angle(fields.get(3)?, fields.get(4)?, 2)?, angle(fields.get(5)?, fields.get(6)?, 3)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "# a comment\n\
        $GPGSA,A,3,23,13,,20,25,,,,,,,,2.0,1.0,1.5*00\n\
        $GPRMC,235958,A,4901.5940,N,01203.9163,E,0.2,131.9,311299,1.6,E,A*00\n\
        $GPGGA,235958,4901.5940,N,01203.9163,E,1,07,1.0,336.7,M,46.6,M,,*00\n\
        $GPRMC,235959.50,A,4901.5940,N,01203.9163,E,0.0,131.9,311299,1.6,E,A*00\n\
        $GPRMC,000001,A,4901.6000,N,01203.9200,E,12.0,131.9,010100,1.6,E,A*00\n";

    #[test]
    fn epochs_follow_the_time_of_day_and_carry_their_untimed_sentences() {
        let drive = Drive::parse("log", LOG).expect("parse");
        assert_eq!(drive.epochs.len(), 3);
        assert!(drive.epochs[0].sentences.starts_with("$GPGSA"), "{}", drive.epochs[0].sentences);
        assert_eq!(drive.epochs[0].sentences.lines().count(), 3);
        // 1999-12-31T23:59:58Z
        assert_eq!(drive.epochs[0].utc_ms, 946_684_798_000);
        assert_eq!(drive.epochs[1].utc_ms, 946_684_799_500);
        assert_eq!(drive.epochs[2].utc_ms, 946_684_801_000, "midnight is crossed once");
        assert_eq!(drive.duration_ms(), 3_000);
        let (lat, lon) = drive.epochs[0].position.expect("position");
        assert!((lat - 49.026_566_7).abs() < 1e-6 && (lon - 12.065_271_7).abs() < 1e-6, "{lat} {lon}");
    }

    #[test]
    fn a_drive_moved_to_another_day_keeps_its_times_of_day_and_valid_checksums() {
        let drive = Drive::parse("log", LOG).expect("parse");
        // 2026-12-02 is day 20_789.
        let moved = drive.moved_to_day(20_789);
        assert_eq!(moved.start_ms(), 20_789 * 86_400_000 + 86_398_000);
        assert_eq!(moved.duration_ms(), drive.duration_ms());
        let rmc: Vec<&str> =
            moved.epochs.iter().flat_map(|e| e.sentences.lines()).filter(|l| l.contains("RMC")).collect();
        assert!(rmc[0].contains(",021226,"), "{}", rmc[0]);
        assert!(rmc[2].contains(",031226,"), "the next day stays the next day: {}", rmc[2]);
        for line in rmc {
            let (body, checksum) = line[1..].split_once('*').expect("checksum");
            assert_eq!(format!("{:02X}", body.bytes().fold(0u8, |a, b| a ^ b)), checksum);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn a_standstill_is_a_run_of_slow_epochs_at_least_as_long_as_asked() {
        let drive = Drive::parse("log", LOG).expect("parse");
        let stops = drive.stops(1.0);
        assert_eq!(stops.len(), 1);
        assert_eq!(stops[0].seconds(), 1.5);
        assert!(drive.stops(2.0).is_empty());
    }
}
