//! The web page (src/web/page/) in a real browser: headless Chromium, driven through
//! chromedriver over the W3C WebDriver protocol, chats with TCP clients through the real server.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`);
//! `scripts/test.sh` installs them. Without them these tests fail, they never skip.
//!
//! The WebDriver client is a few lines of blocking HTTP/1.1 over loopback (`webdriver` below).
//! fantoccini is not used: without its TLS features, `ClientBuilder::new` needs a connector that
//! implements hyper-util's `Connect`, and this package does not depend on hyper-util directly.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{temp_dir, Client, Server};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for anything the page should do.
const WAIT: Duration = Duration::from_secs(10);
/// Longest a single WebDriver command may take (a new session starts a browser).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The WebDriver key codes used here.
const ENTER: &str = "\u{E007}";
const SHIFT: &str = "\u{E008}";
/// Releases the modifier keys pressed so far in one "send keys".
const RELEASE: &str = "\u{E000}";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Browsers are heavy for a 2-core machine: the tests in this file run one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chromedriver process on a free loopback port; killed (with its browsers) when dropped.
struct Driver {
    child: Child,
    port: u16,
    sessions: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Driver {
    fn start() -> Driver {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
                 packages (scripts/test.sh installs them: apt-get install -y chromium chromium-driver)"
            );
        }
        let mut last_error = String::new();
        for _ in 0..3 {
            // A free port: bind an ephemeral one, then release it for chromedriver.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let mut driver = Driver {
                child,
                port,
                sessions: Vec::new(),
                dirs: Vec::new(),
            };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                match driver.call("GET", "/status", None) {
                    Ok(v) if v["ready"] == true => return driver,
                    Ok(v) => last_error = v.to_string(),
                    Err(e) => last_error = e,
                }
                if let Ok(Some(status)) = driver.child.try_wait() {
                    last_error = format!("chromedriver exited: {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("chromedriver did not start: {last_error}");
    }

    /// A new browser (a WebDriver session with a fresh profile).
    fn browser(&mut self) -> Browser {
        let dir = temp_dir();
        self.dirs.push(dir.clone());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", dir.display()), "--window-size=1100,700",
                ],
            },
        }}});
        let v = self
            .call("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("chromium did not start: {e}"));
        let session = v["sessionId"].as_str().expect("a session id").to_string();
        self.sessions.push(session.clone());
        Browser {
            port: self.port,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        webdriver(self.port, method, path, body)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for s in &self.sessions {
            let _ = self.call("DELETE", &format!("/session/{s}"), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One WebDriver command: blocking HTTP/1.1 to chromedriver on loopback. Returns the reply's
/// `value`, or the WebDriver error as text.
fn webdriver(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    let body = match (method, body) {
        (_, Some(b)) => b.to_string(),
        ("POST", None) => "{}".to_string(),
        _ => String::new(),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        if key == "content-length" {
            length = value.parse::<usize>().ok();
        } else if key == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let mut raw = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| format!("bad chunk size: {e}"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        raw.resize(n, 0);
        reader.read_exact(&mut raw).map_err(|e| e.to_string())?;
    } else {
        reader.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    }
    let reply: Value = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).map_err(|e| format!("{method} {path}: {e}"))?
    };
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if status == 200 {
        Ok(value)
    } else {
        Err(format!(
            "{method} {path}: HTTP {status}: {} {}",
            value["error"].as_str().unwrap_or(""),
            value["message"].as_str().unwrap_or("")
        ))
    }
}

/// One browser window (a WebDriver session).
struct Browser {
    port: u16,
    session: String,
}

impl Browser {
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        webdriver(self.port, method, &path, body.as_ref())
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; returns its result.
    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), None);
    }

    /// Types `keys` into the element as a user would (WebDriver "send keys").
    fn type_into(&self, css: &str, keys: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": keys })),
        );
    }

    fn clear(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/clear"), None);
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("base64 PNG"))
    }

    /// Polls `script` until it returns something other than null/false/undefined, for at most
    /// `WAIT`; returns that value.
    fn wait_js(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, args.clone());
            if !v.is_null() && v != false {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {WAIT:?} for {what}; the page shows:\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's status, members and log, for failure messages.
    fn dump(&self) -> String {
        let v = self.try_cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return 'status: ' + document.getElementById('status').textContent \
                + '\\nmembers: ' + Array.from(document.querySelectorAll('#members li'), li => li.textContent).join(' ') \
                + '\\nlog:\\n' + Array.from(document.querySelectorAll('#log .entry'), e => \
                  e.className + (e.dataset.id ? ' #' + e.dataset.id : '') + ': ' + e.textContent).join('\\n')",
                "args": []})),
        );
        match v {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => e,
        }
    }

    /// Opens the page with `?name=&room=` (the form is filled from the URL) and joins.
    fn join(&self, http: SocketAddr, name: &str, room: &str) {
        self.goto(&format!("http://{http}/?name={name}&room={room}"));
        self.wait_js(
            "the form filled from the URL",
            "return document.getElementById('name').value === arguments[0] \
             && document.getElementById('room').value === arguments[1]",
            json!([name, room]),
        );
        self.click("#join");
        self.wait_connected(name);
    }

    /// Waits until the page is connected and its member list (from /who) holds `name`.
    fn wait_connected(&self, name: &str) {
        self.wait_js(
            &format!("{name} connected and in the member list"),
            "return document.getElementById('status').dataset.state === 'connected' \
             && Array.from(document.querySelectorAll('#members li'), li => li.textContent) \
                .includes(arguments[0])",
            json!([name]),
        );
    }

    /// Types a message and Enter into the message box.
    fn say(&self, text: &str) {
        self.type_into("#input", &format!("{text}{ENTER}"));
        self.wait_js(
            "the message box to empty after Enter",
            "return document.getElementById('input').value === ''",
            json!([]),
        );
    }

    /// The `.entry.message` elements of the log: (data-id, name, text).
    fn messages(&self) -> Vec<(u64, String, String)> {
        let v = self.js(
            "return Array.from(document.querySelectorAll('#log .entry.message'), e => \
             [e.dataset.id, e.querySelector('.name').textContent, e.querySelector('.text').textContent])",
            json!([]),
        );
        v.as_array()
            .expect("an array")
            .iter()
            .map(|m| {
                let id = m[0].as_str().and_then(|s| s.parse().ok());
                let id = id.unwrap_or_else(|| panic!("a message entry without a data-id: {m}"));
                (
                    id,
                    m[1].as_str().unwrap().into(),
                    m[2].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Waits until an entry of `class` (e.g. `message`) by `name` with exactly `text` is shown.
    fn wait_entry(&self, class: &str, name: &str, text: &str) {
        self.wait_js(
            &format!("a {class} entry {name}: {text:?}"),
            "return Array.from(document.querySelectorAll('#log .entry.' + arguments[0])).some(e => \
             e.querySelector('.name').textContent === arguments[1] \
             && e.querySelector('.text').textContent === arguments[2])",
            json!([class, name, text]),
        );
    }

    fn wait_members(&self, want: &[&str]) {
        self.wait_js(
            &format!("the member list {want:?}"),
            "return JSON.stringify(Array.from(document.querySelectorAll('#members li'), \
             li => li.textContent)) === JSON.stringify(arguments[0])",
            json!([want]),
        );
    }
}

impl Drop for Browser {
    /// Closes the browser (its page leaves the room).
    fn drop(&mut self) {
        let _ = webdriver(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for quad in clean.chunks(4) {
        let data: Vec<u8> = quad.iter().copied().filter(|&c| c != b'=').collect();
        let n = data.iter().fold(0u32, |acc, &c| (acc << 6) | value(c)) << (6 * (4 - data.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..data.len()]);
    }
    out
}

/// Reads TCP lines until every one of `want` has arrived (in any order); no other line may come.
fn expect_lines(c: &mut Client, want: &[&str]) {
    let mut missing: Vec<&str> = want.to_vec();
    while !missing.is_empty() {
        let line = c
            .line_within(WAIT)
            .unwrap_or_else(|| panic!("still waiting for {missing:?}"));
        let pos = missing.iter().position(|w| *w == line);
        let pos =
            pos.unwrap_or_else(|| panic!("unexpected {line:?} while waiting for {missing:?}"));
        missing.remove(pos);
    }
}

/// Asserts that the page shows the messages with ids 1..=texts.len(), once each, in order.
fn assert_exactly(page: &Browser, texts: &[&str]) {
    let want: Vec<(u64, String)> = (1..).zip(texts.iter().map(|t| t.to_string())).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Vec<(u64, String)> = page
            .messages()
            .into_iter()
            .map(|(id, _, text)| (id, text))
            .collect();
        let mut ids: Vec<u64> = got.iter().map(|m| m.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), got.len(), "a message shown twice: {got:?}");
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page shows {got:?}, wanted {want:?}\n{}",
            page.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory removed when dropped (after the server that used it, if declared before it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn target_dir() -> PathBuf {
    // CARGO_BIN_EXE_machat is TARGET/PROFILE/machat.
    let exe = Path::new(env!("CARGO_BIN_EXE_machat"));
    exe.parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .to_path_buf()
}

#[test]
fn two_pages_and_a_tcp_client_chat() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server.http.expect("the HTTP address");
    let mut cy = server.connect("Cy", "devroom");
    let mut driver = Driver::start();
    let ann = driver.browser();
    let bob = driver.browser();

    // Ann comes from a link with ?name=&room=; Bob fills in the form and presses Enter.
    ann.join(http, "Ann", "devroom");
    cy.expect("*** Ann joined");
    bob.goto(&format!("http://{http}/"));
    bob.clear("#name");
    bob.type_into("#name", "Bob");
    bob.clear("#room");
    bob.type_into("#room", &format!("devroom{ENTER}"));
    bob.wait_connected("Bob");
    cy.expect("*** Bob joined");
    ann.wait_members(&["Ann", "Bob", "Cy"]);
    bob.wait_members(&["Ann", "Bob", "Cy"]);

    ann.say("hello from browser");
    cy.expect("Ann:hello from browser");
    bob.wait_entry("message", "Ann", "hello from browser");
    ann.wait_entry("message", "Ann", "hello from browser");

    cy.send("hello from tcp\n");
    cy.expect("Cy:hello from tcp");
    ann.wait_entry("message", "Cy", "hello from tcp");
    bob.wait_entry("message", "Cy", "hello from tcp");

    bob.say("hi Ann! Cy, you are on nc?");
    cy.expect("Bob:hi Ann! Cy, you are on nc?");
    ann.wait_entry("message", "Bob", "hi Ann! Cy, you are on nc?");

    cy.send("yes, plain TCP. Same room, same ids\n");
    cy.expect("Cy:yes, plain TCP. Same room, same ids");
    ann.say("/me waves");
    cy.expect("* Ann waves");
    bob.wait_entry("action", "Ann", "waves");

    // Member lists follow renames, and private messages reach only their two ends.
    cy.send("/nick Cyrus\n");
    cy.expect("*** Cy is now Cyrus");
    ann.wait_members(&["Ann", "Bob", "Cyrus"]);
    bob.wait_members(&["Ann", "Bob", "Cyrus"]);
    bob.say("/msg Ann lunch at noon?");
    ann.wait_js(
        "the private message",
        "return Array.from(document.querySelectorAll('#log .entry.private'))\
         .some(e => e.textContent.includes('lunch at noon?'))",
        json!([]),
    );
    ann.say("multi-line works too:\u{E008}\u{E007}\u{E000}  - Shift+Enter for a new line");
    expect_lines(
        &mut cy,
        &[
            "Ann:multi-line works too:",
            "Ann:  - Shift+Enter for a new line",
        ],
    );
    bob.wait_entry(
        "message",
        "Ann",
        "multi-line works too:\n  - Shift+Enter for a new line",
    );

    // Both pages hold the same messages with the same ids, each once.
    let texts = [
        "hello from browser",
        "hello from tcp",
        "hi Ann! Cy, you are on nc?",
        "yes, plain TCP. Same room, same ids",
    ];
    let ann_msgs: Vec<String> = ann.messages().into_iter().map(|m| m.2).collect();
    assert_eq!(&ann_msgs[..4], &texts);
    assert_eq!(
        ann.messages().iter().map(|m| m.0).collect::<Vec<_>>(),
        bob.messages().iter().map(|m| m.0).collect::<Vec<_>>()
    );

    let png = ann.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let dir = target_dir().join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chat.png"), &png).unwrap();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png");
    std::fs::write(&docs, &png).unwrap();

    // Closing a page is leaving.
    drop(bob);
    cy.expect("*** Bob left");
    ann.wait_members(&["Ann", "Cyrus"]);

    // /join moves the page to another room, which shows what was said there lately; a reload
    // then resumes in the new room.
    let mut dee = server.connect("Dee", "side");
    dee.send("anyone in side?\n");
    dee.expect("Dee:anyone in side?");
    ann.say("/join side");
    cy.expect("*** Ann left");
    dee.expect("*** Ann joined");
    ann.wait_members(&["Ann", "Dee"]);
    ann.wait_entry("message", "Dee", "anyone in side?");
    ann.cmd("POST", "/refresh", None);
    expect_lines(&mut dee, &["*** Ann left", "*** Ann joined"]);
    ann.wait_connected("Ann");
    ann.wait_members(&["Ann", "Dee"]);
    dee.send("welcome\n");
    dee.expect("Dee:welcome");
    ann.wait_entry("message", "Dee", "welcome");
    let side: Vec<(u64, String)> = ann
        .messages()
        .into_iter()
        .filter(|m| m.1 == "Dee")
        .map(|m| (m.0, m.2))
        .collect();
    assert_eq!(
        side,
        [
            (1, "anyone in side?".to_string()),
            (2, "welcome".to_string())
        ]
    );
    eprintln!("two pages and a TCP client: {:?}", started.elapsed());
}

#[test]
fn a_reload_resumes_without_duplicates_or_gaps() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server.http.expect("the HTTP address");
    let mut cy = server.connect("Cy", "lobby");
    cy.send("one\n");
    cy.expect("Cy:one");
    let mut driver = Driver::start();
    let ann = driver.browser();
    // The page shows the room's recent history on entering.
    ann.join(http, "Ann", "lobby");
    cy.expect("*** Ann joined");
    assert_exactly(&ann, &["one"]);
    cy.send("two\n");
    cy.expect("Cy:two");
    ann.say("three");
    cy.expect("Ann:three");
    assert_exactly(&ann, &["one", "two", "three"]);

    // A reload, with a message sent the moment the old page has left.
    ann.js(
        "setTimeout(() => location.reload(), 0); return null",
        json!([]),
    );
    cy.expect("*** Ann left");
    cy.send("four\n");
    expect_lines(&mut cy, &["Cy:four", "*** Ann joined"]);
    ann.wait_connected("Ann");
    assert_exactly(&ann, &["one", "two", "three", "four"]);
    cy.send("five\n");
    cy.expect("Cy:five");
    assert_exactly(&ann, &["one", "two", "three", "four", "five"]);

    // Away on another page while two messages go by, then back: the tab resumes where it was.
    ann.goto("about:blank");
    cy.expect("*** Ann left");
    cy.send("six\nseven\n");
    cy.expect("Cy:six");
    cy.expect("Cy:seven");
    ann.goto(&format!("http://{http}/?name=Ann&room=lobby"));
    cy.expect("*** Ann joined");
    ann.wait_connected("Ann");
    let all = ["one", "two", "three", "four", "five", "six", "seven"];
    assert_exactly(&ann, &all);

    // Away again, and back with the Back button (the page may come from the back/forward cache).
    ann.goto("about:blank");
    cy.expect("*** Ann left");
    cy.send("eight\n");
    cy.expect("Cy:eight");
    ann.cmd("POST", "/back", None);
    cy.expect("*** Ann joined");
    ann.wait_connected("Ann");
    let all = [
        "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    assert_exactly(&ann, &all);

    // And a plain reload once more through WebDriver (waits for the new page to load).
    ann.cmd("POST", "/refresh", None);
    expect_lines(&mut cy, &["*** Ann left", "*** Ann joined"]);
    ann.wait_connected("Ann");
    assert_exactly(&ann, &all);
    ann.say("nine");
    cy.expect("Ann:nine");
    let all = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    assert_exactly(&ann, &all);
    eprintln!("reloads: {:?}", started.elapsed());
}

#[test]
fn the_page_reconnects_after_the_server_restarts() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let data = TempDir(temp_dir());
    let data_arg = data.0.to_str().unwrap().to_string();
    let mut server = Server::start(&["--http", "127.0.0.1:0", "--data-dir", &data_arg]);
    let http = server.http.expect("the HTTP address");
    let http_arg = http.to_string();
    let mut cy = server.connect("Cy", "lobby");
    let mut driver = Driver::start();
    let ann = driver.browser();
    ann.join(http, "Ann", "lobby");
    cy.expect("*** Ann joined");
    cy.send("before the restart\n");
    cy.expect("Cy:before the restart");
    assert_exactly(&ann, &["before the restart"]);

    // A clean stop (a killed server would skip ids on its next start); the page notices and
    // retries with backoff.
    server.signal("-TERM");
    cy.expect("*** server shutting down");
    drop(cy);
    let deadline = Instant::now() + WAIT;
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    ann.wait_js(
        "the page to notice and retry",
        "return document.getElementById('status').dataset.state !== 'connected'",
        json!([]),
    );

    // The same HTTP address and history; a message is sent as soon as the server is back.
    let server = Server::start(&["--http", &http_arg, "--data-dir", &data_arg]);
    let mut cy = server.connect("Cy", "lobby");
    cy.send("after the restart\n");
    let lines = cy.until("Cy:after the restart");
    assert!(lines.is_empty() || lines == ["*** Ann joined"], "{lines:?}");
    ann.wait_connected("Ann");
    assert_exactly(&ann, &["before the restart", "after the restart"]);
    eprintln!("server restart: {:?}", started.elapsed());
}

#[test]
fn html_in_messages_and_names_is_shown_as_text() {
    let _serial = one_at_a_time();
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server.http.expect("the HTTP address");
    let img = "<img src=x onerror=alert(1)>";
    // Before the page joins (it arrives in the history replay) and after (live), from a user
    // whose name is markup too.
    let mut eve = server.connect("<b>Eve", "lobby");
    eve.send(&format!("{img}\n"));
    eve.expect(&format!("<b>Eve:{img}"));
    let mut driver = Driver::start();
    let ann = driver.browser();
    ann.join(http, "Ann", "lobby");
    eve.expect("*** Ann joined");
    eve.send("/me <script>alert(2)</script> & <i>friends</i>\n");
    eve.expect("* <b>Eve <script>alert(2)</script> & <i>friends</i>");
    eve.send(&format!("{img} again\n"));
    eve.expect(&format!("<b>Eve:{img} again"));

    let check = |ann: &Browser| {
        ann.wait_entry("message", "<b>Eve", img);
        ann.wait_entry(
            "action",
            "<b>Eve",
            "<script>alert(2)</script> & <i>friends</i>",
        );
        ann.wait_entry("message", "<b>Eve", &format!("{img} again"));
        ann.wait_members(&["<b>Eve", "Ann"]);
        let elements = ann.js(
            "return document.querySelectorAll('#log img, #log b, #log i, #log script, \
             #members b').length",
            json!([]),
        );
        assert_eq!(elements, 0, "markup from a message became elements");
        // No alert() ran: there is no dialog open.
        let alert = ann.try_cmd("GET", "/alert/text", None);
        assert!(
            alert.as_ref().is_err_and(|e| e.contains("no such alert")),
            "a dialog is open: {alert:?}"
        );
    };
    check(&ann);
    // The log redrawn from sessionStorage after a reload is text too.
    ann.cmd("POST", "/refresh", None);
    ann.wait_connected("Ann");
    check(&ann);
}

#[test]
fn shift_enter_makes_a_multi_line_message() {
    let _serial = one_at_a_time();
    let server = Server::start(&["--http", "127.0.0.1:0", "--max-line", "200"]);
    let http = server.http.expect("the HTTP address");
    let mut cy = server.connect("Cy", "lobby");
    let mut driver = Driver::start();
    let ann = driver.browser();
    // A name in use is refused: the page says so and offers the form again.
    ann.goto(&format!("http://{http}/?name=Cy&room=lobby"));
    ann.click("#join");
    let error = ann.wait_js(
        "the refusal on the form",
        "const e = document.getElementById('login-error').textContent; \
         return !document.getElementById('login').hidden && e !== '' && e",
        json!([]),
    );
    assert_eq!(error, "name Cy is already taken in room lobby");
    ann.clear("#name");
    ann.type_into("#name", &format!("Ann{ENTER}"));
    ann.wait_connected("Ann");
    cy.expect("*** Ann joined");

    // Shift+Enter inserts a line break; only the final Enter sends.
    ann.type_into(
        "#input",
        &format!("first line{SHIFT}{ENTER}{RELEASE}second line"),
    );
    ann.type_into(
        "#input",
        &format!("{SHIFT}{ENTER}{RELEASE}  third, indented"),
    );
    let typed = ann.js("return document.getElementById('input').value", json!([]));
    assert_eq!(typed, "first line\nsecond line\n  third, indented");
    ann.type_into("#input", ENTER);
    cy.expect("Ann:first line");
    cy.expect("Ann:second line");
    cy.expect("Ann:  third, indented");

    // One message on the page, its lines kept.
    ann.wait_entry(
        "message",
        "Ann",
        "first line\nsecond line\n  third, indented",
    );
    assert_eq!(ann.messages().len(), 1, "{}", ann.dump());
    let typed = ann.js("return document.getElementById('input').value", json!([]));
    assert_eq!(typed, "");

    // A message over --max-line ends the connection (close 1009): the page says why, gives the
    // text back to the message box and reconnects by itself.
    let long = "x".repeat(300);
    ann.type_into("#input", &format!("{long}{ENTER}"));
    cy.expect("*** Ann left");
    cy.expect("*** Ann joined");
    ann.wait_connected("Ann");
    ann.wait_js(
        "the error and the text given back",
        "return document.getElementById('input').value === arguments[0] \
         && Array.from(document.querySelectorAll('#log .entry.error'))\
            .some(e => e.textContent.includes('line too long'))",
        json!([long]),
    );
    assert_eq!(ann.messages().len(), 1, "{}", ann.dump());
}
