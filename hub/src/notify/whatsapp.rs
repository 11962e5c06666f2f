//! WhatsApp Business Cloud API: template messages out, delivery statuses and STOP in.
//!
//! - Send: `POST {base}/{version}/{phone_number_id}/messages` with `Authorization: Bearer
//!   <token>` and JSON `{"messaging_product": "whatsapp", "recipient_type": "individual",
//!   "to": <digits>, "type": "template", "template": {"name", "language": {"code"},
//!   "components": [{"type": "body", "parameters": [{"type": "text", "text"}]}]},
//!   "biz_opaque_callback_data": "doorstep-outbox:<id>"}`. Outside a 24-hour customer
//!   service window WhatsApp only delivers pre-approved templates, so the hub sends one
//!   approved template (configured name) whose body holds one parameter between fixed
//!   text (WhatsApp refuses a body that starts or ends with a parameter), filled with the
//!   rendered message. The template's language is the one the rendered text is written in
//!   (the Doorstep template's locale after fallback, `en-us` → `en_US`), so the approved
//!   WhatsApp template needs a translation under each locale the hub's templates have. The
//!   answer names the message in `messages[0].id` (the `wamid`).
//! - Idempotency: the Cloud API documents none, so an ambiguous failure is `unknown`, not
//!   re-sent. Meta copies `biz_opaque_callback_data` onto the message's status webhooks,
//!   which is how a status finds an `unknown` row whose `wamid` the hub never saw.
//! - Status webhook (`/callbacks/whatsapp`): Meta first checks the subscription with a GET
//!   (`hub.mode=subscribe`, `hub.verify_token`, `hub.challenge`: the challenge is echoed
//!   only when the token is the configured `verify_token`), then POSTs
//!   `{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",
//!   "value": {"metadata": {"phone_number_id"}, "statuses": [..], "messages": [..]}}]}]}`
//!   signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, keyed with
//!   the app secret>`. Meta retries anything but a 200 for days, so a batch that verifies
//!   is answered 200 even when nothing in it is about the hub's rows.
//!
//! | Meta `status` | outcome log | row status |
//! |---|---|---|
//! | `sent` | `sent` | `sent` (settles an `unknown` row) |
//! | `delivered` | `delivered` | `delivered` |
//! | `read` | `opened` | `delivered` |
//! | `failed` | `undelivered`, with Meta's error code and title | `undelivered` |
//! | anything else | ignored | unchanged |
//!
//! `failed` is `undelivered` rather than `failed` because it always concerns a message the
//! Cloud API had accepted (Twilio's `undelivered`, SendGrid's `bounce`); the row status
//! `failed` stays what the send path writes when Meta refuses the request itself.
//!
//! Inbound text to the configured number that is an opt-out keyword (the same words as
//! SMS: `STOP`, `UNSUBSCRIBE`, ...) opts the sender out of the WhatsApp channel, and a
//! `START` word opts them back in. Meta names the sender by WhatsApp id, the number's
//! digits; rows hold E.164 (`+` and the digits), so that is the form recorded. Where Meta's
//! WhatsApp id differs from the dialled number (some Brazilian and Mexican mobiles) an
//! opt-out is recorded under a number no row has, and an `unknown` row is not settled by
//! opaque data (it stays `unknown` for an operator). Statuses and messages about another
//! number of the same business account are not the hub's and are skipped.
//!
//! Meta answers its throttling with HTTP 400 and says to act on `error.code`, not the
//! status: those codes ([`RETRY_CODES`]) are retried with backoff like a 429, so a
//! backlog after an outage or two milestones close together for one customer go out
//! later instead of failing for good.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ring::hmac;
use serde::Deserialize;
use serde_json::json;

use super::config::NotifyConfigError;
use super::page::{NotifyState, form_pairs, internal, param, plain};
use super::provider::{Build, Channel, Provider, ProviderType, callback_path};
use super::ratelimit::RateLimit;
use super::token::constant_time_eq;
use super::twilio::{Keyword, inbound_keyword};
use super::{Outgoing, Reply, SendResult, now_ms};
use crate::store::{ContactChannel, NoticeLogged, OutboxStatus};

/// The header Meta signs webhook bodies in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// What `biz_opaque_callback_data` starts with: then the outbox row id and this
/// database's tag for it (see [`OpaqueIds`]).
pub const OPAQUE_PREFIX: &str = "doorstep-outbox:";

/// Names outbox rows in `biz_opaque_callback_data` so that only this database reads
/// them back: `doorstep-outbox:<id>:<tag>`, the tag a truncated HMAC of the id under a
/// key derived from the tracking-link secret. Two Doorstep databases sending from one
/// WhatsApp business account (two depots) both have a row 7; the tag tells them apart.
/// The webhook itself is authenticated by Meta's signature; this only says whose row.
#[derive(Clone)]
pub struct OpaqueIds(ring::hmac::Key);

impl OpaqueIds {
    /// Keys derived from the hub's tracking-link secret.
    pub fn new(link_secret: &[u8]) -> Self {
        let base = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, link_secret);
        let derived = ring::hmac::sign(&base, b"doorstep whatsapp opaque outbox ids");
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn tag_of(&self, id: i64) -> String {
        let tag = ring::hmac::sign(&self.0, id.to_string().as_bytes());
        tag.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The opaque data for a row.
    pub fn name(&self, id: i64) -> String {
        format!("{OPAQUE_PREFIX}{id}:{}", self.tag_of(id))
    }

    /// The row a status's opaque data names, when this database named it.
    pub fn outbox_id(&self, data: &str) -> Option<i64> {
        let (id, tag) = data.strip_prefix(OPAQUE_PREFIX)?.split_once(':')?;
        let id: i64 = id.parse().ok()?;
        (self.tag_of(id) == tag).then_some(id)
    }
}

impl std::fmt::Debug for OpaqueIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpaqueIds(..)")
    }
}

/// A configured WhatsApp Business phone number.
#[derive(Clone)]
pub struct WhatsApp {
    /// Graph API base URL without a trailing slash (`https://graph.facebook.com`).
    pub base_url: String,
    /// Graph API version (`v21.0`).
    pub api_version: String,
    /// The sending phone number's id.
    pub phone_number_id: String,
    /// System-user access token.
    pub access_token: String,
    /// The approved template's name.
    pub template_name: String,
    /// What the status webhook is checked with; `None` leaves `/callbacks/whatsapp` off.
    pub webhook: Option<WebhookKeys>,
    /// Names outbox rows in the send's opaque data.
    pub opaque: OpaqueIds,
}

impl std::fmt::Debug for WhatsApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsApp")
            .field("base_url", &self.base_url)
            .field("phone_number_id", &self.phone_number_id)
            .field("template_name", &self.template_name)
            .field("webhook", &self.webhook.is_some())
            .finish_non_exhaustive()
    }
}

/// The Meta app's webhook secrets: the app secret signs every POST, the verify token
/// answers the subscription handshake.
#[derive(Clone)]
pub struct WebhookKeys {
    key: hmac::Key,
    verify_token: String,
}

impl std::fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookKeys").finish_non_exhaustive()
    }
}

impl WebhookKeys {
    /// Keys from the app secret and the verify token the operator typed into Meta's app
    /// dashboard.
    pub fn new(app_secret: &str, verify_token: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, app_secret.as_bytes()),
            verify_token: verify_token.to_owned(),
        }
    }

    /// Whether `header` (`sha256=<hex>`) is the app's signature of `body`, compared in
    /// constant time.
    pub fn verify(&self, body: &[u8], header: &str) -> bool {
        let Some(tag) = header.trim().strip_prefix("sha256=") else { return false };
        let Ok(tag) = hex::decode(tag) else { return false };
        hmac::verify(&self.key, body, &tag).is_ok()
    }

    /// Whether the handshake's `hub.verify_token` is the configured one.
    pub fn token_matches(&self, token: &str) -> bool {
        constant_time_eq(self.verify_token.as_bytes(), token.as_bytes())
    }
}

/// Cloud API error codes that mean "not now" rather than "never": 2 (service temporarily
/// unavailable), 4 (app call rate), 80007 (account rate), 130429 (the number's message
/// throughput), 131056 (too many messages to one customer in a short time).
pub const RETRY_CODES: [i64; 5] = [2, 4, 80_007, 130_429, 131_056];

#[derive(Deserialize)]
struct Refusal {
    /// The same shape as the errors on a `failed` status.
    error: StatusError,
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

/// The regional template languages WhatsApp offers; every other language is named by
/// its bare code (`de`, `fr`, `nl`), whatever region the recipient's locale names.
const REGIONAL_LANGUAGES: [&str; 12] = [
    "en_GB", "en_US", "es_AR", "es_ES", "es_MX", "ky_KG", "pt_BR", "pt_PT", "rw_RW", "zh_CN", "zh_HK",
    "zh_TW",
];

/// WhatsApp's template language code for a locale: `en-us` → `en_US`, `pt-BR` →
/// `pt_BR`, but `de-AT` → `de` (WhatsApp has no regional German), `no` → `nb`,
/// `zh` → `zh_CN`, `zh-Hant` → `zh_TW`, `pt` → `pt_BR`, `pt-AO` → `pt_PT`. A code
/// WhatsApp does not offer would fail every send with error 132001 (no such
/// translation).
pub fn language_code(locale: &str) -> String {
    let mut parts = locale.trim().split(['-', '_']).filter(|p| !p.is_empty());
    let language = match parts.next().unwrap_or_default().to_ascii_lowercase().as_str() {
        "no" | "nn" => "nb".to_owned(),
        "iw" => "he".to_owned(),
        "in" => "id".to_owned(),
        "tl" => "fil".to_owned(),
        other => other.to_owned(),
    };
    let mut region = None;
    for part in parts {
        match (part.len(), part.to_ascii_lowercase().as_str()) {
            // A script: Chinese in traditional characters is Taiwan's or Hong Kong's.
            (4, "hant") if region.is_none() => region = Some("TW".to_owned()),
            (4, "hans") if region.is_none() => region = Some("CN".to_owned()),
            (4, _) => {}
            (2 | 3, _) => region = Some(part.to_ascii_uppercase()),
            _ => {}
        }
    }
    if let Some(region) = &region {
        let regional = format!("{language}_{region}");
        if REGIONAL_LANGUAGES.contains(&regional.as_str()) {
            return regional;
        }
    }
    // Languages WhatsApp offers only with a region: the most spoken one, or for
    // Portuguese outside Brazil, Portugal's.
    match language.as_str() {
        "ky" => "ky_KG".to_owned(),
        "rw" => "rw_RW".to_owned(),
        "zh" => "zh_CN".to_owned(),
        "pt" if region.is_some() => "pt_PT".to_owned(),
        "pt" => "pt_BR".to_owned(),
        _ => language,
    }
}

impl WhatsApp {
    /// What the Cloud API's answer to a send means (a template message or a reply).
    pub fn read_reply(&self, reply: &Reply) -> SendResult {
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
        let code = serde_json::from_slice::<Refusal>(&reply.body).ok().and_then(|r| r.error.code);
        if code.is_some_and(|c| RETRY_CODES.contains(&c)) {
            return SendResult::Retry { detail, retry_after: reply.retry_after };
        }
        super::classify_status(reply.status, reply.retry_after, detail)
    }
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
            "biz_opaque_callback_data": self.opaque.name(msg.outbox_id),
        })
    }
}

/// `[[notify.providers]]` entries of type `whatsapp`.
pub const TYPE: ProviderType = ProviderType {
    kind: "whatsapp",
    channels: &[Channel::Customer(ContactChannel::Whatsapp)],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# api_version = "v21.0"
# phone_number_id = "1234567890"
# access_token = "file:/etc/doorstep-hub/whatsapp.token"
# Approved template with one body parameter between fixed text, e.g.
# "Parcel update: {{1}} - Doorstep" (WhatsApp refuses a body that starts or ends with one).
# template_name = "doorstep_update"
# Meta's webhook (statuses, STOP) at /callbacks/{name}; both or neither. Subscribe the app
# to the "messages" field with the same verify token.
# app_secret = "file:/etc/doorstep-hub/whatsapp.app-secret"   # signs X-Hub-Signature-256
# verify_token = "file:/etc/doorstep-hub/whatsapp.verify-token"
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default = "graph_version")]
    api_version: String,
    phone_number_id: String,
    access_token: String,
    template_name: String,
    #[serde(default)]
    app_secret: Option<String>,
    #[serde(default)]
    verify_token: Option<String>,
}

fn graph_version() -> String {
    "v21.0".into()
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    let webhook = match (&s.app_secret, &s.verify_token) {
        (None, None) => None,
        (Some(secret), Some(token)) => {
            Some(WebhookKeys::new(&b.secret("app_secret", secret)?, &b.secret("verify_token", token)?))
        }
        _ => {
            return Err(b.invalid(
                "app_secret",
                "give both app_secret and verify_token (Meta's webhook needs both) or neither",
            ));
        }
    };
    Ok(Arc::new(WhatsApp {
        base_url: b.base_url("https://graph.facebook.com")?,
        api_version: s.api_version,
        phone_number_id: s.phone_number_id,
        access_token: b.secret("access_token", &s.access_token)?,
        template_name: s.template_name,
        webhook,
        opaque: OpaqueIds::new(b.link_secret),
    }))
}

impl Provider for WhatsApp {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        let url = format!("{}/{}/{}/messages", self.base_url, self.api_version, self.phone_number_id);
        Ok(client.post(url).bearer_auth(&self.access_token).json(&self.request_body(msg)))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        self.read_reply(reply)
    }


    fn callbacks(self: Arc<Self>, name: &str) -> Option<Router<NotifyState>> {
        self.webhook.as_ref()?;
        let (verify, events) = (Arc::clone(&self), self);
        let name: Arc<str> = name.into();
        let events_name = Arc::clone(&name);
        Some(
            Router::new().route(
                &callback_path(&name, ""),
                get(move |State(state): State<NotifyState>, RawQuery(query): RawQuery| {
                    let (w, name) = (Arc::clone(&verify), Arc::clone(&name));
                    async move { verify_subscription(&w, &name, &state, query.as_deref()) }
                })
                .post(
                    move |State(state): State<NotifyState>, headers: HeaderMap, body: Bytes| {
                        let (w, name) = (Arc::clone(&events), Arc::clone(&events_name));
                        async move { receive(&w, &name, &state, &headers, &body).await }
                    },
                ),
            ),
        )
    }
}

/// Meta's subscription check. Echoing the challenge for any token would let any Meta app
/// subscribe this URL; its deliveries would then fail the signature check one by one and
/// bury the real rejections in the counter.
fn verify_subscription(w: &WhatsApp, name: &str, state: &NotifyState, query: Option<&str>) -> Response {
    let Some(keys) = &w.webhook else { return plain(StatusCode::NOT_FOUND, "not found\n") };
    let params = form_pairs(query.unwrap_or_default().as_bytes());
    let (mode, token, challenge) =
        (param(&params, "hub.mode"), param(&params, "hub.verify_token"), param(&params, "hub.challenge"));
    match (mode, token, challenge) {
        (Some("subscribe"), Some(token), Some(challenge)) if keys.token_matches(token) => {
            state.metrics.webhook(name, "verified", "ok");
            tracing::info!("whatsapp webhook subscription verified");
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], challenge.to_owned())
                .into_response()
        }
        _ => {
            state.metrics.webhook(name, "rejected", "bad_verify_token");
            tracing::warn!("whatsapp webhook verification with a wrong or missing hub.verify_token");
            plain(StatusCode::FORBIDDEN, "bad hub.verify_token\n")
        }
    }
}

/// Answers one customer's question with a text message (inside the 24-hour customer
/// service window their message opened, where free text is allowed).
async fn answer_question(w: &WhatsApp, name: &str, state: &NotifyState, recipient: &str, wa_id: &str, text: &str) {
    let answer = match super::questions::answer_and_log(state, ContactChannel::Whatsapp, recipient, text).await {
        Ok(answer) => answer,
        Err(error) => return tracing::error!(%error, "answering a whatsapp question failed"),
    };
    let Some(reply) = answer.text else { return };
    let body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": wa_id,
        "type": "text",
        "text": { "preview_url": true, "body": reply },
    });
    let url = format!("{}/{}/{}/messages", w.base_url, w.api_version, w.phone_number_id);
    let sent = super::read_response(state.client.post(url).bearer_auth(&w.access_token).json(&body).send().await).await;
    let result = match sent {
        Ok(reply) => w.read_reply(&reply),
        Err(result) => result,
    };
    state.metrics.provider_attempt(name, super::outcome_label(&result));
    match result {
        SendResult::Accepted { .. } => tracing::info!("whatsapp question answered"),
        other => tracing::warn!(result = ?other, "whatsapp answer to a question not sent"),
    }
}

async fn receive(
    w: &Arc<WhatsApp>,
    name: &str,
    state: &NotifyState,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(keys) = &w.webhook else { return plain(StatusCode::NOT_FOUND, "not found\n") };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !keys.verify(body, signature) {
        state.metrics.webhook(name, "rejected", "bad_signature");
        tracing::warn!("whatsapp webhook with a bad or missing X-Hub-Signature-256");
        return plain(StatusCode::FORBIDDEN, "bad X-Hub-Signature-256\n");
    }
    let notification: Notification = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => {
            state.metrics.webhook(name, "rejected", "bad_json");
            tracing::warn!(error = %e, "whatsapp webhook body is not a JSON notification");
            return plain(StatusCode::BAD_REQUEST, "expected a WhatsApp webhook JSON object\n");
        }
    };
    let (updates, opt_changes) = read_notification(&notification, &w.phone_number_id, &w.opaque);
    let asked = questions(&notification, &w.phone_number_id);
    let channel = ContactChannel::Whatsapp.as_str();
    let now = now_ms();
    let result = state
        .db
        .call(move |store| {
            let mut recorded = Vec::new();
            for u in updates {
                let id = match store.by_provider_id(&u.wamid)? {
                    Some(id) => Some(id),
                    // A row that has not learned its wamid: its send timed out (`unknown`),
                    // or Meta's status came before the send's answer was written
                    // (`sending`; the dispatcher's late `finish` keeps what is written
                    // now). The opaque data names it, tagged by this database; and only
                    // for the number it was sent to.
                    None => match u.outbox_id {
                        Some(id)
                            if matches!(
                                store.row_status(id)?,
                                Some(OutboxStatus::Unknown | OutboxStatus::Sending)
                            ) && store.row_target(id)?
                                .is_some_and(|(ch, to)| ch == channel && to == u.recipient) =>
                        {
                            Some(id)
                        }
                        _ => None,
                    },
                };
                let Some(id) = id else { continue };
                if store.row_target(id)?.is_none_or(|(ch, _)| ch != channel) {
                    continue;
                }
                if store.provider_event(id, u.outcome, Some(&u.wamid), Some(&u.detail), now)? {
                    recorded.push((id, u.outcome));
                }
            }
            for o in &opt_changes {
                store.set_opt_out(channel, &o.recipient, o.out, "whatsapp_inbound", now)?;
            }
            Ok((recorded, opt_changes))
        })
        .await;
    match result {
        Ok((recorded, opt_changes)) => {
            for (id, outcome) in recorded {
                state.metrics.notification(channel, outcome);
                tracing::info!(outbox = id, outcome = outcome.as_str(), "whatsapp status");
            }
            for o in opt_changes {
                tracing::info!(
                    recipient = %crate::mask::Masked(&o.recipient),
                    opted_out = o.out,
                    "whatsapp subscription changed by inbound keyword"
                );
            }
            state.metrics.webhook(name, "stored", "ok");
            if !asked.is_empty() {
                // Answered apart from Meta's delivery, which wants its 200 quickly.
                let (w, state, name) = (Arc::clone(w), state.clone(), name.to_owned());
                tokio::spawn(async move {
                    for (recipient, wa_id, text) in asked {
                        answer_question(&w, &name, &state, &recipient, &wa_id, &text).await;
                    }
                });
            }
            // Meta retries anything but a 200.
            StatusCode::OK.into_response()
        }
        Err(e) => internal(&e),
    }
}

// ---- status webhook ------------------------------------------------------------------

/// A webhook POST body. Every field is optional so that one odd entry in a batch costs
/// that entry, not the batch (Meta would retry a refused batch for days).
#[derive(Debug, Deserialize)]
pub struct Notification {
    /// `whatsapp_business_account`.
    #[serde(default)]
    pub object: String,
    /// One per business account.
    #[serde(default)]
    pub entry: Vec<Entry>,
}

/// One business account's changes.
#[derive(Debug, Deserialize)]
pub struct Entry {
    /// The changes.
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// One change: `field` `messages` carries statuses and inbound messages.
#[derive(Debug, Deserialize)]
pub struct Change {
    /// The subscribed field.
    #[serde(default)]
    pub field: String,
    /// What changed.
    #[serde(default)]
    pub value: ChangeValue,
}

/// The `value` of a `messages` change.
#[derive(Debug, Default, Deserialize)]
pub struct ChangeValue {
    /// Which business number it is about.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Status updates of messages the business sent.
    #[serde(default)]
    pub statuses: Vec<Status>,
    /// Messages customers sent to the business.
    #[serde(default)]
    pub messages: Vec<Inbound>,
}

/// The business number a change is about.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    /// The number's id (the one messages are sent from).
    #[serde(default)]
    pub phone_number_id: Option<String>,
}

/// One status update.
#[derive(Debug, Deserialize)]
pub struct Status {
    /// The `wamid` the send answer named.
    #[serde(default)]
    pub id: String,
    /// `sent`, `delivered`, `read`, `failed`, ...
    #[serde(default)]
    pub status: String,
    /// The customer's WhatsApp id (digits).
    #[serde(default)]
    pub recipient_id: String,
    /// What the send request carried in `biz_opaque_callback_data`.
    #[serde(default)]
    pub biz_opaque_callback_data: Option<String>,
    /// Why a `failed` message failed.
    #[serde(default)]
    pub errors: Vec<StatusError>,
}

/// One of Meta's errors on a `failed` status.
#[derive(Debug, Deserialize)]
pub struct StatusError {
    /// Meta's error code (131026: undeliverable, ...).
    #[serde(default)]
    pub code: Option<i64>,
    /// Short description.
    #[serde(default)]
    pub title: Option<String>,
    /// Longer description, where the title is missing.
    #[serde(default)]
    pub message: Option<String>,
}

/// One inbound message.
#[derive(Debug, Deserialize)]
pub struct Inbound {
    /// The sender's WhatsApp id (digits).
    #[serde(default)]
    pub from: String,
    /// `text`, `button`, `image`, ...
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The text of a `text` message.
    #[serde(default)]
    pub text: Option<InboundText>,
}

/// An inbound text.
#[derive(Debug, Deserialize)]
pub struct InboundText {
    /// What the customer wrote.
    #[serde(default)]
    pub body: String,
}

/// What a status means for the outcome log; `None` for statuses that change nothing.
pub fn status_outcome(status: &str) -> Option<NoticeLogged> {
    match status {
        "sent" => Some(NoticeLogged::Sent),
        "delivered" => Some(NoticeLogged::Delivered),
        "read" => Some(NoticeLogged::Opened),
        "failed" => Some(NoticeLogged::Undelivered),
        // deleted, warning, played, ...: nothing the outbox tracks.
        _ => None,
    }
}

/// A status the outbox should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The `wamid`.
    pub wamid: String,
    /// The outcome log entry.
    pub outcome: NoticeLogged,
    /// The outbox row named by the send's opaque data, if any.
    pub outbox_id: Option<i64>,
    /// The customer's number as rows hold it (`+` and digits).
    pub recipient: String,
    /// For the outcome log.
    pub detail: String,
}

/// An inbound keyword's change to the WhatsApp opt-outs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptChange {
    /// The number as rows hold it (`+` and digits).
    pub recipient: String,
    /// Opted out (`true`) or back in.
    pub out: bool,
}

/// A WhatsApp id as rows hold numbers: `+` and the digits; `None` when it is not digits.
fn e164(wa_id: &str) -> Option<String> {
    (!wa_id.is_empty() && wa_id.bytes().all(|b| b.is_ascii_digit())).then(|| format!("+{wa_id}"))
}

/// What a verified webhook body asks of the outbox (pure): the status updates and opt-out
/// changes in changes about `phone_number_id`. Changes about another number of the same
/// business account are not the hub's.
pub fn read_notification(
    n: &Notification,
    phone_number_id: &str,
    opaque: &OpaqueIds,
) -> (Vec<StatusUpdate>, Vec<OptChange>) {
    let (mut updates, mut opts) = (Vec::new(), Vec::new());
    if n.object != "whatsapp_business_account" {
        return (updates, opts);
    }
    let changes = n.entry.iter().flat_map(|e| &e.changes).filter(|c| c.field == "messages");
    for change in changes {
        let number = change.value.metadata.as_ref().and_then(|m| m.phone_number_id.as_deref());
        if number.is_some_and(|id| id != phone_number_id) {
            continue;
        }
        for s in &change.value.statuses {
            let Some(outcome) = status_outcome(&s.status) else { continue };
            if s.id.is_empty() {
                continue;
            }
            let errors: Vec<String> = s
                .errors
                .iter()
                .map(|e| {
                    let words = e.title.as_deref().or(e.message.as_deref()).unwrap_or("no title");
                    match e.code {
                        Some(code) => format!("error {code} {words}"),
                        None => words.to_owned(),
                    }
                })
                .collect();
            let detail = if errors.is_empty() {
                format!("whatsapp {}", s.status)
            } else {
                format!("whatsapp {}: {}", s.status, errors.join("; "))
            };
            updates.push(StatusUpdate {
                wamid: s.id.clone(),
                outcome,
                outbox_id: s.biz_opaque_callback_data.as_deref().and_then(|d| opaque.outbox_id(d)),
                recipient: e164(&s.recipient_id).unwrap_or_default(),
                detail,
            });
        }
    }
    for (recipient, _, body) in inbound_texts(n, phone_number_id) {
        if let Some(keyword) = inbound_keyword(body) {
            opts.push(OptChange { recipient, out: keyword == Keyword::OptOut });
        }
    }
    (updates, opts)
}

/// The text messages customers sent to this number: (their number as rows hold it, their
/// WhatsApp id, the text).
pub fn inbound_texts<'a>(
    n: &'a Notification,
    phone_number_id: &'a str,
) -> impl Iterator<Item = (String, &'a str, &'a str)> + 'a {
    let ours = n.object == "whatsapp_business_account";
    n.entry
        .iter()
        .flat_map(|e| &e.changes)
        .filter(move |c| {
            ours && c.field == "messages"
                && c.value.metadata.as_ref().and_then(|m| m.phone_number_id.as_deref()).is_none_or(|id| id == phone_number_id)
        })
        .flat_map(|c| &c.value.messages)
        .filter(|m| m.kind == "text")
        .filter_map(|m| Some((e164(&m.from)?, m.from.as_str(), m.text.as_ref()?.body.as_str())))
}

/// The questions among them: texts that are not STOP or START.
pub fn questions<'a>(n: &'a Notification, phone_number_id: &'a str) -> Vec<(String, String, String)> {
    inbound_texts(n, phone_number_id)
        .filter(|(_, _, body)| inbound_keyword(body).is_none())
        .map(|(recipient, wa_id, body)| (recipient, wa_id.to_owned(), body.to_owned()))
        .collect()
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
    fn the_signature_is_hex_hmac_sha256_of_the_raw_body_keyed_with_the_app_secret() {
        // RFC 4231 test case 2: key "Jefe", this text.
        let keys = WebhookKeys::new("Jefe", "token");
        let body = b"what do ya want for nothing?";
        let good = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(keys.verify(body, good));
        assert!(!keys.verify(b"what do ya want for nothing!", good), "a changed body");
        assert!(!keys.verify(body, &good.replace("sha256=", "sha1=")), "another algorithm");
        assert!(!keys.verify(body, "sha256=5bdcc146"), "a truncated tag");
        assert!(!keys.verify(body, ""), "no header");
        assert!(!WebhookKeys::new("jefe", "token").verify(body, good), "another secret");
        assert!(keys.token_matches("token") && !keys.token_matches("token ") && !keys.token_matches(""));
    }

    fn notification(json: &str) -> Notification {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn statuses_map_to_outcomes_and_keep_metas_error_for_the_operator() {
        let ours = OpaqueIds::new(b"this depot's link secret");
        let other_depot = OpaqueIds::new(b"another depot's link secret");
        let json = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{
                "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
                "statuses":[
                  {"id":"wamid.A","status":"delivered","timestamp":"1751356800","recipient_id":"15555550100"},
                  {"id":"wamid.B","status":"read","timestamp":"1751356801","recipient_id":"15555550100","biz_opaque_callback_data":"OURS"},
                  {"id":"wamid.C","status":"failed","timestamp":"1751356802","recipient_id":"15555550100",
                   "errors":[{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{"details":"Message Undeliverable."}}]},
                  {"id":"wamid.D","status":"deleted","timestamp":"1751356803","recipient_id":"15555550100"},
                  {"id":"wamid.E","status":"sent","timestamp":"1751356804","recipient_id":"15555550100","biz_opaque_callback_data":"someone-else:9",
                   "conversation":{"id":"c","origin":{"type":"utility"}},"pricing":{"billable":true,"category":"utility"}},
                  {"id":"wamid.F","status":"sent","timestamp":"1751356805","recipient_id":"15555550100","biz_opaque_callback_data":"OTHER_DEPOT",
                   "conversation":{"id":"c","origin":{"type":"utility"}},"pricing":{"billable":true,"category":"utility"}}
                ]}}]}]}"#
            .replace("OURS", &ours.name(7))
            .replace("OTHER_DEPOT", &other_depot.name(7));
        let n = notification(&json);
        let (updates, opts) = read_notification(&n, "106540352242922", &ours);
        assert!(opts.is_empty());
        let got: Vec<(&str, &str, Option<i64>)> =
            updates.iter().map(|u| (u.wamid.as_str(), u.outcome.as_str(), u.outbox_id)).collect();
        assert_eq!(
            got,
            [
                ("wamid.A", "delivered", None),
                ("wamid.B", "opened", Some(7)),
                ("wamid.C", "undelivered", None),
                ("wamid.E", "sent", None),
                ("wamid.F", "sent", None),
            ],
            "deleted is ignored; opaque data of another system, or another depot's row 7, names no row"
        );
        assert_eq!(updates[2].detail, "whatsapp failed: error 131026 Message undeliverable");
        assert_eq!(updates[0].recipient, "+15555550100");
        let (other, _) = read_notification(&n, "999", &ours);
        assert!(other.is_empty(), "statuses of another number of the business account are not ours");
    }

    #[test]
    fn stop_to_the_number_opts_the_sender_out_and_other_text_does_not() {
        let n = notification(
            r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{
                "metadata":{"phone_number_id":"106540352242922"},
                "contacts":[{"profile":{"name":"Ada"},"wa_id":"15555550100"}],
                "messages":[
                  {"from":"15555550100","id":"wamid.in1","timestamp":"1751356800","type":"text","text":{"body":"  stop "}},
                  {"from":"15555550101","id":"wamid.in2","timestamp":"1751356801","type":"text","text":{"body":"please stop by at 5"}},
                  {"from":"15555550102","id":"wamid.in3","timestamp":"1751356802","type":"text","text":{"body":"Start"}},
                  {"from":"15555550103","id":"wamid.in4","timestamp":"1751356803","type":"image","image":{"id":"1"}}
                ]}}]}]}"#,
        );
        let (updates, opts) = read_notification(&n, "106540352242922", &OpaqueIds::new(b"secret"));
        assert!(updates.is_empty());
        assert_eq!(
            opts,
            [
                OptChange { recipient: "+15555550100".into(), out: true },
                OptChange { recipient: "+15555550102".into(), out: false },
            ]
        );
    }

    #[test]
    fn locales_are_spelled_the_way_whatsapp_names_template_languages() {
        assert_eq!(language_code("de-AT"), "de", "WhatsApp has no regional German");
        assert_eq!(language_code("en"), "en");
        assert_eq!(language_code("en-us"), "en_US");
        assert_eq!(language_code("pt_br"), "pt_BR");
        assert_eq!(language_code("fr-CA"), "fr");
        assert_eq!(language_code("no"), "nb");
        assert_eq!(language_code("zh"), "zh_CN");
        assert_eq!(language_code("zh-tw"), "zh_TW");
        assert_eq!(language_code("zh-Hant"), "zh_TW");
        assert_eq!(language_code("zh-Hant-HK"), "zh_HK");
        assert_eq!(language_code("pt"), "pt_BR");
        assert_eq!(language_code("pt-AO"), "pt_PT");
        assert_eq!(language_code("in"), "id");
    }
}
