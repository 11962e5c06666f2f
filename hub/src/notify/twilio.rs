//! Twilio Programmable Messaging: SMS out, delivery status and STOP in.
//!
//! - Send: `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP basic auth
//!   (AccountSid:AuthToken), form fields `To`, `From` (or `MessagingServiceSid`), `Body`,
//!   `StatusCallback`; 201 with JSON `sid` and `status`.
//! - Idempotency: Twilio documents no idempotency key for message creation, so a request
//!   that timed out after it was sent may have become a message. The dispatcher marks it
//!   `unknown` and never re-sends it on its own: a customer texted twice is worse than an
//!   operator looking at one `unknown` row (whose status callback, if Twilio did send it,
//!   still arrives and completes the row).
//! - Status callbacks (`MessageSid`, `MessageStatus`, `ErrorCode`, ...) and inbound
//!   messages are form POSTs signed with `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed
//!   with the auth token, over the full URL Twilio called followed by every POST
//!   parameter's name and value, sorted by name. The URL is the configured public one
//!   (a proxy in front of the hub changes the host the hub sees).
//! - Error 21610 (the recipient replied STOP to this sender) records an opt-out.

use ring::hmac;
use serde::Deserialize;

use super::SendResult;
use super::token::constant_time_eq;

/// Twilio's error code for "the recipient has opted out of messages from this sender".
pub const ERROR_UNSUBSCRIBED: i64 = 21610;

/// Inbound keywords that opt a number out (Twilio's standard set, upper-cased).
pub const STOP_WORDS: [&str; 8] =
    ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"];
/// Inbound keywords that opt a number back in.
pub const START_WORDS: [&str; 3] = ["START", "YES", "UNSTOP"];

/// Who a message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A Twilio phone number (E.164) or alphanumeric sender id: the `From` field.
    From(String),
    /// A Messaging Service: the `MessagingServiceSid` field.
    MessagingService(String),
}

/// A configured Twilio account.
#[derive(Clone)]
pub struct Twilio {
    /// API base URL, without a trailing slash (`https://api.twilio.com`).
    pub base_url: String,
    /// The account SID (`AC...`).
    pub account_sid: String,
    /// The auth token: basic-auth password and callback signing key.
    pub auth_token: String,
    /// The sender.
    pub sender: Sender,
    /// The `StatusCallback` URL given with every message.
    pub status_callback: Option<String>,
}

impl std::fmt::Debug for Twilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twilio")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Created {
    sid: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

impl Twilio {
    /// The Messages resource URL.
    pub fn messages_url(&self) -> String {
        format!("{}/2010-04-01/Accounts/{}/Messages.json", self.base_url, self.account_sid)
    }

    /// Sends one SMS.
    pub async fn send(&self, client: &reqwest::Client, to: &str, body: &str) -> SendResult {
        let mut form: Vec<(&str, &str)> = vec![("To", to)];
        match &self.sender {
            Sender::From(from) => form.push(("From", from)),
            Sender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        form.push(("Body", body));
        if let Some(cb) = &self.status_callback {
            form.push(("StatusCallback", cb));
        }
        let response = client
            .post(self.messages_url())
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await;
        let reply = match super::read_response(response).await {
            Ok(reply) => reply,
            Err(result) => return result,
        };
        if reply.status.is_success() {
            return match serde_json::from_slice::<Created>(&reply.body) {
                Ok(c) => SendResult::Accepted {
                    provider_id: Some(c.sid),
                    detail: format!("twilio status {}", c.status),
                },
                Err(_) => {
                    SendResult::Accepted { provider_id: None, detail: "accepted; response unreadable".into() }
                }
            };
        }
        let error = serde_json::from_slice::<ApiError>(&reply.body).ok();
        if let Some(ApiError { code: Some(ERROR_UNSUBSCRIBED), message }) = &error {
            return SendResult::OptedOut {
                detail: format!(
                    "twilio {ERROR_UNSUBSCRIBED}: {}",
                    message.as_deref().unwrap_or("unsubscribed")
                ),
            };
        }
        let detail = match error {
            Some(ApiError { code: Some(code), message }) => {
                format!("twilio HTTP {} error {code}: {}", reply.status.as_u16(), message.unwrap_or_default())
            }
            _ => format!("twilio HTTP {}", reply.status.as_u16()),
        };
        super::classify_status(reply.status, reply.retry_after, detail)
    }
}

/// The `X-Twilio-Signature` Twilio computes for a request to `url` with these POST
/// parameters.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Twilio sorts by name; equal names keep a deterministic (value) order.
    sorted.sort();
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(url.as_bytes());
    for (name, value) in sorted {
        ctx.update(name.as_bytes());
        ctx.update(value.as_bytes());
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

/// Whether `header` is Twilio's signature of this request (constant-time compare).
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    constant_time_eq(signature(auth_token, url, params).as_bytes(), header.trim().as_bytes())
}

/// What a `MessageStatus` means for the outcome log; `None` for the intermediate
/// states (`queued`, `accepted`, `sending`, `scheduled`) that change nothing.
pub fn status_outcome(status: &str) -> Option<&'static str> {
    match status {
        "sent" => Some("sent"),
        "delivered" => Some("delivered"),
        "undelivered" => Some("undelivered"),
        "failed" | "canceled" => Some("failed"),
        "read" => Some("opened"),
        _ => None,
    }
}

/// An opt-out keyword changes the subscription; anything else is ordinary text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// STOP and its synonyms.
    OptOut,
    /// START and its synonyms.
    OptIn,
}

/// The keyword an inbound body is, if it is one (whole message, any case, trimmed).
pub fn inbound_keyword(body: &str) -> Option<Keyword> {
    let word = body.trim().trim_end_matches(['.', '!']).to_uppercase();
    if STOP_WORDS.contains(&word.as_str()) {
        Some(Keyword::OptOut)
    } else if START_WORDS.contains(&word.as_str()) {
        Some(Keyword::OptIn)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn the_signature_matches_twilios_documented_example() {
        // Twilio's request-validation example: auth token 12345, this URL and these
        // parameters (docs "Validating requests", also used by the official SDK tests).
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(signature("12345", url, &p), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!verify("12346", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        let mut tampered = p.clone();
        tampered[2].1 = "1235".into();
        assert!(!verify("12345", url, &tampered, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    }

    #[test]
    fn stop_words_opt_out_and_start_words_opt_in() {
        assert_eq!(inbound_keyword(" stop "), Some(Keyword::OptOut));
        assert_eq!(inbound_keyword("Unsubscribe."), Some(Keyword::OptOut));
        assert_eq!(inbound_keyword("START"), Some(Keyword::OptIn));
        assert_eq!(inbound_keyword("please stop by at 5"), None);
    }

    #[test]
    fn intermediate_statuses_change_nothing() {
        assert_eq!(status_outcome("queued"), None);
        assert_eq!(status_outcome("delivered"), Some("delivered"));
        assert_eq!(status_outcome("undelivered"), Some("undelivered"));
        assert_eq!(status_outcome("read"), Some("opened"));
    }
}
