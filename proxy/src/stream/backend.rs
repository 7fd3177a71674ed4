//! Backend connections: siplb's connections to TCP and TLS servers.
//!
//! A backend connection is registered (and can take messages) the moment it is asked for; a
//! task of its own connects — within `handshake_timeout`, TLS included — and then writes what
//! was queued meanwhile, so whoever asked never waits for a connect. What the server sends on it
//! goes through the core as an arrival on that connection, serving the client flow it belongs
//! to (or none: the connection UDP clients share). When it closes, for whatever reason, its
//! client flow hears of it.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::Transport;
use crate::core::{Arrival, ConnId, Peer, Worker};

use super::conn::{self, Role};
use super::framer::{Frame, Framer, Limits};
use super::Streams;

impl Streams {
    /// Registers a backend connection to `server` (`server_id` picks its TLS settings) serving
    /// client flow `flow` (`None`: shared by UDP clients) and starts connecting it.
    pub(super) fn open_backend(
        &self,
        server: (SocketAddr, Transport),
        server_id: &str,
        flow: Option<Peer>,
    ) -> ConnId {
        let (addr, transport) = server;
        let (id, link, close) = self.register(Role::Backend {
            server: addr,
            transport,
        });
        self.inner.stats.backend(transport, 1);
        let streams = self.clone();
        let server_id = server_id.to_string();
        tokio::spawn(async move {
            let timeout = streams.inner.limits.load().handshake_timeout;
            let connected =
                tokio::time::timeout(timeout, streams.connect(addr, transport, &server_id)).await;
            match connected {
                Ok(Ok(Connected::Tcp(s))) => {
                    streams.run_backend(s, id, server, flow, link, close).await
                }
                Ok(Ok(Connected::Tls(s))) => {
                    streams.run_backend(*s, id, server, flow, link, close).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(conn = id, server = %addr, error = %e, "cannot connect to server")
                }
                Err(_) => {
                    tracing::debug!(conn = id, server = %addr, "connect to server timed out")
                }
            }
            streams.unregister(id);
            streams.inner.stats.backend(transport, -1);
            if let Some(f) = flow {
                streams.backend_gone(f.conn, id, server);
            }
            streams
                .inner
                .shared_backends
                .remove_if(&server, |_, c| *c == id);
        });
        id
    }

    /// Sends `msg` to `server` over the backend connection shared by everything that serves
    /// no client flow, opening it when there is none.
    pub(super) fn send_shared(
        &self,
        server: (SocketAddr, Transport),
        server_id: &str,
        msg: &[u8],
    ) -> Result<(), conn::SendError> {
        let id = *self
            .inner
            .shared_backends
            .entry(server)
            .and_modify(|c| {
                if !self.is_open(*c) {
                    *c = self.open_backend(server, server_id, None);
                }
            })
            .or_insert_with(|| self.open_backend(server, server_id, None));
        self.send(id, msg)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        transport: Transport,
        server_id: &str,
    ) -> anyhow::Result<Connected> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        match transport {
            Transport::Tls => {
                let s = self.tls_connect(tcp, server_id).await?;
                Ok(Connected::Tls(Box::new(s)))
            }
            _ => Ok(Connected::Tcp(tcp)),
        }
    }

    /// Reads what the server sends until the connection closes; the writer task beside writes
    /// what the senders could not write at once.
    async fn run_backend<S>(
        &self,
        stream: S,
        id: ConnId,
        server: (SocketAddr, Transport),
        flow: Option<Peer>,
        link: std::sync::Arc<conn::Link>,
        mut close: tokio::sync::watch::Receiver<bool>,
    ) where
        S: conn::Halves,
    {
        let (addr, transport) = server;
        tracing::debug!(conn = id, server = %addr, flow = ?flow.map(|f| f.conn), "backend connection open");
        let (mut reader, writer) = stream.halves();
        let mut writing = tokio::spawn(conn::write_loop(link.clone(), writer, close.clone(), id));
        let limits = self.inner.limits.load_full();
        let mut framer = Framer::new(Limits {
            max_header: limits.max_header_bytes,
            max_body: limits.max_body_bytes,
        });
        // Buffers grow with the first message: an idle connection holds none of its own.
        let mut worker = Worker::default();
        let arrival = Arrival {
            src: addr,
            transport,
            conn: Some(id),
            client: flow,
        };
        // When to rest, unless it has rested since its last read. Reads move it later without
        // touching the timer (a timer-wheel update per message): the timer fires at the old
        // time, finds it moved, and is set again.
        let mut rest_by = Some(tokio::time::Instant::now() + super::REST_AFTER);
        let timer = tokio::time::sleep_until(tokio::time::Instant::now() + super::REST_AFTER);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                read = reader.read(framer.spare()) => {
                    let n = match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    framer.filled(n);
                    if rest_by.is_none() {
                        timer.as_mut().reset(tokio::time::Instant::now() + super::REST_AFTER);
                    }
                    rest_by = Some(tokio::time::Instant::now() + super::REST_AFTER);
                    loop {
                        match framer.next() {
                            Ok(None) => break,
                            Ok(Some(Frame::Ping)) => {
                                let _ = link.send(b"\r\n");
                            }
                            Ok(Some(Frame::Message(m))) => {
                                let table = self.inner.tables.load();
                                let outcome = worker.handle_from(&table, m, &arrival);
                                self.deliver(outcome, &worker.out, &arrival, &table, None);
                            }
                            Err(e) => {
                                tracing::debug!(conn = id, server = %addr, error = %e,
                                    "server sent what cannot be framed; backend connection closed");
                                writing.abort();
                                return;
                            }
                        }
                    }
                }
                _ = conn::closed(&mut close) => break,
                _ = &mut writing => break,
                _ = &mut timer, if rest_by.is_some() => {
                    match rest_by {
                        Some(r) if r > tokio::time::Instant::now() => timer.as_mut().reset(r),
                        _ => {
                            // Quiet for a while: give the buffers back until the next bytes.
                            rest_by = None;
                            if framer.rest() {
                                worker = Worker::default();
                            }
                        }
                    }
                }
            }
        }
        writing.abort();
        tracing::debug!(conn = id, server = %addr, "backend connection closed");
    }
}

/// A connected backend stream.
enum Connected {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}
