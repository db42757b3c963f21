//! Binding listening sockets: every address a flag's `host:port` resolves to, with the
//! configured backlog. Shared by the chat ports (`server`) and the web side (`web`), which
//! otherwise know nothing of each other.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tracing::warn;

/// Binds every address `addr` resolves to, with the configured backlog.
pub async fn listen_all(addr: &str, backlog: u32) -> io::Result<Vec<TcpListener>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {addr}: {e}")))?
        .collect();
    addrs.dedup();
    let mut listeners = Vec::new();
    let mut last_err = None;
    for addr in addrs {
        match listen(addr, backlog) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                warn!(%addr, "cannot listen: {e}");
                last_err = Some(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                ));
            }
        }
    }
    if listeners.is_empty() {
        return Err(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "address resolved to nothing",
            )
        }));
    }
    Ok(listeners)
}

fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
