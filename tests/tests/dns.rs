//! Real-peer suite: servers by DNS name (README "Servers by DNS name", docs/DNS.md).
//!
//! A real DNS server, dnsmasq on 127.0.0.1 at a free port (`siplb_e2e::dnsmasq`), serves the
//! records; siplb runs with `[dns] nameservers` pointing at it and a short `refresh`, in front
//! of UDP backends on loopback addresses, and the suite asserts on what the backends received:
//!
//! - servers given as `host:port` receive the users, and when one name's A record moves to
//!   another address the users of that server follow it there (its id, the name, is kept) while
//!   every other user stays where it was, and its probes go to the new address; a request
//!   whose Route names a server by its name and port reaches it;
//! - a pool given as `srv = "_sip._udp.NAME"` spreads its users over the targets of the lowest
//!   priority (the backup target of a higher priority gets none); removing one SRV record moves
//!   only that server's users; with dnsmasq stopped, siplb keeps routing to the last servers and
//!   `/status` (its `dns` entry and the event list) and `/metrics` report the failing name;
//! - a name that does not resolve yet is a warning of `siplb check`, not an error: siplb starts
//!   without that server, says so in `/status` and `/readyz`, and takes it in as soon as DNS
//!   has the record; `siplb route` names it then;
//! - a config reload that brings a new name has it asked at once, not at the next refresh.
//!
//! It needs dnsmasq (`apt-get install -y dnsmasq-base`, which `.ci/run` installs), so it is
//! `#[ignore]`d: `cargo test -p siplb-e2e --test dns -- --ignored`. Without dnsmasq each test
//! says so and passes without running. dnsmasq and siplb are stopped by their own pids.

use std::net::SocketAddr;
use std::time::Duration;

use siplb_e2e::backend::{Backend, Behaviour};
use siplb_e2e::dnsmasq::{Dnsmasq, Record};
use siplb_e2e::farm::{users, Farm};
use siplb_e2e::ops::{wait_until, Ops};
use siplb_e2e::placement::moved;
use siplb_e2e::ports::free_udp_port;
use siplb_e2e::process::{route_cli, run_cli, ConfigFile};
use siplb_e2e::reload::replace_by_rename;
use siplb_e2e::request::Request;
use siplb_e2e::testbed::Testbed;
use siplb_e2e::Siplb;

/// How long a change in DNS may take to show: a few refreshes.
const FOLLOW: Duration = Duration::from_secs(15);

/// A config with `[dns]` asking `dns` every 200 ms and one pool `fe` given by `pool`.
fn config(dns: SocketAddr, pool: &str) -> String {
    format!(
        "[listen]\nudp = [\"127.0.0.1:0\"]\nworkers = 1\n\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\nprobe = \"options\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfall = 5\nrise = 1\n\n\
         [dns]\nrefresh = \"200ms\"\ntimeout = \"500ms\"\nnameservers = [\"{dns}\"]\n\n\
         [[pool]]\nname = \"fe\"\n{pool}\n\n\
         [[route]]\npool = \"fe\"\n"
    )
}

fn host(name: &str, ip: &str) -> Record {
    Record::Host(name.to_string(), ip.to_string())
}

fn srv(target: &str, port: u16, priority: u16) -> Record {
    Record::Srv {
        name: "_sip._udp.fe.test".into(),
        target: target.into(),
        port,
        priority,
        weight: 10,
    }
}

/// The ids and addresses of pool `fe`'s servers in `/status`.
fn servers(ops: &Ops) -> Vec<(String, String)> {
    let status = ops.status();
    let list = status.pool("fe")["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            (text("id"), text("address"))
        })
        .collect()
}

/// Waits until pool `fe` has exactly `want` (id, address) servers, in any order.
fn wait_servers(ops: &Ops, want: &[(String, String)]) {
    let mut want = want.to_vec();
    want.sort();
    wait_until("the servers DNS gives", FOLLOW, || {
        let mut got = servers(ops);
        got.sort();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}

fn pair(id: &str, addr: SocketAddr) -> (String, String) {
    (id.to_string(), addr.to_string())
}

#[test]
#[ignore = "needs dnsmasq (dnsmasq-base)"]
fn a_server_by_name_follows_its_a_record_with_its_users() {
    let port = free_udp_port();
    let old = SocketAddr::from(([127, 0, 0, 2], port));
    let new = SocketAddr::from(([127, 0, 0, 3], port));
    let farm = Farm {
        backends: vec![
            Backend::start_on("fe1-old", Behaviour::Accept, old).expect("bind 127.0.0.2"),
            Backend::start_on("fe1-new", Behaviour::Accept, new).expect("bind 127.0.0.3"),
            Backend::start("fe2", Behaviour::Accept),
            Backend::start("fe3", Behaviour::Accept),
        ],
    };
    let (fe2, fe3) = (farm.get("fe2").addr(), farm.get("fe3").addr());
    let records = |fe1: &str| {
        vec![
            host("fe1.test", fe1),
            host("fe2.test", "127.0.0.1"),
            host("fe3.test", "127.0.0.1"),
        ]
    };
    let Some(mut dns) = Dnsmasq::start(&records("127.0.0.2")) else {
        eprintln!("skipped: dnsmasq is not installed (apt-get install -y dnsmasq-base)");
        return;
    };
    let pool = format!(
        "servers = [{{ address = \"fe1.test:{port}\" }}, {{ address = \"fe2.test:{}\" }}, \
         {{ address = \"FE3.test.:{}\", id = \"fe3\" }}]",
        fe2.port(),
        fe3.port()
    );
    let (mut tb, ops) = Testbed::with_ops(farm, Siplb::start(&config(dns.addr(), &pool)));
    let fe1_id = format!("fe1.test:{port}");
    let fe2_id = format!("fe2.test:{}", fe2.port());
    wait_servers(
        &ops,
        &[pair(&fe1_id, old), pair(&fe2_id, fe2), pair("fe3", fe3)],
    );

    let aors = users(300, "contoso.com");
    let before = tb.sweep(&aors);
    for id in ["fe1-old", "fe2", "fe3"] {
        assert!(before.values().any(|s| s == id), "{id} got no user");
    }
    assert!(
        !before.values().any(|s| s == "fe1-new"),
        "nothing at 127.0.0.3 yet"
    );

    dns.set(&records("127.0.0.3"));
    wait_servers(
        &ops,
        &[pair(&fe1_id, new), pair(&fe2_id, fe2), pair("fe3", fe3)],
    );
    let after = tb.sweep(&aors);
    for (user, was) in &before {
        let now = &after[user];
        let expected = if was == "fe1-old" { "fe1-new" } else { was };
        assert_eq!(now, expected, "{user} was on {was}");
    }
    let metrics = ops.metrics();
    assert!(
        metrics.sum("siplb_dns_changes_total", &[("name", "fe1.test")]) >= 2.0,
        "the first answer and the change are counted"
    );

    // A request routed by a server's name (a Lync Front End record-routes with its FQDN) goes
    // to the server of that name and port; another name is refused.
    let to_fe2 = Request::invite("sip:bob@contoso.com", "sip:carol@contoso.com")
        .with("Route", &format!("<sip:fe2.test:{};lr>", fe2.port()));
    let answer = tb.client.transact(tb.siplb.addr(), &to_fe2);
    assert_eq!(answer.status(), Some(200));
    assert_eq!(tb.farm.get("fe2").with_call_id(&to_fe2.call_id()).len(), 1);
    let elsewhere = Request::invite("sip:bob@contoso.com", "sip:carol@contoso.com")
        .with("Route", "<sip:fe9.test:5060;lr>");
    let answer = tb.client.transact(tb.siplb.addr(), &elsewhere);
    assert_eq!(answer.status(), Some(403));

    // Probes follow the address: with the old address gone, fe1 stays up on probes of the new
    // one (more than `fall` of them).
    tb.farm.get_mut("fe1-old").stop();
    let since = std::time::Instant::now();
    wait_until("probes of fe1 at its new address", FOLLOW, || {
        match tb.farm.get("fe1-new").probes_since(since).len() {
            n if n > 5 => Ok(()),
            n => Err(format!("{n} probes")),
        }
    });
    assert_eq!(ops.status().server_state(&fe1_id), "up");
}

#[test]
#[ignore = "needs dnsmasq (dnsmasq-base)"]
fn an_srv_pool_follows_its_records_and_keeps_them_when_dns_fails() {
    let farm = Farm::start("s", 5, Behaviour::Accept);
    let ports: Vec<u16> = (1..=5)
        .map(|i| farm.get(&format!("s{i}")).addr().port())
        .collect();
    let mut records: Vec<Record> = (1..=5)
        .map(|i| host(&format!("s{i}.test"), "127.0.0.1"))
        .collect();
    // s1..s4 at priority 0; s5 is a backup at priority 10.
    let srvs = |without: Option<usize>| {
        (1..=5)
            .filter(|&i| Some(i) != without)
            .map(|i| {
                srv(
                    &format!("s{i}.test"),
                    ports[i - 1],
                    if i == 5 { 10 } else { 0 },
                )
            })
            .collect::<Vec<_>>()
    };
    records.extend(srvs(None));
    let Some(mut dns) = Dnsmasq::start(&records) else {
        eprintln!("skipped: dnsmasq is not installed (apt-get install -y dnsmasq-base)");
        return;
    };
    let (mut tb, ops) = Testbed::with_ops(
        farm,
        Siplb::start(&config(dns.addr(), "srv = \"_sip._udp.fe.test\"")),
    );
    let all = |without: Option<usize>| {
        (1..=5)
            .filter(|&i| Some(i) != without)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], ports[i - 1]));
                pair(&format!("s{i}.test:{}", ports[i - 1]), addr)
            })
            .collect::<Vec<_>>()
    };
    wait_servers(&ops, &all(None));

    let aors = users(400, "contoso.com");
    let before = tb.sweep(&aors);
    for id in ["s1", "s2", "s3", "s4"] {
        assert!(before.values().any(|s| s == id), "{id} got no user");
    }
    assert!(
        !before.values().any(|s| s == "s5"),
        "the priority-10 target is a backup while priority 0 has servers up"
    );

    // The SRV record of s2 is removed: only s2's users move, to the other priority-0 targets.
    let mut without_s2: Vec<Record> = (1..=5)
        .map(|i| host(&format!("s{i}.test"), "127.0.0.1"))
        .collect();
    without_s2.extend(srvs(Some(2)));
    dns.set(&without_s2);
    wait_servers(&ops, &all(Some(2)));
    let after = tb.sweep(&aors);
    let moved = moved(&before, &after);
    assert!(!moved.is_empty(), "s2's users moved");
    for (user, (was, now)) in &moved {
        assert_eq!(was, "s2", "{user} moved from {was} to {now}");
        assert!(
            ["s1", "s3", "s4"].contains(&now.as_str()),
            "{user} moved to {now}"
        );
    }

    // DNS stops answering: siplb keeps the last servers, says so, and routes as before.
    dns.stop();
    let status = ops.wait_status("the SRV name reported failing", |s| {
        s.0["dns"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == "_sip._udp.fe.test" && n["last_error"].is_string())
    });
    let name = status.0["dns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == "_sip._udp.fe.test")
        .cloned()
        .unwrap_or_default();
    assert!(name["last_ok"].is_string(), "{name}");
    assert_eq!(name["answer"].as_array().map(Vec::len), Some(4), "{name}");
    assert_eq!(servers(&ops).len(), 4, "the last servers stay");
    let said: Vec<String> = status.0["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "dns")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    assert!(
        said.iter()
            .any(|m| m.starts_with("_sip._udp.fe.test does not resolve")),
        "the event list says so: {said:?}"
    );
    let during = tb.sweep(&aors);
    assert_eq!(during, after, "users stay where they were while DNS fails");
    assert!(
        ops.metrics()
            .sum("siplb_dns_failures_total", &[("name", "_sip._udp.fe.test")])
            >= 1.0
    );
}

#[test]
#[ignore = "needs dnsmasq (dnsmasq-base)"]
fn a_name_unknown_at_start_is_taken_in_when_dns_has_it() {
    let farm = Farm::start("fe", 1, Behaviour::Accept);
    let port = farm.get("fe1").addr().port();
    let Some(mut dns) = Dnsmasq::start(&[host("other.test", "127.0.0.1")]) else {
        eprintln!("skipped: dnsmasq is not installed (apt-get install -y dnsmasq-base)");
        return;
    };
    let text = config(
        dns.addr(),
        &format!("servers = [{{ address = \"fe1.test:{port}\" }}]"),
    );

    // `siplb check`: valid, with a warning naming the name.
    let file = ConfigFile::write(&text);
    let path = file.path().to_string_lossy().into_owned();
    let out = run_cli(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: fe1.test does not resolve now"),
        "{stdout}"
    );

    let (mut tb, ops) = Testbed::with_ops(farm, Siplb::start(&text));
    let status = ops.wait_status("fe1.test reported unresolved", |s| {
        s.0["dns"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == "fe1.test" && n["last_error"].is_string())
    });
    assert!(servers(&ops).is_empty(), "{}", status.0);
    assert_eq!(ops.get("/readyz").status, 503, "no server in the only pool");
    assert_eq!(tb.register("alice@contoso.com"), (503, None));

    dns.set(&[host("fe1.test", "127.0.0.1")]);
    let fe1 = SocketAddr::from(([127, 0, 0, 1], port));
    wait_servers(&ops, &[pair(&format!("fe1.test:{port}"), fe1)]);
    wait_until("/readyz 200", FOLLOW, || match ops.get("/readyz").status {
        200 => Ok(()),
        other => Err(other.to_string()),
    });
    assert_eq!(tb.register("alice@contoso.com"), (200, Some("fe1".into())));
    let routed = route_cli(&file, "REGISTER", "sip:alice@contoso.com").expect("siplb route");
    assert_eq!(routed.server_id, format!("fe1.test:{port}"));
    assert_eq!(routed.server_address, fe1.to_string());
}

#[test]
#[ignore = "needs dnsmasq (dnsmasq-base)"]
fn a_reload_that_brings_a_name_asks_it_at_once() {
    let farm = Farm::start("fe", 2, Behaviour::Accept);
    let (fe1, fe2) = (farm.get("fe1").addr(), farm.get("fe2").addr());
    let Some(dns) = Dnsmasq::start(&[host("fe2.test", "127.0.0.1")]) else {
        eprintln!("skipped: dnsmasq is not installed (apt-get install -y dnsmasq-base)");
        return;
    };
    // An hour between refreshes: only the reload can make siplb ask for fe2.test in time.
    let text = |servers: &str| {
        config(dns.addr(), &format!("servers = [{servers}]"))
            .replace("refresh = \"200ms\"", "refresh = \"1h\"")
    };
    let one = format!("{{ address = \"{fe1}\" }}");
    let (mut tb, ops) = Testbed::with_ops(farm, Siplb::start(&text(&one)));
    wait_servers(&ops, &[pair(&fe1.to_string(), fe1)]);

    let two = format!("{one}, {{ address = \"fe2.test:{}\" }}", fe2.port());
    replace_by_rename(tb.siplb.config().path(), &text(&two));
    ops.wait_config_version(2);
    let fe2_id = format!("fe2.test:{}", fe2.port());
    wait_servers(&ops, &[pair(&fe1.to_string(), fe1), pair(&fe2_id, fe2)]);
    let placed = tb.sweep(&users(100, "contoso.com"));
    assert!(placed.values().any(|s| s == "fe2"), "fe2 takes users");
}
