//! Shrinking a failing run to a small scenario that still fails the same way.
//!
//! The faults of the run (scheduled and drawn by the swarm) become an explicit list, reduced by
//! delta debugging (Zeller's ddmin: drop chunks, then complements, halving the chunk size); then
//! every size of the workload (tasks, maps, chain length...) is halved while the failure stays.
//! A candidate "still fails" when its run with the same seed breaks the same property.

use crate::faults::Timed;
use crate::oracle::Property;
use crate::scenario::{FaultSpec, Scenario};
use crate::world::Tamper;

/// A smaller scenario that fails like the original, and how many runs it took.
#[derive(Debug)]
pub struct Shrunk {
    /// The reduced scenario (its `seeds` hold just the failing seed).
    pub scenario: Scenario,
    /// The property it still breaks.
    pub property: Property,
    /// Runs tried.
    pub runs: usize,
}

/// Shrinks `scenario` at `seed`, trying at most `budget` runs. `None` when the seed does not
/// fail. (`tamper` is for the tests of the shrinker itself.)
pub fn shrink(scenario: &Scenario, seed: u64, tamper: Option<Tamper>, budget: usize) -> Option<Shrunk> {
    let first = scenario.run(seed, tamper);
    let violation = first.violations.first()?;
    let (property, what) = (violation.property, kind_of(&violation.detail));
    let mut runs = 1;
    // The same property, and for expectations the same check (its text without the numbers).
    let fails = |s: &Scenario, runs: &mut usize| {
        *runs += 1;
        let same = |v: &crate::oracle::Violation| {
            v.property == property && (property != Property::Expectation || kind_of(&v.detail) == what)
        };
        s.run(seed, tamper).violations.iter().any(same)
    };
    // The run's faults, explicit.
    let mut current = scenario.clone();
    current.seeds = [seed, seed + 1];
    let faults: Vec<Timed> = scenario.params(seed).faults;
    current.faults = faults.iter().map(FaultSpec::from_timed).collect();
    current.swarm = None;
    if !fails(&current, &mut runs) {
        // Only the swarm's own draw reproduces it: keep the scenario as it was.
        current = scenario.clone();
        current.seeds = [seed, seed + 1];
    } else {
        current.faults = ddmin(current.faults.clone(), |subset| {
            if runs >= budget {
                return false;
            }
            let mut candidate = current.clone();
            candidate.faults = subset.to_vec();
            fails(&candidate, &mut runs)
        });
    }
    // Halve workload sizes while it still fails.
    loop {
        let mut progressed = false;
        for field in SIZES {
            while runs < budget {
                let Some(candidate) = halved(&current, field) else { break };
                if fails(&candidate, &mut runs) {
                    current = candidate;
                    progressed = true;
                } else {
                    break;
                }
            }
        }
        if !progressed || runs >= budget {
            break;
        }
    }
    current.description = format!("Shrunk from \"{}\" (seed {seed}): still breaks {property}.", scenario.description);
    Some(Shrunk { scenario: current, property, runs })
}

/// A violation's text with its numbers and ids taken out, to tell one expectation from another.
fn kind_of(detail: &str) -> String {
    detail.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).collect::<Vec<_>>().join(" ")
}

const SIZES: [&str; 11] =
    ["tasks", "maps", "reduces", "length", "width", "parents", "children", "actors", "calls", "groups", "bundles"];

fn halved(s: &Scenario, field: &str) -> Option<Scenario> {
    let mut c = s.clone();
    let w = &mut c.workload;
    fn half(v: &mut Option<usize>) -> bool {
        match v {
            Some(n) if *n > 1 => {
                *n /= 2;
                true
            }
            _ => false,
        }
    }
    fn half32(v: &mut Option<u32>) -> bool {
        match v {
            Some(n) if *n > 1 => {
                *n /= 2;
                true
            }
            _ => false,
        }
    }
    let changed = match field {
        "tasks" => half(&mut w.tasks),
        "maps" => half(&mut w.maps),
        "reduces" => half(&mut w.reduces),
        "length" => half(&mut w.length),
        "width" => half(&mut w.width),
        "parents" => half(&mut w.parents),
        "children" => half32(&mut w.children),
        "actors" => half(&mut w.actors),
        "calls" => half(&mut w.calls),
        "groups" => half(&mut w.groups),
        "bundles" => half32(&mut w.bundles),
        _ => false,
    };
    (changed && c.workload.build(c.seeds[0]).is_ok()).then_some(c)
}

/// Zeller's ddmin: a 1-minimal subset of `items` for which `fails` holds (it holds for `items`).
pub fn ddmin<T: Clone>(items: Vec<T>, mut fails: impl FnMut(&[T]) -> bool) -> Vec<T> {
    let mut current = items;
    let mut n = 2usize;
    while current.len() >= 2 {
        let chunk = current.len().div_ceil(n);
        let chunks: Vec<Vec<T>> = current.chunks(chunk).map(<[T]>::to_vec).collect();
        let mut reduced = false;
        for (i, c) in chunks.iter().enumerate() {
            if fails(c) {
                current = c.clone();
                n = 2;
                reduced = true;
                break;
            }
            let complement: Vec<T> =
                chunks.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, c)| c.iter().cloned()).collect();
            if fails(&complement) {
                current = complement;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            n = (2 * n).min(current.len());
        }
    }
    if current.len() == 1 && fails(&[]) {
        return Vec::new();
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddmin_finds_the_two_items_that_together_fail() {
        let items: Vec<u32> = (0..40).collect();
        let mut calls = 0;
        let found = ddmin(items, |s| {
            calls += 1;
            s.contains(&7) && s.contains(&31)
        });
        assert_eq!(found, vec![7, 31]);
        assert!(calls < 100, "{calls} tests");
    }

    #[test]
    fn a_tampered_run_shrinks_to_no_fault_and_a_single_task() {
        let text = r#"
description = "shrink me"
[cluster]
nodes = 3
cpus = 2
[timing]
safety_ms = 600
liveness_ms = 2000
[workload]
kind = "independent"
tasks = 40
ms = 10
[swarm]
faults = 6
until_ms = 500
kinds = ["clog", "pause", "crash_worker"]
"#;
        let s = Scenario::parse(std::path::Path::new("t.toml"), text).unwrap();
        let shrunk = shrink(&s, 3, Some(Tamper::DropCompletion), 200).expect("the tampered run fails");
        assert_eq!(shrunk.property, Property::Liveness);
        assert!(shrunk.scenario.faults.is_empty() && shrunk.scenario.swarm.is_none(), "{:?}", shrunk.scenario.faults);
        assert_eq!(shrunk.scenario.workload.tasks, Some(1));
        let again = Scenario::parse(std::path::Path::new("t.toml"), &shrunk.scenario.to_toml()).unwrap();
        assert_eq!(again.run(3, Some(Tamper::DropCompletion)).violations[0].property, Property::Liveness);
    }

    #[test]
    fn ddmin_drops_everything_when_nothing_is_needed() {
        assert_eq!(ddmin(vec![1, 2, 3], |_| true), Vec::<i32>::new());
    }
}
