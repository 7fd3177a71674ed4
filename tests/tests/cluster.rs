//! Replicas that agree (`[cluster]`, README "Fleet"), on loopback with the real binary:
//!
//! - three replicas name each other's ops endpoints: each asks the others for their view every
//!   interval and shows them in `/status` (answering, same config); when a pool's server stops
//!   answering probes, every replica sees it down, the fleet's verdict is down, and each of
//!   them fails the pool over to its pair; when it is back, they fail it back;
//! - with three servers in each pool, sixty users reach the same server through each of the
//!   three replicas: at home, on the pair while the fleet has failed their pool over, and at
//!   home again, each on the server it had before;
//! - `/cluster/view` answers only the cluster token: no token or a wrong one is `401`, counted
//!   in `siplb_cluster_auth_failures_total`; two replicas with different tokens show each
//!   other as `unauthorized` and keep routing; a siplb without `[cluster]` has no view (`404`).
//!
//! - (real-peer suite, `#[ignore]`d: it needs root and iproute2) a replica in a network
//!   namespace of its own loses its route to one pool's server while its two peers keep
//!   theirs: it does not fail the pool over, it turns not ready naming the pool, and it is
//!   ready again when its route returns; the peers never move the pool either.
//!
//! Ports: the loopback tests pick the ops endpoints free on 127.0.0.1 (each replica must name
//! the others before they start); everything else binds port 0. Every wait has a deadline;
//! every process is stopped by its own PID.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use siplb_e2e::config::{Health, Pool};
use siplb_e2e::health::wait_serving;
use siplb_e2e::http::get_with_token;
use siplb_e2e::netns::{self, ip, Lab, Proc};
use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::ports::free_tcp_port;
use siplb_e2e::process::{siplb_bin, ConfigFile};
use siplb_e2e::{Backend, Behaviour, Client, Config, ProbeAnswer, Request, Route, Server, Siplb};

const TOKEN: &str = "fleet-e2e-token-9a3c";

/// Pool `a` (home of every user) paired with `b`, one server each, probed every 200 ms.
fn config(a: &Backend, b: &Backend) -> Config {
    Config::new()
        .ops()
        .health(Health::options("200ms", "150ms", 2, 1))
        .pool_with(
            Pool::new("a", vec![Server::of(a)])
                .pair("b")
                .failback_after("1s"),
        )
        .pool_with(Pool::new("b", vec![Server::of(b)]).pair("a"))
        .route(Route::to("a"))
}

fn free_ops() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
}

/// Starts one replica per ops address, each naming the others, with `tokens[i]`.
fn fleet(config: &Config, tokens: &[&str]) -> Vec<(Siplb, Ops)> {
    let addrs: Vec<SocketAddr> = tokens.iter().map(|_| free_ops()).collect();
    addrs
        .iter()
        .zip(tokens)
        .map(|(&me, token)| {
            let peers: Vec<SocketAddr> = addrs.iter().copied().filter(|&a| a != me).collect();
            let text = config.render_replica(me, &peers);
            let siplb = Siplb::start_with_env(&text, &[("SIPLB_CLUSTER_TOKEN", token)]);
            let ops = Ops::of(&siplb);
            assert_eq!(ops.addr(), me);
            (siplb, ops)
        })
        .collect()
}

/// The `cluster` part of `/status`.
fn cluster_status(ops: &Ops) -> Value {
    ops.status().0["cluster"].clone()
}

/// Waits until every peer in `ops`'s `/status` shows `result`.
fn wait_peers(ops: &Ops, result: &str) -> Value {
    wait_until(
        &format!("every peer of {} {result}", ops.addr()),
        SHOWS_WITHIN,
        || {
            let c = cluster_status(ops);
            let peers = c["peers"].as_array().cloned().unwrap_or_default();
            if !peers.is_empty() && peers.iter().all(|p| p["result"] == result) {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
}

/// The fleet's verdict on pool `a` in `ops`'s `/status`, once it is `verdict`.
fn wait_verdict(ops: &Ops, verdict: &str) -> Value {
    wait_until(
        &format!("verdict {verdict} on pool a at {}", ops.addr()),
        SHOWS_WITHIN,
        || {
            let c = cluster_status(ops);
            let a = c["pools"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "a"))
                .cloned()
                .unwrap_or(Value::Null);
            if a["verdict"] == verdict {
                Ok(a)
            } else {
                Err(c.to_string())
            }
        },
    )
}

/// A REGISTER through `siplb` is answered 200 and reaches `server`.
fn registers_through(siplb: &Siplb, server: &Backend, user: &str) {
    let mut client = Client::new();
    let req = Request::register(&format!("sip:{user}@contoso.com"));
    let answer = client.transact(siplb.addr(), &req);
    assert_eq!(answer.status(), Some(200), "REGISTER {user}");
    assert_eq!(
        server.with_call_id(&req.call_id()).len(),
        1,
        "REGISTER {user} reached {}",
        server.id()
    );
}

#[test]
fn three_replicas_exchange_views_and_fail_a_pool_over_and_back_together() {
    let a = Backend::start("a1", Behaviour::Accept);
    let b = Backend::start("b1", Behaviour::Accept);
    let replicas = fleet(&config(&a, &b), &[TOKEN, TOKEN, TOKEN]);

    for (siplb, ops) in &replicas {
        let c = wait_peers(ops, "ok");
        assert_eq!(
            (c["observers"].as_u64(), c["quorum"].as_u64()),
            (Some(3), Some(2))
        );
        for peer in c["peers"].as_array().unwrap() {
            assert_eq!(peer["config_matches"], true, "{peer}");
            assert!(peer["last_ok"].is_string(), "{peer}");
        }
        let urls: Vec<String> = c["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["url"].as_str().unwrap().to_string())
            .collect();
        let others: Vec<String> = replicas
            .iter()
            .map(|(_, o)| format!("http://{}", o.addr()))
            .filter(|u| *u != format!("http://{}", ops.addr()))
            .collect();
        assert_eq!(urls, others, "each replica shows the other two");
        let a_verdict = wait_verdict(ops, "up");
        assert_eq!(
            (a_verdict["answered"].as_u64(), a_verdict["down"].as_u64()),
            (Some(3), Some(0))
        );
        registers_through(siplb, &a, "alice");
    }

    // a stops answering probes: every replica sees it down, so does the fleet.
    a.set_probe_answer(ProbeAnswer::Ignore);
    for (_, ops) in &replicas {
        wait_serving(ops, "a", "b");
        let v = wait_verdict(ops, "down");
        assert_eq!(v["answered"].as_u64(), Some(3), "{v}");
        assert_eq!(ops.get("/readyz").status, 200, "the fleet agrees: ready");
    }
    for (i, (siplb, _)) in replicas.iter().enumerate() {
        registers_through(siplb, &b, &format!("bob{i}"));
    }

    // a is back: the fleet sees it up for failback_after, and every replica sends users home.
    a.set_probe_answer(ProbeAnswer::Ok);
    for (_, ops) in &replicas {
        wait_serving(ops, "a", "a");
    }
    for (i, (siplb, _)) in replicas.iter().enumerate() {
        registers_through(siplb, &a, &format!("carol{i}"));
    }
    let m = replicas[0].1.metrics();
    for (_, ops) in &replicas[1..] {
        let peer = format!("http://{}", ops.addr());
        assert!(
            m.sum(
                "siplb_cluster_exchanges_total",
                &[("peer", &peer), ("result", "ok")]
            ) >= 1.0,
            "exchanges with {peer} counted"
        );
    }
}

#[test]
fn the_view_needs_the_cluster_token_and_a_wrong_one_changes_no_routing() {
    let a = Backend::start("a1", Behaviour::Accept);
    let b = Backend::start("b1", Behaviour::Accept);
    // Two replicas that do not share a token.
    let replicas = fleet(&config(&a, &b), &[TOKEN, "another-token-77"]);
    let (x, x_ops) = &replicas[0];
    let (y, y_ops) = &replicas[1];
    wait_peers(x_ops, "unauthorized");
    wait_peers(y_ops, "unauthorized");

    let before = x_ops
        .metrics()
        .sum("siplb_cluster_auth_failures_total", &[]);
    let none = get_with_token(x_ops.addr(), "/cluster/view", None);
    assert_eq!(none.status, 401, "{}", none.body);
    let wrong = get_with_token(x_ops.addr(), "/cluster/view", Some("nope"));
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let after = x_ops
        .metrics()
        .sum("siplb_cluster_auth_failures_total", &[]);
    assert!(
        after >= before + 2.0,
        "both refusals counted ({before} → {after}); y's are counted too"
    );

    let view = get_with_token(x_ops.addr(), "/cluster/view", Some(TOKEN));
    assert_eq!(view.status, 200, "{}", view.body);
    let v = view.json();
    assert_eq!(v["replica"], x_ops.addr().to_string());
    assert_eq!(v["config_digest"].as_str().map(str::len), Some(16), "{v}");
    let pools: Vec<(String, bool)> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["up"] == true))
        .collect();
    assert_eq!(pools, [("a".to_string(), true), ("b".to_string(), true)]);

    // No quorum (one of two answered), but nothing was down: both route as before.
    registers_through(x, &a, "dave");
    registers_through(y, &a, "erin");
    assert_eq!(x_ops.get("/readyz").status, 200);
    assert_eq!(cluster_status(x_ops)["pools"][0]["verdict"], "undecided");

    // A siplb without [cluster] has no view to give.
    let alone = Siplb::start(&config(&a, &b).render());
    let r = get_with_token(Ops::of(&alone).addr(), "/cluster/view", Some(TOKEN));
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(Ops::of(&alone).status().0.get("cluster").is_none());
}

/// How long a phase of the namespace test may take to show.
const PHASE_WITHIN: Duration = Duration::from_secs(15);

/// `/status` of the replica whose ops endpoint is `ops`, asked inside `ns`.
fn status_in(ns: &str, ops: &str) -> Result<Value, String> {
    netns::json_in(ns, &format!("http://{ops}/status"))
}

/// The pool serving pool `a`'s users in `status`.
fn serving_a(status: &Value) -> String {
    status["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "a"))
        .map(|p| p["serving"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root and iproute2: cargo test -p siplb-e2e --test cluster -- --ignored"]
fn a_replica_cut_off_alone_from_a_pool_turns_not_ready_and_moves_no_user() {
    if let Some(why) = netns::unavailable() {
        panic!("cannot run the fleet namespace test: {why}");
    }
    let peer = Path::new(env!("CARGO_BIN_EXE_sip-peer"));
    let work = ConfigFile::write("");
    let mut lab = Lab::new("fleet");
    // `lan` holds replicas r1 and r2 and both servers; `r3` is a host of its own, joined to
    // the lan by one link. The servers' addresses are the lan end's, so r3 reaches them over
    // the link, and a blackhole route in r3 cuts r3 alone from one of them.
    let lan = lab.namespace("lan");
    let r3 = lab.namespace("r3");
    lab.link(
        &lan,
        "to-r3",
        "198.18.9.1/24",
        &r3,
        "to-lan",
        "198.18.9.2/24",
    );
    ip(&["-n", &lan, "addr", "add", "198.18.9.3/32", "dev", "to-r3"]);
    ip(&["-n", &lan, "addr", "add", "198.18.9.4/32", "dev", "to-r3"]);

    let a1: SocketAddr = "198.18.9.3:5071".parse().unwrap();
    let b1: SocketAddr = "198.18.9.4:5081".parse().unwrap();
    let mut procs: Vec<Proc> = Vec::new();
    for (id, addr) in [("a1", a1), ("b1", b1)] {
        let err = work.dir().join(format!("{id}.err"));
        let mut p = lab.spawn(&lan, peer, &["serve", id, &addr.to_string(), "90"], &err);
        p.wait_line(PHASE_WITHIN, |l| l.starts_with("ready"));
        procs.push(p);
    }
    let server = |id: &str, address| Server {
        id: id.into(),
        address,
        weight: 1,
        drained: false,
    };
    let config = Config::new()
        .ops()
        .health(Health::options("200ms", "150ms", 2, 1))
        .pool_with(
            Pool::new("a", vec![server("a1", a1)])
                .pair("b")
                .failback_after("1s"),
        )
        .pool_with(Pool::new("b", vec![server("b1", b1)]).pair("a"))
        .route(Route::to("a"));
    let token = work.dir().join("cluster-token");
    std::fs::write(&token, TOKEN).unwrap();
    let replicas = [
        (&lan, "198.18.9.1:9061"),
        (&lan, "198.18.9.1:9062"),
        (&r3, "198.18.9.2:9063"),
    ];
    for (i, &(ns, ops)) in replicas.iter().enumerate() {
        let others: Vec<SocketAddr> = replicas
            .iter()
            .filter(|(_, o)| *o != ops)
            .map(|(_, o)| o.parse().unwrap())
            .collect();
        let text = config.render_replica(ops.parse().unwrap(), &others)
            + &format!("token_file = \"{}\"\n", token.display());
        let path = work.dir().join(format!("r{}.toml", i + 1));
        std::fs::write(&path, text).unwrap();
        let err = work.dir().join(format!("r{}.err", i + 1));
        let path = path.display().to_string();
        let mut p = lab.spawn(ns, &siplb_bin(), &["--config", &path], &err);
        p.wait_line(PHASE_WITHIN, |l| l == "ready");
        procs.push(p);
    }
    let (r3_ops, r3_ready) = ("198.18.9.2:9063", "http://198.18.9.2:9063/readyz");
    wait_until("r3 hears both peers", PHASE_WITHIN, || {
        let s = status_in(&r3, r3_ops)?;
        let peers = s["cluster"]["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if peers.len() == 2 && peers.iter().all(|p| p["result"] == "ok") {
            Ok(())
        } else {
            Err(s["cluster"].to_string())
        }
    });
    assert_eq!(netns::get_in(&r3, r3_ready).map(|r| r.0), Ok(200));

    // r3 alone loses its route to a1.
    ip(&["-n", &r3, "route", "add", "blackhole", "198.18.9.3/32"]);
    let (_, why) = wait_until("r3 not ready", PHASE_WITHIN, || {
        match netns::get_in(&r3, r3_ready)? {
            (503, why) => Ok((503, why)),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        why,
        "not ready: pool a unreachable from this replica while the fleet reaches it"
    );
    let s = status_in(&r3, r3_ops).unwrap();
    assert_eq!(s["cluster"]["unreachable"], serde_json::json!(["a"]), "{s}");
    let a_state = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a")
        .unwrap()["state"]
        .clone();
    assert_eq!(a_state, "down", "r3's own view");
    assert_eq!(serving_a(&s), "a", "r3 keeps pool a's users home: {s}");
    for ops in ["198.18.9.1:9061", "198.18.9.1:9062"] {
        let s = status_in(&lan, ops).unwrap();
        assert_eq!(serving_a(&s), "a", "{ops} keeps pool a home");
        assert_eq!(
            netns::get_in(&lan, &format!("http://{ops}/readyz")).map(|r| r.0),
            Ok(200)
        );
    }
    // For two seconds more, well past fall and failback_after, r3 keeps them home: asked
    // again and again, bounded by the clock.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert_eq!(serving_a(&status_in(&r3, r3_ops).unwrap()), "a");
    }

    // The route returns: r3 is ready again.
    ip(&["-n", &r3, "route", "del", "blackhole", "198.18.9.3/32"]);
    wait_until("r3 ready again", PHASE_WITHIN, || {
        match netns::get_in(&r3, r3_ready)? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let s = status_in(&r3, r3_ops).unwrap();
    assert_eq!(s["cluster"]["unreachable"], serde_json::json!([]), "{s}");
    drop(procs);
}

/// Which of `servers` received the request with `call_id` (exactly one must have).
fn receiver<'a>(servers: &'a [Backend], call_id: &str) -> &'a str {
    let got: Vec<&str> = servers
        .iter()
        .filter(|s| !s.with_call_id(call_id).is_empty())
        .map(Backend::id)
        .collect();
    assert_eq!(
        got.len(),
        1,
        "{call_id} reached exactly one server: {got:?}"
    );
    got[0]
}

/// Registers each of `users` through every replica; returns, per user, the server it reached,
/// after checking that every replica sent it to the same one.
fn placement(replicas: &[(Siplb, Ops)], servers: &[Backend], users: &[String]) -> Vec<String> {
    users
        .iter()
        .map(|user| {
            let reached: Vec<&str> = replicas
                .iter()
                .map(|(siplb, _)| {
                    let mut client = Client::new();
                    let req = Request::register(&format!("{user}@contoso.com"));
                    let answer = client.transact(siplb.addr(), &req);
                    assert_eq!(answer.status(), Some(200), "REGISTER {user}");
                    receiver(servers, &req.call_id())
                })
                .collect();
            assert!(
                reached.iter().all(|r| *r == reached[0]),
                "{user} reached {reached:?} through the three replicas"
            );
            reached[0].to_string()
        })
        .collect()
}

#[test]
fn every_user_reaches_the_same_server_through_any_replica_before_during_and_after_a_fleet_failover()
{
    let a: Vec<Backend> = (1..=3)
        .map(|i| Backend::start(&format!("a{i}"), Behaviour::Accept))
        .collect();
    let b: Vec<Backend> = (1..=3)
        .map(|i| Backend::start(&format!("b{i}"), Behaviour::Accept))
        .collect();
    let config = Config::new()
        .ops()
        .health(Health::options("200ms", "150ms", 2, 1))
        .pool_with(
            Pool::new("a", a.iter().map(Server::of).collect())
                .pair("b")
                .failback_after("1s"),
        )
        .pool_with(Pool::new("b", b.iter().map(Server::of).collect()).pair("a"))
        .route(Route::to("a"));
    let replicas = fleet(&config, &[TOKEN, TOKEN, TOKEN]);
    for (_, ops) in &replicas {
        wait_peers(ops, "ok");
    }
    let users: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();

    let home = placement(&replicas, &a, &users);
    for s in &a {
        let n = home.iter().filter(|h| *h == s.id()).count();
        assert!(
            n > 0,
            "HRW spreads 60 users over the three servers of a: {home:?}"
        );
    }

    // Every server of a stops answering probes: the fleet fails a over, every replica serves
    // its users from b, and they agree on each user's server there.
    for s in &a {
        s.set_probe_answer(ProbeAnswer::Ignore);
    }
    for (_, ops) in &replicas {
        wait_serving(ops, "a", "b");
    }
    let away = placement(&replicas, &b, &users);
    for s in &b {
        assert!(
            away.iter().any(|h| h == s.id()),
            "b's servers all take users: {away:?}"
        );
    }

    // a is back: every replica sends the users home, each to the server it had before.
    for s in &a {
        s.set_probe_answer(ProbeAnswer::Ok);
    }
    for (_, ops) in &replicas {
        wait_serving(ops, "a", "a");
    }
    assert_eq!(
        placement(&replicas, &a, &users),
        home,
        "home again, each to its own server"
    );
}
