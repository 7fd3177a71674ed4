//! `siplb demo`: the shipped `config.toml` brought to life on loopback.
//!
//! Every server of the built-in config becomes a small SIP responder (it answers each request
//! with `200 OK` and names itself in a `Server` header), the proxy starts in front of them, and
//! a demo client signs users in through it to show what siplb does: each user sticks to one
//! server of its home pool, and when a server is taken out of the routing table (a table swap,
//! as a health change or an operator's drain makes) only that server's users move, spread over
//! the others, and come back when it returns. The proxy then keeps running for sipp or any SIP
//! client until Ctrl-C.
//!
//! The shipped config has a TLS listener on 127.0.0.1:5061 naming `tls/demo.crt` and
//! `tls/demo.key`; the demo does not use the repository's public demo pair but writes the config
//! into a directory of its own with a certificate made at start, and checks with a handshake
//! that the listener serves it before saying `listening tls ADDR`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::CertificateDer;
use tokio::net::UdpSocket;

use crate::config::{self, Config};
use crate::core::explain;
use crate::health::Op;
use crate::server::{Listeners, Proxy};
use crate::sip::scan::{header_lines, scan};

/// The shipped configuration, built in so the demo runs from anywhere.
pub(crate) const CONFIG: &str = include_str!("../../config.toml");

/// Answers every request with 200 OK naming `id`; forever.
async fn responder(socket: UdpSocket, id: String) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let msg = &buf[..n];
        let Ok(m) = scan(msg) else { continue };
        if !m.is_request() || m.method(msg) == Some(b"ACK") {
            continue;
        }
        let mut out = b"SIP/2.0 200 OK\r\n".to_vec();
        for (name, value) in header_lines(msg, &m) {
            let name = name.of(msg);
            let copy = ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"];
            if copy.iter().any(|c| name.eq_ignore_ascii_case(c.as_bytes())) {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.of(msg));
                if name.eq_ignore_ascii_case(b"to") || name.eq_ignore_ascii_case(b"t") {
                    out.extend_from_slice(b";tag=");
                    out.extend_from_slice(id.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        let _ = write!(out, "Server: {id}\r\nContent-Length: 0\r\n\r\n");
        let _ = socket.send_to(&out, from).await;
    }
}

/// Sends `request` to the proxy and returns the `Server` header of its answer (an answer to an
/// earlier request that timed out is skipped: the Call-ID must be this request's).
async fn ask(client: &UdpSocket, proxy: SocketAddr, request: &str) -> Option<String> {
    let call_id = header(request.as_bytes(), b"call-id")?;
    client.send_to(request.as_bytes(), proxy).await.ok()?;
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, client.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let msg = &buf[..n];
        if header(msg, b"call-id").as_deref() == Some(call_id.as_str()) {
            return header(msg, b"server");
        }
    }
}

/// The value of a message's header `wanted` (as written, any case).
fn header(msg: &[u8], wanted: &[u8]) -> Option<String> {
    let m = scan(msg).ok()?;
    let (_, value) = header_lines(msg, &m)
        .into_iter()
        .find(|(name, _)| name.of(msg).eq_ignore_ascii_case(wanted))?;
    Some(String::from_utf8_lossy(value.of(msg)).into_owned())
}

/// Signs every user in; returns user → server id.
async fn sign_in(
    client: &UdpSocket,
    proxy: SocketAddr,
    users: &[String],
    round: u32,
) -> BTreeMap<String, String> {
    let sent_by = client
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut placed = BTreeMap::new();
    for (i, user) in users.iter().enumerate() {
        let call_id = format!("demo-{round}-{i}");
        let req = explain::request("REGISTER", user, &call_id, round, &sent_by);
        let server = ask(client, proxy, &req)
            .await
            .unwrap_or_else(|| "no answer".into());
        placed.insert(user.clone(), server);
    }
    placed
}

fn say(out: &mut impl std::io::Write, what: &str) -> std::io::Result<()> {
    writeln!(out, "   [operator] {what}")
}

/// Where the demo keeps the built-in config and the certificate it makes for its TLS listener:
/// a directory of its own under the system's temporary directory, removed when the demo ends.
struct DemoDir {
    path: PathBuf,
}

impl DemoDir {
    /// Writes the built-in config as `config.toml` and a fresh self-signed certificate for
    /// 127.0.0.1 and localhost as `tls/demo.crt` and `tls/demo.key`, the files its
    /// `[listen] tls` entry names (relative to the config). Returns the certificate too.
    fn create() -> anyhow::Result<(DemoDir, CertificateDer<'static>)> {
        let path = std::env::temp_dir().join(format!("siplb-demo-{}", std::process::id()));
        let dir = DemoDir { path };
        let tls = dir.path.join("tls");
        std::fs::create_dir_all(&tls)
            .with_context(|| format!("cannot create {}", tls.display()))?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "siplb demo (made for this run)");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_private(&tls.join("demo.key"), key.serialize_pem().as_bytes())?;
        std::fs::write(tls.join("demo.crt"), cert.pem())
            .with_context(|| format!("cannot write {}", tls.display()))?;
        std::fs::write(dir.config(), CONFIG)
            .with_context(|| format!("cannot write {}", dir.config().display()))?;
        Ok((dir, cert.der().clone()))
    }

    fn config(&self) -> PathBuf {
        self.path.join("config.toml")
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the demo until Ctrl-C.
pub(crate) fn run() -> anyhow::Result<std::process::ExitCode> {
    let (dir, cert) = DemoDir::create()?;
    let cfg: Config = config::load(&dir.config()).map_err(|errors| {
        anyhow::anyhow!(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"))
    })?;
    crate::logging::init(&cfg.log);
    let runtime = crate::runtime(cfg.listen.workers)?;
    runtime.block_on(demo(cfg, cert))?;
    drop(dir);
    Ok(std::process::ExitCode::SUCCESS)
}

/// A TLS client that trusts the demo's certificate.
fn tls_client(cert: &CertificateDer<'static>) -> Option<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).ok()?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?;
    Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config.with_root_certificates(roots).with_no_client_auth(),
    )))
}

/// Signs one user in over a TLS connection of its own, as a Lync client does; returns the
/// server that answered.
async fn sign_in_tls(
    client: &tokio_rustls::TlsConnector,
    to: SocketAddr,
    user: &str,
    call_id: &str,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(to).await.ok()?;
    let sent_by = tcp.local_addr().ok()?.to_string();
    let mut tls = client
        .connect(rustls_pki_types::ServerName::from(to.ip()), tcp)
        .await
        .ok()?;
    let req = explain::request("REGISTER", user, call_id, 1, &sent_by).replacen(
        "SIP/2.0/UDP",
        "SIP/2.0/TLS",
        1,
    );
    tls.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16_384 {
        let n = tls.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    header(&buf, b"server")
}

/// Says where TLS is served: `listening tls ADDR` for each `[listen] tls` address that
/// completes a handshake with the demo's certificate, and why for one that does not.
async fn show_tls(out: &mut impl std::io::Write, cfg: &Config, cert: &CertificateDer<'static>) {
    let Some(client) = tls_client(cert) else {
        return;
    };
    for entry in &cfg.listen.tls {
        let addr = entry.address;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::from(addr.ip());
            client.connect(name, tcp).await
        };
        let line = match tokio::time::timeout(Duration::from_secs(2), handshake).await {
            Ok(Ok(_)) => format!(
                "listening tls {addr} (a self-signed certificate made for this run: {})",
                entry.cert.display()
            ),
            Ok(Err(e)) => format!("tls {addr}: no TLS handshake ({e})"),
            Err(_) => format!("tls {addr}: no TLS handshake within 2s"),
        };
        let _ = writeln!(out, "{line}");
    }
}

async fn demo(cfg: Config, cert: CertificateDer<'static>) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    for pool in &cfg.pools {
        for s in &pool.servers {
            let socket = UdpSocket::bind(s.address)
                .await
                .with_context(|| format!("demo server {} cannot bind {}", s.id, s.address))?;
            tokio::spawn(responder(socket, s.id.clone()));
        }
    }
    let metrics = crate::stats::install_metrics()?;
    // A one-off admin token, so the status page and the admin API can be tried while the demo
    // runs.
    let token = crate::token::Token::fixed(&format!(
        "demo-{:x}",
        crate::hrw::key_hash(
            format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes()
        )
    ));
    let listeners = Listeners::bind(&cfg)?;
    let tls_cfg = cfg.clone();
    let proxy = Proxy::start(cfg, listeners, token, true, crate::shutdown_signal())?;
    let addr = proxy.udp()[0];
    let ops = crate::ops::Ops {
        proxy: proxy.clone(),
        metrics: Some(metrics),
    };
    let ops_addr = crate::ops::start(ops).await?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    let t = proxy.tables.load_full();
    writeln!(
        out,
        "siplb demo: proxy on udp {addr}, advertising {}",
        t.advertise
    )?;
    show_tls(&mut out, &tls_cfg, &cert).await;
    for p in &t.pools {
        let servers: Vec<String> = p
            .servers
            .iter()
            .map(|s| format!("{} {}", s.id, s.address))
            .collect();
        let pair = p.pair.map(|i| t.pools[i].name.as_str()).unwrap_or("none");
        writeln!(
            out,
            "  pool {:<8} {:<10} pair {:<8} servers: {}",
            p.name,
            p.role.as_str(),
            pair,
            servers.join(", ")
        )?;
    }

    let users: Vec<String> = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
        "mallory", "oscar",
    ]
    .iter()
    .map(|u| format!("{u}@contoso.com"))
    .collect();
    writeln!(
        out,
        "\n1. Each user signs in (REGISTER) through siplb and lands on one server:"
    )?;
    let home = sign_in(&client, addr, &users, 1).await;
    for (u, s) in &home {
        writeln!(out, "   {u:<24} -> {s}")?;
    }
    let again = sign_in(&client, addr, &users, 2).await;
    let same = home
        .iter()
        .filter(|(u, s)| again.get(*u) == Some(s))
        .count();
    writeln!(
        out,
        "\n2. They sign in again: {same} of {} reach the same server (stickiness).",
        users.len()
    )?;
    if let (Some(client), Some(entry)) = (tls_client(&cert), tls_cfg.listen.tls.first()) {
        let mut over_tls = 0;
        for (i, user) in users.iter().enumerate() {
            let call_id = format!("demo-tls-{i}");
            let answered = tokio::time::timeout(
                Duration::from_secs(2),
                sign_in_tls(&client, entry.address, user, &call_id),
            )
            .await
            .ok()
            .flatten();
            if answered.is_some() && answered.as_ref() == home.get(user) {
                over_tls += 1;
            }
        }
        writeln!(
            out,
            "   Over TLS ({}), one connection per user as Lync clients hold: {over_tls} of {} \
             reach the same server as over UDP.",
            entry.address,
            users.len()
        )?;
    }

    // Take out the server with the most users, so the move is easy to see.
    let mut load: BTreeMap<&String, usize> = BTreeMap::new();
    for s in home.values() {
        *load.entry(s).or_default() += 1;
    }
    let victim = load
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| (*s).clone())
        .unwrap_or_default();
    say(
        &mut out,
        &proxy.control.op(Op::Drain(victim.clone())).await?,
    )?;
    let moved = sign_in(&client, addr, &users, 3).await;
    writeln!(
        out,
        "\n3. An operator drains {victim} (a new routing table is swapped in):"
    )?;
    for (u, s) in &moved {
        let before = &home[u];
        if before != s {
            writeln!(out, "   {u:<24} {before} -> {s}")?;
        }
    }
    let others_moved = home
        .iter()
        .filter(|(u, s)| **s != victim && moved.get(*u) != Some(s))
        .count();
    writeln!(
        out,
        "   only {victim}'s users moved ({others_moved} others did)."
    )?;
    say(
        &mut out,
        &proxy.control.op(Op::Undrain(victim.clone())).await?,
    )?;
    let back = sign_in(&client, addr, &users, 4).await;
    let home_again = home.iter().filter(|(u, s)| back.get(*u) == Some(s)).count();
    writeln!(
        out,
        "   undrained: {home_again} of {} users are on their original server again.",
        users.len()
    )?;

    let pool = t
        .pools
        .iter()
        .find(|p| p.pair.is_some())
        .map(|p| p.name.clone())
        .unwrap_or_default();
    writeln!(
        out,
        "\n4. An operator fails pool {pool} over to its pair (Invoke-CsPoolFailOver):"
    )?;
    say(
        &mut out,
        &proxy.control.op(Op::Failover(pool.clone())).await?,
    )?;
    let failed_over = sign_in(&client, addr, &users, 5).await;
    for (u, s) in &failed_over {
        if &home[u] != s {
            writeln!(out, "   {u:<24} {} -> {s}", home[u])?;
        }
    }
    say(
        &mut out,
        &proxy.control.op(Op::Failback(pool.clone())).await?,
    )?;
    let after = sign_in(&client, addr, &users, 6).await;
    let home_again = home
        .iter()
        .filter(|(u, s)| after.get(*u) == Some(s))
        .count();
    writeln!(
        out,
        "   failed back: {home_again} of {} users are home, on the server they had.",
        users.len()
    )?;
    writeln!(
        out,
        "\n   Health probes (SIP OPTIONS) run all along: stop a server and its users move within\n   fall x interval + timeout; stop a whole pool and its users are served by the pair."
    )?;
    writeln!(
        out,
        "\nsiplb keeps routing on udp {addr}. Try:\n  siplb route --config config.toml REGISTER sip:you@contoso.com\n  sipp {addr} -sn uac -m 10   (any SIP client works; Ctrl-C stops the demo)"
    )?;
    if let (Some(ops), Some(secret)) = (ops_addr, proxy.token().secret()) {
        writeln!(
            out,
            "  http://{ops}/ (status page), http://{ops}/status, http://{ops}/metrics\n  curl -X POST -H 'Authorization: Bearer {secret}' http://{ops}/admin/pools/fe-dc1/failover"
        )?;
    }
    out.flush()?;
    proxy.stopped().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_demo_says_listening_tls_only_for_a_listener_that_serves_its_certificate() {
        let (dir, cert) = DemoDir::create().unwrap();
        let cfg = config::load(&dir.config()).unwrap();
        let entry = cfg.listen.tls[0].clone();
        assert_eq!(entry.address, "127.0.0.1:5061".parse().unwrap());
        assert!(
            entry.cert.starts_with(&dir.path),
            "{}",
            entry.cert.display()
        );

        // The listener the demo's config names, served on a free port by the listener side.
        let tls = crate::tls::server::ListenerTls::load(&entry).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut [0u8; 1]).await;
                    }
                });
            }
        });
        let mut served = cfg.clone();
        served.listen.tls[0].address = addr;
        let mut out = Vec::new();
        show_tls(&mut out, &served, &cert).await;
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(&format!("listening tls {addr} (a self-signed certificate")),
            "{out}"
        );

        // Nothing there: no `listening` line.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        served.listen.tls[0].address = closed.local_addr().unwrap();
        drop(closed);
        let mut out = Vec::new();
        show_tls(&mut out, &served, &cert).await;
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("no TLS handshake"), "{out}");
        assert!(!out.contains("listening"), "{out}");

        let path = dir.path.clone();
        drop(dir);
        assert!(!path.exists(), "the demo's directory is removed");
    }
}
