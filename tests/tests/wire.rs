//! Byte preservation on the forms rsip 0.4 gets wrong: compact headers, several Vias on one line,
//! IPv6 hosts, extension methods, a body with bytes beyond Content-Length.
//!
//! For each, what the server received is exactly what the client sent once siplb's own edits
//! (its Via line, `received`, the `rport` value, the Max-Forwards decrement) are undone, and the
//! response the client received is exactly the server's less siplb's Via.

use siplb_e2e::request::{unique, ContentLength};
use siplb_e2e::sip::show;
use siplb_e2e::{Behaviour, Msg, Request, Testbed};

fn setup(behaviour: Behaviour) -> Testbed {
    Testbed::single_pool(3, behaviour)
}

/// A REGISTER written with every compact header name RFC 3261 has for it.
fn compact_register(aor: &str) -> Request {
    Request {
        start: "REGISTER sip:contoso.com SIP/2.0".into(),
        lines: vec![
            format!(
                "v: SIP/2.0/UDP 127.0.0.2:5060;rport;branch={}",
                unique("z9hG4bK")
            ),
            "Max-Forwards: 70".into(),
            format!("f: <sip:{aor}>;tag={}", unique("t")),
            format!("t: <sip:{aor}>"),
            format!("i: {}", unique("c")),
            "CSeq: 1 REGISTER".into(),
            "m: <sip:127.0.0.2:5060>".into(),
            "l: 0".into(),
        ],
        body: Vec::new(),
        content_length: ContentLength::Omit,
    }
}

#[test]
fn compact_headers_pass_intact_and_key_like_full_names() {
    let mut s = setup(Behaviour::Accept);
    for aor in ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"] {
        let compact = s.exchange(&compact_register(aor).bytes());
        let full = s.exchange(&Request::register(aor).bytes());
        assert_eq!(
            compact.server, full.server,
            "{aor}: compact `t:` keyed differently from `To:`"
        );
    }
}

#[test]
fn several_vias_on_one_line_are_forwarded_and_kept() {
    let mut s = setup(Behaviour::Accept);
    let via = format!(
        "Via: SIP/2.0/UDP 127.0.0.2:5060;rport;branch={}, SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK2",
        unique("z9hG4bK")
    );
    let req = Request::new(
        "OPTIONS",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .set_line("via", &via)
    .insert_before(
        "max-forwards",
        "Via: SIP/2.0/UDP 10.0.0.8:5060;branch=z9hG4bK3",
    );
    let ex = s.exchange(&req.bytes());
    let response = ex.response.expect("a response");
    assert_eq!(response.vias().len(), 3, "{}", show(&response.raw));
}

#[test]
fn when_siplb_via_shares_a_line_in_a_response_only_it_is_removed() {
    let mut s = setup(Behaviour::CombineVias);
    let req = Request::register("alice@contoso.com").set_line(
        "via",
        &format!(
            "Via: SIP/2.0/UDP 127.0.0.2:5060;rport;branch={}, SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK2",
            unique("z9hG4bK")
        ),
    );
    let answer = s.client.transact(s.siplb.addr(), &req);
    let server = s.farm.holder(&req.call_id());
    let sent = Msg::must_parse(&server.sent_with_call_id(&req.call_id())[0].bytes);
    // The server wrote `Via: siplb, client, 10.0.0.7` on one line; the client gets the last two.
    assert_eq!(sent.header_lines("via").count(), 1);
    assert_eq!(
        answer.vias(),
        sent.vias()[1..].to_vec(),
        "{}",
        show(&answer.raw)
    );
    let others = |m: &Msg| -> Vec<String> {
        m.headers
            .iter()
            .filter(|h| !h.is("via"))
            .map(|h| h.raw.clone())
            .collect()
    };
    assert_eq!(others(&answer), others(&sent));
    assert_eq!(
        (answer.start.as_str(), &answer.body),
        (sent.start.as_str(), &sent.body)
    );
}

#[test]
fn ipv6_hosts_in_via_from_and_to_pass_intact() {
    let mut s = setup(Behaviour::Accept);
    let aor = "alice@[2001:db8::10]";
    let req = Request::new("REGISTER", "sip:[2001:db8::10]", aor, aor)
        .set_line(
            "via",
            &format!(
                "Via: SIP/2.0/UDP [2001:db8::1]:5060;rport;branch={}",
                unique("z9hG4bK")
            ),
        )
        .set("To", "<sip:alice@[2001:db8::10]:5060>")
        .with("Contact", "<sip:alice@[2001:db8::1]:5060;transport=udp>");
    let first = s.exchange(&req.bytes());
    assert_eq!(first.response.and_then(|m| m.status()), Some(200));
    // The same user again (To without the port): the same server.
    let again = Request::new("REGISTER", "sip:[2001:db8::10]", aor, aor);
    assert_eq!(s.exchange(&again.bytes()).server, first.server);
}

#[test]
fn extension_methods_pass_intact() {
    let mut s = setup(Behaviour::Accept);
    for method in ["BENOTIFY", "SERVICE", "FOO"] {
        let req = Request::new(
            method,
            "sip:alice@contoso.com",
            "alice@contoso.com",
            "alice@contoso.com",
        )
        .with("Event", "registration")
        .body("application/xml", b"<x/>");
        let ex = s.exchange(&req.bytes());
        let answered = ex.response.and_then(|m| m.status());
        assert_eq!(answered, (method != "BENOTIFY").then_some(200), "{method}");
    }
}

#[test]
fn a_body_is_cut_at_content_length() {
    let mut s = setup(Behaviour::Accept);
    let req = Request::new(
        "MESSAGE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .body("text/plain", b"hello");
    let expected = req.bytes();
    let mut sent = expected.clone();
    sent.extend_from_slice(b"GARBAGE beyond Content-Length\x00\xff");
    s.exchange_expecting(&sent, &expected);
}

#[test]
fn header_names_in_any_case_and_tight_spacing_pass_intact() {
    let mut s = setup(Behaviour::Accept);
    let aor = "dave@contoso.com";
    let odd = Request {
        start: "REGISTER sip:contoso.com SIP/2.0".into(),
        lines: vec![
            format!(
                "via: SIP/2.0/UDP 127.0.0.2:5060;rport;branch={}",
                unique("z9hG4bK")
            ),
            "max-forwards:70".into(),
            format!("FROM:<sip:{aor}>;tag={}", unique("t")),
            format!("to:  <sip:{aor}>"),
            format!("CALL-ID: {}", unique("c")),
            "cseq: 1 REGISTER".into(),
            "content-length: 0".into(),
        ],
        body: Vec::new(),
        content_length: ContentLength::Omit,
    };
    let odd = s.exchange(&odd.bytes());
    let plain = s.exchange(&Request::register(aor).bytes());
    assert_eq!(
        odd.server, plain.server,
        "`to:` keyed differently from `To:`"
    );
}

#[test]
fn display_names_and_uri_parameters_do_not_change_the_key() {
    let mut s = setup(Behaviour::Accept);
    for aor in ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"] {
        let dressed = Request::register(aor)
            .set(
                "From",
                &format!(
                    "\"Smith, <Al>\" <sip:{aor};transport=tcp>;tag={};epid=01ab",
                    unique("t")
                ),
            )
            .set("To", &format!("\"Smith, <Al>\" <sip:{aor};transport=tcp>"));
        let dressed = s.exchange(&dressed.bytes());
        let plain = s.exchange(&Request::register(aor).bytes());
        assert_eq!(
            dressed.server, plain.server,
            "{aor}: the display name changed the key"
        );
    }
}

#[test]
fn without_content_length_the_whole_datagram_is_the_body() {
    // RFC 3261 §18.3: over UDP a missing Content-Length means the body runs to the datagram's end.
    let mut s = setup(Behaviour::Accept);
    let mut req = Request::new(
        "MESSAGE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .body("text/plain", b"hello, no length");
    req.content_length = ContentLength::Omit;
    s.exchange(&req.bytes());
}
