//! Room events as they travel between the nodes of a cluster, and come back to the rooms.
//!
//! In cluster mode (`--nats`, see [`crate::cluster`]) a room hands each event to its
//! [`crate::sequencer::Sequencer`], which publishes it in this form; every node's room appends
//! what the stream brings back ([`crate::room::Room::deliver`]), with the id the stream gave it.
//! Private messages travel as [`PrivateNote`]s. Owned and serialisable, unlike the borrowed
//! [`RoomEvent`] a room renders: so one server never builds them.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::act::{Act, ActKind};
use crate::protocol::{clean_message, validate_name, RoomEvent, Timestamp};

/// A room event as it travels between nodes: owned, and with the time it was first sent.
///
/// On the wire one flat JSON object: `type`, the event's fields, `ts`
/// (`{"type":"message","name":"Ann","text":"hi","ts":1764160000000}`). Written by hand
/// ([`Outbound`]) and read through [`Flat`] rather than with serde's `flatten` and internal
/// tag, which buffer every field into an intermediate tree first: every event of the cluster
/// passes here on every node, and that buffering was a visible part of the cluster thread's
/// time (issue 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event: Event,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
        node: Option<String>,
    },
    Leave {
        name: String,
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
        target: Option<String>,
        text: Option<String>,
        until: Option<u64>,
        id: Option<u64>,
        net: Option<String>,
    },
}

/// A room event as a node publishes it, borrowed: written straight from the room's
/// [`RoomEvent`] (no owned [`Envelope`] first). Fields in the order the wire has always had
/// them: `type`, the event's own, `ts`; absent options left out.
pub struct Outbound<'a> {
    pub event: &'a RoomEvent<'a>,
    /// A person's join or leave: its node (see [`Event::Join`]).
    pub node: Option<&'a str>,
    pub ts: u64,
}

impl Serialize for Outbound<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match *self.event {
            RoomEvent::Message { name, text, .. } | RoomEvent::Action { name, text, .. } => {
                let kind = match self.event {
                    RoomEvent::Message { .. } => "message",
                    _ => "action",
                };
                m.serialize_entry("type", kind)?;
                m.serialize_entry("name", name)?;
                m.serialize_entry("text", text)?;
            }
            RoomEvent::Join { name } | RoomEvent::Leave { name } => {
                let kind = match self.event {
                    RoomEvent::Join { .. } => "join",
                    _ => "leave",
                };
                m.serialize_entry("type", kind)?;
                m.serialize_entry("name", name)?;
                if let Some(node) = self.node {
                    m.serialize_entry("node", node)?;
                }
            }
            RoomEvent::Nick { old, new } => {
                m.serialize_entry("type", "nick")?;
                m.serialize_entry("old", old)?;
                m.serialize_entry("new", new)?;
            }
            RoomEvent::Act(act) => {
                m.serialize_entry("type", "act")?;
                m.serialize_entry("kind", &act.kind)?;
                m.serialize_entry("actor", act.actor)?;
                if let Some(target) = act.target {
                    m.serialize_entry("target", target)?;
                }
                if let Some(text) = act.text {
                    m.serialize_entry("text", text)?;
                }
                if let Some(until) = act.until {
                    m.serialize_entry("until", &until.0)?;
                }
                if let Some(id) = act.id {
                    m.serialize_entry("id", &id)?;
                }
                if let Some(net) = act.net {
                    m.serialize_entry("net", net)?;
                }
            }
        }
        m.serialize_entry("ts", &self.ts)?;
        m.end()
    }
}

impl Outbound<'_> {
    /// The JSON a node publishes.
    pub fn to_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
        let text = match *self.event {
            RoomEvent::Message { text, .. } | RoomEvent::Action { text, .. } => text.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(96 + text + text / 8);
        serde_json::to_writer(&mut out, self)?;
        Ok(out)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Outbound {
            event: &self.as_room_event(0),
            node: self.person_node(),
            ts: self.ts,
        }
        .serialize(s)
    }
}

/// Every field any event has, read in one pass (see [`Envelope`]); which ones must be there
/// depends on `type`. Fields no event has are ignored, as they always were.
#[derive(Deserialize)]
struct Flat {
    #[serde(rename = "type")]
    tag: Tag,
    name: Option<String>,
    text: Option<String>,
    node: Option<String>,
    old: Option<String>,
    new: Option<String>,
    kind: Option<ActKind>,
    actor: Option<String>,
    target: Option<String>,
    until: Option<u64>,
    id: Option<u64>,
    net: Option<String>,
    ts: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Tag {
    Message,
    Action,
    Join,
    Leave,
    Nick,
    Act,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let f = Flat::deserialize(d)?;
        let need = |v: Option<String>, field: &'static str| v.ok_or(D::Error::missing_field(field));
        let event = match f.tag {
            Tag::Message => Event::Message {
                name: need(f.name, "name")?,
                text: need(f.text, "text")?,
            },
            Tag::Action => Event::Action {
                name: need(f.name, "name")?,
                text: need(f.text, "text")?,
            },
            Tag::Join => Event::Join {
                name: need(f.name, "name")?,
                node: f.node,
            },
            Tag::Leave => Event::Leave {
                name: need(f.name, "name")?,
                node: f.node,
            },
            Tag::Nick => Event::Nick {
                old: need(f.old, "old")?,
                new: need(f.new, "new")?,
            },
            Tag::Act => Event::Act {
                kind: f.kind.ok_or(D::Error::missing_field("kind"))?,
                actor: need(f.actor, "actor")?,
                target: f.target,
                text: f.text,
                until: f.until,
                id: f.id,
                net: f.net,
            },
        };
        Ok(Envelope { event, ts: f.ts })
    }
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

    /// The envelope as serde's derives wrote and read it before issue 16: what nodes of an
    /// older version publish and expect. The hand-written forms must agree with it exactly.
    mod before {
        use crate::act::ActKind;
        use serde::{Deserialize, Serialize};

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub struct Envelope {
            #[serde(flatten)]
            pub event: Event,
            pub ts: u64,
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
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
    }

    #[test]
    fn the_wire_form_is_the_one_older_nodes_write_and_read() {
        let act = |target: Option<&'static str>, text: Option<&'static str>| {
            RoomEvent::Act(Act {
                kind: ActKind::Ban,
                actor: "Op",
                target,
                text,
                until: Some(Timestamp(77)),
                id: Some(3),
                net: Some("10.0.0.0/8"),
            })
        };
        let events = [
            (
                RoomEvent::Message {
                    id: 4,
                    name: "Ann",
                    text: "hi \"there\"\n\u{e9}\u{1b}",
                },
                None,
            ),
            (
                RoomEvent::Action {
                    id: 5,
                    name: "Ann",
                    text: "waves",
                },
                None,
            ),
            (RoomEvent::Join { name: "Ann" }, None),
            (RoomEvent::Join { name: "Ann" }, Some("n1")),
            (RoomEvent::Leave { name: "Bob" }, Some("n2")),
            (RoomEvent::Leave { name: "Bob" }, None),
            (RoomEvent::Nick { old: "a", new: "b" }, None),
            (act(Some("Bob"), Some("spam")), None),
            (act(None, None), None),
        ];
        for (event, node) in &events {
            let new = Outbound {
                event,
                node: *node,
                ts: 99,
            }
            .to_vec()
            .unwrap();
            let mut owned = Envelope::from_room_event(event);
            owned.ts = 99;
            if let Some(n) = node {
                owned = owned.on_node(n);
            }
            let json = serde_json::to_string(&owned).unwrap();
            let old: before::Envelope = serde_json::from_str(&json).unwrap();
            // Written byte for byte as the derives wrote it, from the borrowed event and from
            // the owned envelope alike...
            assert_eq!(String::from_utf8(new).unwrap(), json);
            assert_eq!(serde_json::to_string(&old).unwrap(), json);
            // ...and read back as it was written.
            assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), owned);
        }
        // What the old reader refused, the new one refuses too; fields no event has, and
        // fields of another kind of event, are ignored as they were.
        for bad in [
            r#"{"type":"message","name":"Ann","ts":1}"#,
            r#"{"type":"unknown","ts":1}"#,
            r#"{"type":"nick","old":"a","ts":1}"#,
            r#"{"type":"act","actor":"Op","ts":1}"#,
            r#"{"type":"join","name":"Ann"}"#,
            r#"{"name":"Ann","text":"x","ts":1}"#,
            r#"["message","Ann","x",1]"#,
            r#"{"type":"message","name":"Ann","text":5,"ts":1}"#,
        ] {
            assert!(
                serde_json::from_str::<before::Envelope>(bad).is_err(),
                "{bad}"
            );
            assert!(serde_json::from_str::<Envelope>(bad).is_err(), "{bad}");
        }
        let odd =
            r#"{"ts":2,"name":"Ann","extra":[1,{"a":2}],"text":"x","type":"message","node":"n"}"#;
        let old: before::Envelope = serde_json::from_str(odd).unwrap();
        let new: Envelope = serde_json::from_str(odd).unwrap();
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            serde_json::to_string(&new).unwrap()
        );
    }

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
