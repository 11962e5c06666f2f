//! The async shell around the decoder: [`run`] reads any [`AsyncBufRead`], and
//! [`run_serial`] opens a serial device and reopens it with backoff when it goes away.
//! Shell: I/O, a reader thread, timers.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Decoder, GpsError};
use crate::fix::Fix;

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The reader reached end of input; the last epoch was flushed.
    Eof,
    /// The cancellation token fired.
    Cancelled,
    /// The receiving side of the fix channel is gone.
    ReceiverGone,
}

/// Reads NMEA from `reader` until end of input or cancellation, sending one [`Fix`] per
/// epoch to `fixes`. The decoder is borrowed so its state and counters survive a
/// reconnect.
///
/// # Errors
///
/// [`GpsError::Read`] when the reader fails; the decoder is left as it was, and the
/// caller decides whether to call [`Decoder::link_lost`] and reconnect.
pub async fn run<R: AsyncBufRead + Unpin>(
    mut reader: R,
    decoder: &mut Decoder,
    fixes: &mpsc::Sender<Fix>,
    cancel: &CancellationToken,
) -> Result<RunEnd, GpsError> {
    let mut out = Vec::new();
    loop {
        let eof = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(RunEnd::Cancelled),
            read = reader.fill_buf() => {
                let buf = read.map_err(GpsError::Read)?;
                let n = buf.len();
                if n == 0 {
                    decoder.finish(&mut out);
                } else {
                    decoder.feed(buf, &mut out);
                }
                reader.consume(n);
                n == 0
            }
        };
        for fix in out.drain(..) {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(RunEnd::Cancelled),
                sent = fixes.send(fix) => if sent.is_err() {
                    return Ok(RunEnd::ReceiverGone);
                },
            }
        }
        if eof {
            return Ok(RunEnd::Eof);
        }
    }
}

/// How long a blocking serial read waits before checking whether anyone still listens.
pub const SERIAL_POLL: Duration = Duration::from_millis(200);

/// Bytes per read from the serial device; at 9600 baud that is about one second.
pub const SERIAL_CHUNK_LEN: usize = 1024;

/// Chunks buffered between the serial reader thread and the decoder.
pub const SERIAL_QUEUE_CHUNKS: usize = 16;

/// Reconnect delays: doubling from `initial` up to `max`.
pub use doorstep_runtime::backoff::Backoff;

/// Where the GPS is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// Device path, such as `/dev/ttyACM0` or `/dev/serial/by-id/usb-u-blox...`.
    pub path: PathBuf,
    /// Baud rate; NMEA 0183's standard rate is 4800, most modern receivers send 9600.
    pub baud: u32,
    /// Reconnect delays.
    pub backoff: Backoff,
}

/// Counters of the serial link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Successful opens of the device.
    pub opens: u64,
    /// Failed attempts to open it.
    pub open_failures: u64,
    /// Times an open device stopped delivering (read error or hang-up).
    pub disconnects: u64,
}

/// A serial port as an [`AsyncBufRead`]: a thread does the blocking reads and hands
/// chunks over a bounded channel. The thread ends when the device fails or when this
/// reader is dropped.
#[derive(Debug)]
pub struct SerialReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl SerialReader {
    /// Opens `path` at `baud` (8N1, raw) and starts the reader thread.
    ///
    /// # Errors
    ///
    /// [`GpsError::OpenDevice`] when the device is missing, busy or not a tty.
    pub fn open(path: &Path, baud: u32) -> Result<Self, GpsError> {
        let port = match serialport::new(path.to_string_lossy(), baud).timeout(SERIAL_POLL).open_native() {
            Ok(port) => port,
            // termios2 refused (qemu-user answers ENOSYS): the classic calls; see crate::tty.
            Err(source) if source.kind() == serialport::ErrorKind::Unknown => {
                return crate::tty::TtyPort::open(path, baud, SERIAL_POLL)
                    .map(Self::spawn)
                    .map_err(|_| GpsError::OpenDevice { path: path.to_owned(), baud, source });
            }
            Err(source) => return Err(GpsError::OpenDevice { path: path.to_owned(), baud, source }),
        };
        Ok(Self::spawn(port))
    }

    /// Reads from an already-open reader on a thread.
    pub fn spawn<P: io::Read + Send + 'static>(mut port: P) -> Self {
        let (tx, rx) = mpsc::channel(SERIAL_QUEUE_CHUNKS);
        let spawned = std::thread::Builder::new().name("gps-serial".into()).spawn(move || {
            let mut buf = vec![0; SERIAL_CHUNK_LEN];
            loop {
                match port.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        if tx.is_closed() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        match spawned {
            Ok(_) => Self { rx, chunk: Vec::new(), pos: 0 },
            Err(e) => {
                // No thread, no reader: report it as a read error on first use.
                let (tx_err, rx_err) = mpsc::channel(1);
                let _ = tx_err.try_send(Err(e));
                Self { rx: rx_err, chunk: Vec::new(), pos: 0 }
            }
        }
    }
}

impl AsyncRead for SerialReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => {
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(available);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for SerialReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.chunk.len() {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    this.chunk.clear();
                    this.pos = 0;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.chunk[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.chunk.len());
    }
}

/// Reads the GPS on a serial device until cancelled, reopening it with backoff whenever
/// it cannot be opened or stops delivering. Fixes go to `fixes`; the link counters to
/// `link`.
pub async fn run_serial(
    config: &SerialConfig,
    decoder: &mut Decoder,
    fixes: &mpsc::Sender<Fix>,
    cancel: &CancellationToken,
    link: &mut LinkStats,
) -> RunEnd {
    let mut delay = config.backoff.initial;
    let mut out = Vec::new();
    loop {
        let path = config.path.clone();
        let baud = config.baud;
        let opened = tokio::task::spawn_blocking(move || SerialReader::open(&path, baud)).await;
        match opened {
            Ok(Ok(reader)) => {
                link.opens += 1;
                delay = config.backoff.initial;
                tracing::info!(device = %config.path.display(), baud, "GPS device open");
                let end = run(reader, decoder, fixes, cancel).await;
                match end {
                    Ok(RunEnd::Cancelled) => return RunEnd::Cancelled,
                    Ok(RunEnd::ReceiverGone) => return RunEnd::ReceiverGone,
                    Ok(RunEnd::Eof) => {}
                    Err(e) => {
                        tracing::warn!(device = %config.path.display(), error = %e, "GPS device lost");
                    }
                }
                link.disconnects += 1;
                decoder.link_lost(&mut out);
                for fix in out.drain(..) {
                    if fixes.send(fix).await.is_err() {
                        return RunEnd::ReceiverGone;
                    }
                }
            }
            Ok(Err(e)) => {
                link.open_failures += 1;
                tracing::warn!(error = %e, retry_in = ?delay, "GPS device unavailable");
            }
            Err(e) => {
                link.open_failures += 1;
                tracing::warn!(error = %e, "GPS open task failed");
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return RunEnd::Cancelled,
            () = tokio::time::sleep(delay) => {}
        }
        delay = config.backoff.next(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gps::tests::cycle;

    #[tokio::test]
    async fn run_reads_any_async_buf_read_to_the_end() {
        let input = [cycle("120001", "010624"), cycle("120002", "010624")].concat();
        let reader = tokio::io::BufReader::with_capacity(16, input.as_bytes());
        let (tx, mut rx) = mpsc::channel(8);
        let mut decoder = Decoder::default();
        let end = run(reader, &mut decoder, &tx, &CancellationToken::new()).await;
        assert!(matches!(end, Ok(RunEnd::Eof)));
        drop(tx);
        let mut fixes = Vec::new();
        while let Some(fix) = rx.recv().await {
            fixes.push(fix);
        }
        assert_eq!(fixes.len(), 2);
    }

    #[tokio::test]
    async fn run_stops_when_cancelled() {
        let (_writer, reader) = tokio::io::duplex(64);
        let (tx, _rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut decoder = Decoder::default();
        let end = run(tokio::io::BufReader::new(reader), &mut decoder, &tx, &cancel).await;
        assert!(matches!(end, Ok(RunEnd::Cancelled)));
    }

    mod pty {
        //! A pseudo-terminal stands in for the GPS's serial port: the test writes NMEA
        //! into the master side, the agent opens the slave side by path with
        //! `serialport`, exactly as it opens /dev/ttyACM0.

        use std::io::Write as _;
        use std::os::unix::fs::symlink;

        use nix::fcntl::OFlag;
        use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};

        use super::*;

        fn open_pty() -> (PtyMaster, PathBuf) {
            let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).expect("posix_openpt");
            grantpt(&master).expect("grantpt");
            unlockpt(&master).expect("unlockpt");
            let slave = ptsname_r(&master).expect("ptsname_r");
            (master, PathBuf::from(slave))
        }

        /// Writes cycles into the master until a fix comes out (the agent may not have
        /// opened the slave yet when the first bytes go in), bounded in time.
        async fn feed_until_fix(
            master: &mut PtyMaster,
            rx: &mut mpsc::Receiver<Fix>,
            first_second: u32,
        ) -> Fix {
            for i in 0..100 {
                let input = cycle(&format!("1200{:02}", (first_second + i) % 60), "010624");
                master.write_all(input.as_bytes()).expect("write to pty master");
                if let Ok(Some(fix)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                    return fix;
                }
            }
            panic!("no fix came through the pty");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fixes_come_through_a_pty_and_the_device_is_reopened_after_unplugging() {
            let dir = tempfile::tempdir().expect("tempdir");
            let link_path = dir.path().join("gps0");
            let (mut master, slave) = open_pty();
            symlink(&slave, &link_path).expect("symlink");

            let config = SerialConfig {
                path: link_path.clone(),
                baud: 9600,
                backoff: Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(80) },
            };
            let (tx, mut rx) = mpsc::channel(64);
            let cancel = CancellationToken::new();
            let task = tokio::spawn({
                let cancel = cancel.clone();
                async move {
                    let mut decoder = Decoder::default();
                    let mut link = LinkStats::default();
                    let end = run_serial(&config, &mut decoder, &tx, &cancel, &mut link).await;
                    (end, link)
                }
            });

            let fix = feed_until_fix(&mut master, &mut rx, 1).await;
            assert!(fix.position().is_some());
            assert!(fix.utc_ms.is_some());

            // Unplug: the master goes away and the slave path with it.
            drop(master);
            std::fs::remove_file(&link_path).expect("remove link");
            tokio::time::sleep(Duration::from_millis(150)).await;

            // Plug a new receiver in at the same path.
            let (mut master, slave) = open_pty();
            symlink(&slave, &link_path).expect("symlink again");
            // Drain fixes from before the unplug, then expect new ones.
            while rx.try_recv().is_ok() {}
            let fix = feed_until_fix(&mut master, &mut rx, 30).await;
            assert!(fix.position().is_some());

            cancel.cancel();
            let (end, link) = task.await.expect("serial task");
            assert_eq!(end, RunEnd::Cancelled);
            assert_eq!(link.opens, 2, "{link:?}");
            assert_eq!(link.disconnects, 1, "{link:?}");
            assert!(link.open_failures >= 1, "{link:?}");
        }
    }
}
