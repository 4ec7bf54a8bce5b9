//! Each importer on small files written for these tests (broken ones included), and on the real
//! samples in the shared traces folder (skipped, saying why, when the folder is absent; a
//! failure under CI).

use keel_kernel::{Amount, ResourceSet};
use keel_traces::alibaba::{BatchTaskReader, MEMORY_PCT};
use keel_traces::openb::{read_nodes, PodReader};
use keel_traces::philly::{cluster, PhillyReader, Throughputs};
use keel_traces::swf::SwfReader;
use keel_traces::{open, shared_traces_dir, Job, Status, TraceError};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join(name)
}

fn swf(name: &str) -> (keel_traces::swf::Header, Vec<Result<Job, TraceError>>) {
    let path = data(name);
    let reader = SwfReader::new(open(&path).unwrap(), name).unwrap();
    let header = reader.header().clone();
    (header, reader.collect())
}

fn batch(name: &str) -> Vec<Result<Job, TraceError>> {
    BatchTaskReader::new(std::fs::File::open(data(name)).unwrap(), name).collect()
}

/// A real sample, or `None` (skipping, with the reason) when the shared folder is absent.
fn shared(rel: &str) -> Option<PathBuf> {
    match shared_traces_dir() {
        Some(dir) => Some(dir.join(rel)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "the shared traces folder is missing (set KEEL_TRACES_DIR or put ../shared/traces beside the project)"
            )
        }
        None => {
            eprintln!("skipping: no shared traces folder (KEEL_TRACES_DIR or ../shared/traces) for {rel}");
            None
        }
    }
}

#[test]
fn swf_jobs_are_gangs_with_their_header_cluster_waits_statuses_and_dependencies() {
    let (header, jobs) = swf("small.swf");
    assert_eq!((header.max_nodes, header.max_procs), (Some(4), Some(8)));
    let nodes = header.cluster().unwrap();
    assert_eq!(nodes.len(), 4);
    assert!(nodes.iter().all(|n| n.resources == ResourceSet::cpus(2)));
    let jobs: Vec<Job> = jobs.into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(jobs.len(), 3);
    let j1 = &jobs[0];
    assert_eq!((j1.id.as_str(), j1.submit_ms, j1.gang), ("1", 0, true));
    assert_eq!((j1.tasks[0].instances, j1.tasks[0].duration_ms), (4, 100_000));
    assert_eq!(j1.tasks[0].resources, ResourceSet::cpus(1));
    assert_eq!((j1.recorded.status, j1.recorded.wait_ms), (Status::Completed, Some(10_000)));
    // Allocated processors unknown: the requested count; no wait recorded.
    let j2 = &jobs[1];
    assert_eq!((j2.tasks[0].instances, j2.recorded.status, j2.recorded.wait_ms), (2, Status::Failed, None));
    // Cancelled, runtime unknown (0), waits 20 s after job 1 ends.
    let j3 = &jobs[2];
    assert_eq!((j3.tasks[0].instances, j3.tasks[0].duration_ms), (8, 0));
    assert_eq!((j3.recorded.status, j3.after.clone()), (Status::Cancelled, Some(("1".into(), 20_000))));
}

#[test]
fn swf_bad_input_is_an_error_naming_the_line_and_field_and_the_jobs_before_it_are_kept() {
    let (_, jobs) = swf("bad_field.swf");
    assert!(jobs[0].is_ok(), "the job before the bad line is read");
    let err = jobs[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("bad_field.swf:3") && err.contains("field 4 (run time)"), "{err}");
    let (_, jobs) = swf("truncated.swf");
    assert_eq!(jobs.len(), 2);
    assert!(jobs[0].is_ok());
    let err = jobs[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("truncated.swf:3") && err.contains("ends in the middle of a job"), "{err}");
    let (header, jobs) = swf("empty.swf");
    assert!(jobs.is_empty());
    assert_eq!(header.cluster(), None, "no header, no cluster");
    // Ids are kept as written, however large.
    let (_, jobs) = swf("huge_ids.swf");
    assert_eq!(jobs[0].as_ref().unwrap().id, "18446744073709551615");
}

#[test]
fn alibaba_batch_tasks_become_dags_from_their_names_with_or_without_a_header() {
    for file in ["dag.csv", "dag_with_header.csv"] {
        let jobs: Vec<Job> = batch(file).into_iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), vec!["j_1", "j_2", "j_3"], "{file}");
        let j1 = &jobs[0];
        assert_eq!(j1.tasks.len(), 3);
        assert_eq!(j1.tasks[2].name, "R3_1_2");
        assert_eq!(j1.tasks[2].deps, vec![0, 1], "task 3 waits for tasks 1 and 2");
        assert_eq!(j1.tasks[0].instances, 2);
        assert_eq!(j1.tasks[0].duration_ms, 10_000);
        assert_eq!(j1.submit_ms, 100_000, "the earliest start");
        let cpu_two = ResourceSet { cpu: Amount::from_f64(2.0).unwrap(), ..ResourceSet::default() };
        assert_eq!(j1.tasks[2].resources, cpu_two.with_custom(MEMORY_PCT, Amount::from_f64(1.0).unwrap()));
        assert_eq!(j1.recorded.status, Status::Completed);
        // task_<id> is independent; a blank plan_mem is no memory; a failed task fails the job.
        let j2 = &jobs[1];
        assert_eq!((j2.tasks[0].deps.len(), j2.tasks[0].instances), (0, 4));
        assert_eq!(j2.tasks[0].resources.custom.get(MEMORY_PCT), None);
        assert_eq!(j2.recorded.status, Status::Failed);
    }
}

#[test]
fn alibaba_cycles_dangling_references_bad_names_and_split_jobs_are_typed_errors_naming_the_line() {
    let err = batch("cycle.csv").remove(0).unwrap_err();
    assert!(
        matches!(&err, TraceError::Cycle { job, cycle, line: 4, .. } if job == "j_1" && cycle == "M1_3, M2_1, M3_2"),
        "{err}"
    );
    let err = batch("dangling.csv").remove(0).unwrap_err();
    assert!(
        matches!(&err, TraceError::Dangling { task, missing, line: 2, .. } if task == "R2_1_7" && missing == "7"),
        "{err}"
    );
    let err = batch("bad_name.csv").remove(0).unwrap_err().to_string();
    assert!(err.contains("bad_name.csv:2") && err.contains("MergeTask"), "{err}");
    // j_1 comes back after j_2: j_1 and j_2 as read are handed out, then the error.
    let jobs = batch("split_job.csv");
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0].as_ref().unwrap().id, "j_1");
    assert_eq!(jobs[1].as_ref().unwrap().id, "j_2");
    let err = jobs[2].as_ref().unwrap_err().to_string();
    assert!(err.contains("split_job.csv:3") && err.contains("not together"), "{err}");
}

#[test]
fn alibaba_empty_name_parts_are_no_dependency_and_bad_jobs_can_be_skipped_and_counted() {
    // Stopping at the first bad job: j_1 (with `M1_` and `R2__1`) is read, then j_2's name stops it.
    let strict = batch("messy.csv");
    let j1 = strict[0].as_ref().unwrap();
    assert_eq!((j1.id.as_str(), j1.tasks[1].deps.clone()), ("j_1", vec![0]), "R2__1 waits for task 1 only");
    assert!(j1.tasks[0].deps.is_empty(), "M1_ waits for nothing");
    assert!(strict[1].as_ref().unwrap_err().to_string().contains("J10_7_9_Stg4"));
    // Skipping: j_2 (bad name), j_4's short row and j_3's second, split-off row are left out.
    let mut reader =
        BatchTaskReader::new(std::fs::File::open(data("messy.csv")).unwrap(), "messy.csv").skip_bad_input();
    let jobs: Vec<Job> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["j_1", "j_3", "j_5"]);
    assert_eq!(jobs[1].tasks.len(), 1, "j_3's row after j_5 began is left out");
    assert_eq!(jobs[2].tasks[1].instances, 2);
    let (count, first) = reader.skipped();
    assert_eq!(count, 3);
    let shown: Vec<String> = first.iter().map(ToString::to_string).collect();
    assert!(shown[0].contains("messy.csv:4") && shown[0].contains("J10_7_9_Stg4"), "{shown:?}");
    assert!(shown[1].contains("messy.csv:6") && shown[1].contains("7 columns"), "{shown:?}");
    assert!(shown[2].contains("messy.csv:8") && shown[2].contains("not together"), "{shown:?}");
}

#[test]
fn openb_pods_share_gpus_by_fraction_and_name_the_models_they_accept() {
    let nodes = read_nodes(std::fs::File::open(data("nodes.csv")).unwrap(), "nodes.csv").unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[1].gpu_model.as_deref(), Some("V100M32"));
    assert_eq!(nodes[1].resources.gpu, Amount::from_f64(8.0).unwrap());
    assert_eq!(nodes[1].resources.cpu, Amount::from_f64(96.0).unwrap());
    let jobs: Vec<Job> = PodReader::new(std::fs::File::open(data("pods.csv")).unwrap(), "pods.csv")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(jobs.len(), 4);
    assert!(jobs[3].recorded.never_ran && !jobs[2].recorded.never_ran, "pod-d was deleted while pending");
    let a = &jobs[0].tasks[0];
    assert_eq!(a.resources.gpu, Amount::from_f64(0.5).unwrap(), "half of one GPU");
    assert_eq!(a.resources.memory, ResourceSet::default().with_memory_bytes(8192 << 20).memory);
    assert_eq!(a.gpu_models, vec!["V100M16", "V100M32"]);
    assert_eq!((a.duration_ms, jobs[0].submit_ms, jobs[0].recorded.wait_ms), (90_000, 10_000, Some(10_000)));
    let b = &jobs[1];
    assert_eq!(b.tasks[0].resources.gpu, Amount::from_f64(2.0).unwrap(), "two whole GPUs");
    assert_eq!((b.tasks[0].duration_ms, b.recorded.status, b.recorded.wait_ms), (60_000, Status::Failed, None));
    assert_eq!(jobs[2].tasks[0].resources.gpu, Amount::ZERO);
    let results: Vec<_> =
        PodReader::new(std::fs::File::open(data("bad_pods.csv")).unwrap(), "bad_pods.csv").unwrap().collect();
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("bad_pods.csv:3") && err.contains("cpu_milli"), "{err}");
}

#[test]
fn philly_jobs_last_their_steps_over_the_measured_throughput_of_the_gpu_type() {
    let json = std::fs::read_to_string(data("throughputs.json")).unwrap();
    let v100 = Throughputs::read(&json, "v100", "throughputs.json").unwrap();
    let jobs: Vec<Job> = PhillyReader::new(open(&data("philly.trace")).unwrap(), "philly.trace", v100.clone())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!((jobs[0].tasks[0].duration_ms, jobs[0].submit_ms), (100_000, 0), "1000 steps at 10 steps/s");
    assert_eq!((jobs[1].tasks[0].duration_ms, jobs[1].submit_ms), (1_500_000, 6_500));
    assert_eq!(jobs[1].tasks[0].resources.gpu, Amount::from_f64(4.0).unwrap());
    assert_eq!(jobs[1].tasks[0].gpu_models, vec!["v100"]);
    let k80 = Throughputs::read(&json, "k80", "throughputs.json").unwrap();
    let slow: Vec<_> = PhillyReader::new(open(&data("philly.trace")).unwrap(), "philly.trace", k80).collect();
    assert_eq!(slow[0].as_ref().unwrap().tasks[0].duration_ms, 1_000_000);
    let err = slow[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("philly.trace:2") && err.contains("no throughput"), "{err}");
    // Measured on one GPU only: four run at the one-GPU rate.
    let one = r#"{"v100": {"('Transformer (batch size 128)', 1)": {"null": 3.0}}}"#;
    let one = Throughputs::read(one, "v100", "one.json").unwrap();
    assert_eq!(one.alone("Transformer (batch size 128)", 4), Some(3.0));
    let err = Throughputs::read(&json, "a100", "throughputs.json").unwrap_err().to_string();
    assert!(err.contains("no GPU type \"a100\""), "{err}");
    let unknown: Vec<_> = PhillyReader::new(open(&data("philly_unknown.trace")).unwrap(), "x", v100).collect();
    assert!(unknown[0].as_ref().unwrap_err().to_string().contains("Mystery"));
    let nodes = cluster("10:0:3", 8).unwrap();
    assert_eq!(nodes.iter().map(|n| n.resources.gpu.as_f64()).collect::<Vec<_>>(), vec![8.0, 2.0, 3.0]);
}

#[test]
fn the_real_samples_import_whole() {
    if let Some(path) = shared("swf/NASA-iPSC-1993-3.1-cln.swf.gz") {
        let reader = SwfReader::new(open(&path).unwrap(), "NASA").unwrap();
        assert_eq!(reader.header().max_procs, Some(128));
        let jobs: Vec<Job> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(jobs.len(), 18_239);
        assert!(jobs.windows(2).all(|w| w[0].submit_ms <= w[1].submit_ms), "in submit order");
    }
    if let Some(path) = shared("swf/HPC2N-2002-first3170.swf") {
        let jobs: Vec<Job> = SwfReader::new(open(&path).unwrap(), "HPC2N").unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(jobs.len(), 3_170);
        assert!(jobs.iter().any(|j| j.recorded.wait_ms.is_some_and(|w| w > 0)), "HPC2N records waits");
    }
    if let Some(path) = shared("alibaba-v2018/batch_task_50_dags.csv") {
        let jobs: Vec<Job> =
            BatchTaskReader::new(std::fs::File::open(&path).unwrap(), "batch_task").collect::<Result<_, _>>().unwrap();
        assert_eq!(jobs.len(), 50);
        assert_eq!(jobs.iter().map(|j| j.tasks.len()).sum::<usize>(), 197);
        assert!(jobs.iter().any(|j| j.tasks.iter().any(|t| !t.deps.is_empty())), "some jobs are DAGs");
    }
    if let Some(path) = shared("alibaba-gpu-v2023/openb_pod_list_default.csv") {
        let jobs: Vec<Job> = PodReader::new(std::fs::File::open(&path).unwrap(), "openb pods")
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(jobs.len(), 8_152);
        assert!(jobs
            .iter()
            .any(|j| j.tasks[0].resources.gpu.as_f64() > 0.0 && j.tasks[0].resources.gpu.as_f64() < 1.0));
        let nodes_path = path.with_file_name("openb_node_list_gpu_node.csv");
        let nodes = read_nodes(std::fs::File::open(&nodes_path).unwrap(), "openb nodes").unwrap();
        assert!(!nodes.is_empty() && nodes.iter().all(|n| n.gpu_model.is_some()));
    }
    if let Some(path) = shared("philly-gavel/seed0_0e4a51.trace") {
        let json = std::fs::read_to_string(path.with_file_name("simulation_throughputs.json")).unwrap();
        let v100 = Throughputs::read(&json, "v100", "throughputs").unwrap();
        let jobs: Vec<Job> = PhillyReader::new(open(&path).unwrap(), "philly", v100).collect::<Result<_, _>>().unwrap();
        assert_eq!(jobs.len(), 1_181);
        let spec = std::fs::read_to_string(path.with_file_name("cluster_specs.json")).unwrap();
        assert!(spec.contains("500:0:0"));
        assert_eq!(cluster("500:0:0", 8).unwrap().iter().map(|n| n.resources.gpu.as_f64()).sum::<f64>(), 500.0);
    }
}
