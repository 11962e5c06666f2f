//! Registering new shipments with AfterShip, so AfterShip tracks them and its webhooks
//! (`carrier::aftership`) start flowing.
//!
//! **Request** (AfterShip Tracking API 2024-10, "Create a tracking"): `POST
//! /tracking/2024-10/trackings` with the account's key in the `as-api-key` header and a
//! flat JSON body, `{"tracking_number": ..., "slug": ...}` (the courier's AfterShip slug;
//! versions before 2024-04 wrapped it in `{"tracking": {...}}`).
//!
//! **Answer**: the envelope `{"meta": {"code", "message", "type"}, "data": {...}}`; 201
//! with the new tracking's `id` in `data`. Quirks: a tracking AfterShip already has is a
//! 400 with `meta.code` 4003 ("Tracking already exists."), which for Doorstep is the same
//! success as a 201: the webhooks flow either way. Other 4xx codes (4005 invalid tracking
//! number, 4010 invalid slug, 4012 courier not detected) refuse the input: recorded with
//! AfterShip's message, never retried.
//!
//! **Limits** (AfterShip "Rate limit", from 2024-07): 20 creations a second per account;
//! beyond it a 429 with `X-RateLimit-Reset`, the Unix second the window resets, which
//! pauses every registration of this hub until then.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::jobs::{self, Answer, Attempt, JobSettings, Vendor, carrier_key};
use super::schedule::Schedule;
use crate::ingest::now_ms;
use crate::metrics::Metrics;
use crate::store::ClaimedJob;

/// The job kind in the store.
pub const KIND: &str = "register";
/// AfterShip's API.
pub const DEFAULT_BASE_URL: &str = "https://api.aftership.com";
/// The API version the request and answer follow.
pub const API_VERSION: &str = "2024-10";
/// The header carrying the account's API key.
pub const API_KEY_HEADER: &str = "as-api-key";
/// `meta.code` of "Tracking already exists."
pub const ALREADY_EXISTS: i64 = 4003;
/// When registrations run: at once, then retried from 30 s doubling to an hour, for a
/// week at most (a parcel not registered by then has long been delivered or lost).
pub const SCHEDULE: Schedule = Schedule {
    first: Duration::ZERO,
    interval: Duration::from_secs(3600),
    max_interval: Duration::from_secs(3600),
    retry: Duration::from_secs(30),
    max_age: Duration::from_secs(7 * 24 * 3600),
};

/// Carrier names as order systems write them (see [`carrier_key`]) → AfterShip courier
/// slugs, used when the configuration names none for a registered carrier.
pub const DEFAULT_SLUGS: &[(&str, &str)] = &[
    ("ups", "ups"),
    ("fedex", "fedex"),
    ("usps", "usps"),
    ("dhl", "dhl"),
    ("dhl express", "dhl"),
    ("canada post", "canada-post"),
    ("royal mail", "royal-mail"),
    ("australia post", "australia-post"),
    ("dpd", "dpd"),
    ("gls", "gls"),
    ("ontrac", "ontrac"),
    ("purolator", "purolator"),
];

/// Registration, configured (`[carriers.aftership]` with `api_key` and `register`).
#[derive(Clone, PartialEq)]
pub struct RegisterSettings {
    /// The account's API key.
    pub api_key: String,
    /// AfterShip's base URL, without a trailing slash.
    pub base_url: String,
    /// The registered carriers ([`carrier_key`]) → their AfterShip slug.
    pub slugs: BTreeMap<String, String>,
    /// Rate, schedule, sweep.
    pub jobs: JobSettings,
}

impl std::fmt::Debug for RegisterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("RegisterSettings")
            .field("base_url", &self.base_url)
            .field("slugs", &self.slugs)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl RegisterSettings {
    /// The slugs for `register` (carrier names), each from `overrides` (names → slugs),
    /// else [`DEFAULT_SLUGS`], else the carrier's own name with `-` for spaces (the
    /// form AfterShip's slugs take).
    pub fn slugs_for(register: &[String], overrides: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let overrides: BTreeMap<String, &String> =
            overrides.iter().map(|(k, v)| (carrier_key(k), v)).collect();
        register
            .iter()
            .map(|name| {
                let key = carrier_key(name);
                let slug = overrides.get(&key).map(|s| s.trim().to_owned()).unwrap_or_else(|| {
                    DEFAULT_SLUGS
                        .iter()
                        .find(|(n, _)| *n == key)
                        .map_or_else(|| key.replace(' ', "-"), |(_, s)| (*s).to_owned())
                });
                (key, slug)
            })
            .collect()
    }
}

/// AfterShip registration as a [`Vendor`] of carrier jobs.
#[derive(Debug, Clone)]
pub struct AfterShipRegistration {
    settings: RegisterSettings,
}

impl AfterShipRegistration {
    /// Registration with `settings`.
    pub fn new(settings: RegisterSettings) -> Self {
        Self { settings }
    }
}

/// The request body: AfterShip's flat form.
pub fn request_body(tracking_number: &str, slug: &str) -> Value {
    serde_json::json!({ "tracking_number": tracking_number, "slug": slug })
}

impl Vendor for AfterShipRegistration {
    const KIND: &'static str = KIND;
    const VENDOR: &'static str = "aftership";

    fn settings(&self) -> &JobSettings {
        &self.settings.jobs
    }

    fn carriers(&self) -> Vec<String> {
        self.settings.slugs.keys().cloned().collect()
    }

    fn code_for(&self, carrier: &str) -> Option<String> {
        self.settings.slugs.get(carrier).cloned()
    }

    async fn attempt(&self, client: &reqwest::Client, job: &ClaimedJob, slug: &str) -> Attempt {
        let request = client
            .post(format!("{}/tracking/{API_VERSION}/trackings", self.settings.base_url))
            .header(API_KEY_HEADER, &self.settings.api_key)
            .json(&request_body(job.tracking_number.as_str(), slug));
        // A creation that timed out after it was sent is safe to repeat: the repeat finds
        // the tracking there (4003), which counts as registered.
        match jobs::send(request, "AfterShip").await {
            Ok(answer) => read_answer(&answer, now_ms()),
            Err(failed) => failed,
        }
    }

    fn count(metrics: &Metrics, carrier: &str, outcome: &str) {
        metrics.carrier_registration(carrier, outcome);
    }
}

#[derive(Debug, Default, Deserialize)]
struct Envelope {
    #[serde(default)]
    meta: Meta,
    data: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    code: Option<i64>,
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Reads AfterShip's answer to a creation into an attempt.
pub fn read_answer(answer: &Answer, now_ms: i64) -> Attempt {
    let envelope: Option<Envelope> = serde_json::from_slice(&answer.body).ok();
    let meta = envelope.as_ref().map(|e| &e.meta);
    if meta.and_then(|m| m.code) == Some(ALREADY_EXISTS) {
        return Attempt::Done { outcome: "already_registered", detail: meta.and_then(|m| m.message.clone()) };
    }
    if (200..300).contains(&answer.status) {
        // `data` is the tracking itself from 2024-04 on, `data.tracking` before.
        let data = envelope.as_ref().and_then(|e| e.data.as_ref());
        let id = data
            .and_then(|d| d.get("id").or_else(|| d.get("tracking").and_then(|t| t.get("id"))))
            .and_then(Value::as_str)
            .map(str::to_owned);
        return Attempt::Done { outcome: "registered", detail: id };
    }
    if let Some(refused) = jobs::common_refusal("AfterShip", answer, now_ms) {
        return refused;
    }
    let words = match meta {
        Some(Meta { code: Some(code), message: Some(message), kind }) => {
            format!("{code} {}: {message}", kind.as_deref().unwrap_or(""))
        }
        _ => answer.excerpt(),
    };
    Attempt::Failed { outcome: "rejected", detail: format!("AfterShip HTTP {}: {words}", answer.status) }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::carrier::jobs::tests::answer;

    #[test]
    fn created_is_registered_with_aftership_s_id() {
        let body = r#"{"meta":{"code":201,"message":"The request was successful and a resource was created.","type":"Created"},
            "data":{"id":"5b74f4958776db0e00b6f5ed","tracking_number":"1Z999AA10123456784","slug":"ups","tag":"Pending"}}"#;
        assert_eq!(
            read_answer(&answer(201, &[], body), 0),
            Attempt::Done { outcome: "registered", detail: Some("5b74f4958776db0e00b6f5ed".into()) }
        );
    }

    #[test]
    fn already_exists_counts_as_registered() {
        let body =
            r#"{"meta":{"code":4003,"message":"Tracking already exists.","type":"BadRequest"},"data":{}}"#;
        assert_eq!(
            read_answer(&answer(400, &[], body), 0),
            Attempt::Done { outcome: "already_registered", detail: Some("Tracking already exists.".into()) }
        );
    }

    #[test]
    fn an_invalid_slug_fails_with_aftership_s_message() {
        let body = r#"{"meta":{"code":4010,"message":"The value of `slug` is invalid.","type":"BadRequest"},"data":{}}"#;
        assert_eq!(
            read_answer(&answer(400, &[], body), 0),
            Attempt::Failed {
                outcome: "rejected",
                detail: "AfterShip HTTP 400: 4010 BadRequest: The value of `slug` is invalid.".into()
            }
        );
    }

    #[test]
    fn a_rate_limit_waits_for_the_reset_second_and_a_bad_key_pauses() {
        let now = 1_700_000_000_000;
        let body = r#"{"meta":{"code":429,"message":"You have exceeded the API call rate limit.","type":"TooManyRequests"},"data":{}}"#;
        let limited = read_answer(&answer(429, &[("x-ratelimit-reset", "1700000005")], body), now);
        assert!(
            matches!(limited, Attempt::Pause { outcome: "rate_limited", wait, .. } if wait == std::time::Duration::from_secs(5)),
            "{limited:?}"
        );
        let key = r#"{"meta":{"code":401,"message":"Invalid API key.","type":"Unauthorized"},"data":{}}"#;
        assert!(matches!(
            read_answer(&answer(401, &[], key), now),
            Attempt::Pause { outcome: "auth_error", .. }
        ));
        assert!(matches!(read_answer(&answer(502, &[], "<html>"), now), Attempt::Retry { .. }));
    }

    #[test]
    fn slugs_come_from_the_configuration_then_the_defaults_then_the_name() {
        let register = vec!["UPS".to_owned(), "Canada Post".to_owned(), "Posty Express".to_owned()];
        let overrides = BTreeMap::from([("UPS ".to_owned(), "ups-freight".to_owned())]);
        let slugs = RegisterSettings::slugs_for(&register, &overrides);
        assert_eq!(slugs.get("ups").map(String::as_str), Some("ups-freight"));
        assert_eq!(slugs.get("canada post").map(String::as_str), Some("canada-post"));
        assert_eq!(slugs.get("posty express").map(String::as_str), Some("posty-express"));
        assert_eq!(
            request_body("1Z999AA10123456784", "ups"),
            serde_json::json!({"tracking_number": "1Z999AA10123456784", "slug": "ups"})
        );
    }
}
