//! The admin API: operator commands behind a bearer token.
//!
//! The token comes from `[ops] admin_token_file` or, failing that, `SIPLB_ADMIN_TOKEN`. It is
//! compared in constant time; a missing or wrong one is `401`. The file is read again on every
//! config reload, so a token can be rotated without a restart.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Ops;
use crate::config::Config;
use crate::health::{Op, OpError};

/// The admin token, shared by the handlers and refreshed on reload.
#[derive(Clone, Default)]
pub struct Token(Arc<ArcSwapOption<String>>);

impl Token {
    /// Reads the token as `cfg` says: its `admin_token_file`, else `SIPLB_ADMIN_TOKEN`. An
    /// unreadable or empty file is an error (running with an admin API the operator believes
    /// is protected by a file that is not there would be worse).
    pub fn load(cfg: &Config) -> anyhow::Result<Token> {
        let t = Token::default();
        t.refresh(cfg)?;
        Ok(t)
    }

    /// A token fixed by the program (the demo's), not read from the config.
    pub fn fixed(token: &str) -> Token {
        let t = Token::default();
        t.0.store(Some(Arc::new(token.to_string())));
        t
    }

    /// The token itself, to show to the person who runs the demo.
    pub fn secret(&self) -> Option<String> {
        self.0.load_full().map(|t| t.to_string())
    }

    /// Reads the token again (after a config reload).
    pub fn refresh(&self, cfg: &Config) -> anyhow::Result<()> {
        let token = match &cfg.ops.admin_token_file {
            Some(file) => Some(read_token(file)?),
            None => std::env::var("SIPLB_ADMIN_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        self.0.store(token.map(Arc::new));
        Ok(())
    }

    /// Whether an admin API exists at all.
    pub fn is_configured(&self) -> bool {
        self.0.load().is_some()
    }

    /// Whether the request carries `Authorization: Bearer <token>`.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = self.0.load_full() else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 7235 §2.1).
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim)
            .unwrap_or_default();
        constant_time_eq(given.as_bytes(), expected.as_bytes())
    }
}

fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read admin_token_file {}: {e}", file.display()))?;
    let token = text.trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "admin_token_file {} is empty",
        file.display()
    );
    Ok(token)
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
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
    if !ops.token.admits(headers) {
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
    if !ops.token.admits(&h) {
        return unauthorized();
    }
    match crate::reload::reload(&ops.proxy, &ops.token).await {
        Ok(version) => Json(json!({ "ok": true, "version": version })).into_response(),
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ok": false, "errors": errors })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
