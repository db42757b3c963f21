//! machat: a chat server that speaks MaChat's wire protocol byte for byte, and goes further.
//!
//! A message flows one way through these modules:
//! socket → [`codec`] (handshake, lines, limits) → [`session`] (commands, rate limit) →
//! [`hub`] (room registry) → [`room`] (one log per format, a cursor per member) →
//! [`connection`] (copies from the member's cursor into one write) → socket.
//! [`server`] accepts and shuts down, [`protocol`] holds the rules and renderings, [`config`]
//! the flags, and [`client`] the terminal client. The binaries only wire these together.

pub use machat_proto::{codec, protocol};

pub mod auth;
pub mod bus;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod login_limit;
pub mod metrics;
pub mod replay;
pub mod room;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod transport;
pub mod web;

/// Sets up `tracing` logs on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
