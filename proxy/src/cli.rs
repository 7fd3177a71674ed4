//! The `siplb` command line (DESIGN.md "Command line contract"): run, `check`, `route`,
//! `demo`, `healthcheck` and `witness`. The top of the crate: it wires the proxy, the ops endpoint and the reload watchers
//! together, and nothing imports it.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config};
use crate::core::explain;
use crate::dns;
use crate::server::{Listeners, Proxy};
use crate::table::RoutingTable;
use crate::token::Token;
use clap::{Parser, Subcommand};

/// siplb: a SIP-aware, stateless load-balancing proxy that routes each user to one server of
/// its home pool.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration: print a summary and exit 0, or every error and exit 1. Names
    /// of servers are asked of DNS once; one that does not resolve is a warning.
    Check,
    /// Show where a request would go with every server up (names asked of DNS once).
    Route {
        /// The SIP method, e.g. REGISTER or INVITE.
        method: String,
        /// The user's address of record, e.g. sip:alice@contoso.com.
        aor: String,
        /// The client's IP address, which a `source-ip` key reads (the default key of edge and
        /// director pools).
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
    },
    /// Run paired pools of built-in SIP responders and the proxy on loopback, and show routing.
    Demo,
    /// Ask a running siplb's /healthz (its [ops] listen address in the config, or --url): exit
    /// 0 when it answers 200, 1 otherwise. For a container's HEALTHCHECK: needs no curl.
    Healthcheck {
        /// The URL to ask, e.g. http://127.0.0.1:9060/healthz; default: the config's [ops].
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the connect, and again for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run as the fleet's witness in a third site: probe every server of every pool and serve
    /// this view at /cluster/view (the same config file as the replicas, [cluster] required);
    /// no SIP listener, no failover, no admin API.
    Witness {
        /// Where to serve the ops endpoint instead of the config's [ops] listen.
        #[arg(long)]
        ops_listen: Option<SocketAddr>,
    },
}

/// Parses the command line and runs it; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.config),
        Some(Command::Check) => check(&cli.config),
        Some(Command::Route {
            method,
            aor,
            source,
        }) => route(&cli.config, &method, &aor, source),
        Some(Command::Demo) => crate::demo::run(),
        Some(Command::Healthcheck { url, timeout }) => healthcheck(&cli.config, url, timeout),
        Some(Command::Witness { ops_listen }) => crate::witness::run(&cli.config, ops_listen),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("siplb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the config, printing every error.
fn load(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(cfg) => Some(cfg),
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); siplb did not start",
                path.display(),
                errors.len()
            );
            None
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let Some(cfg) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    print!("{}", config::summary(&cfg));
    // A name that does not resolve now is a warning: siplb starts without its servers and
    // keeps asking.
    for line in resolve_once(&cfg)?.1 {
        println!("{line}");
    }
    if let Some(w) = cfg.cluster.as_ref().and_then(|c| c.witness.as_ref()) {
        println!(
            "witness   at {}: run `siplb witness --config {}` there (this file; \
             --ops-listen ADDR when its ops endpoint is elsewhere than [ops] listen)",
            w.url,
            path.display()
        );
    }
    println!("{}: ok", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Asks DNS once for every name of `cfg`, for the commands that run no proxy: the config with
/// the servers the names give now, and one line per name (its answer, or a warning that it
/// does not resolve).
fn resolve_once(cfg: &Config) -> anyhow::Result<(Config, Vec<String>)> {
    let lookups = dns::lookups(cfg);
    if lookups.is_empty() {
        return Ok((cfg.clone(), Vec::new()));
    }
    let results = crate::runtime(1)?.block_on(async {
        match dns::Resolver::new(&cfg.dns) {
            Ok(r) => r.lookup_all(&lookups).await,
            Err(e) => lookups
                .iter()
                .map(|l| (l.clone(), Err(e.clone())))
                .collect(),
        }
    });
    let lines = results
        .iter()
        .map(|(l, r)| match r {
            Ok(answer) => format!("dns       {} -> {}", l.name(), answer.describe().join("; ")),
            Err(e) => format!(
                "warning: {} does not resolve now ({e}); siplb starts without its servers and \
                 asks again every {}",
                l.name(),
                config::duration::format_duration(cfg.dns.refresh)
            ),
        })
        .collect();
    let mut answers = dns::Answers::default();
    // Nothing runs to show the events: the lines above say it all.
    let _ = answers.record(results, std::time::SystemTime::now());
    let local = crate::witness::configured_listeners(cfg);
    Ok((dns::expand::expand(cfg, &answers, &local), lines))
}

/// `siplb healthcheck`: `/healthz` of `url`, or of the ops endpoint `path`'s config names.
fn healthcheck(
    path: &Path,
    url: Option<String>,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url,
        None => {
            let Some(cfg) = load(path) else {
                return Ok(ExitCode::FAILURE);
            };
            let Some(listen) = cfg.ops.listen else {
                anyhow::bail!(
                    "{}: [ops] listen is off, so there is no /healthz to ask (give --url)",
                    path.display()
                );
            };
            crate::healthz::url_of(listen)
        }
    };
    let (code, body) = crate::healthz::ask(&url, timeout)?;
    println!("{url}: {code} {body}");
    Ok(if code == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `siplb route`: the route, pools and server, then the key and why the route reads it, e.g.
/// `key     call-id (default for a mediation pool)` or `key     to-aor (route's key)`; for a
/// `source-ip` key, the source it was read from.
fn route(path: &Path, method: &str, aor: &str, source: IpAddr) -> anyhow::Result<ExitCode> {
    let Some(cfg) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    let (cfg, _) = resolve_once(&cfg)?;
    let table = RoutingTable::unbound(&cfg, &AllUp);
    match explain::explain(&table, method, aor, source) {
        Ok(d) => {
            println!("route   {}", d.route);
            println!("home    {}", d.home);
            println!("serving {}", d.serving);
            match d.server {
                Some(s) => println!("server  {} {} {}", s.id, s.address, s.transport),
                None => println!("server  none (503)"),
            }
            println!("key     {} ({})", d.key, d.key_rule);
            if d.key == "source-ip" {
                println!("source  {}", d.source);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            let code = refusal.code();
            eprintln!("siplb: {method} {aor} is not routed: siplb answers {code}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `siplb route` answers for a healthy farm: every server up, drained ones included.
struct AllUp;

impl crate::table::HealthView for AllUp {
    fn server_state(&self, _: &str) -> Option<healthcheck::ServerState> {
        Some(healthcheck::ServerState::Up)
    }
    fn failed_over(&self, _: &str) -> bool {
        false
    }
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let Some(cfg) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    crate::logging::init(&cfg.log);
    let token = Token::load(&cfg)?;
    let runtime = crate::runtime(cfg.listen.workers)?;
    runtime.block_on(async {
        let metrics = crate::stats::install_metrics()?;
        let listeners = Listeners::bind(&cfg)?;
        // Listening before anything is announced: a SIGTERM from then on is a graceful stop.
        let mut signals = crate::shutdown::Signals::listen()?;
        // Stopped below, once `shutdown::drain` says so.
        let proxy = Proxy::start(cfg, listeners, token, true, std::future::pending())?;
        let ops = crate::ops::Ops {
            proxy: proxy.clone(),
            metrics: Some(metrics),
        };
        let ops_addr = crate::ops::start(ops).await?;
        let _watch = crate::reload::spawn_watchers(proxy.clone())?;
        let _dns = AbortOnDrop(crate::reload::start_dns(&proxy).await);
        let _cluster = AbortOnDrop(tokio::spawn(crate::cluster::run(
            {
                let proxy = proxy.clone();
                move || proxy.config()
            },
            {
                let control = proxy.control.clone();
                move |round| control.fleet(round)
            },
            proxy.control.hurry(),
        )));
        let _gauge = AbortOnDrop(tokio::spawn(crate::shutdown::refresh_gauge(proxy.clone())));
        announce(&proxy, ops_addr);
        crate::shutdown::drain(&proxy, &mut signals).await;
        proxy.stop();
        tracing::info!("exiting");
        Ok(ExitCode::SUCCESS)
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The lines scripts and tests wait for on stdout.
fn announce(proxy: &Proxy, ops: Option<SocketAddr>) {
    let mut out = std::io::stdout().lock();
    for addr in &proxy.udp() {
        let _ = writeln!(out, "listening udp {addr}");
    }
    for (transport, addr) in proxy.stream_listeners() {
        let _ = writeln!(out, "listening {} {addr}", transport.as_str());
    }
    for addr in &proxy.passthrough.addrs() {
        let _ = writeln!(out, "listening passthrough {addr}");
    }
    if let Some(addr) = ops {
        let _ = writeln!(out, "listening ops {addr}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    let t = proxy.tables.load();
    tracing::info!(config = %proxy.config().path.display(), pools = t.pools.len(), routes = t.routes.len(), advertise = %t.advertise, "siplb ready");
}
