//! A patchy cellular link: a proxy between agent and broker drops every connection or
//! stalls at random. Confirmations, the position trail, the live position and a proof
//! photo all get through; every confirmation exactly once, in order.

use std::sync::Arc;
use std::time::Duration;

use doorstep_agent::uplink::LivePosition;
use doorstep_e2e::{
    AckingReceiver, Broker, BrokerOptions, LossyProxy, TestAgent, TestAgentOptions, confirmation, device,
    device_key, hub_key, position,
};
use doorstep_proto::{FixEvidence, HexBytes};

const COUNT: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_link_delivers_every_confirmation_once_in_order_and_the_photo_whole() {
    doorstep_e2e::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(BrokerOptions::default()).await.expect("broker");
    let proxy = Arc::new(LossyProxy::start(broker.port()).await.expect("proxy"));
    let van = device("van-lossy");
    let key = device_key(3);
    let receiver = AckingReceiver::start(broker.port(), &[(van.clone(), &key)], hub_key()).await;
    let agent = TestAgent::start(&TestAgentOptions::new(dir.path(), proxy.port(), van.clone(), 3))
        .await
        .expect("agent");

    let photo: Vec<u8> = (0..100_000u32).map(|i| u8::try_from(i % 251).expect("byte")).collect();
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &photo).as_ref());
    agent.outbox.add_photo(HexBytes(sha), photo.clone()).await.expect("queue photo");

    let chaos = proxy.chaos(Duration::from_millis(400), Duration::from_millis(1500));
    let mut last_seq = 0;
    for n in 1..=COUNT {
        last_seq = agent.append(confirmation(n)).await.expect("append").seq;
        agent.append(position(n)).await.expect("append position");
        let fix = FixEvidence::new(1_767_225_600_000 + i64::from(n), 47.0, 8.0);
        agent.positions.send_replace(Some(LivePosition { fix, mono_ms: u64::from(n) }));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    chaos.cancel();
    last_seq += 1; // The last position sample.

    let all = receiver
        .wait_for(Duration::from_secs(60), |r| {
            r.contiguous(&van) >= last_seq && r.photos.contains_key(&HexBytes(sha))
        })
        .await;
    agent.stop().await.expect("stop");
    assert!(proxy.drops() > 0, "the proxy never dropped a connection");
    let received = receiver.received();
    assert!(
        all,
        "receiver holds {} of {last_seq}, photo: {}",
        received.contiguous(&van),
        received.photos.len()
    );
    received.assert_every_confirmation_once_in_order(&van, COUNT);
    assert_eq!(received.photos.get(&HexBytes(sha)), Some(&photo));
    assert!(received.live_positions > 0, "no live position got through");
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
}
