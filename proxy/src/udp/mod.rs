//! The UDP shell: sockets in, [`Worker::handle`] in the middle, sockets out.
//!
//! Each listen address gets `[listen] workers` sockets, all bound with `SO_REUSEPORT` so the
//! kernel spreads datagrams over them by flow. Each socket is served by a thread of its own
//! ([`serve`]) on a blocking socket, as a SIP server's receiver processes are: it sleeps in
//! `recvmmsg` until a datagram comes, takes whatever else is already waiting (a batch), routes
//! each against whatever table is current when it is handled, and sends what the batch
//! produced with `sendmmsg`. No poller, no hand-off between threads: the thread that the
//! kernel wakes does the whole job.
//!
//! The core decides, the shell acts ([`deliver`]): it passes the outcome's passive health signal
//! to the supervisor, queues the datagram to send ([`Outbox`]), and counts what the outcome says
//! only once the kernel took the datagram (a refused send counts in `siplb_send_errors_total`
//! only). Outcomes for TCP or TLS go to the connection runtime, which queues them.
//!
//! The sockets ask for ICMP errors ([`icmp`]): when a forward to a server draws a port
//! unreachable, the next receive or send fails with `ECONNREFUSED`, the error queue names the
//! server, and the health supervisor hears of it before the server's next probe.

mod icmp;
mod serve;

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use nix::sys::socket::{MsgFlags, SockaddrLike, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

use healthcheck::Failure;

use crate::core::{Action, Count, DropReason, Outcome};
use crate::stream::{DatagramOut, Streams};
use crate::table::RoutingTable;

pub(crate) use serve::{serve, Served};

/// Kernel buffer size asked for each socket; bursts of REGISTERs after a failover, and the
/// moments the serving thread waits for a core, are absorbed here rather than dropped. With
/// `CAP_NET_ADMIN` siplb takes it whatever `net.core.rmem_max`/`wmem_max` say
/// (`SO_RCVBUFFORCE`); without, the kernel caps it at those, and siplb says so once at start.
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest datagram siplb reads (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// How long a serving thread sleeps in a receive before it looks whether it should stop (when
/// nothing wakes it sooner) and reads its socket's error queue.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a send may wait for room in the socket's send buffer before the datagram is
/// counted as a send error and dropped. Waiting a little beats dropping (a lost request costs
/// the client a retransmission 500 ms later, RFC 3261 T1); waiting long would stop the thread
/// from receiving. After one such wait, the rest of the batch is sent without waiting.
const SEND_TIMEOUT: Duration = Duration::from_millis(20);

fn bind_one(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    size_buffers(&socket);
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    // ICMP errors are a hint, not a requirement: carry on without them where refused.
    let _ = icmp::enable(&socket, addr.is_ipv6());
    Ok(socket)
}

/// Asks for [`SOCKET_BUFFER`] each way: forced past the sysctl caps where siplb may (root or
/// `CAP_NET_ADMIN`), else capped by them. Buffer sizes are a wish, not a requirement: siplb
/// keeps going with what the kernel grants.
fn size_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
}

/// Warns once per bind when the kernel granted less receive buffer than asked: under a burst or
/// a flood, a small buffer drops valid requests before siplb sees them.
fn warn_if_small(socket: &std::net::UdpSocket, addr: SocketAddr) {
    let granted = socket2::SockRef::from(socket)
        .recv_buffer_size()
        .unwrap_or(0);
    // Linux reports twice what was set (it counts its bookkeeping too).
    if granted < SOCKET_BUFFER {
        tracing::warn!(
            %addr,
            granted_bytes = granted / 2,
            asked_bytes = SOCKET_BUFFER,
            "the kernel granted a small UDP receive buffer (no CAP_NET_ADMIN, and \
             net.core.rmem_max is low): bursts may be dropped; raise net.core.rmem_max"
        );
    }
}

/// Binds `sockets` blocking sockets to `addr` (port 0 picks one port for all of them). Returns
/// the sockets and the address actually bound.
pub(crate) fn bind(
    addr: SocketAddr,
    sockets: usize,
) -> io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    warn_if_small(&first, bound);
    let mut bound_sockets = vec![first];
    for _ in 1..sockets.max(1) {
        bound_sockets.push(bind_one(bound)?);
    }
    Ok((bound_sockets, bound))
}

/// The address in a `sockaddr` the kernel filled in, if it is IPv4 or IPv6.
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    addr.as_sockaddr_in6()
        .map(|a| SocketAddr::V6(SocketAddrV6::from(*a)))
}

/// One socket of each address family siplb listens on, to send from when a datagram must go to
/// the other family than the one it arrived on: an IPv4 client's request for an IPv6 server, and
/// that server's response back to the client. A socket cannot send across families (the kernel
/// refuses), so without this such a message would be lost. Cheap to clone; the proxy updates it
/// whenever its listeners change.
#[derive(Clone, Default)]
pub struct Senders(Arc<ArcSwap<Families>>);

#[derive(Default)]
struct Families {
    v4: Option<Arc<std::net::UdpSocket>>,
    v6: Option<Arc<std::net::UdpSocket>>,
}

impl Senders {
    /// Sends from the first of `sockets` of each family from now on.
    pub(crate) fn set(&self, sockets: impl IntoIterator<Item = Arc<std::net::UdpSocket>>) {
        let mut families = Families::default();
        for s in sockets {
            let v6 = s.local_addr().is_ok_and(|a| a.is_ipv6());
            let slot = if v6 {
                &mut families.v6
            } else {
                &mut families.v4
            };
            slot.get_or_insert(s);
        }
        self.0.store(Arc::new(families));
    }

    /// A socket of `to`'s family, if siplb listens on that family.
    fn of(&self, to: SocketAddr) -> Option<Arc<std::net::UdpSocket>> {
        let families = self.0.load();
        if to.is_ipv6() {
            families.v6.clone()
        } else {
            families.v4.clone()
        }
    }
}

/// Sends one datagram from `socket`; `wait`: whether a full send buffer may be waited for
/// (up to [`SEND_TIMEOUT`]).
fn send_one(socket: &impl AsRawFd, buf: &[u8], to: SocketAddr, wait: bool) -> io::Result<usize> {
    let flags = if wait {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    let addr = SockaddrStorage::from(to);
    Ok(nix::sys::socket::sendto(
        socket.as_raw_fd(),
        buf,
        &addr as &dyn SockaddrLike,
        flags,
    )?)
}

impl DatagramOut for Senders {
    /// From the socket of `to`'s family, without waiting (a message that arrived on a
    /// connection and goes on over UDP).
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let Some(socket) = self.of(to) else {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no UDP listener of the destination's address family",
            ));
        };
        match send_one(&*socket, buf, to, false) {
            // A pending ICMP error about an earlier forward consumed by this send: the
            // datagram was not sent, try once more. The error queue keeps the entry for the
            // socket's serving thread, which reads it.
            Err(e) if icmp::is_icmp_error(&e) => send_one(&*socket, buf, to, false),
            sent => sent,
        }
    }
}

/// One datagram waiting in an [`Outbox`]: its bytes, where it goes, what it stands for.
pub(crate) struct Queued {
    pub(crate) buf: Vec<u8>,
    pub(crate) to: SocketAddr,
    count: Option<Count>,
}

/// Where the shell sends datagrams: a socket (`sendmmsg`), or a test's stand-in.
pub(crate) trait Sender {
    /// Sends `datagrams` in order, as `sendmmsg` does: `Ok(n)` when the kernel took the first
    /// `n` (`n ≥ 1`), the error that refused the first one otherwise. `wait`: whether a full
    /// send buffer may be waited for, briefly.
    fn send(&mut self, datagrams: &[Queued], wait: bool) -> io::Result<usize>;
}

/// The datagrams one batch of received datagrams produced, sent together by [`Outbox::flush`].
/// Its buffers are kept from batch to batch.
#[derive(Default)]
pub(crate) struct Outbox {
    queued: Vec<Queued>,
    len: usize,
}

impl Outbox {
    /// Queues a copy of `buf` for `to`, to be counted as `count` once sent.
    fn push(&mut self, buf: &[u8], to: SocketAddr, count: Option<Count>) {
        if let Some(q) = self.queued.get_mut(self.len) {
            q.buf.clear();
            q.buf.extend_from_slice(buf);
            q.to = to;
            q.count = count;
        } else {
            self.queued.push(Queued {
                buf: buf.to_vec(),
                to,
                count,
            });
        }
        self.len += 1;
    }

    /// Sends everything queued, and counts each datagram the kernel took on `table`'s counters
    /// (the table the datagrams were routed on) and each it refused as a send error.
    pub(crate) fn flush(
        &mut self,
        sender: &mut impl Sender,
        table: &RoutingTable,
        counters: &ShellCounters,
    ) {
        let mut at = 0;
        let mut wait = true;
        while at < self.len {
            match sender.send(&self.queued[at..self.len], wait) {
                Ok(n) if n > 0 => {
                    let sent = &self.queued[at..(at + n).min(self.len)];
                    for c in sent.iter().filter_map(|q| q.count) {
                        table.counters.count(c);
                    }
                    at += n;
                }
                result => {
                    let e = result
                        .err()
                        .unwrap_or_else(|| io::ErrorKind::WriteZero.into());
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // The buffer stayed full for a whole SEND_TIMEOUT: no more waiting.
                        wait = false;
                    }
                    counters.send_errors.increment(1);
                    tracing::debug!(error = %e, to = %self.queued[at].to, "udp send failed");
                    at += 1;
                }
            }
        }
        self.len = 0;
    }
}

/// The counters the shell owns: drops by reason and refused sends.
pub(crate) struct ShellCounters {
    /// Indexed by `DropReason as usize` (the order of [`DropReason::ALL`]).
    drops: Vec<Counter>,
    send_errors: Counter,
}

impl ShellCounters {
    fn new() -> Self {
        ShellCounters {
            drops: crate::stats::drop_counters(&DropReason::ALL.map(DropReason::as_str)),
            send_errors: metrics::counter!("siplb_send_errors_total"),
        }
    }
}

/// Carries out one outcome of the core: the passive health signal, the send of `out` (queued
/// in `outbox`, counted by [`Outbox::flush`] once the kernel took it), the count of a drop's
/// reason. An outcome that names a TCP or TLS server or a connection is handed to the
/// connection runtime (`streams`), which queues it, and is counted on `table` when it did.
pub(crate) fn deliver(
    outcome: Outcome,
    out: &[u8],
    table: &RoutingTable,
    outbox: &mut Outbox,
    counters: &ShellCounters,
    streams: Option<&Streams>,
    mut passive: impl FnMut(SocketAddr, Failure),
) {
    if let Some((server, failure)) = outcome.passive {
        passive(server, failure);
    }
    match outcome.action {
        Action::Forward(to) | Action::Reply(to) => outbox.push(out, to, outcome.count),
        Action::ToServer { .. } | Action::ToConn(_) => match streams {
            Some(streams) => {
                if streams.deliver_datagram(outcome.action, out, table) {
                    if let Some(c) = outcome.count {
                        table.counters.count(c);
                    }
                }
            }
            None => {
                if let Some(c) = counters.drops.get(DropReason::FlowGone as usize) {
                    c.increment(1);
                }
            }
        },
        Action::Drop(reason) => {
            if let Some(c) = counters.drops.get(reason as usize) {
                c.increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::core::Worker;
    use crate::stats::tests::probed;
    use crate::table::ConfigHealth;

    #[test]
    fn a_socket_gets_the_buffer_asked_for_past_the_sysctl_cap_when_it_may() {
        let (sockets, _) = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // With CAP_NET_ADMIN (root here), the whole of it; without, what the cap allows.
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap();
        let floor = if root {
            SOCKET_BUFFER
        } else {
            SOCKET_BUFFER.min(rmem_max)
        };
        for s in &sockets {
            let granted = socket2::SockRef::from(s).recv_buffer_size().unwrap();
            // Linux reports twice the size set.
            assert!(
                granted >= 2 * floor,
                "receive buffer {granted} < 2 x {floor} (rmem_max {rmem_max})"
            );
        }
    }

    /// A sender that records what it was asked to send and fails when told to.
    struct FakeSender {
        fail: bool,
        sent: Vec<SocketAddr>,
    }

    impl FakeSender {
        fn new(fail: bool) -> FakeSender {
            FakeSender {
                fail,
                sent: Vec::new(),
            }
        }
    }

    impl Sender for FakeSender {
        fn send(&mut self, datagrams: &[Queued], _wait: bool) -> io::Result<usize> {
            let Some(first) = datagrams.first() else {
                return Ok(0);
            };
            self.sent.push(first.to);
            if self.fail {
                Err(io::ErrorKind::PermissionDenied.into())
            } else {
                Ok(1)
            }
        }
    }

    /// Takes what the test says, up to a limit per call, then refuses one with `WouldBlock`.
    struct ChokingSender {
        per_call: usize,
        refuse_at: usize,
        calls: Vec<(usize, bool)>,
        taken: usize,
    }

    impl Sender for ChokingSender {
        fn send(&mut self, datagrams: &[Queued], wait: bool) -> io::Result<usize> {
            self.calls.push((datagrams.len(), wait));
            if self.taken == self.refuse_at {
                self.taken += 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let room = if self.taken < self.refuse_at {
                self.refuse_at - self.taken
            } else {
                usize::MAX
            };
            let n = datagrams.len().min(self.per_call).min(room);
            self.taken += n;
            Ok(n)
        }
    }

    const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
[[pool]]
name = "fe"
servers = [{ address = "127.0.0.1:5071" }]
[[route]]
pool = "fe"
"#;

    const REGISTER: &[u8] = b"REGISTER sip:contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bKd1;rport\r\n\
From: <sip:alice@contoso.com>;tag=1\r\nTo: <sip:alice@contoso.com>\r\n\
Call-ID: d1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";

    /// The routing table of [`CFG`] with every server up.
    fn table() -> RoutingTable {
        let cfg = crate::config::parse(Path::new("t.toml"), CFG).expect("valid config");
        RoutingTable::build(
            &cfg,
            crate::config::HostPort::from("127.0.0.1:5060".parse::<SocketAddr>().unwrap()),
            vec!["127.0.0.1:5060".parse().unwrap()],
            1,
            &ConfigHealth,
        )
    }

    /// [`deliver`] with no connections and no passive signal to hear, then the send.
    fn deliver_plain(
        outcome: Outcome,
        out: &[u8],
        table: &RoutingTable,
        sender: &mut FakeSender,
        counters: &ShellCounters,
    ) {
        let mut outbox = Outbox::default();
        deliver(outcome, out, table, &mut outbox, counters, None, |_, _| {});
        outbox.flush(sender, table, counters);
    }

    fn shell_counters() -> (ShellCounters, Arc<AtomicU64>) {
        let errors = Arc::new(AtomicU64::new(0));
        let counters = ShellCounters {
            drops: DropReason::ALL
                .iter()
                .map(|_| Counter::from_arc(Arc::new(AtomicU64::new(0))))
                .collect(),
            send_errors: Counter::from_arc(errors.clone()),
        };
        (counters, errors)
    }

    #[test]
    fn a_send_the_kernel_refuses_counts_as_a_send_error_only() {
        let mut table = table();
        let (table_counters, probe) = probed(["fe"]);
        table.counters = table_counters;
        let (counters, errors) = shell_counters();
        let mut worker = Worker::new();
        let client: SocketAddr = "192.0.2.7:5099".parse().unwrap();
        let requests = "siplb_requests_total{method=REGISTER,pool=fe}";

        let outcome = worker.handle(&table, REGISTER, client);
        let mut failing = FakeSender::new(true);
        deliver_plain(outcome, &worker.out, &table, &mut failing, &counters);
        assert_eq!(failing.sent.len(), 1, "the send was tried");
        assert_eq!(
            probe.get(requests),
            0,
            "a refused send is no request forwarded"
        );
        assert_eq!(probe.total(), 0);
        assert_eq!(errors.load(Ordering::Relaxed), 1);

        let mut working = FakeSender::new(false);
        deliver_plain(outcome, &worker.out, &table, &mut working, &counters);
        assert_eq!(probe.get(requests), 1);
        assert_eq!(errors.load(Ordering::Relaxed), 1);

        // An answer (a 483) is counted the same way: after the send only.
        let hops = String::from_utf8_lossy(REGISTER)
            .replace("Content-Length: 0", "Max-Forwards: 0\r\nContent-Length: 0");
        let outcome = worker.handle(&table, hops.as_bytes(), client);
        assert_eq!(outcome.action, Action::Reply(client));
        deliver_plain(outcome, &worker.out, &table, &mut failing, &counters);
        assert_eq!(probe.get("siplb_replies_total{code=483}"), 0);
        deliver_plain(outcome, &worker.out, &table, &mut working, &counters);
        assert_eq!(probe.get("siplb_replies_total{code=483}"), 1);
        assert_eq!(errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_passive_signal_is_passed_on_whatever_the_send_does() {
        let table = table();
        let (counters, _) = shell_counters();
        let mut worker = Worker::new();
        let client: SocketAddr = "192.0.2.7:5099".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:5071".parse().unwrap();
        worker.handle(&table, REGISTER, client);
        let resp = String::from_utf8_lossy(&worker.out).replacen(
            "REGISTER sip:contoso.com SIP/2.0",
            "SIP/2.0 503 Service Unavailable",
            1,
        );
        let outcome = worker.handle(&table, resp.as_bytes(), server);
        assert_eq!(outcome.passive, Some((server, Failure::Passive503)));
        let mut failing = FakeSender::new(true);
        let mut outbox = Outbox::default();
        let mut heard = Vec::new();
        deliver(
            outcome,
            &worker.out,
            &table,
            &mut outbox,
            &counters,
            None,
            |s, f| heard.push((s, f)),
        );
        outbox.flush(&mut failing, &table, &counters);
        assert_eq!(heard, vec![(server, Failure::Passive503)]);
    }

    #[test]
    fn a_batch_is_counted_datagram_by_datagram_and_stops_waiting_after_a_full_buffer() {
        let mut table = table();
        let (table_counters, probe) = probed(["fe"]);
        table.counters = table_counters;
        let (counters, errors) = shell_counters();
        let mut worker = Worker::new();
        let mut outbox = Outbox::default();
        for i in 0..10u16 {
            let client = SocketAddr::from(([192, 0, 2, 7], 5000 + i));
            let outcome = worker.handle(&table, REGISTER, client);
            deliver(
                outcome,
                &worker.out,
                &table,
                &mut outbox,
                &counters,
                None,
                |_, _| {},
            );
        }
        // The kernel takes 3 per call, and refuses the 7th datagram (a full buffer).
        let mut sender = ChokingSender {
            per_call: 3,
            refuse_at: 6,
            calls: Vec::new(),
            taken: 0,
        };
        outbox.flush(&mut sender, &table, &counters);
        let requests = "siplb_requests_total{method=REGISTER,pool=fe}";
        assert_eq!(probe.get(requests), 9, "every datagram but the refused one");
        assert_eq!(errors.load(Ordering::Relaxed), 1);
        assert_eq!(
            sender.calls,
            vec![(10, true), (7, true), (4, true), (3, false)],
            "each call starts after what the last one took; no waiting after a full buffer"
        );
        // The outbox is empty again: a second flush sends nothing.
        outbox.flush(&mut sender, &table, &counters);
        assert_eq!(sender.calls.len(), 4);
    }
}
