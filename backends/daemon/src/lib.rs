//! Keel's daemons: thin hosts around the kernel's machines.
//!
//! - [`head`]: hosts the Head machine. It accepts authenticated connections from nodes, drivers
//!   and operators, feeds their messages to the machine with the time since the head started, and
//!   routes the machine's outputs back to the right connection.
//! - [`node`]: hosts a Node machine. It registers with the head (reconnecting with backoff),
//!   starts and kills worker processes, streams their output to the head, and talks to peer nodes
//!   on its data port.
//! - [`worker`]: the worker process for command tasks (`keel worker`).
//!
//! Every decision (where a task runs, when to retry, which worker to reuse, what to free) is the
//! kernel's. The hosts only perform outputs and report what happened as inputs.

pub mod client;
pub mod conn;
pub mod head;
pub mod journal;
pub mod node;
pub mod recording;
pub mod worker;

/// The result value of a command task: the command's exit code (128 + signal when killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandResult {
    /// The exit code.
    pub exit_code: i32,
}
