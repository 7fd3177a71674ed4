//! A running proxy: bound listeners, the current routing table, the health supervisor and the
//! worker tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::config::{Config, HostPort, Transport};
use crate::health::{self, Control};
use crate::table::{ConfigHealth, RoutingTable};
use crate::udp;

/// A started proxy. Dropping it stops its workers, its probes and its supervisor.
pub struct Proxy {
    /// The table every worker routes against; only the supervisor swaps it.
    pub tables: Arc<ArcSwap<RoutingTable>>,
    /// The UDP addresses actually bound, one per configured address.
    pub udp: Vec<SocketAddr>,
    pub config: Arc<Config>,
    /// Operator commands and passive health signals.
    pub control: Control,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds every listener of `cfg`, builds the first routing table, starts the health
    /// supervisor (with probes when `probe` is true) and the workers. Must run inside a tokio
    /// runtime.
    pub fn start(cfg: Config, probe: bool) -> anyhow::Result<Proxy> {
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
        for p in &cfg.pools {
            for s in p.servers.iter().filter(|s| s.transport != Transport::Udp) {
                tracing::warn!(server = %s.id, pool = %p.name, transport = s.transport.as_str(), "this release forwards over UDP only; the server is reached over UDP");
            }
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
        let table = RoutingTable::build(&cfg, advertise, bound.clone(), 1, &ConfigHealth);
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let config = Arc::new(cfg);
        let (control, supervisor) = health::start(config.clone(), tables.clone(), probe);
        let mut tasks = vec![supervisor];
        for s in sockets {
            let socket =
                tokio::net::UdpSocket::from_std(s).context("cannot register udp socket")?;
            tasks.push(tokio::spawn(udp::serve(
                socket,
                tables.clone(),
                control.clone(),
            )));
        }
        Ok(Proxy {
            tables,
            udp: bound,
            config,
            control,
            tasks,
        })
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
