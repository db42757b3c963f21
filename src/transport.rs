//! The byte streams a line-protocol connection runs on: plain TCP, and TCP inside TLS.
//!
//! The connection code needs three things of a stream: read what is there (or leave the
//! waker), write what the socket takes (or leave the waker), and push out what the stream
//! itself buffered. Plain TCP does the first two with one syscall each and has nothing of its
//! own to flush; TLS goes through rustls, which encrypts into its own buffer. Keeping the
//! connection generic over this trait means one implementation of the chat for both, and
//! plain TCP keeps its fast path (a short read means the socket is drained: no extra read to
//! learn that it would block).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Most bytes read in one read.
pub const READ_CHUNK: usize = 16 * 1024;

/// A client's byte stream (see the module doc).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Appends what can be read now to `buf` (up to `READ_CHUNK`); `Ok(0)` is the end of the
    /// stream. Pending (with the waker left) when there is nothing.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>>;

    /// Writes some of `bytes`; Pending (with the waker left) when the stream takes nothing.
    fn poll_write_some(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>>;

    /// Pushes out what the stream buffered itself (TLS records); plain TCP has nothing.
    fn poll_flush_out(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether the connection may move to another thread's runtime: only a plain socket
    /// can (a TLS stream's state stays with the runtime that accepted it).
    fn movable(&self) -> bool {
        false
    }

    /// The plain socket, for a move (see `movable`).
    fn into_std(self) -> io::Result<std::net::TcpStream>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// A name for logs and metrics.
    fn is_tls(&self) -> bool {
        false
    }
}

impl Io for TcpStream {
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        buf.reserve(READ_CHUNK);
        let start = buf.len();
        loop {
            ready!(self.poll_read_ready(cx))?;
            // A short read means the socket is drained. Saying so to the reactor (by answering
            // WouldBlock inside try_io) saves the read that would only return EAGAIN.
            let stream = &*self;
            let r = stream.try_io(Interest::READABLE, || {
                let n = stream.try_read_buf(buf)?;
                if n > 0 && n < READ_CHUNK {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match r {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buf.len() > start {
                        return Poll::Ready(Ok(buf.len() - start));
                    }
                    // Readiness was cleared: the next poll_read_ready leaves the waker.
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, bytes)
    }

    fn movable(&self) -> bool {
        true
    }

    fn into_std(self) -> io::Result<std::net::TcpStream> {
        TcpStream::into_std(self)
    }
}

impl Io for TlsStream<TcpStream> {
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        let mut rb = ReadBuf::new(&mut buf[start..]);
        let r = Pin::new(&mut *self).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        buf.truncate(start + n);
        ready!(r)?;
        Poll::Ready(Ok(n))
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, bytes)
    }

    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_flush(cx)
    }

    fn is_tls(&self) -> bool {
        true
    }
}
