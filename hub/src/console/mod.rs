//! The operations console: server-rendered HTML pages on the private listener for the
//! people who run Doorstep day to day. Alerts to acknowledge and resolve, a shipment with
//! every signal, proof and message, the fleet's vans, and the numbers of the last two
//! weeks. No JavaScript and no front-end build: templates (`hub/templates/console/`,
//! minijinja, HTML-escaped by default) and a few lines of CSS in the base layout.
//!
//! Sign-in uses the API keys operators already have: a key with the `console` scope (or
//! `admin`) pasted into `/console/login` starts a session (see [`session`]); every other
//! page needs one, and checks the key again on each request. Writes are POST forms that
//! carry the session's CSRF token, on top of the `SameSite=Strict` cookie, and each
//! leaves an audit line like the API's writes (`doorstep-hub audit`).
//!
//! The console never shows a customer's whole phone number or e-mail address: contacts,
//! recipients and free text quoting them are masked (`mask`), on screen as in logs. It
//! holds no SQL: reads and writes go through the store on the writer's thread.

mod fleet;
mod numbers;
mod session;
mod shipments;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use minijinja::Environment;
use ring::rand::SystemRandom;
use serde::Serialize;

pub use session::{COOKIE, MAX_SESSIONS, SESSION_TTL_MS, Session, Sessions};

use crate::access::{self, CheckError, Guard, KeyCheck, Scope};
use crate::http::AppState;
use crate::ingest::{Writer, WriterGone, now_ms};
use crate::store::{Ack, AlertState, AuditEntry, ConsoleAlert, Resolve, StoreError};

/// Largest form body the console takes, bytes (a pasted key and a token fit many times).
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Most alerts listed per state.
pub const ALERTS_PER_PAGE: usize = 200;

/// How the console's cookie is set, and where the fleet page's map tiles come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// Mark the session cookie `Secure` on every sign-in, not only when the request
    /// says it came over TLS (`X-Forwarded-Proto: https` from the TLS proxy in front of
    /// the private listener).
    pub always_secure_cookie: bool,
    /// The tracking page's tile server (`[notify.brand] map_tiles`): with it, the fleet
    /// page shows each van's last position on a map tile, and the console's
    /// Content-Security-Policy lets images come from its origin. Without it, positions
    /// are a table of rounded coordinates only.
    pub map_tiles: Option<crate::notify::page::map::TileSource>,
}

/// What the console's handlers share.
#[derive(Debug, Clone)]
struct Console {
    writer: Writer,
    guard: Guard,
    sessions: Arc<Sessions>,
    rng: Arc<SystemRandom>,
    options: ConsoleOptions,
}

/// The console's routes, for the private listener (`http::api_router` merges them).
pub fn router(state: &AppState) -> Router {
    router_with(state, ConsoleOptions::default())
}

/// [`router`] with options.
pub fn router_with(state: &AppState, options: ConsoleOptions) -> Router {
    let csp = content_security_policy(options.map_tiles.as_ref());
    let console = Console {
        writer: state.writer.clone(),
        guard: Guard { writer: state.writer.clone(), metrics: Arc::clone(&state.metrics) },
        sessions: Arc::new(Sessions::default()),
        rng: Arc::new(SystemRandom::new()),
        options,
    };
    Router::new()
        .route("/console", get(alerts_page))
        .route("/console/alerts", get(alerts_page))
        .route("/console/alerts/{id}/{action}", post(alert_action))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/shipments", get(shipments::search))
        .route("/console/shipments/{tracking}", get(shipments::show))
        .route("/console/photos/{sha256}", get(shipments::photo))
        .route("/console/fleet", get(fleet::page))
        .route("/console/numbers", get(numbers::page))
        .route("/console/{*rest}", any(unknown_page))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response_with_state(csp, protect))
        .with_state(console)
}

/// The console's Content-Security-Policy: no script, styles from the page itself, images
/// from the hub and, when the fleet map is configured, from the tile server's origin.
fn content_security_policy(tiles: Option<&crate::notify::page::map::TileSource>) -> HeaderValue {
    const BASE: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'";
    let Some(tiles) = tiles else { return HeaderValue::from_static(BASE) };
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' {}; form-action 'self'; frame-ancestors 'none'",
        tiles.origin()
    );
    // A checked origin is `https://` and a plain host: always a valid header value.
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static(BASE))
}

/// Headers every console answer carries: not cached (pages hold customers' data), not
/// framed (no clickjacking of the buttons), no script, no referrer (a tile server never
/// learns which console page asked), images only from the hub and the fleet map's tiles.
async fn protect(State(csp): State<HeaderValue>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    response
}

// ---- templates ------------------------------------------------------------------------------

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../../templates/console/base.html")),
        ("login.html", include_str!("../../templates/console/login.html")),
        ("error.html", include_str!("../../templates/console/error.html")),
        ("alerts.html", include_str!("../../templates/console/alerts.html")),
        ("alert_cells.html", include_str!("../../templates/console/alert_cells.html")),
        ("search.html", include_str!("../../templates/console/search.html")),
        ("shipment.html", include_str!("../../templates/console/shipment.html")),
        ("fleet.html", include_str!("../../templates/console/fleet.html")),
        ("numbers.html", include_str!("../../templates/console/numbers.html")),
    ] {
        // The templates are part of the build: one that does not parse fails every test.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "console template does not parse");
        }
    }
    env
});

/// `template` rendered with `context` as a page with `status`.
fn render(status: StatusCode, template: &str, context: minijinja::Value) -> Response {
    match TEMPLATES.get_template(template).and_then(|t| t.render(context)) {
        Ok(html) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "console page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered; see the hub's log\n",
            )
                .into_response()
        }
    }
}

/// A page for a signed-in operator: the layout shows their key and the logout form.
fn page(status: StatusCode, template: &str, who: &Operator, nav: &str, view: impl Serialize) -> Response {
    let context = minijinja::context! {
        operator => &who.key_name,
        csrf => &who.session.csrf,
        nav => nav,
        view => minijinja::Value::from_serialize(&view),
    };
    render(status, template, context)
}

/// A page that says what went wrong and what to do; nothing was changed.
fn error_page(status: StatusCode, title: &str, message: &str, who: Option<&Operator>) -> Response {
    let context = minijinja::context! {
        operator => who.map(|w| w.key_name.as_str()),
        csrf => who.map(|w| w.session.csrf.as_str()),
        title => title,
        message => message,
    };
    render(status, "error.html", context)
}

fn store_failed(e: &StoreError, who: Option<&Operator>) -> Response {
    tracing::error!(error = %e, "database error in the console");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Database error",
        "The database failed; see the hub's log.",
        who,
    )
}

fn shutting_down(who: Option<&Operator>) -> Response {
    error_page(StatusCode::SERVICE_UNAVAILABLE, "The hub is stopping", "Try again in a moment.", who)
}

/// A result of the writer's thread as a page or the error page.
fn answered<T>(
    result: Result<Result<T, StoreError>, WriterGone>,
    who: &Operator,
) -> Result<T, Box<Response>> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Box::new(store_failed(&e, Some(who)))),
        Err(WriterGone) => Err(Box::new(shutting_down(Some(who)))),
    }
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

// ---- formatting -----------------------------------------------------------------------------

/// A time for people: `2026-12-01 10:12:00 UTC`.
pub(crate) fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// A duration for people: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub(crate) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The fields of a URL-encoded form or query; the last of a repeated name wins.
fn form_fields(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Whether the browser reached the hub over TLS: the private listener speaks plain HTTP,
/// so TLS ends at a proxy in front of it, which says so.
fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

// ---- who is signed in -----------------------------------------------------------------------

/// A signed-in operator: a live session whose key still has the `console` scope.
#[derive(Debug, Clone)]
struct Operator {
    session_id: String,
    session: Session,
    key_name: String,
}

impl FromRequestParts<Console> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Self::Rejection> {
        let cookie = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::session_id);
        let Some(session_id) = cookie.map(str::to_owned) else { return Err(redirect("/console/login")) };
        let Some(session) = console.sessions.get(&session_id, now_ms()) else {
            return Err(redirect("/console/login"));
        };
        let refused = |message: String| {
            console.sessions.remove(&session_id);
            error_page(StatusCode::FORBIDDEN, "Not allowed", &message, None)
        };
        match access::recheck_key(&console.guard, &session.key_id, Scope::Console).await {
            Ok(KeyCheck::Allowed { name, .. }) => Ok(Operator { session_id, session, key_name: name }),
            Ok(KeyCheck::Revoked(name)) => Err(refused(format!(
                "The API key {name:?} was revoked since you signed in. Sign in again with a current key."
            ))),
            Ok(KeyCheck::Forbidden(name)) => Err(refused(format!(
                "The API key {name:?} no longer has the console scope. Sign in with a key that has it."
            ))),
            Ok(KeyCheck::Unknown) => {
                Err(refused("The API key you signed in with is gone from this hub.".into()))
            }
            Err(CheckError::Database) => Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Database error",
                "The database failed; see the hub's log.",
                None,
            )),
            Err(CheckError::ShuttingDown) => Err(shutting_down(None)),
        }
    }
}

impl Console {
    /// An audit line for a console write, as the API writes them.
    async fn audit(
        &self,
        key_name: Option<String>,
        path: &str,
        subject: &str,
        status: StatusCode,
        outcome: &str,
    ) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            key_name,
            method: "POST".into(),
            path: path.chars().take(512).collect(),
            subject: Some(subject.to_owned()),
            status: status.as_u16(),
            outcome: outcome.to_owned(),
        };
        match self.writer.call(move |ctx| ctx.store.audit(&entry)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not write the audit log"),
            Err(WriterGone) => tracing::error!("could not write the audit log: the hub is shutting down"),
        }
    }
}

// ---- login and logout -----------------------------------------------------------------------

fn login_form(status: StatusCode, problem: Option<&str>) -> Response {
    render(status, "login.html", minijinja::context! { problem => problem })
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

async fn login(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/console/login";
    const SUBJECT: &str = "console sign-in";
    let form = form_fields(&body);
    let token = form.get("api_key").map_or("", |t| t.trim());
    if token.is_empty() {
        return login_form(StatusCode::BAD_REQUEST, Some("Paste an API key (dsk_…) to sign in."));
    }
    let check = match access::check_token(&console.guard, token, Scope::Console).await {
        Ok(check) => check,
        Err(CheckError::Database) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Database error",
                "The database failed; see the hub's log.",
                None,
            );
        }
        Err(CheckError::ShuttingDown) => return shutting_down(None),
    };
    let (outcome, name, refusal) = match check {
        KeyCheck::Allowed { name, key_id } => {
            let now = now_ms();
            let Ok((id, _)) = console.sessions.create(console.rng.as_ref(), &key_id, &name, now) else {
                return error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sign-in failed",
                    "The system's random number generator failed; see the hub's log.",
                    None,
                );
            };
            let secure = console.options.always_secure_cookie || over_tls(&headers);
            console.guard.metrics.api_request("allowed", Scope::Console.as_str());
            console.audit(Some(name.clone()), PATH, SUBJECT, StatusCode::SEE_OTHER, "ok").await;
            tracing::info!(key = %name, "console sign-in");
            let mut response = redirect("/console");
            if let Ok(value) = HeaderValue::from_str(&session::set_cookie(&id, secure)) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            return response;
        }
        KeyCheck::Unknown => (
            "unauthenticated",
            None,
            login_form(
                StatusCode::UNAUTHORIZED,
                Some(
                    "That is not an API key this hub issued. Check for a missing character, or ask for one made with doorstep-hub apikey create.",
                ),
            ),
        ),
        KeyCheck::Revoked(name) => {
            let message = format!("The API key {name:?} was revoked. Ask for a new one.");
            ("revoked", Some(name), login_form(StatusCode::UNAUTHORIZED, Some(&message)))
        }
        KeyCheck::Forbidden(name) => {
            let message = format!(
                "The API key {name:?} lacks the console scope. Ask for a key made with doorstep-hub apikey create --name NAME --scope console."
            );
            ("forbidden", Some(name), login_form(StatusCode::FORBIDDEN, Some(&message)))
        }
    };
    console.guard.metrics.api_request(outcome, Scope::Console.as_str());
    tracing::warn!(outcome, key = name.as_deref().unwrap_or("-"), "console sign-in refused");
    console.audit(name, PATH, SUBJECT, refusal.status(), outcome).await;
    refusal
}

/// The CSRF token of a form, checked against the session's; the refusal page when it
/// does not match (and an audit line saying so).
async fn check_csrf(
    console: &Console,
    who: &Operator,
    form: &HashMap<String, String>,
    path: &str,
    subject: &str,
) -> Result<(), Response> {
    let presented = form.get("csrf").map_or("", String::as_str);
    if who.session.csrf_matches(presented) {
        return Ok(());
    }
    tracing::warn!(key = %who.key_name, path, "console form without this session's token refused");
    console.audit(Some(who.key_name.clone()), path, subject, StatusCode::FORBIDDEN, "csrf_mismatch").await;
    Err(error_page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form does not carry your session's token (it was opened in another session, or elsewhere). Nothing was changed: reload the page and try again.",
        Some(who),
    ))
}

async fn logout(State(console): State<Console>, headers: HeaderMap, who: Operator, body: Bytes) -> Response {
    let form = form_fields(&body);
    if let Err(refused) = check_csrf(&console, &who, &form, "/console/logout", "console sign-out").await {
        return refused;
    }
    console.sessions.remove(&who.session_id);
    console
        .audit(Some(who.key_name.clone()), "/console/logout", "console sign-out", StatusCode::SEE_OTHER, "ok")
        .await;
    let secure = console.options.always_secure_cookie || over_tls(&headers);
    let mut response = redirect("/console/login");
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn unknown_page(who: Operator) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "No such page",
        "The console has no page here. Use the links above.",
        Some(&who),
    )
}

// ---- alerts ---------------------------------------------------------------------------------

/// One alert as a row of the alerts table.
#[derive(Debug, Serialize)]
pub(crate) struct AlertView {
    id: i64,
    code: String,
    detail: String,
    tracking_number: Option<String>,
    raised: String,
    state: &'static str,
    level: u32,
    posted: Option<String>,
    acknowledged: Option<String>,
    resolved: Option<String>,
    can_ack: bool,
    can_resolve: bool,
}

impl AlertView {
    pub(crate) fn new(a: &ConsoleAlert) -> Self {
        let by = |at: Option<i64>, by: &Option<String>| {
            at.map(|at| format!("{} by {}", when(at), by.as_deref().unwrap_or("unknown key")))
        };
        let state = a.state();
        AlertView {
            id: a.id,
            code: a.code.clone(),
            // Evidence may quote what a carrier or driver wrote: no whole contacts on screen.
            detail: crate::mask::mask(&a.detail),
            tracking_number: a.tracking_number.clone(),
            raised: when(a.created_ms),
            state: state.as_str(),
            level: a.level,
            posted: a.posted_ms.map(when),
            acknowledged: by(a.acked_ms, &a.acked_by),
            resolved: by(a.resolved_ms, &a.resolved_by),
            can_ack: state == AlertState::Open,
            can_resolve: state != AlertState::Resolved,
        }
    }
}

#[derive(Debug, Serialize)]
struct AlertsView {
    state: &'static str,
    states: [&'static str; 3],
    alerts: Vec<AlertView>,
    limit: usize,
    back: String,
}

async fn alerts_page(State(console): State<Console>, who: Operator, RawQuery(query): RawQuery) -> Response {
    let query = form_fields(query.unwrap_or_default().as_bytes());
    let wanted = query.get("state").map_or("open", String::as_str);
    let Some(state) = AlertState::parse(wanted) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "No such alert state",
            "Alerts are open, acknowledged or resolved; pick one of the tabs.",
            Some(&who),
        );
    };
    let read = console.writer.call(move |ctx| ctx.store.console_alerts(state, ALERTS_PER_PAGE)).await;
    let alerts = match answered(read, &who) {
        Ok(alerts) => alerts,
        Err(page) => return *page,
    };
    let view = AlertsView {
        state: state.as_str(),
        states: ["open", "acknowledged", "resolved"],
        alerts: alerts.iter().map(AlertView::new).collect(),
        limit: ALERTS_PER_PAGE,
        back: format!("/console/alerts?state={}", state.as_str()),
    };
    page(StatusCode::OK, "alerts.html", &who, "alerts", view)
}

/// Where a form may send the operator back to: a console page, nothing else.
fn safe_back(back: Option<&String>) -> String {
    match back {
        Some(b)
            if b.starts_with("/console/")
                && !b.contains("//")
                && !b.contains('\\')
                && b.bytes().all(|c| c.is_ascii_graphic()) =>
        {
            b.clone()
        }
        _ => "/console/alerts".into(),
    }
}

async fn alert_action(
    State(console): State<Console>,
    who: Operator,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let path = format!("/console/alerts/{id}/{action}");
    let form = form_fields(&body);
    let Ok(id) = id.parse::<i64>() else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "No such alert",
            "An alert's id is a number. Nothing was changed.",
            Some(&who),
        );
    };
    if action != "ack" && action != "resolve" {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such action",
            "An alert can be acknowledged or resolved. Nothing was changed.",
            Some(&who),
        );
    }
    let subject = format!("alert {id}");
    if let Err(refused) = check_csrf(&console, &who, &form, &path, &subject).await {
        return refused;
    }
    let by = who.key_name.clone();
    let resolve = action == "resolve";
    let done = console
        .writer
        .call(move |ctx| -> Result<bool, StoreError> {
            let now = now_ms();
            Ok(if resolve {
                !matches!(ctx.store.resolve_alert(id, &by, now)?, Resolve::Missing)
            } else {
                !matches!(ctx.store.ack_alert(id, &by, now)?, Ack::Missing)
            })
        })
        .await;
    let found = match answered(done, &who) {
        Ok(found) => found,
        Err(page) => {
            console.audit(Some(who.key_name.clone()), &path, &subject, page.status(), "error").await;
            return *page;
        }
    };
    if !found {
        console.audit(Some(who.key_name.clone()), &path, &subject, StatusCode::NOT_FOUND, "not_found").await;
        return error_page(
            StatusCode::NOT_FOUND,
            "No such alert",
            "No operations alert has this id. Nothing was changed.",
            Some(&who),
        );
    }
    console.audit(Some(who.key_name.clone()), &path, &subject, StatusCode::SEE_OTHER, "ok").await;
    tracing::info!(alert = id, by = %who.key_name, action, "operations alert changed from the console");
    redirect(&safe_back(form.get("back")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for name in [
            "base.html",
            "login.html",
            "error.html",
            "alerts.html",
            "search.html",
            "shipment.html",
            "fleet.html",
            "numbers.html",
        ] {
            assert!(TEMPLATES.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn hostile_text_is_escaped_in_every_page() {
        let html = match TEMPLATES.get_template("error.html").and_then(|t| {
            t.render(
                minijinja::context! { title => "<script>alert(1)</script>", message => "\"><img src=x>" },
            )
        }) {
            Ok(html) => html,
            Err(e) => panic!("render: {e}"),
        };
        assert!(!html.contains("<script>alert(1)"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<img src=x>"));
    }

    #[test]
    fn forms_send_operators_back_only_to_console_pages() {
        assert_eq!(safe_back(Some(&"/console/shipments/1Z9".to_owned())), "/console/shipments/1Z9");
        for bad in ["https://evil.example/", "//evil.example", "/console//evil", "/console/\\x", "/other"] {
            assert_eq!(safe_back(Some(&bad.to_owned())), "/console/alerts", "{bad}");
        }
        assert_eq!(safe_back(None), "/console/alerts");
    }

    #[test]
    fn durations_and_times_read_as_people_write_them() {
        assert_eq!(age(45_000), "45 s");
        assert_eq!(age(12 * 60_000 + 5_000), "12 min");
        assert_eq!(age(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(age(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
        assert_eq!(when(1_796_083_200_000), "2026-12-01 00:00:00 UTC");
    }

    #[test]
    fn images_may_come_from_the_tile_server_only_when_the_fleet_map_is_configured() {
        let plain = content_security_policy(None);
        assert_eq!(
            plain.to_str().ok(),
            Some(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"
            )
        );
        let tiles =
            crate::notify::page::map::TileSource::parse("https://tile.example.org:8443/{z}/{x}/{y}.png")
                .expect("valid tiles");
        let with_map = content_security_policy(Some(&tiles));
        assert_eq!(
            with_map.to_str().ok(),
            Some(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https://tile.example.org:8443; form-action 'self'; frame-ancestors 'none'"
            )
        );
    }

    #[test]
    fn tls_is_what_the_proxy_says() {
        let mut headers = HeaderMap::new();
        assert!(!over_tls(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_tls(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1;proto=https"));
        assert!(over_tls(&headers));
    }
}
