//! Worker processes for a node daemon.
//!
//! [`Spawner::spawn`] starts a process with piped standard output and error. Each stream is copied
//! to a log file (`<log dir>/<name>.out` and `.err`) and, chunk by chunk, to the daemon as
//! [`ProcessEvent::Output`], so that the daemon can stream it to whoever submitted the running
//! task. When the process ends the daemon gets one [`ProcessEvent::Exited`] with its exit code (or
//! the signal that killed it), after all of its output. [`ProcessHandle::kill`] sends `SIGKILL`.
//!
//! The crate decides nothing: which worker to start, reuse or kill is the node machine's decision.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Which stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What a process did, tagged with the key it was spawned under.
#[derive(Debug, PartialEq, Eq)]
pub enum ProcessEvent<K> {
    /// It wrote these bytes.
    Output {
        /// The process.
        key: K,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// It ended; no more output follows.
    Exited {
        /// The process.
        key: K,
        /// Its exit status.
        status: ExitStatus,
    },
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Its status could not be read.
    Unknown,
}

impl ExitStatus {
    /// The exit code a shell would show (128 + signal for a killed process).
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::Unknown => 255,
        }
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        if let Some(code) = s.code() {
            return ExitStatus::Code(code);
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = s.signal() {
                return ExitStatus::Signal(sig);
            }
        }
        ExitStatus::Unknown
    }
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct ProcessSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory (the daemon's when unset).
    pub cwd: Option<PathBuf>,
    /// Environment variables added to the daemon's own.
    pub env: BTreeMap<String, String>,
    /// The base name of its log files.
    pub log_name: String,
}

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program}: {source}")]
pub struct SpawnError {
    /// The executable.
    pub program: String,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// A running process.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
}

impl ProcessHandle {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills it (`SIGKILL`); its `Exited` event still comes.
    pub fn kill(&mut self) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts processes and reports what they do on one channel.
pub struct Spawner<K> {
    log_dir: PathBuf,
    events: mpsc::UnboundedSender<ProcessEvent<K>>,
}

impl<K: Clone + Send + 'static> Spawner<K> {
    /// A spawner writing logs under `log_dir` (created if missing) and events to `events`.
    pub fn new(log_dir: &Path, events: mpsc::UnboundedSender<ProcessEvent<K>>) -> io::Result<Spawner<K>> {
        std::fs::create_dir_all(log_dir)?;
        Ok(Spawner { log_dir: log_dir.to_path_buf(), events })
    }

    /// Where the logs go.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts `spec` under `key`. Must be called inside a tokio runtime.
    pub fn spawn(&self, key: K, spec: &ProcessSpec) -> Result<ProcessHandle, SpawnError> {
        let err = |source| SpawnError { program: spec.program.display().to_string(), source };
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args).envs(&spec.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        // A worker must not outlive its daemon; and it leads its own process group, so that when
        // it dies the programs it started die with it (see below).
        cmd.kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(err)?;
        let pid = child.id().unwrap_or(0);
        let out = child.stdout.take().expect("piped");
        let err_stream = child.stderr.take().expect("piped");
        let (kill_tx, kill_rx) = oneshot::channel();
        let events = self.events.clone();
        let out_log = self.log_dir.join(format!("{}.out", spec.log_name));
        let err_log = self.log_dir.join(format!("{}.err", spec.log_name));
        tokio::spawn(async move {
            let copy_out = copy(out, out_log, key.clone(), Stream::Stdout, events.clone());
            let copy_err = copy(err_stream, err_log, key.clone(), Stream::Stderr, events.clone());
            let wait = async {
                tokio::select! {
                    status = child.wait() => status,
                    // A dropped handle is not a kill: only `kill()` sends the signal.
                    Ok(()) = kill_rx => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            };
            let wait = async {
                let status = wait.await;
                // Whatever the process left running in its group dies too: it would hold the
                // node's resources after the machine has given them back, and keep the output
                // pipes open.
                #[cfg(unix)]
                if pid > 0 {
                    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                status
            };
            let (status, _, _) = tokio::join!(wait, copy_out, copy_err);
            let status = status.map(ExitStatus::from).unwrap_or(ExitStatus::Unknown);
            let _ = events.send(ProcessEvent::Exited { key, status });
        });
        Ok(ProcessHandle { pid, kill: Some(kill_tx) })
    }
}

async fn copy<K>(
    mut from: impl AsyncRead + Unpin,
    log: PathBuf,
    key: K,
    stream: Stream,
    events: mpsc::UnboundedSender<ProcessEvent<K>>,
) where
    K: Clone,
{
    let mut file = match tokio::fs::OpenOptions::new().create(true).append(true).open(&log).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(log = %log.display(), error = %e, "cannot open the log file; output is only forwarded");
            None
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(f) = file.as_mut() {
                    if f.write_all(&buf[..n]).await.is_err() {
                        file = None;
                    }
                }
                let _ = events.send(ProcessEvent::Output { key: key.clone(), stream, data: buf[..n].to_vec() });
            }
        }
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, name: &str) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            log_name: name.into(),
            ..Default::default()
        }
    }

    async fn collect(rx: &mut mpsc::UnboundedReceiver<ProcessEvent<u32>>) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match rx.recv().await.expect("an exit event") {
                ProcessEvent::Output { stream: Stream::Stdout, data, .. } => out.extend(data),
                ProcessEvent::Output { stream: Stream::Stderr, data, .. } => err.extend(data),
                ProcessEvent::Exited { status, .. } => return (out, err, status),
            }
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keel-process-{name}-{}", std::process::id()))
    }

    #[tokio::test]
    async fn output_is_forwarded_and_logged_and_the_exit_code_comes_last() {
        let dir = temp_dir("out");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spawner = Spawner::new(&dir, tx).unwrap();
        spawner.spawn(1u32, &sh("echo hello; echo oops >&2; exit 3", "w1")).unwrap();
        let (out, err, status) = collect(&mut rx).await;
        assert_eq!((out.as_slice(), err.as_slice(), status), (&b"hello\n"[..], &b"oops\n"[..], ExitStatus::Code(3)));
        assert_eq!(std::fs::read(dir.join("w1.out")).unwrap(), b"hello\n");
        assert_eq!(std::fs::read(dir.join("w1.err")).unwrap(), b"oops\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_killed_process_reports_the_signal() {
        let dir = temp_dir("kill");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spawner = Spawner::new(&dir, tx).unwrap();
        let mut handle = spawner.spawn(2u32, &sh("sleep 30", "w2")).unwrap();
        assert!(handle.pid() > 0);
        handle.kill();
        let (_, _, status) = collect(&mut rx).await;
        assert_eq!(status, ExitStatus::Signal(9));
        assert_eq!(status.shell_code(), 137);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn programs_a_dead_process_started_die_with_it_and_do_not_hold_its_pipes() {
        let dir = temp_dir("group");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spawner = Spawner::new(&dir, tx).unwrap();
        // The shell leaves a long sleep behind that holds its stdout; the exit must still come now.
        let started = std::time::Instant::now();
        spawner.spawn(4u32, &sh("sleep 30 & echo started; exit 0", "w4")).unwrap();
        let (out, _, status) = collect(&mut rx).await;
        assert_eq!((out.as_slice(), status), (&b"started\n"[..], ExitStatus::Code(0)));
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the exit waited for the orphan");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let dir = temp_dir("missing");
        let (tx, _rx) = mpsc::unbounded_channel::<ProcessEvent<u32>>();
        let spawner = Spawner::new(&dir, tx).unwrap();
        let spec =
            ProcessSpec { program: "/nonexistent/keel-worker".into(), log_name: "w".into(), ..Default::default() };
        let err = spawner.spawn(3, &spec).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/keel-worker"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
