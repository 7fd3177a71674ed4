//! Where a request would go, explained: what `siplb route` prints and `/route` answers.
//!
//! A synthetic request is built for a method and an address of record ([`request`]) and routed
//! through the wire path's own decision ([`Worker::explain`]), so the explanation cannot drift
//! from what the wire path does. The demo's client sends the same requests.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{Refusal, Worker};
use crate::table::RoutingTable;

/// A minimal SIP request for `aor`, as a UA would send it through siplb. A REGISTER goes to
/// the AOR's domain; anything else to the AOR itself.
pub(crate) fn request(
    method: &str,
    aor: &str,
    call_id: &str,
    cseq: u32,
    via_sent_by: &str,
) -> String {
    let aor = if aor.contains(':') {
        aor.to_string()
    } else {
        format!("sip:{aor}")
    };
    let ruri = match (method, aor.split_once('@')) {
        ("REGISTER", Some((_, domain))) => format!("sip:{domain}"),
        _ => aor.clone(),
    };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {via_sent_by};branch=z9hG4bK{call_id}-{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{aor}>;tag=demo{cseq}\r\n\
         To: <{aor}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         User-Agent: siplb-demo\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Where a request of `method` for `aor` goes in a table, as `siplb route` and `/route` show it.
#[derive(Debug, Serialize)]
pub(crate) struct RouteDoc {
    pub routed: bool,
    /// Index of the `[[route]]` that matched.
    pub route: usize,
    /// The key the route reads (`to-aor`, `from-aor`, …).
    pub key: &'static str,
    /// Why it reads that key: `route's key`, or the default of the route's pools' role, e.g.
    /// `default for a mediation pool`.
    pub key_rule: String,
    /// The role of the route's pools.
    pub role: &'static str,
    /// The source address the request was taken to come from (what a `source-ip` key reads).
    pub source: String,
    /// The user's home pool.
    pub home: String,
    /// The pool serving the home pool's users now.
    pub serving: String,
    /// The chosen server; `None` when the serving pool has none up (siplb answers 503).
    pub server: Option<RouteServer>,
}

/// The server a request would reach.
#[derive(Debug, Serialize)]
pub(crate) struct RouteServer {
    pub id: String,
    pub address: String,
    pub transport: &'static str,
}

/// Routes a synthetic request, sent from `source` (what a `source-ip` key reads), through the
/// wire path's own decision; `Err` is the answer siplb would give instead.
pub(crate) fn explain(
    table: &RoutingTable,
    method: &str,
    aor: &str,
    source: IpAddr,
) -> Result<RouteDoc, Refusal> {
    let src = SocketAddr::new(source, 5060);
    let request = request(method, aor, "siplb-route", 1, &src.to_string());
    let d = Worker::new().explain(table, request.as_bytes(), src)?;
    let server = d.server.map(|s| {
        let s = table.server(d.serving, s);
        RouteServer {
            id: s.id.clone(),
            address: s.address.to_string(),
            transport: s.transport.as_str(),
        }
    });
    let route = &table.routes[d.route];
    Ok(RouteDoc {
        routed: true,
        route: d.route,
        key: route.key_for(method.as_bytes()).as_str(),
        key_rule: route.key_rule().describe(method.as_bytes()),
        role: route.role.as_str(),
        source: source.to_string(),
        home: table.pools[d.home].name.clone(),
        serving: table.pools[d.serving].name.clone(),
        server,
    })
}
