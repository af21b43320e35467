//! Reconnect delays: exponential with full jitter, so many gateways returning at once do not
//! reconnect in lockstep. Pure: the random source is passed in.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, attempt: 0 }
    }

    /// The delay before the next attempt: uniform in [0, min(max, initial × 2^attempt)].
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rng.random_range(0..=ceiling.as_millis() as u64))
    }

    /// A session got going: the next failure starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn delays_stay_under_a_doubling_ceiling_capped_at_max() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings = [100u64, 200, 400, 800, 1600, 2000, 2000];
        for ceiling in ceilings {
            let d = b.next_delay(&mut rng);
            assert!(d <= Duration::from_millis(ceiling), "{d:?} > {ceiling}ms");
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_gateways_apart() {
        let mut rng = SmallRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..20)
            .map(|_| {
                Backoff { attempt: 5, ..Backoff::new(Duration::from_millis(100), Duration::from_secs(10)) }
                    .next_delay(&mut rng)
            })
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 15, "{delays:?}");
    }
}
