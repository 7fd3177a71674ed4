//! Real-peer suite for operations under load: a sipp client registers 5,000 users through the
//! built siplb at 500 REGISTERs per second (10 s) to sipp servers, while the test operates
//! siplb the way an operator would, and not one registration may fail:
//!
//! - **20 config reloads** during the run (two valid configs that differ only in a route's
//!   methods list, published alternately by atomic rename): sipp reports 0 failed calls, every
//!   user reached exactly one server, and siplb counts 20 successful reloads;
//! - an **operator failover and failback** of the users' home pool during the run: 0 failed
//!   calls; while failed over only the pair's servers get REGISTERs, after the failback only
//!   the home pool's again.
//!
//! It needs sipp (`apt-get install -y sip-tester`), so it is `#[ignore]`d and runs with
//! `cargo test -p siplb-e2e --test sipp_ops -- --ignored`; without sipp it fails rather than
//! passing silently. The two runs take turns (one load run at a time on the machine), every
//! process is killed when the test ends, and the sipp logs stay in `target/tmp/sipp-ops-*` when
//! a run fails.

use std::path::Path;
use std::time::{Duration, Instant};

use siplb_e2e::config::Pool;
use siplb_e2e::ops::Ops;
use siplb_e2e::reload::replace_by_rename;
use siplb_e2e::sipp::{
    exclusive, find_sipp, offsets, read_users, scenarios, unplaced, user_map, Uac, Uas, WorkDir,
    DOMAIN,
};
use siplb_e2e::{Config, Route, Server, Siplb};

/// Registrations per run: every user of `users.csv` once.
const CALLS: usize = 5_000;
/// REGISTERs per second: 10 s of load.
const RATE: u32 = 500;
/// sipp's own bound on a run (`-timeout`).
const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
/// Our bound on a run.
const RUN_WITHIN: Duration = Duration::from_secs(45);
const TOKEN: &str = "sipp-ops-token";

/// sipp servers with these ids, started in a fresh work directory.
fn start_servers(sipp: &Path, work: &WorkDir, ids: &[&str]) -> Vec<Uas> {
    ids.iter()
        .map(|id| Uas::start(sipp, &work.path, id))
        .collect()
}

fn servers(uas: &[Uas], prefix: &str) -> Vec<Server> {
    uas.iter()
        .filter(|u| u.id.starts_with(prefix))
        .map(Uas::server)
        .collect()
}

/// Waits until siplb's probes have had an answer from every sipp server, so the load starts
/// against a farm siplb knows to be up.
fn wait_probed(ops: &Ops, uas: &[Uas]) {
    ops.wait_status("every sipp server answering siplb's probes", |s| {
        uas.iter()
            .all(|u| s.server(&u.id)["last_probe"] == "answered 200")
    });
}

/// Waits until `at` on the run's schedule (pacing operator actions over the run, not waiting
/// for a result).
fn at(moment: Instant) {
    std::thread::sleep(moment.saturating_duration_since(Instant::now()));
}

/// Every user of the run reached exactly one server (`user_map` panics on two).
fn assert_every_user_placed(uas: &[Uas], from: &[u64]) {
    let map = user_map(uas, from, &offsets(uas));
    let users = read_users(&scenarios().join("users.csv"));
    let missing = unplaced(&users[..CALLS], &map);
    assert!(
        missing.is_empty(),
        "users that reached no server (first 10): {missing:?}"
    );
}

#[test]
#[ignore = "real-peer suite: needs sipp; run with --ignored"]
fn no_registration_is_lost_across_twenty_reloads() {
    const RELOADS: u64 = 20;
    let _one_run = exclusive();
    let sipp = find_sipp();
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "sipp-ops-reloads");
    let uas = start_servers(&sipp, &work, &["fe1", "fe2", "fe3", "fe4"]);
    let config = |route: Route| {
        Config::new()
            .ops()
            .pool("fe", servers(&uas, "fe"))
            .route(route)
            .render()
    };
    let plain = config(Route::to("fe").domain(DOMAIN));
    let with_methods = config(Route::to("fe").domain(DOMAIN).methods(&[
        "REGISTER",
        "SUBSCRIBE",
        "SERVICE",
        "INVITE",
        "MESSAGE",
    ]));
    let siplb = Siplb::start(&plain);
    let ops = Ops::of(&siplb);
    wait_probed(&ops, &uas);

    let from = offsets(&uas);
    let mut uac = Uac::start(
        &sipp,
        &work.path,
        "uac-reloads",
        siplb.addr(),
        CALLS,
        RATE,
        SIPP_TIMEOUT,
    );
    let start = Instant::now();
    for i in 1..=RELOADS {
        // Spread over the first 8 s of the 10 s run.
        at(start + Duration::from_millis(400) * i as u32);
        let text = if i % 2 == 1 { &with_methods } else { &plain };
        replace_by_rename(siplb.config().path(), text);
        ops.wait_config_version(i + 1);
    }
    let reloads_took = start.elapsed();
    assert!(
        uac.is_running(),
        "sipp finished before the {RELOADS} reloads did ({reloads_took:?}): they must happen \
         during the run"
    );
    let result = uac.wait(RUN_WITHIN);
    eprintln!(
        "{RELOADS} reloads in {reloads_took:?} during a run of {} calls in {:?}: {} successful, {} failed",
        CALLS, result.took, result.successful, result.failed
    );
    uac.assert_no_loss(&result);

    let status = ops.status();
    assert_eq!(status.config_version(), RELOADS + 1);
    assert_eq!(status.last_error(), None);
    let m = ops.metrics();
    let reloads = |result: &str| m.sum("siplb_config_reloads_total", &[("result", result)]);
    assert_eq!((reloads("ok"), reloads("error")), (RELOADS as f64, 0.0));
    assert_every_user_placed(&uas, &from);
    work.remove();
}

#[test]
#[ignore = "real-peer suite: needs sipp; run with --ignored"]
fn no_registration_is_lost_across_an_operator_failover_and_failback() {
    /// Time for requests in flight at a switch to land before a phase is counted.
    const SETTLE: Duration = Duration::from_secs(1);
    let _one_run = exclusive();
    let sipp = find_sipp();
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "sipp-ops-failover");
    let uas = start_servers(&sipp, &work, &["dc1-fe1", "dc1-fe2", "dc2-fe1", "dc2-fe2"]);
    let config = Config::new()
        .ops()
        .pool_with(
            Pool::new("fe-dc1", servers(&uas, "dc1-"))
                .pair("fe-dc2")
                .manual(),
        )
        .pool_with(
            Pool::new("fe-dc2", servers(&uas, "dc2-"))
                .pair("fe-dc1")
                .manual(),
        )
        .route(Route::to("fe-dc1").domain(DOMAIN));
    let siplb = Siplb::start_with_env(&config.render(), &[("SIPLB_ADMIN_TOKEN", TOKEN)]);
    let ops = Ops::of(&siplb);
    wait_probed(&ops, &uas);

    let home = offsets(&uas);
    let mut uac = Uac::start(
        &sipp,
        &work.path,
        "uac-failover",
        siplb.addr(),
        CALLS,
        RATE,
        SIPP_TIMEOUT,
    );
    let start = Instant::now();
    at(start + Duration::from_secs(3));
    let before_failover = offsets(&uas);
    ops.admin_ok("/admin/pools/fe-dc1/failover", TOKEN);
    assert_eq!(ops.status().serving("fe-dc1"), "fe-dc2");
    at(Instant::now() + SETTLE);
    let failed_over = offsets(&uas);

    at(start + Duration::from_millis(6_500));
    let before_failback = offsets(&uas);
    ops.admin_ok("/admin/pools/fe-dc1/failback", TOKEN);
    assert_eq!(ops.status().serving("fe-dc1"), "fe-dc1");
    at(Instant::now() + SETTLE);
    let failed_back = offsets(&uas);
    assert!(
        uac.is_running(),
        "sipp finished before the failback settled: the switches must happen during the run"
    );

    let result = uac.wait(RUN_WITHIN);
    eprintln!(
        "failover at 3 s, failback at 6.5 s of a run of {} calls in {:?}: {} successful, {} failed",
        CALLS, result.took, result.successful, result.failed
    );
    uac.assert_no_loss(&result);
    let end = offsets(&uas);

    // Who got REGISTERs in each phase, per pool.
    let count = |prefix: &str, from: &[u64], to: &[u64]| -> usize {
        uas.iter()
            .zip(from.iter().zip(to))
            .filter(|(u, _)| u.id.starts_with(prefix))
            .map(|(u, (&a, &b))| u.registered(a, b).len())
            .sum()
    };
    for (phase, from, to, serving, idle) in [
        (
            "before the failover",
            &home,
            &before_failover,
            "dc1-",
            "dc2-",
        ),
        (
            "failed over",
            &failed_over,
            &before_failback,
            "dc2-",
            "dc1-",
        ),
        ("after the failback", &failed_back, &end, "dc1-", "dc2-"),
    ] {
        let (busy, quiet) = (count(serving, from, to), count(idle, from, to));
        eprintln!("{phase}: {serving}* got {busy} REGISTERs, {idle}* got {quiet}");
        assert!(busy > 500, "{phase}: {serving}* got only {busy} REGISTERs");
        assert_eq!(quiet, 0, "{phase}: {idle}* got {quiet} REGISTERs");
    }
    assert_every_user_placed(&uas, &home);
    work.remove();
}
