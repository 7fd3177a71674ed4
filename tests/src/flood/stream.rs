//! Hostile TCP and TLS connections, many at once, each attacker a loop that starts over when
//! siplb closes its connection.
//!
//! An [`Attack`] is what one connection does; a [`Plan`] runs `loops` attackers of one attack
//! from a set of loopback source addresses; a [`StreamFlood`] runs plans on a runtime of its
//! own until a deadline or a count of connections. Every attacker ends its connection with a
//! reset (`SO_LINGER` 0), so a churn of thousands leaves no `TIME_WAIT` behind on either side.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::fuzz::Rng;

/// What one hostile connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Random bytes (80 KiB, more than siplb's largest header block), then waits for the close.
    Junk,
    /// A request whose body runs on 4 KiB past its Content-Length, then waits for the close.
    Overlong,
    /// A header block trickled one byte every `gap`: it never completes.
    Slowloris,
    /// A TLS ClientHello cut short (the record says 512 bytes, 64 come), then silence.
    UnfinishedHello,
    /// Connect, hold the connection `hold` at most (or until siplb closes it), reset it, again.
    Churn,
}

impl Attack {
    pub const ALL: [Attack; 5] = [
        Attack::Junk,
        Attack::Overlong,
        Attack::Slowloris,
        Attack::UnfinishedHello,
        Attack::Churn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Attack::Junk => "junk",
            Attack::Overlong => "overlong",
            Attack::Slowloris => "slowloris",
            Attack::UnfinishedHello => "unfinished_hello",
            Attack::Churn => "churn",
        }
    }

    pub fn parse(s: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Where the attackers connect: plain TCP, or TLS with a client config and the name the
/// server's certificate is checked for.
#[derive(Clone)]
pub struct Target {
    pub to: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    pub fn tcp(to: SocketAddr) -> Result<Target, String> {
        Ok(Target {
            to: super::require_loopback(to)?,
            tls: None,
        })
    }

    /// TLS to `to`, checking its certificate for `name` with `config`.
    pub fn tls(to: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<Target, String> {
        let name =
            ServerName::try_from(name.to_string()).map_err(|_| format!("bad name {name}"))?;
        Ok(Target {
            to: super::require_loopback(to)?,
            tls: Some((TlsConnector::from(config), name)),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A client config trusting the CA certificates of the PEM file `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `loops` attackers doing `attack` to `target`, attacker `i` from source address
/// `sources.0 + (i mod sources.1)` (a loopback address).
#[derive(Clone)]
pub struct Plan {
    pub attack: Attack,
    pub target: Target,
    pub loops: usize,
    pub sources: (Ipv4Addr, u32),
    /// Churn: how long a connection is held at most. Slowloris: the gap between bytes.
    pub pace: Duration,
}

impl Plan {
    pub fn new(attack: Attack, target: Target, loops: usize) -> Plan {
        Plan {
            attack,
            target,
            loops,
            sources: (Ipv4Addr::new(127, 0, 0, 1), 1),
            pace: Duration::from_millis(200),
        }
    }

    /// Connect from `count` addresses starting at `first` (e.g. 127.0.1.1).
    pub fn from_sources(mut self, first: Ipv4Addr, count: u32) -> Plan {
        self.sources = (first, count.max(1));
        self
    }

    pub fn pace(mut self, pace: Duration) -> Plan {
        self.pace = pace;
        self
    }

    fn source(&self, i: usize) -> IpAddr {
        let first = u32::from(self.sources.0);
        IpAddr::V4(Ipv4Addr::from(first + (i as u32 % self.sources.1)))
    }
}

/// What the attackers of one [`Attack`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttackCounts {
    /// Connections opened (TCP handshake done).
    pub connected: u64,
    /// Connects that failed or timed out.
    pub connect_failed: u64,
    /// TLS handshakes siplb completed (attacks that do one).
    pub handshakes: u64,
    /// Connections siplb closed (end of stream or reset) before the attacker gave up.
    pub closed_by_siplb: u64,
    /// Connections on which siplb wrote something back (an error answer, a TLS alert...).
    pub answered: u64,
}

struct Counters {
    by_attack: Vec<[AtomicU64; 5]>,
    connects: AtomicU64,
    stop: AtomicBool,
}

const CONNECTED: usize = 0;
const CONNECT_FAILED: usize = 1;
const HANDSHAKES: usize = 2;
const CLOSED: usize = 3;
const ANSWERED: usize = 4;

impl Counters {
    fn add(&self, attack: Attack, what: usize) {
        let i = Attack::ALL.iter().position(|a| *a == attack).unwrap_or(0);
        self.by_attack[i][what].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self, attack: Attack) -> AttackCounts {
        let i = Attack::ALL.iter().position(|a| *a == attack).unwrap_or(0);
        let c = &self.by_attack[i];
        let get = |w: usize| c[w].load(Ordering::Relaxed);
        AttackCounts {
            connected: get(CONNECTED),
            connect_failed: get(CONNECT_FAILED),
            handshakes: get(HANDSHAKES),
            closed_by_siplb: get(CLOSED),
            answered: get(ANSWERED),
        }
    }
}

/// What a stream flood did, by attack.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    pub by_attack: Vec<(Attack, AttackCounts)>,
    pub took: Duration,
}

impl StreamReport {
    pub fn of(&self, attack: Attack) -> AttackCounts {
        self.by_attack
            .iter()
            .find(|(a, _)| *a == attack)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// Connections opened, every attack.
    pub fn connected(&self) -> u64 {
        self.by_attack.iter().map(|(_, c)| c.connected).sum()
    }
}

impl std::fmt::Display for StreamReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in {:.1} s:", self.took.as_secs_f64())?;
        for (a, c) in &self.by_attack {
            write!(
                f,
                " [{} connected {} failed {} handshakes {} closed by siplb {} answered {}]",
                a.as_str(),
                c.connected,
                c.connect_failed,
                c.handshakes,
                c.closed_by_siplb,
                c.answered
            )?;
        }
        Ok(())
    }
}

/// A running flood of hostile connections.
pub struct StreamFlood {
    counters: Arc<Counters>,
    attacks: Vec<Attack>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
}

/// How long a connect (and a TLS handshake) may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// How long an attacker waits for siplb to close a connection it is done with.
const CLOSE_WITHIN: Duration = Duration::from_secs(15);

impl StreamFlood {
    /// Runs `plans` until `limit` passed or `max_connects` connections were opened (in all).
    pub fn start(
        plans: Vec<Plan>,
        limit: Duration,
        max_connects: u64,
    ) -> Result<StreamFlood, String> {
        let attacks: Vec<Attack> = plans.iter().map(|p| p.attack).collect();
        let counters = Arc::new(Counters {
            by_attack: (0..Attack::ALL.len()).map(|_| Default::default()).collect(),
            connects: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + limit);
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("flood-stream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (p, plan) in plans.into_iter().enumerate() {
                        let plan = Arc::new(plan);
                        for i in 0..plan.loops {
                            let (plan, c) = (Arc::clone(&plan), Arc::clone(&c));
                            let seed = ((p as u64) << 32) | i as u64;
                            tasks.spawn(attacker(plan, i, seed, c, deadline, max_connects));
                        }
                    }
                    while tasks.join_next().await.is_some() {}
                });
            })
            .map_err(|e| format!("spawn: {e}"))?;
        Ok(StreamFlood {
            counters,
            attacks,
            thread: Some(thread),
            started,
        })
    }

    /// Connections opened so far, every attack.
    pub fn connected(&self) -> u64 {
        self.counters.connects.load(Ordering::Relaxed)
    }

    /// What the attackers of `attack` saw so far.
    pub fn counts(&self, attack: Attack) -> AttackCounts {
        self.counters.counts(attack)
    }

    /// Stops every attacker (each closes its connection) and reports.
    pub fn stop(mut self) -> StreamReport {
        self.halt()
    }

    fn halt(&mut self) -> StreamReport {
        self.counters.stop.store(true, Ordering::Relaxed);
        let took = self.started.elapsed();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut attacks = self.attacks.clone();
        attacks.dedup();
        StreamReport {
            by_attack: attacks
                .into_iter()
                .map(|a| (a, self.counters.counts(a)))
                .collect(),
            took,
        }
    }
}

impl Drop for StreamFlood {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.halt();
        }
    }
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

async fn attacker(
    plan: Arc<Plan>,
    i: usize,
    seed: u64,
    c: Arc<Counters>,
    deadline: tokio::time::Instant,
    max_connects: u64,
) {
    let mut rng = Rng::new(seed ^ 0xf100d);
    let stopped = || c.stop.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline;
    while !stopped() {
        if c.connects.fetch_add(1, Ordering::Relaxed) >= max_connects {
            return;
        }
        let tcp = match connect(&plan, i).await {
            Ok(tcp) => tcp,
            Err(_) => {
                c.add(plan.attack, CONNECT_FAILED);
                // A refused connect (the backlog full, ports out): back off a little.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        c.add(plan.attack, CONNECTED);
        let until = deadline.min(tokio::time::Instant::now() + CLOSE_WITHIN);
        let ended = tokio::time::timeout_at(until, run(&plan, tcp, &mut rng, &c, &stopped)).await;
        if let Ok(Ended::BySiplb { answered }) = ended {
            c.add(plan.attack, CLOSED);
            if answered {
                c.add(plan.attack, ANSWERED);
            }
        }
    }
}

async fn connect(plan: &Plan, i: usize) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(plan.source(i), 0))?;
    let tcp = tokio::time::timeout(CONNECT_WITHIN, socket.connect(plan.target.to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // Reset on drop: no TIME_WAIT on either side, however many connections churn.
    tcp.set_zero_linger()?;
    Ok(tcp)
}

/// How a hostile connection ended.
enum Ended {
    /// siplb closed it; `answered`: it wrote something first.
    BySiplb { answered: bool },
    /// The attacker gave up (its time, or the flood's, was over).
    ByUs,
}

async fn run(
    plan: &Plan,
    tcp: TcpStream,
    rng: &mut Rng,
    c: &Counters,
    stopped: &impl Fn() -> bool,
) -> Ended {
    if plan.attack == Attack::UnfinishedHello || plan.attack == Attack::Churn {
        return raw(plan, tcp, rng, stopped).await;
    }
    let mut io: Box<dyn Io> = match &plan.target.tls {
        None => Box::new(tcp),
        Some((connector, name)) => {
            match tokio::time::timeout(CONNECT_WITHIN, connector.connect(name.clone(), tcp)).await {
                Ok(Ok(tls)) => {
                    c.add(plan.attack, HANDSHAKES);
                    Box::new(tls)
                }
                Ok(Err(_)) => return Ended::BySiplb { answered: false },
                Err(_) => return Ended::ByUs,
            }
        }
    };
    match plan.attack {
        Attack::Junk => {
            let junk: Vec<u8> = (0..80 * 1024).map(|_| rng.next_u64() as u8).collect();
            // siplb may close before taking it all: a failed write is its close.
            for chunk in junk.chunks(4096) {
                if io.write_all(chunk).await.is_err() || io.flush().await.is_err() {
                    return Ended::BySiplb { answered: false };
                }
            }
            until_closed(&mut io, stopped).await
        }
        Attack::Overlong => {
            let n = rng.next_u64();
            let head = format!(
                "REGISTER sip:unrouted.example SIP/2.0\r\n\
                 Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKov{n:x}\r\nMax-Forwards: 70\r\n\
                 From: <sip:ov@unrouted.example>;tag=o{n:x}\r\nTo: <sip:ov@unrouted.example>\r\n\
                 Call-ID: flood-overlong-{n:x}\r\nCSeq: 1 REGISTER\r\nContent-Type: text/plain\r\n\
                 Content-Length: 10\r\n\r\n"
            );
            let mut bytes = head.into_bytes();
            bytes.extend(std::iter::repeat_n(b'x', 4096));
            if io.write_all(&bytes).await.is_err() || io.flush().await.is_err() {
                return Ended::BySiplb { answered: false };
            }
            until_closed(&mut io, stopped).await
        }
        Attack::Slowloris => {
            let head = format!(
                "REGISTER sip:contoso.com SIP/2.0\r\nX-Slow: {}",
                "s".repeat(100_000)
            );
            let (mut r, mut w) = tokio::io::split(io);
            let mut buf = [0u8; 512];
            let mut answered = false;
            for byte in head.as_bytes() {
                if stopped() {
                    return Ended::ByUs;
                }
                if w.write_all(std::slice::from_ref(byte)).await.is_err()
                    || w.flush().await.is_err()
                {
                    return Ended::BySiplb { answered };
                }
                // Trickling: the pace is the attack. A read meanwhile tells when siplb closes.
                match tokio::time::timeout(plan.pace, r.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ended::BySiplb { answered },
                    Ok(Ok(_)) => answered = true,
                    Err(_) => {}
                }
            }
            Ended::ByUs
        }
        Attack::UnfinishedHello | Attack::Churn => Ended::ByUs,
    }
}

/// The attacks on the bare TCP connection, before any TLS.
async fn raw(plan: &Plan, mut tcp: TcpStream, rng: &mut Rng, stopped: &impl Fn() -> bool) -> Ended {
    if plan.attack == Attack::UnfinishedHello {
        // A TLS handshake record announcing 512 bytes, a ClientHello header announcing 508,
        // the legacy version and 54 bytes of the random: the rest never comes.
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.extend((0..53).map(|_| rng.next_u64() as u8));
        if tcp.write_all(&hello).await.is_err() {
            return Ended::BySiplb { answered: false };
        }
        return until_closed(&mut tcp, stopped).await;
    }
    // Churn: held until siplb closes it (a refusal) or `pace` passed.
    match tokio::time::timeout(plan.pace, until_closed(&mut tcp, stopped)).await {
        Ok(e) => e,
        Err(_) => Ended::ByUs,
    }
}

/// Reads until siplb closes the connection, or the flood stops.
async fn until_closed<S: AsyncRead + Unpin + ?Sized>(
    io: &mut S,
    stopped: &impl Fn() -> bool,
) -> Ended {
    let mut buf = [0u8; 4096];
    let mut answered = false;
    loop {
        if stopped() {
            return Ended::ByUs;
        }
        match tokio::time::timeout(Duration::from_millis(200), io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ended::BySiplb { answered },
            Ok(Ok(_)) => answered = true,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_parse_from_their_names() {
        for a in Attack::ALL {
            assert_eq!(Attack::parse(a.as_str()), Some(a));
        }
        assert_eq!(Attack::parse("nope"), None);
    }

    #[test]
    fn attackers_spread_over_their_sources() {
        let target = Target::tcp("127.0.0.1:5060".parse().unwrap()).unwrap();
        let plan =
            Plan::new(Attack::Churn, target, 10).from_sources(Ipv4Addr::new(127, 0, 1, 1), 3);
        let sources: Vec<IpAddr> = (0..4).map(|i| plan.source(i)).collect();
        assert_eq!(
            sources,
            ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.1"]
                .map(|s| s.parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn a_target_off_loopback_is_refused() {
        assert!(Target::tcp("192.0.2.1:5060".parse().unwrap()).is_err());
    }
}
