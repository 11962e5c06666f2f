//! Counters, gauges and histograms for `/metrics`, in the Prometheus text format.
//!
//! Every counted event has a named method here with the same labels as its log line
//! (`outcome`, `reason`, `carrier`, `channel`), so a counter and a log search find the
//! same thing. The families live in a `prometheus-client` registry: each series is an
//! atomic behind the family's lock, so a few increments per message cost far less than
//! the signature check they follow.
//!
//! Two histograms show what the gauges cannot: `doorstep_hub_ingest_lag_seconds` (every
//! stored event's GNSS time to its commit, where the gauges keep only the last batch's
//! newest and oldest) and `doorstep_hub_scan_to_message_seconds` (the van's delivery scan
//! to a provider accepting the customer's "delivered" message, by channel).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::{LeakRow, NoticeLogged, QueueDepths};

/// The `Content-Type` of [`Metrics::render`]'s text (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `doorstep_hub_ingest_lag_seconds`' upper bounds, seconds: from a van in coverage
/// (tens of milliseconds) to one out of a dead zone hours late.
pub const INGEST_LAG_BUCKETS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

/// `doorstep_hub_scan_to_message_seconds`' upper bounds, seconds: from a message out
/// within a second of the scan, through the reconciler's hold and provider retries, to
/// one held back by the recipient's quiet hours until the morning.
pub const SCAN_TO_MESSAGE_BUCKETS: [f64; 14] =
    [0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0];

/// What a family counts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    /// A gauge of a fraction.
    Ratio,
    /// With the constructor that gives each series its buckets.
    Histogram(fn() -> Histogram),
}

/// Metric names with their type and help text, in output order.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "doorstep_hub_ingest_total",
        Kind::Counter,
        "Device messages by outcome (stored, duplicate, quarantined, rejected) and reason.",
    ),
    ("doorstep_hub_acks_published_total", Kind::Counter, "Signed cumulative acks published to devices."),
    (
        "doorstep_hub_routes_published_total",
        Kind::Counter,
        "Signed routes queued for the broker, retained, by reason (posted, device_online, broker_session_new).",
    ),
    (
        "doorstep_hub_watches_published_total",
        Kind::Counter,
        "Signed watches sent to vans (a customer whose stop is next, or an operator, is looking).",
    ),
    (
        "doorstep_hub_stop_notes_published_total",
        Kind::Counter,
        "Signed stop notes (customers' delivery instructions) sent to vans, alone or after their route.",
    ),
    (
        "doorstep_hub_customer_actions_total",
        Kind::Counter,
        "Customers' actions on the tracking page by action (instructions, not_home) and outcome (saved, refused reason).",
    ),
    ("doorstep_hub_blob_chunks_total", Kind::Counter, "Photo chunks by outcome and reason."),
    ("doorstep_hub_photos_total", Kind::Counter, "Reassembled photos by outcome (verified, hash_mismatch)."),
    ("doorstep_hub_webhooks_total", Kind::Counter, "Carrier webhooks by carrier and outcome."),
    (
        "doorstep_hub_carrier_polls_total",
        Kind::Counter,
        "ShipEngine polls by the shipment's carrier and outcome (stored, duplicate, unmatched, not_yet, rate_limited, auth_error, server_error, network_error, malformed, rejected, ...).",
    ),
    (
        "doorstep_hub_carrier_registrations_total",
        Kind::Counter,
        "AfterShip registrations by the shipment's carrier and outcome (registered, already_registered, rate_limited, auth_error, server_error, network_error, rejected, ...).",
    ),
    (
        "doorstep_hub_api_requests_total",
        Kind::Counter,
        "Private API requests by outcome (allowed, unauthenticated, revoked, forbidden) and scope.",
    ),
    (
        "doorstep_hub_rate_limited_total",
        Kind::Counter,
        "Public requests refused with 429, by surface (tracking_page, webhooks, callbacks).",
    ),
    ("doorstep_hub_notifications_total", Kind::Counter, "Notification attempts by channel and outcome."),
    (
        "doorstep_hub_questions_total",
        Kind::Counter,
        "Customers' questions by text message, by channel and answer (named, only_open, which_one, unknown_sender, not_a_question).",
    ),
    (
        "doorstep_hub_provider_attempts_total",
        Kind::Counter,
        "Requests to each configured provider by result (accepted, retry, ambiguous, rejected, opted_out).",
    ),
    (
        "doorstep_hub_sink_deliveries_total",
        Kind::Counter,
        "Business sink delivery attempts by sink and outcome (sent, skipped, attempt_failed, failed, unknown).",
    ),
    (
        "doorstep_hub_notifications_enqueued_total",
        Kind::Counter,
        "Notifications enqueued by channel and milestone.",
    ),
    ("doorstep_hub_alerts_total", Kind::Counter, "Operations alerts raised by code."),
    ("doorstep_hub_commits_total", Kind::Counter, "Ingest transactions committed."),
    ("doorstep_hub_committed_events_total", Kind::Counter, "Events in committed ingest transactions."),
    ("doorstep_hub_busy_us_total", Kind::Counter, "Time spent working, by pipeline stage, microseconds."),
    (
        "doorstep_hub_ingest_lag_ms",
        Kind::Gauge,
        "Event time to commit, last batch's newest event, milliseconds.",
    ),
    (
        "doorstep_hub_ingest_lag_max_ms",
        Kind::Gauge,
        "Event time to commit, last batch's oldest event, milliseconds.",
    ),
    (
        "doorstep_hub_ingest_lag_seconds",
        Kind::Histogram(ingest_lag_histogram),
        "Event time (GNSS) to commit, every stored event, seconds.",
    ),
    (
        "doorstep_hub_scan_to_message_seconds",
        Kind::Histogram(scan_to_message_histogram),
        "Delivery scan at the door (its GNSS time) to a provider accepting the customer's delivered notification, by channel, seconds.",
    ),
    (
        "doorstep_hub_device_status_total",
        Kind::Counter,
        "Retained device state and live position messages by channel (state, pos), outcome and reason.",
    ),
    ("doorstep_hub_devices_online", Kind::Gauge, "Active devices whose last state message said online."),
    ("doorstep_hub_queue_depth", Kind::Gauge, "Items waiting, by queue."),
    (
        "doorstep_hub_support_leak_shipments",
        Kind::Gauge,
        "Shipments whose customer was sent a milestone's message in the last 30 days, by milestone and channel (all: any channel).",
    ),
    (
        "doorstep_hub_support_leak_contacted",
        Kind::Gauge,
        "Of those, shipments whose customer still opened a support ticket about the parcel after the message, by milestone and channel.",
    ),
    (
        "doorstep_hub_support_leak_share",
        Kind::Ratio,
        "Contacted over shipments, by milestone and channel: the share of customers a message left asking support.",
    ),
    ("doorstep_hub_mqtt_connected", Kind::Gauge, "1 while the hub's broker session is up."),
    (
        "doorstep_hub_mqtt_subscriptions",
        Kind::Gauge,
        "Topic filters the broker has granted in this session, counted once every SUBSCRIBE and UNSUBSCRIBE was answered (4 when the hub hears every van; 4 per van it is given when the group splits the fleet by van).",
    ),
    (
        "doorstep_hub_group_members",
        Kind::Gauge,
        "Live hubs of this hub's group, itself included, when the group splits the fleet by van (mqtt.assign = by_van); 0 otherwise.",
    ),
    (
        "doorstep_hub_vans_assigned",
        Kind::Gauge,
        "Vans this hub subscribes to when its group splits the fleet by van.",
    ),
];

/// A series' labels, in the order they are written.
type Labels = Vec<(Cow<'static, str>, String)>;

/// A histogram family with its buckets fixed when the family is made.
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn ingest_lag_histogram() -> Histogram {
    Histogram::new(INGEST_LAG_BUCKETS)
}

fn scan_to_message_histogram() -> Histogram {
    Histogram::new(SCAN_TO_MESSAGE_BUCKETS)
}

/// One family, as the registry and the named methods share it.
#[derive(Debug, Clone)]
enum Series {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    Ratio(Family<Labels, Gauge<f64, AtomicU64>>),
    Histogram(Histograms),
}

/// The hub's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: HashMap<&'static str, Series>,
    /// The (outcome, reason) pairs `doorstep_hub_ingest_total` has a series for, so
    /// [`Metrics::ingest_outcome_total`] can add a outcome's reasons up.
    ingest_reasons: Mutex<BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut families = HashMap::with_capacity(FAMILIES.len());
        for &(name, kind, help) in FAMILIES {
            // The registry ends every help text with a full stop, and writes a
            // counter's `_total` itself.
            let help = help.strip_suffix('.').unwrap_or(help);
            let series = match kind {
                Kind::Counter => {
                    let family = Family::<Labels, Counter>::default();
                    registry.register(name.strip_suffix("_total").unwrap_or(name), help, family.clone());
                    Series::Counter(family)
                }
                Kind::Gauge => {
                    let family = Family::<Labels, Gauge>::default();
                    registry.register(name, help, family.clone());
                    Series::Gauge(family)
                }
                Kind::Ratio => {
                    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                    registry.register(name, help, family.clone());
                    Series::Ratio(family)
                }
                Kind::Histogram(make) => {
                    let family = Histograms::new_with_constructor(make);
                    registry.register(name, help, family.clone());
                    Series::Histogram(family)
                }
            };
            families.insert(name, series);
        }
        Self { registry, families, ingest_reasons: Mutex::new(BTreeSet::new()) }
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (Cow::Borrowed(*k), (*v).to_owned())).collect()
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Milliseconds as seconds; an event time a little ahead of the hub's clock counts as 0.
fn seconds(ms: i64) -> f64 {
    // Exact up to 2^53 ms (285,000 years).
    #[allow(clippy::cast_precision_loss)]
    let ms = ms.max(0) as f64;
    ms / 1000.0
}

impl Metrics {
    fn family(&self, name: &str) -> Option<&Series> {
        let family = self.families.get(name);
        debug_assert!(family.is_some(), "{name} is not in FAMILIES");
        family
    }

    fn add(&self, name: &'static str, pairs: &[(&'static str, &str)], n: u64) {
        if let Some(Series::Counter(family)) = self.family(name) {
            family.get_or_create(&labels(pairs)).inc_by(n);
        }
    }

    fn set(&self, name: &'static str, pairs: &[(&'static str, &str)], value: i64) {
        if let Some(Series::Gauge(family)) = self.family(name) {
            family.get_or_create(&labels(pairs)).set(value);
        }
    }

    fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], seconds: f64) {
        if let Some(Series::Histogram(family)) = self.family(name) {
            family.get_or_create(&labels(pairs)).observe(seconds);
        }
    }

    /// The current value of a counter or gauge series (tests, `/healthz`); 0 for a series
    /// not yet seen, and for a histogram (read those from [`Metrics::render`]).
    pub fn get(&self, name: &str, pairs: &[(&str, &str)]) -> i64 {
        let key: Labels = pairs.iter().map(|(k, v)| (Cow::Owned((*k).to_owned()), (*v).to_owned())).collect();
        match self.families.get(name) {
            Some(Series::Counter(family)) => family.get(&key).map_or(0, |c| clamp(c.get())),
            Some(Series::Gauge(family)) => family.get(&key).map_or(0, |g| g.get()),
            Some(Series::Ratio(_) | Series::Histogram(_)) | None => 0,
        }
    }

    /// A device message: `outcome` is stored, duplicate, quarantined (stored and acked, not
    /// acted on) or rejected; `reason` says why (`ok`, `bad_signature`, `topic_mismatch`,
    /// `time_in_future`, ...).
    pub fn ingest(&self, outcome: &str, reason: &str) {
        self.ingest_count(outcome, reason, 1);
    }

    /// `n` device messages with the same outcome and reason (a committed batch's count).
    pub fn ingest_count(&self, outcome: &str, reason: &str, n: i64) {
        let Some(Series::Counter(family)) = self.family("doorstep_hub_ingest_total") else { return };
        let key = labels(&[("outcome", outcome), ("reason", reason)]);
        if family.get(&key).is_none() {
            let mut seen = self.ingest_reasons.lock().unwrap_or_else(|e| e.into_inner());
            seen.insert((outcome.to_owned(), reason.to_owned()));
        }
        family.get_or_create(&key).inc_by(u64::try_from(n).unwrap_or(0));
    }

    /// Sum of ingest counters with this outcome, over all reasons.
    pub fn ingest_outcome_total(&self, outcome: &str) -> i64 {
        let reasons: Vec<String> = {
            let seen = self.ingest_reasons.lock().unwrap_or_else(|e| e.into_inner());
            seen.iter().filter(|(o, _)| o == outcome).map(|(_, r)| r.clone()).collect()
        };
        reasons
            .iter()
            .map(|reason| self.get("doorstep_hub_ingest_total", &[("outcome", outcome), ("reason", reason)]))
            .fold(0i64, i64::saturating_add)
    }

    /// A device's retained state or live position: `outcome` is stored, stale (an older
    /// position than the one held) or rejected.
    pub fn device_status(&self, channel: &str, outcome: &str, reason: &str) {
        self.add(
            "doorstep_hub_device_status_total",
            &[("channel", channel), ("outcome", outcome), ("reason", reason)],
            1,
        );
    }

    /// An ack published.
    pub fn ack_published(&self) {
        self.add("doorstep_hub_acks_published_total", &[], 1);
    }

    /// A signed watch handed to the broker.
    pub fn watch_published(&self) {
        self.add("doorstep_hub_watches_published_total", &[], 1);
    }

    /// A signed stop note handed to the broker.
    pub fn stop_note_published(&self) {
        self.add("doorstep_hub_stop_notes_published_total", &[], 1);
    }

    /// A customer's action on the tracking page: `saved`, or why it was refused
    /// (`too_long`, `control_character`, `malformed`, `closed`, ...).
    pub fn customer_action(&self, action: &str, outcome: &str) {
        self.add("doorstep_hub_customer_actions_total", &[("action", action), ("outcome", outcome)], 1);
    }

    /// A signed route queued for the broker: `posted` through the API, or published again
    /// because the broker may have lost it (`device_online`, `broker_session_new`).
    pub fn route_published(&self, reason: &str) {
        self.add("doorstep_hub_routes_published_total", &[("reason", reason)], 1);
    }

    /// A photo chunk handled.
    pub fn blob_chunk(&self, outcome: &str, reason: &str) {
        self.add("doorstep_hub_blob_chunks_total", &[("outcome", outcome), ("reason", reason)], 1);
    }

    /// A photo reassembled.
    pub fn photo(&self, outcome: &str) {
        self.add("doorstep_hub_photos_total", &[("outcome", outcome)], 1);
    }

    /// A carrier webhook: `outcome` is stored, duplicate, rejected; `reason` says why.
    pub fn webhook(&self, carrier: &str, outcome: &str, reason: &str) {
        self.add(
            "doorstep_hub_webhooks_total",
            &[("carrier", carrier), ("outcome", outcome), ("reason", reason)],
            1,
        );
    }

    /// One poll of ShipEngine for a shipment of `carrier`, and how it ended.
    pub fn carrier_poll(&self, carrier: &str, outcome: &str) {
        self.add("doorstep_hub_carrier_polls_total", &[("carrier", carrier), ("outcome", outcome)], 1);
    }

    /// One attempt to register a shipment of `carrier` with AfterShip, and how it ended.
    pub fn carrier_registration(&self, carrier: &str, outcome: &str) {
        self.add(
            "doorstep_hub_carrier_registrations_total",
            &[("carrier", carrier), ("outcome", outcome)],
            1,
        );
    }

    /// A private API request's authorization: `outcome` is allowed, unauthenticated,
    /// revoked or forbidden; `scope` is what the route needs.
    pub fn api_request(&self, outcome: &str, scope: &str) {
        self.add("doorstep_hub_api_requests_total", &[("outcome", outcome), ("scope", scope)], 1);
    }

    /// A public request refused by its rate limit.
    pub fn rate_limited(&self, surface: &str) {
        self.add("doorstep_hub_rate_limited_total", &[("surface", surface)], 1);
    }

    /// A notification attempt outcome (sent, delivered, failed, ...), for the dispatcher.
    pub fn notification(&self, channel: &str, outcome: NoticeLogged) {
        self.add(
            "doorstep_hub_notifications_total",
            &[("channel", channel), ("outcome", outcome.as_str())],
            1,
        );
    }

    /// A customer's question and the kind of answer it got.
    pub fn question(&self, channel: &str, kind: &str) {
        self.add("doorstep_hub_questions_total", &[("channel", channel), ("answer", kind)], 1);
    }

    /// One request to a configured provider and how it ended.
    pub fn provider_attempt(&self, provider: &str, result: &str) {
        self.add("doorstep_hub_provider_attempts_total", &[("provider", provider), ("result", result)], 1);
    }

    /// A customer's "delivered" notification accepted by its provider `scan_to_accept_ms`
    /// after the van's delivery scan at the door (the scan's GNSS time to the provider's
    /// acceptance).
    pub fn scan_to_message(&self, channel: &str, scan_to_accept_ms: i64) {
        self.observe(
            "doorstep_hub_scan_to_message_seconds",
            &[("channel", channel)],
            seconds(scan_to_accept_ms),
        );
    }

    /// One delivery attempt to a business sink and how it ended.
    pub fn sink_delivery(&self, sink: &str, outcome: &str) {
        self.add("doorstep_hub_sink_deliveries_total", &[("sink", sink), ("outcome", outcome)], 1);
    }

    /// A notification enqueued.
    pub fn notification_enqueued(&self, channel: &str, milestone: &str) {
        self.add(
            "doorstep_hub_notifications_enqueued_total",
            &[("channel", channel), ("milestone", milestone)],
            1,
        );
    }

    /// An operations alert raised.
    pub fn alert(&self, code: &str) {
        self.add("doorstep_hub_alerts_total", &[("code", code)], 1);
    }

    /// Shows every alert code the hub can raise, at zero until raised, so a dashboard or
    /// an alerting rule sees a new code (`at_address_while_moving`) before its first one.
    pub fn declare_alerts(&self, codes: impl IntoIterator<Item = &'static str>) {
        for code in codes {
            self.add("doorstep_hub_alerts_total", &[("code", code)], 0);
        }
    }

    /// An ingest transaction committed with `events` events; `lags_ms` is each stored
    /// event's event-time-to-commit. The gauges keep the newest (smallest lag) and the
    /// oldest (largest lag) of the batch; the histogram gets every one.
    pub fn committed(&self, events: usize, lags_ms: impl IntoIterator<Item = i64>) {
        self.add("doorstep_hub_commits_total", &[], 1);
        self.add("doorstep_hub_committed_events_total", &[], u64::try_from(events).unwrap_or(u64::MAX));
        let mut newest_oldest: Option<(i64, i64)> = None;
        if let Some(Series::Histogram(family)) = self.family("doorstep_hub_ingest_lag_seconds") {
            let histogram = family.get_or_create(&Labels::new());
            for lag in lags_ms {
                histogram.observe(seconds(lag));
                let (newest, oldest) = newest_oldest.get_or_insert((lag, lag));
                *newest = (*newest).min(lag);
                *oldest = (*oldest).max(lag);
            }
        }
        if let Some((newest, oldest)) = newest_oldest {
            self.set("doorstep_hub_ingest_lag_ms", &[], newest);
            self.set("doorstep_hub_ingest_lag_max_ms", &[], oldest);
        }
    }

    /// Time a pipeline stage spent working (`verify`, `writer`, `commit`).
    pub fn busy(&self, stage: &str, elapsed: std::time::Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.add("doorstep_hub_busy_us_total", &[("stage", stage)], us);
    }

    /// An in-memory queue's depth.
    pub fn queue_depth(&self, queue: &str, depth: usize) {
        self.set("doorstep_hub_queue_depth", &[("queue", queue)], i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The broker session state.
    pub fn mqtt_connected(&self, up: bool) {
        self.set("doorstep_hub_mqtt_connected", &[], i64::from(up));
    }

    /// Topic filters granted in the current broker session.
    pub fn mqtt_subscriptions(&self, granted: usize) {
        self.set("doorstep_hub_mqtt_subscriptions", &[], i64::try_from(granted).unwrap_or(i64::MAX));
    }

    /// The group's live hubs and this hub's share of the vans (`mqtt.assign = by_van`).
    pub fn group_split(&self, members: usize, vans: usize) {
        self.set("doorstep_hub_group_members", &[], i64::try_from(members).unwrap_or(i64::MAX));
        self.set("doorstep_hub_vans_assigned", &[], i64::try_from(vans).unwrap_or(i64::MAX));
    }

    /// Whether the broker session is up.
    pub fn is_mqtt_connected(&self) -> bool {
        self.get("doorstep_hub_mqtt_connected", &[]) == 1
    }

    /// The database's queue depths, as gauges.
    pub fn store_depths(&self, depths: &QueueDepths) {
        for (status, n) in &depths.outbox_by_status {
            self.set("doorstep_hub_queue_depth", &[("queue", &format!("notification_{status}"))], *n);
        }
        self.set("doorstep_hub_queue_depth", &[("queue", "ops_alerts_unsent")], depths.alerts_unsent);
        self.set("doorstep_hub_queue_depth", &[("queue", "reconcile_wakeups")], depths.wakeups);
        self.set("doorstep_hub_queue_depth", &[("queue", "photos_partial")], depths.photos_partial);
        self.set("doorstep_hub_devices_online", &[], depths.devices_online);
        for (status, n) in &depths.sink_outbox_by_status {
            self.set("doorstep_hub_queue_depth", &[("queue", &format!("sink_{status}"))], *n);
        }
    }

    /// The support leak report, as gauges (see `store::support`).
    pub fn support_leak(&self, rows: &[LeakRow]) {
        for row in rows {
            let (milestone, channel) = (row.milestone.name(), row.channel.name());
            let pairs = [("milestone", milestone.as_ref()), ("channel", channel.as_ref())];
            self.set("doorstep_hub_support_leak_shipments", &pairs, row.shipments);
            self.set("doorstep_hub_support_leak_contacted", &pairs, row.contacted);
            if let Some(Series::Ratio(family)) = self.family("doorstep_hub_support_leak_share") {
                family.get_or_create(&labels(&pairs)).set(row.share());
            }
        }
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4, served as
    /// [`CONTENT_TYPE`]). A labelled family shows once it has its first series; the
    /// histogram of ingest lag shows from the start.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LeakChannel, Named, Told};

    #[test]
    fn counters_render_in_the_prometheus_text_format() {
        let m = Metrics::default();
        m.ingest("rejected", "bad_signature");
        m.ingest("rejected", "bad_signature");
        m.ingest("stored", "ok");
        m.webhook("easypost", "rejected", "bad \"sig\"");
        let text = m.render();
        assert!(
            text.contains("doorstep_hub_ingest_total{outcome=\"rejected\",reason=\"bad_signature\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE doorstep_hub_ingest_total counter"));
        assert!(text.contains("reason=\"bad \\\"sig\\\"\""), "{text}");
        assert_eq!(m.ingest_outcome_total("rejected"), 2);
        assert_eq!(m.ingest_outcome_total("stored"), 1);
        assert_eq!(m.ingest_outcome_total("duplicate"), 0);
        assert!(!text.contains("# EOF"), "the 0.0.4 text format has no end marker: {text}");
    }

    #[test]
    fn every_alert_code_of_the_rules_table_is_shown_from_the_start() {
        let m = Metrics::default();
        m.declare_alerts(crate::reconcile::alert_codes());
        m.alert("at_address_while_moving");
        let text = m.render();
        assert!(text.contains("doorstep_hub_alerts_total{code=\"at_address_while_moving\"} 1"), "{text}");
        assert!(
            text.contains("doorstep_hub_alerts_total{code=\"carrier_delivered_device_away\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn unlabelled_series_and_gauges_read_back_as_before() {
        let m = Metrics::default();
        assert_eq!(m.get("doorstep_hub_mqtt_connected", &[]), 0);
        assert!(!m.is_mqtt_connected());
        m.mqtt_connected(true);
        m.mqtt_subscriptions(4);
        m.queue_depth("mqtt_pending", 7);
        m.busy("verify", std::time::Duration::from_micros(1500));
        m.busy("verify", std::time::Duration::from_micros(500));
        assert!(m.is_mqtt_connected());
        assert_eq!(m.get("doorstep_hub_mqtt_subscriptions", &[]), 4);
        assert_eq!(m.get("doorstep_hub_queue_depth", &[("queue", "mqtt_pending")]), 7);
        assert_eq!(m.get("doorstep_hub_busy_us_total", &[("stage", "verify")]), 2000);
        m.queue_depth("mqtt_pending", 2);
        let text = m.render();
        assert!(text.contains("\ndoorstep_hub_mqtt_connected 1\n"), "{text}");
        assert!(text.contains("doorstep_hub_queue_depth{queue=\"mqtt_pending\"} 2\n"), "{text}");
        assert_eq!(m.get("doorstep_hub_no_such_family", &[]), 0);
    }

    /// The cumulative `_bucket` counts of one histogram series, as rendered.
    fn buckets(text: &str, series: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix(series))
            .filter_map(|l| {
                let (le, count) = l.split_once("\"} ")?;
                Some((le.rsplit("le=\"").next()?.to_owned(), count.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn the_ingest_lag_histogram_counts_every_event_and_the_gauges_keep_newest_and_oldest() {
        let m = Metrics::default();
        // A batch of three events: 40 ms, 700 ms and 2 hours after their GNSS time.
        m.committed(3, [700, 40, 7_200_000]);
        // One ahead of the hub's clock (within the tolerance): counted as no lag.
        m.committed(1, [-30]);
        // A batch without stored events leaves the gauges as they were.
        m.committed(0, []);
        assert_eq!(m.get("doorstep_hub_ingest_lag_ms", &[]), -30);
        assert_eq!(m.get("doorstep_hub_ingest_lag_max_ms", &[]), -30);
        assert_eq!(m.get("doorstep_hub_commits_total", &[]), 3);
        assert_eq!(m.get("doorstep_hub_committed_events_total", &[]), 4);

        let text = m.render();
        let got = buckets(&text, "doorstep_hub_ingest_lag_seconds_bucket{");
        let want: Vec<(String, u64)> = [
            ("0.05", 2),
            ("0.1", 2),
            ("0.25", 2),
            ("0.5", 2),
            ("1", 3),
            ("2.5", 3),
            ("5", 3),
            ("10", 3),
            ("30", 3),
            ("60", 3),
            ("300", 3),
            ("900", 3),
            ("3600", 3),
            ("14400", 4),
            ("+Inf", 4),
        ]
        .into_iter()
        .map(|(le, n)| (le.to_owned(), n))
        .collect();
        assert_eq!(got, want, "{text}");
        assert!(text.contains("\ndoorstep_hub_ingest_lag_seconds_count 4\n"), "{text}");
        assert!(text.contains("\ndoorstep_hub_ingest_lag_seconds_sum 7200.74\n"), "{text}");
        assert_eq!(INGEST_LAG_BUCKETS.len() + 1, got.len());

        let m = Metrics::default();
        m.committed(2, [1500, 250]);
        assert_eq!(m.get("doorstep_hub_ingest_lag_ms", &[]), 250);
        assert_eq!(m.get("doorstep_hub_ingest_lag_max_ms", &[]), 1500);
    }

    #[test]
    fn the_scan_to_message_histogram_is_kept_per_channel() {
        let m = Metrics::default();
        // Shown from its first observation on.
        assert!(!m.render().contains("doorstep_hub_scan_to_message_seconds"));
        m.scan_to_message("sms", 1_800);
        m.scan_to_message("sms", 45_000);
        m.scan_to_message("sms", 10 * 3_600_000);
        m.scan_to_message("email", 200);
        m.scan_to_message("email", 13 * 3_600_000);
        assert_eq!(m.get("doorstep_hub_scan_to_message_seconds", &[("channel", "sms")]), 0, "not a counter");

        let text = m.render();
        let sms = buckets(&text, "doorstep_hub_scan_to_message_seconds_bucket{channel=\"sms\",");
        let bounds: Vec<&str> = sms.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(
            bounds,
            [
                "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "300", "900", "1800", "3600", "14400",
                "43200", "+Inf"
            ]
        );
        let counts: Vec<u64> = sms.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3], "{text}");
        let email: Vec<u64> =
            buckets(&text, "doorstep_hub_scan_to_message_seconds_bucket{channel=\"email\",")
                .into_iter()
                .map(|(_, n)| n)
                .collect();
        assert_eq!(email, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2], "{text}");
        assert!(text.contains("doorstep_hub_scan_to_message_seconds_count{channel=\"sms\"} 3\n"), "{text}");
        assert!(text.contains("doorstep_hub_scan_to_message_seconds_count{channel=\"email\"} 2\n"), "{text}");
        assert!(
            text.contains("doorstep_hub_scan_to_message_seconds_sum{channel=\"email\"} 46800.2\n"),
            "{text}"
        );
    }

    #[test]
    fn every_family_renders_with_its_help_and_type() {
        let m = Metrics::default();
        // Every labelled family shows once it has a series.
        m.ingest("stored", "ok");
        m.ack_published();
        m.watch_published();
        m.stop_note_published();
        m.customer_action("instructions", "saved");
        m.route_published("posted");
        m.blob_chunk("stored", "ok");
        m.photo("verified");
        m.webhook("easypost", "stored", "ok");
        m.carrier_poll("usps", "changed");
        m.carrier_registration("ups", "registered");
        m.api_request("allowed", "metrics:read");
        m.rate_limited("tracking_page");
        m.notification("sms", NoticeLogged::Sent);
        m.provider_attempt("twilio", "accepted");
        m.question("sms", "named");
        m.notification_enqueued("sms", "delivered");
        m.sink_delivery("stream", "sent");
        m.alert("at_address_while_moving");
        m.committed(1, [120]);
        m.busy("commit", std::time::Duration::from_micros(3));
        m.scan_to_message("sms", 4_000);
        m.device_status("state", "stored", "ok");
        m.queue_depth("mqtt_pending", 0);
        m.mqtt_connected(true);
        m.mqtt_subscriptions(4);
        m.group_split(3, 34);
        m.store_depths(&QueueDepths::default());
        m.support_leak(&[LeakRow {
            milestone: Named::Known(Told::Milestone(crate::model::Milestone::Delivered)),
            channel: Named::Known(LeakChannel::One(crate::store::ContactChannel::Sms)),
            shipments: 4,
            contacted: 1,
        }]);
        let text = m.render();
        assert!(
            text.contains("doorstep_hub_support_leak_share{milestone=\"delivered\",channel=\"sms\"} 0.25\n"),
            "{text}"
        );
        for (name, kind, help) in FAMILIES {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge | Kind::Ratio => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            assert!(
                text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        // In the table's order, each family once.
        let order: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let want: Vec<&str> = FAMILIES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(order, want);
    }
}
