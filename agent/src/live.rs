//! The live position's pace: which fixes the uplink sends on the `pos` topic, and when.
//!
//! The live position is for someone looking at the van: the customer whose stop is next,
//! an operator at the console. Nobody watches most of the time, and every live PUBLISH
//! costs about 258 bytes on a metered cellular link (about 176 of MQTT, 30 of TLS record,
//! 52 of TCP/IP: see [`LIVE_PUBLISH_WIRE_BYTES`]). So the [`LivePacer`] sends a fix only
//! when it says something new, the way vehicle trackers do:
//!
//! - the van moved [`LiveConfig::min_distance_m`] from the last position sent;
//! - the van turned by [`LiveConfig::min_turn_deg`] while moving (heading taken over a
//!   [`HEADING_BASELINE_M`] baseline between fixes, so GNSS noise at walking pace or
//!   standing still never reads as a turn), at least [`TURN_MIN_MOVE_M`] from the last
//!   position sent;
//! - [`LiveConfig::heartbeat`] passed since the last send (a standing van costs one
//!   send per heartbeat and nothing else);
//! - while the hub says someone is watching ([`doorstep_proto::Watch`]), every
//!   `every_s` seconds.
//!
//! A watch ends on the van's own terms, whatever happens to the link: at the earlier of
//! its receipt plus `for_s` (the van's monotonic clock) and `issued_ms + for_s` by the
//! van's GNSS clock, when the van has one (a dated fix since start). A watch delivered
//! late, queued at the broker while the van drove through a dead zone, may therefore be
//! over on arrival and is ignored; one that ends while the link is down leaves the van at
//! its adaptive pace when it reconnects.
//!
//! Pure: fixes, watches and times (milliseconds of one monotonic clock, and the GNSS time
//! when known) in, decisions out. No clock is read here; the uplink feeds its own.

use std::time::Duration;

use doorstep_proto::{FixEvidence, Watch};

use crate::gate::distance_m;

/// Distance the van must cover between two fixes before their bearing is taken as its
/// heading, metres. GNSS noise wanders a few metres even with the van parked; over 25 m
/// a bearing is good to a few degrees.
pub const HEADING_BASELINE_M: f64 = 25.0;
/// Longest a heading baseline may take, ms: covering 25 m in more than 30 s (under
/// 3 km/h) is creeping in a queue or standing, and says nothing about a heading.
pub const HEADING_BASELINE_MS: u64 = 30_000;
/// Slowest reported speed that counts as moving for a heading, metres per second.
pub const MOVING_MPS: f64 = 2.0;
/// Least distance from the last position sent for a turn to be sent, metres: a
/// roundabout, a three-point turn or two corners in a row are one send, not three.
pub const TURN_MIN_MOVE_M: f64 = 100.0;
/// How early a watched send may come, ms: fixes arrive about once a second with some
/// jitter, and a send due at 5.0 s should go with the fix at 4.9 s, not wait for 5.9 s.
pub const PACE_SLACK_MS: u64 = 200;
/// Watches kept at once (the hub sends one per watcher kind and van, renewed at half
/// their length): the one ending first is forgotten when a new one comes.
pub const MAX_WATCHES: usize = 4;

/// Bytes one live position costs on the wire, estimated: MQTT PUBLISH (fixed header,
/// topic, signed position envelope: about 176 bytes for a typical fleet and device id,
/// measured in this module's tests), a TLS 1.3 record (5 header + 16 tag + 1 type, about
/// 30 with padding), and a TCP/IP segment (20 + 20 + 12 bytes of timestamps). The ACK
/// that comes back is not counted.
pub const LIVE_PUBLISH_WIRE_BYTES: u64 = 176 + 30 + 52;

/// Default [`LiveConfig::min_distance_m`].
pub const DEFAULT_MIN_DISTANCE_M: f64 = 400.0;
/// Default [`LiveConfig::min_turn_deg`].
pub const DEFAULT_MIN_TURN_DEG: f64 = 45.0;
/// Default [`LiveConfig::heartbeat`], seconds.
pub const DEFAULT_HEARTBEAT_S: u64 = 300;

/// When the live position is sent while nobody watches (`[live]` in the agent's config;
/// the default config text says what each value costs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveConfig {
    /// Send when the van is this far from the last position sent, metres.
    pub min_distance_m: f64,
    /// Send when the van's heading turned this much since the last send, degrees.
    pub min_turn_deg: f64,
    /// Send at least this often, even standing still.
    pub heartbeat: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            min_distance_m: DEFAULT_MIN_DISTANCE_M,
            min_turn_deg: DEFAULT_MIN_TURN_DEG,
            heartbeat: Duration::from_secs(DEFAULT_HEARTBEAT_S),
        }
    }
}

/// Why a fix is sent as the live position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing was sent before.
    First,
    /// The van moved [`LiveConfig::min_distance_m`].
    Distance,
    /// The van turned [`LiveConfig::min_turn_deg`].
    Turn,
    /// [`LiveConfig::heartbeat`] passed.
    Heartbeat,
    /// Someone watches and `every_s` passed.
    Watched,
}

impl Reason {
    /// The reason's name, for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::First => "first",
            Reason::Distance => "distance",
            Reason::Turn => "turn",
            Reason::Heartbeat => "heartbeat",
            Reason::Watched => "watched",
        }
    }
}

/// What became of a watch the hub sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Kept: the van sends every `every_s` until `until_ms` (monotonic), unless a faster
    /// watch sets a quicker pace meanwhile.
    Started {
        /// When it ends, on the pacer's monotonic clock, ms.
        until_ms: u64,
    },
    /// It ended before it arrived (by the van's GNSS clock): ignored.
    AlreadyOver {
        /// How long ago it ended, ms.
        ended_ms_ago: u64,
    },
}

/// The pace while watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// Send every this many seconds (the fastest of the watches running).
    pub every_s: u16,
    /// When the last of the running watches ends, monotonic ms.
    pub until_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sent {
    fix: FixEvidence,
    at_ms: u64,
    /// The heading the next turn is measured from: the van's when this fix was sent, or
    /// the first one known after (a van sent standing still has none).
    heading: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    until_ms: u64,
    every_ms: u64,
}

/// Decides which fixes become the live position (see the module documentation).
#[derive(Debug, Clone)]
pub struct LivePacer {
    config: LiveConfig,
    last: Option<Sent>,
    /// Start of the current heading baseline.
    anchor: Option<(FixEvidence, u64)>,
    /// The van's heading over the last baseline, degrees from north; `None` standing.
    heading: Option<f64>,
    watches: Vec<Running>,
}

impl LivePacer {
    /// A pacer that has sent nothing yet.
    pub fn new(config: LiveConfig) -> Self {
        Self { config, last: None, anchor: None, heading: None, watches: Vec::new() }
    }

    /// The settings.
    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// A new fix arrived at `now_ms`: whether to send it, and why. Call
    /// [`LivePacer::on_sent`] once it is really sent (not while the link is down: the
    /// next fix is then measured against what the hub last got).
    pub fn on_fix(&mut self, fix: &FixEvidence, now_ms: u64) -> Option<Reason> {
        self.observe(fix, now_ms);
        self.expire(now_ms);
        let Some(last) = self.last.as_mut() else { return Some(Reason::First) };
        if last.heading.is_none() {
            last.heading = self.heading;
        }
        let last = *last;
        if self.due(now_ms).is_some() {
            return Some(Reason::Watched);
        }
        let moved = distance_m(last.fix.lat(), last.fix.lon(), fix.lat(), fix.lon());
        if moved >= self.config.min_distance_m {
            return Some(Reason::Distance);
        }
        if let (Some(from), Some(now)) = (last.heading, self.heading)
            && moved >= TURN_MIN_MOVE_M
            && turn_deg(from, now) >= self.config.min_turn_deg
        {
            return Some(Reason::Turn);
        }
        if now_ms.saturating_sub(last.at_ms) >= duration_ms(self.config.heartbeat) {
            return Some(Reason::Heartbeat);
        }
        None
    }

    /// Whether a watch wants the newest fix sent now (`Some(Reason::Watched)`): a watch
    /// has just started, or its pace fell due without a new fix.
    pub fn due(&self, now_ms: u64) -> Option<Reason> {
        let every_ms = self.running(now_ms).map(|r| r.every_ms).min()?;
        let since = self.last.map_or(u64::MAX, |s| now_ms.saturating_sub(s.at_ms));
        (since.saturating_add(PACE_SLACK_MS) >= every_ms).then_some(Reason::Watched)
    }

    /// `fix` was sent at `now_ms`.
    pub fn on_sent(&mut self, fix: &FixEvidence, now_ms: u64) {
        self.last = Some(Sent { fix: *fix, at_ms: now_ms, heading: self.heading });
    }

    /// The hub's `watch` arrived at `now_ms`; `gnss_now_ms` is the van's GNSS time now
    /// (the last fix's time plus the monotonic time since), when it has had a fix.
    pub fn on_watch(&mut self, watch: &Watch, now_ms: u64, gnss_now_ms: Option<i64>) -> WatchOutcome {
        let for_ms = u64::from(watch.for_s) * 1000;
        let mut until_ms = now_ms.saturating_add(for_ms);
        if let Some(gnss_now) = gnss_now_ms {
            let ends_ms = watch.issued_ms.saturating_add(i64::from(watch.for_s) * 1000);
            let left_ms = ends_ms.saturating_sub(gnss_now);
            if left_ms <= 0 {
                return WatchOutcome::AlreadyOver { ended_ms_ago: left_ms.unsigned_abs() };
            }
            until_ms = until_ms.min(now_ms.saturating_add(left_ms.unsigned_abs()));
        }
        self.expire(now_ms);
        if self.watches.len() >= MAX_WATCHES
            && let Some(first) =
                self.watches.iter().enumerate().min_by_key(|(_, w)| w.until_ms).map(|(i, _)| i)
        {
            self.watches.swap_remove(first);
        }
        let every_ms = u64::from(watch.every_s.max(1)) * 1000;
        self.watches.push(Running { until_ms, every_ms });
        WatchOutcome::Started { until_ms }
    }

    /// Forgets the watches that ended by `now_ms`; returns whether one did.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.watches.len();
        self.watches.retain(|w| w.until_ms > now_ms);
        self.watches.len() != before
    }

    /// The pace while someone watches at `now_ms`, or `None`.
    pub fn watched(&self, now_ms: u64) -> Option<Watched> {
        let every_ms = self.running(now_ms).map(|r| r.every_ms).min()?;
        let until_ms = self.running(now_ms).map(|r| r.until_ms).max()?;
        Some(Watched { every_s: u16::try_from(every_ms / 1000).unwrap_or(u16::MAX), until_ms })
    }

    fn running(&self, now_ms: u64) -> impl Iterator<Item = &Running> {
        self.watches.iter().filter(move |w| w.until_ms > now_ms)
    }

    /// Updates the heading from the baseline that ends at `fix`.
    fn observe(&mut self, fix: &FixEvidence, now_ms: u64) {
        let Some((anchor, at_ms)) = self.anchor else {
            self.anchor = Some((*fix, now_ms));
            return;
        };
        let covered = distance_m(anchor.lat(), anchor.lon(), fix.lat(), fix.lon());
        let took_ms = now_ms.saturating_sub(at_ms);
        if covered >= HEADING_BASELINE_M && took_ms <= HEADING_BASELINE_MS {
            let moving = fix.speed_cmps.is_none_or(|v| f64::from(v) / 100.0 >= MOVING_MPS);
            self.heading = moving.then(|| bearing_deg(&anchor, fix));
            self.anchor = Some((*fix, now_ms));
        } else if took_ms > HEADING_BASELINE_MS {
            // Too slow to be driving: standing or creeping, so no heading.
            self.heading = None;
            self.anchor = Some((*fix, now_ms));
        }
    }
}

/// The initial bearing from `a` to `b`, degrees clockwise from north in [0, 360).
fn bearing_deg(a: &FixEvidence, b: &FixEvidence) -> f64 {
    let (p1, p2) = (a.lat().to_radians(), b.lat().to_radians());
    let dl = (b.lon() - a.lon()).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// The smaller angle between two headings, degrees in [0, 180].
fn turn_deg(from: f64, to: f64) -> f64 {
    let d = (to - from).rem_euclid(360.0);
    if d > 180.0 { 360.0 - d } else { d }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use doorstep_proto::{Channel, DeviceId, Envelope, Event, FleetId, HexBytes, SigningKey, Topic};
    use proptest::prelude::*;

    use super::*;

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000;
    /// Metres per degree of latitude.
    const M_PER_DEG: f64 = 111_195.0;

    /// A fix `north_m` and `east_m` from a point in Zurich, taken `at_ms` after T0.
    fn fix_at(at_ms: u64, north_m: f64, east_m: f64, speed_mps: Option<f64>) -> FixEvidence {
        let lat = 47.37 + north_m / M_PER_DEG;
        let lon = 8.54 + east_m / (M_PER_DEG * 47.37_f64.to_radians().cos());
        let fix = FixEvidence::new(T0 + i64::try_from(at_ms).expect("ms"), lat, lon);
        match speed_mps {
            Some(v) => fix.with_speed_mps(v),
            None => fix,
        }
    }

    /// The van standing at the point, `at_ms` after T0.
    fn parked(at_ms: u64) -> FixEvidence {
        fix_at(at_ms, 0.0, 0.0, Some(0.0))
    }

    /// A pacer with the default config that sent the parked van's position at 0.
    fn parked_and_sent() -> LivePacer {
        let mut pacer = LivePacer::new(LiveConfig::default());
        pacer.on_sent(&parked(0), 0);
        pacer
    }

    fn watch(issued_ms: i64, for_s: u16, every_s: u16) -> Watch {
        Watch { device: DeviceId::new("van-17").expect("id"), issued_ms, for_s, every_s }
    }

    /// Feeds `fixes` (time, fix) through a pacer as the uplink does with a link that is
    /// up; returns the sends.
    fn drive(pacer: &mut LivePacer, fixes: &[(u64, FixEvidence)]) -> Vec<(u64, Reason)> {
        let mut sent = Vec::new();
        for (at, fix) in fixes {
            if let Some(reason) = pacer.on_fix(fix, *at) {
                pacer.on_sent(fix, *at);
                sent.push((*at, reason));
            }
        }
        sent
    }

    #[test]
    fn a_van_driving_straight_sends_each_time_it_covers_the_minimum_distance() {
        let mut pacer = LivePacer::new(LiveConfig::default());
        // 10 m/s due north for 200 s: 2 km.
        let fixes: Vec<_> =
            (0..=200).map(|s| (s * 1000, fix_at(s * 1000, s as f64 * 10.0, 0.0, Some(10.0)))).collect();
        let sent = drive(&mut pacer, &fixes);
        let reasons: Vec<Reason> = sent.iter().map(|(_, r)| *r).collect();
        assert_eq!(reasons[0], Reason::First);
        assert!(reasons[1..].iter().all(|r| *r == Reason::Distance), "{sent:?}");
        assert!(sent.len() >= 5, "one send per 400 m over 2 km: {sent:?}");
        for pair in sent.windows(2) {
            assert!((40_000..=41_000).contains(&(pair[1].0 - pair[0].0)), "400 m at 10 m/s: {sent:?}");
        }
    }

    #[test]
    fn a_right_angle_turn_is_sent_once_the_new_heading_is_clear() {
        let mut pacer = LivePacer::new(LiveConfig::default());
        // North 120 m, then east: the turn is sent, once, about a baseline after the corner.
        let mut fixes = Vec::new();
        for s in 0..=12 {
            fixes.push((s * 1000, fix_at(s * 1000, s as f64 * 10.0, 0.0, Some(10.0))));
        }
        for s in 13..=30 {
            fixes.push((s * 1000, fix_at(s * 1000, 120.0, (s - 12) as f64 * 10.0, Some(10.0))));
        }
        let sent = drive(&mut pacer, &fixes);
        assert_eq!(
            sent.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            [Reason::First, Reason::Turn],
            "{sent:?}"
        );
        let (at, _) = sent[1];
        assert!((14_000..=16_000).contains(&at), "turn sent {at} ms in, the corner was at 12 s");
    }

    #[test]
    fn a_slight_bend_and_creeping_in_a_queue_send_nothing() {
        let mut pacer = LivePacer::new(LiveConfig::default());
        let mut fixes = Vec::new();
        // North, bending 30° to the east after 100 m: under the 45° turn.
        let (dx, dy) = (30_f64.to_radians().sin() * 10.0, 30_f64.to_radians().cos() * 10.0);
        for s in 0..=10 {
            fixes.push((s * 1000, fix_at(s * 1000, s as f64 * 10.0, 0.0, Some(10.0))));
        }
        for s in 11..=20 {
            let k = (s - 10) as f64;
            fixes.push((s * 1000, fix_at(s * 1000, 100.0 + k * dy, k * dx, Some(10.0))));
        }
        // Then creeping west at 0.5 m/s for two minutes: a 90° change, but not moving.
        let (n, e) = (100.0 + 10.0 * dy, 10.0 * dx);
        for s in 21..=140 {
            let k = (s - 20) as f64;
            fixes.push((s * 1000, fix_at(s * 1000, n, e - k * 0.5, Some(0.5))));
        }
        let sent = drive(&mut pacer, &fixes);
        assert_eq!(sent, [(0, Reason::First)]);
    }

    #[test]
    fn a_watch_ends_at_the_earlier_of_its_receipt_timer_and_the_issuing_clock() {
        let mut pacer = LivePacer::new(LiveConfig::default());
        // Received 40 s after it was issued: 80 s left by the clock, 120 s by the timer.
        let outcome = pacer.on_watch(&watch(T0, 120, 5), 1_000, Some(T0 + 40_000));
        assert_eq!(outcome, WatchOutcome::Started { until_ms: 81_000 });
        assert_eq!(pacer.watched(80_999).map(|w| w.every_s), Some(5));
        assert_eq!(pacer.watched(81_000), None);
        // A hub clock ahead of the van's never lengthens a watch past its timer.
        let mut pacer = LivePacer::new(LiveConfig::default());
        let outcome = pacer.on_watch(&watch(T0 + 600_000, 120, 5), 1_000, Some(T0));
        assert_eq!(outcome, WatchOutcome::Started { until_ms: 121_000 });
        // Without a GNSS clock, the timer alone.
        let mut pacer = LivePacer::new(LiveConfig::default());
        assert_eq!(pacer.on_watch(&watch(0, 60, 5), 7, None), WatchOutcome::Started { until_ms: 60_007 });
    }

    #[test]
    fn a_watch_delivered_after_it_ended_is_ignored() {
        let mut pacer = LivePacer::new(LiveConfig::default());
        // Issued, queued at the broker through a five-minute dead zone, delivered after.
        let outcome = pacer.on_watch(&watch(T0, 120, 5), 500_000, Some(T0 + 300_000));
        assert_eq!(outcome, WatchOutcome::AlreadyOver { ended_ms_ago: 180_000 });
        assert_eq!(pacer.watched(500_000), None);
        assert_eq!(pacer.due(500_000), None);
    }

    #[test]
    fn a_watch_sends_the_newest_fix_at_once_then_every_every_s() {
        let mut pacer = parked_and_sent();
        assert_eq!(pacer.due(10_000), None, "unwatched, nothing is due");
        pacer.on_watch(&watch(T0 + 10_000, 30, 5), 10_000, Some(T0 + 10_000));
        assert_eq!(pacer.due(10_000), Some(Reason::Watched), "the watcher gets a position now");
        pacer.on_sent(&parked(10_000), 10_000);
        let fixes: Vec<_> = (11..=60).map(|s| (s * 1000, parked(s * 1000))).collect();
        let sent = drive(&mut pacer, &fixes);
        let times: Vec<u64> = sent.iter().map(|(at, _)| *at).collect();
        assert_eq!(times, [15_000, 20_000, 25_000, 30_000, 35_000], "every 5 s until 40 s: {sent:?}");
    }

    #[test]
    fn the_fastest_of_several_watches_sets_the_pace_and_each_ends_on_its_own() {
        let mut pacer = LivePacer::new(LiveConfig::default());
        pacer.on_watch(&watch(T0, 300, 10), 0, Some(T0));
        pacer.on_watch(&watch(T0, 60, 2), 0, Some(T0));
        assert_eq!(pacer.watched(1_000), Some(Watched { every_s: 2, until_ms: 300_000 }));
        assert_eq!(pacer.watched(60_000), Some(Watched { every_s: 10, until_ms: 300_000 }));
        for i in 0..10 {
            pacer.on_watch(&watch(T0, 100 + i, 5), 0, Some(T0));
        }
        assert!(pacer.watches.len() <= MAX_WATCHES);
        assert!(pacer.expire(400_000));
        assert_eq!(pacer.watched(400_000), None);
    }

    #[test]
    fn a_watch_that_ends_while_the_link_is_down_leaves_the_van_at_its_adaptive_pace() {
        let mut pacer = parked_and_sent();
        pacer.on_watch(&watch(T0, 20, 1), 0, Some(T0));
        // The link goes down at 2 s: fixes keep coming, nothing is sent (the uplink does
        // not call on_sent), and the watch ends at 20 s.
        for s in 2..=60 {
            let _ = pacer.on_fix(&parked(s * 1000), s * 1000);
        }
        // Back at 60 s: the uplink sends the newest fix once on reconnect...
        pacer.on_sent(&parked(60_000), 60_000);
        // ...and then nothing fast: a parked van waits for its heartbeat.
        let fixes: Vec<_> = (61..=400).map(|s| (s * 1000, parked(s * 1000))).collect();
        let sent = drive(&mut pacer, &fixes);
        assert_eq!(sent, [(360_000, Reason::Heartbeat)]);
    }

    #[test]
    fn one_live_publish_is_about_176_bytes_of_mqtt() {
        // What the uplink sends: a signed position envelope with the receiver's figures,
        // on `doorstep/v1/{fleet}/{device}/pos`, QoS 0 (no packet id).
        let key = SigningKey::from_seed(&[7; 32]).expect("seed");
        let device = DeviceId::new("van-017").expect("id");
        let fix = FixEvidence::new(T0, 47.376_887_3, 8.541_694_1)
            .with_accuracy_m(3.4)
            .with_hdop(0.9)
            .with_sats(11)
            .with_speed_mps(12.5);
        let envelope = Envelope {
            device: device.clone(),
            seq: 0,
            event_id: HexBytes([0x5a; 16]),
            gnss_utc_ms: fix.utc_ms,
            mono_ms: 29_473_120,
            event: Event::Position(fix),
        };
        let wire = envelope.seal(&key).expect("seal");
        let topic = Topic::new(FleetId::new("acme-north").expect("id"), device, Channel::Pos).to_string();
        let remaining = 2 + topic.len() + wire.len();
        let mqtt = 1 + if remaining < 128 { 1 } else { 2 } + remaining;
        eprintln!("live publish: {} B envelope, {} B topic, {mqtt} B MQTT", wire.len(), topic.len());
        assert!((150..=190).contains(&mqtt), "{mqtt} bytes of MQTT");
        assert!(LIVE_PUBLISH_WIRE_BYTES >= mqtt as u64 + 30 + 52 - 15);
    }

    /// A parked van's fixes, 0.2 to 2 s apart: GNSS noise of up to 8 m around the spot,
    /// and a speed of at most 0.4 m/s when the receiver reports one.
    fn parked_fixes() -> impl Strategy<Value = Vec<(u64, FixEvidence)>> {
        let step = (200u64..=2_000, -8.0f64..8.0, -8.0f64..8.0, prop::option::of(0.0f64..0.4));
        prop::collection::vec(step, 1..4_000).prop_map(|steps| {
            let mut at = 0;
            steps
                .into_iter()
                .map(|(dt, n, e, v)| {
                    at += dt;
                    (at, fix_at(at, n, e, v))
                })
                .collect()
        })
    }

    /// A van wandering: each step a random heading and speed, fixes at most 1 s apart.
    fn wandering_fixes() -> impl Strategy<Value = Vec<(u64, FixEvidence)>> {
        prop::collection::vec((100u64..=1_000, 0.0f64..360.0, 0.0f64..20.0), 1..600).prop_map(|steps| {
            let (mut at, mut n, mut e) = (0u64, 0.0f64, 0.0f64);
            steps
                .into_iter()
                .map(|(dt, heading, v)| {
                    at += dt;
                    let d = v * dt as f64 / 1000.0;
                    n += heading.to_radians().cos() * d;
                    e += heading.to_radians().sin() * d;
                    (at, fix_at(at, n, e, Some(v)))
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn an_unwatched_standing_van_sends_only_heartbeats(fixes in parked_fixes()) {
            let mut pacer = LivePacer::new(LiveConfig::default());
            let sent = drive(&mut pacer, &fixes);
            prop_assert_eq!(sent.first().map(|s| s.1), Some(Reason::First));
            for pair in sent.windows(2) {
                prop_assert_eq!(pair[1].1, Reason::Heartbeat, "{:?}", sent);
                prop_assert!(pair[1].0 - pair[0].0 >= DEFAULT_HEARTBEAT_S * 1000);
            }
            let span = fixes.last().map_or(0, |f| f.0);
            prop_assert!(sent.len() as u64 <= 1 + span / (DEFAULT_HEARTBEAT_S * 1000));
        }

        #[test]
        fn a_watched_van_never_waits_more_than_every_s_plus_a_second_between_sends(
            fixes in wandering_fixes(),
            every_s in 1u16..=10,
            for_s in 1u16..=900,
            late_ms in 0i64..30_000,
        ) {
            let mut pacer = LivePacer::new(LiveConfig::default());
            let start = fixes[0].0;
            // Received late_ms after issue by a van whose GNSS clock is right.
            let outcome = pacer.on_watch(&watch(T0 - late_ms, for_s, every_s), start, Some(T0));
            let until = match outcome {
                WatchOutcome::Started { until_ms } => until_ms,
                WatchOutcome::AlreadyOver { .. } => start,
            };
            prop_assert!(until <= start + u64::from(for_s) * 1000);
            let sent = drive(&mut pacer, &fixes);
            let every_ms = u64::from(every_s) * 1000;
            prop_assert_eq!(sent.first().map(|s| s.0), Some(start), "the first fix goes at once");
            for pair in sent.windows(2).filter(|pair| pair[1].0 < until) {
                let gap = pair[1].0 - pair[0].0;
                prop_assert!(gap <= every_ms + 1_000, "{} ms between sends at {}: {:?}", gap, pair[1].0, sent);
            }
            // After every fix while watched, the last send is less than every_s old: with
            // fixes at most a second apart, no watcher waits more than every_s + 1 s.
            for (at, _) in fixes.iter().filter(|(at, _)| *at < until) {
                let last = sent.iter().rev().find(|(s, _)| s <= at).map(|(s, _)| *s);
                prop_assert!(last.is_some_and(|last| at - last < every_ms), "at {}: {:?}", at, sent);
            }
            // After the watch, never the watched pace.
            prop_assert!(sent.iter().all(|(at, r)| *r != Reason::Watched || *at < until));
        }
    }
}
