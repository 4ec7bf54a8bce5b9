//! Where connections come from. The daemons are written against [`Transport`], so that the same
//! code runs over the operating system's TCP ([`Tcp`]) in a cluster and over turmoil's simulated
//! network ([`Sim`], feature `turmoil`) in tests that partition, delay and crash hosts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

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

    /// Whether daemons of one process may also reach each other without this network, by handing
    /// typed messages over (a simulated network must see every message, so it says no).
    const IN_PROCESS_LINKS: bool = false;
    /// Whether a daemon's thread may keep running for [`crate::SPIN`] after each event while a
    /// caller of its process waits ([`crate::stay_hot`]): true on real threads; false on the
    /// simulated network, whose hosts share one thread in simulated time.
    const STAYS_HOT: bool = false;
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
///
/// A connection to a listener of this same process (the embedded default's driver, head and node
/// share one) does not go through the kernel: it is a pair of in-memory pipes, handed to the
/// listener as any other accepted connection. The frames, the handshake and the closing are the
/// same; the system calls and the loopback stack are saved. Other processes reach the listener
/// over TCP as usual.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

/// Bytes buffered in each direction of an in-process connection before a writer waits (TCP's
/// buffers give the same back-pressure).
const IN_PROCESS_BUFFER: usize = 256 << 10;

type InProcess = tokio::io::DuplexStream;

/// Listeners of this process by address, for in-process connections.
type Registry = std::sync::Mutex<std::collections::HashMap<SocketAddr, (u64, Handoff)>>;

/// Where a listener takes its in-process connections from.
type Handoff = mpsc::UnboundedSender<Accepted<TcpRead, TcpWrite>>;

fn registry() -> &'static Registry {
    static LISTENERS: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    LISTENERS.get_or_init(Default::default)
}

/// The in-process listener that `addr` reaches (see [`find_local`]).
fn in_process(addr: &str) -> Option<Handoff> {
    let listeners = registry().lock().ok()?;
    find_local(&listeners, addr).filter(|(_, tx)| !tx.is_closed()).map(|(_, tx)| tx.clone())
}

/// What this process has listening at `addr`, among `listeners` (by bound address): what is bound
/// to it, or to the wildcard address on its port when `addr` is a loopback address (as a loopback
/// dial reaches a listener on the wildcard address of the same family).
pub fn find_local<'a, V>(listeners: &'a std::collections::HashMap<SocketAddr, V>, addr: &str) -> Option<&'a V> {
    let target: SocketAddr = addr.parse().ok()?;
    let wildcard = match target.ip() {
        std::net::IpAddr::V4(_) => std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED),
        std::net::IpAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
    };
    listeners.get(&target).or_else(|| {
        target.ip().is_loopback().then(|| listeners.get(&SocketAddr::new(wildcard, target.port()))).flatten()
    })
}

/// A TCP connection's reading half, or an in-process connection's.
#[derive(Debug)]
pub enum TcpRead {
    /// Over the operating system's TCP.
    Os(tokio::net::tcp::OwnedReadHalf),
    /// Within this process.
    InProcess(tokio::io::ReadHalf<InProcess>),
}

/// A TCP connection's writing half, or an in-process connection's.
#[derive(Debug)]
pub enum TcpWrite {
    /// Over the operating system's TCP.
    Os(tokio::net::tcp::OwnedWriteHalf),
    /// Within this process.
    InProcess(tokio::io::WriteHalf<InProcess>),
}

impl AsyncRead for TcpRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TcpRead::Os(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            TcpRead::InProcess(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpWrite {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpWrite::Os(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            TcpWrite::InProcess(w) => std::pin::Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpWrite::Os(w) => std::pin::Pin::new(w).poll_write_vectored(cx, bufs),
            TcpWrite::InProcess(w) => std::pin::Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TcpWrite::Os(w) => w.is_write_vectored(),
            TcpWrite::InProcess(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TcpWrite::Os(w) => std::pin::Pin::new(w).poll_flush(cx),
            TcpWrite::InProcess(w) => std::pin::Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TcpWrite::Os(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            TcpWrite::InProcess(w) => std::pin::Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl Transport for Tcp {
    type Read = TcpRead;
    type Write = TcpWrite;
    type Listener = TcpListen;

    const IN_PROCESS_LINKS: bool = true;
    const STAYS_HOT: bool = true;

    async fn connect(&self, addr: &str) -> io::Result<Connection<Self::Read, Self::Write>> {
        if let Some(listener) = in_process(addr) {
            let (ours, theirs) = tokio::io::duplex(IN_PROCESS_BUFFER);
            let (their_read, their_write) = tokio::io::split(theirs);
            let (our_read, our_write) = tokio::io::split(ours);
            let target: SocketAddr = addr.parse().map_err(io::Error::other)?;
            // The dialling end's address is the one it dialled, as over TCP on this machine
            // (the address a node advertises to its peers derives from it).
            let ip = if target.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { target.ip() };
            let local = SocketAddr::new(ip, 0);
            let theirs = Connection {
                read: TcpRead::InProcess(their_read),
                write: TcpWrite::InProcess(their_write),
                local: target,
            };
            if listener.send((theirs, local)).is_ok() {
                return Ok(Connection {
                    read: TcpRead::InProcess(our_read),
                    write: TcpWrite::InProcess(our_write),
                    local,
                });
            }
            // The listener went away meanwhile: TCP says what became of it.
        }
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        Ok(Connection { read: TcpRead::Os(read), write: TcpWrite::Os(write), local })
    }

    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        let os = tokio::net::TcpListener::bind(addr).await?;
        let local = os.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut listeners) = registry().lock() {
            listeners.insert(local, (id, tx));
        }
        Ok(TcpListen { os, local, id, in_process: tokio::sync::Mutex::new(rx) })
    }
}

/// A TCP listener that also accepts this process's own connections (see [`Tcp`]).
#[derive(Debug)]
pub struct TcpListen {
    os: tokio::net::TcpListener,
    local: SocketAddr,
    /// Its entry in the registry (a later listener may have the same address).
    id: u64,
    in_process: tokio::sync::Mutex<mpsc::UnboundedReceiver<Accepted<TcpRead, TcpWrite>>>,
}

impl Drop for TcpListen {
    fn drop(&mut self) {
        if let Ok(mut listeners) = registry().lock() {
            if listeners.get(&self.local).is_some_and(|(id, _)| *id == self.id) {
                listeners.remove(&self.local);
            }
        }
    }
}

impl Listener for TcpListen {
    type Read = TcpRead;
    type Write = TcpWrite;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn accept(&self) -> io::Result<(Connection<Self::Read, Self::Write>, SocketAddr)> {
        let mut in_process = self.in_process.lock().await;
        tokio::select! {
            accepted = self.os.accept() => {
                let (stream, peer) = accepted?;
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr()?;
                let (read, write) = stream.into_split();
                Ok((Connection { read: TcpRead::Os(read), write: TcpWrite::Os(write), local }, peer))
            }
            Some(accepted) = in_process.recv() => Ok(accepted),
        }
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
