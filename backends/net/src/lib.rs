//! Keel's transport: how the head, the nodes, drivers and workers talk over TCP (or a Unix socket).
//!
//! - [`frame`]: length-prefixed postcard frames with a maximum size. A frame over the limit, or
//!   bytes that do not decode as the expected message, end that connection with a typed
//!   [`NetError`] naming the peer and the problem; nothing else is touched.
//! - [`handshake`]: before anything else is read, both ends prove they hold the cluster's secret
//!   token (HMAC-SHA256 over fresh nonces from both sides, checked in constant time). The token
//!   itself never crosses the wire, and an unauthenticated peer can make the other side buffer at
//!   most [`handshake::HANDSHAKE_MAX_FRAME`] bytes.
//! - [`wire`]: the envelopes the hosts exchange around the kernel's protocol messages.
//! - [`backoff`]: reconnect delays.
//! - [`transport`]: where connections come from: TCP, or turmoil's simulated network in tests.
//! - Liveness: a writer with nothing to say sends keepalives (empty frames) every
//!   [`KEEPALIVE_EVERY`], from its own task, so that work never delays them; a reader with a
//!   silence limit ends a connection on which nothing arrived for that long (a peer that died
//!   without closing, a cut network).
//!
//! This crate holds no scheduling logic: it moves the kernel's messages and nothing decides here.

pub mod backoff;
pub mod frame;
pub mod handshake;
pub mod hot;
pub mod transport;
pub mod unix;
pub mod wire;

pub use frame::{FrameReader, FrameWriter, DEFAULT_MAX_FRAME};
pub use handshake::{HandshakeError, Token, TokenError};
pub use hot::{stay_hot, SPIN};
pub use transport::{Connection, Listener, Tcp, Transport};

/// How often a writer with nothing to say sends a keepalive.
pub const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long dialing may take before the attempt is given up (the handshake that follows has
/// its own limit, [`handshake::HANDSHAKE_TIMEOUT`]).
pub const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

use std::io;

/// What went wrong on one connection. Each variant names the peer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The socket failed.
    #[error("i/o error with {peer}: {source}")]
    Io {
        /// The other end.
        peer: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A frame announced more bytes than the connection allows.
    #[error("{peer} sent a frame of {len} bytes, over the limit of {max} bytes")]
    FrameTooLarge {
        /// The other end.
        peer: String,
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A frame's bytes are not a valid message of the expected kind.
    #[error("{peer} sent a malformed {what} frame ({len} bytes): {detail}")]
    Malformed {
        /// The other end.
        peer: String,
        /// The message kind expected.
        what: &'static str,
        /// The frame length.
        len: usize,
        /// The decoder's complaint.
        detail: String,
    },
    /// The peer closed the connection (in the middle of a frame when `mid_frame`).
    #[error("{peer} closed the connection{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    Closed {
        /// The other end.
        peer: String,
        /// Whether a frame was cut short.
        mid_frame: bool,
    },
    /// The handshake failed.
    #[error("handshake with {peer} failed: {reason}")]
    Handshake {
        /// The other end.
        peer: String,
        /// Why.
        reason: HandshakeError,
    },
    /// The peer did not answer in time.
    #[error("{peer} did not answer within {ms} ms ({during})")]
    Timeout {
        /// The other end.
        peer: String,
        /// How long we waited.
        ms: u64,
        /// What we were waiting for.
        during: &'static str,
    },
}

impl NetError {
    /// Whether the connection simply ended (a normal close), as opposed to a fault worth logging loudly.
    pub fn is_clean_close(&self) -> bool {
        matches!(self, NetError::Closed { mid_frame: false, .. })
    }
}
