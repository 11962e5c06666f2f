//! Per-provider token buckets: each provider gets `rate_per_s` requests per second on
//! average, with bursts up to `burst`. The bucket is a pure state machine over an
//! `Instant` (tested without a clock); [`Bucket::acquire`] is the thin async shell.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A rate limit from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Average requests per second (> 0).
    pub per_s: f64,
    /// Most requests at once after a quiet spell (≥ 1).
    pub burst: u32,
}

/// The pure token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self { limit, tokens: f64::from(limit.burst), last: now }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.limit.per_s).min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.limit.per_s))
        }
    }
}

/// A shared bucket for one provider.
#[derive(Debug)]
pub struct Bucket {
    inner: Mutex<TokenBucket>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Self { inner: Mutex::new(TokenBucket::new(limit, Instant::now())) }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut bucket = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                match bucket.try_take(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(RateLimit { per_s: 2.0, burst: 3 }, t0);
        for _ in 0..3 {
            assert_eq!(b.try_take(t0), Ok(()));
        }
        let wait = b.try_take(t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.try_take(t0 + Duration::from_millis(500)), Ok(()));
        assert!(b.try_take(t0 + Duration::from_millis(600)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.try_take(later), Ok(()));
        }
        assert!(b.try_take(later).is_err());
    }
}
