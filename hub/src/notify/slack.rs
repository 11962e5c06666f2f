//! Operations alerts to a Slack incoming webhook.
//!
//! `POST <webhook URL>` with JSON `{"text": ...}`; Slack answers `200 ok`, or 4xx with a
//! reason (`invalid_payload`, `no_service`, ...), or 429 when rate limited. Slack has no
//! idempotency key; an alert whose post timed out is posted again, because an operator
//! seeing an alert twice is better than never (customers never get these).

use std::sync::Arc;

use serde_json::json;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType, SecretUrl};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult};

/// A configured Slack incoming webhook.
#[derive(Debug, Clone)]
pub struct Slack {
    /// The webhook URL (a secret: it is the credential).
    pub webhook_url: SecretUrl,
}

/// The alert text: code, shipment and the operator's sentence.
pub fn alert_text(code: &str, tracking_number: Option<&str>, detail: &str) -> String {
    match tracking_number {
        Some(tn) => format!(":warning: *{code}* shipment `{tn}`: {detail}"),
        None => format!(":warning: *{code}*: {detail}"),
    }
}

/// `[[notify.providers]]` entries of type `slack`.
pub const TYPE: ProviderType = ProviderType {
    kind: "slack",
    channels: &[Channel::Staff],
    // Slack allows about one message a second per webhook.
    rate: RateLimit { per_s: 1.0, burst: 10 },
    sample: r#"# webhook_url = "file:/etc/doorstep-hub/slack.url"   # an incoming webhook: the URL is the credential
"#,
    build,
};

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    Ok(Arc::new(Slack { webhook_url: b.webhook_url()? }))
}

impl Provider for Slack {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        let code = msg.alert.as_ref().map_or(msg.subject.as_str(), |a| a.code.as_str());
        let text = alert_text(code, Some(msg.tracking_number.as_str()).filter(|t| !t.is_empty()), &msg.body);
        Ok(client.post(self.webhook_url.as_str()).json(&json!({ "text": text })))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        if reply.status.is_success() {
            return SendResult::Accepted { provider_id: None, detail: "slack ok".into() };
        }
        super::refused("slack", reply)
    }

    /// Posted again after a timeout: an operator seeing an alert twice is better than never.
    fn resend_safe(&self) -> bool {
        true
    }
}
