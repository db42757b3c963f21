//! TLS over real sockets: the chat protocol on --tls-addr with a certificate made here by
//! rcgen, HTTPS and WSS on the web side, and what a plain-text or silent client on the TLS port
//! costs. (machat-client --tls --ca: crates/client/tests/terminal.rs.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{temp_dir, Endpoint, Server, TIMEOUT};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
struct Cert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    fn new() -> Cert {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Cert { dir, cert, key }
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_server(cert: &Cert, extra: &[&str]) -> Server {
    let (c, k) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let mut args = vec!["--tls-addr", "127.0.0.1:0", "--tls-cert", c, "--tls-key", k];
    args.extend_from_slice(extra);
    Server::start(&args)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tls_connect(cert: &Cert, addr: SocketAddr) -> Tls {
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cert.client_config(), name).unwrap();
    StreamOwned::new(conn, tcp)
}

/// Reads one line (without `\n`) from a TLS stream, byte by byte (bounded by the timeout).
fn tls_line(s: &mut Tls) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).expect("a line over TLS");
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

#[test]
fn tls_and_plain_clients_chat_in_one_room() {
    let cert = Cert::new();
    let server = tls_server(&cert, &[]);
    let mut secure = tls_connect(&cert, server.tls.unwrap());
    secure
        .write_all(br#"{"name":"Sec","room":"mixed"}"#)
        .unwrap();
    assert_eq!(tls_line(&mut secure), "*** Sec joined");
    let mut plain = server.connect("Plain", "mixed");
    assert_eq!(tls_line(&mut secure), "*** Plain joined");
    secure.write_all(b"over tls\n").unwrap();
    assert_eq!(tls_line(&mut secure), "Sec:over tls");
    plain.expect("Sec:over tls");
    plain.send("in clear\n");
    plain.expect("Plain:in clear");
    assert_eq!(tls_line(&mut secure), "Plain:in clear");
    secure.write_all(b"/who\n").unwrap();
    assert_eq!(tls_line(&mut secure), "*** 2 in mixed: Plain Sec");
    secure.write_all(b"/quit\n").unwrap();
    assert_eq!(tls_line(&mut secure), "*** bye");
    plain.expect("*** Sec left");
}

#[test]
fn plain_text_and_silent_clients_on_the_tls_port_cost_nothing() {
    let cert = Cert::new();
    let server = tls_server(&cert, &["--handshake-timeout", "1"]);
    let tls_addr = server.tls.unwrap();
    let cpu_before = server.cpu_secs();
    // A MaChat client pointed at the TLS port by mistake: its JSON is not a TLS hello.
    let mut wrong = TcpStream::connect_timeout(&tls_addr, TIMEOUT).unwrap();
    wrong.set_read_timeout(Some(TIMEOUT)).unwrap();
    wrong.write_all(br#"{"name":"Oops","room":"r"}"#).unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = wrong.read_to_end(&mut sink);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "not closed at once"
    );
    // Many clients that connect and say nothing: all closed within the handshake timeout.
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect_timeout(&tls_addr, TIMEOUT).unwrap())
        .collect();
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        server.cpu_secs() - cpu_before < 0.5,
        "{}",
        server.cpu_secs()
    );
    // And the server goes on serving.
    let mut secure = tls_connect(&cert, tls_addr);
    secure.write_all(br#"{"name":"Fine","room":"r"}"#).unwrap();
    assert_eq!(tls_line(&mut secure), "*** Fine joined");
}

#[test]
fn the_web_side_serves_https_and_wss_with_the_certificate() {
    let cert = Cert::new();
    let server = tls_server(&cert, &["--http", "127.0.0.1:0"]);
    let http = server.http.unwrap();
    let mut s = tls_connect(&cert, http);
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    // WSS: a WebSocket inside TLS, in the same room as a plain TCP client.
    let mut plain = server.connect("Plain", "wss");
    let stream = tls_connect(&cert, http);
    let (mut ws, _) = tungstenite::client(format!("wss://localhost:{}/ws", http.port()), stream)
        .expect("wss upgrade");
    ws.send(tungstenite::Message::text(r#"{"name":"Web","room":"wss"}"#))
        .unwrap();
    plain.expect("*** Web joined");
    ws.send(tungstenite::Message::text("secure hello")).unwrap();
    plain.expect("Web:secure hello");

    // Plain HTTP on the HTTPS port gets nowhere, and costs the server nothing lasting.
    let mut clear = TcpStream::connect_timeout(&http, TIMEOUT).unwrap();
    clear.set_read_timeout(Some(TIMEOUT)).unwrap();
    clear
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = clear.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn a_bad_certificate_stops_the_start_with_a_clear_error() {
    let cert = Cert::new();
    let missing = cert.dir.join("missing.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["-a", "127.0.0.1:0", "--http", "off", "--history", "off"])
        .args(["--tls-addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&cert.key)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.pem"), "{err}");

    // A key that is not the certificate's.
    let other = Cert::new();
    let out = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["-a", "127.0.0.1:0", "--http", "off", "--history", "off"])
        .args(["--tls-addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&other.key)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not fit"), "{err}");

    // --tls-addr without a certificate is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["-a", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-addr needs --tls-cert"), "{err}");
}

/// One HTTPS request by hand; returns the whole answer (the server closes after it).
fn https_request(cert: &Cert, addr: SocketAddr, path: &str, host: &str) -> String {
    let mut s = tls_connect(cert, addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn https_answers_tell_browsers_to_stay_on_https() {
    let cert = Cert::new();
    let server = tls_server(&cert, &["--http", "127.0.0.1:0"]);
    let http = server.http.unwrap();
    let hsts = "strict-transport-security: max-age=31536000\r\n";
    // Every answer: the page, the API, an error, a refused host, a WebSocket upgrade.
    for (path, host, status) in [
        ("/", "localhost", "200"),
        ("/healthz", "127.0.0.1", "200"),
        ("/api/rooms", "localhost", "200"),
        ("/no/such/page", "localhost", "404"),
        ("/healthz", "rebind.attacker.example", "421"),
    ] {
        let answer = https_request(&cert, http, path, host);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase()
            + "\r\n";
        assert!(head.contains(hsts), "{path}: {head}");
        assert!(!head.contains("includesubdomains"), "{head}");
    }
    let stream = tls_connect(&cert, http);
    let (_ws, response) =
        tungstenite::client(format!("wss://localhost:{}/ws", http.port()), stream)
            .expect("wss upgrade");
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );

    // Plain HTTP does not send it (it would mean nothing there).
    let plain = Server::start(&["--http", "127.0.0.1:0"]);
    let mut s = TcpStream::connect_timeout(&plain.http.unwrap(), TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("strict-transport-security"), "{answer}");
}

/// Issue 15: a browser going to https://host:TLSPORT/ (the chat's TLS port) gets the same short
/// HTTP answer as on the plain port, inside TLS, with the web page's https address.
#[test]
fn a_browser_on_the_tls_chat_port_is_told_where_the_web_page_is() {
    let cert = Cert::new();
    let server = tls_server(&cert, &["--http", "127.0.0.1:0"]);
    let (tls_addr, http) = (server.tls.unwrap(), server.http.unwrap());
    let mut tls = tls_connect(&cert, tls_addr);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8(answer).unwrap();
    let body = format!(
        "This is machat's chat port: connect with nc, machat-client or a MaChat client. \
         The web page is at https://{http}/\n\
         With nc, start with {{\"name\":\"you\",\"room\":\"lobby\"}} and press Enter.\n"
    );
    assert_eq!(
        answer,
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    );
}
