//! `[connections]`: defaults, every key read, and each mistake named by line and key.

use super::*;

#[test]
fn defaults_when_the_section_is_absent() {
    let c = ok(MINIMAL).connections;
    assert_eq!(c, Connections::default());
    assert_eq!(c.max, 10_000);
    assert_eq!(c.max_per_ip, 256);
    assert_eq!(
        c.idle_timeout,
        Duration::from_secs(1800),
        "Microsoft's load-balancer idle timeout for Lync"
    );
    assert_eq!(c.header_timeout, Duration::from_secs(10));
    assert_eq!(c.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.max_header_bytes, 65_536);
    assert_eq!(c.max_body_bytes, 1_048_576);
}

#[test]
fn every_key_is_read() {
    let c = ok(&plus(
        "[connections]\nmax = 500\nmax_per_ip = 10\nidle_timeout = \"1h\"\n\
         header_timeout = \"2s\"\nhandshake_timeout = \"750ms\"\nmax_header_bytes = 4096\n\
         max_body_bytes = 0\n",
    ))
    .connections;
    assert_eq!(
        c,
        Connections {
            max: 500,
            max_per_ip: 10,
            idle_timeout: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_millis(750),
            max_header_bytes: 4096,
            max_body_bytes: 0,
        }
    );
}

#[test]
fn a_stream_only_config_is_valid() {
    let c = ok(r#"[listen]
tcp = ["127.0.0.1:5060"]

[[pool]]
name = "a"
servers = [{ address = "127.0.0.1:5071", transport = "tcp" }]

[[route]]
pool = "a"
"#);
    assert!(c.listen.udp.is_empty());
    assert_eq!(c.listen.tcp, vec![addr("127.0.0.1:5060")]);
}

#[test]
fn unknown_key() {
    let e = only_error(&plus("[connections]\nmax_per_host = 3\n"));
    assert_error(
        &e,
        11,
        "connections.max_per_host",
        &["unknown field `max_per_host`", "`max_per_ip`"],
    );
}

#[test]
fn counts_out_of_range() {
    let errs = errors(&plus(
        "[connections]\nmax = 0\nmax_per_ip = -1\nmax_header_bytes = 100\n\
         max_body_bytes = 999999999999\n",
    ));
    assert_eq!(errs.len(), 4, "{}", render(&errs));
    assert_error(
        &errs[0],
        11,
        "connections.max",
        &["max = 0", "1 to 1000000"],
    );
    assert_error(
        &errs[1],
        12,
        "connections.max_per_ip",
        &["max_per_ip = -1", "one IP address"],
    );
    assert_error(
        &errs[2],
        13,
        "connections.max_header_bytes",
        &["1024 to 16777216", "header block"],
    );
    assert_error(
        &errs[3],
        14,
        "connections.max_body_bytes",
        &["0 to 67108864", "body"],
    );
}

#[test]
fn timeouts_must_be_durations_longer_than_zero() {
    // A duration given as a number is a shape error, reported alone.
    let e = only_error(&plus(
        "[connections]\nidle_timeout = \"0s\"\nhandshake_timeout = 5\n",
    ));
    assert_eq!(
        (e.line, e.key.as_str()),
        (12, "connections.handshake_timeout")
    );

    let errs = errors(&plus(
        "[connections]\nidle_timeout = \"0s\"\nheader_timeout = \"soon\"\n",
    ));
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    assert_error(
        &errs[0],
        11,
        "connections.idle_timeout",
        &["longer than 0", "1800s"],
    );
    assert_eq!(
        (errs[1].line, errs[1].key.as_str()),
        (12, "connections.header_timeout")
    );
}

#[test]
fn max_per_ip_above_max_is_refused() {
    let e = only_error(&plus("[connections]\nmax = 10\nmax_per_ip = 20\n"));
    assert_error(
        &e,
        12,
        "connections.max_per_ip",
        &["max_per_ip = 20", "max = 10", "no larger than max"],
    );
}

#[test]
fn a_udp_server_needs_a_udp_listener_of_its_family_and_a_tcp_server_none() {
    let e = only_error(
        r#"[listen]
tcp = ["127.0.0.1:5060"]

[[pool]]
name = "a"
servers = [{ address = "127.0.0.1:5071" }, { address = "[::1]:5072", transport = "tcp" }]

[[route]]
pool = "a"
"#,
    );
    assert_error(
        &e,
        6,
        "pool[0].servers[0].address",
        &[
            "no [listen] udp address is IPv4",
            "add an IPv4 UDP listener",
        ],
    );
}
