//! `[connections]`: the limits and timeouts of TCP and TLS client connections. Every key is
//! optional; a key left out keeps its default ([`Connections::default`]).

use super::super::raw::RawConnections;
use super::super::Connections;
use super::{values, Ctx};

/// The most client connections siplb accepts to be configured for.
const MAX_CONNECTIONS: i64 = 1_000_000;
/// The smallest header block limit: a Lync REGISTER with its NTLM/Kerberos headers runs to a
/// few KiB, so anything under 1 KiB would refuse ordinary traffic.
const MIN_HEADER_BYTES: i64 = 1024;
/// The largest header block limit accepted.
const MAX_HEADER_BYTES: i64 = 16 << 20;
/// The largest body limit accepted.
const MAX_BODY_BYTES: i64 = 64 << 20;

/// Reads `[connections]`.
pub(super) fn connections(ctx: &mut Ctx<'_>, raw: Option<&RawConnections>) -> Connections {
    let mut c = Connections::default();
    let Some(raw) = raw else { return c };
    let counts = [
        (
            &raw.max,
            "max",
            &mut c.max,
            1,
            MAX_CONNECTIONS,
            "client connections open at once over all TCP and TLS listeners",
        ),
        (
            &raw.max_per_ip,
            "max_per_ip",
            &mut c.max_per_ip,
            1,
            MAX_CONNECTIONS,
            "client connections open at once from one IP address",
        ),
        (
            &raw.max_header_bytes,
            "max_header_bytes",
            &mut c.max_header_bytes,
            MIN_HEADER_BYTES,
            MAX_HEADER_BYTES,
            "bytes of one message's header block",
        ),
        (
            &raw.max_body_bytes,
            "max_body_bytes",
            &mut c.max_body_bytes,
            0,
            MAX_BODY_BYTES,
            "bytes of one message's body",
        ),
    ];
    for (value, name, slot, lo, hi, meaning) in counts {
        let Some(v) = value else { continue };
        let key = format!("connections.{name}");
        let accepted = format!("use a whole number from {lo} to {hi}: the most {meaning}");
        if let Some(n) = values::int_in(ctx, v, &key, lo, hi, &accepted) {
            // In lo..=hi (non-negative, at most 64 MiB) by the check above.
            *slot = n as usize;
        }
    }
    let timeouts = [
        (&raw.idle_timeout, "idle_timeout", &mut c.idle_timeout),
        (&raw.header_timeout, "header_timeout", &mut c.header_timeout),
        (
            &raw.handshake_timeout,
            "handshake_timeout",
            &mut c.handshake_timeout,
        ),
    ];
    for (value, name, slot) in timeouts {
        let Some(v) = value else { continue };
        let key = format!("connections.{name}");
        if let Some(d) = values::positive_duration(ctx, v, &key, name, "10s, 1800s") {
            *slot = d;
        }
    }
    if let (Some(v), true) = (&raw.max_per_ip, c.max_per_ip > c.max) {
        ctx.error(
            v.span(),
            "connections.max_per_ip",
            format!(
                "max_per_ip = {} is more than max = {}, the limit over all addresses; use a \
                 max_per_ip no larger than max",
                c.max_per_ip, c.max
            ),
        );
    }
    c
}
