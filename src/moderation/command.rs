//! The moderation commands as typed (`/kick Bob spam`), read into one [`Command`] whatever
//! the transport: a version-1 line, a version-2 `command` request, later IRC. Reading never
//! looks at who asks or at the room; that is the session's (`session::moderate`).

use std::time::Duration;

use super::net::{looks_like_duration, parse_duration, Net};
use super::record::Target;
use crate::protocol::validate_name;
use crate::refusal::Refusal;

/// The longest topic, reason or wall notice, in bytes.
pub const MAX_TEXT: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/topic`: show it; `/topic TEXT`: set it; `/topic -`: clear it.
    Topic(Option<String>),
    Kick {
        name: String,
        reason: String,
    },
    Ban {
        target: Target,
        time: Option<Duration>,
        reason: String,
    },
    Unban(Target),
    Bans,
    Mute {
        name: String,
        time: Option<Duration>,
        reason: String,
    },
    Unmute(String),
    Op(String),
    Deop(String),
    Voice(String),
    Devoice(String),
    Invite(String),
    Uninvite(String),
    /// `/mode`: show; `/mode +closed -moderated +key KEY -key`: set.
    Mode(Vec<ModeChange>),
    Delete(u64),
    Sban {
        target: Target,
        time: Option<Duration>,
        reason: String,
    },
    Unsban(Target),
    Wall(String),
    Modlog(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeChange {
    Closed(bool),
    Moderated(bool),
    /// `Some(key)` sets it, `None` removes it.
    Key(Option<String>),
}

/// The usage line of each command, as `/help` and a wrong use show it.
pub const USAGE: &[(&str, &str)] = &[
    ("topic", "/topic [TEXT | -]"),
    ("kick", "/kick NAME [REASON]"),
    ("ban", "/ban NAME|ADDRESS|CIDR [DURATION] [REASON]"),
    ("unban", "/unban NAME|ADDRESS|CIDR"),
    ("bans", "/bans"),
    ("mute", "/mute NAME [DURATION] [REASON]"),
    ("unmute", "/unmute NAME"),
    ("op", "/op NAME"),
    ("deop", "/deop NAME"),
    ("voice", "/voice NAME"),
    ("devoice", "/devoice NAME"),
    ("invite", "/invite NAME"),
    ("uninvite", "/uninvite NAME"),
    (
        "mode",
        "/mode [+closed|-closed|+moderated|-moderated|+key KEY|-key ...]",
    ),
    ("delete", "/delete ID"),
    ("modlog", "/modlog [N]"),
    ("sban", "/sban NAME|ADDRESS|CIDR [DURATION] [REASON]"),
    ("unsban", "/unsban NAME|ADDRESS|CIDR"),
    ("wall", "/wall TEXT"),
];

pub fn usage(verb: &str) -> &'static str {
    USAGE
        .iter()
        .find(|(v, _)| *v == verb)
        .map_or("/help", |(_, u)| u)
}

/// Splits off the first word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn text(s: &str) -> Result<String, Refusal> {
    if s.len() > MAX_TEXT {
        return Err(Refusal::TextTooLong(MAX_TEXT));
    }
    Ok(s.trim().to_owned())
}

fn name(verb: &'static str, s: &str) -> Result<String, Refusal> {
    if s.is_empty() {
        return Err(Refusal::Usage(usage(verb)));
    }
    validate_name(s).map_err(|e| Refusal::BadArgument(format!("usage: {}: {e}", usage(verb))))?;
    Ok(s.to_owned())
}

/// Whether a ban's target reads as an address or a network (then it is one, and must parse
/// as one), rather than a name. The admin API reads its targets by the same rule.
pub fn looks_like_net(s: &str) -> bool {
    s.contains('/') || s.parse::<std::net::IpAddr>().is_ok()
}

/// An address or network if the word reads as one, else a name.
fn target(verb: &'static str, s: &str) -> Result<Target, Refusal> {
    if s.is_empty() {
        return Err(Refusal::Usage(usage(verb)));
    }
    if looks_like_net(s) {
        return s
            .parse::<Net>()
            .map(Target::Net)
            .map_err(Refusal::BadArgument);
    }
    name(verb, s).map(Target::Name)
}

/// `[DURATION] [REASON]`
fn time_and_reason(rest: &str) -> Result<(Option<Duration>, String), Refusal> {
    let (first, after) = word(rest);
    if looks_like_duration(first) || first.starts_with(|c: char| c.is_ascii_digit()) {
        if let Ok(d) = parse_duration(first) {
            return Ok((Some(d), text(after)?));
        }
        if looks_like_duration(first) || first.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Refusal::BadArgument(
                parse_duration(first).err().unwrap_or_default(),
            ));
        }
    }
    Ok((None, text(rest)?))
}

/// Reads `verb args` (without the `/`). `None`: not a moderation command.
pub fn parse(verb: &str, args: &str) -> Option<Result<Command, Refusal>> {
    let (first, rest) = word(args);
    let one = |v: &'static str| -> Result<String, Refusal> {
        if !rest.is_empty() {
            return Err(Refusal::Usage(usage(v)));
        }
        name(v, first)
    };
    Some(match verb {
        "topic" => match args.trim() {
            "" => Ok(Command::Topic(None)),
            "-" => Ok(Command::Topic(Some(String::new()))),
            t => text(t).map(|t| Command::Topic(Some(t))),
        },
        "kick" => name("kick", first).and_then(|n| {
            Ok(Command::Kick {
                name: n,
                reason: text(rest)?,
            })
        }),
        "ban" | "sban" => {
            let v = if verb == "ban" { "ban" } else { "sban" };
            target(v, first).and_then(|t| {
                let (time, reason) = time_and_reason(rest)?;
                Ok(if v == "ban" {
                    Command::Ban {
                        target: t,
                        time,
                        reason,
                    }
                } else {
                    Command::Sban {
                        target: t,
                        time,
                        reason,
                    }
                })
            })
        }
        "unban" if rest.is_empty() => target("unban", first).map(Command::Unban),
        "unsban" if rest.is_empty() => target("unsban", first).map(Command::Unsban),
        "unban" | "unsban" => Err(Refusal::Usage(usage(verb))),
        "bans" if args.trim().is_empty() => Ok(Command::Bans),
        "bans" => Err(Refusal::Usage(usage("bans"))),
        "mute" => name("mute", first).and_then(|n| {
            let (time, reason) = time_and_reason(rest)?;
            Ok(Command::Mute {
                name: n,
                time,
                reason,
            })
        }),
        "unmute" => one("unmute").map(Command::Unmute),
        "op" => one("op").map(Command::Op),
        "deop" => one("deop").map(Command::Deop),
        "voice" => one("voice").map(Command::Voice),
        "devoice" => one("devoice").map(Command::Devoice),
        "invite" => one("invite").map(Command::Invite),
        "uninvite" => one("uninvite").map(Command::Uninvite),
        "mode" => modes(args),
        "delete" => match (first.parse::<u64>(), rest.is_empty()) {
            (Ok(id), true) if id > 0 => Ok(Command::Delete(id)),
            _ => Err(Refusal::Usage(usage("delete"))),
        },
        "modlog" => match args.trim() {
            "" => Ok(Command::Modlog(20)),
            n => match n.parse::<usize>() {
                Ok(n) if (1..=super::record::MAX_LOG).contains(&n) => Ok(Command::Modlog(n)),
                _ => Err(Refusal::Usage(usage("modlog"))),
            },
        },
        "wall" => match args.trim() {
            "" => Err(Refusal::Usage(usage("wall"))),
            t => text(t).map(Command::Wall),
        },
        _ => return None,
    })
}

fn modes(args: &str) -> Result<Command, Refusal> {
    let mut changes = Vec::new();
    let mut words = args.split_whitespace();
    while let Some(w) = words.next() {
        let change = match w {
            "+closed" => ModeChange::Closed(true),
            "-closed" => ModeChange::Closed(false),
            "+moderated" => ModeChange::Moderated(true),
            "-moderated" => ModeChange::Moderated(false),
            "-key" => ModeChange::Key(None),
            "+key" => match words.next() {
                Some(k) if k.len() <= 100 => ModeChange::Key(Some(k.to_owned())),
                _ => return Err(Refusal::Usage(usage("mode"))),
            },
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(Refusal::UnknownMode(shown));
            }
        };
        changes.push(change);
    }
    Ok(Command::Mode(changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        let (verb, args) = word(line);
        match parse(verb, args) {
            Some(Ok(c)) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn err(line: &str) -> Refusal {
        let (verb, args) = word(line);
        match parse(verb, args) {
            Some(Err(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn commands_read_their_arguments() {
        assert_eq!(
            ok("kick Bob spam and more"),
            Command::Kick {
                name: "Bob".into(),
                reason: "spam and more".into()
            }
        );
        assert_eq!(
            ok("ban Bob 10m flooding"),
            Command::Ban {
                target: Target::Name("Bob".into()),
                time: Some(Duration::from_secs(600)),
                reason: "flooding".into()
            }
        );
        assert_eq!(
            ok("ban 203.0.113.0/24 spam"),
            Command::Ban {
                target: Target::Net("203.0.113.0/24".parse().unwrap_or_else(|_| unreachable!())),
                time: None,
                reason: "spam".into()
            }
        );
        assert_eq!(ok("topic"), Command::Topic(None));
        assert_eq!(ok("topic -"), Command::Topic(Some(String::new())));
        assert_eq!(
            ok("mode +closed -moderated +key s3cret"),
            Command::Mode(vec![
                ModeChange::Closed(true),
                ModeChange::Moderated(false),
                ModeChange::Key(Some("s3cret".into()))
            ])
        );
        assert_eq!(ok("delete 812"), Command::Delete(812));
        assert_eq!(ok("modlog"), Command::Modlog(20));
        assert!(parse("who", "").is_none());
    }

    #[test]
    fn malformed_commands_say_how_to_use_them() {
        assert_eq!(err("kick"), Refusal::Usage("/kick NAME [REASON]"));
        assert!(matches!(err("ban Bob 10x spam"), Refusal::BadArgument(_)));
        assert!(matches!(err("ban Bob 0m"), Refusal::BadArgument(_)));
        assert!(matches!(err("ban 10.0.0.0/40"), Refusal::BadArgument(_)));
        assert!(matches!(err("ban 10.0.0.0/8x"), Refusal::BadArgument(_)));
        assert!(matches!(err("kick bad:name"), Refusal::BadArgument(_)));
        assert_eq!(err("delete x"), Refusal::Usage("/delete ID"));
        assert_eq!(err("delete 0"), Refusal::Usage("/delete ID"));
        assert!(matches!(err("mode +secret"), Refusal::UnknownMode(_)));
        assert_eq!(err("mode +key"), Refusal::Usage(usage("mode")));
        assert_eq!(err("op Bob Ann"), Refusal::Usage("/op NAME"));
        assert_eq!(err("wall"), Refusal::Usage("/wall TEXT"));
        assert_eq!(err("modlog 0"), Refusal::Usage("/modlog [N]"));
        let long = format!("topic {}", "x".repeat(MAX_TEXT + 1));
        assert_eq!(err(&long), Refusal::TextTooLong(MAX_TEXT));
    }
}
