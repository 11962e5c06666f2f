//! A customer's delivery instructions, end to end: typed into the tracking page in headless
//! Chromium, sent to the real hub (`doorstep_hub::server::serve`, default configuration),
//! signed by the hub, carried by a real Mosquitto, verified by the real agent
//! (`doorstep-agent run`) and shown to the driver in the reply to `{"op":"status"}` on the
//! driver socket while the parcel's stop is the van's next; removed again from the page,
//! they are gone from the driver's screen.

use std::time::Duration;

use anyhow::Context as _;
use doorstep_e2e::parked::{EPOCH_EVERY, WEST_END};
use doorstep_e2e::{AgentDaemon, Broker, BrokerOptions, DaemonConfig, DriverApp, GnssFeed, Pty, device};
use serde_json::{Value, json};

const FIRST: &str = "1ZNOTE00000000001";
const SECOND: &str = "1ZNOTE00000000002";

#[path = "../common/served_hub.rs"]
mod served_hub;
use served_hub::{Hub, LINK_SECRET, now_ms};

/// Creates a shipment for `tracking` and returns its tracking page's path.
async fn shipment(hub: &Hub, tracking: &str) -> anyhow::Result<String> {
    let created = hub.post("/v1/shipments", &json!({"tracking_number": tracking, "locale": "en"})).await?;
    let id = created["id"].as_i64().context("shipment id")?;
    let signer = doorstep_hub::notify::token::LinkSigner::new(LINK_SECRET.as_bytes());
    Ok(format!("/t/{}", signer.sign(id, now_ms() + 3_600_000)))
}

/// Posts the instructions form of a tracking page, as the customer's browser does.
async fn instruct(hub: &Hub, page: &str, text: &str) -> anyhow::Result<reqwest::Response> {
    let url = format!("{}{page}/instructions", hub.public_url);
    Ok(hub.http.post(url).form(&[("instructions", text)]).send().await?)
}

/// Asks the driver socket for the status until `done` holds on the reply.
async fn status_until(van: &AgentDaemon, driver: &mut DriverApp, done: impl Fn(&Value) -> bool) -> Value {
    let mut reply = Value::Null;
    for _ in 0..300 {
        reply = driver.ask(&doorstep_testkit::driver::status()).await.expect("status");
        if done(&reply) {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the driver never saw it: {reply}\nagent log:\n{}", van.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_left_on_the_tracking_page_reach_the_drivers_status_reply() {
    doorstep_e2e::init_tracing();
    let broker = Broker::start(BrokerOptions::default()).await.expect("broker");
    let gps = GnssFeed::parked(Pty::open_nonblocking().expect("pty"), WEST_END, EPOCH_EVERY);
    let van = AgentDaemon::provision(&DaemonConfig {
        device: device("van-notes"),
        gps: gps.path.clone(),
        route_json: String::new(),
        position_interval_s: 60,
        broker_port: broker.port(),
        uplink_extra: String::new(),
    })
    .expect("provision the van");
    let hub = Hub::start(
        broker.port(),
        &[(van.device().clone(), van.key().public_key())],
        "doorstep-hub-stop-notes",
        "admin",
    )
    .await
    .expect("hub");
    let first = shipment(&hub, FIRST).await.expect("shipment");
    let _second = shipment(&hub, SECOND).await.expect("shipment");
    let route = json!({"route_id": "r-notes", "stops": [
        {"stop_id": "north-gate", "lat": WEST_END.lat, "lon": WEST_END.lon, "tracking_numbers": [FIRST]},
        {"stop_id": "south-yard", "lat": WEST_END.lat + 0.01, "lon": WEST_END.lon, "tracking_numbers": [SECOND]},
    ]});
    let body =
        json!({"fleet": doorstep_e2e::fleet().as_str(), "device": van.device().as_str(), "route": route});
    hub.post("/v1/routes", &body).await.expect("route posted");

    let _child = van.start().expect("start the agent");
    let mut driver = van.driver().await.expect("driver socket");
    let reply = status_until(&van, &mut driver, |r| {
        r["message"].as_str().is_some_and(|m| m.contains("route r-notes;"))
    })
    .await;
    assert!(reply.get("instructions").is_none(), "none yet: {reply}");

    // The customer of the van's next stop writes on their tracking page, in a real browser.
    let page = format!("{}{first}", hub.public_url);
    let scratch = tempfile::tempdir().expect("scratch");
    let scratch_path = scratch.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let browser = doorstep_testkit::browser::Browser::start(&scratch_path, 412, 915);
        browser.goto(&page);
        browser.type_into("#instructions", "Ring twice, the bell is on the left");
        browser.click_and_wait("form[action$='/instructions'] button");
        assert!(browser.url().contains("done=instructions"), "{}", browser.url());
    })
    .await
    .expect("the browser sent the form");
    let reply = status_until(&van, &mut driver, |r| r.get("instructions").is_some()).await;
    assert_eq!(reply["stop_id"], "north-gate", "{reply}");
    assert_eq!(
        reply["instructions"],
        json!([{"stop_id": "north-gate", "tracking_number": FIRST, "text": "Ring twice, the bell is on the left"}]),
        "{reply}"
    );
    assert!(
        reply["message"].as_str().is_some_and(|m| m.contains("Ring twice, the bell is on the left")),
        "{reply}"
    );

    // Too long: refused at the hub, and the driver still sees what was saved.
    let r = instruct(&hub, &first, &"x".repeat(301)).await.expect("post");
    assert_eq!(r.status(), 400);

    // Removed on the page: gone from the driver's screen.
    let r = instruct(&hub, &first, "").await.expect("post");
    assert_eq!(r.status(), 303);
    let reply = status_until(&van, &mut driver, |r| r.get("instructions").is_none()).await;
    assert_eq!(reply["stop_id"], "north-gate");
    let log = van.log();
    assert!(!log.contains("hub message refused"), "every stop note verified:\n{log}");
    hub.stop().await.expect("hub stops");
}
