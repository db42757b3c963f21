//! Version 2: a `nick` request renames the session in every room it is in at once
//! (`docs/PROTOCOL.md`, section 17), under the rules of version 1's `/nick`.
//!
//! The new name must be free in each room, so it is claimed in each (through
//! [`Hub::claim_now`]); in cluster mode the answers may take a round trip, and the session reads
//! no further requests until all of them are in, as a version-1 `/nick` waits for its one. Either
//! every room renames the member or none does: a refusal anywhere gives back every claim of the
//! new name and keeps the old one everywhere. The `ok` belongs to no room (it is about the
//! session, like a `leave`'s): it goes straight to the connection; each room's `nick` event comes
//! in that room's stream.

use std::task::{Context, Poll};

use super::{Answer, ClaimWait, End, Session};
use crate::hub::{Claim, Hub};
use crate::names::ClaimError;
use crate::refusal::Refusal;
use crate::request::{render_ok, ReqId};
use crate::room::RoomError;

/// A `nick` request waiting for the cluster to confirm the new name in each room. Boxed in
/// the session (see [`ClaimWait`]): only a rename on its way needs it.
pub(super) struct Renaming {
    new: String,
    req: Option<ReqId>,
    /// Each room's name and its claim of the new name: `None` once granted.
    claims: Vec<(String, Option<Answer>)>,
}

impl Renaming {
    /// Ready once every room granted the name, or at the first that did not (its name and
    /// why). Each claim's wait is bounded on its own (see `Hub::claim_now`), and all are polled
    /// together, so the whole wait is bounded by one claim's.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), (String, ClaimError)>> {
        let mut waiting = false;
        for (room, claim) in &mut self.claims {
            let Some(answer) = claim.as_mut() else {
                continue;
            };
            match answer.as_mut().poll(cx) {
                Poll::Pending => waiting = true,
                Poll::Ready(Ok(())) => *claim = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Err((room.clone(), e))),
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Gives back the new name in every room: granted, refused or still on its way (the
    /// session left, or one room refused).
    pub(super) fn release(&self, hub: &Hub, owner: u64) {
        for (room, _) in &self.claims {
            hub.release(room, &self.new, owner, false);
        }
    }
}

impl Session {
    /// A `nick` request (its name already follows the name rules): checked as `/nick` is,
    /// then claimed in every room; carried out at once, or once the cluster has answered (see
    /// [`Session::renamed`]).
    pub(super) fn nick_request(
        &mut self,
        new: String,
        req: Option<&ReqId>,
        out: &mut Vec<u8>,
    ) -> Result<(), End> {
        if new == self.name {
            return self.refuse(req, &Refusal::AlreadyCalled(new), out);
        }
        // As for `/nick`: under --require-auth the same answer whatever the name.
        if self.hub.users.required() {
            return self.refuse(req, &Refusal::OnlyYourRegisteredName, out);
        }
        if self.person {
            return self.refuse(req, &Refusal::RegisteredNick(self.name.clone()), out);
        }
        if self.hub.users.is_registered(&new) {
            return self.refuse(req, &Refusal::NeedsPassword(new), out);
        }
        // Each room's own check first: on one server it is the only one, and a clash found
        // here costs the cluster no round trip.
        if let Err(refusal) = self.check_rooms(&new) {
            return self.refuse(req, &refusal, out);
        }
        let mut renaming = Renaming {
            new,
            req: req.cloned(),
            claims: Vec::with_capacity(self.seats.len()),
        };
        for room in self.rooms().map(str::to_owned).collect::<Vec<_>>() {
            match self.hub.claim_now(&room, &renaming.new, self.id, false) {
                Claim::Done(Ok(())) => renaming.claims.push((room, None)),
                Claim::Pending(answer) => renaming.claims.push((room, Some(answer))),
                Claim::Done(Err(e)) => {
                    renaming.claims.push((room.clone(), None));
                    return self
                        .renamed(renaming, Err((room, e)), out)
                        .map_or(Ok(()), Err);
                }
            }
        }
        if renaming.claims.iter().any(|(_, claim)| claim.is_some()) {
            // Goes on in `poll_wait`; the connection reads nothing meanwhile.
            self.claim_wait = Some(Box::new(ClaimWait::Rename(renaming)));
            return Ok(());
        }
        self.renamed(renaming, Ok(()), out).map_or(Ok(()), Err)
    }

    /// Completes a `nick` once every room's claim is answered: renames the member in every
    /// room, or in none. `Some` if the session must end.
    pub(super) fn renamed(
        &mut self,
        renaming: Renaming,
        claimed: Result<(), (String, ClaimError)>,
        out: &mut Vec<u8>,
    ) -> Option<End> {
        let req = renaming.req.as_ref();
        let new = renaming.new.as_str();
        let refusal = match claimed {
            Err((room, e)) => self.hub.claim_refusal(&e, new, &room),
            Ok(()) => match self.rename_everywhere(new, out) {
                Ok(()) => {
                    let old = std::mem::replace(&mut self.name, renaming.new.clone());
                    for room in self.rooms() {
                        self.hub.release(room, &old, self.id, false);
                    }
                    // No `req`, no `ok` (as for every request).
                    let req = req?;
                    let mut bytes = Vec::new();
                    render_ok(req, None, &mut bytes);
                    return self.to_out(&bytes, out).err();
                }
                Err(Some(refusal)) => refusal,
                Err(None) => {
                    renaming.release(&self.hub, self.id);
                    return Some(End::SlowConsumer);
                }
            },
        };
        renaming.release(&self.hub, self.id);
        self.refuse(req, &refusal, out).err()
    }

    /// The first room (in the order joined) where `new` may not replace the session's name.
    fn check_rooms(&self, new: &str) -> Result<(), Refusal> {
        for held in self.seats.as_slice() {
            if let Err(e) = held.room.rename_check(held.seat, new) {
                return Err(self.hub.refusal(&e, new, held.room.name()));
            }
        }
        Ok(())
    }

    /// Renames the member `new` in every room, or in none: the rooms are checked first, and
    /// should one still refuse at the moment of renaming (someone took the name there in
    /// between), the rooms already renamed are renamed back. `Err(None)`: the session was cut
    /// off meanwhile.
    fn rename_everywhere(&mut self, new: &str, out: &mut Vec<u8>) -> Result<(), Option<Refusal>> {
        self.check_rooms(new).map_err(Some)?;
        let failed = self
            .seats
            .as_slice()
            .iter()
            .enumerate()
            .find_map(|(i, held)| held.room.rename(held.seat, new).err().map(|e| (i, e)));
        let Some((at, e)) = failed else {
            return Ok(());
        };
        let refusal = match &e {
            RoomError::Gone => None,
            e => Some(
                self.hub
                    .refusal(e, new, self.seats.as_slice()[at].room.name()),
            ),
        };
        // Back to the old name where the new one was shown. Should the old name have been
        // taken there in between (on one server a join can take it the moment it is free), the
        // session leaves that room rather than stay in it under a name it does not have.
        for i in (0..at).rev() {
            let held = &self.seats.as_slice()[i];
            if held.room.rename(held.seat, &self.name).is_err() {
                tracing::warn!(room = held.room.name(), "a rename undone too late: left");
                if let Some(held) = self.seats.remove(i) {
                    self.hub.leave(&held.room, held.seat, out, true);
                    self.hub
                        .release(held.room.name(), &self.name, self.id, false);
                }
            }
        }
        Err(refusal)
    }
}
