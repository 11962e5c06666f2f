//! A customer's delivery instructions, end to end: typed into the tracking page in headless
//! Chromium, sent to the real hub (`doorstep_hub::server::serve`, default configuration),
//! signed by the hub, carried by a real Mosquitto, verified by the real agent (`doorstep-agent run`) and shown to the
//! driver in the reply to `{"op":"status"}` on the driver socket while the parcel's stop is
//! the van's next; removed again from the page, they are gone from the driver's screen.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use doorstep_e2e::{
    AgentDaemon, Broker, BrokerOptions, DaemonConfig, DriverApp, GnssFeed, Parked, Pty, device,
};
use doorstep_proto::{DeviceId, PublicKey};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const STOP: Parked = Parked { lat: 49.035506, lon: 12.043495, date: "211126", start_s: 36_000 };
const EPOCH_EVERY: Duration = Duration::from_millis(50);
/// The tracking links' secret, as the hub's configuration gives it.
const LINK_SECRET: &str = "0123456789abcdef0123456789abcdef";
const FIRST: &str = "1ZNOTE00000000001";
const SECOND: &str = "1ZNOTE00000000002";

/// PKCS#8 v1 (RFC 8410) of an Ed25519 key from its seed: the tests' hub key as the file
/// `doorstep-hub keygen` would have written.
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut doc =
        vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    doc.extend_from_slice(seed);
    doc
}

fn now_ms() -> i64 {
    doorstep_hub::ingest::now_ms()
}

/// The real hub in this process, its two listeners and an admin key for its API.
struct Hub {
    _dir: tempfile::TempDir,
    public_url: String,
    api_url: String,
    token: String,
    http: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Hub {
    async fn start(broker_port: u16, devices: &[(DeviceId, PublicKey)]) -> anyhow::Result<Hub> {
        // The provider the hub's rustls and reqwest expect (`doorstep-hub serve` installs it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().context("hub directory")?;
        let db = dir.path().join("hub.db");
        let key = dir.path().join("hub.key");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key)?;
            std::io::Write::write_all(&mut file, &pkcs8_v1(&[0xAB; 32]))?;
        }
        let token = {
            let mut store =
                doorstep_hub::store::Store::open(&db, doorstep_hub::store::StoreOptions::default())?;
            for (device, public) in devices {
                store.add_device(&doorstep_e2e::fleet(), device, public, false, now_ms())?;
            }
            let issued = doorstep_hub::access::issue(&ring::rand::SystemRandom::new())?;
            store.create_api_key("stop-notes", &issued.key_id, &issued.digest, "admin", now_ms())?;
            issued.token
        };
        let text = doorstep_hub::config::DEFAULT_CONFIG
            .replace("/var/lib/doorstep-hub/hub.db", &db.display().to_string())
            .replace("/var/lib/doorstep-hub/hub.key", &key.display().to_string())
            .replace("\"file:/var/lib/doorstep-hub/link.secret\"", &format!("\"{LINK_SECRET}\""))
            .replace("port = 1883", &format!("port = {broker_port}"))
            .replace("client_id = \"doorstep-hub\"", "client_id = \"doorstep-hub-stop-notes\"");
        let settings = doorstep_hub::config::Config::parse(&text)?.validate()?;
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let public_url = format!("http://{}", public.local_addr()?);
        let api_url = format!("http://{}", api.local_addr()?);
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(doorstep_hub::server::serve(
            settings,
            doorstep_hub::server::Listeners { public, api },
            async move { shutdown.cancelled().await },
        ));
        // The answers to the page's forms are what is checked: no redirects followed.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{public_url}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if task.is_finished() || tokio::time::Instant::now() > deadline {
                bail!("the hub did not come up at {public_url}/healthz");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Hub { _dir: dir, public_url, api_url, token, http, stop, task })
    }

    async fn api(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        ensure!(status.as_u16() == 201, "POST {path}: {status}: {}", r.text().await?);
        Ok(r.json().await?)
    }

    /// Creates a shipment for `tracking` and returns its tracking page's path.
    async fn shipment(&self, tracking: &str) -> anyhow::Result<String> {
        let created = self.api("/v1/shipments", json!({"tracking_number": tracking, "locale": "en"})).await?;
        let id = created["id"].as_i64().context("shipment id")?;
        let signer = doorstep_hub::notify::token::LinkSigner::new(LINK_SECRET.as_bytes());
        Ok(format!("/t/{}", signer.sign(id, now_ms() + 3_600_000)))
    }

    /// Posts the instructions form of a tracking page, as the customer's browser does.
    async fn instruct(&self, page: &str, text: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{page}/instructions", self.public_url);
        Ok(self.http.post(url).form(&[("instructions", text)]).send().await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
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
    let gps = GnssFeed::parked(Pty::open_nonblocking().expect("pty"), STOP, EPOCH_EVERY);
    let van = AgentDaemon::provision(&DaemonConfig {
        device: device("van-notes"),
        gps: gps.path.clone(),
        route_json: String::new(),
        position_interval_s: 60,
        broker_port: broker.port(),
        uplink_extra: String::new(),
    })
    .expect("provision the van");
    let hub =
        Hub::start(broker.port(), &[(van.device().clone(), van.key().public_key())]).await.expect("hub");
    let first = hub.shipment(FIRST).await.expect("shipment");
    let _second = hub.shipment(SECOND).await.expect("shipment");
    let route = json!({"route_id": "r-notes", "stops": [
        {"stop_id": "north-gate", "lat": STOP.lat, "lon": STOP.lon, "tracking_numbers": [FIRST]},
        {"stop_id": "south-yard", "lat": STOP.lat + 0.01, "lon": STOP.lon, "tracking_numbers": [SECOND]},
    ]});
    let body =
        json!({"fleet": doorstep_e2e::fleet().as_str(), "device": van.device().as_str(), "route": route});
    hub.api("/v1/routes", body).await.expect("route posted");

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
    let r = hub.instruct(&first, &"x".repeat(301)).await.expect("post");
    assert_eq!(r.status(), 400);

    // Removed on the page: gone from the driver's screen.
    let r = hub.instruct(&first, "").await.expect("post");
    assert_eq!(r.status(), 303);
    let reply = status_until(&van, &mut driver, |r| r.get("instructions").is_none()).await;
    assert_eq!(reply["stop_id"], "north-gate");
    let log = van.log();
    assert!(!log.contains("hub message refused"), "every stop note verified:\n{log}");
    hub.stop().await.expect("hub stops");
}
