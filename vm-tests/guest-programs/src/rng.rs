//! A small deterministic PRNG (xorshift64*, seeded through splitmix64), so a
//! `--seed` reproduces an operation sequence exactly.

/// xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// splitmix64 step: spreads any seed (0, 1, 2...) over the state space.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        let s = splitmix64(seed);
        Rng(if s == 0 { 0x2545_f491_4f6c_dd1d } else { s })
    }

    /// An independent stream derived from `seed` and `stream` (per thread).
    pub fn stream(seed: u64, stream: u64) -> Self {
        Rng::new(splitmix64(seed) ^ splitmix64(stream.wrapping_add(0x5bd1_e995)))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0). The tiny modulo bias does not
    /// matter for test-case generation.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `0..n` as usize.
    pub fn below_usize(&mut self, n: usize) -> usize {
        // usize is 64-bit on the only target (x86_64); the value is < n.
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.below(hi - lo + 1) }
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Index into `weights` chosen with probability proportional to the
    /// weight (weights of 0 are never chosen; all 0 gives 0).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut r = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if r < u64::from(w) {
                return i;
            }
            r -= u64::from(w);
        }
        0
    }

    /// Fill with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_spread() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let va: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let mut z = Rng::new(0);
        assert_ne!(z.next_u64(), 0);
        let mut hits = [0u32; 3];
        for _ in 0..3000 {
            hits[z.weighted(&[1, 0, 2])] += 1;
        }
        assert_eq!(hits[1], 0);
        assert!(hits[2] > hits[0]);
        for _ in 0..100 {
            let v = z.between(5, 9);
            assert!((5..=9).contains(&v));
        }
    }
}
