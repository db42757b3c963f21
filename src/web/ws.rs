//! WebSocket clients: the same chat as TCP, one message per frame.
//!
//! The first text frame is the JSON handshake; every later text frame is one message (it may
//! span lines). A WebSocket member reads the room's log of frames ([`Format::Frames`]): each
//! event's JSON line as a text frame, made once per room, since a server's frames are not
//! masked and so are the same bytes for every member. They go out as they are, in one write per
//! drain, like a TCP member's lines. Like the TCP connection, one poll function drives both
//! directions, so a client that never reads can still be read from and is cut off by the room's
//! slow-consumer rule, and an idle connection holds only tungstenite's small buffers (sized
//! here, not its 128 KiB defaults). Bad input ends only this client, with a close frame that
//! says why. Every frame the client sends is counted and paced as it is read, under tungstenite
//! ([`FrameMeter`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::info;

use super::api::error;
use super::frames::{Flood, FrameMeter};
use super::WebState;
use crate::client::{Client, Ending, Input, Wire};
use crate::codec::Flow;
use crate::context::Shared;
use crate::lifecycle::{self, Entry};
use crate::limits::Ticket;
use crate::metrics::Transport;
use crate::protocol::{handshake_frame, Format, Handshake, Reply};
use crate::refusal::{Notice, Refusal};
use crate::session::{End, RateLimit};

/// A WebSocket connection: tungstenite over the upgraded HTTP connection, every frame the
/// client sends counted on the way in (see [`FrameMeter`]).
type WebSocket = WebSocketStream<FrameMeter<TokioIo<Upgraded>>>;

/// tungstenite's read buffer (its default is 128 KiB per client, allocated at the upgrade):
/// chat frames are small, and an idle connection keeps this buffer for its whole life (a
/// longer frame makes it grow as far as that frame needs).
const WS_READ_BUFFER: usize = 256;
/// How much tungstenite gathers before writing (its default is 128 KiB): nothing, as it only
/// writes control frames (the session's output goes past it, see [`Ws`]).
const WS_WRITE_BUFFER: usize = 0;
/// Most frames handed to the session in one read (then the client loop writes and looks
/// at its timers before it reads again).
const FRAMES_PER_READ: usize = 64;
/// How long closing waits for the client to take the last frames.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// `GET /ws`: checks the WebSocket request, the origin and the connection limits, then
/// upgrades. The upgrade is done here rather than by axum's extractor so that the frames
/// are read through a [`FrameMeter`].
pub(super) async fn upgrade(
    State(state): State<Arc<WebState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    let key = match websocket_key(headers) {
        Ok(key) => key,
        Err(not) => return not.answer(),
    };
    if !origin_allowed(headers, &state.ctx.transport().allowed_origins) {
        info!(%addr, "websocket refused: origin not allowed");
        return error(
            StatusCode::FORBIDDEN,
            &Refusal::OriginNotAllowed.to_string(),
        );
    }
    if state.ctx.is_shutting_down() {
        return error(StatusCode::SERVICE_UNAVAILABLE, Notice::ShuttingDown.text());
    }
    let ticket = match state.admission.admit(addr.ip(), Transport::WebSocket) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            let reason = refusal.to_string();
            info!(%addr, reason, "websocket refused");
            crate::metrics::handshake_rejected(crate::metrics::rejection_reason(&reason));
            return error(StatusCode::SERVICE_UNAVAILABLE, &reason);
        }
    };
    let config = &state.ctx.transport();
    // A frame may hold a line of --max-line bytes, or the handshake.
    let max_message = config.max_line.max(config.max_handshake);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(config.max_pending.max(4096))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    // Every frame counts towards the line rate (the session then has no limit of its own).
    let pace = RateLimit::new(config.line_rate, config.line_burst);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let state2 = state.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                info!(%addr, "websocket upgrade failed: {e}");
                return;
            }
        };
        let io = FrameMeter::new(TokioIo::new(upgraded), pace);
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        serve(socket, addr, state2, ticket).await;
    });
    let mut answer = HeaderMap::new();
    answer.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    answer.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        answer.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    (StatusCode::SWITCHING_PROTOCOLS, answer, Body::empty()).into_response()
}

/// Why a request to `/ws` is not a WebSocket opening request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotWebSocket {
    NoUpgrade,
    Version,
    NoKey,
}

impl NotWebSocket {
    fn answer(self) -> Response {
        match self {
            NotWebSocket::NoUpgrade => {
                error(StatusCode::BAD_REQUEST, &Refusal::UpgradeNeeded.to_string())
            }
            NotWebSocket::Version => {
                let mut refusal = error(
                    StatusCode::UPGRADE_REQUIRED,
                    &Refusal::WebSocketVersion.to_string(),
                );
                refusal.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                refusal
            }
            NotWebSocket::NoKey => error(
                StatusCode::BAD_REQUEST,
                &Refusal::NoWebSocketKey.to_string(),
            ),
        }
    }
}

/// The `Sec-WebSocket-Key` of a WebSocket opening request (RFC 6455, 4.2.1).
fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, NotWebSocket> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(NotWebSocket::NoUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(NotWebSocket::Version);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.clone()),
        _ => Err(NotWebSocket::NoKey),
    }
}

/// A browser always sends `Origin`; other clients usually don't. Allowed: no origin, the
/// server's own (the page it serves), and the configured ones (`*` for any).
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// The close code for a client that broke a rule (RFC 6455, section 7.4.1).
fn close_code(refusal: &Refusal) -> CloseCode {
    match refusal {
        Refusal::LineTooLong => CloseCode::Size,
        Refusal::BinaryFrame => CloseCode::Unsupported,
        Refusal::IdleTimeout => CloseCode::Away,
        _ => CloseCode::Policy,
    }
}

async fn serve(socket: WebSocket, addr: SocketAddr, state: Arc<WebState>, ticket: Ticket) {
    let ctx = &state.ctx;
    let id = ctx.next_id();
    info!(id, %addr, transport = "websocket", "connect");
    let mut socket = socket;
    let hs = match Box::pin(handshake(&mut socket, ctx, state.shutdown.clone())).await {
        Ok(hs) => hs,
        Err(reason) => {
            info!(id, %addr, reason = %reason, "disconnect");
            if let Ending::Refused(text) | Ending::Io(text) = &reason {
                if matches!(reason, Ending::Refused(_)) {
                    crate::metrics::handshake_rejected(crate::metrics::rejection_reason(text));
                }
            }
            goodbye(&mut socket, &reason, Vec::new()).await;
            return;
        }
    };
    let entry = Entry {
        format: Format::Frames,
        // No line rate here: the FrameMeter spends it on every frame, text or not.
        limit: None,
        transport: Transport::WebSocket,
        pass: ticket.seat_pass(),
    };
    let entered = match lifecycle::authenticate(ctx, id, addr, &hs).await {
        Ok(()) => lifecycle::enter(ctx, id, addr, hs, entry).await,
        Err(refusal) => Err(refusal),
    };
    let session = match entered {
        Ok(session) => session,
        Err(refusal) => {
            let reason = Ending::Refused(refusal.to_string());
            goodbye(&mut socket, &reason, Vec::new()).await;
            return;
        }
    };
    let conn = Client::new(Ws::new(socket, ctx), session, ctx);
    // The connection's life is a task of its own, holding only what it needs (this one keeps
    // the upgrade's and the greeting's state for as long as it runs).
    tokio::spawn(lifecycle::live(conn, addr, ticket, state.ctx.clone()));
}

/// Waits for the handshake frame, within the handshake timeout.
async fn handshake(
    socket: &mut WebSocket,
    ctx: &Shared,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Handshake, Ending> {
    let deadline = tokio::time::Instant::now() + ctx.transport().handshake_timeout;
    loop {
        let frame = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Ending::Refused(Refusal::HandshakeTimeout.to_string()));
            }
            _ = shutdown.wait_for(|&stop| stop) => return Err(Ending::Shutdown),
            frame = socket.next() => frame,
        };
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => return Err(Ending::ClosedByClient),
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(Message::Binary(_))) => return Err(binary()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(text))) => text,
        };
        return handshake_frame(text.as_str(), ctx.transport().max_handshake)
            .map_err(Ending::Refused);
    }
}

fn binary() -> Ending {
    Ending::broke(Refusal::BinaryFrame)
}

/// A read error: a frame over the size limit, and a flood the [`FrameMeter`] stopped, get
/// their own close codes; the rest are i/o.
fn read_error(e: WsError) -> Ending {
    match e {
        WsError::Capacity(_) => Ending::broke(Refusal::LineTooLong),
        WsError::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<Flood>()) {
            Some(flood) => Ending::broke(flood.refusal()),
            None => Ending::Io(e.to_string()),
        },
        e => Ending::Io(e.to_string()),
    }
}

/// A WebSocket client's side of the client loop: each text frame is one message in; out go
/// the rooms' frames as they are (rendered once per room, [`Format::Frames`]) and every plain
/// line of the session's own (a reply, a replay) as a frame of its own.
///
/// The session's output is written to the socket directly, past tungstenite, in one write per
/// drain as on TCP; tungstenite writes only its control frames (pongs, pings, the close).
/// The two never interleave inside a frame: tungstenite is flushed before a frame of ours
/// starts, and its writes wait while one of ours is unfinished ([`FrameMeter`]).
struct Ws {
    socket: WebSocket,
    /// `--max-line`: a frame may be as long as the handshake (tungstenite's limit), a message
    /// no longer than a line.
    max_line: usize,
    /// The next ping, and how often: one timer, reset at each ping.
    ping: Option<(Pin<Box<Sleep>>, Duration)>,
    /// Bytes still to write of a frame that began in an earlier write: the output handed in
    /// next starts with them.
    mid: usize,
    /// Frames made here from plain lines, taken from the output but not yet written.
    backlog: Vec<u8>,
}

impl Ws {
    fn new(socket: WebSocket, ctx: &Shared) -> Self {
        let ping = Duration::try_from_secs_f64(ctx.transport().ws_ping)
            .ok()
            .filter(|d| !d.is_zero())
            .map(|every| {
                let first = tokio::time::Instant::now() + every;
                (Box::pin(tokio::time::sleep_until(first)), every)
            });
        Ws {
            socket,
            max_line: ctx.transport().max_line,
            ping,
            mid: 0,
            backlog: Vec::new(),
        }
    }

    /// Writes the frames made here from plain lines; Ready once they are all out.
    fn poll_backlog(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.backlog.is_empty() {
            let meter = self.socket.get_mut();
            let n = ready!(meter.poll_write_frames(cx, &self.backlog))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            crate::metrics::bytes_out(Transport::WebSocket, n);
            self.backlog.drain(..n);
            meter.set_frame_open(!self.backlog.is_empty());
        }
        if self.backlog.capacity() > 16 * 1024 {
            self.backlog = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// True while a frame of ours is unfinished: nothing else may be written.
    fn frame_open(&self) -> bool {
        self.mid > 0 || !self.backlog.is_empty()
    }
}

impl Wire for Ws {
    /// One frame. The line rate is not paced here but as frames are read ([`FrameMeter`]),
    /// every frame counted, text or not.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        on: &mut dyn FnMut(Input<'_>) -> Flow,
    ) -> Poll<Result<(), Ending>> {
        // Every frame already read, as TCP hands out every line of a read: a member's task
        // then runs once per burst of messages, not once per message.
        for handled in 0..FRAMES_PER_READ {
            let frame = match Pin::new(&mut self.socket).poll_next(cx) {
                Poll::Pending if handled > 0 => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Err(Ending::ClosedByClient)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(read_error(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) if text.len() > self.max_line => {
                    return Poll::Ready(Err(Ending::broke(Refusal::LineTooLong)));
                }
                Message::Text(text) => {
                    // A whole frame is one message: nothing is held if the session pauses.
                    if let Flow::Pause = on(Input::Message(text.as_bytes())) {
                        return Poll::Ready(Ok(()));
                    }
                }
                Message::Binary(_) => return Poll::Ready(Err(binary())),
                // Sending after the client's close frame would only fail: end now.
                Message::Close(_) => return Poll::Ready(Err(Ending::ClosedByClient)),
                // tungstenite answers pings itself; pongs only prove the client is there.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The rooms' frames as they are, in one write (the hot path: nothing is copied or
    /// framed per member); plain lines before them become frames of their own first.
    fn poll_write(&mut self, cx: &mut Context<'_>, out: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_backlog(cx))?;
        if self.mid == 0 {
            // A pong or ping tungstenite queued goes before our next frame, not inside it.
            ready!(Pin::new(&mut self.socket).poll_flush(cx)).map_err(io::Error::other)?;
        }
        let run = crate::frame::frames_run(out, self.mid);
        if run > 0 {
            let meter = self.socket.get_mut();
            let n = ready!(meter.poll_write_frames(cx, &out[..run]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            crate::metrics::bytes_out(Transport::WebSocket, n);
            // All of the run written: it ends at a frame's end (the output holds whole frames
            // after what was left of one), so there is nothing to walk.
            self.mid = if n < run {
                crate::frame::left_in_frame(out, self.mid, n)
            } else {
                debug_assert_eq!(crate::frame::left_in_frame(out, self.mid, n), 0);
                0
            };
            meter.set_frame_open(self.mid > 0);
            return Poll::Ready(Ok(n));
        }
        // Plain lines (the session's own replies): framed here, up to the next frame.
        let mut end = 0;
        while end < out.len() {
            match crate::frame::piece(&out[end..]) {
                crate::frame::Piece::Line(n) => end += n,
                crate::frame::Piece::Frame(_) => break,
            }
        }
        crate::frame::encode(&out[..end], &mut self.backlog);
        self.socket
            .get_mut()
            .set_frame_open(!self.backlog.is_empty());
        // Taken: what the socket does not take now waits in the backlog.
        if let Poll::Ready(Err(e)) = self.poll_backlog(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(end))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_backlog(cx))?;
        if self.mid > 0 {
            // The rest of the frame is still with the client loop, which writes it next.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    /// A ping every `--ws-ping` (skipped while the socket is full: the client is not reading
    /// anyway, and the slow-consumer rule deals with it).
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> bool {
        let open = self.frame_open();
        let Some((ping, every)) = self.ping.as_mut() else {
            return false;
        };
        if ping.as_mut().poll(cx).is_pending() || open {
            return false;
        }
        let next = tokio::time::Instant::now() + *every;
        ping.as_mut().reset(next);
        let mut socket = Pin::new(&mut self.socket);
        if let Poll::Ready(Ok(())) = socket.as_mut().poll_ready(cx) {
            if socket
                .as_mut()
                .start_send(Message::Ping(Bytes::new()))
                .is_ok()
            {
                let _ = socket.poll_flush(cx);
            }
        }
        true
    }

    /// After the client's close, a cut-off or an i/o error nothing more can reach it.
    fn reachable_after(&self, ending: &Ending) -> bool {
        !matches!(
            ending,
            Ending::Ended(End::SlowConsumer) | Ending::Io(_) | Ending::ClosedByClient
        )
    }

    async fn goodbye(mut self, out: Vec<u8>, ending: Ending, _format: Format) {
        // What is left of a frame under way, and the frames made here, go out first.
        let mid = self.mid.min(out.len());
        let finish = async {
            std::future::poll_fn(|cx| self.poll_backlog(cx)).await?;
            let mut at = 0;
            while at < mid {
                let n = std::future::poll_fn(|cx| {
                    self.socket.get_mut().poll_write_frames(cx, &out[at..mid])
                })
                .await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                at += n;
            }
            self.socket.get_mut().set_frame_open(false);
            Ok::<(), io::Error>(())
        };
        // If the client does not take what is left, a close frame could not follow it.
        if let Ok(Ok(())) = tokio::time::timeout(CLOSE_WAIT, finish).await {
            goodbye(&mut self.socket, &ending, out[mid..].to_vec()).await;
        }
    }
}

/// The last frames (`out`: frames and plain lines of JSON, from a frame's start), the reason as an error or notice, and the close
/// frame; bounded in time, as the client may not be reading.
async fn goodbye(socket: &mut WebSocket, reason: &Ending, mut out: Vec<u8>) {
    let close = |code: CloseCode, text: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(close_reason(text)),
        }))
    };
    let last = match reason {
        Ending::Refused(text) => {
            Reply::Error(text).render(Format::Json, &mut out);
            Some(close(CloseCode::Policy, text))
        }
        Ending::Broke(refusal) => {
            Reply::Error(&refusal.to_string()).render(Format::Json, &mut out);
            Some(close(close_code(refusal), &refusal.close_reason()))
        }
        Ending::Ended(End::SlowConsumer) => {
            let refusal = Refusal::SlowConsumer;
            Reply::Error(&refusal.to_string()).render(Format::Json, &mut out);
            Some(close(CloseCode::Policy, &refusal.close_reason()))
        }
        Ending::Ended(End::Quit) => Some(close(CloseCode::Normal, Notice::Bye.text())),
        // The room's kick or ban line, already in `out`, says who and why.
        Ending::Ended(End::Removed) => Some(close(CloseCode::Policy, "closed out of the room")),
        Ending::Shutdown => {
            let notice = Notice::ShuttingDown.text();
            Reply::Notice(notice).render(Format::Json, &mut out);
            Some(close(CloseCode::Away, notice))
        }
        Ending::ClosedByClient => {
            // tungstenite queued its answer to the client's close frame: send it.
            let flush = socket.flush();
            let _ = tokio::time::timeout(CLOSE_WAIT, flush).await;
            return;
        }
        Ending::Io(_) | Ending::Tls(_) => return,
    };
    let send = async {
        // The frames (`out` holds the rooms' frames and plain lines), written past tungstenite
        // once it has sent what it queued, then its close frame.
        socket.flush().await.map_err(io::Error::other)?;
        let mut frames = Vec::with_capacity(out.len() + 64);
        crate::frame::encode(&out, &mut frames);
        let mut at = 0;
        while at < frames.len() {
            let n =
                std::future::poll_fn(|cx| socket.get_mut().poll_write_frames(cx, &frames[at..]))
                    .await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            crate::metrics::bytes_out(Transport::WebSocket, n);
            at += n;
        }
        if let Some(last) = last {
            socket.send(last).await.map_err(io::Error::other)?;
        }
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, send).await;
}

/// A close frame's reason is at most 123 bytes.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
#[cfg(test)]
mod tests {
    /// Every idle WebSocket holds one of these in its task (BENCHMARKS.md, I1 over WebSocket):
    /// most of it is tokio-tungstenite's `WebSocketStream`.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_idle_websocket_stays_small() {
        let client = std::mem::size_of::<crate::client::Client<super::Ws>>();
        println!(
            "Client<Ws>: {client} bytes (WebSocketStream {}, FrameMeter {})",
            std::mem::size_of::<super::WebSocket>(),
            std::mem::size_of::<super::FrameMeter<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>>(
            )
        );
        assert!(client <= 800, "{client}");
        // The task holds the connection's life, which must hold the client once, not twice
        // as an `async fn` would (its arguments, then the locals they move into).
        let live = crate::lifecycle::live_size::<super::Ws>();
        println!("live<Ws>: {live} bytes");
        assert!(live <= client + 160, "{live}");
    }
}
