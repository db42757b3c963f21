//! The command line: MaChat's flags (`-client`, `-room`, `-address`) with one dash or two, the
//! password, and the handshake they make.

use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::time::Duration;

use clap::{CommandFactory, Parser};

/// machat-client: chat from a terminal. Flags may be written with one dash or two
/// (`-client Mina`, `--client Mina`).
#[derive(Parser, Debug, Clone)]
#[command(name = "machat-client", version)]
pub struct ClientArgs {
    /// Your name in the room (default: a random UserN).
    #[arg(long)]
    pub client: Option<String>,

    /// The room to join.
    #[arg(long, default_value = "lounge")]
    pub room: String,

    /// Server address; give it more than once (or several separated by commas) to try the next
    /// when one cannot be reached, and to fail over to the next (resuming where the lost one
    /// stopped) when a connection is lost.
    #[arg(long, default_value = "localhost:8989", value_delimiter = ',')]
    pub address: Vec<String>,

    /// Ask the server for one JSON object per line instead of `name:text` lines.
    #[arg(long)]
    pub json: bool,

    /// Connect with TLS (to the server's --tls-addr), checking its certificate.
    #[arg(long)]
    pub tls: bool,

    /// With --tls: trust the certificates in this PEM file (a private CA) instead of the
    /// system's.
    #[arg(long, requires = "tls")]
    pub ca: Option<std::path::PathBuf>,

    /// The password of a registered name, read from the first line of this file (or from
    /// the MACHAT_PASSWORD environment variable): never on the command line.
    #[arg(long)]
    pub password_file: Option<std::path::PathBuf>,

    /// How long to keep trying to reconnect (to the next --address, or the same one), in
    /// seconds, when the connection is lost (0 = never: the client ends when it is lost).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub reconnect_for: Duration,

    /// Show the room's last N messages on joining (0: none, and the handshake is byte for byte
    /// MaChat's own).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub history: u64,

    /// Set from --password-file or MACHAT_PASSWORD, not a flag.
    #[arg(skip)]
    pub password: Option<String>,
}

impl ClientArgs {
    pub fn from_args() -> Self {
        let cmd = ClientArgs::command();
        let args: Vec<OsString> = std::env::args_os().collect();
        if let Some(typo) = misspelt_flag(&args, &cmd) {
            eprintln!("machat-client: {typo}\n\nFor more information, try '-help'.");
            std::process::exit(2);
        }
        ClientArgs::parse_from(go_style_args(args, &cmd))
    }

    /// Reads the password, if one is given.
    pub fn load_password(&mut self) -> io::Result<()> {
        self.password = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            None => std::env::var("MACHAT_PASSWORD").ok(),
        };
        Ok(())
    }

    /// The handshake, byte for byte what MaChat's client sends (plus `format` if asked).
    pub fn handshake(&self, name: &str) -> Vec<u8> {
        let mut v = serde_json::json!({"name": name, "room": self.room});
        if self.json {
            v["format"] = "json".into();
        }
        if self.history > 0 {
            v["history"] = self.history.into();
        }
        if let Some(pw) = &self.password {
            v["password"] = pw.as_str().into();
        }
        v.to_string().into_bytes()
    }
}

/// A name like MaChat's default, `User` and a number below 400.
pub fn random_name() -> String {
    let n = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 400;
    format!("User{n}")
}

/// Seconds as a whole or fractional number, for `--reconnect-for`.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs < 0.0 {
        return Err("seconds must be 0 or more".into());
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a usable number of seconds"))
}

/// The long flags of `cmd` (and their aliases), `help` and `version` included.
fn long_flags(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .flat_map(|a| {
            a.get_long().into_iter().map(str::to_owned).chain(
                a.get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned),
            )
        })
        .chain(["help".to_owned(), "version".to_owned()])
        .collect()
}

/// `unknown flag -romm: did you mean -room?` for the first flag (one dash or two) that is not
/// one of `cmd`'s but is within two edits of one, written with the dashes the user used. An
/// unknown flag like no other is left to clap's own error.
pub fn misspelt_flag(args: &[OsString], cmd: &clap::Command) -> Option<String> {
    let longs = long_flags(cmd);
    for arg in args.iter().skip(1) {
        let Some(s) = arg.to_str() else { continue };
        if s == "--" {
            return None;
        }
        let (dashes, body) = match (s.strip_prefix("--"), s.strip_prefix('-')) {
            (Some(body), _) => ("--", body),
            (None, Some(body)) => ("-", body),
            (None, None) => continue,
        };
        let name = body.split('=').next().unwrap_or(body);
        if name.is_empty() || longs.iter().any(|l| l == name) {
            continue;
        }
        let (distance, best) = longs
            .iter()
            .map(|l| (edit_distance(name, l), l))
            .min_by_key(|(d, _)| *d)?;
        if distance <= 2 && distance < name.chars().count() {
            return Some(format!(
                "unknown flag {dashes}{name}: did you mean {dashes}{best}?"
            ));
        }
    }
    None
}

/// Levenshtein distance over characters: inserting, removing or changing one counts one.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let changed = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = changed.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Rewrites `-name` and `-name=value` to `--name...` when `name` is a long flag of `cmd`, the
/// way Go's `flag` package reads them. Short flags (`-a`) and values are left alone.
pub fn go_style_args(
    args: impl IntoIterator<Item = OsString>,
    cmd: &clap::Command,
) -> Vec<OsString> {
    let longs = long_flags(cmd);
    let mut out = Vec::new();
    let mut rest_positional = false;
    for arg in args {
        if rest_positional {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest_positional = true;
            out.push(arg);
            continue;
        }
        if let Some(body) = s.strip_prefix('-') {
            if !body.starts_with('-') && body.chars().count() > 1 {
                let name = body.split('=').next().unwrap_or(body);
                if longs.iter().any(|l| l == name) {
                    out.push(OsString::from(format!("-{s}")));
                    continue;
                }
            }
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::is_quit;

    #[test]
    fn go_style_flags_and_defaults() {
        let parse = |a: &[&str]| {
            let args = a.iter().map(std::ffi::OsString::from);
            ClientArgs::try_parse_from(go_style_args(args, &ClientArgs::command())).unwrap()
        };
        let c = parse(&[
            "c",
            "-client",
            "Mina",
            "-room",
            "dev",
            "-address",
            "127.0.0.1:1",
        ]);
        assert_eq!(c.client.as_deref(), Some("Mina"));
        assert_eq!(c.room, "dev");
        assert_eq!(c.address, vec!["127.0.0.1:1"]);
        let c = parse(&["c", "--client", "Mina"]);
        assert_eq!(c.room, "lounge");
        assert_eq!(c.address, vec!["localhost:8989"]);
        assert_eq!(c.handshake("Mina"), br#"{"name":"Mina","room":"lounge"}"#);
        let c = parse(&["c", "-address", "a:1", "-address", "b:2", "-json"]);
        assert_eq!(c.address, vec!["a:1", "b:2"]);
        assert_eq!(
            c.handshake("x"),
            br#"{"name":"x","room":"lounge","format":"json"}"#
        );
        assert!(random_name().starts_with("User"));
        assert!(is_quit("/quit") && is_quit("/QUIT now") && is_quit("/quit\tx"));
        assert!(!is_quit(" /quit") && !is_quit("//quit") && !is_quit("/quitter"));
    }

    #[test]
    fn a_misspelt_flag_gets_the_right_one_suggested() {
        let cmd = ClientArgs::command();
        let check = |a: &[&str]| {
            let args: Vec<OsString> = a.iter().map(OsString::from).collect();
            misspelt_flag(&args, &cmd)
        };
        assert_eq!(
            check(&["c", "-romm", "dev"]).as_deref(),
            Some("unknown flag -romm: did you mean -room?")
        );
        assert_eq!(
            check(&["c", "--clinet=Mina"]).as_deref(),
            Some("unknown flag --clinet: did you mean --client?")
        );
        assert_eq!(
            check(&["c", "-room", "dev", "-adress", "x"]).as_deref(),
            Some("unknown flag -adress: did you mean -address?")
        );
        assert_eq!(
            check(&["c", "-pasword-file", "f"]).as_deref(),
            Some("unknown flag -pasword-file: did you mean -password-file?")
        );
        // Known flags, values, and flags like no other are not its business.
        assert_eq!(check(&["c", "-room", "dev", "--history", "5"]), None);
        assert_eq!(check(&["c", "-zzzzzz"]), None);
        assert_eq!(check(&["c", "--", "-romm"]), None);
        assert_eq!(edit_distance("romm", "room"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn history_is_asked_only_when_wanted() {
        let args = ["c", "-client", "Mina", "-history", "10"];
        let c = ClientArgs::try_parse_from(go_style_args(
            args.iter().map(std::ffi::OsString::from),
            &ClientArgs::command(),
        ))
        .unwrap();
        assert_eq!(
            c.handshake("Mina"),
            br#"{"name":"Mina","room":"lounge","history":10}"#
        );
    }

    #[test]
    fn reconnect_for_takes_seconds() {
        assert_eq!(parse_secs("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err() && parse_secs("x").is_err());
        assert!(parse_secs("1e300").is_err() && parse_secs("NaN").is_err());
        let args = [
            "c",
            "-address",
            "a:1",
            "-address",
            "b:2",
            "-reconnect-for",
            "5",
        ];
        let c = ClientArgs::try_parse_from(go_style_args(
            args.iter().map(std::ffi::OsString::from),
            &ClientArgs::command(),
        ))
        .unwrap();
        assert_eq!(c.reconnect_for, Duration::from_secs(5));
    }
}
