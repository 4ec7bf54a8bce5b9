//! Length-prefixed postcard frames: a 4-byte little-endian length, then that many bytes.
//!
//! The reader refuses a frame longer than its limit as soon as the length prefix arrives, before
//! buffering any of it, so a hostile or broken peer cannot make it allocate more than the limit.
//! Writers batch: [`FrameWriter::feed`] queues a frame, [`FrameWriter::flush`] sends what is
//! queued, so that a burst of messages becomes few system calls.

use crate::NetError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

/// The default frame limit after the handshake: 64 MiB (object bytes travel in smaller chunks).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

const PREFIX: usize = 4;

/// The codec: a little-endian `u32` length prefix and a limit.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max: usize,
}

/// Why the codec stopped (kept apart from I/O errors so that the reader can name the problem).
#[derive(Debug)]
pub enum CodecError {
    /// The socket failed.
    Io(io::Error),
    /// A length prefix over the limit.
    TooLarge(u64),
}

impl From<io::Error> for CodecError {
    fn from(e: io::Error) -> Self {
        CodecError::Io(e)
    }
}

impl FrameCodec {
    /// A codec refusing frames over `max` bytes.
    pub fn new(max: usize) -> FrameCodec {
        FrameCodec { max }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        if src.len() < PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes(src[..PREFIX].try_into().expect("four bytes")) as usize;
        if len > self.max {
            return Err(CodecError::TooLarge(len as u64));
        }
        if src.len() < PREFIX + len {
            src.reserve(PREFIX + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Io(io::ErrorKind::UnexpectedEof.into())),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        if item.len() > self.max {
            return Err(CodecError::TooLarge(item.len() as u64));
        }
        dst.reserve(PREFIX + item.len());
        dst.put_u32_le(item.len() as u32);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// The receiving half of a framed connection.
pub struct FrameReader<R> {
    inner: FramedRead<R, FrameCodec>,
    peer: String,
    silence: Option<Duration>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames from `io`, refusing any over `max` bytes. `peer` names the other end in errors.
    pub fn new(io: R, max: usize, peer: impl Into<String>) -> FrameReader<R> {
        FrameReader { inner: FramedRead::new(io, FrameCodec::new(max)), peer: peer.into(), silence: None }
    }

    /// Ends the connection with [`NetError::Timeout`] when no whole frame (not even a keepalive,
    /// see [`FrameWriter::keepalive`]) arrives for `limit`: the peer died without closing, or the
    /// network between us is cut. Only for peers that send keepalives, and with a limit long
    /// enough for the largest frame to arrive (keepalives cannot interleave with a frame).
    pub fn set_silence_limit(&mut self, limit: Option<Duration>) {
        self.silence = limit;
    }

    /// Changes the frame limit (raised once the handshake has authenticated the peer).
    pub fn set_max(&mut self, max: usize) {
        self.inner.decoder_mut().max = max;
    }

    /// The other end, as errors name it.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next frame's raw bytes; `Err(Closed)` at the end of the stream. Keepalives (empty
    /// frames) are skipped. Cancel-safe: dropping the future loses no frame.
    pub async fn recv_bytes(&mut self) -> Result<BytesMut, NetError> {
        loop {
            let next = match self.silence {
                None => self.inner.next().await,
                Some(limit) => match tokio::time::timeout(limit, self.inner.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Err(NetError::Timeout {
                            peer: self.peer.clone(),
                            ms: limit.as_millis() as u64,
                            during: "waiting for any frame or keepalive",
                        })
                    }
                },
            };
            match next {
                Some(Ok(frame)) if frame.is_empty() => continue,
                next => return self.outcome(next),
            }
        }
    }

    fn outcome(&self, next: Option<Result<BytesMut, CodecError>>) -> Result<BytesMut, NetError> {
        match next {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(CodecError::TooLarge(len))) => {
                Err(NetError::FrameTooLarge { peer: self.peer.clone(), len, max: self.inner.decoder().max })
            }
            Some(Err(CodecError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(NetError::Closed { peer: self.peer.clone(), mid_frame: true })
            }
            Some(Err(CodecError::Io(source))) => Err(NetError::Io { peer: self.peer.clone(), source }),
            None => {
                let mid_frame = !self.inner.read_buffer().is_empty();
                Err(NetError::Closed { peer: self.peer.clone(), mid_frame })
            }
        }
    }

    /// The next frame decoded as a `T`; `what` names the message kind in errors.
    pub async fn recv<T: DeserializeOwned>(&mut self, what: &'static str) -> Result<T, NetError> {
        let frame = self.recv_bytes().await?;
        decode(&frame, what, &self.peer)
    }
}

/// Decodes one frame's bytes as a `T`: every byte must be used.
pub fn decode<T: DeserializeOwned>(frame: &[u8], what: &'static str, peer: &str) -> Result<T, NetError> {
    let malformed = |detail: String| NetError::Malformed { peer: peer.to_string(), what, len: frame.len(), detail };
    match postcard::take_from_bytes::<T>(frame) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(malformed(format!("{} trailing bytes after the message", rest.len()))),
        Err(e) => Err(malformed(e.to_string())),
    }
}

/// The sending half of a framed connection.
pub struct FrameWriter<W> {
    inner: FramedWrite<W, FrameCodec>,
    peer: String,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Frames to `io`, refusing to send any over `max` bytes.
    pub fn new(io: W, max: usize, peer: impl Into<String>) -> FrameWriter<W> {
        FrameWriter { inner: FramedWrite::new(io, FrameCodec::new(max)), peer: peer.into() }
    }

    /// Changes the frame limit.
    pub fn set_max(&mut self, max: usize) {
        self.inner.encoder_mut().max = max;
    }

    fn error(&self, e: CodecError) -> NetError {
        match e {
            CodecError::Io(source) => NetError::Io { peer: self.peer.clone(), source },
            CodecError::TooLarge(len) => {
                NetError::FrameTooLarge { peer: self.peer.clone(), len, max: self.inner.encoder().max }
            }
        }
    }

    /// Queues `msg` without flushing.
    pub async fn feed<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), NetError> {
        let bytes = encode(msg);
        self.feed_bytes(bytes).await
    }

    /// Queues a frame of raw bytes without flushing.
    pub async fn feed_bytes(&mut self, bytes: Bytes) -> Result<(), NetError> {
        let r = self.inner.feed(bytes).await;
        r.map_err(|e| self.error(e))
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        let r = SinkExt::<Bytes>::flush(&mut self.inner).await;
        r.map_err(|e| self.error(e))
    }

    /// Sends a keepalive: an empty frame, which readers skip. It tells a reader with a silence
    /// limit that this end is alive while it has nothing to say.
    pub async fn keepalive(&mut self) -> Result<(), NetError> {
        self.feed_bytes(Bytes::new()).await?;
        self.flush().await
    }

    /// Queues `msg` and flushes.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), NetError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// The underlying writer (to shut it down).
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }

    /// The stream, for writing frames some other way from now on. Call after a flush: bytes fed
    /// but not yet written would be lost.
    pub fn into_inner(self) -> W {
        debug_assert!(self.inner.write_buffer().is_empty(), "frames fed but not flushed to {}", self.peer);
        self.inner.into_inner()
    }
}

/// A message's frame bytes.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(msg).expect("serialising to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_round_trip_and_batch() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, 1024, "b");
        let mut r = FrameReader::new(b, 1024, "a");
        w.feed(&(1u32, "one")).await.unwrap();
        w.feed(&(2u32, "two")).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(r.recv::<(u32, String)>("pair").await.unwrap(), (1, "one".to_string()));
        assert_eq!(r.recv::<(u32, String)>("pair").await.unwrap(), (2, "two".to_string()));
        drop(w);
        assert!(r.recv::<(u32, String)>("pair").await.unwrap_err().is_clean_close());
    }

    #[tokio::test]
    async fn an_oversized_length_prefix_is_refused_before_any_body_is_buffered() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024, "peer 1");
        a.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
        let err = r.recv_bytes().await.unwrap_err();
        assert!(matches!(err, NetError::FrameTooLarge { len, max: 1024, .. } if len == 1 << 30), "{err}");
        assert!(err.to_string().contains("peer 1"), "{err}");
    }

    #[tokio::test]
    async fn garbage_bytes_are_a_malformed_frame_naming_the_kind() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024, "peer 2");
        a.write_all(&3u32.to_le_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        let err = r.recv::<String>("greeting").await.unwrap_err();
        assert!(matches!(err, NetError::Malformed { what: "greeting", len: 3, .. }), "{err}");
    }

    #[tokio::test]
    async fn trailing_bytes_after_a_message_are_malformed() {
        let frame = [encode(&7u32).to_vec(), vec![1, 2]].concat();
        let err = decode::<u32>(&frame, "number", "p").unwrap_err();
        assert!(err.to_string().contains("2 trailing bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_reported_as_closed_mid_frame() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024, "p");
        a.write_all(&10u32.to_le_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        let err = r.recv_bytes().await.unwrap_err();
        assert!(matches!(err, NetError::Closed { mid_frame: true, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_writer_refuses_to_send_a_frame_over_its_limit() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, 8, "p");
        let err = w.send(&vec![0u8; 100]).await.unwrap_err();
        assert!(matches!(err, NetError::FrameTooLarge { max: 8, .. }), "{err}");
    }
}
