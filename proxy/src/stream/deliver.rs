//! Carrying out the core's outcome for a message that arrived on a connection (or, from the
//! UDP shell, for a datagram whose outcome names a connection).
//!
//! A send onto a connection writes the message at once or queues it (see [`super::conn`]); what
//! the outcome counts is counted once it is sent or queued. A connection that is gone drops the message as
//! `flow_gone`, a full queue drops it in `siplb_connection_queue_full_total`.

use crate::core::{Action, Arrival, ConnId, DropReason, Outcome, Peer};
use crate::table::RoutingTable;

use super::conn::{Link, Role, SendError};
use super::flow::FlowBackends;
use super::Streams;

impl Streams {
    /// Carries out `outcome` (the bytes are `out`) for a message that arrived as `arrival`.
    /// `flow` is the client flow the message arrived on, with its backend connections, when it
    /// arrived on one.
    pub(super) fn deliver(
        &self,
        outcome: Outcome,
        out: &[u8],
        arrival: &Arrival,
        table: &RoutingTable,
        flow: Option<(&mut FlowBackends, Peer)>,
    ) {
        if let Some((server, failure)) = outcome.passive {
            self.inner.control.passive(server, failure);
        }
        let sent = match outcome.action {
            Action::Forward(to) => self.send_datagram(out, to),
            Action::Reply(to) => match arrival.conn {
                Some(c) => self.queued(self.send(c, out)),
                None => self.send_datagram(out, to),
            },
            Action::ToServer {
                addr,
                transport,
                pool,
                server,
            } => match flow {
                Some((backends, me)) => {
                    let id = &table.server(pool, server).id;
                    self.queued(backends.send(self, (addr, transport), id, me, out))
                }
                None => self.deliver_datagram(outcome.action, out, table),
            },
            Action::ToConn(_) => self.deliver_datagram(outcome.action, out, table),
            Action::Drop(reason) => {
                self.inner.stats.dropped(reason);
                tracing::debug!(reason = reason.as_str(), peer = %arrival.src, "dropped");
                false
            }
        };
        if sent {
            if let Some(c) = outcome.count {
                table.counters.count(c);
            }
        }
    }

    /// Queues an outcome that names a TCP or TLS server (over the shared backend connection,
    /// the one UDP clients and messages of no flow use) or a connection: for the UDP shell's
    /// datagrams, and for [`Self::deliver`] when there is no flow. Whether it was queued; a
    /// message not queued is counted here.
    pub(crate) fn deliver_datagram(
        &self,
        action: Action,
        out: &[u8],
        table: &RoutingTable,
    ) -> bool {
        match action {
            Action::ToServer {
                addr,
                transport,
                pool,
                server,
            } => {
                let id = &table.server(pool, server).id;
                self.queued(self.send_shared((addr, transport), id, out))
            }
            Action::ToConn(c) => self.queued(self.send(c, out)),
            _ => false,
        }
    }

    /// Sends a datagram from the UDP shell's sockets; whether the kernel took it.
    fn send_datagram(&self, out: &[u8], to: std::net::SocketAddr) -> bool {
        match self.inner.udp.send_to(out, to) {
            Ok(_) => true,
            Err(e) => {
                self.inner.stats.send_errors.increment(1);
                tracing::debug!(error = %e, %to, "udp send failed");
                false
            }
        }
    }

    /// Counts a message that could not be queued; whether it was.
    fn queued(&self, result: Result<(), SendError>) -> bool {
        match result {
            Ok(()) => true,
            Err(SendError::Gone) => {
                self.inner.stats.dropped(DropReason::FlowGone);
                tracing::debug!("connection gone; message dropped");
                false
            }
            Err(SendError::Full) => {
                self.inner.stats.queue_full.increment(1);
                tracing::debug!("connection queue full; message dropped");
                false
            }
        }
    }

    /// Sends `msg` down connection `id`, without waiting.
    pub(super) fn send(&self, id: ConnId, msg: &[u8]) -> Result<(), SendError> {
        match self.inner.conns.get(&id) {
            Some(e) => e.send(msg),
            None => Err(SendError::Gone),
        }
    }

    /// Whether connection `id` is registered.
    pub(super) fn is_open(&self, id: ConnId) -> bool {
        self.inner.conns.contains_key(&id)
    }

    /// Closes connection `id`, if it is open.
    pub(super) fn close(&self, id: ConnId) {
        if let Some(e) = self.inner.conns.get(&id) {
            e.close();
        }
    }

    /// Registers a connection: its id, its link (for its own tasks and its writer) and its
    /// close switch.
    pub(super) fn register(
        &self,
        role: Role,
    ) -> (
        ConnId,
        std::sync::Arc<Link>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        let id = self.next_id();
        let (entry, link, close) = super::conn::Entry::new(role);
        self.inner.conns.insert(id, entry);
        (id, link, close)
    }

    /// Takes connection `id` out of the registry.
    pub(super) fn unregister(&self, id: ConnId) {
        self.inner.conns.remove(&id);
    }
}
