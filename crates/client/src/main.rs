//! machat-client, the terminal client: sends the handshake and each line typed on stdin, prints
//! each line the server sends. Like MaChat's example client it sends nothing else unless asked
//! to, so it works against the original Go server too.
//!
//! Unless `-reconnect-for 0` it also fails over: when the connection is lost it reconnects
//! to the next address (or the same one, if there is one) and resumes by message id, so that a node of a cluster can die without
//! the user missing or seeing twice any message. To know the ids it asks the server for JSON and
//! renders each event itself to the very bytes the server sends a plain-text client.
//!
//! A crate of its own so that it builds with only what a client needs: the wire protocol's
//! renderers (`machat-proto`), tokio and rustls, not the server.

mod args;
mod direct;
mod failover;
mod input;
mod net;
mod refused;
mod render;
mod tls;
mod tracker;

use std::io;
use std::process::ExitCode;

use args::{random_name, ClientArgs};
use failover::Failover;

/// How the client ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Stdin ended and the server then closed: a normal end.
    Done,
    /// The server closed while the user was still typing.
    ServerClosed,
}

fn main() -> ExitCode {
    let args = ClientArgs::from_args();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("machat-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ending = rt.block_on(run(args));
    // Stdin may still be blocked in a read on a helper thread: don't wait for it.
    rt.shutdown_background();
    match ending {
        Ok(Ending::Done) => ExitCode::SUCCESS,
        Ok(Ending::ServerClosed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("machat-client: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the client on stdin and stdout: with a reconnect time (the default) the failover
/// client, with one address as with several; with `-reconnect-for 0` the plain one.
async fn run(mut args: ClientArgs) -> io::Result<Ending> {
    args.load_password()?;
    let name = args.client.clone().unwrap_or_else(random_name);
    let tls = net::tls_connector(&args)?;
    if !args.reconnect_for.is_zero() {
        return Failover::start(args, name, tls).await;
    }
    direct::run(args, name, tls).await
}
