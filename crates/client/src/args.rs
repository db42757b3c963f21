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

    /// With more than one --address: how long to keep trying to reconnect, in seconds, when
    /// the connection is lost (0 = never; then the client ends as with one address).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub reconnect_for: Duration,

    /// Set from --password-file or MACHAT_PASSWORD, not a flag.
    #[arg(skip)]
    pub password: Option<String>,
}

impl ClientArgs {
    pub fn from_args() -> Self {
        ClientArgs::parse_from(go_style_args(std::env::args_os(), &ClientArgs::command()))
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

/// Rewrites `-name` and `-name=value` to `--name...` when `name` is a long flag of `cmd`, the
/// way Go's `flag` package reads them. Short flags (`-a`) and values are left alone.
pub fn go_style_args(
    args: impl IntoIterator<Item = OsString>,
    cmd: &clap::Command,
) -> Vec<OsString> {
    let longs: Vec<String> = cmd
        .get_arguments()
        .flat_map(|a| {
            a.get_long().into_iter().map(str::to_owned).chain(
                a.get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned),
            )
        })
        .chain(["help".to_owned(), "version".to_owned()])
        .collect();
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
