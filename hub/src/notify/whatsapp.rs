//! WhatsApp Business Cloud API: template messages.
//!
//! `POST {base}/{version}/{phone_number_id}/messages` with `Authorization: Bearer
//! <token>` and JSON `{"messaging_product": "whatsapp", "recipient_type": "individual",
//! "to": <digits>, "type": "template", "template": {"name", "language": {"code"},
//! "components": [{"type": "body", "parameters": [{"type": "text", "text"}]}]}}`. Outside a
//! 24-hour customer service window WhatsApp only delivers pre-approved templates, so the
//! hub sends one approved template (configured name) whose body is a single `{{1}}`,
//! filled with the rendered message. The template's language is the one the rendered text
//! is written in (the Doorstep template's locale after fallback, `en-us` → `en_US`), so
//! the approved WhatsApp template needs a translation under each locale the hub's
//! templates have. The answer names the message in `messages[0].id`.
//! The Cloud API documents no idempotency key: an ambiguous failure is `unknown`, not
//! re-sent. Delivery statuses (the Cloud API's own webhook) are not ingested yet.
//!
//! Meta answers its throttling with HTTP 400 and says to act on `error.code`, not the
//! status: those codes ([`RETRY_CODES`]) are retried with backoff like a 429, so a
//! backlog after an outage or two milestones close together for one customer go out
//! later instead of failing for good.

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

/// Cloud API error codes that mean "not now" rather than "never": 2 (service temporarily
/// unavailable), 4 (app call rate), 80007 (account rate), 130429 (the number's message
/// throughput), 131056 (too many messages to one customer in a short time).
pub const RETRY_CODES: [i64; 5] = [2, 4, 80_007, 130_429, 131_056];

#[derive(Deserialize)]
struct Refusal {
    error: RefusalError,
}

#[derive(Deserialize)]
struct RefusalError {
    code: i64,
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

/// WhatsApp's language code for a BCP 47 locale (`de-AT` → `de_AT`, `en` → `en`,
/// `en-us` → `en_US`): Meta names template languages this way.
pub fn language_code(locale: &str) -> String {
    let mut parts = locale.trim().split(['-', '_']);
    let language = parts.next().unwrap_or_default().to_ascii_lowercase();
    match parts.next() {
        Some(region) if !region.is_empty() => format!("{language}_{}", region.to_ascii_uppercase()),
        _ => language,
    }
}

impl WhatsApp {
    /// The request body for a message.
    pub fn request_body(&self, msg: &Outgoing) -> serde_json::Value {
        let to: String = msg.recipient.chars().filter(char::is_ascii_digit).collect();
        let text = flatten(&msg.body);
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
        let detail = format!("whatsapp HTTP {}: {text}", reply.status.as_u16());
        let code = serde_json::from_slice::<Refusal>(&reply.body).ok().map(|r| r.error.code);
        if code.is_some_and(|c| RETRY_CODES.contains(&c)) {
            return SendResult::Retry { detail, retry_after: reply.retry_after };
        }
        super::classify_status(reply.status, reply.retry_after, detail)
    }
}

/// A template parameter as WhatsApp accepts it: no newline, carriage return or tab, and
/// never more than four spaces in a row (Meta refuses the message otherwise).
pub fn flatten(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut spaces = 0;
    for c in body.chars() {
        let c = if matches!(c, '\n' | '\r' | '\t') { ' ' } else { c };
        if c == ' ' {
            spaces += 1;
            if spaces > 1 {
                continue;
            }
        } else {
            spaces = 0;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_lose_line_breaks_tabs_and_runs_of_spaces() {
        assert_eq!(flatten("Delivered.\r\n\r\n\tProof:     https://t/x"), "Delivered. Proof: https://t/x");
        assert_eq!(flatten("plain text"), "plain text");
    }

    #[test]
    fn locales_are_spelled_the_way_whatsapp_names_template_languages() {
        assert_eq!(language_code("de-AT"), "de_AT");
        assert_eq!(language_code("en"), "en");
        assert_eq!(language_code("en-us"), "en_US");
        assert_eq!(language_code("pt_br"), "pt_BR");
    }
}
