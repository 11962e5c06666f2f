//! Fixtures for the hub's integration tests and benchmark: a real Mosquitto per test on a
//! free loopback port with its own config, the hub started in-process (ingest + HTTP),
//! and a simulated fleet (one MQTT session) that publishes signed events and collects the
//! hub's signed acks, checking each with the hub's public key.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use doorstep_hub::config::{ChannelMap, MqttSettings};
use doorstep_hub::http::AppState;
use doorstep_hub::inbound::Sources;
use doorstep_hub::ingest::{Domain, Ingest, IngestOptions};
use doorstep_hub::metrics::Metrics;
use doorstep_hub::reconcile::Rules;
use doorstep_hub::store::StoreOptions;
use doorstep_proto::{
    DeviceId, Envelope, Event, FixEvidence, FleetId, HexBytes, HubMessage, Nearby, PublicKey, RouteId,
    SigningKey, StopId,
};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

pub use doorstep_testkit::mosquitto::{Broker, BrokerOptions};

/// The `doorstep-hub` binary under test.
pub const HUB_BIN: &str = env!("CARGO_BIN_EXE_doorstep-hub");

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    doorstep_testkit::mosquitto::free_port().expect("a free loopback port")
}

/// A real Mosquitto on a free loopback port, as the hub's tests want it: unlimited
/// queues, so a slow hub loses nothing, and an in-flight window of 2000 per client, well
/// below the hub's `MAX_PENDING` (though Mosquitto 2.0.11 lets far more out once PUBACKs
/// flow: see `MAX_PENDING`). Fails, never skips, when Mosquitto is missing.
pub async fn broker() -> Broker {
    Broker::start(BrokerOptions { max_inflight: Some(2000), ..BrokerOptions::default() })
        .await
        .expect("a test broker (install it: apt-get install mosquitto)")
}

/// The fleet every test device belongs to.
pub fn fleet() -> FleetId {
    FleetId::new("acme").unwrap()
}

/// A device id.
pub fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

/// A deterministic key.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32]).unwrap()
}

/// The hub's key in every test.
pub fn hub_key() -> SigningKey {
    key(0xAB)
}

/// A "nearby" event numbered `n` (distance = n, so order and completeness can be read back).
pub fn nearby(n: u32, stop: &str) -> Event {
    Event::Nearby(Nearby {
        route_id: RouteId::new("route-1").unwrap(),
        stop_id: StopId::new(stop).unwrap(),
        distance_m: n,
        fix: FixEvidence::new(1_767_225_600_000 + i64::from(n) * 1000, 47.37, 8.54),
    })
}

/// A sealed envelope.
pub fn seal(key: &SigningKey, device: &DeviceId, seq: u64, event: Event) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(
        &ring::digest::digest(&ring::digest::SHA256, device.as_str().as_bytes()).as_ref()[..8],
    );
    seal_with_id(key, device, seq, id, event)
}

/// A position sample.
pub fn position(n: u32) -> Event {
    Event::Position(FixEvidence::new(1_767_225_600_000 + i64::from(n) * 1000, 47.37, 8.54))
}

/// A sealed envelope with a chosen event id (a second event signed at a seq already used,
/// as a gap notice replacing an evicted sample is).
pub fn seal_with_id(key: &SigningKey, device: &DeviceId, seq: u64, id: [u8; 16], event: Event) -> Vec<u8> {
    Envelope {
        device: device.clone(),
        seq,
        event_id: HexBytes(id),
        gnss_utc_ms: 1_767_225_600_000 + i64::try_from(seq).unwrap() * 1000,
        mono_ms: seq * 1000,
        event,
    }
    .seal(key)
    .unwrap()
}

/// A sealed envelope dated `gnss_utc_ms` (an event from a van whose clock is off).
pub fn seal_at(key: &SigningKey, device: &DeviceId, seq: u64, gnss_utc_ms: i64, event: Event) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(
        &ring::digest::digest(&ring::digest::SHA256, device.as_str().as_bytes()).as_ref()[..8],
    );
    Envelope { device: device.clone(), seq, event_id: HexBytes(id), gnss_utc_ms, mono_ms: seq * 1000, event }
        .seal(key)
        .unwrap()
}

/// The event topic of a device.
pub fn evt_topic(device: &DeviceId) -> String {
    format!("doorstep/v1/acme/{device}/evt")
}

/// A hub running in-process: ingest and HTTP.
pub struct TestHub {
    pub ingest: Option<Ingest>,
    /// The public listener: webhooks, tracking page, health.
    pub http: SocketAddr,
    /// The private API listener.
    pub api: SocketAddr,
    /// An admin key for the private API, as `doorstep-hub apikey create` makes one.
    pub api_token: String,
    pub metrics: Arc<Metrics>,
    pub db: PathBuf,
    http_cancel: CancellationToken,
}

/// How a test hub runs.
#[derive(Clone)]
pub struct HubOptions {
    pub verify_threads: usize,
    pub batch_max: usize,
    pub full_sync: bool,
    pub sources: Arc<Sources>,
    pub hold_ms: i64,
    pub client_id: String,
    /// Shared subscription group, for hubs splitting one fleet's events.
    pub shared_group: Option<String>,
    /// How the group splits the vans.
    pub assign: doorstep_hub::config::Assign,
    /// How far ahead of the hub's clock an event's GNSS time may be.
    pub max_event_ahead_ms: i64,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            verify_threads: 2,
            batch_max: 1024,
            full_sync: true,
            sources: Arc::new(Sources::default()),
            hold_ms: 30 * 60 * 1000,
            client_id: "doorstep-hub-test".into(),
            shared_group: None,
            assign: doorstep_hub::config::Assign::RoundRobin,
            max_event_ahead_ms: doorstep_hub::ingest::DEFAULT_MAX_EVENT_AHEAD_MS,
        }
    }
}

impl HubOptions {
    /// The default options with webhooks verified with the carriers' `secrets`.
    pub fn carriers(secrets: &doorstep_hub::config::CarrierSecrets) -> HubOptions {
        HubOptions::with_sources(
            doorstep_hub::inbound::CarrierVerifiers::from_secrets(secrets).unwrap().into(),
        )
    }

    /// The default options with webhooks verified as `sources` says.
    pub fn with_sources(sources: Sources) -> HubOptions {
        HubOptions { sources: Arc::new(sources), ..HubOptions::default() }
    }

    /// ShipEngine webhooks verified with the test key (`tests/data`), as
    /// `[carriers.shipengine]` would: key id `se-key-1`, a five-minute window.
    pub fn shipengine_webhooks() -> HubOptions {
        let secrets = doorstep_hub::config::CarrierSecrets {
            shipengine_keys: Some(std::fs::read_to_string(test_data("shipengine_test_public.pem")).unwrap()),
            shipengine_key_id: Some("se-key-1".into()),
            shipengine_window: Duration::from_secs(300),
            ..Default::default()
        };
        HubOptions::carriers(&secrets)
    }
}

/// A file of the hub's test data (`hub/tests/data`).
pub fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A carrier's fixture from the shared data (`shared/data/carriers`).
pub fn carrier_fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/carriers").join(name))
        .unwrap()
}

/// ShipEngine's signature of `body` sent at `timestamp` (RSA-SHA256 over
/// `timestamp.body`, base64), made with the test key's private half.
pub fn shipengine_signature(timestamp: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(test_data("shipengine_test_private_pkcs8.pem")).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(
        &base64::engine::general_purpose::STANDARD.decode(der).unwrap(),
    )
    .unwrap();
    let mut message = timestamp.as_bytes().to_vec();
    message.push(b'.');
    message.extend_from_slice(body);
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), &message, &mut signature)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(signature)
}

/// `time` as RFC 3339, as ShipEngine dates its webhooks.
pub fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).unwrap()
}

impl TestHub {
    /// Posts `body` to the hub's ShipEngine webhook, dated `timestamp` and carrying
    /// `signature`, as ShipEngine sends it.
    pub async fn post_shipengine(&self, body: &[u8], timestamp: &str, signature: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/webhooks/shipengine"))
            .header("x-shipengine-rsa-sha256-key-id", "se-key-1")
            .header("x-shipengine-rsa-sha256-signature", signature)
            .header("x-shipengine-timestamp", timestamp)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Starts a hub on `db` against the broker on `port`.
    pub async fn start(port: u16, db: &Path, options: HubOptions) -> TestHub {
        Self::start_with_page(port, db, options, axum::Router::new()).await
    }

    /// [`TestHub::start`] with the tracking page's router (`notify::page_router`) on the
    /// public listener, wired as `doorstep-hub serve` wires it.
    pub async fn start_with_page(port: u16, db: &Path, options: HubOptions, page: axum::Router) -> TestHub {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let domain = Domain {
            rules: Rules { hold_ms: options.hold_ms, ..Rules::default() },
            channel_map: ChannelMap::default(),
            max_event_ahead_ms: options.max_event_ahead_ms,
            metrics: Arc::clone(&metrics),
            sinks: Default::default(),
        };
        let ingest_options = IngestOptions {
            database: db.to_owned(),
            store: StoreOptions { full_sync: options.full_sync },
            mqtt: MqttSettings {
                shared_group: options.shared_group.clone(),
                assign: options.assign,
                ..MqttSettings::plain("127.0.0.1", port, options.client_id.clone())
            },
            verify_threads: options.verify_threads,
            batch_max: options.batch_max,
        };
        let hub_key = Arc::new(hub_key());
        let api_token = {
            let mut store = doorstep_hub::store::Store::open(db, StoreOptions::default()).unwrap();
            let key = doorstep_hub::access::issue(&ring::rand::SystemRandom::new()).unwrap();
            let name = format!("test-admin-{}", key.key_id);
            store.create_api_key(&name, &key.key_id, &key.digest, "admin", 0).unwrap();
            key.token
        };
        let ingest = Ingest::start(&ingest_options, Arc::clone(&hub_key), domain).unwrap();
        let state = AppState {
            writer: ingest.writer(),
            hub_key,
            metrics: Arc::clone(&metrics),
            sources: options.sources,
            max_body_bytes: 1024 * 1024,
            console: Default::default(),
        };
        let limits = doorstep_hub::config::RateLimits::default();
        let public = doorstep_hub::http::public_router(state.clone(), page, axum::Router::new(), &limits);
        let private = doorstep_hub::http::api_router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = api_listener.local_addr().unwrap();
        let http_cancel = CancellationToken::new();
        let (stop, stop_api) = (http_cancel.clone(), http_cancel.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, public.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        tokio::spawn(async move {
            let _ = axum::serve(api_listener, private)
                .with_graceful_shutdown(async move { stop_api.cancelled().await })
                .await;
        });
        let hub =
            TestHub { ingest: Some(ingest), http, api, api_token, metrics, db: db.to_owned(), http_cancel };
        // Subscribed, not only connected: a hub of a shared group hears nothing before. A
        // hub given its vans by its group has read the group (its vans follow).
        let by_van = options.assign == doorstep_hub::config::Assign::ByVan;
        assert!(
            hub.wait_for(Duration::from_secs(10), |m| {
                m.is_mqtt_connected()
                    && if by_van {
                        m.get("doorstep_hub_group_members", &[]) >= 1
                    } else {
                        m.get("doorstep_hub_mqtt_subscriptions", &[]) == 4
                    }
            })
            .await,
            "the hub did not connect to the broker and subscribe"
        );
        hub
    }

    /// Waits until `done` holds on the hub's metrics.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Metrics) -> bool) -> bool {
        until(timeout, || done(&self.metrics)).await
    }

    /// Graceful stop.
    pub async fn stop(mut self) {
        self.http_cancel.cancel();
        if let Some(ingest) = self.ingest.take() {
            ingest.shutdown().await;
        }
    }

    /// A URL on the hub: `/v1/...` and `/metrics` on the private API listener, the rest
    /// on the public one.
    pub fn url(&self, path: &str) -> String {
        let private = path.starts_with("/v1/") || path == "/metrics";
        format!("http://{}{path}", if private { self.api } else { self.http })
    }

    /// A client for the private API, carrying the hub's admin key.
    pub fn api_client(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = format!("Bearer {}", self.api_token);
        headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
        reqwest::Client::builder().default_headers(headers).build().unwrap()
    }

    /// Posts `body` as JSON to the private API with the admin key.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.api_client().post(self.url(path)).json(body).send().await.unwrap()
    }

    /// Creates a shipment with a consented email contact through the API; its id.
    pub async fn create_shipment(&self, tracking: &str, carrier: &str) -> i64 {
        let shipment = serde_json::json!({"tracking_number": tracking, "carrier": carrier,
            "contacts": {"email": "ann@example.com"}, "consent": true});
        let r = self.post_json("/v1/shipments", &shipment).await;
        assert_eq!(r.status(), 201);
        r.json::<serde_json::Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// The shipment as the private API shows it.
    pub async fn shown(&self, tracking: &str) -> serde_json::Value {
        let r = self.api_client().get(self.url(&format!("/v1/shipments/{tracking}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "shipment {tracking}");
        r.json().await.unwrap()
    }

    /// The timeline entries of a shipment from one source, as the API shows them.
    pub async fn timeline_from(&self, tracking: &str, source: &str) -> Vec<serde_json::Value> {
        let shown = self.shown(tracking).await;
        shown["timeline"].as_array().unwrap().iter().filter(|e| e["source"] == source).cloned().collect()
    }

    /// Posts a JSON `body` to the public webhook `path` with `headers`, as a sender
    /// outside does; the answer's status and JSON body (null when it has none).
    pub async fn post_webhook(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let mut request =
            reqwest::Client::new().post(self.url(path)).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let r = request.body(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The `/metrics` page as Prometheus reads it.
    pub async fn metrics_text(&self) -> String {
        self.api_client().get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }
}

/// The notifications of a shipment as the API shows it (see [`TestHub::shown`]) for one
/// milestone.
pub fn notified<'a>(shown: &'a serde_json::Value, milestone: &str) -> Vec<&'a serde_json::Value> {
    shown["notifications"].as_array().unwrap().iter().filter(|n| n["milestone"] == milestone).collect()
}

/// Waits until `done` holds, or `timeout` passes, looking every 20 ms; says which.
pub async fn until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    until_every(timeout, Duration::from_millis(20), done).await
}

/// [`until`], looking every `every`.
pub async fn until_every(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    done()
}

/// What the simulated fleet got back from the hub.
#[derive(Debug, Default)]
pub struct FleetInbox {
    /// Highest ack per device.
    pub acked: HashMap<DeviceId, u64>,
    /// Acks received per device.
    pub ack_count: HashMap<DeviceId, u64>,
    /// Blob acks received.
    pub blob_acks: Vec<doorstep_proto::BlobAck>,
    /// Routes received (retained or live).
    pub routes: Vec<doorstep_proto::RouteAssignment>,
    /// Watches received, in order.
    pub watches: Vec<doorstep_proto::Watch>,
    /// Stop notes (customers' delivery instructions) received, in order.
    pub stop_notes: Vec<doorstep_proto::StopNote>,
    /// Hub messages that did not verify.
    pub refused: Vec<String>,
    /// Subscriptions acknowledged.
    pub subscribed: u64,
    /// Hub messages read but not yet checked ([`FleetMode::DeferVerify`]).
    pub unchecked: Vec<Vec<u8>>,
}

/// How a simulated fleet session treats what the hub sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMode {
    /// Subscribe to every ack and route topic and check each message's signature as it
    /// arrives.
    Verify,
    /// Publish only, subscribe to nothing: a van reads its own acks, not the fleet's.
    PublishOnly,
    /// Subscribe to every ack topic and read the acks without checking them, keeping the
    /// bytes for [`SimFleet::verify_deferred`]. The benchmark's collector: a van checks its
    /// acks on its own CPU, so the check stays off the clock that times the hub, as the
    /// signing of the events does.
    DeferVerify,
}

/// One MQTT session publishing for many devices and reading every ack and route.
pub struct SimFleet {
    pub client: AsyncClient,
    pub inbox: Arc<Mutex<FleetInbox>>,
    hub: PublicKey,
    cancel: CancellationToken,
}

/// A hub message's body, decoded without checking its signature.
fn decode_unchecked(payload: &[u8]) -> Option<HubMessage> {
    let header = doorstep_proto::envelope::HEADER_LEN;
    let end = payload.len().checked_sub(doorstep_proto::key::SIGNATURE_LEN)?;
    postcard::from_bytes(payload.get(header..end)?).ok()
}

fn record(inbox: &mut FleetInbox, message: HubMessage) {
    match message {
        HubMessage::Ack(ack) => {
            let high = inbox.acked.entry(ack.device.clone()).or_insert(0);
            *high = (*high).max(ack.up_to_seq);
            *inbox.ack_count.entry(ack.device).or_insert(0) += 1;
        }
        HubMessage::BlobAck(ack) => inbox.blob_acks.push(ack),
        HubMessage::Route(route) => inbox.routes.push(route),
        HubMessage::Watch(watch) => inbox.watches.push(watch),
        HubMessage::StopNote(note) => inbox.stop_notes.push(note),
    }
}

impl SimFleet {
    /// Connects and subscribes to every ack and route topic.
    pub async fn connect(port: u16, name: &str, hub: PublicKey) -> SimFleet {
        Self::connect_with(port, name, hub, FleetMode::Verify).await
    }

    /// Connects in the given mode.
    pub async fn connect_with(port: u16, name: &str, hub: PublicKey, mode: FleetMode) -> SimFleet {
        let mut options = MqttOptions::new(name, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000)
            .set_max_packet_size(2 * 1024 * 1024, 64 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let inbox = Arc::new(Mutex::new(FleetInbox::default()));
        let cancel = CancellationToken::new();
        let (inbox2, cancel2, client2) = (Arc::clone(&inbox), cancel.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = cancel2.cancelled() => return,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => match mode {
                        FleetMode::Verify => {
                            let _ = client2.try_subscribe("doorstep/v1/+/+/ack", QoS::AtLeastOnce);
                            let _ = client2.try_subscribe("doorstep/v1/+/+/route", QoS::AtLeastOnce);
                        }
                        FleetMode::DeferVerify => {
                            let _ = client2.try_subscribe("doorstep/v1/+/+/ack", QoS::AtLeastOnce);
                        }
                        FleetMode::PublishOnly => {}
                    },
                    Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => inbox2.lock().unwrap().subscribed += 1,
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                        let mut inbox = inbox2.lock().unwrap();
                        if mode == FleetMode::DeferVerify {
                            match decode_unchecked(&p.payload) {
                                Some(message) => record(&mut inbox, message),
                                None => inbox.refused.push(format!("{}: undecodable", p.topic)),
                            }
                            inbox.unchecked.push(p.payload.to_vec());
                            continue;
                        }
                        match HubMessage::open(&p.payload, &hub) {
                            Ok(message) => record(&mut inbox, message),
                            Err(e) => inbox.refused.push(format!("{}: {e}", p.topic)),
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let fleet = SimFleet { client, inbox, hub, cancel };
        let subscriptions = match mode {
            FleetMode::Verify => 2,
            FleetMode::DeferVerify => 1,
            FleetMode::PublishOnly => 0,
        };
        assert!(
            fleet.wait_for(Duration::from_secs(10), |i| i.subscribed >= subscriptions).await,
            "fleet could not subscribe"
        );
        fleet
    }

    /// Checks the signature of every hub message read unchecked, and that each says what
    /// it was read as. Returns how many were checked.
    pub fn verify_deferred(&self) -> usize {
        let unchecked = std::mem::take(&mut self.inbox.lock().unwrap().unchecked);
        for payload in &unchecked {
            let opened = HubMessage::open(payload, &self.hub).expect("every ack verifies under the hub key");
            assert_eq!(Some(opened), decode_unchecked(payload));
        }
        unchecked.len()
    }

    /// Publishes bytes on a topic, QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    /// Waits until `done` holds on the inbox.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&FleetInbox) -> bool) -> bool {
        until(timeout, || done(&self.inbox.lock().unwrap())).await
    }

    /// The highest ack of a device.
    pub fn acked(&self, device: &DeviceId) -> u64 {
        self.inbox.lock().unwrap().acked.get(device).copied().unwrap_or(0)
    }

    /// Acks received by a device.
    pub fn ack_count(&self, device: &DeviceId) -> u64 {
        self.inbox.lock().unwrap().ack_count.get(device).copied().unwrap_or(0)
    }

    /// Disconnects.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

/// The common start of a hub test: a broker, a hub database in its own directory with
/// `van-1` (key seed 1) registered, and the hub running on them.
pub struct OneVan {
    pub broker: Broker,
    /// Holds the database; dropped last.
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub van: DeviceId,
    pub van_key: SigningKey,
    pub hub: TestHub,
}

/// Starts [`OneVan`] with `options`.
pub async fn one_van(options: HubOptions) -> OneVan {
    let Ground { broker, dir, db } = ground().await;
    let (van, van_key) = (device("van-1"), key(1));
    register(&db, &[(&van, &van_key)]);
    let hub = TestHub::start(broker.port(), &db, options).await;
    OneVan { broker, dir, db, van, van_key, hub }
}

/// What a hub test stands on before the hub starts: a broker, and a hub database (SQLite,
/// or PostgreSQL where the test run asks for it) in its own directory, nothing registered.
pub struct Ground {
    pub broker: Broker,
    /// Holds the database; dropped last.
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

/// A fresh [`Ground`].
pub async fn ground() -> Ground {
    let broker = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    Ground { broker, dir, db }
}

/// van-1 hands `tracking` over at `stop` of `route` now, at the door: 9 m from it, standing
/// for 60 s, its fix at `lat`, `lon`.
pub fn handed_over_now(route: &str, stop: &str, tracking: &str, lat: f64, lon: f64) -> Event {
    Event::DeliveredAtAddress(doorstep_proto::Delivery {
        route_id: RouteId::new(route).unwrap(),
        distance_m: 9,
        dwell_s: 60,
        fix: FixEvidence::new(doorstep_hub::ingest::now_ms(), lat, lon).with_speed_mps(0.0),
        ..delivered(stop, tracking)
    })
}

/// A "delivered at address" of `route-1` at `stop` for one parcel, with the evidence a
/// van standing at the door gives (8 m, 40 s of dwell, a fix without speed, no photo).
pub fn delivered(stop: &str, tracking: &str) -> doorstep_proto::Delivery {
    doorstep_proto::Delivery {
        route_id: RouteId::new("route-1").unwrap(),
        stop_id: StopId::new(stop).unwrap(),
        tracking_numbers: vec![doorstep_proto::TrackingNumber::new(tracking).unwrap()],
        distance_m: 8,
        dwell_s: 40,
        fix: FixEvidence::new(1_767_225_700_000, 47.37, 8.54),
        photo: None,
    }
}

/// Registers devices in a hub database before the hub starts.
pub fn register(db: &Path, devices: &[(&DeviceId, &SigningKey)]) {
    let mut store = doorstep_hub::store::Store::open(db, StoreOptions::default()).unwrap();
    for (d, k) in devices {
        store.add_device(&fleet(), d, &k.public_key(), false, 0).unwrap();
    }
}

/// Waits until the hubs of a group splitting by van have settled: every hub sees
/// `hubs.len()` members, they hold `vans` vans between them, each at least one, and each
/// has every SUBSCRIBE and UNSUBSCRIBE answered for its vans' four topics.
pub async fn split_settles(hubs: &[TestHub], vans: usize, timeout: Duration) -> bool {
    let (members, vans) = (i64::try_from(hubs.len()).unwrap(), i64::try_from(vans).unwrap());
    until(timeout, || {
        let held: Vec<i64> = hubs.iter().map(|h| h.metrics.get("doorstep_hub_vans_assigned", &[])).collect();
        held.iter().sum::<i64>() == vans
            && held.iter().all(|&n| n >= 1)
            && hubs.iter().zip(&held).all(|(h, n)| {
                h.metrics.get("doorstep_hub_group_members", &[]) == members
                    && h.metrics.get("doorstep_hub_mqtt_subscriptions", &[]) == 4 * n
            })
    })
    .await
}

/// The tracking links' secret in the tracking page tests.
pub const LINK_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Notification settings from a `[notify]` table's text, for a hub whose tracking page is
/// at `https://track.example.com` with [`LINK_SECRET`].
pub fn page_settings(toml_text: &str) -> doorstep_hub::notify::NotifySettings {
    let table: toml::Table = toml::from_str(toml_text).expect("toml");
    doorstep_hub::notify::NotifyConfig::from_table(Some(&table))
        .expect("parse")
        .validate("https://track.example.com", LINK_SECRET)
        .expect("valid")
}

/// A hub with the tracking page on its public listener, `van-1` (key seed 1) registered
/// and its MQTT session connected (checking every hub message with the hub's key), and
/// the tracking page's side of it.
pub struct PageHub {
    pub ground: Ground,
    pub hub: TestHub,
    pub fleet: SimFleet,
    pub page: TrackingPage,
}

/// A [`PageHub`]'s tracking page: a shipment id and a tracking link (`/t/...`, an hour
/// valid) for each parcel the hub was started with, in that order, a customer's browser
/// that does not follow redirects (the answers are what is checked), and the page's own
/// counters (its dispatcher's).
pub struct TrackingPage {
    pub ids: Vec<i64>,
    pub links: Vec<String>,
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
}

impl PageHub {
    /// Starts a [`PageHub`] whose page runs on `settings`, with a UPS shipment (en-US, no
    /// contacts) for each of `parcels`.
    pub async fn start(
        settings: doorstep_hub::notify::NotifySettings,
        options: HubOptions,
        parcels: &[&str],
    ) -> PageHub {
        let ground = ground().await;
        let (broker, db) = (&ground.broker, &ground.db);
        register(db, &[(&device("van-1"), &key(1))]);
        let signer = settings.link_signer.clone();
        let page_metrics = Arc::new(Metrics::default());
        let dispatcher = doorstep_hub::notify::Dispatcher::new(settings, db, Arc::clone(&page_metrics))
            .expect("dispatcher");
        let page = doorstep_hub::notify::page_router(dispatcher.state());
        let hub = TestHub::start_with_page(broker.port(), db, options, page).await;
        let fleet = SimFleet::connect(broker.port(), "van-session", hub_key().public_key()).await;
        let mut ids = Vec::new();
        for tracking in parcels {
            let body = serde_json::json!({"tracking_number": tracking, "carrier": "ups", "locale": "en-US"});
            let r = hub.post_json("/v1/shipments", &body).await;
            assert_eq!(r.status(), 201);
            ids.push(r.json::<serde_json::Value>().await.expect("json")["id"].as_i64().expect("id"));
        }
        let expires = doorstep_hub::ingest::now_ms() + 3_600_000;
        let links = ids.iter().map(|id| format!("/t/{}", signer.sign(*id, expires))).collect();
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        PageHub { ground, hub, fleet, page: TrackingPage { ids, links, http, metrics: page_metrics } }
    }

    /// Posts van-1's route `route_id` through the API: stops as (id, lat, lon, parcels).
    pub async fn post_route(&self, route_id: &str, stops: &[(&str, f64, f64, Vec<&str>)]) {
        let stops: Vec<_> = stops
            .iter()
            .map(|(id, lat, lon, tns)| {
                serde_json::json!({"stop_id": id, "lat": lat, "lon": lon, "tracking_numbers": tns})
            })
            .collect();
        let route = serde_json::json!({"fleet": "acme", "device": "van-1",
            "route": {"route_id": route_id, "stops": stops}});
        let r = self.hub.post_json("/v1/routes", &route).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }

    /// Waits a moment for anything still on its way from the hub.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Disconnects the van and stops the hub.
    pub async fn stop(self) {
        self.fleet.stop();
        self.hub.stop().await;
    }
}
