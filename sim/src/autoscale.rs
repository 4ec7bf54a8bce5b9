//! An autoscaling cluster in TOML: the autoscaler's settings, its node types, and how the
//! simulated provider behaves for each type.
//!
//! The same tables serve `keel up --autoscale cluster.toml` (a real cluster of local node
//! processes), `keel replay --autoscale cluster.toml` and a scenario file's `[autoscaler]` and
//! `[[node_type]]`:
//!
//! ```toml
//! [autoscaler]                 # every field optional
//! max_workers = 16             # worker nodes in all (default: the sum of the types' maxima)
//! upscaling_speed = 1.0        # at most max(5, speed x nodes running) launching at once
//! period_s = 5                 # how often the autoscaler decides
//! idle_timeout_s = 60          # an idle node is stopped after this long
//! launch_timeout_s = 600       # a node not registered this long after its launch has failed
//! max_launch_failures = 3      # failures in a row before a type is left alone ...
//! failure_backoff_s = 300      # ... for this long
//!
//! [[node_type]]
//! name = "cpu8"
//! cpus = 8
//! memory_gib = 32              # optional, like gpus, resources and labels
//! gpus = 0
//! resources = { nvme = 1 }
//! labels = { zone = "a" }
//! min_workers = 0
//! max_workers = 10
//! # The simulated provider only (a real provider ignores these):
//! launch_min_s = 20            # a launch takes min + an exponential tail with this mean ...
//! launch_mean_s = 45
//! launch_max_s = 180           # ... and at most this long
//! launch_fail_p = 0.0          # probability that a launch request fails as a whole
//! preempt_mean_s = 3600        # spot nodes: mean lifetime before the cloud reclaims one
//! cost_per_hour = 0.40         # for the cost report
//! # The local provider only (`keel up --autoscale`):
//! program = "/opt/keel-node.sh"  # run instead of `keel` (given `node` and its flags)
//! ```
//!
//! Errors name the file, the line and the field.

use crate::scenario::{parse_checked, read, ScenarioError};
use keel_kernel::autoscaler::{AutoscalerConfig, Limits, NodeType};
use keel_kernel::proto::Labels;
use keel_kernel::{Amount, Duration, ResourceSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The autoscaler's settings (every field has a default).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Worker nodes in all; `None`: the sum of the types' `max_workers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,
    /// At most `max(5, speed x nodes running)` nodes launching at once.
    pub upscaling_speed: f64,
    /// How often the autoscaler decides, in seconds.
    pub period_s: f64,
    /// An idle managed node is stopped after this long.
    pub idle_timeout_s: f64,
    /// A node not registered this long after its launch counts as a failed launch.
    pub launch_timeout_s: f64,
    /// Failed launches of a type in a row before it is left alone for `failure_backoff_s`.
    pub max_launch_failures: u32,
    /// See `max_launch_failures`.
    pub failure_backoff_s: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_workers: None,
            upscaling_speed: 1.0,
            period_s: 5.0,
            idle_timeout_s: 60.0,
            launch_timeout_s: 600.0,
            max_launch_failures: 3,
            failure_backoff_s: 300.0,
        }
    }
}

/// One node type: what its nodes offer, its limits, and how the simulated provider launches it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeTypeSpec {
    /// The provider's key; nodes carry it under `keel.node-type`.
    pub name: String,
    /// CPUs per node.
    #[serde(default)]
    pub cpus: f64,
    /// GPUs per node.
    #[serde(default)]
    pub gpus: f64,
    /// Memory per node, in GiB.
    #[serde(default)]
    pub memory_gib: f64,
    /// Custom resources per node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, f64>,
    /// Labels of its nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Nodes kept whatever the demand.
    #[serde(default)]
    pub min_workers: u32,
    /// At most this many.
    pub max_workers: u32,
    /// Simulated launch delay: `launch_min_s` plus an exponential tail of mean
    /// `launch_mean_s - launch_min_s`, at most `launch_max_s`.
    #[serde(default = "launch_min")]
    pub launch_min_s: f64,
    /// See `launch_min_s`.
    #[serde(default = "launch_mean")]
    pub launch_mean_s: f64,
    /// See `launch_min_s`.
    #[serde(default = "launch_max")]
    pub launch_max_s: f64,
    /// Probability that a launch request fails as a whole (no capacity, quota).
    #[serde(default)]
    pub launch_fail_p: f64,
    /// Spot nodes: the mean of their (exponential) lifetime before the cloud takes them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt_mean_s: Option<f64>,
    /// Price of a node-hour, for the cost report.
    #[serde(default)]
    pub cost_per_hour: f64,
    /// The local provider only: the program a node of this type runs, given `node` and the
    /// node's flags, instead of this `keel` executable (a wrapper script that prepares the
    /// machine and ends with `exec keel "$@"`, say). Simulations ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
}

fn launch_min() -> f64 {
    20.0
}
fn launch_mean() -> f64 {
    45.0
}
fn launch_max() -> f64 {
    180.0
}

/// An autoscaling cluster: settings and node types.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// The autoscaler's settings.
    #[serde(default)]
    pub autoscaler: Settings,
    /// The node types.
    #[serde(rename = "node_type")]
    pub node_types: Vec<NodeTypeSpec>,
}

/// Ten years, in seconds: the longest duration a field takes.
const SECONDS_MAX: f64 = 315_360_000.0;

impl NodeTypeSpec {
    /// What one node offers.
    pub fn resources(&self) -> ResourceSet {
        let amount = |v: f64| Amount::from_f64(v).unwrap_or(Amount::ZERO);
        let mut r = ResourceSet { cpu: amount(self.cpus), ..ResourceSet::default() }
            .with_gpu(amount(self.gpus))
            .with_memory_bytes((self.memory_gib * (1u64 << 30) as f64) as u64);
        for (name, &v) in &self.resources {
            r = r.with_custom(name, amount(v));
        }
        r
    }

    /// The labels of its nodes, as the type gives them (the autoscaler adds the type's name).
    pub fn labels(&self) -> Labels {
        self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn check(&self, at: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
        let amounts = [("cpus", self.cpus), ("gpus", self.gpus), ("memory_gib", self.memory_gib)];
        for (field, v) in amounts {
            if !(0.0..1e9).contains(&v) {
                return Err((at(field), format!("{v} is not an amount (from 0, below 1e9)")));
            }
        }
        if self.gpus > 1.0 && self.gpus.fract() != 0.0 {
            return Err((at("gpus"), format!("{}: above one, GPUs come whole (a fraction shares one GPU)", self.gpus)));
        }
        let plain = |s: &str| !s.is_empty() && !s.contains([',', '=']) && !s.chars().any(char::is_whitespace);
        for (name, &v) in &self.resources {
            if !plain(name) {
                return Err((at("resources"), format!("`{name}`: a name is non-empty, without spaces, `,` or `=`")));
            }
            if !(0.0..1e9).contains(&v) {
                return Err((at(&format!("resources.{name}")), format!("{v} is not an amount of `{name}`")));
            }
        }
        for (key, value) in &self.labels {
            if !plain(key) || value.contains(',') || value.chars().any(char::is_whitespace) {
                return Err((
                    at("labels"),
                    format!("`{key} = {value}`: keys are non-empty, without spaces, `,` or `=`; values without spaces or `,`"),
                ));
            }
        }
        if self.resources().is_empty() {
            return Err((at("cpus"), "its nodes offer nothing (give cpus, gpus, memory_gib or resources)".into()));
        }
        if self.min_workers > self.max_workers {
            return Err((
                at("min_workers"),
                format!("{} is above max_workers ({})", self.min_workers, self.max_workers),
            ));
        }
        let (min, mean, max) = (self.launch_min_s, self.launch_mean_s, self.launch_max_s);
        if !(0.0..=SECONDS_MAX).contains(&min) {
            return Err((at("launch_min_s"), format!("{min} s is not a delay (from 0, at most ten years)")));
        }
        if !(min..=SECONDS_MAX).contains(&mean) || !(mean..=SECONDS_MAX).contains(&max) {
            return Err((
                at("launch_mean_s"),
                format!(
                    "launch_min_s = {min}, launch_mean_s = {mean}, launch_max_s = {max}: they must rise in that order"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.launch_fail_p) {
            return Err((at("launch_fail_p"), format!("{} is not a probability", self.launch_fail_p)));
        }
        if let Some(p) = self.preempt_mean_s.filter(|p| !(*p > 0.0 && *p <= SECONDS_MAX)) {
            return Err((at("preempt_mean_s"), format!("{p} s is not a lifetime (above 0, at most ten years)")));
        }
        if self.program.as_ref().is_some_and(|p| p.trim().is_empty()) {
            return Err((at("program"), "an empty program: leave it out to run `keel`".into()));
        }
        if !(0.0..1e9).contains(&self.cost_per_hour) {
            return Err((at("cost_per_hour"), format!("{} is not a price", self.cost_per_hour)));
        }
        Ok(())
    }

    /// A simulated launch delay for a uniform draw `u` in [0, 1).
    pub fn launch_delay(&self, u: f64) -> Duration {
        let tail = self.launch_mean_s - self.launch_min_s;
        let s = (self.launch_min_s - tail * (1.0 - u).ln()).min(self.launch_max_s);
        seconds(s)
    }
}

/// A duration of `s` seconds (at most ten years).
pub fn seconds(s: f64) -> Duration {
    Duration((s.clamp(0.0, SECONDS_MAX) * 1e9) as u64)
}

impl AutoscaleSpec {
    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<AutoscaleSpec, ScenarioError> {
        AutoscaleSpec::parse(path, &read(path)?)
    }

    /// Parses and checks a cluster file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<AutoscaleSpec, ScenarioError> {
        parse_checked(path, text, AutoscaleSpec::check)
    }

    /// Checks the values; the error names the field (`node_type[1].max_workers`).
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.node_types.is_empty() {
            return Err(("node_type".into(), "no node types: give at least one [[node_type]]".into()));
        }
        for (i, t) in self.node_types.iter().enumerate() {
            let at = |f: &str| format!("node_type[{i}].{f}");
            if t.name.is_empty() || t.name.contains([',', '=']) || t.name.chars().any(char::is_whitespace) {
                return Err((at("name"), format!("`{}`: a name is non-empty, without spaces, `,` or `=`", t.name)));
            }
            if let Some(j) = self.node_types[..i].iter().position(|o| o.name == t.name) {
                return Err((at("name"), format!("`{}` is also node_type[{j}]'s name", t.name)));
            }
            t.check(&at)?;
        }
        let s = &self.autoscaler;
        let durations = [
            ("autoscaler.period_s", s.period_s),
            ("autoscaler.idle_timeout_s", s.idle_timeout_s),
            ("autoscaler.launch_timeout_s", s.launch_timeout_s),
            ("autoscaler.failure_backoff_s", s.failure_backoff_s),
        ];
        for (field, v) in durations {
            if !(0.001..=SECONDS_MAX).contains(&v) {
                return Err((field.into(), format!("{v} s is not a duration (from 1 ms, at most ten years)")));
            }
        }
        let min_workers: u64 = self.node_types.iter().map(|t| u64::from(t.min_workers)).sum();
        if let Some(max) = s.max_workers.filter(|m| u64::from(*m) < min_workers.max(1)) {
            return Err((
                "autoscaler.max_workers".into(),
                format!("{max} leaves no room for the types' min_workers ({min_workers}) or for any node"),
            ));
        }
        if !(s.upscaling_speed >= 0.0 && s.upscaling_speed <= 1e6) {
            return Err(("autoscaler.upscaling_speed".into(), format!("{} is not a speed", s.upscaling_speed)));
        }
        Ok(())
    }

    /// Checks what only a simulation uses: every simulated launch boots and registers, with a
    /// second to spare, within the launch timeout (a later one would be given up on while it
    /// still boots, and launched again).
    pub fn check_simulated(&self) -> Result<(), (String, String)> {
        let launch_timeout = self.autoscaler.launch_timeout_s;
        for (i, t) in self.node_types.iter().enumerate() {
            if t.launch_max_s + 1.0 >= launch_timeout {
                return Err((
                    format!("node_type[{i}].launch_max_s"),
                    format!(
                        "{} s is not a second below autoscaler.launch_timeout_s ({launch_timeout} s): slow launches would be given up on while they still boot",
                        t.launch_max_s
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads and checks a cluster file for a simulation (see [`AutoscaleSpec::check_simulated`]).
    pub fn load_simulated(path: &Path) -> Result<AutoscaleSpec, ScenarioError> {
        parse_checked(path, &read(path)?, |spec: &AutoscaleSpec| {
            spec.check()?;
            spec.check_simulated()
        })
    }

    /// The kernel's configuration.
    pub fn config(&self) -> AutoscalerConfig {
        let s = &self.autoscaler;
        let sum: u32 = self.node_types.iter().fold(0u32, |a, t| a.saturating_add(t.max_workers));
        AutoscalerConfig {
            node_types: self
                .node_types
                .iter()
                .map(|t| NodeType {
                    name: t.name.clone(),
                    resources: t.resources(),
                    labels: t.labels(),
                    min_workers: t.min_workers,
                    max_workers: t.max_workers,
                })
                .collect(),
            limits: Limits { max_workers: s.max_workers.unwrap_or(sum), upscaling_speed: s.upscaling_speed },
            period: seconds(s.period_s),
            idle_timeout: seconds(s.idle_timeout_s),
            launch_timeout: seconds(s.launch_timeout_s),
            max_launch_failures: s.max_launch_failures,
            failure_backoff: seconds(s.failure_backoff_s),
        }
    }

    /// The most worker nodes the cluster may have.
    pub fn max_workers(&self) -> u32 {
        self.config().limits.max_workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AutoscaleSpec, ScenarioError> {
        AutoscaleSpec::parse(Path::new("cluster.toml"), text)
    }

    const TWO: &str = r#"
[autoscaler]
idle_timeout_s = 30

[[node_type]]
name = "cpu4"
cpus = 4
memory_gib = 16
max_workers = 5

[[node_type]]
name = "gpu"
cpus = 8
gpus = 1
labels = { accel = "t4" }
min_workers = 1
max_workers = 2
cost_per_hour = 0.5
"#;

    #[test]
    fn a_cluster_file_becomes_the_kernels_autoscaler_configuration() {
        let spec = parse(TWO).unwrap();
        let c = spec.config();
        assert_eq!(c.node_types.len(), 2);
        assert_eq!(c.node_types[0].resources, ResourceSet::cpus(4).with_memory_bytes(16 << 30));
        assert_eq!(c.node_types[1].labels.get("accel").map(String::as_str), Some("t4"));
        assert_eq!(c.node_types[1].min_workers, 1);
        assert_eq!(c.limits.max_workers, 7, "the sum of the types' maxima");
        assert_eq!(c.idle_timeout, Duration::from_millis(30_000));
        assert_eq!(c.period, Duration::from_millis(5_000));
    }

    #[test]
    fn launch_delays_follow_the_shifted_exponential_within_its_bounds() {
        let spec = parse(TWO).unwrap();
        let t = &spec.node_types[0];
        assert_eq!(t.launch_delay(0.0), seconds(20.0));
        assert_eq!(t.launch_delay(0.999_999_999), seconds(180.0));
        // The median of min + Exp(mean - min) is min + (mean - min) ln 2.
        let median = t.launch_delay(0.5).0 as f64 / 1e9;
        assert!((median - (20.0 + 25.0 * std::f64::consts::LN_2)).abs() < 1e-6, "{median}");
    }

    #[test]
    fn a_simulation_refuses_launches_slower_than_the_launch_timeout() {
        let slow = TWO.replace("cost_per_hour = 0.5", "launch_max_s = 900");
        let spec = parse(&slow).expect("a real provider may boot slowly: its own timeout decides");
        let (field, message) = spec.check_simulated().unwrap_err();
        assert_eq!(field, "node_type[1].launch_max_s");
        assert!(message.starts_with("900 s is not a second below autoscaler.launch_timeout_s (600 s)"), "{message}");
    }

    #[test]
    fn bad_cluster_files_name_the_line_and_the_field() {
        let cases = [
            (
                TWO.replace("min_workers = 1", "min_workers = 3"),
                "line 16: node_type[1].min_workers: 3 is above max_workers (2)",
            ),
            (
                TWO.replace("name = \"gpu\"", "name = \"cpu4\""),
                "line 12: node_type[1].name: `cpu4` is also node_type[0]'s name",
            ),
            (
                TWO.replace("cost_per_hour = 0.5", "cost_per_hour = 0.5\nlaunch_fail_p = 2"),
                "node_type[1].launch_fail_p: 2 is not a probability",
            ),
            (
                TWO.replace("idle_timeout_s = 30", "idle_timeout_s = -1"),
                "line 3: autoscaler.idle_timeout_s: -1 s is not a duration",
            ),
            (TWO.replace("cpus = 4\n", "cpus = 4\ncolour = 1\n"), "unknown field `colour`"),
            ("[autoscaler]\n".to_string(), "missing field `node_type`"),
            (
                TWO.replace("idle_timeout_s = 30", "period_s = 1e-10"),
                "autoscaler.period_s: 0.0000000001 s is not a duration",
            ),
            (TWO.replace("idle_timeout_s = 30", "max_workers = 0"), "autoscaler.max_workers: 0 leaves no room"),
            (
                TWO.replace("cpus = 4\n", "cpus = 4\nlaunch_min_s = -1\n"),
                "node_type[0].launch_min_s: -1 s is not a delay",
            ),
            (TWO.replace("gpus = 1", "gpus = 1.5"), "line 14: node_type[1].gpus: 1.5: above one, GPUs come whole"),
            (TWO.replace("accel = \"t4\"", "\"a,b\" = \"t4\""), "node_type[1].labels: `a,b = t4`"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("cluster.toml: ") && e.contains(want), "{e}\nwanted: {want}");
        }
    }
}
