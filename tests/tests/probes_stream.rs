//! Probes over TCP and TLS: the built siplb in front of SIP servers that speak TCP and TLS
//! (tokio answerers in this test, the TLS ones behind rustls with rcgen certificates and
//! demanding siplb's client certificate, as Lync servers do of each other).
//!
//! A server that stops (its port closed) is down in `/status` within
//! `interval + fall × timeout`, and its users — asked of siplb's live routing (`GET /route`) —
//! move to the others while nobody else moves; started again on the same port, it comes back
//! and its users go home. A TLS server whose certificate siplb cannot verify, or that refuses
//! siplb's client certificate, is down with a `tls:` reason in `/status` and in the log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use siplb_e2e::health::{events, wait_server, Event, JSON_LOGS};
use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::Siplb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `names`, and its key.
    fn issue(&self, names: &[&str]) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (cert, key)
    }

    /// A rustls acceptor serving a certificate for `names` and demanding a client certificate
    /// issued by `clients`.
    fn acceptor(&self, names: &[&str], clients: &Ca) -> TlsAcceptor {
        let (cert, key) = self.issue(names);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(clients.cert.der().clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// The value of header `name` in a header block (full names only: the probes write them so).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Answers every request on `stream` with `200 OK` (RFC 3261 §8.2.6: Via, From, To with a tag,
/// Call-ID and CSeq copied), framing requests by Content-Length.
async fn serve_sip<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body: usize = header(&head, "Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + body {
                break;
            }
            buf.drain(..end + 4 + body);
            let mut answer = String::from("SIP/2.0 200 OK\r\n");
            for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
                if let Some(v) = header(&head, name) {
                    let tag = if name == "To" && !v.contains(";tag=") {
                        ";tag=probe-answer"
                    } else {
                        ""
                    };
                    answer.push_str(&format!("{name}: {v}{tag}\r\n"));
                }
            }
            answer.push_str("Content-Length: 0\r\n\r\n");
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A SIP server on a TCP port, over plain TCP or behind a TLS acceptor, that can be stopped
/// (its port closed, its connections dropped) and started again on the same port.
struct Answerer {
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Answerer {
    fn start(rt: &tokio::runtime::Runtime, tls: Option<TlsAcceptor>) -> Answerer {
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind an answerer");
        let addr = listener.local_addr().unwrap();
        let mut a = Answerer {
            addr,
            tls,
            running: None,
        };
        a.serve(rt, listener);
        a
    }

    fn serve(&mut self, rt: &tokio::runtime::Runtime, listener: TcpListener) {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let tls = self.tls.clone();
        let task = rt.spawn(async move {
            // Dropped with the task: every connection closes with the listener.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { return };
                        match tls.clone() {
                            None => connections.spawn(serve_sip(tcp)),
                            Some(acceptor) => connections.spawn(async move {
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    serve_sip(stream).await;
                                }
                            }),
                        };
                    }
                }
            }
        });
        self.running = Some((stop, task));
    }

    /// Closes the port and every connection; returns when they are closed.
    fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = rt.block_on(task);
        }
    }

    /// Listens on the same port again.
    fn restart(&mut self, rt: &tokio::runtime::Runtime) {
        let listener = rt
            .block_on(TcpListener::bind(self.addr))
            .expect("bind the answerer's port again");
        self.serve(rt, listener);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `pem` to `dir/name`; the path as the config writes it.
fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

fn health_section(probe: &str) -> String {
    format!(
        "[health]\nprobe = \"{probe}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\nrise = 2\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    )
}

/// Where `/route` sends each user now: user → server id (`None`: 503, no server up).
fn placement(ops: &Ops, users: &[String]) -> BTreeMap<String, Option<String>> {
    users
        .iter()
        .map(|u| {
            let r = ops.route("REGISTER", &format!("sip:{u}"));
            assert_eq!(r.status, 200, "GET /route for {u}: {}", r.body);
            let v = r.json();
            let server = v["server"]["id"].as_str().map(str::to_string);
            (u.clone(), server)
        })
        .collect()
}

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("user{i}@contoso.com")).collect()
}

/// Stops `victim`, asserts it is down within the bound with `reason`, that only its users
/// moved (and all of them), then starts it again and asserts everyone is home.
fn stop_and_restart(
    rt: &tokio::runtime::Runtime,
    ops: &Ops,
    victim_id: &str,
    victim: &mut Answerer,
    before: &BTreeMap<String, Option<String>>,
) {
    let users = users();
    victim.stop(rt);
    let (status, took) = wait_server(ops, victim_id, "down");
    let bound = INTERVAL + TIMEOUT * FALL + MARGIN;
    assert!(
        took <= bound,
        "{victim_id} down after {took:?}, more than interval + fall x timeout (+ margin) = {bound:?}"
    );
    assert_eq!(status["reason"], "connection refused", "{status}");

    let during = placement(ops, &users);
    let mut moved = 0;
    for u in &users {
        if before[u].as_deref() == Some(victim_id) {
            moved += 1;
            let now = during[u].as_deref();
            assert!(
                now.is_some() && now != Some(victim_id),
                "{u} should have left {victim_id}, is on {now:?}"
            );
        } else {
            assert_eq!(
                before[u], during[u],
                "{u} is not {victim_id}'s and must not move"
            );
        }
    }
    assert!(moved > 0, "{victim_id} had no users to move: {before:?}");

    victim.restart(rt);
    wait_server(ops, victim_id, "up");
    assert_eq!(
        &placement(ops, &users),
        before,
        "everyone is home once {victim_id} is back"
    );
}

#[test]
fn a_stopped_tcp_or_tls_server_is_down_within_the_bound_its_users_move_and_come_back() {
    let _serial = serial();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let servers_ca = Ca::new();
    let clients_ca = Ca::new();
    let (lb, lb_key) = clients_ca.issue(&["lb.contoso.com"]);
    let ca = write(dir.path(), "ca.pem", &servers_ca.cert.pem());
    let cert = write(dir.path(), "lb.crt", &lb.pem());
    let key = write(dir.path(), "lb.key", &lb_key.serialize_pem());

    let mut tcp1 = Answerer::start(&rt, None);
    let tcp2 = Answerer::start(&rt, None);
    // tls1 is verified under its own name, tls2 under the pool's.
    let mut tls1 = Answerer::start(
        &rt,
        Some(servers_ca.acceptor(&["fe1.contoso.com"], &clients_ca)),
    );
    let tls2 = Answerer::start(
        &rt,
        Some(servers_ca.acceptor(&["fe-dc1.contoso.com"], &clients_ca)),
    );

    let config = format!(
        r#"[listen]
udp = ["127.0.0.1:0"]
[ops]
listen = "127.0.0.1:0"
{health}
[[pool]]
name = "fe-dc1"
tls = {{ ca = "{ca}", server_name = "fe-dc1.contoso.com", cert = "{cert}", key = "{key}" }}
servers = [
  {{ id = "tcp1", address = "{}", transport = "tcp" }},
  {{ id = "tcp2", address = "{}", transport = "tcp" }},
  {{ id = "tls1", address = "{}", transport = "tls", server_name = "fe1.contoso.com" }},
  {{ id = "tls2", address = "{}", transport = "tls" }},
]
[[route]]
pool = "fe-dc1"
"#,
        tcp1.addr,
        tcp2.addr,
        tls1.addr,
        tls2.addr,
        health = health_section("options"),
    );
    let siplb = Siplb::start(&config);
    let ops = Ops::of(&siplb);
    // Servers start up; a probe that failed would have taken them down by now: wait for a good
    // probe of each to show.
    for id in ["tcp1", "tcp2", "tls1", "tls2"] {
        ops.wait_status(&format!("{id} answered a probe"), |s| {
            s.server(id)["last_probe"] == "answered 200" && s.server_state(id) == "up"
        });
    }
    let before = placement(&ops, &users());

    stop_and_restart(&rt, &ops, "tcp1", &mut tcp1, &before);
    stop_and_restart(&rt, &ops, "tls1", &mut tls1, &before);
    drop((tcp2, tls2));
}

#[test]
fn tls_servers_siplb_cannot_verify_or_that_refuse_its_certificate_are_down_for_a_tls_reason() {
    let _serial = serial();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let servers_ca = Ca::new();
    let clients_ca = Ca::new();
    let strangers_ca = Ca::new();
    let (lb, lb_key) = clients_ca.issue(&["lb.contoso.com"]);
    let ca = write(dir.path(), "ca.pem", &servers_ca.cert.pem());
    let cert = write(dir.path(), "lb.crt", &lb.pem());
    let key = write(dir.path(), "lb.key", &lb_key.serialize_pem());

    let edge = |ca: &Ca, name: &str| Answerer::start(&rt, Some(ca.acceptor(&[name], &clients_ca)));
    let good = edge(&servers_ca, "edge.contoso.com");
    let foreign = edge(&strangers_ca, "edge.contoso.com");
    let misnamed = edge(&servers_ca, "other.contoso.com");
    // A pool that presents no client certificate to a server that demands one.
    let demanding = edge(&servers_ca, "med.contoso.com");

    let config = format!(
        r#"[listen]
udp = ["127.0.0.1:0"]
[ops]
listen = "127.0.0.1:0"
{health}
[[pool]]
name = "edge"
role = "edge"
health = {{ probe = "tls-connect" }}
tls = {{ ca = "{ca}", server_name = "edge.contoso.com", cert = "{cert}", key = "{key}" }}
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
        good.addr,
        foreign.addr,
        misnamed.addr,
        demanding.addr,
        health = health_section("options"),
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

    // One log line per transition, with the same reason.
    let logged = wait_logged(&siplb, expect.len());
    for (id, reason) in expect {
        assert!(
            logged.contains(&Event::Server {
                server: id.into(),
                from: "up".into(),
                to: "down".into(),
                reason: reason.into(),
            }),
            "{id}: {logged:?}"
        );
    }
    drop((good, foreign, misnamed, demanding));
}

/// The health transitions siplb logged, once there are at least `n`.
fn wait_logged(siplb: &Siplb, n: usize) -> Vec<Event> {
    wait_until(&format!("{n} transitions logged"), SHOWS_WITHIN, || {
        let got = events(&siplb.stderr());
        if got.len() >= n {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
}
