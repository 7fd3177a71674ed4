//! The lookups of a config, how answers are kept, and the servers they make.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::expand::{expand, srv_weight};
use super::*;
use crate::config;
use crate::table::{ConfigHealth, Local, RoutingTable};

const CONFIG: &str = r#"[listen]
udp = ["127.0.0.1:5060"]

[[pool]]
name = "fe"
servers = [{ address = "127.0.0.1:5071" }, { address = "fe2.test:5072" }, { address = "fe3.test:5073", transport = "tcp" }]

[[pool]]
name = "srv"
srv = "_sip._udp.fe.test"

[[pool]]
name = "all"
dns = "all.test:5080"

[[route]]
pool = "fe"
"#;

fn cfg() -> Config {
    config::parse(Path::new("dns.toml"), CONFIG).expect("valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp4() -> Local {
    Local::from(vec!["127.0.0.1:5060".parse::<SocketAddr>().unwrap()])
}

fn target(priority: u16, weight: u16, name: &str, port: u16, addr: &str) -> SrvTarget {
    SrvTarget {
        priority,
        weight,
        target: name.into(),
        port,
        addrs: vec![ip(addr)],
    }
}

fn answers() -> Answers {
    let mut a = Answers::default();
    a.record(
        vec![
            (
                Lookup::Host("fe2.test".into()),
                Ok(Answer::Host(vec![ip("10.0.0.2"), ip("10.0.0.12")])),
            ),
            (
                Lookup::Host("fe3.test".into()),
                Ok(Answer::Host(vec![ip("10.0.0.3"), ip("::3")])),
            ),
            (
                Lookup::Srv("_sip._udp.fe.test".into()),
                Ok(Answer::Srv(vec![
                    target(0, 0, "s1.test", 5060, "10.1.0.1"),
                    target(0, 10, "s2.test", 5060, "10.1.0.2"),
                    target(5, 1, "s3.test", 5062, "10.1.0.3"),
                ])),
            ),
            (
                Lookup::Host("all.test".into()),
                Ok(Answer::Host(vec![
                    ip("10.2.0.1"),
                    ip("10.2.0.2"),
                    ip("::5"),
                ])),
            ),
        ],
        SystemTime::UNIX_EPOCH,
    );
    a
}

/// (id, address, weight, priority) of pool `pool`.
fn servers(cfg: &Config, pool: usize) -> Vec<(String, String, u32, u16)> {
    cfg.pools[pool]
        .servers
        .iter()
        .map(|s| (s.id.clone(), s.address.to_string(), s.weight, s.priority))
        .collect()
}

fn row(id: &str, addr: &str, weight: u32, priority: u16) -> (String, String, u32, u16) {
    (id.into(), addr.into(), weight, priority)
}

#[test]
fn a_config_asks_each_name_once() {
    assert_eq!(
        lookups(&cfg()),
        vec![
            Lookup::Host("all.test".into()),
            Lookup::Host("fe2.test".into()),
            Lookup::Host("fe3.test".into()),
            Lookup::Srv("_sip._udp.fe.test".into()),
        ]
    );
}

#[test]
fn names_never_answered_add_no_server() {
    let c = expand(&cfg(), &Answers::default(), &udp4());
    assert_eq!(
        servers(&c, 0),
        vec![row("127.0.0.1:5071", "127.0.0.1:5071", 1, 0)]
    );
    assert!(c.pools[1].servers.is_empty());
    assert!(c.pools[2].servers.is_empty());
}

#[test]
fn answers_become_servers_with_ids_weights_and_priorities() {
    let c = expand(&cfg(), &answers(), &udp4());
    assert_eq!(
        servers(&c, 0),
        vec![
            row("127.0.0.1:5071", "127.0.0.1:5071", 1, 0),
            // The first address in a stable order: IPv4 ascending.
            row("fe2.test:5072", "10.0.0.2:5072", 1, 0),
            row("fe3.test:5073", "10.0.0.3:5073", 1, 0),
        ]
    );
    assert_eq!(
        servers(&c, 1),
        vec![
            row("s1.test:5060", "10.1.0.1:5060", 1, 0),
            row("s2.test:5060", "10.1.0.2:5060", 1000, 0),
            row("s3.test:5062", "10.1.0.3:5062", 100, 5),
        ]
    );
    // A UDP pool has no IPv6 listener to reach ::5 from.
    assert_eq!(
        servers(&c, 2),
        vec![
            row("10.2.0.1:5080", "10.2.0.1:5080", 1, 0),
            row("10.2.0.2:5080", "10.2.0.2:5080", 1, 0),
        ]
    );
}

#[test]
fn srv_weight_zero_gets_a_small_share_and_priorities_are_tiers() {
    assert_eq!(srv_weight(0), 1);
    assert_eq!(srv_weight(1), 100);
    assert_eq!(srv_weight(65_535), 6_553_500);
    let c = expand(&cfg(), &answers(), &udp4());
    let table = RoutingTable::build(
        &c,
        "127.0.0.1:5060".parse::<SocketAddr>().unwrap().into(),
        udp4(),
        1,
        &ConfigHealth,
    );
    let pool = table.pool_index("srv").unwrap();
    let mut counts = [0usize; 3];
    for key in 0..20_000u64 {
        let s = table
            .next_server(pool, crate::hrw::key_hash(&key.to_le_bytes()), &[])
            .unwrap();
        counts[s] += 1;
    }
    assert_eq!(
        counts[2], 0,
        "priority 5 is a backup while priority 0 has servers"
    );
    assert!(
        counts[0] > 0 && counts[0] < 800,
        "weight 0: about 1 in 1001 ({counts:?})"
    );
    // With both priority-0 servers tried, the backup takes the key.
    assert_eq!(table.next_server(pool, 7, &[0, 1]), Some(2));
}

#[test]
fn a_failing_name_keeps_its_last_answer_and_a_changed_one_reports_a_change() {
    let mut a = answers();
    let name = Lookup::Host("fe2.test".into());
    let same = Ok(Answer::Host(vec![ip("10.0.0.2"), ip("10.0.0.12")]));
    let everything_else = |a: &Answers| {
        lookups(&cfg())
            .into_iter()
            .filter(|l| *l != name)
            .map(|l| {
                let answer = a.get(&l).cloned().ok_or_else(|| "none".to_string());
                (l, answer)
            })
            .collect::<Vec<_>>()
    };
    let mut round = everything_else(&a);
    round.push((name.clone(), same));
    let same = a.record(round, SystemTime::UNIX_EPOCH);
    assert!(!same.changed, "the same answers change nothing");
    assert!(same.events.is_empty());

    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
    let mut round = everything_else(&a);
    round.push((name.clone(), Err("NXDOMAIN".into())));
    let failed = a.record(round.clone(), later);
    assert!(!failed.changed, "a failure keeps the last answer");
    assert_eq!(failed.events.len(), 1);
    assert!(
        failed.events[0]
            .message
            .starts_with("fe2.test does not resolve (NXDOMAIN)"),
        "{:?}",
        failed.events
    );
    assert!(
        a.record(round, later).events.is_empty(),
        "said once, not every refresh"
    );
    assert_eq!(
        a.get(&name),
        Some(&Answer::Host(vec![ip("10.0.0.2"), ip("10.0.0.12")]))
    );
    let status = a.status();
    let fe2 = status.iter().find(|s| s.name == "fe2.test").unwrap();
    assert_eq!(fe2.last_error.as_deref(), Some("NXDOMAIN"));
    assert_eq!(fe2.last_ok.as_deref(), Some("1970-01-01T00:00:00Z"));
    assert_eq!(fe2.failing_since.as_deref(), Some("1970-01-01T00:01:00Z"));

    let mut round = everything_else(&a);
    round.push((name.clone(), Ok(Answer::Host(vec![ip("10.0.0.9")]))));
    let back = a.record(round, later);
    assert!(back.changed, "a new address is a change");
    let said: Vec<&str> = back.events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        said,
        [
            "fe2.test resolves again",
            "fe2.test answers 10.0.0.9; the servers follow"
        ]
    );
    let fe2 = a
        .status()
        .into_iter()
        .find(|s| s.name == "fe2.test")
        .unwrap();
    assert_eq!(fe2.answer, vec!["10.0.0.9".to_string()]);
    assert_eq!(fe2.last_error, None);

    assert!(
        a.record(Vec::new(), later).changed,
        "names no longer asked are forgotten"
    );
    assert!(a.status().is_empty());
}

#[test]
fn an_srv_target_that_does_not_resolve_keeps_its_last_addresses() {
    let name = Lookup::Srv("_sip._udp.fe.test".into());
    let mut a = Answers::default();
    let both = vec![
        target(0, 1, "s1.test", 5060, "10.1.0.1"),
        target(0, 1, "s2.test", 5060, "10.1.0.2"),
    ];
    a.record(
        vec![(name.clone(), Ok(Answer::Srv(both.clone())))],
        SystemTime::UNIX_EPOCH,
    );
    let mut s2_failed = both.clone();
    s2_failed[1].addrs.clear();
    assert!(
        !a.record(
            vec![(name.clone(), Ok(Answer::Srv(s2_failed)))],
            SystemTime::UNIX_EPOCH
        )
        .changed
    );
    assert_eq!(a.get(&name), Some(&Answer::Srv(both)));
}

#[test]
fn a_tls_server_found_by_name_is_verified_against_that_name() {
    let text = CONFIG
        .replace(
            "{ address = \"fe3.test:5073\", transport = \"tcp\" }",
            "{ address = \"fe3.test:5073\", transport = \"tls\" }",
        )
        .replace(
            "srv = \"_sip._udp.fe.test\"",
            "srv = \"_sips._tcp.fe.test\"",
        );
    let mut cfg = config::parse(Path::new("dns.toml"), &text).expect("valid");
    let mut a = Answers::default();
    a.record(
        vec![
            (
                Lookup::Host("fe3.test".into()),
                Ok(Answer::Host(vec![ip("10.0.0.3")])),
            ),
            (
                Lookup::Srv("_sips._tcp.fe.test".into()),
                Ok(Answer::Srv(vec![target(0, 1, "s1.test", 5061, "10.1.0.1")])),
            ),
        ],
        SystemTime::UNIX_EPOCH,
    );
    let names = |c: &Config, pool: usize| -> Vec<Option<String>> {
        c.pools[pool]
            .servers
            .iter()
            .map(|s| s.server_name.clone())
            .collect()
    };
    let c = expand(&cfg, &a, &udp4());
    assert_eq!(names(&c, 0), vec![None, Some("fe3.test".into())]);
    assert_eq!(names(&c, 1), vec![Some("s1.test".into())]);
    // The pool's tls.server_name, when given, is the name instead.
    cfg.pools[1].tls.server_name = Some("fe.contoso.com".into());
    assert_eq!(names(&expand(&cfg, &a, &udp4()), 1), vec![None]);
}
