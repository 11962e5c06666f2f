//! The verifier threads: each checks a delivered message (topic, size, version, key,
//! signature, device, fleet) before the writer sees it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use doorstep_proto::blob::BlobChunk;
use doorstep_proto::state::DeviceState;
use doorstep_proto::{Channel, Envelope, EnvelopeError, Event, Topic};
use rumqttc::Publish;
use tokio::sync::mpsc;

use crate::blobs;
use crate::metrics::Metrics;
use crate::registry::Keys;
use crate::store::Store;

use super::{Delivery, Ingested, KEYRING_MISS_RELOAD, VERIFY_TAKE, VerifiedEvent, WriteItem};

pub(super) struct Verifier {
    pub(super) keys: Keys,
    pub(super) reload_store: Store,
    pub(super) last_reload: Instant,
    pub(super) write: std_mpsc::SyncSender<WriteItem>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) live: Arc<AtomicUsize>,
}

/// Verifier time is added to the busy counter at most this often per thread (the counter
/// is shared with the writer; once per message would make it a point of contention).
const VERIFY_BUSY_FLUSH: Duration = Duration::from_millis(100);

impl Verifier {
    pub(super) fn run(mut self, rx: Arc<std::sync::Mutex<mpsc::Receiver<(u64, Publish)>>>, verifiers: usize) {
        let mut busy = Duration::ZERO;
        let mut flushed = Instant::now();
        let mut taken: Vec<(u64, Publish)> = Vec::with_capacity(VERIFY_TAKE);
        loop {
            // Whoever holds the lock waits for the next message; the others wait for the
            // lock. The writer puts their results back in delivery order.
            {
                let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                if rx.is_empty() && !busy.is_zero() {
                    self.metrics.busy("verify", std::mem::take(&mut busy));
                    flushed = Instant::now();
                }
                let Some(first) = rx.blocking_recv() else { break };
                taken.push(first);
                // Under load, take this verifier's share of the backlog at once: one
                // wake-up and one hand-over to the writer per handful instead of per
                // message. A quiet hub's queue holds one message, taken alone.
                let share = (rx.len() / verifiers).min(VERIFY_TAKE - 1);
                for _ in 0..share {
                    match rx.try_recv() {
                        Ok(next) => taken.push(next),
                        Err(_) => break,
                    }
                }
            }
            let started = Instant::now();
            let checked: Vec<(u64, Ingested)> = taken
                .drain(..)
                .map(|(ordinal, publish)| {
                    // The writer waits for every ordinal, so even a bug in a check must
                    // answer: the message is rejected with a reason instead of stalling
                    // all ingest.
                    let copy = publish.clone();
                    let item = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.check(publish)
                    })) {
                        Ok(item) => item,
                        Err(_) => {
                            tracing::error!(topic = %copy.topic, "message check panicked; message rejected");
                            Ingested::Rejected { source: "mqtt", reason: "internal_error", delivery: copy }
                        }
                    };
                    (ordinal, item)
                })
                .collect();
            busy += started.elapsed();
            if flushed.elapsed() >= VERIFY_BUSY_FLUSH {
                self.metrics.busy("verify", std::mem::take(&mut busy));
                flushed = Instant::now();
            }
            if self.write.send(WriteItem::Checked(checked)).is_err() {
                break;
            }
        }
        self.metrics.busy("verify", busy);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn reject(
        &self,
        source: &'static str,
        reason: &'static str,
        delivery: Delivery,
        detail: &str,
    ) -> Ingested {
        tracing::warn!(topic = %delivery.topic, len = delivery.payload.len(), reason, detail, "{source} message rejected");
        Ingested::Rejected { source, reason, delivery }
    }

    fn open(&mut self, payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        match Envelope::open(payload, &self.keys) {
            // A device added a moment ago: reload once and try again.
            Err(EnvelopeError::UnknownKey(_)) if self.last_reload.elapsed() >= KEYRING_MISS_RELOAD => {
                self.last_reload = Instant::now();
                if let Err(e) = self.keys.reload(&self.reload_store) {
                    tracing::error!(error = %e, "cannot reload the device registry");
                }
                Envelope::open(payload, &self.keys)
            }
            other => other,
        }
    }

    fn check(&mut self, publish: Publish) -> Ingested {
        let topic = match Topic::parse(&publish.topic) {
            Ok(t) => t,
            Err(e) => return self.reject("mqtt", "bad_topic", publish, &e.to_string()),
        };
        match topic.channel {
            Channel::Evt => {}
            Channel::Blob => return self.check_chunk(topic, publish),
            Channel::Pos => return self.check_position(topic, publish),
            Channel::State => return self.check_state(topic, publish),
            _ => return self.reject("mqtt", "unexpected_channel", publish, topic.channel.as_str()),
        }
        let envelope = match self.open(&publish.payload) {
            Ok(e) => e,
            Err(EnvelopeError::UnknownKey(id)) => {
                let reason = if self.reload_store.devices().is_ok_and(|d| d.iter().any(|r| r.key_id == id)) {
                    "revoked_device"
                } else {
                    "unknown_device"
                };
                return self.reject("evt", reason, publish, &format!("key {id}"));
            }
            Err(e) => {
                let detail = e.to_string();
                return self.reject("evt", e.reason(), publish, &detail);
            }
        };
        if envelope.device != topic.device {
            let detail = format!("envelope of {} on {}'s topic", envelope.device, topic.device);
            return self.reject("evt", "topic_mismatch", publish, &detail);
        }
        // The store keeps seqs as SQLite integers; a larger one would fail the whole
        // batch's transaction on every redelivery instead of being refused alone.
        let last_seq = match &envelope.event {
            Event::Gap(gap) => gap.last_seq,
            _ => envelope.seq,
        };
        if i64::try_from(last_seq).is_err() {
            let detail = format!("seq {last_seq} is above {}", i64::MAX);
            return self.reject("evt", "seq_out_of_range", publish, &detail);
        }
        // Envelope::open found the key by this id, so the header holds it.
        let mut id = [0u8; 8];
        id.copy_from_slice(&publish.payload[1..doorstep_proto::envelope::HEADER_LEN]);
        let key_id = doorstep_proto::HexBytes(id);
        if self.keys.fleet_of(&key_id).as_ref() != Some(&topic.fleet) {
            let detail = format!("device {} published under fleet {}", envelope.device, topic.fleet);
            return self.reject("evt", "fleet_mismatch", publish, &detail);
        }
        Ingested::Event(Box::new(VerifiedEvent { topic, key_id, envelope, delivery: publish }))
    }

    /// A live position: signed like an event, at seq 0 (outside the numbered stream).
    fn check_position(&mut self, topic: Topic, publish: Publish) -> Ingested {
        let envelope = match self.open(&publish.payload) {
            Ok(e) => e,
            Err(EnvelopeError::UnknownKey(id)) => {
                return self.reject("pos", "unknown_device", publish, &format!("key {id}"));
            }
            Err(e) => {
                let detail = e.to_string();
                return self.reject("pos", e.reason(), publish, &detail);
            }
        };
        if envelope.device != topic.device {
            let detail = format!("position of {} on {}'s topic", envelope.device, topic.device);
            return self.reject("pos", "topic_mismatch", publish, &detail);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&publish.payload[1..doorstep_proto::envelope::HEADER_LEN]);
        if self.keys.fleet_of(&doorstep_proto::HexBytes(id)).as_ref() != Some(&topic.fleet) {
            let detail = format!("device {} published under fleet {}", envelope.device, topic.fleet);
            return self.reject("pos", "fleet_mismatch", publish, &detail);
        }
        match envelope.event {
            Event::Position(fix) if envelope.seq == 0 => Ingested::Position { topic, fix, delivery: publish },
            other => {
                let detail = format!("{} at seq {}", other.kind(), envelope.seq);
                self.reject("pos", "not_a_live_position", publish, &detail)
            }
        }
    }

    /// A retained state message: JSON, unsigned (the offline form is the broker's last
    /// will, which the device cannot sign at the moment it is sent). The writer keeps it
    /// only for a registered device under its own fleet.
    fn check_state(&mut self, topic: Topic, publish: Publish) -> Ingested {
        match DeviceState::from_bytes(&publish.payload) {
            Ok(state) => Ingested::State { topic, state, delivery: publish },
            Err(e) => self.reject("state", "malformed", publish, &e),
        }
    }

    fn check_chunk(&mut self, topic: Topic, publish: Publish) -> Ingested {
        let chunk = match BlobChunk::decode(&publish.payload) {
            Ok(c) => c,
            Err(e) => {
                let reason = blobs::chunk_error_reason(&e);
                return self.reject("blob", reason, publish, &e.to_string());
            }
        };
        if chunk.device != topic.device {
            let detail = format!("chunk of {} on {}'s topic", chunk.device, topic.device);
            return self.reject("blob", "topic_mismatch", publish, &detail);
        }
        if !self.keys.has_device(&chunk.device) {
            return self.reject("blob", "unknown_device", publish, chunk.device.as_str());
        }
        self.metrics.blob_chunk("received", "ok");
        Ingested::Chunk { topic, chunk: Box::new(chunk), delivery: publish }
    }
}
