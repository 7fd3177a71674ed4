//! The supervisor with `[cluster]`, fed fake exchange rounds under the paused clock: a pool
//! only this replica sees down stays home and makes it not ready; a pool the fleet sees down
//! fails over; without a quorum nothing moves; failback waits for the fleet to see the pool up
//! for `failback_after`.

use super::*;
use crate::cluster::{Answer, Exchange, PoolView, Round, View};
use crate::test_dir::TestDir;

pub(super) const P1: &str = "http://10.0.0.2:9060";
pub(super) const P2: &str = "http://10.0.0.3:9060";

/// [`config_text`] with a `[cluster]` of two peers (three observers).
pub(super) fn fleet_config(dir: &TestDir, failback: &str) -> String {
    let token = dir.write("cluster-token", "fleet-secret");
    format!(
        "{}\n[cluster]\npeers = [\"{P1}\", \"{P2}\"]\ntoken_file = \"{}\"\n",
        config_text(A, failback, ""),
        token.display()
    )
}

/// A peer's answer: its view of pools `a` and `b`, or `result` without a view.
pub(super) fn answer(url: &str, result: Exchange, a_b: Option<(bool, bool)>) -> Answer {
    let view = a_b.map(|(a, b)| View {
        replica: url.into(),
        config_digest: "same".into(),
        version: "test".into(),
        pools: [("a", a), ("b", b)]
            .into_iter()
            .map(|(name, up)| PoolView {
                name: name.into(),
                up,
                since: String::new(),
            })
            .collect(),
        operator: None,
    });
    Answer {
        url: url.into(),
        result,
        view,
        last_ok: None,
        config_matches: a_b.map(|_| true),
    }
}

/// Both peers answer: p1 sees pool a `p1_a`, p2 sees it `p2_a`; both see b up.
pub(super) fn views(p1_a: bool, p2_a: bool) -> Round {
    Round {
        answers: vec![
            answer(P1, Exchange::Ok, Some((p1_a, true))),
            answer(P2, Exchange::Ok, Some((p2_a, true))),
        ],
    }
}

impl Harness {
    pub(super) async fn round(&self, round: Round) {
        self.control.fleet(round);
        settle().await;
    }

    /// Takes pool a down (both servers) or up in this replica's own probes.
    pub(super) async fn own_a(&self, up: bool) {
        let outcome = if up { OK } else { TIMEOUT };
        self.report("127.0.0.1:5071", outcome, 2);
        self.report("127.0.0.1:5072", outcome, 2);
        settle().await;
    }

    async fn verdict_on_a(&self) -> (&'static str, usize, usize) {
        let status = self.status().await;
        let c = status.cluster.expect("a [cluster] status");
        let a = c.pools.iter().find(|p| p.name == "a").expect("pool a");
        (a.verdict, a.answered, a.down)
    }
}

#[tokio::test(start_paused = true)]
async fn a_pool_only_this_replica_sees_down_stays_home_and_makes_it_not_ready() {
    let dir = TestDir::new("fleet");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    h.own_a(false).await;
    assert!(
        !h.a_failed_over(),
        "before any round there is no quorum: nothing moves"
    );
    assert!(h.control.unreachable().is_empty());

    h.round(views(true, true)).await;
    assert!(
        !h.a_failed_over(),
        "both peers reach a: its users stay home"
    );
    assert_eq!(h.verdict_on_a().await, ("up", 3, 1));
    assert_eq!(*h.control.unreachable(), vec!["a".to_string()]);
    let status = h.status().await;
    assert_eq!(
        status.pools[0].state, "down",
        "this replica's own view is still shown"
    );

    // The path comes back: ready again.
    h.own_a(true).await;
    h.round(views(true, true)).await;
    assert!(h.control.unreachable().is_empty());
    assert!(!h.a_failed_over());
}

#[tokio::test(start_paused = true)]
async fn a_pool_the_fleet_sees_down_fails_over() {
    let dir = TestDir::new("fleet");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    h.own_a(false).await;
    h.round(views(false, true)).await;
    assert!(h.a_failed_over(), "two of three see a down, b is up");
    assert_eq!(h.verdict_on_a().await, ("down", 3, 2));
    assert!(
        h.control.unreachable().is_empty(),
        "the fleet agrees: this replica is ready"
    );
    let status = h.status().await;
    assert_eq!(status.pools[0].serving, "b");
    let peers = status.cluster.expect("cluster status").peers;
    assert_eq!(peers.len(), 2);
    assert_eq!((peers[0].url.as_str(), peers[0].result), (P1, "ok"));
}

#[tokio::test(start_paused = true)]
async fn without_a_quorum_the_table_is_kept() {
    let dir = TestDir::new("fleet");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    h.own_a(false).await;
    let cut_off = Round {
        answers: vec![
            answer(P1, Exchange::Timeout, None),
            answer(P2, Exchange::Unauthorized, None),
        ],
    };
    h.round(cut_off.clone()).await;
    assert!(!h.a_failed_over(), "one of three answered: no quorum");
    assert_eq!(h.verdict_on_a().await, ("undecided", 1, 1));

    // Failed over by the fleet, then cut off: a comes back here, but nothing moves.
    h.round(views(false, false)).await;
    assert!(h.a_failed_over());
    h.own_a(true).await;
    for _ in 0..40 {
        h.round(cut_off.clone()).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert!(
        h.a_failed_over(),
        "40 s up here, but no quorum: the users stay where the fleet put them"
    );

    // A peer on another config does not vote either.
    let other = Round {
        answers: vec![
            answer(P1, Exchange::OtherConfig, None),
            answer(P2, Exchange::Refused, None),
        ],
    };
    h.round(other).await;
    assert_eq!(h.verdict_on_a().await, ("undecided", 1, 0));
    assert!(h.a_failed_over());
}

#[tokio::test(start_paused = true)]
async fn failback_waits_for_the_fleet_to_see_the_pool_up_for_failback_after() {
    let dir = TestDir::new("fleet");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    h.own_a(false).await;
    h.round(views(false, false)).await;
    assert!(h.a_failed_over());

    // Up here, but the peers still see a down: the fleet says down, no hold time starts.
    h.own_a(true).await;
    for _ in 0..40 {
        h.round(views(false, false)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert!(h.a_failed_over(), "only this replica sees a up");

    // The fleet sees it up: 30 s later, and not before, the users go home.
    for _ in 0..29 {
        h.round(views(true, false)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert!(h.a_failed_over(), "29 s of fleet-wide up");
    h.round(views(true, false)).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert!(!h.a_failed_over(), "30 s of fleet-wide up: home");
    assert_eq!(
        h.status().await.pools[0].reason.as_deref(),
        Some("pool up for failback_after")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_round_decides_nothing() {
    let dir = TestDir::new("fleet");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    // p2 sees a down, p1 up: with this replica's view of a down, that would be a verdict.
    h.round(views(true, false)).await;
    assert!(!h.a_failed_over());
    // But the round is 4 intervals old when this replica's probes see a down.
    tokio::time::advance(Duration::from_secs(4)).await;
    settle().await;
    h.own_a(false).await;
    assert!(!h.a_failed_over(), "an old round is no quorum");
    assert_eq!(h.verdict_on_a().await, ("undecided", 1, 1));
}
