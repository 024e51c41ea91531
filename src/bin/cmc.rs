//! cmc: the Cluster Management Console (see [`clusterserver::cmc`]). Thin: parse, run on a
//! small runtime, print the error chain and exit 1 on failure.

use std::process::ExitCode;

use clap::Parser;
use clusterserver::cmc::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmc: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cmc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
