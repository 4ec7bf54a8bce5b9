//! The Standard Workload Format (SWF) of the Parallel Workloads Archive.
//!
//! Header lines start with `;` and carry `Key: value` pairs (`MaxProcs`, `MaxNodes`, ...). Each
//! other line is a job of 18 whitespace-separated fields, `-1` meaning unknown:
//!
//! | # | field | used as |
//! |---|---|---|
//! | 1 | job number | [`Job::id`] |
//! | 2 | submit time (s) | [`Job::submit_ms`] |
//! | 3 | wait time (s) | [`Recorded::wait_ms`] |
//! | 4 | run time (s) | the task's duration |
//! | 5 | allocated processors | instances (else field 8) |
//! | 8 | requested processors | instances when field 5 is unknown |
//! | 11 | status: 1 completed, 0 failed, 5 cancelled | [`Recorded::status`] |
//! | 17 | preceding job number | [`Job::after`] |
//! | 18 | think time (s) after it | [`Job::after`] |
//!
//! A job needing N processors is a gang: one task of N one-CPU instances that start together.

use crate::{io_error, Job, NodeShape, Recorded, Status, Task, TraceError};
use keel_kernel::ResourceSet;
use std::io::BufRead;

/// What the header says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `MaxProcs`: processors in the machine.
    pub max_procs: Option<u64>,
    /// `MaxNodes`: nodes in the machine.
    pub max_nodes: Option<u64>,
    /// `UnixStartTime`: when the log starts.
    pub unix_start: Option<i64>,
}

impl Header {
    /// The machine as nodes: `MaxNodes` nodes sharing `MaxProcs` processors (one processor per
    /// node when only one of them is given). `None` when the header gives neither.
    pub fn cluster(&self) -> Option<Vec<NodeShape>> {
        let (nodes, procs) = match (self.max_nodes, self.max_procs) {
            (Some(n), Some(p)) if n > 0 && p >= n => (n, p),
            (Some(n), _) if n > 0 => (n, n),
            (_, Some(p)) if p > 0 => (p, p),
            _ => return None,
        };
        let per_node = procs / nodes;
        Some(
            (0..nodes)
                .map(|i| NodeShape {
                    name: format!("node-{i}"),
                    // The remainder goes to the first nodes, so that the total is MaxProcs.
                    resources: ResourceSet::cpus(per_node + u64::from(i < procs % nodes)),
                    gpu_model: None,
                })
                .collect(),
        )
    }
}

/// Streams an SWF file's jobs.
pub struct SwfReader<R> {
    input: R,
    path: String,
    line: u64,
    header: Header,
    /// The first job line, read while looking for the end of the header.
    first: Option<String>,
    buf: String,
}

const FIELDS: [&str; 18] = [
    "job number",
    "submit time",
    "wait time",
    "run time",
    "allocated processors",
    "average CPU time",
    "used memory",
    "requested processors",
    "requested time",
    "requested memory",
    "status",
    "user",
    "group",
    "executable",
    "queue",
    "partition",
    "preceding job",
    "think time",
];

impl<R: BufRead> SwfReader<R> {
    /// Reads the header (the `;` lines before the first job); `path` names the input in errors.
    pub fn new(mut input: R, path: &str) -> Result<SwfReader<R>, TraceError> {
        let mut header = Header::default();
        let mut line = 0;
        let mut buf = String::new();
        let first = loop {
            buf.clear();
            let n = input.read_line(&mut buf).map_err(|e| io_error(path.as_ref(), e))?;
            if n == 0 {
                break None;
            }
            line += 1;
            let text = buf.trim();
            if let Some(comment) = text.strip_prefix(';') {
                if let Some((key, value)) = comment.split_once(':') {
                    let value = value.trim();
                    match key.trim() {
                        "MaxProcs" => header.max_procs = value.parse().ok(),
                        "MaxNodes" => header.max_nodes = value.parse().ok(),
                        "UnixStartTime" => header.unix_start = value.parse().ok(),
                        _ => {}
                    }
                }
            } else if !text.is_empty() {
                break Some(text.to_string());
            }
        };
        // `line` counts the first job line when there is one.
        let line = if first.is_some() { line - 1 } else { line };
        Ok(SwfReader { input, path: path.to_string(), line, header, first, buf })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn malformed(&self, what: String) -> TraceError {
        TraceError::Malformed { path: self.path.clone(), line: self.line, what }
    }

    fn parse(&self, text: &str) -> Result<Job, TraceError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != FIELDS.len() {
            return Err(self.malformed(format!("{} fields where SWF has 18", parts.len())));
        }
        let mut v = [0f64; 18];
        for (i, p) in parts.iter().enumerate() {
            v[i] = p
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.malformed(format!("field {} ({}) is not a number: {p:?}", i + 1, FIELDS[i])))?;
        }
        let known = |i: usize| (v[i] >= 0.0).then_some(v[i]);
        let time = |i: usize| -> Result<Option<u64>, TraceError> {
            match known(i) {
                None => Ok(None),
                Some(s) => crate::seconds_to_ms(s)
                    .map(Some)
                    .ok_or_else(|| self.malformed(format!("field {} ({}) is not a time: {s}", i + 1, FIELDS[i]))),
            }
        };
        let id = parts[0].to_string();
        let submit_ms = time(1)?.ok_or_else(|| self.malformed("field 2 (submit time) is unknown".into()))?;
        let procs = known(4).filter(|p| *p > 0.0).or(known(7).filter(|p| *p > 0.0)).ok_or_else(|| {
            self.malformed("no processor count: fields 5 (allocated) and 8 (requested processors) are unknown".into())
        })?;
        if procs.fract() != 0.0 || procs > f64::from(u32::MAX) {
            return Err(self.malformed(format!("processor count {procs} is not a whole number of processors")));
        }
        let status = match known(10).map(|s| s as i64) {
            Some(1) => Status::Completed,
            Some(0) => Status::Failed,
            Some(5) => Status::Cancelled,
            _ => Status::Unknown,
        };
        let after = match known(16).filter(|j| *j > 0.0) {
            Some(job) => Some((format!("{job}"), time(17)?.unwrap_or(0))),
            None => None,
        };
        let task = Task {
            name: id.clone(),
            instances: procs as u32,
            resources: ResourceSet::cpus(1),
            gpu_models: Vec::new(),
            duration_ms: time(3)?.unwrap_or(0),
            deps: Vec::new(),
            output_bytes: 0,
            submit_offset_ms: 0,
        };
        Ok(Job {
            id,
            submit_ms,
            tasks: vec![task],
            gang: true,
            after,
            recorded: Recorded {
                status,
                wait_ms: time(2)?,
                // Cancelled with no run time and no wait: withdrawn before it started.
                never_ran: status == Status::Cancelled && known(3).is_none_or(|r| r == 0.0) && known(2).is_none(),
            },
        })
    }
}

impl<R: BufRead> Iterator for SwfReader<R> {
    type Item = Result<Job, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            self.line += 1;
            return Some(self.parse(&first));
        }
        loop {
            self.buf.clear();
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(io_error(self.path.as_ref(), e))),
            }
            self.line += 1;
            let text = self.buf.trim();
            if text.is_empty() || text.starts_with(';') {
                continue;
            }
            if !self.buf.ends_with('\n') {
                // The last line of a file cut short: say so rather than read half a job.
                let fields = text.split_whitespace().count();
                if fields != FIELDS.len() {
                    return Some(
                        Err(self.malformed(format!("the file ends in the middle of a job ({fields} fields)"))),
                    );
                }
            }
            let text = text.to_string();
            return Some(self.parse(&text));
        }
    }
}
