//! The driver's side: the app's local socket and the serial barcode scanner.
//!
//! The driver app talks JSON lines over a Unix socket; every request gets one reply line
//! at once, something the driver can act on:
//!
//! ```text
//! → {"op":"scan","code":"1Z999AA10123456784"}
//! ← {"ok":true,"result":"delivered_at_address","stop_id":"s-014","stop_number":14,"remaining":2,
//!    "message":"Delivered at stop 14 (s-014). 2 more parcel(s) for this stop"}
//! → {"op":"scan","code":"1Z999AA10123456785","photo":"/data/pod/0142.jpg"}
//! → {"op":"exception","reason":"recipient_absent","codes":["1Z999AA10123456785"],"note":"no answer"}
//! → {"op":"status"}
//! ← {"ok":true,"result":"status","stop_id":"s-015","message":"route r-17; GPS fix 1 s old; ...; next stop s-015.
//!    Customer's instructions for 1Z999AA10123456786: Ring twice","instructions":[{"stop_id":"s-015",
//!    "tracking_number":"1Z999AA10123456786","text":"Ring twice"}]}
//! ```
//!
//! `instructions` (left out when there are none) are what customers asked for on their
//! tracking page, signed by the hub: in a scan's reply those of the parcel's stop, in
//! `status` those of the van's next stop.
//!
//! A serial barcode scanner sends one code per line and cannot show a reply; its replies
//! go to the log (and the app shows the van's state with `status`).
//!
//! Bad input (garbage, unknown fields, an oversized line, a missing photo) gets a reply
//! that says what to do and a counter; the connection and the agent keep running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use doorstep_proto::{ExceptionReason, PhotoRef, StopId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::decide::{ExceptionReport, Reply};
use crate::lines::{Line, read_line};
use crate::replay::{PhotoError, hash_photo};

/// Longest request line from the driver app, in bytes. A scan is under 200 bytes; an
/// exception with a note under 1 KiB.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Longest line from a barcode scanner; longer is noise, not a label.
pub const MAX_SCANNER_LINE: usize = 256;
/// Driver app connections served at once (the app, a diagnostic tool, a spare).
pub const MAX_CONNECTIONS: usize = 8;
/// Requests waiting for the decision task. The driver scans one parcel at a time; this
/// only absorbs a burst from a scanner's buffer.
pub const REQUEST_QUEUE: usize = 32;

/// One request from the driver app, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A parcel scanned at the door, optionally with a photo proof.
    Scan {
        /// The code as scanned.
        code: String,
        /// Path of the photo proof on the device.
        #[serde(default)]
        photo: Option<PathBuf>,
    },
    /// A failed delivery.
    Exception {
        /// Reason code (`recipient_absent`, `no_access`, `refused`, `damaged`,
        /// `address_not_found`, `unsafe`, `other`).
        reason: String,
        /// Parcels concerned.
        #[serde(default)]
        codes: Vec<String>,
        /// The stop, when the driver picked one.
        #[serde(default)]
        stop_id: Option<String>,
        /// Free text.
        #[serde(default)]
        note: Option<String>,
        /// A photo of the problem.
        #[serde(default)]
        photo: Option<PathBuf>,
    },
    /// Where the van is and what is left.
    Status,
}

/// What the decision task is asked to do, once the request has been checked.
#[derive(Debug)]
pub enum Action {
    /// Decide a scan.
    Scan {
        /// The code.
        code: String,
        /// The hashed photo.
        photo: Option<PhotoRef>,
        /// Where the photo is, so the uplink can send it.
        photo_path: Option<PathBuf>,
    },
    /// Record a driver exception.
    Exception {
        /// The report.
        report: ExceptionReport,
        /// Where the photo is.
        photo_path: Option<PathBuf>,
    },
    /// Report status.
    Status,
}

/// A request for the decision task and where its reply goes.
#[derive(Debug)]
pub struct Job {
    /// What to do.
    pub action: Action,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Reply>,
}

/// Counters of the driver side, by reason (`request_oversized`, `request_malformed`,
/// `photo_missing`, ...).
#[derive(Debug, Default, Clone)]
pub struct DriverCounters(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl DriverCounters {
    /// Adds one to `name`.
    pub fn count(&self, name: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(name).or_insert(0) += 1;
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Checks a request and turns it into an [`Action`], hashing any photo. Errors come back
/// as the reply to send.
pub async fn prepare(request: Request, counters: &DriverCounters) -> Result<Action, Reply> {
    match request {
        Request::Scan { code, photo } => {
            let (photo, photo_path) = hash(photo, counters).await?;
            Ok(Action::Scan { code, photo, photo_path })
        }
        Request::Exception { reason, codes, stop_id, note, photo } => {
            let reason: ExceptionReason = reason.parse().map_err(|message: String| {
                counters.count("request_bad_reason");
                Reply::refused("bad_request", message)
            })?;
            let stop_id = stop_id.map(StopId::new).transpose().map_err(|e| {
                counters.count("request_bad_stop");
                Reply::refused("bad_request", e.to_string())
            })?;
            let (photo, photo_path) = hash(photo, counters).await?;
            Ok(Action::Exception {
                report: ExceptionReport { reason, codes, stop_id, note, photo },
                photo_path,
            })
        }
        Request::Status => Ok(Action::Status),
    }
}

async fn hash(
    photo: Option<PathBuf>,
    counters: &DriverCounters,
) -> Result<(Option<PhotoRef>, Option<PathBuf>), Reply> {
    let Some(path) = photo else {
        return Ok((None, None));
    };
    let for_hash = path.clone();
    let hashed = tokio::task::spawn_blocking(move || hash_photo(&for_hash))
        .await
        .unwrap_or_else(|e| Err(PhotoError::Io(std::io::Error::other(e))));
    match hashed {
        Ok(photo) => Ok((Some(photo), Some(path))),
        Err(e) => {
            counters.count("photo_unusable");
            let message =
                format!("Photo {}: {e}. Nothing was recorded; take the photo again", path.display());
            Err(Reply::refused("photo_unusable", message))
        }
    }
}

/// Serves one driver-app connection until it closes or the agent shuts down.
pub async fn serve_connection<S>(
    stream: S,
    jobs: mpsc::Sender<Job>,
    counters: DriverCounters,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    loop {
        let line = tokio::select! {
            () = cancel.cancelled() => return,
            line = read_line(&mut read, MAX_REQUEST_LEN) => line,
        };
        let reply = match line {
            Ok(None) => return,
            Ok(Some(Line::TooLong)) => {
                counters.count("request_oversized");
                let message = format!("Request longer than {MAX_REQUEST_LEN} bytes was ignored");
                Reply::refused("bad_request", message)
            }
            Err(e) => {
                tracing::debug!(error = %e, "driver connection failed");
                return;
            }
            Ok(Some(Line::Text(bytes))) => {
                let text = String::from_utf8_lossy(&bytes);
                if text.trim().is_empty() {
                    continue;
                }
                handle_line(&text, &jobs, &counters).await
            }
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn handle_line(line: &str, jobs: &mpsc::Sender<Job>, counters: &DriverCounters) -> Reply {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            counters.count("request_malformed");
            return Reply::refused(
                "bad_request",
                format!(
                    "Not a request ({e}); send one JSON object per line with \"op\": scan, exception or status"
                ),
            );
        }
    };
    match prepare(request, counters).await {
        Ok(action) => submit(action, jobs).await,
        Err(reply) => reply,
    }
}

/// Hands an action to the decision task and waits for its reply.
pub async fn submit(action: Action, jobs: &mpsc::Sender<Job>) -> Reply {
    let (tx, rx) = oneshot::channel();
    if jobs.send(Job { action, reply: tx }).await.is_err() {
        return Reply::refused("shutting_down", "The agent is stopping; scan again in a moment");
    }
    rx.await
        .unwrap_or_else(|_| Reply::refused("shutting_down", "The agent is stopping; scan again in a moment"))
}

/// Serves the driver socket: accepts connections up to [`MAX_CONNECTIONS`].
pub async fn serve(
    listener: tokio::net::UnixListener,
    jobs: mpsc::Sender<Job>,
    counters: DriverCounters,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "driver socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.count("connection_refused_busy");
            drop(stream);
            continue;
        };
        let (jobs, counters, cancel) = (jobs.clone(), counters.clone(), cancel.clone());
        tokio::spawn(async move {
            serve_connection(stream, jobs, counters, cancel).await;
            drop(permit);
        });
    }
}

/// Reads codes from a barcode scanner, one per line, and submits each as a scan.
/// Replies go to the log: a scanner has no screen.
pub async fn read_scanner<R>(
    reader: R,
    jobs: mpsc::Sender<Job>,
    counters: DriverCounters,
    cancel: CancellationToken,
) where
    R: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(reader);
    loop {
        let line = tokio::select! {
            () = cancel.cancelled() => return,
            line = read_line(&mut reader, MAX_SCANNER_LINE) => line,
        };
        match line {
            Ok(None) => return,
            Ok(Some(Line::TooLong)) => counters.count("scanner_line_oversized"),
            Err(e) => {
                tracing::warn!(error = %e, "barcode scanner read failed");
                return;
            }
            Ok(Some(Line::Text(bytes))) => {
                let line = String::from_utf8_lossy(&bytes);
                let code = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
                if code.is_empty() {
                    continue;
                }
                let reply =
                    submit(Action::Scan { code: code.to_owned(), photo: None, photo_path: None }, &jobs)
                        .await;
                tracing::info!(result = reply.result, stop = ?reply.stop_id, "{}", reply.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt as _;

    /// A decision task stand-in that answers every action with its kind.
    fn echo_brain() -> mpsc::Sender<Job> {
        let (tx, mut rx) = mpsc::channel::<Job>(REQUEST_QUEUE);
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let result = match job.action {
                    Action::Scan { photo: Some(_), .. } => "scan_with_photo",
                    Action::Scan { .. } => "scan",
                    Action::Exception { .. } => "exception",
                    Action::Status => "status",
                };
                let _ = job.reply.send(Reply::refused(result, "echo"));
            }
        });
        tx
    }

    async fn exchange(lines: &[&str]) -> (Vec<serde_json::Value>, BTreeMap<&'static str, u64>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let counters = DriverCounters::default();
        let task =
            tokio::spawn(serve_connection(server, echo_brain(), counters.clone(), CancellationToken::new()));
        let (read, mut write) = tokio::io::split(client);
        let mut replies = BufReader::new(read).lines();
        let mut out = Vec::new();
        for line in lines {
            write.write_all(line.as_bytes()).await.expect("write");
            write.write_all(b"\n").await.expect("write");
            let reply = replies.next_line().await.expect("read").expect("a reply line");
            out.push(serde_json::from_str(&reply).expect("reply is JSON"));
        }
        write.shutdown().await.expect("shutdown");
        task.await.expect("connection task");
        (out, counters.snapshot())
    }

    #[tokio::test]
    async fn every_request_gets_one_reply_and_bad_ones_say_what_to_do() {
        let photo = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(photo.path(), b"jpeg bytes").expect("write");
        let with_photo = format!(r#"{{"op":"scan","code":"X1","photo":"{}"}}"#, photo.path().display());
        let oversized = format!(r#"{{"op":"scan","code":"{}"}}"#, "A".repeat(MAX_REQUEST_LEN));
        let (replies, counters) = exchange(&[
            r#"{"op":"scan","code":"1Z999AA10123456784"}"#,
            &with_photo,
            r#"{"op":"scan","code":"X1","photo":"/nonexistent/pod.jpg"}"#,
            r#"{"op":"exception","reason":"no_access","codes":["1Z999AA10123456784"]}"#,
            r#"{"op":"exception","reason":"dog"}"#,
            "this is not json",
            &oversized,
            r#"{"op":"status"}"#,
        ])
        .await;
        let results: Vec<&str> = replies.iter().map(|r| r["result"].as_str().expect("result")).collect();
        assert_eq!(
            results,
            [
                "scan",
                "scan_with_photo",
                "photo_unusable",
                "exception",
                "bad_request",
                "bad_request",
                "bad_request",
                "status"
            ]
        );
        assert!(replies[2]["message"].as_str().expect("message").contains("take the photo again"));
        assert!(replies[4]["message"].as_str().expect("message").contains("recipient_absent"));
        assert_eq!(counters["photo_unusable"], 1);
        assert_eq!(counters["request_malformed"], 1);
        assert_eq!(counters["request_oversized"], 1);
        assert_eq!(counters["request_bad_reason"], 1);
    }

    #[tokio::test]
    async fn the_scanner_submits_each_line_and_survives_noise() {
        let (tx, mut rx) = mpsc::channel::<Job>(REQUEST_QUEUE);
        let input: Vec<u8> =
            [b"1Z999AA10123456784\r\n".as_slice(), &[b'A'; 300], b"\n\r\n\x00\n9400111899223197428490\n"]
                .concat();
        let counters = DriverCounters::default();
        let reader = tokio::spawn(read_scanner(
            std::io::Cursor::new(input),
            tx,
            counters.clone(),
            CancellationToken::new(),
        ));
        let mut codes = Vec::new();
        while let Some(job) = rx.recv().await {
            if let Action::Scan { code, .. } = job.action {
                codes.push(code);
            }
            let _ = job.reply.send(Reply::refused("scan", "ok"));
        }
        reader.await.expect("scanner task");
        assert_eq!(codes, ["1Z999AA10123456784", "9400111899223197428490"]);
        assert_eq!(counters.snapshot()["scanner_line_oversized"], 1);
    }
}
