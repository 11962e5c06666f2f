//! WhatsApp Business Cloud API: template messages.
//!
//! `POST {base}/{version}/{phone_number_id}/messages` with `Authorization: Bearer
//! <token>` and JSON `{"messaging_product": "whatsapp", "recipient_type": "individual",
//! "to": <digits>, "type": "template", "template": {"name", "language": {"code"},
//! "components": [{"type": "body", "parameters": [{"type": "text", "text"}]}]}}`. Outside a
//! 24-hour customer service window WhatsApp only delivers pre-approved templates, so the
//! hub sends one approved template (configured name) whose body is a single `{{1}}`,
//! filled with the rendered message. The answer names the message in `messages[0].id`.
//! The Cloud API documents no idempotency key: an ambiguous failure is `unknown`, not
//! re-sent. Delivery statuses (the Cloud API's own webhook) are not ingested yet.

use serde::Deserialize;
use serde_json::json;

use super::{Outgoing, SendResult};

/// A configured WhatsApp Business phone number.
#[derive(Clone)]
pub struct WhatsApp {
    /// Graph API base URL without a trailing slash (`https://graph.facebook.com`).
    pub base_url: String,
    /// Graph API version (`v17.0`).
    pub api_version: String,
    /// The sending phone number's id.
    pub phone_number_id: String,
    /// System-user access token.
    pub access_token: String,
    /// The approved template's name.
    pub template_name: String,
}

impl std::fmt::Debug for WhatsApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsApp")
            .field("base_url", &self.base_url)
            .field("phone_number_id", &self.phone_number_id)
            .field("template_name", &self.template_name)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Sent {
    #[serde(default)]
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
}

/// WhatsApp's language code for a BCP 47 locale (`de-AT` → `de_AT`, `en` → `en`).
pub fn language_code(locale: &str) -> String {
    locale.trim().replace('-', "_")
}

impl WhatsApp {
    /// The request body for a message.
    pub fn request_body(&self, msg: &Outgoing) -> serde_json::Value {
        let to: String = msg.recipient.chars().filter(char::is_ascii_digit).collect();
        // WhatsApp template parameters may not contain newlines or tabs.
        let text = msg.body.replace(['\n', '\t'], " ");
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": {
                "name": self.template_name,
                "language": { "code": language_code(&msg.locale) },
                "components": [{ "type": "body", "parameters": [{ "type": "text", "text": text }] }],
            },
        })
    }

    /// Sends one template message.
    pub async fn send(&self, client: &reqwest::Client, msg: &Outgoing) -> SendResult {
        let url = format!("{}/{}/{}/messages", self.base_url, self.api_version, self.phone_number_id);
        let response =
            client.post(url).bearer_auth(&self.access_token).json(&self.request_body(msg)).send().await;
        let reply = match super::read_response(response).await {
            Ok(reply) => reply,
            Err(result) => return result,
        };
        if reply.status.is_success() {
            let id =
                serde_json::from_slice::<Sent>(&reply.body).ok().and_then(|s| s.messages.into_iter().next());
            return SendResult::Accepted {
                provider_id: id.map(|m| m.id),
                detail: format!("whatsapp HTTP {}", reply.status.as_u16()),
            };
        }
        let text = String::from_utf8_lossy(&reply.body).chars().take(300).collect::<String>();
        super::classify_status(
            reply.status,
            reply.retry_after,
            format!("whatsapp HTTP {}: {text}", reply.status.as_u16()),
        )
    }
}
