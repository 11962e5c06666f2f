//! Operations alerts to a Microsoft Teams channel through a Power Automate Workflows
//! webhook.
//!
//! Office 365 connectors (the old "incoming webhook") are retired; a Teams channel now
//! receives posts through a Workflows flow ("Post to a channel when a webhook request is
//! received"), whose URL carries its own `sig` parameter: the URL is the credential. The
//! body is a message with one Adaptive Card attachment: `{"type": "message",
//! "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
//! "contentUrl": null, "content": {<the card object>}}]}`, card version 1.4 (the flow
//! rejects cards above what Teams renders). The flow answers 202 (some flows 200):
//! *accepted*, not posted, so the outcome says "accepted by the flow". Bodies over 28 KB
//! are refused, so the alert's text is cut to fit. Posted again after a timeout (an
//! operator seeing an alert twice is better than never; customers never get these).

use std::sync::Arc;

use serde_json::json;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType, SecretUrl};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult};

/// The Adaptive Card version Teams renders in a Workflows post.
pub const CARD_VERSION: &str = "1.4";
/// Longest alert text put on a card, bytes (the flow refuses bodies over 28 KB).
pub const MAX_TEXT: usize = 20_000;

/// `[[notify.providers]]` entries of type `teams`.
pub const TYPE: ProviderType = ProviderType {
    kind: "teams",
    channels: &[Channel::Staff],
    rate: RateLimit { per_s: 1.0, burst: 5 },
    sample: r#"# The Workflows flow's URL ("Post to a channel when a webhook request is received"); its sig is the credential.
# webhook_url = "file:/etc/doorstep-hub/teams.url"
"#,
    build,
};

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    Ok(Arc::new(Teams { webhook_url: b.webhook_url()? }))
}

/// A configured Workflows webhook.
#[derive(Debug)]
pub struct Teams {
    webhook_url: SecretUrl,
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The message the flow receives for an alert.
pub fn card(msg: &Outgoing) -> serde_json::Value {
    let mut facts = Vec::new();
    if let Some(alert) = &msg.alert {
        facts.push(json!({ "title": "Alert", "value": alert.code }));
    }
    if !msg.tracking_number.is_empty() {
        facts.push(json!({ "title": "Shipment", "value": msg.tracking_number }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": CARD_VERSION,
                "body": [
                    { "type": "TextBlock", "text": msg.subject, "weight": "Bolder", "size": "Medium", "wrap": true },
                    { "type": "FactSet", "facts": facts },
                    { "type": "TextBlock", "text": cut(&msg.body, MAX_TEXT), "wrap": true },
                ],
            },
        }],
    })
}

impl Provider for Teams {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        Ok(client.post(self.webhook_url.as_str()).json(&card(msg)))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        if reply.status.is_success() {
            return SendResult::Accepted {
                provider_id: None,
                detail: format!(
                    "accepted by the Teams flow (HTTP {}); the flow posts it",
                    reply.status.as_u16()
                ),
            };
        }
        super::refused("teams", reply)
    }

    fn resend_safe(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(20);
        let cut_text = cut(&text, 11);
        assert!(cut_text.len() <= 11 && cut_text.ends_with("..."), "{cut_text}");
        assert_eq!(cut("short", 11), "short");
    }
}
