//! Backends: SIP servers that answer every request (REGISTERs, and the proxies' OPTIONS
//! probes) with a 200 OK at once, over UDP (a thread per socket, recvmmsg/sendmmsg batches),
//! TCP and TLS (a thread per connection: the proxies open a few). Each 200 carries the
//! backend's receive and send times, for the client's latency split.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::now_ns;
use crate::sip::{take_messages, write_ok, Request};
use crate::udp::{Receiver, Sender};

/// Requests answered, over all backends.
#[derive(Default)]
pub struct Counts {
    pub registers: AtomicU64,
    pub others: AtomicU64,
    /// Messages that were not a request this backend could answer (see `write_ok`).
    pub unanswered: AtomicU64,
}

impl Counts {
    /// Counts a message left unanswered; the first few are shown on stderr.
    fn unanswered(&self, tag: &str, msg: &[u8]) {
        if self.unanswered.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!(
                "backend {tag}: left unanswered (not a request with Via, Call-ID and CSeq): {:?}",
                String::from_utf8_lossy(&msg[..msg.len().min(300)])
            );
        }
    }

    fn count(&self, r: Request) {
        match r {
            Request::Register => self.registers.fetch_add(1, Ordering::Relaxed),
            Request::Other => self.others.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Answers on `socket` until the process ends. `tag` is the To tag of its answers.
pub fn serve_udp(socket: UdpSocket, tag: String, counts: Arc<Counts>) {
    let mut rx = Receiver::new();
    let mut tx = Sender::new();
    let mut out: Vec<Vec<u8>> = (0..crate::udp::BATCH)
        .map(|_| Vec::with_capacity(1024))
        .collect();
    let mut to: Vec<SocketAddrV4> = Vec::with_capacity(crate::udp::BATCH);
    loop {
        let n = match rx.recv(&socket, true) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("backend {tag}: {e:#}");
                return;
            }
        };
        let received = now_ns();
        let mut k = 0;
        to.clear();
        for i in 0..n {
            let Some(from) = rx.got[i].1 else { continue };
            out[k].clear();
            match write_ok(&mut out[k], rx.datagram(i), &tag, received, now_ns()) {
                Some(r) => {
                    counts.count(r);
                    to.push(from);
                    k += 1;
                }
                None => counts.unanswered(&tag, rx.datagram(i)),
            }
        }
        tx.send(&socket, &out[..k], &to);
    }
}

/// Accepts connections on `listener` until the process ends, each served by a thread of its
/// own, over TLS with `tls`.
pub fn serve_listener(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    tag: String,
    counts: Arc<Counts>,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (tls, tag, counts) = (tls.clone(), tag.clone(), counts.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve_stream(stream, tls, &tag, &counts) {
                eprintln!("backend {tag}: connection ended: {e}");
            }
        });
    }
}

/// One connection: reads requests, writes their answers, until the peer closes it.
fn serve_stream(
    mut sock: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    tag: &str,
    counts: &Counts,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut tls = match tls {
        Some(config) => {
            let mut conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
            conn.set_buffer_limit(None);
            Some(conn)
        }
        None => None,
    };
    let mut inbuf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match tls.as_mut() {
            Some(conn) => {
                if conn.read_tls(&mut sock)? == 0 {
                    return Ok(());
                }
                conn.process_new_packets().map_err(std::io::Error::other)?;
                loop {
                    match conn.reader().read(&mut chunk) {
                        Ok(0) => return Ok(()),
                        Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let n = sock.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                inbuf.extend_from_slice(&chunk[..n]);
            }
        }
        let received = now_ns();
        take_messages(&mut inbuf, |msg| {
            match write_ok(&mut out, msg, tag, received, now_ns()) {
                Some(r) => counts.count(r),
                None => counts.unanswered(tag, msg),
            }
        });
        match tls.as_mut() {
            Some(conn) => {
                if !out.is_empty() {
                    conn.writer().write_all(&out)?;
                }
                while conn.wants_write() {
                    conn.write_tls(&mut sock)?;
                }
            }
            None => sock.write_all(&out)?,
        }
        out.clear();
    }
}
