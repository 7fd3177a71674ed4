//! A running proxy: its listeners, the current config and routing table, the health
//! supervisor, and the one path every config reload takes (file watcher, SIGHUP and
//! `POST /admin/reload` alike).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError, Transport};
use crate::dns::{self, Answer, Answers, Lookup, NameStatus};
use crate::health::{self, Control, Reload};
use crate::passthrough::{self, Passthroughs};
use crate::stream::{StreamBinding, StreamListener, StreamStatus, Streams};
use crate::table::{ConfigHealth, Local, RoutingTable};
use crate::tls::client::ServerTls;
use crate::tls::server::{self as tls_server, ListenerTls};
use crate::token::Token;
use crate::udp::{self, Senders};

/// Where the running config came from and how its last reload went (for `/status`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ConfigMeta {
    pub(crate) path: PathBuf,
    /// 1 for the config siplb started with, +1 for every reload that took effect.
    pub(crate) version: u64,
    pub(crate) loaded_at: String,
    /// The errors of the last reload that was refused, until one succeeds.
    pub(crate) last_error: Option<String>,
}

impl ConfigMeta {
    /// Records a reload of the file at `path`: its new version, or its errors (the running
    /// config stays), each logged and counted in `siplb_config_reloads_total`.
    pub(crate) fn record(
        &mut self,
        path: &std::path::Path,
        result: &Result<u64, Vec<ConfigError>>,
    ) {
        match result {
            Ok(version) => {
                self.version = *version;
                self.loaded_at = now_rfc3339();
                self.last_error = None;
                metrics::counter!("siplb_config_reloads_total", "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), version, "config reloaded");
            }
            Err(errors) => {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                for e in &text {
                    tracing::error!(error = %e, "config reload refused; the running config stays");
                }
                self.last_error = Some(text.join("\n"));
                metrics::counter!("siplb_config_reloads_total", "result" => "error").increment(1);
            }
        }
    }
}

/// The sockets bound for one configured UDP address: one per worker, all on one port
/// (`SO_REUSEPORT`), not yet served.
pub(crate) struct UdpBinding {
    /// The address as configured (port 0 allowed).
    configured: SocketAddr,
    /// The address actually bound.
    bound: SocketAddr,
    sockets: Vec<std::net::UdpSocket>,
}

impl UdpBinding {
    fn bind(addr: SocketAddr, workers: usize) -> anyhow::Result<UdpBinding> {
        let (sockets, bound) =
            udp::bind(addr, workers).with_context(|| format!("cannot bind udp {addr}"))?;
        Ok(UdpBinding {
            configured: addr,
            bound,
            sockets,
        })
    }
}

/// Every listener of a config, bound and not yet served: what [`Proxy::start`] takes. Binding
/// apart from starting lets a caller (a test, the CLI) own the sockets and know their addresses
/// before anything runs.
pub(crate) struct Listeners {
    udp: Vec<UdpBinding>,
    streams: Vec<StreamBinding>,
    /// `[listen] passthrough`.
    passthrough: passthrough::Bindings,
}

/// The stream listeners a config asks for: every `[listen] tcp` address, then every
/// `[listen] tls` one.
fn stream_addresses(cfg: &Config) -> Vec<(SocketAddr, Transport)> {
    let tcp = cfg.listen.tcp.iter().map(|&a| (a, Transport::Tcp));
    let tls = cfg.listen.tls.iter().map(|t| (t.address, Transport::Tls));
    tcp.chain(tls).collect()
}

/// Binds one stream listener of `cfg`; a TLS one loads its certificate first.
fn bind_stream(
    cfg: &Config,
    addr: SocketAddr,
    transport: Transport,
) -> anyhow::Result<StreamBinding> {
    let binding = match transport {
        Transport::Tls => {
            let entry = cfg
                .listen
                .tls
                .iter()
                .find(|t| t.address == addr)
                .with_context(|| format!("no [listen] tls entry for {addr}"))?;
            let tls = ListenerTls::load(entry)?;
            StreamBinding::tls(addr, tls)
        }
        _ => StreamBinding::tcp(addr),
    };
    binding.with_context(|| format!("cannot bind {} {addr}", transport.as_str()))
}

impl Listeners {
    /// Binds every `[listen] udp` address of `cfg`, `[listen] workers` sockets each, and every
    /// `[listen] tcp` address.
    pub(crate) fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let udp = cfg
            .listen
            .udp
            .iter()
            .map(|&addr| UdpBinding::bind(addr, cfg.listen.workers))
            .collect::<anyhow::Result<_>>()?;
        let streams = stream_addresses(cfg)
            .into_iter()
            .map(|(addr, transport)| bind_stream(cfg, addr, transport))
            .collect::<anyhow::Result<_>>()?;
        let passthrough = passthrough::Bindings::bind(cfg)?;
        let listeners = Listeners {
            udp,
            streams,
            passthrough,
        };
        if listeners.local().first().is_none() {
            anyhow::bail!(
                "{}: no listener; give [listen] udp or tcp",
                cfg.path.display()
            );
        }
        Ok(listeners)
    }

    /// Every address bound, by transport, in config order.
    fn local(&self) -> Local {
        let of = |t: Transport| {
            let s = self.streams.iter().filter(move |b| b.transport == t);
            s.map(|b| b.bound).collect()
        };
        Local {
            udp: self.udp.iter().map(|b| b.bound).collect(),
            tcp: of(Transport::Tcp),
            tls: of(Transport::Tls),
        }
    }
}

/// One configured UDP address being served: what it is bound to and the threads serving it
/// (stopped when this is dropped).
struct Listener {
    bound: SocketAddr,
    /// The socket other listeners send from to reach this one's address family.
    sender: Arc<std::net::UdpSocket>,
    _served: udp::Served,
}

/// A started proxy. Dropping it stops its workers, its probes and its supervisor.
pub(crate) struct Proxy {
    /// The table every worker routes against; only the supervisor swaps it.
    pub(crate) tables: Arc<ArcSwap<RoutingTable>>,
    /// Operator commands and passive health signals.
    pub(crate) control: Control,
    config: ArcSwap<Config>,
    meta: Mutex<ConfigMeta>,
    /// Configured UDP address → its listener, in config order.
    listeners: Mutex<Vec<(SocketAddr, Listener)>>,
    /// The TCP and TLS listeners, in config order.
    stream_listeners: Mutex<Vec<StreamListener>>,
    /// The connections and flows of every stream listener.
    streams: Streams,
    /// Tasks of the connection runtime: the health watch and the gauge refresh.
    stream_tasks: Vec<JoinHandle<()>>,
    /// A socket per address family, for sends across families.
    senders: Senders,
    /// The admin token; refreshed by every reload that takes effect.
    token: Token,
    /// `[listen] passthrough` listeners and their connections.
    pub(crate) passthrough: Passthroughs,
    /// Serialises reloads, and DNS answers changing the servers.
    reloading: tokio::sync::Mutex<()>,
    /// The last DNS answers of the names in the config: with the config, they make the servers
    /// the supervisor is given ([`dns::expand::expand`]).
    answers: Mutex<Answers>,
    /// Wakes the DNS refresh at once (a reload may bring new names).
    dns_wake: Arc<tokio::sync::Notify>,
    supervisor: JoinHandle<()>,
    /// Becomes true when the proxy has stopped.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Set once a graceful stop has begun ([`Proxy::begin_shutdown`]); set while holding the
    /// `stream_listeners` lock, so a reload cannot open them again.
    shutting_down: AtomicBool,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.supervisor.abort();
        for t in &self.stream_tasks {
            t.abort();
        }
        self.streams.close_all();
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Serves one bound address: a thread per socket. The one place they are started, at start and
/// on reload alike.
fn serve(
    binding: UdpBinding,
    tables: &Arc<ArcSwap<RoutingTable>>,
    control: &Control,
    senders: &Senders,
    streams: &Streams,
) -> anyhow::Result<Listener> {
    let sockets: Vec<_> = binding.sockets.into_iter().map(Arc::new).collect();
    let sender = sockets.first().cloned().context("no socket bound")?;
    let served = udp::serve(sockets, 1, tables, control, senders, streams)
        .with_context(|| format!("cannot serve udp {}", binding.bound))?;
    Ok(Listener {
        bound: binding.bound,
        sender,
        _served: served,
    })
}

/// A reload of the config at `path` refused for a reason that has no line: the one error, on
/// `key`.
fn refused(path: &Path, key: &str, message: impl Into<String>) -> Vec<ConfigError> {
    vec![ConfigError::new(path, 0, key, message)]
}

/// The TLS client settings of `cfg`'s TLS servers; a file that changed since validation is
/// logged and leaves those servers without TLS settings (their connections fail to open).
fn server_tls(cfg: &Config) -> ServerTls {
    ServerTls::build(cfg).unwrap_or_else(|e| {
        tracing::error!(error = %format!("{e:#}"), "TLS settings for servers not loaded");
        ServerTls::default()
    })
}

impl Proxy {
    /// Starts a proxy on `listeners` (bound from `cfg` by [`Listeners::bind`]) with the admin
    /// `token`: builds the first routing table, starts the health supervisor (with probes when
    /// `probe` is true) and a worker per socket. Everything stops when `shutdown` resolves (or
    /// the proxy is dropped); [`Proxy::stopped`] says when. Must run inside a tokio runtime.
    pub(crate) fn start(
        cfg: Config,
        listeners: Listeners,
        token: Token,
        probe: bool,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Arc<Proxy>> {
        let bound = listeners.local();
        let Some(first) = bound.first() else {
            anyhow::bail!("{}: no listener bound", cfg.path.display());
        };
        let advertise = cfg.listen.advertise_or(first);
        // Names are not asked yet: their servers come with the first DNS answers.
        let resolved = dns::expand::expand(&cfg, &Answers::default(), &bound);
        let table = RoutingTable::build(&resolved, advertise, bound, 1, &ConfigHealth);
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let declared = Arc::new(cfg);
        let config = Arc::new(resolved);
        let (control, supervisor) = health::start(config.clone(), tables.clone(), probe);
        let passthrough = Passthroughs::start(listeners.passthrough, &config, &tables, &control)?;
        let senders = Senders::default();
        let streams = Streams::new(
            &config.connections,
            tables.clone(),
            control.clone(),
            Arc::new(senders.clone()),
        );
        streams.set_server_tls(server_tls(&config));
        let mut served = Vec::new();
        for binding in listeners.udp {
            let addr = binding.configured;
            served.push((addr, serve(binding, &tables, &control, &senders, &streams)?));
        }
        senders.set(served.iter().map(|(_, l)| l.sender.clone()));
        let mut stream_listeners = Vec::new();
        for binding in listeners.streams {
            let (addr, transport) = (binding.configured, binding.transport);
            let l = streams
                .serve_listener(binding)
                .with_context(|| format!("cannot serve {} {addr}", transport.as_str()))?;
            stream_listeners.push(l);
        }
        let stream_tasks = vec![
            tokio::spawn(streams.clone().watch_health(control.swaps())),
            tokio::spawn(streams.clone().refresh_gauges()),
        ];
        let meta = ConfigMeta {
            path: config.path.clone(),
            version: 1,
            loaded_at: now_rfc3339(),
            last_error: None,
        };
        let (stopped, _) = tokio::sync::watch::channel(false);
        let proxy = Arc::new(Proxy {
            tables,
            control,
            config: ArcSwap::new(declared),
            meta: Mutex::new(meta),
            listeners: Mutex::new(served),
            stream_listeners: Mutex::new(stream_listeners),
            streams,
            stream_tasks,
            senders,
            token,
            passthrough,
            reloading: tokio::sync::Mutex::new(()),
            answers: Mutex::new(Answers::default()),
            dns_wake: Arc::new(tokio::sync::Notify::new()),
            supervisor,
            stopped,
            shutting_down: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            shutdown.await;
            if let Some(proxy) = weak.upgrade() {
                proxy.stop();
            }
        });
        Ok(proxy)
    }

    /// Begins a graceful stop: `/readyz` fails from now on, reloads are refused and the TCP and
    /// TLS listeners close (a new connection is refused by the kernel), while UDP listeners,
    /// client flows already open and siplb's own connections to servers go on until
    /// [`Proxy::stop`]. Returns the number of listeners closed, or `None` when a graceful stop
    /// had already begun.
    pub(crate) fn begin_shutdown(&self) -> Option<usize> {
        let mut listeners = self
            .stream_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return None;
        }
        let closed = listeners.len();
        listeners.clear();
        Some(closed + self.passthrough.close_listeners())
    }

    /// Whether a graceful stop has begun.
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// TCP and TLS client connections open, passthrough connections included.
    pub(crate) fn client_flows(&self) -> usize {
        self.streams.client_connections() + self.passthrough.connections()
    }

    /// Stops the workers, the probes and the supervisor; the ops endpoint and reload watchers
    /// of the process stop with the runtime.
    pub(crate) fn stop(&self) {
        self.supervisor.abort();
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.stream_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for t in &self.stream_tasks {
            t.abort();
        }
        self.streams.close_all();
        self.senders.set([]);
        self.passthrough.stop();
        self.stopped.send_replace(true);
    }

    /// Resolves once the shutdown future given to [`Proxy::start`] has resolved and the proxy
    /// has stopped.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|&s| s).await;
    }

    /// The config in effect.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The admin token.
    pub(crate) fn token(&self) -> &Token {
        &self.token
    }

    /// Where the config came from and how the last reload went.
    pub(crate) fn meta(&self) -> ConfigMeta {
        self.meta
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The UDP addresses actually bound, in config order.
    pub(crate) fn udp(&self) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.iter().map(|(_, l)| l.bound).collect()
    }

    /// The TCP and TLS addresses actually bound, with their transport, in config order.
    pub(crate) fn stream_listeners(&self) -> Vec<(Transport, SocketAddr)> {
        let listeners = self
            .stream_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        listeners.iter().map(|l| (l.transport, l.bound)).collect()
    }

    /// Client connections, flows and backend connections, for `/status`.
    pub(crate) fn connections(&self) -> StreamStatus {
        self.streams.status()
    }

    /// Every address bound, by transport, in config order.
    fn local(&self) -> Local {
        let streams = self.stream_listeners();
        let of = |t: Transport| {
            let s = streams.iter().filter(move |(tr, _)| *tr == t);
            s.map(|&(_, a)| a).collect()
        };
        Local {
            udp: self.udp(),
            tcp: of(Transport::Tcp),
            tls: of(Transport::Tls),
        }
    }

    /// Reads the config file again. A file that does not validate changes nothing (the errors
    /// are logged, counted and kept for `/status`); a valid one binds new listeners, closes
    /// removed ones, hands the config to the supervisor, where every server keeps its health by
    /// id, and reads the admin token again. Returns the new config version.
    pub(crate) async fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.config.load().path.clone();
        let result = match config::load(&path) {
            Ok(cfg) => self.apply(cfg).await,
            Err(errors) => Err(errors),
        };
        if result.is_ok() {
            if let Err(e) = self.token.refresh(&self.config()) {
                tracing::error!(error = %e, "admin token not refreshed; the previous one stays");
            }
        }
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&path, &result);
        result
    }

    async fn apply(&self, cfg: Config) -> Result<u64, Vec<ConfigError>> {
        if *self.stopped.borrow() {
            // Binding listeners again would bring a stopped proxy back to life.
            return Err(refused(&cfg.path, "", "siplb is stopping"));
        }
        if self.shutting_down() {
            return Err(refused(&cfg.path, "", "siplb is shutting down"));
        }
        let running = self.config.load();
        if cfg.listen.workers != running.listen.workers {
            tracing::warn!("[listen] workers changes take effect at the next start");
        }
        if cfg.ops.listen != running.ops.listen {
            tracing::warn!("[ops] listen changes take effect at the next start; the ops endpoint stays where it is");
        }
        // The certificates of TLS listeners that stay: all renewed, or none (and no reload).
        {
            let listeners = self
                .stream_listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let kept = |addr: SocketAddr| {
                listeners
                    .iter()
                    .find(|l| l.configured == addr && l.transport == Transport::Tls)
                    .and_then(|l| l.tls.clone())
            };
            for addr in tls_server::reload_all(&cfg, kept)? {
                tracing::info!(%addr, "TLS listener serves a renewed certificate");
            }
        }
        let staged = self
            .passthrough
            .prepare(&cfg)
            .map_err(|e| refused(&cfg.path, "listen.passthrough", format!("{e:#}")))?;
        self.rebind_streams(&cfg)
            .map_err(|e| refused(&cfg.path, "listen.tcp", format!("{e:#}")))?;
        self.rebind(&cfg)
            .map_err(|e| refused(&cfg.path, "listen.udp", format!("{e:#}")))?;
        self.streams.set_limits(&cfg.connections);
        let bound = self.local();
        let Some(first) = bound.first() else {
            return Err(refused(&cfg.path, "listen", "no listener bound"));
        };
        let advertise = cfg.listen.advertise_or(first);
        let resolved = {
            let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            dns::expand::expand(&cfg, &answers, &bound)
        };
        self.streams.set_server_tls(server_tls(&resolved));
        let config = Arc::new(cfg);
        let reload = Reload {
            config: Arc::new(resolved),
            advertise,
            local: bound,
        };
        let Some(_table_version) = self.control.reload(reload).await else {
            return Err(refused(&config.path, "", "siplb is stopping"));
        };
        if let Err(e) = self.passthrough.commit(staged) {
            tracing::error!(error = %e, "passthrough listener not served");
        }
        self.config.store(config);
        // Names the new config brings are asked now, not at the next refresh.
        self.dns_wake.notify_one();
        Ok(self.meta().version + 1)
    }

    /// Records one round of DNS lookups. When an answer in use changed, the servers follow it
    /// the way a reload changes them: the config resolved with the new answers goes to the
    /// supervisor, which keeps the health of every server whose id stays, starts probes of the
    /// new ones (spread over one interval) and stops those of the removed ones, then swaps in
    /// one new table. Returns whether the servers were rebuilt.
    pub(crate) async fn apply_dns(&self, results: Vec<(Lookup, Result<Answer, String>)>) -> bool {
        let _one_at_a_time = self.reloading.lock().await;
        let cfg = self.config();
        let bound = self.local();
        let Some(resolved) =
            dns::expand::record_round(&self.answers, self.control.events(), results, &cfg, &bound)
        else {
            return false;
        };
        let Some(first) = bound.first() else {
            return false;
        };
        if self.has_stopped() {
            return false;
        }
        self.streams.set_server_tls(server_tls(&resolved));
        let reload = Reload {
            config: Arc::new(resolved),
            advertise: cfg.listen.advertise_or(first),
            local: bound,
        };
        self.control.reload(reload).await.is_some()
    }

    /// Every name the config gives servers by, with its answer and how its lookups go.
    pub(crate) fn dns_status(&self) -> Vec<NameStatus> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.status()
    }

    /// What wakes the DNS refresh before its time.
    pub(crate) fn dns_wake(&self) -> Arc<tokio::sync::Notify> {
        self.dns_wake.clone()
    }

    /// Whether the proxy has stopped.
    pub(crate) fn has_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Makes the UDP listeners match `cfg`: keeps those still configured, binds new ones (all
    /// of them before closing any, so a bind failure changes nothing), closes removed ones.
    fn rebind(&self, cfg: &Config) -> anyhow::Result<Vec<SocketAddr>> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: HashMap<SocketAddr, Listener> = listeners.drain(..).collect();
        let mut next = Vec::new();
        let mut fresh = Vec::new();
        let result = (|| {
            for &addr in &cfg.listen.udp {
                match kept.remove(&addr) {
                    Some(l) => next.push((addr, l)),
                    None => {
                        let binding = UdpBinding::bind(addr, cfg.listen.workers)?;
                        let l = serve(
                            binding,
                            &self.tables,
                            &self.control,
                            &self.senders,
                            &self.streams,
                        )?;
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
        self.senders.set(next.iter().map(|(_, l)| l.sender.clone()));
        *listeners = next;
        Ok(bound)
    }

    /// Makes the TCP and TLS listeners match `cfg` the same way: keeps those still configured,
    /// binds new ones (all before closing any), closes removed ones. Connections accepted on a
    /// removed listener go on until they close.
    fn rebind_streams(&self, cfg: &Config) -> anyhow::Result<()> {
        let mut listeners = self
            .stream_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.shutting_down() {
            // The listeners closed for good when the graceful stop began.
            anyhow::bail!("siplb is shutting down");
        }
        let wanted = stream_addresses(cfg);
        let mut fresh = Vec::new();
        for &(addr, transport) in &wanted {
            let kept = listeners
                .iter()
                .any(|l| l.configured == addr && l.transport == transport);
            if !kept {
                // A bind failure returns here: nothing has changed yet.
                fresh.push(bind_stream(cfg, addr, transport)?);
            }
        }
        let mut old: Vec<StreamListener> = std::mem::take(&mut *listeners);
        let mut fresh = fresh.into_iter();
        for &(addr, transport) in &wanted {
            let at = old
                .iter()
                .position(|l| l.configured == addr && l.transport == transport);
            match at {
                Some(i) => listeners.push(old.swap_remove(i)),
                None => {
                    let binding = fresh.next().context("listener bound above")?;
                    let l = self.streams.serve_listener(binding)?;
                    tracing::info!(%addr, bound = %l.bound, transport = transport.as_str(),
                        "listener opened");
                    listeners.push(l);
                }
            }
        }
        for l in old {
            tracing::info!(addr = %l.configured, transport = l.transport.as_str(), "listener closed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use tokio::net::UdpSocket;

    use super::*;
    use crate::core::explain;

    /// A config with one UDP listener on an ephemeral port and one pool of `servers`.
    fn config(listen: &str, servers: &[SocketAddr]) -> Config {
        let servers: Vec<String> = servers
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        let text = format!(
            "[listen]\nudp = [{listen}]\nworkers = 1\n\
             [[pool]]\nname = \"fe\"\nservers = [{}]\n\
             [[route]]\npool = \"fe\"\n",
            servers.join(", ")
        );
        config::parse(Path::new("test.toml"), &text).expect("valid config")
    }

    #[tokio::test]
    async fn a_proxy_serves_the_listeners_it_is_given_until_its_shutdown_future_resolves() {
        let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cfg = config("\"127.0.0.1:0\"", &[backend.local_addr().unwrap()]);
        let listeners = Listeners::bind(&cfg).unwrap();
        let addr = listeners.udp[0].bound;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy = Proxy::start(cfg, listeners, Token::default(), false, async {
            let _ = stopped.await;
        })
        .unwrap();
        assert_eq!(proxy.udp(), vec![addr]);

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sent_by = client.local_addr().unwrap().to_string();
        let request = explain::request("REGISTER", "alice@contoso.com", "seam-1", 1, &sent_by);
        client.send_to(request.as_bytes(), addr).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), backend.recv_from(&mut buf))
            .await
            .expect("the backend got the REGISTER")
            .unwrap();
        assert!(buf[..n].starts_with(b"REGISTER sip:contoso.com SIP/2.0\r\n"));
        assert_eq!(from, addr, "forwarded from the listener's socket");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), proxy.stopped())
            .await
            .expect("the proxy stopped");
        assert!(proxy.udp().is_empty(), "listeners closed at shutdown");
    }

    #[tokio::test]
    async fn a_graceful_stop_closes_the_tcp_listeners_once_and_keeps_udp() {
        let cfg = config(
            "\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"",
            &["127.0.0.1:9".parse().unwrap()],
        );
        let listeners = Listeners::bind(&cfg).unwrap();
        let proxy = Proxy::start(
            cfg,
            listeners,
            Token::default(),
            false,
            std::future::pending(),
        )
        .unwrap();
        let [(Transport::Tcp, tcp)] = proxy.stream_listeners()[..] else {
            panic!("one TCP listener: {:?}", proxy.stream_listeners());
        };
        assert!(!proxy.shutting_down());
        assert!(tokio::net::TcpStream::connect(tcp).await.is_ok());

        assert_eq!(proxy.begin_shutdown(), Some(1));
        assert!(proxy.shutting_down());
        assert_eq!(proxy.begin_shutdown(), None, "a graceful stop begins once");
        assert!(proxy.stream_listeners().is_empty());
        assert_eq!(proxy.udp().len(), 1, "UDP goes on during the grace");
        // The accept task ends as it is aborted; then the kernel refuses.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(tcp).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let errors = proxy
            .apply(proxy.config().as_ref().clone())
            .await
            .unwrap_err();
        assert!(
            errors[0].to_string().contains("shutting down"),
            "{errors:?}"
        );
    }
}
