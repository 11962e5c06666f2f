//! The hub's watch, end to end through a real Mosquitto and a lossy link: a parked van
//! sends its live position only on its heartbeat; a signed watch makes it send every
//! second for as long as the watch says, then it falls back by itself; a watch that ends
//! while the link is down does not make it send fast once it is back, nor does one that
//! was queued at the broker through the outage and arrives after it ended.
//!
//! The agent is the library's outbox and uplink (`daemon::spawn_outbox_and_uplink`, the
//! wiring `doorstep-agent run` uses) behind a [`LossyProxy`]; the test plays the hub with
//! its own MQTT session: it signs watches with the hub key and reads the `pos` topic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use doorstep_agent::daemon::{self, UplinkWiring};
use doorstep_agent::live::LiveConfig;
use doorstep_agent::outbox::OutboxConfig;
use doorstep_agent::uplink::{LivePosition, UplinkNotice};
use doorstep_e2e::{Broker, BrokerOptions, LossyProxy, TestAgentOptions, device, device_key, hub_key};
use doorstep_proto::{Channel, DeviceId, Envelope, Event, FixEvidence, HubMessage, Topic, Watch};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn wall_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The hub's side: live positions read from the van's `pos` topic (when each arrived),
/// and signed watches published on its `ack` topic.
struct Hub {
    client: AsyncClient,
    positions: Arc<Mutex<Vec<Instant>>>,
    device: DeviceId,
    stop: CancellationToken,
}

impl Hub {
    async fn connect(port: u16, device: &DeviceId) -> Hub {
        let mut options = MqttOptions::new("hub-live-watch", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let pos = Topic::new(doorstep_e2e::fleet(), device.clone(), Channel::Pos).to_string();
        let positions = Arc::new(Mutex::new(Vec::new()));
        let (seen, stop) = (Arc::clone(&positions), CancellationToken::new());
        let (subscribed_tx, mut subscribed) = mpsc::channel(1);
        let (sub, token) = (client.clone(), stop.clone());
        let van = device.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = token.cancelled() => return,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(pos.clone(), QoS::AtMostOnce);
                    }
                    Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) if !p.retain => {
                        let (_, envelope) = Envelope::peek_unverified(&p.payload).expect("a signed envelope");
                        assert_eq!(envelope.device, van);
                        assert_eq!(envelope.seq, 0, "a live position is outside the numbered stream");
                        assert!(matches!(envelope.event, Event::Position(_)));
                        seen.lock().expect("lock").push(Instant::now());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        subscribed.recv().await.expect("the hub subscribed to the van's live position");
        Hub { client, positions, device: device.clone(), stop }
    }

    /// Signs and publishes a watch issued now (QoS 1, not retained, as the hub does).
    async fn watch(&self, for_s: u16, every_s: u16) {
        let message =
            HubMessage::Watch(Watch { device: self.device.clone(), issued_ms: wall_ms(), for_s, every_s });
        let payload = message.seal(&hub_key()).expect("seal");
        let topic = Topic::new(doorstep_e2e::fleet(), self.device.clone(), Channel::Ack).to_string();
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("publish");
    }

    /// Live positions that arrived in `[from, to)`.
    fn sent_between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.positions.lock().expect("lock").iter().copied().filter(|t| *t >= from && *t < to).collect()
    }
}

/// Waits up to `timeout` for a notice matching `want`; false if none came.
async fn notice(
    notices: &mut mpsc::Receiver<UplinkNotice>,
    timeout: Duration,
    want: impl Fn(&UplinkNotice) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while let Ok(Some(n)) = tokio::time::timeout_at(deadline, notices.recv()).await {
        if want(&n) {
            return true;
        }
    }
    false
}

/// The largest gap between consecutive times, with `from` and `to` as the ends.
fn largest_gap(from: Instant, times: &[Instant], to: Instant) -> Duration {
    let mut all = vec![from];
    all.extend_from_slice(times);
    all.push(to);
    all.windows(2).map(|w| w[1].saturating_duration_since(w[0])).max().unwrap_or_default()
}

/// After the van is back at `back_at`: what it sends on reconnecting (its newest position,
/// and one it had queued as the link went) arrives within the first second or so, and
/// then nothing at a watched pace for the next three seconds.
fn assert_no_fast_pace(hub: &Hub, back_at: Instant, after_what: &str) {
    let burst = hub.sent_between(back_at - Duration::from_secs(1), back_at + Duration::from_millis(1_500));
    assert!(burst.len() <= 2, "{} live positions on reconnecting after {after_what}", burst.len());
    let later =
        hub.sent_between(back_at + Duration::from_millis(1_500), back_at + Duration::from_millis(4_500));
    assert_eq!(later, [], "live positions at a watched pace after {after_what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_makes_a_parked_van_send_often_and_ends_on_time_even_while_the_link_is_down() {
    doorstep_e2e::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(BrokerOptions::default()).await.expect("broker");
    let proxy = LossyProxy::start(broker.port()).await.expect("proxy");
    let van = device("van-watch");
    let options = TestAgentOptions::new(dir.path(), proxy.port(), van.clone(), 41);
    let settings = options.uplink_config().validate().expect("settings");
    let hub = Hub::connect(broker.port(), &van).await;

    // A parked van: a fix every 250 ms with a metre of GNSS noise, dated by the wall clock
    // (the van's GNSS time), standing still.
    let (positions, position_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let feeder = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u32;
            while !cancel.is_cancelled() {
                let wobble = f64::from(n % 7) * 1e-6;
                let fix = FixEvidence::new(wall_ms(), 47.37 + wobble, 8.54 - wobble).with_speed_mps(0.0);
                let mono_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
                positions.send_replace(Some(LivePosition { fix, mono_ms }));
                n += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let (notice_tx, mut notices) = mpsc::channel(1024);
    let wiring = UplinkWiring {
        notices: Some(notice_tx),
        positions: Some(position_rx),
        live: LiveConfig::default(),
        ..UplinkWiring::default()
    };
    let (_outbox, uplink) = daemon::spawn_outbox_and_uplink(
        &options.db,
        OutboxConfig::new(van.clone()),
        Arc::new(device_key(41)),
        settings,
        wiring,
        cancel.clone(),
    )
    .await
    .expect("outbox and uplink");
    assert!(
        notice(&mut notices, Duration::from_secs(10), |n| matches!(n, UplinkNotice::Connected { .. })).await,
        "the van connected"
    );

    // Unwatched and parked: after what it sends on connecting, nothing for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hub.sent_between(quiet_from, Instant::now()),
        [],
        "a parked, unwatched van waits for its heartbeat"
    );

    // Watched for 4 s at a second's pace: a position at once, then every second, then quiet.
    let watched_at = Instant::now();
    hub.watch(4, 1).await;
    assert!(
        notice(&mut notices, Duration::from_secs(5), |n| matches!(
            n,
            UplinkNotice::Watch { started: true, .. }
        ))
        .await
    );
    assert!(
        notice(&mut notices, Duration::from_secs(8), |n| matches!(n, UplinkNotice::WatchEnded)).await,
        "the watch ended by itself"
    );
    let ended_at = Instant::now();
    let during = hub.sent_between(watched_at, ended_at);
    assert!(during.len() >= 4, "{} live positions in a 4 s watch at 1 s", during.len());
    let first = during[0].saturating_duration_since(watched_at);
    assert!(first < Duration::from_millis(1_500), "the watcher waited {first:?} for the first position");
    let gap = largest_gap(during[0], &during, ended_at);
    assert!(gap <= Duration::from_millis(2_000), "{gap:?} between live positions while watched");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hub.sent_between(ended_at, Instant::now()), [], "back to the heartbeat after the watch");

    // A watch that ends while the link is down: sent often while up, then the link drops
    // (and stays down) for longer than the watch has left. Back up, the van sends its
    // newest position once (the hub's may be from before the outage), then nothing fast.
    hub.watch(3, 1).await;
    assert!(
        notice(&mut notices, Duration::from_secs(5), |n| matches!(
            n,
            UplinkNotice::Watch { started: true, .. }
        ))
        .await
    );
    proxy.stall(true);
    proxy.drop_connections();
    assert!(
        notice(&mut notices, Duration::from_secs(10), |n| matches!(n, UplinkNotice::Disconnected { .. }))
            .await,
        "the van saw its link drop"
    );
    assert!(
        notice(&mut notices, Duration::from_secs(6), |n| matches!(n, UplinkNotice::WatchEnded)).await,
        "the watch ended with the link down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.stall(false);
    assert!(
        notice(&mut notices, Duration::from_secs(15), |n| matches!(n, UplinkNotice::Connected { .. })).await,
        "the van came back"
    );
    let back_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_no_fast_pace(&hub, back_at, "an expired watch");

    // A watch published while the van is out of coverage waits at the broker in its
    // session, and arrives after it ended: the van's GNSS clock says so, and it is ignored.
    proxy.stall(true);
    proxy.drop_connections();
    assert!(
        notice(&mut notices, Duration::from_secs(10), |n| matches!(n, UplinkNotice::Disconnected { .. }))
            .await
    );
    hub.watch(2, 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.stall(false);
    assert!(
        notice(&mut notices, Duration::from_secs(15), |n| matches!(n, UplinkNotice::Connected { .. })).await
    );
    let back_at = Instant::now();
    assert!(
        notice(&mut notices, Duration::from_secs(5), |n| matches!(
            n,
            UplinkNotice::Watch { started: false, .. }
        ))
        .await,
        "the queued watch arrived, and the van found it over"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_no_fast_pace(&hub, back_at, "a late watch");

    cancel.cancel();
    uplink.await.expect("join").expect("uplink");
    feeder.await.expect("feeder");
    hub.stop.cancel();
}
