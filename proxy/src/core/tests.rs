//! The routing rules of DESIGN.md, one by one, against the sans-io core.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use super::*;
use crate::config::{parse, HostPort};
use crate::table::{ConfigHealth, RoutingTable};

const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
advertise = "lb.contoso.com:5060"

[routing]
retry_after = "42s"

[[pool]]
name = "fe"
servers = [
  { address = "127.0.0.1:5071", id = "fe-a" },
  { address = "127.0.0.1:5072", id = "fe-b" },
  { address = "127.0.0.1:5073", id = "fe-c" },
]

[[pool]]
name = "dark"
servers = [{ address = "127.0.0.1:5081", drained = true }]

[[route]]
domain = "dark.example"
pool = "dark"

[[route]]
domain = "contoso.com"
pool = "fe"
"#;

const CLIENT: &str = "192.0.2.7:5099";

fn table() -> RoutingTable {
    let cfg = parse(Path::new("t.toml"), CFG).expect("valid config");
    let adv = cfg.listen.advertise.clone().unwrap_or(HostPort {
        host: "x".into(),
        port: None,
    });
    RoutingTable::build(
        &cfg,
        adv,
        vec!["127.0.0.1:5060".parse().unwrap()],
        1,
        &ConfigHealth,
    )
}

fn register(user: &str) -> String {
    format!(
        "REGISTER sip:contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK-{user}-1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:{user}@contoso.com>;tag=ft\r\n\
To: <sip:{user}@contoso.com>\r\n\
Call-ID: reg-{user}\r\n\
CSeq: 1 REGISTER\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn invite(branch: &str, method: &str, extra: &str) -> String {
    format!(
        "{method} sip:bob@contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5099;branch={branch}\r\n\
{extra}\
From: \"Alice\" <sip:alice@contoso.com>;tag=a1\r\n\
To: <sip:bob@contoso.com>\r\n\
Call-ID: call-1\r\n\
CSeq: 1 {method}\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn handle(msg: &str) -> (Action, String) {
    handle_from(msg, CLIENT)
}

fn handle_from(msg: &str, src: &str) -> (Action, String) {
    let mut w = Worker::new();
    let a = w
        .handle(&table(), msg.as_bytes(), src.parse().unwrap())
        .action;
    (a, String::from_utf8_lossy(&w.out).into_owned())
}

fn forwarded_to(a: Action) -> SocketAddr {
    match a {
        Action::Forward(to) => to,
        other => panic!("expected a forward, got {other:?}"),
    }
}

fn status(out: &str) -> &str {
    &out[8..11]
}

#[test]
fn a_register_is_forwarded_with_only_our_edits() {
    let req = register("alice");
    let (a, out) = handle(&req);
    let to = forwarded_to(a);
    assert!(
        ["127.0.0.1:5071", "127.0.0.1:5072", "127.0.0.1:5073"].contains(&to.to_string().as_str())
    );
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert!(
        lines[1].starts_with("Via: SIP/2.0/UDP lb.contoso.com:5060;branch=z9hG4bK-lb"),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK-alice-1;rport=5099;received=192.0.2.7"
    );
    assert_eq!(lines[3], "Max-Forwards: 69");
    // Undo our edits: what is left is the request as sent, byte for byte.
    let undone = out
        .replacen(&format!("{}\r\n", lines[1]), "", 1)
        .replace(";rport=5099;received=192.0.2.7", ";rport")
        .replace("Max-Forwards: 69", "Max-Forwards: 70");
    assert_eq!(undone, req);
}

#[test]
fn the_same_user_always_reaches_the_same_server() {
    let first = forwarded_to(handle(&register("carol")).0);
    for _ in 0..20 {
        assert_eq!(forwarded_to(handle(&register("carol")).0), first);
    }
    let spread: std::collections::HashSet<SocketAddr> = (0..60)
        .map(|i| forwarded_to(handle(&register(&format!("u{i}"))).0))
        .collect();
    assert_eq!(spread.len(), 3, "60 users use all three servers");
}

#[test]
fn invite_retransmission_cancel_and_ack_share_server_and_branch() {
    let branch_of = |out: &str| {
        out.split("branch=")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .to_string()
    };
    let (a1, o1) = handle(&invite("z9hG4bKinv1", "INVITE", ""));
    let (a2, o2) = handle(&invite("z9hG4bKinv1", "INVITE", ""));
    let (a3, o3) = handle(&invite("z9hG4bKinv1", "CANCEL", ""));
    let (a4, o4) = handle(&invite("z9hG4bKinv1", "ACK", ""));
    let (_, o5) = handle(&invite("z9hG4bKinv2", "INVITE", ""));
    assert_eq!(o1, o2);
    for (a, o) in [(a2, &o2), (a3, &o3), (a4, &o4)] {
        assert_eq!(forwarded_to(a), forwarded_to(a1));
        assert_eq!(branch_of(o), branch_of(&o1));
    }
    assert_ne!(branch_of(&o5), branch_of(&o1));
}

#[test]
fn branches_without_the_magic_cookie_are_derived_from_the_transaction() {
    let branch_of = |out: &str| {
        out.split("branch=")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .to_string()
    };
    let a = handle(&invite("old2543", "INVITE", "")).1;
    let b = handle(&invite("old2543", "INVITE", "")).1;
    let c = handle(&invite("old2543", "CANCEL", "")).1;
    assert_eq!(branch_of(&a), branch_of(&b));
    assert_eq!(branch_of(&a), branch_of(&c));
    assert!(branch_of(&a).starts_with("z9hG4bK-lb"));
}

#[test]
fn max_forwards_zero_is_answered_483_and_absent_is_added() {
    let (a, out) = handle(&invite("z9hG4bK1", "INVITE", "Max-Forwards: 0\r\n"));
    assert_eq!(a, Action::Reply("192.0.2.7:5099".parse().unwrap()));
    assert!(out.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{out}");
    assert!(out.contains("To: <sip:bob@contoso.com>;tag=lb"));
    let (_, out) = handle(&invite("z9hG4bK1", "INVITE", ""));
    assert!(
        out.ends_with("Content-Length: 0\r\nMax-Forwards: 70\r\n\r\n"),
        "{out}"
    );
    let (_, out) = handle(&invite("z9hG4bK1", "INVITE", "Max-Forwards: 255\r\n"));
    assert!(out.contains("Max-Forwards: 254\r\n"), "{out}");
    // Above 255 is not a Max-Forwards (RFC 3261 §25.1: 1*DIGIT, §8.1.1.6); it is answered, not
    // rewritten.
    let (_, out) = handle(&invite("z9hG4bK1", "INVITE", "Max-Forwards: 1000\r\n"));
    assert!(out.starts_with("SIP/2.0 400 Bad Max-Forwards\r\n"), "{out}");
    let (_, out) = handle(&invite("z9hG4bK1", "INVITE", "Max-Forwards: x\r\n"));
    assert!(out.starts_with("SIP/2.0 400 Bad Max-Forwards\r\n"), "{out}");
    // A form feed beside the digits (found by fuzzing): answered, not rewritten without it.
    let (_, out) = handle(&invite("z9hG4bK1", "INVITE", "Max-Forwards: 70\x0c\r\n"));
    assert!(out.starts_with("SIP/2.0 400 Bad Max-Forwards\r\n"), "{out}");
}

#[test]
fn unrouted_requests_get_404_and_acks_get_nothing() {
    let req =
        invite("z9hG4bK1", "INVITE", "").replace("bob@contoso.com SIP", "bob@fabrikam.com SIP");
    let (a, out) = handle(&req);
    assert!(matches!(a, Action::Reply(_)));
    assert_eq!(status(&out), "404");
    let ack = req.replace("INVITE", "ACK");
    assert_eq!(handle(&ack).0, Action::Drop(DropReason::AckUnroutable));
}

#[test]
fn a_pool_without_servers_up_answers_503_with_retry_after() {
    let req =
        invite("z9hG4bK1", "INVITE", "").replace("bob@contoso.com SIP", "bob@dark.example SIP");
    let (_, out) = handle(&req);
    assert!(
        out.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{out}"
    );
    assert!(out.contains("Retry-After: 42\r\n"), "{out}");
}

#[test]
fn routes_to_foreign_hosts_are_refused() {
    let (a, out) = handle(&invite(
        "z9hG4bK1",
        "INVITE",
        "Route: <sip:203.0.113.9:5060;lr>\r\n",
    ));
    assert!(matches!(a, Action::Reply(_)));
    assert_eq!(status(&out), "403");
    // Our own Route followed by a foreign one is refused too.
    let (_, out) = handle(&invite(
        "z9hG4bK1",
        "INVITE",
        "Route: <sip:lb.contoso.com;lr>, <sip:203.0.113.9;lr>\r\n",
    ));
    assert_eq!(status(&out), "403");
    let (_, out) = handle(&invite("z9hG4bK1", "INVITE", "Route: garbage\r\n"));
    assert_eq!(status(&out), "403");
}

#[test]
fn our_route_is_removed_and_a_server_route_is_followed() {
    let (a, out) = handle(&invite(
        "z9hG4bK1",
        "INVITE",
        "Route: <sip:lb.contoso.com:5060;lr>\r\n",
    ));
    forwarded_to(a);
    assert!(!out.contains("Route:"), "{out}");
    let (a, out) = handle(&invite(
        "z9hG4bK1",
        "BYE",
        "Route: <sip:127.0.0.1;lr>\r\nRoute: <sip:127.0.0.1:5073;lr>\r\n",
    ));
    assert_eq!(forwarded_to(a), "127.0.0.1:5073".parse().unwrap());
    assert!(
        out.contains("Route: <sip:127.0.0.1:5073;lr>\r\n") && !out.contains("<sip:127.0.0.1;lr>"),
        "{out}"
    );
    let (a, out) = handle(&invite(
        "z9hG4bK1",
        "BYE",
        "Route: <sip:lb.contoso.com;lr>,<sip:127.0.0.1:5072;lr>\r\n",
    ));
    assert_eq!(forwarded_to(a), "127.0.0.1:5072".parse().unwrap());
    assert!(out.contains("Route: <sip:127.0.0.1:5072;lr>\r\n"), "{out}");
}

#[test]
fn responses_lose_our_via_and_go_where_the_next_via_says() {
    let (_, fwd) = handle(&register("dave"));
    let resp = fwd
        .replacen("REGISTER sip:contoso.com SIP/2.0", "SIP/2.0 200 OK", 1)
        .replace(
            "To: <sip:dave@contoso.com>",
            "To: <sip:dave@contoso.com>;tag=srv",
        );
    let (a, out) = handle_from(&resp, "127.0.0.1:5071");
    assert_eq!(forwarded_to(a), "192.0.2.7:5099".parse().unwrap());
    assert!(!out.contains("lb.contoso.com"), "{out}");
    assert!(out.contains(
        "Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK-dave-1;rport=5099;received=192.0.2.7\r\n"
    ));
    // The same response from somewhere that is not a server is not relayed.
    assert_eq!(
        handle_from(&resp, "198.51.100.1:5060").0,
        Action::Drop(DropReason::UnknownSender)
    );
}

#[test]
fn responses_with_several_vias_on_one_line_keep_the_others() {
    // The server put siplb's Via and the client's on one line; the client's `received` is
    // read with brackets too.
    let req = "INVITE sip:b@contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKc;received=[2001:db8::8]\r\n\
From: <sip:a@contoso.com>;tag=1\r\nTo: <sip:b@contoso.com>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (a, fwd) = handle_from(req, "[2001:db8::8]:5062");
    let server = forwarded_to(a);
    let ours = fwd.lines().nth(1).unwrap().to_string();
    let theirs = "Via: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKc;received=2001:db8::8";
    assert!(fwd.contains(theirs), "{fwd}");
    let resp = fwd
        .replacen("INVITE sip:b@contoso.com SIP/2.0", "SIP/2.0 180 Ringing", 1)
        .replacen(
            &format!("{ours}\r\n{theirs}"),
            &format!("{ours}, {}", &theirs[5..]),
            1,
        )
        .replace(";received=2001:db8::8", ";received=[2001:db8::8]");
    let (a, out) = handle_from(&resp, &server.to_string());
    assert_eq!(forwarded_to(a), "[2001:db8::8]:5062".parse().unwrap());
    assert!(
        out.contains(
            "\r\nVia: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKc;received=[2001:db8::8]\r\n"
        ),
        "{out}"
    );
}

#[test]
fn responses_not_ours_are_dropped() {
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bKx\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\r\n";
    assert_eq!(
        handle_from(resp, "127.0.0.1:5071").0,
        Action::Drop(DropReason::NotOurs)
    );
    let only_ours = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP lb.contoso.com:5060;branch=z9hG4bK-lb1\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\r\n";
    assert_eq!(
        handle_from(only_ours, "127.0.0.1:5071").0,
        Action::Drop(DropReason::NoReturnPath)
    );
}

#[test]
fn compact_headers_ipv6_and_extension_methods_route() {
    let req = "BENOTIFY sip:bob@contoso.com SIP/2.0\r\n\
v: SIP/2.0/UDP [2001:db8::7]:5099;branch=z9hG4bKbn;rport\r\n\
f: <sip:alice@[2001:db8::1]>;tag=1\r\n\
t: <sip:bob@contoso.com>\r\n\
i: bn-1\r\n\
CSeq: 3 BENOTIFY\r\n\
l: 5\r\n\r\nhello-and-trailing-junk";
    let (a, out) = handle_from(req, "[2001:db8::7]:5099");
    forwarded_to(a);
    assert!(out.contains("v: SIP/2.0/UDP [2001:db8::7]:5099;branch=z9hG4bKbn;rport=5099;received=2001:db8::7\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\nhello"),
        "body cut at Content-Length: {out}"
    );
}

#[test]
fn garbage_is_dropped_without_panicking() {
    let mut w = Worker::new();
    let t = table();
    let src: SocketAddr = CLIENT.parse().unwrap();
    assert_eq!(
        w.handle(&t, b"\r\n\r\n", src).action,
        Action::Drop(DropReason::KeepAlive)
    );
    assert_eq!(
        w.handle(&t, b"GET / HTTP/1.1\r\n\r\n", src).action,
        Action::Drop(DropReason::Malformed)
    );
    let req = register("eve");
    let mut seed = 0x1234_5678_u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = req.as_bytes().to_vec();
        let cut = (seed as usize) % bytes.len();
        match seed % 3 {
            0 => bytes.truncate(cut),
            1 => bytes[cut] = (seed >> 20) as u8,
            _ => bytes.insert(cut, b','),
        }
        let _ = w.handle(&t, &bytes, src);
    }
}

#[test]
fn explain_names_the_route_and_server() {
    let t = table();
    let d = Worker::new()
        .explain(&t, register("frank").as_bytes(), CLIENT.parse().unwrap())
        .unwrap();
    assert_eq!(d.route, 1);
    assert_eq!(t.pools[d.home].name, "fe");
    assert!(d.server.is_some());
}

/// A small deterministic generator (xorshift), so the property test below needs no crate and
/// always checks the same cases.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A random but well-formed request: header names in full or compact form and any case, Vias
/// one per line or several on a line, other headers in any order, an optional body with trailing
/// bytes past its Content-Length, optional `rport` and Max-Forwards.
fn random_request(g: &mut Gen, n: usize) -> (String, bool, Option<u32>) {
    let method = g.pick(&[
        "REGISTER",
        "INVITE",
        "SUBSCRIBE",
        "SERVICE",
        "BENOTIFY",
        "MESSAGE",
        "X-EXT",
    ]);
    let case = |g: &mut Gen, name: &str| match g.below(3) {
        0 => name.to_string(),
        1 => name.to_ascii_lowercase(),
        _ => name.to_ascii_uppercase(),
    };
    let rport = g.below(2) == 0;
    let mut vias = vec![format!(
        "SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK{n}x{}{}",
        g.next() % 1000,
        if rport { ";rport" } else { "" }
    )];
    for i in 0..g.below(3) {
        vias.push(format!(
            "SIP/2.0/TCP proxy{i}.example.net;branch=z9hG4bKup{i};received=198.51.100.{i}"
        ));
    }
    let mut lines = Vec::new();
    let via_name = if g.below(2) == 0 {
        "v".to_string()
    } else {
        case(g, "Via")
    };
    if g.below(2) == 0 {
        lines.push(format!("{via_name}: {}", vias.join(", ")));
    } else {
        lines.extend(
            vias.iter()
                .map(|v| format!("{via_name}:{}{v}", " ".repeat(g.below(3)))),
        );
    }
    let user = format!("user{n}");
    let others = [
        format!(
            "{}: \"U {n}\" <sip:{user}@contoso.com>;tag=f{n}",
            if g.below(2) == 0 {
                "f".into()
            } else {
                case(g, "From")
            }
        ),
        format!(
            "{}: <sip:{user}@contoso.com>",
            if g.below(2) == 0 {
                "t".into()
            } else {
                case(g, "To")
            }
        ),
        format!(
            "{}: {n}-{}@192.0.2.7",
            if g.below(2) == 0 {
                "i".into()
            } else {
                case(g, "Call-ID")
            },
            g.next()
        ),
        format!("{}: {} {method}", case(g, "CSeq"), 1 + g.below(9000)),
        format!(
            "{}: <sip:192.0.2.7:5099>;+sip.instance=\"<urn:uuid:{n}>\"",
            case(g, "Contact")
        ),
        format!("User-Agent: UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync) {n}"),
        format!("P-Asserted-Identity: <sip:{user}@contoso.com>"),
        "Supported: gruu-10, adhoclist, msrtc-event-categories".to_string(),
    ];
    let mut rest: Vec<String> = others.into();
    let max_forwards = (g.below(3) != 0).then(|| 1 + g.below(200) as u32);
    if let Some(mf) = max_forwards {
        rest.push(format!("{}: {mf}", case(g, "Max-Forwards")));
    }
    while !rest.is_empty() {
        let i = g.below(rest.len());
        lines.push(rest.remove(i));
    }
    let body = if g.below(2) == 0 {
        format!("<xml>{}</xml>", "b".repeat(g.below(300)))
    } else {
        String::new()
    };
    let cl = if g.below(2) == 0 {
        "l"
    } else {
        "Content-Length"
    };
    lines.push(format!("{cl}: {}", body.len()));
    let trailing = if g.below(3) == 0 {
        "junk past Content-Length"
    } else {
        ""
    };
    let msg = format!(
        "{method} sip:contoso.com SIP/2.0\r\n{}\r\n\r\n{body}{trailing}",
        lines.join("\r\n")
    );
    (msg, rport, max_forwards)
}

#[test]
fn forwarding_changes_only_our_bytes_for_any_request() {
    let mut g = Gen(0x51b1_b0b0_cafe_f00d);
    let t = table();
    let mut w = Worker::new();
    for n in 0..5_000 {
        let (req, rport, max_forwards) = random_request(&mut g, n);
        let action = w.handle(&t, req.as_bytes(), CLIENT.parse().unwrap()).action;
        forwarded_to(action);
        let out = String::from_utf8(w.out.clone()).expect("utf-8 in, utf-8 out");
        // Undo siplb's edits, independently of how siplb made them.
        let ours = out
            .lines()
            .find(|l| l.starts_with("Via: SIP/2.0/UDP lb.contoso.com:5060;branch=z9hG4bK-lb"));
        let ours = ours.unwrap_or_else(|| panic!("no siplb Via in\n{out}"));
        let mut undone = out.replacen(&format!("{ours}\r\n"), "", 1);
        let fill = if rport {
            ";rport=5099;received=192.0.2.7"
        } else {
            ";received=192.0.2.7"
        };
        let at = undone
            .find(fill)
            .unwrap_or_else(|| panic!("no {fill} in\n{out}"));
        undone.replace_range(at..at + fill.len(), if rport { ";rport" } else { "" });
        match max_forwards {
            Some(mf) => {
                let lower = undone.to_ascii_lowercase();
                let at = lower
                    .find(&format!("max-forwards: {}\r\n", mf - 1))
                    .expect("decremented Max-Forwards");
                let start = at + "max-forwards: ".len();
                undone.replace_range(start..start + (mf - 1).to_string().len(), &mf.to_string());
            }
            None => {
                undone = undone.replacen("Max-Forwards: 70\r\n\r\n", "\r\n", 1);
            }
        }
        let original = req.trim_end_matches("junk past Content-Length");
        assert_eq!(undone, original, "request {n}:\n{req}\nforwarded as\n{out}");
    }
}

// ---- Section 5 of issue 7 (notes: contract5) ---------------------------------------------------

fn table_with(routing: &str) -> RoutingTable {
    let text = CFG.replace("[routing]\n", &format!("[routing]\n{routing}\n"));
    let cfg = parse(Path::new("t.toml"), &text).expect("valid config");
    let adv = cfg.listen.advertise.clone().expect("advertise");
    RoutingTable::build(
        &cfg,
        adv,
        vec!["127.0.0.1:5060".parse().unwrap()],
        1,
        &ConfigHealth,
    )
}

fn keyed(secret: &str) -> RoutingTable {
    let mut t = table();
    t.branch_key = crate::sip::branch::BranchKey::from_secret(secret.as_bytes());
    t
}

fn unrouted(via: &str) -> String {
    invite("z9hG4bK1", "INVITE", "")
        .replace("bob@contoso.com SIP", "bob@fabrikam.com SIP")
        .replace("Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK1", via)
}

#[test]
fn own_answers_carry_received_and_rport_and_go_back_there() {
    let req = unrouted("Via: SIP/2.0/UDP 10.0.0.1:5070;rport;received=10.9.9.9;branch=z9hG4bK1");
    let (a, out) = handle_from(&req, "198.51.100.4:40000");
    assert_eq!(a, Action::Reply("198.51.100.4:40000".parse().unwrap()));
    assert!(
        out.contains("\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;rport=40000;received=198.51.100.4;branch=z9hG4bK1\r\n"),
        "{out}"
    );
    // Without rport: to the source IP at the sent-by port; received is still added.
    let req = unrouted("Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1");
    let (a, out) = handle_from(&req, "198.51.100.4:40000");
    assert_eq!(a, Action::Reply("198.51.100.4:5070".parse().unwrap()));
    assert!(
        out.contains(
            "\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;received=198.51.100.4\r\n"
        ),
        "{out}"
    );
    let req = unrouted("Via: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1;rport");
    let (a, out) = handle_from(&req, "[2001:db8::2]:6000");
    assert_eq!(a, Action::Reply("[2001:db8::2]:6000".parse().unwrap()));
    assert!(
        out.contains("\r\nVia: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1;rport=6000;received=2001:db8::2\r\n"),
        "{out}"
    );
}

#[test]
fn the_server_header_is_configurable() {
    let req = unrouted("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1");
    let mut w = Worker::new();
    let src: SocketAddr = CLIENT.parse().unwrap();
    w.handle(&table(), req.as_bytes(), src);
    let out = String::from_utf8_lossy(&w.out).into_owned();
    assert!(
        out.contains("\r\nServer: siplb\r\n"),
        "default, no version: {out}"
    );
    w.handle(&table_with("server_header = \"\""), req.as_bytes(), src);
    let out = String::from_utf8_lossy(&w.out).into_owned();
    assert!(!out.to_ascii_lowercase().contains("server:"), "{out}");
    w.handle(&table_with("server_header = \"lb-7\""), req.as_bytes(), src);
    let out = String::from_utf8_lossy(&w.out).into_owned();
    assert!(out.contains("\r\nServer: lb-7\r\n"), "{out}");
}

/// A REGISTER forwarded by `t`, turned into the server's 200 OK: (response, server).
fn answered(t: &RoutingTable, user: &str) -> (String, SocketAddr) {
    let mut w = Worker::new();
    let a = w.handle(t, register(user).as_bytes(), CLIENT.parse().unwrap());
    let server = forwarded_to(a.action);
    let fwd = String::from_utf8_lossy(&w.out).into_owned();
    (
        fwd.replacen("REGISTER sip:contoso.com SIP/2.0", "SIP/2.0 200 OK", 1),
        server,
    )
}

fn relay(t: &RoutingTable, resp: &str, from: SocketAddr) -> Outcome {
    Worker::new().handle(t, resp.as_bytes(), from)
}

#[test]
fn a_response_is_relayed_only_from_the_server_its_branch_names() {
    let t = table();
    let (resp, server) = answered(&t, "grace");
    let ok = relay(&t, &resp, server);
    assert_eq!(ok.action, Action::Forward(CLIENT.parse().unwrap()));
    assert_eq!(
        ok.count,
        Some(Count::Response {
            code: 200,
            from: t.server_at(server)
        }),
        "counted once sent, on the server it came from"
    );
    assert!(
        t.server_at(server).is_some(),
        "the response came from a configured server"
    );
    // Same IP, another port: not a configured server's exact address.
    let other_port = SocketAddr::new(server.ip(), 5999);
    assert_eq!(
        relay(&t, &resp, other_port).action,
        Action::Drop(DropReason::UnknownSender)
    );
    // Another configured server: the branch was made for `server`, not for it.
    let other = ["127.0.0.1:5071", "127.0.0.1:5072", "127.0.0.1:5073"]
        .iter()
        .map(|s| s.parse::<SocketAddr>().unwrap())
        .find(|s| *s != server)
        .unwrap();
    assert_eq!(
        relay(&t, &resp, other).action,
        Action::Drop(DropReason::NotOurs)
    );
    // A branch with siplb's prefix that siplb did not make.
    let ours = resp.split("branch=").nth(1).unwrap()[..26].to_string();
    let mut forged = ours.clone().into_bytes();
    forged[25] = if forged[25] == b'0' { b'1' } else { b'0' };
    let forged = resp.replacen(&ours, std::str::from_utf8(&forged).unwrap(), 1);
    assert_eq!(
        relay(&t, &forged, server).action,
        Action::Drop(DropReason::NotOurs)
    );
    // The client's branch changed below ours: not the transaction siplb forwarded.
    let moved = resp.replacen("branch=z9hG4bK-grace-1", "branch=z9hG4bK-mallory-1", 1);
    assert_eq!(
        relay(&t, &moved, server).action,
        Action::Drop(DropReason::NotOurs)
    );
}

#[test]
fn replicas_sharing_a_key_verify_each_others_branches() {
    let a = keyed("replicas share this secret");
    let b = keyed("replicas share this secret");
    let c = keyed("another farm's secret, not ours");
    let (resp, server) = answered(&a, "heidi");
    assert!(matches!(
        relay(&b, &resp, server).action,
        Action::Forward(_)
    ));
    assert_eq!(
        relay(&c, &resp, server).action,
        Action::Drop(DropReason::NotOurs)
    );
    // The branch is the documented format: prefix and 16 lowercase hex digits.
    let branch = resp
        .split("branch=")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap();
    assert_eq!(branch.len(), "z9hG4bK-lb".len() + 16, "{branch}");
    assert!(branch[10..]
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
}

#[test]
fn a_503_is_a_health_signal_only_from_the_server_the_request_went_to() {
    let t = table();
    let (resp, server) = answered(&t, "ivan");
    let busy = resp.replacen("SIP/2.0 200 OK", "SIP/2.0 503 Service Unavailable", 1);
    let o = relay(&t, &busy, server);
    assert_eq!(o.passive, Some((server, Failure::Passive503)));
    assert!(matches!(o.action, Action::Forward(_)));
    let other_port = SocketAddr::new(server.ip(), 5999);
    assert_eq!(relay(&t, &busy, other_port).passive, None);
}

#[test]
fn siplb_never_sends_to_broadcast_multicast_or_unspecified_addresses() {
    let t = table();
    for bad in ["255.255.255.255", "224.0.0.251", "0.0.0.0", "ff02::1", "::"] {
        let (resp, server) = answered(&t, "judy");
        let resp = resp.replacen("received=192.0.2.7", &format!("received={bad}"), 1);
        assert_eq!(
            relay(&t, &resp, server).action,
            Action::Drop(DropReason::BadDestination),
            "{bad}"
        );
    }
    // An answer whose return path is such an address.
    let req = unrouted("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1");
    let (a, _) = handle_from(&req, "0.0.0.0:5060");
    assert_eq!(a, Action::Drop(DropReason::BadDestination));
}

fn answer_line(req: &str) -> String {
    let (a, out) = handle(req);
    assert!(matches!(a, Action::Reply(_)), "{a:?}\n{req}");
    out[..out.find("\r\n").unwrap()].to_string()
}

#[test]
fn invalid_requests_are_answered_naming_what_is_wrong() {
    let ok = invite("z9hG4bK1", "INVITE", "");
    let cases = [
        (
            ok.replace(" SIP/2.0\r\n", " SIP/3.0\r\n"),
            "SIP/2.0 505 Version Not Supported",
        ),
        (
            ok.replace("Call-ID: call-1\r\n", ""),
            "SIP/2.0 400 Missing Call-ID",
        ),
        (
            ok.replace("CSeq: 1 INVITE\r\n", ""),
            "SIP/2.0 400 Missing CSeq",
        ),
        (
            ok.replace("To: <sip:bob@contoso.com>\r\n", ""),
            "SIP/2.0 400 Missing To",
        ),
        (
            ok.replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            "SIP/2.0 400 Bad CSeq",
        ),
        (
            ok.replace("CSeq: 1 INVITE", "CSeq: one INVITE"),
            "SIP/2.0 400 Bad CSeq",
        ),
        (
            ok.replace("CSeq: 1 INVITE", "CSeq: 4294967296 INVITE"),
            "SIP/2.0 400 Bad CSeq",
        ),
        (
            ok.replace("CSeq: 1 INVITE", "CSeq: 1"),
            "SIP/2.0 400 Bad CSeq",
        ),
        (
            ok.replace("From: \"Alice\" <sip:alice@contoso.com>", "From: Alice"),
            "SIP/2.0 400 Bad From",
        ),
        (
            ok.replace("Content-Length: 0", "Content-Length: 10"),
            "SIP/2.0 400 Bad Content-Length",
        ),
        (
            ok.replace(
                "Content-Length: 0",
                "Max-Forwards: 256\r\nContent-Length: 0",
            ),
            "SIP/2.0 400 Bad Max-Forwards",
        ),
        (
            ok.replace("INVITE sip:bob@contoso.com", "INVITE http:bob@contoso.com"),
            "SIP/2.0 416 Unsupported URI Scheme",
        ),
        (
            ok.replace(
                "Content-Length: 0",
                "Proxy-Require: foo\r\nContent-Length: 0",
            ),
            "SIP/2.0 420 Bad Extension",
        ),
    ];
    for (req, want) in cases {
        assert_eq!(answer_line(&req), want, "{req}");
    }
    let (_, out) = handle(&ok.replace(
        "Content-Length: 0",
        "Proxy-Require: foo, bar\r\nContent-Length: 0",
    ));
    assert!(out.contains("\r\nUnsupported: foo, bar\r\n"), "{out}");
    // Lync's option tag is supported: forwarded.
    let lync = ok.replace(
        "Content-Length: 0",
        "Proxy-Require: ms-benotify\r\nContent-Length: 0",
    );
    forwarded_to(handle(&lync).0);
    // 416 comes before 483 (RFC 3261 §16.3 steps 2 and 3).
    let both = ok
        .replace("INVITE sip:bob@contoso.com", "INVITE im:bob@contoso.com")
        .replace("Content-Length: 0", "Max-Forwards: 0\r\nContent-Length: 0");
    assert_eq!(answer_line(&both), "SIP/2.0 416 Unsupported URI Scheme");
}

#[test]
fn invalid_acks_and_unreadable_requests_are_dropped() {
    let ack = invite("z9hG4bK1", "ACK", "");
    assert_eq!(
        handle(&ack.replace("Call-ID: call-1\r\n", "")).0,
        Action::Drop(DropReason::Malformed)
    );
    assert_eq!(
        handle(&ack.replace("Content-Length: 0", "Max-Forwards: 0\r\nContent-Length: 0")).0,
        Action::Drop(DropReason::AckUnroutable)
    );
    let no_via = invite("z9hG4bK1", "INVITE", "")
        .replace("Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK1\r\n", "");
    assert_eq!(handle(&no_via).0, Action::Drop(DropReason::Malformed));
    let bad_via = invite("z9hG4bK1", "INVITE", "").replace("SIP/2.0/UDP 192.0.2.7", "SIP/2.0/UDP");
    assert_eq!(handle(&bad_via).0, Action::Drop(DropReason::Malformed));
    // Malformed responses from a server are dropped too.
    let (resp, server) = answered(&table(), "karl");
    assert_eq!(
        relay(&table(), &resp.replace("CSeq: 1 REGISTER\r\n", ""), server).action,
        Action::Drop(DropReason::Malformed)
    );
}

#[test]
fn a_request_that_no_longer_fits_a_datagram_is_answered_513() {
    let fill = |n: usize| {
        let body = "x".repeat(n);
        invite("z9hG4bK1", "MESSAGE", "").replace(
            "Content-Length: 0\r\n\r\n",
            &format!("Content-Length: {n}\r\n\r\n{body}"),
        )
    };
    let fits = fill(60_000);
    let (a, out) = handle(&fits);
    forwarded_to(a);
    assert!(out.len() <= 65_507);
    // As large as a datagram can be: siplb's Via pushes it over.
    let base = fill(0).len();
    let full = fill(65_507 - base - 4); // "0" became five digits
    assert_eq!(full.len(), 65_507);
    assert_eq!(answer_line(&full), "SIP/2.0 513 Message Too Large");
}

#[test]
fn outcomes_say_what_to_count() {
    let t = table();
    let mut w = Worker::new();
    let src: SocketAddr = CLIENT.parse().unwrap();
    let o = w.handle(&t, register("leo").as_bytes(), src);
    let Action::Forward(to) = o.action else {
        panic!("forwarded: {o:?}");
    };
    let chosen = t.server_at(to).map(|(_, s)| s);
    assert!(chosen.is_some(), "forwarded to a configured server");
    assert_eq!(
        o.count,
        Some(Count::Request {
            pool: 0,
            method: crate::stats::method_index(b"REGISTER"),
            server: chosen,
        })
    );
    let o = w.handle(
        &t,
        unrouted("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1").as_bytes(),
        src,
    );
    assert_eq!(o.count, Some(Count::Reply { code: 404 }));
    let o = w.handle(&t, b"\r\n\r\n", src);
    assert_eq!(
        (o.action, o.count),
        (Action::Drop(DropReason::KeepAlive), None)
    );
}

#[test]
fn an_address_of_record_hashes_the_same_however_long() {
    let t = table();
    for user in ["Bob".to_string(), "x".repeat(300)] {
        let req = register(&user).replace("@contoso.com>", "@CONTOSO.com>");
        let d = Worker::new()
            .explain(&t, req.as_bytes(), CLIENT.parse().unwrap())
            .expect("routed");
        let aor = format!("{user}@contoso.com");
        assert_eq!(
            d,
            t.decide(1, crate::hrw::key_hash(aor.as_bytes())),
            "{user}"
        );
    }
}

#[test]
fn a_route_naming_a_server_by_its_id_is_followed() {
    // A Lync Front End record-routes with its FQDN; the operator gives that as the server's id.
    let (a, out) = handle(&invite(
        "z9hG4bK1",
        "BYE",
        "Route: <sip:FE-B:5061;transport=tls;opaque=state:T;lr>\r\n",
    ));
    assert_eq!(forwarded_to(a), "127.0.0.1:5072".parse().unwrap());
    assert!(out.contains("Route: <sip:FE-B:5061;"), "{out}");
    let (a, out) = handle(&invite(
        "z9hG4bK1",
        "BYE",
        "Route: <sip:fe9.contoso.com;lr>\r\n",
    ));
    assert!(
        matches!(a, Action::Reply(_)) && status(&out) == "403",
        "{out}"
    );
}

// ---- default keys by role -------------------------------------------------------------------

/// `CFG` plus a Mediation and an Edge pool of four servers each, and a route to each that
/// names no key.
fn table_with_roles() -> RoutingTable {
    let mut text = CFG.to_string();
    for (name, role, base) in [("med", "mediation", 5091), ("edge", "edge", 5101)] {
        let servers: Vec<String> = (0..4)
            .map(|i| format!("{{ address = \"127.0.0.1:{}\" }}", base + i))
            .collect();
        text += &format!(
            "\n[[pool]]\nname = \"{name}\"\nrole = \"{role}\"\nservers = [{}]\n",
            servers.join(", ")
        );
    }
    // Ahead of the contoso.com route, so they are tried first.
    let text = text.replacen(
        "[[route]]",
        "[[route]]\nuri_user_param = \"phone\"\npool = \"med\"\n\n\
         [[route]]\ndomain = \"edge.example\"\npool = \"edge\"\n\n[[route]]",
        1,
    );
    let cfg = parse(Path::new("t.toml"), &text).expect("valid config");
    RoutingTable::unbound(&cfg, &ConfigHealth)
}

/// An INVITE to `ruri` from `from`, in call `call_id`.
fn call(ruri: &str, from: &str, call_id: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK-{call_id}-{from}\r\n\
From: <sip:{from}@contoso.com>;tag=a1\r\n\
To: <{ruri}>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// The servers `requests` (message, source) reach on the wire path.
fn servers_reached(t: &RoutingTable, requests: &[(String, &str)]) -> BTreeSet<SocketAddr> {
    let mut w = Worker::new();
    requests
        .iter()
        .map(|(req, src)| forwarded_to(w.handle(t, req.as_bytes(), src.parse().unwrap()).action))
        .collect()
}

#[test]
fn a_mediation_route_without_key_keeps_a_call_on_one_server() {
    let t = table_with_roles();
    let phone = "sip:+14255550100@contoso.com;user=phone";
    let one_call: Vec<(String, &str)> = (0..40)
        .map(|i| (call(phone, &format!("u{i}"), "call-7"), CLIENT))
        .collect();
    let hit = servers_reached(&t, &one_call);
    assert_eq!(hit.len(), 1, "one Call-ID, 40 callers: {hit:?}");
    assert!(hit.iter().all(|a| (5091..5095).contains(&a.port())));
    let calls: Vec<(String, &str)> = (0..40)
        .map(|i| (call(phone, "alice", &format!("call-{i}")), CLIENT))
        .collect();
    assert!(servers_reached(&t, &calls).len() > 1, "Call-IDs spread");
}

#[test]
fn an_edge_route_without_key_keeps_a_source_on_one_server() {
    let t = table_with_roles();
    let one_source: Vec<(String, &str)> = (0..40)
        .map(|i| {
            let ruri = format!("sip:r{i}@edge.example");
            (call(&ruri, &format!("u{i}"), &format!("c{i}")), CLIENT)
        })
        .collect();
    let hit = servers_reached(&t, &one_source);
    assert_eq!(hit.len(), 1, "one source, 40 users and calls: {hit:?}");
    assert!(hit.iter().all(|a| (5101..5105).contains(&a.port())));
    let sources: Vec<String> = (0..40)
        .map(|i| format!("192.0.2.{}:5099", 10 + i))
        .collect();
    let spread: Vec<(String, &str)> = sources
        .iter()
        .map(|src| (call("sip:bob@edge.example", "alice", "c1"), src.as_str()))
        .collect();
    assert!(servers_reached(&t, &spread).len() > 1, "sources spread");
}
