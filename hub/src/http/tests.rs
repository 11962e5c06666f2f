//! Unit tests of the HTTP API: JSON rejections, request validation, the OpenAPI route, contacts and consent.

use super::testing::TestApi;
use super::*;

/// The `error` of a refusal, which must be there.
fn error_of(body: &serde_json::Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no JSON error in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_rejections_answer_json_saying_what_to_fix() {
    let api = TestApi::start().await;
    let admin = Some(api.admin.as_str());

    let (status, body) = api.call("GET", "/v1/nothing-here", admin, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("/v1/openapi.json"), "{body}");

    let (status, headers, bytes) = api.raw("DELETE", "/v1/routes", admin, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get(header::ALLOW).map(|v| v.as_bytes()), Some(&b"POST"[..]));
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(error_of(&body).contains("does not take DELETE"), "{body}");

    let big = vec![b' '; 65 * 1024];
    let (status, body) = api.call("POST", "/v1/shipments", admin, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&body).contains("65536 bytes"), "{body}");

    // %FF is not UTF-8: axum's path extractor refuses it before the handler runs.
    let (status, body) = api.call("GET", "/v1/shipments/%FF", admin, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!error_of(&body).is_empty());

    // The hub's own refusals are unchanged.
    let (status, body) = api.call("POST", "/v1/shipments", admin, "{").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&body).starts_with("invalid JSON body"), "{body}");
    let (status, body) = api.call("GET", "/v1/shipments/1Z999AA10123456784", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&body).contains("Authorization: Bearer"), "{body}");
    api.stop().await;
}

/// Found by schemathesis: `{"at_ms": 6188595.0}` is an integer to JSON Schema, and
/// what a Python order system sends for `time.time() * 1000`; it was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatched_takes_at_ms_written_as_a_whole_float() {
    let api = TestApi::start().await;
    let admin = Some(api.admin.as_str());
    let (status, _) =
        api.call("POST", "/v1/shipments", admin, r#"{"tracking_number": "1Z999AA10123456784"}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    let path = "/v1/shipments/1Z999AA10123456784/dispatched";
    let (status, body) = api.call("POST", path, admin, r#"{"at_ms": 1764662400000.0}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["milestone"], "dispatched");
    for bad in [r#"{"at_ms": 1.5}"#, r#"{"at_ms": 1e19}"#, r#"{"at_ms": "1"}"#] {
        let (status, body) = api.call("POST", path, admin, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(error_of(&body).contains("at_ms must be whole milliseconds"), "{body}");
    }
    // No body and a JSON `null` both mean "now", as the document's optional body says.
    for now in ["", "null"] {
        let (status, body) = api.call("POST", path, admin, now).await;
        assert_eq!(status, StatusCode::OK, "{now:?}: {body}");
    }
    api.stop().await;
}

/// Found with schemathesis: any name of the right characters was taken as a time
/// zone, and the tracking page and quiet hours then silently used UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_zone_the_hub_does_not_know_is_refused_when_the_shipment_is_created() {
    let api = TestApi::start().await;
    let admin = Some(api.admin.as_str());
    let body = r#"{"tracking_number": "1Z999AA10123456784", "time_zone": "Europe/Berln"}"#;
    let (status, reply) = api.call("POST", "/v1/shipments", admin, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&reply).contains("\"Europe/Berln\" is not an IANA time zone"), "{reply}");
    let body = body.replace("Berln", "Berlin");
    let (status, reply) = api.call("POST", "/v1/shipments", admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_key() {
    let api = TestApi::start().await;
    let (status, body) = api.call("GET", "/v1/openapi.json", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
    assert!(body["paths"]["/v1/shipments"]["post"].is_object());
    api.stop().await;
}

#[test]
fn contacts_are_checked_per_channel() {
    assert!(check_contact(ContactChannel::Sms, "+15555550100").is_ok());
    assert!(check_contact(ContactChannel::Sms, "5555550100").is_err());
    assert!(check_contact(ContactChannel::Email, "a@example.com").is_ok());
    assert!(check_contact(ContactChannel::Email, "a example.com").is_err());
    assert!(check_contact(ContactChannel::Webhook, "https://example.com/hook").is_ok());
    assert!(check_contact(ContactChannel::Webhook, "ftp://example.com").is_err());
}

#[test]
fn contacts_without_consent_are_refused_and_consent_applies_per_channel() {
    let body = br#"{"tracking_number": "1Z999AA10123456784", "contacts": {"sms": "+15555550100"}}"#;
    assert!(parse_json::<CreateShipment>(body).expect("json").validate().is_err());
    let body = br#"{"tracking_number": "1Z999AA10123456784",
            "contacts": {"sms": "+15555550100", "email": "a@example.com"}, "consent": {"sms": true}}"#;
    let new = parse_json::<CreateShipment>(body).expect("json").validate().expect("valid");
    assert!(new.contacts[&ContactChannel::Sms].consent);
    assert!(!new.contacts[&ContactChannel::Email].consent);
    assert_eq!(new.time_zone, "UTC");
}
