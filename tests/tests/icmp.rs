//! A server whose port is closed draws an ICMP port unreachable for every forward siplb sends
//! it. Those errors must cost nothing to anyone else — every request for the users of the live
//! servers is answered the first time it is sent (no client retransmission) — and they are a
//! health signal: each asks the server's probe for a probe at once, and `fall` of them (or the
//! probes they asked for, refused too) take the server down, so its users are served by the
//! rest of the pool long before the next probe was due.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use siplb_e2e::backend::{Backend, Behaviour};
use siplb_e2e::client::Client;
use siplb_e2e::config::{Config, Health, Server};
use siplb_e2e::farm::users;
use siplb_e2e::process::Siplb;
use siplb_e2e::request::Request;

#[test]
fn icmp_errors_from_a_dead_server_cost_other_users_nothing() {
    let live = [
        Backend::start("live-a", Behaviour::Accept),
        Backend::start("live-b", Behaviour::Accept),
    ];
    let mut dying = Backend::start("dying", Behaviour::Accept);
    let servers: Vec<Server> = live.iter().chain([&dying]).map(Server::of).collect();
    // Probes so slow that only the wire path's ICMP signal can take the dying server out: its
    // first probe (at start-up) is answered, then its port closes, and the next probe is 30 s
    // away.
    const FALL: usize = 100;
    let cfg = Config::new()
        .health(Health::options("30s", "1s", FALL as u32, 1))
        .pool("fe", servers)
        .route(siplb_e2e::config::Route::to("fe"));
    let started = Instant::now();
    let siplb = Siplb::start(&cfg.render());
    let deadline = Instant::now() + Duration::from_secs(10);
    while dying.probe_answers_since(started).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first probe of {} was not answered",
            dying.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    dying.stop();
    let mut client = Client::new();

    let aors = users(1500, "contoso.com");
    let mut sent = Vec::new();
    let mut answered = HashSet::new();
    for chunk in aors.chunks(50) {
        for aor in chunk {
            let req = Request::register(aor);
            client.send(siplb.addr(), &req);
            sent.push((aor.clone(), req.call_id()));
        }
        // Read the batch's answers before the next one, so the client's socket never overflows;
        // the batch is done when nothing more comes for a moment.
        while let Some(m) = client.wait_for(Duration::from_millis(300), |m| m.status() == Some(200))
        {
            if let Some(id) = m.call_id() {
                answered.insert(id.to_string());
            }
        }
    }

    let on_live: HashSet<String> = live
        .iter()
        .flat_map(|b| b.count_by_aor().into_keys())
        .collect();
    let to_dead = aors.len() - on_live.len();
    // The first probe may already have seen the closed port: from then on `FALL` refusals
    // (plus what was in flight in one batch) take the server out.
    assert!(
        to_dead <= FALL + 50,
        "the dead server kept users after {FALL} ICMP errors: {to_dead} went unanswered"
    );
    let late_unanswered = sent[aors.len() - 500..]
        .iter()
        .filter(|(_, id)| !answered.contains(id))
        .count();
    assert_eq!(
        late_unanswered, 0,
        "once out, the dead server gets no users"
    );
    let lost: Vec<&String> = sent
        .iter()
        .filter(|(aor, id)| on_live.contains(aor) && !answered.contains(id))
        .map(|(aor, _)| aor)
        .collect();
    assert!(
        lost.is_empty(),
        "{} live users' REGISTERs went unanswered, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        answered.len(),
        on_live.len(),
        "exactly the live servers' users are answered"
    );
    // Down by the ICMP signals themselves, or by the probes they asked for (refused as well):
    // either way long before the probe due 30 s after the first.
    let log = siplb.stderr();
    assert!(
        log.lines().any(|l| l.contains("server state changed")
            && l.contains("dying")
            && (l.contains("port unreachable on forward") || l.contains("connection refused"))),
        "the server went down by the ICMP signal or the probe it asked for:\n{log}"
    );
}
