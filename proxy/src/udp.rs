//! The UDP shell: sockets in, [`Worker::handle`] in the middle, sockets out.
//!
//! Each listen address gets one socket per worker, all bound with `SO_REUSEPORT` so the kernel
//! spreads datagrams over them by flow; each socket has its own task and its own [`Worker`]
//! buffers. A message is routed against whatever table is current when it arrives.
//!
//! The core decides, the shell acts ([`deliver`]): it passes the outcome's passive health signal
//! to the supervisor, sends, and counts what the outcome says only once the kernel took the
//! datagram (a refused send counts in `siplb_send_errors_total` only).
//!
//! The sockets ask for ICMP errors (`IP_RECVERR`): when a forward to a server draws a port
//! unreachable, the next receive fails with `ECONNREFUSED`, the error queue names the server,
//! and the health supervisor hears of it before the server's next probe.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use healthcheck::Failure;

use crate::core::{Action, DropReason, Outcome, Worker};
use crate::health::Control;
use crate::stream::{DatagramOut, Streams};
use crate::table::RoutingTable;

/// Kernel buffer size asked for each socket; bursts of REGISTERs after a failover are absorbed
/// here rather than dropped. The kernel caps it at `net.core.rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest datagram siplb reads (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

fn bind_one(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Buffer sizes are a wish, not a requirement: keep going with what the kernel grants.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    // ICMP errors are a hint, not a requirement: carry on without them where refused.
    let _ = icmp::enable(&socket, addr.is_ipv6());
    Ok(socket)
}

/// Binds `workers` sockets to `addr` (port 0 picks one port for all of them). Returns the
/// sockets and the address actually bound.
pub(crate) fn bind(
    addr: SocketAddr,
    workers: usize,
) -> io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(bind_one(bound)?);
    }
    Ok((sockets, bound))
}

/// Whether a socket error is one an ICMP message put there (reported by whatever syscall comes
/// next on the socket, whichever datagram drew it).
fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
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
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
}

impl Senders {
    /// Sends from the first of `sockets` of each family from now on.
    pub(crate) fn set(&self, sockets: impl IntoIterator<Item = Arc<UdpSocket>>) {
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
    fn of(&self, to: SocketAddr) -> Option<Arc<UdpSocket>> {
        let families = self.0.load();
        if to.is_ipv6() {
            families.v6.clone()
        } else {
            families.v4.clone()
        }
    }
}

impl DatagramOut for Senders {
    /// From the socket of `to`'s family, without waiting (a message that arrived on a
    /// connection and goes on over UDP).
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self.of(to) {
            Some(socket) => socket.try_send_to(buf, to),
            None => Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no UDP listener of the destination's address family",
            )),
        }
    }
}

/// Where the shell sends datagrams: a socket, or a test's stand-in.
pub(crate) trait Sender {
    async fn send(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
}

/// A worker's socket, the sockets of the other family, and the health supervisor to tell of
/// ICMP errors.
struct SocketSender<'a> {
    socket: &'a UdpSocket,
    v6: bool,
    senders: &'a Senders,
    control: &'a Control,
}

impl Sender for SocketSender<'_> {
    async fn send(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        // Across families, from a socket of the destination's family; with none (a client of a
        // family siplb does not listen on), the send fails and is counted.
        let other = if to.is_ipv6() == self.v6 {
            None
        } else {
            self.senders.of(to)
        };
        let socket = other.as_deref().unwrap_or(self.socket);
        let sent = socket.send_to(buf, to).await;
        if matches!(&sent, Err(e) if is_icmp_error(e)) {
            // A pending ICMP error from an earlier forward (to some other server) is reported
            // by whatever syscall comes next — here, this send, which the kernel then refuses.
            // The error is consumed by that: note who it was about, and send this message again.
            drain_errors(socket, self.control);
            return socket.send_to(buf, to).await;
        }
        sent
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

/// Carries out one outcome of the core: the passive health signal, the send of `out`, and the
/// counting — of the outcome's [`crate::stats::Count`] after the kernel took the datagram, of
/// a send error otherwise, of the reason for a drop. An outcome that names a TCP or TLS server
/// or a connection is handed to the connection runtime (`streams`), which queues it.
pub(crate) async fn deliver(
    outcome: Outcome,
    out: &[u8],
    table: &RoutingTable,
    sender: &impl Sender,
    counters: &ShellCounters,
    streams: Option<&Streams>,
    mut passive: impl FnMut(SocketAddr, Failure),
) {
    if let Some((server, failure)) = outcome.passive {
        passive(server, failure);
    }
    match outcome.action {
        Action::Forward(to) | Action::Reply(to) => match sender.send(out, to).await {
            Ok(_) => {
                if let Some(c) = outcome.count {
                    table.counters.count(c);
                }
            }
            Err(e) => {
                counters.send_errors.increment(1);
                tracing::debug!(error = %e, %to, "udp send failed");
            }
        },
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
            tracing::debug!(reason = reason.as_str(), "dropped");
        }
    }
}

/// Serves one socket until the task is dropped. Datagrams for an address of the other family
/// go out from that family's socket in `senders`.
pub async fn serve(
    socket: Arc<UdpSocket>,
    tables: Arc<ArcSwap<RoutingTable>>,
    control: Control,
    senders: Senders,
    streams: Streams,
) {
    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let mut worker = Worker::new();
    let counters = ShellCounters::new();
    let sender = SocketSender {
        socket: &socket,
        v6,
        senders: &senders,
        control: &control,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            biased;
            r = socket.recv_from(&mut buf) => r,
            // Queued ICMP errors take receive-buffer space: with nothing else arriving they
            // would never be read, and enough of them leave no room for SIP.
            _ = socket.ready(Interest::ERROR) => {
                drain_errors(&socket, &control);
                continue;
            }
        };
        let (n, src) = match received {
            Ok(x) => x,
            Err(e) => {
                if !is_icmp_error(&e) {
                    tracing::debug!(error = %e, "udp receive failed");
                }
                drain_errors(&socket, &control);
                continue;
            }
        };
        let table = tables.load();
        let outcome = worker.handle(&table, &buf[..n], src);
        if let Action::Drop(reason) = outcome.action {
            tracing::debug!(reason = reason.as_str(), %src, len = n, "dropped");
        }
        deliver(
            outcome,
            &worker.out,
            &table,
            &sender,
            &counters,
            Some(&streams),
            |server, failure| control.passive(server, failure),
        )
        .await;
    }
}

/// Reads every queued ICMP error and passes those about a forward to the health supervisor:
/// a port unreachable says the server is not listening, a host or network unreachable that it
/// cannot be reached.
fn drain_errors(socket: &UdpSocket, control: &Control) {
    // Bounded: the queue cannot hold more than the receive buffer, but never spin on it.
    for _ in 0..100_000 {
        let Some(err) = icmp::pop(socket) else { break };
        let Some(to) = err.destination else { continue };
        let failure = match err.kind {
            io::ErrorKind::ConnectionRefused => Failure::PassiveRefused,
            _ => Failure::Unreachable,
        };
        tracing::debug!(%to, error = ?err.kind, "ICMP error on forward");
        control.passive(to, failure);
    }
    // Readiness for errors is cleared only by an attempt that would block.
    let _ = socket.try_io(Interest::ERROR, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// One ICMP error read from a socket's error queue.
struct QueuedError {
    destination: Option<SocketAddr>,
    kind: io::ErrorKind,
}

/// ICMP errors on UDP sockets (Linux `IP_RECVERR` / `IPV6_RECVERR` and the error queue).
#[cfg(target_os = "linux")]
mod icmp {
    use std::io::{self, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockaddrLike,
        SockaddrStorage,
    };

    use super::QueuedError;

    /// Asks the kernel to report ICMP errors on this (unconnected) socket.
    pub fn enable(socket: &impl std::os::fd::AsFd, v6: bool) -> io::Result<()> {
        if v6 {
            setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
        } else {
            setsockopt(socket, sockopt::Ipv4RecvErr, &true)?;
        }
        Ok(())
    }

    /// Pops one queued ICMP error: the destination of the datagram that drew it and what the
    /// error was. `None` when the queue is empty.
    pub fn pop(socket: &impl AsRawFd) -> Option<QueuedError> {
        let mut data = [0u8; 512];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        )
        .ok()?;
        let mut errno = 0;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4RecvErr(e, _)
                    | ControlMessageOwned::Ipv6RecvErr(e, _) => {
                        errno = e.ee_errno as i32;
                    }
                    _ => {}
                }
            }
        }
        let destination = msg.address.and_then(|addr| match addr.family()? {
            AddressFamily::Inet => addr.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into())),
            AddressFamily::Inet6 => addr.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())),
            _ => None,
        });
        Some(QueuedError {
            destination,
            kind: io::Error::from_raw_os_error(errno).kind(),
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod icmp {
    use std::io;
    use std::net::SocketAddr;

    pub fn enable(_: &impl std::os::fd::AsFd, _: bool) -> io::Result<()> {
        Ok(())
    }

    pub fn pop(_: &impl std::os::fd::AsRawFd) -> Option<super::QueuedError> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::stats::tests::probed;
    use crate::table::ConfigHealth;

    /// A sender that records what it was asked to send and fails when told to.
    struct FakeSender {
        fail: bool,
        sent: RefCell<Vec<SocketAddr>>,
    }

    impl FakeSender {
        fn new(fail: bool) -> FakeSender {
            FakeSender {
                fail,
                sent: RefCell::default(),
            }
        }
    }

    impl Sender for FakeSender {
        async fn send(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
            self.sent.borrow_mut().push(to);
            if self.fail {
                Err(io::ErrorKind::PermissionDenied.into())
            } else {
                Ok(buf.len())
            }
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

    /// [`deliver`] with no connections and no passive signal to hear.
    async fn deliver_plain(
        outcome: Outcome,
        out: &[u8],
        table: &RoutingTable,
        sender: &FakeSender,
        counters: &ShellCounters,
    ) {
        deliver(outcome, out, table, sender, counters, None, |_, _| {}).await;
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

    #[tokio::test]
    async fn a_send_the_kernel_refuses_counts_as_a_send_error_only() {
        let mut table = table();
        let (table_counters, probe) = probed(["fe"]);
        table.counters = table_counters;
        let (counters, errors) = shell_counters();
        let mut worker = Worker::new();
        let client: SocketAddr = "192.0.2.7:5099".parse().unwrap();
        let requests = "siplb_requests_total{method=REGISTER,pool=fe}";

        let outcome = worker.handle(&table, REGISTER, client);
        let failing = FakeSender::new(true);
        deliver_plain(outcome, &worker.out, &table, &failing, &counters).await;
        assert_eq!(failing.sent.borrow().len(), 1, "the send was tried");
        assert_eq!(
            probe.get(requests),
            0,
            "a refused send is no request forwarded"
        );
        assert_eq!(probe.total(), 0);
        assert_eq!(errors.load(Ordering::Relaxed), 1);

        let working = FakeSender::new(false);
        deliver_plain(outcome, &worker.out, &table, &working, &counters).await;
        assert_eq!(probe.get(requests), 1);
        assert_eq!(errors.load(Ordering::Relaxed), 1);

        // An answer (a 483) is counted the same way: after the send only.
        let hops = String::from_utf8_lossy(REGISTER)
            .replace("Content-Length: 0", "Max-Forwards: 0\r\nContent-Length: 0");
        let outcome = worker.handle(&table, hops.as_bytes(), client);
        assert_eq!(outcome.action, Action::Reply(client));
        deliver_plain(outcome, &worker.out, &table, &failing, &counters).await;
        assert_eq!(probe.get("siplb_replies_total{code=483}"), 0);
        deliver_plain(outcome, &worker.out, &table, &working, &counters).await;
        assert_eq!(probe.get("siplb_replies_total{code=483}"), 1);
        assert_eq!(errors.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_passive_signal_is_passed_on_whatever_the_send_does() {
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
        let failing = FakeSender::new(true);
        let mut heard = Vec::new();
        deliver(
            outcome,
            &worker.out,
            &table,
            &failing,
            &counters,
            None,
            |s, f| heard.push((s, f)),
        )
        .await;
        assert_eq!(heard, vec![(server, Failure::Passive503)]);
    }
}
