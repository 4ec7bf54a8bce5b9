//! Keel's workload traces: the workload model and streaming importers.
//!
//! A trace becomes a stream of [`Job`]s in submit order, each a small DAG of [`Task`]s with
//! resources, durations and dependencies, plus what the trace recorded of how it went. Importers
//! read line by line and never hold a whole file: a job is handed out as soon as its last line
//! is read.
//!
//! - [`swf`]: the Standard Workload Format of the Parallel Workloads Archive (a job needing N
//!   processors is a gang of N one-CPU instances; dependencies on earlier jobs from fields 17-18).
//! - [`alibaba`]: Alibaba cluster-trace-v2018 `batch_task` (DAGs from task names, checked with
//!   petgraph).
//! - [`openb`]: the Alibaba GPU 2023 trace (pods with fractional GPUs and GPU model constraints,
//!   and its node list as the cluster).
//! - [`philly`]: the Philly trace as prepared by Gavel (durations from measured throughputs).
//!
//! Bad input is a typed [`TraceError`] naming the file, the line and the field.

pub mod alibaba;
pub mod cluster;
pub mod openb;
pub mod philly;
pub mod replay;
pub mod report;
pub mod swf;
pub mod synthetic;

use keel_kernel::ResourceSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One job of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The trace's name or number for it.
    pub id: String,
    /// When it was submitted, in milliseconds from the trace's start.
    pub submit_ms: u64,
    /// Its tasks; dependencies point into this list.
    pub tasks: Vec<Task>,
    /// All instances of all tasks start together or not at all (a parallel job: a placement
    /// group of one bundle per instance).
    pub gang: bool,
    /// A job that must end first, and the think time after its end before this one is submitted.
    pub after: Option<(String, u64)>,
    /// What the trace says happened to it.
    pub recorded: Recorded,
}

/// One task of a job: `instances` identical instances.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Its name in the trace.
    pub name: String,
    /// How many instances.
    pub instances: u32,
    /// What each instance needs.
    pub resources: ResourceSet,
    /// GPU models it may run on (empty: any).
    pub gpu_models: Vec<String>,
    /// How long each instance runs, in milliseconds.
    pub duration_ms: u64,
    /// Tasks of the same job whose every instance must end first (indices into [`Job::tasks`]).
    pub deps: Vec<usize>,
    /// Bytes each instance outputs.
    pub output_bytes: u64,
    /// Submitted this long after its job (0 for traces that submit a job's tasks together;
    /// a recording keeps when each task was submitted). Never before the tasks it depends on.
    pub submit_offset_ms: u64,
}

/// What a trace recorded of a job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    /// How it ended.
    pub status: Status,
    /// How long it waited between submit and start, when the trace says.
    pub wait_ms: Option<u64>,
    /// It never started (cancelled while it waited): it has no run to replay, and replays
    /// leave it out (counted in their summary).
    pub never_ran: bool,
}

/// How a job ended in the trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// Completed.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled (killed) by its user or the system.
    Cancelled,
    /// Not recorded.
    #[default]
    Unknown,
}

/// A machine of a trace's cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeShape {
    /// Its name in the trace.
    pub name: String,
    /// What it offers.
    pub resources: ResourceSet,
    /// Its GPU model, if it has GPUs.
    pub gpu_model: Option<String>,
}

/// Bad or unreadable trace input: names the file and, where it applies, the line and field.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line or field is not what the format says.
    #[error("{path}:{line}: {what}")]
    Malformed {
        /// The file.
        path: String,
        /// The line (1-based).
        line: u64,
        /// What is wrong, naming the field.
        what: String,
    },
    /// A job's tasks depend on each other in a cycle.
    #[error("{path}:{line}: job {job}: its tasks depend on each other in a cycle ({cycle})")]
    Cycle {
        /// The file.
        path: String,
        /// The job's last line.
        line: u64,
        /// The job.
        job: String,
        /// Tasks on the cycle.
        cycle: String,
    },
    /// A task depends on a task its job does not have.
    #[error("{path}:{line}: job {job}: task {task} depends on task {missing}, which the job does not have")]
    Dangling {
        /// The file.
        path: String,
        /// The line of the task.
        line: u64,
        /// The job.
        job: String,
        /// The task.
        task: String,
        /// The missing task's number.
        missing: String,
    },
}

/// How a file is read: plain, or gzip-compressed when its name ends in `.gz`.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, TraceError> {
    let file = std::fs::File::open(path).map_err(|source| io_error(path, source))?;
    let read: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, read)))
}

fn io_error(path: &Path, source: std::io::Error) -> TraceError {
    TraceError::Io { path: path.display().to_string(), source }
}

/// The folder of the shared real trace samples: `KEEL_TRACES_DIR`, else `../shared/traces` from
/// the workspace root. `None` when it is not there.
pub fn shared_traces_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KEEL_TRACES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("shared").join("traces"));
    dir.is_dir().then_some(dir)
}

/// Milliseconds from a trace's seconds (fractions kept), refusing what is not a time.
pub(crate) fn seconds_to_ms(s: f64) -> Option<u64> {
    (0.0..1e15).contains(&s).then(|| (s * 1000.0).round() as u64)
}
