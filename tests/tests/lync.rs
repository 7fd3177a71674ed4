//! A Lync 2013 client signing in through siplb, shaped like the real thing (LYNC.md): REGISTER →
//! 401 with an NTLM challenge naming the server in `targetname` → REGISTER with
//! `Proxy-Authorization` → 200 with `ms-keep-alive`, then SUBSCRIBE to the roaming contacts and a
//! SERVICE presence publication.
//!
//! The security association lives on the one server named in `targetname`, so every step must
//! reach that server; and Lync signs Call-ID, CSeq, From/To with tags, P-Asserted-Identity..., so
//! every byte other than siplb's own edits must arrive unchanged, in both directions.

use siplb_e2e::request::unique;
use siplb_e2e::{Behaviour, Msg, Request, Testbed};

const USER_AGENT: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

/// One signed-in Lync endpoint: its identity and the registration dialog's fixed fields.
struct Endpoint {
    aor: String,
    from: String,
    register_call_id: String,
}

impl Endpoint {
    fn new(aor: &str) -> Endpoint {
        Endpoint {
            aor: aor.to_string(),
            from: format!("<sip:{aor}>;tag={};epid={}", unique("lt"), unique("ep")),
            register_call_id: unique("lync-reg-"),
        }
    }

    /// The common shape of this endpoint's requests.
    fn request(&self, method: &str, ruri: &str, call_id: &str, cseq: u32) -> Request {
        Request::new(method, ruri, &self.aor, &self.aor)
            .set("From", &self.from)
            .set("Call-ID", call_id)
            .set("CSeq", &format!("{cseq} {method}"))
            .with("User-Agent", USER_AGENT)
    }

    fn register(&self, cseq: u32) -> Request {
        let domain = self.aor.rsplit('@').next().unwrap_or_default();
        self.request("REGISTER", &format!("sip:{domain}"), &self.register_call_id, cseq)
            .with(
                "Contact",
                "<sip:127.0.0.2:5060;transport=udp;ms-opaque=d3470f2e1d>;methods=\"INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY\";proxy=replace;+sip.instance=\"<urn:uuid:4DD9E5B1-1B1C-5B4F-9C2E-6D1A9B2C3D4E>\"",
            )
            .with("Supported", "gruu-10, adhoclist, msrtc-event-categories")
            .with("Supported", "ms-forking")
            .with("Supported", "ms-cluster-failover")
            .with("ms-keep-alive", "UAC;hop-hop=yes")
            .with("Event", "registration")
    }

    /// MS-SIPAE credentials for the server that challenged (`targetname`).
    fn authorization(targetname: &str, cnum: u32) -> String {
        format!(
            "NTLM qop=\"auth\", realm=\"SIP Communications Service\", opaque=\"B6D2E1A0\", targetname=\"{targetname}\", crand=\"8a1c4f2e\", cnum=\"{cnum}\", response=\"0100000045c2f9a1d3b7e6f2{cnum:08x}\""
        )
    }
}

/// The `targetname` of the NTLM challenge in a 401.
fn ntlm_targetname(challenge: &Msg) -> String {
    let ntlm = challenge
        .header_lines("www-authenticate")
        .find(|h| h.value.starts_with("NTLM"))
        .expect("401 without an NTLM WWW-Authenticate");
    let at = ntlm
        .value
        .find("targetname=\"")
        .expect("challenge without targetname")
        + 12;
    ntlm.value[at..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Signs `ep` in through siplb and returns the server that holds its security association.
fn sign_in(s: &mut Testbed, ep: &Endpoint) -> String {
    let first = s.exchange(&ep.register(1).bytes());
    let challenge = first.response.expect("an answer to REGISTER");
    assert_eq!(challenge.status(), Some(401));
    let target = ntlm_targetname(&challenge);
    assert_eq!(
        target, first.server,
        "the 401 came from another server than it names"
    );

    let second = ep
        .register(2)
        .with("Proxy-Authorization", &Endpoint::authorization(&target, 1));
    let done = s.exchange(&second.bytes());
    assert_eq!(
        done.server, target,
        "the authenticated REGISTER left the challenging server"
    );
    let ok = done.response.expect("an answer to REGISTER");
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.header("ms-keep-alive"),
        Some("UAS; tcp=no; hop-hop=yes; end-end=no; timeout=300")
    );
    target
}

fn lync_farm() -> Testbed {
    Testbed::single_pool(4, Behaviour::LyncAuth)
}

#[test]
fn sign_in_subscribe_and_service_stay_on_the_server_named_in_targetname() {
    let mut s = lync_farm();
    let ep = Endpoint::new("alice@contoso.com");
    let target = sign_in(&mut s, &ep);

    let subscribe = ep
        .request(
            "SUBSCRIBE",
            &format!("sip:{}", ep.aor),
            &unique("lync-sub-"),
            1,
        )
        .with(
            "Contact",
            &format!("<sip:{};opaque=user:epid:5ac1e2b4f7;gruu>", ep.aor),
        )
        .with("Event", "vnd-microsoft-roaming-contacts")
        .with("Accept", "application/vnd-microsoft-roaming-contacts+xml")
        .with("Supported", "com.microsoft.autoextend")
        .with("Supported", "ms-benotify")
        .with("Proxy-Require", "ms-benotify")
        .with("Supported", "ms-piggyback-first-notify")
        .with("P-Asserted-Identity", &format!("<sip:{}>", ep.aor))
        .with("Proxy-Authorization", &Endpoint::authorization(&target, 2));
    let service_body = format!(
        "<publish xmlns=\"http://schemas.microsoft.com/2006/09/sip/rich-presence\"><publications uri=\"sip:{}\"><publication categoryName=\"state\" instance=\"1\" container=\"2\" version=\"0\" expireType=\"endpoint\"><state xmlns=\"http://schemas.microsoft.com/2006/09/sip/state\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" manual=\"false\" xsi:type=\"machineState\"><availability>3500</availability></state></publication></publications></publish>",
        ep.aor
    );
    let service = ep
        .request(
            "SERVICE",
            &format!("sip:{}", ep.aor),
            &unique("lync-svc-"),
            1,
        )
        .with(
            "Contact",
            &format!("<sip:{};opaque=user:epid:5ac1e2b4f7;gruu>", ep.aor),
        )
        .with("P-Preferred-Identity", &format!("<sip:{}>", ep.aor))
        .with("Proxy-Authorization", &Endpoint::authorization(&target, 3))
        .body(
            "application/msrtc-category-publish+xml",
            service_body.as_bytes(),
        );

    for req in [subscribe, service] {
        let ex = s.exchange(&req.bytes());
        assert_eq!(
            ex.server,
            target,
            "{} left the signed-in server",
            req.method()
        );
        assert_eq!(ex.response.and_then(|m| m.status()), Some(200));
    }
}

#[test]
fn every_user_signs_in_on_the_server_its_challenge_names() {
    let mut s = lync_farm();
    let mut servers = std::collections::BTreeSet::new();
    for i in 0..20 {
        let ep = Endpoint::new(&format!("user{i}@contoso.com"));
        servers.insert(sign_in(&mut s, &ep));
    }
    assert!(servers.len() > 1, "20 users all signed in on {servers:?}");
}
