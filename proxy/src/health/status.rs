//! What `/status` shows of health: each pool with its state, the pool serving its users and its
//! failover mode, and each server with its state, since when, why, and its last probe.

use std::time::{Instant, SystemTime};

use healthcheck::{Outcome, ServerState};
use serde::Serialize;

use super::supervisor::Supervisor;

/// Health of every pool and server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    /// The version of the routing table in use.
    pub(crate) table_version: u64,
    pub(crate) pools: Vec<PoolStatus>,
    /// With `[cluster]`: the peers, their answers and the fleet's verdict on each pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<super::supervisor::fleet::ClusterStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolStatus {
    pub(crate) name: String,
    pub(crate) role: &'static str,
    pub(crate) pair: Option<String>,
    /// `up` while at least `min_up` servers are up.
    pub(crate) state: &'static str,
    /// The pool serving this pool's users now: itself, or its pair when failed over.
    pub(crate) serving: String,
    /// `auto` or `manual`.
    pub(crate) mode: &'static str,
    /// An operator holds the pool failed over.
    pub(crate) operator_failover: bool,
    /// When the pool's users were last moved (or when siplb started).
    pub(crate) since: String,
    pub(crate) reason: Option<String>,
    pub(crate) min_up: usize,
    pub(crate) servers_up: usize,
    pub(crate) servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerStatus {
    pub(crate) id: String,
    pub(crate) address: String,
    pub(crate) transport: &'static str,
    pub(crate) weight: u32,
    /// `up`, `down`, `backoff`, `held` or `drained`.
    pub(crate) state: &'static str,
    pub(crate) since: String,
    /// Why the server is in its state.
    pub(crate) reason: String,
    /// Round-trip time of the last successful probe, in milliseconds.
    pub(crate) last_rtt_ms: Option<f64>,
    /// The last probe's result.
    pub(crate) last_probe: Option<String>,
    /// Traffic counts, rate and share; the ops endpoint fills them in.
    #[serde(flatten)]
    pub(crate) traffic: Option<crate::stats::TrafficStatus>,
    /// When a backoff or hold under way runs out.
    #[serde(flatten)]
    pub(crate) out: OutStatus,
}

/// When a server backing off or held returns at the earliest (it also needs its last `rise`
/// probes to pass), as RFC 3339 UTC timestamps with milliseconds; absent when none runs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct OutStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backoff_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) held_until: Option<String>,
}

/// An `Instant` as an RFC 3339 UTC timestamp.
pub(crate) fn wall_clock(at: Instant, now: Instant) -> String {
    let t = SystemTime::now() - now.saturating_duration_since(at);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An `Instant` to come (or past) as an RFC 3339 UTC timestamp with milliseconds.
fn wall_clock_millis(at: Instant, now: Instant) -> String {
    let wall = SystemTime::now();
    let t = match at.checked_duration_since(now) {
        Some(ahead) => wall.checked_add(ahead).unwrap_or(wall),
        None => wall - now.saturating_duration_since(at),
    };
    humantime::format_rfc3339_millis(t).to_string()
}

fn probe_text(o: &Outcome) -> String {
    match o {
        Outcome::Alive { code: Some(c), .. } => format!("answered {c}"),
        Outcome::Alive { code: None, .. } => "connected".into(),
        Outcome::Failed(f) => f.to_string(),
    }
}

pub(super) fn build(sup: &Supervisor, now: Instant) -> Status {
    let pools = sup
        .cfg
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let fo = &sup.pools[i];
            let servers: Vec<ServerStatus> = p
                .servers
                .iter()
                .filter_map(|s| {
                    let e = sup.servers.get(s.id.as_str())?;
                    Some(ServerStatus {
                        id: s.id.clone(),
                        address: s.address.to_string(),
                        transport: s.transport.as_str(),
                        weight: s.weight,
                        state: e.health.state().as_str(),
                        since: wall_clock(e.health.since, now),
                        reason: e.health.reason.to_string(),
                        last_rtt_ms: e.health.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                        last_probe: e.health.last_outcome.as_ref().map(probe_text),
                        traffic: None,
                        out: OutStatus {
                            backoff_until: e
                                .health
                                .backoff_until()
                                .map(|at| wall_clock_millis(at, now)),
                            held_until: e.health.held_until().map(|at| wall_clock_millis(at, now)),
                        },
                    })
                })
                .collect();
            let servers_up = servers
                .iter()
                .filter(|s| s.state == ServerState::Up.as_str())
                .count();
            let serving = match (fo.failed_over(), sup.pair_of(i)) {
                (true, Some(j)) => sup.cfg.pools[j].name.clone(),
                _ => p.name.clone(),
            };
            PoolStatus {
                name: p.name.clone(),
                role: p.role.as_str(),
                pair: p.pair.clone(),
                state: if sup.pool_up(i) { "up" } else { "down" },
                serving,
                mode: p.failover.as_str(),
                operator_failover: fo.forced(),
                since: wall_clock(fo.since, now),
                reason: fo.reason.map(|r| r.to_string()),
                min_up: p.min_up,
                servers_up,
                servers,
            }
        })
        .collect();
    Status {
        table_version: sup.version(),
        pools,
        cluster: sup.cluster_status(),
    }
}
