//! siplb: a SIP-aware, stateless load-balancing proxy.
//!
//! The crate is a sans-io core with a thin I/O shell around it, in three layers; a module
//! imports only from its own layer or the ones below, never from above.
//!
//! - **Bottom, plain data and pure functions.** [`sip`] scans a message in place and edits its
//!   bytes (our Via, `received`/`rport`, Max-Forwards, our Route) without re-serialising
//!   anything else; `hrw` is the weighted rendezvous hash that binds a user to one server;
//!   [`config`] reads and validates `config.toml`; [`table`] is the immutable routing table
//!   held in an `ArcSwap`; [`core`] turns one datagram into one outcome (forward, answer, or
//!   drop) and explains where a request would go; `stats` counts what the core decides and
//!   installs the metrics recorder; `events` keeps the last health, failover, drain and
//!   reload events for `/status`.
//! - **Middle, the I/O shell.** `udp` moves datagrams between sockets and the core; `stream`
//!   serves TCP and TLS connections as flows (framing, backend connections, limits);
//!   `health` owns server health and pool failover and is the only writer of the routing table;
//!   [`server`] binds listeners and runs a proxy (workers, supervisor, reloads);
//!   `passthrough` copies TLS connections unread to the servers HRW picks by client IP; `dns`
//!   resolves the names servers and pools are given by. `token` (the
//!   admin bearer token) and `logging` sit beside them.
//! - **Top, what a person or a program talks to.** `ops` (the HTTP endpoint), `reload` (file
//!   watcher and SIGHUP), `shutdown` (SIGTERM's graceful stop), `demo`, and [`cli`] (the
//!   command line; `main.rs` only calls it).
//!
//! `cluster` (the fleet's views of the pools, and the task that exchanges them with the other
//! replicas) uses only the bottom layer: the supervisor counts its rounds, `ops` serves this
//! replica's view, and `cli` starts the exchange with the proxy's config and supervisor.
//! `witness` (`siplb witness`) sits at the top beside `cli`: a supervisor and an ops endpoint
//! of its own, no listener, kept up to date by `reload`.
#![forbid(unsafe_code)]

pub mod cli;
mod cluster;
pub mod config;
pub mod core;
mod demo;
mod dns;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod healthz;
mod hrw;
mod logging;
mod ops;
mod passthrough;
mod reload;
pub mod server;
mod shutdown;
pub mod sip;
mod stats;
pub(crate) mod stream;
pub mod table;
#[cfg(test)]
mod test_dir;
pub(crate) mod tls;
mod token;
mod udp;
mod witness;

/// A multi-threaded tokio runtime with `workers` threads. UDP does not run on it (each UDP
/// socket has a thread of its own, `udp::serve`): its workers carry TCP and TLS connections,
/// probes, the supervisor and the ops endpoint, so they keep `[listen] workers` for the
/// connections' sake; with only UDP listeners they sleep (one worker measured no cheaper per
/// UDP message, docs/BENCHMARKS.md "UDP shell: threads and batches").
pub(crate) fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("siplb-worker")
        .enable_all()
        .build()
}

/// Resolves on Ctrl-C or SIGTERM: how `siplb demo` stops (at once). The run command stops
/// gracefully instead (`shutdown`).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
