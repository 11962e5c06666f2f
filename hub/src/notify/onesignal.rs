//! OneSignal: push and in-app messages to the customer's account in the shipper's app.
//!
//! - Send: `POST {base}/notifications` with `Authorization: Key <app API key>` and JSON
//!   `{"app_id", "include_aliases": {"external_id": [<recipient>]}, "target_channel":
//!   "push", "headings": {"en", <lang>}, "contents": {"en", <lang>}, "url",
//!   "idempotency_key"}`. The recipient of a push contact is the shipper's own user id for
//!   the customer (OneSignal's `external_id` alias), set on the shipment like a phone
//!   number. OneSignal requires English content, so the rendered text goes under `en` and,
//!   when the recipient's language is another, under that language too (the app shows
//!   the one matching the device).
//! - Idempotency: `idempotency_key` is a UUID derived from the outbox row and this
//!   database (a keyed hash, so two depots' row 7 differ); OneSignal answers a repeat of a
//!   key within 30 days with the first request's result instead of sending again. That
//!   makes a send that timed out safe to repeat, and push the one customer channel besides
//!   the signed webhook that the dispatcher retries after an ambiguous failure.
//! - The quirk: **a 200 with an empty `id` means nothing was sent** (no subscribed device
//!   for that user: `errors: ["All included players are not subscribed"]`, or
//!   `errors.invalid_aliases`). That is a refusal, so the next push provider, if any, may
//!   try, and the outcome log says why.
//! - 429 carries `Retry-After`; 5xx is retried; other 4xx (`errors: [...]`) is a refusal.

use std::sync::Arc;

use ring::hmac;
use serde::Deserialize;
use serde_json::json;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult};
use crate::store::ContactChannel;

/// `[[notify.providers]]` entries of type `onesignal`.
pub const TYPE: ProviderType = ProviderType {
    kind: "onesignal",
    channels: &[Channel::Customer(ContactChannel::Push)],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# app_id = "00000000-0000-0000-0000-000000000000"
# api_key = "file:/etc/doorstep-hub/onesignal.key"    # the app's REST API key
# target_channel = "push"                             # or "sms", "email" (OneSignal's)
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    app_id: String,
    api_key: String,
    #[serde(default = "push")]
    target_channel: String,
}

fn push() -> String {
    "push".into()
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    if !is_uuid(&s.app_id) {
        return Err(b.invalid("app_id", "must be the app's id, a UUID (Settings > Keys & IDs)"));
    }
    if !["push", "sms", "email"].contains(&s.target_channel.as_str()) {
        return Err(b.invalid("target_channel", "must be push, sms or email"));
    }
    Ok(Arc::new(OneSignal::new(
        b.base_url("https://api.onesignal.com")?,
        s.app_id,
        b.secret("api_key", &s.api_key)?,
        s.target_channel,
        b.link_secret,
    )))
}

fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A configured OneSignal app.
pub struct OneSignal {
    base_url: String,
    app_id: String,
    api_key: String,
    target_channel: String,
    keys: hmac::Key,
}

impl std::fmt::Debug for OneSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneSignal")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("target_channel", &self.target_channel)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    errors: Option<serde_json::Value>,
}

impl OneSignal {
    /// An app; idempotency keys are derived from the hub's link secret.
    pub fn new(
        base_url: String,
        app_id: String,
        api_key: String,
        target_channel: String,
        link_secret: &[u8],
    ) -> Self {
        let base = hmac::Key::new(hmac::HMAC_SHA256, link_secret);
        let derived = hmac::sign(&base, b"doorstep onesignal idempotency keys");
        Self {
            base_url,
            app_id,
            api_key,
            target_channel,
            keys: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The idempotency key of an outbox row: a version-4-shaped UUID from a keyed hash
    /// of the row id, the same on every attempt.
    pub fn idempotency_key(&self, outbox_id: i64) -> String {
        let tag = hmac::sign(&self.keys, format!("outbox:{outbox_id}").as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&tag.as_ref()[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    }

    /// The request body for a message.
    pub fn request_body(&self, msg: &Outgoing) -> serde_json::Value {
        let language = msg.locale.split(['-', '_']).next().unwrap_or("en").to_ascii_lowercase();
        let mut headings = json!({ "en": msg.subject });
        let mut contents = json!({ "en": msg.body });
        if language != "en" && language.len() == 2 {
            headings[&language] = json!(msg.subject);
            contents[&language] = json!(msg.body);
        }
        let mut body = json!({
            "app_id": self.app_id,
            "include_aliases": { "external_id": [msg.recipient] },
            "target_channel": self.target_channel,
            "headings": headings,
            "contents": contents,
            "idempotency_key": self.idempotency_key(msg.outbox_id),
        });
        if !msg.link.is_empty() {
            body["url"] = json!(msg.link);
        }
        body
    }
}

impl Provider for OneSignal {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        Ok(client
            .post(format!("{}/notifications", self.base_url))
            .header(reqwest::header::AUTHORIZATION, format!("Key {}", self.api_key))
            .json(&self.request_body(msg)))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        let created = serde_json::from_slice::<Created>(&reply.body).ok();
        let errors = created
            .as_ref()
            .and_then(|c| c.errors.as_ref())
            .map(|e| e.to_string().chars().take(300).collect::<String>());
        if reply.status.is_success() {
            return match created.and_then(|c| c.id).filter(|id| !id.is_empty()) {
                Some(id) => {
                    SendResult::Accepted { provider_id: Some(id), detail: "onesignal accepted".into() }
                }
                // OneSignal's 200 without an id: nobody to send to, nothing sent.
                None => SendResult::Rejected {
                    detail: format!(
                        "onesignal sent nothing (empty id): {}",
                        errors.as_deref().unwrap_or("no errors given")
                    ),
                },
            };
        }
        let detail = format!("onesignal HTTP {}: {}", reply.status.as_u16(), errors.as_deref().unwrap_or(""));
        super::classify_status(reply.status, reply.retry_after, detail)
    }

    /// The idempotency key makes a repeat return the first result.
    fn resend_safe(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(secret: &[u8]) -> OneSignal {
        let app = "2f3c1a0e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
        OneSignal::new("https://api.onesignal.com".into(), app.into(), "k".into(), "push".into(), secret)
    }

    #[test]
    fn idempotency_keys_are_stable_uuids_per_row_and_database() {
        let a = provider(b"0123456789abcdef0123456789abcdef");
        let key = a.idempotency_key(7);
        assert!(is_uuid(&key), "{key}");
        assert_eq!(&key[14..15], "4", "version 4 shape");
        assert_eq!(key, a.idempotency_key(7), "the same on every attempt");
        assert_ne!(key, a.idempotency_key(8));
        let b = provider(b"another depot's link secret, 32b");
        assert_ne!(key, b.idempotency_key(7), "another database's row 7 is another message");
    }

    #[test]
    fn a_bad_app_id_or_channel_is_refused_with_the_key_named() {
        let try_build = |text: &str| {
            let table: toml::Table = toml::from_str(text).expect("toml");
            let mut b = Build::new("onesignal", TYPE.channels[0], "https://t", b"s", table, None);
            build(&mut b).map(|_| ())
        };
        assert!(try_build("app_id = \"not-a-uuid\"\napi_key = \"k\"").is_err());
        let err = try_build(
            "app_id = \"2f3c1a0e-5b6d-4e7f-8a9b-0c1d2e3f4a5b\"\napi_key = \"k\"\ntarget_channel = \"fax\"",
        )
        .expect_err("fax");
        assert!(err.to_string().contains("providers.onesignal.target_channel"), "{err}");
    }
}
