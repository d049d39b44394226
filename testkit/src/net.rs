//! Loopback ports and readiness polling.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// A port on 127.0.0.1 that was free a moment ago. Callers retry if a server then fails
/// to bind it (another process may have taken it in between).
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(TestkitError::io("finding a free loopback port"))?;
    let port = listener
        .local_addr()
        .map_err(TestkitError::io("reading a bound port"))?
        .port();
    Ok(port)
}

/// A free port whose `port + offset` is free too (Redis Cluster's bus port).
pub(crate) fn free_port_pair(offset: u16) -> Result<u16> {
    for _ in 0..64 {
        let port = free_port()?;
        if port > u16::MAX - offset {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + offset)).is_ok() {
            return Ok(port);
        }
    }
    Err(TestkitError::Io {
        action: "finding a free loopback port pair".into(),
        source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free pair after 64 tries"),
    })
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `ready` every 20 ms until it returns `Ok(true)` or `deadline` passes. `give_up`
/// is asked each round whether waiting still makes sense (the process may have died).
pub(crate) fn wait_until(
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
    mut give_up: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if ready() {
            return true;
        }
        if give_up() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}
