//! One data dir, one server: a second server on a directory in use stops before it opens a
//! database or listens, naming the first one's pid; a killed server's lock file blocks
//! nobody; a cluster node, which keeps nothing there, takes no lock. (The test harness gives
//! every server a directory of its own unless a test names one, and a test that restarts a
//! server on the same directory drops, that is kills and waits for, the old one first.)

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, Endpoint, Nats, Server};

/// Starts the binary on `dir` with `args` and waits (bounded) for it to stop by itself.
fn start_expecting_exit(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["-a", "127.0.0.1:0", "--http", "off", "--data-dir"])
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the second server kept running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_server_on_a_data_dir_in_use_refuses_to_start() {
    for mode in ["sqlite", "off"] {
        let dir = temp_dir();
        let d = dir.to_str().unwrap();
        let first = Server::start(&["--data-dir", d, "--history", mode]);
        let mut c = first.connect("Mina", "r");
        c.send("before\n");
        c.expect("Mina:before");

        let out = start_expecting_exit(&dir, &["--history", mode]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {err}");
        let want = format!(
            "machat: {d} is in use by another machat (pid {}); stop it or give another --data-dir",
            first.pid()
        );
        assert!(err.contains(&want), "{mode}: {err}");
        // Stopped before the database and before listening: no false crash report either.
        assert!(!err.contains("did not stop cleanly"), "{err}");
        assert!(!err.contains("listening on"), "{err}");
        assert!(!err.contains("history store open"), "{err}");

        // The first one goes on as before.
        c.send("after\n");
        c.expect("Mina:after");
        drop(c);
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_killed_servers_lock_file_blocks_nobody() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    // Sync durability: a message is on disk before anyone sees it, kill -9 or not.
    let mut first = Server::start(&["--data-dir", d, "--durability", "sync"]);
    let mut c = first.connect("Mina", "r");
    c.send("kept\n");
    c.expect("Mina:kept");
    let old_pid = first.pid();
    first.signal("-KILL");
    let _ = first.child.wait();
    assert_eq!(
        std::fs::read_to_string(dir.join("lock")).unwrap().trim(),
        old_pid.to_string(),
        "the dead server's file is still there"
    );

    let second = Server::start(&["--data-dir", d, "--history-on-join", "5"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("lock")).unwrap().trim(),
        second.pid().to_string()
    );
    let mut c = common::Client::raw(second.addr());
    c.send(r#"{"name":"Ann","room":"r"}"#);
    c.until("Mina:kept");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cluster_nodes_take_no_lock_on_their_data_dir() {
    let nats = Nats::start();
    let url = nats.url();
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    // Both nodes read (only) the same directory's registered names: both start.
    let a = Server::start(&["--nats", &url, "--data-dir", d]);
    let b = Server::start(&["--nats", &url, "--data-dir", d]);
    let mut ca = a.connect("Mina", "r");
    let mut cb = b.connect("Ann", "r");
    ca.until("*** Ann joined");
    cb.send("hello\n");
    ca.until("Ann:hello");
    assert!(!dir.join("lock").exists());
    drop((ca, cb, a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
