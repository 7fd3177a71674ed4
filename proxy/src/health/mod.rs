//! The health supervisor: the one task that owns server health and pool failover, and the only
//! writer of the routing table.
//!
//! Probe results, passive signals from the wire path (a 503 from a server, an ICMP port
//! unreachable on a forward), operator commands and config reloads all arrive on one channel.
//! Each updates a server's fall/rise state machine or a pool's failover state; when anything
//! routing depends on changed, the supervisor builds a new table aside and swaps it in. Because
//! one task does all of it, swaps are serialised and every table is consistent; the wire path
//! only ever loads a table and never waits for health.

mod status;
mod supervisor;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use healthcheck::{Failure, Outcome, ProbeSettings};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, HostPort};
use crate::table::RoutingTable;

pub use status::Status;

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

/// A new config for the supervisor, with the listener facts the table needs.
pub struct Reload {
    pub config: Arc<Config>,
    pub advertise: HostPort,
    pub local: Vec<SocketAddr>,
}

enum Event {
    Probe { id: Arc<str>, outcome: Outcome },
    Passive { addr: SocketAddr, failure: Failure },
    Op(Op, oneshot::Sender<Result<String, OpError>>),
    Reload(Reload, oneshot::Sender<u64>),
    Status(oneshot::Sender<Status>),
}

/// A handle on the supervisor. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Event>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Control")
    }
}

impl Control {
    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(event(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Runs an operator command; the answer says what changed.
    pub async fn op(&self, op: Op) -> Result<String, OpError> {
        self.ask(|tx| Event::Op(op, tx))
            .await
            .unwrap_or(Err(OpError::Stopped))
    }

    /// Hands a validated config to the supervisor: servers keep their health by id, pools their
    /// failover state by name. Returns the version of the table built from it.
    pub async fn reload(&self, reload: Reload) -> Option<u64> {
        self.ask(|tx| Event::Reload(reload, tx)).await
    }

    /// Pools and servers as the supervisor sees them now.
    pub async fn status(&self) -> Option<Status> {
        self.ask(Event::Status).await
    }

    /// A passive failure seen by the wire path. Never blocks: under a flood the signal is
    /// dropped, and the probes still see the server.
    pub fn passive(&self, addr: SocketAddr, failure: Failure) {
        let _ = self.tx.try_send(Event::Passive { addr, failure });
    }
}

/// Where a probe task hands each result.
type Report = Box<dyn FnMut(Outcome) + Send>;

/// Starts the probe task of one server: its address, its settings, where results go. The
/// supervisor aborts the task when the server's address or settings change or it leaves the
/// config. Real probes are [`healthcheck::probe::probe_loop`]; tests put their own in.
type Prober = Arc<dyn Fn(SocketAddr, ProbeSettings, Report) -> JoinHandle<()> + Send + Sync>;

/// Starts the supervisor for `cfg` with the first table already in `tables`; probes start at
/// once unless `probe` is false (then servers stay as the config says until an operator or a
/// passive signal changes them).
pub fn start(
    cfg: Arc<Config>,
    tables: Arc<ArcSwap<RoutingTable>>,
    probe: bool,
) -> (Control, JoinHandle<()>) {
    let prober: Prober = Arc::new(|target, settings, report| {
        tokio::spawn(healthcheck::probe::probe_loop(target, settings, report))
    });
    launch(cfg, tables, probe.then_some(prober))
}

fn launch(
    cfg: Arc<Config>,
    tables: Arc<ArcSwap<RoutingTable>>,
    prober: Option<Prober>,
) -> (Control, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let sup = supervisor::Supervisor::new(cfg, tables, prober, tx.downgrade());
    let task = tokio::spawn(sup.run(rx));
    (Control { tx }, task)
}
