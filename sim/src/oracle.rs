//! Oracles: properties every run must keep, checked apart from the world model.
//!
//! The world reports what happened (an attempt executed, a value produced, an object deleted, a
//! result heard by the driver) and the [`Observer`] checks it against what must hold. Nothing
//! here reads the kernel's private state: the kernel's own `check_invariants` is a second line,
//! run by the world after every step.

use keel_kernel::errors::ErrorReason;
use keel_kernel::proto::PlacementStrategy;
use keel_kernel::resources::ResourceSet;
use keel_kernel::{ActorId, NodeId, ObjectId, TaskId, Time, WorkerId};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeSet;
use std::fmt;

/// Which property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Property {
    /// Every awaited value resolves (ready, or failed with a reason) within the bound.
    Liveness,
    /// An attempt runs at most once: the same (task, attempt) never executes twice.
    NoDuplicateExecution,
    /// Never more work on a host than its resources.
    NoOverCommit,
    /// An object is never deleted everywhere while the driver still holds it.
    NoEarlyFree,
    /// At quiescence, after the driver dropped everything: no records and no stored bytes left.
    NoLeak,
    /// A value rebuilt by re-running its task has the same content as the original.
    SameContent,
    /// A placement group is placed whole or not at all.
    AllOrNothing,
    /// An actor runs each caller's calls in the caller's order.
    CallOrder,
    /// The scenario's expectations (outcomes, reasons, counts).
    Expectation,
    /// A kernel invariant check panicked.
    KernelInvariant,
    /// The autoscaler never has more nodes launched or running than a type's `max_workers`
    /// or the cluster's.
    MaxWorkers,
    /// No flapping: a node is not stopped while waiting work could use it and then launched
    /// again for that work within the window.
    NoFlapping,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&name)
    }
}

/// A broken property, when and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Which property.
    pub property: Property,
    /// Simulated time, in milliseconds.
    pub at_ms: u64,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} ms: {}", self.property, self.at_ms, self.detail)
    }
}

/// What the driver finally heard of an awaited object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Ready, with its content digest.
    Ready(u64),
    /// Failed for good.
    Failed(ErrorReason),
}

/// The checks, fed by the world.
#[derive(Debug, Default)]
pub struct Observer {
    violations: Vec<Violation>,
    // The three tables are looked up, never iterated: hashed.
    executed: FxHashSet<(TaskId, u32)>,
    /// First content digest and size seen for each object.
    contents: FxHashMap<ObjectId, (u64, u64)>,
    /// Last call sequence number run by each actor worker incarnation.
    calls: FxHashMap<(usize, u64, WorkerId, ActorId), u64>,
    /// Executions of attempts, for the report.
    pub executions: u64,
    /// Values rebuilt and found equal to the original.
    pub rebuilt_equal: u64,
}

/// Violations kept per property: enough to show, not enough to drown.
const KEEP_PER_PROPERTY: usize = 5;

impl Observer {
    /// Records a violation (the first few of each property are kept with their details).
    pub fn violate(&mut self, property: Property, now: Time, detail: String) {
        if self.violations.iter().filter(|v| v.property == property).count() < KEEP_PER_PROPERTY {
            self.violations.push(Violation { property, at_ms: now.0 / 1_000_000, detail });
        }
    }

    /// Everything broken so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// An attempt starts executing on a worker.
    pub fn on_execute(&mut self, now: Time, host: usize, task: TaskId, attempt: u32) {
        self.executions += 1;
        if !self.executed.insert((task, attempt)) {
            self.violate(
                Property::NoDuplicateExecution,
                now,
                format!("attempt {attempt} of task {task} executed a second time (on host {host})"),
            );
        }
    }

    /// A method call of `actor` runs on `worker` of host `host` (incarnation `inc`).
    pub fn on_actor_call(&mut self, now: Time, at: (usize, u64, WorkerId), actor: ActorId, seq: u64) {
        let key = (at.0, at.1, at.2, actor);
        if let Some(&last) = self.calls.get(&key) {
            if seq <= last {
                self.violate(
                    Property::CallOrder,
                    now,
                    format!("actor {actor} ran call {seq} after call {last} on the same worker"),
                );
            }
        }
        self.calls.insert(key, seq);
    }

    /// A value was produced (first time or rebuilt).
    pub fn on_value(&mut self, now: Time, object: ObjectId, size: u64, digest: u64) {
        match self.contents.get(&object) {
            None => {
                self.contents.insert(object, (size, digest));
            }
            Some(&(s, d)) if s == size && d == digest => self.rebuilt_equal += 1,
            Some(&(s, d)) => self.violate(
                Property::SameContent,
                now,
                format!("{object} rebuilt as {size} bytes with digest {digest:016x}, was {s} bytes {d:016x}"),
            ),
        }
    }

    /// The resources of the work executing on a host now, against its total.
    pub fn check_host_load(&mut self, now: Time, host: usize, total: &ResourceSet, load: &ResourceSet) {
        if !load.fits_in(total) {
            self.violate(Property::NoOverCommit, now, format!("host {host} runs {load:?} on {total:?}"));
        }
    }

    /// The provider has launched nodes of a type: now `of_type` of that type and `total` in all
    /// are launching or running (count, limit), which must stay within the limits.
    pub fn on_launch(&mut self, now: Time, node_type: &str, of_type: (u64, u32), total: (u64, u32)) {
        if of_type.0 > u64::from(of_type.1) {
            let detail = format!("{} nodes of type {node_type}, above its max_workers {}", of_type.0, of_type.1);
            self.violate(Property::MaxWorkers, now, detail);
        }
        if total.0 > u64::from(total.1) {
            self.violate(Property::MaxWorkers, now, format!("{} worker nodes, above max_workers {}", total.0, total.1));
        }
    }

    /// A placement group of `bundles` bundles was reported placed, bundle by bundle, on `nodes`:
    /// every bundle placed, and the strategy's hard constraints kept.
    pub fn on_group_ready(
        &mut self,
        now: Time,
        group: usize,
        bundles: usize,
        strategy: PlacementStrategy,
        nodes: &[NodeId],
    ) {
        if nodes.len() != bundles {
            let placed = nodes.len();
            self.violate(
                Property::AllOrNothing,
                now,
                format!("group {group} reported ready with {placed} of its {bundles} bundles placed"),
            );
            return;
        }
        let distinct: BTreeSet<&NodeId> = nodes.iter().collect();
        let broken = match strategy {
            PlacementStrategy::StrictSpread => distinct.len() != nodes.len(),
            PlacementStrategy::StrictPack => distinct.len() > 1,
            PlacementStrategy::Pack | PlacementStrategy::Spread => false,
        };
        if broken {
            self.violate(Property::AllOrNothing, now, format!("group {group} ({strategy:?}) placed on {nodes:?}"));
        }
    }

    /// The driver read `object` with content digest `digest`: the content produced first.
    pub fn on_read(&mut self, now: Time, object: ObjectId, digest: u64) {
        if let Some(&(_, first)) = self.contents.get(&object) {
            if first != digest {
                self.violate(
                    Property::SameContent,
                    now,
                    format!("the driver read {object} with digest {digest:016x}, produced as {first:016x}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_reports_what_it_is_given() {
        let mut o = Observer::default();
        let t = TaskId(1);
        o.on_execute(Time(0), 0, t, 0);
        o.on_execute(Time(0), 1, t, 1);
        assert!(o.violations().is_empty(), "two attempts are two executions");
        o.on_execute(Time(1_000_000), 1, t, 1);
        assert_eq!(o.violations()[0].property, Property::NoDuplicateExecution);
        assert_eq!(o.violations()[0].at_ms, 1);

        let obj = ObjectId::for_return(t, 1);
        o.on_value(Time(0), obj, 8, 42);
        o.on_value(Time(0), obj, 8, 42);
        assert_eq!(o.rebuilt_equal, 1);
        o.on_value(Time(0), obj, 8, 43);
        assert!(o.violations().iter().any(|v| v.property == Property::SameContent));

        o.on_actor_call(Time(0), (0, 0, WorkerId(1)), ActorId(1), 0);
        o.on_actor_call(Time(0), (0, 0, WorkerId(1)), ActorId(1), 1);
        o.on_actor_call(Time(0), (0, 1, WorkerId(1)), ActorId(1), 0);
        assert!(!o.violations().iter().any(|v| v.property == Property::CallOrder), "a new incarnation starts over");
        o.on_actor_call(Time(0), (0, 0, WorkerId(1)), ActorId(1), 1);
        assert!(o.violations().iter().any(|v| v.property == Property::CallOrder));

        o.check_host_load(Time(0), 0, &ResourceSet::cpus(2), &ResourceSet::cpus(3));
        assert!(o.violations().iter().any(|v| v.property == Property::NoOverCommit));
        let n = |i| NodeId(i);
        o.on_group_ready(Time(0), 0, 2, PlacementStrategy::StrictSpread, &[n(1), n(2)]);
        o.on_group_ready(Time(0), 0, 2, PlacementStrategy::StrictPack, &[n(3), n(3)]);
        assert!(!o.violations().iter().any(|v| v.property == Property::AllOrNothing));
        o.on_group_ready(Time(0), 0, 4, PlacementStrategy::Pack, &[n(1), n(2), n(3)]);
        o.on_group_ready(Time(0), 1, 2, PlacementStrategy::StrictSpread, &[n(1), n(1)]);
        o.on_group_ready(Time(0), 2, 2, PlacementStrategy::StrictPack, &[n(1), n(2)]);
        assert_eq!(o.violations().iter().filter(|v| v.property == Property::AllOrNothing).count(), 3);
        o.on_read(Time(0), obj, 44);
        assert_eq!(o.violations().iter().filter(|v| v.property == Property::SameContent).count(), 2);
    }

    #[test]
    fn only_the_first_few_violations_of_a_property_are_kept() {
        let mut o = Observer::default();
        for i in 0..20 {
            o.violate(Property::Liveness, Time(0), format!("{i}"));
        }
        assert_eq!(o.violations().len(), KEEP_PER_PROPERTY);
    }
}
