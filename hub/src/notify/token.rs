//! Signed, expiring tracking-link tokens.
//!
//! A token names one shipment until a deadline and nothing else: base64url (no padding)
//! of `shipment id (8 bytes, big endian) ‖ expiry (8 bytes, seconds since the Unix
//! epoch, big endian) ‖ HMAC-SHA256(secret, DOMAIN ‖ id ‖ expiry)[..16]`. 32 bytes, 43
//! characters: short enough for an SMS, and a 128-bit tag (half the HMAC output, as RFC
//! 2104 allows) is far beyond guessing. The tag is checked in constant time
//! (`ring::hmac::verify`) before the expiry is looked at, so a forged token learns
//! nothing about which shipments exist or when their links expire.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// Domain separation: a tracking token's tag can never be confused with another HMAC
/// the hub computes with the same secret.
const DOMAIN: &[u8] = b"doorstep-tracking-link-v1\0";
/// Bytes of the HMAC tag kept in the token.
const TAG_LEN: usize = 16;
/// Bytes of a decoded token.
const TOKEN_LEN: usize = 8 + 8 + TAG_LEN;

/// Why a token was refused. The page shows none of this; it is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url of the right length, or the tag does not match (tampered, another
    /// secret, or made up).
    #[error("tracking token is malformed or its signature does not match")]
    Invalid,
    /// Genuine, but its deadline has passed.
    #[error("tracking token expired")]
    Expired,
}

/// Signs and checks tracking tokens with the hub's link secret.
#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("LinkSigner").finish_non_exhaustive()
    }
}

impl LinkSigner {
    /// A signer keyed with `secret` (the `hub.link_token_secret`, at least 32 bytes).
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    fn tag(&self, shipment_id: i64, expires_s: i64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(DOMAIN);
        ctx.update(&shipment_id.to_be_bytes());
        ctx.update(&expires_s.to_be_bytes());
        ctx.sign()
    }

    /// A token for `shipment_id`, valid until `expires_ms` (rounded down to a second).
    pub fn sign(&self, shipment_id: i64, expires_ms: i64) -> String {
        let expires_s = expires_ms.div_euclid(1000);
        let mut raw = Vec::with_capacity(TOKEN_LEN);
        raw.extend_from_slice(&shipment_id.to_be_bytes());
        raw.extend_from_slice(&expires_s.to_be_bytes());
        raw.extend_from_slice(&self.tag(shipment_id, expires_s).as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The shipment a token names, if it is genuine and not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<i64, TokenError> {
        self.verify_with_expiry(token, now_ms).map(|(id, _)| id)
    }

    /// The shipment a genuine, unexpired token names, and its deadline (ms since the
    /// Unix epoch, whole seconds): a link withdrawn at time `r` is one whose deadline is
    /// at most `r` plus the link lifetime.
    pub fn verify_with_expiry(&self, token: &str, now_ms: i64) -> Result<(i64, i64), TokenError> {
        if token.len() > 64 {
            return Err(TokenError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Invalid)?;
        if raw.len() != TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (id_bytes, rest) = raw.split_at(8);
        let (exp_bytes, tag) = rest.split_at(8);
        let shipment_id = i64::from_be_bytes(id_bytes.try_into().map_err(|_| TokenError::Invalid)?);
        let expires_s = i64::from_be_bytes(exp_bytes.try_into().map_err(|_| TokenError::Invalid)?);
        // ring compares full tags only; recompute and compare the truncated tag in
        // constant time ourselves.
        let expected = self.tag(shipment_id, expires_s);
        if !constant_time_eq(&expected.as_ref()[..TAG_LEN], tag) {
            return Err(TokenError::Invalid);
        }
        if now_ms.div_euclid(1000) >= expires_s {
            return Err(TokenError::Expired);
        }
        Ok((shipment_id, expires_s.saturating_mul(1000)))
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_names_its_shipment_until_it_expires() {
        let signer = LinkSigner::new(SECRET);
        let token = signer.sign(42, 10_000_000);
        assert_eq!(token.len(), 43);
        assert_eq!(signer.verify(&token, 9_999_000), Ok(42));
        assert_eq!(signer.verify(&token, 10_000_000), Err(TokenError::Expired));
    }

    #[test]
    fn a_tampered_token_or_another_secret_is_invalid() {
        let signer = LinkSigner::new(SECRET);
        let token = signer.sign(42, 10_000_000);
        let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("b64");
        raw[7] ^= 1; // shipment 43
        assert_eq!(signer.verify(&URL_SAFE_NO_PAD.encode(&raw), 0), Err(TokenError::Invalid));
        let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("b64");
        raw[15] ^= 0x40; // a later expiry
        assert_eq!(signer.verify(&URL_SAFE_NO_PAD.encode(&raw), 0), Err(TokenError::Invalid));
        let other = LinkSigner::new(b"another secret, also 32 bytes long!");
        assert_eq!(other.verify(&token, 0), Err(TokenError::Invalid));
        for junk in ["", "abc", "!!!!", &"A".repeat(43), &"A".repeat(200)] {
            assert_eq!(signer.verify(junk, 0), Err(TokenError::Invalid), "{junk}");
        }
    }

    #[test]
    fn an_expired_forgery_is_invalid_not_expired() {
        // The expiry is only looked at after the tag matched: a forgery learns nothing.
        let signer = LinkSigner::new(SECRET);
        let mut raw = URL_SAFE_NO_PAD.decode(signer.sign(1, 1000)).expect("b64");
        raw[20] ^= 1;
        assert_eq!(signer.verify(&URL_SAFE_NO_PAD.encode(&raw), 5_000), Err(TokenError::Invalid));
    }
}
