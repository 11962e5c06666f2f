//! Operations alerts to a Zapier "Catch Hook" trigger, for shippers who route them on
//! through their own Zaps (a ticket, a spreadsheet row, a page).
//!
//! `POST https://hooks.zapier.com/hooks/catch/{uid}/{key}/` (the URL is the credential)
//! with any JSON; Doorstep sends the alert's fields flat, which is what Zap steps map
//! most easily. **Zapier's 200 says nothing**: it answers 200 even when the Zap is turned
//! off or fails later, so "sent" here means only that Zapier received it; watch the Zap's
//! own history. About 30 requests a second per hook are taken before a 429.

use std::sync::Arc;

use serde_json::json;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType, SecretUrl};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult};

/// `[[notify.providers]]` entries of type `zapier`.
pub const TYPE: ProviderType = ProviderType {
    kind: "zapier",
    channels: &[Channel::Staff],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# A Catch Hook trigger's URL (the URL is the credential). Zapier answers 200 even when
# the Zap is off: check the Zap's history, not only Doorstep's outcome.
# webhook_url = "file:/etc/doorstep-hub/zapier.url"
"#,
    build,
};

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    Ok(Arc::new(Zapier { webhook_url: b.webhook_url()? }))
}

/// A configured catch hook.
#[derive(Debug)]
pub struct Zapier {
    webhook_url: SecretUrl,
}

/// The flat JSON a Zap receives.
pub fn payload(msg: &Outgoing) -> serde_json::Value {
    json!({
        "source": "doorstep",
        "alert_id": msg.alert.as_ref().map(|a| a.id),
        "code": msg.alert.as_ref().map(|a| a.code.as_str()),
        "escalation_step": msg.alert.as_ref().map(|a| a.step),
        "tracking_number": Some(msg.tracking_number.as_str()).filter(|t| !t.is_empty()),
        "subject": msg.subject,
        "text": msg.body,
    })
}

impl Provider for Zapier {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        Ok(client.post(self.webhook_url.as_str()).json(&payload(msg)))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        if reply.status.is_success() {
            return SendResult::Accepted {
                provider_id: None,
                detail: "received by zapier (its 200 does not say the Zap ran)".into(),
            };
        }
        super::classify_status(
            reply.status,
            reply.retry_after,
            format!("zapier HTTP {}", reply.status.as_u16()),
        )
    }

    fn resend_safe(&self) -> bool {
        true
    }
}
