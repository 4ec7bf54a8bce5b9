//! Node providers: they carry out the autoscaler's decisions on some infrastructure.
//!
//! The Head decides (see `keel_kernel::head`'s autoscaling): it emits `HeadOutput::Launch` and
//! `HeadOutput::Terminate`, and its host hands them to a [`Provider`]. A provider starts and stops
//! nodes and decides nothing: how many nodes, of which type, and which node to stop are the
//! kernel's. What happens later (a launch that fails) comes back as a [`ProviderEvent`], which the
//! host feeds to the Head as `HeadInput::LaunchFailed`.
//!
//! The contract, for any provider (local processes, a cloud, Kubernetes):
//! - every node started for request `r` registers with the labels `keel.launch=r`
//!   ([`LAUNCH_LABEL`]), its type's labels ([`labels_of`](keel_kernel::autoscaler::labels_of),
//!   which include `keel.node-type`), and its machine's unique name under `keel.instance`
//!   ([`INSTANCE_LABEL`]): the Head counts a machine once by it, and stops again a machine it
//!   stopped that registers anew;
//! - a request the provider cannot complete is reported once, as
//!   [`ProviderEvent::LaunchFailed`]; a node that registered is no longer the provider's to
//!   report (the Head notices a lost node by its heartbeats);
//! - calls never block and never call back into the host: reports go through [`Events`].
//!
//! Modules:
//! - [`local`]: nodes as `keel node` child processes on this machine (`keel up --autoscale`).

use keel_kernel::autoscaler::NodeType;
use keel_kernel::ids::NodeId;
use keel_kernel::proto::Labels;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub mod local;

pub use keel_kernel::autoscaler::{INSTANCE_LABEL, LAUNCH_LABEL, NODE_TYPE_LABEL};

/// What a provider reports after the call that caused it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// The provider could not launch (the rest of) a request; reported once per request.
    LaunchFailed {
        /// The request's number (the Head's `Launch { request }`).
        request: u64,
        /// Why, for people: what failed and what the node said.
        reason: String,
    },
}

/// Where a provider sends its [`ProviderEvent`]s; cheap to clone into the provider's tasks.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(ProviderEvent) + Send + Sync>);

impl Events {
    /// Events handed to `deliver` (which must not block: it queues them for the host).
    pub fn new(deliver: impl Fn(ProviderEvent) + Send + Sync + 'static) -> Events {
        Events(Arc::new(deliver))
    }

    /// Events sent on a channel, and its receiving end.
    pub fn channel() -> (Events, tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Events::new(move |e| drop(tx.send(e))), rx)
    }

    /// Reports an event.
    pub fn send(&self, event: ProviderEvent) {
        (self.0)(event);
    }

    /// Reports that request `request` could not be launched.
    pub fn launch_failed(&self, request: u64, reason: impl Into<String>) {
        self.send(ProviderEvent::LaunchFailed { request, reason: reason.into() });
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

/// What [`Provider::shutdown`] returns: done once every node the provider started is gone.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Starts and stops nodes for the autoscaler.
///
/// The host calls [`attach`](Provider::attach) once, before anything else, then the others as
/// the Head's outputs and registrations arrive. No call may block (start work in the
/// background) or call the host back directly (report through the [`Events`] given to
/// `attach`). Calls other than `attach` need a tokio runtime.
pub trait Provider: Send + std::fmt::Debug + 'static {
    /// The head listens on `head`; reports go to `events`.
    fn attach(&mut self, head: SocketAddr, events: Events);

    /// Start `count` nodes of `node_type` for request `request`.
    fn launch(&mut self, request: u64, node_type: &NodeType, count: u32);

    /// A node registered with the head with these labels (its launch is complete).
    fn registered(&mut self, node: NodeId, labels: &Labels);

    /// Stop this node (the Head drained it; it runs nothing). Its labels say which it is.
    fn terminate(&mut self, node: NodeId, labels: &Labels);

    /// Stop every node this provider started; launches after this fail. The future ends when
    /// they are gone.
    fn shutdown(&mut self) -> Shutdown;
}

/// A provider shared by whoever made it and the head that drives it.
pub type SharedProvider = Arc<Mutex<dyn Provider>>;

/// Shares `provider` (for `HeadOptions::provider`).
pub fn shared(provider: impl Provider) -> SharedProvider {
    Arc::new(Mutex::new(provider))
}
