//! Operations alerts to a Slack incoming webhook.
//!
//! `POST <webhook URL>` with JSON `{"text": ...}`; Slack answers `200 ok`, or 4xx with a
//! reason (`invalid_payload`, `no_service`, ...), or 429 when rate limited. Slack has no
//! idempotency key; an alert whose post timed out is posted again, because an operator
//! seeing an alert twice is better than never (customers never get these).

use serde_json::json;

use super::SendResult;

/// A configured Slack incoming webhook.
#[derive(Clone)]
pub struct Slack {
    /// The webhook URL (a secret: it is the credential).
    pub webhook_url: String,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack").finish_non_exhaustive()
    }
}

/// The alert text: code, shipment and the operator's sentence.
pub fn alert_text(code: &str, tracking_number: Option<&str>, detail: &str) -> String {
    match tracking_number {
        Some(tn) => format!(":warning: *{code}* shipment `{tn}`: {detail}"),
        None => format!(":warning: *{code}*: {detail}"),
    }
}

impl Slack {
    /// Posts one message.
    pub async fn post(&self, client: &reqwest::Client, text: &str) -> SendResult {
        let response = client.post(&self.webhook_url).json(&json!({ "text": text })).send().await;
        let reply = match super::read_response(response).await {
            Ok(reply) => reply,
            Err(result) => return result,
        };
        if reply.status.is_success() {
            return SendResult::Accepted { provider_id: None, detail: "slack ok".into() };
        }
        let reason = String::from_utf8_lossy(&reply.body).chars().take(100).collect::<String>();
        super::classify_status(
            reply.status,
            reply.retry_after,
            format!("slack HTTP {}: {reason}", reply.status.as_u16()),
        )
    }
}
