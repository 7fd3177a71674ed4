//! `flood`: the junk side of siplb's flood benchmark (`bench/flood.sh`), and the valid TCP/TLS
//! clients and the watcher it runs beside. Not part of the product: a bin of the test crate.
//!
//! ```text
//! flood udp --to ADDR --rate R --secs S [--sockets N] [--seed X] [--kinds K,K...]
//!     junk datagrams (siplb_e2e::flood::udp: random, mutated, oversized, no_route,
//!     forged_response, scanner; every kind unless --kinds) at R per second from N sockets [4];
//!     prints `udp sent ...`.
//! flood streams --secs S [--tcp ADDR] [--tls ADDR --ca PEM --name NAME] [--junk N]
//!       [--overlong N] [--slowloris N] [--hellos N] [--churn N] [--hold MS] [--gap MS]
//!       [--sources K] [--max-connects M]
//!     hostile connections (siplb_e2e::flood::stream), N attackers of each attack on each
//!     listener given (`--hellos` on TLS only), from K addresses 127.0.2.1.. [32]; churn holds
//!     a connection MS [300], slowloris sends a byte every MS [100]; prints `streams ...`.
//! flood register --secs S --clients N [--tcp ADDR] [--tls ADDR --ca PEM --name NAME] [--gap MS]
//!     N clients per listener, each on its own connection, a REGISTER every MS [50] (one
//!     outstanding at most); prints `register sent X ok Y failed Z`.
//! flood watch --pid P --secs S [--ops ADDR] [--every MS]
//!     VmRSS of P and GET /healthz every MS [100] until S seconds passed or P exited; prints
//!     `watch rss_start_kib A rss_max_kib B polls N not_200 F p50_ms .. p99_ms .. max_ms ..
//!     cpu_s C`.
//! ```
//!
//! Every loop is bounded by S seconds (and a count); every address must be a loopback one. The
//! soft limit of open files is raised to the hard limit at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siplb_e2e::flood::require_loopback;
use siplb_e2e::flood::stream::{client_config, Attack, Plan, StreamFlood, Target};
use siplb_e2e::flood::udp::{Kind, UdpFlood};
use siplb_e2e::flood::watch::{rss_kib, Watch};
use siplb_e2e::stream::{Dial, StreamClient};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match raise_nofile().and_then(|()| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flood: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard limit: a churn of a thousand attackers
/// needs more descriptors than the usual 1,024.
fn raise_nofile() -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))
}

fn usage() -> String {
    "usage: flood udp --to ADDR --rate R --secs S [--sockets N] [--kinds K,K...] | \
     flood streams --secs S [--tcp ADDR] [--tls ADDR --ca PEM --name NAME] [--junk N] [--overlong N] \
     [--slowloris N] [--hellos N] [--churn N] [--hold MS] [--gap MS] [--sources K] | \
     flood register --secs S --clients N [--tcp ADDR] [--tls ADDR --ca PEM --name NAME] [--gap MS] | \
     flood watch --pid P --secs S [--ops ADDR] [--every MS]"
        .to_string()
}

fn run(args: &[String]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or_else(usage)?;
    let opts = Opts::parse(rest)?;
    match command.as_str() {
        "udp" => udp(&opts),
        "streams" => streams(&opts),
        "register" => register(&opts),
        "watch" => watch(&opts),
        _ => Err(usage()),
    }
}

/// `--key value` pairs.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let key = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected {a:?}\n{}", usage()))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            pairs.push((key.to_string(), value.clone()));
        }
        Ok(Opts(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn need<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        let v = self.get(key).ok_or_else(|| format!("--{key} is needed"))?;
        v.parse().map_err(|_| format!("bad --{key}: {v:?}"))
    }

    fn or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            Some(_) => self.need(key),
            None => Ok(default),
        }
    }

    fn addr(&self, key: &str) -> Result<Option<SocketAddr>, String> {
        match self.get(key) {
            Some(_) => Ok(Some(require_loopback(self.need(key)?)?)),
            None => Ok(None),
        }
    }

    fn secs(&self) -> Result<Duration, String> {
        let s: u64 = self.need("secs")?;
        if s == 0 || s > 3600 {
            return Err("--secs must be 1..3600".into());
        }
        Ok(Duration::from_secs(s))
    }

    fn millis(&self, key: &str, default: u64) -> Result<Duration, String> {
        Ok(Duration::from_millis(self.or(key, default)?))
    }

    /// The TLS target: `--tls ADDR --ca PEM --name NAME`.
    fn tls(&self) -> Result<Option<(SocketAddr, Arc<rustls::ClientConfig>, String)>, String> {
        let Some(to) = self.addr("tls")? else {
            return Ok(None);
        };
        let ca: PathBuf = self.need("ca")?;
        let name: String = self.need("name")?;
        Ok(Some((to, client_config(&ca)?, name)))
    }
}

fn udp(o: &Opts) -> Result<(), String> {
    let to = require_loopback(o.need("to")?)?;
    let rate: u32 = o.need("rate")?;
    let secs = o.secs()?;
    let sockets: usize = o.or("sockets", 4)?;
    let seed: u64 = o.or("seed", 0xf100d)?;
    let kinds = match o.get("kinds") {
        None => Kind::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| Kind::parse(k.trim()).ok_or_else(|| format!("unknown kind {k:?}")))
            .collect::<Result<Vec<Kind>, String>>()?,
    };
    let max = u64::from(rate) * secs.as_secs();
    let flood = UdpFlood::start_of(&kinds, to, rate, sockets, (secs, max), seed)?;
    while flood.is_running() {
        // Waiting for the flood's own deadline, checked at a pace.
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("udp {}", flood.stop());
    Ok(())
}

fn streams(o: &Opts) -> Result<(), String> {
    let secs = o.secs()?;
    let sources: u32 = o.or("sources", 32)?;
    let hold = o.millis("hold", 300)?;
    let gap = o.millis("gap", 100)?;
    let mut targets = Vec::new();
    if let Some(to) = o.addr("tcp")? {
        targets.push(Target::tcp(to)?);
    }
    if let Some((to, config, name)) = o.tls()? {
        targets.push(Target::tls(to, config, &name)?);
    }
    if targets.is_empty() {
        return Err("give --tcp ADDR, --tls ADDR or both".into());
    }
    let mut plans = Vec::new();
    for (attack, key) in [
        (Attack::Junk, "junk"),
        (Attack::Overlong, "overlong"),
        (Attack::Slowloris, "slowloris"),
        (Attack::UnfinishedHello, "hellos"),
        (Attack::Churn, "churn"),
    ] {
        let n: usize = o.or(key, 0)?;
        for t in &targets {
            if n == 0 || (attack == Attack::UnfinishedHello && !t.is_tls()) {
                continue;
            }
            let pace = match attack {
                Attack::Churn => hold,
                _ => gap,
            };
            plans.push(
                Plan::new(attack, t.clone(), n)
                    .from_sources(std::net::Ipv4Addr::new(127, 0, 2, 1), sources)
                    .pace(pace),
            );
        }
    }
    let max: u64 = o.or("max-connects", 10_000_000)?;
    let flood = StreamFlood::start(plans, secs, max)?;
    let until = Instant::now() + secs;
    while Instant::now() < until {
        // Waiting for the flood's deadline, checked at a pace.
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("streams {}", flood.stop());
    Ok(())
}

fn register(o: &Opts) -> Result<(), String> {
    let secs = o.secs()?;
    let n: usize = o.need("clients")?;
    let gap = o.millis("gap", 50)?;
    let mut clients = Vec::new();
    for _ in 0..n {
        if let Some(to) = o.addr("tcp")? {
            clients.push(
                StreamClient::try_connect(to, None, Dial::Tcp)
                    .map_err(|e| format!("connect {to}: {e}"))?,
            );
        }
        if let Some((to, config, server_name)) = o.tls()? {
            let dial = Dial::Tls {
                config,
                server_name,
            };
            clients.push(
                StreamClient::try_connect(to, None, dial)
                    .map_err(|e| format!("connect {to}: {e}"))?,
            );
        }
    }
    let deadline = Instant::now() + secs;
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            std::thread::spawn(move || {
                let (mut sent, mut ok) = (0u64, 0u64);
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    let req =
                        client.register_request(&format!("bench{i}-{}@contoso.com", sent % 100));
                    sent += 1;
                    if client.send_raw(&req.bytes()).is_err() {
                        break;
                    }
                    if client.final_or_closed(&req).and_then(|m| m.status()) == Some(200) {
                        ok += 1;
                    }
                    next += gap;
                    let now = Instant::now();
                    if next > now {
                        // Pacing the valid load.
                        std::thread::sleep(next - now);
                    }
                }
                (sent, ok)
            })
        })
        .collect();
    let (mut sent, mut ok) = (0, 0);
    for t in threads {
        let (s, k) = t.join().map_err(|_| "a client thread panicked")?;
        sent += s;
        ok += k;
    }
    println!("register sent {sent} ok {ok} failed {}", sent - ok);
    Ok(())
}

fn watch(o: &Opts) -> Result<(), String> {
    let pid: u32 = o.need("pid")?;
    let secs = o.secs()?;
    let ops = o.addr("ops")?;
    let every = o.millis("every", 100)?;
    let start = rss_kib(pid).ok_or_else(|| format!("no process {pid}"))?;
    let w = Watch::start(pid, ops, every, secs);
    let until = Instant::now() + secs;
    while Instant::now() < until && rss_kib(pid).is_some() {
        // Waiting for the watch's deadline (or the process's exit), checked at a pace.
        std::thread::sleep(Duration::from_millis(100));
    }
    let w = w.stop();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "watch rss_start_kib {start} rss_max_kib {} polls {} not_200 {} p50_ms {:.1} p99_ms {:.1} \
         max_ms {:.1} cpu_s {:.2} secs {:.1}",
        w.max_rss_kib(),
        w.polls.len(),
        w.failed_polls().len(),
        ms(w.latency(0.5)),
        ms(w.latency(0.99)),
        ms(w.latency(1.0)),
        w.cpu_ticks as f64 / 100.0,
        w.took.as_secs_f64()
    );
    for p in w.failed_polls().iter().take(5) {
        println!(
            "watch failed poll at {:.1} s: {:?}",
            p.at.as_secs_f64(),
            p.status
        );
    }
    Ok(())
}
