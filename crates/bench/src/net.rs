//! Connecting client sockets, spread over several loopback source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Source addresses for client sockets: 127.0.0.2 .. 127.0.0.(1+n) when the target is on the
/// loopback network (so 19,000 connections do not exhaust one address's ephemeral ports),
/// otherwise none (let the kernel choose).
pub fn source_addrs(target: SocketAddr, n: u8) -> Vec<Ipv4Addr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && n > 0 => (0..n)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(i)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Connects to `addr`, bound to `src` when given, with a timeout.
pub async fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> Result<TcpStream, String> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = src {
        // Choose the port at connect time, so ports are unique per 4-tuple, not per address.
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option pointer/length; failure is harmless (ignored).
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), sock.connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out after 10 s"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("set_nodelay: {e}"))?;
    Ok(stream)
}
