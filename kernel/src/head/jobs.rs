//! Jobs: a driver registers a job; when the job ends (finished, or its driver disconnected), its
//! objects, tasks, non-detached actors and non-detached placement groups are released.

use super::Head;
use crate::errors::InputError;
use crate::ids::{JobId, TaskId};
use std::collections::BTreeMap;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct JobRecord {
    pub name: String,
    pub running: bool,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct JobTable {
    jobs: BTreeMap<JobId, JobRecord>,
    /// Every job's driver id, running or ended.
    drivers: BTreeMap<TaskId, JobId>,
    next_id: u64,
}

impl JobTable {
    pub fn is_running(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.running)
    }

    /// Whether `task` is the driver id of a job (running or ended).
    pub fn is_driver(&self, task: TaskId) -> bool {
        self.drivers.contains_key(&task)
    }

    /// The job whose driver stands behind `task` ([`TaskId::driver`]), if it is running.
    pub fn job_of_driver(&self, task: TaskId) -> Option<JobId> {
        self.drivers.get(&task).copied().filter(|j| self.is_running(*j))
    }

    pub fn name(&self, job: JobId) -> Option<&str> {
        self.jobs.get(&job).map(|j| j.name.as_str())
    }
}

impl Head {
    pub(super) fn register_job(&mut self, name: String) -> JobId {
        self.jobs.next_id += 1;
        let job = JobId(self.jobs.next_id);
        self.jobs.jobs.insert(job, JobRecord { name, running: true });
        assert!(self.jobs.drivers.insert(TaskId::driver(job), job).is_none(), "driver id collision");
        job
    }

    /// The job ends: everything the driver owns is released, its tasks are cancelled, its
    /// non-detached actors and placement groups go.
    pub(super) fn on_driver_gone(&mut self, job: JobId) -> Result<(), InputError> {
        if !self.jobs.is_running(job) {
            return Err(InputError::UnknownJob(job));
        }
        let driver = TaskId::driver(job);
        // Owner death of the driver (reasons say JobFinished), while the job still counts as running.
        self.on_owner_died(driver);
        self.kill_job_actors(job);
        self.remove_job_groups(job);
        // The driver id stays known (as the job record does): what it still owns (detached
        // actors) keeps being recognised as a driver's.
        self.jobs.jobs.get_mut(&job).expect("job").running = false;
        Ok(())
    }
}
