//! The witness's ops endpoint: `/healthz`, `/readyz` (ready once its config is loaded: it
//! waits for nothing else), `/status` (its own view of every pool, `"role": "witness"`, and no
//! routing or failover state: it routes nobody), `/metrics` and `/cluster/view` (the same
//! document, token and digest as a replica's). `/admin/*` is refused with `405`: a witness
//! takes no operator commands, which go to a replica. Anything else is `404` naming what it
//! serves.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use super::Witness;
use crate::events::Event;
use crate::health::ServerStatus;
use crate::reload::Reloadable;
use crate::server::ConfigMeta;

/// What the handlers share.
#[derive(Clone)]
struct Endpoint {
    witness: Arc<Witness>,
    metrics: PrometheusHandle,
}

/// What `/admin/*` answers.
const NO_COMMANDS: &str = "a witness takes no operator commands; send them to a replica";

/// What any other path answers.
const SERVES: &str =
    "a witness serves /healthz, /readyz, /status, /metrics and /cluster/view only\n";

fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/cluster/view", get(view))
        .route("/admin", axum::routing::any(admin))
        .route("/admin/{*command}", axum::routing::any(admin))
        .fallback(|| async { (StatusCode::NOT_FOUND, SERVES) })
        .with_state(endpoint)
}

/// Serves the witness's ops endpoint on `listener` in a task.
pub(super) fn serve(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    metrics: PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    let app = router(Endpoint { witness, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "ops endpoint stopped");
        }
    })
}

async fn admin() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        // No method is allowed on it (RFC 9110 §10.2.1: an empty Allow says so).
        [(header::ALLOW, "")],
        Json(json!({ "ok": false, "error": NO_COMMANDS })),
    )
        .into_response()
}

async fn view(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    let cfg = e.witness.config();
    let replica = e.witness.ops().to_string();
    // No operator state: a witness takes no commands, so it has none a replica should adopt.
    crate::ops::cluster_view(&cfg, replica, e.witness.control(), &headers, false).await
}

async fn metrics(State(e): State<Endpoint>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.metrics.render(),
    )
        .into_response()
}

/// The witness's `/status` document.
#[derive(Serialize)]
struct WitnessStatus {
    /// Always `witness`: it probes and serves its view; it routes nobody and moves no pool.
    role: &'static str,
    /// What `/readyz` says: always, once its config is loaded.
    ready: bool,
    /// Its ops endpoint, as the replicas' `[cluster] witness` names it.
    ops: SocketAddr,
    config: ConfigMeta,
    /// The digest of its pools and routes: the replicas count its view only when it is theirs.
    config_digest: String,
    /// The names servers and pools are given by, as for a replica.
    dns: Vec<crate::dns::NameStatus>,
    pools: Vec<PoolView>,
    /// The last health, reload and DNS events, newest first.
    events: Vec<Event>,
}

/// One pool as the witness's own probes see it.
#[derive(Serialize)]
struct PoolView {
    name: String,
    role: &'static str,
    pair: Option<String>,
    /// `up` while at least `min_up` of its servers are up: what its view says of the pool.
    state: &'static str,
    /// Since when its view has said so.
    since: String,
    min_up: usize,
    servers_up: usize,
    servers: Vec<ServerStatus>,
}

async fn status(State(e): State<Endpoint>) -> Response {
    let control = e.witness.control();
    let (Some(health), Some((view, _))) = (control.status().await, control.view().await) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "siplb is stopping\n").into_response();
    };
    let pools = health
        .pools
        .into_iter()
        .map(|p| {
            let since = view
                .iter()
                .find(|v| v.name == p.name)
                .map(|v| v.since.clone())
                .unwrap_or_default();
            PoolView {
                name: p.name,
                role: p.role,
                pair: p.pair,
                state: p.state,
                since,
                min_up: p.min_up,
                servers_up: p.servers_up,
                servers: p.servers,
            }
        })
        .collect();
    let cfg = e.witness.config();
    Json(WitnessStatus {
        role: "witness",
        ready: true,
        ops: e.witness.ops(),
        config: e.witness.meta(),
        config_digest: crate::cluster::digest(&cfg),
        dns: e.witness.dns_status(),
        pools,
        events: control.events().recent(),
    })
    .into_response()
}
