//! A running proxy: bound listeners, the current routing table, and the worker tasks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::config::{Config, HostPort};
use crate::table::{HealthView, RoutingTable};
use crate::udp;

/// A started proxy. Dropping it stops its workers.
pub struct Proxy {
    /// The table every worker routes against; swap a new one in to change routing.
    pub tables: Arc<ArcSwap<RoutingTable>>,
    /// The UDP addresses actually bound, one per configured address.
    pub udp: Vec<SocketAddr>,
    pub config: Arc<Config>,
    versions: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds every listener of `cfg`, builds the first routing table and starts the workers.
    /// Must run inside a tokio runtime.
    pub fn start(cfg: Config, health: &dyn HealthView) -> anyhow::Result<Proxy> {
        if cfg.listen.udp.is_empty() {
            anyhow::bail!(
                "{}: [listen] udp is empty; this release serves SIP over UDP",
                cfg.path.display()
            );
        }
        for addr in &cfg.listen.tcp {
            tracing::warn!(%addr, "[listen] tcp is not served by this release yet; ignored");
        }
        for tls in &cfg.listen.tls {
            tracing::warn!(addr = %tls.address, "[listen] tls is not served by this release yet; ignored");
        }
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for &addr in &cfg.listen.udp {
            let (socks, local) = udp::bind(addr, cfg.listen.workers)
                .with_context(|| format!("cannot bind udp {addr}"))?;
            sockets.extend(socks);
            bound.push(local);
        }
        let advertise = cfg
            .listen
            .advertise
            .clone()
            .unwrap_or_else(|| advertise_of(bound[0]));
        let table = RoutingTable::build(&cfg, advertise, bound.clone(), 1, health);
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let mut tasks = Vec::new();
        for s in sockets {
            let socket =
                tokio::net::UdpSocket::from_std(s).context("cannot register udp socket")?;
            tasks.push(tokio::spawn(udp::serve(socket, tables.clone())));
        }
        Ok(Proxy {
            tables,
            udp: bound,
            config: Arc::new(cfg),
            versions: AtomicU64::new(1),
            tasks,
        })
    }

    /// Builds a new table from the current config and `health`, and swaps it in.
    pub fn rebuild(&self, health: &dyn HealthView) -> u64 {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let old = self.tables.load();
        let table = RoutingTable::build(
            &self.config,
            old.advertise.clone(),
            self.udp.clone(),
            version,
            health,
        );
        self.tables.store(Arc::new(table));
        version
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The Via `host:port` for a bound address.
pub fn advertise_of(addr: SocketAddr) -> HostPort {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    HostPort {
        host,
        port: Some(addr.port()),
    }
}
