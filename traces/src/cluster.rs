//! A cluster spec for replays: groups of identical nodes, in TOML.
//!
//! ```toml
//! # 32 CPU machines and 4 GPU machines.
//! [[nodes]]
//! name = "cpu"          # optional: nodes are named cpu-0, cpu-1, ...
//! count = 32
//! cpus = 64
//! memory_gib = 256      # optional
//!
//! [[nodes]]
//! name = "gpu"
//! count = 4
//! cpus = 96
//! gpus = 8
//! gpu_model = "V100"    # optional: tasks that ask for a GPU model run only on its nodes
//! resources = { nvme = 2 }   # optional custom resources
//! ```
//!
//! Errors name the file, the line and the field.

use crate::{NodeShape, TraceError};
use keel_kernel::{Amount, ResourceSet};
use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    nodes: Vec<Group>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: Option<String>,
    count: u64,
    cpus: f64,
    #[serde(default)]
    memory_gib: f64,
    #[serde(default)]
    gpus: f64,
    gpu_model: Option<String>,
    #[serde(default)]
    resources: BTreeMap<String, f64>,
}

/// The most nodes a spec may describe.
pub const NODES_MAX: u64 = 1_000_000;

/// Reads a cluster spec; `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<Vec<NodeShape>, TraceError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() as u64 + 1;
    let spec: Spec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(s.start));
        // The line itself names the field whose value is wrong.
        let shown = text.lines().nth(line.saturating_sub(1) as usize).filter(|_| line > 0).unwrap_or("").trim();
        let what = if shown.is_empty() { e.message().to_string() } else { format!("{} in `{shown}`", e.message()) };
        TraceError::Malformed { path: path.to_string(), line, what }
    })?;
    // Where each group starts, for errors about its values.
    let starts: Vec<usize> = text.match_indices("[[nodes]]").map(|(i, _)| i).collect();
    let mut nodes = Vec::new();
    for (g, group) in spec.nodes.iter().enumerate() {
        let bad = |what: String| TraceError::Malformed {
            path: path.to_string(),
            line: starts.get(g).map_or(0, |&s| line_of(s)),
            what: format!("node group {}: {what}", g + 1),
        };
        let amount = |field: &str, v: f64| {
            Amount::from_f64(v).filter(|_| v >= 0.0).ok_or_else(|| bad(format!("{field} = {v} is not an amount")))
        };
        if group.count == 0 || nodes.len() as u64 + group.count > NODES_MAX {
            return Err(bad(format!("count = {} (from 1, at most {NODES_MAX} nodes in all)", group.count)));
        }
        let mut resources = ResourceSet { cpu: amount("cpus", group.cpus)?, ..ResourceSet::default() };
        resources = resources.with_gpu(amount("gpus", group.gpus)?);
        let bytes = group.memory_gib * (1u64 << 30) as f64;
        if !(0.0..1e18).contains(&bytes) {
            return Err(bad(format!("memory_gib = {} is out of range", group.memory_gib)));
        }
        resources = resources.with_memory_bytes(bytes as u64);
        for (name, &v) in &group.resources {
            if name.is_empty() {
                return Err(bad("a custom resource has an empty name".into()));
            }
            resources = resources.with_custom(name, amount(&format!("resources.{name}"), v)?);
        }
        if resources.is_empty() {
            return Err(bad("its nodes offer nothing (give cpus, gpus, memory_gib or resources)".into()));
        }
        if group.gpu_model.is_some() && group.gpus <= 0.0 {
            return Err(bad("gpu_model is given but gpus is not".into()));
        }
        let prefix = group.name.clone().unwrap_or_else(|| format!("group{}", g + 1));
        for i in 0..group.count {
            nodes.push(NodeShape {
                name: format!("{prefix}-{i}"),
                resources: resources.clone(),
                gpu_model: group.gpu_model.clone(),
            });
        }
    }
    if nodes.is_empty() {
        return Err(TraceError::Malformed { path: path.to_string(), line: 0, what: "no [[nodes]] groups".into() });
    }
    Ok(nodes)
}

/// `nodes` resized to `n`: its first `n`, or all of them and again from the first (a mixed
/// cluster keeps its mix).
pub fn resize(nodes: &[NodeShape], n: usize) -> Vec<NodeShape> {
    if nodes.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|i| {
            let base = &nodes[i % nodes.len()];
            let name = if i < nodes.len() { base.name.clone() } else { format!("{}~{}", base.name, i / nodes.len()) };
            NodeShape { name, ..base.clone() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_become_named_nodes_with_their_resources_and_gpu_model() {
        let text = "[[nodes]]\nname = \"cpu\"\ncount = 2\ncpus = 8\nmemory_gib = 1\n\n[[nodes]]\ncount = 1\ncpus = 4\ngpus = 0.5\ngpu_model = \"T4\"\nresources = { nvme = 2 }\n";
        let nodes = parse(text, "c.toml").unwrap();
        assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["cpu-0", "cpu-1", "group2-0"]);
        assert_eq!(nodes[0].resources, ResourceSet::cpus(8).with_memory_bytes(1 << 30));
        let gpu = &nodes[2];
        assert_eq!(gpu.gpu_model.as_deref(), Some("T4"));
        assert_eq!(gpu.resources.gpu, Amount::from_f64(0.5).unwrap());
        assert_eq!(gpu.resources.custom["nvme"], Amount::units(2));
    }

    #[test]
    fn bad_specs_name_the_line_and_the_field() {
        let cases = [
            ("[[nodes]]\ncount = 2\ncpus = 8\ncolour = \"red\"\n", 4, "colour"),
            ("[[nodes]]\ncount = 2\n", 1, "cpus"),
            ("[[nodes]]\ncount = 1\ncpus = 1\n\n[[nodes]]\ncount = 0\ncpus = 8\n", 5, "count = 0"),
            ("[[nodes]]\ncount = 1\ncpus = -1\n", 1, "cpus = -1"),
            ("[[nodes]]\ncount = 1\ncpus = 0\n", 1, "offer nothing"),
            ("[[nodes]]\ncount = 1\ncpus = 2\ngpu_model = \"A100\"\n", 1, "gpu_model"),
            ("[[nodes]]\ncount = \"x\"\ncpus = 1\n", 2, "`count = \"x\"`"),
            ("nodes = []\n", 0, "no [[nodes]]"),
        ];
        for (text, line, what) in cases {
            let err = parse(text, "c.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("c.toml:{line}:")), "{text:?}: {err}");
            assert!(err.contains(what), "{text:?}: {err}");
        }
    }

    #[test]
    fn resizing_takes_the_first_nodes_or_repeats_the_mix() {
        let text = "[[nodes]]\nname = \"a\"\ncount = 2\ncpus = 8\n\n[[nodes]]\nname = \"b\"\ncount = 1\ncpus = 4\n";
        let nodes = parse(text, "c.toml").unwrap();
        let names = |v: Vec<NodeShape>| v.into_iter().map(|n| n.name).collect::<Vec<_>>();
        assert_eq!(names(resize(&nodes, 2)), ["a-0", "a-1"]);
        assert_eq!(names(resize(&nodes, 5)), ["a-0", "a-1", "b-0", "a-0~1", "a-1~1"]);
    }
}
