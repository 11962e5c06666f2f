//! The uplink's send window: which stored event goes out next, how many may be in
//! flight, and when everything above the hub's ack goes out again.
//!
//! A pure state machine in the manner of rumqtt's `state.rs`: its methods only change
//! state and say what to do next. No clock (every time is an argument), no I/O, no
//! async. The uplink task ([`crate::uplink`]) is its shell: it reads rows from the
//! outbox, publishes them, and reports back what the broker and the hub said.
//!
//! # Two windows
//!
//! - **MQTT in flight.** An event is taken only while fewer than
//!   [`WindowConfig::inflight`] QoS 1 publishes await the broker's PUBACK; the online
//!   state sent on connect takes a slot too. Photo chunks, sent only when no event
//!   waits, may add [`PHOTO_WINDOW`] more (the uplink gives rumqttc room for them). A
//!   PUBACK only frees a slot: what the broker says is never taken as delivery.
//! - **Beyond the hub's ack.** Rows are fetched from the outbox only while the cursor
//!   is fewer than [`WindowConfig::max_unacked`] seqs above the hub's ack. Rows already
//!   fetched are sent regardless, so up to one fetch batch more may go out.
//!
//! # Sending again
//!
//! Events leave the outbox only on the hub's signed cumulative ack, so anything above
//! it may have to go again; the hub deduplicates by (device, seq). Everything above the
//! ack goes again, from the row after it, in seq order:
//!
//! - after every reconnect ([`Window::on_reconnect`]): what was in flight on the old
//!   connection is unknown, and rumqttc's own replay is switched off;
//! - after a restart ([`Window::new`], from the outbox's last ack);
//! - when the hub's ack has not moved for [`WindowConfig::ack_timeout`] while nothing is
//!   in flight ([`Window::on_tick`]): a publish the broker took but the hub never
//!   stored, or an ack that fell inside a gap notice, after which the outbox re-issued
//!   the rest of the notice below the cursor.
//!
//! # Evictions
//!
//! Eviction is not an input. The outbox replaces an evicted run of position samples by
//! a signed gap notice in the same transaction, so the window sees evictions only in the
//! rows it fetches ([`Window::on_fetched`]). Rows fetched before an eviction are still
//! valid signed events and go out as they are. A fetch that finds nothing above the
//! cursor moves the cursor to the newest seq: everything in between was acknowledged
//! meanwhile, or is a hole that an agent without gap notices left behind.
//!
//! # Invariants
//!
//! `agent/tests/window_model.rs` checks these against a reference outbox, broker and
//! hub under random interleavings of appends, publishes, refusals, PUBACKs, hub acks
//! (stale, duplicate, out of order), lost messages, disconnects, reconnects, evictions,
//! restarts and stalls:
//!
//! - between two start points (connect, restart, stall), rows go out in strictly
//!   increasing seq order, every one above the hub's ack, and none stored in between is
//!   skipped;
//! - events and the online state never have more than [`WindowConfig::inflight`]
//!   publishes in flight;
//! - once the link is up and the hub acks what it holds, every appended event reaches
//!   the hub (a confirmation as itself, a position as itself or inside a gap notice)
//!   and the outbox empties.
//!
//! # Photos
//!
//! Proof photos travel in chunks behind the events: a photo is looked up and its chunks
//! sent only while no event is waiting, at most [`PHOTO_WINDOW`] beyond the hub's photo
//! ack, with the same reconnect and stall rules as events.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use doorstep_proto::HexBytes;

use crate::outbox::PendingPhoto;

/// Photo chunks in flight beyond the hub's photo ack.
pub const PHOTO_WINDOW: u32 = 2;

/// The bounds of a [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// QoS 1 publishes that may await the broker's PUBACK before events wait.
    pub inflight: usize,
    /// Seqs between the hub's ack and the cursor beyond which no more rows are fetched.
    pub max_unacked: u64,
    /// With nothing in flight, how long the hub's ack may stall before everything
    /// above it is sent again.
    pub ack_timeout: Duration,
}

/// What the uplink should do next for the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Publish this row (QoS 1). The window already counts it as published; if the
    /// MQTT client refuses it, call [`Window::on_publish_refused`] before anything else.
    Publish {
        /// Its seq.
        seq: u64,
        /// Its exact stored wire bytes.
        wire: Vec<u8>,
    },
    /// Nothing fetched is left: read a batch of the stored rows above `after`, in seq
    /// order, and hand them to [`Window::on_fetched`].
    Fetch {
        /// The cursor: rows with a greater seq are wanted.
        after: u64,
    },
    /// Nothing to send until something changes: a PUBACK, a hub ack, an append, a
    /// reconnect or a tick.
    Wait,
}

/// A tick's finding that the hub's ack stalled: everything above `acked` goes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalledAck {
    /// The hub's last ack.
    pub acked: u64,
    /// The highest seq published before the window went back.
    pub published_up_to: u64,
}

/// What a tick decided to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resend {
    /// The event stream went back to the hub's ack.
    pub events: Option<StalledAck>,
    /// The photo whose chunk acks stalled; its unacknowledged chunks go again.
    pub photo: Option<HexBytes<32>>,
}

/// Chunks of the current photo to read from the outbox and publish, calling
/// [`Window::on_chunk_sent`] for each one published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The photo.
    pub photo: PendingPhoto,
    /// The first chunk index to send.
    pub from: u32,
    /// How many chunks at most.
    pub limit: usize,
}

/// The photo being uploaded.
#[derive(Debug, Clone, Copy)]
struct PhotoCursor {
    photo: PendingPhoto,
    /// Next chunk index to send.
    sent_next: u32,
    /// Since when the hub's photo ack has been awaited.
    since: Instant,
}

/// The send window of one uplink: see the module documentation.
pub struct Window {
    cfg: WindowConfig,
    connected: bool,
    /// Highest seq the hub acknowledged.
    acked: u64,
    /// Highest seq published since the last start point.
    cursor: u64,
    /// The cursor before the last [`Next::Publish`], to take it back if refused.
    cursor_before_publish: u64,
    /// QoS 1 publishes awaiting PUBACK on this connection.
    outstanding: usize,
    /// Rows fetched but not yet published, in seq order.
    buffer: VecDeque<(u64, Vec<u8>)>,
    /// The outbox's next seq: every stored event is below it.
    next_seq: u64,
    /// Since when the hub's ack has been awaited.
    waiting_since: Instant,
    photo: Option<PhotoCursor>,
    photo_check_due: bool,
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("connected", &self.connected)
            .field("acked", &self.acked)
            .field("cursor", &self.cursor)
            .field("outstanding", &self.outstanding)
            .field("buffered", &self.buffer.len())
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// The window of an uplink (re)started on an outbox whose last hub ack is `acked`
    /// and whose next seq is `next_seq`: disconnected, nothing in flight, everything
    /// above `acked` still to send.
    pub fn new(cfg: WindowConfig, acked: u64, next_seq: u64, now: Instant) -> Self {
        Self {
            cfg,
            connected: false,
            acked,
            cursor: acked,
            cursor_before_publish: acked,
            outstanding: 0,
            buffer: VecDeque::new(),
            next_seq,
            waiting_since: now,
            photo: None,
            photo_check_due: true,
        }
    }

    /// The broker accepted a connection: whatever was in flight on the old one is
    /// forgotten and everything above the hub's ack goes again, as does every photo
    /// chunk above the hub's photo ack.
    pub fn on_reconnect(&mut self, now: Instant) {
        self.connected = true;
        self.outstanding = 0;
        self.cursor = self.acked;
        self.buffer.clear();
        self.waiting_since = now;
        if let Some(p) = &mut self.photo {
            p.sent_next = p.photo.next_index;
        }
        self.photo_check_due = true;
    }

    /// The link went down: nothing is sent until [`Window::on_reconnect`].
    pub fn on_disconnect(&mut self) {
        self.connected = false;
    }

    /// A QoS 1 publish outside the event and photo streams (the online state) took an
    /// in-flight slot.
    pub fn on_control_published(&mut self) {
        self.outstanding += 1;
    }

    /// The broker acknowledged a QoS 1 publish: one in-flight slot is free.
    pub fn on_puback(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// The outbox's next seq is now `next_seq` (an event was appended).
    pub fn on_appended(&mut self, next_seq: u64) {
        self.next_seq = next_seq;
    }

    /// The hub's verified cumulative ack: every event up to `up_to_seq` is stored at the
    /// hub. Returns whether it moves the window; only then should the outbox apply it.
    /// A stale or duplicate ack changes nothing.
    pub fn on_hub_ack(&mut self, up_to_seq: u64, now: Instant) -> bool {
        if up_to_seq <= self.acked {
            return false;
        }
        self.acked = up_to_seq;
        self.waiting_since = now;
        self.cursor = self.cursor.max(self.acked);
        while self.buffer.front().is_some_and(|(seq, _)| *seq <= self.acked) {
            self.buffer.pop_front();
        }
        true
    }

    /// What to do next for the event stream. Call it again after each [`Next::Publish`]
    /// and [`Next::Fetch`] until it says [`Next::Wait`].
    pub fn next_to_send(&mut self, now: Instant) -> Next {
        if !self.connected || self.outstanding >= self.cfg.inflight {
            return Next::Wait;
        }
        if self.buffer.is_empty() {
            if self.cursor + 1 >= self.next_seq || self.cursor - self.acked >= self.cfg.max_unacked {
                return Next::Wait;
            }
            return Next::Fetch { after: self.cursor };
        }
        let Some((seq, wire)) = self.buffer.pop_front() else { return Next::Wait };
        if self.cursor == self.acked {
            // The first event above the ack: the stall timer starts now.
            self.waiting_since = now;
        }
        self.cursor_before_publish = self.cursor;
        self.outstanding += 1;
        self.cursor = seq;
        Next::Publish { seq, wire }
    }

    /// The rows a [`Next::Fetch`] found, in seq order. None means nothing is stored
    /// above the cursor any more, so the cursor moves up to the newest seq.
    pub fn on_fetched(&mut self, rows: Vec<(u64, Vec<u8>)>) {
        if rows.is_empty() {
            self.cursor = self.next_seq.saturating_sub(1).max(self.cursor);
        } else {
            self.buffer.extend(rows);
        }
    }

    /// The MQTT client refused the row the last [`Next::Publish`] handed out (its
    /// request queue is full: the link is going down). The window takes it back and
    /// drops what it fetched, so the row is fetched and published again.
    pub fn on_publish_refused(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.cursor = self.cursor_before_publish;
        self.buffer.clear();
    }

    /// The periodic check: with the link up and nothing in flight, a hub ack (or photo
    /// ack) stalled for [`WindowConfig::ack_timeout`] sends everything above it again,
    /// and a photo lookup is due if there is no photo.
    pub fn on_tick(&mut self, now: Instant) -> Resend {
        let mut resend = Resend::default();
        if !self.connected || self.outstanding != 0 {
            return resend;
        }
        let timeout = self.cfg.ack_timeout;
        if self.cursor > self.acked && now.saturating_duration_since(self.waiting_since) >= timeout {
            resend.events = Some(StalledAck { acked: self.acked, published_up_to: self.cursor });
            self.cursor = self.acked;
            self.buffer.clear();
            self.waiting_since = now;
        }
        if let Some(p) = &mut self.photo
            && p.sent_next > p.photo.next_index
            && now.saturating_duration_since(p.since) >= timeout
        {
            resend.photo = Some(p.photo.sha256);
            p.sent_next = p.photo.next_index;
            p.since = now;
        }
        if self.photo.is_none() {
            self.photo_check_due = true;
        }
        resend
    }

    /// Whether an event is fetched and unsent, or stored above the cursor.
    pub fn events_waiting(&self) -> bool {
        !self.buffer.is_empty() || self.cursor + 1 < self.next_seq
    }

    /// Whether the uplink should look for the next photo in the outbox now (then hand
    /// the answer to [`Window::on_photo_found`]). True once per due lookup: only while
    /// the link is up, no event is waiting and no photo is being sent.
    pub fn take_photo_lookup(&mut self) -> bool {
        if !self.connected || self.events_waiting() || self.photo.is_some() || !self.photo_check_due {
            return false;
        }
        self.photo_check_due = false;
        true
    }

    /// The outbox's oldest photo waiting for the hub, if any.
    pub fn on_photo_found(&mut self, photo: Option<PendingPhoto>, now: Instant) {
        if let Some(photo) = photo {
            self.photo = Some(PhotoCursor { photo, sent_next: photo.next_index, since: now });
        }
    }

    /// The chunks to send next, if the link is up, no event is waiting and the photo
    /// window has room.
    pub fn photo_chunks_wanted(&self) -> Option<ChunkRequest> {
        if !self.connected || self.events_waiting() {
            return None;
        }
        let p = self.photo?;
        let in_flight = p.sent_next.saturating_sub(p.photo.next_index);
        if in_flight >= PHOTO_WINDOW {
            return None;
        }
        let limit = usize::try_from(PHOTO_WINDOW - in_flight).unwrap_or(1);
        Some(ChunkRequest { photo: p.photo, from: p.sent_next, limit })
    }

    /// Chunk `index` of the current photo was published (QoS 1).
    pub fn on_chunk_sent(&mut self, index: u32, now: Instant) {
        let Some(p) = &mut self.photo else { return };
        if p.sent_next == p.photo.next_index {
            p.since = now;
        }
        self.outstanding += 1;
        p.sent_next = index + 1;
    }

    /// The hub's photo ack, once the outbox applied it: chunks before `next_index` are
    /// stored; `done` means the photo left the outbox and the next one is looked up.
    pub fn on_photo_ack(&mut self, sha256: &HexBytes<32>, next_index: u32, done: bool, now: Instant) {
        let Some(p) = &mut self.photo else { return };
        if p.photo.sha256 != *sha256 {
            return;
        }
        if done {
            self.photo = None;
            self.photo_check_due = true;
        } else if next_index > p.photo.next_index {
            p.photo.next_index = next_index;
            p.sent_next = p.sent_next.max(next_index);
            p.since = now;
        }
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The hub's last ack.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The highest seq published since the last start point (the hub's ack right after
    /// one).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// QoS 1 publishes awaiting PUBACK on this connection.
    pub fn in_flight(&self) -> usize {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn cfg(inflight: usize, max_unacked: u64) -> WindowConfig {
        WindowConfig { inflight, max_unacked, ack_timeout: TIMEOUT }
    }

    fn rows(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, Vec<u8>)> {
        seqs.into_iter().map(|s| (s, s.to_be_bytes().to_vec())).collect()
    }

    /// Drives the window like the uplink's pump, over a stored set of rows; returns the
    /// seqs published.
    fn pump(w: &mut Window, stored: &[u64], now: Instant) -> Vec<u64> {
        let mut sent = Vec::new();
        loop {
            match w.next_to_send(now) {
                Next::Publish { seq, .. } => sent.push(seq),
                Next::Fetch { after } => {
                    let found = rows(stored.iter().copied().filter(|s| *s > after).take(3));
                    let empty = found.is_empty();
                    w.on_fetched(found);
                    if empty {
                        break;
                    }
                }
                Next::Wait => break,
            }
        }
        sent
    }

    fn connected(cfg: WindowConfig, acked: u64, next_seq: u64, now: Instant) -> Window {
        let mut w = Window::new(cfg, acked, next_seq, now);
        w.on_reconnect(now);
        w
    }

    fn photo(next_index: u32) -> PendingPhoto {
        PendingPhoto { sha256: HexBytes([7; 32]), total_len: 10_000, next_index }
    }

    /// A connected window with no event to send that looked up a photo and found it, its
    /// chunks from `next_index` on still to go.
    fn sending_photo(next_index: u32, now: Instant) -> Window {
        let mut w = connected(cfg(8, 100), 0, 1, now);
        assert!(w.take_photo_lookup());
        w.on_photo_found(Some(photo(next_index)), now);
        w
    }

    #[test]
    fn a_window_sends_nothing_until_connected() {
        let t0 = Instant::now();
        let mut w = Window::new(cfg(4, 100), 0, 5, t0);
        assert_eq!(w.next_to_send(t0), Next::Wait);
        assert!(!w.is_connected());
        w.on_reconnect(t0);
        assert_eq!(w.next_to_send(t0), Next::Fetch { after: 0 });
    }

    #[test]
    fn after_connecting_it_fetches_above_the_hub_ack_and_publishes_in_seq_order() {
        let t0 = Instant::now();
        let mut w = connected(cfg(64, 100), 3, 9, t0);
        assert_eq!(pump(&mut w, &[4, 5, 6, 7, 8], t0), vec![4, 5, 6, 7, 8]);
        assert_eq!(w.cursor(), 8);
        assert_eq!(w.in_flight(), 5);
        assert!(!w.events_waiting());
    }

    #[test]
    fn a_published_row_carries_its_stored_bytes() {
        let t0 = Instant::now();
        let mut w = connected(cfg(4, 100), 0, 2, t0);
        assert_eq!(w.next_to_send(t0), Next::Fetch { after: 0 });
        w.on_fetched(vec![(1, b"signed".to_vec())]);
        assert_eq!(w.next_to_send(t0), Next::Publish { seq: 1, wire: b"signed".to_vec() });
    }

    #[test]
    fn publishing_stops_at_the_inflight_limit_and_each_puback_frees_one_slot() {
        let t0 = Instant::now();
        let stored: Vec<u64> = (1..=10).collect();
        let mut w = connected(cfg(3, 100), 0, 11, t0);
        assert_eq!(pump(&mut w, &stored, t0), vec![1, 2, 3]);
        assert_eq!(w.next_to_send(t0), Next::Wait);
        w.on_puback();
        assert_eq!(pump(&mut w, &stored, t0), vec![4]);
        w.on_puback();
        w.on_puback();
        assert_eq!(pump(&mut w, &stored, t0), vec![5, 6]);
        assert_eq!(w.in_flight(), 3);
    }

    #[test]
    fn a_puback_is_never_taken_as_delivery() {
        let t0 = Instant::now();
        let mut w = connected(cfg(4, 100), 0, 3, t0);
        pump(&mut w, &[1, 2], t0);
        w.on_puback();
        w.on_puback();
        w.on_puback(); // One too many (from an old connection) changes nothing.
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.acked(), 0);
        w.on_reconnect(t0);
        assert_eq!(pump(&mut w, &[1, 2], t0), vec![1, 2]);
    }

    #[test]
    fn the_online_state_takes_a_slot_of_the_inflight_window() {
        let t0 = Instant::now();
        let mut w = connected(cfg(2, 100), 0, 4, t0);
        w.on_control_published();
        assert_eq!(pump(&mut w, &[1, 2, 3], t0), vec![1]);
        w.on_puback();
        assert_eq!(pump(&mut w, &[1, 2, 3], t0), vec![2]);
    }

    #[test]
    fn a_refused_publish_is_taken_back_and_fetched_again() {
        let t0 = Instant::now();
        let stored = [1, 2, 3, 4];
        let mut w = connected(cfg(8, 100), 0, 5, t0);
        assert_eq!(w.next_to_send(t0), Next::Fetch { after: 0 });
        w.on_fetched(rows([1, 2, 3]));
        assert!(matches!(w.next_to_send(t0), Next::Publish { seq: 1, .. }));
        assert!(matches!(w.next_to_send(t0), Next::Publish { seq: 2, .. }));
        w.on_publish_refused();
        assert_eq!((w.cursor(), w.in_flight()), (1, 1));
        assert_eq!(w.next_to_send(t0), Next::Fetch { after: 1 });
        w.on_fetched(rows([2, 3, 4]));
        assert_eq!(pump(&mut w, &stored, t0), vec![2, 3, 4]);
    }

    #[test]
    fn a_fetch_that_finds_nothing_moves_the_cursor_to_the_newest_seq() {
        let t0 = Instant::now();
        let mut w = connected(cfg(8, 100), 0, 6, t0);
        assert_eq!(pump(&mut w, &[1, 2], t0), vec![1, 2]);
        // Rows 3..=5 are gone (acknowledged meanwhile, or holes without gap notices).
        assert_eq!(w.cursor(), 5);
        assert!(!w.events_waiting());
        w.on_appended(7);
        assert_eq!(pump(&mut w, &[6], t0), vec![6]);
    }

    #[test]
    fn a_fetch_skips_nothing_the_outbox_holds_and_takes_gap_notices_like_events() {
        let t0 = Instant::now();
        // A gap notice at 3 stands for 3..=6; the outbox stores no rows 4..=6.
        let mut w = connected(cfg(8, 100), 0, 9, t0);
        assert_eq!(pump(&mut w, &[1, 2, 3, 7, 8], t0), vec![1, 2, 3, 7, 8]);
    }

    #[test]
    fn fetching_waits_while_max_unacked_seqs_lie_above_the_hub_ack() {
        let t0 = Instant::now();
        let stored: Vec<u64> = (1..=20).collect();
        let mut w = connected(cfg(64, 4), 0, 21, t0);
        // Fetches of 3: the second starts at cursor 3 (< 4 above the ack), the third
        // would start at 6 and waits. Fetched rows go regardless.
        assert_eq!(pump(&mut w, &stored, t0), vec![1, 2, 3, 4, 5, 6]);
        assert!(w.events_waiting());
        assert!(w.on_hub_ack(3, t0));
        assert_eq!(pump(&mut w, &stored, t0), vec![7, 8, 9]);
        assert_eq!(w.next_to_send(t0), Next::Wait);
    }

    #[test]
    fn a_hub_ack_moves_the_window_and_drops_acknowledged_rows_it_fetched() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let mut w = connected(cfg(8, 100), 0, 7, t0);
        assert_eq!(w.next_to_send(t0), Next::Fetch { after: 0 });
        w.on_fetched(rows([1, 2, 3, 4, 5, 6]));
        assert!(matches!(w.next_to_send(t0), Next::Publish { seq: 1, .. }));
        // The hub already holds up to 4 (sent before a reconnect).
        assert!(w.on_hub_ack(4, t1));
        assert_eq!((w.acked(), w.cursor()), (4, 4));
        assert_eq!(pump(&mut w, &[5, 6], t1), vec![5, 6]);
    }

    #[test]
    fn stale_and_duplicate_hub_acks_change_nothing() {
        let t0 = Instant::now();
        let mut w = connected(cfg(8, 100), 0, 7, t0);
        pump(&mut w, &[1, 2, 3, 4, 5, 6], t0);
        assert!(w.on_hub_ack(4, t0));
        assert!(!w.on_hub_ack(4, t0));
        assert!(!w.on_hub_ack(2, t0));
        assert!(!w.on_hub_ack(0, t0));
        assert_eq!((w.acked(), w.cursor(), w.in_flight()), (4, 6, 6));
    }

    #[test]
    fn a_hub_ack_above_the_cursor_moves_the_cursor_with_it() {
        let t0 = Instant::now();
        let mut w = Window::new(cfg(8, 100), 2, 10, t0);
        assert!(w.on_hub_ack(7, t0));
        assert_eq!(w.cursor(), 7);
        w.on_reconnect(t0);
        assert_eq!(pump(&mut w, &[8, 9], t0), vec![8, 9]);
    }

    #[test]
    fn a_reconnect_resends_everything_above_the_hub_ack() {
        let t0 = Instant::now();
        let stored: Vec<u64> = (1..=8).collect();
        let mut w = connected(cfg(4, 100), 0, 9, t0);
        assert_eq!(pump(&mut w, &stored, t0), vec![1, 2, 3, 4]);
        assert!(w.on_hub_ack(2, t0));
        w.on_disconnect();
        assert_eq!(w.next_to_send(t0), Next::Wait);
        w.on_reconnect(t0);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(pump(&mut w, &stored[2..], t0), vec![3, 4, 5, 6]);
    }

    #[test]
    fn a_restart_starts_from_the_outbox_ack_with_nothing_in_flight() {
        let t0 = Instant::now();
        let mut w = Window::new(cfg(4, 100), 5, 9, t0);
        assert_eq!((w.acked(), w.cursor(), w.in_flight()), (5, 5, 0));
        assert!(w.events_waiting());
        w.on_reconnect(t0);
        assert_eq!(pump(&mut w, &[6, 7, 8], t0), vec![6, 7, 8]);
    }

    #[test]
    fn a_stalled_hub_ack_sends_everything_above_it_again_after_the_timeout() {
        let t0 = Instant::now();
        let stored: Vec<u64> = (1..=5).collect();
        let mut w = connected(cfg(8, 100), 0, 6, t0);
        pump(&mut w, &stored, t0);
        for _ in 0..5 {
            w.on_puback();
        }
        assert!(w.on_hub_ack(2, t0));
        assert_eq!(w.on_tick(t0 + TIMEOUT - Duration::from_millis(1)), Resend::default());
        let resend = w.on_tick(t0 + TIMEOUT);
        assert_eq!(resend.events, Some(StalledAck { acked: 2, published_up_to: 5 }));
        assert_eq!(w.cursor(), 2);
        assert_eq!(pump(&mut w, &stored, t0 + TIMEOUT), vec![3, 4, 5]);
    }

    #[test]
    fn a_gap_notice_reissued_below_the_cursor_goes_out_when_the_ack_stalls() {
        let t0 = Instant::now();
        let mut w = connected(cfg(8, 100), 0, 9, t0);
        assert_eq!(pump(&mut w, &[1, 2, 3, 4, 5, 6, 7, 8], t0), (1..=8).collect::<Vec<_>>());
        for _ in 0..8 {
            w.on_puback();
        }
        // Samples 3..=6 were evicted into a notice at 3 after they went out; the hub
        // kept 1..=4 and lost 5 and 6. Its ack of 4 falls inside the notice, so the
        // outbox re-issues 5..=6 as a notice at 5, below the cursor.
        assert!(w.on_hub_ack(4, t0));
        assert!(pump(&mut w, &[5, 7, 8], t0).is_empty(), "nothing above the cursor");
        assert_eq!(w.on_tick(t0 + TIMEOUT / 2).events, None);
        assert!(w.on_tick(t0 + TIMEOUT).events.is_some());
        assert_eq!(pump(&mut w, &[5, 7, 8], t0 + TIMEOUT), vec![5, 7, 8]);
    }

    #[test]
    fn the_stall_timer_waits_while_anything_is_in_flight_or_the_link_is_down() {
        let t0 = Instant::now();
        let late = t0 + 10 * TIMEOUT;
        let mut w = connected(cfg(8, 100), 0, 3, t0);
        pump(&mut w, &[1, 2], t0);
        w.on_puback();
        assert_eq!(w.on_tick(late), Resend::default());
        w.on_puback();
        w.on_disconnect();
        assert_eq!(w.on_tick(late), Resend::default());
        assert_eq!(w.cursor(), 2);
    }

    #[test]
    fn the_stall_timer_counts_from_the_first_publish_above_the_ack() {
        let t0 = Instant::now();
        let t1 = t0 + 2 * TIMEOUT;
        let mut w = connected(cfg(8, 100), 0, 2, t0);
        // Caught up for a long time: nothing to wait for.
        assert_eq!(w.on_tick(t1), Resend::default());
        w.on_appended(3);
        assert_eq!(pump(&mut w, &[1, 2], t1), vec![1, 2]);
        w.on_puback();
        w.on_puback();
        assert_eq!(w.on_tick(t1 + TIMEOUT / 2).events, None);
        assert!(w.on_tick(t1 + TIMEOUT).events.is_some());
    }

    #[test]
    fn each_hub_ack_that_moves_restarts_the_stall_timer() {
        let t0 = Instant::now();
        let mut w = connected(cfg(8, 100), 0, 4, t0);
        pump(&mut w, &[1, 2, 3], t0);
        for _ in 0..3 {
            w.on_puback();
        }
        let t1 = t0 + TIMEOUT - Duration::from_secs(1);
        assert!(w.on_hub_ack(1, t1));
        assert_eq!(w.on_tick(t0 + TIMEOUT).events, None);
        assert!(!w.on_hub_ack(1, t1 + TIMEOUT));
        assert!(w.on_tick(t1 + TIMEOUT).events.is_some());
    }

    #[test]
    fn photos_wait_behind_events_and_are_looked_up_once_per_due_check() {
        let t0 = Instant::now();
        let mut w = Window::new(cfg(8, 100), 0, 2, t0);
        assert!(!w.take_photo_lookup(), "disconnected");
        w.on_reconnect(t0);
        assert!(!w.take_photo_lookup(), "an event is waiting");
        pump(&mut w, &[1], t0);
        assert!(w.take_photo_lookup());
        assert!(!w.take_photo_lookup());
        w.on_photo_found(None, t0);
        assert_eq!(w.photo_chunks_wanted(), None);
        w.on_puback();
        w.on_tick(t0);
        assert!(w.take_photo_lookup(), "a tick with no photo makes a lookup due");
    }

    #[test]
    fn photo_chunks_go_at_most_photo_window_beyond_the_hub_photo_ack() {
        let t0 = Instant::now();
        let mut w = sending_photo(3, t0);
        let want = w.photo_chunks_wanted().expect("room");
        assert_eq!((want.from, want.limit), (3, 2));
        w.on_chunk_sent(3, t0);
        w.on_chunk_sent(4, t0);
        assert_eq!(w.photo_chunks_wanted(), None);
        assert_eq!(w.in_flight(), 2);
        w.on_photo_ack(&HexBytes([7; 32]), 4, false, t0);
        let want = w.photo_chunks_wanted().expect("room");
        assert_eq!((want.from, want.limit), (5, 1));
        // An ack for another photo, or one going back, changes nothing.
        w.on_photo_ack(&HexBytes([8; 32]), 9, true, t0);
        w.on_photo_ack(&HexBytes([7; 32]), 2, false, t0);
        assert_eq!(w.photo_chunks_wanted().map(|c| c.from), Some(5));
        w.on_photo_ack(&HexBytes([7; 32]), 0, true, t0);
        assert_eq!(w.photo_chunks_wanted(), None);
        assert!(w.take_photo_lookup(), "the next photo is looked up");
    }

    #[test]
    fn a_new_event_pauses_the_photo_and_a_reconnect_resends_its_unacknowledged_chunks() {
        let t0 = Instant::now();
        let mut w = sending_photo(0, t0);
        w.on_chunk_sent(0, t0);
        w.on_appended(2);
        assert_eq!(w.photo_chunks_wanted(), None);
        pump(&mut w, &[1], t0);
        assert_eq!(w.photo_chunks_wanted().map(|c| c.from), Some(1));
        w.on_disconnect();
        w.on_reconnect(t0);
        assert_eq!(pump(&mut w, &[1], t0), vec![1]);
        assert!(w.on_hub_ack(1, t0));
        assert_eq!(w.photo_chunks_wanted().map(|c| (c.from, c.limit)), Some((0, 2)));
    }

    #[test]
    fn a_stalled_photo_ack_resends_its_chunks_after_the_timeout() {
        let t0 = Instant::now();
        let mut w = sending_photo(0, t0);
        w.on_chunk_sent(0, t0);
        w.on_chunk_sent(1, t0);
        w.on_puback();
        w.on_puback();
        assert_eq!(w.on_tick(t0 + TIMEOUT / 2).photo, None);
        assert_eq!(w.on_tick(t0 + TIMEOUT).photo, Some(HexBytes([7; 32])));
        assert_eq!(w.photo_chunks_wanted().map(|c| (c.from, c.limit)), Some((0, 2)));
    }
}
