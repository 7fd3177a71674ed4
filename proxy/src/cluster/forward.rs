//! An operator command given on this replica, sent on to every peer (not the witness: it
//! routes nothing) at once, each within its own bound, with the cluster token and the
//! command's stamp. A peer applies it and never forwards it again; the answer says which
//! peers applied it and which did not, and why.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::client::{self, GetError};
use super::operator::Stamp;
use crate::config::{Cluster, Observer};

/// The header that marks a forwarded command; its value is the forwarding replica's URL (the
/// command's origin).
pub(crate) const FORWARDED: &str = "x-siplb-forwarded";

/// The header that carries a forwarded command's seq (its stamp with [`FORWARDED`]).
pub(crate) const OPERATOR_SEQ: &str = "x-siplb-operator-seq";

/// The `fleet` part of an admin answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct FleetAnswer {
    /// The peers that applied the command.
    pub(crate) applied: Vec<String>,
    /// The peers that did not, each with why.
    pub(crate) not_applied: Vec<NotApplied>,
}

/// A peer that did not apply a forwarded command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NotApplied {
    pub(crate) peer: String,
    /// `timeout`, `refused`, `garbled`, or the HTTP status it answered (`401`, `404`, …).
    pub(crate) error: String,
    /// What the peer said, when it said why (e.g. `no server with id "x"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// Sends `POST path` stamped `stamp` to every peer of `cluster` at once, each within `bound`;
/// counts each in `siplb_cluster_forwards_total{peer,result}`.
pub(crate) async fn forward(
    cluster: &Cluster,
    path: &str,
    stamp: &Stamp,
    bound: Duration,
) -> FleetAnswer {
    let mut sends = JoinSet::new();
    for (i, peer) in cluster.peers.iter().enumerate() {
        let (peer, token, path, stamp) = (
            peer.clone(),
            cluster.token.0.clone(),
            path.to_string(),
            stamp.clone(),
        );
        sends.spawn(async move { (i, send(&peer, &token, &path, &stamp, bound).await) });
    }
    let mut results: Vec<Option<Result<(), NotApplied>>> = vec![None; cluster.peers.len()];
    while let Some(done) = sends.join_next().await {
        if let Ok((i, r)) = done {
            results[i] = Some(r);
        }
    }
    let mut answer = FleetAnswer::default();
    for (peer, result) in cluster.peers.iter().zip(results) {
        let result = result.unwrap_or_else(|| {
            Err(NotApplied {
                peer: peer.url.clone(),
                error: "garbled".into(),
                detail: None,
            })
        });
        let label = match &result {
            Ok(()) => "applied".to_string(),
            Err(n) => n.error.clone(),
        };
        metrics::counter!("siplb_cluster_forwards_total",
            "peer" => peer.url.clone(), "result" => label)
        .increment(1);
        match result {
            Ok(()) => answer.applied.push(peer.url.clone()),
            Err(n) => {
                tracing::info!(peer = %n.peer, error = %n.error, detail = ?n.detail, path, "operator command not applied by a peer");
                answer.not_applied.push(n);
            }
        }
    }
    answer
}

/// Forwards the command to one peer within `bound`.
async fn send(
    peer: &Observer,
    token: &str,
    path: &str,
    stamp: &Stamp,
    bound: Duration,
) -> Result<(), NotApplied> {
    let seq = stamp.seq.to_string();
    let headers = [
        (FORWARDED, stamp.origin.as_str()),
        (OPERATOR_SEQ, seq.as_str()),
    ];
    let sent =
        tokio::time::timeout(bound, client::post(&peer.authority, path, token, &headers)).await;
    let fail = |error: String, detail: Option<String>| NotApplied {
        peer: peer.url.clone(),
        error,
        detail,
    };
    let (code, body) = match sent {
        Err(_) => return Err(fail("timeout".into(), None)),
        Ok(Err(GetError::Unreachable(e))) => {
            return Err(fail("refused".into(), Some(e.to_string())))
        }
        Ok(Err(GetError::NotHttp)) => return Err(fail("garbled".into(), None)),
        Ok(Ok(answer)) => answer,
    };
    if code == 200 {
        return Ok(());
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    Err(fail(code.to_string(), detail))
}

/// A path segment (a pool's name, a server's id) percent-encoded for a request line: every
/// byte but RFC 3986's unreserved characters and `:`.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterToken;

    #[test]
    fn segments_keep_ids_readable_and_encode_the_rest() {
        assert_eq!(segment("fe-dc1"), "fe-dc1");
        assert_eq!(segment("127.0.0.1:5071"), "127.0.0.1:5071");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_there_is_named_refused() {
        // Bind then drop: nothing listens there any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cluster = Cluster {
            peers: vec![Observer {
                url: format!("http://{addr}"),
                authority: addr.to_string(),
            }],
            witness: None,
            token: ClusterToken("t".into()),
        };
        let stamp = Stamp {
            seq: 1,
            origin: "http://127.0.0.1:1".into(),
        };
        let a = forward(
            &cluster,
            "/admin/pools/a/failover",
            &stamp,
            Duration::from_secs(2),
        )
        .await;
        assert!(a.applied.is_empty());
        assert_eq!(a.not_applied.len(), 1);
        assert_eq!(
            (
                a.not_applied[0].peer.as_str(),
                a.not_applied[0].error.as_str()
            ),
            (cluster.peers[0].url.as_str(), "refused")
        );
    }
}
