//! The connection registry and each connection's writer.
//!
//! Any task may send down any connection by its [`ConnId`]: the registry maps the id to a
//! bounded queue that the connection's writer task empties. A send never waits: when the queue
//! is full (a peer that does not read) the message is dropped and counted, so one slow peer can
//! never stall the reader that is relaying to it. Closing a connection is a switch both its
//! reader and its writer watch.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::config::Transport;
use crate::core::ConnId;

use super::flow::FlowEvent;

/// Messages waiting for one connection's writer, at most.
pub(super) const QUEUE: usize = 512;

/// How long one write may take before the peer is taken for gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection is.
#[derive(Debug, Clone)]
pub(super) enum Role {
    /// A client flow: accepted on a listener. Its reader hears of its backend connections'
    /// deaths through `events`.
    Client { events: mpsc::Sender<FlowEvent> },
    /// A connection siplb opened to a server (for one client flow, or shared by the UDP
    /// clients and every connection that serves no flow).
    Backend {
        server: SocketAddr,
        transport: Transport,
    },
}

/// One registered connection.
pub(super) struct Entry {
    queue: mpsc::Sender<Vec<u8>>,
    closer: watch::Sender<bool>,
    pub(super) role: Role,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendError {
    /// No such connection (any more).
    Gone,
    /// The connection's queue is full.
    Full,
}

impl Entry {
    /// A registry entry and what the connection's tasks keep: the receiving end of the queue
    /// and the close switch to watch.
    pub(super) fn new(role: Role) -> (Entry, mpsc::Receiver<Vec<u8>>, watch::Receiver<bool>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (closer, closed) = watch::channel(false);
        (
            Entry {
                queue,
                closer,
                role,
            },
            rx,
            closed,
        )
    }

    /// Queues `msg` without waiting.
    pub(super) fn send(&self, msg: Vec<u8>) -> Result<(), SendError> {
        self.queue.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    /// Closes the connection: its reader and writer stop at once.
    pub(super) fn close(&self) {
        self.closer.send_replace(true);
    }

    /// A sender onto the queue (for the connection's own reader).
    pub(super) fn queue(&self) -> mpsc::Sender<Vec<u8>> {
        self.queue.clone()
    }
}

/// Resolves when the close switch is thrown. A switch dropped unthrown (the connection left
/// the registry in an orderly way) never resolves: the writer then ends when its queue does.
pub(super) async fn closed(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|&c| c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Writes what the queue holds until every sender is gone (the queue is drained first, so a
/// last answer such as a 513 goes out before the close), the close switch is thrown, or a write
/// fails or stalls for [`WRITE_TIMEOUT`]. Then shuts the write side down.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut close: watch::Receiver<bool>,
    id: ConnId,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = closed(&mut close) => break,
            m = queue.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(conn = id, error = %e, "write failed; the connection closes");
                break;
            }
            Err(_) => {
                tracing::debug!(conn = id, "write stalled; the connection closes");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Role {
        Role::Backend {
            server: SocketAddr::from(([127, 0, 0, 1], 5071)),
            transport: Transport::Tcp,
        }
    }

    #[test]
    fn a_full_queue_drops_without_waiting_and_a_closed_one_is_gone() {
        let (entry, rx, _close) = Entry::new(backend());
        for i in 0..QUEUE {
            assert_eq!(entry.send(vec![i as u8]), Ok(()), "message {i}");
        }
        assert_eq!(entry.send(vec![0]), Err(SendError::Full));
        drop(rx);
        assert_eq!(entry.send(vec![0]), Err(SendError::Gone));
    }

    #[tokio::test]
    async fn the_writer_drains_its_queue_before_an_orderly_close_and_stops_at_once_when_closed() {
        // Orderly: every sender gone, what was queued is written, then the write side shuts.
        let (entry, rx, close) = Entry::new(backend());
        let (mut near, far) = tokio::io::duplex(1 << 16);
        entry.send(b"one".to_vec()).unwrap();
        entry.send(b"two".to_vec()).unwrap();
        drop(entry);
        write_loop(far, rx, close, 1).await;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut near, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"onetwo");

        // Closed: the writer stops even with senders left and messages queued.
        let (entry, rx, close) = Entry::new(backend());
        let (_near, far) = tokio::io::duplex(16);
        entry.close();
        entry.send(b"late".to_vec()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), write_loop(far, rx, close, 2))
            .await
            .expect("the writer stopped when closed");
    }
}
