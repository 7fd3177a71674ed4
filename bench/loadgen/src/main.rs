//! siplb-loadgen: plays SIP clients and 200 OK backends for siplb's benchmarks (bench/load.sh).
//!
//! `backends` starts N answering servers per transport on 127.0.0.1 and runs for a bounded
//! time; `register` sends REGISTERs at a fixed rate for a fixed count through a proxy (or
//! straight to the backends) and prints what it counted: one JSON line on stdout for scripts,
//! a readable summary on stderr. Both read one clock (CLOCK_MONOTONIC), so a transaction's
//! time splits into the request's way to the backend and the response's way back. `relay`
//! forwards UDP or TCP between one client and the backends doing no SIP work (see `relay.rs`):
//! the floor under a proxy's CPU per message.

mod backend;
mod client;
mod clock;
mod relay;
mod sip;
mod tls;
mod udp;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

use crate::client::{Plan, Tally, Transport};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SIP servers answering every request with 200 OK: prints "listening TRANSPORT ADDR" for
    /// each, then "ready"; ends after --secs.
    Backends {
        /// UDP backends.
        #[arg(long, default_value_t = 0)]
        udp: usize,
        /// TCP backends.
        #[arg(long, default_value_t = 0)]
        tcp: usize,
        /// TLS backends.
        #[arg(long, default_value_t = 0)]
        tls: usize,
        /// The TLS backends' certificate chain (PEM); without it one is made (see --write-ca).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The key of --cert (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Without --cert: where to write the CA of the certificate made for --name.
        #[arg(long)]
        write_ca: Option<PathBuf>,
        /// Without --cert: the DNS name of the certificate made.
        #[arg(long, default_value = "siplb.test")]
        name: String,
        /// How long to run, seconds.
        #[arg(long)]
        secs: u64,
    },
    /// A forwarder that does no SIP work (over UDP built as siplb's UDP shell): prints
    /// "listening TRANSPORT ADDR", then "ready"; ends after --secs.
    Relay {
        /// The backends, comma-separated: requests go to each in turn.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddr>,
        /// Over UDP or TCP (a thread per connection; the newest client connection gets the
        /// answers).
        #[arg(long, value_enum, default_value_t = Transport::Udp)]
        transport: Transport,
        /// UDP: threads, each with a socket of its own on the one port (SO_REUSEPORT).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// How long to run, seconds.
        #[arg(long)]
        secs: u64,
    },
    /// REGISTERs at a fixed rate for a fixed count; prints one JSON line of counts and
    /// latencies (µs) on stdout and a summary on stderr.
    Register {
        /// Where to send: the proxy, or several backends (a direct run: a user always goes to
        /// the same one), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddr>,
        #[arg(long, value_enum, default_value_t = Transport::Udp)]
        transport: Transport,
        /// REGISTERs per second.
        #[arg(long)]
        rate: u64,
        /// REGISTERs in all.
        #[arg(long)]
        count: u64,
        /// Users (AORs): transaction i registers user i mod USERS.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// The domain of the AORs (the proxy routes on it).
        #[arg(long, default_value = "contoso.com")]
        domain: String,
        /// TCP/TLS: connections (users spread over them, each user on one).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// TLS: the CA the proxy's certificate must chain to (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// TLS: the name the proxy's certificate must carry.
        #[arg(long, default_value = "siplb.test")]
        name: String,
        /// UDP: T1 of RFC 3261, milliseconds (retransmissions at T1, 2·T1, ... up to 4 s).
        #[arg(long, default_value_t = 500)]
        t1_ms: u64,
        /// A transaction not answered this long after its first send is lost, milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("siplb-loadgen: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Backends {
            udp,
            tcp,
            tls,
            cert,
            key,
            write_ca,
            name,
            secs,
        } => backends(udp, tcp, tls, cert.zip(key), write_ca, &name, secs),
        Command::Relay {
            to,
            transport,
            threads,
            secs,
        } => {
            let to = to.into_iter().map(udp::v4).collect::<Result<_>>()?;
            match transport {
                Transport::Udp => println!("listening udp {}", relay::start(to, threads)?),
                Transport::Tcp => println!("listening tcp {}", relay::start_tcp(to)?),
                Transport::Tls => bail!("the relay speaks UDP and TCP only"),
            }
            println!("ready");
            std::thread::sleep(Duration::from_secs(secs));
            Ok(())
        }
        Command::Register {
            to,
            transport,
            rate,
            count,
            users,
            domain,
            connections,
            ca,
            name,
            t1_ms,
            timeout_ms,
        } => {
            let tls = match transport {
                Transport::Tls => {
                    let Some(ca) = ca else {
                        bail!("--transport tls needs --ca (the CA of the proxy's certificate)")
                    };
                    Some((tls::client(&ca)?, name))
                }
                _ => None,
            };
            let plan = Plan {
                to: to.into_iter().map(udp::v4).collect::<Result<_>>()?,
                transport,
                rate,
                count,
                users,
                domain,
                connections,
                tls,
                t1_ns: t1_ms * 1_000_000,
                timeout_ns: timeout_ms * 1_000_000,
                run: std::process::id(),
            };
            let tally = client::run(&plan)?;
            let cpu = clock::process_cpu_secs();
            println!("{}", json(&plan, &tally, cpu));
            eprint!("{}", summary(&plan, &tally, cpu));
            Ok(())
        }
    }
}

fn backends(
    udp_n: usize,
    tcp_n: usize,
    tls_n: usize,
    cert: Option<(PathBuf, PathBuf)>,
    write_ca: Option<PathBuf>,
    name: &str,
    secs: u64,
) -> Result<()> {
    let counts = Arc::new(backend::Counts::default());
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    for i in 0..udp_n {
        let socket = udp::bind(any)?;
        println!("listening udp {}", socket.local_addr()?);
        let counts = counts.clone();
        std::thread::spawn(move || backend::serve_udp(socket, format!("lgu{i}"), counts));
    }
    let tls_config = if tls_n > 0 {
        Some(match (cert, write_ca) {
            (Some((cert, key)), _) => tls::server_from_files(&cert, &key)?,
            (None, Some(ca)) => tls::server_made(name, &ca)?,
            (None, None) => bail!("TLS backends need --cert and --key, or --write-ca"),
        })
    } else {
        None
    };
    for (kind, n, config) in [("tcp", tcp_n, None), ("tls", tls_n, tls_config)] {
        for i in 0..n {
            let listener = TcpListener::bind(any).context("binding a TCP listener")?;
            println!("listening {kind} {}", listener.local_addr()?);
            let (config, counts, tag) = (config.clone(), counts.clone(), format!("lg{kind}{i}"));
            std::thread::spawn(move || backend::serve_listener(listener, config, tag, counts));
        }
    }
    println!("ready");
    std::thread::sleep(Duration::from_secs(secs));
    println!(
        "answered {} REGISTERs, {} other requests; left {} messages unanswered",
        counts.registers.load(Ordering::Relaxed),
        counts.others.load(Ordering::Relaxed),
        counts.unanswered.load(Ordering::Relaxed)
    );
    Ok(())
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "n": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

fn json(plan: &Plan, t: &Tally, cpu: f64) -> serde_json::Value {
    let codes: serde_json::Map<String, serde_json::Value> = t
        .codes
        .iter()
        .map(|(c, n)| (c.to_string(), (*n).into()))
        .collect();
    serde_json::json!({
        "transport": format!("{:?}", plan.transport).to_lowercase(),
        "rate": plan.rate,
        "count": plan.count,
        "connections": plan.connections,
        "sent": t.sent,
        "answered": t.answered,
        "ok": t.ok,
        "retransmissions": t.retransmissions,
        "retransmitted": t.retransmitted,
        "late": t.late,
        "lost": t.lost,
        "duplicates": t.duplicates,
        "stray": t.stray,
        "closed": t.closed,
        "codes": codes,
        "send_secs": t.send_secs,
        "achieved_rate": achieved(plan, t),
        "max_lag_us": t.max_lag_us,
        "wall_secs": t.wall_secs,
        "cpu_secs": cpu,
        "transaction_us": percentiles(&t.latency.transaction),
        "request_us": percentiles(&t.latency.request),
        "response_us": percentiles(&t.latency.response),
    })
}

/// The rate the REGISTERs went out at: count over the time from the first slot to the last
/// send plus one interval (so that a run exactly on time reads as the asked rate).
fn achieved(plan: &Plan, t: &Tally) -> f64 {
    let secs = t.send_secs + 1.0 / plan.rate as f64;
    (t.sent as f64 / secs * 10.0).round() / 10.0
}

fn summary(plan: &Plan, t: &Tally, cpu: f64) -> String {
    let line = |what: &str, h: &Histogram<u64>| {
        format!(
            "  {what:<28} p50 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs  max {:>7} µs  ({} samples)\n",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            h.len()
        )
    };
    let mut s = format!(
        "{:?} {} REGISTERs at {}/s (sent at {}/s, at most {} µs behind), {} s in all:\n  \
         sent {}, answered {} ({} × 200), retransmissions {} ({} transactions), late {}, lost {}, \
         duplicates {}, stray {}, closed connections {}, other codes {:?}\n  client CPU {:.2} s\n",
        plan.transport,
        plan.count,
        plan.rate,
        achieved(plan, t),
        t.max_lag_us,
        t.wall_secs,
        t.sent,
        t.answered,
        t.ok,
        t.retransmissions,
        t.retransmitted,
        t.late,
        t.lost,
        t.duplicates,
        t.stray,
        t.closed,
        t.codes,
        cpu
    );
    s += &line("transaction (send → 200)", &t.latency.transaction);
    s += &line("request (send → backend)", &t.latency.request);
    s += &line("response (backend → client)", &t.latency.response);
    s
}
