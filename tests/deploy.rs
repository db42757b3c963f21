//! Running machat for real (issue 15): the Debian package installed with `dpkg -i` and run as
//! its own user with its own settings, and the container image built from the Dockerfile and
//! run as a non-root user with its data in a volume. Both change the machine (a package, a
//! system user, container images), so they need root, as the test command does for the tools it
//! installs (`scripts/test.sh` installs podman, runc and debootstrap when missing).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ws::get;
use common::{log_in, Client, Endpoint, Server};

/// The longest a packaging or container command may take (a debootstrap fetches ~40 MB).
const SLOW: Duration = Duration::from_secs(300);

/// Runs `cmd` to its end, for at most `limit`; its output. A command that does not end in
/// time is killed and fails the test.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Runs `cmd`, which must succeed; its stdout.
fn ok(cmd: &mut Command, limit: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn need_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the deployment tests install a package and run containers: run the suite as root \
         (scripts/test.sh, as CI does)"
    );
}

/// The directory of the binaries under test: the server's, and the terminal client's beside it
/// (built by the workspace's `cargo test`).
fn bin_dir() -> PathBuf {
    let machat = PathBuf::from(env!("CARGO_BIN_EXE_machat"));
    let dir = machat.parent().expect("a directory").to_path_buf();
    assert!(
        dir.join("machat-client").is_file(),
        "no machat-client beside {}: build the workspace first (cargo build -p machat-client)",
        machat.display()
    );
    dir
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Removes the package and what it left, so that every run installs on a clean machine and
/// leaves one (the data dir is kept by a purge, on purpose: see packaging/postrm).
fn purge_package() {
    let _ = run(Command::new("dpkg").args(["--purge", "machat"]), SLOW);
    let _ = std::fs::remove_dir_all("/var/lib/machat");
}

struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        purge_package();
    }
}

/// The package: built from the test's binaries with scripts/package-deb.sh, installed with
/// `dpkg -i`; its unit passes `systemd-analyze verify`; the installed binary runs with the
/// installed settings as the package's user (flags still win over the file: the test's ports);
/// chat and web work; `machat user add` run as that user registers a name the server then
/// knows; history lands in /var/lib/machat, owned by the service's user.
#[test]
fn the_debian_package_installs_and_runs_as_its_own_user() {
    need_root();
    purge_package();
    let _purge = Purge;
    let dir = common::temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let deb = dir.join("machat.deb");
    ok(
        Command::new(repo().join("scripts/package-deb.sh"))
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--out")
            .arg(&deb),
        SLOW,
    );
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb), SLOW);
    for path in [
        "./usr/bin/machat",
        "./usr/bin/machat-client",
        "./lib/systemd/system/machat.service",
        "./etc/machat/machat.toml",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    ok(Command::new("dpkg").arg("-i").arg(&deb), SLOW);
    let status = ok(Command::new("dpkg").args(["-s", "machat"]), SLOW);
    assert!(status.contains("Status: install ok installed"), "{status}");

    // The service's user, its state directory and the settings it reads.
    let passwd = ok(Command::new("getent").args(["passwd", "machat"]), SLOW);
    assert!(passwd.contains("/var/lib/machat"), "{passwd}");
    let uid: u32 = passwd.split(':').nth(2).unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata("/var/lib/machat").expect("/var/lib/machat");
    assert_eq!((state.uid(), state.mode() & 0o777), (uid, 0o750));
    let settings = std::fs::read_to_string("/etc/machat/machat.toml").unwrap();
    assert!(
        settings
            .lines()
            .any(|l| l == r#"data_dir = "/var/lib/machat""#),
        "{settings}"
    );
    ok(
        Command::new("/usr/bin/machat").args(["config", "check", "/etc/machat/machat.toml"]),
        SLOW,
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/machat.service").unwrap();
    for line in [
        "User=machat",
        "StateDirectory=machat",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ExecStart=/usr/bin/machat --config /etc/machat/machat.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} not in the unit");
    }
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = run(
            Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/machat.service"]),
            SLOW,
        );
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A name registered by the admin, as the service's user, with the packaged settings.
    let as_machat = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=machat", "--regid=machat", "--init-groups"])
            .arg("/usr/bin/machat")
            .args(["--config", "/etc/machat/machat.toml"])
            .args(args);
        cmd
    };
    let mut add = as_machat(&["user", "add", "Tess"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("machat user add");
    use std::io::Write;
    add.stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let added = add.wait_with_output().unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    // The installed server, as its user, with the installed settings (the file's data dir; the
    // test's loopback ports as flags, which win over the file).
    let server = Server::start_with(
        as_machat(&[]),
        &["--http", "127.0.0.1:0", "--leave-grace", "0"],
    );
    assert!(server.wait_log("/var/lib/machat"), "{:?}", server.log);
    let mut tess = log_in(Client::raw(server.addr), "Tess", "correct horse", "lobby");
    let mut guest = server.connect("Guest", "lobby");
    tess.expect("*** Guest joined");
    guest.send("hello from a package\n");
    tess.expect("Guest:hello from a package");
    let (code, _, page) = get(server.http.expect("http"), "/");
    assert_eq!(code, 200);
    assert!(page.contains("machat"), "{page}");
    // History and names live in the state directory, owned by the service's user.
    let mut owned = 0;
    for entry in std::fs::read_dir("/var/lib/machat").unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(meta.uid(), uid);
        owned += 1;
    }
    assert!(owned > 0, "nothing in /var/lib/machat");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// podman with the settings this sandboxed machine needs (runc: crun refuses its cgroups;
/// explicit limits: the defaults ask for more than a process here may set; the host's
/// network: the test reaches the server on loopback).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]);
    cmd
}

const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// Names of what one run of the container test makes, removed when it ends.
struct Podman {
    container: String,
    volume: String,
    image: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Without podman there is nothing to remove, and a second panic here would abort the
        // run and hide the first one's message.
        if Command::new("podman").arg("--version").output().is_err() {
            return;
        }
        let _ = run(
            podman().args(["rm", "-f", "-t", "0", &self.container]),
            SLOW,
        );
        let _ = run(podman().args(["volume", "rm", "-f", &self.volume]), SLOW);
        let _ = run(podman().args(["rmi", "-f", &self.image]), SLOW);
    }
}

/// The Dockerfile's runtime stage, built with podman (the build stage's binaries given as a
/// build context: the test's own binaries, since compiling a release inside the build would
/// take most of CI's time on two cores), on a Debian bookworm base made here with debootstrap
/// under the name the Dockerfile uses (Docker Hub is out of reach here). The image runs as a
/// non-root user; its data is in a volume that outlives the container.
#[test]
fn the_container_image_runs_as_a_user_with_its_data_in_a_volume() {
    need_root();
    let id = std::process::id();
    let names = Podman {
        container: format!("machat-test-{id}"),
        volume: format!("machat-test-{id}"),
        image: format!("localhost/machat-test:{id}"),
    };
    let base = "docker.io/library/debian:bookworm-slim";
    if !run(podman().args(["image", "exists", base]), SLOW)
        .status
        .success()
    {
        let rootfs = common::temp_dir();
        ok(
            Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(&rootfs)
                .arg("http://deb.debian.org/debian"),
            SLOW,
        );
        let tar = rootfs.with_extension("tar");
        ok(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            SLOW,
        );
        ok(podman().arg("import").arg(&tar).arg(base), SLOW);
        let _ = std::fs::remove_dir_all(&rootfs);
        let _ = std::fs::remove_file(&tar);
    }
    let context = common::temp_dir();
    std::fs::create_dir_all(context.join("out")).unwrap();
    for b in ["machat", "machat-client"] {
        std::fs::copy(bin_dir().join(b), context.join("out").join(b)).unwrap();
        ok(
            Command::new("strip")
                .arg("--strip-debug")
                .arg(context.join("out").join(b)),
            SLOW,
        );
    }
    ok(
        podman()
            .args(["build", "--network=host", "--pull=never"])
            .args(LIMITS)
            .arg("--build-context")
            .arg(format!("build={}", context.display()))
            .args(["-t", &names.image, "-f"])
            .arg(repo().join("Dockerfile"))
            .arg(repo()),
        SLOW,
    );
    let user = ok(
        podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            &names.image,
        ]),
        SLOW,
    );
    assert_eq!(user.trim(), "machat");
    let size = ok(
        podman().args(["image", "inspect", "--format", "{{.Size}}", &names.image]),
        SLOW,
    );
    eprintln!("image size: {} bytes", size.trim());

    let start = || {
        // A container of an earlier run that died before its clean-up would hold the name.
        let _ = run(
            podman().args(["rm", "-f", "-t", "0", "--ignore", &names.container]),
            SLOW,
        );
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--network=host", "--name", &names.container])
            .args(LIMITS)
            .args(["-v", &format!("{}:/var/lib/machat", names.volume)])
            .arg(&names.image);
        // The image's own data dir (the volume), the test's loopback ports.
        Server::start_with(
            cmd,
            &["--data-dir", "/var/lib/machat", "--http", "127.0.0.1:0"],
        )
    };
    let server = start();
    let mut a = server.connect("Ann", "lobby");
    a.send("kept in a volume\n");
    a.expect("Ann:kept in a volume");
    let (code, _, page) = get(server.http.expect("http"), "/");
    assert_eq!((code, page.contains("machat")), (200, true));
    drop(a);
    // A clean stop (SIGTERM, as `docker stop` sends), then a new container on the same volume.
    // `podman run --rm` removes the container after it exits: wait for that, or the next
    // container's name may still be taken (killing the client mid-removal leaves it behind).
    ok(podman().args(["stop", "-t", "20", &names.container]), SLOW);
    let mut server = server;
    let status = server.wait_exit(SLOW);
    assert!(
        status.is_some_and(|s| s.success()),
        "the container did not exit cleanly on SIGTERM: {status:?}"
    );
    drop(server);
    let server = start();
    let mut b = Client::raw(server.addr);
    b.send(r#"{"name":"Bea","room":"lobby","history":5}"#);
    b.expect("*** history: 1 message");
    b.expect("Ann:kept in a volume");
    // The data is the image user's (uid 10001), not root's.
    let mount = ok(
        podman().args([
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &names.volume,
        ]),
        SLOW,
    );
    use std::os::unix::fs::MetadataExt;
    let mut files = 0;
    for entry in std::fs::read_dir(mount.trim()).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(meta.uid(), 10001);
        files += 1;
    }
    assert!(files > 0);
    drop(b);
    let _ = run(podman().args(["stop", "-t", "20", &names.container]), SLOW);
    drop(server);
    let _ = std::fs::remove_dir_all(&context);
}
