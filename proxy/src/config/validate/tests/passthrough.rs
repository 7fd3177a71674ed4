//! `[listen] passthrough`: the accepted forms, the defaults, and each mistake with its line, key
//! and what is accepted.

use super::*;

/// [`MINIMAL`] with `entries` as `[listen] passthrough` on line 2 (the `udp` line moves to 3).
fn with_passthrough(entries: &str) -> String {
    MINIMAL.replacen(
        "[listen]\n",
        &format!("[listen]\npassthrough = [{entries}]\n"),
        1,
    )
}

#[test]
fn a_passthrough_listener_names_its_address_and_pool() {
    let cfg = ok(&with_passthrough(
        r#"{ address = "0.0.0.0:5061", pool = "a" }, { address = "127.0.0.1:0", pool = "a", idle_timeout = "30s" }"#,
    ));
    assert_eq!(
        cfg.listen.passthrough,
        vec![
            Passthrough {
                address: addr("0.0.0.0:5061"),
                pool: "a".into(),
                idle_timeout: Duration::from_secs(1800),
            },
            Passthrough {
                address: addr("127.0.0.1:0"),
                pool: "a".into(),
                idle_timeout: Duration::from_secs(30),
            },
        ]
    );
    assert!(ok(MINIMAL).listen.passthrough.is_empty());
}

#[test]
fn the_pool_must_exist() {
    let e = only_error(&with_passthrough(
        r#"{ address = "0.0.0.0:5061", pool = "fe-dc3" }"#,
    ));
    assert_error(
        &e,
        2,
        "listen.passthrough[0].pool",
        &["unknown pool \"fe-dc3\"", "defined pools: a"],
    );
}

#[test]
fn the_address_must_be_an_ip_and_port() {
    let e = only_error(&with_passthrough(
        r#"{ address = "lb.contoso.com:5061", pool = "a" }"#,
    ));
    assert_error(
        &e,
        2,
        "listen.passthrough[0].address",
        &["host name", "use IP:port"],
    );
}

#[test]
fn the_address_must_not_clash_with_a_tcp_or_tls_listener() {
    let text = with_passthrough(r#"{ address = "127.0.0.1:5061", pool = "a" }"#).replacen(
        "[listen]\n",
        "[listen]\ntcp = [\"127.0.0.1:5061\"]\n",
        1,
    );
    let e = only_error(&text);
    assert_error(
        &e,
        3,
        "listen.passthrough[0].address",
        &[
            "already used by listen.tcp[0] (line 2)",
            "TCP, TLS or passthrough listener",
        ],
    );

    let text = with_passthrough(r#"{ address = "127.0.0.1:5061", pool = "a" }"#).replacen(
        "[listen]\n",
        &format!(
            "[listen]\ntls = [{{ address = \"127.0.0.1:5061\", cert = \"{dir}/tls/demo.crt\", \
             key = \"{dir}/tls/demo.key\" }}]\n",
            dir = concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
        ),
        1,
    );
    let e = only_error(&text);
    assert_error(
        &e,
        3,
        "listen.passthrough[0].address",
        &["already used by listen.tls[0].address (line 2)"],
    );
}

#[test]
fn the_address_must_not_clash_with_a_udp_listener_or_another_passthrough() {
    let e = only_error(&with_passthrough(
        r#"{ address = "127.0.0.1:5060", pool = "a" }"#,
    ));
    assert_error(
        &e,
        2,
        "listen.passthrough[0].address",
        &["already used by listen.udp[0] (line 3)"],
    );

    let e = only_error(&with_passthrough(
        r#"{ address = "127.0.0.1:5061", pool = "a" }, { address = "127.0.0.1:5061", pool = "a" }"#,
    ));
    assert_error(
        &e,
        2,
        "listen.passthrough[1].address",
        &["already used by listen.passthrough[0].address (line 2)"],
    );

    // Another IP, or another port, is another address.
    ok(&with_passthrough(
        r#"{ address = "127.0.0.2:5060", pool = "a" }, { address = "127.0.0.1:5061", pool = "a" }"#,
    ));
    // Port 0 is a free port picked at bind time, whatever else asks for one.
    ok(&with_passthrough(
        r#"{ address = "127.0.0.1:0", pool = "a" }, { address = "127.0.0.1:0", pool = "a" }"#,
    )
    .replace(
        "udp = [\"127.0.0.1:5060\"]",
        "udp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]",
    ));
}

#[test]
fn the_idle_timeout_is_a_duration_longer_than_zero() {
    let e = only_error(&with_passthrough(
        r#"{ address = "127.0.0.1:5061", pool = "a", idle_timeout = "0s" }"#,
    ));
    assert_error(
        &e,
        2,
        "listen.passthrough[0].idle_timeout",
        &["longer than 0", "1800s"],
    );
    let e = only_error(&with_passthrough(
        r#"{ address = "127.0.0.1:5061", pool = "a", idle_timeout = "half an hour" }"#,
    ));
    assert_error(&e, 2, "listen.passthrough[0].idle_timeout", &[]);
}

#[test]
fn an_entry_needs_a_pool_and_takes_no_unknown_key() {
    let e = only_error(&with_passthrough(r#"{ address = "127.0.0.1:5061" }"#));
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("pool"), "{e}");
    let e = only_error(&with_passthrough(
        r#"{ address = "127.0.0.1:5061", pool = "a", cert = "lb.pem" }"#,
    ));
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("cert"), "{e}");
}

#[test]
fn check_prints_the_passthrough_listeners() {
    let text = summary(&ok(&with_passthrough(
        r#"{ address = "0.0.0.0:5061", pool = "a" }"#,
    )));
    assert!(
        text.contains("passthrough 0.0.0.0:5061 -> pool a") && text.contains("idle timeout 30m"),
        "{text}"
    );
}
