//! The stateless core: one datagram in, one outcome out.
//!
//! [`Worker::handle`] is a plain function of the routing table, the bytes and the sender's
//! address — no socket, no clock, no lock, no global — so every routing rule of DESIGN.md is
//! unit-testable and the I/O shell only moves bytes. Its [`Outcome`] says everything the shell
//! must do: the [`Action`] (with the bytes in [`Worker::out`]), the passive health signal the
//! message carries, and what a successful send counts. Each worker owns its output and scratch
//! buffers, so a forwarded message costs no allocation once they have grown.
//!
//! Requests, in order (DESIGN.md "Routing semantics", RFC 3261 §16.3): scan (which reads the top
//! Via); a request whose top Via cannot be read is dropped, an invalid one is answered (505, 400
//! naming the header, 416, 483, 420); our own top Route is removed and any other Route must name
//! a configured server (never an open relay); the first matching route names the home pool; its
//! key picks the serving pool's server by HRW; our Via goes on top with a keyed branch
//! ([`crate::sip::branch`]), and the client's Via gets `received`/`rport` (RFC 3581); a request
//! that no longer fits a datagram is answered 513. Responses: they must come from a configured
//! server's exact address and carry the branch siplb made for that server; our Via is removed
//! and the response goes where the next Via says.

use std::net::{IpAddr, SocketAddr};

use healthcheck::Failure;

use crate::config::KeyKind;
pub use crate::config::Transport;
use crate::hrw;
use crate::sip::branch::{self, Transaction};
use crate::sip::edit::{Edits, Insert};
pub(crate) use crate::sip::response::Refusal;
use crate::sip::response::{self, Answer};
use crate::sip::scan::{self, parse_uint, Hdr, Message, Span, StartLine};
use crate::sip::{uri, via};
use crate::stats;
pub use crate::stats::Count;
use crate::table::{parse_ip, Decision, RoutingTable, RuriFacts};

/// A connection's id: nonzero and unique in the process. The shell draws them; the core only
/// writes them into its branches and reads them back.
pub type ConnId = u64;

/// The client flow a backend connection serves, as that connection knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub conn: ConnId,
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// How a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The datagram's source, or the connection's peer address.
    pub src: SocketAddr,
    pub transport: Transport,
    /// The connection it arrived on: a client flow or a backend connection. `None` over UDP.
    pub conn: Option<ConnId>,
    /// Set when it arrived on a backend connection that serves a client flow: that flow.
    pub client: Option<Peer>,
}

impl Arrival {
    /// A datagram from `src`.
    pub fn udp(src: SocketAddr) -> Self {
        Arrival {
            src,
            transport: Transport::Udp,
            conn: None,
            client: None,
        }
    }
}

/// What to do with a message. The bytes to send are in [`Worker::out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the edited request or response over UDP to this address.
    Forward(SocketAddr),
    /// Send siplb's own answer: over UDP to this address, or, when the request arrived on a
    /// connection, back down that connection (the address is then only informative).
    Reply(SocketAddr),
    /// Send the edited request to this TCP or TLS server, over the backend connection that
    /// belongs to the arrival's connection and this server (for a datagram, over one shared by
    /// UDP clients). `pool` and `server` index the table the decision was made on.
    ToServer {
        addr: SocketAddr,
        transport: Transport,
        pool: usize,
        server: usize,
    },
    /// Send the edited message down this connection: a client flow (a response, or a server's
    /// request on that flow's backend connection) or a backend connection (a client's answer
    /// to such a request).
    ToConn(ConnId),
    /// Send nothing.
    Drop(DropReason),
}

/// Everything the shell must do about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// What the message says about a server's health: a 503 answer from it (RFC 3261
    /// §21.5.4). The shell passes it on whatever the action.
    pub passive: Option<(SocketAddr, Failure)>,
    /// What a send of [`Worker::out`] stands for; the shell counts it once the kernel took the
    /// datagram. `None` for a drop (counted by its reason).
    pub count: Option<Count>,
}

impl Outcome {
    fn drop(reason: DropReason) -> Self {
        Outcome {
            action: Action::Drop(reason),
            passive: None,
            count: None,
        }
    }
}

/// Why a datagram was not forwarded. Bounded set: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a SIP message siplb can read or answer.
    Malformed,
    /// Blank lines only (a keep-alive).
    KeepAlive,
    /// A response whose top Via is not siplb's, or whose branch does not verify.
    NotOurs,
    /// A response from an address that is not a configured server's.
    UnknownSender,
    /// A response with no Via left to send it to, or one naming a host siplb cannot reach
    /// without a DNS lookup.
    NoReturnPath,
    /// An ACK siplb could not route: ACKs are never answered (RFC 3261 §17.1.1.3).
    AckUnroutable,
    /// A return path to a broadcast, multicast or unspecified address: siplb never sends there.
    BadDestination,
    /// The connection the message must go down has closed (counted by the shell).
    FlowGone,
}

impl DropReason {
    /// Every reason, for registering the metric.
    pub(crate) const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::KeepAlive,
        DropReason::NotOurs,
        DropReason::UnknownSender,
        DropReason::NoReturnPath,
        DropReason::AckUnroutable,
        DropReason::BadDestination,
        DropReason::FlowGone,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::KeepAlive => "keepalive",
            DropReason::NotOurs => "not_ours",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::NoReturnPath => "no_return_path",
            DropReason::AckUnroutable => "ack_unroutable",
            DropReason::BadDestination => "bad_destination",
            DropReason::FlowGone => "flow_gone",
        }
    }
}

/// The largest UDP payload to an IPv4 destination (65,535 − 8 − 20) and to an IPv6 one
/// (65,535 − 8; no jumbograms).
const MAX_UDP_V4: usize = 65_507;
const MAX_UDP_V6: usize = 65_527;

/// Per-worker buffers, reused for every message.
#[derive(Default)]
pub struct Worker {
    /// The bytes of the last [`Action::Forward`] or [`Action::Reply`].
    pub out: Vec<u8>,
    scratch: Vec<u8>,
}

/// A request whose top Via could be read: the facts siplb's answers and branches come from.
struct Request<'a> {
    buf: &'a [u8],
    msg: &'a Message,
    method: &'a [u8],
    ruri: Span,
    version_ok: bool,
    top: via::ViaParm,
    src: SocketAddr,
    at: Arrival,
}

impl Request<'_> {
    /// The client transaction siplb's branch is derived from.
    fn transaction(&self) -> Transaction<'_> {
        transaction(self.buf, self.msg, &self.top)
    }
}

fn transaction<'a>(buf: &'a [u8], msg: &Message, v: &via::ViaParm) -> Transaction<'a> {
    let value = |h: Option<Hdr>| h.map(|h| h.value.of(buf)).unwrap_or_default();
    Transaction::of(v.branch.map(|b| b.of(buf)), || {
        (
            value(msg.from),
            value(msg.call_id),
            value(msg.cseq),
            v.sent_by.of(buf),
        )
    })
}

/// Whether siplb must never send to `ip` (RFC 3261 gives a proxy no business there, and a
/// forged Via must not turn siplb into an amplifier).
fn bad_destination(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    broadcast || ip.is_multicast() || ip.is_unspecified()
}

impl Worker {
    pub fn new() -> Self {
        Worker {
            out: Vec::with_capacity(4096),
            scratch: Vec::with_capacity(256),
        }
    }

    /// Decides what to do with one datagram `buf` received from `src`.
    pub fn handle(&mut self, table: &RoutingTable, buf: &[u8], src: SocketAddr) -> Outcome {
        self.handle_from(table, buf, &Arrival::udp(src))
    }

    /// siplb's answer `refusal` to a request the stream shell refused before reading it whole
    /// (its header block `head` was read: 513 for a message over the size limits, 400 for its
    /// Content-Length). A response, or a head whose top Via cannot be read, is dropped.
    pub(crate) fn refuse(
        &mut self,
        table: &RoutingTable,
        head: &[u8],
        at: &Arrival,
        refusal: Refusal,
    ) -> Outcome {
        let Ok(msg) = scan::scan(head) else {
            return Outcome::drop(DropReason::Malformed);
        };
        let (
            StartLine::Request {
                method,
                uri,
                version_ok,
            },
            Some(top),
        ) = (msg.start, msg.top_via)
        else {
            return Outcome::drop(DropReason::Malformed);
        };
        let req = Request {
            buf: head,
            msg: &msg,
            method: method.of(head),
            ruri: uri,
            version_ok,
            top,
            src: at.src,
            at: *at,
        };
        self.answer(table, &req, refusal)
    }

    /// Decides what to do with one message `buf`, however it arrived.
    pub fn handle_from(&mut self, table: &RoutingTable, buf: &[u8], at: &Arrival) -> Outcome {
        let src = at.src;
        let msg = match scan::scan(buf) {
            Ok(m) => m,
            Err(scan::ScanError::Empty) => return Outcome::drop(DropReason::KeepAlive),
            Err(_) => return Outcome::drop(DropReason::Malformed),
        };
        match msg.start {
            StartLine::Response { code } => self.response(table, buf, &msg, code, at),
            StartLine::Request {
                method,
                uri,
                version_ok,
            } => {
                let Some(top) = msg.top_via else {
                    return Outcome::drop(DropReason::Malformed);
                };
                let req = Request {
                    buf,
                    msg: &msg,
                    method: method.of(buf),
                    ruri: uri,
                    version_ok,
                    top,
                    src,
                    at: *at,
                };
                let result = match at.client {
                    Some(client) => self.down_flow(table, &req, client),
                    None => self.forward(table, &req),
                };
                match result {
                    Ok(outcome) => outcome,
                    Err(refusal) => self.answer(table, &req, refusal),
                }
            }
        }
    }

    /// Checks a request as RFC 3261 §16.3 asks before a proxy forwards it; returns its
    /// Max-Forwards.
    fn validate(req: &Request<'_>) -> Result<Option<u64>, Refusal> {
        let (buf, msg) = (req.buf, req.msg);
        if !req.version_ok {
            return Err(Refusal::VersionNotSupported);
        }
        if let Some(name) = msg.missing() {
            return Err(Refusal::MissingHeader(name));
        }
        for (h, name) in [(msg.from, "From"), (msg.to, "To")] {
            if h.and_then(|h| uri::header_uri(buf, h.value)).is_none() {
                return Err(Refusal::BadHeader(name));
            }
        }
        if !msg
            .cseq
            .is_some_and(|h| cseq_ok(h.value.of(buf), req.method))
        {
            return Err(Refusal::BadHeader("CSeq"));
        }
        if msg.bad_content_length {
            return Err(Refusal::BadHeader("Content-Length"));
        }
        let max_forwards = match msg.max_forwards {
            Some(h) => match parse_uint(h.value.of(buf)) {
                Some(n) if n <= 255 => Some(n),
                _ => return Err(Refusal::BadHeader("Max-Forwards")),
            },
            None => None,
        };
        let ruri = req.ruri.of(buf);
        let Some(colon) = ruri.iter().position(|&c| c == b':') else {
            return Err(Refusal::BadHeader("Request-URI"));
        };
        let scheme = &ruri[..colon];
        if ![&b"sip"[..], b"sips", b"tel"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
        {
            return Err(Refusal::UnsupportedUriScheme);
        }
        if max_forwards == Some(0) {
            return Err(Refusal::TooManyHops);
        }
        if msg.unsupported_proxy_require {
            return Err(Refusal::BadExtension);
        }
        Ok(max_forwards)
    }

    /// Forwards a request: the outcome, or why siplb answers instead.
    fn forward(&mut self, table: &RoutingTable, req: &Request<'_>) -> Result<Outcome, Refusal> {
        let (buf, msg) = (req.buf, req.msg);
        let max_forwards = Self::validate(req)?;

        let mut edits = Edits::default();
        // Route (RFC 3261 §16.4): drop our own entry; whatever remains must be a server of ours.
        let mut next_hop = None;
        if let Some(route) = msg.route {
            let (first, comma) = via::first_value(buf, route.value);
            let mut hop = Some(first);
            let ours = route_hop(buf, first).filter(|u| table.is_us(u.host.of(buf), u.port));
            if let Some(ours) = ours {
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
                // Our Route naming one of our flows (a Path or Record-Route siplb wrote): the
                // request goes down that flow, whatever Route remains.
                if let Some(user) = ours.user.map(|u| u.of(buf)) {
                    match flow_token::read(&table.branch_key, user) {
                        Some((conn, transport)) => {
                            return self.by_token(table, req, edits, max_forwards, conn, transport)
                        }
                        // A token siplb did not make (RFC 5626 §5.3: 403).
                        None if flow_token::looks_like(user) => return Err(Refusal::ForeignRoute),
                        None => {}
                    }
                }
            }
            if let Some(hop) = hop {
                // A server by address, or by its id: a Lync Front End record-routes with its
                // FQDN, which an operator gives as the server's id (or as its address, then
                // the id is `FQDN:port`).
                let server = route_hop(buf, hop).and_then(|u| {
                    let host = u.host.of(buf);
                    match parse_ip(host) {
                        Some(ip) => table.server_at(SocketAddr::new(ip, u.port.unwrap_or(5060))),
                        None => table.server_named(host, u.port),
                    }
                });
                match server {
                    Some(hop) => next_hop = Some(hop),
                    None => return Err(Refusal::ForeignRoute),
                }
            }
        }

        let (pool, server) = match next_hop {
            Some(hop) => hop,
            None => {
                let d = self.choose(table, req)?;
                let Some(s) = d.server else {
                    return Err(Refusal::NoServer {
                        retry_after: table.retry_after_secs,
                    });
                };
                (d.serving, s)
            }
        };
        let target = table.server(pool, server);
        let (dest, transport) = (target.address, target.transport);
        if transport != Transport::Tls && scheme_is(buf, req.ruri, b"sips") {
            return Err(Refusal::SipsNeedsTls);
        }

        // Our Via on top, with the keyed branch naming the connection the answer goes back
        // down (none for a datagram).
        self.scratch.clear();
        self.push_via(table, req, &mut edits, dest, transport);
        self.push_flow_route(table, req, &mut edits);
        self.push_max_forwards(msg, max_forwards, &mut edits);
        edits.apply(buf, msg.end(), &self.scratch, &mut self.out);
        let count = Some(Count::Request {
            pool,
            method: stats::method_index(req.method),
            server: Some(server),
        });
        let action = match transport {
            Transport::Udp => {
                let limit = if dest.is_ipv4() {
                    MAX_UDP_V4
                } else {
                    MAX_UDP_V6
                };
                if self.out.len() > limit {
                    return Err(Refusal::TooLarge);
                }
                Action::Forward(dest)
            }
            Transport::Tcp | Transport::Tls => Action::ToServer {
                addr: dest,
                transport,
                pool,
                server,
            },
        };
        Ok(Outcome {
            action,
            passive: None,
            count,
        })
    }

    /// A request a server sent on the backend connection of `client`'s flow (NOTIFY,
    /// BENOTIFY, INVITE…): it goes down that flow, with siplb's Via naming the backend
    /// connection so the client's answer comes back to it. It is not routed by key.
    fn down_flow(
        &mut self,
        table: &RoutingTable,
        req: &Request<'_>,
        client: Peer,
    ) -> Result<Outcome, Refusal> {
        let msg = req.msg;
        let max_forwards = Self::validate(req)?;
        let Some((pool, _)) = table.server_at(req.src) else {
            // The server left the config since the connection opened.
            return Ok(Outcome::drop(DropReason::UnknownSender));
        };
        let mut edits = Edits::default();
        self.scratch.clear();
        self.push_via(table, req, &mut edits, client.addr, client.transport);
        self.push_max_forwards(msg, max_forwards, &mut edits);
        edits.apply(req.buf, msg.end(), &self.scratch, &mut self.out);
        Ok(Outcome {
            action: Action::ToConn(client.conn),
            passive: None,
            count: Some(Count::Request {
                pool,
                method: stats::method_index(req.method),
                server: None,
            }),
        })
    }

    /// A request whose top Route is a flow token of siplb's: down that flow. Only a configured
    /// server (by IP: a server connects from ports of its own) may send one.
    fn by_token(
        &mut self,
        table: &RoutingTable,
        req: &Request<'_>,
        mut edits: Edits,
        max_forwards: Option<u64>,
        conn: ConnId,
        transport: Transport,
    ) -> Result<Outcome, Refusal> {
        let pool = table
            .pool_at_ip(req.src.ip())
            .ok_or(Refusal::ForeignRoute)?;
        self.scratch.clear();
        // The flow's peer is not known here: the branch is keyed to no address, and a
        // response on a connection is verified against that too.
        self.push_via(table, req, &mut edits, UNADDRESSED, transport);
        self.push_max_forwards(req.msg, max_forwards, &mut edits);
        edits.apply(req.buf, req.msg.end(), &self.scratch, &mut self.out);
        Ok(Outcome {
            action: Action::ToConn(conn),
            passive: None,
            count: Some(Count::Request {
                pool,
                method: stats::method_index(req.method),
                server: None,
            }),
        })
    }

    /// On a request from a client flow, the URI that brings a server's later requests back
    /// down that flow: a `Path` on a REGISTER whose sender supports it (RFC 3327 §5.2, which
    /// has proxies add Path only then), a `Record-Route` on a dialog-forming request from an
    /// RFC 5626 client (its Contact has `ob`), as RFC 5626 §5.3 asks of an edge proxy. Lync
    /// clients ask for neither: a Front End sends to them down the backend connection, which
    /// siplb ties to the client's flow.
    fn push_flow_route(&mut self, table: &RoutingTable, req: &Request<'_>, edits: &mut Edits) {
        let (buf, msg) = (req.buf, req.msg);
        let (Some(conn), None) = (req.at.conn, req.at.client) else {
            return;
        };
        if req.at.transport == Transport::Udp {
            return;
        }
        let header: &[u8] = if req.method == b"REGISTER" {
            if !scan::supports(buf, msg, b"path") {
                return;
            }
            b"Path: <sip:"
        } else if matches!(req.method, b"INVITE" | b"SUBSCRIBE" | b"REFER")
            && msg.contact.is_some_and(|c| has_ob(c.value.of(buf)))
        {
            b"Record-Route: <sip:"
        } else {
            return;
        };
        let start = self.scratch.len();
        self.scratch.extend_from_slice(header);
        flow_token::write(&mut self.scratch, &table.branch_key, conn, req.at.transport);
        self.scratch.push(b'@');
        self.scratch
            .extend_from_slice(table.sent_by(req.src, req.at.transport));
        self.scratch.extend_from_slice(match req.at.transport {
            Transport::Tls => b";transport=tls;lr>\r\n",
            _ => b";transport=tcp;lr>\r\n",
        });
        let line = Span::new(start, self.scratch.len());
        edits.push(msg.headers_start, 0, Insert::Scratch(line));
    }

    /// Puts siplb's Via on top (its transport token is the hop's, its keyed branch names the
    /// connection the request arrived on) and `received`/`rport` on the sender's.
    fn push_via(
        &mut self,
        table: &RoutingTable,
        req: &Request<'_>,
        edits: &mut Edits,
        dest: SocketAddr,
        transport: Transport,
    ) {
        let conn = req.at.conn;
        let hash = branch::hash_flow(&table.branch_key, &req.transaction(), dest, conn);
        let via_line = {
            let start = self.scratch.len();
            self.scratch
                .extend_from_slice(table.via_prefix(dest, transport));
            branch::write(&mut self.scratch, hash, conn);
            self.scratch.extend_from_slice(b"\r\n");
            Span::new(start, self.scratch.len())
        };
        edits.push(
            req.msg.via.map_or(req.msg.headers_start, |h| h.line.start),
            0,
            Insert::Scratch(via_line),
        );
        // RFC 3581 §4: received always (we add it even when it equals sent-by), rport on request.
        via::push_return_path(&req.top, req.src, &mut self.scratch, edits);
    }

    /// Max-Forwards minus one, or 70 where there was none (RFC 3261 §16.6 step 3).
    fn push_max_forwards(&mut self, msg: &Message, max_forwards: Option<u64>, edits: &mut Edits) {
        match (msg.max_forwards, max_forwards) {
            (Some(h), Some(n)) => {
                let start = self.scratch.len();
                via::push_decimal(&mut self.scratch, n - 1);
                edits.push(
                    h.value.start,
                    h.value.len(),
                    Insert::Scratch(Span::new(start, self.scratch.len())),
                );
            }
            _ => edits.push(msg.headers_end, 0, Insert::Static(b"Max-Forwards: 70\r\n")),
        }
    }

    /// Picks route, home pool, serving pool and server.
    fn choose(&mut self, table: &RoutingTable, req: &Request<'_>) -> Result<Decision, Refusal> {
        let buf = req.buf;
        let ruri = if table.needs_ruri {
            uri::read(buf, req.ruri)
        } else {
            None
        };
        let facts = ruri.map(|u| RuriFacts {
            host: u.host.of(buf),
            user_param: u.user_param.map(|p| p.of(buf)),
        });
        let route = table.match_route(req.method, facts).ok_or(table.no_route)?;
        let kind = table.routes[route].key_for(req.method);
        let key = key(req, kind, ruri)?;
        Ok(table.decide(route, key))
    }

    /// Where a request would be routed (for `siplb route` and `/route`): the decision, or what
    /// siplb would answer. Route headers are not considered.
    pub(crate) fn explain(
        &mut self,
        table: &RoutingTable,
        buf: &[u8],
        src: SocketAddr,
    ) -> Result<Decision, Refusal> {
        let unreadable = Refusal::BadHeader("Request");
        let msg = scan::scan(buf).map_err(|_| unreadable)?;
        let StartLine::Request {
            method,
            uri,
            version_ok,
        } = msg.start
        else {
            return Err(unreadable);
        };
        let top = msg.top_via.ok_or(Refusal::BadHeader("Via"))?;
        let req = Request {
            buf,
            msg: &msg,
            method: method.of(buf),
            ruri: uri,
            version_ok,
            top,
            src,
            at: Arrival::udp(src),
        };
        Self::validate(&req)?;
        self.choose(table, &req)
    }

    /// Answers the request statelessly — except an ACK, which is never answered.
    fn answer(&mut self, table: &RoutingTable, req: &Request<'_>, refusal: Refusal) -> Outcome {
        if req.method == b"ACK" {
            return Outcome::drop(if refusal.is_invalid() {
                DropReason::Malformed
            } else {
                DropReason::AckUnroutable
            });
        }
        // RFC 3261 §18.2.2: to the source address, at rport or at the sent-by port.
        let port = match req.top.rport {
            via::Rport::Requested { .. } => req.src.port(),
            _ => req.top.port.unwrap_or(5060),
        };
        let to = SocketAddr::new(req.src.ip(), port);
        // Down a connection the answer goes back where the request came from.
        if req.at.conn.is_none() && bad_destination(to.ip()) {
            return Outcome::drop(DropReason::BadDestination);
        }
        let unrouted = SocketAddr::from(([0, 0, 0, 0], 0));
        let tag = format!(
            "lb{:016x}",
            branch::hash(&table.branch_key, &req.transaction(), unrouted)
        );
        let answer = Answer {
            refusal,
            src: req.src,
            to_tag: &tag,
            server: &table.server_header,
        };
        response::build(req.buf, req.msg, &req.top, &answer, &mut self.out);
        Outcome {
            action: Action::Reply(to),
            passive: None,
            count: Some(Count::Reply {
                code: refusal.code(),
            }),
        }
    }

    fn response(
        &mut self,
        table: &RoutingTable,
        buf: &[u8],
        msg: &Message,
        code: u16,
        at: &Arrival,
    ) -> Outcome {
        let src = at.src;
        let from = table.server_at(src);
        let from_server = from.is_some();
        // A datagram must come from a server's exact address; on a connection, the branch
        // (keyed over the peer's address and the connection) is the proof.
        if at.conn.is_none() && !from_server {
            return Outcome::drop(DropReason::UnknownSender);
        }
        let (Some(top_line), Some(top), None, false) =
            (msg.via, msg.top_via, msg.missing(), msg.bad_content_length)
        else {
            return Outcome::drop(DropReason::Malformed);
        };
        if !top
            .branch
            .is_some_and(|b| b.of(buf).starts_with(branch::PREFIX))
            || !table.is_us(top.host.of(buf), top.port)
        {
            return Outcome::drop(DropReason::NotOurs);
        }
        let mut edits = Edits::default();
        let next = match msg.top_via_comma {
            Some(c) => {
                let next = via::after_comma(buf, c, top_line.value.end);
                edits.push(top.span.start, next - top.span.start, Insert::Nothing);
                via::parse(
                    buf,
                    via::first_value(buf, Span::new(next, top_line.value.end)).0,
                )
            }
            None => {
                edits.push(top_line.line.start, top_line.line.len(), Insert::Nothing);
                msg.via2
                    .and_then(|h| via::parse(buf, via::first_value(buf, h.value).0))
            }
        };
        let Some(next) = next else {
            return Outcome::drop(DropReason::NoReturnPath);
        };
        let Some(conn) = top.branch.and_then(|b| branch::conn_of(b.of(buf))) else {
            return Outcome::drop(DropReason::NotOurs);
        };
        let tx = transaction(buf, msg, &next);
        let verifies = |hop: SocketAddr| {
            let expected = branch::hash_flow(&table.branch_key, &tx, hop, conn);
            top.branch
                .is_some_and(|b| branch::verifies(b.of(buf), expected, conn))
        };
        // On a connection, the request may have been sent down it by a flow token, keyed to
        // no address.
        let on_conn_unaddressed = || at.conn.is_some() && verifies(UNADDRESSED);
        if !verifies(src) && !on_conn_unaddressed() {
            return Outcome::drop(DropReason::NotOurs);
        }
        // A 503 from a server asks for a probe; with a Retry-After, for a backoff if the probe
        // fails too (the supervisor decides).
        let passive = (code == 503 && from_server).then(|| {
            let failure = match scan::retry_after(buf, msg) {
                Some(s) if s > 0 => Failure::Passive503RetryAfter(s),
                _ => Failure::Passive503,
            };
            (src, failure)
        });
        if let Some(conn) = conn {
            edits.apply(buf, msg.end(), &[], &mut self.out);
            return Outcome {
                action: Action::ToConn(conn),
                passive,
                count: Some(Count::Response { code, from }),
            };
        }
        let Some(dest) = via_return_address(buf, &next) else {
            return Outcome {
                passive,
                ..Outcome::drop(DropReason::NoReturnPath)
            };
        };
        if bad_destination(dest.ip()) {
            return Outcome {
                passive,
                ..Outcome::drop(DropReason::BadDestination)
            };
        }
        edits.apply(buf, msg.end(), &[], &mut self.out);
        Outcome {
            action: Action::Forward(dest),
            passive,
            count: Some(Count::Response { code, from }),
        }
    }
}

/// Whether a CSeq value is `<32-bit number> <method>` for a request of `method`
/// (RFC 3261 §8.1.1.5, §20.16).
fn cseq_ok(value: &[u8], method: &[u8]) -> bool {
    let mut parts = value
        .split(|c| c.is_ascii_whitespace())
        .filter(|p| !p.is_empty());
    let (Some(number), Some(m), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    number.len() <= 10
        && parse_uint(number).is_some_and(|n| n <= u64::from(u32::MAX))
        && m == method
}

/// Computes the routing key's hash, or why the request cannot be keyed.
fn key(req: &Request<'_>, kind: KeyKind, ruri: Option<uri::Uri>) -> Result<u64, Refusal> {
    let (buf, msg) = (req.buf, req.msg);
    let aor = |u: uri::Uri| {
        // Gathered on the stack and hashed in one go: a streaming hasher costs more to set up
        // than a whole address of record costs to hash.
        let mut gathered = [0u8; 256];
        let mut n = 0;
        let mut fits = true;
        u.aor_pieces(buf, |piece| match gathered.get_mut(n..n + piece.len()) {
            Some(to) if fits => {
                to.copy_from_slice(piece);
                n += piece.len();
            }
            _ => fits = false,
        });
        if fits {
            return hrw::key_hash(&gathered[..n]);
        }
        let mut h = hrw::key_hasher();
        u.aor_pieces(buf, |piece| h.update(piece));
        h.digest()
    };
    let header_aor = |h: Option<Hdr>, name: &'static str| {
        h.and_then(|h| uri::header_uri(buf, h.value))
            .and_then(|u| uri::read(buf, u))
            .map(aor)
            .ok_or(Refusal::BadHeader(name))
    };
    match kind {
        KeyKind::ToAor => header_aor(msg.to, "To"),
        KeyKind::FromAor => header_aor(msg.from, "From"),
        KeyKind::RuriAor => ruri
            .or_else(|| uri::read(buf, req.ruri))
            .map(aor)
            .ok_or(Refusal::BadHeader("Request-URI")),
        KeyKind::CallId => msg
            .call_id
            .map(|h| hrw::key_hash(h.value.of(buf)))
            .ok_or(Refusal::MissingHeader("Call-ID")),
        KeyKind::SourceIp => Ok(match req.src.ip() {
            IpAddr::V4(ip) => hrw::key_hash(&ip.octets()),
            IpAddr::V6(ip) => hrw::key_hash(&ip.octets()),
        }),
    }
}

/// Where a response goes for this Via: `received` (or the sent-by host when it is an address)
/// at `rport` (or the sent-by port, or 5060). RFC 3261 §18.2.2, RFC 3581 §4. `received` is
/// read with or without brackets around an IPv6 address.
fn via_return_address(buf: &[u8], v: &via::ViaParm) -> Option<SocketAddr> {
    let ip = parse_ip(v.received.unwrap_or(v.host).of(buf))?;
    let port = match v.rport {
        via::Rport::Value(p) => p,
        _ => v.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// The address a branch is keyed to when the hop's address is not known (a request sent down
/// a flow named by a flow token).
const UNADDRESSED: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Whether a Contact value's URI carries the `ob` parameter (RFC 5626 §4.2.1).
fn has_ob(contact: &[u8]) -> bool {
    let uri = match memchr_byte(b'<', contact) {
        Some(open) => {
            let rest = &contact[open + 1..];
            &rest[..memchr_byte(b'>', rest).unwrap_or(rest.len())]
        }
        None => contact,
    };
    uri.split(|&c| c == b';')
        .skip(1)
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"ob"))
}

fn memchr_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == needle)
}

/// Whether the URI at `span` has this scheme (any case).
fn scheme_is(buf: &[u8], span: Span, scheme: &[u8]) -> bool {
    let uri = span.of(buf);
    uri.len() > scheme.len()
        && uri[scheme.len()] == b':'
        && uri[..scheme.len()].eq_ignore_ascii_case(scheme)
}

/// The URI of one Route value.
fn route_hop(buf: &[u8], value: Span) -> Option<uri::Uri> {
    uri::header_uri(buf, value).and_then(|u| uri::read(buf, u))
}

pub(crate) mod explain;
mod flow_token;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_streams;
