//! A SIP server peer standing where a Front End would: it records every datagram it receives and
//! answers the way a registrar does.
//!
//! Answers go back to the **source address of the datagram** (that is, siplb), never to a Via:
//! a stateless proxy's next hop for a response is itself. The answer copies every Via line in
//! order, From, To (plus a tag), Call-ID and CSeq, as RFC 3261 §8.2.6.2 asks.
//!
//! siplb probes its servers with OPTIONS. A probe is siplb's own request, so it carries only
//! siplb's Via; forwarded requests carry the client's Via too. [`Backend::requests`] leaves the
//! probes out, so tests count client traffic only.
//!
//! Health tests need a server that dies and comes back: [`Backend::stop`] closes its socket (the
//! port is closed, so the kernel answers a datagram to it with an ICMP port unreachable) and
//! [`Backend::restart`] binds the same address again, keeping what was recorded. How probes are
//! answered can be switched while the backend runs ([`ProbeAnswer`]), and
//! [`Backend::set_silent`] keeps the socket open but answers nothing. Every datagram is stamped
//! with the moment it was received or sent, so a test can ask what arrived after a given instant.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::request::unique;
use crate::sip::Msg;

/// `ms-keep-alive` of a Lync Front End's 200 to REGISTER.
pub const MS_KEEP_ALIVE: &str = "ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-end=no; timeout=300";

/// How a backend answers requests. ACK and BENOTIFY are never answered; siplb's OPTIONS probes
/// always get a 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 OK` to everything.
    Accept,
    /// INVITE gets this final status (e.g. 486); everything else 200.
    RejectInvites(u16),
    /// Lync sign-in: a REGISTER without `Authorization`/`Proxy-Authorization` gets a `401` with an
    /// NTLM challenge naming this server in `targetname`; with credentials, `200` with
    /// `Authentication-Info`.
    LyncAuth,
    /// `200 OK` to everything, with every Via value written on one `Via:` line (RFC 3261 §7.3.1
    /// allows it), so siplb must pop its value from a shared line.
    CombineVias,
    /// A busy server: `503 Service Unavailable` with `Retry-After: 5` to every request (probes
    /// are still answered 200, as a loaded server's OPTIONS handler does).
    Busy,
    /// Records every request but answers none (probes are still answered, so it stays up):
    /// the test writes the responses itself, with [`response_to`] and [`Backend::send_raw`].
    Mute,
}

/// How a backend answers siplb's OPTIONS probes; switchable while it runs
/// ([`Backend::set_probe_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// `200 OK` (the default).
    Ok,
    /// This final status, e.g. `503`.
    Status(u16),
    /// No answer: the probe times out.
    Ignore,
    /// `200 OK` to one probe, nothing to the next, and so on: a server that flaps on every
    /// probe.
    Alternate,
}

/// One datagram as a peer saw it.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    /// Who sent it (received) or where it went (sent).
    pub peer: SocketAddr,
    /// When it was received (or sent).
    pub at: Instant,
}

impl Datagram {
    pub fn msg(&self) -> Option<Msg> {
        Msg::parse(&self.bytes)
    }
}

#[derive(Default)]
struct Log {
    received: Vec<Datagram>,
    sent: Vec<Datagram>,
}

struct Shared {
    log: Mutex<Log>,
    changed: Condvar,
    stop: AtomicBool,
    probe_answer: Mutex<ProbeAnswer>,
    /// Probes received so far (for [`ProbeAnswer::Alternate`]).
    probes: AtomicU64,
    silent: AtomicBool,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic elsewhere must not hide the recorded traffic.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn probe_answer(&self) -> ProbeAnswer {
        *self.probe_answer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds for the log, or `within` passed; returns the log, still locked,
    /// to read the result from.
    fn wait_log(&self, within: Duration, done: impl Fn(&Log) -> bool) -> MutexGuard<'_, Log> {
        let deadline = Instant::now() + within;
        let mut log = self.log();
        loop {
            let now = Instant::now();
            if done(&log) || now >= deadline {
                return log;
            }
            log = self
                .changed
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A SIP server on `127.0.0.1:0`, answering from its own thread until dropped (or stopped).
pub struct Backend {
    id: String,
    addr: SocketAddr,
    behaviour: Behaviour,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// A handle on the bound socket, for datagrams the test sends from this exact address.
    socket: Option<UdpSocket>,
}

impl Backend {
    /// Binds and starts answering. `id` is the server id given to siplb (and the Lync
    /// `targetname`).
    pub fn start(id: &str, behaviour: Behaviour) -> Backend {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Backend::start_on(id, behaviour, any).expect("bind backend socket")
    }

    /// Like [`Backend::start`], bound to `addr` (e.g. an address of a network namespace).
    pub fn start_on(id: &str, behaviour: Behaviour, addr: SocketAddr) -> std::io::Result<Backend> {
        let shared = Arc::new(Shared {
            log: Mutex::new(Log::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            probe_answer: Mutex::new(ProbeAnswer::Ok),
            probes: AtomicU64::new(0),
            silent: AtomicBool::new(false),
        });
        let mut backend = Backend {
            id: id.to_string(),
            addr,
            behaviour,
            shared,
            thread: None,
            socket: None,
        };
        backend.bind_and_serve(addr)?;
        Ok(backend)
    }

    fn bind_and_serve(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        self.addr = socket.local_addr()?;
        self.socket = Some(socket.try_clone()?);
        self.shared.stop.store(false, Ordering::Relaxed);
        let responder = Responder {
            id: self.id.clone(),
            behaviour: self.behaviour,
        };
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new()
            .name(format!("backend-{}", self.id))
            .spawn(move || serve(&socket, &responder, &shared))?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Stops answering and closes the socket: once this returns, the port is closed, and a
    /// datagram sent to it draws an ICMP port unreachable. What was recorded is kept.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.socket = None;
    }

    /// Sends `bytes` to `to` from this backend's own socket (its exact address, as siplb knows
    /// it): for responses a test writes itself, genuine or forged.
    pub fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        let socket = self
            .socket
            .as_ref()
            .unwrap_or_else(|| panic!("backend {} is stopped", self.id));
        socket.send_to(bytes, to).expect("send from the backend");
    }

    /// Waits until this backend has received a non-probe request with `call_id`; returns the
    /// last one, or panics after `within`.
    pub fn wait_request(&self, call_id: &str, within: Duration) -> Datagram {
        self.wait_call_id(call_id, 1, within)
            .pop()
            .unwrap_or_else(|| {
                panic!(
                    "{} received nothing of {call_id} within {within:?}",
                    self.id
                )
            })
    }

    /// Binds the same address again and answers as before (the records go on accumulating).
    /// Panics if the port was taken meanwhile.
    pub fn restart(&mut self) {
        assert!(self.thread.is_none(), "backend {} is running", self.id);
        let addr = self.addr;
        self.bind_and_serve(addr)
            .unwrap_or_else(|e| panic!("backend {} cannot bind {addr} again: {e}", self.id));
    }

    /// How probes are answered from now on.
    pub fn set_probe_answer(&self, answer: ProbeAnswer) {
        *self
            .shared
            .probe_answer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = answer;
    }

    /// A silent backend keeps its socket open and records what arrives, but answers nothing
    /// (neither requests nor probes): a hung server, as opposed to a stopped one.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::Relaxed);
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every datagram received, probes included.
    pub fn received_all(&self) -> Vec<Datagram> {
        self.shared.log().received.clone()
    }

    /// Every datagram received at or after `since`, except siplb's health probes.
    pub fn requests_since(&self, since: Instant) -> Vec<Datagram> {
        self.shared
            .log()
            .received
            .iter()
            .filter(|d| d.at >= since && !is_probe(&d.bytes))
            .cloned()
            .collect()
    }

    /// siplb's health probes received at or after `since`.
    pub fn probes_since(&self, since: Instant) -> Vec<Datagram> {
        self.shared
            .log()
            .received
            .iter()
            .filter(|d| d.at >= since && is_probe(&d.bytes))
            .cloned()
            .collect()
    }

    /// This backend's answers to probes sent at or after `since`, in order.
    pub fn probe_answers_since(&self, since: Instant) -> Vec<Datagram> {
        self.shared
            .log()
            .sent
            .iter()
            .filter(|d| d.at >= since && is_probe_answer(&d.bytes))
            .cloned()
            .collect()
    }

    /// siplb's probes received at or after `since` and this backend's answers to them, read
    /// together: a probe and its answer are recorded at once, so the two counts agree (read one
    /// after the other, a probe arriving in between would be missing from the first).
    pub fn probes_and_answers_since(&self, since: Instant) -> (usize, usize) {
        let log = self.shared.log();
        let probes = log
            .received
            .iter()
            .filter(|d| d.at >= since && is_probe(&d.bytes))
            .count();
        let answers = log
            .sent
            .iter()
            .filter(|d| d.at >= since && is_probe_answer(&d.bytes))
            .count();
        (probes, answers)
    }

    /// Waits until more than `seen` datagrams were received (or `within` passed) and returns
    /// those after the first `seen`, probes included: for following the traffic as it comes.
    pub fn wait_received_after(&self, seen: usize, within: Duration) -> Vec<Datagram> {
        let log = self
            .shared
            .wait_log(within, |log| log.received.len() > seen);
        log.received.get(seen..).unwrap_or_default().to_vec()
    }

    /// Every datagram received except siplb's health probes.
    pub fn requests(&self) -> Vec<Datagram> {
        self.shared
            .log()
            .received
            .iter()
            .filter(|d| !is_probe(&d.bytes))
            .cloned()
            .collect()
    }

    /// The received datagrams of one Call-ID, in arrival order.
    pub fn with_call_id(&self, call_id: &str) -> Vec<Datagram> {
        with_call_id(&self.shared.log().received, call_id)
    }

    /// The datagrams this backend sent for one Call-ID, in order.
    pub fn sent_with_call_id(&self, call_id: &str) -> Vec<Datagram> {
        with_call_id(&self.shared.log().sent, call_id)
    }

    /// Waits until this backend has received `n` datagrams of `call_id`; returns them (possibly
    /// fewer if the deadline passed).
    pub fn wait_call_id(&self, call_id: &str, n: usize, within: Duration) -> Vec<Datagram> {
        let log = self.shared.wait_log(within, |log| {
            with_call_id(&log.received, call_id).len() >= n
        });
        with_call_id(&log.received, call_id)
    }

    /// How many non-probe requests were received per default key (To AOR for REGISTER, From
    /// AOR otherwise).
    pub fn count_by_aor(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for d in self.requests() {
            if let Some(aor) = d.msg().and_then(|m| m.default_key()) {
                *counts.entry(aor).or_insert(0) += 1;
            }
        }
        counts
    }

    /// How many non-probe requests of `method` were received.
    pub fn count_method(&self, method: &str) -> usize {
        self.requests()
            .iter()
            .filter(|d| d.msg().is_some_and(|m| m.method() == Some(method)))
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn with_call_id(log: &[Datagram], call_id: &str) -> Vec<Datagram> {
    log.iter()
        .filter(|d| d.msg().is_some_and(|m| m.call_id() == Some(call_id)))
        .cloned()
        .collect()
}

/// A probe is siplb's own OPTIONS: it has a single Via (siplb's). Forwarded requests have two.
pub fn is_probe(bytes: &[u8]) -> bool {
    Msg::parse(bytes).is_some_and(|m| m.method() == Some("OPTIONS") && m.vias().len() < 2)
}

/// An answer to a probe: a response to OPTIONS with a single Via (siplb's).
pub fn is_probe_answer(bytes: &[u8]) -> bool {
    Msg::parse(bytes).is_some_and(|m| {
        m.is_response() && m.cseq_method() == Some("OPTIONS") && m.vias().len() < 2
    })
}

fn serve(socket: &UdpSocket, responder: &Responder, shared: &Shared) {
    let mut buf = vec![0u8; 70_000];
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout: look at the stop flag again
        };
        let at = Instant::now();
        let bytes = buf[..n].to_vec();
        let answer = if shared.silent.load(Ordering::Relaxed) {
            None
        } else if is_probe(&bytes) {
            let nth = shared.probes.fetch_add(1, Ordering::Relaxed);
            Msg::parse(&bytes).and_then(|m| responder.answer_probe(&m, shared.probe_answer(), nth))
        } else {
            Msg::parse(&bytes).and_then(|m| responder.answer(&m))
        };
        let mut log = shared.log();
        log.received.push(Datagram {
            bytes,
            peer: from,
            at,
        });
        if let Some(answer) = answer {
            // Recorded before it leaves, so a test that saw the answer also sees the record.
            log.sent.push(Datagram {
                bytes: answer.clone(),
                peer: from,
                at: Instant::now(),
            });
            drop(log);
            let _ = socket.send_to(&answer, from);
        } else {
            drop(log);
        }
        shared.changed.notify_all();
    }
}

struct Responder {
    id: String,
    behaviour: Behaviour,
}

impl Responder {
    /// The answer to the `nth` probe (counting from 0) under `how`.
    fn answer_probe(&self, req: &Msg, how: ProbeAnswer, nth: u64) -> Option<Vec<u8>> {
        let status = match how {
            ProbeAnswer::Ok => "200 OK".to_string(),
            ProbeAnswer::Status(code) => format!("{code} {}", reason(code)),
            ProbeAnswer::Ignore => return None,
            ProbeAnswer::Alternate if nth % 2 == 1 => return None,
            ProbeAnswer::Alternate => "200 OK".to_string(),
        };
        Some(self.response(req, &status, Vec::new()))
    }

    fn answer(&self, req: &Msg) -> Option<Vec<u8>> {
        let method = req.method()?;
        if method == "ACK" || method == "BENOTIFY" || self.behaviour == Behaviour::Mute {
            return None;
        }
        let (status, extra): (String, Vec<String>) = match (self.behaviour, method) {
            (Behaviour::RejectInvites(code), "INVITE") => (format!("{code} {}", reason(code)), Vec::new()),
            (Behaviour::Busy, _) => ("503 Service Unavailable".to_string(), vec!["Retry-After: 5".to_string()]),
            (Behaviour::LyncAuth, "REGISTER")
                if req.header("proxy-authorization").is_none()
                    && req.header("authorization").is_none() =>
            {
                ("401 Unauthorized".to_string(), vec![
                    format!(
                        "WWW-Authenticate: NTLM realm=\"SIP Communications Service\", targetname=\"{}\", version=4",
                        self.id
                    ),
                    format!(
                        "WWW-Authenticate: Kerberos realm=\"SIP Communications Service\", targetname=\"sip/{}\", version=4",
                        self.id
                    ),
                ])
            }
            (Behaviour::LyncAuth, "REGISTER") => ("200 OK".to_string(), vec![
                format!(
                    "Authentication-Info: NTLM rspauth=\"01000000000000005A3F2C0B1D8E9A70\", srand=\"3C4A2B1F\", snum=\"1\", opaque=\"B6D2E1A0\", qop=\"auth\", targetname=\"{}\", realm=\"SIP Communications Service\"",
                    self.id
                ),
                MS_KEEP_ALIVE.to_string(),
            ]),
            (_, "REGISTER") => ("200 OK".to_string(), vec![MS_KEEP_ALIVE.to_string()]),
            _ => ("200 OK".to_string(), Vec::new()),
        };
        Some(self.response(req, &status, extra))
    }

    /// A response to `req` with `status` ("200 OK") and `extra` header lines.
    fn response(&self, req: &Msg, status: &str, extra: Vec<String>) -> Vec<u8> {
        let mut out = format!("SIP/2.0 {status}\r\n");
        if self.behaviour == Behaviour::CombineVias {
            out.push_str(&format!("Via: {}\r\n", req.vias().join(", ")));
        } else {
            for h in req.header_lines("via") {
                out.push_str(&h.raw);
                out.push_str("\r\n");
            }
        }
        copy_dialog_headers(req, &mut out);
        for line in extra {
            out.push_str(&line);
            out.push_str("\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }
}

/// The response a server writes to `req` (as it received it): `status_line` (e.g.
/// `SIP/2.0 200 OK`), every Via line as received, From, To (plus a tag), Call-ID, CSeq, no
/// body. For tests that answer for a [`Behaviour::Mute`] backend, and then forge the answer.
pub fn response_to(req: &Msg, status_line: &str) -> Vec<u8> {
    let mut out = format!("{status_line}\r\n");
    for h in req.header_lines("via") {
        out.push_str(&h.raw);
        out.push_str("\r\n");
    }
    copy_dialog_headers(req, &mut out);
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// From, To (with a tag added when it had none), Call-ID and CSeq of `req`, as lines.
fn copy_dialog_headers(req: &Msg, out: &mut String) {
    for name in ["from", "to", "call-id", "cseq"] {
        let Some(h) = req.header_lines(name).next() else {
            continue;
        };
        out.push_str(&h.raw);
        if name == "to" && crate::sip::param(&h.value, "tag").is_none() {
            out.push_str(&format!(";tag={}", unique("be")));
        }
        out.push_str("\r\n");
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        486 => "Busy Here",
        480 => "Temporarily Unavailable",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        603 => "Decline",
        _ => "Failure",
    }
}
