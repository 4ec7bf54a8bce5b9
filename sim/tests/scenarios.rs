//! Every scenario file runs over its seed range with no violation.

use keel_sim::scenario::Scenario;
use std::path::PathBuf;

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

#[test]
fn every_scenario_keeps_every_property_over_its_seeds() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .expect("scenarios/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let scenario = Scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
        for seed in scenario.seeds[0]..scenario.seeds[1] {
            let outcome = scenario.run(seed, None);
            eprintln!(
                "{} seed {seed}: {} events, hash {}, {:?}",
                file.display(),
                outcome.counts.events,
                outcome.hash,
                outcome.head
            );
            for v in &outcome.violations {
                failures.push(format!("{} --seed {seed}: {v}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
}
