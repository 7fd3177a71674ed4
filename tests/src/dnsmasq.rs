//! A real DNS server for the DNS suite: Debian's `dnsmasq` (`apt-get install dnsmasq-base`,
//! the binary without the system service) on 127.0.0.1 at a free port, serving only the
//! records a test gives it (`--no-resolv --no-hosts`, no config file). Records change by
//! restarting it on the same port with the new ones, as an operator's zone update would.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_udp_port;

/// One DNS record.
#[derive(Debug, Clone)]
pub enum Record {
    /// `name` has the address `ip` (A or AAAA).
    Host(String, String),
    /// An SRV record: `name` is served by `target` at `port`.
    Srv {
        name: String,
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
    },
}

impl Record {
    fn arg(&self) -> String {
        match self {
            Record::Host(name, ip) => format!("--host-record={name},{ip}"),
            Record::Srv {
                name,
                target,
                port,
                priority,
                weight,
            } => format!("--srv-host={name},{target},{port},{priority},{weight}"),
        }
    }
}

/// Starts of dnsmasq tried before giving up.
const ATTEMPTS: usize = 5;

/// The dnsmasq binary, if installed.
pub fn find() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running dnsmasq; killed (by its own pid) when dropped.
pub struct Dnsmasq {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` on a free port of 127.0.0.1; `None` when dnsmasq is not
    /// installed.
    pub fn start(records: &[Record]) -> Option<Dnsmasq> {
        let bin = find()?;
        let mut d = Dnsmasq {
            bin,
            port: free_udp_port(),
            child: None,
        };
        // A port free for UDP may be taken for TCP (dnsmasq binds both): try another.
        for _ in 0..ATTEMPTS {
            match d.spawn(records) {
                Ok(()) => return Some(d),
                Err(why) => {
                    eprintln!("dnsmasq on port {}: {why}; trying another port", d.port);
                    d.port = free_udp_port();
                }
            }
        }
        panic!("dnsmasq did not start in {ATTEMPTS} attempts");
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Serves `records` from now on: stops and starts again on the same port.
    pub fn set(&mut self, records: &[Record]) {
        self.stop();
        // The port was just released; something else may hold it for a moment.
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match self.spawn(records) {
                Ok(()) => return,
                Err(why) => last = why,
            }
        }
        panic!("dnsmasq did not start again on port {}: {last}", self.port);
    }

    /// Stops answering; the port is free once this returns.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts dnsmasq on `self.port` and waits until it holds the port; the reason when it
    /// exits instead.
    fn spawn(&mut self, records: &[Record]) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local-ttl=0",
            &format!("--port={}", self.port),
        ]);
        cmd.args(records.iter().map(Record::arg));
        // dnsmasq writes only its start-up errors there (it logs to syslog, not enabled here).
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start dnsmasq");
        // dnsmasq holds the port once it serves: poll for that, under a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(self.addr()).is_ok() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut why = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut why);
                }
                return Err(format!("exited {status}: {}", why.trim()));
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not bind {}",
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
