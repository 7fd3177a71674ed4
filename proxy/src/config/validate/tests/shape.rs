//! Mistakes in the shape or in single values: each test asserts the exact line, the dotted key
//! and that the message says what is accepted. Shape errors (bad TOML, unknown key, wrong type)
//! are reported alone; texts build on [`MINIMAL`] (lines 1–9).

use super::*;

// ---- shape: returned alone ------------------------------------------------------------------

#[test]
fn unknown_key_in_a_section() {
    let e = only_error(&plus("[health]\nprobes = \"options\"\n"));
    assert_error(
        &e,
        11,
        "health.probes",
        &["unknown field `probes`", "`probe`", "`interval`"],
    );
}

#[test]
fn unknown_key_in_a_server_of_a_multiline_array() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[[pool]]
name = "a"
servers = [
  { address = "127.0.0.1:5071" },
  { address = "127.0.0.1:5072", wieght = 2 },
]

[[route]]
pool = "a"
"#;
    let e = only_error(text);
    assert_error(
        &e,
        8,
        "pool[0].servers[1].wieght",
        &["unknown field `wieght`", "`weight`"],
    );
}

#[test]
fn unknown_section() {
    let e = only_error(&plus("[pools]\nx = 1\n"));
    assert_error(
        &e,
        10,
        "pools",
        &["unknown field `pools`", "`pool`", "`route`"],
    );
}

#[test]
fn unknown_key_in_a_later_route() {
    let e = only_error(&plus("\n[[route]]\npool = \"a\"\nkeys = \"to-aor\"\n"));
    assert_error(&e, 13, "route[1].keys", &["unknown field `keys`", "`key`"]);
}

#[test]
fn bad_toml_syntax() {
    let e = only_error(&plus("[health]\ninterval = \"1s\nfall = 2\n"));
    assert_error(&e, 11, "health.interval", &["expected"]);
}

#[test]
fn bad_toml_unclosed_header() {
    let e = only_error(&plus("[health\nfall = 2\n"));
    assert_eq!(e.line, 10, "{e}");
    assert!(!e.message.contains('\n'), "{e}");
}

#[test]
fn wrong_type_says_what_type_is_accepted() {
    let e = only_error(&plus("[health]\nfall = \"2\"\n"));
    assert_error(
        &e,
        11,
        "health.fall",
        &["invalid type", "expected a whole number"],
    );
    let e = only_error(&MINIMAL.replace("[listen]\nudp = [\"127.0.0.1:5060\"]", "listen = 3"));
    assert_error(
        &e,
        1,
        "listen",
        &["invalid type: integer `3`, expected a table"],
    );
}

#[test]
fn missing_required_key() {
    let e = only_error(&plus(
        "\n[[pool]]\nservers = [{ address = \"127.0.0.1:5081\" }]\n",
    ));
    assert_error(&e, 11, "pool[1].name", &["missing field `name`"]);
}

// ---- values ---------------------------------------------------------------------------------

#[test]
fn bad_duration() {
    let e = only_error(&plus("[health]\ninterval = \"5s0\"\n"));
    assert_error(
        &e,
        11,
        "health.interval",
        &["\"5s0\" is not a duration; use a number and a unit: 500ms, 2s, 1m, 1h"],
    );
    let e = only_error(&plus(
        "\n[[pool]]\nname = \"b\"\nfailback_after = \"30\"\n\
         servers = [{ address = \"127.0.0.1:5081\" }]\n",
    ));
    assert_error(
        &e,
        13,
        "pool[1].failback_after",
        &["has no unit", "500ms, 2s, 1m, 1h"],
    );
}

#[test]
fn bad_socket_address_in_a_listener() {
    let e = only_error(&MINIMAL.replace("\"127.0.0.1:5060\"", "\"127.0.0.1\""));
    assert_error(
        &e,
        2,
        "listen.udp[0]",
        &["no port", "use IP:port, e.g. 127.0.0.1:5060"],
    );
    let e = only_error(&plus("[ops]\nlisten = \"localhost:9060\"\n"));
    assert_error(&e, 11, "ops.listen", &["host name", "use IP:port"]);
}

#[test]
fn a_server_address_may_be_a_host_name_with_a_port() {
    let cfg = ok(&MINIMAL.replace("127.0.0.1:5071", "FE1.contoso.com:5061"));
    let pool = &cfg.pools[0];
    assert!(pool.servers.is_empty(), "{pool:?}");
    assert_eq!(pool.named.len(), 1);
    assert_eq!(pool.named[0].name, "fe1.contoso.com");
    assert_eq!(pool.named[0].port, 5061);
    assert_eq!(
        pool.named[0].id, "FE1.contoso.com:5061",
        "the id is the address as written"
    );
    // A name without a port is still an address error, naming the fix.
    let e = only_error(&MINIMAL.replace("127.0.0.1:5071", "fe1.contoso.com"));
    assert_error(&e, 6, "pool[0].servers[0].address", &["use IP:port"]);
}

#[test]
fn bad_advertise() {
    let text = MINIMAL.replace(
        "udp = [\"127.0.0.1:5060\"]",
        "udp = [\"127.0.0.1:5060\"]\nadvertise = \"::1\"",
    );
    let e = only_error(&text);
    assert_error(
        &e,
        3,
        "listen.advertise",
        &["without brackets", "use host[:port]"],
    );
}

#[test]
fn bad_enum_values() {
    let server = "servers = [{ address = \"127.0.0.1:5081\" }]\n";
    let cases = [
        (
            "[health]\nprobe = \"http\"\n".to_string(),
            11,
            "health.probe",
            "unknown probe \"http\"; use one of: options, tcp-connect",
        ),
        (
            format!("[[pool]]\nname = \"b\"\nrole = \"pbx\"\n{server}"),
            12,
            "pool[1].role",
            "unknown role \"pbx\"; use one of: front-end, edge, mediation, director",
        ),
        (
            format!("[[pool]]\nname = \"b\"\nfailover = \"yes\"\n{server}"),
            12,
            "pool[1].failover",
            "unknown failover mode \"yes\"; use one of: auto, manual",
        ),
        (
            "[[pool]]\nname = \"b\"\n\
             servers = [{ address = \"127.0.0.1:5081\", transport = \"sctp\" }]\n"
                .to_string(),
            12,
            "pool[1].servers[0].transport",
            "unknown transport \"sctp\"; use one of: udp, tcp, tls",
        ),
        (
            "[[route]]\npool = \"a\"\nkey = \"aor\"\n".to_string(),
            12,
            "route[1].key",
            "unknown key \"aor\"; use one of: to-aor, from-aor, ruri-aor, call-id, source-ip",
        ),
    ];
    for (extra, line, key, says) in cases {
        let e = only_error(&plus(&extra));
        assert_error(&e, line, key, &[says]);
    }
}

#[test]
fn bad_log_level_and_format() {
    let e = errors(&plus("[log]\nlevel = \"siplb=loud\"\nformat = \"xml\"\n"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert_error(
        &e[0],
        11,
        "log.level",
        &["is not a log filter", "error, warn, info, debug, trace"],
    );
    assert_error(
        &e[1],
        12,
        "log.format",
        &["unknown log format \"xml\"", "text, json"],
    );
}

#[test]
fn servers_at_broadcast_multicast_or_unspecified_addresses() {
    for (addr, says) in [
        ("255.255.255.255:5060", "broadcast or multicast"),
        ("224.0.0.1:5060", "broadcast or multicast"),
        ("[ff02::1]:5060", "broadcast or multicast"),
        ("0.0.0.0:5060", "unspecified"),
        ("[::]:5060", "unspecified"),
    ] {
        let e = only_error(&MINIMAL.replace("127.0.0.1:5071", addr));
        assert_error(
            &e,
            6,
            "pool[0].servers[0].address",
            &[says, "127.0.0.1:5060"],
        );
    }
}

#[test]
fn routing_server_header_and_branch_key_file() {
    let cfg = parse(
        Path::new("t.toml"),
        &plus("[routing]\nserver_header = \"\"\n"),
    )
    .expect("valid");
    assert_eq!(cfg.routing.server_header, "");
    let e = only_error(&plus("[routing]\nserver_header = \"a\\r\\nX: y\"\n"));
    assert_error(&e, 11, "routing.server_header", &["line breaks"]);
    let dir = std::env::temp_dir().join(format!("siplb-branch-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("short"), "too short\n").expect("write");
    std::fs::write(dir.join("good"), "  0123456789abcdef0123\n").expect("write");
    let cfg_path = dir.join("siplb.toml");
    let e =
        parse(&cfg_path, &plus("[routing]\nbranch_key_file = \"short\"\n")).expect_err("short key");
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (11, "routing.branch_key_file")
    );
    assert!(e[0].to_string().contains("fewer than 16 bytes"), "{}", e[0]);
    let cfg = parse(&cfg_path, &plus("[routing]\nbranch_key_file = \"good\"\n")).expect("valid");
    assert_eq!(
        cfg.routing.branch_key.map(|k| k.0),
        Some(b"0123456789abcdef0123".to_vec()),
        "relative to the config file, trimmed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
