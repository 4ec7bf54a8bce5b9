//! The Alibaba GPU cluster trace 2023 ("openb"): pods and the GPU nodes they ran on.
//!
//! Pods: `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,
//! deletion_time,scheduled_time` (times in seconds). A pod is a job of one task: `cpu_milli`/1000
//! CPUs, `memory_mib` MiB, and GPUs: a pod on one GPU takes `gpu_milli`/1000 of it (it shares
//! the GPU), a pod on several takes them whole. `gpu_spec` lists the GPU models it accepts,
//! separated by `|` (empty: any). It runs from `scheduled_time` (else `creation_time`) to
//! `deletion_time`; the wait is `scheduled_time - creation_time`. A pod still `Pending` when it
//! was deleted never ran: it is marked so ([`Recorded::never_ran`](crate::Recorded)), and replays leave it out.
//!
//! Nodes: `sn,cpu_milli,memory_mib,gpu,model`.

use crate::{io_error, Job, NodeShape, Recorded, Status, Task, TraceError};
use keel_kernel::{Amount, ResourceSet};
use std::io::Read;

fn csv_error(path: &str, e: csv::Error) -> TraceError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(source) => io_error(path.as_ref(), source),
        other => TraceError::Malformed { path: path.to_string(), line, what: format!("not CSV: {other:?}") },
    }
}

/// Reads a header row and returns each wanted column's index, or an error naming the missing one.
fn columns(
    rows: &mut csv::StringRecordsIntoIter<impl Read>,
    path: &str,
    wanted: &[&str],
) -> Result<Vec<usize>, TraceError> {
    let header = match rows.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(csv_error(path, e)),
        None => return Ok(Vec::new()),
    };
    wanted
        .iter()
        .map(|w| {
            header.iter().position(|h| h.trim() == *w).ok_or_else(|| TraceError::Malformed {
                path: path.to_string(),
                line: 1,
                what: format!("no column {w:?} in the header"),
            })
        })
        .collect()
}

fn number(row: &csv::StringRecord, i: usize, what: &str, path: &str) -> Result<f64, TraceError> {
    let line = row.position().map_or(0, |p| p.line());
    let text = row.get(i).unwrap_or("").trim();
    if text.is_empty() {
        return Ok(0.0);
    }
    text.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| TraceError::Malformed {
        path: path.to_string(),
        line,
        what: format!("column {what} is not a number: {text:?}"),
    })
}

/// The GPU nodes of the cluster.
pub fn read_nodes(input: impl Read, path: &str) -> Result<Vec<NodeShape>, TraceError> {
    let mut rows = csv::ReaderBuilder::new().has_headers(false).from_reader(input).into_records();
    let cols = columns(&mut rows, path, &["sn", "cpu_milli", "memory_mib", "gpu", "model"])?;
    let mut nodes = Vec::new();
    if cols.is_empty() {
        return Ok(nodes);
    }
    for row in rows {
        let row = row.map_err(|e| csv_error(path, e))?;
        let line = row.position().map_or(0, |p| p.line());
        let bad = |what: String| TraceError::Malformed { path: path.to_string(), line, what };
        let cpu = Amount::from_f64(number(&row, cols[1], "cpu_milli", path)? / 1000.0)
            .ok_or_else(|| bad("cpu_milli is out of range".into()))?;
        let mem = number(&row, cols[2], "memory_mib", path)?;
        let gpus = number(&row, cols[3], "gpu", path)?;
        if gpus.fract() != 0.0 {
            return Err(bad(format!("gpu {gpus} is not a whole number of devices")));
        }
        let model = row.get(cols[4]).unwrap_or("").trim().to_string();
        nodes.push(NodeShape {
            name: row.get(cols[0]).unwrap_or("").to_string(),
            resources: ResourceSet { cpu, ..ResourceSet::default() }
                .with_memory_bytes((mem * 1024.0 * 1024.0) as u64)
                .with_gpu(Amount::from_f64(gpus).ok_or_else(|| bad("gpu is out of range".into()))?),
            gpu_model: (gpus > 0.0 && !model.is_empty()).then_some(model),
        });
    }
    Ok(nodes)
}

/// Streams the pods as jobs.
pub struct PodReader<R: Read> {
    rows: csv::StringRecordsIntoIter<R>,
    path: String,
    cols: Vec<usize>,
    failed: bool,
}

const POD_COLUMNS: [&str; 10] = [
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
];

impl<R: Read> PodReader<R> {
    /// Reads the header of `input`; `path` names it in errors.
    pub fn new(input: R, path: &str) -> Result<PodReader<R>, TraceError> {
        let mut rows = csv::ReaderBuilder::new().has_headers(false).from_reader(input).into_records();
        let cols = columns(&mut rows, path, &POD_COLUMNS)?;
        Ok(PodReader { rows, path: path.to_string(), cols, failed: false })
    }

    fn pod(&self, row: &csv::StringRecord) -> Result<Job, TraceError> {
        let path = self.path.as_str();
        let line = row.position().map_or(0, |p| p.line());
        let bad = |what: String| TraceError::Malformed { path: path.to_string(), line, what };
        let c = &self.cols;
        let cpu = number(row, c[1], "cpu_milli", path)? / 1000.0;
        let mem_mib = number(row, c[2], "memory_mib", path)?;
        let num_gpu = number(row, c[3], "num_gpu", path)?;
        let gpu_milli = number(row, c[4], "gpu_milli", path)?;
        if num_gpu.fract() != 0.0 {
            return Err(bad(format!("num_gpu {num_gpu} is not a whole number")));
        }
        if gpu_milli > 1000.0 {
            return Err(bad(format!("gpu_milli {gpu_milli} is more than one GPU")));
        }
        let gpu = if num_gpu <= 1.0 { num_gpu * gpu_milli / 1000.0 } else { num_gpu };
        let created = number(row, c[7], "creation_time", path)?;
        let deleted = number(row, c[8], "deletion_time", path)?;
        let scheduled_text = row.get(c[9]).unwrap_or("").trim();
        let scheduled = if scheduled_text.is_empty() { None } else { Some(number(row, c[9], "scheduled_time", path)?) };
        let start = scheduled.unwrap_or(created);
        if deleted < start {
            return Err(bad(format!("deletion_time {deleted} is before the pod started ({start})")));
        }
        let status = match row.get(c[6]).unwrap_or("").trim() {
            "Succeeded" | "Running" => Status::Completed,
            "Failed" => Status::Failed,
            "Pending" => Status::Cancelled,
            _ => Status::Unknown,
        };
        let spec = row.get(c[5]).unwrap_or("").trim();
        let name = row.get(c[0]).unwrap_or("").to_string();
        let resources = ResourceSet {
            cpu: Amount::from_f64(cpu).ok_or_else(|| bad("cpu_milli is out of range".into()))?,
            ..ResourceSet::default()
        }
        .with_memory_bytes((mem_mib * 1024.0 * 1024.0) as u64)
        .with_gpu(Amount::from_f64(gpu).ok_or_else(|| bad("the GPU amount is out of range".into()))?);
        Ok(Job {
            id: name.clone(),
            submit_ms: crate::seconds_to_ms(created).ok_or_else(|| bad("creation_time is not a time".into()))?,
            tasks: vec![Task {
                name,
                instances: 1,
                resources,
                gpu_models: spec.split('|').filter(|m| !m.is_empty()).map(str::to_string).collect(),
                duration_ms: crate::seconds_to_ms(deleted - start).unwrap_or(0),
                deps: Vec::new(),
                output_bytes: 0,
                submit_offset_ms: 0,
            }],
            gang: false,
            after: None,
            recorded: Recorded {
                status,
                wait_ms: scheduled.and_then(|s| crate::seconds_to_ms((s - created).max(0.0))),
                // Deleted while still pending: it never ran (its span is a wait, not a run).
                never_ran: status == Status::Cancelled,
            },
        })
    }
}

impl<R: Read> Iterator for PodReader<R> {
    type Item = Result<Job, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.cols.is_empty() {
            return None;
        }
        let row = match self.rows.next()? {
            Ok(row) => row,
            Err(e) => {
                self.failed = true;
                return Some(Err(csv_error(&self.path, e)));
            }
        };
        let job = self.pod(&row);
        self.failed = job.is_err();
        Some(job)
    }
}
