//! The configuration of what reaches the hub from outside a van: carriers' webhooks and
//! polling (`[carriers.*]`), order systems (`[orders.*]`) and helpdesks (`[support.*]`).

use super::*;

/// `[carriers]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriersSection {
    /// AfterShip.
    #[serde(default)]
    pub aftership: Option<AfterShipSection>,
    /// EasyPost.
    #[serde(default)]
    pub easypost: Option<SecretSection>,
    /// ShipEngine.
    #[serde(default)]
    pub shipengine: Option<ShipEngineSection>,
}

/// A carrier with an HMAC secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSection {
    /// The webhook secret, inline or `file:/path`; absent = webhooks from this carrier
    /// are refused.
    #[serde(default)]
    pub secret: Option<String>,
}

/// ShipEngine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipEngineSection {
    /// JWKS document or PEM public key file.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// Key id of a PEM public key.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Timestamp window, seconds.
    #[serde(default = "default_window")]
    pub timestamp_window_s: u64,
    /// The API key for polling, inline or `file:/path`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The carriers whose shipments are polled.
    #[serde(default)]
    pub poll: Vec<String>,
    /// ShipEngine's base URL.
    #[serde(default = "default_shipengine_url")]
    pub poll_base_url: String,
    /// Polls a second, at most.
    #[serde(default = "default_poll_per_second")]
    pub poll_per_second: f64,
    /// From a shipment's creation to its first poll, seconds.
    #[serde(default = "default_poll_first")]
    pub poll_first_s: u64,
    /// Between polls while the status moves, seconds.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_s: u64,
    /// The longest wait between polls, seconds.
    #[serde(default = "default_poll_max_interval")]
    pub poll_max_interval_s: u64,
    /// Shipments older than this are not polled, days.
    #[serde(default = "default_poll_max_age")]
    pub poll_max_age_days: u64,
    /// Carrier name → ShipEngine `carrier_code`, beyond the built-in ones.
    #[serde(default)]
    pub carrier_codes: BTreeMap<String, String>,
}

pub(super) fn default_window() -> u64 {
    300
}
fn default_shipengine_url() -> String {
    crate::carrier::poll::DEFAULT_BASE_URL.into()
}
fn default_poll_per_second() -> f64 {
    2.0
}
fn default_poll_first() -> u64 {
    60
}
fn default_poll_interval() -> u64 {
    1800
}
fn default_poll_max_interval() -> u64 {
    6 * 3600
}
fn default_poll_max_age() -> u64 {
    30
}

/// AfterShip: its webhook secret, and registering new shipments with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterShipSection {
    /// The webhook secret, inline or `file:/path`; absent = AfterShip webhooks are refused.
    #[serde(default)]
    pub secret: Option<String>,
    /// The API key for registering, inline or `file:/path`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The carriers whose shipments are registered.
    #[serde(default)]
    pub register: Vec<String>,
    /// AfterShip's base URL.
    #[serde(default = "default_aftership_url")]
    pub api_base_url: String,
    /// Registrations a second, at most.
    #[serde(default = "default_register_per_second")]
    pub register_per_second: f64,
    /// Carrier name → AfterShip courier slug, beyond the built-in ones.
    #[serde(default)]
    pub slugs: BTreeMap<String, String>,
}

fn default_aftership_url() -> String {
    crate::carrier::registration::DEFAULT_BASE_URL.into()
}
fn default_register_per_second() -> f64 {
    10.0
}

/// A vendor's base URL, without a trailing slash, or why it is refused.
fn base_url(what: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(['?', '#', ' ']) {
        return Err(invalid(format!("{what} {url:?} must be an https:// URL without a query")));
    }
    Ok(url.to_owned())
}

/// A per-second rate, or why it is refused.
fn per_second(what: &str, value: f64) -> Result<f64, ConfigError> {
    if !(value.is_finite() && (0.01..=100.0).contains(&value)) {
        return Err(invalid(format!("{what} = {value} must be 0.01 to 100 (requests a second)")));
    }
    Ok(value)
}

/// The API key a listed job needs, loaded.
fn api_key(what: &str, key: Option<&str>, list: &str) -> Result<String, ConfigError> {
    let key = key.map(|k| load_secret(what, k)).transpose()?.unwrap_or_default();
    if key.trim().is_empty() {
        return Err(invalid(format!(
            "{list} names carriers, so {what} must be set (inline or \"file:/path\")"
        )));
    }
    Ok(key.trim().to_owned())
}

impl ShipEngineSection {
    /// Polling, validated; `None` when no carrier is listed in `poll`.
    pub(super) fn polling(&self) -> Result<Option<crate::carrier::poll::PollSettings>, ConfigError> {
        use crate::carrier::{jobs, poll, schedule};
        if self.poll.iter().all(|c| c.trim().is_empty()) {
            return Ok(None);
        }
        let api_key =
            api_key("carriers.shipengine.api_key", self.api_key.as_deref(), "carriers.shipengine.poll")?;
        if self.poll_first_s > 86_400 {
            return Err(invalid("carriers.shipengine.poll_first_s must be 0 to 86400 (seconds)"));
        }
        if !(60..=86_400).contains(&self.poll_interval_s) {
            return Err(invalid("carriers.shipengine.poll_interval_s must be 60 to 86400 (seconds)"));
        }
        if !(self.poll_interval_s..=7 * 86_400).contains(&self.poll_max_interval_s) {
            return Err(invalid(
                "carriers.shipengine.poll_max_interval_s must be at least poll_interval_s and at most 604800 (seconds)",
            ));
        }
        if !(1..=365).contains(&self.poll_max_age_days) {
            return Err(invalid("carriers.shipengine.poll_max_age_days must be 1 to 365"));
        }
        let poll: Vec<String> = self.poll.iter().filter(|c| !c.trim().is_empty()).cloned().collect();
        Ok(Some(poll::PollSettings {
            api_key,
            base_url: base_url("carriers.shipengine.poll_base_url", &self.poll_base_url)?,
            carrier_codes: poll::PollSettings::codes_for(&poll, &self.carrier_codes),
            jobs: jobs::JobSettings {
                per_second: per_second("carriers.shipengine.poll_per_second", self.poll_per_second)?,
                schedule: schedule::Schedule {
                    first: Duration::from_secs(self.poll_first_s),
                    interval: Duration::from_secs(self.poll_interval_s),
                    max_interval: Duration::from_secs(self.poll_max_interval_s),
                    retry: poll::RETRY,
                    max_age: Duration::from_secs(self.poll_max_age_days * 86_400),
                },
                sweep_every: jobs::SWEEP_EVERY,
                lease: jobs::LEASE,
                request_timeout: jobs::REQUEST_TIMEOUT,
            },
        }))
    }
}

impl AfterShipSection {
    /// Registration, validated; `None` when no carrier is listed in `register`.
    pub(super) fn registration(
        &self,
    ) -> Result<Option<crate::carrier::registration::RegisterSettings>, ConfigError> {
        use crate::carrier::{jobs, registration};
        if self.register.iter().all(|c| c.trim().is_empty()) {
            return Ok(None);
        }
        let api_key =
            api_key("carriers.aftership.api_key", self.api_key.as_deref(), "carriers.aftership.register")?;
        let register: Vec<String> = self.register.iter().filter(|c| !c.trim().is_empty()).cloned().collect();
        Ok(Some(registration::RegisterSettings {
            api_key,
            base_url: base_url("carriers.aftership.api_base_url", &self.api_base_url)?,
            slugs: registration::RegisterSettings::slugs_for(&register, &self.slugs),
            jobs: jobs::JobSettings {
                per_second: per_second("carriers.aftership.register_per_second", self.register_per_second)?,
                schedule: registration::SCHEDULE,
                sweep_every: jobs::SWEEP_EVERY,
                lease: jobs::LEASE,
                request_timeout: jobs::REQUEST_TIMEOUT,
            },
        }))
    }
}

/// `[orders]`: order systems whose webhooks create shipments and raise "dispatched".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersSection {
    /// Locale of shipments whose order has none.
    #[serde(default = "default_order_locale")]
    pub locale: String,
    /// Time zone of shipments an order system creates.
    #[serde(default = "default_order_time_zone")]
    pub time_zone: String,
    /// Shopify.
    #[serde(default)]
    pub shopify: Option<SecretSection>,
    /// WooCommerce.
    #[serde(default)]
    pub woocommerce: Option<SecretSection>,
}

impl Default for OrdersSection {
    fn default() -> Self {
        OrdersSection {
            locale: default_order_locale(),
            time_zone: default_order_time_zone(),
            shopify: None,
            woocommerce: None,
        }
    }
}

fn default_order_locale() -> String {
    "en".into()
}

fn default_order_time_zone() -> String {
    "UTC".into()
}

/// `[orders]`, validated, with the secrets loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct OrderSettings {
    /// Locale of shipments whose order has none.
    pub locale: String,
    /// Time zone of shipments an order system creates.
    pub time_zone: String,
    /// Shopify's client secret.
    pub shopify_secret: Option<String>,
    /// WooCommerce's webhook secret.
    pub woocommerce_secret: Option<String>,
}

impl Default for OrderSettings {
    fn default() -> Self {
        let section = OrdersSection::default();
        OrderSettings {
            locale: section.locale,
            time_zone: section.time_zone,
            shopify_secret: None,
            woocommerce_secret: None,
        }
    }
}

impl std::fmt::Debug for OrderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("OrderSettings")
            .field("locale", &self.locale)
            .field("time_zone", &self.time_zone)
            .field("shopify", &self.shopify_secret.is_some())
            .field("woocommerce", &self.woocommerce_secret.is_some())
            .finish()
    }
}

impl OrdersSection {
    pub(super) fn settings(&self) -> Result<OrderSettings, ConfigError> {
        let token = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.locale.is_empty() || self.locale.len() > 35 || !self.locale.chars().all(token) {
            return Err(invalid(format!(
                "orders.locale {:?} is not a locale such as en or de-DE",
                self.locale
            )));
        }
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Err(invalid(format!(
                "orders.time_zone {:?} is not an IANA time zone this hub knows (such as Europe/Berlin)",
                self.time_zone
            )));
        }
        let secret = |what: &str, section: &Option<SecretSection>| {
            section.as_ref().and_then(|c| c.secret.as_deref()).map(|s| load_secret(what, s)).transpose()
        };
        Ok(OrderSettings {
            locale: self.locale.clone(),
            time_zone: self.time_zone.clone(),
            shopify_secret: secret("orders.shopify.secret", &self.shopify)?,
            woocommerce_secret: secret("orders.woocommerce.secret", &self.woocommerce)?,
        })
    }
}

/// `[support]`: helpdesks whose new tickets are support contacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportSection {
    /// Tickets with this tag are the hub's own.
    #[serde(default = "default_ignore_tag")]
    pub ignore_tag: String,
    /// Zendesk.
    #[serde(default)]
    pub zendesk: Option<SecretSection>,
    /// Freshdesk.
    #[serde(default)]
    pub freshdesk: Option<FreshdeskSection>,
}

impl Default for SupportSection {
    fn default() -> Self {
        SupportSection { ignore_tag: default_ignore_tag(), zendesk: None, freshdesk: None }
    }
}

fn default_ignore_tag() -> String {
    "doorstep".into()
}

/// `[support.freshdesk]`: the header its automation rule sends, with the shared secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshdeskSection {
    /// The header's name.
    #[serde(default)]
    pub header: Option<String>,
    /// The secret, inline or `file:/path`.
    #[serde(default)]
    pub secret: Option<String>,
}

/// `[support]`, validated, with the secrets loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct SupportSettings {
    /// Tickets with this tag are the hub's own.
    pub ignore_tag: String,
    /// Zendesk's webhook signing secret.
    pub zendesk_secret: Option<String>,
    /// Freshdesk's header and secret.
    pub freshdesk: Option<(String, String)>,
}

impl Default for SupportSettings {
    fn default() -> Self {
        SupportSettings { ignore_tag: default_ignore_tag(), zendesk_secret: None, freshdesk: None }
    }
}

impl std::fmt::Debug for SupportSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("SupportSettings")
            .field("ignore_tag", &self.ignore_tag)
            .field("zendesk", &self.zendesk_secret.is_some())
            .field("freshdesk", &self.freshdesk.as_ref().map(|(header, _)| header))
            .finish()
    }
}

impl SupportSection {
    pub(super) fn settings(&self) -> Result<SupportSettings, ConfigError> {
        if self.ignore_tag.trim().is_empty() {
            return Err(invalid(
                "support.ignore_tag must not be empty (the tag the hub's own tickets carry)",
            ));
        }
        let zendesk_secret = self
            .zendesk
            .as_ref()
            .and_then(|c| c.secret.as_deref())
            .map(|s| load_secret("support.zendesk.secret", s))
            .transpose()?;
        let freshdesk = match self.freshdesk.as_ref().map(|f| (f.header.as_deref(), f.secret.as_deref())) {
            None | Some((None, None)) => None,
            Some((Some(header), Some(secret))) => {
                Some((header.to_owned(), load_secret("support.freshdesk.secret", secret)?))
            }
            Some(_) => {
                return Err(invalid(
                    "support.freshdesk needs both header and secret (the header its webhook sends, and the value)",
                ));
            }
        };
        Ok(SupportSettings { ignore_tag: self.ignore_tag.trim().to_owned(), zendesk_secret, freshdesk })
    }
}
