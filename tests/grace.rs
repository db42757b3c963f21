//! The leave grace (`--leave-grace`): a member whose connection closes or drops stays for the
//! grace, and one that comes back within it is seen by nobody to leave or join, over TCP text,
//! TCP JSON and WebSocket; one that does not is told `left` when the grace ends; a `/quit`, a
//! `leave` or a `/join` elsewhere is told at once; nobody else (another address, a look-alike)
//! takes the name meanwhile; `--leave-grace 0` is what the server did before it.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::ws::{self, json_line, Got};
use common::{temp_dir, user_add, Client, Endpoint, Server, TIMEOUT};
use serde_json::Value;

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const AWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Sends `handshake` from `source` and returns the client with its first line. While the
/// server has not yet seen the member's old connection close, the name is still in use: it
/// tries again (a refused try shows nobody anything).
fn back(server: &Server, source: IpAddr, handshake: &str) -> (Client, String) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::raw_from(server.addr, source);
        c.send(handshake);
        let first = c.line();
        if first.contains("is already taken") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        return (c, first);
    }
}

/// Waits until the server has kept `n` members for their grace in all.
fn wait_kept(server: &Server, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    let kept = || {
        let log = server.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("kept for the leave grace"))
            .count()
    };
    while kept() < n {
        assert!(Instant::now() < deadline, "{n} never kept");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bob's next line is his own `ping`: nothing came between (no `left`, no `joined`).
fn nothing_shown(bob: &mut Client, ping: &str) {
    bob.send(&format!("{ping}\n"));
    bob.expect(&format!("Bob:{ping}"));
}

#[test]
fn a_member_back_within_the_grace_is_seen_by_nobody_to_leave_or_join() {
    let server = Server::start(&["--leave-grace", "30", "--http", "127.0.0.1:0"]);
    let mut bob = server.connect("Bob", "r");
    let mut jay = ws::json_client(&server, "Jay", "r");
    bob.expect("*** Jay joined");

    // TCP text: the returning client gets exactly what a joiner always got.
    let mina = server.connect("Mina", "r");
    bob.expect("*** Mina joined");
    assert_eq!(json_line(&mut jay)["type"], "join");
    drop(mina);
    assert!(server.wait_log("kept for the leave grace"));
    // Still there for /who, and the name is still held.
    bob.send("/who\n");
    bob.expect("*** 3 in r: Bob Jay Mina");
    let (mut mina, first) = back(&server, HOME, r#"{"name":"Mina","room":"r"}"#);
    assert_eq!(first, "*** Mina joined");
    nothing_shown(&mut bob, "one");
    mina.expect("Bob:one");
    let v = json_line(&mut jay);
    assert_eq!(
        (&v["type"], &v["text"]),
        (&"message".into(), &"one".into()),
        "{v}"
    );

    // TCP JSON, with a replay: the replay, then its own join line, as ever.
    let mut json = Client::raw(server.addr);
    json.send(r#"{"name":"Lin","room":"r","format":"json"}"#);
    json.until_prefix(r#"{"type":"join","room":"r","name":"Lin""#);
    bob.expect("*** Lin joined");
    assert_eq!(json_line(&mut jay)["name"], "Lin");
    drop(json);
    let (mut json, first) = back(
        &server,
        HOME,
        r#"{"name":"Lin","room":"r","format":"json","history":1}"#,
    );
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (&first["type"], &first["count"]),
        (&"history".into(), &1.into())
    );
    assert_eq!(json_line(&mut json)["text"], "one");
    assert_eq!(json_line(&mut json)["type"], "end_of_history");
    let own = json_line(&mut json);
    assert_eq!(
        (&own["type"], &own["name"]),
        (&"join".into(), &"Lin".into()),
        "{own}"
    );
    nothing_shown(&mut bob, "two");
    assert_eq!(json_line(&mut json)["text"], "two");

    // WebSocket: a reload.
    let mut tab = ws::ws_join(&server, "Tab", "r");
    bob.expect("*** Tab joined");
    drop(tab);
    let deadline = Instant::now() + TIMEOUT;
    tab = loop {
        let mut tab = ws::ws_open(&server);
        ws::send(&mut tab, r#"{"name":"Tab","room":"r"}"#);
        let v = ws::frame(&mut tab);
        if v["type"] == "error" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(
            (&v["type"], &v["name"]),
            (&"join".into(), &"Tab".into()),
            "{v}"
        );
        break tab;
    };
    nothing_shown(&mut bob, "three");
    let v = ws::frame(&mut tab);
    assert_eq!(v["text"], "three", "{v}");
    // Jay saw the messages and the joins of the newcomers, nothing else.
    let seen: Vec<Value> = (0..3).map(|_| json_line(&mut jay)).collect();
    let kinds: Vec<(&str, &str)> = seen
        .iter()
        .map(|v| (v["type"].as_str().unwrap(), v["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("message", "Bob"), ("join", "Tab"), ("message", "Bob")]
    );

    // Shutdown: nobody is told anything new about a member within its grace.
    drop(mina);
    wait_kept(&server, 4);
    server.signal("-TERM");
    let rest = bob.until("*** server shutting down");
    assert!(rest.iter().all(|l| !l.contains("left")), "{rest:?}");
}

#[test]
fn a_member_not_back_is_told_left_when_the_grace_ends() {
    let server = Server::start(&["--leave-grace", "1"]);
    let mut bob = server.connect("Bob", "r");
    let mina = server.connect("Mina", "r");
    bob.expect("*** Mina joined");
    let gone = Instant::now();
    drop(mina);
    assert!(
        bob.quiet_for(Duration::from_millis(600)),
        "told before the grace"
    );
    let left = bob.line_within(Duration::from_secs(5));
    assert_eq!(left.as_deref(), Some("*** Mina left"));
    let waited = gone.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    bob.send("/who\n");
    bob.expect("*** 1 in r: Bob");
    // The name is free again, for anyone.
    let mut other = Client::raw_from(server.addr, AWAY);
    other.send(r#"{"name":"Mina","room":"r"}"#);
    other.expect("*** Mina joined");
    bob.expect("*** Mina joined");
}

#[test]
fn a_quit_a_leave_and_a_join_elsewhere_are_told_at_once() {
    let server = Server::start(&["--leave-grace", "30"]);
    let mut bob = server.connect("Bob", "r");
    let told = |bob: &mut Client, name: &str| {
        let line = bob.line_within(Duration::from_secs(3));
        assert_eq!(line, Some(format!("*** {name} left")));
    };

    let mut quitter = server.connect("Quit", "r");
    bob.expect("*** Quit joined");
    quitter.send("/quit\n");
    told(&mut bob, "Quit");

    let mut mover = server.connect("Move", "r");
    bob.expect("*** Move joined");
    mover.send("/join elsewhere\n");
    told(&mut bob, "Move");

    let mut v2 = Client::raw(server.addr);
    v2.send(r#"{"name":"Vee","version":2,"room":"r"}"#);
    bob.expect("*** Vee joined");
    v2.send("{\"type\":\"leave\",\"room\":\"r\",\"req\":1}\n");
    told(&mut bob, "Vee");
    v2.send("{\"type\":\"quit\"}\n");

    // A version-2 quit in a room: told at once too.
    let mut v2 = Client::raw(server.addr);
    v2.send(r#"{"name":"Vee","version":2,"room":"r"}"#);
    bob.expect("*** Vee joined");
    v2.send("{\"type\":\"quit\"}\n");
    told(&mut bob, "Vee");
    bob.send("/who\n");
    bob.expect("*** 1 in r: Bob");
}

#[test]
fn nobody_else_takes_the_name_during_the_grace() {
    let server = Server::start(&["--leave-grace", "30", "--max-room-members", "3"]);
    let mut bob = server.connect("Bob", "r");
    let mina = server.connect("Mina", "r");
    bob.expect("*** Mina joined");
    drop(mina);
    assert!(server.wait_log("kept for the leave grace"));
    // Another address, the same name: taken, as if Mina were still there.
    let mut other = Client::raw_from(server.addr, AWAY);
    other.send(r#"{"name":"Mina","room":"r"}"#);
    other.expect("*** error: name Mina is already taken in room r");
    // A look-alike, from anywhere: too much like her.
    let mut alike = Client::raw(server.addr);
    alike.send(r#"{"name":"MINA","room":"r"}"#);
    alike.expect("*** error: name MINA is too much like Mina, already in room r");
    // Nor by /nick.
    bob.send("/nick Mina\n");
    bob.expect("*** error: name Mina is already taken in this room");
    // Her place is kept: the room holds 3, Bob, Mina's ghost and one more.
    let zed = server.connect("Zed", "r");
    bob.expect("*** Zed joined");
    let mut full = Client::raw(server.addr);
    full.send(r#"{"name":"Ann","room":"r"}"#);
    full.expect("*** error: room r is full (3 members)");
    // Mina herself, from her own address, gets her place back in a full room.
    let (_mina, first) = back(&server, HOME, r#"{"name":"Mina","room":"r"}"#);
    assert_eq!(first, "*** Mina joined");
    nothing_shown(&mut bob, "hi");
    drop(zed);
}

#[test]
fn a_person_back_on_any_connection_is_no_news() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = Server::start(&[
        "--data-dir",
        d,
        "--http",
        "127.0.0.1:0",
        "--leave-grace",
        "30",
    ]);
    let mut bob = server.connect("Bob", "r");
    let mina = common::log_in(Client::raw(server.addr), "Mina", "pw", "r");
    bob.expect("*** Mina joined");
    drop(mina);
    assert!(server.wait_log("kept for the leave grace"));
    // A guest cannot have the name; the person, from another address and over a WebSocket,
    // takes its place back.
    let mut guest = Client::raw_from(server.addr, AWAY);
    guest.send(r#"{"name":"Mina","room":"r"}"#);
    assert!(guest.line().starts_with("*** error: "));
    let mut tab = ws::ws_open(&server);
    ws::send(&mut tab, r#"{"name":"Mina","room":"r","password":"pw"}"#);
    let v = ws::frame(&mut tab);
    assert_eq!(
        (&v["type"], &v["name"]),
        (&"join".into(), &"Mina".into()),
        "{v}"
    );
    nothing_shown(&mut bob, "welcome back");
    assert!(matches!(ws::next(&mut tab, TIMEOUT), Got::Json(v) if v["text"] == "welcome back"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_grace_leaves_at_once_as_before() {
    let server = Server::start(&["--leave-grace", "0"]);
    let mut bob = server.connect("Bob", "r");
    let mina = server.connect("Mina", "r");
    bob.expect("*** Mina joined");
    drop(mina);
    let line = bob.line_within(Duration::from_secs(3));
    assert_eq!(line.as_deref(), Some("*** Mina left"));
    assert!(!server.log_contains("kept for the leave grace"));
}
