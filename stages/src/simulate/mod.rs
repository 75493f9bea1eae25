//! KMTNet-like season simulator with ground truth (issue 3).

pub mod astro;
pub mod cadence;
pub mod lens;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A ChaCha stream for (seed, tags): every star, site and field draws from its own stream, so
/// results do not depend on thread scheduling or on which other stars were generated.
pub(crate) fn rng_for(seed: u64, tags: &[u64]) -> ChaCha8Rng {
    let mut h = splitmix(seed ^ 0x9E37_79B9_7F4A_7C15);
    for &t in tags {
        h = splitmix(h ^ t.wrapping_mul(0xD1B5_4A32_D192_ED03));
    }
    ChaCha8Rng::seed_from_u64(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
