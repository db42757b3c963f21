//! Cluster mode with real processes: a `nats-server -js` on an ephemeral loopback port and two
//! or three machat nodes on it, with TCP, JSON and WebSocket clients on different nodes.

mod common;

use std::time::{Duration, Instant};

use common::ws::*;
use common::{Client, Endpoint, Nats, Server, TIMEOUT};
use serde_json::Value;

/// Runs `f` with a JetStream context on `nats` of its own: another program with access to NATS.
fn with_jetstream<F, Fut>(nats: &Nats, f: F)
where
    F: FnOnce(async_nats::jetstream::Context) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let url = nats.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        f(async_nats::jetstream::new(client)).await;
    });
}

fn node(nats: &Nats, args: &[&str]) -> Server {
    let url = nats.url();
    let mut all = vec!["--nats", url.as_str()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A JSON client that joined (asking for `extra` handshake fields too).
fn json_join(server: &Server, name: &str, room: &str, extra: &str) -> Client {
    let mut c = Client::raw(server.addr);
    c.send(&format!(
        "{{\"name\":\"{name}\",\"room\":\"{room}\",\"format\":\"json\"{extra}}}"
    ));
    c
}

/// JSON lines until one matches; returns those before it.
fn json_until(c: &mut Client, mut want: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let l = c
            .line_within(TIMEOUT)
            .unwrap_or_else(|| panic!("timed out after {seen:?}"));
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        if want(&v) {
            return seen;
        }
        seen.push(v);
    }
}

/// The (id, name, text) of the messages among `events`.
fn messages(events: &[Value]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| {
            (
                v["id"].as_u64().unwrap_or(0),
                v["name"].as_str().unwrap_or("").to_owned(),
                v["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn is_text(v: &Value, text: &str) -> bool {
    v["type"] == "message" && v["text"] == text
}

#[test]
fn rooms_span_nodes_with_one_order_on_every_node() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &["--http", "127.0.0.1:0"]);
    let c = node(&nats, &[]);
    let mut tom = a.connect("Tom", "r");
    let mut wes = ws_join(&b, "Wes", "r");
    let mut jay = json_join(&c, "Jay", "r", "");
    json_until(&mut jay, |v| v["type"] == "join" && v["name"] == "Jay");
    // Everyone hears of the others' joins, wherever they joined.
    tom.until("*** Jay joined");
    until(&mut wes, |v| v["type"] == "join" && v["name"] == "Jay");
    // Three senders on three nodes, interleaved as fast as they can.
    for i in 0..20 {
        tom.send(&format!("tom {i}\n"));
        send(&mut wes, &format!("wes {i}"));
        jay.send(&format!("jay {i}\n"));
    }
    tom.send("tom done\n");
    send(&mut wes, "wes done");
    jay.send("jay done\n");
    let mut seen_jay = Vec::new();
    let mut seen_wes = Vec::new();
    let mut text_tom = Vec::new();
    // Read until each has all three "done" lines.
    for _ in 0..3 {
        seen_jay.extend(json_until(&mut jay, |v| {
            v["type"] == "message" && v["text"].as_str().is_some_and(|t| t.ends_with("done"))
        }));
        seen_wes.extend(until(&mut wes, |v| {
            v["type"] == "message" && v["text"].as_str().is_some_and(|t| t.ends_with("done"))
        }));
        loop {
            let l = tom.line();
            if l.ends_with(" done") {
                break;
            }
            text_tom.push(l);
        }
    }
    let (mj, mw) = (messages(&seen_jay), messages(&seen_wes));
    assert_eq!(mj.len(), 60, "{mj:?}");
    assert_eq!(mj, mw, "JSON on C and WebSocket on B disagree");
    // Ids are the stream's sequence: they only grow.
    assert!(mj.windows(2).all(|w| w[0].0 < w[1].0), "{mj:?}");
    // The text client on A saw the same order, as NAME:text lines.
    let tom_msgs: Vec<String> = text_tom
        .into_iter()
        .filter(|l| !l.starts_with("***"))
        .collect();
    let want: Vec<String> = mj
        .iter()
        .map(|(_, name, text)| format!("{name}:{text}"))
        .collect();
    assert_eq!(tom_msgs, want);
    // Leaving is heard on the other nodes.
    tom.send("/quit\n");
    json_until(&mut jay, |v| v["type"] == "leave" && v["name"] == "Tom");
}

#[test]
fn history_resume_and_the_api_from_any_node() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &["--http", "127.0.0.1:0"]);
    let mut mina = json_join(&a, "Mina", "hist", "");
    json_until(&mut mina, |v| v["type"] == "join");
    for i in 1..=5 {
        mina.send(&format!("m{i}\n"));
        let v = json_until(&mut mina, |v| is_text(v, &format!("m{i}")));
        assert!(messages(&v).is_empty());
    }
    mina.send("/me waves\n");
    json_until(&mut mina, |v| v["type"] == "action");
    // A late joiner on B asks for the last 3: served from JetStream.
    let mut bob = b.connect_with("Bob", "hist", r#","history":3"#);
    let replay = bob.until("*** Bob joined");
    assert_eq!(
        replay,
        [
            "*** history: 3 messages",
            "Mina:m4",
            "Mina:m5",
            "* Mina waves",
            "*** end of history"
        ]
    );
    // /history on B.
    bob.send("/history 2\n");
    let h = bob.until("*** end of history");
    assert_eq!(h, ["*** history: 2 messages", "Mina:m5", "* Mina waves"]);
    let (_, health) = get_json(b.http.expect("http"), "/healthz");
    assert_eq!(
        health,
        serde_json::json!({"status":"ok","history":"ok","cluster":"connected"})
    );
    // The HTTP API on B, and a resume by id on B after the first two.
    let (status, body) = get_json(b.http.expect("http"), "/api/rooms/hist/messages");
    assert_eq!(status, 200, "{body}");
    let list = body["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 6, "{body}");
    let second = list[1]["id"].as_u64().expect("id");
    // The largest id a client can name is no error and no wrap-around: nothing comes after it.
    let (status, body) = get_json(
        b.http.expect("http"),
        &format!("/api/rooms/hist/messages?since={}", u64::MAX),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], serde_json::json!([]), "{body}");
    let mut res = json_join(&b, "Res", "hist", &format!(r#","since":{second}"#));
    let got = json_until(&mut res, |v| v["type"] == "end_of_history");
    assert_eq!(got[0]["type"], "history");
    assert_eq!(got[0]["count"], 4, "{got:?}");
    let texts: Vec<&str> = got[1..].iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(texts, ["m3", "m4", "m5", "waves"]);
    let resumed_ids: Vec<u64> = got[1..].iter().filter_map(|v| v["id"].as_u64()).collect();
    let api_ids: Vec<u64> = list[2..].iter().filter_map(|v| v["id"].as_u64()).collect();
    assert_eq!(resumed_ids, api_ids);
    // Live traffic continues after the replay with no gap and no duplicate.
    mina.send("m6\n");
    let after = json_until(&mut res, |v| is_text(v, "m6"));
    assert!(messages(&after).is_empty(), "{after:?}");
}

#[test]
fn names_are_unique_across_nodes_and_who_and_rooms_are_cluster_wide() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut mina = a.connect("Mina", "uniq");
    // The same name on another node is refused, as on one node.
    let mut dup = Client::raw(b.addr);
    dup.send(r#"{"name":"Mina","room":"uniq"}"#);
    assert_eq!(
        dup.line(),
        "*** error: name Mina is already taken in room uniq"
    );
    assert!(dup.closed());
    // Another room is fine.
    let _elsewhere = b.connect("Mina", "other");
    let mut bob = b.connect("Bob", "uniq");
    mina.until("*** Bob joined");
    // /who and /rooms on B show members on A.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        bob.send("/who\n");
        let who = bob.line();
        if who == "*** 2 in uniq: Bob Mina" {
            break;
        }
        assert!(Instant::now() < deadline, "{who}");
        std::thread::sleep(Duration::from_millis(50));
    }
    bob.send("/rooms\n");
    assert_eq!(bob.line(), "*** 2 rooms: uniq(2) other(1)");
    // /nick to a name held on the other node is refused; a free one is taken.
    bob.send("/nick Mina\n");
    assert_eq!(
        bob.line(),
        "*** error: name Mina is already taken in this room"
    );
    bob.send("/nick Bobby\n");
    mina.until("*** Bob is now Bobby");
    // Once Mina quits on A, her name is free on B; Bob's old name is free too.
    mina.send("/quit\n");
    bob.until("*** Mina left");
    let _mina_b = b.connect("Mina", "uniq");
    let _bob_a = a.connect("Bob", "uniq");
}

#[test]
fn a_killed_node_frees_its_names_and_its_clients_resume_elsewhere() {
    let nats = Nats::start();
    let a = node(&nats, &["--presence-ttl", "3"]);
    let b = node(&nats, &["--presence-ttl", "3"]);
    let c = node(&nats, &["--presence-ttl", "3"]);
    let mut reader = json_join(&a, "Reader", "fail", "");
    json_until(&mut reader, |v| {
        v["type"] == "join" && v["name"] == "Reader"
    });
    // A join on another node may come after other joins it has not shown yet: wait for ours.
    let mut sender = c.connect_with("Sender", "fail", "");
    sender.until("*** Sender joined");
    let mut last = 0;
    for i in 0..10 {
        sender.send(&format!("s{i}\n"));
        let v = json_until(&mut reader, |v| is_text(v, &format!("s{i}")));
        assert!(messages(&v).is_empty());
        last = i;
    }
    let last_id = {
        sender.send("mark\n");
        let mut id = 0;
        json_until(&mut reader, |v| {
            id = v["id"].as_u64().unwrap_or(0);
            is_text(v, "mark")
        });
        id
    };
    assert!(last == 9 && last_id > 0);
    a.signal("-KILL");
    // Its name is held by the dead node until the TTL passes (at least 2 s from now: it was
    // rewritten at most a third of the 3 s TTL ago): refused meanwhile.
    let mut early = json_join(&b, "Reader", "fail", "");
    let refused: Value = serde_json::from_str(&early.line()).expect("json");
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(refused["reason"]
        .as_str()
        .unwrap_or("")
        .contains("already taken"));
    // While A is dead, the room goes on, and once the name lapses the surviving nodes tell the
    // room that the reader left, once, though both B and C notice.
    for i in 10..20 {
        sender.send(&format!("s{i}\n"));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut transcript = Vec::new();
    while !(transcript.iter().any(|l| l == "Sender:s19")
        && transcript.iter().any(|l| l == "*** Reader left"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = sender.line_within(left);
        transcript.push(
            line.unwrap_or_else(|| panic!("no goodbye for the dead node's member: {transcript:?}")),
        );
    }
    // The reader comes back on B with its last id.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut back, replay) = loop {
        let mut c = json_join(&b, "Reader", "fail", &format!(r#","since":{last_id}"#));
        let first = c.line_within(TIMEOUT).expect("an answer");
        let v: Value = serde_json::from_str(&first).expect("json");
        if v["type"] == "history" {
            let rest = json_until(&mut c, |v| v["type"] == "end_of_history");
            break (c, rest);
        }
        assert_eq!(v["type"], "error", "{v}");
        assert!(v["reason"].as_str().unwrap_or("").contains("already taken"));
        assert!(
            Instant::now() < deadline,
            "the dead node's name never freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let texts: Vec<String> = messages(&replay).into_iter().map(|m| m.2).collect();
    let want: Vec<String> = (10..20).map(|i| format!("s{i}")).collect();
    assert_eq!(texts, want, "missed or duplicated across the failover");
    sender.send("live\n");
    let between = json_until(&mut back, |v| is_text(v, "live"));
    assert!(messages(&between).is_empty(), "{between:?}");
    transcript.extend(sender.until("Sender:live"));
    let about_reader: Vec<&String> = transcript.iter().filter(|l| l.contains("Reader")).collect();
    assert_eq!(
        about_reader,
        ["*** Reader left", "*** Reader joined"],
        "{transcript:?}"
    );
}

#[test]
fn a_nats_outage_delivers_or_refuses_every_message_and_nodes_reconnect() {
    let mut nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &["--http", "127.0.0.1:0"]);
    let mut ann = a.connect("Ann", "out");
    let mut bob = b.connect("Bob", "out");
    ann.until("*** Bob joined");
    ann.send("before\n");
    bob.until("Ann:before");
    ann.until("Ann:before");
    nats.stop();
    assert!(a.wait_log("lost NATS"));
    ann.send("during\n");
    // Refused at once: NATS is known to be gone.
    let refusal = ann.line();
    assert!(
        refusal.starts_with("*** error: message not sent"),
        "{refusal}"
    );
    // Nor can a private message reach Bob, who is on the other node: Ann is told so, and gets
    // no copy as if it had gone.
    ann.send("/msg Bob hush\n");
    assert_eq!(
        ann.line(),
        "*** error: message not sent: the cluster is unavailable, try again"
    );
    // A join cannot be confirmed either.
    let mut late = Client::raw(b.addr);
    late.send(r#"{"name":"Late","room":"out"}"#);
    let l = late.line();
    assert!(
        l.starts_with("*** error: the cluster is unavailable"),
        "{l}"
    );
    assert!(b.wait_log("lost NATS"));
    let (status, health) = get_json(b.http.expect("http"), "/healthz");
    assert_eq!(status, 200);
    assert_eq!(health["cluster"], "disconnected", "{health}");
    assert_eq!(health["history"], "unavailable", "{health}");
    nats.restart();
    // Nodes reconnect by themselves. Until they have, a message may be refused; every one that
    // is not refused must arrive, once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    let through = loop {
        sent += 1;
        ann.send(&format!("after {sent}\n"));
        if let Some(l) = bob.line_within(Duration::from_millis(300)) {
            break l;
        }
        assert!(Instant::now() < deadline, "no recovery");
    };
    assert!(through.starts_with("Ann:after "), "{through}");
    ann.send("final\n");
    let mut bob_saw = vec![through];
    bob_saw.extend(bob.until("Ann:final"));
    let ann_saw = ann.until("Ann:final");
    let refused = ann_saw
        .iter()
        .filter(|l| l.starts_with("*** error:"))
        .count();
    let echoed: Vec<&String> = ann_saw.iter().filter(|l| l.starts_with("Ann:")).collect();
    assert_eq!(refused + echoed.len(), sent, "{ann_saw:?}");
    let bob_msgs: Vec<&String> = bob_saw.iter().filter(|l| l.starts_with("Ann:")).collect();
    assert_eq!(bob_msgs, echoed);
    // The history from before the outage survived NATS's restart.
    let mut h = b.connect_with("Hist", "out", r#","history":100"#);
    let replay = h.until("*** Hist joined");
    assert_eq!(replay[1], "Ann:before", "{replay:?}");
    assert!(!replay.contains(&"Ann:during".to_string()), "{replay:?}");
    // The nodes' view of who is where came back too.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        ann.send("/who\n");
        let who = loop {
            let l = ann.line();
            if l.contains(" in out: ") {
                break l;
            }
        };
        if who == "*** 3 in out: Ann Bob Hist" {
            break;
        }
        assert!(Instant::now() < deadline, "{who:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_that_stops_cleanly_says_goodbye_and_frees_its_names_at_once() {
    let nats = Nats::start();
    // A TTL far longer than the test: the names must be given back, not expire.
    let a = node(&nats, &["--presence-ttl", "600"]);
    let b = node(&nats, &["--presence-ttl", "600"]);
    let mut ann = a.connect("Ann", "bye");
    let mut bob = b.connect_with("Bob", "bye", "");
    bob.until("*** Bob joined");
    ann.until("*** Bob joined");
    a.signal("-TERM");
    let rest = String::from_utf8_lossy(&ann.rest()).into_owned();
    assert!(rest.contains("*** server shutting down"), "{rest:?}");
    bob.until("*** Ann left");
    let mut again = b.connect_with("Ann", "bye", "");
    again.until("*** Ann joined");
}

#[test]
fn nats_credentials_come_from_the_url_and_stay_out_of_the_log() {
    let nats = Nats::start_with(&["--user", "machat", "--pass", "s3cret-pw"]);
    let good = format!("nats://machat:s3cret-pw@127.0.0.1:{}", nats.port);
    let a = Server::start(&["--nats", &good]);
    let b = Server::start(&["--nats", &good]);
    let mut ann = a.connect("Ann", "auth");
    let mut bob = b.connect_with("Bob", "auth", "");
    bob.until("*** Bob joined");
    ann.send("hi\n");
    bob.until("Ann:hi");
    assert!(a.wait_log("cluster mode: joined"));
    assert!(!a.log_contains("s3cret-pw"), "{:?}", a.log.lock().unwrap());
    // A wrong password stops the start, with a clear error and still no password in it.
    let bad = format!("nats://machat:wrong-pw@127.0.0.1:{}", nats.port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["-a", "127.0.0.1:0", "--http", "off", "--nats", &bad])
        .output()
        .expect("run machat");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use NATS at nats://***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("wrong-pw"), "{err}");
}

#[test]
fn what_others_write_to_the_stream_is_checked_before_any_client_sees_it() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let mut ann = a.connect("Ann", "forge");
    // Someone else with access to NATS writes to the room's subjects.
    with_jetstream(&nats, |js| async move {
        let subject = format!(
            "machat.room.{}.m",
            "forge"
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        for payload in [
            "not json".to_string(),
            r#"{"type":"message","name":"Mina","text":"\u001b[2Jwiped","ts":1}"#.into(),
            r#"{"type":"message","name":"a:b","text":"fake","ts":1}"#.into(),
            r#"{"type":"message","name":"Ann","text":"","ts":1}"#.into(),
            r#"{"type":"unknown","ts":1}"#.into(),
            r#"{"type":"message","name":"Mina","text":"fine","ts":1}"#.into(),
        ] {
            js.publish(subject.clone(), payload.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    });
    // Only the well-formed one arrives, and the node keeps serving.
    assert_eq!(ann.line(), "Mina:fine");
    ann.send("still here\n");
    ann.expect("Ann:still here");
    let mut h = a.connect_with("Hist", "forge", r#","history":10"#);
    let replay = h.until("*** Hist joined");
    assert_eq!(
        replay,
        [
            "*** history: 2 messages",
            "Mina:fine",
            "Ann:still here",
            "*** end of history"
        ]
    );
}

#[test]
fn the_last_messages_of_a_long_history_interleaved_with_other_rooms() {
    let nats = Nats::start();
    let a = node(&nats, &["--max-line-rate", "0"]);
    let b = node(&nats, &[]);
    let mut long = a.connect("Long", "long");
    let mut other = a.connect("Other", "other");
    // 1,500 messages in one room, every third one with a message of another room between.
    let mut batch = String::new();
    for i in 1..=1500 {
        batch.push_str(&format!("l{i}\n"));
        if i % 3 == 0 {
            other.send(&format!("o{i}\n"));
        }
    }
    long.send(&batch);
    long.until("Long:l1500");
    other.until("Other:o1500");
    for n in [1, 3, 50] {
        let name = format!("Late{n}");
        let mut late = b.connect_with(&name, "long", &format!(r#","history":{n}"#));
        let replay = late.until(&format!("*** {name} joined"));
        let want: Vec<String> = (1501 - n..=1500).map(|i| format!("Long:l{i}")).collect();
        assert_eq!(replay.len(), n + 2, "{replay:?}");
        assert_eq!(replay[1..=n], want[..], "history {n}");
    }
    long.send("/history 5\n");
    long.until("*** history: 5 messages");
    let h = long.until("*** end of history");
    assert_eq!(
        h,
        [
            "Long:l1496",
            "Long:l1497",
            "Long:l1498",
            "Long:l1499",
            "Long:l1500"
        ]
    );
}

/// `machat user ARGS --nats URL` with `input` on stdin: success, stdout, stderr.
fn user_cmd(nats: &Nats, args: &[&str], input: &str) -> (bool, String, String) {
    let url = nats.url();
    let all: Vec<&str> = args.iter().copied().chain(["--nats", &url]).collect();
    let (status, out, err) = common::machat_user(&all, input);
    (status == Some(0), out, err)
}

#[test]
fn names_registered_for_the_cluster_need_their_password_on_every_node() {
    let nats = Nats::start();
    // Registered before any node starts: each reads the cluster's names at start, though its
    // own data directory has none.
    let (ok, _, err) = user_cmd(&nats, &["add", "Mina"], "s3cret\n");
    assert!(ok, "{err}");
    assert!(err.contains("registered in the cluster"), "{err}");
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    for n in [&a, &b] {
        let mut c = Client::raw(n.addr);
        c.send(r#"{"name":"Mina","room":"reg"}"#);
        assert_eq!(
            c.line(),
            "*** error: name Mina is registered: send its password"
        );
        assert!(c.closed());
    }
    let mut mina = b.connect_with("Mina", "reg", r#","password":"s3cret""#);
    mina.expect("*** Mina joined");

    // Registered while the nodes run: followed at once, on every node; /nick cannot take it.
    let mut bob = a.connect("Bob", "reg");
    let (ok, _, err) = user_cmd(&nats, &["add", "Zed"], "pw\n");
    assert!(ok, "{err}");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        bob.send("/nick Zed\n");
        let l = bob.line();
        if l == "*** error: name Zed needs a password: reconnect with it" {
            break;
        }
        assert_eq!(l, "*** Bob is now Zed", "unexpected answer");
        bob.send("/nick Bob\n");
        bob.expect("*** Zed is now Bob");
        assert!(Instant::now() < deadline, "node A never saw Zed registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, err) = user_cmd(&nats, &["list"], "");
    assert!(ok, "{err}");
    assert_eq!(out, "Mina\nZed\n");

    // Removed: free again on every node (the first try may race the removal reaching B).
    let (ok, _, err) = user_cmd(&nats, &["remove", "Zed"], "");
    assert!(ok, "{err}");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::raw(b.addr);
        c.send(r#"{"name":"Zed","room":"other"}"#);
        let l = c.line();
        if l == "*** Zed joined" {
            break;
        }
        assert_eq!(l, "*** error: name Zed is registered: send its password");
        assert!(Instant::now() < deadline, "node B never saw Zed removed");
    }
    let (ok, _, err) = user_cmd(&nats, &["remove", "Zed"], "");
    assert!(!ok && err.contains("not registered"), "{err}");
}

/// One person, many connections, across nodes: Mina in a browser tab on node B and a program
/// on node A is one member of the room on both nodes.
#[test]
fn a_person_connected_on_two_nodes_is_one_member() {
    let nats = Nats::start();
    let (ok, _, err) = user_cmd(&nats, &["add", "Mina"], "pw\n");
    assert!(ok, "{err}");
    let a = node(&nats, &[]);
    let b = node(&nats, &["--http", "127.0.0.1:0"]);
    let mut bob = a.connect("Bob", "r");
    let mut wes = ws_join(&b, "Wes", "r");
    bob.until("*** Wes joined");

    let mut tab = ws_open(&b);
    send(&mut tab, r#"{"name":"Mina","room":"r","password":"pw"}"#);
    until(&mut tab, |v| v["type"] == "join" && v["name"] == "Mina");
    bob.expect("*** Mina joined");
    until(&mut wes, |v| v["type"] == "join" && v["name"] == "Mina");
    let mut app = json_join(&a, "Mina", "r", r#","password":"pw""#);
    json_until(&mut app, |v| v["type"] == "join" && v["name"] == "Mina");
    // The second node's connection is no news to either node: the next lines are messages.
    bob.send("hello\n");
    bob.expect("Bob:hello");
    let before = until(&mut wes, |v| is_text(v, "hello"));
    assert!(before.is_empty(), "{before:?}");
    until(&mut tab, |v| is_text(v, "hello"));
    json_until(&mut app, |v| is_text(v, "hello"));

    // What one connection sends, the other one and everyone else sees, on both nodes.
    send(&mut tab, "from the tab");
    bob.expect("Mina:from the tab");
    json_until(&mut app, |v| is_text(v, "from the tab"));
    until(&mut wes, |v| is_text(v, "from the tab"));
    app.send("from the app\n");
    bob.expect("Mina:from the app");
    until(&mut tab, |v| is_text(v, "from the app"));
    until(&mut wes, |v| is_text(v, "from the app"));

    // One member in /who and /rooms on either node.
    bob.send("/who\n");
    bob.expect("*** 3 in r: Bob Mina Wes");
    bob.send("/rooms\n");
    bob.expect("*** 1 room: r(3)");
    send(&mut wes, "/who");
    let who = frame(&mut wes);
    assert_eq!(
        who["members"],
        serde_json::json!(["Bob", "Mina", "Wes"]),
        "{who}"
    );
    send(&mut wes, "/rooms");
    let rooms = frame(&mut wes);
    assert_eq!(
        rooms["rooms"],
        serde_json::json!([{"room": "r", "members": 3}]),
        "{rooms}"
    );

    // The tab closes: Mina stays (through node A). The app leaves too: now Mina has left,
    // once, on both nodes.
    drop(tab);
    assert!(b.wait_log("name=Mina room=r reason="));
    bob.send("still\n");
    bob.expect("Bob:still");
    let seen = until(&mut wes, |v| is_text(v, "still"));
    assert!(seen.is_empty(), "{seen:?}");
    drop(app);
    bob.expect("*** Mina left");
    until(&mut wes, |v| v["type"] == "leave" && v["name"] == "Mina");
    bob.send("after\n");
    bob.expect("Bob:after");
    let seen = until(&mut wes, |v| is_text(v, "after"));
    assert!(seen.is_empty(), "a second leave: {seen:?}");
    bob.send("/who\n");
    bob.expect("*** 2 in r: Bob Wes");
}

/// Version 2 in a cluster: a connection in two rooms on node a, whose joins wait for the
/// cluster's claims; members on node b see it in both, a taken name is refused for one room
/// only, and each room keeps the cluster's ids.
#[test]
fn a_version_2_connection_in_two_rooms_spans_nodes() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut bob = b.connect("Bob", "one");
    let mut cat = b.connect("Cat", "two");
    let mut mina_two = b.connect("Mina", "three");
    let mut mina = Client::raw(a.addr);
    mina.send(r#"{"name":"Mina","version":2}"#);
    let welcome: Value = serde_json::from_str(&mina.line()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    for room in ["one", "two", "three"] {
        mina.send(&format!(
            "{{\"type\":\"join\",\"room\":\"{room}\",\"req\":\"{room}\"}}\n"
        ));
    }
    // The claims are answered in order: one and two are Mina's, three is taken on node b.
    for room in ["one", "two"] {
        let mut answer = Value::Null;
        json_until(&mut mina, |v| {
            answer = v.clone();
            v["req"] == room
        });
        assert_eq!(answer["type"], "ok", "join {room}: {answer}");
    }
    let refused = json_until(&mut mina, |v| v["type"] == "error" && v["req"] == "three");
    assert!(refused.iter().all(|v| v["room"] != "three"), "{refused:?}");
    bob.until("*** Mina joined");
    cat.until("*** Mina joined");
    for room in ["one", "two"] {
        mina.send(&format!(
            "{{\"type\":\"say\",\"room\":\"{room}\",\"text\":\"hi {room}\",\"req\":\"s{room}\"}}\n"
        ));
        // In a cluster the ok says the message was handed over; the message (with the id the
        // cluster gave it) comes when the cluster delivers it, after the ok.
        let before = json_until(&mut mina, |v| {
            v["type"] == "ok" && v["req"] == format!("s{room}")
        });
        assert!(before.iter().all(|v| v["type"] != "error"), "{before:?}");
        let text = format!("hi {room}");
        json_until(&mut mina, |v| {
            is_text(v, &text) && v["room"] == room && v["id"].is_u64()
        });
    }
    bob.until("Mina:hi one");
    cat.until("Mina:hi two");
    bob.send("from b\n");
    let seen = json_until(&mut mina, |v| is_text(v, "from b"));
    assert!(seen.iter().all(|v| v["room"] != "three"));
    mina_two.send("/who\n");
    mina_two.until("*** 1 in three: Mina");
    drop(mina);
    bob.until("*** Mina left");
    cat.until("*** Mina left");
}

/// A version-2 `nick` claims the new name in each of the connection's rooms across the
/// cluster: a name another node holds in one room renames it nowhere; a free one renames it in
/// every room, seen on the other node.
#[test]
fn a_version_2_nick_spans_nodes() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut bob = b.connect("Bob", "one");
    let mut cat = b.connect("Cat", "two");
    let _rex = b.connect("Rex", "two");
    let mut mina = Client::raw(a.addr);
    mina.send(r#"{"name":"Mina","version":2}"#);
    json_until(&mut mina, |v| v["type"] == "welcome");
    for room in ["one", "two"] {
        mina.send(&format!(
            "{{\"type\":\"join\",\"room\":\"{room}\",\"req\":\"{room}\"}}\n"
        ));
        json_until(&mut mina, |v| v["type"] == "ok" && v["req"] == room);
    }
    bob.until("*** Mina joined");
    cat.until("*** Mina joined");

    // Rex is on node b, in room two only: node a's room does not know; the cluster does.
    mina.send("{\"type\":\"nick\",\"name\":\"Rex\",\"req\":\"n1\"}\n");
    let mut answer = Value::Null;
    json_until(&mut mina, |v| {
        answer = v.clone();
        v["req"] == "n1"
    });
    assert_eq!(
        answer["reason"], "name Rex is already taken in room two",
        "{answer}"
    );
    // Rex's claim in room one was given back: another Rex can join it (once the cluster
    // has the release).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut rex = Client::raw(b.addr);
        rex.send(r#"{"name":"Rex","room":"one"}"#);
        if rex.line().ends_with("Rex joined") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Rex's claim in one was never given back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bob.until("*** Rex joined");

    mina.send("{\"type\":\"nick\",\"name\":\"Minnie\",\"req\":\"n2\"}\n");
    let before = json_until(&mut mina, |v| v["req"] == "n2" && v["type"] == "ok");
    assert!(before.iter().all(|v| v["type"] != "error"), "{before:?}");
    // Each room's `nick` event comes when the cluster delivers it, before or after the ok.
    let mut renamed = before.iter().filter(|v| v["type"] == "nick").count();
    while renamed < 2 {
        let seen = json_until(&mut mina, |v| v["type"] == "nick" && v["new"] == "Minnie");
        assert!(seen.iter().all(|v| v["type"] != "error"), "{seen:?}");
        renamed += 1;
    }
    bob.until("*** Mina is now Minnie");
    cat.until("*** Mina is now Minnie");
    mina.send("{\"type\":\"say\",\"room\":\"one\",\"text\":\"hi\"}\n");
    bob.until("Minnie:hi");
}

/// Private messages cross nodes: to a member on another node, and to every connection of a
/// person on either node (the sender's own copies included).
#[test]
fn private_messages_reach_members_and_persons_on_other_nodes() {
    let nats = Nats::start();
    let (ok, _, err) = user_cmd(&nats, &["add", "Mina"], "pw\n");
    assert!(ok, "{err}");
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut tom = a.connect("Tom", "r");
    let mut bob = b.connect("Bob", "r");
    tom.until("*** Bob joined");
    // A guest to a guest on the other node.
    tom.send("/msg Bob psst\n");
    tom.until("*** private to Bob: psst");
    bob.until("*** private from Tom: psst");
    // Someone who is nowhere is still refused.
    tom.send("/msg Nobody hi\n");
    tom.until("*** error: no one called Nobody in this room");
    // A person on both nodes: every connection gets a message to it, and its own copies.
    let mut laptop = json_join(&a, "Mina", "r", r#","password":"pw""#);
    json_until(&mut laptop, |v| v["type"] == "join" && v["name"] == "Mina");
    let mut phone = json_join(&b, "Mina", "r", r#","password":"pw""#);
    json_until(&mut phone, |v| v["type"] == "join" && v["name"] == "Mina");
    let private = |from: &str, to: &str, text: &str| {
        let (from, to, text) = (from.to_owned(), to.to_owned(), text.to_owned());
        move |v: &Value| {
            v["type"] == "private" && v["from"] == from && v["to"] == to && v["text"] == text
        }
    };
    bob.send("/msg Mina for both\n");
    bob.until("*** private to Mina: for both");
    json_until(&mut laptop, private("Bob", "Mina", "for both"));
    json_until(&mut phone, private("Bob", "Mina", "for both"));
    laptop.send("/msg Bob from the laptop\n");
    bob.until("*** private from Mina: from the laptop");
    json_until(&mut laptop, private("Mina", "Bob", "from the laptop"));
    json_until(&mut phone, private("Mina", "Bob", "from the laptop"));
    // Nobody else saw any of it.
    tom.send("/who\n");
    let seen = tom.until("*** 3 in r: Bob Mina Tom");
    assert!(
        seen.iter()
            .all(|l| !l.contains("for both") && !l.contains("laptop")),
        "{seen:?}"
    );
}

/// A person on two nodes, one of which is killed: its key on the dead node lapses, but the
/// person is still in the room through the other node, so no one is told it left; when its
/// last connection goes, it leaves once.
#[test]
fn a_person_whose_node_is_killed_stays_through_its_other_node() {
    let nats = Nats::start();
    let (ok, _, err) = user_cmd(&nats, &["add", "Mina"], "pw\n");
    assert!(ok, "{err}");
    let a = node(&nats, &["--presence-ttl", "2"]);
    let b = node(&nats, &["--presence-ttl", "2"]);
    let c = node(&nats, &["--presence-ttl", "2"]);
    let mut bob = c.connect("Bob", "k");
    let mut laptop = a.connect_with("Mina", "k", r#","password":"pw""#);
    laptop.until("*** Mina joined");
    bob.expect("*** Mina joined");
    let mut phone = b.connect_with("Mina", "k", r#","password":"pw""#);
    phone.send("from the phone\n");
    bob.expect("Mina:from the phone");
    laptop.until("Mina:from the phone");
    b.signal("-KILL");
    // Past the TTL (2 s) and the sweep after it, the room goes on with Mina in it.
    std::thread::sleep(Duration::from_secs(5));
    bob.send("still here?\n");
    let seen = bob.until("Bob:still here?");
    assert!(seen.is_empty(), "{seen:?}");
    laptop.until("Bob:still here?");
    bob.send("/who\n");
    bob.expect("*** 2 in k: Bob Mina");
    // The last connection goes: one leave.
    drop(laptop);
    bob.expect("*** Mina left");
    bob.send("after\n");
    let seen = bob.until("Bob:after");
    assert!(seen.is_empty(), "a second leave: {seen:?}");
    // /who on C merges C's view of the presence bucket, which learns of A's release a moment
    // after the leave itself went through the stream.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        bob.send("/who\n");
        let who = bob.line();
        if who == "*** 1 in k: Bob" {
            break;
        }
        assert_eq!(who, "*** 2 in k: Bob Mina");
        assert!(Instant::now() < deadline, "Mina never left /who");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(phone);
}

/// Moderation in a cluster (issue 13): a ban, a mute, a topic and a delete made on node A hold
/// on node B at once; a mute's expiry ends it on both; a server ban closes out who it covers on
/// every node.
#[test]
fn moderation_made_on_one_node_holds_on_the_other_at_once() {
    let nats = Nats::start();
    for (name, pw) in [("Mina", "minapw"), ("Root", "rootpw")] {
        let (ok, _, err) = user_cmd(&nats, &["add", name], &format!("{pw}\n"));
        assert!(ok, "{err}");
    }
    let (ok, _, err) = user_cmd(&nats, &["admin", "Root", "on"], "");
    assert!(ok, "{err}");
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut mina = a.connect_with("Mina", "mod", r#","password":"minapw""#);
    mina.expect("*** Mina joined");
    let mut bob = b.connect("Bob", "mod");
    let mut carl = b.connect("Carl", "mod");
    mina.until("*** Carl joined");

    // A mute made on A holds on B (where Bob is) at once, and ends by itself on both.
    mina.send("/mute Bob 2s\n");
    mina.until_prefix("*** Mina muted Bob until ");
    bob.until_prefix("*** Mina muted Bob until ");
    bob.send("hello\n");
    bob.expect("*** error: you are muted in mod");
    std::thread::sleep(Duration::from_millis(2100));
    bob.send("again\n");
    bob.expect("Bob:again");
    mina.until("Bob:again");

    // A topic: shown to a member joining on B.
    mina.send("/topic cluster day\n");
    mina.until("*** Mina set the topic: cluster day");
    let mut dave = b.connect("Dave", "mod");
    dave.expect("*** topic of mod: cluster day (set by Mina)");

    // A delete made on A: B's members are told, and B's history no longer has it.
    carl.send("oops\n");
    mina.until("Carl:oops");
    // B's history ends where B's room stands: wait until B has shown Carl his own message
    // (seen on A first, it may not be back on B yet).
    carl.until("Carl:oops");
    carl.send("/history 1\n");
    carl.until("*** history: 1 message");
    carl.expect("Carl:oops");
    carl.expect("*** end of history");
    // Ids in a cluster are the stream's: ask B's history API-free, through a JSON client.
    let mut jay = json_join(&b, "Jay", "mod", r#","history":1"#);
    let seen = json_until(&mut jay, |v| v["type"] == "end_of_history");
    let oops = messages(&seen)
        .into_iter()
        .find(|(_, _, t)| t == "oops")
        .map(|(id, _, _)| id)
        .expect("oops in history");
    mina.send(&format!("/delete {oops}\n"));
    mina.until(&format!("*** Mina deleted message {oops}"));
    carl.until(&format!("*** Mina deleted message {oops}"));
    carl.send("/history 5\n");
    let replay = carl.until("*** end of history");
    assert!(replay.iter().all(|l| l != "Carl:oops"), "{replay:?}");

    // A ban made on A closes Bob out on B, and B refuses him at once.
    mina.send("/ban Bob spam\n");
    mina.until("*** Mina banned Bob: spam");
    bob.until("*** Mina banned Bob: spam");
    assert!(bob.closed());
    mina.until("*** Bob left");
    let mut back = b.connect_with("Bob", "mod", "");
    assert_eq!(back.line(), "*** error: you are banned from mod: spam");

    // A server ban by an admin on A: Carl, on B, is closed out there too.
    let mut root = a.connect_with("Root", "ops", r#","password":"rootpw""#);
    root.expect("*** Root joined");
    root.send("/sban Carl\n");
    root.until_prefix("*** banned Carl from the server");
    let last = carl.until_prefix("*** error: you are banned from this server");
    assert_eq!(last, "*** error: you are banned from this server");
    assert!(carl.closed());
    let mut again = b.connect_with("Carl", "elsewhere", "");
    assert_eq!(again.line(), "*** error: you are banned from this server");
}

/// A version-2 person on `server` past the welcome; returns the `marks` line that follows it.
fn v2_person(server: &Server, name: &str, password: &str) -> (Client, Value) {
    let mut c = Client::raw(server.addr);
    c.send(&format!(
        r#"{{"name":"{name}","version":2,"password":"{password}"}}"#
    ));
    let welcome = json_find(&mut c, |_| true);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let marks = json_find(&mut c, |_| true);
    assert_eq!(marks["type"], "marks", "{marks}");
    (c, marks)
}

/// The first line that matches (after those that do not).
fn json_find(c: &mut Client, want: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    json_until(c, |v| {
        let hit = want(v);
        if hit {
            found = Some(v.clone());
        }
        hit
    });
    found.unwrap_or_default()
}

/// Marks (issue 14): a change on one node reaches the person's session on another, and a
/// direct conversation opened on one node is the other party's on theirs.
#[test]
fn marks_and_conversations_reach_every_node() {
    let nats = Nats::start();
    for (name, pw) in [("Mina", "minapw\n"), ("Ann", "annpw\n")] {
        let (ok, _, err) = user_cmd(&nats, &["add", name], pw);
        assert!(ok, "{err}");
    }
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (mut mina_a, _) = v2_person(&a, "Mina", "minapw");
    let (mut mina_b, _) = v2_person(&b, "Mina", "minapw");

    // A join on A is a mark on B.
    mina_a.send("{\"type\":\"join\",\"room\":\"dev\",\"req\":\"j\"}\n");
    let mark = json_find(&mut mina_b, |v| v["type"] == "mark" && v["room"] == "dev");
    assert_eq!(mark["notify"], "all");
    mina_a.send("{\"type\":\"notify\",\"room\":\"dev\",\"level\":\"none\",\"req\":\"n\"}\n");
    let mark = json_find(&mut mina_b, |v| v["type"] == "mark" && v["room"] == "dev");
    assert_eq!(mark["notify"], "none");

    // A conversation opened on A reaches Ann on B; both join it on their nodes and talk.
    let (mut ann_b, _) = v2_person(&b, "Ann", "annpw");
    mina_a.send("{\"type\":\"dm\",\"to\":\"Ann\",\"req\":\"d\"}\n");
    let ok = json_find(&mut mina_a, |v| v["type"] == "ok" && v["req"] == "d");
    let room = ok["room"].as_str().unwrap_or_default().to_owned();
    assert!(room.starts_with('@'), "{ok}");
    let mark = json_find(&mut ann_b, |v| {
        v["type"] == "mark" && v["room"] == room.as_str()
    });
    assert_eq!(mark["with"], "Mina");
    ann_b.send(&format!(
        "{}\n",
        serde_json::json!({"type": "join", "room": room, "req": "ja"})
    ));
    json_find(&mut ann_b, |v| v["type"] == "ok" && v["req"] == "ja");
    mina_a.send(&format!(
        "{}\n",
        serde_json::json!({"type": "join", "room": room, "req": "jm"})
    ));
    json_find(&mut mina_a, |v| v["type"] == "ok" && v["req"] == "jm");
    mina_a.send(&format!(
        "{}\n",
        serde_json::json!({"type": "say", "room": room, "text": "across", "req": "s"})
    ));
    let msg = json_find(&mut ann_b, |v| v["type"] == "message");
    assert_eq!(
        (&msg["name"], &msg["text"]),
        (&"Mina".into(), &"across".into())
    );

    // Nobody else joins it, on any node.
    let mut zed = Client::raw(b.addr);
    zed.send(r#"{"name":"Zed","version":2}"#);
    zed.send(&format!(
        "{}\n",
        serde_json::json!({"type": "join", "room": room, "req": 1})
    ));
    let err = json_find(&mut zed, |v| v["type"] == "error");
    assert!(
        err["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("rooms starting with @ are direct conversations"),
        "{err}"
    );
}

/// The leave grace across nodes: a person whose connection on node A drops and who comes
/// back on node B within the grace is seen by nobody to leave or join; when its last
/// connection drops and it does not come back, `left` comes once, on both nodes. A guest's
/// name is the cluster's, held for one connection: a guest gets no grace in a cluster.
#[test]
fn a_person_back_on_another_node_within_the_grace_is_no_news() {
    let nats = Nats::start();
    let (ok, _, err) = user_cmd(&nats, &["add", "Mina"], "pw\n");
    assert!(ok, "{err}");
    let a = node(&nats, &["--leave-grace", "3"]);
    let b = node(&nats, &["--leave-grace", "3"]);
    let mut bob = a.connect("Bob", "r");
    let mut cy = b.connect("Cy", "r");
    bob.until("*** Cy joined");

    let mina = a.connect_with("Mina", "r", r#","password":"pw""#);
    bob.expect("*** Mina joined");
    cy.expect("*** Mina joined");
    drop(mina);
    assert!(a.wait_log("kept for the leave grace"));
    let mut mina = b.connect_with("Mina", "r", r#","password":"pw""#);
    mina.expect("*** Mina joined");
    // Past node A's grace: still nothing shown anywhere.
    std::thread::sleep(Duration::from_millis(3500));
    bob.send("quiet\n");
    bob.expect("Bob:quiet");
    cy.expect("Bob:quiet");
    mina.expect("Bob:quiet");
    bob.send("/who\n");
    bob.expect("*** 3 in r: Bob Cy Mina");

    // Gone for good: one `left` on each node, once the grace is over.
    drop(mina);
    assert!(b.wait_log("kept for the leave grace"));
    assert!(
        bob.quiet_for(Duration::from_millis(1000)),
        "told before the grace"
    );
    assert_eq!(
        bob.line_within(Duration::from_secs(8)).as_deref(),
        Some("*** Mina left")
    );
    cy.expect("*** Mina left");
    bob.send("after\n");
    bob.expect("Bob:after");
    cy.expect("Bob:after");

    // A guest: told at once.
    let gus = a.connect("Gus", "r");
    bob.expect("*** Gus joined");
    cy.expect("*** Gus joined");
    drop(gus);
    assert_eq!(
        bob.line_within(Duration::from_secs(2)).as_deref(),
        Some("*** Gus left")
    );
}

/// Older history (`before`) from any node: the stream's ids, read back a page at a time.
#[test]
fn older_history_pages_back_from_any_node() {
    let nats = Nats::start();
    let a = node(&nats, &["--max-line-rate", "0"]);
    let b = node(&nats, &[]);
    let mut lin = json_join(&a, "Lin", "old", "");
    json_until(&mut lin, |v| v["type"] == "join" && v["name"] == "Lin");
    let mut ids = Vec::new();
    for i in 0..5 {
        lin.send(&format!("m{i}\n"));
        let text = format!("m{i}");
        json_until(&mut lin, |v| is_text(v, &text));
    }
    // The ids, as the history has them.
    let mut v2 = Client::raw(b.addr);
    v2.send(r#"{"name":"Vee","version":2,"room":"old"}"#);
    json_until(&mut v2, |v| v["type"] == "join" && v["name"] == "Vee");
    let mut page = |limit: u64, before: u64, req: u64| -> Vec<u64> {
        v2.send(&format!(
            "{{\"type\":\"history\",\"room\":\"old\",\"limit\":{limit},\"before\":{before},\"req\":{req}}}\n"
        ));
        let lines = json_until(&mut v2, |v| v["type"] == "ok" && v["req"] == req);
        assert_eq!(
            lines.first().map(|v| v["type"].clone()),
            Some("history".into())
        );
        assert_eq!(
            lines.last().map(|v| v["type"].clone()),
            Some("end_of_history".into())
        );
        messages(&lines).into_iter().map(|(id, _, _)| id).collect()
    };
    ids.extend(page(5, u64::MAX, 1));
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(page(2, ids[4], 2), ids[2..4]);
    assert_eq!(page(2, ids[2], 3), ids[0..2]);
    assert_eq!(page(2, ids[0], 4), Vec::<u64>::new());
}

/// A room's messages as a reader got them: (id, name, text).
type Seen = Vec<(u64, String, String)>;

/// The messages (id, name, text) a JSON reader gets until it has `n`, each within `TIMEOUT`.
fn json_messages(c: &mut Client, n: usize) -> Seen {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let l = c
            .line_within(TIMEOUT)
            .unwrap_or_else(|| panic!("timed out after {} of {n} messages", got.len()));
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        got.extend(messages(&[v]));
    }
    got
}

#[test]
fn one_order_per_room_with_many_publishes_in_flight_on_every_node() {
    // Four senders (two rooms, on two nodes) each write all their lines at once: each node
    // has many batches in flight to JetStream while its feed hands back batches of both rooms.
    const N: usize = 1_500;
    let nats = Nats::start();
    let flags = ["--max-line-rate", "0", "--max-pending", "16777216"];
    let a = node(&nats, &flags);
    let b = node(&nats, &flags);
    let mut readers = Vec::new();
    for room in ["p", "q"] {
        for (n, server) in [("A", &a), ("B", &b)] {
            let name = format!("Read{n}{room}");
            let mut c = json_join(server, &name, room, "");
            json_until(&mut c, |v| {
                v["type"] == "join" && v["name"] == name.as_str()
            });
            readers.push((room, c));
        }
    }
    let mut senders = Vec::new();
    for room in ["p", "q"] {
        for (n, server) in [("A", &a), ("B", &b)] {
            let name = format!("Send{n}{room}");
            senders.push((name.clone(), server.connect(&name, room)));
        }
    }
    std::thread::scope(|s| {
        for (name, c) in senders.iter_mut() {
            let lines: String = (0..N).map(|i| format!("{name} {i}\n")).collect();
            s.spawn(move || c.send(&lines));
        }
    });
    let mut seen: Vec<(&str, Seen)> = Vec::new();
    for (room, c) in readers.iter_mut() {
        seen.push((room, json_messages(c, 2 * N)));
    }
    for room in ["p", "q"] {
        let views: Vec<&Seen> = seen
            .iter()
            .filter(|(r, _)| *r == room)
            .map(|(_, m)| m)
            .collect();
        // The same messages in the same order, with the same ids, on both nodes...
        assert_eq!(views[0], views[1], "the nodes disagree in room {room}");
        let msgs = views[0];
        // ...ids growing with the stream...
        assert!(
            msgs.windows(2).all(|w| w[0].0 < w[1].0),
            "ids out of order in {room}"
        );
        // ...every sender's lines, each once and in the order it wrote them.
        for n in ["A", "B"] {
            let name = format!("Send{n}{room}");
            let texts: Vec<&str> = msgs
                .iter()
                .filter(|(_, who, _)| *who == name)
                .map(|(_, _, t)| t.as_str())
                .collect();
            let want: Vec<String> = (0..N).map(|i| format!("{name} {i}")).collect();
            assert_eq!(texts, want, "{name}'s lines in room {room}");
        }
        // No message of the other room slipped in.
        assert!(msgs.iter().all(|(_, who, _)| who.ends_with(room)), "{room}");
    }
}

#[test]
fn a_publish_failure_with_many_in_flight_is_refused_to_each_sender() {
    const N: usize = 1_000;
    let nats = Nats::start();
    let a = node(
        &nats,
        &["--max-line-rate", "0", "--max-pending", "16777216"],
    );
    let mut ann = a.connect("Ann", "fail");
    let mut bob = a.connect("Bob", "fail");
    ann.until("*** Bob joined");
    ann.send("warm\n");
    ann.until("Ann:warm");
    bob.until("Ann:warm");
    // The stream goes away under the node: every publish from now on fails.
    with_jetstream(&nats, |js| async move {
        js.delete_stream("MACHAT").await.expect("delete the stream");
    });
    let lines: String = (0..N).map(|i| format!("lost {i}\n")).collect();
    ann.send(&lines);
    // Each line is refused to Ann (after the retries, ~10 s), none shown as sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    while refused < N {
        assert!(Instant::now() < deadline, "{refused} of {N} refused");
        let Some(l) = ann.line_within(TIMEOUT) else {
            continue;
        };
        assert!(!l.starts_with("Ann:lost"), "a lost message was shown: {l}");
        if l.starts_with("*** error: message not") {
            refused += 1;
        }
    }
    assert!(
        a.log_contains("event not confirmed by the cluster"),
        "no refusal logged"
    );
    // Logged at most once a second with how many were held back, not once per event: a
    // node cut off from its stream must not flood its own log.
    let logged = |what: &str| {
        let log = a.log.lock().unwrap();
        log.iter().filter(|l| l.contains(what)).count()
    };
    for what in [
        "event not confirmed by the cluster",
        "cannot publish to the cluster",
    ] {
        let n = logged(what);
        assert!(n <= 30, "{n} lines of {what:?} for {N} events");
    }
    assert!(
        a.log_contains("held_back="),
        "the count held back is not said"
    );
    // Bob never saw any of them.
    assert!(bob.quiet_for(Duration::from_millis(300)));
}
