//! The siplb binary as a child process.
//!
//! [`Siplb::start`] writes the config to a temporary file, spawns the built binary, reads its
//! stdout until `ready` (with a deadline) and learns the UDP addresses it actually bound from the
//! `listening udp ADDR` lines. stderr (the logs) goes to a file that is printed if the test
//! panics. The child is killed when the [`Siplb`] is dropped: the harness only ever kills what it
//! started.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long siplb may take from spawn to `ready`.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// The siplb binary: `$SIPLB_BIN`, else `siplb` in the profile directory of this test binary
/// (test binaries live in `<target>/<profile>/deps/`).
pub fn siplb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIPLB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is not in <target>/<profile>/deps/");
    let bin = profile_dir.join(format!("siplb{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "siplb binary not found at {}: run `cargo test --workspace` (which builds it) or \
         `cargo build -p siplb` first, or point SIPLB_BIN at it",
        bin.display()
    );
    bin
}

/// A config written to a temporary directory (removed on drop).
pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    pub fn write(text: &str) -> ConfigFile {
        let dir = tempfile::Builder::new()
            .prefix("siplb-e2e-")
            .tempdir()
            .expect("temporary directory");
        let path = dir.path().join("siplb.toml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { dir, path }
    }

    /// A config file laid out by the caller: `path` (a file, or a symlink to one) inside `dir`,
    /// which is removed on drop. For layouts such as a Kubernetes ConfigMap volume.
    pub fn at(dir: TempDir, path: PathBuf) -> ConfigFile {
        ConfigFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the config file lives in (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `siplb ARGS` to completion (for the CLI subcommands).
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(siplb_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run siplb")
}

/// `siplb route --config FILE METHOD AOR`, parsed: the id of the server it names, or the exit
/// status and output when it routes nowhere.
pub fn route_cli(config: &ConfigFile, method: &str, aor: &str) -> Result<RouteAnswer, String> {
    let path = config.path().to_string_lossy().into_owned();
    let out = run_cli(&["route", "--config", &path, method, aor]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "siplb route exited {:?}: stdout {stdout:?} stderr {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    RouteAnswer::parse(&stdout).ok_or_else(|| format!("unexpected siplb route output {stdout:?}"))
}

/// What `siplb route` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    pub route: usize,
    pub home: String,
    pub serving: String,
    pub server_id: String,
    pub server_address: String,
    pub transport: String,
}

impl RouteAnswer {
    fn parse(stdout: &str) -> Option<RouteAnswer> {
        let mut fields: Vec<Vec<&str>> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        fields.retain(|f| !f.is_empty());
        let find = |key: &str| fields.iter().find(|f| f[0] == key).cloned();
        let server = find("server")?;
        Some(RouteAnswer {
            route: find("route")?.get(1)?.parse().ok()?,
            home: find("home")?.get(1)?.to_string(),
            serving: find("serving")?.get(1)?.to_string(),
            server_id: server.get(1)?.to_string(),
            server_address: server.get(2)?.to_string(),
            transport: server.get(3)?.to_string(),
        })
    }
}

/// A running siplb.
pub struct Siplb {
    child: Child,
    udp: Vec<SocketAddr>,
    /// `listening tcp|tls ADDR` lines: (transport, address).
    streams: Vec<(String, SocketAddr)>,
    ops: Option<SocketAddr>,
    config: ConfigFile,
    stderr_path: PathBuf,
}

/// The lines a child prints on its piped stdout, read on a thread so that waiting for one (its
/// `ready`) can have a deadline; the thread goes on draining stdout for as long as the child
/// runs, so the child never blocks on a full pipe.
pub fn stdout_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits up to `within` for `child` to exit; its exit status, or `None` if it is still running
/// then.
pub fn wait_child_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling the child's exit under a deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Siplb {
    /// Starts `siplb --config <file with config_text>` and waits for `ready`.
    pub fn start(config_text: &str) -> Siplb {
        Siplb::start_with_env(config_text, &[])
    }

    /// Like [`Siplb::start`], with extra environment variables (e.g. `SIPLB_ADMIN_TOKEN`).
    pub fn start_with_env(config_text: &str, env: &[(&str, &str)]) -> Siplb {
        Siplb::start_with_file(ConfigFile::write(config_text), env)
    }

    /// Starts `siplb --config <config's path>` with extra environment variables and waits for
    /// `ready`: for a config file the test laid out itself (see [`ConfigFile::at`]).
    pub fn start_with_file(config: ConfigFile, env: &[(&str, &str)]) -> Siplb {
        let config_text = std::fs::read_to_string(config.path()).unwrap_or_default();
        let stderr_path = config.dir().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log file");
        let mut child = Command::new(siplb_bin())
            .arg("--config")
            .arg(config.path())
            .env_remove("SIPLB_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn siplb");

        let rx = stdout_lines(&mut child);

        let mut siplb = Siplb {
            child,
            udp: Vec::new(),
            streams: Vec::new(),
            ops: None,
            config,
            stderr_path,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix("listening ops ") {
                        siplb.ops = addr.trim().parse().ok();
                    }
                    for transport in ["tcp", "tls"] {
                        let prefix = format!("listening {transport} ");
                        if let Some(addr) = line.trim().strip_prefix(prefix.as_str()) {
                            let addr = addr
                                .trim()
                                .parse()
                                .unwrap_or_else(|_| panic!("bad listening line {line:?}"));
                            siplb.streams.push((transport.to_string(), addr));
                        }
                    }
                    if let Some(addr) = line.trim().strip_prefix("listening udp ") {
                        let addr = addr
                            .trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("bad listening line {line:?}"));
                        siplb.udp.push(addr);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: siplb exited (a refused config, say) before `ready`.
                    let reaped = Instant::now() + Duration::from_secs(1);
                    let mut status = None;
                    while status.is_none() && Instant::now() < reaped {
                        status = siplb.child.try_wait().ok().flatten();
                        if status.is_none() {
                            // Polling the child's exit under a deadline.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    panic!(
                        "siplb exited ({status:?}) before printing `ready`\nconfig:\n{config_text}\nstderr:\n{}",
                        siplb.stderr()
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "siplb did not print `ready` within {READY_WITHIN:?} (alive: {})\nconfig:\n{config_text}\nstderr:\n{}",
                    siplb.is_alive(),
                    siplb.stderr()
                ),
            }
        }
        assert!(
            !siplb.udp.is_empty() || !siplb.streams.is_empty(),
            "siplb printed `ready` without a `listening` line"
        );
        siplb
    }

    /// The first UDP address siplb listens on (and advertises, when the config has no
    /// `advertise`).
    pub fn addr(&self) -> SocketAddr {
        self.udp[0]
    }

    /// Every UDP address siplb listens on, in config order.
    pub fn udp(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// The first TCP address siplb listens on (the config must have `[listen] tcp`).
    pub fn tcp(&self) -> SocketAddr {
        self.stream("tcp")
    }

    /// The first TLS address siplb listens on (the config must have `[listen] tls`).
    pub fn tls(&self) -> SocketAddr {
        self.stream("tls")
    }

    fn stream(&self, transport: &str) -> SocketAddr {
        self.streams
            .iter()
            .find(|(t, _)| t == transport)
            .map(|&(_, a)| a)
            .unwrap_or_else(|| panic!("siplb printed no `listening {transport}` line"))
    }

    /// The UDP address siplb listens on for IPv6 (the config must have an IPv6 listener).
    pub fn addr_v6(&self) -> SocketAddr {
        *self
            .udp
            .iter()
            .find(|a| a.is_ipv6())
            .expect("siplb has no IPv6 listener: add \"[::1]:0\" to [listen] udp")
    }

    /// The ops endpoint's address (the config must have `[ops]`, see `Config::ops`).
    pub fn ops(&self) -> SocketAddr {
        self.ops
            .expect("siplb printed no `listening ops` line: is [ops] in the config?")
    }

    /// The process id (for signals such as SIGHUP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file this siplb runs with (for `siplb route` against the same config).
    pub fn config(&self) -> &ConfigFile {
        &self.config
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `INT`, `HUP`) to this siplb with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([format!("-{signal}").as_str(), pid.as_str()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Waits up to `within` for the process to exit; its exit status, or `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        wait_child_exit(&mut self.child, within)
    }

    /// siplb's log output so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Siplb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- siplb stderr (last {} lines) ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
