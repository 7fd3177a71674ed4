//! Default keys by role: a `[[route]]` without `key` reads the key its pools' role gives, and
//! the tests show it from what the servers received.
//!
//! - a Mediation route keeps every request of one call (one Call-ID) on one server whoever
//!   sends it, and spreads calls;
//! - an Edge route keeps every request from one source IP on one server whatever the users and
//!   calls, and spreads sources (clients on 127.0.0.10–49);
//! - a Front End route keeps today's rule (To AOR for REGISTER, From AOR otherwise);
//! - `siplb route` and `GET /route` name the key and the rule that chose it, and name the
//!   server the wire path chose.

use std::collections::BTreeSet;

use serde_json::Value;
use siplb_e2e::config::Pool;
use siplb_e2e::process::run_cli;
use siplb_e2e::{Behaviour, Client, Config, Farm, Request, Route, Siplb, Testbed};

/// The PSTN domain the Mediation route matches, and the federated one the Edge route matches.
const PSTN: &str = "pstn.test";
const PARTNER: &str = "litwareinc.com";

/// Two Front End servers, four Mediation and four Edge ones; a route to each role without
/// `key` (Mediation and Edge first), one Front End route with `key = "to-aor"`, and a
/// catch-all Front End route without `key`.
fn deployment() -> (Farm, Config) {
    let farm = Farm::pools(&[("fe", 2), ("med", 4), ("edge", 4)], Behaviour::Accept);
    let config = Config::new()
        .ops()
        .pool_with(Pool::new("fe", farm.servers_of("fe")))
        .pool_with(Pool::new("med", farm.servers_of("med")).role("mediation"))
        .pool_with(Pool::new("edge", farm.servers_of("edge")).role("edge"))
        .route(Route::to("med").domain(PSTN))
        .route(Route::to("edge").domain(PARTNER))
        .route(Route::to("fe").domain("keyed.test").key("to-aor"))
        .route(Route::to("fe"));
    (farm, config)
}

/// siplb in front of the [`deployment`].
fn testbed() -> Testbed {
    let (farm, config) = deployment();
    Testbed::new(farm, &config)
}

/// Sends each request from `client` (which must get a 200) and returns the ids of the servers
/// that received them.
fn reached(farm: &Farm, siplb: &Siplb, client: &mut Client, reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            let answer = client.transact(siplb.addr(), r);
            assert_eq!(answer.status(), Some(200), "{}", r.method());
            farm.holder(&r.call_id()).id().to_string()
        })
        .collect()
}

fn distinct(ids: &[String]) -> BTreeSet<&str> {
    ids.iter().map(String::as_str).collect()
}

/// A request of one PSTN call: `method` number `cseq` of call `call_id`, sent by `from`.
fn in_call(method: &str, call_id: &str, cseq: u32, from: &str) -> Request {
    let number = format!("+1425555{:04}@{PSTN}", cseq % 10_000);
    Request::new(
        method,
        &format!("sip:{number};user=phone"),
        &format!("{from}@contoso.com"),
        &number,
    )
    .set("Call-ID", call_id)
    .set("CSeq", &format!("{cseq} {method}"))
}

#[test]
fn a_mediation_route_without_key_keeps_one_call_on_one_server() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = testbed();

    // One call: 40 requests, each from another user (the gateway, the callee, transfers…).
    let methods = ["INVITE", "INFO", "UPDATE", "BYE"];
    let call: Vec<Request> = (0..40u32)
        .map(|i| {
            in_call(
                methods[i as usize % 4],
                "one-call@gw",
                i + 1,
                &format!("u{i}"),
            )
        })
        .collect();
    let hit = reached(&farm, &siplb, &mut client, &call);
    assert_eq!(distinct(&hit).len(), 1, "one Call-ID reached {hit:?}");
    assert!(hit[0].starts_with("med"), "not a Mediation server: {hit:?}");
    assert_eq!(
        farm.holder("one-call@gw").with_call_id("one-call@gw").len(),
        40
    );

    // 40 calls from one user: the Call-ID, not the From AOR, picks the server.
    let calls: Vec<Request> = (0..40)
        .map(|i| in_call("INVITE", &format!("call-{i}@gw"), 1, "alice"))
        .collect();
    let hit = reached(&farm, &siplb, &mut client, &calls);
    assert!(hit.iter().all(|id| id.starts_with("med")), "{hit:?}");
    assert!(
        distinct(&hit).len() >= 3,
        "40 calls of one user reached only {:?}",
        distinct(&hit)
    );
}

/// A MESSAGE to a federated user, from `from`.
fn to_partner(to: &str, from: &str) -> Request {
    Request::new(
        "MESSAGE",
        &format!("sip:{to}@{PARTNER}"),
        &format!("{from}@contoso.com"),
        &format!("{to}@{PARTNER}"),
    )
}

#[test]
fn an_edge_route_without_key_keeps_one_source_on_one_server() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = testbed();

    // One source address: 40 requests, every user and Call-ID different.
    let varied: Vec<Request> = (0..40)
        .map(|i| to_partner(&format!("r{i}"), &format!("f{i}")))
        .collect();
    let hit = reached(&farm, &siplb, &mut client, &varied);
    assert_eq!(distinct(&hit).len(), 1, "one source reached {hit:?}");
    assert!(hit[0].starts_with("edge"), "not an Edge server: {hit:?}");

    // 40 source addresses (127.0.0.10..49), each sending the same users' requests twice:
    // each source stays on one server, and the sources spread.
    let mut per_source = Vec::new();
    for n in 10..50 {
        let mut other = Client::bind(&format!("127.0.0.{n}"));
        let reqs = [to_partner("bob", "alice"), to_partner("bob", "alice")];
        let hit = reached(&farm, &siplb, &mut other, &reqs);
        assert_eq!(distinct(&hit).len(), 1, "127.0.0.{n} reached {hit:?}");
        assert!(hit[0].starts_with("edge"), "{hit:?}");
        per_source.push(hit[0].clone());
    }
    assert!(
        distinct(&per_source).len() >= 3,
        "40 sources reached only {:?}",
        distinct(&per_source)
    );
}

/// `siplb route --config FILE [--source IP] METHOD AOR`: its `key` and `server` lines.
fn route_cli(siplb: &Siplb, source: Option<&str>, method: &str, aor: &str) -> (String, String) {
    let path = siplb.config().path().to_string_lossy().into_owned();
    let mut args = vec!["route", "--config", &path];
    if let Some(ip) = source {
        args.extend(["--source", ip]);
    }
    args.extend([method, aor]);
    let out = run_cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "siplb {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.trim().to_string())
            .unwrap_or_else(|| panic!("no {name:?} line in {stdout:?}"))
    };
    (line("key "), line("server "))
}

#[test]
fn siplb_route_and_the_ops_endpoint_name_the_key_rule_that_applied() {
    let (farm, config) = deployment();
    let siplb = Siplb::start(&config.render());
    let (mut tb, ops) = Testbed::with_ops(farm, siplb);
    let phone = format!("sip:+14255550100@{PSTN}");

    let rules = [
        (
            None,
            "INVITE",
            phone.as_str(),
            "call-id (default for a mediation pool)",
        ),
        (
            Some("127.0.0.23"),
            "MESSAGE",
            "sip:bob@litwareinc.com",
            "source-ip (default for an edge pool)",
        ),
        (
            None,
            "REGISTER",
            "sip:alice@contoso.com",
            "to-aor (default for a front-end pool: To AOR for REGISTER)",
        ),
        (
            None,
            "INVITE",
            "sip:alice@contoso.com",
            "from-aor (default for a front-end pool: From AOR for all but REGISTER)",
        ),
        (
            None,
            "INVITE",
            "sip:alice@keyed.test",
            "to-aor (route's key)",
        ),
    ];
    for (source, method, aor, rule) in rules {
        let (key, _) = route_cli(&tb.siplb, source, method, aor);
        assert_eq!(key, rule, "siplb route {method} {aor}");
    }

    // The source an edge route reads: `siplb route --source` names the server a client on that
    // address reaches.
    let (_, server) = route_cli(
        &tb.siplb,
        Some("127.0.0.23"),
        "MESSAGE",
        "sip:bob@litwareinc.com",
    );
    let mut from_23 = Client::bind("127.0.0.23");
    let wire = reached(
        &tb.farm,
        &tb.siplb,
        &mut from_23,
        &[to_partner("bob", "alice")],
    );
    let named = server.split_whitespace().next().unwrap_or_default();
    assert_eq!(named, wire[0], "siplb route says {server}");

    // /route says the same, with the role and the source it assumed.
    let r = ops.get("/route?method=MESSAGE&aor=sip%3Abob%40litwareinc.com&source=127.0.0.23");
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["key"], "source-ip", "{doc}");
    assert_eq!(doc["key_rule"], "default for an edge pool", "{doc}");
    assert_eq!(doc["role"], "edge", "{doc}");
    assert_eq!(doc["source"], "127.0.0.23", "{doc}");
    assert_eq!(doc["server"]["id"], Value::from(wire[0].as_str()), "{doc}");
    let r = ops.route("INVITE", &phone);
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(
        (&doc["key"], &doc["key_rule"], &doc["role"]),
        (
            &Value::from("call-id"),
            &Value::from("default for a mediation pool"),
            &Value::from("mediation")
        ),
        "{doc}"
    );
    let r = ops.route("INVITE", "sip:alice@keyed.test");
    assert_eq!(r.json()["key_rule"], "route's key", "{r:?}");

    // And the Front End default still puts a user's REGISTER and INVITE on one server.
    let register = Request::register("alice@contoso.com");
    let invite = Request::invite("alice@contoso.com", "bob@contoso.com");
    let hit = reached(&tb.farm, &tb.siplb, &mut tb.client, &[register, invite]);
    assert_eq!(distinct(&hit).len(), 1, "{hit:?}");
    assert!(hit[0].starts_with("fe"), "{hit:?}");
}
