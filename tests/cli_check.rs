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

/// The README's commands as written, on a fresh clone: the shape of an example (whose
/// secret files are not in the repository), the secrets created with the right mode, then
/// the whole check, and the change plan of a reload.
#[test]
fn the_readme_commands_work_on_a_fresh_clone() {
    let out = run(&["--check", "--no-files", "--config", "config/nat-2atm.json5"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("shape only"));
    // Without --no-files the missing files are errors, as before.
    let out = run(&["--check", "--config", "config/nat-2atm.json5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    let dir = std::env::temp_dir().join(format!("cs-cli-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let my = dir.join("my.json5");
    std::fs::copy(format!("{MANIFEST_DIR}/config/nat-2atm.json5"), &my).expect("copy");
    let my_s = my.to_str().expect("utf-8");
    let out = run(&["--init-secrets", "--config", my_s]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    for f in ["secret", "admin.token"] {
        let meta = std::fs::metadata(dir.join(f)).expect("created");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        assert_eq!(meta.len(), 65, "{f}: 32 bytes hex and a newline");
    }
    let secret = std::fs::read(dir.join("secret")).expect("secret");
    let out = run(&["--init-secrets", "--config", my_s]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("left alone"));
    assert_eq!(std::fs::read(dir.join("secret")).expect("secret"), secret, "an existing secret is kept");
    let out = run(&["--check", "--config", my_s]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // The plan of a reload: a weight is live; the cluster id needs the handover.
    let new = dir.join("new.json5");
    let text = std::fs::read_to_string(&my).expect("read");
    std::fs::write(&new, text.replacen("weight: 100", "weight: 7", 1)).expect("write");
    let out = run(&["--check", "--config", new.to_str().expect("utf-8"), "--against", my_s]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("1 live, 0 by handover") && stdout.contains("weight: 100 -> 7"), "{stdout}");
    std::fs::write(&new, text.replacen("id: 7", "id: 8", 1)).expect("write");
    let out = run(&["--check", "--config", new.to_str().expect("utf-8"), "--against", my_s]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("handover  cluster.id: 7 -> 8"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
