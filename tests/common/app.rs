//! The in-process harness: the server as a library (`machat::server::start`) in the test's own
//! process, on an ephemeral loopback port, with the addresses it bound handed back (no log to
//! read them from). For the rules of the chat (commands, claims, limits, rooms, persons); the
//! lifecycle, the wire bytes under faults, signals and memory stay with the real binary
//! ([`super::Server`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use machat::config::Config;
use machat::server::Running;

use super::{temp_dir, Endpoint};

pub struct App {
    pub addr: SocketAddr,
    /// The HTTP side's address, when started with `--http`.
    pub http: Option<SocketAddr>,
    running: Option<Running>,
    own_dir: Option<PathBuf>,
}

impl App {
    /// Starts a server with `-a 127.0.0.1:0`, `--http off` and a data directory of its own,
    /// unless `args` choose otherwise, and `args`.
    pub fn start(args: &[&str]) -> App {
        let mut argv: Vec<String> = vec!["machat".into(), "-a".into(), "127.0.0.1:0".into()];
        let own_dir = (!args.iter().any(|a| a.contains("data-dir"))).then(temp_dir);
        if let Some(dir) = &own_dir {
            argv.push("--data-dir".into());
            argv.push(dir.display().to_string());
        }
        if !args.contains(&"--http") {
            argv.extend(["--http".into(), "off".into()]);
        }
        // Two threads, as on the machines the suite runs on: members on both runtimes.
        if !args.contains(&"--threads") {
            argv.extend(["--threads".into(), "2".into()]);
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let config = Config::from_list(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let running = machat::server::start(config).expect("the server starts");
        App {
            addr: running.addrs[0],
            http: running.http_addrs.first().copied(),
            running: Some(running),
            own_dir,
        }
    }
}

impl Endpoint for App {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn http(&self) -> Option<SocketAddr> {
        self.http
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
