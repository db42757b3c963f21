//! The terminal client: sends the handshake and each line typed on stdin, prints each line the
//! server sends. Like MaChat's example client it sends nothing else unless asked to, so it works
//! against the original Go server too.

use std::hash::{BuildHasher, Hasher};
use std::io;

use clap::{CommandFactory, Parser};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::go_style_args;

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

    /// Server address; give it more than once to try the next when one cannot be reached.
    #[arg(long, default_value = "localhost:8989")]
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

/// True for a line the server reads as `/quit` (the command word, any case, any arguments).
fn is_quit(line: &str) -> bool {
    line.strip_prefix('/')
        .and_then(|cmd| cmd.split([' ', '\t']).next())
        .is_some_and(|verb| verb.eq_ignore_ascii_case("quit"))
}

/// How the client ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Stdin ended and the server then closed: a normal end.
    Done,
    /// The server closed while the user was still typing.
    ServerClosed,
}

/// A connection to the server, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(args: &ClientArgs) -> io::Result<Box<dyn Stream>> {
    let tls = match args.tls {
        true => Some(crate::tls::connector(args.ca.as_deref()).map_err(io::Error::other)?),
        false => None,
    };
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address given");
    for addr in &args.address {
        let attempt = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            match &tls {
                None => Ok(Box::new(stream) as Box<dyn Stream>),
                Some(tls) => {
                    let name = crate::tls::server_name(addr).map_err(io::Error::other)?;
                    Ok(Box::new(tls.connect(name, stream).await?) as Box<dyn Stream>)
                }
            }
        };
        match attempt.await {
            Ok(s) => return Ok(s),
            Err(e) => {
                eprintln!("machat-client: cannot connect to {addr}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// Runs the client on stdin and stdout.
pub async fn run(mut args: ClientArgs) -> io::Result<Ending> {
    args.load_password()?;
    let name = args.client.clone().unwrap_or_else(random_name);
    let stream = connect(&args).await?;
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(&args.handshake(&name)).await?;
    write.flush().await?;
    eprintln!(
        "machat-client: connected as {name} in {}; type a line and press Enter",
        args.room
    );

    let printer = tokio::spawn(async move {
        let mut lines = BufReader::new(read);
        let mut stdout = tokio::io::stdout();
        let mut line = Vec::new();
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    if stdout.write_all(&line).await.is_err() {
                        break;
                    }
                    let _ = stdout.flush().await;
                }
            }
        }
    });

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut printer = printer;
    // After our own /quit the server closing is the expected end, not a failure.
    let mut quit = false;
    loop {
        tokio::select! {
            _ = &mut printer => {
                if quit {
                    return Ok(Ending::Done);
                }
                eprintln!("machat-client: the server closed the connection");
                return Ok(Ending::ServerClosed);
            }
            line = stdin.next_line() => match line? {
                Some(line) => {
                    quit |= is_quit(&line);
                    let mut bytes = line.into_bytes();
                    bytes.push(b'\n');
                    let sent = async {
                        write.write_all(&bytes).await?;
                        write.flush().await
                    };
                    if sent.await.is_err() {
                        let _ = (&mut printer).await;
                        eprintln!("machat-client: the server closed the connection");
                        return Ok(Ending::ServerClosed);
                    }
                }
                None => break,
            }
        }
    }
    // Stdin is done: say so to the server and print what it still sends until it closes.
    let _ = write.shutdown().await;
    let _ = printer.await;
    Ok(Ending::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
