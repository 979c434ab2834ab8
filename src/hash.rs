//! The one 64-bit mixer of the project. Shard ownership, the synthetic data
//! and each shard's user table all hash user ids with it, each with a seed of
//! its own, so that the users one shard owns do not cluster in its table.

/// SplitMix64's finalizer: a fixed, well-mixing 64-bit permutation.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
