//! Forged responses are not relayed. siplb relays a response only when it comes from the exact
//! address (IP and port) of a configured server and its top Via's branch is one siplb made for
//! a request sent to that server (`z9hG4bK-lb` + a keyed hash, recomputed from the next Via
//! and the sender); otherwise the response is dropped and counted in
//! `siplb_drops_total{reason="unknown_sender"}` or `{reason="not_ours"}`. It never sends to a
//! broadcast, multicast or unspecified address (`reason="bad_destination"`; RFC 4475 §3.3.10
//! "200 OK Response with Broadcast Via Header Field Value"), and `siplb check` refuses servers
//! at such addresses. Replicas sharing the branch key (`SIPLB_BRANCH_KEY` or
//! `[routing] branch_key_file`) relay each other's responses; with different keys they don't.
//!
//! Every forged response is followed by the genuine one, which must still go through: what
//! was dropped was dropped for being forged, not for being unreadable.
//!
//! siplb listens on 127.0.0.1 only, so whatever it sends — even to 224.0.0.1 or 0.0.0.0 on a
//! binary without the check — leaves by the loopback interface.

use std::net::{SocketAddr, UdpSocket};

use siplb_e2e::client::ANSWER_WITHIN;
use siplb_e2e::ops::{wait_until, Ops};
use siplb_e2e::process::run_cli;
use siplb_e2e::request::unique;
use siplb_e2e::sip::show;
use siplb_e2e::{
    assert_response_intact, response_to, Backend, Behaviour, Client, Config, ConfigFile, Msg,
    Request, Server, Siplb,
};

const KEY: &str = "e2e-shared-branch-key-0123456789abcdef";

/// One server `fe1` that answers nothing by itself (the test writes its responses), behind
/// siplb with `config` and the ops endpoint.
struct Bed {
    backend: Backend,
    siplb: Siplb,
    ops: Ops,
    client: Client,
}

fn bed() -> Bed {
    let backend = Backend::start("fe1", Behaviour::Mute);
    let config = Config::single_pool(std::slice::from_ref(&backend)).ops();
    let siplb = Siplb::start(&config.render());
    let ops = Ops::of(&siplb);
    Bed {
        backend,
        siplb,
        ops,
        client: Client::new(),
    }
}

fn drops(ops: &Ops, reason: &str) -> f64 {
    ops.metrics()
        .sum("siplb_drops_total", &[("reason", reason)])
}

/// Waits until `siplb_drops_total{reason}` has grown past `before`.
fn wait_drop(ops: &Ops, reason: &str, before: f64) {
    wait_until(
        &format!("siplb_drops_total{{reason=\"{reason}\"}} above {before}"),
        ANSWER_WITHIN,
        || {
            let now = drops(ops, reason);
            (now > before)
                .then_some(())
                .ok_or(format!("{now}\n{}", ops.metrics().text))
        },
    );
}

/// Sends a REGISTER through siplb and returns it with the request the server received.
fn forwarded_register(bed: &mut Bed) -> (Request, Msg) {
    let req = Request::register(&format!("{}@contoso.com", unique("u")));
    bed.client.send(bed.siplb.addr(), &req);
    let got = bed.backend.wait_request(&req.call_id(), ANSWER_WITHIN);
    (req, Msg::must_parse(&got.bytes))
}

/// The genuine response goes through, intact but for siplb's Via.
fn genuine_goes_through(bed: &mut Bed, req: &Request, fwd: &Msg) {
    let genuine = response_to(fwd, "SIP/2.0 200 OK");
    bed.backend.send_raw(bed.siplb.addr(), &genuine);
    let got = bed
        .client
        .final_response(req)
        .unwrap_or_else(|| panic!("the genuine response was not relayed\n{}", show(&genuine)));
    assert_response_intact(&genuine, &got.raw, bed.siplb.addr());
}

#[test]
fn a_response_from_the_servers_ip_but_another_port_is_not_relayed() {
    let mut bed = bed();
    let (req, fwd) = forwarded_register(&mut bed);
    let genuine = response_to(&fwd, "SIP/2.0 200 OK");
    let before = drops(&bed.ops, "unknown_sender");
    // Same IP as fe1, another port: not a configured server's address.
    let impostor = UdpSocket::bind("127.0.0.1:0").expect("bind");
    assert_ne!(impostor.local_addr().ok(), Some(bed.backend.addr()));
    impostor
        .send_to(&genuine, bed.siplb.addr())
        .expect("send forged response");
    wait_drop(&bed.ops, "unknown_sender", before);
    bed.client.assert_no_answer(&req.call_id());
    genuine_goes_through(&mut bed, &req, &fwd);
}

/// `bytes` with its first siplb branch replaced by `forged`.
fn with_branch(bytes: &[u8], forged: &str) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).expect("response is text");
    let at = text.find("branch=z9hG4bK-lb").expect("siplb's branch") + "branch=".len();
    let end = at + text[at..].find(['\r', ';', ',']).expect("branch end");
    assert_ne!(&text[at..end], forged, "the forged branch is the real one");
    format!("{}{forged}{}", &text[..at], &text[end..]).into_bytes()
}

#[test]
fn a_response_with_a_made_up_siplb_branch_is_not_relayed() {
    let mut bed = bed();
    let (req, fwd) = forwarded_register(&mut bed);
    let genuine = response_to(&fwd, "SIP/2.0 200 OK");
    for forged in ["z9hG4bK-lb0123456789abcdef", "z9hG4bK-lbdeadbeefdeadbeef"] {
        let before = drops(&bed.ops, "not_ours");
        bed.backend
            .send_raw(bed.siplb.addr(), &with_branch(&genuine, forged));
        wait_drop(&bed.ops, "not_ours", before);
        bed.client.assert_no_answer(&req.call_id());
    }
    genuine_goes_through(&mut bed, &req, &fwd);
}

#[test]
fn a_response_from_one_server_with_a_branch_made_for_another_is_not_relayed() {
    // The branch is keyed on the next hop: fe2 cannot answer a request siplb sent to fe1.
    let fe1 = Backend::start("fe1", Behaviour::Mute);
    let fe2 = Backend::start("fe2", Behaviour::Mute);
    let config = Config::new()
        .pool("one", vec![Server::of(&fe1)])
        .pool("two", vec![Server::of(&fe2)])
        .route(siplb_e2e::Route::to("one").domain("contoso.com"))
        .route(siplb_e2e::Route::to("two").domain("fabrikam.com"))
        .ops();
    let siplb = Siplb::start(&config.render());
    let ops = Ops::of(&siplb);
    let mut client = Client::new();
    let req = Request::register(&format!("{}@contoso.com", unique("u")));
    client.send(siplb.addr(), &req);
    let fwd = Msg::must_parse(&fe1.wait_request(&req.call_id(), ANSWER_WITHIN).bytes);
    let resp = response_to(&fwd, "SIP/2.0 200 OK");
    let before = drops(&ops, "not_ours");
    fe2.send_raw(siplb.addr(), &resp);
    wait_drop(&ops, "not_ours", before);
    client.assert_no_answer(&req.call_id());
    fe1.send_raw(siplb.addr(), &resp);
    let got = client.final_response(&req).expect("fe1's response relayed");
    assert_response_intact(&resp, &got.raw, siplb.addr());
}

/// `resp` with the client's Via (the second Via value) pointed at `host`: its `received`
/// replaced (the address a response goes to).
fn with_return_to(resp: &[u8], host: &str) -> Vec<u8> {
    let text = String::from_utf8(resp.to_vec()).expect("response is text");
    let at = text.find(";received=").expect("client Via has received") + ";received=".len();
    let end = at + text[at..].find([';', ',', '\r']).expect("received end");
    format!("{}{host}{}", &text[..at], &text[end..]).into_bytes()
}

/// `resp` with its second Via line (the client's) replaced by `line`.
fn with_client_via_line(resp: &[u8], line: &str) -> Vec<u8> {
    let text = String::from_utf8(resp.to_vec()).expect("response is text");
    let mut vias = 0;
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|l| {
            let is_via = l
                .split_once(':')
                .is_some_and(|(n, _)| siplb_e2e::sip::canonical(n) == "via");
            vias += usize::from(is_via);
            if is_via && vias == 2 {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(vias >= 2, "the response has no client Via");
    lines.join("\r\n").into_bytes()
}

#[test]
fn rfc4475_3_3_10_bcast_a_response_whose_next_via_is_broadcast_is_dropped() {
    // RFC 4475 §3.3.10 (bcast): a 200 whose second Via is `SIP/2.0/UDP 255.255.255.255` with
    // no received or rport, so the broadcast address is the return path itself.
    let mut bed = bed();
    let (req, fwd) = forwarded_register(&mut bed);
    let genuine = response_to(&fwd, "SIP/2.0 200 OK");
    let line = format!("Via: SIP/2.0/UDP 255.255.255.255;branch={}", req.branch());
    let before = drops(&bed.ops, "bad_destination");
    bed.backend
        .send_raw(bed.siplb.addr(), &with_client_via_line(&genuine, &line));
    wait_drop(&bed.ops, "bad_destination", before);
    bed.client.assert_no_answer(&req.call_id());
    genuine_goes_through(&mut bed, &req, &fwd);
}

#[test]
fn a_response_whose_return_path_is_multicast_broadcast_or_unspecified_is_dropped() {
    let mut bed = bed();
    let (req, fwd) = forwarded_register(&mut bed);
    let genuine = response_to(&fwd, "SIP/2.0 200 OK");
    // RFC 4475 §3.3.10 puts 255.255.255.255 in a response's Via; 224.0.0.1 is all-hosts
    // multicast, 0.0.0.0 the unspecified address (Linux delivers it to the local host).
    for host in ["224.0.0.1", "255.255.255.255", "0.0.0.0"] {
        let before = drops(&bed.ops, "bad_destination");
        bed.backend
            .send_raw(bed.siplb.addr(), &with_return_to(&genuine, host));
        wait_drop(&bed.ops, "bad_destination", before);
        bed.client.assert_no_answer(&req.call_id());
    }
    genuine_goes_through(&mut bed, &req, &fwd);
}

/// Two siplb replicas with the same servers and the same advertised address (as behind one
/// DNS name or VIP), each given as (environment, `branch_key_file`); they differ only in the
/// address they listen on. A REGISTER goes through the first; the server sends its response to
/// the second. Returns what the client got, and how many `not_ours` drops the second counted.
fn response_via_the_other_replica(
    first: (&[(&str, &str)], Option<&str>),
    second: (&[(&str, &str)], Option<&str>),
) -> (Option<Msg>, f64) {
    let backend = Backend::start("fe1", Behaviour::Mute);
    let port = siplb_e2e::ports::free_udp_port();
    let advertise = format!("127.0.0.1:{port}");
    let replica = |listen: &str, (env, key_file): (&[(&str, &str)], Option<&str>)| {
        let mut config = Config::single_pool(std::slice::from_ref(&backend))
            .listen(&[listen])
            .advertise(&advertise)
            .ops();
        if let Some(path) = key_file {
            config = config.branch_key_file(path);
        }
        Siplb::start_with_env(&config.render(), env)
    };
    let a = replica(&advertise, first);
    let b = replica("127.0.0.1:0", second);
    let ops_b = Ops::of(&b);
    let mut client = Client::new();
    let req = Request::register(&format!("{}@contoso.com", unique("u")));
    client.send(a.addr(), &req);
    let fwd = Msg::must_parse(&backend.wait_request(&req.call_id(), ANSWER_WITHIN).bytes);
    assert!(
        fwd.vias()[0].contains(&advertise),
        "siplb's Via does not name the advertised address: {}",
        fwd.vias()[0]
    );
    let before = drops(&ops_b, "not_ours");
    backend.send_raw(b.addr(), &response_to(&fwd, "SIP/2.0 200 OK"));
    let got = client.final_response(&req);
    (got, drops(&ops_b, "not_ours") - before)
}

#[test]
fn replicas_sharing_siplb_branch_key_relay_each_others_responses() {
    let env: &[(&str, &str)] = &[("SIPLB_BRANCH_KEY", KEY)];
    let (got, _) = response_via_the_other_replica((env, None), (env, None));
    assert_eq!(got.and_then(|m| m.status()), Some(200));
}

#[test]
fn replicas_with_different_branch_keys_do_not_relay_each_others_responses() {
    let (got, dropped) = response_via_the_other_replica(
        (&[("SIPLB_BRANCH_KEY", KEY)], None),
        (
            &[("SIPLB_BRANCH_KEY", "another-key-entirely-0123456789")],
            None,
        ),
    );
    assert!(
        got.is_none(),
        "relayed with another key:\n{}",
        got.map(|m| show(&m.raw)).unwrap_or_default()
    );
    assert_eq!(dropped, 1.0, "the other replica did not count it not_ours");
}

#[test]
fn replicas_sharing_a_branch_key_file_relay_each_others_responses() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("branch.key");
    // The file's content is trimmed: a trailing newline is not part of the key.
    std::fs::write(&path, format!("{KEY}\n")).expect("write key file");
    let path = path.to_string_lossy().into_owned();
    let (got, _) = response_via_the_other_replica((&[], Some(&path)), (&[], Some(&path)));
    assert_eq!(got.and_then(|m| m.status()), Some(200));
    // The file and the environment give the same key.
    let env: &[(&str, &str)] = &[("SIPLB_BRANCH_KEY", KEY)];
    let (got, _) = response_via_the_other_replica((&[], Some(&path)), (env, None));
    assert_eq!(got.and_then(|m| m.status()), Some(200));
}

#[test]
fn siplb_check_refuses_servers_at_multicast_broadcast_or_unspecified_addresses() {
    for (address, ok) in [
        ("224.0.0.1:5060", false),
        ("0.0.0.0:5060", false),
        ("255.255.255.255:5060", false),
        ("[ff02::1]:5060", false),
        ("[::]:5060", false),
        ("127.0.0.1:5060", true),
    ] {
        let server = Server {
            id: "edge-pool-1".to_string(),
            address: address.parse::<SocketAddr>().expect("address"),
            weight: 1,
            drained: false,
        };
        let config = Config::new()
            .pool("fe", vec![server])
            .route(siplb_e2e::Route::to("fe"));
        let file = ConfigFile::write(&config.render());
        let path = file.path().to_string_lossy().into_owned();
        let out = run_cli(&["check", "--config", &path]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.success(),
            ok,
            "siplb check with a server at {address}: {said}"
        );
        if !ok {
            // Named by its id or by its address as configured.
            let written = address.trim_start_matches('[').replace("]:", ":");
            assert!(
                said.contains("edge-pool-1") || said.contains(address) || said.contains(&written),
                "the error does not name the server: {said}"
            );
        }
    }
}
