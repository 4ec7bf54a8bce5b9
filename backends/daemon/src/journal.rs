//! The head's journal: every input the Head machine was given and every run of its timer, with
//! the time, in order. A restarted head replays it through a fresh machine and so comes back
//! knowing every job, task, object and placement group it had accepted. The same file is a
//! recording of the run.
//!
//! Format: the 8 bytes `KEELJNL2`, then records of `u32` length, `u32` CRC-32 of the body, and
//! the body (postcard of an [`Entry`]: an input with its time, a timer run, or a job's program).
//! A record cut short at the end (the head died while writing it) is dropped on open and the file
//! truncated there; a record whose checksum fails anywhere else is corruption, reported with its
//! byte offset, and the head refuses to start.
//!
//! Writes are batched: the head appends a batch of records, then [`Journal::sync`]s once before
//! it sends any output they caused (write-ahead), so nothing a peer heard of can be missing from
//! the journal after a crash.
//!
//! Snapshots keep the journal short. Between batches the head writes its whole state (the Head
//! machine, the programs of running jobs, the highest connection id) to `<journal>.snapshot`,
//! then starts the journal afresh with a [`Entry::Begins`] record naming the snapshot's
//! generation. Each step is a write to a temporary file, an fsync and a rename, so a crash at any
//! point leaves a snapshot and a journal that fit: a journal older than the snapshot holds only
//! what the snapshot already has, and is dropped. A restart loads the snapshot and replays the
//! journal's records after it.
//!
//! Snapshot format: the 8 bytes `KEELSNP3`, a `u64` length, a `u32` CRC-32 of the body, and the
//! body (postcard of a [`Snapshot`]).

use keel_kernel::ids::JobId;
use keel_kernel::{HeadInput, Time};
use keel_net::wire::WorkerProgram;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KEELJNL2";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSNP3";
/// Written by an earlier Keel whose records or machine had another layout (version 2 snapshots
/// hold a Head without the autoscaler's record of the machines it stopped).
const OLDER: [&[u8; 8]; 3] = [b"KEELJNL1", b"KEELSNP1", b"KEELSNP2"];
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
    /// The snapshot is damaged or does not fit the journal.
    #[error("snapshot {path}: {detail}")]
    BadSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// It is not a journal.
    #[error("journal {path} does not start with the journal header (is it another file?)")]
    NotAJournal {
        /// The file.
        path: PathBuf,
    },
    /// An earlier Keel wrote it, in a layout this one does not read.
    #[error("{path} was written by an earlier version of Keel; start the head with a fresh --state-dir (or move this one away)")]
    OlderVersion {
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
    /// The first record of a journal started after a snapshot: the records that follow go on
    /// from snapshot `generation`.
    Begins {
        /// The snapshot's generation.
        generation: u64,
    },
    /// The first record of a new head's journal: the settings its machine was made with (a
    /// restart and a verification make the machine with them too).
    Config(keel_kernel::HeadConfig),
    /// The end of a batch: what the machine decided for the inputs and timer runs since the
    /// last batch, as the count of outputs and the SHA-256 of their postcard bytes in order.
    /// `keel replay --verify` checks a fresh machine decides exactly this.
    Decided {
        /// Inputs and timer runs in the batch.
        records: u64,
        /// Outputs they caused.
        outputs: u64,
        /// SHA-256 of the outputs' postcard bytes, one after another.
        digest: [u8; 32],
    },
    /// The head restarted here: it rebuilt its machine from the records before, whose outputs
    /// since the last [`Entry::Decided`] were never sent (the batch was not made durable).
    Restarted,
}

/// The head's whole state at a batch boundary.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// Counts snapshots: the journal that goes on from this one begins with it.
    pub generation: u64,
    /// The Head machine, outputs drained.
    pub head: keel_kernel::Head,
    /// Programs of the running jobs.
    pub jobs: std::collections::BTreeMap<JobId, Option<WorkerProgram>>,
    /// The highest connection id the machine has seen.
    pub max_conn: u64,
}

impl Entry {
    /// The machine time of an input or timeout.
    pub fn time(&self) -> Option<Time> {
        match self {
            Entry::Input { now, .. } | Entry::Timeout { now } => Some(*now),
            Entry::Program { .. }
            | Entry::Begins { .. }
            | Entry::Config(_)
            | Entry::Decided { .. }
            | Entry::Restarted => None,
        }
    }
}

/// An open journal, appending.
pub struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
    dirty: bool,
    records: u64,
    /// Bytes in the journal file (since the last snapshot).
    bytes: u64,
    /// The generation of the snapshot the journal goes on from (0: none).
    generation: u64,
}

/// What [`Journal::open`] found.
pub struct Recovered {
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Every record after the snapshot, in order.
    pub entries: Vec<Entry>,
    /// Bytes dropped from a record cut short at the end.
    pub torn_tail_bytes: u64,
    /// Records dropped because the snapshot already held them (a crash between writing a
    /// snapshot and starting the journal afresh).
    pub superseded_records: u64,
}

/// Where a journal's snapshot lives.
pub fn snapshot_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".snapshot");
    journal.with_file_name(name)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` whole or not at all: a temporary file, fsync, rename, fsync of the
/// directory.
fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // A bare file name's directory is the current one.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads the snapshot at `path`, if there is one.
pub fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(JournalError::Io { path: path.to_path_buf(), source }),
    };
    let bad = |detail: String| JournalError::BadSnapshot { path: path.to_path_buf(), detail };
    if bytes.len() >= 8 && OLDER.iter().any(|m| &bytes[..8] == *m) {
        return Err(JournalError::OlderVersion { path: path.to_path_buf() });
    }
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(bad("it does not start with the snapshot header".into()));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let body = &bytes[20..];
    if body.len() as u64 != len {
        return Err(bad(format!("{} bytes of body where the header says {len}", body.len())));
    }
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch".into()));
    }
    let snapshot: Snapshot = postcard::from_bytes(body).map_err(|e| bad(format!("undecodable: {e}")))?;
    Ok(Some(snapshot))
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
        let snapshot = read_snapshot(&snapshot_path(path))?;
        let snapshot_generation = snapshot.as_ref().map_or(0, |s| s.generation);
        let (generation, mut entries) = match entries.first() {
            Some(Entry::Begins { generation }) => (*generation, entries[1..].to_vec()),
            _ => (0, entries),
        };
        let mut superseded_records = 0;
        let mut journal = Journal {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            dirty: false,
            records: entries.len() as u64,
            bytes: good_len.max(MAGIC.len() as u64),
            generation,
        };
        if generation < snapshot_generation {
            // The head died after writing the snapshot and before starting the journal afresh.
            superseded_records = entries.len() as u64;
            entries.clear();
            journal.restart(snapshot_generation)?;
        } else if generation > snapshot_generation {
            return Err(JournalError::BadSnapshot {
                path: snapshot_path(path),
                detail: format!(
                    "the journal goes on from snapshot {generation}, but the snapshot is {}",
                    if snapshot.is_some() { format!("generation {snapshot_generation}") } else { "missing".into() }
                ),
            });
        }
        Ok((journal, Recovered { snapshot, entries, torn_tail_bytes, superseded_records }))
    }

    /// Starts the journal afresh, going on from snapshot `generation`.
    fn restart(&mut self, generation: u64) -> Result<(), JournalError> {
        let io_err = |source| JournalError::Io { path: self.path.clone(), source };
        let mut bytes = MAGIC.to_vec();
        let body = postcard::to_allocvec(&Entry::Begins { generation }).expect("serialising to a Vec cannot fail");
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        replace_durably(&self.path, &bytes).map_err(io_err)?;
        let file = OpenOptions::new().append(true).open(&self.path).map_err(io_err)?;
        self.out = BufWriter::new(file);
        self.dirty = false;
        self.records = 0;
        self.bytes = bytes.len() as u64;
        self.generation = generation;
        Ok(())
    }

    /// Bytes in the journal since the last snapshot.
    pub fn len_bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes a snapshot of the head's state and starts the journal afresh after it. Call it
    /// between batches, after [`sync`](Self::sync): the snapshot must hold every record so far.
    /// Returns the snapshot as a restart would read it back, and its size in bytes: the head
    /// goes on with that copy of the machine, so that it decides exactly as a restart would.
    pub fn snapshot(
        &mut self,
        head: &keel_kernel::Head,
        jobs: &std::collections::BTreeMap<JobId, Option<WorkerProgram>>,
        max_conn: u64,
    ) -> Result<(Snapshot, u64), JournalError> {
        self.sync()?;
        let generation = self.generation + 1;
        #[derive(Serialize)]
        struct SnapshotRef<'a> {
            generation: u64,
            head: &'a keel_kernel::Head,
            jobs: &'a std::collections::BTreeMap<JobId, Option<WorkerProgram>>,
            max_conn: u64,
        }
        let body = postcard::to_allocvec(&SnapshotRef { generation, head, jobs, max_conn })
            .expect("serialising to a Vec cannot fail");
        let path = snapshot_path(&self.path);
        let restored: Snapshot = postcard::from_bytes(&body).map_err(|e| JournalError::BadSnapshot {
            path: path.clone(),
            detail: format!("a snapshot just written does not read back: {e}"),
        })?;
        let mut bytes = Vec::with_capacity(20 + body.len());
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        drop(body);
        replace_durably(&path, &bytes).map_err(|source| JournalError::Io { path, source })?;
        self.restart(generation)?;
        Ok((restored, bytes.len() as u64))
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
        self.bytes += 8 + body.len() as u64;
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
    if OLDER.iter().any(|m| &bytes[..MAGIC.len()] == *m) {
        return Err(JournalError::OlderVersion { path: path.to_path_buf() });
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
        std::fs::write(&path, b"KEELJNL1\0\0\0\0").unwrap();
        let older = Journal::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(older.contains("earlier version of Keel") && older.contains("--state-dir"), "{older}");
        let snapshot = path.with_extension("snapshot");
        std::fs::write(&snapshot, [&b"KEELSNP2"[..], &[0u8; 16]].concat()).unwrap();
        assert!(matches!(read_snapshot(&snapshot), Err(JournalError::OlderVersion { .. })));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    fn head() -> keel_kernel::Head {
        keel_kernel::Head::new(keel_kernel::HeadConfig::default())
    }

    #[test]
    fn after_a_snapshot_the_journal_holds_only_what_came_later() {
        let path = temp("snapshot");
        let (mut j, _) = Journal::open(&path).unwrap();
        for i in 0..50 {
            j.append(&input(i)).unwrap();
        }
        let mut jobs = std::collections::BTreeMap::new();
        jobs.insert(JobId(7), None);
        let before = j.len_bytes();
        let (snap, _) = j.snapshot(&head(), &jobs, 42).unwrap();
        assert_eq!((snap.generation, snap.max_conn), (1, 42));
        assert!(j.len_bytes() < before / 10, "the journal started afresh: {} bytes", j.len_bytes());
        j.append(&input(50)).unwrap();
        j.sync().unwrap();
        drop(j);
        let (j, rec) = Journal::open(&path).unwrap();
        let snap = rec.snapshot.expect("the snapshot comes back");
        assert_eq!((snap.generation, snap.max_conn, snap.jobs), (1, 42, jobs));
        assert_eq!(rec.entries, vec![input(50)]);
        assert_eq!(rec.superseded_records, 0);
        // The next snapshot is the next generation.
        let mut j = j;
        assert_eq!(j.snapshot(&head(), &Default::default(), 43).unwrap().0.generation, 2);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    /// Takes a snapshot, then puts back the journal as it was before it: as if the head died
    /// after the snapshot's rename and before the journal's.
    fn snapshot_and_lose_the_fresh_journal(mut j: Journal, path: &Path) {
        j.sync().unwrap();
        let old_journal = std::fs::read(path).unwrap();
        j.snapshot(&head(), &Default::default(), 1).unwrap();
        drop(j);
        std::fs::write(path, &old_journal).unwrap();
    }

    #[test]
    fn a_crash_between_snapshot_and_fresh_journal_drops_the_records_the_snapshot_holds() {
        let path = temp("between");
        let (mut j, _) = Journal::open(&path).unwrap();
        for i in 0..5 {
            j.append(&input(i)).unwrap();
        }
        snapshot_and_lose_the_fresh_journal(j, &path);
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert_eq!(rec.snapshot.map(|s| s.generation), Some(1));
        assert!(rec.entries.is_empty());
        assert_eq!(rec.superseded_records, 5);
        j.append(&input(9)).unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(Journal::open(&path).unwrap().1.entries, vec![input(9)]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_recording_read_after_a_crash_between_snapshots_goes_on_from_the_newer_snapshot() {
        let path = temp("between-read");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&input(1)).unwrap();
        j.snapshot(&head(), &Default::default(), 1).unwrap();
        for i in 2..5 {
            j.append(&input(i)).unwrap();
        }
        // The journal goes on from snapshot 1, and snapshot 2 holds all it has.
        snapshot_and_lose_the_fresh_journal(j, &path);
        let recording = crate::recording::read(&path).unwrap();
        assert_eq!(recording.snapshot.as_ref().map(|s| s.generation), Some(2));
        assert!(recording.entries.is_empty(), "{:?}", recording.entries);
        assert_eq!(recording.superseded_records, 3, "the three inputs after snapshot 1");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_damaged_or_missing_snapshot_is_reported_not_skipped() {
        let path = temp("badsnap");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&input(1)).unwrap();
        j.snapshot(&head(), &Default::default(), 1).unwrap();
        j.append(&input(2)).unwrap();
        j.sync().unwrap();
        drop(j);
        let snap = snapshot_path(&path);
        let mut bytes = std::fs::read(&snap).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&snap, &bytes).unwrap();
        let err = Journal::open(&path).err().expect("a damaged snapshot");
        assert!(matches!(&err, JournalError::BadSnapshot { detail, .. } if detail.contains("checksum")), "{err}");
        // Without its snapshot, a journal that goes on from one cannot be used alone.
        std::fs::remove_file(&snap).unwrap();
        let err = Journal::open(&path).err().expect("a missing snapshot");
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
