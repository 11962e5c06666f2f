//! Who may use the private API: API keys with scopes, checked on every request, and an
//! audit line for every write.
//!
//! A key is `dsk_<id>_<secret>`: `id` is 12 hex characters that name the key in the
//! database (not secret: it lets the hub find the key without comparing against all of
//! them), `secret` is 32 random bytes in base64url (256 bits). The hub stores the id and
//! the SHA-256 of the whole token, never the token; `doorstep-hub apikey create` prints it
//! once. A presented token is hashed and compared with the stored digest in constant time,
//! and an unknown id costs the same comparison against a dummy, so the answer's timing
//! does not tell which ids exist.
//!
//! Every route of the private listener names the [`Scope`] it needs ([`require`]): no
//! or an unknown token is 401 with `WWW-Authenticate: Bearer`, a revoked key 401, a key
//! without the scope 403. Requests other than GET and HEAD leave an audit line (key,
//! method, path, shipment or route, time, status, outcome), refused ones included; see
//! `doorstep-hub audit`.
//!
//! The operations console signs browsers in with the same keys: [`check_token`] judges a
//! pasted key as the middleware judges a bearer token, and [`recheck_key`] checks a signed-in
//! session's key again by its id on every page (see `console`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use serde_json::json;

use crate::ingest::{Writer, now_ms};
use crate::metrics::Metrics;
use crate::notify::token::constant_time_eq;
use crate::store::{ApiKeyRecord, AuditEntry, StoreError};

/// Every token starts with this, so secret scanners and people recognise it.
pub const TOKEN_PREFIX: &str = "dsk_";
/// Random bytes in a key's public id.
const ID_BYTES: usize = 6;
/// Random bytes in a key's secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Longest name an operator may give a key.
pub const MAX_NAME_LEN: usize = 64;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Create shipments, mark them dispatched, withdraw their tracking links.
    OrdersWrite,
    /// Post a van's route (the hub signs it and the van drives it).
    RoutesWrite,
    /// Read a shipment with its contacts, timeline and notifications.
    ShipmentsRead,
    /// Read `/metrics`.
    MetricsRead,
    /// Acknowledge operations alerts (stops their escalation).
    AlertsWrite,
    /// Sign in to the operations console (`/console`) in a browser: read alerts,
    /// shipments with their contacts masked, the fleet and the numbers; acknowledge and
    /// resolve alerts.
    Console,
    /// Everything above.
    Admin,
}

impl Scope {
    /// Every scope, in the order `--help` lists them.
    pub const ALL: [Scope; 7] = [
        Scope::OrdersWrite,
        Scope::RoutesWrite,
        Scope::ShipmentsRead,
        Scope::MetricsRead,
        Scope::AlertsWrite,
        Scope::Console,
        Scope::Admin,
    ];

    /// The scope's name (`orders:write`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::OrdersWrite => "orders:write",
            Scope::RoutesWrite => "routes:write",
            Scope::ShipmentsRead => "shipments:read",
            Scope::MetricsRead => "metrics:read",
            Scope::AlertsWrite => "alerts:write",
            Scope::Console => "console",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether a key holding `granted` (space separated, as stored) may do what needs
    /// `self`.
    pub fn granted_by(self, granted: &str) -> bool {
        granted.split_ascii_whitespace().filter_map(Scope::parse).any(|g| g == self || g == Scope::Admin)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new key: the token to hand over once, and what the hub stores.
#[derive(Debug)]
pub struct IssuedKey {
    /// `dsk_<id>_<secret>`: shown once, never stored.
    pub token: String,
    /// The public id.
    pub key_id: String,
    /// SHA-256 of the token.
    pub digest: Vec<u8>,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// The name is empty, too long or has characters other than letters, digits, `-`,
    /// `_` and `.`.
    #[error("key name {0:?} must be 1 to 64 letters, digits, '-', '_' or '.'")]
    Name(String),
    /// No scope given.
    #[error("give at least one --scope ({})", Scope::ALL.map(Scope::as_str).join(", "))]
    NoScope,
}

/// Makes a new key.
pub fn issue(rng: &dyn SecureRandom) -> Result<IssuedKey, KeyError> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut id).map_err(|_| KeyError::Random)?;
    rng.fill(&mut secret).map_err(|_| KeyError::Random)?;
    let key_id = hex::encode(id);
    let token = format!("{TOKEN_PREFIX}{key_id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let digest = digest(&token);
    Ok(IssuedKey { token, key_id, digest })
}

/// Checks an operator's key name.
pub fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(()) } else { Err(KeyError::Name(name.to_owned())) }
}

/// Scopes as stored: sorted, unique, space separated.
pub fn scopes_text(scopes: &[Scope]) -> Result<String, KeyError> {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(KeyError::NoScope);
    }
    Ok(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
}

/// SHA-256 of a token.
fn digest(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().to_vec()
}

/// The public id of a well-formed token.
fn key_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit());
    // 43 characters of base64url without padding hold 32 bytes.
    let secret_ok = secret.len() == 43 && URL_SAFE_NO_PAD.decode(secret).is_ok();
    (id_ok && secret_ok).then_some(id)
}

/// What the key check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is malformed, unknown, or does not match its digest.
    Unknown,
    /// A genuine key that was revoked.
    Revoked(String),
    /// A genuine key without the scope.
    Forbidden(String),
    /// Go ahead.
    Allowed(String),
}

/// Judges `token` against the stored key it names (`stored`), for a route needing `scope`.
fn judge(token: &str, stored: Option<&ApiKeyRecord>, scope: Scope) -> Verdict {
    // A dummy digest for unknown ids: the comparison below runs either way.
    const DUMMY: [u8; 32] = [0; 32];
    let presented = digest(token);
    let expected = stored.map_or(&DUMMY[..], |k| k.digest.as_slice());
    let matches = constant_time_eq(&presented, expected);
    match stored {
        Some(key) if matches => {
            if key.revoked_ms.is_some() {
                Verdict::Revoked(key.name.clone())
            } else if scope.granted_by(&key.scopes) {
                Verdict::Allowed(key.name.clone())
            } else {
                Verdict::Forbidden(key.name.clone())
            }
        }
        _ => Verdict::Unknown,
    }
}

/// The authenticated caller, for handlers that want its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// What a write was about, set by a handler on its response for the audit line
/// (`shipment 1Z...`, `route acme/van-1/r-42`). Without it the path says enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSubject(pub String);

/// What the guard needs.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Key lookups and audit lines go through the single writer.
    pub writer: Writer,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// What one route needs: the guard and its scope. Used as
/// `route_layer(middleware::from_fn_with_state(Required::new(&guard, scope), authorize))`.
#[derive(Debug, Clone)]
pub struct Required {
    guard: Guard,
    scope: Scope,
}

impl Required {
    /// Routes behind this need `scope`.
    pub fn new(guard: &Guard, scope: Scope) -> Self {
        Self { guard: guard.clone(), scope }
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Why a key could not be checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The database failed (logged).
    #[error("database error; see the hub's log")]
    Database,
    /// The writer is gone.
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// What checking a key found, for the console's sign-in and its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// Malformed, unknown, or not matching its digest.
    Unknown,
    /// A genuine key that was revoked (its name).
    Revoked(String),
    /// A genuine key without the scope (its name).
    Forbidden(String),
    /// Go ahead: the key's name and public id.
    Allowed {
        /// The operator's name for the key.
        name: String,
        /// The key's public id (what a session remembers instead of the token).
        key_id: String,
    },
}

/// Looks a presented token up and judges it for `scope`, noting its use.
async fn lookup(guard: &Guard, token: &str, scope: Scope) -> Result<Verdict, CheckError> {
    let Some(id) = key_id_of(token).map(str::to_owned) else { return Ok(judge(token, None, scope)) };
    let looked_up = guard
        .writer
        .call(move |ctx| -> Result<Option<ApiKeyRecord>, StoreError> {
            let key = ctx.store.api_key_by_id(&id)?;
            if let Some(key) = &key
                && key.revoked_ms.is_none()
            {
                ctx.store.touch_api_key(&key.name, now_ms())?;
            }
            Ok(key)
        })
        .await;
    match looked_up {
        Ok(Ok(stored)) => Ok(judge(token, stored.as_ref(), scope)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "database error while checking an API key");
            Err(CheckError::Database)
        }
        Err(_) => Err(CheckError::ShuttingDown),
    }
}

/// Checks a token pasted into a form exactly as the middleware checks a bearer token
/// (digest compared in constant time, an unknown id costing the same), for `scope`.
pub async fn check_token(guard: &Guard, token: &str, scope: Scope) -> Result<KeyCheck, CheckError> {
    let token = token.trim();
    Ok(match lookup(guard, token, scope).await? {
        Verdict::Missing | Verdict::Unknown => KeyCheck::Unknown,
        Verdict::Revoked(name) => KeyCheck::Revoked(name),
        Verdict::Forbidden(name) => KeyCheck::Forbidden(name),
        Verdict::Allowed(name) => {
            KeyCheck::Allowed { name, key_id: key_id_of(token).unwrap_or_default().to_owned() }
        }
    })
}

/// Checks again, by its public id, a key that was shown earlier: revoked since, or its
/// scope taken away, is refused from the next request on.
pub async fn recheck_key(guard: &Guard, key_id: &str, scope: Scope) -> Result<KeyCheck, CheckError> {
    let id = key_id.to_owned();
    let stored = match guard.writer.call(move |ctx| ctx.store.api_key_by_id(&id)).await {
        Ok(Ok(stored)) => stored,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "database error while checking an API key");
            return Err(CheckError::Database);
        }
        Err(_) => return Err(CheckError::ShuttingDown),
    };
    Ok(match stored {
        None => KeyCheck::Unknown,
        Some(key) if key.revoked_ms.is_some() => KeyCheck::Revoked(key.name),
        Some(key) if !scope.granted_by(&key.scopes) => KeyCheck::Forbidden(key.name),
        Some(key) => KeyCheck::Allowed { name: key.name, key_id: key.key_id },
    })
}

/// The middleware: checks the bearer key against the route's scope; audits writes.
pub async fn authorize(State(required): State<Required>, mut request: Request, next: Next) -> Response {
    let Required { guard, scope } = required;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let verdict = match bearer(&request).map(str::to_owned) {
        None => Verdict::Missing,
        Some(token) => match lookup(&guard, &token, scope).await {
            Ok(verdict) => verdict,
            Err(CheckError::Database) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "database error; see the hub's log");
            }
            Err(CheckError::ShuttingDown) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down");
            }
        },
    };
    let writes = !matches!(method, Method::GET | Method::HEAD);
    let (outcome, key_name, refusal) = match verdict {
        Verdict::Allowed(name) => ("allowed", Some(name), None),
        Verdict::Missing => (
            "unauthenticated",
            None,
            Some(unauthorized(
                None,
                "this is the hub's private API: send `Authorization: Bearer <key>` with a key from `doorstep-hub apikey create`",
            )),
        ),
        Verdict::Unknown => (
            "unauthenticated",
            None,
            Some(unauthorized(
                Some("invalid_token"),
                "the API key is not one this hub issued (see `doorstep-hub apikey list`)",
            )),
        ),
        Verdict::Revoked(name) => {
            let message = format!("the API key {name:?} was revoked; ask for a new one");
            ("revoked", Some(name), Some(unauthorized(Some("invalid_token"), &message)))
        }
        Verdict::Forbidden(name) => {
            let message = format!(
                "the API key {name:?} lacks the scope {scope}; create a key with `doorstep-hub apikey create --name NAME --scope {scope}`"
            );
            ("forbidden", Some(name), Some(error(StatusCode::FORBIDDEN, &message)))
        }
    };
    guard.metrics.api_request(outcome, scope.as_str());
    let response = match refusal {
        Some(refusal) => {
            tracing::warn!(method = %method, path, outcome, key = key_name.as_deref().unwrap_or("-"), "API request refused");
            refusal
        }
        None => {
            if let Some(name) = &key_name {
                request.extensions_mut().insert(Caller(name.clone()));
            }
            next.run(request).await
        }
    };
    if writes {
        let status = response.status();
        let subject = response.extensions().get::<AuditSubject>().map(|s| s.0.clone());
        audit(&guard, key_name, &method, &path, outcome, status, subject).await;
    }
    response
}

/// Writes one audit line; `outcome` is `allowed` (then the status decides `ok` or not)
/// or why the request was refused.
pub(crate) async fn audit(
    guard: &Guard,
    key_name: Option<String>,
    method: &Method,
    path: &str,
    outcome: &str,
    status: StatusCode,
    subject: Option<String>,
) {
    let subject = subject.or_else(|| subject_from_path(path));
    let outcome = match outcome {
        "allowed" if status.is_success() => "ok".to_owned(),
        "allowed" => status.canonical_reason().unwrap_or("error").to_ascii_lowercase().replace(' ', "_"),
        refused => refused.to_owned(),
    };
    let entry = AuditEntry {
        at_ms: now_ms(),
        key_name,
        method: method.as_str().to_owned(),
        path: truncate(path, 512),
        subject,
        status: status.as_u16(),
        outcome,
    };
    match guard.writer.call(move |ctx| ctx.store.audit(&entry)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not write the audit log"),
        Err(_) => tracing::error!("could not write the audit log: the hub is shutting down"),
    }
}

/// `shipment <tracking>` for paths under `/v1/shipments/<tracking>`.
fn subject_from_path(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("/v1/alerts/") {
        let id = rest.split('/').next().filter(|t| !t.is_empty())?;
        return Some(format!("alert {}", truncate(id, 20)));
    }
    let rest = path.strip_prefix("/v1/shipments/")?;
    let tracking = rest.split('/').next().filter(|t| !t.is_empty())?;
    Some(format!("shipment {}", truncate(tracking, 64)))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn unauthorized(error_code: Option<&str>, message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    let challenge = match error_code {
        None => r#"Bearer realm="doorstep-hub""#.to_owned(),
        Some(code) => format!(r#"Bearer realm="doorstep-hub", error="{code}""#),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// An empty 404, for private paths asked of the public listener: they do not exist
/// there, and the answer does not say that they exist elsewhere.
pub fn not_found() -> Response {
    let mut response = Response::new(Body::from("not found\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(token: &str, scopes: &str, revoked: bool) -> ApiKeyRecord {
        ApiKeyRecord {
            name: "orders".into(),
            key_id: key_id_of(token).expect("id").to_owned(),
            digest: digest(token),
            scopes: scopes.into(),
            created_ms: 0,
            last_used_ms: None,
            revoked_ms: revoked.then_some(1),
        }
    }

    #[test]
    fn issued_tokens_are_prefixed_long_and_unique() {
        let rng = ring::rand::SystemRandom::new();
        let a = issue(&rng).expect("issue");
        let b = issue(&rng).expect("issue");
        assert!(a.token.starts_with("dsk_"));
        assert_eq!(key_id_of(&a.token), Some(a.key_id.as_str()));
        assert_eq!(a.token.len(), 4 + 12 + 1 + 43);
        assert_ne!(a.token, b.token);
        assert_ne!(a.key_id, b.key_id);
        assert_eq!(a.digest.len(), 32);
    }

    #[test]
    fn the_verdict_follows_digest_revocation_and_scope() {
        let rng = ring::rand::SystemRandom::new();
        let key = issue(&rng).expect("issue");
        let record = stored(&key.token, "orders:write shipments:read", false);
        assert_eq!(judge(&key.token, Some(&record), Scope::OrdersWrite), Verdict::Allowed("orders".into()));
        assert_eq!(judge(&key.token, Some(&record), Scope::RoutesWrite), Verdict::Forbidden("orders".into()));
        // Right id, wrong secret.
        let forged = format!("dsk_{}_{}", key.key_id, URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(judge(&forged, Some(&record), Scope::OrdersWrite), Verdict::Unknown);
        assert_eq!(judge(&key.token, None, Scope::OrdersWrite), Verdict::Unknown);
        let revoked = stored(&key.token, "admin", true);
        assert_eq!(judge(&key.token, Some(&revoked), Scope::OrdersWrite), Verdict::Revoked("orders".into()));
        let admin = stored(&key.token, "admin", false);
        for scope in Scope::ALL {
            assert_eq!(judge(&key.token, Some(&admin), scope), Verdict::Allowed("orders".into()));
        }
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        for bad in [
            "",
            "dsk_",
            "dsk_abc_def",
            "Bearer x",
            "dsk_zzzzzzzzzzzz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(key_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_and_scopes_are_checked() {
        assert!(check_name("shopify-orders.eu_1").is_ok());
        for bad in ["", "a b", "ä", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            scopes_text(&[Scope::ShipmentsRead, Scope::OrdersWrite, Scope::OrdersWrite]).expect("scopes"),
            "orders:write shipments:read"
        );
        assert!(scopes_text(&[]).is_err());
        assert!(Scope::MetricsRead.granted_by("admin"));
        assert!(!Scope::MetricsRead.granted_by("orders:write bogus"));
    }
}
