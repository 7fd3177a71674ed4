//! A real DNS server for the DNS suite: Debian's `dnsmasq` (`apt-get install dnsmasq-base`,
//! the binary without the system service) on 127.0.0.1 at a free port, serving only the
//! records a test gives it (`--no-resolv --no-hosts`, no config file). Records change by
//! restarting it on the same port with the new ones, as an operator's zone update would.

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
        d.spawn(records);
        Some(d)
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Serves `records` from now on: stops and starts again on the same port.
    pub fn set(&mut self, records: &[Record]) {
        self.stop();
        self.spawn(records);
    }

    /// Stops answering; the port is free once this returns.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, records: &[Record]) {
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
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start dnsmasq");
        self.child = Some(child);
        // dnsmasq holds the port once it serves: poll for that, under a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(self.addr()).is_ok() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("dnsmasq exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not bind {}",
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
