//! Hot reload of the config file, against the real binary with real SIP traffic (DESIGN.md
//! "Data flow" and "Invariants": a reload never drops a message and never resets health):
//!
//! - a new file is picked up without a restart whether it is written **in place**, **renamed**
//!   over the old one, or published as a Kubernetes **ConfigMap** `..data` symlink swap — twice
//!   in a row each, so the watcher keeps watching after the first change; a change published
//!   right after `ready` is not lost; a write that leaves the content as it was is not a reload;
//! - **SIGHUP** reloads (and does not stop the process);
//! - **adding a server** to a pool of three moves about a quarter of 4,000 users, every one of
//!   them to the new server;
//! - a drained and a down server **keep their state** (and its `since`) across an unrelated
//!   config change; a server or pool removed from the config leaves `/metrics`;
//! - a **broken file** (bad TOML; an unknown pool in a route) changes nothing on the wire, shows
//!   in `/status` `config.last_error` with the line and key, counts as
//!   `siplb_config_reloads_total{result="error"}`, and the **repaired file** clears it;
//!   `POST /admin/reload` of a broken file answers 422 with the errors;
//! - a UDP listener added to `[listen] udp` is bound live and routes requests; removed, it is
//!   closed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use siplb_e2e::config::Health;
use siplb_e2e::farm::{assert_near, users};
use siplb_e2e::health::wait_server;
use siplb_e2e::ops::{wait_until, Ops, SHOWS_WITHIN};
use siplb_e2e::placement::moved;
use siplb_e2e::ports::{free_udp_port, udp_port_is_free};
use siplb_e2e::process::ConfigFile;
use siplb_e2e::reload::{
    configmap, configmap_swap, replace_by_rename, replace_line, sighup, with_udp, write_in_place,
};
use siplb_e2e::{Behaviour, Config, Farm, Route, Server, Siplb, Testbed};

const TOKEN: &str = "reload-e2e-token";

/// `farm` behind a siplb started on `text` (with the admin token), a client, and the ops
/// endpoint.
fn site(farm: Farm, text: &str) -> (Testbed, Ops) {
    Testbed::with_ops(
        farm,
        Siplb::start_with_env(text, &[("SIPLB_ADMIN_TOKEN", TOKEN)]),
    )
}

/// The config file siplb runs with.
fn path(tb: &Testbed) -> &Path {
    tb.siplb.config().path()
}

/// Registers `aor` through siplb's listener `to`, which must answer 200; returns the id of
/// the server it reached.
fn register_via(tb: &mut Testbed, to: SocketAddr, aor: &str) -> String {
    match tb.register_via(to, aor) {
        (200, Some(id)) => id,
        other => panic!("REGISTER {aor} through {to}: {other:?}"),
    }
}

/// Asserts that the users of `aors` all reach servers whose ids start with `prefix`.
fn assert_users_reach(tb: &mut Testbed, aors: &[String], prefix: &str, when: &str) {
    for aor in aors {
        let got = register_via(tb, tb.siplb.addr(), aor);
        assert!(
            got.starts_with(prefix),
            "{when}: {aor} reached {got}, expected a server {prefix}*"
        );
    }
}

/// `siplb_config_reloads_total{result}` now.
fn reloads(ops: &Ops, result: &str) -> f64 {
    ops.metrics()
        .sum("siplb_config_reloads_total", &[("result", result)])
}

/// Pools `a` (a1, a2) and `b` (b1, b2); the one route goes to `to`.
fn routed_to(farm: &Farm, to: &str) -> String {
    Config::new()
        .ops()
        .pool("a", farm.servers_of("a"))
        .pool("b", farm.servers_of("b"))
        .route(Route::to(to).domain("contoso.com"))
        .render()
}

fn two_pools() -> Farm {
    Farm::pools(&[("a", 2), ("b", 2)], Behaviour::Accept)
}

// ---------------------------------------------------------------------------------------------
// How a new file arrives

/// With siplb running the config routing to `a`, publishes the config routing to `b`, then the
/// one routing to `a` again, with `publish`; each must take effect without a restart.
fn each_publication_takes_effect(mut tb: Testbed, ops: Ops, publish: impl Fn(&Testbed, &str)) {
    let aors = users(12, "contoso.com");
    let pid = tb.siplb.pid();
    assert_users_reach(&mut tb, &aors, "a", "version 1");
    for (version, to) in [(2, "b"), (3, "a")] {
        publish(&tb, &routed_to(&tb.farm, to));
        let status = ops.wait_config_version(version);
        assert_eq!(status.last_error(), None, "{}", status.0);
        assert_users_reach(&mut tb, &aors, to, &format!("version {version}"));
    }
    assert!(tb.siplb.is_alive(), "siplb exited");
    assert_eq!(tb.siplb.pid(), pid);
    assert_eq!(reloads(&ops, "ok"), 2.0);
    assert_eq!(reloads(&ops, "error"), 0.0);
}

#[test]
fn a_file_written_in_place_is_reloaded() {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (tb, ops) = site(farm, &text);
    each_publication_takes_effect(tb, ops, |tb, text| write_in_place(path(tb), text));
}

#[test]
fn a_file_renamed_over_the_config_is_reloaded() {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (tb, ops) = site(farm, &text);
    each_publication_takes_effect(tb, ops, |tb, text| replace_by_rename(path(tb), text));
}

#[test]
fn a_configmap_symlink_swap_is_reloaded() {
    let farm = two_pools();
    let config: ConfigFile = configmap(&routed_to(&farm, "a"));
    let siplb = Siplb::start_with_file(config, &[]);
    let (tb, ops) = Testbed::with_ops(farm, siplb);
    assert!(
        std::fs::symlink_metadata(path(&tb)).is_ok_and(|m| m.file_type().is_symlink()),
        "the config path is a symlink"
    );
    each_publication_takes_effect(tb, ops, |tb, text| {
        configmap_swap(tb.siplb.config(), text);
    });
}

#[test]
fn a_change_published_just_after_ready_is_not_lost() {
    // `ready` means the watcher is on: a file changed a moment later must still be reloaded,
    // or siplb runs a config that is no longer the one on disk until the next change. Twenty
    // fresh starts, each changed at once.
    let farm = two_pools();
    let (v1, v2) = (routed_to(&farm, "a"), routed_to(&farm, "b"));
    for attempt in 1..=20 {
        let siplb = Siplb::start(&v1);
        replace_by_rename(siplb.config().path(), &v2);
        let ops = Ops::of(&siplb);
        let status = wait_until(
            &format!("start {attempt}: the change made right after `ready` to be reloaded"),
            Duration::from_secs(3),
            || {
                let s = ops.status();
                match s.config_version() {
                    2 => Ok(s),
                    v => Err(format!(
                        "config version {v}, last_error {:?}",
                        s.last_error()
                    )),
                }
            },
        );
        assert_eq!(status.last_error(), None);
    }
}

#[test]
fn rewriting_the_same_content_is_not_a_reload() {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (mut tb, ops) = site(farm, &text);
    replace_by_rename(path(&tb), &text);
    write_in_place(path(&tb), &text);
    // An absence can only be shown by waiting: well past the watcher's debounce, then a real
    // change, which must be the first reload.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ops.status().config_version(), 1);
    replace_by_rename(path(&tb), &routed_to(&tb.farm, "b"));
    ops.wait_config_version(2);
    assert_eq!(reloads(&ops, "ok"), 1.0);
    assert_users_reach(&mut tb, &users(5, "contoso.com"), "b", "after the change");
}

#[test]
fn sighup_reloads_the_config() {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (mut tb, ops) = site(farm, &text);
    let aors = users(12, "contoso.com");
    assert_users_reach(&mut tb, &aors, "a", "before SIGHUP");

    // The file is unchanged, so only the signal can cause this reload.
    sighup(tb.siplb.pid());
    let status = ops.wait_config_version(2);
    assert_eq!(status.last_error(), None);
    assert!(tb.siplb.is_alive(), "SIGHUP stopped siplb");
    assert_eq!(ops.get("/healthz").status, 200);
    assert_users_reach(&mut tb, &aors, "a", "after SIGHUP");
    assert_eq!(reloads(&ops, "ok"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// What a valid reload keeps

#[test]
fn adding_a_server_moves_a_quarter_of_the_users_all_to_it() {
    let farm = Farm::start("fe", 4, Behaviour::Accept);
    let three: Vec<Server> = farm.servers().into_iter().take(3).collect();
    let config = |servers: Vec<Server>| {
        Config::new()
            .ops()
            .pool("fe", servers)
            .route(Route::to("fe"))
            .render()
    };
    let (mut tb, ops) = site(farm, &config(three));
    let aors = users(4_000, "contoso.com");
    let before = tb.sweep(&aors);
    assert!(
        before.values().all(|s| s != "fe4"),
        "fe4 is not configured yet"
    );

    replace_by_rename(path(&tb), &config(tb.farm.servers()));
    ops.wait_config_version(2);
    let after = tb.sweep(&aors);

    let moved = moved(&before, &after);
    let elsewhere: Vec<_> = moved
        .iter()
        .filter(|(_, (_, now))| now != "fe4")
        .take(10)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "users moved between the old servers: {elsewhere:?}"
    );
    let on_fe4 = after.values().filter(|s| *s == "fe4").count();
    assert_eq!(on_fe4, moved.len(), "every user on fe4 moved there");
    eprintln!("{} of {} users moved to fe4", moved.len(), aors.len());
    assert_near("users moved to fe4", moved.len(), 1_000.0, 0.15);
}

#[test]
fn a_drained_and_a_down_server_keep_their_state_across_a_reload() {
    let farm = Farm::start("fe", 3, Behaviour::Accept);
    let config = |extra_route: bool| {
        let mut c = Config::new()
            .ops()
            .health(Health::options("100ms", "100ms", 2, 1))
            .pool("fe", farm.servers())
            .route(Route::to("fe").domain("contoso.com"));
        if extra_route {
            // Unrelated to fe: a route for another domain.
            c = c.route(Route::to("fe").domain("fabrikam.com").methods(&["INVITE"]));
        }
        c.render()
    };
    let (v1, v2) = (config(false), config(true));
    let (mut tb, ops) = site(farm, &v1);
    ops.admin_ok("/admin/servers/fe2/drain", TOKEN);
    tb.farm.get_mut("fe3").stop();
    wait_server(&ops, "fe3", "down");
    let before = ops.status();

    replace_by_rename(path(&tb), &v2);
    let after = ops.wait_config_version(2);
    assert_eq!(after.last_error(), None);
    for (id, state) in [("fe1", "up"), ("fe2", "drained"), ("fe3", "down")] {
        let (was, now) = (before.server(id), after.server(id));
        assert_eq!(now["state"], state, "{id} after the reload: {now}");
        assert_eq!(
            now["since"], was["since"],
            "{id}'s state was reset by the reload: before {was}, after {now}"
        );
    }
    let m = ops.metrics();
    for (id, up) in [("fe1", 1.0), ("fe2", 0.0), ("fe3", 0.0)] {
        assert_eq!(
            m.value("siplb_server_up", &[("pool", "fe"), ("server", id)]),
            Some(up),
            "siplb_server_up for {id}"
        );
    }
    // Every user goes to the one server that is up and not drained.
    assert_users_reach(
        &mut tb,
        &users(30, "contoso.com"),
        "fe1",
        "after the reload",
    );
}

#[test]
fn servers_and_pools_removed_by_a_reload_leave_the_metrics() {
    // A gauge left behind for a decommissioned server keeps its last value forever: a `0`
    // keeps a "server down" alert firing, a `1` shows capacity that is gone.
    let farm = Farm::pools(&[("fe", 3), ("spare", 1)], Behaviour::Accept);
    let config = |fe: Vec<Server>, spare: bool| {
        let mut c = Config::new()
            .ops()
            .health(Health::options("100ms", "100ms", 2, 1))
            .pool("fe", fe);
        if spare {
            c = c.pool("spare", farm.servers_of("spare"));
        }
        c.route(Route::to("fe")).render()
    };
    let (v1, v2) = (
        config(farm.servers_of("fe"), true),
        config(farm.servers_of("fe").into_iter().take(2).collect(), false),
    );
    let (mut tb, ops) = site(farm, &v1);
    tb.farm.get_mut("fe3").stop();
    wait_server(&ops, "fe3", "down");
    let m = ops.metrics();
    assert_eq!(m.value("siplb_server_up", &[("server", "fe3")]), Some(0.0));
    assert_eq!(m.value("siplb_pool_up", &[("pool", "spare")]), Some(1.0));

    replace_by_rename(path(&tb), &v2);
    let status = ops.wait_config_version(2);
    let pools: Vec<&str> = status
        .pools()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(pools, ["fe"], "{}", status.0);
    wait_until(
        "the removed server and pool to leave /metrics",
        SHOWS_WITHIN,
        || {
            let m = ops.metrics();
            let left: Vec<String> = m
                .samples
                .iter()
                .filter(|s| {
                    s.labels
                        .get("server")
                        .is_some_and(|v| v == "fe3" || v == "spare1")
                        || s.labels.get("pool").is_some_and(|v| v == "spare")
                })
                .filter(|s| {
                    s.name.starts_with("siplb_server_up") || s.name.starts_with("siplb_pool_")
                })
                .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still exported: {left:?}"))
            }
        },
    );
    let m = ops.metrics();
    for id in ["fe1", "fe2"] {
        assert_eq!(
            m.value("siplb_server_up", &[("pool", "fe"), ("server", id)]),
            Some(1.0)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Broken files

/// Starts on the config routing to `a`, publishes `broken` (which must be refused with an error
/// naming `line` and `key`), checks nothing changed, then publishes the config routing to `b`
/// and checks it is taken and clears the error.
fn broken_file_is_refused_until_repaired(broken: impl Fn(&Farm) -> (String, usize), key: &str) {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (mut tb, ops) = site(farm, &text);
    let aors = users(300, "contoso.com");
    let before = tb.sweep(&aors);

    let (broken, line) = broken(&tb.farm);
    replace_by_rename(path(&tb), &broken);
    let error = ops.wait_last_error();
    let file = path(&tb).display().to_string();
    assert!(
        error.contains(&format!("{file}:{line}: {key}")),
        "last_error does not name {file} line {line} key {key}: {error:?}"
    );
    let status = ops.status();
    assert_eq!(status.config_version(), 1, "the running config stays");
    assert_eq!(reloads(&ops, "error"), 1.0);
    assert_eq!(reloads(&ops, "ok"), 0.0);
    // The wire did not change: every user reaches the same server as before.
    let during = tb.sweep(&aors);
    assert_eq!(moved(&before, &during).len(), 0, "users moved");
    assert_eq!(ops.get("/readyz").status, 200);

    replace_by_rename(path(&tb), &routed_to(&tb.farm, "b"));
    let status = ops.wait_config_version(2);
    assert_eq!(
        status.last_error(),
        None,
        "the repaired file clears last_error"
    );
    assert_eq!(reloads(&ops, "ok"), 1.0);
    assert_users_reach(&mut tb, &aors[..10], "b", "after the repair");
}

#[test]
fn a_file_with_bad_toml_is_refused_until_repaired() {
    // An unquoted duration: the TOML does not parse.
    broken_file_is_refused_until_repaired(
        |farm| {
            replace_line(
                &routed_to(farm, "a"),
                "timeout = \"150ms\"",
                "timeout = 150ms",
            )
        },
        "health.timeout",
    );
}

#[test]
fn a_route_to_an_unknown_pool_is_refused_until_repaired() {
    broken_file_is_refused_until_repaired(
        |farm| replace_line(&routed_to(farm, "a"), "pool = \"a\"", "pool = \"nope\""),
        "route[0].pool",
    );
}

#[test]
fn admin_reload_of_a_broken_file_answers_422_with_the_errors() {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (tb, ops) = site(farm, &text);
    let (broken, line) = replace_line(&text, "pool = \"a\"", "pool = \"nope\"");
    write_in_place(path(&tb), &broken);

    let r = ops.admin("/admin/reload", Some(TOKEN));
    assert_eq!(r.status, 422, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false, "{}", r.body);
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    let expected = format!("{}:{line}: route[0].pool", path(&tb).display());
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&expected) && e.contains("nope")),
        "no error naming {expected} and the pool: {}",
        r.body
    );
    assert_eq!(ops.status().config_version(), 1);
}

// ---------------------------------------------------------------------------------------------
// Listeners

#[test]
fn a_udp_listener_is_added_and_removed_live() {
    let farm = two_pools();
    let text = routed_to(&farm, "a");
    let (mut tb, ops) = site(farm, &text);
    let first = tb.siplb.addr();
    let port = free_udp_port();
    let second: SocketAddr = ([127, 0, 0, 1], port).into();
    let via_first = register_via(&mut tb, first, "alice@contoso.com");
    assert_eq!(ops.status().listen_udp(), vec![first.to_string()]);

    replace_by_rename(
        path(&tb),
        &with_udp(&text, &["127.0.0.1:0", &second.to_string()]),
    );
    let status = ops.wait_config_version(2);
    assert_eq!(status.last_error(), None, "{}", status.0);
    let listening: BTreeSet<String> = status.listen_udp().into_iter().collect();
    assert_eq!(
        listening,
        [first.to_string(), second.to_string()].into(),
        "{}",
        status.0
    );
    assert!(!udp_port_is_free(port), "nothing holds {second}");
    // The new listener routes, and to the same server for one user.
    assert_eq!(register_via(&mut tb, first, "alice@contoso.com"), via_first);
    let via_second = register_via(&mut tb, second, "alice@contoso.com");
    assert_eq!(via_first, via_second);

    replace_by_rename(path(&tb), &text);
    let status = ops.wait_config_version(3);
    assert_eq!(status.listen_udp(), vec![first.to_string()]);
    wait_until(&format!("{second} closed"), SHOWS_WITHIN, || {
        if udp_port_is_free(port) {
            Ok(())
        } else {
            Err(format!("something still holds {second}"))
        }
    });
    assert_eq!(register_via(&mut tb, first, "alice@contoso.com"), via_first);
}
