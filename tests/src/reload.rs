//! The ways a new config reaches a running siplb, done as operators and platforms do them:
//!
//! - an editor or `cat >` writing the file **in place** (same inode, truncated and rewritten);
//! - a deploy tool writing a temporary file next to it and **renaming** it over the file;
//! - a Kubernetes **ConfigMap** volume: `siplb.toml -> ..data/siplb.toml`, `..data ->
//!   ..<timestamp>`, updated by pointing a fresh `..data` symlink at a new directory and renaming
//!   it over the old one (what the kubelet's atomic writer does);
//! - **SIGHUP**.
//!
//! Also small edits of a rendered config for what the [`Config`](crate::config::Config) builder
//! does not write, and a mark on a farm's traffic, so one run of users can be told from the next.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::farm::Farm;
use crate::process::ConfigFile;
use crate::request::unique;
use crate::sip::Msg;

/// Rewrites the file in place: truncate and write, the inode stays (an editor without backup
/// files, `cat > siplb.toml`).
pub fn write_in_place(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.sync_all().ok();
}

/// Writes a temporary file in the same directory and renames it over `path` (atomic: siplb
/// never sees a half-written file).
pub fn replace_by_rename(path: &Path, text: &str) {
    let dir = path.parent().expect("config file has a directory");
    let tmp = dir.join(format!(".{}.tmp", unique("siplb")));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} over {}: {e}", tmp.display(), path.display()));
}

/// A config laid out as a Kubernetes ConfigMap volume:
/// `siplb.toml -> ..data/siplb.toml` and `..data -> ..2026_a` holding the file.
pub fn configmap(text: &str) -> ConfigFile {
    let dir = tempfile::Builder::new()
        .prefix("siplb-e2e-configmap-")
        .tempdir()
        .expect("temporary directory");
    let generation = dir.path().join("..2026_a");
    std::fs::create_dir(&generation).expect("create the first ConfigMap generation");
    std::fs::write(generation.join("siplb.toml"), text).expect("write the ConfigMap file");
    symlink("..2026_a", &dir.path().join("..data"));
    let path = dir.path().join("siplb.toml");
    symlink("..data/siplb.toml", &path);
    ConfigFile::at(dir, path)
}

/// Publishes `text` as the next generation of a [`configmap`] layout, the way the kubelet
/// does: a new `..<name>` directory, a temporary symlink to it, renamed over `..data`. Returns
/// the new generation's directory.
pub fn configmap_swap(config: &ConfigFile, text: &str) -> PathBuf {
    let dir = config.dir();
    let name = format!("..2026_{}", unique("g"));
    let generation = dir.join(&name);
    std::fs::create_dir(&generation).expect("create a ConfigMap generation");
    std::fs::write(generation.join("siplb.toml"), text).expect("write the ConfigMap file");
    let tmp = dir.join("..data_tmp");
    symlink(&name, &tmp);
    std::fs::rename(&tmp, dir.join("..data")).expect("rename ..data_tmp over ..data");
    generation
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), link).unwrap_or_else(|e| {
        panic!(
            "symlink {} -> {}: {e}",
            link.display(),
            target.as_ref().display()
        )
    });
}

/// Sends SIGHUP to `pid` with `kill -HUP` (a process this test started).
pub fn sighup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill -HUP");
    assert!(status.success(), "kill -HUP {pid}: {status}");
}

/// `text` with `[listen] udp` set to `addrs` (the builder always writes one `127.0.0.1:0`).
pub fn with_udp(text: &str, addrs: &[&str]) -> String {
    let line = "udp = [\"127.0.0.1:0\"]";
    assert!(text.contains(line), "no `{line}` in the config:\n{text}");
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    text.replacen(line, &format!("udp = [{}]", list.join(", ")), 1)
}

/// `text` with `line` added to its `[ops]` table (e.g. `admin_token_file = "..."`).
pub fn with_ops_line(text: &str, line: &str) -> String {
    let ops = "[ops]\nlisten = \"127.0.0.1:0\"\n";
    assert!(text.contains(ops), "no [ops] in the config:\n{text}");
    text.replacen(ops, &format!("{ops}{line}\n"), 1)
}

/// `text` with the one line equal to `line` replaced by `with`; panics unless exactly one line
/// matches. Returns the new text and the (1-based) number of the line.
pub fn replace_line(text: &str, line: &str, with: &str) -> (String, usize) {
    let at: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == line)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "`{line}` is not exactly one line of:\n{text}");
    let out: Vec<&str> = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i == at[0] { with } else { l })
        .collect();
    (out.join("\n") + "\n", at[0] + 1)
}

/// How many requests each backend of a farm had received at some moment.
#[derive(Debug, Clone)]
pub struct Mark(Vec<usize>);

impl Farm {
    /// Marks the traffic received so far.
    pub fn mark(&self) -> Mark {
        Mark(self.backends.iter().map(|b| b.requests().len()).collect())
    }

    /// Like [`Farm::users`], counting only requests received after `mark`: user → the id of
    /// the backend its requests through `siplb` reached. Panics if one user reached two.
    pub fn users_since(&self, mark: &Mark, siplb: SocketAddr) -> BTreeMap<String, String> {
        let through = siplb.to_string();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (b, &from) in self.backends.iter().zip(&mark.0) {
            for d in b.requests().into_iter().skip(from) {
                let Some(m) = d.msg() else { continue };
                if m.top_via_sent_by().as_deref() != Some(through.as_str()) {
                    continue;
                }
                let Some(user) = Msg::default_key(&m) else {
                    continue;
                };
                if let Some(other) = map.insert(user.clone(), b.id().to_string()) {
                    assert_eq!(other, b.id(), "{user} reached both {other} and {}", b.id());
                }
            }
        }
        map
    }
}
