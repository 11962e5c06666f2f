//! Zendesk Support: one ticket per shipment that went wrong, kept up to date until the
//! parcel is delivered.
//!
//! An operations alert or an exception the customer was told about opens the shipment's
//! ticket (`POST /api/v2/tickets.json`, `external_id` = the tracking number, the customer
//! as requester when they consented to e-mail); every later event of that shipment is a
//! private comment on it (`PUT /api/v2/tickets/{id}.json`), and delivery solves it
//! (`status: "solved"`). Other milestones of a shipment without a ticket are skipped:
//! support hears of a parcel only once something went wrong. Comments are private because
//! what the hub says there (a carrier contradicting a van) is for agents; a public comment
//! would e-mail the requester.
//!
//! Authentication is an API token: Basic `{email}/token:{api_token}`. Creating a ticket
//! carries `Idempotency-Key` = the row's stable key, which Zendesk answers with the ticket
//! it already made for a repeated key (it keeps keys for two hours), so a create whose
//! answer was lost is repeated; a comment has no such key and is never repeated after an
//! ambiguous send. 429 comes with `Retry-After`, which the dispatcher honours.

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::registry::SinkConfigError;
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::model::Milestone;
use crate::notify::ratelimit::RateLimit;
use crate::notify::{Reply, SendResult, classify_status};

/// The Zendesk sink type.
pub const TYPE: SinkType = SinkType {
    kind: "zendesk",
    // Zendesk's plans allow 200 to 700 requests a minute for the whole account.
    rate: RateLimit { per_s: 2.0, burst: 10 },
    alerts: true,
    sample: r#"# name = "helpdesk"
# subdomain = "acme"                    # https://acme.zendesk.com
# email = "ops@example.com"             # the agent the API token belongs to
# api_token = "file:/etc/doorstep/zendesk.token"
# tags = ["doorstep"]
# requester = true                      # the customer is the requester when they consented to e-mail
"#,
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    subdomain: Option<String>,
    email: String,
    api_token: String,
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
    let base_url = b.account_url("subdomain", s.subdomain.as_deref(), ".zendesk.com")?;
    if !s.email.contains('@') {
        return Err(b.invalid("email", "the e-mail address of the agent the API token belongs to"));
    }
    let token = b.secret("api_token", &s.api_token)?;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{}/token:{token}", s.email));
    Ok(Arc::new(Zendesk {
        base_url,
        authorization: format!("Basic {credentials}"),
        tags: s.tags,
        requester: s.requester,
        timeout: b.request_timeout,
    }))
}

/// A configured Zendesk account.
pub struct Zendesk {
    base_url: String,
    authorization: String,
    tags: Vec<String>,
    requester: bool,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Zendesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zendesk").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open the shipment's ticket.
    Create,
    /// Comment on the ticket (and solve it, on delivery).
    Update {
        /// The ticket.
        ticket: String,
        /// Whether this solves it.
        solve: bool,
    },
    /// Nothing: no ticket, and this event opens none.
    Skip,
}

/// What an event does at Zendesk, given the shipment's ticket (pure).
pub fn step(event: &SinkEvent) -> Step {
    let opens = matches!(event.kind, EventKind::Alert(_) | EventKind::Milestone(Milestone::Exception));
    match &event.thread {
        Some(ticket) => Step::Update {
            ticket: ticket.clone(),
            solve: event.kind == EventKind::Milestone(Milestone::Delivered),
        },
        None if opens => Step::Create,
        None => Step::Skip,
    }
}

/// The comment's text.
fn body(event: &SinkEvent) -> String {
    let parcel = match &event.order_name {
        Some(order) => format!("parcel {} (order {order})", event.tracking_number),
        None => format!("parcel {}", event.tracking_number),
    };
    let mut text = match &event.kind {
        EventKind::Alert(code) => format!("Doorstep operations alert {code} on {parcel}."),
        EventKind::Milestone(Milestone::Delivered) => {
            format!("Doorstep: {parcel} was delivered. Doorstep solved this ticket.")
        }
        EventKind::Milestone(Milestone::Exception) => {
            format!("Doorstep: {parcel} has a delivery exception; the customer was told.")
        }
        EventKind::Milestone(m) => format!("Doorstep: {parcel} is now {}.", crate::store::milestone_name(*m)),
    };
    if let Some(detail) = &event.detail {
        text.push_str("\n\n");
        text.push_str(detail);
    }
    text
}

fn subject(event: &SinkEvent) -> String {
    match &event.kind {
        EventKind::Alert(code) => format!("Doorstep: {code} on parcel {}", event.tracking_number),
        _ => format!("Doorstep: delivery exception on parcel {}", event.tracking_number),
    }
}

fn refused(reply: &Reply) -> SendResult {
    let text = String::from_utf8_lossy(&reply.body);
    let detail = format!("Zendesk answered {}: {}", reply.status, text.chars().take(300).collect::<String>());
    classify_status(reply.status, reply.retry_after, detail)
}

impl Zendesk {
    async fn deliver_event(&self, client: &reqwest::Client, event: &SinkEvent) -> Delivery {
        let comment = serde_json::json!({ "body": body(event), "public": false });
        let request = match step(event) {
            Step::Skip => {
                return Delivery::Skipped {
                    detail: "no ticket for this shipment; only an alert or an exception opens one".into(),
                };
            }
            Step::Create => {
                let mut ticket = serde_json::json!({
                    "subject": subject(event),
                    "comment": comment,
                    "external_id": event.tracking_number,
                    "tags": self.tags,
                });
                if let (true, Some(email)) = (self.requester, &event.customer_email) {
                    ticket["requester"] = serde_json::json!({ "email": email });
                }
                client
                    .post(format!("{}/api/v2/tickets.json", self.base_url))
                    .header("Idempotency-Key", &event.key)
                    .json(&serde_json::json!({ "ticket": ticket }))
            }
            Step::Update { ticket, solve } => {
                let mut update = serde_json::json!({ "comment": comment });
                if solve {
                    update["status"] = "solved".into();
                }
                client
                    .put(format!("{}/api/v2/tickets/{ticket}.json", self.base_url))
                    .json(&serde_json::json!({ "ticket": update }))
            }
        };
        let request =
            request.timeout(self.timeout).header(reqwest::header::AUTHORIZATION, &self.authorization);
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(result) => return Delivery::NotTaken(result),
        };
        if !reply.status.is_success() {
            return Delivery::NotTaken(refused(&reply));
        }
        #[derive(Deserialize)]
        struct Answer {
            ticket: Ticket,
        }
        #[derive(Deserialize)]
        struct Ticket {
            id: u64,
        }
        let id = serde_json::from_slice::<Answer>(&reply.body).ok().map(|a| a.ticket.id.to_string());
        let created = event.thread.is_none();
        let detail = match (&id, created) {
            (Some(id), true) => format!("ticket {id} opened"),
            (Some(id), false) => format!("ticket {id} updated"),
            (None, _) => format!("{} without a ticket id", reply.status),
        };
        Delivery::Accepted { thread: id.clone().filter(|_| created), vendor_id: id, detail }
    }
}

impl Sink for Zendesk {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(self.deliver_event(client, event))
    }

    /// A ticket's creation carries `Idempotency-Key`; a comment carries nothing Zendesk
    /// dedupes on.
    fn resend_safe(&self, event: &SinkEvent) -> bool {
        !matches!(step(event), Step::Update { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, thread: Option<&str>) -> SinkEvent {
        let event = crate::sinks::test_event("helpdesk", kind);
        SinkEvent { thread: thread.map(str::to_owned), customer_email: None, order_name: None, ..event }
    }

    #[test]
    fn alerts_and_exceptions_open_the_ticket_later_events_comment_and_delivery_solves() {
        let alert = EventKind::Alert("carrier_delivered_device_disagrees".into());
        let m = EventKind::Milestone;
        assert_eq!(step(&event(alert.clone(), None)), Step::Create);
        assert_eq!(step(&event(m(Milestone::Exception), None)), Step::Create);
        assert_eq!(step(&event(m(Milestone::Nearby), None)), Step::Skip);
        assert_eq!(step(&event(m(Milestone::Delivered), None)), Step::Skip);
        assert_eq!(step(&event(alert, Some("7"))), Step::Update { ticket: "7".into(), solve: false });
        assert_eq!(
            step(&event(m(Milestone::Delivered), Some("7"))),
            Step::Update { ticket: "7".into(), solve: true }
        );
    }
}
