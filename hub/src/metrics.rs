//! Counters and gauges for `/metrics`, in the Prometheus text format.
//!
//! Every counted event has a named method here with the same labels as its log line
//! (`outcome`, `reason`, `carrier`, `channel`), so a counter and a log search find the
//! same thing. The registry is a small map behind a mutex: a few increments per message
//! cost far less than the signature check they follow.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::store::QueueDepths;

/// Metric names with their help text and type, in output order.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "doorstep_hub_ingest_total",
        "counter",
        "Device messages by outcome (stored, duplicate, quarantined, rejected) and reason.",
    ),
    ("doorstep_hub_acks_published_total", "counter", "Signed cumulative acks published to devices."),
    (
        "doorstep_hub_routes_published_total",
        "counter",
        "Signed routes queued for the broker, retained, by reason (posted, device_online, broker_session_new).",
    ),
    ("doorstep_hub_blob_chunks_total", "counter", "Photo chunks by outcome and reason."),
    ("doorstep_hub_photos_total", "counter", "Reassembled photos by outcome (verified, hash_mismatch)."),
    ("doorstep_hub_webhooks_total", "counter", "Carrier webhooks by carrier and outcome."),
    (
        "doorstep_hub_api_requests_total",
        "counter",
        "Private API requests by outcome (allowed, unauthenticated, revoked, forbidden) and scope.",
    ),
    (
        "doorstep_hub_rate_limited_total",
        "counter",
        "Public requests refused with 429, by surface (tracking_page, webhooks, callbacks).",
    ),
    ("doorstep_hub_notifications_total", "counter", "Notification attempts by channel and outcome."),
    (
        "doorstep_hub_notifications_enqueued_total",
        "counter",
        "Notifications enqueued by channel and milestone.",
    ),
    ("doorstep_hub_alerts_total", "counter", "Operations alerts raised by code."),
    ("doorstep_hub_commits_total", "counter", "Ingest transactions committed."),
    ("doorstep_hub_committed_events_total", "counter", "Events in committed ingest transactions."),
    ("doorstep_hub_busy_us_total", "counter", "Time spent working, by pipeline stage, microseconds."),
    ("doorstep_hub_ingest_lag_ms", "gauge", "Event time to commit, last batch's newest event, milliseconds."),
    (
        "doorstep_hub_ingest_lag_max_ms",
        "gauge",
        "Event time to commit, last batch's oldest event, milliseconds.",
    ),
    (
        "doorstep_hub_device_status_total",
        "counter",
        "Retained device state and live position messages by channel (state, pos), outcome and reason.",
    ),
    ("doorstep_hub_devices_online", "gauge", "Active devices whose last state message said online."),
    ("doorstep_hub_queue_depth", "gauge", "Items waiting, by queue."),
    ("doorstep_hub_mqtt_connected", "gauge", "1 while the hub's broker session is up."),
    (
        "doorstep_hub_mqtt_subscriptions",
        "gauge",
        "Topic filters the broker has granted in this session (4 when the hub hears every van).",
    ),
];

/// The hub's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, String), i64>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    // One allocation: ingest calls this for every batch and every verifier flush.
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 4).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

impl Metrics {
    fn add(&self, name: &'static str, pairs: &[(&str, &str)], n: i64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        *series.entry((name, labels(pairs))).or_insert(0) += n;
    }

    fn set(&self, name: &'static str, pairs: &[(&str, &str)], value: i64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.insert((name, labels(pairs)), value);
    }

    /// The current value of a series (tests, `/healthz`).
    pub fn get(&self, name: &str, pairs: &[(&str, &str)]) -> i64 {
        let key = labels(pairs);
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.iter().find(|((n, l), _)| *n == name && *l == key).map_or(0, |(_, v)| *v)
    }

    /// A device message: `outcome` is stored, duplicate, quarantined (stored and acked, not
    /// acted on) or rejected; `reason` says why (`ok`, `bad_signature`, `topic_mismatch`,
    /// `time_in_future`, ...).
    pub fn ingest(&self, outcome: &str, reason: &str) {
        self.add("doorstep_hub_ingest_total", &[("outcome", outcome), ("reason", reason)], 1);
    }

    /// `n` device messages with the same outcome and reason (a committed batch's count).
    pub fn ingest_count(&self, outcome: &str, reason: &str, n: i64) {
        self.add("doorstep_hub_ingest_total", &[("outcome", outcome), ("reason", reason)], n);
    }

    /// Sum of ingest counters with this outcome, over all reasons.
    pub fn ingest_outcome_total(&self, outcome: &str) -> i64 {
        let prefix = format!("outcome=\"{outcome}\"");
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .filter(|((n, l), _)| *n == "doorstep_hub_ingest_total" && l.starts_with(&prefix))
            .map(|(_, v)| *v)
            .sum()
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
    pub fn notification(&self, channel: &str, outcome: &str) {
        self.add("doorstep_hub_notifications_total", &[("channel", channel), ("outcome", outcome)], 1);
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

    /// An ingest transaction committed with `events` events; `lag_ms` is (newest, oldest)
    /// event-time-to-commit.
    pub fn committed(&self, events: usize, lag_ms: Option<(i64, i64)>) {
        self.add("doorstep_hub_commits_total", &[], 1);
        self.add("doorstep_hub_committed_events_total", &[], i64::try_from(events).unwrap_or(i64::MAX));
        if let Some((newest, oldest)) = lag_ms {
            self.set("doorstep_hub_ingest_lag_ms", &[], newest);
            self.set("doorstep_hub_ingest_lag_max_ms", &[], oldest);
        }
    }

    /// Time a pipeline stage spent working (`verify`, `writer`, `commit`).
    pub fn busy(&self, stage: &str, elapsed: std::time::Duration) {
        let us = i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX);
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
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for ((n, l), v) in series.iter() {
                if n == name {
                    if l.is_empty() {
                        let _ = writeln!(out, "{name} {v}");
                    } else {
                        let _ = writeln!(out, "{name}{{{l}}} {v}");
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
