//! Seeded random operations, valid and invalid mixed (successors, `StartNow` and withdrawals
//! among them): the node never panics, keeps its invariants, and a refused input changes nothing
//! (the harness checks all three after every step).

use super::*;
use crate::errors::TaskFailure;
use crate::node::WorkerState;
use crate::proto::{DriverToHead, NodeToNode};

/// SplitMix64: a tiny seeded generator for the test.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_spec(g: &mut Gen, n: u64) -> (TaskSpec, Vec<(ObjectId, ArgSource)>) {
    let mut spec = match g.below(4) {
        0 => actor_creation(n, g.below(3)),
        1 => method(n, g.below(3), g.below(5)),
        _ => task(n),
    };
    let mut sources = Vec::new();
    for _ in 0..g.below(3) {
        let object = obj(g.below(6));
        if sources.iter().any(|(o, _)| *o == object) {
            continue;
        }
        spec.args.push(Arg::Ref(object));
        let holders: Vec<u64> = (0..g.below(3)).map(|_| 1 + g.below(4)).collect();
        sources.push((object, at(100 + g.below(400), &holders)));
    }
    (spec, sources)
}

fn random_head_message(g: &mut Gen, h: &Harness) -> HeadToNode {
    let task_id = TaskId(g.below(40));
    match g.below(12) {
        0..=4 => {
            let n = g.below(40);
            let (spec, args) = random_spec(g, n);
            let is_method = matches!(spec.kind, TaskKind::ActorMethod { .. });
            let actor_worker = is_method.then(|| WorkerId(1 + g.below(h.max_worker() + 1)));
            let alloc = if g.below(3) == 0 { gpu_allocation(&[g.below(2) as u32]) } else { Allocation::default() };
            // Now and then a successor of some tasks (held here or not, of any kind).
            let links = if g.below(3) == 0 { 1 + g.below(3) } else { 0 };
            let after = (0..links).map(|_| (TaskId(g.below(40)), g.below(2) as u32)).collect();
            match run_task(spec, g.below(2) as u32, alloc, args, actor_worker) {
                HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, .. } => {
                    HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, after }
                }
                _ => unreachable!("run_task makes a RunTask"),
            }
        }
        5 if g.below(3) == 0 => HeadToNode::StartNow { task: task_id, attempt: g.below(2) as u32 },
        5 => HeadToNode::CancelTask { task: task_id, attempt: g.below(2) as u32, force: g.below(2) == 0 },
        6 => HeadToNode::KillActor { actor: ActorId(g.below(3)), worker: WorkerId(1 + g.below(h.max_worker() + 1)) },
        7 => HeadToNode::FreeObjects(vec![obj(g.below(6)), ObjectId::for_return(task_id, 1)]),
        8 => HeadToNode::CopyObject { object: obj(g.below(6)), size: 300, from: vec![NodeId(1 + g.below(4))] },
        9 => HeadToNode::ToSubmitter {
            task: task_id,
            msg: HeadToDriver::NamedActor { namespace: "n".into(), name: "a".into(), actor: None },
        },
        10 if g.below(15) == 0 => HeadToNode::Reregister,
        11 if g.below(15) == 0 => HeadToNode::Drain,
        _ => HeadToNode::FreeObjects(vec![obj(g.below(6))]),
    }
}

use crate::proto::HeadToDriver;

impl Harness {
    fn max_worker(&self) -> u64 {
        self.node.workers().map(|(w, _)| w.0).max().unwrap_or(0) + 2
    }
}

fn random_input(g: &mut Gen, h: &Harness) -> NodeInput {
    let known: Vec<WorkerId> = h.node.workers().map(|(w, _)| w).collect();
    let worker = if known.is_empty() || g.below(5) == 0 {
        WorkerId(1 + g.below(h.max_worker()))
    } else {
        known[g.below(known.len() as u64) as usize]
    };
    let object = obj(g.below(6));
    let peer = NodeId(1 + g.below(4));
    match g.below(14) {
        0..=3 => NodeInput::FromHead(random_head_message(g, h)),
        4 => NodeInput::WorkerStarted { worker },
        5 if g.below(3) == 0 => NodeInput::WorkerStartFailed { worker, message: "x".into() },
        6 if g.below(2) == 0 => NodeInput::WorkerExited { worker, exit_code: Some(1) },
        7 | 8 => {
            let running = h.node.running_tasks();
            let (task, attempt, worker) = if running.is_empty() || g.below(5) == 0 {
                (TaskId(g.below(40)), g.below(2) as u32, worker)
            } else {
                running[g.below(running.len() as u64) as usize]
            };
            let outcome = match g.below(3) {
                0 => TaskOutcome::Failed(TaskFailure::Application { message: "e".into() }),
                1 => TaskOutcome::Finished(vec![inline_return(task)]),
                _ => TaskOutcome::Finished(vec![sealed_return(task, 200 + g.below(800))]),
            };
            NodeInput::TaskDone { worker, task, attempt, outcome }
        }
        9 => {
            let put = ObjectId::for_put(TaskId(g.below(40)), 1);
            let msg = DriverToHead::Put { object: put, size: 50, inline: None, node: Some(ME), nested: vec![] };
            NodeInput::FromWorker { worker, msg }
        }
        10 => NodeInput::ObjectSealed { object, size: 100 + g.below(400) },
        11 if g.below(2) == 0 => {
            // What a worker holds ahead from some point on (what a withdrawal asks), or any tasks.
            let held = h.node.sent_ahead(worker);
            let tasks = if !held.is_empty() && g.below(2) == 0 {
                let from = g.below(held.len() as u64) as usize;
                held[from..].iter().map(|t| (*t, g.below(2) as u32)).collect()
            } else {
                (0..1 + g.below(3)).map(|_| (TaskId(g.below(40)), g.below(2) as u32)).collect()
            };
            NodeInput::TaskWithdrawn { worker, tasks }
        }
        11 => NodeInput::PullFailed { object, from: peer },
        12 => {
            let msg = match g.below(3) {
                0 => NodeToNode::Pull { object },
                1 => NodeToNode::PullReply { object, size: None },
                _ => NodeToNode::PullReply { object, size: Some(1) },
            };
            NodeInput::FromPeer { from: NodeId(2 + g.below(3)), msg }
        }
        _ => NodeInput::SendEnded { object, to: peer },
    }
}

#[test]
fn random_operations_never_panic_and_keep_invariants() {
    // Steps after which some task waited for the task it follows: successors were exercised.
    let mut following = 0;
    for seed in 0..24 {
        let config = NodeConfig { object_store_capacity_bytes: 1500, max_idle_workers: 2, ..NodeConfig::default() };
        let mut h = Harness::with_config(config);
        let mut g = Gen(seed);
        let mut accepted = 0;
        for _ in 0..1500 {
            if g.below(10) == 0 {
                let t = h.now + Duration::from_millis(g.below(3000));
                h.advance_to(t);
            }
            if h.node.node_id().is_none() {
                h.input(NodeInput::Registered(NodeId(10 + seed)));
                continue;
            }
            let input = random_input(&mut g, &h);
            accepted += usize::from(h.try_input(input).is_ok());
            following += usize::from(
                (0..40).any(|t| matches!(h.node.task_phase(TaskId(t)), Some(crate::node::TaskPhase::After(_)))),
            );
        }
        assert!(accepted > 300, "seed {seed}: too few inputs accepted ({accepted}) to exercise the machine");
        let busy = h.node.workers().filter(|(_, i)| matches!(i.state, WorkerState::Busy(_))).count();
        assert_eq!(busy, h.node.running_tasks().len());
    }
    assert!(following > 0, "no successor ever waited for the task it follows");
}
