//! Mistakes in references between pools, routes and pairs, and in uniqueness: each test
//! asserts the exact line, the dotted key and that the message says what is accepted.

use super::*;

// ---- references and pairs -------------------------------------------------------------------

#[test]
fn unknown_pool_in_a_route() {
    let e = only_error(&MINIMAL.replace("pool = \"a\"", "pool = \"fe-dc3\""));
    assert_error(
        &e,
        9,
        "route[0].pool",
        &["unknown pool \"fe-dc3\"; defined pools: a"],
    );
    let e = only_error(&MINIMAL.replace("pool = \"a\"", "pools = [\"a\", \"fe-dc3\"]"));
    assert_error(
        &e,
        9,
        "route[0].pools[1]",
        &["unknown pool \"fe-dc3\"; defined pools: a"],
    );
}

#[test]
fn unknown_pool_in_a_pair() {
    let e = only_error(&MINIMAL.replace("name = \"a\"", "name = \"a\"\npair = \"b\""));
    assert_error(
        &e,
        6,
        "pool[0].pair",
        &["unknown pool \"b\"; defined pools: a"],
    );
}

/// Two pools `a` (lines 4–7) and `b` (lines 12–15), each with a `pair` line to edit.
const PAIRED: &str = r#"[listen]
udp = ["127.0.0.1:5060"]

[[pool]]
name = "a"
pair = "b"
servers = [{ address = "127.0.0.1:5071" }]

[[route]]
pool = "a"

[[pool]]
name = "b"
pair = "a"
servers = [{ address = "127.0.0.1:5081" }]
"#;

#[test]
fn a_symmetric_pair_is_accepted() {
    let cfg = ok(PAIRED);
    assert_eq!(cfg.pools[0].pair.as_deref(), Some("b"));
    assert_eq!(cfg.pools[1].pair.as_deref(), Some("a"));
}

#[test]
fn pair_not_symmetric() {
    let e = only_error(&PAIRED.replace("pair = \"a\"\n", ""));
    assert_error(
        &e,
        6,
        "pool[0].pair",
        &[
            "pool \"b\" (line 13) has no pair",
            "pairs are symmetric: set pair = \"a\" in pool \"b\"",
        ],
    );
}

#[test]
fn pair_to_itself() {
    // `a` loses its pair line, so `b`'s moves up to line 13.
    let text = PAIRED
        .replace("pair = \"b\"\n", "")
        .replace("pair = \"a\"", "pair = \"b\"");
    let e = only_error(&text);
    assert_error(
        &e,
        13,
        "pool[1].pair",
        &["cannot pair with itself", "defined pools: a, b"],
    );
}

#[test]
fn pair_with_a_different_role() {
    let e = only_error(&PAIRED.replace("name = \"b\"", "name = \"b\"\nrole = \"edge\""));
    assert_error(
        &e,
        6,
        "pool[0].pair",
        &[
            "\"a\" is front-end but its pair \"b\" is edge",
            "a pool of the same role",
        ],
    );
}

#[test]
fn a_route_over_pools_of_different_roles() {
    let text = PAIRED
        .replace("pair = \"b\"\n", "")
        .replace("pair = \"a\"\n", "")
        .replace("pool = \"a\"", "pools = [\"a\", \"b\"]");
    assert_eq!(ok(&text).routes[0].pools, ["a", "b"]);
    let e = only_error(&text.replace("name = \"b\"", "name = \"b\"\nrole = \"mediation\""));
    assert_error(
        &e,
        9,
        "route[0].pools[1]",
        &[
            "route[0] spreads users over pools of different roles",
            "\"a\" is front-end and \"b\" is mediation",
            "list pools of one role",
        ],
    );
}

#[test]
fn duplicate_pool_name() {
    let e = only_error(&plus(
        "\n[[pool]]\nname = \"a\"\nservers = [{ address = \"127.0.0.1:5081\" }]\n",
    ));
    assert_error(
        &e,
        12,
        "pool[1].name",
        &["already defined at line 5", "must be unique"],
    );
}

#[test]
fn bad_pool_name() {
    let text = MINIMAL.replace("\"a\"", "\"fe dc1\"");
    let e = only_error(&text);
    assert_error(
        &e,
        5,
        "pool[0].name",
        &["letters, digits, '.', '_' and '-'"],
    );
}

#[test]
fn duplicate_server_id_across_pools() {
    let e = only_error(&plus(
        "\n[[pool]]\nname = \"b\"\n\
         servers = [{ address = \"127.0.0.1:5081\", id = \"127.0.0.1:5071\" }]\n",
    ));
    assert_error(
        &e,
        13,
        "pool[1].servers[0].id",
        &[
            "already used by pool[0].servers[0].address (line 6)",
            "unique across all pools",
        ],
    );
}

#[test]
fn bad_server_id() {
    let e = only_error(&MINIMAL.replace("5071\" }", "5071\", id = \"fe/1\" }"));
    assert_error(&e, 6, "pool[0].servers[0].id", &["without spaces or '/'"]);
}

#[test]
fn duplicate_server_address_across_pools() {
    let e = only_error(&plus(
        "\n[[pool]]\nname = \"b\"\nservers = [{ address = \"127.0.0.1:5071\", id = \"b1\" }]\n",
    ));
    assert_error(
        &e,
        13,
        "pool[1].servers[0].address",
        &[
            "127.0.0.1:5071 is already used by pool[0].servers[0].address (line 6)",
            "only once",
        ],
    );
}

#[test]
fn duplicate_address_with_a_defaulted_id_is_one_mistake() {
    let e = only_error(&plus(
        "\n[[pool]]\nname = \"b\"\nservers = [{ address = \"127.0.0.1:5071\" }]\n",
    ));
    assert_error(
        &e,
        13,
        "pool[1].servers[0].address",
        &["already used by pool[0].servers[0]"],
    );
}

#[test]
fn duplicate_table() {
    let e = only_error(&plus("[health]\nfall = 2\n[health]\nrise = 2\n"));
    assert_error(&e, 12, "health", &["duplicate key", "defined only once"]);
}

#[test]
fn duplicate_listener() {
    let e = only_error(&MINIMAL.replace(
        "[\"127.0.0.1:5060\"]",
        "[\"127.0.0.1:5060\", \"127.0.0.1:5060\"]",
    ));
    assert_error(
        &e,
        2,
        "listen.udp[1]",
        &["already used by listen.udp[0] (line 2)"],
    );
}

#[test]
fn a_server_needs_a_udp_listener_of_its_address_family() {
    let e = only_error(&MINIMAL.replace("127.0.0.1:5071", "[::1]:5071"));
    assert_error(
        &e,
        6,
        "pool[0].servers[0].address",
        &[
            "server \"[::1]:5071\" of pool \"a\" has the IPv6 address [::1]:5071",
            "no [listen] udp address is IPv6",
            "add an IPv6 UDP listener to [listen] udp (e.g. \"[::]:5060\")",
        ],
    );
    let e = only_error(&MINIMAL.replace("127.0.0.1:5060", "[::1]:5060"));
    assert_error(
        &e,
        6,
        "pool[0].servers[0].address",
        &["IPv4 address 127.0.0.1:5071", "(e.g. \"0.0.0.0:5060\")"],
    );
    let both = MINIMAL
        .replace("\"127.0.0.1:5060\"", "\"127.0.0.1:5060\", \"[::1]:5060\"")
        .replace("127.0.0.1:5071", "[::1]:5071");
    ok(&both);
}
