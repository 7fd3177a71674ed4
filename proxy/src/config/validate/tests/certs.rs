//! `[listen] tls` files: a missing, unreadable, non-PEM, expired or mismatched certificate or
//! key is an error on the entry's `cert` or `key` key naming the file; a good pair is accepted
//! and shown in the summary with its subject, alternative names and expiry.

use super::*;

use crate::test_dir::TestDir as Dir;

/// A certificate made with rcgen and its key.
struct Made {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Made {
    fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// Parameters for `sip.contoso.com` and 127.0.0.1, valid 2026-01-01 to 2049-12-31.
fn params(cn: &str) -> rcgen::CertificateParams {
    let mut p =
        rcgen::CertificateParams::new(vec!["sip.contoso.com".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    p
}

fn self_signed(p: rcgen::CertificateParams) -> Made {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Made { cert, key }
}

fn good() -> Made {
    self_signed(params("sip.contoso.com"))
}

/// [`MINIMAL`] with a TLS listener on line 3 naming `cert` and `key` as written.
fn with_tls(cert: &str, key: &str) -> String {
    MINIMAL.replace(
        "udp = [\"127.0.0.1:5060\"]\n",
        &format!(
            "udp = [\"127.0.0.1:5060\"]\n\
             tls = [{{ address = \"127.0.0.1:5061\", cert = \"{cert}\", key = \"{key}\" }}]\n"
        ),
    )
}

/// [`with_tls`] for files given by absolute path.
fn with_files(cert: &Path, key: &Path) -> String {
    with_tls(&cert.display().to_string(), &key.display().to_string())
}

/// Writes a good pair to `dir`: `(lb.crt, lb.key)`.
fn good_files(dir: &Dir) -> (PathBuf, PathBuf) {
    let made = good();
    (
        dir.write("lb.crt", made.cert_pem()),
        dir.write("lb.key", made.key_pem()),
    )
}

/// The only error of a config whose TLS files are `cert` and `key`, which must be on the
/// entry's `which` key (`cert` or `key`) and name `file`.
fn tls_error(cert: &Path, key: &Path, which: &str, file: &Path, says: &[&str]) -> ConfigError {
    let e = only_error(&with_files(cert, key));
    assert_error(&e, 3, &format!("listen.tls[0].{which}"), says);
    assert!(
        e.message.contains(&file.display().to_string()),
        "the message should name {}: {e}",
        file.display()
    );
    e
}

#[test]
fn a_good_pair_is_accepted_with_paths_relative_to_the_config_file() {
    let dir = Dir::new("good");
    let made = good();
    dir.write("tls/lb.crt", made.cert_pem());
    dir.write("tls/lb.key", made.key_pem());
    let path = dir.0.join("siplb.toml");
    let cfg = parse(&path, &with_tls("tls/lb.crt", "tls/lb.key")).unwrap();
    assert_eq!(
        cfg.listen.tls,
        vec![TlsListen {
            address: addr("127.0.0.1:5061"),
            cert: dir.0.join("tls/lb.crt"),
            key: dir.0.join("tls/lb.key"),
        }]
    );
}

#[test]
fn a_missing_certificate_or_key_names_the_file() {
    let dir = Dir::new("missing");
    let (cert, key) = good_files(&dir);
    let gone = dir.0.join("gone.crt");
    tls_error(
        &gone,
        &key,
        "cert",
        &gone,
        &[
            "cannot read",
            "certificate chain",
            "relative to this config file's directory",
        ],
    );
    let gone = dir.0.join("gone.key");
    tls_error(&cert, &gone, "key", &gone, &["cannot read", "private key"]);
}

#[test]
fn an_unreadable_file_names_the_file() {
    let dir = Dir::new("unreadable");
    let (cert, key) = good_files(&dir);
    // A directory where the file should be: reading it fails whoever runs the test.
    let not_a_file = dir.0.join("a-directory.crt");
    std::fs::create_dir(&not_a_file).unwrap();
    tls_error(&not_a_file, &key, "cert", &not_a_file, &["cannot read"]);
    tls_error(&cert, &not_a_file, "key", &not_a_file, &["cannot read"]);
}

#[test]
fn a_file_that_is_not_pem_names_the_file_and_the_fix() {
    let dir = Dir::new("not-pem");
    let made = good();
    let key = dir.write("lb.key", made.key_pem());
    let text = dir.write("notes.crt", "this is not a certificate\n");
    tls_error(
        &text,
        &key,
        "cert",
        &text,
        &["holds no PEM certificate", "-----BEGIN CERTIFICATE-----"],
    );
    let der = dir.write("lb.der", made.cert.der());
    tls_error(&der, &key, "cert", &der, &["openssl x509 -inform der"]);
    let cut = dir.write(
        "cut.crt",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n",
    );
    tls_error(&cut, &key, "cert", &cut, &["is not a readable PEM file"]);
    let junk = dir.write(
        "junk.crt",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    tls_error(
        &junk,
        &key,
        "cert",
        &junk,
        &["not a readable X.509 certificate"],
    );
    let cert = dir.write("lb.crt", made.cert_pem());
    let no_key = dir.write("empty.key", "");
    tls_error(
        &cert,
        &no_key,
        "key",
        &no_key,
        &["holds no PEM private key", "-----BEGIN PRIVATE KEY-----"],
    );
    let bad_key = dir.write(
        "bad.key",
        "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
    );
    tls_error(
        &cert,
        &bad_key,
        "key",
        &bad_key,
        &["cannot be used for TLS"],
    );
}

#[test]
fn certificate_and_key_swapped_say_so_on_both_keys() {
    let dir = Dir::new("swapped");
    let (cert, key) = good_files(&dir);
    let errors = errors(&with_files(&key, &cert));
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[0],
        3,
        "listen.tls[0].cert",
        &["holds a private key, not a certificate"],
    );
    assert_error(
        &errors[1],
        3,
        "listen.tls[0].key",
        &["holds a certificate, not a private key"],
    );
}

#[test]
fn an_expired_certificate_says_when_it_expired() {
    let dir = Dir::new("expired");
    let mut p = params("old.contoso.com");
    p.not_before = rcgen::date_time_ymd(2019, 1, 1);
    p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let made = self_signed(p);
    let cert = dir.write("old.crt", made.cert_pem());
    let key = dir.write("old.key", made.key_pem());
    tls_error(
        &cert,
        &key,
        "cert",
        &cert,
        &[
            "the certificate in",
            "(CN=old.contoso.com) expired on 2020-01-01T00:00:00Z",
            "renew it",
        ],
    );
}

#[test]
fn an_expired_certificate_further_up_the_chain_is_refused_too() {
    let dir = Dir::new("chain");
    let mut ca_params = params("Contoso CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.not_before = rcgen::date_time_ymd(2010, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let ca = self_signed(ca_params);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = params("sip.contoso.com")
        .signed_by(&leaf_key, &ca.cert, &ca.key)
        .unwrap();
    let cert = dir.write("chain.crt", format!("{}{}", leaf.pem(), ca.cert_pem()));
    let key = dir.write("leaf.key", leaf_key.serialize_pem());
    tls_error(
        &cert,
        &key,
        "cert",
        &cert,
        &[
            "certificate 2 of the chain",
            "(CN=Contoso CA) expired on 2020-01-01",
        ],
    );

    // The same chain with a current CA is fine.
    let mut ca_params = params("Contoso CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = self_signed(ca_params);
    let leaf = params("sip.contoso.com")
        .signed_by(&leaf_key, &ca.cert, &ca.key)
        .unwrap();
    let cert = dir.write("chain.crt", format!("{}{}", leaf.pem(), ca.cert_pem()));
    ok(&with_files(&cert, &key));
}

#[test]
fn a_key_of_another_certificate_names_both_files_on_the_key() {
    let dir = Dir::new("mismatch");
    let (cert, _) = good_files(&dir);
    let other = dir.write("other.key", good().key_pem());
    let e = tls_error(
        &cert,
        &other,
        "key",
        &other,
        &[
            "does not belong to the certificate in",
            "their public keys differ",
        ],
    );
    assert!(e.message.contains(&cert.display().to_string()), "{e}");

    // The entry's index names which listener: here the second.
    let (cert1, key1) = good_files(&dir);
    let text = MINIMAL.replace(
        "udp = [\"127.0.0.1:5060\"]\n",
        &format!(
            "udp = [\"127.0.0.1:5060\"]\ntls = [\n  \
             {{ address = \"127.0.0.1:5061\", cert = \"{}\", key = \"{}\" }},\n  \
             {{ address = \"127.0.0.1:5062\", cert = \"{}\", key = \"{}\" }},\n]\n",
            cert1.display(),
            key1.display(),
            cert1.display(),
            other.display()
        ),
    );
    let e = only_error(&text);
    assert_error(&e, 5, "listen.tls[1].key", &["does not belong"]);
}

#[test]
fn an_empty_path_is_reported_alone() {
    // The file checks need both paths; the empty one is the mistake to fix first.
    let dir = Dir::new("empty");
    let (_, key) = good_files(&dir);
    let e = only_error(&with_tls("", &key.display().to_string()));
    assert_error(&e, 3, "listen.tls[0].cert", &["empty path"]);
}

#[test]
fn summary_shows_subject_names_and_expiry() {
    let dir = Dir::new("summary");
    let (cert, key) = good_files(&dir);
    let days_left = || {
        humantime::parse_rfc3339("2049-12-31T00:00:00Z")
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400
    };
    let most = days_left();
    let text = summary(&ok(&with_files(&cert, &key)));
    let least = days_left();
    for needle in [
        "| tls 127.0.0.1:5061 |".to_string(),
        format!(
            "tls       127.0.0.1:5061  cert {}  key {}",
            cert.display(),
            key.display()
        ),
        "subject CN=sip.contoso.com | SANs DNS:sip.contoso.com, IP:127.0.0.1 | expires \
         2049-12-31T00:00:00Z (in "
            .to_string(),
    ] {
        assert!(
            text.contains(&needle),
            "summary should contain {needle:?}:\n{text}"
        );
    }
    let shown: u64 = text
        .split("2049-12-31T00:00:00Z (in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no day count:\n{text}"));
    assert!((least..=most).contains(&shown), "{shown} days:\n{text}");
    assert!(!text.contains("not valid before"), "{text}");

    // A certificate not valid yet is accepted (clocks differ) and the summary says so.
    let mut p = params("next.contoso.com");
    p.not_before = rcgen::date_time_ymd(2048, 1, 1);
    let made = self_signed(p);
    let cert = dir.write("next.crt", made.cert_pem());
    let key = dir.write("next.key", made.key_pem());
    let text = summary(&ok(&with_files(&cert, &key)));
    assert!(
        text.contains("| not valid before 2048-01-01T00:00:00Z"),
        "{text}"
    );
}
