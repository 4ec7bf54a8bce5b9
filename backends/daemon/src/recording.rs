//! A head's journal read as a recording: checked against a fresh machine ([`verify`]), and
//! walked input by input with what the machine decided for each (to read the workload back).
//!
//! A journal written by a head holds, in order, the settings its machine was made with
//! ([`Entry::Config`]), every input and timer run with its time, and after each batch what the
//! machine decided ([`Entry::Decided`]: the count of outputs and the SHA-256 of their bytes).
//! The kernel is deterministic, so a fresh machine fed the same records decides exactly the
//! same outputs: byte for byte, or the recording and the kernel disagree.

use crate::journal::{parse, read_snapshot, snapshot_path, Entry, JournalError, Snapshot};
use keel_kernel::head::HeadOutput;
use keel_kernel::Head;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A journal read whole (a record cut short at its end is left out and counted).
pub struct Recording {
    /// The file.
    pub path: PathBuf,
    /// Its records, after the snapshot it goes on from (if any).
    pub entries: Vec<Entry>,
    /// The snapshot the journal goes on from.
    pub snapshot: Option<Snapshot>,
    /// Bytes of a record cut short at the end (the head died while writing it).
    pub torn_tail_bytes: u64,
    /// Records of the journal left out because a newer snapshot holds them (the head died after
    /// writing that snapshot and before starting its journal afresh): they cannot be checked.
    pub superseded_records: u64,
}

/// Why a recording cannot be read or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The journal or its snapshot cannot be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal does not say how its machine was made.
    #[error("{path}: the journal does not begin with the head's settings (it was written by an older head), so it cannot be replayed exactly")]
    NoConfig {
        /// The file.
        path: PathBuf,
    },
    /// A batch's record counts more inputs and timer runs than the journal holds before it.
    #[error("{path}: record {record}: the batch it ends had {expected} inputs and timer runs, the journal holds {got} (records are missing)")]
    MissingRecords {
        /// The file.
        path: PathBuf,
        /// The index of the batch's [`Entry::Decided`] record.
        record: u64,
        /// Records the head wrote.
        expected: u64,
        /// Records found.
        got: u64,
    },
    /// A fresh machine decided otherwise than the recorded head.
    #[error("{path}: record {record} (batch {batch}, machine time {at_ms} ms): the head decided {expected} outputs, a fresh machine {got}{}\n  inputs of the batch: {inputs}\n  the fresh machine's outputs: {outputs}", if expected == got { " with different bytes" } else { "" })]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The index of the batch's [`Entry::Decided`] record.
        record: u64,
        /// The batch's number (from 1).
        batch: u64,
        /// The machine's time at the batch's last input, in milliseconds.
        at_ms: u64,
        /// Outputs the head decided.
        expected: u64,
        /// Outputs the fresh machine decided.
        got: u64,
        /// The batch's inputs, shortened.
        inputs: String,
        /// The fresh machine's outputs, shortened.
        outputs: String,
    },
}

/// What [`verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Records read.
    pub records: u64,
    /// Inputs fed to the machine.
    pub inputs: u64,
    /// Timer runs.
    pub timeouts: u64,
    /// Batches whose outputs matched.
    pub batches: u64,
    /// Outputs that matched, byte for byte.
    pub outputs: u64,
    /// Times the head restarted during the recording.
    pub restarts: u64,
    /// The snapshot generation the journal goes on from (0: from the start).
    pub from_generation: u64,
    /// Records a newer snapshot held, left unchecked ([`Recording::superseded_records`]).
    pub superseded_records: u64,
    /// Inputs and timer runs after the last batch record: the head stopped before making them
    /// durable, so nothing was decided for them.
    pub unfinished_inputs: u64,
}

/// Reads the journal at `path` (and its snapshot, when the journal goes on from one).
pub fn read(path: &Path) -> Result<Recording, RecordingError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
    let (entries, good_len) = parse(path, &bytes)?;
    if bytes.len() < 8 {
        return Err(JournalError::NotAJournal { path: path.to_path_buf() }.into());
    }
    let torn_tail_bytes = bytes.len() as u64 - good_len;
    let mut superseded_records = 0;
    let (snapshot, entries) = match entries.first() {
        Some(Entry::Begins { generation }) => {
            let generation = *generation;
            let snap_path = snapshot_path(path);
            let snapshot = read_snapshot(&snap_path)?;
            match snapshot {
                Some(s) if s.generation == generation => (Some(s), entries[1..].to_vec()),
                // The head died after writing this snapshot and before starting the journal
                // afresh: the snapshot holds every record the journal does (as the head itself
                // reads it back, `Journal::open`).
                Some(s) if s.generation > generation => {
                    superseded_records = entries.len() as u64 - 1;
                    (Some(s), Vec::new())
                }
                other => {
                    let found = other.map_or("no snapshot".to_string(), |s| format!("generation {}", s.generation));
                    return Err(JournalError::BadSnapshot {
                        path: snap_path,
                        detail: format!("the journal goes on from snapshot {generation}, but there is {found}"),
                    }
                    .into());
                }
            }
        }
        // A journal from the start is the whole history: it verifies from its configuration,
        // even if the head died while writing its first snapshot (which the head, restarting,
        // would go on from instead).
        _ => (None, entries),
    };
    Ok(Recording { path: path.to_path_buf(), entries, snapshot, torn_tail_bytes, superseded_records })
}

/// Feeds the recording through a fresh machine and checks that, batch by batch, it decides
/// exactly the outputs the head did. `each` sees every input or timer record with the machine
/// after it and the outputs it decided for it.
pub fn verify(rec: Recording, mut each: impl FnMut(&Head, &Entry, &[HeadOutput])) -> Result<Verified, RecordingError> {
    let mut verified = Verified { superseded_records: rec.superseded_records, ..Verified::default() };
    let mut entries = rec.entries.into_iter().enumerate().peekable();
    let mut head = match rec.snapshot {
        Some(s) => {
            verified.from_generation = s.generation;
            s.head
        }
        None => match entries.next() {
            Some((_, Entry::Config(config))) => Head::new(config),
            _ => return Err(RecordingError::NoConfig { path: rec.path }),
        },
    };
    verified.records = 1;
    let mut hasher = Sha256::new();
    let mut outputs: Vec<HeadOutput> = Vec::new();
    let mut batch_outputs = 0u64;
    let mut batch_records = 0u64;
    let mut batch_inputs: Vec<String> = Vec::new();
    let mut bytes = Vec::new();
    let mut last_ms = 0;
    for (index, entry) in entries {
        verified.records += 1;
        match &entry {
            Entry::Input { now, input } => {
                // The head ignored refused inputs too (it logs them): same machine, same answer.
                let _ = head.handle_input(*now, input.clone());
                verified.inputs += 1;
                batch_records += 1;
                last_ms = now.0 / 1_000_000;
                if batch_inputs.len() < 3 {
                    let mut text = format!("{input:?}");
                    text.truncate(200);
                    batch_inputs.push(text);
                }
            }
            Entry::Timeout { now } => {
                head.handle_timeout(*now);
                verified.timeouts += 1;
                batch_records += 1;
                last_ms = now.0 / 1_000_000;
            }
            Entry::Decided { records, outputs: expected, digest } => {
                let got: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
                if *records != batch_records {
                    return Err(RecordingError::MissingRecords {
                        path: rec.path,
                        record: index as u64,
                        expected: *records,
                        got: batch_records,
                    });
                }
                if got != *digest || batch_outputs != *expected {
                    let shown: Vec<String> = outputs
                        .iter()
                        .take(3)
                        .map(|o| {
                            let mut t = format!("{o:?}");
                            t.truncate(200);
                            t
                        })
                        .collect();
                    return Err(RecordingError::Mismatch {
                        path: rec.path,
                        record: index as u64,
                        batch: verified.batches + 1,
                        at_ms: last_ms,
                        expected: *expected,
                        got: batch_outputs,
                        inputs: batch_inputs.join("; "),
                        outputs: shown.join("; "),
                    });
                }
                verified.batches += 1;
                verified.outputs += batch_outputs;
                batch_outputs = 0;
                batch_records = 0;
                batch_inputs.clear();
                outputs.clear();
                continue;
            }
            Entry::Restarted => {
                // What was decided since the last batch record never left the head.
                verified.restarts += 1;
                hasher = Sha256::new();
                batch_outputs = 0;
                batch_records = 0;
                batch_inputs.clear();
                outputs.clear();
                continue;
            }
            Entry::Program { .. } | Entry::Begins { .. } | Entry::Config(_) => continue,
        }
        let first_new = outputs.len();
        while let Some(output) = head.poll_output() {
            bytes.clear();
            bytes = postcard::to_extend(&output, std::mem::take(&mut bytes)).expect("serialising to a Vec cannot fail");
            hasher.update(&bytes);
            batch_outputs += 1;
            outputs.push(output);
        }
        each(&head, &entry, &outputs[first_new..]);
    }
    verified.unfinished_inputs = batch_records;
    Ok(verified)
}
