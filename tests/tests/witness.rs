//! The fleet's witness (`siplb witness`, README "Fleet"), the real binary against real peers:
//!
//! - on loopback, a witness started with a replica's own config file (`--ops-listen` puts its
//!   ops endpoint elsewhere) answers `/cluster/view` with the cluster token only (no token or
//!   a wrong one is `401`, counted); its view of a pool follows its own probes (the pool's
//!   server stops: its view turns down); it holds no socket on the config's `[listen]`
//!   addresses (the test binds them while it runs, and reads its sockets in `/proc`: one TCP
//!   listener, its ops endpoint); it refuses `/admin/*` (`405`); its config reloads (a new
//!   token takes effect; a file without `[cluster]` is refused and the running config stays);
//!   SIGTERM ends it with exit 0;
//! - two replicas naming each other and the witness count it: each shows three observers and
//!   the witness answering `ok` with the same config; the witness itself asks no one;
//! - `siplb witness` refuses a config without `[cluster]`, and `--help` and `siplb check` name
//!   the command;
//! - (real-peer suite, `#[ignore]`d: it needs root and iproute2) two replicas and a witness in
//!   three namespaces, pools `a` and `b` paired. Without the witness, replica 1 alone cut from
//!   `a` is a 1–1 tie and nothing moves; the witness starts and breaks the tie: the verdict is
//!   up, replica 1 turns not ready naming `a`, nobody fails `a` over and users of `a` stay on
//!   `a` through replica 2. The witness loses `a` too: two of three see it down, both replicas
//!   fail `a` over to `b` (replica 2 as well, though it still reaches `a`) and users of `a`
//!   reach `b` through replica 2. Both paths return: `a` is home again, not before
//!   `failback_after`.
//!
//! Ports: the ops endpoints (each replica names the others' before they start) and the SIP
//! addresses the witness must not bind are picked free on 127.0.0.1; everything else binds
//! port 0. Every wait has a deadline; every process is stopped by its own PID.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use siplb_e2e::config::{Health, Pool};
use siplb_e2e::http::{get, get_with_token, post, Reply};
use siplb_e2e::netns::{self, ip, json_in, Lab, Proc};
use siplb_e2e::ops::{wait_until, Metrics, Ops, SHOWS_WITHIN};
use siplb_e2e::ports::{free_tcp_port, free_udp_port};
use siplb_e2e::process::{run_cli, siplb_bin, stdout_lines, wait_child_exit, ConfigFile};
use siplb_e2e::{Backend, Behaviour, Config, Route, Server, Siplb};

const TOKEN: &str = "witness-e2e-token-51d2";

/// How long a witness may take from spawn to `ready`.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// Pool `a` (home of every user) paired with `b`, probed every 200 ms.
fn pools(a: SocketAddr, b: SocketAddr) -> Config {
    let server = |id: &str, address| Server {
        id: id.into(),
        address,
        weight: 1,
        drained: false,
    };
    Config::new()
        .ops()
        .health(Health::options("200ms", "150ms", 2, 1))
        .pool_with(
            Pool::new("a", vec![server("a1", a)])
                .pair("b")
                .failback_after("1s"),
        )
        .pool_with(Pool::new("b", vec![server("b1", b)]).pair("a"))
        .route(Route::to("a"))
}

/// A replica's config: `config` with its ops endpoint at `ops`, and a `[cluster]` naming
/// `peers`, the witness and (when given) the token file.
fn replica_text(
    config: &Config,
    ops: SocketAddr,
    peers: &[SocketAddr],
    witness: SocketAddr,
    token_file: Option<&Path>,
) -> String {
    let mut out = config.render_replica(ops, peers);
    out.push_str(&format!("witness = \"http://{witness}\"\n"));
    if let Some(file) = token_file {
        out.push_str(&format!("token_file = \"{}\"\n", file.display()));
    }
    out
}

fn free_ops() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
}

/// `siplb witness --config PATH --ops-listen ADDR` as a child process, killed when dropped.
struct Witness {
    child: Child,
    ops: SocketAddr,
    stderr: PathBuf,
    _logs: ConfigFile,
}

impl Witness {
    /// Starts the witness with extra environment variables and waits for `ready`.
    fn start(config: &Path, ops: SocketAddr, env: &[(&str, &str)]) -> Witness {
        let logs = ConfigFile::write("");
        let stderr = logs.dir().join("witness.err");
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = Command::new(siplb_bin())
            .arg("witness")
            .arg("--config")
            .arg(config)
            .args(["--ops-listen", &ops.to_string()])
            .env_remove("SIPLB_CLUSTER_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("spawn siplb witness");
        let rx = stdout_lines(&mut child);
        let w = Witness {
            child,
            ops,
            stderr,
            _logs: logs,
        };
        let deadline = Instant::now() + READY_WITHIN;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "ready" => break,
                Ok(line) => lines.push(line),
                Err(e) => panic!(
                    "siplb witness printed no `ready` ({e:?}); stdout {lines:?}\nstderr:\n{}",
                    w.stderr()
                ),
            }
        }
        assert_eq!(
            lines,
            [format!("listening ops {ops}")],
            "a witness listens on its ops endpoint only"
        );
        w
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self, path: &str) -> Reply {
        get(self.ops, path)
    }

    fn status(&self) -> Value {
        let r = self.get("/status");
        assert_eq!(r.status, 200, "GET /status: {}", r.body);
        r.json()
    }

    fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        Metrics::parse(&r.body)
    }

    /// `/cluster/view` with `token`, which must answer 200.
    fn view(&self, token: &str) -> Value {
        let r = get_with_token(self.ops, "/cluster/view", Some(token));
        assert_eq!(r.status, 200, "GET /cluster/view: {}", r.body);
        r.json()
    }

    /// Waits until the witness's view says pool `pool` is `up`.
    fn wait_view(&self, token: &str, pool: &str, up: bool) -> Value {
        wait_until(
            &format!("the witness's view of {pool}: up {up}"),
            SHOWS_WITHIN,
            || {
                let v = self.view(token);
                if pool_up(&v, pool) == Some(up) {
                    Ok(v)
                } else {
                    Err(v.to_string())
                }
            },
        )
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `kill -TERM` and waits up to `within` for the exit.
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
        wait_child_exit(&mut self.child, within)
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- siplb witness stderr (last {} lines) ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// What a view says of pool `pool`: `Some(up)`, or `None` when it does not name it.
fn pool_up(view: &Value, pool: &str) -> Option<bool> {
    let pools = view["pools"].as_array()?;
    let p = pools.iter().find(|p| p["name"] == pool)?;
    p["up"].as_bool()
}

/// One TCP or UDP socket a process holds, from `/proc/PID/net/*`: local port, remote port
/// (0 when unconnected) and the kernel's state code (`0A`: a TCP listener).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sock {
    proto: &'static str,
    local_port: u16,
    remote_port: u16,
    state: String,
}

/// Every TCP and UDP socket (IPv4 and IPv6) process `pid` holds: its descriptors that are
/// sockets, matched by inode against the socket tables of its network namespace.
fn sockets_of(pid: u32) -> Vec<Sock> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the witness's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port = |addr: &str| {
        let hex = addr.rsplit(':').next().unwrap_or("0");
        u16::from_str_radix(hex, 16).unwrap_or(0)
    };
    let mut out = Vec::new();
    for (proto, table) in [
        ("tcp", "tcp"),
        ("tcp", "tcp6"),
        ("udp", "udp"),
        ("udp", "udp6"),
    ] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (cols.get(1), cols.get(2), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if inodes.contains(*inode) {
                out.push(Sock {
                    proto,
                    local_port: port(local),
                    remote_port: port(remote),
                    state: (*state).to_string(),
                });
            }
        }
    }
    out
}

#[test]
fn a_witness_serves_its_own_view_to_the_token_and_opens_no_sip_port() {
    let mut a = Backend::start("a1", Behaviour::Accept);
    let b = Backend::start("b1", Behaviour::Accept);
    // The replica whose file the witness reuses, as a third host would: its SIP addresses and
    // its ops endpoint are the replica's, none of them the witness's to bind.
    let (sip_udp, sip_tcp) = (free_udp_port(), free_tcp_port());
    let (replica_ops, peer_ops, witness_ops) = (free_ops(), free_ops(), free_ops());
    let work = ConfigFile::write("");
    let token_file = work.dir().join("cluster-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = pools(a.addr(), b.addr()).listen(&[&format!("127.0.0.1:{sip_udp}")]);
    let text = replica_text(
        &config,
        replica_ops,
        &[peer_ops],
        witness_ops,
        Some(&token_file),
    )
    .replacen(
        "workers = 1",
        &format!("workers = 1\ntcp = [\"127.0.0.1:{sip_tcp}\"]"),
        1,
    );
    let path = work.dir().join("replica.toml");
    std::fs::write(&path, &text).unwrap();
    let mut w = Witness::start(&path, witness_ops, &[]);

    assert_eq!(w.get("/healthz").status, 200);
    let ready = w.get("/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let s = w.status();
    assert_eq!(s["role"], "witness", "{s}");
    assert_eq!(s["ops"], witness_ops.to_string());
    assert_eq!(s["config"]["version"], 1);
    for p in s["pools"].as_array().unwrap() {
        for routing in ["serving", "mode", "operator_failover"] {
            assert!(p.get(routing).is_none(), "no {routing} at a witness: {p}");
        }
    }
    assert!(s.get("cluster").is_none(), "a witness has no verdicts: {s}");

    // The view: the token only; each refusal counted.
    let none = get_with_token(witness_ops, "/cluster/view", None);
    assert_eq!(none.status, 401, "{}", none.body);
    let wrong = get_with_token(witness_ops, "/cluster/view", Some("nope"));
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(w.metrics().sum("siplb_cluster_auth_failures_total", &[]) >= 2.0);
    wait_until("probes of both servers", SHOWS_WITHIN, || {
        let s = w.status();
        let probed = s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["servers"].as_array().unwrap().clone())
            .all(|s| s["last_probe"] == "answered 200");
        if probed {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let v = w.view(TOKEN);
    assert_eq!(v["replica"], witness_ops.to_string());
    assert_eq!(v["config_digest"].as_str().map(str::len), Some(16), "{v}");
    assert_eq!(
        (pool_up(&v, "a"), pool_up(&v, "b")),
        (Some(true), Some(true))
    );

    // No SIP socket: the config's [listen] addresses are free while it runs, and its only
    // listener is the ops endpoint; its UDP sockets are its probes, each connected to a server.
    UdpSocket::bind(("127.0.0.1", sip_udp)).expect("[listen] udp is free: the witness holds it");
    TcpListener::bind(("127.0.0.1", sip_tcp)).expect("[listen] tcp is free: the witness holds it");
    let sockets = sockets_of(w.pid());
    let listeners: Vec<&Sock> = sockets
        .iter()
        .filter(|s| s.proto == "tcp" && s.state == "0A")
        .collect();
    assert_eq!(
        listeners.iter().map(|s| s.local_port).collect::<Vec<_>>(),
        [witness_ops.port()],
        "{sockets:?}"
    );
    for s in &sockets {
        assert!(
            ![sip_udp, sip_tcp].contains(&s.local_port),
            "a socket on a SIP port: {s:?}"
        );
        if s.proto == "udp" {
            assert!(
                [a.addr().port(), b.addr().port()].contains(&s.remote_port),
                "a UDP socket that is not a probe's: {s:?}"
            );
        }
    }

    // No operator commands.
    for (path, token) in [
        ("/admin/pools/a/failover", None),
        ("/admin/pools/a/failover", Some(TOKEN)),
        ("/admin/servers/a1/drain", Some(TOKEN)),
        ("/admin/reload", None),
    ] {
        let r = post(witness_ops, path, token);
        assert_eq!(r.status, 405, "POST {path}: {}", r.body);
        assert!(
            r.body.contains("a witness takes no operator commands"),
            "POST {path}: {}",
            r.body
        );
    }
    let r = w.get("/route?method=REGISTER&aor=sip:alice@contoso.com");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("a witness serves"), "{}", r.body);

    // Its view follows its probes: pool a's server stops, then comes back.
    a.stop();
    let v = w.wait_view(TOKEN, "a", false);
    assert_eq!(pool_up(&v, "b"), Some(true), "{v}");
    let s = w.status();
    let pool_a = s["pools"].as_array().unwrap()[0].clone();
    assert_eq!(
        (pool_a["name"].as_str(), pool_a["state"].as_str()),
        (Some("a"), Some("down"))
    );
    assert_eq!(
        w.metrics().value("siplb_pool_up", &[("pool", "a")]),
        Some(0.0)
    );
    a.restart();
    w.wait_view(TOKEN, "a", true);
    assert!(
        !w.stderr().contains("pool failover changed"),
        "a witness never fails a pool over:\n{}",
        w.stderr()
    );

    // The file reloads as the run command's does: a new token takes effect...
    std::fs::write(&token_file, "a-new-token-0e7").unwrap();
    std::fs::write(&path, format!("{text}# the token was renewed\n")).unwrap();
    wait_until("config version 2", SHOWS_WITHIN, || {
        let s = w.status();
        if s["config"]["version"] == 2 {
            Ok(())
        } else {
            Err(s["config"].to_string())
        }
    });
    assert_eq!(
        get_with_token(witness_ops, "/cluster/view", Some(TOKEN)).status,
        401
    );
    w.view("a-new-token-0e7");
    // ...and a file without [cluster] is refused: the running config stays.
    let without = text.split("\n[cluster]").next().unwrap().to_string();
    std::fs::write(&path, without).unwrap();
    let error = wait_until("a refused reload", SHOWS_WITHIN, || {
        let s = w.status();
        s["config"]["last_error"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| s["config"].to_string())
    });
    assert!(error.contains("a witness needs [cluster]"), "{error}");
    w.view("a-new-token-0e7");

    // SIGTERM: nothing in flight, so it exits 0 at once.
    let status = w.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", w.stderr());
}

/// The `cluster` part of a replica's `/status`, once every peer and the witness answer `ok`.
fn wait_all_ok(ops: &Ops) -> Value {
    wait_until(
        &format!("every observer of {} ok", ops.addr()),
        SHOWS_WITHIN,
        || {
            let c = ops.status().0["cluster"].clone();
            let peers = c["peers"].as_array().cloned().unwrap_or_default();
            if peers.len() == 2 && peers.iter().all(|p| p["result"] == "ok") {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
}

#[test]
fn two_replicas_count_the_witness_as_their_third_observer() {
    let a = Backend::start("a1", Behaviour::Accept);
    let b = Backend::start("b1", Behaviour::Accept);
    let config = pools(a.addr(), b.addr());
    let (r1_ops, r2_ops, w_ops) = (free_ops(), free_ops(), free_ops());
    let env = [("SIPLB_CLUSTER_TOKEN", TOKEN)];
    let r1 = Siplb::start_with_env(&replica_text(&config, r1_ops, &[r2_ops], w_ops, None), &env);
    let r2 = Siplb::start_with_env(&replica_text(&config, r2_ops, &[r1_ops], w_ops, None), &env);
    // The witness runs replica 1's own file.
    let w = Witness::start(r1.config().path(), w_ops, &env);
    let witness_url = format!("http://{w_ops}");

    for siplb in [&r1, &r2] {
        let ops = Ops::of(siplb);
        let c = wait_all_ok(&ops);
        assert_eq!(
            (c["observers"].as_u64(), c["quorum"].as_u64()),
            (Some(3), Some(2)),
            "{c}"
        );
        let witness: Vec<&Value> = c["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["witness"] == true)
            .collect();
        assert_eq!(witness.len(), 1, "{c}");
        assert_eq!(witness[0]["url"], witness_url.as_str());
        assert_eq!(witness[0]["config_matches"], true, "{c}");
        let a_verdict = wait_until("a counted by all three", SHOWS_WITHIN, || {
            let c = ops.status().0["cluster"].clone();
            let a = c["pools"][0].clone();
            if a["name"] == "a" && a["answered"] == 3 {
                Ok(a)
            } else {
                Err(c.to_string())
            }
        });
        assert_eq!(a_verdict["verdict"], "up", "{a_verdict}");
        let m = ops.metrics();
        assert!(
            m.sum(
                "siplb_cluster_exchanges_total",
                &[("peer", &witness_url), ("result", "ok")]
            ) >= 1.0,
            "exchanges with the witness counted"
        );
    }
    let replica_view = get_with_token(r1_ops, "/cluster/view", Some(TOKEN)).json();
    let witness_view = w.view(TOKEN);
    assert_eq!(
        witness_view["config_digest"], replica_view["config_digest"],
        "the same file, the same digest"
    );
    assert_eq!(witness_view["replica"], w_ops.to_string());
    assert!(replica_view.get("operator").is_some(), "{replica_view}");
    assert!(
        witness_view.get("operator").is_none(),
        "a witness holds no operator state for replicas to adopt: {witness_view}"
    );
    // The witness asks no one.
    let m = w.metrics();
    assert_eq!(
        m.sum("siplb_cluster_exchanges_total", &[]),
        0.0,
        "{}",
        m.text
    );
}

#[test]
fn a_config_without_cluster_is_refused_and_the_command_line_names_the_witness() {
    let a = Backend::start("a1", Behaviour::Accept);
    let b = Backend::start("b1", Behaviour::Accept);
    let alone = ConfigFile::write(&pools(a.addr(), b.addr()).render());
    let path = alone.path().to_string_lossy().into_owned();
    let out = run_cli(&["witness", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a witness needs [cluster]"), "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));

    let help = run_cli(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("witness ")),
        "{help}"
    );

    let work = ConfigFile::write("");
    let token = work.dir().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let w_ops = free_ops();
    let text = replica_text(
        &pools(a.addr(), b.addr()),
        free_ops(),
        &[free_ops()],
        w_ops,
        Some(&token),
    );
    let fleet = ConfigFile::write(&text);
    let path = fleet.path().to_string_lossy().into_owned();
    let out = run_cli(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = format!("witness   at http://{w_ops}: run `siplb witness --config {path}` there");
    assert!(stdout.contains(&line), "{stdout}");
}

/// How long a phase of the namespace test may take to show.
const PHASE_WITHIN: Duration = Duration::from_secs(15);

/// The addresses of the namespace test: servers on the hub's loopback, each host on a link
/// of its own to the hub (`198.18.1X.2`, the hub's end `198.18.1X.1`).
const A1: &str = "198.18.20.3:5071";
const B1: &str = "198.18.20.4:5081";
const A1_HOST: &str = "198.18.20.3/32";

/// One host of the namespace test: its namespace and its address.
struct Host {
    ns: String,
    ip: String,
}

impl Host {
    fn ops(&self) -> String {
        format!("{}:9060", self.ip)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops())
    }

    /// Its `/status`, asked inside its namespace.
    fn status(&self) -> Result<Value, String> {
        json_in(&self.ns, &self.url("/status"))
    }

    /// Its `/readyz`: the status code and reason.
    fn readyz(&self) -> Result<(u16, String), String> {
        netns::get_in(&self.ns, &self.url("/readyz"))
    }

    /// Cuts (or restores) this host's path to pool `a`'s server.
    fn cut_a(&self, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        ip(&["-n", &self.ns, "route", verb, "blackhole", A1_HOST]);
    }
}

/// Pool `pool` in a replica's `/status`: its own state, the pool serving its users, and the
/// fleet's verdict with its count.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: String,
    serving: String,
    verdict: String,
    answered: u64,
    down: u64,
}

fn seen(status: &Value, pool: &str) -> Seen {
    let find = |list: &Value| {
        list.as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == pool))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let p = find(&status["pools"]);
    let v = find(&status["cluster"]["pools"]);
    Seen {
        state: p["state"].as_str().unwrap_or("").into(),
        serving: p["serving"].as_str().unwrap_or("").into(),
        verdict: v["verdict"].as_str().unwrap_or("").into(),
        answered: v["answered"].as_u64().unwrap_or(0),
        down: v["down"].as_u64().unwrap_or(0),
    }
}

/// Waits until `host`'s `/status` shows pool `a` as `pred` wants; returns it.
fn wait_a(host: &Host, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
    wait_until(&format!("{}: {what}", host.ns), PHASE_WITHIN, || {
        let s = seen(&host.status()?, "a");
        if pred(&s) {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
}

/// Registers 20 users through `to` from `bind` in the hub (a `sip-peer load` of a second, 40
/// REGISTERs, nothing retransmitted), checks every one was answered, and returns how many
/// each server received: the `request REGISTER` lines it printed meanwhile, once they add up.
fn register_through(
    lab: &Lab,
    hub: &str,
    peer: &Path,
    to: &str,
    bind: &str,
    work: &Path,
    servers: &[(&str, &Proc)],
) -> Vec<(String, usize)> {
    let before: Vec<usize> = servers.iter().map(|(_, p)| p.lines().len()).collect();
    let err = work.join("load.err");
    let mut load = lab.spawn(hub, peer, &["load", to, bind, "20", "40", "1"], &err);
    let done = load.wait_line(PHASE_WITHIN, |l| l.starts_with("done "));
    let counts: Vec<usize> = done
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let [sent, answered] = counts[..] else {
        panic!("not a done line: {done}")
    };
    assert!(sent > 0, "{done}");
    assert_eq!(
        sent, answered,
        "every REGISTER answered through {to}: {done}"
    );
    let received = || -> Vec<(String, usize)> {
        servers
            .iter()
            .zip(&before)
            .map(|((id, p), &before)| {
                let n = p.lines()[before..]
                    .iter()
                    .filter(|(_, l)| l.starts_with("request REGISTER"))
                    .count();
                (id.to_string(), n)
            })
            .collect()
    };
    // A server prints what it received within 100 ms of receiving it.
    wait_until("the servers' lines", PHASE_WITHIN, || {
        let r = received();
        if r.iter().map(|(_, n)| n).sum::<usize>() >= sent {
            Ok(r)
        } else {
            Err(format!("{r:?} of {sent}"))
        }
    });
    let r = received();
    assert_eq!(r.iter().map(|(_, n)| n).sum::<usize>(), sent, "{r:?}");
    r
}

#[test]
#[ignore = "needs root and iproute2: cargo test -p siplb-e2e --test witness -- --ignored"]
fn a_witness_in_a_third_namespace_breaks_the_tie_between_two_replicas() {
    if let Some(why) = netns::unavailable() {
        panic!("cannot run the witness namespace test: {why}");
    }
    let peer = Path::new(env!("CARGO_BIN_EXE_sip-peer"));
    let work = ConfigFile::write("");
    let mut lab = Lab::new("witness");
    // The hub holds both servers and routes between the three hosts; each host is a site of
    // its own, on its own link, and a blackhole route in a host cuts that host alone from a1.
    let hub = lab.namespace("hub");
    lab.forward(&hub);
    ip(&["-n", &hub, "addr", "add", "198.18.20.3/32", "dev", "lo"]);
    ip(&["-n", &hub, "addr", "add", "198.18.20.4/32", "dev", "lo"]);
    let mut hosts = Vec::new();
    for (i, name) in ["r1", "r2", "w"].into_iter().enumerate() {
        let ns = lab.namespace(name);
        let net = 11 + i;
        lab.link(
            &hub,
            &format!("to-{name}"),
            &format!("198.18.{net}.1/24"),
            &ns,
            "to-hub",
            &format!("198.18.{net}.2/24"),
        );
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{net}.1"),
        ]);
        hosts.push(Host {
            ns,
            ip: format!("198.18.{net}.2"),
        });
    }
    let [r1, r2, w] = &hosts[..] else {
        unreachable!("three hosts")
    };

    let mut servers: Vec<Proc> = Vec::new();
    for (id, addr) in [("a1", A1), ("b1", B1)] {
        let err = work.dir().join(format!("{id}.err"));
        let mut p = lab.spawn(&hub, peer, &["serve", id, addr, "120"], &err);
        p.wait_line(PHASE_WITHIN, |l| l.starts_with("ready"));
        servers.push(p);
    }
    let token = work.dir().join("cluster-token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = pools(A1.parse().unwrap(), B1.parse().unwrap());
    let mut files = Vec::new();
    let mut replicas: Vec<Proc> = Vec::new();
    for (me, other) in [(r1, r2), (r2, r1)] {
        let text = replica_text(
            &config.clone().listen(&[&format!("{}:5060", me.ip)]),
            me.ops().parse().unwrap(),
            &[other.ops().parse().unwrap()],
            w.ops().parse().unwrap(),
            Some(&token),
        );
        let path = work.dir().join(format!("{}.toml", me.ns));
        std::fs::write(&path, text).unwrap();
        let err = work.dir().join(format!("{}.err", me.ns));
        let path = path.display().to_string();
        let mut p = lab.spawn(&me.ns, &siplb_bin(), &["--config", &path], &err);
        p.wait_line(PHASE_WITHIN, |l| l == "ready");
        replicas.push(p);
        files.push(path);
    }
    let hub_to = |host: &Host| format!("{}:5060", host.ip);
    let r2_client = "198.18.12.1:0";
    let users_of_a = |lab: &Lab| {
        register_through(
            lab,
            &hub,
            peer,
            &hub_to(r2),
            r2_client,
            work.dir(),
            &[("a1", &servers[0]), ("b1", &servers[1])],
        )
    };

    // The replicas hear each other; the witness is not running yet.
    for r in [r1, r2] {
        wait_a(r, "a up by both replicas", |s| {
            s.verdict == "up" && s.answered == 2
        });
    }

    // Control: replica 1 alone loses a. One against one, with no witness, is a tie: nothing
    // moves, on either replica, for well past fall and failback_after.
    r1.cut_a(true);
    wait_a(r1, "r1 sees a down, a tie", |s| {
        s.state == "down" && s.verdict == "undecided" && (s.answered, s.down) == (2, 1)
    });
    wait_a(r2, "a tie at r2 too", |s| {
        s.verdict == "undecided" && (s.answered, s.down) == (2, 1)
    });
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for r in [r1, r2] {
            assert_eq!(seen(&r.status().unwrap(), "a").serving, "a", "{}", r.ns);
        }
    }

    // (a) The witness starts, with replica 1's own file: it sees a up, and breaks the tie.
    let err = work.dir().join("w.err");
    let mut witness = lab.spawn(
        &w.ns,
        &siplb_bin(),
        &["witness", "--config", &files[0], "--ops-listen", &w.ops()],
        &err,
    );
    witness.wait_line(PHASE_WITHIN, |l| l == "ready");
    let s = wait_a(r1, "the witness breaks the tie: up", |s| {
        s.verdict == "up" && (s.answered, s.down) == (3, 1)
    });
    assert_eq!((s.state.as_str(), s.serving.as_str()), ("down", "a"));
    wait_a(r2, "up at r2", |s| {
        s.verdict == "up" && (s.answered, s.down) == (3, 1)
    });
    let (code, why) = wait_until("r1 not ready", PHASE_WITHIN, || match r1.readyz()? {
        (503, why) => Ok((503, why)),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(
        (code, why.as_str()),
        (
            503,
            "not ready: pool a unreachable from this replica while the fleet reaches it"
        )
    );
    assert_eq!(r2.readyz().map(|r| r.0), Ok(200));
    for r in [r1, r2] {
        assert_eq!(seen(&r.status().unwrap(), "a").serving, "a", "{}", r.ns);
    }
    let ws = w.status().unwrap();
    assert_eq!(ws["role"], "witness");
    assert_eq!(ws["pools"][0]["state"], "up", "{ws}");
    let on = users_of_a(&lab);
    assert!(
        on[0].1 > 0 && on[1].1 == 0,
        "users of a stay on a through r2: {on:?}"
    );

    // (b) The witness loses a too: two of three see it down. Both replicas fail a over to b,
    // r2 as well though it still reaches a; r1 is ready again (nothing is its alone).
    w.cut_a(true);
    for r in [r1, r2] {
        wait_a(r, "down by two of three, failed over", |s| {
            s.verdict == "down" && (s.answered, s.down) == (3, 2) && s.serving == "b"
        });
    }
    assert_eq!(
        seen(&r2.status().unwrap(), "a").state,
        "up",
        "r2's own view"
    );
    wait_until("r1 ready again", PHASE_WITHIN, || match r1.readyz()? {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let on = users_of_a(&lab);
    assert!(
        on[0].1 == 0 && on[1].1 > 0,
        "users of a reach b through r2: {on:?}"
    );

    // (c) Both paths return: all three see a up, and its users go home after failback_after.
    let restored = Instant::now();
    r1.cut_a(false);
    w.cut_a(false);
    for r in [r1, r2] {
        wait_a(r, "home again", |s| {
            s.verdict == "up" && s.down == 0 && s.serving == "a"
        });
    }
    assert!(
        restored.elapsed() >= Duration::from_secs(1),
        "failed back {:?} after the paths returned, before failback_after",
        restored.elapsed()
    );
    let on = users_of_a(&lab);
    assert!(
        on[0].1 > 0 && on[1].1 == 0,
        "users of a are home through r2: {on:?}"
    );
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        !log.contains("pool failover changed"),
        "the witness never fails a pool over:\n{log}"
    );
    drop(witness);
    drop(replicas);
    drop(servers);
}
