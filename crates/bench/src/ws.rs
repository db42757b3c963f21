//! machat's WebSocket endpoint, as a client: `ws://ADDR/ws`, the JSON handshake as the first
//! text frame, then one text frame per message each way (docs/PROTOCOL.md; the server's side is
//! src/web/ws.rs).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::net;

pub type Ws = WebSocketStream<Stamped>;

/// A TCP stream that notes when its last read returned data: the receive time of every frame
/// that read completed. tungstenite reads when its buffer runs short, which its caller cannot
/// see; this takes the clock once per read, as the TCP targets do, not once per frame.
pub struct Stamped {
    stream: TcpStream,
    epoch: Instant,
    /// When the last read that returned data ended, ns since `epoch`.
    pub read_ns: u64,
}

impl AsyncRead for Stamped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.read_ns = self.epoch.elapsed().as_nanos() as u64;
        }
        r
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Bytes tungstenite gathers before it writes (frames queued within one poll go out together;
/// the connection flushes at the end of every poll anyway).
const WRITE_BUF: usize = 64 * 1024;

/// Connects (bound to `src` when given), upgrades to a WebSocket at `/ws` and sends `handshake`
/// as the first text frame. `read_buf`: tungstenite's read buffer, allocated per connection and
/// the most one `read` takes (it zero-fills that much before every read, so keep it small).
/// Read times are in ns since `epoch`.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    src: Option<Ipv4Addr>,
    handshake: &[u8],
    read_buf: usize,
    epoch: Instant,
) -> Result<Ws, String> {
    let stream = Stamped {
        stream: net::connect(addr, src).await?,
        epoch,
        read_ns: 0,
    };
    let url = format!("ws://{addr}{path}");
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buf)
        .write_buffer_size(WRITE_BUF)
        .max_write_buffer_size(WRITE_BUF * 4);
    let upgrade = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    let (mut ws, _response) = tokio::time::timeout(Duration::from_secs(10), upgrade)
        .await
        .map_err(|_| format!("websocket upgrade at {addr}: timed out after 10 s"))?
        .map_err(|e| format!("websocket upgrade at {addr}: {e}"))?;
    if handshake.is_empty() {
        return Ok(ws);
    }
    let text = std::str::from_utf8(handshake).map_err(|e| format!("handshake: {e}"))?;
    ws.send(Message::Text(Utf8Bytes::from(text)))
        .await
        .map_err(|e| format!("websocket handshake frame: {e}"))?;
    Ok(ws)
}

/// Closes politely (a close frame, so the server logs a client close rather than an i/o
/// error), without waiting long for a server that does not read.
pub async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
}

/// A close frame from the server, as text for an error report.
pub fn close_text(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("close frame {}: {}", u16::from(f.code), f.reason),
        None => "close frame".into(),
    }
}
