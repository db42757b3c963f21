//! The in-process harness: the server as a library (`machat::server::start`) in the test's own
//! process, on an ephemeral loopback port, with the addresses it bound handed back (no log to
//! read them from). For the rules of the chat (commands, claims, limits, rooms, persons); the
//! lifecycle, the wire bytes under faults, signals and memory stay with the real binary
//! ([`super::Server`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use machat::server::Running;
use machat::settings::Settings;

use super::{temp_dir, Endpoint};

pub struct App {
    pub addr: SocketAddr,
    /// The HTTP side's address, when the settings turn the web side on.
    pub http: Option<SocketAddr>,
    running: Option<Running>,
    own_dir: PathBuf,
}

impl App {
    /// Starts a server from the default settings, except: the chat port on `127.0.0.1:0`, the
    /// web side off, a data directory of its own, two threads and no leave grace.
    pub fn start() -> App {
        App::with(|_| {})
    }

    /// Starts a server like [`App::start`], with the settings as `change` leaves them.
    pub fn with(change: impl FnOnce(&mut Settings)) -> App {
        let mut settings = Settings::default();
        settings.net.addr = "127.0.0.1:0".into();
        settings.web.http = None;
        // Two threads, as on the machines the suite runs on: members on both runtimes.
        settings.net.threads = 2;
        let own_dir = temp_dir();
        settings.set_data_dir(&own_dir);
        // No leave grace unless a test sets one (as the binary's harness does).
        settings.limits.leave_grace = std::time::Duration::ZERO;
        change(&mut settings);
        let shown = format!("{settings:?}");
        let running = machat::server::start(settings)
            .unwrap_or_else(|e| panic!("the server starts from {shown}: {e}"));
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
        // Not there if `change` chose another directory.
        let _ = std::fs::remove_dir_all(&self.own_dir);
    }
}
