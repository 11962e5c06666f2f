//! ActiveCampaign: a tag per milestone on the customer's contact (`doorstep-delivered`),
//! so the shipper's automations that start on "tag is added" (a review request after
//! delivery, an apology after an exception) start from Doorstep's word.
//!
//! ActiveCampaign's API v3 at `https://{account}.api-us1.com`, with the account's key in
//! the `Api-Token` header, takes a tag by ids, so one event is up to four requests:
//!
//! 1. the contact, by e-mail address: `GET /api/3/contacts?email=...` →
//!    `{"contacts":[{"id":"..."}],"meta":{"total":"1"}}`. No contact: the row is skipped.
//!    Doorstep does not create contacts: a marketing list is the shipper's to fill, with
//!    the consent it recorded.
//! 2. the tag's id, by name: `GET /api/3/tags?search=...` (a substring search: the answer
//!    is filtered for the exact name, a contact tag); when missing, created with
//!    `POST /api/3/tags` `{"tag":{"tag","tagType":"contact","description"}}`. The ids are
//!    kept in the sink, so after the first event of each milestone this costs nothing; a
//!    tag deleted in ActiveCampaign since is looked up again once its id is refused.
//! 3. the tag on the contact: `POST /api/3/contactTags`
//!    `{"contactTag":{"contact":"<id>","tag":"<id>"}}` → 201 `{"contactTag":{"id",...}}`.
//!
//! Only for a customer who consented to e-mail; otherwise the row is skipped. Operations
//! alerts are off unless `alerts = true` (they tag `doorstep-alert`).
//!
//! Resending is safe, although ActiveCampaign takes no idempotency key: a tag is a set
//! membership, not an event. A contact has the tag or it does not, so adding it again
//! after an answer was lost leaves the contact as the first add did: the same tags, and
//! the shipper's "tag is added" automations see a tag that was already there (a
//! second-hand fact: ActiveCampaign's reference does not say what a repeated add answers,
//! and any 2xx is taken). The lookups change nothing, and a tag whose creation was cut
//! short is found by the next attempt's search instead of being made twice.
//! ActiveCampaign allows 5 requests per second per account, whatever the key, and answers
//! 429 with `Retry-After` beyond it; the default rate of 2 events a second keeps an event's
//! two requests under it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::registry::{MILESTONES, SinkConfigError};
use super::sink::{BoxFuture, Build, Delivery, Sink, SinkType, exchange};
use super::{EventKind, SinkEvent};
use crate::model::Milestone;
use crate::notify::ratelimit::RateLimit;
use crate::notify::{Reply, SendResult, classify_status};

/// The ActiveCampaign sink type.
pub const TYPE: SinkType = SinkType {
    kind: "activecampaign",
    // 5 requests per second per account, shared by every key and integration of the
    // account; an event is two requests once its tag's id is known.
    rate: RateLimit { per_s: 2.0, burst: 2 },
    alerts: false,
    sample: r#"# name = "automations"
# account = "acme"                      # https://acme.api-us1.com (or base_url)
# api_token = "file:/etc/doorstep/activecampaign.token"
# tags = { delivered = "doorstep-delivered", exception = "doorstep-exception" }   # per milestone (and alert)
"#,
    build,
};

/// A tag name's limit in ActiveCampaign.
const MAX_TAG: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    account: Option<String>,
    api_token: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

fn build(b: &mut Build<'_>) -> Result<Arc<dyn Sink>, SinkConfigError> {
    let s: Section = b.section()?;
    let base_url = b.account_url("account", s.account.as_deref(), ".api-us1.com")?;
    let token = b.secret("api_token", &s.api_token)?;
    let known =
        || MILESTONES.map(crate::store::milestone_name).into_iter().chain(["alert"]).collect::<Vec<_>>();
    for (key, tag) in &s.tags {
        if !known().contains(&key.as_str()) {
            return Err(b.invalid("tags", format!("{key:?} is not one of: {}", known().join(", "))));
        }
        if tag.trim().is_empty() || tag.chars().count() > MAX_TAG {
            return Err(b.invalid("tags", format!("{key}: a tag name of 1 to {MAX_TAG} characters")));
        }
    }
    Ok(Arc::new(ActiveCampaign {
        base_url,
        token,
        tags: s.tags,
        tag_ids: Mutex::default(),
        timeout: b.request_timeout,
    }))
}

/// A configured ActiveCampaign account.
pub struct ActiveCampaign {
    base_url: String,
    token: String,
    tags: BTreeMap<String, String>,
    /// Tag ids by name, as ActiveCampaign gave them.
    tag_ids: Mutex<HashMap<String, String>>,
    timeout: Duration,
}

impl std::fmt::Debug for ActiveCampaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveCampaign").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// The tag an event adds unless configured: `doorstep-out-for-delivery`, `doorstep-alert`.
pub fn default_tag(kind: &EventKind) -> String {
    match kind {
        EventKind::Milestone(m) => format!("doorstep-{}", crate::store::milestone_name(*m).replace('_', "-")),
        EventKind::Alert(_) => "doorstep-alert".to_owned(),
    }
}

/// The tag's description, for when Doorstep creates it.
fn description(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Milestone(Milestone::Created | Milestone::Dispatched) => {
            "Doorstep: the parcel was dispatched"
        }
        EventKind::Milestone(Milestone::OutForDelivery) => "Doorstep: the parcel is out for delivery",
        EventKind::Milestone(Milestone::Nearby) => "Doorstep: the van is nearby",
        EventKind::Milestone(Milestone::Exception) => "Doorstep: the delivery has an exception",
        EventKind::Milestone(Milestone::Delivered) => "Doorstep: the parcel was delivered",
        EventKind::Alert(_) => "Doorstep: an operations alert on a parcel",
    }
}

/// An id as ActiveCampaign writes it (a string; a number is read too).
fn id_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The contact of `email` in a contact list answer (pure): the one with that address,
/// whatever its case.
pub fn contact_id(answer: &serde_json::Value, email: &str) -> Option<String> {
    let contacts = answer["contacts"].as_array()?;
    contacts
        .iter()
        .find(|c| c["email"].as_str().is_none_or(|e| e.eq_ignore_ascii_case(email)))
        .and_then(|c| id_of(&c["id"]))
}

/// The contact tag named exactly `name` in a tag search answer (pure).
pub fn tag_id(answer: &serde_json::Value, name: &str) -> Option<String> {
    let tags = answer["tags"].as_array()?;
    tags.iter()
        .find(|t| t["tag"].as_str() == Some(name) && t["tagType"].as_str().is_none_or(|k| k == "contact"))
        .and_then(|t| id_of(&t["id"]))
}

/// The body creating a contact tag (pure).
pub fn new_tag(name: &str, description: &str) -> serde_json::Value {
    serde_json::json!({ "tag": { "tag": name, "tagType": "contact", "description": description } })
}

/// The body adding a tag to a contact (pure).
pub fn contact_tag(contact: &str, tag: &str) -> serde_json::Value {
    serde_json::json!({ "contactTag": { "contact": contact, "tag": tag } })
}

fn refused(what: &str, reply: &Reply) -> SendResult {
    let text = String::from_utf8_lossy(&reply.body);
    let detail = format!(
        "ActiveCampaign answered {} to {what}: {}",
        reply.status,
        text.chars().take(300).collect::<String>()
    );
    classify_status(reply.status, reply.retry_after, detail)
}

/// A 2xx answer's JSON, or what the failure means.
fn answer(what: &str, reply: Result<Reply, SendResult>) -> Result<serde_json::Value, SendResult> {
    let reply = reply?;
    if !reply.status.is_success() {
        return Err(refused(what, &reply));
    }
    Ok(serde_json::from_slice(&reply.body).unwrap_or_default())
}

impl ActiveCampaign {
    fn tag_name(&self, kind: &EventKind) -> String {
        let key = match kind {
            EventKind::Milestone(m) => crate::store::milestone_name(*m),
            EventKind::Alert(_) => "alert",
        };
        self.tags.get(key).cloned().unwrap_or_else(|| default_tag(kind))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Reply, SendResult> {
        let request = request
            .timeout(self.timeout)
            .header("Api-Token", &self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        exchange(request).await
    }

    fn query(&self, path: &str, key: &str, value: &str) -> String {
        let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        format!("{}{path}?{key}={value}", self.base_url)
    }

    /// The customer's contact, if ActiveCampaign has one.
    async fn contact(&self, client: &reqwest::Client, email: &str) -> Result<Option<String>, SendResult> {
        let reply = self.call(client.get(self.query("/api/3/contacts", "email", email))).await;
        Ok(contact_id(&answer("the contact lookup", reply)?, email))
    }

    /// The tag's id, and whether it came from the sink's memory: looked up by name, or
    /// created when the account has none.
    async fn tag(
        &self,
        client: &reqwest::Client,
        name: &str,
        kind: &EventKind,
    ) -> Result<(String, bool), SendResult> {
        let known = self.tag_ids.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        if let Some(id) = known {
            return Ok((id, true));
        }
        let reply = self.call(client.get(self.query("/api/3/tags", "search", name))).await;
        let id = match tag_id(&answer("the tag search", reply)?, name) {
            Some(id) => id,
            None => {
                let create = client
                    .post(format!("{}/api/3/tags", self.base_url))
                    .json(&new_tag(name, description(kind)));
                let created = answer("the tag's creation", self.call(create).await)?;
                id_of(&created["tag"]["id"]).ok_or_else(|| SendResult::Rejected {
                    detail: format!("ActiveCampaign created tag {name:?} without an id"),
                })?
            }
        };
        self.tag_ids.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), id.clone());
        Ok((id, false))
    }

    async fn add(
        &self,
        client: &reqwest::Client,
        contact: &str,
        tag: &str,
    ) -> Result<Option<String>, SendResult> {
        let request =
            client.post(format!("{}/api/3/contactTags", self.base_url)).json(&contact_tag(contact, tag));
        let added = answer("adding the tag", self.call(request).await)?;
        Ok(id_of(&added["contactTag"]["id"]))
    }

    async fn send(&self, client: &reqwest::Client, event: &SinkEvent) -> Result<Delivery, SendResult> {
        let Some(email) = &event.customer_email else {
            return Ok(Delivery::Skipped {
                detail: "the customer did not consent to e-mail: no contact to tag".into(),
            });
        };
        let Some(contact) = self.contact(client, email).await? else {
            return Ok(Delivery::Skipped {
                detail:
                    "ActiveCampaign has no contact with the customer's e-mail address (Doorstep creates none)"
                        .into(),
            });
        };
        let name = self.tag_name(&event.kind);
        let (mut tag, remembered) = self.tag(client, &name, &event.kind).await?;
        let mut added = self.add(client, &contact, &tag).await;
        // A remembered id refused for good: the tag may have been deleted and made again
        // in ActiveCampaign since. Look it up afresh, once.
        if remembered && matches!(added, Err(SendResult::Rejected { .. })) {
            self.tag_ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            let (fresh, _) = self.tag(client, &name, &event.kind).await?;
            if fresh != tag {
                tag = fresh;
                added = self.add(client, &contact, &tag).await;
            }
        }
        let id = added?;
        Ok(Delivery::Accepted {
            detail: format!("tag {name:?} (id {tag}) on contact {contact}"),
            vendor_id: id,
            thread: None,
        })
    }
}

impl Sink for ActiveCampaign {
    fn deliver<'a>(&'a self, client: &'a reqwest::Client, event: &'a SinkEvent) -> BoxFuture<'a, Delivery> {
        Box::pin(async move { self.send(client, event).await.unwrap_or_else(Delivery::NotTaken) })
    }

    /// A tag is a set membership: adding it again leaves the contact as it was (see the
    /// module's documentation), and the lookups change nothing.
    fn resend_safe(&self, _event: &SinkEvent) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_milestone_has_its_tag_unless_configured() {
        let m = |m| default_tag(&EventKind::Milestone(m));
        assert_eq!(m(Milestone::Delivered), "doorstep-delivered");
        assert_eq!(m(Milestone::OutForDelivery), "doorstep-out-for-delivery");
        assert_eq!(default_tag(&EventKind::Alert("carrier_returning".into())), "doorstep-alert");
        let ac = ActiveCampaign {
            base_url: "https://acme.api-us1.com".into(),
            token: "t".into(),
            tags: BTreeMap::from([("delivered".into(), "Delivered by Doorstep".into())]),
            tag_ids: Mutex::default(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(ac.tag_name(&EventKind::Milestone(Milestone::Delivered)), "Delivered by Doorstep");
        assert_eq!(ac.tag_name(&EventKind::Milestone(Milestone::Nearby)), "doorstep-nearby");
        assert_eq!(
            ac.query("/api/3/contacts", "email", "ada+parcels@example.com"),
            "https://acme.api-us1.com/api/3/contacts?email=ada%2Bparcels%40example.com"
        );
    }

    #[test]
    fn answers_are_read_for_the_exact_contact_and_tag() {
        let contacts = serde_json::json!({
            "contacts": [{ "id": "12", "email": "Ada@Example.com" }], "meta": { "total": "1" }
        });
        assert_eq!(contact_id(&contacts, "ada@example.com").as_deref(), Some("12"));
        assert_eq!(
            contact_id(&serde_json::json!({ "contacts": [], "meta": { "total": "0" } }), "a@b.c"),
            None
        );
        // The search matches substrings and template tags too.
        let tags = serde_json::json!({ "tags": [
            { "id": "3", "tag": "doorstep-delivered-late", "tagType": "contact" },
            { "id": "4", "tag": "doorstep-delivered", "tagType": "template" },
            { "id": "5", "tag": "doorstep-delivered", "tagType": "contact" },
        ]});
        assert_eq!(tag_id(&tags, "doorstep-delivered").as_deref(), Some("5"));
        assert_eq!(tag_id(&tags, "doorstep-nearby"), None);
    }

    #[test]
    fn bodies_are_those_activecampaign_documents() {
        assert_eq!(
            new_tag("doorstep-delivered", "d"),
            serde_json::json!({ "tag": { "tag": "doorstep-delivered", "tagType": "contact", "description": "d" } })
        );
        assert_eq!(
            contact_tag("12", "5"),
            serde_json::json!({ "contactTag": { "contact": "12", "tag": "5" } })
        );
    }
}
