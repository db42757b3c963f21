//! The TCP transport of a fanout connection (machat, Redis, NATS): the protocol's bytes as they
//! are, written with `try_write` as far as the socket takes them, read through `AsyncRead` into
//! the thread's shared buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::conn::{Io, Out, Transport};
use super::lat::{lock, node_lat, with_thread_state};
use super::recv::RecvState;
use super::{Ctx, Spec};
use crate::{net, proto};

pub(super) struct Tcp {
    stream: TcpStream,
    /// The incomplete last frame of the previous read.
    carry: Vec<u8>,
}

impl Transport for Tcp {
    async fn connect(ctx: &Ctx, spec: &Spec, out: &mut Vec<u8>) -> Result<Tcp, String> {
        let stream = net::connect(ctx.nodes[spec.node], spec.src).await?;
        proto::handshake(ctx.target, &spec.name, &spec.room_name, spec.member, out);
        Ok(Tcp {
            stream,
            carry: Vec::new(),
        })
    }

    fn write_now(&mut self, out: &mut Out) -> Result<(), String> {
        while out.pos < out.buf.len() {
            match self.stream.try_write(&out.buf[out.pos..]) {
                Ok(n) => {
                    out.pos += n;
                    out.written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Input first; otherwise, with output left, the socket becoming writable.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Out,
        ctx: &Ctx,
        recv: &mut RecvState,
    ) -> Poll<Result<Io, String>> {
        match self.poll_read_decode(cx, ctx, recv) {
            Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Io { eof: n == 0 })),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if out.pos < out.buf.len() {
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Io { eof: false })),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    async fn close(&mut self) {}
}

impl Tcp {
    /// Reads once into the thread's buffer (after `carry`) and decodes every complete frame;
    /// returns the bytes read (0 = end of stream). Reading through `AsyncRead`: a short read
    /// clears the readiness, saving the extra `read` that would only return `WouldBlock`.
    fn poll_read_decode(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &Ctx,
        recv: &mut RecvState,
    ) -> Poll<Result<usize, String>> {
        let carry = &mut self.carry;
        let rd = &mut self.stream;
        with_thread_state(&ctx.lat, |buf, agg| {
            let kept = carry.len();
            let end = kept + ctx.read_buf; // grows with a frame larger than the buffer
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[..kept].copy_from_slice(carry);
            let mut rb = ReadBuf::new(&mut buf[kept..end]);
            match Pin::new(rd).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(format!("read: {e}"))),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n > 0 {
                        let now_ns = ctx.now_ns();
                        let data = &buf[..kept + n];
                        // Uncontended (one lock per read; other threads only at the end).
                        let mut aggs = lock(agg);
                        let agg = node_lat(&mut aggs, recv.node)?;
                        let used = proto::decode(ctx.target, data, &mut |ev| {
                            recv.on_event(ev, now_ns, agg)
                        })?;
                        carry.clear();
                        carry.extend_from_slice(&data[used..]);
                        recv.read_ns = now_ns;
                    }
                    Poll::Ready(Ok(n))
                }
            }
        })
    }
}
