//! Logging in on the web page (issue 14) over real sockets: `POST /api/login` trades a
//! registered name's password for a session token, which a TCP or WebSocket handshake carries
//! instead of the password; `/api/logout`, `/api/me`, `machat user logout`, expiry, a restart,
//! the failed-login limiter, and a token issued by one node of a cluster used on another.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::ws::{self, json_line};
use common::{machat_user, temp_dir, user_add, Client, Nats, Server};
use serde_json::{json, Value};

const HERE: [u8; 4] = [127, 0, 0, 1];

/// An HTTP request from `from` (a loopback address), with `token` as a bearer token (none if
/// empty): (status, head, body).
fn call(
    http: SocketAddr,
    from: [u8; 4],
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, String, String) {
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Bearer {token}")
    };
    common::ws::http_call(http, from, method, path, &auth, body)
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `POST /api/login` from `from`: (status, JSON, how long it took).
fn login_from(
    server: &Server,
    from: [u8; 4],
    name: &str,
    password: &str,
) -> (u16, Value, Duration) {
    let body = json!({ "name": name, "password": password }).to_string();
    let started = Instant::now();
    let (status, head, body) = call(http(server), from, "POST", "/api/login", "", &body);
    let took = started.elapsed();
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
    (status, parse(&body), took)
}

/// A token for `name`, from 127.0.0.1.
fn token(server: &Server, name: &str, password: &str) -> String {
    let (status, v, _) = login_from(server, HERE, name, password);
    assert_eq!(status, 200, "{v}");
    v["token"].as_str().expect("a token").to_owned()
}

fn http(server: &Server) -> SocketAddr {
    server.http.expect("http on")
}

fn me(server: &Server, token: &str) -> (u16, Value) {
    let (status, _, body) = call(http(server), HERE, "GET", "/api/me", token, "");
    (status, parse(&body))
}

/// A TCP JSON handshake for `name` in `room` with `extra` fields: its first line.
fn tcp_join(server: &Server, name: &str, room: &str, extra: &str) -> (Value, Client) {
    let mut c = Client::raw(server.addr);
    c.send(&format!(
        r#"{{"name":"{name}","room":"{room}","format":"json"{extra}}}"#
    ));
    (json_line(&mut c), c)
}

fn with_token(token: &str) -> String {
    format!(r#","token":"{token}""#)
}

fn joined(v: &Value, name: &str) -> bool {
    v["type"] == "join" && v["name"] == name
}

fn refused(v: &Value) -> bool {
    v["type"] == "error" && v["reason"] == "authentication failed"
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", dir.to_str().unwrap(), "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn a_token_logs_a_person_in_over_tcp_and_websocket() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "correct horse");
    let server = start(&dir, &[]);
    // A look-alike logs in as the registered spelling.
    let (status, v, _) = login_from(&server, HERE, "mina", "correct horse");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "Mina");
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43, "{token}");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let expires = v["expires"].as_str().unwrap();
    assert!(expires.ends_with('Z') && expires.contains('T'), "{expires}");
    assert_eq!(
        me(&server, &token),
        (
            200,
            json!({"name": "Mina", "admin": false, "expires": expires})
        )
    );
    // The token in a TCP handshake: a person, so the password's connection shares the name.
    let (v, _tcp) = tcp_join(&server, "Mina", "r", &with_token(&token));
    assert!(joined(&v, "Mina"), "{v}");
    let (v, _pw) = tcp_join(&server, "Mina", "r", r#","password":"correct horse""#);
    assert!(joined(&v, "Mina"), "a second connection of the person: {v}");
    // And in a WebSocket handshake, version 2, by a look-alike spelling elsewhere.
    let mut tab = ws::ws_open(&server);
    ws::send(
        &mut tab,
        &format!(r#"{{"name":"mina","version":2,"room":"s","token":"{token}"}}"#),
    );
    ws::until(&mut tab, |v| joined(v, "mina"));
    let mut tab2 = ws::ws_open(&server);
    ws::send(
        &mut tab2,
        &format!(r#"{{"name":"mina","room":"s","token":"{token}"}}"#),
    );
    ws::until(&mut tab2, |v| joined(v, "mina"));
    // An unregistered name with a token is a guest, as with a password: the token is ignored.
    let (v, _guest) = tcp_join(&server, "Bob", "r", &with_token(&token));
    assert!(joined(&v, "Bob"), "{v}");
    // Another registered name cannot use Mina's token.
    user_add(&dir, "Ann", "annpw");
    std::thread::sleep(Duration::from_millis(2500)); // the server reloads the names
    let (v, _) = tcp_join(&server, "Ann", "r", &with_token(&token));
    assert!(refused(&v), "{v}");
    assert!(server.wait_log("login: token issued"));
    assert!(!server.log_contains(&token), "the token reached the log");
    assert!(!server.log_contains("correct horse"), "the password too");
}

#[test]
fn failures_wait_the_same_and_the_limiter_holds_an_address_back() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let server = start(&dir, &[]);
    let (status, v, took) = login_from(&server, HERE, "Mina", "wrong");
    assert_eq!(
        (status, &v),
        (401, &json!({"error": "authentication failed"}))
    );
    assert!(took >= Duration::from_millis(950), "{took:?}");
    let (status, v, took) = login_from(&server, HERE, "Nobody", "pw");
    assert_eq!(
        (status, &v),
        (401, &json!({"error": "authentication failed"}))
    );
    assert!(
        took >= Duration::from_millis(950),
        "an unknown name waits too: {took:?}"
    );
    // A token that is none fails like a wrong password, after the same delay.
    let started = Instant::now();
    let (v, mut c) = tcp_join(&server, "Mina", "r", &with_token(&"x".repeat(43)));
    assert!(refused(&v), "{v}");
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert!(c.closed());
    // Not JSON, not an object, missing fields: 400; too large: 413.
    let (status, _, _) = call(http(&server), HERE, "POST", "/api/login", "", "[1]");
    assert_eq!(status, 400);
    let (status, _, _) = call(
        http(&server),
        HERE,
        "POST",
        "/api/login",
        "",
        r#"{"name":"Mina"}"#,
    );
    assert_eq!(status, 400);
    let big = json!({"name": "Mina", "password": "p".repeat(5000)}).to_string();
    let (status, _, _) = call(http(&server), HERE, "POST", "/api/login", "", &big);
    assert_eq!(status, 413);
    // 127.0.0.2 fails four times for Mina: then it is held back, the right password included.
    let away = [127, 0, 0, 2];
    for _ in 0..4 {
        let (status, _, _) = login_from(&server, away, "Mina", "guess");
        assert_eq!(status, 401);
    }
    let (status, v, _) = login_from(&server, away, "Mina", "pw");
    assert_eq!(status, 429, "{v}");
    assert_eq!(
        v["error"],
        "too many failed logins from your address; try again later"
    );
    // Token guesses in the handshake count for the same name from the same address.
    let mut c = Client::raw_from(server.addr, IpAddr::from(away));
    c.send(&format!(
        r#"{{"name":"Mina","room":"r","token":"{}"}}"#,
        "y".repeat(43)
    ));
    assert_eq!(
        c.line(),
        "*** error: too many failed logins from your address; try again later"
    );
    // Another address is not held back.
    token(&server, "Mina", "pw");
}

#[test]
fn revoked_expired_and_restarted_tokens() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let server = start(&dir, &[]);
    let (first, second, third) = (
        token(&server, "Mina", "pw"),
        token(&server, "Mina", "pw"),
        token(&server, "Mina", "pw"),
    );
    // Logout revokes that token only; an unknown token is as fine.
    let (status, head, body) = call(http(&server), HERE, "POST", "/api/logout", &first, "");
    assert_eq!((status, parse(&body)), (200, json!({"ok": true})));
    assert!(head
        .to_ascii_lowercase()
        .contains("cache-control: no-store"));
    let (status, _, body) = call(http(&server), HERE, "POST", "/api/logout", "nothing", "");
    assert_eq!((status, parse(&body)), (200, json!({"ok": true})));
    assert_eq!(me(&server, &first).0, 401);
    assert_eq!(me(&server, "").0, 401);
    let (v, _) = tcp_join(&server, "Mina", "r", &with_token(&first));
    assert!(refused(&v), "{v}");
    // The tokens are kept over a restart.
    drop(server);
    let server = start(&dir, &[]);
    assert_eq!(me(&server, &second).0, 200);
    let (v, mut open) = tcp_join(&server, "Mina", "r", &with_token(&third));
    assert!(joined(&v, "Mina"), "{v}");
    // machat user logout revokes every token of the name.
    let d = dir.to_str().unwrap();
    let (code, _, err) = machat_user(&["logout", "Mina", "--data-dir", d], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("2 login(s) of Mina revoked"), "{err}");
    assert_eq!(me(&server, &second).0, 401);
    let (v, _) = tcp_join(&server, "Mina", "r", &with_token(&third));
    assert!(refused(&v), "{v}");
    // A connection already open with a revoked token stays.
    open.send("still here\n");
    let v = json_line(&mut open);
    assert_eq!(
        (&v["type"], &v["text"]),
        (&json!("message"), &json!("still here")),
        "{v}"
    );
    drop(server);
    // A token past its expiry (--login-ttl in days: 0.00002 is about 1.7 s) is refused.
    let server = start(&dir, &["--login-ttl", "0.00002"]);
    let short = token(&server, "Mina", "pw");
    assert_eq!(me(&server, &short).0, 200);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(me(&server, &short).0, 401);
    let (v, _) = tcp_join(&server, "Mina", "r", &with_token(&short));
    assert!(refused(&v), "{v}");
    // Removing the name revokes its tokens.
    let live = {
        drop(server);
        let server = start(&dir, &[]);
        (token(&server, "Mina", "pw"), server)
    };
    let (code, _, err) = machat_user(&["remove", "Mina", "--data-dir", d], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("login(s) of Mina revoked"), "{err}");
    assert_eq!(me(&live.1, &live.0).0, 401);
    assert!(dir.join("logins.db").exists());
}

#[test]
fn a_token_from_one_node_works_on_another() {
    let nats = Nats::start();
    let url = nats.url();
    let (code, _, err) = machat_user(&["add", "Mina", "--nats", &url], "pw\n");
    assert_eq!(code, Some(0), "{err}");
    let node = |dir: &Path| {
        Server::start(&[
            "--nats",
            &url,
            "--data-dir",
            dir.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ])
    };
    let (a, b) = (node(&temp_dir()), node(&temp_dir()));
    let token = token(&a, "Mina", "pw");
    assert_eq!(me(&b, &token).0, 200);
    let (v, _c) = tcp_join(&b, "Mina", "r", &with_token(&token));
    assert!(joined(&v, "Mina"), "{v}");
    // Revoked for the cluster: refused on every node at once.
    let (code, _, err) = machat_user(&["logout", "Mina", "--nats", &url], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 login(s) of Mina revoked"), "{err}");
    assert_eq!(me(&a, &token).0, 401);
    let (v, _) = tcp_join(&b, "Mina", "r", &with_token(&token));
    assert!(refused(&v), "{v}");
    // And a logout on one node counts on the other.
    let other = self::token(&b, "Mina", "pw");
    let (status, _, _) = call(http(&a), HERE, "POST", "/api/logout", &other, "");
    assert_eq!(status, 200);
    assert_eq!(me(&b, &other).0, 401);
}
