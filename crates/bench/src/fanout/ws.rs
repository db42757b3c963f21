//! The WebSocket transport of a fanout connection (`--target machat-ws`).
//!
//! The connection's loop is the TCP one's (`conn.rs`); what differs is the wire: each message
//! goes out as one text frame, and each frame that comes in is one JSON event of which only the
//! message's `"text"` is read ([`proto::decode_ws_frame`]). Reading and writing go through one
//! poll function, since both need the one `WebSocketStream`: `write_now` does nothing.
//!
//! Frames are written by tungstenite (a client's frames are masked) but read here, straight
//! from the socket: a server's frames are not masked, so a frame is a header and its payload as
//! they are, and reading them by hand costs the generator a fraction of what tungstenite's
//! per-message work does (with tungstenite the generator, not the server, set F1's pace).
//! tungstenite never reads after the upgrade, so nothing is left in its buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Sink;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::conn::{Io, Out, Transport};
use super::lat::{lock, node_lat, with_thread_state};
use super::recv::RecvState;
use super::{Ctx, Spec};
use crate::proto::{self, Target};
use crate::ws::{self, Ws};

/// The read buffer per connection: the most one `read` takes (~100 message frames of ~150
/// bytes).
const READ_BUF: usize = 16 * 1024;
/// tungstenite's own read buffer: it reads nothing after the upgrade's response.
const TUNGSTENITE_READ_BUF: usize = 4096;
/// Frames handled in one poll before the loop looks at its schedule again.
const FRAMES_PER_POLL: usize = 256;

pub(super) struct WsConn {
    ws: Ws,
    /// Bytes read from the server, frames not yet handled from `rpos` on.
    rbuf: Vec<u8>,
    rpos: usize,
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
        let path = ctx.target.ws_path(&spec.room_name);
        let ws = ws::connect(
            node,
            &path,
            spec.src,
            &handshake,
            TUNGSTENITE_READ_BUF,
            ctx.epoch,
        )
        .await?;
        Ok(WsConn {
            ws,
            rbuf: Vec::with_capacity(READ_BUF),
            rpos: 0,
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
        with_thread_state(&ctx.lat, |_, lat| {
            // Uncontended (one lock per poll; other threads only at the end).
            let mut aggs = lock(lat);
            let agg = node_lat(&mut aggs, recv.node)?;
            let mut frames = 0;
            let mut eof = false;
            while frames < FRAMES_PER_POLL {
                // Whole frames first, from what was read.
                if let Some((opcode, start, end)) = server_frame(&self.rbuf[self.rpos..]) {
                    let payload = &self.rbuf[self.rpos + start..self.rpos + end];
                    frames += 1;
                    match opcode {
                        // Received when the read that completed it returned.
                        1 => {
                            let now_ns = self.ws.get_ref().read_ns;
                            let event = match ctx.target {
                                Target::Nchan => proto::Event::Text(payload),
                                _ => proto::decode_ws_frame(payload),
                            };
                            recv.on_event(event, now_ns, agg);
                            recv.read_ns = now_ns;
                        }
                        8 => recv.server_error(close_text(payload)),
                        2 => recv.foreign += 1,
                        // Pings go unanswered: a run is shorter than the server's ping time.
                        _ => {}
                    }
                    self.rpos += end;
                    continue;
                }
                if eof {
                    break;
                }
                // Keep the start of an unfinished frame; read more behind it.
                if self.rpos > 0 {
                    self.rbuf.drain(..self.rpos);
                    self.rpos = 0;
                }
                let room = (READ_BUF).max(self.rbuf.len() * 2);
                let filled = self.rbuf.len();
                self.rbuf.resize(room, 0);
                let mut buf = ReadBuf::new(&mut self.rbuf[filled..]);
                let stream = Pin::new(self.ws.get_mut());
                match stream.poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        self.rbuf.truncate(filled + n);
                        if n == 0 {
                            eof = true;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        self.rbuf.truncate(filled);
                        return Err(format!("read: {e}"));
                    }
                    Poll::Pending => {
                        self.rbuf.truncate(filled);
                        break;
                    }
                }
            }
            Ok((frames, eof && frames == 0))
        })
    }
}

/// A whole frame from the server at the start of `bytes`: its opcode and where its payload
/// starts and ends; None until it is all there.
fn server_frame(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    let b0 = *bytes.first()?;
    let b1 = *bytes.get(1)?;
    let (len, start): (usize, usize) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let end = start.checked_add(len)?;
    (bytes.len() >= end).then_some((b0 & 0x0f, start, end))
}

/// A close frame's code and reason, for an error report.
fn close_text(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => format!(
            "close frame {}: {}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "close frame".into(),
    }
}
