//! `keel replay` as users run it: a trace file in, figures out (text or JSON); bad input named.

use std::path::Path;
use std::process::Command;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/tests/data").join(name).display().to_string()
}

#[test]
fn replaying_an_swf_file_prints_its_figures_and_json_gives_the_same_summary_twice() {
    let out = Command::new(KEEL).args(["replay", &data("small.swf")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("replayed 3 jobs on 4 nodes"), "{text}");
    assert!(text.contains("queueing delay (s)") && text.contains("recorded wait (s)"), "{text}");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(KEEL).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let a = json(&["replay", &data("small.swf"), "--json", "--seed", "5"]);
    let b = json(&["replay", &data("small.swf"), "--json", "--seed", "5"]);
    assert_eq!(a["summary"], b["summary"], "same input and seed, same figures and hash");
    assert_eq!(a["summary"]["completed"], 3);
    // What-ifs: fewer nodes, another policy; then the two saved results compared.
    let small = json(&["replay", &data("small.swf"), "--json", "--nodes", "2", "--policy", "spread"]);
    assert_eq!(small["nodes"], 2);
    let dir = std::env::temp_dir().join(format!("keel-replay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pa, pb) = (dir.join("a.json"), dir.join("b.json"));
    std::fs::write(&pa, a.to_string()).unwrap();
    std::fs::write(&pb, small.to_string()).unwrap();
    let out = Command::new(KEEL).args(["replay", "--compare"]).arg(&pa).arg(&pb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("4 nodes, hybrid") && text.contains("2 nodes, spread") && text.contains("ratio"), "{text}");
    let completed = text.lines().find(|l| l.starts_with("jobs completed")).unwrap();
    assert!(completed.contains("3.0") && completed.contains("2.0") && completed.contains("0.67"), "{completed}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_trace_or_a_bad_option_is_an_error_naming_the_problem() {
    let out = Command::new(KEEL).args(["replay", &data("bad_field.swf")]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad_field.swf:3") && err.contains("run time"), "{err}");
    let out = Command::new(KEEL).args(["replay", &data("small.swf"), "--fail", "nine@10"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a node index"));
    let out = Command::new(KEEL).args(["replay", &data("nodes.csv"), "--format", "swf"]).output().unwrap();
    assert!(!out.status.success(), "a CSV read as SWF is refused");
}

fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-replay-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn replay_json(args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(KEEL).arg("replay").args(args).arg("--json").output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn a_cluster_file_replaces_the_traces_cluster_and_nodes_takes_its_first_or_repeats_its_mix() {
    let dir = scratch("cluster");
    let spec = dir.join("two.toml");
    std::fs::write(&spec, "[[nodes]]\nname = \"big\"\ncount = 1\ncpus = 4\n\n[[nodes]]\ncount = 1\ncpus = 2\n")
        .unwrap();
    let spec = spec.display().to_string();
    let r = replay_json(&[&data("small.swf"), "--cluster", &spec]).unwrap();
    assert_eq!(r["nodes"], 2);
    // 6 CPUs: the 8-processor gang cannot run; the 4- and 2-processor ones do.
    assert_eq!((r["summary"]["completed"].as_u64(), r["summary"]["infeasible"].as_u64()), (Some(2), Some(1)), "{r}");
    let r = replay_json(&[&data("small.swf"), "--cluster", &spec, "--nodes", "4"]).unwrap();
    assert_eq!((r["nodes"].as_u64(), r["summary"]["completed"].as_u64()), (Some(4), Some(3)), "12 CPUs: {r}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[nodes]]\ncount = 1\ncpus = 4\ncolour = \"red\"\n").unwrap();
    let err = replay_json(&[&data("small.swf"), "--cluster", &bad.display().to_string()]).unwrap_err();
    assert!(err.contains("bad.toml:4") && err.contains("colour"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_autoscaled_replay_reports_its_nodes_and_a_bad_cluster_file_is_named() {
    let dir = scratch("autoscale");
    let spec = dir.join("scale.toml");
    std::fs::write(
        &spec,
        "[autoscaler]\nidle_timeout_s = 30\n\n[[node_type]]\nname = \"cpu4\"\ncpus = 4\nmax_workers = 3\n\
         launch_min_s = 5\nlaunch_mean_s = 10\nlaunch_max_s = 30\ncost_per_hour = 1\n",
    )
    .unwrap();
    let spec = spec.display().to_string();
    let report = dir.join("report");
    let out = Command::new(KEEL)
        .args(["replay", &data("small.swf"), "--autoscale", &spec, "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("on 0 static nodes and an autoscaler (cpu4)"), "{text}");
    assert!(text.contains("task pending (s)") && text.contains("autoscaler: "), "{text}");
    let svg = std::fs::read_to_string(report.join("nodes.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Autoscaled nodes over time"));
    // 12 CPUs at most: the 8-processor gang runs on two nodes at once; everything completes and
    // the cluster is empty at the end.
    let r = replay_json(&[&data("small.swf"), "--autoscale", &spec]).unwrap();
    let a = &r["summary"]["autoscale"];
    assert_eq!(r["summary"]["completed"], 3, "{r}");
    assert!(a["launched"].as_u64().unwrap() >= 2 && a["peak_nodes"].as_u64().unwrap() <= 3, "{a}");
    assert_eq!(a["end_nodes"], 0, "{a}");
    assert!(a["node_hours"].as_f64().unwrap() > 0.0 && a["cost"] == a["node_hours"], "{a}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[node_type]]\nname = \"x\"\ncpus = 2\nmax_workers = 1\nmin_workers = 2\n").unwrap();
    let err = replay_json(&[&data("small.swf"), "--autoscale", &bad.display().to_string()]).unwrap_err();
    assert!(err.contains("bad.toml: line 5: node_type[0].min_workers: 2 is above max_workers (1)"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_header_less_swf_file_needs_nodes_and_compressed_csv_files_are_read() {
    let dir = scratch("formats");
    let text = std::fs::read_to_string(data("small.swf")).unwrap();
    let bare = dir.join("bare.swf");
    std::fs::write(&bare, text.lines().filter(|l| !l.starts_with(';')).collect::<Vec<_>>().join("\n")).unwrap();
    let bare = bare.display().to_string();
    let err = replay_json(&[&bare]).unwrap_err();
    assert!(err.contains("--nodes") && err.contains("--cluster"), "{err}");
    let r = replay_json(&[&bare, "--nodes", "8"]).unwrap();
    assert_eq!(r["summary"]["completed"], 3, "8 one-processor nodes: {r}");
    // An Alibaba CSV compressed with gzip (written here with the system's gzip).
    let gz = dir.join("dag.csv.gz");
    let out = Command::new("gzip").arg("-c").arg(data("dag.csv")).output().unwrap();
    std::fs::write(&gz, out.stdout).unwrap();
    let plain = replay_json(&[&data("dag.csv")]).unwrap();
    let packed = replay_json(&[&gz.display().to_string()]).unwrap();
    assert_eq!(plain["summary"], packed["summary"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_alibaba_jobs_stop_the_replay_unless_skipped_and_then_they_are_counted() {
    let err = replay_json(&[&data("messy.csv")]).unwrap_err();
    assert!(err.contains("messy.csv:4") && err.contains("J10_7_9_Stg4"), "{err}");
    let r = replay_json(&[&data("messy.csv"), "--skip-bad-jobs"]).unwrap();
    assert_eq!((r["skipped_bad_input"].as_u64(), r["summary"]["jobs"].as_u64()), (Some(3), Some(3)), "{r}");
    let err = replay_json(&[&data("small.swf"), "--skip-bad-jobs"]).unwrap_err();
    assert!(err.contains("alibaba"), "{err}");
}

#[test]
fn a_philly_replay_on_a_cluster_without_its_gpu_type_is_refused_naming_the_fix() {
    let dir = scratch("philly");
    std::fs::copy(data("philly.trace"), dir.join("philly.trace")).unwrap();
    std::fs::copy(data("throughputs.json"), dir.join("simulation_throughputs.json")).unwrap();
    std::fs::write(dir.join("cluster_specs.json"), r#"{"philly": ["16:0:0"]}"#).unwrap();
    let trace = dir.join("philly.trace").display().to_string();
    // (The test throughputs time only the first job on k80.)
    let err = replay_json(&[&trace, "--gpu-type", "k80", "--limit", "1"]).unwrap_err();
    assert!(err.contains("--gpu-type k80") && err.contains("it has v100") && err.contains("--nodes"), "{err}");
    let r = replay_json(&[&trace, "--gpu-type", "k80", "--limit", "1", "--nodes", "2"]).unwrap();
    assert_eq!(r["summary"]["infeasible"], 0, "{r}");
    std::fs::remove_dir_all(&dir).unwrap();
}
