//! Fault tolerance: a node dies in the middle of a job, and the job still completes.
//!
//! `cargo run --release --example fault_tolerance`. The example starts its own cluster in this
//! process (a head and three one-CPU nodes, the nodes' workers being this same binary), runs six
//! map tasks that each return 2 MiB (kept in the shared memory of the node that ran them), then
//! stops one node abruptly, as a crash would: its workers die and the maps' outputs on it are
//! gone. The reduces need those outputs, so the head, once it has declared the node dead, runs
//! the lost maps again from their lineage on the surviving nodes. The program checks every
//! result and says what was rebuilt.

use keel::{remote, Remote, TaskOptions};
use keel_daemon::head::{self, HeadOptions};
use keel_daemon::node::{self, NodeOptions};
use keel_kernel::proto::SchedulingStrategy;
use keel_kernel::{Duration, NodeConfig, ResourceSet};
use keel_net::wire::WorkerProgram;
use keel_net::Token;

const PART_BYTES: usize = 2 << 20;

/// Map: a partition of about 2 MiB whose length and bytes depend on its index.
static MAKE_PART: Remote<(u64,), Vec<u8>> = remote("make_part", |(i,)| part(i));
/// Reduce: the checksum of three partitions.
/// Three partitions.
type Three = (Vec<u8>, Vec<u8>, Vec<u8>);
static CHECKSUM3: Remote<Three, u64> =
    remote("checksum3", |(a, b, c)| [a, b, c].iter().flatten().map(|&x| u64::from(x)).sum());

fn part(i: u64) -> Vec<u8> {
    (0..PART_BYTES + i as usize * 4099).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn expected(parts: &[u64]) -> u64 {
    parts.iter().map(|&i| part(i).iter().map(|&b| u64::from(b)).sum::<u64>()).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("KEEL_WORKER_SOCKET").is_some() {
        keel::init(&[&MAKE_PART, &CHECKSUM3])?;
    }
    let dir = std::env::temp_dir().join(format!("keel-fault-tolerance-{}", std::process::id()));
    let token = Token::generate();
    token.save(&dir.join("token"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let exe = std::env::current_exe()?.display().to_string();
    let (head, nodes, ids) = rt.block_on(async {
        let mut options = HeadOptions::new("127.0.0.1:0", token.clone());
        options.config.node_timeout = Duration::from_millis(1500);
        let head = head::start(options).await?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let config = NodeConfig { heartbeat_period: Duration::from_millis(250), ..NodeConfig::default() };
            let (work, store) = (dir.join(format!("node-{i}")), dir.join(format!("store-{i}")));
            let worker = WorkerProgram::new(exe.clone(), Vec::new());
            let options = NodeOptions {
                config,
                ..NodeOptions::new(head.addr().to_string(), token.clone(), ResourceSet::cpus(1), work, store, worker)
            };
            nodes.push(node::start(options).await?);
        }
        let ids = loop {
            let s = keel_daemon::client::status(&head.addr().to_string(), &token).await?;
            if s.nodes.len() == 3 {
                break s.nodes.iter().map(|n| n.id).collect::<Vec<_>>();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        Ok::<_, Box<dyn std::error::Error>>((head, nodes, ids))
    })?;
    let addr = head.addr().to_string();
    std::env::set_var("KEEL_ADDRESS", &addr);
    std::env::set_var("KEEL_TOKEN_FILE", dir.join("token"));
    let keel = keel::init(&[&MAKE_PART, &CHECKSUM3])?;

    // Six maps, two on each node.
    let on = |n: usize| TaskOptions {
        strategy: SchedulingStrategy::NodeAffinity { node: ids[n % 3], soft: true },
        ..TaskOptions::default()
    };
    let maps: Vec<_> = (0..6).map(|i| MAKE_PART.call_with(&keel, (i as u64,), &on(i))).collect::<Result<_, _>>()?;
    let (done, _) = keel.wait(&maps, 6, std::time::Duration::from_secs(60))?;
    println!("6 maps done (2 MiB each, two on each of {} nodes)", ids.len());

    println!("stopping node {} abruptly: its workers die and the maps' outputs on it are lost", ids[0]);
    nodes[0].abort();
    let started = std::time::Instant::now();
    let r1 = CHECKSUM3.call(&keel, (&maps[0], &maps[1], &maps[2]))?;
    let r2 = CHECKSUM3.call(&keel, (&maps[3], &maps[4], &maps[5]))?;
    let (a, b) = (keel.get(&r1)?, keel.get(&r2)?);
    assert_eq!(a, expected(&[0, 1, 2]), "the first reduce saw wrong bytes");
    assert_eq!(b, expected(&[3, 4, 5]), "the second reduce saw wrong bytes");
    let status = rt.block_on(keel_daemon::client::status(&addr, &token))?;
    println!(
        "both reduces correct ({a}, {b}) {:.2} s after the loss; {} of {} maps done before it",
        started.elapsed().as_secs_f64(),
        done.len(),
        maps.len()
    );
    println!(
        "the head declared {} node(s) dead, rebuilt {} lost value(s) from lineage and retried {} attempt(s)",
        status.nodes_lost, status.reconstructions, status.retries
    );
    assert!(status.nodes_lost >= 1 && status.reconstructions >= 1, "nothing was rebuilt: {status:?}");
    drop(keel);
    for n in &nodes {
        n.abort();
    }
    head.abort();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
