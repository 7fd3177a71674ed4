//! Damping in the supervisor, under the paused clock: a 503 with `Retry-After` backs a server
//! off only when the probe after it fails, never past half of its pool, and it returns when the
//! Retry-After has run and `rise` probes passed; a flapping server's hold ends on its timer.

use super::*;

const BUSY: Failure = Failure::Passive503RetryAfter(5);

#[tokio::test(start_paused = true)]
async fn a_busy_server_backs_off_only_if_its_probe_fails_and_returns_after_retry_after_and_rise() {
    let h = Harness::start(&config_text(A4, "30s", ""));
    settle().await;
    // Busy, and the probe passes: only counted.
    h.passive("127.0.0.1:5071", BUSY, 3).await;
    assert!(h.asked_of("127.0.0.1:5071") > 0, "a probe was asked for");
    h.report("127.0.0.1:5071", OK, 1);
    settle().await;
    h.report("127.0.0.1:5071", TIMEOUT, 1);
    settle().await;
    assert_eq!(
        h.server_state("a1").await,
        Some("up"),
        "the 503 was settled by the passing probe"
    );
    h.report("127.0.0.1:5071", OK, 1);
    settle().await;

    // Busy, and the probe fails: out at once, one failure short of fall = 2.
    h.passive("127.0.0.1:5071", BUSY, 1).await;
    h.report("127.0.0.1:5071", TIMEOUT, 1);
    settle().await;
    let status = h.status().await;
    let a1 = status.pools[0]
        .servers
        .iter()
        .find(|s| s.id == "a1")
        .unwrap();
    assert_eq!(a1.state, "backoff");
    assert!(a1.out.backoff_until.is_some());
    assert!(a1.reason.contains("backing off 5s"), "{}", a1.reason);
    let table = h.tables.load();
    assert_eq!(table.pools[0].servers[0].state, ServerState::Backoff);
    assert!(!table.pools[0].servers[0].state.takes_traffic());

    // Its probes pass: still out until the 5 s have run, then up.
    h.report("127.0.0.1:5071", OK, 2);
    settle().await;
    tokio::time::advance(Duration::from_millis(4900)).await;
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("backoff"));
    tokio::time::advance(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("up"));
    assert_eq!(h.tables.load().pools[0].servers[0].state, ServerState::Up);
}

#[tokio::test(start_paused = true)]
async fn backoffs_never_take_more_than_half_of_a_pool_out() {
    let h = Harness::start(&config_text(A4, "30s", ""));
    settle().await;
    for addr in [
        "127.0.0.1:5071",
        "127.0.0.1:5072",
        "127.0.0.1:5073",
        "127.0.0.1:5074",
    ] {
        h.passive(addr, BUSY, 1).await;
        h.report(addr, TIMEOUT, 1);
        settle().await;
    }
    let mut states = Vec::new();
    for id in ["a1", "a2", "a3", "a4"] {
        states.push(h.server_state(id).await.unwrap());
    }
    assert_eq!(states, ["backoff", "backoff", "up", "up"]);
    assert!(!h.a_failed_over());
    // Past half, probes still decide: fall = 2 takes a3 down.
    h.report("127.0.0.1:5073", TIMEOUT, 1);
    settle().await;
    assert_eq!(h.server_state("a3").await, Some("down"));
}

#[tokio::test(start_paused = true)]
async fn a_flapping_servers_hold_ends_on_its_timer() {
    let h = Harness::start(&config_text(A4, "30s", "flap_hold = \"3s\""));
    settle().await;
    let a1 = "127.0.0.1:5071";
    // Down and back once: up at once.
    h.report(a1, TIMEOUT, 2);
    h.report(a1, OK, 2);
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("up"));
    // Down again soon: held 3 s after it comes back.
    h.report(a1, TIMEOUT, 2);
    h.report(a1, OK, 2);
    settle().await;
    let status = h.status().await;
    let s = status.pools[0]
        .servers
        .iter()
        .find(|s| s.id == "a1")
        .unwrap();
    assert_eq!(s.state, "held");
    assert!(s.out.held_until.is_some());
    assert!(
        s.reason
            .contains("flapping (down the 2nd time in 60s): held 3s"),
        "{}",
        s.reason
    );
    tokio::time::advance(Duration::from_millis(2900)).await;
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("held"));
    tokio::time::advance(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("up"));
    // Once more: twice as long.
    h.report(a1, TIMEOUT, 2);
    h.report(a1, OK, 2);
    settle().await;
    tokio::time::advance(Duration::from_millis(5900)).await;
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("held"));
    tokio::time::advance(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("up"));
}
