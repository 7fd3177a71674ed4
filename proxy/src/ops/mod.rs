//! The ops HTTP endpoint (DESIGN.md "Ops HTTP contract"): liveness, readiness, status (JSON
//! and a page for people), Prometheus metrics, where-would-this-go, and the admin API.
//!
//! It reads the same routing table the wire path uses and sends operator commands to the health
//! supervisor; it never touches a message. Admin requests need the bearer token; without a
//! configured token the admin API does not exist. With `[cluster]`, operator commands are
//! forwarded to the peers, and the peers' forwarded commands come in with the cluster token
//! (`admin.rs`).

mod admin;
mod cluster;
mod page;
mod traffic;

pub(crate) use cluster::answer as cluster_view;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::core::explain;
use crate::events::Event;
use crate::health::Status;
use crate::server::{ConfigMeta, Proxy};

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Ops {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// What the handlers share besides [`Ops`]: the traffic samples behind rates and shares.
#[derive(Clone)]
pub(crate) struct Endpoint {
    ops: Ops,
    traffic: Arc<traffic::Window>,
}

impl FromRef<Endpoint> for Ops {
    fn from_ref(e: &Endpoint) -> Ops {
        e.ops.clone()
    }
}

/// The router; the admin routes exist only when an admin token is configured, the operator
/// commands also with `[cluster]` (a peer forwards its operator's commands to them). `traffic` holds the
/// samples rates are computed from ([`sample_traffic`] keeps them coming).
fn router(ops: Ops, traffic: Arc<traffic::Window>) -> Router {
    let mut r = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/route", get(route))
        .route("/cluster/view", get(cluster::view));
    let admin = ops.proxy.token().is_configured();
    if admin || ops.proxy.config().cluster.is_some() {
        r = r
            .route("/admin/pools/{name}/failover", post(admin::failover))
            .route("/admin/pools/{name}/failback", post(admin::failback))
            .route("/admin/servers/{id}/drain", post(admin::drain))
            .route("/admin/servers/{id}/undrain", post(admin::undrain));
    }
    if admin {
        r = r.route("/admin/reload", post(admin::reload));
    }
    r.with_state(Endpoint { ops, traffic })
}

/// Samples every server's forwarded count each [`traffic::TICK`], for rates and shares.
async fn sample_traffic(proxy: Arc<Proxy>, window: Arc<traffic::Window>) {
    let mut tick = tokio::time::interval(traffic::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        window.sample(&proxy.tables.load().counters, std::time::Instant::now());
    }
}

/// Binds the ops endpoint at `[ops] listen` (when the config has one) and serves it in a task.
/// Returns the address bound.
pub(crate) async fn start(ops: Ops) -> anyhow::Result<Option<SocketAddr>> {
    use anyhow::Context as _;
    let Some(listen) = ops.proxy.config().ops.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind ops endpoint {listen}"))?;
    let bound = listener.local_addr()?;
    if !ops.proxy.token().is_configured() {
        tracing::info!("no admin token configured: the admin API is off");
    }
    let window = Arc::new(traffic::Window::default());
    tokio::spawn(sample_traffic(ops.proxy.clone(), window.clone()));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(ops, window)).await {
            tracing::error!(error = %e, "ops endpoint stopped");
        }
    });
    Ok(Some(bound))
}

/// Why siplb is not ready, or `None` when it is: siplb is not shutting down, no pool is
/// unreachable from this replica alone while its fleet reaches it (`[cluster]`), and every
/// pool a route can choose has a server up in the pool serving its users, or in its pair.
pub(crate) fn not_ready(proxy: &Proxy) -> Option<String> {
    if proxy.shutting_down() {
        return Some(SHUTTING_DOWN.into());
    }
    if let Some(pool) = proxy.control.unreachable().first() {
        return Some(format!(
            "pool {pool} unreachable from this replica while the fleet reaches it"
        ));
    }
    let t = proxy.tables.load();
    let has_up = |p: usize| t.pools[p].up_count() > 0;
    for (i, r) in t.routes.iter().enumerate() {
        for &p in &r.pools {
            let pair_up = t.pools[p].pair.is_some_and(has_up);
            if !has_up(t.serving(p)) && !has_up(p) && !pair_up {
                return Some(format!(
                    "route {i}: pool {} (and its pair) has no server up",
                    t.pools[p].name
                ));
            }
        }
    }
    None
}

/// The reason `/readyz` gives from SIGTERM until siplb exits.
const SHUTTING_DOWN: &str = "siplb is shutting down";

async fn readyz(State(ops): State<Ops>) -> Response {
    match not_ready(&ops.proxy) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// The `/status` document.
#[derive(Serialize)]
pub(crate) struct StatusDoc {
    /// What `/readyz` says.
    pub(crate) ready: bool,
    pub(crate) not_ready_reason: Option<String>,
    /// True from SIGTERM until siplb exits (`[listen] shutdown_grace`).
    pub(crate) shutting_down: bool,
    pub(crate) config: ConfigMeta,
    pub(crate) listen_udp: Vec<String>,
    /// TCP and TLS listeners (as bound), client connections open on each, backend
    /// connections and client flows.
    pub(crate) connections: crate::stream::StreamStatus,
    pub(crate) advertise: String,
    /// `[listen] passthrough` listeners with their open connections.
    pub(crate) passthrough: Vec<crate::passthrough::ListenerStatus>,
    /// The names servers and pools are given by: answer in use, last success, and the error
    /// while a name does not resolve (its last addresses stay in use).
    pub(crate) dns: Vec<crate::dns::NameStatus>,
    #[serde(flatten)]
    pub(crate) health: Status,
    /// The last health, failover, drain, reload and DNS events, newest first.
    pub(crate) events: Vec<Event>,
}

async fn status_doc(endpoint: &Endpoint) -> Result<StatusDoc, Response> {
    let ops = &endpoint.ops;
    let mut health =
        ops.proxy.control.status().await.ok_or_else(|| {
            (StatusCode::SERVICE_UNAVAILABLE, "siplb is stopping\n").into_response()
        })?;
    let table = ops.proxy.tables.load();
    endpoint
        .traffic
        .fill(&mut health, &table, std::time::Instant::now());
    let not_ready_reason = not_ready(&ops.proxy);
    Ok(StatusDoc {
        ready: not_ready_reason.is_none(),
        not_ready_reason,
        shutting_down: ops.proxy.shutting_down(),
        config: ops.proxy.meta(),
        listen_udp: ops.proxy.udp().iter().map(ToString::to_string).collect(),
        connections: ops.proxy.connections(),
        advertise: table.advertise.to_string(),
        passthrough: ops.proxy.passthrough.status(),
        dns: ops.proxy.dns_status(),
        health,
        events: ops.proxy.control.events().recent(),
    })
}

async fn status(State(endpoint): State<Endpoint>) -> Response {
    match status_doc(&endpoint).await {
        Ok(doc) => Json(doc).into_response(),
        Err(r) => r,
    }
}

async fn status_page(State(endpoint): State<Endpoint>) -> Response {
    match status_doc(&endpoint).await {
        Ok(doc) => Html(page::render(&doc)).into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    match &ops.metrics {
        Some(h) => {
            // Per-server counts reach the recorder when they are asked for.
            ops.proxy.tables.load().counters.publish();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                h.render(),
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct RouteQuery {
    method: String,
    aor: String,
    /// The client's IP address, which a `source-ip` key reads; 127.0.0.1 when absent.
    source: Option<IpAddr>,
}

/// `/route?method=REGISTER&aor=sip:alice@contoso.com[&source=IP]`: where such a request goes
/// now, with live health — the same answer the wire path gives — and which key rule applied
/// (`key`, `key_rule`, the pools' `role`).
async fn route(State(ops): State<Ops>, Query(q): Query<RouteQuery>) -> Response {
    let table = ops.proxy.tables.load();
    let source = q.source.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    match explain::explain(&table, &q.method, &q.aor, source) {
        Ok(doc) => Json(doc).into_response(),
        Err(refusal) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "routed": false, "answer": refusal.code() })),
        )
            .into_response(),
    }
}
