//! A `nats-server` with JetStream for the cluster test: what cluster-mode nodes share.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{temp_dir, TIMEOUT};

/// A `nats-server` with JetStream on an ephemeral loopback port, its store in a directory of
/// its own. Stopped (and its store removed) when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = temp_dir();
        let mut nats = Nats {
            child: None,
            port: 0,
            dir,
        };
        nats.launch("-1");
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server on `port` ("-1": any free one) and waits until it is ready.
    fn launch(&mut self, port: &str) {
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", port, "-m", "0", "-sd"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut port = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("Listening for client connections on ") {
                    port = line[pos + 36..]
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(TIMEOUT)
            .ok()
            .flatten()
            .expect("nats-server did not start");
        self.port = port;
        self.child = Some(child);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
