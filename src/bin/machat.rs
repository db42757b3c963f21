//! The machat server: flags in, server out (or `machat user ...`: registered names).

use std::error::Error;
use std::process::ExitCode;

use machat::config::{Command, Config, UserAction};

fn main() -> ExitCode {
    let config = Config::from_args();
    if let Some(Command::User { action }) = &config.command {
        return user(&config, action);
    }
    machat::init_logging();
    if let Err(e) = config.validate() {
        eprintln!("machat: {e}");
        return ExitCode::from(2);
    }
    match machat::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn user(config: &Config, action: &UserAction) -> ExitCode {
    let done = match &config.nats {
        Some(url) => cluster_user(url, config.nats_replicas, action),
        None => local_user(config, action),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `machat user ... --nats URL`: the names registered for every node of a cluster.
fn cluster_user(url: &str, replicas: usize, action: &UserAction) -> Result<(), Box<dyn Error>> {
    use machat::cluster::users;
    let at = machat::cluster::redact_url(url);
    match action {
        UserAction::Add { name } => {
            let password = machat::auth::read_password(name)?;
            let hash = machat::auth::new_hash(name, &password)?;
            users::add(url, replicas, name, &hash)?;
            eprintln!("machat: {name} is registered in the cluster at {at}");
            Ok(())
        }
        UserAction::Remove { name } => match users::remove(url, replicas, name)? {
            true => {
                eprintln!("machat: {name} is no longer registered in the cluster at {at}");
                Ok(())
            }
            false => Err(format!("{name} is not registered in the cluster at {at}").into()),
        },
        UserAction::List => {
            for n in users::list(url, replicas)? {
                println!("{n}");
            }
            Ok(())
        }
    }
}

fn local_user(config: &Config, action: &UserAction) -> Result<(), Box<dyn Error>> {
    let dir = &config.data_dir;
    match action {
        UserAction::Add { name } => {
            let password = machat::auth::read_password(name)?;
            machat::auth::add_user(dir, name, &password)?;
            eprintln!("machat: {name} is registered in {}", dir.display());
            Ok(())
        }
        UserAction::Remove { name } => match machat::auth::remove_user(dir, name)? {
            true => {
                eprintln!("machat: {name} is no longer registered");
                Ok(())
            }
            false => Err(format!("{name} is not registered").into()),
        },
        UserAction::List => {
            for n in machat::auth::list_users(dir)? {
                println!("{n}");
            }
            Ok(())
        }
    }
}
