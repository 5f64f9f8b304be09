//! The `fleetctl` binary: parses the command line, runs the command, and turns any error into one
//! line on stderr and a non-zero exit status.

use std::process::ExitCode;

use clap::Parser;
use fleetctl::Cli;

fn main() -> ExitCode {
    // clap prints its own usage errors and exits 2.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fleetctl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetctl: error: {}", fleetctl::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
