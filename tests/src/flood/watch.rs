//! Watching siplb through a flood: its resident memory and CPU time from `/proc/PID`, and its
//! `/healthz` polled at a steady pace, each poll's status and latency kept.
//!
//! A poll that gets no answer within [`POLL_TIMEOUT`] (no connection, no status line) is kept as
//! a failure with its reason, never retried: "every poll answered 200" means every one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one `/healthz` poll may take before it counts as unanswered.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// `VmRSS` of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `utime + stime` of process `pid` (every thread) in clock ticks, from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub const TICKS_PER_SEC: u64 = 100;

/// One `/healthz` poll.
#[derive(Debug, Clone)]
pub struct Poll {
    /// When it was sent, from the start of the watch.
    pub at: Duration,
    /// The HTTP status, or why there was none.
    pub status: Result<u16, String>,
    /// How long the answer took.
    pub latency: Duration,
}

/// What a watch saw.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// `VmRSS` samples in KiB, in order.
    pub rss_kib: Vec<u64>,
    /// `/healthz` polls, in order.
    pub polls: Vec<Poll>,
    /// CPU time of siplb during the watch, in clock ticks.
    pub cpu_ticks: u64,
    pub took: Duration,
}

impl Watched {
    pub fn max_rss_kib(&self) -> u64 {
        self.rss_kib.iter().copied().max().unwrap_or(0)
    }

    /// The polls not answered 200.
    pub fn failed_polls(&self) -> Vec<&Poll> {
        self.polls.iter().filter(|p| p.status != Ok(200)).collect()
    }

    /// The `q` quantile (0..=1) of the polls' latencies.
    pub fn latency(&self, q: f64) -> Duration {
        let mut l: Vec<Duration> = self.polls.iter().map(|p| p.latency).collect();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        let i = ((l.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        l[i]
    }

    /// siplb's CPU during the watch, as a share of one core.
    pub fn cpu_share(&self) -> f64 {
        self.cpu_ticks as f64 / TICKS_PER_SEC as f64 / self.took.as_secs_f64().max(1e-3)
    }
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rss max {} KiB over {} samples; healthz {} polls, {} not 200, latency p50 {:.1} ms \
             p99 {:.1} ms max {:.1} ms; cpu {:.2} s ({:.0}% of a core) in {:.1} s",
            self.max_rss_kib(),
            self.rss_kib.len(),
            self.polls.len(),
            self.failed_polls().len(),
            self.latency(0.5).as_secs_f64() * 1e3,
            self.latency(0.99).as_secs_f64() * 1e3,
            self.latency(1.0).as_secs_f64() * 1e3,
            self.cpu_ticks as f64 / TICKS_PER_SEC as f64,
            self.cpu_share() * 100.0,
            self.took.as_secs_f64()
        )
    }
}

/// A running watch of one siplb process.
pub struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Watched>>,
    threads: Vec<JoinHandle<()>>,
    pid: u32,
    cpu_at_start: u64,
    started: Instant,
}

impl Watch {
    /// Samples `VmRSS` of `pid` every `every` and polls `GET /healthz` on `ops` (when given)
    /// every `every`, until stopped or `limit` passed.
    pub fn start(pid: u32, ops: Option<SocketAddr>, every: Duration, limit: Duration) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Watched::default()));
        let started = Instant::now();
        let deadline = started + limit;
        let mut threads = Vec::new();
        {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Some(kib) = rss_kib(pid) {
                        lock(&seen).rss_kib.push(kib);
                    }
                    // Sampling at a pace, not waiting for a result.
                    std::thread::sleep(every);
                }
            }));
        }
        if let Some(ops) = ops {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            threads.push(std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let at = started.elapsed();
                    let sent = Instant::now();
                    let status = healthz(ops);
                    let latency = sent.elapsed();
                    lock(&seen).polls.push(Poll {
                        at,
                        status,
                        latency,
                    });
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        // Polling at a pace.
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            }));
        }
        Watch {
            stop,
            seen,
            threads,
            pid,
            cpu_at_start: cpu_ticks(pid).unwrap_or(0),
            started,
        }
    }

    /// The samples so far.
    pub fn so_far(&self) -> Watched {
        lock(&self.seen).clone()
    }

    /// Stops watching and returns everything seen.
    pub fn stop(mut self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        let mut w = lock(&self.seen).clone();
        w.cpu_ticks = cpu_ticks(self.pid)
            .unwrap_or(0)
            .saturating_sub(self.cpu_at_start);
        w.took = self.started.elapsed();
        w
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `GET /healthz` on a fresh connection: the status code, or why there was none within
/// [`POLL_TIMEOUT`].
pub fn healthz(ops: SocketAddr) -> Result<u16, String> {
    let deadline = Instant::now() + POLL_TIMEOUT;
    let mut s =
        TcpStream::connect_timeout(&ops, POLL_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {ops}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Err("closed before a status line".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("no status line within {POLL_TIMEOUT:?}"));
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", text.lines().next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        assert!(cpu_ticks(pid).is_some());
    }

    #[test]
    fn latency_quantiles_come_from_the_polls() {
        let polls = (1..=100)
            .map(|ms| Poll {
                at: Duration::ZERO,
                status: Ok(200),
                latency: Duration::from_millis(ms),
            })
            .collect();
        let w = Watched {
            polls,
            ..Watched::default()
        };
        assert_eq!(w.latency(0.5), Duration::from_millis(51));
        assert_eq!(w.latency(1.0), Duration::from_millis(100));
        assert!(w.failed_polls().is_empty());
    }
}
