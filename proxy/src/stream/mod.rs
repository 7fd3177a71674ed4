//! SIP over TCP and TLS: framing, connections and flows.
//!
//! Every accepted connection is a **client flow** with a [`ConnId`]. Its messages are framed
//! ([`framer`]) and go through the same core as datagrams ([`Worker::handle_from`]); routing by
//! key is identical to UDP. A request for a TCP or TLS server goes over the **backend
//! connection** that belongs to the pair (this flow, that server), opened on demand; the
//! server's own requests on that connection (NOTIFY, BENOTIFY, INVITE…) come back down the flow,
//! and the answers to them go back up the same backend connection. UDP clients share one backend
//! connection per server.
//!
//! The pieces:
//! - [`conn`]: the registry every task sends through (`ConnId` → a link that writes at once or
//!   queues, bounded, and a close switch), and each connection's writer task;
//! - [`listen`]: TCP (and TLS) listeners, the `[connections]` limits at accept time;
//! - [`flow`]: a client flow's reader (framing, keep-alive pongs, timeouts, refusals) and the
//!   backend connections it owns;
//! - [`backend`]: opening a backend connection and reading what the server sends on it;
//! - [`deliver`]: carrying out the core's outcome for a message that arrived on a connection.
//!
//! Lifetimes (DESIGN.md "Connection-oriented transports"): a backend connection that dies
//! closes its client flow when every request of the flow went to that one server (the client
//! re-registers and is routed afresh), else the flow forgets it and routes its next request
//! afresh. A client flow that closes closes its backend connections. A server marked down by
//! its probes has its backend connections closed ([`Streams::watch_health`]); a drained server
//! keeps them and gets no new ones, since routing no longer chooses it.

mod backend;
mod conn;
mod deliver;
mod flow;
pub(crate) mod framer;
mod listen;
mod stats;
mod tls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::config::{Connections, Transport};
use crate::core::ConnId;
use crate::health::Control;
use crate::table::RoutingTable;

/// How long a connection reads nothing before its framer and worker give their buffers back
/// (a signed-in client is idle most of the time: a Lync client sends a keep-alive every 300 s).
const REST_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) use listen::{StreamBinding, StreamListener};
pub(crate) use stats::StreamStatus;

/// Where messages for a UDP destination leave (the UDP shell's sockets): a message that
/// arrived on a connection may have to go to a UDP server or a UDP client.
pub(crate) trait DatagramOut: Send + Sync {
    /// Sends one datagram without waiting; a full socket buffer is an error.
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
}

/// The connection runtime of a proxy: cheap to clone, shared by every listener, connection and
/// UDP worker.
#[derive(Clone)]
pub(crate) struct Streams {
    inner: Arc<Shared>,
}

/// What every connection task reaches through [`Streams`].
struct Shared {
    /// Every open connection, client flows and backend connections alike.
    conns: DashMap<ConnId, conn::Entry>,
    /// The next [`ConnId`]; ids start at 1 and are never reused.
    next_id: AtomicU64,
    /// `[connections]` of the config in effect; a connection keeps the limits it started with.
    limits: ArcSwap<Connections>,
    /// Client connections open, in all and per IP address.
    clients: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    /// The backend connection UDP clients (and connections serving no flow) share, per server.
    shared_backends: DashMap<(SocketAddr, Transport), ConnId>,
    tables: Arc<ArcSwap<RoutingTable>>,
    control: Control,
    udp: Arc<dyn DatagramOut>,
    /// How to open TLS to each TLS server (from the config in effect).
    server_tls: ArcSwap<crate::tls::client::ServerTls>,
    stats: stats::Stats,
}

impl Streams {
    /// A runtime routing against `tables`, telling `control` of passive health signals and
    /// sending datagrams through `udp`.
    pub(crate) fn new(
        limits: &Connections,
        tables: Arc<ArcSwap<RoutingTable>>,
        control: Control,
        udp: Arc<dyn DatagramOut>,
    ) -> Streams {
        Streams {
            inner: Arc::new(Shared {
                conns: DashMap::new(),
                next_id: AtomicU64::new(1),
                limits: ArcSwap::from_pointee(limits.clone()),
                clients: AtomicUsize::new(0),
                per_ip: DashMap::new(),
                shared_backends: DashMap::new(),
                tables,
                control,
                udp,
                server_tls: ArcSwap::from_pointee(crate::tls::client::ServerTls::default()),
                stats: stats::Stats::new(),
            }),
        }
    }

    /// New connections get these limits from now on.
    pub(crate) fn set_limits(&self, limits: &Connections) {
        self.inner.limits.store(Arc::new(limits.clone()));
    }

    /// A fresh connection id.
    fn next_id(&self) -> ConnId {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// What `/status` shows of connections.
    pub(crate) fn status(&self) -> StreamStatus {
        self.inner.stats.status()
    }

    /// Client connections open, over every TCP and TLS listener.
    pub(crate) fn client_connections(&self) -> usize {
        self.inner.clients.load(Ordering::Relaxed)
    }

    /// Closes every connection (the proxy is stopping).
    pub(crate) fn close_all(&self) {
        for e in self.inner.conns.iter() {
            e.value().close();
        }
    }

    /// Watches the routing table until the task is dropped: when a new table marks a server
    /// down (or a reload removes it), its backend connections are closed, and with them the
    /// client flows that used only that server. `swaps` is the supervisor's announcement of
    /// each table it swaps in (`Control::swaps`).
    pub(crate) async fn watch_health(
        self,
        mut swaps: tokio::sync::watch::Receiver<Arc<RoutingTable>>,
    ) {
        while swaps.changed().await.is_ok() {
            let table = swaps.borrow_and_update().clone();
            self.close_backends_of_down_servers(&table);
        }
    }

    fn close_backends_of_down_servers(&self, table: &RoutingTable) {
        for e in self.inner.conns.iter() {
            let conn::Role::Backend { server, transport } = e.value().role else {
                continue;
            };
            let down = match table.server_at(server) {
                Some((p, s)) => {
                    let s = table.server(p, s);
                    s.state == healthcheck::ServerState::Down || s.transport != transport
                }
                None => true,
            };
            if down {
                tracing::debug!(conn = e.key(), %server, "server down: its backend connection closes");
                e.value().close();
            }
        }
    }

    /// Gauges are published on every change and every `stats::GAUGE_REFRESH` (the exporter
    /// forgets a gauge nobody refreshed); runs until the task is dropped.
    pub(crate) async fn refresh_gauges(self) {
        let mut tick = tokio::time::interval(crate::stats::GAUGE_REFRESH);
        loop {
            tick.tick().await;
            self.inner.stats.publish();
        }
    }
}
