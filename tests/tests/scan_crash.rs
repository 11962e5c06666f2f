//! The real `doorstep-agent run` dies at each step of a scan, and the driver scans the
//! same parcel again after the restart, as a driver whose screen froze would.
//!
//! Whatever step the power goes at, the parcel is confirmed exactly once: a kill before
//! the confirmation is stored leaves nothing, and the retry is the delivery; a kill after
//! it is stored leaves the confirmation and the route progress together (one SQLite
//! transaction), so the retry is a duplicate, not a second "delivered at address".

use std::time::Duration;

use doorstep_e2e::ParkedVan;
use doorstep_e2e::parked::west_end_route;
use doorstep_proto::Event;

async fn crash_and_retry(point: &str, retry_answer: &str) {
    let name = format!("van-{}", point.replace('_', "-"));
    let route = west_end_route("crash-1", &["PARCEL0001", "PARCEL0002"]);
    let mut parked = ParkedVan::start(&name, route, 60).await.expect("the parked van");
    let (van, receiver) = (&parked.van, &parked.receiver);

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

    parked.gps.stop();
    parked.drain_and_stop(child).await;
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
    crash_and_retry("scan_decided", "delivered_at_address").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_confirmation_is_stored_the_retry_is_a_duplicate_not_a_second_delivery() {
    crash_and_retry("scan_stored", "duplicate").await;
}
