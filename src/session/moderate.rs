//! A session's moderation commands: handed to the [`Moderator`] as this connection, which
//! checks its rank in the room and carries them out.

use crate::moderation::command::Command;
use crate::moderation::Who;
use crate::moderator::{Answer, Moderator, Via};
use crate::protocol::Format;

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

    /// Carries out `cmd` in `room`; the answer goes to `answer`.
    pub(super) fn moderate(&self, room: &str, cmd: Command, answer: Answer) {
        self.moderator().run(room, cmd, answer);
    }
}
