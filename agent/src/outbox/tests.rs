//! Fixtures shared by the outbox's unit tests, and the tests that span its jobs (append,
//! pending and ack across a restart).

use std::path::Path;

use doorstep_proto::{
    DeviceId, Envelope, Event, FixEvidence, Gap, Nearby, RouteId, SigningKey, StopId, TrustedKey,
};

use super::*;

pub(super) fn device() -> DeviceId {
    DeviceId::new("van-7").expect("id")
}

pub(super) fn key() -> SigningKey {
    SigningKey::from_seed(&[3; 32]).expect("seed")
}

pub(super) fn nearby(n: u32) -> Event {
    Event::Nearby(Nearby {
        route_id: RouteId::new("r-1").expect("id"),
        stop_id: StopId::new("s-1").expect("id"),
        distance_m: n,
        fix: FixEvidence::new(1_700_000_000_000, 47.0, 8.0),
    })
}

pub(super) fn position(n: i64) -> Event {
    Event::Position(FixEvidence::new(1_700_000_000_000 + n, 47.0, 8.0))
}

pub(super) fn open(dir: &Path, cfg: OutboxConfig) -> Outbox {
    Outbox::open(&dir.join("agent.db"), cfg).expect("open")
}

pub(super) fn decode(wire: &[u8]) -> Envelope {
    let trusted = TrustedKey { device: device(), key: key().public_key() };
    Envelope::open(wire, &trusted).expect("verifies")
}

/// An outbox in `dir` with the default config and `count` nearby events appended
/// (distances 0 up).
pub(super) fn with_nearby(dir: &Path, count: u32) -> Outbox {
    let mut outbox = open(dir, OutboxConfig::new(device()));
    for n in 0..count {
        outbox.append(&key(), nearby(n), 0, 0).expect("append");
    }
    outbox
}

/// An outbox in `dir` with the default config and position samples 1 to `count` appended.
pub(super) fn with_positions(dir: &Path, count: i64) -> Outbox {
    let mut outbox = open(dir, OutboxConfig::new(device()));
    for n in 1..=count {
        outbox.append(&key(), position(n), 0, 0).expect("position");
    }
    outbox
}

/// The default config with a budget of `max_bytes`.
pub(super) fn budget(max_bytes: u64) -> OutboxConfig {
    OutboxConfig { max_bytes, ..OutboxConfig::new(device()) }
}

/// The seqs of the nearby events (the confirmations these tests append) among `rows`.
pub(super) fn nearby_seqs(rows: &[Envelope]) -> Vec<u64> {
    rows.iter().filter(|e| matches!(e.event, Event::Nearby(_))).map(|e| e.seq).collect()
}

/// Every stored row, verified, in seq order.
pub(super) fn stored(outbox: &mut Outbox) -> Vec<Envelope> {
    outbox.pending(0, 100_000).expect("pending").iter().map(|(_, wire)| decode(wire)).collect()
}

/// Every stored row, read without handing anything to the uplink (no high-water mark).
pub(super) fn stored_unpublished(outbox: &Outbox) -> Vec<Envelope> {
    let mut stmt = outbox.conn.prepare("SELECT wire FROM events ORDER BY seq").expect("select");
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).expect("query");
    rows.map(|wire| decode(&wire.expect("row"))).collect()
}

/// The seqs the stored rows stand for: an event its own, a gap notice its range.
pub(super) fn covered(rows: &[Envelope]) -> Vec<u64> {
    rows.iter()
        .flat_map(|e| match e.event {
            Event::Gap(gap) => gap.first_seq..=gap.last_seq,
            _ => e.seq..=e.seq,
        })
        .collect()
}

pub(super) fn gaps(rows: &[Envelope]) -> Vec<Gap> {
    rows.iter()
        .filter_map(|e| match e.event {
            Event::Gap(gap) => Some(gap),
            _ => None,
        })
        .collect()
}

/// What the budget is charged, recomputed from the table as `status` does.
pub(super) fn charged_in_table(outbox: &Outbox) -> u64 {
    outbox.stats().expect("stats").stored_bytes
}

#[test]
fn appended_events_are_signed_numbered_from_one_and_pending_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut outbox = open(dir.path(), OutboxConfig::new(device()));
    let a = outbox.append(&key(), nearby(1), 10, 1).expect("append");
    let b = outbox.append(&key(), position(2), 11, 2).expect("append");
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_ne!(a.event_id, b.event_id);
    let pending = outbox.pending(0, 10).expect("pending");
    assert_eq!(pending.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
    let env = decode(&pending[0].1);
    assert_eq!((env.seq, env.event_id, env.event), (1, a.event_id, nearby(1)));
    assert_eq!(outbox.pending(1, 10).expect("pending").len(), 1);
}

#[test]
fn sequence_numbers_survive_a_restart_and_are_never_reused_after_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut outbox = with_nearby(dir.path(), 5);
        assert_eq!(outbox.ack(&key(), 5).expect("ack"), 5);
    }
    let mut outbox = open(dir.path(), OutboxConfig::new(device()));
    assert_eq!(outbox.acked_seq(), 5);
    assert_eq!(outbox.append(&key(), nearby(9), 0, 0).expect("append").seq, 6);
}
