//! Reconnect delays: exponential from `initial` up to `max`, with jitter so that many nodes that
//! lost the head together do not knock on its door in lockstep.

use std::time::Duration;

/// Exponential backoff with full jitter in the upper half of each step.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    jitter_state: u64,
}

impl Backoff {
    /// Delays from `initial`, doubling up to `max`. `seed` varies the jitter between processes.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { initial, max, next: initial, jitter_state: seed | 1 }
    }

    /// The next delay to wait before trying again.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: jitter needs no quality, only variety between processes.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        let half = base / 2;
        let spread = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(x % spread)
    }

    /// Back to the initial delay (after a connection succeeded).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_stay_within_half_to_full_step_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000), 7);
        let mut step = Duration::from_millis(100);
        for _ in 0..8 {
            let d = b.next_delay();
            assert!(d >= step / 2 && d <= step, "{d:?} outside [{:?}, {step:?}]", step / 2);
            step = (step * 2).min(Duration::from_millis(1000));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
