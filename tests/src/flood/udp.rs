//! Junk datagrams at a set rate.
//!
//! [`Junk`] makes one datagram of each [`Kind`] in turn (so a flood of `n` datagrams holds each
//! kind `n / 6` times, whatever the seed); [`UdpFlood`] sends them from a thread, paced by the
//! clock, from several sockets (several source ports, as many scanners use), bounded by a
//! deadline and a count. What siplb answers to the flood (404s, 400s) is read and counted, so
//! the flood's own sockets never fill up.
//!
//! The hosts the junk names are loopback addresses or IPv6 documentation addresses that
//! siplb's IPv4 sockets cannot send to; siplb answers the source address (`received`/`rport`),
//! which is ours.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fuzz::{Mutator, Rng};

/// The kinds of junk datagram, in the order a flood sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1 to 1,500 random bytes.
    Random,
    /// A SIP message truncated, flipped or stretched ([`Mutator`]).
    Mutated,
    /// 65,000 bytes: a REGISTER with a huge header, or noise.
    Oversized,
    /// A well-formed REGISTER or INVITE for a domain no route takes (siplb answers 404).
    NoRoute,
    /// A `200 OK` whose top Via carries a siplb-looking branch, from a source that is no
    /// server (siplb drops it, `unknown_sender`).
    ForgedResponse,
    /// A scanner's OPTIONS sweep or REGISTER guess of an extension (`User-Agent:
    /// friendly-scanner`), addressed to siplb's IP rather than a routed domain.
    Scanner,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Random,
        Kind::Mutated,
        Kind::Oversized,
        Kind::NoRoute,
        Kind::ForgedResponse,
        Kind::Scanner,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Mutated => "mutated",
            Kind::Oversized => "oversized",
            Kind::NoRoute => "no_route",
            Kind::ForgedResponse => "forged_response",
            Kind::Scanner => "scanner",
        }
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// The size of an oversized datagram (IPv4 allows 65,507 bytes of UDP payload).
pub const OVERSIZED: usize = 65_000;

/// Makes junk datagrams, one of each of its kinds in turn.
pub struct Junk {
    kinds: Vec<Kind>,
    rng: Rng,
    mutator: Mutator,
    siplb: SocketAddr,
    /// The address the junk's Vias name (the flood's own socket).
    source: SocketAddr,
    n: u64,
}

impl Junk {
    /// Junk of every [`Kind`] for siplb at `siplb`, sent from `source`, drawn from `seed`.
    pub fn new(seed: u64, siplb: SocketAddr, source: SocketAddr) -> Junk {
        Junk::of(&Kind::ALL, seed, siplb, source)
    }

    /// Junk of `kinds` only (every kind when empty).
    pub fn of(kinds: &[Kind], seed: u64, siplb: SocketAddr, source: SocketAddr) -> Junk {
        Junk {
            kinds: if kinds.is_empty() {
                Kind::ALL.to_vec()
            } else {
                kinds.to_vec()
            },
            rng: Rng::new(seed),
            mutator: Mutator::new(seed ^ 0x5a5a, siplb),
            siplb,
            source,
            n: 0,
        }
    }

    /// The next datagram and its kind.
    pub fn next_datagram(&mut self) -> (Kind, Vec<u8>) {
        let kind = self.kinds[(self.n % self.kinds.len() as u64) as usize];
        self.n += 1;
        let bytes = match kind {
            Kind::Random => {
                let len = 1 + self.rng.below(1500);
                (0..len).map(|_| self.rng.next_u64() as u8).collect()
            }
            Kind::Mutated => self.mutator.next_datagram(),
            Kind::Oversized => self.oversized(),
            Kind::NoRoute => self.no_route(),
            Kind::ForgedResponse => self.forged_response(),
            Kind::Scanner => self.scanner(),
        };
        (kind, bytes)
    }

    fn oversized(&mut self) -> Vec<u8> {
        if self.rng.percent(50) {
            return (0..OVERSIZED).map(|_| self.rng.next_u64() as u8).collect();
        }
        let n = self.n;
        let head = format!(
            "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {src};rport;branch=z9hG4bKbig{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:big{n}@contoso.com>;tag=b{n}\r\nTo: <sip:big{n}@contoso.com>\r\n\
             Call-ID: flood-big-{n}\r\nCSeq: 1 REGISTER\r\nX-Pad: ",
            src = self.source
        );
        let mut d = head.into_bytes();
        let tail = b"\r\nContent-Length: 0\r\n\r\n";
        d.resize(OVERSIZED - tail.len(), b'a');
        d.extend_from_slice(tail);
        d
    }

    fn no_route(&mut self) -> Vec<u8> {
        let n = self.n;
        let src = self.source;
        let user = self.rng.below(100_000);
        let method = if self.rng.percent(50) {
            "REGISTER"
        } else {
            "INVITE"
        };
        format!(
            "{method} sip:user{user}@unrouted.example SIP/2.0\r\n\
             Via: SIP/2.0/UDP {src};rport;branch=z9hG4bKnr{n:x}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:user{user}@unrouted.example>;tag=nr{n:x}\r\n\
             To: <sip:user{user}@unrouted.example>\r\n\
             Call-ID: flood-no-route-{n:x}\r\n\
             CSeq: 1 {method}\r\n\
             Contact: <sip:user{user}@{src}>\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn forged_response(&mut self) -> Vec<u8> {
        let n = self.n;
        let branch = self.rng.next_u64();
        let port = 1024 + self.rng.below(60_000);
        let code = *self
            .rng
            .pick(&["200 OK", "180 Ringing", "503 Service Unavailable"]);
        format!(
            "SIP/2.0 {code}\r\n\
             Via: SIP/2.0/UDP {siplb};branch=z9hG4bK-lb{branch:016x}\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};rport={port};received=127.0.0.1;branch=z9hG4bKf{n:x}\r\n\
             From: <sip:victim@contoso.com>;tag=f{n:x}\r\n\
             To: <sip:victim@contoso.com>;tag=g{n:x}\r\n\
             Call-ID: flood-forged-{n:x}\r\n\
             CSeq: 1 REGISTER\r\n\
             Content-Length: 0\r\n\r\n",
            siplb = self.siplb
        )
        .into_bytes()
    }

    /// What a SIP scanner sends: an OPTIONS to an extension at the target's IP to learn what
    /// answers, or a REGISTER guessing an extension, with the scanner's well-known User-Agent.
    fn scanner(&mut self) -> Vec<u8> {
        let n = self.n;
        let src = self.source;
        let ext = 100 + self.rng.below(9900);
        let target = self.siplb.ip();
        let method = if self.rng.percent(50) {
            "OPTIONS"
        } else {
            "REGISTER"
        };
        format!(
            "{method} sip:{ext}@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {src};branch=z9hG4bK-{n:x};rport\r\n\
             Max-Forwards: 70\r\n\
             To: \"{ext}\"<sip:{ext}@{target}>\r\n\
             From: \"{ext}\"<sip:{ext}@{target}>;tag={n:08x}\r\n\
             User-Agent: friendly-scanner\r\n\
             Call-ID: {n}-scan\r\n\
             Contact: <sip:{ext}@{src}>\r\n\
             CSeq: 1 {method}\r\n\
             Accept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }
}

/// Counts of a flood, by [`Kind`].
#[derive(Debug, Clone, Default)]
pub struct UdpReport {
    /// Datagrams sent, by kind (the index of [`Kind::ALL`]).
    pub sent: [u64; 6],
    /// Datagrams the kernel refused to send (a full buffer, say).
    pub send_errors: u64,
    /// Datagrams siplb sent back to the flood's sockets (its own answers: 404, 400...).
    pub answers: u64,
    /// How long the flood ran.
    pub took: Duration,
}

impl UdpReport {
    pub fn total(&self) -> u64 {
        self.sent.iter().sum()
    }

    pub fn of(&self, kind: Kind) -> u64 {
        self.sent[kind.index()]
    }

    /// Datagrams sent per second.
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.took.as_secs_f64().max(1e-3)
    }
}

impl std::fmt::Display for UdpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} in {:.1} s ({:.0}/s):",
            self.total(),
            self.took.as_secs_f64(),
            self.rate()
        )?;
        for k in Kind::ALL {
            write!(f, " {} {}", k.as_str(), self.of(k))?;
        }
        write!(
            f,
            "; send errors {}; answers {}",
            self.send_errors, self.answers
        )
    }
}

struct Counts {
    sent: [AtomicU64; 6],
    send_errors: AtomicU64,
    answers: AtomicU64,
    stop: AtomicBool,
}

/// A running flood of junk datagrams.
pub struct UdpFlood {
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

/// How many datagrams leave per tick of the pacer at most: the pacer wakes every millisecond
/// and sends what is due.
const TICK: Duration = Duration::from_millis(1);

impl UdpFlood {
    /// Starts sending junk to `to` at `rate` datagrams per second from `sockets` loopback
    /// sockets in turn, until `limit` passed or `max` datagrams were sent.
    pub fn start(
        to: SocketAddr,
        rate: u32,
        sockets: usize,
        (limit, max): (Duration, u64),
        seed: u64,
    ) -> Result<UdpFlood, String> {
        UdpFlood::start_of(&Kind::ALL, to, rate, sockets, (limit, max), seed)
    }

    /// [`UdpFlood::start`] with junk of `kinds` only.
    pub fn start_of(
        kinds: &[Kind],
        to: SocketAddr,
        rate: u32,
        sockets: usize,
        (limit, max): (Duration, u64),
        seed: u64,
    ) -> Result<UdpFlood, String> {
        let kinds = kinds.to_vec();
        super::require_loopback(to)?;
        let bind = if to.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let socks: Vec<UdpSocket> = (0..sockets.max(1))
            .map(|_| UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}")))
            .collect::<Result<_, _>>()?;
        let counts = Arc::new(Counts {
            sent: Default::default(),
            send_errors: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let started = Instant::now();
        let deadline = started + limit;
        let mut threads = Vec::new();
        for s in &socks {
            let s = s.try_clone().map_err(|e| format!("clone socket: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| format!("read timeout: {e}"))?;
            let counts = Arc::clone(&counts);
            threads.push(
                std::thread::Builder::new()
                    .name("flood-udp-read".into())
                    .spawn(move || drain(&s, deadline + Duration::from_secs(1), &counts))
                    .map_err(|e| format!("spawn: {e}"))?,
            );
        }
        let counts2 = Arc::clone(&counts);
        let sender = std::thread::Builder::new()
            .name("flood-udp".into())
            .spawn(move || send(&socks, &kinds, to, rate, (deadline, max), seed, &counts2))
            .map_err(|e| format!("spawn: {e}"))?;
        threads.insert(0, sender);
        Ok(UdpFlood {
            counts,
            threads,
            started,
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.counts
            .sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether the flood is still sending (neither its deadline nor its count reached).
    pub fn is_running(&self) -> bool {
        self.threads.first().is_some_and(|t| !t.is_finished())
    }

    /// Stops the flood (if still running) and reports what it sent.
    pub fn stop(mut self) -> UdpReport {
        self.halt()
    }

    fn halt(&mut self) -> UdpReport {
        self.counts.stop.store(true, Ordering::Relaxed);
        let took = self.started.elapsed();
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        let mut sent = [0u64; 6];
        for (s, c) in sent.iter_mut().zip(&self.counts.sent) {
            *s = c.load(Ordering::Relaxed);
        }
        UdpReport {
            sent,
            send_errors: self.counts.send_errors.load(Ordering::Relaxed),
            answers: self.counts.answers.load(Ordering::Relaxed),
            took,
        }
    }
}

impl Drop for UdpFlood {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.halt();
        }
    }
}

fn send(
    socks: &[UdpSocket],
    kinds: &[Kind],
    to: SocketAddr,
    rate: u32,
    (deadline, max): (Instant, u64),
    seed: u64,
    counts: &Counts,
) {
    let mut junks: Vec<Junk> = socks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let source = s.local_addr().unwrap_or(to);
            Junk::of(kinds, seed.wrapping_add(i as u64), to, source)
        })
        .collect();
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !counts.stop.load(Ordering::Relaxed) && sent < max {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        // Datagram `i` is due at start + i / rate.
        let due = (now - start).as_secs_f64() * f64::from(rate);
        let due = (due as u64).min(max);
        while sent < due {
            let i = (sent % socks.len() as u64) as usize;
            let (kind, bytes) = junks[i].next_datagram();
            match socks[i].send_to(&bytes, to) {
                Ok(_) => {
                    counts.sent[kind.index()].fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counts.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            sent += 1;
        }
        // Pacing the flood by the clock.
        std::thread::sleep(TICK);
    }
}

fn drain(socket: &UdpSocket, deadline: Instant, counts: &Counts) {
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < deadline && !counts.stop.load(Ordering::Relaxed) {
        if socket.recv_from(&mut buf).is_ok() {
            counts.answers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_cycles_through_every_kind_and_keeps_its_sizes() {
        let siplb: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut junk = Junk::new(1, siplb, source);
        for round in 0..20 {
            for expected in Kind::ALL {
                let (kind, bytes) = junk.next_datagram();
                assert_eq!(kind, expected, "round {round}");
                assert!(bytes.len() <= 65_507, "{kind:?}: {} bytes", bytes.len());
                if kind == Kind::Oversized {
                    assert_eq!(bytes.len(), OVERSIZED);
                }
            }
        }
    }

    #[test]
    fn scanner_and_no_route_junk_name_only_loopback_or_unrouted_hosts() {
        let siplb: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut junk = Junk::new(2, siplb, source);
        for _ in 0..60 {
            let (kind, bytes) = junk.next_datagram();
            if matches!(kind, Kind::NoRoute | Kind::Scanner | Kind::ForgedResponse) {
                let text = String::from_utf8(bytes).expect("text");
                let via = text.lines().find(|l| l.starts_with("Via:")).expect("a Via");
                assert!(via.contains("127.0.0.1"), "{via}");
            }
        }
    }

    #[test]
    fn a_flood_refuses_a_target_off_loopback() {
        let off: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let r = UdpFlood::start(off, 10, 1, (Duration::from_millis(10), 1), 1);
        assert!(r.is_err());
    }
}
