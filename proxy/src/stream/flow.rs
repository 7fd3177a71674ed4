//! A client flow: one accepted connection, read until it closes.
//!
//! The reader frames the byte stream, answers CRLFCRLF keep-alives with a CRLF (RFC 5626
//! §3.5.1), hands each message to the core and carries out its outcome. It enforces the
//! `[connections]` limits the flow started with: a message over the size limits is answered
//! (513, or 400 for a missing or unreadable Content-Length) when its header block was read, and
//! the connection closes; a started header block must complete within `header_timeout`; a flow
//! that reads nothing for `idle_timeout` closes.
//!
//! The flow owns its backend connections, one per server it sent a request to; they close
//! with it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::config::{Connections, Transport};
use crate::core::{Arrival, ConnId, DropReason, Peer, Refusal as Answer, Worker};

use super::conn::{self, Role, SendError};
use super::framer::{Frame, FrameError, Framer, Limits};
use super::stats::{ListenerStats, Refusal};
use super::Streams;

/// What a client flow's reader hears from elsewhere.
#[derive(Debug)]
pub(super) enum FlowEvent {
    /// The flow's backend connection `conn` to `server` closed.
    BackendGone {
        conn: ConnId,
        server: (SocketAddr, Transport),
    },
}

/// Events waiting for one flow, at most (backend connections it owns come and go rarely).
const EVENTS: usize = 64;

/// The backend connections a flow owns, and which servers it has sent requests to.
#[derive(Default)]
pub(super) struct FlowBackends {
    by_server: HashMap<(SocketAddr, Transport), ConnId>,
    /// Every server a request of this flow went to (bounded by the servers configured).
    used: HashSet<(SocketAddr, Transport)>,
}

impl FlowBackends {
    /// Sends `msg` to `server` over this flow's backend connection to it, opening one when
    /// there is none (or it has just died).
    pub(super) fn send(
        &mut self,
        streams: &Streams,
        server: (SocketAddr, Transport),
        server_id: &str,
        me: Peer,
        msg: &[u8],
    ) -> Result<(), SendError> {
        let conn = match self.by_server.get(&server) {
            Some(&c) if streams.is_open(c) => c,
            _ => {
                let c = streams.open_backend(server, server_id, Some(me));
                self.by_server.insert(server, c);
                c
            }
        };
        self.used.insert(server);
        streams.send(conn, msg)
    }

    /// A backend connection closed: whether the flow must close too — when every request of
    /// the flow went to that one server, so the client signs in again and is routed afresh.
    fn gone(&mut self, conn: ConnId, server: (SocketAddr, Transport)) -> bool {
        if self.by_server.get(&server) != Some(&conn) {
            return false; // an older connection, already replaced
        }
        self.by_server.remove(&server);
        self.used.len() == 1 && self.used.contains(&server)
    }

    /// Closes every backend connection of the flow.
    fn close_all(&mut self, streams: &Streams) {
        for (_, c) in self.by_server.drain() {
            streams.close(c);
        }
    }
}

/// Why a flow ended.
enum End {
    /// The client closed the connection (or it failed).
    Peer,
    /// siplb closed it: a refusal, counted and logged where it was decided.
    Refused,
    /// Its only server's backend connection closed, or siplb closed it from elsewhere.
    Closed,
}

impl Streams {
    /// Serves one accepted client connection until it closes. `listener` counts it; the
    /// connection's slot in the `[connections]` limits is released by the caller.
    pub(super) async fn serve_client<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        transport: Transport,
        listener: Arc<ListenerStats>,
        limits: Arc<Connections>,
    ) where
        S: conn::Halves,
    {
        let (events_tx, mut events) = tokio::sync::mpsc::channel(EVENTS);
        let (id, link, mut close) = self.register(Role::Client { events: events_tx });
        listener.opened(1);
        self.inner.stats.flow(1);
        tracing::debug!(conn = id, %peer, listener = %listener.label, "client flow opened");
        let (mut reader, writer) = stream.halves();
        let mut writing = tokio::spawn(conn::write_loop(link.clone(), writer, close.clone(), id));

        let me = Peer {
            conn: id,
            addr: peer,
            transport,
        };
        let arrival = Arrival {
            src: peer,
            transport,
            conn: Some(id),
            client: None,
        };
        let mut framer = Framer::new(Limits {
            max_header: limits.max_header_bytes,
            max_body: limits.max_body_bytes,
        });
        // Buffers grow with the first message: an idle connection holds none of its own.
        let mut worker = Worker::default();
        let mut backends = FlowBackends::default();
        let mut last_read = Instant::now();
        let mut head_by: Option<Instant> = None;
        let mut rested = false;

        // One timer for the rest, header and idle deadlines. A read moves them later without
        // touching the timer (that would cost a timer-wheel update per message): the timer
        // fires at the earlier deadline, finds it moved, and is set again. Only a deadline
        // earlier than the timer's (a header block just started, a rest to come) sets it.
        let wake_at = |last_read: Instant, rested: bool, head_by: Option<Instant>| {
            let rest_by = (!rested).then_some(last_read + super::REST_AFTER);
            [head_by, rest_by]
                .into_iter()
                .flatten()
                .fold(last_read + limits.idle_timeout, Instant::min)
        };
        let timer = tokio::time::sleep_until(wake_at(last_read, rested, head_by));
        tokio::pin!(timer);

        let end = loop {
            tokio::select! {
                read = reader.read(framer.spare()) => {
                    let n = match read {
                        Ok(0) | Err(_) => break End::Peer,
                        Ok(n) => n,
                    };
                    framer.filled(n);
                    last_read = Instant::now();
                    rested = false;
                    let mut refused = None;
                    loop {
                        match framer.next() {
                            Ok(None) => break,
                            Ok(Some(Frame::Ping)) => {
                                // RFC 5626 §3.5.1: a CRLFCRLF ping gets a CRLF pong.
                                let _ = link.send(b"\r\n");
                            }
                            Ok(Some(Frame::Message(m))) => {
                                let table = self.inner.tables.load();
                                let outcome = worker.handle_from(&table, m, &arrival);
                                self.deliver(outcome, &worker.out, &arrival, &table,
                                    Some((&mut backends, me)));
                            }
                            Err(e) => {
                                refused = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = refused {
                        self.refuse_message(&framer, e, &arrival, &mut worker, &link, &listener);
                        break End::Refused;
                    }
                    head_by = if framer.awaiting_head() {
                        head_by.or(Some(last_read + limits.header_timeout))
                    } else {
                        None
                    };
                    let wake = wake_at(last_read, rested, head_by);
                    if wake < timer.deadline() {
                        timer.as_mut().reset(wake);
                    }
                }
                Some(ev) = events.recv() => match ev {
                    FlowEvent::BackendGone { conn, server } => {
                        if backends.gone(conn, server) {
                            tracing::debug!(conn = id, server = %server.0,
                                "the flow's only server's connection closed; the flow closes");
                            break End::Closed;
                        }
                    }
                },
                _ = conn::closed(&mut close) => break End::Closed,
                _ = &mut writing => break End::Peer,
                _ = &mut timer => {
                    let now = Instant::now();
                    let idle_by = last_read + limits.idle_timeout;
                    if !rested && last_read + super::REST_AFTER <= now {
                        // Quiet for a while: give the buffers back until the next bytes.
                        rested = true;
                        if framer.rest() {
                            worker = Worker::default();
                        }
                    }
                    if head_by.is_some_and(|h| h <= now) {
                        listener.refused(Refusal::HeaderTimeout);
                        tracing::info!(conn = id, %peer, listener = %listener.label,
                            timeout = ?limits.header_timeout,
                            "header block not complete within header_timeout; connection closed");
                        break End::Refused;
                    }
                    if idle_by <= now {
                        listener.refused(Refusal::Idle);
                        tracing::debug!(conn = id, %peer, listener = %listener.label,
                            timeout = ?limits.idle_timeout, "idle connection closed");
                        break End::Refused;
                    }
                    timer.as_mut().reset(wake_at(last_read, rested, head_by));
                }
            }
        };

        backends.close_all(self);
        // Leaving the registry finishes the link: the writer sends what is queued (a last
        // answer) and shuts the connection down. A flow closed from elsewhere stops writing at
        // once.
        self.unregister(id);
        drop(link);
        if matches!(end, End::Closed) {
            writing.abort();
        }
        listener.opened(-1);
        self.inner.stats.flow(-1);
        tracing::debug!(conn = id, %peer, "client flow closed");
    }

    /// Answers a message the framer refused, when its header block was read: 513 for a message
    /// over the size limits, 400 for a missing or unreadable Content-Length. Counts and logs
    /// the refusal; the caller closes the connection.
    fn refuse_message(
        &self,
        framer: &Framer,
        e: FrameError,
        arrival: &Arrival,
        worker: &mut Worker,
        link: &conn::Link,
        listener: &ListenerStats,
    ) {
        let (why, answer) = match e {
            FrameError::HeaderTooLarge | FrameError::BodyTooLarge(_) => {
                (Refusal::TooLarge, Answer::TooLarge)
            }
            FrameError::MissingContentLength | FrameError::BadContentLength => (
                Refusal::BadContentLength,
                Answer::BadHeader("Content-Length"),
            ),
        };
        listener.refused(why);
        tracing::info!(conn = ?arrival.conn, peer = %arrival.src, listener = %listener.label,
            reason = why.as_str(), error = %e, "message refused; connection closed");
        let Some(head) = framer.refused_head() else {
            return;
        };
        let table = self.inner.tables.load();
        let outcome = worker.refuse(&table, head, arrival, answer);
        match outcome.action {
            crate::core::Action::Reply(_) => {
                if link.send(&worker.out).is_ok() {
                    if let Some(c) = outcome.count {
                        table.counters.count(c);
                    }
                }
            }
            crate::core::Action::Drop(reason) => self.inner.stats.dropped(reason),
            _ => self.inner.stats.dropped(DropReason::Malformed),
        }
    }

    /// Tells client flow `flow` that its backend connection `conn` to `server` closed.
    pub(super) fn backend_gone(&self, flow: ConnId, conn: ConnId, server: (SocketAddr, Transport)) {
        if let Some(e) = self.inner.conns.get(&flow) {
            if let Role::Client { events } = &e.role {
                let _ = events.try_send(FlowEvent::BackendGone { conn, server });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(port: u16) -> (SocketAddr, Transport) {
        (SocketAddr::from(([127, 0, 0, 1], port)), Transport::Tcp)
    }

    /// A flow's backends after sending to `servers` over connections 10, 11, ….
    fn used(servers: &[(SocketAddr, Transport)]) -> FlowBackends {
        let mut b = FlowBackends::default();
        for (i, &s) in servers.iter().enumerate() {
            b.by_server.insert(s, 10 + i as ConnId);
            b.used.insert(s);
        }
        b
    }

    #[test]
    fn a_flow_that_used_one_server_closes_with_its_connection() {
        let mut b = used(&[server(5071)]);
        assert!(b.gone(10, server(5071)));
    }

    #[test]
    fn a_trunk_flow_forgets_the_dead_connection_and_stays() {
        let mut b = used(&[server(5071), server(5072)]);
        assert!(!b.gone(11, server(5072)));
        assert!(!b.by_server.contains_key(&server(5072)));
        assert_eq!(b.by_server.get(&server(5071)), Some(&10));
    }

    #[test]
    fn the_death_of_a_replaced_connection_changes_nothing() {
        let mut b = used(&[server(5071)]);
        b.by_server.insert(server(5071), 42); // reopened since
        assert!(!b.gone(10, server(5071)));
        assert_eq!(b.by_server.get(&server(5071)), Some(&42));
    }

    #[test]
    fn the_same_address_over_another_transport_is_another_server() {
        let tls = (server(5071).0, Transport::Tls);
        let mut b = used(&[server(5071), tls]);
        assert!(
            !b.gone(10, server(5071)),
            "the flow also used the TLS server"
        );
    }
}
