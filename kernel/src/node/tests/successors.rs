//! Successors: tasks the head hands over to run next after a running task, in its resources.

use super::*;
use crate::errors::TaskFailure;
use crate::node::{TaskPhase, WorkerState};

/// `RunTask` for a successor of `before` (attempt 0) taking `args` by reference.
fn run_after_with(spec: TaskSpec, before: TaskId, args: Vec<(ObjectId, ArgSource)>) -> HeadToNode {
    match run_task(spec, 0, Allocation::default(), args, None) {
        HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, .. } => {
            HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, after: vec![(before, 0)] }
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_successor_goes_to_its_predecessors_worker_ahead_and_runs_the_moment_it_ends() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let out = h.head(run_after(task(2), TaskId(1)));
    assert_eq!(executed(&out), vec![(w, TaskId(2))], "handed to the same worker, behind task 1");
    assert!(started_worker(&out).is_none() && started(&out).is_empty());
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::SentAhead(w)));
    let out = h.finish(w, TaskId(1));
    assert_eq!(started(&out), vec![TaskId(2)]);
    assert!(executed(&out).is_empty(), "the worker has it already");
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Busy(TaskId(2)));
    h.finish(w, TaskId(2));
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Idle);
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn a_successor_whose_predecessor_ended_already_runs_at_once() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.finish(w, TaskId(1));
    let out = h.head(run_after(task(2), TaskId(1)));
    assert_eq!(executed(&out), vec![(w, TaskId(2))]);
    assert_eq!(started(&out), vec![TaskId(2)]);
}

#[test]
fn a_successor_waits_for_its_arguments_then_goes_ahead() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let out = h.head(run_after_with(task_with_refs(2, &[obj(1)]), TaskId(1), vec![(obj(1), at(10, &[2]))]));
    assert_eq!(pulls_sent(&out), vec![(NodeId(2), obj(1))], "fetched while task 1 runs");
    assert!(executed(&out).is_empty());
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::After(TaskId(1))));
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 10 });
    assert_eq!(executed(&out), vec![(w, TaskId(2))]);
    let out = h.finish(w, TaskId(1));
    assert_eq!(started(&out), vec![TaskId(2)]);
}

#[test]
fn a_successor_still_fetching_when_its_predecessor_ends_takes_the_idle_worker_later() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after_with(task_with_refs(2, &[obj(1)]), TaskId(1), vec![(obj(1), at(10, &[2]))]));
    let out = h.finish(w, TaskId(1));
    assert!(executed(&out).is_empty() && started_worker(&out).is_none());
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Fetching));
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 10 });
    assert_eq!(executed(&out), vec![(w, TaskId(2))], "the idle worker is reused");
}

#[test]
fn a_successor_of_another_job_waits_and_then_gets_a_worker_of_its_own() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let mut other = task(2);
    other.job = JobId(JOB.0 + 1);
    let out = h.head(run_after(other, TaskId(1)));
    assert!(executed(&out).is_empty(), "task 1's worker belongs to another job");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::After(TaskId(1))));
    let out = h.finish(w, TaskId(1));
    let fresh = started_worker(&out).expect("a worker of its own job");
    assert_ne!(fresh, w);
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Leasing(fresh)));
}

#[test]
fn when_the_predecessors_worker_dies_the_successor_it_held_fails_as_it_may_have_started() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    // Task 1 may have ended on the worker, which then started task 2 and died in it.
    let out = h.input(NodeInput::WorkerExited { worker: w, exit_code: Some(9) });
    let died = TaskOutcome::Failed(TaskFailure::WorkerDied { exit_code: Some(9) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, died.clone()), (TaskId(2), 0, died)]);
    assert!(executed(&out).is_empty() && started_worker(&out).is_none(), "attempt 0 of task 2 never runs again");
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn when_the_predecessors_worker_dies_a_successor_still_waiting_gets_another_worker() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after_with(task_with_refs(2, &[obj(1)]), TaskId(1), vec![(obj(1), at(10, &[2]))]));
    let out = h.input(NodeInput::WorkerExited { worker: w, exit_code: Some(9) });
    let died = TaskOutcome::Failed(TaskFailure::WorkerDied { exit_code: Some(9) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, died)], "task 2 never reached the worker");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Fetching));
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 10 });
    let fresh = started_worker(&out).expect("a new worker");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Leasing(fresh)));
}

#[test]
fn a_forced_cancel_of_the_predecessor_kills_its_worker_and_the_successors_it_held_fail_as_that_cancels_doing() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: true });
    assert_eq!(killed(&out), vec![w]);
    let stopped = TaskOutcome::Failed(TaskFailure::WorkerKilledForCancel { cancelled: TaskId(1) });
    let cancelled = TaskOutcome::Failed(TaskFailure::Cancelled);
    assert_eq!(ended(&out), vec![(TaskId(1), 0, cancelled), (TaskId(2), 0, stopped.clone()), (TaskId(3), 0, stopped)]);
}

#[test]
fn successors_held_by_a_worker_that_dies_fail_as_its_death() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    let out = h.input(NodeInput::WorkerExited { worker: w, exit_code: Some(3) });
    let died = TaskOutcome::Failed(TaskFailure::WorkerDied { exit_code: Some(3) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, died.clone()), (TaskId(2), 0, died)]);
}

#[test]
fn a_successor_cancelled_while_it_waits_ends_at_once_and_leaves_its_predecessor_alone() {
    let mut h = Harness::new();
    let mut other = task(2);
    other.job = JobId(JOB.0 + 1);
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(other, TaskId(1)));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: true });
    assert_eq!(ended(&out), vec![(TaskId(2), 0, TaskOutcome::Failed(TaskFailure::Cancelled))]);
    assert!(killed(&out).is_empty());
    let out = h.finish(w, TaskId(1));
    assert!(executed(&out).is_empty() && started_worker(&out).is_none());
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn a_forced_cancel_of_a_successor_handed_ahead_interrupts_it_and_spares_the_task_before_it() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: true });
    assert_eq!(out, vec![NodeOutput::InterruptTask { worker: w, task: TaskId(2), attempt: 0 }]);
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Busy(TaskId(1)), "task 1 runs on");
    assert!(h.node.worker(w).is_some(), "its worker lives");
}

#[test]
fn a_successor_that_is_not_a_normal_task_or_a_second_one_is_refused() {
    let mut h = Harness::new();
    h.run_on_new_worker(task(1));
    let err = h.refused(NodeInput::FromHead(run_after(method(2, 7, 0), TaskId(1))));
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
    let err = h.refused(NodeInput::FromHead(run_after(task(1), TaskId(1))));
    assert!(matches!(err, InputError::DuplicateTask(_) | InputError::Malformed { .. }), "{err}");
    h.head(run_after(task(3), TaskId(1)));
    let err = h.refused(NodeInput::FromHead(run_after(task(4), TaskId(1))));
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
}

#[test]
fn start_now_leases_a_waiting_successor_a_worker_of_its_own() {
    let mut h = Harness::new();
    let mut other = task(2);
    other.job = JobId(JOB.0 + 1);
    h.run_on_new_worker(task(1));
    h.head(run_after(other, TaskId(1)));
    let out = h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    let fresh = started_worker(&out).expect("a worker of its own");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Leasing(fresh)));
}

#[test]
fn start_now_asks_the_worker_back_for_a_successor_handed_ahead_and_leases_it_once_given_back() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    let out = h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    assert_eq!(out, vec![NodeOutput::WithdrawTask { worker: w, tasks: vec![(TaskId(2), 0)] }]);
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0)] });
    let fresh = started_worker(&out).expect("another worker, task 1's is busy");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::Leasing(fresh)));
    let out = h.finish(w, TaskId(1));
    assert!(started(&out).is_empty(), "nothing is held ahead any more");
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Idle);
}

#[test]
fn a_successor_given_back_after_it_became_the_running_one_frees_the_worker_and_runs_elsewhere() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    // Task 1's end overtakes the answer: task 2 becomes the running one, then comes back.
    h.finish(w, TaskId(1));
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Busy(TaskId(2)));
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0)] });
    assert_eq!(executed(&out), vec![(w, TaskId(2))], "the worker is idle again and takes it as a new task");
    assert_eq!(started(&out), vec![TaskId(2)]);
}

#[test]
fn a_withdrawal_no_worker_was_asked_for_is_refused() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let err = h.refused(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(1), 0)] });
    assert!(matches!(err, InputError::StaleAttempt { .. }), "{err}");
    let err = h.refused(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(9), 0)] });
    assert!(matches!(err, InputError::StaleAttempt { .. }), "{err}");
    let err = h.refused(NodeInput::TaskWithdrawn { worker: w, tasks: vec![] });
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
}

#[test]
fn a_successor_held_ahead_and_cancelled_is_not_run_elsewhere_when_its_worker_is_killed() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    // Its cancel arrives before its predecessor's (a recursive cancel of a parent, say).
    h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: true });
    let out = h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: true });
    assert_eq!(killed(&out), vec![w]);
    let cancelled = TaskOutcome::Failed(TaskFailure::Cancelled);
    assert_eq!(ended(&out), vec![(TaskId(1), 0, cancelled.clone()), (TaskId(2), 0, cancelled)]);
    assert!(started_worker(&out).is_none() && executed(&out).is_empty(), "nothing runs it again");
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn a_successor_cancelled_by_force_while_held_ahead_kills_the_worker_if_it_turns_out_to_run_it() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_after(task(2), TaskId(1)));
    h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: true });
    // Task 1's end was on its way: the worker has started task 2, whatever the interrupt said.
    let out = h.finish(w, TaskId(1));
    assert_eq!(killed(&out), vec![w]);
    assert!(ended(&out).contains(&(TaskId(2), 0, TaskOutcome::Failed(TaskFailure::Cancelled))));
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn start_now_for_anything_but_a_normal_task_is_refused() {
    let mut h = Harness::with_config(NodeConfig { actor_pipeline: 4, ..NodeConfig::default() });
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    for (n, seq) in [(2, 0), (3, 1)] {
        h.head(run_task(method(n, 7, seq), 0, Allocation::default(), vec![], Some(aw)));
    }
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::SentAhead(aw)));
    let err = h.refused(NodeInput::FromHead(HeadToNode::StartNow { task: TaskId(3), attempt: 0 }));
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
}

#[test]
fn a_successor_of_a_command_task_waits_for_it_instead_of_going_to_its_worker() {
    let mut h = Harness::new();
    let mut command = task(1);
    command.function = crate::proto::Function::Command(vec!["true".into()]);
    let w = h.run_on_new_worker(command);
    let out = h.head(run_after(task(2), TaskId(1)));
    assert!(executed(&out).is_empty(), "a command worker holds nothing ahead");
    assert_eq!(h.node.task_phase(TaskId(2)), Some(TaskPhase::After(TaskId(1))));
    let out = h.finish(w, TaskId(1));
    assert_eq!(executed(&out), vec![(w, TaskId(2))]);
}

#[test]
fn a_chain_of_successors_goes_to_the_worker_ahead_in_order_and_each_runs_as_the_one_before_ends() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    let out = h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    assert_eq!(executed(&out), vec![(w, TaskId(3))], "held by the worker behind task 2");
    h.head(run_behind(task(4), &[TaskId(1), TaskId(2), TaskId(3)]));
    assert_eq!(h.node.sent_ahead(w), vec![TaskId(2), TaskId(3), TaskId(4)]);
    for (done, next) in [(1, 2), (2, 3), (3, 4)] {
        let out = h.finish(w, TaskId(done));
        assert_eq!(started(&out), vec![TaskId(next)]);
        assert!(executed(&out).is_empty() && started_worker(&out).is_none());
    }
    h.finish(w, TaskId(4));
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Idle);
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn a_successor_waits_for_the_last_of_its_chain_the_node_still_holds() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.finish(w, TaskId(1));
    // The head had not heard of task 1's end: task 3 names it first.
    let out = h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    assert_eq!(executed(&out), vec![(w, TaskId(3))]);
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::SentAhead(w)));
    h.finish(w, TaskId(2));
    h.finish(w, TaskId(3));
    // All of its chain ended: it runs at once.
    let out = h.head(run_behind(task(4), &[TaskId(2), TaskId(3)]));
    assert_eq!(started(&out), vec![TaskId(4)]);
}

#[test]
fn a_second_successor_behind_the_same_task_of_a_chain_is_refused() {
    let mut h = Harness::new();
    h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    let err = h.refused(NodeInput::FromHead(run_behind(task(4), &[TaskId(1), TaskId(2)])));
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
    let err = h.refused(NodeInput::FromHead(run_behind(task(5), &[TaskId(1), TaskId(1)])));
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
    let err = h.refused(NodeInput::FromHead(run_behind(task(6), &[TaskId(1), TaskId(6)])));
    assert!(matches!(err, InputError::Malformed { .. }), "{err}");
}

#[test]
fn start_now_takes_back_the_first_successor_with_those_behind_it_and_they_follow_it_on_its_new_worker() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(run_behind(task(4), &[TaskId(1), TaskId(2), TaskId(3)]));
    let out = h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    let asked = vec![(TaskId(2), 0), (TaskId(3), 0), (TaskId(4), 0)];
    assert_eq!(out, vec![NodeOutput::WithdrawTask { worker: w, tasks: asked.clone() }]);
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: asked });
    let fresh = started_worker(&out).expect("task 1's worker is busy");
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::After(TaskId(2))));
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(3))));
    assert!(h.node.sent_ahead(w).is_empty());
    let out = h.input(NodeInput::WorkerStarted { worker: fresh });
    assert_eq!(executed(&out), vec![(fresh, TaskId(2)), (fresh, TaskId(3)), (fresh, TaskId(4))]);
    assert_eq!(started(&out), vec![TaskId(2)]);
    let out = h.finish(w, TaskId(1));
    assert!(started(&out).is_empty(), "nothing of the chain runs on task 1's worker");
    for (done, next) in [(2, 3), (3, 4)] {
        assert_eq!(started(&h.finish(fresh, TaskId(done))), vec![TaskId(next)]);
    }
}

#[test]
fn a_worker_that_started_the_first_successor_keeps_the_chain_and_runs_it_there() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    // The worker had ended task 1 and started task 2: it says nothing and runs both.
    assert_eq!(started(&h.finish(w, TaskId(1))), vec![TaskId(2)]);
    assert_eq!(started(&h.finish(w, TaskId(2))), vec![TaskId(3)]);
    h.finish(w, TaskId(3));
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn a_withdrawal_that_is_not_what_was_asked_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    // Nothing was asked back yet.
    let err = h.refused(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0), (TaskId(3), 0)] });
    assert!(matches!(err, InputError::StaleAttempt { .. }), "{err}");
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    for tasks in [vec![(TaskId(3), 0), (TaskId(2), 0)], vec![(TaskId(2), 0), (TaskId(2), 0)], vec![(TaskId(2), 1)]] {
        let err = h.refused(NodeInput::TaskWithdrawn { worker: w, tasks });
        assert!(matches!(err, InputError::StaleAttempt { .. }), "{err}");
    }
    assert_eq!(h.node.sent_ahead(w), vec![TaskId(2), TaskId(3)], "still held ahead");
}

#[test]
fn a_successor_in_a_chain_that_ends_without_running_gives_its_place_to_the_one_behind_it() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let mut other = task(2);
    other.job = JobId(JOB.0 + 1);
    h.head(run_behind(other, &[TaskId(1)]));
    let mut third = task(3);
    third.job = JobId(JOB.0 + 1);
    h.head(run_behind(third, &[TaskId(1), TaskId(2)]));
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::After(TaskId(2))));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: false });
    assert_eq!(ended(&out), vec![(TaskId(2), 0, TaskOutcome::Failed(TaskFailure::Cancelled))]);
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::After(TaskId(1))), "it follows task 1 now");
    assert!(started_worker(&out).is_none(), "it does not run beside task 1");
    let out = h.finish(w, TaskId(1));
    assert!(started_worker(&out).is_some(), "it runs once task 1 ends");
}

#[test]
fn a_successor_cancelled_while_withdrawn_ends_and_the_one_behind_it_follows_the_first() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(run_behind(task(4), &[TaskId(1), TaskId(2), TaskId(3)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    h.head(HeadToNode::CancelTask { task: TaskId(3), attempt: 0, force: false });
    let asked = vec![(TaskId(2), 0), (TaskId(3), 0), (TaskId(4), 0)];
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: asked });
    assert_eq!(ended(&out), vec![(TaskId(3), 0, TaskOutcome::Failed(TaskFailure::Cancelled))]);
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(2))));
}

#[test]
fn a_chain_given_back_with_every_member_cancelled_ends_them_all_even_after_the_first_became_the_running_one() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: false });
    h.head(HeadToNode::CancelTask { task: TaskId(3), attempt: 0, force: false });
    h.finish(w, TaskId(1));
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0), (TaskId(3), 0)] });
    let cancelled = TaskOutcome::Failed(TaskFailure::Cancelled);
    let mut ends = ended(&out);
    ends.sort_by_key(|(t, _, _)| *t);
    assert_eq!(ends, vec![(TaskId(2), 0, cancelled.clone()), (TaskId(3), 0, cancelled)]);
    assert!(executed(&out).is_empty(), "nothing cancelled is handed to a worker");
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Idle);
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn a_member_cancelled_while_its_chain_is_given_back_is_never_handed_to_the_first_ones_new_worker() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let idle = h.run_on_new_worker(task(9));
    h.finish(idle, TaskId(9));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    h.head(HeadToNode::CancelTask { task: TaskId(3), attempt: 0, force: false });
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0), (TaskId(3), 0)] });
    assert_eq!(ended(&out), vec![(TaskId(3), 0, TaskOutcome::Failed(TaskFailure::Cancelled))]);
    assert_eq!(executed(&out), vec![(idle, TaskId(2))], "only task 2 goes to the idle worker");
    h.finish(idle, TaskId(2));
    assert_eq!(h.node.worker(idle).unwrap().state, WorkerState::Idle);
    assert_eq!(h.node.task_count(), 1, "task 1 alone runs on");
}

#[test]
fn once_the_worker_shows_it_started_a_successor_asked_back_those_behind_it_may_be_asked_back_again() {
    for shown_by_blocking in [true, false] {
        let mut h = Harness::new();
        let w = h.run_on_new_worker(task(1));
        h.head(run_behind(task(2), &[TaskId(1)]));
        h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
        h.head(run_behind(task(4), &[TaskId(1), TaskId(2), TaskId(3)]));
        h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
        // The worker had ended task 1 and started task 2: no answer comes.
        h.finish(w, TaskId(1));
        let (now, asked) = if shown_by_blocking {
            let out = h.input(NodeInput::WorkerBlocked { worker: w, blocked: true });
            assert!(out.iter().any(|o| matches!(o, NodeOutput::ToHead(NodeToHead::TaskBlocked { .. }))));
            (TaskId(3), vec![(TaskId(3), 0), (TaskId(4), 0)])
        } else {
            h.finish(w, TaskId(2));
            let out = h.input(NodeInput::WorkerBlocked { worker: w, blocked: true });
            assert!(out.iter().any(|o| matches!(o, NodeOutput::ToHead(NodeToHead::TaskBlocked { .. }))));
            (TaskId(4), vec![(TaskId(4), 0)])
        };
        // The head lends the blocked task's CPUs to the next one: it is asked back.
        let out = h.head(HeadToNode::StartNow { task: now, attempt: 0 });
        assert_eq!(out, vec![NodeOutput::WithdrawTask { worker: w, tasks: asked.clone() }]);
        // And a withdrawal nobody asked for is still refused.
        if shown_by_blocking {
            let err = h.refused(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0)] });
            assert!(matches!(err, InputError::StaleAttempt { .. }), "{err}");
        }
        let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: asked });
        assert!(started_worker(&out).is_some(), "it runs on a worker of its own");
    }
}

#[test]
fn a_successor_still_waiting_for_its_arguments_follows_the_chain_given_back_before_it() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    // Task 3 is cancelled by force while held ahead: the head forgets it, and hands task 4 over
    // behind task 2; task 4's argument is still to come.
    h.head(HeadToNode::CancelTask { task: TaskId(3), attempt: 0, force: true });
    let chain = [(TaskId(1), 0), (TaskId(2), 0)].to_vec();
    let order = run_after_with(task_with_refs(4, &[obj(1)]), TaskId(1), vec![(obj(1), at(10, &[2]))]);
    let HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, .. } = order else { unreachable!() };
    h.head(HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, after: chain });
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(2))));
    let out = h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    let asked = vec![(TaskId(2), 0), (TaskId(3), 0)];
    assert_eq!(out, vec![NodeOutput::WithdrawTask { worker: w, tasks: asked.clone() }]);
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: asked });
    assert_eq!(ended(&out), vec![(TaskId(3), 0, TaskOutcome::Failed(TaskFailure::Cancelled))]);
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(2))), "it still follows task 2");
    let fresh = started_worker(&out).expect("task 2 gets a worker of its own");
    h.input(NodeInput::WorkerStarted { worker: fresh });
    h.input(NodeInput::ObjectSealed { object: obj(1), size: 10 });
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::SentAhead(fresh)), "behind task 2 on its worker");
}

#[test]
fn while_a_successor_is_asked_back_new_successors_wait_and_go_ahead_once_it_is_given_back() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    // Task 1 runs again and takes a new successor; task 2, started now, takes one of its own.
    let out = h.head(run_behind(task(3), &[TaskId(1)]));
    assert!(executed(&out).is_empty(), "nothing goes to a worker that is being asked for tasks back");
    assert_eq!(h.node.task_phase(TaskId(3)), Some(TaskPhase::After(TaskId(1))));
    h.head(run_behind(task(4), &[TaskId(2)]));
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(2))));
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(2), 0)] });
    let fresh = started_worker(&out).expect("task 2 gets a worker of its own");
    assert_eq!(executed(&out), vec![(w, TaskId(3))], "task 3 goes behind task 1 once task 2 is back");
    let out = h.input(NodeInput::WorkerStarted { worker: fresh });
    assert_eq!(executed(&out), vec![(fresh, TaskId(2)), (fresh, TaskId(4))], "task 4 follows task 2 there");
    assert_eq!(started(&h.finish(w, TaskId(1))), vec![TaskId(3)]);
    assert_eq!(started(&h.finish(fresh, TaskId(2))), vec![TaskId(4)]);
}

#[test]
fn a_successor_that_waited_out_a_failed_ask_runs_on_its_own_when_the_task_before_it_ends() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    h.head(run_behind(task(3), &[TaskId(1)]));
    // The worker had ended task 1 and started task 2: the ask fails. The head runs task 3 in
    // task 1's resources now, so it must not wait behind task 2 (which may wait for it).
    let out = h.finish(w, TaskId(1));
    assert_eq!(started(&out), vec![TaskId(2)]);
    assert!(started_worker(&out).is_some(), "task 3 gets a worker of its own");
    assert!(!h.node.sent_ahead(w).contains(&TaskId(3)));
    // Task 2, started now, takes a successor of its own: it waits for the ask to settle, then
    // follows task 2 on its worker.
    h.head(run_behind(task(4), &[TaskId(2)]));
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(2))));
    let out = h.input(NodeInput::WorkerBlocked { worker: w, blocked: true });
    assert_eq!(executed(&out), vec![(w, TaskId(4))], "the worker showed it runs task 2: the ask is over");
}

#[test]
fn a_chain_kept_by_a_worker_that_started_its_first_goes_on_with_the_successor_waiting_behind_it() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(HeadToNode::StartNow { task: TaskId(2), attempt: 0 });
    h.head(run_behind(task(4), &[TaskId(1)]));
    h.head(run_behind(task(5), &[TaskId(2), TaskId(3)]));
    assert_eq!(h.node.task_phase(TaskId(5)), Some(TaskPhase::After(TaskId(3))));
    // The worker had started task 2: it keeps 2 and 3; task 4 runs elsewhere, task 5 after 3.
    let out = h.finish(w, TaskId(1));
    assert!(started_worker(&out).is_some(), "task 4 gets a worker of its own");
    let out = h.finish(w, TaskId(2));
    assert_eq!(started(&out), vec![TaskId(3)]);
    assert_eq!(h.node.task_phase(TaskId(5)), Some(TaskPhase::SentAhead(w)));
    assert_eq!(started(&h.finish(w, TaskId(3))), vec![TaskId(5)]);
}

#[test]
fn once_an_ask_settles_a_successor_of_the_running_task_goes_ahead_behind_a_cancelled_one() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(run_behind(task(2), &[TaskId(1)]));
    h.head(run_behind(task(3), &[TaskId(1), TaskId(2)]));
    h.head(HeadToNode::CancelTask { task: TaskId(2), attempt: 0, force: false });
    h.head(HeadToNode::StartNow { task: TaskId(3), attempt: 0 });
    h.head(run_behind(task(4), &[TaskId(1)]));
    assert_eq!(h.node.task_phase(TaskId(4)), Some(TaskPhase::After(TaskId(1))), "it waits while task 3 is asked back");
    let out = h.input(NodeInput::TaskWithdrawn { worker: w, tasks: vec![(TaskId(3), 0)] });
    assert!(executed(&out).contains(&(w, TaskId(4))), "then it goes behind the cancelled task 2");
    assert_eq!(h.node.sent_ahead(w), vec![TaskId(2), TaskId(4)]);
}
