//! One van of the demo: the real agent (the same `daemon::start` and uplink that
//! `doorstep-agent run` starts) reading its GPS from a pseudo-terminal, and a driver who
//! talks to the agent's socket exactly as the in-cab app does.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use doorstep_agent::{config::Config, daemon};
use doorstep_proto::{PublicKey, SigningKey};
use nix::fcntl::OFlag;
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

/// A pseudo-terminal standing in for the van's GNSS receiver on its serial port.
struct Pty {
    master: PtyMaster,
    path: PathBuf,
    // Held open so the raw line settings stay while the agent opens and closes the port.
    _slave: std::fs::File,
}

impl Pty {
    fn open() -> anyhow::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).context("opening a pseudo-terminal")?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let path = PathBuf::from(ptsname_r(&master)?);
        let slave = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let mut termios = tcgetattr(slave.as_raw_fd())?;
        cfmakeraw(&mut termios);
        tcsetattr(slave.as_raw_fd(), SetArg::TCSANOW, &termios)?;
        Ok(Pty { master, path, _slave: slave })
    }
}

/// A running van: its agent, its serial line and its driver's socket.
pub(crate) struct Van {
    /// The device id (`van-1`).
    pub(crate) id: String,
    pty: Pty,
    socket: PathBuf,
    running: daemon::Running,
    driver: Option<(tokio::io::WriteHalf<UnixStream>, BufReader<tokio::io::ReadHalf<UnixStream>>)>,
}

impl std::fmt::Debug for Van {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Van").field("id", &self.id).field("gps", &self.pty.path).finish_non_exhaustive()
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
            gps = pty.path.display(),
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
        self.pty.master.write_all(sentences.as_bytes()).context("writing to the GPS pseudo-terminal")
    }

    /// One request to the agent's driver socket, one reply, as the in-cab app does it.
    pub(crate) async fn ask(&mut self, request: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        if self.driver.is_none() {
            let stream = UnixStream::connect(&self.socket)
                .await
                .with_context(|| format!("connecting to the driver socket {}", self.socket.display()))?;
            let (read, write) = tokio::io::split(stream);
            self.driver = Some((write, BufReader::new(read)));
        }
        let Some((write, read)) = self.driver.as_mut() else { bail!("driver socket not connected") };
        write.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line))
            .await
            .context("the agent did not answer the driver within 10 s")??;
        serde_json::from_str(&line).with_context(|| format!("the agent's reply {line:?}"))
    }

    /// Waits until the hub's route has reached the agent (retained on the route topic).
    pub(crate) async fn wait_for_route(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.ask(&serde_json::json!({"op": "status"})).await?;
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
