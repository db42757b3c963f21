//! The configuration file (`--config FILE`), with the real binary: precedence (flag, then
//! MACHAT_* variable, then file, then default), every kind of error with its file, line and
//! key, `machat config default | machat config check` meaning exactly the defaults, paths
//! relative to the file, and what the start-up log says.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{temp_dir, Endpoint, Server};

/// `machat ARGS` with `env` (and no other MACHAT_* variable), in `cwd`: exit code, stdout,
/// stderr.
fn machat(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machat"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MACHAT_") {
            cmd.env_remove(name);
        }
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("machat ran");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory with `name` holding `text`; returns (dir, file).
fn file_with(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// The value of `key` in the `config GROUP:` line of `group` in `machat config check`'s output.
fn value<'a>(out: &'a str, group: &str, key: &str) -> &'a str {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("config {group}: ")))
        .unwrap_or_else(|| panic!("no config {group} line in {out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn a_flag_beats_a_variable_beats_the_file_beats_the_default() {
    let (dir, file) = file_with(
        "m.toml",
        "[limits]\nmax_per_ip = 3\nmax_rooms = 7\nline_burst = 9\n\n[web]\nallowed_origins = [\"https://a.example\", \"https://b.example\"]\n",
    );
    let f = file.to_str().unwrap();
    let env = [("MACHAT_MAX_ROOMS", "8"), ("MACHAT_LINE_BURST", "10")];
    let (code, out, err) = machat(&["--line-burst", "11", "config", "check", f], &env, None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        value(&out, "limits", "max_per_ip"),
        "3",
        "file over default"
    );
    assert_eq!(
        value(&out, "limits", "max_rooms"),
        "8",
        "variable over file"
    );
    assert_eq!(
        value(&out, "limits", "line_burst"),
        "11",
        "flag over variable"
    );
    assert_eq!(value(&out, "limits", "max_line"), "8192", "default");
    assert_eq!(
        value(&out, "web", "allowed_origins"),
        "https://a.example,https://b.example"
    );
    // `--config` (and MACHAT_CONFIG) work for the server itself too, Go-style as well.
    let (code, out, _) = machat(&["-config", f, "config", "check"], &[], None);
    assert_eq!((code, value(&out, "limits", "max_per_ip")), (0, "3"));
    let (code, out, _) = machat(&["config", "check"], &[("MACHAT_CONFIG", f)], None);
    assert_eq!((code, value(&out, "limits", "max_per_ip")), (0, "3"));
    let (code, _, err) = machat(&["config", "check"], &[], None);
    assert_eq!(code, 2, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_error_names_the_file_the_line_and_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[limits]\nmax_per_ip = 5\nmax_line_rate = -1\n",
            ":3: [limits] max_line_rate: must be a number >= 0",
        ),
        (
            "[limits]\nmax_per_ip = \"5\"\n",
            ":2: [limits] max_per_ip: must be a number, not a string",
        ),
        (
            "[limits]\n\nmax_per_ip = -1\n",
            ":3: [limits] max_per_ip: bad value \"-1\"",
        ),
        (
            "[accounts]\nrequire_auth = \"yes\"\n",
            ":2: [accounts] require_auth: must be true or false, not a string",
        ),
        (
            "[chat]\naddr = 8989\n",
            ":2: [chat] addr: must be a string, not an integer",
        ),
        (
            "[web]\nallowed_hosts = [1]\n",
            ":2: [web] allowed_hosts: must be an array of strings",
        ),
        (
            "[history]\nhistory = \"disk\"\n",
            ":2: [history] history: bad value \"disk\"",
        ),
        (
            "[history]\nhistory_max_age = \"3w\"\n",
            ":2: [history] history_max_age: bad value \"3w\": unknown unit",
        ),
        ("\n[limit]\nmax_per_ip = 1\n", ":2: unknown table [limit]"),
        (
            "[limits]\nmax_per_ipp = 1\n",
            ":2: [limits] max_per_ipp: unknown key",
        ),
        (
            "[chat]\nmax_per_ip = 1\n",
            ":2: [chat] max_per_ip: unknown key (it belongs in [limits])",
        ),
        (
            "max_per_ip = 1\n",
            ":1: max_per_ip: a key outside a table (it belongs in [limits])",
        ),
        ("[limits]\nmax_per_ip = 1\n\nmax_rooms = = 2\n", ":4: "),
        ("[limits]\nmax_per_ip = 1\nmax_per_ip = 2\n", ":3: "),
        (
            "[tls]\ntls_cert = \"c.pem\"\n",
            ":2: [tls] tls_cert: --tls-cert and --tls-key go together",
        ),
    ];
    for (text, want) in cases {
        let (dir, file) = file_with("bad.toml", text);
        let f = file.to_str().unwrap();
        let want = format!("machat: {f}{want}");
        // At the start of the server, and from `machat config check`: the same error.
        for args in [
            vec!["--config", f, "-a", "127.0.0.1:0", "--http", "off"],
            vec!["config", "check", f],
        ] {
            let (code, _, err) = machat(&args, &[], None);
            assert_eq!(code, 2, "{args:?} with {text:?}: {err}");
            assert!(
                err.starts_with(&want),
                "{text:?}: want {want:?}, got {err:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    let (code, _, err) = machat(&["--config", "/nonexistent/machat.toml"], &[], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read /nonexistent/machat.toml"),
        "{err}"
    );
}

#[test]
fn the_default_file_checks_and_means_exactly_the_defaults() {
    let (code, default, err) = machat(&["config", "default"], &[], None);
    assert_eq!(code, 0, "{err}");
    for table in [
        "[chat]",
        "[web]",
        "[tls]",
        "[history]",
        "[limits]",
        "[accounts]",
        "[moderation]",
        "[cluster]",
        "[data]",
    ] {
        assert!(default.contains(&format!("\n{table}\n")), "{table} missing");
    }
    // Every flag of `--help` that has a heading is a key, with its doc.
    let (_, help, _) = machat(&["--help"], &[], None);
    let options = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'));
    let longs: Vec<&str> = options
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("--")))
        .collect();
    assert!(longs.len() > 30, "{help}");
    for long in longs {
        if ["help", "version", "config"].contains(&long) {
            continue;
        }
        let key = long.replace('-', "_");
        assert!(
            default.contains(&format!("\n# {key} = ")),
            "{key} not in the default file"
        );
    }
    assert!(default
        .contains("# Most connections from one IP address; 0 = no limit.\n# max_per_ip = 4096\n"));
    let (dir, file) = file_with("default.toml", &default);
    let (empty_dir, empty) = file_with("empty.toml", "");
    let (code, printed, err) = machat(&["config", "check", file.to_str().unwrap()], &[], None);
    assert_eq!(code, 0, "{err}");
    let (code, defaults, _) = machat(&["config", "check", empty.to_str().unwrap()], &[], None);
    assert_eq!(code, 0);
    let settings = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("config from"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(settings(&printed), settings(&defaults));
    assert_eq!(settings(&printed).len(), 10, "{printed}");
    assert_eq!(value(&printed, "limits", "max_per_ip"), "4096");
    assert_eq!(value(&printed, "chat", "addr"), "localhost:8989");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(empty_dir);
}

#[test]
fn relative_paths_in_a_file_are_relative_to_its_directory() {
    let (dir, file) = file_with(
        "etc/machat.toml",
        "[data]\ndata_dir = \"data\"\n[moderation]\nadmin_token_file = \"admin.token\"\n",
    );
    let etc = dir.join("etc");
    let elsewhere = temp_dir();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = machat(&["config", "check", f], &[], Some(&elsewhere));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        value(&out, "data", "data_dir"),
        etc.join("data").to_str().unwrap()
    );
    assert_eq!(
        value(&out, "moderation", "admin_token_file"),
        etc.join("admin.token").to_str().unwrap()
    );
    // On the command line, relative to the working directory, as ever.
    let (_, out, _) = machat(
        &["--data-dir", "here", "config", "check", f],
        &[],
        Some(&elsewhere),
    );
    assert_eq!(value(&out, "data", "data_dir"), "here");
    // `--config` is global: `machat --config FILE user ...` uses the file's data dir.
    let mut child = Command::new(env!("CARGO_BIN_EXE_machat"))
        .args(["--config", f, "user", "add", "Mina"])
        .current_dir(&elsewhere)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, listed, _) = machat(&["user", "list", "--config", f], &[], None);
    assert_eq!((code, listed.as_str()), (0, "Mina\n"));
    assert!(etc.join("data").is_dir());
    assert!(!elsewhere.join("data").exists());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(elsewhere);
}

#[test]
fn the_start_up_log_shows_the_configuration_the_data_dir_and_where_to_go() {
    let (dir, file) = file_with(
        "m.toml",
        "[limits]\nmax_per_ip = 3\n[cluster]\nnats_replicas = 1\n",
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machat"));
    cmd.current_dir(&dir);
    let f = file.to_str().unwrap();
    let server = Server::start_with(
        cmd,
        &[
            "--config",
            f,
            "--data-dir",
            "rel-data",
            "--http",
            "127.0.0.1:0",
        ],
    );
    assert!(server.wait_log("config limits: "));
    assert!(
        server.log_contains("max_per_ip=3 "),
        "{:?}",
        server.log.lock().unwrap()
    );
    assert!(server.log_contains("config chat: addr=127.0.0.1:0 tls_addr=off"));
    assert!(server.log_contains(&format!("config from: file {f} (max_per_ip nats_replicas)")));
    let abs = dir.join("rel-data");
    assert!(server.log_contains(&format!("data dir: {} (new: just created)", abs.display())));
    let addr = server.addr();
    assert!(server.log_contains(&format!("chat: nc 127.0.0.1 {}", addr.port())));
    let http = server.http().unwrap();
    assert!(server.wait_log(&format!("web: http://{http}/")));
    drop(server);
    // Started again: the directory is no longer new.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machat"));
    cmd.current_dir(&dir);
    let server = Server::start_with(cmd, &["--data-dir", "rel-data"]);
    assert!(server.wait_log(&format!("data dir: {}", abs.display())));
    assert!(!server.log_contains("just created"));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
