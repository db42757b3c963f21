//! The admin API (`--admin-token-file`, issue 13) over real sockets: the token and its failure
//! limit, what it lists, and its actions reaching chat clients, across a restart.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ws::http_call as call;
use common::{Client, Server};
use serde_json::{json, Value};

const TOKEN: &str = "adm1n-T0ken_for.tests";
const HERE: [u8; 4] = [127, 0, 0, 1];

/// A data dir with `Mina`, `Ann` and `Root` (a server admin), and the admin token's file.
fn people() -> PathBuf {
    let dir = common::people();
    std::fs::write(token_file(&dir), format!("{TOKEN}\n")).unwrap();
    dir
}

fn token_file(dir: &Path) -> PathBuf {
    dir.join("admin.token")
}

/// The server of `dir`, with the web side and the admin API.
fn start(dir: &Path) -> Server {
    let file = token_file(dir);
    Server::start(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--admin-token-file",
        file.to_str().unwrap(),
    ])
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// An admin GET from 127.0.0.1 with the token: (status, JSON).
fn admin_get(http: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = call(http, HERE, "GET", path, &bearer(), "");
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, v)
}

/// An admin POST from 127.0.0.1 with the token: (status, JSON).
fn admin_post(http: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, answer) = call(http, HERE, "POST", path, &bearer(), &body.to_string());
    let v = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{path}: {e}: {answer:?}"));
    (status, v)
}

fn ok(lines: &[&str]) -> (u16, Value) {
    (200, json!({ "ok": true, "lines": lines }))
}

fn refused(status: u16, reason: &str) -> (u16, Value) {
    (status, json!({ "error": reason }))
}

/// A text client logged in as a registered name (or a guest when `password` is empty), from
/// 127.0.0.1 or another loopback address.
fn text_from(server: &Server, from: [u8; 4], name: &str, password: &str, room: &str) -> Client {
    let client = Client::raw_from(server.addr, IpAddr::from(from));
    common::log_in(client, name, password, room)
}

fn text(server: &Server, name: &str, password: &str, room: &str) -> Client {
    text_from(server, HERE, name, password, room)
}

/// The 401 every request without the token gets, whatever it asked for.
fn assert_unauthorized((status, head, body): (u16, String, String), what: &str) {
    assert_eq!(status, 401, "{what}: {head} {body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{what}: {head}"
    );
    assert_eq!(body, r#"{"error":"unauthorized"}"#, "{what}");
}

#[test]
fn the_admin_api_needs_its_token_and_does_not_exist_without_the_flag() {
    // Without --admin-token-file there is no admin API: 404, like any unknown path.
    let plain = Server::start(&["--http", "127.0.0.1:0"]);
    let (status, _, body) = call(
        plain.http.unwrap(),
        HERE,
        "GET",
        "/api/admin/rooms",
        &bearer(),
        "",
    );
    assert_eq!((status, body.as_str()), (404, r#"{"error":"not found"}"#));
    drop(plain);

    let dir = people();
    let server = start(&dir);
    let http = server.http.unwrap();
    // With the token: the API; an unknown admin path is 404, a wrong method 405.
    let (status, v) = admin_get(http, "/api/admin/rooms");
    assert_eq!((status, &v), (200, &json!({ "rooms": [] })));
    let (status, head, _) = call(http, HERE, "GET", "/api/admin/rooms", &bearer(), "");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
    assert_eq!(
        admin_get(http, "/api/admin/nothing/here"),
        refused(404, "not found")
    );
    let (status, _, _) = call(http, HERE, "POST", "/api/admin/rooms", &bearer(), "{}");
    assert_eq!(status, 405);
    // The Host guard stands in front of the admin API too.
    let (status, _, _) = common::ws::request(
        http,
        &format!(
            "GET /api/admin/rooms HTTP/1.1\r\nHost: rebind.attacker.example\r\n\
             Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 421);

    // Without the token, whatever the path, method or body: 401 and nothing else. (Each is a
    // failure of its address: three from each of two addresses stay under the limit.)
    let a = [127, 0, 0, 2];
    assert_unauthorized(call(http, a, "GET", "/api/admin/rooms", "", ""), "no token");
    assert_unauthorized(
        call(
            http,
            a,
            "GET",
            "/api/admin/rooms",
            &format!("Bearer {TOKEN}x"),
            "",
        ),
        "a wrong token",
    );
    assert_unauthorized(
        call(
            http,
            a,
            "GET",
            "/api/admin/rooms",
            &format!("Basic {TOKEN}"),
            "",
        ),
        "another scheme",
    );
    let b = [127, 0, 0, 3];
    assert_unauthorized(
        call(http, b, "GET", "/api/admin/nothing/here", "", ""),
        "unknown path",
    );
    assert_unauthorized(
        call(
            http,
            b,
            "POST",
            "/api/admin/rooms/dev/kick",
            "Bearer nope",
            r#"{"name":"Bob"}"#,
        ),
        "an action",
    );
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(20_000));
    assert_unauthorized(
        call(http, b, "POST", "/api/admin/wall", "", &big),
        "a large body",
    );
    assert_unauthorized(
        call(http, b, "DELETE", "/api/admin/rooms", "", ""),
        "a wrong method",
    );
    let c = [127, 0, 0, 4];
    assert_unauthorized(
        call(http, c, "GET", "/api/admin", "", ""),
        "the prefix itself",
    );
    assert_unauthorized(
        call(http, c, "GET", "/api/admin/", "", ""),
        "the prefix and a slash",
    );
    // With the token, the body's bound holds.
    let (status, _, body) = call(http, HERE, "POST", "/api/admin/wall", &bearer(), &big);
    assert_eq!(status, 413, "{body}");
    // Nothing else needs it.
    let (status, _, _) = call(http, a, "GET", "/api/rooms", "", "");
    assert_eq!(status, 200);

    // A token file that is missing or empty stops the start, saying which flag and why.
    common::token_files_are_checked("--admin-token-file", &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_tokens_hold_back_their_address_even_with_the_right_token() {
    let dir = people();
    let server = start(&dir);
    let http = server.http.unwrap();
    let guesser = [127, 0, 0, 2];
    // Four wrong tokens (the failed-login limit's free failures for one name), at once.
    let wrong: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                call(
                    http,
                    guesser,
                    "GET",
                    "/api/admin/rooms",
                    &format!("Bearer guess{i}"),
                    "",
                )
                .0
            })
        })
        .collect();
    for w in wrong {
        assert_eq!(w.join().unwrap(), 401);
    }
    let held_at = Instant::now();
    // Now even the right token is refused from that address, with 429...
    let (status, _, body) = call(http, guesser, "GET", "/api/admin/rooms", &bearer(), "");
    assert_eq!(
        (status, body.as_str()),
        (
            429,
            r#"{"error":"too many failed attempts from your address; try again later"}"#
        )
    );
    // ...and from another address it is not.
    assert_eq!(admin_get(http, "/api/admin/rooms").0, 200);
    // The hold ends by itself (2 s after the last failure's answer, at first).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = call(http, guesser, "GET", "/api/admin/rooms", &bearer(), "");
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "still held back");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        held_at.elapsed() >= Duration::from_secs(1),
        "{:?}",
        held_at.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rooms_are_listed_with_members_addresses_and_settings_and_nothing_leaks_elsewhere() {
    let dir = people();
    let server = start(&dir);
    let http = server.http.unwrap();
    let mut mina = text(&server, "Mina", "minapw", "dev");
    let _bob = text_from(&server, [127, 0, 0, 2], "Bob", "", "dev");
    mina.expect("*** Bob joined");
    let _carl = text(&server, "Carl", "", "lobby");
    // A WebSocket passes the admin API's gate as before.
    let _wendy = common::ws::ws_join(&server, "Wendy", "lobby");
    for (line, shown) in [
        (
            "/topic release on Friday",
            "*** Mina set the topic: release on Friday",
        ),
        ("/mode +key s3cret-key", "*** Mina set modes +key"),
        (
            "/ban 203.0.113.0/24 bots",
            "*** Mina banned an address: bots",
        ),
        ("/op Ann", "*** Mina made Ann an operator"),
    ] {
        mina.send(&format!("{line}\n"));
        mina.until(shown);
    }
    // A room with kept settings and nobody in it.
    let (status, _) = admin_post(
        http,
        "/api/admin/rooms/empty/ban",
        &json!({ "target": "Mallory", "reason": "troll" }),
    );
    assert_eq!(status, 200);

    let (status, v) = admin_get(http, "/api/admin/rooms");
    assert_eq!(status, 200);
    let rooms = v["rooms"].as_array().unwrap();
    let names: Vec<&str> = rooms.iter().map(|r| r["room"].as_str().unwrap()).collect();
    assert_eq!(names, ["dev", "empty", "lobby"]);
    let dev = &rooms[0];
    assert_eq!(
        dev["members"],
        json!([
            { "name": "Bob", "person": false, "addrs": ["127.0.0.2"] },
            { "name": "Mina", "person": true, "addrs": ["127.0.0.1"] },
        ])
    );
    assert_eq!(dev["owner"], "Mina");
    assert_eq!(dev["ops"], json!(["Ann"]));
    assert_eq!(dev["voiced"], json!([]));
    assert_eq!(dev["invites"], json!([]));
    assert_eq!(
        dev["modes"],
        json!({ "closed": false, "key": "s3cret-key", "moderated": false })
    );
    assert_eq!(dev["topic"]["text"], "release on Friday");
    assert_eq!(dev["topic"]["by"], "Mina");
    assert!(dev["topic"]["at"].as_str().unwrap().ends_with('Z'), "{dev}");
    let ban = &dev["bans"][0];
    assert_eq!(
        (
            &ban["target"],
            &ban["kind"],
            &ban["by"],
            &ban["reason"],
            &ban["until"]
        ),
        (
            &json!("203.0.113.0/24"),
            &json!("address"),
            &json!("Mina"),
            &json!("bots"),
            &Value::Null
        )
    );
    assert_eq!(dev["mutes"], json!([]));
    assert_eq!(rooms[1]["members"], json!([]));
    assert_eq!(rooms[1]["bans"][0]["target"], "Mallory");
    assert_eq!(rooms[1]["bans"][0]["by"], "admin");
    assert_eq!(rooms[1]["owner"], Value::Null);
    assert_eq!(
        rooms[2]["members"],
        json!([
            { "name": "Carl", "person": false, "addrs": ["127.0.0.1"] },
            { "name": "Wendy", "person": false, "addrs": ["127.0.0.1"] },
        ])
    );
    // One room, the same shape.
    let (status, one) = admin_get(http, "/api/admin/rooms/dev");
    assert_eq!((status, &one), (200, dev));
    assert_eq!(
        admin_get(http, "/api/admin/rooms/nowhere"),
        refused(404, "no room called nowhere")
    );
    assert_eq!(admin_get(http, "/api/admin/rooms/a:b").0, 400);

    // Nothing of it through the public side: not the address ban, the key, nor addresses.
    for path in [
        "/api/rooms",
        "/api/rooms/dev/messages",
        "/",
        "/app.js",
        "/healthz",
    ] {
        let (status, _, body) = common::ws::get(http, path);
        assert_eq!(status, 200, "{path}");
        for secret in ["203.0.113", "s3cret-key", "127.0.0.2", "Mallory"] {
            assert!(!body.contains(secret), "{path} shows {secret}: {body}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kicks_and_bans_through_the_api_reach_the_room_and_bans_survive_a_restart() {
    let dir = people();
    {
        let server = start(&dir);
        let http = server.http.unwrap();
        let mut bob = text(&server, "Bob", "", "dev");
        let mut carl = text(&server, "Carl", "", "dev");
        bob.expect("*** Carl joined");
        assert_eq!(
            admin_post(
                http,
                "/api/admin/rooms/dev/kick",
                &json!({ "name": "bob", "reason": "spam" })
            ),
            ok(&[])
        );
        bob.expect("*** admin kicked Bob: spam");
        assert!(bob.closed());
        carl.expect("*** admin kicked Bob: spam");
        carl.expect("*** Bob left");
        assert_eq!(
            admin_post(http, "/api/admin/rooms/dev/kick", &json!({ "name": "Zed" })),
            refused(404, "no one called Zed in this room")
        );

        // A ban by name, for an hour.
        let mut bob = text(&server, "Bob", "", "dev");
        carl.expect("*** Bob joined");
        let (status, v) = admin_post(
            http,
            "/api/admin/rooms/dev/ban",
            &json!({ "target": "Bob", "duration": "1h", "reason": "flood", "unknown": [1] }),
        );
        assert_eq!((status, v), ok(&[]));
        let line = bob.line();
        assert!(
            line.starts_with("*** admin banned Bob until ") && line.ends_with(" UTC: flood"),
            "{line}"
        );
        assert!(bob.closed());
        common::expect_refused(
            &server,
            br#"{"name":"bob","room":"dev"}"#,
            "you are banned from dev until ",
        );
        // A ban by address closes out whoever comes from it.
        let mut spam = text_from(&server, [127, 0, 0, 2], "Spammer", "", "dev");
        carl.until("*** Spammer joined");
        assert_eq!(
            admin_post(
                http,
                "/api/admin/rooms/dev/ban",
                &json!({ "target": "127.0.0.2", "reason": "bots" })
            ),
            ok(&["banned 127.0.0.2 from dev"])
        );
        spam.until("*** admin banned an address: bots");
        assert!(spam.closed());

        // Bodies are checked as the chat commands are.
        for (body, reason) in [
            (
                json!({ "target": "10.0.0.0/33" }),
                "\"target\": 10.0.0.0/33 is not an address or a network (ADDRESS or ADDRESS/BITS)",
            ),
            (
                json!({ "target": "Bob", "duration": "5x" }),
                "\"duration\": 5x is not a duration (like 30s, 10m, 2h, 7d, 2w)",
            ),
            (
                json!({ "target": "bad name" }),
                "\"target\": names cannot contain spaces: use _ or - instead",
            ),
        ] {
            assert_eq!(
                admin_post(http, "/api/admin/rooms/dev/ban", &body),
                refused(400, reason)
            );
        }
        let (status, v) = admin_post(http, "/api/admin/rooms/dev/kick", &json!({ "name": 5 }));
        assert_eq!(status, 400);
        let why = v["error"].as_str().unwrap();
        assert!(
            why.contains("invalid type: integer `5`, expected a string"),
            "{why}"
        );
        let (status, v) = admin_post(http, "/api/admin/rooms/dev/kick", &json!({}));
        assert_eq!(status, 400);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("missing field `name`"),
            "{v}"
        );
        let (status, _, body) = call(
            http,
            HERE,
            "POST",
            "/api/admin/rooms/dev/kick",
            &bearer(),
            "not json",
        );
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            admin_post(http, "/api/admin/rooms/dev/dance", &json!({})),
            refused(404, "not found")
        );
        // Writes are in the background: give them a moment before the restart.
        std::thread::sleep(Duration::from_millis(300));
    }
    let server = start(&dir);
    let http = server.http.unwrap();
    let (status, dev) = admin_get(http, "/api/admin/rooms/dev");
    assert_eq!(status, 200);
    let bans: Vec<(&str, &str, &str)> = dev["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["target"].as_str().unwrap(),
                b["kind"].as_str().unwrap(),
                b["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bans,
        [("Bob", "name", "flood"), ("127.0.0.2", "address", "bots")]
    );
    assert!(dev["bans"][0]["until"].as_str().is_some(), "{dev}");
    common::expect_refused(
        &server,
        br#"{"name":"Bob","room":"dev"}"#,
        "you are banned from dev",
    );
    assert_eq!(
        admin_post(
            http,
            "/api/admin/rooms/dev/unban",
            &json!({ "target": "bob" })
        ),
        ok(&[])
    );
    assert_eq!(
        admin_post(
            http,
            "/api/admin/rooms/dev/unban",
            &json!({ "target": "Bob" })
        ),
        refused(404, "Bob is not banned in dev")
    );
    let _bob = text(&server, "Bob", "", "dev");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn topics_notices_roles_mutes_deletes_server_bans_and_the_log() {
    let dir = people();
    let server = start(&dir);
    let http = server.http.unwrap();
    let mut bob = text(&server, "Bob", "", "dev");
    let mut carl = text(&server, "Carl", "", "lobby");
    let post = |path: &str, body: Value| admin_post(http, &format!("/api/admin{path}"), &body);

    assert_eq!(
        post("/rooms/dev/topic", json!({ "text": "release on Friday" })),
        ok(&[])
    );
    bob.expect("*** admin set the topic: release on Friday");
    // One line in the room, whatever the body holds: no line breaks, no escapes.
    assert_eq!(
        post(
            "/rooms/dev/topic",
            json!({ "text": "hi\n*** Root: forged\u{1b}[2J" })
        ),
        ok(&[])
    );
    bob.expect("*** admin set the topic: hi*** Root: forged");
    assert_eq!(post("/rooms/dev/topic", json!({ "text": "" })), ok(&[]));
    bob.expect("*** admin cleared the topic");

    assert_eq!(
        post("/wall", json!({ "text": "maintenance at 10" })),
        ok(&["notice sent to 2 rooms"])
    );
    bob.expect("*** notice from admin: maintenance at 10");
    carl.expect("*** notice from admin: maintenance at 10");
    assert_eq!(
        post("/wall", json!({ "text": " " })),
        refused(400, "\"text\" must not be empty")
    );

    assert_eq!(
        post("/rooms/dev/op", json!({ "name": "Bob" })),
        refused(
            404,
            "Bob is not registered: only registered names hold roles"
        )
    );
    assert_eq!(post("/rooms/dev/op", json!({ "name": "ann" })), ok(&[]));
    bob.expect("*** admin made Ann an operator");
    assert_eq!(post("/rooms/dev/deop", json!({ "name": "Ann" })), ok(&[]));
    bob.expect("*** admin took operator from Ann");

    assert_eq!(
        post(
            "/rooms/dev/mute",
            json!({ "name": "Bob", "duration": "10m", "reason": "flooding" })
        ),
        ok(&[])
    );
    let line = bob.line();
    assert!(
        line.starts_with("*** admin muted Bob until ") && line.ends_with(": flooding"),
        "{line}"
    );
    bob.send("hello\n");
    bob.expect("*** error: you are muted in dev");
    assert_eq!(post("/rooms/dev/unmute", json!({ "name": "Bob" })), ok(&[]));
    bob.expect("*** admin unmuted Bob");
    bob.send("hello\n");
    bob.expect("Bob:hello");

    let (status, history) = common::ws::get_json(http, "/api/rooms/dev/messages");
    assert_eq!(status, 200);
    let id = history["last_id"].as_u64().unwrap();
    assert_eq!(post("/rooms/dev/delete", json!({ "id": id })), ok(&[]));
    bob.expect(&format!("*** admin deleted message {id}"));
    assert_eq!(
        post("/rooms/dev/delete", json!({ "id": 999_999 })),
        refused(404, "no message 999999 in dev")
    );

    assert_eq!(
        post(
            "/sban",
            json!({ "target": "Carl", "duration": "1h", "reason": "spam" })
        ),
        ok(&["banned Carl from the server (1 connections closed here)"])
    );
    let line = carl.line();
    assert!(
        line.starts_with("*** error: you are banned from this server"),
        "{line}"
    );
    assert!(carl.closed());
    assert_eq!(
        post("/unsban", json!({ "target": "carl" })),
        ok(&["unbanned carl from the server"])
    );
    assert_eq!(
        post("/unsban", json!({ "target": "Carl" })),
        refused(404, "Carl is not banned in the server")
    );

    // The room's log, newest last; every action by `admin`.
    let (status, log) = admin_get(http, "/api/admin/log?room=dev");
    assert_eq!(status, 200);
    assert_eq!(log["room"], "dev");
    let entries = log["log"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("topic", ""),
            ("topic", ""),
            ("topic", ""),
            ("op", "Ann"),
            ("deop", "Ann"),
            ("mute", "Bob"),
            ("unmute", "Bob"),
            ("delete", &*format!("{id} by Bob")),
        ]
    );
    assert!(entries.iter().all(|e| e["actor"] == "admin"), "{log}");
    assert_eq!(entries[5]["reason"], "flooding");
    assert!(
        entries[5]["until"]
            .as_str()
            .is_some_and(|u| u.ends_with('Z')),
        "{log}"
    );
    let (_, last) = admin_get(http, "/api/admin/log?room=dev&limit=2");
    assert_eq!(last["log"].as_array().unwrap().len(), 2);
    assert_eq!(last["log"][1]["action"], "delete");
    for bad in ["limit=0", "limit=501", "limit=x", "room=a:b"] {
        let (status, _) = admin_get(http, &format!("/api/admin/log?{bad}"));
        assert_eq!(status, 400, "{bad}");
    }
    // The server's log: notices and server bans.
    let (_, log) = admin_get(http, "/api/admin/log");
    assert_eq!(log["room"], Value::Null);
    let actions: Vec<&str> = log["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["wall", "ban", "unban"]);
    assert_eq!(log["log"][0]["reason"], "maintenance at 10");

    // The registered names.
    assert_eq!(
        admin_get(http, "/api/admin/users"),
        (
            200,
            json!({ "users": [
                { "name": "Ann", "admin": false },
                { "name": "Mina", "admin": false },
                { "name": "Root", "admin": true },
            ] })
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}
