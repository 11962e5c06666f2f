//! Operations alerts to a Google Chat space through its incoming webhook.
//!
//! `POST https://chat.googleapis.com/v1/spaces/{space}/messages?key=...&token=...` (the
//! webhook URL; its key and token are the credential) with JSON `{"text": ...}`. Every
//! alert about one shipment goes to one thread: `"thread": {"threadKey": "doorstep-<tracking
//! number>"}` in the body, with `messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`
//! (the query form of the thread key is deprecated), so an operator reads a shipment's
//! story in one place. `requestId` (the alert and its escalation step) makes a repeat of
//! the same post return the message already created instead of a second one, so a post
//! that timed out is safe to repeat. 200 with the created message's `name`; 429 asks for
//! exponential backoff; bodies are limited to 32,000 bytes.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType, SecretUrl};
use super::ratelimit::RateLimit;
use super::teams::cut;
use super::{Outgoing, Reply, SendResult};

/// Longest text posted, bytes (Google Chat's limit is 32,000 for the whole message).
pub const MAX_TEXT: usize = 30_000;

/// `[[notify.providers]]` entries of type `google_chat`.
pub const TYPE: ProviderType = ProviderType {
    kind: "google_chat",
    channels: &[Channel::Staff],
    rate: RateLimit { per_s: 1.0, burst: 5 },
    sample: r#"# The space's webhook URL (Apps & integrations > Webhooks); its key and token are the credential.
# webhook_url = "file:/etc/doorstep-hub/google-chat.url"
"#,
    build,
};

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    Ok(Arc::new(GoogleChat { webhook_url: b.webhook_url()? }))
}

/// A configured space webhook.
#[derive(Debug)]
pub struct GoogleChat {
    webhook_url: SecretUrl,
}

#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    name: Option<String>,
}

/// The thread an alert goes to: one per shipment, one for alerts about none.
pub fn thread_key(msg: &Outgoing) -> String {
    if msg.tracking_number.is_empty() {
        "doorstep-hub".into()
    } else {
        format!("doorstep-{}", msg.tracking_number)
    }
}

/// The `requestId` of a post: the same for every attempt of one alert at one step.
pub fn request_id(msg: &Outgoing) -> String {
    match &msg.alert {
        Some(alert) => format!("doorstep-alert-{}-{}", alert.id, alert.step),
        None => format!("doorstep-outbox-{}", msg.outbox_id),
    }
}

impl Provider for GoogleChat {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        let text = cut(&format!("*{}*\n{}", msg.subject, msg.body), MAX_TEXT);
        let mut url = reqwest::Url::parse(self.webhook_url.as_str())
            .map_err(|e| SendResult::Rejected { detail: format!("google chat webhook URL: {e}") })?;
        url.query_pairs_mut()
            .append_pair("messageReplyOption", "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
            .append_pair("requestId", &request_id(msg));
        Ok(client.post(url).json(&json!({ "text": text, "thread": { "threadKey": thread_key(msg) } })))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        if reply.status.is_success() {
            let name = serde_json::from_slice::<Created>(&reply.body).ok().and_then(|c| c.name);
            return SendResult::Accepted { provider_id: name, detail: "google chat posted".into() };
        }
        super::refused("google chat", reply)
    }

    fn resend_safe(&self) -> bool {
        true
    }
}
