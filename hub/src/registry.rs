//! The device registry: which device owns which Ed25519 key, and whether it is trusted.
//!
//! The registry lives in the hub's SQLite (`devices` table, written by
//! `doorstep-hub device add|revoke`, possibly while `serve` runs). Verifier threads need
//! the keys on every message, so [`Keys`] holds an in-memory snapshot that implements
//! proto's [`Keyring`]: revoked keys are never in it. The snapshot is refreshed
//! periodically and whenever an unknown key id shows up; the writer re-checks each
//! event's device and key inside its transaction, so a revocation is exact at commit
//! even if a verifier's snapshot is a moment old.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use doorstep_proto::{FleetId, KeyId, Keyring, PublicKey, TrustedKey};

use crate::store::{Store, StoreError};

/// Why a public key argument could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyArgError {
    /// The file could not be read.
    #[error("cannot read public key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not `ed25519:<64 hex digits>`.
    #[error("{0}: {1}")]
    Bad(String, doorstep_proto::KeyError),
}

/// Reads a public key given as `ed25519:<hex>` or as the path of a file holding that
/// text (the `device.pub` the agent's keygen writes).
pub fn parse_key_arg(arg: &str) -> Result<PublicKey, KeyArgError> {
    if arg.trim_start().starts_with(doorstep_proto::key::PUBLIC_KEY_PREFIX) {
        return PublicKey::from_text(arg).map_err(|e| KeyArgError::Bad("public key argument".into(), e));
    }
    let text = std::fs::read_to_string(Path::new(arg))
        .map_err(|source| KeyArgError::Read { path: arg.to_owned(), source })?;
    PublicKey::from_text(&text).map_err(|e| KeyArgError::Bad(format!("public key file {arg}"), e))
}

/// A snapshot of the active devices' keys, shared by the verifier threads.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    inner: Arc<RwLock<HashMap<KeyId, (FleetId, TrustedKey)>>>,
}

impl Keys {
    /// Replaces the snapshot with the store's active keys.
    pub fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        let keys = store.active_keys()?;
        let n = keys.len();
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    /// The fleet of the device owning a key id, if active.
    pub fn fleet_of(&self, id: &KeyId) -> Option<FleetId> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).get(id).map(|(f, _)| f.clone())
    }

    /// Whether a device is in the snapshot (active).
    pub fn has_device(&self, device: &doorstep_proto::DeviceId) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).values().any(|(_, k)| k.device == *device)
    }

    /// Number of active keys.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no device is active.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Keyring for Keys {
    fn trusted_key(&self, id: &KeyId) -> Option<TrustedKey> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).get(id).map(|(_, k)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_proto::{DeviceId, SigningKey};

    #[test]
    fn key_arguments_are_text_or_a_keygen_file() {
        let key = SigningKey::from_seed(&[3; 32]).expect("seed").public_key();
        assert_eq!(parse_key_arg(&key.to_string()).expect("text"), key);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("device.pub");
        std::fs::write(&path, format!("{key}\n")).expect("write");
        assert_eq!(parse_key_arg(&path.display().to_string()).expect("file"), key);
        assert!(matches!(parse_key_arg("ed25519:zz"), Err(KeyArgError::Bad(..))));
        assert!(matches!(parse_key_arg("/nonexistent/device.pub"), Err(KeyArgError::Read { .. })));
    }

    #[test]
    fn the_snapshot_never_holds_revoked_keys() {
        let mut store = Store::open_in_memory().expect("store");
        let fleet = FleetId::new("acme").expect("fleet");
        let van = DeviceId::new("van-1").expect("id");
        let key = SigningKey::from_seed(&[4; 32]).expect("seed").public_key();
        store.add_device(&fleet, &van, &key, false, 0).expect("add");
        let keys = Keys::default();
        keys.reload(&store).expect("reload");
        assert!(keys.trusted_key(&key.key_id()).is_some());
        store.revoke_device(&van, 1).expect("revoke");
        keys.reload(&store).expect("reload");
        assert!(keys.trusted_key(&key.key_id()).is_none());
        assert!(!keys.has_device(&van));
    }
}
