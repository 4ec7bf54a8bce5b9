//! A client of the head: operators' requests (`keel status`, `keel stop`) and a driver that runs
//! one command task (`keel submit`).

use crate::conn::{self};
use crate::CommandResult;
use keel_kernel::errors::{ErrorReason, InputError};
use keel_kernel::ids::{JobId, NodeId, ObjectId, TaskId};
use keel_kernel::proto::{
    DriverToHead, Function, HeadToDriver, Hello, LabelConstraint, ObjectData, TaskSpec, Welcome, PROTOCOL_VERSION,
};
use keel_kernel::ResourceSet;
use keel_net::backoff::Backoff;
use keel_net::wire::{AdminRequest, ClusterStatus, FromHead, OutputChunk, PeerFrame, Register, ToHead};
use keel_net::{NetError, Tcp, Token, Transport, DEFAULT_MAX_FRAME};
use std::sync::Arc;

/// The Keel home: `KEEL_HOME`, else `~/.keel`. `keel head` and `keel up` write the cluster's
/// address and token there; clients read them from there when not told otherwise.
pub fn keel_home() -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("KEEL_HOME") {
        return home.into();
    }
    std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".keel")
}

/// What went wrong talking to the head.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The head refused the request.
    #[error("the head refused: {0}")]
    Refused(String),
    /// The head answered something unexpected.
    #[error("unexpected answer from the head: {0}")]
    Protocol(String),
}

async fn admin<T: Transport>(
    transport: &T,
    addr: &str,
    token: &Token,
    request: AdminRequest,
) -> Result<FromHead, ClientError> {
    let (mut reader, mut writer, _) = conn::dial_on(transport, addr, token, DEFAULT_MAX_FRAME).await?;
    writer.send(&Register::Admin(request)).await?;
    Ok(reader.recv::<FromHead>("answer from the head").await?)
}

/// The cluster's state.
pub async fn status(addr: &str, token: &Token) -> Result<ClusterStatus, ClientError> {
    status_on(&Tcp, addr, token).await
}

/// [`status`] over another transport.
pub async fn status_on<T: Transport>(transport: &T, addr: &str, token: &Token) -> Result<ClusterStatus, ClientError> {
    match admin(transport, addr, token, AdminRequest::Status).await? {
        FromHead::Status(s) => Ok(s),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

/// Stops the cluster: the head tells every node to stop, then exits.
pub async fn stop(addr: &str, token: &Token) -> Result<(), ClientError> {
    match admin(&Tcp, addr, token, AdminRequest::Stop).await? {
        FromHead::Stopping => Ok(()),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

/// How to run a submitted command.
#[derive(Clone, Debug)]
pub struct SubmitOptions {
    /// What it needs.
    pub resources: ResourceSet,
    /// Hard label constraints.
    pub labels: Vec<LabelConstraint>,
    /// Retries after a worker or node failure.
    pub max_retries: u32,
    /// The job's name.
    pub name: String,
}

/// How a submitted command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// It ran to the end with this exit code.
    Exited(i32),
    /// The cluster could not run it; the reason says why.
    Failed(ErrorReason),
}

/// A driver's connection: one job.
pub struct Driver {
    reader: keel_net::FrameReader<keel_net::transport::TcpRead>,
    writer: keel_net::FrameWriter<keel_net::transport::TcpWrite>,
    job: JobId,
    addr: String,
}

impl Driver {
    /// Connects, proves the token and starts a job named `name`.
    pub async fn connect(addr: &str, token: &Token, name: &str) -> Result<Driver, ClientError> {
        Driver::register(addr, token, name, None).await
    }

    /// Connects again and takes up `job` (after the connection or the head was lost).
    pub async fn resume(addr: &str, token: &Token, job: JobId) -> Result<Driver, ClientError> {
        Driver::register(addr, token, "", Some(job)).await
    }

    async fn register(addr: &str, token: &Token, name: &str, resume: Option<JobId>) -> Result<Driver, ClientError> {
        let (mut reader, mut writer) = conn::dial(addr, token, DEFAULT_MAX_FRAME).await?;
        let hello = Hello::RegisterJob { version: PROTOCOL_VERSION, name: name.to_string() };
        writer.send(&Register::Driver { hello, program: None, resume }).await?;
        let job = match reader.recv::<FromHead>("answer from the head").await? {
            FromHead::Welcome(Welcome::JobRegistered(job)) => job,
            FromHead::Welcome(Welcome::Refused(e)) => return Err(ClientError::Refused(e.to_string())),
            other => return Err(ClientError::Protocol(format!("{other:?}"))),
        };
        // The head sends keepalives to drivers: silence means it is gone, and the driver reconnects.
        reader.set_silence_limit(Some(crate::node::DEFAULT_HEAD_SILENCE));
        Ok(Driver { reader, writer, job, addr: addr.to_string() })
    }

    /// The job's id.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The id of the driver's `seq`-th task.
    pub fn task_id(&self, seq: u64) -> TaskId {
        TaskId::child(TaskId::driver(self.job), 0, seq)
    }

    /// Sends a message to the head machine.
    pub async fn send(&mut self, msg: DriverToHead) -> Result<(), ClientError> {
        Ok(self.writer.send(&ToHead::Driver(msg)).await?)
    }

    /// The next frame from the head.
    pub async fn recv(&mut self) -> Result<FromHead, ClientError> {
        Ok(self.reader.recv::<FromHead>("message from the head").await?)
    }

    /// Ends the job.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.send(DriverToHead::FinishJob).await
    }
}

/// How long a submitter keeps trying to reach a head that went away.
pub const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `argv` as one command task and waits for it; `output` receives what it prints as it
/// prints. If the connection to the head is lost (the head restarted), it reconnects, takes up
/// its job again, and asks again for the task (a duplicate is refused harmlessly) and its result.
pub async fn submit_command(
    addr: &str,
    token: &Token,
    argv: Vec<String>,
    options: SubmitOptions,
    mut output: impl FnMut(&OutputChunk),
) -> Result<SubmitOutcome, ClientError> {
    let mut driver = Driver::connect(addr, token, &options.name).await?;
    let mut spec = TaskSpec::calling(driver.task_id(0), driver.job(), Function::Command(argv));
    spec.resources = options.resources;
    spec.label_selector = options.labels;
    spec.max_retries = options.max_retries;
    let spec = Arc::new(spec);
    let object = spec.return_ids().next().expect("one return");
    let outcome = 'session: loop {
        let asked = async {
            driver.send(DriverToHead::SubmitTask(spec.clone())).await?;
            driver.send(DriverToHead::Subscribe(vec![object])).await
        };
        let mut lost = asked.await.err();
        while lost.is_none() {
            match driver.recv().await {
                Ok(FromHead::Output(chunk)) => output(&chunk),
                Ok(FromHead::Driver(HeadToDriver::ObjectReady { object: o, data, .. })) if o == object => match data {
                    ObjectData::Inline(bytes) => {
                        let result: CommandResult = keel_net::frame::decode(&bytes, "command result", &driver.addr)?;
                        break 'session SubmitOutcome::Exited(result.exit_code);
                    }
                    ObjectData::At(_) => return Err(ClientError::Protocol("a command's result was not inline".into())),
                },
                Ok(FromHead::Driver(HeadToDriver::ObjectFailed { object: o, reason })) if o == object => {
                    break 'session SubmitOutcome::Failed(reason);
                }
                // Asked again after a reconnection: the head already has it.
                Ok(FromHead::Driver(HeadToDriver::Rejected { error: InputError::DuplicateTask(_) })) => {}
                Ok(FromHead::Driver(HeadToDriver::Rejected { error })) => {
                    return Err(ClientError::Refused(error.to_string()))
                }
                Ok(FromHead::Stopping) => return Err(ClientError::Refused("the cluster is stopping".into())),
                Ok(_) => {}
                Err(e) => lost = Some(e),
            }
        }
        let job = driver.job();
        tracing::warn!(error = %lost.expect("lost"), "lost the head; reconnecting");
        driver = reconnect(addr, token, job).await?;
    };
    // A command's output all comes before its result (the worker sends it first, and every hop
    // keeps the order), so the job can end now.
    driver.finish().await?;
    Ok(outcome)
}

/// Tries to resume `job` until it works or [`RECONNECT_FOR`] has passed.
async fn reconnect(addr: &str, token: &Token, job: JobId) -> Result<Driver, ClientError> {
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut backoff = Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(2), job.0);
    loop {
        match Driver::resume(addr, token, job).await {
            Ok(d) => return Ok(d),
            Err(ClientError::Net(e)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the head is not back yet");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Asks the node at `addr` to take in a put its store directory already holds (the driver wrote
/// and sealed it there with [`keel_shm::write_sealed`]: same machine, no copy through a socket).
/// Returns the node's id, which the driver names in its `Put` to the head.
pub async fn adopt_put(addr: &str, token: &Token, object: ObjectId, size: u64) -> Result<NodeId, ClientError> {
    let (mut reader, mut writer) = conn::dial(addr, token, DEFAULT_MAX_FRAME).await?;
    writer.send(&PeerFrame::Adopt { object, size }).await?;
    stored_answer(&mut reader, object).await
}

/// Sends a put's bytes to the node at `addr` in chunks over its data port (a driver on another
/// machine). Returns the node's id, which the driver names in its `Put` to the head.
pub async fn upload_put(addr: &str, token: &Token, object: ObjectId, bytes: &[u8]) -> Result<NodeId, ClientError> {
    let (mut reader, mut writer) = conn::dial(addr, token, DEFAULT_MAX_FRAME).await?;
    let total = bytes.len() as u64;
    writer.feed(&PeerFrame::Upload { object, total }).await?;
    let mut offset = 0;
    loop {
        let end = (offset + crate::node::CHUNK_BYTES).min(bytes.len());
        let last = end == bytes.len();
        let chunk = PeerFrame::Chunk { object, total, offset: offset as u64, data: bytes[offset..end].to_vec(), last };
        writer.feed(&chunk).await?;
        offset = end;
        if last {
            break;
        }
    }
    writer.flush().await?;
    stored_answer(&mut reader, object).await
}

async fn stored_answer<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut keel_net::FrameReader<R>,
    object: ObjectId,
) -> Result<NodeId, ClientError> {
    match reader.recv::<PeerFrame>("the node's answer to a put").await? {
        PeerFrame::Stored { object: o, node } if o == object => Ok(node),
        PeerFrame::Refused { reason, .. } => Err(ClientError::Refused(reason)),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}
