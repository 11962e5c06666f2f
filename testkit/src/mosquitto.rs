//! A real Mosquitto broker per test, on a free loopback port, with its own config file
//! in its own directory, so a test can kill it and start it again on the same port.
//! With [`BrokerTls`] it also listens for TLS with client certificates, as a fleet's
//! broker on the internet does; the plain listener stays for the acking receiver.

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
    /// QoS 1 messages in flight per client (`max_inflight_messages`); `None` is
    /// Mosquitto's "no limit" (0). Queues are always unlimited, so a slow reader loses
    /// nothing.
    pub max_inflight: Option<u32>,
}

/// A TLS listener's material (PEM files): the broker's certificate and key, and the CA
/// every client certificate must chain to (`require_certificate true`).
#[derive(Debug, Clone)]
pub struct BrokerTls {
    /// CA of the client certificates.
    pub ca: PathBuf,
    /// The broker's certificate.
    pub cert: PathBuf,
    /// The broker's private key.
    pub key: PathBuf,
}

/// A running (or stopped) Mosquitto.
#[derive(Debug)]
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    options: BrokerOptions,
    tls: Option<(BrokerTls, u16)>,
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
        Self::start_with(options, None).await
    }

    /// Starts a broker with a TLS listener beside the plain one.
    pub async fn start_tls(options: BrokerOptions, tls: BrokerTls) -> anyhow::Result<Broker> {
        Self::start_with(options, Some(tls)).await
    }

    async fn start_with(options: BrokerOptions, tls: Option<BrokerTls>) -> anyhow::Result<Broker> {
        require_mosquitto()?;
        let dir = tempfile::tempdir().context("broker temp dir")?;
        let tls = match tls {
            Some(tls) => Some((tls, free_port()?)),
            None => None,
        };
        let mut broker = Broker { port: free_port()?, dir, options, tls, child: None };
        broker.write_config()?;
        broker.spawn().await?;
        Ok(broker)
    }

    /// The broker's plain port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's TLS port on 127.0.0.1, when it has one.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|(_, port)| *port)
    }

    /// The broker's process id while it runs (a benchmark reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
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
        let mut config = format!(
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
             max_inflight_messages {inflight}\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n",
            port = self.port,
            persistence = self.options.persistence,
            inflight = self.options.max_inflight.unwrap_or(0),
        );
        if let Some((tls, port)) = &self.tls {
            // Listener options apply to the listener above them.
            config.push_str(&format!(
                "listener {port} 127.0.0.1\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 require_certificate true\n",
                ca = tls.ca.display(),
                cert = tls.cert.display(),
                key = tls.key.display(),
            ));
        }
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
            let tls_port = self.tls_port().unwrap_or(self.port);
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.is_ok()
            {
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

    /// Kills the broker and starts an empty one on the same port: no retained message,
    /// no session, no persistence file survives, as after a broker host is replaced.
    pub async fn crash_and_start_fresh(&mut self) -> anyhow::Result<()> {
        self.kill();
        let fresh = tempfile::tempdir().context("broker temp dir")?;
        self.dir = fresh;
        self.write_config()?;
        self.spawn().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
