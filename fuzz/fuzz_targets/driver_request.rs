//! The driver socket: `driver::serve_connection` fed the fuzzer's bytes as one app
//! connection (JSON lines), and `driver::read_scanner` fed the same bytes as a serial
//! barcode scanner, both in front of a stand-in decision task that echoes each action.
//!
//! Holds: no panic and no hang; every request line gets exactly one reply line (the
//! module's promise), blank lines none, an oversized line one refusal; every reply is one
//! JSON object with `ok`, `result` and a message for the driver; the scanner submits one
//! scan per non-blank line that fits, trimmed.

#![no_main]

use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use doorstep_agent::decide::Reply;
use doorstep_agent::driver::{
    Action, DriverCounters, Job, MAX_REQUEST_LEN, MAX_SCANNER_LINE, read_scanner, serve_connection,
};
use doorstep_fuzz::block_on;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One end of a connection: reads the input, keeps what is written.
struct Connection {
    input: Cursor<Vec<u8>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.output.lock().expect("not poisoned").extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A decision task that answers every action with its kind and keeps scanned codes.
fn echo_brain(codes: Arc<Mutex<Vec<String>>>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(4);
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let result = match job.action {
                Action::Scan { code, .. } => {
                    codes.lock().expect("not poisoned").push(code);
                    "scan"
                }
                Action::Exception { .. } => "exception",
                Action::Status => "status",
            };
            let _ = job.reply.send(Reply { ok: true, ..Reply::refused(result, "echo") });
        }
    });
    tx
}

/// The lines `lines::read_line` returns for `data`, whatever their length: split at
/// `\n`, a last line without one included.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

fuzz_target!(|data: &[u8]| {
    let expected_replies = lines(data)
        .into_iter()
        .filter(|l| l.len() > MAX_REQUEST_LEN || !String::from_utf8_lossy(l).trim().is_empty())
        .count();
    let expected_scans: Vec<String> = lines(data)
        .into_iter()
        .filter(|l| l.len() <= MAX_SCANNER_LINE)
        .map(|l| String::from_utf8_lossy(l).trim_matches(|c: char| c.is_whitespace() || c == '\0').to_owned())
        .filter(|code| !code.is_empty())
        .collect();

    let output = Arc::new(Mutex::new(Vec::new()));
    let scanned = Arc::new(Mutex::new(Vec::new()));
    let counters = DriverCounters::default();
    block_on(async {
        let connection = Connection { input: Cursor::new(data.to_vec()), output: output.clone() };
        let brain = echo_brain(Arc::new(Mutex::new(Vec::new())));
        serve_connection(connection, brain, counters.clone(), CancellationToken::new()).await;
        let brain = echo_brain(scanned.clone());
        read_scanner(Cursor::new(data.to_vec()), brain, counters.clone(), CancellationToken::new()).await;
    });

    let output = output.lock().expect("not poisoned");
    let text = std::str::from_utf8(&output).expect("replies are UTF-8");
    let replies: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(replies.len(), expected_replies, "one reply per request line");
    for reply in replies {
        let value: serde_json::Value = serde_json::from_str(reply).expect("a reply is JSON");
        assert!(value["ok"].is_boolean(), "{reply}");
        assert!(value["result"].as_str().is_some_and(|r| !r.is_empty()), "{reply}");
        assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    }
    assert_eq!(*scanned.lock().expect("not poisoned"), expected_scans, "one scan per scanner line");
});
