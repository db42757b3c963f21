//! One address, no failover: the handshake MaChat's own client sends, then typed lines out and
//! the server's lines printed as they come. It sends nothing else, so it works against the
//! original Go server too.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;

use crate::args::ClientArgs;
use crate::input::is_quit;
use crate::net::connect;
use crate::Ending;

/// MaChat's Go server says nothing on a join: this long without an answer, with the
/// connection still open, counts as being in.
const QUIET_JOIN: Duration = Duration::from_secs(2);

/// Runs the client on stdin and stdout, connected to the first address that answers.
pub async fn run(args: ClientArgs, name: String, tls: Option<TlsConnector>) -> io::Result<Ending> {
    let (_, stream) = connect(&args, tls.as_ref()).await?;
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(&args.handshake(&name)).await?;
    write.flush().await?;
    // The server's first answer says whether we are in: a refusal is said once, with what to
    // do, and is the end.
    let mut lines = BufReader::new(read);
    let mut first = Vec::new();
    match tokio::time::timeout(QUIET_JOIN, lines.read_until(b'\n', &mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {
            eprintln!("machat-client: the server closed the connection");
            return Ok(Ending::ServerClosed);
        }
        Ok(Ok(_)) => {
            if let Some(reason) = refusal(&first) {
                // Shown as the server sent it, once; then what to do about it.
                let mut stdout = tokio::io::stdout();
                stdout.write_all(&first).await?;
                stdout.flush().await?;
                eprintln!("machat-client: the server closed the connection");
                crate::refused::advise(&reason, &name, args.password.is_some());
                return Ok(Ending::ServerClosed);
            }
        }
        Err(_) => {} // a quiet server: in
    }
    eprintln!(
        "machat-client: connected as {name} in {}; type a line and press Enter",
        args.room
    );

    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        if !first.is_empty() {
            if !first.ends_with(b"\n") {
                first.push(b'\n');
            }
            let _ = stdout.write_all(&first).await;
            let _ = stdout.flush().await;
        }
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

/// The reason of a refusal line (`*** error: REASON`, or its JSON form), if `line` is one.
/// The history errors are not: they come instead of a replay, and the join goes on.
fn refusal(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let reason = match line.strip_prefix("*** error: ") {
        Some(reason) => reason.to_owned(),
        None => {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if value.get("type")?.as_str()? != "error" {
                return None;
            }
            value.get("reason")?.as_str()?.to_owned()
        }
    };
    let history = reason == "history is off on this server" || reason == "history unavailable";
    (!history).then_some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_from_the_lines_of_a_join() {
        assert_eq!(
            refusal(b"*** error: authentication failed\n").as_deref(),
            Some("authentication failed")
        );
        assert_eq!(
            refusal(br#"{"type":"error","reason":"name a is already taken in room r"}"#).as_deref(),
            Some("name a is already taken in room r")
        );
        for not in [
            &b"*** Mina joined\n"[..],
            b"*** error: history is off on this server\n",
            br#"{"type":"error","reason":"history unavailable"}"#,
            br#"{"type":"join","room":"r","name":"Mina"}"#,
            b"Mina:*** error: fake\n",
        ] {
            assert_eq!(refusal(not), None, "{:?}", String::from_utf8_lossy(not));
        }
    }
}
