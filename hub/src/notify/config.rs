//! The `[notify]` section, in two stages: [`NotifyConfig`] is what the file says
//! (`deny_unknown_fields`); [`NotifyConfig::validate`] turns it into [`NotifySettings`]
//! with secrets loaded, URLs checked and templates compiled. `channel_map` belongs to the
//! hub's own config (ingest reads it) and is accepted here unread.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use std::collections::BTreeMap;

use super::exceptions::{NextStep, REASONS};
use super::page::brand::{self, Brand};
use super::provider::{Channel, Registered};
use super::quiet::QuietHours;
use super::registry::{self, Providers};
use super::scheduled::Schedule;
use super::templates::{Template, Templates};
use super::token::LinkSigner;
use crate::config::ChannelMap;
use crate::model::Milestone;
use crate::store::ContactChannel;

/// The commented `[notify]` section of the default config file.
pub const DEFAULT_CONFIG: &str = r##"[notify]
# Send messages and alerts from this hub. Hubs of one shared subscription group share
# one database, and only the one holding the dispatch lease sends (the others take over
# when it stops, and meanwhile serve the tracking page and the providers' callbacks).
# false: this hub never sends.
dispatch = true
# How often the dispatcher looks for due messages, milliseconds (ingest also wakes it).
poll_interval_ms = 100
# Due rows taken per pass.
batch = 64
# Attempts before a message is given up as failed; backoff doubles from base to max.
max_attempts = 8
backoff_base_s = 30
backoff_max_s = 3600
# Provider request timeout. A timeout after the request was sent is ambiguous: SMS,
# email and WhatsApp are then marked "unknown" and never re-sent automatically.
request_timeout_s = 10
# SMS: one segment when the detail can be shortened to fit, never more than this.
sms_max_segments = 2
# Templates are looked up by exact locale, language, this fallback, then English.
fallback_locale = "en"
# One message per person and moment: every row for the same recipient, channel and
# milestone enqueued within group_window_s goes out as one message naming each parcel with
# its link. When the person has another parcel in flight (messaged on this channel in the
# last two days), a message waits group_hold_s after its row was enqueued for the other
# parcel's to join it (two scans at one door); someone with one parcel is not kept waiting. 0 sends every parcel's message alone and at once. Signed webhooks
# (machines) are never grouped.
group_hold_s = 15
group_window_s = 120
# Tracking links in messages stay valid this long.
link_ttl_days = 30
# Public base URL providers call back on (for Twilio's signature); default: hub.public_base_url.
# callback_base_url = "https://track.example.com"

# Operations alerts go to the staff providers (Slack, Teams, Google Chat, Zapier) in
# priority order, each taking over when the one before did not take the alert. With an
# escalation list, an alert nobody acknowledges (POST /v1/alerts/{id}/ack, scope
# alerts:write) within ack_timeout_s of a step is posted to the next step; `to` is the
# number or address for a provider that needs one (an on-call SMS, an operations mailbox).
# [notify.alerts]
# ack_timeout_s = 900
# escalation = [
#   { provider = "slack" },
#   { provider = "teams", after_s = 1800 },
#   { provider = "twilio", to = "+15555550100" },
# ]

# What an exception message says happens next, per reason (next_attempt, pickup_point,
# choose, return_to_sender, updates); the carrier's new date, when it gives one, comes
# first. Defaults: recipient_absent, unsafe, attempt_failed: next_attempt; no_access,
# address_not_found: choose; refused, damaged, returning: return_to_sender;
# available_for_pickup: pickup_point; exception, other: updates.
# [notify.exceptions]
# recipient_absent = "pickup_point"

# A "still on its way" update for a parcel in transit (dispatched, out for delivery or
# nearby: not delivered, no exception, not cancelled) whose customer has heard nothing
# for after_days since its dispatch and its last message, repeated every every_days while
# nothing else is sent. Off unless this section is present.
# [notify.still_on_its_way]
# after_days = 3
# every_days = 2

# How the tracking page looks to customers: the name they know you by, your colours and
# logo. Colours are #rrggbb; the page's background is white, and a colour too light to
# read on it (a contrast ratio under 4.5:1, WCAG AA) is refused at start-up with its
# ratio. primary_color fills the header (under white text), links and buttons.
[notify.brand]
name = "Doorstep"
primary_color = "#1d4ed8"
text_color = "#1f2937"
# An https URL, or a path this hub's proxy serves; shown in the header instead of the name.
# logo_url = "https://cdn.example.com/logo.svg"
# While the van heads to a customer's stop next, show it on one map tile from this tile
# server ({z}/{x}/{y}: zoom, column, row). The customer's browser fetches the tile, so the
# tile server learns roughly where the van is, never where the customer lives. Without
# it (the default, and offline) the page says how far away the van is in words.
# map_tiles = "https://tile.example.org/{z}/{x}/{y}.png"

# Local to each recipient's time zone: "nearby" is dropped, other messages wait.
[notify.quiet_hours]
start = "21:00"
end = "08:00"
channels = ["sms", "whatsapp"]

# Providers are [[notify.providers]] entries; `--print-default-config` lists every type.
# A table named after a type ([notify.twilio]) is shorthand for one entry of it.

# [[notify.templates]]
# milestone = "delivered"
# locale = "fr"
# channel = "email"                    # optional: all channels when absent
# subject = "Votre colis est livré"
# body = "Votre colis {tracking_number} est livré. Preuve : {link}"
"##;

/// Why the `[notify]` section was refused.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    /// Not valid for this schema (unknown key, wrong type).
    #[error("notify: {0}")]
    Parse(String),
    /// A value is out of range, a secret file unreadable, a key malformed.
    #[error("notify.{field}: {message}")]
    Invalid {
        /// The offending key.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> NotifyConfigError {
    NotifyConfigError::Invalid { field: field.to_owned(), message: message.into() }
}

pub(crate) fn load_secret(field: &str, value: &str) -> Result<String, NotifyConfigError> {
    match value.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| invalid(field, format!("cannot read {path}: {e}"))),
        None => Ok(value.to_owned()),
    }
}

fn base_url(field: &str, value: &str) -> Result<String, NotifyConfigError> {
    let v = value.trim().trim_end_matches('/');
    if v.starts_with("https://") || v.starts_with("http://") {
        Ok(v.to_owned())
    } else {
        Err(invalid(field, "must start with https:// (or http:// for a loopback test server)"))
    }
}

fn d_group_hold() -> u64 {
    15
}
fn d_group_window() -> u64 {
    120
}
fn d_dispatch() -> bool {
    true
}
fn d_poll() -> u64 {
    100
}
fn d_batch() -> usize {
    64
}
fn d_attempts() -> u32 {
    8
}
fn d_base() -> u64 {
    30
}
fn d_max() -> u64 {
    3600
}
fn d_timeout() -> u64 {
    10
}
fn d_segments() -> usize {
    2
}
fn d_locale() -> String {
    "en".into()
}
fn d_ttl() -> u64 {
    30
}
fn d_quiet_channels() -> Vec<ContactChannel> {
    vec![ContactChannel::Sms, ContactChannel::Whatsapp]
}

/// `[notify]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Read by the hub's config (ingest), not here.
    #[serde(default)]
    pub channel_map: Option<toml::Value>,
    /// Whether this hub runs the dispatcher.
    #[serde(default = "d_dispatch")]
    pub dispatch: bool,
    /// Dispatcher poll interval, ms.
    #[serde(default = "d_poll")]
    pub poll_interval_ms: u64,
    /// Due rows per pass.
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// Attempts before giving up.
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// First backoff, seconds.
    #[serde(default = "d_base")]
    pub backoff_base_s: u64,
    /// Longest backoff, seconds.
    #[serde(default = "d_max")]
    pub backoff_max_s: u64,
    /// Provider request timeout, seconds.
    #[serde(default = "d_timeout")]
    pub request_timeout_s: u64,
    /// Most SMS segments.
    #[serde(default = "d_segments")]
    pub sms_max_segments: usize,
    /// Template fallback locale.
    #[serde(default = "d_locale")]
    pub fallback_locale: String,
    /// Tracking link lifetime, days.
    #[serde(default = "d_ttl")]
    pub link_ttl_days: u64,
    /// How long a message waits for other parcels of the same person and moment, s.
    #[serde(default = "d_group_hold")]
    pub group_hold_s: u64,
    /// Rows enqueued this close together go out as one message, s.
    #[serde(default = "d_group_window")]
    pub group_window_s: u64,
    /// Public base URL for provider callbacks.
    #[serde(default)]
    pub callback_base_url: Option<String>,
    /// Quiet hours.
    #[serde(default)]
    pub quiet_hours: Option<QuietSection>,
    /// `[[notify.providers]]` entries (and `[notify.<type>]` shorthands, moved here by
    /// [`NotifyConfig::from_table`]).
    #[serde(default)]
    pub providers: Vec<toml::Table>,
    /// Where operations alerts go, and their escalation.
    #[serde(default)]
    pub alerts: Option<AlertsSection>,
    /// What happens next after an exception, per reason.
    #[serde(default)]
    pub exceptions: BTreeMap<String, NextStep>,
    /// Template overrides.
    #[serde(default)]
    pub templates: Vec<TemplateSection>,
    /// Scheduled "still on its way" updates; off when absent.
    #[serde(default)]
    pub still_on_its_way: Option<StillOnItsWaySection>,
    /// The tracking page's look.
    #[serde(default)]
    pub brand: BrandSection,
}

/// `[notify.brand]`: the tracking page's look (checked by [`Brand::new`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrandSection {
    /// The name customers know the sender or fleet by.
    #[serde(default = "d_brand_name")]
    pub name: String,
    /// `#rrggbb`: header, links, buttons.
    #[serde(default = "d_primary")]
    pub primary_color: String,
    /// `#rrggbb`: body text.
    #[serde(default = "d_text")]
    pub text_color: String,
    /// An https URL or a path on this hub.
    #[serde(default)]
    pub logo_url: Option<String>,
    /// A tile server's URL template with `{z}`, `{x}`, `{y}`.
    #[serde(default)]
    pub map_tiles: Option<String>,
}

impl Default for BrandSection {
    fn default() -> Self {
        Self {
            name: d_brand_name(),
            primary_color: d_primary(),
            text_color: d_text(),
            logo_url: None,
            map_tiles: None,
        }
    }
}

fn d_brand_name() -> String {
    brand::DEFAULT_NAME.into()
}
fn d_primary() -> String {
    brand::DEFAULT_PRIMARY.hex()
}
fn d_text() -> String {
    brand::DEFAULT_TEXT.hex()
}

/// `[notify.still_on_its_way]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StillOnItsWaySection {
    /// Days in transit without a message before the first update.
    #[serde(default = "d_after_days")]
    pub after_days: u32,
    /// Days between updates while nothing else is sent.
    #[serde(default = "d_every_days")]
    pub every_days: u32,
}

fn d_after_days() -> u32 {
    3
}
fn d_every_days() -> u32 {
    2
}

/// `[notify.quiet_hours]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietSection {
    /// "HH:MM", local.
    pub start: String,
    /// "HH:MM", local.
    pub end: String,
    /// Channels it applies to.
    #[serde(default = "d_quiet_channels")]
    pub channels: Vec<ContactChannel>,
}

/// `[notify.alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// How long a posted alert waits for an acknowledgement before the next step, seconds.
    #[serde(default = "d_ack_timeout")]
    pub ack_timeout_s: u64,
    /// The steps, in order.
    #[serde(default)]
    pub escalation: Vec<StepSection>,
}

fn d_ack_timeout() -> u64 {
    900
}

/// One escalation step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSection {
    /// A configured provider's name.
    pub provider: String,
    /// The phone number or address, for a provider that sends to one.
    #[serde(default)]
    pub to: Option<String>,
    /// This step's own wait for an acknowledgement, seconds.
    #[serde(default)]
    pub after_s: Option<u64>,
}

/// One step of where an operations alert goes.
#[derive(Debug, Clone)]
pub struct Step {
    /// The provider.
    pub provider: Arc<Registered>,
    /// The recipient, for a provider that needs one.
    pub to: Option<String>,
    /// How long an alert posted here waits for an acknowledgement before the next step;
    /// `None`: the next step is used only when this one does not take the alert.
    pub ack_timeout: Option<Duration>,
}

/// One `[[notify.templates]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    /// The milestone.
    pub milestone: Milestone,
    /// BCP 47 locale or language.
    pub locale: String,
    /// Only this channel (all when absent).
    #[serde(default)]
    pub channel: Option<ContactChannel>,
    /// Email subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// The text.
    pub body: String,
}

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before giving up.
    pub max_attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): base·2^(attempt−1),
    /// capped, plus up to 10% jitter derived from the row id (deterministic, so tests
    /// and replays agree, and spread so a provider outage does not end in a stampede).
    pub fn backoff(&self, attempt: i64, outbox_id: i64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let raw = self.base.saturating_mul(2u32.saturating_pow(exp)).min(self.max);
        let jitter_permille = u32::try_from(outbox_id.rem_euclid(101)).unwrap_or(0);
        raw + raw.mul_f64(f64::from(jitter_permille) / 1000.0)
    }
}

/// A validated `[notify]` section.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Tracking page base URL, no trailing slash.
    pub public_base_url: String,
    /// Base URL providers call back on.
    pub callback_base_url: String,
    /// Signs tracking links.
    pub link_signer: LinkSigner,
    /// Tracking link lifetime.
    pub link_ttl: Duration,
    /// Whether this hub sends (one hub of a shared group does).
    pub dispatch: bool,
    /// Dispatcher poll interval.
    pub poll_interval: Duration,
    /// Due rows per pass.
    pub batch: usize,
    /// Retries.
    pub retry: RetryPolicy,
    /// Provider request timeout.
    pub request_timeout: Duration,
    /// Most SMS segments.
    pub sms_max_segments: usize,
    /// Quiet hours.
    pub quiet_hours: Option<QuietHours>,
    /// Templates.
    pub templates: Arc<Templates>,
    /// The configured providers, in the order they are tried.
    pub providers: Providers,
    /// Where operations alerts go, step by step.
    pub escalation: Vec<Step>,
    /// How long a message waits for other parcels of the same person and moment.
    pub group_hold: Duration,
    /// Rows enqueued this close together go out as one message.
    pub group_window: Duration,
    /// The fleet's next step per exception reason (others: `exceptions::default_step`).
    pub exception_steps: BTreeMap<String, NextStep>,
    /// When "still on its way" updates go out; `None`: never.
    pub still_on_its_way: Option<Schedule>,
    /// Which channels each milestone goes to (`[[notify.channel_map]]`): the channels of
    /// the enqueued updates, as ingest's are.
    pub channel_map: ChannelMap,
    /// The tracking page's look.
    pub brand: Brand,
}

impl NotifyConfig {
    /// Reads `[notify]` from the hub config's table (absent: every default, no
    /// provider).
    pub fn from_table(table: Option<&toml::Table>) -> Result<Self, NotifyConfigError> {
        let mut table = table.cloned().unwrap_or_default();
        // `[notify.twilio]` and the like: one provider of that type each.
        let mut shorthands = Vec::new();
        for ty in registry::TYPES {
            if let Some(toml::Value::Table(_)) = table.get(ty.kind)
                && let Some(toml::Value::Table(mut entry)) = table.remove(ty.kind)
            {
                entry.insert("type".into(), toml::Value::String(ty.kind.into()));
                shorthands.push(entry);
            }
        }
        let mut config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| NotifyConfigError::Parse(e.to_string()))?;
        config.providers.extend(shorthands);
        Ok(config)
    }

    /// Checks values and loads secrets (stage two). `public_base_url` and `link_secret`
    /// come from `[hub]`.
    pub fn validate(
        &self,
        public_base_url: &str,
        link_secret: &[u8],
    ) -> Result<NotifySettings, NotifyConfigError> {
        let public_base_url = base_url("public_base_url", public_base_url)?;
        let callback_base_url = match &self.callback_base_url {
            Some(url) => base_url("callback_base_url", url)?,
            None => public_base_url.clone(),
        };
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return Err(invalid("poll_interval_ms", "must be 10 to 60000"));
        }
        if !(1..=1000).contains(&self.batch) {
            return Err(invalid("batch", "must be 1 to 1000"));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid("max_attempts", "must be 1 to 100"));
        }
        if self.backoff_base_s == 0 || self.backoff_max_s < self.backoff_base_s {
            return Err(invalid("backoff_base_s", "must be ≥ 1 and ≤ backoff_max_s"));
        }
        if !(1..=120).contains(&self.request_timeout_s) {
            return Err(invalid("request_timeout_s", "must be 1 to 120"));
        }
        if !(1..=10).contains(&self.sms_max_segments) {
            return Err(invalid("sms_max_segments", "must be 1 to 10"));
        }
        if self.group_hold_s > 600 || self.group_window_s > 3600 || self.group_hold_s > self.group_window_s {
            return Err(invalid(
                "group_hold_s",
                "must be at most 600 s and at most group_window_s (at most 3600 s)",
            ));
        }
        if !(1..=365).contains(&self.link_ttl_days) {
            return Err(invalid("link_ttl_days", "must be 1 to 365"));
        }
        let quiet_hours = self
            .quiet_hours
            .as_ref()
            .map(|q| QuietHours::new(&q.start, &q.end, q.channels.clone()))
            .transpose()
            .map_err(|e| invalid("quiet_hours", e.to_string()))?;
        let mut templates = Templates::defaults(&self.fallback_locale);
        for t in &self.templates {
            let template = Template { subject: t.subject.clone().unwrap_or_default(), body: t.body.clone() };
            templates
                .insert(t.milestone, t.channel, &t.locale, template)
                .map_err(|e| invalid("templates", e.to_string()))?;
        }
        if let Some(reason) = self.exceptions.keys().find(|r| !REASONS.contains(&r.as_str())) {
            return Err(invalid(
                &format!("exceptions.{reason}"),
                format!("not a reason a driver or carrier gives; one of: {}", REASONS.join(", ")),
            ));
        }
        let still_on_its_way = match &self.still_on_its_way {
            None => None,
            Some(s) => {
                if !(1..=60).contains(&s.after_days) || !(1..=60).contains(&s.every_days) {
                    return Err(invalid(
                        "still_on_its_way",
                        "after_days and every_days must be 1 to 60 (days; 3 and 2 are the defaults)",
                    ));
                }
                let day = |n: u32| Duration::from_secs(u64::from(n) * 86_400);
                Some(Schedule { after: day(s.after_days), every: day(s.every_days) })
            }
        };
        let channel_map =
            ChannelMap::from_toml(self.channel_map.as_ref()).map_err(|e| invalid("channel_map", e))?;
        let b = &self.brand;
        let brand = Brand::new(
            &b.name,
            &b.primary_color,
            &b.text_color,
            b.logo_url.as_deref(),
            b.map_tiles.as_deref(),
        )
        .map_err(|e| invalid(&format!("brand.{}", e.field), e.message))?;
        let providers = registry::build(&self.providers, &callback_base_url, link_secret)?;
        let escalation = escalation(self.alerts.as_ref(), &providers)?;
        Ok(NotifySettings {
            public_base_url,
            callback_base_url,
            link_signer: LinkSigner::new(link_secret),
            link_ttl: Duration::from_secs(self.link_ttl_days * 86_400),
            dispatch: self.dispatch,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            batch: self.batch,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                base: Duration::from_secs(self.backoff_base_s),
                max: Duration::from_secs(self.backoff_max_s),
            },
            request_timeout: Duration::from_secs(self.request_timeout_s),
            sms_max_segments: self.sms_max_segments,
            quiet_hours,
            templates: Arc::new(templates),
            providers,
            escalation,
            group_hold: Duration::from_secs(self.group_hold_s),
            group_window: Duration::from_secs(self.group_window_s),
            exception_steps: self.exceptions.clone(),
            still_on_its_way,
            channel_map,
            brand,
        })
    }
}

/// The alert steps: the escalation list as configured, else every staff provider in
/// priority order, each taking over only when the one before did not take the alert.
fn escalation(alerts: Option<&AlertsSection>, providers: &Providers) -> Result<Vec<Step>, NotifyConfigError> {
    let listed = alerts.map(|a| a.escalation.as_slice()).unwrap_or_default();
    if listed.is_empty() {
        // Only those that post to their own space: one that sends to a person needs `to`.
        return Ok(providers
            .for_channel(Channel::Staff)
            .filter(|p| registry::find(p.kind).is_some_and(|t| t.channels.first() == Some(&Channel::Staff)))
            .map(|p| Step { provider: Arc::clone(p), to: None, ack_timeout: None })
            .collect());
    }
    let default_wait = alerts.map_or(d_ack_timeout(), |a| a.ack_timeout_s);
    let mut steps = Vec::new();
    for (i, step) in listed.iter().enumerate() {
        let field = format!("alerts.escalation[{i}]");
        let Some(p) = providers.by_name(&step.provider) else {
            return Err(invalid(&field, format!("no provider is named {:?}", step.provider)));
        };
        let Some(ty) = registry::find(p.kind).filter(|t| t.channels.contains(&Channel::Staff)) else {
            return Err(invalid(&field, format!("{} ({}) cannot carry operations alerts", p.name, p.kind)));
        };
        // A provider made for customers sends to someone: the step must say to whom.
        let needs_to = !matches!(ty.channels.first(), Some(Channel::Staff));
        match (&step.to, needs_to) {
            (None, true) => {
                return Err(invalid(&field, format!("{} sends to a number or address: give `to`", p.name)));
            }
            (Some(_), false) => {
                return Err(invalid(
                    &field,
                    format!("{} posts to its own space: `to` means nothing there", p.name),
                ));
            }
            (Some(to), true) if to.trim().is_empty() || to.len() > 320 => {
                return Err(invalid(&field, "`to` is empty or too long"));
            }
            _ => {}
        }
        let wait = step.after_s.unwrap_or(default_wait);
        if !(10..=7 * 86_400).contains(&wait) {
            return Err(invalid(&field, "the wait for an acknowledgement must be 10 s to 7 days"));
        }
        steps.push(Step {
            provider: Arc::clone(p),
            to: step.to.clone(),
            ack_timeout: Some(Duration::from_secs(wait)),
        });
    }
    Ok(steps)
}

impl NotifySettings {
    /// Reads and validates `[notify]` from the hub's validated settings.
    pub fn from_hub(settings: &crate::config::Settings) -> Result<Self, NotifyConfigError> {
        NotifyConfig::from_table(settings.notify.as_ref())?
            .validate(&settings.public_base_url, &settings.link_token_secret)
    }

    /// Whether a channel has a provider.
    pub fn configured(&self, channel: ContactChannel) -> bool {
        self.providers.configured(Channel::Customer(channel))
    }

    /// The tracking link for a shipment, valid for the link lifetime from `now_ms`.
    pub fn tracking_link(&self, shipment_id: i64, now_ms: i64) -> String {
        let ttl_ms = i64::try_from(self.link_ttl.as_millis()).unwrap_or(i64::MAX);
        let token = self.link_signer.sign(shipment_id, now_ms.saturating_add(ttl_ms));
        format!("{}/t/{token}", self.public_base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn the_default_section_parses_and_validates() {
        let table: toml::Table = toml::from_str(DEFAULT_CONFIG).expect("toml");
        let config = NotifyConfig::from_table(table.get("notify").and_then(|v| v.as_table())).expect("parse");
        let settings = config.validate("https://track.example.com/", SECRET).expect("valid");
        assert_eq!(settings.public_base_url, "https://track.example.com");
        assert!(settings.quiet_hours.is_some());
        assert!(!settings.configured(ContactChannel::Sms));
        assert!(settings.dispatch, "a lone hub sends");
        let absent = NotifyConfig::from_table(None).expect("parse").validate("https://t.example", SECRET);
        assert!(absent.expect("valid").dispatch, "dispatching is the default without a [notify] section");
        let quiet: toml::Table = toml::from_str("dispatch = false").expect("toml");
        let quiet =
            NotifyConfig::from_table(Some(&quiet)).expect("parse").validate("https://t.example", SECRET);
        assert!(!quiet.expect("valid").dispatch, "a second hub of a group can leave sending to the first");
    }

    #[test]
    fn providers_and_overrides_parse_and_typos_are_errors() {
        let text = r#"
            channel_map = [{ milestone = "nearby", channels = ["sms"] }]
            [twilio]
            account_sid = "AC123"
            auth_token = "tok"
            from = "+15005550006"
            [sendgrid]
            api_key = "SG.x"
            from_email = "parcels@example.com"
            [sendgrid.template_ids]
            delivered = "d-1"
            [webhook]
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            [[templates]]
            milestone = "delivered"
            locale = "fr"
            body = "Livré {link}"
        "#;
        let table: toml::Table = toml::from_str(text).expect("toml");
        let settings = NotifyConfig::from_table(Some(&table))
            .expect("parse")
            .validate("https://t.example", SECRET)
            .expect("valid");
        let kinds: Vec<&str> = settings.providers.all().iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ["twilio", "sendgrid", "webhook"], "shorthand tables are providers");
        let twilio = format!("{:?}", settings.providers.by_name("twilio").expect("twilio").provider);
        assert!(twilio.contains("https://t.example/callbacks/twilio/status"), "{twilio}");
        let sendgrid = format!("{:?}", settings.providers.by_name("sendgrid").expect("sendgrid").provider);
        assert!(sendgrid.contains("d-1"), "{sendgrid}");
        assert!(settings.configured(ContactChannel::Webhook));
        assert!(!format!("{settings:?}").contains("tok\""), "no secret in Debug output");
        let typo: toml::Table =
            toml::from_str("[twilio]\naccount_sid = \"AC1\"\nauthtoken = \"x\"").expect("toml");
        let typo = NotifyConfig::from_table(Some(&typo)).expect("parse").validate("https://t", SECRET);
        assert!(
            matches!(&typo, Err(NotifyConfigError::Invalid { field, message }) if field == "providers.twilio" && message.contains("authtoken")),
            "{typo:?}"
        );
        let both: toml::Table =
            toml::from_str("[twilio]\naccount_sid = \"AC1\"\nauth_token = \"x\"\nfrom = \"+1\"\nmessaging_service_sid = \"MG1\"")
                .expect("toml");
        assert!(NotifyConfig::from_table(Some(&both)).expect("parse").validate("https://t", SECRET).is_err());
    }

    #[test]
    fn the_whatsapp_webhook_needs_both_the_app_secret_and_the_verify_token() {
        let section = |extra: &str| {
            let text = format!(
                "[whatsapp]\nphone_number_id = \"1\"\naccess_token = \"t\"\ntemplate_name = \"n\"\n{extra}"
            );
            let table: toml::Table = toml::from_str(&text).expect("toml");
            NotifyConfig::from_table(Some(&table)).expect("parse").validate("https://t.example", SECRET)
        };
        let debug =
            |s: NotifySettings| format!("{:?}", s.providers.by_name("whatsapp").expect("whatsapp").provider);
        assert!(debug(section("").expect("valid without a webhook")).contains("webhook: false"));
        assert!(
            debug(section("app_secret = \"s\"\nverify_token = \"v\"").expect("valid"))
                .contains("webhook: true")
        );
        assert!(section("app_secret = \"s\"").is_err(), "a secret without a verify token");
        assert!(section("verify_token = \"v\"").is_err(), "a verify token without a secret");
        assert!(section("app_secret = \"\"\nverify_token = \"v\"").is_err(), "an empty secret");
    }

    #[test]
    fn still_on_its_way_updates_are_off_unless_configured_and_their_days_are_checked() {
        let settings = |text: &str| {
            let table: toml::Table = toml::from_str(text).expect("toml");
            NotifyConfig::from_table(Some(&table)).expect("parse").validate("https://t.example", SECRET)
        };
        assert_eq!(settings("").expect("valid").still_on_its_way, None, "opt-in");
        let day = Duration::from_secs(86_400);
        assert_eq!(
            settings("[still_on_its_way]").expect("valid").still_on_its_way,
            Some(Schedule { after: 3 * day, every: 2 * day })
        );
        assert_eq!(
            settings("[still_on_its_way]\nafter_days = 5\nevery_days = 7").expect("valid").still_on_its_way,
            Some(Schedule { after: 5 * day, every: 7 * day })
        );
        assert!(settings("[still_on_its_way]\nevery_days = 0").is_err());
        let typo: toml::Table = toml::from_str("[still_on_its_way]\nafter_day = 4").expect("toml");
        assert!(NotifyConfig::from_table(Some(&typo)).is_err(), "a typo is an error");
        let mapped = settings("channel_map = [{ milestone = \"dispatched\", channels = [\"email\"] }]")
            .expect("valid")
            .channel_map;
        assert!(!mapped.allows(Milestone::Dispatched, ContactChannel::Sms));
        assert!(mapped.allows(Milestone::Delivered, ContactChannel::Sms));
    }

    #[test]
    fn the_brand_section_is_checked_for_legible_colours_and_usable_urls() {
        let settings = |text: &str| {
            let table: toml::Table = toml::from_str(text).expect("toml");
            NotifyConfig::from_table(Some(&table)).expect("parse").validate("https://t.example", SECRET)
        };
        let plain = settings("").expect("valid").brand;
        assert_eq!((plain.name.as_str(), plain.map_tiles.is_none()), ("Doorstep", true));
        let acme = settings(
            "[brand]\nname = \"Acme Parcels\"\nprimary_color = \"#0b3d91\"\n\
             logo_url = \"https://cdn.acme.example/logo.svg\"\n\
             map_tiles = \"https://tile.example.org/{z}/{x}/{y}.png\"",
        )
        .expect("valid")
        .brand;
        assert_eq!(acme.name, "Acme Parcels");
        assert!(acme.csp().contains("img-src 'self' https://cdn.acme.example https://tile.example.org;"));
        let pale = settings("[brand]\nprimary_color = \"#ffcc00\"");
        assert!(
            matches!(&pale, Err(NotifyConfigError::Invalid { field, message })
                if field == "brand.primary_color" && message.contains("1.51:1") && message.contains("4.5:1")),
            "{pale:?}"
        );
        let tiles = settings("[brand]\nmap_tiles = \"https://tile.example.org/{z}/{x}.png\"");
        assert!(
            matches!(&tiles, Err(NotifyConfigError::Invalid { field, .. }) if field == "brand.map_tiles"),
            "{tiles:?}"
        );
        let typo: toml::Table = toml::from_str("[brand]\nprimary_colour = \"#0b3d91\"").expect("toml");
        assert!(NotifyConfig::from_table(Some(&typo)).is_err(), "a typo is an error");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy { max_attempts: 5, base: Duration::from_secs(30), max: Duration::from_secs(300) };
        assert_eq!(p.backoff(1, 0), Duration::from_secs(30));
        assert_eq!(p.backoff(2, 0), Duration::from_secs(60));
        assert_eq!(p.backoff(9, 0), Duration::from_secs(300));
        assert!(p.backoff(1, 100) <= Duration::from_secs(33));
    }
}
