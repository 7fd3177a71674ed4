//! The health supervisor: the one task that owns server health and pool failover, and the only
//! writer of the routing table.
//!
//! Probe results, passive signals from the wire path (a 503 from a server, an ICMP port
//! unreachable on a forward) and operator commands all arrive on one channel. Each one updates
//! the server's fall/rise state machine or the pool's failover state; when anything routing
//! depends on changed, the supervisor builds a new table aside and swaps it in. Because one task
//! does all of it, swaps are serialised and every table is consistent; the wire path only ever
//! loads a table and never waits for health.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use healthcheck::probe::{probe_loop, ProbeKind as Kind, ProbeSettings};
use healthcheck::{
    FailoverChange, Failure, Mode, Outcome, PoolFailover, ServerHealth, ServerState, Thresholds,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, FailoverMode, HostPort, PoolConfig, ProbeKind};
use crate::table::{HealthView, RoutingTable};

/// What an operator can do (DESIGN.md "Ops HTTP contract"; the library form of the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Serve this pool's users from its pair now (Lync's `Invoke-CsPoolFailOver`).
    Failover(String),
    /// Send them home (`Invoke-CsPoolFailBack`); clears an operator's failover.
    Failback(String),
    /// Take a server out of hashing.
    Drain(String),
    /// Put it back.
    Undrain(String),
}

/// Why an operator command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    #[error("no server with id {0:?}")]
    UnknownServer(String),
    #[error("pool {0:?} has no pair to fail over to")]
    NoPair(String),
    #[error("siplb is stopping")]
    Stopped,
}

enum Event {
    Probe { id: Arc<str>, outcome: Outcome },
    Passive { addr: SocketAddr, failure: Failure },
    Op(Op, oneshot::Sender<Result<String, OpError>>),
}

/// A handle on the supervisor: operator commands and passive signals. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Event>,
}

impl Control {
    /// Runs an operator command; the answer says what changed.
    pub async fn op(&self, op: Op) -> Result<String, OpError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Op(op, tx))
            .await
            .map_err(|_| OpError::Stopped)?;
        rx.await.map_err(|_| OpError::Stopped)?
    }

    /// A passive failure seen by the wire path. Never blocks: under a flood the signal is
    /// dropped, and the probes still see the server.
    pub fn passive(&self, addr: SocketAddr, failure: Failure) {
        let _ = self.tx.try_send(Event::Passive { addr, failure });
    }
}

/// Settings of one server's probes.
#[derive(Clone, Copy, PartialEq)]
struct ProbePlan {
    settings: ProbeSettings,
    thresholds: Thresholds,
}

fn plan(pool: &PoolConfig) -> ProbePlan {
    let h = &pool.health;
    let kind = match h.probe {
        ProbeKind::Options => Kind::Options,
        ProbeKind::TcpConnect => Kind::TcpConnect,
    };
    ProbePlan {
        settings: ProbeSettings {
            kind,
            interval: h.interval,
            timeout: h.timeout,
        },
        thresholds: Thresholds {
            fall: h.fall,
            rise: h.rise,
        },
    }
}

struct ServerEntry {
    pool: usize,
    address: SocketAddr,
    health: ServerHealth,
    plan: ProbePlan,
    probe: Option<JoinHandle<()>>,
}

/// The supervisor's state: everything routing needs to know about health.
struct Supervisor {
    cfg: Arc<Config>,
    advertise: HostPort,
    local: Vec<SocketAddr>,
    tables: Arc<ArcSwap<RoutingTable>>,
    version: u64,
    servers: HashMap<Arc<str>, ServerEntry>,
    by_addr: HashMap<SocketAddr, Arc<str>>,
    pools: Vec<PoolFailover>,
    tx: mpsc::WeakSender<Event>,
}

impl HealthView for Supervisor {
    fn server_state(&self, id: &str) -> Option<ServerState> {
        self.servers.get(id).map(|s| s.health.state())
    }
    fn failed_over(&self, pool: &str) -> bool {
        let i = self.cfg.pools.iter().position(|p| p.name == pool);
        i.is_some_and(|i| self.pools[i].failed_over())
    }
}

/// Starts the supervisor for `cfg` with the first table already in `tables`; probes start at
/// once. With `probe = false` no probe runs (servers stay as the config says until an operator
/// or a passive signal changes them) — for tools and tests that want the table alone.
pub fn start(
    cfg: Arc<Config>,
    tables: Arc<ArcSwap<RoutingTable>>,
    probe: bool,
) -> (Control, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let now = Instant::now();
    let table = tables.load();
    let mut sup = Supervisor {
        advertise: table.advertise.clone(),
        local: table.local().to_vec(),
        version: table.version,
        tables: tables.clone(),
        servers: HashMap::new(),
        by_addr: HashMap::new(),
        pools: Vec::new(),
        tx: tx.downgrade(),
        cfg,
    };
    drop(table);
    for (pi, p) in sup.cfg.clone().pools.iter().enumerate() {
        let mode = match p.failover {
            FailoverMode::Auto => Mode::Auto,
            FailoverMode::Manual => Mode::Manual,
        };
        sup.pools
            .push(PoolFailover::new(mode, p.failback_after, now));
        for s in &p.servers {
            let id: Arc<str> = Arc::from(s.id.as_str());
            sup.by_addr.insert(s.address, id.clone());
            let entry = ServerEntry {
                pool: pi,
                address: s.address,
                health: ServerHealth::new(now, s.drained),
                plan: plan(p),
                probe: None,
            };
            sup.servers.insert(id, entry);
        }
    }
    if probe {
        let ids: Vec<Arc<str>> = sup.servers.keys().cloned().collect();
        for id in ids {
            sup.spawn_probe(&id);
        }
    }
    let task = tokio::spawn(sup.run(rx));
    (Control { tx }, task)
}

impl Supervisor {
    fn spawn_probe(&mut self, id: &Arc<str>) {
        let Some(tx) = self.tx.upgrade() else { return };
        let Some(entry) = self.servers.get_mut(id) else {
            return;
        };
        let (target, settings, id) = (entry.address, entry.plan.settings, id.clone());
        entry.probe = Some(tokio::spawn(probe_loop(target, settings, move |outcome| {
            let _ = tx.try_send(Event::Probe {
                id: id.clone(),
                outcome,
            });
        })));
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        loop {
            let deadline = self.pools.iter().filter_map(PoolFailover::deadline).min();
            let wake = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut changed = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                _ = wake => false,
            };
            changed |= self.evaluate_pools(Instant::now());
            if changed {
                self.swap();
            }
        }
        for s in self.servers.values() {
            if let Some(p) = &s.probe {
                p.abort();
            }
        }
    }

    /// Applies one event; true when routing may have changed.
    fn on_event(&mut self, ev: Event) -> bool {
        let now = Instant::now();
        match ev {
            Event::Probe { id, outcome } => self.record(&id, outcome, now),
            Event::Passive { addr, failure } => match self.by_addr.get(&addr).cloned() {
                Some(id) => self.record(&id, Outcome::Failed(failure), now),
                None => false,
            },
            Event::Op(op, reply) => {
                let result = self.operate(op, now);
                let changed = result.is_ok();
                let _ = reply.send(result);
                changed
            }
        }
    }

    fn record(&mut self, id: &Arc<str>, outcome: Outcome, now: Instant) -> bool {
        let Some(entry) = self.servers.get_mut(id) else {
            return false;
        };
        let Some(t) = entry.health.record(outcome, entry.plan.thresholds, now) else {
            return false;
        };
        let pool = &self.cfg.pools[entry.pool].name;
        tracing::warn!(server = %id, pool = %pool, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "server state changed");
        true
    }

    fn operate(&mut self, op: Op, now: Instant) -> Result<String, OpError> {
        let pool_index = |name: &str| {
            self.cfg
                .pools
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| OpError::UnknownPool(name.into()))
        };
        let answer = match op {
            Op::Failover(name) => {
                let i = pool_index(&name)?;
                let pair = self.cfg.pools[i]
                    .pair
                    .clone()
                    .ok_or_else(|| OpError::NoPair(name.clone()))?;
                let change = self.pools[i].operator_failover(now);
                self.log_failover(i, change);
                format!("pool {name} is served by {pair}")
            }
            Op::Failback(name) => {
                let i = pool_index(&name)?;
                let change = self.pools[i].operator_failback(now);
                self.log_failover(i, change);
                format!("pool {name} is served at home")
            }
            Op::Drain(id) | Op::Undrain(id) if !self.servers.contains_key(id.as_str()) => {
                return Err(OpError::UnknownServer(id));
            }
            Op::Drain(id) => self.set_drained(&id, true, now),
            Op::Undrain(id) => self.set_drained(&id, false, now),
        };
        tracing::info!(answer = %answer, "operator command");
        Ok(answer)
    }

    fn set_drained(&mut self, id: &str, drained: bool, now: Instant) -> String {
        if let Some(entry) = self.servers.get_mut(id) {
            if let Some(t) = entry.health.set_drained(drained, now) {
                tracing::warn!(server = %id, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "server state changed");
            }
            return format!("server {id} is {}", entry.health.state().as_str());
        }
        String::new()
    }

    /// Re-evaluates every pool's failover; true when any pool moved.
    fn evaluate_pools(&mut self, now: Instant) -> bool {
        let up: Vec<bool> = (0..self.cfg.pools.len()).map(|i| self.pool_up(i)).collect();
        let mut changed = false;
        for i in 0..self.pools.len() {
            let pair = self.cfg.pools[i]
                .pair
                .as_deref()
                .and_then(|n| self.cfg.pools.iter().position(|p| p.name == n));
            let pair_up = pair.is_some_and(|j| up[j]);
            let change = self.pools[i].evaluate(up[i], pair_up, now);
            changed |= change.is_some();
            self.log_failover(i, change);
        }
        changed
    }

    fn pool_up(&self, i: usize) -> bool {
        let up = self
            .servers
            .values()
            .filter(|s| s.pool == i && s.health.state().takes_traffic())
            .count();
        up >= self.cfg.pools[i].min_up
    }

    fn log_failover(&self, i: usize, change: Option<FailoverChange>) {
        let Some(c) = change else { return };
        let pool = &self.cfg.pools[i];
        let serving = if c.failed_over {
            pool.pair.as_deref().unwrap_or("none")
        } else {
            pool.name.as_str()
        };
        tracing::warn!(pool = %pool.name, serving, reason = ?c.reason, "pool failover changed");
    }

    fn swap(&mut self) {
        self.version += 1;
        let table = RoutingTable::build(
            &self.cfg,
            self.advertise.clone(),
            self.local.clone(),
            self.version,
            self,
        );
        self.tables.store(Arc::new(table));
        metrics::counter!("siplb_table_swaps_total").increment(1);
        tracing::debug!(version = self.version, "routing table swapped");
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Control")
    }
}
