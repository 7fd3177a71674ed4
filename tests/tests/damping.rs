//! No cascades, as users live through them: the built siplb in front of in-process SIP servers,
//! one of which answers every request `503` with `Retry-After: 5` (busy) while its probes pass or
//! fail, or one stopped and restarted again and again (flapping).
//!
//! - a busy server whose probes pass keeps its users: a 503 is relayed and counted, never a
//!   reason to move anyone;
//! - a busy server whose probes fail too backs off at once (long before `fall` probes could take
//!   it down), its users go to the others, and it comes back only once the Retry-After has run
//!   and `rise` probes passed;
//! - a flapping server is held out of hashing after it comes back, longer at each flap.
//!
//! Assertions about users are made on what the servers received and what the clients were
//! answered; `/status` tells when a phase has begun and is checked for what it shows.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use siplb_e2e::config::Health;
use siplb_e2e::farm::users;
use siplb_e2e::health::{wait_server, JSON_LOGS};
use siplb_e2e::load::Load;
use siplb_e2e::ops::{wait_until, Ops};
use siplb_e2e::placement::{sweep, users_on};
use siplb_e2e::{Backend, Behaviour, Client, Config, Farm, ProbeAnswer, Route, Siplb, Testbed};

const DOMAIN: &str = "contoso.com";
/// The harness's busy backend answers `Retry-After: 5`.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One test at a time: the timing bounds are about siplb, not about the other tests.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `farm` behind siplb, one pool `fe` of all its servers, with `health` and these extra
/// `[health]` lines; JSON logs.
fn start(farm: Farm, health: Health, extra_health: &str) -> (Testbed, Ops) {
    let config = Config::new()
        .health(health)
        .ops()
        .pool("fe", farm.servers())
        .route(Route::to("fe"))
        .render()
        .replacen("[health]\n", &format!("[health]\n{extra_health}"), 1);
    assert!(config.contains(extra_health), "{config}");
    let siplb = Siplb::start_with_env(&(config + JSON_LOGS), &[]);
    Testbed::with_ops(farm, siplb)
}

/// Two servers that accept everything (s1, s2) and a busy one (s3).
fn farm_with_a_busy_server() -> Farm {
    let mut farm = Farm::start("s", 2, Behaviour::Accept);
    farm.backends.push(Backend::start("s3", Behaviour::Busy));
    farm
}

fn wait(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    wait_until(what, within, || {
        if cond() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}

/// `siplb_passive_signals_total{pool="fe",signal="503",effect=effect}`.
fn passive_503(ops: &Ops, effect: &str) -> f64 {
    ops.metrics().sum(
        "siplb_passive_signals_total",
        &[("pool", "fe"), ("signal", "503"), ("effect", effect)],
    )
}

/// The recent events of `/status` about server `id`, oldest first.
fn events_of(ops: &Ops, id: &str) -> Vec<Value> {
    let mut events: Vec<Value> = ops.status().0["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["server"] == id)
        .collect();
    events.reverse();
    events
}

/// Milliseconds since midnight of an RFC 3339 UTC timestamp `…THH:MM:SS.mmmZ` (the tests run
/// far from midnight's edge or fail loudly).
fn ms_of_day(t: &str) -> u64 {
    let time = t.split('T').nth(1).unwrap_or_else(|| panic!("{t}"));
    let time = time.trim_end_matches('Z');
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let parts: Vec<u64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{t}");
    ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000 + millis.parse::<u64>().unwrap()
}

#[test]
fn a_busy_server_whose_probes_pass_keeps_its_users() {
    let _serial = serial();
    let (tb, ops) = start(
        farm_with_a_busy_server(),
        Health::options("200ms", "150ms", 2, 2),
        "",
    );
    for id in ["s1", "s2", "s3"] {
        wait_server(&ops, id, "up");
    }
    let users = users(150, DOMAIN);
    // 900 REGISTERs at 300/s: s3 answers its third with 503 + Retry-After: 5, each asking for a
    // probe at once, over some fifteen probe intervals.
    let load = Load::on_loopback(tb.siplb.addr(), users.clone(), 300, Duration::from_secs(10));
    wait("900 REGISTERs answered", Duration::from_secs(10), || {
        load.answered() >= 900
    });
    let late = Instant::now() - Duration::from_millis(500);
    let sent = load.stop();
    let busy: BTreeSet<String> = tb.farm.get("s3").count_by_aor().into_keys().collect();
    assert!(
        busy.len() > users.len() / 5,
        "s3 had too few users: {}",
        busy.len()
    );
    // Every request of s3's users reached s3 and got its 503, to the end of the load.
    for s in sent.iter().filter(|s| s.answered()) {
        let expected = if busy.contains(&s.aor) { 503 } else { 200 };
        assert_eq!(s.status(), Some(expected), "{}: {s:?}", s.aor);
    }
    let late_on_s3 = tb.farm.get("s3").requests_since(late).len();
    assert!(
        late_on_s3 > 20,
        "s3 kept receiving its users to the end: {late_on_s3} requests in the last 500 ms"
    );
    let server = ops.status().server("s3").clone();
    assert_eq!(server["state"], "up", "busy is not dead: {server}");
    assert!(server.get("backoff_until").is_none(), "{server}");
    assert!(passive_503(&ops, "probe_asked") >= 100.0);
    assert_eq!(passive_503(&ops, "backoff"), 0.0, "no backoff");
    assert!(events_of(&ops, "s3").is_empty(), "no event about s3");
}

#[test]
fn a_busy_server_whose_probes_fail_backs_off_at_once_and_returns_after_retry_after_and_rise() {
    let _serial = serial();
    // Probes every second, fall 5: probes alone would take s3 out only after five failures
    // (interval + fall x timeout at best, fall x interval at worst).
    const INTERVAL: Duration = Duration::from_secs(1);
    const FALL: u32 = 5;
    let (tb, ops) = start(
        farm_with_a_busy_server(),
        Health::options("1s", "300ms", FALL, 2),
        "",
    );
    for id in ["s1", "s2", "s3"] {
        wait_server(&ops, id, "up");
    }
    let users = users(150, DOMAIN);
    let load = Load::on_loopback(tb.siplb.addr(), users.clone(), 200, Duration::from_secs(30));
    wait("the load to get going", Duration::from_secs(10), || {
        load.answered() >= 200
    });
    let busy: BTreeSet<String> = tb.farm.get("s3").count_by_aor().into_keys().collect();
    assert!(!busy.is_empty(), "s3 has users");

    // s3 stops answering probes: the next 503 asks for one, it times out, and s3 backs off.
    let failing_from = Instant::now();
    tb.farm.get("s3").set_probe_answer(ProbeAnswer::Ignore);
    let (server, _) = wait_server(&ops, "s3", "backoff");
    let out_at = Instant::now();
    // Its probes pass again: still out until the Retry-After has run.
    tb.farm.get("s3").set_probe_answer(ProbeAnswer::Ok);
    let took = out_at - failing_from;
    eprintln!(
        "s3 in backoff in /status {} ms after its probes began to fail",
        took.as_millis()
    );
    assert!(
        took < INTERVAL * FALL,
        "s3 out after {took:?}, not before fall x interval"
    );
    assert!(server["backoff_until"].is_string(), "{server}");
    assert!(
        server["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Retry-After") && r.contains("5s")),
        "{server}"
    );

    let (server, _) = wait_server(&ops, "s3", "up");
    let back_at = Instant::now();
    eprintln!(
        "s3 up in /status {} ms after its probes began to fail (Retry-After: 5)",
        (back_at - failing_from).as_millis()
    );
    assert!(
        back_at - failing_from >= RETRY_AFTER,
        "s3 back {:?} after its probes began to fail, before its Retry-After",
        back_at - failing_from
    );
    assert!(server.get("backoff_until").is_none(), "{server}");
    // Some more load with s3 back.
    let more = load.answered() + 200;
    wait("200 more REGISTERs", Duration::from_secs(10), || {
        load.answered() >= more
    });
    let sent = load.stop();

    // While out, s3 got its probes but no request; its users were answered 200 by the others.
    let margin = Duration::from_millis(100);
    let during = |at: Instant| at > out_at + margin && at + margin < back_at;
    let s3 = tb.farm.get("s3");
    let stray = s3
        .requests_since(out_at)
        .iter()
        .filter(|d| during(d.at))
        .count();
    assert_eq!(stray, 0, "s3 received requests while backing off");
    assert!(
        s3.probes_since(out_at).iter().any(|d| during(d.at)),
        "s3 is probed while backing off"
    );
    let moved: Vec<_> = sent
        .iter()
        .filter(|s| busy.contains(&s.aor) && during(s.at))
        .collect();
    assert!(moved.len() > 50, "s3's users kept sending: {}", moved.len());
    for s in &moved {
        assert_eq!(s.status(), Some(200), "{} while s3 is out: {s:?}", s.aor);
    }
    let on_others: HashSet<String> = ["s1", "s2"]
        .iter()
        .flat_map(|id| tb.farm.get(id).count_by_aor().into_keys())
        .filter(|aor| busy.contains(aor))
        .collect();
    assert!(
        on_others.len() * 2 > busy.len(),
        "most of s3's users went to s1 and s2: {} of {}",
        on_others.len(),
        busy.len()
    );
    // Back, s3 gets its users again (and answers them 503, only counted).
    assert!(
        sent.iter()
            .any(|s| busy.contains(&s.aor) && s.at > back_at + margin && s.status() == Some(503)),
        "s3's users are home"
    );

    assert!(passive_503(&ops, "backoff") >= 1.0);
    let events: Vec<String> = events_of(&ops, "s3")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events[0].starts_with("up → backoff: answered 503 with Retry-After"),
        "{events:?}"
    );
    assert!(events[1].starts_with("backoff → up"), "{events:?}");
}

#[test]
fn a_flapping_server_is_held_out_longer_at_each_flap() {
    let _serial = serial();
    let farm = Farm::start("s", 3, Behaviour::Accept);
    let (mut tb, ops) = start(
        farm,
        Health::options("200ms", "150ms", 2, 2),
        "flap_window = \"60s\"\nflap_hold = \"2s\"\n",
    );
    for id in ["s1", "s2", "s3"] {
        wait_server(&ops, id, "up");
    }
    let users = users(60, DOMAIN);
    let mut client = Client::new();
    let home = sweep(&tb.farm, &mut client, tb.siplb.addr(), &users);
    let s1_users = users_on(&home, &["s1"]);
    assert!(!s1_users.is_empty(), "s1 has users: {home:?}");

    // Down once and back: exactly as without damping, no hold.
    tb.farm.get_mut("s1").stop();
    wait_server(&ops, "s1", "down");
    tb.farm.get_mut("s1").restart();
    let (server, _) = wait_server(&ops, "s1", "up");
    assert!(server.get("held_until").is_none(), "{server}");

    // Each flap after it holds s1 out twice as long as the one before.
    let mut held = Vec::new();
    for (flap, hold) in [("2nd", 2u64), ("3rd", 4)] {
        tb.farm.get_mut("s1").stop();
        wait_server(&ops, "s1", "down");
        tb.farm.get_mut("s1").restart();
        let (server, _) = wait_server(&ops, "s1", "held");
        let held_at = Instant::now();
        let until = server["held_until"]
            .as_str()
            .unwrap_or_else(|| panic!("held_until: {server}"))
            .to_string();
        let expected = format!("flapping (down the {flap} time in 60s): held {hold}s");
        let event = events_of(&ops, "s1")
            .into_iter()
            .rev()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains(&expected)))
            .unwrap_or_else(|| panic!("no event {expected:?}: {:?}", events_of(&ops, "s1")));
        assert_eq!(event["message"], format!("down → held: {expected}"));
        // held_until is the hold after the event (clocks read a few ms apart).
        let from_event = ms_of_day(&until) as i64 - ms_of_day(event["at"].as_str().unwrap()) as i64;
        assert!(
            (from_event - 1000 * hold as i64).abs() < 100,
            "held_until {until} is {from_event} ms after the event {event}"
        );

        // Held: s1 answers its probes, but its users are served by the others.
        let during = sweep(&tb.farm, &mut client, tb.siplb.addr(), &s1_users);
        let stayed = users_on(&during, &["s1"]);
        assert!(stayed.is_empty(), "users sent to s1 while held: {stayed:?}");
        assert!(
            held_at.elapsed() < Duration::from_secs(hold),
            "sweep too slow"
        );

        wait_server(&ops, "s1", "up");
        let out = held_at.elapsed();
        assert!(
            out + Duration::from_millis(300) >= Duration::from_secs(hold),
            "s1 held {out:?}, less than {hold} s"
        );
        eprintln!(
            "{flap} flap: s1 held {} ms (hold {hold} s)",
            out.as_millis()
        );
        held.push(out);
        let back = sweep(&tb.farm, &mut client, tb.siplb.addr(), &s1_users);
        assert_eq!(
            users_on(&back, &["s1"]).len(),
            s1_users.len(),
            "s1's users are home after the hold"
        );
    }
    assert!(
        held[1] > held[0] + Duration::from_secs(1),
        "the hold grows: {held:?}"
    );
    let holds = ops
        .metrics()
        .sum("siplb_flap_holds_total", &[("pool", "fe")]);
    assert_eq!(holds, 2.0, "two holds counted");
}
