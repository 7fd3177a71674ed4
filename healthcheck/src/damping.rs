//! Damping: how long siplb keeps a server out of hashing by its own timing, on top of what
//! fall/rise decide.
//!
//! - A **backoff**: a server answered a request 503 with `Retry-After` (RFC 3261 §20.33) and the
//!   probe asked for at once failed too. It is out of hashing for new work for the Retry-After
//!   (at most `max_backoff`), and back once that has run out and `rise` probes in a row pass. A
//!   busy server whose probes pass is never backed off: busy is not dead.
//! - A **hold**: a server that goes down again soon after it came back is flapping. Each time it
//!   goes down within `flap_window` of its last return, the next return is held out of hashing
//!   longer — `flap_hold`, then twice that, four times… up to `max_backoff` — as a pool's
//!   failback waits for `failback_after`. A server that stays up for `flap_window`, or stays down
//!   that long, starts afresh; one that goes down once and comes back is never held.

use std::fmt;
use std::time::Duration;

/// `[health]` damping settings (`flap_window`, `flap_hold`, `max_backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damping {
    /// A server that goes down again less than this after it came back is flapping; zero turns
    /// holds off.
    pub flap_window: Duration,
    /// The first hold of a flapping server (doubled at each further flap); zero turns holds off.
    pub flap_hold: Duration,
    /// The longest backoff a `Retry-After` can ask for, and the longest hold.
    pub max_backoff: Duration,
}

impl Damping {
    /// The defaults: a 60 s flap window, a 10 s first hold, 300 s at the most.
    pub const DEFAULT: Damping = Damping {
        flap_window: Duration::from_secs(60),
        flap_hold: Duration::from_secs(10),
        max_backoff: Duration::from_secs(300),
    };

    /// How long a server coming back after `downs` downs in a row, each within `flap_window` of
    /// its return before, is held: none after one down, `flap_hold` after two, twice that after
    /// three, and so on, at most `max_backoff`.
    pub fn hold(&self, downs: u32) -> Option<Duration> {
        if downs < 2 || self.flap_window.is_zero() || self.flap_hold.is_zero() {
            return None;
        }
        let doublings = (downs - 2).min(31);
        let hold = self.flap_hold.saturating_mul(1 << doublings);
        Some(hold.min(self.max_backoff))
    }

    /// How long a `Retry-After` of `asked` keeps a server out: at most `max_backoff`.
    pub fn backoff(&self, asked: Duration) -> Duration {
        asked.min(self.max_backoff)
    }
}

impl Default for Damping {
    fn default() -> Self {
        Damping::DEFAULT
    }
}

/// A duration as events and `/status` reasons show it: `5s`, `1.5s`, `300ms`.
pub(crate) struct Short(pub(crate) Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() == 0 && d >= Duration::from_secs(1) {
            write!(f, "{}s", d.as_secs())
        } else if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{:.1}s", d.as_secs_f64())
        }
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st`…
pub(crate) struct Ordinal(pub(crate) u32);

impl fmt::Display for Ordinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let suffix = match (n % 10, n % 100) {
            (_, 11..=13) => "th",
            (1, _) => "st",
            (2, _) => "nd",
            (3, _) => "rd",
            _ => "th",
        };
        write!(f, "{n}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_doubles_with_each_flap_up_to_the_cap() {
        let d = Damping {
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        };
        assert_eq!(d.hold(0), None);
        assert_eq!(d.hold(1), None, "down once and back: never held");
        let holds: Vec<u64> = (2..9).map(|n| d.hold(n).unwrap().as_secs()).collect();
        assert_eq!(holds, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(d.hold(u32::MAX), Some(Duration::from_secs(300)));
        let off = Damping {
            flap_window: Duration::ZERO,
            ..d
        };
        assert_eq!(off.hold(5), None, "flap_window = 0 turns holds off");
        assert_eq!(
            d.backoff(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(d.backoff(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn ordinals_and_short_durations_read_well() {
        let o: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 103]
            .map(|n| Ordinal(n).to_string())
            .to_vec();
        assert_eq!(
            o,
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "103rd"]
        );
        assert_eq!(Short(Duration::from_secs(5)).to_string(), "5s");
        assert_eq!(Short(Duration::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Short(Duration::from_millis(300)).to_string(), "300ms");
    }
}
