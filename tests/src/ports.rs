//! Free loopback ports, for the few places a test must name a port before something binds it
//! (a second siplb listener added by a reload, a sipp peer's `-p`).
//!
//! A port found free can be taken by another process before it is used; callers that can
//! retry on another port do so.

use std::net::{TcpListener, UdpSocket};

/// A UDP port that was free on 127.0.0.1 a moment ago.
pub fn free_udp_port() -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
    sock.local_addr().expect("local address").port()
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback TCP socket");
    l.local_addr().expect("local address").port()
}

/// Whether nothing holds UDP `port` on 127.0.0.1 now (a plain bind, without `SO_REUSEPORT`,
/// succeeds only then).
pub fn udp_port_is_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}
