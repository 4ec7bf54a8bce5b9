//! The local object table: primary and secondary copies, pins, eviction, frees and copies.

use super::*;
use crate::proto::{DriverToHead, NodeToNode};

fn small_store() -> Harness {
    Harness::with_config(NodeConfig { object_store_capacity_bytes: 1000, ..NodeConfig::default() })
}

/// Makes `object` a local secondary copy through `CopyObject` and a sealed pull.
fn copy_here(h: &mut Harness, object: ObjectId, size: u64) -> Vec<NodeOutput> {
    let out = h.head(HeadToNode::CopyObject { object, size, from: vec![NodeId(2)] });
    assert_eq!(pulls_sent(&out), vec![(NodeId(2), object)]);
    h.input(NodeInput::ObjectSealed { object, size })
}

/// Runs task `n` to completion with one return value of `size` sealed here; returns its object.
fn primary_here(h: &mut Harness, n: u64, size: u64) -> ObjectId {
    let w = h.run_anywhere(task(n));
    h.done(w, TaskId(n), TaskOutcome::Finished(vec![sealed_return(TaskId(n), size)]));
    ObjectId::for_return(TaskId(n), 1)
}

#[test]
fn task_returns_sealed_here_become_primary_copies() {
    let mut h = Harness::new();
    let object = primary_here(&mut h, 1, 4096);
    let copy = h.node.local_object(object).expect("the return value is local");
    assert!(copy.primary);
    assert_eq!(copy.size, 4096);
    let w = h.run_anywhere(task(2));
    h.finish(w, TaskId(2));
    assert!(h.node.local_object(ObjectId::for_return(TaskId(2), 1)).is_none(), "inline values stay out");
}

#[test]
fn put_sealed_by_a_local_worker_is_a_primary_copy_and_is_forwarded() {
    let mut h = Harness::new();
    let w = h.run_on_new_worker(task(1));
    let object = ObjectId::for_put(TaskId(1), 1);
    let put = DriverToHead::Put { object, size: 900, inline: None, node: Some(ME), nested: vec![] };
    let out = h.input(NodeInput::FromWorker { worker: w, msg: put.clone() });
    assert_eq!(to_head(&out), vec![NodeToHead::FromSubmitter { task: TaskId(1), msg: Box::new(put) }]);
    assert!(h.node.local_object(object).unwrap().primary);
}

#[test]
fn a_clients_put_sealed_here_is_a_primary_copy_until_the_head_frees_it() {
    let mut h = small_store();
    let object = ObjectId::for_put(TaskId::driver(JobId(1)), 1);
    // The client tells the head itself: nothing goes to the head from here.
    let out = h.input(NodeInput::ClientPut { object, size: 900 });
    assert!(to_head(&out).is_empty(), "{out:?}");
    let copy = h.node.local_object(object).expect("recorded");
    assert!(copy.primary);
    assert_eq!(copy.size, 900);
    // A primary copy is never evicted to make room for a secondary one.
    assert!(h.head(HeadToNode::CopyObject { object: obj(2), size: 300, from: vec![NodeId(2)] }).is_empty());
    assert_eq!(h.refused(NodeInput::ClientPut { object, size: 900 }), InputError::DuplicateObject(object));
    let out = h.head(HeadToNode::FreeObjects(vec![object]));
    assert!(out.contains(&NodeOutput::DeleteObject(object)), "{out:?}");
    assert!(h.node.local_object(object).is_none());
}

#[test]
fn a_client_put_must_carry_a_put_id() {
    let mut h = Harness::new();
    let err = h.refused(NodeInput::ClientPut { object: obj(1), size: 10 });
    assert!(matches!(err, InputError::Malformed { .. }), "{err:?}");
    assert!(h.node.local_object(obj(1)).is_none());
}

#[test]
fn copy_object_fetches_an_unpinned_secondary_copy() {
    let mut h = Harness::new();
    let out = copy_here(&mut h, obj(1), 300);
    assert!(to_head(&out).contains(&NodeToHead::ObjectAdded { object: obj(1), size: 300 }));
    let copy = h.node.local_object(obj(1)).unwrap();
    assert!(!copy.primary);
    assert!(!copy.is_pinned());
    assert!(h.head(HeadToNode::CopyObject { object: obj(1), size: 300, from: vec![NodeId(2)] }).is_empty());
}

#[test]
fn copy_that_could_not_fit_is_not_fetched() {
    let mut h = small_store();
    primary_here(&mut h, 1, 800);
    let out = h.head(HeadToNode::CopyObject { object: obj(1), size: 300, from: vec![NodeId(2)] });
    assert!(out.is_empty());
    assert_eq!(h.node.pull_count(), 0);
}

#[test]
fn lru_eviction_takes_the_least_recently_used_secondary_copy_only() {
    let mut h = small_store();
    let primary = primary_here(&mut h, 1, 300);
    copy_here(&mut h, obj(1), 300);
    copy_here(&mut h, obj(2), 300);
    // Serving obj(1) to a peer uses it, so obj(2) becomes the least recently used.
    h.input(NodeInput::FromPeer { from: NodeId(5), msg: NodeToNode::Pull { object: obj(1) } });
    h.input(NodeInput::SendEnded { object: obj(1), to: NodeId(5) });
    let out = copy_here(&mut h, obj(3), 300);
    assert_eq!(deleted(&out), vec![obj(2)], "the oldest copy, the primary, is never evicted");
    assert!(to_head(&out).contains(&NodeToHead::ObjectRemoved(obj(2))));
    assert!(h.node.local_object(primary).is_some());
    assert!(h.node.local_object(obj(1)).is_some());
    assert_eq!(h.node.used_bytes(), 900);
}

#[test]
fn pinned_argument_is_not_evicted_until_its_task_ends() {
    let mut h = small_store();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(600, &[2]))]);
    let out = h.input(NodeInput::ObjectSealed { object: obj(1), size: 600 });
    let w1 = started_worker(&out).unwrap();
    h.input(NodeInput::WorkerStarted { worker: w1 });
    h.run(task_with_refs(2, &[obj(2)]), vec![(obj(2), at(600, &[2]))]);
    let out = h.input(NodeInput::ObjectSealed { object: obj(2), size: 600 });
    assert!(deleted(&out).is_empty(), "a pinned copy is never evicted");
    assert_eq!(h.node.used_bytes(), 1200, "a needed argument may overfill the store");
    assert_eq!(h.node.pinned_objects(), vec![obj(1), obj(2)]);
    h.finish(w1, TaskId(1));
    assert_eq!(h.node.pinned_objects(), vec![obj(2)], "the task's pin goes when it ends");
    let out = copy_here(&mut h, obj(3), 100);
    assert_eq!(deleted(&out), vec![obj(1)]);
    assert!(h.node.local_object(obj(2)).is_some());
}

#[test]
fn free_of_a_pinned_object_is_deferred_until_the_task_ends() {
    let mut h = Harness::new();
    h.run(task_with_refs(1, &[obj(1)]), vec![(obj(1), at(600, &[2]))]);
    let w = started_worker(&h.input(NodeInput::ObjectSealed { object: obj(1), size: 600 })).unwrap();
    h.input(NodeInput::WorkerStarted { worker: w });
    let out = h.head(HeadToNode::FreeObjects(vec![obj(1)]));
    assert!(deleted(&out).is_empty());
    assert!(h.node.local_object(obj(1)).unwrap().free_pending);
    let serve = h.input(NodeInput::FromPeer { from: NodeId(5), msg: NodeToNode::Pull { object: obj(1) } });
    let refusal = NodeOutput::ToPeer { node: NodeId(5), msg: NodeToNode::PullReply { object: obj(1), size: None } };
    assert_eq!(serve, vec![refusal], "a freed copy is not served");
    let out = h.finish(w, TaskId(1));
    assert_eq!(deleted(&out), vec![obj(1)]);
    assert!(h.node.local_object(obj(1)).is_none());
    assert_eq!(h.node.used_bytes(), 0);
}

#[test]
fn free_during_a_send_is_deferred_until_the_send_ends() {
    let mut h = Harness::new();
    copy_here(&mut h, obj(1), 300);
    h.input(NodeInput::FromPeer { from: NodeId(5), msg: NodeToNode::Pull { object: obj(1) } });
    assert!(deleted(&h.head(HeadToNode::FreeObjects(vec![obj(1)]))).is_empty());
    let out = h.input(NodeInput::SendEnded { object: obj(1), to: NodeId(5) });
    assert_eq!(deleted(&out), vec![obj(1)]);
}

#[test]
fn free_of_an_unpinned_object_deletes_it_at_once_and_skips_absent_ones() {
    let mut h = Harness::new();
    let object = primary_here(&mut h, 1, 300);
    let out = h.head(HeadToNode::FreeObjects(vec![obj(9), object]));
    assert_eq!(deleted(&out), vec![object]);
    assert!(to_head(&out).is_empty(), "the head knows what it freed");
    assert_eq!(h.node.used_bytes(), 0);
}

#[test]
fn free_stops_a_copy_in_progress() {
    let mut h = Harness::new();
    h.head(HeadToNode::CopyObject { object: obj(1), size: 300, from: vec![NodeId(2)] });
    assert_eq!(h.node.pull_count(), 1);
    h.head(HeadToNode::FreeObjects(vec![obj(1)]));
    assert_eq!(h.node.pull_count(), 0);
    assert_eq!(deleted(&h.input(NodeInput::ObjectSealed { object: obj(1), size: 300 })), vec![obj(1)]);
}

#[test]
fn sealing_an_object_twice_is_refused() {
    let mut h = Harness::new();
    copy_here(&mut h, obj(1), 300);
    let err = h.refused(NodeInput::ObjectSealed { object: obj(1), size: 300 });
    assert_eq!(err, InputError::DuplicateObject(obj(1)));
}

#[test]
fn a_value_sealed_again_after_a_deferred_free_is_kept() {
    let mut h = Harness::new();
    // Task 10 runs here with object 1 (task 1's value) pulled as its argument: pinned.
    let x = ObjectId::for_return(TaskId(1), 1);
    let out = h.run(task_with_refs(10, &[x]), vec![(x, at(500, &[2]))]);
    assert_eq!(pulls_sent(&out), vec![(NodeId(2), x)]);
    h.input(NodeInput::FromPeer { from: NodeId(2), msg: NodeToNode::PullReply { object: x, size: Some(500) } });
    let out = h.input(NodeInput::ObjectSealed { object: x, size: 500 });
    let started = started_worker(&out).expect("task 10 gets a worker");
    h.input(NodeInput::WorkerStarted { worker: started });
    // The head frees this copy while task 10 holds it (it is rebuilding the object elsewhere).
    assert!(deleted(&h.head(HeadToNode::FreeObjects(vec![x]))).is_empty(), "deferred while pinned");
    // The rebuild of task 1 runs here and seals a fresh primary copy of the same object.
    let out = h.head(run_task(task(1), 1, Allocation::default(), vec![], None));
    let rebuilder = started_worker(&out).expect("a second worker");
    h.input(NodeInput::WorkerStarted { worker: rebuilder });
    h.input(NodeInput::TaskDone {
        worker: rebuilder,
        task: TaskId(1),
        attempt: 1,
        outcome: TaskOutcome::Finished(vec![sealed_return(TaskId(1), 500)]),
    });
    // Found in simulation: task 10 ending applied the old deferred free to the new copy.
    let out = h.finish(started, TaskId(10));
    assert!(deleted(&out).is_empty(), "the rebuilt value was deleted by the free meant for the old copy");
    assert!(h.node.local_object(x).is_some_and(|o| o.primary));
}
