//! A fleet's certificates, made as fleet IT makes them: a fleet CA, a broker certificate
//! for the broker's loopback address, and a client certificate per van whose common name
//! is the device id. All ECDSA P-256 (rcgen with ring), written as PEM files into a
//! temporary directory that lives as long as the [`FleetPki`].
//!
//! A CA of ECDSA P-256 keys and no intermediate gives the smallest certificates a fleet
//! is likely to use; a fleet with RSA keys or an intermediate CA sends a longer chain in
//! every full TLS handshake.

use std::path::{Path, PathBuf};

use anyhow::Context;
use doorstep_proto::DeviceId;
use doorstep_testkit::mosquitto::BrokerTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The fleet CA, the broker's certificate, and a CA that signed nothing here.
pub struct FleetPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The broker's TLS listener: the fleet CA (which also checks the vans), its
    /// certificate for `localhost` and `127.0.0.1`, and its key.
    pub broker: BrokerTls,
    /// A CA that signed nothing here: a van provisioned with the wrong bundle.
    pub other_ca: PathBuf,
}

impl std::fmt::Debug for FleetPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPki").field("dir", &self.dir.path()).field("broker", &self.broker).finish()
    }
}

/// A van's client certificate and key, as PEM files.
#[derive(Debug, Clone)]
pub struct VanTls {
    /// The fleet CA the van checks the broker against.
    pub ca: PathBuf,
    /// The van's certificate (common name: its device id).
    pub cert: PathBuf,
    /// The van's TLS key.
    pub key: PathBuf,
}

impl VanTls {
    /// The `[uplink.tls]` table of the van's `agent.toml`.
    pub fn uplink_table(&self) -> String {
        uplink_tls(&self.ca, &self.cert, &self.key)
    }
}

/// An `[uplink.tls]` table naming these files.
pub fn uplink_tls(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[uplink.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

fn ca(name: &str) -> anyhow::Result<(CertificateParams, KeyPair)> {
    let key = KeyPair::generate().context("CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok((params, key))
}

/// A certificate signed by `issuer`, and its key, as PEM.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("leaf key")?;
    let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .context("leaf params")?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).context("sign")?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl FleetPki {
    /// A fresh fleet CA and broker certificate.
    pub fn new() -> anyhow::Result<FleetPki> {
        let dir = tempfile::tempdir().context("PKI directory")?;
        let (ca_params, ca_key) = ca("Doorstep test fleet CA")?;
        let ca_cert = ca_params.self_signed(&ca_key).context("self-sign CA")?;
        let issuer = Issuer::new(ca_params, ca_key);
        let (broker_cert, broker_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            "mqtt.fleet.test",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (other_params, other_key) = ca("Some other CA")?;
        let other_ca = other_params.self_signed(&other_key).context("self-sign other CA")?;
        let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).with_context(|| format!("write {}", path.display()))?;
            Ok(path)
        };
        let broker = BrokerTls {
            ca: write("ca.pem", &ca_cert.pem())?,
            cert: write("broker.crt", &broker_cert)?,
            key: write("broker.key", &broker_key)?,
        };
        let other_ca = write("other-ca.pem", &other_ca.pem())?;
        Ok(FleetPki { dir, issuer, broker, other_ca })
    }

    /// A client certificate for `van`, signed by the fleet CA.
    pub fn van(&self, van: &DeviceId) -> anyhow::Result<VanTls> {
        let (cert, key) = leaf(&self.issuer, &[], van.as_str(), ExtendedKeyUsagePurpose::ClientAuth)?;
        let cert_path = self.dir.path().join(format!("{van}.crt"));
        let key_path = self.dir.path().join(format!("{van}-tls.key"));
        std::fs::write(&cert_path, cert).context("write the van's certificate")?;
        std::fs::write(&key_path, key).context("write the van's TLS key")?;
        Ok(VanTls { ca: self.broker.ca.clone(), cert: cert_path, key: key_path })
    }
}
