//! Version 1: lines of text in one room. A line is a message, or a `/command` answered in
//! the room's stream (so a reply comes after everything the room sent before it). `/join`
//! moves the session's one seat to another room.

use std::sync::Arc;
use std::time::Instant;

use super::{taken, AfterClaim, End, Held, Next, Seats, Session};
use crate::names::ClaimError;
use crate::protocol::{validate_name, validate_room, Reply};
use crate::refusal::{Notice, Refusal};
use crate::room::{Room, RoomError, Seat};
use crate::store::MAX_REPLAY;

/// `/me ACTION` (an action is speech, as a message is).
fn is_me(text: &str) -> bool {
    let lower = text.get(..4).map(str::to_ascii_lowercase);
    lower.as_deref() == Some("/me ") || lower.as_deref() == Some("/me\t")
}

impl Session {
    /// The commands the caller may use in `room`, for `/help`.
    pub(super) fn help(&self, room: &str) -> Vec<&'static str> {
        use crate::moderation::command::USAGE;
        use crate::moderation::record::Rank;
        let rank = self.hub.policy.rank(room, &self.who());
        let mut list: Vec<&'static str> = crate::protocol::HELP.to_vec();
        if rank < Rank::Op {
            // What a member may do: read the topic and modes, delete its own messages.
            list.extend(["/topic", "/mode", "/delete ID"]);
            return list;
        }
        for (verb, usage) in USAGE {
            let need = match *verb {
                "op" | "deop" => Rank::Owner,
                "sban" | "unsban" | "wall" => Rank::Admin,
                _ => Rank::Op,
            };
            if rank >= need {
                list.push(usage);
            }
        }
        list
    }

    /// The one room of a version-1 session (a version-2 session never gets here).
    fn one(&self) -> Option<(&Arc<Room>, Seat)> {
        match &self.seats {
            Seats::One(h) => Some((&h.room, h.seat)),
            Seats::Many(_) => None,
        }
    }

    pub(super) fn on_text(&mut self, text: &str, now: Instant, out: &mut Vec<u8>) -> Next {
        let Some((room, seat)) = self.one() else {
            return Next::Continue;
        };
        let speaks = !text.starts_with('/') || text.starts_with("//") || is_me(text);
        if speaks {
            if let Err(refusal) = self.hub.policy.speech(room.name(), &self.who()) {
                return match self.error(refusal) {
                    Ok(_) => self.after(now),
                    Err(_) => Next::End(End::SlowConsumer),
                };
            }
        }
        let result = if text.starts_with("//") {
            room.say(seat, &text[1..], false).map(|_| ())
        } else if let Some(cmd) = text.strip_prefix('/') {
            match self.command(cmd, out) {
                Ok(Some(end)) => return Next::End(end),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            room.say(seat, text, false).map(|_| ())
        };
        if result.is_err() {
            return Next::End(End::SlowConsumer);
        }
        self.after(now)
    }

    pub(super) fn reply(&self, reply: &Reply<'_>) -> Result<(), RoomError> {
        let (room, seat) = self.one().ok_or(RoomError::Gone)?;
        room.reply(seat, reply)
    }

    fn error(&self, refusal: Refusal) -> Result<Option<End>, RoomError> {
        self.reply(&Reply::Error(&refusal.to_string()))
            .map(|()| None)
    }

    fn command(&mut self, cmd: &str, out: &mut Vec<u8>) -> Result<Option<End>, RoomError> {
        let (room, seat) = match self.one() {
            Some((room, seat)) => (room.clone(), seat),
            None => return Err(RoomError::Gone),
        };
        let (verb, args) = match cmd.find([' ', '\t']) {
            Some(i) => (&cmd[..i], cmd[i..].trim()),
            None => (cmd, ""),
        };
        match verb.to_ascii_lowercase().as_str() {
            "who" => {
                let members = self.hub.who(&room);
                self.reply(&Reply::Who {
                    room: room.name(),
                    members: &members,
                })?;
            }
            "rooms" => {
                let (rooms, more) = self.hub.rooms(100);
                self.reply(&Reply::Rooms(&rooms, more))?;
            }
            "join" => {
                let (name, key) = match args.split_once([' ', '\t']) {
                    Some((name, key)) => (name, Some(key.trim())),
                    None => (args, None),
                };
                return self.join(name, key, out);
            }
            "nick" => {
                if let Err(e) = validate_name(args) {
                    return self.error(Refusal::NickUsage(e));
                }
                if args == self.name {
                    return self.error(Refusal::AlreadyCalled(args.into()));
                }
                // Under --require-auth a person is only the name they logged in with: the same
                // answer whatever the target, registered or not.
                if self.hub.users.required() {
                    return self.error(Refusal::OnlyYourRegisteredName);
                }
                // A registered login is who one is, on each of one's connections at once.
                if self.person {
                    return self.error(Refusal::RegisteredNick(self.name.clone()));
                }
                // A registered name (or a look-alike of one, which is that name) is taken only
                // at the handshake, with its password.
                if self.hub.users.is_registered(args) {
                    return self.error(Refusal::NeedsPassword(args.into()));
                }
                let room = room.name().to_owned();
                return match self.claim(&room, AfterClaim::Nick(args.into())) {
                    Some((answer, then)) => self.claimed(answer, then, out),
                    None => Ok(None),
                };
            }
            "me" => {
                if args.is_empty() {
                    return self.error(Refusal::MeUsage);
                }
                room.say(seat, args, true)?;
            }
            "msg" => {
                let (to, text) = match args.find([' ', '\t']) {
                    Some(i) => (&args[..i], args[i..].trim_start()),
                    None => (args, ""),
                };
                if to.is_empty() || text.is_empty() {
                    return self.error(Refusal::MsgUsage);
                }
                match self.hub.private(&room, seat, to, text) {
                    Ok(()) => self.converse(to, text),
                    Err(RoomError::NoSuchMember) => {
                        return self.error(Refusal::NoSuchMember(to.into()));
                    }
                    Err(e) => return Err(e),
                }
            }
            "quit" => {
                let _ = self.reply(&Reply::Notice(Notice::Bye.text()));
                return Ok(Some(End::Quit));
            }
            "help" => {
                let help = self.help(room.name());
                self.reply(&Reply::Help(&help))?;
            }
            "history" => {
                let n = match args {
                    "" => 20,
                    n => match n.parse::<usize>() {
                        Ok(n) if (1..=MAX_REPLAY).contains(&n) => n,
                        _ => return self.error(Refusal::HistoryUsage),
                    },
                };
                if !room.history_kept() {
                    return self.error(Refusal::HistoryOff);
                }
                if !room.history_available() {
                    return self.error(Refusal::HistoryUnavailable);
                }
                let start = room.history(seat, n)?;
                self.start_replay(start);
            }
            verb => match crate::moderation::command::parse(verb, args) {
                Some(Ok(command)) => {
                    let format = self.format;
                    let render =
                        move |reply: &Reply<'_>, out: &mut Vec<u8>| reply.render(format, out);
                    self.moderate(&room, seat, command, render, None);
                }
                Some(Err(refusal)) => return self.error(refusal),
                None => {
                    let shown: String = verb.chars().take(32).collect();
                    return self.error(Refusal::UnknownCommand(shown));
                }
            },
        }
        Ok(None)
    }

    fn rename(&mut self, new: &str) -> Result<Option<End>, RoomError> {
        let (room, seat) = match self.one() {
            Some((room, seat)) => (room.clone(), seat),
            None => return Err(RoomError::Gone),
        };
        match room.rename(seat, new) {
            Ok(()) => {
                let old = std::mem::replace(&mut self.name, new.to_owned());
                self.hub.release(room.name(), &old, self.id, false);
                Ok(None)
            }
            Err(RoomError::NameTaken) => {
                self.hub.release(room.name(), new, self.id, false);
                self.error(taken(new, "this room"))
            }
            Err(RoomError::LooksLike(like)) => {
                self.hub.release(room.name(), new, self.id, false);
                self.error(Refusal::TooMuchLike {
                    name: new.into(),
                    like,
                    place: "this room".into(),
                })
            }
            Err(e) => {
                self.hub.release(room.name(), new, self.id, false);
                Err(e)
            }
        }
    }

    fn join(
        &mut self,
        room: &str,
        key: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<Option<End>, RoomError> {
        if let Err(e) = validate_room(room) {
            return self.error(Refusal::JoinUsage(e));
        }
        if self.one().is_some_and(|(r, _)| r.name() == room) {
            return self.error(Refusal::AlreadyIn(room.into()));
        }
        if let Err(refusal) = self.hub.admit(room, &self.who(), key, false) {
            return self.error(refusal);
        }
        match self.claim(room, AfterClaim::Join(room.to_owned())) {
            Some((answer, then)) => self.claimed(answer, then, out),
            None => Ok(None),
        }
    }

    fn join_now(&mut self, room: &str, out: &mut Vec<u8>) -> Result<Option<End>, RoomError> {
        // Take the seat in the new room first, so a taken name leaves the client where it was.
        let new = !self.hub.exists(room);
        let joined = self.hub.join(room, self.joiner(self.format));
        match joined {
            Ok((new_room, seat)) => {
                self.hub
                    .entered(&new_room, seat, &self.who(), new, self.format);
                let old = std::mem::replace(&mut self.seats, Seats::One(Held::new(new_room, seat)));
                if let Seats::One(old) = old {
                    self.hub.leave(&old.room, old.seat, out, true);
                    self.hub
                        .release(old.room.name(), &self.name, self.id, self.person);
                }
                Ok(None)
            }
            Err(e) => {
                self.hub.release(room, &self.name, self.id, self.person);
                match e {
                    RoomError::NameTaken => self.error(taken(&self.name, room)),
                    RoomError::Full | RoomError::TooManyRooms | RoomError::LooksLike(_) => {
                        self.error(self.hub.refusal(&e, &self.name, room))
                    }
                    e => Err(e),
                }
            }
        }
    }

    /// Completes a `/nick` or `/join` once the name is claimed (or not).
    pub(super) fn claimed(
        &mut self,
        answer: Result<(), ClaimError>,
        then: AfterClaim,
        out: &mut Vec<u8>,
    ) -> Result<Option<End>, RoomError> {
        match (answer, then) {
            (Ok(()), AfterClaim::Nick(new)) => self.rename(&new),
            (Ok(()), AfterClaim::Join(room)) => self.join_now(&room, out),
            (Err(ClaimError::Taken), AfterClaim::Nick(new)) => self.error(taken(&new, "this room")),
            (Err(ClaimError::Taken), AfterClaim::Join(room)) => {
                self.error(taken(&self.name, &room))
            }
            (Err(ClaimError::Unavailable(_)), _) => self.error(Refusal::ClusterUnavailable),
            (_, AfterClaim::Enter { .. }) => Ok(None),
        }
    }
}
