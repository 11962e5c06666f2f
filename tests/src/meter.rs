//! A byte meter for the link between a van and its broker, fed by [`crate::LossyProxy`]:
//! per connection and direction, the TCP payload bytes and the reads they arrived in, in
//! the phase of the run the bench has set, and what the bytes were.
//!
//! What the bytes were depends on the [`Framing`]: over TLS the meter reads the record
//! headers (plaintext in every TLS version) and the two hellos, so it can tell handshake
//! from application data, see whether the client offered a session ticket and whether the
//! server took it (a TLS 1.3 ServerHello carries `pre_shared_key` only on a resumption),
//! and how many bytes a connection cost until the broker's CONNACK. Over plain MQTT it
//! reads each packet's fixed header and a PUBLISH's topic, and tallies packets by type and
//! by the topic's last level (`evt`, `pos`, `blob`, `state`, `ack`, `route`, ...).
//!
//! TCP/IP headers never reach a proxy; [`Flow::segments`] estimates the segments a
//! cellular link would carry: each read is one segment per started [`MSS`] bytes (the
//! sender writes with `TCP_NODELAY`, so a write is what goes out together; on loopback a
//! read can merge two writes, which makes this a slight undercount).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Maximum segment size of a 1500-byte MTU path with TCP timestamps.
pub const MSS: u64 = 1448;
/// IPv4 (20) + TCP (20) + the timestamp option (12) bytes per segment.
pub const TCP_IP_HEADER: u64 = 52;
/// Segments without payload per connection: the three-way handshake and two FINs with
/// their ACKs.
pub const TCP_CONTROL_SEGMENTS: u64 = 7;
/// Body bytes kept of each framed unit (enough for a ClientHello, a CONNECT's keepalive
/// and a PUBLISH's topic).
const CAPTURE: usize = 2048;
/// TLS 1.3 adds this much to each record's plaintext: the inner content type and the AEAD
/// tag (AES-GCM and ChaCha20-Poly1305 both use 16 bytes).
pub const TLS13_RECORD_EXPANSION: usize = 17;
/// The record header.
pub const TLS_RECORD_HEADER: usize = 5;

/// How the bytes on the link are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Count only.
    Raw,
    /// TLS records (the meter cannot read what they carry).
    Tls,
    /// Plain MQTT 3.1.1 packets.
    Mqtt,
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the van to the broker.
    Up,
    /// From the broker to the van.
    Down,
}

/// The part of a run bytes are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// From start until the measured span (connecting, the route).
    Setup = 0,
    /// The measured span (the drive).
    Drive = 1,
    /// After it (draining, shutting down).
    Teardown = 2,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 3] = [Phase::Setup, Phase::Drive, Phase::Teardown];
}

/// A count of units and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Units (packets or records).
    pub count: u64,
    /// Their bytes, headers included.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.count += other.count;
        self.bytes += other.bytes;
    }
}

/// One direction of one connection.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// TCP payload bytes per phase.
    pub bytes: [u64; 3],
    /// Reads per phase.
    pub reads: [u64; 3],
    /// Estimated data segments per phase (each read split at [`MSS`]).
    pub segments: [u64; 3],
    /// Framed units by kind, per phase.
    pub kinds: BTreeMap<String, [Tally; 3]>,
    framer: Framer,
}

impl Flow {
    /// Bytes over every phase.
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

/// What the TLS hellos of a connection said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsHellos {
    /// The client offered a session ticket (`pre_shared_key` in its ClientHello).
    pub offered_ticket: bool,
    /// The server resumed (`pre_shared_key` in its ServerHello).
    pub resumed: bool,
    /// The ServerHello chose TLS 1.3 (`supported_versions`).
    pub tls13: bool,
    /// A ServerHello was seen.
    pub server_hello: bool,
}

/// One TCP connection through the proxy.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The phase it opened in.
    pub opened_in: Phase,
    /// Van to broker.
    pub up: Flow,
    /// Broker to van.
    pub down: Flow,
    /// TLS hellos, over TLS.
    pub tls: TlsHellos,
    /// Bytes up and down until the end of the broker's CONNACK (TLS handshake, session
    /// tickets, CONNECT and CONNACK); `None` until a CONNACK was seen.
    pub setup: Option<[u64; 2]>,
    /// The keepalive the client asked for in its CONNECT (plain MQTT only), seconds.
    pub keepalive_s: Option<u16>,
    /// The connection has closed.
    pub closed: bool,
    up_before_connack: u64,
}

impl Connection {
    /// Bytes both ways over every phase.
    pub fn total(&self) -> u64 {
        self.up.total() + self.down.total()
    }
}

/// The meter: one per proxy.
#[derive(Debug)]
pub struct Meter {
    framing: Framing,
    phase: AtomicUsize,
    connections: Mutex<Vec<Connection>>,
}

impl Meter {
    /// A meter reading the link as `framing`.
    pub fn new(framing: Framing) -> Meter {
        Meter { framing, phase: AtomicUsize::new(Phase::Setup as usize), connections: Mutex::new(Vec::new()) }
    }

    /// How the link is read.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Counts what follows in `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as usize, Ordering::SeqCst);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Setup,
            1 => Phase::Drive,
            _ => Phase::Teardown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new connection; returns its index.
    pub fn open(&self) -> usize {
        let mut connections = self.lock();
        connections.push(Connection {
            opened_in: self.phase(),
            up: Flow { framer: Framer::new(self.framing), ..Flow::default() },
            down: Flow { framer: Framer::new(self.framing), ..Flow::default() },
            tls: TlsHellos::default(),
            setup: None,
            keepalive_s: None,
            closed: false,
            up_before_connack: 0,
        });
        connections.len() - 1
    }

    /// The connection closed.
    pub fn close(&self, index: usize) {
        if let Some(c) = self.lock().get_mut(index) {
            c.closed = true;
        }
    }

    /// Bytes read from one side of connection `index`, about to be written to the other.
    pub fn record(&self, index: usize, direction: Direction, bytes: &[u8]) {
        let phase = self.phase() as usize;
        let framing = self.framing;
        let mut connections = self.lock();
        let Some(c) = connections.get_mut(index) else { return };
        let n = bytes.len() as u64;
        let flow = match direction {
            Direction::Up => &mut c.up,
            Direction::Down => &mut c.down,
        };
        flow.bytes[phase] += n;
        flow.reads[phase] += 1;
        flow.segments[phase] += n.div_ceil(MSS);
        let mut units = Vec::new();
        flow.framer.feed(bytes, &mut units);
        let mut connack_end = None;
        for unit in units {
            let kind = match framing {
                Framing::Raw => continue,
                Framing::Tls => tls_kind(&unit, &mut c.tls),
                Framing::Mqtt => {
                    if unit.head[0] >> 4 == 1 {
                        c.keepalive_s = connect_keepalive(&unit.body);
                    }
                    mqtt_kind(&unit)
                }
            };
            if direction == Direction::Down
                && c.setup.is_none()
                && connack_end.is_none()
                && is_connack(framing, &unit)
            {
                connack_end = Some(unit.end);
            }
            let flow = match direction {
                Direction::Up => &mut c.up,
                Direction::Down => &mut c.down,
            };
            flow.kinds.entry(kind).or_default()[phase].add(unit.len);
        }
        if c.setup.is_none() {
            match (direction, connack_end) {
                (Direction::Up, _) => c.up_before_connack += n,
                (Direction::Down, Some(end)) => {
                    let down_before: u64 = c.down.total() - n + end as u64;
                    c.setup = Some([c.up_before_connack, down_before]);
                }
                (Direction::Down, None) => {}
            }
        }
    }

    /// Every connection so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.lock().clone()
    }
}

/// A framed unit: a TLS record or an MQTT packet.
#[derive(Debug)]
struct Unit {
    /// The header: 5 bytes of a TLS record, or an MQTT fixed header.
    head: Vec<u8>,
    /// The first [`CAPTURE`] bytes of the body.
    body: Vec<u8>,
    /// Header and body bytes.
    len: usize,
    /// Offset just past the unit in the chunk that completed it.
    end: usize,
}

/// Splits a byte stream into units across reads.
#[derive(Debug, Clone)]
struct Framer {
    framing: Framing,
    head: Vec<u8>,
    body: Vec<u8>,
    /// Body bytes still to come, once the header is complete.
    body_left: Option<usize>,
    body_len: usize,
    /// The stream could not be framed (not what the framing says); counting goes on.
    lost: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(Framing::Raw)
    }
}

impl Framer {
    fn new(framing: Framing) -> Framer {
        Framer { framing, head: Vec::new(), body: Vec::new(), body_left: None, body_len: 0, lost: false }
    }

    /// The body length once `head` is a whole header.
    fn header_done(&mut self) -> Option<usize> {
        match self.framing {
            Framing::Raw => None,
            Framing::Tls => (self.head.len() == TLS_RECORD_HEADER)
                .then(|| usize::from(u16::from_be_bytes([self.head[3], self.head[4]]))),
            Framing::Mqtt => {
                let last = *self.head.last()?;
                if self.head.len() < 2 || last & 0x80 != 0 {
                    if self.head.len() >= 5 {
                        self.lost = true;
                    }
                    return None;
                }
                let mut len = 0usize;
                for (i, b) in self.head[1..].iter().enumerate() {
                    len |= usize::from(b & 0x7f) << (7 * i);
                }
                Some(len)
            }
        }
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<Unit>) {
        if self.framing == Framing::Raw {
            return;
        }
        let mut i = 0;
        while i < chunk.len() && !self.lost {
            let left = match self.body_left {
                Some(left) => left,
                None => {
                    self.head.push(chunk[i]);
                    i += 1;
                    match self.header_done() {
                        Some(len) => {
                            self.body_left = Some(len);
                            self.body_len = len;
                            len
                        }
                        None => continue,
                    }
                }
            };
            let take = left.min(chunk.len() - i);
            let room = CAPTURE.saturating_sub(self.body.len()).min(take);
            self.body.extend_from_slice(&chunk[i..i + room]);
            i += take;
            let left = left - take;
            self.body_left = Some(left);
            if left == 0 {
                let head = std::mem::take(&mut self.head);
                let len = head.len() + self.body_len;
                out.push(Unit { head, body: std::mem::take(&mut self.body), len, end: i });
                self.body_left = None;
            }
        }
    }
}

fn is_connack(framing: Framing, unit: &Unit) -> bool {
    match framing {
        Framing::Raw => false,
        // CONNACK is the first MQTT packet from the broker and the only 4-byte one it can
        // send before anything else: a 21-byte application-data record in TLS 1.3. No
        // encrypted handshake message is that short.
        Framing::Tls => unit.head[0] == 23 && unit.len == TLS_RECORD_HEADER + 4 + TLS13_RECORD_EXPANSION,
        Framing::Mqtt => unit.head[0] >> 4 == 2,
    }
}

/// The kind of a TLS record, noting what its hellos say.
fn tls_kind(unit: &Unit, hellos: &mut TlsHellos) -> String {
    match unit.head[0] {
        22 => {
            match unit.body.first() {
                Some(1) => {
                    hellos.offered_ticket |= hello_extensions(&unit.body, true).contains(&(41, vec![]))
                }
                Some(2) => {
                    hellos.server_hello = true;
                    for (ext, data) in hello_extensions(&unit.body, false) {
                        match ext {
                            41 => hellos.resumed = true,
                            43 => hellos.tls13 |= data == [0x03, 0x04],
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            "handshake (plaintext)".into()
        }
        20 => "change_cipher_spec".into(),
        21 => "alert".into(),
        23 if unit.len == TLS_RECORD_HEADER + 2 + TLS13_RECORD_EXPANSION => {
            "encrypted, 2-byte MQTT (ping)".into()
        }
        23 => "encrypted".into(),
        other => format!("record type {other}"),
    }
}

/// The extensions of a ClientHello (`client`) or ServerHello body: (type, data). For a
/// ClientHello only the types are kept (data empty), which is all the meter asks.
fn hello_extensions(body: &[u8], client: bool) -> Vec<(u16, Vec<u8>)> {
    parse_hello(body, client).unwrap_or_default()
}

fn parse_hello(body: &[u8], client: bool) -> Option<Vec<(u16, Vec<u8>)>> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?])))
    };
    let mut at = 4 + 2 + 32; // handshake header, legacy version, random
    at += 1 + usize::from(*body.get(at)?); // session id
    if client {
        at += 2 + u16_at(at)?; // cipher suites
        at += 1 + usize::from(*body.get(at)?); // compression methods
    } else {
        at += 2 + 1; // cipher suite, compression method
    }
    let end = (at + 2 + u16_at(at)?).min(body.len());
    at += 2;
    let mut out = Vec::new();
    while at + 4 <= end {
        let ext = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16_at(at + 2)?;
        let data = body.get(at + 4..at + 4 + len)?;
        out.push((ext, if client { Vec::new() } else { data.to_vec() }));
        at += 4 + len;
    }
    Some(out)
}

/// The kind of an MQTT packet: its type, and a PUBLISH's topic kind (the last level).
fn mqtt_kind(unit: &Unit) -> String {
    let name = match unit.head[0] >> 4 {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => {
            let topic = unit
                .body
                .get(..2)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                .and_then(|l| unit.body.get(2..2 + l))
                .map(String::from_utf8_lossy);
            let kind = topic.as_deref().and_then(|t| t.rsplit('/').next()).unwrap_or("?").to_owned();
            return format!("PUBLISH {kind}");
        }
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "reserved",
    };
    name.into()
}

/// The keepalive field of a CONNECT body (MQTT 3.1.1 and 5: after the protocol name,
/// level and flags).
fn connect_keepalive(body: &[u8]) -> Option<u16> {
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let at = 2 + name_len + 2;
    Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt_publish(topic: &str, payload: usize) -> Vec<u8> {
        let body_len = 2 + topic.len() + payload;
        assert!(body_len < 128);
        let mut p = vec![0x30, u8::try_from(body_len).expect("short")];
        p.extend_from_slice(&u16::try_from(topic.len()).expect("short").to_be_bytes());
        p.extend_from_slice(topic.as_bytes());
        p.extend(std::iter::repeat_n(0u8, payload));
        p
    }

    #[test]
    fn mqtt_packets_split_across_reads_are_tallied_by_topic_kind() {
        let meter = Meter::new(Framing::Mqtt);
        let c = meter.open();
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 240, 0, 0];
        let mut up = connect.to_vec();
        up.extend(mqtt_publish("doorstep/v1/acme/van-1/pos", 40));
        up.extend(mqtt_publish("doorstep/v1/acme/van-1/evt", 20));
        up.extend([0xc0, 0]);
        for piece in up.chunks(7) {
            meter.record(c, Direction::Up, piece);
        }
        meter.record(c, Direction::Down, &[0x20, 2, 0, 0, 0xd0]);
        meter.set_phase(Phase::Drive);
        meter.record(c, Direction::Down, &[0]);
        let conn = &meter.connections()[0];
        assert_eq!(conn.keepalive_s, Some(240));
        assert_eq!(conn.up.kinds["PUBLISH pos"][0], Tally { count: 1, bytes: 2 + 2 + 26 + 40 });
        assert_eq!(conn.up.kinds["PUBLISH evt"][0].count, 1);
        assert_eq!(conn.up.kinds["PINGREQ"][0], Tally { count: 1, bytes: 2 });
        assert_eq!(conn.down.kinds["PINGRESP"][1], Tally { count: 1, bytes: 2 }, "counted when it ended");
        assert_eq!(conn.setup, Some([up.len() as u64, 4]));
        assert_eq!(conn.up.bytes[0], up.len() as u64);
        assert_eq!(conn.up.reads[0], up.len().div_ceil(7) as u64);
    }

    #[test]
    fn tls_records_show_a_resumption_and_the_cost_until_connack() {
        let meter = Meter::new(Framing::Tls);
        let c = meter.open();
        // ClientHello with a pre_shared_key extension (41), and a ServerHello taking it,
        // with supported_versions = TLS 1.3.
        let mut ch = vec![1, 0, 0, 0, 3, 3];
        ch.extend([0u8; 32]);
        ch.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        ch.extend([0, 4, 0, 41, 0, 0]);
        let mut sh = vec![2, 0, 0, 0, 3, 3];
        sh.extend([0u8; 32]);
        sh.extend([0, 0x13, 0x01, 0]);
        sh.extend([0, 12, 0, 43, 0, 2, 3, 4, 0, 41, 0, 2, 0, 0]);
        let record = |t: u8, body: &[u8]| {
            let mut r = vec![t, 3, 3];
            r.extend(u16::try_from(body.len()).expect("short").to_be_bytes());
            r.extend_from_slice(body);
            r
        };
        let up = record(22, &ch);
        meter.record(c, Direction::Up, &up);
        let finished_and_connect = [record(23, &[0; 53]), record(23, &[0; 30])].concat();
        meter.record(c, Direction::Up, &finished_and_connect);
        let mut down = record(22, &sh);
        down.extend(record(23, &[0; 70]));
        down.extend(record(23, &[0; 21])); // CONNACK
        down.extend(record(23, &[0; 19])); // a ping's answer, after it
        meter.record(c, Direction::Down, &down);
        let conn = &meter.connections()[0];
        assert_eq!(
            conn.tls,
            TlsHellos { offered_ticket: true, resumed: true, tls13: true, server_hello: true }
        );
        let up_total = (up.len() + finished_and_connect.len()) as u64;
        assert_eq!(conn.setup, Some([up_total, (down.len() - 24) as u64]));
        assert_eq!(conn.down.kinds["encrypted, 2-byte MQTT (ping)"][0].count, 1);
    }
}
