//! A session's moderation commands: handed to the [`Moderator`] as this connection, which
//! checks its rank in the room and carries them out.

use std::sync::Arc;

use crate::moderation::command::Command;
use crate::moderation::Who;
use crate::moderator::{Answer, Moderator, Via};
use crate::protocol::{Format, Reply};
use crate::request::{render_ok, ReqId};
use crate::room::{Room, Seat};

use super::Session;

impl Session {
    /// The session as a room it joins sees it.
    pub(super) fn joiner(&self, format: Format) -> crate::room::Joiner<'_> {
        crate::room::Joiner {
            id: self.id,
            name: &self.name,
            format,
            person: self.person,
            addr: self.addr,
        }
    }

    pub(super) fn who(&self) -> Who<'_> {
        Who {
            name: &self.name,
            addr: self.addr,
            person: self.person,
            admin: self.admin,
        }
    }

    /// The session as the actor of a moderation command.
    pub(super) fn moderator(&self) -> Moderator {
        Moderator::new(
            self.hub.clone(),
            self.name.clone(),
            Via::Connection {
                addr: self.addr,
                person: self.person,
                admin: self.admin,
            },
        )
    }

    /// Carries out `cmd` in `room`, where the session sits at `seat`. Its answer goes into
    /// the room's stream for this seat, after what the room sent before: lines for the caller
    /// as notices, or the refusal, each rendered by `render` (a version-1 client's format, or a
    /// version-2 answer with its `req`), then `ok` for a version-2 request with a `req`.
    pub(super) fn moderate(
        &self,
        room: &Arc<Room>,
        seat: Seat,
        cmd: Command,
        render: impl Fn(&Reply<'_>, &mut Vec<u8>) + Send + 'static,
        ok: Option<ReqId>,
    ) {
        let to = room.clone();
        let answer: Answer = Box::new(move |answer| {
            let mut bytes = Vec::new();
            match answer {
                Ok(lines) => {
                    for line in &lines {
                        render(&Reply::Notice(line), &mut bytes);
                    }
                    if let Some(req) = &ok {
                        render_ok(req, None, &mut bytes);
                    }
                }
                Err(refusal) => render(&Reply::Error(&refusal.to_string()), &mut bytes),
            }
            if !bytes.is_empty() {
                // Gone meanwhile: nobody to tell.
                let _ = to.send_to(seat, bytes);
            }
        });
        self.moderator().run(room.name(), cmd, answer);
    }
}
