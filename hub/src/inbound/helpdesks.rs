//! Helpdesks: a new ticket that names a parcel is a customer who still asked support about
//! it. These are the leak's raw material: `store::support` joins them with the messages
//! that went out, so operators see which message fails to answer the customer's question.
//!
//! - **Zendesk** sends the `zen:event-type:ticket.created` event of a webhook subscribed to
//!   ticket events, signed `X-Zendesk-Webhook-Signature` = base64 HMAC-SHA256 of
//!   `X-Zendesk-Webhook-Signature-Timestamp` followed by the raw body, under the webhook's
//!   signing secret. A timestamp more than [`ZENDESK_WINDOW_MS`] away from the hub's clock
//!   is refused (a replay).
//! - **Freshdesk**'s automation rules ("Trigger webhook" on ticket creation) sign nothing;
//!   the rule sends a configured header with a shared secret, compared in constant time,
//!   and a JSON body with the ticket's placeholders (see `docs/sinks.md`).
//!
//! Tracking numbers are looked for in the ticket's subject, description and external id
//! ([`candidates`]); the writer records a contact for each one that is a shipment's.
//! Tickets carrying the ignore tag (`doorstep`, what the hub's own helpdesk sinks tag
//! theirs with) are Doorstep's own and are not customers asking.

use std::fmt;

use doorstep_proto::TrackingNumber;
use serde_json::Value;

use super::{Inbound, Received, Refused, Source, SourceError};
use crate::carrier::{Headers, check_size, parse_time_ms, single_header};

/// Zendesk's signature header.
pub const ZENDESK_SIGNATURE_HEADER: &str = "X-Zendesk-Webhook-Signature";
/// Zendesk's signed timestamp header.
pub const ZENDESK_TIMESTAMP_HEADER: &str = "X-Zendesk-Webhook-Signature-Timestamp";
/// How far a signed timestamp may be from the hub's clock, ms.
pub const ZENDESK_WINDOW_MS: i64 = 3_600_000;
/// The event type of a new ticket.
pub const TICKET_CREATED: &str = "zen:event-type:ticket.created";
/// Most tracking numbers one ticket is matched against (a pasted order list is not a
/// question about each parcel).
pub const MAX_CANDIDATES: usize = 16;
/// Shortest token taken for a tracking number, and the fewest digits it must hold: order
/// numbers, postcodes and phone fragments are shorter.
const MIN_TOKEN_LEN: usize = 8;
const MIN_DIGITS: usize = 6;
/// Longest ticket id kept.
const MAX_TICKET_LEN: usize = 64;

/// A customer's ticket that may be about parcels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportContact {
    /// The helpdesk's ticket id.
    pub ticket: String,
    /// Tokens of the ticket that could be tracking numbers, in order, at most
    /// [`MAX_CANDIDATES`].
    pub candidates: Vec<TrackingNumber>,
    /// When the customer opened it, if the helpdesk said so.
    pub opened_ms: Option<i64>,
}

/// The tokens of `texts` that could be tracking numbers: runs of letters and digits, 8 to
/// 40 long with at least 6 digits, upper-cased, each once (pure).
pub fn candidates(texts: &[&str]) -> Vec<TrackingNumber> {
    let mut out: Vec<TrackingNumber> = Vec::new();
    let tokens = texts.iter().flat_map(|t| t.split(|c: char| !c.is_ascii_alphanumeric()));
    for token in tokens {
        if token.len() < MIN_TOKEN_LEN || token.bytes().filter(u8::is_ascii_digit).count() < MIN_DIGITS {
            continue;
        }
        let Ok(tracking) = TrackingNumber::new(token.to_ascii_uppercase()) else { continue };
        if !out.contains(&tracking) {
            out.push(tracking);
            if out.len() == MAX_CANDIDATES {
                break;
            }
        }
    }
    out
}

/// A JSON string or number as text (helpdesks send ids either way).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Tags as a list, from an array or a comma-separated string.
fn tags(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(text).collect(),
        Value::String(s) => s.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// What a verified ticket says: a contact, or why it is not one.
fn contact(
    ticket: Option<String>,
    tags: &[String],
    ignore_tag: &str,
    texts: &[&str],
    opened_ms: Option<i64>,
) -> Result<Received, Refused> {
    let Some(ticket) = ticket.filter(|t| t.len() <= MAX_TICKET_LEN) else {
        return Err(Refused::malformed("missing_field", "the ticket has no id (or one over 64 characters)"));
    };
    if tags.iter().any(|t| t.eq_ignore_ascii_case(ignore_tag)) {
        return Ok(ignored(&ticket, "doorstep_ticket"));
    }
    let candidates = candidates(texts);
    if candidates.is_empty() {
        return Ok(ignored(&ticket, "no_tracking_number"));
    }
    Ok(Received {
        delivery_id: format!("ticket:{ticket}"),
        triggered_ms: opened_ms,
        item: Inbound::SupportContact(SupportContact { ticket, candidates, opened_ms }),
    })
}

fn ignored(ticket: &str, why: &'static str) -> Received {
    Received { delivery_id: format!("ticket:{ticket}"), triggered_ms: None, item: Inbound::Ignored(why) }
}

fn json(body: &[u8]) -> Result<Value, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| Refused::malformed("malformed", format!("the body is not the JSON expected: {e}")))
}

/// Zendesk's ticket events, with the webhook's signing secret.
pub struct Zendesk {
    key: ring::hmac::Key,
    ignore_tag: String,
}

impl Zendesk {
    /// A source checking signatures with `secret`, not counting tickets tagged `ignore_tag`.
    pub fn new(secret: &str, ignore_tag: &str) -> Result<Self, SourceError> {
        if secret.is_empty() {
            return Err(SourceError { section: "support.zendesk", problem: "the secret is empty".into() });
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        Ok(Self { key, ignore_tag: ignore_tag.to_owned() })
    }
}

impl fmt::Debug for Zendesk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zendesk").field("ignore_tag", &self.ignore_tag).finish_non_exhaustive()
    }
}

impl Source for Zendesk {
    fn slug(&self) -> &'static str {
        "zendesk"
    }

    fn receive(&self, headers: &dyn Headers, body: &[u8], now_ms: i64) -> Result<Received, Refused> {
        use base64::Engine as _;
        check_size(body)?;
        let signature = single_header(headers, ZENDESK_SIGNATURE_HEADER)?;
        let timestamp = single_header(headers, ZENDESK_TIMESTAMP_HEADER)?;
        let tag = base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| {
            crate::carrier::WebhookError::MalformedSignature {
                header: ZENDESK_SIGNATURE_HEADER,
                problem: "not base64",
            }
        })?;
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        ring::hmac::verify(&self.key, &signed, &tag)
            .map_err(|_| crate::carrier::WebhookError::BadSignature)?;
        let at = parse_time_ms(timestamp).ok_or(crate::carrier::WebhookError::MalformedSignature {
            header: ZENDESK_TIMESTAMP_HEADER,
            problem: "not a date and time",
        })?;
        let skew_ms = now_ms.saturating_sub(at);
        if skew_ms.abs() > ZENDESK_WINDOW_MS {
            return Err(crate::carrier::WebhookError::StaleTimestamp {
                skew_ms,
                window_ms: ZENDESK_WINDOW_MS,
            }
            .into());
        }
        let event = json(body)?;
        if event["type"] != TICKET_CREATED {
            return Ok(Received {
                delivery_id: text(&event["id"]).unwrap_or_default(),
                triggered_ms: None,
                item: Inbound::Ignored("not_a_new_ticket"),
            });
        }
        let detail = &event["detail"];
        let texts: Vec<&str> =
            ["subject", "description", "external_id"].iter().filter_map(|k| detail[*k].as_str()).collect();
        let opened = detail["created_at"].as_str().and_then(parse_time_ms);
        contact(text(&detail["id"]), &tags(&detail["tags"]), &self.ignore_tag, &texts, opened)
    }
}

/// Freshdesk's automation-rule webhooks, with the configured header and secret.
pub struct Freshdesk {
    header: String,
    secret: Vec<u8>,
    ignore_tag: String,
}

impl Freshdesk {
    /// A source expecting `secret` in `header`, not counting tickets tagged `ignore_tag`.
    pub fn new(header: &str, secret: &str, ignore_tag: &str) -> Result<Self, SourceError> {
        let problem = if secret.len() < 16 {
            Some(
                "the secret must be at least 16 characters (it is the only proof the request is Freshdesk's)",
            )
        } else if header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            Some("the header must be a name such as X-Doorstep-Secret")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(SourceError { section: "support.freshdesk", problem: problem.into() });
        }
        Ok(Self {
            header: header.to_owned(),
            secret: secret.as_bytes().to_vec(),
            ignore_tag: ignore_tag.to_owned(),
        })
    }
}

impl fmt::Debug for Freshdesk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Freshdesk").field("header", &self.header).finish_non_exhaustive()
    }
}

/// Whether `given` is `secret`, in time independent of where they differ: both are
/// hashed first, so the comparison is of equal-length digests.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given);
    let b = ring::digest::digest(&ring::digest::SHA256, secret);
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Source for Freshdesk {
    fn slug(&self) -> &'static str {
        "freshdesk"
    }

    fn receive(&self, headers: &dyn Headers, body: &[u8], _now_ms: i64) -> Result<Received, Refused> {
        check_size(body)?;
        let given = match headers.values(&self.header).as_slice() {
            [one] => one.trim().as_bytes().to_vec(),
            [] => Vec::new(),
            _ => {
                return Err(Refused {
                    reason: "malformed_signature",
                    authentication: true,
                    message: format!("{} is repeated", self.header),
                });
            }
        };
        if !same_secret(&given, &self.secret) {
            return Err(Refused {
                reason: "bad_signature",
                authentication: true,
                message: format!("{} does not carry the configured secret", self.header),
            });
        }
        let body = json(body)?;
        // The "simple" webhook content wraps the fields in `freshdesk_webhook`; an advanced
        // (custom JSON) body may send them flat.
        let fields = body.get("freshdesk_webhook").unwrap_or(&body);
        let texts: Vec<&str> = ["ticket_subject", "ticket_description", "ticket_description_text"]
            .iter()
            .filter_map(|k| fields[*k].as_str())
            .collect();
        let opened = fields["ticket_created_at"].as_str().and_then(parse_time_ms);
        contact(text(&fields["ticket_id"]), &tags(&fields["ticket_tags"]), &self.ignore_tag, &texts, opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tn(s: &str) -> TrackingNumber {
        TrackingNumber::new(s).expect("tracking")
    }

    #[test]
    fn tracking_numbers_are_found_in_what_customers_write_and_order_numbers_are_not() {
        let found = candidates(&[
            "Where is my parcel 1z999aa10123456784? Order #10023, call 0151 2345",
            "Tracking: 9400111899223856928499 (and again 1Z999AA10123456784)",
        ]);
        assert_eq!(found, [tn("1Z999AA10123456784"), tn("9400111899223856928499")]);
        assert!(candidates(&["order 10023 for Ada Lovelace, 10115 Berlin"]).is_empty());
        let many = (0..40).map(|i| format!("TBA{:012}", i)).collect::<Vec<_>>().join(" ");
        assert_eq!(candidates(&[&many]).len(), MAX_CANDIDATES);
    }

    #[test]
    fn a_zendesk_ticket_is_verified_on_timestamp_and_body_and_its_own_tickets_are_ignored() {
        use base64::Engine as _;
        let zendesk = Zendesk::new("dGhpc19zZWNyZXQ", "doorstep").expect("source");
        let body = br#"{"type":"zen:event-type:ticket.created","id":"01HN","time":"2025-07-01T08:00:00Z","detail":{"id":"35436","subject":"Parcel 1Z999AA10123456784 not here","description":"","created_at":"2025-07-01T08:00:00Z","tags":[]}}"#;
        let sign = |ts: &str, body: &[u8]| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"dGhpc19zZWNyZXQ");
            let mut m = ts.as_bytes().to_vec();
            m.extend_from_slice(body);
            base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, &m))
        };
        let ts = "2025-07-01T08:00:00Z";
        let now = 1_751_356_800_000;
        let headers = |sig: String, ts: &str| {
            vec![
                (ZENDESK_SIGNATURE_HEADER.to_owned(), sig),
                (ZENDESK_TIMESTAMP_HEADER.to_owned(), ts.to_owned()),
            ]
        };
        let got = zendesk.receive(&headers(sign(ts, body), ts), body, now).expect("genuine");
        let Inbound::SupportContact(c) = got.item else { panic!("{got:?}") };
        assert_eq!((c.ticket.as_str(), c.candidates.as_slice()), ("35436", &[tn("1Z999AA10123456784")][..]));
        assert_eq!(c.opened_ms, Some(now));
        // Another timestamp with the same signature, an old replay, a changed body.
        let other = "2025-07-01T08:00:01Z";
        assert!(zendesk.receive(&headers(sign(ts, body), other), body, now).expect_err("ts").authentication);
        let old = zendesk.receive(&headers(sign(ts, body), ts), body, now + 2 * ZENDESK_WINDOW_MS);
        assert_eq!(old.expect_err("replay").reason, "stale_timestamp");
        let changed = body.iter().map(|&b| if b == b'3' { b'4' } else { b }).collect::<Vec<_>>();
        assert!(zendesk.receive(&headers(sign(ts, body), ts), &changed, now).is_err());
        // The hub's own ticket.
        let own = br#"{"type":"zen:event-type:ticket.created","detail":{"id":"7","subject":"Doorstep: 1Z999AA10123456784","tags":["doorstep"]}}"#;
        let got = zendesk.receive(&headers(sign(ts, own), ts), own, now).expect("genuine");
        assert_eq!(got.item, Inbound::Ignored("doorstep_ticket"));
    }

    #[test]
    fn a_freshdesk_ticket_needs_the_shared_header_and_reads_the_simple_or_flat_body() {
        let freshdesk =
            Freshdesk::new("X-Doorstep-Secret", "0123456789abcdef-fd", "doorstep").expect("source");
        let h = |v: &str| vec![("x-doorstep-secret".to_owned(), v.to_owned())];
        let simple = br#"{"freshdesk_webhook":{"ticket_id":81,"ticket_subject":"Where is 1Z999AA10123456784","ticket_tags":"vip, parcels"}}"#;
        let got = freshdesk.receive(&h("0123456789abcdef-fd"), simple, 0).expect("genuine");
        assert_eq!(got.delivery_id, "ticket:81");
        assert!(
            matches!(got.item, Inbound::SupportContact(ref c) if c.candidates == [tn("1Z999AA10123456784")])
        );
        let flat = br#"{"ticket_id":"82","ticket_description":"no number here","ticket_tags":[]}"#;
        let got = freshdesk.receive(&h("0123456789abcdef-fd"), flat, 0).expect("genuine");
        assert_eq!(got.item, Inbound::Ignored("no_tracking_number"));
        assert!(freshdesk.receive(&h("0123456789abcdef-fX"), simple, 0).expect_err("forged").authentication);
        assert!(freshdesk.receive(&Vec::new(), simple, 0).expect_err("unsigned").authentication);
        assert_eq!(
            freshdesk.receive(&h("0123456789abcdef-fd"), b"{", 0).expect_err("junk").reason,
            "malformed"
        );
        assert!(Freshdesk::new("X-Doorstep-Secret", "short", "doorstep").is_err());
    }
}
