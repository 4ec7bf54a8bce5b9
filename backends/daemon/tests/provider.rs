//! The head with a provider (one that starts node daemons in this process): launches go to it,
//! registrations and terminations follow, a launch it reports failed reaches the autoscaler,
//! and the journal of it all decides again exactly as the head did.

use keel_daemon::client::{self, Driver};
use keel_daemon::head::{self, HeadOptions};
use keel_daemon::journal::Entry;
use keel_daemon::node::{self, NodeHandle, NodeOptions};
use keel_daemon::recording;
use keel_kernel::autoscaler::{labels_of, AutoscalerConfig, Limits, NodeType, LAUNCH_LABEL};
use keel_kernel::ids::NodeId;
use keel_kernel::proto::{DriverToHead, Labels};
use keel_kernel::{Amount, Duration, HeadInput, ResourceSet};
use keel_net::wire::{ClusterStatus, WorkerProgram};
use keel_net::Token;
use keel_provider::{Events, Provider, Shutdown, INSTANCE_LABEL};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn token() -> Token {
    Token::from_bytes(b"a-test-cluster-token-0123456789").unwrap()
}

/// What the head asked of the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Launch { request: u64, node_type: String, count: u32 },
    Registered { node: NodeId, instance: String },
    Terminate { node: NodeId, instance: String },
}

/// Starts node daemons in this process; has no capacity for the type `broken`.
struct InProcess {
    dir: PathBuf,
    head: Option<String>,
    events: Option<Events>,
    next: u64,
    nodes: Arc<Mutex<BTreeMap<String, NodeHandle>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").field("head", &self.head).field("next", &self.next).finish()
    }
}

impl Provider for InProcess {
    fn attach(&mut self, head: SocketAddr, events: Events) {
        self.head = Some(head.to_string());
        self.events = Some(events);
    }

    fn launch(&mut self, request: u64, node_type: &NodeType, count: u32) {
        self.calls.lock().unwrap().push(Call::Launch { request, node_type: node_type.name.clone(), count });
        if node_type.name == "broken" {
            self.events.as_ref().unwrap().launch_failed(request, "no capacity for broken");
            return;
        }
        for _ in 0..count {
            let instance = format!("{}-{}", node_type.name, self.next);
            self.next += 1;
            let (work, store) = (self.dir.join(&instance), self.dir.join(format!("{instance}-store")));
            let worker = WorkerProgram::new("/bin/false", Vec::new());
            let head = self.head.clone().unwrap();
            let mut options = NodeOptions::new(head, token(), node_type.resources.clone(), work, store, worker);
            options.labels = labels_of(node_type);
            options.labels.insert(LAUNCH_LABEL.into(), request.to_string());
            options.labels.insert(INSTANCE_LABEL.into(), instance.clone());
            let nodes = self.nodes.clone();
            tokio::spawn(async move {
                let node = node::start(options).await.unwrap();
                nodes.lock().unwrap().insert(instance, node);
            });
        }
    }

    fn registered(&mut self, node: NodeId, labels: &Labels) {
        let instance = labels.get(INSTANCE_LABEL).cloned().unwrap_or_default();
        self.calls.lock().unwrap().push(Call::Registered { node, instance });
    }

    fn terminate(&mut self, node: NodeId, labels: &Labels) {
        let instance = labels.get(INSTANCE_LABEL).cloned().unwrap_or_default();
        if let Some(n) = self.nodes.lock().unwrap().remove(&instance) {
            n.abort();
        }
        self.calls.lock().unwrap().push(Call::Terminate { node, instance });
    }

    fn shutdown(&mut self) -> Shutdown {
        for (_, n) in std::mem::take(&mut *self.nodes.lock().unwrap()) {
            n.abort();
        }
        Box::pin(async {})
    }
}

fn config() -> AutoscalerConfig {
    let ty = |name: &str, resources: ResourceSet, max_workers| NodeType {
        name: name.into(),
        resources,
        labels: Labels::new(),
        min_workers: 0,
        max_workers,
    };
    AutoscalerConfig {
        node_types: vec![
            ty("cpu1", ResourceSet::cpus(1), 2),
            ty("broken", ResourceSet::cpus(1).with_gpu(Amount::ONE), 1),
        ],
        limits: Limits { max_workers: 3, upscaling_speed: 1.0 },
        period: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(500),
        launch_timeout: Duration::from_millis(30_000),
        max_launch_failures: 1,
        failure_backoff: Duration::from_millis(60_000),
    }
}

async fn until(addr: &str, what: &str, want: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = client::status(addr, &token()).await.unwrap();
        if want(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 20 s: {status:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_hands_launches_and_terminations_to_its_provider_and_hears_of_failed_launches() {
    let dir = std::env::temp_dir().join(format!("keel-daemon-provider-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let provider =
        InProcess { dir: dir.clone(), head: None, events: None, next: 0, nodes: Arc::default(), calls: calls.clone() };
    let journal = dir.join("head.journal");
    let mut options = HeadOptions::new("127.0.0.1:0", token());
    options.config.autoscaler = Some(config());
    options.config.node_timeout = Duration::from_millis(2_000);
    options.journal = Some(journal.clone());
    options.provider = Some(keel_provider::shared(provider));
    let head = head::start(options).await.unwrap();
    let addr = head.addr().to_string();

    // A job asks for room for two 1-CPU tasks and one GPU task.
    let mut driver = Driver::connect(&addr, &token(), "asks").await.unwrap();
    let gpu = ResourceSet::cpus(1).with_gpu(Amount::ONE);
    driver.send(DriverToHead::RequestResources(vec![(ResourceSet::cpus(1), 2), (gpu, 1)])).await.unwrap();
    let status = until(&addr, "two nodes up and the broken type left alone", |s| {
        s.nodes.len() == 2 && s.autoscaler.as_ref().is_some_and(|a| !a.backing_off.is_empty())
    })
    .await;
    let autoscaler = status.autoscaler.unwrap();
    assert_eq!(autoscaler.launches_failed, 1, "{autoscaler:#?}");
    assert_eq!(autoscaler.last_launch_failure.as_deref(), Some("no capacity for broken"));
    assert_eq!(autoscaler.backing_off[0].0, "broken");
    let seen = calls.lock().unwrap().clone();
    assert!(seen.contains(&Call::Launch { request: 0, node_type: "cpu1".into(), count: 2 }), "{seen:?}");
    assert!(seen.iter().any(|c| matches!(c, Call::Launch { node_type, .. } if node_type == "broken")), "{seen:?}");
    let registered: Vec<&Call> = seen.iter().filter(|c| matches!(c, Call::Registered { .. })).collect();
    assert_eq!(registered.len(), 2, "{seen:?}");

    // The request is withdrawn: both nodes go idle, are stopped, and are gone.
    driver.send(DriverToHead::RequestResources(Vec::new())).await.unwrap();
    let status = until(&addr, "no node left", |s| s.nodes.is_empty()).await;
    assert_eq!(status.nodes_lost, 0, "nodes the autoscaler stopped are no loss");
    let seen = calls.lock().unwrap().clone();
    let mut stopped: Vec<String> = seen
        .iter()
        .filter_map(|c| match c {
            Call::Terminate { instance, .. } => Some(instance.clone()),
            _ => None,
        })
        .collect();
    stopped.sort();
    assert_eq!(stopped, ["cpu1-0", "cpu1-1"], "{seen:?}");
    driver.finish().await.unwrap();
    head.abort();

    // The provider's report is journaled like every input; the journal decides again exactly.
    let mut failed = 0;
    let verified = recording::verify(recording::read(&journal).unwrap(), |_, entry, _| {
        if let Entry::Input { input: HeadInput::LaunchFailed { .. }, .. } = entry {
            failed += 1;
        }
    })
    .unwrap();
    assert_eq!(failed, 1);
    assert!(verified.batches > 5, "{verified:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
