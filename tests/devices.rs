//! One person, many connections: a registered name logged in with its password may be connected
//! several times at once (a browser tab over WebSocket, a program over TCP JSON); each room sees
//! one member. Unregistered names stay exclusive. The cluster variant is in tests/cluster.rs.

mod common;

use std::time::{Duration, Instant};

use common::app::App;
use common::ws::{self, json_line, Got, Ws};
use common::{temp_dir, user_add, Client, Endpoint, Server, TIMEOUT};
use serde_json::Value;

/// A WebSocket logged in as `name` with `password`, once it is in `room`.
fn ws_login(server: &impl Endpoint, name: &str, room: &str, password: &str) -> Ws {
    let mut ws = ws::ws_open(server);
    ws::send(
        &mut ws,
        &format!(r#"{{"name":"{name}","room":"{room}","password":"{password}"}}"#),
    );
    ws::until(&mut ws, |v| v["type"] == "join" && v["name"] == name);
    ws
}

/// A TCP JSON connection logged in as `name` with `password`, once it is in `room`.
fn json_login(server: &impl Endpoint, name: &str, room: &str, password: &str) -> Client {
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        r#"{{"name":"{name}","room":"{room}","format":"json","password":"{password}"}}"#
    ));
    let v = json_line(&mut c);
    assert_eq!(
        (&v["type"], &v["name"]),
        (&"join".into(), &name.into()),
        "{v}"
    );
    c
}

/// The next JSON line that is not a join (there is none in between here).
fn ws_next(ws: &mut Ws) -> Value {
    ws::frame(ws)
}

fn is_message(v: &Value, name: &str, text: &str) -> bool {
    v["type"] == "message" && v["name"] == name && v["text"] == text
}

fn is_private(v: &Value, from: &str, to: &str, text: &str) -> bool {
    v["type"] == "private" && v["from"] == from && v["to"] == to && v["text"] == text
}

#[test]
fn a_person_on_websocket_and_tcp_json_is_one_member() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d, "--http", "127.0.0.1:0"]);
    let mut bob = server.connect("Bob", "r");

    let mut tab = ws_login(&server, "Mina", "r", "pw");
    bob.expect("*** Mina joined");
    let mut app = json_login(&server, "Mina", "r", "pw");
    // The second connection is no news to the room: Bob's next line is his own message.
    bob.send("hello\n");
    bob.expect("Bob:hello");
    assert!(is_message(&ws_next(&mut tab), "Bob", "hello"));
    assert!(is_message(&json_line(&mut app), "Bob", "hello"));

    // What one connection sends, every connection sees.
    ws::send(&mut tab, "from the tab");
    bob.expect("Mina:from the tab");
    assert!(is_message(&ws_next(&mut tab), "Mina", "from the tab"));
    assert!(is_message(&json_line(&mut app), "Mina", "from the tab"));
    app.send("from the app\n");
    bob.expect("Mina:from the app");
    assert!(is_message(&ws_next(&mut tab), "Mina", "from the app"));
    assert!(is_message(&json_line(&mut app), "Mina", "from the app"));

    // A private message reaches every connection of the person, and so does its sender's copy.
    bob.send("/msg Mina psst\n");
    bob.expect("*** private to Mina: psst");
    assert!(is_private(&ws_next(&mut tab), "Bob", "Mina", "psst"));
    assert!(is_private(&json_line(&mut app), "Bob", "Mina", "psst"));
    ws::send(&mut tab, "/msg Bob hi Bob");
    bob.expect("*** private from Mina: hi Bob");
    assert!(is_private(&ws_next(&mut tab), "Mina", "Bob", "hi Bob"));
    assert!(is_private(&json_line(&mut app), "Mina", "Bob", "hi Bob"));

    // One member in /who and /rooms.
    bob.send("/who\n");
    bob.expect("*** 2 in r: Bob Mina");
    bob.send("/rooms\n");
    bob.expect("*** 1 room: r(2)");
    // A registered login is who one is: no /nick.
    app.send("/nick Other\n");
    let v = json_line(&mut app);
    assert_eq!(
        v["reason"], "you are logged in as Mina, a registered name: /nick cannot change it",
        "{v}"
    );

    // The tab closes: the app is still Mina in the room, and nobody is told.
    tab.close(None).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !matches!(
        ws::next(&mut tab, Duration::from_millis(100)),
        Got::Close(_)
    ) {
        assert!(Instant::now() < deadline, "the tab did not close");
    }
    assert!(server.wait_log("name=Mina room=r reason="));
    bob.send("still here\n");
    bob.expect("Bob:still here");
    assert!(is_message(&json_line(&mut app), "Bob", "still here"));
    bob.send("/who\n");
    bob.expect("*** 2 in r: Bob Mina");
    // The last connection leaves: now the room hears of it.
    drop(app);
    bob.expect("*** Mina left");
    bob.send("/who\n");
    bob.expect("*** 1 in r: Bob");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_person_joins_and_leaves_rooms_as_one_member() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = App::with(|s| s.set_data_dir(d));
    let mut bob = server.connect("Bob", "r");
    let mut one = Client::raw(server.addr);
    one.send(r#"{"name":"Mina","room":"r","password":"pw"}"#);
    one.expect("*** Mina joined");
    bob.expect("*** Mina joined");
    let mut two = Client::raw(server.addr);
    two.send(r#"{"name":"Mina","room":"r","password":"pw"}"#);
    // The new connection hears it is in; the room is not told again.
    two.expect("*** Mina joined");
    // One connection moves on with /join: Mina is still in r through the other.
    two.send("/join elsewhere\n");
    two.expect("*** Mina joined");
    bob.send("/who\n");
    bob.expect("*** 2 in r: Bob Mina");
    // The other follows: now Mina has left r.
    one.send("/join elsewhere\n");
    bob.expect("*** Mina left");
    one.expect("*** Mina joined");
    one.send("together\n");
    one.expect("Mina:together");
    two.expect("Mina:together");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unregistered_names_stay_exclusive() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    let server = App::with(|s| s.set_data_dir(d));
    let _zed = server.connect("Zed", "r");
    common::expect_refused(
        &server,
        br#"{"name":"Zed","room":"r"}"#,
        "name Zed is already taken in room r",
    );
    // A password does not make an unregistered name shareable.
    common::expect_refused(
        &server,
        br#"{"name":"Zed","room":"r","password":"anything"}"#,
        "name Zed is already taken in room r",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unregistered_connection_never_shares_with_a_registered_one() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = App::with(|s| s.set_data_dir(d));
    // Zed is in the room unregistered, then the name is registered (seen within 2 s).
    let mut guest = server.connect("Zed", "r");
    user_add(&dir, "Zed", "zeds");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut probe = Client::raw(server.addr);
        probe.send(r#"{"name":"Zed","room":"other"}"#);
        let line = probe.line();
        if line == "*** error: name Zed is registered: send its password" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Zed never became registered: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The owner of the password does not join the guest that holds the name.
    common::expect_refused(
        &server,
        br#"{"name":"Zed","room":"r","password":"zeds"}"#,
        "name Zed is already taken in room r",
    );
    // A look-alike spelling of a person in the room is still a look-alike, password or not.
    let mut mina = Client::raw(server.addr);
    mina.send(r#"{"name":"Mina","room":"r","password":"pw"}"#);
    mina.expect("*** Mina joined");
    common::expect_refused(
        &server,
        br#"{"name":"mina","room":"r","password":"pw"}"#,
        "name mina is too much like Mina, already in room r",
    );
    guest.expect("*** Mina joined");
    guest.send("/who\n");
    guest.expect("*** 2 in r: Mina Zed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_person_in_many_rooms_on_one_connection_and_in_one_on_another_is_one_member_of_each() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = App::with(|s| {
        s.set_data_dir(d);
        s.web.http = Some("127.0.0.1:0".into());
    });
    let mut bob = server.connect("Bob", "a");
    let mut cat = server.connect("Cat", "b");

    // The app: version 2, in a and b.
    let mut app = Client::raw(server.addr);
    app.send(r#"{"name":"Mina","version":2,"password":"pw"}"#);
    assert_eq!(json_line(&mut app)["type"], "welcome");
    for room in ["a", "b"] {
        app.send(&format!(
            "{{\"type\":\"join\",\"room\":\"{room}\",\"req\":\"{room}\"}}\n"
        ));
        loop {
            let v = json_line(&mut app);
            if v["type"] == "ok" && v["req"] == room {
                break;
            }
        }
    }
    bob.expect("*** Mina joined");
    cat.expect("*** Mina joined");
    // The tab, in a only: no news to a.
    let mut tab = ws_login(&server, "Mina", "a", "pw");
    bob.send("hi\n");
    bob.expect("Bob:hi");
    assert!(is_message(&ws_next(&mut tab), "Bob", "hi"));
    // The app sends to a: the tab sees it as its own.
    app.send("{\"type\":\"say\",\"room\":\"a\",\"text\":\"from the app\"}\n");
    bob.expect("Mina:from the app");
    assert!(is_message(&ws_next(&mut tab), "Mina", "from the app"));
    // The app leaves a: Mina is still there (the tab), so nobody is told.
    app.send("{\"type\":\"leave\",\"room\":\"a\",\"req\":\"l\"}\n");
    loop {
        let v = json_line(&mut app);
        if v["type"] == "ok" && v["req"] == "l" {
            break;
        }
    }
    bob.send("/who\n");
    bob.expect("*** 2 in a: Bob Mina");
    // The tab closes: now Mina has left a, and is still in b.
    tab.close(None).unwrap();
    bob.expect("*** Mina left");
    cat.send("/who\n");
    cat.expect("*** 2 in b: Cat Mina");
    drop(app);
    cat.expect("*** Mina left");
}
