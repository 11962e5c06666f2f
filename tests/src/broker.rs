//! A real Mosquitto broker per test, on a free loopback port, with its own config file
//! in its own directory, so a test can kill it and start it again on the same port.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Where Debian installs the broker.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long a starting broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How a test broker runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerOptions {
    /// Keep sessions and queued messages on disk across restarts (`persistence true`,
    /// saved every second and on a clean stop).
    pub persistence: bool,
}

/// A running (or stopped) Mosquitto.
#[derive(Debug)]
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    options: BrokerOptions,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Fails with the install command when the broker is missing: never skip.
pub fn require_mosquitto() -> anyhow::Result<()> {
    if !Path::new(MOSQUITTO).exists() {
        bail!("{MOSQUITTO} not found: install it: apt-get install mosquitto mosquitto-clients");
    }
    Ok(())
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    pub async fn start(options: BrokerOptions) -> anyhow::Result<Broker> {
        require_mosquitto()?;
        let dir = tempfile::tempdir().context("broker temp dir")?;
        let mut broker = Broker { port: free_port()?, dir, options, child: None };
        broker.write_config()?;
        broker.spawn().await?;
        Ok(broker)
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let dir = self.dir.path().display();
        let config = format!(
            "# Started as root (CI), mosquitto would switch to user mosquitto and then fail to\n\
             # write its log and persistence file in this root-owned directory.\n\
             user root\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence {persistence}\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 0\n\
             max_queued_bytes 0\n\
             max_inflight_messages 0\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n",
            port = self.port,
            persistence = self.options.persistence,
        );
        std::fs::write(self.config_path(), config).context("write mosquitto.conf")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {MOSQUITTO} (install it: apt-get install mosquitto)"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                bail!("mosquitto exited with {status} on port {}: {log}", self.port);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("mosquitto did not accept connections on port {} within {START_TIMEOUT:?}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the broker with SIGKILL: whatever it held in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM and waits: with persistence it saves its state.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same config and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
