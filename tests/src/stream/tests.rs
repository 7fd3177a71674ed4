//! The stream peers against each other, without siplb, so the e2e suites can trust them.

use std::io;
use std::net::IpAddr;

use super::*;
use crate::request::Request;
use crate::tls::Pki;

fn crlf_pieces(stream: &[u8], chunk: usize) -> Vec<Piece> {
    let mut u = Unframer::default();
    let mut got = Vec::new();
    for c in stream.chunks(chunk) {
        u.push(c);
        while let Some(p) = u.next() {
            got.push(p);
        }
    }
    got
}

#[test]
fn the_unframer_cuts_messages_by_content_length_in_any_split() {
    let a = Request::register("alice@contoso.com").bytes();
    let b = Request::invite("alice@contoso.com", "bob@contoso.com").bytes();
    let stream = [b"\r\n".as_slice(), &a, b"\r\n\r\n", &b].concat();
    let want = vec![
        Piece::Crlf,
        Piece::Message(a.clone()),
        Piece::Crlf,
        Piece::Crlf,
        Piece::Message(b.clone()),
    ];
    for chunk in [1, 2, 3, 7, 100, stream.len()] {
        assert_eq!(crlf_pieces(&stream, chunk), want, "reads of {chunk}");
    }
}

#[test]
fn tcp_register_is_answered_with_its_contact_and_recorded_per_connection() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    let req = client.register_request("alice@contoso.com");
    assert!(req.get("via").unwrap().starts_with("SIP/2.0/TCP "));
    let ok = client.transact(&req);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("contact"), req.get("contact").as_deref());
    assert_eq!(ok.header("expires"), Some("3600"));
    assert!(sip::param(ok.header("to").unwrap(), "tag").is_some());
    assert_eq!(ok.call_id(), Some(req.call_id().as_str()));

    let conns = backend.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer, client.local_addr());
    let got = backend.wait_request(&req.call_id(), ANSWER_WITHIN);
    assert_eq!((got.conn, got.peer), (conns[0].id, client.local_addr()));
    assert_eq!(got.bytes, req.bytes());
    assert_eq!(
        backend.conn_of_register("alice@contoso.com", ANSWER_WITHIN),
        conns[0].id
    );
}

#[test]
fn pipelined_and_byte_by_byte_requests_are_all_answered() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    let a = client.prepare(Request::new("MESSAGE", "sip:b@c", "a@c", "b@c"));
    let b =
        client.prepare(Request::new("MESSAGE", "sip:b@c", "a@c", "b@c").body("text/plain", b"hi"));
    client.send_raw(&[a.bytes(), b.bytes()].concat()).unwrap();
    let c = client.prepare(Request::new("SUBSCRIBE", "sip:b@c", "a@c", "b@c"));
    for byte in c.bytes() {
        client.send_raw(&[byte]).unwrap();
    }
    for req in [&a, &b, &c] {
        assert_eq!(
            client.final_response(req).map(|m| m.status()),
            Some(Some(200))
        );
    }
    assert_eq!(backend.requests().len(), 3);
    assert_eq!(
        backend.wait_request(&b.call_id(), ANSWER_WITHIN).msg().body,
        b"hi"
    );
}

#[test]
fn a_ping_gets_a_pong_and_is_counted() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    client.send_raw(b"\r\n\r\n").unwrap();
    assert!(client.wait_pongs(1, ANSWER_WITHIN));
    // A ping split over two writes is still one ping.
    client.send_raw(b"\r\n").unwrap();
    client.send_raw(b"\r\n").unwrap();
    assert!(client.wait_pongs(2, ANSWER_WITHIN));
    assert_eq!(backend.pings(), 2);
    assert!(backend.received().is_empty());
}

#[test]
fn the_backend_sends_notify_down_a_users_connection_and_gets_the_answer() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let alice = StreamClient::connect(backend.addr(), Dial::Tcp);
    let bob = StreamClient::connect(backend.addr(), Dial::Tcp);
    alice.register("alice@contoso.com");
    bob.register("bob@contoso.com");
    let conn = backend.conn_of_register("bob@contoso.com", ANSWER_WITHIN);

    let notify = backend.request("NOTIFY", "bob@contoso.com");
    let ok = backend.transact(conn, &notify, ANSWER_WITHIN);
    assert_eq!(ok.and_then(|m| m.status()), Some(200));
    let got = bob.wait_request(ANSWER_WITHIN, |m| m.method() == Some("NOTIFY"));
    assert_eq!(got.map(|m| m.raw), Some(notify.bytes()));
    assert!(alice.requests().is_empty());

    // BENOTIFY expects no answer, and gets none.
    let benotify = backend.request("BENOTIFY", "bob@contoso.com");
    assert!(backend.transact(conn, &benotify, QUIET_FOR).is_none());
    assert!(bob
        .wait_request(ANSWER_WITHIN, |m| m.method() == Some("BENOTIFY"))
        .is_some());
    assert_eq!(bob.answers().len(), 1, "only the NOTIFY is answered");
}

#[test]
fn a_mute_client_records_but_does_not_answer() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    client.set_mute(true);
    client.register("alice@contoso.com");
    let conn = backend.conn_of_register("alice@contoso.com", ANSWER_WITHIN);
    let invite = backend.request("INVITE", "alice@contoso.com");
    assert!(backend.transact(conn, &invite, QUIET_FOR).is_none());
    assert_eq!(client.requests().len(), 1);
}

#[test]
fn a_mute_backend_answers_only_probes_and_a_silent_one_nothing() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    backend.set_mute(true);
    let forwarded = client
        .prepare(Request::new("OPTIONS", "sip:c", "a@c", "b@c"))
        .insert_before("via", "Via: SIP/2.0/TCP 127.0.0.9:5060;branch=z9hG4bKlb");
    client.send(&forwarded);
    assert!(client.wait_for(QUIET_FOR, |_| true).is_none());
    let probe = client.prepare(Request::new("OPTIONS", "sip:c", "lb@c", "c"));
    assert_eq!(client.transact(&probe).status(), Some(200));
    assert_eq!(backend.probes().len(), 1);
    assert_eq!(
        backend.requests().len(),
        1,
        "the forwarded OPTIONS is a request"
    );

    backend.set_silent(true);
    let probe = client.prepare(Request::new("OPTIONS", "sip:c", "lb@c", "c"));
    client.send(&probe);
    client.send_raw(b"\r\n\r\n").unwrap();
    assert!(client.wait_for(QUIET_FOR, |_| true).is_none());
    assert_eq!(client.pongs(), 0);
}

#[test]
fn a_killed_backend_closes_its_connections_and_port_and_restarts_on_it() {
    let mut backend = StreamBackend::start("fe1", Listen::Tcp);
    let addr = backend.addr();
    let client = StreamClient::connect(addr, Dial::Tcp);
    client.register("alice@contoso.com");
    backend.kill();
    assert!(client.wait_closed(ANSWER_WITHIN).is_some());
    assert!(backend.open_connections().is_empty());
    let refused = StreamClient::try_connect(addr, None, Dial::Tcp);
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(io::ErrorKind::ConnectionRefused)
    );

    backend.restart();
    assert_eq!(backend.addr(), addr);
    let again = StreamClient::connect(addr, Dial::Tcp);
    again.register("alice@contoso.com");
    let conns = backend.connections();
    assert_eq!(conns.len(), 2, "ids go on across a restart");
    assert_eq!(
        backend.conn_of_register("alice@contoso.com", ANSWER_WITHIN),
        conns[1].id
    );
    assert_eq!(backend.requests().len(), 2, "records are kept");
}

#[test]
fn the_backend_closes_one_connection_and_the_client_sees_it() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let a = StreamClient::connect(backend.addr(), Dial::Tcp);
    let b = StreamClient::connect(backend.addr(), Dial::Tcp);
    a.register("a@c");
    b.register("b@c");
    backend.close(backend.conn_of_register("a@c", ANSWER_WITHIN));
    assert_eq!(a.wait_closed(ANSWER_WITHIN).as_deref(), Some("eof"));
    assert!(!b.is_closed());
    assert_eq!(b.register("b@c").status(), Some(200));
}

#[test]
fn a_client_shutdown_closes_the_backends_connection() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    let conn = backend.wait_connections(1, ANSWER_WITHIN)[0].id;
    client.shutdown().unwrap();
    assert!(backend.wait_closed(conn, ANSWER_WITHIN));
}

#[test]
fn a_client_connects_from_a_chosen_loopback_address() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let ip: IpAddr = "127.0.0.5".parse().unwrap();
    let client = StreamClient::try_connect(backend.addr(), Some(ip), Dial::Tcp).unwrap();
    assert_eq!(client.local_addr().ip(), ip);
    client.register("a@c");
    assert_eq!(backend.connections()[0].peer.ip(), ip);
}

#[test]
fn tls_with_a_client_certificate_the_ca_signed() {
    let pki = Pki::with_names(&["fe1.contoso.com"]);
    let backend = StreamBackend::start("fe1", Listen::Tls(pki.server_config(true)));
    let dial = Dial::Tls {
        config: pki.client_config(true),
        server_name: "fe1.contoso.com".to_string(),
    };
    let client = StreamClient::connect(backend.addr(), dial);
    let req = client.register_request("alice@contoso.com");
    assert!(req.get("via").unwrap().starts_with("SIP/2.0/TLS "));
    assert_eq!(client.transact(&req).status(), Some(200));
    client.send_raw(b"\r\n\r\n").unwrap();
    assert!(client.wait_pongs(1, ANSWER_WITHIN));
    let conn = &backend.connections()[0];
    assert_eq!(conn.sni.as_deref(), Some("fe1.contoso.com"));
    assert_eq!(conn.client_certs, vec![pki.client.cert.to_vec()]);
    // Over TLS too, the backend reaches the user's connection.
    let notify = backend.request("NOTIFY", "alice@contoso.com");
    assert_eq!(
        notify.get("via").unwrap().split(' ').next(),
        Some("SIP/2.0/TLS")
    );
    let ok = backend.transact(conn.id, &notify, ANSWER_WITHIN);
    assert_eq!(ok.and_then(|m| m.status()), Some(200));
}

#[test]
fn tls_refuses_a_client_without_a_certificate_or_from_another_ca() {
    let pki = Pki::new();
    let backend = StreamBackend::start("fe1", Listen::Tls(pki.server_config(true)));
    for config in [pki.client_config(false), Pki::new().client_config(true)] {
        // TLS 1.3: the client may finish its side before the server refuses it, so the refusal
        // shows as a failed connect or as the connection closing.
        match StreamClient::try_connect(backend.addr(), None, Dial::tls(config)) {
            Err(_) => {}
            Ok(client) => {
                let _ = client.send_raw(&client.register_request("a@c").bytes());
                assert!(client.wait_closed(ANSWER_WITHIN).is_some());
            }
        }
    }
    assert_eq!(backend.wait_connections(2, ANSWER_WITHIN).len(), 2);
    assert!(backend.wait_closed(1, ANSWER_WITHIN) && backend.wait_closed(2, ANSWER_WITHIN));
    assert!(backend.requests().is_empty());
}

#[test]
fn a_tls_client_checks_the_server_name() {
    let pki = Pki::new();
    let backend = StreamBackend::start("fe1", Listen::Tls(pki.server_config(false)));
    let ok = StreamClient::try_connect(backend.addr(), None, Dial::tls(pki.client_config(false)));
    assert!(ok.is_ok(), "127.0.0.1 is in the server leaf");
    let wrong = Dial::Tls {
        config: pki.client_config(false),
        server_name: "fe9.contoso.com".to_string(),
    };
    assert!(StreamClient::try_connect(backend.addr(), None, wrong).is_err());
    let pem = std::fs::read_to_string(&pki.server.cert_path).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(std::fs::read_to_string(&pki.server.key_path)
        .unwrap()
        .contains("PRIVATE KEY"));
    assert!(pki.ca_path.starts_with(pki.dir()));
}

#[test]
fn a_client_subscribes_for_its_user_over_its_transport() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    let sub = client.request("SUBSCRIBE", "alice@contoso.com");
    assert_eq!(client.transact(&sub).status(), Some(200));
    let got = backend.wait_request(&sub.call_id(), ANSWER_WITHIN).msg();
    assert_eq!(got.method(), Some("SUBSCRIBE"));
    assert_eq!(got.header("event"), Some("presence"));
    assert_eq!(got.from_aor(), got.to_aor());
    assert!(got.vias()[0].starts_with("SIP/2.0/TCP "));
    let notify = backend.request("NOTIFY", "alice@contoso.com");
    let contact = notify.get("contact").unwrap();
    assert_eq!(
        contact,
        format!("<sip:fe1@{};transport=tcp>", backend.addr())
    );
}

#[test]
fn a_registrar_echoes_path_and_a_uas_record_route() {
    let backend = StreamBackend::start("fe1", Listen::Tcp);
    let client = StreamClient::connect(backend.addr(), Dial::Tcp);
    let path = "<sip:lbf-1-tcp-ab@127.0.0.1:5060;transport=tcp;lr>";
    let reg = client
        .register_request("alice@contoso.com")
        .with("Path", path);
    assert_eq!(client.transact(&reg).header("path"), Some(path));
    let got = backend
        .register_of("alice@contoso.com", ANSWER_WITHIN)
        .msg();
    assert_eq!(got.header("path"), Some(path));

    let rr = "<sip:127.0.0.1:5060;transport=tcp;lr>";
    let invite = client.prepare(Request::invite("alice@contoso.com", "bob@contoso.com"));
    let ok = client.transact(&invite.with("Record-Route", rr));
    assert_eq!(ok.header("record-route"), Some(rr));
    let message = client
        .request("MESSAGE", "alice@contoso.com")
        .with("Record-Route", rr);
    assert_eq!(client.transact(&message).header("record-route"), None);
}
