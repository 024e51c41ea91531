//! `clusterserverd --check --config FILE`: exit 0 and "OK" on a valid config, exit 1 and
//! every error on stderr on a bad one, exit 2 on a usage error.

mod support;

use std::process::{Command, Output};

use support::{MANIFEST_DIR, secrets_dir};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clusterserverd"))
        .args(args)
        .current_dir(MANIFEST_DIR)
        .output()
        .expect("run clusterserverd")
}

#[test]
fn check_accepts_an_example() {
    let dir = secrets_dir("cli");
    let copy = dir.path().join("nat-2atm.json5");
    std::fs::copy(format!("{MANIFEST_DIR}/config/nat-2atm.json5"), &copy).expect("copy");
    let out = run(&["--check", "--config", copy.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("OK (2 ATMs, 2 services)"), "{stdout}");
}

#[test]
fn check_refuses_a_bad_config_and_prints_every_error() {
    let out = run(&["--check", "--config", "tests/bad-configs/unknown-keys.json5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let settings = {
        let mut s = insta::Settings::clone_current();
        s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
        s
    };
    settings.bind(|| insta::assert_snapshot!("check_unknown_keys_stderr", stderr));
}

#[test]
fn check_reports_an_unreadable_file() {
    let out = run(&["--check", "--config", "tests/bad-configs/does-not-exist.json5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("tests/bad-configs/does-not-exist.json5:1:1: (root): cannot read"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(run(&["--bogus"]).status.code(), Some(2));
    assert_eq!(run(&["--config"]).status.code(), Some(2));
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--check"));
    let version = run(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("clusterserverd "));
}
