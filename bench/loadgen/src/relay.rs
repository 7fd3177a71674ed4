//! The relay: a forwarder that does no SIP work at all, the floor under any proxy's CPU per
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
//!
//! Over TCP ([`start_tcp`]) it is a thread per connection on blocking sockets: one connection
//! to each backend, opened at the start, and the client's. A read is cut into whole messages
//! (RFC 3261 §18.3 framing, the only SIP it reads); the requests of one read go to the
//! backends in turn, one write per backend, and what a backend answers goes to the client in
//! one write per read. The newest client connection is the one answers go to.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::sip::take_messages;
use crate::udp::{self, Receiver, Sender, BATCH};

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
        let socket = udp::bind_shared(addr, true)?;
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

/// A TCP listener on 127.0.0.1 relaying between its client and one connection to each of
/// `backends`, opened now. Returns the listener's address; the threads run until the process
/// ends.
pub fn start_tcp(backends: Vec<SocketAddrV4>) -> Result<SocketAddr> {
    let client: Arc<Mutex<Option<TcpStream>>> = Arc::default();
    let mut to_backends = Vec::with_capacity(backends.len());
    for b in backends {
        let conn = TcpStream::connect(b).with_context(|| format!("connecting to {b}"))?;
        conn.set_nodelay(true)?;
        let reader = conn.try_clone()?;
        let client = client.clone();
        std::thread::Builder::new()
            .name("relay-backend".into())
            .spawn(move || {
                // Answers go to the newest client connection, whole messages in one write.
                pump(reader, |msgs: &[u8], _| {
                    if let Some(c) = client.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        let _ = c.write_all(msgs);
                    }
                })
            })?;
        to_backends.push(Mutex::new(conn));
    }
    let to_backends = Arc::new(to_backends);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("relay-accept".into())
        .spawn(move || {
            let next = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let Ok(writer) = conn.try_clone() else {
                    continue;
                };
                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
                let (backends, next) = (to_backends.clone(), next.clone());
                let _ = std::thread::Builder::new()
                    .name("relay-client".into())
                    .spawn(move || {
                        // Each request to the next backend in turn; one write per backend.
                        let mut per: Vec<Vec<u8>> = vec![Vec::new(); backends.len()];
                        pump(conn, |msgs: &[u8], ends: &[usize]| {
                            let mut start = 0;
                            for &end in ends {
                                let turn = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                                per[turn].extend_from_slice(&msgs[start..end]);
                                start = end;
                            }
                            for (b, buf) in backends.iter().zip(per.iter_mut()) {
                                if !buf.is_empty() {
                                    let _ =
                                        b.lock().unwrap_or_else(|e| e.into_inner()).write_all(buf);
                                    buf.clear();
                                }
                            }
                        })
                    });
            }
        })?;
    Ok(addr)
}

/// Reads `conn` until it closes, and hands each read's whole messages to `each`: their bytes
/// back to back (keep-alive CRLFs left out) and where each one ends in them.
fn pump(mut conn: TcpStream, mut each: impl FnMut(&[u8], &[usize])) {
    let mut inbuf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut msgs: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut ends: Vec<usize> = Vec::with_capacity(64);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        inbuf.extend_from_slice(&chunk[..n]);
        take_messages(&mut inbuf, |msg| {
            msgs.extend_from_slice(msg);
            ends.push(msgs.len());
        });
        if !ends.is_empty() {
            each(&msgs, &ends);
            msgs.clear();
            ends.clear();
        }
    }
}
