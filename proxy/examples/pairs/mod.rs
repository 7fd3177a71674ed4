//! The loop both examples time: a Lync-sized REGISTER through `Worker::handle` and its 200 OK
//! back, for 1,000 users in turn, `n` times.

use std::time::Instant;

use siplb::core::{Action, Worker};
use siplb::table::RoutingTable;

/// Times `n` request + response pairs through `table` and prints the core's CPU per pair.
pub fn run(table: &RoutingTable, n: usize) {
    let client = "192.0.2.7:5099".parse().unwrap();
    let users: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "REGISTER sip:contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK{i}abcdef;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:user{i}@contoso.com>;tag=8a6c4b7f;epid=01010101\r\n\
To: <sip:user{i}@contoso.com>\r\n\
Call-ID: 0f7d3a2c9b{i}\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:192.0.2.7:5099;transport=udp;ms-opaque=d3470f2e1d>;methods=\"INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY\";proxy=replace;+sip.instance=\"<urn:uuid:a1b2c3d4-e5f6-1234-5678-9abcdef01234>\"\r\n\
User-Agent: UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)\r\n\
Supported: gruu-10, adhoclist, msrtc-event-categories\r\n\
Supported: ms-forking\r\n\
ms-keep-alive: UAC;hop-hop=yes\r\n\
Event: registration\r\n\
Content-Length: 0\r\n\r\n"
            )
        })
        .collect();
    let mut w = Worker::new();
    let mut responses = Vec::with_capacity(users.len());
    for u in &users {
        let Action::Forward(server) = w.handle(table, u.as_bytes(), client).action else {
            panic!("not forwarded: the configuration must route REGISTER for contoso.com")
        };
        let fwd = String::from_utf8_lossy(&w.out).into_owned();
        let ok = fwd.replacen("REGISTER sip:contoso.com SIP/2.0", "SIP/2.0 200 OK", 1);
        responses.push((ok.into_bytes(), server));
    }
    let start = Instant::now();
    let mut forwarded = 0usize;
    for i in 0..n {
        let k = i % users.len();
        if let Action::Forward(_) = w.handle(table, users[k].as_bytes(), client).action {
            forwarded += 1;
        }
        let (response, server) = &responses[k];
        if let Action::Forward(_) = w.handle(table, response, *server).action {
            forwarded += 1;
        }
    }
    let per_pair = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
    println!(
        "{n} request+response pairs, {forwarded} messages forwarded: {:.2} µs of core CPU per pair",
        per_pair / 1000.0
    );
}
