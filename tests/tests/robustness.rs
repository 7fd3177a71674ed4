//! Hostile input never takes siplb down: 100,000 seeded random, truncated and mutated datagrams
//! (see `siplb_e2e::fuzz`) leave the process running and still routing each user to its server.
//!
//! The flood goes out in bounded batches from one socket; after each batch a canary REGISTER
//! from that same socket must get its 200 from the canary's server. The canary is both the
//! liveness check and the pacing: siplb has read the whole batch before it answers the canary,
//! so socket buffers never overflow and every datagram is really processed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use siplb_e2e::fuzz::Mutator;
use siplb_e2e::sip::show;
use siplb_e2e::{Behaviour, Client, Config, Farm, Request, Testbed};

const DATAGRAMS: usize = 100_000;
const BATCH: usize = 200;
const WITHIN: Duration = Duration::from_secs(100);
const SEED: u64 = 0x5eed_f00d;

#[test]
fn a_flood_of_hostile_datagrams_leaves_siplb_alive_and_routing() {
    let farm = Farm::start("fe", 3, Behaviour::Accept);
    let config = Config::single_pool(&farm.backends).workers(2);
    let Testbed {
        farm,
        mut siplb,
        mut client,
    } = Testbed::new(farm, &config);
    let canary = "canary@contoso.com";

    let first = Request::register(canary);
    assert_eq!(client.transact(siplb.addr(), &first).status(), Some(200));
    let home = farm.holder(&first.call_id()).id().to_string();

    let mut mutator = Mutator::new(SEED, siplb.addr());
    let started = Instant::now();
    let mut sent = 0;
    let mut canaries = HashSet::new();
    while sent < DATAGRAMS {
        assert!(
            started.elapsed() < WITHIN,
            "flood not done within {WITHIN:?} ({sent} sent)"
        );
        for _ in 0..BATCH {
            let d = mutator.next_datagram();
            client.send_raw(siplb.addr(), &d);
            sent += 1;
        }
        assert!(
            siplb.is_alive(),
            "siplb died within the first {sent} datagrams"
        );
        let ping = Request::register(canary);
        client.send(siplb.addr(), &ping);
        let answer = client.final_response(&ping).or_else(|| {
            client.send(siplb.addr(), &ping); // one retransmission, as a UAC would
            client.final_response(&ping)
        });
        let answer = answer.unwrap_or_else(|| {
            panic!(
                "no answer to the canary after {sent} datagrams (alive: {})",
                siplb.is_alive()
            )
        });
        assert_eq!(answer.status(), Some(200), "{}", show(&answer.raw));
        canaries.insert(ping.call_id());
        // The flood's own answers are not under test.
        client.clear_inbox();
    }

    assert!(siplb.is_alive(), "siplb died");
    // Every canary of the flood reached the canary's server, and no other.
    for b in &farm.backends {
        let got = b
            .received_all()
            .iter()
            .filter_map(|d| d.msg()?.call_id().map(str::to_string))
            .filter(|id| canaries.contains(id))
            .count();
        let expected = if b.id() == home { canaries.len() } else { 0 };
        assert!(
            got >= expected && (expected > 0 || got == 0),
            "{} got {got} canaries",
            b.id()
        );
    }
    let after = Request::register(canary);
    let fresh = Client::new().transact(siplb.addr(), &after);
    assert_eq!(fresh.status(), Some(200));
    assert_eq!(farm.holder(&after.call_id()).id(), home);
}
