//! The supervisor task: server and pool state, probe tasks, and the table it swaps in.

mod damping;
pub(super) mod fleet;
mod operator;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use healthcheck::probe::ProbeSettings;
use healthcheck::{
    FailoverChange, FailoverReason, Failure, Outcome, PoolFailover, ProbeNow, Reason, ServerHealth,
    ServerState, Target, Thresholds, TlsClient, Transition,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{status, Command, Inbox, Op, OpError, Passive, ProbeResult, Prober, Reload};
use crate::cluster::operator::Ledger;
use crate::config::{Config, HostPort, PoolConfig, ServerConfig, Transport};
use crate::events::{Event, Events, Kind};
use crate::table::{HealthView, RoutingTable};
use crate::tls::client::ServerTls;

/// The supervisor's clock: tokio's, so that tests run it under a paused clock
/// (`tokio::time::pause`, `advance`) and failback timers fire when the test says.
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Settings of one server's probes.
#[derive(Clone, Copy, PartialEq)]
pub(super) struct ProbePlan {
    settings: ProbeSettings,
    thresholds: Thresholds,
}

fn plan(pool: &PoolConfig) -> ProbePlan {
    let h = &pool.health;
    ProbePlan {
        settings: ProbeSettings {
            kind: h.probe,
            interval: h.interval,
            timeout: h.timeout,
            confirm: h.fall.saturating_sub(1),
            first_after: Duration::ZERO,
        },
        thresholds: Thresholds {
            fall: h.fall,
            rise: h.rise,
        },
    }
}

/// The fastest pace at which first probes go out when many servers start at once.
const FIRST_PROBES_PER_SECOND: u32 = 1000;

/// When the first probe of the `i`-th of `n` servers whose probes start together goes out: the
/// first at once, the rest spread evenly over one probe interval, or at
/// [`FIRST_PROBES_PER_SECOND`] when that is sooner. A reload that adds thousands of servers
/// then probes them at the pace it will keep, instead of sending thousands of OPTIONS (and
/// opening as many sockets) in one instant; a reload that adds a few probes them at once.
fn first_probe_after(i: usize, n: usize, interval: Duration) -> Duration {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    (interval / n * i).min(Duration::from_secs(1) / FIRST_PROBES_PER_SECOND * i)
}

/// How a server's probes reach it: its own transport and, for TLS, its TLS settings.
#[derive(Clone)]
struct Link {
    transport: healthcheck::Transport,
    tls: Option<TlsClient>,
    /// [`ServerTls::fingerprint`]: when it changes (a renewed certificate, another CA or
    /// name), the probe restarts with the new settings.
    fingerprint: Option<u64>,
}

impl Link {
    fn of(server: &ServerConfig, tls: &ServerTls) -> Link {
        let transport = match server.transport {
            Transport::Udp => healthcheck::Transport::Udp,
            Transport::Tcp => healthcheck::Transport::Tcp,
            Transport::Tls => healthcheck::Transport::Tls,
        };
        let client = tls
            .connector(&server.id)
            .map(|(connector, name)| TlsClient { connector, name });
        Link {
            transport,
            tls: client,
            fingerprint: tls.fingerprint(&server.id),
        }
    }

    fn same_as(&self, other: &Link) -> bool {
        self.transport == other.transport
            && self.fingerprint == other.fingerprint
            && self.tls.is_some() == other.tls.is_some()
    }
}

pub(super) struct ServerEntry {
    pub(crate) pool: usize,
    pub(crate) address: SocketAddr,
    pub(crate) health: ServerHealth,
    plan: ProbePlan,
    link: Link,
    probe: Option<JoinHandle<()>>,
    /// Asks the probe task for a probe at once (a passive signal to confirm).
    probe_now: ProbeNow,
    /// Whether the server has stopped answering what it is forwarded.
    silence: SilenceWatch,
}

/// Forwarded requests in a row that must go unanswered past the probe timeout before the
/// supervisor asks for a probe (a hung server's sign, [`SilenceWatch`]).
pub(super) const SILENT_AFTER: u64 = 5;

/// How often the supervisor reads every server's unanswered count.
pub(super) const SILENCE_TICK: Duration = Duration::from_millis(50);

/// Hears a server that swallows requests (stopped, wedged) before its next probe. It reads,
/// every [`SILENCE_TICK`], how many requests have been forwarded to the server since its last
/// response, and how many responses it has sent in all ([`crate::stats::ServerCells::silence`]).
/// When a sample at least `timeout` old counted [`SILENT_AFTER`] or more waiting requests, and
/// no response has come since, those requests went unanswered past the timeout, in a row. It
/// says so at most once per `timeout`. What is done with it is only ever to ask for a probe.
#[derive(Debug, Default)]
pub(super) struct SilenceWatch {
    /// (when, unanswered, responses), oldest first; none older than the newest sample that is
    /// at least `timeout` old.
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
    last_alarm: Option<Instant>,
}

impl SilenceWatch {
    /// Takes one sample; true when the server has been silent as described above.
    pub(super) fn observe(
        &mut self,
        now: Instant,
        unanswered: u64,
        responses: u64,
        timeout: Duration,
    ) -> bool {
        if unanswered == 0 {
            self.samples.clear();
            return false;
        }
        if self
            .samples
            .front()
            .is_some_and(|&(_, _, r)| r != responses)
        {
            // An answer came since: what waited then is not waiting in a row any more.
            self.samples.clear();
        }
        self.samples.push_back((now, unanswered, responses));
        while self.samples.len() >= 2 && now.duration_since(self.samples[1].0) >= timeout {
            self.samples.pop_front();
        }
        let Some(&(then, waiting, _)) = self.samples.front() else {
            return false;
        };
        let alarm = now.duration_since(then) >= timeout
            && waiting >= SILENT_AFTER
            && self
                .last_alarm
                .is_none_or(|at| now.duration_since(at) >= timeout);
        if alarm {
            self.last_alarm = Some(now);
        }
        alarm
    }
}

impl Drop for ServerEntry {
    fn drop(&mut self) {
        if let Some(p) = &self.probe {
            p.abort();
        }
    }
}

pub(super) struct Supervisor {
    pub(crate) cfg: Arc<Config>,
    advertise: HostPort,
    local: crate::table::Local,
    tables: Arc<ArcSwap<RoutingTable>>,
    version: u64,
    pub(crate) servers: HashMap<Arc<str>, ServerEntry>,
    by_addr: HashMap<SocketAddr, Arc<str>>,
    /// Failover state, in the order of `cfg.pools`.
    pub(crate) pools: Vec<PoolFailover>,
    /// Starts probe tasks; `None`: no probing.
    prober: Option<Prober>,
    /// Where probe tasks send their results.
    probes: mpsc::UnboundedSender<ProbeResult>,
    /// Where each table swapped in is announced (`Control::swaps`); `None` in tests that do
    /// not listen.
    swaps: Option<tokio::sync::watch::Sender<Arc<RoutingTable>>>,
    /// Where health, failover, drain and reload events are recorded for `/status`.
    events: Arc<Events>,
    /// With `[cluster]`: the last exchange round and the fleet's verdicts.
    fleet: fleet::Fleet,
    /// When servers' backoffs and holds run out ([`damping`]).
    out_timers: damping::Timers,
    /// The stamp of the last operator command on each pool and server.
    ledger: Ledger,
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

impl Supervisor {
    pub(crate) fn new(
        cfg: Arc<Config>,
        tables: Arc<ArcSwap<RoutingTable>>,
        prober: Option<Prober>,
        probes: mpsc::UnboundedSender<ProbeResult>,
    ) -> Self {
        let table = tables.load_full();
        let mut sup = Supervisor {
            cfg: cfg.clone(),
            advertise: table.advertise.clone(),
            local: table.local().clone(),
            version: table.version,
            tables,
            servers: HashMap::new(),
            by_addr: HashMap::new(),
            pools: Vec::new(),
            prober,
            probes,
            swaps: None,
            events: Arc::default(),
            fleet: fleet::Fleet::default(),
            out_timers: damping::Timers::default(),
            ledger: Ledger::default(),
        };
        sup.reconcile(cfg, now());
        sup
    }

    /// Announces every table it swaps in on `swaps`.
    pub(crate) fn announcing(
        mut self,
        swaps: tokio::sync::watch::Sender<Arc<RoutingTable>>,
    ) -> Self {
        swaps.send_replace(self.tables.load_full());
        self.swaps = Some(swaps);
        self
    }

    /// Records its events in `events`.
    pub(crate) fn recording(mut self, events: Arc<Events>) -> Self {
        self.events = events;
        self
    }

    /// Publishes the pools this replica alone cannot reach in `unreachable`, and notifies
    /// `hurry` when its own view of a pool changes.
    pub(crate) fn publishing(
        mut self,
        unreachable: Arc<ArcSwap<Vec<String>>>,
        hurry: Arc<tokio::sync::Notify>,
    ) -> Self {
        self.fleet.shared = unreachable;
        self.fleet.hurry = hurry;
        self
    }

    pub(crate) async fn run(mut self, mut inbox: Inbox) {
        // Gauges are published on every change and refreshed on this tick; the exporter drops
        // a gauge nobody refreshed for a while, which is how a server or pool removed by a
        // reload leaves /metrics.
        let mut gauges = tokio::time::interval(crate::stats::GAUGE_REFRESH);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut silence = tokio::time::interval(SILENCE_TICK);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A pool the fleet holds (no verdict) is not evaluated, so its timer cannot fire.
            let deadline = self
                .pools
                .iter()
                .enumerate()
                .filter(|&(i, _)| !self.fleet.holds(i))
                .filter_map(|(_, p)| p.deadline())
                .chain(self.out_timers.next())
                .min();
            let wake = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            // Pools are evaluated when a server's state changed or a failback timer is due:
            // otherwise their inputs are what they were, and a probe that changes nothing
            // costs no walk over every server (10,000 servers send 10,000 results a second).
            let mut due = false;
            // In this order, so that passive signals, however many, come last.
            let mut changed = tokio::select! {
                biased;
                command = inbox.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(ProbeResult { id, outcome }) = inbox.probes.recv() => {
                    self.on_probe(&id, outcome, now())
                }
                Some(round) = inbox.fleet.recv() => {
                    // A command a peer holds and this replica missed is applied first, so
                    // that the pools are evaluated with it.
                    let adopted = self.adopt(&round, now());
                    self.fleet.take(round, now());
                    due = true;
                    adopted
                }
                _ = wake => {
                    due = true;
                    self.end_outs(now())
                }
                _ = gauges.tick() => {
                    self.publish_gauges();
                    false
                }
                _ = silence.tick() => {
                    self.watch_silence(now());
                    false
                }
                Some(Passive { addr, failure }) = inbox.passive.recv() => {
                    match self.by_addr.get(&addr).cloned() {
                        Some(id) => self.on_passive(&id, failure, now()),
                        None => false,
                    }
                }
            };
            if changed || due {
                changed |= self.evaluate_pools(now());
            }
            if changed {
                self.swap();
            }
        }
    }

    /// Applies one command (swapping in a new table itself when one changed routing); true when
    /// routing may still have to be re-evaluated.
    fn on_command(&mut self, command: Command) -> bool {
        let now = now();
        match command {
            Command::Op(op, source, reply) => {
                let result = self.command(op, source, now);
                // The table is swapped before the answer goes out: an operator (or a script)
                // that sends a request once the command is answered finds it routed the new way.
                if result.is_ok() {
                    self.evaluate_pools(now);
                    self.swap();
                }
                let _ = reply.send(result);
                false
            }
            Command::Reload(reload, reply) => {
                let Reload {
                    config,
                    advertise,
                    local,
                } = reload;
                self.advertise = advertise;
                self.local = local;
                let before: Vec<Arc<str>> = self.servers.keys().cloned().collect();
                self.reconcile(config, now);
                let removed = before
                    .iter()
                    .filter(|id| !self.servers.contains_key(*id))
                    .count();
                let added = self.servers.len() + removed - before.len();
                self.events.record(Event::now(
                    Kind::Reload,
                    format!(
                        "config reload: {} added, {removed} removed, {} in {}",
                        count(added, "server"),
                        count(self.servers.len(), "server"),
                        count(self.cfg.pools.len(), "pool")
                    ),
                ));
                self.evaluate_pools(now);
                self.swap();
                let _ = reply.send(self.version);
                false
            }
            Command::Status(reply) => {
                let _ = reply.send(status::build(self, now));
                false
            }
            Command::View(reply) => {
                let _ = reply.send((self.own_view(now), self.operator_view()));
                false
            }
        }
    }

    /// Adopts `cfg`: servers keep their health by id and pools their failover state by name;
    /// new servers start up, removed ones stop being probed.
    fn reconcile(&mut self, cfg: Arc<Config>, now: Instant) {
        let old_cfg = std::mem::replace(&mut self.cfg, cfg.clone());
        let server_tls = ServerTls::build(&cfg).unwrap_or_else(|e| {
            // Validation read these files; one that changed since leaves the pool's TLS
            // servers without settings, and their TLS probes fail saying so.
            tracing::warn!(error = %format!("{e:#}"), "TLS settings of servers unusable");
            ServerTls::default()
        });
        let mut old_pools: HashMap<String, PoolFailover> = old_cfg
            .pools
            .iter()
            .map(|p| p.name.clone())
            .zip(std::mem::take(&mut self.pools))
            .collect();
        let old_drained: HashMap<&str, bool> = old_cfg
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(|s| (s.id.as_str(), s.drained)))
            .collect();
        let mut old_servers = std::mem::take(&mut self.servers);
        self.by_addr.clear();
        let mut to_probe: Vec<Arc<str>> = Vec::new();
        for (pi, p) in cfg.pools.iter().enumerate() {
            let mut failover = old_pools
                .remove(&p.name)
                .unwrap_or_else(|| PoolFailover::new(p.failover, p.failback_after, now));
            failover.mode = p.failover;
            failover.failback_after = p.failback_after;
            self.pools.push(failover);
            let plan = plan(p);
            for s in &p.servers {
                let id: Arc<str> = Arc::from(s.id.as_str());
                let link = Link::of(s, &server_tls);
                self.by_addr.insert(s.address, id.clone());
                let mut entry = match old_servers.remove(&id) {
                    Some(mut e) => {
                        if old_drained
                            .get(s.id.as_str())
                            .is_some_and(|&d| d != s.drained)
                            && e.health.set_drained(s.drained, now).is_some()
                        {
                            let (kind, says) = if s.drained {
                                (Kind::Drain, "drained = true")
                            } else {
                                (Kind::Undrain, "drained = false")
                            };
                            self.events.record(
                                Event::now(kind, format!("config reload: {says}"))
                                    .pool(&p.name)
                                    .server(&s.id),
                            );
                        }
                        e
                    }
                    None => ServerEntry {
                        pool: pi,
                        address: s.address,
                        health: ServerHealth::new(now, s.drained),
                        plan,
                        link: link.clone(),
                        probe: None,
                        probe_now: ProbeNow::default(),
                        silence: SilenceWatch::default(),
                    },
                };
                let stale =
                    entry.address != s.address || entry.plan != plan || !entry.link.same_as(&link);
                entry.health.set_damping(p.health.damping);
                entry.pool = pi;
                entry.address = s.address;
                entry.plan = plan;
                entry.link = link;
                if stale || entry.probe.is_none() {
                    to_probe.push(id.clone());
                }
                self.servers.insert(id, entry);
            }
        }
        // What is left in old_servers was removed from the config: dropping it stops its probe.
        let n = to_probe.len();
        for (i, id) in to_probe.iter().enumerate() {
            let Some(mut entry) = self.servers.remove(id) else {
                continue;
            };
            let first_after = first_probe_after(i, n, entry.plan.settings.interval);
            self.spawn_probe(id, &mut entry, first_after);
            self.servers.insert(id.clone(), entry);
        }
    }

    fn spawn_probe(&self, id: &Arc<str>, entry: &mut ServerEntry, first_after: Duration) {
        if let Some(p) = entry.probe.take() {
            p.abort();
        }
        let Some(prober) = &self.prober else { return };
        let target = Target {
            addr: entry.address,
            transport: entry.link.transport,
            tls: entry.link.tls.clone(),
        };
        let (tx, mut settings) = (self.probes.clone(), entry.plan.settings);
        settings.first_after = first_after;
        entry.probe_now = ProbeNow::default();
        let id = id.clone();
        let report = Box::new(move |outcome| {
            // Fails only once the supervisor is gone, and then nobody needs the result.
            let _ = tx.send(ProbeResult {
                id: id.clone(),
                outcome,
            });
        });
        entry.probe = Some(prober(target, settings, entry.probe_now.clone(), report));
    }

    /// A passive signal from the wire path about server `id`. It always asks the server's probe
    /// for a probe at once, and the probes decide. An ICMP error also counts as a failure, as a
    /// failed probe does, but only while the server's pool keeps at least half of its servers
    /// out of `down` — past that, only probes take servers down, so that a burst of signals
    /// cannot empty a pool onto its survivors. A 503 never counts: a busy server is not a dead
    /// one (its answer was relayed and counted by the wire path). A 503 with `Retry-After`
    /// backs the server off if the probe asked for fails too, under the same half-the-pool
    /// rule ([`Self::on_probe`]). Silence (requests unanswered,
    /// [`SilenceWatch`]) is a suspicion: it counts towards `fall` but never completes it, so only
    /// a failed probe takes the server down. True when a state changed.
    fn on_passive(&mut self, id: &Arc<str>, failure: Failure, now: Instant) -> bool {
        let Some(entry) = self.servers.get_mut(id) else {
            return false;
        };
        entry.probe_now.ask();
        if let Failure::Passive503RetryAfter(seconds) = failure {
            // Backs the server off only if the probe just asked for fails ([`Self::on_probe`]).
            entry.health.busy(Duration::from_secs(u64::from(seconds)));
        }
        let pool = entry.pool;
        let (signal, effect) = match failure {
            Failure::Passive503 | Failure::Passive503RetryAfter(_) => ("503", "probe_asked"),
            Failure::Silent => ("silence", "suspected"),
            _ if self.passive_may_take_down(pool, id) => ("icmp", "counted"),
            _ => ("icmp", "probe_asked"),
        };
        metrics::counter!("siplb_passive_signals_total",
            "pool" => self.cfg.pools[pool].name.clone(),
            "signal" => signal,
            "effect" => effect)
        .increment(1);
        match effect {
            "counted" => self.record(id, Outcome::Failed(failure), now),
            "suspected" => {
                // One failure towards `fall` if more are needed: the probe just asked for,
                // failing, then completes the verdict; passing, it clears the suspicion.
                if let Some(entry) = self.servers.get_mut(id) {
                    entry.health.suspect(entry.plan.thresholds);
                }
                false
            }
            _ => false,
        }
    }

    /// Reads every server's unanswered count ([`SilenceWatch`]) and asks the probe of each
    /// server found silent for a probe at once.
    fn watch_silence(&mut self, now: Instant) {
        let table = self.tables.load();
        let mut silent = Vec::new();
        for cells in table.counters.servers.iter().flatten() {
            let (pool, id) = cells.labels();
            let Some(entry) = self.servers.get_mut(&**id) else {
                continue;
            };
            if self.cfg.pools[entry.pool].name != **pool {
                continue;
            }
            let (unanswered, responses) = cells.silence();
            let timeout = entry.plan.settings.timeout;
            if entry.silence.observe(now, unanswered, responses, timeout) {
                silent.push(id.clone());
            }
        }
        for id in silent {
            tracing::debug!(server = %id, "forwarded requests unanswered past the probe timeout: probing now");
            self.on_passive(&id, Failure::Silent, now);
        }
    }

    /// Whether a passive signal may take server `id` of pool `pool` down (or back it off): it
    /// is out already, or the pool would then have at most half of its servers out (down,
    /// backing off or held).
    fn passive_may_take_down(&self, pool: usize, id: &str) -> bool {
        let servers = &self.cfg.pools[pool].servers;
        let state = |sid: &str| self.servers.get(sid).map(|e| e.health.state());
        if state(id) != Some(ServerState::Up) {
            return true;
        }
        let down = servers
            .iter()
            .filter(|s| state(&s.id).is_some_and(ServerState::is_out))
            .count();
        (down + 1) * 2 <= servers.len()
    }

    fn record(&mut self, id: &Arc<str>, outcome: Outcome, now: Instant) -> bool {
        let Some(entry) = self.servers.get_mut(id) else {
            return false;
        };
        let pool = &self.cfg.pools[entry.pool].name;
        if let Outcome::Alive { rtt, .. } = outcome {
            metrics::histogram!("siplb_probe_rtt_seconds", "pool" => pool.clone())
                .record(rtt.as_secs_f64());
        }
        let Some(t) = entry.health.record(outcome, entry.plan.thresholds, now) else {
            return false;
        };
        self.note(id, t);
        true
    }

    /// Logs, records as an event and counts a change of server `id`'s state, and times the end
    /// of a backoff or hold it began.
    fn note(&mut self, id: &Arc<str>, t: Transition) {
        let Some(entry) = self.servers.get(id) else {
            return;
        };
        let pool = &self.cfg.pools[entry.pool].name;
        tracing::warn!(server = %id, pool = %pool, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "server state changed");
        let message = health_message(&t, entry.plan.thresholds);
        self.events
            .record(Event::now(Kind::Health, message).pool(pool).server(id));
        if t.to == ServerState::Held {
            metrics::counter!("siplb_flap_holds_total", "pool" => pool.clone()).increment(1);
        }
        if let Some(at) = entry.health.deadline() {
            self.out_timers.at(at, id.clone());
        }
    }

    /// Applies an operator command; `note` (empty, or e.g. ` (adopted from URL)`) follows the
    /// command's name in its event and log line.
    fn operate(&mut self, op: Op, now: Instant, note: &str) -> Result<String, OpError> {
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
                self.log_failover_noted(i, change, note);
                format!("pool {name} is served by {pair}")
            }
            Op::Failback(name) => {
                let i = pool_index(&name)?;
                let change = self.pools[i].operator_failback(now);
                self.log_failover_noted(i, change, note);
                format!("pool {name} is served at home")
            }
            Op::Drain(id) => self.set_drained(&id, true, now, note)?,
            Op::Undrain(id) => self.set_drained(&id, false, now, note)?,
        };
        tracing::info!(answer = %answer, source = note.trim(), "operator command");
        Ok(answer)
    }

    fn set_drained(
        &mut self,
        id: &str,
        drained: bool,
        now: Instant,
        note: &str,
    ) -> Result<String, OpError> {
        let entry = self
            .servers
            .get_mut(id)
            .ok_or_else(|| OpError::UnknownServer(id.into()))?;
        if let Some(t) = entry.health.set_drained(drained, now) {
            tracing::warn!(server = %id, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "server state changed");
            let (kind, what) = if drained {
                (Kind::Drain, "drain")
            } else {
                (Kind::Undrain, "undrain")
            };
            let pool = &self.cfg.pools[entry.pool].name;
            self.events.record(
                Event::now(
                    kind,
                    format!(
                        "operator {what}{note}: {} → {}",
                        t.from.as_str(),
                        t.to.as_str()
                    ),
                )
                .pool(pool)
                .server(id),
            );
        }
        Ok(format!("server {id} is {}", entry.health.state().as_str()))
    }

    /// The version of the table in use.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Whether pool `i` is up ([`healthcheck::pool::is_up`]).
    pub(crate) fn pool_up(&self, i: usize) -> bool {
        // The pool's own servers by id, not a walk over every server: evaluating every pool
        // stays linear in the servers, however many pools there are.
        let states = self.cfg.pools[i]
            .servers
            .iter()
            .filter_map(|s| self.servers.get(s.id.as_str()))
            .map(|s| s.health.state());
        healthcheck::pool::is_up(states, self.cfg.pools[i].min_up)
    }

    /// The index of pool `i`'s pair.
    pub(crate) fn pair_of(&self, i: usize) -> Option<usize> {
        let name = self.cfg.pools[i].pair.as_deref()?;
        self.cfg.pools.iter().position(|p| p.name == name)
    }

    /// Re-evaluates every pool's failover; true when any pool moved.
    fn evaluate_pools(&mut self, now: Instant) -> bool {
        let up: Vec<bool> = (0..self.cfg.pools.len()).map(|i| self.pool_up(i)).collect();
        self.fleet.track_own(&self.cfg, &up, now);
        if let Some(cluster) = self.cfg.cluster.clone() {
            return self.evaluate_with_fleet(&cluster, &up, now);
        }
        self.fleet.forget();
        let mut changed = false;
        for i in 0..self.pools.len() {
            let pair_up = self.pair_of(i).is_some_and(|j| up[j]);
            let change = self.pools[i].evaluate(up[i], pair_up, now);
            changed |= change.is_some();
            self.log_failover(i, change);
        }
        changed
    }

    fn log_failover(&self, i: usize, change: Option<FailoverChange>) {
        self.log_failover_noted(i, change, "");
    }

    /// [`Supervisor::log_failover`], with `note` after an operator command's name.
    fn log_failover_noted(&self, i: usize, change: Option<FailoverChange>, note: &str) {
        let Some(c) = change else { return };
        let pool = &self.cfg.pools[i];
        let serving = if c.failed_over {
            pool.pair.as_deref().unwrap_or("none")
        } else {
            pool.name.as_str()
        };
        tracing::warn!(pool = %pool.name, serving, reason = %c.reason, "pool failover changed");
        let kind = if c.failed_over {
            Kind::Failover
        } else {
            Kind::Failback
        };
        let message = match c.reason {
            FailoverReason::Operator if c.failed_over => {
                format!("operator failover{note}: users served by {serving}")
            }
            FailoverReason::Operator => format!("operator failback{note}: users served at home"),
            reason if c.failed_over => format!("{reason}: users served by {serving}"),
            reason => format!("{reason}: users served at home"),
        };
        self.events
            .record(Event::now(kind, message).pool(&pool.name));
    }

    fn swap(&mut self) {
        self.version += 1;
        // Real time, not the supervisor's clock: how long this task was busy building.
        let started = std::time::Instant::now();
        let mut table = RoutingTable::build(
            &self.cfg,
            self.advertise.clone(),
            self.local.clone(),
            self.version,
            self,
        );
        table.carry_traffic(&self.tables.load());
        let table = Arc::new(table);
        metrics::histogram!("siplb_table_build_seconds").record(started.elapsed().as_secs_f64());
        self.tables.store(table.clone());
        if let Some(swaps) = &self.swaps {
            swaps.send_replace(table);
        }
        metrics::counter!("siplb_table_swaps_total").increment(1);
        tracing::debug!(version = self.version, "routing table swapped");
        self.publish_gauges();
    }

    /// Server up, pool up and failover gauges (and with `[cluster]`, the pools this replica
    /// alone cannot reach), labelled by configured names only.
    fn publish_gauges(&self) {
        self.publish_fleet_gauges();
        for (i, p) in self.cfg.pools.iter().enumerate() {
            let up = if self.pool_up(i) { 1.0 } else { 0.0 };
            metrics::gauge!("siplb_pool_up", "pool" => p.name.clone()).set(up);
            let failed = if self.pools[i].failed_over() {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("siplb_pool_failed_over", "pool" => p.name.clone()).set(failed);
            for s in &p.servers {
                let state = self.servers.get(s.id.as_str()).map(|e| e.health.state());
                let up = if state == Some(ServerState::Up) {
                    1.0
                } else {
                    0.0
                };
                metrics::gauge!("siplb_server_up", "pool" => p.name.clone(), "server" => s.id.clone()).set(up);
            }
        }
    }
}

/// `1 server`, `3 servers`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What a server's change of state says in the event list: the change, and why — how many
/// probes in a row, and the last one's result.
fn health_message(t: &Transition, th: Thresholds) -> String {
    let change = format!("{} → {}", t.from.as_str(), t.to.as_str());
    let probes = |n: u32| {
        if n == 1 {
            "1 probe".to_string()
        } else {
            format!("{n} probes in a row")
        }
    };
    match t.reason {
        Reason::Failed(failure) => {
            format!("{change}: {} failed, the last: {failure}", probes(th.fall))
        }
        Reason::Probes { .. } => format!("{change}: {} succeeded ({})", probes(th.rise), t.reason),
        reason => format!("{change}: {reason}"),
    }
}

#[cfg(test)]
mod silence_tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn requests_unanswered_past_the_timeout_in_a_row_raise_one_alarm_per_timeout() {
        let t0 = Instant::now();
        let mut w = SilenceWatch::default();
        // 5 requests wait at t0, none is answered; more keep coming.
        assert!(!w.observe(t0, 5, 10, TIMEOUT));
        assert!(
            !w.observe(at(t0, 250), 12, 10, TIMEOUT),
            "not old enough yet"
        );
        assert!(
            w.observe(at(t0, 500), 20, 10, TIMEOUT),
            "5 waited past the timeout"
        );
        assert!(
            !w.observe(at(t0, 750), 27, 10, TIMEOUT),
            "one alarm per timeout"
        );
        assert!(
            w.observe(at(t0, 1000), 33, 10, TIMEOUT),
            "still silent a timeout later"
        );
    }

    #[test]
    fn an_answer_or_too_few_requests_raise_nothing() {
        let t0 = Instant::now();
        let mut w = SilenceWatch::default();
        // Too few waited past the timeout.
        assert!(!w.observe(t0, SILENT_AFTER - 1, 3, TIMEOUT));
        assert!(!w.observe(at(t0, 600), 40, 3, TIMEOUT));
        // A response came since: the run starts again.
        assert!(!w.observe(at(t0, 700), 8, 4, TIMEOUT));
        assert!(!w.observe(at(t0, 1100), 30, 4, TIMEOUT), "only 400 ms old");
        assert!(
            w.observe(at(t0, 1200), 35, 4, TIMEOUT),
            "the 8 of 700 ms waited 500 ms"
        );
        // Nothing waiting: a busy, answering server is never silent.
        let mut busy = SilenceWatch::default();
        for i in 0..100u64 {
            assert!(!busy.observe(at(t0, i * 50), i % 3, i, TIMEOUT));
        }
    }
}
