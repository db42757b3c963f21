//! The machat server: flags in, server out.

use std::process::ExitCode;

use machat::config::Config;

fn main() -> ExitCode {
    let config = Config::from_args();
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
