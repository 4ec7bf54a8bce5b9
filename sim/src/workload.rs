//! Workloads: what a job's driver submits, as plain data, and generators for the usual shapes.
//!
//! A [`Workload`] is a list of planned tasks (with dependencies by index), actors and placement
//! groups. The world's driver turns it into specs once its job is registered, submits each item
//! at its time, awaits the *final* outputs and drops the handles of the others as soon as every
//! consumer has been submitted, as a careful Ray driver would (`del refs`).
//!
//! What a task does is written in its function name, read by the simulated worker:
//! `ms=N` (runs N ms), `bytes=N` (each return value is N bytes), `fail` (raises an application
//! error), `spawn=N` (submits N child tasks and returns their refs inside its value).

use crate::rng::Rng;
use keel_kernel::proto::{LabelConstraint, PlacementStrategy};
use keel_kernel::ResourceSet;

/// Where a planned task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The hybrid policy.
    Default,
    /// SPREAD.
    Spread,
    /// Bundle `bundle` of placement group number `group` of the workload.
    Group {
        /// Index into [`Workload::groups`].
        group: usize,
        /// Bundle index.
        bundle: u32,
    },
}

/// One planned task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskPlan {
    /// Submitted this long after the job starts (and never before the tasks it depends on).
    pub at_ms: u64,
    /// `(task, return index)` of the values it takes by reference (1-based return index).
    pub deps: Vec<(usize, u32)>,
    /// How many values it returns.
    pub returns: u32,
    /// How long it runs.
    pub ms: u64,
    /// Size of each return value.
    pub bytes: u64,
    /// CPUs it needs, in hundredths.
    pub cpu_hundredths: u64,
    /// What it needs, when more than CPUs (GPUs, memory, custom resources): replaces
    /// `cpu_hundredths`.
    pub resources: Option<ResourceSet>,
    /// Labels the node it runs on must have.
    pub labels: Vec<LabelConstraint>,
    /// Raises an application error.
    pub fail: bool,
    /// Child tasks it submits (their refs are returned inside its value).
    pub spawn: u32,
    /// Where it runs.
    pub placement: Placement,
    /// A method call on actor number `actor` (index into [`Workload::actors`]).
    pub actor: Option<usize>,
    /// Whether the driver awaits its values to the end (otherwise it drops them once every
    /// consumer is submitted).
    pub final_output: bool,
    /// `max_retries`.
    pub retries: u32,
}

impl TaskPlan {
    /// A one-CPU, one-return task of `ms` milliseconds returning `bytes` bytes.
    pub fn new(ms: u64, bytes: u64) -> TaskPlan {
        TaskPlan {
            at_ms: 0,
            deps: Vec::new(),
            returns: 1,
            ms,
            bytes,
            cpu_hundredths: 100,
            resources: None,
            labels: Vec::new(),
            fail: false,
            spawn: 0,
            placement: Placement::Default,
            actor: None,
            final_output: true,
            retries: 3,
        }
    }

    /// What the function name says: duration, value size, failure, children.
    pub fn behaviour(&self) -> (u64, u64, bool, u32) {
        (self.ms, self.bytes, self.fail, self.spawn)
    }

    /// The function name that tells the simulated worker what to do.
    pub fn function(&self) -> String {
        let mut f = format!("ms={};bytes={}", self.ms, self.bytes);
        if self.fail {
            f.push_str(";fail");
        }
        if self.spawn > 0 {
            f.push_str(&format!(";spawn={}", self.spawn));
        }
        f
    }
}

/// One planned actor.
#[derive(Clone, Debug, PartialEq)]
pub struct ActorPlan {
    /// Created this long after the job starts.
    pub at_ms: u64,
    /// CPUs it holds, in hundredths.
    pub cpu_hundredths: u64,
    /// `max_restarts`.
    pub max_restarts: u32,
    /// `max_task_retries`.
    pub max_task_retries: u32,
}

/// One planned placement group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPlan {
    /// Created this long after the job starts.
    pub at_ms: u64,
    /// Number of bundles.
    pub bundles: u32,
    /// CPUs per bundle, in hundredths.
    pub cpu_hundredths: u64,
    /// What each bundle holds, when more than CPUs: replaces `cpu_hundredths`.
    pub bundle: Option<ResourceSet>,
    /// The strategy.
    pub strategy: PlacementStrategy,
    /// Removed as soon as every task placed in it has ended (a gang job's reservation), rather
    /// than when the driver is done.
    pub release_when_done: bool,
    /// Created only once this planned task has ended (the driver waits for its value, as a
    /// driver that runs one job after another does), so that the group holds nothing before.
    /// Tasks placed in the group, and tasks that take their values, are held back until then.
    pub after: Option<usize>,
}

/// What one job does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// Tasks, in submission order (dependencies point backwards).
    pub tasks: Vec<TaskPlan>,
    /// Actors.
    pub actors: Vec<ActorPlan>,
    /// Placement groups.
    pub groups: Vec<GroupPlan>,
}

impl Workload {
    /// Checks that dependencies point backwards, indices exist and amounts are sane.
    pub fn validate(&self) -> Result<(), String> {
        for (i, t) in self.tasks.iter().enumerate() {
            for &(d, r) in &t.deps {
                if d >= i {
                    return Err(format!("task {i} depends on task {d}, which is not submitted before it"));
                }
                if r == 0 || r > self.tasks[d].returns {
                    return Err(format!("task {i} takes return {r} of task {d}, which has {}", self.tasks[d].returns));
                }
            }
            if t.returns == 0 {
                return Err(format!("task {i} returns nothing: every planned task returns at least one value"));
            }
            if let Some(a) = t.actor.filter(|a| *a >= self.actors.len()) {
                return Err(format!("task {i} calls actor {a}, but the workload has {}", self.actors.len()));
            }
            if let Placement::Group { group, bundle } = t.placement {
                if self.groups.get(group).and_then(|g| g.after).is_some_and(|a| a >= i) {
                    return Err(format!(
                        "task {i} runs in group {group}, which waits for a task not submitted before it"
                    ));
                }
                let Some(g) = self.groups.get(group) else {
                    return Err(format!("task {i} runs in group {group}, but the workload has {}", self.groups.len()));
                };
                if bundle >= g.bundles {
                    return Err(format!("task {i} runs in bundle {bundle} of group {group}, which has {}", g.bundles));
                }
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            if group.after.is_some_and(|a| a >= self.tasks.len()) {
                return Err(format!(
                    "group {g} waits for task {}, but the workload has {}",
                    group.after.unwrap_or(0),
                    self.tasks.len()
                ));
            }
        }
        Ok(())
    }

    /// `n` independent tasks of `ms` milliseconds, all awaited.
    pub fn independent(n: usize, ms: u64, bytes: u64) -> Workload {
        Workload { tasks: (0..n).map(|_| TaskPlan::new(ms, bytes)).collect(), ..Workload::default() }
    }

    /// A shuffle: `maps` tasks each return `reduces` partitions of `bytes` bytes; reduce `r` takes
    /// partition `r` of every map. Only the reduces' outputs are awaited.
    pub fn map_reduce(maps: usize, reduces: usize, ms: u64, bytes: u64) -> Workload {
        let mut tasks = Vec::with_capacity(maps + reduces);
        for _ in 0..maps {
            tasks.push(TaskPlan { returns: reduces as u32, final_output: false, ..TaskPlan::new(ms, bytes) });
        }
        for r in 0..reduces {
            let deps = (0..maps).map(|m| (m, r as u32 + 1)).collect();
            tasks.push(TaskPlan { deps, ..TaskPlan::new(ms, 8) });
        }
        Workload { tasks, ..Workload::default() }
    }

    /// `maps` tasks each returning one value of `bytes` bytes, and `reduces` tasks each taking
    /// `fan_in` of them (reduce `r` takes maps `r * fan_in ..`, wrapping around). Only the
    /// reduces' outputs are awaited. Where every reduce needs every map, see [`map_reduce`](Self::map_reduce).
    pub fn map_reduce_fan_in(maps: usize, reduces: usize, fan_in: usize, ms: u64, bytes: u64) -> Workload {
        let mut tasks = Vec::with_capacity(maps + reduces);
        for _ in 0..maps {
            tasks.push(TaskPlan { final_output: false, ..TaskPlan::new(ms, bytes) });
        }
        for r in 0..reduces {
            let mut deps: Vec<(usize, u32)> = (0..fan_in).map(|i| ((r * fan_in + i) % maps.max(1), 1)).collect();
            deps.sort_unstable();
            deps.dedup();
            tasks.push(TaskPlan { deps, ..TaskPlan::new(ms, 8) });
        }
        Workload { tasks, ..Workload::default() }
    }

    /// A chain of `len` tasks, each taking the previous one's value; only the last is awaited.
    pub fn chain(len: usize, ms: u64, bytes: u64) -> Workload {
        let tasks = (0..len)
            .map(|i| TaskPlan {
                deps: if i == 0 { Vec::new() } else { vec![(i - 1, 1)] },
                final_output: i + 1 == len,
                ..TaskPlan::new(ms, bytes)
            })
            .collect();
        Workload { tasks, ..Workload::default() }
    }

    /// One source, `width` tasks taking its value, one sink taking all of theirs.
    pub fn fan(width: usize, ms: u64, bytes: u64) -> Workload {
        let mut tasks = vec![TaskPlan { final_output: false, ..TaskPlan::new(ms, bytes) }];
        for _ in 0..width {
            tasks.push(TaskPlan { deps: vec![(0, 1)], final_output: false, ..TaskPlan::new(ms, bytes) });
        }
        tasks.push(TaskPlan { deps: (1..=width).map(|i| (i, 1)).collect(), ..TaskPlan::new(ms, 8) });
        Workload { tasks, ..Workload::default() }
    }

    /// `parents` tasks that each submit `children` child tasks and return their refs.
    pub fn nested(parents: usize, children: u32, ms: u64) -> Workload {
        Workload {
            tasks: (0..parents).map(|_| TaskPlan { spawn: children, ..TaskPlan::new(ms, 8) }).collect(),
            ..Workload::default()
        }
    }

    /// `actors` actors, each called `calls` times in order by the driver.
    pub fn actors(actors: usize, calls: usize, ms: u64, max_restarts: u32, max_task_retries: u32) -> Workload {
        let actor_plans =
            (0..actors).map(|_| ActorPlan { at_ms: 0, cpu_hundredths: 100, max_restarts, max_task_retries }).collect();
        let mut tasks = Vec::new();
        for c in 0..calls {
            for a in 0..actors {
                tasks.push(TaskPlan {
                    actor: Some(a),
                    at_ms: c as u64,
                    cpu_hundredths: 0,
                    retries: max_task_retries,
                    ..TaskPlan::new(ms, 8)
                });
            }
        }
        Workload { tasks, actors: actor_plans, ..Workload::default() }
    }

    /// `groups` gangs of `bundles` one-CPU bundles, each bundle running one task.
    pub fn gangs(groups: usize, bundles: u32, strategy: PlacementStrategy, ms: u64) -> Workload {
        let group_plans = (0..groups)
            .map(|_| GroupPlan {
                at_ms: 0,
                bundles,
                cpu_hundredths: 100,
                bundle: None,
                strategy,
                release_when_done: false,
                after: None,
            })
            .collect();
        let mut tasks = Vec::new();
        for g in 0..groups {
            for b in 0..bundles {
                tasks.push(TaskPlan {
                    placement: Placement::Group { group: g, bundle: b },
                    cpu_hundredths: 100,
                    ..TaskPlan::new(ms, 8)
                });
            }
        }
        Workload { tasks, groups: group_plans, ..Workload::default() }
    }

    /// A random DAG of `n` tasks: each takes up to three earlier values; about one task in four is
    /// awaited (and every task nobody consumes).
    pub fn random_dag(n: usize, rng: &mut Rng) -> Workload {
        let mut tasks: Vec<TaskPlan> = Vec::with_capacity(n);
        let mut consumed = vec![false; n];
        for i in 0..n {
            let mut deps = Vec::new();
            if i > 0 {
                for _ in 0..rng.below(4) {
                    let d = rng.below(i as u64) as usize;
                    if !deps.iter().any(|(x, _)| *x == d) {
                        deps.push((d, 1));
                        consumed[d] = true;
                    }
                }
            }
            let bytes = if rng.chance(0.3) { rng.between(200_000, 2_000_000) } else { rng.between(8, 1000) };
            tasks.push(TaskPlan {
                deps,
                at_ms: rng.below(200),
                final_output: rng.chance(0.25),
                ..TaskPlan::new(rng.between(1, 100), bytes)
            });
        }
        for (t, c) in tasks.iter_mut().zip(consumed) {
            t.final_output |= !c;
        }
        // Submission times must not go backwards along dependencies: sort by time, stably, and
        // keep indices meaningful by making every time at least its dependencies'.
        for i in 0..n {
            let at = tasks[i].deps.iter().map(|(d, _)| tasks[*d].at_ms).max().unwrap_or(0);
            tasks[i].at_ms = tasks[i].at_ms.max(at);
        }
        Workload { tasks, ..Workload::default() }
    }

    /// Total CPUs (hundredths) of the largest single request, for feasibility checks.
    pub fn largest_cpu_request(&self) -> u64 {
        let tasks = self.tasks.iter().map(|t| t.cpu_hundredths);
        let actors = self.actors.iter().map(|a| a.cpu_hundredths);
        let bundles = self.groups.iter().map(|g| g.cpu_hundredths);
        tasks.chain(actors).chain(bundles).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn generated_workloads_are_valid() {
        let mut rng = Rng::new(3, Stream::Workload);
        let all = [
            Workload::independent(10, 5, 8),
            Workload::map_reduce(8, 3, 5, 1 << 20),
            Workload::map_reduce_fan_in(10, 4, 3, 5, 1 << 20),
            Workload::chain(20, 1, 1 << 20),
            Workload::fan(16, 1, 8),
            Workload::nested(4, 3, 1),
            Workload::actors(2, 5, 1, 1, 1),
            Workload::gangs(2, 4, PlacementStrategy::Spread, 1),
            Workload::random_dag(200, &mut rng),
        ];
        for w in &all {
            w.validate().unwrap();
            assert!(w.tasks.iter().any(|t| t.final_output), "something is awaited");
        }
        assert_eq!(all[2].tasks[13].deps, vec![(0, 1), (1, 1), (9, 1)], "reduce 3 wraps around");
        let mr = &all[1];
        assert_eq!(mr.tasks.len(), 11);
        assert_eq!(mr.tasks[10].deps.len(), 8, "a reduce takes one partition of every map");
    }

    #[test]
    fn validation_names_the_bad_dependency() {
        let mut w = Workload::chain(3, 1, 8);
        w.tasks[1].deps = vec![(2, 1)];
        assert_eq!(w.validate().unwrap_err(), "task 1 depends on task 2, which is not submitted before it");
        let mut w = Workload::chain(3, 1, 8);
        w.tasks[2].deps = vec![(1, 2)];
        assert!(w.validate().unwrap_err().contains("takes return 2 of task 1"));
    }
}
