//! Routing by user: siplb binds each user to one server of its home pool by weighted rendezvous
//! (HRW) hashing, and the tests show it from what the servers received.
//!
//! - one AOR always reaches the same server;
//! - 10,000 AORs spread evenly over four servers;
//! - draining a server moves only its users, and they spread evenly over the rest;
//! - a weight-2 server gets twice the users; `pools = [a, b]` spreads home pools by HRW;
//! - each `key` reads its own field of the message;
//! - two siplb processes with one config agree on every user (no shared state);
//! - `siplb route` agrees with the wire.

use std::collections::BTreeSet;

use siplb_e2e::farm::{assert_near, register_all, tally, users};
use siplb_e2e::process::route_cli;
use siplb_e2e::{Behaviour, Client, Config, Farm, Request, Route, Server, Siplb, Testbed};

fn four_servers() -> Farm {
    Farm::start("fe", 4, Behaviour::Accept)
}

#[test]
fn one_user_always_reaches_the_same_server() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = Testbed::single_pool(4, Behaviour::Accept);
    for _ in 0..100 {
        let answer = client.transact(siplb.addr(), &Request::register("alice@contoso.com"));
        assert_eq!(answer.status(), Some(200));
    }
    let counts: Vec<(String, usize)> = farm
        .backends
        .iter()
        .map(|b| {
            let n = b.count_by_aor().get("alice@contoso.com").copied();
            (b.id().to_string(), n.unwrap_or(0))
        })
        .collect();
    let holders: Vec<&(String, usize)> = counts.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        holders.len(),
        1,
        "alice reached several servers: {counts:?}"
    );
    assert_eq!(holders[0].1, 100, "per server: {counts:?}");
}

#[test]
fn ten_thousand_users_spread_evenly_over_four_servers() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = Testbed::single_pool(4, Behaviour::Accept);
    let aors = users(10_000, "contoso.com");
    register_all(&mut client, siplb.addr(), &aors);

    let assignment = farm.users(siplb.addr());
    assert_eq!(assignment.len(), aors.len(), "every user reached a server");
    let counts = tally(&assignment);
    for b in &farm.backends {
        let got = counts.get(b.id()).copied().unwrap_or(0);
        assert_near(&format!("users on {}", b.id()), got, 2500.0, 0.10);
    }
}

#[test]
fn draining_a_server_moves_only_its_users_and_spreads_them_evenly() {
    let farm = four_servers();
    let all_up = Siplb::start(&Config::single_pool(&farm.backends).render());
    let drained_id = farm.backends[1].id().to_string();
    let servers: Vec<Server> = farm
        .backends
        .iter()
        .map(|b| {
            let s = Server::of(b);
            if b.id() == drained_id {
                s.drained()
            } else {
                s
            }
        })
        .collect();
    let one_drained = Siplb::start(
        &Config::new()
            .pool("fe", servers)
            .route(Route::to("fe"))
            .render(),
    );

    let aors = users(10_000, "contoso.com");
    let mut client = Client::new();
    register_all(&mut client, all_up.addr(), &aors);
    register_all(&mut client, one_drained.addr(), &aors);
    let before = farm.users(all_up.addr());
    let after = farm.users(one_drained.addr());
    assert_eq!(before.len(), aors.len());
    assert_eq!(after.len(), aors.len());

    let mut moved = Vec::new();
    for (aor, was) in &before {
        let now = &after[aor];
        assert_ne!(
            now, &drained_id,
            "{aor} still routed to drained {drained_id}"
        );
        if *was == drained_id {
            moved.push((aor.clone(), now.clone()));
        } else {
            assert_eq!(
                now, was,
                "{aor} moved from {was} to {now} though {was} is up"
            );
        }
    }
    let moved_to = tally(&moved.into_iter().collect());
    let total: usize = moved_to.values().sum();
    assert!(total > 1500, "only {total} users were on {drained_id}");
    for b in farm.backends.iter().filter(|b| b.id() != drained_id) {
        let got = moved_to.get(b.id()).copied().unwrap_or(0);
        assert_near(
            &format!("moved users taken by {}", b.id()),
            got,
            total as f64 / 3.0,
            0.15,
        );
    }
}

#[test]
fn a_weight_two_server_gets_twice_the_users() {
    let farm = Farm::start("fe", 3, Behaviour::Accept);
    let servers = vec![
        Server::of(&farm.backends[0]).weight(2),
        Server::of(&farm.backends[1]),
        Server::of(&farm.backends[2]),
    ];
    let siplb = Siplb::start(
        &Config::new()
            .pool("fe", servers)
            .route(Route::to("fe"))
            .render(),
    );
    let aors = users(8_000, "contoso.com");
    register_all(&mut Client::new(), siplb.addr(), &aors);

    let counts = tally(&farm.users(siplb.addr()));
    let n = |i: usize| counts.get(farm.backends[i].id()).copied().unwrap_or(0);
    assert_near("users on the weight-2 server", n(0), 4000.0, 0.10);
    assert_near("users on weight-1 server 2", n(1), 2000.0, 0.10);
    assert_near("users on weight-1 server 3", n(2), 2000.0, 0.10);
    let ratio = n(0) as f64 / ((n(1) + n(2)) as f64 / 2.0);
    assert!(
        (ratio - 2.0).abs() <= 0.2,
        "weight 2 got {ratio:.2}× a weight-1 share"
    );
}

#[test]
fn a_pools_list_spreads_home_pools_by_hrw() {
    let mut farm = Farm::start("a", 2, Behaviour::Accept);
    farm.backends
        .extend(Farm::start("b", 2, Behaviour::Accept).backends);
    let config = Config::new()
        .pool(
            "pool-a",
            farm.backends[..2].iter().map(Server::of).collect(),
        )
        .pool(
            "pool-b",
            farm.backends[2..].iter().map(Server::of).collect(),
        )
        .route(Route::over(&["pool-a", "pool-b"]));
    let siplb = Siplb::start(&config.render());
    let aors = users(4_000, "contoso.com");
    register_all(&mut Client::new(), siplb.addr(), &aors);

    let assignment = farm.users(siplb.addr());
    assert_eq!(assignment.len(), aors.len());
    let in_a = assignment.values().filter(|s| s.starts_with('a')).count();
    assert_near("users homed on pool-a", in_a, 2000.0, 0.10);
    assert_near("users homed on pool-b", aors.len() - in_a, 2000.0, 0.10);
    let counts = tally(&assignment);
    for b in &farm.backends {
        let got = counts.get(b.id()).copied().unwrap_or(0);
        assert_near(&format!("users on {}", b.id()), got, 1000.0, 0.15);
    }
}

/// The servers that received the requests (each request's Call-ID must reach exactly one).
fn servers_hit(
    farm: &Farm,
    client: &mut Client,
    siplb: &Siplb,
    reqs: &[Request],
) -> BTreeSet<String> {
    for r in reqs {
        assert_eq!(client.transact(siplb.addr(), r).status(), Some(200));
    }
    reqs.iter()
        .map(|r| farm.holder(&r.call_id()).id().to_string())
        .collect()
}

/// A MESSAGE to `ruri_user@domain` from `from`, to `to`.
fn message(ruri_user: &str, domain: &str, from: &str, to: &str) -> Request {
    Request::new(
        "MESSAGE",
        &format!("sip:{ruri_user}@{domain}"),
        &format!("{from}@example.org"),
        &format!("{to}@{domain}"),
    )
}

#[test]
fn each_key_reads_its_own_field() {
    let farm = four_servers();
    let config = Config::new()
        .pool("fe", farm.servers())
        .route(Route::to("fe").domain("callid.test").key("call-id"))
        .route(Route::to("fe").domain("from.test").key("from-aor"))
        .route(Route::to("fe").domain("ruri.test").key("ruri-aor"))
        .route(Route::to("fe").domain("to.test").key("to-aor"))
        .route(Route::to("fe").domain("source.test").key("source-ip"));
    let Testbed {
        farm,
        siplb,
        mut client,
    } = Testbed::new(farm, &config);
    let n = 40;

    // call-id: one Call-ID, 40 different users and R-URIs → one server; 40 Call-IDs → several.
    let call_id = "shared-call-id@e2e";
    let same: Vec<Request> = (0..n)
        .map(|i| {
            let u = format!("u{i}");
            message(&u, "callid.test", &u, &u)
                .set("Call-ID", call_id)
                .set("CSeq", &format!("{} MESSAGE", i + 1))
        })
        .collect();
    assert_eq!(servers_hit(&farm, &mut client, &siplb, &same).len(), 1);
    let varied: Vec<Request> = (0..n)
        .map(|_| message("bob", "callid.test", "alice", "bob"))
        .collect();
    assert!(
        servers_hit(&farm, &mut client, &siplb, &varied).len() > 1,
        "call-id key ignores the Call-ID"
    );

    // from-aor, ruri-aor, to-aor: the keyed field fixed and all else varied → one server;
    // only the keyed field varied → several.
    type Shape = fn(usize) -> Request;
    let cases: [(&str, Shape, Shape); 3] = [
        (
            "from-aor",
            |i| message(&format!("r{i}"), "from.test", "alice", &format!("t{i}")),
            |i| message("bob", "from.test", &format!("f{i}"), "bob"),
        ),
        (
            "ruri-aor",
            |i| message("bob", "ruri.test", &format!("f{i}"), &format!("t{i}")),
            |i| message(&format!("r{i}"), "ruri.test", "alice", "carol"),
        ),
        (
            "to-aor",
            |i| message(&format!("r{i}"), "to.test", &format!("f{i}"), "bob"),
            |i| message("bob", "to.test", "alice", &format!("t{i}")),
        ),
    ];
    for (key, fixed, varied) in cases {
        let same: Vec<Request> = (0..n).map(fixed).collect();
        let hit = servers_hit(&farm, &mut client, &siplb, &same);
        assert_eq!(hit.len(), 1, "{key}: one key reached {hit:?}");
        let diff: Vec<Request> = (0..n).map(varied).collect();
        let hit = servers_hit(&farm, &mut client, &siplb, &diff);
        assert!(
            hit.len() > 1,
            "{key}: {n} different keys all reached {hit:?}"
        );
    }

    // source-ip: everything varied but the source address → one server; 40 source addresses
    // (127.0.0.10..49, all loopback) → several.
    let same: Vec<Request> = (0..n)
        .map(|i| {
            message(
                &format!("r{i}"),
                "source.test",
                &format!("f{i}"),
                &format!("t{i}"),
            )
        })
        .collect();
    assert_eq!(servers_hit(&farm, &mut client, &siplb, &same).len(), 1);
    let mut hit = BTreeSet::new();
    for i in 0..n {
        let mut other = Client::bind(&format!("127.0.0.{}", 10 + i));
        let req = message("bob", "source.test", "alice", "bob");
        hit.extend(servers_hit(&farm, &mut other, &siplb, &[req]));
    }
    assert!(
        hit.len() > 1,
        "source-ip: {n} source addresses all reached {hit:?}"
    );
}

#[test]
fn two_siplb_processes_with_one_config_route_every_user_alike() {
    let farm = four_servers();
    let config = Config::single_pool(&farm.backends);
    let first = Siplb::start(&config.render());
    let second = Siplb::start(&config.clone().workers(2).render());
    let aors = users(10_000, "contoso.com");
    let mut client = Client::new();
    register_all(&mut client, first.addr(), &aors);
    register_all(&mut client, second.addr(), &aors);

    let a = farm.users(first.addr());
    let b = farm.users(second.addr());
    assert_eq!(a.len(), aors.len());
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .take(5)
        .collect();
    assert!(differ.is_empty(), "the processes disagree, e.g. {differ:?}");
}

#[test]
fn siplb_route_agrees_with_the_wire() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = Testbed::single_pool(4, Behaviour::Accept);
    for (i, aor) in users(12, "contoso.com").iter().enumerate() {
        let (method, req) = if i % 2 == 0 {
            ("REGISTER", Request::register(aor))
        } else {
            ("INVITE", Request::invite(aor, aor))
        };
        assert!(client.transact(siplb.addr(), &req).status() == Some(200));
        let wire = farm.holder(&req.call_id());
        let cli = route_cli(siplb.config(), method, &format!("sip:{aor}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cli.server_id,
            wire.id(),
            "{method} {aor}: siplb route vs the wire"
        );
        assert_eq!(cli.server_address, wire.addr().to_string());
        assert_eq!(
            (cli.route, cli.home.as_str(), cli.serving.as_str()),
            (0, "fe", "fe")
        );
        assert_eq!(cli.transport, "udp");
    }
}
