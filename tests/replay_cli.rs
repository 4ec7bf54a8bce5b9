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
