//! Operator commands reach the fleet (`[cluster]`, README "Fleet"), on loopback with the real
//! binary, asserting on what the SIP servers received:
//!
//! - an operator failover sent to one of three replicas moves the users on all three (their
//!   REGISTERs reach the paired pool's server through every replica), and the answer lists the
//!   two peers that applied it;
//! - a replica that is down (stopped by its PID) is named in the answer's `not_applied`; while
//!   it is down a failover is given to another replica; started again on the same ports with
//!   the same config (its users at home, as the config says), it adopts the fleet's operator
//!   state at its first exchange: users through it go where the other two send them, and its
//!   events say from which peer it adopted;
//! - a drain given to any replica drains the server on all three;
//! - a forwarded command needs the cluster token: a wrong one, or the admin token, is `401`
//!   and changes nothing; the right one is applied there and not forwarded again (the answer
//!   has no `fleet`), and the other replica catches up at its next exchange; a replica without
//!   an admin token takes forwarded commands but has no admin API of its own; without
//!   `[cluster]` the answer has no `fleet`.
//!
//! Ports: the ops endpoints are picked free on 127.0.0.1 (each replica must name the others
//! before they start); everything else binds port 0. Every wait has a deadline; every process
//! is stopped by its own PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use siplb_e2e::config::{Health, Pool};
use siplb_e2e::health::wait_serving;
use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::ports::free_tcp_port;
use siplb_e2e::{Backend, Behaviour, Client, Config, Request, Route, Server, Siplb};

const CLUSTER: &str = "fleet-admin-cluster-5b1e";
const ADMIN: &str = "fleet-admin-operator-77c2";

/// The servers: pool `a` (home of every user) with two, paired with `b` with one.
struct Farm {
    a1: Backend,
    a2: Backend,
    b1: Backend,
}

fn farm() -> Farm {
    Farm {
        a1: Backend::start("a1", Behaviour::Accept),
        a2: Backend::start("a2", Behaviour::Accept),
        b1: Backend::start("b1", Behaviour::Accept),
    }
}

fn config(f: &Farm) -> Config {
    Config::new()
        .ops()
        .health(Health::options("200ms", "150ms", 2, 1))
        .pool_with(
            Pool::new("a", vec![Server::of(&f.a1), Server::of(&f.a2)])
                .pair("b")
                .failback_after("1s"),
        )
        .pool_with(Pool::new("b", vec![Server::of(&f.b1)]).pair("a"))
        .route(Route::to("a"))
}

/// One replica of a fleet: its config text (to start it again) and its process.
struct Replica {
    text: String,
    admin: bool,
    siplb: Siplb,
    ops: Ops,
}

impl Replica {
    fn start(text: &str, admin: bool) -> Replica {
        let mut env = vec![("SIPLB_CLUSTER_TOKEN", CLUSTER)];
        if admin {
            env.push(("SIPLB_ADMIN_TOKEN", ADMIN));
        }
        let siplb = Siplb::start_with_env(text, &env);
        let ops = Ops::of(&siplb);
        Replica {
            text: text.to_string(),
            admin,
            siplb,
            ops,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.ops.addr())
    }
}

/// Starts one replica per entry of `admin` (whether it has an admin token), each naming the
/// others, and waits until every one hears all its peers.
fn fleet(config: &Config, admin: &[bool]) -> Vec<Replica> {
    let addrs: Vec<SocketAddr> = admin
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_tcp_port())))
        .collect();
    let replicas: Vec<Replica> = addrs
        .iter()
        .zip(admin)
        .map(|(&me, &admin)| {
            let peers: Vec<SocketAddr> = addrs.iter().copied().filter(|&a| a != me).collect();
            let r = Replica::start(&config.render_replica(me, &peers), admin);
            assert_eq!(r.ops.addr(), me);
            r
        })
        .collect();
    for r in &replicas {
        wait_peers_ok(&r.ops);
    }
    replicas
}

/// Waits until every peer in `ops`'s `/status` answers with its view.
fn wait_peers_ok(ops: &Ops) {
    wait_until(
        &format!("every peer of {} answers", ops.addr()),
        SHOWS_WITHIN,
        || {
            let c = ops.status().0["cluster"].clone();
            let peers = c["peers"].as_array().cloned().unwrap_or_default();
            if !peers.is_empty() && peers.iter().all(|p| p["result"] == "ok") {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    );
}

/// `POST path` to `r` with the admin token: 200, `ok`, and the answer.
fn command(r: &Replica, path: &str) -> Value {
    r.ops.admin_ok(path, ADMIN)
}

/// The answer's `fleet`: the peers that applied it (sorted) and those that did not, with why.
fn fleet_of(answer: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let f = &answer["fleet"];
    let mut applied: Vec<String> = f["applied"]
        .as_array()
        .unwrap_or_else(|| panic!("no fleet.applied in {answer}"))
        .iter()
        .map(|u| u.as_str().unwrap_or_default().to_string())
        .collect();
    applied.sort();
    let not_applied = f["not_applied"]
        .as_array()
        .unwrap_or_else(|| panic!("no fleet.not_applied in {answer}"))
        .iter()
        .map(|n| {
            (
                n["peer"].as_str().unwrap_or_default().to_string(),
                n["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (applied, not_applied)
}

fn urls(replicas: &[&Replica]) -> Vec<String> {
    let mut u: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    u.sort();
    u
}

/// A REGISTER of `user` through `siplb` is answered 200 and reached exactly one of `servers`;
/// the one it reached.
fn register_reaches<'a>(siplb: &Siplb, servers: &[&'a Backend], user: &str) -> &'a str {
    let mut client = Client::new();
    let req = Request::register(&format!("sip:{user}@contoso.com"));
    let answer = client.transact(siplb.addr(), &req);
    assert_eq!(answer.status(), Some(200), "REGISTER {user}");
    let reached: Vec<&Backend> = servers
        .iter()
        .copied()
        .filter(|s| s.with_call_id(&req.call_id()).len() == 1)
        .collect();
    let ids: Vec<&str> = servers.iter().map(|s| s.id()).collect();
    assert_eq!(
        reached.len(),
        1,
        "REGISTER {user} through {} reached exactly one of {ids:?}",
        siplb.addr()
    );
    reached[0].id()
}

/// The operator state in `/status` (`cluster.operator`).
fn operator(ops: &Ops) -> Value {
    ops.status().0["cluster"]["operator"].clone()
}

/// Sends `POST path` as a peer forwarding a command would: `X-Siplb-Forwarded: origin`,
/// `X-Siplb-Operator-Seq: seq` (when given), `Authorization: Bearer token`. Status and body.
fn forwarded(ops: &Ops, path: &str, token: &str, origin: &str, seq: Option<u64>) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&ops.addr(), Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let seq = seq
        .map(|n| format!("X-Siplb-Operator-Seq: {n}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         X-Siplb-Forwarded: {origin}\r\n{seq}Content-Length: 0\r\nConnection: close\r\n\r\n",
        ops.addr()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {raw:?}"));
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (code, body)
}

#[test]
fn an_operator_failover_reaches_all_three_replicas_and_one_that_was_down_catches_up() {
    let f = farm();
    let mut replicas = fleet(&config(&f), &[true, true, true]);

    // 1. A failover given to replica 1 moves the users on all three.
    let answer = command(&replicas[0], "/admin/pools/a/failover");
    let (applied, not_applied) = fleet_of(&answer);
    assert_eq!(applied, urls(&[&replicas[1], &replicas[2]]), "{answer}");
    assert!(not_applied.is_empty(), "{answer}");
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r.ops.status().serving("a"), "b", "replica {}", i + 1);
        assert_eq!(
            register_reaches(&r.siplb, &[&f.a1, &f.a2, &f.b1], &format!("alice{i}")),
            "b1"
        );
        let op = operator(&r.ops);
        assert_eq!(op["failed_over"], json!(["a"]), "{op}");
        assert_eq!(op["origin"], replicas[0].url(), "the command's stamp: {op}");
    }
    let events = replicas[1].ops.status().0["events"].clone();
    assert!(
        events.as_array().unwrap().iter().any(|e| e["message"]
            == format!(
                "operator failover (forwarded by {}): users served by b",
                replicas[0].url()
            )),
        "{events}"
    );

    // 2. Replica 3 stops; a failback given to replica 1 names it as not applied.
    let mut r3 = replicas.pop().expect("three replicas");
    r3.siplb.signal("KILL");
    assert!(
        r3.siplb.wait_exit(SHOWS_WITHIN).is_some(),
        "replica 3 exits"
    );
    let answer = command(&replicas[0], "/admin/pools/a/failback");
    let (applied, not_applied) = fleet_of(&answer);
    assert_eq!(applied, vec![replicas[1].url()], "{answer}");
    assert_eq!(
        not_applied,
        vec![(r3.url(), "refused".to_string())],
        "{answer}"
    );
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r.ops.status().serving("a"), "a");
        register_reaches(&r.siplb, &[&f.a1, &f.a2], &format!("bob{i}"));
    }
    // While it is down, an operator fails pool a over again, through replica 2.
    let answer = command(&replicas[1], "/admin/pools/a/failover");
    let (applied, not_applied) = fleet_of(&answer);
    assert_eq!(applied, vec![replicas[0].url()], "{answer}");
    assert_eq!(
        not_applied,
        vec![(r3.url(), "refused".to_string())],
        "{answer}"
    );
    let m = replicas[1].ops.metrics();
    assert!(
        m.sum(
            "siplb_cluster_forwards_total",
            &[("peer", r3.url().as_str()), ("result", "refused")]
        ) >= 1.0,
        "the refused forward is counted"
    );

    // 3. Replica 3 starts again, same ports, same config: its users start at home, and at its
    //    first exchange it adopts the failover it missed.
    let (text, admin) = (r3.text.clone(), r3.admin);
    let url3 = r3.url();
    drop(r3);
    replicas.push(Replica::start(&text, admin));
    let r3 = &replicas[2];
    assert_eq!(r3.url(), url3);
    wait_serving(&r3.ops, "a", "b");
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(
            register_reaches(&r.siplb, &[&f.a1, &f.a2, &f.b1], &format!("carol{i}")),
            "b1",
            "replica {} sends pool a's users to b",
            i + 1
        );
    }
    let status = r3.ops.status().0;
    let adopted = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["kind"] == "failover"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("operator failover (adopted from http://"))
        })
        .cloned();
    assert!(
        adopted.is_some(),
        "an event says it was adopted: {}",
        status["events"]
    );
    assert!(
        r3.siplb
            .stderr()
            .contains("operator command adopted from a peer"),
        "and a log line"
    );
    assert_eq!(
        operator(&r3.ops),
        operator(&replicas[0].ops),
        "replica 3 holds what replica 1 holds"
    );

    // 4. A failback and a drain given to the restarted replica reach the other two.
    let answer = command(&replicas[2], "/admin/pools/a/failback");
    assert_eq!(fleet_of(&answer).0, urls(&[&replicas[0], &replicas[1]]));
    let drain = format!("/admin/servers/{}/drain", f.a1.id());
    let answer = command(&replicas[2], &drain);
    let (applied, not_applied) = fleet_of(&answer);
    assert_eq!(applied, urls(&[&replicas[0], &replicas[1]]), "{answer}");
    assert!(not_applied.is_empty(), "{answer}");
    for (i, r) in replicas.iter().enumerate() {
        let s = r.ops.status();
        assert_eq!(s.server_state("a1"), "drained", "replica {}", i + 1);
        assert_eq!(s.serving("a"), "a");
        for n in 0..4 {
            assert_eq!(
                register_reaches(&r.siplb, &[&f.a1, &f.a2, &f.b1], &format!("dave{i}-{n}")),
                "a2",
                "a1 is drained on replica {}",
                i + 1
            );
        }
    }

    // 5. /status shows each observer's view of each pool side by side, all agreeing (once
    // replica 1 has had a round since replica 3 came back: until then its view of replica 3
    // may be the round that found it down).
    let expected = vec![
        (replicas[1].url(), "up".to_string()),
        (replicas[2].url(), "up".to_string()),
    ];
    let a = wait_until(
        "replica 1 shows both peers' views of a",
        SHOWS_WITHIN,
        || {
            let c = replicas[0].ops.status().0["cluster"].clone();
            let a = c["pools"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "a"))
                .cloned()
                .unwrap_or(Value::Null);
            let views: Vec<(String, String)> = a["views"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|v| {
                            (
                                v["observer"].as_str().unwrap_or("").to_string(),
                                v["view"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if views == expected {
                Ok(a)
            } else {
                Err(a.to_string())
            }
        },
    );
    assert_eq!(a["own"], "up", "{a}");
    assert_eq!(a["disagree"], false, "{a}");
    let page = replicas[0].ops.get("/");
    assert!(
        page.body.contains("<h2 id=\"fleet\">Fleet</h2>"),
        "the page's Fleet table"
    );
}

#[test]
fn a_forwarded_command_needs_the_cluster_token_and_is_not_forwarded_again() {
    let f = farm();
    // Replica 2 has no admin token: it takes forwarded commands, but has no admin API.
    let replicas = fleet(&config(&f), &[true, false]);
    let (r1, r2) = (&replicas[0], &replicas[1]);
    let path = "/admin/pools/a/failover";
    let auth_failures = |ops: &Ops| ops.metrics().sum("siplb_cluster_auth_failures_total", &[]);

    let before = auth_failures(&r1.ops);
    for token in ["not-the-token", ADMIN] {
        let (code, body) = forwarded(&r1.ops, path, token, &r2.url(), Some(9));
        assert_eq!(code, 401, "token {token}: {body}");
    }
    assert!(
        auth_failures(&r1.ops) >= before + 2.0,
        "both refusals counted"
    );
    let (code, body) = forwarded(&r1.ops, path, CLUSTER, &r2.url(), None);
    assert_eq!(code, 400, "no seq: {body}");
    let s = r1.ops.status();
    assert_eq!(s.serving("a"), "a", "nothing applied");
    assert_eq!(s.0["cluster"]["operator"]["seq"], 0, "{}", s.0);
    // The admin API needs the admin token, not the cluster token; replica 2 has none.
    assert_eq!(r1.ops.admin(path, Some(CLUSTER)).status, 401);
    assert_eq!(r2.ops.admin(path, Some(ADMIN)).status, 404);
    assert_eq!(r2.ops.status().serving("a"), "a");

    // The cluster token: applied on replica 1 only, answered without `fleet`.
    let (code, body) = forwarded(&r1.ops, path, CLUSTER, "http://127.0.0.1:1", Some(9));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert!(body.get("fleet").is_none(), "not forwarded again: {body}");
    assert_eq!(r1.ops.status().serving("a"), "b");
    let op = operator(&r1.ops);
    assert_eq!(
        (op["seq"].as_u64(), op["origin"].as_str()),
        (Some(9), Some("http://127.0.0.1:1"))
    );
    // An older command on the same pool is refused: the newer one stands.
    let (code, body) = forwarded(
        &r1.ops,
        "/admin/pools/a/failback",
        CLUSTER,
        "http://127.0.0.1:1",
        Some(3),
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(r1.ops.status().serving("a"), "b");
    // Replica 2 was not sent it, and adopts it at its next exchange.
    wait_serving(&r2.ops, "a", "b");
    assert_eq!(
        register_reaches(&r2.siplb, &[&f.a1, &f.a2, &f.b1], "erin"),
        "b1"
    );

    // A command for a server replica 2 does not know is refused there, and said so.
    let (code, body) = forwarded(
        &r2.ops,
        "/admin/servers/nobody/drain",
        CLUSTER,
        &r1.url(),
        Some(20),
    );
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "no server with id \"nobody\"");

    // Without [cluster], the answer is as it always was.
    let alone = Siplb::start_with_env(&config(&f).render(), &[("SIPLB_ADMIN_TOKEN", ADMIN)]);
    let answer = Ops::of(&alone).admin_ok(path, ADMIN);
    assert!(answer.get("fleet").is_none(), "{answer}");
    let (code, _) = forwarded(&Ops::of(&alone), path, CLUSTER, &r1.url(), Some(1));
    assert_eq!(code, 404, "no [cluster]: no forwarded command");
}

#[test]
fn a_peer_that_does_not_answer_in_time_or_is_not_there_is_named_with_why() {
    let f = farm();
    // A peer that takes the connection and never answers (the kernel accepts it into the
    // backlog), and one where nothing listens.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let me = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let text = config(&f).render_replica(me, &[hung.local_addr().unwrap(), gone]);
    let r = Replica::start(&text, true);

    // Were the peers not bounded, the hung one would hold the answer past the harness's
    // 10 s read timeout and the request would fail.
    let answer = command(&r, "/admin/pools/a/failover");
    let (applied, mut not_applied) = fleet_of(&answer);
    not_applied.sort();
    assert!(applied.is_empty(), "{answer}");
    let mut expected = vec![
        (
            format!("http://{}", hung.local_addr().unwrap()),
            "timeout".to_string(),
        ),
        (format!("http://{gone}"), "refused".to_string()),
    ];
    expected.sort();
    assert_eq!(not_applied, expected, "{answer}");
    assert_eq!(
        r.ops.status().serving("a"),
        "b",
        "applied here all the same"
    );
    register_reaches(&r.siplb, &[&f.a1, &f.a2, &f.b1], "frank");
    let m = r.ops.metrics();
    assert!(
        m.sum("siplb_cluster_forwards_total", &[("result", "timeout")]) >= 1.0,
        "the timeout is counted"
    );
}
