//! `[cluster]`: peers, witness and token read; each mistake named by line and key.

use super::*;
use crate::test_dir::TestDir;

/// [`MINIMAL`] with a `[cluster]` whose token file is in `dir`; `body` goes after the
/// `token_file` line (line 11), so its first line is line 12.
fn with_cluster(dir: &TestDir, body: &str) -> String {
    let token = dir.write("cluster-token", "s3cret-fleet\n");
    plus(&format!(
        "[cluster]\ntoken_file = \"{}\"\n{body}",
        token.display()
    ))
}

#[test]
fn absent_means_a_replica_that_decides_alone() {
    assert_eq!(ok(MINIMAL).cluster, None);
}

#[test]
fn peers_witness_and_token_are_read() {
    let dir = TestDir::new("cluster-config");
    let cfg = ok(&with_cluster(
        &dir,
        "peers = [\"http://10.0.0.2:9060\", \"http://peer-b.contoso.com:9060/\", \
         \"http://[2001:db8::3]:9060\"]\nwitness = \"http://10.0.9.9:9060\"\n",
    ));
    assert!(
        summary(&cfg).contains(
            "cluster   peers http://10.0.0.2:9060, http://peer-b.contoso.com:9060, \
             http://[2001:db8::3]:9060 | witness http://10.0.9.9:9060 | failover by a majority \
             of 5 observers (3 must answer)"
        ),
        "{}",
        summary(&cfg)
    );
    let c = cfg.cluster.expect("a [cluster]");
    let urls: Vec<&str> = c.peers.iter().map(|p| p.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "http://10.0.0.2:9060",
            "http://peer-b.contoso.com:9060",
            "http://[2001:db8::3]:9060"
        ]
    );
    assert_eq!(c.peers[2].authority, "[2001:db8::3]:9060");
    assert_eq!(
        c.witness.as_ref().map(|w| w.url.as_str()),
        Some("http://10.0.9.9:9060")
    );
    assert_eq!(c.token.0, "s3cret-fleet", "trimmed");
    assert_eq!(c.observers().count(), 4);
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "the token never shows in debug output"
    );
}

#[test]
fn a_peer_url_that_is_not_http_host_port_is_named_with_its_line() {
    let dir = TestDir::new("cluster-config");
    let text = with_cluster(
        &dir,
        "peers = [\n  \"https://10.0.0.2:9060\",\n  \"10.0.0.3:9060\",\n  \"http://10.0.0.4\",\n  \
         \"http://10.0.0.5:9060/cluster/view\",\n  \"http://10.0.0.6:0\",\n  \"http://bad_host:9060\",\n]\n",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 6, "{}", render(&e));
    assert_error(
        &e[0],
        13,
        "cluster.peers[0]",
        &["not an http:// URL", "http://HOST:PORT"],
    );
    assert_error(
        &e[1],
        14,
        "cluster.peers[1]",
        &["not a URL", "http://10.0.0.2:9060"],
    );
    assert_error(&e[2], 15, "cluster.peers[2]", &["has no port"]);
    assert_error(&e[3], 16, "cluster.peers[3]", &["has a path"]);
    assert_error(
        &e[4],
        17,
        "cluster.peers[4]",
        &["invalid port", "1 to 65535"],
    );
    assert_error(&e[5], 18, "cluster.peers[5]", &["not a host name"]);
}

#[test]
fn an_observer_named_twice_is_an_error() {
    let dir = TestDir::new("cluster-config");
    let e = errors(&with_cluster(
        &dir,
        "peers = [\"http://10.0.0.2:9060\", \"http://10.0.0.2:9060/\"]\nwitness = \"http://10.0.0.2:9060\"\n",
    ));
    assert_eq!(e.len(), 2, "{}", render(&e));
    assert_error(&e[0], 12, "cluster.peers[1]", &["named twice"]);
    assert_error(
        &e[1],
        13,
        "cluster.witness",
        &["also a peer", "third vantage point"],
    );
}

#[test]
fn a_cluster_with_nobody_to_ask_is_an_error() {
    let dir = TestDir::new("cluster-config");
    let e = only_error(&with_cluster(&dir, ""));
    assert_error(
        &e,
        10,
        "cluster",
        &["names no peer and no witness", "leave [cluster] out"],
    );
}

#[test]
fn a_cluster_token_file_that_is_empty_or_missing_is_an_error() {
    let dir = TestDir::new("cluster-config");
    let empty = dir.write("empty", "  \n");
    let e = only_error(&plus(&format!(
        "[cluster]\npeers = [\"http://10.0.0.2:9060\"]\ntoken_file = \"{}\"\n",
        empty.display()
    )));
    assert_error(&e, 12, "cluster.token_file", &["is empty", "openssl rand"]);
    let missing = dir.join("missing");
    let e = only_error(&plus(&format!(
        "[cluster]\npeers = [\"http://10.0.0.2:9060\"]\ntoken_file = \"{}\"\n",
        missing.display()
    )));
    assert_error(&e, 12, "cluster.token_file", &["cannot read"]);
}

#[test]
fn a_cluster_without_a_token_is_an_error() {
    if std::env::var_os(super::super::cluster::TOKEN_ENV).is_some() {
        // The process was given a token: the file's absence is then no mistake.
        return;
    }
    let e = only_error(&plus("[cluster]\npeers = [\"http://10.0.0.2:9060\"]\n"));
    assert_error(
        &e,
        10,
        "cluster.token_file",
        &["no token", "SIPLB_CLUSTER_TOKEN", "same on every replica"],
    );
}
