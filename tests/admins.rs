//! Server admins (issue 13, first step) over the real binary: `machat user add NAME --admin`,
//! `machat user admin NAME on|off`, the ` (admin)` marker of `machat user list`, a data dir from
//! before admins, a running server following a change of role, and the same in cluster mode.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{temp_dir, user_add, Client, Nats, Server, TIMEOUT};

/// `machat user ARGS` at `place` (`--data-dir DIR` or `--nats URL`) with `input` on stdin:
/// exit status, stdout, stderr.
fn machat_user(args: &[&str], place: &[&str], input: &str) -> (Option<i32>, String, String) {
    let all: Vec<&str> = args.iter().chain(place).copied().collect();
    common::machat_user(&all, input)
}

fn local(dir: &Path) -> [&str; 2] {
    ["--data-dir", dir.to_str().unwrap()]
}

/// `machat user ARGS` that must succeed; its stdout.
fn ok(args: &[&str], place: &[&str], input: &str) -> String {
    let (code, out, err) = machat_user(args, place, input);
    assert_eq!(code, Some(0), "machat user {args:?}: {err}");
    out
}

#[test]
fn admins_are_added_listed_given_and_taken() {
    let dir = temp_dir();
    let at = local(&dir);
    user_add(&dir, "Mina", "pw");
    let (code, _, err) = machat_user(&["add", "Root", "--admin"], &at, "rootpw\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Root is registered as an admin"), "{err}");
    // Names that are no admin are listed exactly as before.
    assert_eq!(ok(&["list"], &at, ""), "Mina\nRoot (admin)\n");

    let (code, _, err) = machat_user(&["admin", "Mina", "on"], &at, "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Mina is now an admin"), "{err}");
    let (code, _, err) = machat_user(&["admin", "Root", "off"], &at, "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Root is no longer an admin"), "{err}");
    assert_eq!(ok(&["list"], &at, ""), "Mina (admin)\nRoot\n");

    // A new password keeps the role; --admin gives it to a name already registered.
    ok(&["add", "Mina"], &at, "newpw\n");
    ok(&["add", "Root", "--admin"], &at, "rootpw2\n");
    assert_eq!(ok(&["list"], &at, ""), "Mina (admin)\nRoot (admin)\n");

    // Only registered names hold roles: an unknown name, or a look-alike, is an error.
    for name in ["Ghost", "MINA", "\u{41c}ina"] {
        let (code, out, err) = machat_user(&["admin", name, "on"], &at, "");
        assert_eq!(code, Some(1), "{name}: {err}");
        assert_eq!(out, "");
        assert_eq!(err, format!("machat: {name} is not registered\n"));
    }
    // A bad role is a usage error, as clap's are.
    let (code, _, err) = machat_user(&["admin", "Mina", "yes"], &at, "");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(ok(&["list"], &at, ""), "Mina (admin)\nRoot (admin)\n");

    // The passwords still log in, with or without the role.
    let d = dir.to_str().unwrap();
    let server = Server::start(&["--data-dir", d]);
    for (name, pw) in [("Mina", "newpw"), ("Root", "rootpw2")] {
        let mut c = Client::raw(server.addr);
        c.send(&format!(
            r#"{{"name":"{name}","room":"r","password":"{pw}"}}"#
        ));
        assert_eq!(c.line(), format!("*** {name} joined"));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_in_a_data_dir_without_a_database_is_unknown() {
    let dir = temp_dir();
    let (code, _, err) = machat_user(&["admin", "Root", "on"], &local(&dir), "");
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err, "machat: Root is not registered\n");
    assert!(!dir.join("history.db").exists(), "nothing was created");
}

/// A data directory written before server admins (its users table has no `admin` column) keeps
/// its users and their passwords, and takes the role once migrated.
#[test]
fn an_old_data_dir_is_migrated_and_keeps_its_users() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("history.db");
    let old = rusqlite::Connection::open(&db).unwrap();
    old.execute_batch("CREATE TABLE users (name TEXT PRIMARY KEY, hash TEXT NOT NULL)")
        .unwrap();
    for (name, pw) in [("Mina", "minapw"), ("Bob", "bobpw")] {
        let hash = machat::auth::hash(pw).unwrap();
        old.execute("INSERT INTO users VALUES (?1, ?2)", [name, &hash])
            .unwrap();
    }
    drop(old);
    let at = local(&dir);

    // The server opens it first: it reads the users (and adds the column as it does).
    let server = Server::start(&["--data-dir", dir.to_str().unwrap()]);
    let mut c = Client::raw(server.addr);
    c.send(r#"{"name":"Mina","room":"r","password":"minapw"}"#);
    assert_eq!(c.line(), "*** Mina joined");
    let mut c = Client::raw(server.addr);
    c.send(r#"{"name":"Bob","room":"r","password":"wrong"}"#);
    assert_eq!(c.line(), "*** error: authentication failed");
    drop(server);

    assert_eq!(ok(&["list"], &at, ""), "Bob\nMina\n");
    ok(&["admin", "Bob", "on"], &at, "");
    assert_eq!(ok(&["list"], &at, ""), "Bob (admin)\nMina\n");
    let check = rusqlite::Connection::open(&db).unwrap();
    let admins: Vec<(String, bool)> = check
        .prepare("SELECT name, admin FROM users ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        admins,
        [("Bob".to_string(), true), ("Mina".to_string(), false)]
    );
    drop(check);

    // `machat user` can be the first to open an old file too.
    let dir2 = temp_dir();
    std::fs::create_dir_all(&dir2).unwrap();
    let old = rusqlite::Connection::open(dir2.join("history.db")).unwrap();
    old.execute_batch(
        "CREATE TABLE users (name TEXT PRIMARY KEY, hash TEXT NOT NULL);
         INSERT INTO users VALUES ('Zed', 'not a real hash');",
    )
    .unwrap();
    drop(old);
    let at2 = local(&dir2);
    assert_eq!(ok(&["list"], &at2, ""), "Zed\n");
    ok(&["add", "Ann", "--admin"], &at2, "pw\n");
    assert_eq!(ok(&["list"], &at2, ""), "Ann (admin)\nZed\n");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

/// What every connection asks ([`machat::auth::Users::is_admin`]) follows `machat user` while
/// the server runs, as registered names do (the `machat-users` thread).
#[test]
fn a_running_server_follows_a_change_of_role() {
    let dir = temp_dir();
    user_add(&dir, "Mina", "pw");
    let users = machat::auth::Users::load(&machat::settings::AuthSettings {
        data_dir: dir.clone(),
        require_auth: false,
        ..Default::default()
    })
    .unwrap();
    assert!(users.is_registered("Mina") && !users.is_admin("Mina"));
    let at = local(&dir);
    let eventually = |want: bool| {
        let deadline = Instant::now() + TIMEOUT;
        while users.is_admin("Mina") != want {
            assert!(Instant::now() < deadline, "never saw Mina's admin = {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    ok(&["admin", "Mina", "on"], &at, "");
    eventually(true);
    for not in ["mina", "MINA", "\u{41c}ina", "Bob"] {
        assert!(!users.is_admin(not), "{not}");
    }
    ok(&["admin", "Mina", "off"], &at, "");
    eventually(false);
    ok(&["add", "Root", "--admin"], &at, "pw\n");
    let deadline = Instant::now() + TIMEOUT;
    while !users.is_admin("Root") {
        assert!(
            Instant::now() < deadline,
            "never saw Root added as an admin"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&["remove", "Root"], &at, "");
    let deadline = Instant::now() + TIMEOUT;
    while users.is_admin("Root") {
        assert!(
            Instant::now() < deadline,
            "Root stayed an admin once removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// In cluster mode the role is in the bucket's record: listed, changed, and an admin's record
/// (JSON, where a name that is no admin keeps the bare hash) still logs in on a node.
#[test]
fn cluster_admins_are_kept_in_the_bucket() {
    let nats = Nats::start();
    let url = nats.url();
    let at = ["--nats", url.as_str()];
    let (code, _, err) = machat_user(&["add", "Root", "--admin"], &at, "rootpw\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("Root is registered as an admin in the cluster"),
        "{err}"
    );
    ok(&["add", "Mina"], &at, "minapw\n");
    assert_eq!(ok(&["list"], &at, ""), "Mina\nRoot (admin)\n");

    let node = Server::start(&["--nats", url.as_str()]);
    let mut c = Client::raw(node.addr);
    c.send(r#"{"name":"Root","room":"r","password":"rootpw"}"#);
    assert_eq!(c.line(), "*** Root joined");

    ok(&["admin", "Mina", "on"], &at, "");
    ok(&["admin", "Root", "off"], &at, "");
    assert_eq!(ok(&["list"], &at, ""), "Mina (admin)\nRoot\n");
    // A new password keeps the role.
    ok(&["add", "Mina"], &at, "minapw2\n");
    assert_eq!(ok(&["list"], &at, ""), "Mina (admin)\nRoot\n");
    let mut c = Client::raw(node.addr);
    c.send(r#"{"name":"Mina","room":"r","password":"minapw2"}"#);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let line = c.line();
        if line == "*** Mina joined" {
            break;
        }
        // The node may not have followed the new password yet.
        assert_eq!(line, "*** error: authentication failed");
        assert!(
            Instant::now() < deadline,
            "the node never took the new password"
        );
        c = Client::raw(node.addr);
        c.send(r#"{"name":"Mina","room":"r","password":"minapw2"}"#);
    }

    let (code, _, err) = machat_user(&["admin", "Ghost", "on"], &at, "");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Ghost is not registered in the cluster"),
        "{err}"
    );
    ok(&["remove", "Mina"], &at, "");
    let (code, _, err) = machat_user(&["admin", "Mina", "on"], &at, "");
    assert_eq!(code, Some(1), "a removed name holds no role: {err}");
}
