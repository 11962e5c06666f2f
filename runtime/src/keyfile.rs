//! Signing key files (PKCS#8 Ed25519): the device key in the van, the hub key at the hub.
//!
//! A new key is written beside its path with mode 0600 from the first byte, synced, then
//! renamed over the path: the private key is never readable by others, not even for a
//! moment, and a crash leaves either no key or the whole key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use doorstep_proto::{PublicKey, SigningKey};

/// Why a key file could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The path already holds a key and replacing it was not asked for.
    #[error("{} already exists", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a PKCS#8 Ed25519 key, or no key could be generated.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.to_owned(), source }
}

/// Generates a key and writes it to `path` (mode 0600), creating the directory; refuses
/// to replace an existing file unless `replace`. Returns the public key to register.
pub fn create(path: &Path, replace: bool) -> Result<PublicKey, KeyFileError> {
    if path.exists() && !replace {
        return Err(KeyFileError::Exists { path: path.to_owned() });
    }
    let invalid =
        |e: &dyn std::fmt::Display| KeyFileError::Invalid { path: path.to_owned(), message: e.to_string() };
    let pkcs8 = SigningKey::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|e| invalid(&e))?;
    let key = SigningKey::from_pkcs8(&pkcs8).map_err(|e| invalid(&e))?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    file.write_all(&pkcs8).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(key.public_key())
}

/// Reads a key file.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let pkcs8 = std::fs::read(path).map_err(io(path))?;
    SigningKey::from_pkcs8(&pkcs8)
        .map_err(|e| KeyFileError::Invalid { path: path.to_owned(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_created_key_is_private_loads_back_and_is_not_replaced_by_accident() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/device.key");
        let public = create(&path, false).expect("create");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).expect("load").public_key(), public);
        assert!(matches!(create(&path, false), Err(KeyFileError::Exists { .. })));
        assert_ne!(create(&path, true).expect("replace"), public);
        std::fs::write(&path, b"not a key").expect("write");
        assert!(matches!(load(&path), Err(KeyFileError::Invalid { .. })));
        assert!(matches!(load(&dir.path().join("missing")), Err(KeyFileError::Io { .. })));
    }
}
