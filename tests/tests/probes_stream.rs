//! Probes over TCP and TLS: the built siplb in front of SIP servers that speak TCP and TLS
//! (the harness's stream backends, the TLS ones with a fresh test PKI and demanding siplb's
//! client certificate, as Lync servers do of each other).
//!
//! What the servers received shows how they were probed: SIP OPTIONS over their own
//! transport, one connection per probe, siplb's client certificate presented and the
//! configured name asked for (SNI). A server that stops (its port closed) is down in `/status`
//! within `interval + fall × timeout`, and its users — asked of siplb's live routing
//! (`GET /route`) — move to the others while nobody else moves; started again on the same
//! port, it comes back and its users go home. A TLS server whose certificate siplb cannot
//! verify, or that refuses siplb's client certificate, is down with a `tls:` reason in
//! `/status` and in the log.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use siplb_e2e::health::{events, wait_server, Event, JSON_LOGS};
use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::stream::{Listen, StreamBackend};
use siplb_e2e::tls::Pki;
use siplb_e2e::Siplb;

/// Probe settings of every test.
const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(200);
const FALL: u32 = 2;
/// Scheduling slack on top of `interval + fall × timeout` (a debug build on a shared machine).
const MARGIN: Duration = Duration::from_millis(700);
const USERS: usize = 60;

/// One test at a time: the detection bound is about siplb, not about the other test.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start of every config here: a UDP listener, the ops endpoint and OPTIONS probes every
/// [`INTERVAL`] that take a server down after [`FALL`] failures.
fn config_head() -> String {
    format!(
        "[listen]\nudp = [\"127.0.0.1:0\"]\n[ops]\nlisten = \"127.0.0.1:0\"\n\
         [health]\nprobe = \"options\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\n\
         rise = 2\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    )
}

/// A pool's `tls` table: the test CA, `server_name`, and the PKI's client certificate.
fn pool_tls(pki: &Pki, server_name: &str) -> String {
    format!(
        "tls = {{ ca = \"{}\", server_name = \"{server_name}\", cert = \"{}\", key = \"{}\" }}",
        pki.ca_path.display(),
        pki.client.cert_path.display(),
        pki.client.key_path.display()
    )
}

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("user{i}@contoso.com")).collect()
}

/// Where `GET /route` sends each user now: user → server id (`None`: no server up).
fn placement(ops: &Ops, users: &[String]) -> BTreeMap<String, Option<String>> {
    users
        .iter()
        .map(|u| {
            let r = ops.route("REGISTER", &format!("sip:{u}"));
            assert_eq!(r.status, 200, "GET /route for {u}: {}", r.body);
            let server = r.json()["server"]["id"].as_str().map(str::to_string);
            (u.clone(), server)
        })
        .collect()
}

/// Asserts `backend` was probed with OPTIONS over its own transport (`TCP` or `TLS`), framed
/// by Content-Length, one connection per probe.
fn assert_probed_over_its_transport(backend: &StreamBackend) {
    let probes = backend.probes();
    assert!(!probes.is_empty(), "{} got no probe", backend.id());
    let transport = backend.transport();
    for p in &probes {
        let m = p.msg();
        let via = m.vias()[0].clone();
        assert!(
            via.starts_with(&format!("SIP/2.0/{transport} ")),
            "{}: a probe's Via should name {transport}: {via}",
            backend.id()
        );
        let ruri = m.ruri().unwrap_or_default().to_ascii_lowercase();
        let param = format!(";transport={}", transport.to_ascii_lowercase());
        assert!(ruri.ends_with(&param), "{}: {ruri}", backend.id());
        assert_eq!(m.header("content-length"), Some("0"), "{}", backend.id());
    }
    // Every closed connection carried exactly one probe (and nothing else).
    for c in backend.connections().iter().filter(|c| c.closed.is_some()) {
        let on = backend.received_on(c.id);
        assert_eq!(
            on.len(),
            1,
            "{}: connection {} carried {on:?}",
            backend.id(),
            c.id
        );
    }
}

/// Stops `victim`, asserts it is down within the bound, refused, that all its users and only
/// they moved, then starts it again and asserts everyone is home.
fn stop_and_restart(
    ops: &Ops,
    victim: &mut StreamBackend,
    before: &BTreeMap<String, Option<String>>,
) {
    let id = victim.id().to_string();
    let users = users();
    victim.kill();
    let (status, took) = wait_server(ops, &id, "down");
    let bound = INTERVAL + TIMEOUT * FALL + MARGIN;
    assert!(
        took <= bound,
        "{id} down after {took:?}, more than interval + fall x timeout (+ margin) = {bound:?}"
    );
    assert_eq!(status["reason"], "connection refused", "{status}");

    let during = placement(ops, &users);
    let mut moved = 0;
    for u in &users {
        if before[u].as_deref() == Some(id.as_str()) {
            moved += 1;
            let now = during[u].as_deref();
            assert!(
                now.is_some() && now != Some(id.as_str()),
                "{u} should have left {id}, is on {now:?}"
            );
        } else {
            assert_eq!(before[u], during[u], "{u} is not {id}'s and must not move");
        }
    }
    assert!(moved > 0, "{id} had no users to move: {before:?}");

    victim.restart();
    wait_server(ops, &id, "up");
    assert_eq!(
        &placement(ops, &users),
        before,
        "everyone is home once {id} is back"
    );
}

#[test]
fn a_stopped_tcp_or_tls_server_is_down_within_the_bound_its_users_move_and_come_back() {
    let _serial = serial();
    let pki = Pki::new();
    let fe1 = pki.server_leaf("fe1", &["fe1.contoso.com"]);
    let pool = pki.server_leaf("fe-dc1", &["fe-dc1.contoso.com"]);

    let mut tcp1 = StreamBackend::start("tcp1", Listen::Tcp);
    let tcp2 = StreamBackend::start("tcp2", Listen::Tcp);
    // tls1 is verified under its own name, tls2 under the pool's; both demand a client
    // certificate from the CA.
    let mut tls1 = StreamBackend::start("tls1", Listen::Tls(pki.server_config_for(&fe1, true)));
    let tls2 = StreamBackend::start("tls2", Listen::Tls(pki.server_config_for(&pool, true)));

    let config = format!(
        r#"{head}
[[pool]]
name = "fe-dc1"
{fe_tls}
servers = [
  {{ id = "tcp1", address = "{}", transport = "tcp" }},
  {{ id = "tcp2", address = "{}", transport = "tcp" }},
  {{ id = "tls1", address = "{}", transport = "tls", server_name = "fe1.contoso.com" }},
  {{ id = "tls2", address = "{}", transport = "tls" }},
]
[[route]]
pool = "fe-dc1"
"#,
        tcp1.addr(),
        tcp2.addr(),
        tls1.addr(),
        tls2.addr(),
        head = config_head(),
        fe_tls = pool_tls(&pki, "fe-dc1.contoso.com"),
    );
    let siplb = Siplb::start(&config);
    let ops = Ops::of(&siplb);
    // Servers start up: wait until a good probe of each has shown.
    for id in ["tcp1", "tcp2", "tls1", "tls2"] {
        ops.wait_status(&format!("{id} answered a probe"), |s| {
            s.server(id)["last_probe"] == "answered 200" && s.server_state(id) == "up"
        });
    }
    for backend in [&tcp1, &tcp2, &tls1, &tls2] {
        assert_probed_over_its_transport(backend);
    }
    // Each TLS server was asked for its configured name and shown siplb's certificate.
    for (backend, name) in [(&tls1, "fe1.contoso.com"), (&tls2, "fe-dc1.contoso.com")] {
        for c in backend.connections() {
            assert_eq!(c.sni.as_deref(), Some(name), "{}", backend.id());
            assert_eq!(
                c.client_certs.first().map(Vec::as_slice),
                Some(pki.client.cert.as_ref()),
                "{}: siplb's client certificate",
                backend.id()
            );
        }
    }

    let before = placement(&ops, &users());
    stop_and_restart(&ops, &mut tcp1, &before);
    stop_and_restart(&ops, &mut tls1, &before);
}

#[test]
fn tls_servers_siplb_cannot_verify_or_that_refuse_its_certificate_are_down_for_a_tls_reason() {
    let _serial = serial();
    let pki = Pki::new();
    let stranger = Pki::new();
    let edge_leaf = pki.server_leaf("edge", &["edge.contoso.com"]);
    let other_leaf = pki.server_leaf("other", &["other.contoso.com"]);
    let med_leaf = pki.server_leaf("med", &["med.contoso.com"]);
    let foreign_leaf = stranger.server_leaf("edge", &["edge.contoso.com"]);

    let good = StreamBackend::start("good", Listen::Tls(pki.server_config_for(&edge_leaf, true)));
    let foreign = StreamBackend::start(
        "foreign",
        Listen::Tls(stranger.server_config_for(&foreign_leaf, false)),
    );
    let misnamed = StreamBackend::start(
        "misnamed",
        Listen::Tls(pki.server_config_for(&other_leaf, false)),
    );
    // Pool med presents no client certificate; this server demands one.
    let demanding = StreamBackend::start(
        "demanding",
        Listen::Tls(pki.server_config_for(&med_leaf, true)),
    );

    let config = format!(
        r#"{head}
[[pool]]
name = "edge"
role = "edge"
health = {{ probe = "tls-connect" }}
{edge_tls}
servers = [
  {{ id = "good", address = "{}", transport = "tls" }},
  {{ id = "foreign", address = "{}", transport = "tls" }},
  {{ id = "misnamed", address = "{}", transport = "tls" }},
]
[[pool]]
name = "med"
role = "mediation"
tls = {{ ca = "{ca}", server_name = "med.contoso.com" }}
servers = [{{ id = "demanding", address = "{}", transport = "tls" }}]
[[route]]
pool = "edge"
{JSON_LOGS}"#,
        good.addr(),
        foreign.addr(),
        misnamed.addr(),
        demanding.addr(),
        head = config_head(),
        edge_tls = pool_tls(&pki, "edge.contoso.com"),
        ca = pki.ca_path.display(),
    );
    let siplb = Siplb::start(&config);
    let ops = Ops::of(&siplb);

    let expect = [
        (
            "foreign",
            "tls: server certificate not issued by the configured CA",
        ),
        (
            "misnamed",
            "tls: server certificate does not name the server",
        ),
        (
            "demanding",
            "tls: server refused siplb's client certificate",
        ),
    ];
    for (id, reason) in expect {
        let (status, _) = wait_server(&ops, id, "down");
        assert_eq!(status["reason"], reason, "{id}: {status}");
        assert_eq!(status["last_probe"], reason, "{id}: {status}");
    }
    let status = ops.wait_status("good probed", |s| {
        s.server("good")["last_probe"] == "connected"
    });
    assert_eq!(status.server_state("good"), "up", "{}", status.0);
    // tls-connect is a handshake and no more: connections, siplb's certificate, no SIP.
    let conns = good.connections();
    assert!(!conns.is_empty());
    assert!(conns
        .iter()
        .all(|c| c.client_certs.first().map(Vec::as_slice) == Some(pki.client.cert.as_ref())));
    assert!(good.received().is_empty(), "{:?}", good.received());

    // One log line per transition, with the same reason.
    let logged = wait_until("3 transitions logged", SHOWS_WITHIN, || {
        let got = events(&siplb.stderr());
        if got.len() >= expect.len() {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    });
    for (id, reason) in expect {
        let transition = Event::Server {
            server: id.into(),
            from: "up".into(),
            to: "down".into(),
            reason: reason.into(),
        };
        assert!(logged.contains(&transition), "{id}: {logged:?}");
    }
    drop((foreign, misnamed, demanding));
}
