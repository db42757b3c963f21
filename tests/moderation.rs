//! Moderation over real sockets (issue 13): roles, kick, ban, mute, topics, modes, and what
//! every member sees, on TCP text, TCP JSON, version 2 and WebSocket, across a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{people, Client, Server, TIMEOUT};

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A text client logged in as a registered name (or a guest when `password` is empty).
fn text(server: &Server, name: &str, password: &str, room: &str) -> Client {
    common::log_in(Client::raw(server.addr), name, password, room)
}

/// Sends a line and waits for `want`, skipping other lines.
fn say(c: &mut Client, line: &str, want: &str) {
    c.send(&format!("{line}\n"));
    c.until(want);
}

#[test]
fn an_operator_kicks_and_everyone_sees_who_why_and_the_kicked_is_closed_out() {
    let dir = people();
    let server = start(&dir, &[]);
    // Mina creates the room: it is hers.
    let mut mina = text(&server, "Mina", "minapw", "dev");
    let mut bob = text(&server, "Bob", "", "dev");
    mina.expect("*** Bob joined");
    let mut carl = text(&server, "Carl", "", "dev");
    mina.expect("*** Carl joined");
    bob.expect("*** Carl joined");

    mina.send("/kick bob spam\n");
    mina.expect("*** Mina kicked Bob: spam");
    mina.expect("*** Bob left");
    carl.expect("*** Mina kicked Bob: spam");
    carl.expect("*** Bob left");
    // The kicked member reads why, last, and its connection (one room: version 1) ends.
    bob.expect("*** Mina kicked Bob: spam");
    assert!(bob.closed());
    // A kick is no ban: Bob may come back.
    let mut bob = text(&server, "Bob", "", "dev");
    mina.expect("*** Bob joined");
    // Nobody else may kick, and nobody kicks who is not there.
    say(
        &mut bob,
        "/kick Carl",
        "*** error: /kick needs you to be an operator in dev",
    );
    say(
        &mut mina,
        "/kick Zed",
        "*** error: no one called Zed in this room",
    );
    say(&mut carl, "hello", "Carl:hello");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ranks_decide_who_may_act_on_whom() {
    let dir = people();
    let server = start(&dir, &[]);
    let mut mina = text(&server, "Mina", "minapw", "dev");
    let mut ann = text(&server, "Ann", "annpw", "dev");
    mina.expect("*** Ann joined");
    // Only registered names hold roles, in their registered spelling.
    say(
        &mut mina,
        "/op Bob",
        "*** error: Bob is not registered: only registered names hold roles",
    );
    say(&mut mina, "/op ann", "*** Mina made Ann an operator");
    ann.until("*** Mina made Ann an operator");
    // An operator cannot act on the owner, nor give operator (the owner's).
    say(
        &mut ann,
        "/kick Mina",
        "*** error: you cannot kick Mina: their rank is equal to or above yours",
    );
    say(
        &mut ann,
        "/op Mina",
        "*** error: /op needs you to be the owner of dev",
    );
    say(
        &mut ann,
        "/mute Mina 10m",
        "*** error: you cannot mute Mina: their rank is equal to or above yours",
    );
    // A guest taking a registered name's look-alike is refused at the door, so it can never
    // hold the role: the name is the registered one's, with its password.
    let mut fake = Client::raw(server.addr);
    fake.send(r#"{"name":"ANN","room":"dev"}"#);
    assert!(fake.line().starts_with("*** error: "));
    say(&mut mina, "/deop Ann", "*** Mina took operator from Ann");
    say(
        &mut ann,
        "/topic hi",
        "*** error: /topic needs you to be an operator in dev",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_muted_member_is_told_and_reaches_no_one_until_unmuted_or_the_mute_ends() {
    let dir = people();
    let server = start(&dir, &[]);
    let mut mina = text(&server, "Mina", "minapw", "dev");
    let mut bob = text(&server, "Bob", "", "dev");
    mina.expect("*** Bob joined");
    mina.send("/mute Bob 2s flooding\n");
    let line = mina.until_prefix("*** Mina muted Bob until ");
    assert!(line.ends_with(" UTC: flooding"), "{line}");
    assert_eq!(bob.until_prefix("*** Mina muted Bob"), line);
    bob.send("buy now\n/me shouts\n");
    bob.expect("*** error: you are muted in dev");
    bob.expect("*** error: you are muted in dev");
    assert!(mina.quiet_for(Duration::from_millis(300)));
    // It ends by itself.
    std::thread::sleep(Duration::from_millis(2100));
    say(&mut bob, "back", "Bob:back");
    mina.expect("Bob:back");
    say(&mut mina, "/mute Bob", "*** Mina muted Bob");
    bob.until("*** Mina muted Bob");
    say(&mut bob, "x", "*** error: you are muted in dev");
    say(&mut mina, "/unmute Bob", "*** Mina unmuted Bob");
    say(&mut bob, "free", "Bob:free");
    say(
        &mut mina,
        "/unmute Bob",
        "*** error: Bob is not muted in dev",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bans_topics_roles_and_modes_survive_a_restart() {
    let dir = people();
    {
        let server = start(&dir, &[]);
        let mut mina = text(&server, "Mina", "minapw", "dev");
        let mut bob = text(&server, "Bob", "", "dev");
        mina.expect("*** Bob joined");
        say(&mut mina, "/ban Bob spam", "*** Mina banned Bob: spam");
        bob.expect("*** Mina banned Bob: spam");
        assert!(bob.closed());
        say(
            &mut mina,
            "/topic release on Friday",
            "*** Mina set the topic: release on Friday",
        );
        say(&mut mina, "/op Ann", "*** Mina made Ann an operator");
        say(
            &mut mina,
            "/mode +moderated",
            "*** Mina set modes +moderated",
        );
        // Refused at the door, with the reason; again as "bob" and as a look-alike.
        for name in ["Bob", "bob", "Вob"] {
            common::expect_refused(
                &server,
                format!(r#"{{"name":"{name}","room":"dev"}}"#).as_bytes(),
                "you are banned from dev: spam",
            );
        }
        // Writes are in the background: give them a moment before the restart.
        std::thread::sleep(Duration::from_millis(300));
    }
    let server = start(&dir, &[]);
    common::expect_refused(
        &server,
        br#"{"name":"Bob","room":"dev"}"#,
        "you are banned from dev: spam",
    );
    let mut carl = Client::raw(server.addr);
    carl.send(r#"{"name":"Carl","room":"dev"}"#);
    carl.expect("*** Carl joined");
    carl.expect("*** topic of dev: release on Friday (set by Mina)");
    // Moderated: a guest may not speak; the operator may, and may give voice.
    say(
        &mut carl,
        "hi",
        "*** error: dev is moderated: only operators and those they give voice may speak",
    );
    let mut ann = text(&server, "Ann", "annpw", "dev");
    ann.expect("*** topic of dev: release on Friday (set by Mina)");
    say(&mut ann, "I can", "Ann:I can");
    say(&mut ann, "/bans", "*** bans in dev: 1");
    ann.expect("*** Bob banned by Mina: spam");
    say(
        &mut carl,
        "/bans",
        "*** error: /bans needs you to be an operator in dev",
    );
    say(&mut ann, "/unban Bob", "*** Ann unbanned Bob");
    let mut bob = Client::raw(server.addr);
    bob.send(r#"{"name":"Bob","room":"dev"}"#);
    bob.expect("*** Bob joined");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn closed_and_keyed_rooms_say_why_and_let_in_who_they_should() {
    let dir = people();
    let server = start(&dir, &[]);
    let mut mina = text(&server, "Mina", "minapw", "dev");
    say(&mut mina, "/mode +closed", "*** Mina set modes +closed");
    common::expect_refused(
        &server,
        br#"{"name":"Bob","room":"dev"}"#,
        "dev is invite only",
    );
    say(
        &mut mina,
        "/invite Bob",
        "*** error: Bob is not registered: only registered names hold roles",
    );
    say(&mut mina, "/invite Ann", "*** Mina invited Ann");
    let mut ann = text(&server, "Ann", "annpw", "dev");
    say(
        &mut mina,
        "/mode -closed +key s3cret",
        "*** Mina set modes -closed +key",
    );
    ann.until("*** Mina set modes -closed +key");
    common::expect_refused(
        &server,
        br#"{"name":"Bob","room":"dev"}"#,
        "dev needs a key",
    );
    common::expect_refused(
        &server,
        br#"{"name":"Bob","room":"dev","key":"nope"}"#,
        "wrong key for dev",
    );
    let mut bob = Client::raw(server.addr);
    bob.send(r#"{"name":"Bob","room":"dev","key":"s3cret"}"#);
    bob.expect("*** Bob joined");
    // `/join ROOM KEY` as well; the key is shown to operators only.
    let mut carl = text(&server, "Carl", "", "lobby");
    say(&mut carl, "/join dev", "*** error: dev needs a key");
    say(&mut carl, "/join dev s3cret", "*** Carl joined");
    say(&mut carl, "/mode", "*** modes of dev: +key");
    say(&mut mina, "/mode", "*** modes of dev: +key (key: s3cret)");
    say(
        &mut mina,
        "/mode +secret",
        "*** error: unknown mode +secret (modes: +closed, +key KEY, +moderated, and - to unset)",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ban_by_address_closes_out_every_name_from_it() {
    let dir = people();
    let server = start(&dir, &[]);
    let mut mina = text(&server, "Mina", "minapw", "dev");
    let other: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut spam = Client::raw_from(server.addr, other);
    spam.send(r#"{"name":"Spammer","room":"dev"}"#);
    spam.expect("*** Spammer joined");
    mina.expect("*** Spammer joined");
    mina.send("/ban 127.0.0.2/32 bots\n");
    let seen = mina.until("*** banned 127.0.0.2 from dev");
    assert_eq!(
        seen,
        ["*** Mina banned an address: bots", "*** Spammer left"]
    );
    spam.until("*** Mina banned an address: bots");
    assert!(spam.closed());
    // Whatever name it takes next.
    let mut again = Client::raw_from(server.addr, other);
    again.send(r#"{"name":"Innocent","room":"dev"}"#);
    assert_eq!(again.line(), "*** error: you are banned from dev: bots");
    say(
        &mut mina,
        "/ban 10.0.0.0/33",
        "*** error: 10.0.0.0/33 is not an address or a network (ADDRESS or ADDRESS/BITS)",
    );
    say(
        &mut mina,
        "/ban Bob 5x",
        "*** error: 5x is not a duration (like 30s, 10m, 2h, 7d, 2w)",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn room_creation_can_be_kept_for_registered_names_or_admins() {
    let dir = people();
    let server = start(&dir, &["--room-creation", "registered"]);
    common::expect_refused(
        &server,
        br#"{"name":"Bob","room":"new"}"#,
        "new does not exist, and only registered users can create rooms on this server",
    );
    let _ann = text(&server, "Ann", "annpw", "new");
    // Now it exists: anyone may join.
    let _bob = text(&server, "Bob", "", "new");
    // The creation is stored in the background: a moment before the server is killed.
    std::thread::sleep(Duration::from_millis(300));
    drop(server);
    let server = start(&dir, &["--room-creation", "admins"]);
    common::expect_refused(
        &server,
        br#"{"name":"Ann","room":"other","password":"annpw"}"#,
        "only admins can create rooms",
    );
    let mut root = text(&server, "Root", "rootpw", "other");
    // Ann's room from before is hers, and kept: it exists.
    let _ann = text(&server, "Ann", "annpw", "new");
    root.send("/help\n");
    let help = root.until_prefix("*** commands: /who");
    assert!(
        help.contains("/sban") && help.contains("/kick NAME [REASON]"),
        "{help}"
    );
    let mut bob = text(&server, "Bob", "", "new");
    bob.send("/help\n");
    let help = bob.until_prefix("*** commands: /who");
    // A member sees what it may use: no operator's commands.
    assert!(help.ends_with("/help, /topic, /mode, /delete ID"), "{help}");
    assert!(!help.contains("/kick") && !help.contains("/sban"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admins_ban_from_the_whole_server_and_send_notices_to_every_room() {
    let dir = people();
    let server = start(&dir, &[]);
    let mut root = text(&server, "Root", "rootpw", "ops");
    let mut bob = text(&server, "Bob", "", "dev");
    let mut carl = text(&server, "Carl", "", "lobby");
    root.send("/wall maintenance at 10\n");
    root.expect("*** notice from Root: maintenance at 10");
    root.expect("*** notice sent to 3 rooms");
    bob.expect("*** notice from Root: maintenance at 10");
    carl.expect("*** notice from Root: maintenance at 10");
    say(
        &mut carl,
        "/wall hi",
        "*** error: /wall needs you to be a server admin",
    );
    say(
        &mut root,
        "/sban Bob 1h spam",
        "*** banned Bob from the server (1 connections closed here)",
    );
    let line = bob.line_within(TIMEOUT);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("*** error: you are banned from this server")),
        "{line:?} {:?}",
        server.log.lock().unwrap()
    );
    assert!(bob.closed());
    let mut again = Client::raw(server.addr);
    again.send(r#"{"name":"Bob","room":"elsewhere"}"#);
    let line = again.line();
    assert!(
        line.starts_with("*** error: you are banned from this server until "),
        "{line}"
    );
    assert!(line.ends_with(": spam"), "{line}");
    say(&mut root, "/unsban bob", "*** unbanned bob from the server");
    let _bob = text(&server, "Bob", "", "dev");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_action_is_in_the_moderation_log() {
    let dir = people();
    let server = start(&dir, &[]);
    let mut mina = text(&server, "Mina", "minapw", "dev");
    let _bob = text(&server, "Bob", "", "dev");
    mina.expect("*** Bob joined");
    say(&mut mina, "/kick Bob bye", "*** Mina kicked Bob: bye");
    say(&mut mina, "/topic t", "*** Mina set the topic: t");
    mina.send("/modlog 2\n");
    mina.until("*** moderation log of dev: 2 entries");
    let kick = mina.line();
    assert!(kick.ends_with(" Mina kick Bob: bye"), "{kick}");
    let topic = mina.line();
    assert!(topic.ends_with(" Mina topic: t"), "{topic}");
    let _ = TIMEOUT;
    let _ = std::fs::remove_dir_all(&dir);
}

mod across_transports {
    use super::*;
    use common::ws::{frame, json_client, json_line, next, send, until, ws_join, Got};
    use serde_json::Value;

    /// Reads JSON lines until one matches; returns it.
    fn json_until(c: &mut Client, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = json_line(c);
            if want(&v) {
                return v;
            }
        }
    }

    #[test]
    fn json_and_websocket_members_see_each_action_as_an_event_and_a_kicked_socket_is_closed() {
        let dir = people();
        let server = start(&dir, &["--http", "127.0.0.1:0"]);
        let mut mina = text(&server, "Mina", "minapw", "dev");
        let mut json = json_client(&server, "Jay", "dev");
        let mut ws = ws_join(&server, "Web", "dev");
        mina.until("*** Web joined");
        say(
            &mut mina,
            "/topic release on Friday",
            "*** Mina set the topic: release on Friday",
        );
        let topic = json_until(&mut json, |v| v["type"] == "topic");
        assert_eq!(topic["actor"], "Mina");
        assert_eq!(topic["text"], "release on Friday");
        assert_eq!(topic["room"], "dev");
        until(&mut ws, |v| {
            v["type"] == "topic" && v["text"] == "release on Friday"
        });

        mina.send("/ban Web 1h spam\n");
        let ban = json_until(&mut json, |v| v["type"] == "ban");
        assert_eq!(ban["target"], "Web");
        assert_eq!(ban["reason"], "spam");
        assert!(
            ban["until"].as_str().is_some_and(|u| u.ends_with('Z')),
            "{ban}"
        );
        assert_eq!(json_line(&mut json)["type"], "leave");
        // The socket gets the ban event, then a close frame saying why.
        let seen = until(&mut ws, |v| v["type"] == "ban");
        assert!(seen.iter().all(|v| v["type"] != "error"), "{seen:?}");
        match next(&mut ws, TIMEOUT) {
            Got::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1008);
                assert_eq!(f.reason.as_str(), "closed out of the room");
            }
            other => panic!("wanted a close, got {other:?}"),
        }
        // And it is refused on the way back in, over WebSocket too.
        let mut again = common::ws::ws_open(&server);
        send(&mut again, r#"{"name":"Web","room":"dev"}"#);
        let refused = frame(&mut again);
        assert_eq!(refused["type"], "error");
        assert!(
            refused["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("you are banned from dev until ")),
            "{refused}"
        );
        // A JSON client joining is shown the topic after its join.
        let mut late = Client::raw(server.addr);
        late.send(r#"{"name":"Late","room":"dev","format":"json"}"#);
        assert_eq!(json_line(&mut late)["type"], "join");
        let topic = json_line(&mut late);
        assert_eq!(topic["type"], "topic");
        assert_eq!(topic["text"], "release on Friday");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A version-2 client: commands as requests with `req`, and a kick that takes it out of one
    /// room while it stays in the others.
    #[test]
    fn a_version_2_client_moderates_with_requests_and_a_kick_leaves_its_other_rooms() {
        let dir = people();
        let server = start(&dir, &[]);
        let mut mina = Client::raw(server.addr);
        mina.send(r#"{"name":"Mina","version":2,"password":"minapw"}"#);
        assert_eq!(json_line(&mut mina)["type"], "welcome");
        mina.send("{\"type\":\"join\",\"room\":\"dev\",\"req\":1}\n");
        json_until(&mut mina, |v| v["type"] == "ok" && v["req"] == 1);
        let mut bob = Client::raw(server.addr);
        bob.send(r#"{"name":"Bob","version":2}"#);
        assert_eq!(json_line(&mut bob)["type"], "welcome");
        bob.send("{\"type\":\"join\",\"room\":\"dev\",\"req\":1}\n{\"type\":\"join\",\"room\":\"lobby\",\"req\":2}\n");
        json_until(&mut bob, |v| v["type"] == "ok" && v["req"] == 2);

        // A command the caller may not use: an error with its req; the connection stays.
        bob.send("{\"type\":\"command\",\"room\":\"dev\",\"text\":\"/kick Mina\",\"req\":\"k\"}\n");
        let refused = json_until(&mut bob, |v| v["type"] == "error");
        assert_eq!(refused["req"], "k");
        assert_eq!(
            refused["reason"],
            "/kick needs you to be an operator in dev"
        );

        mina.send(
            "{\"type\":\"command\",\"room\":\"dev\",\"text\":\"/kick bob bye\",\"req\":\"x\"}\n",
        );
        let kick = json_until(&mut mina, |v| v["type"] == "kick");
        assert_eq!(
            (kick["actor"].as_str(), kick["target"].as_str()),
            (Some("Mina"), Some("Bob"))
        );
        json_until(&mut mina, |v| v["type"] == "ok" && v["req"] == "x");
        let kicked = json_until(&mut bob, |v| v["type"] == "kick");
        assert_eq!(kicked["room"], "dev");
        // Out of dev, still in lobby, still connected.
        bob.send("{\"type\":\"say\",\"room\":\"dev\",\"text\":\"hi\",\"req\":3}\n");
        let err = json_until(&mut bob, |v| v["type"] == "error");
        assert_eq!(err["reason"], "you are not in dev");
        bob.send("{\"type\":\"say\",\"room\":\"lobby\",\"text\":\"still here\",\"req\":4}\n");
        json_until(&mut bob, |v| v["type"] == "ok" && v["req"] == 4);
        // A command's text is cleaned as a line is: no escape reaches the others.
        mina.send("{\"type\":\"command\",\"room\":\"dev\",\"text\":\"/topic \\u001b[31mred\\u0007 alert\"}\n");
        let topic = json_until(&mut mina, |v| v["type"] == "topic");
        assert_eq!(topic["text"], "red alert");
        mina.send("{\"type\":\"command\",\"room\":\"dev\",\"text\":\"/topic -\"}\n");
        json_until(&mut mina, |v| v["type"] == "topic" && v["text"] == "");
        // Lines a command answers with come as notices with the req, then ok.
        mina.send("{\"type\":\"command\",\"room\":\"dev\",\"text\":\"/topic\",\"req\":\"t\"}\n");
        let notice = json_until(&mut mina, |v| v["type"] == "notice");
        assert_eq!(notice["req"], "t");
        assert_eq!(notice["text"], "no topic in dev");
        assert_eq!(
            json_line(&mut mina),
            serde_json::json!({"type":"ok","req":"t"})
        );
        // A join with the room's key.
        mina.send("{\"type\":\"command\",\"room\":\"dev\",\"text\":\"/mode +key k3y\"}\n");
        json_until(&mut mina, |v| v["type"] == "mode");
        bob.send("{\"type\":\"join\",\"room\":\"dev\",\"req\":5}\n");
        let err = json_until(&mut bob, |v| v["type"] == "error");
        assert_eq!(
            (err["req"].as_i64(), err["reason"].as_str()),
            (Some(5), Some("dev needs a key"))
        );
        bob.send("{\"type\":\"join\",\"room\":\"dev\",\"key\":\"k3y\",\"req\":6}\n");
        json_until(&mut bob, |v| v["type"] == "ok" && v["req"] == 6);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_message_leaves_history_and_everyone_is_told() {
        let dir = people();
        let server = start(&dir, &["--http", "127.0.0.1:0"]);
        let mut mina = text(&server, "Mina", "minapw", "dev");
        let mut json = json_client(&server, "Jay", "dev");
        let mut bob = text(&server, "Bob", "", "dev");
        json.send("first\n");
        let first = json_until(&mut json, |v| v["type"] == "message")["id"]
            .as_u64()
            .unwrap();
        json.send("second\n");
        let second = json_until(&mut json, |v| {
            v["type"] == "message" && v["text"] == "second"
        })["id"]
            .as_u64()
            .unwrap();
        // A member deletes only its own.
        say(
            &mut bob,
            &format!("/delete {first}"),
            &format!("*** error: message {first} is not yours"),
        );
        json.send(&format!("/delete {first}\n"));
        let deleted = json_until(&mut json, |v| v["type"] == "delete");
        assert_eq!(
            (deleted["id"].as_u64(), deleted["actor"].as_str()),
            (Some(first), Some("Jay"))
        );
        mina.until(&format!("*** Jay deleted message {first}"));
        // An operator deletes anyone's; twice is an error.
        mina.send(&format!("/delete {second}\n"));
        let got = mina.until_prefix("*** ");
        assert_eq!(
            got,
            format!("*** Mina deleted message {second}"),
            "{:?}",
            server.log.lock().unwrap()
        );
        say(
            &mut mina,
            &format!("/delete {second}"),
            &format!("*** error: no message {second} in dev"),
        );
        say(
            &mut mina,
            "/delete 999999",
            "*** error: no message 999999 in dev",
        );
        // Gone from replay and from the HTTP history, ids kept for what remains.
        json.send("third\n");
        json_until(&mut json, |v| {
            v["type"] == "message" && v["text"] == "third"
        });
        say(&mut bob, "/history 10", "*** history: 1 message");
        bob.expect("Jay:third");
        bob.expect("*** end of history");
        let (status, body) = common::ws::get_json(server.http.unwrap(), "/api/rooms/dev/messages");
        assert_eq!(status, 200);
        let texts: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["text"].as_str())
            .collect();
        assert_eq!(texts, ["third"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every moderation command, typed by an owner on each transport (TCP text, TCP JSON,
/// WebSocket), shows the same line to a text member, and the commands that answer only their
/// caller answer in the caller's format.
#[test]
fn every_command_works_from_text_json_and_websocket() {
    use common::ws::{frame, send, until, ws_open, Ws};
    use serde_json::Value;

    enum Conn {
        Text(Client),
        Json(Client),
        Ws(Box<Ws>),
    }
    impl Conn {
        fn line(&mut self, line: &str) {
            match self {
                Conn::Text(c) | Conn::Json(c) => c.send(&format!("{line}\n")),
                Conn::Ws(ws) => send(ws, line),
            }
        }
        /// The next notice for this caller alone that starts with `start`, as its text (in
        /// plain text, room lines are notices too: those before it are skipped).
        fn notice(&mut self, start: &str) -> String {
            let is_notice = |v: &Value| {
                v["type"] == "notice" && v["text"].as_str().is_some_and(|t| t.starts_with(start))
            };
            match self {
                Conn::Text(c) => c
                    .until_prefix(&format!("*** {start}"))
                    .trim_start_matches("*** ")
                    .to_owned(),
                Conn::Json(c) => loop {
                    let v: Value = serde_json::from_str(&c.line()).unwrap();
                    if is_notice(&v) {
                        return v["text"].as_str().unwrap().to_owned();
                    }
                },
                Conn::Ws(ws) => loop {
                    let v = frame(ws);
                    if is_notice(&v) {
                        return v["text"].as_str().unwrap().to_owned();
                    }
                },
            }
        }
    }

    let dir = people();
    let server = start(&dir, &["--http", "127.0.0.1:0"]);
    for kind in ["text", "json", "ws"] {
        let room = format!("r{kind}");
        let hs =
            format!(r#"{{"name":"Mina","room":"{room}","password":"minapw","format":"json"}}"#);
        let mut mina = match kind {
            "text" => Conn::Text(text(&server, "Mina", "minapw", &room)),
            "json" => {
                let mut c = Client::raw(server.addr);
                c.send(&hs);
                c.until_prefix("{\"type\":\"join\"");
                Conn::Json(c)
            }
            _ => {
                let mut ws = ws_open(&server);
                send(&mut ws, &hs);
                until(&mut ws, |v| v["type"] == "join");
                Conn::Ws(Box::new(ws))
            }
        };
        let mut carl = text(&server, "Carl", "", &room);
        let _ann = text(&server, "Ann", "annpw", &room);
        carl.until("*** Ann joined");
        carl.send("a message to delete\n");
        carl.until("Carl:a message to delete");
        // Carl's message is the room's first: id 1.
        let mut bob = text(&server, "Bob", "", &room);
        carl.until("*** Bob joined");
        let shown = [
            ("/topic hi", "*** Mina set the topic: hi"),
            (
                "/mode +moderated +closed",
                "*** Mina set modes +moderated +closed",
            ),
            (
                "/mode -moderated -closed",
                "*** Mina set modes -moderated -closed",
            ),
            ("/voice ann", "*** Mina gave Ann voice"),
            ("/devoice Ann", "*** Mina took voice from Ann"),
            ("/op Ann", "*** Mina made Ann an operator"),
            ("/deop Ann", "*** Mina took operator from Ann"),
            ("/invite Ann", "*** Mina invited Ann"),
            ("/mute Bob 1h noise", "*** Mina muted Bob until "),
            ("/unmute Bob", "*** Mina unmuted Bob"),
            ("/delete 1", "*** Mina deleted message 1"),
            ("/kick Bob out", "*** Mina kicked Bob: out"),
            ("/ban Bob 5m", "*** Mina banned Bob until "),
            ("/unban Bob", "*** Mina unbanned Bob"),
            ("/topic -", "*** Mina cleared the topic"),
        ];
        for (command, line) in shown {
            mina.line(command);
            let got = carl.until_prefix("*** Mina ");
            assert!(got.starts_with(line), "{kind}: {command}: {got:?}");
        }
        assert!(bob.closed(), "{kind}: kicked");
        let answered = [
            ("/topic", "no topic in "),
            ("/mode", "modes of "),
            ("/bans", "bans in "),
            ("/modlog 3", "moderation log of "),
            ("/uninvite Ann", "Ann is no longer invited to "),
        ];
        for (command, start) in answered {
            mina.line(command);
            let got = mina.notice(start);
            assert!(got.starts_with(start), "{kind}: {command}: {got:?}");
        }
        // And a refusal, in the caller's format, the connection staying.
        mina.line("/kick Nobody");
        match &mut mina {
            Conn::Text(c) => assert_eq!(
                c.until_prefix("*** error"),
                "*** error: no one called Nobody in this room"
            ),
            Conn::Json(c) => assert_eq!(
                c.until_prefix("{\"type\":\"error\""),
                r#"{"type":"error","reason":"no one called Nobody in this room"}"#
            ),
            Conn::Ws(ws) => {
                let v = loop {
                    let v = frame(ws);
                    if v["type"] == "error" {
                        break v;
                    }
                };
                assert_eq!(v["reason"], "no one called Nobody in this room");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
