//! Newtype identifiers. Every id is a small `Copy` value, ordered, and never a string.
//!
//! Node, job, actor and placement-group ids are allocated by the Head in increasing order, so a
//! restarted node that registers again always gets a new [`NodeId`]. Task and object ids are
//! chosen by the submitter (as in Ray), so that a driver can hand out `ObjectRef`s without a
//! round trip: [`TaskId::child`] derives them deterministically, and the Head rejects a
//! duplicate with a typed error.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

id_type!(
    /// A registered node. A node that is declared dead and comes back registers again and gets a new id.
    NodeId,
    "n"
);
id_type!(
    /// A job: one driver's session with the cluster.
    JobId,
    "j"
);
id_type!(
    /// A task (all of its attempts share the id).
    TaskId,
    "t"
);
id_type!(
    /// An actor.
    ActorId,
    "a"
);
id_type!(
    /// A placement group.
    PlacementGroupId,
    "pg"
);
id_type!(
    /// A worker process on one node, chosen by that node.
    WorkerId,
    "w"
);
id_type!(
    /// An opaque connection handle chosen by the host, used only to answer a registration.
    ConnId,
    "c"
);

/// SplitMix64's finaliser: a bijective mix of 64 bits, used to derive ids deterministically.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TaskId {
    /// The id that stands for a job's driver when it owns objects or submits tasks.
    pub const fn driver(job: JobId) -> TaskId {
        TaskId(mix64(job.0 ^ 0x6b65_656c_0000_0000))
    }

    /// The id under which attempt `attempt` of `task` puts objects ([`ObjectId::for_task_put`]).
    pub const fn put_space(task: TaskId, attempt: u32) -> TaskId {
        TaskId::child(task, attempt, u64::MAX)
    }

    /// The id of the `seq`-th task submitted by `attempt` of `parent`. Deterministic, so a
    /// recorded run replays with the same ids; each attempt has its own id space.
    pub const fn child(parent: TaskId, attempt: u32, seq: u64) -> TaskId {
        TaskId(mix64(mix64(parent.0 ^ ((attempt as u64) << 48)).wrapping_add(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
    }
}

/// An object: the `index`-th output of a task (1-based), or a `put` by a task or driver.
///
/// Return values and puts share the producer's id, so the producing task of a return value is
/// known from the id alone; put indices have [`ObjectId::PUT_BIT`] set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ObjectId {
    /// The task (or driver) that produced or put the object.
    pub task: TaskId,
    /// 1-based return index, or a put counter with [`ObjectId::PUT_BIT`] set.
    pub index: u32,
}

impl ObjectId {
    /// Set on the index of objects created by `put`.
    pub const PUT_BIT: u32 = 1 << 31;

    /// The `index`-th (1-based) return value of `task`.
    pub fn for_return(task: TaskId, index: u32) -> ObjectId {
        assert!(index >= 1, "return indices are 1-based");
        assert!(index & Self::PUT_BIT == 0, "return index too large");
        ObjectId { task, index }
    }

    /// The `seq`-th object put by a driver (`task` is its [`TaskId::driver`]).
    pub fn for_put(task: TaskId, seq: u32) -> ObjectId {
        assert!(seq & Self::PUT_BIT == 0, "put counter overflow");
        ObjectId { task, index: seq | Self::PUT_BIT }
    }

    /// The `seq`-th object put by attempt `attempt` of a running task. Each attempt has its own
    /// put ids, so a retried task never collides with what a failed attempt put.
    pub fn for_task_put(task: TaskId, attempt: u32, seq: u32) -> ObjectId {
        ObjectId::for_put(TaskId::put_space(task, attempt), seq)
    }

    /// Whether the object was created by `put` (and so cannot be rebuilt from lineage).
    pub fn is_put(self) -> bool {
        self.index & Self::PUT_BIT != 0
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_put() {
            write!(f, "o{}.p{}", self.task.0, self.index & !Self::PUT_BIT)
        } else {
            write!(f, "o{}.{}", self.task.0, self.index)
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_differ_by_attempt_and_seq() {
        let p = TaskId::driver(JobId(1));
        let a = TaskId::child(p, 0, 0);
        assert_ne!(a, TaskId::child(p, 0, 1));
        assert_ne!(a, TaskId::child(p, 1, 0));
        assert_eq!(a, TaskId::child(p, 0, 0));
        assert_ne!(TaskId::driver(JobId(1)), TaskId::driver(JobId(2)));
    }

    #[test]
    fn put_and_return_ids_are_distinguished() {
        let t = TaskId(7);
        assert!(ObjectId::for_put(t, 1).is_put());
        assert!(!ObjectId::for_return(t, 1).is_put());
        assert_ne!(ObjectId::for_put(t, 1), ObjectId::for_return(t, 1));
    }
}
