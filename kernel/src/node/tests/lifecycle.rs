//! Task lifecycle, worker deaths, cancels, stale reports, heartbeats, drain and reset.

use super::*;
use crate::errors::TaskFailure;
use crate::node::{TaskPhase, WorkerState};
use crate::proto::{DriverToHead, HeadToDriver};

fn failed(failure: TaskFailure) -> TaskOutcome {
    TaskOutcome::Failed(failure)
}

#[test]
fn no_heartbeat_and_no_orders_before_registration() {
    let mut node = Node::new(NodeConfig::default());
    assert_eq!(node.poll_timeout(), None);
    node.handle_timeout(Time::ZERO + secs(10));
    assert_eq!(node.poll_output(), None);
    let err = node.handle_input(Time::ZERO, NodeInput::FromHead(HeadToNode::Drain)).unwrap_err();
    assert!(matches!(err, InputError::Malformed { .. }));
    node.check_invariants();
}

#[test]
fn heartbeats_come_every_period_from_registration() {
    let mut h = Harness::new();
    assert_eq!(h.node.poll_timeout(), Some(Time::ZERO + secs(1)));
    let out = h.advance_to(Time::ZERO + secs(3));
    assert_eq!(to_head(&out), vec![NodeToHead::Heartbeat; 3]);
    assert_eq!(h.node.next_heartbeat(), Some(Time::ZERO + secs(4)));
    // A late wake-up sends one heartbeat and keeps the schedule.
    h.now = Time::ZERO + secs(6) + Duration::from_millis(500);
    h.node.handle_timeout(h.now);
    assert_eq!(to_head(&h.drain()), vec![NodeToHead::Heartbeat]);
    assert_eq!(h.node.next_heartbeat(), Some(Time::ZERO + secs(7)));
}

#[test]
fn heartbeat_deadline_is_not_moved_by_a_burst_of_ten_thousand_inputs() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.finish(w, TaskId(1));
    let deadline = Time::ZERO + secs(1);
    for n in 0..5_000u64 {
        h.now = Time(n * 150_000); // spread over the first 0.75 s
        let out = h.run(task(10 + n), vec![]);
        assert_eq!(executed(&out), vec![(w, TaskId(10 + n))]);
        h.finish(w, TaskId(10 + n));
        assert_eq!(h.node.poll_timeout(), Some(deadline));
    }
    let out = h.advance_to(deadline);
    assert_eq!(to_head(&out), vec![NodeToHead::Heartbeat]);
    assert_eq!(h.node.poll_timeout(), Some(deadline + secs(1)));
}

#[test]
fn attempt_numbers_are_echoed_exactly() {
    let mut h = Harness::new();
    let out = h.head(run_task(task(1), 4, Allocation::default(), vec![], None));
    let w = started_worker(&out).unwrap();
    let out = h.input(NodeInput::WorkerStarted { worker: w });
    assert!(out.contains(&NodeOutput::ToHead(NodeToHead::TaskStarted { task: TaskId(1), attempt: 4, worker: w })));
    assert!(out.iter().any(|o| matches!(o, NodeOutput::Execute { attempt: 4, .. })));
    let value = inline_return(TaskId(1));
    let out = h.input(NodeInput::TaskDone {
        worker: w,
        task: TaskId(1),
        attempt: 4,
        outcome: TaskOutcome::Finished(vec![value.clone()]),
    });
    assert_eq!(ended(&out), vec![(TaskId(1), 4, TaskOutcome::Finished(vec![value]))]);
}

#[test]
fn application_error_is_reported_as_is_and_the_worker_is_reused() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let error = TaskFailure::Application { message: "boom".into() };
    let out = h.done(w, TaskId(1), failed(error.clone()));
    assert_eq!(ended(&out), vec![(TaskId(1), 0, failed(error))]);
    assert_eq!(h.node.idle_workers(), vec![w]);
}

#[test]
fn worker_death_mid_task_fails_it_with_worker_died_and_releases_its_pins() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(100, &[2]))]);
    let w = started_worker(&h.input(NodeInput::ObjectSealed { object: obj(1), size: 100 })).unwrap();
    h.input(NodeInput::WorkerStarted { worker: w });
    let out = h.input(NodeInput::WorkerExited { worker: w, exit_code: Some(137) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, failed(TaskFailure::WorkerDied { exit_code: Some(137) }))]);
    assert!(h.node.worker(w).is_none());
    assert!(h.node.pinned_objects().is_empty());
    assert!(h.node.running_tasks().is_empty());
}

#[test]
fn worker_start_failure_fails_its_task() {
    let mut h = Harness::new();
    let w = started_worker(&h.run(task(1), vec![])).unwrap();
    let out = h.input(NodeInput::WorkerStartFailed { worker: w, message: "no binary".into() });
    let expected = failed(TaskFailure::WorkerStartFailed { message: "no binary".into() });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, expected)]);
    assert!(h.node.worker(w).is_none());
}

#[test]
fn actor_worker_death_between_methods_reports_actor_worker_died() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    let out = h.input(NodeInput::WorkerExited { worker: aw, exit_code: Some(1) });
    assert_eq!(to_head(&out), vec![NodeToHead::ActorWorkerDied { actor: ActorId(7), worker: aw }]);
}

#[test]
fn actor_worker_death_mid_method_reports_the_actor_first_then_fails_the_method_and_the_queue() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    h.head(run_task(method(2, 7, 0), 0, Allocation::default(), vec![], Some(aw)));
    h.head(run_task(method(3, 7, 1), 0, Allocation::default(), vec![], Some(aw)));
    let out = h.input(NodeInput::WorkerExited { worker: aw, exit_code: None });
    let died = failed(TaskFailure::WorkerDied { exit_code: None });
    assert_eq!(ended(&out), vec![(TaskId(2), 0, died.clone()), (TaskId(3), 0, died)]);
    // Found in simulation: told of the method's failure alone, the head retried it on the dead
    // worker until its retries ran out. The actor's death must come first.
    let first = to_head(&out).into_iter().next();
    assert_eq!(first, Some(NodeToHead::ActorWorkerDied { actor: ActorId(7), worker: aw }));
}

#[test]
fn cancel_of_a_queued_task_drops_it_and_reports_cancelled() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(100, &[2]))]);
    let out = h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: false });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, failed(TaskFailure::Cancelled))]);
    assert_eq!(h.node.task_count(), 0);
    assert_eq!(h.node.pull_count(), 0);
}

#[test]
fn cancel_of_a_task_waiting_for_its_worker_returns_the_worker_to_the_pool() {
    let mut h = Harness::new();
    let w = started_worker(&h.run(task(1), vec![])).unwrap();
    let out = h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: true });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, failed(TaskFailure::Cancelled))]);
    assert_eq!(h.node.worker(w).unwrap().state, WorkerState::Starting { task: None });
    let out = h.input(NodeInput::WorkerStarted { worker: w });
    assert!(executed(&out).is_empty());
    assert_eq!(h.node.idle_workers(), vec![w]);
}

#[test]
fn forced_cancel_of_a_running_task_kills_its_worker() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: true });
    assert_eq!(killed(&out), vec![w]);
    assert_eq!(ended(&out), vec![(TaskId(1), 0, failed(TaskFailure::Cancelled))]);
    let out = h.input(NodeInput::WorkerExited { worker: w, exit_code: None });
    assert!(out.is_empty(), "the death was expected; nothing more is reported");
    let err = h.refused(NodeInput::TaskDone {
        worker: w,
        task: TaskId(1),
        attempt: 0,
        outcome: TaskOutcome::Finished(vec![inline_return(TaskId(1))]),
    });
    assert_eq!(err, InputError::UnknownWorker(w));
}

#[test]
fn unforced_cancel_of_a_running_task_reports_nothing_until_it_ends() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let out = h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: false });
    assert_eq!(out, vec![NodeOutput::InterruptTask { worker: w, task: TaskId(1), attempt: 0 }]);
    assert_eq!(h.node.task_phase(TaskId(1)), Some(TaskPhase::Running(w)));
    let out = h.done(w, TaskId(1), failed(TaskFailure::Application { message: "interrupted".into() }));
    assert_eq!(ended(&out), vec![(TaskId(1), 0, failed(TaskFailure::Cancelled))]);
}

#[test]
fn unforced_cancel_of_a_task_that_finishes_anyway_reports_its_values() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: false });
    let out = h.finish(w, TaskId(1));
    assert_eq!(ended(&out), vec![(TaskId(1), 0, TaskOutcome::Finished(vec![inline_return(TaskId(1))]))]);
}

#[test]
fn cancel_of_an_unknown_task_or_another_attempt_is_refused() {
    let mut h = Harness::new();
    h.run_on_new_worker(task(1));
    let err = h.refused(NodeInput::FromHead(HeadToNode::CancelTask { task: TaskId(9), attempt: 0, force: true }));
    assert_eq!(err, InputError::UnknownTask(TaskId(9)));
    let err = h.refused(NodeInput::FromHead(HeadToNode::CancelTask { task: TaskId(1), attempt: 1, force: true }));
    assert_eq!(err, InputError::StaleAttempt { task: TaskId(1), attempt: 1, node: ME });
}

#[test]
fn stale_and_duplicate_task_reports_are_refused_without_changing_anything() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let done = |attempt, task| NodeInput::TaskDone {
        worker: w,
        task,
        attempt,
        outcome: TaskOutcome::Finished(vec![inline_return(task)]),
    };
    let stale = InputError::StaleAttempt { task: TaskId(1), attempt: 1, node: ME };
    assert_eq!(h.refused(done(1, TaskId(1))), stale);
    let other = InputError::StaleAttempt { task: TaskId(2), attempt: 0, node: ME };
    assert_eq!(h.refused(done(0, TaskId(2))), other, "the worker does not run that task");
    let unknown = NodeInput::TaskDone {
        worker: WorkerId(77),
        task: TaskId(1),
        attempt: 0,
        outcome: failed(TaskFailure::Cancelled),
    };
    assert_eq!(h.refused(unknown), InputError::UnknownWorker(WorkerId(77)));
    let wrong_returns =
        NodeInput::TaskDone { worker: w, task: TaskId(1), attempt: 0, outcome: TaskOutcome::Finished(vec![]) };
    assert!(matches!(h.refused(wrong_returns), InputError::Malformed { .. }));
    h.input(done(0, TaskId(1)));
    let duplicate = InputError::StaleAttempt { task: TaskId(1), attempt: 0, node: ME };
    assert_eq!(h.refused(done(0, TaskId(1))), duplicate);
    assert_eq!(
        h.refused(NodeInput::WorkerExited { worker: WorkerId(77), exit_code: None }),
        InputError::UnknownWorker(WorkerId(77))
    );
    assert!(matches!(h.refused(NodeInput::WorkerStarted { worker: w }), InputError::Malformed { .. }));
}

#[test]
fn duplicate_run_task_is_refused() {
    let mut h = Harness::new();
    h.run_on_new_worker(task(1));
    let err = h.refused(NodeInput::FromHead(run_task(task(1), 0, Allocation::default(), vec![], None)));
    assert_eq!(err, InputError::DuplicateTask(TaskId(1)));
    let spec = task_with_refs(2, &[obj(1)]);
    let err = h.refused(NodeInput::FromHead(run_task(spec, 0, Allocation::default(), vec![], None)));
    assert!(matches!(err, InputError::Malformed { .. }), "a by-reference argument needs a source");
}

#[test]
fn a_bad_argument_source_is_refused_naming_the_first_bad_one_in_message_order() {
    let mut h = Harness::new();
    let named = |err: InputError| match err {
        InputError::Malformed { what } => what,
        other => panic!("expected Malformed, got {other:?}"),
    };
    let spec = || task_with_refs(2, &[obj(1), obj(3)]);
    // An unknown object before a repeated one: the unknown one is named.
    let args = vec![(obj(9), at(8, &[5])), (obj(3), at(8, &[5])), (obj(3), at(8, &[5]))];
    let what = named(h.refused(NodeInput::FromHead(run_task(spec(), 0, Allocation::default(), args, None))));
    assert!(what.ends_with(&obj(9).to_string()), "{what}");
    // A repeat before an unknown object: the repeated one is named.
    let args = vec![(obj(3), at(8, &[5])), (obj(3), at(8, &[5])), (obj(0), at(8, &[5]))];
    let what = named(h.refused(NodeInput::FromHead(run_task(spec(), 0, Allocation::default(), args, None))));
    assert!(what.ends_with(&obj(3).to_string()), "{what}");
    // Sources in any order are accepted when each argument has exactly one.
    let args = vec![(obj(3), at(8, &[5])), (obj(1), at(8, &[5]))];
    h.input(NodeInput::FromHead(run_task(spec(), 0, Allocation::default(), args, None)));
    assert!(h.node.task_phase(TaskId(2)).is_some());
}

#[test]
fn kill_actor_ends_its_running_method_and_kills_the_worker_quietly() {
    let mut h = Harness::new();
    let aw = h.run_on_new_worker(actor_creation(1, 7));
    h.finish(aw, TaskId(1));
    h.head(run_task(method(2, 7, 0), 0, Allocation::default(), vec![], Some(aw)));
    let err = h.refused(NodeInput::FromHead(HeadToNode::KillActor { actor: ActorId(8), worker: aw }));
    assert_eq!(err, InputError::UnknownActor(ActorId(8)));
    let out = h.head(HeadToNode::KillActor { actor: ActorId(7), worker: aw });
    assert_eq!(killed(&out), vec![aw]);
    assert_eq!(ended(&out), vec![(TaskId(2), 0, failed(TaskFailure::WorkerDied { exit_code: None }))]);
    let out = h.input(NodeInput::WorkerExited { worker: aw, exit_code: None });
    assert!(out.is_empty(), "no ActorWorkerDied for a kill the head asked for");
}

#[test]
fn messages_between_a_running_task_and_the_head_are_forwarded() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let msg = DriverToHead::Subscribe(vec![obj(1)]);
    let out = h.input(NodeInput::FromWorker { worker: w, msg: msg.clone() });
    assert_eq!(to_head(&out), vec![NodeToHead::FromSubmitter { task: TaskId(1), msg: Box::new(msg) }]);
    let reply = HeadToDriver::ObjectReady { object: obj(1), size: 1, data: crate::proto::ObjectData::Inline(vec![1]) };
    let out = h.head(HeadToNode::ToSubmitter { task: TaskId(1), msg: reply.clone() });
    assert_eq!(out, vec![NodeOutput::ToWorker { worker: w, msg: reply.clone() }]);
    h.finish(w, TaskId(1));
    let err = h.refused(NodeInput::FromHead(HeadToNode::ToSubmitter { task: TaskId(1), msg: reply }));
    assert_eq!(err, InputError::SubmitterNotRunning { task: TaskId(1), node: ME });
    let idle = NodeInput::FromWorker { worker: w, msg: DriverToHead::FinishJob };
    assert!(matches!(h.refused(idle), InputError::Malformed { .. }));
}

#[test]
fn drain_finishes_running_work_refuses_new_tasks_and_then_leaves() {
    let mut h = Harness::new();
    let idle = h.run_on_new_worker(task(1));
    let busy = h.run_on_new_worker(task(2));
    h.finish(idle, TaskId(1));
    let out = h.head(HeadToNode::Drain);
    assert_eq!(killed(&out), vec![idle], "idle workers go at once");
    assert!(to_head(&out).is_empty(), "not leaving while a task runs");
    let out = h.run(task(3), vec![]);
    let refused = failed(TaskFailure::WorkerStartFailed { message: "the node is draining".into() });
    assert_eq!(ended(&out), vec![(TaskId(3), 0, refused)]);
    assert!(started_worker(&out).is_none());
    let out = h.finish(busy, TaskId(2));
    assert_eq!(killed(&out), vec![busy]);
    assert_eq!(to_head(&out).last(), Some(&NodeToHead::Leaving));
    h.input(NodeInput::WorkerExited { worker: busy, exit_code: Some(0) });
    let leaving =
        to_head(&h.advance_to(Time::ZERO + secs(5))).into_iter().filter(|m| *m == NodeToHead::Leaving).count();
    assert_eq!(leaving, 0, "Leaving is sent once");
}

#[test]
fn reregister_resets_everything_and_the_node_registers_anew() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    copy_here(&mut h, 300);
    h.run(task_with_refs(2, &[obj(2)]), vec![(obj(2), at(100, &[2]))]);
    let out = h.head(HeadToNode::Reregister);
    assert_eq!(out, vec![NodeOutput::Reset]);
    assert_eq!(h.node.node_id(), None);
    assert_eq!(h.node.poll_timeout(), None, "no heartbeat, no pull deadline");
    assert_eq!(h.node.task_count(), 0);
    assert_eq!(h.node.workers().count(), 0);
    assert_eq!(h.node.local_objects().count(), 0);
    assert_eq!(h.node.pull_count(), 0);
    let late = NodeInput::TaskDone { worker: w, task: TaskId(1), attempt: 0, outcome: failed(TaskFailure::Cancelled) };
    assert!(matches!(h.refused(late), InputError::Malformed { .. }), "nothing is accepted before registering");
    h.now = Time::ZERO + secs(2) + Duration(7);
    h.input(NodeInput::Registered(NodeId(9)));
    assert_eq!(h.node.poll_timeout(), Some(h.now + secs(1)));
    assert_eq!(h.refused(NodeInput::WorkerExited { worker: w, exit_code: None }), InputError::UnknownWorker(w));
    let fresh = started_worker(&h.run(task(3), vec![])).unwrap();
    assert!(fresh > w, "worker ids are never reused");
}

fn copy_here(h: &mut Harness, size: u64) {
    h.head(HeadToNode::CopyObject { object: obj(1), size, from: vec![NodeId(2)] });
    h.input(NodeInput::ObjectSealed { object: obj(1), size });
}

#[test]
fn a_duplicated_order_for_an_attempt_already_ended_is_refused_and_not_run_again() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.finish(w, TaskId(1));
    // Found in simulation: a copy of the RunTask arriving after the attempt ended ran it twice.
    let copy = run_task(task(1), 0, Allocation::default(), vec![], None);
    let refused = h.node.handle_input(h.now, NodeInput::FromHead(copy));
    assert_eq!(refused, Err(InputError::DuplicateTask(TaskId(1))));
    assert!(h.node.poll_output().is_none(), "a refused order has no effect");
    // The next attempt of the same task is a new order.
    let out = h.head(run_task(task(1), 1, Allocation::default(), vec![], None));
    assert_eq!(executed(&out), vec![(w, TaskId(1))]);
}

#[test]
fn a_worker_blocked_in_get_is_reported_with_its_task_and_attempt() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let out = h.input(NodeInput::WorkerBlocked { worker: w, blocked: true });
    assert_eq!(to_head(&out), vec![NodeToHead::TaskBlocked { task: TaskId(1), attempt: 0 }]);
    let out = h.input(NodeInput::WorkerBlocked { worker: w, blocked: false });
    assert_eq!(to_head(&out), vec![NodeToHead::TaskUnblocked { task: TaskId(1), attempt: 0 }]);
    h.finish(w, TaskId(1));
    // An idle worker cannot be blocked, and an unknown one is refused.
    let err = h.refused(NodeInput::WorkerBlocked { worker: w, blocked: true });
    assert!(matches!(err, InputError::Malformed { .. }), "{err:?}");
    let ghost = WorkerId(99);
    assert_eq!(h.refused(NodeInput::WorkerBlocked { worker: ghost, blocked: true }), InputError::UnknownWorker(ghost));
}
