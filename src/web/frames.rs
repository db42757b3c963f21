//! Every frame a WebSocket client sends, counted as it is read, below tungstenite.
//!
//! tungstenite answers pings by itself and puts a fragmented message together before the
//! server sees anything: a flood of pings, pongs or empty continuation frames never reaches the
//! connection's code as something to count, yet each frame costs a parse (and a ping a pong
//! to write), so one client could keep a core busy. This reader sits between the upgraded
//! connection and tungstenite and walks the frame headers of the byte stream as it passes:
//!
//! - **Pacing**: every frame (text, binary, continuation, ping, pong, close) spends one token
//!   of the connection's line rate (`--max-line-rate`, `--line-burst`; the bucket the TCP
//!   session uses for lines). A frame without a token is not handed to tungstenite until one
//!   is due: the client is read more slowly, as a TCP flooder is.
//! - **Bounds**: ping and pong frames beyond [`CONTROL_BURST`] at once and [`CONTROL_RATE`] a
//!   second after that, or a message in more than [`MAX_FRAGMENTS`] frames, end the
//!   connection: the read fails with a [`Flood`], which the connection turns into an error
//!   frame and a close frame 1008.
//!
//! Bytes read past a frame that has to wait are held here, so tungstenite only ever sees the
//! frames that were let through. The walk needs no more than a frame header's 14 bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::refusal::Refusal;
use crate::session::RateLimit;

/// Ping and pong frames a client may send at once (a browser answers one ping every
/// `--ws-ping` seconds, and sends none of its own)...
pub const CONTROL_BURST: f64 = 100.0;
/// ... and a second, sustained, after that.
pub const CONTROL_RATE: f64 = 10.0;
/// Frames one message may come in (a browser sends each message whole, in one).
pub const MAX_FRAGMENTS: u32 = 128;

/// Why a client's frames were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    ControlFrames,
    Fragments,
}

impl Flood {
    /// What the client is told (error frame and close frame).
    pub fn refusal(self) -> Refusal {
        match self {
            Flood::ControlFrames => Refusal::ControlFrames,
            Flood::Fragments => Refusal::Fragments,
        }
    }
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.refusal().fmt(f)
    }
}

impl std::error::Error for Flood {}

/// The read side of an upgraded WebSocket connection, metered frame by frame (writes pass
/// straight through).
pub struct FrameMeter<I> {
    io: I,
    /// Bytes read from the client but not handed on yet: they start with a frame that waits
    /// for its turn.
    held: Vec<u8>,
    /// How much of `held` was handed on already.
    held_at: usize,
    /// The header of the frame being walked: its bytes so far, and how many it has.
    header: [u8; 14],
    have: u8,
    need: u8,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// The line rate (None with `--max-line-rate 0`).
    pace: Option<RateLimit>,
    /// When the next frame may start, if not at once; and the timer that wakes the reader.
    next_at: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The control-frame bucket.
    control_tokens: f64,
    control_last: Instant,
    /// Frames of the message under way so far (0 between messages).
    fragments: u32,
    flood: Option<Flood>,
    /// True while a frame the server writes itself (see [`FrameMeter::poll_write_frames`]) is
    /// only partly written: tungstenite's own frames (pongs, pings, the close) wait, so that
    /// no frame ever lands inside another.
    frame_open: bool,
}

impl<I> FrameMeter<I> {
    pub fn new(io: I, pace: Option<RateLimit>) -> Self {
        FrameMeter {
            io,
            held: Vec::new(),
            held_at: 0,
            header: [0; 14],
            have: 0,
            need: 2,
            payload_left: 0,
            pace,
            next_at: None,
            sleep: None,
            control_tokens: CONTROL_BURST,
            control_last: Instant::now(),
            fragments: 0,
            flood: None,
            frame_open: false,
        }
    }

    /// Walks `bytes` (just read, in order) and returns how many of them may go on now: all, or
    /// up to the first byte of a frame that must wait (the timer then holds `cx`'s waker) or
    /// that is refused (`flood` is then set).
    fn admit(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> usize {
        let now = Instant::now();
        let mut i = 0;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let n =
                    (bytes.len() - i).min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                i += n;
                self.payload_left -= n as u64;
                continue;
            }
            if self.have == 0 && !self.frame_starts(bytes[i], now, cx) {
                return i;
            }
            self.header[usize::from(self.have)] = bytes[i];
            self.have += 1;
            i += 1;
            if self.have == 2 {
                let extended = match self.header[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + extended + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let h = &self.header;
                self.payload_left = match h[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => u64::from(n),
                };
                self.have = 0;
                self.need = 2;
            }
        }
        i
    }

    /// A frame starts with `first` (FIN and opcode): whether it may go on now.
    fn frame_starts(&mut self, first: u8, now: Instant, cx: &mut Context<'_>) -> bool {
        if let Some(at) = self.next_at {
            if now < at {
                let sleep = self.sleep.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at)))
                });
                if sleep.as_mut().poll(cx).is_pending() {
                    return false;
                }
            }
            self.sleep = None;
        }
        self.next_at = self.pace.as_mut().and_then(|pace| pace.spend(now));
        let fin = first & 0x80 != 0;
        match first & 0x0f {
            // Ping, pong.
            0x9 | 0xa => {
                let earned = now
                    .saturating_duration_since(self.control_last)
                    .as_secs_f64();
                self.control_last = now;
                self.control_tokens =
                    (self.control_tokens + earned * CONTROL_RATE).min(CONTROL_BURST) - 1.0;
                if self.control_tokens < 0.0 {
                    self.flood = Some(Flood::ControlFrames);
                    return false;
                }
            }
            // A continuation.
            0x0 => {
                self.fragments = self.fragments.saturating_add(1);
                if self.fragments > MAX_FRAGMENTS {
                    self.flood = Some(Flood::Fragments);
                    return false;
                }
                if fin {
                    self.fragments = 0;
                }
            }
            // Text, binary: a message begins (tungstenite refuses one inside another).
            0x1 | 0x2 => self.fragments = u32::from(!fin),
            _ => {}
        }
        true
    }
}

/// The most one read from a client's socket takes. What is read and not yet due (a client
/// over its line rate) waits in the connection's `held`, so this is also what a flooding
/// connection can hold: kept small (a sender's burst of chat frames still takes few reads).
const READ_CHUNK: usize = 4 * 1024;

thread_local! {
    /// The read buffer of every WebSocket on this thread (a read is handed on at once, so a
    /// connection keeps no buffer of its own between reads, unless frames wait their turn).
    static READ: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

impl<I: AsyncRead + Unpin> AsyncRead for FrameMeter<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(flood) = this.flood {
            return Poll::Ready(Err(io::Error::other(flood)));
        }
        let start = buf.filled().len();
        let mut from_held = this.held_at < this.held.len();
        if !from_held && buf.remaining() < READ_CHUNK {
            // tungstenite reads little at a time (its buffer is small, for idle connections):
            // read what the socket has in one go, and hand it out from `held`.
            let n = ready!(READ.with(|chunk| {
                let mut chunk = chunk.borrow_mut();
                let mut into = ReadBuf::new(&mut chunk[..]);
                let read = Pin::new(&mut this.io).poll_read(cx, &mut into);
                if let Poll::Ready(Ok(())) = read {
                    this.held.clear();
                    this.held.extend_from_slice(into.filled());
                    this.held_at = 0;
                }
                read.map_ok(|()| into.filled().len())
            }))?;
            if n == 0 {
                this.held = Vec::new();
                return Poll::Ready(Ok(()));
            }
            from_held = true;
        }
        if from_held {
            let n = (this.held.len() - this.held_at).min(buf.remaining());
            buf.put_slice(&this.held[this.held_at..this.held_at + n]);
            this.held_at += n;
        } else {
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        }
        let got = buf.filled().len() - start;
        if got == 0 {
            // The end of the stream (or no room to read into): as it is.
            return Poll::Ready(Ok(()));
        }
        let admitted = this.admit(&buf.filled()[start..], cx);
        let rest = got - admitted;
        if rest > 0 {
            if from_held {
                this.held_at -= rest;
            } else {
                this.held
                    .extend_from_slice(&buf.filled()[start + admitted..]);
            }
            buf.set_filled(start + admitted);
        }
        if this.held_at == this.held.len() && this.held.capacity() > 0 {
            // Given back: an idle connection holds no buffer here.
            this.held = Vec::new();
            this.held_at = 0;
        }
        if admitted > 0 {
            return Poll::Ready(Ok(()));
        }
        match this.flood {
            Some(flood) => Poll::Ready(Err(io::Error::other(flood))),
            // Waiting for the next frame's turn: the timer wakes this task.
            None => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> FrameMeter<I> {
    /// Writes frames the server rendered itself (a room's frames, made once for all its
    /// WebSocket members), past tungstenite. The caller says with
    /// [`FrameMeter::set_frame_open`] when one is left unfinished.
    pub fn poll_write_frames(
        &mut self,
        cx: &mut Context<'_>,
        frames: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, frames)
    }

    /// See [`FrameMeter::poll_write_frames`].
    pub fn set_frame_open(&mut self, open: bool) {
        self.frame_open = open;
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FrameMeter<I> {
    /// tungstenite's writes. While a frame of the server's own is unfinished they wait; the
    /// connection's task finishes that frame and then flushes tungstenite, so nothing waits
    /// on a waker here.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.frame_open {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.frame_open {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A masked client frame with a zero mask.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        f
    }

    /// Reads all of `input` through a meter, in reads of `chunk` bytes at most.
    async fn read_all(
        input: Vec<u8>,
        pace: Option<RateLimit>,
        chunk: usize,
    ) -> io::Result<Vec<u8>> {
        let mut meter = FrameMeter::new(&input[..], pace);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = meter.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn frames_pass_unchanged_however_they_are_split() {
        let mut input = frame(0x81, b"hello");
        input.extend(frame(0x01, &[b'a'; 200]));
        input.extend(frame(0x80, &[b'b'; 70_000]));
        input.extend(frame(0x89, b"ping"));
        input.extend(frame(0x81, b""));
        for chunk in [1, 2, 3, 7, 14, 1024, 100_000] {
            assert_eq!(
                read_all(input.clone(), None, chunk).await.unwrap(),
                input,
                "{chunk}"
            );
        }
    }

    #[tokio::test]
    async fn control_frames_beyond_the_bound_fail_the_read() {
        let n = CONTROL_BURST as usize;
        let ok = frame(0x89, b"").repeat(n);
        assert_eq!(read_all(ok.clone(), None, 1024).await.unwrap(), ok);
        let mut over = frame(0x8a, b"").repeat(n + 1);
        over.extend(frame(0x81, b"after"));
        let err = read_all(over, None, 1024).await.unwrap_err();
        let flood = err.get_ref().and_then(|e| e.downcast_ref::<Flood>());
        assert_eq!(flood, Some(&Flood::ControlFrames));
    }

    #[tokio::test]
    async fn long_fragment_chains_fail_the_read() {
        let mut ok = frame(0x01, b"a");
        ok.extend(frame(0x00, b"").repeat(MAX_FRAGMENTS as usize - 2));
        ok.extend(frame(0x80, b"z"));
        // The count starts again with every message.
        let twice = ok.repeat(2);
        assert_eq!(read_all(twice.clone(), None, 1024).await.unwrap(), twice);
        let mut over = frame(0x01, b"a");
        over.extend(frame(0x00, b"").repeat(MAX_FRAGMENTS as usize));
        let err = read_all(over, None, 1024).await.unwrap_err();
        let flood = err.get_ref().and_then(|e| e.downcast_ref::<Flood>());
        assert_eq!(flood, Some(&Flood::Fragments));
    }

    #[tokio::test]
    async fn frames_past_the_burst_wait_for_their_turn() {
        // 5 at once, then 50 a second: the 15 frames take a fifth of a second.
        let input = frame(0x81, b"x").repeat(15);
        let start = Instant::now();
        let out = read_all(input.clone(), RateLimit::new(50.0, 5), 1024)
            .await
            .unwrap();
        assert_eq!(out, input);
        let took = start.elapsed();
        assert!(took >= std::time::Duration::from_millis(180), "{took:?}");
    }
}
