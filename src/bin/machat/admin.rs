//! The data dir's commands for operators: `machat backup`, `machat export`, `machat import`,
//! and `machat user passwd`. Each prints what it did on stderr (stdout is the export's) and
//! fails with a sentence, never a panic.

use std::error::Error;
use std::io::Write;

use machat::settings::{AuthSettings, ClusterSettings, Settings};

use crate::config::Command;

/// Runs a data command; None if `command` is not one.
pub fn run(command: &Command, settings: &Settings) -> Option<Result<(), Box<dyn Error>>> {
    if matches!(command, Command::User { .. } | Command::Config { .. }) {
        return None;
    }
    if settings.cluster.is_some() {
        // A cluster's history is in JetStream, not in a data dir: a copy of the data dir
        // would be empty and look like a backup.
        return Some(Err(
            "backup, export and import work on --data-dir; a cluster's \
             history is in JetStream (copy its stream with the NATS tools)"
                .into(),
        ));
    }
    let dir = &settings.history.data_dir;
    Some(match command {
        Command::Backup { dir: out, force } => backup(dir, out, *force),
        Command::Export { room, since } => export(dir, room.as_deref(), *since),
        Command::Import => import(dir),
        Command::User { .. } | Command::Config { .. } => return None,
    })
}

fn backup(dir: &std::path::Path, out: &std::path::Path, force: bool) -> Result<(), Box<dyn Error>> {
    for c in machat::backup::backup(dir, out, force)? {
        eprintln!(
            "machat: copied {} to {} ({} bytes)",
            c.from.display(),
            c.to.display(),
            c.bytes
        );
    }
    eprintln!(
        "machat: to restore, stop the server and copy the files of {} into an empty data dir",
        out.display()
    );
    Ok(())
}

fn export(dir: &std::path::Path, room: Option<&str>, since: u64) -> Result<(), Box<dyn Error>> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let counted = machat::export::export(dir, room, since, &mut out)?;
    out.flush()?;
    eprintln!(
        "machat: exported {} message(s) of {} room(s)",
        counted.messages, counted.rooms
    );
    Ok(())
}

fn import(dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let counted = machat::export::import(dir, std::io::stdin().lock())?;
    eprintln!(
        "machat: imported {} message(s) of {} room(s) into {}",
        counted.messages,
        counted.rooms,
        dir.display()
    );
    Ok(())
}

/// `machat user passwd NAME` on the data dir.
pub fn passwd(auth: &AuthSettings, name: &str) -> Result<(), Box<dyn Error>> {
    let password = machat::auth::read_password(name)?;
    if !machat::auth::set_password(auth, name, &password)? {
        return Err(format!("{name} is not registered").into());
    }
    eprintln!("machat: {name} has a new password");
    Ok(())
}

/// `machat user passwd NAME --nats URL`.
pub fn cluster_passwd(
    cluster: &ClusterSettings,
    auth: &AuthSettings,
    name: &str,
) -> Result<(), Box<dyn Error>> {
    use machat::cluster::users;
    let at = machat::cluster::redact_url(&cluster.url);
    let password = machat::auth::read_password(name)?;
    let hash = machat::auth::new_hash(name, &password, auth.min_password_length)?;
    if !users::set_hash(&cluster.url, cluster.replicas, name, &hash)? {
        return Err(format!("{name} is not registered in the cluster at {at}").into());
    }
    eprintln!("machat: {name} has a new password in the cluster at {at}");
    Ok(())
}
