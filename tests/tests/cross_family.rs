//! Forwarding across address families: with UDP listeners on IPv4 and IPv6, a request that
//! arrives on one family for a server of the other goes out from siplb's socket of the server's
//! family, and the server's answer goes back to the client from a socket of the client's family.
//! (A socket cannot send to the other family: sent from the socket it came in on, the request
//! would be refused by the kernel and lost.) Both directions, against the real binary. A config
//! that would leave a server without a listener of its family is refused, at reload as at start.

use std::net::SocketAddr;
use std::time::Duration;

use siplb_e2e::ops::Ops;
use siplb_e2e::reload::write_in_place;
use siplb_e2e::{Backend, Behaviour, Client, Request, Siplb};

/// Listeners on both families, one pool with the one server `backend`.
fn config(backend: &Backend) -> String {
    format!(
        r#"[listen]
udp = ["127.0.0.1:0", "[::1]:0"]
workers = 1

[[pool]]
name = "fe"
servers = [ {{ id = "fe1", address = "{}" }} ]

[[route]]
pool = "fe"
"#,
        backend.addr()
    )
}

/// siplb's listener of the family of `ip`.
fn listener(siplb: &Siplb, v6: bool) -> SocketAddr {
    *siplb
        .udp()
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .unwrap_or_else(|| {
            panic!(
                "siplb listens on no {} address",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
}

/// `client` registers through siplb's listener of its own family; the backend (of the other
/// family) must receive the REGISTER from siplb's socket of the backend's family, and the
/// client must get the backend's 200 from siplb's socket of the client's family.
fn register_across(client_v6: bool) {
    let backend_addr: SocketAddr = if client_v6 {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let backend =
        Backend::start_on("fe1", Behaviour::Accept, backend_addr).expect("bind the backend");
    let siplb = Siplb::start(&config(&backend));
    let entry = listener(&siplb, client_v6);
    let exit = listener(&siplb, !client_v6);
    let mut client = Client::bind(if client_v6 { "::1" } else { "127.0.0.1" });

    let req = Request::register("alice@contoso.com");
    let answer = client.transact(entry, &req);
    assert_eq!(
        answer.status(),
        Some(200),
        "the client gets the server's answer"
    );

    let got = backend.wait_call_id(&req.call_id(), 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "the backend received the REGISTER once");
    assert_eq!(
        got[0].peer, exit,
        "forwarded from siplb's listener of the backend's family"
    );
    // A server answering at the sent-by port (RFC 3261 §18.2.2) must reach siplb on its own
    // family: siplb's Via names that listener, not the other family's.
    let sent_by = got[0].msg().and_then(|m| m.top_via_sent_by());
    let exit_sent_by = match exit {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    assert_eq!(
        sent_by.as_deref(),
        Some(exit_sent_by.as_str()),
        "siplb's Via names its listener of the backend's family"
    );
}

#[test]
fn an_ipv4_client_reaches_an_ipv6_server_and_gets_its_answer() {
    register_across(false);
}

#[test]
fn an_ipv6_client_reaches_an_ipv4_server_and_gets_its_answer() {
    register_across(true);
}

#[test]
fn a_reload_that_leaves_an_ipv6_server_without_an_ipv6_listener_is_refused() {
    let backend = Backend::start_on("fe1", Behaviour::Accept, "[::1]:0".parse().unwrap())
        .expect("bind the backend");
    let text = config(&backend) + "\n[ops]\nlisten = \"127.0.0.1:0\"\n";
    let siplb = Siplb::start(&text);
    let ops = Ops::of(&siplb);
    let entry = listener(&siplb, false);

    let v4_only = text.replace(
        r#"udp = ["127.0.0.1:0", "[::1]:0"]"#,
        r#"udp = ["127.0.0.1:0"]"#,
    );
    assert_ne!(v4_only, text);
    write_in_place(siplb.config().path(), &v4_only);
    let error = ops.wait_last_error();
    for says in [
        "pool[0].servers[0].address",
        "\"fe1\"",
        "IPv6",
        "[listen] udp",
    ] {
        assert!(
            error.contains(says),
            "the refusal does not say {says}: {error}"
        );
    }
    assert_eq!(ops.status().config_version(), 1, "the running config stays");

    let mut client = Client::new();
    let req = Request::register("bob@contoso.com");
    assert_eq!(client.transact(entry, &req).status(), Some(200));
    let got = backend.wait_call_id(&req.call_id(), 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "still forwarded to the IPv6 server");
}
