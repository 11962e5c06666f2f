//! Carrier and provider webhook signatures, computed as each vendor documents them, for
//! tests and the demo that post to the hub as the vendor would.

use base64::Engine as _;
use unicode_normalization::UnicodeNormalization as _;

fn hmac_sha256(secret: &[u8], body: &[u8]) -> ring::hmac::Tag {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), body)
}

/// AfterShip's `aftership-hmac-sha256` header: base64 of the HMAC-SHA256 of the raw body.
pub const AFTERSHIP_HEADER: &str = "aftership-hmac-sha256";

/// The value of [`AFTERSHIP_HEADER`] for `body`.
pub fn aftership(secret: &str, body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret.as_bytes(), body))
}

/// Shopify's `X-Shopify-Hmac-Sha256` header.
pub const SHOPIFY_HEADER: &str = "x-shopify-hmac-sha256";

/// The value of [`SHOPIFY_HEADER`] for `body`: base64 of the HMAC-SHA256 of the raw
/// body with the app's client secret (AfterShip's scheme).
pub fn shopify(secret: &str, body: &[u8]) -> String {
    aftership(secret, body)
}

/// WooCommerce's `X-WC-Webhook-Signature` header.
pub const WOOCOMMERCE_HEADER: &str = "x-wc-webhook-signature";

/// The value of [`WOOCOMMERCE_HEADER`] for `body`: base64 of the HMAC-SHA256 of the raw
/// body with the webhook's secret.
pub fn woocommerce(secret: &str, body: &[u8]) -> String {
    aftership(secret, body)
}

/// EasyPost's `x-hmac-signature` header.
pub const EASYPOST_HEADER: &str = "x-hmac-signature";

/// The value of [`EASYPOST_HEADER`] for `body`: `hmac-sha256-hex=` and the lowercase hex
/// HMAC-SHA256 of the body, keyed with the NFKD normal form of the secret.
pub fn easypost(secret: &str, body: &[u8]) -> String {
    let key: String = secret.nfkd().collect();
    format!("hmac-sha256-hex={}", hex::encode(hmac_sha256(key.as_bytes(), body)))
}

/// Meta's (WhatsApp Cloud API) `x-hub-signature-256` header.
pub const META_HEADER: &str = "x-hub-signature-256";

/// The value of [`META_HEADER`] for `body`: `sha256=` and the lowercase hex HMAC-SHA256
/// of the body with the app secret.
pub fn meta(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), body)))
}

/// Zendesk's `X-Zendesk-Webhook-Signature` header.
pub const ZENDESK_HEADER: &str = "x-zendesk-webhook-signature";
/// Zendesk's `X-Zendesk-Webhook-Signature-Timestamp` header.
pub const ZENDESK_TIMESTAMP_HEADER: &str = "x-zendesk-webhook-signature-timestamp";

/// The value of [`ZENDESK_HEADER`] for `body` sent at `timestamp` (the value of
/// [`ZENDESK_TIMESTAMP_HEADER`]): base64 of the HMAC-SHA256 of the timestamp followed by
/// the raw body, with the webhook's signing secret.
pub fn zendesk(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    aftership(secret, &signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_vendors_published_examples() {
        // RFC 4231 test case 2 ("Jefe", "what do ya want for nothing?"): the HMAC every
        // carrier's scheme wraps.
        let body = b"what do ya want for nothing?";
        let hex_tag = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(easypost("Jefe", body), format!("hmac-sha256-hex={hex_tag}"));
        assert_eq!(meta("Jefe", body), format!("sha256={hex_tag}"));
        let bytes = hex::decode(hex_tag).unwrap_or_default();
        assert_eq!(aftership("Jefe", body), base64::engine::general_purpose::STANDARD.encode(bytes));
        // NFKD: a composed and a decomposed secret sign alike.
        assert_eq!(easypost("caf\u{e9}", body), easypost("cafe\u{301}", body));
    }
}
