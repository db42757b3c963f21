//! Moderation: who may do what in a room and on the server, and what is kept of it.
//!
//! [`record`] is what a room keeps between visits (roles, topic, bans, mutes, invitations,
//! modes, its log); [`policy`] holds every record and answers the questions the chat asks
//! (may this connection enter, may it speak, what rank is it); [`keep`] is the seam to where
//! records are stored (SQLite here, a NATS bucket in a cluster); [`command`] reads the
//! commands. The session carries a command out (`session::moderate`), and rooms show what was
//! done as [`crate::act::Act`] events.

pub mod command;
pub mod keep;
pub mod net;
pub mod policy;
pub mod record;

pub use net::Net;
pub use policy::{Policy, Who};

use crate::act::{Act, ActKind};
use crate::protocol::{Format, Reply, Timestamp};
use record::Topic;

/// Renders a room's topic as a joining member is shown it.
pub fn render_topic(room: &str, topic: &Topic, format: Format, out: &mut Vec<u8>) {
    match format {
        Format::Text => Reply::Notice(&format!(
            "topic of {room}: {} (set by {})",
            topic.text, topic.by
        ))
        .render(format, out),
        Format::Json | Format::Frames => Act {
            kind: ActKind::Topic,
            actor: &topic.by,
            target: None,
            text: Some(&topic.text),
            until: None,
            id: None,
            net: None,
        }
        .render_json(room, Timestamp(topic.at), out),
    }
}
