//! `[health]` damping keys: defaults, every key read (a pool may override them), and each
//! mistake named by line and key.

use super::*;

#[test]
fn defaults_and_every_key_read_with_pool_overrides() {
    let d = ok(MINIMAL).health.damping;
    assert_eq!(d, Damping::DEFAULT);
    assert_eq!(d.flap_window, Duration::from_secs(60));
    assert_eq!(d.flap_hold, Duration::from_secs(10));
    assert_eq!(d.max_backoff, Duration::from_secs(300));

    let cfg = ok(&plus(
        "[health]\nflap_window = \"2m\"\nflap_hold = \"0s\"\nmax_backoff = \"30s\"\n\n\
         [[pool]]\nname = \"b\"\nhealth = { flap_hold = \"5s\" }\n\
         servers = [{ address = \"127.0.0.1:5081\" }]\n",
    ));
    let global = Damping {
        flap_window: Duration::from_secs(120),
        flap_hold: Duration::ZERO,
        max_backoff: Duration::from_secs(30),
    };
    assert_eq!(cfg.health.damping, global);
    assert_eq!(cfg.pools[0].health.damping, global);
    assert_eq!(
        cfg.pools[1].health.damping,
        Damping {
            flap_hold: Duration::from_secs(5),
            ..global
        }
    );
}

#[test]
fn mistakes_are_named_by_line_and_key() {
    let errors = errors(&plus(
        "[health]\nflap_window = \"soon\"\nflap_hold = \"-1s\"\nmax_backoff = \"0s\"\n",
    ));
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        found,
        [
            (11, "health.flap_window"),
            (12, "health.flap_hold"),
            (13, "health.max_backoff"),
        ],
        "{}",
        render(&errors)
    );
    assert!(
        errors[2].message.contains("longer than 0"),
        "{}",
        render(&errors)
    );
}
