//! SIP peers over TCP and TLS: a server ([`StreamBackend`]) and a user agent ([`StreamClient`]).
//!
//! Both frame the byte stream themselves (a header block, then exactly Content-Length body
//! bytes; CRLFs between messages are keep-alives), with code of their own, so the tests cannot
//! share the proxy's framing bugs. They run on one small tokio runtime shared by every peer of
//! the test process; their methods are blocking and must be called from a plain test thread,
//! not from inside a tokio runtime.
//!
//! [`StreamBackend`] stands where a Front End would: it gives every accepted connection an id,
//! records each message with its connection and peer address, answers requests `200 OK`
//! (siplb's OPTIONS probes included, so it stays up) and a CRLFCRLF ping with a CRLF pong. A
//! test can send a request of the server's own (NOTIFY, BENOTIFY...) down the connection a
//! user's REGISTER came in on, kill the server (every connection closed, the port closed) and
//! restart it on the same port, or make it mute or silent.
//!
//! [`StreamClient`] stands where a Lync client or a gateway would: one connection, optionally
//! from a chosen loopback address; it sends requests and raw bytes, collects responses, answers
//! the requests siplb sends down (except BENOTIFY and ACK), counts pongs and tells whether the
//! other side closed the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::runtime::Runtime;

use crate::request::unique;
use crate::sip::{self, Msg};

mod backend;
mod client;

pub use backend::{ConnInfo, StreamBackend};
pub use client::StreamClient;

/// How long a test waits for an answer that must come.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How long a test listens to show that nothing comes.
pub const QUIET_FOR: Duration = Duration::from_millis(400);

/// How long a TCP connect and TLS handshake may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// How long one write may wait for the other side to read: a peer that stops reading must not
/// hang a test.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// The runtime every stream peer of this process runs on.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stream-peer")
            .enable_all()
            .build()
            .expect("the stream peers' runtime")
    })
}

/// How a [`StreamBackend`] accepts connections.
#[derive(Clone)]
pub enum Listen {
    /// Plain TCP.
    Tcp,
    /// TLS with this server config (see [`crate::tls::Pki::server_config`]).
    Tls(Arc<ServerConfig>),
}

/// How a [`StreamClient`] connects.
#[derive(Clone)]
pub enum Dial {
    /// Plain TCP.
    Tcp,
    /// TLS with this client config, checking the server's certificate for `server_name`
    /// (a DNS name, or an IP address such as `127.0.0.1`).
    Tls {
        config: Arc<ClientConfig>,
        server_name: String,
    },
}

impl Dial {
    /// TLS to `127.0.0.1` with `config` (see [`crate::tls::Pki::client_config`]).
    pub fn tls(config: Arc<ClientConfig>) -> Dial {
        Dial::Tls {
            config,
            server_name: "127.0.0.1".to_string(),
        }
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed stream, so TCP and TLS connections are handled by the same code.
struct Stream(Box<dyn Io>);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// The write side of a connection, shared by its reader (answers, pongs) and the test.
type Writer = Arc<tokio::sync::Mutex<WriteHalf<Stream>>>;

/// Writes `bytes` and flushes them (TLS records leave only on flush); `TimedOut` when the
/// other side has not taken them within [`WRITE_WITHIN`].
async fn write_all(writer: &Writer, bytes: &[u8]) -> io::Result<()> {
    let write = async {
        let mut w = writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    };
    tokio::time::timeout(WRITE_WITHIN, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the other side stopped reading"))?
}

/// What the byte stream carried next.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// A CRLF outside any message: half a ping, or a pong.
    Crlf,
    /// One whole message: header block and Content-Length bytes of body.
    Message(Vec<u8>),
}

/// Cuts a byte stream into messages and CRLFs (the harness's own framing, independent of
/// siplb's). A message without Content-Length is taken to have no body.
#[derive(Default)]
struct Unframer {
    buf: Vec<u8>,
}

impl Unframer {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next piece, or `None` until more bytes arrive.
    fn next(&mut self) -> Option<Piece> {
        if self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
            return Some(Piece::Crlf);
        }
        if self.buf.as_slice() == b"\r" {
            return None;
        }
        let head = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let body = Msg::parse(&self.buf[..head])
            .and_then(|m| m.header("content-length")?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if self.buf.len() < head + body {
            return None;
        }
        Some(Piece::Message(self.buf.drain(..head + body).collect()))
    }
}

/// One message as a stream peer saw it.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// The connection it came on (a [`StreamBackend`]'s connection id; 0 on a client).
    pub conn: u64,
    /// The other end of that connection.
    pub peer: SocketAddr,
    /// The message exactly as framed.
    pub bytes: Vec<u8>,
    /// When it was received.
    pub at: Instant,
}

impl StreamMessage {
    /// The message parsed, or a panic showing its bytes.
    pub fn msg(&self) -> Msg {
        Msg::must_parse(&self.bytes)
    }
}

/// A 200 OK to `req` as a server writes it: every Via line as received, From, To (with a tag
/// added when it has none), Call-ID, CSeq. A REGISTER also gets its Contact, Expires and Path
/// back (RFC 3327 §5.3); a dialog-forming request (INVITE, SUBSCRIBE, REFER) its Record-Route
/// (RFC 3261 §12.1.1).
pub fn ok_to(req: &Msg) -> Vec<u8> {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    let mut line = |h: &sip::Header| {
        out.push_str(&h.raw);
        out.push_str("\r\n");
    };
    req.header_lines("via").for_each(&mut line);
    for name in ["from", "to", "call-id", "cseq"] {
        let Some(h) = req.header_lines(name).next() else {
            continue;
        };
        if name == "to" && sip::param(&h.value, "tag").is_none() {
            let mut tagged = h.clone();
            tagged.raw.push_str(&format!(";tag={}", unique("sb")));
            line(&tagged);
        } else {
            line(h);
        }
    }
    let echoed: &[&str] = match req.method() {
        Some("REGISTER") => &["contact", "expires", "path"],
        Some("INVITE" | "SUBSCRIBE" | "REFER") => &["record-route"],
        _ => &[],
    };
    for name in echoed {
        req.header_lines(name).for_each(&mut line);
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Whether a stream peer answers this request on its own: never ACK or BENOTIFY (a NOTIFY
/// that expects no response).
fn expects_answer(req: &Msg) -> bool {
    !matches!(req.method(), None | Some("ACK") | Some("BENOTIFY"))
}

/// Locks a log; a panic elsewhere must not hide what was recorded.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `changed` until `done` holds for the guarded value or `within` passed; returns
/// the guard to read the result from.
fn wait_until<'a, T>(
    m: &'a Mutex<T>,
    changed: &Condvar,
    within: Duration,
    mut done: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    let deadline = Instant::now() + within;
    let mut guard = lock(m);
    loop {
        let now = Instant::now();
        if done(&mut guard) || now >= deadline {
            return guard;
        }
        guard = changed
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests;
