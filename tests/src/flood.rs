//! Floods of junk aimed at siplb while valid traffic runs: the junk itself, and the watchers that
//! tell whether siplb held (its memory, its `/healthz`, its CPU).
//!
//! - [`udp`]: junk datagrams — random bytes, mutated SIP ([`crate::fuzz::Mutator`]), 65,000-byte
//!   datagrams, well-formed requests no route takes, responses with forged branches from a
//!   source that is no server, and scanner traffic shaped like a SIP scanner's OPTIONS sweep
//!   and extension guessing — sent at a set rate from several source ports;
//! - [`stream`]: hostile TCP and TLS connections — junk bytes, a body longer than its
//!   Content-Length, a header trickled byte by byte (slowloris), a TLS ClientHello never
//!   finished, and a connection churn that opens and drops connections in a loop, far beyond
//!   `[connections] max` and `max_per_ip`;
//! - [`watch`]: samples of siplb's `VmRSS` and CPU time from `/proc`, and `/healthz` polled with
//!   each answer's status and latency.
//!
//! The flood suite (`tests/tests/flood.rs`) and the `flood` tool behind `bench/flood.sh`
//! (`tests/src/bin/flood.rs`) both drive these. Every flood is bounded by a deadline and a
//! count, and aims only at loopback addresses: [`require_loopback`] refuses anything else.

use std::net::SocketAddr;

pub mod stream;
pub mod udp;
pub mod watch;

/// Refuses an address that is not on loopback: floods never leave this machine.
pub fn require_loopback(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: floods stay on this machine"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_flooded() {
        assert!(require_loopback("127.0.0.1:5060".parse().unwrap()).is_ok());
        assert!(require_loopback("[::1]:5060".parse().unwrap()).is_ok());
        assert!(require_loopback("10.0.0.1:5060".parse().unwrap()).is_err());
    }
}
