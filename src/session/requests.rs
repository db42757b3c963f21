//! Version 2: one JSON request per line (per frame on a WebSocket), each naming its room, so
//! one connection can be in many rooms (`docs/PROTOCOL.md`, section 17).
//!
//! An answer about a room the session is in (an `ok` for a message, `who`, the end of a
//! `history`) goes into that room's stream for this member, after everything the room sent it
//! before the request, as a version-1 reply does. An answer that belongs to no room (an error,
//! `rooms`, the `ok` of a `leave` or of a `nick`) goes straight to the connection's output,
//! which is bounded like a room's queue: a client that sends requests and never reads the
//! answers is cut off.

use std::time::Instant;

use super::{taken, AfterClaim, End, Next, Session};
use crate::marks::{Edit, Outcome};
use crate::names::ClaimError;
use crate::protocol::{clean_message, Reply};
use crate::refusal::{Notice, Refusal};
use crate::replay::PagedReplay;
use crate::request::{parse_request, render_ok, render_reply, Kind, ReqId};
use crate::room::{Replay, RoomError};
use crate::store::MAX_REPLAY;

/// Messages a `history` request replays when it gives no `limit` (as `/history`).
const HISTORY_DEFAULT: u64 = 20;

impl Session {
    pub(super) fn on_request(&mut self, raw: &[u8], now: Instant, out: &mut Vec<u8>) -> Next {
        // A blank line (Enter after the handshake in `nc`, a keep-alive) asks nothing.
        if raw
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return self.after(now);
        }
        let done = match parse_request(raw) {
            Ok(request) => self.request(request.kind, request.req, out),
            Err(bad) => self.refuse(bad.req.as_ref(), &bad.refusal, out),
        };
        match done {
            Ok(()) => self.after(now),
            Err(end) => Next::End(end),
        }
    }

    /// A line longer than `--max-line` (TCP): an error, and the connection goes on.
    pub(super) fn answer_out(
        &mut self,
        req: Option<&ReqId>,
        refusal: &Refusal,
        out: &mut Vec<u8>,
    ) -> Next {
        match self.refuse(req, refusal, out) {
            Ok(()) => Next::Continue,
            Err(end) => Next::End(end),
        }
    }

    fn request(&mut self, kind: Kind, req: Option<ReqId>, out: &mut Vec<u8>) -> Result<(), End> {
        let req = req.as_ref();
        if let Kind::Join {
            room,
            history,
            since,
            key,
        } = &kind
        {
            return self.join_request(room, (*history, *since), key.as_deref(), req, out);
        }
        match kind {
            Kind::Rooms => {
                let (rooms, more) = self.hub.rooms(100);
                let mut bytes = Vec::new();
                render_reply(&Reply::Rooms(&rooms, more), req, &mut bytes);
                return self.to_out(&bytes, out);
            }
            Kind::Nick { name } => return self.nick_request(name, req, out),
            Kind::Marks => {
                let Some(m) = self.seats.marks() else {
                    return self.refuse(req, &Refusal::MarksForPersons, out);
                };
                let mut bytes = Vec::new();
                let hub = &self.hub;
                hub.marks
                    .snapshot(&m.person, &m.inbox, req, &|r| hub.last_id(r), &mut bytes);
                return self.to_out(&bytes, out);
            }
            Kind::Read { room, id } => {
                let Some(person) = self.marks_key() else {
                    return self.refuse(req, &Refusal::MarksForPersons, out);
                };
                // Never past the room's last message: a huge id cannot mark the future read.
                let id = id.min(self.hub.last_id(&room));
                let edit = Edit::Read {
                    room: room.clone(),
                    id,
                    at: crate::marks::now_ms(),
                };
                let outcome = self.hub.mark(person, edit);
                return self.marked(outcome, &room, req, out);
            }
            Kind::Notify { room, level } => {
                let Some(person) = self.marks_key() else {
                    return self.refuse(req, &Refusal::MarksForPersons, out);
                };
                let edit = Edit::Notify {
                    room: room.clone(),
                    level,
                    at: crate::marks::now_ms(),
                };
                let outcome = self.hub.mark(person, edit);
                return self.marked(outcome, &room, req, out);
            }
            Kind::Dm { to } => return self.dm_request(&to, req, out),
            Kind::Quit => {
                let mut bytes = Vec::new();
                render_reply(&Reply::Notice(Notice::Bye.text()), req, &mut bytes);
                out.extend_from_slice(&bytes);
                return Err(End::Quit);
            }
            _ => {}
        }
        let Some(name) = kind.room() else {
            return Ok(());
        };
        let Some(i) = self.seats.find(name) else {
            return self.refuse(req, &Refusal::NotIn(name.into()), out);
        };
        let (room, seat) = {
            let held = &self.seats.as_slice()[i];
            (held.room.clone(), held.seat)
        };
        let gone = |_: RoomError| End::SlowConsumer;
        let action = matches!(kind, Kind::Me { .. });
        match kind {
            Kind::Leave { .. } => {
                if let Some(person) = self.marks_key() {
                    let edit = Edit::Remove {
                        room: room.name().to_owned(),
                    };
                    self.hub.mark(person, edit);
                }
                if let Some(held) = self.seats.remove(i) {
                    self.hub.leave(&held.room, held.seat, out, true);
                    self.hub
                        .release(held.room.name(), &self.name, self.id, self.person);
                }
                if let Some(req) = req {
                    let mut bytes = Vec::new();
                    render_ok(req, None, &mut bytes);
                    return self.to_out(&bytes, out);
                }
                Ok(())
            }
            Kind::Say { text, .. } | Kind::Me { text, .. } => {
                let text = clean_message(text.as_bytes());
                if action && text.trim().is_empty() {
                    return self.refuse(req, &Refusal::RequestEmpty("text"), out);
                }
                if let Err(refusal) = self.hub.policy.speech(room.name(), &self.who()) {
                    return self.refuse(req, &refusal, out);
                }
                if self.hub.shared() {
                    // In a cluster the `ok` says the message was handed over, and comes first:
                    // queued in the room's stream before the hand-over, since the cluster may
                    // deliver the message back before `say` has even returned (a full run of
                    // the suite met that order).
                    self.ok(req, i, None)?;
                    room.say(seat, &text, action).map_err(gone)?;
                    return Ok(());
                }
                let id = room.say(seat, &text, action).map_err(gone)?;
                self.ok(req, i, (id > 0).then_some(id))
            }
            Kind::Msg { to, text, .. } => {
                let text = clean_message(text.as_bytes());
                if text.trim().is_empty() {
                    return self.refuse(req, &Refusal::RequestEmpty("text"), out);
                }
                match self.hub.private(&room, seat, &to, &text) {
                    Ok(()) => {
                        self.converse(&to, &text);
                        self.ok(req, i, None)
                    }
                    Err(RoomError::NoSuchMember) => {
                        self.refuse(req, &Refusal::NoSuchMember(to), out)
                    }
                    Err(e) => Err(gone(e)),
                }
            }
            Kind::Who { .. } => {
                let members = self.hub.who(&room);
                let reply = Reply::Who {
                    room: room.name(),
                    members: &members,
                };
                let mut bytes = Vec::new();
                render_reply(&reply, req, &mut bytes);
                room.send_to(seat, bytes).map_err(gone)
            }
            Kind::History { limit, before, .. } => {
                let n = limit.unwrap_or(HISTORY_DEFAULT);
                if !(1..=MAX_REPLAY as u64).contains(&n) {
                    return self.refuse(req, &Refusal::HistoryLimit, out);
                }
                if !room.history_kept() {
                    return self.refuse(req, &Refusal::HistoryOff, out);
                }
                if !room.history_available() {
                    return self.refuse(req, &Refusal::HistoryUnavailable, out);
                }
                let start = room.history_before(seat, n as usize, before);
                let start = start.map_err(gone)?;
                let replay = PagedReplay::new(start, room.max_pending(), self.rules.max_line);
                self.seats.as_mut_slice()[i].replay = Some(Box::new(replay));
                // Queued behind the replay: the `ok` comes after its last line.
                self.ok(req, i, None)
            }
            Kind::Command { text, .. } => {
                // Cleaned as a version-1 line is: a topic or reason reaches every member.
                let text = crate::protocol::clean_line(text.as_bytes());
                let text = text.strip_prefix('/').unwrap_or(&text);
                let (verb, args) = match text.find([' ', '\t']) {
                    Some(i) => (&text[..i], text[i..].trim()),
                    None => (text, ""),
                };
                let verb = verb.to_ascii_lowercase();
                if verb == "help" {
                    let help = self.help(room.name());
                    let mut bytes = Vec::new();
                    render_reply(&Reply::Help(&help), req, &mut bytes);
                    return room.send_to(seat, bytes).map_err(gone);
                }
                let command = match crate::moderation::command::parse(&verb, args) {
                    Some(Ok(command)) => command,
                    Some(Err(refusal)) => return self.refuse(req, &refusal, out),
                    None => {
                        let shown: String = verb.chars().take(32).collect();
                        return self.refuse(req, &Refusal::UnknownCommand(shown), out);
                    }
                };
                let (ok, req) = (req.cloned(), req.cloned());
                let render = move |reply: &Reply<'_>, out: &mut Vec<u8>| {
                    render_reply(reply, req.as_ref(), out)
                };
                self.moderate(&room, seat, command, render, ok);
                Ok(())
            }
            Kind::Join { .. }
            | Kind::Rooms
            | Kind::Nick { .. }
            | Kind::Quit
            | Kind::Marks
            | Kind::Read { .. }
            | Kind::Notify { .. }
            | Kind::Dm { .. } => Ok(()),
        }
    }

    fn join_request(
        &mut self,
        room: &str,
        (history, since): (Option<u64>, Option<u64>),
        key: Option<&str>,
        req: Option<&ReqId>,
        out: &mut Vec<u8>,
    ) -> Result<(), End> {
        if self.seats.find(room).is_some() {
            return self.refuse(req, &Refusal::AlreadyIn(room.into()), out);
        }
        if let Err(refusal) = self.hub.admit(room, &self.who(), key, true) {
            return self.refuse(req, &refusal, out);
        }
        if self.seats.len() >= self.rules.max_rooms {
            let max = self.rules.max_rooms;
            return self.refuse(req, &Refusal::TooManyRoomsPerSession(max), out);
        }
        if let Err(refusal) = self.seats.reserve() {
            return self.refuse(req, &refusal, out);
        }
        let replay = self.rules.replay(since, history, self.hub.keeps_history());
        let then = AfterClaim::Enter {
            room: room.to_owned(),
            replay,
            req: req.cloned(),
        };
        let Some((answer, AfterClaim::Enter { replay, req, .. })) = self.claim(room, then) else {
            return Ok(()); // it goes on once the cluster has answered
        };
        match self.entered(room, replay, req, answer, out) {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    /// Takes the seat a `join` asked for, once the name is claimed (at once on one server);
    /// `Some` if the session must end.
    pub(super) fn entered(
        &mut self,
        room: &str,
        replay: Option<Replay>,
        req: Option<ReqId>,
        claimed: Result<(), ClaimError>,
        out: &mut Vec<u8>,
    ) -> Option<End> {
        let req = req.as_ref();
        let refusal = match claimed {
            Ok(()) => {
                let new = !self.hub.exists(room);
                let joined = self
                    .hub
                    .join_replaying(room, self.joiner(self.format), replay);
                match joined {
                    Ok((joined, seat, history)) => {
                        self.hub
                            .entered(&joined, seat, &self.who(), new, self.format);
                        self.add(joined, seat, history);
                        let last = self.seats.len() - 1;
                        if let Err(end) = self.keep_joined(room, out) {
                            return Some(end);
                        }
                        return self.ok(req, last, None).err();
                    }
                    Err(e) => {
                        self.hub.release(room, &self.name, self.id, self.person);
                        match e {
                            // Version 2 names the room as the handshake does (section 17).
                            RoomError::NameTaken => taken(&self.name, &format!("room {room}")),
                            e => self.hub.refusal(&e, &self.name, room),
                        }
                    }
                }
            }
            Err(ClaimError::Taken) => taken(&self.name, &format!("room {room}")),
            Err(ClaimError::Unavailable(_)) => Refusal::ClusterUnavailable,
        };
        self.seats.unreserve();
        self.refuse(req, &refusal, out).err()
    }

    /// A person joined `room`: they keep it (if they did not), or are told they keep too many.
    pub(super) fn keep_joined(&self, room: &str, out: &mut Vec<u8>) -> Result<(), End> {
        let Some(person) = self.marks_key() else {
            return Ok(());
        };
        // A conversation's mark is made by `dm` (with its party); a join keeps it as it is.
        if crate::marks::is_conversation(room) {
            return Ok(());
        }
        match self.hub.keep_room(person, room, None) {
            Outcome::Full => {
                let mut bytes = Vec::new();
                render_reply(&Reply::Notice(Notice::MarksFull.text()), None, &mut bytes);
                self.to_out(&bytes, out)
            }
            Outcome::Done | Outcome::NoMark => Ok(()),
        }
    }

    /// The answer to a `read` or `notify`.
    fn marked(
        &self,
        outcome: Outcome,
        room: &str,
        req: Option<&ReqId>,
        out: &mut Vec<u8>,
    ) -> Result<(), End> {
        match outcome {
            Outcome::NoMark => self.refuse(req, &Refusal::NoMark(room.into()), out),
            Outcome::Done | Outcome::Full => match req {
                Some(req) => {
                    let mut bytes = Vec::new();
                    render_ok(req, None, &mut bytes);
                    self.to_out(&bytes, out)
                }
                None => Ok(()),
            },
        }
    }

    /// `{"type":"dm","to":NAME}`: opens (keeps, for both) the conversation with NAME; the
    /// client then joins it as any room.
    fn dm_request(&mut self, to: &str, req: Option<&ReqId>, out: &mut Vec<u8>) -> Result<(), End> {
        let Some(person) = self.marks_key().map(str::to_owned) else {
            return self.refuse(req, &Refusal::DmForPersons, out);
        };
        // A look-alike of a registered name is that name.
        let Some(other) = self.hub.users.registered_name(to) else {
            return self.refuse(req, &Refusal::DmNotRegistered(to.into()), out);
        };
        if other == person {
            return self.refuse(req, &Refusal::DmYourself, out);
        }
        let room = crate::marks::conversation(&person, &other);
        if self.hub.keep_room(&person, &room, Some(&other)) == Outcome::Full {
            let mut bytes = Vec::new();
            render_reply(&Reply::Notice(Notice::MarksFull.text()), None, &mut bytes);
            self.to_out(&bytes, out)?;
        }
        // A full party keeps the marks they have: the conversation is not added to theirs.
        self.hub.keep_room(&other, &room, Some(&person));
        let mut line = serde_json::json!({ "type": "ok" });
        if let serde_json::Value::Object(map) = &mut line {
            if let Some(id) = req.and_then(|r| serde_json::from_str(r.as_json()).ok()) {
                map.insert("req".into(), id);
            }
            map.insert("room".into(), serde_json::Value::String(room));
        }
        let mut bytes = Vec::new();
        crate::protocol::push_json(&mut bytes, &line);
        self.to_out(&bytes, out)
    }

    /// A private message a person sent to a registered name: kept in their conversation too.
    pub(super) fn converse(&self, to: &str, text: &str) {
        if !self.person {
            return;
        }
        let Some(other) = self.hub.users.registered_name(to) else {
            return;
        };
        let me = self.hub.person_key(&self.name);
        if other != me {
            self.hub.converse(&me, &other, text);
        }
    }

    /// `{"type":"ok","req":R}` in room `i`'s stream, when the request had an id.
    fn ok(&self, req: Option<&ReqId>, i: usize, id: Option<u64>) -> Result<(), End> {
        let Some(req) = req else {
            return Ok(());
        };
        let Some(held) = self.seats.as_slice().get(i) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        render_ok(req, id, &mut bytes);
        held.room
            .send_to(held.seat, bytes)
            .map_err(|_| End::SlowConsumer)
    }

    /// An error, straight to the connection's output.
    pub(super) fn refuse(
        &self,
        req: Option<&ReqId>,
        refusal: &Refusal,
        out: &mut Vec<u8>,
    ) -> Result<(), End> {
        let mut bytes = Vec::new();
        render_reply(&Reply::Error(&refusal.to_string()), req, &mut bytes);
        self.to_out(&bytes, out)
    }

    /// Appends an answer to the connection's output, which may hold no more than a member may
    /// fall behind in a room (`--max-pending`).
    pub(super) fn to_out(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), End> {
        if out.len() + bytes.len() > self.hub.max_pending() {
            return Err(End::SlowConsumer);
        }
        out.extend_from_slice(bytes);
        Ok(())
    }
}
