//! machat-client with several `-address` values: it reconnects when its server dies and resumes
//! by message id, so the user sees every message once and in order; typed lines wait for the
//! reconnect; a refused join is retried; what it prints from JSON is byte for byte what the
//! server sends a text client; a server that answers in text (MaChat's own) still works.
//!
//! The last test does the same across the nodes of a cluster (a `nats-server -js` and three
//! machat nodes).
//!
//! The tests run real servers and real clients on loopback. The client is frozen with SIGSTOP
//! where a test needs something to happen before it may notice the loss, instead of racing it.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use common::cli::Cli;
use common::nats::Nats;
use common::{machat_bin, temp_dir, Client, Server, TIMEOUT};

/// A port nobody listens on right now (bound, read, released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

/// Starts the server on `127.0.0.1:port` instead of the harness's ephemeral port: the harness
/// always passes `-a 127.0.0.1:0`, which the wrapper drops.
fn start_on(port: u16, args: &[&str]) -> Server {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"bin="$0"; skip=
for a; do
  shift
  if [ -n "$skip" ]; then skip=; continue; fi
  if [ "$a" = "-a" ]; then skip=1; continue; fi
  set -- "$@" "$a"
done
exec "$bin" -a "$MACHAT_TEST_ADDR" "$@""#,
    ])
    .arg(machat_bin())
    .env("MACHAT_TEST_ADDR", format!("127.0.0.1:{port}"));
    let server = Server::start_with(cmd, args);
    assert_eq!(server.addr.port(), port, "started on another port");
    server
}

fn failover_args<'a>(name: &'a str, a: &'a str, b: &'a str) -> Vec<&'a str> {
    vec!["-client", name, "-room", "r", "-address", a, "-address", b]
}

/// The lines of `out` from `Sender`, in order.
fn from_sender(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("Sender:")).collect()
}

fn numbered(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|i| format!("Sender:m{i}")).collect()
}

#[test]
fn kill_9_of_the_server_loses_and_repeats_nothing() {
    let dir = temp_dir();
    let d = dir.to_str().expect("utf-8 temp dir");
    let args = [
        "--data-dir",
        d,
        "--durability",
        "sync",
        "--max-line-rate",
        "0",
    ];
    let mut a = Server::start(&args);
    let p = free_port();
    let (a_addr, b_addr) = (a.addr.to_string(), format!("127.0.0.1:{p}"));
    let mut cli = Cli::spawn(&failover_args("Cli", &a_addr, &b_addr));
    cli.wait_out("*** Cli joined");

    let mut sender = a.connect("Sender", "r");
    for i in 1..=20 {
        sender.send(&format!("m{i}\n"));
    }
    cli.wait_out("Sender:m20");

    // Frozen, the client cannot notice the loss before B has messages it has not seen.
    cli.signal("-STOP");
    a.signal("-KILL");
    let _ = a.child.wait();
    let b = start_on(p, &args);
    let mut sender = b.connect("Sender", "r");
    sender.send("m21\nm22\n");
    sender.until("Sender:m22");
    cli.signal("-CONT");

    cli.wait_err(&format!("reconnected to {b_addr}"));
    for i in 23..=40 {
        sender.send(&format!("m{i}\n"));
    }
    cli.wait_out("Sender:m40");
    assert!(cli.finish().success(), "{}", cli.err());

    let out = cli.out();
    assert_eq!(from_sender(&out), numbered(1, 40), "stdout:\n{out}");
    assert!(
        !out.contains("*** history") && !out.contains("*** end of history"),
        "replay markers on stdout:\n{out}"
    );
    assert_eq!(out.matches("*** Cli joined").count(), 1, "{out}");
    let err = cli.err();
    assert!(
        err.contains(&format!("connection to {a_addr} lost")),
        "{err}"
    );
    assert!(
        err.contains("resumed after message 20: 2 missed messages shown"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lines_typed_while_disconnected_are_sent_once_after_the_reconnect() {
    let dir = temp_dir();
    let d = dir.to_str().expect("utf-8 temp dir");
    let args = ["--data-dir", d, "--durability", "sync"];
    let mut a = Server::start(&args);
    let p = free_port();
    let (a_addr, b_addr) = (a.addr.to_string(), format!("127.0.0.1:{p}"));
    // The addresses as one comma-separated value, as they are often written.
    let both = format!("{a_addr},{b_addr}");
    let mut cli = Cli::spawn(&["-client", "Cli", "-room", "r", "-address", &both]);
    cli.wait_out("*** Cli joined");
    cli.type_in("before\n");
    cli.wait_out("Cli:before");

    a.signal("-KILL");
    let _ = a.child.wait();
    cli.wait_err(&format!("connection to {a_addr} lost"));
    // Nothing listens anywhere now: these lines can only wait.
    cli.type_in("typed 1\ntyped 2\n");
    let b = start_on(p, &args);
    cli.wait_err(&format!("reconnected to {b_addr}"));
    cli.wait_out("Cli:typed 1");
    cli.wait_out("Cli:typed 2");
    cli.type_in("after\n");
    cli.wait_out("Cli:after");

    // What the room holds: each line once.
    let mut w = Client::raw(b.addr);
    w.send(r#"{"name":"W","room":"r","history":10}"#);
    let seen = w.until("*** W joined");
    for line in ["Cli:before", "Cli:typed 1", "Cli:typed 2", "Cli:after"] {
        assert_eq!(
            seen.iter().filter(|l| *l == line).count(),
            1,
            "{line}: {seen:?}"
        );
    }
    assert!(cli.finish().success(), "{}", cli.err());
    let out = cli.out();
    assert_eq!(out.matches("Cli:typed 1\n").count(), 1, "{out}");
    assert_eq!(out.matches("Cli:typed 2\n").count(), 1, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs one scripted session against a fresh server and returns what `Obs`, a machat-client
/// with the extra flags, printed.
fn scripted_session(extra_address: Option<&str>) -> Vec<u8> {
    let server = Server::start(&["--max-line-rate", "0"]);
    let addr = server.addr.to_string();
    let mut args = vec!["-client", "Obs", "-room", "r", "-address", &addr];
    if let Some(other) = extra_address {
        args.extend(["-address", other]);
    }
    let mut obs = Cli::spawn(&args);
    obs.wait_out("*** Obs joined");
    let mut act = server.connect("Act", "r");
    obs.wait_out("*** Act joined");
    act.send("hello Obs: \"quoted\" \\ back\tslash ünï\n");
    obs.wait_out("Act:hello Obs: \"quoted\" \\ back\tslash ünï");
    act.send("\n");
    obs.wait_out("Act:");
    act.send("/me waves\n");
    obs.wait_out("* Act waves");
    act.send("/nick Actor\n");
    obs.wait_out("*** Act is now Actor");
    act.send("/msg Obs psst\n");
    obs.wait_out("*** private from Actor: psst");
    obs.type_in("/msg Actor back\n");
    obs.wait_out("*** private to Actor: back");
    obs.type_in("/msg Obs note to self\n");
    obs.wait_out("*** private to Obs: note to self");
    let mut tmp = server.connect("Tmp", "r");
    obs.wait_out("*** Tmp joined");
    tmp.send("/quit\n");
    obs.wait_out("*** Tmp left");
    obs.type_in("/nosuch\n");
    obs.wait_out("*** error: unknown command /nosuch (try /help)");
    obs.type_in("/msg Nobody hi\n");
    obs.wait_out("*** error: no one called Nobody in this room");
    obs.type_in("/who\n");
    obs.wait_out("*** 2 in r: Actor Obs");
    obs.type_in("/rooms\n");
    obs.wait_out("*** 1 room: r(2)");
    obs.type_in("/help\n");
    obs.wait_out("*** commands: /who, /rooms, /join ROOM, /nick NAME, /me ACTION, /msg NAME TEXT, /history [N], /quit, /help, /topic, /mode, /delete ID");
    obs.type_in("/me smiles\n");
    obs.wait_out("* Obs smiles");
    obs.type_in("/history 3\n");
    obs.wait_out("*** end of history");
    obs.type_in("/nick Observer\n");
    obs.wait_out("*** Obs is now Observer");
    act.send("/msg Observer still there?\n");
    obs.wait_out("*** private from Actor: still there?");
    obs.type_in("/join lobby\n");
    obs.wait_out("*** Observer joined");
    obs.type_in("lobby line\n");
    obs.wait_out("Observer:lobby line");
    obs.type_in("/quit\n");
    obs.wait_out("*** bye");
    assert!(obs.exit().success(), "{}", obs.err());
    let out = obs.out.lock().unwrap().clone();
    out
}

#[test]
fn failover_client_prints_the_same_bytes_as_the_server_sends_a_text_client() {
    let text = scripted_session(None);
    // A second address makes it a failover client: JSON from the server, rendered by the client.
    let unused = format!("127.0.0.1:{}", free_port());
    let rendered = scripted_session(Some(&unused));
    assert_eq!(
        String::from_utf8_lossy(&rendered),
        String::from_utf8_lossy(&text)
    );
    assert_eq!(rendered, text);
    // The /history answer the user asked for keeps its markers.
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("*** history: 3 messages\n"), "{text}");
}

#[test]
fn a_join_refused_while_reconnecting_is_retried_until_the_name_is_free() {
    let dir = temp_dir();
    let d = dir.to_str().expect("utf-8 temp dir");
    let args = ["--data-dir", d, "--durability", "sync"];
    let mut a = Server::start(&args);
    let p = free_port();
    let (a_addr, b_addr) = (a.addr.to_string(), format!("127.0.0.1:{p}"));
    let mut cli = Cli::spawn(&failover_args("Cli", &a_addr, &b_addr));
    cli.wait_out("*** Cli joined");
    let mut sender = a.connect("Sender", "r");
    sender.send("m1\n");
    cli.wait_out("Sender:m1");

    cli.signal("-STOP");
    a.signal("-KILL");
    let _ = a.child.wait();
    let b = start_on(p, &args);
    // As if the dead node still held the name.
    let mut holder = b.connect("Cli", "r");
    let mut sender = b.connect("Sender", "r");
    cli.signal("-CONT");
    cli.wait_err("refused the join: name Cli is already taken in room r");
    sender.send("m2\n");
    sender.until("Sender:m2");
    holder.send("/quit\n");
    holder.until("*** bye");
    cli.wait_err(&format!("reconnected to {b_addr}"));
    sender.send("m3\n");
    cli.wait_out("Sender:m3");
    assert!(cli.finish().success(), "{}", cli.err());

    let out = cli.out();
    assert_eq!(from_sender(&out), numbered(1, 3), "{out}");
    assert!(
        !out.contains("already taken"),
        "a retry's refusal on stdout:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gives_up_after_reconnect_for_and_exits_1() {
    let mut a = Server::start(&["--history", "memory"]);
    let unused = format!("127.0.0.1:{}", free_port());
    let a_addr = a.addr.to_string();
    let mut args = failover_args("Cli", &a_addr, &unused);
    args.extend(["--reconnect-for", "1"]);
    let mut cli = Cli::spawn(&args);
    cli.wait_out("*** Cli joined");
    let started = Instant::now();
    a.signal("-KILL");
    let _ = a.child.wait();
    let status = cli.exit();
    assert_eq!(status.code(), Some(1), "{}", cli.err());
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = cli.err();
    assert!(
        err.contains("could not reconnect within 1 s; giving up"),
        "{err}"
    );
    assert!(
        err.contains(&format!("cannot connect to {unused}")),
        "{err}"
    );
}

#[test]
fn reconnect_for_0_keeps_the_one_address_behaviour() {
    let mut a = Server::start(&["--history", "memory"]);
    let unused = format!("127.0.0.1:{}", free_port());
    let a_addr = a.addr.to_string();
    let mut args = failover_args("Cli", &a_addr, &unused);
    args.extend(["-reconnect-for", "0"]);
    let mut cli = Cli::spawn(&args);
    cli.wait_out("*** Cli joined");
    a.signal("-KILL");
    let _ = a.child.wait();
    assert_eq!(cli.exit().code(), Some(1));
    let err = cli.err();
    assert!(err.contains("the server closed the connection"), "{err}");
    assert!(!err.contains("reconnect"), "{err}");
}

#[test]
fn a_server_that_answers_in_text_is_printed_as_is() {
    // MaChat's Go server: ignores the fields it does not know and sends name:text lines.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || -> (String, String) {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.contains(&b'}') {
            let n = s.read(&mut chunk).expect("read the handshake");
            assert!(n > 0, "closed before the handshake");
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"Mina:hi\n").expect("write");
        // Then everything until the client closes its side.
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
        let all = [got, rest].concat();
        let text = String::from_utf8_lossy(&all).into_owned();
        let (hello, lines) = text.split_at(text.find('}').map_or(0, |i| i + 1));
        (hello.to_owned(), lines.to_owned())
    });
    let unused = format!("127.0.0.1:{}", free_port());
    let mut cli = Cli::spawn(&failover_args("Mina", &addr, &unused));
    cli.wait_out("Mina:hi");
    cli.type_in("hello\n");
    let status = cli.finish();
    let (hello, lines) = server.join().expect("fake server");
    assert!(status.success(), "{}", cli.err());
    assert_eq!(cli.out(), "Mina:hi\n");
    assert!(hello.contains(r#""format":"json""#), "{hello}");
    assert_eq!(lines, "hello\n");
}

/// Issue 15: one `-address` is enough to reconnect: the same server, back on its port, and
/// the user sees what was missed meanwhile once.
#[test]
fn one_address_is_enough_to_reconnect() {
    let dir = temp_dir();
    let d = dir.to_str().expect("utf-8 temp dir");
    let p = free_port();
    let args = ["--data-dir", d];
    let mut a = start_on(p, &args);
    let addr = a.addr.to_string();
    let mut cli = Cli::spawn(&["-client", "Cli", "-room", "r", "-address", &addr]);
    cli.wait_out("*** Cli joined");
    a.signal("-KILL");
    let _ = a.child.wait();
    cli.wait_err("reconnecting");
    let b = start_on(p, &args);
    let mut other = b.connect("Other", "r");
    other.send("after the restart\n");
    other.expect("Other:after the restart");
    cli.wait_err(&format!("reconnected to {addr}"));
    cli.wait_out("Other:after the restart");
    cli.type_in("back\n");
    other.until("Cli:back");
    cli.wait_out("Cli:back");
    assert_eq!(cli.finish().code(), Some(0), "{}", cli.err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_first_join_ends_the_client_as_with_one_address() {
    let server = Server::start(&["--history", "memory"]);
    let _mina = server.connect("Mina", "r");
    let unused = format!("127.0.0.1:{}", free_port());
    let addr = server.addr.to_string();
    let mut cli = Cli::spawn(&failover_args("Mina", &addr, &unused));
    assert_eq!(cli.exit().code(), Some(1));
    assert_eq!(
        cli.out(),
        "*** error: name Mina is already taken in room r\n"
    );
    assert!(cli.err().contains("the server closed the connection"));
    // Checked against a text client of the same server: the same line.
    let mut t = Client::raw(server.addr);
    t.send(r#"{"name":"Mina","room":"r"}"#);
    t.expect("*** error: name Mina is already taken in room r");
}

#[test]
fn at_most_1000_lines_wait_for_the_reconnect_and_the_rest_are_dropped_with_a_word() {
    let dir = temp_dir();
    let d = dir.to_str().expect("utf-8 temp dir");
    let args = ["--data-dir", d, "--max-line-rate", "0"];
    let mut a = Server::start(&args);
    let p = free_port();
    let (a_addr, b_addr) = (a.addr.to_string(), format!("127.0.0.1:{p}"));
    let mut cli = Cli::spawn(&failover_args("Cli", &a_addr, &b_addr));
    cli.wait_out("*** Cli joined");
    a.signal("-KILL");
    let _ = a.child.wait();
    cli.wait_err(&format!("connection to {a_addr} lost"));
    let typed: String = (0..1003).map(|i| format!("n{i}\n")).collect();
    cli.type_in(&typed);
    cli.wait_err("line dropped: n1002");
    let _b = start_on(p, &args);
    cli.wait_err(&format!("reconnected to {b_addr}"));
    cli.wait_out("Cli:n999");
    cli.type_in("last\n");
    cli.wait_out("Cli:last");
    assert!(cli.finish().success(), "{}", cli.err());
    let out = cli.out();
    let sent: Vec<&str> = out.lines().filter(|l| l.starts_with("Cli:n")).collect();
    let want: Vec<String> = (0..1000).map(|i| format!("Cli:n{i}")).collect();
    assert!(
        sent == want,
        "{} lines arrived, from {:?} to {:?}",
        sent.len(),
        sent.first(),
        sent.last()
    );
    let err = cli.err();
    assert_eq!(err.matches("line dropped").count(), 3, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quit_while_reconnecting_ends_at_once_with_status_0() {
    let mut a = Server::start(&["--history", "memory"]);
    let unused = format!("127.0.0.1:{}", free_port());
    let a_addr = a.addr.to_string();
    let mut cli = Cli::spawn(&failover_args("Cli", &a_addr, &unused));
    cli.wait_out("*** Cli joined");
    a.signal("-KILL");
    let _ = a.child.wait();
    cli.wait_err(&format!("connection to {a_addr} lost"));
    let started = Instant::now();
    cli.type_in("/quit\n");
    assert!(cli.exit().success(), "{}", cli.err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        cli.err().contains("/quit while reconnecting"),
        "{}",
        cli.err()
    );
}

#[test]
fn a_server_whose_ids_started_over_is_not_taken_for_duplicates() {
    // --history memory: a restarted server gives ids from 1 again.
    let args = ["--history", "memory"];
    let mut a = Server::start(&args);
    let p = free_port();
    let (a_addr, b_addr) = (a.addr.to_string(), format!("127.0.0.1:{p}"));
    let mut cli = Cli::spawn(&failover_args("Cli", &a_addr, &b_addr));
    cli.wait_out("*** Cli joined");
    let mut sender = a.connect("Sender", "r");
    for i in 1..=5 {
        sender.send(&format!("m{i}\n"));
    }
    cli.wait_out("Sender:m5");
    a.signal("-KILL");
    let _ = a.child.wait();
    let b = start_on(p, &args);
    cli.wait_err(&format!("reconnected to {b_addr}"));
    let mut sender = b.connect("Sender", "r");
    for i in 6..=8 {
        sender.send(&format!("m{i}\n"));
    }
    cli.wait_out("Sender:m8");
    assert!(cli.finish().success(), "{}", cli.err());
    assert_eq!(from_sender(&cli.out()), numbered(1, 8));
    assert!(cli.err().contains("started over"), "{}", cli.err());
}

#[test]
fn the_password_of_a_registered_name_goes_again_with_each_reconnect() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).expect("data dir");
    let d = dir.to_str().expect("utf-8 temp dir");
    let mut add = Command::new(machat_bin())
        .args(["user", "add", "Cli", "--data-dir", d])
        .env("MACHAT_MIN_PASSWORD_LENGTH", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("machat user add");
    add.stdin
        .take()
        .expect("stdin")
        .write_all(b"secret pw\n")
        .expect("password");
    let added = add.wait_with_output().expect("user add");
    assert!(added.status.success(), "{added:?}");
    let pwfile = dir.join("pw.txt");
    std::fs::write(&pwfile, "secret pw\n").expect("password file");

    let args = ["--data-dir", d, "--durability", "sync"];
    let mut a = Server::start(&args);
    let p = free_port();
    let (a_addr, b_addr) = (a.addr.to_string(), format!("127.0.0.1:{p}"));
    let mut cli_args = failover_args("Cli", &a_addr, &b_addr);
    let pw = pwfile.to_str().expect("utf-8 path");
    cli_args.extend(["--password-file", pw]);
    let mut cli = Cli::spawn(&cli_args);
    cli.wait_out("*** Cli joined");
    a.signal("-KILL");
    let _ = a.child.wait();
    let b = start_on(p, &args);
    cli.wait_err(&format!("reconnected to {b_addr}"));
    let mut sender = b.connect("Sender", "r");
    sender.send("m1\n");
    cli.wait_out("Sender:m1");
    assert!(cli.finish().success(), "{}", cli.err());
    assert!(
        !cli.err().contains("authentication failed"),
        "{}",
        cli.err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster node on `nats`.
fn node(nats: &Nats, args: &[&str]) -> Server {
    let url = nats.url();
    let mut all = vec!["--nats", url.as_str()];
    all.extend_from_slice(args);
    Server::start(&all)
}

#[test]
fn machat_client_fails_over_to_another_node_with_nothing_lost_or_repeated() {
    let nats = Nats::start();
    let a = node(&nats, &["--presence-ttl", "2"]);
    let b = node(&nats, &["--presence-ttl", "2"]);
    let c = node(&nats, &["--presence-ttl", "2"]);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut cli = Cli::spawn(&[
        "-client", "Cli", "-room", "kill", "-address", &a_addr, "-address", &b_addr,
    ]);
    cli.wait_out("*** Cli joined");
    let mut sender = c.connect_with("Sender", "kill", "");
    sender.until("*** Sender joined");
    cli.wait_out("*** Sender joined");
    for i in 1..=20 {
        sender.send(&format!("m{i}\n"));
    }
    cli.wait_out("Sender:m20");
    a.signal("-KILL");
    // The room goes on while the client is away (and while the dead node holds its name).
    for i in 21..=40 {
        sender.send(&format!("m{i}\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
    cli.wait_out("Sender:m40");
    cli.wait_err("reconnected to");
    // Back in the room: it can talk again.
    cli.type_in("back\n");
    sender.until("Cli:back");
    let out = cli.out();
    let got: Vec<&str> = out.lines().filter(|l| l.starts_with("Sender:")).collect();
    let want: Vec<String> = (1..=40).map(|i| format!("Sender:m{i}")).collect();
    assert_eq!(got, want, "stderr: {}", cli.err());
    assert!(!out.contains("*** history"), "{out}");
}
