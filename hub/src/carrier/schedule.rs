//! When a carrier job runs next: the pure half of [`super::jobs`]. No clock, no I/O; every
//! function takes the time and the job's counters and says what to write back.
//!
//! - A poll runs [`Schedule::first`] after its shipment was created, then every
//!   [`Schedule::interval`] while the carrier's status moves, doubling for each answer that
//!   tells nothing new, up to [`Schedule::max_interval`]. A parcel out for delivery is
//!   polled at the base interval: its delivery is hours away, not days.
//! - A final status (delivered, cancelled or expired, on its way back to the sender) ends
//!   the job; so does the shipment growing older than [`Schedule::max_age`].
//! - A failed attempt (5xx, network, an unreadable answer) is retried after
//!   [`Schedule::retry`], doubling per failure in a row, up to the maximum interval.
//! - Every due time is spread by up to ±[`JITTER_PERCENT`]% so parcels created together
//!   (an order system's batch) do not come due together for ever after.

use std::time::Duration;

use crate::model::CanonicalStatus;

/// How far a due time is spread, in percent of the wait either way.
pub const JITTER_PERCENT: i64 = 10;

/// A job kind's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// From the shipment's creation to the first attempt.
    pub first: Duration,
    /// Between polls while the status moves.
    pub interval: Duration,
    /// The longest wait between attempts.
    pub max_interval: Duration,
    /// The first wait after a failed attempt.
    pub retry: Duration,
    /// Shipments older than this are left alone (their job ends).
    pub max_age: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `base` doubled `n` times, at most `cap`.
fn doubled(base: Duration, n: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

impl Schedule {
    /// The wait after an answer, given how many answers in a row (this one included)
    /// told nothing new and the parcel's status now.
    pub fn poll_wait(&self, unchanged: u32, status: CanonicalStatus) -> Duration {
        if status == CanonicalStatus::OutForDelivery {
            return self.interval.min(self.max_interval);
        }
        doubled(self.interval, unchanged, self.max_interval)
    }

    /// The wait after a failed attempt, the `errors`-th in a row (1 for the first).
    pub fn retry_wait(&self, errors: u32) -> Duration {
        doubled(self.retry, errors.saturating_sub(1), self.max_interval.max(self.retry))
    }

    /// Whether a shipment created at `created_ms` is too old to work on at `now_ms`.
    pub fn too_old(&self, created_ms: i64, now_ms: i64) -> bool {
        now_ms.saturating_sub(created_ms) > ms(self.max_age)
    }
}

/// Whether the carrier has nothing more to say that a customer waits for: the job ends.
pub fn is_final(status: CanonicalStatus) -> bool {
    matches!(
        status,
        CanonicalStatus::Delivered | CanonicalStatus::CancelledOrExpired | CanonicalStatus::Returning
    )
}

/// `now_ms + wait`, spread by up to ±[`JITTER_PERCENT`]% of the wait. `seed` picks where
/// in the spread (the shipment id and attempt number): the same seed gives the same time,
/// so tests know it and two hubs agree.
pub fn due_after(now_ms: i64, wait: Duration, seed: u64) -> i64 {
    let wait = ms(wait);
    let spread = wait / 100 * JITTER_PERCENT;
    let offset = if spread > 0 {
        let span = u64::try_from(spread.saturating_mul(2).saturating_add(1)).unwrap_or(u64::MAX);
        i64::try_from(splitmix64(seed) % span).unwrap_or(0) - spread
    } else {
        0
    };
    now_ms.saturating_add(wait).saturating_add(offset)
}

/// A seed for [`due_after`] from a shipment and its attempt count.
pub fn seed(shipment_id: i64, attempts: u32) -> u64 {
    u64::from_ne_bytes(shipment_id.to_ne_bytes()) ^ (u64::from(attempts) << 48)
}

/// SplitMix64's finalizer: a well-spread 64-bit hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The wait a rate-limited vendor asked for: `Retry-After` (seconds or an HTTP date),
/// else AfterShip's `X-RateLimit-Reset` (the Unix second the window resets), else
/// `fallback`; never less than one second nor more than `cap`.
pub fn rate_limit_wait(
    retry_after: Option<&str>,
    reset_unix_s: Option<&str>,
    now_ms: i64,
    fallback: Duration,
    cap: Duration,
) -> Duration {
    let asked = retry_after.and_then(|v| crate::notify::retry_after(v, now_ms)).or_else(|| {
        let reset_ms = reset_unix_s?.trim().parse::<i64>().ok()?.checked_mul(1000)?;
        Some(Duration::from_millis(u64::try_from(reset_ms.saturating_sub(now_ms)).unwrap_or(0)))
    });
    asked.unwrap_or(fallback).clamp(Duration::from_secs(1), cap.max(Duration::from_secs(1)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// The schedule the carrier job tests share.
    pub(crate) fn schedule() -> Schedule {
        Schedule {
            first: MIN,
            interval: 30 * MIN,
            max_interval: 6 * 60 * MIN,
            retry: MIN,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }

    #[test]
    fn the_poll_interval_doubles_while_nothing_changes_and_stops_at_the_cap() {
        let s = schedule();
        let waits: Vec<u64> =
            (0..7).map(|n| s.poll_wait(n, CanonicalStatus::InTransit).as_secs() / 60).collect();
        assert_eq!(waits, [30, 60, 120, 240, 360, 360, 360]);
        assert_eq!(s.poll_wait(u32::MAX, CanonicalStatus::InTransit), s.max_interval);
    }

    #[test]
    fn a_parcel_out_for_delivery_is_polled_at_the_base_interval() {
        assert_eq!(schedule().poll_wait(5, CanonicalStatus::OutForDelivery), 30 * MIN);
    }

    #[test]
    fn retries_double_from_the_first_wait_up_to_the_longest_interval() {
        let s = schedule();
        let waits: Vec<u64> = (1..=11).map(|n| s.retry_wait(n).as_secs() / 60).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360]);
        assert_eq!(s.retry_wait(0), MIN);
    }

    #[test]
    fn delivered_cancelled_and_returning_end_the_job_and_nothing_else_does() {
        let finals: Vec<CanonicalStatus> = [
            CanonicalStatus::LabelCreated,
            CanonicalStatus::Accepted,
            CanonicalStatus::InTransit,
            CanonicalStatus::OutForDelivery,
            CanonicalStatus::AttemptFailed,
            CanonicalStatus::AvailableForPickup,
            CanonicalStatus::Delivered,
            CanonicalStatus::Exception,
            CanonicalStatus::Returning,
            CanonicalStatus::CancelledOrExpired,
            CanonicalStatus::Unknown,
        ]
        .into_iter()
        .filter(|s| is_final(*s))
        .collect();
        assert_eq!(
            finals,
            [CanonicalStatus::Delivered, CanonicalStatus::Returning, CanonicalStatus::CancelledOrExpired]
        );
    }

    #[test]
    fn due_times_spread_within_ten_percent_and_the_same_seed_gives_the_same_time() {
        let wait = 30 * MIN;
        let mut seen = std::collections::BTreeSet::new();
        for id in 0..1000 {
            let due = due_after(1_000, wait, seed(id, 1));
            let offset = due - 1_000 - 1_800_000;
            assert!(offset.abs() <= 180_000, "{offset}");
            seen.insert(offset / 18_000);
            assert_eq!(due, due_after(1_000, wait, seed(id, 1)));
        }
        // Spread over the whole window, not bunched.
        assert!(seen.len() > 15, "{seen:?}");
        assert_eq!(due_after(5, Duration::ZERO, 7), 5);
    }

    #[test]
    fn shipments_past_the_maximum_age_are_too_old() {
        let s = schedule();
        let age = i64::try_from(s.max_age.as_millis()).expect("ms");
        assert!(!s.too_old(0, age));
        assert!(s.too_old(0, age + 1));
    }

    #[test]
    fn a_rate_limit_waits_for_retry_after_then_the_reset_second_then_the_fallback() {
        let now = 1_700_000_000_000;
        let cap = Duration::from_secs(3600);
        let fallback = Duration::from_secs(60);
        assert_eq!(
            rate_limit_wait(Some("7"), Some("1700000100"), now, fallback, cap),
            Duration::from_secs(7)
        );
        assert_eq!(rate_limit_wait(None, Some("1700000003"), now, fallback, cap), Duration::from_secs(3));
        // A reset already past, or garbage: at least a second; nothing usable: the fallback.
        assert_eq!(rate_limit_wait(None, Some("1699999990"), now, fallback, cap), Duration::from_secs(1));
        assert_eq!(rate_limit_wait(Some("soon"), Some("x"), now, fallback, cap), fallback);
        assert_eq!(rate_limit_wait(Some("86400"), None, now, fallback, cap), cap);
    }
}
