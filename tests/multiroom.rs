//! Version 2 of the JSON protocol (docs/PROTOCOL.md, section 17): one connection in many
//! rooms, requests with ids echoed in their answers, the per-connection room bound, and a clear
//! error for every malformed request with the connection kept.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use common::app::App;
use common::ws::{self, Got, Ws};
use common::{Client, Endpoint, Server, TIMEOUT};
use serde_json::{json, Value};

/// A TCP version-2 client, past its welcome.
fn v2(server: &impl Endpoint, name: &str) -> Client {
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        "{{\"name\":\"{name}\",\"version\":2,\"format\":\"json\"}}"
    ));
    let welcome = line(&mut c);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["name"], name);
    assert_eq!(welcome["version"], 2);
    c
}

fn line(c: &mut Client) -> Value {
    let l = c.line();
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
}

fn request(c: &mut Client, v: Value) {
    c.send(&format!("{v}\n"));
}

/// Reads lines until one matches; returns those before it.
fn until(c: &mut Client, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = line(c);
        if want(&v) {
            return seen;
        }
        seen.push(v);
    }
}

fn is_ok(req: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| v["type"] == "ok" && v["req"] == req
}

/// Joins `room` and waits for the join's `ok` (which follows the room's `join` event).
fn join(c: &mut Client, room: &str) {
    let req = format!("j-{room}");
    request(c, json!({"type": "join", "room": room, "req": req}));
    let before = until(c, is_ok(&req));
    assert!(
        before
            .iter()
            .any(|v| v["type"] == "join" && v["room"] == room),
        "no join event for {room} before its ok: {before:?}"
    );
}

#[test]
fn a_json_client_in_three_rooms_gets_each_rooms_traffic_in_order_while_sending_to_each() {
    let server = App::start();
    let rooms = ["alpha", "beta", "gamma"];
    let mut mina = v2(&server, "Mina");
    for room in rooms {
        join(&mut mina, room);
    }
    const N: usize = 60;
    // One plain-text member in each room, talking at the same time as Mina.
    let talkers: Vec<_> = rooms
        .iter()
        .map(|room| {
            let mut c = server.connect(&format!("T{room}"), room);
            let room = room.to_string();
            thread::spawn(move || {
                for i in 0..N {
                    c.send(&format!("{room} {i}\n"));
                }
                // It sees Mina's messages to its room in the order she sent them.
                let mut hers = Vec::new();
                let deadline = Instant::now() + TIMEOUT * 3;
                while hers.len() < N && Instant::now() < deadline {
                    if let Some(l) = c.line_within(Duration::from_millis(500)) {
                        if let Some(text) = l.strip_prefix("Mina:") {
                            hers.push(text.to_owned());
                        }
                    }
                }
                (room, hers)
            })
        })
        .collect();
    for i in 0..N {
        for room in rooms {
            request(
                &mut mina,
                json!({"type": "say", "room": room, "text": format!("to {room} {i}")}),
            );
        }
    }
    // Every room's events, as Mina got them.
    let mut got: HashMap<String, Vec<Value>> = HashMap::new();
    let deadline = Instant::now() + TIMEOUT * 3;
    let total = |got: &HashMap<String, Vec<Value>>| {
        got.values()
            .map(|v| v.iter().filter(|e| e["type"] == "message").count())
            .sum::<usize>()
    };
    while total(&got) < 2 * N * rooms.len() && Instant::now() < deadline {
        let v = line(&mut mina);
        let room = v["room"].as_str().unwrap_or_else(|| panic!("no room: {v}"));
        got.entry(room.to_owned()).or_default().push(v);
    }
    for room in rooms {
        let events = &got[room];
        let messages: Vec<_> = events.iter().filter(|e| e["type"] == "message").collect();
        assert_eq!(messages.len(), 2 * N, "{room}: {events:?}");
        // The room's own order: ids one after the other.
        let ids: Vec<u64> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{room}: {ids:?}");
        // Each sender's messages in the order sent.
        for (sender, prefix) in [
            ("Mina", format!("to {room} ")),
            (&*format!("T{room}"), format!("{room} ")),
        ] {
            let texts: Vec<String> = messages
                .iter()
                .filter(|m| m["name"] == sender)
                .map(|m| m["text"].as_str().unwrap().to_owned())
                .collect();
            let want: Vec<String> = (0..N).map(|i| format!("{prefix}{i}")).collect();
            assert_eq!(texts, want, "{room}, {sender}");
        }
    }
    for t in talkers {
        let (room, hers) = t.join().unwrap();
        let want: Vec<String> = (0..N).map(|i| format!("to {room} {i}")).collect();
        assert_eq!(hers, want, "{room}");
    }
}

#[test]
fn requests_with_an_id_get_it_back_in_their_answer() {
    let server = App::start();
    let mut mina = v2(&server, "Mina");
    join(&mut mina, "ops");
    let mut bob = server.connect("Bob", "ops");
    until(&mut mina, |v| v["type"] == "join" && v["name"] == "Bob");

    request(
        &mut mina,
        json!({"type":"say","room":"ops","text":"hi","req":7}),
    );
    let m = line(&mut mina);
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str()),
        (Some("message"), Some("hi"))
    );
    let ok = line(&mut mina);
    assert_eq!(ok, json!({"type":"ok","req":7,"id":m["id"]}));
    bob.expect("Mina:hi");

    request(
        &mut mina,
        json!({"type":"me","room":"ops","text":"waves","req":"a"}),
    );
    let a = line(&mut mina);
    assert_eq!(a["type"], "action");
    assert_eq!(line(&mut mina), json!({"type":"ok","req":"a","id":a["id"]}));
    bob.expect("* Mina waves");

    request(&mut mina, json!({"type":"who","room":"ops","req":"w"}));
    assert_eq!(
        line(&mut mina),
        json!({"type":"who","req":"w","room":"ops","members":["Bob","Mina"]})
    );

    request(&mut mina, json!({"type":"rooms","req":"r"}));
    let rooms = line(&mut mina);
    assert_eq!(rooms["type"], "rooms");
    assert_eq!(rooms["req"], "r");
    assert_eq!(rooms["rooms"], json!([{"room":"ops","members":2}]));

    request(
        &mut mina,
        json!({"type":"msg","room":"ops","to":"Bob","text":"psst","req":"p"}),
    );
    let p = line(&mut mina);
    assert_eq!(
        (p["type"].as_str(), p["to"].as_str()),
        (Some("private"), Some("Bob"))
    );
    assert_eq!(line(&mut mina), json!({"type":"ok","req":"p"}));
    assert!(bob.line().contains("psst"));

    // Without an id: no ok, the events alone.
    request(&mut mina, json!({"type":"say","room":"ops","text":"plain"}));
    assert_eq!(line(&mut mina)["text"], "plain");
    bob.expect("Mina:plain");
    assert!(mina.quiet_for(Duration::from_millis(300)));

    request(&mut mina, json!({"type":"leave","room":"ops","req":"l"}));
    assert_eq!(line(&mut mina), json!({"type":"ok","req":"l"}));
    bob.expect("*** Mina left");
    // Out of every room, the connection stays and can join again.
    join(&mut mina, "ops");
    bob.expect("*** Mina joined");

    request(&mut mina, json!({"type":"quit","req":"q"}));
    assert_eq!(
        line(&mut mina),
        json!({"type":"notice","req":"q","text":"bye"})
    );
    assert!(mina.closed());
    bob.expect("*** Mina left");
}

#[test]
fn each_room_resumes_from_its_own_last_id_and_history_is_per_room() {
    let server = App::start();
    let mut ann = server.connect("Ann", "one");
    let mut cat = server.connect("Cat", "two");
    for i in 1..=3 {
        ann.send(&format!("one {i}\n"));
        cat.send(&format!("two {i}\n"));
    }
    ann.until("Ann:one 3");
    cat.until("Cat:two 3");

    let mut mina = v2(&server, "Mina");
    request(
        &mut mina,
        json!({"type":"join","room":"one","since":1,"req":"1"}),
    );
    let one = until(&mut mina, is_ok("1"));
    let texts = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter(|v| v["type"] == "message")
            .map(|v| v["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(texts(&one), ["one 2", "one 3"]);
    assert_eq!(one[0], json!({"type":"history","room":"one","count":2}));
    request(
        &mut mina,
        json!({"type":"join","room":"two","history":1,"req":"2"}),
    );
    let two = until(&mut mina, is_ok("2"));
    assert_eq!(texts(&two), ["two 3"]);

    request(
        &mut mina,
        json!({"type":"history","room":"two","limit":2,"req":"h"}),
    );
    let h = until(&mut mina, is_ok("h"));
    assert_eq!(texts(&h), ["two 2", "two 3"]);
    assert!(h.iter().all(|v| v["room"] == "two"), "{h:?}");
    assert_eq!(h.last().unwrap()["type"], "end_of_history");
}

#[test]
fn a_websocket_client_sits_in_three_rooms() {
    let server = App::with(|s| s.web.http = Some("127.0.0.1:0".into()));
    let mut ws = ws::ws_open(&server);
    ws::send(&mut ws, r#"{"name":"Mina","version":2}"#);
    let welcome = ws::frame(&mut ws);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["max_rooms"], 100);
    let mut others = Vec::new();
    for room in ["a", "b", "c"] {
        ws::send(
            &mut ws,
            &json!({"type":"join","room":room,"req":room}).to_string(),
        );
        ws::until(&mut ws, |v| v["type"] == "ok" && v["req"] == room);
        others.push(server.connect(&format!("X{room}"), room));
    }
    for (room, other) in ["a", "b", "c"].iter().zip(&mut others) {
        // A multi-line message stays one message, as a version-1 frame does.
        ws::send(
            &mut ws,
            &json!({"type":"say","room":room,"text":format!("hello\n{room}")}).to_string(),
        );
        other.expect("Mina:hello");
        other.expect(&format!("Mina:{room}"));
        other.send(&format!("back from {room}\n"));
    }
    let seen = ws_messages(&mut ws, 6);
    for room in ["a", "b", "c"] {
        let in_room: Vec<&str> = seen
            .iter()
            .filter(|v| v["room"] == room)
            .map(|v| v["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            in_room,
            [format!("hello\n{room}"), format!("back from {room}")]
        );
    }
    // A malformed frame gets an error and the socket stays open.
    ws::send(&mut ws, "hello");
    let e = ws::frame(&mut ws);
    assert_eq!(e["type"], "error");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid request JSON"),
        "{e}"
    );
    ws::send(
        &mut ws,
        r#"{"type":"say","room":"a","text":"still here","req":1}"#,
    );
    ws::until(&mut ws, |v| v["type"] == "ok" && v["req"] == 1);
    others[0].until("Mina:still here");
    drop(ws);
    for other in &mut others {
        other.until("*** Mina left");
    }
}

fn ws_messages(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match ws::next(ws, TIMEOUT) {
            Got::Json(v) if v["type"] == "message" => seen.push(v),
            Got::Json(_) => {}
            other => panic!("wanted messages, got {other:?} after {seen:?}"),
        }
    }
    seen
}

#[test]
fn the_rooms_of_one_connection_are_bounded() {
    let server = App::with(|s| s.limits.max_rooms_per_session = 2);
    let mut c = Client::raw(server.addr);
    // The handshake's room counts as one.
    c.send(r#"{"name":"Mina","room":"a","version":2,"format":"json"}"#);
    let welcome = line(&mut c);
    assert_eq!(welcome["max_rooms"], 2);
    until(&mut c, |v| v["type"] == "join" && v["room"] == "a");
    join(&mut c, "b");
    request(&mut c, json!({"type":"join","room":"c","req":"c"}));
    assert_eq!(
        line(&mut c),
        json!({"type":"error","req":"c","reason":"you are in too many rooms (2 at most on one connection)"})
    );
    // Nobody saw Mina in c.
    let mut x = server.connect("X", "c");
    assert!(x.quiet_for(Duration::from_millis(300)));
    request(&mut c, json!({"type":"leave","room":"a"}));
    join(&mut c, "c");
    x.expect("*** Mina joined");
}

#[test]
fn a_bound_of_no_rooms_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_machat"))
        .args([
            "-a",
            "127.0.0.1:0",
            "--http",
            "off",
            "--max-rooms-per-session",
            "0",
        ])
        .output()
        .expect("run machat");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-rooms-per-session"), "{err}");
}

#[test]
fn every_malformed_request_gets_a_clear_error_and_the_connection_stays() {
    let server = App::with(|s| s.limits.max_line = 2048);
    let mut c = v2(&server, "Mina");
    join(&mut c, "ops");
    let long_req = "x".repeat(65);
    let cases: Vec<(String, Value, &str)> = vec![
        ("hello".into(), Value::Null, "invalid request JSON: "),
        ("{\"type\":".into(), Value::Null, "invalid request JSON: "),
        ("[1,2]".into(), Value::Null, "a request must be a JSON object like"),
        ("\"say\"".into(), Value::Null, "a request must be a JSON object like"),
        (r#"{"room":"ops","req":1}"#.into(), json!(1), "request is missing \"type\""),
        (r#"{"type":5,"req":"n"}"#.into(), json!("n"), "\"type\" must be a string"),
        (
            r#"{"type":"shout","room":"ops","req":2}"#.into(),
            json!(2),
            "unknown request type \"shout\" (one of join, leave, say, me, msg, nick, who, rooms, history, command, quit, read, notify, marks, dm)",
        ),
        (r#"{"type":"say","text":"hi","req":3}"#.into(), json!(3), "request is missing \"room\""),
        (r#"{"type":"say","room":"ops","req":4}"#.into(), json!(4), "request is missing \"text\""),
        (r#"{"type":"say","room":["ops"],"req":5}"#.into(), json!(5), "\"room\" must be a string"),
        (r#"{"type":"say","room":"","text":"x","req":6}"#.into(), json!(6), "room must not be empty"),
        (r#"{"type":"say","room":"elsewhere","text":"x","req":7}"#.into(), json!(7), "you are not in elsewhere"),
        (r#"{"type":"who","room":"elsewhere","req":8}"#.into(), json!(8), "you are not in elsewhere"),
        (r#"{"type":"leave","room":"elsewhere","req":9}"#.into(), json!(9), "you are not in elsewhere"),
        (r#"{"type":"join","room":"ops","req":10}"#.into(), json!(10), "you are already in ops"),
        (r#"{"type":"join","room":"x","history":-1,"req":11}"#.into(), json!(11), "\"history\" must be a whole number >= 0"),
        (r#"{"type":"join","room":"x","since":"5","req":12}"#.into(), json!(12), "\"since\" must be a whole number >= 0"),
        (r#"{"type":"history","room":"ops","limit":0,"req":13}"#.into(), json!(13), "\"limit\" must be from 1 to 1000"),
        (r#"{"type":"history","room":"ops","limit":5000,"req":14}"#.into(), json!(14), "\"limit\" must be from 1 to 1000"),
        (r#"{"type":"me","room":"ops","text":"  ","req":15}"#.into(), json!(15), "\"text\" must not be empty"),
        (r#"{"type":"msg","room":"ops","to":"Nobody","text":"x","req":16}"#.into(), json!(16), "no one called Nobody in this room"),
        (r#"{"type":"msg","room":"ops","to":"Bob","req":17}"#.into(), json!(17), "request is missing \"text\""),
        (r#"{"type":"say","room":"ops","text":"x","req":{"a":1}}"#.into(), Value::Null, "\"req\" must be a string of at most 64 bytes"),
        (format!(r#"{{"type":"say","room":"ops","text":"x","req":"{long_req}"}}"#), Value::Null, "\"req\" must be a string of at most 64 bytes"),
        (r#"{"type":"say","room":"ops","text":"x","req":-1}"#.into(), Value::Null, "\"req\" must be a string of at most 64 bytes"),
        ("\u{1}\u{2}\u{ff}".into(), Value::Null, "invalid request JSON"),
        (format!(r#"{{"type":"say","room":"ops","text":"{}"}}"#, "y".repeat(3000)), Value::Null, "line too long"),
    ];
    for (input, req, reason) in &cases {
        c.send(&format!("{input}\n"));
        let e = line(&mut c);
        assert_eq!(e["type"], "error", "{input}: {e}");
        assert_eq!(e["req"], *req, "{input}: {e}");
        let got = e["reason"].as_str().unwrap_or("");
        assert!(
            got.starts_with(reason),
            "{input}: {got:?} is not {reason:?}"
        );
        // Still here, still in ops.
        request(&mut c, json!({"type":"who","room":"ops","req":"alive"}));
        assert_eq!(line(&mut c)["req"], "alive", "after {input}");
    }
    // An empty line, or one of blanks, is no request and gets no answer.
    c.send("\n  \n");
    assert!(c.quiet_for(Duration::from_millis(300)));
}

#[test]
fn a_client_that_sends_bad_requests_and_never_reads_is_cut_off() {
    // No line rate, so the server reads as fast as the client writes.
    let server = Server::start(&["--max-pending", "65536", "--max-line-rate", "0"]);
    let mut c = v2(&server, "Mina");
    c.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let junk = "[]\n".repeat(1000);
    let deadline = Instant::now() + TIMEOUT * 3;
    let mut cut = false;
    while Instant::now() < deadline {
        use std::io::{ErrorKind, Write};
        match c.stream.write(junk.as_bytes()) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut,
        "the server kept taking requests from a client that never reads"
    );
    assert!(server.wait_log("slow consumer"));
}

#[test]
fn version_2_is_json_and_other_versions_are_refused() {
    let server = App::start();
    common::expect_refused(
        &server,
        br#"{"name":"Mina","version":2,"format":"text"}"#,
        "version 2 speaks JSON: \"format\" must be \"json\" or absent",
    );
    common::expect_refused(
        &server,
        br#"{"name":"Mina","version":3}"#,
        "\"version\" must be 1 or 2",
    );
    common::expect_refused(
        &server,
        br#"{"name":"Mina","version":"2"}"#,
        "\"version\" must be 1 or 2",
    );
    // Version 1 still needs its room.
    common::expect_refused(&server, br#"{"name":"Mina"}"#, "room");
    // Without "format", version 2 is JSON, refusals included.
    let mut c = Client::raw(server.addr);
    c.send(r#"{"name":"Mina","version":2,"room":"ops"}"#);
    assert_eq!(line(&mut c)["type"], "welcome");
    let mut again = Client::raw(server.addr);
    again.send(r#"{"name":"Mina","version":2,"room":"ops"}"#);
    assert_eq!(
        line(&mut again),
        json!({"type":"error","reason":"name Mina is already taken in room ops"})
    );
    assert!(again.closed());
    let mut bad = Client::raw(server.addr);
    bad.send(r#"{"name":"","version":2}"#);
    assert_eq!(
        line(&mut bad),
        json!({"type":"error","reason":"name must not be empty"})
    );
}

#[test]
fn a_version_2_client_that_falls_behind_in_one_room_is_cut_off() {
    let server = Server::start(&["--max-pending", "65536", "--max-line-rate", "0"]);
    let mut mina = v2(&server, "Mina");
    join(&mut mina, "quiet");
    join(&mut mina, "busy");
    let mut other = server.connect("Other", "quiet");
    let mut flood = server.connect("Flood", "busy");
    // Flood reads everything it is sent (its own echoes); Mina reads nothing from here on.
    let mut reader = flood.stream.try_clone().expect("clone");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let drain = thread::spawn(move || {
        use std::io::{ErrorKind, Read};
        let mut buf = vec![0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let line = format!("{}\n", "x".repeat(1000));
    let deadline = Instant::now() + TIMEOUT * 3;
    let mut cut = false;
    while Instant::now() < deadline && !cut {
        for _ in 0..1000 {
            flood.send(&line);
        }
        cut = server.log_contains("slow consumer");
    }
    assert!(
        cut || server.wait_log("slow consumer"),
        "Mina was never cut off"
    );
    // The quiet room hears that Mina left: the whole connection ended.
    other.until("*** Mina left");
    assert!(mina.closed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = drain.join();
    drop(flood);
}

/// Each room beyond a connection's first counts as a connection of its address: one address
/// holds no more seats with version 2 than it could hold connections with version 1.
#[test]
fn rooms_beyond_the_first_count_against_the_connection_limits() {
    let server = App::with(|s| s.limits.max_per_ip = 3);
    let mut mina = v2(&server, "Mina");
    join(&mut mina, "a"); // the connection's own
    join(&mut mina, "b"); // 2
    join(&mut mina, "c"); // 3
    request(&mut mina, json!({"type":"join","room":"d","req":"d"}));
    assert_eq!(
        line(&mut mina),
        json!({"type":"error","req":"d","reason":"too many connections and rooms from your address"})
    );
    // A new connection from the address is refused too: the address holds 3.
    let mut late = Client::raw(server.addr);
    late.send(r#"{"name":"Late","room":"a"}"#);
    assert_eq!(
        late.line(),
        "*** error: too many connections from your address"
    );
    // Leaving a room gives its place back.
    request(&mut mina, json!({"type":"leave","room":"c","req":"l"}));
    assert_eq!(line(&mut mina), json!({"type":"ok","req":"l"}));
    let bob = server.connect("Bob", "a");
    drop(bob);
    // And closing gives back every one (the server counts asynchronously: retry a while).
    drop(mina);
    let deadline = Instant::now() + TIMEOUT;
    let mut admitted = 0;
    let mut kept = Vec::new();
    while admitted < 3 && Instant::now() < deadline {
        let mut c = Client::raw(server.addr);
        c.send(&format!(
            "{{\"name\":\"U{admitted}\",\"room\":\"z{admitted}\"}}"
        ));
        match c.line_within(TIMEOUT) {
            Some(l) if l.ends_with("joined") => {
                admitted += 1;
                kept.push(c); // kept open: it counts
            }
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
    assert_eq!(
        admitted, 3,
        "the closed connection's rooms were not given back"
    );
}

/// Sends a `nick` request and returns what the client got up to and with its answer (the
/// `ok` or the `error` with that `req`).
fn nick(c: &mut Client, name: &str, req: impl Into<Value>) -> (Vec<Value>, Value) {
    let req = req.into();
    request(c, json!({"type": "nick", "name": name, "req": req}));
    let mut seen = Vec::new();
    loop {
        let v = line(c);
        if v["req"] == req {
            return (seen, v);
        }
        seen.push(v);
    }
}

/// A version-2 client `name` in every room of `rooms`, each with a text member `T<room>` who
/// joined after it.
fn in_rooms(server: &App, name: &str, rooms: &[&str]) -> (Client, Vec<Client>) {
    let mut client = v2(server, name);
    let mut members = Vec::new();
    for &room in rooms {
        join(&mut client, room);
        members.push(server.connect(&format!("T{room}"), room));
        until(&mut client, |v| v["type"] == "join" && v["room"] == room);
    }
    (client, members)
}

/// Issue 12 left `nick` out of version 2: one rename for every room of the connection.
#[test]
fn a_version_2_client_renames_itself_in_every_room_it_is_in() {
    let server = App::start();
    let rooms = ["alpha", "beta", "gamma"];
    let (mut mina, mut members) = in_rooms(&server, "Mina", &rooms);
    let (mut seen, answer) = nick(&mut mina, "Minnie", "n1");
    assert_eq!(answer, json!({"type":"ok","req":"n1"}));
    // Each room's own `nick` event, in its stream (before or after the ok).
    while seen.iter().filter(|v| v["type"] == "nick").count() < rooms.len() {
        seen.push(line(&mut mina));
    }
    for room in rooms {
        let event = seen
            .iter()
            .find(|v| v["type"] == "nick" && v["room"] == room)
            .unwrap_or_else(|| panic!("no nick event in {room}: {seen:?}"));
        assert_eq!(
            (event["name"].as_str(), event["new"].as_str()),
            (Some("Mina"), Some("Minnie")),
            "{event}"
        );
    }
    for (room, member) in rooms.iter().zip(&mut members) {
        member.expect("*** Mina is now Minnie");
        request(
            &mut mina,
            json!({"type":"say","room":room,"text":format!("hi {room}")}),
        );
        member.expect(&format!("Minnie:hi {room}"));
    }
    // The old name is free again, in every room.
    for room in rooms {
        server.connect("Mina", room);
    }
}

/// A name taken in one room renames the member nowhere, and the new name's claims are given
/// back in the others.
#[test]
fn a_nick_taken_in_one_room_keeps_the_old_name_everywhere() {
    let server = App::start();
    let rooms = ["alpha", "beta", "gamma"];
    let (mut mina, mut members) = in_rooms(&server, "Mina", &rooms);
    let mut minnie = server.connect("Minnie", "beta");
    until(&mut mina, |v| v["type"] == "join" && v["name"] == "Minnie");
    members[1].expect("*** Minnie joined");

    let (seen, answer) = nick(&mut mina, "Minnie", "n1");
    assert_eq!(
        answer,
        json!({"type":"error","req":"n1","reason":"name Minnie is already taken in room beta"})
    );
    assert!(seen.is_empty(), "{seen:?}");
    // Too much like a member, in one room: named with that member and that room.
    let (_, answer) = nick(&mut mina, "MINNIE", "n2");
    assert_eq!(
        answer["reason"],
        "name MINNIE is too much like Minnie, already in room beta"
    );
    // Still Mina everywhere: the next line each member sees is her message, under her name.
    for (room, member) in rooms.iter().zip(&mut members) {
        request(
            &mut mina,
            json!({"type":"say","room":room,"text":"still me"}),
        );
        member.expect("Mina:still me");
    }
    for _ in rooms {
        let m = line(&mut mina);
        assert_eq!(
            (m["type"].as_str(), m["name"].as_str()),
            (Some("message"), Some("Mina")),
            "{m}"
        );
    }
    // Nothing claimed the name in the other rooms: someone else takes it there.
    for room in ["alpha", "gamma"] {
        server.connect("Minnie", room);
    }
    minnie.expect("Mina:still me");
    minnie.send("/who\n");
    minnie.expect("*** 3 in beta: Mina Minnie Tbeta");
}

/// Every rule of `/nick` holds for the request, with the same texts, and the connection stays.
#[test]
fn a_nick_request_is_refused_as_nick_is() {
    let dir = common::temp_dir();
    common::user_add(&dir, "Ann", "pw");
    let data = dir.clone();
    let server = App::with(move |s| s.set_data_dir(&data));
    let mut mina = v2(&server, "Mina");
    join(&mut mina, "ops");
    let cases: Vec<(String, Value, &str)> = vec![
        (
            r#"{"type":"nick","req":1}"#.into(),
            json!(1),
            "request is missing \"name\"",
        ),
        (
            r#"{"type":"nick","name":null,"req":2}"#.into(),
            json!(2),
            "request is missing \"name\"",
        ),
        (
            r#"{"type":"nick","name":["x"],"req":3}"#.into(),
            json!(3),
            "\"name\" must be a string",
        ),
        (
            r#"{"type":"nick","name":"","req":4}"#.into(),
            json!(4),
            "usage: /nick NAME (name must not be empty)",
        ),
        (
            r#"{"type":"nick","name":"Mi na","req":5}"#.into(),
            json!(5),
            "usage: /nick NAME (names cannot contain spaces: use _ or - instead)",
        ),
        (
            r#"{"type":"nick","name":"Mina","req":6}"#.into(),
            json!(6),
            "you are already called Mina",
        ),
        (
            r#"{"type":"nick","name":"Ann","req":7}"#.into(),
            json!(7),
            "name Ann needs a password: reconnect with it",
        ),
        (
            r#"{"type":"nick","name":"ANN","req":8}"#.into(),
            json!(8),
            "name ANN needs a password: reconnect with it",
        ),
    ];
    for (input, req, reason) in &cases {
        mina.send(&format!("{input}\n"));
        assert_eq!(
            line(&mut mina),
            json!({"type":"error","req":req,"reason":reason}),
            "{input}"
        );
    }
    request(&mut mina, json!({"type":"who","room":"ops","req":"w"}));
    assert_eq!(line(&mut mina)["members"], json!(["Mina"]));

    // A person (logged in with a registered name's password) keeps it.
    let mut ann = Client::raw(server.addr());
    ann.send(r#"{"name":"Ann","version":2,"password":"pw"}"#);
    assert_eq!(line(&mut ann)["type"], "welcome");
    join(&mut ann, "ops");
    let (_, answer) = nick(&mut ann, "Annie", "p");
    assert_eq!(
        answer["reason"],
        "you are logged in as Ann, a registered name: /nick cannot change it"
    );
    drop(server);

    // Under --require-auth, the same answer whatever the name.
    let data = dir.clone();
    let server = App::with(move |s| {
        s.set_data_dir(&data);
        s.auth.require_auth = true;
    });
    let mut ann = Client::raw(server.addr());
    ann.send(r#"{"name":"Ann","version":2,"password":"pw"}"#);
    assert_eq!(line(&mut ann)["type"], "welcome");
    for target in ["Annie", "Mina"] {
        let (_, answer) = nick(&mut ann, target, "r");
        assert_eq!(
            answer["reason"],
            "you can only be your registered name on this server"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// In no room, a rename is the session's alone: later joins use the new name.
#[test]
fn a_version_2_client_in_no_room_renames_itself() {
    let server = App::start();
    let mut bob = server.connect("Bob", "ops");
    let mut mina = v2(&server, "Mina");
    let (seen, answer) = nick(&mut mina, "Minnie", 5);
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(answer, json!({"type":"ok","req":5}));
    // Without a req: no answer.
    request(&mut mina, json!({"type":"nick","name":"Mimi"}));
    assert!(mina.quiet_for(Duration::from_millis(300)));
    join(&mut mina, "ops");
    bob.expect("*** Mimi joined");
    request(&mut mina, json!({"type":"say","room":"ops","text":"hello"}));
    bob.expect("Mimi:hello");
}
