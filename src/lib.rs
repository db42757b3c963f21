//! machat: a chat server that speaks MaChat's wire protocol byte for byte, and goes further.
//!
//! A message flows one way through these modules:
//! socket → [`codec`] (handshake, lines, limits) → `lifecycle` (password, claim, join) →
//! `session` (commands, rate limit) → `hub` (room registry) → `room` (one log per format, a
//! cursor per member) → `client` (the one poll loop: copies from the member's cursors into one
//! write) → the transport's `Wire` (`connection` for TCP and TLS, `web::ws`) → socket.
//! [`server`] accepts and shuts down, [`protocol`] holds the rules and renderings, [`settings`]
//! what a server follows. The binary reads its flags into [`settings::Settings`] and starts a
//! server from them; the terminal client is a crate of its own (`crates/client`).

pub use machat_proto::{act, codec, frame, protocol, refusal, request, sniff};

// Public only what another crate uses: the binaries (`auth` for `machat user`, `server`,
// `settings`; `backup`, `export` and `data_lock` for `machat backup|export|import`), the
// cluster's user commands, the store's benchmark and `proxy`'s networks for the flags.
pub mod auth;
pub mod backup;
mod bus;
mod client;
pub mod cluster;
mod connection;
mod context;
pub mod data_lock;
pub mod export;
mod grace;
mod hub;
mod lifecycle;
mod limits;
mod listen;
mod log_gate;
mod login_limit;
pub mod logins;
mod marks;
mod metrics;
mod moderation;
mod moderator;
mod names;
pub mod proxy;
mod reload;
mod replay;
mod room;
mod sequencer;
pub mod server;
mod session;
pub mod settings;
pub mod store;
mod tls;
mod transport;
mod web;

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
