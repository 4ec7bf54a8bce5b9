//! The Microsoft Philly trace as prepared by the Gavel project.
//!
//! A trace file has one job per line, 7 tab-separated fields: job type, command, step-count
//! flag, needs-data-dir (0/1), total steps, arrival time (s), scale factor (GPUs). Gavel's
//! throughputs file gives, per GPU type and `('job type', scale factor)`, the steps per second
//! measured running alone (key `null`); a job's duration on a GPU type is its steps divided by
//! that (a job type measured on one GPU only runs at that rate however many it has). A job is
//! one task of `scale factor` whole GPUs that may run only on that GPU type.

use crate::{io_error, Job, NodeShape, Recorded, Status, Task, TraceError};
use keel_kernel::{Amount, ResourceSet};
use std::collections::HashMap;
use std::io::BufRead;

/// Steps per second of `(job type, scale factor)` running alone, for one GPU type.
#[derive(Clone, Debug, Default)]
pub struct Throughputs {
    gpu_type: String,
    alone: HashMap<(String, u32), f64>,
}

impl Throughputs {
    /// Reads Gavel's throughputs JSON for `gpu_type` (`"v100"`, `"p100"`, `"k80"`, ...).
    pub fn read(json: &str, gpu_type: &str, path: &str) -> Result<Throughputs, TraceError> {
        let bad = |what: String| TraceError::Malformed { path: path.to_string(), line: 0, what };
        let all: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Some(per_type) = all.get(gpu_type).and_then(|v| v.as_object()) else {
            let known: Vec<&str> = all.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            return Err(bad(format!("no GPU type {gpu_type:?} (it has {})", known.join(", "))));
        };
        let mut alone = HashMap::new();
        for (key, v) in per_type {
            let Some(key) = parse_key(key) else {
                return Err(bad(format!("key {key:?} of {gpu_type} is not ('job type', scale factor)")));
            };
            if let Some(t) = v.get("null").and_then(|t| t.as_f64()) {
                alone.insert(key, t);
            }
        }
        Ok(Throughputs { gpu_type: gpu_type.to_string(), alone })
    }

    /// Steps per second of `job_type` on `scale` GPUs, running alone. A job type measured on
    /// one GPU only (Gavel's recommendation models, say) runs at its one-GPU rate on more.
    pub fn alone(&self, job_type: &str, scale: u32) -> Option<f64> {
        let rate = |s: u32| self.alone.get(&(job_type.to_string(), s)).copied();
        rate(scale).or_else(|| rate(1))
    }
}

/// `('ResNet-18 (batch size 16)', 1)` -> ("ResNet-18 (batch size 16)", 1).
fn parse_key(key: &str) -> Option<(String, u32)> {
    let inner = key.strip_prefix("('")?.strip_suffix(')')?;
    let (name, scale) = inner.rsplit_once("',")?;
    Some((name.to_string(), scale.trim().parse().ok()?))
}

/// The cluster of Gavel's `cluster_specs.json` entry (`"v100:p100:k80"` GPU counts), as nodes of
/// `per_node` GPUs each (the last one may have fewer).
pub fn cluster(spec: &str, per_node: u32) -> Option<Vec<NodeShape>> {
    let counts: Vec<u32> = spec.split(':').map(|c| c.trim().parse().ok()).collect::<Option<_>>()?;
    let per_node = per_node.max(1);
    let mut nodes = Vec::new();
    for (model, &count) in ["v100", "p100", "k80"].iter().zip(&counts) {
        let mut left = count;
        while left > 0 {
            let here = left.min(per_node);
            nodes.push(NodeShape {
                name: format!("{model}-{}", nodes.len()),
                resources: ResourceSet::cpus(u64::from(here) * 4).with_gpu(Amount::from_f64(f64::from(here))?),
                gpu_model: Some((*model).to_string()),
            });
            left -= here;
        }
    }
    Some(nodes)
}

/// Streams a Gavel trace's jobs, with durations on one GPU type.
pub struct PhillyReader<R> {
    input: R,
    path: String,
    line: u64,
    throughputs: Throughputs,
    buf: String,
    failed: bool,
}

impl<R: BufRead> PhillyReader<R> {
    /// Reads `input` (`path` names it in errors), timing jobs with `throughputs`.
    pub fn new(input: R, path: &str, throughputs: Throughputs) -> PhillyReader<R> {
        PhillyReader { input, path: path.to_string(), line: 0, throughputs, buf: String::new(), failed: false }
    }

    fn parse(&self, text: &str) -> Result<Job, TraceError> {
        let bad = |what: String| TraceError::Malformed { path: self.path.clone(), line: self.line, what };
        let fields: Vec<&str> = text.split('\t').collect();
        if fields.len() != 7 {
            return Err(bad(format!("{} tab-separated fields where a Gavel trace has 7", fields.len())));
        }
        let job_type = fields[0].trim();
        let steps: f64 = fields[4]
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s > 0.0)
            .ok_or_else(|| bad(format!("field 5 (total steps) is not a positive number: {:?}", fields[4])))?;
        let arrival: f64 = fields[5]
            .trim()
            .parse()
            .ok()
            .ok_or_else(|| bad(format!("field 6 (arrival time) is not a number: {:?}", fields[5])))?;
        let scale: u32 = fields[6]
            .trim()
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| bad(format!("field 7 (scale factor) is not a GPU count: {:?}", fields[6])))?;
        let rate = self.throughputs.alone(job_type, scale).filter(|r| *r > 0.0).ok_or_else(|| {
            bad(format!(
                "no throughput for ({job_type:?}, {scale}) on {} in the throughputs file",
                self.throughputs.gpu_type
            ))
        })?;
        let duration_ms =
            crate::seconds_to_ms(steps / rate).ok_or_else(|| bad("the duration is out of range".into()))?;
        let submit_ms =
            crate::seconds_to_ms(arrival).ok_or_else(|| bad(format!("arrival time {arrival} is not a time")))?;
        Ok(Job {
            id: format!("job-{}", self.line),
            submit_ms,
            tasks: vec![Task {
                name: job_type.to_string(),
                instances: 1,
                resources: ResourceSet::default().with_gpu(
                    Amount::from_f64(f64::from(scale)).ok_or_else(|| bad("scale factor out of range".into()))?,
                ),
                gpu_models: vec![self.throughputs.gpu_type.clone()],
                duration_ms,
                deps: Vec::new(),
                output_bytes: 0,
                submit_offset_ms: 0,
            }],
            gang: false,
            after: None,
            recorded: Recorded { status: Status::Unknown, wait_ms: None, never_ran: false },
        })
    }
}

impl<R: BufRead> Iterator for PhillyReader<R> {
    type Item = Result<Job, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            self.buf.clear();
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(io_error(self.path.as_ref(), e)));
                }
            }
            self.line += 1;
            let text = self.buf.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let text = text.to_string();
            let job = self.parse(&text);
            self.failed = job.is_err();
            return Some(job);
        }
    }
}
