//! What the user types: stdin read on a task of its own, and the one command the client itself
//! must recognise, `/quit` (after it, the server closing is the expected end).

use std::io;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// True for a line the server reads as `/quit` (the command word, any case, any arguments).
pub fn is_quit(line: &str) -> bool {
    line.strip_prefix('/')
        .and_then(|cmd| cmd.split([' ', '\t']).next())
        .is_some_and(|verb| verb.eq_ignore_ascii_case("quit"))
}

pub fn is_quit_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    std::str::from_utf8(line).is_ok_and(is_quit)
}

/// Reads stdin on its own task, so that typing goes on while the client reconnects. Lines keep
/// their bytes (the server cleans them) and end with `\n`.
pub fn read_stdin() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    line.push(b'\n');
                    if tx.send(Ok(line)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    rx
}
