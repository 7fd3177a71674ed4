//! The fleet's part in the supervisor (`[cluster]`): automatic failover and failback follow
//! the verdict of this replica's own view counted with its peers' and the witness's
//! ([`crate::cluster::tally`]), and a pool that only this replica sees down makes it not ready
//! instead of moving its users.
//!
//! - A verdict `Up` or `Down` on a pool and on its pair feeds [`PoolFailover::evaluate`] as if
//!   it were this replica's own view; the hold time of a failback runs on the fleet's view.
//! - `Undecided` (no quorum, a tie) on either holds the pool: its placement stays as it is and
//!   its failback timer does not fire.
//! - A round older than [`STALE_ROUNDS`] intervals counts as no round: a stalled exchange
//!   cannot keep deciding on old views.
//!
//! [`PoolFailover::evaluate`]: healthcheck::PoolFailover::evaluate

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use healthcheck::quorum::{Tally, Verdict};
use serde::Serialize;

use super::Supervisor;
use crate::cluster::{self, PoolView, Round};
use crate::config::{Cluster, Config};

/// A round is used for this many `[health] interval`s after it arrived, and no longer.
pub(super) const STALE_ROUNDS: u32 = 3;

/// What the supervisor knows of the fleet.
#[derive(Default)]
pub(crate) struct Fleet {
    /// The last exchange round and when it arrived.
    round: Option<(Round, Instant)>,
    /// This replica's own view of each pool by name: up, and since when.
    own: HashMap<String, (bool, Instant)>,
    /// The count of each pool (in config order) at the last evaluation with `[cluster]`.
    tallies: Vec<Tally>,
    /// Pools (in config order) held at the last evaluation: no verdict on them or their pair.
    held: Vec<bool>,
    /// Pools this replica alone sees down while the fleet's verdict is up.
    unreachable: Vec<String>,
    /// Where `unreachable` is published for `/readyz`.
    pub(super) shared: Arc<ArcSwap<Vec<String>>>,
    /// Notified when this replica's own view of a pool changes, so that the exchange asks the
    /// peers at once: the fleet's verdict then waits for the peers' probes, not for the next
    /// exchange interval as well.
    pub(super) hurry: Arc<tokio::sync::Notify>,
}

impl Fleet {
    /// Takes a new exchange round.
    pub(super) fn take(&mut self, round: Round, now: Instant) {
        self.round = Some((round, now));
    }

    /// Whether pool `i` was held (no verdict) at the last evaluation.
    pub(super) fn holds(&self, i: usize) -> bool {
        self.held.get(i).copied().unwrap_or(false)
    }

    /// Notes this replica's own view of every pool (`up`, in config order).
    pub(super) fn track_own(&mut self, cfg: &Config, up: &[bool], now: Instant) {
        self.own
            .retain(|name, _| cfg.pools.iter().any(|p| p.name == *name));
        let mut changed = false;
        for (p, &up) in cfg.pools.iter().zip(up) {
            match self.own.get_mut(&p.name) {
                Some(seen) if seen.0 == up => {}
                Some(seen) => {
                    *seen = (up, now);
                    changed = true;
                }
                None => {
                    self.own.insert(p.name.clone(), (up, now));
                }
            }
        }
        if changed && cfg.cluster.is_some() {
            self.hurry.notify_one();
        }
    }

    /// Without `[cluster]` (a reload took it out): nothing of the fleet holds any more.
    pub(super) fn forget(&mut self) {
        self.round = None;
        self.tallies.clear();
        self.held.clear();
        self.set_unreachable(Vec::new());
    }

    /// The last round, unless it is older than [`STALE_ROUNDS`] intervals.
    fn fresh_round(&self, now: Instant, cfg: &Config) -> Option<&Round> {
        let (round, at) = self.round.as_ref()?;
        let max_age = cfg.health.interval * STALE_ROUNDS;
        (now.saturating_duration_since(*at) <= max_age).then_some(round)
    }

    /// Publishes the pools this replica alone cannot reach, logging each that starts or stops
    /// being one.
    fn set_unreachable(&mut self, now: Vec<String>) {
        for pool in now.iter().filter(|p| !self.unreachable.contains(p)) {
            tracing::warn!(pool = %pool, "pool unreachable from this replica while the fleet reaches it: not ready, users stay where the fleet serves them");
        }
        for pool in self.unreachable.iter().filter(|p| !now.contains(p)) {
            tracing::info!(pool = %pool, "pool no longer unreachable from this replica alone: ready again as far as it goes");
        }
        if now != self.unreachable {
            self.shared.store(Arc::new(now.clone()));
            self.unreachable = now;
        }
    }
}

/// `/status` `cluster`: who is asked, how they answer and what the fleet decided.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterStatus {
    /// Observers configured: this replica, its peers and the witness.
    pub(crate) observers: usize,
    /// Answers (this replica's included) needed for any verdict.
    pub(crate) quorum: usize,
    pub(crate) peers: Vec<PeerStatus>,
    pub(crate) pools: Vec<PoolVerdict>,
    /// Pools this replica alone cannot reach (it is not ready while there is one).
    pub(crate) unreachable: Vec<String>,
    /// The operator's commands as this replica holds them (what its view publishes).
    pub(crate) operator: cluster::OperatorView,
}

/// One peer (or the witness) in `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PeerStatus {
    pub(crate) url: String,
    /// The last exchange's result (`ok`, `timeout`, `refused`, `unauthorized`, `http_error`,
    /// `garbled`, `other_config`), or `waiting` before the first round.
    pub(crate) result: &'static str,
    pub(crate) last_ok: Option<String>,
    pub(crate) config_matches: Option<bool>,
    pub(crate) witness: bool,
    /// The newest operator command's seq in its last view (`None`: no view, or a witness).
    pub(crate) operator_seq: Option<u64>,
}

/// The fleet's verdict on one pool in `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolVerdict {
    pub(crate) name: String,
    /// `up`, `down` or `undecided`.
    pub(crate) verdict: &'static str,
    pub(crate) answered: usize,
    pub(crate) down: usize,
    /// This replica's own view of the pool: `up` or `down`.
    pub(crate) own: &'static str,
    /// Every other observer's view of it in the last round, peers then witness.
    pub(crate) views: Vec<ObserverView>,
    /// The views that answered (this replica's included) do not all say the same.
    pub(crate) disagree: bool,
}

/// One observer's view of one pool in `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ObserverView {
    pub(crate) observer: String,
    /// `up`, `down`, or `no_answer` (no view this round, another config, or no such pool).
    pub(crate) view: &'static str,
}

fn up_str(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Up => "up",
        Verdict::Down => "down",
        Verdict::Undecided => "undecided",
    }
}

impl Supervisor {
    /// [`Supervisor::evaluate_pools`] with `[cluster]`: each pool's failover follows the
    /// fleet's verdicts on it and its pair (`up`: this replica's own view, in config order).
    /// True when any pool moved.
    pub(super) fn evaluate_with_fleet(
        &mut self,
        cluster: &Cluster,
        up: &[bool],
        now: Instant,
    ) -> bool {
        let round = self.fleet.fresh_round(now, &self.cfg);
        let tallies: Vec<Tally> = self
            .cfg
            .pools
            .iter()
            .zip(up)
            .map(|(p, &own)| cluster::tally(cluster, round, &p.name, own))
            .collect();
        let verdicts: Vec<Verdict> = tallies.iter().map(Tally::verdict).collect();
        let mut changed = false;
        let mut held = vec![false; verdicts.len()];
        for i in 0..self.pools.len() {
            let pair = self.pair_of(i).map(|j| verdicts[j]);
            if verdicts[i] == Verdict::Undecided || pair == Some(Verdict::Undecided) {
                held[i] = true;
                continue;
            }
            let pool_up = verdicts[i] == Verdict::Up;
            let pair_up = pair == Some(Verdict::Up);
            let change = self.pools[i].evaluate(pool_up, pair_up, now);
            changed |= change.is_some();
            self.log_failover(i, change);
        }
        let unreachable = self
            .cfg
            .pools
            .iter()
            .enumerate()
            .filter(|&(i, p)| match verdicts[i] {
                Verdict::Up => !up[i],
                Verdict::Down => false,
                // No verdict: as it was, while this replica still sees the pool down.
                Verdict::Undecided => !up[i] && self.fleet.unreachable.contains(&p.name),
            })
            .map(|(_, p)| p.name.clone())
            .collect();
        self.fleet.set_unreachable(unreachable);
        self.fleet.tallies = tallies;
        self.fleet.held = held;
        changed
    }

    /// This replica's own view of every pool, for `/cluster/view`.
    pub(super) fn own_view(&mut self, now: Instant) -> Vec<PoolView> {
        let up: Vec<bool> = (0..self.cfg.pools.len()).map(|i| self.pool_up(i)).collect();
        self.fleet.track_own(&self.cfg, &up, now);
        self.cfg
            .pools
            .iter()
            .zip(up)
            .map(|(p, up)| PoolView {
                name: p.name.clone(),
                up,
                since: self
                    .fleet
                    .own
                    .get(&p.name)
                    .map(|&(_, at)| super::super::status::wall_clock(at, now))
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// `siplb_cluster_pool_unreachable{pool}`, with `[cluster]`.
    pub(super) fn publish_fleet_gauges(&self) {
        if self.cfg.cluster.is_none() {
            return;
        }
        for p in &self.cfg.pools {
            let alone = if self.fleet.unreachable.contains(&p.name) {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("siplb_cluster_pool_unreachable", "pool" => p.name.clone()).set(alone);
        }
    }

    /// `/status` `cluster`, with `[cluster]`.
    pub(in crate::health) fn cluster_status(&self) -> Option<ClusterStatus> {
        let cluster = self.cfg.cluster.as_ref()?;
        let round = self.fleet.round.as_ref().map(|(r, _)| r);
        let wall = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let peers = cluster
            .observers()
            .map(|o| {
                let answer = round.and_then(|r| r.answers.iter().find(|a| a.url == o.url));
                PeerStatus {
                    url: o.url.clone(),
                    result: answer.map_or("waiting", |a| a.result.as_str()),
                    last_ok: answer.and_then(|a| a.last_ok).map(wall),
                    config_matches: answer.and_then(|a| a.config_matches),
                    witness: cluster.witness.as_ref() == Some(o),
                    operator_seq: answer
                        .and_then(|a| a.view.as_ref())
                        .and_then(|v| v.operator.as_ref())
                        .map(|op| op.seq),
                }
            })
            .collect();
        let observers = 1 + cluster.observers().count();
        let pools = self
            .cfg
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let t = self.fleet.tallies.get(i);
                let own = self.pool_up(i);
                let said: Vec<Option<bool>> = cluster
                    .observers()
                    .map(|o| round.and_then(|r| r.says(&o.url, &p.name)))
                    .collect();
                let views = cluster
                    .observers()
                    .zip(&said)
                    .map(|(o, v)| ObserverView {
                        observer: o.url.clone(),
                        view: v.map_or("no_answer", up_str),
                    })
                    .collect();
                PoolVerdict {
                    name: p.name.clone(),
                    verdict: verdict_str(t.map_or(Verdict::Undecided, Tally::verdict)),
                    answered: t.map_or(0, |t| t.answered),
                    down: t.map_or(0, |t| t.down),
                    own: up_str(own),
                    views,
                    disagree: said.iter().flatten().any(|&v| v != own),
                }
            })
            .collect();
        Some(ClusterStatus {
            observers,
            quorum: observers / 2 + 1,
            peers,
            pools,
            unreachable: self.fleet.unreachable.clone(),
            operator: self.operator_view(),
        })
    }
}
