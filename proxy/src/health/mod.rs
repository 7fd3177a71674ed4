//! The health supervisor: the one task that owns server health and pool failover, and the only
//! writer of the routing table.
//!
//! Probe results, passive signals from the wire path (a 503 from a server, an ICMP port
//! unreachable on a forward), operator commands and config reloads, and the fleet's exchange
//! rounds (`[cluster]`) arrive on four channels (see [`Inbox`]), so that a flood of passive
//! signals can never crowd out a probe result. Each updates a server's fall/rise state machine
//! or a pool's failover state (with `[cluster]`, as the fleet's verdict says); when anything
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
use healthcheck::{Failure, Outcome, ProbeNow, ProbeSettings, Target};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cluster::operator::{Stamp, Subject};
use crate::cluster::{OperatorView, PoolView, Round};
use crate::config::{Config, HostPort};
use crate::events::Events;
use crate::table::RoutingTable;

#[cfg(test)]
pub(crate) use status::PoolStatus;
pub(crate) use status::ServerStatus;
pub(crate) use status::Status;
pub(crate) use supervisor::fleet::ClusterStatus;
#[cfg(test)]
pub(crate) use supervisor::fleet::{ObserverView, PeerStatus, PoolVerdict};

/// What an operator can do (DESIGN.md "Ops HTTP contract"; the library form of the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Serve this pool's users from its pair now (Lync's `Invoke-CsPoolFailOver`).
    Failover(String),
    /// Send them home (`Invoke-CsPoolFailBack`); clears an operator's failover.
    Failback(String),
    /// Take a server out of hashing.
    Drain(String),
    /// Put it back.
    Undrain(String),
}

impl Op {
    /// The pool or server the command is about.
    pub(crate) fn target(&self) -> Subject {
        match self {
            Op::Failover(p) | Op::Failback(p) => Subject::Pool(p.clone()),
            Op::Drain(id) | Op::Undrain(id) => Subject::Server(id.clone()),
        }
    }
}

/// Where an operator command comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// An operator on this replica (the admin API, the demo): stamped here.
    Local,
    /// A peer that forwarded its operator's command, with the command's stamp.
    Forwarded(Stamp),
}

/// An operator command applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// What changed, in words.
    pub(crate) message: String,
    /// The command's stamp ([`crate::cluster::operator`]).
    pub(crate) stamp: Stamp,
}

/// Why an operator command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    #[error("no server with id {0:?}")]
    UnknownServer(String),
    #[error("pool {0:?} has no pair to fail over to")]
    NoPair(String),
    #[error("a newer operator command on {what} stands (seq {seq} from {origin})")]
    Superseded {
        what: String,
        seq: u64,
        origin: String,
    },
    #[error("siplb is stopping")]
    Stopped,
}

/// A new config for the supervisor, with the listener facts the table needs.
pub(crate) struct Reload {
    pub(crate) config: Arc<Config>,
    pub(crate) advertise: HostPort,
    pub(crate) local: crate::table::Local,
}

/// What operators and reloads ask of the supervisor; each waits for its answer.
enum Command {
    Op(Op, Source, oneshot::Sender<Result<Applied, OpError>>),
    Reload(Reload, oneshot::Sender<u64>),
    Status(oneshot::Sender<Status>),
    /// This replica's own view of every pool and its operator state, for `/cluster/view`.
    View(oneshot::Sender<(Vec<PoolView>, OperatorView)>),
}

/// One probe result, for the server with this id.
struct ProbeResult {
    id: Arc<str>,
    outcome: Outcome,
}

/// A passive failure seen by the wire path at a server's address.
struct Passive {
    addr: SocketAddr,
    failure: Failure,
}

/// Passive signals waiting for the supervisor, at most. Beyond that the wire path sheds them
/// (counted in `siplb_passive_signals_shed_total`) rather than wait: a flood of them says no more
/// than the first few, and the server's probes still run.
const PASSIVE_QUEUE: usize = 4096;

/// Exchange rounds waiting for the supervisor, at most; one more is dropped (the next comes an
/// interval later and says more).
const FLEET_QUEUE: usize = 4;

/// The supervisor's four inputs, each on its own channel so that none can crowd out another:
/// commands (operators, reloads, status; bounded, senders wait), probe results (unbounded: at
/// most a few per server per probe interval, and never dropped), the fleet's exchange rounds
/// (bounded, one per interval) and passive signals (bounded, shed when full).
struct Inbox {
    commands: mpsc::Receiver<Command>,
    probes: mpsc::UnboundedReceiver<ProbeResult>,
    fleet: mpsc::Receiver<Round>,
    passive: mpsc::Receiver<Passive>,
}

/// A handle on the supervisor. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Control {
    commands: mpsc::Sender<Command>,
    passive: mpsc::Sender<Passive>,
    fleet: mpsc::Sender<Round>,
    /// The pools this replica alone cannot reach while the fleet reaches them (`[cluster]`).
    unreachable: Arc<ArcSwap<Vec<String>>>,
    /// Notified when this replica's own view of a pool changes (`[cluster]`): the exchange
    /// asks the peers at once rather than at its next interval.
    hurry: Arc<tokio::sync::Notify>,
    /// Each routing table the supervisor swaps in, as it swaps it in.
    swapped: tokio::sync::watch::Receiver<Arc<RoutingTable>>,
    /// The recent health, failover, drain and reload events.
    events: Arc<Events>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Control")
    }
}

impl Control {
    /// Wakes on every routing table the supervisor swaps in (the current one is in the
    /// receiver from the start): what must act on a health change — closing the connections of
    /// a server gone down — waits on this rather than looking at the table again and again.
    pub(crate) fn swaps(&self) -> tokio::sync::watch::Receiver<Arc<RoutingTable>> {
        self.swapped.clone()
    }

    /// The recent health, failover, drain and reload events (the supervisor records them; a
    /// refused reload is recorded by whoever tried it).
    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Runs an operator command given on this replica; the answer says what changed.
    pub(crate) async fn op(&self, op: Op) -> Result<String, OpError> {
        self.command(op, Source::Local).await.map(|a| a.message)
    }

    /// Runs an operator command from `source`; the answer says what changed and how the
    /// command is stamped. A forwarded command older than the last one on its pool or server
    /// is refused ([`OpError::Superseded`]).
    pub(crate) async fn command(&self, op: Op, source: Source) -> Result<Applied, OpError> {
        self.ask(|tx| Command::Op(op, source, tx))
            .await
            .unwrap_or(Err(OpError::Stopped))
    }

    /// Hands a validated config to the supervisor: servers keep their health by id, pools their
    /// failover state by name. Returns the version of the table built from it.
    pub(crate) async fn reload(&self, reload: Reload) -> Option<u64> {
        self.ask(|tx| Command::Reload(reload, tx)).await
    }

    /// Pools and servers as the supervisor sees them now.
    pub(crate) async fn status(&self) -> Option<Status> {
        self.ask(Command::Status).await
    }

    /// This replica's own view of every pool (its probes', not where users are served) and
    /// the operator state it holds.
    pub(crate) async fn view(&self) -> Option<(Vec<PoolView>, OperatorView)> {
        self.ask(Command::View).await
    }

    /// Hands an exchange round to the supervisor; never waits (a round that finds
    /// [`FLEET_QUEUE`] waiting is dropped).
    pub(crate) fn fleet(&self, round: Round) {
        if self.fleet.try_send(round).is_err() {
            tracing::debug!("exchange round dropped: the supervisor has not taken the last ones");
        }
    }

    /// What the exchange waits on besides its interval: notified when this replica's own view
    /// of a pool changes.
    pub(crate) fn hurry(&self) -> Arc<tokio::sync::Notify> {
        self.hurry.clone()
    }

    /// The pools this replica alone sees down while the fleet's verdict is up: while there is
    /// one, this replica is not ready.
    pub(crate) fn unreachable(&self) -> Arc<Vec<String>> {
        self.unreachable.load_full()
    }

    /// A passive failure seen by the wire path. Never blocks: when [`PASSIVE_QUEUE`] signals
    /// already wait, this one is shed and counted; probe results travel apart and are never
    /// crowded out.
    pub(crate) fn passive(&self, addr: SocketAddr, failure: Failure) {
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.passive.try_send(Passive { addr, failure })
        {
            metrics::counter!("siplb_passive_signals_shed_total").increment(1);
        }
    }
}

/// Where a probe task hands each result.
type Report = Box<dyn FnMut(Outcome) + Send>;

/// Starts the probe task of one server: its address, transport and TLS settings, its probe
/// settings, where results go. The supervisor aborts the task when any of these change or the
/// server leaves the config. Real probes are [`healthcheck::probe::probe_loop`]; tests put
/// their own in.
/// The [`ProbeNow`] given is how the supervisor asks that task for a probe at once.
type Prober = Arc<dyn Fn(Target, ProbeSettings, ProbeNow, Report) -> JoinHandle<()> + Send + Sync>;

/// Starts the supervisor for `cfg` with the first table already in `tables`; probes start at
/// once unless `probe` is false (then servers stay as the config says until an operator or a
/// passive signal changes them).
pub(crate) fn start(
    cfg: Arc<Config>,
    tables: Arc<ArcSwap<RoutingTable>>,
    probe: bool,
) -> (Control, JoinHandle<()>) {
    let prober: Prober = Arc::new(|target, settings, now, report| {
        tokio::spawn(healthcheck::probe::probe_loop(
            target, settings, now, report,
        ))
    });
    launch(cfg, tables, probe.then_some(prober))
}

fn launch(
    cfg: Arc<Config>,
    tables: Arc<ArcSwap<RoutingTable>>,
    prober: Option<Prober>,
) -> (Control, JoinHandle<()>) {
    let (commands, commands_rx) = mpsc::channel(64);
    let (passive, passive_rx) = mpsc::channel(PASSIVE_QUEUE);
    let (probes, probes_rx) = mpsc::unbounded_channel();
    let (fleet, fleet_rx) = mpsc::channel(FLEET_QUEUE);
    let unreachable = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let hurry = Arc::new(tokio::sync::Notify::new());
    let (swaps, swapped) = tokio::sync::watch::channel(tables.load_full());
    let events = Arc::new(Events::default());
    let sup = supervisor::Supervisor::new(cfg, tables, prober, probes)
        .announcing(swaps)
        .recording(events.clone())
        .publishing(unreachable.clone(), hurry.clone());
    let inbox = Inbox {
        commands: commands_rx,
        probes: probes_rx,
        fleet: fleet_rx,
        passive: passive_rx,
    };
    let task = tokio::spawn(sup.run(inbox));
    (
        Control {
            commands,
            passive,
            fleet,
            unreachable,
            hurry,
            swapped,
            events,
        },
        task,
    )
}
