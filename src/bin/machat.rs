//! The machat server: flags in, server out (or `machat user ...`: registered names).

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
    let dir = &config.data_dir;
    let done = match action {
        UserAction::Add { name } => machat::auth::read_password(name)
            .and_then(|pw| machat::auth::add_user(dir, name, &pw))
            .map(|()| eprintln!("machat: {name} is registered in {}", dir.display())),
        UserAction::Remove { name } => match machat::auth::remove_user(dir, name) {
            Ok(true) => {
                eprintln!("machat: {name} is no longer registered");
                Ok(())
            }
            Ok(false) => Err(format!("{name} is not registered")),
            Err(e) => Err(e),
        },
        UserAction::List => machat::auth::list_users(dir).map(|names| {
            for n in names {
                println!("{n}");
            }
        }),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machat: {e}");
            ExitCode::FAILURE
        }
    }
}
