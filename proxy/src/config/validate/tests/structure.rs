//! Missing or empty parts and out-of-range numbers: each test asserts the exact line, the
//! dotted key and that the message says what is accepted.

use super::*;

// ---- structure ------------------------------------------------------------------------------

#[test]
fn empty_pool() {
    let e = only_error(&MINIMAL.replace("[{ address = \"127.0.0.1:5071\" }]", "[]"));
    assert_error(
        &e,
        6,
        "pool[0].servers",
        &["at least one server", "address = \"IP:port\""],
    );
    let e = only_error(&MINIMAL.replace("servers = [{ address = \"127.0.0.1:5071\" }]\n", ""));
    assert_error(
        &e,
        4,
        "pool[0].servers",
        &["has no servers", "add servers = ["],
    );
}

#[test]
fn route_with_neither_pool_nor_pools() {
    let e = only_error(&plus("\n[[route]]\ndomain = \"contoso.com\"\n"));
    assert_error(
        &e,
        11,
        "route[1].pool",
        &["names no pool", "pool = \"name\" or pools = ["],
    );
}

#[test]
fn route_with_both_pool_and_pools() {
    let e = only_error(&plus("pools = [\"a\"]\n"));
    assert_error(
        &e,
        10,
        "route[0].pools",
        &["both pool and pools", "keep one"],
    );
    // The names in both are still checked, so one run shows every mistake.
    let errors = errors(&plus("pools = [\"b\"]\n"));
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        found,
        [(10, "route[0].pools[0]"), (10, "route[0].pools")],
        "{}",
        render(&errors)
    );
}

#[test]
fn empty_pools() {
    let e = only_error(&MINIMAL.replace("pool = \"a\"", "pools = []"));
    assert_error(
        &e,
        9,
        "route[0].pools",
        &["pools is empty", "defined pools: a"],
    );
}

#[test]
fn duplicate_pool_in_pools() {
    let e = only_error(&MINIMAL.replace("pool = \"a\"", "pools = [\"a\", \"a\"]"));
    assert_error(
        &e,
        9,
        "route[0].pools[1]",
        &["listed twice", "each pool once"],
    );
}

#[test]
fn empty_methods() {
    let e = only_error(&plus("methods = []\n"));
    assert_error(
        &e,
        10,
        "route[0].methods",
        &["empty", "e.g. [\"REGISTER\", \"INVITE\"]"],
    );
}

#[test]
fn bad_method_and_domain() {
    let e = only_error(&plus("methods = [\"INVITE\", \"NOT A METHOD\"]\n"));
    assert_error(
        &e,
        10,
        "route[0].methods[1]",
        &["not a SIP method", "REGISTER"],
    );
    let e = only_error(&plus("domain = \"contoso.com:5061\"\n"));
    assert_error(
        &e,
        10,
        "route[0].domain",
        &["request-URI host", "e.g. contoso.com"],
    );
}

#[test]
fn no_pools_at_all() {
    let errors = errors("[listen]\nudp = [\"127.0.0.1:5060\"]\n\n[[route]]\npool = \"a\"\n");
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[0],
        1,
        "pool",
        &["no pool defined", "add at least one [[pool]]"],
    );
    assert_error(
        &errors[1],
        5,
        "route[0].pool",
        &["unknown pool \"a\"; no pools are defined"],
    );
}

#[test]
fn no_routes_at_all() {
    let e = only_error(&MINIMAL.replace("[[route]]\npool = \"a\"\n", ""));
    assert_error(
        &e,
        1,
        "route",
        &["no route defined", "add at least one [[route]]"],
    );
}

#[test]
fn no_listeners_at_all() {
    let e = only_error(&MINIMAL.replace("udp = [\"127.0.0.1:5060\"]", "udp = []"));
    assert_error(&e, 1, "listen", &["no listener", "udp = [\"IP:port\"]"]);
    let e = only_error(&MINIMAL.replace("[listen]\nudp = [\"127.0.0.1:5060\"]\n", "\n\n"));
    assert_error(
        &e,
        1,
        "listen",
        &["no [listen] section", "udp = [\"127.0.0.1:5060\"]"],
    );
}

// ---- ranges ---------------------------------------------------------------------------------

#[test]
fn min_up_out_of_range() {
    let e = only_error(&MINIMAL.replace("name = \"a\"", "name = \"a\"\nmin_up = 2"));
    assert_error(
        &e,
        6,
        "pool[0].min_up",
        &["min_up = 2 is out of range", "use 1 to 1"],
    );
    let e = only_error(&MINIMAL.replace("name = \"a\"", "name = \"a\"\nmin_up = 0"));
    assert_error(
        &e,
        6,
        "pool[0].min_up",
        &["min_up = 0 is out of range", "use 1 to 1"],
    );
}

#[test]
fn weight_zero() {
    let e = only_error(&MINIMAL.replace("5071\" }", "5071\", weight = 0 }"));
    assert_error(
        &e,
        6,
        "pool[0].servers[0].weight",
        &["use 1 or more", "use drained = true"],
    );
    let e = only_error(&MINIMAL.replace("5071\" }", "5071\", weight = -3 }"));
    assert_error(
        &e,
        6,
        "pool[0].servers[0].weight",
        &["out of range", "from 1 to 4294967295"],
    );
}

#[test]
fn fall_or_rise_zero() {
    let e = only_error(&plus("[health]\nfall = 0\n"));
    assert_error(
        &e,
        11,
        "health.fall",
        &["fall = 0 is out of range", "at least 1"],
    );
    let e = only_error(&MINIMAL.replace("name = \"a\"", "name = \"a\"\nhealth = { rise = 0 }"));
    assert_error(
        &e,
        6,
        "pool[0].health.rise",
        &["rise = 0 is out of range", "at least 1"],
    );
}

#[test]
fn interval_or_timeout_zero() {
    let e = only_error(&plus("[health]\ninterval = \"0s\"\n"));
    assert_error(&e, 11, "health.interval", &["longer than 0", "500ms, 1s"]);
    let e = only_error(&plus("[health]\ntimeout = \"0ms\"\n"));
    assert_error(&e, 11, "health.timeout", &["longer than 0", "500ms, 1s"]);
}

#[test]
fn timeout_longer_than_interval() {
    let e = only_error(&plus("[health]\ninterval = \"1s\"\ntimeout = \"2s\"\n"));
    assert_error(
        &e,
        12,
        "health.timeout",
        &[
            "timeout 2s is longer than interval 1s",
            "no longer than the interval",
        ],
    );
    // A pool override is checked against what it inherits, and says where that came from.
    let e = only_error(&MINIMAL.replace(
        "name = \"a\"",
        "name = \"a\"\nhealth = { interval = \"200ms\" }",
    ));
    assert_error(
        &e,
        6,
        "pool[0].health.interval",
        &["timeout 500ms (from [health]) is longer than interval 200ms"],
    );
}

#[test]
fn workers_out_of_range() {
    for bad in ["0", "257"] {
        let text = MINIMAL.replace(
            "udp = [\"127.0.0.1:5060\"]",
            &format!("udp = [\"127.0.0.1:5060\"]\nworkers = {bad}"),
        );
        let e = only_error(&text);
        assert_error(
            &e,
            3,
            "listen.workers",
            &["is out of range", "use 1 to 256"],
        );
    }
}

#[test]
fn shutdown_grace_is_a_duration_and_may_be_zero() {
    let with = |v: &str| {
        MINIMAL.replace(
            "udp = [\"127.0.0.1:5060\"]",
            &format!("udp = [\"127.0.0.1:5060\"]\nshutdown_grace = {v}"),
        )
    };
    assert_eq!(ok(&with("\"0s\"")).listen.shutdown_grace, Duration::ZERO);
    assert_eq!(
        ok(&with("\"1m\"")).listen.shutdown_grace,
        Duration::from_secs(60)
    );
    let e = only_error(&with("\"10\""));
    assert_error(&e, 3, "listen.shutdown_grace", &["has no unit", "2s"]);
    let e = only_error(&with("\"soon\""));
    assert_error(&e, 3, "listen.shutdown_grace", &["is not a duration"]);
}

#[test]
fn no_route_not_403_or_404() {
    let e = only_error(&plus("[routing]\nno_route = 500\n"));
    assert_error(
        &e,
        11,
        "routing.no_route",
        &["no_route = 500 is not accepted", "use 404", "or 403"],
    );
}

#[test]
fn retry_after_must_be_whole_seconds() {
    let e = only_error(&plus("[routing]\nretry_after = \"1.5s\"\n"));
    assert_error(
        &e,
        11,
        "routing.retry_after",
        &["whole number of seconds", "e.g. 30s"],
    );
}

#[test]
fn empty_tls_cert_path() {
    let text = MINIMAL.replace(
        "udp = [\"127.0.0.1:5060\"]",
        "tls = [{ address = \"127.0.0.1:5061\", cert = \"\", key = \"k.pem\" }]",
    );
    let e = only_error(&text);
    assert_error(
        &e,
        2,
        "listen.tls[0].cert",
        &["empty path", "relative to this config file"],
    );
}
