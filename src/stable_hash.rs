//! The stable 64-bit hash behind every affinity key and every hashed backend.
//!
//! XXH3 (64-bit, seed 0) from the `xxhash-rust` crate: its output is fixed by the
//! XXH3 specification, identical on every platform, endianness and process, and does
//! not change between releases of this crate (a test pins it with vectors). std's
//! `DefaultHasher` is randomly keyed per process and documented as unstable across
//! releases, so two balancers using it would disagree; it is never used here.
//!
//! Keys longer than [`MAX_KEY_LEN`] are *capped*, not rejected: only their first
//! `MAX_KEY_LEN` bytes are hashed. An oversized key therefore still sticks to one
//! backend and costs at most the hashing of 4 KiB; two keys that differ only after the
//! cap share a backend, which costs balance, never correctness.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The most bytes of a key that are hashed; the rest is ignored (see the module docs).
pub const MAX_KEY_LEN: usize = 4096;

/// The stable hash of an affinity key: XXH3-64 of its first [`MAX_KEY_LEN`] bytes.
///
/// Identical across processes, platforms and releases, so independent balancers map
/// the same key the same way.
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::hash_key;
///
/// assert_eq!(hash_key(b""), 0x2D06_8005_38D3_94C2); // XXH3-64 of the empty input
/// assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
/// assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
/// ```
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(capped(key))
}

/// XXH3-64 of `bytes` with `seed`: the stable, independent hash families the pickers
/// derive from a backend's key bytes (one seed per purpose or per virtual node).
#[inline]
pub(crate) fn seeded(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

#[inline]
fn capped(key: &[u8]) -> &[u8] {
    key.get(..MAX_KEY_LEN).unwrap_or(key)
}

/// SplitMix64's increment, the golden ratio in 64-bit fixed point (2^64 ÷ φ): steps a
/// hash or a generator's state, and its (odd) multiply mixes a word's bits into its high
/// half.
pub(crate) const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Murmur3's 64-bit finaliser: a bijective mixer with full avalanche.
///
/// The pickers pass every request hash through it, so a caller who hands
/// [`PickContext::with_hash`](crate::PickContext::with_hash) a raw id (1, 2, 3 …)
/// instead of a hash still gets an even spread.
#[inline]
pub(crate) const fn mix(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^= z >> 33;
    z = z.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the reference C implementation (`xxhsum -H3` of xxHash 0.8.1), one
    /// per input-length code path of XXH3 (0, 1–3, 4–8, 9–16, 129–240, > 240 bytes).
    /// If any changes, every deployed balancer would remap its keys on upgrade.
    #[test]
    fn xxh3_matches_the_reference_implementation() {
        assert_eq!(hash_key(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(seeded(b"", 0), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash_key(b"a"), 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(hash_key(b"abc"), 0x78AF_5F94_892F_3950);
        assert_eq!(hash_key(b"user-42"), 0x50FE_4B21_CF7B_09CD);
        assert_eq!(hash_key(b"0123456789abcdef"), 0x6443_9946_D8FA_212D);
        assert_eq!(hash_key(&[b'x'; 200]), 0x50EF_124F_B1E4_DE53);
        assert_eq!(hash_key(&[b'x'; 4096]), 0x854C_6670_88EF_E093);
        // 5000 bytes hash as their first 4096 (the cap); uncapped XXH3 differs.
        assert_eq!(hash_key(&[b'x'; 5000]), 0x854C_6670_88EF_E093);
        assert_eq!(xxh3_64(&[b'x'; 5000]), 0x8D85_67CB_C9EE_3D90);
    }

    /// The seeded family the pickers use for virtual nodes and Maglev permutations.
    /// Cross-checked against the C library by `xxhash-rust`'s own test suite; pinned
    /// here so that a change of crate version cannot silently remap keys.
    #[test]
    fn seeded_family_is_pinned() {
        assert_eq!(seeded(b"10.0.0.1:8080", 7), PINNED_SEEDED);
    }

    const PINNED_SEEDED: u64 = 0x22F7_E352_FC83_A557;

    #[test]
    fn long_keys_are_capped_not_rejected() {
        let mut long = vec![b'x'; MAX_KEY_LEN];
        let at_cap = hash_key(&long);
        long.extend_from_slice(b"ignored tail");
        assert_eq!(hash_key(&long), at_cap);
        assert_eq!(at_cap, xxh3_64(&long[..MAX_KEY_LEN]));
        long[MAX_KEY_LEN - 1] = b'y';
        assert_ne!(hash_key(&long), at_cap);
    }

    #[test]
    fn mix_is_a_bijection_on_samples() {
        let mut seen: Vec<u64> = (0..10_000u64).map(mix).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
        assert_eq!(mix(0), 0);
    }
}
