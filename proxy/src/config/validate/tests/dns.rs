//! `[dns]`, pools given by `srv` or `dns`, and servers given by host name.

use super::*;

/// A pool `a` made of `pool_lines`, with one route to it.
fn pool(pool_lines: &str) -> String {
    format!("[listen]\nudp = [\"127.0.0.1:5060\"]\n\n[[pool]]\nname = \"a\"\n{pool_lines}\n\n[[route]]\npool = \"a\"\n")
}

#[test]
fn dns_section_defaults_and_values() {
    let cfg = ok(MINIMAL);
    assert_eq!(cfg.dns, Dns::default());
    assert_eq!(cfg.dns.refresh, Duration::from_secs(30));
    let cfg = ok(&plus(
        "[dns]\nrefresh = \"10s\"\ntimeout = \"1s\"\nnameservers = [\"127.0.0.1:5353\", \"10.0.0.53\"]\n",
    ));
    assert_eq!(cfg.dns.refresh, Duration::from_secs(10));
    assert_eq!(cfg.dns.timeout, Duration::from_secs(1));
    assert_eq!(
        cfg.dns.nameservers,
        vec![addr("127.0.0.1:5353"), addr("10.0.0.53:53")]
    );
    let e = only_error(&plus("[dns]\nrefresh = \"0s\"\n"));
    assert_error(&e, 11, "dns.refresh", &["longer than 0"]);
    let e = only_error(&plus("[dns]\nnameservers = [\"dns.contoso.com\"]\n"));
    assert_error(&e, 11, "dns.nameservers[0]", &["use IP:port"]);
}

#[test]
fn an_srv_pool_takes_its_transport_from_the_name_or_the_pool() {
    let cfg = ok(&pool("srv = \"_sips._tcp.FE.contoso.com.\""));
    assert_eq!(cfg.pools[0].servers, vec![]);
    assert_eq!(
        cfg.pools[0].dns,
        Some(PoolDns::Srv {
            name: "_sips._tcp.fe.contoso.com".into(),
            transport: Transport::Tls
        })
    );
    let cfg = ok(&pool(
        "srv = \"_sip._udp.fe.contoso.com\"\ntransport = \"tcp\"\nmin_up = 3",
    ));
    assert_eq!(
        cfg.pools[0].dns,
        Some(PoolDns::Srv {
            name: "_sip._udp.fe.contoso.com".into(),
            transport: Transport::Tcp
        })
    );
    assert_eq!(
        cfg.pools[0].min_up, 3,
        "any min_up: the records say how many servers"
    );
    let e = only_error(&pool("srv = \"_sip._sctp.fe.contoso.com\""));
    assert_error(&e, 6, "pool[0].srv", &["_udp, _tcp, _tls", "transport = "]);
    let e = only_error(&pool("srv = \"fe.contoso.com\""));
    assert_error(
        &e,
        6,
        "pool[0].srv",
        &["not an SRV name", "_sip._udp.fe.contoso.com"],
    );
}

#[test]
fn a_dns_pool_is_every_address_of_a_name_at_a_port() {
    let cfg = ok(&pool("dns = \"siplb-fe.siplb.svc.cluster.local:5060\""));
    assert_eq!(
        cfg.pools[0].dns,
        Some(PoolDns::All {
            name: "siplb-fe.siplb.svc.cluster.local".into(),
            port: 5060,
            transport: Transport::Udp
        })
    );
    let e = only_error(&pool("dns = \"fe.contoso.com\""));
    assert_error(&e, 6, "pool[0].dns", &["NAME:port"]);
    let e = only_error(&pool(
        "dns = \"fe.contoso.com:5060\"\nsrv = \"_sip._udp.fe.contoso.com\"",
    ));
    assert_error(&e, 6, "pool[0].dns", &["not both"]);
}

#[test]
fn a_pool_transport_needs_srv_or_dns() {
    let e = only_error(&pool(
        "transport = \"tcp\"\nservers = [{ address = \"127.0.0.1:5071\" }]",
    ));
    assert_error(
        &e,
        6,
        "pool[0].transport",
        &["transport = \"...\" on each server"],
    );
}

#[test]
fn named_servers_ids_are_unique_with_the_others() {
    let e = only_error(&pool(
        "servers = [{ address = \"fe1.contoso.com:5061\" }, { address = \"127.0.0.1:5071\", id = \"fe1.contoso.com:5061\" }]",
    ));
    assert_error(&e, 6, "pool[0].servers[1].id", &["already used"]);
}
