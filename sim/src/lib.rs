//! Keel's deterministic simulator.
//!
//! A single-threaded, seeded, discrete-event [`World`](world::World) runs the kernel's real
//! `Head` and `Node` machines unchanged, carries their messages over a simulated network, runs
//! their tasks in simulated worker processes, injects faults and checks oracles. A run is a
//! function of its [`Params`](world::Params) and seed: the same seed gives the same event log,
//! whose hash every run reports.
//!
//! - [`world`]: the event queue, the network, hosts, workers, the driver, faults.
//! - [`workload`]: what a job does, and generators (map-reduce, chains, fan-out, actors, gangs,
//!   random DAGs).
//! - [`faults`]: fault kinds, schedules and the swarm mix drawn from the seed.
//! - [`oracle`]: the properties every run must keep, kept apart from the world model.
//! - [`autoscale`]: autoscaling clusters in TOML: settings, node types, simulated provider.
//! - [`scenario`]: scenario files (TOML): cluster, workload, faults, expectations.
//! - [`provider`]: the simulated cloud provider: launch delays and failures, spot reclaims, cost.
//! - [`rng`]: one seed, one stream per concern.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod autoscale;
pub mod faults;
pub mod oracle;
pub mod provider;
pub mod rng;
pub mod scenario;
pub mod shrink;
pub mod workload;
pub mod world;
