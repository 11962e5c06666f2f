//! The outbox thread and its async handle: the thread owns the SQLite connection, the
//! async tasks queue jobs to it. Shell.

use std::fmt;
use std::sync::Arc;

use doorstep_proto::{DeviceId, Event, HexBytes, SigningKey};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Appended, OUTBOX_QUEUE, Outbox, OutboxError, OutboxStats};

impl Outbox {
    /// Moves the outbox onto its own thread and returns the async handle to it.
    ///
    /// The thread owns the SQLite connection (SQLite calls never run on the async
    /// workers); it stops when every handle is dropped.
    pub fn spawn(self, key: Arc<SigningKey>) -> Result<OutboxHandle, OutboxError> {
        let (tx, mut rx) = mpsc::channel::<Job>(OUTBOX_QUEUE);
        let (seq_tx, seq_rx) = watch::channel(self.next_seq);
        let device = self.cfg.device.clone();
        let mut outbox = self;
        std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut outbox);
                    seq_tx.send_if_modified(|s| {
                        let changed = *s != outbox.next_seq;
                        *s = outbox.next_seq;
                        changed
                    });
                }
                if let Err(e) = outbox.sync() {
                    tracing::error!(device = %outbox.cfg.device, error = %e, "final outbox sync failed");
                }
            })
            .map_err(OutboxError::Thread)?;
        Ok(OutboxHandle { tx, next_seq: seq_rx, key, device })
    }
}

type Job = Box<dyn FnOnce(&mut Outbox) + Send>;

/// An async handle to the outbox thread. Cheap to clone; every call is queued (at most
/// [`OUTBOX_QUEUE`] waiting) and runs on the thread that owns the connection.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: mpsc::Sender<Job>,
    next_seq: watch::Receiver<u64>,
    key: Arc<SigningKey>,
    device: DeviceId,
}

impl fmt::Debug for OutboxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxHandle").field("device", &self.device).finish_non_exhaustive()
    }
}

impl OutboxHandle {
    /// Runs `f` on the outbox thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |outbox| {
            // The caller may have gone (shutdown); the work is done either way.
            let _ = reply.send(f(outbox));
        });
        self.tx.send(job).await.map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// Queues `f` to run on the outbox thread without waiting for it to run (only for
    /// queue space). `f` reports its own outcome.
    pub async fn submit<F>(&self, f: F) -> Result<(), OutboxError>
    where
        F: FnOnce(&mut Outbox) + Send + 'static,
    {
        self.tx.send(Box::new(f)).await.map_err(|_| OutboxError::Closed)
    }

    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The device's signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// Signs and stores an event; see [`Outbox::append`].
    pub async fn append(
        &self,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
    ) -> Result<Appended, OutboxError> {
        let key = Arc::clone(&self.key);
        self.call(move |o| o.append(&key, event, gnss_utc_ms, mono_ms)).await
    }

    /// [`Outbox::append_with_state`] on the outbox thread.
    pub async fn append_with_state(
        &self,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
        state: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Appended, OutboxError> {
        let key = Arc::clone(&self.key);
        self.call(move |o| {
            let state = state.as_ref().map(|(name, value)| (*name, value.as_slice()));
            o.append_with_state(&key, event, gnss_utc_ms, mono_ms, state)
        })
        .await
    }

    /// [`Outbox::state`] on the outbox thread.
    pub async fn state(&self, name: &'static str) -> Result<Option<Vec<u8>>, OutboxError> {
        self.call(move |o| o.state(name)).await
    }

    /// [`Outbox::set_state`] on the outbox thread.
    pub async fn set_state(&self, name: &'static str, value: Vec<u8>) -> Result<(), OutboxError> {
        self.call(move |o| o.set_state(name, &value)).await
    }

    /// See [`Outbox::pending`].
    pub async fn pending(&self, after_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        self.call(move |o| o.pending(after_seq, limit)).await
    }

    /// See [`Outbox::ack`].
    pub async fn ack(&self, up_to_seq: u64) -> Result<usize, OutboxError> {
        let key = Arc::clone(&self.key);
        self.call(move |o| o.ack(&key, up_to_seq)).await
    }

    /// See [`Outbox::add_photo`].
    pub async fn add_photo(&self, sha256: HexBytes<32>, bytes: Vec<u8>) -> Result<(), OutboxError> {
        self.call(move |o| o.add_photo(sha256, &bytes)).await
    }

    /// See [`Outbox::stats`].
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.call(|o| o.stats()).await
    }

    /// The last hub ack applied and the next seq: (acked, next).
    pub async fn cursor(&self) -> Result<(u64, u64), OutboxError> {
        self.call(|o| Ok((o.acked_seq(), o.next_seq()))).await
    }

    /// Watches the next seq: it changes whenever an event is appended.
    pub fn watch_appends(&self) -> watch::Receiver<u64> {
        self.next_seq.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxConfig;
    use crate::outbox::tests::{device, key, nearby, open};

    #[tokio::test]
    async fn the_handle_runs_calls_on_the_outbox_thread_and_reports_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(dir.path(), OutboxConfig::new(device()));
        let handle = outbox.spawn(Arc::new(key())).expect("spawn");
        let mut appends = handle.watch_appends();
        let appended = handle.append(nearby(1), 0, 0).await.expect("append");
        assert_eq!(appended.seq, 1);
        appends.changed().await.expect("notified");
        assert_eq!(*appends.borrow(), 2);
        assert_eq!(handle.pending(0, 10).await.expect("pending").len(), 1);
        assert_eq!(handle.ack(1).await.expect("ack"), 1);
        assert_eq!(handle.cursor().await.expect("cursor"), (1, 2));
    }
}
