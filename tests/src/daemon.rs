//! The real `doorstep-agent run` process, as a van runs it: its own key file, an
//! `agent.toml` written the way fleet IT writes one, a state directory that survives
//! restarts, the GNSS receiver on a pseudo-terminal and the driver app on the Unix socket.
//!
//! Cargo hands a test the path of a binary only within the binary's own package. `cargo
//! test --workspace` (what CI runs) builds the agent beside this test's own executable
//! before any test runs; that binary is used when it is newer than every source file its
//! dep-info lists and than the manifests and lock file, which is how Cargo itself judges
//! local sources. Otherwise (a single test run after an edit) it is built here with
//! `cargo build -p doorstep-agent` and found through Cargo's JSON messages.
//! `DOORSTEP_AGENT_BIN` names another binary to test instead (a cross-built or packaged
//! one).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use doorstep_proto::{DeviceId, SigningKey};
use doorstep_testkit::driver::DriverApp;
use tokio::process::{Child, Command};

/// Names a `doorstep-agent` binary to test instead of building one.
pub const AGENT_BIN_ENV: &str = "DOORSTEP_AGENT_BIN";
/// How long a started agent may take to open its driver socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(15);

/// The `doorstep-agent` binary under test, built once per test process.
pub fn agent_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os(AGENT_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => built_by_cargo_test().unwrap_or_else(|| {
            build_agent().unwrap_or_else(|e| panic!("cannot build the agent binary: {e:#}"))
        }),
    })
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The agent Cargo built beside this test (`<target>/<profile>/doorstep-agent`), if it is
/// up to date with its sources.
fn built_by_cargo_test() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join("doorstep-agent");
    let built = modified(&bin)?;
    let dep_info = std::fs::read_to_string(profile_dir.join("doorstep-agent.d")).ok()?;
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    // Make's syntax: a space inside a path is escaped with a backslash.
    let sources = sources.replace("\\ ", "\0");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let manifests =
        ["Cargo.toml", "Cargo.lock", "agent/Cargo.toml", "proto/Cargo.toml"].map(|f| workspace.join(f));
    let inputs = sources.split(' ').map(|p| PathBuf::from(p.replace('\0', " "))).chain(manifests);
    let mut count = 0;
    for input in inputs {
        count += 1;
        if modified(&input).is_none_or(|m| m > built) {
            return None;
        }
    }
    (count > 4).then_some(bin)
}

/// `cargo build -p doorstep-agent --bin doorstep-agent` with the profile these tests were
/// built with; returns the executable Cargo reports.
fn build_agent() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace directory")?;
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--quiet", "--locked", "--package", "doorstep-agent", "--bin", "doorstep-agent"])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let output = build.output().context("run cargo build")?;
    ensure!(output.status.success(), "cargo build -p doorstep-agent failed with {}", output.status);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "doorstep-agent"
            && let Some(exe) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build reported no doorstep-agent executable")
}

/// How a van's agent is set up.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The device id.
    pub device: DeviceId,
    /// The GNSS receiver's serial device (a pty).
    pub gps: PathBuf,
    /// The route manifest, JSON; none when empty (the van waits for the hub's).
    pub route_json: String,
    /// `[trail] position_interval_s` (with [`Tuning::Test`]).
    pub position_interval_s: u64,
    /// The broker's port on 127.0.0.1.
    pub broker_port: u16,
    /// Extra lines for the `[uplink]` section (after the broker and the hub key), such
    /// as an `[uplink.tls]` table.
    pub uplink_extra: String,
}

/// How much of `agent.toml` a test writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// A test's link: a 5 s keepalive, 100 ms to 1 s backoff, 3 s ack timeout, and the
    /// trail interval of [`DaemonConfig::position_interval_s`].
    Test,
    /// Only what fleet IT must set (device, key, serial port, driver socket, broker, hub
    /// key, and [`DaemonConfig::uplink_extra`]); every other key keeps the agent's
    /// built-in default, so an older or newer agent runs as it ships.
    /// `position_interval_s` is not written.
    Defaults,
}

/// One van: its key, config file and state directory in a temporary directory.
#[derive(Debug)]
pub struct AgentDaemon {
    dir: tempfile::TempDir,
    device: DeviceId,
    key: SigningKey,
}

impl AgentDaemon {
    /// Provisions a van: a fresh device key (mode 0600) and `agent.toml` with a test's
    /// tuning ([`Tuning::Test`]).
    pub fn provision(config: &DaemonConfig) -> anyhow::Result<AgentDaemon> {
        Self::provision_with(config, Tuning::Test)
    }

    /// Provisions a van with `tuning`: a fresh device key (mode 0600) and `agent.toml`.
    pub fn provision_with(config: &DaemonConfig, tuning: Tuning) -> anyhow::Result<AgentDaemon> {
        use std::fmt::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().context("van directory")?;
        let pkcs8 = SigningKey::generate_pkcs8(&ring::rand::SystemRandom::new())?;
        let key = SigningKey::from_pkcs8(&pkcs8)?;
        let key_path = dir.path().join("device.key");
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path)?;
        std::io::Write::write_all(&mut file, &pkcs8)?;
        let mut text = format!(
            "[device]\nfleet = \"{fleet}\"\nid = \"{device}\"\nkey = \"{key}\"\nstate_dir = \"{state}\"\n\n\
             [gps]\ndevice = \"{gps}\"\nbaud = 9600\n\n\
             [driver]\nsocket = \"{socket}\"\n\n",
            fleet = crate::fleet(),
            device = config.device,
            key = key_path.display(),
            state = dir.path().join("state").display(),
            gps = config.gps.display(),
            socket = dir.path().join("driver.sock").display(),
        );
        if !config.route_json.is_empty() {
            let route = dir.path().join("route.json");
            std::fs::write(&route, &config.route_json)?;
            writeln!(text, "[route]\nfile = \"{}\"\n", route.display())?;
        }
        if tuning == Tuning::Test {
            writeln!(text, "[trail]\nposition_interval_s = {}\n", config.position_interval_s)?;
        }
        write!(
            text,
            "[uplink]\nhost = \"127.0.0.1\"\nport = {port}\nhub_key = \"{hub}\"\n",
            port = config.broker_port,
            hub = crate::hub_key().public_key(),
        )?;
        if tuning == Tuning::Test {
            text.push_str(
                "keepalive_s = 5\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\nconnect_timeout_s = 5\nack_timeout_s = 3\n",
            );
        }
        writeln!(text, "{}", config.uplink_extra)?;
        std::fs::write(dir.path().join("agent.toml"), text)?;
        Ok(AgentDaemon { dir, device: config.device.clone(), key })
    }

    /// The device id.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The device key (for the receiver's keyring).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// The agent's log (standard error of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `doorstep-agent run --config agent.toml`; the process is killed if dropped.
    pub fn start(&self) -> anyhow::Result<Child> {
        self.start_with_env(&[])
    }

    /// [`AgentDaemon::start`] with extra environment variables (a failpoint, say).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", agent_binary().display()))
    }

    /// Stops a running agent with SIGTERM, as systemd does, and waits for a clean exit.
    pub async fn stop(&self, mut child: Child) -> anyhow::Result<()> {
        let pid = child.id().context("agent already exited")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .context("the agent did not stop within 10 s of SIGTERM")??;
        ensure!(status.success(), "the agent exited with {status} after SIGTERM:\n{}", self.log());
        Ok(())
    }

    /// Connects to the driver socket of a (re)started agent, waiting for it to open.
    pub async fn driver(&self) -> anyhow::Result<DriverApp> {
        let path = self.dir.path().join("driver.sock");
        DriverApp::connect(&path, SOCKET_TIMEOUT).await.with_context(|| format!("agent log:\n{}", self.log()))
    }

    /// Polls `doorstep-agent status --json` until `done` holds; the last status either way.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<(bool, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            if done(&status) {
                return Ok((true, status));
            }
            if tokio::time::Instant::now() > deadline {
                return Ok((false, status));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `doorstep-agent status --json`.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = Command::new(agent_binary())
            .args(["status", "--json", "--config"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .output()
            .await?;
        ensure!(output.status.success(), "status: {}", String::from_utf8_lossy(&output.stderr));
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

/// Events waiting in the outbox, from `status --json`.
pub fn outbox_depth(status: &serde_json::Value) -> u64 {
    status["outbox"]["depth_by_kind"]
        .as_object()
        .map_or(0, |kinds| kinds.values().filter_map(|d| d["count"].as_u64()).sum())
}

/// Whether `status --json` shows the agent with process id `pid` connected to its broker.
pub fn link_up(status: &serde_json::Value, pid: u32) -> bool {
    status["link"]["pid"].as_u64() == Some(u64::from(pid)) && status["link"]["link"] == "up"
}
