//! A private API on a fresh database, for the tests of this module and of `openapi`.

use std::path::PathBuf;

use axum::body::Body;
use tower::ServiceExt as _;

use super::*;
use crate::config::{ChannelMap, MqttSettings};
use crate::ingest::{Domain, Ingest, IngestOptions};
use crate::reconcile::Rules;
use crate::store::{Store, StoreOptions};

/// The API router over a real writer and database. Its broker is absent (a closed
/// port): the API answers without one, and nothing these tests call publishes.
pub(crate) struct TestApi {
    router: Router,
    ingest: Option<Ingest>,
    pub(crate) db: PathBuf,
    /// An `admin` key.
    pub(crate) admin: String,
    _dir: tempfile::TempDir,
}

impl TestApi {
    /// Starts one with `max_body_bytes` of 64 KiB.
    pub(crate) async fn start() -> TestApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
        let metrics = Arc::new(Metrics::default());
        let domain = Domain {
            rules: Rules::default(),
            channel_map: ChannelMap::default(),
            max_event_ahead_ms: ingest::DEFAULT_MAX_EVENT_AHEAD_MS,
            metrics: Arc::clone(&metrics),
            sinks: Default::default(),
        };
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let options = IngestOptions {
            database: db.clone(),
            store: StoreOptions { full_sync: false },
            mqtt: MqttSettings::plain("127.0.0.1", port, "http-test"),
            verify_threads: 1,
            batch_max: 16,
        };
        let hub_key = Arc::new(SigningKey::from_seed(&[0xAB; 32]).expect("key"));
        let ingest = Ingest::start(&options, Arc::clone(&hub_key), domain).expect("ingest");
        let state = AppState {
            writer: ingest.writer(),
            hub_key,
            metrics,
            sources: Arc::new(crate::inbound::Sources::default()),
            max_body_bytes: 64 * 1024,
            console: Default::default(),
        };
        let mut api =
            TestApi { router: api_router(state), ingest: Some(ingest), db, admin: String::new(), _dir: dir };
        api.admin = api.key(&[Scope::Admin]);
        api
    }

    /// A new key with `scopes`, as `doorstep-hub apikey create` makes one.
    pub(crate) fn key(&self, scopes: &[Scope]) -> String {
        let key = access::issue(&ring::rand::SystemRandom::new()).expect("issue");
        let mut store = Store::open(&self.db, StoreOptions { full_sync: false }).expect("store");
        let scopes = access::scopes_text(scopes).expect("scopes");
        store
            .create_api_key(&format!("k-{}", key.key_id), &key.key_id, &key.digest, &scopes, 0)
            .expect("key");
        key.token
    }

    /// `method path` with `body` as JSON, the bearer `token` if any: the status and
    /// the body as JSON (`null` when it is not JSON).
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, headers, bytes) = self.raw(method, path, token, body).await;
        let json =
            headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let value =
            if json { serde_json::from_slice(&bytes).expect("JSON as labelled") } else { json!(null) };
        (status, value)
    }

    /// Like [`TestApi::call`], with the headers and raw body.
    pub(crate) async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(body.into()).expect("request");
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, bytes)
    }

    /// Stops the writer and its threads.
    pub(crate) async fn stop(mut self) {
        if let Some(ingest) = self.ingest.take() {
            ingest.shutdown().await;
        }
    }
}
