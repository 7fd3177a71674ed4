//! The ops HTTP endpoint (DESIGN.md "Ops HTTP contract"): liveness, readiness, status (JSON
//! and a page for people), Prometheus metrics, where-would-this-go, and the admin API.
//!
//! It reads the same routing table the wire path uses and sends operator commands to the health
//! supervisor; it never touches a message. Admin requests need the bearer token; without a
//! configured token the admin API does not exist.

mod admin;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::core::Worker;
use crate::health::Status;
use crate::server::{ConfigMeta, Proxy};

pub use admin::Token;

/// What the handlers share.
#[derive(Clone)]
pub struct Ops {
    pub proxy: Arc<Proxy>,
    pub metrics: Option<PrometheusHandle>,
    pub token: Token,
}

/// Installs the Prometheus recorder for the whole process and keeps its histograms trimmed.
/// Call once, before the proxy starts, inside the runtime.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(crate::health::GAUGE_REFRESH * 3),
        )
        .set_buckets_for_metric(
            Matcher::Full("siplb_probe_rtt_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?
        .install_recorder()?;
    crate::stats::register();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The router; the admin routes exist only when a token is configured.
pub fn router(ops: Ops) -> Router {
    let mut r = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/route", get(route));
    if ops.token.is_configured() {
        r = r
            .route("/admin/pools/{name}/failover", post(admin::failover))
            .route("/admin/pools/{name}/failback", post(admin::failback))
            .route("/admin/servers/{id}/drain", post(admin::drain))
            .route("/admin/servers/{id}/undrain", post(admin::undrain))
            .route("/admin/reload", post(admin::reload));
    }
    r.with_state(ops)
}

/// Binds the ops endpoint at `[ops] listen` (when the config has one) and serves it in a task.
/// Returns the address bound.
pub async fn start(ops: Ops) -> anyhow::Result<Option<SocketAddr>> {
    use anyhow::Context as _;
    let Some(listen) = ops.proxy.config().ops.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind ops endpoint {listen}"))?;
    let bound = listener.local_addr()?;
    if !ops.token.is_configured() {
        tracing::info!("no admin token configured: the admin API is off");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(ops)).await {
            tracing::error!(error = %e, "ops endpoint stopped");
        }
    });
    Ok(Some(bound))
}

/// Why siplb is not ready, or `None` when it is: every pool a route can choose must have a
/// server up in the pool serving its users, or in its pair.
pub fn not_ready(proxy: &Proxy) -> Option<String> {
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
pub struct StatusDoc {
    /// What `/readyz` says.
    pub ready: bool,
    pub not_ready_reason: Option<String>,
    pub config: ConfigMeta,
    pub listen_udp: Vec<String>,
    pub advertise: String,
    #[serde(flatten)]
    pub health: Status,
}

async fn status_doc(ops: &Ops) -> Result<StatusDoc, Response> {
    let health =
        ops.proxy.control.status().await.ok_or_else(|| {
            (StatusCode::SERVICE_UNAVAILABLE, "siplb is stopping\n").into_response()
        })?;
    let not_ready_reason = not_ready(&ops.proxy);
    Ok(StatusDoc {
        ready: not_ready_reason.is_none(),
        not_ready_reason,
        config: ops.proxy.meta(),
        listen_udp: ops.proxy.udp().iter().map(ToString::to_string).collect(),
        advertise: ops.proxy.tables.load().advertise.to_string(),
        health,
    })
}

async fn status(State(ops): State<Ops>) -> Response {
    match status_doc(&ops).await {
        Ok(doc) => Json(doc).into_response(),
        Err(r) => r,
    }
}

async fn status_page(State(ops): State<Ops>) -> Response {
    match status_doc(&ops).await {
        Ok(doc) => Html(page::render(&doc)).into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    match &ops.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
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
}

/// `/route?method=REGISTER&aor=sip:alice@contoso.com`: where such a request goes now, with
/// live health — the same answer the wire path gives.
async fn route(State(ops): State<Ops>, Query(q): Query<RouteQuery>) -> Response {
    let table = ops.proxy.tables.load();
    match explain(&table, &q.method, &q.aor) {
        Ok(doc) => Json(doc).into_response(),
        Err(code) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "routed": false, "answer": code })),
        )
            .into_response(),
    }
}

/// Where a request of `method` for `aor` goes in `table`, as `siplb route` and `/route` show it.
#[derive(Debug, Serialize)]
pub struct RouteDoc {
    pub routed: bool,
    pub route: usize,
    pub key: &'static str,
    pub home: String,
    pub serving: String,
    pub server: Option<RouteServer>,
}

#[derive(Debug, Serialize)]
pub struct RouteServer {
    pub id: String,
    pub address: String,
    pub transport: &'static str,
}

/// Routes a synthetic request through the wire path's own decision; `Err` is the status siplb
/// would answer with.
pub fn explain(
    table: &crate::table::RoutingTable,
    method: &str,
    aor: &str,
) -> Result<RouteDoc, u16> {
    let request = crate::demo::request(method, aor, "siplb-route", 1, "127.0.0.1:5060");
    let src: SocketAddr = ([127, 0, 0, 1], 5060).into();
    let d = Worker::new()
        .explain(table, request.as_bytes(), src)
        .map_err(|refusal| refusal.code())?;
    let server = d.server.map(|s| {
        let s = table.server(d.serving, s);
        RouteServer {
            id: s.id.clone(),
            address: s.address.to_string(),
            transport: s.transport.as_str(),
        }
    });
    Ok(RouteDoc {
        routed: true,
        route: d.route,
        key: table.routes[d.route].key_for(method.as_bytes()).as_str(),
        home: table.pools[d.home].name.clone(),
        serving: table.pools[d.serving].name.clone(),
        server,
    })
}
