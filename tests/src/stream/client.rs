//! The user agent peer: [`StreamClient`] holds one TCP or TLS connection to siplb, sends
//! requests and raw bytes, collects responses, answers what siplb sends down and sees the
//! connection close.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::{
    expects_answer, lock, ok_to, runtime, wait_until, write_all, Dial, Piece, Stream, Unframer,
    Writer, ANSWER_WITHIN, CONNECT_WITHIN,
};
use crate::request::Request;
use crate::sip::{show, Msg};

/// Whether a message is a final response to `req`.
fn final_to(req: &Request) -> impl Fn(&Msg) -> bool {
    let (call_id, method) = (req.call_id(), req.method().to_string());
    move |m| {
        m.status().is_some_and(|s| s >= 200)
            && m.call_id() == Some(call_id.as_str())
            && m.cseq_method() == Some(method.as_str())
    }
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
        self.wait_for(ANSWER_WITHIN, final_to(req))
    }

    /// The final response to `req` (already sent), or `None` as soon as siplb closes the
    /// connection (its server could not be reached: the client must reconnect) or after
    /// [`ANSWER_WITHIN`].
    pub fn final_or_closed(&self, req: &Request) -> Option<Msg> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        let is_final = final_to(req);
        while Instant::now() < deadline && !self.is_closed() {
            let got = self.wait_for(Duration::from_millis(50), &is_final);
            if got.is_some() {
                return got;
            }
        }
        None
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
