//! Flows over TCP: the built `siplb` binary between [`StreamClient`]s (Lync clients, a trunk)
//! and [`StreamBackend`]s (Front Ends), asserting on what the peers received.
//!
//! - A Lync-shaped flow: the client registers, its server sends NOTIFY and BENOTIFY down its
//!   backend connection, they reach that client's connection and no other, and the client's
//!   200 to the NOTIFY reaches the server.
//! - Killing a server closes the client flows bound to it; the client reconnects and lands on a
//!   live server, and on the paired pool when the whole pool is down.
//! - A trunk flow (many users on one connection) keeps working after one server dies.
//! - CRLF keep-alives are answered; a slowloris header is cut after `header_timeout`; a 10 MB
//!   header block and a body over the cap are refused; `max_per_ip` refuses the connection over
//!   the limit; 2,000 concurrent client flows are served; a drained server keeps its flows.
//!
//! Servers are probed with `tcp-connect` (what a Lync load balancer does on 5061), every
//! port is `127.0.0.1:0`, every wait has a deadline, and every process and peer this test
//! starts is stopped when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use siplb_e2e::ops::{wait_until, Metrics, Ops};
use siplb_e2e::request::{unique, ContentLength};
use siplb_e2e::stream::{Dial, Listen, StreamBackend, StreamClient, ANSWER_WITHIN, QUIET_FOR};
use siplb_e2e::{Msg, Request, Siplb};

/// The domain every user of these tests belongs to.
const DOMAIN: &str = "contoso.com";

/// How long siplb may take to close a flow whose server died, or refuse a connection.
const CLOSES_WITHIN: Duration = Duration::from_secs(5);

/// A pool: its name, its pair, and its servers.
struct Pool<'a> {
    name: &'a str,
    pair: Option<&'a str>,
    servers: &'a [&'a StreamBackend],
}

/// A config with a TCP listener (and no UDP one), the ops endpoint, fast `tcp-connect` probes,
/// `pools` (the first is the route's home pool) over TCP, and `extra` appended.
fn config(pools: &[Pool<'_>], extra: &str) -> String {
    let mut t = String::from(
        "[listen]\ntcp = [\"127.0.0.1:0\"]\nworkers = 1\n\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\nprobe = \"tcp-connect\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         fall = 1\nrise = 1\n\n",
    );
    for p in pools {
        let servers: Vec<String> = p
            .servers
            .iter()
            .map(|s| {
                format!(
                    "{{ address = \"{}\", transport = \"tcp\", id = \"{}\" }}",
                    s.addr(),
                    s.id()
                )
            })
            .collect();
        t.push_str(&format!(
            "[[pool]]\nname = \"{}\"\nfailback_after = \"1s\"\nservers = [{}]\n",
            p.name,
            servers.join(", ")
        ));
        if let Some(pair) = p.pair {
            t.push_str(&format!("pair = \"{pair}\"\n"));
        }
        t.push('\n');
    }
    t.push_str(&format!(
        "[[route]]\ndomain = \"{DOMAIN}\"\npool = \"{}\"\n\n",
        pools[0].name
    ));
    t.push_str(extra);
    t
}

/// [`config`] with one pool `fe` of `servers`, the route's.
fn one_pool(servers: &[&StreamBackend], extra: &str) -> String {
    config(
        &[Pool {
            name: "fe",
            pair: None,
            servers,
        }],
        extra,
    )
}

/// Connections siplb refused (or cut) for `reason`, by its metrics.
fn refusals(m: &Metrics, reason: &str) -> f64 {
    m.sum("siplb_connection_refusals_total", &[("reason", reason)])
}

fn backend(id: &str) -> StreamBackend {
    StreamBackend::start(id, Listen::Tcp)
}

fn connect(siplb: &Siplb) -> StreamClient {
    StreamClient::connect(siplb.tcp(), Dial::Tcp)
}

fn aor(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// The ids of the servers among `servers` that received a REGISTER of `aor` since `since`.
fn holders_since(servers: &[&StreamBackend], aor: &str, since: Instant) -> BTreeSet<String> {
    servers
        .iter()
        .filter(|s| {
            s.requests().iter().any(|m| {
                m.at >= since
                    && Msg::parse(&m.bytes).is_some_and(|p| {
                        p.method() == Some("REGISTER") && p.to_aor().as_deref() == Some(aor)
                    })
            })
        })
        .map(|s| s.id().to_string())
        .collect()
}

/// The one server among `servers` that got the REGISTER of `aor` sent since `since`.
fn holder_since(servers: &[&StreamBackend], aor: &str, since: Instant) -> String {
    let held = holders_since(servers, aor, since);
    assert_eq!(
        held.len(),
        1,
        "{aor}: expected one server to get the REGISTER, got {held:?}"
    );
    held.into_iter().next().expect("one holder")
}

/// Registers `user` on a fresh connection; asserts a 200 and returns the client and the id of
/// the server that got the REGISTER.
fn sign_in(siplb: &Siplb, servers: &[&StreamBackend], user: &str) -> (StreamClient, String) {
    let client = connect(siplb);
    let since = Instant::now();
    let answer = client.register(&aor(user));
    assert_eq!(answer.status(), Some(200), "REGISTER {user}: {answer:?}");
    (client, holder_since(servers, &aor(user), since))
}

/// Polls until a fresh connection registers `user` with a 200 (a server just died or came
/// back, and routing has not caught up yet); returns the client and where it landed.
fn sign_in_until_ok(
    siplb: &Siplb,
    servers: &[&StreamBackend],
    user: &str,
    within: Duration,
) -> (StreamClient, String) {
    wait_until(&format!("{user} signs in"), within, || {
        let client = connect(siplb);
        let since = Instant::now();
        let req = client.register_request(&aor(user));
        client.send(&req);
        match client.final_or_closed(&req) {
            Some(m) if m.status() == Some(200) => {
                let held = holders_since(servers, &aor(user), since);
                let one = held.iter().next().cloned();
                match (held.len(), one) {
                    (1, Some(id)) => Ok((client, id)),
                    _ => Err(format!("REGISTER reached {held:?}")),
                }
            }
            other => Err(format!("answer {:?}", other.map(|m| m.status()))),
        }
    })
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `need` (with `prlimit`, from
/// util-linux), so a test of many connections is limited by siplb, not by the default 1024.
/// Child processes started afterwards (siplb) inherit it.
fn raise_open_files(need: u64) {
    let pid = std::process::id().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--raw", "--noheadings"])
        .args(["--output", "SOFT,HARD"])
        .output()
        .expect("prlimit (util-linux) reads the open-file limit");
    let text = String::from_utf8_lossy(&out.stdout);
    let limits: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [soft, hard] = limits[..] else {
        panic!("unexpected prlimit output {text:?}");
    };
    if soft >= need {
        return;
    }
    assert!(
        hard >= need,
        "this test needs {need} open files and the hard limit is {hard}: raise it (ulimit -Hn)"
    );
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={need}:{hard}")])
        .status()
        .expect("prlimit sets the open-file limit");
    assert!(
        status.success(),
        "prlimit could not raise the open-file limit to {need}"
    );
}

fn backend_by_id<'a>(servers: &[&'a StreamBackend], id: &str) -> &'a StreamBackend {
    servers
        .iter()
        .find(|s| s.id() == id)
        .copied()
        .unwrap_or_else(|| panic!("no server {id}"))
}

#[test]
fn a_lync_flow_gets_its_servers_notify_and_benotify_and_the_client_answers_reach_the_server() {
    let (a, b) = (backend("fe1-a"), backend("fe1-b"));
    let servers = [&a, &b];
    let siplb = Siplb::start(&one_pool(&servers, ""));
    let (alice, alice_on) = sign_in(&siplb, &servers, "alice");
    let (bob, _) = sign_in(&siplb, &servers, "bob");
    let server = backend_by_id(&servers, &alice_on);
    let conn = server.conn_of_register(&aor("alice"), ANSWER_WITHIN);

    // NOTIFY from the server down alice's backend connection: siplb relays it down alice's
    // flow, alice answers 200, and the 200 comes back to the server on that connection.
    let notify = server.request("NOTIFY", &aor("alice"));
    let answer = server
        .transact(conn, &notify, ANSWER_WITHIN)
        .expect("alice's 200 to the NOTIFY reached the server");
    assert_eq!(answer.status(), Some(200));
    assert_eq!(answer.call_id(), Some(notify.call_id().as_str()));
    let got = alice
        .wait_request(ANSWER_WITHIN, |m| {
            m.call_id() == Some(notify.call_id().as_str())
        })
        .expect("alice got the NOTIFY");
    assert_eq!(got.method(), Some("NOTIFY"));
    let vias = got.vias();
    assert_eq!(
        vias.len(),
        2,
        "siplb's Via on top of the server's: {vias:?}"
    );
    assert!(
        vias[0].starts_with("SIP/2.0/TCP ") && vias[0].contains(&siplb.tcp().to_string()),
        "siplb's Via names its TCP listener: {vias:?}"
    );

    // BENOTIFY expects no answer; it reaches alice too.
    let benotify = server.request("BENOTIFY", &aor("alice"));
    server
        .send(conn, &benotify.bytes())
        .expect("send the BENOTIFY");
    let got = alice
        .wait_request(ANSWER_WITHIN, |m| {
            m.call_id() == Some(benotify.call_id().as_str())
        })
        .expect("alice got the BENOTIFY");
    assert_eq!(got.method(), Some("BENOTIFY"));

    // Neither reached bob's connection.
    std::thread::sleep(QUIET_FOR); // listening for what must not come
    let ids = [notify.call_id(), benotify.call_id()];
    let leaked: Vec<Msg> = bob
        .requests()
        .into_iter()
        .filter(|m| ids.iter().any(|id| m.call_id() == Some(id.as_str())))
        .collect();
    assert!(leaked.is_empty(), "bob got alice's requests: {leaked:?}");
    assert!(!alice.is_closed() && !bob.is_closed());
}

#[test]
fn killing_a_server_closes_its_flows_and_the_client_lands_on_a_live_server_then_on_the_pair() {
    let (mut a, mut b) = (backend("fe1-a"), backend("fe1-b"));
    let pair = backend("fe2-a");
    let siplb = {
        let home = [&a, &b];
        let other = [&pair];
        Siplb::start(&config(
            &[
                Pool {
                    name: "fe-dc1",
                    pair: Some("fe-dc2"),
                    servers: &home,
                },
                Pool {
                    name: "fe-dc2",
                    pair: Some("fe-dc1"),
                    servers: &other,
                },
            ],
            "",
        ))
    };
    let ops = Ops::of(&siplb);
    let (client, first) = sign_in(&siplb, &[&a, &b, &pair], "carol");
    assert_ne!(first, "fe2-a", "carol's home is fe-dc1");
    let (survivor_id, dead) = if first == "fe1-a" {
        ("fe1-b", &mut a)
    } else {
        ("fe1-a", &mut b)
    };
    dead.kill();
    assert!(
        client.wait_closed(CLOSES_WITHIN).is_some(),
        "carol's flow closes when her server dies"
    );

    let (_again, landed) = sign_in_until_ok(&siplb, &[&a, &b, &pair], "carol", CLOSES_WITHIN);
    assert_eq!(landed, survivor_id, "carol lands on the live server");

    // Now the whole home pool goes: carol lands on the pair.
    let survivor = if survivor_id == "fe1-a" {
        &mut a
    } else {
        &mut b
    };
    survivor.kill();
    siplb_e2e::health::wait_serving(&ops, "fe-dc1", "fe-dc2");
    let (_third, landed) = sign_in_until_ok(&siplb, &[&a, &b, &pair], "carol", CLOSES_WITHIN);
    assert_eq!(
        landed, "fe2-a",
        "with fe-dc1 down carol is served by its pair"
    );
}

#[test]
fn a_trunk_flow_keeps_working_after_one_server_dies() {
    let (a, mut b, c) = (backend("med-a"), backend("med-b"), backend("med-c"));
    let siplb = {
        let servers = [&a, &b, &c];
        Siplb::start(&config(
            &[Pool {
                name: "med",
                pair: None,
                servers: &servers,
            }],
            "",
        ))
    };
    let ops = Ops::of(&siplb);
    let trunk = connect(&siplb);
    let users: Vec<String> = (0..60).map(|i| aor(&format!("trunk{i:02}"))).collect();
    let register_all = |trunk: &StreamClient, servers: &[&StreamBackend]| {
        let since = Instant::now();
        let mut placed = BTreeMap::new();
        for u in &users {
            let answer = trunk.register(u);
            assert_eq!(answer.status(), Some(200), "REGISTER {u}");
            placed.insert(u.clone(), holder_since(servers, u, since));
        }
        placed
    };
    let before = register_all(&trunk, &[&a, &b, &c]);
    let per_server: BTreeSet<&String> = before.values().collect();
    assert_eq!(
        per_server.len(),
        3,
        "one trunk connection's users spread over every server: {before:?}"
    );

    b.kill();
    siplb_e2e::health::wait_server(&ops, "med-b", "down");
    assert!(
        !trunk.is_closed(),
        "a trunk flow that used several servers stays open when one dies"
    );
    let after = register_all(&trunk, &[&a, &c]);
    for u in &users {
        if before[u] != "med-b" {
            assert_eq!(before[u], after[u], "{u} stays on its live server");
        }
    }
    assert!(!trunk.is_closed());
}

#[test]
fn crlf_keepalives_are_answered_with_a_pong_and_do_not_disturb_the_flow() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], ""));
    let client = connect(&siplb);
    for n in 1..=3 {
        client.send_raw(b"\r\n\r\n").expect("send a ping");
        assert!(client.wait_pongs(n, ANSWER_WITHIN), "pong {n}");
    }
    assert_eq!(client.register(&aor("dave")).status(), Some(200));
    client.send_raw(b"\r\n\r\n").expect("send a ping");
    assert!(client.wait_pongs(4, ANSWER_WITHIN));
    assert_eq!(
        a.pings(),
        0,
        "a client's ping is answered by siplb, not relayed"
    );
}

#[test]
fn a_slowloris_header_is_cut_after_header_timeout_while_a_quiet_connection_stays() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], "[connections]\nheader_timeout = \"1s\"\n"));
    let ops = Ops::of(&siplb);
    let quiet = connect(&siplb);
    let slow = connect(&siplb);
    let started = Instant::now();
    let head = Request::register(&aor("eve")).bytes();
    // One byte every 100 ms: the header block would take minutes. Bounded by the head's length
    // and by the deadline.
    let mut cut = None;
    for byte in head.iter().take(100) {
        if slow.send_raw(std::slice::from_ref(byte)).is_err() || slow.is_closed() {
            cut = Some(started.elapsed());
            break;
        }
        // Pacing the slowloris itself: this is the behaviour under test, not a wait.
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = cut
        .or_else(|| slow.wait_closed(CLOSES_WITHIN).map(|_| started.elapsed()))
        .expect("the slow header was cut");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(4),
        "cut after about header_timeout (1s), not {cut:?}"
    );
    assert!(
        !quiet.is_closed(),
        "a connection that sends nothing is not cut by header_timeout"
    );
    assert_eq!(quiet.register(&aor("frank")).status(), Some(200));
    assert!(a
        .requests()
        .iter()
        .all(|m| !String::from_utf8_lossy(&m.bytes).contains("eve@")));
    let m = ops.metrics();
    assert_eq!(refusals(&m, "header_timeout"), 1.0);
}

#[test]
fn a_10_mb_header_block_and_a_body_over_the_cap_are_refused() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], "[connections]\nmax_body_bytes = 1024\n"));
    let ops = Ops::of(&siplb);

    // A header block that never ends: 10 MB of header lines, 64 KiB at a time, until siplb
    // closes the connection.
    let flood = connect(&siplb);
    flood
        .send_raw(b"REGISTER sip:contoso.com SIP/2.0\r\n")
        .expect("start line");
    let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
    let chunk = line.repeat(64);
    let mut sent = 0usize;
    while sent < 10 << 20 {
        if flood.send_raw(chunk.as_bytes()).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        flood.wait_closed(CLOSES_WITHIN).is_some(),
        "siplb closed the connection after {sent} bytes of header"
    );
    assert!(
        sent < 10 << 20,
        "siplb stopped reading long before 10 MB (sent {sent})"
    );

    // A body over max_body_bytes: answered 513 where its header block was read, then closed.
    let big = connect(&siplb);
    let req = big
        .register_request(&aor("grace"))
        .body("text/plain", &[b'x'; 5000]);
    big.send(&req);
    let answer = big
        .final_response(&req)
        .expect("an answer to the oversized request");
    assert_eq!(answer.status(), Some(513), "{answer:?}");
    assert!(big.wait_closed(CLOSES_WITHIN).is_some());

    // A message without Content-Length: 400, then closed.
    let bare = connect(&siplb);
    let mut req = bare.register_request(&aor("heidi"));
    req.content_length = ContentLength::Omit;
    bare.send(&req);
    let answer = bare.final_response(&req).expect("an answer");
    assert_eq!(answer.status(), Some(400), "{answer:?}");
    assert!(bare.wait_closed(CLOSES_WITHIN).is_some());

    assert!(
        a.requests()
            .iter()
            .filter_map(|m| Msg::parse(&m.bytes))
            .all(|m| m
                .to_aor()
                .is_none_or(|t| !["grace", "heidi"].iter().any(|u| t.starts_with(u)))),
        "no refused request reached the server"
    );
    // siplb still serves.
    assert_eq!(connect(&siplb).register(&aor("ivan")).status(), Some(200));
    let m = ops.metrics();
    assert_eq!(refusals(&m, "too_large"), 2.0);
    assert_eq!(refusals(&m, "bad_content_length"), 1.0);
}

#[test]
fn max_per_ip_refuses_the_connection_over_the_limit() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], "[connections]\nmax_per_ip = 3\n"));
    let ops = Ops::of(&siplb);
    let from = |ip: &str| {
        let ip: IpAddr = ip.parse().expect("an IP");
        StreamClient::try_connect(siplb.tcp(), Some(ip), Dial::Tcp).expect("connect")
    };
    let three: Vec<StreamClient> = (0..3).map(|_| from("127.0.0.7")).collect();
    for (i, c) in three.iter().enumerate() {
        assert_eq!(c.register(&aor(&format!("ip7-{i}"))).status(), Some(200));
    }
    let fourth = from("127.0.0.7");
    assert!(
        fourth.wait_closed(CLOSES_WITHIN).is_some(),
        "the fourth connection from 127.0.0.7 is closed at once"
    );
    let other = from("127.0.0.8");
    assert_eq!(other.register(&aor("ip8")).status(), Some(200));
    assert!(three.iter().all(|c| !c.is_closed()));
    // One closes: a new one from that address is taken again.
    drop(three);
    wait_until("a slot of 127.0.0.7 is free again", CLOSES_WITHIN, || {
        let c = from("127.0.0.7");
        let req = c.register_request(&aor("ip7-again"));
        if c.send_raw(&req.bytes()).is_err() {
            return Err("write failed".into());
        }
        match c.final_or_closed(&req) {
            Some(m) if m.status() == Some(200) => Ok(()),
            other => Err(format!("{:?}", other.map(|m| m.status()))),
        }
    });
    let m = ops.metrics();
    assert!(refusals(&m, "max_per_ip") >= 1.0);
}

#[test]
fn two_thousand_concurrent_client_flows_are_served() {
    const FLOWS: usize = 2000;
    // This process holds a client and a server end per flow, siplb (which inherits the limit)
    // a client and a backend connection per flow.
    raise_open_files(3 * FLOWS as u64);
    let (a, b) = (backend("fe1-a"), backend("fe1-b"));
    let servers = [&a, &b];
    let siplb = Siplb::start(&one_pool(&servers, "[connections]\nmax_per_ip = 5000\n"));
    let ops = Ops::of(&siplb);
    let clients: Vec<StreamClient> = (0..FLOWS).map(|_| connect(&siplb)).collect();
    let mut sent = Vec::with_capacity(FLOWS);
    for (i, c) in clients.iter().enumerate() {
        let req = c.register_request(&aor(&format!("crowd{i:04}")));
        c.send(&req);
        sent.push(req);
    }
    for (c, req) in clients.iter().zip(&sent) {
        let answer = c
            .final_response(req)
            .unwrap_or_else(|| panic!("no answer to {}", req.call_id()));
        assert_eq!(answer.status(), Some(200));
    }
    let status = ops.status();
    let flows = status.0["connections"]["flows"].as_u64();
    assert_eq!(flows, Some(FLOWS as u64), "/status counts every open flow");
    // Connections that carried a REGISTER (probes connect too, but send nothing).
    let per_server = [&a, &b].map(|s| {
        let conns: BTreeSet<u64> = s
            .requests()
            .iter()
            .filter(|m| m.msg().method() == Some("REGISTER"))
            .map(|m| m.conn)
            .collect();
        conns.len()
    });
    assert_eq!(
        per_server.iter().sum::<usize>(),
        FLOWS,
        "one backend connection per client flow: {per_server:?}"
    );
    assert!(clients.iter().all(|c| !c.is_closed()));
}

#[test]
fn a_drained_server_keeps_its_flows_and_gets_no_new_ones() {
    let (a, b) = (backend("fe1-a"), backend("fe1-b"));
    let servers = [&a, &b];
    let token = unique("token-");
    let siplb = Siplb::start_with_env(&one_pool(&servers, ""), &[("SIPLB_ADMIN_TOKEN", &token)]);
    let ops = Ops::of(&siplb);
    let (judy, judy_on) = sign_in(&siplb, &servers, "judy");
    let server = backend_by_id(&servers, &judy_on);
    let conn = server.conn_of_register(&aor("judy"), ANSWER_WITHIN);
    ops.admin_ok(&format!("/admin/servers/{judy_on}/drain"), &token);
    siplb_e2e::health::wait_server(&ops, &judy_on, "drained");

    // Judy's flow stays, and her server can still reach her.
    let notify = server.request("NOTIFY", &aor("judy"));
    let answer = server.transact(conn, &notify, ANSWER_WITHIN);
    assert_eq!(answer.and_then(|m| m.status()), Some(200));
    assert!(!judy.is_closed(), "a drained server keeps its flows");

    // New sign-ins never land on it.
    for i in 0..20 {
        let (_c, on) = sign_in(&siplb, &servers, &format!("new{i}"));
        assert_ne!(on, judy_on, "a drained server gets no new users");
    }
}

#[test]
fn status_and_metrics_count_connections_flows_and_backend_connections() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], ""));
    let ops = Ops::of(&siplb);
    let clients: Vec<StreamClient> = (0..3).map(|_| connect(&siplb)).collect();
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.register(&aor(&format!("count{i}"))).status(), Some(200));
    }
    let s = ops.wait_status("3 flows", |s| s.0["connections"]["flows"] == 3);
    let listener = &s.0["connections"]["listeners"][0];
    assert_eq!(listener["transport"], "tcp");
    assert_eq!(listener["connections"], 3);
    assert_eq!(listener["bound"], siplb.tcp().to_string());
    assert_eq!(s.0["connections"]["backend_connections"]["tcp"], 3);
    let m = ops.metrics();
    assert_eq!(m.sum("siplb_flows", &[]), 3.0);
    assert_eq!(m.sum("siplb_connections", &[("transport", "tcp")]), 3.0);
    assert_eq!(
        m.sum("siplb_backend_connections", &[("transport", "tcp")]),
        3.0
    );
    drop(clients);
    ops.wait_status("no flow", |s| {
        s.0["connections"]["flows"] == 0 && s.0["connections"]["backend_connections"]["tcp"] == 0
    });
}

#[test]
fn a_lync_client_over_tls_reaches_its_tls_front_end_and_gets_its_notify_over_tls() {
    use siplb_e2e::tls::Pki;
    let pki = Pki::new();
    let front_end = StreamBackend::start("fe1-tls", Listen::Tls(pki.server_config(true)));
    let text = format!(
        "[listen]\ntls = [{{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}]\n\
         workers = 1\n\n\
         [health]\nprobe = \"tls-connect\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\n\
         [[pool]]\nname = \"fe\"\n\
         tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n\
         servers = [{{ address = \"{}\", transport = \"tls\", id = \"fe1-tls\" }}]\n\n\
         [[route]]\ndomain = \"{DOMAIN}\"\npool = \"fe\"\n",
        pki.server.cert_path.display(),
        pki.server.key_path.display(),
        pki.ca_path.display(),
        pki.client.cert_path.display(),
        pki.client.key_path.display(),
        front_end.addr(),
    );
    let siplb = Siplb::start(&text);
    let client = StreamClient::connect(siplb.tls(), Dial::tls(pki.client_config(false)));
    let answer = client.register(&aor("kim"));
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    let got = front_end.register_of(&aor("kim"), ANSWER_WITHIN);
    let vias = got.msg().vias();
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/TLS {}", siplb.tls())),
        "siplb's Via names the TLS hop: {vias:?}"
    );
    assert!(vias[1].starts_with("SIP/2.0/TLS "), "{vias:?}");
    let conn_info = front_end
        .connections()
        .into_iter()
        .find(|c| c.id == got.conn)
        .expect("the REGISTER's connection");
    assert!(
        !conn_info.client_certs.is_empty(),
        "siplb presented the pool's client certificate (MTLS)"
    );

    let notify = front_end.request("NOTIFY", &aor("kim"));
    let answer = front_end.transact(got.conn, &notify, ANSWER_WITHIN);
    assert_eq!(answer.and_then(|m| m.status()), Some(200));
    assert!(client
        .requests()
        .iter()
        .any(|m| m.call_id() == Some(notify.call_id().as_str())));
}

#[test]
fn an_idle_flow_is_closed_after_idle_timeout_and_keepalives_keep_one_open() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], "[connections]\nidle_timeout = \"1s\"\n"));
    let ops = Ops::of(&siplb);
    let idle = connect(&siplb);
    let kept = connect(&siplb);
    let started = Instant::now();
    assert_eq!(idle.register(&aor("olga")).status(), Some(200));
    // A CRLF keep-alive every 300 ms for 2.5 s: the kept flow reads something well within
    // every idle_timeout.
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        kept.send_raw(b"\r\n\r\n").expect("a keep-alive");
        pings += 1;
        assert!(kept.wait_pongs(pings, ANSWER_WITHIN), "pong {pings}");
        // Pacing the keep-alives, as a Lync client paces its own.
        std::thread::sleep(Duration::from_millis(300));
    }
    let closed = idle.wait_closed(Duration::ZERO).is_some();
    assert!(
        closed,
        "the idle flow was closed within 2.5 s (idle_timeout 1s)"
    );
    assert!(!kept.is_closed(), "keep-alives keep a flow open");
    assert_eq!(kept.register(&aor("pete")).status(), Some(200));
    let m = ops.metrics();
    assert_eq!(refusals(&m, "idle"), 1.0);
}

#[test]
fn connections_over_max_are_refused() {
    let a = backend("fe1-a");
    let siplb = Siplb::start(&one_pool(&[&a], "[connections]\nmax = 2\nmax_per_ip = 2\n"));
    let ops = Ops::of(&siplb);
    let one = connect(&siplb);
    let two = StreamClient::try_connect(
        siplb.tcp(),
        Some("127.0.0.9".parse().expect("ip")),
        Dial::Tcp,
    )
    .expect("connect");
    assert_eq!(one.register(&aor("quinn")).status(), Some(200));
    assert_eq!(two.register(&aor("rosa")).status(), Some(200));
    let third = StreamClient::try_connect(
        siplb.tcp(),
        Some("127.0.0.10".parse().expect("ip")),
        Dial::Tcp,
    )
    .expect("connect");
    assert!(
        third.wait_closed(CLOSES_WITHIN).is_some(),
        "a third connection is closed at once, whatever its address"
    );
    let m = ops.metrics();
    assert_eq!(refusals(&m, "max"), 1.0);
    assert!(!one.is_closed() && !two.is_closed());
}

#[test]
fn a_server_its_probes_mark_down_has_its_connections_and_its_clients_flows_closed() {
    let (a, b) = (backend("fe1-a"), backend("fe1-b"));
    let servers = [&a, &b];
    // OPTIONS probes over TCP: a hung server fails them while its connections stay open.
    let text = one_pool(&servers, "").replace("probe = \"tcp-connect\"", "probe = \"options\"");
    let siplb = Siplb::start(&text);
    let ops = Ops::of(&siplb);
    let (client, on) = sign_in(&siplb, &servers, "sam");
    let hung = backend_by_id(&servers, &on);
    let conn = hung.conn_of_register(&aor("sam"), ANSWER_WITHIN);
    hung.set_silent(true);
    siplb_e2e::health::wait_server(&ops, &on, "down");
    assert!(
        hung.wait_closed(conn, CLOSES_WITHIN),
        "siplb closed its connection to the server marked down"
    );
    assert!(
        client.wait_closed(CLOSES_WITHIN).is_some(),
        "sam's flow, which used only that server, is closed so sam signs in again"
    );
    let (_again, landed) = sign_in_until_ok(&siplb, &servers, "sam", CLOSES_WITHIN);
    assert_ne!(landed, on, "sam lands on the live server");
}

#[test]
fn a_tls_connection_that_never_completes_its_handshake_is_cut_after_handshake_timeout() {
    use siplb_e2e::tls::Pki;
    use std::io::Read;
    let pki = Pki::new();
    let a = backend("fe1-a");
    let text = format!(
        "[listen]\ntls = [{{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}]\n\
         workers = 1\n\n[ops]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\nprobe = \"tcp-connect\"\n\n\
         [connections]\nhandshake_timeout = \"1s\"\n\n\
         [[pool]]\nname = \"fe\"\nservers = [{{ address = \"{}\", transport = \"tcp\" }}]\n\n\
         [[route]]\npool = \"fe\"\n",
        pki.server.cert_path.display(),
        pki.server.key_path.display(),
        a.addr(),
    );
    let siplb = Siplb::start(&text);
    let ops = Ops::of(&siplb);
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(siplb.tls()).expect("connect");
    silent
        .set_read_timeout(Some(CLOSES_WITHIN))
        .expect("a read timeout");
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    let cut = started.elapsed();
    match read {
        Ok(0) => {}
        Ok(n) => panic!("siplb sent {n} bytes to a client that never said hello"),
        // A reset is a close too; a timeout is not.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection was not closed within {CLOSES_WITHIN:?}: {e}"),
    }
    assert!(
        cut >= Duration::from_millis(900) && cut < CLOSES_WITHIN,
        "cut after about handshake_timeout (1s), not {cut:?}"
    );
    // A client that does the handshake is served.
    let client = StreamClient::connect(siplb.tls(), Dial::tls(pki.client_config(false)));
    assert_eq!(client.register(&aor("tina")).status(), Some(200));
    let m = ops.metrics();
    assert_eq!(refusals(&m, "handshake_timeout"), 1.0);
}
