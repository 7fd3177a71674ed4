//! The server peer: [`StreamBackend`] accepts TCP or TLS connections, numbers them, records
//! every message with its connection, answers like a registrar and sends requests of its own
//! down a chosen connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{
    expects_answer, lock, ok_to, runtime, wait_until, write_all, Listen, Piece, Stream,
    StreamMessage, Unframer, Writer,
};
use crate::backend::is_probe;
use crate::request::{unique, Request};
use crate::sip::{show, Msg};

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

    /// The latest REGISTER of `aor` (its To) received, with its connection; panics when none
    /// came within `within`.
    pub fn register_of(&self, aor: &str, within: Duration) -> StreamMessage {
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
        let latest = log.received.iter().rev().find(|m| of_aor(m));
        latest.cloned().expect("a REGISTER seen a moment ago")
    }

    /// The connection on which the latest REGISTER of `aor` arrived; panics when none came
    /// within `within`.
    pub fn conn_of_register(&self, aor: &str, within: Duration) -> u64 {
        self.register_of(aor, within).conn
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
