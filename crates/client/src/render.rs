//! The failover client asks for JSON (to learn message ids) but must print what a plain-text
//! client would see: each JSON event is rendered back to the server's text bytes here.

use machat_proto::protocol::{render_history_end, render_history_start, Format, Reply, RoomEvent};
use serde_json::{Map, Value};

/// The line as one of machat's JSON events: an object with a string `"type"`. Anything else
/// (MaChat's plain text, a refusal sent before the handshake was understood) is printed as it
/// came.
pub fn typed(line: &[u8]) -> Option<Map<String, Value>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if !line.starts_with(b"{") {
        return None;
    }
    match serde_json::from_slice::<Value>(line).ok()? {
        Value::Object(m) if m.get("type").is_some_and(Value::is_string) => Some(m),
        _ => None,
    }
}

/// Appends a line as it came, with its newline (an unfinished last line gets one).
pub fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    if !line.ends_with(b"\n") {
        out.push(b'\n');
    }
}

/// Appends the plain-text line(s) the server sends a text client for this JSON event, through
/// the server's own renderers so the bytes cannot drift apart. `me` tells a private message's
/// two copies apart (the JSON is the same for both). None for an unknown type or a missing
/// field, and then nothing has been appended: the caller prints the JSON line rather than
/// nothing.
pub fn render_event(ev: &Map<String, Value>, me: &str, out: &mut Vec<u8>) -> Option<()> {
    let s = |key: &str| ev.get(key).and_then(Value::as_str);
    let strings = |key: &str| -> Option<Vec<&str>> {
        ev.get(key)?.as_array()?.iter().map(Value::as_str).collect()
    };
    let count = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    match s("type")? {
        "message" => {
            let (name, text) = (s("name")?, s("text")?);
            RoomEvent::Message { id: 0, name, text }.render_text(out);
        }
        "action" => {
            let (name, text) = (s("name")?, s("text")?);
            RoomEvent::Action { id: 0, name, text }.render_text(out);
        }
        "join" => RoomEvent::Join { name: s("name")? }.render_text(out),
        "leave" => RoomEvent::Leave { name: s("name")? }.render_text(out),
        "nick" => {
            let (old, new) = (s("name")?, s("new")?);
            RoomEvent::Nick { old, new }.render_text(out);
        }
        "error" => Reply::Error(s("reason")?).render(Format::Text, out),
        "notice" => Reply::Notice(s("text")?).render(Format::Text, out),
        "who" => {
            let room = s("room")?;
            let members: Vec<String> = strings("members")?.into_iter().map(str::to_owned).collect();
            Reply::Who {
                room,
                members: &members,
            }
            .render(Format::Text, out);
        }
        "rooms" => {
            let more = count(ev.get("more")?)?;
            let rooms = ev
                .get("rooms")?
                .as_array()?
                .iter()
                .map(|r| {
                    Some((
                        r.get("room")?.as_str()?.to_owned(),
                        count(r.get("members")?)?,
                    ))
                })
                .collect::<Option<Vec<_>>>()?;
            // The renderer adds the two: a count near usize::MAX must not overflow there.
            rooms.len().checked_add(more)?;
            Reply::Rooms(&rooms, more).render(Format::Text, out);
        }
        "help" => {
            // From the list the server sent, not ours: it may be another version.
            let commands = strings("commands")?.join(", ");
            Reply::Notice(&format!("commands: {commands}")).render(Format::Text, out);
        }
        "history" => render_history_start("", Format::Text, count(ev.get("count")?)?, out),
        "end_of_history" => render_history_end("", Format::Text, out),
        "private" => {
            let (from, to, text) = (s("from")?, s("to")?, s("text")?);
            Reply::Private {
                from,
                to,
                text,
                incoming: from != me,
            }
            .render(Format::Text, out);
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each JSON event the server sends, rendered by the client, against the server's own text
    /// rendering of the same event.
    #[test]
    fn renders_every_json_event_as_the_server_renders_text() {
        use machat_proto::protocol::Timestamp;
        let ts = Timestamp(1_795_690_445_007);
        let room_events = [
            RoomEvent::Message {
                id: 3,
                name: "Mina",
                text: "hello: \"Bob\" \u{e9}\t",
            },
            RoomEvent::Message {
                id: 4,
                name: "Ann",
                text: "two\nlines",
            },
            RoomEvent::Message {
                id: 5,
                name: "Mina",
                text: "",
            },
            RoomEvent::Action {
                id: 6,
                name: "Mina",
                text: "waves\nagain",
            },
            RoomEvent::Join { name: "Bob" },
            RoomEvent::Leave { name: "Bob" },
            RoomEvent::Nick {
                old: "Bob",
                new: "Rob",
            },
        ];
        for ev in room_events {
            let (mut json, mut text, mut got) = (Vec::new(), Vec::new(), Vec::new());
            ev.render_json("dev", ts, &mut json);
            ev.render_text(&mut text);
            let parsed = typed(&json).expect("a typed JSON line");
            assert_eq!(render_event(&parsed, "Zed", &mut got), Some(()));
            assert_eq!(got, text, "{}", String::from_utf8_lossy(&json));
        }
        let members = ["Bob".to_owned(), "Mina".to_owned()];
        let rooms = [("dev".to_owned(), 2), ("lobby".to_owned(), 1)];
        let one_room = [("dev".to_owned(), 1)];
        let private = |incoming| Reply::Private {
            from: "Mina",
            to: "Bob",
            text: "psst\nsecond",
            incoming,
        };
        // (reply, the client's own name: it tells the two private copies apart)
        let replies = [
            (Reply::Error("name Bob is already taken in room dev"), "Bob"),
            (Reply::Notice("bye"), "Bob"),
            (Reply::Notice("server shutting down"), "Bob"),
            (
                Reply::Who {
                    room: "dev",
                    members: &members,
                },
                "Bob",
            ),
            (Reply::Rooms(&rooms, 0), "Bob"),
            (Reply::Rooms(&rooms, 101), "Bob"),
            (Reply::Rooms(&one_room, 0), "Bob"),
            (Reply::Help(machat_proto::protocol::HELP), "Bob"),
            (private(true), "Bob"),
            (private(false), "Mina"),
            (
                Reply::Private {
                    from: "Mina",
                    to: "Mina",
                    text: "note to self",
                    incoming: false,
                },
                "Mina",
            ),
        ];
        for (reply, me) in replies {
            let (mut json, mut text, mut got) = (Vec::new(), Vec::new(), Vec::new());
            reply.render(Format::Json, &mut json);
            reply.render(Format::Text, &mut text);
            let parsed = typed(&json).expect("a typed JSON line");
            assert_eq!(render_event(&parsed, me, &mut got), Some(()));
            assert_eq!(got, text, "{}", String::from_utf8_lossy(&json));
        }
        for n in [0, 1, 2] {
            let (mut json, mut text, mut got) = (Vec::new(), Vec::new(), Vec::new());
            render_history_start("dev", Format::Json, n, &mut json);
            render_history_end("dev", Format::Json, &mut json);
            render_history_start("dev", Format::Text, n, &mut text);
            render_history_end("dev", Format::Text, &mut text);
            for line in json.split_inclusive(|&b| b == b'\n') {
                let parsed = typed(line).expect("a typed JSON line");
                assert_eq!(render_event(&parsed, "Bob", &mut got), Some(()));
            }
            assert_eq!(got, text);
        }
    }

    #[test]
    fn unknown_or_broken_events_are_not_rendered_and_other_lines_are_not_events() {
        let mut out = Vec::new();
        for line in [
            &br#"{"type":"poll","question":"lunch?"}"#[..],
            br#"{"type":"message","name":"Mina"}"#,
            br#"{"type":"rooms","rooms":[{"room":"r","members":1}],"more":18446744073709551615}"#,
            br#"{"type":"who","room":"r","members":[1]}"#,
        ] {
            let parsed = typed(line).expect("typed");
            assert_eq!(render_event(&parsed, "Bob", &mut out), None);
            assert!(out.is_empty());
        }
        for line in [
            &b"Mina:hi\n"[..],
            b"*** Mina joined\n",
            b"{\"name\":\"x\"}\n",
            b"{\"type\":1}\n",
            b"{not json\n",
            b"[1]\n",
            b"\xff\xfe\n",
            b"",
        ] {
            assert!(typed(line).is_none(), "{line:?}");
        }
    }
}
