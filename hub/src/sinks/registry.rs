//! The sink registry: every kind of business sink the hub can report to, and how
//! `[[sinks]]` entries become configured sinks.
//!
//! Adding a sink is one module that defines a [`SinkType`] and its name in the one
//! `sinks!` line in `sinks/mod.rs`. Each entry takes these keys; the rest are the type's:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `type` | which kind of sink (a name in [`TYPES`]) | required |
//! | `name` | unique; in the outbox, the outcome log, the metrics and the stable keys | the type |
//! | `milestones` | which milestones it receives (`dispatched`, `out_for_delivery`, `nearby`, `exception`, `delivered`) | all |
//! | `alerts` | whether it receives operations alerts | the type's (true but for marketing tools) |
//! | `base_url` | the API's base URL (a loopback server in tests); HTTP sinks only | the vendor's |
//! | `rate_per_s`, `burst` | its own rate limit | the type's |
//! | `max_attempts`, `backoff_base_s`, `backoff_max_s` | retries, backoff doubling from base to max | 8, 30, 3600 |
//! | `request_timeout_s` | one request's (or publish ack's) timeout | 10 |

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::sink::{Build, Sink, SinkType};
use crate::model::Milestone;
use crate::notify::config::RetryPolicy;
use crate::notify::provider::Circuit;
use crate::notify::ratelimit::{Bucket, RateLimit};

/// Declares the sink modules under `sinks/` and lists their types, in the order
/// `--print-default-config` shows them. Invoked once, in `sinks/mod.rs`.
macro_rules! sinks {
    ($($module:ident),+ $(,)?) => {
        $(pub mod $module;)+
        /// Every kind of sink (see [`registry`]).
        pub const SINK_TYPES: &[sink::SinkType] = &[$($module::TYPE),+];
    };
}
pub(crate) use sinks;

/// Every kind of sink, in the order `--print-default-config` shows them.
pub use super::SINK_TYPES as TYPES;

/// The milestones a sink can receive: every one a shipment can move to.
pub const MILESTONES: [Milestone; 5] = [
    Milestone::Dispatched,
    Milestone::OutForDelivery,
    Milestone::Nearby,
    Milestone::Exception,
    Milestone::Delivered,
];

/// Why a `[[sinks]]` entry was refused.
#[derive(Debug, thiserror::Error)]
#[error("sinks.{sink}{key}: {message}")]
pub struct SinkConfigError {
    /// The sink's name (or `[index]` before it has one).
    pub sink: String,
    /// `.key`, or empty for the entry as a whole.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

pub(crate) fn invalid(sink: &str, key: &str, message: impl Into<String>) -> SinkConfigError {
    let key = if key.is_empty() { String::new() } else { format!(".{key}") };
    SinkConfigError { sink: sink.to_owned(), key, message: message.into() }
}

/// The type called `kind`.
pub fn find(kind: &str) -> Option<&'static SinkType> {
    TYPES.iter().find(|t| t.kind == kind)
}

/// One configured sink: what it receives, its retries, and its gate (rate limit, circuit).
#[derive(Debug)]
pub struct Registered {
    /// Its unique name.
    pub name: String,
    /// Its type.
    pub kind: &'static str,
    /// The milestones it receives.
    pub milestones: BTreeSet<Milestone>,
    /// Whether it receives operations alerts.
    pub alerts: bool,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
    /// One request's (or publish ack's) timeout.
    pub timeout: Duration,
    /// The sink.
    pub sink: Arc<dyn Sink>,
    bucket: Bucket,
    circuit: Mutex<Circuit>,
}

impl Registered {
    /// The circuit as it is now.
    pub fn circuit(&self) -> Circuit {
        *self.circuit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the rate limit, delivers, and updates the circuit.
    pub async fn deliver(
        &self,
        client: &reqwest::Client,
        event: &super::SinkEvent,
        now_ms: i64,
    ) -> super::sink::Delivery {
        use super::sink::Delivery;
        use crate::notify::SendResult;
        self.bucket.acquire().await;
        let delivery = self.sink.deliver(client, event).await;
        let as_result = match &delivery {
            Delivery::Accepted { .. } => SendResult::Accepted { provider_id: None, detail: String::new() },
            Delivery::Skipped { .. } => return delivery,
            Delivery::NotTaken(result) => result.clone(),
        };
        self.circuit.lock().unwrap_or_else(|e| e.into_inner()).record(&as_result, now_ms);
        delivery
    }
}

/// The configured sinks.
#[derive(Debug, Default, Clone)]
pub struct Sinks {
    all: Vec<Arc<Registered>>,
}

impl Sinks {
    /// Every configured sink.
    pub fn all(&self) -> &[Arc<Registered>] {
        &self.all
    }

    /// The sink named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Registered>> {
        self.all.iter().find(|s| s.name == name)
    }

    /// Whether any sink is configured.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// What the writer needs to enqueue events: each sink's name and subscriptions.
    pub fn subscriptions(&self) -> Subscriptions {
        Subscriptions {
            sinks: self.all.iter().map(|s| (s.name.clone(), s.milestones.clone(), s.alerts)).collect(),
        }
    }
}

/// Which sinks receive which events: what ingest's writer reads to enqueue sink rows in
/// its transaction. Empty by default (no `[[sinks]]`): nothing is enqueued.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    sinks: Arc<[(String, BTreeSet<Milestone>, bool)]>,
}

impl Subscriptions {
    /// The sinks that receive `milestone`.
    pub fn milestone(&self, milestone: Milestone) -> Vec<&str> {
        self.sinks.iter().filter(|(_, m, _)| m.contains(&milestone)).map(|(n, _, _)| n.as_str()).collect()
    }

    /// The sinks that receive operations alerts.
    pub fn alerts(&self) -> Vec<&str> {
        self.sinks.iter().filter(|(_, _, a)| *a).map(|(n, _, _)| n.as_str()).collect()
    }
}

fn take_str(table: &mut toml::Table, key: &str, at: &str) -> Result<Option<String>, SinkConfigError> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(at, key, "must be a string")),
    }
}

fn take_u64(table: &mut toml::Table, key: &str, at: &str) -> Result<Option<u64>, SinkConfigError> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => {
            u64::try_from(i).map(Some).map_err(|_| invalid(at, key, "must not be negative"))
        }
        Some(_) => Err(invalid(at, key, "must be a whole number")),
    }
}

fn take_number(table: &mut toml::Table, key: &str, at: &str) -> Result<Option<f64>, SinkConfigError> {
    match table.remove(key) {
        None => Ok(None),
        #[allow(clippy::cast_precision_loss)] // config values, far below 2^52
        Some(toml::Value::Integer(i)) => Ok(Some(i as f64)),
        Some(toml::Value::Float(f)) => Ok(Some(f)),
        Some(_) => Err(invalid(at, key, "must be a number")),
    }
}

fn take_milestones(table: &mut toml::Table, at: &str) -> Result<BTreeSet<Milestone>, SinkConfigError> {
    let Some(value) = table.remove("milestones") else {
        return Ok(MILESTONES.into_iter().collect());
    };
    let names = crate::store::milestone_name;
    let known = || MILESTONES.map(names).join(", ");
    let toml::Value::Array(items) = value else {
        return Err(invalid(at, "milestones", format!("must be a list of: {}", known())));
    };
    let mut out = BTreeSet::new();
    for item in items {
        let found = item.as_str().and_then(|s| MILESTONES.into_iter().find(|m| names(*m) == s));
        match found {
            Some(m) => out.insert(m),
            None => return Err(invalid(at, "milestones", format!("{item} is not one of: {}", known()))),
        };
    }
    Ok(out)
}

/// Builds the sinks of `entries` (each a `[[sinks]]` table).
pub fn build(entries: &[toml::Table]) -> Result<Sinks, SinkConfigError> {
    let mut all: Vec<Arc<Registered>> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let mut table = entry.clone();
        let at = format!("[{index}]");
        let Some(kind) = take_str(&mut table, "type", &at)? else {
            return Err(invalid(&at, "", format!("every sink needs a type; one of: {}", kinds())));
        };
        let Some(ty) = find(&kind) else {
            return Err(invalid(&at, "type", format!("unknown sink type {kind:?}; one of: {}", kinds())));
        };
        let name = take_str(&mut table, "name", &at)?.unwrap_or_else(|| ty.kind.to_owned());
        if name.is_empty()
            || name.len() > 40
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(&at, "name", format!("{name:?}: 1 to 40 of a-z, 0-9, _ and -")));
        }
        if all.iter().any(|s| s.name == name) {
            return Err(invalid(
                &at,
                "name",
                format!("two sinks are named {name:?}; give one a name = \"...\""),
            ));
        }
        let milestones = take_milestones(&mut table, &name)?;
        let alerts = match table.remove("alerts") {
            None => ty.alerts,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(invalid(&name, "alerts", "must be true or false")),
        };
        let per_s = take_number(&mut table, "rate_per_s", &name)?.unwrap_or(ty.rate.per_s);
        let burst = take_u64(&mut table, "burst", &name)?.map_or(Ok(ty.rate.burst), u32::try_from);
        let burst = burst.map_err(|_| invalid(&name, "burst", "is too large"))?;
        if !(per_s.is_finite() && per_s > 0.0) || burst == 0 {
            return Err(invalid(&name, "", "rate_per_s must be > 0 and burst ≥ 1"));
        }
        let max_attempts = take_u64(&mut table, "max_attempts", &name)?.unwrap_or(8);
        let base = take_u64(&mut table, "backoff_base_s", &name)?.unwrap_or(30);
        let max = take_u64(&mut table, "backoff_max_s", &name)?.unwrap_or(3600);
        if !(1..=100).contains(&max_attempts) || base == 0 || max < base {
            return Err(invalid(
                &name,
                "",
                "max_attempts must be 1 to 100, backoff_base_s ≥ 1 and ≤ backoff_max_s",
            ));
        }
        let timeout = take_u64(&mut table, "request_timeout_s", &name)?.unwrap_or(10);
        if !(1..=300).contains(&timeout) {
            return Err(invalid(&name, "request_timeout_s", "must be 1 to 300 (seconds)"));
        }
        let base_url = take_str(&mut table, "base_url", &name)?;
        let mut b = Build::new(&name, Duration::from_secs(timeout), table, base_url);
        let sink = (ty.build)(&mut b)?;
        if b.unused_base_url() {
            return Err(invalid(&name, "base_url", format!("{} takes no base_url", ty.kind)));
        }
        all.push(Arc::new(Registered {
            name,
            kind: ty.kind,
            milestones,
            alerts,
            retry: RetryPolicy {
                max_attempts: u32::try_from(max_attempts).unwrap_or(8),
                base: Duration::from_secs(base),
                max: Duration::from_secs(max),
            },
            timeout: Duration::from_secs(timeout),
            sink,
            bucket: Bucket::new(RateLimit { per_s, burst }),
            circuit: Mutex::new(Circuit::default()),
        }));
    }
    Ok(Sinks { all })
}

fn kinds() -> String {
    TYPES.iter().map(|t| t.kind).collect::<Vec<_>>().join(", ")
}

/// Every type's commented sample entry, for the default config file.
pub fn samples() -> String {
    let mut out = String::from(
        "# Business sinks: every reconciled milestone and operations alert, reported to an event\n\
         # stream, a helpdesk or a CRM after the hub commits it, from a durable outbox of their\n\
         # own (docs/sinks.md). One [[sinks]] entry each. Common keys: type; name (unique,\n\
         # default the type); milestones (default all: dispatched, out_for_delivery, nearby,\n\
         # exception, delivered); alerts (default: the type's); base_url (HTTP sinks); rate_per_s and\n\
         # burst; max_attempts (8), backoff_base_s (30), backoff_max_s (3600);\n\
         # request_timeout_s (10). Secrets may be \"file:/path\".\n",
    );
    for ty in TYPES {
        out.push_str(&format!(
            "\n# [[sinks]]\n# type = \"{}\"                 # {} per s, burst {}\n{}",
            ty.kind, ty.rate.per_s, ty.rate.burst, ty.sample
        ));
        if !ty.sample.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<toml::Table> {
        let t: toml::Table = toml::from_str(text).expect("toml");
        t["sinks"].as_array().expect("array").iter().map(|v| v.as_table().expect("t").clone()).collect()
    }

    #[test]
    fn every_sample_is_commented_and_builds_once_uncommented() {
        for ty in TYPES {
            assert!(ty.sample.lines().all(|l| l.starts_with('#')), "{}: {}", ty.kind, ty.sample);
        }
        let is_setting = |l: &str| {
            l.starts_with('[')
                || l.split_once(" = ")
                    .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        };
        let uncommented: String = samples()
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|l| is_setting(l)))
            .collect::<Vec<_>>()
            .join("\n");
        // Secrets in files on a real host; inline here.
        let list = entries(&uncommented.replace("\"file:", "\""));
        assert_eq!(list.len(), TYPES.len());
        let sinks = build(&list).expect("the samples build");
        assert_eq!(sinks.all().len(), TYPES.len());
    }

    #[test]
    fn subscriptions_name_the_sinks_of_each_event_and_typos_are_errors() {
        let nats = "type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"";
        let sinks = build(&entries(&format!(
            "[[sinks]]\n{nats}\n[[sinks]]\n{nats}\nname = \"deliveries\"\nmilestones = [\"delivered\"]\nalerts = false"
        )))
        .expect("build");
        let subs = sinks.subscriptions();
        assert_eq!(subs.milestone(Milestone::Delivered), ["nats", "deliveries"]);
        assert_eq!(subs.milestone(Milestone::Nearby), ["nats"]);
        assert_eq!(subs.alerts(), ["nats"]);
        assert!(Subscriptions::default().milestone(Milestone::Delivered).is_empty());
        assert!(build(&entries(&format!("[[sinks]]\n{nats}\n[[sinks]]\n{nats}"))).is_err(), "two named nats");
        assert!(build(&entries(&format!("[[sinks]]\n{nats}\nmilestones = [\"created\"]"))).is_err());
        assert!(build(&entries(&format!("[[sinks]]\n{nats}\nsubjet_prefix = \"x\""))).is_err(), "a typo");
        assert!(build(&entries(&format!("[[sinks]]\n{nats}\nbase_url = \"https://x\""))).is_err());
        assert!(build(&entries("[[sinks]]\ntype = \"fax\"")).is_err());
        let err = build(&entries(&format!("[[sinks]]\n{nats}\nname = \"Ops Stream\""))).expect_err("name");
        assert!(err.to_string().starts_with("sinks.[0].name: "), "{err}");
    }
}
