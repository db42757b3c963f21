//! Memory held for clients that never read what they asked for: history replays (TCP and
//! WebSocket) and HTTP history answers. Each case was an outside finding: 100 TCP clients
//! asking for 1,000 messages of 8 KiB and never reading took a server from 27 MiB to 2 GB.
//! Now a replay or an answer is produced a page at a time as the socket drains, so the server
//! holds about a page per such client, and a replay not taken in time cuts the client off.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ws::{send, ws_open, Ws};
use common::{Client, Endpoint, Server, TIMEOUT};

/// Messages in the room, and their size: 8 MB of history.
const MESSAGES: usize = 1000;
const TEXT: usize = 8000;
/// Clients that ask for all of it and never read.
fn never_readers() -> usize {
    std::env::var("NR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn text(i: usize) -> String {
    format!("{i:04}{}", "x".repeat(TEXT))
}

/// Fills `room` with the messages, then leaves it empty (only its history remains).
fn fill(server: &Server, room: &str) {
    let mut w = server.connect("writer", room);
    // In batches, reading the echoes: a writer that does not read is a slow consumer too.
    for batch in (0..MESSAGES).collect::<Vec<_>>().chunks(50) {
        let lines: String = batch.iter().map(|&i| format!("{}\n", text(i))).collect();
        w.send(&lines);
        w.until(&format!("writer:{}", text(batch[batch.len() - 1])));
    }
}

fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--max-line-rate", "0", "--history-max", "5000"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn log_count(server: &Server, needle: &str) -> usize {
    let log = server.log.lock().unwrap_or_else(|e| e.into_inner());
    log.iter().filter(|l| l.contains(needle)).count()
}

/// Waits (bounded) until the log has `n` lines with `needle`.
fn wait_count(server: &Server, needle: &str, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let seen = log_count(server, needle);
        if seen >= n || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RSS growth of the server while `n` clients sit on their requests, in KiB.
fn growth_while(server: &Server, open: impl FnOnce() -> Vec<Box<dyn std::any::Any>>) -> u64 {
    // One replay read in full first: what any first replay costs the process once (SQLite's
    // page cache, the store thread's allocator) is not what a never-reader holds.
    let mut reader = server.connect_with("warmup", "big", ",\"history\":1000");
    reader.until("*** end of history");
    drop(reader);
    std::thread::sleep(Duration::from_millis(500));
    let before = server.rss_kib();
    let held = open();
    // Whatever the server does for them, it has done by now.
    std::thread::sleep(Duration::from_secs(2));
    let after = server.rss_kib();
    drop(held);
    eprintln!("server RSS {before} KiB before, {after} KiB with the never-readers");
    after.saturating_sub(before)
}

#[test]
fn history_replays_nobody_reads_hold_a_page_not_the_history() {
    let server = server(&[]);
    fill(&server, "big");
    let grew = growth_while(&server, || {
        (0..never_readers())
            .map(|i| {
                let c = server.connect_with(&format!("n{i}"), "big", ",\"history\":1000");
                Box::new(c) as Box<dyn std::any::Any>
            })
            .collect()
    });
    // Before: each held its whole replay (~8 MiB), 30 of them over 200 MiB.
    assert!(
        grew < 24 * 1024,
        "{} never-readers grew the server by {grew} KiB",
        never_readers()
    );
}

#[test]
fn a_replay_not_taken_in_time_cuts_the_client_off() {
    let server = server(&[]);
    fill(&server, "big");
    let _held: Vec<Client> = (0..5)
        .map(|i| server.connect_with(&format!("n{i}"), "big", ",\"history\":1000"))
        .collect();
    // Each page must be taken within 10 s.
    let cut = wait_count(
        &server,
        "history not read in time",
        5,
        Duration::from_secs(30),
    );
    assert_eq!(cut, 5, "never-readers still held after 30 s");
    // The room is served as ever.
    let mut a = server.connect("a", "big");
    a.send("still here\n");
    a.expect("a:still here");
}

#[test]
fn websocket_replays_nobody_reads_hold_a_page_not_the_history() {
    let server = server(&["--http", "127.0.0.1:0"]);
    fill(&server, "big");
    let grew = growth_while(&server, || {
        (0..never_readers())
            .map(|i| {
                let mut ws: Ws = ws_open(&server);
                send(
                    &mut ws,
                    &format!("{{\"name\":\"w{i}\",\"room\":\"big\",\"history\":1000}}"),
                );
                Box::new(ws) as Box<dyn std::any::Any>
            })
            .collect()
    });
    assert!(
        grew < 24 * 1024,
        "{} never-reading websockets grew the server by {grew} KiB",
        never_readers()
    );
}

#[test]
fn http_history_answers_nobody_reads_hold_a_page_not_the_answer() {
    let server = server(&["--http", "127.0.0.1:0"]);
    fill(&server, "big");
    let http = server.http.expect("http on");
    let grew = growth_while(&server, || {
        (0..never_readers())
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&http, TIMEOUT).expect("connect");
                write!(
                    s,
                    "GET /api/rooms/big/messages?limit=1000 HTTP/1.1\r\nHost: {http}\r\n\r\n"
                )
                .expect("request");
                Box::new(s) as Box<dyn std::any::Any>
            })
            .collect()
    });
    assert!(
        grew < 24 * 1024,
        "{} unread answers grew the server by {grew} KiB",
        never_readers()
    );
    // And a client that reads gets all of it, in order.
    let (status, body) = common::ws::get_json(http, "/api/rooms/big/messages?limit=1000");
    assert_eq!(status, 200);
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), MESSAGES);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["text"], text(i), "message {i}");
    }
    assert_eq!(body["last_id"], messages[MESSAGES - 1]["id"]);
}

#[test]
fn history_1000_of_large_messages_is_paged_not_a_slow_consumer() {
    let server = server(&[]);
    fill(&server, "big");
    let mut asker = server.connect("asker", "big");
    let mut other = server.connect("other", "big");
    asker.expect("*** other joined");
    asker.send("/history 1000\n");
    asker.expect("*** history: 1000 messages");
    // Live traffic while the answer is on its way waits behind it.
    other.send("live\n");
    for i in 0..MESSAGES {
        asker.expect(&format!("writer:{}", text(i)));
    }
    asker.expect("*** end of history");
    asker.expect("other:live");
    asker.send("after\n");
    asker.expect("asker:after");
    assert!(!server.log_contains("cut off"), "the asker was cut off");
}

#[test]
fn a_replay_in_json_keeps_its_order_with_live_messages() {
    let server = server(&[]);
    fill(&server, "big");
    let mut talker = server.connect("talker", "big");
    let mut c = server.connect_with("j", "big", ",\"history\":1000,\"format\":\"json\"");
    talker.expect("*** j joined");
    talker.send("during\n");
    let mut ids = Vec::new();
    let mut saw_end = false;
    loop {
        let line = c.line_within(TIMEOUT).expect("a line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        match v["type"].as_str() {
            Some("history") => assert_eq!(v["count"], MESSAGES),
            Some("message") if v["name"] == "writer" => {
                assert!(!saw_end, "history after its end");
                ids.push(v["id"].as_u64().expect("id"));
            }
            Some("end_of_history") => saw_end = true,
            Some("message") if v["name"] == "talker" => {
                assert!(saw_end, "a live message inside the replay");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(ids.len(), MESSAGES);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids in order");
}
