//! The relay: a UDP forwarder that does no SIP work at all, the floor under any proxy's CPU per
//! message on these sockets.
//!
//! It is built as siplb's UDP shell is (`proxy/src/udp/serve.rs`): `threads` threads, each
//! blocking in `recvmmsg` (`MSG_WAITFORONE`) on a socket of its own, the sockets sharing one
//! port with `SO_REUSEPORT`, and each batch leaving in `sendmmsg`. What it forwards, it
//! forwards unchanged: a datagram from one of the backends goes to the client, any other to
//! the next backend in turn. It adds no Via, so a backend answers the relay (the generator's
//! backends answer the source address) and the relay passes the answer on to the one client
//! it serves: the address the last request came from. What siplb and Kamailio spend per pair
//! beyond the relay's is what their SIP work and their own design cost; what the relay spends
//! is the kernel's moving of four datagrams and waking of threads, which every proxy pays.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::udp::{Receiver, Sender, BATCH};

/// `threads` sockets on one port of 127.0.0.1 (`SO_REUSEPORT`), served each by a thread that
/// relays between the client and `backends`. Returns the port's address once every thread
/// runs; the threads run until the process ends.
pub fn start(backends: Vec<SocketAddrV4>, threads: usize) -> Result<SocketAddr> {
    let shared = Arc::new(Shared {
        backends,
        client: AtomicU64::new(0),
        next: AtomicUsize::new(0),
    });
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    for _ in 0..threads.max(1) {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        // Smaller buffers than asked are no error: the kernel's limits decide.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding UDP {addr}"))?;
        let socket: UdpSocket = socket.into();
        addr = socket.local_addr()?;
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || shared.serve(&socket))?;
    }
    Ok(addr)
}

/// What the threads share: the backends, the client's address (IPv4 and port packed in a
/// u64; 0 before the first request) and the turn of the next backend.
struct Shared {
    backends: Vec<SocketAddrV4>,
    client: AtomicU64,
    next: AtomicUsize,
}

impl Shared {
    fn serve(&self, socket: &UdpSocket) {
        let mut rx = Receiver::new();
        let mut tx = Sender::new();
        let mut out: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
        let mut to: Vec<SocketAddrV4> = Vec::with_capacity(BATCH);
        loop {
            let n = match rx.recv(socket, true) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("relay: {e:#}");
                    return;
                }
            };
            to.clear();
            for i in 0..n {
                let Some(from) = rx.got[i].1 else { continue };
                let dest = if self.backends.contains(&from) {
                    match unpack(self.client.load(Ordering::Relaxed)) {
                        Some(client) => client,
                        None => continue,
                    }
                } else {
                    self.client.store(pack(from), Ordering::Relaxed);
                    let turn = self.next.fetch_add(1, Ordering::Relaxed);
                    self.backends[turn % self.backends.len()]
                };
                let k = to.len();
                out[k].clear();
                out[k].extend_from_slice(rx.datagram(i));
                to.push(dest);
            }
            tx.send(socket, &out[..to.len()], &to);
        }
    }
}

fn pack(a: SocketAddrV4) -> u64 {
    (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> Option<SocketAddrV4> {
    (v != 0).then(|| SocketAddrV4::new(((v >> 16) as u32).into(), v as u16))
}
