//! Virtual time: each test takes one real `Instant` as its origin and moves only by the delays
//! the prober chooses.
#![allow(clippy::disallowed_methods)]

use super::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Runs the prober on virtual time: `odoo(t)` says what a probe at `t` (seconds after `start`)
/// observes. Returns each probe's time and the verdict changes.
fn run(
    prober: &mut Prober,
    start: Instant,
    until_s: f64,
    rng: &mut SmallRng,
    mut odoo: impl FnMut(f64, &mut SmallRng) -> Verdict,
) -> (Vec<f64>, Vec<(f64, Verdict)>) {
    let (mut probes, mut changes) = (Vec::new(), Vec::new());
    loop {
        let now = prober.poll_timeout();
        let t = (now - start).as_secs_f64();
        if t > until_s {
            return (probes, changes);
        }
        probes.push(t);
        let seen = odoo(t, rng);
        if let Some(v) = prober.handle_observation(now, seen, rng) {
            changes.push((t, v));
        }
    }
}

#[test]
fn an_outage_and_the_return_are_confirmed_after_eight_probes_in_a_row_within_the_bound() {
    let cfg = ProbeConfig::default();
    // The bound: the first probe after the change comes within the interval, then 7 more at
    // most 0.25, 0.5, 1, 2, 4, 8 and 10 s apart (the 8th is the change).
    let bound = 10.0 + (0.25 + 0.5 + 1.0 + 2.0 + 4.0 + 8.0 + 10.0);
    let mut worst: f64 = 0.0;
    for seed in 0..200 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut prober = Prober::new(cfg, start);
        let (down_at, up_at) = (300.0, 600.0);
        let odoo = |t: f64, _: &mut SmallRng| {
            if (down_at..up_at).contains(&t) { Verdict::Unreachable } else { Verdict::Reachable }
        };
        let (probes, changes) = run(&mut prober, start, 900.0, &mut rng, odoo);
        assert_eq!(changes.len(), 3, "seed {seed}: {changes:?}");
        assert_eq!((changes[0].0, changes[0].1), (0.0, Verdict::Reachable), "the first answer is the verdict");
        let (down_seen, up_seen) = (changes[1], changes[2]);
        assert_eq!(down_seen.1, Verdict::Unreachable);
        assert_eq!(up_seen.1, Verdict::Reachable);
        for (changed, from) in [(down_seen.0, down_at), (up_seen.0, up_at)] {
            let taken = changed - from;
            assert!(taken > 0.0 && taken <= bound, "seed {seed}: {taken:.2} s against {bound} s");
            worst = worst.max(taken);
            // Probes from the first at or after the change of Odoo to the one that changed the
            // verdict (by position: a zero delay can put two probes at the same instant).
            let first = probes.iter().position(|t| *t >= from).expect("probed after the change");
            let last = probes.iter().position(|t| *t == changed).expect("the changing probe");
            let confirming = last - first + 1;
            assert_eq!(confirming, 8, "seed {seed}: the change is the 8th disagreeing probe");
        }
    }
    assert!(worst > 10.0, "the bound is approached, not vacuous: worst {worst:.2} s");
}

#[test]
fn twenty_percent_random_failures_or_successes_never_flip_a_settled_verdict() {
    for (settled, other) in [(Verdict::Reachable, Verdict::Unreachable), (Verdict::Unreachable, Verdict::Reachable)] {
        let mut rng = SmallRng::seed_from_u64(7);
        let start = Instant::now();
        let mut prober = Prober::new(ProbeConfig::default(), start);
        // About 20 days of probing at 20 % noise.
        let (probes, changes) = run(&mut prober, start, 20.0 * 86_400.0, &mut rng, |t, rng| {
            if t > 0.0 && rng.random_bool(0.2) { other } else { settled }
        });
        assert!(probes.len() > 300_000, "{} probes", probes.len());
        assert_eq!(changes, vec![(0.0, settled)], "no flapping while {settled:?} with 20% noise");
    }
}

#[test]
fn a_settled_verdict_is_probed_at_full_jitter_gaps_up_to_the_interval() {
    let mut rng = SmallRng::seed_from_u64(3);
    let start = Instant::now();
    let mut prober = Prober::new(ProbeConfig::default(), start);
    let (probes, _) = run(&mut prober, start, 3_600.0, &mut rng, |_, _| Verdict::Reachable);
    let gaps: Vec<f64> = probes.windows(2).skip(10).map(|w| w[1] - w[0]).collect();
    let max = gaps.iter().cloned().fold(0.0, f64::max);
    let min = gaps.iter().cloned().fold(f64::MAX, f64::min);
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(max <= 10.0 && max > 9.0, "max gap {max}");
    assert!(min < 0.5, "min gap {min}");
    assert!((4.0..6.0).contains(&mean), "mean gap {mean}");
}

#[test]
fn database_down_is_its_own_verdict_and_counts_against_reachable() {
    let mut rng = SmallRng::seed_from_u64(1);
    let start = Instant::now();
    let mut prober = Prober::new(ProbeConfig { confirm: 3, ..ProbeConfig::default() }, start);
    assert_eq!(prober.handle_observation(start, Verdict::Reachable, &mut rng), Some(Verdict::Reachable));
    assert_eq!(prober.handle_observation(start, Verdict::Unreachable, &mut rng), None);
    assert_eq!(prober.handle_observation(start, Verdict::DatabaseDown, &mut rng), None);
    assert_eq!(prober.handle_observation(start, Verdict::DatabaseDown, &mut rng), Some(Verdict::DatabaseDown));
    assert_eq!(prober.verdict(), Verdict::DatabaseDown);
}
