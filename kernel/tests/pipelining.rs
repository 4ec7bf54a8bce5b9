//! Pipelining of short tasks: when every CPU is taken, a ready task of a class whose tasks run
//! briefly is handed to the node of a running task of the same job and class, to run next in its
//! resources; long tasks never are.

use keel_kernel::head::{HeadOutput, TaskStateKind};
use keel_kernel::proto::{DriverToHead, HeadToNode, Labels};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;

fn us(n: u64) -> Duration {
    Duration(n * 1_000)
}

fn cluster(hosts: usize, cpus: u64) -> Cluster {
    let mut c = Cluster::new(HeadConfig::default(), NodeConfig::default(), us(50));
    for _ in 0..hosts {
        c.add_host(ResourceSet::cpus(cpus), Labels::new());
    }
    c.run_for(Duration::from_millis(10));
    c
}

/// Runs one task of `function` to the end, so the head knows how long that class runs.
fn warm_up(c: &mut Cluster, job: JobId, function: &str) {
    let spec = task(job, 1_000_000, function);
    let t = spec.task;
    c.submit(job, spec).unwrap();
    c.run_for(Duration::from_millis(200));
    assert_eq!(c.head.task_state(t), Some(TaskStateKind::Finished));
}

/// Submits `n` tasks of `function` at once, numbered from 0; returns their ids.
fn submit(c: &mut Cluster, job: JobId, n: u64, function: &str) -> Vec<TaskId> {
    let specs: Vec<_> = (0..n).map(|i| task(job, i, function)).collect();
    let ids = specs.iter().map(|s| s.task).collect();
    for spec in specs {
        c.submit(job, spec).unwrap();
    }
    ids
}

/// The `after` of each `RunTask` the head sent for `task`.
fn orders(c: &Cluster, task: TaskId) -> Vec<Vec<(TaskId, u32)>> {
    c.head_log
        .iter()
        .filter_map(|(_, o)| match o {
            HeadOutput::ToNode { msg: HeadToNode::RunTask { spec, after, .. }, .. } if spec.task == task => {
                Some(after.clone())
            }
            _ => None,
        })
        .collect()
}

fn states(c: &Cluster, tasks: &[TaskId]) -> Vec<TaskStateKind> {
    tasks.iter().map(|t| c.head.task_state(*t).unwrap()).collect()
}

#[test]
fn short_tasks_beyond_the_free_cpus_are_handed_to_the_node_to_run_next_the_running_task_with_fewest_first() {
    let mut c = cluster(1, 2);
    let job = c.start_job("short");
    warm_up(&mut c, job, "ms=2");
    let ids = submit(&mut c, job, 6, "ms=2");
    c.run_for(us(1_500));
    use TaskStateKind::{Next, Running};
    assert_eq!(states(&c, &ids), vec![Running, Running, Next, Next, Next, Next]);
    assert_eq!(orders(&c, ids[2]), vec![vec![(ids[0], 0)]]);
    assert_eq!(orders(&c, ids[3]), vec![vec![(ids[1], 0)]]);
    // Each names the running task and the successors handed over before it.
    assert_eq!(orders(&c, ids[4]), vec![vec![(ids[0], 0), (ids[2], 0)]]);
    assert_eq!(orders(&c, ids[5]), vec![vec![(ids[1], 0), (ids[3], 0)]]);
    c.check_invariants();
    c.run_for(Duration::from_millis(100));
    assert!(states(&c, &ids).iter().all(|s| *s == TaskStateKind::Finished), "{:?}", states(&c, &ids));
    c.check_invariants();
}

#[test]
fn a_running_task_takes_successors_only_while_the_last_would_start_within_pipeline_under() {
    let mut c = cluster(1, 1);
    let job = c.start_job("medium");
    warm_up(&mut c, job, "ms=4");
    // About 4 ms each: a second successor starts after about 8 ms, a third after about 12.
    let ids = submit(&mut c, job, 4, "ms=4");
    c.run_for(us(1_500));
    use TaskStateKind::{Next, Queued, Running};
    assert_eq!(states(&c, &ids), vec![Running, Next, Next, Queued]);
    c.run_for(Duration::from_millis(100));
    assert!(states(&c, &ids).iter().all(|s| *s == TaskStateKind::Finished), "{:?}", states(&c, &ids));
    c.check_invariants();
}

#[test]
fn a_running_task_takes_at_most_pipeline_depth_successors() {
    let config = HeadConfig { pipeline_depth: 2, ..HeadConfig::default() };
    let mut c = Cluster::new(config, NodeConfig::default(), us(50));
    c.add_host(ResourceSet::cpus(1), Labels::new());
    c.run_for(Duration::from_millis(10));
    let job = c.start_job("short");
    warm_up(&mut c, job, "ms=1");
    let ids = submit(&mut c, job, 5, "ms=1");
    c.run_for(us(300));
    use TaskStateKind::{Next, Queued, Running};
    assert_eq!(states(&c, &ids), vec![Running, Next, Next, Queued, Queued]);
    c.run_for(Duration::from_millis(100));
    assert!(states(&c, &ids).iter().all(|s| *s == TaskStateKind::Finished), "{:?}", states(&c, &ids));
}

#[test]
fn long_tasks_wait_at_the_head_for_whichever_cpu_frees_first() {
    let mut c = cluster(1, 2);
    let job = c.start_job("long");
    warm_up(&mut c, job, "ms=50");
    let ids = submit(&mut c, job, 4, "ms=50");
    c.run_for(Duration::from_millis(5));
    use TaskStateKind::{Queued, Running};
    assert_eq!(states(&c, &ids), vec![Running, Running, Queued, Queued]);
    assert!(orders(&c, ids[2]).is_empty());
}

#[test]
fn the_first_tasks_of_a_class_are_not_pipelined_until_one_has_finished() {
    let mut c = cluster(1, 1);
    let job = c.start_job("unknown");
    let ids = submit(&mut c, job, 2, "ms=2");
    c.run_for(us(500));
    assert_eq!(states(&c, &ids), vec![TaskStateKind::Running, TaskStateKind::Queued]);
}

#[test]
fn a_task_of_another_job_does_not_follow_and_waits_for_a_free_cpu() {
    let mut c = cluster(1, 1);
    let (a, b) = (c.start_job("a"), c.start_job("b"));
    warm_up(&mut c, a, "ms=2");
    warm_up(&mut c, b, "ms=2");
    let first = submit(&mut c, a, 1, "ms=2");
    c.run_for(us(200));
    let other = submit(&mut c, b, 1, "ms=2");
    c.run_for(us(500));
    assert_eq!(states(&c, &first), vec![TaskStateKind::Running]);
    assert_eq!(states(&c, &other), vec![TaskStateKind::Queued]);
}

/// One CPU, three 5 ms tasks (running, handed over next, queued); the second is cancelled.
fn one_running_one_next_one_queued_then_cancel_the_next(force: bool) -> (Cluster, Vec<TaskId>) {
    let mut c = cluster(1, 1);
    let job = c.start_job("cancel");
    warm_up(&mut c, job, "ms=5");
    let ids = submit(&mut c, job, 3, "ms=5");
    c.run_for(us(1_500));
    use TaskStateKind::{Next, Queued, Running};
    assert_eq!(states(&c, &ids), vec![Running, Next, Queued]);
    c.driver(job, DriverToHead::Cancel { task: ids[1], recursive: false, force }).unwrap();
    (c, ids)
}

#[test]
fn a_successor_cancelled_by_force_frees_its_place_for_the_next_queued_task() {
    let (mut c, ids) = one_running_one_next_one_queued_then_cancel_the_next(true);
    use TaskStateKind::{Cancelled, Finished, Next, Running};
    c.run_for(us(500));
    assert_eq!(states(&c, &ids), vec![Running, Cancelled, Next], "the third follows the first instead");
    assert_eq!(orders(&c, ids[2]), vec![vec![(ids[0], 0)]]);
    c.check_invariants();
    c.run_for(Duration::from_millis(50));
    assert_eq!(states(&c, &ids), vec![Finished, Cancelled, Finished]);
    c.check_invariants();
}

#[test]
fn a_successor_cancelled_without_force_is_skipped_when_its_turn_comes() {
    let (mut c, ids) = one_running_one_next_one_queued_then_cancel_the_next(false);
    use TaskStateKind::{Cancelled, Finished, Next, Queued, Running};
    c.run_for(us(500));
    assert_eq!(states(&c, &ids), vec![Running, Next, Queued], "it waits for its turn on the worker");
    c.run_for(Duration::from_millis(50));
    assert_eq!(states(&c, &ids), vec![Finished, Cancelled, Finished]);
    assert_eq!(orders(&c, ids[2]), vec![vec![]], "nothing follows a task being cancelled");
    c.check_invariants();
}

#[test]
fn a_successor_on_a_lost_node_runs_again_elsewhere() {
    let mut c = cluster(2, 1);
    let job = c.start_job("lost");
    warm_up(&mut c, job, "ms=2");
    // Two running tasks keep both CPUs busy; the other two are handed over behind them.
    let ids = submit(&mut c, job, 4, "ms=2");
    c.run_for(us(1_500));
    let next: Vec<TaskId> =
        ids.iter().copied().filter(|t| c.head.task_state(*t) == Some(TaskStateKind::Next)).collect();
    assert_eq!(next.len(), 2, "{:?}", states(&c, &ids));
    let host = c.host_of(c.head.task_node(next[0]).unwrap()).unwrap();
    c.crash_host(host);
    c.run_for(Duration::from_secs(10));
    c.check_invariants();
    assert!(ids.iter().all(|t| c.head.task_state(*t) == Some(TaskStateKind::Finished)), "{:?}", states(&c, &ids));
}

#[test]
fn a_task_that_blocks_lends_its_cpu_to_its_successor_which_starts_at_once_elsewhere() {
    let mut c = cluster(1, 1);
    let job = c.start_job("blocks");
    warm_up(&mut c, job, "ms=5");
    let ids = submit(&mut c, job, 2, "ms=5");
    c.run_for(us(1_500));
    use TaskStateKind::{Finished, Next, Running};
    assert_eq!(states(&c, &ids), vec![Running, Next]);
    // The first waits for objects (it might be waiting for its successor's value).
    let node = c.head.task_node(ids[0]).unwrap();
    let msg = proto::NodeToHead::TaskBlocked { task: ids[0], attempt: 0 };
    c.head_input(head::HeadInput::FromNode { node, msg }).unwrap();
    assert_eq!(states(&c, &ids), vec![Running, Running], "the successor runs in the CPU lent");
    let start_now = c.head_log.iter().any(
        |(_, o)| matches!(o, HeadOutput::ToNode { msg: HeadToNode::StartNow { task, .. }, .. } if *task == ids[1]),
    );
    assert!(start_now, "the node is told to start it now");
    c.check_invariants();
    // The node takes it back from the first task's worker and runs it in a worker of its own:
    // it finishes well before the first one could have ended and then run it.
    c.run_for(us(6_000));
    assert_eq!(c.head.task_state(ids[1]), Some(Finished));
    c.run_for(Duration::from_millis(50));
    assert_eq!(states(&c, &ids), vec![Finished, Finished]);
    c.check_invariants();
}

#[test]
fn nothing_is_pipelined_while_a_task_of_another_class_waits_for_the_cpus() {
    let mut c = cluster(1, 2);
    let job = c.start_job("mixed");
    warm_up(&mut c, job, "ms=2");
    let first = submit(&mut c, job, 2, "ms=2");
    c.run_for(us(300));
    let mut wide = task(job, 100, "ms=2");
    wide.resources = ResourceSet::cpus(2);
    let wide_id = wide.task;
    c.submit(job, wide).unwrap();
    let more: Vec<TaskId> = (0..2)
        .map(|i| task(job, 200 + i, "ms=2"))
        .map(|s| {
            let id = s.task;
            c.submit(job, s).unwrap();
            id
        })
        .collect();
    c.run_for(us(500));
    use TaskStateKind::{Finished, Queued, Running};
    assert_eq!(states(&c, &first), vec![Running, Running]);
    assert_eq!(c.head.task_state(wide_id), Some(Queued));
    assert_eq!(states(&c, &more), vec![Queued, Queued], "they would hold the CPUs the wide task waits for");
    c.run_for(Duration::from_millis(50));
    assert_eq!(c.head.task_state(wide_id), Some(Finished));
    assert_eq!(states(&c, &more), vec![Finished, Finished]);
}

#[test]
fn when_a_task_with_a_chain_of_successors_blocks_the_first_starts_at_once_and_the_others_follow_it() {
    let mut c = cluster(1, 1);
    let job = c.start_job("chain");
    warm_up(&mut c, job, "ms=2");
    let ids = submit(&mut c, job, 4, "ms=2");
    c.run_for(us(1_500));
    use TaskStateKind::{Finished, Next, Running};
    assert_eq!(states(&c, &ids), vec![Running, Next, Next, Next]);
    assert_eq!(orders(&c, ids[3]), vec![vec![(ids[0], 0), (ids[1], 0), (ids[2], 0)]]);
    let node = c.head.task_node(ids[0]).unwrap();
    let msg = proto::NodeToHead::TaskBlocked { task: ids[0], attempt: 0 };
    c.head_input(head::HeadInput::FromNode { node, msg }).unwrap();
    assert_eq!(states(&c, &ids), vec![Running, Running, Next, Next], "the first successor runs in the CPU lent");
    c.check_invariants();
    // The node takes the chain back from the blocked task's worker; it runs on another worker,
    // one after another, well before the blocked task could have ended.
    c.run_for(us(9_000));
    assert_eq!(states(&c, &ids[1..]), vec![Finished, Finished, Finished]);
    c.run_for(Duration::from_millis(50));
    assert_eq!(states(&c, &ids), vec![Finished; 4]);
    c.check_invariants();
}

#[test]
fn when_a_successor_started_by_start_now_ends_without_running_the_next_is_started_the_same_way() {
    let mut c = cluster(1, 1);
    let job = c.start_job("unrun");
    warm_up(&mut c, job, "ms=2");
    let ids = submit(&mut c, job, 3, "ms=2");
    c.run_for(us(1_500));
    use TaskStateKind::{Next, Running};
    assert_eq!(states(&c, &ids), vec![Running, Next, Next]);
    let node = c.head.task_node(ids[0]).unwrap();
    let says = |c: &mut Cluster, msg| c.head_input(head::HeadInput::FromNode { node, msg }).unwrap();
    says(&mut c, proto::NodeToHead::TaskBlocked { task: ids[0], attempt: 0 });
    // Before its StartNow reaches the node, the node ends it without running it (its cancel
    // crossed, say): the node may still hold the third behind the blocked first.
    let cancelled = proto::TaskOutcome::Failed(errors::TaskFailure::Cancelled);
    says(&mut c, proto::NodeToHead::TaskEnded { task: ids[1], attempt: 0, outcome: cancelled });
    assert_eq!(c.head.task_state(ids[2]), Some(Running), "it runs in the CPU lent");
    let start_now = c.head_log.iter().any(
        |(_, o)| matches!(o, HeadOutput::ToNode { msg: HeadToNode::StartNow { task, .. }, .. } if *task == ids[2]),
    );
    assert!(start_now, "the node is told to start it now, not to keep it behind the blocked task");
    c.check_invariants();
}

#[test]
fn what_was_on_its_way_to_a_crashed_host_is_not_delivered_to_the_node_restarted_there() {
    let mut c = cluster(1, 1);
    let job = c.start_job("restart");
    warm_up(&mut c, job, "ms=2");
    let first = task(job, 10, "ms=5");
    c.submit(job, first).unwrap();
    c.run_for(Duration::from_millis(1));
    // The worker's end of the task is still to come when the host dies and comes straight back.
    c.crash_host(0);
    c.restart_host(0);
    c.run_for(Duration::from_millis(1));
    let (long, short) = (task(job, 11, "ms=8"), task(job, 12, "ms=1"));
    let ids = [long.task, short.task];
    c.submit(job, long).unwrap();
    c.submit(job, short).unwrap();
    c.run_for(Duration::from_secs(30));
    assert_eq!(states(&c, &ids), vec![TaskStateKind::Finished, TaskStateKind::Finished]);
    c.check_invariants();
}

#[test]
fn successors_stopped_by_a_forced_cancel_of_the_task_before_them_run_again_without_spending_retries() {
    let mut c = cluster(1, 1);
    let job = c.start_job("force");
    warm_up(&mut c, job, "ms=5");
    let specs: Vec<_> = (0..3)
        .map(|i| {
            let mut spec = task(job, i, "ms=5");
            spec.max_retries = 0;
            spec
        })
        .collect();
    let ids: Vec<TaskId> = specs.iter().map(|s| s.task).collect();
    for spec in specs {
        c.submit(job, spec).unwrap();
    }
    c.run_for(us(1_500));
    use TaskStateKind::{Cancelled, Finished, Next, Running};
    assert_eq!(states(&c, &ids[..2]), vec![Running, Next]);
    c.driver(job, DriverToHead::Cancel { task: ids[0], recursive: false, force: true }).unwrap();
    c.run_for(Duration::from_millis(100));
    assert_eq!(states(&c, &ids), vec![Cancelled, Finished, Finished], "no retries, yet they ran again");
    c.check_invariants();
}
