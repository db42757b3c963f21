//! The member lifecycle every transport shares, from a handshake read to a session in its room
//! and back out: the password check, the name's claim (across the cluster in cluster mode), the
//! join with its replay, the joined client's life ([`live`], the client loop over a
//! transport's `Wire`), its end ([`Ending`]), and the log lines and metrics of each step.
//!
//! A transport adapter (TCP and TLS in `connection`, WebSocket in `web::ws`) reads the
//! handshake in its own framing, calls these steps in order, and tells a refused client why in
//! its own way (`*** error: TEXT`, an error frame and a close frame). It never touches the
//! hub, the rooms, the claims or the store itself: so a rule added here holds for every
//! transport at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::info;

use crate::client::{Client, Ending, Wire};
use crate::context::Shared;
use crate::limits::{SeatPass, Ticket};
use crate::metrics::Transport;
use crate::moderation::Who;
use crate::protocol::{Format, Handshake};
use crate::refusal::Refusal;
use crate::session::{End, RateLimit, Session};

/// Logs client `id`'s refusal as its disconnect line and counts it by reason; the transport
/// then tells the client.
pub fn refused(id: u64, addr: SocketAddr, refusal: Refusal) -> Refusal {
    let text = refusal.to_string();
    info!(id, %addr, reason = %format_args!("refused: {text}"), "disconnect");
    crate::metrics::handshake_rejected(crate::metrics::rejection_reason(&text));
    refusal
}

/// Checks the handshake's name and password, or session token (`Users::check`: registered
/// names, their look-alikes and `--require-auth`), with the same delay for every failure. A
/// registered name whose password (or token) was proved is noted for [`enter`] (see `Users::prove`): such a
/// connection is a person's, and may share the name with the person's other connections.
pub async fn authenticate(
    ctx: &Shared,
    id: u64,
    addr: SocketAddr,
    hs: &Handshake,
) -> Result<(), Refusal> {
    let login = ctx
        .hub
        .users
        .check(addr.ip(), hs)
        .await
        .map_err(|refusal| refused(id, addr, refusal))?;
    if login.is_person() {
        ctx.hub.users.prove(id);
    }
    Ok(())
}

/// How a transport's members take part: the format of what they are sent, their line rate
/// (`None` when the transport paces its input itself), and the transport, for the log.
pub struct Entry {
    pub format: Format,
    pub limit: Option<RateLimit>,
    pub transport: Transport,
    /// What a version-2 session counts its rooms beyond the first with (see `limits`).
    pub pass: SeatPass,
}

/// Claims the name (on every node in cluster mode) and joins the handshake's room, with the
/// history it asked for queued to go out first. The session is the member from then on. A
/// version-2 client that named no room starts in none.
pub async fn enter(
    ctx: &Shared,
    id: u64,
    addr: SocketAddr,
    hs: Handshake,
    entry: Entry,
) -> Result<Session, Refusal> {
    let person = ctx.hub.users.proved(id);
    let admin = person && ctx.hub.users.is_admin(&hs.name);
    let who = Who {
        name: &hs.name,
        addr: addr.ip(),
        person,
        admin,
    };
    // A server ban keeps its target out whatever room it asks for, or none.
    ctx.hub
        .policy
        .server_admit(&who)
        .map_err(|refusal| refused(id, addr, refusal))?;
    // A version-2 person's marks, loaded before the handshake's room is admitted (a direct
    // conversation admits its parties by them) and joined (which keeps it).
    let v2 = hs.version >= 2;
    let marks = match v2 && person {
        true => {
            let key = ctx.hub.person_key(&hs.name);
            let inbox = ctx.hub.marks.attach(&key).await;
            Some((key, inbox))
        }
        false => None,
    };
    let detach = |marks: &Option<(String, Arc<crate::marks::Inbox>)>| {
        if let Some((key, inbox)) = marks {
            ctx.hub.marks.detach(key, inbox);
        }
    };
    let Some(room_name) = hs.room.as_deref() else {
        info!(id, name = %hs.name, version = hs.version, transport = entry.transport.label(), person, "entered");
        let mut session = many_rooms(ctx, id, addr, hs.name, entry, (person, admin));
        if let Some((key, inbox)) = marks {
            session.keep_marks(key, inbox);
        }
        return Ok(session);
    };
    let key = hs.key.as_ref().map(|k| k.0.as_str());
    let new = match ctx.hub.admit(room_name, &who, key, v2) {
        Ok(new) => new,
        Err(refusal) => {
            detach(&marks);
            return Err(refused(id, addr, refusal));
        }
    };
    let replay = ctx.rules().replay(hs.since, hs.history, ctx.store.keeps());
    if let Err(e) = ctx.hub.claim(room_name, &hs.name, id, person).await {
        detach(&marks);
        let refusal = ctx.hub.claim_refusal(&e, &hs.name, room_name);
        return Err(refused(id, addr, refusal));
    }
    let joined = ctx.hub.join_replaying(
        room_name,
        crate::room::Joiner {
            id,
            name: &hs.name,
            format: entry.format,
            person,
            addr: addr.ip(),
        },
        replay,
    );
    let (room, seat, history) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            detach(&marks);
            ctx.hub.release(room_name, &hs.name, id, person);
            let refusal = ctx.hub.refusal(&e, &hs.name, room_name);
            return Err(refused(id, addr, refusal));
        }
    };
    ctx.hub.entered(&room, seat, &who, new, entry.format);
    info!(id, name = %hs.name, room = %room_name, format = ?entry.format, version = hs.version, transport = entry.transport.label(), person, "joined");
    let rules = ctx.rules();
    // Replayed history goes out before anything from the room, a page at a time as the
    // client takes it (see `replay`).
    if v2 {
        let mut session = many_rooms(ctx, id, addr, hs.name, entry, (person, admin));
        session.add(room, seat, history);
        if let Some((key, inbox)) = marks {
            session.keep_marks(key, inbox);
            // Told in the `marks` line after the welcome (or, past the bound, in a notice).
            session.keep_handshake_room(room_name);
        }
        return Ok(session);
    }
    let mut session = Session::new(
        ctx.hub.clone(),
        id,
        hs.name,
        entry.format,
        (room, seat),
        entry.limit,
        rules,
    );
    session.person = person;
    session.admin = admin;
    session.addr = addr.ip();
    if let Some(start) = history {
        session.start_replay(start);
    }
    Ok(session)
}

/// A joined client's life, the same for every transport: served by the client loop until
/// it ends, logged, then its goodbye. A task of its own, holding only the member and what the
/// end needs (a task that went through the greeting would keep the greeting's state for as
/// long).
///
/// Not an `async fn`: one of those keeps its arguments twice in its future (the arguments,
/// then the locals they are moved into), and this future is what every idle connection's
/// task holds; an `async move` block uses what it captured in place (the tests of idle
/// memory fail if it is made an `async fn` again).
#[allow(clippy::manual_async_fn)]
pub fn live<W: Wire>(
    mut member: Client<W>,
    addr: SocketAddr,
    ticket: Ticket,
    ctx: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    async move {
        let ending = std::future::poll_fn(|cx| member.poll_run(cx, &ctx)).await;
        let end = match &ending {
            Ending::Ended(end) => Some(end),
            _ => None,
        };
        ended(member.session(), addr, &ending, end);
        // Boxed: the goodbye's timers exist only while it runs, and do not size the task.
        Box::pin(member.close(ending)).await;
        drop(ticket);
    }
}

/// The size of the future [`live`] makes for a wire, which every idle member's task holds
/// (for the tests of idle memory), found without making one.
#[cfg(test)]
pub(crate) fn live_size<W: Wire>() -> usize {
    fn future_size<F, A, B, C, D, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }
    future_size(live::<W>)
}

/// A version-2 session, in no room yet.
fn many_rooms(
    ctx: &Shared,
    id: u64,
    addr: SocketAddr,
    name: String,
    entry: Entry,
    (person, admin): (bool, bool),
) -> Session {
    let rules = ctx.rules();
    let mut session = Session::many(
        ctx.hub.clone(),
        id,
        name,
        entry.limit,
        rules,
        Some(entry.pass),
        addr.ip(),
    );
    session.person = person;
    session.admin = admin;
    // JSON in either form: lines, or a WebSocket's frames.
    if entry.format.is_json() {
        session.format = entry.format;
    }
    session
}

/// Logs and counts the end of a member's connection (its disconnect line), before the
/// transport says goodbye and the session leaves its room.
fn ended(session: &Session, addr: SocketAddr, ending: &Ending, end: Option<&End>) {
    if matches!(end, Some(End::SlowConsumer)) {
        crate::metrics::slow_consumer();
    }
    let rooms = session.rooms().collect::<Vec<_>>().join(" ");
    info!(id = session.id, %addr, name = %session.name, room = %rooms, reason = %ending, "disconnect");
}
