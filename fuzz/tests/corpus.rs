//! Replays every file of `corpus/head_inputs/` through [`keel_fuzz::run`], then a fixed stream of
//! pseudo-random inputs. Runs on stable as part of `cargo test --workspace`.

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join("head_inputs")
}

#[test]
fn every_corpus_file_replays_cleanly() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus at {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus at {} is empty", dir.display());
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        let result = std::panic::catch_unwind(|| keel_fuzz::run(&data));
        assert!(result.is_ok(), "corpus file {} fails", file.display());
    }
}

/// xorshift64*: a tiny deterministic generator, so the stream is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Random inputs of 0 to 1,023 bytes from a fixed seed.
fn random_input(rng: &mut XorShift) -> Vec<u8> {
    let len = (rng.next() % 1024) as usize;
    (0..len).map(|_| rng.next() as u8).collect()
}

/// The seed of the smoke stream.
const SMOKE_SEED: u64 = 0x6b65_656c_f022_2222;

#[test]
fn seeded_random_inputs_run_cleanly() {
    let mut rng = XorShift(SMOKE_SEED);
    for i in 0..2_000 {
        let data = random_input(&mut rng);
        let result = std::panic::catch_unwind(|| keel_fuzz::run(&data));
        assert!(result.is_ok(), "random input {i} fails: {data:?}");
    }
}

/// Writes the seed corpus: short inputs from a fixed stream, each kept when it reaches a
/// combination of counters no earlier seed reached. Run by hand after changing the input format:
/// `cargo test -p keel-fuzz --test corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus folder");
    let mut rng = XorShift(0x5eed_c0de_0000_0001);
    let mut reached = std::collections::BTreeSet::new();
    let mut written = 0;
    for _ in 0..20_000 {
        if written == 20 {
            break;
        }
        let len = 16 + (rng.next() % 240) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let s = keel_fuzz::run_with_stats(&data);
        let key = (
            s.tasks_submitted.min(1),
            s.attempts_dispatched.min(2),
            s.tasks_finished.min(1),
            s.tasks_failed.min(1),
            s.retries.min(1),
            s.nodes_lost.min(1),
            s.inputs_refused.min(1),
        );
        if reached.insert(key) {
            written += 1;
            std::fs::write(dir.join(format!("seed-{written:02}")), &data).expect("write seed");
        }
    }
    assert!(written > 0);
}

/// Writes the `i`-th input of the smoke stream (to keep one that failed as a regression file).
#[test]
#[ignore]
fn write_smoke_input() {
    let i: usize = std::env::var("SMOKE_INPUT").expect("SMOKE_INPUT=<index>").parse().expect("an index");
    let mut rng = XorShift(SMOKE_SEED);
    let data = (0..=i).map(|_| random_input(&mut rng)).last().expect("an input");
    let name = std::env::var("SMOKE_NAME").unwrap_or_else(|_| format!("smoke-{i}"));
    std::fs::write(corpus_dir().join(name), data).expect("write input");
}
