//! Headless Chromium, to load a page the way a person's browser does: `--dump-dom` prints the
//! DOM after the page loaded, `--screenshot` renders it to a PNG.
//!
//! Chromium runs as root here, so without its sandbox, with a fresh profile directory, and with
//! everything that would reach the network on its own (updates, sync, QUIC) turned off. Every
//! run is bounded: a Chromium that has not finished by the deadline is killed (by its own pid)
//! and the test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take.
const RUN_WITHIN: Duration = Duration::from_secs(45);

/// The Chromium binary, or a failure that says how to install it.
pub fn find() -> PathBuf {
    let bin = PathBuf::from(CHROMIUM);
    assert!(
        bin.is_file(),
        "{CHROMIUM} is missing: this suite needs Chromium. Install it with \
         `apt-get install -y chromium` (Debian), then run it with --ignored"
    );
    bin
}

/// The DOM of `url` after it loaded, as Chromium serialises it.
pub fn dump_dom(url: &str) -> String {
    let work = tempfile::tempdir().expect("temporary directory");
    let out = work.path().join("dom.html");
    run(
        work.path(),
        &["--dump-dom".to_string(), url.to_string()],
        &out,
    );
    std::fs::read_to_string(&out).unwrap_or_default()
}

/// The DOM of `url` once the page has run its own timers for `budget` of Chromium's virtual
/// time (`--virtual-time-budget`: virtual time waits for the page's fetches), so a page that
/// refreshes itself has refreshed by the time it is dumped.
pub fn dump_dom_after(url: &str, budget: Duration) -> String {
    let work = tempfile::tempdir().expect("temporary directory");
    let out = work.path().join("dom.html");
    run(
        work.path(),
        &[
            format!("--virtual-time-budget={}", budget.as_millis()),
            "--dump-dom".to_string(),
            url.to_string(),
        ],
        &out,
    );
    std::fs::read_to_string(&out).unwrap_or_default()
}

/// Renders `url` in a `width`×`height` window to the PNG file `png`.
pub fn screenshot(url: &str, png: &Path, width: u32, height: u32) {
    let work = tempfile::tempdir().expect("temporary directory");
    let out = work.path().join("screenshot.out");
    run(
        work.path(),
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
            url.to_string(),
        ],
        &out,
    );
    assert!(
        png.is_file(),
        "Chromium wrote no screenshot to {}: {}",
        png.display(),
        std::fs::read_to_string(&out).unwrap_or_default()
    );
}

/// Runs Chromium with `args` and a fresh profile under `work`, stdout to `stdout`.
fn run(work: &Path, args: &[String], stdout: &Path) {
    let bin = find();
    let profile = work.join("profile");
    let stderr_path = work.join("chromium.err");
    let mut child = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(stdout).expect("Chromium stdout file"))
        .stderr(File::create(&stderr_path).expect("Chromium stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let deadline = Instant::now() + RUN_WITHIN;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                // Polling the child's exit under a deadline.
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "Chromium {args:?} did not finish within {RUN_WITHIN:?}:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    };
    assert!(
        status.success(),
        "Chromium {args:?} exited {status}:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
}
