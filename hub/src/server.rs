//! The hub service as a library call: MQTT ingest, the HTTP API, the notification
//! dispatcher and the tracking page, until `shutdown` resolves. `doorstep-hub serve` runs
//! it with the configured listener and SIGTERM; the demo runs it on a free loopback port.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use std::path::Path;

use crate::config::Settings;
use crate::http::AppState;
use crate::inbound::Sources;
use crate::ingest::{Domain, Ingest, IngestOptions};
use crate::metrics::Metrics;
use crate::reconcile::Rules;
use crate::store::StoreOptions;

/// The hub's two listeners.
#[derive(Debug)]
pub struct Listeners {
    /// `http.listen`: the tracking page, webhooks, callbacks, `/healthz`.
    pub public: tokio::net::TcpListener,
    /// `api.listen`: `/v1`, `/metrics`, `/healthz`, behind API keys.
    pub api: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds both configured addresses, saying which one failed.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let public = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding http.listen {}", settings.listen))?;
        let api = tokio::net::TcpListener::bind(settings.api_listen)
            .await
            .with_context(|| format!("binding api.listen {}", settings.api_listen))?;
        Ok(Self { public, api })
    }
}

/// Runs the hub until `shutdown` resolves, then drains ingest and stops the dispatcher.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let hub_key = Arc::new(load_key(&settings.key_path)?);
    let metrics = Arc::new(Metrics::default());
    let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let domain = Domain {
        rules: Rules {
            hold_ms: millis(settings.hold_period),
            standing_speed_cmps: settings.standing_speed_cmps,
            default_dwell_s: settings.default_dwell_s,
            delay_tolerance_ms: millis(settings.delay_tolerance),
        },
        channel_map: settings.channel_map.clone(),
        max_event_ahead_ms: millis(settings.max_event_ahead),
        metrics: Arc::clone(&metrics),
        sinks: settings.sinks.subscriptions(),
    };
    let sources = Arc::new(Sources::build(&settings.carriers, &settings.orders, &settings.support)?);
    let options = IngestOptions {
        database: settings.database.clone(),
        store: StoreOptions { full_sync: settings.full_sync },
        mqtt: settings.mqtt.clone(),
        verify_threads: settings.verify_threads,
        batch_max: settings.batch_max,
    };
    let ingest = Ingest::start(&options, Arc::clone(&hub_key), domain).with_context(|| {
        format!("starting ingest with database {}", crate::store::database_label(&settings.database))
    })?;
    // Customer messages and operations alerts: the dispatcher sends what ingest and the
    // API enqueue; its router serves the tracking page and the providers' callbacks.
    let notify_settings =
        crate::notify::config::NotifySettings::from_hub(&settings).context("configuration [notify]")?;
    let state = AppState {
        writer: ingest.writer(),
        hub_key,
        metrics: Arc::clone(&metrics),
        sources,
        max_body_bytes: settings.max_body_bytes,
        // The fleet page maps vans with the tracking page's tiles; without a [notify]
        // section the brand has none, and the fleet page keeps to its table.
        console: crate::console::ConsoleOptions {
            map_tiles: notify_settings.brand.map_tiles.clone(),
            ..Default::default()
        },
    };
    let dispatch = notify_settings.dispatch;
    let dispatcher =
        crate::notify::Dispatcher::new(notify_settings, &settings.database, Arc::clone(&metrics))
            .context("starting the notification dispatcher")?;
    let notify_cancel = tokio_util::sync::CancellationToken::new();
    let notify_task = if dispatch {
        // Sends while it holds the dispatch lease: the only hub, or one of a group.
        ingest.wake_dispatcher_with(dispatcher.waker());
        Some(dispatcher.clone().spawn(settings.mqtt.client_id.clone(), notify_cancel.clone()))
    } else {
        // Another hub of the group sends; this one still enqueues, serves the tracking
        // page and records the providers' callbacks.
        tracing::info!("notify.dispatch = false: this hub does not send messages or alerts");
        None
    };
    // Business sinks report what ingest commits; like messages, only from a dispatching hub.
    let sink_cancel = tokio_util::sync::CancellationToken::new();
    let sink_task = if dispatch && !settings.sinks.is_empty() {
        let sinks =
            crate::sinks::Dispatcher::new(settings.sinks.clone(), &settings.database, Arc::clone(&metrics))
                .context("starting the sink dispatcher")?;
        Some(sinks.spawn(sink_cancel.clone()))
    } else {
        None
    };
    // Carriers that never call: ShipEngine polls and AfterShip registrations, as configured.
    let carrier_cancel = tokio_util::sync::CancellationToken::new();
    let carrier_tasks = crate::carrier::jobs::spawn_configured(
        &settings.carriers,
        &ingest.writer(),
        &metrics,
        &carrier_cancel,
    )
    .context("starting the carrier jobs")?;
    if let Some(group) = &settings.mqtt.shared_group {
        tracing::info!(
            group,
            database = %crate::store::database_label(&settings.database),
            "shared subscription: every hub of the group must use this same database file; the one holding the dispatch lease sends"
        );
    }
    let public = crate::http::public_router(
        state.clone(),
        crate::notify::page::page_router(dispatcher.state()),
        crate::notify::page::callbacks_router(dispatcher.state()),
        &settings.rate_limits,
    );
    let api = crate::http::api_router(state);
    tracing::info!(
        public = %listeners.public.local_addr()?,
        api = %listeners.api.local_addr()?,
        broker = %format!("{}:{}", settings.mqtt.host, settings.mqtt.port),
        "hub serving: tracking page, webhooks and callbacks on the public listener; /v1 and /metrics on the API listener"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let (stop_public, stop_api) = (stop.clone(), stop.clone());
    // The rate limits key on the client's address: the public service carries it.
    let public = axum::serve(listeners.public, public.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { stop_public.cancelled().await });
    let api =
        axum::serve(listeners.api, api).with_graceful_shutdown(async move { stop_api.cancelled().await });
    let (public, api) = tokio::join!(public, api);
    // One listener failing stops the hub: a hub without its API or its public face is
    // not one to keep running half-way.
    stop.cancel();
    public.context("public listener")?;
    api.context("API listener")?;
    // Their answers are written through ingest's writer: they stop before it drains.
    carrier_cancel.cancel();
    for task in carrier_tasks {
        let _ = task.await;
    }
    tracing::info!("shutting down: draining ingest");
    ingest.shutdown().await;
    notify_cancel.cancel();
    sink_cancel.cancel();
    if let Some(task) = notify_task {
        let _ = task.await;
    }
    if let Some(task) = sink_task {
        let _ = task.await;
    }
    Ok(())
}

/// Reads the hub's signing key (PKCS#8), saying how to make one when it is missing.
pub fn load_key(path: &Path) -> anyhow::Result<doorstep_proto::SigningKey> {
    doorstep_runtime::keyfile::load(path).map_err(|e| match e {
        doorstep_runtime::keyfile::KeyFileError::Io { .. } => {
            anyhow::anyhow!("reading the hub key: {e} (create it with `doorstep-hub keygen`)")
        }
        other => anyhow::anyhow!("hub key {other}"),
    })
}
