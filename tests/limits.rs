//! The abuse limits over real sockets: rooms in total, members per room, the idle timeout (TCP
//! and WebSocket) and the global cap on queued outbound bytes.

mod common;

use std::time::{Duration, Instant};

use common::app::App;
use common::{Client, Endpoint, Server};

#[test]
fn rooms_in_total_are_capped() {
    let server = App::with(|s| s.limits.max_rooms = 2);
    let mut a = server.connect("A", "r1");
    let _b = server.connect("B", "r2");
    common::expect_refused(
        &server,
        br#"{"name":"C","room":"r3"}"#,
        "too many rooms on this server (2)",
    );
    // An existing room still takes members, and a command that would make a room is refused
    // without ending the connection.
    let _c = server.connect("C", "r1");
    a.expect("*** C joined");
    a.send("/join r3\n");
    a.expect("*** error: too many rooms on this server (2)");
    a.send("still in r1\n");
    a.expect("A:still in r1");
}

#[test]
fn members_per_room_are_capped() {
    let server = App::with(|s| s.limits.max_room_members = 2);
    let mut a = server.connect("A", "small");
    let _b = server.connect("B", "small");
    a.expect("*** B joined");
    common::expect_refused(
        &server,
        br#"{"name":"C","room":"small"}"#,
        "room small is full (2 members)",
    );
    let mut c = server.connect("C", "other");
    c.send("/join small\n");
    c.expect("*** error: room small is full (2 members)");
    a.send("hi\n");
    a.expect("A:hi");
}

#[test]
fn silent_clients_are_disconnected_after_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "1"]);
    let mut silent = server.connect("Silent", "idle");
    let mut busy = server.connect("Busy", "idle");
    silent.expect("*** Busy joined");
    let start = Instant::now();
    // Busy sends every 300 ms and stays; Silent only reads, and goes.
    let mut left = false;
    while start.elapsed() < Duration::from_millis(2500) {
        busy.send("tick\n");
        while let Some(l) = busy.line_within(Duration::from_millis(300)) {
            left |= l == "*** Silent left";
        }
    }
    assert!(left, "Silent was not disconnected");
    let rest = String::from_utf8_lossy(&silent.rest()).into_owned();
    assert!(rest.ends_with("*** error: idle timeout\n"), "{rest:?}");
    busy.send("still here\n");
    busy.until("Busy:still here");
    // Off by default: an old MaChat client may listen for hours.
    let server = Server::start(&[]);
    let mut quiet = server.connect("Quiet", "idle");
    assert!(quiet.quiet_for(Duration::from_millis(1500)));
    quiet.send("hi\n");
    quiet.expect("Quiet:hi");
}

#[test]
fn queued_bytes_over_the_global_cap_cut_the_largest_queues_first() {
    // Each member may fall 4 MiB behind, but all together only 1 MiB may wait.
    let server = Server::start(&[
        "--max-pending",
        "4194304",
        "--max-queued-total",
        "1048576",
        "--max-line-rate",
        "0",
    ]);
    let mut sender = server.connect("Sender", "big");
    let mut lazy = Vec::new();
    for i in 0..3 {
        let mut c = Client::raw(server.addr);
        c.send(&format!("{{\"name\":\"Lazy{i}\",\"room\":\"big\"}}"));
        // Read the own join so the connection is in; then never read again.
        c.expect(&format!("*** Lazy{i} joined"));
        sender.expect(&format!("*** Lazy{i} joined"));
        lazy.push(c);
    }
    let line = "q".repeat(4000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = 0;
    while left < 3 {
        for _ in 0..10 {
            sender.send(&format!("{line}\n"));
        }
        for _ in 0..10 {
            // The sender reads its own lines (and the leaves), so it never falls behind.
            loop {
                let l = sender.line();
                if l.starts_with("*** Lazy") && l.ends_with(" left") {
                    left += 1;
                } else {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "only {left} cut off");
    }
    // The enforcer logs after the cuts (and the leaves they send), and stderr is read by a
    // thread of the harness: wait for the line rather than race it.
    let logged = server.wait_log("server over --max-queued-total");
    let cuts: Vec<String> = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("cut off") || l.contains("queued") || l.contains("disconnect"))
        .cloned()
        .collect();
    assert!(logged, "{cuts:#?}");
    assert!(!server.log_contains("more than --max-pending behind"));
    sender.send("after\n");
    sender.until("Sender:after");
    drop(lazy);
}
