//! Connection plumbing shared by the daemons: dial and accept with the handshake, and a writer
//! task that batches queued frames into few writes and sends keepalives when idle.

use keel_net::{handshake, FrameReader, FrameWriter, NetError, Tcp, Token, Transport, DIAL_TIMEOUT};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// The reading half of an authenticated connection.
pub type Reader<R> = FrameReader<R>;

/// What a connection's writer task sends.
#[derive(Debug)]
pub enum Outbound<T> {
    /// A frame.
    Frame(T),
    /// Flush what is queued and close the connection.
    Close,
}

/// An authenticated connection over transport `T`.
pub type Dialed<T> = (FrameReader<<T as Transport>::Read>, FrameWriter<<T as Transport>::Write>);

/// Connects to `addr` over TCP and runs the client handshake.
pub async fn dial(addr: &str, token: &Token, max_frame: usize) -> Result<Dialed<Tcp>, NetError> {
    dial_on(&Tcp, addr, token, max_frame).await.map(|(r, w, _)| (r, w))
}

/// Connects to `addr` over `transport` and runs the client handshake; also returns this end's
/// address. Gives up after [`DIAL_TIMEOUT`] when the peer does not answer (a cut network drops
/// the attempt silently rather than refusing it).
pub async fn dial_on<T: Transport>(
    transport: &T,
    addr: &str,
    token: &Token,
    max_frame: usize,
) -> Result<(FrameReader<T::Read>, FrameWriter<T::Write>, SocketAddr), NetError> {
    let connect = transport.connect(addr);
    let conn = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Ok(r) => r.map_err(|source| NetError::Io { peer: addr.to_string(), source })?,
        Err(_) => {
            return Err(NetError::Timeout {
                peer: addr.to_string(),
                ms: DIAL_TIMEOUT.as_millis() as u64,
                during: "connecting",
            })
        }
    };
    let mut reader = FrameReader::new(conn.read, max_frame, addr);
    let mut writer = FrameWriter::new(conn.write, max_frame, addr);
    handshake::client(&mut reader, &mut writer, token, max_frame).await?;
    Ok((reader, writer, conn.local))
}

/// Runs the server handshake on an accepted connection.
pub async fn accept<R, W>(
    r: R,
    w: W,
    peer: &str,
    token: &Token,
    max_frame: usize,
) -> Result<(FrameReader<R>, FrameWriter<W>), NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = FrameReader::new(r, max_frame, peer);
    let mut writer = FrameWriter::new(w, max_frame, peer);
    handshake::server(&mut reader, &mut writer, token, max_frame).await?;
    Ok((reader, writer))
}

/// Spawns the task that writes `rx`'s frames to `writer`: it sends every frame already queued
/// before flushing, so a burst becomes one write. With `keepalive`, it sends a keepalive whenever
/// it has been idle that long. It ends when the channel closes, on [`Outbound::Close`], or on a
/// write error (logged).
pub fn spawn_writer<T, W>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Outbound<T>>,
    keepalive: Option<Duration>,
) where
    T: Serialize + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        // One timer for the connection's life: a batch written only notes the time, and the
        // timer, when it fires, sends a keepalive or waits out the rest of the idle period
        // (rather than a new timer per batch).
        let every = keepalive.unwrap_or(Duration::MAX);
        let idle_from = |at: tokio::time::Instant| at.checked_add(every).unwrap_or_else(far_future);
        let mut wrote = tokio::time::Instant::now();
        let idle = tokio::time::sleep_until(idle_from(wrote));
        tokio::pin!(idle);
        'outer: loop {
            let first = match keepalive {
                None => rx.recv().await,
                Some(_) => tokio::select! {
                    first = rx.recv() => first,
                    _ = &mut idle => {
                        let due = idle_from(wrote);
                        if tokio::time::Instant::now() >= due {
                            if let Err(e) = writer.keepalive().await {
                                tracing::debug!(error = %e, "keepalive failed; the connection is closed");
                                break 'outer;
                            }
                            wrote = tokio::time::Instant::now();
                            idle.as_mut().reset(idle_from(wrote));
                        } else {
                            idle.as_mut().reset(due);
                        }
                        continue;
                    }
                },
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Outbound::Frame(frame) => {
                        let bytes = keel_net::frame::encode(&frame);
                        drop(frame);
                        if let Err(e) = writer.feed_bytes(bytes).await {
                            tracing::debug!(error = %e, "write failed; the connection is closed");
                            break 'outer;
                        }
                    }
                    Outbound::Close => {
                        let _ = writer.flush().await;
                        break 'outer;
                    }
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = writer.flush().await {
                tracing::debug!(error = %e, "flush failed; the connection is closed");
                break;
            }
            if keepalive.is_some() {
                wrote = tokio::time::Instant::now();
            }
        }
        use tokio::io::AsyncWriteExt;
        let _ = writer.get_mut().shutdown().await;
    });
}

/// A deadline no connection lives to see (for a writer without keepalives).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::{spawn_writer, Outbound};
    use keel_net::{FrameReader, FrameWriter, NetError};
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// A frame sent after `quiet` of silence, read by a reader that gives up after 60 ms of
    /// silence, from a writer that sends keepalives every `keepalive`.
    async fn after_silence(keepalive: Option<Duration>, quiet: Duration) -> Result<u32, NetError> {
        let (near, far) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(far, 1 << 20, "peer");
        reader.set_silence_limit(Some(Duration::from_millis(60)));
        let (tx, rx) = mpsc::unbounded_channel();
        spawn_writer(FrameWriter::new(near, 1 << 20, "peer"), rx, keepalive);
        tx.send(Outbound::Frame(1u32)).unwrap();
        assert_eq!(reader.recv::<u32>("a number").await?, 1);
        tokio::spawn(async move {
            tokio::time::sleep(quiet).await;
            let _ = tx.send(Outbound::Frame(2u32));
            // Kept open until the frame is read.
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        reader.recv::<u32>("a number").await
    }

    /// Counts the keepalives (empty frames) and other frames a writer with a 20 ms keepalive
    /// sends in `span`, while it is given a frame every `every` (never, if `None`).
    async fn frames_in(span: Duration, every: Option<Duration>) -> (usize, usize) {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        spawn_writer(FrameWriter::new(near, 1 << 20, "peer"), rx, Some(Duration::from_millis(20)));
        let feeder = tokio::spawn(async move {
            let Some(every) = every else { return std::future::pending().await };
            loop {
                tokio::time::sleep(every).await;
                let _ = tx.send(Outbound::Frame(7u32));
            }
        });
        let end = tokio::time::Instant::now() + span;
        let (mut keepalives, mut frames) = (0, 0);
        let mut prefix = [0u8; 4];
        while let Ok(read) = tokio::time::timeout_at(end, far.read_exact(&mut prefix)).await {
            read.unwrap();
            let len = u32::from_le_bytes(prefix) as usize;
            if len == 0 {
                keepalives += 1;
            } else {
                let mut body = vec![0u8; len];
                far.read_exact(&mut body).await.unwrap();
                frames += 1;
            }
        }
        feeder.abort();
        (keepalives, frames)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_sends_one_keepalive_per_period_and_a_busy_one_none() {
        let (keepalives, frames) = frames_in(Duration::from_millis(1_010), None).await;
        assert_eq!((keepalives, frames), (50, 0), "idle for 1,010 ms with a keepalive every 20 ms");
        let (keepalives, frames) = frames_in(Duration::from_millis(1_010), Some(Duration::from_millis(15))).await;
        assert_eq!((keepalives, frames), (0, 67), "a frame every 15 ms leaves no 20 ms of silence");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_keeps_its_connection_alive_with_keepalives() {
        let got = after_silence(Some(Duration::from_millis(20)), Duration::from_millis(300)).await;
        assert_eq!(got.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_keepalives_the_reader_gives_up_on_silence() {
        let got = after_silence(None, Duration::from_millis(300)).await;
        assert!(matches!(got, Err(NetError::Timeout { .. })), "{got:?}");
    }
}
