//! The admin API: operator commands behind a bearer token ([`Token`]). A missing or wrong
//! token is `401`.
//!
//! With `[cluster]`, a command given here is applied here first, then forwarded to every peer
//! at once ([`crate::cluster::forward`]); the answer adds `fleet`: the peers that applied it and
//! those that did not, with why. A forwarded command (header `X-Siplb-Forwarded`) needs the
//! cluster token, not the admin token, carries its stamp (`X-Siplb-Operator-Seq`), and is
//! applied here only, never forwarded again. `/admin/reload` is never forwarded: each replica
//! reloads its own file.

use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Ops;
use crate::cluster::operator::Stamp;
use crate::cluster::{forward, segment, FORWARDED, OPERATOR_SEQ};
use crate::health::{Op, OpError, Source};
use crate::token::{constant_time_eq, Token};

/// How long a peer has to apply a forwarded command, unless `[health] timeout` is longer.
const FORWARD_WITHIN: Duration = Duration::from_secs(2);

/// Whether the request carries `Authorization: Bearer <token>` with the configured token.
fn admits(token: &Token, headers: &HeaderMap) -> bool {
    token.admits(bearer(headers))
}

/// The token of an `Authorization: Bearer <token>` header; empty when there is none.
pub(super) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 7235 §2.1).
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .unwrap_or_default()
}

fn unauthorized() -> Response {
    let body = Json(json!({ "ok": false, "error": "missing or wrong bearer token" }));
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"siplb\"")],
        body,
    )
        .into_response()
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "ok": false, "error": message.into() }))).into_response()
}

/// The answer to a command refused.
fn refused(e: &OpError) -> Response {
    let code = match e {
        OpError::UnknownPool(_) | OpError::UnknownServer(_) => StatusCode::NOT_FOUND,
        OpError::NoPair(_) | OpError::Superseded { .. } => StatusCode::CONFLICT,
        OpError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, e.to_string())
}

/// The admin path of `op`, as a peer is sent it.
fn path(op: &Op) -> String {
    match op {
        Op::Failover(p) => format!("/admin/pools/{}/failover", segment(p)),
        Op::Failback(p) => format!("/admin/pools/{}/failback", segment(p)),
        Op::Drain(id) => format!("/admin/servers/{}/drain", segment(id)),
        Op::Undrain(id) => format!("/admin/servers/{}/undrain", segment(id)),
    }
}

async fn run(ops: &Ops, headers: &HeaderMap, op: Op) -> Response {
    if headers.contains_key(FORWARDED) {
        return forwarded(ops, headers, op).await;
    }
    if !ops.proxy.token().is_configured() {
        // The routes exist for forwarded commands only: no admin API here.
        return StatusCode::NOT_FOUND.into_response();
    }
    if !admits(ops.proxy.token(), headers) {
        return unauthorized();
    }
    let path = path(&op);
    let applied = match ops.proxy.control.command(op, Source::Local).await {
        Ok(applied) => applied,
        Err(e) => return refused(&e),
    };
    let mut body = json!({ "ok": true, "message": applied.message });
    let cfg = ops.proxy.config();
    if let Some(cluster) = &cfg.cluster {
        let within = cfg.health.timeout.max(FORWARD_WITHIN);
        let fleet = forward(cluster, &path, &applied.stamp, within).await;
        body["fleet"] = json!(fleet);
    }
    Json(body).into_response()
}

/// A command a peer forwarded: the cluster token, the stamp, applied here only.
async fn forwarded(ops: &Ops, headers: &HeaderMap, op: Op) -> Response {
    let cfg = ops.proxy.config();
    let Some(cluster) = &cfg.cluster else {
        return error(
            StatusCode::NOT_FOUND,
            "no [cluster] in this replica's config: it takes no forwarded command",
        );
    };
    if !constant_time_eq(bearer(headers).as_bytes(), cluster.token.0.as_bytes()) {
        return super::cluster::refuse("forwarded operator command");
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (Some(origin), Some(seq)) = (
        text(FORWARDED),
        text(OPERATOR_SEQ).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "a forwarded command needs X-Siplb-Forwarded: <the forwarding replica's URL> and \
             X-Siplb-Operator-Seq: <its seq, a number>",
        );
    };
    let stamp = Stamp {
        seq,
        origin: origin.to_string(),
    };
    match ops
        .proxy
        .control
        .command(op, Source::Forwarded(stamp))
        .await
    {
        Ok(applied) => Json(json!({ "ok": true, "message": applied.message })).into_response(),
        Err(e) => refused(&e),
    }
}

pub(super) async fn failover(
    State(ops): State<Ops>,
    UrlPath(name): UrlPath<String>,
    h: HeaderMap,
) -> Response {
    run(&ops, &h, Op::Failover(name)).await
}

pub(super) async fn failback(
    State(ops): State<Ops>,
    UrlPath(name): UrlPath<String>,
    h: HeaderMap,
) -> Response {
    run(&ops, &h, Op::Failback(name)).await
}

pub(super) async fn drain(
    State(ops): State<Ops>,
    UrlPath(id): UrlPath<String>,
    h: HeaderMap,
) -> Response {
    run(&ops, &h, Op::Drain(id)).await
}

pub(super) async fn undrain(
    State(ops): State<Ops>,
    UrlPath(id): UrlPath<String>,
    h: HeaderMap,
) -> Response {
    run(&ops, &h, Op::Undrain(id)).await
}

pub(super) async fn reload(State(ops): State<Ops>, h: HeaderMap) -> Response {
    if !admits(ops.proxy.token(), &h) {
        return unauthorized();
    }
    match crate::reload::reload(&ops.proxy).await {
        Ok(version) => Json(json!({ "ok": true, "version": version })).into_response(),
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ok": false, "errors": errors })),
        )
            .into_response(),
    }
}
