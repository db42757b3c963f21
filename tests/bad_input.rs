//! Every kind of bad input over a real socket: the offender gets `*** error: REASON` and is
//! closed (or, where the rule says so, the input is cleaned or refused and the connection kept),
//! and everyone else carries on.

mod common;

use std::time::{Duration, Instant};

use common::{expect_refused, Client, Endpoint, Server};

#[test]
fn bad_handshakes_are_refused_with_a_reason() {
    let server = Server::start(&[]);
    let mut bystander = server.connect("bystander", "r");
    let cases: &[(&[u8], &str)] = &[
        (
            b"hello there\n",
            "*** error: start with {\"name\":\"you\",\"room\":\"lobby\"}",
        ),
        (b"{\"name\": \"a\", \"room\": }", "invalid handshake JSON"),
        (b"[\"a\", \"r\"]", "must be a JSON object"),
        (b"\"just a string\"", "must be a JSON object"),
        (b"42 ", "must be a JSON object"),
        (b"{\"room\":\"r\"}", "missing \"name\""),
        (b"{\"name\":\"a\"}", "missing \"room\""),
        (b"{\"name\":null,\"room\":\"r\"}", "missing \"name\""),
        (b"{\"name\":7,\"room\":\"r\"}", "\"name\" must be a string"),
        (
            b"{\"name\":\"a\",\"room\":[\"r\"]}",
            "\"room\" must be a string",
        ),
        (b"{\"name\":\"\",\"room\":\"r\"}", "name must not be empty"),
        (b"{\"name\":\"a\",\"room\":\"\"}", "room must not be empty"),
        (
            b"{\"name\":\"Bob\\nAlice\",\"room\":\"r\"}",
            "names cannot contain U+000A (a control character)",
        ),
        (
            b"{\"name\":\"a b\",\"room\":\"r\"}",
            "names cannot contain spaces: use _ or - instead",
        ),
        (
            b"{\"name\":\"a:b\",\"room\":\"r\"}",
            "names cannot contain \":\" (it ends the name in a message line)",
        ),
        (
            b"{\"name\":\"***\",\"room\":\"r\"}",
            "names cannot contain \"*\" (it marks the server's lines)",
        ),
        (
            b"{\"name\":\"a/b\",\"room\":\"r\"}",
            "names cannot contain \"/\" (it starts commands)",
        ),
        (
            b"{\"name\":\"a\\u001b[31m\",\"room\":\"r\"}",
            "names cannot contain U+001B (a control character)",
        ),
        (
            b"{\"name\":\"a\",\"room\":\"r\\tx\"}",
            "rooms cannot contain U+0009 (a control character)",
        ),
        (
            b"{\"name\":\"a\",\"room\":\"r\",\"format\":\"xml\"}",
            "\"format\" must be",
        ),
        (
            b"{\"name\":\"bystander\",\"room\":\"r\"}",
            "name bystander is already taken in room r",
        ),
    ];
    for (hs, reason) in cases {
        expect_refused(&server, hs, reason);
    }
    let long_name = format!("{{\"name\":\"{}\",\"room\":\"r\"}}", "n".repeat(33));
    expect_refused(
        &server,
        long_name.as_bytes(),
        "name is longer than 32 characters",
    );
    let long_room = format!("{{\"name\":\"a\",\"room\":\"{}\"}}", "é".repeat(65));
    expect_refused(
        &server,
        long_room.as_bytes(),
        "room is longer than 64 characters",
    );
    // 32 characters of 2 bytes each is a fine name.
    let mut ok = server.connect(&"é".repeat(32), "r");
    ok.send("still fine\n");
    assert_eq!(ok.line(), format!("{}:still fine", "é".repeat(32)));
    // The bystander saw only that join and message, and is still served.
    bystander.expect(&format!("*** {} joined", "é".repeat(32)));
    bystander.expect(&format!("{}:still fine", "é".repeat(32)));
    bystander.send("ok\n");
    bystander.expect("bystander:ok");
}

#[test]
fn handshake_over_4_kib_is_refused_even_without_an_end() {
    let server = Server::start(&[]);
    let big = format!(
        "{{\"name\":\"a\",\"room\":\"r\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    expect_refused(
        &server,
        big.as_bytes(),
        "handshake too large (over 4096 bytes)",
    );
    // An unterminated handshake is cut off as soon as it passes the limit.
    let mut c = Client::raw(server.addr);
    c.send("{\"pad\":\"");
    c.send_bytes(&[b'x'; 5000]);
    assert_eq!(c.line(), "*** error: handshake too large (over 4096 bytes)");
    assert!(c.closed());
}

#[test]
fn handshake_must_complete_in_time() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    let start = Instant::now();
    let mut silent = Client::raw(server.addr);
    let mut partial = Client::raw(server.addr);
    partial.send("{\"name\":\"a\",");
    assert_eq!(silent.line(), "*** error: handshake timeout");
    assert_eq!(partial.line(), "*** error: handshake timeout");
    assert!(silent.closed() && partial.closed());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Sixty seconds: long enough for a person typing the handshake into `nc` (issue 15); silent
/// connections are bounded per address by `--max-handshakes-per-ip` instead.
#[test]
fn default_handshake_timeout_is_sixty_seconds() {
    let server = Server::start(&[]);
    let start = Instant::now();
    let mut silent = Client::raw(server.addr);
    let line = silent.line_within(Duration::from_secs(70));
    assert_eq!(line.as_deref(), Some("*** error: handshake timeout"));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(59500) && took < Duration::from_secs(65),
        "{took:?}"
    );
}

/// Issue 15: connections of one address still in their handshake are bounded (slow loris
/// under a long handshake timeout); past the bound a newcomer is refused at once, other
/// addresses and joined members are not held back, and a finished handshake frees its place.
#[test]
fn handshakes_waiting_from_one_address_are_bounded() {
    let server = Server::start(&["--max-handshakes-per-ip", "3"]);
    let mut member = server.connect("member", "r");
    let mut waiting: Vec<Client> = (0..3).map(|_| Client::raw(server.addr)).collect();
    // The three are counted once the server has taken them up (each runtime thread counts its
    // own, so not in the order of the connects): wait for their `connect` lines, the member's
    // and theirs. Then a fourth is refused at once.
    let taken_up = || {
        let log = server.log.lock().unwrap();
        log.iter().filter(|l| l.contains(" connect id=")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken_up() < 4 {
        assert!(Instant::now() < deadline, "the three were never taken up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = loop {
        let mut c = Client::raw(server.addr);
        match c.line_within(Duration::from_millis(500)) {
            Some(line) => break (c, line),
            None if Instant::now() < deadline => continue,
            None => panic!("a fourth waiting connection was never refused"),
        }
    };
    assert_eq!(
        refused.1,
        "*** error: too many connections from your address waiting to start"
    );
    assert!(refused.0.closed());
    // Another address is not held back, and neither is a member.
    let other: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut elsewhere = Client::raw_from(server.addr, other);
    elsewhere.send(r#"{"name":"elsewhere","room":"r"}"#);
    elsewhere.expect("*** elsewhere joined");
    member.until("*** elsewhere joined");
    // One of the three sends its handshake: its place is free for the next one.
    waiting[0].send(r#"{"name":"late","room":"r"}"#);
    waiting[0].expect("*** late joined");
    let mut next = Client::raw(server.addr);
    next.send(r#"{"name":"next","room":"r"}"#);
    next.expect("*** next joined");
    member.until("*** next joined");
    assert!(server.wait_log("waiting to start"));
    drop(waiting);
}

/// Issue 15: someone who types text into `nc` is told what to send, as one error line; a
/// handshake that starts like JSON keeps the parser's words on what is wrong.
#[test]
fn text_typed_into_nc_is_told_what_to_send() {
    let server = Server::start(&[]);
    for typed in ["hello\n", "Mina\n", "  /join lobby\n", "привет\n"] {
        let mut c = Client::raw(server.addr);
        c.send(typed);
        assert_eq!(
            c.line(),
            "*** error: start with {\"name\":\"you\",\"room\":\"lobby\"}",
            "{typed:?}"
        );
        assert!(c.closed());
    }
    expect_refused(&server, b"{\"name\":Mina}\n", "invalid handshake JSON");
    // And then the hint works.
    let mut c = Client::raw(server.addr);
    c.send("{\"name\":\"you\",\"room\":\"lobby\"}\n");
    c.expect("*** you joined");
}

/// The exact HTTP answer a browser on a chat port gets for `body`.
fn http_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn chat_port_page(web: &str) -> String {
    format!(
        "This is machat's chat port: connect with nc, machat-client or a MaChat client. \
         {web}\nWith nc, start with {{\"name\":\"you\",\"room\":\"lobby\"}} and press Enter.\n"
    )
}

/// Issue 15: a browser (or curl) pointed at the chat port gets a short plain-text HTTP answer
/// that says where the web page is, however its request is split, and then the close.
#[test]
fn a_browser_on_the_chat_port_is_told_where_the_web_page_is() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server.http.expect("http on");
    let want = http_answer(&chat_port_page(&format!(
        "The web page is at http://{http}/"
    )));
    let request = "GET / HTTP/1.1\r\nHost: localhost:8989\r\nUser-Agent: test\r\n\r\n";
    let mut c = Client::raw(server.addr);
    c.send(request);
    assert_eq!(String::from_utf8(c.rest()).unwrap(), want);
    // Byte by byte, as a slow network might deliver it.
    let mut c = Client::raw(server.addr);
    for b in request.bytes() {
        c.send_bytes(&[b]);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(String::from_utf8(c.rest()).unwrap(), want);
    // HEAD: the head alone.
    let mut c = Client::raw(server.addr);
    c.send("HEAD /favicon.ico HTTP/1.0\r\n\r\n");
    let head = String::from_utf8(c.rest()).unwrap();
    assert_eq!(head, want[..want.find("\r\n\r\n").unwrap() + 4]);
    // A request line whose headers never end is answered once the handshake limit is reached.
    let mut c = Client::raw(server.addr);
    c.send("GET / HTTP/1.1\r\nX-Pad: ");
    c.send_bytes(&[b'x'; 5000]);
    assert_eq!(String::from_utf8(c.rest()).unwrap(), want);
    // Not HTTP after all: the typed-text hint.
    let mut c = Client::raw(server.addr);
    c.send("GET lost\n");
    c.expect("*** error: start with {\"name\":\"you\",\"room\":\"lobby\"}");
    assert!(server.wait_log("an HTTP request on the chat port"));
}

/// With the web side on every address, the page's host is the one the browser asked for,
/// when it is a plain host name or address; anything else is never shown back.
#[test]
fn a_browser_is_sent_to_the_host_it_asked_for_on_a_wildcard_web_address() {
    let server = Server::start(&["--http", "0.0.0.0:0"]);
    let port = server.http.expect("http on").port();
    for (host, shown) in [
        ("chat.example.com:8989", "chat.example.com".to_owned()),
        ("[::1]:8989", "[::1]".to_owned()),
        ("<script>alert(1)</script>", "HOST".to_owned()),
    ] {
        let mut c = Client::raw(server.addr);
        c.send(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        let page = format!("The web page is at http://{shown}:{port}/");
        assert_eq!(
            String::from_utf8(c.rest()).unwrap(),
            http_answer(&chat_port_page(&page)),
            "{host}"
        );
    }
}

/// With the web side off, the browser is told so.
#[test]
fn a_browser_is_told_when_the_web_page_is_off() {
    let server = Server::start(&[]);
    let mut c = Client::raw(server.addr);
    c.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let page = "This server's web page is off (--http off).";
    assert_eq!(
        String::from_utf8(c.rest()).unwrap(),
        http_answer(&chat_port_page(page))
    );
}

#[test]
fn long_lines_are_refused_discarded_and_the_connection_kept() {
    let server = Server::start(&[]);
    let mut a = server.connect("a", "r");
    let mut b = server.connect("b", "r");
    a.expect("*** b joined");
    let exactly = "x".repeat(8192);
    a.send(&format!("{exactly}\r\n"));
    assert_eq!(a.line(), format!("a:{exactly}"));
    a.send(&format!("{}\nafter\n", "y".repeat(8193)));
    a.expect("*** error: line too long");
    a.expect("a:after");
    b.expect(&format!("a:{exactly}"));
    b.expect("a:after");
}

#[test]
fn a_100_mib_line_does_not_grow_the_server() {
    let server = Server::start(&["--max-line-rate", "0"]);
    let mut a = server.connect("a", "r");
    let mut other = server.connect("other", "r");
    a.expect("*** other joined");
    let before = server.rss_kib();
    let chunk = vec![b'z'; 1 << 20];
    let start = Instant::now();
    for _ in 0..100 {
        a.send_bytes(&chunk);
    }
    a.send("\nnext\n");
    a.expect("*** error: line too long");
    a.expect("a:next");
    let after = server.rss_kib();
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB"
    );
    other.expect("a:next");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn invalid_utf8_and_control_characters_are_cleaned_not_fatal() {
    let server = Server::start(&[]);
    let mut a = server.connect("a", "r");
    let mut b = server.connect("b", "r");
    a.expect("*** b joined");
    a.send_bytes(b"caf\xc3\xa9 \xc3\x28 \xf0\x9f\x98\x80 \x1b[1;31mbold\x1b[0m\x07\n");
    let want = "a:café \u{fffd}( 😀 bold";
    assert_eq!(a.line(), want);
    assert_eq!(b.line(), want);
}

#[test]
fn a_flood_is_paced_not_dropped_and_others_are_not_slowed() {
    let server = Server::start(&["--max-line-rate", "20", "--line-burst", "10"]);
    let mut flooder = server.connect("flooder", "r");
    let mut calm = server.connect("calm", "r");
    let mut watcher = server.connect("watcher", "r");
    flooder.until("*** watcher joined");
    calm.until("*** watcher joined");
    let start = Instant::now();
    let lines: String = (0..50).map(|i| format!("flood {i}\n")).collect();
    flooder.send(&lines);
    std::thread::sleep(Duration::from_millis(300));
    calm.send("calm here\n");
    let mut seen = Vec::new();
    let mut calm_at = None;
    while seen.len() < 50 {
        let l = watcher.line();
        if l == "calm:calm here" {
            calm_at = Some(start.elapsed());
        } else {
            seen.push(l);
        }
    }
    let took = start.elapsed();
    let want: Vec<String> = (0..50).map(|i| format!("flooder:flood {i}")).collect();
    assert_eq!(seen, want, "nothing dropped, in order");
    // 10 at once, then 20 a second for the other 40: about 2 s.
    assert!(took >= Duration::from_millis(1700), "not paced: {took:?}");
    let calm_at = calm_at.expect("the calm line arrived during the flood");
    assert!(
        calm_at < Duration::from_millis(1000),
        "calm line delayed to {calm_at:?}"
    );
}

#[test]
fn a_client_that_never_reads_does_not_slow_the_room_or_grow_memory() {
    // 4,000 lines a second: 80 times the default, so the test takes seconds, not minutes.
    let server = Server::start(&["--max-line-rate", "4000", "--line-burst", "200"]);
    let never = server.connect("never", "r");
    let mut sender = server.connect("sender", "r");
    let mut reader = server.connect("reader", "r");
    sender.until("*** reader joined");
    let before = server.rss_kib();
    let start = Instant::now();
    let payload = "p".repeat(400);
    // The sender reads its own echo (else it would be the one cut off as a slow consumer) and
    // keeps at most 1,000 lines in flight: fast, but a sender that listens.
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let echo = {
        let mut s = sender.stream.try_clone().unwrap();
        let echoed = echoed.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut newlines = 0;
            while newlines < 20_000 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => newlines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
                }
                echoed.store(newlines, std::sync::atomic::Ordering::Release);
            }
        })
    };
    let writer = {
        let mut s = sender.stream.try_clone().unwrap();
        let payload = payload.clone();
        let echoed = echoed.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut batch = String::new();
            for i in 0..20_000 {
                batch.push_str(&format!("{i} {payload}\n"));
                if i % 100 == 99 {
                    s.write_all(batch.as_bytes()).unwrap();
                    batch.clear();
                    while i + 1 - echoed.load(std::sync::atomic::Ordering::Acquire) > 1000
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
        })
    };
    let mut got = 0;
    let mut peak = 0;
    let mut never_left = false;
    while got < 20_000 {
        let Some(l) = reader.line_within(Duration::from_secs(10)) else {
            panic!("reader starved at {got}: {:?}", server.log.lock().unwrap());
        };
        if l.starts_with("sender:") {
            assert_eq!(l, format!("sender:{got} {payload}"));
            got += 1;
        } else {
            assert_eq!(l, "*** never left");
            never_left = true;
        }
        if got % 1000 == 0 {
            peak = peak.max(server.rss_kib());
        }
    }
    writer.join().unwrap();
    echo.join().unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "20,000 lines took {took:?}");
    // 8 MiB of lines were sent; the never-reader may hold at most --max-pending (1 MiB) of them.
    assert!(
        peak < before + 8 * 1024,
        "RSS {before} KiB -> peak {peak} KiB"
    );
    // The never-reader was cut off (the kernel's socket buffers hold a few MiB; the rest
    // overflowed its queue).
    assert!(
        server.wait_log("slow consumer"),
        "no slow-consumer log line"
    );
    if !never_left {
        reader.until("*** never left");
    }
    drop(never);
}

#[test]
fn a_slow_consumer_is_told_and_disconnected() {
    let server = Server::start(&["--max-line-rate", "0", "--max-pending", "65536"]);
    let mut slow = server.connect("slow", "r");
    let mut sender = server.connect("sender", "r");
    let line = format!("{}\n", "q".repeat(1000));
    let batch = line.repeat(16);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_left = false;
    while !server.log_contains("slow consumer") && Instant::now() < deadline {
        sender.send(&batch);
        // The sender reads its own echo, so it never falls behind itself.
        let mut echoed = 0;
        while echoed < 16 {
            let l = sender.line();
            if l.starts_with("sender:q") {
                echoed += 1;
            } else {
                assert_eq!(l, "*** slow left");
                saw_left = true;
            }
        }
    }
    assert!(server.wait_log("slow consumer"), "never cut off");
    assert!(server.wait_log("name=slow"), "the wrong client was cut off");
    // Reading now, the slow client finds the stream end: the error line if it fit, then close.
    let rest = slow.rest();
    let text = String::from_utf8_lossy(&rest);
    if text.contains("*** error") {
        assert!(
            text.contains("*** error: slow consumer"),
            "{}",
            &text[text.len().saturating_sub(200)..]
        );
    }
    if !saw_left {
        sender.until("*** slow left");
    }
}

#[test]
fn lookalike_names_with_invisible_characters_are_refused() {
    let server = Server::start(&[]);
    let mut mina = server.connect("Mina", "r");
    // A zero-width space, a right-to-left override, a word joiner: each would let a name pass
    // for another in a member list or reorder what others see.
    for (escaped, code) in [
        ("Mina\\u200b", "U+200B"),
        ("\\u202eaniM", "U+202E"),
        ("Mi\\u2060na", "U+2060"),
    ] {
        expect_refused(
            &server,
            format!("{{\"name\":\"{escaped}\",\"room\":\"r\"}}").as_bytes(),
            &format!("names cannot contain {code} (an invisible character)"),
        );
    }
    let mut bob = server.connect("Bob", "r");
    mina.expect("*** Bob joined");
    bob.send("/nick Mina\u{200b}\n");
    bob.expect(
        "*** error: usage: /nick NAME (names cannot contain U+200B (an invisible character))",
    );
    assert!(mina.quiet_for(Duration::from_millis(300)));
}

/// Issue 11, item 6: the block-list of invisible characters missed variation selectors, tag
/// characters, Mongolian free variation selectors, musical and shorthand format controls: a
/// name with one of them joined beside the name without. Names and rooms now take letters,
/// marks, digits, punctuation and symbols only, and never a default-ignorable character.
#[test]
fn invisible_format_characters_are_refused_in_names_and_rooms() {
    let server = Server::start(&[]);
    let mut alice = server.connect("Alice", "r");
    for (escaped, code) in [
        ("Alice\\ufe00", "U+FE00"),
        ("Alice\\udb40\\udd00", "U+E0100"),
        ("Alice\\udb40\\udc41", "U+E0041"),
        ("Alice\\udb40\\udc01", "U+E0001"),
        ("Alice\\u180b", "U+180B"),
        ("Alice\\u180f", "U+180F"),
        ("Alice\\ud834\\udd73", "U+1D173"),
        ("Alice\\ud82f\\udca0", "U+1BCA0"),
        ("Alice\\u200d", "U+200D"),
        ("Alice\\u3164", "U+3164"),
        ("Alice\\ue000", "U+E000"),
    ] {
        expect_refused(
            &server,
            format!("{{\"name\":\"{escaped}\",\"room\":\"r\"}}").as_bytes(),
            &format!("names cannot contain {code} ("),
        );
        expect_refused(
            &server,
            format!("{{\"name\":\"x\",\"room\":\"{escaped}\"}}").as_bytes(),
            &format!("rooms cannot contain {code} ("),
        );
    }
    alice.send("/nick Alice\u{e0100}\n");
    assert!(alice.line().starts_with(
        "*** error: usage: /nick NAME (names cannot contain U+E0100 (an invisible character)"
    ));
    // Letters of any script, marks, digits, punctuation and symbols are all still fine.
    for name in [
        "Ünïcødé_名前-1",
        "o'brien",
        "j.doe",
        "<b>Eve",
        "🦀",
        "नमस्ते",
        "x+y=z",
    ] {
        let _c = server.connect(name, "ok");
    }
}

#[test]
fn serde_json_private_keys_cannot_smuggle_a_handshake() {
    let server = Server::start(&[]);
    expect_refused(
        &server,
        br#"{"name":{"$serde_json::private::RawValue":"\"Mina\""},"room":"r"}"#,
        "\"name\" must be a string",
    );
    expect_refused(
        &server,
        br#"{"$serde_json::private::RawValue":"{\"name\":\"Mina\",\"room\":\"r\"}"}"#,
        "handshake is missing \"name\"",
    );
}
