//! What the failover client knows across connections so that each message is shown once: the
//! last id shown per room, who and where the user is now, and what each connection's replay
//! and join said. No I/O: the failover loop feeds it lines and prints what it returns.

use std::collections::HashMap;

use serde_json::Value;

use crate::render::{push_line, render_event, typed};

/// The answers sent instead of a replay we asked for: the join itself goes on.
fn is_history_error(reason: &str) -> bool {
    reason == "history is off on this server" || reason == "history unavailable"
}

/// What a handshake asks to have replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// `"history": 1`: where the room stands when we join (its last id), not shown: it was sent
    /// before we were there.
    Start,
    /// `"since": ID`: everything after the last message shown, which is what was missed.
    Since(u64),
}

/// A replay being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// The one the handshake asked for: its markers are ours, not the user's.
    Ours,
    /// An answer to the user's `/history`: shown as the server sent it.
    User,
}

/// What the client keeps across connections to show each message once: who and where it is
/// now, and the last message id shown in each room (ids are per room).
#[derive(Debug)]
pub struct Tracker {
    pub name: String,
    pub room: String,
    pub last: HashMap<String, u64>,
    /// `--json`: print the server's JSON lines instead of rendering them.
    pub raw: bool,
    /// Some server has sent machat's JSON: from then on a silent server is a stuck one.
    pub machat: bool,
    /// In a room at least once: until then a refused join ends the client, as before failover.
    pub joined_once: bool,
    /// Our own join line was shown: it is shown once, not again after each failover.
    pub join_shown: bool,
    /// "The server keeps no history" was said already.
    pub history_said: bool,
    /// `-history N`: the replay of the first join is shown, N messages (0: asked for one, to
    /// learn where the room stands, and not shown).
    pub show: u64,
}

/// What one connection has shown so far.
#[derive(Debug)]
pub struct Conn {
    pub ask: Ask,
    /// The room the handshake named.
    pub room: String,
    /// Our own join arrived: the replay we asked for is over and live traffic begins.
    pub in_room: bool,
    /// Typed lines may be sent: we are in (our join, or a server that does not speak JSON).
    pub ready: bool,
    pub block: Option<Block>,
    /// Missed messages shown from our replay.
    pub replayed: u64,
    /// Messages not shown because their id was not above the last one shown.
    pub skipped: u64,
    /// A live message (not replayed) has arrived.
    pub live: bool,
    /// The server's reason, when it refused the join.
    pub refusal: Option<String>,
    /// Why there was no replay (history off or unavailable).
    pub no_history: Option<String>,
    /// For stderr.
    pub notes: Vec<String>,
}

impl Tracker {
    pub fn new(name: String, room: String, raw: bool) -> Self {
        Tracker {
            name,
            room,
            last: HashMap::new(),
            raw,
            machat: false,
            joined_once: false,
            join_shown: false,
            history_said: false,
            show: 0,
        }
    }

    /// A new connection: resume after the last id shown in the room, if one is known.
    pub fn conn(&self) -> Conn {
        Conn {
            ask: match self.last.get(&self.room) {
                Some(&id) => Ask::Since(id),
                None => Ask::Start,
            },
            room: self.room.clone(),
            in_room: false,
            ready: false,
            block: None,
            replayed: 0,
            skipped: 0,
            live: false,
            refusal: None,
            no_history: None,
            notes: Vec::new(),
        }
    }

    /// Under the current name (a `/nick` carries over), always JSON, so that ids are known;
    /// the password goes again each time.
    pub fn handshake(&self, ask: Ask, password: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({"name": self.name, "room": self.room, "format": "json"});
        match ask {
            Ask::Start => v["history"] = self.show.max(1).into(),
            Ask::Since(id) => v["since"] = id.into(),
        }
        if let Some(pw) = password {
            v["password"] = pw.into();
        }
        v.to_string().into_bytes()
    }

    /// A quiet server kept the connection open: take it that we are in.
    pub fn assume_in(&mut self, conn: &mut Conn) {
        conn.ready = true;
        self.joined_once = true;
    }

    /// Handles one line from the server: appends to `out` what to print, if anything.
    pub fn on_line(&mut self, conn: &mut Conn, line: &[u8], out: &mut Vec<u8>) {
        let Some(ev) = typed(line) else {
            return self.on_text(conn, line, out);
        };
        self.machat = true;
        let s = |key: &str| ev.get(key).and_then(Value::as_str);
        let (kind, room, name) = (s("type").unwrap_or(""), s("room"), s("name"));
        match kind {
            "history" if !conn.in_room => {
                conn.block = Some(Block::Ours);
                return;
            }
            "end_of_history" if conn.block == Some(Block::Ours) => {
                conn.block = None;
                if conn.ask == Ask::Start {
                    // An empty room: every message from now on is new to us.
                    let room = room.unwrap_or(&conn.room).to_owned();
                    self.last.entry(room).or_insert(0);
                }
                return;
            }
            "history" => conn.block = Some(Block::User),
            "end_of_history" => conn.block = None,
            "message" | "action" => {
                let id = ev.get("id").and_then(Value::as_u64);
                if let (Some(id), Some(room)) = (id, room) {
                    if !self.fresh(conn, room, id) {
                        return;
                    }
                }
            }
            "join" if !conn.in_room && name == Some(&self.name) && room == Some(&conn.room) => {
                conn.in_room = true;
                self.assume_in(conn);
                if std::mem::replace(&mut self.join_shown, true) {
                    // Back in after a failover: stdout goes on as if we had never left.
                    return;
                }
            }
            "join" if conn.in_room && name == Some(&self.name) => {
                // The user's /join: a room of its own ids, and nothing of it seen yet. (A
                // room we come back to must not resume from our last visit.)
                if let Some(room) = room {
                    self.room = room.to_owned();
                    self.last.remove(room);
                }
            }
            "nick" if name == Some(&self.name) => {
                if let Some(new) = s("new") {
                    self.name = new.to_owned();
                }
            }
            "error" if !conn.in_room => {
                let reason = s("reason").unwrap_or("");
                if is_history_error(reason) {
                    conn.no_history = Some(reason.to_owned());
                    // Without a replay the last id is no use, and may even mislead: with
                    // --history off a room's ids start over when it is created anew.
                    self.last.remove(&conn.room);
                    return;
                }
                conn.refusal = Some(reason.to_owned());
                if self.joined_once {
                    return; // said on stderr by the reconnect loop
                }
            }
            _ => {}
        }
        if self.raw || render_event(&ev, &self.name, out).is_none() {
            push_line(out, line);
        }
    }

    /// A line that is not machat's JSON: printed as it came.
    pub fn on_text(&mut self, conn: &mut Conn, line: &[u8], out: &mut Vec<u8>) {
        if !conn.ready {
            if let Some(reason) = line.strip_prefix(b"*** error: ") {
                // Refusals sent before a handshake is understood are always plain text.
                let reason = String::from_utf8_lossy(reason);
                conn.refusal = Some(reason.trim_end().to_owned());
                if self.joined_once {
                    return;
                }
            } else {
                // A server that ignores "format" (MaChat's own) and so sends no ids: we are
                // in, and there is nothing to resume from.
                self.assume_in(conn);
            }
        }
        push_line(out, line);
    }

    /// Whether to show a message with this id, remembering it if so.
    pub fn fresh(&mut self, conn: &mut Conn, room: &str, id: u64) -> bool {
        match conn.block {
            // The user's /history shows old messages on purpose; they say nothing about what
            // has been shown live.
            Some(Block::User) => return true,
            Some(Block::Ours) if conn.ask == Ask::Start => {
                let last = self.last.entry(room.to_owned()).or_insert(id);
                *last = (*last).max(id);
                return self.show > 0;
            }
            _ => {}
        }
        let first_live = conn.block.is_none() && !std::mem::replace(&mut conn.live, true);
        match self.last.get_mut(room) {
            // A server that resumed after `since` sends only later ids, so if its replay was
            // empty and its first live id is not later, its ids started over (a server with
            // --history memory restarted): skipping would hide every message until the ids
            // caught up.
            Some(last)
                if id <= *last
                    && first_live
                    && matches!(conn.ask, Ask::Since(_))
                    && conn.replayed + conn.skipped == 0 =>
            {
                conn.notes.push(format!(
                    "message ids in {room} started over at the server (its history was lost?): showing them from {id} on"
                ));
                *last = id;
            }
            Some(last) if id <= *last => {
                conn.skipped += 1;
                if conn.block.is_none() {
                    conn.notes.push(format!(
                        "message {id} in {room} not shown: a message with that id or a later one was shown already"
                    ));
                }
                return false;
            }
            Some(last) => *last = id,
            None => {
                self.last.insert(room.to_owned(), id);
            }
        }
        if conn.block == Some(Block::Ours) {
            conn.replayed += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut Tracker, c: &mut Conn, lines: &[&str]) -> String {
        let mut out = Vec::new();
        for l in lines {
            t.on_line(c, format!("{l}\n").as_bytes(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn msg(id: u64, name: &str, text: &str) -> String {
        format!(
            r#"{{"type":"message","id":{id},"room":"r","name":"{name}","text":"{text}","ts":"x"}}"#
        )
    }

    const HIST0: &str = r#"{"type":"history","room":"r","count":0}"#;
    const HIST1: &str = r#"{"type":"history","room":"r","count":1}"#;
    const HIST2: &str = r#"{"type":"history","room":"r","count":2}"#;
    const END: &str = r#"{"type":"end_of_history","room":"r"}"#;

    fn join(name: &str, room: &str) -> String {
        format!(r#"{{"type":"join","room":"{room}","name":"{name}","ts":"x"}}"#)
    }

    #[test]
    fn first_join_learns_where_the_room_stands_without_showing_it() {
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        assert_eq!(c.ask, Ask::Start);
        assert_eq!(
            t.handshake(c.ask, Some("pw")),
            br#"{"name":"Cli","room":"r","format":"json","history":1,"password":"pw"}"#
        );
        let out = feed(&mut t, &mut c, &[HIST1, &msg(7, "Old", "before"), END]);
        assert_eq!(out, "");
        assert!(!c.ready);
        let out = feed(&mut t, &mut c, &[&join("Cli", "r"), &msg(8, "S", "new")]);
        assert_eq!(out, "*** Cli joined\nS:new\n");
        assert!(c.ready && c.in_room && t.joined_once);
        assert_eq!(t.last.get("r"), Some(&8));

        // An empty room: everything after the join is new.
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        feed(&mut t, &mut c, &[HIST0, END, &join("Cli", "r")]);
        assert_eq!(t.conn().ask, Ask::Since(0));

        // A join slower than QUIET_JOIN, taken for done before it came: still shown, once.
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        t.assume_in(&mut c);
        let out = feed(&mut t, &mut c, &[HIST0, END, &join("Cli", "r")]);
        assert_eq!(out, "*** Cli joined\n");
        let mut c = t.conn();
        assert_eq!(feed(&mut t, &mut c, &[HIST0, END, &join("Cli", "r")]), "");
    }

    #[test]
    fn a_resume_shows_what_was_missed_once_and_no_markers() {
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        feed(
            &mut t,
            &mut c,
            &[HIST0, END, &join("Cli", "r"), &msg(1, "S", "m1")],
        );
        let mut c = t.conn();
        assert_eq!(c.ask, Ask::Since(1));
        assert_eq!(
            t.handshake(c.ask, None),
            br#"{"name":"Cli","room":"r","format":"json","since":1}"#
        );
        let out = feed(
            &mut t,
            &mut c,
            &[
                HIST2,
                &msg(1, "S", "m1"),
                &msg(2, "S", "m2"),
                END,
                &join("Cli", "r"),
                &msg(3, "S", "m3"),
                &msg(3, "S", "m3"),
            ],
        );
        assert_eq!(out, "S:m2\nS:m3\n");
        assert_eq!((c.replayed, c.skipped), (1, 2));
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        // A second live copy is not shown either.
        assert_eq!(feed(&mut t, &mut c, &[&msg(2, "S", "m2")]), "");
        // The user's own /history shows old messages and its markers, and changes nothing.
        let out = feed(&mut t, &mut c, &[HIST1, &msg(1, "S", "m1"), END]);
        assert_eq!(out, "*** history: 1 message\nS:m1\n*** end of history\n");
        assert_eq!(t.conn().ask, Ask::Since(3));
    }

    #[test]
    fn ids_that_started_over_are_shown_not_skipped() {
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        feed(
            &mut t,
            &mut c,
            &[HIST0, END, &join("Cli", "r"), &msg(20, "S", "m20")],
        );
        // A restarted --history memory server: nothing after 20, and ids from 1 again.
        let mut c = t.conn();
        let out = feed(
            &mut t,
            &mut c,
            &[
                HIST0,
                END,
                &join("Cli", "r"),
                &msg(3, "S", "a"),
                &msg(4, "S", "b"),
            ],
        );
        assert_eq!(out, "S:a\nS:b\n");
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert_eq!(t.conn().ask, Ask::Since(4));
        // A server with --history off cannot resume: its ids are no guide either.
        let mut c = t.conn();
        let off = r#"{"type":"error","reason":"history is off on this server"}"#;
        let out = feed(&mut t, &mut c, &[off, &join("Cli", "r"), &msg(1, "S", "c")]);
        assert_eq!(out, "S:c\n");
        assert_eq!(
            c.no_history.as_deref(),
            Some("history is off on this server")
        );
    }

    #[test]
    fn refusals_and_history_errors_before_the_join() {
        let refused = r#"{"type":"error","reason":"name Cli is already taken in room r"}"#;
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        // Never in yet: shown, as with one address.
        let out = feed(&mut t, &mut c, &[refused]);
        assert_eq!(out, "*** error: name Cli is already taken in room r\n");
        assert!(c.refusal.is_some() && !c.ready);
        let mut c = t.conn();
        let off = r#"{"type":"error","reason":"history is off on this server"}"#;
        let out = feed(&mut t, &mut c, &[off, &join("Cli", "r")]);
        assert_eq!(out, "*** Cli joined\n");
        assert_eq!(
            c.no_history.as_deref(),
            Some("history is off on this server")
        );
        assert_eq!(t.conn().ask, Ask::Start);
        // In once: a refusal while reconnecting is for stderr, not stdout.
        let mut c = t.conn();
        assert_eq!(feed(&mut t, &mut c, &[refused]), "");
        assert!(c.refusal.is_some());
        let mut c = t.conn();
        assert_eq!(
            feed(
                &mut t,
                &mut c,
                &["*** error: server full: too many connections"]
            ),
            ""
        );
        assert_eq!(
            c.refusal.as_deref(),
            Some("server full: too many connections")
        );
        // Errors after the join are the user's.
        let mut c = t.conn();
        let out = feed(
            &mut t,
            &mut c,
            &[
                &join("Cli", "r"),
                r#"{"type":"error","reason":"line too long"}"#,
            ],
        );
        assert_eq!(out, "*** error: line too long\n");
    }

    #[test]
    fn text_lines_unknown_events_and_raw_json_pass_through() {
        let mut t = Tracker::new("Mina".into(), "r".into(), false);
        let mut c = t.conn();
        // MaChat's Go server ignores "format": its text is printed as it came, and we are in.
        assert_eq!(feed(&mut t, &mut c, &["Mina:hi"]), "Mina:hi\n");
        assert!(c.ready && !t.machat);
        let poll = r#"{"type":"poll","question":"lunch?"}"#;
        assert_eq!(feed(&mut t, &mut c, &[poll]), format!("{poll}\n"));
        let mut out = Vec::new();
        t.on_line(&mut c, b"no newline at the end", &mut out);
        assert_eq!(out, b"no newline at the end\n");

        let mut t = Tracker::new("Cli".into(), "r".into(), true);
        let mut c = t.conn();
        let (j, m1) = (join("Cli", "r"), msg(1, "S", "m1"));
        let out = feed(
            &mut t,
            &mut c,
            &[HIST1, &msg(0, "S", "old"), END, &j, &m1, &m1],
        );
        assert_eq!(out, format!("{j}\n{m1}\n"));
    }

    #[test]
    fn names_and_rooms_follow_nick_and_join() {
        let mut t = Tracker::new("Mina".into(), "r".into(), false);
        let mut c = t.conn();
        let nick = r#"{"type":"nick","room":"r","name":"Mina","new":"Minnie","ts":"x"}"#;
        let private = r#"{"type":"private","from":"Minnie","to":"Bob","text":"hi","ts":"x"}"#;
        let reply = r#"{"type":"private","from":"Bob","to":"Minnie","text":"yo","ts":"x"}"#;
        let out = feed(
            &mut t,
            &mut c,
            &[
                HIST0,
                END,
                &join("Mina", "r"),
                &msg(4, "S", "a"),
                nick,
                private,
                reply,
            ],
        );
        assert_eq!(
            out,
            "*** Mina joined\nS:a\n*** Mina is now Minnie\n*** private to Bob: hi\n*** private from Bob: yo\n"
        );
        assert_eq!(t.name, "Minnie");
        assert!(String::from_utf8_lossy(&t.handshake(Ask::Since(4), None)).contains("\"Minnie\""));
        // /join elsewhere: ids there are another sequence, and nothing of it is known yet.
        let out = feed(&mut t, &mut c, &[&join("Minnie", "lobby")]);
        assert_eq!(out, "*** Minnie joined\n");
        assert_eq!((t.room.as_str(), t.conn().ask), ("lobby", Ask::Start));
        feed(&mut t, &mut c, &[&join("Minnie", "r")]);
        assert_eq!(
            t.conn().ask,
            Ask::Start,
            "a room we come back to starts afresh"
        );
    }
}
