//! The uplink's send window ([`doorstep_agent::window`]) against a model: driven as the
//! uplink drives it, under random interleavings of appends, publishes, refused
//! publishes, PUBACKs, hub acks (stale, duplicate, out of order), lost messages,
//! disconnects, reconnects, evictions, restarts and stalls, it never publishes out of
//! seq order, at or below the hub's ack, past a stored row, or beyond the in-flight
//! limit; and once the link is good again every appended event reaches the hub.
//!
//! The references are simple on purpose: the outbox is a `BTreeMap` of stored rows with
//! the acked high-water (eviction into gap notices, growing notices never handed out,
//! re-issuing the rest of a notice an ack falls inside, as `outbox.rs` does); the broker
//! is one ordered queue per connection; the hub deduplicates by seq and acks the highest
//! contiguous seq it holds or a gap notice covers.

use std::collections::{BTreeMap, BTreeSet, VecDeque, btree_map};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use doorstep_agent::window::{Next, Window, WindowConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Confirmation,
    Position,
    /// A gap notice standing for its own seq up to `last`; `reissued` when the
    /// outbox re-signed the rest of a notice an ack fell inside.
    Gap {
        last: u64,
        reissued: bool,
    },
}

fn wire(seq: u64, kind: Kind) -> Vec<u8> {
    let (tag, last) = match kind {
        Kind::Confirmation => (0, seq),
        Kind::Position => (1, seq),
        Kind::Gap { last, .. } => (2, last),
    };
    let mut w = vec![tag];
    w.extend(seq.to_be_bytes());
    w.extend(last.to_be_bytes());
    w
}

fn unwire(w: &[u8]) -> (u64, Kind) {
    let seq = u64::from_be_bytes(w[1..9].try_into().expect("8 bytes"));
    let last = u64::from_be_bytes(w[9..17].try_into().expect("8 bytes"));
    let kind = match w[0] {
        0 => Kind::Confirmation,
        1 => Kind::Position,
        _ => Kind::Gap { last, reissued: false },
    };
    (seq, kind)
}

/// The reference outbox.
#[derive(Debug, Default)]
struct Outbox {
    rows: BTreeMap<u64, Kind>,
    next_seq: u64,
    acked: u64,
    /// The highest seq ever handed to the uplink (a notice above it may grow).
    handed_out: u64,
}

impl Outbox {
    fn pending(&mut self, after: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
        let rows: Vec<_> =
            self.rows.range(after + 1..).take(limit).map(|(s, k)| (*s, wire(*s, *k))).collect();
        if let Some((last, _)) = rows.last() {
            self.handed_out = self.handed_out.max(*last);
        }
        rows
    }

    fn ack(&mut self, up_to: u64) {
        // Gap ranges never overlap: only the last notice at or below the ack can
        // straddle it, and then the rest of its range is re-issued after the ack.
        let last_notice = self.rows.range(..=up_to).rev().find_map(|(_, k)| match k {
            Kind::Gap { last, .. } => Some(*last),
            _ => None,
        });
        self.rows = self.rows.split_off(&(up_to + 1));
        if let Some(last) = last_notice.filter(|last| *last > up_to) {
            self.rows.insert(up_to + 1, Kind::Gap { last, reissued: true });
        }
        self.acked = self.acked.max(up_to);
    }

    /// Evicts a run of consecutive position samples, at most `len` long, starting at
    /// `victim`: one gap notice at its first seq, or a notice never handed out that
    /// ends right before it grows.
    fn evict(&mut self, victim: Victim, len: u64, cursor: u64) {
        let positions: Vec<u64> =
            self.rows.iter().filter(|(_, k)| **k == Kind::Position).map(|(s, _)| *s).collect();
        let first = match victim {
            Victim::Oldest => positions.first().copied(),
            Victim::Nth(pick) if !positions.is_empty() => Some(positions[pick % positions.len()]),
            Victim::Nth(_) => None,
            Victim::AtCursor => positions.iter().rev().find(|s| **s <= cursor).copied(),
        };
        let Some(first) = first else { return };
        let mut last = first;
        while last - first + 1 < len && self.rows.get(&(last + 1)) == Some(&Kind::Position) {
            last += 1;
        }
        for s in first..=last {
            self.rows.remove(&s);
        }
        let previous = self.rows.range(..first).next_back().map(|(s, k)| (*s, *k));
        match previous {
            Some((p, Kind::Gap { last: end, reissued })) if p > self.handed_out && end + 1 == first => {
                self.rows.insert(p, Kind::Gap { last, reissued });
            }
            _ => {
                self.rows.insert(first, Kind::Gap { last, reissued: false });
            }
        }
    }
}

/// The reference hub.
#[derive(Debug, Default)]
struct Hub {
    /// What it stored for each seq, first come (duplicates by seq are dropped).
    got: BTreeMap<u64, Kind>,
    covered: BTreeSet<u64>,
    high: u64,
    /// Acks it sent that may still reach the device, and every ack ever sent.
    in_transit: Vec<u64>,
    history: Vec<u64>,
}

impl Hub {
    fn receive(&mut self, w: &[u8]) {
        let (seq, kind) = unwire(w);
        // Deduplicated by seq: a notice at a seq the hub already holds as a
        // sample covers nothing more.
        if let btree_map::Entry::Vacant(slot) = self.got.entry(seq) {
            slot.insert(kind);
            let last = if let Kind::Gap { last, .. } = kind { last } else { seq };
            self.covered.extend(seq..=last);
            while self.covered.contains(&(self.high + 1)) {
                self.high += 1;
            }
        }
        self.in_transit.push(self.high);
        self.history.push(self.high);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        confirmation: bool,
    },
    Pump,
    Deliver(usize),
    /// The broker takes the next publishes but the hub never stores them (a hub
    /// restarted without its session).
    Lose(usize),
    PubAck(usize),
    HubAck {
        pick: usize,
        duplicate: bool,
    },
    StaleAck(usize),
    RefuseNext,
    Disconnect {
        delivered: usize,
    },
    Reconnect,
    Evict {
        victim: Victim,
        len: u64,
    },
    Restart {
        delivered: usize,
    },
    Wait(u64),
    Tick,
}

/// Where an eviction starts.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The oldest stored sample, as the outbox chooses: during a hub outage, samples
    /// already published and not acknowledged.
    Oldest,
    /// Any stored sample.
    Nth(usize),
    /// The newest stored sample at or below the window's cursor, so that the run
    /// straddles what was published and what was not.
    AtCursor,
}

fn victim() -> impl Strategy<Value = Victim> {
    prop_oneof![Just(Victim::Oldest), any::<usize>().prop_map(Victim::Nth), Just(Victim::AtCursor)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => any::<bool>().prop_map(|confirmation| Op::Append { confirmation }),
        6 => Just(Op::Pump),
        4 => (1usize..6).prop_map(Op::Deliver),
        2 => (1usize..3).prop_map(Op::Lose),
        4 => (1usize..6).prop_map(Op::PubAck),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, duplicate)| Op::HubAck { pick, duplicate }),
        1 => any::<usize>().prop_map(Op::StaleAck),
        1 => Just(Op::RefuseNext),
        1 => (0usize..4).prop_map(|delivered| Op::Disconnect { delivered }),
        2 => Just(Op::Reconnect),
        4 => (victim(), 1u64..6).prop_map(|(victim, len)| Op::Evict { victim, len }),
        1 => (0usize..4).prop_map(|delivered| Op::Restart { delivered }),
        2 => (0u64..150).prop_map(Op::Wait),
        3 => Just(Op::Tick),
    ]
}

#[derive(Debug)]
enum Sent {
    Event(Vec<u8>),
    Control,
}

struct World {
    cfg: WindowConfig,
    batch: usize,
    now: Instant,
    window: Window,
    outbox: Outbox,
    hub: Hub,
    connected: bool,
    /// Publishes on their way to the broker, in order, on this connection.
    to_broker: VecDeque<Sent>,
    /// PUBACKs on their way back on this connection.
    pubacks: usize,
    refuse_next: bool,
    /// Seqs published since the last start point.
    stream: Vec<u64>,
    confirmations: Vec<u64>,
}

impl World {
    fn new(cfg: WindowConfig, batch: usize) -> Self {
        let now = Instant::now();
        Self {
            cfg,
            batch,
            now,
            window: Window::new(cfg, 0, 1, now),
            outbox: Outbox { next_seq: 1, ..Outbox::default() },
            hub: Hub::default(),
            connected: false,
            to_broker: VecDeque::new(),
            pubacks: 0,
            refuse_next: false,
            stream: Vec::new(),
            confirmations: Vec::new(),
        }
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            match self.to_broker.pop_front() {
                Some(Sent::Event(w)) => self.hub.receive(&w),
                Some(Sent::Control) => {}
                None => return,
            }
            self.pubacks += 1;
        }
    }

    fn drop_link(&mut self, delivered: usize) {
        self.deliver(delivered);
        self.to_broker.clear();
        self.pubacks = 0;
        self.connected = false;
    }

    fn hub_ack(&mut self, up_to: u64) {
        if self.window.on_hub_ack(up_to, self.now) {
            self.outbox.ack(up_to);
        }
    }

    fn reconnect(&mut self) {
        if self.connected {
            self.drop_link(0);
            self.window.on_disconnect();
        }
        self.connected = true;
        self.window.on_reconnect(self.now);
        self.stream.clear();
        self.to_broker.push_back(Sent::Control);
        self.window.on_control_published();
    }

    /// As the uplink's pump does it.
    fn pump(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..10_000 {
            self.window.on_appended(self.outbox.next_seq);
            match self.window.next_to_send(self.now) {
                Next::Publish { seq, wire: w } => {
                    if std::mem::take(&mut self.refuse_next) {
                        self.window.on_publish_refused();
                        return Ok(());
                    }
                    self.check_publish(seq)?;
                    self.stream.push(seq);
                    self.to_broker.push_back(Sent::Event(w));
                }
                Next::Fetch { after } => {
                    prop_assert!(after >= self.window.acked());
                    let rows = self.outbox.pending(after, self.batch);
                    let empty = rows.is_empty();
                    self.window.on_fetched(rows);
                    if empty {
                        return Ok(());
                    }
                }
                Next::Wait => return Ok(()),
            }
        }
        Err(TestCaseError::fail("the pump never waits"))
    }

    fn check_publish(&self, seq: u64) -> Result<(), TestCaseError> {
        prop_assert!(self.connected, "published {} with the link down", seq);
        let acked = self.window.acked();
        prop_assert!(seq > acked, "published {} at or below the hub's ack {}", seq, acked);
        let previous = self.stream.last().copied().unwrap_or(0);
        prop_assert!(seq > previous, "published {} after {}: out of order", seq, previous);
        // Nothing stored between the previous publish (or the ack) and this one
        // was skipped. A notice re-issued behind the cursor by an ack waits for
        // the stall timer by design.
        let lower = previous.max(acked);
        let skipped: Vec<_> = self
            .outbox
            .rows
            .range(lower + 1..seq)
            .filter(|(_, k)| !matches!(k, Kind::Gap { reissued: true, .. }))
            .collect();
        prop_assert!(skipped.is_empty(), "published {} after {} and skipped {:?}", seq, lower, skipped);
        let in_flight = self.to_broker.len() + self.pubacks + 1;
        prop_assert!(in_flight <= self.cfg.inflight, "{} in flight", in_flight);
        let beyond = self.stream.iter().filter(|s| **s > acked).count() + 1;
        let bound = usize::try_from(self.cfg.max_unacked).expect("small") - 1 + self.batch;
        prop_assert!(beyond <= bound, "{} published beyond the ack, bound {}", beyond, bound);
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let acked_before = self.window.acked();
        match op {
            Op::Append { confirmation } => {
                let seq = self.outbox.next_seq;
                let kind = if confirmation { Kind::Confirmation } else { Kind::Position };
                self.outbox.rows.insert(seq, kind);
                self.outbox.next_seq += 1;
                if confirmation {
                    self.confirmations.push(seq);
                }
            }
            Op::Pump => self.pump()?,
            Op::Deliver(n) => self.deliver(n),
            Op::Lose(n) => {
                for _ in 0..n.min(self.to_broker.len()) {
                    self.to_broker.pop_front();
                    self.pubacks += 1;
                }
            }
            Op::PubAck(n) => {
                for _ in 0..n.min(self.pubacks) {
                    self.pubacks -= 1;
                    self.window.on_puback();
                }
            }
            Op::HubAck { pick, duplicate } => {
                if !self.hub.in_transit.is_empty() {
                    let i = pick % self.hub.in_transit.len();
                    let up_to =
                        if duplicate { self.hub.in_transit[i] } else { self.hub.in_transit.remove(i) };
                    self.hub_ack(up_to);
                }
            }
            Op::StaleAck(pick) => {
                if !self.hub.history.is_empty() {
                    let up_to = self.hub.history[pick % self.hub.history.len()];
                    self.hub_ack(up_to);
                }
            }
            Op::RefuseNext => self.refuse_next = true,
            Op::Disconnect { delivered } => {
                if self.connected {
                    self.drop_link(delivered);
                    self.window.on_disconnect();
                }
            }
            Op::Reconnect => self.reconnect(),
            Op::Evict { victim, len } => self.outbox.evict(victim, len, self.window.cursor()),
            Op::Restart { delivered } => {
                self.drop_link(delivered);
                self.window = Window::new(self.cfg, self.outbox.acked, self.outbox.next_seq, self.now);
                self.stream.clear();
            }
            Op::Wait(s) => self.now += Duration::from_secs(s),
            Op::Tick => {
                if self.window.on_tick(self.now).events.is_some() {
                    self.stream.clear();
                }
            }
        }
        let acked = self.window.acked();
        prop_assert!(acked >= acked_before, "the ack went back from {} to {}", acked_before, acked);
        prop_assert_eq!(acked, self.outbox.acked);
        prop_assert!(acked <= self.hub.high);
        let cursor = self.window.cursor();
        prop_assert!(cursor >= acked);
        // Everything stored between the ack and the cursor went out since the last start
        // point (an evicted sample's notice sits at the sample's seq), except a notice
        // an ack re-issued behind the cursor, which waits for the stall timer.
        let passed: Vec<_> = self
            .outbox
            .rows
            .range(acked + 1..cursor + 1)
            .filter(|(s, k)| !self.stream.contains(s) && !matches!(k, Kind::Gap { reissued: true, .. }))
            .collect();
        prop_assert!(passed.is_empty(), "the cursor {} passed {:?} without sending it", cursor, passed);
        if self.connected {
            prop_assert_eq!(self.window.in_flight(), self.to_broker.len() + self.pubacks);
        }
        Ok(())
    }

    /// A good link from here on: everything stored reaches the hub and is acked.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        self.refuse_next = false;
        let rounds = 100 + 10 * self.outbox.next_seq;
        for _ in 0..rounds {
            if self.outbox.rows.is_empty() && self.hub.high + 1 == self.outbox.next_seq {
                return Ok(());
            }
            if !self.connected {
                self.reconnect();
            }
            for _ in 0..=self.cfg.inflight {
                self.apply(Op::Pump)?;
                self.apply(Op::Deliver(usize::MAX))?;
                self.apply(Op::PubAck(usize::MAX))?;
                for up_to in std::mem::take(&mut self.hub.in_transit) {
                    self.hub_ack(up_to);
                }
            }
            self.apply(Op::Wait(self.cfg.ack_timeout.as_secs()))?;
            self.apply(Op::Tick)?;
        }
        Err(TestCaseError::fail(format!(
            "never settled: hub at {}, outbox {:?}, {:?}",
            self.hub.high, self.outbox, self.window
        )))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_interleaving_loses_reorders_or_skips_an_event_or_overfills_the_window(
        inflight in 1usize..5,
        max_unacked in 1u64..8,
        batch in 1usize..5,
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let cfg = WindowConfig { inflight, max_unacked, ack_timeout: Duration::from_secs(60) };
        let mut world = World::new(cfg, batch);
        for op in ops {
            world.apply(op)?;
        }
        world.settle()?;
        let next_seq = world.outbox.next_seq;
        prop_assert_eq!(world.window.acked(), next_seq - 1);
        for seq in 1..next_seq {
            prop_assert!(world.hub.covered.contains(&seq), "seq {} never reached the hub", seq);
        }
        for seq in &world.confirmations {
            prop_assert_eq!(world.hub.got.get(seq), Some(&Kind::Confirmation), "confirmation {}", seq);
        }
    }
}
