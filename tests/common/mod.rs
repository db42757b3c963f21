//! Test harness: starts the real `machat` binary on an ephemeral loopback port and talks to it
//! over real sockets. Every wait is bounded.
#![allow(dead_code)]

pub mod app;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running server, in its own process ([`Server`]) or in the test's ([`app::App`]): where
/// to reach it, and the usual ways in.
pub trait Endpoint {
    /// The chat protocol's address.
    fn addr(&self) -> SocketAddr;
    /// The HTTP side's address, when it is on.
    fn http(&self) -> Option<SocketAddr>;

    /// Joins with a plain-text handshake and returns once the server says so.
    fn connect(&self, name: &str, room: &str) -> Client {
        let mut c = Client::raw(self.addr());
        c.send(&format!("{{\"name\":\"{name}\",\"room\":\"{room}\"}}"));
        c.expect(&format!("*** {name} joined"));
        c
    }

    /// Sends a handshake with `extra` JSON fields (`,"history":3`); expects nothing.
    fn connect_with(&self, name: &str, room: &str, extra: &str) -> Client {
        let mut c = Client::raw(self.addr());
        c.send(&format!(
            "{{\"name\":\"{name}\",\"room\":\"{room}\"{extra}}}"
        ));
        c
    }
}

impl Endpoint for Server {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn http(&self) -> Option<SocketAddr> {
        self.http
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP side's address, when the server was started with `--http`.
    pub http: Option<SocketAddr>,
    /// The chat-over-TLS address, when started with `--tls-addr`.
    pub tls: Option<SocketAddr>,
    /// The metrics listener's address, when started with `--metrics-addr`.
    pub metrics: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// A data directory made for this server alone, removed when it is dropped.
    own_dir: Option<PathBuf>,
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("machat-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_machat")), args)
    }

    /// Starts `cmd` (the server, possibly wrapped) with `-a 127.0.0.1:0` and `args`, and a
    /// data directory of its own unless `args` choose one or `cmd` names a settings file
    /// (`--config`: the file's data dir is the one under test).
    /// One data dir, one server: a test that restarts a server on a directory it chose drops
    /// the old one first (which kills it and waits for it to exit), or the new one refuses to
    /// start.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Server {
        let configured = cmd.get_args().any(|a| a == "--config");
        let own_dir = if configured || args.iter().any(|a| a.contains("data-dir")) {
            None
        } else {
            Some(temp_dir())
        };
        if let Some(dir) = &own_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        // The HTTP side is off unless a test asks for it (on an ephemeral port, `--http 127.0.0.1:0`).
        let http_arg = args.iter().position(|a| *a == "--http");
        if http_arg.is_none() {
            cmd.args(["--http", "off"]);
        }
        let wants_http = http_arg.is_some_and(|i| args.get(i + 1) != Some(&"off"));
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
        let (http_tx, http_rx) = std::sync::mpsc::channel();
        let (tls_tx, tls_rx) = std::sync::mpsc::channel();
        let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut http_tx = Some(http_tx);
            let mut tls_tx = Some(tls_tx);
            let mut metrics_tx = Some(metrics_tx);
            // The address is the first word after "listening on" (a note may follow).
            let addr_at = |line: &str, pos: usize| {
                line[pos..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("http listening on ") {
                    if let Some(tx) = http_tx.take() {
                        let _ = tx.send(addr_at(&line, pos + 18));
                    }
                } else if let Some(pos) = line.find("metrics listening on ") {
                    if let Some(tx) = metrics_tx.take() {
                        let _ = tx.send(addr_at(&line, pos + 21));
                    }
                } else if let Some(pos) = line.find("tls listening on ") {
                    if let Some(tx) = tls_tx.take() {
                        let _ = tx.send(addr_at(&line, pos + 17));
                    }
                } else if let Some(pos) = line.find("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line[pos + 13..].trim().to_string());
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        let http = wants_http.then(|| {
            let addr = http_rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("http did not start: {:?}", log.lock().unwrap()));
            addr.parse().expect("http addr")
        });
        let tls = args.contains(&"--tls-addr").then(|| {
            let addr = tls_rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("tls did not start: {:?}", log.lock().unwrap()));
            addr.parse().expect("tls addr")
        });
        let metrics = args.contains(&"--metrics-addr").then(|| {
            let addr = metrics_rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("metrics did not start: {:?}", log.lock().unwrap()));
            addr.parse().expect("metrics addr")
        });
        Server {
            child,
            addr: addr.parse().expect("addr"),
            http,
            tls,
            metrics,
            log,
            own_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status(self.pid(), "VmRSS:")
    }

    /// CPU seconds (user + system) the server used so far.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until the log has a line with `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.log_contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits up to `limit` for the server (or what wraps it) to exit on its own; its exit
    /// status, or None when it was still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

pub fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(PartialEq)]
enum Filled {
    Data,
    Nothing,
    Closed,
}

/// A blocking line client with bounded waits.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread part of `buf` (lines are not drained one by one: that is quadratic).
    start: usize,
}

impl Client {
    pub fn raw(addr: SocketAddr) -> Client {
        Client::on(TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect"))
    }

    /// A client on a connected stream: short reads (each wait bounds itself), Nagle off.
    fn on(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// A connection from another loopback address (`127.0.0.2`): what a ban by address must
    /// tell apart from the test's other clients.
    pub fn raw_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stream = runtime.block_on(async {
            let socket = match source {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            socket.connect(addr).await.expect("connect")
        });
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        Client::on(stream)
    }

    pub fn send(&mut self, s: &str) {
        self.send_bytes(s.as_bytes());
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("send");
    }

    /// The next line (without `\n`), or None on timeout or close.
    pub fn line_within(&mut self, limit: Duration) -> Option<String> {
        self.raw_line_within(limit)
            .map(|l| String::from_utf8_lossy(&l).into_owned())
    }

    pub fn raw_line_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pos) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = self.buf[self.start..self.start + pos].to_vec();
                self.start += pos + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Some(line);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if Instant::now() >= deadline || self.fill() == Filled::Closed {
                return None;
            }
        }
    }

    /// One read (of at most the 100 ms read timeout) into the buffer.
    fn fill(&mut self) -> Filled {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Filled::Closed,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Filled::Data
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Filled::Nothing
            }
            Err(_) => Filled::Closed,
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

    /// Reads lines until one starts with `want`; returns that line.
    pub fn until_prefix(&mut self, want: &str) -> String {
        let mut seen = Vec::new();
        loop {
            let l = self
                .line_within(TIMEOUT)
                .unwrap_or_else(|| panic!("no {want:?}...; saw {seen:?}"));
            if l.starts_with(want) {
                return l;
            }
            seen.push(l);
        }
    }

    /// True if the server closed the connection (after any lines), within the timeout.
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.fill() == Filled::Closed {
                return true;
            }
        }
        false
    }

    /// Nothing arrives for `d`.
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        self.line_within(d).is_none() && self.buf.len() == self.start
    }

    /// Reads everything until the server closes; returns it.
    pub fn rest(&mut self) -> Vec<u8> {
        assert!(self.closed(), "server did not close");
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }
}

/// `machat user ARGS` with `input` on stdin: exit status, stdout, stderr. (`ARGS` names the
/// place: `--data-dir DIR` or `--nats URL`.)
pub fn machat_user(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat"))
        .arg("user")
        .args(args)
        // The tests' passwords are short words; the length rule has tests of its own.
        .env("MACHAT_MIN_PASSWORD_LENGTH", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("machat user");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input");
    let out = child.wait_with_output().expect("machat user ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A text client on `client` that joins `room` as `name`, with `password` (a registered name)
/// or as a guest (`password` empty), and has read its join line.
pub fn log_in(mut client: Client, name: &str, password: &str, room: &str) -> Client {
    if password.is_empty() {
        client.send(&format!(r#"{{"name":"{name}","room":"{room}"}}"#));
    } else {
        client.send(&format!(
            r#"{{"name":"{name}","room":"{room}","password":"{password}"}}"#
        ));
    }
    client.expect(&format!("*** {name} joined"));
    client
}

/// Starts the server with `flag FILE` for each FILE that is missing or empty: each start must
/// fail, naming the flag and why.
pub fn token_files_are_checked(flag: &str, dir: &std::path::Path) {
    let empty = dir.join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    for (path, why) in [
        (dir.join("missing.token"), "missing.token"),
        (empty, "empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_machat"))
            .args([
                "-a",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--history",
                "off",
            ])
            .arg(flag)
            .arg(&path)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(why), "{err}");
    }
}

/// A data dir with `Mina` and `Ann` registered (passwords `minapw`, `annpw`) and `Root`, a
/// server admin (`rootpw`): the people of the moderation tests.
pub fn people() -> PathBuf {
    let dir = temp_dir();
    user_add(&dir, "Mina", "minapw");
    user_add(&dir, "Ann", "annpw");
    let d = dir.to_string_lossy();
    let (code, _, err) = machat_user(&["add", "Root", "--admin", "--data-dir", &d], "rootpw\n");
    assert_eq!(code, Some(0), "{err}");
    dir
}

/// Registers `name` with `password` in `dir` (`machat user add`, the password on stdin).
pub fn user_add(dir: &std::path::Path, name: &str, password: &str) {
    let dir = dir.to_string_lossy();
    let (status, _, err) =
        machat_user(&["add", name, "--data-dir", &dir], &format!("{password}\n"));
    assert_eq!(status, Some(0), "{err}");
}

/// Sends a handshake and expects an error line and a close.
pub fn expect_refused(server: &impl Endpoint, handshake: &[u8], reason_part: &str) {
    let mut c = Client::raw(server.addr());
    c.send_bytes(handshake);
    let line = c.line();
    assert!(
        line.starts_with("*** error: ") && line.contains(reason_part),
        "handshake {:?}: got {line:?}, wanted {reason_part:?}",
        String::from_utf8_lossy(handshake)
    );
    assert!(c.closed(), "not closed after {line:?}");
}

/// A `nats-server` with JetStream on an ephemeral loopback port, its store in a directory of
/// its own: what cluster-mode nodes share. Stopped (and its store removed) when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// More arguments for nats-server (`--user`, `--pass`).
    extra: Vec<String>,
}

impl Nats {
    pub fn start() -> Nats {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Nats {
        let dir = temp_dir();
        let mut nats = Nats {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
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
            .args(&self.extra)
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

    /// Stops the server (as an operator would, with SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same store.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        self.launch(&port);
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
