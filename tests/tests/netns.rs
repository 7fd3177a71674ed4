//! Two datacenters on one machine, built from network namespaces: pool `fe-dc1` lives in `dc1`,
//! its pair `fe-dc2` in `dc2`, siplb and the client in `lb`, each datacenter joined to `lb` by
//! its own veth link (RFC 2544 addresses, 198.18.0.0/15). When dc1 fails — its link cut, as a
//! WAN outage would, or its hosts gone from the LAN while the link stays up, as a power cut
//! would — dc1's users are served by dc2, spread over dc2's servers, while dc2's own users stay
//! put; when dc1 is back, every user returns to exactly the server it had, and not before the
//! pool has been up for `failback_after`.
//!
//! The peers are `sip-peer` processes (this package's binary: the harness's backend and load
//! client) started with `ip netns exec`; the servers print every request they receive, which is
//! what the assertions read. siplb's JSON log lines say when a failover happened. All traffic
//! stays inside the namespaces; the namespaces and every process are removed when a test ends,
//! pass or fail.
//!
//! Needs root and iproute2, so the tests are `#[ignore]`d: `cargo test -p siplb-e2e --test
//! netns -- --ignored`. Without them they fail with the reason rather than passing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use siplb_e2e::config::{Health, Pool, Server};
use siplb_e2e::health::{events, Event, JSON_LOGS};
use siplb_e2e::netns::{self, ip, Lab, Proc};
use siplb_e2e::ops::wait_until;
use siplb_e2e::placement::{assert_spread, moved, Placement};
use siplb_e2e::process::{siplb_bin, ConfigFile};
use siplb_e2e::{Config, Route};

const USERS: usize = 400;
const RATE: &str = "800";
const FAILBACK_AFTER: Duration = Duration::from_secs(2);
/// The longest any phase may take to show.
const PHASE_WITHIN: Duration = Duration::from_secs(10);
/// The longest every process may run (they are bounded by themselves too).
const RUN_SECS: &str = "50";
/// siplb's address, on `lb`'s loopback so that it stays up whichever link is down.
const SIPLB: &str = "198.18.0.1:5060";
const DC1_SERVERS: [&str; 2] = ["dc1-1", "dc1-2"];
const DC2_SERVERS: [&str; 2] = ["dc2-1", "dc2-2"];

/// One scenario at a time: each builds its own lab, but they share the machine's two cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The servers of one datacenter: `(id, address)`, on the datacenter's address `198.18.DC.2`.
fn servers(dc: u8) -> Vec<(String, SocketAddr)> {
    (1..=2u8)
        .map(|i| {
            (
                format!("dc{dc}-{i}"),
                SocketAddr::from(([198, 18, dc, 2], 5060 + u16::from(i))),
            )
        })
        .collect()
}

/// The lab running: siplb and a client in `lb`, two servers in each datacenter, and where
/// every user was placed before anything failed.
struct TwoDatacenters {
    /// Processes first: fields drop in order, so they are killed before the lab goes.
    client: Proc,
    client_ready: Instant,
    _siplb: Proc,
    peers: Vec<(String, Proc)>,
    siplb_err: PathBuf,
    lb: String,
    dc1: String,
    before: Placement,
    dc1_users: Vec<String>,
    dc2_users: BTreeSet<String>,
    _lab: Lab,
    _work: ConfigFile,
}

impl TwoDatacenters {
    fn start(tag: &str) -> TwoDatacenters {
        if let Some(why) = netns::unavailable() {
            panic!("cannot run the two-datacenter tests: {why}");
        }
        let peer = Path::new(env!("CARGO_BIN_EXE_sip-peer"));
        let work = ConfigFile::write("");
        let mut lab = Lab::new(tag);
        let lb = lab.namespace("lb");
        let dc1 = lab.namespace("dc1");
        let dc2 = lab.namespace("dc2");
        for (dc, ns) in [(1, &dc1), (2, &dc2)] {
            lab.link(
                &lb,
                &format!("to-dc{dc}"),
                &format!("198.18.{dc}.1/24"),
                ns,
                "to-lb",
                &format!("198.18.{dc}.2/24"),
            );
            let gateway = format!("198.18.{dc}.1");
            ip(&["-n", ns, "route", "add", "default", "via", &gateway]);
        }
        ip(&["-n", &lb, "addr", "add", "198.18.0.1/32", "dev", "lo"]);

        // The servers, in their datacenters.
        let mut peers: Vec<(String, Proc)> = Vec::new();
        for (dc, ns) in [(1, &dc1), (2, &dc2)] {
            for (id, addr) in servers(dc) {
                let err = work.dir().join(format!("{id}.err"));
                let args = ["serve", &id, &addr.to_string(), RUN_SECS];
                let mut p = lab.spawn(ns, peer, &args, &err);
                p.wait_line(PHASE_WITHIN, |l| l.starts_with("ready"));
                peers.push((id, p));
            }
        }

        // siplb in lb: fe-dc1 and fe-dc2 paired, automatic failover, fast probes.
        let pool = |dc: u8| {
            let list = servers(dc)
                .into_iter()
                .map(|(id, address)| Server {
                    id,
                    address,
                    weight: 1,
                    drained: false,
                })
                .collect();
            Pool::new(&format!("fe-dc{dc}"), list)
                .pair(&format!("fe-dc{}", 3 - dc))
                .failback_after("2s")
        };
        let config = Config::new()
            .health(Health::options("200ms", "150ms", 2, 2))
            .pool_with(pool(1))
            .pool_with(pool(2))
            .route(Route::over(&["fe-dc1", "fe-dc2"]))
            .render()
            .replacen(
                "udp = [\"127.0.0.1:0\"]",
                &format!("udp = [\"{SIPLB}\"]"),
                1,
            )
            + JSON_LOGS;
        let config_file = work.dir().join("siplb.toml");
        std::fs::write(&config_file, config).expect("write siplb config");
        let siplb_err = work.dir().join("siplb.err");
        let config_arg = config_file.to_string_lossy().into_owned();
        let mut siplb = lab.spawn(&lb, &siplb_bin(), &["--config", &config_arg], &siplb_err);
        siplb.wait_line(PHASE_WITHIN, |l| l == "ready");

        // The client, in lb, registering every user in turn, all the time.
        let users = USERS.to_string();
        let args = ["load", SIPLB, "198.18.0.1:0", &users, RATE, RUN_SECS];
        let mut client = lab.spawn(&lb, peer, &args, &work.dir().join("client.err"));
        client.wait_line(PHASE_WITHIN, |l| l == "ready");
        let started = Instant::now();
        let client_ready = client.lines()[0].0;
        let before = wait_everyone_since(&peers, started, "every user placed");
        let dc1_users: Vec<String> = before
            .iter()
            .filter(|(_, s)| DC1_SERVERS.contains(&s.as_str()))
            .map(|(u, _)| u.clone())
            .collect();
        let dc2_users: BTreeSet<String> = before
            .keys()
            .filter(|u| !dc1_users.contains(u))
            .cloned()
            .collect();
        eprintln!(
            "{} users in dc1, {} in dc2",
            dc1_users.len(),
            dc2_users.len()
        );
        assert!(dc1_users.len() > USERS / 4 && dc2_users.len() > USERS / 4);
        TwoDatacenters {
            client,
            client_ready,
            _siplb: siplb,
            peers,
            siplb_err,
            lb,
            dc1,
            before,
            dc1_users,
            dc2_users,
            _lab: lab,
            _work: work,
        }
    }

    /// dc1 has failed: waits for siplb to log the failover, then asserts every user is served,
    /// dc1's users evenly over dc2's servers and dc2's users where they were. Returns when the
    /// failover was seen.
    fn assert_failed_over(&self, failed_at: Instant) -> Instant {
        let failed_over = wait_failover_logged(&self.siplb_err, "fe-dc1", "fe-dc2");
        eprintln!(
            "fe-dc1 served by fe-dc2 {} ms after dc1 failed",
            failed_over.duration_since(failed_at).as_millis()
        );
        let settled = Instant::now() + Duration::from_millis(50);
        let during = wait_everyone_since(&self.peers, settled, "every user served from dc2");
        let strayed: Vec<&String> = self
            .dc2_users
            .iter()
            .filter(|u| during.get(*u) != self.before.get(*u))
            .collect();
        assert!(strayed.is_empty(), "dc2's users moved: {strayed:?}");
        assert_spread(
            "dc1's users in dc2",
            &during,
            &self.dc1_users,
            &DC2_SERVERS,
            0.25,
        );
        failed_over
    }

    /// dc1 is back since `back_at`: asserts siplb sent dc1 nothing for `failback_after`, then
    /// that every user is on exactly the server it had before.
    fn assert_failed_back(&self, back_at: Instant) {
        let failed_back = wait_failover_logged(&self.siplb_err, "fe-dc1", "fe-dc1");
        let first_home = self
            .peers
            .iter()
            .filter(|(id, _)| DC1_SERVERS.contains(&id.as_str()))
            .filter_map(|(_, p)| {
                p.lines()
                    .iter()
                    .find(|(at, l)| *at >= back_at && l.starts_with("request "))
                    .map(|(at, _)| *at)
            })
            .min();
        eprintln!(
            "fe-dc1 served at home {} ms after dc1 came back; first request in dc1 {:?} ms \
             after it (failback_after {} ms)",
            failed_back.duration_since(back_at).as_millis(),
            first_home.map(|t| t.duration_since(back_at).as_millis()),
            FAILBACK_AFTER.as_millis()
        );
        if let Some(t) = first_home {
            assert!(
                t.duration_since(back_at) >= FAILBACK_AFTER,
                "dc1 got requests {} ms after it came back, before failback_after",
                t.duration_since(back_at).as_millis()
            );
        }
        let settled = Instant::now() + Duration::from_millis(50);
        let after = wait_everyone_since(&self.peers, settled, "every user served after failback");
        assert_eq!(
            moved(&self.before, &after),
            BTreeMap::new(),
            "every user is back on exactly its server"
        );
    }

    /// Ends the client's run and asserts only dc1's users lost requests, and only between
    /// `failed_at` and `failed_over`; nothing was refused.
    fn assert_losses(&mut self, failed_at: Instant, failed_over: Instant) {
        self.client.close_stdin();
        let done = self
            .client
            .wait_line(PHASE_WITHIN, |l| l.starts_with("done "));
        let lines: Vec<String> = self.client.lines().iter().map(|(_, l)| l.clone()).collect();
        let lost: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("lost "))
            .collect();
        let refused: Vec<&String> = lines.iter().filter(|l| l.starts_with("refused ")).collect();
        eprintln!(
            "client: {done}; {} lost, {} refused",
            lost.len(),
            refused.len()
        );
        for l in &lost {
            let mut fields = l.split_whitespace();
            let ms: u64 = fields
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or_default();
            let user = fields.next().unwrap_or_default();
            assert!(
                self.dc1_users.iter().any(|u| u == user),
                "a request of {user} (not a dc1 user) was lost"
            );
            // The client's clock started just before it said `ready`.
            let at = self.client_ready + Duration::from_millis(ms);
            assert!(
                at + Duration::from_millis(100) >= failed_at && at <= failed_over,
                "{user}'s request lost {} ms after dc1 failed, not before the failover",
                at.saturating_duration_since(failed_at).as_millis()
            );
        }
        assert!(refused.is_empty(), "answers other than 200: {refused:?}");
    }

    /// Bytes waiting in the receive memory of siplb's UDP socket (`/proc/net/udp` of `lb`).
    fn siplb_socket_memory(&self) -> u64 {
        let port = SIPLB
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(5060);
        netns::udp_rx_queue(&self.lb, port)
            .unwrap_or_else(|| panic!("no UDP socket on port {port} in {}", self.lb))
    }
}

/// What the servers received since `since`: `user → server`. Panics if one user reached two.
fn placement_since(peers: &[(String, Proc)], since: Instant) -> Placement {
    let mut placed = Placement::new();
    for (id, p) in peers {
        for (at, line) in p.lines().iter() {
            let Some(user) = line.strip_prefix("request REGISTER ") else {
                continue;
            };
            if *at < since {
                continue;
            }
            if let Some(other) = placed.insert(user.to_string(), id.clone()) {
                assert_eq!(&other, id, "{user} reached {other} and {id} since the mark");
            }
        }
    }
    placed
}

/// Waits until every user has reached a server since `since`; returns where.
fn wait_everyone_since(peers: &[(String, Proc)], since: Instant, what: &str) -> Placement {
    wait_until(what, PHASE_WITHIN, || {
        let placed = placement_since(peers, since);
        if placed.len() == USERS {
            Ok(placed)
        } else {
            Err(format!("{} of {USERS} users seen", placed.len()))
        }
    })
}

/// Waits until siplb logged that `pool` is served by `serving`; returns when the test saw it.
fn wait_failover_logged(stderr: &Path, pool: &str, serving: &str) -> Instant {
    let wanted = |e: &Event| matches!(e, Event::Pool { pool: p, serving: s, .. } if p == pool && s == serving);
    wait_until(
        &format!("siplb to log pool {pool} served by {serving}"),
        PHASE_WITHIN,
        || {
            let log = std::fs::read_to_string(stderr).unwrap_or_default();
            if events(&log).iter().any(wanted) {
                Ok(Instant::now())
            } else {
                Err(format!("{:?}", events(&log)))
            }
        },
    )
}

#[test]
#[ignore = "needs root and iproute2: run with --ignored"]
fn cutting_a_datacenter_off_fails_its_pool_over_and_back() {
    let _serial = serial();
    let mut dcs = TwoDatacenters::start("siplb-cut");

    // dc1's link is cut: the route to it is gone.
    let cut_at = Instant::now();
    ip(&["-n", &dcs.lb, "link", "set", "to-dc1", "down"]);
    let failed_over = dcs.assert_failed_over(cut_at);

    // The link comes back.
    let restored_at = Instant::now();
    ip(&["-n", &dcs.lb, "link", "set", "to-dc1", "up"]);
    dcs.assert_failed_back(restored_at);
    dcs.assert_losses(cut_at, failed_over);
}

#[test]
#[ignore = "needs root and iproute2: run with --ignored"]
fn a_datacenter_whose_hosts_vanish_fails_over_and_back_and_siplb_keeps_listening() {
    let _serial = serial();
    let mut dcs = TwoDatacenters::start("siplb-gone");

    // dc1's hosts lose power while its link stays up: their address stops answering ARP, and
    // siplb's host reports each datagram it cannot deliver with an ICMP host unreachable.
    let gone_at = Instant::now();
    ip(&[
        "-n",
        &dcs.dc1,
        "addr",
        "del",
        "198.18.1.2/24",
        "dev",
        "to-lb",
    ]);
    ip(&["-n", &dcs.lb, "neigh", "flush", "dev", "to-dc1"]);
    let failed_over = dcs.assert_failed_over(gone_at);
    // Gone for good: lb has given up resolving their address, so the datagrams it held for
    // them were dropped (and reported), not delivered late when the hosts come back.
    wait_until("lb to give up on dc1's address", PHASE_WITHIN, || {
        let neigh = netns::output(&["-n", &dcs.lb, "neigh", "show", "198.18.1.2"]);
        if neigh.contains("FAILED") {
            Ok(())
        } else {
            Err(neigh)
        }
    });

    // They come back.
    let back_at = Instant::now();
    ip(&[
        "-n",
        &dcs.dc1,
        "addr",
        "add",
        "198.18.1.2/24",
        "dev",
        "to-lb",
    ]);
    ip(&[
        "-n",
        &dcs.dc1,
        "route",
        "add",
        "default",
        "via",
        "198.18.1.1",
    ]);
    dcs.assert_failed_back(back_at);
    dcs.assert_losses(gone_at, failed_over);

    // Nothing is left unread in siplb's socket once the client has stopped: the ICMP errors
    // the outage caused were consumed. Left queued (IP_RECVERR's error queue), they count
    // against the socket's receive buffer and, outage after outage, fill it — from then on the
    // kernel drops every datagram sent to siplb.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = dcs.siplb_socket_memory();
    while left > 0 && Instant::now() < deadline {
        // Polling a condition under a deadline.
        std::thread::sleep(Duration::from_millis(20));
        left = dcs.siplb_socket_memory();
    }
    assert_eq!(
        left, 0,
        "siplb's UDP socket holds {left} bytes it never reads, though no request is in flight: \
         the ICMP host-unreachable errors of dc1's outage stay queued on it"
    );
}
