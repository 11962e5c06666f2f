//! The carriers' webhooks as inbound sources: each [`Verifier`] is a [`Source`] whose
//! delivery id is the carrier event's dedupe key.

use super::{Inbound, Received, Refused, Source, SourceError};
use crate::carrier::{self, Headers, Verifier};
use crate::config::CarrierSecrets;

impl Source for Verifier {
    fn slug(&self) -> &'static str {
        carrier::carrier_slug(self.carrier())
    }

    fn receive(&self, headers: &dyn Headers, body: &[u8], now_ms: i64) -> Result<Received, Refused> {
        let item = match Verifier::receive(self, headers, body, now_ms)? {
            Some(event) => Inbound::Carrier(event),
            None => Inbound::Ignored("not_a_tracking_update"),
        };
        let delivery_id = match &item {
            Inbound::Carrier(event) => event.event_key.clone(),
            _ => String::new(),
        };
        Ok(Received { delivery_id, triggered_ms: None, item })
    }
}

/// The configured carrier webhook verifiers.
#[derive(Debug, Default)]
pub struct CarrierVerifiers {
    /// AfterShip.
    pub aftership: Option<Verifier>,
    /// EasyPost.
    pub easypost: Option<Verifier>,
    /// ShipEngine.
    pub shipengine: Option<Verifier>,
}

/// Why a carrier verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[error("carriers.{carrier}: {source}")]
pub struct VerifierError {
    /// The config section.
    pub carrier: &'static str,
    /// What is wrong.
    pub source: carrier::KeyError,
}

impl CarrierVerifiers {
    /// Builds the verifiers the configuration has secrets for.
    pub fn from_secrets(secrets: &CarrierSecrets) -> Result<Self, VerifierError> {
        let err = |carrier| move |source| VerifierError { carrier, source };
        let aftership = secrets
            .aftership
            .as_deref()
            .map(|s| carrier::aftership::Verifier::new(s).map(Verifier::AfterShip))
            .transpose()
            .map_err(err("aftership"))?;
        let easypost = secrets
            .easypost
            .as_deref()
            .map(|s| carrier::easypost::Verifier::new(s).map(Verifier::EasyPost))
            .transpose()
            .map_err(err("easypost"))?;
        let shipengine = match &secrets.shipengine_keys {
            None => None,
            Some(text) => {
                let keys = if text.trim_start().starts_with('{') {
                    carrier::shipengine::Keys::from_jwks_json(text.as_bytes()).map_err(err("shipengine"))?
                } else {
                    let mut keys = carrier::shipengine::Keys::new();
                    let id = secrets.shipengine_key_id.as_deref().unwrap_or("default");
                    keys.add_pem(id, text).map_err(err("shipengine"))?;
                    keys
                };
                let window = i64::try_from(secrets.shipengine_window.as_millis()).unwrap_or(i64::MAX);
                Some(Verifier::ShipEngine(carrier::shipengine::Verifier::new(keys, window)))
            }
        };
        Ok(Self { aftership, easypost, shipengine })
    }
}

impl IntoIterator for CarrierVerifiers {
    type Item = Verifier;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Verifier>, 3>>;

    fn into_iter(self) -> Self::IntoIter {
        [self.aftership, self.easypost, self.shipengine].into_iter().flatten()
    }
}

impl From<VerifierError> for SourceError {
    fn from(e: VerifierError) -> Self {
        let section = match e.carrier {
            "aftership" => "carriers.aftership",
            "easypost" => "carriers.easypost",
            _ => "carriers.shipengine",
        };
        SourceError { section, problem: e.source.to_string() }
    }
}
