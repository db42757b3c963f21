//! The machat terminal client: flags in, chat on stdin and stdout.

use std::process::ExitCode;

use machat::client::{run, ClientArgs, Ending};

fn main() -> ExitCode {
    let args = ClientArgs::from_args();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("machat-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ending = rt.block_on(run(args));
    // Stdin may still be blocked in a read on a helper thread: don't wait for it.
    rt.shutdown_background();
    match ending {
        Ok(Ending::Done) => ExitCode::SUCCESS,
        Ok(Ending::ServerClosed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("machat-client: {e}");
            ExitCode::from(2)
        }
    }
}
