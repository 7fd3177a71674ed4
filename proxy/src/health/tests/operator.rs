//! Operator commands across the fleet in the supervisor, under the paused clock: how commands
//! are stamped, a forwarded one keeping its origin's stamp (and refused when a newer command on
//! the same pool stands), and a peer's newer command adopted from an exchange round with an
//! event naming the peer. An automatic failover (the fleet's verdict) is never operator state.

use super::fleet::{answer, fleet_config, views, P1, P2};
use super::*;
use crate::cluster::operator::{Stamp, Stamped};
use crate::cluster::{Exchange, OperatorView, Round};
use crate::health::{OpError, Source};
use crate::test_dir::TestDir;

/// A round where p1's view holds `operator` and both peers see both pools up.
fn round_with(operator: OperatorView) -> Round {
    let mut p1 = answer(P1, Exchange::Ok, Some((true, true)));
    if let Some(v) = p1.view.as_mut() {
        v.operator = Some(operator);
    }
    Round {
        answers: vec![p1, answer(P2, Exchange::Ok, Some((true, true)))],
    }
}

fn stamped(kind: &str, name: &str, seq: u64, origin: &str) -> Stamped {
    Stamped {
        kind: kind.into(),
        name: name.into(),
        seq,
        origin: origin.into(),
    }
}

impl Harness {
    async fn operator(&self) -> OperatorView {
        self.status()
            .await
            .cluster
            .expect("a [cluster] status")
            .operator
    }
}

#[tokio::test(start_paused = true)]
async fn local_commands_are_stamped_past_the_highest_seq_seen_and_forwarded_ones_keep_theirs() {
    let dir = TestDir::new("operator");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    let first = h
        .control
        .command(Op::Drain("a1".into()), Source::Local)
        .await
        .expect("drained");
    assert_eq!(first.stamp.seq, 1);

    // A peer's view shows seq 7 (a command on another pool): the next local one is 8.
    h.round(round_with(OperatorView {
        seq: 7,
        origin: P1.into(),
        stamps: vec![stamped("pool", "b", 7, P1)],
        ..OperatorView::default()
    }))
    .await;
    let next = h
        .control
        .command(Op::Undrain("a1".into()), Source::Local)
        .await
        .expect("undrained");
    assert_eq!(next.stamp.seq, 8);

    // A forwarded command keeps its origin's stamp…
    let theirs = Stamp {
        seq: 9,
        origin: P2.into(),
    };
    let applied = h
        .control
        .command(Op::Failover("a".into()), Source::Forwarded(theirs.clone()))
        .await
        .expect("applied");
    assert_eq!(applied.stamp, theirs);
    assert!(h.a_failed_over());
    let events = h.control.events().recent();
    assert_eq!(
        events[0].message,
        format!("operator failover (forwarded by {P2}): users served by b")
    );
    // …and the same one again is fine (idempotent), an older one on the same pool is refused.
    assert!(h
        .control
        .command(Op::Failover("a".into()), Source::Forwarded(theirs))
        .await
        .is_ok());
    let late = Stamp {
        seq: 4,
        origin: P1.into(),
    };
    let refused = h
        .control
        .command(Op::Failback("a".into()), Source::Forwarded(late))
        .await;
    assert!(
        matches!(refused, Err(OpError::Superseded { seq: 9, .. })),
        "{refused:?}"
    );
    assert!(h.a_failed_over(), "the newer failover stands");
    let op = h.operator().await;
    assert_eq!(
        (op.seq, op.origin.as_str(), op.failed_over),
        (9, P2, vec!["a".to_string()])
    );
}

#[tokio::test(start_paused = true)]
async fn a_newer_command_in_a_peers_view_is_adopted_with_an_event_naming_the_peer() {
    let dir = TestDir::new("operator");
    let h = Harness::start(&fleet_config(&dir, "30s"));
    settle().await;
    // p1 holds pool a failed over by an operator and server a2 drained.
    let held = OperatorView {
        seq: 3,
        origin: P1.into(),
        failed_over: vec!["a".into()],
        drained: vec!["a2".into()],
        stamps: vec![stamped("pool", "a", 2, P1), stamped("server", "a2", 3, P2)],
    };
    h.round(round_with(held.clone())).await;
    assert!(h.a_failed_over(), "adopted at this round");
    assert_eq!(h.server_state("a2").await, Some("drained"));
    let events = h.control.events().recent();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.contains(
            &format!("operator failover (adopted from {P1}): users served by b").as_str()
        ),
        "{messages:?}"
    );
    assert!(
        messages.contains(&format!("operator drain (adopted from {P1}): up → drained").as_str()),
        "{messages:?}"
    );
    let op = h.operator().await;
    assert_eq!((op.seq, op.origin.as_str()), (3, P2), "the stamps adopted");

    // The same view again changes nothing; a newer failback is adopted.
    let before = h.control.events().recent().len();
    h.round(round_with(held)).await;
    assert_eq!(h.control.events().recent().len(), before);
    h.round(round_with(OperatorView {
        seq: 4,
        origin: P1.into(),
        failed_over: vec![],
        drained: vec!["a2".into()],
        stamps: vec![stamped("pool", "a", 4, P1), stamped("server", "a2", 3, P2)],
    }))
    .await;
    assert!(!h.a_failed_over(), "failed back as the peer says");
    assert!(h.operator().await.failed_over.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_automatic_failover_is_not_operator_state_and_an_older_command_is_not_adopted() {
    let dir = TestDir::new("operator");
    // This replica goes by http://127.0.0.1:9064.
    let text = fleet_config(&dir, "30s") + "\n[ops]\nlisten = \"127.0.0.1:9064\"\n";
    let h = Harness::start(&text);
    settle().await;
    // The fleet sees a down: an automatic failover.
    h.own_a(false).await;
    h.round(views(false, false)).await;
    assert!(h.a_failed_over());
    let op = h.operator().await;
    assert!(op.failed_over.is_empty(), "{op:?}");
    assert_eq!(op.seq, 0, "no operator command yet");

    // An operator fails a over here (seq 1); a peer's view with an older failback of it
    // (seq 1 from a lower URL) is not adopted.
    h.own_a(true).await;
    let mine = h
        .control
        .command(Op::Failover("a".into()), Source::Local)
        .await
        .expect("applied");
    let lower = "http://0.0.0.0:1";
    assert!(
        Stamp {
            seq: 1,
            origin: lower.into()
        } < mine.stamp
    );
    h.round(round_with(OperatorView {
        seq: 1,
        origin: lower.into(),
        stamps: vec![stamped("pool", "a", 1, lower)],
        ..OperatorView::default()
    }))
    .await;
    assert!(h.a_failed_over(), "the operator's failover stands");
    assert_eq!(h.operator().await.failed_over, vec!["a".to_string()]);
}
