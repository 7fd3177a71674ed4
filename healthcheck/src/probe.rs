//! Probers: SIP OPTIONS over a server's own transport (UDP, TCP or TLS), a TCP connect (the
//! check Microsoft's load-balancer guidance uses on a Front End's port 5061) and a TLS
//! handshake.
//!
//! A prober only measures; it does not decide. [`probe_loop`] probes one server every
//! `interval` and hands each [`Outcome`] to the caller, whose state machine decides.

mod stream;
#[cfg(test)]
mod stream_tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use crate::server::{Failure, Outcome};

/// How a server is probed (`probe = "options" | "tcp-connect" | "tls-connect"` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// SIP OPTIONS over the server's transport; any final answer but 500, 503 and 504 means
    /// alive.
    Options,
    /// A TCP connect (the check Microsoft's load-balancer guidance uses on a Front End's port
    /// 5061); an accepted connection means alive.
    TcpConnect,
    /// A TCP connect and a complete TLS handshake, the server's certificate verified (and
    /// siplb's client certificate accepted, when one is configured).
    TlsConnect,
}

impl ProbeKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Options => "options",
            ProbeKind::TcpConnect => "tcp-connect",
            ProbeKind::TlsConnect => "tls-connect",
        }
    }
}

/// What to probe and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// How many probes confirm a failure back to back (`fall - 1`: the state machine needs
    /// `fall` failures in a row).
    pub confirm: u32,
    /// How long after the start the first probe goes out (the supervisor spreads the first
    /// probes of many servers started at once; see [`probe_loop`]).
    pub first_after: Duration,
}

/// The transport siplb speaks to a server, which OPTIONS probes use too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The transport as a Via names it (`SIP/2.0/TCP`).
    fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// How to open TLS to one server: the connector carries the trust anchors and the client
/// certificate to present, `name` is what the server's certificate must name.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One server as its probes see it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// The server's TLS settings; needed by OPTIONS over TLS and by `tls-connect`. `None` for a
    /// TLS server makes those probes fail with [`crate::TlsFailure::NoSettings`].
    pub tls: Option<TlsClient>,
}

impl Target {
    /// A target reached over UDP (no TLS).
    pub fn udp(addr: SocketAddr) -> Self {
        Target {
            addr,
            transport: Transport::Udp,
            tls: None,
        }
    }
}

/// Maps an I/O error of a probe to why it failed.
pub(crate) fn failure_of(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Failure::Refused,
        io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Unreachable,
    }
}

/// One TCP connect probe.
pub(crate) async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Outcome::Alive {
            rtt: start.elapsed(),
            code: None,
        },
        Ok(Err(e)) => Outcome::Failed(failure_of(&e)),
        Err(_) => Outcome::Failed(Failure::Timeout),
    }
}

/// SIP OPTIONS probes to one server over a UDP socket connected to it, so that an ICMP port
/// unreachable comes back as "refused" at once instead of waiting for the timeout.
pub(crate) struct OptionsProber {
    socket: UdpSocket,
    target: SocketAddr,
    local: SocketAddr,
    seq: u64,
    tag: u64,
}

/// Status codes of an OPTIONS answer that mean the server is not serving.
fn is_failure_code(code: u16) -> bool {
    matches!(code, 500 | 503 | 504)
}

impl OptionsProber {
    /// Opens the probe socket for `target`.
    pub(crate) async fn new(target: SocketAddr) -> io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(io::Error::other)?;
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(target).await?;
        let local = socket.local_addr()?;
        let tag = u64::from(local.port()) << 32 | u64::from(std::process::id());
        Ok(OptionsProber {
            socket,
            target,
            local,
            seq: 0,
            tag,
        })
    }

    /// The OPTIONS request of probe number `seq`.
    fn request(&self, call_id: &str) -> String {
        let probe = Probe {
            transport: Transport::Udp,
            target: self.target,
            local: self.local,
            tag: self.tag,
            seq: self.seq,
        };
        probe.request(call_id)
    }

    /// Sends one OPTIONS and waits up to `timeout` for its final answer.
    pub(crate) async fn probe(&mut self, timeout: Duration) -> Outcome {
        self.seq += 1;
        let call_id = format!("probe-{:x}-{}@siplb", self.tag, self.seq);
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(e) = self.socket.send(self.request(&call_id).as_bytes()).await {
            return Outcome::Failed(failure_of(&e));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Err(_) => return Outcome::Failed(Failure::Timeout),
                Ok(Err(e)) => return Outcome::Failed(failure_of(&e)),
                Ok(Ok(n)) => n,
            };
            // Answers to earlier, timed-out probes (or anything else) are not this probe's.
            let Some(code) = answer_code(&buf[..n], &call_id) else {
                continue;
            };
            if code < 200 {
                continue;
            }
            return outcome_of_code(code, start.elapsed());
        }
    }
}

/// The status code of `msg` if it is a response carrying `call_id`.
pub(crate) fn answer_code(msg: &[u8], call_id: &str) -> Option<u16> {
    let text = std::str::from_utf8(msg).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.strip_prefix("SIP/2.0 ")?;
    let code: u16 = status.get(..3)?.parse().ok()?;
    let ours = lines.take_while(|l| !l.is_empty()).any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            let name = name.trim();
            (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                && value.trim() == call_id
        })
    });
    ours.then_some(code)
}

/// One OPTIONS probe's identity: who sends it where, over what, and its number.
pub(crate) struct Probe {
    pub(crate) transport: Transport,
    pub(crate) target: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) tag: u64,
    pub(crate) seq: u64,
}

impl Probe {
    /// The Call-ID of this probe.
    pub(crate) fn call_id(&self) -> String {
        format!("probe-{:x}-{}@siplb", self.tag, self.seq)
    }

    /// The OPTIONS request; over TCP and TLS the request-URI says so (`;transport=tcp`), and
    /// Content-Length (always written) frames it.
    pub(crate) fn request(&self, call_id: &str) -> String {
        let (target, local, seq, tag) = (self.target, self.local, self.seq, self.tag);
        let via = self.transport.via_name();
        let uri_param = match self.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        format!(
            "OPTIONS sip:{target}{uri_param} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK-probe-{tag:x}-{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:siplb@{local}>;tag=probe{tag:x}\r\n\
             To: <sip:{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {seq} OPTIONS\r\n\
             User-Agent: siplb-probe\r\n\
             Accept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }
}

/// What an OPTIONS answer with final status `code` says.
fn outcome_of_code(code: u16, rtt: Duration) -> Outcome {
    if is_failure_code(code) {
        Outcome::Failed(Failure::Reply(code))
    } else {
        Outcome::Alive {
            rtt,
            code: Some(code),
        }
    }
}

/// A way to ask a server's probe task for a probe now, outside its interval: the wire path saw
/// a sign of trouble (a 503, an ICMP error) and the probes are to confirm or clear it. Clones
/// share one task. An ask while a probe is out, or while no task listens, is dropped: a burst
/// of asks is one probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeNow(Arc<tokio::sync::Notify>);

impl ProbeNow {
    /// Asks for a probe now.
    pub fn ask(&self) {
        self.0.notify_waiters();
    }

    /// Resolves at the next ask (for a probe task: wait for this and the interval together).
    pub async fn asked(&self) {
        self.0.notified().await;
    }
}

/// Probes `target` every `settings.interval` for as long as the task lives, handing each
/// outcome to `report`. Probing starts at once.
///
/// OPTIONS goes over the server's own transport: over UDP one socket serves every probe; over
/// TCP and TLS each probe opens its own connection (connect, handshake, OPTIONS, answer,
/// close). That costs a handshake per probe, but a probe then says exactly what a new
/// connection to the server would meet, and no connection state outlives a probe.
///
/// A failure is confirmed at once: up to `settings.confirm` further probes go out back to back
/// (each still bounded by `timeout`) instead of one per interval. A hung server is then down
/// within `interval + fall × timeout` rather than `fall × interval + timeout`, while a server
/// that misses a single probe is back in good standing one probe later.
///
/// An ask through `now` ([`ProbeNow::ask`]) sends the next probe at once, and the interval
/// runs on from it; asked probes go out at most once per `timeout` (counted from the start of
/// the probe before), so a flood of asks costs a server one probe per `timeout` at the most.
pub async fn probe_loop(
    target: Target,
    settings: ProbeSettings,
    now: ProbeNow,
    mut report: impl FnMut(Outcome),
) {
    let first = tokio::time::Instant::now() + settings.first_after;
    let mut tick = tokio::time::interval_at(first, settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut options: Option<OptionsProber> = None;
    let mut failures_in_a_row = 0u32;
    let mut seq = 0u64;
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        let confirming = failures_in_a_row > 0 && failures_in_a_row <= settings.confirm;
        if !confirming {
            tokio::select! {
                _ = tick.tick() => {}
                _ = now.asked() => {
                    if let Some(at) = last_start {
                        tokio::time::sleep_until(at + settings.timeout).await;
                    }
                    tick.reset();
                }
            }
        }
        last_start = Some(tokio::time::Instant::now());
        seq += 1;
        let outcome = match (settings.kind, target.transport) {
            (ProbeKind::TcpConnect, _) => probe_tcp(target.addr, settings.timeout).await,
            (ProbeKind::TlsConnect, _) => stream::tls_connect(&target, settings.timeout).await,
            (ProbeKind::Options, Transport::Tcp | Transport::Tls) => {
                stream::options(&target, settings.timeout, seq).await
            }
            (ProbeKind::Options, Transport::Udp) => {
                let mut opened = Ok(());
                if options.is_none() {
                    match OptionsProber::new(target.addr).await {
                        Ok(p) => options = Some(p),
                        Err(e) => opened = Err(failure_of(&e)),
                    }
                }
                match (options.as_mut(), opened) {
                    (Some(p), _) => p.probe(settings.timeout).await,
                    (None, Err(f)) => Outcome::Failed(f),
                    (None, Ok(())) => Outcome::Failed(Failure::Unreachable),
                }
            }
        };
        failures_in_a_row = match outcome {
            Outcome::Alive { .. } => 0,
            Outcome::Failed(_) => failures_in_a_row.saturating_add(1),
        };
        if confirming
            && matches!(outcome, Outcome::Failed(_))
            && failures_in_a_row > settings.confirm
        {
            // Confirmed: back to one probe per interval, counted from now.
            tick.reset();
        }
        report(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP SIP server that answers OPTIONS with `code` (or not at all).
    async fn sip_server(code: Option<u16>) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let Some(code) = code else { continue };
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let call_id = req
                    .lines()
                    .find(|l| l.starts_with("Call-ID:"))
                    .unwrap_or_default();
                // A stale answer first (another Call-ID), a 100 Trying, then the final answer.
                let stale = "SIP/2.0 200 OK\r\nCall-ID: other\r\n\r\n".to_string();
                let trying = format!("SIP/2.0 100 Trying\r\n{call_id}\r\n\r\n");
                let fin =
                    format!("SIP/2.0 {code} Whatever\r\n{call_id}\r\nContent-Length: 0\r\n\r\n");
                for m in [stale, trying, fin] {
                    let _ = s.send_to(m.as_bytes(), from).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn options_reads_the_final_answer_of_its_own_probe() {
        let addr = sip_server(Some(200)).await;
        let mut p = OptionsProber::new(addr).await.unwrap();
        for _ in 0..3 {
            match p.probe(Duration::from_secs(2)).await {
                Outcome::Alive { code, .. } => assert_eq!(code, Some(200)),
                other => panic!("{other:?}"),
            }
        }
        let addr = sip_server(Some(404)).await;
        let mut p = OptionsProber::new(addr).await.unwrap();
        assert!(matches!(
            p.probe(Duration::from_secs(2)).await,
            Outcome::Alive {
                code: Some(404),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn options_tells_timeout_refused_and_503_apart() {
        let silent = sip_server(None).await;
        let mut p = OptionsProber::new(silent).await.unwrap();
        assert_eq!(
            p.probe(Duration::from_millis(200)).await,
            Outcome::Failed(Failure::Timeout)
        );

        let busy = sip_server(Some(503)).await;
        let mut p = OptionsProber::new(busy).await.unwrap();
        assert_eq!(
            p.probe(Duration::from_secs(2)).await,
            Outcome::Failed(Failure::Reply(503))
        );

        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let mut p = OptionsProber::new(closed).await.unwrap();
        assert_eq!(
            p.probe(Duration::from_secs(2)).await,
            Outcome::Failed(Failure::Refused)
        );
    }

    #[tokio::test]
    async fn tcp_connect_tells_open_from_refused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        assert!(matches!(
            probe_tcp(open, Duration::from_secs(2)).await,
            Outcome::Alive { code: None, .. }
        ));
        drop(l);
        assert_eq!(
            probe_tcp(open, Duration::from_secs(2)).await,
            Outcome::Failed(Failure::Refused)
        );
    }

    #[tokio::test]
    async fn a_failure_is_confirmed_back_to_back_then_probing_slows_down() {
        let silent = sip_server(None).await;
        let settings = ProbeSettings {
            kind: ProbeKind::Options,
            interval: Duration::from_secs(3),
            timeout: Duration::from_millis(100),
            confirm: 2,
            first_after: Duration::ZERO,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let task = tokio::spawn(probe_loop(
            Target::udp(silent),
            settings,
            ProbeNow::default(),
            move |o| {
                let _ = tx.send((start.elapsed(), o));
            },
        ));
        let mut at = Vec::new();
        for _ in 0..4 {
            let (t, o) = rx.recv().await.unwrap();
            assert_eq!(o, Outcome::Failed(Failure::Timeout));
            at.push(t);
        }
        task.abort();
        // The first failure and its two confirmations go out back to back (each waits out the
        // 100 ms timeout), well before the next interval; the fourth waits for the interval.
        assert!(
            at[2] < Duration::from_millis(2500),
            "confirmations were not back to back: {at:?}"
        );
        assert!(
            at[3] >= Duration::from_millis(2500),
            "probing did not slow down: {at:?}"
        );
    }

    #[tokio::test]
    async fn the_first_probe_waits_first_after_then_the_interval_runs_from_it() {
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let settings = ProbeSettings {
            kind: ProbeKind::TcpConnect,
            interval: Duration::from_millis(400),
            timeout: Duration::from_millis(100),
            confirm: 0,
            first_after: Duration::from_millis(300),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let task = tokio::spawn(probe_loop(
            Target::udp(closed),
            settings,
            ProbeNow::default(),
            move |o| {
                let _ = tx.send((start.elapsed(), o));
            },
        ));
        let (first, _) = rx.recv().await.unwrap();
        let (second, _) = rx.recv().await.unwrap();
        task.abort();
        // Lower bounds only: a timer never fires early, however loaded the machine.
        assert!(
            first >= Duration::from_millis(300),
            "first probe at {first:?}"
        );
        assert!(
            second >= Duration::from_millis(700),
            "second probe at {second:?}"
        );
    }

    #[tokio::test]
    async fn an_ask_probes_at_once_and_a_burst_of_asks_is_one_probe_per_timeout() {
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let settings = ProbeSettings {
            kind: ProbeKind::TcpConnect,
            interval: Duration::from_secs(60),
            timeout: Duration::from_millis(300),
            confirm: 0,
            first_after: Duration::ZERO,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let now = ProbeNow::default();
        let task = tokio::spawn(probe_loop(
            Target::udp(closed),
            settings,
            now.clone(),
            move |o| {
                let _ = tx.send((start.elapsed(), o));
            },
        ));
        // The first probe goes out at once (first_after 0); the next is a minute away.
        let (first, outcome) = rx.recv().await.unwrap();
        assert_eq!(outcome, Outcome::Failed(Failure::Refused));
        // A burst of asks, spread over 200 ms, once the loop waits again.
        let asked_from = Instant::now();
        for _ in 0..20 {
            now.ask();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (second, _) = rx.recv().await.unwrap();
        assert!(
            second < Duration::from_secs(30),
            "the ask did not probe before the interval: {second:?}"
        );
        assert!(
            second >= first + Duration::from_millis(300),
            "asked probes go out at most once per timeout: {first:?}, {second:?}"
        );
        // The asks that came while that probe waited are gone: nothing more before the
        // interval (a bound the test can wait out: 1.5 s after the burst).
        let more = tokio::time::timeout(
            Duration::from_millis(1500).saturating_sub(asked_from.elapsed()),
            rx.recv(),
        )
        .await;
        assert!(more.is_err(), "a burst of asks made more than one probe");
        task.abort();
    }

    #[test]
    fn answer_code_matches_call_id_in_any_form() {
        assert_eq!(
            answer_code(b"SIP/2.0 200 OK\r\ni: abc\r\n\r\n", "abc"),
            Some(200)
        );
        assert_eq!(
            answer_code(b"SIP/2.0 200 OK\r\nCall-ID: abcd\r\n\r\n", "abc"),
            None
        );
        assert_eq!(
            answer_code(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: abc\r\n\r\n", "abc"),
            None
        );
        assert_eq!(answer_code(b"SIP/2.0 2", "abc"), None);
    }
}
