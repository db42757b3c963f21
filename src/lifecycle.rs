//! The member lifecycle every transport shares, from a handshake read to a session in its room
//! and back out: the password check, the name's claim (across the cluster in cluster mode), the
//! join with its replay, and the log lines and metrics of each step.
//!
//! A transport adapter (TCP and TLS in `connection`, WebSocket in `web::ws`) reads the
//! handshake in its own framing, calls these steps in order, and tells a refused client why in
//! its own way (`*** error: TEXT`, an error frame and a close frame). It never touches the
//! hub, the rooms, the claims or the store itself: so a rule added here holds for every
//! transport at once.

use std::fmt::Display;
use std::net::SocketAddr;

use tracing::info;

use crate::context::Shared;
use crate::metrics::Transport;
use crate::protocol::{Format, Handshake};
use crate::refusal::Refusal;
use crate::room::Replay;
use crate::session::{End, RateLimit, Session};
use crate::store::MAX_REPLAY;

/// Logs client `id`'s refusal as its disconnect line and counts it by reason; the transport
/// then tells the client.
pub fn refused(id: u64, addr: SocketAddr, refusal: Refusal) -> Refusal {
    let text = refusal.to_string();
    info!(id, %addr, reason = %format_args!("refused: {text}"), "disconnect");
    crate::metrics::handshake_rejected(crate::metrics::rejection_reason(&text));
    refusal
}

/// Checks the handshake's name and password (`Users::check`: registered names, their
/// look-alikes and `--require-auth`), with the same delay for every failure. A registered
/// name whose password was proved is noted for [`enter`] (see `Users::prove`): such a
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
}

/// Claims the name (on every node in cluster mode) and joins the handshake's room, with the
/// history it asked for queued to go out first. The session is the member from then on.
pub async fn enter(
    ctx: &Shared,
    id: u64,
    addr: SocketAddr,
    hs: Handshake,
    entry: Entry,
) -> Result<Session, Refusal> {
    let replay = replay_wanted(&hs, ctx);
    let person = ctx.hub.users.proved(id);
    if let Err(e) = ctx.hub.claim(&hs.room, &hs.name, id, person).await {
        let refusal = ctx.hub.claim_refusal(&e, &hs.name, &hs.room);
        return Err(refused(id, addr, refusal));
    }
    let joined = ctx
        .hub
        .join_replaying(&hs.room, id, &hs.name, entry.format, replay, person);
    let (room, seat, history) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            ctx.hub.release(&hs.room, &hs.name, id, person);
            let refusal = ctx.hub.refusal(&e, &hs.name, &hs.room);
            return Err(refused(id, addr, refusal));
        }
    };
    info!(id, name = %hs.name, room = %hs.room, format = ?entry.format, transport = entry.transport.label(), person, "joined");
    let mut session = Session::new(
        ctx.hub.clone(),
        id,
        hs.name,
        entry.format,
        (room, seat),
        entry.limit,
        ctx.config.max_line,
    );
    session.person = person;
    // Replayed history goes out before anything from the room, a page at a time as the
    // client takes it (see `replay`).
    if let Some(start) = history {
        session.start_replay(start);
    }
    Ok(session)
}

/// Logs and counts the end of a member's connection (its disconnect line), before the
/// transport says goodbye and the session leaves its room.
pub fn ended(session: &Session, addr: SocketAddr, reason: &dyn Display, end: Option<&End>) {
    if matches!(end, Some(End::SlowConsumer)) {
        crate::metrics::slow_consumer();
    }
    info!(id = session.id, %addr, name = %session.name, room = %session.room.name(), reason = %reason, "disconnect");
}

/// What to replay before live messages: a resume, the last N asked for, or the default.
fn replay_wanted(hs: &Handshake, ctx: &Shared) -> Option<Replay> {
    let max = (ctx.config.history_max as usize).min(MAX_REPLAY);
    match (hs.since, hs.history) {
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
        (None, None) if ctx.config.history_on_join > 0 && ctx.store.keeps() => Some(Replay {
            after: None,
            limit: (ctx.config.history_on_join as usize).min(max),
        }),
        (None, None) => None,
    }
}
