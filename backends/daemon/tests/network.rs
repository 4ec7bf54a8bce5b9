//! The real head and node daemons over turmoil's simulated network: partitions that heal, frames
//! held back and delivered late, and hosts that crash and come back. Simulated time: a minute of
//! cluster life takes a moment.
//!
//! Each test runs a head host, node hosts and a probe client that asks the head for its status
//! (`keel status`'s request) to see what the head believes. Node ids are the head's: a node that
//! registers again gets a new one.

use keel_daemon::client;
use keel_daemon::head::{self, HeadOptions};
use keel_daemon::node::{self, NodeOptions};
use keel_kernel::ids::NodeId;
use keel_kernel::ResourceSet;
use keel_net::transport::Sim;
use keel_net::wire::{ClusterStatus, WorkerProgram};
use keel_net::Token;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn token() -> Token {
    Token::from_bytes(b"a-turmoil-cluster-token-01234567").unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-net-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sim(seconds: u64) -> turmoil::Sim<'static> {
    turmoil::Builder::new().simulation_duration(Duration::from_secs(seconds)).enable_tokio_io().rng_seed(7).build()
}

/// A head host listening on `head:6380`; with `journal`, a crashed head comes back from it.
fn head_host(sim: &mut turmoil::Sim<'static>, journal: Option<PathBuf>) {
    sim.host("head", move || {
        let journal = journal.clone();
        async move {
            let mut options = HeadOptions::new("0.0.0.0:6380", token());
            options.journal = journal;
            // Snapshots often, so that restarts load one and replay the journal after it.
            options.snapshot_after_bytes = 4096;
            let head = head::start_on(options, Sim).await?;
            head.wait().await;
            Ok(())
        }
    });
}

/// A node host called `name` with one CPU; its data port is `name:7000`.
fn node_host(sim: &mut turmoil::Sim<'static>, dir: PathBuf, name: &'static str) {
    sim.host(name, move || {
        let dir = dir.clone();
        async move {
            let worker = WorkerProgram::new("/bin/false", Vec::new());
            let (work, store) = (dir.join(format!("{name}-work")), dir.join(format!("{name}-store")));
            let mut options = NodeOptions::new("head:6380", token(), ResourceSet::cpus(1), work, store, worker);
            options.data_listen = "0.0.0.0:7000".into();
            let node = node::start_on(options, Sim).await?;
            node.wait().await?;
            Ok(())
        }
    });
}

async fn status() -> ClusterStatus {
    client::status_on(&Sim, "head:6380", &token()).await.expect("the head answers the probe")
}

/// Polls the head until `want` holds of its status, for at most `within`.
async fn until(within: Duration, what: &str, want: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(s) = client::status_on(&Sim, "head:6380", &token()).await {
            if want(&s) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "after {within:?}, still not {what}: {s:?}");
        } else {
            assert!(tokio::time::Instant::now() < deadline, "after {within:?}, the head does not answer ({what})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ids(s: &ClusterStatus) -> Vec<NodeId> {
    s.nodes.iter().map(|n| n.id).collect()
}

#[test]
fn a_partitioned_node_is_declared_dead_and_registers_again_when_the_partition_heals() -> Result {
    let dir = scratch("partition");
    let mut sim = sim(120);
    head_host(&mut sim, None);
    node_host(&mut sim, dir.clone(), "node1");
    node_host(&mut sim, dir.clone(), "node2");
    sim.client("probe", async {
        let before = until(Duration::from_secs(10), "two nodes registered", |s| s.nodes.len() == 2).await;
        let node1 = before.nodes.iter().find(|n| n.addr.ends_with(":7000") && n.addr.starts_with(&ip("node1")));
        let node1 = node1.expect("node1 advertises its own address, not the wildcard it listens on").id;
        turmoil::partition("head", "node1");
        // The head declares node1 dead after its node timeout (5 s); node2 is untouched.
        let cut = until(Duration::from_secs(8), "node1 declared dead", |s| !ids(s).contains(&node1)).await;
        assert_eq!(cut.nodes.len(), 1, "only node1 is gone: {cut:?}");
        assert_eq!(cut.nodes_lost, 1);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(status().await.nodes.len(), 1, "a cut-off node stays out while the partition lasts");
        turmoil::repair("head", "node1");
        // node1 gives its old connection up (the head closed its side; node1's frames meet a
        // reset once they can cross again, or the head's silence ends it) and dials again with
        // backoff (at most 5 s apart).
        let healed = until(Duration::from_secs(20), "node1 back", |s| s.nodes.len() == 2).await;
        let new: Vec<NodeId> = ids(&healed).into_iter().filter(|id| !ids(&before).contains(id)).collect();
        assert_eq!(new.len(), 1, "node1 came back under a new id: {healed:?}");
        assert_eq!(healed.nodes_lost, 1, "healing lost nothing more");
        Ok(())
    });
    sim.run()?;
    Ok(())
}

fn ip(host: &str) -> String {
    turmoil::lookup(host).to_string()
}

#[test]
fn frames_held_back_less_than_the_node_timeout_cost_nothing_and_longer_holds_mean_a_new_registration() -> Result {
    let dir = scratch("hold");
    let mut sim = sim(120);
    head_host(&mut sim, None);
    node_host(&mut sim, dir.clone(), "node1");
    sim.client("probe", async {
        let first = until(Duration::from_secs(10), "node1 registered", |s| s.nodes.len() == 1).await;
        let id = first.nodes[0].id;
        // Hold every frame between the head and node1 for 3 s (heartbeats included), then
        // deliver them late, in order: under the 5 s node timeout, nothing happens.
        for _ in 0..3 {
            turmoil::hold("head", "node1");
            tokio::time::sleep(Duration::from_secs(3)).await;
            turmoil::release("head", "node1");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let s = status().await;
            assert_eq!(ids(&s), vec![id], "a 3 s delay must not cost the node its registration: {s:?}");
            assert_eq!(s.nodes_lost, 0);
        }
        // Held for 12 s: the head declares the node dead; when the frames flow again the node
        // registers afresh.
        turmoil::hold("head", "node1");
        tokio::time::sleep(Duration::from_secs(12)).await;
        let s = status().await;
        assert!(s.nodes.is_empty(), "node1 is dead to the head after 12 s of silence: {s:?}");
        turmoil::release("head", "node1");
        let back = until(Duration::from_secs(20), "node1 back", |s| s.nodes.len() == 1).await;
        assert_ne!(back.nodes[0].id, id, "it registered again, so it has a new id");
        Ok(())
    });
    sim.run()?;
    Ok(())
}

#[test]
fn the_head_closes_the_connection_of_a_node_that_vanished_without_closing_it() -> Result {
    // A machine cut off for good (pulled cable, powered off) sends nothing more, not even a
    // reset: only the head's silence limit ends its connection (the machine declares the node
    // dead on its own, connection or not).
    let dir = scratch("vanish");
    let mut sim = sim(60);
    head_host(&mut sim, None);
    node_host(&mut sim, dir.clone(), "node1");
    node_host(&mut sim, dir.clone(), "node2");
    sim.client("probe", async move {
        until(Duration::from_secs(10), "two nodes registered", |s| s.nodes.len() == 2 && s.connections == 2).await;
        turmoil::partition("head", "node2");
        until(Duration::from_secs(8), "the vanished node's connection closed", |s| {
            s.nodes.len() == 1 && s.connections == 1
        })
        .await;
        Ok(())
    });
    sim.run()?;
    Ok(())
}

#[test]
fn slow_links_with_varying_latency_keep_the_cluster_whole() -> Result {
    let dir = scratch("latency");
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(20))
        .max_message_latency(Duration::from_millis(900))
        .enable_tokio_io()
        .rng_seed(11)
        .build();
    head_host(&mut sim, None);
    node_host(&mut sim, dir.clone(), "node1");
    node_host(&mut sim, dir.clone(), "node2");
    node_host(&mut sim, dir.clone(), "node3");
    sim.client("probe", async {
        let first = until(Duration::from_secs(30), "three nodes registered", |s| s.nodes.len() == 3).await;
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let s = status().await;
            assert_eq!(ids(&s), ids(&first), "nobody is declared dead for being slow: {s:?}");
        }
        Ok(())
    });
    sim.run()?;
    Ok(())
}

#[test]
fn a_crashed_head_restarted_from_its_journal_gets_its_nodes_back_and_a_crashed_node_rejoins() -> Result {
    let dir = scratch("crash");
    let mut sim = sim(180);
    head_host(&mut sim, Some(dir.join("journal")));
    node_host(&mut sim, dir.clone(), "node1");
    node_host(&mut sim, dir.clone(), "node2");
    // The probe asks for crashes and restarts through `orders`; the test performs them between steps.
    let orders: Arc<Mutex<Vec<(&'static str, &'static str)>>> = Arc::default();
    let probe_orders = orders.clone();
    sim.client("probe", async move {
        let order = |what, host| probe_orders.lock().unwrap().push((what, host));
        let first = until(Duration::from_secs(10), "two nodes registered", |s| s.nodes.len() == 2).await;
        order("crash", "head");
        tokio::time::sleep(Duration::from_secs(3)).await;
        order("bounce", "head");
        // The new head replays the journal: it knows the old nodes, hears nothing from them (their
        // connections died with the old head's host), declares them dead, and they register anew.
        let back = until(Duration::from_secs(30), "both nodes back under new ids", |s| {
            s.nodes.len() == 2 && ids(s).iter().all(|id| !ids(&first).contains(id))
        })
        .await;
        assert_eq!(back.nodes_lost, 2, "the replayed head declared both old registrations dead");
        order("crash", "node2");
        let lost = until(Duration::from_secs(10), "node2 declared dead", |s| s.nodes.len() == 1).await;
        assert_eq!(lost.nodes_lost, 3);
        order("bounce", "node2");
        until(Duration::from_secs(20), "node2 back", |s| s.nodes.len() == 2).await;
        Ok(())
    });
    loop {
        let done = sim.step()?;
        for (what, host) in orders.lock().unwrap().drain(..) {
            match what {
                "crash" => sim.crash(host),
                _ => sim.bounce(host),
            }
        }
        if done {
            break;
        }
    }
    Ok(())
}

#[test]
fn a_node_that_hears_nothing_from_the_head_gives_the_link_up_so_a_one_way_cut_is_not_a_black_hole() -> Result {
    // Frames from the head to node1 are lost; node1's own frames (heartbeats) still arrive, so
    // the head alone would believe node1 healthy forever and send it work it never gets. The
    // head's keepalives stop reaching node1, which gives the connection up after its silence
    // limit; its heartbeats stop, and the head declares it dead.
    let dir = scratch("oneway");
    let mut sim = sim(120);
    head_host(&mut sim, None);
    node_host(&mut sim, dir.clone(), "node1");
    sim.client("probe", async {
        let first = until(Duration::from_secs(10), "node1 registered", |s| s.nodes.len() == 1).await;
        turmoil::partition_oneway("head", "node1");
        // 10 s of silence, then the head's 5 s node timeout.
        let gone = until(Duration::from_secs(20), "node1 declared dead", |s| s.nodes.is_empty()).await;
        assert_eq!(gone.nodes_lost, 1);
        turmoil::repair_oneway("head", "node1");
        let back = until(Duration::from_secs(30), "node1 back", |s| s.nodes.len() == 1).await;
        assert_ne!(back.nodes[0].id, first.nodes[0].id);
        Ok(())
    });
    sim.run()?;
    Ok(())
}
