//! Connections over the server's life: limits, descriptor exhaustion, churn, silent clients,
//! graceful shutdown and the logs. (The terminal client's own tests are in
//! crates/client/tests/terminal.rs.)

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Endpoint, Server, TIMEOUT};

#[test]
fn total_connection_limit() {
    let server = Server::start(&["--max-connections", "3"]);
    let mut a = server.connect("a", "r");
    let _b = server.connect("b", "r");
    let _c = Client::raw(server.addr);
    std::thread::sleep(Duration::from_millis(100));
    let mut d = Client::raw(server.addr);
    assert_eq!(d.line(), "*** error: server full: too many connections");
    assert!(d.closed());
    a.send("still served\n");
    a.until("a:still served");
}

#[test]
fn per_ip_connection_limit() {
    let server = Server::start(&["--max-per-ip", "2"]);
    let mut a = server.connect("a", "r");
    let _b = server.connect("b", "r");
    let mut c = Client::raw(server.addr);
    assert_eq!(
        c.line(),
        "*** error: too many connections from your address"
    );
    assert!(c.closed());
    drop(_b);
    // A place frees up when a connection closes.
    std::thread::sleep(Duration::from_millis(200));
    let _b2 = server.connect("b2", "r");
    a.send("ok\n");
    a.until("a:ok");
}

/// Runs the server with a hard limit of 64 descriptors, fills them, and checks that the accept
/// loop backs off instead of spinning, connected clients are still served, and new clients get
/// in once descriptors free up.
#[test]
fn running_out_of_descriptors_does_not_spin_or_stop_the_server() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_machat"),
    ]);
    let server = Server::start_with(cmd, &["--max-connections", "1000", "--http", "127.0.0.1:0"]);
    let mut first = server.connect("first", "r");
    let began = Instant::now();
    let mut extra: Vec<Client> = (0..80).map(|_| Client::raw(server.addr)).collect();
    // The web side's accept loop runs out too.
    let http = server.http.expect("http");
    extra.extend((0..10).map(|_| Client::raw(http)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.wait_log("accept failed"),
        "descriptors never ran out"
    );
    assert!(
        server.wait_log("http accept failed"),
        "the web side never ran out"
    );
    let cpu_before = server.cpu_secs();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = server.cpu_secs() - cpu_before;
    assert!(cpu < 0.5, "accept loop spun: {cpu} CPU seconds in 2 s");
    // Each loop retries every 50 ms but says so at most once a second (with how many it
    // held back): a line a second each, not twenty.
    let lines = |what: &str| {
        let log = server.log.lock().unwrap();
        log.iter().filter(|l| l.contains(what)).count()
    };
    let (all, web) = (lines("accept failed"), lines("http accept failed"));
    let most = began.elapsed().as_secs() as usize + 2;
    assert!(
        all - web <= most && web <= most,
        "{all} accept failures logged, {web} of them http, in {:?}",
        began.elapsed()
    );
    assert!(server.log_contains("held_back="));
    first.send("still here\n");
    first.until("first:still here");
    // Free descriptors: the server recovers and serves newcomers.
    extra.clear();
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + TIMEOUT;
    let mut late = loop {
        let mut c = Client::raw(server.addr);
        c.send(r#"{"name":"late","room":"r"}"#);
        match c.line_within(Duration::from_secs(2)) {
            Some(l) if l == "*** late joined" => break c,
            _ if Instant::now() < deadline => continue,
            other => panic!("no recovery: {other:?}"),
        }
    };
    late.send("made it\n");
    late.until("late:made it");
    assert!(server.wait_log("descriptor limit"));
}

#[test]
fn churn_and_silent_connections_leave_the_server_serving() {
    let server = Server::start(&[]);
    let mut a = server.connect("a", "r");
    for i in 0..2000 {
        let mut c = Client::raw(server.addr);
        if i % 2 == 0 {
            c.send(&format!("{{\"name\":\"c{i}\",\"room\":\"churn\"}}bye\n"));
        }
        // Every other client disconnects without a word, half-way through or before anything.
    }
    let silent: Vec<Client> = (0..1000).map(|_| Client::raw(server.addr)).collect();
    a.send("after the churn\n");
    a.until("a:after the churn");
    // The silent ones' address has --max-handshakes-per-ip (64) waiting: a newcomer from it is
    // refused at once with why, and one from another address is served.
    let mut same = Client::raw(server.addr);
    same.send(r#"{"name":"b","room":"r"}"#);
    same.expect("*** error: too many connections from your address waiting to start");
    let mut b = Client::raw_from(server.addr, [127, 0, 0, 2].into());
    b.send(r#"{"name":"b","room":"r"}"#);
    b.expect("*** b joined");
    b.send("hello\n");
    b.expect("b:hello");
    a.until("b:hello");
    drop(silent);
    // Rooms of departed clients are gone.
    std::thread::sleep(Duration::from_millis(500));
    a.send("/rooms\n");
    a.until("*** 1 room: r(2)");
}

#[test]
fn sigterm_tells_clients_flushes_and_exits_0() {
    for sig in ["-TERM", "-INT"] {
        let mut server = Server::start(&[]);
        let mut a = server.connect("a", "r");
        let mut j = Client::raw(server.addr);
        j.send(r#"{"name":"j","room":"r","format":"json"}"#);
        a.expect("*** j joined");
        a.send("last words\n");
        a.expect("a:last words");
        let start = Instant::now();
        server.signal(sig);
        a.expect("*** server shutting down");
        assert!(a.closed());
        let lines: Vec<String> =
            std::iter::from_fn(|| j.line_within(Duration::from_secs(5))).collect();
        assert_eq!(
            lines.last().map(String::as_str),
            Some(r#"{"type":"notice","text":"server shutting down"}"#)
        );
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still running after 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
        // New connections are refused once it is down.
        assert!(std::net::TcpStream::connect(server.addr).is_err());
    }
}

#[test]
fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    let mut server = Server::start(&["--max-line-rate", "0"]);
    let _never = server.connect("never", "r");
    let mut s = server.connect("s", "r");
    let line = format!("{}\n", "x".repeat(1000));
    for _ in 0..100 {
        s.send(&line.repeat(10));
        while s.line_within(Duration::from_millis(1)).is_some() {}
    }
    let start = Instant::now();
    server.signal("-TERM");
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(6), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

#[test]
fn logs_a_line_per_connect_and_disconnect_with_the_reason_and_none_per_message() {
    let server = Server::start(&[]);
    let mut a = server.connect("logme", "r");
    for i in 0..20 {
        a.send(&format!("message {i}\n"));
    }
    a.send("/quit\n");
    assert!(a.closed());
    assert!(server.wait_log("reason=quit"));
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.contains("INFO") && l.contains(" connect ")),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("message 1")),
        "a line per message: {log:?}"
    );
}

#[test]
fn listens_on_machat_addr_from_the_environment() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat"))
        .env("MACHAT_ADDR", "127.0.0.1:0")
        .env("MACHAT_HISTORY", "memory")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(pos) = line.find("listening on ") {
                let _ = tx.send(line[pos + 13..].trim().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    let addr = addr.expect("no listening line");
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":8989"),
        "{addr}"
    );
}
