//! Web clients for the tests: plain HTTP GETs, WebSockets and JSON-over-TCP clients, each with
//! bounded waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::{Client, Endpoint, TIMEOUT};

/// A plain HTTP/1.1 GET; returns (status, headers, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    get_with(addr, path, "")
}

pub fn get_with(addr: SocketAddr, path: &str, extra_headers: &str) -> (u16, String, String) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n"),
    )
}

/// Sends `raw` (a whole request, written by hand) and reads one response: (status, head,
/// body). The body is read by its `Content-Length`, or to its last chunk, or to the close, so
/// a connection the server keeps open does not hold the test up.
pub fn request(addr: SocketAddr, raw: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect http");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s)
}

/// Reads one HTTP response from `s` (see [`request`]).
pub fn read_response(s: &mut impl Read) -> (u16, String, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => panic!(
                "no complete response head: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    if let Some(n) = length {
        body.resize(n, 0);
        s.read_exact(&mut body).expect("read http body");
    } else if lower.contains("transfer-encoding: chunked") {
        body = read_chunked(&mut BufReader::new(s)).into_bytes();
    } else if !head.starts_with("HTTP/1.1 101") {
        let _ = s.read_to_end(&mut body);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let head = head.trim_end().to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, body)
}

/// The body of a chunked response (long history answers are sent as they are read), read to
/// its last chunk.
fn read_chunked(s: &mut impl BufRead) -> String {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        s.read_line(&mut size).expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut chunk = vec![0u8; size + 2];
        s.read_exact(&mut chunk).expect("chunk");
        if size == 0 {
            return String::from_utf8_lossy(&body).into_owned();
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

pub fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = get(addr, path);
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}")),
    )
}

pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `/ws` (no handshake frame sent yet).
pub fn ws_open(server: &impl Endpoint) -> Ws {
    ws_open_origin(server, None).expect("websocket upgrade")
}

pub fn ws_open_origin(
    server: &impl Endpoint,
    origin: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let addr = server.http().expect("http on");
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect ws");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ws"))
            .unwrap();
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("Origin", origin.parse().expect("origin header"));
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}

/// What came next on a WebSocket: a JSON text frame, a close frame, or nothing in time.
#[derive(Debug)]
pub enum Got {
    Json(Value),
    Close(Option<CloseFrame>),
    Nothing,
}

pub fn next(ws: &mut Ws, within: Duration) -> Got {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => {
                return Got::Json(
                    serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{e}: {t}")),
                )
            }
            Ok(Message::Close(f)) => return Got::Close(f),
            Ok(Message::Binary(_)) => panic!("binary frame from the server"),
            Ok(_) => {}
            Err(e) if nothing_yet(&e) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Got::Close(None)
            }
            Err(e) => panic!("websocket error: {e}"),
        }
    }
    Got::Nothing
}

/// A read that timed out: nothing arrived yet, the connection is fine.
pub fn nothing_yet(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

pub fn frame(ws: &mut Ws) -> Value {
    match next(ws, TIMEOUT) {
        Got::Json(v) => v,
        other => panic!("wanted a frame, got {other:?}"),
    }
}

/// Reads frames until one matches; returns the frames before it.
pub fn until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        match next(ws, TIMEOUT) {
            Got::Json(v) if want(&v) => return seen,
            Got::Json(v) => seen.push(v),
            other => panic!("wanted a frame, got {other:?} after {seen:?}"),
        }
    }
}

pub fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("ws send");
}

/// Joins over WebSocket and returns once the server says the client joined.
pub fn ws_join(server: &impl Endpoint, name: &str, room: &str) -> Ws {
    let mut ws = ws_open(server);
    send(
        &mut ws,
        &format!("{{\"name\":\"{name}\",\"room\":\"{room}\"}}"),
    );
    until(&mut ws, |v| v["type"] == "join" && v["name"] == name);
    ws
}

/// Expects an error frame with `reason_part`, then a close frame with `code`.
pub fn expect_closed(ws: &mut Ws, code: u16, reason_part: &str) {
    let v = frame(ws);
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["reason"].as_str().unwrap_or("").contains(reason_part),
        "{v} lacks {reason_part:?}"
    );
    match next(ws, TIMEOUT) {
        Got::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), code, "{f:?}");
            assert!(f.reason.contains(reason_part), "{f:?}");
        }
        other => panic!("wanted a close frame {code}, got {other:?}"),
    }
}

pub fn json_client(server: &impl Endpoint, name: &str, room: &str) -> Client {
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        "{{\"name\":\"{name}\",\"room\":\"{room}\",\"format\":\"json\"}}"
    ));
    loop {
        let v: Value = serde_json::from_str(&c.line()).unwrap();
        if v["type"] == "join" && v["name"] == name {
            return c;
        }
    }
}

pub fn json_line(c: &mut Client) -> Value {
    serde_json::from_str(&c.line()).expect("a JSON line")
}

/// An HTTP request from `from` (a loopback address), with `auth` as the Authorization header
/// (none if empty) and `body` as a JSON body: (status, head, body).
pub fn http_call(
    http: SocketAddr,
    from: [u8; 4],
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> (u16, String, String) {
    let mut c = Client::raw_from(http, std::net::IpAddr::from(from));
    c.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("Authorization: {auth}\r\n")
    };
    let body_head = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    c.send(&format!(
        "{method} {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n{auth}{body_head}\r\n{body}"
    ));
    read_response(&mut c.stream)
}
