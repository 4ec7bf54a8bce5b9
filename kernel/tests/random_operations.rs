//! Random operation sequences driven through an in-memory [`Cluster`], with the head's and nodes'
//! invariants checked after every operation, a liveness phase, a cleanup phase, and determinism.
//!
//! Properties:
//!
//! 1. `random_operations_keep_invariants_and_end_cleanly`: for any sequence of operations
//!    - `check_invariants()` holds after every operation;
//!    - after restarting every crashed host and running [`SETTLE`] of simulated time, every task
//!      the head accepted is *settled* (forgotten, `Finished`, `Failed` or `Cancelled`) or
//!      *legitimately waiting*: `Queued` while nothing could run it now (see
//!      [`legitimately_queued`]), or `WaitingDeps` on an argument whose producer has not settled.
//!      Nothing is left `Running` (every behaviour ends within a minute);
//!    - every return value or put the driver still holds is ready, failed with a reason, or pending
//!      behind a producer that legitimately waits; the driver heard of every ready or failed one
//!      (a failed one with that same reason, unless it heard it ready before it was lost);
//!    - after the driver drops every handle and finishes its job, and [`SETTLE`] passes again, the
//!      head holds no object records and no task records (the generator creates no detached actors
//!      or groups, which are the only things documented to outlive their job).
//! 2. `same_operations_give_the_same_head_log`: running the same sequence twice yields identical
//!    `head_log`s.

use keel_kernel::head::TaskStateKind;
use keel_kernel::proto::{
    ActorOptions, ActorState, Arg, DriverToHead, LabelConstraint, Labels, PlacementGroupSpec, PlacementStrategy,
    SchedulingStrategy, TaskKind, TaskSpec,
};
use keel_kernel::testkit::Cluster;
use keel_kernel::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// A fixed seed, so that CI runs the same sequences every time; set `PROPTEST_RNG_SEED=N` (and
/// `PROPTEST_CASES=N`) to explore others. A failure prints the minimal operation list.
fn config() -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b65_656c);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, rng_seed: RngSeed::Fixed(seed), ..ProptestConfig::default() }
}

/// Simulated time the liveness and cleanup phases run for: longer than every task, the
/// infeasibility grace period and the node timeout together.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
enum Strat {
    Default,
    Spread,
    Affinity { host: usize, soft: bool },
    Group { pg: usize, bundle: Option<u32> },
}

#[derive(Clone, Debug)]
struct Work {
    ms: u64,
    big: bool,
    fail: bool,
    crash: bool,
}

impl Work {
    fn function(&self) -> String {
        let mut f = format!("ms={}", self.ms);
        if self.big {
            f.push_str(";bytes=150000");
        }
        if self.fail {
            f.push_str(";fail");
        }
        if self.crash {
            f.push_str(";crash");
        }
        f
    }
}

#[derive(Clone, Debug)]
enum Op {
    AddHost {
        cpus: u64,
        gpus: u64,
        label: Option<u8>,
    },
    Submit {
        cpu_tenths: u64,
        gpu: u64,
        args: Vec<usize>,
        work: Work,
        strat: Strat,
        label: Option<u8>,
        returns: u32,
        retries: u32,
    },
    Put {
        len: usize,
    },
    RemoveRef {
        object: usize,
    },
    Cancel {
        task: usize,
        force: bool,
        recursive: bool,
    },
    CreatePg {
        bundles: Vec<(u64, u64)>,
        strict: u8,
    },
    RemovePg {
        pg: usize,
    },
    CreateActor {
        cpus: u64,
        gpu: u64,
        restarts: u32,
        task_retries: u32,
        crash: bool,
    },
    CallActor {
        actor: usize,
        args: Vec<usize>,
        work: Work,
    },
    KillActor {
        actor: usize,
        no_restart: bool,
    },
    CrashHost {
        host: usize,
    },
    RestartHost {
        host: usize,
    },
    DrainHost {
        host: usize,
    },
    /// A running task is blocked in `get` (lends its CPUs), or runs again.
    Block {
        task: usize,
        blocked: bool,
    },
    Advance {
        ms: u64,
    },
}

/// GPU amounts in ten-thousandths: none, fractions, whole, and an invalid 1.5.
const GPUS: [u64; 6] = [0, 2_500, 5_000, 10_000, 15_000, 20_000];

fn work() -> impl Strategy<Value = Work> {
    (1u64..60, prop::bool::weighted(0.2), prop::bool::weighted(0.1), prop::bool::weighted(0.08))
        .prop_map(|(ms, big, fail, crash)| Work { ms, big, fail, crash })
}

fn strat() -> impl Strategy<Value = Strat> {
    prop_oneof![
        4 => Just(Strat::Default),
        1 => Just(Strat::Spread),
        1 => (0usize..8, any::<bool>()).prop_map(|(host, soft)| Strat::Affinity { host, soft }),
        1 => (0usize..4, prop::option::of(0u32..3)).prop_map(|(pg, bundle)| Strat::Group { pg, bundle }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..4, 0u64..3, prop::option::of(0u8..2)).prop_map(|(cpus, gpus, label)| Op::AddHost { cpus, gpus, label }),
        10 => (0u64..25, prop::sample::select(GPUS.to_vec()), prop::collection::vec(0usize..64, 0..3), work(), strat(),
               prop::option::weighted(0.1, 0u8..3), 0u32..3, 0u32..3)
            .prop_map(|(cpu_tenths, gpu, args, work, strat, label, returns, retries)| Op::Submit {
                cpu_tenths, gpu, args, work, strat, label, returns, retries
            }),
        2 => (0usize..64).prop_map(|len| Op::Put { len }),
        3 => (0usize..64).prop_map(|object| Op::RemoveRef { object }),
        2 => (0usize..64, any::<bool>(), any::<bool>()).prop_map(|(task, force, recursive)| Op::Cancel { task, force, recursive }),
        1 => (prop::collection::vec((0u64..3, 0u64..2), 1..3), 0u8..4).prop_map(|(bundles, strict)| Op::CreatePg { bundles, strict }),
        1 => (0usize..4).prop_map(|pg| Op::RemovePg { pg }),
        2 => (0u64..2, prop::sample::select(vec![0u64, 5_000, 10_000]), 0u32..3, 0u32..3, prop::bool::weighted(0.15))
            .prop_map(|(cpus, gpu, restarts, task_retries, crash)| Op::CreateActor { cpus, gpu, restarts, task_retries, crash }),
        4 => (0usize..8, prop::collection::vec(0usize..64, 0..2), work()).prop_map(|(actor, args, work)| Op::CallActor { actor, args, work }),
        1 => (0usize..8, any::<bool>()).prop_map(|(actor, no_restart)| Op::KillActor { actor, no_restart }),
        1 => (0usize..8).prop_map(|host| Op::CrashHost { host }),
        1 => (0usize..8).prop_map(|host| Op::RestartHost { host }),
        1 => (0usize..8).prop_map(|host| Op::DrainHost { host }),
        3 => (0usize..64, any::<bool>()).prop_map(|(task, blocked)| Op::Block { task, blocked }),
        6 => prop_oneof![3 => 1u64..50, 1 => 50u64..3_000, 1 => 3_000u64..12_000].prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the test's driver knows.
struct Driver {
    job: JobId,
    next_task: u64,
    next_put: u32,
    /// Every task the head accepted (for the liveness check).
    accepted: Vec<TaskSpec>,
    /// Objects the driver holds one handle to.
    held: Vec<ObjectId>,
    /// Objects ever created by the driver (also after it dropped them).
    created: Vec<ObjectId>,
    /// Groups the driver created, and actors with their next call sequence number.
    pgs: Vec<PlacementGroupId>,
    actors: Vec<(ActorId, u64)>,
}

impl Driver {
    fn new_task(&mut self) -> TaskId {
        self.next_task += 1;
        TaskId::child(TaskId::driver(self.job), 0, self.next_task)
    }

    /// Arguments by reference: mostly held objects, sometimes ones already dropped.
    fn args(&self, picks: &[usize]) -> Vec<Arg> {
        picks
            .iter()
            .filter_map(|&i| {
                if i % 8 == 7 {
                    self.created.get(i % self.created.len().max(1)).map(|o| Arg::Ref(*o))
                } else {
                    self.held.get(i % self.held.len().max(1)).map(|o| Arg::Ref(*o))
                }
            })
            .collect()
    }

    fn accept_returns(&mut self, c: &mut Cluster, spec: &TaskSpec) {
        self.accepted.push(spec.clone());
        let outs: Vec<ObjectId> = spec.return_ids().collect();
        self.held.extend(&outs);
        self.created.extend(&outs);
        c.driver(self.job, DriverToHead::Subscribe(outs)).expect("a fresh return value can be subscribed to");
    }
}

fn labels(label: Option<u8>) -> Labels {
    label.map(|l| Labels::from([("zone".to_string(), format!("z{l}"))])).unwrap_or_default()
}

fn new_cluster(seed: u64, small_lineage: bool) -> (Cluster, Driver) {
    let config = HeadConfig {
        seed,
        max_lineage_bytes: if small_lineage { 2_000 } else { HeadConfig::default().max_lineage_bytes },
        ..HeadConfig::default()
    };
    let mut c = Cluster::new(config, NodeConfig::default(), Duration::from_millis(1));
    c.add_host(ResourceSet::cpus(2), labels(Some(0)));
    c.add_host(ResourceSet::cpus(2).with_gpu(Amount::units(2)), labels(Some(1)));
    c.add_host(ResourceSet::cpus(1), Labels::new());
    c.run_for(Duration::from_millis(10));
    c.check_invariants();
    let job = c.start_job("random");
    let d = Driver {
        job,
        next_task: 0,
        next_put: 0,
        accepted: Vec::new(),
        held: Vec::new(),
        created: Vec::new(),
        pgs: Vec::new(),
        actors: Vec::new(),
    };
    (c, d)
}

fn apply(c: &mut Cluster, d: &mut Driver, op: &Op) {
    let job = d.job;
    let hosts = c.hosts.len();
    match op {
        Op::AddHost { cpus, gpus, label } => {
            c.add_host(ResourceSet::cpus(*cpus).with_gpu(Amount::units(*gpus)), labels(*label));
        }
        Op::Submit { cpu_tenths, gpu, args, work, strat, label, returns, retries } => {
            let task = d.new_task();
            let mut spec = TaskSpec::new(task, job, &work.function());
            spec.resources =
                ResourceSet { cpu: Amount(cpu_tenths * 1_000), gpu: Amount(*gpu), ..ResourceSet::default() };
            spec.args = d.args(args);
            spec.num_returns = *returns;
            spec.max_retries = *retries;
            spec.strategy = match strat {
                Strat::Default => SchedulingStrategy::Default,
                Strat::Spread => SchedulingStrategy::Spread,
                Strat::Affinity { host, soft } => match c.hosts.get(host % hosts).and_then(|h| h.id) {
                    Some(node) => SchedulingStrategy::NodeAffinity { node, soft: *soft },
                    None => SchedulingStrategy::Default,
                },
                Strat::Group { pg, bundle } => match d.pgs.get(pg % d.pgs.len().max(1)) {
                    Some(&pg) => SchedulingStrategy::PlacementGroup { pg, bundle: *bundle },
                    None => SchedulingStrategy::Spread,
                },
            };
            if let Some(l) = label {
                spec.label_selector = vec![LabelConstraint::In { key: "zone".into(), values: vec![format!("z{l}")] }];
            }
            if c.submit(job, spec.clone()).is_ok() {
                d.accept_returns(c, &spec);
            }
        }
        Op::Put { len } => {
            d.next_put += 1;
            let object = ObjectId::for_put(TaskId::driver(job), d.next_put);
            let data = vec![*len as u8; *len];
            let msg =
                DriverToHead::Put { object, size: *len as u64, inline: Some(data), node: None, nested: Vec::new() };
            c.driver(job, msg).expect("a small inline put is accepted");
            d.held.push(object);
            d.created.push(object);
        }
        Op::RemoveRef { object } => {
            if !d.held.is_empty() {
                let o = d.held.remove(object % d.held.len());
                c.driver(job, DriverToHead::RemoveRef(o)).expect("dropping a held handle is accepted");
            }
        }
        Op::Cancel { task, force, recursive } => {
            if let Some(task) = d.accepted.get(task % d.accepted.len().max(1)).map(|s| s.task) {
                // The head may have forgotten the task already: then the cancel is refused.
                let known = c.head.task_state(task).is_some();
                let r = c.driver(job, DriverToHead::Cancel { task, force: *force, recursive: *recursive });
                assert_eq!(r.is_ok(), known, "cancel of {task:?}: {r:?}");
            }
        }
        Op::CreatePg { bundles, strict } => {
            let pg = PlacementGroupId(d.pgs.len() as u64 + 1);
            let bundles = bundles
                .iter()
                .map(|(cpu, gpu)| ResourceSet::cpus(*cpu).with_gpu(Amount(gpu * 5_000)))
                .collect::<Vec<_>>();
            let strategy = [
                PlacementStrategy::Pack,
                PlacementStrategy::Spread,
                PlacementStrategy::StrictPack,
                PlacementStrategy::StrictSpread,
            ][*strict as usize % 4];
            let valid = bundles.iter().all(|b| !b.is_empty());
            let spec = PlacementGroupSpec { bundles, strategy, name: None, detached: false };
            let r = c.driver(job, DriverToHead::CreatePlacementGroup { pg, spec });
            assert_eq!(r.is_ok(), valid, "placement group: {r:?}");
            if r.is_ok() {
                d.pgs.push(pg);
            }
        }
        Op::RemovePg { pg } => {
            if let Some(&pg) = d.pgs.get(pg % d.pgs.len().max(1)) {
                let _ = c.driver(job, DriverToHead::RemovePlacementGroup(pg));
            }
        }
        Op::CreateActor { cpus, gpu, restarts, task_retries, crash } => {
            let actor = ActorId(d.actors.len() as u64 + 1);
            let task = d.new_task();
            let mut creation = TaskSpec::new(task, job, if *crash { "ms=2;crash" } else { "ms=2" });
            creation.kind = TaskKind::ActorCreation(actor);
            creation.resources = ResourceSet::cpus(*cpus).with_gpu(Amount(*gpu));
            creation.num_returns = 0;
            let options =
                ActorOptions { max_restarts: *restarts, max_task_retries: *task_retries, ..ActorOptions::default() };
            c.driver(job, DriverToHead::CreateActor { options, creation: creation.clone().into() })
                .expect("a fresh actor is accepted");
            d.accept_returns(c, &creation);
            d.actors.push((actor, 0));
        }
        Op::CallActor { actor, args, work } => {
            if d.actors.is_empty() {
                return;
            }
            let i = actor % d.actors.len();
            let (actor, seq) = d.actors[i];
            let task = d.new_task();
            let mut spec = TaskSpec::new(task, job, &work.function());
            spec.kind = TaskKind::ActorMethod { actor, seq };
            spec.resources = ResourceSet::default();
            spec.args = d.args(args);
            if c.submit(job, spec.clone()).is_ok() {
                d.actors[i].1 += 1;
                d.accept_returns(c, &spec);
            }
        }
        Op::KillActor { actor, no_restart } => {
            if let Some(&(actor, _)) = d.actors.get(actor % d.actors.len().max(1)) {
                let _ = c.driver(job, DriverToHead::KillActor { actor, no_restart: *no_restart });
            }
        }
        Op::CrashHost { host } => {
            if c.hosts[host % hosts].up {
                c.crash_host(host % hosts);
            }
        }
        Op::RestartHost { host } => {
            if !c.hosts[host % hosts].up {
                c.restart_host(host % hosts);
            }
        }
        Op::DrainHost { host } => {
            let h = host % hosts;
            if c.hosts[h].up && c.hosts[h].id.is_some() {
                let _ = c.drain_host(h);
            }
        }
        Op::Block { task, blocked } => {
            let Some(spec) = d.accepted.get(task % d.accepted.len().max(1)) else { return };
            let (task, head) = (spec.task, &c.head);
            if head.task_state(task) != Some(TaskStateKind::Running) {
                return;
            }
            let (Some(node), Some(attempt)) = (head.task_node(task), head.task_attempt(task)) else { return };
            let msg = if *blocked {
                keel_kernel::proto::NodeToHead::TaskBlocked { task, attempt }
            } else {
                keel_kernel::proto::NodeToHead::TaskUnblocked { task, attempt }
            };
            c.head_input(HeadInput::FromNode { node, msg }).expect("a running task's node may report it blocked");
        }
        Op::Advance { ms } => {
            c.run_for(Duration::from_millis(*ms));
        }
    }
}

/// Runs the operations with invariant checks after each one; returns the cluster and driver.
fn run_ops(seed: u64, small_lineage: bool, ops: &[Op]) -> (Cluster, Driver) {
    let (mut c, mut d) = new_cluster(seed, small_lineage);
    for (i, op) in ops.iter().enumerate() {
        apply(&mut c, &mut d, op);
        // Deliver what is due now, so the checks also see the consequences of the operation.
        c.run_for(Duration::ZERO);
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.check_invariants()));
        if let Err(e) = checked {
            eprintln!("invariants broke after operation {i}: {op:?}");
            std::panic::resume_unwind(e);
        }
    }
    (c, d)
}

/// A queued task legitimately waits when nothing could run it now: a method whose actor is not
/// alive or that is ordered after an earlier call of the driver's that has not ended, a task inside a placement group that still exists (its bundles are busy or not
/// reserved), or a task that no schedulable live node has room for now (the room is held by
/// placement groups or actors that still live). A hard affinity to a node that is gone is not
/// waiting: it must fail.
fn legitimately_queued(c: &Cluster, accepted: &[TaskSpec], spec: &TaskSpec) -> bool {
    if let TaskKind::ActorMethod { actor, seq } = spec.kind {
        let earlier_pending = accepted.iter().any(|s| {
            matches!(s.kind, TaskKind::ActorMethod { actor: a, seq: q } if a == actor && q < seq)
                && c.head.task_state(s.task).is_some_and(|k| {
                    matches!(k, TaskStateKind::Queued | TaskStateKind::WaitingDeps | TaskStateKind::Running)
                })
        });
        return earlier_pending || !matches!(c.head.actor(actor).map(|a| a.state), Some(ActorState::Alive { .. }));
    }
    let fits_now = |node: NodeId| {
        c.head.cluster().node(node).is_some_and(|n| {
            n.schedulable
                && n.pool.fits_now(&spec.resources)
                && spec.label_selector.iter().all(|l| l.matches(&n.labels))
        })
    };
    match &spec.strategy {
        SchedulingStrategy::PlacementGroup { pg, .. } => c.head.placement_group_nodes(*pg).is_some(),
        SchedulingStrategy::NodeAffinity { node, soft: false } => {
            c.head.cluster().node(*node).is_some() && !fits_now(*node)
        }
        _ => !c.head.live_nodes().any(fits_now),
    }
}

/// A task waiting for arguments legitimately waits when one of them is still being produced by a
/// task that has not settled (that task is checked on its own).
fn waits_on_unsettled_producer(c: &Cluster, spec: &TaskSpec) -> bool {
    spec.args.iter().any(|a| match a {
        Arg::Ref(o) => {
            !c.head.object_ready(*o)
                && c.head.object_error(*o).is_none()
                && matches!(
                    c.head.task_state(o.task),
                    Some(TaskStateKind::Queued | TaskStateKind::WaitingDeps | TaskStateKind::Running)
                )
        }
        Arg::Value { .. } => false,
    })
}

fn liveness_and_cleanup(mut c: Cluster, mut d: Driver) {
    let job = d.job;
    for h in 0..c.hosts.len() {
        if !c.hosts[h].up {
            c.restart_host(h);
        }
    }
    c.run_for(SETTLE);
    c.check_invariants();

    // Every accepted task is settled or legitimately waiting.
    for spec in &d.accepted {
        let Some(state) = c.head.task_state(spec.task) else { continue };
        let settled = match state {
            TaskStateKind::Finished | TaskStateKind::Failed | TaskStateKind::Cancelled => true,
            TaskStateKind::Queued => legitimately_queued(&c, &d.accepted, spec),
            TaskStateKind::WaitingDeps => waits_on_unsettled_producer(&c, spec),
            TaskStateKind::Running | TaskStateKind::Next => false,
        };
        assert!(
            settled,
            "task {:?} ({:?}, {:?}, {:?}) is {state:?} after the cluster settled",
            spec.task, spec.kind, spec.resources, spec.function
        );
    }

    // Every object still held is ready, failed with a reason the driver heard, or pending behind a
    // producer that legitimately waits.
    let view = &c.drivers[&job];
    for &o in &d.held {
        if c.head.object_ready(o) {
            if !o.is_put() {
                assert!(view.ready.contains_key(&o) || view.failed.contains_key(&o), "{o:?} ready but never reported");
            }
        } else if let Some(reason) = c.head.object_error(o) {
            // A subscription ends with the first answer: an object lost after it was reported
            // ready is not reported again.
            if !view.ready.contains_key(&o) {
                assert_eq!(view.failed.get(&o), Some(reason), "{o:?} failed but the driver heard otherwise");
            }
        } else {
            // Pending: only while its producer legitimately waits (checked above).
            let producer = c.head.task_state(o.task);
            assert!(
                matches!(producer, Some(TaskStateKind::Queued | TaskStateKind::WaitingDeps)),
                "{o:?} is pending but its producer is {producer:?}"
            );
        }
    }

    // Drop everything and finish the job: nothing may remain.
    for o in std::mem::take(&mut d.held) {
        c.driver(job, DriverToHead::RemoveRef(o)).expect("dropping a held handle is accepted");
        c.check_invariants();
    }
    c.driver(job, DriverToHead::FinishJob).expect("the job is running");
    c.check_invariants();
    c.run_for(SETTLE);
    c.check_invariants();
    assert_eq!(c.head.object_records(), 0, "object records left after the job finished");
    assert_eq!(c.head.task_records(), 0, "task records left after the job finished");
    assert_eq!(c.head.lineage_bytes(), 0, "lineage left after the job finished");
    assert_eq!(c.head.queued_tasks(), 0, "queued tasks left after the job finished");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_operations_keep_invariants_and_end_cleanly(
        seed in any::<u64>(),
        small_lineage in prop::bool::weighted(0.3),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let (c, d) = run_ops(seed, small_lineage, &ops);
        liveness_and_cleanup(c, d);
    }

    #[test]
    fn same_operations_give_the_same_head_log(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let (a, _) = run_ops(seed, false, &ops);
        let (b, _) = run_ops(seed, false, &ops);
        prop_assert_eq!(&a.head_log, &b.head_log);
        prop_assert_eq!(a.head.stats(), b.head.stats());
    }

    #[test]
    fn a_head_restored_from_a_snapshot_decides_exactly_as_the_original(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 2..40),
        cut in any::<prop::sample::Index>(),
    ) {
        // The same operations twice; the second head is swapped, after operation `k`, for one
        // serialised and read back. From then on both must decide the same, to the byte.
        let k = cut.index(ops.len());
        let (mut a, mut da) = run_ops(seed, false, &ops[..k]);
        let (mut b, mut db) = run_ops(seed, false, &ops[..k]);
        let bytes = postcard::to_allocvec(&b.head).expect("a head serialises");
        b.head = postcard::from_bytes(&bytes).expect("a snapshot reads back");
        b.head.check_invariants();
        for op in &ops[k..] {
            apply(&mut a, &mut da, op);
            apply(&mut b, &mut db, op);
            a.run_for(Duration::ZERO);
            b.run_for(Duration::ZERO);
        }
        a.run_for(SETTLE);
        b.run_for(SETTLE);
        b.head.check_invariants();
        let diverged = a.head_log.iter().zip(&b.head_log).position(|(x, y)| x != y);
        prop_assert!(diverged.is_none(), "decisions diverge at {:?}: {:?}", diverged, diverged.map(|i| (&a.head_log[i], &b.head_log[i])));
        prop_assert_eq!(a.head_log.len(), b.head_log.len());
        prop_assert_eq!(a.head.stats(), b.head.stats());
    }
}

/// Regression: an actor with no return values whose constructor crashed with no restarts left
/// made the head forget the creation task while still failing it (panic in `fail_task`).
#[test]
fn regression_actor_constructor_crash_without_restarts() {
    let ops = [Op::CreateActor { cpus: 0, gpu: 0, restarts: 0, task_retries: 0, crash: true }, Op::Advance { ms: 5 }];
    let (c, d) = run_ops(0, false, &ops);
    liveness_and_cleanup(c, d);
}

/// Regression: a constructor that crashed parked its resources with the actor and was then retried
/// with a second allocation; the actor later died still holding the first one.
#[test]
fn regression_crashed_constructor_does_not_keep_its_resources() {
    let ops = [Op::CreateActor { cpus: 0, gpu: 0, restarts: 1, task_retries: 0, crash: true }, Op::Advance { ms: 10 }];
    let (c, d) = run_ops(0, false, &ops);
    liveness_and_cleanup(c, d);
}

/// A default-strategy submission with no retries, for the regression tests.
fn plain_submit(gpu: u64, args: Vec<usize>, work: Work, returns: u32) -> Op {
    Op::Submit { cpu_tenths: 0, gpu, args, work, strat: Strat::Default, label: None, returns, retries: 0 }
}

/// Regression: failing a task failed its return value, whose waiter then dropped the last
/// reference to it, which forgot the first task while `fail_task` was still working on it.
#[test]
fn regression_failing_a_task_whose_waiter_drops_its_return() {
    let fail = Work { ms: 1, big: false, fail: true, crash: false };
    let ok = Work { ms: 1, big: false, fail: false, crash: false };
    let submit = |args: Vec<usize>, work: Work, returns: u32| plain_submit(0, args, work, returns);
    let ops = [submit(vec![], fail, 1), submit(vec![0], ok, 0), Op::RemoveRef { object: 0 }, Op::Advance { ms: 4 }];
    let (c, d) = run_ops(0, false, &ops);
    liveness_and_cleanup(c, d);
}

/// Regression: a task taking the same object twice by reference was dispatched with the object's
/// source listed twice; the node refused the repeated source and the task never ran.
#[test]
fn regression_same_argument_twice() {
    let ok = Work { ms: 1, big: false, fail: false, crash: false };
    let submit = |args: Vec<usize>, returns: u32| plain_submit(0, args, ok.clone(), returns);
    let ops = [submit(vec![], 1), submit(vec![0, 0], 0)];
    let (c, d) = run_ops(0, false, &ops);
    liveness_and_cleanup(c, d);
}

/// Regression: a task with a hard affinity to a node that died was found infeasible by the
/// scheduler, but the infeasibility timeout checked the whole cluster instead of that node and
/// queued it again forever.
#[test]
fn regression_hard_affinity_to_a_dead_node_fails() {
    let ops = [
        Op::CrashHost { host: 2 },
        Op::Submit {
            cpu_tenths: 0,
            gpu: 0,
            args: vec![],
            work: Work { ms: 1, big: false, fail: false, crash: false },
            strat: Strat::Affinity { host: 2, soft: false },
            label: None,
            returns: 0,
            retries: 1,
        },
    ];
    let (c, d) = run_ops(0, false, &ops);
    liveness_and_cleanup(c, d);
}

/// Regression: a node whose pulls for two arguments of one task timed out together gave up the
/// first, which aborted the task and dropped its other pull, then advanced that dropped pull
/// (panic "advancing a pull that does not exist").
#[test]
fn regression_two_argument_pulls_expiring_together() {
    let w = |big| Work { ms: 1, big, fail: false, crash: false };
    let submit = plain_submit;
    let add = || Op::AddHost { cpus: 0, gpus: 0, label: None };
    let ops = [
        submit(0, vec![], w(false), 1),
        submit(0, vec![], w(false), 2),
        submit(0, vec![], w(false), 2),
        submit(2_500, vec![], w(true), 2),
        submit(0, vec![], w(false), 2),
        add(),
        Op::Advance { ms: 50 },
        submit(0, vec![15, 41], w(false), 0),
        Op::CrashHost { host: 5 },
        add(),
        add(),
        add(),
        add(),
    ];
    let (c, d) = run_ops(0, false, &ops);
    liveness_and_cleanup(c, d);
}

/// Regression (found by the fuzzer): a node registering with an absurd number of GPUs made the
/// head allocate one pool device per GPU and abort for lack of memory. It is refused now.
#[test]
fn regression_node_with_absurd_gpu_count_is_refused() {
    use keel_kernel::proto::{Hello, Welcome, PROTOCOL_VERSION};
    let mut head = Head::new(HeadConfig::default());
    let resources = ResourceSet::cpus(1).with_gpu(Amount(u64::MAX / 2 / Amount::SCALE * Amount::SCALE));
    let hello = Hello::RegisterNode { version: PROTOCOL_VERSION, resources, labels: Labels::new() };
    head.handle_input(Time::ZERO, HeadInput::Connect { conn: ConnId(1), hello }).unwrap();
    let answer = head.poll_output();
    assert!(
        matches!(answer, Some(HeadOutput::ToConn { msg: Welcome::Refused(InputError::Malformed { .. }), .. })),
        "{answer:?}"
    );
    head.check_invariants();
}
