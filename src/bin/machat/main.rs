//! The machat server: flags in, settings made of them, server out (or `machat user ...`:
//! registered names; `machat backup|export|import`: the data dir, see `admin`). The flags
//! live here and nowhere else: the library takes [`machat::settings::Settings`].

mod admin;
mod config;
mod file;

use std::error::Error;
use std::ffi::OsString;
use std::process::ExitCode;

use config::{Command, Config, ConfigAction, UserAction};
use file::{Failure, Loaded};
use machat::settings::{AuthSettings, ClusterSettings};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let loaded = match load(&args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let config = &loaded.config;
    match &config.command {
        Some(Command::User { action }) => return user(config, action),
        Some(Command::Config { action }) => return config_command(&args, action),
        Some(Command::Backup { .. } | Command::Export { .. } | Command::Import) | None => {}
    }
    if let Some(done) = config
        .command
        .as_ref()
        .and_then(|c| admin::run(c, &config.settings()))
    {
        return exit(done);
    }
    machat::init_logging();
    for line in file::effective(&loaded) {
        tracing::info!("{line}");
    }
    // SIGHUP reads the file again, with the same flags and variables over it.
    let reload: Option<machat::server::Reload> = loaded.file.as_ref().map(|_| {
        let reload: machat::server::Reload = Box::new(move || match file::load(&args) {
            Ok(loaded) => Ok(loaded.config.settings()),
            Err(Failure::Bad(why)) => Err(why),
            Err(Failure::Usage(e)) => Err(e.to_string().trim().to_owned()),
        });
        reload
    });
    match machat::server::run(config.settings(), reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration from `args` and the file they name, or the exit code of the error
/// (printed): 2, a usage error, like clap's own.
fn load(args: &[OsString]) -> Result<Loaded, ExitCode> {
    match file::load(args) {
        Ok(loaded) => Ok(loaded),
        Err(Failure::Usage(e)) => e.exit(),
        Err(Failure::Bad(why)) => {
            eprintln!("machat: {why}");
            Err(ExitCode::from(2))
        }
    }
}

/// `machat config default` and `machat config check FILE`.
fn config_command(args: &[OsString], action: &ConfigAction) -> ExitCode {
    match action {
        ConfigAction::Default => {
            print!("{}", file::default_file());
            ExitCode::SUCCESS
        }
        ConfigAction::Check { file: path } => {
            let mut with_file = args.to_vec();
            if let Some(path) = path {
                // Two files would be one too many: clap says so.
                with_file.insert(1.min(with_file.len()), path.clone().into());
                with_file.insert(1.min(with_file.len()), "--config".into());
            }
            let loaded = match load(&with_file) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            if loaded.file.is_none() {
                eprintln!("machat: config check: which file? (machat config check FILE)");
                return ExitCode::from(2);
            }
            for line in file::effective(&loaded) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
    }
}

fn user(config: &Config, action: &UserAction) -> ExitCode {
    let settings = config.settings();
    let done = match &settings.cluster {
        Some(cluster) => cluster_user(cluster, &settings.auth, action),
        None => local_user(&settings.auth, action),
    };
    exit(done)
}

fn exit(done: Result<(), Box<dyn Error>>) -> ExitCode {
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `machat user ... --nats URL`: the names registered for every node of a cluster.
fn cluster_user(
    cluster: &ClusterSettings,
    auth: &AuthSettings,
    action: &UserAction,
) -> Result<(), Box<dyn Error>> {
    use machat::cluster::users;
    let (url, replicas) = (cluster.url.as_str(), cluster.replicas);
    let at = machat::cluster::redact_url(url);
    match action {
        UserAction::Add { name, admin } => {
            let password = machat::auth::read_password(name)?;
            let hash = machat::auth::new_hash(name, &password, auth.min_password_length)?;
            users::add(url, replicas, name, &hash, *admin)?;
            let role = if *admin { " as an admin" } else { "" };
            eprintln!("machat: {name} is registered{role} in the cluster at {at}");
            Ok(())
        }
        UserAction::Remove { name } => match users::remove(url, replicas, name)? {
            true => {
                eprintln!("machat: {name} is no longer registered in the cluster at {at}");
                let revoked = machat::cluster::logins::revoke_name(url, replicas, name)?;
                if revoked > 0 {
                    eprintln!("machat: {revoked} login(s) of {name} revoked");
                }
                Ok(())
            }
            false => Err(format!("{name} is not registered in the cluster at {at}").into()),
        },
        UserAction::Admin { name, role } => match users::set_admin(url, replicas, name, role.on())?
        {
            true => {
                eprintln!("machat: {name} {} in the cluster at {at}", now(role.on()));
                Ok(())
            }
            false => Err(format!("{name} is not registered in the cluster at {at}").into()),
        },
        UserAction::List => {
            print_list(users::list(url, replicas)?);
            Ok(())
        }
        UserAction::Logout { name } => {
            let revoked = machat::cluster::logins::revoke_name(url, replicas, name)?;
            eprintln!("machat: {revoked} login(s) of {name} revoked in the cluster at {at}");
            Ok(())
        }
        UserAction::Passwd { name } => admin::cluster_passwd(cluster, auth, name),
    }
}

fn local_user(auth: &AuthSettings, action: &UserAction) -> Result<(), Box<dyn Error>> {
    let dir = &auth.data_dir;
    match action {
        UserAction::Add { name, admin } => {
            let password = machat::auth::read_password(name)?;
            machat::auth::add_user(auth, name, &password, *admin)?;
            let role = if *admin { " as an admin" } else { "" };
            eprintln!("machat: {name} is registered{role} in {}", dir.display());
            Ok(())
        }
        UserAction::Remove { name } => match machat::auth::remove_user(dir, name)? {
            true => {
                eprintln!("machat: {name} is no longer registered");
                let revoked = machat::logins::revoke_name(dir, name)?;
                if revoked > 0 {
                    eprintln!("machat: {revoked} login(s) of {name} revoked");
                }
                Ok(())
            }
            false => Err(format!("{name} is not registered").into()),
        },
        UserAction::Admin { name, role } => match machat::auth::set_admin(dir, name, role.on())? {
            true => {
                eprintln!("machat: {name} {}", now(role.on()));
                Ok(())
            }
            false => Err(format!("{name} is not registered").into()),
        },
        UserAction::List => {
            print_list(machat::auth::list_users(dir)?);
            Ok(())
        }
        UserAction::Logout { name } => {
            let revoked = machat::logins::revoke_name(dir, name)?;
            eprintln!("machat: {revoked} login(s) of {name} revoked");
            Ok(())
        }
        UserAction::Passwd { name } => admin::passwd(auth, name),
    }
}

fn now(admin: bool) -> &'static str {
    if admin {
        "is now an admin"
    } else {
        "is no longer an admin"
    }
}

/// One name a line, as before server admins; an admin's followed by ` (admin)` (a name cannot
/// hold a space, so the marker cannot be part of one).
fn print_list(names: Vec<machat::auth::Listed>) {
    for n in names {
        let marker = if n.admin { " (admin)" } else { "" };
        println!("{}{marker}", n.name);
    }
}
