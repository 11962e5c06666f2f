//! The numbers page: the last [`DAYS`] UTC days, per day and per carrier: deliveries,
//! exceptions, handovers scanned away from the address, and the share of carriers'
//! "delivered" reports that were premature (dated before the van came to the stop, as the
//! reconciler judges it); customer messages per channel and outcome; and how long
//! customers waited from the van's delivery scan to their "delivered" message (p50, p95).
//!
//! The store counts (`store::console`); the functions here are pure: the window, the
//! tables, the percentiles and the bar charts' geometry. Each chart has its figures in a
//! table beside it, for screen readers and for copying.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{Console, Operator, age, answered, when};
use crate::ingest::now_ms;
use crate::reconcile::CARRIER_CLOCK_SLACK_MS;
use crate::store::{DayCarrierCounts, NumbersData};

/// Days the page covers, today (UTC) included.
pub(crate) const DAYS: usize = 14;
const DAY_MS: i64 = 86_400_000;
/// Chart geometry, CSS pixels: the distance between bars, a bar's width, the tallest bar.
const BAR_STEP: u32 = 28;
const BAR_WIDTH: u32 = 20;
const BAR_MAX: u32 = 100;
/// Room under the bars for the day of the month.
const LABEL_ROOM: u32 = 18;

/// The window ending today: when it starts (midnight UTC, [`DAYS`] − 1 days ago) and its
/// days (`YYYY-MM-DD`), oldest first.
pub(crate) fn window(now_ms: i64) -> (i64, Vec<String>) {
    let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let first = today - (DAYS as i64 - 1) * DAY_MS;
    let days = (0..DAYS as i64).map(|i| day_of(first + i * DAY_MS)).collect();
    (first, days)
}

fn day_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// The figures of one day or one carrier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Figures {
    /// What the row is (a day, or a carrier).
    pub label: String,
    pub deliveries: i64,
    pub exceptions: i64,
    pub away_scans: i64,
    pub carrier_delivered: i64,
    pub premature: i64,
    /// `premature / carrier_delivered` as a percentage with one decimal; `None` without
    /// carrier reports.
    pub premature_share: Option<String>,
}

fn share(part: i64, whole: i64) -> Option<String> {
    (whole > 0).then(|| format!("{:.1}%", part as f64 * 100.0 / whole as f64))
}

/// One count of the store's: (day, carrier, n).
type Count = (String, String, i64);
/// Where a count goes in [`Figures`].
type Column = fn(&mut Figures) -> &mut i64;

/// The counts summed by `key` (0: day, 1: carrier), with every key of `keys` present in
/// that order (days without anything are rows of zeros) and any other key after them.
fn tally(counts: &DayCarrierCounts, by_carrier: bool, keys: &[String]) -> Vec<Figures> {
    let mut rows: BTreeMap<String, Figures> = BTreeMap::new();
    let columns: [(&[Count], Column); 5] = [
        (&counts.deliveries, |f| &mut f.deliveries),
        (&counts.exceptions, |f| &mut f.exceptions),
        (&counts.away_scans, |f| &mut f.away_scans),
        (&counts.carrier_delivered, |f| &mut f.carrier_delivered),
        (&counts.premature, |f| &mut f.premature),
    ];
    for (rows_in, field) in columns {
        for (day, carrier, n) in rows_in {
            let key = if by_carrier {
                if carrier.is_empty() { "(none named)".to_owned() } else { carrier.clone() }
            } else {
                day.clone()
            };
            *field(rows.entry(key).or_default()) += n;
        }
    }
    let mut out: Vec<Figures> = keys.iter().map(|k| rows.remove(k).unwrap_or_default().labelled(k)).collect();
    out.extend(rows.into_iter().map(|(k, f)| f.labelled(&k)));
    for f in &mut out {
        f.premature_share = share(f.premature, f.carrier_delivered);
    }
    out
}

impl Figures {
    fn labelled(mut self, label: &str) -> Self {
        label.clone_into(&mut self.label);
        self
    }
}

/// Per day of `days`, oldest first. Pure.
pub(crate) fn per_day(counts: &DayCarrierCounts, days: &[String]) -> Vec<Figures> {
    tally(counts, false, days)
}

/// Per carrier over the window, by name; shipments whose order system named no carrier
/// are "(none named)". Pure.
pub(crate) fn per_carrier(counts: &DayCarrierCounts) -> Vec<Figures> {
    tally(counts, true, &[])
}

/// The `p`th percentile of `values` by nearest rank (the smallest value with at least
/// `p`% of the values at or below it); `None` when there are none. Pure.
pub(crate) fn percentile(values: &[i64], p: u32) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let rank = (usize::try_from(p).unwrap_or(100) * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank - 1])
}

/// One bar of a chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Bar {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// The day of the month, under the bar.
    pub tick: String,
    /// The day, for the bar's tooltip.
    pub day: String,
    pub value: i64,
}

/// A bar chart per day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Chart {
    /// Element id stem (`deliveries`).
    pub id: &'static str,
    pub title: &'static str,
    pub width: u32,
    pub height: u32,
    pub baseline: u32,
    pub max: i64,
    pub bars: Vec<Bar>,
}

/// Bars for `(day, value)`, scaled so the largest is [`BAR_MAX`] pixels. Pure.
pub(crate) fn chart(id: &'static str, title: &'static str, values: &[(String, i64)]) -> Chart {
    let max = values.iter().map(|(_, v)| *v).max().unwrap_or(0).max(0);
    let baseline = BAR_MAX + 4;
    let bars = values
        .iter()
        .zip(0u32..)
        .map(|((day, value), i)| {
            let height = if max == 0 {
                0
            } else {
                u32::try_from((*value).max(0) * i64::from(BAR_MAX) / max).unwrap_or(BAR_MAX)
            };
            Bar {
                x: i * BAR_STEP + (BAR_STEP - BAR_WIDTH) / 2,
                y: baseline - height,
                width: BAR_WIDTH,
                height,
                tick: day.get(8..10).unwrap_or("").to_owned(),
                day: day.clone(),
                value: *value,
            }
        })
        .collect::<Vec<_>>();
    let width = u32::try_from(bars.len()).unwrap_or(0) * BAR_STEP;
    Chart { id, title, width, height: baseline + LABEL_ROOM, baseline, max, bars }
}

/// One line of the messages table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct MessageLine {
    pub channel: String,
    pub outcome: String,
    pub count: i64,
}

/// The wait from the van's delivery scan to the customer's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Latency {
    /// Shipments measured.
    pub shipments: usize,
    pub p50_s: i64,
    pub p95_s: i64,
    pub p50: String,
    pub p95: String,
}

/// p50 and p95 of (scan, sent) pairs, whole seconds. Pure.
pub(crate) fn latency(pairs: &[(i64, i64)]) -> Option<Latency> {
    let waits: Vec<i64> = pairs.iter().map(|(scan, sent)| (sent - scan).max(0)).collect();
    let p50 = percentile(&waits, 50)?;
    let p95 = percentile(&waits, 95)?;
    Some(Latency {
        shipments: waits.len(),
        p50_s: p50 / 1000,
        p95_s: p95 / 1000,
        p50: age(p50),
        p95: age(p95),
    })
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NumbersView {
    pub since: String,
    pub days: Vec<Figures>,
    pub carriers: Vec<Figures>,
    pub totals: Figures,
    pub charts: Vec<Chart>,
    pub messages: Vec<MessageLine>,
    pub latency: Option<Latency>,
}

/// The page from the store's counts over the window starting `since_ms`. Pure.
pub(crate) fn view(data: &NumbersData, since_ms: i64, days: &[String]) -> NumbersView {
    let per_day = per_day(&data.counts, days);
    let series =
        |pick: fn(&Figures) -> i64| per_day.iter().map(|f| (f.label.clone(), pick(f))).collect::<Vec<_>>();
    let charts = vec![
        chart("deliveries", "Deliveries per day", &series(|f| f.deliveries)),
        chart("exceptions", "Shipments with an exception per day", &series(|f| f.exceptions)),
        chart("away", "Handovers scanned away from the address per day", &series(|f| f.away_scans)),
    ];
    let mut totals = Figures { label: "All days".into(), ..Figures::default() };
    for f in &per_day {
        totals.deliveries += f.deliveries;
        totals.exceptions += f.exceptions;
        totals.away_scans += f.away_scans;
        totals.carrier_delivered += f.carrier_delivered;
        totals.premature += f.premature;
    }
    totals.premature_share = share(totals.premature, totals.carrier_delivered);
    NumbersView {
        since: when(since_ms),
        carriers: per_carrier(&data.counts),
        days: per_day,
        totals,
        charts,
        messages: data
            .messages
            .iter()
            .map(|(channel, outcome, count)| MessageLine {
                channel: channel.clone(),
                outcome: outcome.clone(),
                count: *count,
            })
            .collect(),
        latency: latency(&data.scan_to_sent),
    }
}

pub(super) async fn page(State(console): State<Console>, who: Operator) -> Response {
    let (since_ms, days) = window(now_ms());
    let read =
        console.writer.call(move |ctx| ctx.store.console_numbers(since_ms, CARRIER_CLOCK_SLACK_MS)).await;
    match answered(read, &who) {
        Ok(data) => {
            super::page(StatusCode::OK, "numbers.html", &who, "numbers", view(&data, since_ms, &days))
        }
        Err(page) => *page,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(day: &str, carrier: &str, n: i64) -> (String, String, i64) {
        (day.into(), carrier.into(), n)
    }

    #[test]
    fn the_window_is_fourteen_utc_days_ending_today() {
        // 2026-12-14T15:00:00Z.
        let (since, days) = window(1_797_260_400_000);
        assert_eq!(days.len(), 14);
        assert_eq!(days[0], "2026-12-01");
        assert_eq!(days[13], "2026-12-14");
        assert_eq!(since, 1_796_083_200_000);
    }

    #[test]
    fn figures_are_summed_per_day_and_per_carrier_with_the_premature_share() {
        let counts = DayCarrierCounts {
            deliveries: vec![t("2026-12-01", "ups", 3), t("2026-12-01", "dhl", 1), t("2026-12-02", "ups", 2)],
            exceptions: vec![t("2026-12-02", "", 1)],
            away_scans: vec![t("2026-12-01", "ups", 1)],
            carrier_delivered: vec![t("2026-12-01", "ups", 4), t("2026-12-02", "dhl", 1)],
            premature: vec![t("2026-12-01", "ups", 1)],
        };
        let days = ["2026-12-01".to_owned(), "2026-12-02".to_owned(), "2026-12-03".to_owned()];
        let per_day = per_day(&counts, &days);
        assert_eq!(per_day.len(), 3);
        assert_eq!((per_day[0].deliveries, per_day[0].away_scans, per_day[0].carrier_delivered), (4, 1, 4));
        assert_eq!(per_day[0].premature_share.as_deref(), Some("25.0%"));
        assert_eq!(per_day[1].premature_share.as_deref(), Some("0.0%"));
        assert_eq!(per_day[2], Figures { label: "2026-12-03".into(), ..Figures::default() });
        let per_carrier = per_carrier(&counts);
        let labels: Vec<_> = per_carrier.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(labels, ["(none named)", "dhl", "ups"]);
        assert_eq!(per_carrier[2].deliveries, 5);
        assert_eq!(per_carrier[0].exceptions, 1);
    }

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let values: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&values, 50), Some(10));
        assert_eq!(percentile(&values, 95), Some(19));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[], 50), None);
        let l = latency(&[(0, 30_000), (0, 90_000), (0, 600_000)]).expect("some");
        assert_eq!((l.shipments, l.p50_s, l.p95_s), (3, 90, 600));
        assert_eq!((l.p50.as_str(), l.p95.as_str()), ("1 min", "10 min"));
    }

    #[test]
    fn bars_scale_to_the_largest_and_empty_days_have_none() {
        let c =
            chart("d", "D", &[("2026-12-01".into(), 4), ("2026-12-02".into(), 0), ("2026-12-03".into(), 2)]);
        assert_eq!(c.bars.iter().map(|b| b.height).collect::<Vec<_>>(), [100, 0, 50]);
        assert_eq!(c.bars[0].y + c.bars[0].height, c.baseline);
        assert_eq!(c.bars[2].tick, "03");
        assert_eq!(c.width, 3 * BAR_STEP);
        let empty = chart("d", "D", &[("2026-12-01".into(), 0)]);
        assert_eq!(empty.bars[0].height, 0);
    }
}
