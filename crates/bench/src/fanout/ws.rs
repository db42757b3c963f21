//! The WebSocket transport of a fanout connection (`--target machat-ws`).
//!
//! The connection's loop is the TCP one's (`conn.rs`); what differs is the wire: each message
//! goes out as one text frame, and each frame that comes in is one JSON event of which only the
//! message's `"text"` is read ([`proto::decode_ws_frame`]). Reading and writing go through one
//! poll function, since both need the one `WebSocketStream`: `write_now` does nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::conn::{Io, Out, Transport};
use super::lat::{lock, node_lat, with_thread_state};
use super::recv::RecvState;
use super::{Ctx, Spec};
use crate::proto;
use crate::ws::{self, Ws};

/// tungstenite's read buffer per connection: the most one `read` takes (~100 message frames of
/// ~150 bytes). It zero-fills this much before each read, so larger costs more than it saves.
const READ_BUF: usize = 16 * 1024;
/// Frames handled in one poll before the loop looks at its schedule again.
const FRAMES_PER_POLL: usize = 256;

pub(super) struct WsConn {
    ws: Ws,
    /// Bytes of `Out` handed to tungstenite as frames (absolute).
    queued: u64,
    /// Frames handed over and not flushed yet.
    flushing: bool,
}

impl Transport for WsConn {
    async fn connect(ctx: &Ctx, spec: &Spec, _out: &mut Vec<u8>) -> Result<WsConn, String> {
        let mut handshake = Vec::new();
        proto::handshake(
            ctx.target,
            &spec.name,
            &spec.room_name,
            true,
            &mut handshake,
        );
        let node = ctx.nodes[spec.node];
        let ws = ws::connect(node, spec.src, &handshake, READ_BUF, ctx.epoch).await?;
        Ok(WsConn {
            ws,
            queued: 0,
            flushing: false,
        })
    }

    fn write_now(&mut self, _out: &mut Out) -> Result<(), String> {
        Ok(()) // tungstenite writes when polled: see poll_io
    }

    /// Writes what `out` holds (one frame per line) and flushes; then reads frames. Ready when
    /// anything was read or written, or the connection ended.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Out,
        ctx: &Ctx,
        recv: &mut RecvState,
    ) -> Poll<Result<Io, String>> {
        let wrote = match self.poll_write(cx, out) {
            Ok(w) => w,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let (frames, eof) = match self.poll_read(cx, ctx, recv) {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if wrote || frames > 0 || eof {
            Poll::Ready(Ok(Io { eof }))
        } else {
            Poll::Pending
        }
    }

    /// Closes politely (see [`ws::close`]).
    async fn close(&mut self) {
        ws::close(&mut self.ws).await;
    }
}

impl WsConn {
    /// Hands what `out` holds to tungstenite, one text frame per line, and flushes; returns
    /// whether anything was handed over or flushed. `out.written` moves with each flush.
    fn poll_write(&mut self, cx: &mut Context<'_>, out: &mut Out) -> Result<bool, String> {
        let wsock = &mut self.ws;
        let mut wrote = false;
        while out.pos < out.buf.len() {
            match Pin::new(&mut *wsock).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(format!("write: {e}")),
                Poll::Pending => break,
            }
            let rest = &out.buf[out.pos..];
            let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let text =
                std::str::from_utf8(&rest[..len]).map_err(|e| format!("message text: {e}"))?;
            Pin::new(&mut *wsock)
                .start_send(Message::Text(Utf8Bytes::from(text)))
                .map_err(|e| format!("write: {e}"))?;
            let step = (len + 1).min(rest.len());
            out.pos += step;
            self.queued += step as u64;
            self.flushing = true;
            wrote = true;
        }
        if self.flushing {
            match Pin::new(&mut *wsock).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.flushing = false;
                    out.written = self.queued;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("write: {e}")),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    /// Reads and decodes up to `FRAMES_PER_POLL` frames; returns how many, and whether the
    /// server ended the stream.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &Ctx,
        recv: &mut RecvState,
    ) -> Result<(usize, bool), String> {
        let wsock = &mut self.ws;
        with_thread_state(&ctx.lat, |_, lat| {
            // Uncontended (one lock per poll; other threads only at the end).
            let mut aggs = lock(lat);
            let agg = node_lat(&mut aggs, recv.node)?;
            let mut frames = 0;
            while frames < FRAMES_PER_POLL {
                match Pin::new(&mut *wsock).poll_next(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        frames += 1;
                        match msg {
                            Message::Text(t) => {
                                // Received when the read that completed it returned.
                                let now_ns = wsock.get_ref().read_ns;
                                let ev = proto::decode_ws_frame(t.as_bytes());
                                recv.on_event(ev, now_ns, agg);
                                recv.read_ns = now_ns;
                            }
                            Message::Close(frame) => {
                                recv.server_error(ws::close_text(frame.as_ref()))
                            }
                            Message::Binary(_) => recv.foreign += 1,
                            // tungstenite answers pings itself.
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Err(format!("read: {e}")),
                    Poll::Ready(None) => return Ok((frames, true)),
                    Poll::Pending => break,
                }
            }
            Ok((frames, false))
        })
    }
}
