//! A placed connection's life: bytes copied both ways unread until both sides close, one
//! fails, the connection is silent for its idle timeout, or the routing table says its server
//! is down or gone.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use healthcheck::ServerState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::table::RoutingTable;

/// The server a connection was made to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) id: String,
    pub(super) address: SocketAddr,
}

/// Whether `table` still lets a connection to `target` live: the server is still configured
/// (same id at the same address) and not down. A drained server keeps its connections.
fn still_serves(table: &RoutingTable, target: &Target) -> bool {
    table.server_at(target.address).is_some_and(|(p, s)| {
        let server = table.server(p, s);
        server.id == target.id && server.state != ServerState::Down
    })
}

/// Copies bytes both ways until both sides have closed, an error, `idle` of silence, or a
/// table in which `target` no longer serves. Returns why it ended.
pub(super) async fn relay(
    client: TcpStream,
    server: TcpStream,
    target: &Target,
    idle: Duration,
    tables: &ArcSwap<RoutingTable>,
    changes: watch::Receiver<Arc<RoutingTable>>,
) -> &'static str {
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Activity::new(client, base, last.clone());
    let mut server = Activity::new(server, base, last.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => match r {
            Ok(_) => "both sides closed",
            Err(_) => "a side failed",
        },
        () = silent_for(&last, base, idle) => "idle timeout",
        () = lost(tables, changes, target) => "its server is down or no longer configured",
    }
}

/// Resolves once no byte has moved for `idle` (`last`: milliseconds after `base` of the last).
async fn silent_for(last: &AtomicU64, base: Instant, idle: Duration) {
    loop {
        let at = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= at {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// Resolves once the current table no longer lets a connection to `target` live. `changes`
/// only wakes it: the table judged is always the one in `tables` now, never an older one the
/// watcher has not passed on yet.
async fn lost(
    tables: &ArcSwap<RoutingTable>,
    mut changes: watch::Receiver<Arc<RoutingTable>>,
    target: &Target,
) {
    loop {
        changes.borrow_and_update();
        if !still_serves(&tables.load(), target) {
            return;
        }
        if changes.changed().await.is_err() {
            // The proxy is stopping; its listeners close the connection.
            std::future::pending::<()>().await;
        }
    }
}

/// A stream that notes when it last read a byte, for the idle timeout.
struct Activity {
    inner: TcpStream,
    base: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new(inner: TcpStream, base: Instant, last: Arc<AtomicU64>) -> Self {
        Activity { inner, base, last }
    }
}

impl AsyncRead for Activity {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Activity {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::table::HealthView;

    const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
passthrough = [{ address = "127.0.0.1:5061", pool = "fe" }]
[[pool]]
name = "fe"
servers = [{ address = "127.0.0.1:5071", id = "fe1" }, { address = "127.0.0.1:5072", id = "fe2" }]
[[route]]
pool = "fe"
"#;

    struct State(&'static str, ServerState);
    impl HealthView for State {
        fn server_state(&self, id: &str) -> Option<ServerState> {
            (id == self.0).then_some(self.1)
        }
        fn failed_over(&self, _: &str) -> bool {
            false
        }
    }

    fn table(text: &str, health: &dyn HealthView) -> RoutingTable {
        let cfg = crate::config::parse(Path::new("t.toml"), text).expect("valid config");
        RoutingTable::unbound(&cfg, health)
    }

    #[test]
    fn a_connection_lives_while_its_server_is_up_or_drained() {
        let fe1 = Target {
            id: "fe1".into(),
            address: "127.0.0.1:5071".parse().unwrap(),
        };
        assert!(still_serves(
            &table(CFG, &State("fe1", ServerState::Up)),
            &fe1
        ));
        assert!(still_serves(
            &table(CFG, &State("fe1", ServerState::Drained)),
            &fe1
        ));
        assert!(!still_serves(
            &table(CFG, &State("fe1", ServerState::Down)),
            &fe1
        ));
        assert!(still_serves(
            &table(CFG, &State("fe2", ServerState::Down)),
            &fe1
        ));
        // Gone from the config, or another server now at its address: closed.
        let moved = CFG.replace("127.0.0.1:5071", "127.0.0.1:5073");
        assert!(!still_serves(
            &table(&moved, &State("", ServerState::Up)),
            &fe1
        ));
        let renamed = CFG.replace("\"fe1\"", "\"fe1-new\"");
        assert!(!still_serves(
            &table(&renamed, &State("", ServerState::Up)),
            &fe1
        ));
    }
}
