//! UDP in batches: one recvmmsg or sendmmsg call moves up to [`BATCH`] datagrams, so that a
//! message costs the generator a fraction of a system call.

use std::io::IoSlice;
use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};
use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams per system call at most.
pub const BATCH: usize = 64;
/// The largest datagram read; SIP over UDP stays well below it (RFC 3261 §18.1.1).
const MAX_DATAGRAM: usize = 65_535;
/// Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max).
const BUFFER: usize = 4 << 20;

/// A UDP socket on `addr` (IPv4) with 4 MiB buffers.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    bind_shared(addr, false)
}

/// [`bind`], with `SO_REUSEPORT` when `reuse_port`: several sockets on one port, the kernel
/// spreading the datagrams that come over them.
pub fn bind_shared(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Smaller buffers than asked are no error: the kernel's limits decide.
    let _ = socket.set_recv_buffer_size(BUFFER);
    let _ = socket.set_send_buffer_size(BUFFER);
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    Ok(socket.into())
}

/// The IPv4 address of `addr`, the only family the generator speaks.
pub fn v4(addr: SocketAddr) -> Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => bail!("{addr}: only IPv4 addresses are supported"),
    }
}

/// Receive buffers and the headers recvmmsg fills, reused call after call.
pub struct Receiver {
    bufs: Vec<Box<[u8]>>,
    headers: MultiHeaders<SockaddrIn>,
    /// For each datagram of the last call: its length and its sender.
    pub got: Vec<(usize, Option<SocketAddrV4>)>,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver {
            bufs: (0..BATCH)
                .map(|_| vec![0u8; MAX_DATAGRAM].into_boxed_slice())
                .collect(),
            headers: MultiHeaders::preallocate(BATCH, None),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Reads up to BATCH datagrams: waits for the first one when `wait`, else returns 0 when
    /// none is there. Their lengths and senders are in `got`, their bytes in `datagram(i)`.
    pub fn recv(&mut self, socket: &UdpSocket, wait: bool) -> Result<usize> {
        self.got.clear();
        let flags = if wait {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            self.bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        match recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            flags,
            None,
        ) {
            Ok(results) => {
                for m in results {
                    self.got.push((m.bytes, m.address.map(SocketAddrV4::from)));
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e).context("recvmmsg"),
        }
        Ok(self.got.len())
    }

    /// The bytes of the i-th datagram of the last call.
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.got[i].0]
    }
}

/// The headers sendmmsg fills, reused call after call.
pub struct Sender {
    headers: MultiHeaders<SockaddrIn>,
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Sends each of `msgs` (at most BATCH) to its address in `to`; a datagram the kernel
    /// refuses (a full buffer: the receiver's loss to count) is dropped. Returns how many were
    /// handed to the kernel.
    pub fn send(&mut self, socket: &UdpSocket, msgs: &[Vec<u8>], to: &[SocketAddrV4]) -> usize {
        let addrs: Vec<Option<SockaddrIn>> =
            to.iter().map(|a| Some(SockaddrIn::from(*a))).collect();
        let slices: Vec<[IoSlice<'_>; 1]> = msgs.iter().map(|m| [IoSlice::new(m)]).collect();
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let mut done = 0;
        while done < msgs.len() {
            match sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                slices[done..].iter(),
                &addrs[done..],
                no_cmsgs,
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let n = results.count();
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Err(Errno::EINTR) => {}
                // The first datagram of the rest could not go: drop it, go on with the others.
                Err(_) => done += 1,
            }
        }
        done
    }
}
