//! Argument pulls from peers, with retry over the holders and a timeout per try.
//!
//! One pull per object, however many tasks wait for it (deduplication). A pull asks one holder at a
//! time, in the order the head listed them, going round the list up to `pull_max_attempts` times;
//! a try ends with the bytes (`ObjectSealed`), or fails on `PullReply { size: None }`, `PullFailed`
//! or when its deadline (`pull_timeout` after it started, restarted by a positive `PullReply`) passes.

use crate::ids::{NodeId, ObjectId, TaskId};
use crate::time::{Duration, Time};
use crate::vecset::VecSet;
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

/// One object being pulled.
#[derive(Clone, Debug)]
pub(crate) struct Pull {
    /// Expected size in bytes (the sealed size wins).
    pub(crate) size: u64,
    /// Holders to try, in order (never this node).
    pub(crate) holders: Vec<NodeId>,
    /// Tries started so far, the current one included (at least 1).
    pub(crate) tries: u32,
    /// When the current try times out.
    pub(crate) deadline: Time,
    /// Tasks waiting for it as an argument.
    pub(crate) waiters: VecSet<TaskId>,
    /// The head asked for a copy (`CopyObject`), so the pull goes on with no waiter.
    pub(crate) for_copy: bool,
}

impl Pull {
    /// The holder asked in the current try.
    pub(crate) fn current(&self) -> NodeId {
        assert!(self.tries >= 1);
        assert!(!self.holders.is_empty());
        self.holders[(self.tries as usize - 1) % self.holders.len()]
    }

    /// Whether anyone still wants the bytes.
    pub(crate) fn is_wanted(&self) -> bool {
        self.for_copy || !self.waiters.is_empty()
    }
}

/// What happened when the current try failed.
#[derive(Debug)]
pub(crate) enum Advance {
    /// Try this holder next.
    Retry(NodeId),
    /// Every try failed; the pull is gone.
    Exhausted(Pull),
}

/// Every pull in progress.
#[derive(Clone, Debug)]
pub(crate) struct PullTable {
    /// Hashed: looked up by object; listed (rarely) in object order by [`iter`](Self::iter).
    pulls: FxHashMap<ObjectId, Pull>,
    /// `(deadline, object)` for every pull.
    deadlines: BTreeSet<(Time, ObjectId)>,
    max_rounds: u32,
    timeout: Duration,
}

impl PullTable {
    pub(crate) fn new(max_rounds: u32, timeout: Duration) -> PullTable {
        assert!(max_rounds >= 1, "pull_max_attempts must be at least 1");
        assert!(timeout > Duration::ZERO, "pull_timeout must be positive");
        PullTable { pulls: FxHashMap::default(), deadlines: BTreeSet::new(), max_rounds, timeout }
    }

    pub(crate) fn clear(&mut self) {
        self.pulls.clear();
        self.deadlines.clear();
        assert!(self.pulls.is_empty());
    }

    pub(crate) fn get(&self, object: ObjectId) -> Option<&Pull> {
        self.pulls.get(&object)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ObjectId, &Pull)> {
        let mut pulls: Vec<(ObjectId, &Pull)> = self.pulls.iter().map(|(o, p)| (*o, p)).collect();
        pulls.sort_unstable_by_key(|(o, _)| *o);
        pulls.into_iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.pulls.len()
    }

    /// Starts pulling `object` from `holders` (non-empty, without this node); returns the first to ask.
    pub(crate) fn start(&mut self, object: ObjectId, size: u64, holders: Vec<NodeId>, now: Time) -> NodeId {
        assert!(!holders.is_empty(), "a pull needs a holder");
        assert!(!self.pulls.contains_key(&object), "{object} is already being pulled");
        let deadline = now + self.timeout;
        let pull = Pull { size, holders, tries: 1, deadline, waiters: VecSet::new(), for_copy: false };
        let first = pull.current();
        self.pulls.insert(object, pull);
        self.deadlines.insert((deadline, object));
        first
    }

    /// `task` waits for `object` too.
    pub(crate) fn add_waiter(&mut self, object: ObjectId, task: TaskId) {
        let pull = self.pulls.get_mut(&object).expect("waiting on a pull that does not exist");
        let added = pull.waiters.insert(task);
        assert!(added, "{task} already waits for {object}");
    }

    /// `task` no longer waits; returns whether the pull is still wanted.
    pub(crate) fn remove_waiter(&mut self, object: ObjectId, task: TaskId) -> bool {
        let pull = self.pulls.get_mut(&object).expect("leaving a pull that does not exist");
        let removed = pull.waiters.remove(&task);
        assert!(removed, "{task} did not wait for {object}");
        pull.is_wanted()
    }

    pub(crate) fn set_for_copy(&mut self, object: ObjectId) {
        let pull = self.pulls.get_mut(&object).expect("copy of a pull that does not exist");
        pull.for_copy = true;
    }

    /// The current holder answered that it is sending: the try's deadline restarts from `now`.
    pub(crate) fn extend(&mut self, object: ObjectId, now: Time) {
        let pull = self.pulls.get_mut(&object).expect("extending a pull that does not exist");
        let removed = self.deadlines.remove(&(pull.deadline, object));
        assert!(removed, "deadline index out of step for {object}");
        pull.deadline = pull.deadline.max(now + self.timeout);
        self.deadlines.insert((pull.deadline, object));
    }

    /// The current try failed: move to the next holder, or give up after `max_rounds` rounds.
    pub(crate) fn advance(&mut self, object: ObjectId, now: Time) -> Advance {
        let pull = self.pulls.get_mut(&object).expect("advancing a pull that does not exist");
        let removed = self.deadlines.remove(&(pull.deadline, object));
        assert!(removed, "deadline index out of step for {object}");
        let max_tries = self.max_rounds.saturating_mul(pull.holders.len() as u32);
        if pull.tries >= max_tries {
            let pull = self.pulls.remove(&object).expect("pull exists");
            return Advance::Exhausted(pull);
        }
        pull.tries += 1;
        pull.deadline = now + self.timeout;
        self.deadlines.insert((pull.deadline, object));
        Advance::Retry(pull.current())
    }

    /// Ends a pull (its bytes arrived, or nobody wants them any more).
    pub(crate) fn remove(&mut self, object: ObjectId) -> Option<Pull> {
        let pull = self.pulls.remove(&object)?;
        let removed = self.deadlines.remove(&(pull.deadline, object));
        assert!(removed, "deadline index out of step for {object}");
        Some(pull)
    }

    /// Pulls whose current try timed out at `now`, earliest first.
    pub(crate) fn expired(&self, now: Time) -> Vec<ObjectId> {
        self.deadlines.iter().take_while(|(t, _)| *t <= now).map(|(_, o)| *o).collect()
    }

    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Panics if the table is inconsistent.
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.deadlines.len(), self.pulls.len(), "deadline index size");
        for (object, pull) in self.iter() {
            assert!(self.deadlines.contains(&(pull.deadline, object)), "{object} missing from deadline index");
            assert!(pull.tries >= 1, "{object} pull never tried");
            assert!(pull.tries <= self.max_rounds * pull.holders.len() as u32, "{object} tried too often");
            assert!(pull.is_wanted(), "{object} pulled for nobody");
        }
    }
}
