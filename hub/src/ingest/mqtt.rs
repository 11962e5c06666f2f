//! The MQTT task, which alone polls the event loop and hands each delivered message to
//! the verifiers, and the outbound task, which publishes acks, routes and PUBACKs.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use doorstep_runtime::backoff::jitter;
use rumqttc::{AsyncClient, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

use super::assign::Filters;

use super::{DRAIN_TIMEOUT, MAX_PENDING, MAX_PENDING_BYTES, Outbound, RECONNECT};

#[allow(clippy::too_many_arguments)] // the task's wiring, each a different thing it owns or shares.
pub(super) async fn drive(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    verify: mpsc::Sender<(u64, Publish)>,
    filters: watch::Receiver<Filters>,
    metrics: Arc<Metrics>,
    republish_all: Arc<AtomicBool>,
    cancel: CancellationToken,
    outbound_done: CancellationToken,
) {
    let mut delay = RECONNECT.initial;
    let rng = ring::rand::SystemRandom::new();
    let mut verify = Some(verify);
    // The place of each message handed to the verifiers in the broker's delivery order.
    // Given out only when a verifier queue takes the message, so the writer never waits
    // for an ordinal that was shed or dropped with a lost connection.
    let mut ordinal = 0u64;
    // Publishes read from the socket but not yet taken by a verifier. The event loop must
    // keep being polled while the pipeline is full, because the acks and PUBACKs that
    // drain it leave through this same event loop; the broker's in-flight window
    // (un-PUBACKed QoS 1 messages) is what bounds this queue in practice.
    let mut pending: VecDeque<Publish> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut reported_pending = usize::MAX;
    // Topic filters the broker granted in this session.
    let mut granted = 0usize;
    let mut held = Held {
        want: filters,
        watching: true,
        asked: BTreeSet::new(),
        connected: false,
        released: false,
        dropping: VecDeque::new(),
    };
    loop {
        let mut stop_feeding = false;
        let reserve = async {
            match (pending.is_empty(), verify.as_ref()) {
                (false, Some(tx)) => Some(tx.reserve().await),
                _ => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            biased;
            () = cancel.cancelled(), if verify.is_some() => {
                stop_feeding = true;
                None
            }
            () = outbound_done.cancelled() => break,
            permit = reserve => {
                match permit {
                    Some(Ok(permit)) => {
                        if let Some(publish) = pending.pop_front() {
                            pending_bytes = pending_bytes.saturating_sub(publish.payload.len());
                            permit.send((ordinal, publish));
                            ordinal += 1;
                        }
                    }
                    _ => {
                        tracing::error!("verifier threads gone; stopping ingest");
                        stop_feeding = true;
                    }
                }
                None
            }
            // Before the event loop, which is ready whenever messages flow: a new set of
            // vans is taken at once, even under load.
            changed = held.want.changed(), if held.watching => {
                match changed {
                    Ok(()) => {
                        granted = granted.saturating_sub(held.update(&client));
                        metrics.mqtt_subscriptions(granted);
                    }
                    // A fixed set of filters.
                    Err(_) => held.watching = false,
                }
                None
            }
            event = eventloop.poll() => Some(event),
        };
        if stop_feeding {
            // Stop feeding the pipeline; keep polling so the last acks go out. What is
            // still pending was never PUBACKed: the broker keeps it for the next session.
            verify = None;
            pending.clear();
            pending_bytes = 0;
            continue;
        }
        if let Some(event) = event {
            match event {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    delay = Duration::from_millis(250);
                    metrics.mqtt_connected(true);
                    granted = 0;
                    metrics.mqtt_subscriptions(granted);
                    tracing::info!(session_present = ack.session_present, "connected to the broker");
                    if !ack.session_present {
                        // A broker without this hub's session is a fresh one (or lost its
                        // state): its retained routes are gone too. The writer publishes
                        // every device's current route again.
                        republish_all.store(true, Ordering::SeqCst);
                    }
                    held.connected(&client, ack.session_present);
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                    // A refused filter (a broker ACL) means vans this hub never hears.
                    // A grant at QoS 0 would let the broker drop events while the hub is
                    // away: not counted as heard.
                    for code in &ack.return_codes {
                        match code {
                            rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce) => {
                                tracing::error!(
                                    "the broker granted a subscription at QoS 0 only; events may be lost"
                                );
                            }
                            rumqttc::SubscribeReasonCode::Success(_) => granted += 1,
                            rumqttc::SubscribeReasonCode::Failure => {
                                tracing::error!(
                                    "the broker refused one of the hub's subscriptions; check its ACL"
                                );
                            }
                        }
                    }
                    metrics.mqtt_subscriptions(granted);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                    let Some(tx) = &verify else { continue };
                    if pending.len() >= MAX_PENDING || pending_bytes >= MAX_PENDING_BYTES {
                        // Shed: not PUBACKed, not acked; the device resends it when its ack
                        // stalls. Only a broker with an in-flight window above MAX_PENDING
                        // (or a QoS 0 flood) gets here.
                        metrics.ingest("rejected", "overload");
                        tracing::warn!(topic = %publish.topic, pending = pending.len(), "ingest overloaded; message shed");
                        continue;
                    }
                    if !pending.is_empty() {
                        // Keep the delivery order: nothing overtakes what already waits.
                        pending_bytes += publish.payload.len();
                        pending.push_back(publish);
                    } else {
                        match tx.try_send((ordinal, publish)) {
                            Ok(()) => ordinal += 1,
                            Err(mpsc::error::TrySendError::Full((_, publish))) => {
                                pending_bytes += publish.payload.len();
                                pending.push_back(publish);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                tracing::error!("verifier threads gone; stopping ingest");
                                verify = None;
                                pending.clear();
                                pending_bytes = 0;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.mqtt_connected(false);
                    held.connected = false;
                    granted = 0;
                    metrics.mqtt_subscriptions(granted);
                    if verify.is_none() {
                        break;
                    }
                    // Messages pending from the lost connection were not PUBACKed; the broker
                    // redelivers them on the resumed session.
                    pending.clear();
                    pending_bytes = 0;
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "broker connection lost; reconnecting");
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(jitter(&rng, delay)) => {}
                    }
                    delay = RECONNECT.next(delay);
                }
            }
        }
        if !held.dropping.is_empty() {
            held.drop_some(&client);
        }
        // The gauge only when it changes: this loop runs once per message.
        if pending.len() != reported_pending {
            reported_pending = pending.len();
            metrics.queue_depth("mqtt_pending", reported_pending);
        }
    }
    // Drain: let the verifiers and the writer finish and the acks go out, then say goodbye.
    drop(verify);
    let _ = client.try_disconnect();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    metrics.mqtt_connected(false);
}

/// Filters per SUBSCRIBE packet: a hub given thousands of vans asks for them in packets
/// well under the outgoing packet limit.
const FILTERS_PER_PACKET: usize = 256;

/// The topic filters this hub holds with the broker, against the ones it should hold
/// (`assign`: every van, or the vans its group gave it).
struct Held {
    want: watch::Receiver<Filters>,
    /// Whether `want` can still change.
    watching: bool,
    /// Filters asked of the broker, kept while the broker keeps the session.
    asked: BTreeSet<String>,
    connected: bool,
    /// Whether the filters a session from an earlier process may hold were dropped.
    released: bool,
    /// Filters to drop, one UNSUBSCRIBE each (rumqttc's), sent as the request queue takes
    /// them: a restart releases four for every van of the fleet.
    dropping: VecDeque<String>,
}

impl Held {
    /// After a CONNACK: asks for every wanted filter (a resumed session's are asked again,
    /// which the broker answers as granted), and drops those a resumed session still
    /// holds but this hub no longer wants: at this process's first resumed session, every
    /// filter it must not hold, since an earlier process's are unknown.
    fn connected(&mut self, client: &AsyncClient, session_present: bool) {
        self.connected = true;
        if !session_present {
            // The broker holds nothing of this hub's: nothing to drop.
            self.asked.clear();
            self.dropping.clear();
            self.released = true;
        }
        let filters = self.want.borrow_and_update().clone();
        let want: BTreeSet<String> = filters.hold.into_iter().collect();
        let mut stale: BTreeSet<String> = self.asked.difference(&want).cloned().collect();
        if !self.released {
            stale.extend(filters.release.into_iter().filter(|f| !want.contains(f)));
            self.released = true;
        }
        subscribe(client, want.iter());
        self.dropping.retain(|f| !want.contains(f));
        self.dropping.extend(stale);
        self.asked = want;
        self.drop_some(client);
    }

    /// After the wanted filters changed: asks for the new ones and drops the old ones, if
    /// connected (else the next CONNACK does). Returns how many were dropped.
    fn update(&mut self, client: &AsyncClient) -> usize {
        if !self.connected {
            return 0;
        }
        let want: BTreeSet<String> = self.want.borrow_and_update().hold.iter().cloned().collect();
        subscribe(client, want.difference(&self.asked));
        let stale: Vec<String> = self.asked.difference(&want).cloned().collect();
        let dropped = stale.len();
        // A van given back before its filters were dropped keeps them.
        self.dropping.retain(|f| !want.contains(f));
        self.dropping.extend(stale);
        self.asked = want;
        self.drop_some(client);
        dropped
    }

    /// Sends what the request queue takes of the filters to drop; the rest on a later
    /// turn of the loop.
    fn drop_some(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        while let Some(filter) = self.dropping.pop_front() {
            match client.try_unsubscribe(filter.clone()) {
                Ok(()) => {}
                Err(rumqttc::ClientError::TryRequest(_)) => {
                    self.dropping.push_front(filter);
                    return;
                }
                Err(e) => {
                    tracing::error!(filter, error = %e, "cannot unsubscribe");
                    return;
                }
            }
        }
    }
}

fn subscribe<'a>(client: &AsyncClient, filters: impl Iterator<Item = &'a String>) {
    let filters: Vec<&String> = filters.collect();
    for chunk in filters.chunks(FILTERS_PER_PACKET) {
        let many = chunk.iter().map(|f| rumqttc::SubscribeFilter::new((*f).clone(), QoS::AtLeastOnce));
        if let Err(e) = client.try_subscribe_many(many) {
            tracing::error!(error = %e, filters = chunk.len(), "cannot subscribe");
        }
    }
}

pub(super) async fn outbound(
    client: AsyncClient,
    mut rx: mpsc::Receiver<Outbound>,
    metrics: Arc<Metrics>,
    done: CancellationToken,
) {
    while let Some(item) = rx.recv().await {
        let result = match item {
            Outbound::Publish { topic, payload, retain } => {
                let r = client.publish(topic, QoS::AtLeastOnce, retain, payload).await;
                if r.is_ok() {
                    metrics.ack_published();
                }
                r
            }
            Outbound::Route { topic, payload } => {
                client.publish(topic, QoS::AtLeastOnce, true, payload).await
            }
            Outbound::Watch { topic, payload } => {
                let r = client.publish(topic, QoS::AtLeastOnce, false, payload).await;
                if r.is_ok() {
                    metrics.watch_published();
                }
                r
            }
            Outbound::StopNote { topic, payload } => {
                let r = client.publish(topic, QoS::AtLeastOnce, false, payload).await;
                if r.is_ok() {
                    metrics.stop_note_published();
                }
                r
            }
            Outbound::PubAcks(deliveries) => {
                let mut result = Ok(());
                for publish in &deliveries {
                    result = client.ack(publish).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "mqtt client closed; outbound messages dropped (devices will resend)");
            break;
        }
    }
    done.cancel();
}
