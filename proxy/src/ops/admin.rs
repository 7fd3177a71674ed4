//! The admin API: operator commands behind a bearer token ([`Token`]). A missing or wrong
//! token is `401`.

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Ops;
use crate::health::{Op, OpError};
use crate::token::Token;

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

async fn run(ops: &Ops, headers: &HeaderMap, op: Op) -> Response {
    if !admits(ops.proxy.token(), headers) {
        return unauthorized();
    }
    match ops.proxy.control.op(op).await {
        Ok(message) => Json(json!({ "ok": true, "message": message })).into_response(),
        Err(e) => {
            let code = match e {
                OpError::UnknownPool(_) | OpError::UnknownServer(_) => StatusCode::NOT_FOUND,
                OpError::NoPair(_) => StatusCode::CONFLICT,
                OpError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            };
            (code, Json(json!({ "ok": false, "error": e.to_string() }))).into_response()
        }
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
