//! The outbox fills during an outage: confirmations beyond its budget are refused loudly
//! (typed error, counter, status alarm) and every stored one still reaches the hub once,
//! in order, when the link returns.

use std::time::Duration;

use doorstep_agent::outbox::OutboxError;
use doorstep_agent::status::{link_record_path, read_status};
use doorstep_e2e::{AckedVan, confirmation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_loudly_and_delivers_every_stored_confirmation_once() {
    let mut setup = AckedVan::start("van-full", 4).await.expect("broker and receiver");
    let agent = setup.agent_in_dead_zone(32 * 1024).await.expect("agent");
    let (van, receiver) = (&setup.van, &setup.receiver);

    let mut stored = 0u32;
    let err = loop {
        match agent.append(confirmation(stored + 1)).await {
            Ok(appended) => {
                stored += 1;
                assert_eq!(appended.seq, u64::from(stored));
            }
            Err(e) => break e,
        }
        assert!(stored < 10_000, "the budget never bit");
    };
    assert!(matches!(err, OutboxError::Full { .. }), "{err}");
    assert!(stored > 50, "only {stored} fit in 32 KiB");
    // Refused again while still full; nothing stored is touched.
    assert!(agent.append(confirmation(stored + 1)).await.is_err());

    let db = setup.db();
    let status = read_status(&db, &link_record_path(&db)).expect("status");
    assert_eq!(status.outbox.rejected_confirmations, 2);
    assert!(status.render().contains("ALARM: OUTBOX FULL"), "{}", status.render());

    setup.broker.restart().await.expect("broker back");
    let delivered =
        receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van) >= u64::from(stored)).await;
    assert!(delivered, "receiver holds {} of {stored}", receiver.received().contiguous(van));
    // With the backlog acknowledged there is room again.
    let mut appended = None;
    for _ in 0..100 {
        match agent.append(confirmation(stored + 1)).await {
            Ok(a) => {
                appended = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(appended.map(|a| a.seq), Some(u64::from(stored) + 1));
    let delivered =
        receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van) > u64::from(stored)).await;
    agent.stop().await.expect("stop");
    assert!(delivered);
    receiver.received().assert_every_confirmation_once_in_order(van, stored + 1);
}
