//! The quality gate: which fixes may reach the geofence tracker and the signer.
//!
//! A [`Fix`] is what the receiver said; a [`GoodFix`] is what we are prepared to sign
//! on. The gate refuses fixes the receiver itself marks invalid (RMC status V, GGA
//! quality 0, FAA mode N, GLL status V), fixes without a position or without a full GNSS
//! date, fixes too inaccurate to place a van at an address (HDOP or the receiver's own
//! error estimate over a bound), and fixes that imply a speed no van can reach. Every
//! refusal has a [`Reason`] and is counted.
//!
//! The jump check compares each fix with the last accepted one, so one wild fix is
//! refused and the next good fix passes. If the last accepted fix was itself the outlier
//! (the very first fix after a cold start, typically), every later fix would look like a
//! jump; so when [`GateConfig::reanchor_after`] consecutive refused fixes agree with
//! each other, the gate believes them and starts over from there.
//!
//! Pure: no clock (time comes from the fixes' GNSS UTC), no I/O.

use std::fmt;

use crate::fix::{Fix, GoodFix};

/// Thresholds of the [`Gate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// Largest acceptable horizontal dilution of precision. Above about 5 the geometry
    /// is poor enough that errors of tens of metres are common.
    pub max_hdop: f64,
    /// Largest acceptable receiver error estimate (GST/GBS), metres.
    pub max_eph_m: f64,
    /// Fastest believable speed between two fixes, metres per second. A delivery van
    /// does not exceed about 45 m/s (160 km/h); the margin absorbs timing jitter.
    pub max_speed_mps: f64,
    /// User-equivalent range error (one sigma, metres) used to turn HDOP into an
    /// accuracy estimate when the receiver gives no error estimate of its own.
    pub uere_m: f64,
    /// Accuracy assumed when a fix has neither an error estimate nor an HDOP, metres.
    pub default_accuracy_m: f64,
    /// Consecutive mutually consistent fixes, each refused as a jump, after which the
    /// gate accepts the latest and re-anchors on it.
    pub reanchor_after: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            max_hdop: 5.0,
            max_eph_m: 50.0,
            max_speed_mps: 60.0,
            uere_m: 5.0,
            default_accuracy_m: 25.0,
            reanchor_after: 3,
        }
    }
}

/// Why the gate refused a fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// RMC status V: the receiver says the fix is void.
    RmcVoid,
    /// GGA fix quality 0: no fix.
    GgaQuality0,
    /// FAA mode indicator N: data not valid.
    FaaModeN,
    /// GLL status V: the receiver says the position is void.
    GllVoid,
    /// The epoch carried no valid latitude and longitude.
    NoPosition,
    /// No GNSS date known yet: the fix cannot be placed in time, so it is not signed.
    NoDate,
    /// HDOP above [`GateConfig::max_hdop`].
    HdopTooHigh,
    /// Error estimate above [`GateConfig::max_eph_m`].
    EphTooHigh,
    /// Not later than the last accepted fix (receiver resent or stepped back in time).
    TimeNotIncreasing,
    /// Implies a speed above [`GateConfig::max_speed_mps`] from the last accepted fix.
    ImpossibleJump,
}

impl Reason {
    /// Every reason, in the order counters list them.
    pub const ALL: [Reason; 10] = [
        Reason::RmcVoid,
        Reason::GgaQuality0,
        Reason::FaaModeN,
        Reason::GllVoid,
        Reason::NoPosition,
        Reason::NoDate,
        Reason::HdopTooHigh,
        Reason::EphTooHigh,
        Reason::TimeNotIncreasing,
        Reason::ImpossibleJump,
    ];

    /// The short snake_case name used in counters, logs and CLI output.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RmcVoid => "rmc_void",
            Reason::GgaQuality0 => "gga_quality_0",
            Reason::FaaModeN => "faa_mode_n",
            Reason::GllVoid => "gll_void",
            Reason::NoPosition => "no_position",
            Reason::NoDate => "no_date",
            Reason::HdopTooHigh => "hdop_too_high",
            Reason::EphTooHigh => "eph_too_high",
            Reason::TimeNotIncreasing => "time_not_increasing",
            Reason::ImpossibleJump => "impossible_jump",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gate's answer for one fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The fix passed.
    Accept(GoodFix),
    /// The fix was refused.
    Reject(Reason),
}

impl Verdict {
    /// `"ok"` or the refusal reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Accept(_) => "ok",
            Verdict::Reject(reason) => reason.as_str(),
        }
    }

    /// The good fix, if accepted.
    pub fn good(&self) -> Option<&GoodFix> {
        match self {
            Verdict::Accept(good) => Some(good),
            Verdict::Reject(_) => None,
        }
    }
}

/// Counters of the gate's verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Fixes accepted.
    pub accepted: u64,
    /// Accepted fixes that re-anchored the jump check after a run of agreeing refusals.
    pub reanchored: u64,
    rejected: [u64; Reason::ALL.len()],
}

impl GateStats {
    /// How many fixes were refused for `reason`.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected.get(reason as usize).copied().unwrap_or(0)
    }

    /// Every reason with a non-zero count, in [`Reason::ALL`] order.
    pub fn rejections(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.into_iter().map(|r| (r, self.rejected(r))).filter(|&(_, n)| n > 0)
    }

    fn reject(&mut self, reason: Reason) {
        if let Some(n) = self.rejected.get_mut(reason as usize) {
            *n += 1;
        }
    }
}

/// The quality gate's state: the last accepted fix and a run of agreeing suspects.
#[derive(Debug, Clone)]
pub struct Gate {
    config: GateConfig,
    anchor: Option<GoodFix>,
    suspect: Option<(GoodFix, u32)>,
    stats: GateStats,
}

impl Gate {
    /// A gate that has accepted nothing yet.
    pub fn new(config: GateConfig) -> Self {
        Self { config, anchor: None, suspect: None, stats: GateStats::default() }
    }

    /// Counters so far.
    pub fn stats(&self) -> &GateStats {
        &self.stats
    }

    /// The last accepted fix.
    pub fn last_accepted(&self) -> Option<&GoodFix> {
        self.anchor.as_ref()
    }

    /// Judges one fix, updating the counters and, if it passes, the anchor.
    pub fn check(&mut self, fix: &Fix) -> Verdict {
        let verdict = self.judge(fix);
        match &verdict {
            Verdict::Accept(_) => self.stats.accepted += 1,
            Verdict::Reject(reason) => self.stats.reject(*reason),
        }
        verdict
    }

    fn judge(&mut self, fix: &Fix) -> Verdict {
        let candidate = match self.standalone(fix) {
            Ok(candidate) => candidate,
            Err(reason) => return Verdict::Reject(reason),
        };
        let Some(anchor) = self.anchor else {
            return self.accept(candidate);
        };
        let Err(reason) = self.consistent(&anchor, &candidate) else {
            return self.accept(candidate);
        };
        let run = match self.suspect {
            Some((previous, n)) if self.consistent(&previous, &candidate).is_ok() => n + 1,
            _ => 1,
        };
        if run >= self.config.reanchor_after {
            self.stats.reanchored += 1;
            return self.accept(candidate);
        }
        self.suspect = Some((candidate, run));
        Verdict::Reject(reason)
    }

    fn accept(&mut self, good: GoodFix) -> Verdict {
        self.anchor = Some(good);
        self.suspect = None;
        Verdict::Accept(good)
    }

    /// The checks that need only the fix itself.
    fn standalone(&self, fix: &Fix) -> Result<GoodFix, Reason> {
        let c = &self.config;
        if fix.rmc_valid == Some(false) {
            return Err(Reason::RmcVoid);
        }
        if fix.gga_quality == Some(0) {
            return Err(Reason::GgaQuality0);
        }
        if fix.faa_mode == Some('N') {
            return Err(Reason::FaaModeN);
        }
        if fix.gll_valid == Some(false) {
            return Err(Reason::GllVoid);
        }
        let (Some(lat), Some(lon)) = (fix.lat, fix.lon) else {
            return Err(Reason::NoPosition);
        };
        let Some(utc_ms) = fix.utc_ms else {
            return Err(Reason::NoDate);
        };
        if fix.hdop.is_some_and(|h| h > c.max_hdop) {
            return Err(Reason::HdopTooHigh);
        }
        if fix.eph_m.is_some_and(|e| e > c.max_eph_m) {
            return Err(Reason::EphTooHigh);
        }
        let accuracy_m = fix.eph_m.or(fix.hdop.map(|h| h * c.uere_m)).unwrap_or(c.default_accuracy_m);
        Ok(GoodFix { utc_ms, lat, lon, accuracy_m, speed_mps: fix.speed_mps, hdop: fix.hdop, sats: fix.sats })
    }

    /// Could a van have driven from `a` to `b`? Allows three combined sigmas of
    /// position error on top of the speed bound.
    fn consistent(&self, a: &GoodFix, b: &GoodFix) -> Result<(), Reason> {
        // The same instant again is the assembler's revision of an epoch it reported
        // before the receiver's speed came (see `gps::Assembler`): it replaces the anchor.
        let revision = b.utc_ms == a.utc_ms && a.speed_mps.is_none() && b.speed_mps.is_some();
        if b.utc_ms < a.utc_ms || (b.utc_ms == a.utc_ms && !revision) {
            return Err(Reason::TimeNotIncreasing);
        }
        // Millisecond differences between plausible dates fit f64 exactly.
        let dt_s = (b.utc_ms - a.utc_ms) as f64 / 1000.0;
        let slack_m = 3.0 * a.accuracy_m.hypot(b.accuracy_m);
        let reach_m = self.config.max_speed_mps * dt_s + slack_m;
        if distance_m(a.lat, a.lon, b.lat, b.lon) > reach_m {
            return Err(Reason::ImpossibleJump);
        }
        Ok(())
    }
}

/// Mean Earth radius, metres (IUGG).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::{TEST_NOON_MS as NOON_MS, clear_sky_fix as fix_at};

    /// About 11 m of latitude.
    const STEP_DEG: f64 = 0.0001;

    fn verdicts(gate: &mut Gate, fixes: &[Fix]) -> Vec<&'static str> {
        fixes.iter().map(|f| gate.check(f).as_str()).collect()
    }

    #[test]
    fn a_clean_fix_becomes_a_good_fix_with_hdop_based_accuracy() {
        let mut gate = Gate::new(GateConfig::default());
        let verdict = gate.check(&fix_at(0, 48.1, 11.5));
        let good = verdict.good().copied();
        assert_eq!(good.map(|g| g.utc_ms), Some(NOON_MS));
        assert_eq!(good.map(|g| g.accuracy_m), Some(5.0));
        assert_eq!(gate.stats().accepted, 1);
    }

    #[test]
    fn receiver_invalid_flags_are_refused_with_their_reason() {
        let mut gate = Gate::new(GateConfig::default());
        let cases = [
            (Fix { rmc_valid: Some(false), ..fix_at(0, 48.1, 11.5) }, "rmc_void"),
            (Fix { gga_quality: Some(0), ..fix_at(1, 48.1, 11.5) }, "gga_quality_0"),
            (Fix { faa_mode: Some('N'), ..fix_at(2, 48.1, 11.5) }, "faa_mode_n"),
            (Fix { lat: None, ..fix_at(3, 48.1, 11.5) }, "no_position"),
            (Fix { hdop: Some(9.9), ..fix_at(4, 48.1, 11.5) }, "hdop_too_high"),
            (Fix { eph_m: Some(80.0), ..fix_at(5, 48.1, 11.5) }, "eph_too_high"),
        ];
        for (fix, reason) in cases {
            assert_eq!(gate.check(&fix).as_str(), reason);
        }
        assert_eq!(gate.stats().rejected(Reason::HdopTooHigh), 1);
        assert_eq!(gate.stats().accepted, 0);
    }

    #[test]
    fn a_fix_without_a_date_is_never_good() {
        let mut gate = Gate::new(GateConfig::default());
        let undated = Fix { utc_ms: None, ..fix_at(0, 48.1, 11.5) };
        assert_eq!(gate.check(&undated), Verdict::Reject(Reason::NoDate));
    }

    #[test]
    fn each_fix_is_judged_by_its_time_and_distance_from_the_last_good_one() {
        /// (seconds, latitude) of each fix, and the verdicts.
        type Case = (&'static [(i64, f64)], &'static [&'static str]);
        let cases: [Case; 4] = [
            // One wild fix (11 km in one second) is refused and the next good fix passes.
            (&[(0, 48.1), (1, 48.2), (2, 48.1 + STEP_DEG)], &["ok", "impossible_jump", "ok"]),
            // Scattered outliers never reanchor.
            (
                &[(0, 48.1), (1, 40.0), (2, 30.0), (3, 20.0), (4, 48.1)],
                &["ok", "impossible_jump", "impossible_jump", "impossible_jump", "ok"],
            ),
            // A long gap allows a long drive: 30 km in ten minutes is 50 m/s, fast but under the bound.
            (&[(0, 48.1), (600, 48.1 + 0.27)], &["ok", "ok"]),
            // A repeated time is refused.
            (&[(5, 48.1), (5, 48.1)], &["ok", "time_not_increasing"]),
        ];
        for (fixes, expected) in cases {
            let mut gate = Gate::new(GateConfig::default());
            let fixes: Vec<Fix> = fixes.iter().map(|&(s, lat)| fix_at(s, lat, 11.5)).collect();
            assert_eq!(verdicts(&mut gate, &fixes), expected, "{fixes:?}");
        }
    }

    #[test]
    fn a_wild_first_fix_does_not_lock_the_gate() {
        let mut gate = Gate::new(GateConfig::default());
        let mut fixes = vec![fix_at(0, 10.0, 10.0)];
        fixes.extend((1..=5).map(|s| fix_at(s, 48.1 + STEP_DEG * s as f64, 11.5)));
        let got = verdicts(&mut gate, &fixes);
        assert_eq!(got, ["ok", "impossible_jump", "impossible_jump", "ok", "ok", "ok"]);
        assert_eq!(gate.stats().reanchored, 1);
    }

    #[test]
    fn distance_matches_a_known_baseline() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m(48.0, 11.0, 49.0, 11.0);
        assert!((d - 111_195.0).abs() < 100.0, "{d}");
    }
}
