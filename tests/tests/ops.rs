//! The ops endpoint, used the way an operator and a monitoring system use it, against the real
//! binary with real SIP traffic behind it (DESIGN.md "Ops HTTP contract"):
//!
//! - `/healthz` answers `ok`; `/status` describes the running config, listeners, pools and
//!   servers, with probe results;
//! - every admin action answers 401 without the token, 401 with a wrong one and 200 with the
//!   right one, and does nothing on a 401; without a token the admin API does not exist (404);
//!   the token can come from `admin_token_file` and is re-read on reload;
//! - unknown pools and servers are 404, failing over a pool without a pair is 409;
//! - `/readyz` is 503 with the reason while a routed pool and its pair have no server up;
//! - `/status` and the gauges show a drain and an operator failover;
//! - `/route` names the server a REGISTER (and an INVITE) really reaches, before and after a
//!   drain and a failover;
//! - `/metrics` counts N REGISTERs as N requests and N 2xx, a garbage datagram as a drop, and no
//!   label ever carries a user, a Call-ID or a client address.

use std::collections::BTreeSet;

use serde_json::Value;
use siplb_e2e::config::Pool;
use siplb_e2e::farm::users;
use siplb_e2e::ops::{wait_until, Metrics, Ops, Status, SHOWS_WITHIN};
use siplb_e2e::reload::with_ops_line;
use siplb_e2e::request::CLIENT_SENT_BY;
use siplb_e2e::{Behaviour, Client, Config, Farm, Request, Route, Siplb, Testbed};

const TOKEN: &str = "ops-e2e-token-4f1c";

/// Home pool of every `contoso.com` user, and its pair.
const DC1: &str = "fe-dc1";
const DC2: &str = "fe-dc2";
/// A pool without a pair (Mediation), routed for `pstn.contoso.com`.
const MED: &str = "med";

fn farm() -> Farm {
    Farm::pools(
        &[("dc1-fe", 2), ("dc2-fe", 2), ("med", 1)],
        Behaviour::Accept,
    )
}

/// `fe-dc1` ⇄ `fe-dc2` (manual failover, so only the operator moves users), `med`; REGISTERs for
/// `contoso.com` go to `fe-dc1`, for `pstn.contoso.com` to `med`; other domains get 404.
fn config(farm: &Farm) -> Config {
    Config::new()
        .ops()
        .pool_with(Pool::new(DC1, farm.servers_of("dc1-")).pair(DC2).manual())
        .pool_with(Pool::new(DC2, farm.servers_of("dc2-")).pair(DC1).manual())
        .pool(MED, farm.servers_of("med"))
        .route(Route::to(DC1).domain("contoso.com"))
        .route(Route::to(MED).domain("pstn.contoso.com"))
}

/// The two paired Front End pools and the Mediation pool behind one siplb with `[ops]`, with
/// `SIPLB_ADMIN_TOKEN` set when `token` is given.
fn site(token: Option<&str>) -> (Testbed, Ops) {
    let farm = farm();
    let text = config(&farm).render();
    let env: Vec<(&str, &str)> = token
        .map(|t| ("SIPLB_ADMIN_TOKEN", t))
        .into_iter()
        .collect();
    Testbed::with_ops(farm, Siplb::start_with_env(&text, &env))
}

fn pool_ids(farm: &Farm, prefix: &str) -> BTreeSet<String> {
    farm.backends
        .iter()
        .map(|b| b.id().to_string())
        .filter(|id| id.starts_with(prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Liveness and status

#[test]
fn healthz_and_status_describe_the_running_proxy() {
    let (site, ops) = site(None);

    let live = ops.get("/healthz");
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(live.body.trim(), "ok");

    let status = ops.status();
    let doc = &status.0;
    let config = &doc["config"];
    assert_eq!(
        config["path"].as_str(),
        Some(site.siplb.config().path().to_string_lossy().as_ref()),
        "{doc}"
    );
    assert_eq!(config["version"], 1, "{doc}");
    assert_eq!(config["last_error"], Value::Null, "{doc}");
    let loaded_at = config["loaded_at"].as_str().unwrap_or_default();
    assert!(is_rfc3339_utc(loaded_at), "loaded_at {loaded_at:?}");
    let udp = site.siplb.addr().to_string();
    assert_eq!(status.listen_udp(), vec![udp.clone()], "{doc}");
    assert_eq!(doc["advertise"].as_str(), Some(udp.as_str()), "{doc}");
    assert!(doc["table_version"].is_u64(), "{doc}");

    let names: Vec<&str> = status
        .pools()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, [DC1, DC2, MED], "pools in config order");
    let dc1 = status.pool(DC1);
    for (field, want) in [
        ("role", Value::from("front-end")),
        ("pair", Value::from(DC2)),
        ("state", Value::from("up")),
        ("serving", Value::from(DC1)),
        ("mode", Value::from("manual")),
        ("operator_failover", Value::from(false)),
        ("min_up", Value::from(1)),
        ("servers_up", Value::from(2)),
    ] {
        assert_eq!(dc1[field], want, "pool {DC1} field {field}: {dc1}");
    }
    assert!(dc1["since"].as_str().is_some_and(is_rfc3339_utc), "{dc1}");
    assert_eq!(status.pool(MED)["pair"], Value::Null);
    for b in &site.farm.backends {
        let s = status.server(b.id());
        assert_eq!(s["address"].as_str(), Some(b.addr().to_string().as_str()));
        assert_eq!(s["transport"], "udp");
        assert_eq!(s["weight"], 1);
        assert_eq!(s["state"], "up", "{s}");
    }

    // The probes answer: every server shows its last probe and its round-trip time.
    let probed = ops.wait_status("every server probed with an answer", |s| {
        site.farm.backends.iter().all(|b| {
            let s = s.server(b.id());
            s["last_probe"] == "answered 200" && s["last_rtt_ms"].as_f64().is_some()
        })
    });
    for b in &site.farm.backends {
        let rtt = probed.server(b.id())["last_rtt_ms"]
            .as_f64()
            .unwrap_or(-1.0);
        assert!((0.0..1000.0).contains(&rtt), "{}: RTT {rtt} ms", b.id());
    }

    let page = ops.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{}",
        page.headers
    );
    for name in [DC1, DC2, MED] {
        assert!(page.body.contains(name), "status page lacks {name}");
    }
}

/// `2026-11-26T05:07:17Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// The admin API

/// One admin action: its path, and how `/status` shows it took effect.
struct Action {
    path: String,
    took_effect: fn(&Status) -> bool,
}

/// Every admin action, in an order where each one changes something: drain, undrain,
/// failover, failback, reload.
fn actions() -> Vec<Action> {
    vec![
        Action {
            path: "/admin/servers/dc1-fe1/drain".into(),
            took_effect: |s| s.server_state("dc1-fe1") == "drained",
        },
        Action {
            path: "/admin/servers/dc1-fe1/undrain".into(),
            took_effect: |s| s.server_state("dc1-fe1") == "up",
        },
        Action {
            path: format!("/admin/pools/{DC1}/failover"),
            took_effect: |s| s.serving(DC1) == DC2,
        },
        Action {
            path: format!("/admin/pools/{DC1}/failback"),
            took_effect: |s| s.serving(DC1) == DC1,
        },
        Action {
            path: "/admin/reload".into(),
            took_effect: |s| s.config_version() == 2,
        },
    ]
}

/// What an admin action can change: the config version, and every pool's and server's state.
fn admin_view(s: &Status) -> String {
    let mut view = format!("config version {}", s.config_version());
    for p in s.pools() {
        view += &format!(
            "; pool {} serving {} operator {}",
            p["name"], p["serving"], p["operator_failover"]
        );
        for srv in p["servers"].as_array().into_iter().flatten() {
            view += &format!("; server {} {}", srv["id"], srv["state"]);
        }
    }
    view
}

#[test]
fn every_admin_action_needs_the_right_token() {
    let (_site, ops) = site(Some(TOKEN));
    for action in actions() {
        let before = admin_view(&ops.status());
        for (what, token) in [("no token", None), ("a wrong token", Some("not-the-token"))] {
            let r = ops.admin(&action.path, token);
            assert_eq!(r.status, 401, "POST {} with {what}: {r:?}", action.path);
            assert!(
                r.headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "401 without a Bearer challenge: {}",
                r.headers
            );
            assert_eq!(
                admin_view(&ops.status()),
                before,
                "POST {} with {what} was refused but changed something",
                action.path
            );
        }
        let r = ops.admin(&action.path, Some(TOKEN));
        assert_eq!(r.status, 200, "POST {} with the token: {r:?}", action.path);
        assert_eq!(r.json()["ok"], true, "{}", r.body);
        let after = ops.status();
        assert!(
            (action.took_effect)(&after),
            "POST {} answered 200 but /status shows no change: {}",
            action.path,
            after.0
        );
    }
}

#[test]
fn admin_api_is_absent_without_a_token() {
    let (_site, ops) = site(None);
    let before = admin_view(&ops.status());
    for action in actions() {
        for token in [None, Some(TOKEN)] {
            let r = ops.admin(&action.path, token);
            assert_eq!(
                r.status, 404,
                "POST {} (token {token:?}) with no token configured: {r:?}",
                action.path
            );
        }
    }
    assert_eq!(
        admin_view(&ops.status()),
        before,
        "an admin request changed something without an admin API"
    );
}

#[test]
fn admin_token_can_come_from_a_file_and_is_reread_on_reload() {
    let secrets = tempfile::tempdir().expect("temporary directory");
    let token_file = secrets.path().join("siplb-admin");
    std::fs::write(&token_file, "file-token-1\n").expect("write the token file");
    let farm = farm();
    let text = with_ops_line(
        &config(&farm).render(),
        &format!("admin_token_file = {:?}", token_file.to_string_lossy()),
    );
    let (_site, ops) = Testbed::with_ops(farm, Siplb::start(&text));

    let drain = "/admin/servers/dc1-fe2/drain";
    assert_eq!(ops.admin(drain, None).status, 401);
    assert_eq!(ops.admin(drain, Some("file-token-2")).status, 401);
    ops.admin_ok(drain, "file-token-1");
    assert_eq!(ops.status().server_state("dc1-fe2"), "drained");

    // Rotation: a new token in the file, a reload, and only the new token is accepted.
    std::fs::write(&token_file, "file-token-2\n").expect("rewrite the token file");
    ops.admin_ok("/admin/reload", "file-token-1");
    let undrain = "/admin/servers/dc1-fe2/undrain";
    let r = ops.admin(undrain, Some("file-token-1"));
    assert_eq!(r.status, 401, "the rotated-out token still works: {r:?}");
    ops.admin_ok(undrain, "file-token-2");
    assert_eq!(ops.status().server_state("dc1-fe2"), "up");
}

#[test]
fn admin_errors_name_the_unknown_pool_or_server_and_a_missing_pair() {
    let (_site, ops) = site(Some(TOKEN));
    for (path, code, names) in [
        ("/admin/pools/fe-dc9/failover", 404, "fe-dc9"),
        ("/admin/pools/fe-dc9/failback", 404, "fe-dc9"),
        ("/admin/servers/nobody/drain", 404, "nobody"),
        ("/admin/servers/nobody/undrain", 404, "nobody"),
        ("/admin/pools/med/failover", 409, "med"),
    ] {
        let r = ops.admin(path, Some(TOKEN));
        assert_eq!(r.status, code, "POST {path}: {r:?}");
        let v = r.json();
        assert_eq!(v["ok"], false, "{}", r.body);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(names)),
            "POST {path}: the error does not name {names}: {}",
            r.body
        );
    }
    assert_eq!(ops.status().serving(MED), MED);
}

// ---------------------------------------------------------------------------------------------
// Readiness, drains and failover as /status and the wire show them

#[test]
fn readyz_is_503_with_the_reason_while_a_routed_pool_and_its_pair_have_no_server_up() {
    let (mut site, ops) = site(Some(TOKEN));
    assert_eq!(ops.get("/readyz").status, 200);

    // fe-dc1 without a server: still ready, its pair has servers up.
    for id in ["dc1-fe1", "dc1-fe2"] {
        ops.admin_ok(&format!("/admin/servers/{id}/drain"), TOKEN);
    }
    let r = ops.get("/readyz");
    assert_eq!(r.status, 200, "pair fe-dc2 is up: {r:?}");

    for id in ["dc2-fe1", "dc2-fe2"] {
        ops.admin_ok(&format!("/admin/servers/{id}/drain"), TOKEN);
    }
    let r = ops.get("/readyz");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains(DC1) && r.body.contains("no server up"),
        "503 without the reason: {:?}",
        r.body
    );
    // The wire agrees: a user of fe-dc1 gets 503, and no server sees the REGISTER.
    let (status, reached) = site.register("alice@contoso.com");
    assert_eq!((status, reached), (503, None));

    ops.admin_ok("/admin/servers/dc1-fe1/undrain", TOKEN);
    let r = ops.get("/readyz");
    assert_eq!(r.status, 200, "after an undrain: {r:?}");
    let (status, reached) = site.register("alice@contoso.com");
    assert_eq!((status, reached.as_deref()), (200, Some("dc1-fe1")));
}

#[test]
fn status_and_gauges_show_a_drain_and_a_failover() {
    let (mut site, ops) = site(Some(TOKEN));
    let gauge = |m: &Metrics, name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", m.text))
    };
    let before = ops.status();
    let table_before = before.0["table_version"].as_u64().unwrap_or(0);

    ops.admin_ok("/admin/servers/dc1-fe2/drain", TOKEN);
    let s = ops.status();
    let server = s.server("dc1-fe2");
    assert_eq!(server["state"], "drained", "{server}");
    assert!(
        server["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{server}"
    );
    assert_eq!(s.pool(DC1)["servers_up"], 1);
    assert_eq!(s.pool(DC1)["state"], "up", "min_up 1 is still met");
    assert!(s.0["table_version"].as_u64().unwrap_or(0) > table_before);
    let m = ops.metrics();
    assert_eq!(
        gauge(
            &m,
            "siplb_server_up",
            &[("pool", DC1), ("server", "dc1-fe2")]
        ),
        0.0
    );
    assert_eq!(
        gauge(
            &m,
            "siplb_server_up",
            &[("pool", DC1), ("server", "dc1-fe1")]
        ),
        1.0
    );
    assert_eq!(gauge(&m, "siplb_pool_up", &[("pool", DC1)]), 1.0);
    // Every user of the pool now lands on the one server left.
    for aor in users(20, "contoso.com") {
        assert_eq!(site.register(&aor), (200, Some("dc1-fe1".to_string())));
    }

    ops.admin_ok(&format!("/admin/pools/{DC1}/failover"), TOKEN);
    let s = ops.status();
    let pool = s.pool(DC1);
    assert_eq!(pool["serving"], DC2, "{pool}");
    assert_eq!(pool["operator_failover"], true, "{pool}");
    assert_eq!(s.serving(DC2), DC2, "the pair serves its own users too");
    let m = ops.metrics();
    assert_eq!(gauge(&m, "siplb_pool_failed_over", &[("pool", DC1)]), 1.0);
    assert_eq!(gauge(&m, "siplb_pool_failed_over", &[("pool", DC2)]), 0.0);
    let registers_to = |m: &Metrics, pool: &str| {
        m.sum(
            "siplb_requests_total",
            &[("method", "REGISTER"), ("pool", pool)],
        )
    };
    let dc2 = pool_ids(&site.farm, "dc2-");
    for aor in users(20, "contoso.com") {
        let (status, reached) = site.register(&aor);
        assert_eq!(status, 200);
        assert!(
            reached.as_ref().is_some_and(|id| dc2.contains(id)),
            "{aor} reached {reached:?} while {DC1} is failed over to {DC2}"
        );
    }
    // Requests are counted for the pool they went to.
    let after = ops.metrics();
    assert_eq!(
        (
            registers_to(&after, DC2) - registers_to(&m, DC2),
            registers_to(&after, DC1) - registers_to(&m, DC1)
        ),
        (20.0, 0.0),
        "REGISTERs counted for ({DC2}, {DC1}) while failed over:\n{}",
        after.text
    );

    ops.admin_ok(&format!("/admin/pools/{DC1}/failback"), TOKEN);
    let s = ops.status();
    assert_eq!(s.serving(DC1), DC1);
    assert_eq!(s.pool(DC1)["operator_failover"], false);
    let m = ops.metrics();
    assert_eq!(gauge(&m, "siplb_pool_failed_over", &[("pool", DC1)]), 0.0);
    assert!(m.sum("siplb_table_swaps_total", &[]) >= 3.0, "{}", m.text);
    assert_eq!(
        site.register("user00000@contoso.com").1.as_deref(),
        Some("dc1-fe1")
    );
}

#[test]
fn route_names_the_server_a_request_reaches() {
    let (mut site, ops) = site(Some(TOKEN));
    let aors = users(40, "contoso.com");

    // /route for METHOD and AOR: the server it names (checking the rest of the answer).
    let named = |site: &Testbed, method: &str, aor: &str, when: &str, serving: &str| {
        let r = ops.route(method, &format!("sip:{aor}"));
        assert_eq!(r.status, 200, "{when}: /route {method} {aor}: {r:?}");
        let doc = r.json();
        assert_eq!(doc["routed"], true, "{doc}");
        assert_eq!(doc["home"], DC1, "{doc}");
        assert_eq!(doc["serving"], serving, "{when}: {doc}");
        let key = if method == "REGISTER" {
            "to-aor"
        } else {
            "from-aor"
        };
        assert_eq!(doc["key"], key, "{doc}");
        let id = doc["server"]["id"].as_str().unwrap_or_default().to_string();
        let address = site.farm.get(&id).addr().to_string();
        assert_eq!(doc["server"]["address"].as_str(), Some(address.as_str()));
        assert_eq!(doc["server"]["transport"], "udp");
        id
    };
    let check = |site: &mut Testbed, when: &str, serving: &str| {
        for aor in &aors {
            let id = named(site, "REGISTER", aor, when, serving);
            let (status, reached) = site.register(aor);
            assert_eq!(status, 200);
            assert_eq!(
                reached.as_deref(),
                Some(id.as_str()),
                "{when}: /route names {id} for REGISTER {aor}, it reached {reached:?}"
            );
        }
        // An INVITE is keyed on its From: the caller's server.
        for aor in aors.iter().step_by(4) {
            let id = named(site, "INVITE", aor, when, serving);
            let invite = Request::invite(aor, "bob@contoso.com");
            let answer = site.client.transact(site.siplb.addr(), &invite);
            assert_eq!(answer.status(), Some(200));
            let reached = site.farm.holder(&invite.call_id()).id();
            assert_eq!(
                reached, id,
                "{when}: /route names {id} for INVITE from {aor}, it reached {reached}"
            );
        }
    };
    check(&mut site, "all up", DC1);

    // Drain the server of the first user: /route and the wire move together.
    let first = ops.route("REGISTER", &format!("sip:{}", aors[0])).json();
    let id = first["server"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ops.admin_ok(&format!("/admin/servers/{id}/drain"), TOKEN);
    check(&mut site, &format!("{id} drained"), DC1);

    ops.admin_ok(&format!("/admin/pools/{DC1}/failover"), TOKEN);
    check(&mut site, "failed over", DC2);

    // A request no route takes: 422, and the wire answers 404.
    let r = ops.route("REGISTER", "sip:bob@fabrikam.com");
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["routed"], false, "{}", r.body);
    assert_eq!(site.register("bob@fabrikam.com"), (404, None));
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_count_registers_responses_drops_and_health() {
    let (mut site, ops) = site(None);
    // Probes answered first, so the RTT histogram has samples.
    ops.wait_status("every server probed", |s| {
        site.farm
            .backends
            .iter()
            .all(|b| s.server(b.id())["last_probe"] == "answered 200")
    });
    let before = ops.metrics();

    const N: usize = 150;
    for aor in users(N, "contoso.com") {
        assert_eq!(site.register(&aor).0, 200);
    }
    let received: usize = site
        .farm
        .backends
        .iter()
        .map(|b| b.count_method("REGISTER"))
        .sum();
    assert_eq!(received, N, "each REGISTER reached a server once");

    let m = ops.metrics();
    let delta =
        |name: &str, labels: &[(&str, &str)]| m.sum(name, labels) - before.sum(name, labels);
    assert_eq!(
        delta(
            "siplb_requests_total",
            &[("method", "REGISTER"), ("pool", DC1)]
        ),
        N as f64,
        "{}",
        m.text
    );
    assert_eq!(
        delta("siplb_requests_total", &[("method", "REGISTER")]),
        N as f64,
        "REGISTERs counted for another pool:\n{}",
        m.text
    );
    assert_eq!(
        delta("siplb_responses_total", &[("class", "2xx")]),
        N as f64
    );

    // siplb's own answer: a domain no route takes.
    assert_eq!(site.register("bob@fabrikam.com"), (404, None));
    // A datagram that is not SIP is dropped and counted.
    site.client.send_raw(
        site.siplb.addr(),
        b"\x16\x03\x01 definitely not SIP\r\n\r\n",
    );
    let m = wait_until(
        "a 404 reply and a malformed drop counted",
        SHOWS_WITHIN,
        || {
            let m = ops.metrics();
            let replied = m.sum("siplb_replies_total", &[("code", "404")]);
            let dropped = m.sum("siplb_drops_total", &[("reason", "malformed")]);
            if replied == 1.0 && dropped == 1.0 {
                Ok(m)
            } else {
                Err(format!("404 replies {replied}, malformed drops {dropped}"))
            }
        },
    );
    assert_eq!(m.sum("siplb_drops_total", &[]), 1.0, "{}", m.text);

    for pool in [DC1, DC2, MED] {
        assert_eq!(m.value("siplb_pool_up", &[("pool", pool)]), Some(1.0));
        assert_eq!(
            m.value("siplb_pool_failed_over", &[("pool", pool)]),
            Some(0.0)
        );
    }
    for b in &site.farm.backends {
        let up = m.sum("siplb_server_up", &[("server", b.id())]);
        assert_eq!(up, 1.0, "siplb_server_up for {}", b.id());
    }

    // The probe RTT histogram: cumulative buckets ending in +Inf = count, per pool.
    for pool in [DC1, DC2, MED] {
        let count = m.sum("siplb_probe_rtt_seconds_count", &[("pool", pool)]);
        assert!(count > 0.0, "no probe RTT for {pool}:\n{}", m.text);
        let inf = m.value(
            "siplb_probe_rtt_seconds_bucket",
            &[("pool", pool), ("le", "+Inf")],
        );
        assert_eq!(inf, Some(count), "+Inf bucket of {pool}");
        let mut buckets: Vec<(f64, f64)> = m
            .samples
            .iter()
            .filter(|s| s.name == "siplb_probe_rtt_seconds_bucket")
            .filter(|s| s.labels.get("pool").map(String::as_str) == Some(pool))
            .filter_map(|s| Some((parse_le(s.labels.get("le")?)?, s.value)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "buckets of {pool} are not cumulative: {buckets:?}"
        );
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

#[test]
fn metric_labels_never_name_a_user_a_call_or_a_client() {
    let (mut site, ops) = site(None);
    let user = "zebra7f3a";
    let call_id = "callid-0d15ea5e-private";
    let mut stranger = Client::bind("127.0.0.9");

    let register = Request::register(&format!("{user}@contoso.com")).set("Call-ID", call_id);
    assert_eq!(
        site.client.transact(site.siplb.addr(), &register).status(),
        Some(200)
    );
    // An extension method, from another address, for a user of the Mediation pool.
    let odd = Request::new(
        "XPRIVATEMETHOD",
        "sip:pstn.contoso.com",
        &format!("{user}@pstn.contoso.com"),
        "gw@pstn.contoso.com",
    )
    .set("Call-ID", &format!("{call_id}-2"));
    stranger.transact(site.siplb.addr(), &odd);
    // Refused requests: no route, and a garbage datagram.
    let lost = Request::register(&format!("{user}@fabrikam.com"));
    assert_eq!(
        site.client.transact(site.siplb.addr(), &lost).status(),
        Some(404)
    );
    stranger.send_raw(
        site.siplb.addr(),
        format!("{user} {call_id}\r\n\r\n").as_bytes(),
    );

    let m = wait_until("the garbage datagram counted", SHOWS_WITHIN, || {
        let m = ops.metrics();
        match m.sum("siplb_drops_total", &[]) {
            d if d >= 1.0 => Ok(m),
            d => Err(format!("{d} drops")),
        }
    });
    let private = [
        user.to_string(),
        call_id.to_string(),
        "XPRIVATEMETHOD".to_string(),
        "fabrikam".to_string(),
        "127.0.0.9".to_string(),
        CLIENT_SENT_BY.to_string(),
        site.client.addr().to_string(),
        stranger.addr().to_string(),
    ];
    for line in m.text.lines() {
        for p in &private {
            assert!(
                !line.contains(p.as_str()),
                "metric line names {p:?}: {line}"
            );
        }
    }

    // Every label comes from a fixed list or the config.
    let methods: BTreeSet<&str> = [
        "REGISTER",
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "SUBSCRIBE",
        "NOTIFY",
        "BENOTIFY",
        "SERVICE",
        "MESSAGE",
        "INFO",
        "REFER",
        "PRACK",
        "UPDATE",
        "PUBLISH",
        "other",
    ]
    .into();
    let pools: BTreeSet<&str> = [DC1, DC2, MED].into();
    let servers: BTreeSet<&str> = site.farm.backends.iter().map(|b| b.id()).collect();
    let fixed: [(&str, &str, &BTreeSet<&str>); 4] = [
        ("siplb_requests_total", "method", &methods),
        ("siplb_requests_total", "pool", &pools),
        ("siplb_server_up", "server", &servers),
        ("siplb_pool_up", "pool", &pools),
    ];
    for (name, label, allowed) in fixed {
        for v in m.label_values(name, label) {
            assert!(
                allowed.contains(v.as_str()),
                "{name}{{{label}={v:?}}} is not a fixed value"
            );
        }
    }
    let other = m.sum(
        "siplb_requests_total",
        &[("method", "other"), ("pool", MED)],
    );
    assert_eq!(
        other, 1.0,
        "the extension method counts as `other`:\n{}",
        m.text
    );
}
