//! sipp as real SIP peers, for the real-peer suites: sipp servers (`tests/sipp/uas.xml`) as a
//! pool's backends and a sipp client (`tests/sipp/uac_register.xml`) registering the users of
//! `tests/sipp/users.csv` through siplb.
//!
//! Each sipp server logs one line `METHOD user` per request it receives (flushed as it goes), so
//! a suite can tell which server got which user, and — reading from a byte offset taken
//! earlier — which servers got traffic during a phase of a run. The client runs in the
//! background ([`Uac::start`]) so a suite can act on siplb meanwhile, and its result comes from
//! sipp's exit status and its statistics file.
//!
//! sipp must be on the PATH (`apt-get install -y sip-tester`); without it a suite fails with
//! that instruction rather than passing. Every process started here is killed by its own pid
//! when dropped, every run is bounded by `-m`, `-timeout` and a deadline of our own, and the
//! logs stay in the work directory when a suite fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Server;
use crate::ports::{free_tcp_port, free_udp_port};
use crate::request::unique;

/// The domain of every user in `users.csv`.
pub const DOMAIN: &str = "contoso.com";

/// `sipp` on the PATH, or a failure that says how to get it.
pub fn find_sipp() -> PathBuf {
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

/// `tests/sipp`: the scenarios and the users file.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// Holds the machine for one sipp load run at a time: the tests of one suite run on parallel
/// threads, and two load runs on a two-core machine would measure each other.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static ONE_RUN: Mutex<()> = Mutex::new(());
    ONE_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The user names (field 0) of a sipp injection file.
pub fn read_users(csv: &Path) -> Vec<String> {
    let text = fs::read_to_string(csv).unwrap_or_else(|e| panic!("reading {}: {e}", csv.display()));
    text.lines()
        .skip(1) // SEQUENTIAL
        .filter_map(|l| l.split(';').next())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Writes a sipp injection file of `n` users `user00001`, `user00002`, ... of [`DOMAIN`] at
/// `path`, read in order (SEQUENTIAL) so that `-m n` registers each user once, and returns
/// their names.
pub fn write_users(path: &Path, n: usize) -> Vec<String> {
    let users: Vec<String> = (1..=n).map(|i| format!("user{i:05}")).collect();
    let mut text = String::from("SEQUENTIAL\n");
    for u in &users {
        let _ = writeln!(text, "{u};{DOMAIN};");
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    users
}

/// A fresh directory for configs, statistics and logs; removed by [`WorkDir::remove`] (a suite
/// calls it on success, so a failure leaves the logs).
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    /// `<base>/<name>-<unique>`; `base` is usually the test's `env!("CARGO_TARGET_TMPDIR")`.
    pub fn new(base: &Path, name: &str) -> WorkDir {
        let path = base.join(unique(&format!("{name}-")));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        WorkDir { path }
    }

    pub fn remove(self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A child process that is killed (by its own pid) and reaped when dropped.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to the file `out`.
    pub fn spawn(name: &str, mut cmd: Command, out: &Path) -> Proc {
        let file = File::create(out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning {}: {e}", out.display()));
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("could not kill {}: {e}", self.name);
            }
        }
        let _ = self.child.wait();
    }
}

/// The socket buffer each sipp asks for (`-buff_size`; sipp's own default is 64 KiB, which
/// the kernel doubles). A server must hold a burst that siplb rightly forwards, such as the
/// floods' 65,000-byte REGISTERs, without dropping the valid request that came beside them: a
/// drop at the test's own peer would be counted against siplb. The kernel caps it at
/// `net.core.rmem_max`.
const PEER_BUFFER: &str = "4194304";

/// One sipp server (`uas.xml`), logging `METHOD user` per request to its own file.
pub struct Uas {
    pub id: String,
    pub addr: SocketAddr,
    log: PathBuf,
    proc: Proc,
}

impl Uas {
    /// Starts server `id` on a free port and waits until it answers an OPTIONS. sipp exits at
    /// once when the port was taken meanwhile (another process won the race), so that is
    /// retried on another port.
    pub fn start(sipp: &Path, work: &Path, id: &str) -> Uas {
        let log = work.join(format!("{id}.log"));
        let out = work.join(format!("{id}.out"));
        for _attempt in 0..5 {
            let port = free_udp_port();
            let mut cmd = Command::new(sipp);
            cmd.arg("-sf")
                .arg(scenarios().join("uas.xml"))
                .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .args(["-nostdin", "-m", "1000000", "-timeout", "300s"])
                .args(["-buff_size", PEER_BUFFER])
                .args(["-trace_logs", "-log_file"])
                .arg(&log);
            let mut uas = Uas {
                id: id.to_string(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log: log.clone(),
                proc: Proc::spawn(id, cmd, &out),
            };
            if uas.answers(Duration::from_secs(10)) {
                return uas;
            }
        }
        panic!(
            "sipp server {id} did not start: {}\n{}",
            out.display(),
            tail(&out, 20)
        );
    }

    /// Whether it answers an OPTIONS sent straight to it within `within` (false at once if
    /// sipp exited).
    fn answers(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let sock = client_socket();
        while Instant::now() < deadline {
            if self.proc.exited().is_some() {
                return false;
            }
            if sip_request(&sock, self.addr, "OPTIONS", "ping") == Some(200) {
                return true;
            }
        }
        false
    }

    /// The `[[pool]] servers` entry for this server.
    pub fn server(&self) -> Server {
        Server {
            id: self.id.clone(),
            address: self.addr,
            weight: 1,
            drained: false,
        }
    }

    /// How long its log is now: an offset to read later traffic from.
    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Its log from byte `offset` on.
    pub fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                // A line being written may be cut; it names no whole user and is ignored.
                let _ = f.read_to_string(&mut text);
            }
        }
        text
    }

    /// The users of the REGISTERs it logged between byte offsets `from` and `to`.
    pub fn registered(&self, from: u64, to: u64) -> Vec<String> {
        let text = self.log_since(from);
        let len = usize::try_from(to.saturating_sub(from)).unwrap_or(usize::MAX);
        let upto = text.get(..len.min(text.len())).unwrap_or(&text);
        upto.lines()
            .filter_map(|l| l.strip_prefix("REGISTER "))
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }
}

/// The log offsets of several servers at one moment.
pub fn offsets(servers: &[Uas]) -> Vec<u64> {
    servers.iter().map(Uas::log_len).collect()
}

/// user → the indices (in `servers`) of the servers that logged its REGISTERs between `from`
/// and `to` (log offsets per server).
pub fn registrations(
    servers: &[Uas],
    from: &[u64],
    to: &[u64],
) -> BTreeMap<String, BTreeSet<usize>> {
    let mut seen: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, ((s, &a), &b)) in servers.iter().zip(from).zip(to).enumerate() {
        for user in s.registered(a, b) {
            seen.entry(user).or_default().insert(i);
        }
    }
    seen
}

/// user → the id of the one server that logged its REGISTERs between `from` and `to` (log
/// offsets per server). Panics if a user reached two servers.
pub fn user_map(servers: &[Uas], from: &[u64], to: &[u64]) -> BTreeMap<String, String> {
    let seen: BTreeMap<String, BTreeSet<&str>> = registrations(servers, from, to)
        .into_iter()
        .map(|(u, ix)| (u, ix.into_iter().map(|i| servers[i].id.as_str()).collect()))
        .collect();
    let split: Vec<String> = seen
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .take(10)
        .map(|(u, ids)| format!("{u}: {ids:?}"))
        .collect();
    assert!(
        split.is_empty(),
        "users reached more than one server: {split:#?}"
    );
    seen.into_iter()
        .filter_map(|(u, ids)| ids.into_iter().next().map(|id| (u, id.to_string())))
        .collect()
}

/// The first 10 of `users` that `map` (user → where it went) does not place, for a failure
/// message.
pub fn unplaced<'a, V>(users: &'a [String], map: &BTreeMap<String, V>) -> Vec<&'a String> {
    users
        .iter()
        .filter(|u| !map.contains_key(*u))
        .take(10)
        .collect()
}

/// A sipp client registering users through siplb, running in the background.
pub struct Uac {
    calls: usize,
    stats: PathBuf,
    out: PathBuf,
    started: Instant,
    proc: Proc,
}

/// How a sipp client run ended.
#[derive(Debug)]
pub struct UacResult {
    pub status: ExitStatus,
    pub successful: u64,
    pub failed: u64,
    /// Requests sipp sent again for want of an answer (`Retransmissions(C)`).
    pub retransmissions: u64,
    pub took: Duration,
}

impl Uac {
    /// Starts registering the first `calls` users of `users.csv` through `proxy` at `rate`
    /// REGISTERs per second; sipp itself gives up after `timeout`.
    pub fn start(
        sipp: &Path,
        work: &Path,
        name: &str,
        proxy: SocketAddr,
        calls: usize,
        rate: u32,
        timeout: Duration,
    ) -> Uac {
        Uac::start_with_users(
            sipp,
            work,
            name,
            (proxy, &scenarios().join("users.csv")),
            calls,
            rate,
            timeout,
        )
    }

    /// [`Uac::start`] with the users of the injection file `users` (see [`write_users`])
    /// instead of `tests/sipp/users.csv`.
    pub fn start_with_users(
        sipp: &Path,
        work: &Path,
        name: &str,
        (proxy, users): (SocketAddr, &Path),
        calls: usize,
        rate: u32,
        timeout: Duration,
    ) -> Uac {
        let local = ["-p".to_string(), free_udp_port().to_string()];
        Uac::spawn(
            sipp,
            work,
            name,
            (proxy, users),
            (calls, rate, timeout),
            &local,
        )
    }

    /// [`Uac::start`] over TCP to `proxy`: `mode` is sipp's `-t` (`tn`, a connection per call;
    /// `t1`, one for all), with room for a socket per call.
    pub fn start_tcp(
        sipp: &Path,
        work: &Path,
        name: &str,
        (mode, proxy): (&str, SocketAddr),
        calls: usize,
        rate: u32,
        timeout: Duration,
    ) -> Uac {
        let port = free_tcp_port().to_string();
        let local = ["-t", mode, "-p", &port, "-max_socket", "4096"].map(str::to_string);
        let users = scenarios().join("users.csv");
        Uac::spawn(
            sipp,
            work,
            name,
            (proxy, &users),
            (calls, rate, timeout),
            &local,
        )
    }

    /// Starts sipp with the arguments every run shares and `transport`'s (`-t`, `-p`, ...).
    fn spawn(
        sipp: &Path,
        work: &Path,
        name: &str,
        (proxy, users): (SocketAddr, &Path),
        (calls, rate, timeout): (usize, u32, Duration),
        transport: &[String],
    ) -> Uac {
        let stats = work.join(format!("{name}.csv"));
        let out = work.join(format!("{name}.out"));
        let mut cmd = Command::new(sipp);
        cmd.arg(proxy.to_string())
            .arg("-sf")
            .arg(scenarios().join("uac_register.xml"))
            .arg("-inf")
            .arg(users)
            .args(["-i", "127.0.0.1"])
            .args(transport)
            .args(["-m", &calls.to_string(), "-r", &rate.to_string()])
            .args(["-buff_size", PEER_BUFFER])
            .args(["-nostdin", "-timeout"])
            .arg(format!("{}s", timeout.as_secs()))
            .args(["-timeout_error", "-trace_stat", "-fd", "1", "-stf"])
            .arg(&stats);
        let proc = Proc::spawn(name, cmd, &out);
        Uac {
            calls,
            stats,
            out,
            started: Instant::now(),
            proc,
        }
    }

    /// Whether sipp is still sending or waiting for answers.
    pub fn is_running(&mut self) -> bool {
        self.proc.exited().is_none()
    }

    /// Waits (at most `limit`) for sipp to finish; panics if it does not.
    pub fn wait(&mut self, limit: Duration) -> UacResult {
        let deadline = self.started + limit;
        let status = loop {
            if let Some(status) = self.proc.exited() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sipp client still running {limit:?} after it started: {}\n{}",
                self.out.display(),
                tail(&self.out, 30)
            );
            // Polling the child's exit under a deadline.
            thread::sleep(Duration::from_millis(50));
        };
        let (successful, failed) = totals(&self.stats);
        UacResult {
            status,
            successful,
            failed,
            retransmissions: column(&self.stats, "Retransmissions(C)"),
            took: self.started.elapsed(),
        }
    }

    /// Asserts a finished run answered every call: sipp exited 0, `calls` successful, none
    /// failed.
    pub fn assert_no_loss(&self, r: &UacResult) {
        self.assert_no_loss_in("", r);
    }

    /// [`Uac::assert_no_loss`], its failure message starting with `context` (e.g. `"run 2: "`).
    pub fn assert_no_loss_in(&self, context: &str, r: &UacResult) {
        assert!(
            r.status.success() && r.successful == self.calls as u64 && r.failed == 0,
            "{context}sipp client {}: {} successful and {} failed of {} calls\nsipp output: {}\n{}",
            r.status,
            r.successful,
            r.failed,
            self.calls,
            self.out.display(),
            tail(&self.out, 30)
        );
    }
}

/// One cumulative column (e.g. `Retransmissions(C)`) of the last line of a sipp `-stf` file.
pub fn column(stats: &Path, name: &str) -> u64 {
    let text = fs::read_to_string(stats).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(header), Some(last)) = (lines.next(), lines.next_back()) else {
        return 0;
    };
    header
        .split(';')
        .position(|h| h == name)
        .and_then(|i| last.split(';').nth(i))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Successful and failed calls (cumulative) from the last line of a sipp `-stf` file.
pub fn totals(stats: &Path) -> (u64, u64) {
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
pub fn client_socket() -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
    sock
}

/// Sends one `method` for `user@contoso.com` to `to` and returns the status of the final
/// response that carries our Call-ID, or `None` when none came within the socket's timeout.
pub fn sip_request(sock: &UdpSocket, to: SocketAddr, method: &str, user: &str) -> Option<u16> {
    let local = sock.local_addr().ok()?;
    let tag = unique("sipp-e2e-");
    let mut msg = String::new();
    let _ = write!(
        msg,
        "{method} sip:{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{tag}\r\n\
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
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
