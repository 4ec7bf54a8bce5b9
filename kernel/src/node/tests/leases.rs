//! Worker leases: reuse, lease keys, idle trimming, dedicated actor workers and method order.

use super::*;
use crate::node::{TaskPhase, WorkerKind, WorkerState};
use crate::proto::NodeToHead;

#[test]
fn idle_pool_worker_is_reused_for_the_next_task_of_its_job() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Busy(TaskId(1)));
    h.finish(w, TaskId(1));
    assert_eq!(h.node.idle_workers(), vec![w]);
    let out = h.run(task(2), vec![]);
    assert_eq!(started_worker(&out), None, "no new worker while one is idle");
    assert_eq!(executed(&out), vec![(w, TaskId(2))]);
    let started = NodeToHead::TaskStarted { task: TaskId(2), attempt: 0, worker: w };
    assert!(to_head(&out).contains(&started));
}

#[test]
fn busy_worker_is_not_leased_so_a_second_task_gets_a_new_worker() {
    let mut h = Harness::new();
    let w1 = h.run_on_new_worker(task(1));
    let out = h.run(task(2), vec![]);
    let w2 = started_worker(&out).expect("second worker");
    assert!(w2 > w1, "worker ids increase");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Leasing(w2)));
    assert!(executed(&out).is_empty(), "nothing runs before the worker starts");
    let out = h.input(NodeInput::WorkerStarted { worker: w2 });
    assert_eq!(executed(&out), vec![(w2, TaskId(2))]);
}

#[test]
fn gpu_task_reuses_only_a_worker_with_the_same_devices() {
    let mut h = Harness::new();
    let out = h.head(run_task(task(1), 0, gpu_allocation(&[0]), vec![], None));
    let gpu0 = started_worker(&out).unwrap();
    assert!(out.iter().any(|o| matches!(o, NodeOutput::StartWorker { gpus, .. } if gpus == &vec![0])));
    h.input(NodeInput::WorkerStarted { worker: gpu0 });
    h.finish(gpu0, TaskId(1));
    // Device 1 cannot use the worker that sees device 0, nor can a CPU task.
    let out = h.head(run_task(task(2), 0, gpu_allocation(&[1]), vec![], None));
    let gpu1 = started_worker(&out).expect("a worker for device 1");
    assert_ne!(gpu1, gpu0);
    let out = h.run(task(3), vec![]);
    assert!(started_worker(&out).is_some(), "a CPU task does not take a GPU worker");
    let out = h.head(run_task(task(4), 0, gpu_allocation(&[0]), vec![], None));
    assert_eq!(executed(&out), vec![(gpu0, TaskId(4))]);
}

#[test]
fn worker_of_another_job_is_not_reused() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.finish(w, TaskId(1));
    let mut other = task(2);
    other.job = JobId(2);
    let out = h.run(other, vec![]);
    assert!(started_worker(&out).is_some());
    assert_eq!(h.node.idle_workers(), vec![w]);
}

#[test]
fn idle_workers_beyond_the_limit_are_killed_oldest_first() {
    let config = NodeConfig { max_idle_workers: 2, ..NodeConfig::default() };
    let mut h = Harness::with_config(config);
    let workers: Vec<WorkerId> = (1..=4).map(|n| h.run_on_new_worker(task(n))).collect();
    h.finish(workers[2], TaskId(3));
    assert!(killed(&h.finish(workers[0], TaskId(1))).is_empty(), "two idle fit");
    // A third idle worker evicts the one idle the longest (workers[2], not the lowest id).
    let out = h.finish(workers[3], TaskId(4));
    assert_eq!(killed(&out), vec![workers[2]]);
    assert_eq!(h.node.worker(workers[2]).unwrap().state, WorkerState::Stopping);
    let out = h.finish(workers[1], TaskId(2));
    assert_eq!(killed(&out), vec![workers[0]]);
    assert_eq!(h.node.idle_workers(), vec![workers[3], workers[1]]);
    h.input(NodeInput::WorkerExited { worker: workers[2], exit_code: Some(0) });
    assert!(h.node.worker(workers[2]).is_none());
    assert!(to_head(&h.drain()).is_empty());
}

#[test]
fn actor_creation_gets_a_dedicated_worker_that_is_never_reused_for_tasks() {
    let mut h = Harness::new();
    let out = h.run(actor_creation(1, 7), vec![]);
    assert!(out.iter().any(|o| matches!(o, NodeOutput::StartWorker { kind: WorkerKind::Actor(ActorId(7)), .. })));
    let aw = started_worker(&out).unwrap();
    h.input(NodeInput::WorkerStarted { worker: aw });
    h.finish(aw, TaskId(1));
    assert_eq!(h.node.worker(aw).unwrap().state, WorkerState::Idle);
    assert!(h.node.idle_workers().is_empty(), "an actor worker is not in the pool");
    let out = h.run(task(2), vec![]);
    assert!(started_worker(&out).is_some(), "a normal task does not run on the actor's worker");
}

#[test]
fn with_a_pipeline_of_one_actor_methods_run_one_at_a_time_in_arrival_order() {
    let mut h = Harness::with_config(NodeConfig { actor_pipeline: 1, ..NodeConfig::default() });
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    // Methods arriving while the constructor runs wait for it.
    let out = h.head(run_task(method(2, 7, 0), 0, Allocation::default(), vec![], Some(aw)));
    assert!(executed(&out).is_empty());
    h.head(run_task(method(3, 7, 1), 0, Allocation::default(), vec![], Some(aw)));
    h.head(run_task(method(4, 7, 2), 0, Allocation::default(), vec![], Some(aw)));
    assert_eq!(h.node.actor_queue(aw), vec![TaskId(2), TaskId(3), TaskId(4)]);
    let mut order = Vec::new();
    let mut out = h.finish(aw, TaskId(1));
    for next in [2, 3, 4] {
        let ran = executed(&out);
        assert_eq!(ran, vec![(aw, TaskId(next))], "exactly one method at a time");
        order.push(ran[0].1);
        out = h.finish(aw, TaskId(next));
    }
    assert_eq!(order, vec![TaskId(2), TaskId(3), TaskId(4)]);
    assert!(executed(&out).is_empty());
}

#[test]
fn actor_method_waits_behind_an_earlier_method_still_fetching_arguments() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    let out = h.head(run_task(
        task_with_refs_method(2, 0, &[obj(1)]),
        0,
        Allocation::default(),
        vec![(obj(1), at(10, &[2]))],
        Some(aw),
    ));
    assert!(executed(&out).is_empty(), "its argument is not here yet");
    let out = h.head(run_task(method(3, 7, 1), 0, Allocation::default(), vec![], Some(aw)));
    assert!(executed(&out).is_empty(), "the later method does not overtake");
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 10 });
    assert_eq!(executed(&out), vec![(aw, TaskId(2)), (aw, TaskId(3))], "in order, the later one ahead");
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::SentAhead(aw)));
    let out = h.finish(aw, TaskId(2));
    assert!(executed(&out).is_empty());
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::Running(aw)));
}

fn pipeline(depth: usize) -> Harness {
    Harness::with_config(NodeConfig { actor_pipeline: depth, ..NodeConfig::default() })
}

/// A harness whose actor (7) runs on the returned worker, created and idle.
fn idle_actor(h: &mut Harness) -> WorkerId {
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    aw
}

#[test]
fn actor_methods_are_handed_over_ahead_up_to_the_pipeline_in_order() {
    let mut h = pipeline(3);
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    for (n, seq) in [(2, 0), (3, 1), (4, 2), (5, 3), (6, 4)] {
        let out = h.head(run_task(method(n, 7, seq), 0, Allocation::default(), vec![], Some(aw)));
        assert!(executed(&out).is_empty(), "nothing goes ahead of the actor's creation");
    }
    let out = h.finish(aw, TaskId(1));
    let ran = |tasks: &[u64]| tasks.iter().map(|t| (aw, TaskId(*t))).collect::<Vec<_>>();
    assert_eq!(executed(&out), ran(&[2, 3, 4]), "the running method and two ahead of it");
    assert_eq!(started(&out), vec![TaskId(2)], "only the running one has started");
    assert_eq!(h.node.worker(aw).unwrap().state, WorkerState::Busy(TaskId(2)));
    assert_eq!(h.node.sent_ahead(aw), vec![TaskId(3), TaskId(4)]);
    assert_eq!(h.node.actor_queue(aw), vec![TaskId(5), TaskId(6)]);
    let out = h.finish(aw, TaskId(2));
    assert_eq!(started(&out), vec![TaskId(3)]);
    assert_eq!(executed(&out), ran(&[5]));
    assert_eq!(h.node.worker(aw).unwrap().state, WorkerState::Busy(TaskId(3)));
    // A report for a method the worker has not reached is out of order.
    let err = h.refused(NodeInput::TaskDone {
        worker: aw,
        task: TaskId(4),
        attempt: 0,
        outcome: TaskOutcome::Finished(vec![inline_return(TaskId(4))]),
    });
    assert!(matches!(err, InputError::StaleAttempt { .. }));
    for next in [3, 4, 5] {
        h.finish(aw, TaskId(next));
    }
    let out = h.finish(aw, TaskId(6));
    assert!(executed(&out).is_empty());
    assert_eq!(h.node.worker(aw).unwrap().state, WorkerState::Idle);
    assert!(h.node.sent_ahead(aw).is_empty() && h.node.actor_queue(aw).is_empty());
}

#[test]
fn cancelled_method_sent_ahead_is_interrupted_and_ends_as_the_worker_reports_it() {
    let mut h = pipeline(4);
    let aw = idle_actor(&mut h);
    for (n, seq) in [(2, 0), (3, 1), (4, 2)] {
        h.head(run_task(method(n, 7, seq), 0, Allocation::default(), vec![], Some(aw)));
    }
    assert_eq!(h.node.sent_ahead(aw), vec![TaskId(3), TaskId(4)]);
    // The worker holds it: the node cannot take it back, it asks the worker to skip it.
    let out = h.head(HeadToNode::CancelTask { task: TaskId(3), attempt: 0, force: true });
    assert_eq!(out, vec![NodeOutput::InterruptTask { worker: aw, task: TaskId(3), attempt: 0 }]);
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::SentAhead(aw)));
    h.finish(aw, TaskId(2));
    // The worker skipped it.
    let cancelled = TaskOutcome::Failed(crate::errors::TaskFailure::Cancelled);
    let out = h.done(aw, TaskId(3), cancelled.clone());
    assert_eq!(ended(&out), vec![(TaskId(3), 0, cancelled)]);
    assert_eq!(h.node.worker(aw).unwrap().state, WorkerState::Busy(TaskId(4)));
    // One the worker had started before the interrupt ends as it ran.
    h.head(HeadToNode::CancelTask { task: TaskId(4), attempt: 0, force: false });
    let out = h.finish(aw, TaskId(4));
    assert_eq!(ended(&out), vec![(TaskId(4), 0, TaskOutcome::Finished(vec![inline_return(TaskId(4))]))]);
}

#[test]
fn actor_worker_death_fails_its_running_method_then_those_sent_ahead_then_the_queued_ones() {
    let mut h = pipeline(2);
    let aw = idle_actor(&mut h);
    for (n, seq) in [(2, 0), (3, 1), (4, 2)] {
        h.head(run_task(method(n, 7, seq), 0, Allocation::default(), vec![], Some(aw)));
    }
    assert_eq!(h.node.sent_ahead(aw), vec![TaskId(3)]);
    assert_eq!(h.node.actor_queue(aw), vec![TaskId(4)]);
    let out = h.input(NodeInput::WorkerExited { worker: aw, exit_code: Some(9) });
    let died = TaskOutcome::Failed(crate::errors::TaskFailure::WorkerDied { exit_code: Some(9) });
    let order: Vec<_> = ended(&out).into_iter().map(|(t, _, o)| (t, o)).collect();
    assert_eq!(order, vec![(TaskId(2), died.clone()), (TaskId(3), died.clone()), (TaskId(4), died)]);
    assert!(matches!(to_head(&out)[0], NodeToHead::ActorWorkerDied { .. }), "the actor's death goes first");
    assert_eq!(h.node.task_count(), 0);
}

fn task_with_refs_method(n: u64, seq: u64, refs: &[ObjectId]) -> TaskSpec {
    let mut spec = task_with_refs(n, refs);
    spec.kind = TaskKind::ActorMethod { actor: ActorId(7), seq };
    spec
}

#[test]
fn failed_actor_creation_kills_its_worker_and_fails_queued_methods() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.head(run_task(method(2, 7, 0), 0, Allocation::default(), vec![], Some(aw)));
    let failure = crate::errors::TaskFailure::Application { message: "ctor".into() };
    let out = h.done(aw, TaskId(1), TaskOutcome::Failed(failure.clone()));
    assert_eq!(killed(&out), vec![aw]);
    let ends = ended(&out);
    assert_eq!(ends[0], (TaskId(1), 0, TaskOutcome::Failed(failure)), "the application error is reported as is");
    let died = TaskOutcome::Failed(crate::errors::TaskFailure::WorkerDied { exit_code: None });
    assert_eq!(ends[1], (TaskId(2), 0, died));
    h.input(NodeInput::WorkerExited { worker: aw, exit_code: Some(1) });
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn method_for_a_gone_actor_worker_is_reported_as_worker_died() {
    let mut h = Harness::new();
    let out = h.head(run_task(method(2, 7, 0), 3, Allocation::default(), vec![], Some(WorkerId(99))));
    let died = TaskOutcome::Failed(crate::errors::TaskFailure::WorkerDied { exit_code: None });
    assert_eq!(ended(&out), vec![(TaskId(2), 3, died)]);
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn method_naming_a_pool_worker_or_another_actor_is_refused() {
    let mut h = Harness::new();
    let pool = h.run_on_new_worker(task(1));
    let err = h.refused(NodeInput::FromHead(run_task(method(2, 7, 0), 0, Allocation::default(), vec![], Some(pool))));
    assert!(matches!(err, InputError::Malformed { .. }));
    let aw = h.run_on_new_worker(actor_creation(3, 8));
    let err = h.refused(NodeInput::FromHead(run_task(method(4, 7, 0), 0, Allocation::default(), vec![], Some(aw))));
    assert!(matches!(err, InputError::Malformed { .. }));
}

#[test]
fn cancelled_queued_method_leaves_the_others_in_order() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    for (n, seq) in [(2, 0), (3, 1), (4, 2)] {
        h.head(run_task(method(n, 7, seq), 0, Allocation::default(), vec![], Some(aw)));
    }
    let out = h.head(HeadToNode::CancelTask { task: TaskId(3), attempt: 0, force: false });
    let cancelled = TaskOutcome::Failed(crate::errors::TaskFailure::Cancelled);
    assert_eq!(ended(&out), vec![(TaskId(3), 0, cancelled)]);
    assert_eq!(h.node.actor_queue(aw), vec![TaskId(2), TaskId(4)]);
    let out = h.finish(aw, TaskId(1));
    assert_eq!(executed(&out), vec![(aw, TaskId(2)), (aw, TaskId(4))]);
    h.finish(aw, TaskId(2));
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::Running(aw)));
}

#[test]
fn forced_cancel_of_a_running_method_interrupts_it_without_killing_the_actor() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    h.head(run_task(method(2, 7, 0), 0, Allocation::default(), vec![], Some(aw)));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: true });
    assert_eq!(out, vec![NodeOutput::InterruptTask { worker: aw, task: TaskId(2), attempt: 0 }]);
    assert!(killed(&out).is_empty());
    assert_eq!(h.node.worker(aw).unwrap().state, WorkerState::Busy(TaskId(2)));
}
