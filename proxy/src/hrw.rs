//! Weighted rendezvous (highest random weight) hashing.
//!
//! Every (key, server) pair gets a score; the server with the highest score wins. When a server
//! leaves, only the keys it won move, and each moves to whichever server scored second for it —
//! an even spread over the rest. When a server joins, it takes about 1/N of the keys from every
//! other server. (Kamailio's dispatcher moves a dead server's users onto one neighbour, and a
//! modulo hash remaps nearly everyone when a server is added.)
//!
//! Weights follow the logarithmic method of Schindelhauer and Schomaker ("Weighted Distributed
//! Hash Tables", SPAA 2005): `score = weight / -ln(u)` with `u` the pair's hash mapped into (0, 1),
//! which gives each server a share of keys proportional to its weight.
//!
//! The hash is xxh3 with a fixed seed, so every siplb process on every machine, given the same
//! config and the same health, picks the same server for a user.

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

/// The fixed seed ("SIPLB" and a format version). Changing it re-homes every user.
pub(crate) const SEED: u64 = 0x5349_504c_4200_0001;

/// Hashes a routing key (an address of record, a Call-ID, an address).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, SEED)
}

/// A streaming key hasher, for keys assembled from parts.
pub(crate) fn key_hasher() -> Xxh3 {
    Xxh3::with_seed(SEED)
}

/// Hashes a server (or pool) identity once, when a routing table is built.
pub(crate) fn id_hash(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), SEED ^ 0x1d)
}

/// The pair's hash, uniform over u64.
fn pair_hash(key: u64, id: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&key.to_le_bytes());
    b[8..].copy_from_slice(&id.to_le_bytes());
    xxh3_64_with_seed(&b, SEED)
}

/// The score of a candidate with identity hash `id` and `weight` for `key`.
pub(crate) fn score(key: u64, id: u64, weight: u32) -> f64 {
    // The top 53 bits as a float in (0, 1): never 0, never 1, so ln(u) < 0 and finite.
    let u = ((pair_hash(key, id) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// The index of the winning candidate among `(id_hash, weight)` pairs, or `None` when there are
/// none. Ties (practically impossible) go to the lower identity hash, so the choice never
/// depends on the order of the candidates.
pub(crate) fn pick<I>(key: u64, candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (u64, u32)>,
{
    let mut best: Option<(f64, u64, usize)> = None;
    for (i, (id, weight)) in candidates.into_iter().enumerate() {
        let s = score(key, id, weight);
        let better = match best {
            None => true,
            Some((bs, bid, _)) => s > bs || (s == bs && id < bid),
        };
        if better {
            best = Some((s, id, i));
        }
    }
    best.map(|(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| (id_hash(&format!("10.0.0.{i}:5061")), 1))
            .collect()
    }

    fn assign(keys: usize, set: &[(u64, u32)]) -> Vec<usize> {
        (0..keys)
            .map(|k| {
                pick(
                    key_hash(format!("user{k}@contoso.com").as_bytes()),
                    set.iter().copied(),
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn spreads_evenly() {
        let owners = assign(20_000, &servers(4));
        for s in 0..4 {
            let n = owners.iter().filter(|&&o| o == s).count();
            assert!((4500..=5500).contains(&n), "server {s} got {n} of 20000");
        }
    }

    #[test]
    fn only_the_removed_servers_keys_move_and_they_spread() {
        let all = servers(5);
        let before = assign(20_000, &all);
        let mut rest = all.clone();
        rest.remove(2);
        let after = assign(20_000, &rest);
        let map = |i: usize| if i >= 2 { i + 1 } else { i }; // index in `rest` → index in `all`
        let mut moved_to = [0usize; 5];
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(*b, map(*a), "a key not on the removed server moved");
            } else {
                moved_to[map(*a)] += 1;
            }
        }
        let moved: usize = moved_to.iter().sum();
        for (s, n) in moved_to.iter().enumerate().filter(|(s, _)| *s != 2) {
            let share = *n as f64 / moved as f64;
            assert!(
                (0.20..=0.30).contains(&share),
                "server {s} took {share:.3} of moved keys"
            );
        }
    }

    #[test]
    fn weights_set_the_share() {
        let mut set = servers(3);
        set[0].1 = 2;
        let owners = assign(40_000, &set);
        let share = owners.iter().filter(|&&o| o == 0).count() as f64 / 40_000.0;
        assert!(
            (0.47..=0.53).contains(&share),
            "weight-2 server share {share:.3}"
        );
    }

    #[test]
    fn order_of_candidates_does_not_matter() {
        let set = servers(6);
        let mut rev = set.clone();
        rev.reverse();
        for k in 0..1000u64 {
            let a = pick(k, set.iter().copied()).unwrap();
            let b = pick(k, rev.iter().copied()).unwrap();
            assert_eq!(set[a], rev[b]);
        }
        assert_eq!(pick(1, std::iter::empty()), None);
    }

    #[test]
    fn the_hash_is_fixed() {
        // The same user must land on the same server in every process, release and machine:
        // these values are part of siplb's behaviour, and changing them re-homes every user.
        assert_eq!(key_hash(b"alice@contoso.com"), 0x1443_7fa8_a6df_74d3);
        assert_eq!(id_hash("fe1-a"), 0x6887_6a6e_6981_3caf);
        let mut h = key_hasher();
        h.update(b"alice@");
        h.update(b"contoso.com");
        assert_eq!(h.digest(), key_hash(b"alice@contoso.com"));
    }
}
