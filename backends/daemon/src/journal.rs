//! The head's journal: every input the Head machine was given and every run of its timer, with
//! the time, in order. A restarted head replays it through a fresh machine and so comes back
//! knowing every job, task, object and placement group it had accepted. The same file is a
//! recording of the run.
//!
//! Format: the 8 bytes `KEELJNL1`, then records of `u32` length, `u32` CRC-32 of the body, and
//! the body (postcard of an [`Entry`]: an input with its time, a timer run, or a job's program).
//! A record cut short at the end (the head died while writing it) is dropped on open and the file
//! truncated there; a record whose checksum fails anywhere else is corruption, reported with its
//! byte offset, and the head refuses to start.
//!
//! Writes are batched: the head appends a batch of records, then [`Journal::sync`]s once before
//! it sends any output they caused (write-ahead), so nothing a peer heard of can be missing from
//! the journal after a crash.

use keel_kernel::ids::JobId;
use keel_kernel::{HeadInput, Time};
use keel_net::wire::WorkerProgram;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KEELJNL1";
/// Records larger than this are corruption, not inputs.
const MAX_RECORD: u32 = 256 << 20;

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// It cannot be read or written.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// It is not a journal.
    #[error("journal {path} does not start with the journal header (is it another file?)")]
    NotAJournal {
        /// The file.
        path: PathBuf,
    },
    /// A record in the middle is damaged.
    #[error("journal {path} is corrupt at byte {offset} (record {record}): {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// Its index.
        record: u64,
        /// What is wrong.
        detail: String,
    },
}

/// One record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// An input handed to the machine at `now`.
    Input {
        /// The machine's time.
        now: Time,
        /// The input.
        input: HeadInput,
    },
    /// The machine's timer was run at `now`.
    Timeout {
        /// The machine's time.
        now: Time,
    },
    /// A job's worker program (host data the machine does not keep).
    Program {
        /// The job.
        job: JobId,
        /// What its workers run.
        program: Option<WorkerProgram>,
    },
}

impl Entry {
    /// The machine time of an input or timeout.
    pub fn time(&self) -> Option<Time> {
        match self {
            Entry::Input { now, .. } | Entry::Timeout { now } => Some(*now),
            Entry::Program { .. } => None,
        }
    }
}

/// An open journal, appending.
pub struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
    dirty: bool,
    records: u64,
}

/// What [`Journal::open`] found.
pub struct Recovered {
    /// Every record, in order.
    pub entries: Vec<Entry>,
    /// Bytes dropped from a record cut short at the end.
    pub torn_tail_bytes: u64,
}

impl Journal {
    /// Opens (creating when missing) the journal at `path` and returns what it already holds.
    pub fn open(path: &Path) -> Result<(Journal, Recovered), JournalError> {
        let io_err = |source| JournalError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let (entries, good_len) = if bytes.is_empty() {
            file.write_all(MAGIC).map_err(io_err)?;
            file.sync_data().map_err(io_err)?;
            (Vec::new(), MAGIC.len() as u64)
        } else {
            parse(path, &bytes)?
        };
        let torn_tail_bytes = (bytes.len() as u64).saturating_sub(good_len);
        if torn_tail_bytes > 0 && !bytes.is_empty() {
            file.set_len(good_len).map_err(io_err)?;
            file.seek(SeekFrom::End(0)).map_err(io_err)?;
            if good_len < MAGIC.len() as u64 {
                // Even the header was cut short: write it again.
                file.write_all(MAGIC).map_err(io_err)?;
                file.sync_data().map_err(io_err)?;
            }
        }
        let records = entries.len() as u64;
        let journal = Journal { path: path.to_path_buf(), out: BufWriter::new(file), dirty: false, records };
        Ok((journal, Recovered { entries, torn_tail_bytes }))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records written so far (recovered ones included).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends one record (buffered until [`sync`](Self::sync)).
    pub fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let body = postcard::to_allocvec(entry).expect("serialising to a Vec cannot fail");
        let io_err = |source| JournalError::Io { path: self.path.clone(), source };
        self.out.write_all(&(body.len() as u32).to_le_bytes()).map_err(io_err)?;
        self.out.write_all(&crc32fast::hash(&body).to_le_bytes()).map_err(io_err)?;
        self.out.write_all(&body).map_err(io_err)?;
        self.dirty = true;
        self.records += 1;
        Ok(())
    }

    /// Makes every appended input durable (one `fdatasync` for the batch).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if !self.dirty {
            return Ok(());
        }
        let io_err = |source| JournalError::Io { path: self.path.clone(), source };
        self.out.flush().map_err(io_err)?;
        self.out.get_ref().sync_data().map_err(io_err)?;
        self.dirty = false;
        Ok(())
    }
}

/// Every record of a journal's bytes, and the length of the well-formed prefix.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Entry>, u64), JournalError> {
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) {
            return Ok((Vec::new(), 0));
        }
        return Err(JournalError::NotAJournal { path: path.to_path_buf() });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(JournalError::NotAJournal { path: path.to_path_buf() });
    }
    let mut at = MAGIC.len();
    let mut inputs = Vec::new();
    loop {
        let rest = &bytes[at..];
        if rest.len() < 8 {
            // Nothing more, or a header cut short: the end.
            return Ok((inputs, at as u64));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let corrupt = |detail: String| JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            record: inputs.len() as u64,
            detail,
        };
        // A crash can leave the file's end filled with zeros (the length grew, the data did not
        // land): that is a torn tail too. Checked only when a record looks wrong.
        let zeros_to_end = || rest.iter().all(|&b| b == 0);
        if len == 0 || len > MAX_RECORD {
            if zeros_to_end() {
                return Ok((inputs, at as u64));
            }
            return Err(corrupt(format!("a record of {len} bytes")));
        }
        let end = 8 + len as usize;
        if rest.len() < end {
            // Cut short by a crash mid-write.
            return Ok((inputs, at as u64));
        }
        let body = &rest[8..end];
        if crc32fast::hash(body) != crc {
            if at + end == bytes.len() || zeros_to_end() {
                // The last record, half written: a torn tail, not corruption.
                return Ok((inputs, at as u64));
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        match postcard::from_bytes::<Entry>(body) {
            Ok(entry) => inputs.push(entry),
            Err(e) => return Err(corrupt(format!("undecodable record: {e}"))),
        }
        at += end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_kernel::ids::JobId;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("head.journal")
    }

    fn input(i: u64) -> Entry {
        Entry::Input { now: Time(i * 10), input: HeadInput::DriverDisconnected(JobId(i)) }
    }

    #[test]
    fn appended_inputs_come_back_in_order_after_reopening() {
        let path = temp("roundtrip");
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert!(rec.entries.is_empty());
        for i in 0..5 {
            j.append(&input(i)).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let (j, rec) = Journal::open(&path).unwrap();
        assert_eq!(rec.entries, (0..5).map(input).collect::<Vec<_>>());
        assert_eq!((j.records(), rec.torn_tail_bytes), (5, 0));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_dropped_and_appending_continues_after_the_good_ones() {
        let path = temp("torn");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&input(1)).unwrap();
        j.append(&input(2)).unwrap();
        j.sync().unwrap();
        drop(j);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert_eq!(rec.entries, vec![input(1)]);
        assert!(rec.torn_tail_bytes > 0);
        j.append(&input(3)).unwrap();
        j.sync().unwrap();
        drop(j);
        let (_, rec) = Journal::open(&path).unwrap();
        assert_eq!(rec.entries, vec![input(1), input(3)]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_zero_filled_tail_and_a_cut_header_are_torn_tails_and_the_journal_goes_on() {
        let path = temp("zeros");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&input(1)).unwrap();
        j.sync().unwrap();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 40]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert_eq!((rec.entries, rec.torn_tail_bytes), (vec![input(1)], 40));
        j.append(&input(2)).unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(Journal::open(&path).unwrap().1.entries, vec![input(1), input(2)]);
        // A file holding part of the header only: it starts afresh, header included.
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert!(rec.entries.is_empty());
        j.append(&input(3)).unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(Journal::open(&path).unwrap().1.entries, vec![input(3)]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_corruption_naming_its_offset() {
        let path = temp("corrupt");
        let (mut j, _) = Journal::open(&path).unwrap();
        for i in 0..3 {
            j.append(&input(i)).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte in the first record's body (after the header, the length and the CRC).
        bytes[MAGIC.len() + 8] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::open(&path).err().expect("corrupt");
        assert!(matches!(err, JournalError::Corrupt { offset: 8, record: 0, .. }), "{err}");
        assert!(err.to_string().contains("byte 8"), "{err}");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(Journal::open(&path).err(), Some(JournalError::NotAJournal { .. })));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
