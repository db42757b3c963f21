//! Registered names over real sockets: `machat user add` (password from stdin), the password
//! in the handshake, the same answer and delay for every failure, --require-auth, /nick, the
//! per-address failure limit, machat-client and WebSocket.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, Client, Server};

fn user_add(dir: &Path, name: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["user", "add", name, "--data-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn user_list(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["user", "list", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Sends a handshake; returns the first line and how long it took.
fn attempt(server: &Server, handshake: &str) -> (String, Duration, Client) {
    let mut c = Client::raw(server.addr);
    let start = Instant::now();
    c.send(handshake);
    let line = c.line();
    (line, start.elapsed(), c)
}

fn failed(server: &Server, handshake: &str) -> Duration {
    let (line, took, mut c) = attempt(server, handshake);
    assert_eq!(line, "*** error: authentication failed", "{handshake}");
    assert!(c.closed(), "not closed after the failure");
    took
}

#[test]
fn a_registered_name_needs_its_password_and_failures_all_look_alike() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "correct horse");
    assert_eq!(user_list(&dir), "Mina\n");
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d]);

    let none = failed(&server, r#"{"name":"Mina","room":"r"}"#);
    let wrong = failed(
        &server,
        r#"{"name":"Mina","room":"r","password":"battery staple"}"#,
    );
    // The same delay whatever was wrong (a missing password costs no hashing; a wrong one does).
    for took in [none, wrong] {
        assert!(took >= Duration::from_millis(950), "{took:?}");
        assert!(took < Duration::from_millis(1600), "{took:?}");
    }
    assert!(
        none.abs_diff(wrong) < Duration::from_millis(300),
        "{none:?} vs {wrong:?}"
    );
    // JSON clients get the failure in JSON.
    let (line, _, _) = attempt(
        &server,
        r#"{"name":"Mina","room":"r","format":"json","password":"x"}"#,
    );
    assert_eq!(line, r#"{"type":"error","reason":"authentication failed"}"#);
    assert!(server.wait_log("reason=refused: authentication failed"));
    assert!(
        !server.log_contains("battery staple"),
        "a password reached the log"
    );

    let (line, _, mut mina) = attempt(
        &server,
        r#"{"name":"Mina","room":"r","password":"correct horse"}"#,
    );
    assert_eq!(line, "*** Mina joined");
    // An unregistered name needs nothing, and cannot take a registered one with /nick.
    let mut bob = server.connect("Bob", "r");
    mina.expect("*** Bob joined");
    bob.send("/nick Mina\n");
    bob.expect("*** error: name Mina is registered");
    bob.send("/nick Bobby\n");
    bob.expect("*** Bob is now Bobby");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn require_auth_closes_the_server_to_unregistered_names() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d, "--require-auth"]);
    let took = failed(&server, r#"{"name":"Bob","room":"r"}"#);
    assert!(took >= Duration::from_millis(950), "{took:?}");
    let (line, _, _) = attempt(&server, r#"{"name":"Mina","room":"r","password":"pw"}"#);
    assert_eq!(line, "*** Mina joined");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_attempts_are_limited_per_address() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d]);
    // Five wrong guesses at once (each answered after the delay)...
    let guesses: Vec<_> = (0..5)
        .map(|i| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = Client::raw(addr);
                c.send(&format!(
                    r#"{{"name":"Mina","room":"r","password":"guess{i}"}}"#
                ));
                c.line()
            })
        })
        .collect();
    for g in guesses {
        assert_eq!(g.join().unwrap(), "*** error: authentication failed");
    }
    // ...and then even the right password is refused from this address, without hashing.
    let (line, _, _) = attempt(&server, r#"{"name":"Mina","room":"r","password":"pw"}"#);
    assert_eq!(
        line,
        "*** error: too many failed logins from your address; try again later"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_running_server_sees_new_registrations_and_machat_client_sends_the_password() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d]);
    let mut watcher = server.connect("Watcher", "r");
    user_add(&dir, "Zed", "zpw");
    // Within a few seconds the name is protected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (line, _, _) = attempt(&server, r#"{"name":"Zed","room":"other"}"#);
        if line == "*** error: authentication failed" {
            break;
        }
        assert!(Instant::now() < deadline, "still open: {line}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pwfile = dir.join("pw.txt");
    std::fs::write(&pwfile, "zpw\n").unwrap();
    let mut client = Command::new(env!("CARGO_BIN_EXE_machat-client"))
        .args(["-client", "Zed", "-room", "r", "-address"])
        .arg(server.addr.to_string())
        .arg("--password-file")
        .arg(&pwfile)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    watcher.until("*** Zed joined");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"it is me\n").unwrap();
    watcher.expect("Zed:it is me");
    drop(stdin);
    let _ = client.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn websocket_handshakes_are_checked_too() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d, "--http", "127.0.0.1:0"]);
    let http = server.http.unwrap();
    let connect = |hs: &str| {
        let stream = std::net::TcpStream::connect(http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{http}/ws"), stream).unwrap();
        ws.send(tungstenite::Message::text(hs)).unwrap();
        ws
    };
    let mut ws = connect(r#"{"name":"Mina","room":"r","password":"nope"}"#);
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => {
            assert_eq!(
                t.as_str(),
                r#"{"type":"error","reason":"authentication failed"}"#
            )
        }
        other => panic!("{other:?}"),
    }
    match ws.read().unwrap() {
        tungstenite::Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1008);
            assert_eq!(f.reason.as_str(), "authentication failed");
        }
        other => panic!("{other:?}"),
    }
    let mut ws = connect(r#"{"name":"Mina","room":"r","password":"pw"}"#);
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => assert!(t.as_str().contains(r#""type":"join""#), "{t}"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
