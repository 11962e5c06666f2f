//! The hub's TOML configuration, in two stages: [`Config`] is what the file says
//! (`deny_unknown_fields`, so a typo is an error, not a silently ignored line);
//! [`Config::validate`] turns it into [`Settings`], typed values with files loaded.
//!
//! `doorstep-hub --print-default-config` prints [`DEFAULT_CONFIG`], which is also what
//! the docs show; a test keeps it parsing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Milestone;
use crate::store::ContactChannel;

/// The commented default configuration file.
pub const DEFAULT_CONFIG: &str = r#"# doorstep-hub configuration (TOML). Unknown keys are errors.

[hub]
# The hub's state: a SQLite file (WAL mode), created and migrated on start; or, for hubs
# on several hosts, a PostgreSQL URL ("postgres://user:password@host:5432/doorstep", TLS
# unless it ends in ?sslmode=disable; see docs/scaling.md and `doorstep-hub migrate`).
database = "/var/lib/doorstep-hub/hub.db"
# The hub's Ed25519 key (PKCS#8), made with `doorstep-hub keygen`. Signs acks and routes;
# agents are configured with its public half (`doorstep-hub pubkey`).
key = "/var/lib/doorstep-hub/hub.key"
# Base URL of the tracking page, for links in customer messages.
public_base_url = "https://track.example.com"
# Secret for signed tracking-link tokens: at least 32 bytes of text, or "file:/path".
link_token_secret = "file:/var/lib/doorstep-hub/link.secret"
# fsync every commit (synchronous = FULL). Acks are promises: keep this on.
full_sync = true

[mqtt]
host = "127.0.0.1"
port = 1883
# Fixed client id: the broker keeps this hub's session (clean_session = false) and queues
# events for it while it restarts.
client_id = "doorstep-hub"
# Shared subscription group: hubs with the same group split the devices' events. They
# must all use the same hub.database (one SQLite file on one host, or one PostgreSQL for
# hubs on several hosts: the shared state that makes acks cumulative across them), each
# with its own client_id and [http] listen address.
# One of them at a time sends notifications: the holder of a lease in the database.
# With the broker ACL (`doorstep-hub broker-acl`), the group name is a secret: Mosquitto
# does not check subscriptions, so a van that guessed it could take a share of the
# events. Make it unguessable (`openssl rand -hex 16`) and give each hub its own client
# certificate with CN = its client_id, listed with `broker-acl --hub-user`.
# shared_group = "hubs-3f9c2a7d5e1b4c60a8d2f7e9b1c3a5d7"
# How the hubs of a group split the vans:
# - "round_robin" (the default): one shared subscription, and the broker deals each
#   message to the next hub, so every hub holds a share of every van.
# - "by_van": each hub subscribes to its own vans' topics only. The hubs alive in the
#   database (a row each, renewed every second, on the database's clock) give each van
#   to one of them, the same on every hub. A hub that stops leaves at once; one that
#   dies, or loses its broker connection, has its vans taken by the others within about
#   6 seconds, and the vans resend what was not acked. A van's events then reach one hub
#   while the group is stable, so added hubs add throughput on a broker without a hash
#   strategy (Mosquitto); and no shared subscription exists for a van to join. Only
#   registered, trusted vans are heard: another device's publishes reach no hub (and are
#   not counted as rejected). Needs shared_group, which names the group.
# assign = "by_van"
keepalive_s = 30
# QoS 1 messages in flight to the broker (acks, routes).
inflight = 1000
# [mqtt.tls]
# ca = "/etc/doorstep-hub/ca.pem"
# cert = "/etc/doorstep-hub/hub.pem"   # mutual TLS, optional
# key = "/etc/doorstep-hub/hub-key.pem"

[ingest]
# Signature-verifying threads; 0 = one per CPU.
verify_threads = 0
# Most events committed in one SQLite transaction (acks follow each commit).
batch_max = 1024
# How far a device event's GNSS time may be ahead of this hub's clock, seconds. Beyond
# it the event is quarantined: stored and acknowledged (so the van's outbox moves on),
# never acted on, counted as doorstep_hub_ingest_total{outcome="quarantined",
# reason="time_in_future"}. Genuine events are never ahead of true time; this absorbs
# a hub clock running behind.
max_event_ahead_s = 600

[http]
# The public surface, the one to put behind the internet-facing proxy: the tracking page
# (/t/...), carrier webhooks (/webhooks/...), provider callbacks (/callbacks/...) and
# /healthz. Nothing else answers here: /v1 and /metrics are 404 on this listener.
listen = "127.0.0.1:8080"
# Largest request body accepted (API and webhooks), bytes.
max_body_bytes = 1048576
# Per-client limits on the public surface; beyond them the answer is 429 with
# Retry-After. The tracking page: requests a minute per client address, and the burst
# allowed at once. Webhooks and provider callbacks come in bursts from a carrier's or a
# provider's few servers, so their limit is per second and larger.
page_per_minute = 120
page_burst = 30
webhooks_per_second = 50
webhooks_burst = 500
# Behind a reverse proxy every request comes from the proxy's address: set this to key
# the limits on the last X-Forwarded-For entry (the one your proxy appends). Leave it
# off when clients reach the hub directly, or they could name any address they like.
trust_forwarded_for = false

[api]
# The private surface for order systems and staff: /v1/... (API keys with scopes, made
# with `doorstep-hub apikey create`), /v1/openapi.json, /metrics (scope metrics:read)
# and /healthz. Keep it on loopback or a private network.
listen = "127.0.0.1:8081"

[carriers.aftership]
# Webhook secret from the AfterShip admin (aftership-hmac-sha256 header).
# secret = "..."
# Registering new shipments with AfterShip (POST /tracking/2024-10/trackings), so it tracks
# them and its webhooks start flowing: every shipment whose carrier is listed in `register`,
# once, retried on 429 and 5xx; "already exists" counts as registered. At most
# register_per_second requests a second from this hub (AfterShip allows 20 per account).
# The API key (as-api-key header): inline or "file:/path".
# api_key = "file:/etc/doorstep-hub/aftership-api.key"
# register = ["ups", "fedex"]
api_base_url = "https://api.aftership.com"
register_per_second = 10
# AfterShip's courier slug per carrier name, beyond the built-in ups, fedex, usps, dhl,
# dhl express, canada post, royal mail, australia post, dpd, gls, ontrac and purolator:
# [carriers.aftership.slugs]
# "posti" = "finland-posti"

[carriers.easypost]
# Webhook secret given when the EasyPost webhook was created (X-Hmac-Signature header).
# secret = "..."

[carriers.shipengine]
# ShipEngine's signing keys: their published JWKS document (JSON), or one PEM public key
# with the key id ShipEngine names it by; and how far a webhook timestamp may be from now.
# public_key = "/etc/doorstep-hub/shipengine-jwks.json"
# key_id = "..."        # only for a PEM file
timestamp_window_s = 300
# Polling ShipEngine (GET /v1/tracking) for carriers that never call a webhook: each
# shipment whose carrier is listed in `poll`, poll_first_s after it is created, then every
# poll_interval_s while its status moves, doubling up to poll_max_interval_s while it does
# not, until the carrier says delivered, cancelled or returned, or the shipment is
# poll_max_age_days old. At most poll_per_second requests a second from this hub
# (ShipEngine allows 200 a minute per account). The API key (API-Key header): inline or
# "file:/path".
# api_key = "file:/etc/doorstep-hub/shipengine-api.key"
# poll = ["usps", "ups"]
poll_base_url = "https://api.shipengine.com"
poll_per_second = 2
poll_first_s = 60
poll_interval_s = 1800
poll_max_interval_s = 21600
poll_max_age_days = 30
# ShipEngine's carrier_code per carrier name, beyond the built-in usps, ups, fedex,
# dhl and dhl express (dhl_express), canada post (canada_post) and ontrac:
# [carriers.shipengine.carrier_codes]
# "purolator" = "purolator_ca"

[orders]
# Order systems' webhooks create shipments: those get this locale when the order has none,
# and this IANA time zone for quiet hours and local times (orders carry none).
locale = "en"
time_zone = "UTC"

[orders.shopify]
# The Shopify app's client secret (X-Shopify-Hmac-Sha256 over the raw body). Subscribe
# fulfillments/create, fulfillments/update and orders/fulfilled to <public>/webhooks/shopify.
# secret = "..."

[orders.woocommerce]
# The WooCommerce webhook's secret (X-WC-Webhook-Signature). Subscribe order.updated to
# <public>/webhooks/woocommerce; tracking comes from the Shipment Tracking extension.
# secret = "..."

[support]
# Helpdesks' new tickets that name a tracking number are recorded as support contacts:
# the customer still asked although the messages went out. /metrics and
# GET /v1/support/leak report, per milestone and channel, how many customers that was.
# Tickets tagged with ignore_tag are the hub's own (its helpdesk sinks tag theirs so).
ignore_tag = "doorstep"

[support.zendesk]
# The signing secret of a Zendesk webhook subscribed to the ticket event "Ticket created"
# (zen:event-type:ticket.created), pointed at <public>/webhooks/zendesk.
# secret = "..."

[support.freshdesk]
# Freshdesk signs nothing: its automation rule ("Ticket is created" -> Trigger webhook,
# POST to <public>/webhooks/freshdesk) sends this header with this secret (16+ characters),
# and the ticket's id, subject, description and tags (docs/sinks.md shows the body).
# header = "X-Doorstep-Secret"
# secret = "..."

[reconcile]
# How long one "delivered" signal (device or carrier) waits uncontradicted before the
# customer is told, seconds.
hold_period_s = 1800
# A van's "delivered at address" is re-checked against its own evidence: moving faster
# than this at the scan (m/s) with a dwell below the stop's is not a delivery but an
# alert (at_address_while_moving). Keep both in step with the agents' geofence settings.
standing_speed_mps = 1.5
# The dwell a stop needs when its route does not set one, seconds (agents: geofence.dwell_s).
default_dwell_s = 30
# When the carrier's expected delivery moves later than what the customer was last told
# by more than this many hours, and no exception explains it, the customer gets one
# "delayed, now expected ..." message per new date. A bare date counts as the middle of
# its day, so a day's slip is always told and a window moved within the day is not.
delay_tolerance_h = 12

# [notify] (below) holds the providers, their credentials and the templates.
# Which channels each milestone goes to; without a map, every consented channel. Updates
# between milestones (a delay, "still on its way") go where the current milestone goes.
# [[notify.channel_map]]
# milestone = "nearby"
# channels = ["sms", "whatsapp"]
"#;

/// The whole commented default file `--print-default-config` prints: [`DEFAULT_CONFIG`],
/// the `[notify]` section, every provider type's sample entry and every sink type's, commented.
pub fn default_config() -> String {
    format!(
        "{DEFAULT_CONFIG}\n{}\n{}\n{}",
        crate::notify::config::DEFAULT_CONFIG,
        crate::notify::registry::samples(),
        crate::sinks::registry::samples()
    )
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[hub]`.
    pub hub: HubSection,
    /// `[mqtt]`.
    pub mqtt: MqttSection,
    /// `[ingest]`.
    #[serde(default)]
    pub ingest: IngestSection,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpSection,
    /// `[api]`.
    #[serde(default)]
    pub api: ApiSection,
    /// `[carriers.*]`.
    #[serde(default)]
    pub carriers: CarriersSection,
    /// `[orders]`: order systems' webhooks.
    #[serde(default)]
    pub orders: OrdersSection,
    /// `[support]`: helpdesks' new tickets, for the leak report.
    #[serde(default)]
    pub support: SupportSection,
    /// `[reconcile]`.
    #[serde(default)]
    pub reconcile: ReconcileSection,
    /// `[notify]`: read by the notification module; ingest reads only `channel_map`.
    #[serde(default)]
    pub notify: Option<toml::Table>,
    /// `[[sinks]]`: business sinks (an event stream, helpdesks), built by `sinks::registry`.
    #[serde(default)]
    pub sinks: Vec<toml::Table>,
}

/// `[hub]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// SQLite file.
    pub database: PathBuf,
    /// Hub key (PKCS#8).
    pub key: PathBuf,
    /// Base URL of the tracking page.
    pub public_base_url: String,
    /// Link token secret, inline or `file:/path`.
    pub link_token_secret: String,
    /// fsync each commit.
    #[serde(default = "yes")]
    pub full_sync: bool,
}

fn yes() -> bool {
    true
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host.
    pub host: String,
    /// Broker port; 8883 with TLS, 1883 without, when absent.
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id (fixed: the persistent session is keyed by it).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Shared subscription group (members share one database file).
    #[serde(default)]
    pub shared_group: Option<String>,
    /// How the hubs of the group split the vans.
    #[serde(default)]
    pub assign: Assign,
    /// Keepalive, seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
    /// Outgoing QoS 1 in flight.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// TLS to the broker.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

fn default_client_id() -> String {
    "doorstep-hub".into()
}
fn default_keepalive() -> u64 {
    30
}
fn default_inflight() -> u16 {
    1000
}

/// PEM files for TLS to the broker.
pub use doorstep_runtime::tls::TlsFiles;

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Verifier threads; 0 = one per CPU.
    #[serde(default)]
    pub verify_threads: usize,
    /// Events per transaction, at most.
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// How far ahead of the hub's clock an event's GNSS time may be, seconds.
    #[serde(default = "default_max_event_ahead")]
    pub max_event_ahead_s: u64,
}

fn default_batch() -> usize {
    1024
}
fn default_max_event_ahead() -> u64 {
    u64::try_from(crate::ingest::DEFAULT_MAX_EVENT_AHEAD_MS / 1000).unwrap_or(600)
}

impl Default for IngestSection {
    fn default() -> Self {
        Self { verify_threads: 0, batch_max: default_batch(), max_event_ahead_s: default_max_event_ahead() }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest body, bytes.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Tracking page requests a minute per client.
    #[serde(default = "default_page_per_minute")]
    pub page_per_minute: u32,
    /// Tracking page burst per client.
    #[serde(default = "default_page_burst")]
    pub page_burst: u32,
    /// Webhook and callback requests a second per client.
    #[serde(default = "default_webhooks_per_second")]
    pub webhooks_per_second: u32,
    /// Webhook and callback burst per client.
    #[serde(default = "default_webhooks_burst")]
    pub webhooks_burst: u32,
    /// Key the limits on the last X-Forwarded-For entry.
    #[serde(default)]
    pub trust_forwarded_for: bool,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_body() -> usize {
    1024 * 1024
}
fn default_page_per_minute() -> u32 {
    120
}
fn default_page_burst() -> u32 {
    30
}
fn default_webhooks_per_second() -> u32 {
    50
}
fn default_webhooks_burst() -> u32 {
    500
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_body(),
            page_per_minute: default_page_per_minute(),
            page_burst: default_page_burst(),
            webhooks_per_second: default_webhooks_per_second(),
            webhooks_burst: default_webhooks_burst(),
            trust_forwarded_for: false,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Listen address of the private API.
    #[serde(default = "default_api_listen")]
    pub listen: String,
}

fn default_api_listen() -> String {
    "127.0.0.1:8081".into()
}

impl Default for ApiSection {
    fn default() -> Self {
        Self { listen: default_api_listen() }
    }
}

/// Per-client rate limits on the public surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Tracking page: one request replenished every this long...
    pub page_period: Duration,
    /// ...up to this many at once.
    pub page_burst: u32,
    /// Webhooks and callbacks: one request replenished every this long...
    pub webhooks_period: Duration,
    /// ...up to this many at once.
    pub webhooks_burst: u32,
    /// Key on the last X-Forwarded-For entry instead of the peer address.
    pub trust_forwarded_for: bool,
}

impl Default for RateLimits {
    fn default() -> Self {
        HttpSection::default().rate_limits()
    }
}

impl HttpSection {
    fn rate_limits(&self) -> RateLimits {
        let per = |n: u32, unit_ms: u64| Duration::from_millis((unit_ms / u64::from(n.max(1))).max(1));
        RateLimits {
            page_period: per(self.page_per_minute, 60_000),
            page_burst: self.page_burst,
            webhooks_period: per(self.webhooks_per_second, 1_000),
            webhooks_burst: self.webhooks_burst,
            trust_forwarded_for: self.trust_forwarded_for,
        }
    }
}

// `[carriers.*]`, `[orders.*]` and `[support.*]`: what reaches the hub from outside a van.
mod inbound;
use inbound::default_window;
pub use inbound::{
    AfterShipSection, CarriersSection, FreshdeskSection, OrderSettings, OrdersSection, SecretSection,
    ShipEngineSection, SupportSection, SupportSettings,
};

/// `[reconcile]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    /// Hold period, seconds.
    #[serde(default = "default_hold")]
    pub hold_period_s: u64,
    /// Speed above which a van is moving at a scan, m/s.
    #[serde(default = "default_standing_speed")]
    pub standing_speed_mps: f64,
    /// A stop's dwell when its route does not set one, seconds.
    #[serde(default = "default_dwell")]
    pub default_dwell_s: u32,
    /// How much later the carrier's expected delivery must move to be told as a delay,
    /// hours.
    #[serde(default = "default_delay_tolerance")]
    pub delay_tolerance_h: u32,
}

fn default_delay_tolerance() -> u32 {
    u32::try_from(crate::reconcile::DEFAULT_DELAY_TOLERANCE_MS / 3_600_000).unwrap_or(12)
}

fn default_hold() -> u64 {
    1800
}
fn default_standing_speed() -> f64 {
    f64::from(crate::reconcile::DEFAULT_STANDING_SPEED_CMPS) / 100.0
}
fn default_dwell() -> u32 {
    crate::reconcile::DEFAULT_DWELL_S
}

impl Default for ReconcileSection {
    fn default() -> Self {
        Self {
            hold_period_s: default_hold(),
            standing_speed_mps: default_standing_speed(),
            default_dwell_s: default_dwell(),
            delay_tolerance_h: default_delay_tolerance(),
        }
    }
}

/// One `[[notify.channel_map]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelMapEntry {
    milestone: Milestone,
    channels: Vec<ContactChannel>,
}

/// Which channels each milestone is sent on. Without an entry for a milestone, every
/// channel the customer consented to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelMap(BTreeMap<Milestone, Vec<ContactChannel>>);

impl ChannelMap {
    /// Whether `milestone` goes out on `channel`.
    pub fn allows(&self, milestone: Milestone, channel: ContactChannel) -> bool {
        self.0.get(&milestone).is_none_or(|channels| channels.contains(&channel))
    }

    /// A map from explicit entries.
    pub fn from_entries(entries: impl IntoIterator<Item = (Milestone, Vec<ContactChannel>)>) -> Self {
        Self(entries.into_iter().collect())
    }

    /// Reads the `[[notify.channel_map]]` entries as written (absent: the empty map).
    pub fn from_toml(value: Option<&toml::Value>) -> Result<Self, String> {
        let Some(value) = value else { return Ok(Self::default()) };
        let entries: Vec<ChannelMapEntry> = value.clone().try_into().map_err(|e| format!("{e}"))?;
        Ok(Self::from_entries(entries.into_iter().map(|e| (e.milestone, e.channels))))
    }
}

/// How the hubs of a group split the vans (`mqtt.assign`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assign {
    /// One shared subscription: the broker deals each message to the next hub.
    #[default]
    RoundRobin,
    /// Each hub subscribes to its own vans' topics, split among the hubs alive in the
    /// database (`ingest::assign`).
    ByVan,
}

/// Broker connection settings.
#[derive(Clone)]
pub struct MqttSettings {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Client id.
    pub client_id: String,
    /// Shared subscription group.
    pub shared_group: Option<String>,
    /// How the group splits the vans.
    pub assign: Assign,
    /// Keepalive.
    pub keepalive: Duration,
    /// Outgoing in-flight window.
    pub inflight: u16,
    /// TLS client config.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("broker", &format_args!("{}:{}", self.host, self.port))
            .field("client_id", &self.client_id)
            .field("shared_group", &self.shared_group)
            .field("assign", &self.assign)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttSettings {
    /// Plain TCP to a local broker with defaults, for tests and benchmarks.
    pub fn plain(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            shared_group: None,
            assign: Assign::RoundRobin,
            keepalive: Duration::from_secs(default_keepalive()),
            inflight: default_inflight(),
            tls: None,
        }
    }
}

/// Carrier webhook secrets, loaded.
#[derive(Clone, Default)]
pub struct CarrierSecrets {
    /// AfterShip HMAC secret.
    pub aftership: Option<String>,
    /// EasyPost HMAC secret.
    pub easypost: Option<String>,
    /// ShipEngine keys: JWKS JSON or PEM text.
    pub shipengine_keys: Option<String>,
    /// Key id of a PEM ShipEngine key.
    pub shipengine_key_id: Option<String>,
    /// ShipEngine timestamp window.
    pub shipengine_window: Duration,
    /// Polling ShipEngine for carriers that never call, when `[carriers.shipengine] poll`
    /// lists any.
    pub poll: Option<crate::carrier::poll::PollSettings>,
    /// Registering new shipments with AfterShip, when `[carriers.aftership] register`
    /// lists any.
    pub register: Option<crate::carrier::registration::RegisterSettings>,
}

impl std::fmt::Debug for CarrierSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("CarrierSecrets")
            .field("aftership", &self.aftership.is_some())
            .field("easypost", &self.easypost.is_some())
            .field("shipengine", &self.shipengine_keys.is_some())
            .field("poll", &self.poll)
            .field("register", &self.register)
            .finish_non_exhaustive()
    }
}

/// A validated [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// SQLite file.
    pub database: PathBuf,
    /// Hub key file.
    pub key_path: PathBuf,
    /// fsync each commit.
    pub full_sync: bool,
    /// Tracking page base URL, without a trailing slash.
    pub public_base_url: String,
    /// Link token secret bytes.
    pub link_token_secret: Arc<[u8]>,
    /// Broker.
    pub mqtt: MqttSettings,
    /// Verifier threads (resolved, at least 1).
    pub verify_threads: usize,
    /// Events per transaction.
    pub batch_max: usize,
    /// The public listener: tracking page, webhooks, callbacks, health.
    pub listen: SocketAddr,
    /// The private listener: `/v1`, `/metrics`, health.
    pub api_listen: SocketAddr,
    /// Per-client limits on the public listener.
    pub rate_limits: RateLimits,
    /// Largest HTTP body.
    pub max_body_bytes: usize,
    /// Carrier webhook secrets.
    pub carriers: CarrierSecrets,
    /// Order systems' webhooks.
    pub orders: OrderSettings,
    /// Helpdesks' webhooks.
    pub support: SupportSettings,
    /// Hold period.
    pub hold_period: Duration,
    /// Standing threshold for re-checking at-address evidence, cm/s.
    pub standing_speed_cmps: u16,
    /// A stop's dwell when its route does not set one, seconds.
    pub default_dwell_s: u32,
    /// How much later the carrier's expected delivery must move to be told as a delay.
    pub delay_tolerance: Duration,
    /// How far ahead of the hub's clock an event's GNSS time may be.
    pub max_event_ahead: Duration,
    /// Milestone → channels.
    pub channel_map: ChannelMap,
    /// The `[notify]` table, for the notification module.
    pub notify: Option<toml::Table>,
    /// The configured business sinks.
    pub sinks: crate::sinks::Sinks,
}

/// Smallest link token secret, bytes.
pub const MIN_SECRET_LEN: usize = 32;

fn load_secret(what: &str, value: &str) -> Result<String, ConfigError> {
    match value.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| invalid(format!("{what}: cannot read {path}: {e}"))),
        None => Ok(value.to_owned()),
    }
}

impl Config {
    /// Reads and parses a config file (stage one).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })
    }

    /// Parses config text (stage one).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })
    }

    /// Checks values and loads referenced files (stage two).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        crate::store::check_database_path(&self.hub.database).map_err(|e| invalid(e.to_string()))?;
        let secret = load_secret("hub.link_token_secret", &self.hub.link_token_secret)?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(invalid(format!(
                "hub.link_token_secret must be at least {MIN_SECRET_LEN} bytes (e.g. `openssl rand -hex 32`)"
            )));
        }
        let base = self.hub.public_base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(invalid("hub.public_base_url must start with https:// (or http:// for tests)"));
        }
        if self.mqtt.host.trim().is_empty() {
            return Err(invalid("mqtt.host is empty"));
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 64 {
            return Err(invalid("mqtt.client_id must be 1 to 64 characters"));
        }
        if let Some(group) = &self.mqtt.shared_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            return Err(invalid("mqtt.shared_group must be non-empty without '/', '+' or '#'"));
        }
        if self.mqtt.assign == Assign::ByVan && self.mqtt.shared_group.is_none() {
            return Err(invalid(
                "mqtt.assign = \"by_van\" splits the vans among the hubs of a group: set mqtt.shared_group to the group's name, the same on every hub",
            ));
        }
        if self.mqtt.inflight == 0 {
            return Err(invalid("mqtt.inflight must be at least 1"));
        }
        let tls = self.mqtt.tls.as_ref().map(tls_config).transpose()?;
        if !(1..=100_000).contains(&self.ingest.batch_max) {
            return Err(invalid("ingest.batch_max must be 1 to 100000"));
        }
        let listen: SocketAddr = self.http.listen.parse().map_err(|e| {
            invalid(format!("http.listen {:?} is not an address:port: {e}", self.http.listen))
        })?;
        if !(1024..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(invalid("http.max_body_bytes must be 1 KiB to 64 MiB"));
        }
        let api_listen: SocketAddr =
            self.api.listen.parse().map_err(|e| {
                invalid(format!("api.listen {:?} is not an address:port: {e}", self.api.listen))
            })?;
        if api_listen == listen && listen.port() != 0 {
            return Err(invalid(
                "api.listen must differ from http.listen: the private API must not share the public listener",
            ));
        }
        for (name, value) in [
            ("http.page_per_minute", self.http.page_per_minute),
            ("http.page_burst", self.http.page_burst),
            ("http.webhooks_per_second", self.http.webhooks_per_second),
            ("http.webhooks_burst", self.http.webhooks_burst),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(invalid(format!("{name} must be 1 to 1000000")));
            }
        }
        let carriers = CarrierSecrets {
            aftership: self
                .carriers
                .aftership
                .as_ref()
                .and_then(|c| c.secret.as_deref())
                .map(|s| load_secret("carriers.aftership.secret", s))
                .transpose()?,
            easypost: self
                .carriers
                .easypost
                .as_ref()
                .and_then(|c| c.secret.as_deref())
                .map(|s| load_secret("carriers.easypost.secret", s))
                .transpose()?,
            shipengine_key_id: self.carriers.shipengine.as_ref().and_then(|c| c.key_id.clone()),
            shipengine_keys: self
                .carriers
                .shipengine
                .as_ref()
                .and_then(|c| c.public_key.as_ref())
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map_err(|e| invalid(format!("carriers.shipengine.public_key {}: {e}", p.display())))
                })
                .transpose()?,
            shipengine_window: Duration::from_secs(
                self.carriers.shipengine.as_ref().map_or(default_window(), |c| c.timestamp_window_s),
            ),
            poll: self.carriers.shipengine.as_ref().map(ShipEngineSection::polling).transpose()?.flatten(),
            register: self
                .carriers
                .aftership
                .as_ref()
                .map(AfterShipSection::registration)
                .transpose()?
                .flatten(),
        };
        let channel_map = match self.notify.as_ref().and_then(|n| n.get("channel_map")) {
            None => ChannelMap::default(),
            Some(value) => {
                let entries: Vec<ChannelMapEntry> =
                    value.clone().try_into().map_err(|e| invalid(format!("notify.channel_map: {e}")))?;
                ChannelMap(entries.into_iter().map(|e| (e.milestone, e.channels)).collect())
            }
        };
        let speed = self.reconcile.standing_speed_mps;
        if !(speed.is_finite() && (0.1..=10.0).contains(&speed)) {
            return Err(invalid(format!(
                "reconcile.standing_speed_mps = {speed} must be 0.1 to 10 (m/s; the agents use 1.5)"
            )));
        }
        // In range, so the rounded cm/s fit a u16.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let standing_speed_cmps = (speed * 100.0).round() as u16;
        if !(1..=doorstep_proto::route::MAX_DWELL_S).contains(&self.reconcile.default_dwell_s) {
            return Err(invalid(format!(
                "reconcile.default_dwell_s must be 1 to {} (seconds; the agents use 30)",
                doorstep_proto::route::MAX_DWELL_S
            )));
        }
        if self.reconcile.delay_tolerance_h > 30 * 24 {
            return Err(invalid(format!(
                "reconcile.delay_tolerance_h = {} must be 0 to 720 (hours; 12 is the default)",
                self.reconcile.delay_tolerance_h
            )));
        }
        if !(1..=7 * 24 * 3600).contains(&self.ingest.max_event_ahead_s) {
            return Err(invalid("ingest.max_event_ahead_s must be 1 s to 7 days (600 is the default)"));
        }
        let verify_threads = match self.ingest.verify_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n.min(64),
        };
        Ok(Settings {
            database: self.hub.database.clone(),
            key_path: self.hub.key.clone(),
            full_sync: self.hub.full_sync,
            public_base_url: base,
            link_token_secret: Arc::from(secret.into_bytes()),
            mqtt: MqttSettings {
                host: self.mqtt.host.clone(),
                port: self.mqtt.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
                client_id: self.mqtt.client_id.clone(),
                shared_group: self.mqtt.shared_group.clone(),
                assign: self.mqtt.assign,
                keepalive: Duration::from_secs(self.mqtt.keepalive_s.max(5)),
                inflight: self.mqtt.inflight,
                tls,
            },
            verify_threads,
            batch_max: self.ingest.batch_max,
            listen,
            api_listen,
            rate_limits: self.http.rate_limits(),
            max_body_bytes: self.http.max_body_bytes,
            carriers,
            orders: self.orders.settings()?,
            support: self.support.settings()?,
            hold_period: Duration::from_secs(self.reconcile.hold_period_s),
            standing_speed_cmps,
            default_dwell_s: self.reconcile.default_dwell_s,
            delay_tolerance: Duration::from_secs(u64::from(self.reconcile.delay_tolerance_h) * 3600),
            max_event_ahead: Duration::from_secs(self.ingest.max_event_ahead_s),
            channel_map,
            notify: self.notify.clone(),
            sinks: crate::sinks::registry::build(&self.sinks).map_err(|e| invalid(e.to_string()))?,
        })
    }
}

fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    doorstep_runtime::tls::client_config(files).map_err(|e| match e {
        doorstep_runtime::tls::TlsError::File { path, reason } => {
            invalid(format!("mqtt.tls file {}: {reason}", path.display()))
        }
        doorstep_runtime::tls::TlsError::Unpaired => invalid("mqtt.tls: cert and key must be given together"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_parses_and_typos_are_errors() {
        let config = Config::parse(DEFAULT_CONFIG).expect("default parses");
        assert_eq!(config.mqtt.client_id, "doorstep-hub");
        assert_eq!(config.reconcile.hold_period_s, 1800);
        let typo = DEFAULT_CONFIG.replace("client_id =", "clientid =");
        assert!(matches!(Config::parse(&typo), Err(ConfigError::Parse { .. })));
        // What --print-default-config prints, [notify] and the provider samples included.
        let printed = default_config().replace(
            "link_token_secret = \"file:/var/lib/doorstep-hub/link.secret\"",
            "link_token_secret = \"0123456789abcdef0123456789abcdef\"",
        );
        let settings = Config::parse(&printed).expect("printed default parses").validate().expect("valid");
        let notify = crate::notify::NotifySettings::from_hub(&settings).expect("[notify] validates");
        assert!(notify.dispatch && notify.providers.all().is_empty(), "every provider is commented out");
        for ty in crate::notify::registry::TYPES {
            assert!(printed.contains(&format!("# type = \"{}\"", ty.kind)), "{} is shown", ty.kind);
        }
        assert!(settings.sinks.is_empty(), "every sink is commented out");
        for ty in crate::sinks::registry::TYPES {
            assert!(printed.contains(&format!("# type = \"{}\"", ty.kind)), "sink {} is shown", ty.kind);
        }
    }

    #[test]
    fn validation_loads_secrets_and_checks_ranges() {
        let text = DEFAULT_CONFIG.replace(
            "link_token_secret = \"file:/var/lib/doorstep-hub/link.secret\"",
            "link_token_secret = \"0123456789abcdef0123456789abcdef\"",
        ) + "\n[[notify.channel_map]]\nmilestone = \"nearby\"\nchannels = [\"sms\"]\n";
        let settings = Config::parse(&text).expect("parse").validate().expect("valid");
        assert_eq!(settings.mqtt.port, 1883);
        assert!(settings.verify_threads >= 1);
        assert!(settings.channel_map.allows(Milestone::Nearby, ContactChannel::Sms));
        assert!(!settings.channel_map.allows(Milestone::Nearby, ContactChannel::Email));
        assert!(settings.channel_map.allows(Milestone::Delivered, ContactChannel::Email));
        assert_eq!(settings.standing_speed_cmps, crate::reconcile::DEFAULT_STANDING_SPEED_CMPS);
        assert_eq!(settings.default_dwell_s, crate::reconcile::DEFAULT_DWELL_S);
        assert_eq!(settings.max_event_ahead, Duration::from_secs(600));
        assert_eq!(
            settings.delay_tolerance.as_millis(),
            u128::try_from(crate::reconcile::DEFAULT_DELAY_TOLERANCE_MS).expect("positive")
        );
        let patient = text.replace("delay_tolerance_h = 12", "delay_tolerance_h = 36");
        let patient = Config::parse(&patient).expect("parse").validate().expect("valid");
        assert_eq!(patient.delay_tolerance, Duration::from_secs(36 * 3600));
        let forever = text.replace("delay_tolerance_h = 12", "delay_tolerance_h = 10000");
        assert!(matches!(Config::parse(&forever).expect("parse").validate(), Err(ConfigError::Invalid(_))));
        let crawling = text.replace("standing_speed_mps = 1.5", "standing_speed_mps = 0.0");
        assert!(matches!(Config::parse(&crawling).expect("parse").validate(), Err(ConfigError::Invalid(_))));
        let short = text.replace("0123456789abcdef0123456789abcdef", "short");
        assert!(matches!(Config::parse(&short).expect("parse").validate(), Err(ConfigError::Invalid(_))));
        let url = text.replace("/var/lib/doorstep-hub/hub.db", "mysql://hub@db.internal/doorstep");
        let err = Config::parse(&url).expect("parse").validate().expect_err("not a database this hub uses");
        assert!(err.to_string().contains("a URL this hub cannot use"), "{err}");
        let postgres =
            text.replace("/var/lib/doorstep-hub/hub.db", "postgres://hub:secret@db.internal/doorstep");
        let settings = Config::parse(&postgres).expect("parse").validate().expect("PostgreSQL is a database");
        assert_eq!(
            crate::store::database_label(&settings.database),
            "postgres://hub:***@db.internal/doorstep",
            "the password stays out of logs"
        );
        assert_eq!(settings.mqtt.assign, Assign::RoundRobin, "round-robin unless asked");
        let by_van = text.replace("# assign = \"by_van\"", "assign = \"by_van\"");
        let err = Config::parse(&by_van).expect("parse").validate().expect_err("a group to split");
        assert!(err.to_string().contains("set mqtt.shared_group"), "{err}");
        let grouped = by_van.replace("# shared_group = \"hubs-", "shared_group = \"hubs-");
        let settings = Config::parse(&grouped).expect("parse").validate().expect("valid");
        assert_eq!(settings.mqtt.assign, Assign::ByVan);
        let unknown = text.replace("# assign = \"by_van\"", "assign = \"by_fleet\"");
        assert!(matches!(Config::parse(&unknown), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn polling_and_registration_start_when_carriers_are_listed_and_need_their_api_keys() {
        let text = DEFAULT_CONFIG.replace(
            "link_token_secret = \"file:/var/lib/doorstep-hub/link.secret\"",
            "link_token_secret = \"0123456789abcdef0123456789abcdef\"",
        );
        let settings = Config::parse(&text).expect("parse").validate().expect("valid");
        assert!(settings.carriers.poll.is_none() && settings.carriers.register.is_none());

        let dir = tempfile::tempdir().expect("dir");
        let key_file = dir.path().join("shipengine.key");
        std::fs::write(&key_file, "TEST_se_key\n").expect("key file");
        let listed = text
            .replace(
                "# poll = [\"usps\", \"ups\"]",
                &format!("poll = [\"USPS\", \"dhl\"]\napi_key = \"file:{}\"", key_file.display()),
            )
            .replace(
                "# register = [\"ups\", \"fedex\"]",
                "register = [\"ups\", \"posti\"]\napi_key = \"as-key\"",
            )
            .replace("# [carriers.aftership.slugs]\n# \"posti\"", "[carriers.aftership.slugs]\n\"posti\"");
        let carriers = Config::parse(&listed).expect("parse").validate().expect("valid").carriers;
        let poll = carriers.poll.expect("polling");
        assert_eq!(poll.api_key, "TEST_se_key");
        assert_eq!(poll.base_url, "https://api.shipengine.com");
        let codes: Vec<(&str, &str)> =
            poll.carrier_codes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(codes, [("dhl", "dhl_express"), ("usps", "usps")]);
        assert_eq!(poll.jobs.per_second, 2.0);
        assert_eq!(poll.jobs.schedule.interval, Duration::from_secs(1800));
        assert_eq!(poll.jobs.schedule.max_age, Duration::from_secs(30 * 86_400));
        let register = carriers.register.expect("registration");
        assert_eq!(
            (register.api_key.as_str(), register.base_url.as_str()),
            ("as-key", "https://api.aftership.com")
        );
        let slugs: Vec<(&str, &str)> = register.slugs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(slugs, [("posti", "finland-posti"), ("ups", "ups")]);
        let printed = format!("{poll:?}{register:?}");
        assert!(!printed.contains("TEST_se_key") && !printed.contains("as-key"), "keys are never printed");

        for broken in [
            listed.replace(&format!("api_key = \"file:{}\"", key_file.display()), ""),
            listed.replace("poll_interval_s = 1800", "poll_interval_s = 5"),
            listed.replace("poll_per_second = 2", "poll_per_second = 0"),
            listed.replace("api_base_url = \"https://api.aftership.com\"", "api_base_url = \"ftp://x\""),
        ] {
            assert!(
                matches!(Config::parse(&broken).expect("parse").validate(), Err(ConfigError::Invalid(_))),
                "{broken}"
            );
        }
    }
}
