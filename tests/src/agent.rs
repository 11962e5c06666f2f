//! An in-process agent: the agent library's outbox on its own thread and the uplink task,
//! started by `daemon::spawn_outbox_and_uplink`, the wiring `doorstep-agent run` uses,
//! with test-friendly timings; the van, broker and acking receiver such an agent talks
//! to; and the `agent-soak` process, the same wiring in a process of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use doorstep_agent::daemon::{self, UplinkWiring};
use doorstep_agent::outbox::{Appended, OutboxConfig, OutboxError, OutboxHandle, OutboxStats};
use doorstep_agent::uplink::{LivePosition, UplinkConfig, UplinkError, UplinkNotice};
use doorstep_proto::{DeviceId, Event};
use doorstep_testkit::mosquitto::{Broker, BrokerOptions};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::AckingReceiver;

/// Notices kept for the test to read.
const NOTICE_QUEUE: usize = 1024;

/// How to start a [`TestAgent`].
#[derive(Debug, Clone)]
pub struct TestAgentOptions {
    /// The outbox database.
    pub db: PathBuf,
    /// Broker (or proxy) port on 127.0.0.1.
    pub port: u16,
    /// The device.
    pub device: DeviceId,
    /// Seed of the device key ([`crate::device_key`]).
    pub key_seed: u8,
    /// Outbox byte budget, if not the default.
    pub max_bytes: Option<u64>,
    /// Seconds the hub's ack may stall before a resend.
    pub ack_timeout_s: u64,
}

impl TestAgentOptions {
    /// Defaults for `device` with its database in `dir`, talking to `port`.
    pub fn new(dir: &std::path::Path, port: u16, device: DeviceId, key_seed: u8) -> Self {
        Self { db: dir.join("agent.db"), port, device, key_seed, max_bytes: None, ack_timeout_s: 3 }
    }

    /// The uplink config the test agent uses: fast reconnects for tests.
    pub fn uplink_config(&self) -> UplinkConfig {
        let mut cfg =
            UplinkConfig::plain("127.0.0.1", self.port, crate::fleet(), &crate::hub_key().public_key());
        cfg.keepalive_s = 5;
        cfg.backoff_min_ms = 100;
        cfg.backoff_max_ms = 1_000;
        cfg.connect_timeout_s = 5;
        cfg.ack_timeout_s = self.ack_timeout_s;
        cfg
    }
}

/// A running in-process agent.
#[derive(Debug)]
pub struct TestAgent {
    /// The outbox, as the rest of the agent sees it.
    pub outbox: OutboxHandle,
    /// What the uplink reported.
    pub notices: mpsc::Receiver<UplinkNotice>,
    /// The live position slot.
    pub positions: watch::Sender<Option<LivePosition>>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), UplinkError>>,
}

impl TestAgent {
    /// Opens the outbox and starts the uplink.
    pub async fn start(options: &TestAgentOptions) -> anyhow::Result<TestAgent> {
        let mut cfg = OutboxConfig::new(options.device.clone());
        if let Some(max) = options.max_bytes {
            cfg.max_bytes = max;
        }
        let settings = options.uplink_config().validate()?;
        let (notice_tx, notices) = mpsc::channel(NOTICE_QUEUE);
        let (positions, position_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let wiring = UplinkWiring {
            notices: Some(notice_tx),
            positions: Some(position_rx),
            ..UplinkWiring::default()
        };
        let key = Arc::new(crate::device_key(options.key_seed));
        let (outbox, task) =
            daemon::spawn_outbox_and_uplink(&options.db, cfg, key, settings, wiring, cancel.clone())
                .await
                .context("open outbox")?;
        Ok(TestAgent { outbox, notices, positions, cancel, task })
    }

    /// Signs and stores an event.
    pub async fn append(&self, event: Event) -> Result<Appended, OutboxError> {
        self.outbox.append(event, 1_767_225_600_000, 0).await
    }

    /// The outbox's stats once the hub's acks emptied it, or after `timeout`.
    pub async fn wait_until_empty(&self, timeout: Duration) -> Result<OutboxStats, OutboxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.outbox.stats().await?;
            if stats.depth() == 0 || tokio::time::Instant::now() > deadline {
                return Ok(stats);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the uplink and closes the outbox.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?.context("uplink")?;
        Ok(())
    }
}

/// A van's state directory, a Mosquitto of its own, and an acking receiver that plays the
/// hub for the van: where each test of the in-process agent, or of `agent-soak`, starts.
#[derive(Debug)]
pub struct AckedVan {
    /// The van's state directory; the outbox is [`AckedVan::db`].
    pub dir: tempfile::TempDir,
    /// The broker on a free loopback port.
    pub broker: Broker,
    /// The device.
    pub van: DeviceId,
    /// Seed of the device key ([`crate::device_key`]).
    pub key_seed: u8,
    /// The hub's side of the ack protocol, trusting the van's key.
    pub receiver: AckingReceiver,
}

impl AckedVan {
    /// Installs the test's tracing, starts the broker and the receiver for device `name`
    /// with the key of `key_seed`.
    pub async fn start(name: &str, key_seed: u8) -> anyhow::Result<AckedVan> {
        crate::init_tracing();
        let dir = tempfile::tempdir().context("tempdir")?;
        let broker = Broker::start(BrokerOptions::default()).await.context("broker")?;
        let van = crate::device(name);
        let key = crate::device_key(key_seed);
        let receiver = AckingReceiver::start(broker.port(), &[(van.clone(), &key)], crate::hub_key()).await;
        Ok(AckedVan { dir, broker, van, key_seed, receiver })
    }

    /// The outbox database in the state directory.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("agent.db")
    }

    /// A [`TestAgent`] of the van, talking to the broker.
    pub fn agent_options(&self) -> TestAgentOptions {
        TestAgentOptions::new(self.dir.path(), self.broker.port(), self.van.clone(), self.key_seed)
    }

    /// The van drives into a dead zone (the broker is killed), and its agent starts there
    /// with an outbox budget of `max_bytes`.
    pub async fn agent_in_dead_zone(&mut self, max_bytes: u64) -> anyhow::Result<TestAgent> {
        self.broker.kill();
        let mut options = self.agent_options();
        options.max_bytes = Some(max_bytes);
        TestAgent::start(&options).await
    }
}

/// `agent-soak` (at `exe`: the test's `env!("CARGO_BIN_EXE_agent-soak")`) as `device` with
/// the key of `seed` and its outbox at `db`, talking to the broker on `port` and appending
/// confirmations up to `count`; killed when dropped. Its stdin is closed; the caller sets
/// the pacing and what becomes of its output.
pub fn agent_soak(exe: &str, db: &Path, port: u16, device: &str, seed: u8, count: u64) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--db")
        .arg(db)
        .args(["--port", &port.to_string(), "--device", device, "--seed", &seed.to_string()])
        .args(["--hub-key", &crate::hub_key().public_key().to_string()])
        .args(["--count", &count.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}
