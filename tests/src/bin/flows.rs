//! `flows`: the connection side of siplb's TCP/TLS benchmark (`bench/streams.sh`). Not part of
//! the product: it is a bin of the test crate, and the appliance image holds `siplb` only.
//!
//! ```text
//! flows serve --cert PEM --key PEM --secs S [--tcp] ADDR...
//!     a SIP server on each ADDR (127.0.0.1:0 picks a port), TLS unless --tcp, that answers
//!     every request (REGISTER, the proxies' OPTIONS probes, ...) with 200 OK on the connection
//!     it came in on; prints `listening ADDR` for each, then `ready`; exits after S seconds.
//! flows hold --to ADDR --ca PEM --name NAME --flows N --secs S [--sources K] [--domain D]
//!     opens N TLS flows to ADDR, each a handshake and one REGISTER (user NNNNN@D) whose 200
//!     came back, then idle; prints `established OK failed F seconds T`, then `holding OK`,
//!     and keeps every flow open until S seconds after its start (or until it is stopped).
//!     With --tcp (and no --ca, --name): the same flows over plain TCP.
//! flows handshakes --to ADDR --ca PEM --name NAME --count N --concurrency C --secs S
//!     N × (connect, full TLS handshake, close_notify, close), C at a time, no resumption;
//!     prints `handshakes ok OK failed F seconds T rate R`; stops starting new ones after S.
//! ```
//!
//! Client sockets are bound to 127.0.0.2 .. 127.0.0.(K+1) in turn (`--sources`, default 200),
//! so ten thousand flows stay far from one source address's ephemeral ports. The soft limit
//! of open files is raised to the hard limit at start. Every loop is bounded by a count and by
//! S seconds; every address given must be a loopback one (the tool refuses others).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// How long one flow's setup (connect, handshake, REGISTER, 200) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest SIP message the tool reads (header block and body).
const MAX_MESSAGE: usize = 64 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = raise_nofile().and_then(|()| {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
        runtime.block_on(run(args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flows: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or_else(usage)?;
    let opts = Opts::parse(rest)?;
    match command.as_str() {
        "serve" => serve(&opts).await,
        "hold" => hold(&opts).await,
        "handshakes" => handshakes(&opts).await,
        _ => Err(usage()),
    }
}

fn usage() -> String {
    "usage: flows serve --cert PEM --key PEM --secs S [--tcp] ADDR... | \
     flows hold --to ADDR (--ca PEM --name NAME | --tcp) --flows N --secs S [--sources K] [--domain D] | \
     flows handshakes --to ADDR --ca PEM --name NAME --count N --concurrency C --secs S"
        .to_string()
}

/// The command line after the subcommand: `--key value` pairs, `--tcp`, and bare addresses.
#[derive(Default)]
struct Opts {
    pairs: Vec<(String, String)>,
    tcp: bool,
    addrs: Vec<SocketAddr>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut opts = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--tcp" {
                opts.tcp = true;
            } else if let Some(key) = a.strip_prefix("--") {
                let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
                opts.pairs.push((key.to_string(), value.clone()));
            } else {
                opts.addrs.push(parse("address", a)?);
            }
        }
        Ok(opts)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn need<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        let v = self.get(key).ok_or_else(|| format!("--{key} is needed"))?;
        parse(key, v)
    }

    fn or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        self.get(key).map_or(Ok(default), |v| parse(key, v))
    }
}

/// The benchmark's traffic stays on the machine.
fn loopback(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!("{addr}: not a loopback address"))
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

/// Raises the soft limit of open files to the hard limit: ten thousand flows need as many
/// descriptors.
fn raise_nofile() -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))
}

// ---------------------------------------------------------------------------------------------
// serve

async fn serve(opts: &Opts) -> Result<(), String> {
    let secs: u64 = opts.need("secs")?;
    let acceptor = if opts.tcp {
        None
    } else {
        let cert: PathBuf = opts.need("cert")?;
        let key: PathBuf = opts.need("key")?;
        Some(tls_acceptor(&cert, &key)?)
    };
    if opts.addrs.is_empty() {
        return Err("serve: no address to listen on".into());
    }
    let mut listeners = Vec::new();
    for addr in &opts.addrs {
        loopback(addr)?;
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot bind {addr}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        println!("listening {local}");
        listeners.push(l);
    }
    println!("ready");
    for l in listeners {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    // Out of descriptors, most likely: let connections close before retrying.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match acceptor {
                        None => answer_all(tcp).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                answer_all(tls).await;
                            }
                        }
                    }
                });
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(())
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Answers every request read from `io` with 200 OK until the peer closes or sends garbage.
async fn answer_all<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let mut buf = Vec::with_capacity(4096);
    while let Some(msg) = read_message(&mut io, &mut buf).await {
        if msg.starts_with(b"SIP/2.0 ") {
            continue;
        }
        let Some(ok) = ok_for(&msg) else { return };
        if io.write_all(&ok).await.is_err() {
            return;
        }
    }
}

/// Reads one SIP message (header block and Content-Length body) from `io`, keeping what follows
/// it in `buf`. Blank lines before a message (keep-alives) are skipped. None at the end of the
/// stream, on an error, or for a message over `MAX_MESSAGE` bytes.
async fn read_message<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        let lead = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        buf.drain(..lead);
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = &buf[..end + 4];
            let body = content_length(head)?;
            let total = end + 4 + body;
            if total > MAX_MESSAGE {
                return None;
            }
            if buf.len() >= total {
                let msg = buf[..total].to_vec();
                buf.drain(..total);
                return Some(msg);
            }
        } else if buf.len() > MAX_MESSAGE {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The header lines of a message's header block (after the start line), as (name, value).
fn headers(head: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    std::str::from_utf8(head)
        .unwrap_or("")
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()))
}

fn content_length(head: &[u8]) -> Option<usize> {
    match headers(head)
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("l"))
    {
        Some((_, v)) => v.parse().ok(),
        None => Some(0),
    }
}

/// 200 OK to a request: its Vias, From, To (with a tag), Call-ID and CSeq copied.
fn ok_for(request: &[u8]) -> Option<Vec<u8>> {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    let mut has_call_id = false;
    for (name, value) in headers(request) {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                has_call_id |= lower == "call-id" || lower == "i";
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            "to" | "t" if value.contains(";tag=") => out.push_str(&format!("{name}: {value}\r\n")),
            "to" | "t" => out.push_str(&format!("{name}: {value};tag=flows\r\n")),
            _ => {}
        }
    }
    if !has_call_id {
        return None;
    }
    out.push_str("Server: siplb-bench-flows\r\nContent-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Clients

struct Client {
    to: SocketAddr,
    /// None: plain TCP.
    tls: Option<(ServerName<'static>, tokio_rustls::TlsConnector)>,
    sources: u32,
}

/// One open flow, held idle.
enum Flow {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Flow {
    /// Closes the connection (the socket goes with the stream).
    fn close(self) {
        match self {
            Flow::Tcp(tcp) => drop(tcp),
            Flow::Tls(tls) => drop(tls),
        }
    }
}

impl Client {
    fn new(opts: &Opts) -> Result<Client, String> {
        let tls = if opts.tcp {
            None
        } else {
            Some(Self::tls(opts)?)
        };
        let to: SocketAddr = opts.need("to")?;
        loopback(&to)?;
        Ok(Client {
            to,
            tls,
            sources: opts.or("sources", 200)?.clamp(1, 250),
        })
    }

    fn tls(opts: &Opts) -> Result<(ServerName<'static>, tokio_rustls::TlsConnector), String> {
        let ca: PathBuf = opts.need("ca")?;
        let name: String = opts.need("name")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // Every connection a full handshake: what a client signing in for the first time costs.
        config.resumption = rustls::client::Resumption::disabled();
        Ok((
            ServerName::try_from(name.clone()).map_err(|_| format!("bad --name {name}"))?,
            tokio_rustls::TlsConnector::from(Arc::new(config)),
        ))
    }

    /// A TCP connection to the target from source address number `i`.
    async fn connect(&self, i: usize) -> std::io::Result<TcpStream> {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i as u32 % self.sources) as u8);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        let tcp = socket.connect(self.to).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn handshake(
        &self,
        i: usize,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let (name, connector) = self.tls.as_ref().ok_or("TLS handshake on a TCP client")?;
        let tcp = self.connect(i).await.map_err(|e| format!("connect: {e}"))?;
        connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    }
}

fn register(i: usize, local: SocketAddr, domain: &str, transport: &str) -> Vec<u8> {
    let upper = transport.to_ascii_uppercase();
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/{upper} {local};branch=z9hG4bK-flows-{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:user{i:05}@{domain}>;tag=flows{i}\r\n\
         To: <sip:user{i:05}@{domain}>\r\n\
         Call-ID: flows-{i}@{local}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:user{i:05}@{local};transport={transport}>\r\n\
         Expires: 3600\r\n\
         User-Agent: siplb-bench-flows\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// One flow: connect (and handshake), REGISTER, its 200; the open stream is returned to be held.
async fn open_flow(client: &Client, i: usize, domain: &str) -> Result<Flow, String> {
    if client.tls.is_none() {
        let mut tcp = client
            .connect(i)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        sign_in(&mut tcp, &register(i, local, domain, "tcp")).await?;
        return Ok(Flow::Tcp(tcp));
    }
    let mut tls = client.handshake(i).await?;
    let local = tls.get_ref().0.local_addr().map_err(|e| e.to_string())?;
    sign_in(&mut tls, &register(i, local, domain, "tls")).await?;
    Ok(Flow::Tls(Box::new(tls)))
}

/// Sends a REGISTER and waits for its 200.
async fn sign_in<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    request: &[u8],
) -> Result<(), String> {
    io.write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let answer = read_message(io, &mut buf)
        .await
        .ok_or("no answer to REGISTER")?;
    if !answer.starts_with(b"SIP/2.0 200 ") {
        let line = answer.split(|b| *b == b'\r').next().unwrap_or_default();
        return Err(format!("answer {}", String::from_utf8_lossy(line)));
    }
    Ok(())
}

async fn hold(opts: &Opts) -> Result<(), String> {
    let start = Instant::now();
    let client = Arc::new(Client::new(opts)?);
    let flows: usize = opts.need("flows")?;
    let secs: u64 = opts.need("secs")?;
    let domain: Arc<str> = opts.or("domain", "contoso.com".to_string())?.into();
    let end = start + Duration::from_secs(secs);
    // Setups in flight at once: enough to keep the proxy busy, few enough for its backlog.
    let gate = Arc::new(Semaphore::new(64));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::with_capacity(flows);
    for i in 0..flows {
        let (client, gate, domain) = (client.clone(), gate.clone(), domain.clone());
        let (failed, first_error) = (failed.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let why =
                match tokio::time::timeout(SETUP_TIMEOUT, open_flow(&client, i, &domain)).await {
                    Ok(Ok(flow)) => return Some(flow),
                    Ok(Err(e)) => e,
                    Err(_) => "setup timed out".to_string(),
                };
            failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = first_error.lock() {
                first.get_or_insert(why);
            }
            None
        }));
    }
    let mut held = Vec::with_capacity(flows);
    for t in tasks {
        let left = end.saturating_duration_since(Instant::now());
        if let Ok(Ok(Some(flow))) = tokio::time::timeout(left, t).await {
            held.push(flow);
        }
    }
    println!(
        "established {} failed {} seconds {:.3}",
        held.len(),
        failed.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    if let Ok(first) = first_error.lock() {
        if let Some(e) = first.as_ref() {
            println!("first error: {e}");
        }
    }
    println!("holding {}", held.len());
    tokio::time::sleep_until(end.into()).await;
    for flow in held {
        flow.close();
    }
    Ok(())
}

async fn handshakes(opts: &Opts) -> Result<(), String> {
    let client = Arc::new(Client::new(opts)?);
    let count: usize = opts.need("count")?;
    let concurrency: usize = opts.need("concurrency")?;
    let secs: u64 = opts.need("secs")?;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, ok, failed) = (client.clone(), next.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let one = async {
                    let mut tls = client.handshake(i).await?;
                    tls.shutdown().await.map_err(|e| format!("close: {e}"))
                };
                match tokio::time::timeout(SETUP_TIMEOUT, one).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let done = ok.load(Ordering::Relaxed);
    println!(
        "handshakes ok {done} failed {} seconds {seconds:.3} rate {:.0}",
        failed.load(Ordering::Relaxed),
        done as f64 / seconds
    );
    Ok(())
}
