//! Reaching a server: each address in turn, over plain TCP or TLS.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::args::ClientArgs;

/// A connection to the server, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub async fn connect_to(addr: &str, tls: Option<&TlsConnector>) -> io::Result<Box<dyn Stream>> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Box::new(stream) as Box<dyn Stream>),
        Some(tls) => {
            let name = crate::tls::server_name(addr).map_err(io::Error::other)?;
            Ok(Box::new(tls.connect(name, stream).await?) as Box<dyn Stream>)
        }
    }
}

pub fn tls_connector(args: &ClientArgs) -> io::Result<Option<TlsConnector>> {
    match args.tls {
        true => Ok(Some(
            crate::tls::connector(args.ca.as_deref()).map_err(io::Error::other)?,
        )),
        false => Ok(None),
    }
}

/// Tries each address once, in order; returns the index of the one that answered.
pub async fn connect(
    args: &ClientArgs,
    tls: Option<&TlsConnector>,
) -> io::Result<(usize, Box<dyn Stream>)> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address given");
    for (i, addr) in args.address.iter().enumerate() {
        match connect_to(addr, tls).await {
            Ok(s) => return Ok((i, s)),
            Err(e) => {
                eprintln!("machat-client: cannot connect to {addr}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}
