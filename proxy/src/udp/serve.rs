//! The threads that serve UDP sockets.
//!
//! Each thread (named `siplb-udp`) owns a [`Worker`], an [`Outbox`] and buffers for a batch of
//! datagrams, and loops: `recvmmsg` with `MSG_WAITFORONE` sleeps until a datagram comes and
//! then takes whatever else is already waiting, up to [`BATCH`]; each datagram is routed
//! against the table current when it is handled, and what the batch produced leaves in one
//! `sendmmsg`. A quiet socket costs one wake-up per [`RECEIVE_TIMEOUT`], when the thread
//! looks whether it should stop and reads the error queue. Stopping ([`Served`] dropped) sets
//! a flag and shuts the sockets for reading, which wakes every thread at once.
//!
//! The threads run inside the proxy's tokio runtime context (not on its workers), so that a
//! datagram for a TCP or TLS server can open a backend connection (a task).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

use super::{
    deliver, icmp, send_one, socket_addr, Outbox, Queued, Sender, Senders, ShellCounters,
    MAX_DATAGRAM,
};
use crate::core::{Action, Worker};
use crate::health::Control;
use crate::stream::Streams;
use crate::table::RoutingTable;

#[cfg(doc)]
use super::RECEIVE_TIMEOUT;

/// The most datagrams one `recvmmsg` takes (and one `sendmmsg` sends). Under load a thread
/// that wakes finds several waiting; above a few dozen, a batch only delays the first
/// datagram's answer behind the others' routing.
const BATCH: usize = 32;

/// The threads serving one listen address; dropping it stops them and waits for them to end
/// (a batch in hand is finished first).
pub(crate) struct Served {
    stop: Arc<AtomicBool>,
    sockets: Vec<Arc<UdpSocket>>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for s in &self.sockets {
            // On an unconnected UDP socket Linux answers ENOTCONN but still marks it shut for
            // reading and wakes every receiver, which then returns at once; a thread that
            // misses it stops within RECEIVE_TIMEOUT.
            let _ = socket2::SockRef::from(&**s).shutdown(Shutdown::Read);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves each of `sockets` with `threads_each` threads until the returned [`Served`] is
/// dropped. Must be called inside a tokio runtime (the threads enter its context).
pub(crate) fn serve(
    sockets: Vec<Arc<UdpSocket>>,
    threads_each: usize,
    tables: &Arc<ArcSwap<RoutingTable>>,
    control: &Control,
    senders: &Senders,
    streams: &Streams,
) -> io::Result<Served> {
    let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let mut served = Served {
        stop: Arc::new(AtomicBool::new(false)),
        sockets: Vec::with_capacity(sockets.len()),
        threads: Vec::new(),
    };
    for socket in sockets {
        let v6 = socket.local_addr()?.is_ipv6();
        for _ in 0..threads_each.max(1) {
            let thread = Thread {
                socket: socket.clone(),
                v6,
                stop: served.stop.clone(),
                tables: tables.clone(),
                control: control.clone(),
                senders: senders.clone(),
                streams: streams.clone(),
            };
            let runtime = runtime.clone();
            // A failure here drops `served`, which stops the threads already started.
            let handle = std::thread::Builder::new()
                .name("siplb-udp".into())
                .spawn(move || {
                    let _context = runtime.enter();
                    thread.run();
                })?;
            served.threads.push(handle);
        }
        served.sockets.push(socket);
    }
    Ok(served)
}

/// What one serving thread works with.
struct Thread {
    socket: Arc<UdpSocket>,
    v6: bool,
    stop: Arc<AtomicBool>,
    tables: Arc<ArcSwap<RoutingTable>>,
    control: Control,
    senders: Senders,
    streams: Streams,
}

impl Thread {
    fn run(self) {
        let mut worker = Worker::new();
        let counters = ShellCounters::new();
        let mut outbox = Outbox::default();
        let mut sender = SocketSender {
            socket: &self.socket,
            v6: self.v6,
            senders: &self.senders,
            control: &self.control,
            headers: MultiHeaders::preallocate(BATCH, None),
            addrs: Vec::with_capacity(BATCH),
        };
        // Zeroed by the allocator (fresh pages): only what datagrams fill becomes resident.
        let mut bufs = vec![0u8; BATCH * MAX_DATAGRAM];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut got = Vec::with_capacity(BATCH);
        let mut table = self.tables.load_full();
        loop {
            let received = receive(&*self.socket, &mut headers, &mut bufs, &mut got);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if let Err(e) = received {
                match e.kind() {
                    // Nothing came for RECEIVE_TIMEOUT: let an old table go.
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                        table = self.tables.load_full();
                    }
                    _ if icmp::is_icmp_error(&e) => {}
                    _ => {
                        tracing::debug!(error = %e, "udp receive failed");
                        // Whatever it is, do not spin on it.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                // An ICMP error fails the receive it wakes; quiet moments read the queue too
                // (a send from a connection's task may have consumed an error's wake-up).
                icmp::drain(&*self.socket, &self.control);
                continue;
            }
            for (i, &(len, src)) in got.iter().enumerate() {
                let Some(src) = src else { continue };
                let buf = &bufs[i * MAX_DATAGRAM..][..len];
                let current = self.tables.load();
                if !Arc::ptr_eq(&current, &table) {
                    // What was routed on the previous table is sent and counted on it.
                    outbox.flush(&mut sender, &table, &counters);
                    table = Guard::into_inner(current);
                }
                let outcome = worker.handle(&table, buf, src);
                if let Action::Drop(reason) = outcome.action {
                    tracing::debug!(reason = reason.as_str(), %src, len, "dropped");
                }
                deliver(
                    outcome,
                    &worker.out,
                    &table,
                    &mut outbox,
                    &counters,
                    Some(&self.streams),
                    |server, failure| self.control.passive(server, failure),
                );
            }
            outbox.flush(&mut sender, &table, &counters);
        }
    }
}

/// One `recvmmsg`: waits for a datagram (up to the socket's receive timeout), then takes those
/// already waiting, up to [`BATCH`]. Datagram `i` lands at `bufs[i * MAX_DATAGRAM..]`; `got`
/// gets each one's length and source.
fn receive(
    socket: &impl AsRawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [u8],
    got: &mut Vec<(usize, Option<SocketAddr>)>,
) -> io::Result<()> {
    got.clear();
    let mut chunks = bufs.chunks_exact_mut(MAX_DATAGRAM);
    let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    // The kernel writes each source's length back into `headers`; a socket's sources are all
    // of its one family, so the length it finds there on the next call is always enough.
    let received = recvmmsg(
        socket.as_raw_fd(),
        headers,
        iovs.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )?;
    got.extend(received.map(|m| (m.bytes, m.address.as_ref().and_then(socket_addr))));
    Ok(())
}

/// A serving thread's socket (with `sendmmsg`), the sockets of the other family, and the
/// health supervisor to tell of ICMP errors.
struct SocketSender<'a> {
    socket: &'a UdpSocket,
    v6: bool,
    senders: &'a Senders,
    control: &'a Control,
    headers: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl SocketSender<'_> {
    /// One `sendmmsg` of `datagrams` (at most [`BATCH`]) from this thread's socket.
    fn send_many(&mut self, datagrams: &[Queued], wait: bool) -> io::Result<usize> {
        if let [one] = datagrams {
            return send_one(self.socket, &one.buf, one.to, wait).map(|_| 1);
        }
        let flags = if wait {
            MsgFlags::empty()
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        self.addrs.clear();
        self.addrs
            .extend(datagrams.iter().map(|d| Some(SockaddrStorage::from(d.to))));
        let iovs: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|i| [IoSlice::new(datagrams.get(i).map_or(&[][..], |d| &d.buf))]);
        let sent = sendmmsg(
            self.socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter().take(datagrams.len()),
            &self.addrs,
            [],
            flags,
        )?;
        Ok(sent.count())
    }
}

impl Sender for SocketSender<'_> {
    fn send(&mut self, datagrams: &[Queued], wait: bool) -> io::Result<usize> {
        let Some(first) = datagrams.first() else {
            return Ok(0);
        };
        if first.to.is_ipv6() != self.v6 {
            // Across families, from a socket of the destination's family; with none (a client
            // of a family siplb does not listen on), the send fails and is counted.
            let Some(other) = self.senders.of(first.to) else {
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "no UDP listener of the destination's address family",
                ));
            };
            return match send_one(&*other, &first.buf, first.to, wait) {
                Err(e) if icmp::is_icmp_error(&e) => {
                    icmp::drain(&*other, self.control);
                    send_one(&*other, &first.buf, first.to, wait)
                }
                sent => sent,
            }
            .map(|_| 1);
        }
        let run = datagrams
            .iter()
            .take(BATCH)
            .take_while(|d| d.to.is_ipv6() == self.v6)
            .count();
        let same = &datagrams[..run];
        match self.send_many(same, wait) {
            // A pending ICMP error from an earlier forward (to some other server) is reported
            // by whatever syscall comes next — here, this send, which the kernel then refuses.
            // The error is consumed by that: note who it was about, and send again.
            Err(e) if icmp::is_icmp_error(&e) => {
                icmp::drain(self.socket, self.control);
                self.send_many(same, wait)
            }
            // Stopped short: the datagram after the last one sent was refused, maybe by such an
            // error, which the kernel then does not report; read the queue.
            Ok(n) if n < run => {
                icmp::drain(self.socket, self.control);
                Ok(n)
            }
            sent => sent,
        }
    }
}
