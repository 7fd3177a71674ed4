//! Health probing and paired-pool failover, as users live through them: the built siplb in
//! front of in-process SIP servers that are stopped (port closed), restarted on the same port,
//! made silent, made to answer probes with 503, or made to flap on every probe.
//!
//! Every assertion about users is made on what the servers received (sweeps that register every
//! user once, and a steady REGISTER load that records what was lost); `/status` and siplb's
//! transition log lines are used to know when a phase has begun and are checked for what they
//! tell an operator. Probes are fast (every 200 ms, 150 ms timeout, fall 2, rise 2) so the whole
//! file runs in well under a minute; the tests take a lock so that their timing measurements do
//! not compete with each other for the machine's two cores.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use siplb_e2e::config::{Health, Pool};
use siplb_e2e::farm::{tally, users};
use siplb_e2e::health::{events, wait_pool_state, wait_server, wait_serving, Event, JSON_LOGS};
use siplb_e2e::load::{Load, Sent};
use siplb_e2e::ops::Ops;
use siplb_e2e::placement::{assert_spread, moved, users_on, Placement};
use siplb_e2e::{Behaviour, Config, Farm, ProbeAnswer, Request, Route, Siplb, Testbed};

const DOMAIN: &str = "contoso.com";
const TOKEN: &str = "health-admin-token";
/// Probe settings of every test: interval, timeout, fall, rise.
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(150);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// Scheduling slack allowed on top of a bound derived from the probe settings (a debug build
/// on a shared two-core machine).
const MARGIN: Duration = Duration::from_millis(250);
/// A share of users per server may be off by this fraction.
const SPREAD: f64 = 0.15;

fn fast_probes() -> Health {
    Health::options("200ms", "150ms", FALL, RISE)
}

/// One test at a time: the timing bounds are about siplb, not about the other tests.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `farm` behind siplb on `config` with JSON logs and the admin token, a client, and the ops
/// endpoint.
fn start(farm: Farm, config: &Config) -> (Testbed, Ops) {
    let siplb = Siplb::start_with_env(
        &(config.render() + JSON_LOGS),
        &[("SIPLB_ADMIN_TOKEN", TOKEN)],
    );
    Testbed::with_ops(farm, siplb)
}

/// Pools `a` and `b`, paired, one route over both.
fn paired(a: Pool, b: Pool) -> Config {
    Config::new()
        .health(fast_probes())
        .ops()
        .pool_with(a.pair("b"))
        .pool_with(b.pair("a"))
        .route(Route::over(&["a", "b"]))
}

/// Asserts every user of `users` is where `expected` put it in `got`.
fn assert_unmoved(what: &str, expected: &Placement, got: &Placement, users: &[String]) {
    let strayed: Vec<String> = users
        .iter()
        .filter(|u| expected.get(*u) != got.get(*u))
        .map(|u| format!("{u}: {:?} -> {:?}", expected.get(u), got.get(u)))
        .take(5)
        .collect();
    assert!(strayed.is_empty(), "{what}: users moved, e.g. {strayed:?}");
}

/// Sweeps every user once and asserts each is on the server `before` put it on.
fn assert_home(tb: &mut Testbed, users: &[String], before: &Placement, what: &str) {
    let home = tb.sweep(users);
    assert_eq!(moved(before, &home), Default::default(), "{what}");
}

/// Sweeps every user once while pool a ([`paired`] with b of b1 and b2) is served by b, and
/// asserts b's own users stayed where `before` put them and a's are spread evenly over b1 and
/// b2 (`what` names the latter). Returns the sweep.
fn assert_a_served_by_b(
    tb: &mut Testbed,
    users: &[String],
    before: &Placement,
    a_users: &[String],
    b_users: &[String],
    what: &str,
) -> Placement {
    let placed = tb.sweep(users);
    assert_unmoved("b's own users", before, &placed, b_users);
    assert_spread(what, &placed, a_users, &["b1", "b2"], SPREAD);
    placed
}

/// The operator's `failover` or `failback` of pool a, until `/status` shows it served by
/// `serving`.
fn operator(ops: &Ops, action: &str, serving: &str) {
    ops.admin_ok(&format!("/admin/pools/a/{action}"), TOKEN);
    wait_serving(ops, "a", serving);
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// How a server dies in [`one_server_dies_under_load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// The process is gone: its port is closed, so a forward draws an ICMP port unreachable
    /// (siplb's passive signal) and a probe is refused.
    PortClosed,
    /// The process hangs: the socket stays open and swallows everything, so only the probes'
    /// timeouts can tell.
    Hung,
}

#[test]
fn killing_one_server_under_load_moves_only_its_users_evenly_and_quickly() {
    one_server_dies_under_load(Death::PortClosed);
}

#[test]
fn a_hung_server_under_load_is_left_within_fall_x_interval_plus_timeout() {
    one_server_dies_under_load(Death::Hung);
}

/// Pool of 4, 3,000 users placed, a steady REGISTER load at 1,000/s, then one server dies.
/// Asserts: only its users' requests are lost, and only until fall x interval + timeout after
/// its death; afterwards siplb sends it nothing; only its users moved, a third to each other
/// server; once it answers probes again, everyone is home; one log line per transition.
fn one_server_dies_under_load(death: Death) {
    let _serial = serial();
    const VICTIM: &str = "fe2";
    const SURVIVORS: [&str; 3] = ["fe1", "fe3", "fe4"];
    const RATE: u32 = 1000;
    let farm = Farm::start("fe", 4, Behaviour::Accept);
    let config = Config::new()
        .health(fast_probes())
        .ops()
        .pool("fe", farm.servers())
        .route(Route::to("fe"));
    let (mut tb, ops) = start(farm, &config);
    let users = users(3000, DOMAIN);

    let before = tb.sweep(&users);
    eprintln!("placement before: {:?}", tally(&before));
    let victims_sorted = users_on(&before, &[VICTIM]);
    let victims: HashSet<String> = victims_sorted.iter().cloned().collect();
    assert!(
        victims.len() > 500,
        "{VICTIM} holds {} users",
        victims.len()
    );

    // A steady load, then the victim dies under it.
    let load = Load::on_loopback(
        tb.siplb.addr(),
        users.clone(),
        RATE,
        Duration::from_secs(30),
    );
    ops_wait(|| load.answered() >= 300, "the load to get going");
    let killed_at = Instant::now();
    match death {
        Death::PortClosed => tb.farm.get_mut(VICTIM).stop(),
        Death::Hung => tb.farm.get(VICTIM).set_silent(true),
    }
    let (down, status_after) = wait_server(&ops, VICTIM, "down");
    eprintln!(
        "{death:?}: {VICTIM} down in /status {} ms after it died (reason: {})",
        ms(status_after),
        down["reason"]
    );

    // From now on the victim's socket records whatever siplb sends it. A closed port opens
    // again, ignoring probes, so siplb must still hold it down. The load goes on until siplb
    // has probed it a few times and the victim's users have sent plenty of requests.
    let watched_from = Instant::now();
    if death == Death::PortClosed {
        let victim = tb.farm.get_mut(VICTIM);
        victim.set_probe_answer(ProbeAnswer::Ignore);
        victim.restart();
    }
    let victim_sent_since = |load: &Load, since: Instant| {
        load.snapshot()
            .iter()
            .filter(|s| s.at >= since && victims.contains(&s.aor))
            .count()
    };
    ops_wait(
        || {
            tb.farm.get(VICTIM).probes_since(watched_from).len() >= 3
                && victim_sent_since(&load, watched_from) >= 300
        },
        "probes and requests while the victim is down",
    );
    let sent_to_victim = tb.farm.get(VICTIM).requests_since(watched_from);
    let probes_seen = tb.farm.get(VICTIM).probes_since(watched_from).len();
    let records = load.stop();
    assert!(
        sent_to_victim.is_empty(),
        "siplb sent {} requests to {VICTIM} while it was down (after {probes_seen} probes), e.g.\n{}",
        sent_to_victim.len(),
        siplb_e2e::sip::show(&sent_to_victim[0].bytes)
    );

    // What the load lived through.
    let lost: Vec<&Sent> = records.iter().filter(|s| !s.answered()).collect();
    let strangers: Vec<&str> = lost
        .iter()
        .filter(|s| !victims.contains(&s.aor))
        .map(|s| s.aor.as_str())
        .take(5)
        .collect();
    assert!(
        strangers.is_empty(),
        "requests of users not on {VICTIM} were lost, e.g. {strangers:?}"
    );
    let not_ok: Vec<String> = records
        .iter()
        .filter(|s| s.answered() && s.status() != Some(200))
        .map(|s| format!("{} {:?}", s.aor, s.status()))
        .take(5)
        .collect();
    assert!(not_ok.is_empty(), "non-200 answers under load: {not_ok:?}");
    let window = lost
        .iter()
        .map(|s| s.at.saturating_duration_since(killed_at))
        .max()
        .unwrap_or_default();
    // A hung server's socket saw the requests siplb still sent it: the same window, seen from
    // the server's side.
    let last_received = (death == Death::Hung)
        .then(|| {
            tb.farm
                .get(VICTIM)
                .requests_since(killed_at)
                .last()
                .map(|d| d.at)
        })
        .flatten()
        .map(|at| at.duration_since(killed_at));
    let first_moved = records
        .iter()
        .filter(|s| s.at >= killed_at && s.answered() && victims.contains(&s.aor))
        .map(|s| s.at.duration_since(killed_at))
        .min();
    let bound = INTERVAL * FALL + TIMEOUT;
    let seen_by_victim = last_received
        .map(|t| {
            format!(
                " (the hung victim's socket last received one at {} ms)",
                ms(t)
            )
        })
        .unwrap_or_default();
    eprintln!(
        "{death:?} under {RATE} REGISTER/s: {} requests, {} lost (all {VICTIM}'s users); the \
         last one lost left the client {} ms after the death{seen_by_victim}; the first of its \
         users answered elsewhere left at {:?} ms; bound fall x interval + timeout = {} ms \
         (+{} ms)",
        records.len(),
        lost.len(),
        ms(window),
        first_moved.map(ms),
        ms(bound),
        ms(MARGIN)
    );
    assert!(
        window <= bound + MARGIN,
        "the move took {} ms, more than fall x interval + timeout = {} ms (+{} ms)",
        ms(window),
        ms(bound),
        ms(MARGIN)
    );
    if death == Death::Hung {
        assert!(
            !lost.is_empty(),
            "a hung server must have swallowed some requests"
        );
        assert!(last_received.is_some_and(|t| t <= bound + MARGIN));
    }
    assert!(status_after <= bound + MARGIN * 2, "/status showed it late");

    // Where every user is now: only the victim's users moved, evenly over the other three.
    let after = tb.sweep(&users);
    let moved_users = moved(&before, &after);
    let strayed: Vec<_> = moved_users
        .iter()
        .filter(|(u, _)| !victims.contains(*u))
        .take(5)
        .collect();
    assert!(
        strayed.is_empty(),
        "users not on {VICTIM} moved: {strayed:?}"
    );
    assert_eq!(
        moved_users.len(),
        victims.len(),
        "every user of {VICTIM} moved"
    );
    assert_spread(
        &format!("{VICTIM}'s users"),
        &after,
        &victims_sorted,
        &SURVIVORS,
        SPREAD,
    );

    // It answers probes again: `rise` probes later it is up and its users are home.
    let victim = tb.farm.get(VICTIM);
    victim.set_silent(false);
    victim.set_probe_answer(ProbeAnswer::Ok);
    wait_server(&ops, VICTIM, "up");
    assert_home(
        &mut tb,
        &users,
        &before,
        &format!("users are home after {VICTIM} came back"),
    );

    // One log line per transition: down, then up; nothing about the pool.
    let logged = events(&tb.siplb.stderr());
    let transitions: Vec<&str> = logged
        .iter()
        .filter_map(|e| match e {
            Event::Server { server, to, .. } if server == VICTIM => Some(to.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        transitions,
        ["down", "up"],
        "transitions of {VICTIM}: {logged:?}"
    );
    assert_eq!(logged.len(), 2, "only {VICTIM} changed state: {logged:?}");
}

/// Waits (10 s at most) for a condition of the test itself.
fn ops_wait(mut cond: impl FnMut() -> bool, what: &str) {
    siplb_e2e::ops::wait_until(what, Duration::from_secs(10), || {
        if cond() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}

#[test]
fn a_pool_with_every_server_dead_is_served_by_its_pair_then_comes_home_after_failback_after() {
    let _serial = serial();
    const FAILBACK_AFTER: Duration = Duration::from_secs(2);
    let farm = Farm::pools(&[("a", 2), ("b", 2)], Behaviour::Accept);
    let config = paired(
        Pool::new("a", farm.servers_of("a")).failback_after("2s"),
        Pool::new("b", farm.servers_of("b")).failback_after("2s"),
    );
    let (mut tb, ops) = start(farm, &config);
    let users = users(2000, DOMAIN);

    let before = tb.sweep(&users);
    eprintln!("placement before: {:?}", tally(&before));
    let a_users = users_on(&before, &["a1", "a2"]);
    let b_users = users_on(&before, &["b1", "b2"]);
    assert!(
        a_users.len() > 600 && b_users.len() > 600,
        "{:?}",
        tally(&before)
    );

    let killed_at = Instant::now();
    tb.farm.get_mut("a1").stop();
    tb.farm.get_mut("a2").stop();
    wait_serving(&ops, "a", "b");
    eprintln!(
        "pool a served by b {} ms after its servers died",
        ms(killed_at.elapsed())
    );
    assert!(killed_at.elapsed() <= INTERVAL * FALL + TIMEOUT + MARGIN * 2);

    let failed_over = assert_a_served_by_b(
        &mut tb,
        &users,
        &before,
        &a_users,
        &b_users,
        "a's users on b",
    );

    // a's servers come back on their ports; a steady load runs throughout.
    let load = Load::on_loopback(tb.siplb.addr(), users.clone(), 500, Duration::from_secs(20));
    ops_wait(|| load.answered() >= 100, "the load to get going");
    let restarted_at = Instant::now();
    tb.farm.get_mut("a1").restart();
    tb.farm.get_mut("a2").restart();
    wait_pool_state(&ops, "a", "up");
    wait_serving(&ops, "a", "a");
    let failed_back = restarted_at.elapsed();
    ops_wait(
        || !tb.farm.get("a1").requests_since(restarted_at).is_empty(),
        "a1 to receive requests again",
    );
    let records = load.stop();

    // When a was up again, by the servers' own clocks: the `rise`-th probe answer of the first
    // server to give one (min_up = 1). siplb cannot have seen it earlier.
    let a_up = ["a1", "a2"]
        .iter()
        .filter_map(|id| {
            tb.farm
                .get(id)
                .probe_answers_since(restarted_at)
                .get(RISE as usize - 1)
                .map(|d| d.at)
        })
        .min()
        .expect("a's servers answered probes");
    let first_home = ["a1", "a2"]
        .iter()
        .filter_map(|id| {
            tb.farm
                .get(id)
                .requests_since(restarted_at)
                .first()
                .map(|d| d.at)
        })
        .min()
        .expect("a's servers received requests");
    let held = first_home.duration_since(a_up);
    eprintln!(
        "a up {} ms after its servers restarted; first request home {} ms after that \
         (failback_after {} ms); /status showed a served at home after {} ms",
        ms(a_up.duration_since(restarted_at)),
        ms(held),
        ms(FAILBACK_AFTER),
        ms(failed_back)
    );
    assert!(
        held >= FAILBACK_AFTER,
        "users went home {} ms after a was up, before failback_after ({} ms)",
        ms(held),
        ms(FAILBACK_AFTER)
    );
    assert!(
        held <= FAILBACK_AFTER + INTERVAL * RISE + MARGIN * 2,
        "users went home only {} ms after a was up",
        ms(held)
    );
    let lost: Vec<&str> = records
        .iter()
        .filter(|s| s.status() != Some(200))
        .map(|s| s.aor.as_str())
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "requests lost or refused around the failback: {lost:?}"
    );

    assert_home(
        &mut tb,
        &users,
        &before,
        "every user is back on exactly its server",
    );

    // An operator's failover of this auto pool holds past failback_after, until failback.
    operator(&ops, "failover", "b");
    let forced_at = Instant::now();
    ops_wait(
        || forced_at.elapsed() >= FAILBACK_AFTER + INTERVAL * 2,
        "failback_after to pass",
    );
    assert_eq!(ops.status().serving("a"), "b", "operator failover holds");
    let forced = assert_a_served_by_b(
        &mut tb,
        &users,
        &before,
        &a_users,
        &b_users,
        "a's users on b (operator)",
    );
    assert_eq!(
        moved(&failed_over, &forced),
        Default::default(),
        "same places as before"
    );
    operator(&ops, "failback", "a");
    assert_home(
        &mut tb,
        &users,
        &before,
        "home after the operator's failback",
    );

    let pool_events: Vec<(String, String)> = events(&tb.siplb.stderr())
        .into_iter()
        .filter_map(|e| match e {
            Event::Pool {
                pool,
                serving,
                reason,
            } if pool == "a" => Some((serving, reason)),
            _ => None,
        })
        .collect();
    let expected = [
        ("b", "pool down, pair up"),
        ("a", "pool up for failback_after"),
        ("b", "operator"),
        ("a", "operator"),
    ];
    assert_eq!(
        pool_events,
        expected.map(|(s, r)| (s.to_string(), r.to_string())),
        "pool a's transitions"
    );
}

#[test]
fn with_both_pools_down_requests_get_503_with_retry_after() {
    let _serial = serial();
    let farm = Farm::pools(&[("a", 1), ("b", 1)], Behaviour::Accept);
    let config = paired(
        Pool::new("a", farm.servers_of("a")).failback_after("1s"),
        Pool::new("b", farm.servers_of("b")).failback_after("1s"),
    )
    .retry_after("7s");
    let (mut tb, ops) = start(farm, &config);
    let users = users(200, DOMAIN);
    let before = tb.sweep(&users);
    let a_users = users_on(&before, &["a1"]);
    assert!(!a_users.is_empty() && a_users.len() < users.len());

    tb.farm.get_mut("a1").stop();
    tb.farm.get_mut("b1").stop();
    wait_pool_state(&ops, "a", "down");
    wait_pool_state(&ops, "b", "down");
    let ready = ops.get("/readyz");
    assert_eq!(
        ready.status, 503,
        "/readyz with every server down: {}",
        ready.body
    );
    for user in users.iter().step_by(10) {
        let answer = tb
            .client
            .transact(tb.siplb.addr(), &Request::register(user));
        assert_eq!(answer.status(), Some(503), "{user}: {}", answer.start);
        assert_eq!(
            answer.header("retry-after"),
            Some("7"),
            "{user}: Retry-After"
        );
    }

    // a comes back first: everyone is served by a1 (b's users by failover; a's at home).
    tb.farm.get_mut("a1").restart();
    wait_pool_state(&ops, "a", "up");
    wait_serving(&ops, "b", "a");
    wait_serving(&ops, "a", "a");
    assert_eq!(ops.get("/readyz").status, 200, "/readyz with a1 up");
    let on_a = tb.sweep(&users);
    assert!(
        on_a.values().all(|s| s == "a1"),
        "with b down, everyone is on a1: {:?}",
        tally(&on_a)
    );

    // Then b: after its failback_after, everyone is home.
    tb.farm.get_mut("b1").restart();
    wait_serving(&ops, "b", "b");
    assert_home(&mut tb, &users, &before, "everyone home");
}

#[test]
fn manual_failover_waits_for_the_operator_and_drain_moves_only_the_drained_servers_users() {
    let _serial = serial();
    let farm = Farm::pools(&[("a", 3), ("b", 2)], Behaviour::Accept);
    let config = paired(
        Pool::new("a", farm.servers_of("a"))
            .manual()
            .failback_after("1s"),
        Pool::new("b", farm.servers_of("b")),
    );
    let (mut tb, ops) = start(farm, &config);
    let users = users(2000, DOMAIN);
    let before = tb.sweep(&users);
    eprintln!("placement before: {:?}", tally(&before));
    let a_users = users_on(&before, &["a1", "a2", "a3"]);
    let b_users = users_on(&before, &["b1", "b2"]);

    // a dies: nobody moves its users, they are refused.
    for id in ["a1", "a2", "a3"] {
        tb.farm.get_mut(id).stop();
    }
    wait_pool_state(&ops, "a", "down");
    let mark = tb.farm.mark();
    let down_at = Instant::now();
    // An auto pool would be failed over by now (same evaluation); give it time anyway.
    ops_wait(
        || down_at.elapsed() >= Duration::from_secs(1),
        "a second with a down",
    );
    let pool = ops.status().pool("a").clone();
    assert_eq!(
        (pool["serving"].as_str(), pool["mode"].as_str()),
        (Some("a"), Some("manual"))
    );
    for user in a_users.iter().step_by(20) {
        let answer = tb
            .client
            .transact(tb.siplb.addr(), &Request::register(user));
        assert_eq!(answer.status(), Some(503), "{user} (home a, down, manual)");
    }
    let leaked = tb.farm.users_since(&mark, tb.siplb.addr());
    assert!(leaked.is_empty(), "a's users reached servers: {leaked:?}");

    // The operator fails a over: a's users are served by b.
    let refused = ops.admin("/admin/pools/a/failover", None);
    assert_eq!(refused.status, 401, "failover without a token");
    operator(&ops, "failover", "b");
    let failed_over = assert_a_served_by_b(
        &mut tb,
        &users,
        &before,
        &a_users,
        &b_users,
        "a's users on b",
    );

    // a comes back; in manual mode its users stay on b past failback_after.
    for id in ["a1", "a2", "a3"] {
        tb.farm.get_mut(id).restart();
    }
    wait_pool_state(&ops, "a", "up");
    let up_at = Instant::now();
    ops_wait(
        || up_at.elapsed() >= Duration::from_millis(1500),
        "a up past failback_after",
    );
    assert_eq!(
        ops.status().serving("a"),
        "b",
        "manual: no automatic failback"
    );
    let still = tb.sweep(&users);
    assert_eq!(moved(&failed_over, &still), Default::default());

    // The operator fails back: everyone is home, on exactly the server they had.
    operator(&ops, "failback", "a");
    assert_home(&mut tb, &users, &before, "users home after failback");

    // Drain a2: only its users move, over a1 and a3; undrain: back home.
    ops.admin_ok("/admin/servers/a2/drain", TOKEN);
    wait_server(&ops, "a2", "drained");
    let drained = tb.sweep(&users);
    let a2_users = users_on(&before, &["a2"]);
    let moved_by_drain = moved(&before, &drained);
    assert_eq!(
        moved_by_drain.keys().cloned().collect::<Vec<_>>(),
        a2_users,
        "exactly a2's users move"
    );
    assert_spread("a2's users", &drained, &a2_users, &["a1", "a3"], SPREAD);
    ops.admin_ok("/admin/servers/a2/undrain", TOKEN);
    wait_server(&ops, "a2", "up");
    assert_home(&mut tb, &users, &before, "users home after undrain");
}

#[test]
fn a_server_flapping_on_every_probe_moves_nobody() {
    let _serial = serial();
    const WATCH: Duration = Duration::from_secs(3);
    let farm = Farm::pools(&[("a", 2), ("b", 2)], Behaviour::Accept);
    // min_up 2: if a1 were ever taken down, pool a would be down and fail over to b.
    let config = paired(
        Pool::new("a", farm.servers_of("a"))
            .min_up(2)
            .failback_after("1s"),
        Pool::new("b", farm.servers_of("b")),
    );
    farm.get("a1").set_probe_answer(ProbeAnswer::Alternate);
    let watch_from = Instant::now();
    let (mut tb, ops) = start(farm, &config);
    let users = users(1000, DOMAIN);
    let before = tb.sweep(&users);

    let load = Load::on_loopback(tb.siplb.addr(), users.clone(), 300, WATCH * 2);
    let mut looks = 0;
    ops_wait(
        || {
            let s = ops.status();
            assert_eq!(s.server_state("a1"), "up", "a1 fell: {}", s.server("a1"));
            assert_eq!(s.serving("a"), "a", "pool a failed over: {}", s.pool("a"));
            looks += 1;
            watch_from.elapsed() >= WATCH
        },
        "the watch to end",
    );
    let records = load.stop();
    let after = tb.sweep(&users);

    let (probes, answered) = tb.farm.get("a1").probes_and_answers_since(watch_from);
    eprintln!("a1 answered {answered} of {probes} probes; /status looked at {looks} times");
    assert!(probes >= 10, "a1 got only {probes} probes in {WATCH:?}");
    assert!(
        answered * 2 >= probes - 1 && answered * 2 <= probes + 1,
        "a1 must answer every other probe: {answered} of {probes}"
    );
    let refused: Vec<&Sent> = records.iter().filter(|s| s.status() != Some(200)).collect();
    assert!(
        refused.is_empty(),
        "{} requests not answered 200 while a1 flapped",
        refused.len()
    );
    assert_eq!(moved(&before, &after), Default::default(), "nobody moved");
    let logged = events(&tb.siplb.stderr());
    assert!(logged.is_empty(), "no transition may be logged: {logged:?}");
}

#[test]
fn status_tells_a_closed_port_a_silent_server_and_a_503_apart() {
    let _serial = serial();
    let mut farm = Farm::start("s", 4, Behaviour::Accept);
    // s5 answers OPTIONS 200 but INVITEs 503: only the wire path's passive signal can tell.
    farm.backends.push(siplb_e2e::Backend::start(
        "s5",
        Behaviour::RejectInvites(503),
    ));
    let config = Config::new()
        .health(fast_probes())
        .ops()
        .pool("fe", farm.servers())
        .route(Route::to("fe"));
    let (mut tb, ops) = start(farm, &config);
    wait_server(&ops, "s4", "up");

    tb.farm.get_mut("s1").stop();
    tb.farm.get("s2").set_silent(true);
    tb.farm.get("s3").set_probe_answer(ProbeAnswer::Status(503));
    let expected = [
        ("s1", "connection refused"),
        ("s2", "probe timed out"),
        ("s3", "probe answered 503"),
    ];
    for (id, reason) in expected {
        let (server, _) = wait_server(&ops, id, "down");
        assert_eq!(server["reason"], reason, "{id}: {server}");
        assert_eq!(server["last_probe"], reason, "{id}: {server}");
        assert!(
            !server.to_string().contains("408"),
            "{id}: a timeout is not a 408: {server}"
        );
    }
    let healthy = ops.status().server("s4").clone();
    assert_eq!(healthy["state"], "up");
    assert_eq!(healthy["last_probe"], "answered 200", "{healthy}");
    assert!(
        healthy["last_rtt_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0 && ms < 150.0),
        "{healthy}"
    );

    let mut logged: Vec<(String, String)> = events(&tb.siplb.stderr())
        .into_iter()
        .filter_map(|e| match e {
            Event::Server {
                server, to, reason, ..
            } if to == "down" => Some((server, reason)),
            _ => None,
        })
        .collect();
    logged.sort();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(id, r)| (id.to_string(), r.to_string()))
        .collect();
    assert_eq!(
        logged, expected,
        "one log line per server that fell, with its reason"
    );
}

#[test]
fn a_pool_whose_servers_all_answer_503_under_load_keeps_them_and_only_probes_take_one_down() {
    let _serial = serial();
    let farm = Farm::start("s", 3, Behaviour::Busy);
    let config = Config::new()
        .health(fast_probes())
        .ops()
        .pool("fe", farm.servers())
        .route(Route::to("fe"));
    let (tb, ops) = start(farm, &config);
    for id in ["s1", "s2", "s3"] {
        wait_server(&ops, id, "up");
    }
    let users = users(300, DOMAIN);
    // 600 REGISTERs at 300/s: every server answers a couple of hundred with 503, far past
    // `fall`, and sees several probe intervals go by meanwhile.
    let load = Load::on_loopback(tb.siplb.addr(), users.clone(), 300, Duration::from_secs(10));
    ops_wait(|| load.answered() >= 600, "600 REGISTERs to be answered");
    let sent = load.stop();
    let relayed = sent.iter().filter(|s| s.status() == Some(503)).count();
    assert_eq!(
        relayed,
        sent.len(),
        "every 503 is relayed to the client ({} sent)",
        sent.len()
    );
    for id in ["s1", "s2", "s3"] {
        let server = ops.status().server(id).clone();
        assert_eq!(server["state"], "up", "{id}: busy is not dead: {server}");
    }
    // Nobody moved: each user's REGISTERs all reached one server.
    let mut holders: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for b in &tb.farm.backends {
        for aor in b.count_by_aor().into_keys() {
            holders.entry(aor).or_default().insert(b.id().to_string());
        }
    }
    let split: Vec<_> = holders
        .iter()
        .filter(|(_, on)| on.len() > 1)
        .take(5)
        .collect();
    assert!(split.is_empty(), "users moved between servers: {split:?}");
    assert_eq!(holders.len(), users.len(), "every user reached a server");
    let logged = events(&tb.siplb.stderr());
    assert!(logged.is_empty(), "no transition may be logged: {logged:?}");

    // A server that answers 503 and whose probes fail too goes down, by its probes.
    tb.farm.get("s2").set_probe_answer(ProbeAnswer::Status(503));
    let (server, _) = wait_server(&ops, "s2", "down");
    assert_eq!(server["reason"], "probe answered 503", "{server}");
    assert_eq!(ops.status().server("s1")["state"], "up");
    assert_eq!(ops.status().server("s3")["state"], "up");
}
