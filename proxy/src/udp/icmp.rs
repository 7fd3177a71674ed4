//! ICMP errors on siplb's UDP sockets (Linux `IP_RECVERR` / `IPV6_RECVERR` and the error
//! queue).
//!
//! When a forward draws an ICMP error (a server's port is closed, its host unreachable), the
//! kernel queues the error on the socket and fails whichever syscall comes next on it — a
//! blocked receive wakes up with `ECONNREFUSED`, a send is refused — whichever datagram drew
//! it. The shell then reads the queue ([`drain`]): each entry names the destination of the
//! forward, which the health supervisor hears of as a passive signal before the server's next
//! probe.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use healthcheck::Failure;

use crate::health::Control;

/// Whether a socket error is one an ICMP message put there (reported by whatever syscall comes
/// next on the socket, whichever datagram drew it).
pub(super) fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Reads every queued ICMP error and passes those about a forward to the health supervisor:
/// a port unreachable says the server is not listening, a host or network unreachable that it
/// cannot be reached. Never waits.
pub(super) fn drain(socket: &impl AsRawFd, control: &Control) {
    // Bounded: the queue cannot hold more than the receive buffer, but never spin on it.
    for _ in 0..100_000 {
        let Some(err) = sys::pop(socket) else { break };
        let Some(to) = err.destination else { continue };
        let failure = match err.kind {
            io::ErrorKind::ConnectionRefused => Failure::PassiveRefused,
            _ => Failure::Unreachable,
        };
        tracing::debug!(%to, error = ?err.kind, "ICMP error on forward");
        control.passive(to, failure);
    }
}

pub(super) use sys::enable;

/// One ICMP error read from a socket's error queue.
struct QueuedError {
    destination: Option<SocketAddr>,
    kind: io::ErrorKind,
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io::{self, IoSliceMut};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
    };

    use super::QueuedError;

    /// Asks the kernel to report ICMP errors on this (unconnected) socket.
    pub(crate) fn enable(socket: &impl std::os::fd::AsFd, v6: bool) -> io::Result<()> {
        if v6 {
            setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
        } else {
            setsockopt(socket, sockopt::Ipv4RecvErr, &true)?;
        }
        Ok(())
    }

    /// Pops one queued ICMP error: the destination of the datagram that drew it and what the
    /// error was. `None` when the queue is empty.
    pub(super) fn pop(socket: &impl AsRawFd) -> Option<QueuedError> {
        let mut data = [0u8; 512];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        )
        .ok()?;
        let mut errno = 0;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4RecvErr(e, _)
                    | ControlMessageOwned::Ipv6RecvErr(e, _) => {
                        errno = e.ee_errno as i32;
                    }
                    _ => {}
                }
            }
        }
        Some(QueuedError {
            destination: msg.address.as_ref().and_then(super::super::socket_addr),
            kind: io::Error::from_raw_os_error(errno).kind(),
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;

    pub(crate) fn enable(_: &impl std::os::fd::AsFd, _: bool) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn pop(_: &impl std::os::fd::AsRawFd) -> Option<super::QueuedError> {
        None
    }
}
