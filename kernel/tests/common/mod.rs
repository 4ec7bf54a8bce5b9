//! Helpers shared by the integration tests.
#![allow(dead_code)]

use keel_kernel::proto::{Labels, SchedulingStrategy, TaskKind, TaskSpec};
use keel_kernel::testkit::Cluster;
use keel_kernel::*;

/// A cluster of `nodes` hosts with `cpus` CPUs each, registered and settled.
pub fn cluster_with(config: HeadConfig, nodes: usize, cpus: u64) -> Cluster {
    let mut c = Cluster::new(config, NodeConfig::default(), Duration::from_millis(1));
    for _ in 0..nodes {
        c.add_host(ResourceSet::cpus(cpus), Labels::new());
    }
    c.run_for(Duration::from_millis(10));
    c.check_invariants();
    c
}

/// A cluster with the default head settings.
pub fn cluster(nodes: usize, cpus: u64) -> Cluster {
    cluster_with(HeadConfig::default(), nodes, cpus)
}

/// The bytes of `object` read from a live host the head lists as a holder.
pub fn stored_bytes(c: &Cluster, object: ObjectId) -> Option<Vec<u8>> {
    c.head
        .object_locations(object)
        .into_iter()
        .filter_map(|n| c.host_of(n))
        .filter(|h| c.hosts[*h].up)
        .find_map(|h| c.hosts[h].store.get(&object).cloned())
}

/// Pins a spec to `node`, falling back elsewhere when it is dead.
pub fn soft_on(mut spec: TaskSpec, node: NodeId) -> TaskSpec {
    spec.strategy = SchedulingStrategy::NodeAffinity { node, soft: true };
    spec
}

/// Pins a spec to `node`, with no fallback.
pub fn hard_on(mut spec: TaskSpec, node: NodeId) -> TaskSpec {
    spec.strategy = SchedulingStrategy::NodeAffinity { node, soft: false };
    spec
}

/// The creation task of `actor` (one CPU held for the actor's life).
pub fn actor_creation(job: JobId, seq: u64, actor: ActorId) -> TaskSpec {
    let mut spec = keel_kernel::testkit::task(job, seq, "ctor");
    spec.kind = TaskKind::ActorCreation(actor);
    spec
}

/// A method call on `actor` with the caller's sequence number `call`.
pub fn actor_call(job: JobId, seq: u64, actor: ActorId, call: u64, function: &str) -> TaskSpec {
    let mut spec = keel_kernel::testkit::task(job, seq, function);
    spec.kind = TaskKind::ActorMethod { actor, seq: call };
    spec.resources = ResourceSet::default();
    spec
}

/// Runs `d` and checks every invariant.
pub fn run(c: &mut Cluster, d: Duration) {
    c.run_for(d);
    c.check_invariants();
}
