//! Pool failover: when a pool's users are served by its pair (sans-io: time is passed in).
//!
//! A pool is up while at least `min_up` of its servers are. In `auto` mode a pool that is down
//! while its pair is up is failed over, and failed back only after it has stayed up for
//! `failback_after` — so one server flapping at the edge of `min_up` cannot bounce a whole
//! pool's users between datacenters. In `manual` mode (Lync's `Invoke-CsPoolFailOver` /
//! `Invoke-CsPoolFailBack`) only an operator moves users. An operator's failover holds in
//! either mode until the operator fails the pool back.

use std::time::{Duration, Instant};

use crate::ServerState;

/// Who moves a pool's users to its pair (`failover = "auto" | "manual"` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// siplb fails the pool over when it is down and its pair is up, and fails it back once it
    /// has stayed up for `failback_after`.
    Auto,
    /// Only an operator does (Lync's `Invoke-CsPoolFailOver` / `Invoke-CsPoolFailBack`).
    Manual,
}

impl Mode {
    /// The name used in the config file, logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Manual => "manual",
        }
    }
}

/// The one rule for "a pool is up": at least `min_up` of its servers take traffic (up, not
/// drained). The supervisor's failover decisions, `/status` and the `siplb_pool_up` gauge all
/// ask this function.
pub fn is_up(servers: impl IntoIterator<Item = ServerState>, min_up: usize) -> bool {
    servers.into_iter().filter(|s| s.takes_traffic()).count() >= min_up
}

/// Why a pool's users moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverReason {
    /// Auto: the pool went down while its pair was up.
    PoolDown,
    /// Auto: the pool stayed up for `failback_after`.
    PoolRecovered,
    /// Auto: the pair went down too while the home pool is up again: home serves better.
    PairDown,
    /// An operator's failover or failback.
    Operator,
}

impl std::fmt::Display for FailoverReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailoverReason::PoolDown => "pool down, pair up",
            FailoverReason::PoolRecovered => "pool up for failback_after",
            FailoverReason::PairDown => "pair down, pool up",
            FailoverReason::Operator => "operator",
        })
    }
}

/// A change of where a pool's users are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverChange {
    pub failed_over: bool,
    pub reason: FailoverReason,
}

/// One pool's failover state.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolFailover {
    pub mode: Mode,
    pub failback_after: Duration,
    failed_over: bool,
    /// An operator's failover, held until an operator's failback.
    forced: bool,
    /// Since when the pool has been up without a break, while failed over.
    up_since: Option<Instant>,
    /// When the current placement began.
    pub since: Instant,
    pub reason: Option<FailoverReason>,
}

impl PoolFailover {
    pub fn new(mode: Mode, failback_after: Duration, now: Instant) -> Self {
        PoolFailover {
            mode,
            failback_after,
            failed_over: false,
            forced: false,
            up_since: None,
            since: now,
            reason: None,
        }
    }

    /// Whether the pool's users are served by its pair now.
    pub fn failed_over(&self) -> bool {
        self.failed_over
    }

    /// Whether an operator holds the pool failed over.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// Re-evaluates after any health change, and at [`PoolFailover::deadline`].
    pub fn evaluate(
        &mut self,
        pool_up: bool,
        pair_up: bool,
        now: Instant,
    ) -> Option<FailoverChange> {
        if self.forced || self.mode == Mode::Manual {
            return None;
        }
        if !self.failed_over {
            self.up_since = None;
            return (!pool_up && pair_up).then(|| self.set(true, FailoverReason::PoolDown, now));
        }
        if !pool_up {
            self.up_since = None;
            return None;
        }
        if !pair_up {
            return Some(self.set(false, FailoverReason::PairDown, now));
        }
        let since = *self.up_since.get_or_insert(now);
        (now.duration_since(since) >= self.failback_after)
            .then(|| self.set(false, FailoverReason::PoolRecovered, now))
    }

    /// When [`PoolFailover::evaluate`] must run again even if nothing else happens.
    pub fn deadline(&self) -> Option<Instant> {
        let waiting = self.failed_over && !self.forced && self.mode == Mode::Auto;
        self.up_since
            .filter(|_| waiting)
            .map(|t| t + self.failback_after)
    }

    /// An operator's failover: serve this pool's users from its pair until failed back.
    pub fn operator_failover(&mut self, now: Instant) -> Option<FailoverChange> {
        self.forced = true;
        (!self.failed_over).then(|| self.set(true, FailoverReason::Operator, now))
    }

    /// An operator's failback: send the users home (in auto mode, siplb may fail the pool over
    /// again at once if it is still down).
    pub fn operator_failback(&mut self, now: Instant) -> Option<FailoverChange> {
        self.forced = false;
        self.up_since = None;
        self.failed_over
            .then(|| self.set(false, FailoverReason::Operator, now))
    }

    fn set(&mut self, failed_over: bool, reason: FailoverReason, now: Instant) -> FailoverChange {
        self.failed_over = failed_over;
        self.up_since = None;
        self.since = now;
        self.reason = Some(reason);
        FailoverChange {
            failed_over,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_pool_is_up_with_min_up_servers_taking_traffic() {
        use ServerState::{Down, Drained, Up};
        assert!(is_up([Up, Down], 1));
        assert!(
            !is_up([Up, Down, Drained], 2),
            "drained servers do not count"
        );
        assert!(is_up([Up, Up, Drained], 2));
        assert!(!is_up([], 1));
    }

    #[test]
    fn auto_fails_over_and_back_after_the_hold_time() {
        let t0 = Instant::now();
        let mut p = PoolFailover::new(Mode::Auto, Duration::from_secs(30), t0);
        assert_eq!(p.evaluate(true, true, t0), None);
        let c = p.evaluate(false, true, secs(t0, 1)).unwrap();
        assert_eq!(
            c,
            FailoverChange {
                failed_over: true,
                reason: FailoverReason::PoolDown
            }
        );
        assert_eq!(
            p.evaluate(true, true, secs(t0, 10)),
            None,
            "up, hold time starts"
        );
        assert_eq!(p.deadline(), Some(secs(t0, 40)));
        assert_eq!(p.evaluate(true, true, secs(t0, 39)), None);
        let c = p.evaluate(true, true, secs(t0, 40)).unwrap();
        assert_eq!(
            c,
            FailoverChange {
                failed_over: false,
                reason: FailoverReason::PoolRecovered
            }
        );
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn a_flapping_pool_restarts_its_hold_time() {
        let t0 = Instant::now();
        let mut p = PoolFailover::new(Mode::Auto, Duration::from_secs(30), t0);
        p.evaluate(false, true, t0);
        for s in (1..200).step_by(20) {
            assert_eq!(p.evaluate(true, true, secs(t0, s)), None);
            assert_eq!(p.evaluate(false, true, secs(t0, s + 10)), None);
        }
        assert!(p.failed_over());
    }

    #[test]
    fn no_failover_to_a_pair_that_is_down_and_home_when_the_pair_dies() {
        let t0 = Instant::now();
        let mut p = PoolFailover::new(Mode::Auto, Duration::from_secs(30), t0);
        assert_eq!(p.evaluate(false, false, t0), None);
        p.evaluate(false, true, t0);
        let c = p.evaluate(true, false, secs(t0, 2)).unwrap();
        assert_eq!(c.reason, FailoverReason::PairDown);
        assert!(!p.failed_over());
    }

    #[test]
    fn manual_pools_move_only_on_the_operators_word() {
        let t0 = Instant::now();
        let mut p = PoolFailover::new(Mode::Manual, Duration::from_secs(30), t0);
        assert_eq!(p.evaluate(false, true, t0), None);
        assert!(p.operator_failover(t0).is_some());
        assert_eq!(p.evaluate(true, true, secs(t0, 100)), None);
        assert!(p.failed_over());
        assert!(p.operator_failback(secs(t0, 101)).is_some());
        assert!(!p.failed_over());
    }

    #[test]
    fn an_operator_failover_holds_in_auto_mode() {
        let t0 = Instant::now();
        let mut p = PoolFailover::new(Mode::Auto, Duration::from_secs(1), t0);
        p.operator_failover(t0);
        assert_eq!(p.evaluate(true, true, secs(t0, 100)), None);
        assert!(p.failed_over() && p.forced());
        assert_eq!(
            p.operator_failback(secs(t0, 101)).unwrap().reason,
            FailoverReason::Operator
        );
        // Still down at failback: auto mode moves the users again.
        assert!(p.evaluate(false, true, secs(t0, 102)).unwrap().failed_over);
    }
}
