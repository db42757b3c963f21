//! A chat message as the rooms, the stores and the renderings share it.

use crate::protocol::Timestamp;

/// A message as the room hands it over: borrowed, so a store copies only what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    pub id: u64,
    pub name: &'a str,
    pub text: &'a str,
    pub ts: Timestamp,
    pub action: bool,
}

impl MessageRef<'_> {
    pub fn to_owned(&self) -> StoredMessage {
        StoredMessage {
            id: self.id,
            name: self.name.to_owned(),
            text: self.text.to_owned(),
            ts: self.ts,
            action: self.action,
        }
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: u64,
    pub name: String,
    pub text: String,
    pub ts: Timestamp,
    /// A `/me` action rather than a plain message.
    pub action: bool,
}

impl StoredMessage {
    pub fn as_ref(&self) -> MessageRef<'_> {
        MessageRef {
            id: self.id,
            name: &self.name,
            text: &self.text,
            ts: self.ts,
            action: self.action,
        }
    }
}

/// The answer to a history query: the messages, oldest first, or why there are none.
pub type History = Result<Vec<StoredMessage>, String>;
