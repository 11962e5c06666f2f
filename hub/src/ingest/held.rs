//! The topic filters a hub holds with the broker, against those it should hold
//! (`assign`: every van, or the vans its group gave it), as a state machine the MQTT task
//! drives: it says which SUBSCRIBE and UNSUBSCRIBE packets to send, takes them back when
//! the request queue is full, and counts the broker's answers.
//!
//! - New vans are asked for before old ones are dropped: a van changing hands is, if
//!   anything, heard twice for a moment (and stored once), rather than by nobody.
//! - Nothing asked for is forgotten: a packet the request queue refuses is sent on a
//!   later turn, and a filter counts as held only once the broker answered.
//! - UNSUBSCRIBEs carry one filter each (rumqttc's) and a restart may drop four for every
//!   van of the fleet: at most [`MAX_AWAITING`] are unanswered at a time, so the acks and
//!   PUBACKs that share the queue and the packet ids keep flowing.

use std::collections::{BTreeSet, VecDeque};

use tokio::sync::watch;

use super::assign::Filters;

/// Filters per SUBSCRIBE packet: a hub given thousands of vans asks for them in packets
/// well under the outgoing packet limit.
pub(super) const FILTERS_PER_PACKET: usize = 256;

/// SUBSCRIBE and UNSUBSCRIBE packets sent and not yet answered, at most, before more
/// UNSUBSCRIBEs are sent.
pub(super) const MAX_AWAITING: usize = 64;

/// A packet for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// Ask for these filters (QoS 1).
    Subscribe(Vec<String>),
    /// Drop this filter.
    Unsubscribe(String),
}

/// Why a packet was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The request queue is full: try again on a later turn.
    Full,
    /// The client is gone.
    Closed,
}

pub(super) struct Held {
    want: watch::Receiver<Filters>,
    /// Whether `want` can still change.
    pub watching: bool,
    /// Filters asked for (or to be), kept while the broker keeps the session.
    asked: BTreeSet<String>,
    connected: bool,
    /// Whether the filters a session from an earlier process may hold were dropped.
    released: bool,
    subscribing: VecDeque<Vec<String>>,
    dropping: VecDeque<String>,
    /// Packets sent and not yet answered.
    awaiting: usize,
    /// Filters the broker refused (or granted at QoS 0) in this session.
    refused: usize,
}

impl Held {
    pub(super) fn new(want: watch::Receiver<Filters>) -> Self {
        Self {
            want,
            watching: true,
            asked: BTreeSet::new(),
            connected: false,
            released: false,
            subscribing: VecDeque::new(),
            dropping: VecDeque::new(),
            awaiting: 0,
            refused: 0,
        }
    }

    /// The wanted filters, for `changed().await` in the MQTT task's select.
    pub(super) fn want(&mut self) -> &mut watch::Receiver<Filters> {
        &mut self.want
    }

    /// After a CONNACK: asks for every wanted filter (a kept session's are asked again,
    /// which the broker answers as granted), and drops those a kept session holds that
    /// this hub no longer wants: at this process's first kept session, every filter it
    /// must not hold, since an earlier process's are unknown.
    pub(super) fn connected(&mut self, session_present: bool) {
        self.connected = true;
        self.awaiting = 0;
        self.refused = 0;
        self.subscribing.clear();
        if !session_present {
            // The broker holds nothing of this hub's: nothing to drop.
            self.asked.clear();
            self.dropping.clear();
            self.released = true;
        }
        let filters = self.want.borrow_and_update().clone();
        let want: BTreeSet<String> = filters.hold.into_iter().collect();
        let mut stale: BTreeSet<String> = self.asked.difference(&want).cloned().collect();
        if !self.released {
            stale.extend(filters.release.into_iter().filter(|f| !want.contains(f)));
            self.released = true;
        }
        self.asked.clear();
        self.plan(want, stale);
    }

    /// The broker connection is gone.
    pub(super) fn disconnected(&mut self) {
        self.connected = false;
    }

    /// After the wanted filters changed: asks for the new ones and drops the old ones (if
    /// disconnected, the next CONNACK does).
    pub(super) fn changed(&mut self) {
        if !self.connected {
            return;
        }
        let want: BTreeSet<String> = self.want.borrow_and_update().hold.iter().cloned().collect();
        let stale: BTreeSet<String> = self.asked.difference(&want).cloned().collect();
        self.plan(want, stale);
    }

    /// Queues what `want` adds to what is asked, and `stale` to drop.
    fn plan(&mut self, want: BTreeSet<String>, stale: BTreeSet<String>) {
        let new: Vec<String> = want.difference(&self.asked).cloned().collect();
        for chunk in new.chunks(FILTERS_PER_PACKET) {
            self.subscribing.push_back(chunk.to_vec());
        }
        // A van given back before its filters were dropped keeps them.
        self.dropping.retain(|f| !want.contains(f));
        self.dropping.extend(stale);
        self.asked = want;
    }

    /// Sends what it can: every SUBSCRIBE the queue takes, then UNSUBSCRIBEs while fewer
    /// than [`MAX_AWAITING`] packets are unanswered. What the queue refuses waits for a
    /// later turn.
    pub(super) fn pump(&mut self, mut send: impl FnMut(Op) -> Result<(), (Op, Refused)>) {
        if !self.connected {
            return;
        }
        while let Some(filters) = self.subscribing.pop_front() {
            match send(Op::Subscribe(filters)) {
                Ok(()) => self.awaiting += 1,
                Err((Op::Subscribe(filters), Refused::Full)) => {
                    self.subscribing.push_front(filters);
                    return;
                }
                Err(_) => return,
            }
        }
        while self.awaiting < MAX_AWAITING
            && let Some(filter) = self.dropping.pop_front()
        {
            match send(Op::Unsubscribe(filter)) {
                Ok(()) => self.awaiting += 1,
                Err((Op::Unsubscribe(filter), Refused::Full)) => {
                    self.dropping.push_front(filter);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Whether anything waits to be sent.
    pub(super) fn has_work(&self) -> bool {
        self.connected && (!self.subscribing.is_empty() || !self.dropping.is_empty())
    }

    /// A SUBACK: `refused` of its filters were refused or granted at QoS 0 only.
    pub(super) fn subscribed(&mut self, refused: usize) {
        self.awaiting = self.awaiting.saturating_sub(1);
        self.refused += refused;
    }

    /// An UNSUBACK.
    pub(super) fn unsubscribed(&mut self) {
        self.awaiting = self.awaiting.saturating_sub(1);
    }

    /// The filters held and granted, once every packet was sent and answered; `None` while
    /// some are on their way.
    pub(super) fn granted(&self) -> Option<usize> {
        let settled =
            self.connected && self.awaiting == 0 && self.subscribing.is_empty() && self.dropping.is_empty();
        settled.then(|| self.asked.len().saturating_sub(self.refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(hold: &[&str], release: &[&str]) -> Filters {
        Filters {
            hold: hold.iter().map(|f| (*f).to_owned()).collect(),
            release: release.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    /// Sends everything, answering nothing; returns what was sent.
    fn sent(held: &mut Held) -> Vec<Op> {
        let mut out = Vec::new();
        held.pump(|op| {
            out.push(op);
            Ok(())
        });
        out
    }

    fn answer(held: &mut Held, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Subscribe(_) => held.subscribed(0),
                Op::Unsubscribe(_) => held.unsubscribed(),
            }
        }
    }

    #[test]
    fn a_kept_session_of_an_earlier_process_drops_what_this_one_must_not_hold() {
        let (tx, rx) = watch::channel(filters(&["a", "b"], &["c", "d", "a"]));
        let mut held = Held::new(rx);
        held.connected(true);
        let ops = sent(&mut held);
        assert_eq!(
            ops,
            [
                Op::Subscribe(vec!["a".into(), "b".into()]),
                Op::Unsubscribe("c".into()),
                Op::Unsubscribe("d".into())
            ]
        );
        assert_eq!(held.granted(), None, "answers outstanding");
        answer(&mut held, &ops);
        assert_eq!(held.granted(), Some(2));
        // Reconnecting to the same kept session drops nothing more; a fresh session drops
        // nothing at all.
        held.disconnected();
        held.connected(true);
        assert_eq!(sent(&mut held), [Op::Subscribe(vec!["a".into(), "b".into()])]);
        tx.send_replace(filters(&["a"], &["b"]));
        held.disconnected();
        held.connected(false);
        assert_eq!(sent(&mut held), [Op::Subscribe(vec!["a".into()])]);
    }

    #[test]
    fn a_van_given_away_and_back_stays_heard_and_a_full_queue_loses_nothing() {
        let (tx, rx) = watch::channel(filters(&["a", "b"], &[]));
        let mut held = Held::new(rx);
        held.connected(false);
        let ops = sent(&mut held);
        answer(&mut held, &ops);
        // "b" given away, then back before its UNSUBSCRIBE left: never dropped (asked for
        // again, which the broker grants as held).
        tx.send_replace(filters(&["a"], &[]));
        held.changed();
        tx.send_replace(filters(&["a", "b"], &[]));
        held.changed();
        let ops = sent(&mut held);
        assert_eq!(ops, [Op::Subscribe(vec!["b".into()])]);
        answer(&mut held, &ops);
        assert_eq!(held.granted(), Some(2));
        // "c" given while the request queue is full: kept, and sent on a later turn.
        tx.send_replace(filters(&["a", "b", "c"], &[]));
        held.changed();
        held.pump(|op| Err((op, Refused::Full)));
        assert!(held.has_work());
        assert_eq!(held.granted(), None);
        let ops = sent(&mut held);
        assert_eq!(ops, [Op::Subscribe(vec!["c".into()])]);
        held.subscribed(1);
        assert_eq!(held.granted(), Some(2), "a refused filter is not counted as held");
    }

    #[test]
    fn new_vans_are_asked_for_before_old_ones_are_dropped_and_drops_are_paced() {
        let many: Vec<String> = (0..200).map(|i| format!("v{i}")).collect();
        let (tx, rx) = watch::channel(Filters { hold: many.clone(), release: Vec::new() });
        let mut held = Held::new(rx);
        held.connected(false);
        let ops = sent(&mut held);
        answer(&mut held, &ops);
        tx.send_replace(filters(&["w"], &[]));
        held.changed();
        let ops = sent(&mut held);
        assert_eq!(ops[0], Op::Subscribe(vec!["w".into()]));
        assert_eq!(ops.len(), MAX_AWAITING, "unanswered packets are bounded");
        answer(&mut held, &ops);
        let mut rest = 0;
        while held.has_work() {
            let ops = sent(&mut held);
            rest += ops.len();
            answer(&mut held, &ops);
        }
        assert_eq!(rest + MAX_AWAITING - 1, 200, "every old filter dropped once");
        assert_eq!(held.granted(), Some(1));
    }
}
