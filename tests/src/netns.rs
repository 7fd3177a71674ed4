//! Network namespaces as hosts and datacenters on one machine: a [`Lab`] creates namespaces
//! (names carry the test's pid, so parallel runs never collide), joins them with veth links
//! addressed from the RFC 2544 benchmarking range (198.18.0.0/15), runs processes inside them
//! with `ip netns exec`, and removes all of it when dropped — also when the test panics.
//!
//! Cutting a datacenter off is `ip -n LB link set IF down` on the balancer's side of its link:
//! the route to the datacenter disappears with the link, exactly as when a WAN link fails.
//! Every process a lab starts is killed by its own PID; nothing else is touched.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a lab cannot be built here, or `None` when it can: it needs root and iproute2.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "network namespaces need root (effective uid is {uid})"
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) is not installed: apt-get install -y iproute2".into()),
    }
}

/// Runs `ip ARGS`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    output(args);
}

/// Runs `ip ARGS` and returns what it printed; panics with its stderr if it fails.
pub fn output(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes in the receive memory of the UDP sockets bound to local `port` in namespace `ns` (the
/// `rx_queue` column of its `/proc/net/udp`: queued datagrams and queued ICMP errors alike);
/// `None` when no socket is bound to that port.
pub fn udp_rx_queue(ns: &str, port: u16) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/udp"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot read /proc/net/udp in {ns}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted = format!(":{port:04X}");
    let queues: Vec<u64> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local = cols.get(1)?;
            let queues = cols.get(4)?;
            let rx = queues.split(':').nth(1)?;
            local
                .ends_with(&wanted)
                .then(|| u64::from_str_radix(rx, 16).ok())
                .flatten()
        })
        .collect();
    (!queues.is_empty()).then(|| queues.iter().sum())
}

/// GETs `url` from inside namespace `ns` (the test runs outside every namespace) with
/// `siplb healthcheck --url`, which needs no client but the binary under test: the status code
/// and the first line of the body (all of a JSON document), or why there is none.
pub fn get_in(ns: &str, url: &str) -> Result<(u16, String), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(crate::process::siplb_bin())
        .args(["healthcheck", "--timeout", "2s", "--url", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run siplb healthcheck in {ns}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let answer = text
        .trim_end()
        .strip_prefix(url)
        .and_then(|t| t.strip_prefix(": "));
    let Some(answer) = answer else {
        return Err(format!(
            "GET {url} in {ns}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    let (code, body) = answer.split_once(' ').unwrap_or((answer, ""));
    match code.parse() {
        Ok(code) => Ok((code, body.to_string())),
        Err(_) => Err(format!("GET {url} in {ns}: no status code in {text:?}")),
    }
}

/// [`get_in`] of a JSON document, which must come with `200`.
pub fn json_in(ns: &str, url: &str) -> Result<serde_json::Value, String> {
    match get_in(ns, url)? {
        (200, body) => serde_json::from_str(&body)
            .map_err(|e| format!("GET {url} in {ns}: not JSON ({e}): {body}")),
        (code, body) => Err(format!("GET {url} in {ns}: {code} {body}")),
    }
}

/// A set of namespaces and the processes running in them, removed on drop.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

impl Lab {
    /// An empty lab; its namespaces are called `<tag>-<pid>-<name>`.
    pub fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("{tag}-{}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// Creates namespace `name` with its loopback up; returns its full name.
    pub fn namespace(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Joins namespaces `a` and `b` with a veth pair: interface `a_if` in `a` with address
    /// `a_addr` (CIDR), `b_if` in `b` with `b_addr`; both ends up.
    pub fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        ip(&[
            "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        ip(&["-n", a, "addr", "add", a_addr, "dev", a_if]);
        ip(&["-n", b, "addr", "add", b_addr, "dev", b_if]);
        ip(&["-n", a, "link", "set", a_if, "up"]);
        ip(&["-n", b, "link", "set", b_if, "up"]);
    }

    /// Makes namespace `ns` a router: it forwards IPv4 between the hosts linked to it, so that
    /// hosts on different links reach each other through it.
    pub fn forward(&self, ns: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot turn on forwarding in {ns}: {e}"));
        assert!(
            out.status.success(),
            "turning on forwarding in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Runs `program ARGS` inside namespace `ns`; its stdout lines are collected, its stderr
    /// goes to `stderr_file`, its stdin stays open until [`Proc::close_stdin`].
    pub fn spawn(&self, ns: &str, program: &Path, args: &[&str], stderr_file: &Path) -> Proc {
        let stderr = std::fs::File::create(stderr_file).expect("stderr file");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} in {ns}: {e}", program.display()));
        // `ip netns exec` execs the program: this PID is the program's own.
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stdout = child.stdout.take().expect("piped stdout");
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), line));
                }
            });
        }
        Proc {
            name: format!("{} in {ns}", program.display()),
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends in it (and so their peers).
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A process started in a namespace, killed (by its PID) when dropped.
pub struct Proc {
    name: String,
    stdin: Option<ChildStdin>,
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far, with the moment this test read it.
    pub fn lines(&self) -> MutexGuard<'_, Vec<(Instant, String)>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a stdout line satisfies `pred` and returns it; panics after `within`, or at
    /// once if the process exited.
    pub fn wait_line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some((_, l)) = self.lines().iter().find(|(_, l)| pred(l)) {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before the expected line", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{}: no expected line within {within:?}; got {:?}",
                self.name,
                self.lines()
                    .iter()
                    .map(|(_, l)| l.clone())
                    .collect::<Vec<_>>()
            );
            // Polling a condition under a deadline.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes the process's stdin (a `sip-peer load` ends its run then).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
