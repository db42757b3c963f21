//! The machat-client binary as a real process: typed input, collected output, bounded waits.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TIMEOUT;

/// A running machat-client, its output collected as it comes.
pub struct Cli {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub out: Arc<Mutex<Vec<u8>>>,
    pub err: Arc<Mutex<Vec<u8>>>,
    /// Lines of stdout already matched by `wait_out`.
    matched: usize,
}

pub fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let to = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            to.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Cli {
    pub fn spawn(args: &[&str]) -> Cli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_machat-client"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start machat-client");
        let out = collect(child.stdout.take().expect("stdout"));
        let err = collect(child.stderr.take().expect("stderr"));
        Cli {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            matched: 0,
        }
    }

    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Types `text` (lines with their `\n`).
    pub fn type_in(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(text.as_bytes())
            .expect("write to the client");
        stdin.flush().expect("flush");
    }

    /// Waits for a stdout line equal to `line`, after the last one matched.
    pub fn wait_out(&mut self, line: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.out();
            let lines: Vec<&str> = out.lines().collect();
            if let Some(i) = lines.iter().skip(self.matched).position(|l| *l == line) {
                self.matched += i + 1;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no line {line:?} on stdout:\n{out}\nstderr:\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for stderr to contain `needle`.
    pub fn wait_err(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.err().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr:\n{}\nstdout:\n{}",
                self.err(),
                self.out()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the client to exit by itself; returns its status.
    pub fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the readers take the last bytes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the client did not exit; stdout:\n{}\nstderr:\n{}",
                self.out(),
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends its input (Ctrl-D) and waits for it to exit.
    pub fn finish(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.exit()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
