//! A SIP user agent peer: sends raw requests to siplb and collects the responses it gets back.
//!
//! Responses are matched by Call-ID and CSeq method; anything else that arrives meanwhile is kept
//! for a later question, so a test never loses a datagram by asking in a different order.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::request::Request;
use crate::sip::{show, Msg};

/// How long a test waits for an answer that must come.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How long a test listens to show that nothing comes (an absence can only be shown by waiting).
pub const QUIET_FOR: Duration = Duration::from_millis(400);

/// A UDP user agent on `127.0.0.1:0`.
pub struct Client {
    socket: UdpSocket,
    /// Datagrams received but not asked for yet.
    inbox: Vec<Msg>,
    buf: Vec<u8>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client::bind("127.0.0.1")
    }

    /// A client on another loopback address (`127.0.0.0/8`), e.g. to vary the source IP.
    pub fn bind(ip: &str) -> Client {
        let socket = UdpSocket::bind((ip, 0)).expect("bind client socket");
        Client {
            socket,
            inbox: Vec::new(),
            buf: vec![0u8; 70_000],
        }
    }

    /// Forgets every datagram received but not asked for.
    pub fn clear_inbox(&mut self) {
        self.inbox.clear();
    }

    /// The address siplb sees as the source of this client's requests.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("client address")
    }

    /// Sends raw bytes.
    pub fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).expect("send datagram");
    }

    /// Sends a request; returns the exact bytes sent.
    pub fn send(&self, to: SocketAddr, req: &Request) -> Vec<u8> {
        let bytes = req.bytes();
        self.send_raw(to, &bytes);
        bytes
    }

    /// Receives one datagram before `deadline` into the inbox; false on timeout.
    fn pull(&mut self, deadline: Instant) -> bool {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.socket
                .set_read_timeout(Some(wait))
                .expect("set read timeout");
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, _)) => {
                    // Whatever arrives is kept, parseable or not, so absence checks see it.
                    let raw = &self.buf[..n];
                    let msg = Msg::parse(raw).unwrap_or_else(|| Msg {
                        raw: raw.to_vec(),
                        start: String::new(),
                        headers: Vec::new(),
                        body: Vec::new(),
                    });
                    self.inbox.push(msg);
                    return true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                // ICMP port unreachable surfaces as ConnectionRefused on Linux: ignore it.
                Err(_) => continue,
            }
        }
    }

    fn take(&mut self, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let at = self.inbox.iter().position(pred)?;
        Some(self.inbox.remove(at))
    }

    /// The next datagram matching `pred`, waiting until `within` has passed.
    pub fn wait_for(&mut self, within: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.take(&pred) {
                return Some(m);
            }
            if !self.pull(deadline) {
                return None;
            }
        }
    }

    /// Sends `req` and returns its final response; panics if none comes.
    pub fn transact(&mut self, to: SocketAddr, req: &Request) -> Msg {
        let bytes = self.send(to, req);
        self.final_response(req).unwrap_or_else(|| {
            panic!(
                "no final response within {ANSWER_WITHIN:?} to\n{}",
                show(&bytes)
            )
        })
    }

    /// The final response to `req` (already sent), skipping provisional ones.
    pub fn final_response(&mut self, req: &Request) -> Option<Msg> {
        let (call_id, method) = (req.call_id(), req.method().to_string());
        self.wait_for(ANSWER_WITHIN, |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.call_id() == Some(call_id.as_str())
                && m.cseq_method() == Some(method.as_str())
        })
    }

    /// Listens for [`QUIET_FOR`] and panics if any datagram about `call_id` arrives.
    pub fn assert_no_answer(&mut self, call_id: &str) {
        if let Some(m) = self.wait_for(QUIET_FOR, |m| m.call_id() == Some(call_id)) {
            panic!(
                "expected no answer for Call-ID {call_id}, got\n{}",
                show(&m.raw)
            );
        }
    }

    /// Listens for [`QUIET_FOR`] and panics if anything at all arrives.
    pub fn assert_nothing_arrives(&mut self) {
        if let Some(m) = self.wait_for(QUIET_FOR, |_| true) {
            panic!("expected nothing to arrive, got\n{}", show(&m.raw));
        }
    }

    /// Runs many requests through siplb with at most `window` outstanding (responses are the flow
    /// control, so no socket buffer overflows). Requests still unanswered after a pause are sent
    /// again (same bytes: a retransmission). Returns the final response per Call-ID; panics if
    /// the whole run takes longer than `within`.
    pub fn transact_many(
        &mut self,
        to: SocketAddr,
        reqs: &[Request],
        window: usize,
        within: Duration,
    ) -> HashMap<String, Msg> {
        let deadline = Instant::now() + within;
        let mut answers: HashMap<String, Msg> = HashMap::with_capacity(reqs.len());
        let mut outstanding: HashMap<String, Vec<u8>> = HashMap::with_capacity(window);
        let mut next = 0;
        let mut last_progress = Instant::now();
        while answers.len() < reqs.len() {
            assert!(
                Instant::now() < deadline,
                "transact_many: {} of {} answered within {within:?}",
                answers.len(),
                reqs.len()
            );
            while outstanding.len() < window && next < reqs.len() {
                let bytes = self.send(to, &reqs[next]);
                outstanding.insert(reqs[next].call_id(), bytes);
                next += 1;
            }
            if self.pull(Instant::now() + Duration::from_millis(200)) {
                for m in std::mem::take(&mut self.inbox) {
                    let final_answer = m.status().is_some_and(|s| s >= 200);
                    match m.call_id().map(str::to_string) {
                        Some(id) if final_answer && outstanding.remove(&id).is_some() => {
                            answers.insert(id, m);
                            last_progress = Instant::now();
                        }
                        _ => {}
                    }
                }
            } else if last_progress.elapsed() > Duration::from_millis(500) {
                for bytes in outstanding.values() {
                    self.send_raw(to, bytes);
                }
                last_progress = Instant::now();
            }
        }
        answers
    }
}
