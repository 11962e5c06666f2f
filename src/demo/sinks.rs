//! Loopback stand-ins for the providers the hub talks to: Twilio and Amazon SNS (SMS),
//! SendGrid and Mailgun (email), and Slack, Microsoft Teams (a Workflows webhook) and
//! Google Chat for operations alerts; `doorstep demo --providers FILE` picks which. Each answers as the provider documents and
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
/// Mailgun's API key for the demo (`demo/providers/mailgun-sns-teams.toml`).
pub(crate) const MAILGUN_KEY: &str = "demo-mailgun-key";
/// The demo's AWS access key id (SNS); its secret is in the providers file.
pub(crate) const AWS_KEY_ID: &str = "AKIADEMODOORSTEP0001";

/// One message a provider accepted.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    /// `sms`, `email` or `ops`.
    pub(crate) channel: &'static str,
    /// Phone number, email address, or the Slack channel's name.
    pub(crate) to: String,
    /// The SMS body, the email's plain-text part, or the Slack text.
    pub(crate) text: String,
    /// Which provider's stand-in took it (`twilio`, `sns`, `sendgrid`, `mailgun`, ...).
    pub(crate) via: &'static str,
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
            .route("/v3/{domain}/messages", post(mailgun))
            .route("/", post(sns))
            .route("/teams/ops", post(teams))
            .route("/v1/spaces/{space}/messages", post(google_chat))
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

    /// Keeps a message that reached a customer another way (Twilio's reply to their own
    /// text, sent from the hub's answer), printed like the others.
    pub(crate) fn keep_reply(&self, printer: &Printer, message: Captured) {
        printer.message(&message);
        self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(message);
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
    if sid != TWILIO_SID || !basic_auth(&headers, TWILIO_SID, TWILIO_TOKEN) {
        return refuse(StatusCode::UNAUTHORIZED, "Authenticate");
    }
    let form: BTreeMap<String, String> = form_pairs(&body);
    let (Some(to), Some(text)) = (form.get("To"), form.get("Body")) else {
        return refuse(StatusCode::BAD_REQUEST, "A 'To' phone number and a 'Body' are required.");
    };
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return refuse(StatusCode::BAD_REQUEST, "A 'From' phone number is required.");
    }
    let n = sink.keep(Captured { channel: "sms", to: to.clone(), text: text.clone(), via: "twilio" });
    let reply = serde_json::json!({
        "sid": format!("SM{n:032x}"), "account_sid": TWILIO_SID, "to": to, "body": text, "status": "queued",
    });
    (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], reply.to_string()).into_response()
}

/// Whether the request carries HTTP basic auth for `user` and `password`.
fn basic_auth(headers: &HeaderMap, user: &str, password: &str) -> bool {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
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
    let n = sink.keep(Captured {
        channel: "email",
        to: to.to_owned(),
        text: format!("{subject} | {text}"),
        via: "sendgrid",
    });
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
    sink.keep(Captured { channel: "ops", to: "#delivery-ops".into(), text, via: "slack" });
    (StatusCode::OK, "ok").into_response()
}

/// Mailgun's Messages API: HTTP basic `api:<key>`, form `from`, `to`, `subject`, `text`;
/// answers 200 with the queued message's id.
async fn mailgun(
    State(sink): State<Sink>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !basic_auth(&headers, "api", MAILGUN_KEY) {
        return (StatusCode::UNAUTHORIZED, "Forbidden").into_response();
    }
    let form = form_pairs(&body);
    let (Some(to), Some(_from)) = (form.get("to"), form.get("from")) else {
        return refuse(StatusCode::BAD_REQUEST, "'from' and 'to' parameters are missing");
    };
    let subject = form.get("subject").map_or("(template)", String::as_str);
    let text = form.get("text").map_or("", String::as_str);
    let n = sink.keep(Captured {
        channel: "email",
        to: to.clone(),
        text: format!("{subject} | {text}"),
        via: "mailgun",
    });
    let reply =
        serde_json::json!({ "id": format!("<demo{n:020}@{domain}>"), "message": "Queued. Thank you." });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], reply.to_string()).into_response()
}

/// Amazon SNS `Publish` (form `Action=Publish`, `PhoneNumber`, `Message`), SigV4-signed
/// with the demo's access key id (the hub's tests recompute the signature; here the
/// credential and the signed headers are checked); answers the documented XML.
async fn sns(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let credential_ok = auth.starts_with("AWS4-HMAC-SHA256 ")
        && auth.contains(&format!("Credential={AWS_KEY_ID}/"))
        && auth.contains("/sns/aws4_request")
        && headers.contains_key("x-amz-date");
    if !credential_ok {
        return (
            StatusCode::FORBIDDEN,
            "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code>\
             <Message>The security token included in the request is invalid.</Message></Error></ErrorResponse>",
        )
            .into_response();
    }
    let form = form_pairs(&body);
    let (Some("Publish"), Some(to), Some(text)) =
        (form.get("Action").map(String::as_str), form.get("PhoneNumber"), form.get("Message"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidParameter</Code>\
             <Message>Invalid parameter: PhoneNumber</Message></Error></ErrorResponse>",
        )
            .into_response();
    };
    let n = sink.keep(Captured { channel: "sms", to: to.clone(), text: text.clone(), via: "sns" });
    let xml = format!(
        "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
         <MessageId>{n:08x}-demo-0000-0000-000000000000</MessageId></PublishResult>\
         <ResponseMetadata><RequestId>demo-{n}</RequestId></ResponseMetadata></PublishResponse>"
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], xml).into_response()
}

/// A Teams Workflows webhook: a message with one Adaptive Card (version at most 1.4);
/// answers 202 (accepted by the flow).
async fn teams(State(sink): State<Sink>, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    let card = &message["attachments"][0]["content"];
    if card["type"] != "AdaptiveCard" || card["version"] != "1.4" {
        return (StatusCode::BAD_REQUEST, "expected an Adaptive Card 1.4 attachment").into_response();
    }
    let text = card["body"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    sink.keep(Captured { channel: "ops", to: "Teams: Delivery ops".into(), text, via: "teams" });
    StatusCode::ACCEPTED.into_response()
}

/// A Google Chat space webhook: JSON `{"text", "thread"}`; answers the created message.
async fn google_chat(State(sink): State<Sink>, Path(space): Path<String>, body: Bytes) -> Response {
    let Some(text) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
    else {
        return (StatusCode::BAD_REQUEST, "invalid payload").into_response();
    };
    let n =
        sink.keep(Captured { channel: "ops", to: format!("Google Chat: {space}"), text, via: "google_chat" });
    let reply = serde_json::json!({ "name": format!("spaces/{space}/messages/demo{n}") });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], reply.to_string()).into_response()
}
