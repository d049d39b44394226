//! A TCP proxy on loopback that a test can cut and restore, to simulate a network
//! partition between one client and a server (the server itself stays up).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Forwards connections from a random loopback port to `target`. [`cut`](Self::cut)
/// closes every open connection and refuses new ones until [`restore`](Self::restore).
/// Stopped on drop.
///
/// ```no_run
/// let redis = keel_testkit::RedisServer::start()?;
/// let proxy = keel_testkit::TcpProxy::start(([127, 0, 0, 1], redis.port()).into())?;
/// let url = format!("redis://{}", proxy.addr()); // the client connects here
/// proxy.cut();     // the client loses Redis; Redis itself is fine
/// proxy.restore(); // the client may reconnect
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    /// Milliseconds each chunk from the server waits before it reaches the client.
    reply_delay_ms: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn close_all(&self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            reply_delay_ms: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        let state = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("keel-testkit-proxy".into())
            .spawn(move || accept(&listener, &state))?;
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Holds every reply (each chunk from the server) for `delay` before passing it on,
    /// on every connection, until set back to zero: a slow network or a slow server,
    /// for tests of what happens while a reply is on its way.
    pub fn delay_replies(&self, delay: Duration) {
        self.shared.reply_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                if let Ok(server) =
                    TcpStream::connect_timeout(&shared.target, Duration::from_secs(2))
                {
                    forward(client, server, shared);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn forward(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = (client.try_clone(), server.try_clone());
    let (Ok(client2), Ok(server2)) = clones else {
        return;
    };
    {
        let mut open = shared
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
            open.push(a);
            open.push(b);
        }
    }
    // Each direction ends when either side closes; both sockets are then shut down.
    let replies = shared.clone();
    std::thread::spawn(move || pipe(client, server2, None));
    std::thread::spawn(move || pipe(server, client2, Some(&replies.reply_delay_ms)));
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay_ms: Option<&AtomicU64>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let delay = delay_ms.map_or(0, |d| d.load(Ordering::SeqCst));
                if delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
