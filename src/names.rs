//! Who knows that a name is taken in a room, and who is where: the seam between one server and
//! a cluster. The hub asks [`Names`] and never which mode it runs in: [`Alone`] is one server
//! (its rooms know their members, so a claim is granted at once and the room's own check at
//! the join decides), the cluster's implementation asks the NATS key-value bucket
//! (`cluster::presence`).

use tokio::sync::oneshot;

/// Why a name could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// Someone, on some node, has it in this room.
    Taken,
    /// The cluster could not be asked; the text says why.
    Unavailable(String),
}

/// The answer to a claim: there at once on one server, after a round trip in a cluster.
pub type PendingClaim = oneshot::Receiver<Result<(), ClaimError>>;

/// What the hub needs to know about names beyond this server's rooms.
pub trait Names: Send + Sync {
    /// Claims `name` in `room` for `owner` (a connection of this server), unless someone has
    /// it anywhere. A `person`'s connection (a registered name, its password proved) claims
    /// nothing exclusive, since the password guards the name: it marks the person present in
    /// the room, held as long as any of its connections here is.
    fn claim(&self, room: &str, name: &str, owner: u64, person: bool) -> PendingClaim;

    /// Gives back a name `owner` claimed (it left, was renamed, or gave up waiting), also if
    /// the claim is still on its way. A name someone else holds is left alone.
    fn release(&self, room: &str, name: &str, owner: u64, person: bool);

    /// The names in `room` elsewhere, as last seen (a person present on several servers may
    /// come more than once). This server's own rooms answer for themselves.
    fn members(&self, room: &str) -> Vec<String>;

    /// Every room with members elsewhere, and how many (people, not connections).
    fn rooms(&self) -> Vec<(String, usize)>;

    /// The persons present in `room` elsewhere: (name, server). A room made here starts from
    /// this, and follows their joins and leaves from there.
    fn persons(&self, room: &str) -> Vec<(String, String)>;

    /// True when other servers share the rooms: their members stay when this one stops, so
    /// its members' leaves must be told even at shutdown.
    fn shared(&self) -> bool;
}

/// One server on its own.
pub struct Alone;

impl Names for Alone {
    fn claim(&self, _room: &str, _name: &str, _owner: u64, _person: bool) -> PendingClaim {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        rx
    }

    fn release(&self, _room: &str, _name: &str, _owner: u64, _person: bool) {}

    fn members(&self, _room: &str) -> Vec<String> {
        Vec::new()
    }

    fn rooms(&self) -> Vec<(String, usize)> {
        Vec::new()
    }

    fn persons(&self, _room: &str) -> Vec<(String, String)> {
        Vec::new()
    }

    fn shared(&self) -> bool {
        false
    }
}
