//! The worker table: worker processes, their lease keys (job and GPU device set) and states, and the
//! idle pool in the order its workers became idle.
//!
//! A pool worker is reused only for a task of the same job whose allocation names the same GPU
//! devices, since the devices a process sees are fixed when it starts. Reuse takes the most recently
//! idle worker (warmest); trimming the pool kills the oldest idle first.

use super::io::{WorkerInfo, WorkerKind, WorkerState};
use crate::ids::{JobId, TaskId, WorkerId};
use std::collections::BTreeMap;

/// The node's workers.
#[derive(Clone, Debug)]
pub(crate) struct WorkerTable {
    /// The next worker id; never reused, not even across a reset.
    next_id: u64,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Idle pool workers keyed by the logical tick at which they became idle (oldest first).
    idle_pool: BTreeMap<u64, WorkerId>,
    /// The reverse of `idle_pool`.
    idle_tick_of: BTreeMap<WorkerId, u64>,
    tick: u64,
}

impl WorkerTable {
    pub(crate) fn new() -> WorkerTable {
        let table = WorkerTable {
            next_id: 1,
            workers: BTreeMap::new(),
            idle_pool: BTreeMap::new(),
            idle_tick_of: BTreeMap::new(),
            tick: 0,
        };
        assert!(table.workers.is_empty());
        table
    }

    /// Forgets every worker (the host kills them on `Reset`); ids keep increasing.
    pub(crate) fn clear(&mut self) {
        self.workers.clear();
        self.idle_pool.clear();
        self.idle_tick_of.clear();
        assert!(self.next_id >= 1);
    }

    pub(crate) fn get(&self, worker: WorkerId) -> Option<&WorkerInfo> {
        self.workers.get(&worker)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (WorkerId, &WorkerInfo)> {
        self.workers.iter().map(|(w, i)| (*w, i))
    }

    pub(crate) fn idle_pool_len(&self) -> usize {
        self.idle_pool.len()
    }

    /// Whether any worker hosts an actor (and is not being stopped).
    pub(crate) fn hosts_actors(&self) -> bool {
        self.workers.values().any(|w| matches!(w.kind, WorkerKind::Actor(_)) && w.state != WorkerState::Stopping)
    }

    /// A new worker, starting, leased to `task`.
    pub(crate) fn allocate(&mut self, job: JobId, kind: WorkerKind, gpus: Vec<u32>, task: TaskId) -> WorkerId {
        let worker = WorkerId(self.next_id);
        self.next_id += 1;
        assert!(!self.workers.contains_key(&worker), "worker id {worker} reused");
        let info = WorkerInfo { job, kind, gpus, state: WorkerState::Starting { task: Some(task) } };
        self.workers.insert(worker, info);
        worker
    }

    /// The most recently idle pool worker of `job` that sees exactly `gpus`, if any (the caller
    /// makes it busy with [`set_state`](Self::set_state)).
    pub(crate) fn find_idle(&self, job: JobId, gpus: &[u32]) -> Option<WorkerId> {
        let found = self.idle_pool.values().rev().copied().find(|w| {
            let info = &self.workers[w];
            info.job == job && info.gpus == gpus
        });
        if let Some(worker) = found {
            assert_eq!(self.workers[&worker].state, WorkerState::Idle);
            assert_eq!(self.workers[&worker].kind, WorkerKind::Pool);
        }
        found
    }

    /// Sets a worker's state, keeping the idle pool in step (a pool worker entering `Idle` joins it as
    /// the newest; leaving `Idle` takes it out).
    pub(crate) fn set_state(&mut self, worker: WorkerId, state: WorkerState) {
        let info = self.workers.get_mut(&worker).expect("state change of an unknown worker");
        assert!(info.state != WorkerState::Stopping, "{worker} is stopping");
        let was_idle_pool = info.state == WorkerState::Idle && info.kind == WorkerKind::Pool;
        let now_idle_pool = state == WorkerState::Idle && info.kind == WorkerKind::Pool;
        info.state = state;
        if was_idle_pool {
            let tick = self.idle_tick_of.remove(&worker).expect("idle worker indexed");
            self.idle_pool.remove(&tick);
        }
        if now_idle_pool {
            self.tick += 1;
            self.idle_pool.insert(self.tick, worker);
            self.idle_tick_of.insert(worker, self.tick);
        }
        assert_eq!(self.idle_pool.len(), self.idle_tick_of.len());
    }

    /// The oldest idle pool workers beyond `max_idle` (oldest first), to kill.
    pub(crate) fn excess_idle(&self, max_idle: usize) -> Vec<WorkerId> {
        let excess = self.idle_pool.len().saturating_sub(max_idle);
        let victims: Vec<WorkerId> = self.idle_pool.values().take(excess).copied().collect();
        assert_eq!(victims.len(), excess);
        victims
    }

    /// Every idle pool worker, oldest first.
    pub(crate) fn idle_pool(&self) -> Vec<WorkerId> {
        self.idle_pool.values().copied().collect()
    }

    /// Forgets a worker (it exited or failed to start).
    pub(crate) fn remove(&mut self, worker: WorkerId) -> WorkerInfo {
        if let Some(tick) = self.idle_tick_of.remove(&worker) {
            self.idle_pool.remove(&tick);
        }
        let info = self.workers.remove(&worker).expect("removing an unknown worker");
        assert!(!self.idle_tick_of.contains_key(&worker));
        info
    }

    /// Panics if the table is inconsistent.
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.idle_pool.len(), self.idle_tick_of.len(), "idle index sizes");
        for (tick, worker) in &self.idle_pool {
            assert_eq!(self.idle_tick_of.get(worker), Some(tick), "idle index out of step for {worker}");
            let info = self.workers.get(worker).expect("idle worker exists");
            assert_eq!(info.state, WorkerState::Idle, "{worker} in the idle pool is not idle");
            assert_eq!(info.kind, WorkerKind::Pool, "{worker} in the idle pool is not a pool worker");
        }
        for (worker, info) in &self.workers {
            assert!(worker.0 < self.next_id, "{worker} allocated in the future");
            let idle_pool = info.state == WorkerState::Idle && info.kind == WorkerKind::Pool;
            assert_eq!(idle_pool, self.idle_tick_of.contains_key(worker), "{worker} idle but not in the pool");
            assert!(info.gpus.windows(2).all(|p| p[0] < p[1]), "{worker} GPU devices not in order");
        }
    }
}
