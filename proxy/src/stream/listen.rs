//! TCP and TLS listeners: bound apart from being served (so a caller owns the sockets and knows
//! their addresses first), then an accept loop that applies the `[connections]` limits before a
//! connection costs anything: over `max` or `max_per_ip` it is closed at once; a TLS handshake
//! must complete within `handshake_timeout`. Every refusal is counted; its log line is gated
//! ([`LogGate`]) so a connection flood writes one line a second per listener and reason, not
//! one per connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::{Connections, Transport};
use crate::tls::server::ListenerTls;

use super::stats::{ListenerStats, Refusal};
use super::Streams;

/// Connections waiting to be accepted, at most (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 4096;

/// A bound TCP listener, not yet served.
pub(crate) struct StreamBinding {
    /// The address as configured (port 0 allowed).
    pub(crate) configured: SocketAddr,
    /// The address actually bound.
    pub(crate) bound: SocketAddr,
    pub(crate) transport: Transport,
    listener: std::net::TcpListener,
    /// The certificate a TLS listener serves.
    tls: Option<ListenerTls>,
}

impl StreamBinding {
    /// Binds `addr` for plain TCP.
    pub(crate) fn tcp(addr: SocketAddr) -> io::Result<StreamBinding> {
        Self::bind(addr, Transport::Tcp, None)
    }

    /// Binds `addr` for TLS, serving `tls`'s certificate.
    pub(crate) fn tls(addr: SocketAddr, tls: ListenerTls) -> io::Result<StreamBinding> {
        Self::bind(addr, Transport::Tls, Some(tls))
    }

    fn bind(
        addr: SocketAddr,
        transport: Transport,
        tls: Option<ListenerTls>,
    ) -> io::Result<StreamBinding> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        let bound = listener.local_addr()?;
        Ok(StreamBinding {
            configured: addr,
            bound,
            transport,
            listener,
            tls,
        })
    }
}

/// A listener being served; dropping it stops accepting (connections already accepted go on).
pub(crate) struct StreamListener {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) transport: Transport,
    /// The certificate a TLS listener serves (reloaded in place).
    pub(crate) tls: Option<ListenerTls>,
    task: JoinHandle<()>,
    /// Keeps the listener's counts (and `/status` line) alive while it is served.
    _stats: Arc<ListenerStats>,
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often a listener logs a refusal at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Lets one refusal log line through per [`LOG_EVERY`] (for one listener and reason), and says
/// how many refusals went unlogged since the last line. A connection flood is still counted in full
/// (`siplb_connection_refusals_total`); without the gate, 8,000 refusals a second wrote
/// 1.4 MB/s of log lines and doubled the CPU a refusal costs (bench/flood.sh,
/// docs/BENCHMARKS.md "Floods").
struct LogGate {
    started: Instant,
    /// Milliseconds after `started` before which no line is written.
    next_ms: AtomicU64,
    /// Refusals not logged since the last line.
    held: AtomicU64,
}

impl LogGate {
    fn new() -> LogGate {
        LogGate {
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(unlogged refusals before this one)` when this refusal is to be logged, else
    /// `None` (and it is held for the next line).
    fn pass(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A listener's gates, one per reason refused at accept time: a flood of one kind never hides
/// the first line of another.
struct LogGates {
    max: LogGate,
    max_per_ip: LogGate,
    handshake_failed: LogGate,
    handshake_timeout: LogGate,
}

impl LogGates {
    fn new() -> LogGates {
        LogGates {
            max: LogGate::new(),
            max_per_ip: LogGate::new(),
            handshake_failed: LogGate::new(),
            handshake_timeout: LogGate::new(),
        }
    }
}

/// A client connection's place in the `[connections]` limits, given back on drop.
struct Slot {
    streams: Streams,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let shared = &self.streams.inner;
        shared.clients.fetch_sub(1, Ordering::Relaxed);
        shared.per_ip.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl Streams {
    /// Serves a bound listener: accepts connections until the returned listener is dropped.
    /// Must run inside a tokio runtime.
    pub(crate) fn serve_listener(&self, binding: StreamBinding) -> io::Result<StreamListener> {
        let listener = TcpListener::from_std(binding.listener)?;
        let stats = Arc::new(ListenerStats::new(
            binding.configured.to_string(),
            binding.transport,
            binding.bound,
        ));
        self.inner.stats.listener(&stats);
        let task = tokio::spawn(self.clone().accept_loop(
            listener,
            binding.tls.clone(),
            stats.clone(),
        ));
        Ok(StreamListener {
            configured: binding.configured,
            bound: binding.bound,
            transport: binding.transport,
            tls: binding.tls,
            task,
            _stats: stats,
        })
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        tls: Option<ListenerTls>,
        stats: Arc<ListenerStats>,
    ) {
        let gate = Arc::new(LogGates::new());
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: keep the listener, try again shortly.
                    tracing::debug!(listener = %stats.label, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let limits = self.inner.limits.load_full();
            let Some(slot) = self.take_slot(peer, &limits, &stats, &gate) else {
                continue; // dropping the stream closes it
            };
            let _ = tcp.set_nodelay(true);
            let streams = self.clone();
            let stats = stats.clone();
            let gate = gate.clone();
            // Each connection gets the acceptor of the moment: a renewed certificate is
            // served to the next handshake.
            let acceptor = tls.as_ref().map(ListenerTls::acceptor);
            tokio::spawn(async move {
                streams
                    .serve_accepted(tcp, peer, acceptor, (stats, gate), limits)
                    .await;
                drop(slot);
            });
        }
    }

    /// Takes a place for a client connection from `peer`, or refuses it (counted and logged).
    fn take_slot(
        &self,
        peer: SocketAddr,
        limits: &Connections,
        stats: &ListenerStats,
        gate: &LogGates,
    ) -> Option<Slot> {
        let shared = &self.inner;
        let ip = peer.ip();
        if shared.clients.fetch_add(1, Ordering::Relaxed) >= limits.max {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            stats.refused(Refusal::Max);
            if let Some(unlogged) = gate.max.pass() {
                tracing::info!(%peer, listener = %stats.label, max = limits.max, unlogged,
                    "connection refused: [connections] max client connections open");
            }
            return None;
        }
        let mut over = false;
        shared
            .per_ip
            .entry(ip)
            .and_modify(|n| {
                if *n >= limits.max_per_ip {
                    over = true;
                } else {
                    *n += 1;
                }
            })
            .or_insert(1);
        if over {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            stats.refused(Refusal::MaxPerIp);
            if let Some(unlogged) = gate.max_per_ip.pass() {
                tracing::info!(%peer, listener = %stats.label, max_per_ip = limits.max_per_ip,
                    unlogged,
                    "connection refused: [connections] max_per_ip connections open from this address");
            }
            return None;
        }
        Some(Slot {
            streams: self.clone(),
            ip,
        })
    }

    /// Completes the TLS handshake of a TLS listener's connection (`acceptor`), then serves
    /// the flow.
    async fn serve_accepted(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        (stats, gate): (Arc<ListenerStats>, Arc<LogGates>),
        limits: Arc<Connections>,
    ) {
        let Some(acceptor) = acceptor else {
            return self
                .serve_client(tcp, peer, Transport::Tcp, stats, limits)
                .await;
        };
        let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
        match handshake {
            Ok(Ok(tls)) => {
                self.serve_client(tls, peer, Transport::Tls, stats, limits)
                    .await
            }
            Ok(Err(e)) => {
                stats.refused(Refusal::HandshakeFailed);
                if let Some(unlogged) = gate.handshake_failed.pass() {
                    tracing::info!(%peer, listener = %stats.label, error = %e, unlogged,
                        "TLS handshake failed; connection closed");
                }
            }
            Err(_) => {
                stats.refused(Refusal::HandshakeTimeout);
                if let Some(unlogged) = gate.handshake_timeout.pass() {
                    tracing::info!(%peer, listener = %stats.label,
                        timeout = ?limits.handshake_timeout, unlogged,
                        "TLS handshake not complete within handshake_timeout; connection closed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gate_lets_one_refusal_a_second_through_and_counts_the_rest() {
        let gate = LogGate::new();
        assert_eq!(gate.pass(), Some(0), "the first refusal is logged");
        for _ in 0..999 {
            assert_eq!(gate.pass(), None);
        }
        // A second later (moved back in time rather than waited for).
        gate.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(
            gate.pass(),
            Some(999),
            "the next line says how many went unlogged"
        );
        assert_eq!(gate.pass(), None);
    }
}
