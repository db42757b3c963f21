//! Room events as they travel between the nodes of a cluster, and come back to the rooms.
//!
//! In cluster mode (`--nats`, see [`crate::cluster`]) a room hands each event to its
//! [`crate::sequencer::Sequencer`], which publishes it in this form; every node's room appends
//! what the stream brings back ([`crate::room::Room::deliver`]), with the id the stream gave it.
//! Private messages travel as [`PrivateNote`]s. Owned and serialisable, unlike the borrowed
//! [`RoomEvent`] a room renders: so one server never builds them.

use serde::{Deserialize, Serialize};

use crate::act::{Act, ActKind};
use crate::protocol::{clean_message, validate_name, RoomEvent, Timestamp};

/// A room event as it travels between nodes: owned, and with the time it was first sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub event: Event,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Message {
        name: String,
        text: String,
    },
    Action {
        name: String,
        text: String,
    },
    /// `node`: a person's join or leave on that node (its first connection there came, or its
    /// last went). The room shows it only when it is the person's first node in the room, or
    /// its last (see [`crate::room::Room::deliver`]); a node that does not know the field
    /// shows every one.
    Join {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    Leave {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    Nick {
        old: String,
        new: String,
    },
    /// A moderation action (see [`crate::act::Act`]).
    Act {
        kind: ActKind,
        actor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        net: Option<String>,
    },
}

/// The longest node name taken from the stream (ours are 16 hex digits).
const MAX_NODE: usize = 64;

impl Envelope {
    pub fn new(event: Event) -> Self {
        Envelope {
            event,
            ts: Timestamp::now().0,
        }
    }

    /// Messages and actions are kept as history; joins, leaves and renames are not.
    pub fn is_message(&self) -> bool {
        matches!(self.event, Event::Message { .. } | Event::Action { .. })
    }

    /// True if every name passes the name rules and every text is what `clean_message` would
    /// leave: what a node of ours publishes. Checked on arrival, so that whoever else can write
    /// to the stream cannot slip control characters or impossible names to the clients.
    pub fn is_clean(&self) -> bool {
        let name_ok = |n: &str| validate_name(n).is_ok();
        let text_ok = |t: &str| !t.is_empty() && clean_message(t.as_bytes()) == t;
        match &self.event {
            Event::Message { name, text } | Event::Action { name, text } => {
                name_ok(name) && text_ok(text)
            }
            Event::Join { name, node } | Event::Leave { name, node } => {
                name_ok(name) && node.as_ref().is_none_or(|n| n.len() <= MAX_NODE)
            }
            Event::Nick { old, new } => name_ok(old) && name_ok(new),
            Event::Act {
                actor,
                target,
                text,
                net,
                ..
            } => {
                name_ok(actor)
                    && target.as_deref().is_none_or(name_ok)
                    && text.as_deref().is_none_or(|t| {
                        t.len() <= crate::moderation::command::MAX_TEXT
                            && (t.is_empty() || text_ok(t))
                            && !t.contains('\n')
                    })
                    && net
                        .as_deref()
                        .is_none_or(|n| n.parse::<crate::moderation::Net>().is_ok())
            }
        }
    }

    /// The event as a room renders it, with `id` for a message or an action.
    pub fn as_room_event(&self, id: u64) -> RoomEvent<'_> {
        match &self.event {
            Event::Message { name, text } => RoomEvent::Message { id, name, text },
            Event::Action { name, text } => RoomEvent::Action { id, name, text },
            Event::Join { name, .. } => RoomEvent::Join { name },
            Event::Leave { name, .. } => RoomEvent::Leave { name },
            Event::Nick { old, new } => RoomEvent::Nick { old, new },
            Event::Act {
                kind,
                actor,
                target,
                text,
                until,
                id,
                net,
            } => RoomEvent::Act(Act {
                kind: *kind,
                actor,
                target: target.as_deref(),
                text: text.as_deref(),
                until: until.map(Timestamp),
                id: *id,
                net: net.as_deref(),
            }),
        }
    }

    /// The node a person's join or leave was on (see [`Event::Join`]).
    pub fn person_node(&self) -> Option<&str> {
        match &self.event {
            Event::Join { node, .. } | Event::Leave { node, .. } => node.as_deref(),
            _ => None,
        }
    }

    /// Marks a join or leave as a person's on `node` (see [`Event::Join`]).
    pub fn on_node(mut self, on: &str) -> Self {
        if let Event::Join { node, .. } | Event::Leave { node, .. } = &mut self.event {
            *node = Some(on.to_owned());
        }
        self
    }

    /// The owned form of a room event (ids are the stream's to give, so they are dropped).
    pub fn from_room_event(event: &RoomEvent<'_>) -> Self {
        let event = match *event {
            RoomEvent::Message { name, text, .. } => Event::Message {
                name: name.into(),
                text: text.into(),
            },
            RoomEvent::Action { name, text, .. } => Event::Action {
                name: name.into(),
                text: text.into(),
            },
            RoomEvent::Join { name } => Event::Join {
                name: name.into(),
                node: None,
            },
            RoomEvent::Leave { name } => Event::Leave {
                name: name.into(),
                node: None,
            },
            RoomEvent::Nick { old, new } => Event::Nick {
                old: old.into(),
                new: new.into(),
            },
            RoomEvent::Act(act) => Event::Act {
                kind: act.kind,
                actor: act.actor.into(),
                target: act.target.map(Into::into),
                text: act.text.map(Into::into),
                until: act.until.map(|t| t.0),
                id: act.id,
                net: act.net.map(Into::into),
            },
        };
        Envelope::new(event)
    }
}

/// A private message between nodes (core NATS, subject `machat.private.<room hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateNote {
    pub from: String,
    pub to: String,
    pub text: String,
    /// The node it was sent on, which delivered its own copies already.
    pub node: String,
}

impl PrivateNote {
    /// True if the note passes the rules a client's own `/msg` would (names, a clean text):
    /// whoever can publish on NATS must not slip a forged line past them.
    pub fn is_clean(&self) -> bool {
        validate_name(&self.from).is_ok()
            && validate_name(&self.to).is_ok()
            && !self.text.trim().is_empty()
            && clean_message(self.text.as_bytes()) == self.text
            && self.node.len() <= MAX_NODE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_travel_as_small_json() {
        let e = Envelope {
            event: Event::Nick {
                old: "a".into(),
                new: "b".into(),
            },
            ts: 5,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"type":"nick","old":"a","new":"b","ts":5}"#);
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
        let m = Envelope::from_room_event(&RoomEvent::Action {
            id: 9,
            name: "Mina",
            text: "waves",
        });
        assert!(m.is_message() && m.is_clean());
        let forged = |event| Envelope { event, ts: 1 };
        assert!(!forged(Event::Message {
            name: "Mina".into(),
            text: "hi\u{1b}[2J".into()
        })
        .is_clean());
        assert!(!forged(Event::Join {
            name: "a:b".into(),
            node: None
        })
        .is_clean());
        // A person's join names its node; older nodes' joins have none, and still parse.
        let on = Envelope::from_room_event(&RoomEvent::Join { name: "Mina" }).on_node("n1");
        let json = serde_json::to_string(&on).unwrap();
        assert!(json.contains(r#""node":"n1""#), "{json}");
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), on);
        let old: Envelope =
            serde_json::from_str(r#"{"type":"leave","name":"Mina","ts":1}"#).unwrap();
        assert_eq!(old.person_node(), None);
        assert!(!forged(Event::Leave {
            name: "Mina".into(),
            node: Some("x".repeat(65))
        })
        .is_clean());
        assert!(forged(Event::Message {
            name: "Mina".into(),
            text: "two\nlines".into()
        })
        .is_clean());
        assert!(matches!(
            m.as_room_event(12),
            RoomEvent::Action {
                id: 12,
                name: "Mina",
                text: "waves"
            }
        ));
    }
}
