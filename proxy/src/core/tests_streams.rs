//! The core's rules for messages on connections: flows named by siplb's branch, transport
//! tokens, server requests down the client flow and the answers back up.

use std::net::SocketAddr;
use std::path::Path;

use super::*;
use crate::config::parse;
use crate::table::{ConfigHealth, Local, RoutingTable};

const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
tcp = ["127.0.0.1:5060"]
tls = [{ address = "127.0.0.1:5061", cert = "tls/demo.crt", key = "tls/demo.key" }]

[[pool]]
name = "udp"
servers = [{ address = "127.0.0.1:5071" }]

[[pool]]
name = "tcp"
servers = [{ address = "127.0.0.1:5081", transport = "tcp" }]

[[pool]]
name = "tls"
servers = [{ address = "127.0.0.1:5091", transport = "tls" }]

[[route]]
domain = "u.example"
pool = "udp"

[[route]]
domain = "t.example"
pool = "tcp"

[[route]]
domain = "s.example"
pool = "tls"
"#;

const CLIENT: &str = "192.0.2.7:50123";

fn table() -> RoutingTable {
    // Beside the repository's config.toml, so the TLS listener's files are the demo pair
    // (validation reads them).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../t.toml");
    let cfg = parse(&path, CFG).expect("valid config");
    let local = Local {
        udp: vec!["127.0.0.1:5060".parse().unwrap()],
        tcp: vec!["127.0.0.1:5060".parse().unwrap()],
        tls: vec!["127.0.0.1:5061".parse().unwrap()],
    };
    let adv = cfg.listen.advertise_or(local.udp[0]);
    RoutingTable::build(&cfg, adv, local, 1, &ConfigHealth)
}

fn register(domain: &str, transport: &str) -> String {
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
Via: SIP/2.0/{transport} 10.1.1.1:50123;branch=z9hG4bK-r1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@{domain}>;tag=ft\r\n\
To: <sip:alice@{domain}>\r\n\
Call-ID: reg-1\r\n\
CSeq: 1 REGISTER\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn flow(conn: ConnId, transport: Transport) -> Arrival {
    Arrival {
        src: CLIENT.parse().unwrap(),
        transport,
        conn: Some(conn),
        client: None,
    }
}

fn run(t: &RoutingTable, msg: &str, at: Arrival) -> (Outcome, String) {
    let mut w = Worker::new();
    let o = w.handle_from(t, msg.as_bytes(), &at);
    (o, String::from_utf8_lossy(&w.out).into_owned())
}

fn as_response(forwarded: &str) -> String {
    let first = forwarded.find("\r\n").unwrap();
    format!("SIP/2.0 200 OK{}", &forwarded[first..])
}

#[test]
fn a_tcp_client_to_a_udp_server_gets_its_answer_down_its_flow() {
    let t = table();
    let (o, out) = run(
        &t,
        &register("u.example", "TCP"),
        flow(0x2a, Transport::Tcp),
    );
    assert_eq!(o.action, Action::Forward("127.0.0.1:5071".parse().unwrap()));
    let via = out.split("\r\n").nth(1).unwrap();
    assert!(
        via.starts_with("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-lb")
            && via.ends_with(".2a"),
        "{via}"
    );
    assert!(
        out.contains(
            "Via: SIP/2.0/TCP 10.1.1.1:50123;branch=z9hG4bK-r1;rport=50123;received=192.0.2.7"
        ),
        "{out}"
    );
    let server: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    let (back, relayed) = run(&t, &as_response(&out), Arrival::udp(server));
    assert_eq!(back.action, Action::ToConn(0x2a));
    assert!(
        relayed.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.1.1.1"),
        "{relayed}"
    );
    // A response naming another flow than the one the branch was made for is not siplb's.
    let forged = as_response(&out).replacen(".2a\r\n", ".2b\r\n", 1);
    let (o, _) = run(&t, &forged, Arrival::udp(server));
    assert_eq!(o.action, Action::Drop(DropReason::NotOurs));
}

#[test]
fn a_udp_client_to_a_tcp_server_goes_over_a_backend_connection_and_back_over_udp() {
    let t = table();
    let (o, out) = run(
        &t,
        &register("t.example", "UDP"),
        Arrival::udp(CLIENT.parse().unwrap()),
    );
    assert_eq!(
        o.action,
        Action::ToServer {
            addr: "127.0.0.1:5081".parse().unwrap(),
            transport: Transport::Tcp,
            pool: 1,
            server: 0
        }
    );
    assert!(
        out.contains("Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-lb"),
        "{out}"
    );
    // The answer arrives on the shared backend connection (id 7, serving no client flow).
    let at = Arrival {
        src: "127.0.0.1:5081".parse().unwrap(),
        transport: Transport::Tcp,
        conn: Some(7),
        client: None,
    };
    let (back, _) = run(&t, &as_response(&out), at);
    assert_eq!(
        back.action,
        Action::Forward("192.0.2.7:50123".parse().unwrap())
    );
}

#[test]
fn a_tls_client_to_a_tls_server_and_the_servers_own_requests_down_the_flow() {
    let t = table();
    let (o, out) = run(&t, &register("s.example", "TLS"), flow(5, Transport::Tls));
    assert!(matches!(
        o.action,
        Action::ToServer {
            transport: Transport::Tls,
            ..
        }
    ));
    assert!(
        out.contains("Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-lb"),
        "{out}"
    );

    // The server sends a NOTIFY on backend connection 9, which serves flow 5.
    let server: SocketAddr = "127.0.0.1:5091".parse().unwrap();
    let on_backend = Arrival {
        src: server,
        transport: Transport::Tls,
        conn: Some(9),
        client: Some(Peer {
            conn: 5,
            addr: CLIENT.parse().unwrap(),
            transport: Transport::Tls,
        }),
    };
    let notify = "NOTIFY sip:alice@10.1.1.1:50123;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS fe1.s.example:5061;branch=z9hG4bK-n1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@s.example>;tag=s1\r\n\
To: <sip:alice@s.example>;tag=c1\r\n\
Call-ID: sub-1\r\n\
CSeq: 3 NOTIFY\r\n\
Event: presence\r\n\
Content-Length: 0\r\n\r\n";
    let (o, out) = run(&t, notify, on_backend);
    assert_eq!(
        o.action,
        Action::ToConn(5),
        "down the client's flow, not routed by key"
    );
    let via = out.split("\r\n").nth(1).unwrap();
    assert!(
        via.starts_with("Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-lb") && via.ends_with(".9"),
        "{via}"
    );
    assert!(out.contains("Max-Forwards: 69"), "{out}");
    assert!(
        out.contains("branch=z9hG4bK-n1;received=127.0.0.1"),
        "{out}"
    );

    // The client's 200 comes up flow 5 and goes down backend connection 9.
    let (back, relayed) = run(&t, &as_response(&out), flow(5, Transport::Tls));
    assert_eq!(back.action, Action::ToConn(9));
    assert!(
        relayed.contains("Via: SIP/2.0/TLS fe1.s.example:5061;branch=z9hG4bK-n1"),
        "{relayed}"
    );
    assert_eq!(back.passive, None);
    // The same answer from another address (another client) does not verify.
    let mut elsewhere = flow(5, Transport::Tls);
    elsewhere.src = "192.0.2.8:50123".parse().unwrap();
    assert_eq!(
        run(&t, &as_response(&out), elsewhere).0.action,
        Action::Drop(DropReason::NotOurs)
    );
}

#[test]
fn sips_goes_only_to_tls_servers() {
    let t = table();
    for (domain, code) in [
        ("t.example", Some("480")),
        ("u.example", Some("480")),
        ("s.example", None),
    ] {
        let req = register(domain, "TLS").replacen("REGISTER sip:", "REGISTER sips:", 1);
        let (o, out) = run(&t, &req, flow(3, Transport::Tls));
        match code {
            Some(code) => {
                assert!(matches!(o.action, Action::Reply(_)), "{domain}: {o:?}");
                assert_eq!(&out[8..11], code, "{out}");
                assert!(out.starts_with("SIP/2.0 480 SIPS Needs TLS\r\n"), "{out}");
            }
            None => assert!(matches!(o.action, Action::ToServer { .. })),
        }
    }
}

#[test]
fn answers_on_a_connection_are_replies_down_it() {
    let t = table();
    // No route for this domain: 404, down the connection whatever the Via names.
    let req = register("nowhere.example", "TCP").replacen("10.1.1.1:50123", "0.0.0.0:5060", 1);
    let (o, out) = run(&t, &req, flow(4, Transport::Tcp));
    assert!(matches!(o.action, Action::Reply(_)), "{o:?}");
    assert!(out.starts_with("SIP/2.0 404"), "{out}");
}

fn token_of(out: &str, header: &str) -> String {
    let line = out
        .split("\r\n")
        .find(|l| l.starts_with(header))
        .unwrap_or_else(|| panic!("no {header} in {out}"));
    line[line.find("<sip:").unwrap() + 5..line.find('@').unwrap()].to_string()
}

#[test]
fn a_path_on_a_register_that_supports_it_brings_the_servers_requests_down_the_flow() {
    let t = table();
    let plain = register("u.example", "TLS");
    // Without `Supported: path` nothing is added (RFC 3327 §5.2): Lync clients.
    let (_, out) = run(&t, &plain, flow(0x11, Transport::Tls));
    assert!(!out.contains("Path:"), "{out}");
    let with_path = plain.replacen(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nSupported: gruu, path\r\n",
        1,
    );
    let (o, out) = run(&t, &with_path, flow(0x11, Transport::Tls));
    assert_eq!(o.action, Action::Forward("127.0.0.1:5071".parse().unwrap()));
    let path = out
        .split("\r\n")
        .find(|l| l.starts_with("Path:"))
        .unwrap()
        .to_string();
    assert!(
        path.ends_with("@127.0.0.1:5061;transport=tls;lr>"),
        "{path}"
    );
    let token = token_of(&out, "Path:");

    // The registrar's later request routes through that Path: down flow 0x11.
    let server: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    let notify = format!(
        "NOTIFY sip:alice@10.1.1.1:50123;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-n2\r\n\
Route: <sip:{token}@127.0.0.1:5061;transport=tls;lr>\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@u.example>;tag=s1\r\n\
To: <sip:alice@u.example>;tag=c1\r\n\
Call-ID: sub-2\r\n\
CSeq: 4 NOTIFY\r\n\
Content-Length: 0\r\n\r\n"
    );
    let (o, out) = run(&t, &notify, Arrival::udp(server));
    assert_eq!(o.action, Action::ToConn(0x11));
    assert!(!out.contains("Route:"), "our Route is removed: {out}");
    assert!(
        out.contains("Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-lb"),
        "{out}"
    );
    // The client's answer on the flow goes back to the server over UDP.
    let (back, _) = run(&t, &as_response(&out), flow(0x11, Transport::Tls));
    assert_eq!(back.action, Action::Forward(server));

    // Someone else's token, or one altered, is refused; so is a token from a non-server.
    let altered = notify.replacen(&token, &token.replacen("lbf-11-", "lbf-12-", 1), 1);
    let (o, out) = run(&t, &altered, Arrival::udp(server));
    assert!(
        matches!(o.action, Action::Reply(_)) && out.starts_with("SIP/2.0 403"),
        "{out}"
    );
    let (o, out) = run(
        &t,
        &notify,
        Arrival::udp("192.0.2.99:5060".parse().unwrap()),
    );
    assert!(
        matches!(o.action, Action::Reply(_)) && out.starts_with("SIP/2.0 403"),
        "{out}"
    );
}

#[test]
fn a_dialog_from_an_outbound_client_is_record_routed_with_its_flow() {
    let t = table();
    let invite = "INVITE sip:bob@t.example SIP/2.0\r\n\
Via: SIP/2.0/TCP 10.1.1.1:50123;branch=z9hG4bK-i1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@t.example>;tag=a\r\n\
To: <sip:bob@t.example>\r\n\
Call-ID: call-ob\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@10.1.1.1:50123;transport=tcp;ob>\r\n\
Content-Length: 0\r\n\r\n";
    let (o, out) = run(&t, invite, flow(0x30, Transport::Tcp));
    assert!(matches!(o.action, Action::ToServer { .. }));
    let rr = out
        .split("\r\n")
        .find(|l| l.starts_with("Record-Route:"))
        .unwrap();
    assert!(rr.starts_with("Record-Route: <sip:lbf-30-tcp-"), "{rr}");
    assert!(rr.ends_with("@127.0.0.1:5060;transport=tcp;lr>"), "{rr}");
    // Without `ob` (a Lync client), no Record-Route: the backend connection is the way back.
    let plain = invite.replacen(";ob>", ">", 1);
    let (_, out) = run(&t, &plain, flow(0x30, Transport::Tcp));
    assert!(!out.contains("Record-Route"), "{out}");
}

#[test]
fn over_tcp_and_tls_counts_name_the_server_a_request_went_to_and_a_response_came_from() {
    let t = table();
    for (domain, transport, pool) in [
        ("t.example", Transport::Tcp, 1),
        ("s.example", Transport::Tls, 2),
    ] {
        let via = transport.as_str().to_ascii_uppercase();
        let (o, out) = run(&t, &register(domain, &via), flow(5, transport));
        assert_eq!(
            o.count,
            Some(Count::Request {
                pool,
                method: crate::stats::method_index(b"REGISTER"),
                server: Some(0),
            }),
            "{transport:?}"
        );
        // Its answer on the backend connection (id 9) that serves flow 5.
        let server = t.server(pool, 0).address;
        let at = Arrival {
            src: server,
            transport,
            conn: Some(9),
            client: None,
        };
        let (back, _) = run(&t, &as_response(&out), at);
        assert_eq!(back.action, Action::ToConn(5), "{transport:?}");
        assert_eq!(
            back.count,
            Some(Count::Response {
                code: 200,
                from: Some((pool, 0)),
            }),
            "{transport:?}"
        );
    }
    // A request a server sends down a client's flow goes to no server; the client's answer to
    // it comes from no server.
    let on_backend = Arrival {
        src: "127.0.0.1:5091".parse().unwrap(),
        transport: Transport::Tls,
        conn: Some(9),
        client: Some(Peer {
            conn: 5,
            addr: CLIENT.parse().unwrap(),
            transport: Transport::Tls,
        }),
    };
    let notify = "NOTIFY sip:alice@10.1.1.1:50123;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS fe1.s.example:5061;branch=z9hG4bK-n1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@s.example>;tag=s1\r\n\
To: <sip:alice@s.example>;tag=c1\r\n\
Call-ID: sub-1\r\n\
CSeq: 3 NOTIFY\r\n\
Event: presence\r\n\
Content-Length: 0\r\n\r\n";
    let (o, out) = run(&t, notify, on_backend);
    assert!(
        matches!(o.count, Some(Count::Request { server: None, .. })),
        "{:?}",
        o.count
    );
    let (back, _) = run(&t, &as_response(&out), flow(5, Transport::Tls));
    assert_eq!(back.action, Action::ToConn(9));
    assert_eq!(
        back.count,
        Some(Count::Response {
            code: 200,
            from: None
        })
    );
}
