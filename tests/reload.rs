//! SIGHUP, with the real binary: the `--config` file is read again and what can change live
//! does (a connection limit, the certificate), a bad file keeps the running configuration,
//! a change that needs a restart is named, and without a file the server just says so (it
//! used to die: SIGHUP's default action).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{expect_refused, temp_dir, Client, Endpoint, Server, TIMEOUT};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A directory holding `machat.toml` with `text`.
fn config_file(text: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("machat.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// Rewrites the file, sends SIGHUP and waits for the `n`th line with `needle` in the log.
fn reload(server: &Server, file: &Path, text: &str, needle: &str, n: usize) {
    std::fs::write(file, text).unwrap();
    server.signal("-HUP");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let count = || {
        let log = server.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    };
    while count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} (x{n}) in {:?}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sighup_without_a_file_says_so_and_keeps_serving() {
    let server = Server::start(&[]);
    let mut a = server.connect("a", "r");
    server.signal("-HUP");
    assert!(server.wait_log("there is no --config file to reload"));
    a.send("still here\n");
    a.until("a:still here");
    let _b = server.connect("b", "r");
}

#[test]
fn sighup_applies_a_new_connection_limit_and_a_bad_file_keeps_it() {
    let (dir, file) = config_file("[limits]\nmax_per_ip = 5\n");
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    let mut a = server.connect("a", "r");
    let _b = server.connect("b", "r");
    reload(
        &server,
        &file,
        "[limits]\nmax_per_ip = 1\n",
        "reload: applied (changed: max_per_ip)",
        1,
    );
    let mut c = Client::raw(server.addr());
    assert_eq!(
        c.line(),
        "*** error: too many connections from your address"
    );
    assert!(c.closed());
    // The connections already in stay.
    a.send("ok\n");
    a.until("a:ok");
    // A bad file: the error, with its line and key, and the limit of 1 stays.
    let bad = "[limits]\n\nmax_per_ip = \"lots\"\n";
    let f = file.display();
    let want = format!(
        "reload failed: {f}:3: [limits] max_per_ip: must be a number, not a string; keeping the running configuration"
    );
    reload(&server, &file, bad, &want, 1);
    let mut c = Client::raw(server.addr());
    assert_eq!(
        c.line(),
        "*** error: too many connections from your address"
    );
    // Back to a roomier limit: a third connection is let in.
    reload(
        &server,
        &file,
        "[limits]\nmax_per_ip = 3\n",
        "reload: applied (changed: max_per_ip)",
        2,
    );
    let _c = server.connect("c", "r");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_applies_a_new_room_size() {
    let (dir, file) = config_file("[limits]\nmax_room_members = 1\n");
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    let mut a = server.connect("a", "r");
    let join_b = br#"{"name":"b","room":"r"}"#;
    expect_refused(&server, join_b, "room r is full (1 members)");
    reload(
        &server,
        &file,
        "[limits]\nmax_room_members = 2\n",
        "reload: applied (changed: max_room_members)",
        1,
    );
    let _b = server.connect("b", "r");
    a.until("*** b joined");
    expect_refused(
        &server,
        br#"{"name":"c","room":"r"}"#,
        "room r is full (2 members)",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_change_that_needs_a_restart_is_named() {
    let (dir, file) = config_file("[history]\nhistory_max = 100\n");
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    reload(
        &server,
        &file,
        "[history]\nhistory_max = 50\n[limits]\nidle_timeout = 60\n",
        "reload: history_max changed; restart to apply",
        1,
    );
    assert!(server.wait_log("reload: applied (changed: idle_timeout)"));
    // Flags keep their precedence over the file on a reload too: --addr is a flag here.
    reload(
        &server,
        &file,
        "[chat]\naddr = \"127.0.0.1:1\"\n",
        "reload: applied",
        2,
    );
    assert!(!server.log_contains("addr changed"));
    let _a = server.connect("a", "r");
    let _ = std::fs::remove_dir_all(dir);
}

/// A self-signed certificate for localhost, as PEM text.
fn certificate() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// A TLS client that trusts only `cert_pem`, joined as `name`, or the error.
fn tls_join(cert_pem: &str, addr: SocketAddr, name: &str) -> std::io::Result<Tls> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(format!("{{\"name\":\"{name}\",\"room\":\"tls\"}}").as_bytes())?;
    let line = tls_line(&mut tls)?;
    assert_eq!(line, format!("*** {name} joined"));
    Ok(tls)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tls_line(s: &mut Tls) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

#[test]
fn sighup_renews_the_certificate_for_new_connections_only() {
    let (dir, file) = config_file("");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (old_cert, old_key) = certificate();
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    // Relative to the file's directory.
    let text = "[tls]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n";
    std::fs::write(&file, text).unwrap();
    let server = Server::start(&[
        "--config",
        file.to_str().unwrap(),
        "--tls-addr",
        "127.0.0.1:0",
    ]);
    let addr = server.tls.unwrap();
    let mut before = tls_join(&old_cert, addr, "Before").unwrap();

    // Renewed under the same names, as certbot does.
    let (new_cert, new_key) = certificate();
    std::fs::write(&cert, &new_cert).unwrap();
    std::fs::write(&key, &new_key).unwrap();
    reload(
        &server,
        &file,
        text,
        "reload: applied (changed: certificate (reloaded))",
        1,
    );
    assert!(
        tls_join(&old_cert, addr, "Old").is_err(),
        "the old certificate is still offered"
    );
    let mut after = tls_join(&new_cert, addr, "After").unwrap();
    assert_eq!(tls_line(&mut before).unwrap(), "*** After joined");
    before.write_all(b"still on the old session\n").unwrap();
    assert_eq!(
        tls_line(&mut after).unwrap(),
        "Before:still on the old session"
    );

    // A certificate that does not load keeps the one in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    reload(&server, &file, text, "keeping the running configuration", 1);
    assert!(server.log_contains("cert.pem"));
    let _again = tls_join(&new_cert, addr, "Again").unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// The status line of a request to the web side at `addr` for `host`, with `extra` headers.
fn status(addr: SocketAddr, host: &str, path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).trim().to_owned()
}

#[test]
fn sighup_applies_allowed_origins_and_hosts() {
    let (dir, file) = config_file("");
    let server = Server::start(&["--config", file.to_str().unwrap(), "--http", "127.0.0.1:0"]);
    let http = server.http().unwrap();
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://a.example\r\n";
    let ws = || status(http, &http.to_string(), "/ws", upgrade);
    assert!(ws().contains(" 403 "), "{}", ws());
    assert!(status(http, "chat.example", "/healthz", "").contains(" 421 "));
    let text =
        "[web]\nallowed_origins = [\"https://a.example\"]\nallowed_hosts = \"chat.example\"\n";
    reload(
        &server,
        &file,
        text,
        "reload: applied (changed: allowed_origins, allowed_hosts)",
        1,
    );
    assert!(ws().contains(" 101 "), "{}", ws());
    assert!(status(http, "chat.example", "/healthz", "").contains(" 200 "));
    let _ = std::fs::remove_dir_all(dir);
}
