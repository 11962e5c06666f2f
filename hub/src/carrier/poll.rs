//! Polling ShipEngine for the parcels of carriers that never call a webhook.
//!
//! **Request** (ShipEngine "Track a package", `GET /v1/tracking`): the query names the
//! carrier (`carrier_code`, ShipEngine's code: `usps`, `ups`, `fedex`, `dhl_express`) and
//! the `tracking_number`; the account's key goes in the `API-Key` header.
//!
//! **Answer**: 200 with the tracking-info object, the very object an `API_TRACK` webhook
//! carries in `data`, read by [`super::shipengine::parse_tracking_info`] with the webhook's
//! mapping and stored through `inbound::apply_carrier`, so a polled status and a pushed
//! one with the same content have the same dedupe key. Quirks: a parcel the carrier has
//! not scanned yet is still a 200, with `status_code` `NY` ("not yet in system") and no
//! events: nothing to store, poll again later. Errors come as `{"request_id", "errors":
//! [{"error_source", "error_type", "error_code", "message"}]}`.
//!
//! **Limits** (ShipEngine "Usage & Rate Limits"): 200 requests a minute per account by
//! default; beyond it a 429 with `Retry-After` in seconds, which applies to every request
//! of the account, so it pauses every poll of this hub (see [`super::jobs`]).

use std::collections::BTreeMap;

use doorstep_proto::TrackingNumber;
use serde::Deserialize;

use super::jobs::{self, Answer, Attempt, JobSettings, Vendor, carrier_key};
use super::shipengine::parse_tracking_info;
use crate::ingest::now_ms;
use crate::metrics::Metrics;
use crate::store::ClaimedJob;

/// The job kind in the store.
pub const KIND: &str = "poll";
/// ShipEngine's API.
pub const DEFAULT_BASE_URL: &str = "https://api.shipengine.com";
/// The header carrying the account's API key.
pub const API_KEY_HEADER: &str = "API-Key";
/// The first wait after a failed poll (doubling up to the longest poll interval).
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Carrier names as order systems write them (see [`carrier_key`]) → ShipEngine's
/// `carrier_code`, used when the configuration names none for a polled carrier.
pub const DEFAULT_CARRIER_CODES: &[(&str, &str)] = &[
    ("usps", "usps"),
    ("ups", "ups"),
    ("fedex", "fedex"),
    ("dhl", "dhl_express"),
    ("dhl express", "dhl_express"),
    ("canada post", "canada_post"),
    ("ontrac", "ontrac"),
];

/// Polling, configured (`[carriers.shipengine]` with `api_key` and `poll`).
#[derive(Clone, PartialEq)]
pub struct PollSettings {
    /// The account's API key.
    pub api_key: String,
    /// ShipEngine's base URL, without a trailing slash.
    pub base_url: String,
    /// The polled carriers ([`carrier_key`]) → their ShipEngine `carrier_code`.
    pub carrier_codes: BTreeMap<String, String>,
    /// Rate, schedule, sweep.
    pub jobs: JobSettings,
}

impl std::fmt::Debug for PollSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PollSettings")
            .field("base_url", &self.base_url)
            .field("carrier_codes", &self.carrier_codes)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl PollSettings {
    /// The carrier codes for `poll` (carrier names), each from `overrides` (names →
    /// codes), else [`DEFAULT_CARRIER_CODES`], else the carrier's own name.
    pub fn codes_for(poll: &[String], overrides: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let overrides: BTreeMap<String, &String> =
            overrides.iter().map(|(k, v)| (carrier_key(k), v)).collect();
        poll.iter()
            .map(|name| {
                let key = carrier_key(name);
                let code = overrides.get(&key).map(|c| c.trim().to_owned()).unwrap_or_else(|| {
                    DEFAULT_CARRIER_CODES
                        .iter()
                        .find(|(n, _)| *n == key)
                        .map_or_else(|| key.replace(' ', "_"), |(_, c)| (*c).to_owned())
                });
                (key, code)
            })
            .collect()
    }
}

/// ShipEngine polling as a [`Vendor`] of carrier jobs.
#[derive(Debug, Clone)]
pub struct ShipEnginePoll {
    settings: PollSettings,
}

impl ShipEnginePoll {
    /// Polling with `settings`.
    pub fn new(settings: PollSettings) -> Self {
        Self { settings }
    }
}

impl Vendor for ShipEnginePoll {
    const KIND: &'static str = KIND;
    const VENDOR: &'static str = "shipengine";

    fn settings(&self) -> &JobSettings {
        &self.settings.jobs
    }

    fn carriers(&self) -> Vec<String> {
        self.settings.carrier_codes.keys().cloned().collect()
    }

    fn code_for(&self, carrier: &str) -> Option<String> {
        self.settings.carrier_codes.get(carrier).cloned()
    }

    async fn attempt(&self, client: &reqwest::Client, job: &ClaimedJob, code: &str) -> Attempt {
        let mut url = match reqwest::Url::parse(&format!("{}/v1/tracking", self.settings.base_url)) {
            Ok(url) => url,
            Err(e) => {
                return Attempt::Pause {
                    outcome: "config_error",
                    detail: format!("poll_base_url: {e}"),
                    wait: jobs::AUTH_PAUSE,
                };
            }
        };
        url.query_pairs_mut()
            .append_pair("carrier_code", code)
            .append_pair("tracking_number", job.tracking_number.as_str());
        let request = client
            .get(url)
            .header(API_KEY_HEADER, &self.settings.api_key)
            .header(reqwest::header::ACCEPT, "application/json");
        match jobs::send(request, "ShipEngine").await {
            Ok(answer) => read_answer(&answer, &job.tracking_number, now_ms()),
            Err(failed) => failed,
        }
    }

    fn count(metrics: &Metrics, carrier: &str, outcome: &str) {
        metrics.carrier_poll(carrier, outcome);
    }
}

#[derive(Debug, Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    error_code: Option<String>,
    message: Option<String>,
}

/// ShipEngine's own words for a refusal (`error_code: message`), else the body's start.
fn error_text(answer: &Answer) -> String {
    let first = serde_json::from_slice::<Errors>(&answer.body).ok().and_then(|e| e.errors.into_iter().next());
    match first {
        Some(ErrorItem { error_code, message: Some(message) }) => match error_code {
            Some(code) => format!("{code}: {message}"),
            None => message,
        },
        _ => answer.excerpt(),
    }
}

/// Reads ShipEngine's answer about `tracking` into an attempt.
pub fn read_answer(answer: &Answer, tracking: &TrackingNumber, now_ms: i64) -> Attempt {
    if let Some(refused) = jobs::common_refusal("ShipEngine", answer, now_ms) {
        return refused;
    }
    if !(200..300).contains(&answer.status) {
        // A carrier code ShipEngine does not know, a tracking number it cannot read.
        return Attempt::Failed {
            outcome: "rejected",
            detail: format!("ShipEngine HTTP {}: {}", answer.status, error_text(answer)),
        };
    }
    let info = match parse_tracking_info(&answer.body) {
        Ok(info) => info,
        Err(e) => return Attempt::Retry { outcome: "malformed", detail: format!("ShipEngine answer: {e}") },
    };
    // Stored against the number it names, so it must be the one asked about.
    let same = TrackingNumber::normalize(&info.tracking)
        .ok()
        .zip(TrackingNumber::normalize(tracking.as_str()).ok())
        .is_some_and(|(theirs, ours)| theirs == ours);
    if !same {
        return Attempt::Retry {
            outcome: "other_parcel",
            detail: format!("ShipEngine answered about {:?}", super::truncate(&info.tracking)),
        };
    }
    let event = match info.update.map(super::RawUpdate::into_event).transpose() {
        Ok(event) => event,
        Err(e) => return Attempt::Retry { outcome: "malformed", detail: format!("ShipEngine answer: {e}") },
    };
    Attempt::Tracked { raw_status: info.raw_status, status: info.status, event, raw: answer.body.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::test_support::fixture;
    use crate::model::CanonicalStatus;

    fn answer(status: u16, body: &[u8]) -> Answer {
        Answer { status, headers: BTreeMap::new(), body: body.to_vec() }
    }

    fn tn(text: &str) -> TrackingNumber {
        TrackingNumber::new(text).expect("tracking number")
    }

    #[test]
    fn an_answer_about_the_parcel_is_tracked_with_the_webhooks_event() {
        let body = fixture("shipengine_tracking_info_data_sdk_mock.json");
        let Attempt::Tracked { raw_status, status, event, raw } =
            read_answer(&answer(200, &body), &tn("1026167028310292"), 0)
        else {
            panic!("tracked");
        };
        assert_eq!((raw_status.as_str(), status), ("UN", CanonicalStatus::Unknown));
        let event = event.expect("dated");
        assert_eq!(event.expected_delivery.as_deref(), Some("2021-07-19T07:00:00Z"));
        assert!(event.event_key.starts_with("sha256:"));
        assert_eq!(raw, body);
    }

    #[test]
    fn not_yet_in_system_is_tracked_with_nothing_to_store() {
        let body = br#"{"tracking_number":"9405511899223197428490","status_code":"NY","events":[]}"#;
        let attempt = read_answer(&answer(200, body), &tn("9405511899223197428490"), 0);
        assert!(
            matches!(attempt, Attempt::Tracked { ref raw_status, event: None, .. } if raw_status == "NY"),
            "{attempt:?}"
        );
    }

    #[test]
    fn an_answer_about_another_parcel_or_garbage_is_retried_not_stored() {
        let body = br#"{"tracking_number":"1Z999AA10123456784","status_code":"IT","events":[{"occurred_at":"2026-08-07T08:00:00Z"}]}"#;
        assert!(matches!(
            read_answer(&answer(200, body), &tn("9405511899223197428490"), 0),
            Attempt::Retry { outcome: "other_parcel", .. }
        ));
        assert!(matches!(
            read_answer(&answer(200, b"<html>"), &tn("9405511899223197428490"), 0),
            Attempt::Retry { outcome: "malformed", .. }
        ));
    }

    #[test]
    fn a_refused_carrier_code_fails_with_shipengines_message() {
        let body = br#"{"request_id":"3e1b","errors":[{"error_source":"shipengine","error_type":"validation",
            "error_code":"invalid_field_value","message":"carrier_code 'posty' is not a valid carrier"}]}"#;
        let attempt = read_answer(&answer(400, body), &tn("9405511899223197428490"), 0);
        assert_eq!(
            attempt,
            Attempt::Failed {
                outcome: "rejected",
                detail:
                    "ShipEngine HTTP 400: invalid_field_value: carrier_code 'posty' is not a valid carrier"
                        .into()
            }
        );
    }

    #[test]
    fn carrier_codes_come_from_the_configuration_then_the_defaults_then_the_name() {
        let poll = vec!["USPS".to_owned(), "DHL".to_owned(), "Posty Express".to_owned(), "ups".to_owned()];
        let overrides = BTreeMap::from([("ups".to_owned(), "ups_walleted".to_owned())]);
        let codes = PollSettings::codes_for(&poll, &overrides);
        assert_eq!(
            codes.into_iter().collect::<Vec<_>>(),
            [
                ("dhl".to_owned(), "dhl_express".to_owned()),
                ("posty express".to_owned(), "posty_express".to_owned()),
                ("ups".to_owned(), "ups_walleted".to_owned()),
                ("usps".to_owned(), "usps".to_owned()),
            ]
        );
    }
}
