//! A task blocked waiting for objects lends its CPUs to other tasks, so that tasks waiting for
//! children they submitted cannot starve a full cluster and deadlock; it takes them back when it
//! runs again, if they are free, and otherwise runs on without them until it ends.

mod common;

use common::*;
use keel_kernel::proto::{DriverToHead, HeadToNode, NodeToHead, ReturnValue, TaskOutcome, TaskSpec};
use keel_kernel::testkit::task;
use keel_kernel::*;

fn dispatched(outs: &[HeadOutput], task: TaskId) -> bool {
    outs.iter()
        .any(|o| matches!(o, HeadOutput::ToNode { msg: HeadToNode::RunTask { spec, .. }, .. } if spec.task == task))
}

fn free_cpus(b: &Bench, node: NodeId) -> f64 {
    b.head.cluster().nodes().find(|(id, _)| *id == node).map(|(_, n)| n.pool.available().cpu.as_f64()).unwrap()
}

fn finish(b: &mut Bench, node: NodeId, spec: &TaskSpec) {
    let returns = spec
        .return_ids()
        .map(|object| ReturnValue { object, size: 1, inline: Some(vec![7]), nested: vec![] })
        .collect();
    let (r, _) = b.node_says(
        node,
        NodeToHead::TaskEnded { task: spec.task, attempt: 0, outcome: TaskOutcome::Finished(returns) },
    );
    r.unwrap();
}

/// A one-CPU node running `parent`, which submitted `child` (queued: no CPU left).
fn parent_and_child() -> (Bench, NodeId, TaskSpec, TaskSpec) {
    let mut b = Bench::new();
    let node = b.node(1);
    let job = b.job();
    let parent = task(job, 0, "parent");
    let (r, outs) = b.driver(job, DriverToHead::SubmitTask(parent.clone().into()));
    r.unwrap();
    assert!(dispatched(&outs, parent.task));
    let child = TaskSpec::new(TaskId::child(parent.task, 0, 0), job, "child");
    let msg = Box::new(DriverToHead::SubmitTask(child.clone().into()));
    let (r, outs) = b.node_says(node, NodeToHead::FromSubmitter { task: parent.task, msg });
    r.unwrap();
    assert!(!dispatched(&outs, child.task), "no CPU for the child while its parent holds it");
    (b, node, parent, child)
}

#[test]
fn a_blocked_task_lends_its_cpu_to_its_child_and_takes_it_back_once_free() {
    let (mut b, node, parent, child) = parent_and_child();
    let (r, outs) = b.node_says(node, NodeToHead::TaskBlocked { task: parent.task, attempt: 0 });
    r.unwrap();
    assert!(dispatched(&outs, child.task), "the lent CPU runs the child");
    assert_eq!(free_cpus(&b, node), 0.0);
    // Blocked twice is blocked once.
    b.node_says(node, NodeToHead::TaskBlocked { task: parent.task, attempt: 0 }).0.unwrap();
    assert_eq!(free_cpus(&b, node), 0.0);
    finish(&mut b, node, &child);
    assert_eq!(free_cpus(&b, node), 1.0, "the child gave the CPU back; the parent still lends it");
    b.node_says(node, NodeToHead::TaskUnblocked { task: parent.task, attempt: 0 }).0.unwrap();
    assert_eq!(free_cpus(&b, node), 0.0, "the parent took its CPU back");
    finish(&mut b, node, &parent);
    assert_eq!(free_cpus(&b, node), 1.0);
}

#[test]
fn a_task_unblocked_while_its_cpu_is_taken_runs_on_without_it_and_nothing_is_counted_twice() {
    let (mut b, node, parent, child) = parent_and_child();
    b.node_says(node, NodeToHead::TaskBlocked { task: parent.task, attempt: 0 }).0.unwrap();
    // The child holds the CPU when the parent runs again: the parent does not wait for it.
    b.node_says(node, NodeToHead::TaskUnblocked { task: parent.task, attempt: 0 }).0.unwrap();
    assert_eq!(free_cpus(&b, node), 0.0);
    finish(&mut b, node, &parent);
    assert_eq!(free_cpus(&b, node), 0.0, "the parent ended holding no CPU; the child still holds one");
    finish(&mut b, node, &child);
    assert_eq!(free_cpus(&b, node), 1.0, "everything given back exactly once");
}

#[test]
fn blocking_reports_of_a_stale_attempt_or_an_unknown_task_are_refused() {
    let (mut b, node, parent, _) = parent_and_child();
    let (r, _) = b.node_says(node, NodeToHead::TaskBlocked { task: parent.task, attempt: 3 });
    assert!(matches!(r, Err(InputError::StaleAttempt { .. })), "{r:?}");
    let (r, _) = b.node_says(node, NodeToHead::TaskUnblocked { task: TaskId(999), attempt: 0 });
    assert_eq!(r, Err(InputError::UnknownTask(TaskId(999))));
    assert_eq!(free_cpus(&b, node), 0.0, "nothing was lent");
}

#[test]
fn tasks_that_block_and_run_again_oversubscribe_a_node_by_themselves_only() {
    // A one-CPU node and six tasks. Each running task blocks in get and runs again: the first
    // lends its CPU to the next and, running again, is owed it; CPUs freed later pay that debt
    // before any new task starts. Without the debt, every task would end up running at once.
    let mut b = Bench::new();
    let node = b.node(1);
    let job = b.job();
    let specs: Vec<TaskSpec> = (0..6).map(|i| task(job, i, "t")).collect();
    let dispatched_now = |outs: &[HeadOutput]| -> Vec<TaskId> {
        outs.iter()
            .filter_map(|o| match o {
                HeadOutput::ToNode { msg: HeadToNode::RunTask { spec, .. }, .. } => Some(spec.task),
                _ => None,
            })
            .collect()
    };
    let mut running = Vec::new();
    for s in &specs {
        let (r, outs) = b.driver(job, DriverToHead::SubmitTask(s.clone().into()));
        r.unwrap();
        running.extend(dispatched_now(&outs));
    }
    assert_eq!(running.len(), 1);
    let mut i = 0;
    while let Some(&t) = running.get(i) {
        let (r, outs) = b.node_says(node, NodeToHead::TaskBlocked { task: t, attempt: 0 });
        r.unwrap();
        running.extend(dispatched_now(&outs));
        b.node_says(node, NodeToHead::TaskUnblocked { task: t, attempt: 0 }).0.unwrap();
        i += 1;
    }
    assert_eq!(running.len(), 2, "one task lent its CPU, then the debt kept the rest queued");
    assert_eq!(free_cpus(&b, node), 0.0);
    // The owed task is paid by the next CPU freed; when both end, everything is back.
    let by_id = |t: TaskId| specs.iter().find(|s| s.task == t).unwrap().clone();
    finish(&mut b, node, &by_id(running[1]));
    assert_eq!(free_cpus(&b, node), 0.0, "the freed CPU paid the first task's debt");
    finish(&mut b, node, &by_id(running[0]));
    assert_eq!(free_cpus(&b, node), 0.0, "and then the next queued task took it");
    assert_eq!(b.head.task_state(specs[2].task), Some(keel_kernel::head::TaskStateKind::Running));
}
