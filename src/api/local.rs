//! The embedded default: a head and one node in this process, when no cluster address is given.

use super::{Error, Result};
use keel_daemon::head::{self, HeadHandle, HeadOptions};
use keel_daemon::node::{self, NodeHandle, NodeOptions};
use keel_kernel::ResourceSet;
use keel_net::wire::WorkerProgram;
use keel_net::Token;
use std::path::PathBuf;

/// A local cluster living as long as the driver.
pub(crate) struct Embedded {
    head: HeadHandle,
    node: NodeHandle,
    dirs: Vec<PathBuf>,
}

impl Embedded {
    /// Stops the node (its workers are killed) and the head, and removes their directories.
    pub fn stop(self) {
        self.node.abort();
        self.head.abort();
        for d in &self.dirs {
            let _ = keel_shm::remove_store(d);
        }
    }
}

/// Starts a head and a node with this machine's cores; returns the head's address and token.
pub(crate) async fn start() -> Result<(String, Token, Embedded)> {
    let token = Token::generate();
    let head =
        head::start(HeadOptions::new("127.0.0.1:0", token.clone())).await.map_err(|e| Error::Setup(e.to_string()))?;
    let addr = head.addr().to_string();
    let pid = std::process::id();
    let work = std::env::temp_dir().join(format!("keel-embedded-{pid}"));
    let shm = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    // Stores left by embedded clusters whose programs died hold memory until someone deletes them.
    keel_shm::sweep_orphans(&shm, "keel-embedded-");
    let store = shm.join(format!("keel-embedded-{pid}"));
    let cores = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let exe = std::env::current_exe().map_err(|e| Error::Setup(e.to_string()))?;
    let worker = WorkerProgram::new(exe.display().to_string(), Vec::new());
    let options = NodeOptions::new(&addr, token.clone(), ResourceSet::cpus(cores), work.clone(), store.clone(), worker);
    let node = node::start(options).await.map_err(|e| Error::Setup(e.to_string()))?;
    // The node registers in a few milliseconds; wait for it so that the first task has somewhere to go.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match keel_daemon::client::status(&addr, &token).await {
            Ok(s) if !s.nodes.is_empty() => break,
            _ if tokio::time::Instant::now() > deadline => {
                return Err(Error::Setup("the embedded node did not register within 10 s".into()))
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
        }
    }
    Ok((addr, token, Embedded { head, node, dirs: vec![work, store] }))
}
