//! `wire`: the scanner, the edits and the routing decision — `Worker::handle_from` on the
//! shipped config.toml's routing table — for any bytes, arriving over UDP (from a client over
//! IPv4 and IPv6, and from a server), on a TCP and a TLS client flow, and on a backend
//! connection; and once more on that config with Front End pool fe-dc1 failed over to fe-dc2
//! (whose servers are then reached over TCP and TLS) and the Mediation pool down.
//!
//! Checked on every input: nothing panics; what siplb forwards differs from what it received
//! only by its own edits (`siplb_fuzz::sip`); its own answers are SIP responses, never to an
//! ACK; and a forwarded request's 200 OK, sent back by the server it went to, is relayed to
//! the client it came from, differing from what the server sent only by siplb's Via.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use healthcheck::ServerState;
use libfuzzer_sys::fuzz_target;
use siplb::config::parse;
use siplb::core::{Action, Arrival, Peer, Transport, Worker};
use siplb::table::{ConfigHealth, HealthView, RoutingTable};
use siplb_fuzz::framing::show;
use siplb_fuzz::sip::{check_request, check_response, Parts, Received};

const SHIPPED: &str = include_str!("../../config.toml");
const CLIENT4: &str = "192.0.2.7:5099";
const CLIENT6: &str = "[2001:db8::7]:5099";
const FLOW4: &str = "192.0.2.7:40001";
const FLOW6: &str = "[2001:db8::7]:40002";
const SERVER: &str = "127.0.0.1:5071";
const SERVER_TCP: &str = "127.0.0.1:5081";
/// Connection ids: two client flows, and the backend connection answers come back on.
const FLOW_TCP: u64 = 7;
const FLOW_TLS: u64 = 8;
const BACKEND: u64 = 9;

struct Setup {
    shipped: RoutingTable,
    failed_over: RoutingTable,
}

/// fe-dc1 failed over, the Mediation servers down.
struct Degraded;

impl HealthView for Degraded {
    fn server_state(&self, id: &str) -> Option<ServerState> {
        id.starts_with("med1-").then_some(ServerState::Down)
    }
    fn failed_over(&self, pool: &str) -> bool {
        pool == "fe-dc1"
    }
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        // One branch key for every run, so a crash replays.
        std::env::set_var("SIPLB_BRANCH_KEY", "siplb-fuzzing-branch-key-0001");
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml"));
        let shipped = parse(path, SHIPPED).expect("the shipped config.toml is valid");
        let streams = SHIPPED
            .replace(
                r#"{ address = "127.0.0.1:5081", transport = "udp""#,
                r#"{ address = "127.0.0.1:5081", transport = "tcp""#,
            )
            .replace(
                r#"{ address = "127.0.0.1:5082", transport = "udp""#,
                r#"{ address = "127.0.0.1:5082", transport = "tls""#,
            );
        let streams = parse(path, &streams).expect("config.toml with fe-dc2 over TCP and TLS");
        Setup {
            shipped: RoutingTable::unbound(&shipped, &ConfigHealth),
            failed_over: RoutingTable::unbound(&streams, &Degraded),
        }
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

fn flow(conn: u64, src: &str, transport: Transport) -> Arrival {
    Arrival {
        src: addr(src),
        transport,
        conn: Some(conn),
        client: None,
    }
}

thread_local! {
    /// One worker for every run, as a shell's worker serves message after message.
    static WORKER: RefCell<Worker> = RefCell::new(Worker::new());
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let backend = Arrival {
        src: addr(SERVER_TCP),
        transport: Transport::Tcp,
        conn: Some(BACKEND),
        client: Some(Peer {
            conn: FLOW_TCP,
            addr: addr(FLOW4),
            transport: Transport::Tcp,
        }),
    };
    let runs = [
        (&s.shipped, Arrival::udp(addr(CLIENT4))),
        (&s.shipped, Arrival::udp(addr(CLIENT6))),
        (&s.shipped, Arrival::udp(addr(SERVER))),
        (&s.shipped, flow(FLOW_TCP, FLOW4, Transport::Tcp)),
        (&s.shipped, flow(FLOW_TLS, FLOW6, Transport::Tls)),
        (&s.shipped, backend),
        (&s.failed_over, Arrival::udp(addr(CLIENT4))),
        (&s.failed_over, flow(FLOW_TCP, FLOW4, Transport::Tcp)),
    ];
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        for (table, at) in &runs {
            if let Err(e) = run(&mut w, table, data, at) {
                panic!(
                    "{e}\narrival {at:?}\ninput {:?}\nout {:?}",
                    show(data),
                    show(&w.out)
                );
            }
        }
    });
});

/// Whether `msg` is a response: its first line after any CR/LF says `SIP/2.0 `.
fn is_response(msg: &[u8]) -> bool {
    let at = msg
        .iter()
        .position(|c| !matches!(c, b'\r' | b'\n'))
        .unwrap_or(msg.len());
    msg[at..].len() >= 8 && msg[at..at + 8].eq_ignore_ascii_case(b"SIP/2.0 ")
}

fn run(w: &mut Worker, table: &RoutingTable, data: &[u8], at: &Arrival) -> Result<(), String> {
    let outcome = w.handle_from(table, data, at);
    if matches!(outcome.action, Action::Drop(_)) != outcome.count.is_none() {
        return Err(format!("a drop counted, or a send not: {outcome:?}"));
    }
    match outcome.action {
        Action::Drop(_) => Ok(()),
        Action::Reply(_) => {
            let start = data
                .iter()
                .position(|c| !matches!(c, b'\r' | b'\n'))
                .unwrap_or(0);
            if is_response(data) || data[start..].starts_with(b"ACK ") {
                return Err("siplb answered a response or an ACK".into());
            }
            let code = w.out.get(8..11).unwrap_or_default();
            let ok = w.out.starts_with(b"SIP/2.0 ")
                && matches!(code.first(), Some(b'4' | b'5'))
                && code.iter().all(u8::is_ascii_digit);
            if !ok || Parts::of(&w.out).is_none() {
                return Err("siplb's answer is not a 4xx/5xx SIP response".into());
            }
            Ok(())
        }
        Action::Forward(_) | Action::ToServer { .. } | Action::ToConn(_) if is_response(data) => {
            check_response(data, &w.out)
        }
        action => {
            let how = Received {
                src: at.src,
                flow_route: at.conn.is_some() && at.client.is_none(),
            };
            check_request(data, &w.out, &how)?;
            round_trip(w, table, at, action)
        }
    }
}

/// The server the request went to answers 200 OK (over the connection it went down, or from
/// its address); siplb must relay it to where the request came from.
fn round_trip(
    w: &mut Worker,
    table: &RoutingTable,
    at: &Arrival,
    action: Action,
) -> Result<(), String> {
    let forwarded = w.out.clone();
    let parts = Parts::of(&forwarded).ok_or("a forwarded request without a header block")?;
    let mut response = b"SIP/2.0 200 OK\r\n".to_vec();
    response.extend_from_slice(&forwarded[parts.head.len()..]);
    let client_of = |at: &Arrival| {
        at.conn.map(|conn| Peer {
            conn,
            addr: at.src,
            transport: at.transport,
        })
    };
    let back = match action {
        Action::Forward(server) => Arrival::udp(server),
        Action::ToServer {
            addr, transport, ..
        } => Arrival {
            src: addr,
            transport,
            conn: Some(BACKEND),
            client: client_of(at),
        },
        // Down a client flow: the client answers on it, from its own address.
        Action::ToConn(conn) => Arrival {
            src: at.client.map_or(addr(FLOW4), |c| c.addr),
            transport: Transport::Tcp,
            conn: Some(conn),
            client: None,
        },
        _ => unreachable!("only forwards come here"),
    };
    let outcome = w.handle_from(table, &response, &back);
    let home = match (outcome.action, at.conn) {
        (Action::ToConn(conn), Some(from)) => conn == from,
        (Action::Forward(to), None) => to.ip() == at.src.ip(),
        _ => false,
    };
    if !home {
        return Err(format!(
            "the 200 OK to a request forwarded with {action:?} was {:?}, not sent back where the \
             request came from\nresponse {:?}",
            outcome.action,
            show(&response)
        ));
    }
    check_response(&response, &w.out)
}
