//! Quiet hours in the recipient's own time zone.
//!
//! During quiet hours a "nearby" message is dropped (by morning it is false: the van has
//! been and gone) and every other message waits until the quiet period ends, in the
//! recipient's IANA time zone (jiff with its bundled tz database, so a server without
//! tzdata still knows daylight saving time). An unknown zone name falls back to UTC and
//! is logged, rather than sending at 3 a.m. or never.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::store::ContactChannel;

/// Why a quiet-hours setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notify.quiet_hours.{field} = {value:?} is not a time of day like \"21:00\"")]
pub struct QuietHoursError {
    /// `start` or `end`.
    pub field: &'static str,
    /// What was given.
    pub value: String,
}

/// A daily quiet period, local to each recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietHours {
    start: Time,
    end: Time,
    channels: Vec<ContactChannel>,
}

fn parse_time(field: &'static str, value: &str) -> Result<Time, QuietHoursError> {
    let err = || QuietHoursError { field, value: value.to_owned() };
    let (h, m) = value.trim().split_once(':').ok_or_else(err)?;
    let h: i8 = h.parse().map_err(|_| err())?;
    let m: i8 = m.parse().map_err(|_| err())?;
    Time::new(h, m, 0, 0).map_err(|_| err())
}

/// The time zone named `name`, or UTC when it is unknown.
pub fn zone(name: &str) -> TimeZone {
    match TimeZone::get(name) {
        Ok(tz) => tz,
        Err(error) => {
            tracing::warn!(time_zone = name, %error, "unknown time zone; using UTC");
            TimeZone::UTC
        }
    }
}

/// `ms` since the Unix epoch as a zoned time (clamped into jiff's range).
pub fn zoned(ms: i64, tz: &TimeZone) -> Zoned {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned(tz.clone())
}

impl QuietHours {
    /// Quiet from `start` to `end` ("HH:MM", local; `end` before `start` wraps past
    /// midnight) on `channels`.
    pub fn new(start: &str, end: &str, channels: Vec<ContactChannel>) -> Result<Self, QuietHoursError> {
        Ok(Self { start: parse_time("start", start)?, end: parse_time("end", end)?, channels })
    }

    /// Whether quiet hours apply to a channel at all.
    pub fn covers(&self, channel: ContactChannel) -> bool {
        self.channels.contains(&channel)
    }

    /// When `now_ms` falls in quiet hours in `tz`, the end of that quiet period (ms).
    pub fn quiet_until(&self, now_ms: i64, tz: &TimeZone) -> Option<i64> {
        if self.start == self.end {
            return None;
        }
        let now = zoned(now_ms, tz);
        let t = now.time();
        let today = now.date();
        let end_day = if self.start < self.end {
            if t >= self.start && t < self.end { today } else { return None }
        } else if t >= self.start {
            today.tomorrow().ok()?
        } else if t < self.end {
            today
        } else {
            return None;
        };
        // `to_zoned` resolves a wall time that DST skips or repeats the usual way
        // (later for a gap, earlier for a fold).
        let end = end_day.to_datetime(self.end).to_zoned(tz.clone()).ok()?;
        Some(end.timestamp().as_millisecond())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_millisecond()
    }

    #[test]
    fn a_wrapping_quiet_period_ends_the_next_local_morning() {
        let q = QuietHours::new("21:00", "08:00", vec![ContactChannel::Sms]).expect("valid");
        let berlin = zone("Europe/Berlin");
        // 22:30 in Berlin (CEST, UTC+2) on 1 July → 08:00 on 2 July local = 06:00Z.
        assert_eq!(q.quiet_until(ms("2025-07-01T20:30:00Z"), &berlin), Some(ms("2025-07-02T06:00:00Z")));
        // 05:00 local → 08:00 the same day.
        assert_eq!(q.quiet_until(ms("2025-07-02T03:00:00Z"), &berlin), Some(ms("2025-07-02T06:00:00Z")));
        // 12:00 local: not quiet.
        assert_eq!(q.quiet_until(ms("2025-07-02T10:00:00Z"), &berlin), None);
        // The same instant is daytime in New York (16:30 EDT).
        assert_eq!(q.quiet_until(ms("2025-07-01T20:30:00Z"), &zone("America/New_York")), None);
    }

    #[test]
    fn a_daytime_quiet_period_and_unknown_zones() {
        let q = QuietHours::new("12:00", "13:30", vec![ContactChannel::Sms]).expect("valid");
        assert_eq!(
            q.quiet_until(ms("2025-01-05T12:10:00Z"), &zone("Mars/Olympus")),
            Some(ms("2025-01-05T13:30:00Z"))
        );
        assert_eq!(q.quiet_until(ms("2025-01-05T13:30:00Z"), &zone("UTC")), None);
        assert!(QuietHours::new("25:00", "08:00", vec![]).is_err());
        assert!(QuietHours::new("nine", "08:00", vec![]).is_err());
    }
}
