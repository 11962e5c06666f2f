//! One van of the demo: the real agent (the same `daemon::start` and uplink that
//! `doorstep-agent run` starts) reading its GPS from a pseudo-terminal, and a driver who
//! talks to the agent's socket exactly as the in-cab app does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use doorstep_agent::{config::Config, daemon};
use doorstep_proto::{PublicKey, SigningKey};
use doorstep_testkit::driver::{self, DriverApp, Request};
use doorstep_testkit::pty::Pty;
use tokio_util::sync::CancellationToken;

/// A running van: its agent, its serial line and its driver's socket.
pub(crate) struct Van {
    /// The device id (`van-1`).
    pub(crate) id: String,
    pty: Pty,
    socket: PathBuf,
    running: daemon::Running,
    driver: Option<DriverApp>,
}

impl std::fmt::Debug for Van {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Van").field("id", &self.id).field("gps", &self.pty.path()).finish_non_exhaustive()
    }
}

impl Van {
    /// Provisions the van as fleet IT would (key, config) in `dir` and starts its agent.
    pub(crate) async fn start(
        fleet: &str,
        id: &str,
        pkcs8: &[u8],
        dir: &Path,
        broker_port: u16,
        hub_key: &PublicKey,
        cancel: CancellationToken,
    ) -> anyhow::Result<Van> {
        std::fs::create_dir_all(dir)?;
        let key = SigningKey::from_pkcs8(pkcs8)?;
        let key_path = dir.join("device.key");
        std::fs::write(&key_path, pkcs8)?;
        let pty = Pty::open()?;
        let socket = dir.join("driver.sock");
        let config_text = format!(
            "[device]\nfleet = \"{fleet}\"\nid = \"{id}\"\nkey = \"{key}\"\nstate_dir = \"{state}\"\n\
             [gps]\ndevice = \"{gps}\"\nbaud = 9600\n[driver]\nsocket = \"{socket}\"\n\
             [trail]\nposition_interval_s = 15\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = {broker_port}\nhub_key = \"{hub_key}\"\nkeepalive_s = 30\n",
            key = key_path.display(),
            state = dir.join("state").display(),
            gps = pty.path().display(),
            socket = socket.display(),
        );
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config_text)?;
        let config = Config::load(&config_path).with_context(|| format!("{}", config_path.display()))?;
        let running = daemon::start(&config, Arc::new(key), cancel.clone()).await?;
        if !daemon::start_uplink(&config, &running, cancel)? {
            bail!("the demo van {id} has no uplink configured");
        }
        Ok(Van { id: id.to_owned(), pty, socket, running, driver: None })
    }

    /// Writes one fix's sentences to the serial line.
    pub(crate) fn send_gps(&mut self, sentences: &str) -> anyhow::Result<()> {
        self.pty.send(sentences.as_bytes()).context("writing to the GPS pseudo-terminal")
    }

    /// One request to the agent's driver socket, one reply, as the in-cab app does it.
    pub(crate) async fn ask(&mut self, request: &Request) -> anyhow::Result<serde_json::Value> {
        let driver = match &mut self.driver {
            Some(driver) => driver,
            None => self.driver.insert(DriverApp::connect(&self.socket, Duration::ZERO).await?),
        };
        driver.ask(request).await.context("the agent did not answer the driver")
    }

    /// Waits until the hub's route has reached the agent (retained on the route topic).
    pub(crate) async fn wait_for_route(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.ask(&driver::status()).await?;
            let message = status["message"].as_str().unwrap_or_default().to_owned();
            if message.starts_with("route ") {
                return Ok(message);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{}: no route from the hub after {timeout:?} ({message})", self.id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Events the hub has not acknowledged yet.
    pub(crate) async fn unacked(&self) -> anyhow::Result<u64> {
        let (acked, next) = self.running.outbox.cursor().await?;
        Ok(next.saturating_sub(1).saturating_sub(acked))
    }

    /// Stops the agent's tasks (after cancellation of the token given to `start`).
    pub(crate) async fn stop(self) {
        drop(self.driver);
        self.running.wait().await;
    }
}
