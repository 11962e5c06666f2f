//! Freshdesk: one ticket per shipment that went wrong, kept up to date until the parcel is
//! delivered (the Zendesk sink's job, for shippers whose support team lives in Freshdesk).
//!
//! An operations alert or an exception the customer was told about opens the shipment's
//! ticket: `POST /api/v2/tickets` with `email` (the requester), `subject`, an HTML
//! `description`, `status` 2 (open), `priority` 1 (low), `source` 2 (portal) and `tags`.
//! Freshdesk requires a requester: the customer when they consented to e-mail (with
//! `requester = true`), otherwise the configured `requester_email`, the operations
//! mailbox. Freshdesk answers 201 with the ticket; its `id` is remembered for the shipment.
//! Every later event of that shipment is a private note (`POST /api/v2/tickets/{id}/notes`,
//! `{"body", "private": true}`), because what the hub says there (a carrier contradicting
//! a van) is for agents; delivery also resolves the ticket (`PUT /api/v2/tickets/{id}`,
//! `{"status": 4}`). Other milestones of a shipment without a ticket are skipped: support
//! hears of a parcel only once something went wrong. Authentication is Basic
//! `{api_key}:X`.
//!
//! Freshdesk takes no idempotency key, so neither a ticket nor a note is ever repeated
//! after an ambiguous send (a timeout once the request was out, a hub stopped mid-send):
//! the row becomes `unknown` and an operator looks at the ticket. A lookup before creating
//! again was considered and left out: Freshdesk's search index takes minutes to show a new
//! ticket, so a search right after a restart would miss the very ticket it looks for and
//! open a second one. Delivery therefore resolves first and notes last: setting a status is
//! the same however often it is repeated, so a resolve whose answer was lost (or that was
//! asked to wait) is simply tried again, and the one step that cannot be repeated, the note,
//! is the last request of the delivery. A resolve Freshdesk refuses (a field the account
//! requires before resolving) still leaves the note, which says so. 429 comes with
//! `Retry-After`, which the dispatcher honours.

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::registry::SinkConfigError;
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::model::Milestone;
use crate::notify::ratelimit::RateLimit;
use crate::notify::templates::html_escape;
use crate::notify::{Reply, SendResult, refused};
use crate::reconcile::ExceptionDetail;

/// The Freshdesk sink type.
pub const TYPE: SinkType = SinkType {
    kind: "freshdesk",
    // Freshdesk's plans allow 200 to 700 requests a minute for the whole account, and a
    // delivery can take two (resolve, then note).
    rate: RateLimit { per_s: 1.0, burst: 10 },
    alerts: true,
    sample: r#"# name = "support"
# domain = "acme"                       # https://acme.freshdesk.com
# api_key = "file:/etc/doorstep/freshdesk.key"
# requester_email = "ops@example.com"   # the requester when the customer is not one
# tags = ["doorstep"]
# requester = true                      # the customer is the requester when they consented to e-mail
"#,
    build,
};

/// Open, as Freshdesk numbers ticket statuses.
const OPEN: u8 = 2;
/// Resolved.
const RESOLVED: u8 = 4;
/// Low, as Freshdesk numbers priorities: the agents' own rules may raise it.
const LOW: u8 = 1;
/// The portal, as Freshdesk numbers sources (what it records for API tickets).
const PORTAL: u8 = 2;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    domain: Option<String>,
    api_key: String,
    requester_email: String,
    #[serde(default = "default_tags")]
    tags: Vec<String>,
    #[serde(default = "yes")]
    requester: bool,
}

fn default_tags() -> Vec<String> {
    vec!["doorstep".into()]
}
fn yes() -> bool {
    true
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    let base_url = b.account_url("domain", s.domain.as_deref(), ".freshdesk.com")?;
    if !s.requester_email.contains('@') {
        return Err(b.invalid(
            "requester_email",
            "the e-mail address tickets are opened for when the customer is not the requester",
        ));
    }
    let key = b.secret("api_key", &s.api_key)?;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{key}:X"));
    Ok(Arc::new(Freshdesk {
        base_url,
        authorization: format!("Basic {credentials}"),
        requester_email: s.requester_email,
        tags: s.tags,
        requester: s.requester,
        timeout: b.request_timeout,
    }))
}

/// A configured Freshdesk account.
pub struct Freshdesk {
    base_url: String,
    authorization: String,
    requester_email: String,
    tags: Vec<String>,
    requester: bool,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Freshdesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshdesk").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open the shipment's ticket.
    Create,
    /// Add a private note to the ticket (resolving it first, on delivery).
    Note {
        /// The ticket.
        ticket: String,
        /// Whether this resolves it.
        resolve: bool,
    },
    /// Nothing: no ticket, and this event opens none.
    Skip,
}

/// What an event does at Freshdesk, given the shipment's ticket (pure).
pub fn step(event: &SinkEvent) -> Step {
    let opens = matches!(event.kind, EventKind::Alert(_) | EventKind::Milestone(Milestone::Exception));
    match &event.thread {
        Some(ticket) => Step::Note {
            ticket: ticket.clone(),
            resolve: event.kind == EventKind::Milestone(Milestone::Delivered),
        },
        None if opens => Step::Create,
        None => Step::Skip,
    }
}

/// Who the ticket is for: the customer when they consented to e-mail and the sink names
/// them, otherwise the operations mailbox (Freshdesk opens no ticket without a requester).
pub fn requester<'a>(event: &'a SinkEvent, customer: bool, fallback: &'a str) -> &'a str {
    match (customer, &event.customer_email) {
        (true, Some(email)) => email,
        _ => fallback,
    }
}

/// What the hub says about an event, as HTML paragraphs (Freshdesk renders descriptions
/// and notes as HTML, so every word from outside is escaped).
pub fn html(event: &SinkEvent, resolve_refused: Option<&str>) -> String {
    let parcel = match &event.order_name {
        Some(order) => format!("parcel {} (order {order})", event.tracking_number),
        None => format!("parcel {}", event.tracking_number),
    };
    let first = match &event.kind {
        EventKind::Alert(code) => format!("Doorstep operations alert {code} on {parcel}."),
        EventKind::Milestone(Milestone::Delivered) => match resolve_refused {
            None => format!("Doorstep: {parcel} was delivered. Doorstep resolved this ticket."),
            Some(why) => {
                format!("Doorstep: {parcel} was delivered. Freshdesk refused to resolve this ticket: {why}")
            }
        },
        EventKind::Milestone(Milestone::Exception) => {
            format!("Doorstep: {parcel} has a delivery exception; the customer was told.")
        }
        EventKind::Milestone(m) => format!("Doorstep: {parcel} is now {}.", crate::store::milestone_name(*m)),
    };
    let mut out = format!("<p>{}</p>", html_escape(&first));
    if let Some(detail) = detail(event) {
        out.push_str(&format!("<p>{}</p>", html_escape(&detail).replace('\n', "<br>")));
    }
    out
}

/// The event's detail in words: an exception's reason code and the carrier's new
/// expectation (stored as the reconciler's JSON), or an alert's sentence as it is.
fn detail(event: &SinkEvent) -> Option<String> {
    let text = event.detail.as_deref()?;
    let Some(exception) = ExceptionDetail::from_json(text) else { return Some(text.to_owned()) };
    Some(match exception.expected {
        Some(expected) => {
            format!("Carrier reason: {}. The carrier now expects delivery {expected}.", exception.reason)
        }
        None => format!("Carrier reason: {}.", exception.reason),
    })
}

fn subject(event: &SinkEvent) -> String {
    match &event.kind {
        EventKind::Alert(code) => format!("Doorstep: {code} on parcel {}", event.tracking_number),
        _ => format!("Doorstep: delivery exception on parcel {}", event.tracking_number),
    }
}

/// The body that opens the shipment's ticket (pure).
pub fn ticket(event: &SinkEvent, requester_email: &str, tags: &[String]) -> serde_json::Value {
    serde_json::json!({
        "email": requester_email,
        "subject": subject(event),
        "description": html(event, None),
        "status": OPEN,
        "priority": LOW,
        "source": PORTAL,
        "tags": tags,
    })
}

/// The `id` of what Freshdesk made (a ticket, a note), from its 201.
fn id_of(reply: &Reply) -> Option<String> {
    #[derive(Deserialize)]
    struct Made {
        id: u64,
    }
    serde_json::from_slice::<Made>(&reply.body).ok().map(|m| m.id.to_string())
}

impl Freshdesk {
    /// One request with the account's credentials: the answer when Freshdesk took it.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Reply, SendResult> {
        let request =
            request.timeout(self.timeout).header(reqwest::header::AUTHORIZATION, &self.authorization);
        let reply = exchange(request).await?;
        if reply.status.is_success() { Ok(reply) } else { Err(refused("Freshdesk", &reply)) }
    }

    async fn create(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        let email = requester(event, self.requester, &self.requester_email);
        let request =
            client.post(format!("{}/api/v2/tickets", self.base_url)).json(&ticket(event, email, &self.tags));
        match self.call(request).await {
            Ok(reply) => {
                let id = id_of(&reply);
                // Who, without the address: the outcome log is no place for it.
                let whom =
                    if email == self.requester_email { "the operations mailbox" } else { "the customer" };
                let detail = match &id {
                    Some(id) => format!("ticket {id} opened for {whom}"),
                    None => format!("Freshdesk answered {} without a ticket id", reply.status),
                };
                Delivery::Accepted { vendor_id: id.clone(), thread: id, detail }
            }
            Err(result) => Delivery::NotTaken(result),
        }
    }

    async fn note(
        &self,
        client: &reqwest::Client,
        event: &SinkEvent,
        ticket: &str,
        resolve: bool,
    ) -> Delivery {
        let mut refusal = None;
        if resolve {
            let request = client
                .put(format!("{}/api/v2/tickets/{ticket}", self.base_url))
                .json(&serde_json::json!({ "status": RESOLVED }));
            match self.call(request).await {
                Ok(_) => {}
                // Setting a status again changes nothing, so a resolve whose answer was
                // lost is tried again like one that was refused for now (the note, the
                // step that cannot be repeated, has not been sent).
                Err(SendResult::Ambiguous { detail }) => {
                    let detail = format!("resolving ticket {ticket}: {detail}; resolving again is harmless");
                    return Delivery::NotTaken(SendResult::Retry { detail, retry_after: None });
                }
                Err(SendResult::Rejected { detail }) => refusal = Some(detail),
                Err(result) => return Delivery::NotTaken(result),
            }
        }
        let body = html(event, refusal.as_deref());
        let request = client
            .post(format!("{}/api/v2/tickets/{ticket}/notes", self.base_url))
            .json(&serde_json::json!({ "body": body, "private": true }));
        match self.call(request).await {
            Ok(reply) => {
                let note = id_of(&reply).map_or_else(String::new, |id| format!(" (note {id})"));
                let detail = match (resolve, refusal) {
                    (false, _) => format!("ticket {ticket} noted{note}"),
                    (true, None) => format!("ticket {ticket} resolved and noted{note}"),
                    (true, Some(why)) => {
                        format!("ticket {ticket} noted{note}; resolving it was refused: {why}")
                    }
                };
                Delivery::Accepted { vendor_id: Some(ticket.to_owned()), thread: None, detail }
            }
            Err(result) => Delivery::NotTaken(result),
        }
    }

    async fn deliver_event(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        match step(event) {
            Step::Skip => Delivery::Skipped {
                detail: "no ticket for this shipment; only an alert or an exception opens one".into(),
            },
            Step::Create => self.create(client, event).await,
            Step::Note { ticket, resolve } => self.note(client, event, &ticket, resolve).await,
        }
    }
}

impl Sink for Freshdesk {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.deliver_event(client, event))
    }

    // resend_safe: the default (false). Freshdesk dedupes neither tickets nor notes.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, thread: Option<&str>) -> SinkEvent {
        let event = crate::sinks::test_event("support", kind);
        SinkEvent { thread: thread.map(str::to_owned), customer_email: None, order_name: None, ..event }
    }

    #[test]
    fn alerts_and_exceptions_open_the_ticket_later_events_are_notes_and_delivery_resolves() {
        let alert = EventKind::Alert("carrier_delivered_device_disagrees".into());
        let m = EventKind::Milestone;
        assert_eq!(step(&event(alert.clone(), None)), Step::Create);
        assert_eq!(step(&event(m(Milestone::Exception), None)), Step::Create);
        assert_eq!(step(&event(m(Milestone::Dispatched), None)), Step::Skip);
        assert_eq!(step(&event(m(Milestone::Delivered), None)), Step::Skip);
        assert_eq!(step(&event(alert, Some("7"))), Step::Note { ticket: "7".into(), resolve: false });
        assert_eq!(
            step(&event(m(Milestone::Delivered), Some("7"))),
            Step::Note { ticket: "7".into(), resolve: true }
        );
    }

    #[test]
    fn the_customer_is_the_requester_only_when_they_consented_and_the_sink_says_so() {
        let mut e = event(EventKind::Milestone(Milestone::Exception), None);
        assert_eq!(requester(&e, true, "ops@example.com"), "ops@example.com", "no consent");
        e.customer_email = Some("ada@example.com".into());
        assert_eq!(requester(&e, true, "ops@example.com"), "ada@example.com");
        assert_eq!(requester(&e, false, "ops@example.com"), "ops@example.com");
    }

    #[test]
    fn words_from_outside_are_escaped_in_the_ticket_html() {
        let mut e = event(EventKind::Milestone(Milestone::Exception), None);
        e.order_name = Some("#1001 <b>".into());
        e.detail = Some("Receiver \"not\" available & <script>x</script>\nsecond line".into());
        let body = ticket(&e, "ops@example.com", &["doorstep".into()]);
        let description = body["description"].as_str().expect("description");
        assert!(!description.contains("<script>") && !description.contains("<b>"), "{description}");
        assert!(description.contains("&lt;script&gt;") && description.contains("&amp;"), "{description}");
        assert!(description.contains("<br>second line"), "{description}");
        assert_eq!(
            (body["status"].as_u64(), body["priority"].as_u64(), body["source"].as_u64()),
            (Some(2), Some(1), Some(2))
        );
        assert_eq!(body["tags"], serde_json::json!(["doorstep"]));
        let refused = html(&event(EventKind::Milestone(Milestone::Delivered), Some("7")), Some("<required>"));
        assert!(refused.contains("refused to resolve") && refused.contains("&lt;required&gt;"), "{refused}");
        e.detail = Some(r#"{"reason":"recipient_absent","expected":"2026-08-09"}"#.into());
        let words = html(&e, None);
        assert!(
            words.contains(
                "<p>Carrier reason: recipient_absent. The carrier now expects delivery 2026-08-09.</p>"
            ),
            "{words}"
        );
    }
}
