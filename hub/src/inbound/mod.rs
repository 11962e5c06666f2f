//! Everything signed that reaches the hub from outside a van: carriers' tracking updates
//! (webhooks, and polled answers), order systems' webhooks (Shopify, WooCommerce) and
//! helpdesks' new tickets (Zendesk, Freshdesk: the support contacts of the leak report).
//!
//! Every source goes the same way, whatever it is:
//!
//! 1. **Verify** on the raw body, exactly as received, with the source's own scheme
//!    ([`Source::receive`]); nothing is parsed before that succeeds (invariant 5).
//! 2. **Parse** into one [`Inbound`]: a carrier status ([`CarrierEvent`]), an order
//!    event ([`OrderEvent`]), a support contact ([`SupportContact`]), or nothing Doorstep
//!    acts on.
//! 3. **Dedupe** on `(source, delivery id)`: a carrier's event key, an order system's
//!    delivery id. A retry changes nothing; a stale retry (older than what the source
//!    already said about the same order object) is kept for the record, not applied.
//! 4. **Apply** through the same code the API uses ([`apply`]), inside one writer
//!    transaction, so storage, reconciliation and the messages it enqueues commit together.
//!
//! A new source is one module implementing [`Source`] plus one line in [`Sources::build`].

pub mod carriers;
pub mod helpdesks;
pub mod orders;
pub mod shopify;
pub mod woocommerce;

use std::collections::BTreeMap;
use std::fmt;

use crate::carrier::{Headers, WebhookError};
use crate::config::{CarrierSecrets, OrderSettings, SupportSettings};
use crate::ingest::{ApplyError, Domain, Effects, apply_to_shipment};
use crate::model::CarrierEvent;
use crate::reconcile::Input;
use crate::store::StoreTx;

pub use carriers::CarrierVerifiers;
pub use helpdesks::SupportContact;
pub use orders::{OrderDefaults, OrderEvent, Parcel, StatusSignal};

/// One signed source of webhooks, reached at `/webhooks/{slug}` on the public listener.
pub trait Source: Send + Sync + fmt::Debug {
    /// The path segment, and the `source` in dedupe keys, logs and counters.
    fn slug(&self) -> &'static str;

    /// Verifies the request on its raw `body`, then parses it. `now_ms` is only used by
    /// schemes with a signed timestamp.
    fn receive(&self, headers: &dyn Headers, body: &[u8], now_ms: i64) -> Result<Received, Refused>;
}

/// A verified delivery from a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The source's id for this delivery: the same on every retry of it.
    pub delivery_id: String,
    /// When the source says it triggered the delivery (ms since the Unix epoch), for
    /// sources that resend old payloads; a delivery older than one already applied to the
    /// same object is stale.
    pub triggered_ms: Option<i64>,
    /// What it says.
    pub item: Inbound,
}

/// What a verified delivery says.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A carrier's current status for one parcel.
    Carrier(CarrierEvent),
    /// An order system's news about one order: parcels shipped, with whom to tell.
    Order(OrderEvent),
    /// A customer's new helpdesk ticket that may name parcels.
    SupportContact(SupportContact),
    /// Genuine, but nothing Doorstep acts on (another topic, an order not shipped yet);
    /// the label says why.
    Ignored(&'static str),
}

/// Why a delivery was refused: an authentication failure (401: not from the source at
/// all) or a body the source should not have sent (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// A short snake_case label for counters and logs.
    pub reason: &'static str,
    /// The request must be treated as not coming from the source.
    pub authentication: bool,
    /// What was wrong, for the sender.
    pub message: String,
}

impl Refused {
    /// A verified body Doorstep cannot use.
    pub fn malformed(reason: &'static str, message: impl Into<String>) -> Self {
        Refused { reason, authentication: false, message: message.into() }
    }
}

impl From<WebhookError> for Refused {
    fn from(e: WebhookError) -> Self {
        Refused { reason: e.reason(), authentication: e.is_authentication_failure(), message: e.to_string() }
    }
}

/// Why the configured sources could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{section}: {problem}")]
pub struct SourceError {
    /// The config section.
    pub section: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// The one non-blank value of header `name`; `None` when it is absent, blank or
/// repeated (a proxy or an attacker can append a copy: which one counts is not guessed).
pub(crate) fn one_header<'a>(headers: &'a dyn Headers, name: &str) -> Option<&'a str> {
    match headers.values(name).as_slice() {
        [value] => crate::carrier::non_blank(Some(value)),
        _ => None,
    }
}

/// A shared webhook secret as an HMAC-SHA256 key (Shopify's app client secret,
/// WooCommerce's webhook secret). Never printed.
pub struct SharedSecret(ring::hmac::Key);

impl SharedSecret {
    /// The key for `secret`, refused when empty (an empty key accepts what anyone signs
    /// with one), naming the config `section`.
    pub fn new(section: &'static str, secret: &str) -> Result<Self, SourceError> {
        if secret.is_empty() {
            return Err(SourceError { section, problem: "the secret is empty".into() });
        }
        Ok(SharedSecret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes())))
    }

    /// Checks the base64 HMAC-SHA256 of the raw `body` in `header`.
    pub fn verify(&self, headers: &dyn Headers, header: &'static str, body: &[u8]) -> Result<(), Refused> {
        Ok(crate::carrier::verify_base64_hmac(headers, header, &self.0, body)?)
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<secret>)")
    }
}

/// The sources this hub takes webhooks from, by slug, with what order events need.
#[derive(Debug, Default)]
pub struct Sources {
    by_slug: BTreeMap<&'static str, Box<dyn Source>>,
    /// Locale and time zone for shipments an order system creates without them.
    pub defaults: OrderDefaults,
}

/// Every source the hub knows, configured or not, for messages that list them.
pub const SLUGS: [&str; 7] =
    ["aftership", "easypost", "freshdesk", "shipengine", "shopify", "woocommerce", "zendesk"];

impl Sources {
    /// The sources the configuration has secrets for: one line per kind of source.
    pub fn build(
        carriers: &CarrierSecrets,
        orders: &OrderSettings,
        support: &SupportSettings,
    ) -> Result<Self, SourceError> {
        let mut sources = Sources::from(CarrierVerifiers::from_secrets(carriers)?);
        sources.defaults =
            OrderDefaults { locale: orders.locale.clone(), time_zone: orders.time_zone.clone() };
        if let Some(secret) = &orders.shopify_secret {
            sources.add(Box::new(shopify::Shopify::new(secret)?));
        }
        if let Some(secret) = &orders.woocommerce_secret {
            sources.add(Box::new(woocommerce::WooCommerce::new(secret)?));
        }
        if let Some(secret) = &support.zendesk_secret {
            sources.add(Box::new(helpdesks::Zendesk::new(secret, &support.ignore_tag)?));
        }
        if let Some((header, secret)) = &support.freshdesk {
            sources.add(Box::new(helpdesks::Freshdesk::new(header, secret, &support.ignore_tag)?));
        }
        Ok(sources)
    }

    /// Adds (or replaces) a source.
    pub fn add(&mut self, source: Box<dyn Source>) {
        self.by_slug.insert(source.slug(), source);
    }

    /// The configured source at `slug`.
    pub fn get(&self, slug: &str) -> Option<&dyn Source> {
        self.by_slug.get(slug).map(|s| s.as_ref())
    }
}

impl From<CarrierVerifiers> for Sources {
    fn from(carriers: CarrierVerifiers) -> Self {
        let mut sources = Sources::default();
        for verifier in carriers.into_iter() {
            sources.add(Box::new(verifier));
        }
        sources
    }
}

/// What became of one inbound delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and applied to its shipment(s).
    Stored,
    /// Stored; no shipment has this tracking number (yet).
    Unmatched,
    /// The same delivery was taken in before (a retry): nothing changed.
    Duplicate,
    /// Older than what the source already told us about the same object: kept for the
    /// record, not applied.
    Stale,
    /// Genuine, but carries nothing Doorstep acts on (another topic or status).
    Ignored,
}

impl Outcome {
    /// The snake_case label for replies, counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Unmatched => "unmatched",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
        }
    }
}

/// Applies one verified delivery inside `tx`. The caller commits unless the outcome is
/// [`Outcome::Duplicate`], and records the effects after the commit.
pub fn apply(
    tx: &StoreTx<'_>,
    domain: &Domain,
    defaults: &OrderDefaults,
    source: &'static str,
    received: Received,
    raw: &[u8],
    now: i64,
) -> Result<(Outcome, Effects), ApplyError> {
    match received.item {
        Inbound::Carrier(event) => apply_carrier(tx, domain, event, raw, now),
        Inbound::Order(order) => {
            let delivery = orders::Delivery {
                source,
                delivery_id: &received.delivery_id,
                triggered_ms: received.triggered_ms.unwrap_or(now),
                raw,
            };
            orders::apply_order(tx, domain, defaults, &delivery, &order, now)
        }
        Inbound::SupportContact(contact) => apply_support_contact(tx, source, &contact, now),
        Inbound::Ignored(_) => Ok((Outcome::Ignored, Effects::default())),
    }
}

/// Records a helpdesk ticket against each shipment it names, inside `tx`: once per
/// (helpdesk, ticket, shipment), opened no later than `now` (a helpdesk's clock ahead of
/// ours does not make a contact come after a message it preceded).
fn apply_support_contact(
    tx: &StoreTx<'_>,
    source: &'static str,
    contact: &SupportContact,
    now: i64,
) -> Result<(Outcome, Effects), ApplyError> {
    let opened = contact.opened_ms.map_or(now, |t| t.min(now));
    let (mut matched, mut new) = (0, 0);
    for tracking in &contact.candidates {
        let Some(shipment) = tx.shipment_by_tracking(tracking)? else { continue };
        matched += 1;
        if tx.insert_support_contact(source, &contact.ticket, shipment.id, opened, now)? {
            new += 1;
            let detail = serde_json::json!({ "helpdesk": source, "ticket": contact.ticket });
            tx.add_timeline(shipment.id, opened, source, "support_contact", &detail)?;
        }
    }
    let outcome = match (matched, new) {
        (0, _) => Outcome::Unmatched,
        (_, 0) => Outcome::Duplicate,
        _ => Outcome::Stored,
    };
    Ok((outcome, Effects::default()))
}

/// Takes one verified carrier event in, inside `tx`: stored once per `(carrier, event
/// key)` with its raw body, then applied to its shipment. The caller commits when the
/// outcome is not [`Outcome::Duplicate`] and records the effects after the commit.
pub fn apply_carrier(
    tx: &StoreTx<'_>,
    domain: &Domain,
    event: CarrierEvent,
    raw: &[u8],
    now: i64,
) -> Result<(Outcome, Effects), ApplyError> {
    let event = CarrierEvent { received_ms: Some(now), ..event };
    let normalized = serde_json::to_value(&event).unwrap_or(serde_json::Value::Null);
    let new = tx.insert_carrier_event(
        crate::carrier::carrier_slug(event.carrier),
        &event.event_key,
        event.tracking_number.as_str(),
        raw,
        &normalized,
        event.occurred_ms,
        now,
    )?;
    if !new {
        return Ok((Outcome::Duplicate, Effects::default()));
    }
    match tx.shipment_by_tracking(&event.tracking_number)? {
        Some(shipment) => {
            let effects = apply_to_shipment(tx, domain, &shipment, &Input::Carrier(event), now)?;
            Ok((Outcome::Stored, effects))
        }
        None => Ok((Outcome::Unmatched, Effects::default())),
    }
}
