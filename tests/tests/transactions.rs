//! Transactions through a stateless proxy (RFC 3261 §16.11): an INVITE, its retransmission, its
//! CANCEL and its non-2xx ACK all reach the same server with the same branch in siplb's Via,
//! while a new transaction gets a new branch; and responses (the 486 included) come back to the
//! client with siplb's Via removed and the client's Via intact plus `received`/`rport` (or, for
//! a client without `rport`, at the port its Via names).

use siplb_e2e::client::ANSWER_WITHIN;
use siplb_e2e::request::{unique, CLIENT_SENT_BY};
use siplb_e2e::sip::param;
use siplb_e2e::{
    assert_forwarded_intact, assert_response_intact, Behaviour, Hop, Request, Testbed,
};

fn busy_farm() -> Testbed {
    Testbed::single_pool(4, Behaviour::RejectInvites(486))
}

#[test]
fn invite_retransmission_cancel_and_ack_share_one_server_and_one_branch() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = busy_farm();
    let invite = Request::invite("alice@contoso.com", "bob@contoso.com");

    let busy = client.transact(siplb.addr(), &invite);
    assert_eq!(busy.status(), Some(486));
    client.send(siplb.addr(), &invite); // a retransmission: the same bytes again
    assert_eq!(
        client.final_response(&invite).and_then(|m| m.status()),
        Some(486)
    );
    let cancel = invite.cancel();
    assert_eq!(client.transact(siplb.addr(), &cancel).status(), Some(200));
    let ack = invite.ack_for(&busy);
    client.send(siplb.addr(), &ack);

    let server = farm.holder(&invite.call_id());
    let got = server.wait_call_id(&invite.call_id(), 4, ANSWER_WITHIN);
    let methods: Vec<String> = got
        .iter()
        .map(|d| {
            d.msg()
                .and_then(|m| m.method().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        methods,
        ["INVITE", "INVITE", "CANCEL", "ACK"],
        "what {} received",
        server.id()
    );
    assert_eq!(
        got[0].bytes, got[1].bytes,
        "the retransmission was forwarded differently"
    );

    let hop = Hop {
        siplb: siplb.addr(),
        client: client.addr(),
    };
    let originals = [invite.bytes(), invite.bytes(), cancel.bytes(), ack.bytes()];
    let branches: Vec<String> = originals
        .iter()
        .zip(&got)
        .map(|(sent, received)| assert_forwarded_intact(sent, &received.bytes, hop))
        .collect();
    assert!(
        branches.iter().all(|b| *b == branches[0]),
        "siplb's branch differs within one transaction: {branches:?}"
    );

    // A new transaction of the same caller: same server (same From AOR), a new branch.
    let second = Request::invite("alice@contoso.com", "bob@contoso.com");
    assert_eq!(client.transact(siplb.addr(), &second).status(), Some(486));
    assert_eq!(farm.holder(&second.call_id()).id(), server.id());
    let forwarded = &server.with_call_id(&second.call_id())[0];
    let branch = assert_forwarded_intact(&second.bytes(), &forwarded.bytes, hop);
    assert_ne!(
        branch, branches[0],
        "two transactions got the same siplb branch"
    );
}

#[test]
fn responses_come_back_without_siplb_via_and_with_received_and_rport() {
    let Testbed {
        farm,
        siplb,
        mut client,
    } = busy_farm();
    let invite = Request::invite("carol@contoso.com", "dave@contoso.com");
    let register = Request::register("carol@contoso.com");

    for (req, status) in [(&invite, 486), (&register, 200)] {
        let answer = client.transact(siplb.addr(), req);
        assert_eq!(answer.status(), Some(status));
        let server = farm.holder(&req.call_id());
        let sent = &server.sent_with_call_id(&req.call_id())[0];
        assert_response_intact(&sent.bytes, &answer.raw, siplb.addr());

        // The one Via left is the client's, with what siplb learned about the client added.
        let vias = answer.vias();
        assert_eq!(vias.len(), 1, "Vias at the client: {vias:?}");
        let via = &vias[0];
        assert!(
            via.starts_with(&format!("SIP/2.0/UDP {CLIENT_SENT_BY};")),
            "{via}"
        );
        assert_eq!(param(via, "branch"), Some(Some(req.branch())), "{via}");
        assert_eq!(
            param(via, "received"),
            Some(Some("127.0.0.1".into())),
            "{via}"
        );
        let port = client.addr().port().to_string();
        assert_eq!(param(via, "rport"), Some(Some(port)), "{via}");
    }
}

#[test]
fn a_client_without_rport_gets_responses_at_its_via_port() {
    let mut s = busy_farm();
    // No rport (RFC 3581 not spoken): the response goes to received (the source IP) and the
    // port written in the Via, here the client's real one.
    let via = format!(
        "Via: SIP/2.0/UDP {};branch={}",
        s.client.addr(),
        unique("z9hG4bK")
    );
    let req = Request::register("erin@contoso.com").set_line("via", &via);
    let ex = s.exchange(&req.bytes());
    let answer = ex.response.expect("a response");
    assert_eq!(answer.status(), Some(200));
    let vias = answer.vias();
    assert_eq!(
        param(&vias[0], "rport"),
        None,
        "siplb added an rport: {vias:?}"
    );
}
