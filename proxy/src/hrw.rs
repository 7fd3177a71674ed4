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

/// xxh3's 16-byte path with [`SEED`] folded in (XXH3 specification, inputs of 9 to 16 bytes):
/// the key's word is XORed with `(secret[24..32] ^ secret[32..40]) + seed` and the identity's
/// with `(secret[40..48] ^ secret[48..56]) − seed`, where `secret` is xxh3's default secret.
/// Derived once from those bytes and SEED; `tests::the_pair_hash_is_xxh3` checks them against
/// the library on every run.
const FLIP_KEY: u64 = 0xbacb_c3c8_2c42_39ba;
const FLIP_ID: u64 = 0x5c0d_6bee_c796_5239;

/// A key made ready to be scored against many servers: what the pair hash needs of the key
/// alone, computed once per message instead of once per server.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    /// The key's word of the input, keyed.
    lo: u64,
    /// The input's length plus that word byte-swapped.
    base: u64,
}

impl Prepared {
    fn new(key: u64) -> Self {
        let lo = key ^ FLIP_KEY;
        Prepared {
            lo,
            base: 16u64.wrapping_add(lo.swap_bytes()),
        }
    }

    /// The pair's hash, uniform over u64: xxh3 (seed [`SEED`]) of the 16 bytes `key` then `id`,
    /// little-endian — the same value as `xxh3_64_with_seed`, in a dozen instructions.
    #[inline]
    fn pair_hash(self, id: u64) -> u64 {
        let hi = id ^ FLIP_ID;
        let product = u128::from(self.lo) * u128::from(hi);
        let folded = (product as u64) ^ ((product >> 64) as u64);
        avalanche(self.base.wrapping_add(hi).wrapping_add(folded))
    }
}

/// xxh3's final mix.
#[inline]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9e37_79f9);
    h ^ (h >> 32)
}

/// The score of a candidate whose pair hash is `hash`, with `weight`.
fn score(hash: u64, weight: u32) -> f64 {
    // The top 53 bits as a float in (0, 1): never 0, never 1, so ln(u) < 0 and finite.
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// The tag of the winning candidate among `(tag, id_hash, weight)`, or `None` when there are
/// none: the candidate with the highest `weight / -ln(u)`, `u` its pair hash in (0, 1).
///
/// While every candidate so far has the same weight, the score grows with `u` alone, so the
/// highest hash wins and no logarithm is taken; candidates of another weight switch the rest
/// of the walk to scores, starting from the best of the first weight. The choice is the one
/// the scores make, down to the tie rule (equal `u`: the lower identity hash).
pub(crate) fn best<T, I>(key: u64, candidates: I) -> Option<T>
where
    I: IntoIterator<Item = (T, u64, u32)>,
{
    let key = Prepared::new(key);
    let mut candidates = candidates.into_iter();
    let (mut tag, mut id, weight) = candidates.next()?;
    // The top 53 bits, as `score` uses them: equal ones are a tie.
    let mut top = key.pair_hash(id) >> 11;
    if weight != 0 {
        loop {
            let Some((t, i, w)) = candidates.next() else {
                return Some(tag);
            };
            if w != weight {
                // Mixed weights: scores from here on.
                let (t, _) = by_score(
                    key,
                    (tag, id, score(top << 11, weight)),
                    std::iter::once((t, i, w)).chain(candidates),
                );
                return Some(t);
            }
            let ht = key.pair_hash(i) >> 11;
            if ht > top || (ht == top && i < id) {
                (tag, id, top) = (t, i, ht);
            }
        }
    }
    let (t, _) = by_score(key, (tag, id, score(top << 11, weight)), candidates);
    Some(t)
}

/// The walk by scores: the best of `first` (already scored) and `rest`.
fn by_score<T>(
    key: Prepared,
    first: (T, u64, f64),
    rest: impl Iterator<Item = (T, u64, u32)>,
) -> (T, u64) {
    let (mut tag, mut id, mut best) = first;
    for (t, i, w) in rest {
        let s = score(key.pair_hash(i), w);
        if s > best || (s == best && i < id) {
            (tag, id, best) = (t, i, s);
        }
    }
    (tag, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the winning candidate among `(id_hash, weight)` pairs (the tag is the
    /// position).
    fn pick<I>(key: u64, candidates: I) -> Option<usize>
    where
        I: IntoIterator<Item = (u64, u32)>,
    {
        best(
            key,
            candidates
                .into_iter()
                .enumerate()
                .map(|(i, (id, weight))| (i, id, weight)),
        )
    }

    /// The rule as first written, kept as the reference: every candidate scored with the
    /// library's xxh3 and a logarithm.
    fn pick_by_scores(key: u64, candidates: &[(u64, u32)]) -> Option<usize> {
        let mut best: Option<(f64, u64, usize)> = None;
        for (i, &(id, weight)) in candidates.iter().enumerate() {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&key.to_le_bytes());
            b[8..].copy_from_slice(&id.to_le_bytes());
            let u = ((xxh3_64_with_seed(&b, SEED) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let s = f64::from(weight) / -u.ln();
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

    /// A fixed stream of well-mixed numbers (splitmix64), so that the tests are the same on
    /// every run.
    fn numbers(seed: u64) -> impl Iterator<Item = u64> {
        let mut state = seed;
        std::iter::from_fn(move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            Some(z ^ (z >> 31))
        })
    }

    #[test]
    fn the_pair_hash_is_xxh3() {
        let mut n = numbers(7);
        for _ in 0..100_000 {
            let (key, id) = (n.next().unwrap(), n.next().unwrap());
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&key.to_le_bytes());
            b[8..].copy_from_slice(&id.to_le_bytes());
            assert_eq!(
                Prepared::new(key).pair_hash(id),
                xxh3_64_with_seed(&b, SEED),
                "key {key:#x} id {id:#x}"
            );
        }
    }

    #[test]
    fn every_key_goes_where_the_scores_send_it() {
        // Pools of 1 to 64 servers, all of weight 1, of weights 1 and 2 and of random weights
        // 1-5, the odd weight anywhere in the list: the choice is the one the logarithms make.
        let mut n = numbers(11);
        for size in (1..=64).step_by(3) {
            let set = servers(size);
            let mut mixed = set.clone();
            mixed[size / 2].1 = 2;
            let random: Vec<(u64, u32)> = set
                .iter()
                .map(|&(id, _)| (id, (n.next().unwrap() % 5) as u32 + 1))
                .collect();
            for candidates in [&set, &mixed, &random] {
                for _ in 0..2_000 {
                    let key = n.next().unwrap();
                    assert_eq!(
                        pick(key, candidates.iter().copied()),
                        pick_by_scores(key, candidates),
                        "key {key:#x}, {size} servers"
                    );
                }
            }
        }
    }

    /// Pearson's chi-square of `counts` against `expected` shares of `total`.
    fn chi_square(counts: &[usize], expected: &[f64], total: usize) -> f64 {
        counts
            .iter()
            .zip(expected)
            .map(|(&c, &e)| {
                let e = e * total as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn large_pools_spread_evenly_and_a_removed_servers_keys_spread_over_all_the_rest() {
        // 200 servers, 400,000 keys: about 2,000 a server. Chi-square with 199 degrees of
        // freedom has mean 199 and standard deviation 20; 300 is five deviations out.
        let set = servers(200);
        let keys = 400_000;
        let owners = assign(keys, &set);
        let mut counts = vec![0usize; 200];
        for &o in &owners {
            counts[o] += 1;
        }
        let even = vec![1.0 / 200.0; 200];
        let x2 = chi_square(&counts, &even, keys);
        assert!(x2 < 300.0, "chi-square {x2:.0} over 200 servers");

        // Server 17 leaves: its keys alone move, spread over the 199 others.
        let mut rest = set.clone();
        rest.remove(17);
        let after = assign(keys, &rest);
        let mut moved_to = vec![0usize; 199];
        for (b, a) in owners.iter().zip(&after) {
            let a_in_all = if *a >= 17 { a + 1 } else { *a };
            if *b == 17 {
                moved_to[*a] += 1;
            } else {
                assert_eq!(*b, a_in_all, "a key not on the removed server moved");
            }
        }
        let moved: usize = moved_to.iter().sum();
        assert_eq!(moved, counts[17]);
        // About 10 keys a server: chi-square with 198 degrees of freedom, mean 198, sd 20.
        let x2 = chi_square(&moved_to, &vec![1.0 / 199.0; 199], moved);
        assert!(x2 < 300.0, "chi-square {x2:.0} of the moved keys");
    }

    #[test]
    fn mixed_weights_set_the_shares_in_a_large_pool() {
        // 20 servers of weights 1 to 4 (five each): shares weight / 50.
        let mut set = servers(20);
        for (i, s) in set.iter_mut().enumerate() {
            s.1 = (i % 4) as u32 + 1;
        }
        let keys = 200_000;
        let mut counts = vec![0usize; 20];
        for o in assign(keys, &set) {
            counts[o] += 1;
        }
        let shares: Vec<f64> = set.iter().map(|s| f64::from(s.1) / 50.0).collect();
        // 19 degrees of freedom: mean 19, sd 6.2; 50 is five deviations out.
        let x2 = chi_square(&counts, &shares, keys);
        assert!(x2 < 50.0, "chi-square {x2:.1}: {counts:?}");
    }

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
