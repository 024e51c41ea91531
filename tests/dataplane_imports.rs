//! The I/O boundary, enforced: `src/dataplane/` (wire views, engine, connection table,
//! schedulers, sync codecs) is sans-IO. It must not reach the platform, the async runtime,
//! `libc`, sockets, threads, files or a clock; the shells in `src/platform/linux/shell/` do
//! that and call it. A file that breaks the rule fails this test with its line.
//!
//! The check reads the source text (comments excluded), which is what a reviewer would read:
//! a `use`, a path in an expression or a type all count.

use std::path::{Path, PathBuf};

/// Paths or names that mean I/O, with why each is forbidden.
const FORBIDDEN: &[(&str, &str)] = &[
    ("crate::platform", "the platform shells import the engine, never the reverse"),
    ("crate::daemon", "the daemon wires the engine to I/O"),
    ("tokio", "the async runtime"),
    ("libc", "system calls"),
    ("socket2", "sockets"),
    ("UdpSocket", "sockets"),
    ("TcpStream", "sockets"),
    ("TcpListener", "sockets"),
    ("std::os::", "file descriptors and OS specifics"),
    ("crate::config", "the engine takes its own settings (dataplane::settings), built from the config"),
    ("rtnetlink", "netlink"),
    ("tun_rs", "the TUN device"),
    ("std::fs", "files"),
    ("std::thread", "threads"),
    ("std::process", "processes"),
    ("std::time::Instant", "a clock: the engine takes `now` (crate::time::Instant)"),
    ("SystemTime", "a clock"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `line` without a `//` comment (a `//` inside a string literal would cut early: none of the
/// forbidden names hides behind one in this folder, and a cut only hides, never invents).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

#[test]
fn dataplane_imports_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dataplane");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} files under {}", files.len(), root.display());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (name, why) in FORBIDDEN {
                if code(line).contains(name) {
                    found.push(format!("{}:{}: `{name}` ({why}): {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "src/dataplane/ reaches outside its boundary:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_a_violation() {
    assert_eq!(code("use tokio::net::UdpSocket; // x"), "use tokio::net::UdpSocket; ");
    assert_eq!(code("//! uses tokio"), "");
}
