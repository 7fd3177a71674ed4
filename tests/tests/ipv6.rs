//! IPv6 through siplb (an IPv6 listener on `[::1]`, servers on `[::1]`, a client on `::1`).
//!
//! RFC 3261 §20.42 and §25.1: `via-received = "received" EQUAL (IPv4address / IPv6address)`, so
//! an IPv6 `received` has no brackets (`received=::1`), unlike a Via sent-by, which takes an
//! `IPv6reference` (`[::1]`). RFC 5954 corrects RFC 3261's `IPv6address` production (the one
//! `via-received` uses) and keeps it bracket-free. RFC 5118 §4.5 ("IPv6 Reference Delimiters in
//! Via Header") shows both forms and says "implementations must follow the Robustness Principle
//! [RFC1122] and be liberal in accepting a 'received' parameter with or without the delimiting
//! '[' and ']' tokens". So siplb writes `received=::1` and reads both forms.
//!
//! RFC 5118's IPv6 messages (§4.1, §4.3-§4.6, in `tests/torture/ipv6/`) are routed and
//! forwarded with only siplb's edits, and a Route naming a server by its IPv6 reference goes to
//! that server.

use std::net::SocketAddr;

use siplb_e2e::client::ANSWER_WITHIN;
use siplb_e2e::ops::{wait_until, Ops};
use siplb_e2e::request::unique;
use siplb_e2e::sip::show;
use siplb_e2e::{
    response_to, torture, Backend, Behaviour, Client, Config, Farm, Msg, Request, Siplb, Testbed,
};

fn v6() -> SocketAddr {
    "[::1]:0".parse().expect("IPv6 loopback")
}

/// Servers fe1 and fe2 on `[::1]` answering per `behaviour`, siplb on `[::1]` only, a client on
/// `::1`.
fn bed(behaviour: Behaviour) -> Testbed {
    let farm = Farm {
        backends: (1..=2)
            .map(|i| Backend::start_on(&format!("fe{i}"), behaviour, v6()).expect("bind [::1]"))
            .collect(),
    };
    let config = Config::single_pool(&farm.backends)
        .listen(&["[::1]:0"])
        .ops();
    let siplb = Siplb::start(&config.render());
    assert!(siplb.addr().is_ipv6(), "siplb listens on {}", siplb.addr());
    Testbed {
        farm,
        siplb,
        client: Client::bind("::1"),
    }
}

fn v6_register(aor: &str) -> Request {
    Request::register(aor).set_line(
        "via",
        &format!(
            "Via: SIP/2.0/UDP [2001:db8::9:1]:5060;rport;branch={}",
            unique("z9hG4bK")
        ),
    )
}

#[test]
fn ipv6_received_is_written_without_brackets_on_a_forwarded_request() {
    let mut tb = bed(Behaviour::Accept);
    // `exchange` undoes exactly `;received=::1` and `;rport=<port>` on the client's Via.
    let ex = tb.exchange(&v6_register("alice@contoso.com").bytes());
    let fwd = ex.forwarded.msg().expect("forwarded SIP");
    let client_via = &fwd.vias()[1];
    assert!(
        client_via.contains(";received=::1") && !client_via.contains("received=["),
        "{client_via}"
    );
}

#[test]
fn rfc5118_4_1_register_with_ipv6_references_is_forwarded_intact() {
    let mut tb = bed(Behaviour::Accept);
    tb.exchange(&torture::load("ipv6/register", &[]));
}

#[test]
fn rfc5118_4_3_port_ambiguous_request_uri_is_forwarded_intact() {
    let mut tb = bed(Behaviour::Accept);
    tb.exchange(&torture::load("ipv6/port-ambiguous", &[]));
}

#[test]
fn rfc5118_4_4_port_unambiguous_request_uri_is_forwarded_intact() {
    let mut tb = bed(Behaviour::Accept);
    tb.exchange(&torture::load("ipv6/port-unambiguous", &[]));
}

#[test]
fn rfc5118_4_6_invite_with_ipv6_hosts_is_forwarded_intact() {
    let mut tb = bed(Behaviour::Accept);
    let ex = tb.exchange(&torture::load("ipv6/invite", &[]));
    assert_eq!(ex.response.and_then(|m| m.status()), Some(200));
}

/// RFC 5118 §4.5: a request whose top Via already has an IPv6 `received`, with or without
/// brackets, is forwarded with that `received` replaced by the source address (`::1`).
fn forwarded_with_received_replaced(name: &str, old: &str) {
    let mut tb = bed(Behaviour::Accept);
    let sent = torture::load(name, &[]);
    let text = String::from_utf8(sent.clone()).expect("text");
    assert!(text.contains(old), "{name} lacks {old}");
    // What the server must see, before siplb's own edits: the request without the old value.
    let expected = text.replacen(old, "", 1).into_bytes();
    let ex = tb.exchange_expecting(&sent, &expected);
    let fwd = ex.forwarded.msg().expect("forwarded SIP");
    assert_eq!(
        siplb_e2e::sip::param(&fwd.vias()[1], "received"),
        Some(Some("::1".to_string())),
        "{}",
        fwd.vias()[1]
    );
}

#[test]
fn rfc5118_4_5_bracketed_received_in_a_request_is_replaced_unbracketed() {
    forwarded_with_received_replaced("ipv6/via-received-delim", ";received=[2001:db8::9:255]");
}

#[test]
fn rfc5118_4_5_unbracketed_received_in_a_request_is_replaced() {
    forwarded_with_received_replaced("ipv6/via-received-no-delim", ";received=2001:db8::9:255");
}

#[test]
fn a_route_naming_an_ipv6_server_goes_to_that_server() {
    let mut tb = bed(Behaviour::Accept);
    // Each server in turn: whichever the key would pick, the Route wins.
    for id in ["fe1", "fe2"] {
        let server = tb.farm.get(id).addr().to_string();
        assert!(server.starts_with("[::1]:"), "{server}");
        let vars = [("server", server), ("branch", unique("r"))];
        let ex = tb.exchange(&torture::load("ipv6/route", &vars));
        assert_eq!(ex.server, id, "the Route to {id} was not followed");
    }
}

/// The response `resp` with the `received` of its second Via value (the client's) set to
/// `value`.
fn with_client_received(resp: &[u8], value: &str) -> Vec<u8> {
    let text = String::from_utf8(resp.to_vec()).expect("response is text");
    let lines: Vec<&str> = text.split("\r\n").collect();
    let mut vias_seen = 0;
    let mut out = Vec::new();
    for line in lines {
        let is_via = line
            .split_once(':')
            .is_some_and(|(n, _)| siplb_e2e::sip::canonical(n) == "via");
        if is_via {
            vias_seen += 1;
        }
        if is_via && vias_seen == 2 {
            let at = line.find(";received=").expect("client Via has received");
            let rest = &line[at + ";received=".len()..];
            let end = rest.find([';', ',']).unwrap_or(rest.len());
            out.push(format!("{};received={value}{}", &line[..at], &rest[end..]));
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\r\n").into_bytes()
}

#[test]
fn a_response_whose_client_via_says_received_with_or_without_brackets_is_relayed() {
    let mut tb = bed(Behaviour::Mute);
    for form in ["[::1]", "::1"] {
        let req = v6_register(&format!("{}@contoso.com", unique("u")));
        tb.client.send(tb.siplb.addr(), &req);
        let (server, fwd) = tb
            .farm
            .wait_forwarded(&req.call_id(), "1 REGISTER", ANSWER_WITHIN);
        let fwd = Msg::must_parse(&fwd.bytes);
        let resp = with_client_received(&response_to(&fwd, "SIP/2.0 200 OK"), form);
        tb.farm.get(&server).send_raw(tb.siplb.addr(), &resp);
        let got = tb.client.final_response(&req).unwrap_or_else(|| {
            panic!(
                "the response with received={form} was not relayed\n{}",
                show(&resp)
            )
        });
        assert_eq!(got.status(), Some(200));
        assert_eq!(got.vias().len(), 1, "{}", show(&got.raw));
        assert!(got.vias()[0].contains(&format!("received={form}")));
    }
}

#[test]
fn a_response_whose_ipv6_return_path_is_multicast_or_unspecified_is_dropped() {
    // ff01::1 is interface-local all-nodes multicast (it never leaves this host), :: the
    // unspecified address; both read from `received`, bracketed or not.
    let mut tb = bed(Behaviour::Mute);
    let ops = Ops::of(&tb.siplb);
    for bad in ["ff01::1", "[ff01::1]", "::", "[::]"] {
        let req = v6_register(&format!("{}@contoso.com", unique("u")));
        tb.client.send(tb.siplb.addr(), &req);
        let (server, fwd) = tb
            .farm
            .wait_forwarded(&req.call_id(), "1 REGISTER", ANSWER_WITHIN);
        let fwd = Msg::must_parse(&fwd.bytes);
        let genuine = response_to(&fwd, "SIP/2.0 200 OK");
        let drops = || {
            ops.metrics()
                .sum("siplb_drops_total", &[("reason", "bad_destination")])
        };
        let before = drops();
        let forged = with_client_received(&genuine, bad);
        tb.farm.get(&server).send_raw(tb.siplb.addr(), &forged);
        wait_until(
            &format!("a bad_destination drop for received={bad}"),
            ANSWER_WITHIN,
            || {
                let now = drops();
                (now > before).then_some(()).ok_or(format!("{now}"))
            },
        );
        tb.client.assert_no_answer(&req.call_id());
        // The genuine response still goes through.
        tb.farm.get(&server).send_raw(tb.siplb.addr(), &genuine);
        let got = tb.client.final_response(&req);
        assert_eq!(
            got.and_then(|m| m.status()),
            Some(200),
            "genuine after {bad}"
        );
    }
}
