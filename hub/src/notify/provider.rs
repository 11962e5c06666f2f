//! The provider seam: what every service Doorstep sends through implements, and the gate
//! each configured provider sits behind.
//!
//! A provider is one module under `notify/` that defines a [`ProviderType`] (its config
//! name, the channels it can carry, its commented sample configuration and a builder) and
//! implements [`Provider`] for what the builder returns: the request for one message (no
//! I/O), how to read the vendor's answer, whether a repeated request is safe, and its
//! callback routes. The registry (`registry.rs`) is the only other place that names it.
//!
//! The dispatcher does the I/O ([`exchange`]): one bounded read of the answer, the
//! classification of transport errors, and `Retry-After`. Every configured provider has a
//! [`Gate`]: its own rate limit, and a circuit that opens after repeated failures or for
//! as long as the vendor asked us to wait, so the next provider of the channel takes over.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use serde::de::DeserializeOwned;

use super::config::{NotifyConfigError, invalid, load_secret};
use super::page::NotifyState;
use super::ratelimit::{Bucket, RateLimit};
use super::{Outgoing, Reply, SendResult};
use crate::store::ContactChannel;

/// What a provider carries: a customer channel, or operations alerts for staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// A customer's contact channel (the shipment's contacts name the recipient).
    Customer(ContactChannel),
    /// Operations alerts to the hub's operators (a chat space, an on-call address).
    Staff,
}

impl Channel {
    /// Its name in the config file and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer(c) => c.as_str(),
            Self::Staff => "staff",
        }
    }

    /// Reads a config name.
    pub fn parse(name: &str) -> Option<Self> {
        if name == "staff" {
            return Some(Self::Staff);
        }
        ContactChannel::ALL.into_iter().find(|c| c.as_str() == name).map(Self::Customer)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One notification service, configured.
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// The request for one message (no I/O). `Err` is a result reached without a request:
    /// a message this provider cannot carry (a missing template, a body over its limit).
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult>;

    /// What the vendor's answer to that request means.
    fn read(&self, msg: &Outgoing, reply: &Reply) -> SendResult;

    /// Whether repeating the request after an ambiguous failure is safe: the request
    /// carries an idempotency key the vendor dedupes on. Only then is a timed-out send
    /// retried; otherwise it becomes `unknown` and is never repeated (a customer texted
    /// twice is worse than an operator looking at one unknown row).
    fn resend_safe(&self) -> bool {
        false
    }

    /// Routes the vendor calls back on (delivery statuses, opt-outs), mounted on the
    /// public listener under `/callbacks/{name}`; `name` is the configured provider's.
    fn callbacks(self: Arc<Self>, name: &str) -> Option<Router<NotifyState>> {
        let _ = name;
        None
    }
}

/// A kind of provider, as the registry lists it.
#[derive(Clone, Copy)]
pub struct ProviderType {
    /// Its `type` in `[[notify.providers]]`.
    pub kind: &'static str,
    /// The channels it can carry; the first is the default.
    pub channels: &'static [Channel],
    /// Its rate limit unless configured (requests per second, burst).
    pub rate: RateLimit,
    /// Its commented sample entry for `--print-default-config` (each line starts `# `).
    pub sample: &'static str,
    /// Builds it from its entry.
    pub build: fn(&mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError>,
}

impl fmt::Debug for ProviderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderType").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// What a builder gets: its entry's own keys and what the hub knows.
#[derive(Debug)]
pub struct Build<'a> {
    /// The provider's configured name (unique; defaults to its type).
    pub name: &'a str,
    /// The channel it was configured for.
    pub channel: Channel,
    /// The public base URL vendors call back on, no trailing slash.
    pub callback_base_url: &'a str,
    /// The hub's link secret (for ids the vendor echoes back, keyed to this database).
    pub link_secret: &'a [u8],
    table: toml::Table,
    base_url: Option<String>,
}

impl<'a> Build<'a> {
    /// A builder's view of one entry (the common keys already taken out).
    pub fn new(
        name: &'a str,
        channel: Channel,
        callback_base_url: &'a str,
        link_secret: &'a [u8],
        table: toml::Table,
        base_url: Option<String>,
    ) -> Self {
        Self { name, channel, callback_base_url, link_secret, table, base_url }
    }

    /// The entry's type-specific keys as the provider's section (which should deny
    /// unknown fields, so a typo is an error).
    pub fn section<T: DeserializeOwned>(&mut self) -> Result<T, NotifyConfigError> {
        let table = std::mem::take(&mut self.table);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(&self.field(""), e.message().to_owned()))
    }

    /// The API base URL: the entry's `base_url` (a regional endpoint, or a loopback
    /// server in tests), else the vendor's.
    pub fn base_url(&mut self, default: &str) -> Result<String, NotifyConfigError> {
        let given = self.base_url.take();
        let url = given.as_deref().unwrap_or(default);
        check_url(&self.field("base_url"), url)
    }

    /// Whether a `base_url` was given and not read (a provider whose URL is its
    /// credential has none).
    pub fn unused_base_url(&self) -> bool {
        self.base_url.is_some()
    }

    /// A secret, inline or `file:/path`.
    pub fn secret(&self, key: &str, value: &str) -> Result<String, NotifyConfigError> {
        let secret = load_secret(&self.field(key), value)?;
        if secret.is_empty() {
            return Err(self.invalid(key, "is empty"));
        }
        Ok(secret)
    }

    /// A URL that is itself the credential (a chat webhook), inline or `file:/path`.
    pub fn secret_url(&self, key: &str, value: &str) -> Result<String, NotifyConfigError> {
        check_url(&self.field(key), &self.secret(key, value)?)
    }

    /// The one key of a provider whose URL is its credential (a chat or Zap webhook):
    /// `webhook_url`, inline or `file:/path`. Any other key is an error.
    pub fn webhook_url(&mut self) -> Result<SecretUrl, NotifyConfigError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Section {
            webhook_url: String,
        }
        let s: Section = self.section()?;
        Ok(SecretUrl(self.secret_url("webhook_url", &s.webhook_url)?))
    }

    /// An error about one of this entry's keys.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> NotifyConfigError {
        invalid(&self.field(key), message)
    }

    /// `{callback_base_url}/callbacks/{name}{suffix}`: where the vendor calls back.
    pub fn callback_url(&self, suffix: &str) -> String {
        format!("{}{}", self.callback_base_url, callback_path(self.name, suffix))
    }

    fn field(&self, key: &str) -> String {
        if key.is_empty() {
            format!("providers.{}", self.name)
        } else {
            format!("providers.{}.{key}", self.name)
        }
    }
}

/// A URL that is itself a credential: never printed (`Debug` shows only that it is set).
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(..)")
    }
}

/// `/callbacks/{name}{suffix}`.
pub fn callback_path(name: &str, suffix: &str) -> String {
    format!("/callbacks/{name}{suffix}")
}

fn check_url(field: &str, value: &str) -> Result<String, NotifyConfigError> {
    let v = value.trim().trim_end_matches('/');
    if v.starts_with("https://") || v.starts_with("http://") {
        Ok(v.to_owned())
    } else {
        Err(invalid(field, "must start with https:// (or http:// for a loopback test server)"))
    }
}

/// Consecutive definite failures that open a provider's circuit.
pub const CIRCUIT_FAILURES: u32 = 5;
/// How long an open circuit stays open before one message may try the provider again.
pub const CIRCUIT_OPEN_MS: i64 = 30_000;

/// A provider's health as the dispatcher sees it (pure: time is an input).
///
/// Opens after [`CIRCUIT_FAILURES`] consecutive failures (connection refused, 429, 5xx,
/// timeouts) for [`CIRCUIT_OPEN_MS`], and for as long as a `Retry-After` asked; an
/// acceptance closes it. A refusal of one message (a bad number) says nothing about the
/// provider and leaves it as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Circuit {
    failures: u32,
    open_until_ms: i64,
}

impl Circuit {
    /// Whether the provider may be tried at `now_ms`.
    pub fn allows(&self, now_ms: i64) -> bool {
        now_ms >= self.open_until_ms
    }

    /// Until when it is open (≤ now when closed).
    pub fn open_until_ms(&self) -> i64 {
        self.open_until_ms
    }

    /// Takes one send's result into account.
    pub fn record(&mut self, result: &SendResult, now_ms: i64) {
        match result {
            SendResult::Accepted { .. } | SendResult::OptedOut { .. } => *self = Self::default(),
            SendResult::Rejected { .. } => {}
            SendResult::Retry { retry_after, .. } => {
                self.failures = self.failures.saturating_add(1);
                if let Some(wait) = retry_after {
                    let until = now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    self.open_until_ms = self.open_until_ms.max(until);
                }
                self.trip(now_ms);
            }
            SendResult::Ambiguous { .. } => {
                self.failures = self.failures.saturating_add(1);
                self.trip(now_ms);
            }
        }
    }

    fn trip(&mut self, now_ms: i64) {
        if self.failures >= CIRCUIT_FAILURES {
            self.open_until_ms = self.open_until_ms.max(now_ms.saturating_add(CIRCUIT_OPEN_MS));
            // Half open afterwards: one more failure opens it again.
            self.failures = CIRCUIT_FAILURES - 1;
        }
    }
}

/// One configured provider: its name, channel, priority, and gate.
#[derive(Debug)]
pub struct Registered {
    /// Its unique name (outcome log, metrics, callback paths).
    pub name: String,
    /// Its type.
    pub kind: &'static str,
    /// What it carries.
    pub channel: Channel,
    /// Lower is tried first.
    pub priority: i64,
    /// The provider.
    pub provider: Arc<dyn Provider>,
    bucket: Bucket,
    circuit: Mutex<Circuit>,
}

impl Registered {
    /// A provider behind its own rate limit and a closed circuit.
    pub fn new(
        name: String,
        kind: &'static str,
        channel: Channel,
        priority: i64,
        rate: RateLimit,
        provider: Arc<dyn Provider>,
    ) -> Self {
        Self {
            name,
            kind,
            channel,
            priority,
            provider,
            bucket: Bucket::new(rate),
            circuit: Mutex::new(Circuit::default()),
        }
    }

    /// The circuit as it is now.
    pub fn circuit(&self) -> Circuit {
        *self.circuit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one message through this provider: waits for its rate limit, sends, reads
    /// the answer, and updates its circuit.
    pub async fn send(&self, client: &reqwest::Client, msg: &Outgoing, now_ms: i64) -> SendResult {
        self.bucket.acquire().await;
        let result = exchange(self.provider.as_ref(), client, msg).await;
        self.circuit.lock().unwrap_or_else(|e| e.into_inner()).record(&result, now_ms);
        result
    }
}

/// Builds, sends and reads one request.
pub async fn exchange(provider: &dyn Provider, client: &reqwest::Client, msg: &Outgoing) -> SendResult {
    let request = match provider.request(client, msg) {
        Ok(request) => request,
        Err(result) => return result,
    };
    match super::read_response(request.send().await).await {
        Ok(reply) => provider.read(msg, &reply),
        Err(result) => result,
    }
}

/// The `Retry-After` an open circuit implies at `now_ms`.
pub fn wait_for(circuit: &Circuit, now_ms: i64) -> Option<Duration> {
    let ms = circuit.open_until_ms().saturating_sub(now_ms);
    (ms > 0).then(|| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(after: Option<u64>) -> SendResult {
        SendResult::Retry { detail: "503".into(), retry_after: after.map(Duration::from_secs) }
    }

    #[test]
    fn the_circuit_opens_after_repeated_failures_and_an_acceptance_closes_it() {
        let mut c = Circuit::default();
        for _ in 0..CIRCUIT_FAILURES - 1 {
            c.record(&retry(None), 0);
            assert!(c.allows(0));
        }
        c.record(&SendResult::Ambiguous { detail: "timeout".into() }, 1_000);
        assert!(!c.allows(1_000));
        assert!(!c.allows(1_000 + CIRCUIT_OPEN_MS - 1));
        assert!(c.allows(1_000 + CIRCUIT_OPEN_MS));
        // Half open: one more failure opens it again.
        c.record(&retry(None), 40_000);
        assert!(!c.allows(40_001));
        c.record(&SendResult::Accepted { provider_id: None, detail: String::new() }, 80_000);
        assert_eq!(c, Circuit::default());
    }

    #[test]
    fn retry_after_holds_the_provider_for_as_long_as_it_asked_and_refusals_change_nothing() {
        let mut c = Circuit::default();
        c.record(&retry(Some(120)), 10_000);
        assert!(!c.allows(129_999));
        assert!(c.allows(130_000));
        assert_eq!(wait_for(&c, 100_000), Some(Duration::from_secs(30)));
        let before = c;
        c.record(&SendResult::Rejected { detail: "bad number".into() }, 200_000);
        assert_eq!(c, before);
    }

    #[test]
    fn channel_names_read_back() {
        for ch in ContactChannel::ALL.map(Channel::Customer).into_iter().chain([Channel::Staff]) {
            assert_eq!(Channel::parse(ch.as_str()), Some(ch));
        }
        assert_eq!(Channel::parse("fax"), None);
    }
}
