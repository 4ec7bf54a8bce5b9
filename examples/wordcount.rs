//! Word count as a map-reduce over files, on Keel.
//!
//! `cargo run --release --example wordcount -- FILE...` (with no files, it counts this example's
//! own source, the README and the architecture notes). Each file is one map task that counts its
//! words; the partial counts are merged pairwise by reduce tasks that take references to earlier
//! results (the driver never holds the intermediate counts), and the driver prints the most
//! common words. Without `KEEL_ADDRESS` it starts a local cluster
//! in this process; with it, the tasks run on that cluster (the files must be readable there).

use keel::{remote, Remote};
use std::collections::BTreeMap;

type Counts = BTreeMap<String, u64>;
/// A map's or a reduce's result: counts, or why a file could not be read.
type Partial = Result<Counts, String>;

/// Map: count the words of one file.
static COUNT_FILE: Remote<(String,), Partial> = remote("count_file", |(path,)| {
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut counts = Counts::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    // What a task prints reaches the driver's terminal.
    eprintln!("counted {path}: {} distinct words", counts.len());
    Ok(counts)
});

/// Reduce: merge two partial counts.
static MERGE: Remote<(Partial, Partial), Partial> = remote("merge", |(a, b)| {
    let mut total = a?;
    for (word, n) in b? {
        *total.entry(word).or_default() += n;
    }
    Ok(total)
});

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keel = keel::init(&[&COUNT_FILE, &MERGE])?;
    let mut files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        let root = env!("CARGO_MANIFEST_DIR");
        files = vec![
            format!("{root}/examples/wordcount.rs"),
            format!("{root}/README.md"),
            format!("{root}/ARCHITECTURE.md"),
        ];
    }
    let started = std::time::Instant::now();
    // Maps: one task per file.
    let mut level = files.iter().map(|f| COUNT_FILE.call(&keel, (f.clone(),))).collect::<Result<Vec<_>, _>>()?;
    // Reduces: merge pairs of results, level by level, by reference.
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(match pair {
                [a, b] => MERGE.call(&keel, (a, b))?,
                [a] => a.clone(),
                _ => unreachable!("chunks of two"),
            });
        }
        level = next;
    }
    let totals = keel.get(&level[0])??;
    let mut top: Vec<(&String, &u64)> = totals.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("{} files, {} distinct words, {:.3} s", files.len(), totals.len(), started.elapsed().as_secs_f64());
    for (word, n) in top.iter().take(10) {
        println!("{n:>8}  {word}");
    }
    Ok(())
}
