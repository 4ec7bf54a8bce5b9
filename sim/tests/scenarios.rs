//! Every scenario file runs over its seed range with no violation.

use keel_sim::scenario::Scenario;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("scenarios/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn there_are_at_least_fifteen_stories_and_each_one_parses() {
    let files = scenario_files();
    assert!(files.len() >= 15, "{} scenario files", files.len());
    for file in &files {
        Scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_scenario_keeps_every_property_over_its_seeds() {
    // (file, seed) pairs, shared by one worker per core.
    let runs: Vec<(PathBuf, Scenario, u64)> = scenario_files()
        .into_iter()
        .flat_map(|file| {
            let scenario = Scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
            (scenario.seeds[0]..scenario.seeds[1]).map(move |seed| (file.clone(), scenario.clone(), seed))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((file, scenario, seed)) = runs.get(i) else { break };
                let outcome = scenario.run(*seed, None);
                for v in &outcome.violations {
                    let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    failures.lock().expect("unpoisoned").push(format!("scenarios/{name} --seed {seed}: {v}"));
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("unpoisoned");
    failures.sort();
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
}
