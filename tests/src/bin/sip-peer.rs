//! `sip-peer`: the harness's SIP peers as a program, for tests that run peers where a thread of
//! the test cannot be — inside a network namespace, started with `ip netns exec`.
//!
//! ```text
//! sip-peer serve ID ADDR SECS
//!     a server (siplb_e2e::Backend) bound to ADDR that answers REGISTER and OPTIONS with 200;
//!     prints `ready ADDR`, then `request METHOD AOR` for every request it receives (probes
//!     left out); exits after SECS.
//! sip-peer load TO BIND USERS RATE SECS
//!     a client (siplb_e2e::load::Load) bound to BIND that registers user00000@contoso.com ..
//!     (USERS of them, in turn) through TO at RATE per second for SECS, or until its stdin is
//!     closed; prints `ready`, then at the end `lost MS AOR` for every request without an
//!     answer and `refused MS AOR STATUS` for every answer but 200 (MS after the start), and
//!     `done SENT ANSWERED`.
//! ```
//!
//! Everything is bounded by SECS; output is one line per event, flushed as it happens.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use siplb_e2e::backend::is_probe;
use siplb_e2e::farm::users;
use siplb_e2e::load::Load;
use siplb_e2e::{Backend, Behaviour};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["serve", id, addr, secs] => serve(id, addr, secs),
        ["load", to, bind, n, rate, secs] => load(to, bind, n, rate, secs),
        _ => Err(
            "usage: sip-peer serve ID ADDR SECS | sip-peer load TO BIND USERS RATE SECS"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sip-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

fn serve(id: &str, addr: &str, secs: &str) -> Result<(), String> {
    let addr: SocketAddr = parse("address", addr)?;
    let until = Instant::now() + Duration::from_secs(parse("seconds", secs)?);
    let backend = Backend::start_on(id, Behaviour::Accept, addr)
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    println!("ready {}", backend.addr());
    let mut seen = 0;
    while Instant::now() < until {
        let new = backend.wait_received_after(seen, Duration::from_millis(100));
        seen += new.len();
        for d in new.iter().filter(|d| !is_probe(&d.bytes)) {
            let Some(m) = d.msg() else { continue };
            println!(
                "request {} {}",
                m.method().unwrap_or("-"),
                m.default_key().unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}

fn load(to: &str, bind: &str, n: &str, rate: &str, secs: &str) -> Result<(), String> {
    let to: SocketAddr = parse("address", to)?;
    let bind: SocketAddr = parse("address", bind)?;
    let run = Duration::from_secs(parse("seconds", secs)?);
    let load = Load::start(
        bind,
        to,
        users(parse("user count", n)?, "contoso.com"),
        parse("rate", rate)?,
        run,
    );
    println!("ready");
    // The run ends at its deadline, or earlier when whoever started us closes our stdin.
    let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    let left = (load.started() + run).saturating_duration_since(Instant::now());
    let _ = closed.recv_timeout(left);
    let started = load.started();
    let records = load.stop();
    let answered = records.iter().filter(|s| s.answered()).count();
    for s in &records {
        let ms = s.at.duration_since(started).as_millis();
        match s.status() {
            None => println!("lost {ms} {}", s.aor),
            Some(200) => {}
            Some(code) => println!("refused {ms} {} {code}", s.aor),
        }
    }
    println!("done {} {}", records.len(), answered);
    Ok(())
}
