//! The web side over real sockets: the page, WebSocket chat with TCP and JSON clients in every
//! direction, WebSocket bad input, the HTTP API, the metrics and the origin check.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ws::*;
use common::{Client, Endpoint, Server, TIMEOUT};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn web_server(args: &[&str]) -> Server {
    let mut all = vec!["--http", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Server::start(&all)
}

#[test]
fn the_page_is_served_with_a_strict_policy() {
    let server = web_server(&[]);
    let http = server.http.unwrap();
    let (status, head, body) = get(http, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<html") && body.contains("app.js"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for (path, kind) in [
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/manifest.webmanifest", "application/manifest+json"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = get(http, path);
        assert_eq!(status, 200, "{path}");
        assert!(head.to_ascii_lowercase().contains(kind), "{path}: {head}");
        assert!(!body.is_empty());
    }
    let (status, v) = get_json(http, "/no/such/page");
    assert_eq!(status, 404);
    assert_eq!(v["error"], "not found");
    // What the page needs to know before its form: does this server need an account?
    assert_eq!(
        get_json(http, "/api/info"),
        (200, serde_json::json!({"require_auth": false}))
    );
    let strict = web_server(&["--require-auth"]);
    let (status, v) = get_json(strict.http.unwrap(), "/api/info");
    assert_eq!(
        (status, v),
        (200, serde_json::json!({"require_auth": true}))
    );
}

#[test]
fn websocket_tcp_and_json_clients_share_a_room_in_every_direction() {
    let server = web_server(&[]);
    let mut ws = ws_join(&server, "Web", "mixed");
    let mut tcp = server.connect("Tcp", "mixed");
    let mut json = json_client(&server, "Json", "mixed");
    until(&mut ws, |v| v["type"] == "join" && v["name"] == "Json");

    send(&mut ws, "hello from the browser");
    assert_eq!(
        tcp.until("Web:hello from the browser").len(),
        1,
        "only Json's join before"
    );
    let v = json_line(&mut json);
    assert_eq!(
        (v["type"].as_str(), v["name"].as_str(), v["text"].as_str()),
        (Some("message"), Some("Web"), Some("hello from the browser"))
    );
    let v = frame(&mut ws);
    assert_eq!(
        v["text"], "hello from the browser",
        "the sender sees its own"
    );
    let web_id = v["id"].as_u64().unwrap();

    tcp.send("hello from nc\n");
    let v = frame(&mut ws);
    assert_eq!(
        (v["name"].as_str(), v["text"].as_str()),
        (Some("Tcp"), Some("hello from nc"))
    );
    assert_eq!(
        v["id"].as_u64(),
        Some(web_id + 1),
        "one order, one id sequence"
    );
    assert_eq!(json_line(&mut json)["text"], "hello from nc");

    json.send("hello from json\n");
    assert_eq!(frame(&mut ws)["text"], "hello from json");
    tcp.until("Json:hello from json");

    // A multi-line message stays one message: one frame and one JSON object with its newline,
    // and in plain text one `name:line` per line (no line can pass for another sender's).
    send(&mut ws, "first line\nTcp:second line");
    let v = frame(&mut ws);
    assert_eq!(v["text"], "first line\nTcp:second line");
    tcp.expect("Web:first line");
    tcp.expect("Web:Tcp:second line");
    assert_eq!(json_line(&mut json)["text"], "hello from json");
    assert_eq!(json_line(&mut json)["text"], "first line\nTcp:second line");

    // Commands work over WebSocket; their answers are JSON frames.
    send(&mut ws, "/who");
    let v = until(&mut ws, |v| v["type"] == "who");
    assert!(v.is_empty(), "{v:?}");
    send(&mut ws, "/who\n/rooms");
    let v = frame(&mut ws);
    assert_eq!(v["reason"], "a command must be one line");
    send(&mut ws, "/quit");
    let v = frame(&mut ws);
    assert_eq!(v["type"], "notice");
    match next(&mut ws, TIMEOUT) {
        Got::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("{other:?}"),
    }
    tcp.expect("*** Web left");
}

#[test]
fn websocket_bad_input_closes_only_that_client_with_a_code_and_reason() {
    let server = web_server(&["--handshake-timeout", "1", "--max-line", "100"]);
    let mut bystander = server.connect("Calm", "bad");

    let mut ws = ws_open(&server);
    send(&mut ws, "hello");
    expect_closed(&mut ws, 1008, "invalid handshake JSON");

    let mut ws = ws_open(&server);
    send(&mut ws, "{\"name\":\"a b\",\"room\":\"bad\"}");
    expect_closed(&mut ws, 1008, "names cannot contain spaces");

    let mut ws = ws_open(&server);
    send(&mut ws, "{\"name\":\"Calm\",\"room\":\"bad\"}");
    expect_closed(&mut ws, 1008, "name Calm is already taken in room bad");

    let mut ws = ws_open(&server);
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    expect_closed(&mut ws, 1003, "binary frames are not supported");

    let mut ws = ws_open(&server);
    let started = Instant::now();
    expect_closed(&mut ws, 1008, "handshake timeout");
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut ws = ws_join(&server, "Big", "bad");
    bystander.expect("*** Big joined");
    ws.send(Message::binary(vec![0u8; 4])).unwrap();
    expect_closed(&mut ws, 1003, "binary");
    bystander.expect("*** Big left");

    let mut ws = ws_join(&server, "Long", "bad");
    bystander.expect("*** Long joined");
    send(&mut ws, &"x".repeat(101));
    expect_closed(&mut ws, 1009, "line too long");
    bystander.expect("*** Long left");

    // A frame far over the limit is refused as it arrives, not buffered whole.
    let mut ws = ws_join(&server, "Huge", "bad");
    bystander.expect("*** Huge joined");
    let _ = ws.send(Message::text("y".repeat(4 * 1024 * 1024)));
    match next(&mut ws, TIMEOUT) {
        Got::Json(v) => assert!(v["reason"].as_str().unwrap().contains("too long"), "{v}"),
        Got::Close(_) => {}
        Got::Nothing => panic!("not closed"),
    }
    bystander.expect("*** Huge left");

    // The bystander never noticed anything else.
    bystander.send("still here\n");
    bystander.expect("Calm:still here");
}

#[test]
fn websocket_resume_replays_what_was_missed() {
    let server = web_server(&[]);
    let mut tcp = server.connect("Tcp", "resume");
    let mut ws = ws_join(&server, "Web", "resume");
    tcp.expect("*** Web joined");
    tcp.send("one\n");
    let first = frame(&mut ws)["id"].as_u64().unwrap();
    drop(ws);
    tcp.until("*** Web left");
    tcp.send("two\n");
    tcp.send("three\n");
    tcp.until("Tcp:three");
    let mut ws = ws_open(&server);
    send(
        &mut ws,
        &format!("{{\"name\":\"Web\",\"room\":\"resume\",\"since\":{first}}}"),
    );
    let v = frame(&mut ws);
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("history"), Some(2))
    );
    assert_eq!(frame(&mut ws)["text"], "two");
    assert_eq!(frame(&mut ws)["text"], "three");
    assert_eq!(frame(&mut ws)["type"], "end_of_history");
    let v = frame(&mut ws);
    assert_eq!(
        (v["type"].as_str(), v["name"].as_str()),
        (Some("join"), Some("Web"))
    );
}

#[test]
fn http_api_rooms_messages_and_health() {
    let server = web_server(&[]);
    let http = server.http.unwrap();
    let (status, v) = get_json(http, "/healthz");
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(v["history"], "ok");

    let mut a = server.connect("A", "api");
    let _b = server.connect("B", "api");
    let _c = server.connect("C", "other");
    a.expect("*** B joined");
    for i in 0..5 {
        a.send(&format!("m{i}\n"));
    }
    a.until("A:m4");
    let (status, v) = get_json(http, "/api/rooms");
    assert_eq!(status, 200);
    assert_eq!(
        v["rooms"],
        serde_json::json!([{"room": "api", "members": 2}, {"room": "other", "members": 1}])
    );
    // The store commits in the background: wait (bounded) until all five are there.
    let deadline = Instant::now() + TIMEOUT;
    let v = loop {
        let (status, v) = get_json(http, "/api/rooms/api/messages");
        assert_eq!(status, 200, "{v}");
        if v["messages"].as_array().unwrap().len() == 5 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let msgs = v["messages"].as_array().unwrap();
    let texts: Vec<&str> = msgs.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(msgs[0]["type"], "message");
    assert_eq!(msgs[0]["name"], "A");
    let first = msgs[0]["id"].as_u64().unwrap();
    assert_eq!(v["last_id"].as_u64(), Some(first + 4));

    let (_, v) = get_json(
        http,
        &format!("/api/rooms/api/messages?since={first}&limit=2"),
    );
    let texts: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m1", "m2"]);
    assert_eq!(v["last_id"].as_u64(), Some(first + 2));
    let (_, v) = get_json(http, "/api/rooms/api/messages?limit=1");
    assert_eq!(v["messages"][0]["text"], "m4");
    // The largest id there is: nothing after it, and no wrap-around to the start.
    let (status, v) = get_json(http, &format!("/api/rooms/api/messages?since={}", u64::MAX));
    assert_eq!(
        (status, v["messages"].clone()),
        (200, serde_json::json!([]))
    );
    let (status, v) = get_json(http, "/api/rooms/empty/messages");
    assert_eq!(
        (status, v["messages"].as_array().map(Vec::len)),
        (200, Some(0))
    );

    for (path, part) in [
        ("/api/rooms/api/messages?limit=0", "limit"),
        ("/api/rooms/api/messages?limit=5000", "limit"),
        ("/api/rooms/api/messages?since=-1", "whole numbers"),
        ("/api/rooms/api/messages?since=abc", "whole numbers"),
        ("/api/rooms/a%20b/messages", "rooms cannot contain spaces"),
        ("/api/rooms?limit=x", "limit"),
    ] {
        let (status, v) = get_json(http, path);
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(part), "{path}: {v}");
    }
}

#[test]
fn http_api_without_history() {
    let server = web_server(&["--history", "off"]);
    let http = server.http.unwrap();
    let (status, v) = get_json(http, "/healthz");
    assert_eq!((status, v["history"].as_str()), (200, Some("off")));
    let (status, v) = get_json(http, "/api/rooms/r/messages");
    assert_eq!(status, 404);
    assert_eq!(v["error"], "history is off on this server");
}

/// The value of a metric line that starts with `prefix` (name and labels).
fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_connections_messages_and_rejections() {
    let server = web_server(&["--max-pending", "65536", "--max-line-rate", "0"]);
    let http = server.http.unwrap();
    let mut ws = ws_join(&server, "Web", "m");
    let mut tcp = server.connect("Tcp", "m");
    common::expect_refused(&server, b"{\"name\":\"Tcp\",\"room\":\"m\"}", "taken");
    common::expect_refused(&server, b"nope", "invalid handshake JSON");
    send(&mut ws, "hi");
    tcp.until("Web:hi");
    tcp.send("yo\n");
    tcp.expect("Tcp:yo");
    until(&mut ws, |v| v["text"] == "yo");
    // The store commits in the background: wait (bounded) for its first commit to be timed.
    let deadline = Instant::now() + TIMEOUT;
    let (status, head, body) = loop {
        let got = get(http, "/metrics");
        if got.2.contains("machat_store_append_seconds_bucket") || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/plain"), "{head}");
    let m = |p: &str| metric(&body, p).unwrap_or_else(|| panic!("no {p} in\n{body}"));
    assert_eq!(m("machat_connections{transport=\"websocket\"}"), 1.0);
    assert_eq!(m("machat_connections{transport=\"tcp\"}"), 1.0);
    assert_eq!(m("machat_rooms "), 1.0);
    assert_eq!(m("machat_messages_received_total"), 2.0);
    assert_eq!(m("machat_messages_delivered_total"), 4.0);
    assert!(m("machat_bytes_out_total{transport=\"tcp\"}") > 0.0);
    assert!(m("machat_bytes_out_total{transport=\"websocket\"}") > 0.0);
    assert_eq!(
        m("machat_handshakes_rejected_total{reason=\"name_taken\"}"),
        1.0
    );
    assert_eq!(
        m("machat_handshakes_rejected_total{reason=\"invalid_json\"}"),
        1.0
    );
    assert!(
        body.contains("machat_store_append_seconds_bucket"),
        "{body}"
    );

    // A client that never reads is cut off, and counted.
    drop(ws);
    tcp.expect("*** Web left");
    let mut lazy = Client::raw(server.addr);
    lazy.send("{\"name\":\"Lazy\",\"room\":\"m\"}");
    tcp.expect("*** Lazy joined");
    let big = "z".repeat(4000);
    let deadline = Instant::now() + TIMEOUT;
    while !server.log_contains("cut off: slow consumer") && Instant::now() < deadline {
        for _ in 0..10 {
            tcp.send(&format!("{big}\n"));
        }
        // Keep the others reading so only Lazy falls behind.
        for _ in 0..10 {
            tcp.line();
        }
    }
    assert!(server.log_contains("cut off: slow consumer"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, _, body) = get(http, "/metrics");
        if metric(&body, "machat_slow_consumer_disconnects_total") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "not counted:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn websockets_from_other_sites_are_refused_unless_allowed() {
    let server = web_server(&[]);
    let http = server.http.unwrap();
    match ws_open_origin(&server, Some("http://evil.example")) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("wanted 403, got {:?}", other.map(|_| ())),
    }
    // The page's own origin, and clients that send none, are fine.
    let own = format!("http://{http}");
    assert!(ws_open_origin(&server, Some(&own)).is_ok());
    assert!(ws_open_origin(&server, None).is_ok());

    let server = web_server(&["--allowed-origins", "http://evil.example,https://b.example"]);
    let mut ws = ws_open_origin(&server, Some("http://evil.example")).expect("allowed origin");
    send(&mut ws, "{\"name\":\"X\",\"room\":\"o\"}");
    until(&mut ws, |v| v["type"] == "join");
}

#[test]
fn websocket_clients_are_told_at_shutdown() {
    let server = web_server(&[]);
    let mut ws = ws_join(&server, "Web", "bye");
    server.signal("-TERM");
    let v = until(&mut ws, |v| v["type"] == "notice");
    assert!(v.is_empty(), "{v:?}");
    match next(&mut ws, TIMEOUT) {
        Got::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_websocket_that_never_reads_is_cut_off_and_closed() {
    let server = web_server(&["--max-pending", "65536", "--max-line-rate", "0"]);
    let mut tcp = server.connect("Tcp", "slow");
    let mut ws = ws_join(&server, "Sleepy", "slow");
    tcp.expect("*** Sleepy joined");
    let big = "z".repeat(4000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    loop {
        for _ in 0..10 {
            tcp.send(&format!("{big}\n"));
        }
        sent += 10;
        let mut left = false;
        for _ in 0..10 {
            left |= tcp.line() == "*** Sleepy left";
        }
        if left || server.log_contains("name=Sleepy") && server.log_contains("cut off") {
            break;
        }
        assert!(Instant::now() < deadline, "not cut off after {sent} lines");
    }
    // The server closed the connection: reading what it sent ends in a close (or a reset).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(e) if nothing_yet(&e) => {}
            Err(_) => break,
        }
        assert!(Instant::now() < deadline, "still open");
    }
    tcp.send("after\n");
    tcp.until("Tcp:after");
}

#[test]
fn pings_keep_a_websocket_alive_past_the_idle_timeout() {
    let server = web_server(&["--idle-timeout", "1", "--ws-ping", "0.3"]);
    let mut alive = ws_join(&server, "Alive", "idle");
    let mut silent = raw_ws_join(&server, "Silent", "idle");
    // Alive reads all the time (so its WebSocket answers each ping); Silent never reads.
    let start = Instant::now();
    let mut left = false;
    while start.elapsed() < Duration::from_millis(2500) {
        if let Got::Json(v) = next(&mut alive, Duration::from_millis(100)) {
            left |= v["type"] == "leave" && v["name"] == "Silent";
        }
    }
    assert!(left, "Silent was not disconnected");
    // Everything the server sent Silent: pings, then the error and a close frame 1001.
    let mut raw = Vec::new();
    let _ = silent.read_to_end(&mut raw);
    let error = br#"{"type":"error","reason":"idle timeout"}"#;
    assert!(raw.windows(error.len()).any(|w| w == error), "{raw:?}");
    let close = b"\x88\x0e\x03\xe9idle timeout";
    assert!(raw.ends_with(close), "{raw:?}");
    send(&mut alive, "still here");
    until(&mut alive, |v| v["text"] == "still here");
}

/// A WebSocket client by hand that never reads after joining (and so never answers a ping).
fn raw_ws_join(server: &Server, name: &str, room: &str) -> TcpStream {
    let mut s = raw_ws_open(server);
    let payload = format!("{{\"name\":\"{name}\",\"room\":\"{room}\"}}");
    s.write_all(&client_frame(0x81, payload.as_bytes()))
        .unwrap();
    s
}

/// A WebSocket upgraded by hand; no frame sent yet.
fn raw_ws_open(server: &Server) -> TcpStream {
    let addr = server.http.unwrap();
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// One masked client frame (a zero mask leaves the payload as it is; at most 125 bytes):
/// `first` is the FIN bit and the opcode (0x81 a whole text frame, 0x89 a ping, 0x01 a text
/// frame with more to come, 0x00 a continuation, 0x80 the last one).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mut frame = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// What a server sent on a raw WebSocket: its frames, (opcode, payload), until its close
/// frame, the end of the connection or the timeout.
fn server_frames(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut raw = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 65536];
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        // Whole frames off the front (the server's are not masked).
        loop {
            if raw.len() < 2 {
                break;
            }
            let (len, at) = match raw[1] & 0x7f {
                126 if raw.len() >= 4 => (usize::from(u16::from_be_bytes([raw[2], raw[3]])), 4),
                127 if raw.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&raw[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if raw.len() < at + len {
                break;
            }
            frames.push((raw[0] & 0x0f, raw[at..at + len].to_vec()));
            raw.drain(..at + len);
        }
        if frames.last().is_some_and(|(op, _)| *op == 0x8) {
            break;
        }
    }
    frames
}

/// The last frames of a connection the server closed: an error frame with `reason`, then a
/// close frame with `code` and the same reason.
fn assert_closed_with(frames: &[(u8, Vec<u8>)], code: u16, reason: &str) {
    let n = frames.len();
    assert!(n >= 2, "not closed: {} frames", n);
    let (op, close) = &frames[n - 1];
    assert_eq!(*op, 0x8, "no close frame at the end");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), code, "{close:?}");
    assert_eq!(String::from_utf8_lossy(&close[2..]), reason);
    let (op, error) = &frames[n - 2];
    assert_eq!(*op, 0x1);
    let v: serde_json::Value = serde_json::from_slice(error).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["reason"].as_str()),
        (Some("error"), Some(reason))
    );
}

#[test]
fn slow_or_silent_http_clients_are_cut_off_at_the_handshake_timeout() {
    let server = web_server(&["--handshake-timeout", "1"]);
    let http = server.http.unwrap();
    // Headers that never end (slowloris), and a connection that never sends a byte.
    let mut slow = TcpStream::connect_timeout(&http, TIMEOUT).unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut silent = TcpStream::connect_timeout(&http, TIMEOUT).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let start = Instant::now();
    for s in [&mut slow, &mut silent] {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // Meanwhile and afterwards, real requests are served.
    let (status, _) = get_json(http, "/healthz");
    assert_eq!(status, 200);
}

#[test]
fn a_websocket_closed_by_its_client_is_logged_as_such() {
    let server = web_server(&[]);
    let mut tcp = server.connect("Tcp", "bye");
    let mut ws = ws_join(&server, "Web", "bye");
    tcp.expect("*** Web joined");
    ws.close(None).unwrap();
    // The server answers the close frame, then the client sees the end.
    let _ = next(&mut ws, TIMEOUT);
    tcp.expect("*** Web left");
    assert!(server.wait_log("name=Web room=bye reason=closed by client"));
    assert!(!server.log_contains("i/o error"), "{:?}", server.log);
}

#[test]
fn serde_json_private_keys_cannot_smuggle_a_handshake() {
    // With serde_json's raw_value feature (axum turns it on), this object would read as the
    // string "Mina", and a whole handshake could hide in a string.
    let server = web_server(&[]);
    let mut ws = ws_open(&server);
    send(
        &mut ws,
        r#"{"name":{"$serde_json::private::RawValue":"\"Mina\""},"room":"r"}"#,
    );
    expect_closed(&mut ws, 1008, "\"name\" must be a string");
    let mut ws = ws_open(&server);
    send(
        &mut ws,
        r#"{"$serde_json::private::RawValue":"{\"name\":\"Mina\",\"room\":\"r\"}"}"#,
    );
    expect_closed(&mut ws, 1008, "handshake is missing \"name\"");
}

/// A request by hand: `GET path` with the given header lines (`Host` among them, or not).
fn get_as(http: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    request(
        http,
        &format!("GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"),
    )
}

/// The WebSocket upgrade request a browser sends, for `host` from a page at `origin`.
fn upgrade_request(host: &str, origin: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn requests_for_host_names_not_ours_are_refused_everywhere() {
    // DNS rebinding: a page on rebind.attacker.example, whose name the attacker then points at
    // this server, is the same origin as the server in the browser's eyes. Only `Host` tells.
    let server = web_server(&[]);
    let http = server.http.unwrap();
    let port = http.port();
    let evil = format!("rebind.attacker.example:{port}");
    for path in [
        "/",
        "/app.js",
        "/healthz",
        "/api/rooms",
        "/api/rooms/r/messages",
        "/metrics",
        "/ws",
        "/no/such/page",
    ] {
        let (status, head, body) = get_as(http, path, &format!("Host: {evil}\r\n"));
        assert_eq!(status, 421, "{path}: {head}\n{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        assert!(error_of(&body).contains("--allowed-hosts"), "{body}");
    }
    // The WebSocket the rebinding page opens: its Origin is its Host, still refused.
    let (status, _, body) = request(http, &upgrade_request(&evil, &format!("http://{evil}")));
    assert_eq!(status, 421, "{body}");
    // The target's authority counts as the Host (absolute form).
    let (status, _, _) = request(
        http,
        &format!("GET http://{evil}/healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 421);
    // The log says which host was refused, for the operator who forgot a name.
    assert!(server.wait_log("http refused: host not allowed or missing addr=127.0.0.1:"));
    assert!(server.log_contains(&format!("host=\"{evil}\"")));

    // Ours: IP literals (a rebinding needs a name) and localhost, any port, case or final dot.
    for host in [
        http.to_string(),
        "127.0.0.1".into(),
        "10.1.2.3:9".into(),
        format!("localhost:{port}"),
        "LocalHost.".into(),
        "[::1]:8080".into(),
        "[::1]".into(),
    ] {
        let (status, _, body) = get_as(http, "/healthz", &format!("Host: {host}\r\n"));
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, _, _) = request(
        http,
        &upgrade_request(&http.to_string(), &format!("http://{http}")),
    );
    assert_eq!(status, 101);

    // No Host (HTTP/1.1 or 1.0), an empty one, two of them: refused.
    for raw in [
        "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET /healthz HTTP/1.0\r\n\r\n".to_string(),
        "GET /healthz HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n".to_string(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {http}\r\nHost: {evil}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let (status, _, body) = request(http, &raw);
        assert_eq!(status, 400, "{raw:?}: {body}");
        assert!(error_of(&body).contains("Host"), "{body}");
    }

    // The names of --allowed-hosts, compared without case, final dot or port.
    let server = web_server(&["--allowed-hosts", "chat.example.org,Other.Example:8443"]);
    let http = server.http.unwrap();
    for host in ["Chat.Example.ORG.:443", "chat.example.org", "other.example"] {
        let (status, _, body) = get_as(http, "/healthz", &format!("Host: {host}\r\n"));
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, _, _) = get_as(http, "/healthz", &format!("Host: {evil}\r\n"));
    assert_eq!(status, 421);
    let (status, _, _) = get_as(http, "/healthz", "Host: sub.chat.example.org\r\n");
    assert_eq!(status, 421);
    let (status, _, _) = request(
        http,
        &upgrade_request("chat.example.org", "http://chat.example.org"),
    );
    assert_eq!(status, 101);

    // `*` turns the check off.
    let server = web_server(&["--allowed-hosts", "*"]);
    let (status, _, _) = get_as(
        server.http.unwrap(),
        "/healthz",
        &format!("Host: {evil}\r\n"),
    );
    assert_eq!(status, 200);
}

#[test]
fn metrics_can_move_to_their_own_port_or_need_a_token() {
    // On a listener of their own, and then not on the web port.
    let server = web_server(&["--metrics-addr", "127.0.0.1:0"]);
    let (http, metrics) = (server.http.unwrap(), server.metrics.unwrap());
    assert_ne!(http, metrics);
    let (status, v) = get_json(http, "/metrics");
    assert_eq!((status, v["error"].as_str()), (404, Some("not found")));
    let (status, head, body) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("text/plain"), "{head}");
    assert!(body.contains("machat_connections"), "{body}");
    // Only the metrics there, and the Host check too.
    for path in ["/", "/healthz", "/api/rooms", "/ws"] {
        let (status, _, _) = get(metrics, path);
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = get_as(metrics, "/metrics", "Host: rebind.attacker.example\r\n");
    assert_eq!(status, 421);
    // The rest of the web side is where it was.
    let (status, _) = get_json(http, "/healthz");
    assert_eq!(status, 200);

    // Behind a token: `Authorization: Bearer TOKEN` (the file's first line).
    let dir = common::temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("metrics.token");
    std::fs::write(&file, "s3cret-Token_1\n").unwrap();
    let server = web_server(&["--metrics-token-file", file.to_str().unwrap()]);
    let http = server.http.unwrap();
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer s3cret-Token_\r\n",
        "Authorization: Bearer s3cret-Token_12\r\n",
        "Authorization: Basic czNjcmV0LVRva2VuXzE=\r\n",
        "Authorization: s3cret-Token_1\r\n",
    ] {
        let (status, head, body) = get_with(http, "/metrics", auth);
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        assert!(error_of(&body).contains("token"), "{body}");
    }
    for auth in [
        "Authorization: Bearer s3cret-Token_1\r\n",
        "Authorization: bearer  s3cret-Token_1\r\n",
    ] {
        let (status, _, body) = get_with(http, "/metrics", auth);
        assert_eq!(status, 200, "{auth:?}");
        assert!(body.contains("machat_connections"), "{body}");
    }
    // Nothing else needs it.
    let (status, _) = get_json(http, "/healthz");
    assert_eq!(status, 200);
    // On a listener of its own, with the web side off, the token holds there too.
    let alone = Server::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--metrics-token-file",
        file.to_str().unwrap(),
    ]);
    let metrics = alone.metrics.unwrap();
    assert_eq!(get(metrics, "/metrics").0, 401);
    let (status, _, body) = get_with(
        metrics,
        "/metrics",
        "Authorization: Bearer s3cret-Token_1\r\n",
    );
    assert_eq!(status, 200);
    assert!(body.contains("machat_connections"), "{body}");

    // A token file that is missing or empty stops the start, saying which and why.
    common::token_files_are_checked("--metrics-token-file", &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn websocket_ping_floods_are_closed_and_cost_little() {
    let server = web_server(&[]);
    let mut calm = ws_join(&server, "Calm", "flood");
    let mut flood = raw_ws_join(&server, "Flood", "flood");
    until(&mut calm, |v| v["type"] == "join" && v["name"] == "Flood");
    let cpu = server.cpu_secs();
    // 200,000 pings as fast as the socket takes them (each one a pong to write, unpaced,
    // before the fix), read meanwhile.
    let mut writer = flood.try_clone().unwrap();
    let pings = client_frame(0x89, b"").repeat(200_000);
    let flooding = std::thread::spawn(move || writer.write_all(&pings).is_ok());
    let frames = server_frames(&mut flood);
    let all_written = flooding.join().unwrap();
    let used = server.cpu_secs() - cpu;
    let pongs = frames.iter().filter(|(op, _)| *op == 0xa).count();
    eprintln!("200k pings: server CPU {used:.2} s, {pongs} pongs, all written: {all_written}");
    assert_closed_with(&frames, 1008, "too many control frames");
    assert!(pongs <= 200, "{pongs} pongs");
    assert!(used < 0.5, "{used} CPU-s");
    // The others in the room are served as before.
    until(&mut calm, |v| v["type"] == "leave" && v["name"] == "Flood");
    let start = Instant::now();
    send(&mut calm, "still fine");
    until(&mut calm, |v| v["text"] == "still fine");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn websocket_ping_floods_before_the_handshake_are_closed_too() {
    let server = web_server(&["--handshake-timeout", "5"]);
    let mut flood = raw_ws_open(&server);
    let mut writer = flood.try_clone().unwrap();
    let pings = client_frame(0x89, b"x").repeat(20_000);
    let flooding = std::thread::spawn(move || {
        let _ = writer.write_all(&pings);
    });
    let frames = server_frames(&mut flood);
    flooding.join().unwrap();
    assert_closed_with(&frames, 1008, "too many control frames");
}

#[test]
fn websocket_floods_of_empty_fragments_are_closed() {
    // tungstenite puts fragments together before the server sees a message: an endless
    // message of empty continuation frames never showed up as anything to count.
    let server = web_server(&[]);
    let mut bystander = server.connect("Calm", "frag");
    let mut flood = raw_ws_join(&server, "Frag", "frag");
    bystander.expect("*** Frag joined");
    let mut writer = flood.try_clone().unwrap();
    let mut frames = client_frame(0x01, b"x");
    frames.extend(client_frame(0x00, b"").repeat(100_000));
    let flooding = std::thread::spawn(move || {
        let _ = writer.write_all(&frames);
    });
    let frames = server_frames(&mut flood);
    flooding.join().unwrap();
    assert_closed_with(&frames, 1008, "too many fragments");
    bystander.expect("*** Frag left");
    // A message in a few fragments is still one message.
    let mut ws = raw_ws_join(&server, "Parts", "frag");
    bystander.expect("*** Parts joined");
    let mut parts = client_frame(0x01, b"one ");
    parts.extend(client_frame(0x00, b""));
    parts.extend(client_frame(0x00, b"message"));
    parts.extend(client_frame(0x80, b" in four"));
    ws.write_all(&parts).unwrap();
    bystander.expect("Parts:one message in four");
}

#[test]
fn websocket_pings_count_towards_the_line_rate() {
    let server = web_server(&["--max-line-rate", "10", "--line-burst", "20"]);
    let mut bystander = server.connect("Calm", "rate");
    let mut pinger = raw_ws_join(&server, "Pinger", "rate");
    bystander.expect("*** Pinger joined");
    // 20 pings spend the burst: the 10 messages after them come at 10 a second.
    let mut frames = client_frame(0x89, b"").repeat(20);
    for i in 0..10 {
        frames.extend(client_frame(0x81, format!("m{i}").as_bytes()));
    }
    let start = Instant::now();
    pinger.write_all(&frames).unwrap();
    bystander.expect("Pinger:m0");
    let first = start.elapsed();
    bystander.until("Pinger:m9");
    let last = start.elapsed();
    assert!(
        last >= Duration::from_millis(800) && last - first >= Duration::from_millis(700),
        "first after {first:?}, last after {last:?}"
    );
}

#[test]
fn requests_to_the_websocket_endpoint_that_are_not_upgrades_get_json_errors() {
    let server = web_server(&[]);
    let http = server.http.unwrap();
    let (status, _, body) = get(http, "/ws");
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("WebSocket upgrade is needed"),
        "{body}"
    );
    let (status, head, body) = request(
        http,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
        ),
    );
    assert_eq!(status, 426, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    let (status, _, body) = request(
        http,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(
        (status, error_of(&body).as_str()),
        (400, "Sec-WebSocket-Key is missing")
    );
}

/// The rooms' frames go to the socket past tungstenite (made once per room, written in one
/// write per drain). A client that stops reading makes those writes stop part-way through a
/// frame; meanwhile the server's pings, its pongs to the client's pings and the replies to the
/// client's commands (plain lines, framed one by one) must queue behind the frame under way,
/// never inside it. The client then reads every frame whole, in order.
#[test]
fn a_websocket_that_falls_behind_gets_every_frame_whole_among_pings_and_replies() {
    let server = web_server(&[
        "--max-pending",
        "67108864",
        "--max-line-rate",
        "0",
        "--ws-ping",
        "0.05",
    ]);
    let mut tcp = server.connect("Flood", "behind");
    let mut ws = ws_join(&server, "Behind", "behind");
    tcp.expect("*** Behind joined");
    // Lengths that give frames of both short header sizes (payloads under and over 125).
    let text = |i: usize| format!("{i}:{}", "w".repeat(i % 700));
    let total = 40_000;
    let mut whos = 0;
    for i in 0..total {
        tcp.send(&format!("{}\n", text(i)));
        if i % 1000 == 0 {
            // Without reading: a ping (its pong queues on the server) and a command (its
            // reply is the session's own line, not a room frame).
            ws.send(Message::Ping(Vec::new().into())).expect("ping");
            send(&mut ws, "/who");
            whos += 1;
        }
    }
    // Only once the flood is all out does the client read.
    tcp.until(&format!("Flood:{}", text(total - 1)));
    let mut next_text = 0;
    let mut who_replies = 0;
    while next_text < total {
        match next(&mut ws, TIMEOUT) {
            Got::Json(v) if v["type"] == "message" => {
                assert_eq!(v["text"], text(next_text), "message {next_text}");
                next_text += 1;
            }
            Got::Json(v) if v["type"] == "notice" || v["type"] == "who" => who_replies += 1,
            Got::Json(_) => {}
            other => panic!("after {next_text} messages: {other:?}"),
        }
    }
    // The last replies may still be on their way after the last message.
    while who_replies < whos {
        match next(&mut ws, TIMEOUT) {
            Got::Json(v) if v["type"] == "notice" || v["type"] == "who" => who_replies += 1,
            Got::Json(_) => {}
            other => panic!("{who_replies} of {whos} replies: {other:?}"),
        }
    }
    send(&mut ws, "still whole");
    until(&mut ws, |v| v["text"] == "still whole");
}
