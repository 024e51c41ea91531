//! The corpus of bad configs (`tests/bad-configs/*.json5`) and the exact errors each one
//! gets, kept as insta snapshots in `snapshots/`. The secret and token files they name are
//! made in a temporary directory; errors name the config as `tests/bad-configs/NAME.json5`
//! and files as written, so the snapshots hold no temporary path.

mod support;

use clusterserver::config::{LoadOptions, parse_str};
use support::{json5_files, secrets_dir, stem};

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    s.set_prepend_module_to_snapshot(true);
    s
}

#[test]
fn every_bad_config_fails_with_its_snapshotted_errors() {
    let files = json5_files("tests/bad-configs");
    assert!(files.len() >= 20, "the corpus shrank to {} files", files.len());
    let dir = secrets_dir("bad-configs");
    let opts = LoadOptions { check_files: true, base_dir: dir.path().to_path_buf() };
    for path in &files {
        let name = stem(path);
        let origin = format!("tests/bad-configs/{name}.json5");
        let text = std::fs::read_to_string(path).expect("read bad config");
        let errors = match parse_str(&origin, &text, &opts) {
            Ok(_) => panic!("{origin} was accepted"),
            Err(e) => e,
        };
        for e in &errors {
            assert!(e.line >= 1 && e.column >= 1, "{e}");
            assert!(!e.path.is_empty() && !e.message.is_empty(), "{e}");
        }
        let positions: Vec<(u32, u32)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert!(positions.is_sorted(), "{origin}: errors out of order");
        settings().bind(|| insta::assert_snapshot!(name, errors.to_string()));
    }
}

#[test]
fn many_errors_are_reported_at_once() {
    let path = format!("{}/tests/bad-configs/many-errors.json5", support::MANIFEST_DIR);
    let text = std::fs::read_to_string(path).expect("read");
    let errors = parse_str("many-errors.json5", &text, &LoadOptions::default()).expect_err("many errors");
    assert!(errors.len() >= 15, "only {} errors:\n{errors}", errors.len());
}
