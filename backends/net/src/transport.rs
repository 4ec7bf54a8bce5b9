//! Where connections come from. The daemons are written against [`Transport`], so that the same
//! code runs over the operating system's TCP ([`Tcp`]) in a cluster and over turmoil's simulated
//! network ([`Sim`], feature `turmoil`) in tests that partition, delay and crash hosts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection's halves and its local address (the interface that reaches the peer).
pub struct Connection<R, W> {
    /// The reading half.
    pub read: R,
    /// The writing half.
    pub write: W,
    /// This end's address.
    pub local: SocketAddr,
}

/// A network: dial and listen.
pub trait Transport: Clone + Send + Sync + 'static {
    /// A connection's reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// A connection's writing half.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// A listening socket.
    type Listener: Listener<Read = Self::Read, Write = Self::Write>;

    /// Connects to `addr` (`host:port`).
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Connection<Self::Read, Self::Write>>> + Send;

    /// Listens on `addr` (`host:port`; port 0 picks a free one).
    fn bind(&self, addr: &str) -> impl Future<Output = io::Result<Self::Listener>> + Send;
}

/// An accepted connection and the peer's address.
pub type Accepted<R, W> = (Connection<R, W>, SocketAddr);

/// A listening socket.
pub trait Listener: Send + Sync + 'static {
    /// A connection's reading half.
    type Read;
    /// A connection's writing half.
    type Write;

    /// The address it listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The next connection and the peer's address.
    fn accept(&self) -> impl Future<Output = io::Result<Accepted<Self::Read, Self::Write>>> + Send;
}

/// The operating system's TCP, with Nagle's algorithm off (frames are batched by their writers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Transport for Tcp {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    type Listener = tokio::net::TcpListener;

    async fn connect(&self, addr: &str) -> io::Result<Connection<Self::Read, Self::Write>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        Ok(Connection { read, write, local })
    }

    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }
}

impl Listener for tokio::net::TcpListener {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }

    async fn accept(&self) -> io::Result<(Connection<Self::Read, Self::Write>, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        Ok((Connection { read, write, local }, peer))
    }
}

/// turmoil's simulated network: hosts, links with latency, partitions and crashes, on simulated
/// time. Only inside a turmoil simulation.
#[cfg(feature = "turmoil")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Sim;

#[cfg(feature = "turmoil")]
impl Transport for Sim {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;
    type Listener = turmoil::net::TcpListener;

    async fn connect(&self, addr: &str) -> io::Result<Connection<Self::Read, Self::Write>> {
        let stream = turmoil::net::TcpStream::connect(addr).await?;
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        Ok(Connection { read, write, local })
    }

    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(addr).await
    }
}

#[cfg(feature = "turmoil")]
impl Listener for turmoil::net::TcpListener {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        turmoil::net::TcpListener::local_addr(self)
    }

    async fn accept(&self) -> io::Result<(Connection<Self::Read, Self::Write>, SocketAddr)> {
        let (stream, peer) = turmoil::net::TcpListener::accept(self).await?;
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        Ok((Connection { read, write, local }, peer))
    }
}
