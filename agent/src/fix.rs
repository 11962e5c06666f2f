//! Position fixes: what the NMEA assembler produces, and what the quality gate lets through.
//!
//! [`Fix`] is the decoder's view of one epoch, before any judgement: fields are optional
//! because receivers omit them freely. [`GoodFix`] is a fix that passed the quality gate
//! and carries a full GNSS UTC date and time; only `GoodFix` reaches the geofence tracker
//! and the signer, so the type system enforces "sign nothing before a valid GNSS time".

/// Dimension of a fix, as NMEA and gpsd report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FixMode {
    /// No position.
    NoFix,
    /// Latitude and longitude only.
    TwoD,
    /// Latitude, longitude and altitude.
    ThreeD,
}

impl FixMode {
    /// gpsd's numeric mode (1, 2, 3).
    pub fn as_gpsd(self) -> u8 {
        match self {
            FixMode::NoFix => 1,
            FixMode::TwoD => 2,
            FixMode::ThreeD => 3,
        }
    }
}

/// One epoch as the receiver reported it, assembled from all sentences sharing its time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fix {
    /// Time of day of the epoch in milliseconds since UTC midnight.
    pub tod_ms: u32,
    /// Full GNSS UTC time in milliseconds since the Unix epoch, once a date is known
    /// (from RMC or ZDA). `None` until the receiver has told us the date.
    pub utc_ms: Option<i64>,
    /// Fix dimension; `None` when no sentence said.
    pub mode: Option<FixMode>,
    /// Latitude in degrees, north positive.
    pub lat: Option<f64>,
    /// Longitude in degrees, east positive.
    pub lon: Option<f64>,
    /// Altitude above mean sea level in metres.
    pub alt_m: Option<f64>,
    /// Speed over ground in metres per second.
    pub speed_mps: Option<f64>,
    /// Course over ground in degrees true.
    pub course_deg: Option<f64>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Satellites used in the fix.
    pub sats: Option<u8>,
    /// Horizontal error estimate in metres when the receiver reports one (GST, GBS).
    pub eph_m: Option<f64>,
    /// RMC status: `Some(true)` for A (valid), `Some(false)` for V (void).
    pub rmc_valid: Option<bool>,
    /// GGA fix quality (0 = invalid, 1 = GPS, 2 = DGPS, ...).
    pub gga_quality: Option<u8>,
    /// FAA mode indicator from RMC/GLL/VTG/GNS ('A', 'D', 'E', 'N', ...).
    pub faa_mode: Option<char>,
    /// GLL status: `Some(true)` for A (valid), `Some(false)` for V (void).
    pub gll_valid: Option<bool>,
    /// True when the receiver's date was before the build-time floor and `utc_ms` was
    /// moved forward by whole 1024-week GPS rollover periods (receivers with the week
    /// rollover bug report dates about 19.6 years in the past).
    pub week_rollover: bool,
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

impl Fix {
    /// Latitude and longitude, when the epoch has both.
    pub fn position(&self) -> Option<(f64, f64)> {
        self.lat.zip(self.lon)
    }

    /// The epoch's time in RFC 3339: `2019-03-28T16:45:17Z` once the date is known,
    /// otherwise the time of day alone (`16:45:17Z`, RFC 3339's `full-time`). Fractional
    /// seconds appear only when non-zero.
    pub fn time_rfc3339(&self) -> String {
        match self.utc_ms {
            Some(ms) => format_utc_ms(ms),
            None => format_tod(i64::from(self.tod_ms)),
        }
    }
}

/// Noon UTC on 2024-06-01, when the tests' receivers report.
#[cfg(test)]
pub(crate) const TEST_NOON_MS: i64 = 1_717_243_200_000;

/// A valid 3D fix `seconds` after [`TEST_NOON_MS`] at `lat`, `lon`: what a receiver under
/// a clear sky reports (GPS quality 1, HDOP 1, nine satellites), for tests.
#[cfg(test)]
pub(crate) fn clear_sky_fix(seconds: i64, lat: f64, lon: f64) -> Fix {
    Fix {
        tod_ms: 43_200_000,
        utc_ms: Some(TEST_NOON_MS + seconds * 1000),
        mode: Some(FixMode::ThreeD),
        lat: Some(lat),
        lon: Some(lon),
        hdop: Some(1.0),
        sats: Some(9),
        rmc_valid: Some(true),
        gga_quality: Some(1),
        faa_mode: Some('A'),
        ..Fix::default()
    }
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC, with fractional seconds
/// only when non-zero (`2019-03-28T16:45:17Z`, `2019-03-28T16:45:17.5Z`).
pub fn format_utc_ms(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{}", format_tod(ms.rem_euclid(DAY_MS)))
}

fn format_tod(tod_ms: i64) -> String {
    let (h, rest) = (tod_ms / 3_600_000, tod_ms % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    if frac == 0 {
        format!("{h:02}:{min:02}:{s:02}Z")
    } else {
        let digits = format!("{frac:03}");
        format!("{h:02}:{min:02}:{s:02}.{}Z", digits.trim_end_matches('0'))
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A proleptic Gregorian (year, month, day) to days since 1970-01-01, or `None` when
/// the month or day is out of range for that month.
pub fn days_from_civil(year: i64, month: u8, day: u8) -> Option<i64> {
    let (m, d) = (i64::from(month), i64::from(day));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_len = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=month_len).contains(&d) {
        return None;
    }
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_prints_fraction_only_when_non_zero() {
        let day = days_from_civil(2019, 3, 28).map(|d| d * DAY_MS);
        let t = day.map(|d| d + ((16 * 60 + 45) * 60 + 17) * 1000);
        assert_eq!(t.map(format_utc_ms).as_deref(), Some("2019-03-28T16:45:17Z"));
        assert_eq!(t.map(|t| format_utc_ms(t + 500)).as_deref(), Some("2019-03-28T16:45:17.5Z"));
        assert_eq!(t.map(|t| format_utc_ms(t + 25)).as_deref(), Some("2019-03-28T16:45:17.025Z"));
    }

    #[test]
    fn undated_fix_prints_time_of_day_only() {
        let fix = Fix { tod_ms: 1000, ..Fix::default() };
        assert_eq!(fix.time_rfc3339(), "00:00:01Z");
    }

    #[test]
    fn civil_dates_round_trip_and_reject_impossible_days() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (1999, 8, 22)] {
            let days = days_from_civil(y, m, d);
            assert_eq!(days.map(civil_from_days), Some((y, i64::from(m), i64::from(d))));
        }
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2023, 2, 29), None);
        assert_eq!(days_from_civil(2023, 13, 1), None);
    }
}

/// A fix that passed the quality gate: valid, accurate enough, plausible, and dated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoodFix {
    /// GNSS UTC time in milliseconds since the Unix epoch.
    pub utc_ms: i64,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Estimated horizontal uncertainty (one sigma, metres): the receiver's own estimate
    /// when it gives one, otherwise HDOP times a typical user range error.
    pub accuracy_m: f64,
    /// Speed over ground in metres per second, if reported.
    pub speed_mps: Option<f64>,
    /// Horizontal dilution of precision, if reported.
    pub hdop: Option<f64>,
    /// Satellites used, if reported.
    pub sats: Option<u8>,
}
