//! Marks and direct conversations (docs/PROTOCOL.md, section 19): a person's rooms, read
//! positions and notification levels, pushed to every session of the person; `@` rooms
//! between two registered names. The cluster variants are in tests/cluster.rs.

mod common;

use std::time::Duration;

use common::ws::{self, Ws};
use common::{people, Client, Endpoint, Server};
use serde_json::{json, Value};

/// A TCP version-2 connection logged in as `name`; returns it past its welcome, with the
/// `marks` line that follows it.
fn person(server: &impl Endpoint, name: &str, password: &str) -> (Client, Value) {
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        r#"{{"name":"{name}","version":2,"password":"{password}"}}"#
    ));
    let welcome = line(&mut c);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let marks = line(&mut c);
    assert_eq!(marks["type"], "marks", "{marks}");
    (c, marks)
}

/// A version-2 guest past its welcome.
fn guest(server: &impl Endpoint, name: &str) -> Client {
    let mut c = Client::raw(server.addr());
    c.send(&format!(r#"{{"name":"{name}","version":2}}"#));
    let welcome = line(&mut c);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    c
}

fn line(c: &mut Client) -> Value {
    let l = c.line();
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
}

fn request(c: &mut Client, v: Value) {
    c.send(&format!("{v}\n"));
}

/// Reads lines until one matches; returns it.
fn until(c: &mut Client, want: impl Fn(&Value) -> bool) -> Value {
    let mut seen = Vec::new();
    for _ in 0..2000 {
        let v = line(c);
        if want(&v) {
            return v;
        }
        seen.push(v);
    }
    panic!("not found in {seen:?}");
}

fn is_ok(req: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| v["type"] == "ok" && v["req"] == req
}

fn is_mark(room: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| v["type"] == "mark" && v["room"] == room
}

/// Joins `room` and waits for the join's `ok`; returns the lines before it (a mark pushed
/// for the join may come before or after the room's `ok`: they are in different streams).
fn join(c: &mut Client, room: &str) -> Vec<Value> {
    let req = format!("j-{room}");
    request(c, json!({"type": "join", "room": room, "req": req}));
    let mut seen = Vec::new();
    loop {
        let v = line(c);
        if is_ok(&req)(&v) {
            return seen;
        }
        seen.push(v);
    }
}

/// Joins `room` as a person and returns the mark the join pushed.
fn join_marked(c: &mut Client, room: &str) -> Value {
    let seen = join(c, room);
    match seen.into_iter().find(|v| is_mark(room)(v)) {
        Some(mark) => mark,
        None => until(c, is_mark(room)),
    }
}

/// Says `text` in `room` and returns the message's id.
fn say(c: &mut Client, room: &str, text: &str) -> u64 {
    request(
        c,
        json!({"type": "say", "room": room, "text": text, "req": "s"}),
    );
    let ok = until(c, is_ok("s"));
    ok["id"].as_u64().expect("an id")
}

fn ws_person(server: &impl Endpoint, name: &str, password: &str) -> (Ws, Value) {
    let mut ws = ws::ws_open(server);
    ws::send(
        &mut ws,
        &format!(r#"{{"name":"{name}","version":2,"password":"{password}"}}"#),
    );
    let welcome = ws::frame(&mut ws);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let marks = ws::frame(&mut ws);
    assert_eq!(marks["type"], "marks", "{marks}");
    (ws, marks)
}

/// Reads frames until one matches; returns it.
fn ws_until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let v = ws::frame(ws);
        if want(&v) {
            return v;
        }
    }
}

fn dir_arg(dir: &std::path::Path) -> String {
    dir.to_string_lossy().into_owned()
}

#[test]
fn marks_follow_joins_reads_and_leaves_on_every_device() {
    let dir = people();
    let d = dir_arg(&dir);
    let server = Server::start(&["--data-dir", &d, "--http", "127.0.0.1:0"]);
    let (mut app, marks) = person(&server, "Mina", "minapw");
    assert_eq!(marks, json!({"type": "marks", "marks": []}));
    let (mut tab, _) = ws_person(&server, "Mina", "minapw");

    // Someone else's messages first: a new mark is read up to the room's last message.
    let mut bob = server.connect("Bob", "dev");
    bob.send("one\n");
    bob.expect("Bob:one");
    let want = json!({"type": "mark", "room": "dev", "read": 1, "last": 1, "notify": "all"});
    assert_eq!(join_marked(&mut app, "dev"), want);
    assert_eq!(ws_until(&mut tab, is_mark("dev")), want);

    // Read forward only, and never past the room's last message.
    bob.expect("*** Mina joined");
    bob.send("two\n");
    bob.expect("Bob:two");
    bob.send("three\n");
    bob.expect("Bob:three");
    request(
        &mut app,
        json!({"type": "read", "room": "dev", "id": 2, "req": "r1"}),
    );
    until(&mut app, is_ok("r1"));
    let want = json!({"type": "mark", "room": "dev", "read": 2, "last": 3, "notify": "all"});
    assert_eq!(ws_until(&mut tab, is_mark("dev")), want);
    request(
        &mut app,
        json!({"type": "read", "room": "dev", "id": 1, "req": "r2"}),
    );
    until(&mut app, is_ok("r2"));
    request(
        &mut app,
        json!({"type": "read", "room": "dev", "id": u64::MAX, "req": "r3"}),
    );
    until(&mut app, is_ok("r3"));
    let want = json!({"type": "mark", "room": "dev", "read": 3, "last": 3, "notify": "all"});
    // The backward read pushed nothing: the next mark is the capped one.
    assert_eq!(ws_until(&mut tab, is_mark("dev")), want);

    // The level.
    ws::send(
        &mut tab,
        r#"{"type":"notify","room":"dev","level":"mentions","req":"n"}"#,
    );
    ws_until(&mut tab, |v| v["type"] == "ok" && v["req"] == "n");
    // The app had the reads pushed too, in order, then the level.
    let mark = until(&mut app, |v| is_mark("dev")(v) && v["read"] == 3);
    assert_eq!(mark["notify"], "all");
    let mark = until(&mut app, is_mark("dev"));
    assert_eq!(
        (&mark["read"], &mark["notify"]),
        (&json!(3), &json!("mentions"))
    );
    request(
        &mut app,
        json!({"type": "notify", "room": "dev", "level": "loud", "req": "bad"}),
    );
    let err = until(&mut app, |v| v["req"] == "bad");
    assert_eq!(err["reason"], "\"level\" must be all, mentions or none");
    request(
        &mut app,
        json!({"type": "read", "room": "elsewhere", "id": 1, "req": "nm"}),
    );
    let err = until(&mut app, |v| v["req"] == "nm");
    assert_eq!(
        err["reason"],
        "you keep no read position for elsewhere: join it first"
    );

    // Asked again: the same, with the req.
    request(&mut app, json!({"type": "marks", "req": 5}));
    let again = until(&mut app, |v| v["type"] == "marks");
    assert_eq!(
        again,
        json!({"type": "marks", "req": 5, "marks": [
            {"room": "dev", "read": 3, "last": 3, "notify": "mentions"}
        ]})
    );

    // A closed connection changes nothing; an explicit leave removes the mark everywhere.
    drop(tab);
    let (mut tab, marks) = ws_person(&server, "Mina", "minapw");
    assert_eq!(marks["marks"][0]["room"], "dev");
    request(
        &mut app,
        json!({"type": "leave", "room": "dev", "req": "l"}),
    );
    until(&mut app, |v| v["type"] == "unmark" && v["room"] == "dev");
    let unmark = ws_until(&mut tab, |v| v["type"] == "unmark");
    assert_eq!(unmark, json!({"type": "unmark", "room": "dev"}));
}

#[test]
fn guests_keep_no_marks() {
    let server = Server::start(&[]);
    let mut g = guest(&server, "Zed");
    join(&mut g, "dev");
    // No mark came: the next line is the answer to the next request.
    for (req, want) in [
        (
            json!({"type": "marks", "req": 1}),
            "read positions are kept for registered names: log in",
        ),
        (
            json!({"type": "read", "room": "dev", "id": 1, "req": 1}),
            "read positions are kept for registered names: log in",
        ),
        (
            json!({"type": "notify", "room": "dev", "level": "none", "req": 1}),
            "read positions are kept for registered names: log in",
        ),
        (
            json!({"type": "dm", "to": "Mina", "req": 1}),
            "direct conversations are for registered names: log in",
        ),
    ] {
        request(&mut g, req);
        let v = line(&mut g);
        assert_eq!(v, json!({"type": "error", "req": 1, "reason": want}));
    }
}

#[test]
fn marks_survive_a_restart_and_the_handshake_room_is_kept() {
    let dir = people();
    let d = dir_arg(&dir);
    let server = Server::start(&["--data-dir", &d]);
    let mut c = Client::raw(server.addr());
    c.send(r#"{"name":"Mina","version":2,"password":"minapw","room":"lobby"}"#);
    assert_eq!(line(&mut c)["type"], "welcome");
    let marks = line(&mut c);
    assert_eq!(marks["marks"][0]["room"], "lobby", "{marks}");
    let id = say(&mut c, "lobby", "hello");
    request(
        &mut c,
        json!({"type": "read", "room": "lobby", "id": id, "req": "r"}),
    );
    until(&mut c, is_ok("r"));
    request(
        &mut c,
        json!({"type": "notify", "room": "lobby", "level": "none", "req": "n"}),
    );
    until(&mut c, is_ok("n"));
    drop(c);
    server.signal("-TERM");
    assert!(server.wait_log("stopped"));
    drop(server);

    let server = Server::start(&["--data-dir", &d]);
    let (_c, marks) = person(&server, "Mina", "minapw");
    assert_eq!(
        marks,
        json!({"type": "marks", "marks": [
            {"room": "lobby", "read": id, "last": id, "notify": "none"}
        ]})
    );
    // A version-1 handshake keeps nothing.
    let _v1 = common::log_in(Client::raw(server.addr()), "Ann", "annpw", "other");
    let (_a, marks) = person(&server, "Ann", "annpw");
    assert_eq!(marks["marks"], json!([]));
}

#[test]
fn a_person_keeps_300_marks_and_nobody_else_fills_them() {
    let dir = people();
    let d = dir_arg(&dir);
    let server = Server::start(&[
        "--data-dir",
        &d,
        "--history",
        "memory",
        "--max-rooms-per-session",
        "400",
        "--max-line-rate",
        "10000",
        "--line-burst",
        "10000",
    ]);
    let (mut ann, _) = person(&server, "Ann", "annpw");
    for i in 0..300 {
        join(&mut ann, &format!("r{i}"));
    }
    request(
        &mut ann,
        json!({"type": "join", "room": "one-more", "req": "x"}),
    );
    let notice = until(&mut ann, |v| v["type"] == "notice");
    assert_eq!(
        notice["text"],
        "you keep 300 rooms and conversations at most: leave some to keep more"
    );
    until(&mut ann, is_ok("x"));
    request(&mut ann, json!({"type": "marks", "req": "m"}));
    let marks = until(&mut ann, |v| v["type"] == "marks");
    let list = marks["marks"].as_array().unwrap();
    assert_eq!(list.len(), 300);
    assert_eq!(list[0]["room"], "r299", "newest first");

    // Mina opens a conversation with the full Ann: Mina keeps it, Ann's marks stay as they were.
    let (mut mina, _) = person(&server, "Mina", "minapw");
    request(&mut mina, json!({"type": "dm", "to": "Ann", "req": "d"}));
    let ok = until(&mut mina, is_ok("d"));
    let room = ok["room"].as_str().unwrap().to_owned();
    until(&mut mina, is_mark(&room));
    request(&mut ann, json!({"type": "marks", "req": "m2"}));
    let marks = until(&mut ann, |v| v["type"] == "marks");
    let list = marks["marks"].as_array().unwrap();
    assert_eq!(list.len(), 300);
    assert!(list.iter().all(|m| m["room"] != room.as_str()));
}

#[test]
fn a_conversation_is_its_two_parties_alone() {
    let dir = people();
    let d = dir_arg(&dir);
    let server = Server::start(&["--data-dir", &d, "--http", "127.0.0.1:0"]);
    let (mut mina, _) = person(&server, "Mina", "minapw");
    let (mut ann, _) = person(&server, "Ann", "annpw");

    // Errors first.
    for (to, want) in [
        (
            "Zed",
            "Zed is not registered: direct conversations are between registered names",
        ),
        ("Mina", "you cannot open a conversation with yourself"),
        ("MINA", "you cannot open a conversation with yourself"),
    ] {
        request(&mut mina, json!({"type": "dm", "to": to, "req": "e"}));
        let v = until(&mut mina, |v| v["req"] == "e");
        assert_eq!(v["reason"], want, "{to}");
    }

    // A look-alike of a registered name is that name.
    request(&mut mina, json!({"type": "dm", "to": "ann", "req": "d"}));
    let ok = until(&mut mina, is_ok("d"));
    let room = ok["room"].as_str().unwrap().to_owned();
    assert!(room.starts_with('@') && room.len() == 25, "{room}");
    let mark = until(&mut mina, is_mark(&room));
    assert_eq!(mark["with"], "Ann");
    assert_eq!(mark["notify"], "all");
    let mark = until(&mut ann, is_mark(&room));
    assert_eq!(mark["with"], "Mina");
    // Without req, the ok still names the room.
    request(&mut ann, json!({"type": "dm", "to": "Mina"}));
    let ok = until(&mut ann, |v| v["type"] == "ok");
    assert_eq!(ok, json!({"type": "ok", "room": room}));

    join(&mut mina, &room);
    join(&mut ann, &room);
    let id = say(&mut mina, &room, "just us");
    let msg = until(&mut ann, |v| v["type"] == "message");
    assert_eq!(
        (&msg["text"], msg["id"].as_u64()),
        (&json!("just us"), Some(id))
    );

    // Nobody else: a guest, another person, a version-1 handshake even of a party, `/join`.
    let refused = "rooms starting with @ are direct conversations: open one with {\"type\":\"dm\",\"to\":\"NAME\"}";
    let mut g = guest(&server, "Zed");
    request(&mut g, json!({"type": "join", "room": room, "req": 1}));
    assert_eq!(line(&mut g)["reason"], refused);
    let (mut root, _) = person(&server, "Root", "rootpw");
    request(&mut root, json!({"type": "join", "room": room, "req": 1}));
    assert_eq!(until(&mut root, |v| v["req"] == 1)["reason"], refused);
    let mut v1 = Client::raw(server.addr());
    v1.send(&format!(
        r#"{{"name":"Mina","room":"{room}","password":"minapw"}}"#
    ));
    assert_eq!(v1.line(), format!("*** error: {refused}"));
    let mut v1 = common::log_in(Client::raw(server.addr()), "Ann", "annpw", "lobby");
    v1.send(&format!("/join {room}\n"));
    v1.expect(&format!("*** error: {refused}"));
    // A version-2 handshake naming it: refused to a guest, admitted to a party.
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        r#"{{"name":"Guest","version":2,"room":"{room}"}}"#
    ));
    assert_eq!(line(&mut c)["reason"], refused);
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        r#"{{"name":"Ann","version":2,"password":"annpw","room":"{room}","history":5}}"#
    ));
    assert_eq!(line(&mut c)["type"], "welcome");
    assert_eq!(line(&mut c)["marks"][0]["room"], room.as_str());
    let msg = until(&mut c, |v| v["type"] == "message");
    assert_eq!(msg["text"], "just us");

    // Hidden from every listing, and the HTTP history does not know it.
    request(&mut mina, json!({"type": "rooms", "req": "r"}));
    let rooms = until(&mut mina, |v| v["type"] == "rooms");
    assert!(!rooms.to_string().contains('@'), "{rooms}");
    v1.send("/rooms\n");
    let listed = v1.until_prefix("*** 1 room");
    assert!(!listed.contains('@'), "{listed}");
    let http = server.http().unwrap();
    let (status, body) = ws::get_json(http, "/api/rooms");
    assert_eq!(status, 200);
    assert!(!body.to_string().contains('@'), "{body}");
    let (status, _, _) = ws::get(http, &format!("/api/rooms/{room}/messages"));
    assert_eq!(status, 404);
}

#[test]
fn a_private_message_between_persons_is_kept_in_their_conversation() {
    let dir = people();
    let d = dir_arg(&dir);
    let server = Server::start(&["--data-dir", &d]);
    let mut mina = common::log_in(Client::raw(server.addr()), "Mina", "minapw", "lobby");
    let mut ann = common::log_in(Client::raw(server.addr()), "Ann", "annpw", "lobby");
    mina.expect("*** Ann joined");
    mina.send("/msg Ann are you there?\n");
    ann.until_prefix("*** private from Mina");

    // Ann's phone (version 2) has the conversation, with the message in its history.
    let (mut phone, marks) = person(&server, "Ann", "annpw");
    let list = marks["marks"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{marks}");
    assert_eq!(list[0]["with"], "Mina");
    let room = list[0]["room"].as_str().unwrap().to_owned();
    assert_eq!(
        list[0]["last"], list[0]["read"],
        "read up to it when it was made"
    );
    request(
        &mut phone,
        json!({"type": "join", "room": room, "history": 10, "req": "j"}),
    );
    let msg = until(&mut phone, |v| v["type"] == "message");
    assert_eq!(
        (&msg["name"], &msg["text"]),
        (&json!("Mina"), &json!("are you there?"))
    );
    until(&mut phone, is_ok("j"));

    // A version-2 `msg` lands there too, live for its members.
    let (mut desk, _) = person(&server, "Mina", "minapw");
    join(&mut desk, "lobby");
    request(
        &mut desk,
        json!({"type": "msg", "room": "lobby", "to": "Ann", "text": "yes?", "req": "p"}),
    );
    until(&mut desk, is_ok("p"));
    let msg = until(&mut phone, |v| v["type"] == "message");
    assert_eq!(
        (&msg["name"], &msg["text"]),
        (&json!("Mina"), &json!("yes?"))
    );
    // A guest's message keeps nothing.
    let _ = phone.quiet_for(Duration::from_millis(100));
}
