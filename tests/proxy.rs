//! Behind a reverse proxy (issue 15), over real sockets: `--trusted-proxies` with `Forwarded`
//! and `X-Forwarded-For` on the web side, and `--proxy-protocol` (v1 and v2) on the chat and
//! TLS ports. The test's own loopback address 127.0.0.1 plays the trusted proxy; 127.0.0.2 is
//! a stranger whose headers count for nothing. Which address the server took is seen in its
//! log lines, in the failed-login limit and in `--max-per-ip`.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::ws::read_response;
use common::{temp_dir, user_add, Client, Server, TIMEOUT};
use serde_json::json;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const PROXY: [u8; 4] = [127, 0, 0, 1];
const STRANGER: [u8; 4] = [127, 0, 0, 2];

/// A raw HTTP/1.1 request from loopback address `from` with `headers` (each ending in CRLF):
/// (status, head, body).
fn request(
    http: SocketAddr,
    from: [u8; 4],
    method: &str,
    path: &str,
    host: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut c = Client::raw_from(http, IpAddr::from(from));
    c.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let body_head = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    c.send(&format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}{body_head}\r\n{body}"
    ));
    read_response(&mut c.stream)
}

/// A request for a host the server does not answer to: refused, and the refusal's log line
/// names the client's address as the server took it. Returns that address's log text.
fn seen_as(server: &Server, from: [u8; 4], headers: &str, want: &str) {
    let (status, _, _) = request(
        server.http.unwrap(),
        from,
        "GET",
        "/",
        "not-allowed.example",
        headers,
        "",
    );
    assert_eq!(status, 421);
    let line = format!("http refused: host not allowed or missing addr={want}");
    assert!(
        server.wait_log(&line),
        "{headers:?} from {from:?}: no {line:?} in {:#?}",
        server.log.lock().unwrap()
    );
}

fn web_server(extra: &[&str]) -> Server {
    let mut args = vec!["--http", "127.0.0.1:0", "--trusted-proxies", "127.0.0.1"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn a_trusted_proxy_names_the_client_in_x_forwarded_for() {
    let server = web_server(&[]);
    // One hop.
    seen_as(
        &server,
        PROXY,
        "X-Forwarded-For: 203.0.113.1\r\n",
        "203.0.113.1:0",
    );
    // Several hops: the rightmost that is not a trusted proxy; what the client claimed to the
    // left of it is not read.
    seen_as(
        &server,
        PROXY,
        "X-Forwarded-For: 198.51.100.99, 203.0.113.2, 127.0.0.1\r\n",
        "203.0.113.2:0",
    );
    // Several lines are one list, in order.
    seen_as(
        &server,
        PROXY,
        "X-Forwarded-For: 198.51.100.98\r\nX-Forwarded-For: 203.0.113.3, 127.0.0.1\r\n",
        "203.0.113.3:0",
    );
    // Every hop a trusted proxy: the leftmost.
    seen_as(
        &server,
        PROXY,
        "X-Forwarded-For: 127.0.0.1, 127.0.0.1\r\n",
        "127.0.0.1:0",
    );
}

#[test]
fn a_trusted_proxy_names_the_client_in_forwarded() {
    let server = web_server(&[]);
    seen_as(
        &server,
        PROXY,
        "Forwarded: for=203.0.113.4;proto=http;by=127.0.0.1\r\n",
        "203.0.113.4:0",
    );
    seen_as(
        &server,
        PROXY,
        "Forwarded: for=\"[2001:db8:cafe::17]:4711\"\r\n",
        "[2001:db8:cafe::17]:4711",
    );
    // Forwarded is read before X-Forwarded-For; the rightmost untrusted hop again.
    seen_as(
        &server,
        PROXY,
        "X-Forwarded-For: 198.51.100.97\r\nForwarded: for=198.51.100.96, for=203.0.113.5, for=127.0.0.1\r\n",
        "203.0.113.5:0",
    );
}

#[test]
fn unreadable_forwarding_headers_give_the_proxys_own_address() {
    let server = web_server(&[]);
    for headers in [
        "X-Forwarded-For: unknown\r\n",
        "X-Forwarded-For: garbage!\r\n",
        "Forwarded: for=unknown\r\n",
        "Forwarded: for=_hidden\r\n",
        "Forwarded: for=\"[2001:db8::1]:80\r\n",
    ] {
        let before = server.log.lock().unwrap().len();
        seen_as(&server, PROXY, headers, "127.0.0.1:");
        // The refusal logged for this very request names the proxy, not a made-up client.
        let log = wait_for_log(&server, |log| {
            log[before..].iter().any(|l| l.contains("http refused"))
        });
        let refusals: Vec<&String> = log[before..]
            .iter()
            .filter(|l| l.contains("http refused"))
            .collect();
        assert_eq!(refusals.len(), 1, "{headers:?}: {refusals:#?}");
        assert!(
            refusals[0].contains("addr=127.0.0.1:"),
            "{headers:?}: {refusals:#?}"
        );
    }
    // Too long: 9 KiB of hops.
    let long = format!(
        "X-Forwarded-For: {}203.0.113.6\r\n",
        "10.0.0.1, ".repeat(900)
    );
    seen_as(&server, PROXY, &long, "127.0.0.1:");
    assert!(!server.log_contains("addr=203.0.113.6"));
}

#[test]
fn forwarding_headers_from_anyone_else_are_ignored() {
    let server = web_server(&[]);
    seen_as(
        &server,
        STRANGER,
        "X-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7\r\n",
        "127.0.0.2:",
    );
    assert!(!server.log_contains("203.0.113.7"));
}

/// `POST /api/login` for `name` through the proxy on behalf of `client` (or from `from`
/// with the same header): the status.
fn login(server: &Server, from: [u8; 4], client: &str, name: &str, password: &str) -> u16 {
    let body = json!({ "name": name, "password": password }).to_string();
    let headers = format!("X-Forwarded-For: {client}\r\n");
    let host = server.http.unwrap().to_string();
    request(
        server.http.unwrap(),
        from,
        "POST",
        "/api/login",
        &host,
        &headers,
        &body,
    )
    .0
}

#[test]
fn the_failed_login_limit_holds_back_the_client_not_the_proxy() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "minapw");
    let server = web_server(&["--data-dir", dir.to_str().unwrap()]);
    // One client behind the proxy guesses four times: it is held back...
    for _ in 0..4 {
        assert_eq!(login(&server, PROXY, "203.0.113.10", "Mina", "guess"), 401);
    }
    assert_eq!(login(&server, PROXY, "203.0.113.10", "Mina", "minapw"), 429);
    // ...and everyone else behind the same proxy is not.
    assert_eq!(login(&server, PROXY, "203.0.113.11", "Mina", "minapw"), 200);
    // A stranger's header is ignored: its guesses count for its own address, and naming
    // someone else does not get it out of the hold.
    for _ in 0..4 {
        assert_eq!(
            login(&server, STRANGER, "203.0.113.12", "Mina", "guess"),
            401
        );
    }
    assert_eq!(
        login(&server, STRANGER, "203.0.113.13", "Mina", "minapw"),
        429
    );
    assert_eq!(login(&server, PROXY, "203.0.113.12", "Mina", "minapw"), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn websockets_through_the_proxy_count_per_client_for_max_per_ip() {
    let server = web_server(&["--max-per-ip", "1"]);
    let http = server.http.unwrap();
    let upgrade = |client: &str| {
        let mut c = Client::raw_from(http, IpAddr::from(PROXY));
        c.send(&format!(
            "GET /ws HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             X-Forwarded-For: {client}\r\n\r\n"
        ));
        let status = c.line();
        (status, c)
    };
    let (first, _a) = upgrade("203.0.113.20");
    assert!(first.contains(" 101 "), "{first}");
    // The same client again is over its limit; another client behind the proxy is not.
    let (again, _b) = upgrade("203.0.113.20");
    assert!(!again.contains(" 101 "), "{again}");
    let (other, _c) = upgrade("203.0.113.21");
    assert!(other.contains(" 101 "), "{other}");
    assert!(server.wait_log("addr=203.0.113.21:0 transport=\"websocket\""));
}

/// A chat server that reads PROXY headers from 127.0.0.1.
fn chat_server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--trusted-proxies",
        "127.0.0.1",
        "--proxy-protocol",
        "--history",
        "off",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn handshake(name: &str) -> String {
    format!("{{\"name\":\"{name}\",\"room\":\"proxied\"}}\n")
}

/// A PROXY v2 header: `command` 0 (LOCAL) or 1 (PROXY), `family` (0x11 TCP over IPv4, 0x21
/// TCP over IPv6, 0x00 unspecified), then the address bytes.
fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(addresses);
    h
}

/// IPv4 source and destination addresses and ports, as v2 carries them.
fn v2_v4(src: [u8; 4], src_port: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[127, 0, 0, 1]);
    a.extend_from_slice(&src_port.to_be_bytes());
    a.extend_from_slice(&8989u16.to_be_bytes());
    a
}

/// One write: the header and the handshake together, as a proxy's first packet may be.
fn join_through(server: &Server, header: &[u8], name: &str) -> Client {
    let mut c = Client::raw_from(server.addr, IpAddr::from(PROXY));
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(handshake(name).as_bytes());
    c.send_bytes(&bytes);
    c
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_chat_client() {
    let server = chat_server(&["--max-per-ip", "1"]);
    let mut v1 = join_through(
        &server,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 4711 8989\r\n",
        "Vone",
    );
    v1.expect("*** Vone joined");
    assert!(server.wait_log("addr=192.0.2.1:4711"));
    let mut v6 = join_through(&server, b"PROXY TCP6 2001:db8::2 ::1 4712 8989\r\n", "Vsix");
    v6.expect("*** Vsix joined");
    assert!(server.wait_log("addr=[2001:db8::2]:4712"));
    let mut two = join_through(&server, &v2(1, 0x11, &v2_v4([192, 0, 2, 3], 4713)), "Vtwo");
    two.expect("*** Vtwo joined");
    assert!(server.wait_log("addr=192.0.2.3:4713"));
    // v2 with extensions (TLVs) after the addresses: skipped.
    let mut tlv = v2_v4([192, 0, 2, 4], 4714);
    tlv.extend_from_slice(&[0x04, 0, 1, 42]);
    let mut ext = join_through(&server, &v2(1, 0x11, &tlv), "Vext");
    ext.expect("*** Vext joined");
    assert!(server.wait_log("addr=192.0.2.4:4714"));
    // --max-per-ip counts the client: 192.0.2.1 again is one too many, though every one of
    // these connections comes from the proxy's one address.
    let mut again = join_through(
        &server,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 4799 8989\r\n",
        "Again",
    );
    assert_eq!(
        again.line(),
        "*** error: too many connections from your address"
    );
    drop((v1, v6, two, ext));
}

#[test]
fn proxy_protocol_local_and_unknown_are_the_proxy_itself() {
    let server = chat_server(&[]);
    let mut local = join_through(&server, &v2(0, 0x00, &[]), "Health");
    local.expect("*** Health joined");
    let mut unknown = join_through(&server, b"PROXY UNKNOWN\r\n", "Unknown");
    unknown.expect("*** Unknown joined");
    // Both logged with the proxy's own address.
    let connect_lines = |log: &[String]| log.iter().filter(|l| l.contains(" connect ")).count();
    let log = wait_for_log(&server, |log| connect_lines(log) >= 2);
    let connects: Vec<&String> = log.iter().filter(|l| l.contains(" connect ")).collect();
    assert_eq!(connects.len(), 2, "{log:#?}");
    assert!(
        connects.iter().all(|l| l.contains("addr=127.0.0.1:")),
        "{connects:#?}"
    );
}

#[test]
fn a_bad_or_missing_proxy_header_closes_the_connection() {
    let server = chat_server(&["--handshake-timeout", "1"]);
    for bad in [
        &b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"[..],
        &b"PROXY TCP4 192.0.2.1 127.0.0.1 4711\r\n"[..],
        &[b'P'; 200][..],
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff"[..],
        &b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\xc0\x00\x02\x01\x7f\x00\x00\x01\x00\x01\x00\x02"[..],
        // No header at all: a handshake straight away.
        handshake("Direct").as_bytes(),
    ] {
        let mut c = Client::raw_from(server.addr, IpAddr::from(PROXY));
        c.send_bytes(bad);
        assert!(c.rest().is_empty(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(server.wait_log("disconnect: bad PROXY header"));
    assert!(!server.log_contains(" connect "));
    // A trusted peer that sends nothing is closed at the handshake timeout.
    let mut silent = Client::raw_from(server.addr, IpAddr::from(PROXY));
    assert!(silent.rest().is_empty());
    assert!(server.wait_log("no PROXY header within the handshake timeout"));
}

#[test]
fn a_proxy_header_from_an_untrusted_peer_is_a_bad_handshake() {
    let server = chat_server(&[]);
    let mut c = Client::raw_from(server.addr, IpAddr::from(STRANGER));
    c.send("PROXY TCP4 192.0.2.9 127.0.0.1 4711 8989\r\n");
    let line = c.line();
    assert!(line.starts_with("*** error: "), "{line}");
    assert!(c.closed());
    // Others than the proxy join as ever, without a header, as themselves.
    let mut plain = Client::raw_from(server.addr, IpAddr::from(STRANGER));
    plain.send(&handshake("Plain"));
    plain.expect("*** Plain joined");
    assert!(server.wait_log("addr=127.0.0.2:"));
    assert!(!server.log_contains("192.0.2.9"));
}

#[test]
fn proxy_protocol_needs_trusted_proxies_and_bad_entries_stop_the_start() {
    for (args, want) in [
        (
            &["--proxy-protocol"][..],
            "--proxy-protocol needs --trusted-proxies",
        ),
        (
            &["--trusted-proxies", "10.0.0.0/8,nonsense"][..],
            "nonsense",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_machat"))
            .args(["-a", "127.0.0.1:0", "--http", "off", "--history", "off"])
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}

/// A self-signed certificate for localhost, as PEM files in a directory of its own.
fn certificate() -> (std::path::PathBuf, Arc<ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (dir, Arc::new(config))
}

#[test]
fn on_the_tls_port_the_proxy_header_comes_before_the_client_hello() {
    let (dir, config) = certificate();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let server = chat_server(&[
        "--tls-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let tls_addr = server.tls.unwrap();
    for (header, name) in [
        (
            b"PROXY TCP4 192.0.2.30 127.0.0.1 5001 8990\r\n".to_vec(),
            "SecureOne",
        ),
        (v2(1, 0x11, &v2_v4([192, 0, 2, 31], 5002)), "SecureTwo"),
    ] {
        let tcp = Client::raw_from(tls_addr, IpAddr::from(PROXY)).stream;
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut tcp: TcpStream = tcp;
        tcp.write_all(&header).unwrap();
        let server_name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config.clone(), server_name).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(handshake(name).as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\n") {
            tls.read_exact(&mut b).expect("a line over TLS");
            got.push(b[0]);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("*** {name} joined\n")
        );
    }
    assert!(server.wait_log("addr=192.0.2.30:5001 tls=true"));
    assert!(server.wait_log("addr=192.0.2.31:5002 tls=true"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A free loopback port (bound, then let go: nginx needs a number in its configuration).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The README's `nginx` blocks under "Behind a reverse proxy", in order.
fn readme_nginx_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Behind a reverse proxy")
        .nth(1)
        .expect("the README's section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .split("```nginx\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

/// nginx in the foreground with a configuration of its own in `dir`; killed when dropped.
struct Nginx(std::process::Child, std::path::PathBuf);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Waits (bounded) until `port` on loopback accepts connections.
fn wait_port(port: u16) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("nothing listens on {port}");
}

#[test]
fn the_readme_nginx_configuration_carries_the_clients_address() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "nginx is not installed: scripts/test.sh installs nginx-light and libnginx-mod-stream",
        );
    let server = chat_server(&["--http", "127.0.0.1:0"]);
    let (web_port, chat_port) = (free_port(), free_port());
    let blocks = readme_nginx_blocks();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let fill = |b: &str| {
        b.replace("listen 80;", &format!("listen 127.0.0.1:{web_port};"))
            .replace("listen 8989;", &format!("listen 127.0.0.1:{chat_port};"))
            .replace("127.0.0.1:8080", &server.http.unwrap().to_string())
            .replace("127.0.0.1:7989", &server.addr.to_string())
    };
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    // Debian builds the stream module as a module of its own (libnginx-mod-stream).
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    let load = if std::path::Path::new(module).exists() {
        format!("load_module {module};")
    } else {
        String::new()
    };
    let conf = format!(
        "{load}\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\naccess_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n{}\n}}\n{}\n",
        fill(&blocks[0]),
        fill(&blocks[1]),
    );
    std::fs::write(dir.join("nginx.conf"), &conf).unwrap();
    let child = Command::new(nginx)
        .args([
            "-p",
            d,
            "-c",
            &format!("{d}/nginx.conf"),
            "-e",
            &format!("{d}/error.log"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx(child, dir.clone());
    wait_port(web_port);
    wait_port(chat_port);
    web_through_proxy(&server, web_port, "nginx");
    // The chat port, through nginx's stream proxy with the PROXY header.
    let mut chat = Client::raw_from(
        SocketAddr::from(([127, 0, 0, 1], chat_port)),
        IpAddr::from(STRANGER),
    );
    chat.send(&handshake("Streamy"));
    chat.expect("*** Streamy joined");
    // Streamy's connect line (wait_port's probe came from nginx for 127.0.0.1).
    wait_for_log(&server, |log| {
        log.iter().any(|l| {
            l.contains(" connect ") && l.contains("tls=false") && l.contains("addr=127.0.0.2:")
        })
    });
}

/// The server's log once `done` holds for it (the log is read by a thread of its own, so a
/// line may come a moment after the answer it goes with); panics with the log after the
/// timeout.
fn wait_for_log(server: &Server, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let log = server.log.lock().unwrap().clone();
        if done(&log) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not in the log: {log:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The page, a refused request and a WebSocket through a proxy listening on `web_port`, from
/// a client at 127.0.0.2: the server sees that client, not the proxy.
fn web_through_proxy(server: &Server, web_port: u16, proxy: &str) {
    let web = SocketAddr::from(([127, 0, 0, 1], web_port));
    let host = web.to_string();
    let (status, _, body) = request(web, STRANGER, "GET", "/", &host, "", "");
    assert_eq!(status, 200, "the page through {proxy}");
    assert!(body.to_ascii_lowercase().contains("<html"), "{body}");
    // A failed login is the client's (the proxy forwarded for it), not the proxy's.
    let body = json!({ "name": "Nobody", "password": "guess" }).to_string();
    let (status, _, _) = request(web, STRANGER, "POST", "/api/login", &host, "", &body);
    assert_eq!(status, 401, "a login through {proxy}");
    assert!(
        server.wait_log("login: authentication failed addr=127.0.0.2:0"),
        "{proxy}: {:#?}",
        server.log.lock().unwrap()
    );
    // /ws: the upgrade passes, frames flow both ways, and the WebSocket is the client's.
    let stream = Client::raw_from(web, IpAddr::from(STRANGER)).stream;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{host}/ws"))
            .unwrap();
    let (mut ws, _) = tungstenite::client(req, stream)
        .unwrap_or_else(|e| panic!("websocket through {proxy}: {e}"));
    let name = format!("Web{proxy}");
    ws.send(tungstenite::Message::text(format!(
        r#"{{"name":"{name}","room":"proxied"}}"#
    )))
    .unwrap();
    let first = ws.read().expect("a frame through the proxy");
    assert!(first.to_text().unwrap().contains(&name), "{first}");
    assert!(server.wait_log("addr=127.0.0.2:0 transport=\"websocket\""));
}

/// The README's `caddy` block under "Behind a reverse proxy".
fn readme_caddy_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Behind a reverse proxy")
        .nth(1)
        .expect("the README's section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_owned();
    section
        .split("```caddy\n")
        .nth(1)
        .expect("a caddy block")
        .split("```")
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn the_readme_caddy_configuration_carries_the_clients_address() {
    let caddy = ["/usr/bin/caddy", "/usr/local/bin/caddy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("caddy is not installed: scripts/test.sh installs it");
    let server = chat_server(&["--http", "127.0.0.1:0"]);
    let web_port = free_port();
    let site = readme_caddy_block()
        .replace("chat.example.org", &format!("http://127.0.0.1:{web_port}"))
        .replace("127.0.0.1:8080", &server.http.unwrap().to_string());
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // No admin endpoint (its fixed port would clash between runs), no HTTPS on loopback.
    std::fs::write(
        dir.join("Caddyfile"),
        format!("{{\n    admin off\n    auto_https off\n}}\n{site}"),
    )
    .unwrap();
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("HOME", &dir)
        .env("XDG_DATA_HOME", &dir)
        .env("XDG_CONFIG_HOME", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start caddy");
    let _caddy = Nginx(child, dir.clone());
    wait_port(web_port);
    web_through_proxy(&server, web_port, "caddy");
}

#[test]
fn a_ban_by_address_bans_the_client_behind_the_proxy_not_the_proxy() {
    let dir = common::people();
    let server = chat_server(&["--data-dir", dir.to_str().unwrap()]);
    let mut mina = common::log_in(
        Client::raw_from(server.addr, IpAddr::from(STRANGER)),
        "Mina",
        "minapw",
        "dev",
    );
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 4711 8989\r\n");
    let join = |client: &str, name: &str| {
        let mut c = Client::raw_from(server.addr, IpAddr::from(PROXY));
        c.send(&format!(
            "{}{{\"name\":\"{name}\",\"room\":\"dev\"}}\n",
            v1(client)
        ));
        c
    };
    let mut spam = join("192.0.2.50", "Spammer");
    spam.expect("*** Spammer joined");
    mina.expect("*** Spammer joined");
    mina.send("/ban 192.0.2.50 bots\n");
    mina.until("*** banned 192.0.2.50 from dev");
    spam.until("*** Mina banned an address: bots");
    assert!(spam.closed());
    // Whatever name it takes next, through the same proxy.
    let mut again = join("192.0.2.50", "Innocent");
    assert_eq!(again.line(), "*** error: you are banned from dev: bots");
    // Everyone else behind the proxy still gets in.
    let mut other = join("192.0.2.51", "Other");
    other.expect("*** Other joined");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_proxy_header_split_over_several_packets_is_read_to_its_end_and_no_further() {
    let server = chat_server(&[]);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(50));
    // Version 1 in three pieces, the last with the handshake.
    let mut one = Client::raw_from(server.addr, IpAddr::from(PROXY));
    one.send("PROXY TCP4 192.");
    pause();
    one.send("0.2.60 127.0.0.1 47");
    pause();
    one.send(&format!("11 8989\r\n{}", handshake("Split")));
    one.expect("*** Split joined");
    assert!(server.wait_log("addr=192.0.2.60:4711"));
    // Version 2: the fixed part in two pieces, then the addresses, then the handshake alone.
    let header = v2(1, 0x11, &v2_v4([192, 0, 2, 61], 4712));
    let mut two = Client::raw_from(server.addr, IpAddr::from(PROXY));
    two.send_bytes(&header[..7]);
    pause();
    two.send_bytes(&header[7..20]);
    pause();
    two.send_bytes(&header[20..]);
    pause();
    two.send(&handshake("Split2"));
    two.expect("*** Split2 joined");
    assert!(server.wait_log("addr=192.0.2.61:4712"));
}
