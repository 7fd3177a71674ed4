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

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::backend::is_probe;
use crate::request::{unique, Request};
use crate::sip::{self, show, Msg};

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

/// One connection a [`StreamBackend`] accepted.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Numbered from 1 in the order of acceptance (kept across restarts).
    pub id: u64,
    /// The other end (siplb's side of the connection).
    pub peer: SocketAddr,
    pub opened: Instant,
    /// When the connection closed, either side.
    pub closed: Option<Instant>,
    /// CRLFCRLF pings received.
    pub pings: usize,
    /// TLS: the server name the client asked for (SNI).
    pub sni: Option<String>,
    /// TLS: the certificates the client presented (DER), empty without mutual TLS.
    pub client_certs: Vec<Vec<u8>>,
}

/// A 200 OK to `req` as a server writes it: every Via line as received, From, To (with a tag
/// added when it has none), Call-ID, CSeq; a REGISTER also gets its Contact and Expires back.
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
    if req.method() == Some("REGISTER") {
        req.header_lines("contact").for_each(&mut line);
        req.header_lines("expires").for_each(&mut line);
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

#[derive(Default)]
struct BackendLog {
    received: Vec<StreamMessage>,
    sent: Vec<StreamMessage>,
    conns: Vec<ConnInfo>,
    writers: HashMap<u64, Writer>,
    tasks: HashMap<u64, JoinHandle<()>>,
}

impl BackendLog {
    fn conn_mut(&mut self, id: u64) -> Option<&mut ConnInfo> {
        self.conns.iter_mut().find(|c| c.id == id)
    }
}

struct BackendShared {
    log: Mutex<BackendLog>,
    changed: Condvar,
    mute: AtomicBool,
    silent: AtomicBool,
}

impl BackendShared {
    fn log(&self) -> MutexGuard<'_, BackendLog> {
        lock(&self.log)
    }
}

/// A SIP server on TCP or TLS, answering from the shared runtime until dropped or killed.
pub struct StreamBackend {
    id: String,
    addr: SocketAddr,
    listen: Listen,
    shared: Arc<BackendShared>,
    accept: Option<JoinHandle<()>>,
}

impl StreamBackend {
    /// Listens on `127.0.0.1:0`; `id` names it in messages and in its own requests.
    pub fn start(id: &str, listen: Listen) -> StreamBackend {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        StreamBackend::start_on(id, listen, any).expect("bind a stream backend")
    }

    /// Like [`StreamBackend::start`], listening on `addr`.
    pub fn start_on(id: &str, listen: Listen, addr: SocketAddr) -> io::Result<StreamBackend> {
        let mut backend = StreamBackend {
            id: id.to_string(),
            addr,
            listen,
            shared: Arc::new(BackendShared {
                log: Mutex::new(BackendLog::default()),
                changed: Condvar::new(),
                mute: AtomicBool::new(false),
                silent: AtomicBool::new(false),
            }),
            accept: None,
        };
        backend.listen_on(addr)?;
        Ok(backend)
    }

    fn listen_on(&mut self, addr: SocketAddr) -> io::Result<()> {
        let listener = runtime().block_on(TcpListener::bind(addr))?;
        self.addr = listener.local_addr()?;
        let (shared, listen) = (Arc::clone(&self.shared), self.listen.clone());
        self.accept = Some(runtime().spawn(accept_loop(listener, listen, shared)));
        Ok(())
    }

    /// The name given at start.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `TCP` or `TLS`, as a Via writes it.
    pub fn transport(&self) -> &'static str {
        match self.listen {
            Listen::Tcp => "TCP",
            Listen::Tls(_) => "TLS",
        }
    }

    /// Stops accepting and closes every connection; once this returns the port is closed.
    /// What was recorded is kept.
    pub fn kill(&mut self) {
        let mut tasks: Vec<JoinHandle<()>> = self.accept.take().into_iter().collect();
        tasks.extend(self.shared.log().tasks.drain().map(|(_, t)| t));
        runtime().block_on(async {
            for t in tasks {
                t.abort();
                let _ = t.await;
            }
        });
        let mut log = self.shared.log();
        log.writers.clear();
        let now = Instant::now();
        for c in log.conns.iter_mut().filter(|c| c.closed.is_none()) {
            c.closed = Some(now);
        }
        drop(log);
        self.shared.changed.notify_all();
    }

    /// Listens on the same address again after [`StreamBackend::kill`]; panics if the port
    /// was taken meanwhile.
    pub fn restart(&mut self) {
        assert!(self.accept.is_none(), "backend {} is running", self.id);
        let addr = self.addr;
        self.listen_on(addr)
            .unwrap_or_else(|e| panic!("backend {} cannot listen on {addr} again: {e}", self.id));
    }

    /// Closes one connection (the others stay up).
    pub fn close(&self, conn: u64) {
        let task = self.shared.log().tasks.remove(&conn);
        if let Some(t) = task {
            runtime().block_on(async {
                t.abort();
                let _ = t.await;
            });
        }
        let mut log = self.shared.log();
        log.writers.remove(&conn);
        if let Some(c) = log.conn_mut(conn) {
            c.closed.get_or_insert_with(Instant::now);
        }
        drop(log);
        self.shared.changed.notify_all();
    }

    /// A mute backend records every request but answers none, except siplb's OPTIONS probes
    /// (so it stays up) and pings: the test answers with [`StreamBackend::send`].
    pub fn set_mute(&self, mute: bool) {
        self.shared.mute.store(mute, Ordering::Relaxed);
    }

    /// A silent backend answers nothing at all, probes and pings included: a hung server.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::Relaxed);
    }

    /// Every connection accepted so far, in order, open or closed.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.shared.log().conns.clone()
    }

    /// The connections open now.
    pub fn open_connections(&self) -> Vec<ConnInfo> {
        let log = self.shared.log();
        log.conns
            .iter()
            .filter(|c| c.closed.is_none())
            .cloned()
            .collect()
    }

    /// Waits until `n` connections were accepted in all (or `within` passed); returns them all.
    pub fn wait_connections(&self, n: usize, within: Duration) -> Vec<ConnInfo> {
        wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.conns.len() >= n
        })
        .conns
        .clone()
    }

    /// Waits until connection `conn` is closed; false if it is still open after `within`.
    pub fn wait_closed(&self, conn: u64, within: Duration) -> bool {
        let closed =
            |log: &mut BackendLog| log.conns.iter().any(|c| c.id == conn && c.closed.is_some());
        let mut log = wait_until(&self.shared.log, &self.shared.changed, within, closed);
        closed(&mut log)
    }

    /// Every message received, probes and responses included, in arrival order.
    pub fn received(&self) -> Vec<StreamMessage> {
        self.shared.log().received.clone()
    }

    /// Every message received on connection `conn`.
    pub fn received_on(&self, conn: u64) -> Vec<StreamMessage> {
        let log = self.shared.log();
        log.received
            .iter()
            .filter(|m| m.conn == conn)
            .cloned()
            .collect()
    }

    /// Every request received except siplb's health probes.
    pub fn requests(&self) -> Vec<StreamMessage> {
        let log = self.shared.log();
        log.received
            .iter()
            .filter(|m| is_request(&m.bytes) && !is_probe(&m.bytes))
            .cloned()
            .collect()
    }

    /// siplb's OPTIONS probes received (a single Via: siplb's own).
    pub fn probes(&self) -> Vec<StreamMessage> {
        let log = self.shared.log();
        log.received
            .iter()
            .filter(|m| is_probe(&m.bytes))
            .cloned()
            .collect()
    }

    /// Every message this backend sent (its answers, pongs excluded, and its own requests).
    pub fn sent(&self) -> Vec<StreamMessage> {
        self.shared.log().sent.clone()
    }

    /// The first message received that matches `pred`, waiting up to `within`.
    pub fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&StreamMessage) -> bool,
    ) -> Option<StreamMessage> {
        let log = wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.received.iter().any(&pred)
        });
        log.received.iter().find(|m| pred(m)).cloned()
    }

    /// The first request received with `call_id`; panics after `within`.
    pub fn wait_request(&self, call_id: &str, within: Duration) -> StreamMessage {
        self.wait_for(within, |m| {
            is_request(&m.bytes)
                && Msg::parse(&m.bytes).is_some_and(|p| p.call_id() == Some(call_id))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} received no request of {call_id} within {within:?}",
                self.id
            )
        })
    }

    /// The connection on which a REGISTER of `aor` (its To) arrived, the latest one; panics
    /// after `within`.
    pub fn conn_of_register(&self, aor: &str, within: Duration) -> u64 {
        let of_aor = |m: &StreamMessage| {
            Msg::parse(&m.bytes).is_some_and(|p| {
                p.method() == Some("REGISTER") && p.to_aor().as_deref() == Some(aor)
            })
        };
        self.wait_for(within, of_aor).unwrap_or_else(|| {
            panic!(
                "{} received no REGISTER of {aor} within {within:?}",
                self.id
            )
        });
        let log = self.shared.log();
        log.received
            .iter()
            .rev()
            .find(|m| of_aor(m))
            .map(|m| m.conn)
            .expect("a REGISTER seen a moment ago")
    }

    /// A request of this server's own to `to_aor` (request-URI `sip:to_aor`): this backend's
    /// Via (its transport and address), From the server, a fresh Call-ID, a Contact naming this
    /// backend, `Event: presence` for NOTIFY, BENOTIFY and SUBSCRIBE.
    pub fn request(&self, method: &str, to_aor: &str) -> Request {
        let mut req = Request::new(
            method,
            &format!("sip:{to_aor}"),
            &format!("{}@backend.invalid", self.id),
            to_aor,
        )
        .set(
            "Via",
            &format!(
                "SIP/2.0/{} {};branch={}",
                self.transport(),
                self.addr,
                unique("z9hG4bK")
            ),
        )
        .with(
            "Contact",
            &format!(
                "<sip:{}@{};transport={}>",
                self.id,
                self.addr,
                self.transport().to_ascii_lowercase()
            ),
        );
        if matches!(method, "NOTIFY" | "BENOTIFY" | "SUBSCRIBE") {
            req = req
                .with("Event", "presence")
                .with("Subscription-State", "active;expires=3600");
        }
        req
    }

    /// Sends raw bytes down connection `conn`, recorded as sent when they parse as a message.
    pub fn send(&self, conn: u64, bytes: &[u8]) -> io::Result<()> {
        let (writer, peer) = {
            let log = self.shared.log();
            let writer = log.writers.get(&conn).cloned().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("no open connection {conn}"),
                )
            })?;
            let peer = log
                .conns
                .iter()
                .find(|c| c.id == conn)
                .map(|c| c.peer)
                .expect("an open connection is listed");
            (writer, peer)
        };
        if Msg::parse(bytes).is_some() {
            self.shared.log().sent.push(StreamMessage {
                conn,
                peer,
                bytes: bytes.to_vec(),
                at: Instant::now(),
            });
        }
        runtime().block_on(write_all(&writer, bytes))
    }

    /// Sends `req` down `conn` and waits for its final response there (by Call-ID and CSeq
    /// method); `None` if none came within `within`. Panics if the connection is gone.
    pub fn transact(&self, conn: u64, req: &Request, within: Duration) -> Option<Msg> {
        let bytes = req.bytes();
        let seen = self.shared.log().received.len();
        self.send(conn, &bytes)
            .unwrap_or_else(|e| panic!("send down connection {conn}: {e}\n{}", show(&bytes)));
        let (call_id, method) = (req.call_id(), req.method().to_string());
        let answers = |m: &StreamMessage| {
            m.conn == conn
                && Msg::parse(&m.bytes).is_some_and(|p| {
                    p.status().is_some_and(|s| s >= 200)
                        && p.call_id() == Some(call_id.as_str())
                        && p.cseq_method() == Some(method.as_str())
                })
        };
        let log = wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.received[seen..].iter().any(answers)
        });
        log.received[seen..]
            .iter()
            .find(|m| answers(m))
            .map(|m| m.msg())
    }

    /// CRLFCRLF pings received on every connection.
    pub fn pings(&self) -> usize {
        self.shared.log().conns.iter().map(|c| c.pings).sum()
    }
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
        }
        for (_, t) in self.shared.log().tasks.drain() {
            t.abort();
        }
    }
}

fn is_request(bytes: &[u8]) -> bool {
    Msg::parse(bytes).is_some_and(|m| !m.is_response())
}

async fn accept_loop(listener: TcpListener, listen: Listen, shared: Arc<BackendShared>) {
    let acceptor = match &listen {
        Listen::Tcp => None,
        Listen::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(Arc::clone(config))),
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, or a connection reset before it was accepted: back off.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared2 = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        // The handshake runs in the connection's task, so a slow client holds up no other.
        let mut log = shared.log();
        let id = log.conns.len() as u64 + 1;
        log.conns.push(ConnInfo {
            id,
            peer,
            opened: Instant::now(),
            closed: None,
            pings: 0,
            sni: None,
            client_certs: Vec::new(),
        });
        let task = runtime().spawn(async move {
            let stream = match acceptor {
                None => Stream(Box::new(tcp)),
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let (_, session) = tls.get_ref();
                        let sni = session.server_name().map(str::to_string);
                        let certs = session
                            .peer_certificates()
                            .map(|c| c.iter().map(|d| d.to_vec()).collect())
                            .unwrap_or_default();
                        if let Some(c) = shared2.log().conn_mut(id) {
                            c.sni = sni;
                            c.client_certs = certs;
                        }
                        Stream(Box::new(tls))
                    }
                    Err(_) => {
                        closed(&shared2, id);
                        return;
                    }
                },
            };
            serve_conn(stream, id, peer, &shared2).await;
        });
        log.tasks.insert(id, task);
        drop(log);
        shared.changed.notify_all();
    }
}

fn closed(shared: &BackendShared, id: u64) {
    let mut log = shared.log();
    log.writers.remove(&id);
    log.tasks.remove(&id);
    if let Some(c) = log.conn_mut(id) {
        c.closed.get_or_insert_with(Instant::now);
    }
    drop(log);
    shared.changed.notify_all();
}

async fn serve_conn(stream: Stream, id: u64, peer: SocketAddr, shared: &BackendShared) {
    let (mut reader, writer) = tokio::io::split(stream);
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(writer));
    shared.log().writers.insert(id, Arc::clone(&writer));
    let mut unframer = Unframer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut crlfs = 0;
    'read: loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        unframer.push(&buf[..n]);
        while let Some(piece) = unframer.next() {
            let silent = shared.silent.load(Ordering::Relaxed);
            let answer = match piece {
                Piece::Crlf => {
                    crlfs += 1;
                    if crlfs < 2 {
                        continue;
                    }
                    // RFC 5626 §3.5.1: a CRLFCRLF ping gets a CRLF pong.
                    crlfs = 0;
                    if let Some(c) = shared.log().conn_mut(id) {
                        c.pings += 1;
                    }
                    shared.changed.notify_all();
                    (!silent).then(|| b"\r\n".to_vec())
                }
                Piece::Message(bytes) => {
                    crlfs = 0;
                    let answer = answer(&bytes, silent, shared.mute.load(Ordering::Relaxed));
                    let now = Instant::now();
                    let mut log = shared.log();
                    log.received.push(StreamMessage {
                        conn: id,
                        peer,
                        bytes,
                        at: now,
                    });
                    if let Some(a) = &answer {
                        // Recorded before it leaves, so a test that saw it also sees the record.
                        log.sent.push(StreamMessage {
                            conn: id,
                            peer,
                            bytes: a.clone(),
                            at: now,
                        });
                    }
                    drop(log);
                    shared.changed.notify_all();
                    answer
                }
            };
            if let Some(a) = answer {
                if write_all(&writer, &a).await.is_err() {
                    break 'read;
                }
            }
        }
    }
    closed(shared, id);
}

/// What a backend answers to a message it received.
fn answer(bytes: &[u8], silent: bool, mute: bool) -> Option<Vec<u8>> {
    let msg = Msg::parse(bytes)?;
    if silent || msg.is_response() || !expects_answer(&msg) || (mute && !is_probe(bytes)) {
        return None;
    }
    Some(ok_to(&msg))
}

#[derive(Default)]
struct ClientLog {
    /// Responses not asked for yet.
    inbox: Vec<Msg>,
    /// Requests siplb sent down, in order.
    requests: Vec<Msg>,
    /// What the client answered to them.
    answers: Vec<Vec<u8>>,
    pongs: usize,
    /// Why the connection ended, once it did.
    closed: Option<String>,
}

struct ClientShared {
    log: Mutex<ClientLog>,
    changed: Condvar,
    mute: AtomicBool,
}

/// A user agent with one TCP or TLS connection to siplb.
pub struct StreamClient {
    local: SocketAddr,
    peer: SocketAddr,
    tls: bool,
    shared: Arc<ClientShared>,
    writer: Writer,
    reader: JoinHandle<()>,
}

impl StreamClient {
    /// Connects to `to`; panics if the connection or the TLS handshake fails.
    pub fn connect(to: SocketAddr, dial: Dial) -> StreamClient {
        StreamClient::try_connect(to, None, dial).unwrap_or_else(|e| panic!("connect to {to}: {e}"))
    }

    /// Connects to `to` from `from` (a loopback address such as `127.0.0.5`, bound before
    /// connecting) or from the default address; the error of the connect or the handshake.
    pub fn try_connect(
        to: SocketAddr,
        from: Option<IpAddr>,
        dial: Dial,
    ) -> io::Result<StreamClient> {
        let tls = matches!(dial, Dial::Tls { .. });
        let (stream, local) = runtime().block_on(async {
            tokio::time::timeout(CONNECT_WITHIN, open(to, from, dial))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        })?;
        let (reader, writer) = tokio::io::split(stream);
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(writer));
        let shared = Arc::new(ClientShared {
            log: Mutex::new(ClientLog::default()),
            changed: Condvar::new(),
            mute: AtomicBool::new(false),
        });
        let task = runtime().spawn(client_reader(
            reader,
            Arc::clone(&writer),
            Arc::clone(&shared),
        ));
        Ok(StreamClient {
            local,
            peer: to,
            tls,
            shared,
            writer,
            reader: task,
        })
    }

    /// This end of the connection (the source siplb sees).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// `TCP` or `TLS`, as a Via writes it.
    pub fn transport(&self) -> &'static str {
        if self.tls {
            "TLS"
        } else {
            "TCP"
        }
    }

    /// `req` with its top Via's transport set to this connection's (`SIP/2.0/TCP` or `TLS`).
    pub fn prepare(&self, req: Request) -> Request {
        let Some(via) = req.get("via") else {
            return req;
        };
        let rest = via.split_once(' ').map_or("", |(_, rest)| rest);
        let via = format!("SIP/2.0/{} {rest}", self.transport());
        req.set("Via", &via)
    }

    /// A `method` request of `aor` to itself (From and To `aor`, request-URI `sip:aor`),
    /// prepared for this connection (not sent); SUBSCRIBE gets `Event: presence` and a Contact.
    pub fn request(&self, method: &str, aor: &str) -> Request {
        let mut req = Request::new(method, &format!("sip:{aor}"), aor, aor);
        if method == "SUBSCRIBE" {
            req = req.with("Event", "presence").with(
                "Contact",
                &format!("<sip:{}>", crate::request::CLIENT_SENT_BY),
            );
        }
        self.prepare(req)
    }

    /// A REGISTER of `aor` prepared for this connection (not sent).
    pub fn register_request(&self, aor: &str) -> Request {
        self.prepare(Request::register(aor))
    }

    /// Sends raw bytes (CRLF pings, a header block byte by byte, garbage); the write's error
    /// when the connection is gone.
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        runtime().block_on(write_all(&self.writer, bytes))
    }

    /// Sends `req` as written; returns the exact bytes. Panics if the write fails.
    pub fn send(&self, req: &Request) -> Vec<u8> {
        let bytes = req.bytes();
        self.send_raw(&bytes)
            .unwrap_or_else(|e| panic!("send on {}: {e}\n{}", self.local, show(&bytes)));
        bytes
    }

    /// Sends `req` and returns its final response; panics if none comes within
    /// [`ANSWER_WITHIN`].
    pub fn transact(&self, req: &Request) -> Msg {
        let bytes = self.send(req);
        self.final_response(req).unwrap_or_else(|| {
            panic!(
                "no final response within {ANSWER_WITHIN:?} to\n{}",
                show(&bytes)
            )
        })
    }

    /// Registers `aor` (a REGISTER prepared for this connection) and returns the final response.
    pub fn register(&self, aor: &str) -> Msg {
        self.transact(&self.register_request(aor))
    }

    /// The final response to `req` (already sent), skipping provisional ones.
    pub fn final_response(&self, req: &Request) -> Option<Msg> {
        let (call_id, method) = (req.call_id(), req.method().to_string());
        self.wait_for(ANSWER_WITHIN, |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.call_id() == Some(call_id.as_str())
                && m.cseq_method() == Some(method.as_str())
        })
    }

    /// Takes the first response matching `pred`, waiting up to `within`.
    pub fn wait_for(&self, within: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let mut log = wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.inbox.iter().any(&pred)
        });
        let at = log.inbox.iter().position(&pred)?;
        Some(log.inbox.remove(at))
    }

    /// Every request siplb sent down this connection so far, in order.
    pub fn requests(&self) -> Vec<Msg> {
        lock(&self.shared.log).requests.clone()
    }

    /// The first request siplb sent down that matches `pred`, waiting up to `within`.
    pub fn wait_request(&self, within: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let log = wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.requests.iter().any(&pred)
        });
        log.requests.iter().find(|m| pred(m)).cloned()
    }

    /// What this client answered to the requests siplb sent down, in order.
    pub fn answers(&self) -> Vec<Vec<u8>> {
        lock(&self.shared.log).answers.clone()
    }

    /// A mute client records the requests siplb sends down but answers none.
    pub fn set_mute(&self, mute: bool) {
        self.shared.mute.store(mute, Ordering::Relaxed);
    }

    /// CRLF pongs received so far.
    pub fn pongs(&self) -> usize {
        lock(&self.shared.log).pongs
    }

    /// Waits until `n` pongs in all were received; false if fewer came within `within`.
    pub fn wait_pongs(&self, n: usize, within: Duration) -> bool {
        wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.pongs >= n
        })
        .pongs
            >= n
    }

    /// Whether the other side closed the connection (or it broke).
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.log).closed.is_some()
    }

    /// Waits until the other side closes the connection; its reason (`eof`, or the read
    /// error), or `None` if it is still open after `within`.
    pub fn wait_closed(&self, within: Duration) -> Option<String> {
        wait_until(&self.shared.log, &self.shared.changed, within, |log| {
            log.closed.is_some()
        })
        .closed
        .clone()
    }

    /// Ends our side of the connection as a client does (TLS close_notify, then FIN); keeps
    /// reading what the other side still sends.
    pub fn shutdown(&self) -> io::Result<()> {
        runtime().block_on(async { self.writer.lock().await.shutdown().await })
    }
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connects (from `from` when given) and runs the TLS handshake when asked; the stream and
/// its local address.
async fn open(
    to: SocketAddr,
    from: Option<IpAddr>,
    dial: Dial,
) -> io::Result<(Stream, SocketAddr)> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp: TcpStream = socket.connect(to).await?;
    tcp.set_nodelay(true)?;
    let local = tcp.local_addr()?;
    let stream = match dial {
        Dial::Tcp => Stream(Box::new(tcp)),
        Dial::Tls {
            config,
            server_name,
        } => {
            let name = ServerName::try_from(server_name.clone()).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{server_name}: {e}"))
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Stream(Box::new(tls))
        }
    };
    Ok((stream, local))
}

async fn client_reader(mut reader: ReadHalf<Stream>, writer: Writer, shared: Arc<ClientShared>) {
    let mut unframer = Unframer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let why = loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break "eof".to_string(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        unframer.push(&buf[..n]);
        while let Some(piece) = unframer.next() {
            let answer = {
                let mut log = lock(&shared.log);
                match piece {
                    Piece::Crlf => {
                        log.pongs += 1;
                        None
                    }
                    Piece::Message(bytes) => {
                        let msg = Msg::parse(&bytes).unwrap_or_else(|| Msg {
                            raw: bytes,
                            start: String::new(),
                            headers: Vec::new(),
                            body: Vec::new(),
                        });
                        if msg.is_response() || msg.start.is_empty() {
                            log.inbox.push(msg);
                            None
                        } else {
                            let answer = (expects_answer(&msg)
                                && !shared.mute.load(Ordering::Relaxed))
                            .then(|| ok_to(&msg));
                            log.requests.push(msg);
                            if let Some(a) = &answer {
                                log.answers.push(a.clone());
                            }
                            answer
                        }
                    }
                }
            };
            shared.changed.notify_all();
            if let Some(a) = answer {
                // A failed write shows up as the read's end.
                let _ = write_all(&writer, &a).await;
            }
        }
    };
    lock(&shared.log).closed = Some(why);
    shared.changed.notify_all();
}

#[cfg(test)]
mod tests;
