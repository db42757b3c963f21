//! The chat itself over real sockets: MaChat compatibility byte for byte, rooms, commands and
//! the JSON format.

mod common;

use std::time::Duration;

use common::app::App;
use common::{Client, Endpoint};

/// Exactly what MaChat's Go example client sends: the handshake with no newline, then
/// `text\n` lines; every byte that comes back is checked.
#[test]
fn replays_the_go_client_byte_for_byte() {
    let server = App::start();
    let mut mina = Client::raw(server.addr);
    mina.send(r#"{"name":"Mina","room":"devroom"}"#);
    let mut bob = Client::raw(server.addr);
    // Bob's handshake waits until Mina's join is visible, so the order below is fixed.
    assert_eq!(mina.line(), "*** Mina joined");
    bob.send(r#"{"name":"Bob","room":"devroom"}"#);
    assert_eq!(mina.line(), "*** Bob joined");
    assert_eq!(bob.line(), "*** Bob joined");
    mina.send("hello\n");
    assert_eq!(mina.line(), "Mina:hello");
    // Read, as the Go client does: a socket closed with unread bytes is reset, and a reset can
    // overtake the lines still on their way to the server.
    assert_eq!(bob.line(), "Mina:hello");
    bob.send("hi Mina\n");
    bob.send("\n");
    bob.send("100% sure: yes\n");
    drop(bob);
    let mut all = Vec::new();
    while let Some(l) = mina.raw_line_within(Duration::from_secs(2)) {
        all.extend_from_slice(&l);
        all.push(b'\n');
        if l == b"*** Bob left" {
            break;
        }
    }
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "Bob:hi Mina\nBob:\nBob:100% sure: yes\n*** Bob left\n"
    );
}

#[test]
fn handshake_and_lines_in_one_read_lose_nothing() {
    let server = App::start();
    let mut c = Client::raw(server.addr);
    c.send("{\"name\":\"a\",\"room\":\"r\"}hello\nsecond\r\nthird");
    assert_eq!(c.line(), "*** a joined");
    assert_eq!(c.line(), "a:hello");
    assert_eq!(c.line(), "a:second");
    c.send("\n");
    assert_eq!(c.line(), "a:third");
}

/// `printf '{...}hello\n' | nc -N host 8989`: the client shuts its sending side down at once and
/// still reads; it gets everything up to its own line, then the close.
#[test]
fn a_client_that_stops_sending_still_gets_what_it_said() {
    let server = App::start();
    let mut c = Client::raw(server.addr);
    c.send("{\"name\":\"a\",\"room\":\"r\"}hello\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(c.rest()).unwrap(),
        "*** a joined\na:hello\n"
    );
}

#[test]
fn handshake_split_over_many_reads_with_whitespace_and_unknown_keys() {
    let server = App::start();
    let mut c = Client::raw(server.addr);
    let hs = b" \r\n{ \"room\" :\"r\", \"client\": \"go\", \"extra\": {\"x\": [1,2]},\n \"name\":\"a\" }";
    for chunk in hs.chunks(3) {
        c.send_bytes(chunk);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.line(), "*** a joined");
    c.send("x\n");
    assert_eq!(c.line(), "a:x");
}

#[test]
fn everyone_sees_the_same_order() {
    let server = App::with(|s| s.limits.line_rate = 0.0);
    let mut clients: Vec<Client> = (0..4)
        .map(|i| server.connect(&format!("u{i}"), "r"))
        .collect();
    // Drain the join notices so every client starts at the same point.
    for (i, c) in clients.iter_mut().enumerate() {
        for j in i + 1..4 {
            c.expect(&format!("*** u{j} joined"));
        }
    }
    for round in 0..50 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&format!("m{round}-{i}\n"));
        }
    }
    let mut seen: Vec<Vec<String>> = Vec::new();
    for c in clients.iter_mut() {
        seen.push((0..200).map(|_| c.line()).collect());
    }
    for s in &seen[1..] {
        assert_eq!(s, &seen[0]);
    }
    // Each sender's own lines keep their order.
    for i in 0..4 {
        let mine: Vec<&String> = seen[0]
            .iter()
            .filter(|l| l.starts_with(&format!("u{i}:")))
            .collect();
        let want: Vec<String> = (0..50).map(|r| format!("u{i}:m{r}-{i}")).collect();
        assert_eq!(mine.iter().map(|s| s.as_str()).collect::<Vec<_>>(), want);
    }
}

#[test]
fn rooms_are_separate_and_go_when_empty_and_names_come_back() {
    let server = App::start();
    let mut a = server.connect("a", "one");
    let mut b = server.connect("b", "two");
    a.send("in one\n");
    assert_eq!(a.line(), "a:in one");
    assert!(b.quiet_for(Duration::from_millis(200)));
    b.send("/rooms\n");
    assert_eq!(b.line(), "*** 2 rooms: one(1) two(1)");
    drop(a);
    // A client may leave and come back with the same name; the empty room is gone meanwhile.
    std::thread::sleep(Duration::from_millis(200));
    b.send("/rooms\n");
    assert_eq!(b.line(), "*** 1 room: two(1)");
    let mut a = server.connect("a", "one");
    a.send("/rooms\n");
    assert_eq!(a.line(), "*** 2 rooms: one(1) two(1)");
}

#[test]
fn commands() {
    let server = App::start();
    let mut a = server.connect("Ann", "r");
    let mut b = server.connect("Bob", "r");
    a.expect("*** Bob joined");

    a.send("/who\n");
    a.expect("*** 2 in r: Ann Bob");
    a.send("/me waves\n");
    a.expect("* Ann waves");
    b.expect("* Ann waves");
    a.send("//etc/passwd is a path\n");
    a.expect("Ann:/etc/passwd is a path");
    b.expect("Ann:/etc/passwd is a path");

    a.send("/msg Bob psst, a secret\n");
    a.expect("*** private to Bob: psst, a secret");
    b.expect("*** private from Ann: psst, a secret");
    a.send("/msg Nobody hi\n");
    a.expect("*** error: no one called Nobody in this room");
    a.send("/msg Bob\n");
    a.expect("*** error: usage: /msg NAME TEXT");

    a.send("/nick Anna\n");
    a.expect("*** Ann is now Anna");
    b.expect("*** Ann is now Anna");
    a.send("/nick Bob\n");
    a.expect("*** error: name Bob is already taken in this room");
    a.send("/nick bad:name\n");
    assert!(a.line().starts_with("*** error: usage: /nick NAME"));
    a.send("after\n");
    a.expect("Anna:after");
    b.expect("Anna:after");

    a.send("/bogus stuff\n");
    a.expect("*** error: unknown command /bogus (try /help)");
    a.send("/me\n");
    a.expect("*** error: usage: /me ACTION");
    a.send("/help\n");
    assert!(a
        .line()
        .starts_with("*** commands: /who, /rooms, /join ROOM"));

    a.send("/join other\n");
    a.expect("*** Anna joined");
    b.expect("*** Anna left");
    a.send("/join other\n");
    a.expect("*** error: you are already in other");
    a.send("/join bad/room\n");
    assert!(a.line().starts_with("*** error: usage: /join ROOM"));
    a.send("/who\n");
    a.expect("*** 1 in other: Anna");
    // Bob is taken in r: Anna may not come back as Bob, but Bob may join her.
    b.send("/join other\n");
    b.expect("*** Bob joined");
    a.expect("*** Bob joined");

    a.send("/quit\n");
    a.expect("*** bye");
    assert!(a.closed());
    b.expect("*** Anna left");
}

#[test]
fn join_with_a_taken_name_keeps_the_client_where_it_was() {
    let server = App::start();
    let mut a = server.connect("a", "one");
    let mut x = server.connect("x", "two");
    let _a2 = server.connect("a", "two");
    x.expect("*** a joined");
    a.send("/join two\n");
    a.expect("*** error: name a is already taken in two");
    a.send("still here\n");
    a.expect("a:still here");
}

#[test]
fn json_format_for_programs() {
    let server = App::start();
    let mut j = Client::raw(server.addr);
    j.send(r#"{"name":"prog","room":"r","format":"json"}"#);
    let join: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
    assert_eq!(join["type"], "join");
    assert_eq!(join["name"], "prog");
    assert_eq!(join["room"], "r");
    let mut t = server.connect("human", "r");
    let ev: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
    assert_eq!(ev["type"], "join");
    t.send("hi \"there\"\n");
    t.expect("human:hi \"there\"");
    let ev: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
    assert_eq!(ev["type"], "message");
    assert_eq!(ev["name"], "human");
    assert_eq!(ev["text"], "hi \"there\"");
    assert_eq!(ev["room"], "r");
    assert!(ev["id"].as_u64().is_some());
    let ts = ev["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    for (cmd, kind) in [
        ("/who", "who"),
        ("/rooms", "rooms"),
        ("/help", "help"),
        ("/bogus", "error"),
    ] {
        j.send(&format!("{cmd}\n"));
        let ev: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
        assert_eq!(ev["type"], kind, "{cmd}: {ev}");
    }
    j.send("/msg human hey\n");
    let ev: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["to"].as_str()),
        (Some("private"), Some("human"))
    );
    t.expect("*** private from prog: hey");
    t.send("/nick human2\n");
    let ev: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["new"].as_str()),
        (Some("nick"), Some("human2"))
    );
    drop(t);
    let ev: serde_json::Value = serde_json::from_str(&j.line()).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["name"].as_str()),
        (Some("leave"), Some("human2"))
    );
}

#[test]
fn names_cannot_forge_lines_and_text_cannot_drive_terminals() {
    let server = App::start();
    let mut a = server.connect("a", "r");
    a.send_bytes(b"\x1b[2J\x1b]0;pwned\x07clear\x1b[31m red\x00\x08 \xff end\ttab\n");
    assert_eq!(
        a.raw_line_within(common::TIMEOUT).unwrap(),
        "a:clear red \u{fffd} end\ttab".as_bytes()
    );
    // A forged notice is just text after the sender's name.
    a.send("*** b joined\n");
    a.expect("a:*** b joined");
}

/// Typed in `nc`, the handshake ends with Enter: that rest of its line is not a message, while
/// a blank line typed later is (as in MaChat).
#[test]
fn enter_after_the_handshake_is_not_an_empty_message() {
    let server = App::start();
    let mut c = Client::raw(server.addr);
    c.send("{\"name\": \"Mina\", \"room\": \"devroom\"}\r\n");
    c.expect("*** Mina joined");
    c.send("hello\n\n");
    c.expect("Mina:hello");
    c.expect("Mina:");
}

/// Rooms live on their home thread; members who `/join` elsewhere, private messages and
/// shutdown must work across threads too.
#[test]
fn many_threads_many_rooms() {
    let server = App::with(|s| s.net.threads = 4);
    let mut clients: Vec<Client> = (0..8)
        .map(|i| server.connect(&format!("u{i}"), &format!("room{i}")))
        .collect();
    // Everyone moves into one room, whatever thread its first room lived on.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send("/join hub\n");
        c.expect(&format!("*** u{i} joined"));
    }
    clients[0].send("hello all\n");
    for (i, c) in clients.iter_mut().enumerate() {
        c.until("u0:hello all");
        if i > 0 {
            c.send(&format!("/msg u0 from u{i}\n"));
        }
    }
    let mut got: Vec<String> = (1..8)
        .map(|_| loop {
            let l = clients[0].line();
            if l.starts_with("*** private from") {
                break l;
            }
        })
        .collect();
    got.sort();
    let want: Vec<String> = (1..8)
        .map(|i| format!("*** private from u{i}: from u{i}"))
        .collect();
    assert_eq!(got, want);
    clients[7].send("/who\n");
    clients[7].until("*** 8 in hub: u0 u1 u2 u3 u4 u5 u6 u7");
}

/// Issue 11: U+2028 and U+2029 passed through, and a client that splits on Unicode line breaks
/// showed `Alice:forged` as a line of its own. Over TCP they are removed; a WebSocket message
/// (which may span lines) has them as line breaks, each line with the sender's name.
#[test]
fn unicode_line_separators_cannot_forge_a_line() {
    let server = App::with(|s| s.web.http = Some("127.0.0.1:0".into()));
    let mut watcher = server.connect("Watcher", "r");
    let mut mallory = server.connect("Mallory", "r");
    watcher.expect("*** Mallory joined");
    let splits = |line: &str| -> Vec<String> {
        line.split(['\u{2028}', '\u{2029}', '\u{85}', '\u{b}', '\u{c}'])
            .map(str::to_owned)
            .collect()
    };
    for sep in ["\u{2028}", "\u{2029}", "\u{85}"] {
        mallory.send(&format!("hi{sep}Alice:forged\n"));
        let line = watcher.line();
        assert_eq!(splits(&line).len(), 1, "{line:?}");
        assert!(line.starts_with("Mallory:"), "{line:?}");
    }
    let mut web = common::ws::ws_join(&server, "Web", "r");
    watcher.expect("*** Web joined");
    common::ws::send(&mut web, "hi\u{2028}Alice:forged\u{2029}third");
    for want in ["Web:hi", "Web:Alice:forged", "Web:third"] {
        let line = watcher.line();
        assert_eq!(line, want);
    }
}

/// Issue 11, item 6: case variants, NFD forms, Cyrillic and fullwidth look-alikes sat beside
/// the real name. Each is refused with the name it is confused with; another room is fine.
#[test]
fn lookalike_names_are_refused_beside_the_real_one() {
    let server = App::start();
    let mut alice = server.connect("Alice", "r");
    let mut jose = server.connect("Jos\u{e9}", "r");
    alice.expect("*** Jos\u{e9} joined");
    for (name, like) in [
        ("alice", "Alice"),
        ("ALICE", "Alice"),
        ("\u{410}lice", "Alice"),
        ("\u{ff21}lice", "Alice"),
        ("Jose\u{301}", "Jos\u{e9}"),
    ] {
        common::expect_refused(
            &server,
            format!("{{\"name\":\"{name}\",\"room\":\"r\"}}").as_bytes(),
            &format!("name {name} is too much like {like}, already in room r"),
        );
    }
    // In a room of its own a look-alike is just a name.
    let _elsewhere = server.connect("\u{410}lice", "other");
    // /nick and /join say the same.
    jose.send("/nick \u{410}LICE\n");
    jose.expect("*** error: name \u{410}LICE is too much like Alice, already in this room");
    let mut bob = server.connect("Bob", "other");
    bob.send("/join r\n");
    bob.expect("*** Bob joined");
    bob.send("/nick JOSE\u{301}\n");
    bob.expect("*** error: name JOSE\u{301} is too much like Jos\u{e9}, already in this room");
    // One's own name in another case is a rename, not a clash.
    alice.until("*** Bob joined");
    alice.send("/nick ALICE\n");
    alice.expect("*** Alice is now ALICE");
    let mut c = Client::raw(server.addr);
    c.send("{\"name\":\"alice\",\"room\":\"other\"}");
    c.expect("*** error: name alice is too much like \u{410}lice, already in room other");
}
