//! `machat backup`, `machat export` and `machat import` against real servers: a backup taken
//! during a flood restores to a server that replays exactly what the copy holds and goes on
//! after it; an export imported into an empty dir exports the same bytes again and serves the
//! same history with the same ids; bad input stops an import with its line and writes nothing.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{temp_dir, Client, Endpoint, Server};
use serde_json::Value;

/// `machat ARGS` with `input` on stdin: exit status, stdout, stderr.
fn machat(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    // Written from a thread: a command that stops reading early must not block the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connects in JSON format with extra handshake fields; returns the client after its own join
/// and what came before it.
fn connect_json(server: &Server, name: &str, room: &str, extra: &str) -> (Client, Vec<Value>) {
    let mut c = Client::raw(server.addr());
    c.send(&format!(
        "{{\"name\":\"{name}\",\"room\":\"{room}\",\"format\":\"json\"{extra}}}"
    ));
    let mut before = Vec::new();
    loop {
        let v: Value = serde_json::from_str(&c.line()).expect("a JSON line");
        if v["type"] == "join" && v["name"] == name {
            return (c, before);
        }
        before.push(v);
    }
}

/// Every stored message of `room`, by resuming until a resume brings nothing more, as
/// (id, name, text).
fn replay(server: &Server, room: &str) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    for page in 0.. {
        let (mut c, before) = connect_json(
            server,
            &format!("pager{page}"),
            room,
            &format!(r#","since":{after}"#),
        );
        let msgs: Vec<(u64, String, String)> = before
            .iter()
            .filter(|v| v["type"] == "message" || v["type"] == "action")
            .map(|v| {
                (
                    v["id"].as_u64().unwrap(),
                    v["name"].as_str().unwrap().to_owned(),
                    v["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        c.send("/quit\n");
        let Some(last) = msgs.last() else { break };
        after = last.0;
        out.extend(msgs);
    }
    out
}

/// The messages of an export of `room`, as (id, name, text); and the room's last id.
fn exported(export: &str, room: &str) -> (Vec<(u64, String, String)>, u64) {
    let mut msgs = Vec::new();
    let mut last_id = 0;
    for line in export.lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        if v["room"] != room {
            continue;
        }
        match v.get("id") {
            Some(id) => msgs.push((
                id.as_u64().unwrap(),
                v["name"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )),
            None => last_id = v["last_id"].as_u64().unwrap(),
        }
    }
    (msgs, last_id)
}

/// Copies the files of `from` into `to` (created), as the README's restore says.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The id of the next message `c` (a JSON client in `room`) sends.
fn next_id(c: &mut Client, text: &str) -> u64 {
    c.send(&format!("{text}\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{text} never came back");
        let v: Value = serde_json::from_str(&c.line()).unwrap();
        if v["type"] == "message" && v["text"] == text {
            return v["id"].as_u64().unwrap();
        }
    }
}

#[test]
fn a_backup_during_a_flood_restores_to_the_same_history_and_goes_on_after_it() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let server = Server::start(&["--data-dir", &d, "--max-line-rate", "0"]);
    let sender = server.connect("sender", "r");
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let mut s = sender.stream.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(format!("c{i}\n").as_bytes()).is_err() {
                    break;
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let copy = temp_dir();
    let b = copy.to_str().unwrap().to_owned();
    let (code, _, err) = machat(&["backup", &b, "--data-dir", &d], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("history.db") && err.contains("bytes"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();

    // The copy is not written over without --force.
    let (code, _, err) = machat(&["backup", &b, "--data-dir", &d], "");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already exists"), "{err}");

    // What the copy holds: whole messages, ids from 1 with no gap, in the order sent.
    let (code, held, err) = machat(&["export", "--data-dir", &b], "");
    assert_eq!(code, Some(0), "{err}");
    let (held, _) = exported(&held, "r");
    assert!(held.len() > 20, "too little in the copy: {}", held.len());
    assert!((held.len() as u64) < sent, "the copy was taken mid-flood");
    for (i, (id, name, text)) in held.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1);
        assert_eq!(
            (name.as_str(), text.as_str()),
            ("sender", format!("c{i}").as_str())
        );
    }

    // Restored into an empty dir, a server replays exactly that, while the original runs on.
    let restored_dir = temp_dir();
    copy_dir(&copy, &restored_dir);
    let restored = Server::start(&["--data-dir", restored_dir.to_str().unwrap()]);
    assert_eq!(replay(&restored, "r"), held);
    assert!(restored.wait_log("restored from a backup"));
    // ... and goes on after the ids the original may have given since the copy.
    let (mut c, _) = connect_json(&restored, "Ann", "r", "");
    let last = held.last().unwrap().0;
    let id = next_id(&mut c, "after the restore");
    assert!(id > last, "{id} after {last}");
    let original_last = replay(&server, "r").last().unwrap().0;
    assert!(id > original_last, "{id} reuses an id the original gave");

    // A dir with no database has nothing to back up.
    let empty = temp_dir();
    let (code, _, err) = machat(
        &[
            "backup",
            &format!("{b}-none"),
            "--data-dir",
            empty.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing to back up"), "{err}");
    assert!(!Path::new(&format!("{b}-none")).exists());

    // Never into the data dir itself, --force or not.
    let (code, _, err) = machat(&["backup", &d, "--force", "--data-dir", &d], "");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is the data dir itself"), "{err}");

    // --force writes over the copy.
    let (code, _, err) = machat(&["backup", &b, "--force", "--data-dir", &d], "");
    assert_eq!(code, Some(0), "{err}");
    drop((c, restored, sender, server));
    for dir in [dir, copy, restored_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn export_then_import_keeps_every_message_and_id() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let server = Server::start(&["--data-dir", &d, "--max-line-rate", "0"]);
    let mut mina = server.connect("Mina", "lobby");
    for i in 1..=5 {
        mina.send(&format!("hello {i}, \"quoted\" é\n"));
    }
    mina.send("/me waves\n");
    mina.send("bye\n");
    mina.until("Mina:bye");
    // The last id given (7) is above the last one kept (6).
    mina.send("/delete 7\n");
    mina.until("*** Mina deleted message 7");
    let mut ann = server.connect("Ann", "dev");
    ann.send("first\n");
    ann.send("second\n");
    ann.until("Ann:second");

    // Exported while the server runs (once its last batch is committed: within 50 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, err) = loop {
        let (code, first, err) = machat(&["export", "--data-dir", &d], "");
        assert_eq!(code, Some(0), "{err}");
        if err.contains("exported 8 message(s) of 2 room(s)") {
            break (first, err);
        }
        assert!(Instant::now() < deadline, "never all stored: {err}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(err.contains("exported 8 message(s) of 2 room(s)"), "{err}");
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines[0], r#"{"room":"dev","last_id":2}"#);
    assert_eq!(lines[3], r#"{"room":"lobby","last_id":7}"#);
    let hello: Value = serde_json::from_str(lines[4]).unwrap();
    assert_eq!(hello["text"], "hello 1, \"quoted\" é");
    assert_eq!(hello["action"], false);
    assert!(hello["ts"].as_u64().unwrap() > 1_600_000_000_000, "{hello}");
    let keys: Vec<&str> = hello
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["room", "id", "ts", "name", "text", "action"]);
    assert!(first.contains(r#""text":"waves","action":true"#), "{first}");

    // Filters: one room, ids above 3.
    let (code, some, err) = machat(
        &[
            "export",
            "--room",
            "lobby",
            "--since",
            "3",
            "--data-dir",
            &d,
        ],
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    let ids: Vec<u64> = some
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_u64())
        .collect();
    assert_eq!(ids, [4, 5, 6]);
    assert!(
        some.lines().all(|l| l.contains(r#""room":"lobby""#)),
        "{some}"
    );

    // Imported into an empty dir: the same export again, byte for byte.
    let new_dir = temp_dir();
    let n = new_dir.to_str().unwrap().to_owned();
    let (code, _, err) = machat(&["import", "--data-dir", &n], &first);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("imported 8 message(s) of 2 room(s)"), "{err}");
    let (code, again, err) = machat(&["export", "--data-dir", &n], "");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(again, first);

    // Not into a dir that holds a database.
    let (code, _, err) = machat(&["import", "--data-dir", &n], &first);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not empty"), "{err}");

    // A server on it replays the same history with the same ids, and goes on after the last
    // id given (8 in the lobby: 7 was deleted, and is never given again).
    let imported = Server::start(&["--data-dir", &n]);
    for room in ["lobby", "dev"] {
        let (want, _) = exported(&first, room);
        assert_eq!(replay(&imported, room), want, "{room}");
    }
    let (mut c, _) = connect_json(&imported, "Bob", "lobby", "");
    let (_, last_id) = exported(&first, "lobby");
    assert_eq!(next_id(&mut c, "next"), last_id + 1);
    let (mut c, _) = connect_json(&imported, "Bob", "dev", "");
    assert_eq!(next_id(&mut c, "next"), 3);

    // A server running on a dir: import refuses it (it takes the lock).
    let running = temp_dir();
    let r = running.to_str().unwrap().to_owned();
    let busy = Server::start(&["--data-dir", &r]);
    let (code, _, err) = machat(&["import", "--data-dir", &r], &first);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("is in use by another machat (pid {})", busy.pid())),
        "{err}"
    );
    drop((mina, ann, c, server, imported, busy));
    for dir in [dir, new_dir, running] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_bad_line_stops_an_import_with_its_number_and_writes_nothing() {
    let good = concat!(
        r#"{"room":"r","last_id":2}"#,
        "\n",
        r#"{"room":"r","id":1,"ts":1700000000000,"name":"Mina","text":"hi","action":false}"#,
        "\n"
    );
    let cases = [
        (
            r#"{"room":"r","id":"x"}"#,
            "line 3: not a line of machat export",
        ),
        (
            r#"{"room":"r","id":1,"ts":1,"name":"Mina","text":"again","action":false}"#,
            "line 3: id 1 after id 1",
        ),
        (
            r#"{"room":"r","id":5,"ts":1,"name":"Mina","text":"x","action":false,"extra":1}"#,
            "line 3: not a line of machat export",
        ),
        (
            r#"{"room":"","id":5,"ts":1,"name":"Mina","text":"x","action":false}"#,
            "line 3: room \"\": not a room name",
        ),
        (
            r#"{"room":"r","id":18446744073709551615,"ts":1,"name":"M","text":"x","action":false}"#,
            "line 3: id 18446744073709551615 is out of range",
        ),
        ("not json at all", "line 3: not a line of machat export"),
    ];
    for (bad, want) in cases {
        let dir = temp_dir();
        let d = dir.to_str().unwrap();
        let (code, _, err) = machat(&["import", "--data-dir", d], &format!("{good}{bad}\n"));
        assert_eq!(code, Some(1), "{bad}: {err}");
        assert!(err.contains(want), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !dir.join("history.db").exists(),
            "{bad}: something was written"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    // A line far longer than any message is refused, not read into memory whole.
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    let huge = format!("{good}{}\n", "x".repeat(2 * 1024 * 1024));
    let (code, _, err) = machat(&["import", "--data-dir", d], &huge);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 3: longer than 1048576 bytes"), "{err}");
    assert!(!dir.join("history.db").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster keeps its history in JetStream: the data dir commands refuse `--nats` rather than
/// copy an empty directory that would look like a backup (no NATS server is needed to say so).
#[test]
fn the_data_dir_commands_refuse_a_cluster() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    for args in [vec!["backup", "somewhere"], vec!["export"], vec!["import"]] {
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--data-dir", d, "--nats", "nats://127.0.0.1:1"])
            .collect();
        let (code, out, err) = machat(&all, "");
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("a cluster's history is in JetStream"), "{err}");
        assert!(out.is_empty() && !dir.exists(), "{args:?} did something");
    }
}
