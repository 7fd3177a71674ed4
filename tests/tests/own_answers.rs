//! siplb's own answers as a client behind a NAT needs them, over IPv4 and IPv6: the top Via
//! carries `received=<source IP>` (replacing any it had; IPv6 without brackets) and the filled
//! `rport` (RFC 3261 §18.2.1, RFC 3581 §4) — exactly what a forwarded request's Via gets — and
//! the answer reaches the client at its source port. The `Server` header is
//! `[routing] server_header` (default `siplb`, no version; `""` for none). A request that no
//! longer fits a UDP datagram once siplb's edits are on is answered `513 Message Too Large`.

use std::net::SocketAddr;

use siplb_e2e::answer::assert_own_answer;
use siplb_e2e::request::unique;
use siplb_e2e::sip::show;
use siplb_e2e::{Backend, Behaviour, Client, Config, Farm, Msg, Request, Route, Server, Siplb};

/// siplb listening on IPv4 and IPv6 loopback; pool `fe` (fe1 on IPv4, fe6 on IPv6) for
/// contoso.com, pool `dead` (all drained) for dead.test, nothing for anything else.
struct Bed {
    farm: Farm,
    siplb: Siplb,
}

fn bed(config: impl FnOnce(Config) -> Config) -> Bed {
    let mut farm = Farm::start("fe", 1, Behaviour::Accept);
    let v6 = "[::1]:0".parse().expect("IPv6 loopback");
    farm.backends
        .push(Backend::start_on("fe6", Behaviour::Accept, v6).expect("bind [::1]"));
    farm.backends
        .push(Backend::start("dead1", Behaviour::Accept));
    let base = Config::new()
        .listen(&["127.0.0.1:0", "[::1]:0"])
        .pool("fe", vec![Server::of(&farm.backends[0])])
        .pool("fe6", vec![Server::of(&farm.backends[1])])
        .pool("dead", vec![Server::of(&farm.backends[2]).drained()])
        .route(Route::to("fe").domain("contoso.com"))
        .route(Route::to("fe6").domain("contoso6.com"))
        .route(Route::to("dead").domain("dead.test"));
    let siplb = Siplb::start(&config(base).render());
    Bed { farm, siplb }
}

/// A client on `ip` (`127.0.0.1` or `::1`) and siplb's listener of that family.
fn client_for(bed: &Bed, ip: &str) -> (Client, SocketAddr) {
    let client = Client::bind(ip);
    let to = if client.addr().is_ipv6() {
        bed.siplb.addr_v6()
    } else {
        bed.siplb.addr()
    };
    (client, to)
}

/// The Via sent-by a client behind a NAT writes, in its family.
fn nat_via(v6: bool) -> String {
    let host = if v6 { "[2001:db8::9]" } else { "192.0.2.9" };
    format!(
        "Via: SIP/2.0/UDP {host}:5060;rport;branch={}",
        unique("z9hG4bK")
    )
}

/// Sends `req` from a client on `ip`; returns the answer (panics on none) and what was sent.
fn ask(bed: &Bed, ip: &str, req: Request) -> (Msg, Vec<u8>, SocketAddr) {
    let (mut client, to) = client_for(bed, ip);
    let req = req.set_line("via", &nat_via(client.addr().is_ipv6()));
    let sent = req.bytes();
    client.send_raw(to, &sent);
    let answer = client
        .final_response(&req)
        .unwrap_or_else(|| panic!("no answer from siplb to\n{}", show(&sent)));
    (answer, sent, client.addr())
}

fn assert_nothing_reached_a_server(bed: &Bed) {
    for b in &bed.farm.backends {
        assert!(b.requests().is_empty(), "{} received a request", b.id());
    }
}

fn own_answer_carries_received_and_rport(ip: &str) {
    let bed = bed(|c| c);
    let cases: Vec<(Request, u16)> = vec![
        (Request::register("bob@fabrikam.com"), 404),
        (
            Request::register("alice@contoso.com").set("Max-Forwards", "0"),
            483,
        ),
        (Request::register("alice@dead.test"), 503),
        (
            Request::new(
                "BYE",
                "sip:bob@contoso.com",
                "alice@contoso.com",
                "bob@contoso.com",
            )
            .insert_before("call-id", "Route: <sip:10.9.9.9:5060;lr>"),
            403,
        ),
    ];
    for (req, status) in cases {
        let (answer, sent, client) = ask(&bed, ip, req);
        assert_own_answer(&sent, &answer, status, client);
    }
    assert_nothing_reached_a_server(&bed);
}

#[test]
fn own_answers_over_ipv4_carry_received_and_rport() {
    own_answer_carries_received_and_rport("127.0.0.1");
}

#[test]
fn own_answers_over_ipv6_carry_received_without_brackets_and_rport() {
    own_answer_carries_received_and_rport("::1");
}

#[test]
fn an_old_received_in_the_top_via_is_replaced_in_an_own_answer() {
    let bed = bed(|c| c);
    let (mut client, to) = client_for(&bed, "127.0.0.1");
    let req = Request::register("bob@fabrikam.com").set_line(
        "via",
        &format!(
            "Via: SIP/2.0/UDP 192.0.2.9:5060;received=192.0.2.77;rport;branch={}",
            unique("z9hG4bK")
        ),
    );
    let sent = client.send(to, &req);
    let answer = client.final_response(&req).expect("an answer");
    assert_own_answer(&sent, &answer, 404, client.addr());
}

#[test]
fn own_answers_say_server_siplb_without_a_version_by_default() {
    let bed = bed(|c| c);
    let (answer, _, _) = ask(&bed, "127.0.0.1", Request::register("bob@fabrikam.com"));
    let servers: Vec<&str> = answer
        .header_lines("server")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(servers, ["siplb"], "{}", show(&answer.raw));
}

#[test]
fn server_header_empty_means_no_server_header() {
    let bed = bed(|c| c.server_header(""));
    for req in [
        Request::register("bob@fabrikam.com"),
        Request::register("alice@contoso.com").set("Max-Forwards", "0"),
    ] {
        let (answer, _, _) = ask(&bed, "127.0.0.1", req);
        assert!(answer.header("server").is_none(), "{}", show(&answer.raw));
    }
}

#[test]
fn server_header_takes_the_configured_value() {
    let bed = bed(|c| c.server_header("Contoso Edge LB/3"));
    let (answer, _, _) = ask(&bed, "::1", Request::register("alice@dead.test"));
    assert_eq!(answer.status(), Some(503));
    let servers: Vec<&str> = answer
        .header_lines("server")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(servers, ["Contoso Edge LB/3"], "{}", show(&answer.raw));
}

/// A REGISTER for `aor` with top Via `via`, padded to exactly `size` bytes by a header
/// (`X-Padding`) or by its body.
fn padded(aor: &str, via: &str, size: usize, in_body: bool) -> Request {
    let base = Request::register(aor).set_line("via", via);
    if in_body {
        let mut req = base.body("text/plain", b"");
        // Content-Length's digits grow with the body: settle in a few steps.
        for _ in 0..4 {
            let len = req.bytes().len();
            let body = (req.body.len() + size).saturating_sub(len);
            req.body = vec![b'a'; body];
        }
        assert_eq!(req.bytes().len(), size, "padding arithmetic");
        req
    } else {
        let bare = base.clone().with("X-Padding", "").bytes().len();
        let req = base.with("X-Padding", &"a".repeat(size - bare));
        assert_eq!(req.bytes().len(), size, "padding arithmetic");
        req
    }
}

/// A request of `big` bytes gets 513 and reaches no server; one of `fits` bytes (small enough
/// that siplb's Via, received and rport still fit) is forwarded.
fn too_large(ip: &str, aor: &str, big: usize, fits: usize, in_body: bool) {
    let bed = bed(|c| c);
    let (mut client, to) = client_for(&bed, ip);
    let v6 = client.addr().is_ipv6();
    let req = padded(aor, &nat_via(v6), big, in_body);
    let sent = client.send(to, &req);
    let answer = client
        .final_response(&req)
        .unwrap_or_else(|| panic!("no answer to a {big}-byte request"));
    assert_eq!(
        answer.start, "SIP/2.0 513 Message Too Large",
        "answer to a {big}-byte request"
    );
    assert_own_answer(&sent, &answer, 513, client.addr());
    assert_nothing_reached_a_server(&bed);

    // The control: a request that still fits with siplb's edits is forwarded.
    let ok = padded(aor, &nat_via(v6), fits, in_body);
    client.send(to, &ok);
    let answer = client.final_response(&ok).unwrap_or_else(|| {
        panic!("no answer to a {fits}-byte request, which fits with siplb's edits")
    });
    assert_eq!(answer.status(), Some(200), "{}", answer.start);
    let forwarded: usize = bed
        .farm
        .backends
        .iter()
        .map(|b| b.with_call_id(&ok.call_id()).len())
        .sum();
    assert_eq!(forwarded, 1);
}

#[test]
fn a_request_that_no_longer_fits_ipv4_udp_gets_513_padded_in_a_header() {
    // 65,450 bytes fit a datagram (65,507 over IPv4) when sent, not with siplb's ~100 more.
    too_large("127.0.0.1", "alice@contoso.com", 65_450, 65_300, false);
}

#[test]
fn a_request_that_no_longer_fits_ipv4_udp_gets_513_padded_in_the_body() {
    too_large("127.0.0.1", "alice@contoso.com", 65_450, 65_300, true);
}

#[test]
fn a_request_that_no_longer_fits_ipv6_udp_gets_513() {
    // The IPv6 limit is 65,527 bytes.
    too_large("::1", "alice@contoso6.com", 65_470, 65_380, false);
}
