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
}
