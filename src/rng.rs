//! Seeded randomness. Every random stream is a ChaCha8 generator keyed by
//! (run seed, purpose, index), never a shared generator whose draw order could
//! depend on scheduling; dropout masks are counter-based hashes.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// SplitMix64 finalizer: a fast, well-mixed 64-bit hash.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable 64-bit id of a purpose string (FNV-1a), so stream keys read as words.
pub fn purpose_id(purpose: &str) -> u64 {
    fnv1a(purpose.as_bytes())
}

/// FNV-1a 64 over bytes; also the parameter fingerprint.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV1A_START, bytes)
}

/// FNV-1a's state before any byte.
pub const FNV1A_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a state `h` after `bytes`: hashing in pieces gives `fnv1a` of the whole.
pub fn fnv1a_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The key of stream (seed, purpose, index).
pub fn stream_key(seed: u64, purpose: &str, index: u64) -> u64 {
    mix64(mix64(seed ^ purpose_id(purpose)) ^ index)
}

/// A generator for stream (seed, purpose, index).
pub fn stream(seed: u64, purpose: &str, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(stream_key(seed, purpose, index))
}

/// Uniform in [0, 1) with 53 random bits.
pub fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias < 2⁻³²
/// for the small ranges used here).
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

/// Standard normal by Box–Muller, written out so the stream never changes
/// with a dependency's version.
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - uniform(rng); // (0, 1]
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_in_pieces_is_fnv1a_of_the_whole() {
        // The published FNV-1a 64 value of "a", and of "foobar".
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_extend(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
        assert_eq!(fnv1a_extend(FNV1A_START, b""), fnv1a(b""));
    }
}
