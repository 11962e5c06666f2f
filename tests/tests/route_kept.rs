//! A broker that crashes takes its retained routes with it. The van keeps the last route
//! the hub sent (verified under the hub key) in its own state: restarted against a fresh
//! broker that has no route at all, it still drives it, and a scan at one of its stops is
//! a delivery, not "no route loaded".

use std::time::Duration;

use doorstep_e2e::parked::west_end_route;
use doorstep_e2e::{AgentDaemon, DriverApp, ParkedVan, fleet, hub_key};
use doorstep_proto::topic::{Channel, Topic};
use doorstep_proto::{HubMessage, RouteAssignment, RouteManifest};
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// Publishes `route` for `van` as the hub does: signed, retained, on the van's route topic.
async fn post_route(port: u16, van: &AgentDaemon, route: &str) {
    let assignment = RouteAssignment {
        device: van.device().clone(),
        issued_ms: 1_900_000_000_000,
        route: RouteManifest::from_json(route.as_bytes()).expect("route"),
    };
    let bytes = HubMessage::Route(assignment).seal(&hub_key()).expect("seal");
    let topic = Topic::new(fleet(), van.device().clone(), Channel::Route).to_string();
    let mut options = MqttOptions::new("test-hub-routes", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.publish(topic, QoS::AtLeastOnce, true, bytes).await.expect("publish");
    // Drive the connection until the broker acknowledged the publish.
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = eventloop.poll().await {
                break;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the broker did not take the route");
}

async fn status_message(driver: &mut DriverApp) -> String {
    let reply = driver.ask(&doorstep_testkit::driver::status()).await.expect("status");
    reply["message"].as_str().unwrap_or_default().to_owned()
}

async fn wait_for_route(van: &AgentDaemon, driver: &mut DriverApp, route_id: &str) {
    for _ in 0..200 {
        if status_message(driver).await.contains(&format!("route {route_id};")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the van never drove {route_id}: {}\nagent log:\n{}", status_message(driver).await, van.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_restarted_against_a_fresh_broker_keeps_the_route_the_hub_sent() {
    let route = west_end_route("from-file", &["PARCELFILE1"]);
    let mut parked = ParkedVan::start("van-route", route, 60).await.expect("the parked van");
    let van = &parked.van;

    let child = van.start().expect("start");
    let mut driver = van.driver().await.expect("driver socket");
    wait_for_route(van, &mut driver, "from-file").await;
    post_route(parked.broker.port(), van, &west_end_route("from-hub", &["PARCELHUB01"])).await;
    wait_for_route(van, &mut driver, "from-hub").await;

    // Power cut in the van, and the broker crashes and comes back empty.
    drop(child);
    parked.broker.kill();
    parked.broker.restart().await.expect("fresh broker");

    let _child = van.start().expect("restart");
    let mut driver = van.driver().await.expect("driver socket");
    wait_for_route(van, &mut driver, "from-hub").await;
    let reply = driver.scan_once_fixed("PARCELHUB01").await.expect("scan");
    assert_eq!(reply["result"], "delivered_at_address", "{reply}\nagent log:\n{}", van.log());
}
