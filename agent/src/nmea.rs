//! NMEA 0183 on the wire: framing, checksums, and one sentence into one [`Observation`].
//!
//! The byte stream from a GPS receiver is not clean text. Receivers interleave binary
//! protocols (u-blox UBX, SiRF) with NMEA, USB adapters drop bytes, a microcontroller can
//! inject its own sentence into the middle of the receiver's, and a reader that attaches
//! mid-stream starts in the middle of a sentence. [`Framer`] therefore hunts for a `$`
//! the way gpsd's packet lexer does, bounds every sentence at [`MAX_SENTENCE_LEN`], and
//! reports everything else as a counted [`LineKind`] instead of an error.
//!
//! [`decode_sentence`] verifies the checksum, reads the address field, and hands the
//! sentences that matter for a position fix to the `nmea` crate's sentence parsers. Its
//! output, an [`Observation`], is what the epoch assembler in [`crate::gps`] merges.
//!
//! Nothing here allocates per sentence, keeps a clock, or does I/O.

use std::fmt;

use chrono::{Datelike as _, NaiveDate, NaiveTime, Timelike as _};
use nmea::sentences::gsa::GsaMode2;
use nmea::sentences::rmc::RmcStatusOfFix;
use nmea::sentences::{
    FaaMode, FixType, parse_gga, parse_gll, parse_gns, parse_gsa, parse_gst, parse_rmc, parse_vtg, parse_zda,
};
use nmea::{NmeaSentence, SentenceType};

/// Longest sentence accepted, from `$` to the last checksum digit.
///
/// NMEA 0183 allows 82 characters including `$` and CR LF, but real receivers exceed
/// it (the Trimble BX-960 sends a 91-character GGA, Skytraq a 100-character PSTI).
/// gpsd and the `nmea` crate both stop at 102; anything longer is almost always two
/// sentences fused by a lost line ending, which can even carry a valid checksum.
pub const MAX_SENTENCE_LEN: usize = 102;

/// Knots to metres per second (one knot is 1852 m per hour).
pub const MPS_PER_KNOT: f64 = 1852.0 / 3600.0;

/// What became of one line (or one run of bytes) of receiver output.
///
/// Everything except [`LineKind::Used`] is normal on a real serial line and is counted,
/// never treated as a failure of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    /// A sentence that contributed to a fix.
    Used,
    /// A valid standard sentence that carries nothing a fix needs (GSV, TXT, DBT, ...).
    Unused,
    /// A valid manufacturer-proprietary sentence (`$P...`).
    Proprietary,
    /// An encapsulated sentence (`!AIVDM` and friends, AIS in marine installations).
    Encapsulated,
    /// Printable text that is not a sentence: comments in recorded logs, boot banners.
    Text,
    /// Non-printable bytes between sentences: binary protocols, line noise.
    Binary,
    /// A sentence cut off by non-printable bytes or by the start of another sentence.
    Truncated,
    /// A sentence longer than [`MAX_SENTENCE_LEN`].
    TooLong,
    /// A sentence whose checksum does not match its contents.
    BadChecksum,
    /// A sentence without a checksum, refused because the policy requires one.
    NoChecksum,
    /// A sentence with a valid checksum whose fields could not be parsed.
    Malformed,
}

impl LineKind {
    /// Every kind, in the order counters list them.
    pub const ALL: [LineKind; 11] = [
        LineKind::Used,
        LineKind::Unused,
        LineKind::Proprietary,
        LineKind::Encapsulated,
        LineKind::Text,
        LineKind::Binary,
        LineKind::Truncated,
        LineKind::TooLong,
        LineKind::BadChecksum,
        LineKind::NoChecksum,
        LineKind::Malformed,
    ];

    /// The short snake_case name used in counters, logs and the CLI summary.
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Used => "used",
            LineKind::Unused => "unused_sentence",
            LineKind::Proprietary => "proprietary",
            LineKind::Encapsulated => "encapsulated",
            LineKind::Text => "not_a_sentence",
            LineKind::Binary => "binary_junk",
            LineKind::Truncated => "truncated",
            LineKind::TooLong => "too_long",
            LineKind::BadChecksum => "bad_checksum",
            LineKind::NoChecksum => "no_checksum",
            LineKind::Malformed => "malformed",
        }
    }

    /// True for input that was refused because it was damaged, as opposed to input
    /// that is simply not about position (proprietary, AIS, comments, binary frames).
    pub fn is_damage(self) -> bool {
        matches!(
            self,
            LineKind::Truncated
                | LineKind::TooLong
                | LineKind::BadChecksum
                | LineKind::NoChecksum
                | LineKind::Malformed
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for LineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of [`LineKind`]s, plus the sentences accepted without a checksum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    counts: [u64; LineKind::ALL.len()],
    /// Sentences that carried no checksum and were accepted anyway
    /// ([`ChecksumPolicy::AllowMissing`]); they are also counted under their kind.
    pub unchecked: u64,
}

impl LineStats {
    /// Counts one line of the given kind.
    pub fn record(&mut self, kind: LineKind) {
        if let Some(c) = self.counts.get_mut(kind.index()) {
            *c += 1;
        }
    }

    /// How many lines of the given kind were seen.
    pub fn get(&self, kind: LineKind) -> u64 {
        self.counts.get(kind.index()).copied().unwrap_or(0)
    }

    /// Every non-zero counter, in [`LineKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (LineKind, u64)> + '_ {
        LineKind::ALL.into_iter().map(|k| (k, self.get(k))).filter(|&(_, n)| n > 0)
    }

    /// Total lines counted, of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What to do with a sentence that has no `*hh` checksum.
///
/// NMEA 0183 before 2.0 made the checksum optional and some receivers (old Garmins,
/// HP/Symmetricom timing units) never send one; gpsd accepts such sentences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumPolicy {
    /// Accept sentences without a checksum (gpsd's behaviour); count them in
    /// [`LineStats::unchecked`]. The quality gate's jump check still guards against
    /// the occasional corrupted digit.
    #[default]
    AllowMissing,
    /// Refuse sentences without a checksum as [`LineKind::NoChecksum`].
    Require,
}

/// One framed piece of the input stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A candidate sentence: starts with `$` or `!`, printable ASCII, at most
    /// [`MAX_SENTENCE_LEN`] bytes, line ending removed. Not yet checksummed.
    Sentence(&'a [u8]),
    /// Input that is not a sentence, already classified.
    Skipped(LineKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FramerState {
    /// Between sentences, looking for `$` or `!`.
    Hunting,
    /// Inside a sentence, collecting bytes into the buffer.
    InSentence,
    /// Past the length bound, discarding until the next line ending or `$`.
    Overlong,
}

/// Splits a byte stream into candidate sentences with a hard length bound.
///
/// A pure state machine: feed it bytes in chunks of any size, including one byte at a
/// time, and it emits the same frames. Junk between sentences is reported once per run,
/// classified as [`LineKind::Text`] or [`LineKind::Binary`].
#[derive(Debug, Clone)]
pub struct Framer {
    state: FramerState,
    buf: [u8; MAX_SENTENCE_LEN],
    len: usize,
    junk: Option<LineKind>,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

fn is_line_end(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

fn is_sentence_start(b: u8) -> bool {
    b == b'$' || b == b'!'
}

fn is_printable(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

impl Framer {
    /// A framer at the start of a stream (as if just after a line ending).
    pub fn new() -> Self {
        Self { state: FramerState::Hunting, buf: [0; MAX_SENTENCE_LEN], len: 0, junk: None }
    }

    /// Forgets any partial sentence, as after the device was reopened. A partial
    /// sentence is counted as [`LineKind::Truncated`] through `on_frame`.
    pub fn reset(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        self.flush_junk(&mut on_frame);
        if self.state == FramerState::InSentence && self.len > 0 {
            on_frame(Frame::Skipped(LineKind::Truncated));
        }
        self.state = FramerState::Hunting;
        self.len = 0;
    }

    fn flush_junk(&mut self, on_frame: &mut impl FnMut(Frame<'_>)) {
        if let Some(kind) = self.junk.take() {
            on_frame(Frame::Skipped(kind));
        }
    }

    fn note_junk(&mut self, b: u8) {
        if b == b' ' || b == b'\t' {
            return;
        }
        let kind = if is_printable(b) { LineKind::Text } else { LineKind::Binary };
        self.junk = match self.junk {
            Some(LineKind::Binary) => Some(LineKind::Binary),
            _ => Some(kind),
        };
    }

    fn start_sentence(&mut self, b: u8, on_frame: &mut impl FnMut(Frame<'_>)) {
        self.flush_junk(on_frame);
        self.buf[0] = b;
        self.len = 1;
        self.state = FramerState::InSentence;
    }

    /// Feeds bytes; calls `on_frame` for every complete frame, in order.
    pub fn feed(&mut self, input: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                FramerState::Hunting => {
                    // Fast path: skip to the next interesting byte.
                    while i < input.len() {
                        let b = input[i];
                        i += 1;
                        if is_sentence_start(b) {
                            self.start_sentence(b, &mut on_frame);
                            break;
                        } else if is_line_end(b) {
                            self.flush_junk(&mut on_frame);
                        } else {
                            self.note_junk(b);
                        }
                    }
                }
                FramerState::InSentence => {
                    while i < input.len() {
                        let b = input[i];
                        i += 1;
                        if is_line_end(b) {
                            self.state = FramerState::Hunting;
                            let len = self.len;
                            self.len = 0;
                            on_frame(Frame::Sentence(trim_end(&self.buf[..len])));
                            break;
                        } else if is_sentence_start(b) {
                            // Another sentence began before this one ended: a collision
                            // (iSync injects its own sentences mid-packet) or a lost
                            // line ending. The unfinished one cannot be trusted.
                            on_frame(Frame::Skipped(LineKind::Truncated));
                            self.start_sentence(b, &mut on_frame);
                            break;
                        } else if !is_printable(b) {
                            // Binary bytes inside a sentence: UBX frames interleaved
                            // with NMEA on u-blox receivers, or line noise.
                            on_frame(Frame::Skipped(LineKind::Truncated));
                            self.state = FramerState::Hunting;
                            self.len = 0;
                            self.junk = Some(LineKind::Binary);
                            break;
                        } else if self.len == MAX_SENTENCE_LEN {
                            self.state = FramerState::Overlong;
                            self.len = 0;
                            break;
                        } else {
                            self.buf[self.len] = b;
                            self.len += 1;
                        }
                    }
                }
                FramerState::Overlong => {
                    while i < input.len() {
                        let b = input[i];
                        i += 1;
                        if is_line_end(b) {
                            on_frame(Frame::Skipped(LineKind::TooLong));
                            self.state = FramerState::Hunting;
                            break;
                        } else if is_sentence_start(b) {
                            on_frame(Frame::Skipped(LineKind::TooLong));
                            self.start_sentence(b, &mut on_frame);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an unfinished last sentence is still offered, because a
    /// recording often stops right after the checksum without a final line ending
    /// (its checksum decides whether it is complete).
    pub fn finish(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        self.flush_junk(&mut on_frame);
        match self.state {
            FramerState::InSentence if self.len > 0 => {
                let len = self.len;
                self.len = 0;
                on_frame(Frame::Sentence(trim_end(&self.buf[..len])));
            }
            FramerState::Overlong => on_frame(Frame::Skipped(LineKind::TooLong)),
            _ => {}
        }
        self.state = FramerState::Hunting;
        self.len = 0;
    }
}

fn trim_end(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && s[end - 1] == b' ' {
        end -= 1;
    }
    &s[..end]
}

/// The NMEA checksum: XOR of every byte between `$` and `*`.
pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |c, b| c ^ b)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The sentence types that contribute to a fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SentenceKind {
    /// Fix data: time, position, quality, satellites, HDOP, altitude.
    #[default]
    Gga,
    /// Recommended minimum: time, date, status, position, speed, course.
    Rmc,
    /// Geographic position: position, time, status.
    Gll,
    /// Multi-constellation fix data.
    Gns,
    /// DOP and active satellites: fix dimension, HDOP.
    Gsa,
    /// Course and speed over ground.
    Vtg,
    /// Pseudorange error statistics: error estimate.
    Gst,
    /// Satellite fault detection: error estimate.
    Gbs,
    /// Date and time.
    Zda,
}

impl SentenceKind {
    /// Every kind.
    pub const ALL: [SentenceKind; 9] = [
        SentenceKind::Gga,
        SentenceKind::Rmc,
        SentenceKind::Gll,
        SentenceKind::Gns,
        SentenceKind::Gsa,
        SentenceKind::Vtg,
        SentenceKind::Gst,
        SentenceKind::Gbs,
        SentenceKind::Zda,
    ];

    fn from_code(code: &[u8]) -> Option<Self> {
        Some(match code {
            b"GGA" => SentenceKind::Gga,
            b"RMC" => SentenceKind::Rmc,
            b"GLL" => SentenceKind::Gll,
            b"GNS" => SentenceKind::Gns,
            b"GSA" => SentenceKind::Gsa,
            b"VTG" => SentenceKind::Vtg,
            b"GST" => SentenceKind::Gst,
            b"GBS" => SentenceKind::Gbs,
            b"ZDA" => SentenceKind::Zda,
            _ => return None,
        })
    }

    /// True for sentences that carry a position (and so open an epoch).
    pub fn has_position(self) -> bool {
        matches!(self, SentenceKind::Gga | SentenceKind::Rmc | SentenceKind::Gll | SentenceKind::Gns)
    }
}

/// A calendar date as a receiver reported it (before any rollover correction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NmeaDate {
    /// Full year (two-digit RMC years are read as 1983..=2082).
    pub year: i32,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month, 1..=31.
    pub day: u8,
}

/// What one sentence says about its epoch. Absent fields are `None`; the assembler
/// merges observations field by field.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Which sentence this came from.
    pub kind: SentenceKind,
    /// Time of day in milliseconds since UTC midnight, if the sentence has one.
    pub tod_ms: Option<u32>,
    /// Calendar date (RMC, ZDA).
    pub date: Option<NmeaDate>,
    /// Latitude and longitude in degrees.
    pub position: Option<(f64, f64)>,
    /// Altitude above mean sea level, metres.
    pub alt_m: Option<f64>,
    /// Speed over ground, metres per second.
    pub speed_mps: Option<f64>,
    /// Course over ground, degrees true.
    pub course_deg: Option<f64>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Satellites used in the fix.
    pub sats: Option<u8>,
    /// Horizontal error estimate, metres (GST, GBS).
    pub eph_m: Option<f64>,
    /// RMC status: A (or D) is `true`, V is `false`.
    pub rmc_valid: Option<bool>,
    /// GGA fix quality, 0..=8.
    pub gga_quality: Option<u8>,
    /// FAA mode indicator (RMC, GLL, VTG; GNS's first system).
    pub faa_mode: Option<char>,
    /// GLL status: A is `true`, V is `false`.
    pub gll_valid: Option<bool>,
    /// GSA fix dimension: 1 no fix, 2 two-dimensional, 3 three-dimensional.
    pub gsa_mode: Option<u8>,
}

impl Observation {
    /// True when the sentence itself says its position must not be used
    /// (GGA quality 0, RMC or GLL status V, FAA mode N).
    pub fn declares_invalid(&self) -> bool {
        self.gga_quality == Some(0)
            || self.rmc_valid == Some(false)
            || self.gll_valid == Some(false)
            || self.faa_mode == Some('N')
    }
}

/// The result of decoding one framed sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoded {
    /// A sentence that contributes to a fix.
    Observation(Observation),
    /// Not used for a fix, or refused; the kind says which.
    Skipped(LineKind),
}

fn tod_ms(t: NaiveTime) -> u32 {
    // Receivers report at most millisecond resolution; the nmea crate rounds the
    // fraction to nanoseconds, so rounding back to milliseconds is exact.
    t.num_seconds_from_midnight() * 1000 + (t.nanosecond() + 500_000) / 1_000_000
}

fn nmea_date(d: NaiveDate) -> Option<NmeaDate> {
    Some(NmeaDate { year: d.year(), month: u8::try_from(d.month()).ok()?, day: u8::try_from(d.day()).ok()? })
}

fn faa_char(mode: FaaMode) -> char {
    match mode {
        FaaMode::Autonomous => 'A',
        FaaMode::Caution => 'C',
        FaaMode::Differential => 'D',
        FaaMode::Estimated => 'E',
        FaaMode::FloatRtk => 'F',
        FaaMode::Manual => 'M',
        FaaMode::DataNotValid => 'N',
        FaaMode::Precise => 'P',
        FaaMode::FixedRtk => 'R',
        FaaMode::Simulator => 'S',
        FaaMode::Unsafe => 'U',
    }
}

fn fix_type_quality(t: FixType) -> u8 {
    match t {
        FixType::Invalid => 0,
        FixType::Gps => 1,
        FixType::DGps => 2,
        FixType::Pps => 3,
        FixType::Rtk => 4,
        FixType::FloatRtk => 5,
        FixType::Estimated => 6,
        FixType::Manual => 7,
        FixType::Simulation => 8,
    }
}

fn fix_type_faa(t: FixType) -> char {
    match t {
        FixType::Invalid => 'N',
        FixType::Gps => 'A',
        FixType::DGps | FixType::Pps => 'D',
        FixType::Rtk => 'R',
        FixType::FloatRtk => 'F',
        FixType::Estimated => 'E',
        FixType::Manual => 'M',
        FixType::Simulation => 'S',
    }
}

/// The `nmea` crate reads most fields as `f32`; widening 1.3f32 directly gives
/// 1.2999999523162842. Going through the shortest decimal that round-trips gives back
/// the digits the receiver sent.
fn widen(x: f32) -> Option<f64> {
    if !x.is_finite() {
        return None;
    }
    x.to_string().parse().ok()
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn position(lat: Option<f64>, lon: Option<f64>) -> Option<(f64, f64)> {
    match (lat, lon) {
        (Some(lat), Some(lon))
            if lat.is_finite()
                && lon.is_finite()
                && (-90.0..=90.0).contains(&lat)
                && (-180.0..=180.0).contains(&lon) =>
        {
            Some((lat, lon))
        }
        _ => None,
    }
}

/// [`decode_sentence`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodedSentence {
    /// What the sentence said, or why it was skipped.
    pub decoded: Decoded,
    /// True when the sentence had no checksum and was accepted under
    /// [`ChecksumPolicy::AllowMissing`].
    pub unchecked: bool,
}

/// Decodes one framed sentence: checksum, address, and the `nmea` crate's parser for
/// the sentence types that contribute to a fix.
pub fn decode_sentence(sentence: &[u8], policy: ChecksumPolicy) -> DecodedSentence {
    let (decoded, unchecked) = decode_inner(sentence, policy);
    DecodedSentence { decoded, unchecked }
}

fn decode_inner(sentence: &[u8], policy: ChecksumPolicy) -> (Decoded, bool) {
    let unchecked;
    let Some((&start, rest)) = sentence.split_first() else {
        return (Decoded::Skipped(LineKind::Malformed), false);
    };
    // Split off and verify the checksum.
    let body = match rest.iter().rposition(|&b| b == b'*') {
        Some(star) => {
            let (body, tail) = rest.split_at(star);
            let expected = match tail {
                [b'*', hi, lo] => hex_digit(*hi).zip(hex_digit(*lo)).map(|(hi, lo)| hi << 4 | lo),
                _ => None,
            };
            if expected != Some(checksum(body)) {
                return (Decoded::Skipped(LineKind::BadChecksum), false);
            }
            unchecked = false;
            body
        }
        None => {
            if policy == ChecksumPolicy::Require {
                return (Decoded::Skipped(LineKind::NoChecksum), false);
            }
            unchecked = true;
            rest
        }
    };
    if start == b'!' {
        return (Decoded::Skipped(LineKind::Encapsulated), unchecked);
    }
    let Some(comma) = body.iter().position(|&b| b == b',') else {
        // A checksummed sentence with no fields ($RFTXT... boot banners).
        return (Decoded::Skipped(LineKind::Unused), unchecked);
    };
    let (address, data) = (&body[..comma], &body[comma + 1..]);
    if address.first() == Some(&b'P') {
        return (Decoded::Skipped(LineKind::Proprietary), unchecked);
    }
    // Anything but a two-letter talker and a three-letter type ($LOG108, $SNRSTAT)
    // is some vendor's own sentence that forgot the P prefix.
    let [t0, t1, c0, c1, c2] = address else {
        return (Decoded::Skipped(LineKind::Unused), unchecked);
    };
    if !(t0.is_ascii_alphanumeric() && t1.is_ascii_alphanumeric()) {
        return (Decoded::Skipped(LineKind::Unused), unchecked);
    }
    let Some(kind) = SentenceKind::from_code(&[*c0, *c1, *c2]) else {
        return (Decoded::Skipped(LineKind::Unused), unchecked);
    };
    // The framer only passes printable ASCII, so these cannot fail.
    let (Ok(talker), Ok(data)) = (std::str::from_utf8(&address[..2]), std::str::from_utf8(data)) else {
        return (Decoded::Skipped(LineKind::Malformed), unchecked);
    };
    match parse_fields(kind, talker, data) {
        Some(obs) => (Decoded::Observation(obs), unchecked),
        None => (Decoded::Skipped(LineKind::Malformed), unchecked),
    }
}

fn nmea_sentence<'a>(talker: &'a str, kind: SentenceKind, data: &'a str) -> NmeaSentence<'a> {
    let message_id = match kind {
        SentenceKind::Gga => SentenceType::GGA,
        SentenceKind::Rmc => SentenceType::RMC,
        SentenceKind::Gll => SentenceType::GLL,
        SentenceKind::Gns => SentenceType::GNS,
        SentenceKind::Gsa => SentenceType::GSA,
        SentenceKind::Vtg => SentenceType::VTG,
        SentenceKind::Gst => SentenceType::GST,
        SentenceKind::Gbs => SentenceType::GBS,
        SentenceKind::Zda => SentenceType::ZDA,
    };
    NmeaSentence {
        talker_id: talker,
        message_id,
        data,
        // The crate's per-sentence parsers do not look at the checksum; ours was
        // verified above (or was absent and allowed by policy).
        checksum: 0,
    }
}

/// Parses the fields with the `nmea` crate; when it refuses a sentence that real
/// receivers send and gpsd accepts, repairs the known quirks and tries once more, or
/// reads the few fields we need directly.
fn parse_fields(kind: SentenceKind, talker: &str, data: &str) -> Option<Observation> {
    // nmea 0.8 reads GBS's error fields with its latitude/longitude parser, so it
    // refuses every real GBS; GBS is read here.
    if kind == SentenceKind::Gbs {
        return parse_gbs_fields(data);
    }
    if let Some(obs) = parse_with_crate(kind, talker, data) {
        return Some(obs);
    }
    if kind == SentenceKind::Gsa {
        return parse_gsa_fields(data);
    }
    parse_with_crate(kind, talker, &repair(kind, data)?)
}

/// Rewrites the receiver quirks the `nmea` crate is strict about. Only called after the
/// crate refused the sentence, so well-formed input pays nothing.
fn repair(kind: SentenceKind, data: &str) -> Option<String> {
    let mut fields: Vec<&str> = data.split(',').collect();
    match kind {
        // NMEA 2.x GLL ends at the status field; the crate wants the 2.3 FAA mode field.
        SentenceKind::Gll if fields.len() == 6 => fields.push(""),
        // GNS has one mode character per constellation ("AANN", "AAAAN"); the crate
        // reads at most two. Keep the best one: the fix is valid if any system's is.
        SentenceKind::Gns => {
            let mode = fields.get_mut(5)?;
            *mode = best_faa_mode(mode);
        }
        // Local zone hours written with a plus sign ("+00").
        SentenceKind::Zda => {
            for field in fields.iter_mut().skip(4) {
                *field = field.trim_start_matches('+');
            }
        }
        // Magnetic variation without a direction, or with N: drop it, we never use it.
        SentenceKind::Rmc if fields.len() >= 11 => {
            fields[9] = "";
            fields[10] = "";
        }
        // An empty fix quality is what gpsd reads as 0 (no fix).
        SentenceKind::Gga if fields.get(5) == Some(&"") => fields[5] = "0",
        _ => return None,
    }
    Some(fields.join(","))
}

fn best_faa_mode(modes: &str) -> &'static str {
    const VALID: [(char, &str); 7] =
        [('R', "R"), ('F', "F"), ('P', "P"), ('D', "D"), ('A', "A"), ('E', "E"), ('M', "M")];
    VALID.iter().find(|(c, _)| modes.contains(*c)).map_or("N", |&(_, s)| s)
}

/// Time of day from an `hhmmss[.sss]` field, in milliseconds.
fn parse_tod_field(field: &str) -> Option<u32> {
    let (hms, frac) = field.split_once('.').unwrap_or((field, ""));
    if hms.len() != 6 || !hms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u32 = hms.get(0..2)?.parse().ok()?;
    let m: u32 = hms.get(2..4)?.parse().ok()?;
    let s: u32 = hms.get(4..6)?.parse().ok()?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Milliseconds from the first three fraction digits, rounded by the fourth.
    let mut ms = 0;
    for (i, b) in frac.bytes().take(4).enumerate() {
        let digit = u32::from(b - b'0');
        match i {
            0 => ms += 100 * digit,
            1 => ms += 10 * digit,
            2 => ms += digit,
            _ => ms += u32::from(digit >= 5),
        }
    }
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

fn parse_gbs_fields(data: &str) -> Option<Observation> {
    let mut fields = data.split(',');
    let tod_ms = parse_tod_field(fields.next()?);
    let lat: Option<f64> = fields.next().and_then(|f| f.parse().ok());
    let lon: Option<f64> = fields.next().and_then(|f| f.parse().ok());
    Some(Observation {
        kind: SentenceKind::Gbs,
        tod_ms,
        eph_m: lat.zip(lon).and_then(|(a, b)| finite(a.hypot(b))),
        ..Observation::default()
    })
}

/// GSA's fix dimension and HDOP, for sentences whose DOP fields the crate refuses
/// (empty VDOP, no DOPs at all, a fourth DOP-like field).
fn parse_gsa_fields(data: &str) -> Option<Observation> {
    let fields: Vec<&str> = data.split(',').collect();
    let gsa_mode = match *fields.get(1)? {
        "1" => 1,
        "2" => 2,
        "3" => 3,
        _ => return None,
    };
    Some(Observation {
        kind: SentenceKind::Gsa,
        gsa_mode: Some(gsa_mode),
        hdop: fields.get(15).and_then(|f| f.parse::<f64>().ok()).and_then(finite),
        ..Observation::default()
    })
}

fn parse_with_crate(kind: SentenceKind, talker: &str, data: &str) -> Option<Observation> {
    let s = nmea_sentence(talker, kind, data);
    let mut obs = Observation { kind, ..Observation::default() };
    match kind {
        SentenceKind::Gga => {
            let d = parse_gga(s).ok()?;
            obs.tod_ms = d.fix_time.map(tod_ms);
            obs.position = position(d.latitude, d.longitude);
            obs.gga_quality = d.fix_type.map(fix_type_quality);
            obs.sats = d.fix_satellites.and_then(|n| u8::try_from(n).ok());
            obs.hdop = d.hdop.and_then(widen);
            obs.alt_m = d.altitude.and_then(widen);
        }
        SentenceKind::Rmc => {
            let d = parse_rmc(s).ok()?;
            obs.tod_ms = d.fix_time.map(tod_ms);
            obs.date = d.fix_date.and_then(nmea_date);
            obs.position = position(d.lat, d.lon);
            obs.rmc_valid = Some(d.status_of_fix != RmcStatusOfFix::Invalid);
            obs.speed_mps = d.speed_over_ground.and_then(widen).map(|k| k * MPS_PER_KNOT);
            obs.course_deg = d.true_course.and_then(widen);
            obs.faa_mode = d.faa_mode.map(faa_char);
        }
        SentenceKind::Gll => {
            let d = parse_gll(s).ok()?;
            obs.tod_ms = d.fix_time.map(tod_ms);
            obs.position = position(d.latitude, d.longitude);
            obs.gll_valid = Some(d.valid);
            obs.faa_mode = d.faa_mode.map(faa_char);
        }
        SentenceKind::Gns => {
            let d = parse_gns(s).ok()?;
            obs.tod_ms = d.fix_time.map(tod_ms);
            obs.position = position(d.lat, d.lon);
            obs.faa_mode = Some(fix_type_faa(FixType::from(d.faa_modes)));
            obs.sats = u8::try_from(d.nsattelites).ok();
            obs.hdop = d.hdop.and_then(widen);
            obs.alt_m = d.alt.and_then(widen);
        }
        SentenceKind::Gsa => {
            let d = parse_gsa(s).ok()?;
            obs.gsa_mode = Some(match d.mode2 {
                GsaMode2::NoFix => 1,
                GsaMode2::Fix2D => 2,
                GsaMode2::Fix3D => 3,
            });
            obs.hdop = d.hdop.and_then(widen);
        }
        SentenceKind::Vtg => {
            let d = parse_vtg(s).ok()?;
            obs.speed_mps = d.speed_over_ground.and_then(widen).map(|k| k * MPS_PER_KNOT);
            obs.course_deg = d.true_course.and_then(widen);
        }
        SentenceKind::Gst => {
            let d = parse_gst(s).ok()?;
            obs.tod_ms = d.time.map(tod_ms);
            if let (Some(lat), Some(lon)) = (d.lat_sd, d.long_sd) {
                obs.eph_m = widen(lat).zip(widen(lon)).map(|(a, b)| a.hypot(b));
            }
        }
        SentenceKind::Gbs => return parse_gbs_fields(data),
        SentenceKind::Zda => {
            let d = parse_zda(s).ok()?;
            obs.tod_ms = d.utc_time.map(tod_ms);
            if let (Some(year), Some(month), Some(day)) = (d.year, d.month, d.day) {
                obs.date = Some(NmeaDate { year: i32::from(year), month, day });
            }
        }
    }
    Some(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], chunk: usize) -> Vec<String> {
        let mut framer = Framer::new();
        let mut out = Vec::new();
        let mut push = |f: Frame<'_>| {
            out.push(match f {
                Frame::Sentence(s) => String::from_utf8_lossy(s).into_owned(),
                Frame::Skipped(kind) => format!("<{kind}>"),
            });
        };
        for piece in input.chunks(chunk.max(1)) {
            framer.feed(piece, &mut push);
        }
        framer.finish(&mut push);
        out
    }

    fn observe(sentence: &str) -> Observation {
        match decode_sentence(sentence.as_bytes(), ChecksumPolicy::AllowMissing).decoded {
            Decoded::Observation(obs) => obs,
            Decoded::Skipped(kind) => panic!("{sentence} was skipped as {kind}"),
        }
    }

    fn skipped(sentence: &str, policy: ChecksumPolicy) -> Option<LineKind> {
        match decode_sentence(sentence.as_bytes(), policy).decoded {
            Decoded::Skipped(kind) => Some(kind),
            Decoded::Observation(_) => None,
        }
    }

    /// Adds the checksum, so tests can be written as plain sentences.
    fn with_checksum(body: &str) -> String {
        format!("${body}*{:02X}", checksum(body.as_bytes()))
    }

    const GGA: &str = "$GPGGA,193221.00,2037.72792,N,08704.08478,W,1,04,1.7,-30.40,M,-13.9,M,,*7D";
    const RMC: &str = "$GPRMC,193221.00,A,2037.7279,N,08704.0848,W,00.1,201.8,231207,01,W,A*2D";

    #[test]
    fn framing_does_not_depend_on_how_the_bytes_are_chunked() {
        let mut input = format!("# comment\n{GGA}\r\n").into_bytes();
        input.extend([0x00, 0xb5, 0x62]); // a UBX frame header
        input.extend(format!("junk{RMC}\r\n$GPGSV,1,1,0{GGA}").bytes());
        let whole = frames(&input, 4096);
        assert_eq!(whole, ["<not_a_sentence>", GGA, "<binary_junk>", RMC, "<truncated>", GGA]);
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(frames(&input, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn each_line_is_a_sentence_or_one_skip_of_its_kind() {
        let long = format!("$GPTXT,{}*00", "x".repeat(10 * MAX_SENTENCE_LEN));
        let cases: [(String, &[&str]); 7] = [
            // Lines end in CR LF, or in either alone.
            (format!("{GGA}\r\n{RMC}\r{GGA}\n"), &[GGA, RMC, GGA]),
            // Junk between sentences is counted once per run, by kind.
            (
                format!("# recorded by hand\r\n\u{1}\u{2}binary{GGA}\r\n"),
                &["<not_a_sentence>", "<binary_junk>", GGA],
            ),
            // A sentence interrupted by another is truncated and the second survives.
            (format!("$GPGSV,4,2,15,15,55{RMC}\r\n"), &["<truncated>", RMC]),
            // Binary bytes inside a sentence cut it off.
            (
                format!("$GNRMC,001053.00,A,4404.14083,N,12118.8\u{0}\u{ff}\r\n{GGA}\r\n"),
                &["<truncated>", "<binary_junk>", GGA],
            ),
            // An overlong sentence is refused without unbounded buffering.
            (format!("{long}\r\n{GGA}\r\n"), &["<too_long>", GGA]),
            // A stream that starts mid-sentence recovers at the next dollar.
            (format!(",1.7,-30.40,M,-13.9,M,,*7D\r\n{GGA}\r\n"), &["<not_a_sentence>", GGA]),
            // An unterminated last sentence is still offered.
            (GGA.to_owned(), &[GGA]),
        ];
        for (input, expected) in cases {
            assert_eq!(frames(input.as_bytes(), 4096), expected, "{input:?}");
        }
    }

    #[test]
    fn checksums_are_verified_and_may_be_lowercase() {
        assert_eq!(skipped(GGA, ChecksumPolicy::Require), None);
        let lower = GGA.replace("*7D", "*7d");
        assert_eq!(skipped(&lower, ChecksumPolicy::Require), None);
        let flipped = GGA.replace("2037.72792", "2037.72793");
        assert_eq!(skipped(&flipped, ChecksumPolicy::AllowMissing), Some(LineKind::BadChecksum));
        let garbled = GGA.replace("*7D", "*7");
        assert_eq!(skipped(&garbled, ChecksumPolicy::AllowMissing), Some(LineKind::BadChecksum));
    }

    #[test]
    fn a_missing_checksum_is_accepted_or_refused_by_policy() {
        let bare = "$GPZDA,222449,25,10,2010,00,00";
        let allowed = decode_sentence(bare.as_bytes(), ChecksumPolicy::AllowMissing);
        assert!(allowed.unchecked);
        assert!(matches!(allowed.decoded, Decoded::Observation(_)));
        assert_eq!(skipped(bare, ChecksumPolicy::Require), Some(LineKind::NoChecksum));
    }

    #[test]
    fn non_position_sentences_are_classified_not_rejected() {
        let cases = [
            (with_checksum("PGRME,9.1,M,15.0,M,12.0,M"), LineKind::Proprietary),
            (with_checksum("GPGSV,1,1,01,28,14,150,41"), LineKind::Unused),
            (with_checksum("SDDBT,17.5,f,5.3,M,2.9,F"), LineKind::Unused),
            (with_checksum("LOG108,1,100,100,0,0,5,0,4,462"), LineKind::Unused),
            ("!AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0*26".to_owned(), LineKind::Encapsulated),
        ];
        for (sentence, kind) in cases {
            assert_eq!(skipped(&sentence, ChecksumPolicy::Require), Some(kind), "{sentence}");
        }
    }

    #[test]
    fn gga_gives_time_position_quality_satellites_hdop_and_altitude() {
        let obs = observe(GGA);
        assert_eq!(obs.kind, SentenceKind::Gga);
        assert_eq!(obs.tod_ms, Some(((19 * 60 + 32) * 60 + 21) * 1000));
        let (lat, lon) = obs.position.unwrap_or_default();
        assert!((lat - 20.628_798_667).abs() < 1e-9, "{lat}");
        assert!((lon + 87.068_079_667).abs() < 1e-9, "{lon}");
        assert_eq!(obs.gga_quality, Some(1));
        assert_eq!(obs.sats, Some(4));
        assert_eq!(obs.hdop.map(|h| (h * 10.0).round()), Some(17.0));
        assert_eq!(obs.alt_m.map(|a| (a * 10.0).round()), Some(-304.0));
    }

    #[test]
    fn rmc_gives_status_date_speed_in_metres_per_second_and_course() {
        let obs = observe(RMC);
        assert_eq!(obs.rmc_valid, Some(true));
        assert_eq!(obs.date, Some(NmeaDate { year: 2007, month: 12, day: 23 }));
        assert_eq!(obs.speed_mps.map(|v| (v * 1e4).round()), Some(514.0));
        assert_eq!(obs.course_deg.map(|c| (c * 10.0).round()), Some(2018.0));
        assert_eq!(obs.faa_mode, Some('A'));
    }

    #[test]
    fn every_constellation_talker_is_read_alike() {
        for talker in ["GP", "GN", "GL", "GA", "BD", "GB", "GQ"] {
            let sentence = with_checksum(&format!(
                "{talker}GGA,120000.00,4807.038,N,01131.324,E,1,08,0.9,545.4,M,46.9,M,,"
            ));
            assert!(observe(&sentence).position.is_some(), "{talker}");
        }
    }

    #[test]
    fn missing_optional_fields_are_absent_not_errors() {
        let obs = observe(&with_checksum("GPGGA,120000.00,4807.038,N,01131.324,E,1,,,,M,,M,,"));
        assert!(obs.position.is_some());
        assert_eq!((obs.sats, obs.hdop, obs.alt_m), (None, None, None));
        let no_fix = observe(&with_checksum("GPRMC,120000.00,V,,,,,,,,,,N"));
        assert_eq!(no_fix.position, None);
        assert_eq!(no_fix.rmc_valid, Some(false));
        assert!(no_fix.declares_invalid());
    }

    #[test]
    fn nmea_2_gll_without_a_mode_field_is_repaired() {
        let obs = observe("$GPGLL,4527.458,S,16709.165,E,225309,A*3E");
        assert_eq!(obs.gll_valid, Some(true));
        assert_eq!(obs.tod_ms, Some(((22 * 60 + 53) * 60 + 9) * 1000));
        assert!(obs.position.is_some_and(|(lat, _)| lat < 0.0));
    }

    #[test]
    fn gns_with_one_mode_per_constellation_is_valid_if_any_system_is() {
        let obs = observe("$GNGNS,213712.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,*52");
        assert_eq!(obs.faa_mode, Some('A'));
        assert!(!obs.declares_invalid());
        let none = observe("$GNGNS,074150.799,,,,,NNNN,00,,,0.0,,0000*63");
        assert_eq!(none.faa_mode, Some('N'));
    }

    #[test]
    fn zda_with_a_signed_zone_and_gsa_with_missing_dops_are_read() {
        let zda = observe("$GPZDA,005947.00,08,07,2010,+00,00*4E");
        assert_eq!(zda.date, Some(NmeaDate { year: 2010, month: 7, day: 8 }));
        let gsa = observe("$GPGSA,A,2,01,03,,14,,,,,,,,,3.1,3.1,*1A");
        assert_eq!((gsa.gsa_mode, gsa.hdop), (Some(2), Some(3.1)));
    }

    #[test]
    fn time_fields_read_by_hand_keep_milliseconds() {
        assert_eq!(parse_tod_field("131519"), Some(47_719_000));
        assert_eq!(parse_tod_field("131519.5"), Some(47_719_500));
        assert_eq!(parse_tod_field("131519.9996"), Some(47_720_000));
        assert_eq!(parse_tod_field("1315"), None);
        assert_eq!(parse_tod_field("251519.00"), None);
    }

    #[test]
    fn gbs_and_gst_give_an_error_estimate_in_metres() {
        let gbs = observe("$GPGBS,131519.00,0.7,0.5,1.1,02,,30.9,12.6*40");
        assert_eq!(gbs.eph_m.map(|e| (e * 1000.0).round()), Some(860.0));
        let gst = observe("$GPGST,131519.00,11,,,,0.70,0.49,1.1*53");
        assert!(gst.eph_m.is_some_and(|e| (e - 0.854).abs() < 0.001));
    }
}
