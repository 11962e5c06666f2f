//! The real hub, in this process, for the end-to-end tests and the link budget bench:
//! `doorstep_hub::server::serve` with its default configuration (a temporary database,
//! the tests' hub key, the broker's plain listener, [`LINK_SECRET`] for tracking links),
//! the vans registered as `doorstep-hub device add` registers them, and one API key. What
//! the vans hear (acks, routes, stop notes) is what a hub in service would send them.
//!
//! A dev-only file included with `#[path]` (the e2e library does not depend on the hub).

#![allow(dead_code, reason = "each test or bench that includes this module uses a part of it")]

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use doorstep_proto::{DeviceId, PublicKey};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The tracking links' secret, as the hub's configuration gives it.
pub(crate) const LINK_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The hub and the way to talk to it.
pub(crate) struct Hub {
    _dir: tempfile::TempDir,
    /// The public listener (tracking pages, webhooks): `http://127.0.0.1:<port>`.
    pub(crate) public_url: String,
    api_url: String,
    token: String,
    /// Follows no redirects, so a test sees what the hub answers.
    pub(crate) http: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// PKCS#8 v1 (RFC 8410) of an Ed25519 key from its seed: the tests' hub key as the file
/// `doorstep-hub keygen` would have written.
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut doc =
        vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    doc.extend_from_slice(seed);
    doc
}

pub(crate) fn now_ms() -> i64 {
    doorstep_hub::ingest::now_ms()
}

impl Hub {
    /// Starts a hub reading the broker at 127.0.0.1:`broker_port` as MQTT client `name`,
    /// with `devices` registered in fleet [`doorstep_e2e::fleet`] and an API key named
    /// `name` holding `scopes`.
    pub(crate) async fn start(
        broker_port: u16,
        devices: &[(DeviceId, PublicKey)],
        name: &str,
        scopes: &str,
    ) -> anyhow::Result<Hub> {
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
        let loaded = doorstep_hub::server::load_key(&key)?.public_key();
        ensure!(loaded == doorstep_e2e::hub_key().public_key(), "the hub key file is not the tests' hub key");
        let token = {
            let mut store =
                doorstep_hub::store::Store::open(&db, doorstep_hub::store::StoreOptions::default())?;
            for (device, public) in devices {
                store.add_device(&doorstep_e2e::fleet(), device, public, false, now_ms())?;
            }
            let issued = doorstep_hub::access::issue(&ring::rand::SystemRandom::new())?;
            store.create_api_key(name, &issued.key_id, &issued.digest, scopes, now_ms())?;
            issued.token
        };
        let text = doorstep_hub::config::DEFAULT_CONFIG
            .replace("/var/lib/doorstep-hub/hub.db", &db.display().to_string())
            .replace("/var/lib/doorstep-hub/hub.key", &key.display().to_string())
            .replace("\"file:/var/lib/doorstep-hub/link.secret\"", &format!("\"{LINK_SECRET}\""))
            .replace("port = 1883", &format!("port = {broker_port}"))
            .replace("client_id = \"doorstep-hub\"", &format!("client_id = \"{name}\""));
        let settings = doorstep_hub::config::Config::parse(&text)
            .context("the hub's default configuration")?
            .validate()
            .context("the hub's default configuration")?;
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

    /// Posts `body` to the API's `path` with the hub's key, as an order system does;
    /// expects 201 Created and returns its body.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        ensure!(status.as_u16() == 201, "POST {path}: {status}: {}", response.text().await?);
        Ok(response.json().await?)
    }

    /// Posts `route` (a route manifest) for `device`; the hub signs it and publishes it
    /// retained to the van.
    pub(crate) async fn post_route(&self, device: &DeviceId, route: Value) -> anyhow::Result<()> {
        let body = serde_json::json!({"fleet": doorstep_e2e::fleet().as_str(), "device": device.as_str(), "route": route});
        self.post("/v1/routes", &body).await.map(drop)
    }

    /// Stops the hub.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}
