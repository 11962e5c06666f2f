//! The hub's side of the ack protocol, written against proto only: subscribes to every
//! device's events and photo chunks, verifies each envelope with `Envelope::open`,
//! deduplicates by (device, seq), and publishes a signed cumulative `HubMessage::Ack`
//! with the highest contiguous seq it holds (and a `BlobAck` per photo chunk). It records
//! everything, so a test can assert "every confirmation exactly once, in order".
//!
//! Gap notices are applied as proto says a hub must: the seqs they name count as held
//! for the contiguous ack (position samples or trail batches the van evicted from a full
//! outbox), also when a sample at the notice's own seq arrived before it; applying one
//! twice changes nothing. A notice over a seq that held a confirmation is recorded as a
//! conflict.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use doorstep_proto::blob::BlobChunk;
use doorstep_proto::topic::all_devices;
use doorstep_proto::{
    Ack, BlobAck, Channel, DeviceId, Envelope, Event as DeviceEvent, Gap, HexBytes, HubMessage, KeyId,
    SigningKey, Topic, TrustedKey,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Publish an ack at once when this many new events arrived since the last one;
/// otherwise acks go out on the next flush tick.
const ACK_EVERY: u64 = 128;
/// How often pending acks are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Event messages waiting for a verifier.
const VERIFY_QUEUE: usize = 1024;

/// How the receiver checks what it gets.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverOptions {
    /// Verify every envelope's signature with `Envelope::open` (always, in tests). Off
    /// only in the drain benchmark's second run, to measure the agent's own rate apart
    /// from the cost of Ed25519 verification on a shared two-core box; the header, the
    /// key id and the body are still checked.
    pub verify_signatures: bool,
    /// Verifier tasks running in parallel.
    pub verifiers: usize,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        Self { verify_signatures: true, verifiers: 2 }
    }
}

/// A photo being reassembled.
#[derive(Debug, Default, Clone)]
pub struct PhotoAssembly {
    /// Photo size.
    pub total_len: u64,
    /// Next chunk needed.
    pub next_index: u32,
    /// Bytes so far.
    pub data: Vec<u8>,
}

/// Everything the receiver got.
#[derive(Debug, Default)]
pub struct Received {
    /// Verified events by (device, seq): the first copy of each.
    pub events: BTreeMap<(DeviceId, u64), Envelope>,
    /// Copies of events already held.
    pub duplicates: u64,
    /// Copies of one (device, seq) with a different event id (a reused seq), and
    /// confirmations a gap notice claims were evicted position samples.
    pub conflicts: Vec<(DeviceId, u64)>,
    /// Gap notices applied: (device, first seq) to last seq.
    pub gaps: BTreeMap<(DeviceId, u64), u64>,
    /// Messages refused, with the reason.
    pub rejected: Vec<String>,
    /// Complete photos, verified against their hash.
    pub photos: BTreeMap<HexBytes<32>, Vec<u8>>,
    /// Photos in progress.
    pub partial: HashMap<HexBytes<32>, PhotoAssembly>,
    /// Event acks published.
    pub acks_sent: u64,
    /// Live positions seen on `pos` topics.
    pub live_positions: u64,
    /// Messages seen on `state` topics (retained online/offline).
    pub states: Vec<(DeviceId, String)>,
    /// Subscriptions acknowledged by the broker (one per connect).
    pub subscribed: u64,
    /// Highest contiguous seq per device, kept up to date on every insert.
    contiguous: HashMap<DeviceId, u64>,
}

impl Received {
    /// Highest seq up to which every event of `device` is held.
    pub fn contiguous(&self, device: &DeviceId) -> u64 {
        self.contiguous.get(device).copied().unwrap_or(0)
    }

    /// Records a verified envelope: the first copy is kept, later ones are counted.
    fn insert(&mut self, envelope: Envelope) {
        let device = envelope.device.clone();
        let key = (device.clone(), envelope.seq);
        if let DeviceEvent::Gap(gap) = envelope.event {
            self.apply_gap(&device, gap);
            match self.events.get(&key) {
                None => {
                    self.events.insert(key, envelope);
                }
                Some(held) if held.event_id == envelope.event_id => self.duplicates += 1,
                // The sample at the notice's seq arrived before it was evicted: the
                // notice still counts.
                Some(_) => {}
            }
            self.advance(&device);
            return;
        }
        let evicted = self.in_gap(&device, envelope.seq);
        // Position samples and trail batches are what a full outbox may evict.
        let evictable = !envelope.event.is_confirmation();
        match self.events.get(&key) {
            Some(held) if held.event_id == envelope.event_id => self.duplicates += 1,
            // A sample published before its eviction, arriving after the notice for it.
            Some(_) if evicted && evictable => self.duplicates += 1,
            Some(_) => self.conflicts.push(key),
            None => {
                if evicted && !evictable {
                    self.conflicts.push(key.clone());
                }
                self.events.insert(key, envelope);
                self.advance(&device);
            }
        }
    }

    /// Records a gap notice; a confirmation already held inside its range is a conflict.
    fn apply_gap(&mut self, device: &DeviceId, gap: Gap) {
        let range = (device.clone(), gap.first_seq)..=(device.clone(), gap.last_seq);
        let wrongly_named: Vec<(DeviceId, u64)> = self
            .events
            .range(range)
            .filter(|(_, e)| e.event.is_confirmation() && !matches!(e.event, DeviceEvent::Gap(_)))
            .map(|(k, _)| k.clone())
            .collect();
        self.conflicts.extend(wrongly_named);
        let last = self.gaps.entry((device.clone(), gap.first_seq)).or_insert(gap.last_seq);
        *last = (*last).max(gap.last_seq);
    }

    /// The last seq of a gap notice covering `seq`, if one does.
    fn gap_end(&self, device: &DeviceId, seq: u64) -> Option<u64> {
        self.gaps
            .range((device.clone(), 0)..=(device.clone(), seq))
            .map(|(_, last)| *last)
            .filter(|last| *last >= seq)
            .max()
    }

    fn in_gap(&self, device: &DeviceId, seq: u64) -> bool {
        self.gap_end(device, seq).is_some()
    }

    /// Moves the contiguous high-water mark over held events and applied gap notices.
    fn advance(&mut self, device: &DeviceId) {
        let mut n = self.contiguous(device);
        loop {
            if let Some(last) = self.gap_end(device, n + 1) {
                n = last;
            } else if self.events.contains_key(&(device.clone(), n + 1)) {
                n += 1;
            } else {
                break;
            }
        }
        self.contiguous.insert(device.clone(), n);
    }

    /// The gap notices applied for `device`, by first seq.
    pub fn gap_notices(&self, device: &DeviceId) -> Vec<Gap> {
        self.gaps
            .range((device.clone(), 0)..)
            .take_while(|((d, _), _)| d == device)
            .map(|((_, first), last)| Gap { first_seq: *first, last_seq: *last })
            .collect()
    }

    /// The confirmations of `device`, in seq order (gap notices are not confirmations).
    pub fn confirmations(&self, device: &DeviceId) -> Vec<&Envelope> {
        self.events
            .range((device.clone(), 0)..)
            .take_while(|((d, _), _)| d == device)
            .map(|(_, e)| e)
            .filter(|e| e.event.is_confirmation() && !matches!(e.event, DeviceEvent::Gap(_)))
            .collect()
    }

    /// Asserts that the receiver holds confirmations 1..=`count` of `device`, each exactly
    /// once after dedupe by (device, seq), in seq order, nothing missing, no seq reused:
    /// confirmation `n` (by [`crate::confirmation`]) must be the `n`-th in seq order.
    pub fn assert_every_confirmation_once_in_order(&self, device: &DeviceId, count: u32) {
        assert!(self.conflicts.is_empty(), "a seq was reused with another event id: {:?}", self.conflicts);
        let got: Vec<u32> = self
            .confirmations(device)
            .iter()
            .map(|e| match &e.event {
                doorstep_proto::Event::Nearby(n) => n.distance_m,
                other => panic!("unexpected confirmation {other:?}"),
            })
            .collect();
        let want: Vec<u32> = (1..=count).collect();
        if got != want {
            let missing: Vec<u32> = want.iter().copied().filter(|n| !got.contains(n)).collect();
            let mut seen = HashSet::new();
            let doubled: Vec<u32> = got.iter().copied().filter(|n| !seen.insert(*n)).collect();
            panic!(
                "receiver holds {} confirmations, want {count}: missing {missing:?}, doubled {doubled:?}, \
                 first out of order at {:?}",
                got.len(),
                got.windows(2).find(|w| w[1] <= w[0]),
            );
        }
    }
}

/// The acking receiver: a task with its own MQTT session.
#[derive(Debug)]
pub struct AckingReceiver {
    received: Arc<Mutex<Received>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl AckingReceiver {
    /// Connects to the broker on `port` and starts receiving, trusting `devices` (each
    /// device with its key) and signing acks with `hub`.
    pub async fn start(port: u16, devices: &[(DeviceId, &SigningKey)], hub: SigningKey) -> AckingReceiver {
        Self::start_with(port, devices, hub, ReceiverOptions::default()).await
    }

    /// [`AckingReceiver::start`] with options.
    pub async fn start_with(
        port: u16,
        devices: &[(DeviceId, &SigningKey)],
        hub: SigningKey,
        options: ReceiverOptions,
    ) -> AckingReceiver {
        let keyring: HashMap<KeyId, TrustedKey> = devices
            .iter()
            .map(|(d, k)| (k.key_id(), TrustedKey { device: d.clone(), key: k.public_key() }))
            .collect();
        let received = Arc::new(Mutex::new(Received::default()));
        let cancel = CancellationToken::new();
        let mut mqtt = MqttOptions::new(format!("hub-receiver-{port}"), "127.0.0.1", port);
        mqtt.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_inflight(200)
            .set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, eventloop) = AsyncClient::new(mqtt, 1024);
        let acker = Arc::new(Acker {
            client,
            hub,
            keyring,
            received: Arc::clone(&received),
            due: Mutex::new(HashMap::new()),
            verify: options.verify_signatures,
        });
        let task = tokio::spawn(receive(acker, eventloop, options.verifiers.max(1), cancel.clone()));
        let receiver = AckingReceiver { received, cancel, task };
        // Subscribed before the test starts publishing: wait for the first SUBACK.
        let subscribed = receiver.wait_for(Duration::from_secs(10), |r| r.subscribed > 0).await;
        assert!(subscribed, "the acking receiver could not subscribe on port {port}");
        receiver
    }

    /// What the receiver holds now.
    pub fn received(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds (checked every 20 ms) or `timeout` passes; returns
    /// whether it held.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Received) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.received()) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the receiver.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

struct Acker {
    client: AsyncClient,
    hub: SigningKey,
    keyring: HashMap<KeyId, TrustedKey>,
    received: Arc<Mutex<Received>>,
    /// Devices owing an ack: fleet and events since the last ack.
    due: Mutex<HashMap<DeviceId, (doorstep_proto::FleetId, u64)>>,
    verify: bool,
}

impl Acker {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn due(&self) -> MutexGuard<'_, HashMap<DeviceId, (doorstep_proto::FleetId, u64)>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_publish(&self, topic: Topic, payload: &[u8]) {
        match topic.channel {
            Channel::Evt => self.on_event(topic, payload),
            Channel::Blob => self.on_chunk(topic, payload),
            Channel::Pos => self.lock().live_positions += 1,
            Channel::State => {
                let text = String::from_utf8_lossy(payload).into_owned();
                self.lock().states.push((topic.device, text));
            }
            Channel::Ack | Channel::Route => {}
        }
    }

    fn open(&self, payload: &[u8]) -> Result<Envelope, doorstep_proto::EnvelopeError> {
        if self.verify {
            return Envelope::open(payload, &self.keyring);
        }
        let (key_id, envelope) = Envelope::peek_unverified(payload)?;
        match self.keyring.get(&key_id) {
            Some(k) if k.device == envelope.device => Ok(envelope),
            _ => Err(doorstep_proto::EnvelopeError::UnknownKey(key_id)),
        }
    }

    fn on_event(&self, topic: Topic, payload: &[u8]) {
        let envelope = match self.open(payload) {
            Ok(e) if e.device == topic.device => e,
            Ok(e) => {
                self.lock().rejected.push(format!("{} published on {}'s topic", e.device, topic.device));
                return;
            }
            Err(e) => {
                self.lock().rejected.push(format!("{}: {e}", e.reason()));
                return;
            }
        };
        let device = envelope.device.clone();
        self.lock().insert(envelope);
        let now = {
            let mut due = self.due();
            let entry = due.entry(device.clone()).or_insert((topic.fleet, 0));
            entry.1 += 1;
            entry.1 >= ACK_EVERY
        };
        if now {
            self.ack(&device);
        }
    }

    fn ack(&self, device: &DeviceId) {
        let Some((fleet, _)) = self.due().remove(device) else { return };
        let up_to_seq = self.lock().contiguous(device);
        let message = HubMessage::Ack(Ack { device: device.clone(), up_to_seq });
        let Ok(bytes) = message.seal(&self.hub) else { return };
        let topic = Topic::new(fleet.clone(), device.clone(), Channel::Ack).to_string();
        if self.client.try_publish(topic, QoS::AtLeastOnce, false, bytes).is_ok() {
            self.lock().acks_sent += 1;
        } else {
            self.due().insert(device.clone(), (fleet, 0));
        }
    }

    fn flush(&self) {
        let devices: Vec<DeviceId> = self.due().keys().cloned().collect();
        for device in devices {
            self.ack(&device);
        }
    }

    fn on_chunk(&self, topic: Topic, payload: &[u8]) {
        let chunk = match BlobChunk::decode(payload) {
            Ok(c) if c.device == topic.device && self.keyring.values().any(|k| k.device == c.device) => c,
            Ok(c) => {
                self.lock().rejected.push(format!("chunk from unknown device {}", c.device));
                return;
            }
            Err(e) => {
                self.lock().rejected.push(format!("chunk: {e}"));
                return;
            }
        };
        let (next_index, complete) = {
            let mut r = self.lock();
            if r.photos.contains_key(&chunk.sha256) {
                (BlobChunk::chunk_count(chunk.total_len), true)
            } else {
                let asm = r.partial.entry(chunk.sha256).or_default();
                asm.total_len = chunk.total_len;
                if chunk.index == asm.next_index {
                    asm.data.extend_from_slice(&chunk.data);
                    asm.next_index += 1;
                }
                let next = asm.next_index;
                if asm.data.len() as u64 == asm.total_len {
                    let data = std::mem::take(&mut asm.data);
                    r.partial.remove(&chunk.sha256);
                    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
                    if digest.as_ref() == chunk.sha256.0.as_slice() {
                        r.photos.insert(chunk.sha256, data);
                        (next, true)
                    } else {
                        r.rejected.push(format!("photo {} does not match its hash", chunk.sha256));
                        (0, false)
                    }
                } else {
                    (next, false)
                }
            }
        };
        let ack = HubMessage::BlobAck(BlobAck {
            device: chunk.device.clone(),
            sha256: chunk.sha256,
            next_index,
            complete,
        });
        if let Ok(bytes) = ack.seal(&self.hub) {
            let topic = Topic::new(topic.fleet, chunk.device, Channel::Ack).to_string();
            let _ = self.client.try_publish(topic, QoS::AtLeastOnce, false, bytes);
        }
    }
}

/// Owns the receiver's event loop; event envelopes go to `verifiers` parallel tasks
/// (signature checks dominate the receiver's cost), everything else is handled here.
async fn receive(
    acker: Arc<Acker>,
    mut eventloop: rumqttc::EventLoop,
    verifiers: usize,
    cancel: CancellationToken,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<(Topic, Vec<u8>)>(VERIFY_QUEUE);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..verifiers {
        let acker = Arc::clone(&acker);
        let rx = Arc::clone(&rx);
        tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((topic, payload)) = next else { return };
                acker.on_publish(topic, &payload);
            }
        });
    }
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = flush.tick() => acker.flush(),
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filters = [all_devices(Channel::Evt), all_devices(Channel::Blob), all_devices(Channel::Pos), all_devices(Channel::State)];
                    for filter in filters {
                        let _ = acker.client.try_subscribe(filter, QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(topic) = Topic::parse(&p.topic) else { continue };
                    if topic.channel == Channel::Evt {
                        if tx.send((topic, p.payload.to_vec())).await.is_err() {
                            return;
                        }
                    } else {
                        acker.on_publish(topic, &p.payload);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => acker.lock().subscribed += 1,
                Ok(_) => {}
                Err(_) => {
                    eventloop.pending.clear();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn van() -> DeviceId {
        crate::device("van-gap")
    }

    fn envelope(seq: u64, event: DeviceEvent) -> Envelope {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seq.to_le_bytes());
        id[8] = u8::from(matches!(event, DeviceEvent::Gap(_)));
        Envelope { device: van(), seq, event_id: HexBytes(id), gnss_utc_ms: 0, mono_ms: 0, event }
    }

    fn gap(first_seq: u64, last_seq: u64) -> Envelope {
        envelope(first_seq, DeviceEvent::Gap(Gap { first_seq, last_seq }))
    }

    #[test]
    fn a_gap_notice_moves_the_contiguous_ack_over_the_evicted_samples() {
        let mut r = Received::default();
        r.insert(envelope(1, crate::confirmation(1)));
        r.insert(envelope(7, crate::confirmation(2)));
        assert_eq!(r.contiguous(&van()), 1);
        r.insert(gap(2, 6));
        assert_eq!(r.contiguous(&van()), 7);
        r.insert(gap(2, 6));
        assert_eq!((r.contiguous(&van()), r.duplicates), (7, 1), "applying it twice changes nothing");
        assert!(r.conflicts.is_empty());
        r.assert_every_confirmation_once_in_order(&van(), 2);
    }

    #[test]
    fn a_gap_notice_counts_when_the_sample_at_its_seq_arrived_before_it() {
        let mut r = Received::default();
        r.insert(envelope(1, crate::position(1)));
        r.insert(envelope(2, crate::position(2)));
        r.insert(envelope(5, crate::confirmation(1)));
        r.insert(gap(1, 4));
        assert_eq!(r.contiguous(&van()), 5);
        // The sample at seq 3, published before it was evicted, arrives late.
        r.insert(envelope(3, crate::position(3)));
        assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
        assert_eq!(r.gap_notices(&van()), vec![Gap { first_seq: 1, last_seq: 4 }]);
    }

    #[test]
    fn a_trail_batch_published_before_its_eviction_counts_like_a_sample() {
        let trail = |n: i64| {
            let first = doorstep_proto::FixEvidence::new(1_767_225_600_000 + n * 60_000, 47.37, 8.54);
            DeviceEvent::Trail(doorstep_proto::Trail::from_samples(&[first]).expect("trail"))
        };
        let mut r = Received::default();
        r.insert(envelope(1, trail(1)));
        r.insert(envelope(4, crate::confirmation(1)));
        r.insert(gap(1, 3));
        // The batch at seq 2 went out before the outbox evicted it, and arrives late.
        r.insert(envelope(2, trail(2)));
        assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
        assert_eq!(r.contiguous(&van()), 4);
        r.assert_every_confirmation_once_in_order(&van(), 1);
    }

    #[test]
    fn a_gap_notice_over_a_confirmation_is_a_conflict() {
        let mut r = Received::default();
        r.insert(envelope(3, crate::confirmation(1)));
        r.insert(gap(2, 4));
        assert_eq!(r.conflicts, vec![(van(), 3)]);
        let mut r = Received::default();
        r.insert(gap(2, 4));
        r.insert(envelope(3, crate::confirmation(1)));
        assert_eq!(r.conflicts, vec![(van(), 3)]);
    }
}
