//! One seed, separate random streams.
//!
//! Every random choice of a run comes from the run's seed, through one stream per concern, so
//! that adding a fault (which draws from the fault stream) does not reshuffle the network's
//! delays or the workload.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// What a stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Message delays, duplicates, reordering.
    Network = 1,
    /// Worker start-up delays and task duration jitter.
    Process = 2,
    /// Randomised faults (swarm testing): the fault mix and the faults themselves.
    Faults = 3,
    /// Generated workloads.
    Workload = 4,
    /// The Head's own seed (scheduling ties).
    Head = 5,
    /// The Nodes' seeds.
    Nodes = 6,
    /// Choices made while a fault unfolds (which links a swizzle clogs, in which order).
    Unfold = 7,
    /// The simulated cloud provider: launch delays and failures, spot lifetimes.
    Provider = 8,
}

/// SplitMix64's finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of `stream` for run seed `seed`.
pub fn stream_seed(seed: u64, stream: Stream) -> u64 {
    mix64(seed ^ mix64(stream as u64 + 0x6b65_656c))
}

/// A seeded random stream.
#[derive(Clone, Debug)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// The stream `stream` of run seed `seed`.
    pub fn new(seed: u64, stream: Stream) -> Rng {
        Rng(Xoshiro256PlusPlus::seed_from_u64(stream_seed(seed, stream)))
    }

    /// A uniform `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        // Lemire's multiply-shift; the bias is below 2^-64 * n, irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p` (0 never draws).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One element of `items` (non-empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_one_seed_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, Stream::Network).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "the same stream repeats");
        let mut net = Rng::new(7, Stream::Network);
        let mut faults = Rng::new(7, Stream::Faults);
        assert_ne!(net.next_u64(), faults.next_u64(), "streams of one seed are independent");
        assert_ne!(Rng::new(7, Stream::Network).next_u64(), Rng::new(8, Stream::Network).next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(1, Stream::Process);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let x = rng.below(5);
            assert!(x < 5);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }
}
