//! Per-client rate limits on the public listener (`tower_governor`): a client that asks
//! for more than its share gets 429 with `Retry-After`, counted on
//! `doorstep_hub_rate_limited_total{surface}`, and the hub's writer never sees it.
//!
//! The client is the peer address, or with `http.trust_forwarded_for` the last
//! `X-Forwarded-For` entry: the one the operator's own proxy appended. The first entry
//! is whatever the client wrote, so it is never used.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

use crate::metrics::Metrics;

/// How often idle clients are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The client a request counts against.
#[derive(Debug, Clone, Copy)]
struct ClientAddr {
    trust_forwarded_for: bool,
}

impl KeyExtractor for ClientAddr {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        if self.trust_forwarded_for
            && let Some(ip) = req
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return Ok(ip);
        }
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// `router` with a limit of `burst` requests at once per client, one more every
/// `period`. Must be served with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn limit(
    router: Router,
    period: Duration,
    burst: u32,
    trust_forwarded_for: bool,
    surface: &'static str,
    metrics: &Arc<Metrics>,
) -> Router {
    let Some(config) = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(burst.max(1))
        .key_extractor(ClientAddr { trust_forwarded_for })
        .finish()
    else {
        // Only a zero period or burst is refused, and neither can reach here.
        tracing::error!(surface, "rate limit not applied: invalid period or burst");
        return router;
    };
    let config = Arc::new(config);
    // Forget clients that have been quiet, so the table does not grow with every
    // address that ever asked. The task ends with the router.
    let limiter = Arc::downgrade(config.limiter());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(FORGET_EVERY).await;
            let Some(limiter) = limiter.upgrade() else { break };
            limiter.retain_recent();
        }
    });
    let metrics = Arc::clone(metrics);
    let layer = GovernorLayer::new(config).error_handler(move |error| refused(&error, surface, &metrics));
    router.layer(layer)
}

fn refused(error: &GovernorError, surface: &'static str, metrics: &Metrics) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            metrics.rate_limited(surface);
            // Whole seconds, at least one: "0" would invite an immediate retry.
            let wait = (*wait_time).max(1);
            let mut response = Response::new(Body::from(format!(
                "too many requests from this address; retry in {wait} s\n"
            )));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
            response
        }
        GovernorError::UnableToExtractKey | GovernorError::Other { .. } => {
            tracing::error!(surface, "rate limit: no client address on the request");
            let mut response = Response::new(Body::from("internal error\n"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}
