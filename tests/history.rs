//! Message history over real sockets: replay on join, resume by id, /history, retention, ids
//! that survive restarts and crashes, and a database that cannot be opened.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, Client, Endpoint, Server};
use serde_json::Value;

fn json(c: &mut Client) -> Value {
    serde_json::from_str(&c.line()).expect("a JSON line")
}

/// Connects in JSON format with extra handshake fields; returns the client after its own join.
/// A message sent to `room` after a crash gets an id above `highest`: none is reused.
fn next_id_is_above(server: &Server, name: &str, room: &str, highest: u64) {
    let (mut c, _) = connect_json(server, name, room, "");
    c.send("after the crash\n");
    let v = json(&mut c);
    assert_eq!(v["text"], "after the crash");
    assert!(
        v["id"].as_u64().unwrap() > highest,
        "room {room}: id {} reused (highest seen {highest})",
        v["id"]
    );
}

fn connect_json(server: &Server, name: &str, room: &str, extra: &str) -> (Client, Vec<Value>) {
    let mut c = Client::raw(server.addr);
    c.send(&format!(
        "{{\"name\":\"{name}\",\"room\":\"{room}\",\"format\":\"json\"{extra}}}"
    ));
    let mut before = Vec::new();
    loop {
        let v = json(&mut c);
        if v["type"] == "join" && v["name"] == name {
            return (c, before);
        }
        before.push(v);
    }
}

fn send_all(c: &mut Client, from: usize, to: usize) {
    for i in from..to {
        c.send(&format!("m{i}\n"));
    }
}

#[test]
fn replay_on_join_in_text_and_json() {
    for mode in ["sqlite", "memory"] {
        let server = Server::start(&["--history", mode, "--max-line-rate", "0"]);
        let mut a = server.connect("a", "r");
        send_all(&mut a, 0, 5);
        a.send("/me waves\n");
        a.until("* a waves");

        // An old client asks for nothing and gets nothing old.
        let mut old = server.connect("old", "r");
        old.send("hi\n");
        old.expect("old:hi");

        let mut t = Client::raw(server.addr);
        t.send(r#"{"name":"t","room":"r","history":3}"#);
        t.expect("*** history: 3 messages");
        t.expect("a:m4");
        t.expect("* a waves");
        t.expect("old:hi");
        t.expect("*** end of history");
        t.expect("*** t joined");

        let (_j, before) = connect_json(&server, "j", "r", r#","history":100"#);
        assert_eq!(before[0]["type"], "history", "{mode}");
        assert_eq!(before[0]["count"], 7);
        let ids: Vec<u64> = before[1..8]
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (1..=7).collect::<Vec<u64>>());
        assert_eq!(before[1]["text"], "m0");
        assert_eq!(before[6]["type"], "action");
        assert!(before[1]["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(before[8]["type"], "end_of_history");
        assert_eq!(before.len(), 9);
    }
}

#[test]
fn history_on_join_default_and_history_command() {
    let server = Server::start(&["--history-on-join", "2", "--max-line-rate", "0"]);
    let mut a = Client::raw(server.addr);
    a.send(r#"{"name":"a","room":"r"}"#);
    // The default applies to a new room too: an empty replay.
    a.expect("*** history: 0 messages");
    a.expect("*** end of history");
    a.expect("*** a joined");
    send_all(&mut a, 0, 4);
    a.until("a:m3");
    let mut b = Client::raw(server.addr);
    b.send(r#"{"name":"b","room":"r"}"#);
    b.expect("*** history: 2 messages");
    b.expect("a:m2");
    b.expect("a:m3");
    b.expect("*** end of history");
    b.expect("*** b joined");
    // A client may still ask for none.
    let mut c = Client::raw(server.addr);
    c.send(r#"{"name":"c","room":"r","history":0}"#);
    c.expect("*** c joined");
    b.expect("*** c joined");

    b.send("/history\n");
    b.expect("*** history: 4 messages");
    for i in 0..4 {
        b.expect(&format!("a:m{i}"));
    }
    b.expect("*** end of history");
    b.send("/history 1\n");
    b.expect("*** history: 1 message");
    b.expect("a:m3");
    b.expect("*** end of history");
    b.send("/history zero\n");
    b.expect("*** error: usage: /history [N] (N from 1 to 1000)");
    b.send("/history 1001\n");
    b.expect("*** error: usage: /history [N] (N from 1 to 1000)");
    // Replies keep the order of the commands.
    b.send("/history 1\n/who\n");
    b.expect("*** history: 1 message");
    b.expect("a:m3");
    b.expect("*** end of history");
    b.expect("*** 3 in r: a b c");
}

#[test]
fn history_off() {
    let server = Server::start(&["--history", "off"]);
    let mut a = server.connect("a", "r");
    a.send("x\n");
    a.expect("a:x");
    a.send("/history\n");
    a.expect("*** error: history is off on this server");
    let mut b = Client::raw(server.addr);
    b.send(r#"{"name":"b","room":"r","history":5}"#);
    b.expect("*** error: history is off on this server");
    b.expect("*** b joined");
}

/// A client that reconnects with `"since"` misses nothing and sees nothing twice, while
/// another client keeps sending.
#[test]
fn resume_since_has_no_gap_and_no_duplicate() {
    for durability in ["batch", "sync"] {
        resume_while_others_send(durability);
    }
}

fn resume_while_others_send(durability: &str) {
    let server = Server::start(&["--max-line-rate", "0", "--durability", durability]);
    let sender = server.connect("sender", "r");
    let (mut reader, _) = connect_json(&server, "reader", "r", "");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let mut s = sender.stream.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 3000 {
                if s.write_all(format!("n{i}\n").as_bytes()).is_err() {
                    break;
                }
                i += 1;
                if i % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            i
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    for round in 0..5 {
        // Read some, then drop the connection and come back from the last id seen.
        while seen.len() < (round + 1) * 100 {
            let v = json(&mut reader);
            if v["type"] == "message" {
                seen.push(v["id"].as_u64().unwrap());
            }
        }
        drop(reader);
        std::thread::sleep(Duration::from_millis(30));
        let last = *seen.last().unwrap();
        let (r, before) = connect_json(&server, "reader", "r", &format!(r#","since":{last}"#));
        reader = r;
        for v in before {
            if v["type"] == "message" {
                seen.push(v["id"].as_u64().unwrap());
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap() as u64;
    // Drain the rest: every id the sender was given, once each, in order.
    let deadline = Instant::now() + common::TIMEOUT;
    while seen.last().copied() != Some(sent) && Instant::now() < deadline {
        let v = json(&mut reader);
        if v["type"] == "message" {
            seen.push(v["id"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (1..=sent).collect::<Vec<u64>>(), "{durability}");
    drop(sender);
}

#[test]
fn ids_are_not_reused_after_retention_empties_a_room_and_a_restart() {
    let dir = temp_dir();
    let dir_s = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", dir_s.as_str(), "--history-max-age", "1s"];
    {
        let mut server = Server::start(&args);
        let mut a = server.connect("a", "r");
        send_all(&mut a, 0, 3);
        a.until("a:m2");
        // Past the age limit, the background pruning empties the room's history.
        std::thread::sleep(Duration::from_millis(2500));
        a.send("/history\n");
        assert_eq!(a.until("*** end of history"), ["*** history: 0 messages"]);
        server.signal("-TERM");
        assert!(a.closed());
        wait_exit(&mut server);
    }
    let server = Server::start(&args);
    let (mut j, _) = connect_json(&server, "j", "r", "");
    j.send("next\n");
    let v = json(&mut j);
    assert_eq!(
        (v["text"].as_str(), v["id"].as_u64()),
        (Some("next"), Some(4))
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ids_and_history_survive_a_restart() {
    let dir = temp_dir();
    let dir_s = dir.to_str().unwrap().to_owned();
    {
        let server = Server::start(&["--data-dir", &dir_s, "--max-line-rate", "0"]);
        let mut a = server.connect("a", "r");
        send_all(&mut a, 0, 10);
        a.until("a:m9");
        let mut server = server;
        server.signal("-TERM");
        assert!(a.closed());
        wait_exit(&mut server);
    }
    let server = Server::start(&["--data-dir", &dir_s]);
    let (mut j, before) = connect_json(&server, "j", "r", r#","history":3"#);
    let texts: Vec<&str> = before[1..4]
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m7", "m8", "m9"]);
    j.send("after restart\n");
    let v = json(&mut j);
    assert_eq!(
        (v["text"].as_str(), v["id"].as_u64()),
        (Some("after restart"), Some(11))
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_exit(server: &mut Server) -> std::process::ExitStatus {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn retention_keeps_at_most_history_max() {
    for mode in ["memory", "sqlite"] {
        let server = Server::start(&[
            "--history",
            mode,
            "--history-max",
            "5",
            "--max-line-rate",
            "0",
        ]);
        let mut a = server.connect("a", "r");
        send_all(&mut a, 0, 12);
        a.until("a:m11");
        // SQLite prunes in the background, at most a second later.
        std::thread::sleep(Duration::from_millis(1500));
        a.send("m12\n");
        a.until("a:m12");
        std::thread::sleep(Duration::from_millis(1500));
        a.send("/history 100\n");
        let lines = a.until("*** end of history");
        assert_eq!(lines[0], "*** history: 5 messages", "{mode}: {lines:?}");
        assert_eq!(
            lines[1..],
            ["a:m8", "a:m9", "a:m10", "a:m11", "a:m12"],
            "{mode}"
        );
    }
}

#[test]
fn a_corrupt_database_stops_the_start_with_a_clear_error() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("history.db"), vec![7u8; 16384]).unwrap();
    start_fails_with(&dir, "history.db");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the server on `data_dir` and expects it to stop at once, saying `reason`.
fn start_fails_with(data_dir: &std::path::Path, reason: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["-a", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(reason) && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Messages as (id, text).
type Messages = Vec<(u64, String)>;

/// Reads every stored message of `room` after `after` by resuming until a resume brings
/// nothing more, as (id, text).
fn all_stored(server: &Server, room: &str, mut after: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for page in 0.. {
        let (mut c, before) = connect_json(
            server,
            &format!("pager{page}"),
            room,
            &format!(r#","since":{after}"#),
        );
        let msgs: Vec<(u64, String)> = before
            .iter()
            .filter(|v| v["type"] == "message")
            .map(|v| {
                (
                    v["id"].as_u64().unwrap(),
                    v["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        c.send("/quit\n");
        let Some(last) = msgs.last() else { break };
        after = last.0;
        out.extend(msgs);
    }
    out
}

/// Floods a room, kills the server with SIGKILL, restarts it on the same data directory, and
/// checks what the history kept. Returns (what the reader received, what is stored).
fn crash(durability: &str, settle_before_kill: Duration) -> (Messages, Messages, Server) {
    let dir = temp_dir();
    let dir_s = dir.to_str().unwrap().to_owned();
    let args = [
        "--data-dir",
        &dir_s,
        "--max-line-rate",
        "0",
        "--durability",
        durability,
    ];
    let mut server = Server::start(&args);
    let sender = server.connect("sender", "r");
    let (mut reader, _) = connect_json(&server, "reader", "r", "");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let mut s = sender.stream.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(format!("c{i}\n").as_bytes()).is_err() {
                    break;
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut received = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        if let Some(l) = reader.line_within(Duration::from_millis(50)) {
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["type"] == "message" {
                received.push((
                    v["id"].as_u64().unwrap(),
                    v["text"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    if !settle_before_kill.is_zero() {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(settle_before_kill);
    }
    server.signal("-KILL");
    let _ = server.child.wait();
    // Whatever was already on its way to the reader counts as seen.
    while let Some(l) = reader.line_within(Duration::from_millis(200)) {
        if let Ok(v) = serde_json::from_str::<Value>(&l) {
            if v["type"] == "message" {
                received.push((
                    v["id"].as_u64().unwrap(),
                    v["text"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.join();
    drop(server);
    let restarted = Server::start(&args);
    let stored = all_stored(&restarted, "r", 0);
    (received, stored, restarted)
}

fn check_crash(received: &[(u64, String)], stored: &[(u64, String)], server: &Server) {
    assert!(
        received.len() > 50,
        "too little traffic to mean anything: {}",
        received.len()
    );
    // Stored: in order, no id twice.
    assert!(
        stored.windows(2).all(|w| w[0].0 < w[1].0),
        "stored ids out of order"
    );
    // Every message a client saw is in the history, with the id it was seen with.
    let stored_set: std::collections::HashSet<&(u64, String)> = stored.iter().collect();
    let missing: Vec<&(u64, String)> = received
        .iter()
        .filter(|m| !stored_set.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "{} received messages not stored, first {:?}",
        missing.len(),
        missing.first()
    );
    // Ids continue after a restart, never reusing one.
    let highest = received
        .iter()
        .chain(stored.iter())
        .map(|m| m.0)
        .max()
        .unwrap();
    next_id_is_above(server, "after", "r", highest);
}

#[test]
fn sync_durability_keeps_everything_any_client_saw_through_a_kill_9() {
    let (received, stored, server) = crash("sync", Duration::ZERO);
    check_crash(&received, &stored, &server);
}

#[test]
fn batch_durability_loses_at_most_the_window_through_a_kill_9() {
    // With batch, what was sent more than a window (50 ms) before the crash is on disk.
    let (received, stored, server) = crash("batch", Duration::from_millis(300));
    check_crash(&received, &stored, &server);
}

/// Many rooms flooded at once, each by its own sender, with a replay asked in the middle: the
/// store gathers each batch by room (one buffer per room, cut where a query was queued), and a
/// kill -9 after the senders stopped for longer than a window loses nothing any reader saw, in
/// any room, and no id comes back.
#[test]
fn batch_durability_keeps_every_rooms_seen_messages_through_a_kill_9() {
    use std::io::Write;
    const ROOMS: usize = 8;
    let dir = temp_dir();
    let dir_s = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", &dir_s, "--max-line-rate", "0"];
    let mut server = Server::start(&args);
    let room = |r: usize| format!("flood{r}");
    let senders: Vec<Client> = (0..ROOMS)
        .map(|r| server.connect(&format!("sender{r}"), &room(r)))
        .collect();
    let mut readers: Vec<Client> = (0..ROOMS)
        .map(|r| connect_json(&server, &format!("reader{r}"), &room(r), "").0)
        .collect();
    let mut received: Vec<Messages> = vec![Vec::new(); ROOMS];
    let read_some = |readers: &mut Vec<Client>, received: &mut Vec<Messages>, wait| {
        for (r, reader) in readers.iter_mut().enumerate() {
            // A few lines from each in turn, so no reader falls behind while another is read.
            for _ in 0..64 {
                let Some(l) = reader.line_within(wait) else {
                    break;
                };
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    continue;
                };
                if v["type"] == "message" {
                    received[r].push((
                        v["id"].as_u64().unwrap(),
                        v["text"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let mut streams: Vec<std::net::TcpStream> = senders
            .iter()
            .map(|c| c.stream.try_clone().unwrap())
            .collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            // Far under the default retention (10,000 a room): everything sent stays stored.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 400 {
                for (r, s) in streams.iter_mut().enumerate() {
                    if s.write_all(format!("r{r}-{i}\n").as_bytes()).is_err() {
                        return;
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let start = Instant::now();
    let mut asked = false;
    while start.elapsed() < Duration::from_millis(600) {
        if !asked && start.elapsed() > Duration::from_millis(300) {
            // A replay in the middle of the flood: a query between a room's appends.
            let (c, _) = connect_json(&server, "joiner", &room(0), r#","history":50"#);
            drop(c);
            asked = true;
        }
        read_some(&mut readers, &mut received, Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.join();
    // The senders stop; what they sent is delivered and then committed within a window.
    std::thread::sleep(Duration::from_millis(300));
    read_some(&mut readers, &mut received, Duration::from_millis(50));
    server.signal("-KILL");
    let _ = server.child.wait();
    read_some(&mut readers, &mut received, Duration::from_millis(50));
    drop(server);
    let restarted = Server::start(&args);
    for (r, seen) in received.iter().enumerate() {
        assert!(
            seen.len() > 20,
            "room {r}: too little traffic: {}",
            seen.len()
        );
        let stored = all_stored(&restarted, &room(r), 0);
        assert!(
            stored.windows(2).all(|w| w[0].0 < w[1].0),
            "room {r}: stored ids out of order"
        );
        let stored_set: std::collections::HashSet<&(u64, String)> = stored.iter().collect();
        let missing: Vec<&(u64, String)> =
            seen.iter().filter(|m| !stored_set.contains(m)).collect();
        assert!(
            missing.is_empty(),
            "room {r}: {} received messages not stored, first {:?}",
            missing.len(),
            missing.first()
        );
        let highest = seen.iter().chain(stored.iter()).map(|m| m.0).max().unwrap();
        next_id_is_above(&restarted, &format!("after{r}"), &room(r), highest);
    }
}

#[test]
fn retention_by_age() {
    for mode in ["memory", "sqlite"] {
        let server = Server::start(&["--history", mode, "--history-max-age", "2s"]);
        let mut a = server.connect("a", "r");
        a.send("old\n");
        a.expect("a:old");
        std::thread::sleep(Duration::from_millis(2500));
        a.send("new\n");
        a.expect("a:new");
        // SQLite prunes in the background, at most a second later.
        std::thread::sleep(Duration::from_millis(1500));
        a.send("newer\n");
        a.expect("a:newer");
        a.send("/history\n");
        let lines = a.until("*** end of history");
        assert_eq!(
            lines,
            ["*** history: 2 messages", "a:new", "a:newer"],
            "{mode}"
        );
    }
}

/// A tmpfs mounted on a fresh directory and unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "this test mounts a small tmpfs and needs root (as CI runs)"
        );
        SmallDisk(dir)
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_stops_history_not_chat() {
    let disk = SmallDisk::new("1m");
    let dir = disk.0.to_str().unwrap().to_owned();
    let server = Server::start(&["--data-dir", &dir, "--max-line-rate", "0"]);
    let mut a = server.connect("a", "r");
    let mut b = server.connect("b", "r");
    a.expect("*** b joined");
    // Fill the disk to the last byte: the store's next commit has nowhere to go.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(disk.0.join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
        while filler.write_all(&[0u8; 1]).is_ok() {}
    }
    // Chat goes on; the failure is logged once, not per message.
    for i in 0..20 {
        a.send(&format!("chatting {i}\n"));
        b.expect(&format!("a:chatting {i}"));
        a.until(&format!("a:chatting {i}"));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        server.wait_log("history store cannot write"),
        "no write failed"
    );
    std::thread::sleep(Duration::from_millis(200));
    let failures = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("history store cannot write"))
        .count();
    assert_eq!(failures, 1);
    a.send("/history\n");
    a.expect("*** error: history unavailable");
    // Room again: writes succeed again, and /history answers.
    disk.grow("64m");
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        a.send("after\n");
        a.until("a:after");
        if server.log_contains("history store writes again") {
            break;
        }
        assert!(Instant::now() < deadline, "history never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.send("/history 1\n");
    assert_eq!(
        a.until("*** end of history"),
        ["*** history: 1 message", "a:after"]
    );
    drop(server);
}

#[test]
fn an_unusable_data_dir_stops_the_start_with_a_clear_error() {
    // A data directory that cannot be created: its parent is a file.
    let file = temp_dir();
    std::fs::write(&file, b"not a directory").unwrap();
    start_fails_with(&file.join("data"), "cannot create data dir");
    let _ = std::fs::remove_file(&file);
}

/// A client that missed more than one page (1,000 messages) still gets every one of them.
#[test]
fn a_long_resume_comes_in_pages_with_nothing_missing() {
    let server = Server::start(&["--max-line-rate", "0"]);
    let mut a = server.connect("a", "r");
    let batch: String = (0..2500).map(|i| format!("p{i}\n")).collect();
    a.send(&batch);
    a.until("a:p2499");
    let (mut j, before) = connect_json(&server, "j", "r", r#","since":0"#);
    assert_eq!(before[0]["type"], "history");
    assert_eq!(before[0]["count"], 2500);
    let ids: Vec<u64> = before[1..before.len() - 1]
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=2500).collect::<Vec<u64>>());
    assert_eq!(before.last().unwrap()["type"], "end_of_history");
    a.send("live\n");
    let v = json(&mut j);
    assert_eq!(
        (v["text"].as_str(), v["id"].as_u64()),
        (Some("live"), Some(2501))
    );
    // Text clients get the same, with the count up front.
    let mut t = Client::raw(server.addr);
    t.send(r#"{"name":"t","room":"r","since":1200}"#);
    t.expect("*** history: 1301 messages");
    t.expect("a:p1200");
    let rest = t.until("*** end of history");
    assert_eq!(rest.len(), 1300);
    assert_eq!(rest.last().map(String::as_str), Some("a:live"));
    t.expect("*** t joined");
}

/// A client that asks for a long resume and never reads is dropped after the write timeout,
/// and leaves the room: its name is free again.
#[test]
fn a_resume_nobody_reads_does_not_leave_a_ghost() {
    let server = Server::start(&["--max-line-rate", "0", "--history-max", "100000"]);
    let mut a = server.connect("a", "r");
    let line = "g".repeat(200);
    for chunk in 0..60 {
        let batch: String = (0..1000).map(|i| format!("{chunk}-{i} {line}\n")).collect();
        a.send(&batch);
        a.until(&format!("a:{chunk}-999 {line}"));
    }
    // 60,000 messages of ~210 bytes: far more than the kernel buffers a reader that never reads.
    let mut ghost = Client::raw(server.addr);
    ghost.send(r#"{"name":"ghost","room":"r","since":0}"#);
    let start = Instant::now();
    // The server gives a replay nobody reads 10 s (its write timeout): wait longer than that.
    while a.line_within(Duration::from_secs(25)).as_deref() != Some("*** ghost left") {
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "ghost never left"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let mut again = Client::raw(server.addr);
    again.send(r#"{"name":"ghost","room":"r"}"#);
    again.expect("*** ghost joined");
    drop(ghost);
}

/// A version-2 `history` request with `before`: the ids it answered with, after checking the
/// answer's frame (`history` with its count, the messages, `end_of_history`, `ok`).
fn older(c: &mut Client, room: &str, limit: u64, before: u64, req: u64) -> Vec<u64> {
    c.send(&format!(
        r#"{{"type":"history","room":"{room}","limit":{limit},"before":{before},"req":{req}}}"#
    ));
    c.send("\n");
    let head = json(c);
    assert_eq!(
        (head["type"].as_str(), head["room"].as_str()),
        (Some("history"), Some(room))
    );
    let count = head["count"].as_u64().unwrap();
    let mut ids = Vec::new();
    for _ in 0..count {
        let m = json(c);
        assert_eq!(m["type"], "message", "{m}");
        ids.push(m["id"].as_u64().unwrap());
    }
    let end = json(c);
    assert_eq!(
        end,
        serde_json::json!({"type":"end_of_history","room":room})
    );
    let ok = json(c);
    assert_eq!(ok, serde_json::json!({"type":"ok","req":req}));
    ids
}

#[test]
fn older_history_pages_back_to_the_first_message_skipping_deleted_ones() {
    for mode in ["sqlite", "memory"] {
        let server = Server::start(&[
            "--history",
            mode,
            "--max-line-rate",
            "0",
            "--http",
            "127.0.0.1:0",
        ]);
        let mut a = server.connect("a", "r");
        send_all(&mut a, 0, 10);
        a.until("a:m9");
        a.send("/delete 5\n");
        a.expect("*** a deleted message 5");

        let mut v2 = Client::raw(server.addr);
        v2.send(r#"{"name":"v","version":2,"room":"r"}"#);
        assert_eq!(json(&mut v2)["type"], "welcome");
        assert_eq!(json(&mut v2)["type"], "join");

        // Paging back: each page is the last N below the first id the client has.
        assert_eq!(older(&mut v2, "r", 3, 11, 1), [8, 9, 10], "{mode}");
        assert_eq!(older(&mut v2, "r", 3, 8, 2), [4, 6, 7], "{mode}");
        assert_eq!(older(&mut v2, "r", 3, 4, 3), [1, 2, 3], "{mode}");
        // The start of history: count 0.
        assert_eq!(older(&mut v2, "r", 3, 1, 4), Vec::<u64>::new(), "{mode}");
        // Far beyond the last id: the last messages.
        assert_eq!(older(&mut v2, "r", 2, 1_000_000, 5), [9, 10], "{mode}");

        // Bad `before` values: an error with the req, and the connection stays.
        for (bad, req) in [("0", 6), ("-1", 7), ("\"9\"", 8), ("1.5", 9)] {
            v2.send(&format!(
                r#"{{"type":"history","room":"r","limit":3,"before":{bad},"req":{req}}}"#
            ));
            v2.send("\n");
            let err = json(&mut v2);
            assert_eq!(
                err,
                serde_json::json!({"type":"error","req":req,"reason":"\"before\" must be a whole number >= 1"}),
                "{bad}"
            );
        }
        assert_eq!(older(&mut v2, "r", 1, 2, 10), [1]);

        // The HTTP API pages back the same way.
        let http = server.http.unwrap();
        let (status, _, body) = common::ws::get(http, "/api/rooms/r/messages?before=8&limit=3");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let ids: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [4, 6, 7], "{mode}");
        assert_eq!(v["last_id"], 7);
        let (status, _, body) = common::ws::get(http, "/api/rooms/r/messages?before=1");
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"room":"r","messages":[],"last_id":0}"#)
        );
        let (status, _, body) = common::ws::get(http, "/api/rooms/r/messages?before=0");
        assert_eq!(status, 400);
        assert!(
            body.contains("before must be a whole number >= 1"),
            "{body}"
        );
        let (status, _, body) = common::ws::get(http, "/api/rooms/r/messages?before=x");
        assert_eq!(status, 400);
        assert!(body.contains("whole numbers"), "{body}");
    }
}
