//! Argument pulls: success, retry over holders, timeouts, exhaustion, deduplication, serving peers.

use super::*;
use crate::errors::TaskFailure;
use crate::node::{ExecArg, TaskPhase};
use crate::proto::NodeToNode;

fn reply(h: &mut Harness, from: u64, object: ObjectId, size: Option<u64>) -> Vec<NodeOutput> {
    h.input(NodeInput::FromPeer { from: NodeId(from), msg: NodeToNode::PullReply { object, size } })
}

#[test]
fn argument_is_pulled_from_the_first_holder_then_the_task_runs() {
    let mut h = Harness::new();
    let out = h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    assert_eq!(pulls_sent(&out), vec![(NodeId(2), obj(1))]);
    assert!(started_worker(&out).is_none(), "no worker before the argument is here");
    assert_eq!(h.node.task_phase(TaskId(1)), Some(TaskPhase::Fetching));
    assert!(reply(&mut h, 2, obj(1), Some(500)).is_empty());
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 500 });
    assert!(to_head(&out).contains(&NodeToHead::ObjectAdded { object: obj(1), size: 500 }));
    let worker = started_worker(&out).expect("a worker once the argument is local");
    let copy = h.node.local_object(obj(1)).unwrap();
    assert!(!copy.primary, "a pulled copy is secondary");
    assert!(copy.pinned_by.contains(&TaskId(1)));
    let out = h.input(NodeInput::WorkerStarted { worker });
    let args = out.iter().find_map(|o| match o {
        NodeOutput::Execute { args, .. } => Some(args.clone()),
        _ => None,
    });
    assert_eq!(args, Some(vec![ExecArg::Local { object: obj(1), size: 500 }]));
}

#[test]
fn negative_reply_moves_the_pull_to_the_next_holder() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    let out = reply(&mut h, 2, obj(1), None);
    assert_eq!(pulls_sent(&out), vec![(NodeId(3), obj(1))]);
    assert_eq!(h.node.pull_status(obj(1)).unwrap().holder, NodeId(3));
}

#[test]
fn data_path_failure_moves_the_pull_to_the_next_holder() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    let out = h.input(NodeInput::PullFailed { object: obj(1), from: NodeId(2) });
    assert_eq!(pulls_sent(&out), vec![(NodeId(3), obj(1))]);
    assert_eq!(h.node.pull_status(obj(1)).unwrap().tries, 2);
}

#[test]
fn a_pull_whose_bytes_keep_arriving_outlives_its_timeout_and_a_stalled_one_does_not() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    let timeout = h.node.config().pull_timeout;
    // Bytes arrive from the holder every half timeout for three timeouts: no retry.
    let mut t = Time::ZERO;
    for _ in 0..6 {
        t = t + Duration(timeout.0 / 2);
        assert!(pulls_sent(&h.advance_to(t)).is_empty(), "retried a pull making progress at {t:?}");
        h.input(NodeInput::PullProgress { object: obj(1), from: NodeId(2) });
    }
    // Bytes from a node that is not the current holder do not count.
    h.input(NodeInput::PullProgress { object: obj(1), from: NodeId(3) });
    assert!(pulls_sent(&h.advance_to(t + timeout - Duration(1))).is_empty());
    let out = h.advance_to(t + timeout);
    assert_eq!(pulls_sent(&out), vec![(NodeId(3), obj(1))], "stalled: the next holder is asked");
    // Progress for an object not being pulled is harmless.
    h.input(NodeInput::PullProgress { object: obj(9), from: NodeId(2) });
}

#[test]
fn silent_holder_times_out_and_the_next_holder_is_asked() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    let timeout = h.node.config().pull_timeout;
    let early = h.advance_to(Time::ZERO + timeout - Duration(1));
    assert!(pulls_sent(&early).is_empty(), "no retry before the deadline");
    let out = h.advance_to(Time::ZERO + timeout);
    assert_eq!(pulls_sent(&out), vec![(NodeId(3), obj(1))]);
}

#[test]
fn positive_reply_restarts_the_pull_deadline() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    h.advance_to(Time::ZERO + secs(4));
    reply(&mut h, 2, obj(1), Some(500));
    assert!(pulls_sent(&h.advance_to(Time::ZERO + secs(8))).is_empty(), "the sender is alive");
    assert_eq!(pulls_sent(&h.advance_to(Time::ZERO + secs(9))), vec![(NodeId(3), obj(1))]);
}

#[test]
fn exhausted_pull_fails_the_task_with_argument_unavailable() {
    let mut h = Harness::new();
    let out = h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    let mut asked = pulls_sent(&out);
    for _ in 0..5 {
        let from = asked.last().unwrap().0;
        let out = h.input(NodeInput::PullFailed { object: obj(1), from });
        assert!(ended(&out).is_empty());
        asked.extend(pulls_sent(&out));
    }
    let holders: Vec<u64> = asked.iter().map(|(n, _)| n.0).collect();
    assert_eq!(holders, vec![2, 3, 2, 3, 2, 3], "pull_max_attempts rounds over the holders");
    let out = h.input(NodeInput::PullFailed { object: obj(1), from: NodeId(3) });
    let unavailable = TaskOutcome::Failed(TaskFailure::ArgumentUnavailable { object: obj(1) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, unavailable)]);
    assert!(pulls_sent(&out).is_empty());
    assert_eq!(h.node.pull_count(), 0);
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn exhaustion_by_timeouts_alone_fails_the_task() {
    let config = NodeConfig { pull_max_attempts: 2, ..NodeConfig::default() };
    let mut h = Harness::with_config(config);
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2]))]);
    let out = h.advance_to(Time::ZERO + secs(5));
    assert_eq!(pulls_sent(&out), vec![(NodeId(2), obj(1))], "second round on the only holder");
    let out = h.advance_to(Time::ZERO + secs(10));
    let unavailable = TaskOutcome::Failed(TaskFailure::ArgumentUnavailable { object: obj(1) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, unavailable)]);
}

#[test]
fn argument_held_only_by_this_node_but_missing_fails_at_once() {
    let mut h = Harness::new();
    let out = h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[ME.0]))]);
    let unavailable = TaskOutcome::Failed(TaskFailure::ArgumentUnavailable { object: obj(1) });
    assert_eq!(ended(&out), vec![(TaskId(1), 0, unavailable)]);
    assert!(pulls_sent(&out).is_empty());
    assert_eq!(h.node.task_count(), 0);
}

#[test]
fn this_node_is_skipped_among_the_holders() {
    let mut h = Harness::new();
    let out = h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[ME.0, 4]))]);
    assert_eq!(pulls_sent(&out), vec![(NodeId(4), obj(1))]);
}

#[test]
fn concurrent_pulls_of_one_object_are_deduplicated() {
    let mut h = Harness::new();
    let first = h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2]))]);
    let second = h.run(task_with_refs(2, &[obj(1)]), vec![(obj(1), at(500, &[2]))]);
    assert_eq!(pulls_sent(&first).len(), 1);
    assert!(pulls_sent(&second).is_empty(), "the second task joins the first pull");
    assert_eq!(h.node.pull_status(obj(1)).unwrap().waiters, vec![TaskId(1), TaskId(2)]);
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 500 });
    let starts = out.iter().filter(|o| matches!(o, NodeOutput::StartWorker { .. })).count();
    assert_eq!(starts, 2, "both tasks get their argument from one transfer");
    let pins = &h.node.local_object(obj(1)).unwrap().pinned_by;
    assert_eq!(pins.len(), 2);
}

#[test]
fn late_answers_from_a_previous_holder_are_ignored() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2, 3]))]);
    h.input(NodeInput::PullFailed { object: obj(1), from: NodeId(2) });
    assert!(reply(&mut h, 2, obj(1), None).is_empty());
    assert!(h.input(NodeInput::PullFailed { object: obj(1), from: NodeId(2) }).is_empty());
    let status = h.node.pull_status(obj(1)).unwrap();
    assert_eq!((status.holder, status.tries), (NodeId(3), 2));
}

#[test]
fn pull_failure_for_an_object_not_being_pulled_is_refused() {
    let mut h = Harness::new();
    let err = h.refused(NodeInput::PullFailed { object: obj(9), from: NodeId(2) });
    assert_eq!(err, InputError::UnknownObject(obj(9)));
}

#[test]
fn bytes_nobody_waits_for_any_more_are_deleted() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(500, &[2]))]);
    h.head(HeadToNode::CancelTask { task: TaskId(1), attempt: 0, force: false });
    assert_eq!(h.node.pull_count(), 0, "the pull goes with its last waiter");
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 500 });
    assert_eq!(deleted(&out), vec![obj(1)]);
    assert!(h.node.local_object(obj(1)).is_none());
}

#[test]
fn peer_pull_is_served_from_the_local_table_and_pins_during_the_send() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    h.done(w, TaskId(1), TaskOutcome::Finished(vec![sealed_return(TaskId(1), 700)]));
    let object = ObjectId::for_return(TaskId(1), 1);
    let out = h.input(NodeInput::FromPeer { from: NodeId(5), msg: NodeToNode::Pull { object } });
    let expected_reply = NodeOutput::ToPeer { node: NodeId(5), msg: NodeToNode::PullReply { object, size: Some(700) } };
    assert_eq!(out[0], expected_reply);
    assert_eq!(out[1], NodeOutput::SendObject { object, to: NodeId(5), size: 700 });
    assert_eq!(h.node.pinned_objects(), vec![object]);
    h.input(NodeInput::SendEnded { object, to: NodeId(5) });
    assert!(h.node.pinned_objects().is_empty());
    let err = h.refused(NodeInput::SendEnded { object, to: NodeId(5) });
    assert_eq!(err, InputError::UnknownObject(object));
}

#[test]
fn peer_pull_of_an_absent_object_gets_a_negative_reply() {
    let mut h = Harness::new();
    let out = h.input(NodeInput::FromPeer { from: NodeId(5), msg: NodeToNode::Pull { object: obj(3) } });
    let expected = NodeOutput::ToPeer { node: NodeId(5), msg: NodeToNode::PullReply { object: obj(3), size: None } };
    assert_eq!(out, vec![expected]);
}

#[test]
fn return_value_sealed_here_completes_a_pull_of_the_same_object() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let produced = ObjectId::for_return(TaskId(1), 1);
    h.run(task_with_refs(2, &[produced]), vec![(produced, at(800, &[2]))]);
    assert_eq!(h.node.pull_count(), 1);
    let out = h.done(w, TaskId(1), TaskOutcome::Finished(vec![sealed_return(TaskId(1), 800)]));
    assert_eq!(h.node.pull_count(), 0, "the local return value ends the pull");
    assert_eq!(executed(&out), vec![(w, TaskId(2))], "the waiter runs on the worker just freed");
    let copy = h.node.local_object(produced).unwrap();
    assert!(copy.primary);
    assert!(copy.pinned_by.contains(&TaskId(2)));
}
