//! Forwarding allocates nothing: after a warm-up, REGISTER, INVITE (to a user and to a phone
//! number), SUBSCRIBE, MESSAGE and the 200 / 180 answers to them go through `Worker::handle`
//! with the shipped `config.toml` routes (`domain`, `uri_user_param`, default and `call-id`
//! keys) and routes keyed by `ruri-aor` and `source-ip`, and the global allocator is never
//! called.
//!
//! The counting allocator below is the one piece of `unsafe` in siplb's tests: implementing
//! `GlobalAlloc` is `unsafe` by definition. It forwards every call to the system allocator
//! unchanged and only counts, per thread, while a thread asks it to.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;

use siplb::core::{Action, Worker};
use siplb::table::{ConfigHealth, RoutingTable};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments, so `System`'s
// guarantees are ours; counting touches only const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(Cell::get)
}

fn request(method: &str, ruri: &str, from: &str, to: &str, n: usize) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK{method}{n};rport\r\n\
Max-Forwards: 70\r\n\
From: <{from}>;tag=f{n};epid=01010101\r\n\
To: <{to}>\r\n\
Call-ID: {method}-{n}@192.0.2.7\r\n\
CSeq: 1 {method}\r\n\
Contact: <sip:192.0.2.7:5099;transport=udp>\r\n\
User-Agent: UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The requests of the test, and which route each must take.
fn requests(n: usize) -> Vec<(Vec<u8>, usize)> {
    let alice = "sip:Alice@CONTOSO.com";
    vec![
        (request("REGISTER", "sip:contoso.com", alice, alice, n), 1),
        (
            request(
                "INVITE",
                "sip:bob@contoso.com",
                alice,
                "sip:bob@contoso.com",
                n,
            ),
            1,
        ),
        (
            request(
                "INVITE",
                "sip:+14255550100@contoso.com;user=phone",
                alice,
                "sip:+14255550100@contoso.com;user=phone",
                n,
            ),
            0,
        ),
        (
            request("SUBSCRIBE", "sip:alice@contoso.com", alice, alice, n),
            1,
        ),
        (
            request(
                "MESSAGE",
                "sip:carol@fabrikam.com",
                alice,
                "sip:carol@fabrikam.com",
                n,
            ),
            2,
        ),
    ]
}

/// Forwards each request and a 200 and a 180 from the server it went to; returns the
/// allocations of the last round.
fn run(table: &RoutingTable, worker: &mut Worker, rounds: usize) -> usize {
    let client: SocketAddr = "192.0.2.7:5099".parse().unwrap();
    let mut last = 0;
    for round in 0..rounds {
        let messages = requests(round % 7);
        let mut answers = Vec::new();
        for (req, _) in &messages {
            let Action::Forward(server) = worker.handle(table, req, client).action else {
                panic!("not forwarded:\n{}", String::from_utf8_lossy(req))
            };
            let fwd = String::from_utf8_lossy(&worker.out).into_owned();
            let first = fwd.find("\r\n").unwrap_or(0);
            for status in ["SIP/2.0 180 Ringing", "SIP/2.0 200 OK"] {
                answers.push((format!("{status}{}", &fwd[first..]).into_bytes(), server));
            }
        }
        last = allocations(|| {
            for (req, _) in &messages {
                let a = worker.handle(table, req, client).action;
                assert!(matches!(a, Action::Forward(_)), "{a:?}");
            }
            for (resp, server) in &answers {
                let a = worker.handle(table, resp, *server).action;
                assert_eq!(a, Action::Forward(client));
            }
        });
    }
    last
}

fn table_of(cfg: &siplb::config::Config) -> RoutingTable {
    RoutingTable::unbound(cfg, &ConfigHealth)
}

#[test]
fn forwarding_through_the_shipped_routes_allocates_nothing() {
    // The counter sees allocations.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 3]))), 1);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let text = std::fs::read_to_string(&path).expect("the shipped config.toml is readable");
    let cfg = siplb::config::parse(&path, &text).expect("the shipped config.toml is valid");
    let table = table_of(&cfg);
    let mut worker = Worker::new();
    let client: SocketAddr = "192.0.2.7:5099".parse().unwrap();
    // The phone call takes the `uri_user_param` route to the Mediation pool, the rest the
    // Front End routes (`domain` and the catch-all).
    for (req, route) in requests(0) {
        let Action::Forward(to) = worker.handle(&table, &req, client).action else {
            panic!("not forwarded")
        };
        let mediation = [5091, 5092].contains(&to.port());
        assert_eq!(mediation, route == 0, "{}", String::from_utf8_lossy(&req));
    }
    assert_eq!(run(&table, &mut worker, 10), 0, "allocations per message");

    // The key kinds config.toml does not use.
    for key in ["ruri-aor", "source-ip", "to-aor", "from-aor", "call-id"] {
        let text = format!(
            "[listen]\nudp = [\"127.0.0.1:5060\"]\n\
             [[pool]]\nname = \"a\"\nservers = [{{ address = \"127.0.0.1:5071\" }}, {{ address = \"127.0.0.1:5072\" }}]\n\
             [[pool]]\nname = \"b\"\nservers = [{{ address = \"127.0.0.1:5081\" }}]\n\
             [[route]]\nuri_user_param = \"phone\"\npool = \"b\"\nkey = \"{key}\"\n\
             [[route]]\ndomain = \"contoso.com\"\npools = [\"a\", \"b\"]\nkey = \"{key}\"\n\
             [[route]]\npools = [\"a\", \"b\"]\nkey = \"{key}\"\n"
        );
        let cfg = siplb::config::parse(Path::new("keys.toml"), &text).expect("valid config");
        let table = table_of(&cfg);
        assert_eq!(
            run(&table, &mut worker, 10),
            0,
            "allocations per message, key {key}"
        );
    }
}
