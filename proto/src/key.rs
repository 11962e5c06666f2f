//! Ed25519 keys: a device signs its events, the hub signs what it sends to devices.
//!
//! A key is named on the wire by its [`KeyId`], the first 8 bytes of SHA-256 over the
//! public key, so a verifier finds the key before parsing anything the key vouches for,
//! and a device can rotate keys without changing its id. Key generation takes its
//! randomness as an argument: this crate does no I/O.

use std::collections::HashMap;
use std::fmt;

use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::hexbytes::HexBytes;
use crate::ids::DeviceId;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Prefix of a public key's text form, as `doorstep-agent pubkey` prints it.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// The first 8 bytes of SHA-256 of a public key: names the key on the wire.
pub type KeyId = HexBytes<8>;

/// Why a key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The private key file is not an Ed25519 PKCS#8 document.
    #[error("not an Ed25519 PKCS#8 private key ({0}); generate one with `doorstep-agent keygen`")]
    BadPrivateKey(String),
    /// The public key text is not `ed25519:` followed by 64 hex digits.
    #[error(
        "public key must be \"ed25519:\" followed by 64 hex digits, as `doorstep-agent pubkey` prints it"
    )]
    BadPublicKey,
    /// The random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// The key's id on the wire.
    pub fn key_id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        HexBytes(id)
    }

    /// Parses the text form `ed25519:<64 hex digits>` (surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let hex_part = text.trim().strip_prefix(PUBLIC_KEY_PREFIX).ok_or(KeyError::BadPublicKey)?;
        let mut key = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(hex_part, &mut key).map_err(|_| KeyError::BadPublicKey)?;
        Ok(Self(key))
    }

    /// Verifies `signature` over `domain || message`.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        UnparsedPublicKey::new(&ED25519, &self.0).verify(&signed, signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A private Ed25519 key with its public half and key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private key material.
        write!(f, "SigningKey({})", self.public)
    }
}

impl SigningKey {
    /// Generates a new key and returns its PKCS#8 document (what goes in the key file).
    pub fn generate_pkcs8(rng: &dyn SecureRandom) -> Result<Vec<u8>, KeyError> {
        Ed25519KeyPair::generate_pkcs8(rng).map(|doc| doc.as_ref().to_vec()).map_err(|_| KeyError::Random)
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    /// Builds a key from a raw 32-byte seed. Only for test vectors and tests: real keys
    /// come from [`SigningKey::generate_pkcs8`].
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public.copy_from_slice(pair.public_key().as_ref());
        Self { pair, public: PublicKey(public) }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The key's id on the wire.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Signs `signed`, which must already start with the domain-separation prefix.
    pub(crate) fn sign_raw(&self, signed: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(signed).as_ref());
        out
    }
}

/// A key the verifier trusts, and the device it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The device whose events this key signs.
    pub device: DeviceId,
    /// The key.
    pub key: PublicKey,
}

/// Where a verifier finds the key for a key id: the hub's device registry, a test map.
pub trait Keyring {
    /// The trusted key with this id, if any. Revoked keys must not be returned.
    fn trusted_key(&self, id: &KeyId) -> Option<TrustedKey>;
}

impl Keyring for HashMap<KeyId, TrustedKey> {
    fn trusted_key(&self, id: &KeyId) -> Option<TrustedKey> {
        self.get(id).cloned()
    }
}

impl Keyring for TrustedKey {
    fn trusted_key(&self, id: &KeyId) -> Option<TrustedKey> {
        (self.key.key_id() == *id).then(|| self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_through_their_text_form() {
        let key = SigningKey::from_seed(&[7; 32]).expect("seed");
        let text = key.public_key().to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(PublicKey::from_text(&format!("  {text}\n")), Ok(key.public_key()));
        assert_eq!(PublicKey::from_text("ed25519:abcd"), Err(KeyError::BadPublicKey));
        assert_eq!(PublicKey::from_text(&text[8..]), Err(KeyError::BadPublicKey));
    }

    #[test]
    fn generated_keys_load_from_their_pkcs8_document() {
        let doc = SigningKey::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("rng");
        let key = SigningKey::from_pkcs8(&doc).expect("pkcs8");
        assert_eq!(key.key_id(), key.public_key().key_id());
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
    }
}
