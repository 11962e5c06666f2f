//! A signed generic webhook to a customer's own endpoint, Standard Webhooks style.
//!
//! Headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature:
//! v1,<base64 HMAC-SHA256(key, id "." timestamp "." body)>`, the key being the base64
//! part of a `whsec_<base64>` secret. The id is derived from the outbox row, so it is the
//! same on every attempt: Standard Webhooks receivers deduplicate on it, which makes
//! re-sending after an ambiguous failure (a timeout once the request was out) safe, and
//! this is the one channel the dispatcher retries after one.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use serde_json::json;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult};
use crate::store::ContactChannel;

/// Why a webhook secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be \"whsec_\" followed by base64 of at least 24 bytes")]
pub struct SecretError;

/// Signs (and verifies) Standard Webhooks signatures.
#[derive(Clone)]
pub struct WebhookSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSigner").finish_non_exhaustive()
    }
}

impl WebhookSigner {
    /// A signer for a `whsec_<base64>` secret.
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let b64 = secret.trim().strip_prefix("whsec_").ok_or(SecretError)?;
        let key = STANDARD.decode(b64).map_err(|_| SecretError)?;
        if key.len() < 24 {
            return Err(SecretError);
        }
        Ok(Self { key: hmac::Key::new(hmac::HMAC_SHA256, &key) })
    }

    fn tag(&self, id: &str, timestamp_s: i64, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp_s.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp_s: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.tag(id, timestamp_s, body).as_ref()))
    }

    /// Whether any `v1,` entry of a (space-separated) signature header matches.
    pub fn verify(&self, id: &str, timestamp_s: i64, body: &[u8], header: &str) -> bool {
        let expected = self.tag(id, timestamp_s, body);
        header.split(' ').filter_map(|entry| entry.strip_prefix("v1,")).any(|sig| {
            STANDARD.decode(sig).is_ok_and(|sig| super::token::constant_time_eq(expected.as_ref(), &sig))
        })
    }
}

/// The `webhook-id` of an outbox row: the same on every attempt.
pub fn message_id(outbox_id: i64) -> String {
    format!("msg_doorstep_{outbox_id}")
}

/// The JSON payload for a message.
pub fn payload(msg: &Outgoing, now_ms: i64) -> serde_json::Value {
    let at = jiff::Timestamp::from_millisecond(now_ms).map(|t| t.to_string()).unwrap_or_default();
    json!({
        "type": "shipment.milestone",
        "timestamp": at,
        "data": {
            "tracking_number": msg.tracking_number,
            "milestone": crate::store::milestone_name(msg.milestone),
            "detail": msg.detail,
            "tracking_url": msg.link,
            "message": msg.body,
        },
    })
}

/// `[[notify.providers]]` entries of type `webhook`: the shipper's own endpoint, the
/// URL each shipment's webhook contact names.
pub const TYPE: ProviderType = ProviderType {
    kind: "webhook",
    channels: &[Channel::Customer(ContactChannel::Webhook)],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# secret = "whsec_..."                 # Standard Webhooks signing secret
"#,
    build,
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    secret: String,
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    let secret = b.secret("secret", &s.secret)?;
    Ok(Arc::new(WebhookSigner::new(&secret).map_err(|e| b.invalid("secret", e.to_string()))?))
}

impl Provider for WebhookSigner {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        let now_ms = super::now_ms();
        let id = message_id(msg.outbox_id);
        let timestamp_s = now_ms.div_euclid(1000);
        let body = payload(msg, now_ms).to_string().into_bytes();
        let signature = self.sign(&id, timestamp_s, &body);
        Ok(client
            .post(&msg.recipient)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature)
            .body(body))
    }

    fn read(&self, msg: &Outgoing, reply: &Reply) -> SendResult {
        if reply.status.is_success() {
            return SendResult::Accepted {
                provider_id: Some(message_id(msg.outbox_id)),
                detail: format!("HTTP {}", reply.status.as_u16()),
            };
        }
        super::classify_status(
            reply.status,
            reply.retry_after,
            format!("webhook HTTP {}", reply.status.as_u16()),
        )
    }

    /// The same `webhook-id` on every attempt: receivers deduplicate on it.
    fn resend_safe(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_reference_vector_verifies() {
        // The Standard Webhooks specification's test vector.
        let signer = WebhookSigner::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        let sig = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(signer.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &format!("v1,bogus {sig}")));
        assert!(!signer.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, &sig));
        assert!(!signer.verify("msg_other", 1614265330, body, &sig));
        assert!(WebhookSigner::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSigner::new("whsec_c2hvcnQ=").is_err());
    }
}
