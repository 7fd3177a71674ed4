//! TLS listeners' certificates, against the real binary:
//!
//! - a certificate and key **renewed on disk** (renamed over the old files, or published as a
//!   Kubernetes Secret `..data` symlink swap, twice in a row) reload siplb as a config edit
//!   does, with no change to the config file;
//! - a **broken renewal** (a file that is not PEM, a key of another certificate) is refused like
//!   a broken config: `/status` shows the line, the key and the file, the reload counts as an
//!   error, and repairing the files reloads;
//! - a config edit that moves the files to **another directory** is followed there;
//! - `siplb check` shows a TLS listener's certificate (subject, names, expiry) and refuses an
//!   expired one, naming the line, the key and the file;
//! - with the stream runtime: **the renewed certificate is served to the next connection**
//!   while a connection opened before keeps carrying SIP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::{CertificateDer, ServerName};
use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::process::run_cli;
use siplb_e2e::reload::{replace_by_rename, write_in_place};
use siplb_e2e::request::unique;
use siplb_e2e::sip::Msg;
use siplb_e2e::{Behaviour, Config, ConfigFile, Farm, Route, Siplb};
use tempfile::TempDir;

/// A certificate for 127.0.0.1 and localhost, and its key.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn pair(cn: &str) -> Pair {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate parameters");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().expect("a key pair");
    let cert = params.self_signed(&key).expect("a self-signed certificate");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Where a site keeps its certificate and key.
enum Layout {
    /// `lb.crt` and `lb.key` in a directory of their own.
    Files,
    /// A Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<generation>`.
    Secret,
}

/// The certificate files of a site, in a directory removed on drop.
struct Certs {
    dir: TempDir,
    layout: Layout,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new(layout: Layout, first: &Pair) -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("siplb-e2e-tls-")
            .tempdir()
            .expect("temporary directory");
        let (cert, key) = match layout {
            Layout::Files => (dir.path().join("lb.crt"), dir.path().join("lb.key")),
            Layout::Secret => (dir.path().join("tls.crt"), dir.path().join("tls.key")),
        };
        let certs = Certs {
            dir,
            layout,
            cert,
            key,
        };
        match certs.layout {
            Layout::Files => {
                std::fs::write(&certs.cert, &first.cert_pem).expect("write the certificate");
                std::fs::write(&certs.key, &first.key_pem).expect("write the key");
            }
            Layout::Secret => {
                certs.publish(first);
                symlink("..data/tls.crt", &certs.cert);
                symlink("..data/tls.key", &certs.key);
            }
        }
        certs
    }

    /// Puts `next` in place the way its layout is updated: each file renamed over the old one,
    /// or a new Secret generation swapped in under `..data` (both files at once).
    fn renew(&self, next: &Pair) {
        match self.layout {
            Layout::Files => {
                replace_by_rename(&self.cert, &next.cert_pem);
                replace_by_rename(&self.key, &next.key_pem);
            }
            Layout::Secret => self.publish(next),
        }
    }

    /// Writes `pair` as a new Secret generation and points `..data` at it (a temporary symlink
    /// renamed over `..data`, as the kubelet does).
    fn publish(&self, pair: &Pair) {
        let name = format!("..2026_{}", unique("s"));
        let generation = self.dir.path().join(&name);
        std::fs::create_dir(&generation).expect("create a Secret generation");
        std::fs::write(generation.join("tls.crt"), &pair.cert_pem).expect("write tls.crt");
        std::fs::write(generation.join("tls.key"), &pair.key_pem).expect("write tls.key");
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&name, &tmp);
        std::fs::rename(&tmp, self.dir.path().join("..data")).expect("swap ..data");
    }
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

/// `text` (a rendered config) with a `[listen] tls` entry on 127.0.0.1:`port` naming `certs`.
fn with_tls(text: &str, port: u16, cert: &Path, key: &Path) -> String {
    let line = "udp = [\"127.0.0.1:0\"]";
    assert!(text.contains(line), "no `{line}` in the config:\n{text}");
    text.replacen(
        line,
        &format!(
            "{line}\ntls = [{{ address = \"127.0.0.1:{port}\", cert = \"{}\", key = \"{}\" }}]",
            cert.display(),
            key.display()
        ),
        1,
    )
}

/// One backend behind a siplb with ops and a TLS listener serving `certs`.
struct Site {
    siplb: Siplb,
    ops: Ops,
    tls: SocketAddr,
    farm: Farm,
    text: String,
}

impl Site {
    fn start(certs: &Certs) -> Site {
        let farm = Farm::start("a", 1, Behaviour::Accept);
        let base = Config::new()
            .ops()
            .pool("a", farm.servers())
            .route(Route::to("a"))
            .render();
        // Port 0: siplb binds a free port and says which in its `listening tls` line.
        let text = with_tls(&base, 0, &certs.cert, &certs.key);
        let siplb = Siplb::start(&text);
        let ops = Ops::of(&siplb);
        Site {
            tls: siplb.tls(),
            siplb,
            ops,
            farm,
            text,
        }
    }

    /// `siplb_config_reloads_total{result}` now.
    fn reloads(&self, result: &str) -> f64 {
        self.ops
            .metrics()
            .sum("siplb_config_reloads_total", &[("result", result)])
    }

    fn config_path(&self) -> &Path {
        self.siplb.config().path()
    }
}

// ---------------------------------------------------------------------------------------------
// Renewals reach siplb without a restart

/// Renews `certs` twice; each renewal must be a reload that takes effect (config version 2,
/// then 3) with the config file untouched.
fn each_renewal_reloads(layout: Layout) {
    let certs = Certs::new(layout, &pair("first"));
    let mut site = Site::start(&certs);
    let pid = site.siplb.pid();
    let config_before = std::fs::read(site.config_path()).unwrap();
    for (version, cn) in [(2, "second"), (3, "third")] {
        certs.renew(&pair(cn));
        let status = site.ops.wait_config_version(version);
        assert_eq!(status.last_error(), None, "{}", status.0);
    }
    assert!(site.siplb.is_alive(), "siplb exited");
    assert_eq!(site.siplb.pid(), pid);
    assert_eq!(site.reloads("ok"), 2.0);
    assert_eq!(
        std::fs::read(site.config_path()).unwrap(),
        config_before,
        "the config file was not touched"
    );
}

#[test]
fn a_certificate_renewed_by_rename_reloads_like_a_config_edit() {
    each_renewal_reloads(Layout::Files);
}

#[test]
fn a_kubernetes_secret_swap_reloads_like_a_config_edit() {
    each_renewal_reloads(Layout::Secret);
}

#[test]
fn a_broken_renewal_is_refused_like_a_broken_config_and_the_repair_reloads() {
    let first = pair("first");
    let certs = Certs::new(Layout::Files, &first);
    let site = Site::start(&certs);
    // The TLS entry is on the line after `udp = [...]`.
    let tls_line = site
        .text
        .lines()
        .position(|l| l.starts_with("tls = "))
        .expect("a tls line")
        + 1;

    replace_by_rename(&certs.cert, "this is not a certificate\n");
    let error = site.ops.wait_last_error();
    let expected = format!(
        "{}:{tls_line}: listen.tls[0].cert: {} holds no PEM certificate",
        site.config_path().display(),
        certs.cert.display()
    );
    assert!(
        error.contains(&expected),
        "expected {expected:?} in {error:?}"
    );
    assert_eq!(site.ops.status().config_version(), 1, "nothing changed");
    assert!(site.reloads("error") >= 1.0);

    // A key of another certificate: refused on the key, naming both files. (The key first:
    // the other order would pass through the good pair.)
    let other = pair("other");
    replace_by_rename(&certs.key, &other.key_pem);
    replace_by_rename(&certs.cert, &first.cert_pem);
    let error = site.ops.wait_status("the key refused", |s| {
        s.last_error()
            .is_some_and(|e| e.contains("listen.tls[0].key"))
    });
    let error = error.last_error().unwrap_or_default();
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );
    assert!(error.contains(&certs.cert.display().to_string()), "{error}");
    assert!(error.contains(&certs.key.display().to_string()), "{error}");
    assert_eq!(site.ops.status().config_version(), 1, "nothing changed");

    // The repair: a matching pair again.
    replace_by_rename(&certs.key, &first.key_pem);
    let status = site.ops.wait_config_version(2);
    assert_eq!(status.last_error(), None, "{}", status.0);
}

#[test]
fn files_moved_to_another_directory_by_a_config_edit_are_watched_there() {
    let first = Certs::new(Layout::Files, &pair("first"));
    let site = Site::start(&first);
    let moved = Certs::new(Layout::Files, &pair("moved"));
    let text = site
        .text
        .replace(
            &first.cert.display().to_string(),
            &moved.cert.display().to_string(),
        )
        .replace(
            &first.key.display().to_string(),
            &moved.key.display().to_string(),
        );
    write_in_place(site.config_path(), &text);
    let status = site.ops.wait_config_version(2);
    assert_eq!(status.last_error(), None, "{}", status.0);

    moved.renew(&pair("renewed"));
    let status = site.ops.wait_config_version(3);
    assert_eq!(status.last_error(), None, "{}", status.0);
}

// ---------------------------------------------------------------------------------------------
// siplb check

#[test]
fn check_shows_the_certificate_and_refuses_an_expired_one() {
    let certs = Certs::new(Layout::Files, &pair("sip.contoso.com"));
    let base = Config::new()
        .pool("a", Farm::start("a", 1, Behaviour::Accept).servers())
        .route(Route::to("a"))
        .render();
    let config = ConfigFile::write(&with_tls(&base, 5061, &certs.cert, &certs.key));
    let path = config.path().display().to_string();
    let out = run_cli(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        format!("tls       127.0.0.1:5061  cert {}", certs.cert.display()),
        "subject CN=sip.contoso.com | SANs IP:127.0.0.1, DNS:localhost | expires ".to_string(),
    ] {
        assert!(stdout.contains(&needle), "{needle:?} not in:\n{stdout}");
    }

    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let expired = params.self_signed(&key).unwrap();
    std::fs::write(&certs.cert, expired.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    let out = run_cli(&["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "{path}:3: listen.tls[0].cert: the certificate in {} ",
        certs.cert.display()
    );
    assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    assert!(
        stderr.contains("expired on 2021-01-01T00:00:00Z"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// What a client sees (needs the stream runtime, which serves [listen] tls)

/// A TLS client trusting only `trusted`.
fn client(trusted: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("a trust anchor");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A handshake with `addr` trusting only `trusted`; the error says why it failed.
fn connect(addr: SocketAddr, trusted: &CertificateDer<'static>) -> Result<Tls, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let name = ServerName::from(addr.ip());
    let conn = ClientConnection::new(client(trusted), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
    }
    Ok(tls)
}

/// The leaf certificate the server sent.
fn served(tls: &Tls) -> CertificateDer<'static> {
    tls.conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
}

/// Sends a REGISTER of `aor` down `tls` and reads the answer.
fn register(tls: &mut Tls, aor: &str) -> Msg {
    let local = tls.sock.local_addr().expect("local address");
    let request = format!(
        "REGISTER sip:contoso.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};rport;branch={}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{aor}>;tag={}\r\n\
         To: <sip:{aor}>\r\n\
         Call-ID: {}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{local};transport=tls>\r\n\
         Expires: 3600\r\n\
         Content-Length: 0\r\n\r\n",
        unique("z9hG4bK"),
        unique("t"),
        unique("c"),
    );
    tls.write_all(request.as_bytes()).expect("send REGISTER");
    tls.flush().expect("send REGISTER");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let msg = Msg::must_parse(&got[..end + 4]);
            let body: usize = msg
                .header("Content-Length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + body {
                return Msg::must_parse(&got[..end + 4 + body]);
            }
        }
        let n = tls.read(&mut buf).expect("read the answer to REGISTER");
        assert!(
            n > 0,
            "siplb closed the connection before answering REGISTER {aor}"
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_certificate_renewed_on_disk_is_served_to_the_next_connection() {
    let (a, b) = (pair("a"), pair("b"));
    let certs = Certs::new(Layout::Files, &a);
    let site = Site::start(&certs);
    let mut before = wait_until("a TLS handshake with siplb", SHOWS_WITHIN, || {
        connect(site.tls, &a.der)
    });
    assert_eq!(served(&before), a.der);
    let answer = register(&mut before, "alice@contoso.com");
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_eq!(site.farm.backends[0].count_method("REGISTER"), 1);

    certs.renew(&b);
    site.ops.wait_config_version(2);
    let mut after = wait_until(
        "a handshake that gets the renewed certificate",
        SHOWS_WITHIN,
        || {
            let tls = connect(site.tls, &b.der)?;
            if served(&tls) == b.der {
                Ok(tls)
            } else {
                Err("the old certificate".to_string())
            }
        },
    );
    let answer = register(&mut after, "bob@contoso.com");
    assert_eq!(answer.status(), Some(200), "{answer:?}");

    // The connection opened before the renewal goes on with its session.
    assert_eq!(served(&before), a.der);
    let answer = register(&mut before, "alice@contoso.com");
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_eq!(site.farm.backends[0].count_method("REGISTER"), 3);
}
