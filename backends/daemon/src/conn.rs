//! Connection plumbing shared by the daemons: dial and accept with the handshake, and a writer
//! task that batches queued frames into few writes.

use keel_net::{handshake, FrameReader, FrameWriter, NetError, Token};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
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

/// Connects to `addr` and runs the client handshake.
pub async fn dial(
    addr: &str,
    token: &Token,
    max_frame: usize,
) -> Result<(FrameReader<tokio::net::tcp::OwnedReadHalf>, FrameWriter<tokio::net::tcp::OwnedWriteHalf>), NetError> {
    let stream = TcpStream::connect(addr).await.map_err(|source| NetError::Io { peer: addr.to_string(), source })?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, max_frame, addr);
    let mut writer = FrameWriter::new(w, max_frame, addr);
    handshake::client(&mut reader, &mut writer, token, max_frame).await?;
    Ok((reader, writer))
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
/// before flushing, so a burst becomes one write. It ends when the channel closes, on
/// [`Outbound::Close`], or on a write error (logged).
pub fn spawn_writer<T, W>(mut writer: FrameWriter<W>, mut rx: mpsc::UnboundedReceiver<Outbound<T>>)
where
    T: Serialize + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        'outer: while let Some(first) = rx.recv().await {
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
