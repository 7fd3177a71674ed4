//! Tests of [`parse`]: a full file into the expected [`Config`], defaults, health overrides, the
//! shipped `config.toml`, and (in [`shape`], [`references`], [`structure`], and [`certs`] for
//! the files of TLS listeners) one test per kind of mistake, each checking the line, the key and
//! that the message says what is accepted.

mod certs;
mod cluster;
mod connections;
mod damping;
mod dns;
mod passthrough;
mod references;
mod shape;
mod structure;
mod tls_client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::*;
use super::{default_workers, load, parse, summary};

/// The path tests pretend their text was read from.
const PATH: &str = "/etc/siplb/test.toml";

/// A minimal valid file; tests append to it from line 10 on.
const MINIMAL: &str = r#"[listen]
udp = ["127.0.0.1:5060"]

[[pool]]
name = "a"
servers = [{ address = "127.0.0.1:5071" }]

[[route]]
pool = "a"
"#;

/// [`MINIMAL`] followed by `extra`, whose first line is line 10.
fn plus(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

fn parse_text(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse(Path::new(PATH), text)
}

fn ok(text: &str) -> Config {
    match parse_text(text) {
        Ok(c) => c,
        Err(errors) => panic!("expected a valid config, got:\n{}", render(&errors)),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse_text(text) {
        Ok(c) => panic!("expected errors, got a valid config: {c:#?}"),
        Err(errors) => errors,
    }
}

/// The only error `text` has; fails when there are none or several.
fn only_error(text: &str) -> ConfigError {
    let errors = errors(text);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        render(&errors)
    );
    errors.into_iter().next().unwrap()
}

/// Asserts where an error is and that its message contains each of `says`.
fn assert_error(e: &ConfigError, line: usize, key: &str, says: &[&str]) {
    assert_eq!(e.path, PathBuf::from(PATH), "{e}");
    assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
    for s in says {
        assert!(e.message.contains(s), "message should contain {s:?}: {e}");
    }
    assert!(!e.message.contains('\n'), "message should be one line: {e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{PATH}:{line}: {key}: ")),
        "{e}"
    );
}

fn render(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server(
    id: &str,
    address: &str,
    transport: Transport,
    weight: u32,
    drained: bool,
) -> ServerConfig {
    ServerConfig {
        id: id.into(),
        address: addr(address),
        transport,
        weight,
        drained,
        server_name: None,
        priority: 0,
    }
}

const FULL: &str = r#"[listen]
udp = ["127.0.0.1:5060", "[::1]:5060"]
tcp = ["127.0.0.1:5060"]
advertise = "sip.contoso.com:5060"
workers = 2
shutdown_grace = "30s"

[ops]
listen = "127.0.0.1:9060"
admin_token_file = "/run/secrets/siplb-admin"

[health]
probe = "tcp-connect"
interval = "2s"
timeout = "1.5s"
fall = 3
rise = 4

[routing]
no_route = 403
retry_after = "1m"

[log]
level = "siplb=debug,info"
format = "json"

[[pool]]
name = "fe-dc1"
role = "front-end"
pair = "fe-dc2"
failover = "manual"
failback_after = "2m"
min_up = 2
health = { probe = "options", interval = "5s" }
servers = [
  { address = "127.0.0.1:5071", transport = "udp" },
  { address = "127.0.0.1:5072", transport = "tcp", weight = 2, id = "fe1-b", drained = true },
  { address = "[::1]:5073", transport = "tls" },
]

[[pool]]
name = "fe-dc2"
pair = "fe-dc1"
servers = [{ address = "127.0.0.1:5081" }]

[[route]]
methods = ["register", "Invite"]
domain = "Contoso.COM"
pools = ["fe-dc1", "fe-dc2"]
key = "to-aor"

[[route]]
uri_user_param = "Phone"
pool = "fe-dc2"
key = "call-id"
"#;

#[test]
fn full_config_becomes_the_expected_config() {
    let global = Health {
        probe: ProbeKind::TcpConnect,
        interval: Duration::from_secs(2),
        timeout: Duration::from_millis(1500),
        fall: 3,
        rise: 4,
        damping: Damping::DEFAULT,
    };
    let expected = Config {
        path: PathBuf::from(PATH),
        listen: Listen {
            udp: vec![addr("127.0.0.1:5060"), addr("[::1]:5060")],
            tcp: vec![addr("127.0.0.1:5060")],
            // TLS listeners need real files: see `certs`.
            tls: vec![],
            advertise: Some(HostPort {
                host: "sip.contoso.com".into(),
                port: Some(5060),
            }),
            workers: 2,
            passthrough: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
        },
        ops: Ops {
            listen: Some(addr("127.0.0.1:9060")),
            admin_token_file: Some(PathBuf::from("/run/secrets/siplb-admin")),
        },
        health: global.clone(),
        routing: Routing {
            no_route: 403,
            retry_after: Duration::from_secs(60),
            server_header: "siplb".into(),
            branch_key: None,
        },
        log: Log {
            level: "siplb=debug,info".into(),
            format: LogFormat::Json,
        },
        connections: Connections::default(),
        dns: Dns::default(),
        cluster: None,
        pools: vec![
            PoolConfig {
                name: "fe-dc1".into(),
                role: Role::FrontEnd,
                pair: Some("fe-dc2".into()),
                failover: Mode::Manual,
                failback_after: Duration::from_secs(120),
                min_up: 2,
                health: Health {
                    probe: ProbeKind::Options,
                    interval: Duration::from_secs(5),
                    ..global.clone()
                },
                tls: PoolTls::default(),
                servers: vec![
                    server("127.0.0.1:5071", "127.0.0.1:5071", Transport::Udp, 1, false),
                    server("fe1-b", "127.0.0.1:5072", Transport::Tcp, 2, true),
                    server("[::1]:5073", "[::1]:5073", Transport::Tls, 1, false),
                ],
                named: vec![],
                dns: None,
            },
            PoolConfig {
                name: "fe-dc2".into(),
                role: Role::FrontEnd,
                pair: Some("fe-dc1".into()),
                failover: Mode::Auto,
                failback_after: Duration::from_secs(30),
                min_up: 1,
                health: global,
                tls: PoolTls::default(),
                servers: vec![server(
                    "127.0.0.1:5081",
                    "127.0.0.1:5081",
                    Transport::Udp,
                    1,
                    false,
                )],
                named: vec![],
                dns: None,
            },
        ],
        routes: vec![
            RouteConfig {
                methods: Some(vec!["REGISTER".into(), "INVITE".into()]),
                domain: Some("contoso.com".into()),
                uri_user_param: None,
                pools: vec!["fe-dc1".into(), "fe-dc2".into()],
                key: Some(KeyKind::ToAor),
            },
            RouteConfig {
                methods: None,
                domain: None,
                uri_user_param: Some("phone".into()),
                pools: vec!["fe-dc2".into()],
                key: Some(KeyKind::CallId),
            },
        ],
    };
    assert_eq!(ok(FULL), expected);
}

#[test]
fn defaults_apply() {
    let cfg = ok(MINIMAL);
    assert_eq!(cfg.listen.tcp, vec![]);
    assert_eq!(cfg.listen.tls, vec![]);
    assert_eq!(cfg.listen.advertise, None);
    assert_eq!(cfg.listen.workers, default_workers());
    assert!((1..=256).contains(&cfg.listen.workers));
    assert_eq!(cfg.listen.shutdown_grace, Duration::from_secs(10));
    assert_eq!(
        cfg.ops,
        Ops {
            listen: None,
            admin_token_file: None
        }
    );
    let health = Health {
        probe: ProbeKind::Options,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        fall: 2,
        rise: 2,
        damping: Damping::DEFAULT,
    };
    assert_eq!(cfg.health, health);
    assert_eq!(
        cfg.routing,
        Routing {
            no_route: 404,
            retry_after: Duration::from_secs(30),
            server_header: "siplb".into(),
            branch_key: None,
        }
    );
    let pool = &cfg.pools[0];
    assert_eq!(pool.role, Role::FrontEnd);
    assert_eq!(pool.pair, None);
    assert_eq!(pool.failover, Mode::Auto);
    assert_eq!(pool.failback_after, Duration::from_secs(30));
    assert_eq!(pool.min_up, 1);
    assert_eq!(pool.health, health);
    assert_eq!(
        pool.servers,
        vec![server(
            "127.0.0.1:5071",
            "127.0.0.1:5071",
            Transport::Udp,
            1,
            false
        )]
    );
    let route = &cfg.routes[0];
    assert_eq!(
        (&route.methods, &route.domain, &route.uri_user_param),
        (&None, &None, &None)
    );
    assert_eq!(
        (route.pools.as_slice(), route.key),
        (&["a".to_string()][..], None)
    );
}

#[test]
fn pool_health_overrides_merge_over_the_health_section() {
    let text = format!(
        "{MINIMAL}
[health]
interval = \"3s\"
fall = 5

[[pool]]
name = \"b\"
health = {{ probe = \"tcp-connect\", timeout = \"2s\", rise = 7 }}
servers = [{{ address = \"127.0.0.1:5081\" }}]
"
    );
    let cfg = ok(&text);
    let global = Health {
        probe: ProbeKind::Options,
        interval: Duration::from_secs(3),
        timeout: Duration::from_millis(500),
        fall: 5,
        rise: 2,
        damping: Damping::DEFAULT,
    };
    assert_eq!(cfg.health, global);
    assert_eq!(
        cfg.pools[0].health, global,
        "a pool without overrides inherits [health]"
    );
    assert_eq!(
        cfg.pools[1].health,
        Health {
            probe: ProbeKind::TcpConnect,
            interval: Duration::from_secs(3),
            timeout: Duration::from_secs(2),
            fall: 5,
            rise: 7,
            damping: Damping::DEFAULT,
        }
    );
}

#[test]
fn advertise_accepts_names_ipv4_and_bracketed_ipv6() {
    for (written, host, port) in [
        ("sip.contoso.com", "sip.contoso.com", None),
        ("192.0.2.10:5062", "192.0.2.10", Some(5062)),
        ("[2001:db8::10]:5060", "[2001:db8::10]", Some(5060)),
    ] {
        let text = MINIMAL.replacen(
            "udp = [\"127.0.0.1:5060\"]",
            &format!("udp = [\"127.0.0.1:5060\"]\nadvertise = \"{written}\""),
            1,
        );
        let cfg = ok(&text);
        assert_eq!(
            cfg.listen.advertise,
            Some(HostPort {
                host: host.into(),
                port
            })
        );
    }
}

#[test]
fn shipped_config_is_valid_and_describes_the_loopback_deployment() {
    // Read from where it is, so that its TLS listener finds tls/demo.crt and tls/demo.key.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = match parse(&path, &text) {
        Ok(c) => c,
        Err(errors) => panic!("the shipped config.toml is refused:\n{}", render(&errors)),
    };
    assert_eq!(cfg.listen.udp, vec![addr("127.0.0.1:5060")]);
    assert_eq!(
        cfg.listen.tls,
        vec![TlsListen {
            address: addr("127.0.0.1:5061"),
            cert: path.parent().unwrap().join("tls/demo.crt"),
            key: path.parent().unwrap().join("tls/demo.key"),
        }]
    );
    assert_eq!(
        cfg.listen
            .advertise
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("127.0.0.1:5060")
    );
    assert_eq!(cfg.ops.listen, Some(addr("127.0.0.1:9060")));
    assert_eq!(cfg.ops.admin_token_file, None);
    let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["fe-dc1", "fe-dc2", "med-dc1", "edge-dc1", "dir-dc1"]
    );
    assert_eq!(cfg.pools[0].pair.as_deref(), Some("fe-dc2"));
    assert_eq!(cfg.pools[1].pair.as_deref(), Some("fe-dc1"));
    assert_eq!(cfg.pools[2].role, Role::Mediation);
    assert_eq!(cfg.pools[3].role, Role::Edge);
    assert_eq!(cfg.pools[4].role, Role::Director);
    let ids: Vec<&str> = cfg
        .pools
        .iter()
        .flat_map(|p| &p.servers)
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "fe1-a", "fe1-b", "fe2-a", "fe2-b", "med1-a", "med1-b", "edge1-a", "edge1-b", "dir1-a",
            "dir1-b"
        ]
    );
    for s in cfg.pools.iter().flat_map(|p| &p.servers) {
        assert_eq!(s.transport, Transport::Udp);
        assert_eq!(s.address.ip().to_string(), "127.0.0.1");
    }
    assert_eq!(cfg.routes.len(), 5);
    assert_eq!(cfg.routes[0].uri_user_param.as_deref(), Some("phone"));
    assert_eq!(
        (cfg.routes[0].pools.as_slice(), cfg.routes[0].key),
        (&["med-dc1".to_string()][..], Some(KeyKind::CallId))
    );
    assert_eq!(cfg.routes[1].domain.as_deref(), Some("contoso.com"));
    assert_eq!(cfg.routes[1].key, None);
    assert!(cfg.routes[1]
        .methods
        .as_ref()
        .is_some_and(|m| m.contains(&"REGISTER".to_string())));
    // The Edge and Director routes name no key: their pools' role picks the source IP.
    assert_eq!(
        (cfg.routes[2].domain.as_deref(), cfg.routes[2].key),
        (Some("litwareinc.com"), None)
    );
    assert_eq!(cfg.routes[2].pools, ["edge-dc1"]);
    assert_eq!(
        (cfg.routes[3].domain.as_deref(), cfg.routes[3].key),
        (Some("adatum.com"), None)
    );
    assert_eq!(cfg.routes[3].pools, ["dir-dc1"]);
    let text = summary(&cfg);
    assert!(text.contains("pool edge-dc1; key default (source-ip, for an edge pool)"));
    assert!(text.contains("pool dir-dc1; key default (source-ip, for a director pool)"));
    assert_eq!(
        (&cfg.routes[4].methods, &cfg.routes[4].domain),
        (&None, &None)
    );
    assert_eq!(cfg.routes[4].pools, ["fe-dc1", "fe-dc2"]);
}

#[test]
fn several_errors_are_reported_together_in_line_order() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[health]
interval = "5s0"

[[pool]]
name = "a"
role = "pbx"
servers = [{ address = "127.0.0.1:5071", weight = 0 }]

[[route]]
pool = "b"
key = "user"
"#;
    let errors = errors(text);
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        found,
        [
            (5, "health.interval"),
            (9, "pool[0].role"),
            (10, "pool[0].servers[0].weight"),
            (13, "route[0].pool"),
            (14, "route[0].key"),
        ],
        "{}",
        render(&errors)
    );
}

#[test]
fn load_reads_the_file_and_reports_a_missing_one_at_line_0() {
    let dir = std::env::temp_dir().join(format!("siplb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, MINIMAL).unwrap();
    let cfg = load(&file).unwrap();
    assert_eq!(cfg.path, file);

    let missing = dir.join("missing.toml");
    let errors = load(&missing).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].key.as_str()), (0, ""));
    assert!(errors[0].message.contains("cannot read"), "{}", errors[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn summary_shows_what_siplb_will_do() {
    let text = summary(&ok(FULL));
    for needle in [
        "configuration /etc/siplb/test.toml",
        "udp 127.0.0.1:5060, [::1]:5060 | tcp 127.0.0.1:5060 | tls - | 2 workers",
        "advertise sip.contoso.com:5060",
        "ops       http://127.0.0.1:9060 | admin token file: /run/secrets/siplb-admin",
        "health    tcp-connect every 2s, timeout 1500ms, fall 3, rise 4",
        "no route -> 403",
        "Retry-After 60",
        "fe-dc1  front-end, pair fe-dc2, failover manual, min_up 2",
        "health options every 5s, timeout 1500ms, fall 3, rise 4 (overrides [health])",
        "fe1-b           127.0.0.1:5072  tcp  weight 2  drained",
        "fe-dc2  front-end, pair fe-dc1, failover auto (failback after 30s), min_up 1",
        "routes (2, first match wins)",
        "route[0]  methods REGISTER, INVITE; domain contoso.com -> pools fe-dc1, fe-dc2 (by key); \
         key to-aor",
        "route[1]  user=phone -> pool fe-dc2; key call-id",
    ] {
        assert!(
            text.contains(needle),
            "summary should contain {needle:?}:\n{text}"
        );
    }
    // fe-dc2 inherits [health], so no override line is printed for it.
    assert_eq!(text.matches("overrides [health]").count(), 1, "{text}");
    assert!(text.lines().count() < 40, "one screen:\n{text}");
    let default_key = summary(&ok(MINIMAL));
    assert!(default_key.contains("every request -> pool a; key default (To AOR for REGISTER"));
}
