//! A running proxy: its listeners, the current config and routing table, the health
//! supervisor, and the one path every config reload takes (file watcher, SIGHUP and
//! `POST /admin/reload` alike).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError, HostPort, Transport};
use crate::health::{self, Control, Reload};
use crate::table::{ConfigHealth, RoutingTable};
use crate::udp;

/// Where the running config came from and how its last reload went (for `/status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigMeta {
    pub path: PathBuf,
    /// 1 for the config siplb started with, +1 for every reload that took effect.
    pub version: u64,
    pub loaded_at: String,
    /// The errors of the last reload that was refused, until one succeeds.
    pub last_error: Option<String>,
}

/// One configured UDP address: what it is bound to and the tasks serving it.
struct Listener {
    bound: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A started proxy. Dropping it stops its workers, its probes and its supervisor.
pub struct Proxy {
    /// The table every worker routes against; only the supervisor swaps it.
    pub tables: Arc<ArcSwap<RoutingTable>>,
    /// Operator commands and passive health signals.
    pub control: Control,
    config: ArcSwap<Config>,
    meta: Mutex<ConfigMeta>,
    /// Configured UDP address → its listener, in config order.
    listeners: Mutex<Vec<(SocketAddr, Listener)>>,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
    supervisor: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn warn_unserved(cfg: &Config) {
    for addr in &cfg.listen.tcp {
        tracing::warn!(%addr, "[listen] tcp is not served by this release yet; ignored");
    }
    for tls in &cfg.listen.tls {
        tracing::warn!(addr = %tls.address, "[listen] tls is not served by this release yet; ignored");
    }
    for p in &cfg.pools {
        for s in p.servers.iter().filter(|s| s.transport != Transport::Udp) {
            tracing::warn!(server = %s.id, pool = %p.name, transport = s.transport.as_str(),
                "this release forwards over UDP only; the server is reached over UDP");
        }
    }
}

fn bind_listener(
    addr: SocketAddr,
    workers: usize,
    tables: &Arc<ArcSwap<RoutingTable>>,
    control: &Control,
) -> anyhow::Result<Listener> {
    let (sockets, bound) =
        udp::bind(addr, workers).with_context(|| format!("cannot bind udp {addr}"))?;
    let mut tasks = Vec::with_capacity(sockets.len());
    for s in sockets {
        let socket = tokio::net::UdpSocket::from_std(s).context("cannot register udp socket")?;
        tasks.push(tokio::spawn(udp::serve(
            socket,
            tables.clone(),
            control.clone(),
        )));
    }
    Ok(Listener { bound, tasks })
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
        warn_unserved(&cfg);
        // The table needs the bound addresses and the workers need the table: bind first,
        // serve once the table and the supervisor exist.
        let mut bound = Vec::new();
        let mut sockets = Vec::new();
        for &addr in &cfg.listen.udp {
            let (socks, local) = udp::bind(addr, cfg.listen.workers)
                .with_context(|| format!("cannot bind udp {addr}"))?;
            sockets.push((addr, local, socks));
            bound.push(local);
        }
        let advertise = cfg
            .listen
            .advertise
            .clone()
            .unwrap_or_else(|| advertise_of(bound[0]));
        let table = RoutingTable::build(&cfg, advertise, bound, 1, &ConfigHealth);
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let config = Arc::new(cfg);
        let (control, supervisor) = health::start(config.clone(), tables.clone(), probe);
        let mut listeners = Vec::new();
        for (addr, local, socks) in sockets {
            let mut tasks = Vec::new();
            for s in socks {
                let socket =
                    tokio::net::UdpSocket::from_std(s).context("cannot register udp socket")?;
                tasks.push(tokio::spawn(udp::serve(
                    socket,
                    tables.clone(),
                    control.clone(),
                )));
            }
            listeners.push((
                addr,
                Listener {
                    bound: local,
                    tasks,
                },
            ));
        }
        let meta = ConfigMeta {
            path: config.path.clone(),
            version: 1,
            loaded_at: now_rfc3339(),
            last_error: None,
        };
        Ok(Proxy {
            tables,
            control,
            config: ArcSwap::new(config),
            meta: Mutex::new(meta),
            listeners: Mutex::new(listeners),
            reloading: tokio::sync::Mutex::new(()),
            supervisor,
        })
    }

    /// The config in effect.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Where the config came from and how the last reload went.
    pub fn meta(&self) -> ConfigMeta {
        self.meta
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The UDP addresses actually bound, in config order.
    pub fn udp(&self) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.iter().map(|(_, l)| l.bound).collect()
    }

    /// Reads the config file again. A file that does not validate changes nothing (the errors
    /// are logged, counted and kept for `/status`); a valid one binds new listeners, closes
    /// removed ones and hands the config to the supervisor, where every server keeps its
    /// health by id. Returns the new config version.
    pub async fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.config.load().path.clone();
        let result = match config::load(&path) {
            Ok(cfg) => self.apply(cfg).await,
            Err(errors) => Err(errors),
        };
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(version) => {
                meta.version = *version;
                meta.loaded_at = now_rfc3339();
                meta.last_error = None;
                metrics::counter!("siplb_config_reloads_total", "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), version, "config reloaded");
            }
            Err(errors) => {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                for e in &text {
                    tracing::error!(error = %e, "config reload refused; the running config stays");
                }
                meta.last_error = Some(text.join("\n"));
                metrics::counter!("siplb_config_reloads_total", "result" => "error").increment(1);
            }
        }
        result
    }

    async fn apply(&self, cfg: Config) -> Result<u64, Vec<ConfigError>> {
        let running = self.config.load();
        if cfg.listen.workers != running.listen.workers {
            tracing::warn!("[listen] workers changes take effect at the next start");
        }
        if cfg.ops.listen != running.ops.listen {
            tracing::warn!("[ops] listen changes take effect at the next start; the ops endpoint stays where it is");
        }
        warn_unserved(&cfg);
        let bound = self.rebind(&cfg).map_err(|e| {
            vec![ConfigError::new(
                &cfg.path,
                0,
                "listen.udp",
                format!("{e:#}"),
            )]
        })?;
        let advertise = cfg
            .listen
            .advertise
            .clone()
            .unwrap_or_else(|| advertise_of(bound[0]));
        let config = Arc::new(cfg);
        let reload = Reload {
            config: config.clone(),
            advertise,
            local: bound,
        };
        let Some(_table_version) = self.control.reload(reload).await else {
            return Err(vec![ConfigError::new(
                &config.path,
                0,
                "",
                "siplb is stopping",
            )]);
        };
        self.config.store(config);
        Ok(self.meta().version + 1)
    }

    /// Makes the UDP listeners match `cfg`: keeps those still configured, binds new ones (all
    /// of them before closing any, so a bind failure changes nothing), closes removed ones.
    fn rebind(&self, cfg: &Config) -> anyhow::Result<Vec<SocketAddr>> {
        if cfg.listen.udp.is_empty() {
            anyhow::bail!("[listen] udp is empty; this release serves SIP over UDP");
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: HashMap<SocketAddr, Listener> = listeners.drain(..).collect();
        let mut next = Vec::new();
        let mut fresh = Vec::new();
        let result = (|| {
            for &addr in &cfg.listen.udp {
                match kept.remove(&addr) {
                    Some(l) => next.push((addr, l)),
                    None => {
                        let l =
                            bind_listener(addr, cfg.listen.workers, &self.tables, &self.control)?;
                        tracing::info!(%addr, bound = %l.bound, "udp listener opened");
                        fresh.push(addr);
                        next.push((addr, l));
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Put everything back as it was; the fresh listeners close as they drop.
            next.retain(|(a, _)| !fresh.contains(a));
            let mut restored: Vec<(SocketAddr, Listener)> = next.into_iter().chain(kept).collect();
            let order = |a: &SocketAddr| self.config.load().listen.udp.iter().position(|x| x == a);
            restored.sort_by_key(|(a, _)| order(a));
            *listeners = restored;
            return Err(e);
        }
        for (addr, _) in kept.drain() {
            tracing::info!(%addr, "udp listener closed");
        }
        let bound = next.iter().map(|(_, l)| l.bound).collect();
        *listeners = next;
        Ok(bound)
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
