//! Worker mode's output capture: what a task prints goes to its submitter.
//!
//! The worker's standard output and error are replaced by pipes read by two threads. Each chunk
//! read is copied to the original descriptors (the node's log files) and sent to the node as the
//! running attempt's output. Before an attempt's end is reported, [`Capture::sync`] flushes
//! Rust's buffers and, unless both pipes are empty and both readers idle (an attempt that printed
//! nothing, the common case, costs two `ioctl`s), pushes a marker through each pipe and waits
//! until both readers have passed it: everything the attempt printed has then been sent, ahead of
//! its end.

use keel_kernel::ids::TaskId;
use keel_net::wire::{FromWorker, Stream};
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Written through a pipe to mark a point in the stream; never shown.
const MARK: &[u8] = b"\x00\x1bkeel-output-mark\x1b\x00";

/// The attempt whose output is being read.
pub(crate) type Current = Arc<Mutex<Option<(TaskId, u32)>>>;

pub(crate) struct Capture {
    /// The write ends (fds 1 and 2).
    pipes: [RawFd; 2],
    /// The read ends, and whether each reader holds bytes it took from its pipe but has not
    /// forwarded yet.
    readers: [(RawFd, Arc<AtomicBool>); 2],
    marks: std_mpsc::Receiver<Stream>,
}

impl Capture {
    /// Redirects fds 1 and 2 into pipes; `send` forwards each attempt's chunks.
    pub fn start(current: Current, send: impl Fn(FromWorker) + Send + Sync + 'static) -> std::io::Result<Capture> {
        let send = Arc::new(send);
        let (mark_tx, marks) = std_mpsc::channel();
        let mut pipes = [0; 2];
        let mut readers: [(RawFd, Arc<AtomicBool>); 2] = Default::default();
        for (i, (fd, stream)) in [(1, Stream::Stdout), (2, Stream::Stderr)].into_iter().enumerate() {
            let mut ends = [0; 2];
            // SAFETY: plain descriptor calls on descriptors this process owns.
            let original = unsafe {
                if libc::pipe(ends.as_mut_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let original = libc::dup(fd);
                if original < 0 || libc::dup2(ends[1], fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(ends[1]);
                original
            };
            pipes[i] = fd;
            let (current, send, mark_tx) = (current.clone(), send.clone(), mark_tx.clone());
            let read_end = ends[0];
            let busy = Arc::new(AtomicBool::new(false));
            readers[i] = (read_end, busy.clone());
            std::thread::Builder::new()
                .name(format!("keel-capture-{fd}"))
                .spawn(move || pump(read_end, original, stream, current, send, mark_tx, busy))?;
        }
        Ok(Capture { pipes, readers, marks })
    }

    /// Returns once everything printed so far has been forwarded (or after ten seconds, should a
    /// reader be stuck: a loaded machine can starve a thread for a while, and a late line is
    /// worse than a short wait).
    pub fn sync(&self) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // The pipe is read first, then the flag: a reader sets its flag before it takes bytes
        // out of the pipe, so bytes written before this call are seen in one or the other.
        let clean = self.readers.iter().all(|(fd, busy)| {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int into `queued`.
            let asked = unsafe { libc::ioctl(*fd, libc::FIONREAD, &mut queued) };
            asked == 0 && queued == 0 && !busy.load(Ordering::SeqCst)
        });
        if clean {
            return;
        }
        for fd in self.pipes {
            // SAFETY: a write to a descriptor this process owns.
            unsafe { libc::write(fd, MARK.as_ptr().cast(), MARK.len()) };
        }
        for _ in 0..2 {
            if self.marks.recv_timeout(Duration::from_secs(10)).is_err() {
                return;
            }
        }
    }
}

fn pump(
    fd: RawFd,
    original: RawFd,
    stream: Stream,
    current: Current,
    send: Arc<dyn Fn(FromWorker) + Send + Sync>,
    marks: std_mpsc::Sender<Stream>,
    busy: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // Wait for bytes without taking them, and say so before taking them (see `sync`).
        let mut ready = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd this function owns.
        if unsafe { libc::poll(&mut ready, 1, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        busy.store(true, Ordering::SeqCst);
        // SAFETY: reading into a buffer this function owns.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        loop {
            let (data, marked) = match find(&pending, MARK) {
                Some(at) => {
                    let data: Vec<u8> = pending[..at].to_vec();
                    pending.drain(..at + MARK.len());
                    (data, true)
                }
                None => {
                    // Keep a possible start of a mark back; send the rest.
                    let keep = (1..MARK.len()).rev().find(|k| pending.ends_with(&MARK[..*k])).unwrap_or(0);
                    let data: Vec<u8> = pending.drain(..pending.len() - keep).collect();
                    (data, false)
                }
            };
            if !data.is_empty() {
                // SAFETY: a write to the descriptor saved at start.
                unsafe { libc::write(original, data.as_ptr().cast(), data.len()) };
                if let Some((task, attempt)) = *current.lock().expect("current") {
                    send(FromWorker::Output { task, attempt, stream, data });
                }
            }
            if !marked {
                break;
            }
            let _ = marks.send(stream);
        }
        // A possible start of a mark held back keeps the reader busy.
        busy.store(!pending.is_empty(), Ordering::SeqCst);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
