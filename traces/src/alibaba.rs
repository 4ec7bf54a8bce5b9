//! Alibaba cluster-trace-v2018 `batch_task`: one row per task of a batch job.
//!
//! Columns: `task_name,instance_num,job_name,task_type,status,start_time,end_time,plan_cpu,plan_mem`
//! (the real files have no header; one is accepted). A task name encodes the job's DAG: `M5_3_4`
//! is task 5, which waits for every instance of tasks 3 and 4 of the same job (the letters carry
//! no meaning); `task_<id>` names an independent task. `plan_cpu` 100 is one core; `plan_mem` is a
//! percentage of a machine's memory, kept as the custom resource [`MEMORY_PCT`].
//!
//! A job's rows must be consecutive (the trace's own order): the reader hands a job out when the
//! next job's first row arrives, and a job seen again later is an error naming the line. Its
//! submit time is its earliest task start; a task's duration is its end minus its start.

use crate::{io_error, Job, NodeShape, Recorded, Status, Task, TraceError};
use keel_kernel::{Amount, ResourceSet};
use petgraph::graphmap::DiGraphMap;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;

/// The custom resource holding `plan_mem`: percent of one machine's memory.
pub const MEMORY_PCT: &str = "memory_pct";

/// The machines of the v2018 cluster: 4,034 of 96 cores each; memory in percent.
pub fn cluster(machines: usize) -> Vec<NodeShape> {
    (0..machines)
        .map(|i| NodeShape {
            name: format!("m_{}", i + 1),
            resources: ResourceSet::cpus(96).with_custom(MEMORY_PCT, Amount::from_f64(100.0).expect("100")),
            gpu_model: None,
        })
        .collect()
}

/// Streams the jobs of a `batch_task` file.
pub struct BatchTaskReader<R: Read> {
    rows: csv::StringRecordsIntoIter<R>,
    path: String,
    /// The rows of the job being read: (line, row).
    current: Vec<(u64, csv::StringRecord)>,
    seen: HashSet<String>,
    done: bool,
    /// An error found while handing out the job before it.
    pending: Option<TraceError>,
    /// Skip bad jobs and rows rather than stop (see [`skip_bad_input`](Self::skip_bad_input)).
    skip_bad: bool,
    skipped: u64,
    first_skipped: Vec<TraceError>,
}

/// How many of the skipped errors are kept to show.
const SKIPPED_KEPT: usize = 5;

impl<R: Read> BatchTaskReader<R> {
    /// Reads `input`; `path` names it in errors.
    pub fn new(input: R, path: &str) -> BatchTaskReader<R> {
        let rows = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(input).into_records();
        BatchTaskReader {
            rows,
            path: path.to_string(),
            current: Vec::new(),
            seen: HashSet::new(),
            done: false,
            pending: None,
            skip_bad: false,
            skipped: 0,
            first_skipped: Vec::new(),
        }
    }

    /// Leaves out bad jobs (bad task names, cycles, dangling dependencies, bad fields) and bad
    /// rows, rather than stopping at the first: the full v2018 trace has a few. See
    /// [`skipped`](Self::skipped).
    pub fn skip_bad_input(mut self) -> BatchTaskReader<R> {
        self.skip_bad = true;
        self
    }

    /// How many jobs and rows were left out so far, and the first few errors.
    pub fn skipped(&self) -> (u64, &[TraceError]) {
        (self.skipped, &self.first_skipped)
    }

    fn malformed(&self, line: u64, what: String) -> TraceError {
        TraceError::Malformed { path: self.path.clone(), line, what }
    }

    /// The next row, skipping a header; `None` at the end.
    fn row(&mut self) -> Option<Result<(u64, csv::StringRecord), TraceError>> {
        loop {
            let record = match self.rows.next()? {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    return Some(Err(match e.into_kind() {
                        csv::ErrorKind::Io(source) => io_error(self.path.as_ref(), source),
                        other => self.malformed(line, format!("not CSV: {other:?}")),
                    }));
                }
            };
            let line = record.position().map_or(0, |p| p.line());
            if line == 1 && record.get(0) == Some("task_name") {
                continue;
            }
            if record.len() != 9 {
                return Some(Err(self.malformed(line, format!("{} columns where batch_task has 9", record.len()))));
            }
            return Some(Ok((line, record)));
        }
    }

    /// Builds the job of the rows read so far.
    fn job(&mut self) -> Result<Job, TraceError> {
        let rows = std::mem::take(&mut self.current);
        let job_name = rows[0].1[2].to_string();
        let last_line = rows.last().map_or(0, |(l, _)| *l);
        let mut tasks = Vec::with_capacity(rows.len());
        // Task number -> index, and each task's dependencies by number.
        let mut by_number: BTreeMap<u64, usize> = BTreeMap::new();
        let mut wanted: Vec<(u64, Vec<u64>)> = Vec::with_capacity(rows.len());
        let mut submit = u64::MAX;
        let mut status = Status::Completed;
        for (line, row) in &rows {
            let (line, name) = (*line, &row[0]);
            let (number, deps) = parse_name(name).ok_or_else(|| {
                self.malformed(line, format!("task name {name:?} is neither <letters><n>[_<dep>...] nor task_<id>"))
            })?;
            let field = |i: usize, what: &str| -> Result<f64, TraceError> {
                let text = row[i].trim();
                if text.is_empty() {
                    return Ok(0.0);
                }
                text.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| self.malformed(line, format!("column {} ({what}) is not a number: {text:?}", i + 1)))
            };
            let instances = field(1, "instance_num")?;
            if instances < 1.0 || instances.fract() != 0.0 || instances > f64::from(u32::MAX) {
                return Err(self.malformed(line, format!("instance_num {instances} is not a positive whole number")));
            }
            let (start, end) = (field(5, "start_time")?, field(6, "end_time")?);
            let cpu = Amount::from_f64(field(7, "plan_cpu")? / 100.0)
                .ok_or_else(|| self.malformed(line, "plan_cpu is out of range".into()))?;
            let mem = Amount::from_f64(field(8, "plan_mem")?)
                .ok_or_else(|| self.malformed(line, "plan_mem is out of range".into()))?;
            let mut resources = ResourceSet { cpu, ..ResourceSet::default() };
            if mem > Amount::ZERO {
                resources = resources.with_custom(MEMORY_PCT, mem);
            }
            status = worse(status, task_status(&row[4]));
            submit = submit.min(crate::seconds_to_ms(start).unwrap_or(0));
            if let Some(n) = number {
                if by_number.insert(n, tasks.len()).is_some() {
                    return Err(self.malformed(line, format!("job {job_name} has two tasks numbered {n}")));
                }
            }
            wanted.push((line, deps));
            tasks.push(Task {
                name: name.to_string(),
                instances: instances as u32,
                resources,
                gpu_models: Vec::new(),
                duration_ms: crate::seconds_to_ms((end - start).max(0.0)).unwrap_or(0),
                deps: Vec::new(),
                output_bytes: 0,
                submit_offset_ms: 0,
            });
        }
        let mut graph: DiGraphMap<usize, ()> = DiGraphMap::with_capacity(tasks.len(), tasks.len());
        for i in 0..tasks.len() {
            graph.add_node(i);
        }
        for (i, (line, deps)) in wanted.into_iter().enumerate() {
            for d in deps {
                let Some(&j) = by_number.get(&d) else {
                    return Err(TraceError::Dangling {
                        path: self.path.clone(),
                        line,
                        job: job_name,
                        task: tasks[i].name.clone(),
                        missing: d.to_string(),
                    });
                };
                if !tasks[i].deps.contains(&j) {
                    tasks[i].deps.push(j);
                    graph.add_edge(j, i, ());
                }
            }
        }
        if petgraph::algo::toposort(&graph, None).is_err() {
            // Name the tasks of one cycle: a strongly connected component of several tasks, or
            // a task that waits for itself.
            let cycle = petgraph::algo::tarjan_scc(&graph)
                .into_iter()
                .find(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
                .unwrap_or_default();
            let mut names: Vec<(usize, &str)> = cycle.iter().map(|&i| (i, tasks[i].name.as_str())).collect();
            names.sort_unstable();
            return Err(TraceError::Cycle {
                path: self.path.clone(),
                line: last_line,
                job: job_name,
                cycle: names.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(Job {
            id: job_name,
            submit_ms: if submit == u64::MAX { 0 } else { submit },
            tasks,
            gang: false,
            after: None,
            recorded: Recorded { status, wait_ms: None, never_ran: false },
        })
    }
}

/// `M5_3_4` -> (Some(5), [3, 4]); `task_xyz` -> (None, []); anything else -> None.
fn parse_name(name: &str) -> Option<(Option<u64>, Vec<u64>)> {
    if name.starts_with("task_") && name.len() > 5 {
        return Some((None, Vec::new()));
    }
    let digits = name.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    if digits.len() == name.len() || digits.is_empty() {
        return None;
    }
    // `M1_` and `R4__2` have empty parts: no dependency there.
    let mut numbers =
        digits.split('_').enumerate().filter(|(i, p)| *i == 0 || !p.is_empty()).map(|(_, p)| p.parse::<u64>().ok());
    let id = numbers.next()??;
    let deps = numbers.collect::<Option<Vec<u64>>>()?;
    Some((Some(id), deps))
}

fn task_status(text: &str) -> Status {
    match text {
        "Terminated" => Status::Completed,
        "Failed" => Status::Failed,
        "Cancelled" | "Interrupted" => Status::Cancelled,
        _ => Status::Unknown,
    }
}

/// A job's status from its tasks': failed beats cancelled beats unknown beats completed.
fn worse(a: Status, b: Status) -> Status {
    let rank = |s: Status| match s {
        Status::Completed => 0,
        Status::Unknown => 1,
        Status::Cancelled => 2,
        Status::Failed => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

impl<R: Read> Iterator for BatchTaskReader<R> {
    type Item = Result<Job, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_or_bad()? {
                Err(e) if self.skip_bad && !matches!(e, TraceError::Io { .. }) => {
                    self.skipped += 1;
                    if self.first_skipped.len() < SKIPPED_KEPT {
                        self.first_skipped.push(e);
                    }
                }
                other => return Some(other),
            }
        }
    }
}

impl<R: Read> BatchTaskReader<R> {
    fn next_or_bad(&mut self) -> Option<Result<Job, TraceError>> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        loop {
            match self.row() {
                None => {
                    self.done = true;
                    return (!self.current.is_empty()).then(|| self.job());
                }
                Some(Err(e)) => {
                    // A bad row stops the reading, unless bad input is skipped.
                    self.done = !self.skip_bad || matches!(e, TraceError::Io { .. });
                    return Some(Err(e));
                }
                Some(Ok((line, row))) => {
                    let same = self.current.first().is_some_and(|(_, first)| first[2] == row[2]);
                    if same {
                        self.current.push((line, row));
                        continue;
                    }
                    let again = self.seen.contains(&row[2]);
                    if again {
                        let what = format!("the rows of job {} are not together (it appeared before)", &row[2]);
                        let e = self.malformed(line, what);
                        if self.skip_bad {
                            // The row is left out; the job being read goes on.
                            return Some(Err(e));
                        }
                        self.done = true;
                        if self.current.is_empty() {
                            return Some(Err(e));
                        }
                        // The job read so far is whole: hand it out, then the error.
                        self.pending = Some(e);
                        return Some(self.job());
                    }
                    self.seen.insert(row[2].to_string());
                    if self.current.is_empty() {
                        self.current.push((line, row));
                        continue;
                    }
                    let job = self.job();
                    self.current.push((line, row));
                    return Some(job);
                }
            }
        }
    }
}
