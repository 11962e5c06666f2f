//! The compact trail through a dead zone longer than the outbox budget. The van's own
//! decider samples the trail and emits it in signed batches, a driver's exception now and
//! then cuts a batch short (the trail leading to it goes first), and with the broker out
//! of reach the outbox evicts the oldest trail batches, leaving a signed gap notice for
//! each evicted run, while every confirmation stays. When the link returns the hub acks
//! past every hole, holds each confirmation once and in order, and holds every sample
//! of every batch that was not evicted exactly once; the samples the decider was still
//! collecting while an eviction happened arrive in the batch after it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use doorstep_agent::decide::{Decided, Decider, ExceptionReport, TrailConfig};
use doorstep_agent::fix::GoodFix;
use doorstep_agent::geofence::GeofenceConfig;
use doorstep_e2e::{AckedVan, TestAgent};
use doorstep_proto::{Event, ExceptionReason};

/// The outbox budget: room for the confirmations and notices of the dead zone and a
/// fraction of its trail.
const BUDGET: u64 = 12 * 1024;
/// GNSS time of the first fix: 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
/// The dead zone, seconds of driving.
const DEAD_ZONE_S: i64 = 2 * 3600;
/// Driving after the link is back, seconds.
const AFTER_S: i64 = 600;
/// A driver's exception every so many seconds.
const EXCEPTION_EVERY_S: i64 = 300;
/// A sample every 10 s, six to a batch, a batch no older than a minute: a full batch
/// goes by count on an open road, and by age after the GNSS dropouts [`fix_at`] makes,
/// which leaves the sample of the fix that found the batch too old in the decider.
const TRAIL: TrailConfig = TrailConfig { interval_ms: 10_000, batch_samples: 6, batch_max_age_ms: 60_000 };

/// A fix `t` seconds into the drive, or none: the receiver loses the sky for 45 s every
/// four minutes (an underpass, a street canyon).
fn fix_at(t: i64) -> Option<GoodFix> {
    if t % 240 >= 195 {
        return None;
    }
    let s = t as f64;
    Some(GoodFix {
        utc_ms: T0 + t * 1000,
        lat: 47.30 + s * 0.000_03,
        lon: 8.50 + s * 0.000_04,
        accuracy_m: 4.0,
        speed_mps: Some(5.0),
        hdop: Some(0.9),
        sats: Some(10),
    })
}

fn exception(n: i64) -> ExceptionReport {
    ExceptionReport {
        reason: ExceptionReason::RecipientAbsent,
        codes: vec![format!("TN{n:08}")],
        stop_id: None,
        note: None,
        photo: None,
    }
}

/// What the van stored, by seq.
#[derive(Debug, Default)]
struct Stored {
    /// Trail batches: seq to the GNSS times of their samples.
    trails: BTreeMap<u64, Vec<i64>>,
    /// Confirmations: seq and tracking number, in order.
    confirmations: Vec<(u64, String)>,
    /// Samples the decider held while an append evicted, with the seq of that append.
    held_during_eviction: Vec<(u64, Vec<i64>)>,
}

/// The van's brain without its devices: the decider's events into the outbox, in order.
struct Van {
    decider: Decider,
    agent: TestAgent,
    stored: Stored,
    exceptions: i64,
}

impl Van {
    async fn drive(&mut self, seconds: std::ops::Range<i64>) {
        for t in seconds {
            let mut decided = match fix_at(t) {
                Some(fix) => self.decider.on_fix(&fix),
                None => Vec::new(),
            };
            if t % EXCEPTION_EVERY_S == EXCEPTION_EVERY_S - 1 {
                self.exceptions += 1;
                let (reply, events) =
                    self.decider.on_exception(T0 + t * 1000 + 500, exception(self.exceptions));
                assert!(reply.ok, "{reply:?}");
                decided.extend(events);
            }
            for d in decided {
                self.store(d, t).await;
            }
        }
    }

    async fn store(&mut self, d: Decided, t: i64) {
        let evicted_before = self.agent.outbox.stats().await.expect("stats").evicted_positions;
        let appended = self
            .agent
            .outbox
            .append(d.event.clone(), d.utc_ms, u64::try_from(t).expect("t") * 1000)
            .await
            .unwrap_or_else(|e| panic!("{} not stored: {e}", d.event.kind()));
        match &d.event {
            Event::Trail(trail) => {
                let times = trail.samples().expect("samples").iter().map(|s| s.utc_ms).collect();
                self.stored.trails.insert(appended.seq, times);
            }
            Event::Exception(e) => {
                self.stored.confirmations.push((appended.seq, e.tracking_numbers[0].to_string()));
            }
            other => panic!("the van decided {other:?}"),
        }
        let evicted_after = self.agent.outbox.stats().await.expect("stats").evicted_positions;
        let held: Vec<i64> = self.decider.pending_trail().iter().map(|s| s.utc_ms).collect();
        if evicted_after > evicted_before && !held.is_empty() {
            self.stored.held_during_eviction.push((appended.seq, held));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trail_batches_evicted_in_a_dead_zone_leave_exact_gap_notices_and_every_confirmation_arrives_once() {
    let mut setup = AckedVan::start("van-trail", 6).await.expect("broker and receiver");
    let agent = setup.agent_in_dead_zone(BUDGET).await.expect("agent");
    let (van_id, receiver) = (&setup.van, &setup.receiver);
    let mut van = Van {
        decider: Decider::new(GeofenceConfig::default()).with_trail(TRAIL),
        agent,
        stored: Stored::default(),
        exceptions: 0,
    };

    van.drive(0..DEAD_ZONE_S).await;
    let stats = van.agent.outbox.stats().await.expect("stats");
    assert!(stats.stored_bytes <= BUDGET, "{} of {BUDGET} bytes", stats.stored_bytes);
    assert!(stats.evicted_positions > 20, "only {} trail batches evicted", stats.evicted_positions);
    assert!(stats.depth_by_kind.get("gap").map_or(0, |d| d.count) >= 2, "{:?}", stats.depth_by_kind);
    assert_eq!(stats.rejected_confirmations, 0);
    let evicted_in_dead_zone = stats.evicted_positions;
    let straddles = van.stored.held_during_eviction.len();
    assert!(straddles > 5, "only {straddles} evictions while the decider held samples");

    setup.broker.restart().await.expect("broker back"); // Out of the dead zone.
    let (_, next_seq) = van.agent.outbox.cursor().await.expect("cursor");
    let backlog = next_seq - 1;
    let drained = receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van_id) >= backlog).await;
    assert!(drained, "the backlog did not reach the hub: {}", receiver.received().contiguous(van_id));
    // The hub's ack frees the outbox; the batch being filled was never at risk.
    let emptied = van.agent.wait_until_empty(Duration::from_secs(30)).await.expect("stats");
    assert_eq!(emptied.depth(), 0, "not acked: {:?}", emptied.depth_by_kind);
    van.drive(DEAD_ZONE_S..DEAD_ZONE_S + AFTER_S).await;
    // The driver turns the ignition off: a graceful stop stores the batch being filled.
    if let Some(last) = van.decider.flush_trail() {
        van.store(last, DEAD_ZONE_S + AFTER_S).await;
    }
    let (_, next_seq) = van.agent.outbox.cursor().await.expect("cursor");
    let last_seq = next_seq - 1;
    let delivered = receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van_id) >= last_seq).await;
    assert!(
        delivered,
        "the hub's contiguous ack stopped at {} of {last_seq}",
        receiver.received().contiguous(van_id)
    );
    let drained = van.agent.wait_until_empty(Duration::from_secs(30)).await.expect("stats");
    assert_eq!(drained.depth(), 0, "left in the outbox: {:?}", drained.depth_by_kind);
    assert_eq!(drained.evicted_positions, evicted_in_dead_zone, "with the link up nothing is evicted");
    let stored = std::mem::take(&mut van.stored);
    van.agent.stop().await.expect("stop");

    let received = receiver.received();
    assert!(received.conflicts.is_empty(), "{:?}", received.conflicts);
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
    assert_eq!(received.contiguous(van_id), last_seq);

    // Every confirmation once, in order, at the seq it was stored at.
    let confirmations: Vec<(u64, String)> = received
        .confirmations(van_id)
        .iter()
        .map(|e| match &e.event {
            Event::Exception(x) => (e.seq, x.tracking_numbers[0].to_string()),
            other => panic!("unexpected confirmation {other:?}"),
        })
        .collect();
    assert_eq!(confirmations, stored.confirmations);
    assert_eq!(confirmations.len(), usize::try_from(van.exceptions).expect("fits"));

    // The gap notices cover exactly the evicted batches: no confirmation, no batch the
    // hub received, no seq twice.
    let mut received_trails: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for ((d, seq), e) in &received.events {
        if let (true, Event::Trail(trail)) = (d == van_id, &e.event) {
            received_trails
                .insert(*seq, trail.samples().expect("samples").iter().map(|s| s.utc_ms).collect());
        }
    }
    let evicted: BTreeSet<u64> =
        stored.trails.keys().copied().filter(|seq| !received_trails.contains_key(seq)).collect();
    assert_eq!(evicted.len() as u64, evicted_in_dead_zone, "the outbox's count of evicted rows");
    let mut covered = BTreeSet::new();
    for gap in received.gap_notices(van_id) {
        for seq in gap.first_seq..=gap.last_seq {
            assert!(covered.insert(seq), "seq {seq} in two gap notices");
        }
    }
    assert_eq!(covered, evicted, "gap notices name exactly the evicted trail batches");
    for (seq, times) in &received_trails {
        assert_eq!(stored.trails.get(seq), Some(times), "trail at seq {seq} as the van stored it");
    }

    // Samples: each in one batch, in GNSS order along the seqs; those of kept batches all
    // arrive, and the ones held in the decider during an eviction arrive in a later batch.
    let all: Vec<i64> = stored.trails.values().flatten().copied().collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "no sample twice, order kept along the seqs");
    let arrived: BTreeSet<i64> = received_trails.values().flatten().copied().collect();
    let mut arrived_later = 0;
    for (evicting_seq, held) in &stored.held_during_eviction {
        let (batch_seq, batch) = stored
            .trails
            .range(evicting_seq + 1..)
            .find(|(_, times)| times.contains(&held[0]))
            .expect("the held samples went out in a later batch");
        assert!(held.iter().all(|t| batch.contains(t)), "held samples stay together: {held:?} in {batch:?}");
        if !evicted.contains(batch_seq) {
            assert!(held.iter().all(|t| arrived.contains(t)), "{held:?} stored at seq {batch_seq} and lost");
            arrived_later += 1;
        }
    }
    eprintln!(
        "{} trail batches stored, {} evicted under {} gap notices, {} confirmations kept; \
         {} evictions while the decider held samples, {arrived_later} of those batches reached the hub",
        stored.trails.len(),
        evicted.len(),
        received.gap_notices(van_id).len(),
        confirmations.len(),
        stored.held_during_eviction.len(),
    );
    assert!(arrived_later > 0, "no batch that straddled an eviction reached the hub");
    let kept: BTreeSet<i64> = stored
        .trails
        .iter()
        .filter(|(seq, _)| !evicted.contains(seq))
        .flat_map(|(_, times)| times.iter().copied())
        .collect();
    assert_eq!(arrived, kept);
}
