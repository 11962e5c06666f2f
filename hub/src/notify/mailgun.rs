//! Mailgun: Doorstep's e-mail to customers (and operations alerts to staff) out, Mailgun's
//! signed event webhook in.
//!
//! - Send: `POST {base}/v3/{domain}/messages`, HTTP Basic `api:{api_key}`, a form with
//!   `from`, `to`, `subject` and either `text` + `html` (the hub's own templates) or
//!   `template` + `t:variables` (a template stored in Mailgun, configured per milestone,
//!   filled from a JSON object). `o:tag` names the milestone, and the custom variable
//!   `v:doorstep_outbox_id` (`v:doorstep_alert_id` for an operations alert) comes back in
//!   every event about the message. The base is `https://api.mailgun.net`, or
//!   `https://api.eu.mailgun.net` (`base_url`) for a domain in Mailgun's EU region.
//!   Mailgun answers 200 with `{"id": "<...@domain>", "message": "Queued. Thank you."}`;
//!   the row keeps the id without its angle brackets, the form the webhook's
//!   `message.headers.message-id` has. 429 and 5xx are retried (`Retry-After` honoured),
//!   any other refusal fails the row.
//! - Idempotency: Mailgun documents no idempotency key for sending, so a request that
//!   timed out after it was sent is marked `unknown` and never re-sent automatically (a
//!   customer e-mailed twice is worse than an operator looking at one row); the event
//!   webhook completes the row if the e-mail did go out.
//! - Events (`/callbacks/{name}/events`, only with a `webhook_signing_key`): one JSON
//!   object per POST, `{"signature": {"timestamp", "token", "signature"}, "event-data":
//!   {...}}`, where `signature` is the hex HMAC-SHA256 of `timestamp` followed by `token`,
//!   keyed with the domain's webhook signing key. That signature does not cover the event,
//!   so the hub also refuses a timestamp more than [`MAX_SIGNATURE_AGE_S`] from its clock
//!   and remembers each token for as long as its timestamp could pass: the same token
//!   again with the same event is a redelivery (applied idempotently), with a different
//!   event a forgery built on a captured signature (refused).
//!
//! | Mailgun event | outcome log | row status |
//! |---|---|---|
//! | `delivered` | `delivered` | `delivered` |
//! | `failed`, `severity: permanent` | `undelivered`, with Mailgun's reason | `undelivered` |
//! | `failed`, `severity: temporary` | `temporary_failure` (Mailgun keeps trying) | unchanged |
//! | `opened` | `opened` | `delivered` (an open implies delivery) |
//! | `clicked` | `clicked` | unchanged |
//! | `complained`, `unsubscribed` | `opted_out`, and the address is opted out of e-mail | unchanged |
//! | anything else (`accepted`, ...) | ignored | unchanged |
//!
//! A temporary failure is logged under its own name, not `deferred` (the hub's word for a
//! row held back by quiet hours), so the metrics keep the two apart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use ring::{digest, hmac};
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::NotifyConfigError;
use super::page::{NotifyState, internal, plain};
use super::provider::{Build, Channel, Provider, ProviderType, callback_path};
use super::ratelimit::RateLimit;
use super::token::constant_time_eq;
use super::{Outgoing, Reply, SendResult, now_ms};
use crate::model::Milestone;
use crate::store::{ContactChannel, NoticeLogged};

/// The custom variable that ties a Mailgun event back to its outbox row.
pub const OUTBOX_VAR: &str = "doorstep_outbox_id";
/// The custom variable an operations alert's e-mail carries instead.
pub const ALERT_VAR: &str = "doorstep_alert_id";
/// Where Mailgun posts events, under `/callbacks/{name}`.
pub const EVENTS_SUFFIX: &str = "/events";
/// How far a webhook's signed timestamp may be from the hub's clock, either way, seconds.
pub const MAX_SIGNATURE_AGE_S: i64 = 300;
/// Mailgun's limit on the send options (`o:`, `h:`, `v:`, `t:` parameters) together, bytes.
pub const MAX_OPTIONS_BYTES: usize = 16 * 1024;
/// The `o:tag` of an operations alert's e-mail.
pub const ALERT_TAG: &str = "ops_alert";
/// Most webhook tokens remembered at once; past it the oldest are forgotten first.
const MAX_REMEMBERED_TOKENS: usize = 100_000;

/// The key Mailgun signs its webhooks with (the domain's "HTTP webhook signing key").
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// The key as Mailgun shows it (its text is the HMAC key).
    pub fn new(secret: &str) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// Whether `signature_hex` is the HMAC-SHA256 of `timestamp ‖ token` under this key,
    /// compared in constant time.
    pub fn verify(&self, timestamp: &str, token: &str, signature_hex: &str) -> bool {
        let Ok(given) = hex::decode(signature_hex.trim()) else { return false };
        let mut signed = Vec::with_capacity(timestamp.len() + token.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(token.as_bytes());
        let expected = hmac::sign(&self.0, &signed);
        constant_time_eq(expected.as_ref(), &given)
    }
}

/// Whether a signed timestamp (Unix seconds, as text) is within [`MAX_SIGNATURE_AGE_S`]
/// of `now_s`.
pub fn fresh(timestamp: &str, now_s: i64) -> bool {
    timestamp.trim().parse::<i64>().is_ok_and(|t| now_s.abs_diff(t) <= MAX_SIGNATURE_AGE_S.unsigned_abs())
}

/// What the token log says about a verified webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// A token not seen before.
    First,
    /// The same token with the same event: Mailgun delivering it again.
    Again,
    /// The same token with a different event: a captured signature on a forged event.
    Conflict,
}

/// The webhook tokens seen within the freshness window, each with a digest of the event
/// it came with.
#[derive(Debug, Default)]
pub struct TokenLog {
    /// (forget at, Unix seconds; token), oldest first.
    order: VecDeque<(i64, String)>,
    events: HashMap<String, [u8; 32]>,
}

impl TokenLog {
    /// Records `token` with its event's digest at `now_s` and says how it was used.
    pub fn admit(&mut self, token: &str, event: [u8; 32], now_s: i64) -> TokenUse {
        while self.order.front().is_some_and(|(until, _)| *until <= now_s) {
            if let Some((_, old)) = self.order.pop_front() {
                self.events.remove(&old);
            }
        }
        if let Some(seen) = self.events.get(token) {
            return if constant_time_eq(seen, &event) { TokenUse::Again } else { TokenUse::Conflict };
        }
        while self.order.len() >= MAX_REMEMBERED_TOKENS {
            if let Some((_, old)) = self.order.pop_front() {
                self.events.remove(&old);
            }
        }
        // A timestamp up to the window ahead of this clock passes until a window later.
        self.order.push_back((now_s.saturating_add(2 * MAX_SIGNATURE_AGE_S), token.to_owned()));
        self.events.insert(token.to_owned(), event);
        TokenUse::First
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A configured Mailgun sending domain.
pub struct Mailgun {
    /// API base URL without a trailing slash (`https://api.mailgun.net`).
    pub base_url: String,
    /// The sending domain (`mg.example.com`), part of the API path.
    pub domain: String,
    /// The private API key (the Basic-auth password; the user is `api`).
    pub api_key: String,
    /// The sender (`parcels@mg.example.com` or `Doorstep <parcels@mg.example.com>`).
    pub from: String,
    /// A stored Mailgun template per milestone; milestones without one are sent as
    /// subject, text and HTML from the hub's own templates.
    pub templates: BTreeMap<Milestone, String>,
    /// The webhook signing key; without it there is no event webhook.
    pub signing_key: Option<SigningKey>,
    tokens: Mutex<TokenLog>,
}

impl std::fmt::Debug for Mailgun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailgun")
            .field("base_url", &self.base_url)
            .field("domain", &self.domain)
            .field("from", &self.from)
            .field("templates", &self.templates)
            .field("signing_key", &self.signing_key.is_some())
            .finish_non_exhaustive()
    }
}

/// The message id as the webhook names it: Mailgun's `id` without its angle brackets.
pub fn message_id(id: &str) -> &str {
    let id = id.trim();
    id.strip_prefix('<').and_then(|i| i.strip_suffix('>')).unwrap_or(id)
}

impl Mailgun {
    /// A sending domain with an empty webhook-token log.
    pub fn new(
        base_url: String,
        domain: String,
        api_key: String,
        from: String,
        templates: BTreeMap<Milestone, String>,
        signing_key: Option<SigningKey>,
    ) -> Self {
        Self { base_url, domain, api_key, from, templates, signing_key, tokens: Mutex::default() }
    }

    /// The Messages endpoint of the domain.
    pub fn messages_url(&self) -> String {
        format!("{}/v3/{}/messages", self.base_url, self.domain)
    }

    /// The form Mailgun gets for a message, or why there is none: no address to send to,
    /// or send options over Mailgun's 16 KB.
    pub fn form(&self, msg: &Outgoing) -> Result<Vec<(String, String)>, SendResult> {
        let to = msg.recipient.trim();
        if to.is_empty() {
            let detail = match &msg.alert {
                Some(_) => "no operations address to e-mail this alert to",
                None => "no e-mail address on this message",
            };
            return Err(SendResult::Rejected { detail: detail.into() });
        }
        let mut form = vec![
            ("from".to_owned(), self.from.clone()),
            ("to".to_owned(), to.to_owned()),
            ("subject".to_owned(), msg.subject.clone()),
        ];
        // Stored templates are for customers' milestones; an alert is always plain text.
        let template = if msg.alert.is_none() { self.templates.get(&msg.milestone) } else { None };
        match template {
            Some(name) => {
                let variables = json!({
                    "tracking_number": msg.tracking_number,
                    "milestone": crate::store::milestone_name(msg.milestone),
                    "detail": msg.detail,
                    "tracking_url": msg.link,
                    "locale": msg.locale,
                    "subject": msg.subject,
                    "text": msg.body,
                });
                form.push(("template".to_owned(), name.clone()));
                form.push(("t:variables".to_owned(), variables.to_string()));
            }
            None => {
                form.push(("text".to_owned(), msg.body.clone()));
                form.push(("html".to_owned(), super::templates::html_body(&msg.body, &msg.link)));
            }
        }
        match &msg.alert {
            Some(alert) => {
                form.push(("o:tag".to_owned(), ALERT_TAG.to_owned()));
                form.push((format!("v:{ALERT_VAR}"), alert.id.to_string()));
            }
            None => {
                form.push(("o:tag".to_owned(), crate::store::milestone_name(msg.milestone).to_owned()));
                form.push((format!("v:{OUTBOX_VAR}"), msg.outbox_id.to_string()));
            }
        }
        let options: usize = form
            .iter()
            .filter(|(k, _)| ["o:", "h:", "v:", "t:"].iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if options > MAX_OPTIONS_BYTES {
            return Err(SendResult::Rejected {
                detail: format!(
                    "mailgun send options are {options} bytes, over Mailgun's {MAX_OPTIONS_BYTES} \
                     (shorten the message or the shipment's detail)"
                ),
            });
        }
        Ok(form)
    }
}

#[derive(Deserialize)]
struct Queued {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// `[[notify.providers]]` entries of type `mailgun`.
pub const TYPE: ProviderType = ProviderType {
    kind: "mailgun",
    channels: &[Channel::Customer(ContactChannel::Email), Channel::Staff],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# domain = "mg.example.com"             # the sending domain, as Mailgun lists it
# api_key = "file:/etc/doorstep-hub/mailgun.key"
# from = "Doorstep <parcels@mg.example.com>"
# A domain in Mailgun's EU region takes base_url "https://api.eu.mailgun.net".
# Signed events (delivered, failed, opened, clicked, complained, unsubscribed) arrive at
# /callbacks/{name}/events; point the domain's webhooks there and give its signing key.
# webhook_signing_key = "file:/etc/doorstep-hub/mailgun-webhook.key"
# templates = { delivered = "doorstep-delivered" }   # stored templates, filled from t:variables
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    domain: String,
    api_key: String,
    from: String,
    #[serde(default)]
    templates: BTreeMap<Milestone, String>,
    #[serde(default)]
    webhook_signing_key: Option<String>,
}

/// Whether `domain` is a DNS name (it becomes part of the API path).
fn valid_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    let domain = s.domain.trim().to_ascii_lowercase();
    if !valid_domain(&domain) {
        return Err(
            b.invalid("domain", format!("{:?} is not a domain name (e.g. \"mg.example.com\")", s.domain))
        );
    }
    let from = s.from.trim().to_owned();
    if !from.contains('@') || from.chars().any(char::is_control) {
        return Err(b.invalid("from", "must be an e-mail address, optionally \"Name <address>\""));
    }
    for (milestone, name) in &s.templates {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            let milestone = crate::store::milestone_name(*milestone);
            return Err(b.invalid("templates", format!("the template name for {milestone} is empty")));
        }
    }
    let signing_key = match &s.webhook_signing_key {
        None => None,
        Some(k) => Some(SigningKey::new(&b.secret("webhook_signing_key", k)?)),
    };
    Ok(Arc::new(Mailgun::new(
        b.base_url("https://api.mailgun.net")?,
        domain,
        b.secret("api_key", &s.api_key)?,
        from,
        s.templates,
        signing_key,
    )))
}

impl Provider for Mailgun {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        let form = self.form(msg)?;
        Ok(client.post(self.messages_url()).basic_auth("api", Some(&self.api_key)).form(&form))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        let answer = serde_json::from_slice::<Queued>(&reply.body).ok();
        if reply.status.is_success() {
            let id =
                answer.as_ref().and_then(|a| a.id.as_deref()).map(message_id).filter(|id| !id.is_empty());
            let said = answer.as_ref().and_then(|a| a.message.as_deref()).unwrap_or("no message");
            return SendResult::Accepted {
                provider_id: id.map(str::to_owned),
                detail: format!(
                    "mailgun HTTP {}: {}",
                    reply.status.as_u16(),
                    said.chars().take(200).collect::<String>()
                ),
            };
        }
        // Mailgun explains a refusal in JSON `message` (401 is a bare "Forbidden").
        let said = match answer.and_then(|a| a.message) {
            Some(message) => message,
            None => String::from_utf8_lossy(&reply.body).trim().to_owned(),
        };
        let detail =
            format!("mailgun HTTP {}: {}", reply.status.as_u16(), said.chars().take(300).collect::<String>());
        super::classify_status(reply.status, reply.retry_after, detail)
    }

    fn callbacks(self: Arc<Self>, name: &str) -> Option<Router<NotifyState>> {
        self.signing_key.as_ref()?;
        let name: Arc<str> = name.into();
        let path = callback_path(&name, EVENTS_SUFFIX);
        Some(Router::new().route(
            &path,
            post(move |State(state): State<NotifyState>, body: Bytes| {
                let (mailgun, name) = (Arc::clone(&self), Arc::clone(&name));
                async move { events(&mailgun, &name, &state, &body).await }
            }),
        ))
    }
}

// ---- event webhook --------------------------------------------------------------------

/// The webhook's envelope: the signature block and the event.
#[derive(Deserialize)]
struct Webhook {
    signature: SignatureBlock,
    #[serde(rename = "event-data", default)]
    event_data: Value,
}

#[derive(Deserialize)]
struct SignatureBlock {
    /// Unix seconds; a string in Mailgun's examples, an integer in its table.
    timestamp: Value,
    token: String,
    signature: String,
}

impl SignatureBlock {
    fn timestamp(&self) -> Option<String> {
        match &self.timestamp {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }
}

/// The fields of one Mailgun event the hub acts on (the rest are ignored; any of these
/// may be missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// `delivered`, `failed`, `opened`, `clicked`, `complained`, `unsubscribed`, ...
    pub event: String,
    /// For `failed`: `permanent` or `temporary`.
    pub severity: Option<String>,
    /// For `failed`: Mailgun's reason (`bounce`, `suppress-bounce`, `generic`, ...).
    pub reason: Option<String>,
    /// The address the event is about.
    pub recipient: Option<String>,
    /// `message.headers.message-id` (no angle brackets).
    pub message_id: Option<String>,
    /// `user-variables.doorstep_outbox_id`.
    pub outbox_id: Option<i64>,
    /// `user-variables.doorstep_alert_id`.
    pub alert_id: Option<i64>,
    /// The receiving server's words, from `delivery-status` (`code message`).
    pub status: Option<String>,
}

/// A non-empty string field, trimmed.
fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A custom variable as Mailgun returns it: the text sent, or that text read as JSON.
fn id_var(vars: Option<&Value>, name: &str) -> Option<i64> {
    match vars?.get(name)? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

impl Event {
    /// Reads the fields from `event-data` (never fails: what is missing is `None`).
    pub fn from_value(data: &Value) -> Self {
        let vars = data.get("user-variables");
        let status = data.get("delivery-status").and_then(|d| {
            let code = d.get("code").and_then(Value::as_i64);
            let words = text(d.get("description"))
                .or_else(|| text(d.get("message")))
                .map(|w| w.chars().take(300).collect::<String>());
            match (code, words) {
                (Some(c), Some(w)) => Some(format!("{c} {w}")),
                (Some(c), None) => Some(c.to_string()),
                (None, w) => w,
            }
        });
        Self {
            event: text(data.get("event")).unwrap_or_default().to_owned(),
            severity: text(data.get("severity")).map(str::to_owned),
            reason: text(data.get("reason")).map(str::to_owned),
            recipient: text(data.get("recipient")).map(str::to_owned),
            message_id: text(data.pointer("/message/headers/message-id")).map(|m| message_id(m).to_owned()),
            outbox_id: id_var(vars, OUTBOX_VAR),
            alert_id: id_var(vars, ALERT_VAR),
            status,
        }
    }

    /// What the event means for the outcome log, and whether it opts the address out.
    pub fn outcome(&self) -> Option<(NoticeLogged, bool)> {
        event_outcome(&self.event, self.severity.as_deref())
    }

    /// A digest of everything the hub acts on, to tell a redelivery of this event from
    /// another event carrying the same signature.
    pub fn digest(&self) -> [u8; 32] {
        let fields = json!([
            self.event,
            self.severity,
            self.recipient,
            self.message_id,
            self.outbox_id,
            self.alert_id
        ]);
        let d = digest::digest(&digest::SHA256, fields.to_string().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The outcome log's words for it.
    pub fn detail(&self) -> String {
        let mut detail = format!("mailgun {}", self.event);
        let extra: Vec<&str> =
            [self.severity.as_deref(), self.reason.as_deref()].into_iter().flatten().collect();
        if !extra.is_empty() {
            detail.push_str(&format!(" ({})", extra.join(", ")));
        }
        if let Some(status) = &self.status {
            detail.push_str(": ");
            detail.push_str(status);
        }
        detail
    }
}

/// What an event means for the outcome log (see the module's table), and whether it opts
/// the address out of e-mail.
pub fn event_outcome(event: &str, severity: Option<&str>) -> Option<(NoticeLogged, bool)> {
    match event {
        "delivered" => Some((NoticeLogged::Delivered, false)),
        "failed" if severity == Some("permanent") => Some((NoticeLogged::Undelivered, false)),
        // Temporary (Mailgun retries the delivery), or a severity Mailgun does not document:
        // logged, and the row waits for the final word.
        "failed" => Some((NoticeLogged::TemporaryFailure, false)),
        "opened" => Some((NoticeLogged::Opened, false)),
        "clicked" => Some((NoticeLogged::Clicked, false)),
        "complained" | "unsubscribed" => Some((NoticeLogged::OptedOut, true)),
        _ => None,
    }
}

// Answers. Mailgun takes a 200 as done and a 406 as "rejected, do not retry"; any other
// status is retried for about 8 hours (5 min, 10 min, 15 min, 1 h, 2 h, 4 h), except
// `delivered` events, which are never retried. So:
// - every verified event gets 200, including one the hub ignores (not its row, an event
//   type it does not use): a retry would change nothing;
// - a failure of the hub's own (the database) gets 500, so Mailgun tries again later;
// - a bad signature or a stale timestamp gets 403, not 406: with a mistyped signing key,
//   or a skewed clock, Mailgun keeps retrying for hours while an operator fixes it,
//   instead of the events being dropped at once (a forger's retries do not matter);
// - a body that is not Mailgun's JSON gets 400 (nothing to verify, nothing to act on).
// The hub never answers 406: it would drop an event the hub could still take later.
async fn events(mailgun: &Mailgun, name: &str, state: &NotifyState, body: &[u8]) -> Response {
    let Some(key) = &mailgun.signing_key else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let webhook: Webhook = match serde_json::from_slice(body) {
        Ok(w) => w,
        Err(e) => {
            state.metrics.webhook(name, "rejected", "bad_json");
            tracing::warn!(provider = name, error = %e, "mailgun webhook is not Mailgun's JSON");
            return plain(
                StatusCode::BAD_REQUEST,
                "expected {\"signature\": {...}, \"event-data\": {...}}\n",
            );
        }
    };
    let sig = &webhook.signature;
    let Some(timestamp) = sig.timestamp() else {
        state.metrics.webhook(name, "rejected", "bad_json");
        return plain(StatusCode::BAD_REQUEST, "signature.timestamp is not a number\n");
    };
    if !key.verify(&timestamp, &sig.token, &sig.signature) {
        state.metrics.webhook(name, "rejected", "bad_signature");
        tracing::warn!(provider = name, "mailgun webhook with a bad signature (check webhook_signing_key)");
        return plain(StatusCode::FORBIDDEN, "bad webhook signature\n");
    }
    let now = now_ms();
    let now_s = now.div_euclid(1000);
    if !fresh(&timestamp, now_s) {
        state.metrics.webhook(name, "rejected", "stale");
        tracing::warn!(provider = name, timestamp = %timestamp, now_s, "mailgun webhook timestamp too far from this clock (a replay, or a skewed clock)");
        return plain(StatusCode::FORBIDDEN, "webhook timestamp too old or too far ahead\n");
    }
    let event = Event::from_value(&webhook.event_data);
    let used =
        mailgun.tokens.lock().unwrap_or_else(|e| e.into_inner()).admit(&sig.token, event.digest(), now_s);
    if used == TokenUse::Conflict {
        state.metrics.webhook(name, "rejected", "replayed");
        tracing::warn!(
            provider = name,
            "mailgun webhook token reused with a different event: refused as a replay"
        );
        return plain(StatusCode::FORBIDDEN, "webhook token already used for another event\n");
    }
    let Some((outcome, opt_out)) = event.outcome() else {
        state.metrics.webhook(name, "ignored", "event_type");
        return plain(StatusCode::OK, "ok\n");
    };
    if event.alert_id.is_some() {
        // An operations alert's e-mail: no customer row, and staff are never opted out.
        state.metrics.webhook(name, "ignored", "alert");
        return plain(StatusCode::OK, "ok\n");
    }
    let detail = event.detail();
    let result = state
        .db
        .call(move |store| {
            let email = ContactChannel::Email.as_str();
            let id = match event.outbox_id {
                Some(id) => Some(id),
                None => match &event.message_id {
                    Some(mid) => store.by_provider_id(mid)?,
                    None => None,
                },
            };
            // Only an e-mail row of this database, to the address the event names (another
            // hub sending through the same domain has rows with the same ids).
            let row = match id {
                Some(id) => store.row_target(id)?.and_then(|(channel, to)| {
                    let same = event.recipient.as_deref().is_none_or(|r| r.eq_ignore_ascii_case(&to));
                    (channel == email && same).then_some((id, to))
                }),
                None => None,
            };
            if opt_out {
                // The row's address as the dispatcher checks it, and Mailgun's spelling.
                let mut addresses: Vec<&str> = row.iter().map(|(_, to)| to.as_str()).collect();
                if let Some(r) = event.recipient.as_deref()
                    && !addresses.contains(&r)
                {
                    addresses.push(r);
                }
                for address in addresses {
                    store.set_opt_out(email, address, true, "mailgun_event", now)?;
                }
            }
            let Some((id, _)) = row else { return Ok(None) };
            let new =
                store.provider_event(id, outcome, event.message_id.as_deref(), Some(&detail), now)?;
            Ok(new.then_some(outcome))
        })
        .await;
    match result {
        Ok(recorded) => {
            if let Some(outcome) = recorded {
                state.metrics.notification("email", outcome);
            }
            state.metrics.webhook(name, "stored", "ok");
            plain(StatusCode::OK, "ok\n")
        }
        Err(e) => internal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::AlertRef;
    use std::time::Duration;

    const KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";

    fn sign(key: &str, timestamp: &str, token: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        hex::encode(hmac::sign(&key, format!("{timestamp}{token}").as_bytes()))
    }

    fn mailgun(templates: &[(Milestone, &str)]) -> Mailgun {
        Mailgun::new(
            "https://api.mailgun.net".into(),
            "mg.example.com".into(),
            "key-secret".into(),
            "Doorstep <parcels@mg.example.com>".into(),
            templates.iter().map(|(m, n)| (*m, (*n).to_owned())).collect(),
            Some(SigningKey::new(KEY)),
        )
    }

    fn message() -> Outgoing {
        Outgoing {
            outbox_id: 42,
            shipment_id: 7,
            channel: ContactChannel::Email,
            recipient: "ada@example.com".into(),
            milestone: Milestone::Delivered,
            locale: "en".into(),
            tracking_number: "1Z999AA10123456784".into(),
            detail: Some("Left with a neighbour.".into()),
            subject: "Your parcel was delivered".into(),
            body: "Doorstep: your parcel was delivered. Proof of delivery: https://t.example/t/abc&x".into(),
            link: "https://t.example/t/abc&x".into(),
            alert: None,
            merged: Vec::new(),
        }
    }

    fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
        form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: reqwest::header::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    #[test]
    fn a_known_signature_verifies_and_a_flipped_byte_does_not() {
        let (ts, token) = ("1751356800", "e0b5477167110d68991efc6b9f89f0a11066af27834600e123");
        // The vector, computed independently of `SigningKey` with ring's HMAC directly.
        let key = hmac::Key::new(hmac::HMAC_SHA256, KEY.as_bytes());
        let tag = hmac::sign(&key, b"1751356800e0b5477167110d68991efc6b9f89f0a11066af27834600e123");
        let signature = hex::encode(tag.as_ref());
        assert_eq!(signature, sign(KEY, ts, token));
        assert_eq!(signature.len(), 64);
        let k = SigningKey::new(KEY);
        assert!(k.verify(ts, token, &signature));
        assert!(k.verify(ts, token, &signature.to_ascii_uppercase()), "hex is case-insensitive");
        let mut flipped = hex::decode(&signature).expect("hex");
        flipped[5] ^= 0x01;
        assert!(!k.verify(ts, token, &hex::encode(&flipped)));
        assert!(!k.verify("1751356801", token, &signature), "another timestamp");
        assert!(!k.verify(ts, &token[1..], &signature), "another token");
        assert!(!k.verify(ts, token, &signature[..62]), "a short signature");
        assert!(!k.verify(ts, token, "not hex at all"));
        assert!(!k.verify(ts, token, ""));
        assert!(!SigningKey::new("another key").verify(ts, token, &signature));
    }

    #[test]
    fn timestamps_pass_only_near_the_clock() {
        let now = 1_751_356_800;
        assert!(fresh("1751356800", now));
        assert!(fresh(&(now - MAX_SIGNATURE_AGE_S).to_string(), now));
        assert!(!fresh(&(now - MAX_SIGNATURE_AGE_S - 1).to_string(), now), "stale");
        assert!(!fresh(&(now + MAX_SIGNATURE_AGE_S + 1).to_string(), now), "from the future");
        assert!(!fresh("yesterday", now));
        assert!(!fresh("", now));
        assert!(!fresh("-9223372036854775808", now), "no overflow");
    }

    #[test]
    fn a_token_again_with_the_same_event_is_a_redelivery_and_with_another_a_forgery() {
        let mut log = TokenLog::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(log.admit("t1", a, 1000), TokenUse::First);
        assert_eq!(log.admit("t1", a, 1001), TokenUse::Again);
        assert_eq!(log.admit("t1", b, 1002), TokenUse::Conflict);
        assert_eq!(log.admit("t2", b, 1002), TokenUse::First);
        assert_eq!(log.len(), 2);
        // Forgotten once no timestamp it came with could pass any more.
        assert_eq!(log.admit("t3", a, 1000 + 2 * MAX_SIGNATURE_AGE_S), TokenUse::First);
        assert_eq!(log.len(), 2, "t1 forgotten; t2 and t3 kept");
        assert_eq!(log.admit("t1", b, 1000 + 2 * MAX_SIGNATURE_AGE_S), TokenUse::First);
    }

    #[test]
    fn the_token_log_is_bounded() {
        let mut log = TokenLog::default();
        for i in 0..MAX_REMEMBERED_TOKENS + 10 {
            log.admit(&format!("t{i}"), [0; 32], 5);
        }
        assert_eq!(log.len(), MAX_REMEMBERED_TOKENS);
        assert!(!log.is_empty());
        assert_eq!(log.admit(&format!("t{}", MAX_REMEMBERED_TOKENS + 9), [0; 32], 5), TokenUse::Again);
    }

    #[test]
    fn a_message_from_the_hubs_template_is_text_html_a_tag_and_the_rows_variable() {
        let form = mailgun(&[]).form(&message()).expect("form");
        assert_eq!(field(&form, "from"), Some("Doorstep <parcels@mg.example.com>"));
        assert_eq!(field(&form, "to"), Some("ada@example.com"));
        assert_eq!(field(&form, "subject"), Some("Your parcel was delivered"));
        assert!(field(&form, "text").is_some_and(|t| t.ends_with("https://t.example/t/abc&x")));
        assert_eq!(
            field(&form, "html"),
            Some(
                "<p>Doorstep: your parcel was delivered. Proof of delivery: \
                 <a href=\"https://t.example/t/abc&amp;x\">https://t.example/t/abc&amp;x</a></p>"
            )
        );
        assert_eq!(field(&form, "o:tag"), Some("delivered"));
        assert_eq!(field(&form, "v:doorstep_outbox_id"), Some("42"));
        assert_eq!(field(&form, "template"), None);
        assert_eq!(field(&form, "t:variables"), None);
    }

    #[test]
    fn a_milestone_with_a_stored_template_sends_its_name_and_the_variables_as_json() {
        let form = mailgun(&[(Milestone::Delivered, "doorstep-delivered")]).form(&message()).expect("form");
        assert_eq!(field(&form, "template"), Some("doorstep-delivered"));
        let vars: Value =
            serde_json::from_str(field(&form, "t:variables").expect("t:variables")).expect("json");
        assert_eq!(vars["tracking_number"], "1Z999AA10123456784");
        assert_eq!(vars["milestone"], "delivered");
        assert_eq!(vars["detail"], "Left with a neighbour.");
        assert_eq!(vars["tracking_url"], "https://t.example/t/abc&x");
        assert_eq!(field(&form, "text"), None);
        assert_eq!(field(&form, "html"), None);
        // Another milestone has no stored template: the hub's own text.
        let mut nearby = message();
        nearby.milestone = Milestone::Nearby;
        let form = mailgun(&[(Milestone::Delivered, "doorstep-delivered")]).form(&nearby).expect("form");
        assert_eq!(field(&form, "template"), None);
        assert_eq!(field(&form, "o:tag"), Some("nearby"));
    }

    #[test]
    fn an_alert_carries_the_alert_variable_and_needs_an_address() {
        let mut alert = message();
        alert.outbox_id = 0;
        alert.milestone = Milestone::Exception;
        alert.recipient = "ops@example.com".into();
        alert.link = String::new();
        alert.alert = Some(AlertRef { id: 9, code: "delivered_without_scan".into(), step: 1 });
        let form = mailgun(&[(Milestone::Exception, "customer-exception")]).form(&alert).expect("form");
        assert_eq!(field(&form, "to"), Some("ops@example.com"));
        assert_eq!(field(&form, "v:doorstep_alert_id"), Some("9"));
        assert_eq!(field(&form, "v:doorstep_outbox_id"), None);
        assert_eq!(field(&form, "o:tag"), Some(ALERT_TAG));
        assert_eq!(field(&form, "template"), None, "never a customer's template");
        alert.recipient = String::new();
        assert!(matches!(mailgun(&[]).form(&alert), Err(SendResult::Rejected { .. })));
    }

    #[test]
    fn send_options_over_16_kb_are_refused_before_sending() {
        let mut long = message();
        long.body = "x".repeat(MAX_OPTIONS_BYTES);
        assert!(mailgun(&[]).form(&long).is_ok(), "text is not a send option");
        match mailgun(&[(Milestone::Delivered, "t")]).form(&long) {
            Err(SendResult::Rejected { detail }) => assert!(detail.contains("16384"), "{detail}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn mailguns_answers_are_read_as_documented() {
        let m = mailgun(&[]);
        let msg = message();
        let queued = r#"{"id":"<20250701080000.1.ABCDEF@mg.example.com>","message":"Queued. Thank you."}"#;
        match m.read(&msg, &reply(200, queued)) {
            SendResult::Accepted { provider_id, detail } => {
                assert_eq!(provider_id.as_deref(), Some("20250701080000.1.ABCDEF@mg.example.com"));
                assert!(detail.contains("Queued"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            m.read(&msg, &reply(200, "not json")),
            SendResult::Accepted { provider_id: None, .. }
        ));
        let mut throttled = reply(429, r#"{"message":"Too many requests"}"#);
        throttled.retry_after = Some(Duration::from_secs(30));
        assert_eq!(
            m.read(&msg, &throttled),
            SendResult::Retry {
                detail: "mailgun HTTP 429: Too many requests".into(),
                retry_after: Some(Duration::from_secs(30))
            }
        );
        assert!(matches!(m.read(&msg, &reply(503, "")), SendResult::Retry { .. }));
        assert_eq!(
            m.read(
                &msg,
                &reply(
                    400,
                    r#"{"message":"'to' parameter is not a valid address. please check documentation"}"#
                )
            ),
            SendResult::Rejected {
                detail: "mailgun HTTP 400: 'to' parameter is not a valid address. please check documentation"
                    .into()
            }
        );
        assert_eq!(
            m.read(&msg, &reply(401, "Forbidden")),
            SendResult::Rejected { detail: "mailgun HTTP 401: Forbidden".into() }
        );
        assert_eq!(message_id(" <a@b> "), "a@b");
        assert_eq!(message_id("a@b"), "a@b");
    }

    #[test]
    fn events_name_their_row_by_variable_or_message_id() {
        let data = json!({
            "event": "failed",
            "severity": "permanent",
            "reason": "bounce",
            "recipient": "ada@example.com",
            "message": { "headers": { "message-id": "20250701080000.1.ABCDEF@mg.example.com" } },
            "user-variables": { "doorstep_outbox_id": "42" },
            "delivery-status": { "code": 550, "message": "5.1.1 mailbox unavailable", "description": "" },
        });
        let e = Event::from_value(&data);
        assert_eq!(e.outbox_id, Some(42));
        assert_eq!(e.message_id.as_deref(), Some("20250701080000.1.ABCDEF@mg.example.com"));
        assert_eq!(e.outcome(), Some((NoticeLogged::Undelivered, false)));
        assert_eq!(e.detail(), "mailgun failed (permanent, bounce): 550 5.1.1 mailbox unavailable");
        // A variable Mailgun read as JSON, and an event with nothing in it.
        let e =
            Event::from_value(&json!({ "event": "opened", "user-variables": { "doorstep_outbox_id": 42 } }));
        assert_eq!((e.outbox_id, e.outcome()), (Some(42), Some((NoticeLogged::Opened, false))));
        let e = Event::from_value(&json!("not an object"));
        assert_eq!((e.outbox_id, e.outcome()), (None, None));
        // The digest follows what the hub acts on.
        let a = Event::from_value(&json!({ "event": "delivered", "recipient": "a@example.com" }));
        let b = Event::from_value(&json!({ "event": "complained", "recipient": "a@example.com" }));
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.clone().digest());
    }

    #[test]
    fn events_map_to_outcomes() {
        assert_eq!(event_outcome("delivered", None), Some((NoticeLogged::Delivered, false)));
        assert_eq!(event_outcome("failed", Some("temporary")), Some((NoticeLogged::TemporaryFailure, false)));
        assert_eq!(event_outcome("clicked", None), Some((NoticeLogged::Clicked, false)));
        assert_eq!(event_outcome("complained", None), Some((NoticeLogged::OptedOut, true)));
        assert_eq!(event_outcome("unsubscribed", None), Some((NoticeLogged::OptedOut, true)));
        assert_eq!(event_outcome("accepted", None), None);
    }

    fn build_entry(entry: &str) -> Result<crate::notify::registry::Providers, NotifyConfigError> {
        let table: toml::Table = toml::from_str(&format!("[[providers]]\n{entry}")).expect("toml");
        let entries: Vec<toml::Table> = table["providers"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_table().expect("table").clone())
            .collect();
        crate::notify::registry::build(&entries, "https://t.example", b"0123456789abcdef0123456789abcdef")
    }

    fn entry(domain: &str, api_key: &str, from: &str, extra: &str) -> String {
        format!(
            "type = \"mailgun\"\ndomain = \"{domain}\"\napi_key = \"{api_key}\"\nfrom = \"{from}\"\n{extra}"
        )
    }

    fn build_one(extra: &str) -> Result<crate::notify::registry::Providers, NotifyConfigError> {
        build_entry(&entry("mg.example.com", "key-1", "parcels@mg.example.com", extra))
    }

    #[test]
    fn the_config_takes_its_keys_and_refuses_typos_and_bad_values() {
        let p = build_one("").expect("minimal");
        assert_eq!(p.all()[0].channel, Channel::Customer(ContactChannel::Email));
        assert!(!p.callbacks().has_routes(), "no webhook without a signing key");
        let p =
            build_one("webhook_signing_key = \"k\"\ntemplates = { delivered = \"d\" }\nchannel = \"staff\"")
                .expect("full");
        assert_eq!(p.all()[0].channel, Channel::Staff);
        assert!(p.callbacks().has_routes());
        assert!(build_one("api_secret = \"x\"").is_err(), "a typo");
        assert!(build_one("templates = { arrived = \"d\" }").is_err(), "no such milestone");
        assert!(build_one("templates = { delivered = \" \" }").is_err());
        assert!(build_one("channel = \"sms\"").is_err());
        assert!(build_one("webhook_signing_key = \"\"").is_err(), "an empty signing key");
        assert!(build_entry(&entry("MG.Example.com", "k", "a@b.c", "")).is_ok());
        for domain in ["mg.example.com/../v4", "localhost", "", "mg..example.com", "mg.example.com?x"] {
            assert!(build_entry(&entry(domain, "k", "a@b.c", "")).is_err(), "{domain:?}");
        }
        assert!(build_entry(&entry("mg.example.com", "", "a@b.c", "")).is_err(), "an empty api key");
        assert!(build_entry(&entry("mg.example.com", "k", "Doorstep", "")).is_err(), "no address");
        let missing = "type = \"mailgun\"\ndomain = \"mg.example.com\"\napi_key = \"k\"";
        assert!(build_entry(missing).is_err(), "from is required");
    }
}
