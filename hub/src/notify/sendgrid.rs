//! SendGrid v3 Mail Send out, signed Event Webhook in.
//!
//! - Send: `POST {base}/v3/mail/send`, `Authorization: Bearer <key>`, JSON with
//!   `personalizations[{to:[{email}], custom_args, dynamic_template_data}]`, `from{email,
//!   name}` and either `template_id` (a dynamic template, filled from
//!   `dynamic_template_data`) or `subject` + `content[{type, value}]`; 202 Accepted with
//!   the message id in `X-Message-Id`. Every message carries the custom arg
//!   `doorstep_outbox_id`, which SendGrid copies onto every event about it.
//! - Idempotency: SendGrid documents no idempotency key for Mail Send, so a request that
//!   timed out after it was sent is marked `unknown` and never re-sent automatically
//!   (the event webhook completes the row if the mail did go out).
//! - Events: a JSON array (`processed`, `delivered`, `open`, `bounce`, `dropped`, ...)
//!   verified as SendGrid's *Signed Event Webhook*: ECDSA P-256 with SHA-256 over the
//!   `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body, the
//!   signature (ASN.1 DER, base64) in `X-Twilio-Email-Event-Webhook-Signature`, checked
//!   with the verification key SendGrid shows (base64 DER SubjectPublicKeyInfo).
//!   Without a configured key the endpoint refuses every request.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::json;

use super::config::NotifyConfigError;
use super::page::{NotifyState, internal, plain};
use super::provider::{Build, Channel, Provider, ProviderType, callback_path};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult, now_ms};
use crate::model::Milestone;
use crate::store::{ContactChannel, NoticeLogged};

/// The custom arg that ties a SendGrid event back to its outbox row.
pub const OUTBOX_ARG: &str = "doorstep_outbox_id";
/// The custom arg an operations alert's e-mail carries instead.
pub const ALERT_ARG: &str = "doorstep_alert_id";
/// The signature header of the signed Event Webhook.
pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
/// The timestamp header of the signed Event Webhook.
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, 66-byte
/// BIT STRING holding the uncompressed point). What follows it is the point ring wants.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a verification key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "notify.sendgrid.event_public_key: {0} (paste the verification key SendGrid shows under Mail Settings)"
)]
pub struct KeyError(pub String);

/// SendGrid's Event Webhook verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    point: Vec<u8>,
}

impl EventKey {
    /// Parses the key as SendGrid shows it: base64 of a DER SubjectPublicKeyInfo for a
    /// P-256 key (PEM armour, if pasted, is stripped).
    pub fn from_base64_der(text: &str) -> Result<Self, KeyError> {
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD.decode(body).map_err(|e| KeyError(format!("not base64: {e}")))?;
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(Self { point: point.to_vec() }),
            _ => Err(KeyError("not a P-256 SubjectPublicKeyInfo".into())),
        }
    }

    /// A key from the raw uncompressed point (65 bytes), for tests.
    pub fn from_point(point: &[u8]) -> Self {
        Self { point: point.to_vec() }
    }

    /// The key as SendGrid shows it (base64 DER SubjectPublicKeyInfo).
    pub fn to_base64_der(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        STANDARD.encode(der)
    }

    /// Whether `signature_b64` signs `timestamp ‖ body`.
    pub fn verify(&self, timestamp: &str, body: &[u8], signature_b64: &str) -> bool {
        let Ok(signature) = STANDARD.decode(signature_b64.trim()) else { return false };
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point).verify(&signed, &signature).is_ok()
    }
}

/// A configured SendGrid account.
#[derive(Clone)]
pub struct SendGrid {
    /// API base URL without a trailing slash (`https://api.sendgrid.com`).
    pub base_url: String,
    /// API key (Mail Send permission).
    pub api_key: String,
    /// Sender address.
    pub from_email: String,
    /// Sender display name.
    pub from_name: Option<String>,
    /// Dynamic template per milestone; milestones without one are sent as subject and
    /// text/HTML content from the hub's own templates.
    pub template_ids: BTreeMap<Milestone, String>,
    /// Event Webhook verification key.
    pub event_key: Option<EventKey>,
}

impl std::fmt::Debug for SendGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendGrid")
            .field("base_url", &self.base_url)
            .field("from_email", &self.from_email)
            .field("template_ids", &self.template_ids)
            .field("event_key", &self.event_key.is_some())
            .finish_non_exhaustive()
    }
}


impl SendGrid {
    /// The Mail Send request body for a message.
    pub fn request_body(&self, msg: &Outgoing) -> serde_json::Value {
        let mut from = json!({ "email": self.from_email });
        if let Some(name) = &self.from_name {
            from["name"] = json!(name);
        }
        let mut personalization = json!({
            "to": [{ "email": msg.recipient }],
            "custom_args": match msg.alert.as_ref().map(|a| a.id) {
                Some(alert) => json!({ ALERT_ARG: alert.to_string() }),
                None => json!({ OUTBOX_ARG: msg.outbox_id.to_string() }),
            },
        });
        let mut body = json!({ "from": from });
        match self.template_ids.get(&msg.milestone) {
            Some(template_id) => {
                personalization["dynamic_template_data"] = json!({
                    "tracking_number": msg.tracking_number,
                    "milestone": crate::store::milestone_name(msg.milestone),
                    "detail": msg.detail,
                    "tracking_url": msg.link,
                    "subject": msg.subject,
                    "text": msg.body,
                });
                body["template_id"] = json!(template_id);
            }
            None => {
                let html = super::templates::html_body(&msg.body, &msg.link);
                body["subject"] = json!(msg.subject);
                body["content"] = json!([
                    { "type": "text/plain", "value": msg.body },
                    { "type": "text/html", "value": html },
                ]);
            }
        }
        body["personalizations"] = json!([personalization]);
        body
    }
}

/// `[[notify.providers]]` entries of type `sendgrid`.
pub const TYPE: ProviderType = ProviderType {
    kind: "sendgrid",
    channels: &[Channel::Customer(ContactChannel::Email), Channel::Staff],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# api_key = "file:/etc/doorstep-hub/sendgrid.key"
# from_email = "parcels@example.com"
# from_name = "Doorstep"
# Signed Event Webhook verification key; events arrive at /callbacks/{name}/events.
# event_public_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE..."
# template_ids = { delivered = "d-0123456789abcdef0123456789abcdef" }   # dynamic templates
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    api_key: String,
    from_email: String,
    #[serde(default)]
    from_name: Option<String>,
    #[serde(default)]
    template_ids: BTreeMap<Milestone, String>,
    #[serde(default)]
    event_public_key: Option<String>,
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    let event_key = match &s.event_public_key {
        None => None,
        Some(k) => Some(
            EventKey::from_base64_der(&b.secret("event_public_key", k)?)
                .map_err(|e| b.invalid("event_public_key", e.0))?,
        ),
    };
    Ok(Arc::new(SendGrid {
        base_url: b.base_url("https://api.sendgrid.com")?,
        api_key: b.secret("api_key", &s.api_key)?,
        from_email: s.from_email,
        from_name: s.from_name,
        template_ids: s.template_ids,
        event_key,
    }))
}

/// Where SendGrid posts events, under `/callbacks/{name}`.
pub const EVENTS_SUFFIX: &str = "/events";

impl Provider for SendGrid {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        Ok(client
            .post(format!("{}/v3/mail/send", self.base_url))
            .bearer_auth(&self.api_key)
            .json(&self.request_body(msg)))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        if reply.status.is_success() {
            let id = reply.headers.get("x-message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
            return SendResult::Accepted {
                provider_id: id,
                detail: format!("sendgrid HTTP {}", reply.status.as_u16()),
            };
        }
        let text = String::from_utf8_lossy(&reply.body);
        let detail = format!(
            "sendgrid HTTP {}: {}",
            reply.status.as_u16(),
            text.chars().take(300).collect::<String>()
        );
        super::classify_status(reply.status, reply.retry_after, detail)
    }

    fn callbacks(self: Arc<Self>, name: &str) -> Option<Router<NotifyState>> {
        let key = self.event_key.clone()?;
        let name: Arc<str> = name.into();
        let path = callback_path(&name, EVENTS_SUFFIX);
        Some(Router::new().route(
            &path,
            post(move |State(state): State<NotifyState>, headers: HeaderMap, body: Bytes| {
                let (key, name) = (key.clone(), Arc::clone(&name));
                async move { events(&key, &name, &state, &headers, &body).await }
            }),
        ))
    }
}

async fn events(
    key: &EventKey,
    name: &str,
    state: &NotifyState,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !key.verify(header(TIMESTAMP_HEADER), body, header(SIGNATURE_HEADER)) {
        state.metrics.webhook(name, "rejected", "bad_signature");
        return plain(StatusCode::FORBIDDEN, "bad event webhook signature\n");
    }
    let events: Vec<Event> = match serde_json::from_slice(body) {
        Ok(events) => events,
        Err(e) => {
            state.metrics.webhook(name, "rejected", "bad_json");
            tracing::warn!(error = %e, "sendgrid events are not a JSON array of events");
            return plain(StatusCode::BAD_REQUEST, "expected a JSON array of events\n");
        }
    };
    let now = now_ms();
    let result = state
        .db
        .call(move |store| {
            let mut recorded = Vec::new();
            for event in events {
                let Some((outcome, opt_out)) = event_outcome(&event.event) else { continue };
                let id = match event.outbox_id() {
                    Some(id) => Some(id),
                    None => match event.message_id() {
                        Some(mid) => store.by_provider_id(mid)?,
                        None => None,
                    },
                };
                if opt_out && let Some(email) = &event.email {
                    store.set_opt_out(ContactChannel::Email.as_str(),
                        email,
                        true,
                        "sendgrid_event",
                        now,
                    )?;
                }
                let Some(id) = id else { continue };
                // Only events about an email row of ours.
                if store.row_target(id)?.is_none_or(|(ch, _)| ch != ContactChannel::Email.as_str()) {
                    continue;
                }
                let detail = match &event.reason {
                    Some(r) => format!("sendgrid {}: {r}", event.event),
                    None => format!("sendgrid {}", event.event),
                };
                if store.provider_event(id, outcome, event.message_id(), Some(&detail), now)? {
                    recorded.push(outcome);
                }
            }
            Ok(recorded)
        })
        .await;
    match result {
        Ok(recorded) => {
            for outcome in recorded {
                state.metrics.notification("email", outcome);
            }
            state.metrics.webhook(name, "stored", "ok");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => internal(&e),
    }
}

/// One Event Webhook event (the fields the hub uses; the rest are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `processed`, `delivered`, `open`, `bounce`, ...
    pub event: String,
    /// The recipient.
    #[serde(default)]
    pub email: Option<String>,
    /// `<X-Message-Id>.<filter suffix>`.
    #[serde(default)]
    pub sg_message_id: Option<String>,
    /// Our custom arg.
    #[serde(default)]
    pub doorstep_outbox_id: Option<String>,
    /// Bounce/drop reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

impl Event {
    /// The `X-Message-Id` this event is about (the part of `sg_message_id` before the
    /// first dot).
    pub fn message_id(&self) -> Option<&str> {
        self.sg_message_id.as_deref().map(|id| id.split('.').next().unwrap_or(id))
    }

    /// The outbox row named by the custom arg.
    pub fn outbox_id(&self) -> Option<i64> {
        self.doorstep_outbox_id.as_deref().and_then(|s| s.parse().ok())
    }
}

/// What an event means for the outcome log, and whether it opts the address out.
pub fn event_outcome(event: &str) -> Option<(NoticeLogged, bool)> {
    match event {
        "delivered" => Some((NoticeLogged::Delivered, false)),
        "open" => Some((NoticeLogged::Opened, false)),
        "bounce" | "blocked" => Some((NoticeLogged::Undelivered, false)),
        "dropped" => Some((NoticeLogged::Failed, false)),
        "spamreport" | "unsubscribe" | "group_unsubscribe" => Some((NoticeLogged::OptedOut, true)),
        // processed, deferred (SendGrid retries), click, group_resubscribe: no change.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    #[test]
    fn a_signed_event_batch_verifies_and_a_changed_byte_does_not() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).expect("pair");
        let shown = EventKey::from_point(pair.public_key().as_ref()).to_base64_der();
        let key = EventKey::from_base64_der(&shown).expect("spki");
        let body = br#"[{"email":"a@example.com","event":"delivered","sg_message_id":"abc.filter0001"}]"#;
        let ts = "1600112502";
        let mut signed = ts.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let sig = STANDARD.encode(pair.sign(&rng, &signed).expect("sign"));
        assert!(key.verify(ts, body, &sig));
        assert!(!key.verify("1600112503", body, &sig));
        assert!(!key.verify(ts, &body[1..], &sig));
        assert!(!key.verify(ts, body, "bm90IGEgc2lnbmF0dXJl"));
        assert!(EventKey::from_base64_der("bm90IGEga2V5").is_err());
    }

    #[test]
    fn events_name_their_message_and_outbox_row() {
        let events: Vec<Event> = serde_json::from_str(
            r#"[{"email":"a@example.com","timestamp":1513299569,"event":"open","sg_event_id":"x",
                 "sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0","doorstep_outbox_id":"7",
                 "useragent":"Mozilla"}]"#,
        )
        .expect("parse");
        assert_eq!(events[0].message_id(), Some("14c5d75ce93"));
        assert_eq!(events[0].outbox_id(), Some(7));
        assert_eq!(event_outcome("open"), Some((NoticeLogged::Opened, false)));
        assert_eq!(event_outcome("processed"), None);
    }
}
