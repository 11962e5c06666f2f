//! Reconnect delays: doubling from a first delay up to a ceiling, with "equal jitter"
//! (half the delay fixed, half random) so that a fleet that lost the same broker, or a
//! hub that lost its serial port, does not retry in lockstep.

use std::time::Duration;

use ring::rand::SecureRandom;

/// Delays doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The delay after `current`.
    pub fn next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.max)
    }
}

/// `delay` with equal jitter: between half of it and all of it.
pub fn jitter(rng: &dyn SecureRandom, delay: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let r = if rng.fill(&mut bytes).is_ok() { u64::from_le_bytes(bytes) } else { 0 };
    let half = u64::try_from(delay.as_millis() / 2).unwrap_or(u64::MAX / 4).max(1);
    Duration::from_millis(half + r % half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling() {
        let b = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(5) };
        assert_eq!(b.next(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(b.next(Duration::from_secs(4)), Duration::from_secs(5));
        assert_eq!(b.next(Duration::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jittered_delays_stay_between_half_and_the_full_delay() {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..1000 {
            let d = jitter(&rng, Duration::from_secs(10));
            assert!(d >= Duration::from_secs(5) && d < Duration::from_secs(10), "{d:?}");
        }
        assert_eq!(jitter(&rng, Duration::ZERO), Duration::from_millis(1));
    }
}
