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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        rt.worker_threads(config.threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("machat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = config.addr.clone();
    match rt.block_on(machat::server::run(config)) {
        Ok(()) => {
            // Connections that did not finish within the grace period are dropped here.
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("machat: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
