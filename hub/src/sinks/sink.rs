//! The sink seam: what every business system Doorstep reports milestones and alerts to
//! implements, and what a sink's builder gets from its `[[sinks]]` entry.
//!
//! A sink is one module under `sinks/` that defines a [`SinkType`] (its config name, its
//! commented sample, its default rate limit and a builder) and implements [`Sink`] for
//! what the builder returns. The registry (`registry.rs`) is the only other place that
//! names it. Unlike a notification provider a sink does its own I/O: an event stream is
//! not an HTTP request. HTTP sinks use [`exchange`] for one bounded, classified request
//! (the notification providers' `read_response`, `Retry-After` included).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::SinkEvent;
use super::registry::{SinkConfigError, invalid};
use crate::notify::ratelimit::RateLimit;
use crate::notify::{Reply, SendResult};

/// A boxed future, as [`Sink::deliver`] returns (the registry holds sinks as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a sink did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The sink took it.
    Accepted {
        /// The sink's id for what it made or changed (a ticket, a stream sequence).
        vendor_id: Option<String>,
        /// What this sink made for the shipment, to remember for its later events (a
        /// Zendesk ticket id), when this event made it.
        thread: Option<String>,
        /// What the sink said, in words.
        detail: String,
    },
    /// There is nothing to send to this sink for this event (a milestone of a shipment
    /// the helpdesk has no ticket for). Final.
    Skipped {
        /// Why.
        detail: String,
    },
    /// Not taken: to retry, ambiguous, or refused, as the notification providers classify
    /// their answers ([`SendResult::Accepted`] and [`SendResult::OptedOut`] do not occur).
    NotTaken(SendResult),
}

/// One configured business system.
pub trait Sink: Send + Sync + fmt::Debug + 'static {
    /// Delivers one event (the I/O included). `client` is the dispatcher's HTTP client,
    /// with its timeouts.
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery>;

    /// Whether repeating this event's delivery after an ambiguous failure (a timeout once
    /// the request was out, a hub stopped mid-send) is safe: the request carries a key the
    /// sink dedupes on. Otherwise the row becomes `unknown` and is never repeated.
    fn resend_safe(&self, event: &SinkEvent) -> bool {
        let _ = event;
        false
    }
}

/// A kind of sink, as the registry lists it.
#[derive(Clone, Copy)]
pub struct SinkType {
    /// Its `type` in `[[sinks]]`.
    pub kind: &'static str,
    /// Its rate limit unless configured (requests per second, burst).
    pub rate: RateLimit,
    /// Whether it receives operations alerts unless configured (a marketing tool does not).
    pub alerts: bool,
    /// Its commented sample entry for `--print-default-config` (each line starts `# `).
    pub sample: &'static str,
    /// Builds it from its entry.
    pub build: fn(&mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError>,
}

impl fmt::Debug for SinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkType").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// What a builder gets: its entry's own keys (the common ones already taken out).
#[derive(Debug)]
pub struct Build<'a> {
    /// The sink's configured name (unique; defaults to its type).
    pub name: &'a str,
    /// The request timeout the entry configured (a stream sink's publish-ack wait).
    pub request_timeout: Duration,
    table: toml::Table,
    base_url: Option<String>,
}

impl<'a> Build<'a> {
    /// A builder's view of one entry.
    pub fn new(
        name: &'a str,
        request_timeout: Duration,
        table: toml::Table,
        base_url: Option<String>,
    ) -> Self {
        Self { name, request_timeout, table, base_url }
    }

    /// The entry's type-specific keys as the sink's section (which should deny unknown
    /// fields, so a typo is an error).
    pub fn section<T: DeserializeOwned>(&mut self) -> Result<T, SinkConfigError> {
        let table = std::mem::take(&mut self.table);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(self.name, "", e.message().to_owned()))
    }

    /// The API base URL: the entry's `base_url` (a loopback server in tests), else
    /// `default`.
    pub fn base_url(&mut self, default: &str) -> Result<String, SinkConfigError> {
        let given = self.base_url.take();
        let url = given.as_deref().unwrap_or(default);
        let v = url.trim().trim_end_matches('/');
        if v.starts_with("https://") || v.starts_with("http://") {
            Ok(v.to_owned())
        } else {
            Err(self.invalid("base_url", "must start with https:// (or http:// for a loopback test server)"))
        }
    }

    /// The API base URL of a vendor that gives each account its own host: the entry's
    /// `base_url` when given, else `https://{account}{suffix}` from the entry's `key`
    /// (`subdomain = "acme"` and `.zendesk.com`), which must then be given and be a host
    /// name label.
    pub fn account_url(
        &mut self,
        key: &str,
        account: Option<&str>,
        suffix: &str,
    ) -> Result<String, SinkConfigError> {
        let default = match account {
            Some(a) if !a.is_empty() && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') => {
                format!("https://{a}{suffix}")
            }
            Some(_) => {
                return Err(self.invalid(key, format!("the name before {suffix} (letters, digits, -)")));
            }
            None if self.unused_base_url() => String::new(),
            None => return Err(self.invalid(key, "is required (or base_url)")),
        };
        self.base_url(&default)
    }

    /// Whether a `base_url` was given and not read (a sink that speaks no HTTP).
    pub fn unused_base_url(&self) -> bool {
        self.base_url.is_some()
    }

    /// A secret, inline or `file:/path`, not empty.
    pub fn secret(&self, key: &str, value: &str) -> Result<String, SinkConfigError> {
        let secret = match value.strip_prefix("file:") {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| self.invalid(key, format!("cannot read {path}: {e}")))?,
            None => value.to_owned(),
        };
        if secret.is_empty() {
            return Err(self.invalid(key, "is empty"));
        }
        Ok(secret)
    }

    /// An error about one of this entry's keys.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> SinkConfigError {
        invalid(self.name, key, message)
    }
}

/// Sends one HTTP request and reads the answer (at most the notification providers'
/// bounded body), classifying transport errors: refused before sending is a retry, no
/// answer after sending is ambiguous.
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, SendResult> {
    crate::notify::read_response(request.send().await).await
}
