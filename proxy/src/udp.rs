//! The UDP shell: sockets in, [`Worker::handle`] in the middle, sockets out.
//!
//! Each listen address gets one socket per worker, all bound with `SO_REUSEPORT` so the kernel
//! spreads datagrams over them by flow; each socket has its own task and its own [`Worker`]
//! buffers. A message is routed against whatever table is current when it arrives.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::core::{Action, Worker};
use crate::table::RoutingTable;

/// Kernel buffer size asked for each socket; bursts of REGISTERs after a failover are absorbed
/// here rather than dropped. The kernel caps it at `net.core.rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest datagram siplb reads (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

fn bind_one(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Buffer sizes are a wish, not a requirement: keep going with what the kernel grants.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds `workers` sockets to `addr` (port 0 picks one port for all of them). Returns the
/// sockets and the address actually bound.
pub fn bind(
    addr: SocketAddr,
    workers: usize,
) -> io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(bind_one(bound)?);
    }
    Ok((sockets, bound))
}

/// Serves one socket until the task is dropped.
pub async fn serve(socket: UdpSocket, tables: Arc<ArcSwap<RoutingTable>>) {
    let mut worker = Worker::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let table = tables.load();
        match worker.handle(&table, &buf[..n], src) {
            Action::Forward(to) | Action::Reply(to) => {
                if let Err(e) = socket.send_to(&worker.out, to).await {
                    metrics::counter!("siplb_send_errors_total").increment(1);
                    tracing::debug!(error = %e, %to, "udp send failed");
                }
            }
            Action::Drop(reason) => {
                metrics::counter!("siplb_drops_total", "reason" => reason.as_str()).increment(1);
                tracing::debug!(reason = reason.as_str(), %src, len = n, "dropped");
            }
        }
    }
}
