//! A tiny deterministic PRNG (xorshift64*): the same drives, jitter and degradations on
//! every run, with no rand dependency. The geofence unit tests, the drive tests and the
//! geofence bench include this file.

/// xorshift64* from a nonzero seed.
pub(crate) struct Prng(pub(crate) u64);

impl Prng {
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-a, a).
    pub(crate) fn within(&mut self, a: f64) -> f64 {
        (self.unit() * 2.0 - 1.0) * a
    }
}
