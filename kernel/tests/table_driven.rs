//! Table-driven stories kept as text in `tests/testdata/*.txt` (raft-rs style): commands, a line
//! `----`, then the head's decisions those commands must produce, one per line.
//!
//! Run with `KEEL_UPDATE_TESTDATA=1` to rewrite the expected part after a deliberate change, then
//! read the diff: every changed line is a changed decision.
//!
//! Commands (names are the test's own; tasks and groups are referred to by name):
//! - `node cpus=N [gpus=G] [label=k:v]` adds a host (hosts are numbered from 0)
//! - `submit NAME [fn=BEHAVIOUR] [cpus=N] [gpus=F] [args=A,B] [returns=N] [retries=N]
//!   [strategy=spread|pg:GROUP:BUNDLE|affinity:HOST|soft-affinity:HOST] [label=k:v]`
//! - `subscribe NAME...` (all returns of those tasks), `release NAME` (drops the driver's handle)
//! - `cancel NAME [force] [recursive]`
//! - `group NAME STRATEGY CPUS,CPUS,...` (STRATEGY: pack, spread, strict-pack, strict-spread)
//! - `crash HOST`, `restart HOST`, `run MS`

use keel_kernel::head::HeadOutput;
use keel_kernel::proto::{
    Arg, DriverToHead, HeadToDriver, HeadToNode, LabelConstraint, Labels, PlacementGroupSpec, PlacementStrategy,
    SchedulingStrategy, Welcome,
};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

struct Story {
    c: Cluster,
    job: JobId,
    tasks: BTreeMap<String, TaskSpec>,
    names: BTreeMap<TaskId, String>,
    groups: BTreeMap<String, PlacementGroupId>,
    seq: u64,
}

use keel_kernel::proto::TaskSpec;

impl Story {
    fn new() -> Story {
        // top_k = 1: the table shows the policy itself, with no random tie-breaking.
        let mut config = HeadConfig { seed: 1, infeasible_grace: Duration::from_secs(1), ..HeadConfig::default() };
        config.scheduler.top_k = 1;
        let mut c = Cluster::new(config, NodeConfig::default(), Duration::from_millis(1));
        let job = c.start_job("story");
        Story { c, job, tasks: BTreeMap::new(), names: BTreeMap::new(), groups: BTreeMap::new(), seq: 0 }
    }

    fn run_line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let opts: BTreeMap<&str, &str> = words.iter().filter_map(|w| w.split_once('=')).collect();
        let flags: Vec<&str> = words.iter().copied().filter(|w| !w.contains('=')).collect();
        match words[0] {
            "node" => {
                let mut r = ResourceSet::cpus(num(&opts, "cpus", 1)?);
                if let Some(g) = opts.get("gpus") {
                    r = r.with_gpu(Amount::from_f64(g.parse().map_err(|_| "bad gpus")?).ok_or("bad gpus")?);
                }
                let mut labels = Labels::new();
                if let Some((k, v)) = opts.get("label").and_then(|l| l.split_once(':')) {
                    labels.insert(k.into(), v.into());
                }
                self.c.add_host(r, labels);
                self.c.run_for(Duration::from_millis(2));
            }
            "submit" => self.submit(words[1], &opts)?,
            "subscribe" => {
                let objects = flags[1..].iter().flat_map(|n| self.tasks[*n].return_ids()).collect();
                self.c.driver(self.job, DriverToHead::Subscribe(objects)).map_err(|e| e.to_string())?;
            }
            "release" => {
                let object = self.tasks[words[1]].return_ids().next().ok_or("no return")?;
                self.c.driver(self.job, DriverToHead::RemoveRef(object)).map_err(|e| e.to_string())?;
            }
            "cancel" => {
                let task = self.tasks[words[1]].task;
                let msg = DriverToHead::Cancel {
                    task,
                    force: flags.contains(&"force"),
                    recursive: flags.contains(&"recursive"),
                };
                self.c.driver(self.job, msg).map_err(|e| e.to_string())?;
            }
            "group" => {
                let strategy = match words[2] {
                    "pack" => PlacementStrategy::Pack,
                    "spread" => PlacementStrategy::Spread,
                    "strict-pack" => PlacementStrategy::StrictPack,
                    "strict-spread" => PlacementStrategy::StrictSpread,
                    other => return Err(format!("unknown strategy {other}")),
                };
                let bundles = words[3].split(',').map(|n| n.parse().map(ResourceSet::cpus)).collect::<Result<_, _>>();
                let spec = PlacementGroupSpec {
                    bundles: bundles.map_err(|_| "bad bundles")?,
                    strategy,
                    name: Some(words[1].into()),
                    detached: false,
                };
                let pg = PlacementGroupId(self.groups.len() as u64 + 1);
                self.groups.insert(words[1].into(), pg);
                self.c.driver(self.job, DriverToHead::CreatePlacementGroup { pg, spec }).map_err(|e| e.to_string())?;
            }
            "crash" => self.c.crash_host(words[1].parse().map_err(|_| "bad host")?),
            "restart" => self.c.restart_host(words[1].parse().map_err(|_| "bad host")?),
            "run" => {
                self.c.run_for(Duration::from_millis(words[1].parse().map_err(|_| "bad ms")?));
            }
            other => return Err(format!("unknown command {other}")),
        }
        self.c.check_invariants();
        Ok(())
    }

    fn submit(&mut self, name: &str, opts: &BTreeMap<&str, &str>) -> Result<(), String> {
        self.seq += 1;
        let mut spec = task(self.job, self.seq, opts.get("fn").copied().unwrap_or("ms=1"));
        spec.resources = ResourceSet::cpus(num(opts, "cpus", 1)?);
        if let Some(g) = opts.get("gpus") {
            spec.resources.gpu = Amount::from_f64(g.parse().map_err(|_| "bad gpus")?).ok_or("bad gpus")?;
        }
        spec.num_returns = num(opts, "returns", 1)? as u32;
        spec.max_retries = num(opts, "retries", 3)? as u32;
        if let Some(args) = opts.get("args") {
            for a in args.split(',') {
                let object =
                    self.tasks.get(a).ok_or(format!("unknown task {a}"))?.return_ids().next().ok_or("no return")?;
                spec.args.push(Arg::Ref(object));
            }
        }
        if let Some((k, v)) = opts.get("label").and_then(|l| l.split_once(':')) {
            spec.label_selector.push(LabelConstraint::In { key: k.into(), values: vec![v.into()] });
        }
        spec.strategy = match opts.get("strategy").map(|s| s.split(':').collect::<Vec<_>>()).as_deref() {
            None => SchedulingStrategy::Default,
            Some(["spread"]) => SchedulingStrategy::Spread,
            Some(["pg", g, b]) => SchedulingStrategy::PlacementGroup {
                pg: self.groups[*g],
                bundle: Some(b.parse().map_err(|_| "bad bundle")?),
            },
            Some([kind @ ("affinity" | "soft-affinity"), host]) => SchedulingStrategy::NodeAffinity {
                node: self.c.node_id(host.parse().map_err(|_| "bad host")?),
                soft: *kind == "soft-affinity",
            },
            Some(other) => return Err(format!("unknown strategy {other:?}")),
        };
        self.names.insert(spec.task, name.to_string());
        self.tasks.insert(name.to_string(), spec.clone());
        self.c.submit(self.job, spec).map_err(|e| e.to_string())
    }

    fn task_name(&self, task: TaskId) -> String {
        self.names.get(&task).cloned().unwrap_or_else(|| format!("{task}"))
    }

    fn object_name(&self, object: ObjectId) -> String {
        format!("{}.{}", self.task_name(object.task), object.index)
    }

    /// One line per decision worth reading; registrations and heartbeat-level chatter are left out.
    fn decisions(&self) -> String {
        let mut out = String::new();
        for (t, o) in &self.c.head_log {
            let ms = t.0 / 1_000_000;
            let line = match o {
                HeadOutput::ToConn { msg: Welcome::NodeRegistered(n), .. } => format!("register {n}"),
                HeadOutput::ToNode { node, msg: HeadToNode::RunTask { spec, attempt, allocation, .. } } => {
                    let gpus: Vec<u32> = allocation.gpus.iter().map(|(d, _)| *d).collect();
                    let gpus = if gpus.is_empty() { String::new() } else { format!(" gpus={gpus:?}") };
                    format!("run {}#{attempt} on {node}{gpus}", self.task_name(spec.task))
                }
                HeadOutput::ToNode { node, msg: HeadToNode::CancelTask { task, attempt, force } } => {
                    format!("cancel {}#{attempt} on {node} force={force}", self.task_name(*task))
                }
                HeadOutput::ToNode { node, msg: HeadToNode::FreeObjects(objs) } => {
                    let names: Vec<String> = objs.iter().map(|o| self.object_name(*o)).collect();
                    format!("free {} on {node}", names.join(","))
                }
                HeadOutput::ToDriver { msg: HeadToDriver::ObjectReady { object, .. }, .. } => {
                    format!("ready {}", self.object_name(*object))
                }
                HeadOutput::ToDriver { msg: HeadToDriver::ObjectFailed { object, reason }, .. } => {
                    let kind = format!("{reason:?}");
                    format!(
                        "failed {}: {}",
                        self.object_name(*object),
                        kind.split([' ', '{', '(']).next().unwrap_or("")
                    )
                }
                HeadOutput::ToDriver { msg: HeadToDriver::PlacementGroupReady { pg, nodes }, .. } => {
                    format!("group {pg} on {nodes:?}")
                }
                HeadOutput::ToDriver { msg: HeadToDriver::PlacementGroupFailed { pg, .. }, .. } => {
                    format!("group {pg} failed")
                }
                HeadOutput::NodeDead(n) => format!("dead {n}"),
                _ => continue,
            };
            let _ = writeln!(out, "{ms:>6}ms {line}");
        }
        out
    }
}

fn num(opts: &BTreeMap<&str, &str>, key: &str, default: u64) -> Result<u64, String> {
    opts.get(key).map_or(Ok(default), |v| v.parse().map_err(|_| format!("bad {key}={v}")))
}

fn run_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (commands, expected) = text.split_once("\n----\n").ok_or("missing ---- separator")?;
    let mut story = Story::new();
    for (i, line) in commands.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        story.run_line(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
    }
    let actual = story.decisions();
    if std::env::var_os("KEEL_UPDATE_TESTDATA").is_some() {
        std::fs::write(path, format!("{commands}\n----\n{actual}")).map_err(|e| e.to_string())?;
        return Ok(());
    }
    if actual != expected {
        return Err(format!("{}: decisions differ\n--- expected\n{expected}--- actual\n{actual}", path.display()));
    }
    Ok(())
}

#[test]
fn every_story_in_testdata_produces_its_recorded_decisions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("testdata folder").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 5, "expected the stories in {}", dir.display());
    let failures: Vec<String> = files.iter().filter_map(|f| run_file(f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
