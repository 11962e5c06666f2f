//! The MQTT task, which alone polls the event loop and hands each delivered message to
//! the verifiers, and the outbound task, which publishes acks, routes and PUBACKs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use doorstep_runtime::backoff::jitter;
use rumqttc::{AsyncClient, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

use super::assign::Filters;
use super::held::{Held, Op, Refused};

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
    // The topic filters held with the broker, against those wanted.
    let mut held = Held::new(filters);
    // The gauges only when they change: this loop runs once per message.
    let mut reported_granted = 0;
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
            changed = held.want().changed(), if held.watching => {
                match changed {
                    Ok(()) => held.changed(),
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
                    reported_granted = 0;
                    metrics.mqtt_subscriptions(0);
                    tracing::info!(session_present = ack.session_present, "connected to the broker");
                    if !ack.session_present {
                        // A broker without this hub's session is a fresh one (or lost its
                        // state): its retained routes are gone too. The writer publishes
                        // every device's current route again.
                        republish_all.store(true, Ordering::SeqCst);
                    }
                    held.connected(ack.session_present);
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                    // A refused filter (a broker ACL) means vans this hub never hears.
                    // A grant at QoS 0 would let the broker drop events while the hub is
                    // away: not counted as heard.
                    let mut refused = 0;
                    for code in &ack.return_codes {
                        match code {
                            rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce) => {
                                refused += 1;
                                tracing::error!(
                                    "the broker granted a subscription at QoS 0 only; events may be lost"
                                );
                            }
                            rumqttc::SubscribeReasonCode::Success(_) => {}
                            rumqttc::SubscribeReasonCode::Failure => {
                                refused += 1;
                                tracing::error!(
                                    "the broker refused one of the hub's subscriptions; check its ACL"
                                );
                            }
                        }
                    }
                    held.subscribed(refused);
                }
                Ok(rumqttc::Event::Incoming(Packet::UnsubAck(_))) => held.unsubscribed(),
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
                    held.disconnected();
                    reported_granted = 0;
                    metrics.mqtt_subscriptions(0);
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
        if held.has_work() {
            held.pump(|op| send(&client, op));
        }
        if let Some(granted) = held.granted()
            && reported_granted != granted
        {
            reported_granted = granted;
            metrics.mqtt_subscriptions(granted);
        }
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

/// Sends one of [`Held`]'s packets without waiting: the request queue is drained by
/// this task's own event loop.
fn send(client: &AsyncClient, op: Op) -> Result<(), (Op, Refused)> {
    let result = match &op {
        Op::Subscribe(filters) => client.try_subscribe_many(
            filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
        ),
        Op::Unsubscribe(filter) => client.try_unsubscribe(filter.clone()),
    };
    result.map_err(|e| match e {
        // Full, or gone: the event loop tells which when it is polled.
        rumqttc::ClientError::TryRequest(_) => (op, Refused::Full),
        e => {
            tracing::error!(error = %e, "cannot send a subscription change");
            (op, Refused::Closed)
        }
    })
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
