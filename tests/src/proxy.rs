//! A small lossy TCP proxy between the agent and the broker: it can drop every
//! connection at once, stall (stop forwarding in both directions), or do both at random
//! ("chaos") to imitate a van driving through patchy cellular coverage. A metered proxy
//! also hands every read to a [`Meter`], which counts the bytes per connection and
//! direction (the link budget benchmark's counting proxy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::meter::{Direction, Meter};

/// Bytes copied per read.
const BUFFER: usize = 16 * 1024;

#[derive(Debug)]
struct Control {
    /// Bumped to drop every open connection.
    generation: watch::Sender<u64>,
    /// While true, nothing is forwarded (and new connections wait).
    stalled: watch::Sender<bool>,
    drops: AtomicU64,
}

/// The proxy: listens on a free loopback port and forwards to `upstream`.
#[derive(Debug)]
pub struct LossyProxy {
    port: u16,
    control: Arc<Control>,
    cancel: CancellationToken,
    accept: JoinHandle<()>,
}

impl LossyProxy {
    /// Starts a proxy to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<LossyProxy> {
        Self::start_with(upstream, None).await
    }

    /// Starts a proxy to 127.0.0.1:`upstream` that counts what it forwards in `meter`.
    pub async fn start_metered(upstream: u16, meter: Arc<Meter>) -> anyhow::Result<LossyProxy> {
        Self::start_with(upstream, Some(meter)).await
    }

    async fn start_with(upstream: u16, meter: Option<Arc<Meter>>) -> anyhow::Result<LossyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind proxy")?;
        let port = listener.local_addr()?.port();
        let control = Arc::new(Control {
            generation: watch::channel(0).0,
            stalled: watch::channel(false).0,
            drops: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let accept =
            tokio::spawn(accept_loop(listener, upstream, Arc::clone(&control), meter, cancel.clone()));
        Ok(LossyProxy { port, control, cancel, accept })
    }

    /// The port agents connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection now (both directions, no goodbye).
    pub fn drop_connections(&self) {
        self.control.drops.fetch_add(1, Ordering::Relaxed);
        self.control.generation.send_modify(|g| *g += 1);
    }

    /// Stops (or resumes) forwarding in both directions.
    pub fn stall(&self, stalled: bool) {
        self.control.stalled.send_replace(stalled);
    }

    /// How many times connections were dropped.
    pub fn drops(&self) -> u64 {
        self.control.drops.load(Ordering::Relaxed)
    }

    /// Until the returned token is cancelled: every 100 to `max_gap` ms, drop all
    /// connections or stall for up to `max_stall`, in turn, starting with a drop, so even a
    /// short run sees both faults.
    pub fn chaos(self: &Arc<Self>, max_gap: Duration, max_stall: Duration) -> CancellationToken {
        let stop = self.cancel.child_token();
        let proxy = Arc::clone(self);
        let token = stop.clone();
        tokio::spawn(async move {
            let rng = SystemRandom::new();
            let random = |max: u64| {
                let mut b = [0u8; 8];
                let _ = rng.fill(&mut b);
                u64::from_le_bytes(b) % max.max(1)
            };
            let gap_ms = u64::try_from(max_gap.as_millis()).unwrap_or(1000);
            let stall_ms = u64::try_from(max_stall.as_millis()).unwrap_or(1000);
            let mut drop_next = true;
            loop {
                let gap = Duration::from_millis(100 + random(gap_ms));
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(gap) => {}
                }
                if drop_next {
                    proxy.drop_connections();
                } else {
                    proxy.stall(true);
                    tokio::time::sleep(Duration::from_millis(random(stall_ms))).await;
                    proxy.stall(false);
                }
                drop_next = !drop_next;
            }
            proxy.stall(false);
        });
        stop
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: u16,
    control: Arc<Control>,
    meter: Option<Arc<Meter>>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        let control = Arc::clone(&control);
        let meter = meter.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let generation = *control.generation.borrow();
            let metered = meter.as_ref().map(|m| (m.as_ref(), m.open()));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = pump(cr, sw, &control, generation, metered.map(|(m, c)| (m, c, Direction::Up)));
            let down = pump(sr, cw, &control, generation, metered.map(|(m, c)| (m, c, Direction::Down)));
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = up => {}
                _ = down => {}
            }
            // Dropping both halves closes both sockets: the connection is gone.
            if let Some((meter, index)) = metered {
                meter.close(index);
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: &Control,
    generation: u64,
    meter: Option<(&Meter, usize, Direction)>,
) -> std::io::Result<()> {
    let mut dropped = control.generation.subscribe();
    let mut stalled = control.stalled.subscribe();
    let mut buf = vec![0u8; BUFFER];
    loop {
        if *dropped.borrow_and_update() != generation {
            return Ok(());
        }
        // While stalled, read nothing: the peer's writes back up as on a dead radio link.
        while *stalled.borrow_and_update() {
            tokio::select! {
                _ = stalled.changed() => {}
                _ = dropped.changed() => return Ok(()),
            }
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            _ = dropped.changed() => return Ok(()),
            _ = stalled.changed() => continue,
        };
        if n == 0 {
            return Ok(());
        }
        if let Some((meter, index, direction)) = meter {
            meter.record(index, direction, &buf[..n]);
        }
        to.write_all(&buf[..n]).await?;
    }
}
