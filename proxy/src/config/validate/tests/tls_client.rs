//! A pool's `tls = { ca, server_name, cert, key }` and a server's `server_name`: what a good
//! file becomes, and each mistake with its line, key and the fix — including the files
//! themselves (a CA that is not PEM, a client certificate without its key, a key that does not
//! match its certificate), which `siplb check` reads. Certificates are made with rcgen into a
//! directory of the test's own.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::*;
use crate::test_dir::TestDir;

/// A fresh directory with a CA, a client certificate it issued (`lb.crt`, `lb.key`) and the
/// key of another certificate (`other.key`), removed when dropped.
struct Files {
    dir: TestDir,
}

impl Files {
    fn new() -> Files {
        let dir = TestDir::new("tls-client-config");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let lb_key = KeyPair::generate().unwrap();
        let lb = CertificateParams::new(vec!["lb.contoso.com".to_string()])
            .unwrap()
            .signed_by(&lb_key, &ca, &ca_key)
            .unwrap();
        let other = KeyPair::generate().unwrap();
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("lb.crt", lb.pem()),
            ("lb.key", lb_key.serialize_pem()),
            ("other.key", other.serialize_pem()),
            ("garbage.pem", "not a certificate\n".to_string()),
        ] {
            dir.write(name, text);
        }
        Files { dir }
    }

    /// The config file path the text pretends to be read from: inside the directory, so that
    /// relative paths name the files above.
    fn config_path(&self) -> PathBuf {
        self.dir.join("siplb.toml")
    }

    fn parse(&self, text: &str) -> Result<Config, Vec<ConfigError>> {
        parse(&self.config_path(), text)
    }

    fn ok(&self, text: &str) -> Config {
        self.parse(text)
            .unwrap_or_else(|errors| panic!("expected a valid config:\n{}", render(&errors)))
    }

    /// The one error of `text`, checked for line, key and what its message says.
    fn only_error(&self, text: &str, line: usize, key: &str, says: &[&str]) {
        let errors = match self.parse(text) {
            Ok(c) => panic!("expected an error, got a valid config: {c:#?}"),
            Err(errors) => errors,
        };
        assert_eq!(errors.len(), 1, "expected one error:\n{}", render(&errors));
        let e = &errors[0];
        assert_eq!(e.path, self.config_path(), "{e}");
        assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
        for s in says {
            assert!(e.message.contains(s), "message should contain {s:?}: {e}");
        }
    }
}

/// One pool `fe` of TLS servers with `tls` (line 6) and the servers' extra keys.
fn tls_pool(tls: &str, server_extra: &str) -> String {
    format!(
        r#"[listen]
udp = ["127.0.0.1:5060"]

[[pool]]
name = "fe"
{tls}
servers = [
  {{ address = "127.0.0.1:5061", transport = "tls"{server_extra} }},
  {{ address = "127.0.0.1:5062", transport = "tls" }},
]

[[route]]
pool = "fe"
"#
    )
}

#[test]
fn a_pool_tls_table_with_relative_files() {
    let f = Files::new();
    let cfg = f.ok(&tls_pool(
        r#"tls = { ca = "ca.pem", server_name = "fe-dc1.contoso.com", cert = "lb.crt", key = "lb.key" }"#,
        r#", server_name = "fe1.contoso.com""#,
    ));
    let pool = &cfg.pools[0];
    assert_eq!(
        pool.tls,
        PoolTls {
            ca: Some(f.dir.join("ca.pem")),
            server_name: Some("fe-dc1.contoso.com".into()),
            client_cert: Some(ClientCert {
                cert: f.dir.join("lb.crt"),
                key: f.dir.join("lb.key"),
            }),
        }
    );
    assert_eq!(
        pool.servers[0].server_name.as_deref(),
        Some("fe1.contoso.com")
    );
    assert_eq!(pool.servers[1].server_name, None);

    let s = summary(&cfg);
    let ca = f.dir.join("ca.pem");
    let (crt, key) = (f.dir.join("lb.crt"), f.dir.join("lb.key"));
    let want = format!(
        "tls ca {} | server name fe-dc1.contoso.com | client cert {} (key {})",
        ca.display(),
        crt.display(),
        key.display()
    );
    assert!(s.contains(&want), "{s}");
    assert!(s.contains("server name fe1.contoso.com"), "{s}");
}

#[test]
fn without_a_tls_table_the_system_bundle_and_each_servers_ip_are_used() {
    let f = Files::new();
    let cfg = f.ok(&tls_pool("", ""));
    assert_eq!(cfg.pools[0].tls, PoolTls::default());
    assert_eq!(
        cfg.pools[0].tls.ca_file(),
        Path::new("/etc/ssl/certs/ca-certificates.crt")
    );
    let s = summary(&cfg);
    assert!(
        s.contains(
            "tls ca /etc/ssl/certs/ca-certificates.crt (system bundle) | server name each \
             server's IP address | client cert none"
        ),
        "{s}"
    );
}

#[test]
fn pools_without_tls_servers_show_no_tls_line() {
    let cfg = ok(MINIMAL);
    assert!(!summary(&cfg).contains("tls ca"), "{}", summary(&cfg));
}

#[test]
fn unknown_key_in_tls() {
    let f = Files::new();
    f.only_error(
        &tls_pool(r#"tls = { ca = "ca.pem", insecure = true }"#, ""),
        6,
        "pool[0].tls.insecure",
        &[
            "unknown field `insecure`",
            "`ca`",
            "`server_name`",
            "`cert`",
            "`key`",
        ],
    );
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem() {
    let f = Files::new();
    let missing = f.dir.join("nope.pem");
    f.only_error(
        &tls_pool(r#"tls = { ca = "nope.pem" }"#, ""),
        6,
        "pool[0].tls.ca",
        &["cannot read", &missing.display().to_string()],
    );
    f.only_error(
        &tls_pool(r#"tls = { ca = "garbage.pem" }"#, ""),
        6,
        "pool[0].tls.ca",
        &["no PEM certificate", "garbage.pem"],
    );
    // A key is not a certificate.
    f.only_error(
        &tls_pool(r#"tls = { ca = "lb.key" }"#, ""),
        6,
        "pool[0].tls.ca",
        &["no PEM certificate"],
    );
}

#[test]
fn a_client_certificate_needs_its_key_and_the_key_must_match() {
    let f = Files::new();
    f.only_error(
        &tls_pool(r#"tls = { cert = "lb.crt" }"#, ""),
        6,
        "pool[0].tls.cert",
        &["needs both cert and key", "add key"],
    );
    f.only_error(
        &tls_pool(r#"tls = { key = "lb.key" }"#, ""),
        6,
        "pool[0].tls.key",
        &["needs both cert and key", "add cert"],
    );
    let (crt, other) = (f.dir.join("lb.crt"), f.dir.join("other.key"));
    f.only_error(
        &tls_pool(r#"tls = { cert = "lb.crt", key = "other.key" }"#, ""),
        6,
        "pool[0].tls.key",
        &[
            "does not match",
            &other.display().to_string(),
            &crt.display().to_string(),
        ],
    );
    f.only_error(
        &tls_pool(r#"tls = { cert = "lb.crt", key = "garbage.pem" }"#, ""),
        6,
        "pool[0].tls.key",
        &["holds no PEM private key", "garbage.pem"],
    );
    f.only_error(
        &tls_pool(r#"tls = { cert = "lb.key", key = "lb.key" }"#, ""),
        6,
        "pool[0].tls.cert",
        &["no PEM certificate", "lb.key"],
    );
}

#[test]
fn an_expired_client_certificate_is_refused_like_a_listener_certificate() {
    let f = Files::new();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["lb.contoso.com".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 6, 30);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(f.dir.join("old.crt"), cert.pem()).unwrap();
    std::fs::write(f.dir.join("old.key"), key.serialize_pem()).unwrap();
    let old = f.dir.join("old.crt");
    f.only_error(
        &tls_pool(r#"tls = { cert = "old.crt", key = "old.key" }"#, ""),
        6,
        "pool[0].tls.cert",
        &[
            "expired on 2021-06-30",
            "renew it",
            &old.display().to_string(),
        ],
    );
}

#[test]
fn server_names_must_be_names_a_certificate_carries() {
    let f = Files::new();
    f.only_error(
        &tls_pool(r#"tls = { server_name = "fe dc1" }"#, ""),
        6,
        "pool[0].tls.server_name",
        &["not a DNS name or an IP address", "fe1.contoso.com"],
    );
    f.only_error(
        &tls_pool("", r#", server_name = "-bad-.""#),
        8,
        "pool[0].servers[0].server_name",
        &["not a DNS name or an IP address"],
    );
    // An IP address is a name too (the certificate's IP SAN is verified).
    let cfg = f.ok(&tls_pool(r#"tls = { server_name = "10.0.0.5" }"#, ""));
    assert_eq!(cfg.pools[0].tls.server_name.as_deref(), Some("10.0.0.5"));
}

#[test]
fn server_name_belongs_to_tls_servers_only() {
    let e = only_error(&plus(
        "[[pool]]\nname = \"b\"\nservers = [{ address = \"127.0.0.1:5081\", transport = \"tcp\", server_name = \"fe.contoso.com\" }]\n",
    ));
    assert_error(
        &e,
        12,
        "pool[1].servers[0].server_name",
        &["transport is \"tcp\"", "set transport = \"tls\""],
    );
}

#[test]
fn tls_connect_probes_tls_servers_only() {
    let f = Files::new();
    let cfg = f.ok(&tls_pool("health = { probe = \"tls-connect\" }", ""));
    assert_eq!(cfg.pools[0].health.probe, ProbeKind::TlsConnect);
    assert!(summary(&cfg).contains("tls-connect every 1s"));

    let e = only_error(&plus("[health]\nprobe = \"tls-connect\"\n"));
    assert_error(
        &e,
        6,
        "pool[0].servers[0].address",
        &[
            "probed with tls-connect (from [health])",
            "transport is \"udp\"",
            "set transport = \"tls\"",
        ],
    );
    let e = only_error(&plus(
        "[[pool]]\nname = \"b\"\nhealth = { probe = \"tls-connect\" }\nservers = [{ address = \"127.0.0.1:5081\", transport = \"tcp\" }]\n",
    ));
    assert_error(
        &e,
        13,
        "pool[1].servers[0].transport",
        &["pool \"b\" is probed with tls-connect, a TLS handshake"],
    );
}
