//! The worker process for command tasks (`keel worker`): a node starts it with its socket, the
//! worker's id and the token in the environment. It runs each command it is given as a child
//! process whose output goes to the worker's own standard output and error, which the node
//! captures, logs and streams to the submitter. The task's value is the command's exit code.

use crate::CommandResult;
use keel_kernel::errors::TaskFailure;
use keel_kernel::ids::{ObjectId, WorkerId};
use keel_kernel::proto::{Function, ReturnValue, TaskOutcome, TaskSpec};
use keel_net::wire::{FromWorker, Stream, ToWorker};
use keel_net::{FrameReader, FrameWriter, NetError, Token, DEFAULT_MAX_FRAME};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// It was not started by a node.
    #[error("{0} is not set: `keel worker` is started by a node, not by hand")]
    MissingEnv(&'static str),
    /// The environment holds something unusable.
    #[error("{name} is invalid: {detail}")]
    BadEnv {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The node's socket failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What a node gives its worker through the environment.
#[derive(Debug)]
pub struct WorkerEnv {
    /// The node's worker socket.
    pub socket: String,
    /// This worker's id.
    pub worker: WorkerId,
    /// The cluster's token.
    pub token: Token,
}

impl WorkerEnv {
    /// Reads `KEEL_WORKER_SOCKET`, `KEEL_WORKER_ID` and `KEEL_TOKEN`.
    pub fn from_env() -> Result<WorkerEnv, WorkerError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| WorkerError::MissingEnv(name));
        let socket = var("KEEL_WORKER_SOCKET")?;
        let worker = var("KEEL_WORKER_ID")?.parse().map_err(|e: std::num::ParseIntError| WorkerError::BadEnv {
            name: "KEEL_WORKER_ID",
            detail: e.to_string(),
        })?;
        let token = Token::from_bytes(var("KEEL_TOKEN")?.as_bytes())
            .ok_or(WorkerError::BadEnv { name: "KEEL_TOKEN", detail: "too short".into() })?;
        Ok(WorkerEnv { socket, worker: WorkerId(worker), token })
    }
}

/// A worker's authenticated connection to its node.
pub struct WorkerLink {
    /// Frames from the node.
    pub reader: FrameReader<keel_net::unix::QuietRead>,
    /// Frames to the node.
    pub writer: FrameWriter<keel_net::unix::QuietWrite>,
}

impl WorkerLink {
    /// Connects to the node, proves the token and says hello.
    pub async fn connect(env: &WorkerEnv) -> Result<WorkerLink, WorkerError> {
        let stream = UnixStream::connect(&env.socket)
            .await
            .map_err(|source| NetError::Io { peer: env.socket.clone(), source })?;
        let (r, w) =
            keel_net::unix::split(stream).map_err(|source| NetError::Io { peer: env.socket.clone(), source })?;
        let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME, "the node");
        let mut writer = FrameWriter::new(w, DEFAULT_MAX_FRAME, "the node");
        keel_net::handshake::client(&mut reader, &mut writer, &env.token, DEFAULT_MAX_FRAME).await?;
        writer.send(&FromWorker::Hello { worker: env.worker, pid: std::process::id() }).await?;
        Ok(WorkerLink { reader, writer })
    }
}

/// Runs the command worker until its node closes the socket.
pub async fn run_command_worker() -> Result<(), WorkerError> {
    let env = WorkerEnv::from_env()?;
    let WorkerLink { mut reader, mut writer } = WorkerLink::connect(&env).await?;
    loop {
        let msg = match reader.recv::<ToWorker>("message to a worker").await {
            Ok(m) => m,
            Err(e) if e.is_clean_close() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ToWorker::Execute { spec, attempt, .. } => {
                let outcome = execute(&spec, &mut reader, &mut writer, attempt).await?;
                writer.send(&FromWorker::Done { task: spec.task, attempt, outcome }).await?;
            }
            // The node hands a command worker nothing ahead, so there is nothing to give back.
            ToWorker::Interrupt { .. } | ToWorker::Withdraw { .. } | ToWorker::Message(_) | ToWorker::Peer(_) => {}
        }
    }
}

fn failure(message: String) -> TaskOutcome {
    TaskOutcome::Failed(TaskFailure::Application { message })
}

/// Runs one command task, stopping it if the node interrupts this attempt.
/// Runs one command task, stopping it if the node interrupts this attempt. Its output is read
/// here and sent to the node before the attempt's end, so that none of it can trail the result.
async fn execute(
    spec: &Arc<TaskSpec>,
    reader: &mut FrameReader<keel_net::unix::QuietRead>,
    writer: &mut FrameWriter<keel_net::unix::QuietWrite>,
    attempt: u32,
) -> Result<TaskOutcome, WorkerError> {
    let argv = match &spec.function {
        Function::Command(argv) if !argv.is_empty() => argv,
        Function::Command(_) => return Ok(failure("a command task needs a program to run".into())),
        Function::Named(name) => {
            return Ok(TaskOutcome::Failed(TaskFailure::UnknownFunction { name: name.to_string() }));
        }
    };
    if spec.num_returns != 1 {
        return Ok(failure(format!("a command task returns one value (its exit code), not {}", spec.num_returns)));
    }
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).kill_on_drop(true).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group: whatever it leaves behind is killed with it, so its pipes close.
    command.process_group(0);
    // And it dies with this worker: a worker killed under it must not leave it running.
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of this process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(failure(format!("cannot start {}: {e}", argv[0]))),
    };
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let (mut out_open, mut err_open) = (true, true);
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let mut status: Option<Result<std::process::ExitStatus, String>> = None;
    let task = spec.task;
    let status = loop {
        if let Some(s) = &status {
            if !out_open && !err_open {
                break s.clone();
            }
        }
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                // Anything it left running in its group goes too, so that the pipes reach their end.
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on a process group; no memory is involved.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                status = Some(s.map_err(|e| e.to_string()));
            }
            n = out.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    let data = out_buf[..n].to_vec();
                    writer.send(&FromWorker::Output { task, attempt, stream: Stream::Stdout, data }).await?;
                }
            },
            n = err.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let data = err_buf[..n].to_vec();
                    writer.send(&FromWorker::Output { task, attempt, stream: Stream::Stderr, data }).await?;
                }
            },
            msg = reader.recv::<ToWorker>("message to a worker") => match msg {
                Ok(ToWorker::Interrupt { task, attempt: a }) if task == spec.task && a == attempt => {
                    let _ = child.start_kill();
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = child.start_kill();
                    return Err(e.into());
                }
            },
        }
    };
    let exit_code = match status {
        Ok(s) => keel_process::ExitStatus::from(s).shell_code(),
        Err(e) => return Ok(failure(format!("cannot wait for {}: {e}", argv[0]))),
    };
    let bytes = postcard::to_allocvec(&CommandResult { exit_code }).expect("serialising to a Vec cannot fail");
    Ok(TaskOutcome::Finished(vec![ReturnValue {
        object: ObjectId::for_return(spec.task, 1),
        size: bytes.len() as u64,
        inline: Some(bytes),
        nested: Vec::new(),
    }]))
}
