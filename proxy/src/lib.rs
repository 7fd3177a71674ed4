//! siplb: a SIP-aware, stateless load-balancing proxy.
//!
//! The crate is a sans-io core with a thin I/O shell around it:
//! - [`config`] reads and validates `config.toml`;
//! - [`sip`] scans a message in place and edits its bytes (our Via, `received`/`rport`,
//!   Max-Forwards, our Route) without re-serialising anything else;
//! - [`hrw`] is the weighted rendezvous hash that binds a user to one server;
//! - [`table`] is the immutable routing table held in an `ArcSwap`;
//! - [`core`] turns one datagram into one action (forward, answer, or drop);
//! - [`udp`] moves datagrams between sockets and the core; [`demo`] runs a self-contained demo.
#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod demo;
pub mod health;
pub(crate) mod hrw;
pub mod logging;
pub mod ops;
pub mod reload;
pub mod server;
pub(crate) mod sip;
pub(crate) mod stats;
pub mod table;
pub(crate) mod udp;

/// A multi-threaded tokio runtime with `workers` threads.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("siplb-worker")
        .enable_all()
        .build()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
