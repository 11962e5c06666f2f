//! The event stream: every reconciled milestone and operations alert published to NATS
//! JetStream, for the shipper's own services to consume.
//!
//! Subject: `{subject_prefix}.{fleet}.{tracking}.{milestone}` for a milestone
//! (`doorstep.north.1Z999AA10123456784.delivered`) and `{subject_prefix}.{fleet}.{tracking}.alert`
//! for an alert (its code is in the message), where `fleet` is the fleet of the van route
//! the parcel was on when the event was committed, or `orders` for a parcel no van of ours
//! carried (a carrier's or an order system's word alone). One level per concept, so a
//! consumer subscribes to a fleet (`doorstep.north.>`), a parcel (`doorstep.*.1Z999...*`)
//! or a kind of event (`doorstep.*.*.delivered`, `doorstep.*.*.alert`). A character a
//! subject token cannot hold (`.`, `*`, `>`, space) becomes `_`.
//!
//! Each message carries `Nats-Msg-Id` = the row's stable key, and the hub waits for the
//! stream's publish ack: JetStream drops a message whose id it stored within the stream's
//! duplicate window, so a publish repeated after a lost ack or a hub stopped mid-send is
//! stored once. That makes every publish safe to repeat within the window; the hub creates
//! its stream with a 24-hour window (`duplicate_window_s`) so that retries with backoff stay
//! inside it, and warns when a stream the operators made keeps a shorter one. The body is
//! the event as JSON (`id` is the same key, for consumers that keep their own
//! de-duplication beyond the window).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use serde::Deserialize;

use super::registry::SinkConfigError;
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType};
use super::{EventKind, SinkEvent};
use crate::notify::SendResult;
use crate::notify::ratelimit::RateLimit;

/// The JetStream sink type.
pub const TYPE: SinkType = SinkType {
    kind: "nats",
    rate: RateLimit { per_s: 500.0, burst: 500 },
    alerts: true,
    sample: r#"# name = "stream"
# url = "nats://127.0.0.1:4222"         # tls://host:4222 for TLS
# subject_prefix = "doorstep"           # doorstep.<fleet or orders>.<tracking>.<milestone or alert>
# stream = "DOORSTEP"
# create_stream = true                  # create the stream (subjects doorstep.>) when missing
# duplicate_window_s = 86400            # of a stream the hub creates: retries stay deduplicated
# token = "file:/etc/doorstep/nats.token"
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default = "default_url")]
    url: String,
    #[serde(default = "default_prefix")]
    subject_prefix: String,
    #[serde(default = "default_stream")]
    stream: String,
    #[serde(default = "yes")]
    create_stream: bool,
    #[serde(default = "default_window")]
    duplicate_window_s: u64,
    token: Option<String>,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_prefix() -> String {
    "doorstep".into()
}
fn default_stream() -> String {
    "DOORSTEP".into()
}
fn yes() -> bool {
    true
}
fn default_window() -> u64 {
    86_400
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    if !(s.url.starts_with("nats://") || s.url.starts_with("tls://")) {
        return Err(b.invalid("url", "must start with nats:// or tls://"));
    }
    let valid_token = |t: &str| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '\r', '\n']);
    if !s.subject_prefix.split('.').all(valid_token) {
        return Err(b.invalid("subject_prefix", "dot-separated tokens without spaces, * or >"));
    }
    if s.stream.is_empty() || s.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
        return Err(b.invalid("stream", "a JetStream stream name: no spaces, ., *, >, / or \\"));
    }
    if !(60..=30 * 86_400).contains(&s.duplicate_window_s) {
        return Err(b.invalid("duplicate_window_s", "must be 60 s to 30 days"));
    }
    let token = s.token.as_deref().map(|t| b.secret("token", t)).transpose()?;
    Ok(Arc::new(Nats {
        url: s.url,
        prefix: s.subject_prefix,
        stream: s.stream,
        create_stream: s.create_stream,
        duplicate_window: Duration::from_secs(s.duplicate_window_s),
        timeout: b.request_timeout,
        token,
        context: tokio::sync::OnceCell::new(),
    }))
}

/// A configured JetStream sink. Connects on its first delivery (and again after a failed
/// connect); the client reconnects by itself after that.
pub struct Nats {
    url: String,
    prefix: String,
    stream: String,
    create_stream: bool,
    duplicate_window: Duration,
    timeout: Duration,
    token: Option<String>,
    context: tokio::sync::OnceCell<jetstream::Context>,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("stream", &self.stream)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

/// A subject token: what it cannot hold becomes `_`.
fn token(text: &str) -> String {
    let t: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// The subject an event is published on (see the module's documentation).
pub fn subject(prefix: &str, event: &SinkEvent) -> String {
    let fleet = event.fleet.as_deref().map_or_else(|| "orders".to_owned(), token);
    let last = match &event.kind {
        EventKind::Milestone(m) => crate::store::milestone_name(*m),
        EventKind::Alert(_) => "alert",
    };
    format!("{prefix}.{fleet}.{}.{last}", token(&event.tracking_number))
}

fn classify(kind: PublishErrorKind, error: impl fmt::Display) -> SendResult {
    let detail = format!("JetStream publish: {error}");
    match kind {
        // Nothing stored: no stream listens on the subject (yet), or too many acks pending.
        PublishErrorKind::StreamNotFound | PublishErrorKind::MaxAckPending => {
            SendResult::Retry { detail, retry_after: None }
        }
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => SendResult::Rejected { detail },
        // The message may be stored: the ack is what is missing.
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::Other => {
            SendResult::Ambiguous { detail }
        }
    }
}

impl Nats {
    async fn connect(&self) -> Result<jetstream::Context, SendResult> {
        let mut options = async_nats::ConnectOptions::new()
            .name("doorstep-hub")
            .connection_timeout(self.timeout.min(Duration::from_secs(5)));
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let client = options.connect(self.url.as_str()).await.map_err(|e| SendResult::Retry {
            detail: format!("connecting to {}: {e}", self.url),
            retry_after: None,
        })?;
        let mut context = jetstream::new(client);
        context.set_timeout(self.timeout);
        let stream = if self.create_stream {
            let config = jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.prefix)],
                duplicate_window: self.duplicate_window,
                ..Default::default()
            };
            context.get_or_create_stream(config).await.map_err(|e| e.to_string())
        } else {
            context.get_stream(&self.stream).await.map_err(|e| e.to_string())
        };
        let stream = stream.map_err(|e| SendResult::Retry {
            detail: format!("stream {} on {}: {e}", self.stream, self.url),
            retry_after: None,
        })?;
        // A stream the operators made may drop repeats for less long than our retries take.
        let window = stream.cached_info().config.duplicate_window;
        if window < self.duplicate_window {
            tracing::warn!(stream = %self.stream, window_s = window.as_secs(), wanted_s = self.duplicate_window.as_secs(), "the stream's duplicate window is shorter than duplicate_window_s: a publish repeated after it may be stored twice");
        }
        Ok(context)
    }

    async fn publish(&self, event: &SinkEvent) -> Delivery {
        let context = match self.context.get_or_try_init(|| self.connect()).await {
            Ok(context) => context,
            Err(result) => return Delivery::NotTaken(result),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.key.as_str());
        let payload = event.to_json().to_string();
        let subject = subject(&self.prefix, event);
        let ack = match context.publish_with_headers(subject.clone(), headers, payload.into()).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Delivery::Accepted {
                vendor_id: Some(format!("{}:{}", ack.stream, ack.sequence)),
                thread: None,
                detail: if ack.duplicate {
                    format!(
                        "{subject}: the stream already had it (a repeated publish, dropped as a duplicate)"
                    )
                } else {
                    format!("{subject}: stored")
                },
            },
            Err(e) => Delivery::NotTaken(classify(e.kind(), e)),
        }
    }
}

impl Sink for Nats {
    fn deliver<'a>(&'a self, _client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.publish(event))
    }

    /// Always: JetStream drops a repeated `Nats-Msg-Id` within the duplicate window.
    fn resend_safe(&self, _event: &SinkEvent) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Milestone;

    fn event(fleet: Option<&str>, kind: EventKind) -> SinkEvent {
        SinkEvent {
            fleet: fleet.map(str::to_owned),
            order_name: None,
            ..crate::sinks::test_event("stream", kind)
        }
    }

    #[test]
    fn subjects_name_the_fleet_the_parcel_and_the_milestone_or_alert() {
        let delivered = EventKind::Milestone(Milestone::Delivered);
        assert_eq!(
            subject("doorstep", &event(Some("north"), delivered.clone())),
            "doorstep.north.1Z999AA10123456784.delivered"
        );
        assert_eq!(
            subject("acme.doorstep", &event(None, EventKind::Alert("carrier_disagrees".into()))),
            "acme.doorstep.orders.1Z999AA10123456784.alert"
        );
        assert_eq!(subject("d", &event(Some("a.b *>"), delivered)), "d.a_b___.1Z999AA10123456784.delivered");
    }

    #[test]
    fn a_missing_ack_is_ambiguous_and_a_missing_stream_is_a_retry() {
        assert!(matches!(classify(PublishErrorKind::TimedOut, "t"), SendResult::Ambiguous { .. }));
        assert!(matches!(classify(PublishErrorKind::StreamNotFound, "s"), SendResult::Retry { .. }));
        assert!(matches!(classify(PublishErrorKind::MaxPayloadExceeded, "m"), SendResult::Rejected { .. }));
    }
}
