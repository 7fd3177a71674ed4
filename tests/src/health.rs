//! What siplb says about health, read the way an operator reads it: the `GET /status` document
//! of the ops endpoint, and the one structured log line per transition (`server state changed`,
//! `pool failover changed`) on stderr.
//!
//! Tests wait on these (with deadlines) to know a phase has begun, and assert on them; what
//! users actually experienced is asserted on the peers' records, not here. `/status` itself is
//! read with [`crate::ops`].

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ops::Ops;

/// The `[log]` section that makes siplb write one JSON object per log line, so transitions can
/// be read field by field. Append it to a rendered config.
pub const JSON_LOGS: &str = "\n[log]\nformat = \"json\"\n";

/// Waits until `/status` shows server `id` in `state` (`up`, `down`, `drained`); returns its
/// `/status` entry and how long the wait took.
pub fn wait_server(ops: &Ops, id: &str, state: &str) -> (Value, Duration) {
    let start = Instant::now();
    let s = ops.wait_status(&format!("server {id} {state}"), |s| {
        s.server_state(id) == state
    });
    (s.server(id).clone(), start.elapsed())
}

/// Waits until `/status` shows pool `pool`'s users served by `serving`; returns how long the
/// wait took.
pub fn wait_serving(ops: &Ops, pool: &str, serving: &str) -> Duration {
    let start = Instant::now();
    ops.wait_status(&format!("pool {pool} served by {serving}"), |s| {
        s.serving(pool) == serving
    });
    start.elapsed()
}

/// Waits until `/status` shows pool `pool` `up` or `down`; returns how long the wait took.
pub fn wait_pool_state(ops: &Ops, pool: &str, state: &str) -> Duration {
    let start = Instant::now();
    ops.wait_status(&format!("pool {pool} {state}"), |s| {
        s.pool(pool)["state"] == state
    });
    start.elapsed()
}

/// A health transition siplb logged (with [`JSON_LOGS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `server state changed`.
    Server {
        server: String,
        from: String,
        to: String,
        reason: String,
    },
    /// `pool failover changed`.
    Pool {
        pool: String,
        serving: String,
        reason: String,
    },
}

/// The health transitions in siplb's stderr, in order (other lines are left out).
pub fn events(stderr: &str) -> Vec<Event> {
    let field = |f: &Value, k: &str| {
        f.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let f = v.get("fields")?;
            match f.get("message")?.as_str()? {
                "server state changed" => Some(Event::Server {
                    server: field(f, "server"),
                    from: field(f, "from"),
                    to: field(f, "to"),
                    reason: field(f, "reason"),
                }),
                "pool failover changed" => Some(Event::Pool {
                    pool: field(f, "pool"),
                    serving: field(f, "serving"),
                    reason: field(f, "reason"),
                }),
                _ => None,
            }
        })
        .collect()
}
