//! The provider registry: every kind of provider the hub can send through, and how
//! `[[notify.providers]]` entries become configured providers.
//!
//! Adding a provider is one module that defines a [`ProviderType`] and its name in the
//! one `providers!` line in `notify/mod.rs`, which declares the modules and builds
//! [`TYPES`]. Each entry takes these keys; the rest are the type's own:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `type` | which kind of provider (a name in [`TYPES`]) | required |
//! | `name` | unique; in the outcome log, the metrics and its callback paths `/callbacks/{name}/...` | the type |
//! | `channel` | `sms`, `email`, `whatsapp`, `webhook`, `push` or `staff` (operations alerts) | the type's first |
//! | `priority` | lower is tried first; the next provider of the channel takes a message the first definitely did not | 1 |
//! | `base_url` | the API's base URL (a regional endpoint; a loopback server in tests) | the vendor's |
//! | `rate_per_s`, `burst` | this provider's own rate limit | the type's |
//!
//! A table named after a type (`[notify.twilio]`) is shorthand for one entry of it.

use std::sync::Arc;

use axum::Router;

use super::config::{NotifyConfigError, invalid};
use super::page::NotifyState;
use super::provider::{Build, Channel, ProviderType, Registered};
use super::ratelimit::RateLimit;

/// Declares the provider modules under `notify/` and lists their types, in the order
/// `--print-default-config` shows them. Invoked once, in `notify/mod.rs`: adding a
/// provider is its module plus its name in that one line.
macro_rules! providers {
    ($($module:ident),+ $(,)?) => {
        $(pub mod $module;)+
        /// Every kind of provider (see [`registry`]).
        pub const PROVIDER_TYPES: &[provider::ProviderType] = &[$($module::TYPE),+];
    };
}
pub(crate) use providers;

/// Every kind of provider, in the order `--print-default-config` shows them.
pub use super::PROVIDER_TYPES as TYPES;

/// The type called `kind`.
pub fn find(kind: &str) -> Option<&'static ProviderType> {
    TYPES.iter().find(|t| t.kind == kind)
}

/// The configured providers, in the order they are tried (priority, then the file's).
#[derive(Debug, Default, Clone)]
pub struct Providers {
    all: Vec<Arc<Registered>>,
}

impl Providers {
    /// Every configured provider.
    pub fn all(&self) -> &[Arc<Registered>] {
        &self.all
    }

    /// The providers of one channel, in the order they are tried.
    pub fn for_channel(&self, channel: Channel) -> impl Iterator<Item = &Arc<Registered>> {
        self.all.iter().filter(move |p| p.channel == channel)
    }

    /// The provider named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Registered>> {
        self.all.iter().find(|p| p.name == name)
    }

    /// Whether a channel has a provider.
    pub fn configured(&self, channel: Channel) -> bool {
        self.for_channel(channel).next().is_some()
    }

    /// Whether a message of this channel whose send was ambiguous may be sent again:
    /// only when every provider it could go to dedupes on the key it carries.
    pub fn resend_safe(&self, channel: Channel) -> bool {
        let mut providers = self.for_channel(channel).peekable();
        providers.peek().is_some() && providers.all(|p| p.provider.resend_safe())
    }

    /// Every provider's callback routes.
    pub fn callbacks(&self) -> Router<NotifyState> {
        let mut router = Router::new();
        for p in &self.all {
            if let Some(routes) = Arc::clone(&p.provider).callbacks(&p.name) {
                router = router.merge(routes);
            }
        }
        router
    }
}

fn take_str(table: &mut toml::Table, key: &str, field: &str) -> Result<Option<String>, NotifyConfigError> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(field, format!("{key} must be a string"))),
    }
}

fn take_number(table: &mut toml::Table, key: &str, field: &str) -> Result<Option<f64>, NotifyConfigError> {
    match table.remove(key) {
        None => Ok(None),
        #[allow(clippy::cast_precision_loss)] // config values, far below 2^52
        Some(toml::Value::Integer(i)) => Ok(Some(i as f64)),
        Some(toml::Value::Float(f)) => Ok(Some(f)),
        Some(_) => Err(invalid(field, format!("{key} must be a number"))),
    }
}

fn take_int(table: &mut toml::Table, key: &str, field: &str) -> Result<Option<i64>, NotifyConfigError> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => Ok(Some(i)),
        Some(_) => Err(invalid(field, format!("{key} must be a whole number"))),
    }
}

/// Builds the providers of `entries` (each a `[[notify.providers]]` table).
pub fn build(
    entries: &[toml::Table],
    callback_base_url: &str,
    link_secret: &[u8],
) -> Result<Providers, NotifyConfigError> {
    let mut all: Vec<(i64, usize, Registered)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let mut table = entry.clone();
        let at = format!("providers[{index}]");
        let Some(kind) = take_str(&mut table, "type", &at)? else {
            return Err(invalid(&at, "every provider needs a type; one of: ".to_owned() + &kinds()));
        };
        let Some(ty) = find(&kind) else {
            return Err(invalid(&at, format!("unknown provider type {kind:?}; one of: {}", kinds())));
        };
        let name = take_str(&mut table, "name", &at)?.unwrap_or_else(|| ty.kind.to_owned());
        if name.is_empty()
            || name.len() > 40
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                &at,
                format!("name {name:?}: 1 to 40 of a-z, 0-9, _ and - (it is part of a URL)"),
            ));
        }
        if all.iter().any(|(_, _, p)| p.name == name) {
            return Err(invalid(&at, format!("two providers are named {name:?}; give one a name = \"...\"")));
        }
        let field = format!("providers.{name}");
        let channel = match take_str(&mut table, "channel", &field)? {
            None => ty.channels[0],
            Some(c) => match Channel::parse(&c).filter(|c| ty.channels.contains(c)) {
                Some(c) => c,
                None => {
                    let can: Vec<&str> = ty.channels.iter().map(|c| c.as_str()).collect();
                    return Err(invalid(
                        &field,
                        format!("{} cannot carry channel {c:?}; it carries {}", ty.kind, can.join(", ")),
                    ));
                }
            },
        };
        let priority = take_int(&mut table, "priority", &field)?.unwrap_or(1);
        let per_s = take_number(&mut table, "rate_per_s", &field)?.unwrap_or(ty.rate.per_s);
        let burst = match take_int(&mut table, "burst", &field)? {
            None => ty.rate.burst,
            Some(b) => u32::try_from(b).map_err(|_| invalid(&field, "burst must be 1 or more"))?,
        };
        if !(per_s.is_finite() && per_s > 0.0) || burst == 0 {
            return Err(invalid(&field, "rate_per_s must be > 0 and burst ≥ 1"));
        }
        let base_url = take_str(&mut table, "base_url", &field)?;
        let mut b = Build::new(&name, channel, callback_base_url, link_secret, table, base_url);
        let provider = (ty.build)(&mut b)?;
        if b.unused_base_url() {
            return Err(invalid(
                &field,
                format!("{} takes no base_url (its URL is its credential)", ty.kind),
            ));
        }
        let rate = RateLimit { per_s, burst };
        all.push((priority, index, Registered::new(name, ty.kind, channel, priority, rate, provider)));
    }
    all.sort_by_key(|(priority, index, _)| (*priority, *index));
    Ok(Providers { all: all.into_iter().map(|(_, _, p)| Arc::new(p)).collect() })
}

fn kinds() -> String {
    TYPES.iter().map(|t| t.kind).collect::<Vec<_>>().join(", ")
}

/// Every type's commented sample entry, for the default config file.
pub fn samples() -> String {
    let mut out = String::from(
        "# Providers: one [[notify.providers]] entry each. Common keys: type; name (unique, default\n\
         # the type; callbacks arrive at /callbacks/{name}/...); channel (default the type's\n\
         # first); priority (lower is tried first: a message the first provider definitely did\n\
         # not take goes to the next of its channel; an ambiguous send never does); base_url\n\
         # (a regional endpoint); rate_per_s and burst. Secrets may be \"file:/path\".\n",
    );
    for ty in TYPES {
        let can: Vec<&str> = ty.channels.iter().map(|c| c.as_str()).collect();
        out.push_str(&format!(
            "\n# [[notify.providers]]\n# type = \"{}\"                 # channels: {}; {} per s, burst {}\n{}",
            ty.kind,
            can.join(", "),
            ty.rate.per_s,
            ty.rate.burst,
            ty.sample
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

    #[test]
    fn every_sample_is_commented_and_names_its_own_keys() {
        for ty in TYPES {
            assert!(ty.sample.lines().all(|l| l.starts_with('#')), "{}: {}", ty.kind, ty.sample);
            assert!(!ty.channels.is_empty(), "{}", ty.kind);
        }
        let all = samples();
        // Uncomment what is configuration (`# key = ...`, `# [[...]]`), not the prose.
        let is_setting = |l: &str| {
            l.starts_with('[')
                || l.split_once(" = ")
                    .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        };
        let uncommented: String = all
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|l| is_setting(l)))
            .collect::<Vec<_>>()
            .join("\n");
        // Uncommented, every sample is a provider entry of its type.
        let table: toml::Table = toml::from_str(&uncommented).expect("samples are TOML once uncommented");
        let entries = table.get("notify").and_then(|n| n.get("providers")).and_then(|p| p.as_array());
        assert_eq!(entries.map(Vec::len), Some(TYPES.len()));
    }

    #[test]
    fn names_are_unique_url_safe_and_channels_must_fit_the_type() {
        let entries = |text: &str| -> Vec<toml::Table> {
            let t: toml::Table = toml::from_str(text).expect("toml");
            t["providers"]
                .as_array()
                .expect("array")
                .iter()
                .map(|v| v.as_table().expect("t").clone())
                .collect()
        };
        let build =
            |text: &str| build(&entries(text), "https://t.example", b"0123456789abcdef0123456789abcdef");
        let slack = "type = \"slack\"\nwebhook_url = \"https://hooks.slack.com/services/T/B/X\"";
        assert!(
            build(&format!("[[providers]]\n{slack}\n[[providers]]\n{slack}")).is_err(),
            "two named slack"
        );
        let two =
            build(&format!("[[providers]]\n{slack}\npriority = 2\n[[providers]]\n{slack}\nname = \"ops-2\""))
                .expect("two");
        let order: Vec<&str> = two.for_channel(Channel::Staff).map(|p| p.name.as_str()).collect();
        assert_eq!(order, ["ops-2", "slack"], "lower priority first");
        assert!(build(&format!("[[providers]]\n{slack}\nname = \"Ops Room\"")).is_err());
        assert!(build(&format!("[[providers]]\n{slack}\nchannel = \"sms\"")).is_err());
        assert!(build(&format!("[[providers]]\n{slack}\nbase_url = \"https://x\"")).is_err());
        assert!(build("[[providers]]\ntype = \"fax\"").is_err());
        assert!(build(&format!("[[providers]]\n{slack}\nwebhookurl = \"x\"")).is_err(), "a typo");
    }
}
