//! siplb's own decisions, seen by the peers: the answers it gives instead of forwarding (483,
//! 404, 403, 503 with Retry-After), the Max-Forwards and Route handling of what it does forward,
//! and the silences it keeps: never an answer to an ACK, never a response relayed whose top Via
//! is not its own.

use siplb_e2e::{Backend, Behaviour, Config, Farm, Msg, Request, Route, Server, Testbed};

/// Pool `fe` (servers fe1, fe2) for contoso.com, pool `dead` (dead1, drained) for dead.test;
/// anything else is unrouted.
fn setup(no_route: Option<u16>) -> Testbed {
    let mut farm = Farm::start("fe", 2, Behaviour::Accept);
    farm.backends
        .push(Backend::start("dead1", Behaviour::Accept));
    let mut config = Config::new()
        .pool("fe", farm.backends[..2].iter().map(Server::of).collect())
        .pool("dead", vec![Server::of(&farm.backends[2]).drained()])
        .route(Route::to("fe").domain("contoso.com"))
        .route(Route::to("dead").domain("dead.test"))
        .retry_after("30s");
    if let Some(status) = no_route {
        config = config.no_route(status);
    }
    Testbed::new(farm, &config)
}

/// Sends `req`, expects one answer of siplb's own with `status`, and shows nothing reached a
/// server.
fn expect_answer(s: &mut Testbed, req: &Request, status: u16) -> Msg {
    let answer = s.client.transact(s.siplb.addr(), req);
    assert_answers(req, &answer, status);
    s.client.assert_no_answer(&req.call_id()); // exactly one answer
    assert_no_server_got(s, req);
    answer
}

/// Sends `req` and shows that neither the client nor any server hears of it.
fn expect_silence(s: &mut Testbed, req: &Request) {
    s.client.send(s.siplb.addr(), req);
    s.client.assert_no_answer(&req.call_id());
    assert_no_server_got(s, req);
}

fn assert_no_server_got(s: &Testbed, req: &Request) {
    for b in &s.farm.backends {
        let got = b.with_call_id(&req.call_id());
        assert!(
            got.is_empty(),
            "{} received {} datagram(s) of {}",
            b.id(),
            got.len(),
            req.call_id()
        );
    }
}

/// An answer of siplb's own: the status, and Via/From/Call-ID/CSeq copied, To copied plus a tag
/// (RFC 3261 §8.2.6.2).
fn assert_answers(req: &Request, answer: &Msg, status: u16) {
    let sent = Msg::must_parse(&req.bytes());
    assert_eq!(answer.status(), Some(status), "answer: {}", answer.start);
    let unlearned =
        |vias: Vec<String>| -> Vec<String> { vias.iter().map(|v| without_received(v)).collect() };
    assert_eq!(
        unlearned(answer.vias()),
        unlearned(sent.vias()),
        "Via not copied"
    );
    for h in ["from", "call-id", "cseq"] {
        assert_eq!(answer.header(h), sent.header(h), "{h} not copied");
    }
    let to = answer.header("to").expect("answer without To");
    let sent_to = sent.header("to").expect("request without To");
    assert!(
        to.starts_with(sent_to),
        "To {to:?} is not {sent_to:?} plus a tag"
    );
    assert!(
        siplb_e2e::sip::param(to, "tag").flatten().is_some(),
        "no To tag in {to:?}"
    );
}

/// A Via value without what a server may learn about the sender (`received`, the `rport` value).
fn without_received(via: &str) -> String {
    via.split(';')
        .filter(|p| !p.trim().starts_with("received="))
        .map(|p| {
            if p.trim().starts_with("rport=") {
                "rport"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn max_forwards_zero_gets_483_and_goes_nowhere() {
    let mut s = setup(None);
    let req = Request::register("alice@contoso.com").set("Max-Forwards", "0");
    expect_answer(&mut s, &req, 483);
}

#[test]
fn max_forwards_is_decremented_or_added() {
    let mut s = setup(None);
    for (given, forwarded) in [(Some("70"), "69"), (Some("1"), "0"), (None, "70")] {
        let mut req = Request::register("alice@contoso.com");
        req = match given {
            Some(v) => req.set("Max-Forwards", v),
            None => req.without("Max-Forwards"),
        };
        let ex = s.exchange(&req.bytes());
        let got = ex.forwarded.msg().expect("forwarded SIP");
        assert_eq!(
            got.header("max-forwards"),
            Some(forwarded),
            "given {given:?}"
        );
    }
}

#[test]
fn an_unrouted_request_gets_404() {
    let mut s = setup(None);
    expect_answer(&mut s, &Request::register("bob@fabrikam.com"), 404);
    let invite = Request::invite("bob@fabrikam.com", "carol@fabrikam.com");
    expect_answer(&mut s, &invite, 404);
}

#[test]
fn no_route_403_is_configurable() {
    let mut s = setup(Some(403));
    expect_answer(&mut s, &Request::register("bob@fabrikam.com"), 403);
}

#[test]
fn a_route_to_a_foreign_host_is_refused_with_403() {
    let mut s = setup(None);
    // siplb is no open relay: nothing is sent to 10.9.9.9, and no server sees the request.
    let req = Request::new(
        "BYE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .insert_before("call-id", "Route: <sip:10.9.9.9:5060;lr>");
    expect_answer(&mut s, &req, 403);
}

/// The farm's servers in the order (HRW choice for `aor`, another one).
fn chosen_and_other(s: &mut Testbed, aor: &str) -> (String, String) {
    let probe = Request::register(aor);
    assert_eq!(
        s.client.transact(s.siplb.addr(), &probe).status(),
        Some(200)
    );
    let chosen = s.farm.holder(&probe.call_id()).id().to_string();
    let other = s
        .farm
        .backends
        .iter()
        .find(|b| b.id() != chosen)
        .expect("two servers");
    (chosen, other.id().to_string())
}

#[test]
fn a_route_to_a_configured_server_goes_to_that_server() {
    let mut s = setup(None);
    let (_, other) = chosen_and_other(&mut s, "alice@contoso.com");
    let route = format!("Route: <sip:{};lr>", s.farm.get(&other).addr());
    let bye = Request::new(
        "BYE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .insert_before("call-id", &route);
    let ex = s.exchange(&bye.bytes());
    assert_eq!(ex.server, other, "the Route was not followed");
}

#[test]
fn a_top_route_naming_siplb_is_removed() {
    let mut s = setup(None);
    let (chosen, other) = chosen_and_other(&mut s, "alice@contoso.com");
    let ours = format!("Route: <sip:{};lr>", s.siplb.addr());

    // Only our Route: removed, then routed by user as usual.
    let req = Request::new(
        "MESSAGE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .insert_before("call-id", &ours);
    let expected = siplb_e2e::edits::without_line(&req.bytes(), &ours);
    let ex = s.exchange_expecting(&req.bytes(), &expected);
    assert_eq!(ex.server, chosen);

    // Our Route, then a server's: ours removed, the server's followed.
    let theirs = format!("Route: <sip:{};lr>", s.farm.get(&other).addr());
    let req = Request::new(
        "MESSAGE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .insert_before("call-id", &ours)
    .insert_before("call-id", &theirs);
    let expected = siplb_e2e::edits::without_line(&req.bytes(), &ours);
    let ex = s.exchange_expecting(&req.bytes(), &expected);
    assert_eq!(ex.server, other);
}

#[test]
fn a_pool_with_every_server_drained_gets_503_with_retry_after() {
    let mut s = setup(None);
    let answer = expect_answer(&mut s, &Request::register("alice@dead.test"), 503);
    assert_eq!(
        answer.header("retry-after"),
        Some("30"),
        "{}",
        siplb_e2e::sip::show(&answer.raw)
    );
}

#[test]
fn an_ack_that_cannot_be_routed_gets_no_answer() {
    let mut s = setup(None);
    let ack = |from: &str, to: &str| {
        Request::new("ACK", &format!("sip:{to}"), from, to).set("To", &format!("<sip:{to}>;tag=x1"))
    };
    expect_silence(&mut s, &ack("bob@fabrikam.com", "carol@fabrikam.com")); // no route
    expect_silence(&mut s, &ack("bob@dead.test", "carol@dead.test")); // no server up
    expect_silence(
        &mut s,
        &ack("bob@contoso.com", "carol@contoso.com").set("Max-Forwards", "0"),
    );
    let foreign = ack("bob@contoso.com", "carol@contoso.com")
        .insert_before("call-id", "Route: <sip:10.9.9.9:5060;lr>");
    expect_silence(&mut s, &foreign);
}

#[test]
fn a_response_whose_top_via_is_not_siplb_is_dropped() {
    let mut s = setup(None);
    // Had siplb popped the top Via blindly, the second would send this straight to the client.
    let response = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKforeign\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKmine\r\nFrom: <sip:alice@contoso.com>;tag=1\r\nTo: <sip:alice@contoso.com>;tag=2\r\nCall-ID: stray-response\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        s.client.addr()
    );
    s.client.send_raw(s.siplb.addr(), response.as_bytes());
    s.client.assert_nothing_arrives();
    for b in &s.farm.backends {
        assert!(
            b.with_call_id("stray-response").is_empty(),
            "{} got the stray response",
            b.id()
        );
    }
}
