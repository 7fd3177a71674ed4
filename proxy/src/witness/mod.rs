//! `siplb witness`: the third vantage point of a fleet (`[cluster] witness`), as Lync's SQL
//! mirroring has a witness in a third site.
//!
//! Two replicas that disagree about a pool are a tie, and a tie decides nothing. A witness in
//! a third site breaks it: it probes every server of every pool from where it stands, with the
//! same health supervisor a replica runs (so its view is made the same way, from the same
//! config file), and serves that view at `GET /cluster/view` behind the cluster token, with
//! the same config digest, so that the replicas count it as the third observer.
//!
//! It does nothing else. It opens no SIP socket (the config's `[listen]` is read, for the
//! servers' address families, and never bound), builds its routing table only because the
//! supervisor keeps one and forwards nothing with it, asks no one for a view and never fails a
//! pool over: its supervisor never gets an exchange round, so it never has a quorum
//! ([`cluster::tally`] with no round counts its own view alone, and `[cluster]` always names
//! another observer). Its ops endpoint serves `/healthz`, `/readyz`, `/status` (its own view,
//! `"role": "witness"`), `/metrics` and `/cluster/view`, and refuses the admin API ([`ops`]).
//! The config reloads as the run command's does (file watcher, SIGHUP), and names servers
//! by DNS the same way.
//!
//! [`cluster::tally`]: crate::cluster::tally

mod ops;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError, HostPort};
use crate::dns::{self, Answer, Answers, Lookup, NameStatus};
use crate::events::Events;
use crate::health::{self, Control, Reload};
use crate::reload::Reloadable;
use crate::server::ConfigMeta;
use crate::table::{ConfigHealth, Local, RoutingTable};

/// Why a config without `[cluster]` cannot serve a witness.
const NEEDS_CLUSTER: &str = "a witness needs [cluster] with the fleet's token (token_file or \
     SIPLB_CLUSTER_TOKEN): without it, it would serve its view of the pools to anyone who \
     reaches its ops port. Give it the replicas' config file, [cluster] included";

/// The listener addresses of `cfg` as configured, none of them bound: what the commands that
/// open no SIP socket give [`dns::expand::expand`] (a UDP server's address family) and the
/// routing table.
pub(crate) fn configured_listeners(cfg: &Config) -> Local {
    Local {
        udp: cfg.listen.udp.clone(),
        tcp: cfg.listen.tcp.clone(),
        tls: cfg.listen.tls.iter().map(|t| t.address).collect(),
    }
}

/// The `advertise` of `cfg`'s table: as configured, else its first listener as configured.
fn advertise(cfg: &Config, local: &Local) -> HostPort {
    let first = local
        .first()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    cfg.listen.advertise_or(first)
}

/// The errors that keep `cfg` from serving a witness: none, or that it has no `[cluster]`.
fn refusal(cfg: &Config) -> Option<ConfigError> {
    cfg.cluster
        .is_none()
        .then(|| ConfigError::new(&cfg.path, 0, "cluster", NEEDS_CLUSTER))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A running witness: its config, its health supervisor and its DNS answers. Dropping it
/// stops the supervisor and with it every probe.
pub(crate) struct Witness {
    config: ArcSwap<Config>,
    meta: Mutex<ConfigMeta>,
    control: Control,
    supervisor: JoinHandle<()>,
    /// The last DNS answers of the names in the config.
    answers: Mutex<Answers>,
    /// Serialises reloads, and DNS answers changing the servers.
    reloading: tokio::sync::Mutex<()>,
    dns_wake: Arc<Notify>,
    /// Where its ops endpoint is bound: the `replica` of its view.
    ops: SocketAddr,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl Witness {
    /// Starts the supervisor of `cfg` with probes (its names not asked yet: their servers
    /// come with the first DNS answers). Must run inside a tokio runtime.
    pub(crate) fn start(cfg: Config, ops: SocketAddr) -> anyhow::Result<Arc<Witness>> {
        if let Some(e) = refusal(&cfg) {
            anyhow::bail!("{e}");
        }
        let local = configured_listeners(&cfg);
        let resolved = dns::expand::expand(&cfg, &Answers::default(), &local);
        let advertise = advertise(&cfg, &local);
        let table = RoutingTable::build(&resolved, advertise, local, 1, &ConfigHealth);
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let (control, supervisor) = health::start(Arc::new(resolved), tables, true);
        let meta = ConfigMeta {
            path: cfg.path.clone(),
            version: 1,
            loaded_at: now_rfc3339(),
            last_error: None,
        };
        Ok(Arc::new(Witness {
            config: ArcSwap::from_pointee(cfg),
            meta: Mutex::new(meta),
            control,
            supervisor,
            answers: Mutex::new(Answers::default()),
            reloading: tokio::sync::Mutex::new(()),
            dns_wake: Arc::new(Notify::new()),
            ops,
        }))
    }

    /// Where a refused reload and the supervisor's events are recorded.
    pub(crate) fn control(&self) -> &Control {
        &self.control
    }

    /// Where its config came from and how the last reload went.
    pub(crate) fn meta(&self) -> ConfigMeta {
        self.meta
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Its ops endpoint, as bound.
    pub(crate) fn ops(&self) -> SocketAddr {
        self.ops
    }

    /// Every name the config gives servers by, with its answer and how its lookups go.
    pub(crate) fn dns_status(&self) -> Vec<NameStatus> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.status()
    }

    /// Reads the config file again, as the run command does: a file that does not validate,
    /// or that has no `[cluster]`, changes nothing (logged, counted, kept for `/status`); a
    /// valid one hands its servers to the supervisor, where each keeps its health by id.
    async fn reload_file(&self) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.config.load().path.clone();
        let result = match config::load(&path) {
            Ok(cfg) => self.apply(cfg).await,
            Err(errors) => Err(errors),
        };
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&path, &result);
        result
    }

    async fn apply(&self, cfg: Config) -> Result<u64, Vec<ConfigError>> {
        if let Some(e) = refusal(&cfg) {
            return Err(vec![e]);
        }
        if cfg.ops.listen != self.config.load().ops.listen {
            tracing::warn!("[ops] listen changes take effect at the next start; the ops endpoint stays where it is");
        }
        let local = configured_listeners(&cfg);
        let resolved = {
            let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            dns::expand::expand(&cfg, &answers, &local)
        };
        let reload = Reload {
            config: Arc::new(resolved),
            advertise: advertise(&cfg, &local),
            local,
        };
        if self.control.reload(reload).await.is_none() {
            return Err(vec![ConfigError::new(
                &cfg.path,
                0,
                "",
                "siplb is stopping",
            )]);
        }
        self.config.store(Arc::new(cfg));
        // Names the new config brings are asked now, not at the next refresh.
        self.dns_wake.notify_one();
        Ok(self.meta().version + 1)
    }

    /// Records one round of DNS lookups; when an answer in use changed, the supervisor gets
    /// the config resolved with the new answers, as a reload hands it over.
    async fn dns_answers(&self, results: Vec<(Lookup, Result<Answer, String>)>) -> bool {
        let _one_at_a_time = self.reloading.lock().await;
        let cfg = self.config.load_full();
        let local = configured_listeners(&cfg);
        let Some(resolved) =
            dns::expand::record_round(&self.answers, self.control.events(), results, &cfg, &local)
        else {
            return false;
        };
        let reload = Reload {
            config: Arc::new(resolved),
            advertise: advertise(&cfg, &local),
            local,
        };
        self.control.reload(reload).await.is_some()
    }
}

impl Reloadable for Witness {
    fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }
    async fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        self.reload_file().await
    }
    fn events(&self) -> &Events {
        self.control.events()
    }
    async fn apply_dns(&self, results: Vec<(Lookup, Result<Answer, String>)>) -> bool {
        self.dns_answers(results).await
    }
    fn dns_wake(&self) -> Arc<Notify> {
        self.dns_wake.clone()
    }
    fn has_stopped(&self) -> bool {
        self.supervisor.is_finished()
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `siplb witness --config PATH [--ops-listen ADDR]`: loads the config (refused without
/// `[cluster]`), binds the ops endpoint at `ops_listen` or the config's `[ops] listen`, starts
/// the probes, the reload watchers and the DNS refresh, prints `listening ops ADDR` and
/// `ready`, and runs until SIGTERM or SIGINT, then exits 0 at once (it holds nothing in
/// flight).
pub(crate) fn run(path: &Path, ops_listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); the witness did not start",
                path.display(),
                errors.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if cfg.cluster.is_none() {
        eprintln!("{}: {NEEDS_CLUSTER}", path.display());
        eprintln!("{}: the witness did not start", path.display());
        return Ok(ExitCode::FAILURE);
    }
    let Some(listen) = ops_listen.or(cfg.ops.listen) else {
        anyhow::bail!(
            "{}: a witness serves its view on its ops endpoint, and [ops] listen is off: give \
             [ops] listen or --ops-listen ADDR",
            path.display()
        );
    };
    crate::logging::init(&cfg.log);
    // Two workers: probes, the supervisor and the ops endpoint are all it runs.
    let runtime = crate::runtime(2)?;
    runtime.block_on(async {
        let metrics = crate::stats::install_metrics()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind ops endpoint {listen}"))?;
        let bound = listener.local_addr()?;
        let mut signals = crate::shutdown::Signals::listen()?;
        let witness = Witness::start(cfg, bound)?;
        let _ops = AbortOnDrop(ops::serve(listener, witness.clone(), metrics));
        let _watch = crate::reload::spawn_watchers(witness.clone())?;
        let _dns = AbortOnDrop(crate::reload::start_dns(&witness).await);
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening ops {bound}");
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        }
        let cfg = witness.config.load();
        let pools = cfg.pools.len();
        tracing::info!(config = %cfg.path.display(), ops = %bound, pools, "siplb witness ready: probing every pool, serving /cluster/view");
        let signal = signals.next().await;
        tracing::info!(signal = ?signal, "witness exiting");
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use healthcheck::quorum::Verdict;

    use super::*;
    use crate::test_dir::TestDir;

    fn parse(text: &str) -> Config {
        config::parse(Path::new("w.toml"), text).expect("valid config")
    }

    const POOLS: &str = "[listen]\nudp = [\"127.0.0.1:5060\"]\n\
        [[pool]]\nname = \"a\"\npair = \"b\"\nservers = [{ address = \"127.0.0.1:5071\" }]\n\
        [[pool]]\nname = \"b\"\npair = \"a\"\nservers = [{ address = \"127.0.0.1:5081\" }]\n\
        [[route]]\npool = \"a\"\n";

    #[test]
    fn a_config_without_cluster_is_refused_and_one_with_it_is_not() {
        let e = refusal(&parse(POOLS)).expect("refused");
        assert_eq!(e.key, "cluster");
        assert!(e.message.contains("token"), "{e}");
        let dir = TestDir::new("witness");
        let token = dir.write("token", "t0k3n");
        let with = format!(
            "{POOLS}[cluster]\npeers = [\"http://127.0.0.1:9061\"]\ntoken_file = \"{}\"\n",
            token.display()
        );
        assert!(refusal(&parse(&with)).is_none());
    }

    #[test]
    fn with_no_exchange_round_a_witness_never_has_a_quorum() {
        // Whatever [cluster] names (at least one other observer, or it does not load), the
        // witness's own view alone is no majority of the observers: its supervisor holds every
        // pool and never fails one over.
        for (peers, witness) in [(1, false), (0, true), (1, true), (2, true), (4, false)] {
            let cluster = config::Cluster {
                peers: (0..peers)
                    .map(|i| observer(&format!("http://10.0.0.{}:9060", i + 2)))
                    .collect(),
                witness: witness.then(|| observer("http://10.0.9.9:9060")),
                token: config::ClusterToken("t".into()),
            };
            for own_up in [true, false] {
                let t = crate::cluster::tally(&cluster, None, "a", own_up);
                assert_eq!(t.verdict(), Verdict::Undecided, "{peers} peers: {t:?}");
            }
        }
    }

    fn observer(url: &str) -> config::Observer {
        config::Observer {
            url: url.into(),
            authority: url.trim_start_matches("http://").into(),
        }
    }

    #[test]
    fn the_servers_take_the_family_of_the_configured_listeners() {
        let cfg = parse(POOLS);
        let local = configured_listeners(&cfg);
        assert_eq!(local.udp, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(advertise(&cfg, &local).to_string(), "127.0.0.1:5060");
    }
}
