//! The connection registry and each connection's way out.
//!
//! Any task may send down any connection by its [`ConnId`]: the registry maps the id to the
//! connection's [`Link`]. A send writes the message at once, from the sending task, when nothing
//! is waiting before it and the socket takes it (no task hop, no wake-up, no copy); otherwise it
//! appends the message to the link's backlog and the connection's writer task writes the
//! backlog out — in one write — as the socket drains. Order is kept: while a backlog exists,
//! every message joins it. A send never waits: when the backlog holds [`QUEUE`] messages (a peer
//! that does not read) the message is dropped and counted, so one slow peer can never stall the
//! reader that is relaying to it. Closing a connection is a switch both its reader and its writer
//! watch.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Transport;
use crate::core::ConnId;

use super::flow::FlowEvent;

/// Messages waiting for one connection's writer, at most.
pub(super) const QUEUE: usize = 512;

/// How long a write may wait for the peer to read before the peer is taken for gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A backlog buffer larger than this is given back once written out (a backlog is rare: it only
/// forms while a socket is full or not yet connected).
const BACKLOG_KEEP: usize = 4096;

/// The write side of a connection (TCP, or TLS over TCP).
pub(super) type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A connected stream cut into the side its reader reads and the side its link writes.
pub(super) trait Halves: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    fn halves(self) -> (Self::Read, Writer);
}

/// TCP: two halves that share the socket without a lock, so a sender on another thread never
/// waits for the reader.
impl Halves for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    fn halves(self) -> (Self::Read, Writer) {
        let (r, w) = self.into_split();
        (r, Box::pin(w))
    }
}

/// TLS: one session, read and written by turns under the halves' lock.
impl Halves for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    fn halves(self) -> (Self::Read, Writer) {
        let (r, w) = tokio::io::split(self);
        (r, Box::pin(w))
    }
}

impl Halves for tokio_rustls::client::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    fn halves(self) -> (Self::Read, Writer) {
        let (r, w) = tokio::io::split(self);
        (r, Box::pin(w))
    }
}

/// A buffer handed back for reuse: emptied, and given back to the allocator when large.
fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    if buf.capacity() > BACKLOG_KEEP {
        buf = Vec::new();
    }
    buf
}

/// What a connection is.
#[derive(Debug, Clone)]
pub(super) enum Role {
    /// A client flow: accepted on a listener. Its reader hears of its backend connections'
    /// deaths through `events`.
    Client { events: mpsc::Sender<FlowEvent> },
    /// A connection siplb opened to a server (for one client flow, or shared by the UDP
    /// clients and every connection that serves no flow).
    Backend {
        server: SocketAddr,
        transport: Transport,
    },
}

/// One registered connection. Leaving the registry (being dropped) finishes its link: the
/// writer writes what is waiting, then shuts the connection down.
pub(super) struct Entry {
    link: Arc<Link>,
    pub(super) role: Role,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendError {
    /// No such connection (any more), or its writes failed.
    Gone,
    /// The connection's backlog is full.
    Full,
}

impl Entry {
    /// A registry entry, its link (for the connection's own tasks and its writer) and the close
    /// switch to watch.
    pub(super) fn new(role: Role) -> (Entry, Arc<Link>, watch::Receiver<bool>) {
        let (closer, closed) = watch::channel(false);
        let link = Arc::new(Link {
            out: Mutex::new(Out::default()),
            wake: Notify::new(),
            closer,
        });
        (
            Entry {
                link: link.clone(),
                role,
            },
            link,
            closed,
        )
    }

    /// Sends `msg` without waiting.
    pub(super) fn send(&self, msg: &[u8]) -> Result<(), SendError> {
        self.link.send(msg)
    }

    /// Closes the connection: its reader and writer stop at once.
    pub(super) fn close(&self) {
        self.link.close();
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.link.finish();
    }
}

/// A connection's way out, shared by every task that sends down it and its writer task.
pub(super) struct Link {
    out: Mutex<Out>,
    /// Tells the writer task there is a backlog to write, or that the link is finishing.
    wake: Notify,
    closer: watch::Sender<bool>,
}

/// The state behind a link's lock.
#[derive(Default)]
struct Out {
    /// The write side, once connected (a backend connection takes messages before); taken out
    /// while a sender writes.
    w: Option<Writer>,
    /// Bytes waiting for the writer task, from `sent` on.
    backlog: Vec<u8>,
    /// A buffer the sender holding the write side copies the backlog into, kept for reuse.
    spare: Vec<u8>,
    sent: usize,
    /// Messages (or their unwritten rests) in the backlog.
    queued: usize,
    /// The writer task owns the socket: a backlog waits for it, or bytes the socket did not take
    /// yet (TLS records) need flushing. Senders append to the backlog meanwhile.
    busy: bool,
    /// The close switch was thrown: nothing more is written.
    closed: bool,
    /// A write failed or stalled: the connection is gone.
    dead: bool,
    /// The registry let go: the writer writes what waits, then shuts down.
    finishing: bool,
}

/// What one step of the writer task did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Some of the backlog was written; more may wait.
    Progress,
    /// Everything is written and flushed: the senders write for themselves again.
    Idle,
    /// Everything is written and the link is finishing (or closed): shut down.
    Done,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Out> {
        // A panic elsewhere while holding the lock leaves plain bytes and flags: keep going.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `msg` without waiting: written now when the socket takes it and nothing waits
    /// before it, else appended to the backlog for the writer task.
    ///
    /// The write itself happens outside the lock: the sender takes the write side out of the
    /// link, writes, and puts it back. A sender on another thread meanwhile only appends its
    /// message to the backlog (a copy, never a sleep on the lock), and the sender holding the
    /// write side writes that backlog too, in one write, before it puts the write side back.
    pub(super) fn send(&self, msg: &[u8]) -> Result<(), SendError> {
        let mut o = self.lock();
        if o.dead {
            return Err(SendError::Gone);
        }
        if o.closed {
            return Ok(()); // closed at once: what was still sent is not written
        }
        let mut w = match o.w.take() {
            Some(w) if !o.busy => w,
            taken => {
                // Not connected yet, the writer task owns the socket, or another sender is
                // writing: the message waits in the backlog, which they write next.
                o.w = taken;
                if o.queued >= QUEUE {
                    return Err(SendError::Full);
                }
                o.backlog.extend_from_slice(msg);
                o.queued += 1;
                return Ok(());
            }
        };
        let mut batch = std::mem::take(&mut o.spare);
        drop(o);
        let mut first = true;
        let mut wrote = write_now(&mut w, msg);
        loop {
            let mut o = self.lock();
            let len = if first { msg.len() } else { batch.len() };
            match wrote {
                Ok((n, true)) if n == len => {
                    if o.closed || o.sent == o.backlog.len() {
                        o.spare = reuse(batch);
                        o.w = Some(w);
                        let finishing = o.finishing;
                        drop(o);
                        if finishing {
                            self.wake.notify_one();
                        }
                        return Ok(());
                    }
                    // Others appended while this sender wrote: their messages go next, at once.
                    batch.clear();
                    let start = o.sent;
                    batch.extend_from_slice(&o.backlog[start..]);
                    o.backlog.clear();
                    o.sent = 0;
                    o.queued = 0;
                    drop(o);
                    first = false;
                    wrote = write_now(&mut w, &batch);
                }
                Ok((n, _)) => {
                    // The socket is full (or holds TLS records to flush): what it did not take
                    // goes before what others appended, and the writer task takes over.
                    let rest = if first { &msg[n..] } else { &batch[n..] };
                    if !rest.is_empty() {
                        let start = o.sent;
                        o.backlog.splice(start..start, rest.iter().copied());
                        o.queued += 1;
                    }
                    o.busy = true;
                    o.spare = reuse(batch);
                    o.w = Some(w);
                    drop(o);
                    self.wake.notify_one();
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write failed; the connection closes");
                    o.dead = true;
                    o.w = Some(w);
                    drop(o);
                    self.closer.send_replace(true);
                    return Err(SendError::Gone);
                }
            }
        }
    }

    /// Throws the close switch: reader and writer stop at once, nothing more is written.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.closer.send_replace(true);
    }

    /// The registry let go: the writer writes what waits, then shuts the connection down.
    fn finish(&self) {
        self.lock().finishing = true;
        self.wake.notify_one();
    }

    /// The connection's writes failed or stalled: sends are refused from now on, and the
    /// connection closes.
    fn fail(&self) {
        self.lock().dead = true;
        self.closer.send_replace(true);
    }

    /// The connection is connected: `w` writes what waits, then serves the senders.
    fn attach(&self, w: Writer) {
        let mut o = self.lock();
        o.w = Some(w);
        o.busy = true;
        drop(o);
        self.wake.notify_one();
    }

    /// One step of the writer task: writes some of the backlog, or flushes.
    fn poll_step(&self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
        let mut guard = self.lock();
        let o = &mut *guard;
        let Some(w) = o.w.as_mut() else {
            return Poll::Ready(Ok(Step::Idle));
        };
        if o.closed {
            return Poll::Ready(Ok(Step::Done));
        }
        if o.sent < o.backlog.len() {
            return match w.as_mut().poll_write(cx, &o.backlog[o.sent..]) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    o.sent += n;
                    if o.sent == o.backlog.len() {
                        o.sent = 0;
                        o.queued = 0;
                        o.backlog.clear();
                        if o.backlog.capacity() > BACKLOG_KEEP {
                            o.backlog = Vec::new();
                        }
                    }
                    Poll::Ready(Ok(Step::Progress))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        match w.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) if o.finishing => Poll::Ready(Ok(Step::Done)),
            Poll::Ready(Ok(())) => {
                o.busy = false;
                Poll::Ready(Ok(Step::Idle))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.lock().w.as_mut() {
            Some(w) => w.as_mut().poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// A waker that does nothing (`Waker::noop` is newer than siplb's minimum Rust).
static NOOP: LazyLock<Waker> = LazyLock::new(|| Waker::from(Arc::new(Noop)));

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Writes `buf` without waiting: how much the socket took, and whether it was all flushed
/// (TLS may hold records the socket did not take).
fn write_now(w: &mut Writer, buf: &[u8]) -> io::Result<(usize, bool)> {
    // The writer task is idle and owns no waker on the socket: a no-op waker is enough, since
    // whatever the socket does not take now goes to the writer task, which polls again with
    // its own.
    let mut cx = Context::from_waker(&NOOP);
    let mut at = 0;
    while at < buf.len() {
        match w.as_mut().poll_write(&mut cx, &buf[at..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => at += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok((at, false)),
        }
    }
    match w.as_mut().poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => Ok((at, true)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok((at, false)),
    }
}

/// Resolves when the close switch is thrown. A switch dropped unthrown never resolves.
pub(super) async fn closed(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|&c| c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The connection's writer task, once it is connected (`w`): writes the link's backlog as the
/// socket drains, until the registry lets go (what waits — a last answer such as a 513 — is
/// written first), the close switch is thrown, or a write fails or makes no progress for
/// [`WRITE_TIMEOUT`]. Then shuts the write side down.
pub(super) async fn write_loop(
    link: Arc<Link>,
    w: Writer,
    mut close: watch::Receiver<bool>,
    id: ConnId,
) {
    link.attach(w);
    'run: loop {
        tokio::select! {
            biased;
            _ = closed(&mut close) => break 'run,
            _ = link.wake.notified() => {}
        }
        loop {
            let step = tokio::select! {
                biased;
                _ = closed(&mut close) => break 'run,
                s = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    std::future::poll_fn(|cx| link.poll_step(cx)),
                ) => s,
            };
            match step {
                Ok(Ok(Step::Progress)) => {}
                Ok(Ok(Step::Idle)) => break,
                Ok(Ok(Step::Done)) => break 'run,
                Ok(Err(e)) => {
                    tracing::debug!(conn = id, error = %e, "write failed; the connection closes");
                    link.fail();
                    break 'run;
                }
                Err(_) => {
                    tracing::debug!(conn = id, "write stalled; the connection closes");
                    link.fail();
                    break 'run;
                }
            }
        }
    }
    let shutdown = std::future::poll_fn(|cx| link.poll_shutdown(cx));
    let _ = tokio::time::timeout(Duration::from_secs(1), shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Role {
        Role::Backend {
            server: SocketAddr::from(([127, 0, 0, 1], 5071)),
            transport: Transport::Tcp,
        }
    }

    #[test]
    fn a_full_queue_drops_without_waiting_and_a_closed_one_is_gone() {
        // Not connected yet: every message waits for the writer.
        let (entry, link, _close) = Entry::new(backend());
        for i in 0..QUEUE {
            assert_eq!(entry.send(&[i as u8]), Ok(()), "message {i}");
        }
        assert_eq!(entry.send(&[0]), Err(SendError::Full));
        link.fail();
        assert_eq!(entry.send(&[0]), Err(SendError::Gone));
    }

    #[tokio::test]
    async fn the_writer_drains_its_queue_before_an_orderly_close_and_stops_at_once_when_closed() {
        // Orderly: the registry lets go, what was queued is written, then the write side shuts.
        let (entry, link, close) = Entry::new(backend());
        let (mut near, far) = tokio::io::duplex(1 << 16);
        entry.send(b"one").unwrap();
        entry.send(b"two").unwrap();
        drop(entry);
        write_loop(link, Box::pin(far), close, 1).await;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut near, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"onetwo");

        // Closed: the writer stops even with senders left and messages queued.
        let (entry, link, close) = Entry::new(backend());
        let (_near, far) = tokio::io::duplex(16);
        entry.close();
        entry.send(b"late").unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            write_loop(link, Box::pin(far), close, 2),
        )
        .await
        .expect("the writer stopped when closed");
    }

    #[tokio::test]
    async fn a_connected_link_writes_inline_then_through_its_backlog_in_order() {
        let (entry, link, close) = Entry::new(backend());
        // A pipe that takes 8 bytes before the reader reads.
        let (mut near, far) = tokio::io::duplex(8);
        let writer = tokio::spawn(write_loop(link.clone(), Box::pin(far), close, 3));
        // Wait until the writer has flushed the (empty) backlog and handed the socket over.
        tokio::time::timeout(Duration::from_secs(5), async {
            while link.lock().w.is_none() || link.lock().busy {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the writer went idle");
        entry.send(b"abcd").unwrap();
        assert!(!link.lock().busy, "written inline: the socket took it");
        assert!(link.lock().backlog.is_empty());
        // The pipe fills: the rest waits in the backlog, and later messages queue behind it.
        entry.send(b"efghij").unwrap();
        assert!(link.lock().busy);
        entry.send(b"klm").unwrap();
        assert_eq!(link.lock().queued, 2);
        drop(entry);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut near, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"abcdefghijklm");
        writer.await.unwrap();
    }
}
