//! SIP over TCP through the built `siplb` binary.
//!
//! Across transports (in-repo peers, run in every `cargo test`):
//! - a UDP client's REGISTER to a TCP server: siplb's Via says `SIP/2.0/TCP` and names its TCP
//!   listener, the client's Via gets `received`/`rport`, and the 200 comes back over UDP to the
//!   client's address;
//! - a TCP client's REGISTER to a UDP server: siplb's Via says `SIP/2.0/UDP`, the client's Via
//!   gets `received`/`rport` (its connection's address), and the 200 comes back down the
//!   client's connection.
//!
//! With sipp (`#[ignore]`d, `cargo test -p siplb-e2e --test tcp -- --ignored`): 1,000 users
//! register over TCP through siplb to four sipp servers listening on TCP (`-t t1`), from a
//! sipp client opening a connection per call (`-t tn`) and from one sharing a single connection
//! (`-t t1`), and from a UDP sipp client: no call fails, every user reaches the same server in
//! the three runs and the one `siplb route` names, and the shared connection's users are spread
//! over the servers.
//!
//! Ports are free loopback ports, every process started here is killed when the test ends,
//! every sipp run is bounded by `-m` and `-timeout`, and every wait has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use siplb_e2e::ops::wait_until;
use siplb_e2e::ports::free_tcp_port;
use siplb_e2e::process::route_cli;
use siplb_e2e::sip::param;
use siplb_e2e::sipp::{find_sipp, read_users, scenarios, tail, Proc, Uac, WorkDir};
use siplb_e2e::stream::{Dial, Listen, StreamBackend, StreamClient, ANSWER_WITHIN};
use siplb_e2e::{Backend, Behaviour, Client, Msg, Request, Siplb};

const DOMAIN: &str = "contoso.com";

/// A config listening on UDP and TCP with `servers` (`(address, transport, id)`) in one pool,
/// probed with `probe`.
fn config(servers: &[(SocketAddr, &str, &str)], probe: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(a, t, id)| format!("{{ address = \"{a}\", transport = \"{t}\", id = \"{id}\" }}"))
        .collect();
    format!(
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nworkers = 1\n\n\
         [health]\nprobe = \"{probe}\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfall = 3\n\n\
         [[pool]]\nname = \"fe\"\nservers = [{}]\n\n\
         [[route]]\ndomain = \"{DOMAIN}\"\npool = \"fe\"\n",
        servers.join(", ")
    )
}

/// The first Via value of `m` and the second.
fn two_vias(m: &Msg) -> (String, String) {
    let vias = m.vias();
    assert!(vias.len() >= 2, "two Vias expected: {vias:?}");
    (vias[0].clone(), vias[1].clone())
}

#[test]
fn a_udp_clients_request_reaches_a_tcp_server_and_its_answer_comes_back_over_udp() {
    let server = StreamBackend::start("fe-tcp", Listen::Tcp);
    let siplb = Siplb::start(&config(&[(server.addr(), "tcp", "fe-tcp")], "tcp-connect"));
    let mut client = Client::new();
    let req = Request::register(&format!("alice@{DOMAIN}"));
    let answer = client.transact(siplb.addr(), &req);
    assert_eq!(answer.status(), Some(200), "{answer:?}");

    let got = server.wait_request(&req.call_id(), ANSWER_WITHIN).msg();
    let (ours, theirs) = two_vias(&got);
    assert!(
        ours.starts_with(&format!("SIP/2.0/TCP {};branch=z9hG4bK-lb", siplb.tcp())),
        "siplb's Via names the TCP hop and its TCP listener: {ours}"
    );
    assert!(theirs.starts_with("SIP/2.0/UDP "), "{theirs}");
    assert_eq!(
        param(&theirs, "received"),
        Some(Some("127.0.0.1".to_string()))
    );
    assert_eq!(
        param(&theirs, "rport"),
        Some(Some(client.addr().port().to_string())),
        "rport is the client's source port: {theirs}"
    );

    // The answer lost siplb's Via and kept the client's, with received/rport.
    let vias = answer.vias();
    assert_eq!(vias.len(), 1, "{vias:?}");
    assert_eq!(vias[0], theirs);
    // UDP clients share one backend connection per server.
    let again = Request::register(&format!("bob@{DOMAIN}"));
    assert_eq!(client.transact(siplb.addr(), &again).status(), Some(200));
    let other = Client::new().transact(siplb.addr(), &Request::register(&format!("carl@{DOMAIN}")));
    assert_eq!(other.status(), Some(200));
    let used: BTreeSet<u64> = server
        .requests()
        .iter()
        .filter(|m| m.msg().method() == Some("REGISTER"))
        .map(|m| m.conn)
        .collect();
    assert_eq!(used.len(), 1, "one shared connection: {used:?}");
}

#[test]
fn a_tcp_clients_request_reaches_a_udp_server_and_its_answer_comes_back_down_the_connection() {
    let server = Backend::start("fe-udp", Behaviour::Accept);
    let siplb = Siplb::start(&config(&[(server.addr(), "udp", "fe-udp")], "options"));
    let client = StreamClient::connect(siplb.tcp(), Dial::Tcp);
    let req = client.register_request(&format!("dora@{DOMAIN}"));
    let answer = client.transact(&req);
    assert_eq!(answer.status(), Some(200), "{answer:?}");

    let got = server
        .wait_request(&req.call_id(), ANSWER_WITHIN)
        .msg()
        .expect("the REGISTER parses");
    let (ours, theirs) = two_vias(&got);
    assert!(
        ours.starts_with(&format!("SIP/2.0/UDP {};branch=z9hG4bK-lb", siplb.addr())),
        "siplb's Via names the UDP hop and its UDP listener: {ours}"
    );
    assert!(theirs.starts_with("SIP/2.0/TCP "), "{theirs}");
    assert_eq!(
        param(&theirs, "received"),
        Some(Some("127.0.0.1".to_string()))
    );
    assert_eq!(
        param(&theirs, "rport"),
        Some(Some(client.local_addr().port().to_string())),
        "rport is the connection's source port: {theirs}"
    );
    let vias = answer.vias();
    assert_eq!(vias, vec![theirs], "the answer keeps only the client's Via");
}

// --------------------------------------------------------------------------------------------
// sipp over TCP

/// sipp servers in the pool.
const SERVERS: usize = 4;
/// Users registered per run (from `tests/sipp/users.csv`).
const USERS: usize = 1000;
/// REGISTERs per second: a correctness suite, not a benchmark.
const RATE: u32 = 200;

/// How long a sipp client may wait for an answer before it gives up.
const SIPP_TIMEOUT: Duration = Duration::from_secs(60);

/// A sipp server (`uas.xml`) listening on TCP (`-t t1`), logging `REGISTER user` lines.
struct TcpUas {
    id: String,
    addr: SocketAddr,
    log: PathBuf,
    _proc: Proc,
}

impl TcpUas {
    /// Starts server `id` on a free TCP port; waits until it accepts connections.
    fn start(sipp: &Path, work: &Path, id: &str) -> TcpUas {
        let log = work.join(format!("{id}.log"));
        let out = work.join(format!("{id}.out"));
        for _attempt in 0..5 {
            let port = free_tcp_port();
            let mut cmd = Command::new(sipp);
            cmd.arg("-sf")
                .arg(scenarios().join("uas.xml"))
                .args(["-t", "t1", "-i", "127.0.0.1", "-p", &port.to_string()])
                .args(["-nostdin", "-m", "1000000", "-timeout", "300s"])
                .args(["-trace_logs", "-log_file"])
                .arg(&log);
            let mut proc = Proc::spawn(id, cmd, &out);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && proc.exited().is_none() {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return TcpUas {
                        id: id.to_string(),
                        addr,
                        log,
                        _proc: proc,
                    };
                }
                // Polling sipp's listening socket under a deadline.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("sipp TCP server {id} did not start: {}", tail(&out, 20));
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The users of the REGISTERs logged after byte `from`.
    fn registered_since(&self, from: u64) -> Vec<String> {
        let text = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
        text.lines()
            .filter_map(|l| l.strip_prefix("REGISTER "))
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }
}

/// user → server id, from the servers' logs after `from`; a user on two servers fails.
fn placement(servers: &[TcpUas], from: &[u64]) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (s, &at) in servers.iter().zip(from) {
        for u in s.registered_since(at) {
            seen.entry(u).or_default().insert(s.id.clone());
        }
    }
    let split: Vec<_> = seen.iter().filter(|(_, s)| s.len() > 1).take(10).collect();
    assert!(split.is_empty(), "users on two servers: {split:?}");
    seen.into_iter()
        .filter_map(|(u, s)| s.into_iter().next().map(|id| (u, id)))
        .collect()
}

#[test]
#[ignore = "real-peer suite: needs sipp (apt-get install -y sip-tester)"]
fn sipp_registrations_over_tcp_reach_the_same_servers_as_over_udp() {
    let sipp = find_sipp();
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "sipp-tcp");
    let servers: Vec<TcpUas> = (0..SERVERS)
        .map(|i| TcpUas::start(&sipp, &work.path, &format!("fe-tcp{i}")))
        .collect();
    let entries: Vec<(SocketAddr, &str, &str)> = servers
        .iter()
        .map(|s| (s.addr, "tcp", s.id.as_str()))
        .collect();
    let siplb = Siplb::start(&config(&entries, "tcp-connect"));
    let users: Vec<String> = read_users(&scenarios().join("users.csv"))
        .into_iter()
        .take(USERS)
        .collect();

    let mut runs: Vec<(&str, BTreeMap<String, String>)> = Vec::new();
    for (name, mode) in [
        ("udp", None),
        ("tcp-tn", Some("tn")),
        ("tcp-t1", Some("t1")),
    ] {
        let from: Vec<u64> = servers.iter().map(TcpUas::log_len).collect();
        let (mut uac, context) = match mode {
            None => (
                Uac::start(
                    &sipp,
                    &work.path,
                    name,
                    siplb.addr(),
                    USERS,
                    RATE,
                    SIPP_TIMEOUT,
                ),
                "UDP client to TCP servers: ".to_string(),
            ),
            Some(mode) => (
                Uac::start_tcp(
                    &sipp,
                    &work.path,
                    name,
                    (mode, siplb.tcp()),
                    USERS,
                    RATE,
                    SIPP_TIMEOUT,
                ),
                format!("sipp {name}: "),
            ),
        };
        let r = uac.wait(Duration::from_secs(90));
        uac.assert_no_loss_in(&context, &r);
        let map = placement(&servers, &from);
        let missing: Vec<&String> = users
            .iter()
            .filter(|u| !map.contains_key(*u))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "{name}: users that reached no server: {missing:?}"
        );
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for u in &users {
            *per.entry(map[u].as_str()).or_default() += 1;
        }
        eprintln!("{name}: users per server {per:?}");
        assert_eq!(
            per.len(),
            SERVERS,
            "{name}: every server got users: {per:?}"
        );
        for (id, n) in &per {
            let share = *n as f64 / USERS as f64;
            assert!(
                (0.15..=0.35).contains(&share),
                "{name}: {id} got {n} of {USERS} users: {per:?}"
            );
        }
        runs.push((name, map));
    }
    let (udp, rest) = runs.split_first().expect("three runs");
    for (name, map) in rest {
        let moved: Vec<_> = users
            .iter()
            .filter(|u| udp.1.get(*u) != map.get(*u))
            .take(10)
            .collect();
        assert!(
            moved.is_empty(),
            "{name} placed users elsewhere than UDP did: {moved:?}"
        );
    }
    // And where `siplb route` says, for a sample.
    for u in users.iter().step_by(100) {
        let aor = format!("sip:{u}@{DOMAIN}");
        let cli = route_cli(siplb.config(), "REGISTER", &aor).expect("siplb route");
        assert_eq!(Some(&cli.server_id), udp.1.get(u), "{aor}");
    }
    drop(siplb);
    work.remove();
}

#[test]
fn a_reload_opens_and_closes_tcp_listeners_and_open_flows_go_on() {
    use siplb_e2e::ops::Ops;
    use siplb_e2e::reload::write_in_place;

    let server = StreamBackend::start("fe-tcp", Listen::Tcp);
    let base = config(&[(server.addr(), "tcp", "fe-tcp")], "tcp-connect")
        + "\n[ops]\nlisten = \"127.0.0.1:0\"\n";
    let siplb = Siplb::start(&base);
    let ops = Ops::of(&siplb);
    let second = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    assert!(
        TcpStream::connect(second).is_err(),
        "{second} is not served yet"
    );

    // Reload with a second TCP listener: it is served, and shows in /status.
    let two = base.replace(
        "tcp = [\"127.0.0.1:0\"]",
        &format!("tcp = [\"127.0.0.1:0\", \"{second}\"]"),
    );
    write_in_place(siplb.config().path(), &two);
    ops.wait_config_version(2);
    let on_second = StreamClient::connect(second, Dial::Tcp);
    assert_eq!(
        on_second.register(&format!("lena@{DOMAIN}")).status(),
        Some(200)
    );
    let s = ops.status();
    let bound: Vec<&str> = s.0["connections"]["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["bound"].as_str())
        .collect();
    assert!(bound.contains(&second.to_string().as_str()), "{bound:?}");

    // Reload without it: no new connection there, but the open flow goes on.
    write_in_place(siplb.config().path(), &base);
    ops.wait_config_version(3);
    wait_until(
        "the second listener closed",
        ANSWER_WITHIN,
        || match TcpStream::connect(second) {
            Ok(_) => Err("still accepting".to_string()),
            Err(_) => Ok(()),
        },
    );
    assert_eq!(
        on_second.register(&format!("lena@{DOMAIN}")).status(),
        Some(200),
        "a flow accepted on a closed listener goes on"
    );
    let first = StreamClient::connect(siplb.tcp(), Dial::Tcp);
    assert_eq!(first.register(&format!("max@{DOMAIN}")).status(), Some(200));
}
