//! A dead zone longer than the outbox budget: the van keeps sampling its position and
//! making confirmations with the broker out of reach, so the outbox thins the oldest
//! samples and leaves a signed gap notice for each evicted run. When the link returns,
//! the hub holds every confirmation exactly once, in order, its contiguous ack moves over
//! the holes to the van's last seq, and the outbox drains to nothing.

use std::time::Duration;

use doorstep_e2e::{AckedVan, confirmation, position};

/// The outbox budget: a few dozen confirmations and notices, and little room for the trail.
const BUDGET: u64 = 24 * 1024;
/// Position samples between two confirmations, in turn: a lone sample between two
/// doors, short hops, and long drives between stops.
const RUNS: [u32; 4] = [1, 3, 12, 40];
const STOPS: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_evicted_in_a_dead_zone_become_gap_notices_the_hub_acks_past() {
    let mut setup = AckedVan::start("van-gap", 5).await.expect("broker and receiver");
    let agent = setup.agent_in_dead_zone(BUDGET).await.expect("agent");
    let (van, receiver) = (&setup.van, &setup.receiver);

    let mut samples = 0u32;
    for stop in 1..=STOPS {
        for _ in 0..RUNS[usize::try_from(stop).expect("fits") % RUNS.len()] {
            samples += 1;
            agent.append(position(samples)).await.expect("older samples make room for a new one");
        }
        agent.append(confirmation(stop)).await.expect("a confirmation is never refused for samples");
    }
    let stats = agent.outbox.stats().await.expect("stats");
    let (_, next_seq) = agent.outbox.cursor().await.expect("cursor");
    let last_seq = next_seq - 1;
    assert_eq!(last_seq, u64::from(samples + STOPS));
    assert!(stats.stored_bytes <= BUDGET, "{} of {BUDGET} bytes", stats.stored_bytes);
    assert!(stats.evicted_positions > u64::from(samples) / 2, "only {} evicted", stats.evicted_positions);
    let gap_rows = stats.depth_by_kind.get("gap").map_or(0, |d| d.count);
    assert!(gap_rows >= 10, "{gap_rows} gap notices for {} evicted samples", stats.evicted_positions);
    assert_eq!(stats.rejected_confirmations, 0);

    setup.broker.restart().await.expect("broker back"); // Out of the dead zone.
    let delivered = receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van) >= last_seq).await;
    assert!(
        delivered,
        "the hub's contiguous ack stopped at {} of {last_seq}",
        receiver.received().contiguous(van)
    );
    let drained = agent.wait_until_empty(Duration::from_secs(30)).await.expect("stats");
    assert_eq!(drained.depth(), 0, "left in the outbox: {:?}", drained.depth_by_kind);
    assert_eq!(agent.outbox.cursor().await.expect("cursor"), (last_seq, next_seq));
    agent.stop().await.expect("stop");

    let received = receiver.received();
    received.assert_every_confirmation_once_in_order(van, STOPS);
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
    let notices = received.gap_notices(van);
    let evicted: u64 = notices.iter().map(|g| g.last_seq - g.first_seq + 1).sum();
    assert_eq!(evicted, stats.evicted_positions, "every evicted sample is named by exactly one notice");
    assert!(
        notices.iter().any(|g| g.first_seq == g.last_seq),
        "a lone sample gets its own notice: {notices:?}"
    );
    assert_eq!(received.contiguous(van), last_seq);
}
