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

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ring::hmac;
use serde::Deserialize;

use super::config::NotifyConfigError;
use super::page::{NotifyState, form_pairs, internal, param, plain};
use super::provider::{Build, Channel, Provider, ProviderType, callback_path};
use super::ratelimit::RateLimit;
use super::token::constant_time_eq;
use super::{Outgoing, Reply, SendResult, now_ms};
use crate::store::{ContactChannel, NoticeLogged};

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
            .field("status_callback", &self.status_callback)
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
}

/// `[[notify.providers]]` entries of type `twilio`.
pub const TYPE: ProviderType = ProviderType {
    kind: "twilio",
    channels: &[Channel::Customer(ContactChannel::Sms), Channel::Staff],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# account_sid = "AC..."
# auth_token = "file:/etc/doorstep-hub/twilio.token"
# from = "+15005550006"              # or messaging_service_sid = "MG..."
# status_callback = true             # delivery statuses at /callbacks/{name}/status
# Inbound STOP/START: point the number's messaging webhook at /callbacks/{name}/inbound.
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    account_sid: String,
    auth_token: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
    #[serde(default = "yes")]
    status_callback: bool,
}

fn yes() -> bool {
    true
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    let sender = match (s.from, s.messaging_service_sid) {
        (Some(from), None) => Sender::From(from),
        (None, Some(sid)) => Sender::MessagingService(sid),
        _ => return Err(b.invalid("from", "give exactly one of from and messaging_service_sid")),
    };
    if !s.account_sid.starts_with("AC") {
        return Err(b.invalid("account_sid", "must start with AC"));
    }
    Ok(Arc::new(Twilio {
        base_url: b.base_url("https://api.twilio.com")?,
        auth_token: b.secret("auth_token", &s.auth_token)?,
        account_sid: s.account_sid,
        sender,
        status_callback: s.status_callback.then(|| b.callback_url(STATUS_SUFFIX)),
    }))
}

/// Where Twilio posts message status, under `/callbacks/{name}`.
pub const STATUS_SUFFIX: &str = "/status";
/// Where Twilio posts inbound messages, under `/callbacks/{name}`.
pub const INBOUND_SUFFIX: &str = "/inbound";

impl Provider for Twilio {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        let mut form: Vec<(&str, &str)> = vec![("To", &msg.recipient)];
        match &self.sender {
            Sender::From(from) => form.push(("From", from)),
            Sender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        form.push(("Body", &msg.body));
        if let Some(cb) = &self.status_callback {
            form.push(("StatusCallback", cb));
        }
        Ok(client.post(self.messages_url()).basic_auth(&self.account_sid, Some(&self.auth_token)).form(&form))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
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
                format!(
                    "twilio HTTP {} error {code}: {}",
                    reply.status.as_u16(),
                    message.clone().unwrap_or_default()
                )
            }
            _ => format!("twilio HTTP {}", reply.status.as_u16()),
        };
        super::classify_status(reply.status, reply.retry_after, detail)
    }

    fn callbacks(self: Arc<Self>, name: &str) -> Option<Router<NotifyState>> {
        // Both are signed form posts; they differ in what they do.
        let route = |inbound: bool| {
            let twilio = Arc::clone(&self);
            post(
                move |State(state): State<NotifyState>,
                      OriginalUri(uri): OriginalUri,
                      headers: HeaderMap,
                      body: Bytes| {
                    let twilio = Arc::clone(&twilio);
                    async move {
                        let params = form_pairs(&body);
                        if let Some(refused) = check(&twilio, &state, &uri, &headers, &params) {
                            return refused;
                        }
                        if inbound {
                            inbound_callback(&state, &params).await
                        } else {
                            status_callback(&state, &params).await
                        }
                    }
                },
            )
        };
        Some(
            Router::new()
                .route(&callback_path(name, STATUS_SUFFIX), route(false))
                .route(&callback_path(name, INBOUND_SUFFIX), route(true)),
        )
    }

}

// ---- callbacks ------------------------------------------------------------------------

/// Twilio's answer to an inbound message: TwiML, with the reply as a `<Message>` (Twilio
/// sends it from the number the customer wrote to), or empty for no reply.
fn twiml_reply(text: Option<&str>) -> Response {
    let message = text.map(|t| format!("<Message>{}</Message>", super::templates::html_escape(t))).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{message}</Response>"),
    )
        .into_response()
}

/// A customer's text that is not STOP or START: "where is my parcel?" (see
/// [`super::questions`]), answered at once in the TwiML and logged.
async fn question(state: &NotifyState, from: &str, text: &str) -> Response {
    match super::questions::answer_and_log(state, ContactChannel::Sms, from, text).await {
        Ok(answer) => twiml_reply(answer.text.as_deref()),
        Err(e) => internal(&e),
    }
}

/// Checks a callback's signature; `Some(refusal)` when it fails.
fn check(
    twilio: &Twilio,
    state: &NotifyState,
    uri: &Uri,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Option<Response> {
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let url = format!("{}{path}", state.settings.callback_base_url);
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if verify(&twilio.auth_token, &url, params, signature) {
        return None;
    }
    state.metrics.webhook("twilio", "rejected", "bad_signature");
    tracing::warn!(url, "twilio callback with a bad or missing X-Twilio-Signature");
    Some(plain(StatusCode::FORBIDDEN, "bad X-Twilio-Signature\n"))
}

/// A signed form post Twilio made (checked by the route).
async fn status_callback(state: &NotifyState, params: &[(String, String)]) -> Response {
    let (Some(sid), Some(status)) = (param(params, "MessageSid"), param(params, "MessageStatus")) else {
        return plain(StatusCode::BAD_REQUEST, "MessageSid and MessageStatus are required\n");
    };
    let Some(outcome) = status_outcome(status) else { return StatusCode::NO_CONTENT.into_response() };
    let sid = sid.to_owned();
    let detail = match param(params, "ErrorCode") {
        Some(code) => format!("twilio {status} (error {code})"),
        None => format!("twilio {status}"),
    };
    let now = now_ms();
    let result = state
        .db
        .call(move |store| {
            let Some(id) = store.by_provider_id(&sid)? else { return Ok(None) };
            Ok(Some((id, store.provider_event(id, outcome, Some(&sid), Some(&detail), now)?)))
        })
        .await;
    match result {
        Ok(Some((id, new))) => {
            if new {
                state.metrics.notification("sms", outcome);
                tracing::info!(outbox = id, outcome = outcome.as_str(), "twilio status");
            }
            state.metrics.webhook("twilio", "stored", "ok");
            StatusCode::NO_CONTENT.into_response()
        }
        // Not ours (another system on the account) or not yet recorded: nothing to do;
        // a 2xx stops Twilio retrying.
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(&e),
    }
}

/// A signed form post Twilio made (checked by the route).
async fn inbound_callback(state: &NotifyState, params: &[(String, String)]) -> Response {
    let twiml = || twiml_reply(None);
    let (Some(from), Some(text)) = (param(params, "From"), param(params, "Body")) else { return twiml() };
    let Some(keyword) = inbound_keyword(text) else { return question(state, from, text).await };
    let from = from.to_owned();
    let out = keyword == Keyword::OptOut;
    let now = now_ms();
    let logged = from.clone();
    match state
        .db
        .call(move |store| {
            Ok(store.set_opt_out(ContactChannel::Sms.as_str(), &from, out, "twilio_inbound", now)?)
        })
        .await
    {
        Ok(()) => {
            tracing::info!(recipient = %crate::mask::Masked(&logged), opted_out = out, "sms subscription changed by inbound keyword");
            twiml()
        }
        Err(e) => internal(&e),
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
pub fn status_outcome(status: &str) -> Option<NoticeLogged> {
    match status {
        "sent" => Some(NoticeLogged::Sent),
        "delivered" => Some(NoticeLogged::Delivered),
        "undelivered" => Some(NoticeLogged::Undelivered),
        "failed" | "canceled" => Some(NoticeLogged::Failed),
        "read" => Some(NoticeLogged::Opened),
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
        assert_eq!(status_outcome("delivered"), Some(NoticeLogged::Delivered));
        assert_eq!(status_outcome("undelivered"), Some(NoticeLogged::Undelivered));
        assert_eq!(status_outcome("read"), Some(NoticeLogged::Opened));
    }
}
