//! The PEM files of a TLS broker connection, and the rustls client config they make.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// TLS material for the broker connection (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate chain, for mutual TLS (a van's names its device id).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client private key (PKCS#8, PKCS#1 or SEC1 PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// Why the TLS files cannot make a client config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or holds the wrong thing.
    #[error("TLS file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of `cert` and `key` was given.
    #[error("cert and key must be given together")]
    Unpaired,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

fn certificates(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A rustls client config (ring provider, safe default protocol versions) trusting the
/// CA file, with the client certificate when one is given.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&files.ca)? {
        roots.add(cert).map_err(|e| bad(&files.ca, e))?;
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&files.ca, e))?
            .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| bad(key, e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::Unpaired),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_and_unpaired_files_are_named_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = TlsFiles { ca: dir.path().join("ca.pem"), cert: None, key: None };
        assert!(matches!(client_config(&missing), Err(TlsError::File { path, .. }) if path == missing.ca));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err = client_config(&TlsFiles { ca: empty, cert: None, key: None }).expect_err("empty");
        assert!(err.to_string().contains("holds no PEM certificate"), "{err}");
        let unpaired =
            TlsFiles { ca: dir.path().join("ca.pem"), cert: Some(dir.path().join("c.pem")), key: None };
        assert!(matches!(client_config(&unpaired), Err(TlsError::File { .. } | TlsError::Unpaired)));
    }
}
