//! Logs: `[log] format = "json"` makes every line siplb writes to stderr one JSON object with a
//! level, a message and its fields; `[log] level` filters; `RUST_LOG` overrides the level.

use std::time::Duration;

use siplb_e2e::backend::{Backend, Behaviour};
use siplb_e2e::config::Config;
use siplb_e2e::http;
use siplb_e2e::process::Siplb;

fn with_log(cfg: &Config, log: &str) -> String {
    format!("{}\n[log]\n{log}\n", cfg.render())
}

/// Waits until siplb has logged a line containing `needle`.
fn wait_log(siplb: &Siplb, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = siplb.stderr();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_transition_fields() {
    let backend = Backend::start("fe-a", Behaviour::Accept);
    let cfg = Config::single_pool(std::slice::from_ref(&backend)).ops();
    let siplb = Siplb::start_with_env(
        &with_log(&cfg, "format = \"json\""),
        &[("SIPLB_ADMIN_TOKEN", "t")],
    );
    let drained = http::post(siplb.ops(), "/admin/servers/fe-a/drain", Some("t"));
    assert_eq!(drained.status, 200, "{drained:?}");
    let log = wait_log(&siplb, "server state changed");
    let mut transition = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
        if v["fields"]["message"] == "server state changed" {
            transition = Some(v);
        }
    }
    let t = transition.expect("the drain was logged");
    assert_eq!(t["level"], "WARN", "{t}");
    assert_eq!(t["fields"]["server"], "fe-a", "{t}");
    assert_eq!(t["fields"]["to"], "drained", "{t}");
    assert_eq!(t["fields"]["reason"], "operator", "{t}");
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colour codes in a log file"
    );
}

#[test]
fn the_level_filters_and_rust_log_overrides_it() {
    let backend = Backend::start("fe-a", Behaviour::Accept);
    let cfg = Config::single_pool(std::slice::from_ref(&backend)).ops();
    // At warn, the info line "siplb ready" is filtered out: once a later warning (a drain) is
    // in the log, the earlier info line would have been too.
    let quiet = Siplb::start_with_env(
        &with_log(&cfg, "level = \"warn\""),
        &[("SIPLB_ADMIN_TOKEN", "t")],
    );
    assert_eq!(
        http::post(quiet.ops(), "/admin/servers/fe-a/drain", Some("t")).status,
        200
    );
    let log = wait_log(&quiet, "server state changed");
    assert!(!log.contains("siplb ready"), "{log}");
    // ...unless RUST_LOG says otherwise.
    let loud = Siplb::start_with_env(&with_log(&cfg, "level = \"warn\""), &[("RUST_LOG", "info")]);
    wait_log(&loud, "siplb ready");
}
