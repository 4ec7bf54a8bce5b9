//! Faults: what can go wrong, when, and the randomised mix of swarm testing.
//!
//! A fault names hosts by index (0-based, in the order the scenario's cluster lists them), not
//! by node id: a host that restarts registers as a new node. Every fault that lasts heals by
//! itself at the end of its duration, and every fault heals when the safety phase ends, so the
//! liveness phase always runs on a healthy cluster.

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// One thing that goes wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The host's machine dies (workers and stored bytes are lost); it comes back as a new node
    /// after `restart_ms`, or at the end of the safety phase when not given.
    CrashNode {
        /// The host.
        host: usize,
        /// Down for this long.
        restart_ms: Option<u64>,
    },
    /// The network between the host and the head is cut, in the directions named, for `ms`.
    /// The connection stays up, so what crosses the cut is held back and delivered, in order,
    /// when it heals (TCP retransmits); meanwhile the head may declare the node dead. A one-way
    /// cut is an asymmetric partition.
    Partition {
        /// The host.
        host: usize,
        /// Lasts this long.
        ms: u64,
        /// Messages from the head to the host are lost.
        #[serde(default = "yes")]
        inbound: bool,
        /// Messages from the host to the head are lost.
        #[serde(default = "yes")]
        outbound: bool,
    },
    /// The host's links are clogged: every message to or from it takes `extra_ms` more (and
    /// keeps its order), for `ms`.
    Clog {
        /// The host.
        host: usize,
        /// Lasts this long.
        ms: u64,
        /// Extra delay per message.
        extra_ms: u64,
    },
    /// The host stops for `ms` (a stalled process or a swapping machine): it handles nothing and
    /// sends nothing, then catches up. Its heartbeats stop too.
    Pause {
        /// The host.
        host: usize,
        /// Lasts this long.
        ms: u64,
    },
    /// A worker running a task on the host dies (the lowest-numbered busy worker).
    CrashWorker {
        /// The host.
        host: usize,
    },
    /// The next task started on the host hangs until `ms` later, when its worker is killed.
    Hang {
        /// The host.
        host: usize,
        /// The hung worker is killed after this long.
        ms: u64,
    },
    /// Messages between the head and the hosts are duplicated with probability `p`, for `ms`.
    Duplicate {
        /// Probability per message.
        p: f64,
        /// Lasts this long.
        ms: u64,
    },
    /// Messages between nodes (pulls and their replies) are reordered: each takes a random extra
    /// delay of up to `jitter_ms`, with no order kept, for `ms`.
    Reorder {
        /// Maximum extra delay.
        jitter_ms: u64,
        /// Lasts this long.
        ms: u64,
    },
    /// Swizzle-clogging (FoundationDB's): a random half of the hosts get their links clogged one
    /// after another, then unclogged in another random order, over about `ms`.
    Swizzle {
        /// How long the swizzle lasts.
        ms: u64,
    },
    /// The connection between the host and the head breaks: messages in flight are lost and
    /// the host's daemon starts over, registering again as a new node.
    Disconnect {
        /// The host.
        host: usize,
    },
    /// The job's driver exits: the Head ends the job and everything it owned.
    DriverExit,
    /// The cloud takes back a node the autoscaler launched (a spot reclaim): the oldest one
    /// running, of `node_type` when given. It stops at once and never comes back; the head finds
    /// out when its heartbeats stop.
    Preempt {
        /// Only nodes of this type.
        node_type: Option<String>,
    },
}

fn yes() -> bool {
    true
}

impl Fault {
    /// The host the fault names, if any.
    pub fn host(&self) -> Option<usize> {
        match self {
            Fault::CrashNode { host, .. }
            | Fault::Partition { host, .. }
            | Fault::Clog { host, .. }
            | Fault::Pause { host, .. }
            | Fault::CrashWorker { host }
            | Fault::Hang { host, .. }
            | Fault::Disconnect { host } => Some(*host),
            Fault::Duplicate { .. }
            | Fault::Reorder { .. }
            | Fault::Swizzle { .. }
            | Fault::DriverExit
            | Fault::Preempt { .. } => None,
        }
    }

    /// A short name, for summaries.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::CrashNode { .. } => "crash_node",
            Fault::Partition { .. } => "partition",
            Fault::Clog { .. } => "clog",
            Fault::Pause { .. } => "pause",
            Fault::CrashWorker { .. } => "crash_worker",
            Fault::Hang { .. } => "hang",
            Fault::Duplicate { .. } => "duplicate",
            Fault::Reorder { .. } => "reorder",
            Fault::Swizzle { .. } => "swizzle",
            Fault::Disconnect { .. } => "disconnect",
            Fault::DriverExit => "driver_exit",
            Fault::Preempt { .. } => "preempt",
        }
    }
}

/// A fault at a time (milliseconds from the start of the run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    /// When.
    pub at_ms: u64,
    /// What.
    pub fault: Fault,
}

/// The fault kinds swarm testing draws from.
pub const SWARM_KINDS: [&str; 10] = [
    "crash_node",
    "partition",
    "clog",
    "pause",
    "crash_worker",
    "hang",
    "duplicate",
    "reorder",
    "swizzle",
    "disconnect",
];

/// Draws `count` faults over `0..until_ms` for a cluster of `hosts` hosts, from a mix that is
/// itself drawn from the seed (swarm testing: each seed enables a random subset of `kinds`).
pub fn swarm(rng: &mut Rng, hosts: usize, count: usize, until_ms: u64, kinds: &[String]) -> Vec<Timed> {
    if hosts == 0 || kinds.is_empty() || until_ms == 0 {
        return Vec::new();
    }
    let enabled: Vec<&String> = {
        let mut e: Vec<&String> = kinds.iter().filter(|_| rng.chance(0.5)).collect();
        if e.is_empty() {
            e.push(rng.pick(kinds));
        }
        e
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let at_ms = rng.below(until_ms);
        let host = rng.below(hosts as u64) as usize;
        let kind = rng.pick(&enabled).as_str();
        let fault = match kind {
            "crash_node" => Fault::CrashNode { host, restart_ms: Some(rng.between(100, 3000)) },
            "partition" => {
                let (inbound, outbound) = match rng.below(3) {
                    0 => (true, true),
                    1 => (true, false),
                    _ => (false, true),
                };
                Fault::Partition { host, ms: rng.between(100, 3000), inbound, outbound }
            }
            "clog" => Fault::Clog { host, ms: rng.between(100, 2000), extra_ms: rng.between(5, 200) },
            "pause" => Fault::Pause { host, ms: rng.between(50, 2000) },
            "crash_worker" => Fault::CrashWorker { host },
            "hang" => Fault::Hang { host, ms: rng.between(100, 2000) },
            "duplicate" => Fault::Duplicate { p: 0.2, ms: rng.between(100, 2000) },
            "reorder" => Fault::Reorder { jitter_ms: rng.between(1, 50), ms: rng.between(100, 2000) },
            "swizzle" => Fault::Swizzle { ms: rng.between(200, 2000) },
            "disconnect" => Fault::Disconnect { host },
            other => unreachable!("unknown swarm kind {other}: checked when the scenario is read"),
        };
        out.push(Timed { at_ms, fault });
    }
    out.sort_by_key(|t| t.at_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn swarm_is_a_function_of_the_seed_and_stays_in_bounds() {
        let kinds: Vec<String> = SWARM_KINDS.iter().map(|s| s.to_string()).collect();
        let a = swarm(&mut Rng::new(5, Stream::Faults), 4, 20, 1000, &kinds);
        let b = swarm(&mut Rng::new(5, Stream::Faults), 4, 20, 1000, &kinds);
        assert_eq!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.iter().all(|t| t.at_ms < 1000 && t.fault.host().is_none_or(|h| h < 4)));
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let mixes: std::collections::BTreeSet<Vec<&str>> = (0..20)
            .map(|s| {
                let mut k: Vec<&str> = swarm(&mut Rng::new(s, Stream::Faults), 4, 30, 1000, &kinds)
                    .iter()
                    .map(|t| t.fault.name())
                    .collect();
                k.sort_unstable();
                k.dedup();
                k
            })
            .collect();
        assert!(mixes.len() > 5, "the fault mix itself varies with the seed");
    }
}
