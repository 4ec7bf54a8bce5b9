//! A chaos smoke: generated DAGs under a swarm of faults, a few hundred seeds, every oracle.

use keel_sim::scenario::Scenario;

#[test]
fn a_few_hundred_chaos_seeds_keep_every_property() {
    let scenario = Scenario::chaos(12, 300);
    let seeds: u64 = std::env::var("KEEL_CHAOS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        let outcome = scenario.run(seed, None);
        for v in &outcome.violations {
            failures.push(format!("seed {seed}: {v} -- reproduce: keel chaos --seed {seed} --nodes 12 --tasks 300"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
