//! `[cluster]`: the other replicas' ops endpoints, an optional witness, and the shared token.
//!
//! Each URL is `http://HOST:PORT` (the observer's `[ops] listen`; plain HTTP, as the ops
//! endpoint speaks), given once. The token comes from `token_file` or, failing that,
//! `SIPLB_CLUSTER_TOKEN`; a `[cluster]` without one is an error, because an exchange nobody
//! authenticates would let anyone who reaches the ops port vote on failover.

use std::ops::Range;

use super::super::raw::{RawCluster, Str};
use super::super::{Cluster, ClusterToken, Observer};
use super::values;
use super::Ctx;

/// What an observer's URL must look like.
const URL_ACCEPTED: &str = "use http://HOST:PORT, the observer's [ops] listen, e.g. \
                            http://10.0.0.2:9060";

/// The environment variable the token is read from when `token_file` is not given.
pub(crate) const TOKEN_ENV: &str = "SIPLB_CLUSTER_TOKEN";

/// Reads `[cluster]`; `None` when the file has none (or it has errors, recorded on `ctx`).
pub(super) fn cluster(
    ctx: &mut Ctx<'_>,
    raw: Option<&toml::Spanned<RawCluster>>,
) -> Option<Cluster> {
    let span = raw?.span();
    let raw = raw?.get_ref();
    let before = ctx.errors.len();
    let mut peers: Vec<Observer> = Vec::new();
    for (i, v) in raw.peers.iter().enumerate() {
        let key = format!("cluster.peers[{i}]");
        if let Some(o) = observer(ctx, v, &key) {
            if peers.iter().any(|p| p.url == o.url) {
                ctx.error(
                    v.span(),
                    key,
                    format!("\"{}\" is named twice; give each peer once", o.url),
                );
                continue;
            }
            peers.push(o);
        }
    }
    let witness = raw.witness.as_ref().and_then(|v| {
        let o = observer(ctx, v, "cluster.witness")?;
        if peers.iter().any(|p| p.url == o.url) {
            ctx.error(
                v.span(),
                "cluster.witness",
                format!(
                    "\"{}\" is also a peer; the witness is a third vantage point, not one of \
                     the replicas",
                    o.url
                ),
            );
            return None;
        }
        Some(o)
    });
    if raw.peers.is_empty() && raw.witness.is_none() {
        ctx.error(
            span.clone(),
            "cluster",
            "[cluster] names no peer and no witness; list the other replicas' ops endpoints in \
             peers = [\"http://HOST:PORT\", ...], or leave [cluster] out for a replica that \
             decides alone",
        );
    }
    let token = token(ctx, raw, span);
    if ctx.errors.len() > before {
        return None;
    }
    Some(Cluster {
        peers,
        witness,
        token: token?,
    })
}

/// The token: `token_file`'s content, else `SIPLB_CLUSTER_TOKEN`.
fn token(ctx: &mut Ctx<'_>, raw: &RawCluster, span: Range<usize>) -> Option<ClusterToken> {
    let Some(file) = &raw.token_file else {
        let from_env = std::env::var(TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if from_env.is_none() {
            ctx.error(
                span,
                "cluster.token_file",
                format!(
                    "[cluster] has no token; give token_file = \"PATH\" (a file holding a shared \
                     secret, e.g. from `openssl rand -hex 16`) or set {TOKEN_ENV}, the same on \
                     every replica"
                ),
            );
        }
        return from_env.map(ClusterToken);
    };
    let base = ctx.base_dir();
    let path = values::file_path(ctx, file, "cluster.token_file", &base)?;
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Some(ClusterToken(text.trim().to_string())),
        Ok(_) => {
            ctx.error(
                file.span(),
                "cluster.token_file",
                format!(
                    "{} is empty; put the shared secret in it, e.g. `openssl rand -hex 16`",
                    path.display()
                ),
            );
            None
        }
        Err(e) => {
            ctx.error(
                file.span(),
                "cluster.token_file",
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

fn observer(ctx: &mut Ctx<'_>, v: &Str, key: &str) -> Option<Observer> {
    match parse_url(v.get_ref()) {
        Ok(o) => Some(o),
        Err(message) => {
            ctx.error(v.span(), key, message);
            None
        }
    }
}

/// `http://HOST:PORT` (a trailing `/` allowed) → the observer, or what is wrong with it.
pub(super) fn parse_url(s: &str) -> Result<Observer, String> {
    let Some(rest) = s.strip_prefix("http://") else {
        return Err(if s.contains("://") {
            format!("\"{s}\" is not an http:// URL (the ops endpoint speaks plain HTTP); {URL_ACCEPTED}")
        } else {
            format!("\"{s}\" is not a URL; {URL_ACCEPTED}")
        });
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "\"{s}\" has a path, query or user part; give the endpoint only: {URL_ACCEPTED}"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (h, p),
        _ => return Err(format!("\"{s}\" has no port; {URL_ACCEPTED}")),
    };
    values::check_host(host).map_err(|why| format!("\"{s}\": {why}; {URL_ACCEPTED}"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(format!(
                "\"{s}\" has an invalid port \"{port}\"; use a port from 1 to 65535"
            ))
        }
    }
    Ok(Observer {
        url: format!("http://{authority}"),
        authority: authority.to_string(),
    })
}
