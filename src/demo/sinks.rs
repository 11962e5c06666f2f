//! Loopback stand-ins for the providers the hub talks to: Twilio (SMS), SendGrid (email)
//! and a Slack incoming webhook (operations). Each answers as the provider documents and
//! prints what it received, so the demo shows every message exactly as the provider would
//! get it. The hub's own tests check every request field; here the sinks check the parts
//! a wrong request would get refused for (auth, recipient, body).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;

use super::Printer;

/// Credentials the demo hub is configured with; the sinks refuse anything else.
pub(crate) const TWILIO_SID: &str = "AC00000000000000000000000000d00r";
pub(crate) const TWILIO_TOKEN: &str = "demo-twilio-auth-token";
pub(crate) const SENDGRID_KEY: &str = "SG.demo-key";

/// One message a provider accepted.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    /// `sms`, `email` or `ops`.
    pub(crate) channel: &'static str,
    /// Phone number, email address, or the Slack channel's name.
    pub(crate) to: String,
    /// The SMS body, the email's plain-text part, or the Slack text.
    pub(crate) text: String,
}

#[derive(Clone)]
struct Sink {
    captured: Arc<Mutex<Vec<Captured>>>,
    printer: Printer,
}

impl Sink {
    fn keep(&self, message: Captured) -> usize {
        self.printer.message(&message);
        let mut all = self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.push(message);
        all.len()
    }
}

/// The running sinks.
#[derive(Debug, Clone)]
pub(crate) struct Sinks {
    /// Base URL of all three providers (each has its own paths).
    pub(crate) base_url: String,
    captured: Arc<Mutex<Vec<Captured>>>,
}

impl Sinks {
    /// Starts the sinks on a free loopback port.
    pub(crate) async fn start(printer: Printer) -> anyhow::Result<Sinks> {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink { captured: Arc::clone(&captured), printer };
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/v3/mail/send", post(sendgrid))
            .route("/slack/ops", post(slack))
            .with_state(sink);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "provider sinks stopped");
            }
        });
        Ok(Sinks { base_url, captured })
    }

    /// Everything accepted so far, in order.
    pub(crate) fn captured(&self) -> Vec<Captured> {
        self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// Twilio's Messages resource: form-encoded `To`, `From` (or `MessagingServiceSid`) and
/// `Body`, HTTP basic auth with the account SID and auth token; answers 201 with the
/// message resource.
async fn twilio(
    State(sink): State<Sink>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"))
    );
    if sid != TWILIO_SID
        || headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&expected)
    {
        return refuse(StatusCode::UNAUTHORIZED, "Authenticate");
    }
    let form: BTreeMap<String, String> = form_pairs(&body);
    let (Some(to), Some(text)) = (form.get("To"), form.get("Body")) else {
        return refuse(StatusCode::BAD_REQUEST, "A 'To' phone number and a 'Body' are required.");
    };
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return refuse(StatusCode::BAD_REQUEST, "A 'From' phone number is required.");
    }
    let n = sink.keep(Captured { channel: "sms", to: to.clone(), text: text.clone() });
    let reply = serde_json::json!({
        "sid": format!("SM{n:032x}"), "account_sid": TWILIO_SID, "to": to, "body": text, "status": "queued",
    });
    (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], reply.to_string()).into_response()
}

fn form_pairs(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// SendGrid's v3 Mail Send: bearer auth, a JSON body with `personalizations[].to[]`,
/// `from`, and either `subject` + `content` or a dynamic `template_id`; answers 202 with
/// `X-Message-Id`.
async fn sendgrid(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> Response {
    let expected = format!("Bearer {SENDGRID_KEY}");
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&expected) {
        return refuse(StatusCode::UNAUTHORIZED, "The provided authorization grant is invalid");
    }
    let Ok(mail) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "Bad Request");
    };
    let Some(to) = mail["personalizations"][0]["to"][0]["email"].as_str() else {
        return refuse(StatusCode::BAD_REQUEST, "The personalizations field is required.");
    };
    if mail["from"]["email"].as_str().is_none() {
        return refuse(StatusCode::BAD_REQUEST, "The from object must be provided for every email send.");
    }
    let subject = mail["subject"].as_str().unwrap_or("(template)");
    let text = mail["content"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["type"] == "text/plain"))
        .and_then(|p| p["value"].as_str())
        .unwrap_or("");
    let n = sink.keep(Captured { channel: "email", to: to.to_owned(), text: format!("{subject} | {text}") });
    (StatusCode::ACCEPTED, [("x-message-id", format!("demo{n:020}"))], "").into_response()
}

/// A Slack incoming webhook: JSON `{"text": ...}`, answers `ok`.
async fn slack(State(sink): State<Sink>, body: Bytes) -> Response {
    let Some(text) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
    else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    sink.keep(Captured { channel: "ops", to: "#delivery-ops".into(), text });
    (StatusCode::OK, "ok").into_response()
}
