//! The command line contract of the `siplb` binary (DESIGN.md "Command line contract"):
//! `siplb check` validates a config (exit 0 and a summary, or every error as
//! `path:line: key: message` and exit 1), and `siplb route` says where a request would go.
//!
//! Being an integration test of the `siplb` package, this file also makes `cargo test
//! --workspace` build the binary the end-to-end suite (`tests/`) runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn siplb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_siplb"))
        .args(args)
        .output()
        .expect("run siplb")
}

/// stdout and stderr together, for messages whose stream the contract does not fix.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A config file in a fresh temporary directory (kept alive by the returned guard).
fn write_config(name: &str, text: &str) -> (tempdir::Guard, PathBuf) {
    let guard = tempdir::Guard::new(name);
    let path = guard.0.join("siplb.toml");
    std::fs::write(&path, text).expect("write config");
    (guard, path)
}

/// A minimal self-cleaning temporary directory (no dev-dependency needed).
mod tempdir {
    use std::path::PathBuf;

    pub struct Guard(pub PathBuf);

    impl Guard {
        pub fn new(name: &str) -> Guard {
            let dir = std::env::temp_dir().join(format!("siplb-cli-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temporary directory");
            Guard(dir)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn check_accepts_the_example_config_and_prints_a_summary() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let out = siplb(&["check", "--config", &arg(&example)]);
    assert!(out.status.success(), "siplb check failed:\n{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "siplb check printed no summary"
    );
}

const GOOD: &str = r#"[listen]
udp = ["127.0.0.1:0"]

[[pool]]
name = "fe"
role = "front-end"
servers = [ { id = "fe1", address = "127.0.0.1:5071", transport = "udp" } ]
"#;

/// `siplb check` of `config` (written as `name`): asserts it fails with status 1, and returns
/// its error line for line `line_no` of the file.
fn check_error_at(name: &str, config: &str, line_no: usize) -> String {
    let (_dir, path) = write_config(name, config);
    let out = siplb(&["check", "--config", &arg(&path)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    let at = format!("{}:{line_no}: ", path.display());
    all.lines()
        .find(|l| l.starts_with(&at))
        .unwrap_or_else(|| panic!("no `{at}` error in:\n{all}"))
        .to_string()
}

#[test]
fn check_names_the_line_and_key_of_an_unknown_key() {
    // Line 8 holds the unknown key.
    let line = check_error_at("unknown-key", &format!("{GOOD}colour = \"blue\"\n"), 8);
    assert!(
        line.contains("colour"),
        "the error does not name the key: {line}"
    );
}

#[test]
fn check_names_the_line_and_key_of_a_route_to_an_unknown_pool() {
    // Line 10 names a pool that does not exist.
    let config = format!("{GOOD}\n[[route]]\npool = \"nope\"\n");
    let line = check_error_at("unknown-pool", &config, 10);
    assert!(
        line.contains("route[0].pool"),
        "the error does not name the key: {line}"
    );
}

/// `siplb route` output as (key, rest of the line) pairs.
fn fields(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?.to_string();
            Some((key, words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

fn field(out: &Output, key: &str) -> String {
    fields(out)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{}", text(out)))
}

#[test]
fn route_prints_route_home_serving_and_server() {
    let config = format!(
        "{GOOD}\n[[pool]]\nname = \"fab\"\nrole = \"front-end\"\nservers = [ {{ id = \"fab1\", address = \"127.0.0.1:5081\" }} ]\n\n[[route]]\ndomain = \"fabrikam.com\"\npool = \"fab\"\n\n[[route]]\npool = \"fe\"\n"
    );
    let (_dir, path) = write_config("route", &config);

    let out = siplb(&[
        "route",
        "--config",
        &arg(&path),
        "REGISTER",
        "sip:alice@contoso.com",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(field(&out, "route"), "1");
    assert_eq!(field(&out, "home"), "fe");
    assert_eq!(field(&out, "serving"), "fe");
    assert_eq!(field(&out, "server"), "fe1 127.0.0.1:5071 udp");

    let out = siplb(&[
        "route",
        "--config",
        &arg(&path),
        "REGISTER",
        "sip:bob@fabrikam.com",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(field(&out, "route"), "0");
    assert_eq!(field(&out, "home"), "fab");
    assert_eq!(field(&out, "server"), "fab1 127.0.0.1:5081 udp");
}

#[test]
fn route_exits_1_when_nothing_routes() {
    let config = format!("{GOOD}\n[[route]]\ndomain = \"contoso.com\"\npool = \"fe\"\n");
    let (_dir, path) = write_config("no-route", &config);
    let out = siplb(&[
        "route",
        "--config",
        &arg(&path),
        "REGISTER",
        "sip:bob@fabrikam.com",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "no error message"
    );
}

#[test]
fn check_refuses_a_server_whose_address_family_has_no_udp_listener() {
    // Line 7: an IPv6 server, and [listen] udp has only an IPv4 address.
    let config = GOOD.replace("127.0.0.1:5071", "[::1]:5071");
    let (_dir, path) = write_config("family", &config);
    let out = siplb(&["check", "--config", &arg(&path)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    let line = all
        .lines()
        .find(|l| l.starts_with(&format!("{}:7: ", path.display())))
        .unwrap_or_else(|| panic!("no `{}:7: ` error in:\n{all}", path.display()));
    for says in [
        "pool[0].servers[0].address",
        "\"fe1\"",
        "IPv6",
        "[listen] udp",
    ] {
        assert!(line.contains(says), "the error does not say {says}: {line}");
    }

    // With an IPv6 listener too, the same server is accepted.
    let both = config.replace(
        "udp = [\"127.0.0.1:0\"]",
        "udp = [\"127.0.0.1:0\", \"[::1]:0\"]",
    ) + "\n[[route]]\npool = \"fe\"\n";
    let (_dir, path) = write_config("family-ok", &both);
    let out = siplb(&["check", "--config", &arg(&path)]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A running siplb (killed on drop) started from `path`, once it printed `ready`.
struct Running(std::process::Child);

impl Running {
    fn start(path: &Path) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_siplb"))
            .args(["--config", &arg(path)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start siplb");
        let stdout = child.stdout.take().expect("siplb's stdout");
        let ready = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "ready");
        let running = Running(child);
        assert!(ready, "siplb ended without printing ready");
        running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn healthcheck_asks_the_ops_endpoint_the_config_names_and_exits_by_its_answer() {
    // A port free a moment ago for the ops endpoint (the config must name it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config =
        format!("[ops]\nlisten = \"0.0.0.0:{port}\"\n\n{GOOD}\n[[route]]\npool = \"fe\"\n");
    let (_dir, path) = write_config("healthcheck", &config);
    let _siplb = Running::start(&path);

    // From the config: 0.0.0.0 is asked on 127.0.0.1.
    let out = siplb(&["healthcheck", "--config", &arg(&path)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("http://127.0.0.1:{port}/healthz: 200")),
        "{}",
        text(&out)
    );

    // A URL: a path that is not there answers 404, and that is a failure.
    let out = siplb(&[
        "healthcheck",
        "--url",
        &format!("http://127.0.0.1:{port}/nothing-here"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(": 404"), "{}", text(&out));
}

#[test]
fn healthcheck_fails_with_a_reason_when_nothing_answers_or_ops_is_off() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let out = siplb(&[
        "healthcheck",
        "--url",
        &format!("http://{closed}/healthz"),
        "--timeout",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot connect"), "{}", text(&out));

    let config = format!("{GOOD}\n[[route]]\npool = \"fe\"\n");
    let (_dir, path) = write_config("healthcheck-off", &config);
    let out = siplb(&["healthcheck", "--config", &arg(&path)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("[ops] listen is off"), "{}", text(&out));
}
