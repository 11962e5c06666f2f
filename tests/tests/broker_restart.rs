//! The broker dies mid-stream, with and without persistence; every confirmation still
//! reaches the hub exactly once, in order.

use std::time::Duration;

use doorstep_agent::uplink::UplinkNotice;
use doorstep_e2e::{
    AckingReceiver, Broker, BrokerOptions, TestAgent, TestAgentOptions, confirmation, device, device_key,
    hub_key,
};

const COUNT: u32 = 300;

async fn survive_a_broker_restart(persistence: bool, graceful: bool) {
    doorstep_e2e::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker =
        Broker::start(BrokerOptions { persistence, ..BrokerOptions::default() }).await.expect("broker");
    let van = device("van-1");
    let key = device_key(1);
    let receiver = AckingReceiver::start(broker.port(), &[(van.clone(), &key)], hub_key()).await;
    let mut agent = TestAgent::start(&TestAgentOptions::new(dir.path(), broker.port(), van.clone(), 1))
        .await
        .expect("agent");

    for n in 1..=COUNT {
        agent.append(confirmation(n)).await.expect("append");
        if n == COUNT / 3 {
            let some = receiver.wait_for(Duration::from_secs(20), |r| r.contiguous(&van) >= 20).await;
            assert!(some, "nothing delivered before the restart");
            if graceful { broker.stop() } else { broker.kill() }
        }
        if n == 2 * COUNT / 3 {
            broker.restart().await.expect("restart");
        }
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let all = receiver.wait_for(Duration::from_secs(60), |r| r.contiguous(&van) >= u64::from(COUNT)).await;
    let depth_after = async {
        // The hub's ack reaches the agent after the receiver has everything.
        for _ in 0..200 {
            if agent.outbox.stats().await.expect("stats").depth() == 0 {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        agent.outbox.stats().await.expect("stats").depth()
    }
    .await;
    let mut disconnects = 0;
    while let Ok(notice) = agent.notices.try_recv() {
        disconnects += usize::from(matches!(notice, UplinkNotice::Disconnected { .. }));
    }
    agent.stop().await.expect("stop");
    assert!(disconnects >= 1, "the agent never noticed the broker going away");
    let received = receiver.received();
    assert!(all, "receiver holds {} of {COUNT}", received.contiguous(&van));
    received.assert_every_confirmation_once_in_order(&van, COUNT);
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
    assert_eq!(depth_after, 0, "acknowledged rows leave the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_without_persistence_loses_nothing() {
    survive_a_broker_restart(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_mid_stream_with_persistence_loses_nothing() {
    survive_a_broker_restart(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_with_persistence_enabled_loses_nothing() {
    survive_a_broker_restart(true, false).await;
}
