//! `config`: the config loader on any text — an error list or a config (and a routing table
//! built from it), never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use siplb::config::parse;
use siplb::table::{ConfigHealth, RoutingTable};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_a_device(text) {
        return;
    }
    // Relative certificate and key paths resolve beside the shipped config, so `tls/demo.crt`
    // is read and checked as `siplb check` would.
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml"));
    match parse(path, text) {
        Ok(cfg) => {
            let table = RoutingTable::unbound(&cfg, &ConfigHealth);
            assert!(!table.pools.is_empty(), "a valid config has a pool");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused config names its mistake");
            // Each error reads `path:line: key: message`, its line one of the text's.
            let lines = text.lines().count() + 1;
            let prefix = format!("{}:", path.display());
            for e in &errors {
                let shown = e.to_string();
                let line = shown
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|n| n.parse::<usize>().ok());
                assert!(
                    line.is_some_and(|n| n <= lines),
                    "an error outside the text's {lines} lines: {shown}"
                );
            }
        }
    }
});

/// Validation reads the files a config names (certificates, keys, the branch key); a fuzzed
/// config must not make it read a device such as /dev/zero or /dev/stdin, which never end. TOML
/// escapes could spell such a path too, so a text with escapes is left out with them.
fn names_a_device(text: &str) -> bool {
    ["dev", "proc", "sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
}
