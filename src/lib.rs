//! Keel's Rust API: remote functions, object references, and a cluster to run them on.
//!
//! ```no_run
//! use keel::{actor, method, remote, ActorClass, Method, Remote};
//!
//! static SQUARE: Remote<(u64,), u64> = remote("square", |(x,)| x * x);
//! static ADD: Remote<(u64, u64), u64> = remote("add", |(a, b)| a + b);
//!
//! struct Counter { total: i64 }
//! static COUNTER: ActorClass<Counter, (i64,)> = actor("Counter", |(start,)| Counter { total: start });
//! static INCR: Method<Counter, (i64,), i64> = method("Counter.incr", |c, (x,)| { c.total += x; c.total });
//!
//! fn main() -> keel::Result<()> {
//!     // Connects to $KEEL_ADDRESS, or starts a head and a node in this process. A node runs this
//!     // same binary as its worker: then `init` serves tasks and never returns.
//!     let keel = keel::init(&[&SQUARE, &ADD, &COUNTER, &INCR])?;
//!     let (a, b) = (SQUARE.call(&keel, (3,))?, SQUARE.call(&keel, (4,))?);
//!     let sum = ADD.call(&keel, (&a, &b))?;            // arguments: values or references
//!     assert_eq!(keel.get(&sum)?, 25);
//!     let counter = COUNTER.create(&keel, (10,))?;
//!     assert_eq!(keel.get(&INCR.call(&keel, &counter, (5,))?)?, 15);
//!     Ok(())
//! }
//! ```
//!
//! Values travel as postcard bytes (serde). Small values travel inline; large ones stay in the
//! shared-memory store of the node that made them and are read from there: mapped without a copy
//! on the same machine, fetched over the node's data port from another.
//!
//! The crate sets mimalloc as the program's global allocator (feature `mimalloc`, on by default);
//! a program with its own `#[global_allocator]` turns the feature off.

mod api;

/// Keel programs allocate with mimalloc (feature `mimalloc`, on by default), as the `keel` daemons
/// do: the head and node embedded in a driver run the same code as the daemons and measurably
/// faster on it than on the system allocator. A program that sets its own `#[global_allocator]`
/// turns the feature off.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use api::{
    actor, current, init, method, remote, ActorClass, ActorHandle, ActorOptions, ActorState, ArgFor, Args, Blob,
    BlobView, Error, Handle, IntoArgs, Keel, Method, ObjectRef, PlacementGroup, Registered, Remote, Result,
    TaskOptions,
};
pub use keel_kernel::errors::{ErrorReason, TaskFailure};
pub use keel_kernel::proto::{LabelConstraint, PlacementStrategy, SchedulingStrategy};
pub use keel_kernel::{ActorId, NodeId, ObjectId, PlacementGroupId};
pub use keel_kernel::{Amount, ResourceSet};
