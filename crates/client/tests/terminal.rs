//! machat-client with one address, against the real server: chatting and its exit status
//! (end of input, /quit, the server closing), the default flags, a registered name's password,
//! and TLS with a private CA.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{machat_bin, temp_dir, Client, Server, TIMEOUT};

fn client_cmd(server: &Server, name: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machat-client"));
    cmd.args([
        "-client",
        name,
        "-room",
        "dev",
        "-address",
        &server.addr.to_string(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

#[test]
fn terminal_client_chats_and_exits_cleanly_at_end_of_input() {
    let server = Server::start(&[]);
    let mut watcher = server.connect("watcher", "dev");
    let mut child = client_cmd(&server, "Mina").spawn().unwrap();
    watcher.expect("*** Mina joined");
    watcher.send("hi Mina\n");
    watcher.expect("watcher:hi Mina");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello from the client\n").unwrap();
    watcher.expect("Mina:hello from the client");
    drop(stdin);
    watcher.expect("*** Mina left");
    let out = wait_output(child);
    assert!(out.0.success(), "{:?}", out);
    assert_eq!(
        out.1,
        "*** Mina joined\nwatcher:hi Mina\nMina:hello from the client\n"
    );
}

#[test]
fn terminal_client_exits_non_zero_when_the_server_closes() {
    let mut server = Server::start(&[]);
    let mut watcher = server.connect("watcher", "dev");
    // Without a reconnect time: the lost connection is the end (the reconnect with one address
    // is tested in failover.rs).
    let mut child = client_cmd(&server, "Mina")
        .args(["-reconnect-for", "0"])
        .spawn()
        .unwrap();
    watcher.expect("*** Mina joined");
    let _stdin = child.stdin.take();
    // Mina's own copy of her join line goes out on her connection's task, at about the moment
    // the watcher's does: a kill right after the watcher's copy raced it (with and without the
    // leave grace). Give it time to leave first.
    std::thread::sleep(Duration::from_millis(300));
    server.signal("-KILL");
    let _ = server.child.wait();
    let (status, stdout, stderr) = wait_output(child);
    assert!(!status.success());
    assert!(stdout.contains("*** Mina joined"), "{stdout:?} {stderr:?}");
    assert!(stderr.contains("closed the connection"), "{stderr}");
}

#[test]
fn terminal_client_exits_0_after_quit() {
    let server = Server::start(&[]);
    let mut child = client_cmd(&server, "Mina").spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"/quit\n").unwrap();
    let (status, stdout, stderr) = wait_output(child);
    drop(stdin);
    assert!(status.success(), "{stderr}");
    assert!(stdout.ends_with("*** bye\n"), "{stdout}");
}

#[test]
fn terminal_client_default_flags_with_two_dashes() {
    let server = Server::start(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat-client"))
        .args(["--room", "lounge", "--address", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let (status, stdout, stderr) = wait_output(child);
    assert!(status.success(), "{stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("*** User") && line.ends_with(" joined"),
        "{stdout:?} {stderr}"
    );
}

fn wait_output(mut child: std::process::Child) -> (std::process::ExitStatus, String, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("client did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

// ---------------------------------------------------------------------------------------------
// A registered name: machat-client sends the password from --password-file.

fn user_add(dir: &Path, name: &str, password: &str) {
    let mut child = Command::new(machat_bin())
        .args(["user", "add", name, "--data-dir"])
        .arg(dir)
        .env("MACHAT_MIN_PASSWORD_LENGTH", "1")
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

/// Sends a handshake; returns the first line and how long it took.
fn attempt(server: &Server, handshake: &str) -> (String, Duration, Client) {
    let mut c = Client::raw(server.addr);
    let start = Instant::now();
    c.send(handshake);
    let line = c.line();
    (line, start.elapsed(), c)
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
        if line == "*** error: name Zed is registered: send its password" {
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

// ---------------------------------------------------------------------------------------------
// TLS: --tls with --ca, and a certificate that is not trusted.

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
struct Cert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    fn new() -> Cert {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Cert { dir, cert, key }
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_server(cert: &Cert, extra: &[&str]) -> Server {
    let (c, k) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let mut args = vec!["--tls-addr", "127.0.0.1:0", "--tls-cert", c, "--tls-key", k];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn machat_client_connects_with_tls_and_a_private_ca() {
    let cert = Cert::new();
    let server = tls_server(&cert, &[]);
    let mut watcher = server.connect("Watcher", "room");
    let tls_addr = server.tls.unwrap().to_string();
    let mut client = Command::new(env!("CARGO_BIN_EXE_machat-client"))
        .args(["-client", "Cli", "-room", "room", "-address", &tls_addr])
        .args(["--tls", "--ca", cert.cert.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    watcher.expect("*** Cli joined");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"hello through tls\n").unwrap();
    watcher.expect("Cli:hello through tls");
    drop(stdin);
    watcher.expect("*** Cli left");
    let out = client.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("*** Cli joined\nCli:hello through tls\n"),
        "{out}"
    );

    // Without the CA the self-signed certificate is not trusted: no connection.
    let status = Command::new(env!("CARGO_BIN_EXE_machat-client"))
        .args(["-client", "Bad", "-address", &tls_addr, "--tls"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!status.status.success());
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        err.contains("certificate") || err.contains("trusted"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The first minute (issue 15): "connected" only once in, a refusal once with what to do, recent
// messages on join, a misspelt flag.

/// A name registered without its password: the refusal once on stdout, as the server sent
/// it, then which flag sends a password; exit 1 at once, without retrying. The same with the
/// plain client (`-reconnect-for 0`), and "connected" is never said.
#[test]
fn a_registered_name_without_its_password_is_told_which_flag_sends_it() {
    let dir = temp_dir();
    user_add(&dir, "Zed", "zpw");
    let server = Server::start(&["--data-dir", dir.to_str().unwrap()]);
    for extra in [&[][..], &["-reconnect-for", "0"]] {
        let mut child = client_cmd(&server, "Zed").args(extra).spawn().unwrap();
        let _stdin = child.stdin.take();
        let (status, stdout, stderr) = wait_output(child);
        assert_eq!(status.code(), Some(1), "{extra:?} {stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            stdout.starts_with("*** error: ") && stdout.contains("authentication failed")
                || stdout.contains("is registered"),
            "{stdout}"
        );
        assert!(
            stderr.contains("if Zed is your registered name, run with -password-file FILE"),
            "{stderr}"
        );
        assert!(!stderr.contains("connected as"), "{stderr}");
        assert!(!stderr.contains("retrying"), "{stderr}");
    }
    // A wrong password is told apart.
    let pwfile = dir.join("wrong.txt");
    std::fs::write(&pwfile, "nope\n").unwrap();
    let mut child = client_cmd(&server, "Zed")
        .arg("-password-file")
        .arg(&pwfile)
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let (status, _, stderr) = wait_output(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the password for Zed was not accepted"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An invalid name is refused once with what to change, and "connected" comes only after the
/// server let a client in.
#[test]
fn a_bad_name_is_refused_once_and_connected_is_said_only_once_in() {
    let server = Server::start(&[]);
    let mut child = client_cmd(&server, "Mina Lee").spawn().unwrap();
    let _stdin = child.stdin.take();
    let (status, stdout, stderr) = wait_output(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stdout,
        "*** error: names cannot contain spaces: use _ or - instead\n"
    );
    assert!(
        stderr.contains("choose another name with -client NAME"),
        "{stderr}"
    );
    assert!(!stderr.contains("connected as"), "{stderr}");
    let mut watcher = server.connect("watcher", "dev");
    let mut child = client_cmd(&server, "Mina").spawn().unwrap();
    watcher.expect("*** Mina joined");
    drop(child.stdin.take());
    let (status, _, stderr) = wait_output(child);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("connected as Mina in dev; type a line and press Enter"),
        "{stderr}"
    );
}

/// `-history N` shows the room's last N messages on joining, with one address and with the
/// plain client; without it, none.
#[test]
fn history_flag_shows_recent_messages_on_join() {
    let server = Server::start(&["--history", "memory"]);
    let mut watcher = server.connect("watcher", "dev");
    for i in 1..=3 {
        watcher.send(&format!("m{i}\n"));
        watcher.expect(&format!("watcher:m{i}"));
    }
    for extra in [&[][..], &["-reconnect-for", "0"]] {
        let mut child = client_cmd(&server, "Mina")
            .args(["-history", "2"])
            .args(extra)
            .spawn()
            .unwrap();
        watcher.expect("*** Mina joined");
        drop(child.stdin.take());
        watcher.expect("*** Mina left");
        let (status, stdout, stderr) = wait_output(child);
        assert!(status.success(), "{stderr}");
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("watcher:"))
            .collect();
        assert_eq!(lines, ["watcher:m2", "watcher:m3"], "{extra:?} {stdout}");
    }
    let mut child = client_cmd(&server, "Mina").spawn().unwrap();
    watcher.expect("*** Mina joined");
    drop(child.stdin.take());
    let (status, stdout, stderr) = wait_output(child);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "*** Mina joined\n");
}

/// A misspelt flag gets the right one suggested, in the form it was typed.
#[test]
fn a_misspelt_flag_gets_the_right_one_suggested() {
    for (flag, want) in [
        ("-romm", "unknown flag -romm: did you mean -room?"),
        ("--adress", "unknown flag --adress: did you mean --address?"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_machat-client"))
            .args([flag, "dev"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}
