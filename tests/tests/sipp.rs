//! Real-peer suite: the built `siplb` binary between sipp clients and sipp servers.
//!
//! Four sipp servers (`tests/sipp/uas.xml`) are the backends of one pool; a sipp client
//! (`tests/sipp/uac_register.xml`) registers the 5,000 users of `tests/sipp/users.csv` through
//! siplb at a modest rate. The suite asserts what DESIGN.md promises for registrations:
//!
//! - every REGISTER gets its 200 back through siplb (sipp's exit status and its statistics
//!   file: no failed call);
//! - every user reaches exactly one backend (each backend logs "REGISTER user" per request);
//! - the same user reaches the same backend in a second run through a freshly started siplb
//!   with a different number of worker sockets (the choice is a function of config and
//!   health only, not of the process or the socket that read the datagram);
//! - each backend gets a reasonable share of the users (HRW spreads them evenly);
//! - for a sample of users, the backend is the one `siplb route` names for the same config
//!   (the CLI and the wire path agree).
//!
//! It needs `sipp` (`apt-get install -y sip-tester`), so it is `#[ignore]`d and runs with
//! `cargo test -p siplb-e2e --test sipp -- --ignored` (as `.ci/run` does). Without `sipp` on
//! the PATH it fails rather than passing silently. The proxy is the binary named by
//! `SIPLB_BIN`, or `siplb` of the same target directory and profile as this test (so build
//! it first: `cargo build -p siplb`, which `cargo test --workspace` also does).
//!
//! Ports are picked free on 127.0.0.1, every process this test starts is killed when it
//! ends, every sipp run is bounded by `-m` and `-timeout`, and every wait has a deadline.
//! The logs stay in `target/tmp/sipp-*` when the suite fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use siplb_e2e::ports::free_udp_port;
use siplb_e2e::{process, Siplb};

/// Backends in the pool.
const BACKENDS: usize = 4;
/// REGISTERs per second sent by the sipp client: modest, this is a correctness suite.
const RATE: u32 = 500;
/// The domain of every user in `users.csv`, and the domain the route matches.
const DOMAIN: &str = "contoso.com";
/// Warm-up users sent before each run until every backend has seen one (proof that siplb
/// counts all of them up). Not in `users.csv`, so they never enter the user→backend maps.
const WARMUP_USERS: usize = 64;
/// A backend must get between these fractions of the users (expected: 1/BACKENDS).
const SHARE_BOUNDS: (f64, f64) = (0.15, 0.35);

#[test]
#[ignore = "real-peer suite: needs sipp (apt-get install -y sip-tester)"]
fn registrations_are_answered_and_sticky_across_runs() {
    let sipp = find_sipp();
    let siplb = process::siplb_bin();
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp");
    let users = read_users(&scenarios.join("users.csv"));
    let work = WorkDir::new();
    eprintln!(
        "sipp suite: sipp = {}, siplb = {}, logs in {}",
        sipp.display(),
        siplb.display(),
        work.path.display()
    );

    let backends: Vec<Backend> = (0..BACKENDS)
        .map(|i| Backend::start(&sipp, &scenarios, &work.path, i))
        .collect();
    for b in &backends {
        b.wait_answering();
    }

    let mut maps = Vec::new();
    for (run, workers) in [(1, 2), (2, 1)] {
        let text = siplb_config(workers, &backends);
        let _ = fs::write(work.path.join(format!("siplb-run{run}.toml")), &text);
        let proxy = Siplb::start(&text);
        warm_up(proxy.addr(), &backends);
        let offsets: Vec<u64> = backends.iter().map(Backend::log_len).collect();
        run_uac(
            &sipp,
            &scenarios,
            &work.path,
            run,
            proxy.addr(),
            users.len(),
        );
        let map = user_map(&backends, &offsets, &users);
        check_run(run, &map, &users);
        check_against_cli(&siplb, proxy.config().path(), &map, &backends, &users);
        drop(proxy);
        maps.push(map);
    }

    let moved: Vec<&String> = users
        .iter()
        .filter(|u| maps[0].get(*u) != maps[1].get(*u))
        .collect();
    let examples: Vec<String> = moved
        .iter()
        .take(10)
        .map(|u| {
            format!(
                "{u}: backend {:?} then {:?}",
                maps[0].get(*u),
                maps[1].get(*u)
            )
        })
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} users reached different backends in the two runs (first 10): {examples:#?}\n\
         logs: {}",
        moved.len(),
        users.len(),
        work.path.display()
    );

    work.remove();
}

// --------------------------------------------------------------------------------------------
// What is checked

/// user → backend index, from the backends' logs.
type UserMap = BTreeMap<String, usize>;

/// Reads every backend's log from `offsets` on (this run's part) and maps each user of
/// `users` to the backend that got it. A user seen by two backends is a failure.
fn user_map(backends: &[Backend], offsets: &[u64], users: &[String]) -> UserMap {
    let known: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    let mut seen: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (b, &offset) in backends.iter().zip(offsets) {
        for line in b.log_since(offset).lines() {
            let mut words = line.split_whitespace();
            if let (Some("REGISTER"), Some(user)) = (words.next(), words.next()) {
                if known.contains(user) {
                    seen.entry(user.to_string()).or_default().insert(b.index);
                }
            }
        }
    }
    let split: Vec<String> = seen
        .iter()
        .filter(|(_, set)| set.len() > 1)
        .take(10)
        .map(|(u, set)| format!("{u}: backends {set:?}"))
        .collect();
    assert!(
        split.is_empty(),
        "users reached more than one backend in one run: {split:#?}"
    );
    seen.into_iter()
        .filter_map(|(u, set)| set.first().map(|&b| (u, b)))
        .collect()
}

/// Every user reached a backend, and each backend got a reasonable share.
fn check_run(run: usize, map: &UserMap, users: &[String]) {
    let missing: Vec<&String> = users
        .iter()
        .filter(|u| !map.contains_key(*u))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "run {run}: users that reached no backend (first 10): {missing:?}"
    );

    let mut per_backend = [0usize; BACKENDS];
    for &b in map.values() {
        per_backend[b] += 1;
    }
    eprintln!("sipp suite: run {run}: users per backend {per_backend:?}");
    let total = users.len() as f64;
    for (b, &n) in per_backend.iter().enumerate() {
        let share = n as f64 / total;
        assert!(
            (SHARE_BOUNDS.0..=SHARE_BOUNDS.1).contains(&share),
            "run {run}: backend {b} got {n} of {} users ({:.1}%), outside {:.0}%..{:.0}%: {per_backend:?}",
            users.len(),
            share * 100.0,
            SHARE_BOUNDS.0 * 100.0,
            SHARE_BOUNDS.1 * 100.0
        );
    }
}

/// For every 50th user, `siplb route --config CONFIG REGISTER sip:USER@DOMAIN` names the
/// backend that user's REGISTER reached.
fn check_against_cli(
    bin: &Path,
    config: &Path,
    map: &UserMap,
    backends: &[Backend],
    users: &[String],
) {
    let mut disagree = Vec::new();
    for user in users.iter().step_by(50) {
        let aor = format!("sip:{user}@{DOMAIN}");
        let out = Command::new(bin)
            .arg("route")
            .arg("--config")
            .arg(config)
            .args(["REGISTER", &aor])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} route: {e}", bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        // "server  ID ADDRESS TRANSPORT"
        let named = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&"server"))
            .and_then(|w| w.get(2).map(|a| a.to_string()));
        let reached = map.get(user).map(|&b| backends[b].addr.to_string());
        assert!(
            out.status.success() && named.is_some(),
            "siplb route {aor} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if named != reached {
            disagree.push(format!(
                "{user}: siplb route says {named:?}, sipp saw {reached:?}"
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "siplb route and the wire path disagree: {disagree:#?}"
    );
}

/// Registers every user once through siplb with sipp and asserts no call failed.
fn run_uac(
    sipp: &Path,
    scenarios: &Path,
    work: &Path,
    run: usize,
    proxy: SocketAddr,
    calls: usize,
) {
    let stats = work.join(format!("uac-run{run}.csv"));
    let out = work.join(format!("uac-run{run}.out"));
    let port = free_udp_port();
    let mut cmd = Command::new(sipp);
    cmd.arg(proxy.to_string())
        .arg("-sf")
        .arg(scenarios.join("uac_register.xml"))
        .arg("-inf")
        .arg(scenarios.join("users.csv"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &calls.to_string(), "-r", &RATE.to_string()])
        .args(["-nostdin", "-timeout", "60s", "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-stf"])
        .arg(&stats);
    let started = Instant::now();
    let status = run_bounded(cmd, &out, Duration::from_secs(90));
    let (ok, failed) = sipp_totals(&stats);
    eprintln!(
        "sipp suite: run {run}: {ok} successful, {failed} failed calls in {:.1} s ({status})",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success() && ok == calls as u64 && failed == 0,
        "run {run}: sipp client {status}: {ok} successful and {failed} failed of {calls} calls\n\
         sipp output: {}\n{}",
        out.display(),
        tail(&out, 30)
    );
}

/// Sends REGISTERs for the warm-up users through siplb until each backend has logged one:
/// then siplb counts every backend up, and the runs see the same health.
fn warm_up(proxy: SocketAddr, backends: &[Backend]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let sock = client_socket();
    loop {
        let offsets: Vec<u64> = backends.iter().map(Backend::log_len).collect();
        let mut answered = 0;
        for k in 0..WARMUP_USERS {
            if sip_request(&sock, proxy, "REGISTER", &format!("warmup{k:02}")) == Some(200) {
                answered += 1;
            } else if Instant::now() > deadline {
                break;
            }
        }
        let reached: Vec<bool> = backends
            .iter()
            .zip(&offsets)
            .map(|(b, &o)| {
                b.log_since(o)
                    .lines()
                    .any(|l| l.starts_with("REGISTER warmup"))
            })
            .collect();
        if answered == WARMUP_USERS && reached.iter().all(|&r| r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "siplb at {proxy} did not bring every backend into use within 20 s: \
             {answered}/{WARMUP_USERS} warm-up REGISTERs answered 200, backends reached: {reached:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

// --------------------------------------------------------------------------------------------
// The peers

/// One sipp server, logging "METHOD user" per request to its own file.
struct Backend {
    index: usize,
    addr: SocketAddr,
    log: PathBuf,
    out: PathBuf,
    _proc: Proc,
}

impl Backend {
    /// Starts backend `index` on a free port. sipp exits at once when the port was taken
    /// meanwhile (another process won the race), so that is retried on another port.
    fn start(sipp: &Path, scenarios: &Path, work: &Path, index: usize) -> Backend {
        let log = work.join(format!("backend{index}.log"));
        let out = work.join(format!("backend{index}.out"));
        for _attempt in 0..5 {
            let port = free_udp_port();
            let mut cmd = Command::new(sipp);
            cmd.arg("-sf")
                .arg(scenarios.join("uas.xml"))
                .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .args([
                    "-nostdin",
                    "-m",
                    "1000000",
                    "-timeout",
                    "300s",
                    "-trace_logs",
                    "-log_file",
                ])
                .arg(&log);
            let mut proc = Proc::spawn(&format!("backend{index}"), cmd, &out, false);
            thread::sleep(Duration::from_millis(100));
            if proc.child.try_wait().ok().flatten().is_none() {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                return Backend {
                    index,
                    addr,
                    log,
                    out,
                    _proc: proc,
                };
            }
        }
        panic!(
            "sipp backend {index} did not start: {}\n{}",
            out.display(),
            tail(&out, 20)
        );
    }

    /// Waits until the backend answers an OPTIONS sent straight to it.
    fn wait_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = client_socket();
        while sip_request(&sock, self.addr, "OPTIONS", "ping") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "sipp backend {} at {} does not answer OPTIONS: {}\n{}",
                self.index,
                self.addr,
                self.out.display(),
                tail(&self.out, 20)
            );
        }
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                // A line being written may be cut; it is ignored (no user matches it).
                let _ = f.read_to_string(&mut text);
            }
        }
        text
    }
}

/// The config of both runs: one pool `fe` of the backends, REGISTERs for the users' domain
/// routed to it by To AOR. Probes are OPTIONS (the backends answer them); `fall` is high so a
/// backend busy with the run is never taken for dead, which would move users.
fn siplb_config(workers: usize, backends: &[Backend]) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| {
            format!(
                "  {{ id = \"backend{}\", address = \"{}\", transport = \"udp\" }},",
                b.index, b.addr
            )
        })
        .collect();
    format!(
        "[listen]\n\
         udp = [\"127.0.0.1:0\"]\n\
         workers = {workers}\n\n\
         [health]\n\
         probe = \"options\"\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         fall = 5\n\
         rise = 1\n\n\
         [[pool]]\n\
         name = \"fe\"\n\
         role = \"front-end\"\n\
         servers = [\n{}\n]\n\n\
         [[route]]\n\
         domain = \"{DOMAIN}\"\n\
         pool = \"fe\"\n\
         key = \"to-aor\"\n",
        servers.join("\n")
    )
}

/// A child process that is killed (by its own PID) and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Spawns `cmd` with stderr, and stdout unless `pipe_stdout`, going to the file `out`.
    fn spawn(name: &str, mut cmd: Command, out: &Path, pipe_stdout: bool) -> Proc {
        let file = File::create(out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning {}: {e}", out.display()));
        cmd.stdin(Stdio::null()).stderr(err);
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(file);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("sipp suite: could not kill {}: {e}", self.name);
            }
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion with stdout and stderr in `out`, killing it after `limit`.
fn run_bounded(cmd: Command, out: &Path, limit: Duration) -> ExitStatus {
    let mut proc = Proc::spawn("sipp client", cmd, out, false);
    let deadline = Instant::now() + limit;
    loop {
        match proc.child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) => panic!(
                "{} still running after {limit:?}: {}\n{}",
                proc.name,
                out.display(),
                tail(out, 30)
            ),
            Err(e) => panic!("waiting for {}: {e}", proc.name),
        }
    }
}

// --------------------------------------------------------------------------------------------
// Small helpers

/// `sipp` on the PATH, or a failure that says how to get it.
fn find_sipp() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("sipp"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "sipp is not on the PATH: this real-peer suite needs it. Install it with \
             `apt-get install -y sip-tester` (Debian), or run the rest of the tests with \
             `cargo test --workspace` (this suite is #[ignore]d there)."
            )
        })
}

/// The user names (field 0) of a sipp injection file.
fn read_users(csv: &Path) -> Vec<String> {
    let text = fs::read_to_string(csv).unwrap_or_else(|e| panic!("reading {}: {e}", csv.display()));
    let users: Vec<String> = text
        .lines()
        .skip(1) // SEQUENTIAL
        .filter_map(|l| l.split(';').next())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        users.len() >= 1000,
        "{} holds only {} users",
        csv.display(),
        users.len()
    );
    users
}

/// Successful and failed calls (cumulative) from the last line of a sipp `-stf` file.
fn sipp_totals(stats: &Path) -> (u64, u64) {
    let text = fs::read_to_string(stats).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(header), Some(last)) = (lines.next(), lines.next_back()) else {
        return (0, 0);
    };
    let column = |name: &str| -> u64 {
        header
            .split(';')
            .position(|h| h == name)
            .and_then(|i| last.split(';').nth(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (column("SuccessfulCall(C)"), column("FailedCall(C)"))
}

/// A UDP socket on a free loopback port, for the suite's own SIP requests.
fn client_socket() -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
    sock
}

/// Sends one `method` for `user@contoso.com` to `to` and returns the status of the final
/// response that carries our Call-ID, or `None` when none came within the socket's timeout.
fn sip_request(sock: &UdpSocket, to: SocketAddr, method: &str, user: &str) -> Option<u16> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let local = sock.local_addr().ok()?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag = format!(
        "{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut msg = String::new();
    let _ = write!(
        msg,
        "{method} sip:{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-e2e-{tag}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{DOMAIN}>;tag={tag}\r\n\
         To: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: {tag}@siplb-e2e\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         Expires: 60\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), to).ok()?;
    let call_id = format!("Call-ID: {tag}@siplb-e2e");
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        if !text.contains(&call_id) {
            continue; // a late answer to an earlier request
        }
        let status = text
            .strip_prefix("SIP/2.0 ")?
            .get(..3)?
            .parse::<u16>()
            .ok()?;
        if status >= 200 {
            return Some(status);
        }
    }
}

/// The last `n` lines of a file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh directory under `target/tmp` for configs, stats and logs; removed on success.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> WorkDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sipp-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        WorkDir { path }
    }

    fn remove(self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
