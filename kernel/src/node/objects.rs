//! The node's handling of object events: sealed pulls, pull failures and timeouts, serving peers'
//! pulls, transfers ending, frees and copies. The pull protocol is described in the module docs.

use super::io::NodeOutput;
use super::pulls::Advance;
use super::store::FreeResult;
use super::Node;
use crate::errors::{InputError, TaskFailure};
use crate::ids::{NodeId, ObjectId};
use crate::proto::{NodeToHead, NodeToNode};
use crate::time::Time;

impl Node {
    /// Records a local copy, evicting older secondary copies to make room (each eviction deletes the
    /// bytes and is reported to the head). A pull of the same object in progress is complete: its
    /// waiters get the argument.
    pub(super) fn seal_here(&mut self, object: ObjectId, size: u64, primary: bool) {
        let pull = self.pulls.remove(object);
        for evicted in self.objects.insert(object, size, primary) {
            assert_ne!(evicted, object, "a new copy evicted itself");
            self.emit(NodeOutput::DeleteObject(evicted));
            self.send_to_head(NodeToHead::ObjectRemoved(evicted));
        }
        assert!(self.objects.contains(object));
        for task in pull.map(|p| p.waiters).unwrap_or_default() {
            self.argument_arrived(task, object);
        }
    }

    /// `ClientPut`: a client sealed its put here; a primary copy, like a worker's put.
    pub(super) fn on_client_put(&mut self, object: ObjectId, size: u64) -> Result<(), InputError> {
        self.registered()?;
        if !object.is_put() {
            return Err(InputError::Malformed { what: format!("{object} is not a put id") });
        }
        if self.objects.contains(object) {
            return Err(InputError::DuplicateObject(object));
        }
        self.seal_here(object, size, true);
        Ok(())
    }

    /// `ObjectSealed`: a pull completed. Its waiters get the argument; unsolicited bytes are deleted.
    pub(super) fn on_object_sealed(&mut self, object: ObjectId, size: u64) -> Result<(), InputError> {
        self.registered()?;
        if self.objects.contains(object) {
            return Err(InputError::DuplicateObject(object));
        }
        if self.pulls.get(object).is_none() {
            self.emit(NodeOutput::DeleteObject(object));
            return Ok(());
        }
        self.send_to_head(NodeToHead::ObjectAdded { object, size });
        self.seal_here(object, size, false);
        Ok(())
    }

    /// `PullProgress`: bytes are arriving from the current holder; its try's deadline restarts.
    /// Progress from another peer (an earlier try's late bytes) or for no pull changes nothing.
    pub(super) fn on_pull_progress(&mut self, now: Time, object: ObjectId, from: NodeId) -> Result<(), InputError> {
        self.registered()?;
        if self.pulls.get(object).is_some_and(|p| p.current() == from) {
            self.pulls.extend(object, now);
        }
        Ok(())
    }

    /// `PullFailed`: the data path from `from` failed. Only the current holder's failure counts.
    pub(super) fn on_pull_failed(&mut self, now: Time, object: ObjectId, from: NodeId) -> Result<(), InputError> {
        self.registered()?;
        let pull = self.pulls.get(object).ok_or(InputError::UnknownObject(object))?;
        if pull.current() == from {
            self.advance_pull(now, object);
        }
        Ok(())
    }

    /// The current try of a pull failed or timed out: ask the next holder, or fail its waiters.
    pub(super) fn advance_pull(&mut self, now: Time, object: ObjectId) {
        match self.pulls.advance(object, now) {
            Advance::Retry(node) => self.emit(NodeOutput::ToPeer { node, msg: NodeToNode::Pull { object } }),
            Advance::Exhausted(pull) => {
                for task in pull.waiters {
                    self.abort_task(task, TaskFailure::ArgumentUnavailable { object });
                }
            }
        }
        assert!(!self.objects.contains(object), "pulled {object} is already local");
    }

    /// A peer pulls `object`: send it if we hold a copy that was not freed.
    pub(super) fn on_peer_pull(&mut self, from: NodeId, object: ObjectId) {
        let size = self.objects.get(object).filter(|e| !e.free_pending).map(|e| e.size);
        self.emit(NodeOutput::ToPeer { node: from, msg: NodeToNode::PullReply { object, size } });
        if let Some(size) = size {
            self.objects.begin_send(object, from);
            self.emit(NodeOutput::SendObject { object, to: from, size });
        }
    }

    /// A holder answered our pull. Answers from a holder we no longer ask are ignored.
    pub(super) fn on_pull_reply(&mut self, now: Time, from: NodeId, object: ObjectId, size: Option<u64>) {
        let Some(pull) = self.pulls.get(object) else { return };
        if pull.current() != from {
            return;
        }
        match size {
            Some(_) => self.pulls.extend(object, now),
            None => self.advance_pull(now, object),
        }
    }

    /// `SendEnded`: a transfer to a peer ended; the copy is deleted if it was freed meanwhile.
    pub(super) fn on_send_ended(&mut self, object: ObjectId, to: NodeId) -> Result<(), InputError> {
        self.registered()?;
        let deleted = self.objects.end_send(object, to).ok_or(InputError::UnknownObject(object))?;
        if deleted {
            self.emit(NodeOutput::DeleteObject(object));
        }
        Ok(())
    }

    /// `FreeObjects`: delete each local copy now or once unpinned; stop copies nobody needs now.
    /// Objects not here are skipped (the head may race with an eviction).
    pub(super) fn on_free_objects(&mut self, objects: Vec<ObjectId>) {
        for object in objects {
            if self.objects.free(object) == FreeResult::Deleted {
                self.emit(NodeOutput::DeleteObject(object));
            }
            let copy_only = self.pulls.get(object).is_some_and(|p| p.waiters.is_empty());
            if copy_only {
                self.pulls.remove(object);
            }
        }
    }

    /// `CopyObject`: fetch a secondary copy unless one is here, on its way, or could not fit.
    pub(super) fn on_copy_object(&mut self, now: Time, object: ObjectId, size: u64, from: Vec<NodeId>) {
        if self.objects.contains(object) {
            return;
        }
        if self.pulls.get(object).is_some() {
            self.pulls.set_for_copy(object);
            return;
        }
        let me = self.node_id.expect("registered");
        let holders: Vec<NodeId> = from.into_iter().filter(|n| *n != me).collect();
        if holders.is_empty() || !self.objects.could_fit(size) {
            return;
        }
        let first = self.pulls.start(object, size, holders, now);
        self.pulls.set_for_copy(object);
        self.emit(NodeOutput::ToPeer { node: first, msg: NodeToNode::Pull { object } });
    }

    pub(super) fn check_objects_against_tasks(&self) {
        for (object, entry) in self.objects.iter() {
            assert!(self.pulls.get(object).is_none(), "{object} is local and pulled");
            for task in &entry.pinned_by {
                let record = self.tasks.get(task).expect("pinned by an unknown task");
                assert!(record.pinned.contains(&object), "{task} does not know it pins {object}");
            }
        }
        for (object, pull) in self.pulls.iter() {
            for task in &pull.waiters {
                let record = self.tasks.get(task).expect("pull waited on by an unknown task");
                assert!(record.missing.contains(&object), "{task} waits on {object} it does not miss");
            }
        }
    }
}
