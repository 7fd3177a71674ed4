//! Real-peer suite: replicas of siplb agree on every user (DESIGN.md "Invariants":
//! deterministic; "Scale-out": replicas share nothing for routing).
//!
//! Two siplb processes stand for two pods of one Kubernetes Deployment
//! (`deploy/kubernetes/`, docs/KUBERNETES.md): each reads its own copy of one ConfigMap, laid
//! out as the kubelet lays out a ConfigMap volume (`siplb.toml -> ..data/siplb.toml`), with
//! the same `[routing] branch_key_file`, in front of the same sipp servers
//! (`tests/sipp/uas.xml`, one `REGISTER user` log line per request). A sipp client registers
//! 10,000 users through replica A, then the same 10,000 through replica B, and the suite
//! asserts, from what the servers logged:
//!
//! - every REGISTER got its 200 back through each replica (sipp: no failed call);
//! - each user reached one server through A and one through B, **the same one**, and the
//!   servers share the users evenly;
//! - after a new ConfigMap generation adds a fifth server (swapped in under `..data` in both
//!   replicas' volumes, as the kubelet does on a ConfigMap update) and both replicas reloaded
//!   it, the users again reach the same server through A and through B; the users that moved
//!   all moved to the new server, and they are about a fifth of them (1/(n+1), HRW's promise).
//!
//! It needs `sipp` (`apt-get install -y sip-tester`), so it is `#[ignore]`d and runs with
//! `cargo test -p siplb-e2e --test replicas -- --ignored` (and in `.ci/run`'s real-peer step).
//! Ports are picked free on 127.0.0.1, every process is killed by its own pid when the test
//! ends, every sipp run is bounded by `-m`, `-timeout` and a deadline, and every wait has one.
//! The logs stay in `target/tmp/replicas-*` when the suite fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use siplb_e2e::farm::assert_near;
use siplb_e2e::health::wait_server;
use siplb_e2e::ops::Ops;
use siplb_e2e::reload::{configmap, configmap_swap};
use siplb_e2e::sipp::{find_sipp, offsets, unplaced, user_map, write_users, Uac, Uas, WorkDir};
use siplb_e2e::Siplb;

/// Users registered through each replica in each phase.
const USERS: usize = 10_000;
/// REGISTERs per second of each sipp run: 10,000 users in 5 s, four runs well inside a minute.
const RATE: u32 = 2_000;
/// Servers in the pool before the reload; the reload adds one more.
const SERVERS: usize = 4;
/// The branch key both replicas read (in Kubernetes: the Secret `siplb-branch-key`).
const BRANCH_KEY: &str = "6b1f0e9c2a7d4c3b8e5f1a0d9c8b7a6f";

/// user → the id of the server that logged its REGISTER.
type Placement = BTreeMap<String, String>;

/// The one config of both replicas: a pool `fe` of `servers`, REGISTERs of contoso.com routed
/// to it by To AOR, the branch key from `key_file`. `fall` is high so a server busy with a run
/// is never taken for dead, which would move users in one replica only.
fn config(servers: &[Uas], key_file: &Path) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| {
            format!(
                "  {{ id = \"{}\", address = \"{}\", transport = \"udp\" }},",
                s.id, s.addr
            )
        })
        .collect();
    format!(
        "[listen]\n\
         udp = [\"127.0.0.1:0\"]\n\
         workers = 1\n\n\
         [ops]\n\
         listen = \"127.0.0.1:0\"\n\n\
         [health]\n\
         probe = \"options\"\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         fall = 5\n\
         rise = 1\n\n\
         [routing]\n\
         branch_key_file = \"{}\"\n\n\
         [[pool]]\n\
         name = \"fe\"\n\
         role = \"front-end\"\n\
         servers = [\n{}\n]\n\n\
         [[route]]\n\
         domain = \"contoso.com\"\n\
         pool = \"fe\"\n\
         key = \"to-aor\"\n",
        key_file.display(),
        servers.join("\n")
    )
}

/// One replica: the process and its ops endpoint.
struct Replica {
    name: &'static str,
    siplb: Siplb,
    ops: Ops,
}

impl Replica {
    /// Starts a replica on its own ConfigMap-like volume holding `text`.
    fn start(name: &'static str, text: &str) -> Replica {
        let siplb = Siplb::start_with_file(configmap(text), &[]);
        let ops = Ops::of(&siplb);
        Replica { name, siplb, ops }
    }

    fn addr(&self) -> SocketAddr {
        self.siplb.addr()
    }

    /// Waits until this replica counts each of `servers` up.
    fn wait_up(&self, servers: &[Uas]) {
        for s in servers {
            wait_server(&self.ops, &s.id, "up");
        }
    }
}

/// The files of one run: the sipp work directory, the servers and the users file.
struct Run<'a> {
    sipp: &'a Path,
    work: &'a Path,
    servers: &'a [Uas],
    users_file: &'a Path,
    users: &'a [String],
}

impl Run<'_> {
    /// Registers every user once through `replica` with sipp (none may fail) and returns where
    /// each went, read from the servers' logs of this run only.
    fn sweep(&self, replica: &Replica, phase: &str) -> Placement {
        let from = offsets(self.servers);
        let name = format!("uac-{phase}-{}", replica.name);
        let mut uac = Uac::start_with_users(
            self.sipp,
            self.work,
            &name,
            (replica.addr(), self.users_file),
            self.users.len(),
            RATE,
            Duration::from_secs(40),
        );
        let r = uac.wait(Duration::from_secs(60));
        eprintln!(
            "replicas suite: {phase}, replica {}: {} successful, {} failed, {} retransmitted in {:.1} s",
            replica.name,
            r.successful,
            r.failed,
            r.retransmissions,
            r.took.as_secs_f64()
        );
        uac.assert_no_loss_in(&format!("{phase}, replica {}: ", replica.name), &r);
        let placed = user_map(self.servers, &from, &offsets(self.servers));
        let missing = unplaced(self.users, &placed);
        assert!(
            missing.is_empty(),
            "{phase}, replica {}: users no server logged (first 10): {missing:?}",
            replica.name
        );
        placed
    }
}

/// Asserts both replicas placed every user on the same server.
fn assert_agree(phase: &str, a: &Placement, b: &Placement, users: &[String]) {
    let differ: Vec<String> = users
        .iter()
        .filter(|u| a.get(*u) != b.get(*u))
        .map(|u| format!("{u}: A {:?}, B {:?}", a.get(u), b.get(u)))
        .collect();
    assert!(
        differ.is_empty(),
        "{phase}: {} of {} users reached different servers through the two replicas (first 10): \
         {:#?}",
        differ.len(),
        users.len(),
        &differ[..differ.len().min(10)]
    );
}

/// Asserts each of `servers` got its even share of the users (±15%).
fn assert_even(phase: &str, placed: &Placement, servers: &[Uas]) {
    let share = placed.len() as f64 / servers.len() as f64;
    for s in servers {
        let got = placed.values().filter(|id| **id == s.id).count();
        assert_near(&format!("{phase}: users on {}", s.id), got, share, 0.15);
    }
}

#[test]
#[ignore = "real-peer suite: needs sipp (apt-get install -y sip-tester)"]
fn replicas_on_one_config_send_every_user_to_the_same_server_before_and_after_a_reload() {
    let sipp = find_sipp();
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "replicas");
    eprintln!("replicas suite: logs in {}", work.path.display());
    let users_file = work.path.join("users.csv");
    let users = write_users(&users_file, USERS);
    let key_file = work.path.join("branch-key");
    std::fs::write(&key_file, format!("{BRANCH_KEY}\n")).expect("write the branch key");

    // Each answers OPTIONS when `Uas::start` returns; the fifth joins at the reload.
    let servers: Vec<Uas> = (1..=SERVERS + 1)
        .map(|i| Uas::start(&sipp, &work.path, &format!("fe{i}")))
        .collect();
    let (four, five) = (&servers[..SERVERS], &servers[..]);

    let before_text = config(four, &key_file);
    let a = Replica::start("A", &before_text);
    let b = Replica::start("B", &before_text);
    for r in [&a, &b] {
        r.wait_up(four);
    }
    let run = Run {
        sipp: &sipp,
        work: &work.path,
        servers: &servers,
        users_file: &users_file,
        users: &users,
    };

    let before_a = run.sweep(&a, "before");
    let before_b = run.sweep(&b, "before");
    assert_agree("before the reload", &before_a, &before_b, &users);
    assert!(
        before_a.values().all(|id| *id != servers[SERVERS].id),
        "{} is not in the config yet",
        servers[SERVERS].id
    );
    assert_even("before the reload", &before_a, four);

    // A new ConfigMap generation, published in each replica's volume.
    let after_text = config(five, &key_file);
    for r in [&a, &b] {
        configmap_swap(r.siplb.config(), &after_text);
    }
    for r in [&a, &b] {
        r.ops.wait_config_version(2);
        r.wait_up(five);
    }

    let after_a = run.sweep(&a, "after");
    let after_b = run.sweep(&b, "after");
    assert_agree("after the reload", &after_a, &after_b, &users);
    assert_even("after the reload", &after_a, five);

    let new = &servers[SERVERS].id;
    let moved: Vec<(&String, &String, &String)> = users
        .iter()
        .filter_map(|u| {
            let (was, now) = (before_a.get(u)?, after_a.get(u)?);
            (was != now).then_some((u, was, now))
        })
        .collect();
    let elsewhere: Vec<_> = moved
        .iter()
        .filter(|(_, _, now)| *now != new)
        .take(10)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "users moved between the servers that were there before: {elsewhere:?}"
    );
    eprintln!(
        "replicas suite: {} of {} users moved to {new} (1/{} expected)",
        moved.len(),
        users.len(),
        SERVERS + 1
    );
    assert_near(
        &format!("users moved to {new}"),
        moved.len(),
        USERS as f64 / (SERVERS + 1) as f64,
        0.15,
    );

    drop((a, b));
    drop(servers);
    work.remove();
}
