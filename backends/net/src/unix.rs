//! A Unix stream socket whose reader is not woken when its peer reads.
//!
//! Tokio registers a socket for both readiness kinds, edge-triggered. On a Unix stream socket,
//! every read by the peer frees buffer space and wakes whatever waits for space to write, so each
//! message a node reads from a worker wakes the worker's runtime thread for nothing, and the
//! other way round. Between a node and its workers, which trade a few small frames per task,
//! those wake-ups cost about as much as the frames themselves.
//!
//! Here the socket is registered for reading only. A write goes straight to the socket; only one
//! that finds the buffer full registers a second handle for writing, waits, and drops it once the
//! bytes went. Both halves are `AsyncRead`/`AsyncWrite`, so frames travel over them as over any
//! stream.

use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The reading half: registered for readability alone.
#[derive(Debug)]
pub struct QuietRead {
    fd: AsyncFd<UnixStream>,
}

/// The writing half: writes without waiting, and waits for space only when the socket is full.
/// Dropping it ends the stream for the peer, as shutting it down does.
#[derive(Debug)]
pub struct QuietWrite {
    stream: UnixStream,
    /// Registered for writability while a write waits for space; dropped once it went.
    waiting: Option<AsyncFd<UnixStream>>,
}

/// Splits a connected socket into its quiet halves. Must run within a Tokio runtime.
pub fn split(stream: tokio::net::UnixStream) -> io::Result<(QuietRead, QuietWrite)> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(true)?;
    let write = stream.try_clone()?;
    Ok((QuietRead { fd: register(stream, Interest::READABLE)? }, QuietWrite { stream: write, waiting: None }))
}

/// Registers `stream` with the runtime's reactor for `interest`.
fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor, keeps it open until it drops, and always
    // returns the same one; the `AsyncFd` owns the stream.
    Ok(unsafe { AsyncFd::register_with_interest(stream, interest) }?)
}

impl AsyncRead for QuietRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // Into the buffer's uninitialised room, as Tokio's own sockets read: zeroing it first
            // would cost as much as the read.
            // SAFETY: only the kernel writes there, and only what it reports read is marked so.
            let unfilled = unsafe { buf.unfilled_mut() };
            let read = guard.try_io(|fd| {
                // SAFETY: reads at most `unfilled.len()` bytes into memory `buf` owns.
                let n = unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(n)) => {
                    // SAFETY: the kernel wrote those `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl QuietWrite {
    /// Runs `op` until it does not block, waiting for space through a writability registration
    /// made for the wait.
    fn poll_op<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&UnixStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op(&self.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    self.waiting = None;
                    return Poll::Ready(done);
                }
            }
            if self.waiting.is_none() {
                self.waiting = Some(register(self.stream.try_clone()?, Interest::WRITABLE)?);
            }
            let fd = self.waiting.as_ref().expect("registered above");
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            // Writable now (or was when it woke us): try again; if it still blocks, wait anew.
            guard.clear_ready();
        }
    }
}

impl Drop for QuietWrite {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

impl AsyncWrite for QuietWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_op(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_op(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.shutdown(std::net::Shutdown::Write))
    }
}

/// Frames to the peer from any thread, in the order [`send`](DirectWriter::send) is called. A
/// frame goes out at once, written by the calling thread, when nothing is queued before it and
/// the socket takes it whole; otherwise it is queued, and a task of the runtime writes the queue
/// as the socket drains. A thread that sends a small frame hands nothing to another thread and
/// wakes none (a worker's end of a task is written by the thread that ran the task).
#[derive(Debug)]
pub struct DirectWriter {
    state: std::sync::Mutex<DirectState>,
    queued: tokio::sync::Notify,
    max: usize,
}

#[derive(Debug)]
struct DirectState {
    write: QuietWrite,
    /// Frame bytes not yet written, in order.
    queue: std::collections::VecDeque<u8>,
    /// A write failed: the connection is gone, and every later send fails.
    broken: bool,
}

impl DirectWriter {
    /// Wraps `write` (after the handshake: nothing of it is buffered elsewhere) for frames of at
    /// most `max` bytes; the writing task is spawned on the current runtime.
    pub fn start(write: QuietWrite, max: usize) -> std::sync::Arc<DirectWriter> {
        let state = DirectState { write, queue: std::collections::VecDeque::new(), broken: false };
        let writer =
            std::sync::Arc::new(DirectWriter { state: std::sync::Mutex::new(state), queued: Default::default(), max });
        tokio::spawn(writer.clone().drain());
        writer
    }

    /// Sends one frame whose bytes are `payload` (the length prefix is added here). Fails when
    /// the frame is larger than the limit (nothing is sent) or the connection is gone.
    pub fn send(&self, payload: &[u8]) -> io::Result<()> {
        let prefix = (payload.len() as u32).to_le_bytes();
        let mut state = self.state.lock().map_err(|_| io::Error::other("the writer panicked"))?;
        if state.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if payload.len() > self.max {
            // As a connection's writer does: the peer sees the connection end.
            state.broken = true;
            state.queue.clear();
            let _ = state.write.stream.shutdown(std::net::Shutdown::Write);
            let what = format!("a frame of {} bytes is over the limit of {} bytes", payload.len(), self.max);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        }
        if !state.queue.is_empty() {
            state.queue.extend(&prefix);
            state.queue.extend(payload);
            return Ok(());
        }
        let (mut at, total) = (0, prefix.len() + payload.len());
        while at < total {
            let parts: [&[u8]; 2] =
                if at < prefix.len() { [&prefix[at..], payload] } else { [&payload[at - prefix.len()..], &[]] };
            match (&state.write.stream).write_vectored(&[IoSlice::new(parts[0]), IoSlice::new(parts[1])]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    state.broken = true;
                    return Err(e);
                }
            }
        }
        if at < total {
            if at < prefix.len() {
                state.queue.extend(&prefix[at..]);
            }
            state.queue.extend(&payload[at.saturating_sub(prefix.len())..]);
            drop(state);
            self.queued.notify_one();
        }
        Ok(())
    }

    /// Writes what is queued whenever something is, waiting for room in the socket.
    async fn drain(self: std::sync::Arc<Self>) {
        loop {
            self.queued.notified().await;
            loop {
                match self.write_queued() {
                    Drained::Empty => break,
                    Drained::Broken => return,
                    Drained::Full(fd) => {
                        match fd.writable().await {
                            Ok(mut guard) => guard.clear_ready(),
                            // The runtime is going away.
                            Err(_) => return,
                        }
                        if let Ok(mut state) = self.state.lock() {
                            state.write.waiting = Some(fd);
                        }
                    }
                }
            }
        }
    }

    /// Writes the queue until it is empty or the socket is full (then returns the registration
    /// to wait on).
    fn write_queued(&self) -> Drained {
        let Ok(mut state) = self.state.lock() else { return Drained::Broken };
        loop {
            if state.queue.is_empty() {
                // Only a blocked write holds a registration for writing, and only a large frame
                // being written holds a large buffer.
                state.write.waiting = None;
                state.queue.shrink_to(64 << 10);
                return Drained::Empty;
            }
            let (a, b) = state.queue.as_slices();
            let written = (&state.write.stream).write_vectored(&[IoSlice::new(a), IoSlice::new(b)]);
            match written {
                Ok(n) => {
                    state.queue.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let registered = match state.write.waiting.take() {
                        Some(fd) => Ok(fd),
                        None => state.write.stream.try_clone().and_then(|s| register(s, Interest::WRITABLE)),
                    };
                    if let Ok(fd) = registered {
                        return Drained::Full(fd);
                    }
                    state.broken = true;
                    state.queue.clear();
                    state.write.waiting = None;
                    return Drained::Broken;
                }
                Err(_) => {
                    state.broken = true;
                    state.queue.clear();
                    state.write.waiting = None;
                    return Drained::Broken;
                }
            }
        }
    }
}

enum Drained {
    Empty,
    Full(AsyncFd<UnixStream>),
    Broken,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_reader_and_then_drops_its_registration() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut ar, mut aw) = split(a).unwrap();
        let (mut br, mut bw) = split(b).unwrap();
        // Far more than a Unix socket buffers: the writer must wait for space several times,
        // on another thread than the reader's.
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(1_000_003) {
                aw.write_all(chunk).await.unwrap();
            }
            aw
        });
        let mut got = vec![0u8; big.len()];
        br.read_exact(&mut got).await.unwrap();
        assert!(got == big, "the bytes arrive in order and intact");
        let aw = writer.await.unwrap();
        assert!(aw.waiting.is_none(), "the writability registration outlived the wait");
        // The other way, then the end of the stream when a write half alone is dropped.
        bw.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        ar.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(aw);
        assert_eq!(br.read(&mut back).await.unwrap(), 0, "dropping the write half ends the stream");
        drop(bw);
        assert_eq!(ar.read(&mut back).await.unwrap(), 0);
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_over_the_limit_ends_the_connection_as_a_connections_writer_does() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_ar, aw) = split(a).unwrap();
        let (mut br, _bw) = split(b).unwrap();
        let writer = DirectWriter::start(aw, 1_000);
        writer.send(b"before").unwrap();
        let err = writer.send(&[0u8; 1_001]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("1001 bytes"), "{err}");
        assert!(writer.send(b"after").is_err(), "nothing goes once the connection is ended");
        let mut got = Vec::new();
        br.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [&6u32.to_le_bytes()[..], b"before"].concat(), "the frame before, then the end");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_sent_from_many_threads_arrive_whole_and_in_each_threads_order_even_past_a_full_socket() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_ar, aw) = split(a).unwrap();
        let (mut br, _bw) = split(b).unwrap();
        let writer = DirectWriter::start(aw, 1 << 20);
        // Frames of every size up to several times the socket buffer, from four threads at once.
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        let len = (i as usize * 4099) % (600 << 10) + 5;
                        let mut frame = vec![t; len];
                        frame[1..5].copy_from_slice(&i.to_le_bytes());
                        writer.send(&frame).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        for _ in 0..800 {
            let mut prefix = [0u8; 4];
            br.read_exact(&mut prefix).await.unwrap();
            let mut frame = vec![0u8; u32::from_le_bytes(prefix) as usize];
            br.read_exact(&mut frame).await.unwrap();
            let (t, i) = (frame[0] as usize, u32::from_le_bytes(frame[1..5].try_into().unwrap()));
            assert_eq!(i, next[t], "thread {t}'s frames arrive in the order it sent them");
            assert_eq!(frame.len(), (i as usize * 4099) % (600 << 10) + 5);
            assert!(frame[5..].iter().all(|b| *b == t as u8), "frame {i} of thread {t} arrived whole");
            next[t] += 1;
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(next, [200; 4]);
        assert!(writer.send(&vec![0u8; (1 << 20) + 1]).is_err(), "a frame over the limit is refused");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(writer.state.lock().unwrap().write.waiting.is_none(), "no registration outlives the wait");
    }
}
