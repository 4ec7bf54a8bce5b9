//! Keel's Rust API: remote functions, object references, and a cluster to run them on.
//!
//! ```no_run
//! use keel::{remote, Remote};
//!
//! static SQUARE: Remote<(u64,), u64> = remote("square", |(x,)| x * x);
//! static ADD: Remote<(u64, u64), u64> = remote("add", |(a, b)| a + b);
//!
//! fn main() -> keel::Result<()> {
//!     // Connects to $KEEL_ADDRESS, or starts a local cluster in this process. When a node starts
//!     // this same binary as a worker, `init` runs the worker and never returns.
//!     let keel = keel::init(&[&SQUARE, &ADD])?;
//!     let a = SQUARE.call(&keel, (3,))?;           // an ObjectRef<u64>; the task runs somewhere
//!     let b = SQUARE.call(&keel, (4,))?;
//!     let sum = ADD.call(&keel, (&a, &b))?;        // arguments may be values or references
//!     assert_eq!(keel.get(&sum)?, 25);
//!     Ok(())
//! }
//! ```
//!
//! Values travel as postcard bytes (serde). Small values travel inline; large ones stay in the
//! shared-memory store of the node that made them and are read from there: mapped without a copy
//! on the same machine, fetched over the node's data port from another.

mod api;

pub use api::{
    actor, current, init, method, remote, ActorClass, ActorHandle, ActorOptions, ActorState, ArgFor, Args, Error,
    Handle, IntoArgs, Keel, Method, ObjectRef, PlacementGroup, Registered, Remote, Result, TaskOptions,
};
pub use keel_kernel::errors::{ErrorReason, TaskFailure};
pub use keel_kernel::proto::{LabelConstraint, PlacementStrategy, SchedulingStrategy};
pub use keel_kernel::{ActorId, NodeId, ObjectId, PlacementGroupId};
pub use keel_kernel::{Amount, ResourceSet};
