//! The epoch assembler: merges the observations of one receiver epoch into one fix,
//! learns the receiver's cycle, dates fixes and undoes GPS week rollover. Pure: no
//! clock, no I/O.

use crate::fix::{Fix, FixMode, days_from_civil};
use crate::nmea::{NmeaDate, Observation, SentenceKind};

/// Days in one GPS week-number rollover period (1024 weeks, about 19.6 years).
pub const ROLLOVER_DAYS: i64 = 1024 * 7;

/// The default earliest believable date, 2024-01-01, in days since the Unix epoch.
///
/// Any date a receiver reports before this is taken as a GPS week rollover victim and
/// moved forward by whole 1024-week periods. Raise it with each release: a receiver can
/// only be trusted for 1024 weeks after the floor, and later dates are refused.
pub const DEFAULT_DATE_FLOOR_DAYS: i64 = 19_723;

const DAY_MS: i64 = 86_400_000;
const HALF_DAY_MS: u32 = 43_200_000;

/// How the [`Assembler`] treats dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Earliest believable date in days since the Unix epoch; see
    /// [`DEFAULT_DATE_FLOOR_DAYS`].
    pub date_floor_days: i64,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self { date_floor_days: DEFAULT_DATE_FLOOR_DAYS }
    }
}

/// Counters kept by the [`Assembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Fixes emitted (one per epoch).
    pub epochs: u64,
    /// Fixes whose date was moved forward across GPS week rollovers.
    pub rollover_corrected: u64,
    /// Dates refused: impossible (31 February) or later than the floor plus one
    /// rollover period.
    pub implausible_dates: u64,
    /// Timed auxiliary sentences (ZDA, GST, GBS) that matched no epoch.
    pub stray_aux: u64,
    /// Sentences that arrived for an epoch already reported at its learned end of
    /// cycle.
    pub late_sentences: u64,
    /// Fixes emitted again because late sentences completed or changed them (a GGA
    /// reported at a GSA, then the RMC with the speed); not counted in `epochs`.
    pub revisions: u64,
}

/// The date as last reported, with the time of day it was reported at, so a fix a few
/// seconds later (perhaps just past midnight) gets the right day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateAnchor {
    days: i64,
    tod_ms: u32,
    rolled_over: bool,
}

impl DateAnchor {
    /// UTC milliseconds for a time of day near this anchor. Assumes the receiver sends a
    /// date at least every 12 hours, which RMC (every epoch) easily does.
    fn utc_ms(&self, tod_ms: u32) -> i64 {
        let days = if tod_ms.saturating_add(HALF_DAY_MS) < self.tod_ms {
            self.days + 1
        } else if tod_ms > self.tod_ms.saturating_add(HALF_DAY_MS) {
            self.days - 1
        } else {
            self.days
        };
        days * DAY_MS + i64::from(tod_ms)
    }
}

/// A sentence type ends the receiver's cycle when it came last before the time changed
/// in at least one in this many cycles so far.
pub const CYCLE_END_SHARE: u32 = 4;

/// Which sentence types end the receiver's cycle, learned as gpsd does: a type that
/// came last before the time changed is an end of cycle.
///
/// gpsd believes a type forever after it once ended a cycle. Here it must keep doing so
/// in at least 1 of [`CYCLE_END_SHARE`] cycles, so one lost sentence (a checksum error
/// on the usual last one) cannot make an early sentence an end of cycle for good, which
/// would leave the rest of every later epoch late. Receivers that alternate cycle
/// layouts (Garmin's even and odd seconds) still have each layout's last type learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CycleEnders {
    ended: [u32; SentenceKind::ALL.len()],
    cycles: u32,
}

impl CycleEnders {
    fn learn(&mut self, kind: SentenceKind) {
        if self.cycles == u32::MAX {
            // Keep the proportions, forget the distant past.
            self.cycles /= 2;
            self.ended.iter_mut().for_each(|n| *n /= 2);
        }
        self.cycles += 1;
        if let Some(n) = self.ended.get_mut(kind as usize) {
            *n += 1;
        }
    }

    fn contains(&self, kind: SentenceKind) -> bool {
        let ended = self.ended.get(kind as usize).copied().unwrap_or(0);
        ended > 0 && u64::from(ended) * u64::from(CYCLE_END_SHARE) >= u64::from(self.cycles)
    }
}

#[derive(Debug, Clone, Default)]
struct Epoch {
    fix: Fix,
    gsa_mode: Option<u8>,
    saw_status: bool,
    /// Already emitted at the learned end of cycle.
    reported: bool,
    /// A sentence of this epoch came after it was emitted and filled in what it lacked:
    /// the fix goes out again, revised, at the next end of cycle or when the epoch closes.
    revised: bool,
    /// A position for this epoch that came after it was emitted and differs from the
    /// reported one. It replaces the reported position once another sentence of the
    /// same second follows it; a position that is the last word before the next second
    /// is a multiplexer's stale stamp (see [`Epoch::fill`]) and the report stands.
    moved: Option<(f64, f64)>,
}

impl Epoch {
    fn open(tod_ms: u32) -> Self {
        Self { fix: Fix { tod_ms, ..Fix::default() }, ..Self::default() }
    }

    fn merge(&mut self, obs: &Observation) {
        let fix = &mut self.fix;
        // Like gpsd, the latest sentence of the epoch wins for each field. A sentence
        // that declares itself invalid (RMC V, GGA quality 0, FAA N) keeps its status
        // but not its position: receivers fill those fields with the last known or a
        // dead-reckoned position.
        if let Some((lat, lon)) = obs.position
            && !obs.declares_invalid()
        {
            fix.lat = Some(lat);
            fix.lon = Some(lon);
        }
        set(&mut fix.alt_m, obs.alt_m);
        set(&mut fix.speed_mps, obs.speed_mps);
        set(&mut fix.course_deg, obs.course_deg);
        set(&mut fix.hdop, obs.hdop);
        set(&mut fix.sats, obs.sats);
        set(&mut fix.eph_m, obs.eph_m);
        set(&mut fix.rmc_valid, obs.rmc_valid);
        set(&mut fix.gga_quality, obs.gga_quality);
        set(&mut fix.faa_mode, obs.faa_mode);
        set(&mut fix.gll_valid, obs.gll_valid);
        set(&mut self.gsa_mode, obs.gsa_mode);
        self.saw_status |= obs.kind.has_position() || obs.gsa_mode.is_some();
    }

    /// Merges a sentence that came after the epoch was reported: it fills in what the
    /// report lacked (the speed and course of an RMC that trails the GSA the cycle was
    /// learned to end at) but never changes another reported field. A different
    /// position is held in [`Epoch::moved`] and counts only if the receiver goes on
    /// talking about this second: a B&G Zeus chart plotter sends, as the very last
    /// sentence before each second, a GGA stamped with that second but sampled at the
    /// next, and gpsd's report for the second never shows it either. Later positions
    /// followed by more of the second (an RMC after the GLL the cycle was learned to
    /// end at) replace the report, as gpsd's next report does.
    /// Returns whether it filled in what the brain decides with (a position or the
    /// Doppler speed): only then is the fix worth reporting again.
    fn fill(&mut self, obs: &Observation) -> bool {
        let mut late = Epoch { fix: Fix { tod_ms: self.fix.tod_ms, ..Fix::default() }, ..Epoch::default() };
        late.merge(obs);
        let (fix, new) = (&mut self.fix, &late.fix);
        let mut useful = false;
        if fix.lat.is_none() && new.lat.is_some() {
            fix.lat = new.lat;
            fix.lon = new.lon;
            useful = true;
        } else if let (Some(lat), Some(lon)) = (new.lat, new.lon)
            && (fix.lat, fix.lon) != (Some(lat), Some(lon))
        {
            self.moved = Some((lat, lon));
        }
        useful |= fill(&mut fix.speed_mps, new.speed_mps);
        fill(&mut fix.course_deg, new.course_deg);
        fill(&mut fix.alt_m, new.alt_m);
        fill(&mut fix.hdop, new.hdop);
        fill(&mut fix.sats, new.sats);
        fill(&mut fix.eph_m, new.eph_m);
        fill(&mut fix.rmc_valid, new.rmc_valid);
        fill(&mut fix.gga_quality, new.gga_quality);
        fill(&mut fix.faa_mode, new.faa_mode);
        fill(&mut fix.gll_valid, new.gll_valid);
        fill(&mut self.gsa_mode, late.gsa_mode);
        self.saw_status |= late.saw_status;
        useful
    }

    fn to_fix(&self, date: Option<DateAnchor>) -> Fix {
        let mut fix = self.fix.clone();
        fix.mode = if fix.position().is_some() {
            Some(match self.gsa_mode {
                Some(3) => FixMode::ThreeD,
                Some(2) => FixMode::TwoD,
                // No GSA, or a GSA that lags the position sentences: a valid position
                // is at least 2D, and 3D when the receiver also solved for altitude.
                _ if fix.alt_m.is_some() => FixMode::ThreeD,
                _ => FixMode::TwoD,
            })
        } else if self.saw_status {
            Some(FixMode::NoFix)
        } else {
            None
        };
        if let Some(anchor) = date {
            fix.utc_ms = Some(anchor.utc_ms(fix.tod_ms));
            fix.week_rollover = anchor.rolled_over;
        }
        fix
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

/// Sets an empty slot; returns whether it did.
fn fill<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    let filled = slot.is_none() && value.is_some();
    if filled {
        *slot = value;
    }
    filled
}

/// Merges sentences into one [`Fix`] per epoch, the way gpsd does.
///
/// An epoch is opened by a sentence that carries a position and a time (GGA, RMC, GLL,
/// GNS) and ends when such a sentence arrives with a different time. Untimed sentences
/// (GSA, VTG) belong to the open epoch. Timed auxiliary sentences (ZDA, GST, GBS) join
/// the epoch with their time but never open one, because some receivers stamp ZDA
/// seconds away from the fix it follows.
///
/// Waiting for the next epoch's first sentence would delay every fix by a whole cycle,
/// so, like gpsd, the assembler learns the receiver's cycle: whichever sentence type came
/// last before the time changed is an end-of-cycle sentence, and from then on the fix is
/// emitted as soon as one arrives. Sentences for an epoch already emitted are counted as
/// late. They only fill in what the report lacked, never change it: a multiplexing chart
/// plotter (B&G Zeus) stamps some sentences with the second before the position they
/// carry, and the fix reported at the end of the receiver's own burst is the consistent
/// one. When a late sentence fills in a position or the Doppler speed (receivers that
/// send GGA only every few seconds put it first, then GSA, which is learned as the end
/// of their RMC-only cycles, then the RMC), the epoch is reported again, revised, at the
/// next end of cycle or when it closes, with the same time: the geofence must not judge
/// a van's speed from a fix that lost it ([`AssemblerStats::revisions`]).
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    config: AssemblerConfig,
    epoch: Option<Epoch>,
    aux: Option<Observation>,
    date: Option<DateAnchor>,
    cycle_enders: CycleEnders,
    last_kind: Option<SentenceKind>,
    timed_positions: bool,
    stats: AssemblerStats,
}

impl Assembler {
    /// An assembler that has seen nothing yet.
    pub fn new(config: AssemblerConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Counters so far.
    pub fn stats(&self) -> &AssemblerStats {
        &self.stats
    }

    /// Takes one sentence; returns the fixes it completes: the previous epoch's when
    /// this sentence starts a new one, and this epoch's when this sentence is the
    /// receiver's end of cycle (both, for a receiver that sends a single sentence type).
    pub fn push(&mut self, obs: &Observation) -> impl Iterator<Item = Fix> + use<> {
        let previous_kind = self.last_kind.replace(obs.kind);
        if let (Some(date), Some(tod)) = (obs.date, obs.tod_ms) {
            // A void RMC's date comes from the receiver's real-time clock, which is
            // often wrong before the first fix; ZDA has no status to check.
            if obs.rmc_valid != Some(false) {
                self.set_date(date, tod);
            }
        }
        // Until a position sentence has carried a time, ZDA (or GST, GBS) is the only
        // clock: a receiver without a fix may send GGA with empty time and quality 0
        // (Hemisphere), and those epochs should still be seen, and refused, downstream.
        let opens_epochs = obs.kind.has_position() || !self.timed_positions;
        if obs.kind.has_position() && obs.tod_ms.is_some() {
            self.timed_positions = true;
        }
        let starts_epoch = opens_epochs && obs.tod_ms.is_some();
        if let Some(epoch) = &mut self.epoch
            && !(starts_epoch && obs.tod_ms != Some(epoch.fix.tod_ms))
            && let Some((lat, lon)) = epoch.moved.take()
        {
            // More of the same second: the late position stands, as gpsd reports it.
            epoch.fix.lat = Some(lat);
            epoch.fix.lon = Some(lon);
            epoch.revised = true;
        }
        let mut done = None;
        match obs.tod_ms {
            Some(tod) if opens_epochs => {
                if self.epoch.as_ref().is_some_and(|e| e.fix.tod_ms != tod) {
                    if let Some(kind) = previous_kind {
                        self.cycle_enders.learn(kind);
                    }
                    done = self.close();
                }
                if self.epoch.is_none() {
                    let mut epoch = Epoch::open(tod);
                    if let Some(aux) = self.aux.take() {
                        if aux.tod_ms == Some(tod) {
                            epoch.merge(&aux);
                        } else {
                            self.stats.stray_aux += 1;
                        }
                    }
                    self.epoch = Some(epoch);
                }
                self.merge(obs);
            }
            Some(tod) => {
                if self.epoch.as_ref().is_some_and(|e| e.fix.tod_ms == tod) {
                    self.merge(obs);
                } else if self.aux.replace(*obs).is_some() {
                    self.stats.stray_aux += 1;
                }
            }
            None => self.merge(obs),
        }
        let reported = self.report_if_cycle_ended(obs.kind);
        [done, reported].into_iter().flatten()
    }

    /// Ends the stream (or the connection): returns the open epoch's fix, if it was not
    /// already reported.
    pub fn finish(&mut self) -> Option<Fix> {
        if self.aux.take().is_some() {
            self.stats.stray_aux += 1;
        }
        self.last_kind = None;
        self.close()
    }

    fn merge(&mut self, obs: &Observation) {
        match &mut self.epoch {
            Some(epoch) if epoch.reported => {
                self.stats.late_sentences += 1;
                epoch.revised |= epoch.fill(obs);
            }
            Some(epoch) => epoch.merge(obs),
            None => {}
        }
    }

    fn report_if_cycle_ended(&mut self, kind: SentenceKind) -> Option<Fix> {
        if !self.cycle_enders.contains(kind) {
            return None;
        }
        let epoch = self.epoch.as_mut().filter(|e| !e.reported || e.revised)?;
        let revision = epoch.reported;
        epoch.reported = true;
        epoch.revised = false;
        let fix = epoch.to_fix(self.date);
        Some(self.count(fix, revision))
    }

    fn close(&mut self) -> Option<Fix> {
        let epoch = self.epoch.take().filter(|e| !e.reported || e.revised)?;
        let fix = epoch.to_fix(self.date);
        Some(self.count(fix, epoch.reported))
    }

    fn count(&mut self, fix: Fix, revision: bool) -> Fix {
        if revision {
            self.stats.revisions += 1;
            return fix;
        }
        self.stats.epochs += 1;
        if fix.week_rollover {
            self.stats.rollover_corrected += 1;
        }
        fix
    }

    fn set_date(&mut self, date: NmeaDate, tod_ms: u32) {
        let floor = self.config.date_floor_days;
        let Some(mut days) = days_from_civil(i64::from(date.year), date.month, date.day) else {
            self.stats.implausible_dates += 1;
            return;
        };
        let mut rolled_over = false;
        while days < floor {
            days += ROLLOVER_DAYS;
            rolled_over = true;
        }
        if days >= floor + ROLLOVER_DAYS {
            self.stats.implausible_dates += 1;
            return;
        }
        self.date = Some(DateAnchor { days, tod_ms, rolled_over });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::format_utc_ms;
    use crate::gps::Decoder;
    use crate::gps::tests::*;
    use crate::nmea::LineKind;

    /// The one fix `input` decodes to.
    fn only_fix(input: &str) -> Fix {
        let (mut fixes, _) = decode_str(input);
        assert_eq!(fixes.len(), 1, "{fixes:?}");
        fixes.remove(0)
    }

    #[test]
    fn sentences_of_one_epoch_merge_into_one_fix() {
        let (fixes, decoder) = decode_str(&cycle("120001", "010624"));
        assert_eq!(fixes.len(), 1);
        let fix = &fixes[0];
        assert_eq!(fix.time_rfc3339(), "2024-06-01T12:00:01Z");
        assert_eq!(fix.mode, Some(FixMode::ThreeD));
        assert_eq!((fix.sats, fix.gga_quality, fix.rmc_valid), (Some(8), Some(1), Some(true)));
        assert!(fix.speed_mps.is_some() && fix.alt_m.is_some() && fix.hdop.is_some());
        assert_eq!(decoder.line_stats().get(LineKind::Used), 3);
    }

    #[test]
    fn an_epoch_ends_when_the_time_changes() {
        let input = [cycle("120001", "010624"), cycle("120002", "010624")].concat();
        let mut decoder = Decoder::default();
        let mut fixes = Vec::new();
        // The first cycle's end is not known yet: its fix comes with the next time.
        decoder.feed(cycle("120001", "010624").as_bytes(), &mut fixes);
        assert!(fixes.is_empty());
        decoder.feed(
            sentence("GPGGA,120002.00,4807.002,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,").as_bytes(),
            &mut fixes,
        );
        assert_eq!(fixes.len(), 1);
        let (all, _) = decode_str(&input);
        assert_eq!(all.iter().map(|f| f.tod_ms % 60_000).collect::<Vec<_>>(), [1000, 2000]);
    }

    #[test]
    fn once_the_cycle_is_learned_a_fix_is_emitted_at_its_last_sentence() {
        let mut decoder = Decoder::default();
        let mut fixes = Vec::new();
        decoder.feed(cycle("120001", "010624").as_bytes(), &mut fixes);
        decoder.feed(cycle("120002", "010624").as_bytes(), &mut fixes);
        // GSA ended cycle 1, so cycle 2's fix is out as soon as its GSA arrived.
        assert_eq!(fixes.len(), 2);
        decoder.finish(&mut fixes);
        assert_eq!(fixes.len(), 2, "nothing left to flush");
    }

    #[test]
    fn a_sentence_stamped_with_an_already_reported_second_is_late_and_moves_nothing() {
        let late = sentence("GPGGA,120002.00,4807.999,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
        let input = [cycle("120001", "010624"), cycle("120002", "010624"), late].concat();
        let (fixes, decoder) = decode_str(&input);
        assert_eq!(fixes.len(), 2);
        assert!(fixes[1].lat.is_some_and(|lat| (lat - (48.0 + 7.002 / 60.0)).abs() < 1e-9));
        assert_eq!(decoder.assembler_stats().late_sentences, 1);
    }

    #[test]
    fn a_late_position_followed_by_more_of_its_second_moves_the_fix() {
        // An RMC after the GSA the cycle ends at, then a VTG of the same second: gpsd
        // reports the RMC's position again, and so do we.
        let late = sentence("GPRMC,120002.00,A,4807.999,N,01131.000,E,0.5,54.7,010624,,,A");
        let vtg = sentence("GPVTG,54.7,T,,M,0.5,N,0.9,K,A");
        let input =
            [cycle("120001", "010624"), cycle("120002", "010624"), late, vtg, cycle("120003", "010624")]
                .concat();
        let (fixes, decoder) = decode_str(&input);
        let of_2: Vec<&Fix> = fixes.iter().filter(|f| f.tod_ms == 43_202_000).collect();
        assert_eq!(of_2.len(), 2, "reported, then revised: {fixes:#?}");
        assert!(of_2[1].lat.is_some_and(|lat| (lat - (48.0 + 7.999 / 60.0)).abs() < 1e-9));
        assert_eq!(decoder.assembler_stats().revisions, 1);
    }

    #[test]
    fn an_rmc_after_the_learned_end_of_cycle_revises_the_fix_with_its_speed() {
        // A receiver (iTrek) that sends RMC every second and GGA only every few: GSA ends
        // its RMC-only cycles, so a GGA second is reported at the GSA, before its RMC.
        let rmc = |t: &str, lat: &str| {
            sentence(&format!("GPRMC,{t}.000,A,{lat},N,13640.2632,E,0.11,97.5,270705,,"))
        };
        let gga = |t: &str, lat: &str| {
            sentence(&format!("GPGGA,{t}.000,{lat},N,13640.2632,E,1,04,2.2,80.4,M,,,,0000"))
        };
        let gsa = sentence("GPGSA,A,3,09,05,14,26,,,,,,,,,2.9,2.2,1.9");
        let input = [
            rmc("045850", "3519.9047"),
            gsa.clone(),
            rmc("045851", "3519.9046"),
            gsa.clone(),
            gga("045852", "3519.9045"),
            gsa.clone(),
            rmc("045852", "3519.9045"),
            rmc("045853", "3519.9044"),
        ]
        .concat();
        let (fixes, decoder) = decode_str(&input);
        let of_52: Vec<&Fix> = fixes.iter().filter(|f| f.tod_ms == 17_932_000).collect();
        assert_eq!(of_52.len(), 2, "reported at the GSA, then revised: {fixes:#?}");
        assert_eq!(of_52[0].speed_mps, None);
        assert!(of_52[1].speed_mps.is_some_and(|v| (v - 0.11 * 1852.0 / 3600.0).abs() < 1e-9));
        assert_eq!(of_52[1].lat, of_52[0].lat, "a revision fills in, it does not move the fix");
        assert_eq!(of_52[1].alt_m, Some(80.4), "the first report's fields stay");
        assert_eq!(decoder.assembler_stats().revisions, 1);
        assert_eq!(decoder.assembler_stats().epochs, 4, "a revision is not another epoch");
    }

    #[test]
    fn one_lost_end_of_cycle_sentence_does_not_make_fixes_early_for_good() {
        // Cycle 1 loses its GSA (say, to a checksum error), so RMC looked like the end.
        let first = cycle("120001", "010624");
        let mut input = first[..first.rfind("$GPGSA").unwrap_or(0)].to_owned();
        for s in 2..=9 {
            input.push_str(&cycle(&format!("1200{s:02}"), "010624"));
        }
        let (fixes, _) = decode_str(&input);
        // Once GSA has ended most cycles, RMC no longer counts as an end, and fixes
        // carry the GSA's mode again.
        let last = fixes.last().cloned().unwrap_or_default();
        assert_eq!(last.mode, Some(FixMode::ThreeD));
        let hdops: Vec<_> = fixes.iter().map(|f| f.hdop).collect();
        assert!(fixes.iter().rev().take(3).all(|f| f.hdop == Some(1.3)), "{hdops:?}");
    }

    #[test]
    fn a_fix_is_dated_only_once_the_receiver_sent_a_date() {
        let fix = only_fix(&sentence("GPGGA,120001.00,4807.001,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"));
        assert_eq!(fix.utc_ms, None);
        assert_eq!(fix.time_rfc3339(), "12:00:01Z");
    }

    #[test]
    fn a_void_rmc_does_not_set_the_date() {
        let fix = only_fix(&sentence("GPRMC,120001.00,V,,,,,,,060180,,,N"));
        assert_eq!(fix.utc_ms, None);
        assert_eq!(fix.mode, Some(FixMode::NoFix));
    }

    #[test]
    fn the_date_rolls_over_at_midnight_between_date_sentences() {
        let input = [
            cycle("235959", "310524"),
            sentence("GPGGA,000000.00,4807.000,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        ]
        .concat();
        let (fixes, _) = decode_str(&input);
        let times: Vec<String> = fixes.iter().filter_map(|f| f.utc_ms).map(format_utc_ms).collect();
        assert_eq!(times, ["2024-05-31T23:59:59Z", "2024-06-01T00:00:00Z"]);
    }

    #[test]
    fn a_date_before_the_floor_is_moved_forward_by_1024_weeks() {
        // A receiver with the week rollover bug reports 2005-10-16 for 2025-06-01.
        let (fixes, decoder) = decode_str(&cycle("120001", "161005"));
        let time = fixes.first().and_then(|f| f.utc_ms).map(format_utc_ms);
        assert_eq!(time.as_deref(), Some("2025-06-01T12:00:01Z"));
        assert!(fixes[0].week_rollover);
        assert_eq!(decoder.assembler_stats().rollover_corrected, 1);
    }

    #[test]
    fn a_zda_with_another_second_does_not_open_an_epoch() {
        // Magellan AC12 stamps ZDA two seconds ahead of the fix it follows.
        let input = [
            cycle("193221", "231207"),
            sentence("GPZDA,193223.00,23,12,2007,00,00"),
            cycle("193222", "231207"),
        ]
        .concat();
        let (fixes, decoder) = decode_str(&input);
        assert_eq!(fixes.len(), 2);
        assert!(fixes.iter().all(|f| f.position().is_some()));
        assert_eq!(decoder.assembler_stats().stray_aux, 1);
    }

    #[test]
    fn an_invalid_sentence_keeps_its_status_but_not_its_position() {
        let input = sentence("GPGGA,120001.00,4807.001,N,01131.000,E,0,00,99.9,,M,,M,,");
        let (fixes, _) = decode_str(&input);
        assert_eq!(fixes[0].gga_quality, Some(0));
        assert_eq!(fixes[0].position(), None);
        assert_eq!(fixes[0].mode, Some(FixMode::NoFix));
    }

    #[test]
    fn a_receiver_without_a_fix_or_time_in_gga_still_yields_refusable_epochs() {
        // Hemisphere: GGA with empty time and quality 0, the clock only in ZDA.
        let cycle = |zda: &str| {
            [
                sentence("GPGGA,,,,,,0,,,,M,,M,,"),
                sentence("GPVTG,,T,,M,,N,,K,N"),
                sentence(&format!("GPZDA,{zda},07,09,2024,00,00")),
            ]
            .concat()
        };
        let input = [cycle("193913.00"), cycle("193914.00"), cycle("193915.00")].concat();
        let (fixes, _) = decode_str(&input);
        // Without a time in GGA, which ZDA a GGA belongs to is a guess; what matters is
        // that the no-fix epochs reach the gate and none claims a position.
        let no_fix = fixes.iter().filter(|f| f.gga_quality == Some(0) && f.mode == Some(FixMode::NoFix));
        assert!(no_fix.count() >= 2, "{fixes:?}");
        assert!(fixes.iter().all(|f| f.position().is_none()));
    }

    #[test]
    fn a_receiver_sending_only_gga_gets_each_fix_out_at_its_own_sentence() {
        let gga = |t: &str| sentence(&format!("GPGGA,{t},4807.001,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"));
        let mut decoder = Decoder::default();
        let mut fixes = Vec::new();
        for t in ["120001.00", "120002.00", "120003.00"] {
            decoder.feed(gga(t).as_bytes(), &mut fixes);
        }
        assert_eq!(fixes.len(), 3);
    }

    #[test]
    fn gsa_decides_between_2d_and_3d() {
        let input = [
            sentence("GPGGA,120001.00,4807.001,N,01131.000,E,1,03,2.0,545.4,M,46.9,M,,"),
            sentence("GPGSA,A,2,04,05,09,,,,,,,,,,3.0,2.0,2.2"),
        ]
        .concat();
        let (fixes, _) = decode_str(&input);
        assert_eq!(fixes[0].mode, Some(FixMode::TwoD));
    }
}
