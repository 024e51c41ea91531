//! clusterserverd: the ATM / cluster-node daemon.
//!
//! Thin on purpose: argument handling here, everything else in the library
//! ([`clusterserver::daemon`]). `--check --config FILE` validates and exits (0 valid, 1
//! invalid, 2 usage error); with `--against RUNNING` it also prints the change plan of a
//! reload from RUNNING to FILE; `--no-files` checks the shape only (not the secret and token
//! files); `--init-secrets` creates missing secret and token files (mode 0600);
//! `--config FILE` runs the daemon (exit 0 after a graceful stop, 1 when it cannot run).

use std::path::PathBuf;
use std::process::ExitCode;

use clusterserver::config::{self, DEFAULT_CONFIG_PATH};
use clusterserver::daemon;

const USAGE: &str = "\
Usage: clusterserverd [--config FILE] [--check [--against RUNNING] [--no-files]] [--init-secrets]

  -c, --config FILE      config file (default /etc/clusterserver/clusterserver.json5)
      --check            validate the config, print every error, and exit (0 valid, 1 invalid)
      --against RUNNING  with --check: also print what a reload from RUNNING to FILE changes
                         (live, or by the planned handover and which key forces it)
      --no-files         with --check: the config's shape only, not its secret and token files
      --init-secrets     create the config's missing secret_file and token_file (32 random
                         bytes, hex, mode 0600; existing files are left alone) and exit
  -h, --help             print this help
  -V, --version       print the version";

#[derive(Debug)]
struct Args {
    config: PathBuf,
    check: bool,
    against: Option<PathBuf>,
    no_files: bool,
    init_secrets: bool,
}

enum Parsed {
    Run(Args),
    Exit(ExitCode),
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args {
        config: PathBuf::from(DEFAULT_CONFIG_PATH),
        check: false,
        against: None,
        no_files: false,
        init_secrets: false,
    };
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
            "--no-files" => args.no_files = true,
            "--init-secrets" => args.init_secrets = true,
            "--against" => args.against = Some(PathBuf::from(argv.next().ok_or("--against needs a FILE")?)),
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
    if (args.against.is_some() || args.no_files) && !args.check {
        return Err("--against and --no-files go with --check".into());
    }
    Ok(Parsed::Run(args))
}

fn load(path: &std::path::Path, files: bool) -> Result<config::Config, config::ConfigErrors> {
    config::load_file_with(path, files)
}

fn report(path: &std::path::Path, errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.len();
    let s = if n == 1 { "" } else { "s" };
    eprintln!("{}: {n} error{s}", path.display());
    ExitCode::from(1)
}

/// `--init-secrets`: the missing secret and token files, with fresh random contents.
fn init_secrets(path: &std::path::Path) -> ExitCode {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let cfg = match load(path, false) {
        Ok(c) => c,
        Err(e) => return report(path, &e),
    };
    let files = std::iter::once(("cluster.secret_file", cfg.cluster.secret_file.clone()))
        .chain(cfg.security.token_file.clone().map(|t| ("security.token_file", t)));
    for (key, file) in files {
        if file.exists() {
            println!("{key}: {} exists; left alone", file.display());
            continue;
        }
        let mut raw = [0u8; 32];
        let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw));
        let made = random.and_then(|()| {
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file)?;
            f.write_all(format!("{hex}\n").as_bytes())
        });
        match made {
            Ok(()) => println!("{key}: created {} (mode 0600)", file.display()),
            Err(e) => {
                eprintln!("{key}: cannot create {}: {e}", file.display());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // Fix the process's clock origin before any loop reads it (see `clock`).
    clusterserver::platform::linux::clock::origin();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Exit(code)) => return code,
        Err(e) => {
            eprintln!("clusterserverd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.init_secrets {
        return init_secrets(&args.config);
    }
    if args.check {
        let config = match load(&args.config, !args.no_files) {
            Ok(config) => config,
            Err(errors) => return report(&args.config, &errors),
        };
        let shape = if args.no_files { "; shape only: secret and token files not checked" } else { "" };
        println!(
            "{}: OK ({} ATMs, {} services{shape})",
            args.config.display(),
            config.atms.len(),
            config.services.len()
        );
        for a in config::advice::advice(&config) {
            println!("warning: {a}");
        }
        if let Some(running) = &args.against {
            let old = match load(running, false) {
                Ok(c) => c,
                Err(errors) => return report(running, &errors),
            };
            // Per ATM: an ATM's own address or interface is only a handover for that ATM.
            let plans: Vec<(String, config::diff::Plan)> = old
                .atms
                .iter()
                .enumerate()
                .map(|(i, a)| (a.name.clone(), config::diff::plan(&old, &config, Some(i))))
                .collect();
            let same = plans.windows(2).all(|w| w[0].1 == w[1].1);
            match (same, plans.first()) {
                (true, Some((_, p))) => println!("reload from {}: {p}", running.display()),
                _ => {
                    for (name, p) in &plans {
                        println!("reload from {} on {name}: {p}", running.display());
                    }
                }
            }
        }
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
