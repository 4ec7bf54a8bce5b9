//! Scenario files: one story per file, in TOML.
//!
//! ```toml
//! description = "A node is lost while reduces pull map outputs: the lost partitions are rebuilt."
//! seeds = [0, 8]                       # the seed range the tests run (half-open)
//!
//! [cluster]
//! nodes = 8
//! cpus = 4
//!
//! [timing]                             # every field optional
//! node_timeout_ms = 500
//! safety_ms = 3000                     # faults heal by then
//! liveness_ms = 30000                  # and all work must finish this long after
//!
//! [workload]
//! kind = "map_reduce"                  # independent, map_reduce, chain, fan, nested, actors,
//! maps = 32                            # gangs, random_dag
//! reduces = 4
//! ms = 50
//! bytes = 1000000
//!
//! [[fault]]
//! at_ms = 120
//! kind = "crash_node"
//! host = 2
//!
//! [swarm]                              # optional: faults drawn from the seed
//! faults = 4
//! until_ms = 2000
//!
//! [expect]
//! ready = "all"                        # all (default), any, none
//! min_reconstructions = 1
//! ```
//!
//! An autoscaling cluster adds `[autoscaler]` and `[[node_type]]` tables (see
//! [`crate::autoscale`]); `cluster.nodes` may then be 0. The simulated provider boots the nodes
//! the head launches, the `preempt` fault takes one back, and `[expect]` takes `min_launched`,
//! `max_launched`, `min_failed_launches`, `min_preempted` and `end_nodes` (by default the types'
//! `min_workers`: the cluster must shrink back). Two more oracles hold on every such run: never
//! more nodes than `max_workers`, and no flapping.
//!
//! A file that does not parse, or names something that does not exist, is refused with an error
//! that names the file, the line and the field.

use crate::autoscale::{AutoscaleSpec, NodeTypeSpec, Settings};
use crate::faults::{Fault, Timed, SWARM_KINDS};
use crate::oracle::{Property, Violation};
use crate::rng::{Rng, Stream};
use crate::workload::Workload;
use crate::world::{HostSpec, NetParams, Outcome, Params, Tamper};
use keel_kernel::head::HeadConfig;
use keel_kernel::node::NodeConfig;
use keel_kernel::proto::PlacementStrategy;
use keel_kernel::resources::{Amount, ResourceSet};
use keel_kernel::Duration;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A scenario that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the format (line, column and field named).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file parses but names something impossible.
    #[error("{file}: {}{field}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The line of the field, where it is in the file.
        line: Option<usize>,
        /// The field, as a path (`fault[2].host`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A scenario, as read.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The story, in a sentence or two.
    pub description: String,
    /// The seed range the tests run, half-open `[first, end)`.
    #[serde(default = "default_seeds")]
    pub seeds: [u64; 2],
    /// The machines.
    pub cluster: Cluster,
    /// Latencies, timeouts and phase lengths.
    #[serde(default)]
    pub timing: Timing,
    /// What the job does.
    pub workload: WorkloadSpec,
    /// Scheduled faults.
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
    /// Faults drawn from the seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<Swarm>,
    /// What must be true at the end, beyond the oracles.
    #[serde(default)]
    pub expect: Expect,
    /// Check the machines' invariants after every this many steps (1: every step, the
    /// default; 0: never).
    #[serde(default = "one_step")]
    pub check_every: u64,
    /// The autoscaler's settings, for an autoscaling cluster (see [`crate::autoscale`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<Settings>,
    /// The node types the autoscaler launches (the simulated provider boots them); `cluster`
    /// then gives the static nodes beside them, and may have none.
    #[serde(default, rename = "node_type", skip_serializing_if = "Vec::is_empty")]
    pub node_types: Vec<NodeTypeSpec>,
}

fn one_step() -> u64 {
    1
}

fn default_seeds() -> [u64; 2] {
    [0, 4]
}

/// The machines: `nodes` identical hosts (none, when node types are given for the autoscaler).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// How many.
    pub nodes: usize,
    /// CPUs each.
    pub cpus: u64,
    /// GPUs each.
    #[serde(default)]
    pub gpus: u64,
    /// Memory each, in GiB.
    #[serde(default = "default_memory_gb")]
    pub memory_gb: u64,
    /// Object store capacity each, in MiB.
    #[serde(default = "default_store_mb")]
    pub store_mb: u64,
}

fn default_memory_gb() -> u64 {
    16
}
fn default_store_mb() -> u64 {
    1024
}

/// Network and timeouts (every field has a default).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// One-way latency.
    pub latency_ms: u64,
    /// Random extra delay, up to this.
    pub jitter_ms: u64,
    /// Transfer bandwidth between nodes, in MB/s.
    pub bandwidth_mb_s: u64,
    /// Heartbeat period.
    pub heartbeat_ms: u64,
    /// A node silent this long is declared dead.
    pub node_timeout_ms: u64,
    /// An infeasible request fails after this long.
    pub infeasible_grace_ms: u64,
    /// A worker takes this long to start.
    pub worker_start_ms: u64,
    /// The safety phase: faults happen and heal by then.
    pub safety_ms: u64,
    /// The liveness bound after the safety phase.
    pub liveness_ms: u64,
    /// Lineage kept for finished tasks, in MiB.
    pub max_lineage_mb: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            latency_ms: 1,
            jitter_ms: 1,
            bandwidth_mb_s: 1000,
            heartbeat_ms: 100,
            node_timeout_ms: 1000,
            infeasible_grace_ms: 500,
            worker_start_ms: 5,
            safety_ms: 3000,
            liveness_ms: 60_000,
            max_lineage_mb: 64,
        }
    }
}

/// The workload: a `kind` and the fields that kind takes.
///
/// | kind | fields (defaults: `ms = 10`, `bytes = 8`) |
/// |---|---|
/// | `independent` | `tasks`, `ms`, `bytes`, `cpus` (1.0), `fail` (false) |
/// | `map_reduce` | `maps`, `reduces`, `ms`, `bytes` (per partition), `fan_in` (each reduce takes that many maps' single value instead of a partition of every map) |
/// | `chain` | `length`, `ms`, `bytes` |
/// | `fan` | `width`, `ms`, `bytes` |
/// | `nested` | `parents`, `children` (at most 64), `ms` |
/// | `actors` | `actors`, `calls`, `ms`, `max_restarts` (0), `max_task_retries` (0) |
/// | `gangs` | `groups`, `bundles`, `strategy` (PACK), `ms` |
/// | `random_dag` | `tasks` |
///
/// A plain table (rather than one shape per kind) lets the reader name the exact line of a
/// badly typed field; a field the kind does not take is refused by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Which generator.
    pub kind: String,
    /// Tasks (independent, random_dag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<usize>,
    /// Map tasks (map_reduce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps: Option<usize>,
    /// Reduce tasks (map_reduce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reduces: Option<usize>,
    /// Maps per reduce, instead of a full shuffle (map_reduce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fan_in: Option<usize>,
    /// Chain length (chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// Fan width (fan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// Parent tasks (nested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents: Option<usize>,
    /// Children per parent (nested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children: Option<u32>,
    /// Actors (actors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actors: Option<usize>,
    /// Calls per actor (actors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<usize>,
    /// Groups (gangs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
    /// Bundles per group (gangs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundles: Option<u32>,
    /// PACK, SPREAD, STRICT_PACK or STRICT_SPREAD (gangs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// How long each task runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Bytes per return value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// CPUs per task (independent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Every task raises (independent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<bool>,
    /// `max_restarts` (actors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// `max_task_retries` (actors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_task_retries: Option<u32>,
}

/// The kinds and the fields each takes (besides `kind`).
const KINDS: [(&str, &[&str]); 8] = [
    ("independent", &["tasks", "ms", "bytes", "cpus", "fail"]),
    ("map_reduce", &["maps", "reduces", "fan_in", "ms", "bytes"]),
    ("chain", &["length", "ms", "bytes"]),
    ("fan", &["width", "ms", "bytes"]),
    ("nested", &["parents", "children", "ms"]),
    ("actors", &["actors", "calls", "ms", "max_restarts", "max_task_retries"]),
    ("gangs", &["groups", "bundles", "strategy", "ms"]),
    ("random_dag", &["tasks"]),
];

impl WorkloadSpec {
    fn given(&self) -> Vec<&'static str> {
        let present = [
            ("tasks", self.tasks.is_some()),
            ("maps", self.maps.is_some()),
            ("reduces", self.reduces.is_some()),
            ("fan_in", self.fan_in.is_some()),
            ("length", self.length.is_some()),
            ("width", self.width.is_some()),
            ("parents", self.parents.is_some()),
            ("children", self.children.is_some()),
            ("actors", self.actors.is_some()),
            ("calls", self.calls.is_some()),
            ("groups", self.groups.is_some()),
            ("bundles", self.bundles.is_some()),
            ("strategy", self.strategy.is_some()),
            ("ms", self.ms.is_some()),
            ("bytes", self.bytes.is_some()),
            ("cpus", self.cpus.is_some()),
            ("fail", self.fail.is_some()),
            ("max_restarts", self.max_restarts.is_some()),
            ("max_task_retries", self.max_task_retries.is_some()),
        ];
        present.iter().filter(|(_, p)| *p).map(|(n, _)| *n).collect()
    }

    /// The workload for `seed` (only random DAGs depend on it), or the field that is wrong.
    pub fn build(&self, seed: u64) -> Result<Workload, (String, String)> {
        let Some((_, fields)) = KINDS.iter().find(|(k, _)| *k == self.kind) else {
            let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
            return Err((
                "workload.kind".into(),
                format!("unknown kind `{}` (known: {})", self.kind, known.join(", ")),
            ));
        };
        if let Some(extra) = self.given().into_iter().find(|f| !fields.contains(f)) {
            return Err((format!("workload.{extra}"), format!("kind `{}` takes no `{extra}`", self.kind)));
        }
        fn need<T: Copy>(v: Option<T>, field: &str) -> Result<T, (String, String)> {
            v.ok_or_else(|| (format!("workload.{field}"), "missing: this kind needs it".to_string()))
        }
        let (ms, bytes) = (self.ms.unwrap_or(10), self.bytes.unwrap_or(8));
        Ok(match self.kind.as_str() {
            "independent" => {
                let cpus = self.cpus.unwrap_or(1.0);
                if !cpus.is_finite() || cpus < 0.0 {
                    return Err(("workload.cpus".into(), format!("{cpus} is not an amount of CPUs")));
                }
                let mut w = Workload::independent(need(self.tasks, "tasks")?, ms, bytes);
                for t in &mut w.tasks {
                    t.cpu_hundredths = (cpus * 100.0).round() as u64;
                    t.fail = self.fail.unwrap_or(false);
                }
                w
            }
            "map_reduce" => match self.fan_in {
                Some(0) => return Err(("workload.fan_in".into(), "must be at least 1".into())),
                Some(fan_in) => Workload::map_reduce_fan_in(
                    need(self.maps, "maps")?,
                    need(self.reduces, "reduces")?,
                    fan_in,
                    ms,
                    bytes,
                ),
                None => Workload::map_reduce(need(self.maps, "maps")?, need(self.reduces, "reduces")?, ms, bytes),
            },
            "chain" => Workload::chain(need(self.length, "length")?, ms, bytes),
            "fan" => Workload::fan(need(self.width, "width")?, ms, bytes),
            "nested" => {
                let children = need(self.children, "children")?;
                if children > 64 {
                    return Err(("workload.children".into(), format!("{children} children: at most 64 per parent")));
                }
                Workload::nested(need(self.parents, "parents")?, children, ms)
            }
            "actors" => Workload::actors(
                need(self.actors, "actors")?,
                need(self.calls, "calls")?,
                ms,
                self.max_restarts.unwrap_or(0),
                self.max_task_retries.unwrap_or(0),
            ),
            "gangs" => {
                let name = self.strategy.as_deref().unwrap_or("PACK");
                let strategy = parse_strategy(name).ok_or_else(|| {
                    (
                        "workload.strategy".to_string(),
                        format!("`{name}`: expected PACK, SPREAD, STRICT_PACK or STRICT_SPREAD"),
                    )
                })?;
                Workload::gangs(need(self.groups, "groups")?, need(self.bundles, "bundles")?, strategy, ms)
            }
            "random_dag" => Workload::random_dag(need(self.tasks, "tasks")?, &mut Rng::new(seed, Stream::Workload)),
            other => unreachable!("kind {other} is listed in KINDS"),
        })
    }
}

/// A scheduled fault: `at_ms`, a `kind` and the fields that kind takes.
///
/// | kind | fields |
/// |---|---|
/// | `crash_node` | `host`, `restart_ms` (at the end of the safety phase) |
/// | `partition` | `host`, `ms`, `inbound` (true), `outbound` (true) |
/// | `clog` | `host`, `ms`, `extra_ms` |
/// | `pause` | `host`, `ms` |
/// | `crash_worker` | `host` |
/// | `hang` | `host`, `ms` |
/// | `duplicate` | `p`, `ms` |
/// | `reorder` | `jitter_ms`, `ms` |
/// | `swizzle` | `ms` |
/// | `disconnect` | `host` |
/// | `driver_exit` | |
/// | `preempt` | `node_type` (any, when not given): the oldest running node the autoscaler launched is taken back |
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When, from the start of the run.
    pub at_ms: u64,
    /// Which fault.
    pub kind: String,
    /// The host, by index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<usize>,
    /// Down this long (crash_node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_ms: Option<u64>,
    /// Lasts this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Messages from the head are lost (partition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<bool>,
    /// Messages to the head are lost (partition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<bool>,
    /// Extra delay per message (clog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ms: Option<u64>,
    /// Probability per message (duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Maximum extra delay (reorder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    /// Only nodes of this type (preempt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
}

const FAULT_KINDS: [(&str, &[&str]); 12] = [
    ("swizzle", &["ms"]),
    ("crash_node", &["host", "restart_ms"]),
    ("partition", &["host", "ms", "inbound", "outbound"]),
    ("clog", &["host", "ms", "extra_ms"]),
    ("pause", &["host", "ms"]),
    ("crash_worker", &["host"]),
    ("hang", &["host", "ms"]),
    ("duplicate", &["p", "ms"]),
    ("reorder", &["jitter_ms", "ms"]),
    ("disconnect", &["host"]),
    ("driver_exit", &[]),
    ("preempt", &["node_type"]),
];

impl FaultSpec {
    /// The scenario-file form of a fault.
    pub fn from_timed(t: &Timed) -> FaultSpec {
        let mut f = FaultSpec {
            at_ms: t.at_ms,
            kind: t.fault.name().to_string(),
            host: t.fault.host(),
            restart_ms: None,
            ms: None,
            inbound: None,
            outbound: None,
            extra_ms: None,
            p: None,
            jitter_ms: None,
            node_type: None,
        };
        match t.fault {
            Fault::CrashNode { restart_ms, .. } => f.restart_ms = restart_ms,
            Fault::Partition { ms, inbound, outbound, .. } => {
                (f.ms, f.inbound, f.outbound) = (Some(ms), Some(inbound), Some(outbound))
            }
            Fault::Clog { ms, extra_ms, .. } => (f.ms, f.extra_ms) = (Some(ms), Some(extra_ms)),
            Fault::Pause { ms, .. } | Fault::Hang { ms, .. } => f.ms = Some(ms),
            Fault::Duplicate { p, ms } => (f.p, f.ms) = (Some(p), Some(ms)),
            Fault::Reorder { jitter_ms, ms } => (f.jitter_ms, f.ms) = (Some(jitter_ms), Some(ms)),
            Fault::Swizzle { ms } => f.ms = Some(ms),
            Fault::Preempt { ref node_type } => f.node_type = node_type.clone(),
            Fault::CrashWorker { .. } | Fault::Disconnect { .. } | Fault::DriverExit => {}
        }
        f
    }

    /// The fault, or the field (under `fault[i]`) that is wrong.
    pub fn to_timed(&self, i: usize) -> Result<Timed, (String, String)> {
        let at = |f: &str| format!("fault[{i}].{f}");
        let Some((_, fields)) = FAULT_KINDS.iter().find(|(k, _)| *k == self.kind) else {
            let known: Vec<&str> = FAULT_KINDS.iter().map(|(k, _)| *k).collect();
            return Err((at("kind"), format!("unknown kind `{}` (known: {})", self.kind, known.join(", "))));
        };
        let given = [
            ("host", self.host.is_some()),
            ("restart_ms", self.restart_ms.is_some()),
            ("ms", self.ms.is_some()),
            ("inbound", self.inbound.is_some()),
            ("outbound", self.outbound.is_some()),
            ("extra_ms", self.extra_ms.is_some()),
            ("p", self.p.is_some()),
            ("jitter_ms", self.jitter_ms.is_some()),
            ("node_type", self.node_type.is_some()),
        ];
        if let Some((extra, _)) = given.iter().find(|(f, g)| *g && !fields.contains(f)) {
            return Err((at(extra), format!("kind `{}` takes no `{extra}`", self.kind)));
        }
        let need = |v: Option<u64>, f: &str| v.ok_or_else(|| (at(f), "missing: this kind needs it".to_string()));
        let host = || self.host.ok_or_else(|| (at("host"), "missing: this kind needs it".to_string()));
        let fault = match self.kind.as_str() {
            "crash_node" => Fault::CrashNode { host: host()?, restart_ms: self.restart_ms },
            "partition" => Fault::Partition {
                host: host()?,
                ms: need(self.ms, "ms")?,
                inbound: self.inbound.unwrap_or(true),
                outbound: self.outbound.unwrap_or(true),
            },
            "clog" => {
                Fault::Clog { host: host()?, ms: need(self.ms, "ms")?, extra_ms: need(self.extra_ms, "extra_ms")? }
            }
            "pause" => Fault::Pause { host: host()?, ms: need(self.ms, "ms")? },
            "crash_worker" => Fault::CrashWorker { host: host()? },
            "hang" => Fault::Hang { host: host()?, ms: need(self.ms, "ms")? },
            "duplicate" => {
                let p = self.p.ok_or_else(|| (at("p"), "missing: this kind needs it".to_string()))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err((at("p"), format!("{p} is not a probability")));
                }
                Fault::Duplicate { p, ms: need(self.ms, "ms")? }
            }
            "reorder" => Fault::Reorder { jitter_ms: need(self.jitter_ms, "jitter_ms")?, ms: need(self.ms, "ms")? },
            "swizzle" => Fault::Swizzle { ms: need(self.ms, "ms")? },
            "disconnect" => Fault::Disconnect { host: host()? },
            "driver_exit" => Fault::DriverExit,
            "preempt" => Fault::Preempt { node_type: self.node_type.clone() },
            other => unreachable!("kind {other} is listed in FAULT_KINDS"),
        };
        Ok(Timed { at_ms: self.at_ms, fault })
    }
}

/// Faults drawn from the seed.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Swarm {
    /// How many.
    pub faults: usize,
    /// Over `[0, until_ms)`.
    pub until_ms: u64,
    /// The kinds to draw from (all by default).
    #[serde(default = "all_kinds")]
    pub kinds: Vec<String>,
}

fn all_kinds() -> Vec<String> {
    SWARM_KINDS.iter().map(|s| s.to_string()).collect()
}

/// Expectations beyond the oracles.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// `all`: every awaited value ready; `any`: each resolves, ready or failed; `none`: all fail.
    pub ready: String,
    /// Failure reasons allowed (variant names, e.g. `Infeasible`); empty allows any when
    /// `ready` is not `all`.
    pub reasons: Vec<String>,
    /// At least this many reconstructions.
    pub min_reconstructions: u64,
    /// At least this many retries.
    pub min_retries: u64,
    /// At least this many attempts handed to a node to run next after a running task.
    pub min_pipelined: u64,
    /// At least this many nodes declared lost.
    pub min_nodes_lost: u64,
    /// At most this many nodes declared lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_nodes_lost: Option<u64>,
    /// The run ends (everything resolved and freed) by this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_by_ms: Option<u64>,
    /// The autoscaler launched at least this many nodes.
    pub min_launched: u64,
    /// ... and at most this many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_launched: Option<u64>,
    /// At least this many launch requests failed.
    pub min_failed_launches: u64,
    /// At least this many nodes were taken back by the cloud.
    pub min_preempted: u64,
    /// Worker nodes the autoscaler keeps running at the end (by default, when node types are
    /// given: the sum of their `min_workers`, since the cluster must shrink back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_nodes: Option<u32>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            ready: "all".into(),
            reasons: Vec::new(),
            min_reconstructions: 0,
            min_retries: 0,
            min_pipelined: 0,
            min_nodes_lost: 0,
            max_nodes_lost: None,
            done_by_ms: None,
            min_launched: 0,
            max_launched: None,
            min_failed_launches: 0,
            min_preempted: 0,
            end_nodes: None,
        }
    }
}

/// The text of a TOML file, or the error naming it.
pub(crate) fn read(path: &Path) -> Result<String, ScenarioError> {
    std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { file: path.to_path_buf(), source })
}

/// TOML text parsed and then checked by `check`, whose error names a field; errors name the
/// file (`path`) and the line.
pub(crate) fn parse_checked<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    check: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ScenarioError> {
    let value: T = toml::from_str(text)
        .map_err(|e| ScenarioError::Parse { file: path.to_path_buf(), message: e.to_string().trim().to_string() })?;
    check(&value).map_err(|(field, message)| ScenarioError::Invalid {
        file: path.to_path_buf(),
        line: line_of(text, &field),
        field,
        message,
    })?;
    Ok(value)
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        Scenario::parse(path, &read(path)?)
    }

    /// Parses and checks scenario text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        parse_checked(path, text, Scenario::check)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, message: String| Err((field.to_string(), message));
        if self.cluster.nodes == 0 && self.node_types.is_empty() {
            return bad("cluster.nodes", "a cluster needs at least one node, or node types to launch".into());
        }
        if self.autoscaler.is_some() && self.node_types.is_empty() {
            return bad("autoscaler", "no node types to launch: give at least one [[node_type]]".into());
        }
        if self.node_types.is_empty() {
            let e = &self.expect;
            let autoscaled = [
                ("expect.min_launched", e.min_launched > 0),
                ("expect.max_launched", e.max_launched.is_some()),
                ("expect.min_failed_launches", e.min_failed_launches > 0),
                ("expect.min_preempted", e.min_preempted > 0),
                ("expect.end_nodes", e.end_nodes.is_some()),
            ];
            if let Some((field, _)) = autoscaled.iter().find(|(_, given)| *given) {
                return bad(field, "an autoscaler's expectation, but no [[node_type]] is given".into());
            }
        }
        if self.cluster.nodes == 0 && self.swarm.is_some() {
            return bad("swarm", "a swarm's faults strike the static nodes, and the cluster has none".into());
        }
        if let Some(spec) = self.autoscale() {
            spec.check()?;
            spec.check_simulated()?;
        }
        if self.cluster.nodes > 100_000 {
            return bad(
                "cluster.nodes",
                format!("{} nodes is more than the simulator takes (100000)", self.cluster.nodes),
            );
        }
        if self.seeds[0] >= self.seeds[1] {
            return bad("seeds", format!("[{}, {}] is empty: the end is exclusive", self.seeds[0], self.seeds[1]));
        }
        // Bounds that keep time and amounts far from overflow (a day is 86,400,000 ms).
        const MS_MAX: u64 = 1_000_000_000;
        let t = &self.timing;
        let times = [
            ("timing.latency_ms", t.latency_ms),
            ("timing.jitter_ms", t.jitter_ms),
            ("timing.heartbeat_ms", t.heartbeat_ms),
            ("timing.node_timeout_ms", t.node_timeout_ms),
            ("timing.infeasible_grace_ms", t.infeasible_grace_ms),
            ("timing.worker_start_ms", t.worker_start_ms),
            ("timing.safety_ms", t.safety_ms),
            ("timing.liveness_ms", t.liveness_ms),
            ("workload.ms", self.workload.ms.unwrap_or(0)),
        ];
        if let Some((field, v)) = times.iter().find(|(_, v)| *v > MS_MAX) {
            return bad(field, format!("{v} ms is more than {MS_MAX} ms"));
        }
        let amounts = [
            ("cluster.cpus", self.cluster.cpus, 1_000_000),
            ("cluster.gpus", self.cluster.gpus, 1_000_000),
            ("cluster.memory_gb", self.cluster.memory_gb, 1_000_000),
            ("cluster.store_mb", self.cluster.store_mb, 1 << 30),
            ("timing.bandwidth_mb_s", t.bandwidth_mb_s, 1 << 30),
            ("timing.max_lineage_mb", t.max_lineage_mb, 1 << 30),
            ("workload.bytes", self.workload.bytes.unwrap_or(0), 1 << 40),
        ];
        if let Some((field, v, max)) = amounts.iter().find(|(_, v, max)| v > max) {
            return bad(field, format!("{v} is more than {max}"));
        }
        let w = &self.workload;
        let counts = [
            ("workload.tasks", w.tasks),
            ("workload.maps", w.maps),
            ("workload.reduces", w.reduces),
            ("workload.fan_in", w.fan_in),
            ("workload.length", w.length),
            ("workload.width", w.width),
            ("workload.parents", w.parents),
            ("workload.actors", w.actors),
            ("workload.calls", w.calls),
            ("workload.groups", w.groups),
        ];
        if let Some((field, Some(v))) = counts.iter().find(|(_, v)| v.is_some_and(|v| v > 10_000_000)) {
            return bad(field, format!("{v} is more than the simulator takes (10,000,000)"));
        }
        if let Some(c) = w.cpus.filter(|c| *c > 1_000_000.0) {
            return bad("workload.cpus", format!("{c} is more than 1,000,000"));
        }
        if self.timing.bandwidth_mb_s == 0 {
            return bad("timing.bandwidth_mb_s", "must be above 0".into());
        }
        if self.timing.heartbeat_ms == 0 || self.timing.node_timeout_ms <= self.timing.heartbeat_ms {
            return bad(
                "timing.node_timeout_ms",
                format!(
                    "{} ms must exceed the heartbeat period ({} ms), or every node is declared dead",
                    self.timing.node_timeout_ms, self.timing.heartbeat_ms
                ),
            );
        }
        for (i, spec) in self.faults.iter().enumerate() {
            let t = spec.to_timed(i)?;
            let durations = [
                ("ms", spec.ms),
                ("restart_ms", spec.restart_ms),
                ("extra_ms", spec.extra_ms),
                ("jitter_ms", spec.jitter_ms),
            ];
            if let Some((f, Some(v))) = durations.iter().find(|(_, v)| v.is_some_and(|v| v > MS_MAX)) {
                return bad(&format!("fault[{i}].{f}"), format!("{v} ms is more than {MS_MAX} ms"));
            }
            if let Some(h) = t.fault.host().filter(|h| *h >= self.cluster.nodes) {
                return bad(
                    &format!("fault[{i}].host"),
                    format!("host {h}, but the cluster has {} nodes (0..{})", self.cluster.nodes, self.cluster.nodes),
                );
            }
            if let Fault::Preempt { node_type } = &t.fault {
                if self.node_types.is_empty() {
                    return bad(&format!("fault[{i}].kind"), "nothing to preempt: no [[node_type]] is given".into());
                }
                if let Some(name) = node_type.as_ref().filter(|n| !self.node_types.iter().any(|t| &t.name == *n)) {
                    return bad(&format!("fault[{i}].node_type"), format!("no node type `{name}`"));
                }
            }
            if t.at_ms >= self.timing.safety_ms {
                return bad(
                    &format!("fault[{i}].at_ms"),
                    format!("{} ms is after the safety phase ends ({} ms)", t.at_ms, self.timing.safety_ms),
                );
            }
        }
        if let Some(s) = &self.swarm {
            if let Some(k) = s.kinds.iter().find(|k| !SWARM_KINDS.contains(&k.as_str())) {
                return bad("swarm.kinds", format!("unknown fault kind `{k}` (known: {})", SWARM_KINDS.join(", ")));
            }
        }
        if !["all", "any", "none"].contains(&self.expect.ready.as_str()) {
            return bad("expect.ready", format!("`{}`: expected all, any or none", self.expect.ready));
        }
        let workload = self.workload.build(0)?;
        workload.validate().map_err(|m| ("workload".to_string(), m))?;
        Ok(())
    }

    /// The autoscaling cluster, when node types are given.
    pub fn autoscale(&self) -> Option<AutoscaleSpec> {
        (!self.node_types.is_empty()).then(|| AutoscaleSpec {
            autoscaler: self.autoscaler.clone().unwrap_or_default(),
            node_types: self.node_types.clone(),
        })
    }

    /// The workload for `seed` (only random DAGs depend on it).
    pub fn workload(&self, seed: u64) -> Workload {
        self.workload.build(seed).expect("checked when the scenario was read")
    }

    /// The run parameters for `seed`.
    pub fn params(&self, seed: u64) -> Params {
        let t = &self.timing;
        let c = &self.cluster;
        let resources = ResourceSet {
            cpu: Amount::units(c.cpus),
            gpu: Amount::units(c.gpus),
            memory: Amount::units(c.memory_gb << 30),
            ..ResourceSet::default()
        };
        let hosts =
            (0..c.nodes).map(|_| HostSpec { resources: resources.clone(), labels: Default::default() }).collect();
        let head = HeadConfig {
            heartbeat_period: Duration::from_millis(t.heartbeat_ms),
            node_timeout: Duration::from_millis(t.node_timeout_ms),
            infeasible_grace: Duration::from_millis(t.infeasible_grace_ms),
            max_lineage_bytes: t.max_lineage_mb << 20,
            ..HeadConfig::default()
        };
        let node = NodeConfig {
            heartbeat_period: Duration::from_millis(t.heartbeat_ms),
            object_store_capacity_bytes: c.store_mb << 20,
            ..NodeConfig::default()
        };
        let mut faults: Vec<Timed> = self
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| f.to_timed(i).expect("checked when the scenario was read"))
            .collect();
        if let Some(s) = &self.swarm {
            let until = s.until_ms.min(t.safety_ms);
            faults.extend(crate::faults::swarm(
                &mut Rng::new(seed, Stream::Faults),
                c.nodes,
                s.faults,
                until,
                &s.kinds,
            ));
            faults.sort_by_key(|f| f.at_ms);
        }
        Params {
            seed,
            hosts,
            head,
            node,
            net: NetParams {
                latency: Duration::from_millis(t.latency_ms),
                jitter: Duration::from_millis(t.jitter_ms),
                bandwidth: t.bandwidth_mb_s * 1_000_000,
            },
            worker_start: Duration::from_millis(t.worker_start_ms),
            workload: self.workload(seed),
            faults,
            safety: Duration::from_millis(t.safety_ms),
            liveness: Duration::from_millis(t.liveness_ms),
            check_every: self.check_every,
            tamper: None,
            timeline: false,
            record_runs: false,
            exact_durations: false,
            crashed_stay_down: false,
            progress: None,
            autoscale: self.autoscale(),
        }
    }

    /// Runs seed `seed` (with `tamper`, for oracle self-tests) and checks the expectations.
    pub fn run(&self, seed: u64, tamper: Option<Tamper>) -> Outcome {
        let mut params = self.params(seed);
        params.tamper = tamper;
        self.run_params(params)
    }

    /// Runs `params` (made by [`Scenario::params`], then adjusted) and checks the expectations.
    pub fn run_params(&self, params: Params) -> Outcome {
        let mut outcome = crate::world::World::new(params).run();
        self.check_expectations(&mut outcome);
        outcome
    }

    /// The scenario `keel chaos` runs: a random DAG of `tasks` tasks on `nodes` four-CPU nodes
    /// under a swarm of faults (about one per ten nodes, at least three). Values may fail (a
    /// task's retries can run out), but each must resolve and every oracle must hold.
    pub fn chaos(nodes: usize, tasks: usize) -> Scenario {
        Scenario {
            description: format!("chaos: a random DAG of {tasks} tasks on {nodes} nodes under a swarm of faults"),
            seeds: [0, 1],
            cluster: Cluster { nodes, cpus: 4, gpus: 0, memory_gb: 16, store_mb: 1024 },
            timing: Timing { node_timeout_ms: 400, ..Timing::default() },
            workload: WorkloadSpec { kind: "random_dag".into(), tasks: Some(tasks), ..WorkloadSpec::default() },
            faults: Vec::new(),
            swarm: Some(Swarm { faults: (nodes / 10).max(3), until_ms: 2500, kinds: all_kinds() }),
            // Enough faults can spend a task's retries on rebuilds: failures are allowed, as long
            // as every awaited value resolves with its reason and every oracle holds.
            expect: Expect { ready: "any".into(), ..Expect::default() },
            check_every: 1000,
            autoscaler: None,
            node_types: Vec::new(),
        }
    }

    /// The scenario as TOML, as a scenario file holds it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a scenario serialises")
    }

    fn check_expectations(&self, o: &mut Outcome) {
        let e = &self.expect;
        let mut broken = Vec::new();
        let failed = o.counts.failed;
        match e.ready.as_str() {
            "all" if failed > 0 => broken.push(format!("{failed} awaited values failed: {:?}", o.failure_reasons)),
            "none" if o.counts.ready > 0 => {
                broken.push(format!("{} awaited values were ready, none expected", o.counts.ready))
            }
            _ => {}
        }
        if !e.reasons.is_empty() {
            for (reason, n) in &o.failure_reasons {
                if !e.reasons.contains(reason) {
                    broken.push(format!("{n} values failed with {reason}, not among {:?}", e.reasons));
                }
            }
        }
        let h = &o.head;
        if h.reconstructions < e.min_reconstructions {
            broken.push(format!("{} reconstructions, expected at least {}", h.reconstructions, e.min_reconstructions));
        }
        if h.retries < e.min_retries {
            broken.push(format!("{} retries, expected at least {}", h.retries, e.min_retries));
        }
        if h.pipelined < e.min_pipelined {
            broken.push(format!("{} attempts pipelined, expected at least {}", h.pipelined, e.min_pipelined));
        }
        if h.nodes_lost < e.min_nodes_lost {
            broken.push(format!("{} nodes lost, expected at least {}", h.nodes_lost, e.min_nodes_lost));
        }
        if let Some(max) = e.max_nodes_lost.filter(|m| h.nodes_lost > *m) {
            broken.push(format!("{} nodes lost, expected at most {max}", h.nodes_lost));
        }
        if let Some(by) = e.done_by_ms.filter(|by| o.end_ms > *by) {
            broken.push(format!("the run ended at {} ms, expected by {by} ms", o.end_ms));
        }
        let a = o.autoscale.clone().unwrap_or_default();
        if a.launched < e.min_launched {
            broken.push(format!("{} nodes launched, expected at least {}", a.launched, e.min_launched));
        }
        if let Some(max) = e.max_launched.filter(|m| a.launched > *m) {
            broken.push(format!("{} nodes launched, expected at most {max}", a.launched));
        }
        if a.failed_requests < e.min_failed_launches {
            broken.push(format!("{} launches failed, expected at least {}", a.failed_requests, e.min_failed_launches));
        }
        if a.preempted < e.min_preempted {
            broken.push(format!("{} nodes preempted, expected at least {}", a.preempted, e.min_preempted));
        }
        let min_workers: u32 = self.node_types.iter().map(|t| t.min_workers).sum();
        let end_nodes = e.end_nodes.or((!self.node_types.is_empty()).then_some(min_workers));
        if let Some(want) = end_nodes.filter(|n| a.end_nodes != *n) {
            broken.push(format!("{} autoscaled nodes running at the end, expected {want}", a.end_nodes));
        }
        for detail in broken {
            o.violations.push(Violation { property: Property::Expectation, at_ms: o.end_ms, detail });
        }
    }
}

/// The line (1-based) where `field` (`fault[2].host`, `workload.kind`) is written in `text`, or
/// where its table starts when it is missing.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table = doc.as_table();
    let mut span = None;
    let segments: Vec<&str> = field.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*segment, None),
        };
        // A missing field is shown where its table starts.
        let Some((key, item)) = table.get_key_value(name) else { break };
        span = key.span().or(item.span()).or(span);
        let last = i + 1 == segments.len();
        match (index, last) {
            (Some(n), _) => {
                let t = item.as_array_of_tables()?.get(n)?;
                span = t.span().or(span);
                table = t;
            }
            (None, false) => table = item.as_table()?,
            (None, true) => {}
        }
    }
    let start = span?.start;
    Some(text[..start.min(text.len())].matches('\n').count() + 1)
}

fn parse_strategy(s: &str) -> Option<PlacementStrategy> {
    match s {
        "PACK" => Some(PlacementStrategy::Pack),
        "SPREAD" => Some(PlacementStrategy::Spread),
        "STRICT_PACK" => Some(PlacementStrategy::StrictPack),
        "STRICT_SPREAD" => Some(PlacementStrategy::StrictSpread),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("story.toml"), text)
    }

    const SMALL: &str = r#"
description = "four tasks"
[cluster]
nodes = 2
cpus = 2
[workload]
kind = "independent"
tasks = 4
"#;

    #[test]
    fn a_small_scenario_parses_with_defaults() {
        let s = parse(SMALL).unwrap();
        assert_eq!(s.seeds, [0, 4]);
        assert_eq!(s.timing.node_timeout_ms, 1000);
        assert_eq!(s.workload(0).tasks.len(), 4);
    }

    #[test]
    fn autoscaling_scenarios_are_checked_against_their_node_types() {
        let e = parse(&format!("{SMALL}\n[[fault]]\nat_ms = 5\nkind = \"preempt\"\n")).unwrap_err().to_string();
        assert_eq!(e, "story.toml: line 12: fault[0].kind: nothing to preempt: no [[node_type]] is given");
        let typed = SMALL.replace("nodes = 2", "nodes = 0")
            + "\n[[node_type]]\nname = \"cpu2\"\ncpus = 2\nmax_workers = 3\nlaunch_min_s = 1\nlaunch_mean_s = 2\nlaunch_max_s = 3\n";
        let s = parse(&typed).unwrap();
        assert_eq!(s.autoscale().unwrap().config().node_types[0].name, "cpu2");
        assert_eq!(s.params(0).autoscale, s.autoscale());
        let e = parse(&format!("{typed}\n[[fault]]\nat_ms = 5\nkind = \"preempt\"\nnode_type = \"gpu\"\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "story.toml: line 21: fault[0].node_type: no node type `gpu`");
        let e = parse(&typed.replace("max_workers = 3", "max_workers = 3\nmin_workers = 4")).unwrap_err().to_string();
        assert_eq!(e, "story.toml: line 14: node_type[0].min_workers: 4 is above max_workers (3)");
        let e = parse(&SMALL.replace("nodes = 2", "nodes = 0")).unwrap_err().to_string();
        assert!(e.contains("cluster.nodes: a cluster needs at least one node, or node types to launch"), "{e}");
        let e = parse(&format!("{SMALL}\n[expect]\nmin_launched = 1\n")).unwrap_err().to_string();
        assert!(e.contains("expect.min_launched: an autoscaler's expectation, but no [[node_type]]"), "{e}");
        let e = parse(&format!("{typed}\n[swarm]\nfaults = 2\nuntil_ms = 100\n")).unwrap_err().to_string();
        assert!(e.contains("swarm: a swarm's faults strike the static nodes"), "{e}");
        // A fault on every host before any host exists does nothing (and does not panic).
        let swizzle =
            format!("{typed}\n[autoscaler]\nidle_timeout_s = 1\n\n[[fault]]\nat_ms = 1\nkind = \"swizzle\"\nms = 50\n");
        let swizzle = parse(&swizzle).unwrap();
        assert_eq!(swizzle.run(0, None).violations, Vec::new());
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let e = parse(&format!("{SMALL}\n[expect]\nredy = \"all\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("story.toml: "), "{e}");
        assert!(e.contains("line 11") && e.contains("unknown field `redy`"), "{e}");
        let e = parse(&format!("{SMALL}\n[[fault]]\nat_ms = 5\nkind = \"crash_node\"\nhost = 7\n")).unwrap_err();
        assert_eq!(e.to_string(), "story.toml: line 13: fault[0].host: host 7, but the cluster has 2 nodes (0..2)");
        let e = parse(&format!("{SMALL}\n[[fault]]\nat_ms = 5\nkind = \"melt\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("story.toml: line 12: fault[0].kind: unknown kind `melt`"), "{e}");
        let e = parse(&format!("{SMALL}\n[[fault]]\nat_ms = 5\nkind = \"pause\"\nhost = 1\n")).unwrap_err();
        assert_eq!(e.to_string(), "story.toml: line 10: fault[0].ms: missing: this kind needs it");
        let e = parse(&format!("{SMALL}\n[[fault]]\nat_ms = \"soon\"\nkind = \"pause\"\n")).unwrap_err().to_string();
        assert!(e.contains("line 11") && e.contains("invalid type"), "{e}");
        let e = parse(&SMALL.replace("tasks = 4", "tasks = 4\nmaps = 3")).unwrap_err().to_string();
        assert_eq!(e, "story.toml: line 9: workload.maps: kind `independent` takes no `maps`");
        let e = parse(&SMALL.replace("tasks = 4", "tasks = \"many\"")).unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("invalid type"), "{e}");
        let e = parse(&format!("{SMALL}\n[timing]\nnode_timeout_ms = 50\n")).unwrap_err().to_string();
        assert!(e.contains("timing.node_timeout_ms"), "{e}");
        let e = parse(&format!("{SMALL}\n[[fault]]\nat_ms = 5\nkind = \"pause\"\nhost = 1\nms = 99999999999\n"))
            .unwrap_err();
        assert_eq!(e.to_string(), "story.toml: line 14: fault[0].ms: 99999999999 ms is more than 1000000000 ms");
        let e = parse(&SMALL.replace("cpus = 2", "cpus = 9999999999")).unwrap_err().to_string();
        assert!(e.contains("cluster.cpus"), "{e}");
    }
}
