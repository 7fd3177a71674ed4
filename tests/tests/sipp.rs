//! Real-peer suite: the built `siplb` binary between sipp clients and sipp servers.
//!
//! Four sipp servers (`tests/sipp/uas.xml`) are the backends of one pool; a sipp client
//! (`tests/sipp/uac_register.xml`) registers the 5,000 users of `tests/sipp/users.csv` through
//! siplb at a modest rate. The suite asserts what DESIGN.md promises for registrations:
//!
//! - every REGISTER gets its 200 back through siplb (sipp's exit status and its statistics
//!   file: no failed call);
//! - every user reaches exactly one backend (each backend logs "REGISTER user" per request);
//! - the same user reaches the same backend in a second run through a freshly started siplb
//!   with a different number of worker sockets (the choice is a function of config and
//!   health only, not of the process or the socket that read the datagram);
//! - each backend gets a reasonable share of the users (HRW spreads them evenly);
//! - for a sample of users, the backend is the one `siplb route` names for the same config
//!   (the CLI and the wire path agree).
//!
//! It needs `sipp` (`apt-get install -y sip-tester`), so it is `#[ignore]`d and runs with
//! `cargo test -p siplb-e2e --test sipp -- --ignored` (as `.ci/run` does). Without `sipp` on
//! the PATH it fails rather than passing silently. The proxy is the binary named by
//! `SIPLB_BIN`, or `siplb` of the same target directory and profile as this test (so build
//! it first: `cargo build -p siplb`, which `cargo test --workspace` also does).
//!
//! Ports are picked free on 127.0.0.1, every process this test starts is killed when it
//! ends, every sipp run is bounded by `-m` and `-timeout`, and every wait has a deadline.
//! The logs stay in `target/tmp/sipp-*` when the suite fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use siplb_e2e::sipp::{
    client_socket, find_sipp, offsets, read_users, registrations, scenarios, sip_request, unplaced,
    Uac, Uas, WorkDir,
};
use siplb_e2e::{process, Siplb};

/// Backends in the pool.
const BACKENDS: usize = 4;
/// REGISTERs per second sent by the sipp client: modest, this is a correctness suite.
const RATE: u32 = 500;
/// The domain of every user in `users.csv`, and the domain the route matches.
const DOMAIN: &str = "contoso.com";
/// Warm-up users sent before each run until every backend has seen one (proof that siplb
/// counts all of them up). Not in `users.csv`, so they never enter the user→backend maps.
const WARMUP_USERS: usize = 64;
/// A backend must get between these fractions of the users (expected: 1/BACKENDS).
const SHARE_BOUNDS: (f64, f64) = (0.15, 0.35);

#[test]
#[ignore = "real-peer suite: needs sipp (apt-get install -y sip-tester)"]
fn registrations_are_answered_and_sticky_across_runs() {
    let sipp = find_sipp();
    let siplb = process::siplb_bin();
    let csv = scenarios().join("users.csv");
    let users = read_users(&csv);
    assert!(
        users.len() >= 1000,
        "{} holds only {} users",
        csv.display(),
        users.len()
    );
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "sipp");
    eprintln!(
        "sipp suite: sipp = {}, siplb = {}, logs in {}",
        sipp.display(),
        siplb.display(),
        work.path.display()
    );

    // Each is answering OPTIONS when `Uas::start` returns.
    let backends: Vec<Uas> = (0..BACKENDS)
        .map(|i| Uas::start(&sipp, &work.path, &format!("backend{i}")))
        .collect();

    let mut maps = Vec::new();
    for (run, workers) in [(1, 2), (2, 1)] {
        let text = siplb_config(workers, &backends);
        let _ = fs::write(work.path.join(format!("siplb-run{run}.toml")), &text);
        let proxy = Siplb::start(&text);
        warm_up(proxy.addr(), &backends);
        let offsets = offsets(&backends);
        run_uac(&sipp, &work.path, run, proxy.addr(), users.len());
        let map = user_map(&backends, &offsets, &users);
        check_run(run, &map, &users);
        check_against_cli(&siplb, proxy.config().path(), &map, &backends, &users);
        drop(proxy);
        maps.push(map);
    }

    let moved: Vec<&String> = users
        .iter()
        .filter(|u| maps[0].get(*u) != maps[1].get(*u))
        .collect();
    let examples: Vec<String> = moved
        .iter()
        .take(10)
        .map(|u| {
            format!(
                "{u}: backend {:?} then {:?}",
                maps[0].get(*u),
                maps[1].get(*u)
            )
        })
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} users reached different backends in the two runs (first 10): {examples:#?}\n\
         logs: {}",
        moved.len(),
        users.len(),
        work.path.display()
    );

    work.remove();
}

// --------------------------------------------------------------------------------------------
// What is checked

/// user → backend index, from the backends' logs.
type UserMap = BTreeMap<String, usize>;

/// Reads every backend's log from `from` on (this run's part) and maps each user of `users`
/// to the backend that got it. A user seen by two backends is a failure.
fn user_map(backends: &[Uas], from: &[u64], users: &[String]) -> UserMap {
    let known: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    let mut seen = registrations(backends, from, &offsets(backends));
    seen.retain(|user, _| known.contains(user.as_str()));
    let split: Vec<String> = seen
        .iter()
        .filter(|(_, set)| set.len() > 1)
        .take(10)
        .map(|(u, set)| format!("{u}: backends {set:?}"))
        .collect();
    assert!(
        split.is_empty(),
        "users reached more than one backend in one run: {split:#?}"
    );
    seen.into_iter()
        .filter_map(|(u, set)| set.first().map(|&b| (u, b)))
        .collect()
}

/// Every user reached a backend, and each backend got a reasonable share.
fn check_run(run: usize, map: &UserMap, users: &[String]) {
    let missing = unplaced(users, map);
    assert!(
        missing.is_empty(),
        "run {run}: users that reached no backend (first 10): {missing:?}"
    );

    let mut per_backend = [0usize; BACKENDS];
    for &b in map.values() {
        per_backend[b] += 1;
    }
    eprintln!("sipp suite: run {run}: users per backend {per_backend:?}");
    let total = users.len() as f64;
    for (b, &n) in per_backend.iter().enumerate() {
        let share = n as f64 / total;
        assert!(
            (SHARE_BOUNDS.0..=SHARE_BOUNDS.1).contains(&share),
            "run {run}: backend {b} got {n} of {} users ({:.1}%), outside {:.0}%..{:.0}%: {per_backend:?}",
            users.len(),
            share * 100.0,
            SHARE_BOUNDS.0 * 100.0,
            SHARE_BOUNDS.1 * 100.0
        );
    }
}

/// For every 50th user, `siplb route --config CONFIG REGISTER sip:USER@DOMAIN` names the
/// backend that user's REGISTER reached.
fn check_against_cli(bin: &Path, config: &Path, map: &UserMap, backends: &[Uas], users: &[String]) {
    let mut disagree = Vec::new();
    for user in users.iter().step_by(50) {
        let aor = format!("sip:{user}@{DOMAIN}");
        let out = Command::new(bin)
            .arg("route")
            .arg("--config")
            .arg(config)
            .args(["REGISTER", &aor])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} route: {e}", bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        // "server  ID ADDRESS TRANSPORT"
        let named = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&"server"))
            .and_then(|w| w.get(2).map(|a| a.to_string()));
        let reached = map.get(user).map(|&b| backends[b].addr.to_string());
        assert!(
            out.status.success() && named.is_some(),
            "siplb route {aor} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if named != reached {
            disagree.push(format!(
                "{user}: siplb route says {named:?}, sipp saw {reached:?}"
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "siplb route and the wire path disagree: {disagree:#?}"
    );
}

/// Registers every user once through siplb with sipp and asserts no call failed.
fn run_uac(sipp: &Path, work: &Path, run: usize, proxy: SocketAddr, calls: usize) {
    let name = format!("uac-run{run}");
    let mut uac = Uac::start(
        sipp,
        work,
        &name,
        proxy,
        calls,
        RATE,
        Duration::from_secs(60),
    );
    let r = uac.wait(Duration::from_secs(90));
    eprintln!(
        "sipp suite: run {run}: {} successful, {} failed calls in {:.1} s ({})",
        r.successful,
        r.failed,
        r.took.as_secs_f64(),
        r.status
    );
    uac.assert_no_loss_in(&format!("run {run}: "), &r);
}

/// Sends REGISTERs for the warm-up users through siplb until each backend has logged one:
/// then siplb counts every backend up, and the runs see the same health.
fn warm_up(proxy: SocketAddr, backends: &[Uas]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let sock = client_socket();
    loop {
        let offsets = offsets(backends);
        let mut answered = 0;
        for k in 0..WARMUP_USERS {
            if sip_request(&sock, proxy, "REGISTER", &format!("warmup{k:02}")) == Some(200) {
                answered += 1;
            } else if Instant::now() > deadline {
                break;
            }
        }
        let reached: Vec<bool> = backends
            .iter()
            .zip(&offsets)
            .map(|(b, &o)| {
                b.log_since(o)
                    .lines()
                    .any(|l| l.starts_with("REGISTER warmup"))
            })
            .collect();
        if answered == WARMUP_USERS && reached.iter().all(|&r| r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "siplb at {proxy} did not bring every backend into use within 20 s: \
             {answered}/{WARMUP_USERS} warm-up REGISTERs answered 200, backends reached: {reached:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The config of both runs: one pool `fe` of the backends, REGISTERs for the users' domain
/// routed to it by To AOR. Probes are OPTIONS (the backends answer them); `fall` is high so a
/// backend busy with the run is never taken for dead, which would move users.
fn siplb_config(workers: usize, backends: &[Uas]) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| {
            format!(
                "  {{ id = \"{}\", address = \"{}\", transport = \"udp\" }},",
                b.id, b.addr
            )
        })
        .collect();
    format!(
        "[listen]\n\
         udp = [\"127.0.0.1:0\"]\n\
         workers = {workers}\n\n\
         [health]\n\
         probe = \"options\"\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         fall = 5\n\
         rise = 1\n\n\
         [[pool]]\n\
         name = \"fe\"\n\
         role = \"front-end\"\n\
         servers = [\n{}\n]\n\n\
         [[route]]\n\
         domain = \"{DOMAIN}\"\n\
         pool = \"fe\"\n\
         key = \"to-aor\"\n",
        servers.join("\n")
    )
}
