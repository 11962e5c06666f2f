//! An in-process agent: the agent library's outbox on its own thread and the uplink task,
//! started by `daemon::spawn_outbox_and_uplink`, the wiring `doorstep-agent run` uses,
//! with test-friendly timings.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use doorstep_agent::daemon::{self, UplinkWiring};
use doorstep_agent::outbox::{Appended, OutboxConfig, OutboxError, OutboxHandle};
use doorstep_agent::uplink::{LivePosition, UplinkConfig, UplinkError, UplinkNotice};
use doorstep_proto::{DeviceId, Event};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

    /// Stops the uplink and closes the outbox.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?.context("uplink")?;
        Ok(())
    }
}
