//! Amazon SNS: text messages to Doorstep's customers and to the operators' on-call phone,
//! published straight to a phone number (no topic) and signed with AWS Signature V4.
//!
//! - Send: `POST {base}/` (default `https://sns.{region}.amazonaws.com/`), form body
//!   `Action=Publish&Version=2010-03-31&PhoneNumber=<E.164>&Message=<text>` with the
//!   message attribute `AWS.SNS.SMS.SMSType` (`Transactional` unless configured
//!   `Promotional`) and, when configured, `AWS.SNS.SMS.SenderID`. The request is signed
//!   for service `sns` in the configured region at the moment it is built: the headers
//!   `X-Amz-Date`, `Authorization` and, with temporary credentials, `X-Amz-Security-Token`
//!   (signed too).
//! - Success: 200 with XML `PublishResponse/PublishResult/MessageId`; the id becomes the
//!   outcome's provider id.
//! - Errors: XML `ErrorResponse/Error/{Type,Code,Message}`. `Throttling` (SNS answers it
//!   with a 400), the other throttling codes, 429 and 5xx are retried (honouring
//!   `Retry-After`); any other refusal (`InvalidParameter`, `ParameterValueInvalid`, a
//!   signature or credential error) fails the message here, and the dispatcher hands it to
//!   the channel's next provider, if there is one.
//! - Opt-outs: SNS documents no Publish error for a number that opted out (its Publish
//!   error list has none; SNS keeps its own opt-out list, queried with
//!   `CheckIfPhoneNumberIsOptedOut`), so nothing here maps to an opt-out. Customers who
//!   reply STOP to an SNS number are opted out by SNS itself.
//! - Idempotency: Publish takes no idempotency key, so a request that timed out after it
//!   was sent may have become a text. The dispatcher marks the row `unknown` and never
//!   sends it again, through SNS or any other provider: a customer texted twice is worse
//!   than an operator looking at one `unknown` row.
//! - Operations alerts (the staff channel) are texted to the number the alert message is
//!   addressed to: the operators' on-call phone.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;

use super::config::NotifyConfigError;
use super::provider::{Build, Channel, Provider, ProviderType};
use super::ratelimit::RateLimit;
use super::{Outgoing, Reply, SendResult};
use crate::store::ContactChannel;

/// The SigV4 service name of SNS.
pub const SERVICE: &str = "sns";
/// The Query API version Publish is called with.
pub const API_VERSION: &str = "2010-03-31";
/// The content type of the form body (and a signed header).
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// SNS's limit for the text of one SMS Publish, in characters (it splits longer texts
/// into several messages up to this total).
pub const MAX_MESSAGE_CHARS: usize = 1600;
/// The most characters of an SNS error message kept in the outcome log.
const MAX_DETAIL_CHARS: usize = 300;

/// Error codes SNS answers when a request should simply be tried again later.
pub const RETRY_CODES: [&str; 7] = [
    "Throttling",
    "ThrottlingException",
    "Throttled",
    "KMSThrottling",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// How SNS should route a text: `AWS.SNS.SMS.SMSType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SmsType {
    /// Critical messages, routed for reliability (delivery notices are these).
    #[default]
    Transactional,
    /// Marketing messages, routed for cost.
    Promotional,
}

impl SmsType {
    /// Its value in the message attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "Transactional",
            Self::Promotional => "Promotional",
        }
    }
}

/// A configured SNS account in one region.
#[derive(Clone)]
pub struct Sns {
    /// The Publish URL: the base URL and `/`.
    pub url: String,
    /// The AWS region the request is signed for (`eu-central-1`).
    pub region: String,
    /// The alphanumeric sender shown where the destination country supports one.
    pub sender_id: Option<String>,
    /// `Transactional` or `Promotional`.
    pub sms_type: SmsType,
    /// The access key, its secret and an optional session token.
    credentials: Credentials,
}

impl std::fmt::Debug for Sns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret key and the session token stay out of logs and panics.
        f.debug_struct("Sns")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.access_key_id())
            .field("temporary_credentials", &self.credentials.session_token().is_some())
            .field("sender_id", &self.sender_id)
            .field("sms_type", &self.sms_type)
            .finish_non_exhaustive()
    }
}

/// `[[notify.providers]]` entries of type `sns`.
pub const TYPE: ProviderType = ProviderType {
    kind: "sns",
    channels: &[Channel::Customer(ContactChannel::Sms), Channel::Staff],
    rate: RateLimit { per_s: 10.0, burst: 10 },
    sample: r#"# region = "eu-central-1"
# access_key_id = "AKIA..."
# secret_access_key = "file:/etc/doorstep-hub/sns.secret"
# session_token = "file:/run/doorstep-hub/sns.token"   # only with temporary credentials
# sender_id = "DOORSTEP"             # where the country allows one: 1-11 letters, digits, -
# sms_type = "Transactional"         # or "Promotional"
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    region: String,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    sender_id: Option<String>,
    #[serde(default)]
    sms_type: SmsType,
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Provider>, NotifyConfigError> {
    let s: Section = b.section()?;
    if !is_region(&s.region) {
        return Err(b.invalid("region", "must be an AWS region such as \"eu-central-1\""));
    }
    if s.access_key_id.is_empty() || !s.access_key_id.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(b.invalid("access_key_id", "must be an AWS access key id (AKIA... or ASIA...)"));
    }
    if let Some(sender) = &s.sender_id
        && !is_sender_id(sender)
    {
        return Err(b.invalid(
            "sender_id",
            "1 to 11 letters, digits and hyphens, with a letter, starting and ending with a letter or digit",
        ));
    }
    let default_base = format!("https://sns.{}.amazonaws.com", s.region);
    let base = b.base_url(&default_base)?;
    if reqwest::Url::parse(&base).ok().and_then(|u| u.host_str().map(str::to_owned)).is_none() {
        return Err(b.invalid("base_url", "must name a host"));
    }
    let secret = b.secret("secret_access_key", &s.secret_access_key)?;
    let token = match &s.session_token {
        Some(token) => Some(b.secret("session_token", token)?),
        None => None,
    };
    Ok(Arc::new(Sns {
        url: format!("{base}/"),
        region: s.region,
        sender_id: s.sender_id,
        sms_type: s.sms_type,
        credentials: Credentials::new(s.access_key_id, secret, token, None, "doorstep-hub-config"),
    }))
}

/// An AWS region name: lowercase letters, digits and hyphens (`us-gov-west-1`).
fn is_region(text: &str) -> bool {
    (3..=32).contains(&text.len())
        && text.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// What SNS accepts as `AWS.SNS.SMS.SenderID`.
fn is_sender_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=11).contains(&bytes.len())
        && bytes.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && bytes.iter().any(u8::is_ascii_alphabetic)
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// An E.164 number: `+`, a country code not starting with 0, at most 15 digits in all.
pub fn is_e164(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('+') else { return false };
    (2..=15).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

impl Sns {
    /// The Publish form body for a message to `phone`.
    pub fn form_body(&self, phone: &str, text: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "Publish")
            .append_pair("Version", API_VERSION)
            .append_pair("PhoneNumber", phone)
            .append_pair("Message", text)
            .append_pair("MessageAttributes.entry.1.Name", "AWS.SNS.SMS.SMSType")
            .append_pair("MessageAttributes.entry.1.Value.DataType", "String")
            .append_pair("MessageAttributes.entry.1.Value.StringValue", self.sms_type.as_str());
        if let Some(sender) = &self.sender_id {
            form.append_pair("MessageAttributes.entry.2.Name", "AWS.SNS.SMS.SenderID")
                .append_pair("MessageAttributes.entry.2.Value.DataType", "String")
                .append_pair("MessageAttributes.entry.2.Value.StringValue", sender);
        }
        form.finish()
    }

    /// The SigV4 headers for a Publish with this body, signed at `time`: `x-amz-date`,
    /// `authorization` and, with temporary credentials, `x-amz-security-token` (the last
    /// two marked sensitive, so they never show in debug output).
    pub fn sign(&self, body: &[u8], time: SystemTime) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("SigV4 parameters: {e}"))?
            .into();
        let request = SignableRequest::new(
            "POST",
            self.url.as_str(),
            std::iter::once(("content-type", FORM_CONTENT_TYPE)),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("SigV4 request: {e}"))?;
        let (instructions, _signature) =
            sign(request, &params).map_err(|e| format!("SigV4 signing: {e}"))?.into_parts();
        let (headers, _query) = instructions.into_parts();
        headers
            .into_iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name().as_bytes())
                    .map_err(|e| format!("SigV4 header name {:?}: {e}", h.name()))?;
                let mut value = HeaderValue::from_str(h.value())
                    .map_err(|e| format!("SigV4 header {:?} has an invalid value: {e}", h.name()))?;
                // The signature is not the secret, but it is a credential for this
                // request: neither it nor the token shows in debug output.
                value.set_sensitive(h.sensitive() || name == reqwest::header::AUTHORIZATION);
                Ok((name, value))
            })
            .collect()
    }
}

impl Provider for Sns {
    fn request(
        &self,
        client: &reqwest::Client,
        msg: &Outgoing,
    ) -> Result<reqwest::RequestBuilder, SendResult> {
        // The customer's number, or for an operations alert the on-call phone.
        let phone = msg.recipient.as_str();
        if !is_e164(phone) {
            return Err(SendResult::Rejected {
                detail: "sns: the recipient is not an E.164 phone number (+ and up to 15 digits)".into(),
            });
        }
        let text = &msg.body;
        let chars = text.chars().count();
        if chars > MAX_MESSAGE_CHARS {
            return Err(SendResult::Rejected {
                detail: format!(
                    "sns: the text has {chars} characters; one Publish takes at most {MAX_MESSAGE_CHARS}"
                ),
            });
        }
        let body = self.form_body(phone, text);
        let headers = self
            .sign(body.as_bytes(), SystemTime::now())
            .map_err(|e| SendResult::Rejected { detail: format!("sns: {e}") })?;
        let mut request = client.post(&self.url).header(CONTENT_TYPE, FORM_CONTENT_TYPE);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        Ok(request.body(body))
    }

    fn read(&self, _msg: &Outgoing, reply: &Reply) -> SendResult {
        let xml = String::from_utf8_lossy(&reply.body);
        let request_id = text_of(&xml, "RequestId").filter(|id| is_plain_id(id));
        let request_id = request_id.map(|id| format!(" (request {id})")).unwrap_or_default();
        if reply.status.is_success() {
            let message_id = section(&xml, "PublishResult")
                .and_then(|result| text_of(result, "MessageId"))
                .filter(|id| is_plain_id(id));
            return match message_id {
                Some(id) => SendResult::Accepted {
                    provider_id: Some(id),
                    detail: format!("sns published{request_id}"),
                },
                None => SendResult::Accepted {
                    provider_id: None,
                    detail: format!("sns HTTP {} without a MessageId{request_id}", reply.status.as_u16()),
                },
            };
        }
        let error = section(&xml, "Error");
        let code = error.and_then(|e| text_of(e, "Code"));
        let message = error.and_then(|e| text_of(e, "Message"));
        let kind = error.and_then(|e| text_of(e, "Type"));
        let status = reply.status.as_u16();
        let Some(code) = code else {
            return super::classify_status(
                reply.status,
                reply.retry_after,
                format!("sns HTTP {status}{request_id}"),
            );
        };
        let mut detail = format!("sns HTTP {status}");
        if let Some(kind) = kind {
            detail.push(' ');
            detail.push_str(&clip(&kind));
        }
        detail.push_str(" error ");
        detail.push_str(&clip(&code));
        if let Some(message) = message {
            detail.push_str(": ");
            detail.push_str(&clip(&message));
        }
        detail.push_str(&request_id);
        if RETRY_CODES.contains(&code.as_str()) {
            return SendResult::Retry { detail, retry_after: reply.retry_after };
        }
        super::classify_status(reply.status, reply.retry_after, detail)
    }
}

/// At most [`MAX_DETAIL_CHARS`] characters of `text`, on one line.
fn clip(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let one_line = one_line.trim();
    if one_line.chars().count() <= MAX_DETAIL_CHARS {
        return one_line.to_owned();
    }
    let mut out: String = one_line.chars().take(MAX_DETAIL_CHARS).collect();
    out.push('…');
    out
}

/// An id worth keeping: 1 to 128 visible ASCII characters.
fn is_plain_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_graphic())
}

/// The raw content of the first `<name>` element (without attributes) in `xml`.
fn section<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let rest = xml.get(start..)?;
    let end = rest.find(&close)?;
    rest.get(..end)
}

/// The text of the first `<name>` element in `xml`, entities decoded; `None` when it is
/// missing or holds markup rather than text.
fn text_of(xml: &str, name: &str) -> Option<String> {
    let raw = section(xml, name)?;
    if raw.contains('<') {
        return None;
    }
    Some(unescape(raw.trim()))
}

/// Decodes XML's five named entities and numeric character references; anything else
/// is kept as it was written.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or_default());
        let after = rest.get(amp..).unwrap_or_default();
        let entity = after.find(';').filter(|&end| end <= 12).and_then(|end| {
            let name = after.get(1..end)?;
            let decoded = match name {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse::<u32>().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((decoded, end + 1))
        });
        match entity {
            Some((c, len)) => {
                out.push(c);
                rest = after.get(len..).unwrap_or_default();
            }
            None => {
                out.push('&');
                rest = after.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Milestone;
    use crate::notify::registry;
    use reqwest::StatusCode;

    const LINK_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const REQUEST_ID: &str = "9b2f6a3c-1d4e-4f5a-8b6c-7d8e9f0a1b2c";

    fn entry(extra: &str) -> String {
        format!(
            "type = \"sns\"\nregion = \"eu-central-1\"\naccess_key_id = \"AKIDEXAMPLE\"\n\
             secret_access_key = \"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\"\n{extra}"
        )
    }

    fn build(entry: &str) -> Result<Arc<dyn Provider>, NotifyConfigError> {
        let table: toml::Table = toml::from_str(entry).expect("toml");
        let providers = registry::build(&[table], "https://t.example", LINK_SECRET)?;
        Ok(Arc::clone(&providers.all()[0].provider))
    }

    fn sns(extra: &str) -> Arc<dyn Provider> {
        build(&entry(extra)).expect("valid sns entry")
    }

    fn message(recipient: &str, body: &str) -> Outgoing {
        Outgoing {
            outbox_id: 1,
            shipment_id: 7,
            channel: ContactChannel::Sms,
            recipient: recipient.into(),
            milestone: Milestone::Delivered,
            locale: "en".into(),
            tracking_number: "1Z999AA10123456784".into(),
            detail: None,
            subject: "Your parcel was delivered".into(),
            body: body.into(),
            link: "https://t.example/t/abc".into(),
            alert: None,
            merged: Vec::new(),
        }
    }

    /// A client as the dispatcher builds it (ring as rustls's provider), for building
    /// requests without sending them.
    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().build().expect("client")
    }

    fn reply(status: u16, body: &str, retry_after: Option<u64>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: reqwest::header::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn error_xml(kind: &str, code: &str, message: &str) -> String {
        format!(
            "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>{kind}</Type>\
             <Code>{code}</Code><Message>{message}</Message></Error>\
             <RequestId>{REQUEST_ID}</RequestId></ErrorResponse>"
        )
    }

    fn form_of(request: &reqwest::Request) -> Vec<(String, String)> {
        let bytes = request.body().and_then(|b| b.as_bytes()).expect("a buffered body");
        form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    #[test]
    fn a_publish_is_a_signed_form_with_the_documented_fields_in_order() {
        let provider = sns("sender_id = \"DOORSTEP\"");
        let client = client();
        let request = provider
            .request(&client, &message("+15555550100", "Parcel delivered & signed: 1Z999"))
            .expect("request")
            .build()
            .expect("builds");
        assert_eq!(request.method(), reqwest::Method::POST);
        assert_eq!(request.url().as_str(), "https://sns.eu-central-1.amazonaws.com/");
        let fields = form_of(&request);
        let expected = [
            ("Action", "Publish"),
            ("Version", "2010-03-31"),
            ("PhoneNumber", "+15555550100"),
            ("Message", "Parcel delivered & signed: 1Z999"),
            ("MessageAttributes.entry.1.Name", "AWS.SNS.SMS.SMSType"),
            ("MessageAttributes.entry.1.Value.DataType", "String"),
            ("MessageAttributes.entry.1.Value.StringValue", "Transactional"),
            ("MessageAttributes.entry.2.Name", "AWS.SNS.SMS.SenderID"),
            ("MessageAttributes.entry.2.Value.DataType", "String"),
            ("MessageAttributes.entry.2.Value.StringValue", "DOORSTEP"),
        ];
        let got: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
        let header =
            |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("content-type").as_deref(), Some(FORM_CONTENT_TYPE));
        let date = header("x-amz-date").expect("x-amz-date");
        assert_eq!(date.len(), 16, "{date}");
        let auth = header("authorization").expect("authorization");
        let scope = format!("Credential=AKIDEXAMPLE/{}/eu-central-1/sns/aws4_request", &date[..8]);
        assert!(auth.starts_with("AWS4-HMAC-SHA256 ") && auth.contains(&scope), "{auth}");
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date,"), "{auth}");
        assert!(request.headers().get("authorization").is_some_and(HeaderValue::is_sensitive));
        assert!(request.headers().get("x-amz-security-token").is_none());
    }

    #[test]
    fn signing_is_deterministic_for_one_time_and_covers_the_session_token() {
        let provider = Sns {
            url: "https://sns.us-east-1.amazonaws.com/".into(),
            region: "us-east-1".into(),
            sender_id: None,
            sms_type: SmsType::Promotional,
            credentials: Credentials::new("AKIDEXAMPLE", "secret", Some("the-token".into()), None, "test"),
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_751_356_800);
        let body = provider.form_body("+15555550100", "hello");
        assert!(body.contains("StringValue=Promotional"), "{body}");
        let a = provider.sign(body.as_bytes(), at).expect("signs");
        let b = provider.sign(body.as_bytes(), at).expect("signs");
        assert_eq!(a, b);
        let get = |name: &str| a.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.to_str().ok());
        assert_eq!(get("x-amz-date"), Some("20250701T080000Z"));
        assert_eq!(get("x-amz-security-token"), Some("the-token"));
        for (name, value) in &a {
            assert_eq!(value.is_sensitive(), name != "x-amz-date", "{name}");
        }
        let auth = get("authorization").expect("authorization");
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"), "{auth}");
        let other = provider.sign(provider.form_body("+15555550101", "hello").as_bytes(), at).expect("signs");
        assert_ne!(a, other, "the body is signed");
    }

    #[test]
    fn numbers_that_are_not_e164_and_overlong_texts_are_refused_without_a_request() {
        let provider = sns("");
        let client = client();
        for bad in ["", "15555550100", "+", "+0123456", "+1555555010012345", "+1 555 555 0100"] {
            match provider.request(&client, &message(bad, "hi")) {
                Err(SendResult::Rejected { detail }) => assert!(detail.contains("E.164"), "{detail}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "é".repeat(MAX_MESSAGE_CHARS + 1);
        assert!(matches!(
            provider.request(&client, &message("+15555550100", &long)),
            Err(SendResult::Rejected { detail }) if detail.contains("1601 characters")
        ));
        assert!(provider.request(&client, &message("+15555550100", &"é".repeat(MAX_MESSAGE_CHARS))).is_ok());
    }

    #[test]
    fn a_publish_response_is_accepted_with_its_message_id() {
        let provider = sns("");
        let msg = message("+15555550100", "hi");
        let ok = "<?xml version=\"1.0\"?>\n\
                  <PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n  \
                  <PublishResult>\n    \
                  <MessageId>567910cd-659e-55d4-8ccb-5aaf14679dc0</MessageId>\n  \
                  </PublishResult>\n  \
                  <ResponseMetadata>\n    <RequestId>d74b8436-ae13-5ab4-a9ff-ce54dfea72a0</RequestId>\n  \
                  </ResponseMetadata>\n</PublishResponse>\n";
        assert_eq!(
            provider.read(&msg, &reply(200, ok, None)),
            SendResult::Accepted {
                provider_id: Some("567910cd-659e-55d4-8ccb-5aaf14679dc0".into()),
                detail: "sns published (request d74b8436-ae13-5ab4-a9ff-ce54dfea72a0)".into(),
            }
        );
        // A 200 is an acceptance even when its body cannot be read: the text is on its way.
        for odd in [
            "",
            "<PublishResponse><PublishResult><MessageId>",
            "\u{0}\u{ff}<<>>&&;",
            "<MessageId>x</MessageId>",
        ] {
            assert!(
                matches!(
                    provider.read(&msg, &reply(200, odd, None)),
                    SendResult::Accepted { provider_id: None, .. }
                ),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn throttling_and_server_errors_are_retried_and_refusals_fail_with_code_and_message() {
        let provider = sns("");
        let msg = message("+15555550100", "hi");
        let throttled =
            provider.read(&msg, &reply(400, &error_xml("Sender", "Throttling", "Rate exceeded"), Some(7)));
        assert_eq!(
            throttled,
            SendResult::Retry {
                detail: format!("sns HTTP 400 Sender error Throttling: Rate exceeded (request {REQUEST_ID})"),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        let internal =
            provider.read(&msg, &reply(500, &error_xml("Receiver", "InternalError", "oops"), None));
        assert!(matches!(internal, SendResult::Retry { .. }), "{internal:?}");
        assert!(matches!(
            provider.read(&msg, &reply(503, "Service Unavailable", None)),
            SendResult::Retry { .. }
        ));
        let too_many = provider.read(&msg, &reply(429, "", Some(3)));
        assert_eq!(
            too_many,
            SendResult::Retry { detail: "sns HTTP 429".into(), retry_after: Some(Duration::from_secs(3)) }
        );
        let invalid = provider.read(
            &msg,
            &reply(
                400,
                &error_xml(
                    "Sender",
                    "InvalidParameter",
                    "Invalid parameter: PhoneNumber Reason: &lt;+1&gt; is not valid",
                ),
                None,
            ),
        );
        assert_eq!(
            invalid,
            SendResult::Rejected {
                detail: format!(
                    "sns HTTP 400 Sender error InvalidParameter: Invalid parameter: PhoneNumber Reason: \
                     <+1> is not valid (request {REQUEST_ID})"
                ),
            }
        );
        let forged =
            provider.read(&msg, &reply(403, &error_xml("Sender", "SignatureDoesNotMatch", "no"), None));
        assert!(
            matches!(&forged, SendResult::Rejected { detail } if detail.contains("SignatureDoesNotMatch")),
            "{forged:?}"
        );
        assert_eq!(
            provider.read(&msg, &reply(400, "not xml at all", None)),
            SendResult::Rejected { detail: "sns HTTP 400".into() }
        );
    }

    #[test]
    fn entities_decode_and_broken_ones_stay_as_written() {
        assert_eq!(unescape("a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos;"), "a & b <c> \"d\" 'e'");
        assert_eq!(unescape("&#233;&#xE9;&#X1F600;"), "éé😀");
        assert_eq!(unescape("&&nbsp; &#xD800; &#99999999999; & ;&"), "&&nbsp; &#xD800; &#99999999999; & ;&");
        assert_eq!(text_of("<A><B>x</B></A>", "A"), None, "markup is not text");
        assert_eq!(text_of("<A> x </A>", "A").as_deref(), Some("x"));
        assert_eq!(section("<A>unclosed", "A"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_answer_is_read_without_panicking(
            status in 100u16..600,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            wrap in 0usize..4,
        ) {
            let provider = sns("");
            let msg = message("+15555550100", "hi");
            let text = String::from_utf8_lossy(&body).into_owned();
            let body = match wrap {
                0 => text,
                1 => format!("<PublishResponse><PublishResult><MessageId>{text}</MessageId></PublishResult>"),
                2 => error_xml(&text, &text, &text),
                _ => format!("<ErrorResponse><Error><Code>{text}"),
            };
            let _ = provider.read(&msg, &reply(status, &body, None));
            let _ = unescape(&body);
        }
    }

    #[test]
    fn the_config_is_checked_and_secrets_stay_out_of_debug_output() {
        let dir = tempfile::tempdir().expect("dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "FQoGZXIvYXdzEXAMPLETOKEN\n").expect("write");
        let provider = sns(&format!(
            "session_token = \"file:{}\"\nsms_type = \"Promotional\"\nsender_id = \"Door-1\"",
            token_file.display()
        ));
        let debug = format!("{provider:?}");
        assert!(debug.contains("AKIDEXAMPLE") && debug.contains("Promotional"), "{debug}");
        assert!(!debug.contains("wJalrXUtnFEMI") && !debug.contains("EXAMPLETOKEN"), "{debug}");

        let fails = |extra: &str, key: &str| {
            let err = build(&entry(extra)).map(|_| ()).expect_err(extra);
            assert!(err.to_string().contains(key), "{extra}: {err}");
        };
        fails("sms_type = \"Marketing\"", "Marketing");
        fails("regoin = \"x\"", "regoin");
        fails("sender_id = \"DOORSTEP-LONGER\"", "sender_id");
        fails("sender_id = \"12345\"", "sender_id");
        fails("sender_id = \"-DOOR\"", "sender_id");
        fails("base_url = \"ftp://x\"", "base_url");
        fails("base_url = \"https://\"", "base_url");
        fails("session_token = \"\"", "session_token");
        let bad_region = entry("").replace("eu-central-1", "eu central 1");
        assert!(build(&bad_region).is_err());
        let no_secret = entry("").replace("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "");
        assert!(build(&no_secret).is_err());
        let with_base = sns("base_url = \"http://127.0.0.1:9/\"");
        assert!(format!("{with_base:?}").contains("url: \"http://127.0.0.1:9/\""), "{with_base:?}");
    }
}
