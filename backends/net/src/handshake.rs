//! The authenticated, versioned handshake every connection starts with.
//!
//! ```text
//! client -> server   Greeting { magic "KEEL", version, client nonce }
//! server -> client   Greeting { magic, version, server nonce }
//!                    Proof    { HMAC-SHA256(token, "keel server" | client nonce | server nonce) }
//! client -> server   Proof    { HMAC-SHA256(token, "keel client" | client nonce | server nonce) }
//! server -> client   Verdict  (accepted, or refused with the reason)
//! ```
//!
//! Both ends prove they hold the token without sending it; the nonces make every proof fresh, so
//! a recorded handshake cannot be replayed. Proofs are checked in constant time. Until the verdict,
//! frames are limited to [`HANDSHAKE_MAX_FRAME`] bytes.

use crate::frame::{FrameReader, FrameWriter};
use crate::NetError;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The wire protocol's version (the kernel's message version is checked again at registration).
pub const WIRE_VERSION: u32 = 2;
/// The largest frame accepted before the peer is authenticated.
pub const HANDSHAKE_MAX_FRAME: usize = 256;
/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections a listener lets handshake at once; more are closed at once, so that a
/// flood of connections that never authenticate cannot exhaust the listener's memory or file
/// descriptors (each waits at most [`HANDSHAKE_TIMEOUT`]).
pub const MAX_PENDING_HANDSHAKES: usize = 256;
const MAGIC: [u8; 4] = *b"KEEL";
const MIN_TOKEN_BYTES: usize = 16;

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandshakeError {
    /// The peer does not speak Keel's protocol at all.
    #[error("the peer is not a Keel process (bad magic bytes)")]
    NotKeel,
    /// The peer speaks another version.
    #[error("wire protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    Version {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The peer's proof does not match our token: one of the two holds the wrong token.
    #[error("the peer's proof does not match our cluster token (wrong token on one side)")]
    WrongToken,
    /// The server refused us; it says why.
    #[error("refused by the server: {0}")]
    Refused(String),
}

/// The cluster's shared secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Vec<u8>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read or written.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It is too short to be a secret.
    #[error("token file {path} holds {len} bytes; a token needs at least {MIN_TOKEN_BYTES}")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
}

impl Token {
    /// A token from raw bytes (at least 16).
    pub fn from_bytes(bytes: &[u8]) -> Option<Token> {
        (bytes.len() >= MIN_TOKEN_BYTES).then(|| Token(bytes.to_vec()))
    }

    /// The secret's bytes (to hand to a child process through its environment).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A fresh random token: 32 random bytes, hex-encoded.
    pub fn generate() -> Token {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).expect("the OS random source is available");
        Token(hex(&raw).into_bytes())
    }

    /// Reads a token file (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read(path).map_err(|source| TokenError::Io { path: path.to_path_buf(), source })?;
        let trimmed = trim(&text);
        Token::from_bytes(trimmed).ok_or(TokenError::TooShort { path: path.to_path_buf(), len: trimmed.len() })
    }

    /// Writes the token to `path`, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        let io = |source| TokenError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        use std::io::Write;
        let mut file = options.open(path).map_err(io)?;
        file.write_all(&self.0).map_err(io)?;
        file.write_all(b"\n").map_err(io)
    }

    fn mac(&self, label: &[u8], client: &[u8; 32], server: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(client);
        mac.update(server);
        mac
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize, Deserialize)]
struct Greeting {
    magic: [u8; 4],
    version: u32,
    nonce: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Proof {
    mac: [u8; 32],
}

#[derive(Serialize, Deserialize)]
enum Verdict {
    Accepted,
    Refused(String),
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).expect("the OS random source is available");
    n
}

fn failed(peer: &str, reason: HandshakeError) -> NetError {
    NetError::Handshake { peer: peer.to_string(), reason }
}

async fn with_timeout<T>(
    peer: &str,
    fut: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout {
            peer: peer.to_string(),
            ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
            during: "the handshake",
        }),
    }
}

/// Runs the client side. On success both halves accept frames up to `max_frame` bytes.
pub async fn client<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    token: &Token,
    max_frame: usize,
) -> Result<(), NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = reader.peer().to_string();
    reader.set_max(HANDSHAKE_MAX_FRAME);
    with_timeout(&peer, async {
        let ours = nonce();
        writer.send(&Greeting { magic: MAGIC, version: WIRE_VERSION, nonce: ours }).await?;
        let greeting: Greeting = reader.recv("handshake greeting").await?;
        if greeting.magic != MAGIC {
            return Err(failed(&peer, HandshakeError::NotKeel));
        }
        if greeting.version != WIRE_VERSION {
            return Err(failed(&peer, HandshakeError::Version { ours: WIRE_VERSION, theirs: greeting.version }));
        }
        let proof: Proof = reader.recv("handshake proof").await?;
        if token.mac(b"keel server", &ours, &greeting.nonce).verify_slice(&proof.mac).is_err() {
            return Err(failed(&peer, HandshakeError::WrongToken));
        }
        let mac = token.mac(b"keel client", &ours, &greeting.nonce).finalize().into_bytes().into();
        writer.send(&Proof { mac }).await?;
        match reader.recv("handshake verdict").await? {
            Verdict::Accepted => Ok(()),
            Verdict::Refused(why) => Err(failed(&peer, HandshakeError::Refused(why))),
        }
    })
    .await?;
    reader.set_max(max_frame);
    writer.set_max(max_frame);
    Ok(())
}

/// Runs the server side. On success both halves accept frames up to `max_frame` bytes.
pub async fn server<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    token: &Token,
    max_frame: usize,
) -> Result<(), NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = reader.peer().to_string();
    reader.set_max(HANDSHAKE_MAX_FRAME);
    with_timeout(&peer, async {
        let greeting: Greeting = reader.recv("handshake greeting").await?;
        let ours = nonce();
        // Answer with our own greeting first, so that a peer of another version learns ours.
        writer.feed(&Greeting { magic: MAGIC, version: WIRE_VERSION, nonce: ours }).await?;
        if greeting.magic != MAGIC {
            writer.flush().await?;
            return Err(failed(&peer, HandshakeError::NotKeel));
        }
        if greeting.version != WIRE_VERSION {
            writer.flush().await?;
            return Err(failed(&peer, HandshakeError::Version { ours: WIRE_VERSION, theirs: greeting.version }));
        }
        let mac = token.mac(b"keel server", &greeting.nonce, &ours).finalize().into_bytes().into();
        writer.send(&Proof { mac }).await?;
        let proof: Proof = reader.recv("handshake proof").await?;
        if token.mac(b"keel client", &greeting.nonce, &ours).verify_slice(&proof.mac).is_err() {
            let _ = writer.send(&Verdict::Refused("wrong cluster token".into())).await;
            return Err(failed(&peer, HandshakeError::WrongToken));
        }
        writer.send(&Verdict::Accepted).await
    })
    .await?;
    reader.set_max(max_frame);
    writer.set_max(max_frame);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, split, AsyncReadExt, AsyncWriteExt};

    fn token(s: &str) -> Token {
        Token::from_bytes(s.as_bytes()).unwrap()
    }

    async fn pair(client_token: Token, server_token: Token) -> (Result<(), NetError>, Result<(), NetError>) {
        let (a, b) = duplex(4096);
        let (ar, aw) = split(a);
        let (br, bw) = split(b);
        let client_side = async move {
            let mut r = FrameReader::new(ar, 1 << 20, "server");
            let mut w = FrameWriter::new(aw, 1 << 20, "server");
            client(&mut r, &mut w, &client_token, 1 << 20).await
        };
        let server_side = async move {
            let mut r = FrameReader::new(br, 1 << 20, "client");
            let mut w = FrameWriter::new(bw, 1 << 20, "client");
            server(&mut r, &mut w, &server_token, 1 << 20).await
        };
        tokio::join!(client_side, server_side)
    }

    #[tokio::test]
    async fn peers_holding_the_same_token_are_accepted() {
        let (c, s) = pair(token("0123456789abcdef-x"), token("0123456789abcdef-x")).await;
        c.unwrap();
        s.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_on_both_sides() {
        let (c, s) = pair(token("0123456789abcdef-x"), token("0123456789abcdef-y")).await;
        assert!(matches!(c, Err(NetError::Handshake { reason: HandshakeError::WrongToken, .. })), "{c:?}");
        // The client stops at the server's bad proof; the server sees it leave.
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn garbage_instead_of_a_greeting_fails_the_handshake_without_a_large_buffer() {
        let (mut a, b) = duplex(4096);
        let (br, bw) = split(b);
        let server_side = tokio::spawn(async move {
            let mut r = FrameReader::new(br, 1 << 20, "client");
            let mut w = FrameWriter::new(bw, 1 << 20, "client");
            server(&mut r, &mut w, &token("0123456789abcdef-x"), 1 << 20).await
        });
        // A length prefix of 1 MiB: over the handshake's limit, refused before it is buffered.
        a.write_all(&(1u32 << 20).to_le_bytes()).await.unwrap();
        let err = server_side.await.unwrap().unwrap_err();
        assert!(matches!(err, NetError::FrameTooLarge { max: HANDSHAKE_MAX_FRAME, .. }), "{err}");
        let mut rest = Vec::new();
        let _ = a.read_to_end(&mut rest).await;
    }

    #[tokio::test]
    async fn another_wire_version_is_named_on_the_server_side() {
        let (a, b) = duplex(4096);
        let (ar, aw) = split(a);
        let (br, bw) = split(b);
        let server_side = tokio::spawn(async move {
            let mut r = FrameReader::new(br, 1 << 20, "client");
            let mut w = FrameWriter::new(bw, 1 << 20, "client");
            server(&mut r, &mut w, &token("0123456789abcdef-x"), 1 << 20).await
        });
        let mut w = FrameWriter::new(aw, 1 << 20, "server");
        let mut r = FrameReader::new(ar, 1 << 20, "server");
        w.send(&Greeting { magic: MAGIC, version: 99, nonce: [0; 32] }).await.unwrap();
        let theirs: Greeting = r.recv("greeting").await.unwrap();
        assert_eq!(theirs.version, WIRE_VERSION);
        let err = server_side.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Handshake { reason: HandshakeError::Version { ours: WIRE_VERSION, theirs: 99 }, .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn token_files_are_trimmed_checked_for_length_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("keel-token-test-{}", std::process::id()));
        let path = dir.join("token");
        let t = Token::generate();
        t.save(&path).unwrap();
        assert_eq!(Token::load(&path).unwrap(), t);
        assert!(!format!("{t:?}").contains(std::str::from_utf8(&t.0).unwrap()));
        std::fs::write(&path, "  short \n").unwrap();
        let err = Token::load(&path).unwrap_err();
        assert!(err.to_string().contains("holds 5 bytes"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
