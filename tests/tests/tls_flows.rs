//! TLS flows through the built `siplb` binary: [`StreamClient`]s speaking TLS to siplb's
//! `[listen] tls` listener (Lync clients, a gateway trunk), [`StreamBackend`]s behind it over
//! TCP, TLS and mutual TLS (Front Ends), and a datagram [`Client`] for the placement over UDP
//! every TLS user is compared with. Every assertion is on what the peers received.
//!
//! - One TLS connection per user: every REGISTER is answered 200, each user reaches the server
//!   it reaches over UDP, and each flow gets a backend connection of its own (a 1:1 pair).
//! - One TLS trunk carrying 200 users: all answered, spread over every server of the pool, each
//!   user on its UDP server, over one backend connection per server.
//! - A TCP pool and a TLS pool, one TLS server demanding a client certificate: siplb presents
//!   the pool's `tls` certificate and every user keeps its UDP placement; without the
//!   certificate in the config that server's requests fail, and a `tls-connect` probe marks it
//!   down so its users land on the others.
//! - A Lync-shaped sign-in over TLS with three clients connected: the Front End's NOTIFY and
//!   BENOTIFY, sent on the connection the REGISTER arrived on, reach that client's flow and no
//!   other; the client's 200 to the NOTIFY reaches the Front End on that connection; BENOTIFY
//!   gets no answer and the flow goes on: a refresh, a keep-alive's pong and a contact-list
//!   NOTIFY larger than any datagram all pass.
//! - A Front End that dies closes the TLS flows of its clients (and only theirs); they sign
//!   in again on the other.
//! - `sips:` (RFC 3261 §26.2.2): refused 480 towards a TCP pool, forwarded to a TLS pool.
//!
//! Each test makes its own PKI ([`Pki`]), every port is `127.0.0.1:0`, every wait has a
//! deadline, and every process and peer a test starts is stopped when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::request::unique;
use siplb_e2e::stream::{Dial, Listen, StreamBackend, StreamClient, ANSWER_WITHIN, QUIET_FOR};
use siplb_e2e::tls::Pki;
use siplb_e2e::{Client, Msg, Request, Siplb};

/// The domain of the users of a single-pool test.
const DOMAIN: &str = "contoso.com";

/// How long a bounded run of many REGISTERs may take.
const RUN_WITHIN: Duration = Duration::from_secs(60);

/// REGISTERs outstanding at once from the datagram client.
const UDP_WINDOW: usize = 20;

/// The name the TLS servers of an MTLS pool are verified for (the pool's FQDN, as Lync
/// servers' certificates carry it).
const POOL_NAME: &str = "fe-tls.contoso.com";

const USER_AGENT: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

// --------------------------------------------------------------------------------------------
// Configs

/// How siplb talks to a pool's servers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Plain TCP, probed with `tcp-connect`.
    Tcp,
    /// TLS verified against the test CA, probed with `tls-connect`.
    Tls,
    /// Like [`Link::Tls`], presenting the PKI's client leaf (`tls = { cert, key }`) and
    /// verifying the servers for [`POOL_NAME`] (`tls = { server_name }`).
    Mtls,
}

/// A `[[pool]]` and the `[[route]]` that sends a domain's requests to it.
struct PoolSpec<'a> {
    name: &'a str,
    domain: &'a str,
    link: Link,
    /// The pool's `health = { probe }`; `None`: the probe matching the link.
    probe: Option<&'a str>,
    servers: &'a [&'a StreamBackend],
}

impl<'a> PoolSpec<'a> {
    fn new(
        name: &'a str,
        domain: &'a str,
        link: Link,
        servers: &'a [&'a StreamBackend],
    ) -> PoolSpec<'a> {
        PoolSpec {
            name,
            domain,
            link,
            probe: None,
            servers,
        }
    }

    fn probe(mut self, probe: &'a str) -> PoolSpec<'a> {
        self.probe = Some(probe);
        self
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn path(p: &std::path::Path) -> String {
    quote(&p.to_string_lossy())
}

/// A config listening on UDP and on TLS (with the PKI's server leaf), the ops endpoint, probes
/// every 500 ms (each may take as long) that take a server down after `fall` failures, and each pool of `pools` with
/// a route from its domain.
fn config(pki: &Pki, pools: &[PoolSpec<'_>], fall: u32) -> String {
    let mut t = format!(
        "[listen]\nudp = [\"127.0.0.1:0\"]\n\
         tls = [{{ address = \"127.0.0.1:0\", cert = {}, key = {} }}]\nworkers = 1\n\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\nprobe = \"options\"\ninterval = \"500ms\"\ntimeout = \"500ms\"\n\
         fall = {fall}\nrise = 1\n\n",
        path(&pki.server.cert_path),
        path(&pki.server.key_path),
    );
    for p in pools {
        let (transport, probe) = match p.link {
            Link::Tcp => ("tcp", "tcp-connect"),
            Link::Tls | Link::Mtls => ("tls", "tls-connect"),
        };
        let probe = p.probe.unwrap_or(probe);
        t.push_str(&format!(
            "[[pool]]\nname = {}\nhealth = {{ probe = {} }}\n",
            quote(p.name),
            quote(probe)
        ));
        match p.link {
            Link::Tcp => {}
            Link::Tls => t.push_str(&format!("tls = {{ ca = {} }}\n", path(&pki.ca_path))),
            Link::Mtls => t.push_str(&format!(
                "tls = {{ ca = {}, server_name = {}, cert = {}, key = {} }}\n",
                path(&pki.ca_path),
                quote(POOL_NAME),
                path(&pki.client.cert_path),
                path(&pki.client.key_path)
            )),
        }
        let servers: Vec<String> = p
            .servers
            .iter()
            .map(|s| {
                format!(
                    "  {{ id = {}, address = \"{}\", transport = \"{transport}\" }}",
                    quote(s.id()),
                    s.addr()
                )
            })
            .collect();
        t.push_str(&format!("servers = [\n{}\n]\n\n", servers.join(",\n")));
    }
    for p in pools {
        t.push_str(&format!(
            "[[route]]\ndomain = {}\npool = {}\n\n",
            quote(p.domain),
            quote(p.name)
        ));
    }
    t
}

// --------------------------------------------------------------------------------------------
// Peers and placements

/// A TLS server of the test PKI; with `mtls`, it demands a client certificate the CA signed.
fn tls_backend(pki: &Pki, id: &str, mtls: bool) -> StreamBackend {
    StreamBackend::start(id, Listen::Tls(pki.server_config(mtls)))
}

/// `n` TLS servers of the test PKI, `{prefix}1` to `{prefix}n`, demanding no client
/// certificate.
fn tls_backends(pki: &Pki, prefix: &str, n: usize) -> Vec<StreamBackend> {
    (1..=n)
        .map(|i| tls_backend(pki, &format!("{prefix}{i}"), false))
        .collect()
}

/// siplb with [`config`] for one TLS pool `fe` of `servers`, routed from [`DOMAIN`].
fn start_tls_pool(pki: &Pki, servers: &[&StreamBackend], fall: u32) -> Siplb {
    Siplb::start(&config(
        pki,
        &[PoolSpec::new("fe", DOMAIN, Link::Tls, servers)],
        fall,
    ))
}

/// A TLS connection to siplb's TLS listener, verifying its certificate for `127.0.0.1`.
fn connect_tls(siplb: &Siplb, pki: &Pki) -> StreamClient {
    StreamClient::connect(siplb.tls(), Dial::tls(pki.client_config(false)))
}

/// `n` users `NAME000@domain`, ...
fn users(name: &str, n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("{name}{i:03}@{domain}")).collect()
}

/// Where one user's REGISTERs of one run arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Landing {
    /// The id of the server that got them.
    server: String,
    /// The server's connection ids they came on.
    conns: BTreeSet<u64>,
}

/// Every REGISTER of `sent` (Call-ID → user) as the servers received it: user → landing.
/// Panics when a user reached no server, or more than one.
fn landings(
    servers: &[&StreamBackend],
    sent: &BTreeMap<String, String>,
) -> BTreeMap<String, Landing> {
    let mut seen: BTreeMap<String, BTreeMap<String, BTreeSet<u64>>> = BTreeMap::new();
    for s in servers {
        for m in s.requests() {
            let msg = m.msg();
            if msg.method() != Some("REGISTER") {
                continue;
            }
            let Some(user) = msg.call_id().and_then(|c| sent.get(c)) else {
                continue;
            };
            seen.entry(user.clone())
                .or_default()
                .entry(s.id().to_string())
                .or_default()
                .insert(m.conn);
        }
    }
    let mut out = BTreeMap::new();
    for user in sent.values() {
        let on = seen.remove(user).unwrap_or_default();
        assert_eq!(
            on.len(),
            1,
            "{user}: its REGISTER reached {:?}, expected exactly one server",
            on.keys().collect::<Vec<_>>()
        );
        let (server, conns) = on.into_iter().next().expect("one server");
        out.insert(user.clone(), Landing { server, conns });
    }
    out
}

/// user → server id.
fn servers_of(landings: &BTreeMap<String, Landing>) -> BTreeMap<String, String> {
    landings
        .iter()
        .map(|(u, l)| (u.clone(), l.server.clone()))
        .collect()
}

/// Registers `users` over UDP through siplb (a flow-controlled run); asserts each got a 200 and
/// returns Call-ID → user.
fn register_over_udp(siplb: &Siplb, users: &[String]) -> BTreeMap<String, String> {
    let reqs: Vec<Request> = users.iter().map(|u| Request::register(u)).collect();
    let answers = Client::new().transact_many(siplb.addr(), &reqs, UDP_WINDOW, RUN_WITHIN);
    let failed: Vec<String> = answers
        .values()
        .filter(|m| m.status() != Some(200))
        .map(|m| m.start.clone())
        .collect();
    assert!(failed.is_empty(), "REGISTERs over UDP failed: {failed:?}");
    reqs.iter()
        .zip(users)
        .map(|(r, u)| (r.call_id(), u.clone()))
        .collect()
}

/// Asserts both placements put every user on the same server, naming those that differ.
fn assert_same_placement(
    what: &str,
    udp: &BTreeMap<String, String>,
    other: &BTreeMap<String, String>,
) {
    let moved: Vec<String> = udp
        .iter()
        .filter(|(u, s)| other.get(*u) != Some(*s))
        .map(|(u, s)| format!("{u}: UDP {s}, {what} {:?}", other.get(u)))
        .collect();
    assert!(
        moved.is_empty() && udp.len() == other.len(),
        "{what} placed {} of {} users elsewhere than UDP did: {moved:?}",
        moved.len(),
        udp.len()
    );
}

/// users per server id.
fn tally(placement: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for s in placement.values() {
        *n.entry(s.clone()).or_insert(0) += 1;
    }
    n
}

// --------------------------------------------------------------------------------------------
// 1. One TLS connection per user

#[test]
fn tls_clients_with_a_connection_each_are_all_answered_on_their_udp_servers_over_paired_connections(
) {
    let pki = Pki::new();
    let fes = tls_backends(&pki, "fe", 4);
    let servers: Vec<&StreamBackend> = fes.iter().collect();
    let siplb = start_tls_pool(&pki, &servers, 20);
    let users = users("tlsuser", 40, DOMAIN);

    let over_udp = landings(&servers, &register_over_udp(&siplb, &users));

    let mut clients = Vec::new();
    let mut sent = BTreeMap::new();
    let mut failures = Vec::new();
    for u in &users {
        let client = connect_tls(&siplb, &pki);
        let req = client.register_request(u);
        let answer = client.transact(&req);
        if answer.status() != Some(200) {
            failures.push(format!("{u}: {}", answer.start));
        }
        sent.insert(req.call_id(), u.clone());
        clients.push(client);
    }
    assert!(
        failures.is_empty(),
        "REGISTERs over TLS failed: {failures:?}"
    );
    let over_tls = landings(&servers, &sent);
    eprintln!(
        "users per server over TLS: {:?}",
        tally(&servers_of(&over_tls))
    );
    assert_same_placement("TLS", &servers_of(&over_udp), &servers_of(&over_tls));

    // A client flow gets a backend connection of its own on its server (a 1:1 pair), none of
    // them the connection datagram clients share.
    for s in &servers {
        let shared: BTreeSet<u64> = over_udp
            .values()
            .filter(|l| l.server == s.id())
            .flat_map(|l| l.conns.iter().copied())
            .collect();
        let flows: Vec<&Landing> = over_tls.values().filter(|l| l.server == s.id()).collect();
        let conns: BTreeSet<u64> = flows.iter().flat_map(|l| l.conns.iter().copied()).collect();
        assert!(
            flows.iter().all(|l| l.conns.len() == 1) && conns.len() == flows.len(),
            "{}: {} TLS users came over connections {conns:?}, expected one each",
            s.id(),
            flows.len()
        );
        assert!(
            shared.len() <= 1 && conns.is_disjoint(&shared),
            "{}: UDP users over {shared:?}, TLS users over {conns:?}",
            s.id()
        );
        for c in &conns {
            let info = s
                .connections()
                .into_iter()
                .find(|i| i.id == *c)
                .expect("a listed connection");
            assert!(
                info.closed.is_none(),
                "{}: flow connection {c} closed",
                s.id()
            );
        }
    }
    assert!(clients.iter().all(|c| !c.is_closed()));
}

// --------------------------------------------------------------------------------------------
// 2. A trunk: many users on one TLS connection

#[test]
fn a_tls_trunk_of_200_users_is_answered_spread_over_every_server_each_on_its_udp_server() {
    let pki = Pki::new();
    let fes = tls_backends(&pki, "gw-fe", 4);
    let servers: Vec<&StreamBackend> = fes.iter().collect();
    let siplb = start_tls_pool(&pki, &servers, 20);
    let users = users("trunk", 200, DOMAIN);

    let over_udp = landings(&servers, &register_over_udp(&siplb, &users));

    // A gateway writes its requests back to back, then reads the answers.
    let trunk = connect_tls(&siplb, &pki);
    let reqs: Vec<Request> = users.iter().map(|u| trunk.register_request(u)).collect();
    for r in &reqs {
        trunk.send(r);
    }
    let mut unanswered = Vec::new();
    let mut refused = Vec::new();
    for (r, u) in reqs.iter().zip(&users) {
        match trunk.final_response(r) {
            None => unanswered.push(u.clone()),
            Some(m) if m.status() != Some(200) => refused.push(format!("{u}: {}", m.start)),
            Some(_) => {}
        }
    }
    assert!(
        unanswered.is_empty() && refused.is_empty(),
        "trunk: {} unanswered ({:?}...), refused {refused:?}",
        unanswered.len(),
        unanswered.iter().take(5).collect::<Vec<_>>()
    );
    assert!(!trunk.is_closed(), "the trunk stays open");

    let sent = reqs
        .iter()
        .zip(&users)
        .map(|(r, u)| (r.call_id(), u.clone()))
        .collect();
    let over_trunk = landings(&servers, &sent);
    let spread = tally(&servers_of(&over_trunk));
    eprintln!("trunk users per server: {spread:?}");
    for s in &servers {
        assert!(
            spread.get(s.id()).is_some_and(|n| *n > 0),
            "{} got none of the trunk's users: {spread:?}",
            s.id()
        );
    }
    assert_same_placement(
        "the trunk",
        &servers_of(&over_udp),
        &servers_of(&over_trunk),
    );

    // The trunk's requests to one server share the backend connection of (trunk, server).
    for s in &servers {
        let conns: BTreeSet<u64> = over_trunk
            .values()
            .filter(|l| l.server == s.id())
            .flat_map(|l| l.conns.iter().copied())
            .collect();
        let shared: BTreeSet<u64> = over_udp
            .values()
            .filter(|l| l.server == s.id())
            .flat_map(|l| l.conns.iter().copied())
            .collect();
        assert_eq!(
            conns.len(),
            1,
            "{}: the trunk's users came over {conns:?}, expected one connection",
            s.id()
        );
        assert!(
            conns.is_disjoint(&shared),
            "{}: {conns:?} is the UDP one",
            s.id()
        );
    }
}

// --------------------------------------------------------------------------------------------
// 3. TCP and TLS pools, one server demanding siplb's client certificate

/// The pools of the mixed tests: three TCP servers for `tcp.contoso.com`, three TLS servers
/// for `tls.contoso.com`, the last of which demands a client certificate (as a Lync server
/// does of its peers).
struct Mixed {
    tcp: Vec<StreamBackend>,
    tls: Vec<StreamBackend>,
}

impl Mixed {
    fn start(pki: &Pki) -> Mixed {
        Mixed {
            tcp: (1..=3)
                .map(|i| StreamBackend::start(&format!("tcp{i}"), Listen::Tcp))
                .collect(),
            tls: vec![
                tls_backend(pki, "tls1", false),
                tls_backend(pki, "tls2", false),
                tls_backend(pki, "tls-mtls", true),
            ],
        }
    }

    fn mtls(&self) -> &StreamBackend {
        &self.tls[2]
    }

    fn tcp_servers(&self) -> Vec<&StreamBackend> {
        self.tcp.iter().collect()
    }

    fn tls_servers(&self) -> Vec<&StreamBackend> {
        self.tls.iter().collect()
    }

    fn all(&self) -> Vec<&StreamBackend> {
        self.tcp.iter().chain(&self.tls).collect()
    }
}

#[test]
fn tcp_and_tls_pools_with_a_server_demanding_siplbs_client_certificate_keep_every_user_placed() {
    let pki = Pki::with_names(&[POOL_NAME]);
    let mixed = Mixed::start(&pki);
    let (tcp, tls) = (mixed.tcp_servers(), mixed.tls_servers());
    let siplb = Siplb::start(&config(
        &pki,
        &[
            PoolSpec::new("fe-tcp", "tcp.contoso.com", Link::Tcp, &tcp),
            PoolSpec::new("fe-tls", "tls.contoso.com", Link::Mtls, &tls),
        ],
        20,
    ));
    let mut users = users("mixed", 30, "tcp.contoso.com");
    users.extend(self::users("mixed", 30, "tls.contoso.com"));
    let all = mixed.all();

    let over_udp = servers_of(&landings(&all, &register_over_udp(&siplb, &users)));

    let trunk = connect_tls(&siplb, &pki);
    let mut sent = BTreeMap::new();
    let mut failures = Vec::new();
    for u in &users {
        let req = trunk.register_request(u);
        let answer = trunk.transact(&req);
        if answer.status() != Some(200) {
            failures.push(format!("{u}: {}", answer.start));
        }
        sent.insert(req.call_id(), u.clone());
    }
    assert!(
        failures.is_empty(),
        "REGISTERs over TLS failed: {failures:?}"
    );
    let over_tls = landings(&all, &sent);
    let placed = servers_of(&over_tls);
    eprintln!("users per server: {:?}", tally(&placed));
    assert_same_placement("TLS", &over_udp, &placed);
    for (u, s) in &placed {
        let domain = u.rsplit('@').next().unwrap_or_default();
        let pool = if s.starts_with("tcp") { "tcp" } else { "tls" };
        assert!(domain.starts_with(pool), "{u} is on {s}, outside its pool");
    }

    // Each hop's Via names its own transport.
    for s in &all {
        for m in s.requests() {
            let via = m.msg().vias().first().cloned().unwrap_or_default();
            let token = format!("SIP/2.0/{} ", s.transport());
            assert!(via.starts_with(&token), "{} got siplb's Via {via}", s.id());
        }
    }

    // The server that demands a certificate got siplb's: the pool's `tls.cert`, on every
    // connection that carried requests.
    let mtls = mixed.mtls();
    let carried: BTreeSet<u64> = mtls.requests().iter().map(|m| m.conn).collect();
    assert!(
        placed.values().any(|s| s == mtls.id()) && !carried.is_empty(),
        "no user reached {}: {:?}",
        mtls.id(),
        tally(&placed)
    );
    for info in mtls
        .connections()
        .iter()
        .filter(|c| carried.contains(&c.id))
    {
        assert_eq!(
            info.client_certs,
            vec![pki.client.cert.to_vec()],
            "connection {} to {} presented another certificate",
            info.id,
            mtls.id()
        );
    }
}

#[test]
fn without_the_client_certificate_the_mtls_servers_requests_fail_and_its_probe_marks_it_down() {
    let pki = Pki::with_names(&[POOL_NAME]);
    let mixed = Mixed::start(&pki);
    let (tcp, tls) = (mixed.tcp_servers(), mixed.tls_servers());
    let mtls = mixed.mtls();
    let users = users("nocert", 30, "tls.contoso.com");

    // Where each user lives while siplb presents its certificate.
    let placed = {
        let siplb = Siplb::start(&config(
            &pki,
            &[
                PoolSpec::new("fe-tcp", "tcp.contoso.com", Link::Tcp, &tcp),
                PoolSpec::new("fe-tls", "tls.contoso.com", Link::Mtls, &tls),
            ],
            20,
        ));
        servers_of(&landings(&tls, &register_over_udp(&siplb, &users)))
    };
    let (on_mtls, elsewhere): (Vec<&String>, Vec<&String>) =
        users.iter().partition(|u| placed[*u] == mtls.id());
    assert!(
        !on_mtls.is_empty() && !elsewhere.is_empty(),
        "30 users all on one side of {}: {placed:?}",
        mtls.id()
    );
    let (victim, bystander) = (on_mtls[0].clone(), elsewhere[0].clone());

    // The certificate left out, and a probe that only connects: the server stays up, and the
    // requests routed to it fail (its handshake refuses siplb), those of the others do not.
    {
        let siplb = Siplb::start(&config(
            &pki,
            &[
                PoolSpec::new("fe-tcp", "tcp.contoso.com", Link::Tcp, &tcp),
                PoolSpec::new("fe-tls", "tls.contoso.com", Link::Tls, &tls).probe("tcp-connect"),
            ],
            20,
        ));
        let before = mtls.connections().len();
        let requests_before = mtls.requests().len();

        let client = connect_tls(&siplb, &pki);
        let req = client.register_request(&victim);
        client.send(&req);
        let answer = client.final_or_closed(&req);
        assert!(
            answer.as_ref().and_then(Msg::status) != Some(200),
            "{victim} on {} was answered 200 without siplb's certificate: {answer:?}",
            mtls.id()
        );
        assert_eq!(
            mtls.requests().len(),
            requests_before,
            "{} accepted a request over a connection without a client certificate",
            mtls.id()
        );
        let attempts: Vec<_> = mtls.connections().into_iter().skip(before).collect();
        assert!(
            attempts.iter().any(|c| c.client_certs.is_empty()),
            "siplb never tried {}: {attempts:?}",
            mtls.id()
        );
        assert!(attempts.iter().all(|c| c.client_certs.is_empty()));

        let other = connect_tls(&siplb, &pki);
        assert_eq!(
            other.register(&bystander).status(),
            Some(200),
            "{bystander} on {} is not affected",
            placed[&bystander]
        );
    }

    // With a `tls-connect` probe, the refused handshake marks the server down and its users
    // land on the pool's other servers.
    let siplb = Siplb::start(&config(
        &pki,
        &[
            PoolSpec::new("fe-tcp", "tcp.contoso.com", Link::Tcp, &tcp),
            PoolSpec::new("fe-tls", "tls.contoso.com", Link::Tls, &tls),
        ],
        2,
    ));
    let ops = Ops::of(&siplb);
    ops.wait_status(&format!("{} down", mtls.id()), |s| {
        s.server_state(mtls.id()) == "down"
    });
    let requests_before = mtls.requests().len();
    let client = connect_tls(&siplb, &pki);
    let since = Instant::now();
    for u in &on_mtls {
        assert_eq!(client.register(u).status(), Some(200), "{u} after failover");
    }
    let now_on: BTreeSet<String> = tls
        .iter()
        .filter(|s| {
            s.requests().iter().any(|m| {
                m.at >= since
                    && m.msg()
                        .to_aor()
                        .is_some_and(|a| on_mtls.iter().any(|u| **u == a))
            })
        })
        .map(|s| s.id().to_string())
        .collect();
    assert!(
        !now_on.is_empty() && !now_on.contains(mtls.id()),
        "{}'s users now on {now_on:?}",
        mtls.id()
    );
    assert_eq!(mtls.requests().len(), requests_before);
}

// --------------------------------------------------------------------------------------------
// 4. A Lync-shaped flow over TLS

/// A Lync endpoint: its user, the From it always sends (tag and `epid`) and its registration's
/// Call-ID.
struct Endpoint {
    aor: String,
    from: String,
    call_id: String,
    instance: String,
}

impl Endpoint {
    fn new(n: usize, user: &str) -> Endpoint {
        Endpoint {
            aor: format!("{user}@{DOMAIN}"),
            from: format!(
                "<sip:{user}@{DOMAIN}>;tag={};epid={}",
                unique("lt"),
                unique("ep")
            ),
            call_id: unique("lync-reg-"),
            instance: format!("<urn:uuid:4DD9E5B1-1B1C-5B4F-9C2E-{n:012X}>"),
        }
    }

    /// The REGISTER a Lync 2013 client sends on its TLS connection (no Authorization: the
    /// Front End here does not challenge).
    fn register(&self, client: &StreamClient, cseq: u32) -> Request {
        let req = Request::new("REGISTER", &format!("sip:{DOMAIN}"), &self.aor, &self.aor)
            .set("From", &self.from)
            .set("Call-ID", &self.call_id)
            .set("CSeq", &format!("{cseq} REGISTER"))
            .with(
                "Contact",
                &format!(
                    "<sip:127.0.0.2:5061;transport=tls;ms-opaque=d3470f2e1d>;methods=\"INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY\";proxy=replace;+sip.instance=\"{}\"",
                    self.instance
                ),
            )
            .with("User-Agent", USER_AGENT)
            .with("Supported", "gruu-10, adhoclist, msrtc-event-categories")
            .with("Supported", "ms-forking")
            .with("Supported", "ms-cluster-failover")
            .with("Supported", "ms-benotify")
            .with("ms-keep-alive", "UAC;hop-hop=yes")
            .with("Event", "registration");
        client.prepare(req)
    }
}

/// A Front End's roaming-self NOTIFY or BENOTIFY to `aor`, with a body.
fn roaming_self(fe: &StreamBackend, method: &str, aor: &str) -> Request {
    let body = format!(
        "<roamingData xmlns=\"http://schemas.microsoft.com/2006/09/sip/roaming-self\"><categories><category name=\"note\" instance=\"0\" publishTime=\"2026-11-30T12:00:00Z\" container=\"400\" version=\"1\" expireType=\"static\"><note xmlns=\"http://schemas.microsoft.com/2006/09/sip/note\"><body type=\"personal\" uri=\"sip:{aor}\">{method}</body></note></category></categories></roamingData>"
    );
    fe.request(method, aor)
        .set("Event", "vnd-microsoft-roaming-self")
        .set("Subscription-State", "active;expires=28800")
        .body(
            "application/vnd-microsoft-roaming-self+xml",
            body.as_bytes(),
        )
}

/// A Front End's roaming-contacts NOTIFY to `aor` whose body (a contact list) is about
/// `size` bytes.
fn roaming_contacts(fe: &StreamBackend, aor: &str, size: usize) -> Request {
    let mut body = String::from(
        "<contactList deltaNum=\"1\" xmlns=\"http://schemas.microsoft.com/2006/09/sip/roaming-contacts\"><group id=\"1\" name=\"~\" externalURI=\"\"/>",
    );
    let mut n = 0;
    while body.len() < size {
        body.push_str(&format!(
            "<contact uri=\"contact{n:05}@{DOMAIN}\" name=\"\" groups=\"1\" subscribed=\"true\" externalURI=\"\"/>"
        ));
        n += 1;
    }
    body.push_str("</contactList>");
    fe.request("NOTIFY", aor)
        .set("Event", "vnd-microsoft-roaming-contacts")
        .set("Subscription-State", "active;expires=28800")
        .body(
            "application/vnd-microsoft-roaming-contacts+xml",
            body.as_bytes(),
        )
}

#[test]
fn a_lync_client_over_tls_gets_its_front_ends_notify_and_benotify_and_its_answer_reaches_the_front_end(
) {
    let pki = Pki::new();
    let fes = tls_backends(&pki, "fe", 2);
    let servers: Vec<&StreamBackend> = fes.iter().collect();
    let siplb = start_tls_pool(&pki, &servers, 20);

    // Three signed-in clients; with two Front Ends, at least two share one.
    let endpoints: Vec<Endpoint> = ["alice", "bob", "carol"]
        .iter()
        .enumerate()
        .map(|(n, u)| Endpoint::new(n, u))
        .collect();
    let clients: Vec<StreamClient> = endpoints
        .iter()
        .map(|_| connect_tls(&siplb, &pki))
        .collect();
    let mut homes: Vec<(&StreamBackend, u64)> = Vec::new();
    for (ep, client) in endpoints.iter().zip(&clients) {
        let reg = ep.register(client, 1);
        let ok = client.transact(&reg);
        assert_eq!(ok.status(), Some(200), "{}: {}", ep.aor, ok.start);
        let (fe, got) = servers
            .iter()
            .find_map(|s| {
                s.requests()
                    .into_iter()
                    .find(|m| m.msg().call_id() == Some(ep.call_id.as_str()))
                    .map(|m| (*s, m))
            })
            .unwrap_or_else(|| panic!("no Front End got {}'s REGISTER", ep.aor));
        let msg = got.msg();
        // A Lync client asks for neither Path nor outbound: siplb adds nothing to route by.
        assert_eq!(msg.header("path"), None, "{}: {}", ep.aor, msg.start);
        assert_eq!(msg.header("record-route"), None);
        assert_eq!(msg.header("from"), Some(ep.from.as_str()), "From is signed");
        let ours = format!("SIP/2.0/TLS {};branch=z9hG4bK-lb", siplb.tls());
        assert!(
            msg.vias()[0].starts_with(&ours),
            "siplb's Via names its TLS listener: {:?}",
            msg.vias()
        );
        homes.push((fe, got.conn));
    }
    let mut pairs: BTreeSet<(String, u64)> = BTreeSet::new();
    for (fe, conn) in &homes {
        assert!(
            pairs.insert((fe.id().to_string(), *conn)),
            "two clients share {}'s connection {conn}",
            fe.id()
        );
    }

    let mut sent_to: Vec<BTreeSet<String>> = vec![BTreeSet::new(); clients.len()];
    for (i, ((fe, conn), (ep, client))) in
        homes.iter().zip(endpoints.iter().zip(&clients)).enumerate()
    {
        // NOTIFY down the connection the REGISTER came on: it reaches this client, and the
        // client's 200 comes back to the Front End on that same connection.
        let notify = roaming_self(fe, "NOTIFY", &ep.aor);
        let answer = fe
            .transact(*conn, &notify, ANSWER_WITHIN)
            .unwrap_or_else(|| panic!("{}'s 200 to the NOTIFY never reached {}", ep.aor, fe.id()));
        assert_eq!(answer.status(), Some(200));
        // siplb took its own Via off the answer; the Front End's may carry `received`
        // (RFC 3261 §18.2.1), as every Via siplb receives a request with does.
        let own = notify.get("via").expect("the Front End's Via");
        let vias = answer.vias();
        assert!(
            vias.len() == 1 && vias[0].starts_with(&own),
            "the answer's Vias {vias:?}, expected only {own}"
        );
        sent_to[i].insert(notify.call_id());
        let got = client
            .wait_request(ANSWER_WITHIN, |m| {
                m.call_id() == Some(notify.call_id().as_str())
            })
            .unwrap_or_else(|| panic!("{} got no NOTIFY", ep.aor));
        assert_eq!(got.method(), Some("NOTIFY"));
        let vias = got.vias();
        let ours = format!("SIP/2.0/TLS {};branch=z9hG4bK-lb", siplb.tls());
        assert!(
            vias.len() == 2 && vias[0].starts_with(&ours) && vias[1].starts_with(&own),
            "siplb's Via naming its TLS listener on top of the Front End's: {vias:?}"
        );
        for h in ["from", "to", "cseq", "event", "content-type"] {
            assert_eq!(got.header(h), notify.get(h).as_deref(), "{h} of the NOTIFY");
        }
        assert_eq!(got.body, notify.body, "the NOTIFY's body");

        // BENOTIFY: delivered, never answered, and the flow goes on.
        let answered = fe.received_on(*conn).len();
        let benotify = roaming_self(fe, "BENOTIFY", &ep.aor);
        fe.send(*conn, &benotify.bytes())
            .expect("send the BENOTIFY");
        sent_to[i].insert(benotify.call_id());
        let got = client
            .wait_request(ANSWER_WITHIN, |m| {
                m.call_id() == Some(benotify.call_id().as_str())
            })
            .unwrap_or_else(|| panic!("{} got no BENOTIFY", ep.aor));
        assert_eq!(got.method(), Some("BENOTIFY"));
        assert_eq!(got.body, benotify.body);

        // The client refreshes its registration on the same flow: same Front End, same
        // backend connection, answered 200.
        let refresh = ep.register(client, 2);
        assert_eq!(client.transact(&refresh).status(), Some(200));
        let back = fe.received_on(*conn);
        assert!(
            back[answered..]
                .iter()
                .any(|m| m.msg().call_id() == Some(ep.call_id.as_str())
                    && m.msg().header("cseq") == Some("2 REGISTER")),
            "{}'s refresh did not come over {}'s connection {conn}",
            ep.aor,
            fe.id()
        );
        let benotify_answers: Vec<Msg> = back
            .iter()
            .map(|m| m.msg())
            .filter(|m| m.is_response() && m.call_id() == Some(benotify.call_id().as_str()))
            .collect();
        assert!(
            benotify_answers.is_empty(),
            "BENOTIFY was answered: {benotify_answers:?}"
        );
        assert!(!client.is_closed(), "{}'s flow closed", ep.aor);

        // The keep-alive a Lync client sends after 300 s of silence (CRLFCRLF) is answered
        // with a CRLF over TLS (RFC 5626 §3.5.1).
        let pongs = client.pongs();
        client.send_raw(b"\r\n\r\n").expect("send a keep-alive");
        assert!(
            client.wait_pongs(pongs + 1, ANSWER_WITHIN),
            "{}'s keep-alive got no pong",
            ep.aor
        );

        // A contact list is one NOTIFY larger than any datagram: over TLS it is relayed whole
        // (no 513), across many TLS records, and answered.
        let contacts = roaming_contacts(fe, &ep.aor, 100_000);
        let answer = fe
            .transact(*conn, &contacts, ANSWER_WITHIN)
            .unwrap_or_else(|| panic!("{} did not answer its contact list", ep.aor));
        assert_eq!(answer.status(), Some(200));
        sent_to[i].insert(contacts.call_id());
        let got = client
            .wait_request(ANSWER_WITHIN, |m| {
                m.call_id() == Some(contacts.call_id().as_str())
            })
            .unwrap_or_else(|| panic!("{} got no contact list", ep.aor));
        assert!(
            got.body == contacts.body,
            "{}'s contact list: {} bytes arrived of {}",
            ep.aor,
            got.body.len(),
            contacts.body.len()
        );
    }

    // Listening for what must not come: no client got another client's requests, and nothing
    // answered a BENOTIFY.
    std::thread::sleep(QUIET_FOR);
    for ((ep, client), own) in endpoints.iter().zip(&clients).zip(&sent_to) {
        let got: BTreeSet<String> = client
            .requests()
            .iter()
            .filter_map(|m| m.call_id().map(str::to_string))
            .collect();
        assert_eq!(&got, own, "{} got requests of another client", ep.aor);
        assert_eq!(
            client.answers().len(),
            2,
            "{} answered its two NOTIFYs, not the BENOTIFY",
            ep.aor
        );
    }
    for fe in &servers {
        let benotify_answers = fe
            .received()
            .iter()
            .filter(|m| {
                let m = m.msg();
                m.is_response() && m.cseq_method() == Some("BENOTIFY")
            })
            .count();
        assert_eq!(
            benotify_answers,
            0,
            "{} got an answer to a BENOTIFY",
            fe.id()
        );
    }
}

#[test]
fn a_front_end_that_dies_closes_its_clients_tls_flows_and_they_sign_in_again_on_the_other() {
    let pki = Pki::new();
    let mut fes = tls_backends(&pki, "fe", 2);
    let siplb = {
        let servers: Vec<&StreamBackend> = fes.iter().collect();
        start_tls_pool(&pki, &servers, 2)
    };
    // Users until one lives on each Front End.
    let mut on: BTreeMap<String, (StreamClient, String)> = BTreeMap::new();
    for n in 0..40 {
        if on.len() == 2 {
            break;
        }
        let ep = Endpoint::new(n, &format!("user{n:02}"));
        let client = connect_tls(&siplb, &pki);
        assert_eq!(
            client.transact(&ep.register(&client, 1)).status(),
            Some(200)
        );
        let home = fes
            .iter()
            .find(|s| {
                s.requests()
                    .iter()
                    .any(|m| m.msg().call_id() == Some(ep.call_id.as_str()))
            })
            .map(|s| s.id().to_string())
            .expect("a Front End got the REGISTER");
        on.entry(home).or_insert((client, ep.aor));
    }
    assert_eq!(on.len(), 2, "40 users all on one Front End");
    let (victim, victim_aor) = on.remove("fe1").expect("a user on fe1");
    let (bystander, bystander_aor) = on.remove("fe2").expect("a user on fe2");

    fes[0].kill();
    assert!(
        victim.wait_closed(ANSWER_WITHIN).is_some(),
        "siplb kept {victim_aor}'s flow open after its Front End died"
    );
    assert!(!bystander.is_closed(), "{bystander_aor}'s flow closed too");
    let refresh = bystander.register_request(&bystander_aor);
    assert_eq!(bystander.transact(&refresh).status(), Some(200));

    // The client connects and registers again, as Lync does, until routing has caught up.
    let again = wait_until(
        &format!("{victim_aor} signs in again"),
        SHOWS_WITHIN,
        || {
            let client = connect_tls(&siplb, &pki);
            let req = client.register_request(&victim_aor);
            client.send(&req);
            match client.final_or_closed(&req) {
                Some(m) if m.status() == Some(200) => Ok((client, req.call_id())),
                other => Err(format!("{:?}", other.map(|m| m.start))),
            }
        },
    );
    let (client, call_id) = again;
    fes[1].wait_request(&call_id, ANSWER_WITHIN);
    assert!(!client.is_closed());
}

// --------------------------------------------------------------------------------------------
// 5. sips:

#[test]
fn a_sips_request_is_refused_480_towards_a_tcp_pool_and_forwarded_to_a_tls_pool() {
    let pki = Pki::new();
    let tcp = StreamBackend::start("tcp1", Listen::Tcp);
    let tls = tls_backend(&pki, "tls1", false);
    let siplb = Siplb::start(&config(
        &pki,
        &[
            PoolSpec::new("fe-tcp", "tcp.contoso.com", Link::Tcp, &[&tcp]),
            PoolSpec::new("fe-tls", "tls.contoso.com", Link::Tls, &[&tls]),
        ],
        20,
    ));
    let client = connect_tls(&siplb, &pki);

    let to_tcp = client.prepare(
        Request::new(
            "MESSAGE",
            "sips:bob@tcp.contoso.com",
            "alice@tcp.contoso.com",
            "bob@tcp.contoso.com",
        )
        .body("text/plain", b"over TLS only"),
    );
    let answer = client.transact(&to_tcp);
    assert_eq!(answer.start, "SIP/2.0 480 SIPS Needs TLS");
    assert_eq!(answer.call_id(), Some(to_tcp.call_id().as_str()));
    assert!(
        tcp.requests().is_empty(),
        "a sips: request went to a TCP server"
    );
    assert!(!client.is_closed(), "a refusal keeps the flow");

    let to_tls = client.prepare(
        Request::new(
            "MESSAGE",
            "sips:bob@tls.contoso.com",
            "alice@tls.contoso.com",
            "bob@tls.contoso.com",
        )
        .body("text/plain", b"over TLS only"),
    );
    let answer = client.transact(&to_tls);
    assert_eq!(answer.status(), Some(200), "{}", answer.start);
    let got = tls.wait_request(&to_tls.call_id(), ANSWER_WITHIN).msg();
    assert_eq!(got.ruri(), Some("sips:bob@tls.contoso.com"));
    assert!(
        got.vias()[0].starts_with("SIP/2.0/TLS "),
        "{:?}",
        got.vias()
    );
    assert_eq!(got.body, b"over TLS only");
    // The same plain sip: request to the TCP pool goes through.
    let plain = client.prepare(Request::new(
        "MESSAGE",
        "sip:bob@tcp.contoso.com",
        "alice@tcp.contoso.com",
        "bob@tcp.contoso.com",
    ));
    assert_eq!(client.transact(&plain).status(), Some(200));
    assert_eq!(tcp.requests().len(), 1);
}
