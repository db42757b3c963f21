//! Test harness: the real `machat` server on an ephemeral loopback port, raw line clients, and
//! the `machat-client` binary (`cli`). Every wait is bounded.
//!
//! Cargo defines `CARGO_BIN_EXE_machat` only for the server package's own tests, so the server
//! binary is found beside this test's build instead ([`machat_bin`]).
#![allow(dead_code)]

pub mod cli;
pub mod nats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a build of the server may take when the tests have to make it (a cold build on a
/// small machine takes minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The server binary, TARGET/PROFILE/machat beside this test's executable
/// (TARGET/PROFILE/deps/TEST-HASH), so it follows `CARGO_TARGET_DIR` and the profile.
/// `cargo test --workspace` has built it already; `cargo test -p machat-client` may not have,
/// and then it is built here, once per test process. (An existing binary is used as it is.)
pub fn machat_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_or_build_server) {
        Ok(bin) => bin.clone(),
        Err(why) => panic!("{why}"),
    }
}

fn find_or_build_server() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate this test's executable: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join(format!("machat{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        return Ok(bin);
    }
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("no target directory above {}", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("no profile in {}", profile_dir.display()))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .args(["build", "-p", "machat", "--bin", "machat", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let shown = format!("{cmd:?}");
    let fail = |why: String| {
        format!(
            "the machat server binary is missing at {} and could not be built ({shown}): {why}\n\
             build it with `cargo build -p machat --bin machat` (same profile and target dir), \
             or run `cargo test --workspace`",
            bin.display()
        )
    };
    eprintln!("{} is missing: building it ({shown})", bin.display());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", cargo.to_string_lossy())))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| fail("no stderr".into()))?;
    let output = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("not done within {BUILD_TIMEOUT:?}")));
            }
            Err(e) => return Err(fail(format!("cannot wait for cargo: {e}"))),
        }
    };
    let log = output.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(fail(format!("{status}:\n{}", tail.join("\n"))));
    }
    if !bin.is_file() {
        return Err(fail("cargo succeeded but the binary is not there".into()));
    }
    Ok(bin)
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("machat-client-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running `machat`, its log collected as it comes.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The chat-over-TLS address, when started with `--tls-addr`.
    pub tls: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// A data directory made for this server alone, removed when it is dropped.
    own_dir: Option<PathBuf>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(Command::new(machat_bin()), args)
    }

    /// Starts `cmd` (the server, possibly wrapped) with `-a 127.0.0.1:0` and `args`, the web
    /// side off unless asked for, and a data directory of its own unless `args` choose one.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Server {
        let own_dir = if args.iter().any(|a| a.contains("data-dir")) {
            None
        } else {
            Some(temp_dir())
        };
        if let Some(dir) = &own_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if !args.contains(&"--http") {
            cmd.args(["--http", "off"]);
        }
        // No leave grace unless a test asks for one: a client that closes is gone at once, as
        // the tests of leaving expect (the grace has tests of its own).
        if !args.iter().any(|a| a.contains("leave-grace")) {
            cmd.args(["--leave-grace", "0"]);
        }
        cmd.args(["-a", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start machat");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (tls_tx, tls_rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut tls_tx = Some(tls_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("tls listening on ") {
                    // The address is the first word after "listening on" (a note may follow).
                    let addr = line[pos + 17..].split_whitespace().next().unwrap_or("");
                    if let Some(tx) = tls_tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                } else if let Some(pos) = line.find("listening on ") {
                    if !line.contains("http listening on ") && !line.contains("metrics listening") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(line[pos + 13..].trim().to_string());
                        }
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        let tls = args.contains(&"--tls-addr").then(|| {
            let addr = tls_rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("tls did not start: {:?}", log.lock().unwrap()));
            addr.parse().expect("tls addr")
        });
        Server {
            child,
            addr: addr.parse().expect("addr"),
            tls,
            log,
            own_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self, name: &str, room: &str) -> Client {
        let mut c = Client::raw(self.addr);
        c.send(&format!("{{\"name\":\"{name}\",\"room\":\"{room}\"}}"));
        c.expect(&format!("*** {name} joined"));
        c
    }

    /// Sends a handshake with `extra` JSON fields (`,"history":3`); expects nothing.
    pub fn connect_with(&self, name: &str, room: &str, extra: &str) -> Client {
        let mut c = Client::raw(self.addr);
        c.send(&format!(
            "{{\"name\":\"{name}\",\"room\":\"{room}\"{extra}}}"
        ));
        c
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A blocking line client with bounded waits.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, s: &str) {
        self.stream.write_all(s.as_bytes()).expect("send");
    }

    /// The next line (without `\n`), or None on timeout or close.
    pub fn line_within(&mut self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).take(pos).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn line(&mut self) -> String {
        self.line_within(TIMEOUT)
            .expect("a line before the timeout")
    }

    pub fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want);
    }

    /// Reads lines until one equals `want`; returns the lines before it.
    pub fn until(&mut self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let l = self
                .line_within(TIMEOUT)
                .unwrap_or_else(|| panic!("no {want:?}; saw {seen:?}"));
            if l == want {
                return seen;
            }
            seen.push(l);
        }
    }
}
