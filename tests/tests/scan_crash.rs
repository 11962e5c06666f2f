//! The real `doorstep-agent run` dies at each step of a scan, and the driver scans the
//! same parcel again after the restart, as a driver whose screen froze would.
//!
//! Whatever step the power goes at, the parcel is confirmed exactly once: a kill before
//! the confirmation is stored leaves nothing, and the retry is the delivery; a kill after
//! it is stored leaves the confirmation and the route progress together (one SQLite
//! transaction), so the retry is a duplicate, not a second "delivered at address".

use std::time::Duration;

use doorstep_e2e::daemon::{link_up, outbox_depth};
use doorstep_e2e::{
    AckingReceiver, AgentDaemon, Broker, BrokerOptions, DaemonConfig, GnssFeed, Parked, Pty, device, hub_key,
};
use doorstep_proto::Event;

const STOP: Parked = Parked { lat: 49.035506, lon: 12.043495, date: "211126", start_s: 36_000 };
const EPOCH_EVERY: Duration = Duration::from_millis(50);

fn route() -> String {
    serde_json::json!({
        "route_id": "crash-1",
        "stops": [{"stop_id": "west-end", "lat": STOP.lat, "lon": STOP.lon,
                   "tracking_numbers": ["PARCEL0001", "PARCEL0002"]}]
    })
    .to_string()
}

async fn crash_and_retry(point: &str, retry_answer: &str) {
    let broker = Broker::start(BrokerOptions::default()).await.expect("broker");
    let mut gps = GnssFeed::parked(Pty::open_nonblocking().expect("pty"), STOP, EPOCH_EVERY);
    let van = AgentDaemon::provision(&DaemonConfig {
        device: device(&format!("van-{}", point.replace('_', "-"))),
        gps: gps.path.clone(),
        route_json: route(),
        position_interval_s: 60,
        broker_port: broker.port(),
        uplink_extra: String::new(),
    })
    .expect("provision the van");
    let receiver =
        AckingReceiver::start(broker.port(), &[(van.device().clone(), van.key())], hub_key()).await;

    // Let the van stand long enough to be at the stop, then scan into the failpoint.
    let mut child = van.start_with_env(&[(doorstep_agent::failpoint::ENV, point)]).expect("start");
    let mut driver = van.driver().await.expect("driver socket");
    let cut = loop {
        match driver.scan("PARCEL0001").await {
            Ok(reply) if reply["result"] == "no_gps_fix" => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(reply) => panic!("{point}: the agent answered instead of dying: {reply}"),
            Err(e) => break e,
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the agent died at the failpoint")
        .expect("wait");
    assert!(!status.success(), "{point}: the agent aborted ({status}) after {cut:#}");

    // The driver scans again after the restart.
    let child = van.start().expect("restart");
    let mut driver = van.driver().await.expect("driver socket");
    let reply = driver.scan_once_fixed("PARCEL0001").await.expect("retry");
    assert_eq!(reply["result"], retry_answer, "{point}: {reply}\nagent log:\n{}", van.log());
    let second = driver.scan_once_fixed("PARCEL0002").await.expect("next parcel");
    assert_eq!(second["result"], "delivered_at_address", "{point}: {second}");

    gps.stop();
    let pid = child.id().expect("pid");
    let (drained, status) = van
        .wait_for_status(Duration::from_secs(60), |s| link_up(s, pid) && outbox_depth(s) == 0)
        .await
        .expect("status");
    assert!(drained, "{point}: the outbox did not drain: {status}");
    van.stop(child).await.expect("clean stop");
    let last_seq = status["outbox"]["next_seq"].as_u64().expect("next_seq") - 1;
    assert!(receiver.wait_for(Duration::from_secs(10), |r| r.contiguous(van.device()) >= last_seq).await);
    let received = receiver.received();
    let confirmations: Vec<u64> = received
        .confirmations(van.device())
        .iter()
        .filter(|e| match &e.event {
            Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => {
                d.tracking_numbers.iter().any(|t| t.as_str() == "PARCEL0001")
            }
            _ => false,
        })
        .map(|e| e.seq)
        .collect();
    assert_eq!(confirmations.len(), 1, "{point}: PARCEL0001 is confirmed at seqs {confirmations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_scan_is_decided_and_before_it_is_stored_the_retry_delivers_once() {
    doorstep_e2e::init_tracing();
    crash_and_retry("scan_decided", "delivered_at_address").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_confirmation_is_stored_the_retry_is_a_duplicate_not_a_second_delivery() {
    doorstep_e2e::init_tracing();
    crash_and_retry("scan_stored", "duplicate").await;
}
