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
        'outer: loop {
            let first = match keepalive {
                None => rx.recv().await,
                Some(every) => tokio::select! {
                    first = rx.recv() => first,
                    _ = tokio::time::sleep(every) => {
                        if let Err(e) = writer.keepalive().await {
                            tracing::debug!(error = %e, "keepalive failed; the connection is closed");
                            break 'outer;
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
        }
        use tokio::io::AsyncWriteExt;
        let _ = writer.get_mut().shutdown().await;
    });
}
