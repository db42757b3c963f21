//! A session: one client inside the chat, after its handshake. It holds a seat in each room it
//! is in ([`seats`]), turns each line into a message or a command (version 1, one room:
//! [`commands`]) or into a request (version 2, many rooms: [`requests`]), applies the line
//! rate limit, and talks to its rooms and the hub.
//!
//! Nothing here does I/O or awaits: the connection feeds lines in and carries the outcome out,
//! so every rule of the chat can be exercised without a socket.

mod commands;
mod moderate;
mod nick;
mod rate;
mod requests;
mod seats;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;

use crate::hub::{Claim, Hub};
use crate::limits::SeatPass;
use crate::marks::Inbox;
use crate::names::ClaimError;
use crate::protocol::{Format, Reply};
use crate::refusal::Refusal;
use crate::replay::{PagedReplay, Step};
use crate::request::ReqId;
use crate::room::{Parting, Replay, ReplayStart, Room, RoomError, Seat, Take};
use crate::settings::SessionRules;
use crate::store::MAX_REPLAY;

pub use rate::RateLimit;
use seats::PersonMarks;
pub use seats::{Held, Seats};

/// Why a session ends; the reason is logged, and shown to the client where it is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client asked (`/quit`).
    Quit,
    /// The client fell too far behind and was cut off by its room.
    SlowConsumer,
    /// A version-1 client was closed out of its one room (kicked or banned): the room's line
    /// saying so is the last it gets.
    Removed,
}

/// What the connection should do after a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Stop reading until the instant: the client used up its line budget.
    Throttle(Instant),
    /// Stop reading until the replay or the cluster's answer the session waits for is in, so
    /// replies keep the order of the commands.
    Wait,
    End(End),
}

impl SessionRules {
    /// What to replay before live messages on joining: a resume, the last N asked for, or the
    /// server's default.
    pub fn replay(&self, since: Option<u64>, history: Option<u64>, keeps: bool) -> Option<Replay> {
        let max = (self.history_max as usize).min(MAX_REPLAY);
        match (since, history) {
            // A resume is paged (see `replay`): every stored message after the id comes.
            (Some(after), _) => Some(Replay {
                after: Some(after),
                limit: MAX_REPLAY,
            }),
            (None, Some(0)) => None,
            (None, Some(n)) => Some(Replay {
                after: None,
                limit: (n as usize).min(max),
            }),
            (None, None) if self.history_on_join > 0 && keeps => Some(Replay {
                after: None,
                limit: (self.history_on_join as usize).min(max),
            }),
            (None, None) => None,
        }
    }
}

pub struct Session {
    hub: Arc<Hub>,
    pub id: u64,
    pub name: String,
    pub format: Format,
    seats: Seats,
    limit: Option<RateLimit>,
    rules: Arc<SessionRules>,
    /// In cluster mode: a command waiting for the cluster to confirm the name.
    /// Boxed: rare (cluster mode, while a claim is on its way), and idle sessions are many.
    claim_wait: Option<Box<ClaimWait>>,
    /// A person's connection (a registered name, its password proved at the handshake): it
    /// shares the name with the person's other connections, and keeps it (no `/nick`).
    pub person: bool,
    /// A person whose registered name is a server admin's.
    pub admin: bool,
    /// Where the client connects from (bans by address); set, like `person` and `admin`,
    /// by the lifecycle that made the session.
    pub addr: IpAddr,
}

/// A claim's answer still on its way from the cluster (see [`Claim::Pending`]).
type Answer = Pin<Box<dyn Future<Output = Result<(), ClaimError>> + Send>>;

/// A command that goes on once the cluster has answered its claims.
enum ClaimWait {
    /// One room's claim: a version-1 `/nick` or `/join`, a version-2 `join`.
    One { answer: Answer, then: AfterClaim },
    /// Version 2: a `nick` request, waiting for the new name in every room of the session.
    Rename(nick::Renaming),
}

enum AfterClaim {
    /// Version 1: `/nick NEW`.
    Nick(String),
    /// Version 1: `/join ROOM`.
    Join(String),
    /// Version 2: a `join` request.
    Enter {
        room: String,
        replay: Option<Replay>,
        req: Option<ReqId>,
    },
}

impl Session {
    /// A version-1 session, in its one room.
    pub fn new(
        hub: Arc<Hub>,
        id: u64,
        name: String,
        format: Format,
        (room, seat): (Arc<Room>, Seat),
        limit: Option<RateLimit>,
        rules: Arc<SessionRules>,
    ) -> Self {
        Session {
            hub,
            id,
            name,
            format,
            seats: Seats::One(Held::new(room, seat)),
            limit,
            rules,
            claim_wait: None,
            person: false,
            admin: false,
            addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// A version-2 session, in no room yet: it joins rooms with requests (or [`Session::add`]).
    pub fn many(
        hub: Arc<Hub>,
        id: u64,
        name: String,
        limit: Option<RateLimit>,
        rules: Arc<SessionRules>,
        pass: Option<SeatPass>,
        addr: IpAddr,
    ) -> Self {
        Session {
            hub,
            id,
            name,
            format: Format::Json,
            seats: Seats::many(pass),
            limit,
            rules,
            claim_wait: None,
            person: false,
            admin: false,
            addr,
        }
    }

    /// True for a version-2 session (JSON requests, many rooms).
    pub fn speaks_requests(&self) -> bool {
        matches!(self.seats, Seats::Many(_))
    }

    /// The first line a version-2 client gets, before anything from a room: its handshake was
    /// accepted, under which name, and how many rooms it may be in. A version-1 client gets
    /// none (its first line has always been its room's).
    pub fn welcome(&self, out: &mut Vec<u8>) {
        if self.speaks_requests() {
            let line = serde_json::json!({
                "type": "welcome",
                "name": self.name,
                "version": 2,
                "max_rooms": self.rules.max_rooms,
            });
            crate::protocol::push_json(out, &line);
        }
        if let Some(m) = self.seats.marks() {
            let hub = &self.hub;
            hub.marks
                .snapshot(&m.person, &m.inbox, None, &|r| hub.last_id(r), out);
            if m.full {
                let notice =
                    crate::protocol::Reply::Notice(crate::refusal::Notice::MarksFull.text());
                notice.render(Format::Json, out);
            }
        }
    }

    /// Makes this version-2 session one of `person`'s devices: it gets their marks after its
    /// welcome, and every change to them as it happens. `inbox` is from [`Marks::attach`].
    ///
    /// [`Marks::attach`]: crate::marks::Marks::attach
    pub fn keep_marks(&mut self, person: String, inbox: Arc<Inbox>) {
        let Some(waker) = self.seats.bell_waker() else {
            self.hub.marks.detach(&person, &inbox);
            return;
        };
        inbox.set_waker(waker);
        self.seats.set_marks(PersonMarks {
            person,
            inbox,
            full: false,
        });
    }

    /// The handshake's room, joined by a version-2 person: kept like a `join`'s.
    pub fn keep_handshake_room(&mut self, room: &str) {
        let Some(m) = self.seats.marks_mut() else {
            return;
        };
        if !crate::marks::is_conversation(room)
            && self.hub.keep_room(&m.person, room, None) == crate::marks::Outcome::Full
        {
            m.full = true;
        }
    }

    /// The person's key, for a version-2 person's session.
    fn marks_key(&self) -> Option<&str> {
        self.seats.marks().map(|m| m.person.as_str())
    }

    /// Takes a seat it was given (the handshake's room of a version-2 session), with the replay
    /// that began with it.
    pub fn add(&mut self, room: Arc<Room>, seat: Seat, history: Option<ReplayStart>) {
        let mut held = Held::new(room, seat);
        if let Some(start) = history {
            held.replay = Some(self.paged(&held.room, start));
        }
        self.seats.add(held);
    }

    fn paged(&self, room: &Room, start: ReplayStart) -> Box<PagedReplay> {
        Box::new(PagedReplay::new(
            start,
            room.max_pending(),
            self.rules.max_line,
        ))
    }

    /// Sends a replay (begun when the member joined) before anything newer from the room.
    pub fn start_replay(&mut self, start: ReplayStart) {
        if let Some(i) = self.seats.as_slice().len().checked_sub(1) {
            let replay = self.paged(&self.seats.as_slice()[i].room, start);
            self.seats.as_mut_slice()[i].replay = Some(replay);
        }
    }

    /// The rooms the session is in, for the log.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.seats.as_slice().iter().map(|h| h.room.name())
    }

    /// True while a replay is under way (lines received meanwhile wait their turn).
    pub fn replaying(&self) -> bool {
        self.seats.as_slice().iter().any(|h| h.replay.is_some())
    }

    /// True while a replay is under way or a command waits for an answer (the cluster): the
    /// connection stops reading, so replies keep the order of the commands.
    pub fn waiting(&self) -> bool {
        self.replaying() || self.claim_wait.is_some()
    }

    /// False once the session was cut off in any of its rooms.
    pub fn present(&self) -> bool {
        self.seats.present()
    }

    /// Has the rooms wake `task` if the session is cut off while its socket is full.
    pub fn watch(&self, task: &Waker) {
        self.seats.watch(task);
    }

    /// Copies up to about `max` bytes (whole lines) of what the rooms hold for the client into
    /// `out`; see [`Room::take`].
    pub fn take(&mut self, out: &mut Vec<u8>, max: usize, task: &Waker) -> Take {
        let start = out.len();
        let mut more = false;
        if let Some(m) = self.seats.marks().filter(|m| m.inbox.has()) {
            let hub = &self.hub;
            hub.marks
                .take(&m.person, &m.inbox, out, max, &|r| hub.last_id(r));
            more = m.inbox.has();
        }
        let used = out.len() - start;
        let mut taken = self.seats.take(out, max.saturating_sub(used), task);
        if used > 0 || more {
            taken = match taken {
                Take::Empty | Take::Drained if more => Take::Data,
                Take::Empty => Take::Drained,
                other => other,
            };
        }
        // Rooms that closed a version-2 session out: their last lines, and the name's claim
        // there goes back.
        for held in self.seats.take_parted() {
            self.hub.leave(&held.room, held.seat, out, false);
            self.hub
                .release(held.room.name(), &self.name, self.id, self.person);
        }
        taken
    }

    /// Handles one received line (without its line ending). `now` is read once per batch of
    /// lines by the caller. Bytes the session must hand to the client directly (what was still
    /// unread in a room it leaves, answers that belong to no room) are appended to `out`.
    pub fn on_line(&mut self, raw: &[u8], now: Instant, out: &mut Vec<u8>) -> Next {
        if self.speaks_requests() {
            return self.on_request(raw, now, out);
        }
        let text = crate::protocol::clean_line(raw);
        self.on_text(&text, now, out)
    }

    /// Handles one message that may span lines (a WebSocket frame): a single line is handled
    /// as [`Session::on_line`] does; several lines are one message, never a command.
    pub fn on_message(&mut self, raw: &[u8], now: Instant, out: &mut Vec<u8>) -> Next {
        if self.speaks_requests() {
            return self.on_request(raw, now, out);
        }
        let text = crate::protocol::clean_message(raw);
        if text.contains('\n') && text.starts_with('/') && !text.starts_with("//") {
            return match self.reply(&Reply::Error(&Refusal::CommandOneLine.to_string())) {
                Ok(()) => self.pace(now),
                Err(_) => Next::End(End::SlowConsumer),
            };
        }
        self.on_text(&text, now, out)
    }

    /// After a line: stop for an answer, or spend one line of the rate limit.
    fn after(&mut self, now: Instant) -> Next {
        if self.waiting() {
            return Next::Wait;
        }
        self.pace(now)
    }

    /// Spends one line of the rate limit: go on, or wait until the given moment.
    fn pace(&mut self, now: Instant) -> Next {
        match self.limit.as_mut().and_then(|l| l.spend(now)) {
            Some(until) => Next::Throttle(until),
            None => Next::Continue,
        }
    }

    /// A line longer than the limit arrived: say so, keep the connection.
    pub fn line_too_long(&mut self, out: &mut Vec<u8>) -> Next {
        if self.speaks_requests() {
            return self.answer_out(None, &Refusal::LineTooLong, out);
        }
        match self.reply(&Reply::Error(&Refusal::LineTooLong.to_string())) {
            Ok(()) => Next::Continue,
            Err(_) => Next::End(End::SlowConsumer),
        }
    }

    /// Claims a name in a room for a command (see [`Hub::claim_now`]): the answer, if it is
    /// there at once (always on one server); else the command waits, and goes on in
    /// [`Session::poll_wait`].
    fn claim(
        &mut self,
        room: &str,
        then: AfterClaim,
    ) -> Option<(Result<(), ClaimError>, AfterClaim)> {
        let name = match &then {
            AfterClaim::Nick(new) => new.as_str(),
            AfterClaim::Join(_) | AfterClaim::Enter { .. } => self.name.as_str(),
        };
        match self.hub.claim_now(room, name, self.id, self.person) {
            Claim::Done(answer) => Some((answer, then)),
            Claim::Pending(answer) => {
                self.claim_wait = Some(Box::new(ClaimWait::One { answer, then }));
                None
            }
        }
    }

    /// Moves on whatever the session waits for: hands a room the next page of a replay, or
    /// completes a command the cluster answered. Ready when something changed, Pending until
    /// then (or when nothing is awaited); Ready(Err) if the client was cut off meanwhile.
    /// Bytes for the client that belong to no room go to `out`.
    pub fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<Option<End>, RoomError>> {
        if let Some(wait) = self.claim_wait.as_mut() {
            let answer = match &mut **wait {
                ClaimWait::One { answer, .. } => ready!(answer.as_mut().poll(cx)),
                ClaimWait::Rename(renaming) => {
                    let answer = ready!(renaming.poll(cx));
                    let Some(wait) = self.claim_wait.take() else {
                        return Poll::Pending;
                    };
                    let ClaimWait::Rename(renaming) = *wait else {
                        return Poll::Pending;
                    };
                    return Poll::Ready(Ok(self.renamed(renaming, answer, out)));
                }
            };
            let Some(wait) = self.claim_wait.take() else {
                return Poll::Pending;
            };
            let ClaimWait::One { then, .. } = *wait else {
                return Poll::Pending;
            };
            return Poll::Ready(match then {
                AfterClaim::Enter { room, replay, req } => {
                    Ok(self.entered(&room, replay, req, answer, out))
                }
                then => self.claimed(answer, then, out),
            });
        }
        let format = self.format;
        let mut changed = false;
        for held in self.seats.as_mut_slice() {
            let Some(replay) = held.replay.as_mut() else {
                continue;
            };
            match replay.poll(cx, &held.room, held.seat, format) {
                Poll::Pending => {}
                Poll::Ready(Ok(Step::Progress)) => changed = true,
                Poll::Ready(Ok(Step::Done)) => {
                    held.replay = None;
                    changed = true;
                }
                Poll::Ready(Err(e)) => {
                    held.replay = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
        if changed {
            Poll::Ready(Ok(None))
        } else {
            Poll::Pending
        }
    }

    /// Leaves every room for good, moving what was still unread to `out`, as `how` says. At
    /// shutdown ([`Parting::Silent`]) the rooms are not told (everyone is leaving), unless
    /// other servers share them: their members stay, and must hear of it. A connection that
    /// dropped ([`Parting::Lost`]) may stay as a ghost for the leave grace, its name's claim
    /// kept for it (the hub gives it back when the grace ends).
    pub fn leave(&mut self, out: &mut Vec<u8>, how: Parting) {
        let how = match how {
            Parting::Silent if self.hub.shared() => Parting::Told,
            how => how,
        };
        // A connection that closes changes no mark; the person's other devices keep theirs.
        if let Some(m) = self.seats.take_marks() {
            self.hub.marks.detach(&m.person, &m.inbox);
        }
        let held: Vec<Held> = match &mut self.seats {
            Seats::One(one) => {
                one.replay = None;
                vec![Held::new(one.room.clone(), one.seat)]
            }
            Seats::Many(_) => self.seats.drain(),
        };
        for h in held {
            if !self.hub.part(&h.room, h.seat, out, how) {
                self.hub
                    .release(h.room.name(), &self.name, self.id, self.person);
            }
        }
        // A claim still on its way would otherwise hold the name until the cluster's TTL.
        if let Some(wait) = self.claim_wait.take() {
            match *wait {
                ClaimWait::One { then, .. } => match then {
                    AfterClaim::Nick(new) => {
                        for room in self.seats.as_slice().iter().map(|h| h.room.name()) {
                            self.hub.release(room, &new, self.id, false);
                        }
                    }
                    AfterClaim::Join(room) | AfterClaim::Enter { room, .. } => {
                        self.hub.release(&room, &self.name, self.id, self.person)
                    }
                },
                ClaimWait::Rename(renaming) => renaming.release(&self.hub, self.id),
            }
        }
    }
}

/// `name NAME is already taken in PLACE` (`this room`, or the room of a `/join`).
fn taken(name: &str, place: &str) -> Refusal {
    Refusal::NameTaken {
        name: name.into(),
        place: place.into(),
    }
}

#[cfg(test)]
mod tests {
    /// Every idle connection holds a session: what only many rooms or a cluster claim need is
    /// boxed, so a version-1 session costs what a one-room session did before version 2
    /// (BENCHMARKS.md, I1). Moderation added the address and the admin flag (bans by address
    /// must find a session's connection): 17 bytes and a bool, in the padding where they fit.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_idle_session_stays_small() {
        assert_eq!(std::mem::size_of::<super::Seats>(), 32);
        let size = std::mem::size_of::<super::Session>();
        assert!(size <= 160, "{size}");
    }
}
