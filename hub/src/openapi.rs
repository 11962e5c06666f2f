//! The private API as an OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations in [`crate::http`] and served at `GET /v1/openapi.json`
//! on the API listener.
//!
//! The document is the contract order systems code against, and what
//! `scripts/schemathesis.sh` attacks: every status a route can answer is in it, with the
//! error body, the bearer scheme and each operation's scope. It must describe every route
//! of [`crate::http::api_router`] with the scope the router really checks (the tests
//! below read the router's source and call each route with a key that lacks the scope),
//! and it must never be served on the public listener, which does not advertise the
//! private one.
//!
//! The document needs no key. It says what the API takes and answers, nothing about any
//! shipment, key or device, and nothing that is not already in the hub's source; tools
//! (schemathesis, client generators) fetch it before they are given a key; and only the
//! API listener serves it, which stays on loopback or a private network. Requiring a key
//! would protect nothing and make the contract harder to read.
//!
//! The wire shapes of types that live outside the HTTP layer (the proto crate's ids and
//! route manifest, the store's rows) are described here rather than by deriving
//! `ToSchema` on them, so the proto crate stays free of documentation dependencies; the
//! tests compare each shape with what serde writes, so they cannot drift.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::model::Milestone as MilestoneValue;
use crate::store::ContactChannel;

/// The name of the bearer security scheme in the document.
pub const API_KEY: &str = "api_key";

/// The document's shape: the operations of [`crate::http::api_router`].
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Doorstep hub API",
        description = "The hub's private API for order systems and staff, served on `[api] listen`. \
Every `/v1` operation but this document needs `Authorization: Bearer dsk_...` with a key made by \
`doorstep-hub apikey create --name NAME --scope SCOPE`; each operation names the scope it needs \
(`admin` grants all). No or an unknown key is 401 with `WWW-Authenticate: Bearer`, a revoked key \
401, a key without the scope 403. Every refusal is JSON `{\"error\": \"...\"}` saying what was \
wrong and what to do. Writes are audited (`doorstep-hub audit`).",
        license(name = "Apache-2.0 OR MIT"),
    ),
    paths(
        crate::http::create_shipment,
        crate::http::show_shipment,
        crate::http::dispatched,
        crate::http::revoke_links,
        crate::http::ack_alert,
        crate::http::create_route,
        crate::http::watch_device,
        crate::http::metrics,
        crate::http::support_leak,
        crate::http::healthz,
        openapi_json,
    ),
    components(schemas(crate::http::ErrorBody)),
    modifiers(&Refusals),
    tags(
        (name = "shipments", description = "Parcels, their customers and their tracking links (scopes `orders:write`, `shipments:read`)."),
        (name = "routes", description = "Vans' routes, signed by the hub (scope `routes:write`)."),
        (name = "devices", description = "Vans: an operator watching one gets its live position every few seconds for a while (scope `routes:write`)."),
        (name = "alerts", description = "Operations alerts: acknowledging one stops its escalation (scope `alerts:write`)."),
        (name = "operations", description = "Health, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// The answers every keyed operation can give besides its own, because
/// [`crate::access::authorize`] runs first and looks the key up through the writer.
#[derive(Debug)]
struct Refusals;

/// `(status, component name, description)` of [`Refusals`].
const REFUSALS: [(&str, &str, &str); 4] = [
    (
        "401",
        "Unauthorized",
        "No `Authorization: Bearer` key, a key this hub did not issue, or a revoked one. \
         `WWW-Authenticate: Bearer` says which (`error=\"invalid_token\"` for the last two).",
    ),
    ("403", "Forbidden", "The key is genuine but lacks the operation's scope; the message names it."),
    ("500", "DatabaseError", "The hub's database failed; the hub's log says why."),
    (
        "503",
        "ShuttingDown",
        "The hub is shutting down, or a route was stored but could not be queued for the broker.",
    ),
];

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("dsk_<id>_<secret>")
            .description(Some(
                "An API key from `doorstep-hub apikey create`; the scopes are listed per operation.",
            ))
            .build();
        components.add_security_scheme(API_KEY, SecurityScheme::Http(bearer));
        let error = Ref::from_schema_name(crate::http::ErrorBody::name());
        for (status, name, description) in REFUSALS {
            let mut response = ResponseBuilder::new()
                .description(description)
                .content("application/json", ContentBuilder::new().schema(Some(error.clone())).build());
            if status == "401" {
                let challenge = HeaderBuilder::new()
                    .schema(Some(String::schema()))
                    .description(Some(
                        "`Bearer realm=\"doorstep-hub\"`, with `error=\"invalid_token\"` for a bad key.",
                    ))
                    .build();
                response = response.header("WWW-Authenticate", challenge);
            }
            components.responses.insert(name.to_owned(), RefOr::T(response.build()));
        }
        for item in openapi.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten().filter(|op| needs_key(op)) {
                for (status, name, _) in REFUSALS {
                    let reference = RefOr::Ref(Ref::new(format!("#/components/responses/{name}")));
                    operation.responses.responses.entry(status.to_owned()).or_insert(reference);
                }
            }
        }
    }
}

fn needs_key(operation: &Operation) -> bool {
    let Ok(security) = serde_json::to_value(&operation.security) else { return false };
    security.as_array().is_some_and(|reqs| reqs.iter().any(|r| r.get(API_KEY).is_some()))
}

/// The document as JSON, built on first use.
pub fn document_json() -> &'static Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| match ApiDoc::openapi().to_pretty_json() {
        Ok(text) => Bytes::from(text),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            Bytes::from_static(b"{}")
        }
    })
}

/// The API's OpenAPI document
///
/// This document: OpenAPI 3.1, generated from the hub's handlers. Needs no key.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Document)),
)]
pub async fn openapi_json() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], document_json().clone()).into_response()
}

// ---- shapes ------------------------------------------------------------------------------

/// A string type with a pattern: the proto crate's ids.
macro_rules! string_shape {
    ($(#[$doc:meta])* $name:ident, $pattern:literal, $example:literal, $description:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .description(Some($description))
                    .examples([$example])
                    .into()
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

string_shape!(
    /// `doorstep_proto::TrackingNumber`.
    TrackingNumber,
    "^[A-Z0-9]{4,40}$",
    "1Z999AA10123456784",
    "A carrier tracking number: upper-case letters and digits, 4 to 40."
);
string_shape!(
    /// `doorstep_proto::FleetId`.
    FleetId,
    "^[a-z0-9][a-z0-9-]{0,63}$",
    "demo",
    "A fleet: lower-case letters, digits and `-`, starting with a letter or digit, at most 64."
);
string_shape!(
    /// `doorstep_proto::DeviceId`.
    DeviceId,
    "^[a-z0-9][a-z0-9-]{0,63}$",
    "van-1",
    "A registered device (`doorstep-hub device add`): lower-case letters, digits and `-`, at most 64."
);
string_shape!(
    /// `doorstep_proto::RouteId`.
    RouteId,
    "^[A-Za-z0-9._-]{1,64}$",
    "r-2026-11-21-van1",
    "A route id, unique per fleet and shift: letters, digits, `.`, `_` and `-`, at most 64."
);
string_shape!(
    /// `doorstep_proto::StopId`.
    StopId,
    "^[A-Za-z0-9._-]{1,64}$",
    "s1",
    "A stop id, unique within its route: letters, digits, `.`, `_` and `-`, at most 64."
);

/// Every milestone, in rank order.
const MILESTONES: [MilestoneValue; 6] = [
    MilestoneValue::Created,
    MilestoneValue::Dispatched,
    MilestoneValue::OutForDelivery,
    MilestoneValue::Nearby,
    MilestoneValue::Exception,
    MilestoneValue::Delivered,
];

/// `model::Milestone`, listed as serde writes it.
#[derive(Debug)]
pub struct Milestone;

impl PartialSchema for Milestone {
    fn schema() -> RefOr<Schema> {
        let names = MILESTONES.map(|m| serde_json::to_value(m).unwrap_or_default());
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names))
            .description(Some("The shipment's customer-facing milestone; it only moves forward."))
            .into()
    }
}

impl ToSchema for Milestone {}

/// An object with one optional property per contact channel and no other.
fn per_channel(description: &str, value: impl Fn(ContactChannel) -> RefOr<Schema>) -> RefOr<Schema> {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    for channel in ContactChannel::ALL {
        object = object.property(channel.as_str(), value(channel));
    }
    object.into()
}

/// `contacts` of a new shipment: a recipient per channel, checked as `http` checks it.
#[derive(Debug)]
pub struct Contacts;

impl PartialSchema for Contacts {
    fn schema() -> RefOr<Schema> {
        per_channel("How to reach the customer, per channel.", |channel| {
            let (pattern, description) = match channel {
                ContactChannel::Sms | ContactChannel::Whatsapp => {
                    (r"^\+[0-9]{8,15}$", "An E.164 phone number (`+15555550100`).")
                }
                ContactChannel::Email => (r"^[^@\s]+@\S*\.\S*$", "An e-mail address."),
                ContactChannel::Webhook => (r"^https?://\S*$", "The customer's own HTTPS endpoint."),
                ContactChannel::Push => (
                    r"^[!-~]{1,128}$",
                    "The customer's user id in the shipper's app, for push and in-app messages (OneSignal `external_id`).",
                ),
            };
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(crate::http::MAX_CONTACT_LEN))
                .pattern(Some(pattern))
                .description(Some(description))
                .into()
        })
    }
}

impl ToSchema for Contacts {}

/// `consent` given per channel.
#[derive(Debug)]
pub struct ConsentPerChannel;

impl PartialSchema for ConsentPerChannel {
    fn schema() -> RefOr<Schema> {
        per_channel("Consent per channel; a channel left out has none.", |_| bool::schema())
    }
}

impl ToSchema for ConsentPerChannel {}

/// `consent` of a new shipment: one answer for every channel, or one per channel.
#[derive(Debug)]
pub struct Consent;

impl PartialSchema for Consent {
    fn schema() -> RefOr<Schema> {
        let all = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some("The same answer for every channel given in `contacts`."));
        let per_channel = RefOr::Ref(Ref::from_schema_name(ConsentPerChannel::name()));
        OneOfBuilder::new()
            .item(all)
            .item(per_channel)
            .description(Some("Whether the customer agreed to messages; required with `contacts`."))
            .into()
    }
}

impl ToSchema for Consent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((ConsentPerChannel::name().into(), ConsentPerChannel::schema()));
    }
}

/// A shipment's contacts as stored: recipient and consent per channel.
#[derive(Debug)]
pub struct ContactsOnFile;

impl PartialSchema for ContactsOnFile {
    fn schema() -> RefOr<Schema> {
        per_channel("The customer's contacts per channel.", |_| {
            RefOr::Ref(Ref::from_schema_name(Contact::name()))
        })
    }
}

impl ToSchema for ContactsOnFile {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Contact::name().into(), Contact::schema()));
    }
}

/// `store::Contact`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Phone number, e-mail address or URL.
    pub recipient: String,
    /// The customer agreed to messages on this channel.
    pub consent: bool,
}

/// `store::Shipment`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Shipment {
    /// The hub's row id.
    pub id: i64,
    /// The parcel.
    #[schema(value_type = TrackingNumber)]
    pub tracking_number: String,
    /// The carrier as the order system named it.
    pub carrier: Option<String>,
    /// The order system's id.
    pub order_id: Option<String>,
    /// The order's name as the customer knows it (`#1001`), when an order system's
    /// webhook created or updated the shipment.
    pub order_name: Option<String>,
    /// Contacts per channel.
    #[schema(value_type = ContactsOnFile)]
    pub contacts: std::collections::BTreeMap<String, Contact>,
    /// The customer's locale.
    pub locale: String,
    /// The customer's IANA time zone.
    pub time_zone: String,
    /// Where the shipment is.
    #[schema(value_type = Milestone)]
    pub milestone: String,
    /// The reconciler's state as JSON text; for support, not a contract.
    pub reconcile_state: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_ms: i64,
}

/// `store::TimelineEntry`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimelineEntry {
    /// When, ms since the Unix epoch.
    pub occurred_ms: i64,
    /// `device` or the carrier's name.
    pub source: String,
    /// What happened (`dispatched`, `delivered_at_address`, `in_transit`, ...).
    pub kind: String,
    /// Details (distance, photo hash, carrier message); their fields depend on `kind`.
    pub detail: serde_json::Value,
}

/// `store::OutboxRow`: a customer message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// The message's id.
    pub id: i64,
    /// The shipment's row id.
    pub shipment_id: i64,
    /// The milestone it tells about.
    #[schema(value_type = Milestone)]
    pub milestone: String,
    /// The channel.
    #[schema(value_type = ContactChannelShape)]
    pub channel: String,
    /// Who it goes to.
    pub recipient: String,
    /// Extra text for the template.
    pub detail: Option<String>,
    /// `queued`, `sending`, `sent`, `failed`, ...
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt, ms since the Unix epoch.
    pub next_attempt_ms: i64,
    /// When it was enqueued, ms since the Unix epoch.
    pub created_ms: i64,
}

/// `store::ContactChannel`.
#[derive(Debug)]
pub struct ContactChannelShape;

impl PartialSchema for ContactChannelShape {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ContactChannel::ALL.map(ContactChannel::as_str)))
            .description(Some("A channel a customer is reached on."))
            .into()
    }
}

impl ToSchema for ContactChannelShape {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ContactChannel")
    }
}

/// `doorstep_proto::RouteManifest`: a van's stops for a shift.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteManifest {
    /// The route's id.
    #[schema(value_type = RouteId)]
    pub route_id: String,
    /// The stops in planned order: 1 to 1000, ids unique, each parcel at one stop only.
    #[schema(min_items = 1, max_items = 1000)]
    pub stops: Vec<Stop>,
}

/// `doorstep_proto::route::Stop`: where the van parks and what it hands over there.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// The stop's id, unique within the route.
    #[schema(value_type = StopId)]
    pub stop_id: String,
    /// Latitude of the delivery address, degrees (WGS 84).
    #[schema(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude of the delivery address, degrees (WGS 84).
    #[schema(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
    /// The parcels to hand over here, at most 200.
    #[schema(value_type = Vec<TrackingNumber>, max_items = 200)]
    pub tracking_numbers: Vec<String>,
    /// The approach ("nearby") radius, metres; the agent's default when left out.
    #[schema(minimum = 1, maximum = 20000)]
    pub approach_m: Option<u32>,
    /// The arrival ("at address") radius, metres; the agent's default when left out.
    #[schema(minimum = 1, maximum = 20000)]
    pub arrival_m: Option<u32>,
    /// The dwell inside the arrival zone before arrival counts, seconds.
    #[schema(minimum = 0, maximum = 3600)]
    pub dwell_s: Option<u32>,
    /// A short label for the driver's screen, at most 80 bytes; never the full address.
    #[schema(max_length = 80)]
    pub label: Option<String>,
}

/// An OpenAPI document.
#[derive(Debug)]
pub struct Document;

impl PartialSchema for Document {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .required("openapi")
            .required("info")
            .required("paths")
            .description(Some("An OpenAPI 3.1 document."))
            .into()
    }
}

impl ToSchema for Document {}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::{Value, json};

    use super::*;
    use crate::access::Scope;
    use crate::http::testing::TestApi;

    fn document() -> Value {
        serde_json::from_slice(document_json()).expect("the document is JSON")
    }

    /// `(METHOD, path)` of every `.route(...)` in `api_router`'s source.
    fn routes_in_api_router() -> BTreeSet<(String, String)> {
        let source = include_str!("http.rs");
        let start = source.find("pub fn api_router(").expect("api_router in http.rs");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("end of api_router")];
        let mut routes = BTreeSet::new();
        for (at, _) in body.match_indices(".route(") {
            let call = &body[at + ".route(".len()..];
            let path = call.trim_start().strip_prefix('"').expect("a literal path");
            let (path, rest) = path.split_once('"').expect("closing quote");
            // The method router: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find_map(|(i, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    (depth == 0).then_some(i)
                })
                .expect("balanced parentheses");
            let methods = &rest[..end];
            let mut found = false;
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = methods.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !methods.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && methods.as_bytes()[i - 1] != b'_'
                });
                if called {
                    routes.insert((method.to_ascii_uppercase(), path.to_owned()));
                    found = true;
                }
            }
            assert!(found, "no method router found for {path}: {methods}");
        }
        routes
    }

    fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
        let mut out = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                out.insert((method.to_ascii_uppercase(), path.clone()), operation.clone());
            }
        }
        out
    }

    #[test]
    fn every_route_of_the_api_router_is_documented_and_nothing_else() {
        let routed = routes_in_api_router();
        assert!(routed.len() >= 8, "the source scan found too little: {routed:?}");
        let documented: BTreeSet<_> = operations(&document()).into_keys().collect();
        assert_eq!(routed, documented, "api_router and the OpenAPI document disagree");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_bearer_scheme_and_the_error_body() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["components"]["securitySchemes"][API_KEY]["scheme"], "bearer");
        assert_eq!(doc["components"]["schemas"]["Error"]["required"], json!(["error"]));
        for ((method, path), operation) in operations(&doc) {
            let keyed = operation.get("security").is_some();
            assert_eq!(keyed, path != "/healthz" && path != "/v1/openapi.json", "{method} {path}");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} has no success");
            for (status, response) in responses {
                assert!(response.get("description").is_some() || response.get("$ref").is_some());
                if status.starts_with('4') && response.get("$ref").is_none() {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/Error", "{method} {path} {status}");
                }
            }
            if keyed {
                for status in ["401", "403", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
            }
        }
    }

    /// Every scope that is neither `needed` nor `admin`.
    fn other_scopes(needed: &str) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| s.as_str() != needed && *s != Scope::Admin).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_operation_names_the_scope_the_router_checks() {
        let api = TestApi::start().await;
        for ((method, path), operation) in operations(&document()) {
            let path = path.replace("{tracking}", "1Z999AA10123456784").replace("{device}", "van-1");
            let Some(security) = operation.get("security") else {
                let (status, _) = api.call(&method, &path, None, "").await;
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} is documented without a key");
                continue;
            };
            let scopes = security[0][API_KEY].as_array().expect("scopes");
            assert_eq!(scopes.len(), 1, "{method} {path}");
            let needed = scopes[0].as_str().expect("scope name");
            let (status, _) = api.call(&method, &path, None, "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a key");
            let others = api.key(&other_scopes(needed));
            let (status, body) = api.call(&method, &path, Some(&others), "").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} with every scope but {needed}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains(needed)), "{body}");
            let scope = Scope::parse(needed).expect("a known scope");
            let (status, _) = api.call(&method, &path, Some(&api.key(&[scope])), "").await;
            assert_ne!(status, StatusCode::FORBIDDEN, "{method} {path} with {needed}");
        }
        api.stop().await;
    }

    /// The property names of schema `name`.
    fn properties(doc: &Value, name: &str) -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has properties"))
            .keys()
            .cloned()
            .collect()
    }

    fn keys(value: &impl Serialize) -> BTreeSet<String> {
        serde_json::to_value(value)
            .expect("serializes")
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn the_shapes_have_the_fields_the_hub_writes() {
        use crate::store;
        let doc = document();
        let tracking = doorstep_proto::TrackingNumber::new("1Z999AA10123456784").expect("valid");
        let contact = store::Contact { recipient: "+15555550100".into(), consent: true };
        let shipment = store::Shipment {
            id: 1,
            tracking_number: tracking.clone(),
            carrier: None,
            order_id: None,
            order_name: None,
            contacts: BTreeMap::from([(ContactChannel::Sms, contact.clone())]),
            locale: "en".into(),
            time_zone: "UTC".into(),
            milestone: MilestoneValue::Created,
            reconcile_state: None,
            created_ms: 0,
        };
        assert_eq!(keys(&shipment), properties(&doc, "Shipment"));
        assert_eq!(keys(&contact), properties(&doc, "Contact"));
        let entry = store::TimelineEntry {
            occurred_ms: 0,
            source: "device".into(),
            kind: "nearby".into(),
            detail: json!({}),
        };
        assert_eq!(keys(&entry), properties(&doc, "TimelineEntry"));
        let row = store::OutboxRow {
            id: 1,
            shipment_id: 1,
            milestone: "created".into(),
            channel: "sms".into(),
            recipient: "+15555550100".into(),
            detail: None,
            status: crate::store::OutboxStatus::Queued,
            attempts: 0,
            next_attempt_ms: 0,
            created_ms: 0,
        };
        assert_eq!(keys(&row), properties(&doc, "Notification"));
        let stop = doorstep_proto::route::Stop {
            stop_id: doorstep_proto::StopId::new("s1").expect("valid"),
            lat: 47.1,
            lon: 8.5,
            tracking_numbers: vec![tracking],
            approach_m: Some(400),
            arrival_m: Some(60),
            dwell_s: Some(20),
            label: Some("back door".into()),
        };
        assert_eq!(keys(&stop), properties(&doc, "Stop"));
        let route = doorstep_proto::RouteManifest {
            route_id: doorstep_proto::RouteId::new("r1").expect("valid"),
            stops: vec![stop],
        };
        assert_eq!(keys(&route), properties(&doc, "RouteManifest"));
        let channels: BTreeSet<_> = ContactChannel::ALL.map(|c| c.as_str().to_owned()).into();
        for schema in ["Contacts", "ConsentPerChannel", "ContactsOnFile"] {
            assert_eq!(properties(&doc, schema), channels, "{schema}");
        }
    }

    #[test]
    fn milestones_are_listed_as_serde_writes_them() {
        // Exhaustive: a new milestone fails to compile here until MILESTONES lists it.
        let rank = |m: MilestoneValue| match m {
            MilestoneValue::Created => 0,
            MilestoneValue::Dispatched => 1,
            MilestoneValue::OutForDelivery => 2,
            MilestoneValue::Nearby => 3,
            MilestoneValue::Exception => 4,
            MilestoneValue::Delivered => 5,
        };
        for (i, m) in MILESTONES.into_iter().enumerate() {
            assert_eq!(rank(m), i);
        }
        let listed = &document()["components"]["schemas"]["Milestone"]["enum"];
        assert_eq!(
            listed,
            &json!(["created", "dispatched", "out_for_delivery", "nearby", "exception", "delivered"])
        );
    }
}
