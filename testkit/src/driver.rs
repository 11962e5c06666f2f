//! The driver app's side of the agent's socket (`driver.sock`): one JSON request per
//! line, one JSON reply per line, as [`doorstep_agent::driver`] serves it. Requests are
//! the agent's own [`Request`] type, so a test cannot drift from what the agent reads;
//! the raw forms exist to send what the app should not (garbage, unknown fields).

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
pub use doorstep_agent::driver::Request;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a reply may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A scan of `code` without a photo.
pub fn scan(code: &str) -> Request {
    Request::Scan { code: code.to_owned(), photo: None }
}

/// The status request.
pub fn status() -> Request {
    Request::Status
}

fn line_of(request: &Request) -> anyhow::Result<String> {
    serde_json::to_string(request).context("encoding a driver request")
}

/// An async connection to the agent's driver socket.
#[derive(Debug)]
pub struct DriverApp {
    lines: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl DriverApp {
    /// Connects, waiting up to `timeout` for the socket to appear (an agent that was just
    /// started, or restarted: a killed agent leaves its socket file behind and the next one
    /// replaces it).
    pub async fn connect(path: &Path, timeout: Duration) -> anyhow::Result<DriverApp> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => {
                    let (read, write) = stream.into_split();
                    return Ok(DriverApp { lines: BufReader::new(read), write });
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("driver socket {}", path.display()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Sends a request without waiting for the reply.
    pub async fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        self.send_raw(&line_of(request)?).await
    }

    /// Sends one line as it is (a newline is added).
    pub async fn send_raw(&mut self, line: &str) -> anyhow::Result<()> {
        self.write.write_all(format!("{line}\n").as_bytes()).await.context("writing to the driver socket")
    }

    /// Reads the next reply; an error when the agent is gone or silent.
    pub async fn reply(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        let n =
            tokio::time::timeout(timeout, self.lines.read_line(&mut line)).await.context("no reply")??;
        ensure!(n > 0 && line.ends_with('\n'), "the agent closed the connection");
        Ok(serde_json::from_str(&line)?)
    }

    /// Asks and waits for the answer.
    pub async fn ask(&mut self, request: &Request) -> anyhow::Result<serde_json::Value> {
        self.send(request).await?;
        self.reply(REPLY_TIMEOUT).await
    }

    /// Sends one raw line and waits for the answer.
    pub async fn ask_raw(&mut self, line: &str) -> anyhow::Result<serde_json::Value> {
        self.send_raw(line).await?;
        self.reply(REPLY_TIMEOUT).await
    }

    /// Scans a parcel label.
    pub async fn scan(&mut self, code: &str) -> anyhow::Result<serde_json::Value> {
        self.ask(&scan(code)).await
    }

    /// Scans `code` until the answer is something other than "no GPS fix yet" (an agent
    /// just restarted has none for a moment), as a driver would; gives up after 10 s.
    pub async fn scan_once_fixed(&mut self, code: &str) -> anyhow::Result<serde_json::Value> {
        for _ in 0..1_000 {
            let reply = self.scan(code).await?;
            if reply["result"] != "no_gps_fix" {
                return Ok(reply);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("no GPS fix for 10 s")
    }
}

/// A blocking connection, for tests that drive the agent binary from plain threads.
#[derive(Debug)]
pub struct BlockingDriverApp {
    write: std::os::unix::net::UnixStream,
    lines: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl BlockingDriverApp {
    /// Connects, waiting up to `timeout` for the socket to appear.
    pub fn connect(path: &Path, timeout: Duration) -> anyhow::Result<BlockingDriverApp> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                    let lines = std::io::BufReader::new(stream.try_clone()?);
                    return Ok(BlockingDriverApp { write: stream, lines });
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("driver socket {}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Asks and waits for the answer.
    pub fn ask(&mut self, request: &Request) -> anyhow::Result<serde_json::Value> {
        self.ask_raw(&line_of(request)?)
    }

    /// Sends one raw line and waits for the answer.
    pub fn ask_raw(&mut self, line: &str) -> anyhow::Result<serde_json::Value> {
        self.write.write_all(format!("{line}\n").as_bytes()).context("writing to the driver socket")?;
        let mut reply = String::new();
        let n = self.lines.read_line(&mut reply).context("no reply")?;
        ensure!(n > 0 && reply.ends_with('\n'), "the agent closed the connection");
        Ok(serde_json::from_str(&reply)?)
    }
}
