//! The stateless core: one datagram in, one action out.
//!
//! [`Worker::handle`] is a plain function of the routing table, the bytes and the sender's
//! address — no socket, no clock, no lock — so every routing rule of DESIGN.md is unit-testable
//! and the I/O shell only moves bytes. Each worker owns its output and scratch buffers, so a
//! forwarded message costs no allocation once they have grown.
//!
//! Requests, in order (DESIGN.md "Routing semantics"): scan; Max-Forwards 0 → 483; our own top
//! Route is removed and any other Route must name a configured server (never an open relay);
//! the first matching route names the home pool; its key picks the serving pool's server by
//! HRW; our Via goes on top with a branch derived from the incoming one (RFC 3261 §16.11), and
//! the client's Via gets `received`/`rport` (RFC 3581). Responses: the top Via must be ours; it
//! is removed and the response goes where the next Via says.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use healthcheck::Failure;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::config::KeyKind;
use crate::hrw;
use crate::sip::edit::{Edits, Insert};
use crate::sip::scan::{self, parse_uint, Hdr, Message, Span, StartLine};
use crate::sip::{response, uri, via};
use crate::stats;
use crate::table::{Decision, RoutingTable, BRANCH_PREFIX};

/// What to do with a datagram. The bytes to send are in [`Worker::out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the edited request or response to this address.
    Forward(SocketAddr),
    /// Send siplb's own answer back to the sender's address.
    Reply(SocketAddr),
    /// Send nothing.
    Drop(DropReason),
}

/// Why a datagram was not forwarded. Bounded set: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a SIP message siplb can read.
    Malformed,
    /// Blank lines only (a keep-alive).
    KeepAlive,
    /// A response whose top Via is not siplb's.
    NotOurs,
    /// A response from an address that is not a configured server.
    UnknownSender,
    /// A response with no Via left to send it to, or one naming a host siplb cannot reach
    /// without a DNS lookup.
    NoReturnPath,
    /// An ACK siplb could not route: ACKs are never answered (RFC 3261 §17.1.1.3).
    AckUnroutable,
}

impl DropReason {
    /// Every reason, for registering the metric.
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::KeepAlive,
        DropReason::NotOurs,
        DropReason::UnknownSender,
        DropReason::NoReturnPath,
        DropReason::AckUnroutable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::KeepAlive => "keepalive",
            DropReason::NotOurs => "not_ours",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::NoReturnPath => "no_return_path",
            DropReason::AckUnroutable => "ack_unroutable",
        }
    }
}

/// Per-worker buffers, reused for every message.
#[derive(Default)]
pub struct Worker {
    /// The bytes of the last [`Action::Forward`] or [`Action::Reply`].
    pub out: Vec<u8>,
    /// Set by [`Worker::handle`] when the message says something about a server's health:
    /// a 503 answer from it (RFC 3261 §21.5.4).
    pub passive: Option<(SocketAddr, Failure)>,
    scratch: Vec<u8>,
    key: Vec<u8>,
}

/// The request facts siplb's answers and branches are derived from.
struct Request<'a> {
    buf: &'a [u8],
    msg: Message,
    method: &'a [u8],
    ruri: &'a [u8],
    top_via: via::ViaParm,
    src: SocketAddr,
}

impl Worker {
    pub fn new() -> Self {
        Worker {
            out: Vec::with_capacity(4096),
            passive: None,
            scratch: Vec::with_capacity(256),
            key: Vec::with_capacity(128),
        }
    }

    /// Decides what to do with one datagram `buf` received from `src`.
    pub fn handle(&mut self, table: &RoutingTable, buf: &[u8], src: SocketAddr) -> Action {
        self.passive = None;
        let msg = match scan::scan(buf) {
            Ok(m) => m,
            Err(scan::ScanError::Empty) => return Action::Drop(DropReason::KeepAlive),
            Err(_) => return Action::Drop(DropReason::Malformed),
        };
        match msg.start {
            StartLine::Response { .. } => self.response(table, buf, msg, src),
            StartLine::Request { method, uri } => {
                let Some(top) = msg.via.and_then(|h| parse_first_via(buf, h)) else {
                    return Action::Drop(DropReason::Malformed);
                };
                let req = Request {
                    buf,
                    msg,
                    method: method.of(buf),
                    ruri: uri.of(buf),
                    top_via: top,
                    src,
                };
                self.request(table, &req)
            }
        }
    }

    fn request(&mut self, table: &RoutingTable, req: &Request<'_>) -> Action {
        let (buf, msg) = (req.buf, &req.msg);
        let branch = branch_hash(req);
        let max_forwards = match msg.max_forwards {
            Some(h) => match parse_uint(h.value.of(buf)) {
                Some(n) => Some(n),
                None => return self.answer(table, req, 400, branch),
            },
            None => None,
        };
        if max_forwards == Some(0) {
            return self.answer(table, req, 483, branch);
        }

        let mut edits = Edits::default();
        // Route (RFC 3261 §16.4): drop our own entry; whatever remains must be a server of ours.
        let mut next_hop = None;
        if let Some(route) = msg.route {
            let (first, comma) = via::first_value(buf, route.value);
            let mut hop = Some(first);
            if route_hop(buf, first).is_some_and(|u| table.is_us(&u.host, u.port)) {
                hop = match comma {
                    Some(c) => {
                        let next = via::after_comma(buf, c, route.value.end);
                        edits.push(first.start, next - first.start, Insert::Nothing);
                        Some(via::first_value(buf, Span::new(next, route.value.end)).0)
                    }
                    None => {
                        edits.push(route.line.start, route.line.len(), Insert::Nothing);
                        msg.route2.map(|r| via::first_value(buf, r.value).0)
                    }
                };
            }
            if let Some(hop) = hop {
                let server = route_hop(buf, hop)
                    .and_then(|u| u.socket_addr())
                    .and_then(|a| table.server_at(a));
                match server {
                    Some((p, s)) => next_hop = Some((p, table.server(p, s).address)),
                    None => return self.answer(table, req, 403, branch),
                }
            }
        }

        let (pool, dest) = match next_hop {
            Some(hop) => hop,
            None => match self.choose(table, req) {
                Ok(Decision {
                    serving,
                    server: Some(s),
                    ..
                }) => (serving, table.server(serving, s).address),
                Ok(_) => return self.answer(table, req, 503, branch),
                Err(code) => return self.answer(table, req, code, branch),
            },
        };

        // Our Via on top, with the derived branch.
        self.scratch.clear();
        let via_line = {
            let start = self.scratch.len();
            self.scratch.extend_from_slice(&table.via_prefix);
            let _ = write!(self.scratch, "{branch:016x}\r\n");
            Span::new(start, self.scratch.len())
        };
        edits.push(
            msg.via.map_or(msg.headers_start, |h| h.line.start),
            0,
            Insert::Scratch(via_line),
        );
        // RFC 3581 §4: received always (we add it even when it equals sent-by), rport on request.
        let top = &req.top_via;
        let received = {
            let start = self.scratch.len();
            match (req.src.ip(), top.received.is_some()) {
                (IpAddr::V6(ip), false) => {
                    let _ = write!(self.scratch, ";received=[{ip}]");
                }
                (IpAddr::V4(ip), false) => {
                    let _ = write!(self.scratch, ";received={ip}");
                }
                (IpAddr::V6(ip), true) => {
                    let _ = write!(self.scratch, "[{ip}]");
                }
                (IpAddr::V4(ip), true) => {
                    let _ = write!(self.scratch, "{ip}");
                }
            }
            Span::new(start, self.scratch.len())
        };
        // rport's value goes before a received appended at the same offset.
        if let via::Rport::Requested { name_end } = top.rport {
            let start = self.scratch.len();
            let _ = write!(self.scratch, "={}", req.src.port());
            edits.push(
                name_end,
                0,
                Insert::Scratch(Span::new(start, self.scratch.len())),
            );
        }
        match top.received {
            Some(old) => edits.push(old.start, old.len(), Insert::Scratch(received)),
            None => edits.push(top.span.end, 0, Insert::Scratch(received)),
        }
        // Max-Forwards (RFC 3261 §16.6 step 3).
        match (msg.max_forwards, max_forwards) {
            (Some(h), Some(n)) => {
                let start = self.scratch.len();
                let _ = write!(self.scratch, "{}", n.min(256) - 1);
                edits.push(
                    h.value.start,
                    h.value.len(),
                    Insert::Scratch(Span::new(start, self.scratch.len())),
                );
            }
            _ => edits.push(msg.headers_end, 0, Insert::Static(b"Max-Forwards: 70\r\n")),
        }
        edits.apply(buf, msg.end(), &self.scratch, &mut self.out);
        table.pools[pool].counters.request(req.method);
        Action::Forward(dest)
    }

    /// Picks route, home pool, serving pool and server; `Err` is the status to answer with.
    fn choose(&mut self, table: &RoutingTable, req: &Request<'_>) -> Result<Decision, u16> {
        let ruri = if table.needs_ruri {
            uri::parse(req.ruri)
        } else {
            None
        };
        let route = table
            .match_route(req.method, ruri.as_ref())
            .ok_or(table.no_route)?;
        let kind = table.routes[route].key_for(req.method);
        let key = self.key(req, kind, ruri.as_ref()).ok_or(400u16)?;
        Ok(table.decide(route, key))
    }

    /// Where a request would be routed (for `siplb route` and `/route`): the decision, or the
    /// status siplb would answer with. Route headers are not considered.
    pub fn explain(
        &mut self,
        table: &RoutingTable,
        buf: &[u8],
        src: SocketAddr,
    ) -> Result<Decision, u16> {
        let msg = scan::scan(buf).map_err(|_| 400u16)?;
        let StartLine::Request { method, uri } = msg.start else {
            return Err(400);
        };
        let top_via = msg
            .via
            .and_then(|h| parse_first_via(buf, h))
            .ok_or(400u16)?;
        let req = Request {
            buf,
            msg,
            method: method.of(buf),
            ruri: uri.of(buf),
            top_via,
            src,
        };
        self.choose(table, &req)
    }

    /// Computes the routing key's hash.
    fn key(
        &mut self,
        req: &Request<'_>,
        kind: KeyKind,
        ruri: Option<&uri::UriFacts>,
    ) -> Option<u64> {
        let (buf, msg) = (req.buf, &req.msg);
        let aor = |this: &mut Self, facts: Option<uri::UriFacts>| {
            let f = facts?;
            this.key.clear();
            f.write_aor(&mut this.key);
            Some(hrw::key_hash(&this.key))
        };
        let header_aor = |h: Option<Hdr>| {
            h.and_then(|h| uri::header_uri(buf, h.value))
                .and_then(|u| uri::parse(u.of(buf)))
        };
        match kind {
            KeyKind::ToAor => aor(self, header_aor(msg.to)),
            KeyKind::FromAor => aor(self, header_aor(msg.from)),
            KeyKind::RuriAor => aor(self, ruri.cloned().or_else(|| uri::parse(req.ruri))),
            KeyKind::CallId => msg.call_id.map(|h| hrw::key_hash(h.value.of(buf))),
            KeyKind::SourceIp => Some(match req.src.ip() {
                IpAddr::V4(ip) => hrw::key_hash(&ip.octets()),
                IpAddr::V6(ip) => hrw::key_hash(&ip.octets()),
            }),
        }
    }

    /// Answers the request statelessly with `code` — except an ACK, which is never answered.
    fn answer(
        &mut self,
        table: &RoutingTable,
        req: &Request<'_>,
        code: u16,
        branch: u64,
    ) -> Action {
        if req.method == b"ACK" {
            return Action::Drop(DropReason::AckUnroutable);
        }
        stats::reply(code);
        let retry_after = (code == 503).then_some(table.retry_after_secs);
        let tag = format!("lb{branch:016x}");
        response::build(req.buf, &req.msg, code, retry_after, &tag, &mut self.out);
        // RFC 3261 §18.2.2: to the source address, at rport or at the sent-by port.
        let port = match req.top_via.rport {
            via::Rport::Requested { .. } => req.src.port(),
            _ => req.top_via.port.unwrap_or(5060),
        };
        Action::Reply(SocketAddr::new(req.src.ip(), port))
    }

    fn response(
        &mut self,
        table: &RoutingTable,
        buf: &[u8],
        msg: Message,
        src: SocketAddr,
    ) -> Action {
        if !table.is_server_ip(src.ip()) {
            return Action::Drop(DropReason::UnknownSender);
        }
        if msg.start == (StartLine::Response { code: 503 }) {
            self.passive = Some((src, Failure::Passive503));
        }
        let Some(top_line) = msg.via else {
            return Action::Drop(DropReason::Malformed);
        };
        let (first, comma) = via::first_value(buf, top_line.value);
        let Some(top) = via::parse(buf, first) else {
            return Action::Drop(DropReason::Malformed);
        };
        let ours = top
            .branch
            .is_some_and(|b| b.of(buf).starts_with(BRANCH_PREFIX))
            && std::str::from_utf8(top.host.of(buf)).is_ok_and(|h| table.is_us(h, top.port));
        if !ours {
            return Action::Drop(DropReason::NotOurs);
        }
        let mut edits = Edits::default();
        let next = match comma {
            Some(c) => {
                let next = via::after_comma(buf, c, top_line.value.end);
                edits.push(first.start, next - first.start, Insert::Nothing);
                via::parse(
                    buf,
                    via::first_value(buf, Span::new(next, top_line.value.end)).0,
                )
            }
            None => {
                edits.push(top_line.line.start, top_line.line.len(), Insert::Nothing);
                msg.via2.and_then(|h| parse_first_via(buf, h))
            }
        };
        let Some(dest) = next.and_then(|v| via_return_address(buf, &v)) else {
            return Action::Drop(DropReason::NoReturnPath);
        };
        edits.apply(buf, msg.end(), &[], &mut self.out);
        if let StartLine::Response { code } = msg.start {
            stats::response(code);
        }
        Action::Forward(dest)
    }
}

fn parse_first_via(buf: &[u8], h: Hdr) -> Option<via::ViaParm> {
    via::parse(buf, via::first_value(buf, h.value).0)
}

/// Where a response goes for this Via: `received` (or the sent-by host when it is an address)
/// at `rport` (or the sent-by port, or 5060). RFC 3261 §18.2.2, RFC 3581 §4.
fn via_return_address(buf: &[u8], v: &via::ViaParm) -> Option<SocketAddr> {
    let host = v.received.unwrap_or(v.host).of(buf);
    let host = std::str::from_utf8(host).ok()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let port = match v.rport {
        via::Rport::Value(p) => p,
        _ => v.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// The URI of one Route value.
fn route_hop(buf: &[u8], value: Span) -> Option<uri::UriFacts> {
    uri::header_uri(buf, value).and_then(|u| uri::parse(u.of(buf)))
}

trait HopAddr {
    fn socket_addr(&self) -> Option<SocketAddr>;
}

impl HopAddr for uri::UriFacts {
    fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, self.port.unwrap_or(5060)))
    }
}

/// The hash behind our branch. With an RFC 3261 branch it is a function of that branch and the
/// request-URI, so a retransmission, the CANCEL and the non-2xx ACK of an INVITE (which carry
/// the INVITE's branch) get the INVITE's branch from us too. Without the magic cookie it is a
/// function of the fields RFC 3261 §16.11 lists (From tag, Call-ID, CSeq number, top Via,
/// request-URI; the To tag is left out so the ACK still matches).
fn branch_hash(req: &Request<'_>) -> u64 {
    const SEED: u64 = 0x6272_616e_6368; // "branch"
    let buf = req.buf;
    let mut h = hrw::key_hasher();
    let incoming = req
        .top_via
        .branch
        .map(|b| b.of(buf))
        .filter(|b| b.starts_with(b"z9hG4bK"));
    match incoming {
        Some(b) => h.update(b),
        None => {
            let value = |x: Option<Hdr>| x.map(|x| x.value.of(buf)).unwrap_or_default();
            h.update(value(req.msg.from));
            h.update(value(req.msg.call_id));
            let cseq = value(req.msg.cseq);
            h.update(cseq.split(|&c| c == b' ').next().unwrap_or_default());
            h.update(req.top_via.span.of(buf));
        }
    }
    h.update(b"\0");
    h.update(req.ruri);
    xxh3_64_with_seed(&h.digest().to_le_bytes(), SEED)
}

pub(crate) mod explain;
#[cfg(test)]
mod tests;
