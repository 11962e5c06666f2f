//! From GPS bytes to one [`Fix`] per epoch.
//!
//! Three layers, innermost first:
//!
//! - [`Assembler`]: a pure state machine that merges the [`Observation`]s of one epoch
//!   into one [`Fix`], the way gpsd does: an epoch ends when the sentence time changes,
//!   and once the receiver's cycle is learned its fix goes out at the cycle's last
//!   sentence instead of a second later. It also turns time of day into GNSS UTC once a
//!   date is known, and undoes GPS week rollover. No clock, no I/O.
//! - [`Decoder`]: framing, checksums and sentence decoding ([`crate::nmea`]) in front
//!   of the assembler, with counters for every line it did not use. Still pure: bytes
//!   in, fixes out.
//! - [`run`] and [`run_serial`]: the thin async shell. `run` reads any
//!   [`AsyncBufRead`] (a recorded log, a pty in tests, a serial port); `run_serial` opens
//!   a serial device with `serialport`, and reopens it with backoff when it disappears
//!   (a USB receiver unplugged, a cable shaken loose).
//!
//! The quality gate ([`crate::gate`]) comes after all of this: a [`Fix`] is the
//! decoder's view, not yet a judgement.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fix::{Fix, FixMode, days_from_civil};
use crate::gate::{Gate, GateConfig, GateStats, Verdict};
use crate::nmea::{
    ChecksumPolicy, Decoded, Frame, Framer, LineKind, LineStats, NmeaDate, Observation, SentenceKind,
    decode_sentence,
};

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

/// Configuration of a [`Decoder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderConfig {
    /// What to do with sentences that carry no checksum.
    pub checksum: ChecksumPolicy,
    /// Date handling.
    pub assembler: AssemblerConfig,
}

/// Bytes in, fixes out: [`Framer`], [`decode_sentence`] and [`Assembler`] in one pure
/// state machine, with counters.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    config: DecoderConfig,
    framer: Framer,
    lines: LineStats,
    assembler: Assembler,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            framer: Framer::new(),
            lines: LineStats::default(),
            assembler: Assembler::new(config.assembler),
        }
    }

    /// Feeds bytes of any chunking; appends completed fixes to `fixes`.
    pub fn feed(&mut self, bytes: &[u8], fixes: &mut Vec<Fix>) {
        let Self { config, framer, lines, assembler } = self;
        framer.feed(bytes, |frame| {
            handle_frame(frame, config.checksum, lines, assembler, fixes);
        });
    }

    /// Ends the stream: decodes an unterminated last sentence and closes the last epoch.
    pub fn finish(&mut self, fixes: &mut Vec<Fix>) {
        let Self { config, framer, lines, assembler } = self;
        framer.finish(|frame| handle_frame(frame, config.checksum, lines, assembler, fixes));
        fixes.extend(assembler.finish());
    }

    /// The link dropped (device unplugged): discards a partial sentence and closes the
    /// open epoch, so a fix is never assembled from both sides of a gap.
    pub fn link_lost(&mut self, fixes: &mut Vec<Fix>) {
        let Self { framer, lines, assembler, .. } = self;
        framer.reset(|frame| {
            if let Frame::Skipped(kind) = frame {
                lines.record(kind);
            }
        });
        fixes.extend(assembler.finish());
    }

    /// Line counters so far.
    pub fn line_stats(&self) -> &LineStats {
        &self.lines
    }

    /// Assembler counters so far.
    pub fn assembler_stats(&self) -> &AssemblerStats {
        self.assembler.stats()
    }
}

fn handle_frame(
    frame: Frame<'_>,
    policy: ChecksumPolicy,
    lines: &mut LineStats,
    assembler: &mut Assembler,
    fixes: &mut Vec<Fix>,
) {
    match frame {
        Frame::Skipped(kind) => lines.record(kind),
        Frame::Sentence(sentence) => {
            let decoded = decode_sentence(sentence, policy);
            if decoded.unchecked {
                lines.unchecked += 1;
            }
            match decoded.decoded {
                Decoded::Skipped(kind) => lines.record(kind),
                Decoded::Observation(obs) => {
                    lines.record(LineKind::Used);
                    fixes.extend(assembler.push(&obs));
                }
            }
        }
    }
}

/// Errors at the GPS module's seams.
#[derive(Debug, thiserror::Error)]
pub enum GpsError {
    /// Reading the byte stream failed.
    #[error("reading GPS data failed: {0}")]
    Read(#[source] io::Error),
    /// A recorded log could not be opened.
    #[error("cannot open NMEA file {path}: {source}")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A serial device could not be opened.
    #[error(
        "cannot open GPS device {path} at {baud} baud: {source} \
         (is the receiver plugged in, and is this user in the dialout group?)"
    )]
    OpenDevice {
        /// The device path.
        path: PathBuf,
        /// The requested baud rate.
        baud: u32,
        /// Why.
        #[source]
        source: serialport::Error,
    },
    /// Writing decoder output failed.
    #[error("writing output failed: {0}")]
    Write(#[source] io::Error),
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The reader reached end of input; the last epoch was flushed.
    Eof,
    /// The cancellation token fired.
    Cancelled,
    /// The receiving side of the fix channel is gone.
    ReceiverGone,
}

/// Reads NMEA from `reader` until end of input or cancellation, sending one [`Fix`] per
/// epoch to `fixes`. The decoder is borrowed so its state and counters survive a
/// reconnect.
///
/// # Errors
///
/// [`GpsError::Read`] when the reader fails; the decoder is left as it was, and the
/// caller decides whether to call [`Decoder::link_lost`] and reconnect.
pub async fn run<R: AsyncBufRead + Unpin>(
    mut reader: R,
    decoder: &mut Decoder,
    fixes: &mpsc::Sender<Fix>,
    cancel: &CancellationToken,
) -> Result<RunEnd, GpsError> {
    let mut out = Vec::new();
    loop {
        let eof = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(RunEnd::Cancelled),
            read = reader.fill_buf() => {
                let buf = read.map_err(GpsError::Read)?;
                let n = buf.len();
                if n == 0 {
                    decoder.finish(&mut out);
                } else {
                    decoder.feed(buf, &mut out);
                }
                reader.consume(n);
                n == 0
            }
        };
        for fix in out.drain(..) {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(RunEnd::Cancelled),
                sent = fixes.send(fix) => if sent.is_err() {
                    return Ok(RunEnd::ReceiverGone);
                },
            }
        }
        if eof {
            return Ok(RunEnd::Eof);
        }
    }
}

/// How long a blocking serial read waits before checking whether anyone still listens.
pub const SERIAL_POLL: Duration = Duration::from_millis(200);

/// Bytes per read from the serial device; at 9600 baud that is about one second.
pub const SERIAL_CHUNK_LEN: usize = 1024;

/// Chunks buffered between the serial reader thread and the decoder.
pub const SERIAL_QUEUE_CHUNKS: usize = 16;

/// Reconnect delays: doubling from `initial` up to `max`.
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

/// Where the GPS is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// Device path, such as `/dev/ttyACM0` or `/dev/serial/by-id/usb-u-blox...`.
    pub path: PathBuf,
    /// Baud rate; NMEA 0183's standard rate is 4800, most modern receivers send 9600.
    pub baud: u32,
    /// Reconnect delays.
    pub backoff: Backoff,
}

/// Counters of the serial link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Successful opens of the device.
    pub opens: u64,
    /// Failed attempts to open it.
    pub open_failures: u64,
    /// Times an open device stopped delivering (read error or hang-up).
    pub disconnects: u64,
}

/// A serial port as an [`AsyncBufRead`]: a thread does the blocking reads and hands
/// chunks over a bounded channel. The thread ends when the device fails or when this
/// reader is dropped.
#[derive(Debug)]
pub struct SerialReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl SerialReader {
    /// Opens `path` at `baud` (8N1, raw) and starts the reader thread.
    ///
    /// # Errors
    ///
    /// [`GpsError::OpenDevice`] when the device is missing, busy or not a tty.
    pub fn open(path: &Path, baud: u32) -> Result<Self, GpsError> {
        let port = match serialport::new(path.to_string_lossy(), baud).timeout(SERIAL_POLL).open_native() {
            Ok(port) => port,
            // termios2 refused (qemu-user answers ENOSYS): the classic calls; see crate::tty.
            Err(source) if source.kind() == serialport::ErrorKind::Unknown => {
                return crate::tty::TtyPort::open(path, baud, SERIAL_POLL)
                    .map(Self::spawn)
                    .map_err(|_| GpsError::OpenDevice { path: path.to_owned(), baud, source });
            }
            Err(source) => return Err(GpsError::OpenDevice { path: path.to_owned(), baud, source }),
        };
        Ok(Self::spawn(port))
    }

    /// Reads from an already-open reader on a thread.
    pub fn spawn<P: io::Read + Send + 'static>(mut port: P) -> Self {
        let (tx, rx) = mpsc::channel(SERIAL_QUEUE_CHUNKS);
        let spawned = std::thread::Builder::new().name("gps-serial".into()).spawn(move || {
            let mut buf = vec![0; SERIAL_CHUNK_LEN];
            loop {
                match port.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        if tx.is_closed() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        match spawned {
            Ok(_) => Self { rx, chunk: Vec::new(), pos: 0 },
            Err(e) => {
                // No thread, no reader: report it as a read error on first use.
                let (tx_err, rx_err) = mpsc::channel(1);
                let _ = tx_err.try_send(Err(e));
                Self { rx: rx_err, chunk: Vec::new(), pos: 0 }
            }
        }
    }
}

impl AsyncRead for SerialReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => {
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(available);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for SerialReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.chunk.len() {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    this.chunk.clear();
                    this.pos = 0;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.chunk[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.chunk.len());
    }
}

/// Reads the GPS on a serial device until cancelled, reopening it with backoff whenever
/// it cannot be opened or stops delivering. Fixes go to `fixes`; the link counters to
/// `link`.
pub async fn run_serial(
    config: &SerialConfig,
    decoder: &mut Decoder,
    fixes: &mpsc::Sender<Fix>,
    cancel: &CancellationToken,
    link: &mut LinkStats,
) -> RunEnd {
    let mut delay = config.backoff.initial;
    let mut out = Vec::new();
    loop {
        let path = config.path.clone();
        let baud = config.baud;
        let opened = tokio::task::spawn_blocking(move || SerialReader::open(&path, baud)).await;
        match opened {
            Ok(Ok(reader)) => {
                link.opens += 1;
                delay = config.backoff.initial;
                tracing::info!(device = %config.path.display(), baud, "GPS device open");
                let end = run(reader, decoder, fixes, cancel).await;
                match end {
                    Ok(RunEnd::Cancelled) => return RunEnd::Cancelled,
                    Ok(RunEnd::ReceiverGone) => return RunEnd::ReceiverGone,
                    Ok(RunEnd::Eof) => {}
                    Err(e) => {
                        tracing::warn!(device = %config.path.display(), error = %e, "GPS device lost");
                    }
                }
                link.disconnects += 1;
                decoder.link_lost(&mut out);
                for fix in out.drain(..) {
                    if fixes.send(fix).await.is_err() {
                        return RunEnd::ReceiverGone;
                    }
                }
            }
            Ok(Err(e)) => {
                link.open_failures += 1;
                tracing::warn!(error = %e, retry_in = ?delay, "GPS device unavailable");
            }
            Err(e) => {
                link.open_failures += 1;
                tracing::warn!(error = %e, "GPS open task failed");
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return RunEnd::Cancelled,
            () = tokio::time::sleep(delay) => {}
        }
        delay = config.backoff.next(delay);
    }
}

/// Fixes buffered between the decoding task and the printer in `gps decode`.
pub const DECODE_QUEUE_FIXES: usize = 64;

/// What `doorstep-agent gps decode` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeSource {
    /// A recorded log.
    File(PathBuf),
    /// A serial device.
    Device {
        /// Device path.
        path: PathBuf,
        /// Baud rate.
        baud: u32,
    },
}

impl DecodeSource {
    /// A path under `/dev`, or any character device, is a serial device; anything
    /// else is a file.
    pub fn classify(path: &Path, baud: u32) -> Self {
        use std::os::unix::fs::FileTypeExt as _;
        let is_char_device = std::fs::metadata(path).map(|m| m.file_type().is_char_device()).unwrap_or(false);
        if path.starts_with("/dev") || is_char_device {
            DecodeSource::Device { path: path.to_owned(), baud }
        } else {
            DecodeSource::File(path.to_owned())
        }
    }
}

/// Everything counted during a `gps decode` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Lines by what became of them.
    pub lines: LineStats,
    /// Assembler counters.
    pub assembler: AssemblerStats,
    /// Gate verdicts.
    pub gate: GateStats,
    /// Serial link counters (all zero for a file).
    pub link: LinkStats,
}

impl std::fmt::Display for DecodeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lines: {}", self.lines.total())?;
        for (kind, n) in self.lines.iter() {
            write!(f, ", {kind} {n}")?;
        }
        if self.lines.unchecked > 0 {
            write!(f, " ({} without checksum)", self.lines.unchecked)?;
        }
        write!(f, "\nfixes: {}", self.assembler.epochs)?;
        write!(f, ", ok {}", self.gate.accepted)?;
        for (reason, n) in self.gate.rejections() {
            write!(f, ", {reason} {n}")?;
        }
        let a = &self.assembler;
        if a.rollover_corrected + a.implausible_dates + a.stray_aux > 0 {
            write!(
                f,
                "\ndates: week_rollover_corrected {}, implausible {}; stray_aux_sentences {}",
                a.rollover_corrected, a.implausible_dates, a.stray_aux
            )?;
        }
        if self.link != LinkStats::default() {
            write!(
                f,
                "\nlink: opens {}, open_failures {}, disconnects {}",
                self.link.opens, self.link.open_failures, self.link.disconnects
            )?;
        }
        Ok(())
    }
}

/// One line of `gps decode` output: the decoder's view of an epoch and the gate's
/// verdict on it.
#[derive(Debug, Serialize)]
struct FixRecord<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_mps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    course: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hdop: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sats: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eph: Option<f64>,
    gate: &'a str,
}

/// Formats a fix and its verdict as one JSON object (no trailing newline).
pub fn fix_json(fix: &Fix, verdict: &Verdict) -> String {
    let record = FixRecord {
        time: fix.time_rfc3339(),
        lat: fix.lat,
        lon: fix.lon,
        mode: fix.mode.map(FixMode::as_gpsd),
        speed_mps: fix.speed_mps,
        course: fix.course_deg,
        hdop: fix.hdop,
        sats: fix.sats,
        eph: fix.eph_m,
        gate: verdict.as_str(),
    };
    // Serializing plain numbers and strings cannot fail; keep the output a line anyway.
    serde_json::to_string(&record).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `doorstep-agent gps decode`: decodes `source`, writes one JSON line per fix to `out`,
/// and returns the counters. Files are read to the end; devices until `cancel` fires.
///
/// # Errors
///
/// Opening a file, reading it, or writing to `out` failed. A device that cannot be
/// opened is retried with backoff, not reported.
pub async fn decode_command<W: Write>(
    source: &DecodeSource,
    gate_config: GateConfig,
    out: &mut W,
    cancel: &CancellationToken,
) -> Result<DecodeSummary, GpsError> {
    let (tx, mut rx) = mpsc::channel::<Fix>(DECODE_QUEUE_FIXES);
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut gate = Gate::new(gate_config);
    let source = source.clone();
    let producer_cancel = cancel.clone();
    let producer = tokio::spawn(async move {
        let mut link = LinkStats::default();
        let result = match &source {
            DecodeSource::File(path) => match tokio::fs::File::open(path).await {
                Ok(file) => {
                    let reader = tokio::io::BufReader::with_capacity(64 * 1024, file);
                    run(reader, &mut decoder, &tx, &producer_cancel).await.map(|_| ())
                }
                Err(source) => Err(GpsError::OpenFile { path: path.clone(), source }),
            },
            DecodeSource::Device { path, baud } => {
                let config = SerialConfig { path: path.clone(), baud: *baud, backoff: Backoff::default() };
                run_serial(&config, &mut decoder, &tx, &producer_cancel, &mut link).await;
                Ok(())
            }
        };
        // Stopped by Ctrl-C mid-epoch: the decoder's view includes the last epoch.
        let mut rest = Vec::new();
        decoder.finish(&mut rest);
        for fix in rest {
            if tx.send(fix).await.is_err() {
                break;
            }
        }
        (result, decoder, link)
    });
    while let Some(fix) = rx.recv().await {
        let verdict = gate.check(&fix);
        writeln!(out, "{}", fix_json(&fix, &verdict)).map_err(GpsError::Write)?;
    }
    out.flush().map_err(GpsError::Write)?;
    let (result, decoder, link) = producer.await.map_err(|e| GpsError::Read(io::Error::other(e)))?;
    result?;
    Ok(DecodeSummary {
        lines: *decoder.line_stats(),
        assembler: *decoder.assembler_stats(),
        gate: gate.stats().clone(),
        link,
    })
}

/// Decodes a whole in-memory log synchronously: the fixes, and the decoder for its
/// counters. Handy for tests, replays and benchmarks.
pub fn decode_all(bytes: &[u8], config: DecoderConfig) -> (Vec<Fix>, Decoder) {
    let mut decoder = Decoder::new(config);
    let mut fixes = Vec::new();
    decoder.feed(bytes, &mut fixes);
    decoder.finish(&mut fixes);
    (fixes, decoder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::format_utc_ms;
    use crate::nmea::checksum;

    fn sentence(body: &str) -> String {
        format!("${body}*{:02X}\r\n", checksum(body.as_bytes()))
    }

    /// One receiver cycle: GGA, RMC and GSA for `hhmmss` on `ddmmyy`, at a latitude
    /// that moves with the seconds so epochs can be told apart.
    fn cycle(hhmmss: &str, ddmmyy: &str) -> String {
        let sec: u32 = hhmmss[4..].parse().unwrap_or(0);
        let lat = format!("4807.{:03}", sec);
        [
            sentence(&format!("GPGGA,{hhmmss}.00,{lat},N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")),
            sentence(&format!("GPRMC,{hhmmss}.00,A,{lat},N,01131.000,E,0.5,54.7,{ddmmyy},,,A")),
            sentence("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"),
        ]
        .concat()
    }

    fn decode_str(input: &str) -> (Vec<Fix>, Decoder) {
        decode_all(input.as_bytes(), DecoderConfig::default())
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
        let gga = sentence("GPGGA,120001.00,4807.001,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
        let (fixes, _) = decode_str(&gga);
        assert_eq!(fixes.len(), 1);
        assert_eq!(fixes[0].utc_ms, None);
        assert_eq!(fixes[0].time_rfc3339(), "12:00:01Z");
    }

    #[test]
    fn a_void_rmc_does_not_set_the_date() {
        let void = sentence("GPRMC,120001.00,V,,,,,,,060180,,,N");
        let (fixes, _) = decode_str(&void);
        assert_eq!(fixes.len(), 1);
        assert_eq!(fixes[0].utc_ms, None);
        assert_eq!(fixes[0].mode, Some(FixMode::NoFix));
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

    #[tokio::test]
    async fn run_reads_any_async_buf_read_to_the_end() {
        let input = [cycle("120001", "010624"), cycle("120002", "010624")].concat();
        let reader = tokio::io::BufReader::with_capacity(16, input.as_bytes());
        let (tx, mut rx) = mpsc::channel(8);
        let mut decoder = Decoder::default();
        let end = run(reader, &mut decoder, &tx, &CancellationToken::new()).await;
        assert!(matches!(end, Ok(RunEnd::Eof)));
        drop(tx);
        let mut fixes = Vec::new();
        while let Some(fix) = rx.recv().await {
            fixes.push(fix);
        }
        assert_eq!(fixes.len(), 2);
    }

    #[tokio::test]
    async fn run_stops_when_cancelled() {
        let (_writer, reader) = tokio::io::duplex(64);
        let (tx, _rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut decoder = Decoder::default();
        let end = run(tokio::io::BufReader::new(reader), &mut decoder, &tx, &cancel).await;
        assert!(matches!(end, Ok(RunEnd::Cancelled)));
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let b = Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(2) };
        let delays: Vec<u128> = std::iter::successors(Some(b.initial), |d| Some(b.next(*d)))
            .take(5)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 2000, 2000]);
    }

    #[test]
    fn dev_paths_are_devices_and_other_paths_files() {
        assert!(matches!(
            DecodeSource::classify(Path::new("/dev/ttyACM0"), 9600),
            DecodeSource::Device { baud: 9600, .. }
        ));
        assert!(matches!(DecodeSource::classify(Path::new("drive.nmea"), 9600), DecodeSource::File(_)));
    }

    mod pty {
        //! A pseudo-terminal stands in for the GPS's serial port: the test writes NMEA
        //! into the master side, the agent opens the slave side by path with
        //! `serialport`, exactly as it opens /dev/ttyACM0.

        use std::io::Write as _;
        use std::os::unix::fs::symlink;

        use nix::fcntl::OFlag;
        use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};

        use super::*;

        fn open_pty() -> (PtyMaster, PathBuf) {
            let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).expect("posix_openpt");
            grantpt(&master).expect("grantpt");
            unlockpt(&master).expect("unlockpt");
            let slave = ptsname_r(&master).expect("ptsname_r");
            (master, PathBuf::from(slave))
        }

        /// Writes cycles into the master until a fix comes out (the agent may not have
        /// opened the slave yet when the first bytes go in), bounded in time.
        async fn feed_until_fix(
            master: &mut PtyMaster,
            rx: &mut mpsc::Receiver<Fix>,
            first_second: u32,
        ) -> Fix {
            for i in 0..100 {
                let input = cycle(&format!("1200{:02}", (first_second + i) % 60), "010624");
                master.write_all(input.as_bytes()).expect("write to pty master");
                if let Ok(Some(fix)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                    return fix;
                }
            }
            panic!("no fix came through the pty");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fixes_come_through_a_pty_and_the_device_is_reopened_after_unplugging() {
            let dir = tempfile::tempdir().expect("tempdir");
            let link_path = dir.path().join("gps0");
            let (mut master, slave) = open_pty();
            symlink(&slave, &link_path).expect("symlink");

            let config = SerialConfig {
                path: link_path.clone(),
                baud: 9600,
                backoff: Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(80) },
            };
            let (tx, mut rx) = mpsc::channel(64);
            let cancel = CancellationToken::new();
            let task = tokio::spawn({
                let cancel = cancel.clone();
                async move {
                    let mut decoder = Decoder::default();
                    let mut link = LinkStats::default();
                    let end = run_serial(&config, &mut decoder, &tx, &cancel, &mut link).await;
                    (end, link)
                }
            });

            let fix = feed_until_fix(&mut master, &mut rx, 1).await;
            assert!(fix.position().is_some());
            assert!(fix.utc_ms.is_some());

            // Unplug: the master goes away and the slave path with it.
            drop(master);
            std::fs::remove_file(&link_path).expect("remove link");
            tokio::time::sleep(Duration::from_millis(150)).await;

            // Plug a new receiver in at the same path.
            let (mut master, slave) = open_pty();
            symlink(&slave, &link_path).expect("symlink again");
            // Drain fixes from before the unplug, then expect new ones.
            while rx.try_recv().is_ok() {}
            let fix = feed_until_fix(&mut master, &mut rx, 30).await;
            assert!(fix.position().is_some());

            cancel.cancel();
            let (end, link) = task.await.expect("serial task");
            assert_eq!(end, RunEnd::Cancelled);
            assert_eq!(link.opens, 2, "{link:?}");
            assert_eq!(link.disconnects, 1, "{link:?}");
            assert!(link.open_failures >= 1, "{link:?}");
        }
    }
}
