//! # keel-kernel: Keel's pure, deterministic state machines
//!
//! Everything in Keel that *decides* lives here; everything that touches the world (sockets,
//! processes, shared memory, clocks) lives in a host that drives these machines. The same code runs
//! in a production cluster, in the seeded simulator, in trace replay and under the fuzzer.
//!
//! ## The contract
//!
//! [`Head`] (the cluster brain) and [`Node`] (one per machine) are driven the same way:
//!
//! ```
//! use keel_kernel::{Head, HeadConfig, Time};
//! let mut head = Head::new(HeadConfig::default());
//! let now = Time::ZERO;
//! // head.handle_input(now, input)?;           // every input comes with `now`
//! while let Some(output) = head.poll_output() { // drain completely after every input or timeout
//!     let _ = output;                           // the host performs it (send, start a worker...)
//! }
//! if let Some(deadline) = head.poll_timeout() { // call handle_timeout(t) once the clock reaches it
//!     head.handle_timeout(deadline.max(now));
//! }
//! head.check_invariants();                      // tests and the simulator call this after every step
//! ```
//!
//! - **Time is data.** Every entry point takes `now` ([`Time`], nanoseconds); the caller keeps it
//!   monotonic. The kernel never reads a clock.
//! - **Randomness is seeded and owned**: each machine holds an RNG seeded from its config.
//! - **Ordered iteration only**: ordered maps and sets wherever order can reach an output; hashed
//!   maps (seedless `FxHash`) serve lookups only, and whatever is listed from them is sorted first.
//!   So the same inputs give the same outputs, byte for byte, on every machine and every run.
//! - **Outputs are commands** (send a message, start a worker, free an object); the host performs
//!   them and reports what happened as inputs.
//! - **Two kinds of errors.** Users' problems are typed reasons ([`ErrorReason`]) delivered to
//!   whoever waits; bad input is an [`InputError`] returned to the host (and to the sender) that
//!   changes nothing already accepted. Kernel bugs are panics.
//! - No I/O, no clock, no threads, no unsafe code.
//!
//! ## Modules
//!
//! - [`ids`], [`time`]: newtype ids and time values.
//! - [`resources`]: fixed-point amounts, resource sets, pools with GPU devices.
//! - [`proto`]: the messages, one enum per direction.
//! - [`errors`]: typed reasons and input errors.
//! - [`head`]: the Head machine (nodes, scheduling, tasks, objects, lineage, actors, placement groups, jobs).
//! - [`node`]: the Node machine (worker leases, local objects, argument pulls, task lifecycle, heartbeats).
//! - `testkit` (feature `testkit`): an in-memory stepper wiring a Head to Nodes, for tests, fuzzing and demos.
//! - `synthetic` (feature `testkit`): a Head driven with synthesised node answers, for benchmarks.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Messages are built once and moved to the host; boxing the large variants would cost an
// allocation per message for nothing.
#![allow(clippy::large_enum_variant)]

pub mod autoscaler;
pub mod errors;
pub mod head;
pub mod ids;
pub mod node;
pub mod proto;
pub mod resources;
pub mod slab;
#[cfg(feature = "testkit")]
pub mod synthetic;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod time;
pub mod vecset;

pub use errors::{ActorDeath, ErrorReason, InputError, TaskFailure};
pub use head::{Head, HeadConfig, HeadInput, HeadOutput};
pub use ids::{ActorId, ConnId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
pub use node::{Node, NodeConfig, NodeInput, NodeOutput};
pub use resources::{Allocation, Amount, ResourcePool, ResourceSet, ResourceSum};
pub use time::{Duration, Time};
