//! The ops endpoint as an operator's script sees it: `/status` read into a few questions
//! (which config version, which pool serves whom, which state a server is in), `/metrics` read
//! into samples, the admin API, and waiting for the status to say something, with a deadline.
//!
//! Everything here goes through [`crate::http`], so a test asserts on the very status codes and
//! bodies an operator's `curl` would get.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{get, post, Reply};
use crate::process::Siplb;

/// How long a change (an admin command, a reload, a probe) may take to show in `/status`.
pub const SHOWS_WITHIN: Duration = Duration::from_secs(10);

/// Polls `probe` every 20 ms until it answers `Ok`, and returns that; panics after `within`
/// with `what` and the last `Err` (the state seen instead).
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("waited {within:?} for {what}; last seen: {seen}")
            }
            // Polling a condition under a deadline, not sleeping for one.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The ops endpoint of one siplb.
#[derive(Debug, Clone, Copy)]
pub struct Ops {
    addr: SocketAddr,
}

impl Ops {
    /// The ops endpoint of `siplb` (its config must have `[ops]`).
    pub fn of(siplb: &Siplb) -> Ops {
        Ops { addr: siplb.ops() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        get(self.addr, path)
    }

    /// `GET /status`, which must answer 200 with JSON.
    pub fn status(&self) -> Status {
        let r = self.get("/status");
        assert_eq!(r.status, 200, "GET /status: {}", r.body);
        Status(r.json())
    }

    /// `GET /metrics`, which must answer 200 with Prometheus text.
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        Metrics::parse(&r.body)
    }

    /// `GET /route?method=METHOD&aor=AOR`.
    pub fn route(&self, method: &str, aor: &str) -> Reply {
        self.get(&format!(
            "/route?method={}&aor={}",
            url_encode(method),
            url_encode(aor)
        ))
    }

    /// `POST path` with `token` as the bearer token (none when `None`).
    pub fn admin(&self, path: &str, token: Option<&str>) -> Reply {
        post(self.addr, path, token)
    }

    /// `POST path` with the right token, which must answer 200 with `"ok": true`.
    pub fn admin_ok(&self, path: &str, token: &str) -> Value {
        let r = self.admin(path, Some(token));
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["ok"], Value::Bool(true), "POST {path}: {}", r.body);
        v
    }

    /// Waits until `/status` satisfies `pred`; returns that status.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        wait_until(what, SHOWS_WITHIN, || {
            let s = self.status();
            if pred(&s) {
                Ok(s)
            } else {
                Err(s.0.to_string())
            }
        })
    }

    /// Waits until the running config is `version` (a reload took effect); panics early, with
    /// the error, if the version went past it.
    pub fn wait_config_version(&self, version: u64) -> Status {
        let s = self.wait_status(&format!("config version {version}"), |s| {
            s.config_version() >= version
        });
        assert_eq!(
            s.config_version(),
            version,
            "config version went past {version}: {}",
            s.0
        );
        s
    }

    /// Waits until `/status` shows a refused reload; returns its text.
    pub fn wait_last_error(&self) -> String {
        let s = self.wait_status("config.last_error", |s| s.last_error().is_some());
        s.last_error().unwrap_or_default()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `/status` document.
#[derive(Debug, Clone)]
pub struct Status(pub Value);

impl Status {
    pub fn config_version(&self) -> u64 {
        self.0["config"]["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no config.version in {}", self.0))
    }

    /// `config.last_error`, `None` when null.
    pub fn last_error(&self) -> Option<String> {
        self.0["config"]["last_error"].as_str().map(str::to_string)
    }

    pub fn listen_udp(&self) -> Vec<String> {
        strings(&self.0["listen_udp"])
    }

    pub fn pools(&self) -> &[Value] {
        self.0["pools"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The pool called `name`; panics if there is none.
    pub fn pool(&self, name: &str) -> &Value {
        self.pools()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no pool {name} in /status: {}", self.0))
    }

    /// The name of the pool serving `pool`'s users.
    pub fn serving(&self, pool: &str) -> String {
        self.pool(pool)["serving"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The server with id `id`, in whichever pool; panics if there is none.
    pub fn server(&self, id: &str) -> &Value {
        self.pools()
            .iter()
            .flat_map(|p| p["servers"].as_array().map_or(&[][..], Vec::as_slice))
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no server {id} in /status: {}", self.0))
    }

    /// `up`, `down` or `drained`.
    pub fn server_state(&self, id: &str) -> String {
        self.server(id)["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One sample of the Prometheus text format: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A `/metrics` page, parsed. Parsing is strict: a line that is not a comment, a blank line
/// or a well-formed sample fails the test, since Prometheus would refuse the whole page.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("not a Prometheus sample: {l:?}")))
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of every sample of `name` carrying (at least) `labels`; 0 when there is none
    /// (a counter that never moved may not be exported yet).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one sample of `name` with `labels`, or `None`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        match found.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!("{} samples of {name} {labels:?}: {many:?}", many.len()),
        }
    }

    /// Every value label `label` takes on samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !valid_name {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.strip_prefix(',').unwrap_or(body);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"")?;
            let (value, after) = unquote(after)?;
            labels.insert(key.to_string(), value);
            body = after;
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote (escapes undone), and what follows the quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_and_without_labels() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE a counter\na{method=\"REGISTER\",pool=\"fe\"} 3\nb 1.5\n\
             h_bucket{le=\"+Inf\",pool=\"p,q\\\"\"} 7\n\n",
        );
        assert_eq!(m.value("a", &[("method", "REGISTER")]), Some(3.0));
        assert_eq!(m.value("b", &[]), Some(1.5));
        assert_eq!(m.value("h_bucket", &[("pool", "p,q\"")]), Some(7.0));
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn encodes_a_uri_for_a_query() {
        assert_eq!(
            url_encode("sip:alice@contoso.com"),
            "sip%3Aalice%40contoso.com"
        );
    }
}
