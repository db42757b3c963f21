//! Moderation as a room shows it: who did what to whom, why, and until when. One event type
//! for every action, so a room renders each once per format like any other line, a cluster
//! carries it like any other event, and a client reads one shape (`docs/PROTOCOL.md`,
//! "Moderation").

use serde::Serialize;

use crate::protocol::Timestamp;

/// What was done. The names are the JSON events' `type`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActKind {
    Topic,
    Kick,
    Ban,
    Unban,
    Mute,
    Unmute,
    Op,
    Deop,
    Voice,
    Devoice,
    Invite,
    Mode,
    Delete,
    Wall,
}

impl ActKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActKind::Topic => "topic",
            ActKind::Kick => "kick",
            ActKind::Ban => "ban",
            ActKind::Unban => "unban",
            ActKind::Mute => "mute",
            ActKind::Unmute => "unmute",
            ActKind::Op => "op",
            ActKind::Deop => "deop",
            ActKind::Voice => "voice",
            ActKind::Devoice => "devoice",
            ActKind::Invite => "invite",
            ActKind::Mode => "mode",
            ActKind::Delete => "delete",
            ActKind::Wall => "wall",
        }
    }

    /// A kick or a ban closes its target out of the room.
    pub fn expels(self) -> bool {
        matches!(self, ActKind::Kick | ActKind::Ban)
    }
}

/// One moderation action, borrowed from whoever holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Act<'a> {
    pub kind: ActKind,
    /// Who did it (a registered name, or the admin API's `admin`).
    pub actor: &'a str,
    /// The member acted on. `None` for a ban by address (the room is not told the address),
    /// a topic, a mode, a wall notice.
    pub target: Option<&'a str>,
    /// The reason; the topic (empty: cleared); the modes set (`+closed -moderated`); the
    /// notice of a wall.
    pub text: Option<&'a str>,
    /// When a ban or mute ends by itself.
    pub until: Option<Timestamp>,
    /// The deleted message's id.
    pub id: Option<u64>,
    /// A ban by address: the network. Never shown to the room (members learn nothing of
    /// addresses); the nodes of a cluster use it to close out the connections it covers.
    pub net: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonAct<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    modes: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<Timestamp>,
    ts: Timestamp,
}

/// `2026-12-08 10:00 UTC`: an expiry as a person reads it (minutes are enough).
pub fn human_time(t: Timestamp) -> String {
    let iso = t.to_string();
    match (iso.get(..10), iso.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => iso,
    }
}

impl Act<'_> {
    /// ` until 2026-12-08 10:00 UTC: spam`, each part only when there is one.
    fn tail(&self) -> String {
        let mut s = String::new();
        if let Some(until) = self.until {
            s.push_str(" until ");
            s.push_str(&human_time(until));
        }
        if let Some(reason) = self.text.filter(|r| !r.is_empty()) {
            s.push_str(": ");
            s.push_str(reason);
        }
        s
    }

    /// The text line without `*** ` and the newline: `Mina kicked Bob: spam`.
    pub fn describe(&self) -> String {
        let actor = self.actor;
        let target = self.target.unwrap_or("an address");
        match self.kind {
            ActKind::Topic => match self.text.filter(|t| !t.is_empty()) {
                Some(topic) => format!("{actor} set the topic: {topic}"),
                None => format!("{actor} cleared the topic"),
            },
            ActKind::Kick => format!("{actor} kicked {target}{}", self.tail()),
            ActKind::Ban => format!("{actor} banned {target}{}", self.tail()),
            ActKind::Unban => format!("{actor} unbanned {target}"),
            ActKind::Mute => format!("{actor} muted {target}{}", self.tail()),
            ActKind::Unmute => format!("{actor} unmuted {target}"),
            ActKind::Op => format!("{actor} made {target} an operator"),
            ActKind::Deop => format!("{actor} took operator from {target}"),
            ActKind::Voice => format!("{actor} gave {target} voice"),
            ActKind::Devoice => format!("{actor} took voice from {target}"),
            ActKind::Invite => format!("{actor} invited {target}"),
            ActKind::Mode => format!("{actor} set modes {}", self.text.unwrap_or("")),
            ActKind::Delete => format!("{actor} deleted message {}", self.id.unwrap_or(0)),
            ActKind::Wall => format!("notice from {actor}: {}", self.text.unwrap_or("")),
        }
    }

    /// Appends `*** Mina kicked Bob: spam\n`.
    pub fn render_text(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"*** ");
        out.extend_from_slice(self.describe().as_bytes());
        out.push(b'\n');
    }

    /// Appends `{"type":"kick","room":..,"actor":..,"target":..,"reason":..,"ts":..}\n`.
    pub fn render_json(&self, room: &str, ts: Timestamp, out: &mut Vec<u8>) {
        let (reason, text, modes) = match self.kind {
            ActKind::Topic | ActKind::Wall => (None, Some(self.text.unwrap_or("")), None),
            ActKind::Mode => (None, None, self.text),
            _ => (self.text.filter(|r| !r.is_empty()), None, None),
        };
        let ev = JsonAct {
            kind: self.kind.as_str(),
            room,
            actor: self.actor,
            target: self.target,
            id: self.id,
            reason,
            text,
            modes,
            until: self.until,
            ts,
        };
        crate::protocol::push_json(out, &ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(act: Act<'_>) -> String {
        let mut out = Vec::new();
        act.render_text(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    const KICK: Act<'static> = Act {
        kind: ActKind::Kick,
        actor: "Mina",
        target: Some("Bob"),
        text: Some("spam"),
        until: None,
        id: None,
        net: None,
    };

    #[test]
    fn each_action_reads_as_a_sentence() {
        assert_eq!(text(KICK), "*** Mina kicked Bob: spam\n");
        let ban = Act {
            kind: ActKind::Ban,
            until: Some(Timestamp(86_400_000)),
            ..KICK
        };
        assert_eq!(
            text(ban),
            "*** Mina banned Bob until 1970-01-02 00:00 UTC: spam\n"
        );
        let topic = Act {
            kind: ActKind::Topic,
            target: None,
            text: Some("release on Friday"),
            ..KICK
        };
        assert_eq!(text(topic), "*** Mina set the topic: release on Friday\n");
        let delete = Act {
            kind: ActKind::Delete,
            target: None,
            text: None,
            id: Some(812),
            ..KICK
        };
        assert_eq!(text(delete), "*** Mina deleted message 812\n");
        let by_address = Act {
            kind: ActKind::Ban,
            target: None,
            text: None,
            ..KICK
        };
        assert_eq!(text(by_address), "*** Mina banned an address\n");
    }

    #[test]
    fn json_names_the_actor_the_target_and_the_reason() {
        let mut out = Vec::new();
        KICK.render_json("dev", Timestamp(0), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "{\"type\":\"kick\",\"room\":\"dev\",\"actor\":\"Mina\",\"target\":\"Bob\",\
             \"reason\":\"spam\",\"ts\":\"1970-01-01T00:00:00.000Z\"}\n"
        );
    }
}
