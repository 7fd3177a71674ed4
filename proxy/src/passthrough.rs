//! Layer-4 passthrough: TLS that must end at the servers (`[listen] passthrough`).
//!
//! This is what Microsoft's hardware load balancer does for Lync on 5061, for operators who
//! cannot hand a pool's certificate to siplb: each accepted connection is placed on one server
//! and its bytes are copied both ways without being read, so TLS ends at the server. siplb still
//! brings what it brings to SIP — health checks, stickiness and pool pairing:
//!
//! - the key is the client's IP (hashed as a route's `key = "source-ip"` hashes it), the
//!   serving pool is the listener's pool or its pair when failed over, and the server is the
//!   one [`RoutingTable::decide_pool`] chooses — the same rule as for SIP, written once;
//! - a server that does not accept within the pool's probe timeout is skipped for the next in
//!   HRW order ([`RoutingTable::next_server`]), each server tried at most once; a refused
//!   connection is also a passive health signal;
//! - an established connection lives until either side closes it (a half-close is passed on),
//!   until it has been silent both ways for the listener's `idle_timeout` (1800 s by default),
//!   or until the routing table says its server is down or gone (`relay`); a drained
//!   server keeps its connections and gets no new ones.
//!
//! The health supervisor announces every routing table it swaps in (`Control::swaps`); each
//! connection waits on that announcement, so a connection to a server that goes down closes as
//! the table saying so is swapped in.

mod relay;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use healthcheck::Failure;
use metrics::{Counter, Gauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use relay::Target;

use crate::config::{Config, Passthrough};
use crate::health::Control;
use crate::hrw;
use crate::table::RoutingTable;

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;

/// The routing key of a client: its IP, an IPv4-mapped IPv6 address read as the IPv4 address
/// (a dual-stack listener sees IPv4 clients that way), hashed as `key = "source-ip"` hashes it.
pub(crate) fn client_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(ip) => hrw::key_hash(&ip.octets()),
        IpAddr::V6(ip) => hrw::key_hash(&ip.octets()),
    }
}

/// Every passthrough listener of a config, bound and not yet served (see
/// [`Passthroughs::start`]).
pub(crate) struct Bindings {
    bound: Vec<Binding>,
}

/// One listener socket, bound and listening, not yet served.
struct Binding {
    settings: Passthrough,
    socket: std::net::TcpListener,
    bound: SocketAddr,
}

impl Binding {
    fn bind(settings: &Passthrough) -> anyhow::Result<Binding> {
        let addr = settings.address;
        let socket = listen(addr).with_context(|| format!("cannot bind passthrough {addr}"))?;
        let bound = socket.local_addr()?;
        Ok(Binding {
            settings: settings.clone(),
            socket,
            bound,
        })
    }
}

/// A non-blocking TCP listener at `addr` (`SO_REUSEADDR`, so a restart does not wait for the
/// connections of the previous process to leave TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Bindings {
    /// Binds every `[listen] passthrough` address of `cfg`.
    pub(crate) fn bind(cfg: &Config) -> anyhow::Result<Bindings> {
        let bound = cfg
            .listen
            .passthrough
            .iter()
            .map(Binding::bind)
            .collect::<anyhow::Result<_>>()?;
        Ok(Bindings { bound })
    }
}

/// What a listener's connections take from the config; replaced whole by a reload.
#[derive(Debug, Clone)]
struct Settings {
    pool: String,
    idle_timeout: Duration,
}

/// What every listener shares: the tables, each pool's probe timeout, the supervisor.
struct Shared {
    tables: Arc<ArcSwap<RoutingTable>>,
    /// Each table the supervisor swaps in.
    changes: watch::Receiver<Arc<RoutingTable>>,
    /// Pool name → its probe timeout, the connect timeout towards its servers.
    connect_timeouts: ArcSwap<HashMap<String, Duration>>,
    control: Control,
}

impl Shared {
    fn connect_timeout(&self, pool: &str) -> Duration {
        let timeouts = self.connect_timeouts.load();
        timeouts
            .get(pool)
            .copied()
            .unwrap_or(Duration::from_millis(500))
    }
}

fn connect_timeouts(cfg: &Config) -> HashMap<String, Duration> {
    cfg.pools
        .iter()
        .map(|p| (p.name.clone(), p.health.timeout))
        .collect()
}

/// One served listener: its settings, its counts, and the task accepting on it.
struct Listener {
    bound: SocketAddr,
    settings: ArcSwap<Settings>,
    /// Connections open now.
    open: AtomicUsize,
    /// `siplb_connections{listener,transport="passthrough"}`.
    gauge: Gauge,
    ok: Counter,
    no_server: Counter,
    connect_failed: Counter,
}

impl Listener {
    fn new(bound: SocketAddr, settings: &Passthrough) -> Listener {
        let label = bound.to_string();
        let result = |r: &'static str| {
            metrics::counter!("siplb_passthrough_connections_total",
                "listener" => label.clone(), "result" => r)
        };
        Listener {
            bound,
            settings: ArcSwap::from_pointee(Settings {
                pool: settings.pool.clone(),
                idle_timeout: settings.idle_timeout,
            }),
            open: AtomicUsize::new(0),
            gauge: metrics::gauge!("siplb_connections",
                "listener" => label.clone(), "transport" => "passthrough"),
            ok: result("ok"),
            no_server: result("no_server"),
            connect_failed: result("connect_failed"),
        }
    }
}

/// A listener being served; dropping it stops accepting and closes its connections.
struct Running {
    configured: SocketAddr,
    listener: Arc<Listener>,
    /// Set (to true) to close the listening socket while its connections go on.
    close: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A passthrough listener as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ListenerStatus {
    /// The address bound.
    pub(crate) address: String,
    /// The home pool.
    pub(crate) pool: String,
    /// Connections open now.
    pub(crate) connections: usize,
}

/// Listeners bound for a new config, waiting for [`Passthroughs::commit`]; dropped, they close.
pub(crate) struct Staged {
    next: Vec<(SocketAddr, Option<Binding>, Passthrough)>,
    timeouts: HashMap<String, Duration>,
}

/// The passthrough listeners of a running proxy. Dropping it closes them and their
/// connections.
pub(crate) struct Passthroughs {
    shared: Arc<Shared>,
    running: Mutex<Vec<Running>>,
}

impl Passthroughs {
    /// Serves `bindings` (bound from `cfg`) against `tables`; refused connects go to `control`
    /// as passive signals. Must run inside a tokio runtime.
    pub(crate) fn start(
        bindings: Bindings,
        cfg: &Config,
        tables: &Arc<ArcSwap<RoutingTable>>,
        control: &Control,
    ) -> anyhow::Result<Passthroughs> {
        let shared = Arc::new(Shared {
            tables: tables.clone(),
            changes: control.swaps(),
            connect_timeouts: ArcSwap::from_pointee(connect_timeouts(cfg)),
            control: control.clone(),
        });
        let mut running = Vec::new();
        for b in bindings.bound {
            running.push(serve(b, &shared)?);
        }
        Ok(Passthroughs {
            shared,
            running: Mutex::new(running),
        })
    }

    /// The addresses bound, in config order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|r| r.listener.bound).collect()
    }

    /// Each listener with its pool and open connections.
    pub(crate) fn status(&self) -> Vec<ListenerStatus> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .map(|r| ListenerStatus {
                address: r.listener.bound.to_string(),
                pool: r.listener.settings.load().pool.clone(),
                connections: r.listener.open.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// First half of a reload: binds the addresses `cfg` adds (all of them, so a bind failure
    /// changes nothing). Nothing is served or closed until [`Passthroughs::commit`].
    pub(crate) fn prepare(&self, cfg: &Config) -> anyhow::Result<Staged> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // Each running listener is kept for the first entry of its configured address (so
        // two entries at 127.0.0.1:0 keep one listener and bind another); commit matches the
        // same way.
        let mut claimed = vec![false; running.len()];
        let mut next = Vec::new();
        for p in &cfg.listen.passthrough {
            let kept =
                (0..running.len()).find(|&i| !claimed[i] && running[i].configured == p.address);
            let binding = match kept {
                Some(i) => {
                    claimed[i] = true;
                    None
                }
                None => Some(Binding::bind(p)?),
            };
            next.push((p.address, binding, p.clone()));
        }
        Ok(Staged {
            next,
            timeouts: connect_timeouts(cfg),
        })
    }

    /// Second half of a reload: serves the new listeners, gives kept ones their new pool and
    /// idle timeout (for connections accepted from now on), and closes removed ones with their
    /// connections.
    pub(crate) fn commit(&self, staged: Staged) -> anyhow::Result<()> {
        self.shared
            .connect_timeouts
            .store(Arc::new(staged.timeouts));
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for (addr, binding, settings) in staged.next {
            match binding {
                Some(b) => {
                    let r = serve(b, &self.shared)?;
                    tracing::info!(%addr, bound = %r.listener.bound, pool = %settings.pool,
                        "passthrough listener opened");
                    running.push(r);
                }
                None => {
                    let Some(at) = old.iter().position(|r| r.configured == addr) else {
                        continue;
                    };
                    let r = old.remove(at);
                    r.listener.settings.store(Arc::new(Settings {
                        pool: settings.pool.clone(),
                        idle_timeout: settings.idle_timeout,
                    }));
                    running.push(r);
                }
            }
        }
        for r in old {
            tracing::info!(addr = %r.configured, "passthrough listener closed");
        }
        Ok(())
    }

    /// The graceful stop's half: every listening socket closes (a new connection is refused by
    /// the kernel) while the connections already open go on until [`Passthroughs::stop`].
    /// Returns the number of listeners closed.
    pub(crate) fn close_listeners(&self) -> usize {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for r in running.iter() {
            r.close.send_replace(true);
        }
        running.len()
    }

    /// Connections open now, over every listener.
    pub(crate) fn connections(&self) -> usize {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .map(|r| r.listener.open.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes every listener and connection.
    pub(crate) fn stop(&self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Starts accepting on a bound listener.
fn serve(binding: Binding, shared: &Arc<Shared>) -> anyhow::Result<Running> {
    let socket =
        TcpListener::from_std(binding.socket).context("cannot register passthrough socket")?;
    let listener = Arc::new(Listener::new(binding.bound, &binding.settings));
    let (close, closing) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(accept(socket, listener.clone(), shared.clone(), closing));
    Ok(Running {
        configured: binding.settings.address,
        listener,
        close,
        task,
    })
}

/// Accepts connections until `closing` changes, then closes the listening socket and drives
/// the open connections until they end; aborting drops every connection task with it.
async fn accept(
    socket: TcpListener,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = closing.changed() => break,
            accepted = socket.accept() => match accepted {
                Ok((client, peer)) => {
                    connections.spawn(connection(client, peer, listener.clone(), shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: give connections time to close
                    // rather than spin on the error.
                    tracing::debug!(listener = %listener.bound, error = %e, "passthrough accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(socket);
    tracing::info!(listener = %listener.bound, connections = connections.len(),
        "passthrough listener closed; its open connections go on");
    while connections.join_next().await.is_some() {}
}

/// Counts an open connection while it lives.
struct OpenGuard<'a>(&'a Listener);

impl<'a> OpenGuard<'a> {
    fn new(listener: &'a Listener) -> Self {
        listener.open.fetch_add(1, Ordering::Relaxed);
        listener.gauge.increment(1.0);
        OpenGuard(listener)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}

/// One client connection: place it, connect to its server (falling back in HRW order), then
/// copy bytes both ways until one of the ways a connection ends.
async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
) {
    let settings = listener.settings.load_full();
    let table = shared.tables.load_full();
    let key = client_key(peer.ip());
    let Some(home) = table.pool_index(&settings.pool) else {
        listener.no_server.increment(1);
        tracing::debug!(listener = %listener.bound, client = %peer, pool = %settings.pool,
            "passthrough connection refused: the pool is not in the routing table");
        return;
    };
    let placed = table.decide_pool(home, key);
    let pool = &table.pools[placed.serving];
    let timeout = shared.connect_timeout(&pool.name);
    let mut tried = Vec::new();
    let mut next = placed.server;
    let (server, target) = loop {
        let Some(si) = next else {
            let (counter, why) = if tried.is_empty() {
                (&listener.no_server, "no server of the serving pool is up")
            } else {
                (
                    &listener.connect_failed,
                    "no server of the serving pool accepted",
                )
            };
            counter.increment(1);
            tracing::debug!(listener = %listener.bound, client = %peer, pool = %pool.name,
                tried = tried.len(), "passthrough connection refused: {why}");
            return;
        };
        let s = table.server(placed.serving, si);
        match tokio::time::timeout(timeout, TcpStream::connect(s.address)).await {
            Ok(Ok(stream)) => {
                break (
                    stream,
                    Target {
                        id: s.id.clone(),
                        address: s.address,
                    },
                )
            }
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    shared.control.passive(s.address, Failure::PassiveRefused);
                }
                tracing::debug!(listener = %listener.bound, client = %peer, server = %s.id,
                    error = %e, "passthrough connect failed; trying the next server");
            }
            Err(_) => {
                tracing::debug!(listener = %listener.bound, client = %peer, server = %s.id,
                    timeout = ?timeout, "passthrough connect timed out; trying the next server");
            }
        }
        tried.push(si);
        next = table.next_server(placed.serving, key, &tried);
    };
    listener.ok.increment(1);
    let _open = OpenGuard::new(&listener);
    tracing::debug!(listener = %listener.bound, client = %peer, server = %target.id,
        pool = %pool.name, "passthrough connection placed");
    drop(table);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = relay::relay(
        client,
        server,
        &target,
        settings.idle_timeout,
        &shared.tables,
        shared.changes.clone(),
    )
    .await;
    tracing::debug!(listener = %listener.bound, client = %peer, server = %target.id,
        "passthrough connection closed: {end}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_client_ip_as_source_ip_routes_hash_it() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), hrw::key_hash(&[192, 0, 2, 7]));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), client_key(v4));
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let IpAddr::V6(v6_addr) = v6 else {
            unreachable!()
        };
        assert_eq!(client_key(v6), hrw::key_hash(&v6_addr.octets()));
    }
}
