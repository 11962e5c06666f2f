//! What every notification provider makes of a vendor's answer (`Provider::read`): the
//! status and body of any HTTP reply, for each configured provider type, and Mailgun's
//! event webhook bodies (`mailgun::Event`), which arrive on the public listener.
//!
//! Holds: no panic; a 429 or 5xx is never a send and never a refusal for good (the next
//! provider or a later attempt takes it); a 2xx is never "try again"; details stay short
//! enough for the outcome log; a Mailgun event reads the same twice and its digest
//! depends only on what the hub acts on.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use doorstep_hub::model::Milestone;
use doorstep_hub::notify::mailgun::Event;
use doorstep_hub::notify::{NotifyConfig, NotifySettings, Outgoing, Reply, SendResult};
use doorstep_hub::store::ContactChannel;
use libfuzzer_sys::fuzz_target;

/// One provider of every type, as a hub would configure them.
const PROVIDERS: &str = r#"
[[providers]]
type = "twilio"
account_sid = "AC00000000000000000000000000000001"
auth_token = "t"
from = "+15005550006"
[[providers]]
type = "sns"
region = "eu-central-1"
access_key_id = "AKIAFUZZ"
secret_access_key = "s"
[[providers]]
type = "sendgrid"
api_key = "SG.k"
from_email = "parcels@example.com"
[[providers]]
type = "mailgun"
domain = "mg.example.com"
api_key = "k"
from = "parcels@mg.example.com"
[[providers]]
type = "whatsapp"
phone_number_id = "1"
access_token = "t"
template_name = "update"
[[providers]]
type = "webhook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[[providers]]
type = "onesignal"
app_id = "2f3c1a0e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
api_key = "k"
[[providers]]
type = "slack"
webhook_url = "https://hooks.slack.com/services/T/B/X"
[[providers]]
type = "teams"
webhook_url = "https://example.logic.azure.com/workflows/1?sig=s"
[[providers]]
type = "google_chat"
webhook_url = "https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t"
[[providers]]
type = "zapier"
webhook_url = "https://hooks.zapier.com/hooks/catch/1/a/"
"#;

const STATUSES: [u16; 12] = [200, 201, 202, 204, 400, 401, 403, 404, 429, 500, 502, 503];

fn settings() -> &'static NotifySettings {
    static SETTINGS: OnceLock<NotifySettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let table: toml::Table = toml::from_str(PROVIDERS).expect("toml");
        NotifyConfig::from_table(Some(&table))
            .expect("parse")
            .validate("https://track.example.com", b"doorstep fuzz link token secret, 40 bytes")
            .expect("every provider type configures")
    })
}

fn message() -> Outgoing {
    Outgoing {
        outbox_id: 7,
        shipment_id: 3,
        channel: ContactChannel::Sms,
        recipient: "+15555550100".into(),
        milestone: Milestone::Delivered,
        locale: "en".into(),
        tracking_number: "1Z999AA10123456784".into(),
        detail: None,
        subject: "Your parcel was delivered".into(),
        body: "Doorstep: your parcel was delivered.".into(),
        link: "https://track.example.com/t/x".into(),
        alert: None,
        merged: Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [status, which, flags, body @ ..] = data else { return };
    let providers = settings().providers.all();
    let provider = &providers[usize::from(*which) % providers.len()];
    let status = reqwest::StatusCode::from_u16(STATUSES[usize::from(*status) % STATUSES.len()]).expect("status");
    let mut headers = reqwest::header::HeaderMap::new();
    if flags & 1 == 1 {
        headers.insert("x-message-id", reqwest::header::HeaderValue::from_static("fuzz-id"));
    }
    let retry_after = (flags & 2 == 2).then(|| Duration::from_secs(u64::from(*flags)));
    let reply = Reply { status, headers, body: body.to_vec(), retry_after };
    let result = provider.provider.read(&message(), &reply);
    let detail = match &result {
        SendResult::Accepted { detail, .. }
        | SendResult::Retry { detail, .. }
        | SendResult::Ambiguous { detail }
        | SendResult::Rejected { detail }
        | SendResult::OptedOut { detail } => detail,
    };
    assert!(detail.len() <= 4096, "{}: {} bytes of detail", provider.kind, detail.len());
    if status.as_u16() == 429 || status.is_server_error() {
        assert!(matches!(result, SendResult::Retry { .. }), "{} {status}: {result:?}", provider.kind);
    }
    if status.is_success() {
        assert!(!matches!(result, SendResult::Retry { .. } | SendResult::Ambiguous { .. }), "{}: {result:?}", provider.kind);
    }

    // The same bytes as a Mailgun event webhook's `event-data`.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let event = Event::from_value(&value);
        assert_eq!(event, Event::from_value(&value));
        let _ = event.outcome();
        assert!(event.detail().starts_with("mailgun "));
        let mut same = event.clone();
        same.status = Some("another server's words".into());
        assert_eq!(same.digest(), event.digest(), "the digest covers only what the hub acts on");
    }
});
