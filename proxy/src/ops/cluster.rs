//! `GET /cluster/view`: this replica's own view of every pool, for the other replicas of its
//! fleet and the witness, behind the `[cluster]` token. A missing or wrong token is `401` and
//! counted (`siplb_cluster_auth_failures_total`); it changes nothing else. Without `[cluster]`
//! the view does not exist (`404`). The view carries this replica's operator state, which a
//! peer that missed a command adopts from.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::admin::bearer;
use super::Ops;
use crate::cluster::{digest, View};
use crate::config::Config;
use crate::health::Control;
use crate::token::constant_time_eq;

/// `401` to a request without the cluster token (`what` names it in the log line), counted in
/// `siplb_cluster_auth_failures_total`.
pub(super) fn refuse(what: &str) -> Response {
    metrics::counter!("siplb_cluster_auth_failures_total").increment(1);
    tracing::debug!("{what} refused: missing or wrong cluster token");
    let body = Json(json!({ "ok": false, "error": "missing or wrong cluster token" }));
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"siplb-cluster\"")],
        body,
    )
        .into_response()
}

pub(super) async fn view(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    let cfg = ops.proxy.config();
    let replica = cfg.ops.listen.map(|a| a.to_string()).unwrap_or_default();
    answer(&cfg, replica, &ops.proxy.control, &headers, true).await
}

/// The answer to `GET /cluster/view` of an observer that runs `cfg` with its ops endpoint at
/// `replica`, its own view asked of `control`'s supervisor: a replica's, or a witness's (the
/// same document, so that replicas count both alike). `routes` says whether the observer
/// routes users, and so holds operator state to publish; a witness does not.
pub(crate) async fn answer(
    cfg: &Config,
    replica: String,
    control: &Control,
    headers: &HeaderMap,
    routes: bool,
) -> Response {
    let Some(cluster) = &cfg.cluster else {
        return (
            StatusCode::NOT_FOUND,
            "no [cluster] in this replica's config\n",
        )
            .into_response();
    };
    if !constant_time_eq(bearer(headers).as_bytes(), cluster.token.0.as_bytes()) {
        return refuse("cluster view");
    }
    let Some((pools, operator)) = control.view().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "siplb is stopping\n").into_response();
    };
    Json(View {
        replica,
        config_digest: digest(cfg),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pools,
        operator: routes.then_some(operator),
    })
    .into_response()
}
