//! End-to-end: the `keel` binary's walkthrough runs the kernel, loses a node mid-job, recovers,
//! and is deterministic for a seed.

use std::process::Command;

fn walkthrough(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel")).arg("walkthrough").args(args).output().expect("keel runs");
    (out.status.success(), String::from_utf8(out.stdout).expect("utf-8 output"))
}

fn hash_of(text: &str) -> String {
    let line = text.lines().find(|l| l.starts_with("event-log hash ")).expect("a hash line");
    line.split_whitespace().nth(2).expect("the hash").to_string()
}

#[test]
fn walkthrough_recovers_from_the_lost_node_and_says_so() {
    let (ok, text) = walkthrough(&[]);
    assert!(ok, "walkthrough failed:\n{text}");
    assert!(text.contains("dead       node"), "no node was declared dead:\n{text}");
    assert!(text.contains("reduce result ready after the loss"), "{text}");
    assert!(text.contains("is infeasible"), "the infeasible task did not fail with its reason:\n{text}");
}

#[test]
fn walkthrough_with_the_same_seed_prints_the_same_event_log_hash() {
    let (_, a) = walkthrough(&["--seed", "7"]);
    let (_, b) = walkthrough(&["--seed", "7"]);
    assert_eq!(hash_of(&a), hash_of(&b));
    assert_eq!(a, b, "the whole decision log must repeat");
}

#[test]
fn walkthrough_json_prints_one_object_per_line_and_a_summary() {
    let (ok, text) = walkthrough(&["--json"]);
    assert!(ok);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    let summary = lines.last().and_then(|v| v.get("summary")).expect("a summary last");
    assert_eq!(summary["reduce_ready"], serde_json::Value::Bool(true));
    assert!(summary["reconstructions"].as_u64().unwrap() >= 1);
}
