//! clusterserverd: the ATM / cluster-node daemon.
//!
//! Thin on purpose: argument handling here, everything else in the library
//! ([`clusterserver::daemon`]). `--check --config FILE` validates and exits (0 valid, 1
//! invalid, 2 usage error); `--config FILE` runs the daemon (exit 0 after a graceful stop,
//! 1 when it cannot run).

use std::path::PathBuf;
use std::process::ExitCode;

use clusterserver::config::{self, DEFAULT_CONFIG_PATH};
use clusterserver::daemon;

const USAGE: &str = "\
Usage: clusterserverd [--config FILE] [--check]

  -c, --config FILE   config file (default /etc/clusterserver/clusterserver.json5)
      --check         validate the config, print every error, and exit (0 valid, 1 invalid)
  -h, --help          print this help
  -V, --version       print the version";

#[derive(Debug)]
struct Args {
    config: PathBuf,
    check: bool,
}

enum Parsed {
    Run(Args),
    Exit(ExitCode),
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args { config: PathBuf::from(DEFAULT_CONFIG_PATH), check: false };
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            "-V" | "--version" => {
                println!("clusterserverd {}", env!("CARGO_PKG_VERSION"));
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            "--check" => args.check = true,
            "-c" | "--config" => {
                let file = argv.next().ok_or("--config needs a FILE")?;
                args.config = PathBuf::from(file);
            }
            _ => match arg.strip_prefix("--config=") {
                Some(file) => args.config = PathBuf::from(file),
                None => return Err(format!("unknown argument {arg:?}")),
            },
        }
    }
    Ok(Parsed::Run(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Exit(code)) => return code,
        Err(e) => {
            eprintln!("clusterserverd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        let config = match config::load_file(&args.config) {
            Ok(config) => config,
            Err(errors) => {
                eprintln!("{errors}");
                let n = errors.len();
                let s = if n == 1 { "" } else { "s" };
                eprintln!("{}: {n} error{s}", args.config.display());
                return ExitCode::from(1);
            }
        };
        println!(
            "{}: OK ({} ATMs, {} services)",
            args.config.display(),
            config.atms.len(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    daemon::install_panic_hook();
    daemon::init_logging();
    match daemon::run(&args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: "clusterserverd", error = %e, "cannot run");
            eprintln!("clusterserverd: {e}");
            ExitCode::from(1)
        }
    }
}
