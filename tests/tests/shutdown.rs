//! How the built `siplb` stops (README "Stopping"): SIGTERM turns `/readyz` to 503 at once and
//! closes the TCP and TLS listeners, while UDP keeps being forwarded and client flows already
//! open keep working for `[listen] shutdown_grace`; then siplb exits 0. With a UDP listener it
//! waits the whole grace; with only TCP and TLS listeners it exits as soon as the last client
//! flow closes. A second SIGTERM, or a SIGINT, exits at once (0 too).
//!
//! - **UDP under sipp load** (200 REGISTERs a second to two sipp servers, SIGTERM a second into
//!   the run): `/readyz` is 503 with the reason, `/status` says `shutting_down`, the gauge is 1,
//!   not one of sipp's registrations fails (those sent during the grace included), and siplb
//!   exits 0 no sooner than the grace and within a generous bound after it.
//! - **TCP, only stream listeners**: a flow opened before SIGTERM keeps registering, a new
//!   connection is refused, and siplb exits 0 once that flow closes, long before the grace.
//! - **TLS, only a TLS listener**: the same over TLS (a new TLS connection is refused).
//! - **TCP with a UDP listener too**: the open flow works during the grace, and siplb exits 0
//!   at the grace's end though the flow is still open (and closes it).
//! - **A reload changes the grace**: 30 s at start, 1 s after a reload; SIGTERM then exits 0
//!   after about 1 s.
//! - **A second signal**: SIGTERM then SIGTERM, or SIGTERM then SIGINT, with a 30 s grace: exit
//!   0 within 5 s.
//!
//! They start real peers (sipp, and the in-repo SIP peers over TCP), so they are `#[ignore]`d and
//! run with `cargo test -p siplb-e2e --test shutdown -- --ignored`. Every process started here
//! is stopped by its PID when the test ends, every sipp run is bounded by `-m` and `-timeout`,
//! and every wait has a deadline; the time bounds are correctness bounds, not speed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use siplb_e2e::ops::{wait_until, Ops};
use siplb_e2e::reload::replace_by_rename;
use siplb_e2e::sipp::{exclusive, find_sipp, Uac, Uas, WorkDir, DOMAIN};
use siplb_e2e::stream::{Dial, Listen, StreamBackend, StreamClient, ANSWER_WITHIN};
use siplb_e2e::tls::Pki;
use siplb_e2e::{Config, Route, Siplb};

/// How soon after SIGTERM `/readyz` must say 503 (a poll's deadline, not a speed).
const NOT_READY_WITHIN: Duration = Duration::from_secs(5);
/// How long after its grace siplb may take to exit, at most (a generous bound on a busy
/// machine).
const EXIT_SLACK: Duration = Duration::from_secs(10);

/// `text` (a rendered config) with `lines` added to its `[listen]` section.
fn with_listen(text: &str, lines: &str) -> String {
    assert!(text.starts_with("[listen]\n"), "{text}");
    text.replacen("[listen]\n", &format!("[listen]\n{lines}\n"), 1)
}

/// Waits until `/readyz` answers 503 and returns its body.
fn wait_not_ready(ops: &Ops) -> String {
    wait_until("/readyz to answer 503", NOT_READY_WITHIN, || {
        let r = ops.get("/readyz");
        if r.status == 503 {
            Ok(r.body)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
}

/// Waits up to `within` for siplb to exit; its status and when it exited.
fn wait_exit(siplb: &mut Siplb, within: Duration) -> (ExitStatus, Instant) {
    let status = siplb.wait_exit(within).unwrap_or_else(|| {
        panic!(
            "siplb still running {within:?} later\n{}",
            tail(&siplb.stderr())
        )
    });
    (status, Instant::now())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Asserts siplb's log has each of `lines` (the `info` steps of a graceful stop).
fn assert_logged(siplb: &Siplb, lines: &[&str]) {
    let log = siplb.stderr();
    for l in lines {
        assert!(log.contains(l), "no {l:?} in siplb's log:\n{}", tail(&log));
    }
}

#[test]
#[ignore = "real-peer suite: needs sipp; run with --ignored"]
fn sigterm_under_udp_load_keeps_forwarding_for_the_grace_then_exits_0() {
    const GRACE: Duration = Duration::from_secs(8);
    // 5 s of load at 200 a second; SIGTERM goes 1 s in, so 4 s of it fall in the grace.
    const CALLS: usize = 1_000;
    const RATE: u32 = 200;
    let _one_run = exclusive();
    let sipp = find_sipp();
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "shutdown-udp");
    let uas: Vec<Uas> = ["fe1", "fe2"]
        .iter()
        .map(|id| Uas::start(&sipp, &work.path, id))
        .collect();
    let text = Config::new()
        .ops()
        .pool("fe", uas.iter().map(Uas::server).collect())
        .route(Route::to("fe").domain(DOMAIN))
        .render();
    let mut siplb = Siplb::start(&with_listen(&text, "shutdown_grace = \"8s\""));
    let ops = Ops::of(&siplb);
    ops.wait_status("every sipp server answering siplb's probes", |s| {
        uas.iter()
            .all(|u| s.server(&u.id)["last_probe"] == "answered 200")
    });
    assert_eq!(ops.get("/readyz").status, 200);
    assert_eq!(ops.status().0["shutting_down"], false);

    let mut uac = Uac::start(
        &sipp,
        &work.path,
        "uac",
        siplb.addr(),
        CALLS,
        RATE,
        Duration::from_secs(30),
    );
    // Pacing the signal into the run, not waiting for a result.
    std::thread::sleep(Duration::from_secs(1));
    siplb.signal("TERM");
    let signalled = Instant::now();
    let why = wait_not_ready(&ops);
    assert!(why.contains("shutting down"), "/readyz says why: {why}");
    let status = ops.status();
    assert_eq!(status.0["shutting_down"], true, "{}", status.0);
    assert_eq!(status.0["ready"], false);
    let gauge = ops.metrics().value("siplb_shutting_down", &[]);
    assert_eq!(gauge, Some(1.0), "siplb_shutting_down during the grace");
    assert!(
        uac.is_running(),
        "sipp's run must go on into the grace for this test to mean anything"
    );

    let result = uac.wait(Duration::from_secs(45));
    assert!(
        signalled.elapsed() < GRACE,
        "sipp's run ended {:?} after SIGTERM, after the grace: the test needs it inside",
        signalled.elapsed()
    );
    uac.assert_no_loss(&result);
    assert!(siplb.is_alive(), "siplb exited before its grace ended");

    let (status, exited) = wait_exit(&mut siplb, GRACE + EXIT_SLACK);
    let took = exited - signalled;
    assert!(status.success(), "siplb exits 0: {status}");
    assert!(
        took >= GRACE - Duration::from_millis(200),
        "siplb exited {took:?} after SIGTERM, before its {GRACE:?} grace"
    );
    assert_logged(
        &siplb,
        &[
            "shutdown started",
            "listeners closed",
            "client flows left",
            "shutdown grace over",
            "exiting",
        ],
    );
}

/// A config with `listen` in `[listen]` and one pool of `server` over TCP, with the ops
/// endpoint.
fn stream_config(listen: &str, server: SocketAddr) -> String {
    format!(
        "[listen]\n{listen}\nworkers = 1\n\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\nprobe = \"tcp-connect\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\n\
         [[pool]]\nname = \"fe\"\nservers = [{{ address = \"{server}\", transport = \"tcp\", id = \"fe-tcp\" }}]\n\n\
         [[route]]\ndomain = \"{DOMAIN}\"\npool = \"fe\"\n"
    )
}

/// A SIP server over TCP (`fe-tcp`) and siplb in front of it, `listen` in its `[listen]`. A
/// test binds the server even when it asks it nothing, so that it lives as long as siplb.
struct Rig {
    server: StreamBackend,
    siplb: Siplb,
    ops: Ops,
}

impl Rig {
    fn start(listen: &str) -> Rig {
        let server = StreamBackend::start("fe-tcp", Listen::Tcp);
        let siplb = Siplb::start(&stream_config(listen, server.addr()));
        let ops = Ops::of(&siplb);
        Rig { server, siplb, ops }
    }
}

/// Registers `aor` on `client`'s flow and asserts the 200.
fn register(client: &StreamClient, aor: &str) {
    let answer = client.transact(&client.register_request(aor));
    assert_eq!(answer.status(), Some(200), "{aor}: {answer:?}");
}

/// Waits until a new TCP connection to `addr` is refused.
fn wait_refused(addr: SocketAddr) {
    wait_until(
        "a new TCP connection to be refused",
        NOT_READY_WITHIN,
        || match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) => Ok(e),
            Ok(_) => Err("accepted".into()),
        },
    );
}

#[test]
#[ignore = "real-peer suite: run with --ignored"]
fn with_only_tcp_listeners_an_open_flow_works_until_it_closes_then_siplb_exits_0() {
    let Rig {
        server,
        mut siplb,
        ops,
    } = Rig::start("tcp = [\"127.0.0.1:0\"]\nshutdown_grace = \"30s\"");
    let client = StreamClient::connect(siplb.tcp(), Dial::Tcp);
    register(&client, &format!("alice@{DOMAIN}"));

    siplb.signal("TERM");
    let why = wait_not_ready(&ops);
    assert!(why.contains("shutting down"), "{why}");
    wait_refused(siplb.tcp());
    assert!(
        StreamClient::try_connect(siplb.tcp(), None, Dial::Tcp).is_err(),
        "a SIP client cannot connect either"
    );
    for i in 0..5 {
        register(&client, &format!("alice{i}@{DOMAIN}"));
    }
    // The server got the flow's REGISTERs of the grace (this waits for the last, or panics).
    server.register_of(&format!("alice4@{DOMAIN}"), ANSWER_WITHIN);
    assert!(siplb.is_alive(), "the open flow keeps siplb running");
    assert_eq!(ops.status().0["shutting_down"], true);

    client.shutdown().expect("close the flow");
    drop(client);
    let closed = Instant::now();
    let (status, exited) = wait_exit(&mut siplb, Duration::from_secs(5));
    assert!(status.success(), "siplb exits 0: {status}");
    assert!(exited - closed < Duration::from_secs(5));
    assert_logged(
        &siplb,
        &["shutdown started", "last client flow closed", "exiting"],
    );
}

#[test]
#[ignore = "real-peer suite: run with --ignored"]
fn with_only_a_tls_listener_an_open_flow_works_until_it_closes_then_siplb_exits_0() {
    let pki = Pki::new();
    let listen = format!(
        "tls = [{{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}]\nshutdown_grace = \"30s\"",
        pki.server.cert_path.display(),
        pki.server.key_path.display()
    );
    let Rig {
        server: _server,
        mut siplb,
        ops,
    } = Rig::start(&listen);
    let dial = || Dial::tls(pki.client_config(false));
    let client = StreamClient::connect(siplb.tls(), dial());
    register(&client, &format!("carol@{DOMAIN}"));

    siplb.signal("TERM");
    wait_not_ready(&ops);
    wait_refused(siplb.tls());
    assert!(
        StreamClient::try_connect(siplb.tls(), None, dial()).is_err(),
        "a new TLS connection is refused"
    );
    register(&client, &format!("carol1@{DOMAIN}"));
    assert!(siplb.is_alive(), "the open flow keeps siplb running");

    client.shutdown().expect("close the flow");
    drop(client);
    let (status, _) = wait_exit(&mut siplb, Duration::from_secs(5));
    assert!(status.success(), "siplb exits 0: {status}");
    assert_logged(&siplb, &["last client flow closed", "exiting"]);
}

#[test]
#[ignore = "real-peer suite: run with --ignored"]
fn with_a_udp_listener_too_siplb_exits_0_at_the_end_of_the_grace_though_a_flow_is_open() {
    const GRACE: Duration = Duration::from_secs(3);
    let Rig {
        server: _server,
        mut siplb,
        ops,
    } = Rig::start("udp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nshutdown_grace = \"3s\"");
    let client = StreamClient::connect(siplb.tcp(), Dial::Tcp);
    register(&client, &format!("bob@{DOMAIN}"));

    siplb.signal("TERM");
    let signalled = Instant::now();
    wait_not_ready(&ops);
    wait_refused(siplb.tcp());
    register(&client, &format!("bob1@{DOMAIN}"));

    let (status, exited) = wait_exit(&mut siplb, GRACE + EXIT_SLACK);
    let took = exited - signalled;
    assert!(status.success(), "siplb exits 0: {status}");
    assert!(
        took >= GRACE - Duration::from_millis(200),
        "siplb exited {took:?} after SIGTERM, before its {GRACE:?} grace"
    );
    assert!(
        client.wait_closed(ANSWER_WITHIN).is_some(),
        "the flow closed when siplb exited"
    );
    assert_logged(&siplb, &["shutdown grace over", "exiting"]);
}

#[test]
#[ignore = "real-peer suite: run with --ignored"]
fn a_second_sigterm_or_a_sigint_during_the_grace_exits_0_at_once() {
    for second in ["TERM", "INT"] {
        let Rig {
            server: _server,
            mut siplb,
            ops,
        } = Rig::start(
            "udp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nshutdown_grace = \"30s\"",
        );
        siplb.signal("TERM");
        wait_not_ready(&ops);
        assert!(siplb.is_alive(), "the 30 s grace has begun");
        siplb.signal(second);
        let (status, _) = wait_exit(&mut siplb, Duration::from_secs(5));
        assert!(
            status.success(),
            "SIG{second} during the grace: exits 0: {status}"
        );
        assert_logged(&siplb, &["second signal", "exiting"]);
    }
}

#[test]
#[ignore = "real-peer suite: run with --ignored"]
fn sigint_without_sigterm_exits_0_at_once() {
    let Rig {
        server: _server,
        mut siplb,
        ..
    } = Rig::start("udp = [\"127.0.0.1:0\"]\nshutdown_grace = \"30s\"");
    siplb.signal("INT");
    let (status, _) = wait_exit(&mut siplb, Duration::from_secs(5));
    assert!(status.success(), "exits 0: {status}");
    assert_logged(&siplb, &["stopping at once", "exiting"]);
}

#[test]
#[ignore = "real-peer suite: run with --ignored"]
fn a_reload_changes_the_grace_of_the_next_sigterm() {
    const GRACE: Duration = Duration::from_secs(1);
    let listen = |grace: &str| format!("udp = [\"127.0.0.1:0\"]\nshutdown_grace = \"{grace}\"");
    let Rig {
        server,
        mut siplb,
        ops,
    } = Rig::start(&listen("30s"));
    replace_by_rename(
        siplb.config().path(),
        &stream_config(&listen("1s"), server.addr()),
    );
    ops.wait_config_version(2);

    siplb.signal("TERM");
    let signalled = Instant::now();
    let (status, exited) = wait_exit(&mut siplb, GRACE + EXIT_SLACK);
    let took = exited - signalled;
    assert!(status.success(), "siplb exits 0: {status}");
    assert!(
        took >= GRACE - Duration::from_millis(200),
        "siplb exited {took:?} after SIGTERM, before the reloaded {GRACE:?} grace"
    );
    assert_logged(&siplb, &["grace=1s", "shutdown grace over"]);
}
