//! Replays of small hand-made workloads, with every figure worked out here by hand; determinism;
//! and the real samples.

use keel_kernel::ResourceSet;
use keel_traces::replay::{replay, Options, Policy};
use keel_traces::{Job, NodeShape, Recorded, Task};

fn node(cpus: u64) -> NodeShape {
    NodeShape { name: format!("n{cpus}"), resources: ResourceSet::cpus(cpus), gpu_model: None }
}

fn task(cpus: u64, ms: u64, deps: Vec<usize>, instances: u32) -> Task {
    Task {
        name: "t".into(),
        instances,
        resources: ResourceSet::cpus(cpus),
        gpu_models: Vec::new(),
        duration_ms: ms,
        deps,
        output_bytes: 0,
        submit_offset_ms: 0,
    }
}

fn job(id: &str, submit_ms: u64, tasks: Vec<Task>, gang: bool) -> Job {
    Job { id: id.into(), submit_ms, tasks, gang, after: None, recorded: Recorded::default() }
}

fn options(nodes: Vec<NodeShape>) -> Options {
    Options { nodes, policy: Policy::Hybrid, failures: Vec::new(), seed: 1, progress: None, autoscale: None }
}

/// Within the simulated network's few milliseconds of latency.
fn near(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 0.1
}

#[test]
fn a_job_that_must_wait_for_cpus_has_the_wait_completion_slowdown_and_utilisation_worked_out_by_hand() {
    // One node of 2 CPUs. A (2 CPUs, 10 s) at 0; B (1 CPU, 5 s) at 1 s waits for A to end.
    let jobs = vec![
        job("A", 0, vec![task(2, 10_000, vec![], 1)], false),
        job("B", 1_000, vec![task(1, 5_000, vec![], 1)], false),
    ];
    let r = replay(&jobs, &options(vec![node(2)])).unwrap();
    let (a, b) = (&r.jobs[0], &r.jobs[1]);
    assert!(near(a.wait_ms().unwrap() as f64 / 1e3, 0.0), "{a:?}");
    assert!(near(a.completion_ms().unwrap() as f64 / 1e3, 10.0), "{a:?}");
    assert!(near(b.wait_ms().unwrap() as f64 / 1e3, 9.0), "B starts when A ends: {b:?}");
    assert!(near(b.completion_ms().unwrap() as f64 / 1e3, 14.0), "{b:?}");
    // Bounded slowdown: A max(1, 10/10) = 1; B (9 + 5) / max(5, 10) = 1.4.
    assert!(near(b.bounded_slowdown().unwrap(), 1.4), "{b:?}");
    let s = &r.summary;
    assert_eq!((s.jobs, s.completed, s.unfinished), (2, 2, 0));
    assert!(near(s.makespan_s, 15.0), "{s:?}");
    // CPU: (2 x 10 + 1 x 5) CPU-seconds over 2 CPUs x 15 s.
    assert!((s.utilisation["CPU"] - 25.0 / 30.0).abs() < 0.01, "{:?}", s.utilisation);
    assert!(near(s.wait_s.p50, 0.0) && near(s.wait_s.max, 9.0), "{:?}", s.wait_s);
    assert!(near(s.completion_s.mean, 12.0), "{:?}", s.completion_s);
    assert!(near(s.node_hours, 15.0 / 3600.0));
}

#[test]
fn a_gang_holds_all_its_bundles_for_its_duration_and_starts_only_when_all_fit() {
    // Two 1-CPU nodes. G1 needs both for 10 s; G2 (one processor) at 1 s waits for G1's end;
    // the trace's 4-processor gang can never fit and never runs.
    let jobs = vec![
        job("G1", 0, vec![task(1, 10_000, vec![], 2)], true),
        job("G2", 1_000, vec![task(1, 3_000, vec![], 1)], true),
    ];
    let r = replay(&jobs, &options(vec![node(1), node(1)])).unwrap();
    assert!(near(r.jobs[0].completion_ms().unwrap() as f64 / 1e3, 10.0), "{:?}", r.jobs[0]);
    assert!(near(r.jobs[1].wait_ms().unwrap() as f64 / 1e3, 9.0), "{:?}", r.jobs[1]);
    // Both CPUs for 10 s, then one for 3 s, over 2 CPUs x 13 s.
    let u = r.summary.utilisation["CPU"];
    assert!((u - 23.0 / 26.0).abs() < 0.01, "{u}");
}

#[test]
fn a_dag_runs_its_instances_in_parallel_and_its_dependents_after_all_of_them() {
    // Task 0: three 1-CPU instances of 4 s; task 1 waits for all of them, 2 s. Three CPUs.
    let jobs = vec![job("D", 0, vec![task(1, 4_000, vec![], 3), task(1, 2_000, vec![0], 1)], false)];
    let r = replay(&jobs, &options(vec![node(3)])).unwrap();
    assert!(near(r.jobs[0].completion_ms().unwrap() as f64 / 1e3, 6.0), "{:?}", r.jobs[0]);
    let u = r.summary.utilisation["CPU"];
    assert!((u - 14.0 / 18.0).abs() < 0.01, "{u}");
}

#[test]
fn a_failed_node_loses_its_work_which_is_retried_elsewhere() {
    let jobs = vec![job("A", 0, vec![task(1, 20_000, vec![], 1)], false)];
    let mut o = options(vec![node(1), node(1)]);
    o.failures = vec![(0, 5_000), (1, 5_000)];
    // Both nodes die: the job cannot finish.
    let r = replay(&jobs, &o).unwrap();
    assert_eq!(r.summary.unfinished, 1);
    // One node of two dies: whichever ran the task, it finishes, perhaps after a retry.
    let mut o = options(vec![node(1), node(1)]);
    o.failures = vec![(0, 5_000)];
    let r = replay(&jobs, &o).unwrap();
    assert_eq!(r.summary.completed, 1);
    let jct = r.jobs[0].completion_ms().unwrap() as f64 / 1e3;
    assert!(near(jct, 20.0) || jct > 25.0, "either untouched or retried after the failure was noticed: {jct}");
}

#[test]
fn the_same_seed_gives_the_same_summary_and_event_log_hash() {
    let jobs: Vec<Job> = (0..40)
        .map(|i| {
            let gang = i % 5 == 0;
            let cpus = if gang { 1 } else { 1 + i % 3 };
            job(&format!("j{i}"), i * 300, vec![task(cpus, 1_000 + 97 * i, vec![], 1 + (i % 4) as u32)], gang)
        })
        .collect();
    let o = options(vec![node(4), node(4), node(2)]);
    let (a, b) = (replay(&jobs, &o).unwrap(), replay(&jobs, &o).unwrap());
    assert_eq!(a.summary, b.summary);
    assert_eq!(a.jobs, b.jobs);
    assert_eq!(a.summary.completed, 40);
}

#[test]
fn a_report_holds_every_job_of_every_run_and_a_plot_line_per_run() {
    let jobs = vec![
        job("A", 0, vec![task(2, 10_000, vec![], 1)], false),
        job("B", 1_000, vec![task(1, 5_000, vec![], 1)], false),
    ];
    let one = replay(&jobs, &options(vec![node(2)])).unwrap();
    let two = replay(&jobs, &options(vec![node(2), node(2)])).unwrap();
    let dir = std::env::temp_dir().join(format!("keel-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = keel_traces::report::write(&dir, &[("one node", &one), ("two nodes", &two)]).unwrap();
    assert_eq!(files.len(), 5);
    let csv = std::fs::read_to_string(dir.join("jobs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "a header and a row per job per run");
    assert!(csv.lines().nth(2).unwrap().starts_with("one node,B,1.000,"), "{csv}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary[1]["run"], "two nodes");
    assert_eq!(summary[1]["summary"]["completed"], 2);
    for plot in ["utilisation.svg", "queue.svg", "jct_cdf.svg"] {
        let svg = std::fs::read_to_string(dir.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2, "{plot}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_gang_larger_than_the_cluster_is_flagged_and_fails_instead_of_holding_up_the_replay() {
    // Two 2-CPU nodes: a 5-processor gang can never run; a 4-processor one can.
    let jobs = vec![
        job("huge", 0, vec![task(1, 10_000, vec![], 5)], true),
        job("fits", 1_000, vec![task(1, 10_000, vec![], 4)], true),
    ];
    let r = replay(&jobs, &options(vec![node(2), node(2)])).unwrap();
    assert!(r.jobs[0].infeasible && r.jobs[0].start_ms.is_none() && r.jobs[0].end_ms.is_none(), "{:?}", r.jobs[0]);
    assert!(!r.jobs[1].infeasible, "{:?}", r.jobs[1]);
    assert!(near(r.jobs[1].wait_ms().unwrap() as f64 / 1e3, 0.0), "nothing was held for the huge gang");
    let s = &r.summary;
    assert_eq!((s.completed, s.unfinished, s.never_started, s.infeasible), (1, 1, 1, 1), "{s:?}");
    // The scheduler gives up on it (after its grace period) and the replay ends, rather than
    // waiting for it until the liveness bound.
    assert_eq!(s.failure_reasons.get("PlacementGroupInfeasible"), Some(&1), "{s:?}");
    assert!(near(s.makespan_s, 11.0), "{s:?}");
    assert!(s.simulated_s < 100.0, "{s:?}");
}

#[test]
fn a_gang_that_follows_another_job_reserves_nothing_until_the_other_ends_and_its_think_time_passes() {
    // Four 1-CPU nodes. A: a 4-processor gang, 100 s, at 0. B follows A with 10 s of think time
    // (submitted at 0 in the trace). C: a 4-processor gang at 1 s. When A ends at 100 s, B is not
    // submitted yet, so C takes the cluster (100-200 s); B is submitted at 110 s and runs 200-300 s.
    let mut b = job("B", 0, vec![task(1, 100_000, vec![], 4)], true);
    b.after = Some(("A".into(), 10_000));
    let jobs = vec![
        job("A", 0, vec![task(1, 100_000, vec![], 4)], true),
        b,
        job("C", 1_000, vec![task(1, 100_000, vec![], 4)], true),
    ];
    let r = replay(&jobs, &options(vec![node(1); 4])).unwrap();
    let secs = |v: Option<u64>| v.unwrap() as f64 / 1e3;
    let (b, c) = (&r.jobs[1], &r.jobs[2]);
    assert!(near(secs(c.start_ms), 100.0), "C starts when A ends: {c:?}");
    assert!(near(b.submit_ms as f64 / 1e3, 110.0), "B is submitted after A's end and the think time: {b:?}");
    assert!(near(secs(b.start_ms), 200.0), "{b:?}");
    assert!(near(secs(b.wait_ms()), 90.0), "B's wait counts from its submission: {b:?}");
    assert_eq!(r.summary.completed, 3);
}

#[test]
fn a_job_that_follows_a_dag_waits_for_every_instance_of_every_final_task() {
    // Job A: two final tasks, one of 2 instances of 5 s and one of 1 instance of 1 s (no task waits
    // for them). Job B follows A with no think time. Three CPUs: B starts at 5 s, not at 1 s.
    let mut b = job("B", 0, vec![task(1, 1_000, vec![], 1)], false);
    b.after = Some(("A".into(), 0));
    let jobs = vec![job("A", 0, vec![task(1, 5_000, vec![], 2), task(1, 1_000, vec![], 1)], false), b];
    let r = replay(&jobs, &options(vec![node(3)])).unwrap();
    let b = &r.jobs[1];
    assert!(near(b.start_ms.unwrap() as f64 / 1e3, 5.0), "{b:?}");
}

#[test]
fn jobs_that_never_ran_in_the_trace_are_left_out_and_counted() {
    let mut withdrawn = job("W", 0, vec![task(2, 100_000, vec![], 1)], false);
    withdrawn.recorded.never_ran = true;
    let jobs = vec![withdrawn, job("A", 1_000, vec![task(2, 10_000, vec![], 1)], false)];
    let r = replay(&jobs, &options(vec![node(2)])).unwrap();
    assert_eq!(r.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["A"]);
    assert_eq!((r.summary.jobs, r.summary.not_replayed, r.summary.completed), (1, 1, 1));
    assert!(near(r.jobs[0].wait_ms().unwrap() as f64 / 1e3, 0.0), "A never waits for the withdrawn job");
}

#[test]
fn tasks_submitted_later_in_their_job_keep_their_time_and_hold_back_no_other_job() {
    // A's second task is submitted 50 s after A (a recording keeps such times); B is submitted
    // at 10 s. Plenty of CPUs: B starts at 10 s, not after A's late task is submitted.
    let mut late = task(1, 5_000, vec![0], 1);
    late.submit_offset_ms = 50_000;
    let jobs = vec![
        job("A", 0, vec![task(1, 1_000, vec![], 1), late], false),
        job("B", 10_000, vec![task(1, 1_000, vec![], 1)], false),
    ];
    let r = replay(&jobs, &options(vec![node(4)])).unwrap();
    let (a, b) = (&r.jobs[0], &r.jobs[1]);
    assert!(near(b.start_ms.unwrap() as f64 / 1e3, 10.0), "{b:?}");
    assert!(near(a.end_ms.unwrap() as f64 / 1e3, 55.0), "A's late task runs 50-55 s: {a:?}");
}

#[test]
fn gpu_fragmentation_is_the_idle_share_of_partly_used_gpus_worked_out_by_hand() {
    use keel_kernel::Amount;
    // One node, one GPU. A takes half of it for 10 s; B wants it whole for 5 s, so waits for A.
    // 0-10 s: half a GPU idle on a partly used GPU (fragmented); 10-15 s: none idle.
    let gpu = |share: f64, ms: u64| Task {
        resources: ResourceSet::cpus(1).with_gpu(Amount::from_f64(share).unwrap()),
        ..task(1, ms, vec![], 1)
    };
    let jobs = vec![job("A", 0, vec![gpu(0.5, 10_000)], false), job("B", 0, vec![gpu(1.0, 5_000)], false)];
    let gpu_node =
        NodeShape { name: "g".into(), resources: ResourceSet::cpus(2).with_gpu(Amount::units(1)), gpu_model: None };
    let r = replay(&jobs, &options(vec![gpu_node])).unwrap();
    let f = r.summary.gpu_fragmentation.clone().expect("the cluster has a GPU");
    assert!((f.fragmented_share - 5.0 / 15.0).abs() < 0.01, "{f:?}");
    assert!((f.share_of_idle - 1.0).abs() < 0.01, "all the idle GPU time was fragmented: {f:?}");
    assert!((f.peak_gpus - 0.5).abs() < 1e-9, "{f:?}");
    let cpu_jobs = vec![job("C", 0, vec![task(1, 1_000, vec![], 1)], false)];
    let cpu_only = replay(&cpu_jobs, &options(vec![node(2)])).unwrap();
    assert_eq!(cpu_only.summary.gpu_fragmentation, None);
}

#[test]
fn progress_reports_count_jobs_done_and_end_with_every_job() {
    use std::sync::{Arc, Mutex};
    // A DAG job, a gang and a plain job, then one that can never run (it fails, so it is done too).
    let jobs = vec![
        job("dag", 0, vec![task(1, 2_000, vec![], 2), task(1, 1_000, vec![0], 1)], false),
        job("gang", 500, vec![task(1, 1_000, vec![], 2)], true),
        job("plain", 1_000, vec![task(1, 1_000, vec![], 1)], false),
        job("huge", 1_500, vec![task(9, 1_000, vec![], 1)], false),
    ];
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let sink = seen.clone();
    let mut o = options(vec![node(2), node(2)]);
    o.progress = Some(keel_traces::replay::ReplayProgress(Arc::new(move |_, _, done| sink.lock().unwrap().push(done))));
    let r = replay(&jobs, &o).unwrap();
    assert_eq!(r.summary.completed, 3);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.last(), Some(&4), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

/// An autoscaler of four-CPU nodes that boot in exactly 10 s and stop after 60 s idle.
fn autoscaler(max_workers: u32) -> keel_sim::autoscale::AutoscaleSpec {
    let text = format!(
        "[autoscaler]\nperiod_s = 1\nidle_timeout_s = 60\n\n[[node_type]]\nname = \"cpu4\"\ncpus = 4\nmax_workers = {max_workers}\n\
         launch_min_s = 10\nlaunch_mean_s = 10\nlaunch_max_s = 10\ncost_per_hour = 3.6\n"
    );
    keel_sim::autoscale::AutoscaleSpec::parse(std::path::Path::new("cluster.toml"), &text).unwrap()
}

#[test]
fn an_autoscaled_replay_launches_for_bursts_bills_node_hours_and_shrinks_to_nothing() {
    // Two bursts an hour apart, of 8 one-CPU tasks of 100 s each: two nodes per burst.
    let burst = |id: &str, at: u64| job(id, at, vec![task(1, 100_000, vec![], 8)], false);
    let jobs = vec![burst("A", 0), burst("B", 3_600_000)];
    let options = Options { autoscale: Some(autoscaler(4)), ..options(Vec::new()) };
    let r = replay(&jobs, &options).unwrap();
    let s = &r.summary;
    assert_eq!((s.completed, s.unfinished), (2, 0));
    let a = s.autoscale.as_ref().expect("an autoscaler report");
    // The nodes of the first burst are stopped after their idle minute, long before the second.
    assert_eq!((a.launched, a.terminated, a.end_nodes, a.peak_nodes), (4, 4, 0, 2));
    // Each node: launched, 10 s to boot, about 100 s of work (the first decision comes within a
    // second), 60 s idle, then stopped at the next decision: about 171 s, billed at 3.6 an hour.
    let hours = a.node_hours_by_type["cpu4"];
    assert!((hours - 4.0 * 171.0 / 3600.0).abs() < 4.0 * 3.0 / 3600.0, "{hours}");
    assert!((a.cost - hours * 3.6).abs() < 1e-9);
    assert!((s.node_hours - hours).abs() < 1e-9, "no static nodes: only the autoscaler's hours");
    // Tasks wait for their node to boot: about 10 s, plus up to a decision period.
    assert!(s.task_pending_s.p50 >= 10.0 && s.task_pending_s.max < 12.5, "{:?}", s.task_pending_s);
    // The same settings give the same run.
    assert_eq!(replay(&jobs, &options).unwrap().summary.hash, s.hash);
}

#[test]
fn work_no_autoscaled_type_can_hold_is_reported_infeasible_and_the_rest_runs() {
    let jobs = vec![
        job("small", 0, vec![task(2, 1_000, vec![], 1)], false),
        job("huge", 0, vec![task(16, 1_000, vec![], 1)], false),
    ];
    let options = Options { autoscale: Some(autoscaler(2)), ..options(Vec::new()) };
    let r = replay(&jobs, &options).unwrap();
    assert!(!r.jobs[0].infeasible && r.jobs[0].end_ms.is_some(), "{:?}", r.jobs[0]);
    assert!(r.jobs[1].infeasible && r.jobs[1].end_ms.is_none(), "{:?}", r.jobs[1]);
    assert_eq!(r.summary.autoscale.as_ref().unwrap().launched, 1);
}

#[test]
fn hundreds_of_tasks_that_take_no_time_all_run_though_workers_hold_chains_of_them() {
    // Such tasks are handed to busy workers in chains; a worker ends several in one instant, and
    // its reports must reach the node in the order it sent them.
    let mut tasks: Vec<Task> = (0..300).map(|_| task(1, 0, vec![], 1)).collect();
    tasks.push(task(1, 100, (0..300).collect(), 1));
    let jobs = vec![job("zero", 0, tasks, false)];
    let r = replay(&jobs, &options(vec![node(2)])).unwrap();
    let s = &r.summary;
    assert_eq!((s.jobs, s.completed, s.unfinished), (1, 1, 0), "{s:?}");
}
