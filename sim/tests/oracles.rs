//! The oracles can fail: each corruption of the kernel's outputs is caught by the oracle that
//! guards against it, and runs are deterministic.

use keel_sim::oracle::Property;
use keel_sim::scenario::Scenario;
use keel_sim::world::Tamper;
use std::path::Path;

fn scenario(text: &str) -> Scenario {
    Scenario::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// Twenty tasks with stored values on two nodes, a few workers crashing (so that some attempts
/// are retried), and a short liveness bound.
const BASE: &str = r#"
description = "oracle self-test"
[cluster]
nodes = 2
cpus = 2
[timing]
safety_ms = 600
liveness_ms = 3000
[workload]
kind = "independent"
tasks = 20
ms = 20
bytes = 200000
[[fault]]
at_ms = 30
kind = "crash_worker"
host = 0
[[fault]]
at_ms = 35
kind = "crash_worker"
host = 1
"#;

/// The properties a run of `text` breaks (each once).
fn broken_by(text: &str, seed: u64, tamper: Option<Tamper>) -> Vec<Property> {
    let outcome = scenario(text).run(seed, tamper);
    let mut p: Vec<Property> = outcome.violations.iter().map(|v| v.property).collect();
    p.dedup();
    p
}

fn broken(tamper: Option<Tamper>) -> Vec<Property> {
    broken_by(BASE, 1, tamper)
}

/// A burst on an empty cluster that the autoscaler grows to its limit of four nodes.
const AUTOSCALED: &str = r#"
description = "oracle self-test: autoscaling"
[cluster]
nodes = 0
cpus = 0
[timing]
safety_ms = 500
liveness_ms = 120000
[workload]
kind = "independent"
tasks = 24
ms = 2000
[autoscaler]
period_s = 0.5
idle_timeout_s = 5
[[node_type]]
name = "cpu2"
cpus = 2
max_workers = 4
launch_min_s = 1
launch_mean_s = 1.5
launch_max_s = 3
"#;

fn broken_autoscaled(tamper: Option<Tamper>) -> Vec<Property> {
    broken_by(AUTOSCALED, 2, tamper)
}

#[test]
fn the_untampered_autoscaled_run_keeps_every_property() {
    assert_eq!(broken_autoscaled(None), vec![]);
}

#[test]
fn a_provider_launching_more_than_asked_is_caught_above_max_workers() {
    assert!(broken_autoscaled(Some(Tamper::OverLaunch)).contains(&Property::MaxWorkers));
}

#[test]
fn a_node_stopped_while_its_work_waits_and_launched_again_is_caught_as_flapping() {
    assert!(broken_autoscaled(Some(Tamper::StopWanted)).contains(&Property::NoFlapping));
}

#[test]
fn the_untampered_base_run_keeps_every_property() {
    assert_eq!(broken(None), vec![]);
}

#[test]
fn a_dropped_completion_is_caught_as_no_liveness() {
    assert!(broken(Some(Tamper::DropCompletion)).contains(&Property::Liveness));
}

#[test]
fn a_duplicated_dispatch_is_caught_as_a_duplicate_execution() {
    assert!(broken(Some(Tamper::DuplicateDispatch)).contains(&Property::NoDuplicateExecution));
}

#[test]
fn an_early_free_is_caught() {
    assert!(broken(Some(Tamper::FreeEarly)).contains(&Property::NoEarlyFree));
}

#[test]
fn an_over_commit_is_caught() {
    assert!(broken(Some(Tamper::OverCommit)).contains(&Property::NoOverCommit));
}

#[test]
fn a_rebuilt_value_with_other_content_is_caught() {
    assert!(broken(Some(Tamper::CorruptRebuild)).contains(&Property::SameContent));
}

#[test]
fn the_same_seed_gives_the_same_hash_and_other_seeds_other_hashes() {
    let s = scenario(BASE);
    let a = s.run(7, None);
    let b = s.run(7, None);
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.counts, b.counts);
    let hashes: std::collections::BTreeSet<String> = (0..8).map(|seed| s.run(seed, None).hash).collect();
    assert_eq!(hashes.len(), 8, "eight seeds, eight event logs");
}

#[test]
fn a_swizzle_clogs_distinct_hosts_one_after_another() {
    let text = BASE.replace(
        "[[fault]]\nat_ms = 30\nkind = \"crash_worker\"\nhost = 0\n[[fault]]\nat_ms = 35\nkind = \"crash_worker\"\nhost = 1\n",
        "[[fault]]\nat_ms = 10\nkind = \"swizzle\"\nms = 400\n",
    );
    let text = text.replace("nodes = 2", "nodes = 8");
    let s = scenario(&text);
    let mut clogged = Vec::new();
    for seed in 0..4 {
        let mut params = s.params(seed);
        params.timeline = true;
        let outcome = s.run_params(params);
        assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
        let clogs: Vec<(u64, usize)> =
            outcome.timeline.iter().filter(|t| t.name.starts_with("Clog")).map(|t| (t.start, t.host)).collect();
        assert!(!clogs.is_empty(), "seed {seed}: nothing was clogged");
        assert!(clogs.windows(2).all(|w| w[0].0 < w[1].0), "seed {seed}: clogs start one after another");
        let hosts: std::collections::BTreeSet<usize> = clogs.iter().map(|c| c.1).collect();
        assert_eq!(hosts.len(), clogs.len(), "seed {seed}: each host is clogged once");
        clogged.push(hosts);
    }
    clogged.dedup();
    assert!(clogged.len() > 1, "the clogged hosts depend on the seed");
}
