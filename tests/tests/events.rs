//! The event list of `/status` as an operator reads it after things happen to the built siplb:
//! a server stopped (its probes time out and mark it down), an operator's drain, a config
//! reload refused and one applied. Each shows as one event with its kind, pool, server and
//! reason, newest first, and the page lists the same.

use serde_json::Value;
use siplb_e2e::config::{Health, Pool};
use siplb_e2e::ops::Ops;
use siplb_e2e::reload::write_in_place;
use siplb_e2e::{Behaviour, Config, Farm, Route, Siplb};

const TOKEN: &str = "events-admin-token";

fn events(ops: &Ops) -> Vec<Value> {
    ops.status().0["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the newest event is of `kind`; returns the list.
fn wait_newest(ops: &Ops, kind: &str) -> Vec<Value> {
    let s = ops.wait_status(&format!("a newest event of kind {kind}"), |s| {
        s.0["events"][0]["kind"] == kind
    });
    s.0["events"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_server_down_a_drain_and_reloads_refused_and_applied_are_events_newest_first() {
    let mut farm = Farm::pools(&[("a", 3)], Behaviour::Accept);
    let config = |servers| {
        Config::new()
            // A stopped server fails its probes at once (ICMP port unreachable); the timeout is
            // long so that a busy machine makes no server time out by accident.
            .health(Health::options("500ms", "400ms", 2, 2))
            .ops()
            .pool_with(Pool::new("fe", servers))
            .route(Route::to("fe"))
            .render()
    };
    let siplb = Siplb::start_with_env(
        &config(farm.servers_of("a")),
        &[("SIPLB_ADMIN_TOKEN", TOKEN)],
    );
    let ops = Ops::of(&siplb);
    assert_eq!(events(&ops), Vec::<Value>::new(), "nothing happened yet");

    farm.get_mut("a1").stop();
    let list = wait_newest(&ops, "health");
    let down = &list[0];
    assert_eq!(
        (down["pool"].as_str(), down["server"].as_str()),
        (Some("fe"), Some("a1"))
    );
    let message = down["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("up → down: 2 probes in a row failed"),
        "{message}"
    );

    ops.admin_ok("/admin/servers/a2/drain", TOKEN);
    let list = wait_newest(&ops, "drain");
    assert_eq!(list[0]["server"], "a2");
    assert_eq!(list[0]["message"], "operator drain: up → drained");

    write_in_place(siplb.config().path(), "[listen]\nudp = 5060\n");
    ops.wait_last_error();
    let list = wait_newest(&ops, "reload");
    let refused = list[0]["message"].as_str().unwrap_or_default();
    assert!(refused.starts_with("reload refused: "), "{refused}");
    assert_eq!(list[0]["pool"], Value::Null);

    let without_a3: Vec<_> = farm
        .servers_of("a")
        .into_iter()
        .filter(|s| s.id != "a3")
        .collect();
    write_in_place(siplb.config().path(), &config(without_a3));
    ops.wait_config_version(2);
    let list = ops
        .wait_status("the applied reload on top", |s| {
            s.0["events"][0]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("config reload:"))
        })
        .0["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        list[0]["message"],
        "config reload: 0 servers added, 1 removed, 2 servers in 1 pool"
    );
    let kinds: Vec<&str> = list.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["reload", "reload", "drain", "health"],
        "newest first: {list:#?}"
    );
    assert_eq!(list[3]["server"], "a1");

    // The page lists them too.
    let page = ops.get("/");
    assert_eq!(page.status, 200);
    for needle in [
        "recent events",
        "operator drain: up → drained",
        "reload refused: ",
        "up → down: 2 probes in a row failed",
    ] {
        assert!(page.body.contains(needle), "{needle:?} not on the page");
    }
}
