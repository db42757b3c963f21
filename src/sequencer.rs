//! Who orders a room's events and gives its messages their ids: the seam between one server and
//! a cluster. A room hands every event to its [`Sequencer`] and does what the answer says; it
//! never asks which mode it runs in.
//!
//! On one server the room's own lock is the order ([`Here`]): the answer is always
//! [`Placed::Local`], and the room appends the event to its log at once, with its next id, and
//! hands a message to its [`crate::store::Store`]. In a cluster (`crate::cluster`) every node must
//! show a room's events in one order, so the event goes to the cluster's stream instead
//! ([`Placed::Away`]) and comes back through `Hub::deliver_batch` and `Room::deliver` on every
//! node, this one included, with the stream's sequence as its id. Publishing to the stream is then
//! the message's append to the history: the stream is the cluster's store, and its
//! [`crate::store::Store`] only answers queries.
//!
//! Names are the other seam ([`crate::names::Names`]).

use crate::protocol::RoomEvent;
use crate::refusal::Refusal;

/// Tells a message's sender that the cluster could not take it after all (the text says why).
/// A callback, so that the sequencer knows nothing of rooms and members (no module cycle).
pub type Refuse = Box<dyn FnOnce(&str) + Send>;

/// What became of an event handed to a [`Sequencer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// The room's own log is the order: the room appends the event now, with the room's next
    /// id, and keeps a message in its store.
    Local,
    /// On its way to be ordered elsewhere: it comes back through `Room::deliver`, with its id
    /// and in its place, on every node. A sender it cannot reach after all is told through its
    /// [`Refuse`].
    Away,
    /// Not taken: nobody gets the event, and the sender (if any) is told this. Answered at once
    /// rather than through the [`Refuse`], since the caller holds its room's lock.
    Refused(Refusal),
}

/// Who orders a room's events. Called under the room's lock, once per event: it must never
/// block, nor take the room's lock, nor call back into the room.
pub trait Sequencer: Send + Sync {
    /// A member's message or action. `event` carries the id the room would give it; a
    /// sequencer that orders elsewhere gives its own. `sender` makes (only if needed) the
    /// callback that tells the sender of a failure found later.
    fn message(&self, room: &str, event: &RoomEvent<'_>, sender: &dyn Fn() -> Refuse) -> Placed;

    /// A join, leave or rename: nobody to tell if it fails. `person`: a person's join or
    /// leave on this server (its first connection here came, or its last went), which in a
    /// cluster names the node, so that every node shows only the person's first join and last
    /// leave (see `Room::deliver`).
    fn announce(&self, room: &str, event: &RoomEvent<'_>, person: bool) -> Placed;

    /// A private message the room delivers to its own members: whoever else serves the room
    /// passes it on to theirs (`Away`), or says it cannot (`Refused`: the room then tells a
    /// sender whose recipient is only elsewhere). Not ordered, not stored (as a private message
    /// never is in the history).
    fn private(&self, room: &str, from: &str, to: &str, text: &str) -> Placed;
}

/// One server on its own: each room's lock orders its events and its counter gives the ids.
/// Every answer is [`Placed::Local`] and costs nothing: no allocation, no lock.
pub struct Here;

impl Sequencer for Here {
    fn message(&self, _room: &str, _event: &RoomEvent<'_>, _: &dyn Fn() -> Refuse) -> Placed {
        Placed::Local
    }

    fn announce(&self, _room: &str, _event: &RoomEvent<'_>, _person: bool) -> Placed {
        Placed::Local
    }

    /// Nobody else serves the room.
    fn private(&self, _room: &str, _from: &str, _to: &str, _text: &str) -> Placed {
        Placed::Local
    }
}
