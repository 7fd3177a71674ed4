//! The supervisor's side of damping ([`healthcheck::damping`]): a probe result settles a
//! `Retry-After` waiting for it, a failed one backs the server off (never taking its pool below
//! half of its servers), and the ends of backoffs and holds are timed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthcheck::Outcome;

use super::Supervisor;

/// When servers' backoffs and holds run out, soonest first. An entry may be stale (the backoff
/// was lengthened, the server went down); its server is then asked and nothing happens.
#[derive(Debug, Default)]
pub(super) struct Timers(BinaryHeap<Reverse<(Instant, Arc<str>)>>);

impl Timers {
    /// Wakes the supervisor for server `id` at `at`.
    pub(super) fn at(&mut self, at: Instant, id: Arc<str>) {
        self.0.push(Reverse((at, id)));
    }

    /// The soonest.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the servers whose timers are due at `now`.
    fn due(&mut self, now: Instant) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        while self.next().is_some_and(|at| at <= now) {
            if let Some(Reverse((_, id))) = self.0.pop() {
                due.push(id);
            }
        }
        due
    }
}

impl Supervisor {
    /// One probe result for server `id`: it settles a `Retry-After` the server answered with
    /// since its last probe — a failure backs it off at once (without waiting for `fall`), a
    /// pass leaves the 503 only counted — then counts towards fall/rise as ever. True when a
    /// state changed.
    pub(super) fn on_probe(&mut self, id: &Arc<str>, outcome: Outcome, now: Instant) -> bool {
        let Some(entry) = self.servers.get_mut(id) else {
            return false;
        };
        let busy = entry.health.take_busy(&outcome);
        let changed = self.record(id, outcome, now);
        match busy {
            // Taken down by this very probe: fall decided, nothing to back off.
            Some(backoff) if !changed => self.back_off(id, backoff, now),
            _ => changed,
        }
    }

    /// Backs server `id` off for `backoff`, unless its pool would then have more than half of
    /// its servers out: past that, only probes (fall) take servers out. Counted in
    /// `siplb_passive_signals_total{signal="503"}` with effect `backoff` or `backoff_refused`.
    fn back_off(&mut self, id: &Arc<str>, backoff: Duration, now: Instant) -> bool {
        let Some(pool) = self.servers.get(id).map(|e| e.pool) else {
            return false;
        };
        let allowed = self.passive_may_take_down(pool, id);
        metrics::counter!("siplb_passive_signals_total",
            "pool" => self.cfg.pools[pool].name.clone(),
            "signal" => "503",
            "effect" => if allowed { "backoff" } else { "backoff_refused" })
        .increment(1);
        if !allowed {
            tracing::debug!(server = %id, "503 with Retry-After and a failed probe: no backoff, half the pool is out");
            return false;
        }
        let Some(entry) = self.servers.get_mut(id) else {
            return false;
        };
        let before = entry.health.deadline();
        let t = entry.health.back_off(backoff, now);
        let after = entry.health.deadline();
        match t {
            Some(t) => {
                self.note(id, t);
                true
            }
            None => {
                // A backoff under way, lengthened.
                if let Some(at) = after.filter(|&at| Some(at) != before) {
                    self.out_timers.at(at, id.clone());
                }
                false
            }
        }
    }

    /// Ends the backoffs and holds due at `now` (of servers whose last `rise` probes passed;
    /// the others return with their next passing probe). True when a state changed.
    pub(super) fn end_outs(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for id in self.out_timers.due(now) {
            let Some(entry) = self.servers.get_mut(&id) else {
                continue;
            };
            if let Some(t) = entry.health.tick(entry.plan.thresholds, now) {
                self.note(&id, t);
                changed = true;
            }
        }
        changed
    }
}
