//! The RFC 4475 torture messages (kept in `tests/torture/`, adapted to loopback) and the
//! invalid requests of the section-5 contract, through the real siplb.
//!
//! Valid messages (RFC 4475 §3.1.1) are routed and reach one server with only siplb's own edits
//! (its Via, `received`/`rport`, Max-Forwards), and the server's answer comes back intact.
//! Invalid requests (§3.1.2, §3.3) get the contract's answer (400 naming the header, 505, 416,
//! 420 with `Unsupported`, 483), or, when no answer can be routed back, a drop counted in
//! `siplb_drops_total{reason="malformed"}`; never a forward to a server. Every test then shows
//! siplb still routes a good request, so none of them took it down.

use std::time::Duration;

use siplb_e2e::answer::{assert_own_answer, reason};
use siplb_e2e::client::ANSWER_WITHIN;
use siplb_e2e::ops::{wait_until, Ops};
use siplb_e2e::request::unique;
use siplb_e2e::sip::{show, split_head};
use siplb_e2e::{
    assert_response_intact, response_to, torture, Backend, Behaviour, Client, Config, Farm, Msg,
    Request, Siplb, Testbed,
};

/// Servers fe1 and fe2 in pool `fe`, a catch-all route, the ops endpoint on.
fn bed() -> (Testbed, Ops) {
    let farm = Farm::start("fe", 2, Behaviour::Accept);
    let config = Config::single_pool(&farm.backends).ops();
    let siplb = Siplb::start(&config.render());
    Testbed::with_ops(farm, siplb)
}

/// The placeholders torture files use: the servers' addresses.
fn vars(tb: &Testbed) -> Vec<(&'static str, String)> {
    vec![
        ("fe1", tb.farm.get("fe1").addr().to_string()),
        ("fe2", tb.farm.get("fe2").addr().to_string()),
    ]
}

fn drops(ops: &Ops, reason: &str) -> f64 {
    ops.metrics()
        .sum("siplb_drops_total", &[("reason", reason)])
}

/// siplb still routes an ordinary REGISTER to a server and relays its 200.
fn still_routes(tb: &mut Testbed) {
    let (status, server) = tb.register(&format!("{}@contoso.com", unique("after")));
    assert_eq!(status, 200, "siplb no longer routes a good request");
    assert!(server.is_some(), "the good REGISTER reached no server");
}

/// No server received anything but siplb's probes.
fn assert_nothing_forwarded(tb: &Testbed, sent: &[u8]) {
    for b in &tb.farm.backends {
        let got = b.requests();
        assert!(
            got.is_empty(),
            "{} received a forward of an invalid request\n--- sent ---\n{}\n--- received ---\n{}",
            b.id(),
            show(sent),
            show(&got[0].bytes)
        );
    }
}

/// A valid torture message is forwarded with only siplb's edits; returns the server it reached.
fn forwarded_intact(name: &str) -> String {
    let (mut tb, _ops) = bed();
    let sent = torture::load(name, &vars(&tb));
    let ex = tb.exchange(&sent);
    still_routes(&mut tb);
    ex.server
}

#[test]
fn rfc4475_3_1_1_1_wsinv_short_tortuous_invite() {
    // Its Route names fe1: followed, whatever the key says.
    assert_eq!(forwarded_intact("valid/wsinv"), "fe1");
}

#[test]
fn rfc4475_3_1_1_2_intmeth_wide_range_of_valid_characters() {
    forwarded_intact("valid/intmeth");
}

#[test]
fn rfc4475_3_1_1_3_esc01_valid_escaping() {
    forwarded_intact("valid/esc01");
}

#[test]
fn rfc4475_3_1_1_4_escnull_escaped_nulls() {
    forwarded_intact("valid/escnull");
}

#[test]
fn rfc4475_3_1_1_5_esc02_percent_not_an_escape() {
    forwarded_intact("valid/esc02");
}

#[test]
fn rfc4475_3_1_1_6_lwsdisp_no_lws_before_laquot() {
    forwarded_intact("valid/lwsdisp");
}

#[test]
fn rfc4475_3_1_1_7_longreq_long_values() {
    forwarded_intact("valid/longreq");
}

#[test]
fn rfc4475_3_1_1_8_dblreq_extra_trailing_octets() {
    // Only the REGISTER (to its Content-Length: 0) is forwarded; the INVITE behind it is not.
    let (mut tb, _ops) = bed();
    let sent = torture::load("valid/dblreq", &vars(&tb));
    let (head, _) = split_head(&sent).expect("dblreq has headers");
    let first = sent[..head.len() + 4].to_vec();
    tb.exchange_expecting(&sent, &first);
    for b in &tb.farm.backends {
        assert_eq!(
            b.count_method("INVITE"),
            0,
            "{} got the trailing INVITE",
            b.id()
        );
    }
    still_routes(&mut tb);
}

#[test]
fn rfc4475_3_1_1_9_semiuri_semicolons_in_user_part() {
    forwarded_intact("valid/semiuri");
}

#[test]
fn rfc4475_3_1_1_10_transports_varied_transports() {
    forwarded_intact("valid/transports");
}

#[test]
fn rfc4475_3_1_1_11_mpart01_multipart_binary_body() {
    // Its Route names fe2.
    assert_eq!(forwarded_intact("valid/mpart01"), "fe2");
}

/// What siplb must do with an invalid request.
enum Expect {
    /// Answer with this status and one of these reason phrases.
    Answer(u16, &'static [&'static str]),
    /// Answer with one of these statuses (any reason naming a header for a 400), or drop it
    /// counted as `malformed` when it cannot read enough to answer.
    AnswerOrMalformed(&'static [u16]),
}

/// Sends `sent` and checks siplb's answer or counted drop; nothing reaches a server, and siplb
/// routes a good request afterwards.
fn rejected(tb: &mut Testbed, ops: &Ops, sent: &[u8], expect: Expect) {
    let malformed_before = drops(ops, "malformed");
    let client = tb.client.addr();
    tb.client.send_raw(tb.siplb.addr(), sent);
    match expect {
        Expect::Answer(status, reasons) => {
            let answer = tb
                .client
                .wait_for(ANSWER_WITHIN, Msg::is_response)
                .unwrap_or_else(|| panic!("no answer to\n{}", show(sent)));
            assert!(
                reasons.contains(&reason(&answer)),
                "answer {:?}, expected {status} with a reason among {reasons:?}\n{}",
                answer.start,
                show(&answer.raw)
            );
            assert_own_answer(sent, &answer, status, client);
        }
        Expect::AnswerOrMalformed(statuses) => {
            let outcome = wait_until("an answer or a malformed drop", ANSWER_WITHIN, || {
                if let Some(a) = tb
                    .client
                    .wait_for(Duration::from_millis(20), Msg::is_response)
                {
                    return Ok(Some(a));
                }
                let now = drops(ops, "malformed");
                if now > malformed_before {
                    return Ok(None);
                }
                Err(format!("no answer, malformed drops {now}"))
            });
            if let Some(answer) = outcome {
                let status = answer.status().unwrap_or_default();
                assert!(
                    statuses.contains(&status),
                    "answer {:?}, expected one of {statuses:?} or a malformed drop\n{}",
                    answer.start,
                    show(&answer.raw)
                );
                if status == 400 {
                    let r = reason(&answer);
                    assert!(
                        r != "Bad Request" && (r.starts_with("Bad ") || r.starts_with("Missing ")),
                        "a 400 must name the header: {:?}",
                        answer.start
                    );
                }
                assert_own_answer(sent, &answer, status, client);
            }
        }
    }
    tb.client.clear_inbox();
    assert_nothing_forwarded(tb, sent);
    still_routes(tb);
}

fn torture_rejected(name: &str, expect: Expect) {
    let (mut tb, ops) = bed();
    let sent = torture::load(name, &vars(&tb));
    rejected(&mut tb, &ops, &sent, expect);
}

#[test]
fn rfc4475_3_1_2_1_badinv01_extraneous_separators() {
    torture_rejected("invalid/badinv01", Expect::AnswerOrMalformed(&[400]));
}

#[test]
fn rfc4475_3_1_2_2_clerr_content_length_larger_than_message() {
    torture_rejected(
        "invalid/clerr",
        Expect::Answer(400, &["Bad Content-Length"]),
    );
}

#[test]
fn rfc4475_3_1_2_3_ncl_negative_content_length() {
    torture_rejected("invalid/ncl", Expect::AnswerOrMalformed(&[400]));
}

#[test]
fn rfc4475_3_1_2_4_scalar02_overlarge_scalars() {
    // CSeq 2**65 and Max-Forwards 300: whichever siplb reads first is named.
    torture_rejected(
        "invalid/scalar02",
        Expect::Answer(400, &["Bad CSeq", "Bad Max-Forwards"]),
    );
}

#[test]
fn rfc4475_3_1_2_6_quotbal_unterminated_quote() {
    torture_rejected("invalid/quotbal", Expect::Answer(400, &["Bad To"]));
}

#[test]
fn rfc4475_3_1_2_7_ltgtruri_request_uri_in_angle_brackets() {
    torture_rejected("invalid/ltgtruri", Expect::AnswerOrMalformed(&[400, 416]));
}

#[test]
fn rfc4475_3_1_2_8_lwsruri_lws_in_request_uri() {
    torture_rejected(
        "invalid/lwsruri",
        Expect::AnswerOrMalformed(&[400, 416, 505]),
    );
}

#[test]
fn rfc4475_3_1_2_9_lwsstart_several_sp_in_request_line() {
    torture_rejected(
        "invalid/lwsstart",
        Expect::AnswerOrMalformed(&[400, 416, 505]),
    );
}

#[test]
fn rfc4475_3_1_2_10_trws_sp_at_end_of_request_line() {
    torture_rejected("invalid/trws", Expect::AnswerOrMalformed(&[400, 505]));
}

#[test]
fn rfc4475_3_1_2_16_badvers_unknown_protocol_version() {
    torture_rejected(
        "invalid/badvers",
        Expect::Answer(505, &["Version Not Supported"]),
    );
}

#[test]
fn rfc4475_3_1_2_17_mismatch01_cseq_method_mismatch() {
    torture_rejected("invalid/mismatch01", Expect::Answer(400, &["Bad CSeq"]));
}

#[test]
fn rfc4475_3_1_2_18_mismatch02_unknown_method_cseq_mismatch() {
    torture_rejected("invalid/mismatch02", Expect::Answer(400, &["Bad CSeq"]));
}

#[test]
fn rfc4475_3_3_1_insuf_missing_required_headers() {
    // Call-ID, From and To are all missing: whichever siplb notices first is named.
    torture_rejected(
        "invalid/insuf",
        Expect::Answer(400, &["Missing Call-ID", "Missing From", "Missing To"]),
    );
}

#[test]
fn rfc4475_3_3_2_unkscm_unknown_uri_scheme() {
    torture_rejected(
        "invalid/unkscm",
        Expect::Answer(416, &["Unsupported URI Scheme"]),
    );
}

#[test]
fn rfc4475_3_3_3_novelsc_atypical_uri_scheme() {
    torture_rejected(
        "invalid/novelsc",
        Expect::Answer(416, &["Unsupported URI Scheme"]),
    );
}

#[test]
fn rfc4475_3_3_5_bext01_proxy_require_gets_420_with_unsupported() {
    let (mut tb, ops) = bed();
    let sent = torture::load("invalid/bext01", &vars(&tb));
    tb.client.send_raw(tb.siplb.addr(), &sent);
    let answer = tb
        .client
        .wait_for(ANSWER_WITHIN, Msg::is_response)
        .unwrap_or_else(|| panic!("no answer to\n{}", show(&sent)));
    assert_eq!(
        answer.start,
        "SIP/2.0 420 Bad Extension",
        "{}",
        show(&answer.raw)
    );
    // Only Proxy-Require's tags: Require is for the UAS, not for siplb (RFC 3261 §8.2.2.3).
    let unsupported: Vec<String> = answer
        .header_lines("unsupported")
        .flat_map(|h| {
            h.value
                .split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        unsupported,
        vec!["noProxiesSupportThis", "nothingSupportedHere"],
        "{}",
        show(&answer.raw)
    );
    assert_own_answer(&sent, &answer, 420, tb.client.addr());
    assert_nothing_forwarded(&tb, &sent);
    let _ = ops;
    still_routes(&mut tb);
}

#[test]
fn rfc4475_3_3_11_zeromf_max_forwards_zero_gets_483() {
    torture_rejected("invalid/zeromf", Expect::Answer(483, &["Too Many Hops"]));
}

// The contract's own cases, written with the request builder.

fn contract_rejected(req: Request, status: u16, reasons: &'static [&'static str]) {
    let (mut tb, ops) = bed();
    rejected(&mut tb, &ops, &req.bytes(), Expect::Answer(status, reasons));
}

fn register() -> Request {
    Request::register("alice@contoso.com")
}

#[test]
fn cseq_method_other_than_the_request_method_gets_400_bad_cseq() {
    contract_rejected(register().set("CSeq", "1 INVITE"), 400, &["Bad CSeq"]);
}

#[test]
fn cseq_without_a_number_gets_400_bad_cseq() {
    contract_rejected(register().set("CSeq", "one REGISTER"), 400, &["Bad CSeq"]);
}

#[test]
fn cseq_above_32_bits_gets_400_bad_cseq() {
    contract_rejected(
        register().set("CSeq", "4294967296 REGISTER"),
        400,
        &["Bad CSeq"],
    );
}

#[test]
fn max_forwards_300_gets_400_bad_max_forwards() {
    // Not rewritten to 255 and forwarded, as siplb did before.
    contract_rejected(
        register().set("Max-Forwards", "300"),
        400,
        &["Bad Max-Forwards"],
    );
}

#[test]
fn max_forwards_not_a_number_gets_400_bad_max_forwards() {
    contract_rejected(
        register().set("Max-Forwards", "seventy"),
        400,
        &["Bad Max-Forwards"],
    );
}

#[test]
fn content_length_larger_than_the_body_gets_400_bad_content_length() {
    let mut req = Request::new(
        "MESSAGE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .body("text/plain", b"hello");
    req.content_length = siplb_e2e::request::ContentLength::Omit;
    let req = req.with("Content-Length", "6");
    contract_rejected(req, 400, &["Bad Content-Length"]);
}

#[test]
fn missing_call_id_gets_400_missing_call_id() {
    contract_rejected(register().without("Call-ID"), 400, &["Missing Call-ID"]);
}

#[test]
fn missing_from_gets_400_missing_from() {
    contract_rejected(register().without("From"), 400, &["Missing From"]);
}

#[test]
fn missing_to_gets_400_missing_to() {
    contract_rejected(register().without("To"), 400, &["Missing To"]);
}

#[test]
fn missing_cseq_gets_400_missing_cseq() {
    contract_rejected(register().without("CSeq"), 400, &["Missing CSeq"]);
}

#[test]
fn from_without_a_uri_gets_400_bad_from() {
    contract_rejected(register().set("From", "Alice;tag=1"), 400, &["Bad From"]);
}

#[test]
fn to_without_a_uri_gets_400_bad_to() {
    contract_rejected(register().set("To", "\"Alice\""), 400, &["Bad To"]);
}

#[test]
fn sip_version_other_than_2_0_gets_505() {
    let mut req = register();
    req.start = "REGISTER sip:contoso.com SIP/3.0".into();
    contract_rejected(req, 505, &["Version Not Supported"]);
}

#[test]
fn an_unknown_uri_scheme_gets_416() {
    let req = Request::new(
        "MESSAGE",
        "http://contoso.com/bob",
        "alice@contoso.com",
        "bob@contoso.com",
    );
    contract_rejected(req, 416, &["Unsupported URI Scheme"]);
}

#[test]
fn proxy_require_gets_420_with_every_tag_unsupported() {
    let req = register().with("Proxy-Require", "foo, bar");
    let (mut tb, _ops) = bed();
    let sent = req.bytes();
    let answer = tb.client.transact(tb.siplb.addr(), &req);
    assert_eq!(
        answer.start,
        "SIP/2.0 420 Bad Extension",
        "{}",
        show(&answer.raw)
    );
    let tags: Vec<&str> = answer
        .header("unsupported")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(tags, ["foo", "bar"], "{}", show(&answer.raw));
    assert_own_answer(&sent, &answer, 420, tb.client.addr());
    assert_nothing_forwarded(&tb, &sent);
    still_routes(&mut tb);
}

#[test]
fn an_invalid_ack_is_never_answered_and_is_counted() {
    let (mut tb, ops) = bed();
    let ack = Request::new(
        "ACK",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .set("To", "<sip:bob@contoso.com>;tag=x1")
    .set("CSeq", "1 INVITE");
    let before = drops(&ops, "ack_unroutable") + drops(&ops, "malformed");
    tb.client.send(tb.siplb.addr(), &ack);
    wait_until("the ACK counted as dropped", ANSWER_WITHIN, || {
        let now = drops(&ops, "ack_unroutable") + drops(&ops, "malformed");
        (now > before).then_some(()).ok_or(format!("drops {now}"))
    });
    tb.client.assert_no_answer(&ack.call_id());
    assert_nothing_forwarded(&tb, &ack.bytes());
    still_routes(&mut tb);
}

#[test]
fn a_request_whose_top_via_is_unreadable_is_dropped_as_malformed() {
    let (mut tb, ops) = bed();
    let req = register().set_line("via", "Via: garbage");
    let before = drops(&ops, "malformed");
    tb.client.send(tb.siplb.addr(), &req);
    wait_until("a malformed drop", ANSWER_WITHIN, || {
        let now = drops(&ops, "malformed");
        (now > before).then_some(()).ok_or(format!("drops {now}"))
    });
    tb.client.assert_no_answer(&req.call_id());
    assert_nothing_forwarded(&tb, &req.bytes());
    still_routes(&mut tb);
}

// RFC 4475's responses: a server (that writes its responses itself) answers a real forwarded
// request with them.

/// siplb in front of one server that answers nothing by itself; a REGISTER through it, and the
/// request as the server received it.
fn response_bed() -> (Backend, Siplb, Ops, Client, Request, Msg) {
    let backend = Backend::start("fe1", Behaviour::Mute);
    let config = Config::single_pool(std::slice::from_ref(&backend)).ops();
    let siplb = Siplb::start(&config.render());
    let ops = Ops::of(&siplb);
    let client = Client::new();
    let req = Request::register(&format!("{}@contoso.com", unique("u")));
    client.send(siplb.addr(), &req);
    let fwd = Msg::must_parse(&backend.wait_request(&req.call_id(), ANSWER_WITHIN).bytes);
    (backend, siplb, ops, client, req, fwd)
}

/// `status_line` as the first line of the server's response to `fwd`, bytes and all.
fn response_with(fwd: &Msg, status_line: &[u8]) -> Vec<u8> {
    let plain = response_to(fwd, "SIP/2.0 200 OK");
    let mut out = status_line.to_vec();
    out.extend_from_slice(&plain["SIP/2.0 200 OK".len()..]);
    out
}

#[test]
fn rfc4475_3_1_1_12_unreason_unusual_reason_phrase_is_relayed_intact() {
    // §3.1.1.12 (unreason): a 200 whose reason phrase is `= 2**3 * 5**2` and UTF-8 Cyrillic.
    let (backend, siplb, _ops, mut client, req, fwd) = response_bed();
    let mut line = b"SIP/2.0 200 = 2**3 * 5**2 ".to_vec();
    line.extend_from_slice(
        b"\xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd1\x82\xd1\x8c",
    );
    let resp = response_with(&fwd, &line);
    backend.send_raw(siplb.addr(), &resp);
    let got = client
        .final_response(&req)
        .unwrap_or_else(|| panic!("not relayed:\n{}", show(&resp)));
    assert_response_intact(&resp, &got.raw, siplb.addr());
}

#[test]
fn rfc4475_3_1_1_13_noreason_empty_reason_phrase_is_relayed_intact() {
    // §3.1.1.13 (noreason): `SIP/2.0 100 ` with nothing after the code's SP, then a final 200.
    let (backend, siplb, _ops, mut client, req, fwd) = response_bed();
    let resp = response_with(&fwd, b"SIP/2.0 100 ");
    backend.send_raw(siplb.addr(), &resp);
    let call_id = req.call_id();
    let got = client
        .wait_for(ANSWER_WITHIN, |m| {
            m.status() == Some(100) && m.call_id() == Some(call_id.as_str())
        })
        .unwrap_or_else(|| panic!("not relayed:\n{}", show(&resp)));
    assert_response_intact(&resp, &got.raw, siplb.addr());
}

#[test]
fn rfc4475_3_1_2_19_bigcode_overlarge_status_code_is_dropped_as_malformed() {
    // §3.1.2.19 (bigcode): status code 4294967301. A malformed response is dropped, counted.
    let (backend, siplb, ops, mut client, req, fwd) = response_bed();
    let before = drops(&ops, "malformed");
    backend.send_raw(
        siplb.addr(),
        &response_with(&fwd, b"SIP/2.0 4294967301 better not break the receiver"),
    );
    wait_until("a malformed drop", ANSWER_WITHIN, || {
        let now = drops(&ops, "malformed");
        (now > before).then_some(()).ok_or(format!("drops {now}"))
    });
    client.assert_no_answer(&req.call_id());
    // The genuine response still goes through.
    let genuine = response_to(&fwd, "SIP/2.0 200 OK");
    backend.send_raw(siplb.addr(), &genuine);
    let got = client
        .final_response(&req)
        .expect("the genuine response relayed");
    assert_response_intact(&genuine, &got.raw, siplb.addr());
}

// The other side of each check: what is valid stays forwarded, with only siplb's edits.

#[test]
fn sip_and_tel_request_uris_are_forwarded() {
    let (mut tb, _ops) = bed();
    for ruri in ["sip:bob@contoso.com", "tel:+14255550100"] {
        let req = Request::new("MESSAGE", ruri, "alice@contoso.com", "bob@contoso.com");
        tb.exchange(&req.bytes());
    }
}

#[test]
fn sips_request_uris_are_forwarded_only_over_tls() {
    let (mut tb, ops) = bed();
    // This bed's servers speak UDP: a SIPS request would leave siplb in the clear
    // (RFC 3261 §26.2.2), so it is answered instead (tests/tests/tls_flows.rs forwards one to
    // a TLS server).
    let sips = Request::new(
        "MESSAGE",
        "sips:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    );
    rejected(
        &mut tb,
        &ops,
        &sips.bytes(),
        Expect::Answer(480, &["SIPS Needs TLS"]),
    );
}

#[test]
fn require_without_proxy_require_is_forwarded() {
    // Require is for the UAS (RFC 3261 §8.2.2.3); a proxy only looks at Proxy-Require (§16.3).
    let (mut tb, _ops) = bed();
    tb.exchange(&register().with("Require", "nothingSupportedHere").bytes());
}

#[test]
fn boundary_values_are_forwarded() {
    // CSeq 2**32 - 1, Max-Forwards 255 and 1, Content-Length equal to the body: all valid.
    let (mut tb, _ops) = bed();
    tb.exchange(&register().set("CSeq", "4294967295 REGISTER").bytes());
    tb.exchange(&register().set("Max-Forwards", "255").bytes());
    tb.exchange(&register().set("Max-Forwards", "1").bytes());
    let req = Request::new(
        "MESSAGE",
        "sip:bob@contoso.com",
        "alice@contoso.com",
        "bob@contoso.com",
    )
    .body("text/plain", b"exactly this");
    tb.exchange(&req.bytes());
}

// RFC 4475 §3.3 and §3.4: requests whose oddity is for the UAS or registrar to judge. A proxy
// forwards them, with only its own edits.

#[test]
fn rfc4475_3_3_6_invut_unknown_content_type_is_forwarded_intact() {
    forwarded_intact("valid/invut");
}

#[test]
fn rfc4475_3_3_7_regaut01_unknown_authorization_scheme_is_forwarded_intact() {
    forwarded_intact("valid/regaut01");
}

#[test]
fn rfc4475_3_3_12_cparam01_contact_header_parameter_is_forwarded_intact() {
    forwarded_intact("valid/cparam01");
}

#[test]
fn rfc4475_3_3_13_cparam02_contact_url_parameter_is_forwarded_intact() {
    forwarded_intact("valid/cparam02");
}

#[test]
fn rfc4475_3_3_14_regescrt_escaped_header_in_contact_is_forwarded_intact() {
    forwarded_intact("valid/regescrt");
}

#[test]
fn rfc4475_3_3_15_sdp01_unacceptable_accept_is_forwarded_intact() {
    forwarded_intact("valid/sdp01");
}

#[test]
fn rfc4475_3_4_1_inv2543_rfc2543_syntax_is_forwarded_intact() {
    forwarded_intact("valid/inv2543");
}
