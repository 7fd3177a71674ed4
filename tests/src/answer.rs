//! siplb's own answers (400, 403, 404, 416, 420, 483, 503, 505, 513), checked the way a client
//! relies on them: RFC 3261 §8.2.6.2 copies (every Via in order, From, Call-ID, CSeq, To plus a
//! tag), and on the top Via what the forwarding path writes too — `received=<source IP>` (an
//! IPv6 address without brackets, RFC 3261 §25.1) replacing any it had, and a bare `rport`
//! filled with the source port (RFC 3261 §18.2.1, RFC 3581 §4).

use std::net::SocketAddr;

use crate::sip::{param, show, Msg};

/// The reason phrase of a response's status line (`"Bad CSeq"` in `SIP/2.0 400 Bad CSeq`).
pub fn reason(m: &Msg) -> &str {
    m.start.splitn(3, ' ').nth(2).unwrap_or_default()
}

/// A Via value less what a hop may learn about the sender: `received`, the `rport` value.
pub fn unlearned(via: &str) -> String {
    via.split(';')
        .filter(|p| !p.trim().to_ascii_lowercase().starts_with("received"))
        .map(|p| {
            if p.trim().to_ascii_lowercase().starts_with("rport") {
                "rport"
            } else {
                p.trim()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Asserts `answer` is siplb's own answer `status` to the request `sent` from `client`.
pub fn assert_own_answer(sent: &[u8], answer: &Msg, status: u16, client: SocketAddr) {
    let req = Msg::must_parse(sent);
    let shown = || {
        format!(
            "--- sent ---\n{}\n--- answer ---\n{}",
            show(sent),
            show(&answer.raw)
        )
    };
    assert_eq!(answer.status(), Some(status), "{}", shown());
    let (got, want) = (answer.vias(), req.vias());
    assert_eq!(got.len(), want.len(), "Vias not copied\n{}", shown());
    assert_eq!(got[1..], want[1..], "lower Vias changed\n{}", shown());
    assert_eq!(
        unlearned(&got[0]),
        unlearned(&want[0]),
        "top Via changed beyond received/rport\n{}",
        shown()
    );
    let receiveds = got[0]
        .split(';')
        .filter(|p| p.trim().to_ascii_lowercase().starts_with("received"))
        .count();
    assert_eq!(receiveds, 1, "top Via must carry one received\n{}", shown());
    let received = param(&got[0], "received").flatten();
    assert_eq!(
        received.as_deref(),
        Some(client.ip().to_string().as_str()),
        "top Via of the answer lacks received=<source IP> (RFC 3261 §18.2.1)\n{}",
        shown()
    );
    if param(&want[0], "rport") == Some(None) {
        assert_eq!(
            param(&got[0], "rport"),
            Some(Some(client.port().to_string())),
            "top Via of the answer lacks the filled rport (RFC 3581 §4)\n{}",
            shown()
        );
    }
    for h in ["from", "call-id", "cseq"] {
        assert_eq!(
            answer.header(h),
            req.header(h),
            "{h} not copied\n{}",
            shown()
        );
    }
    if let Some(sent_to) = req.header("to") {
        let to = answer.header("to").unwrap_or_default();
        assert!(to.starts_with(sent_to), "To not copied\n{}", shown());
        assert!(
            param(to, "tag").flatten().is_some(),
            "no To tag\n{}",
            shown()
        );
    }
}
