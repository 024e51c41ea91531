//! The shipped ASA programs (`clusterserver-asa`) against real loopback servers: exit 0
//! when the service answers correctly, 1 when it does not, 2 on a usage error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_clusterserver-asa");

fn asa(args: &[&str]) -> (i32, String) {
    let out = Command::new(EXE).args(args).output().expect("run clusterserver-asa");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A TCP server on loopback running `serve` for each of `n` connections; returns its port.
fn tcp_server(n: usize, serve: fn(std::net::TcpStream)) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().take(n).flatten() {
            serve(s);
        }
    });
    port
}

fn http(status: &'static str) -> fn(std::net::TcpStream) {
    match status {
        "200" => |mut s| {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        },
        "302" => |mut s| {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n");
        },
        _ => |mut s| {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\n\r\n");
        },
    }
}

#[test]
fn http_probe() {
    let p = tcp_server(1, http("200")).to_string();
    assert_eq!(asa(&["http", "127.0.0.1", &p, "1"]).0, 0);
    let p = tcp_server(1, http("302")).to_string();
    assert_eq!(asa(&["http", "127.0.0.1", &p]).0, 0);
    let p = tcp_server(1, http("500")).to_string();
    let (code, out) = asa(&["http", "127.0.0.1", &p, "--path", "/health"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 500 for /health"), "{out}");
}

fn smtp_good(s: std::net::TcpStream) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let _ = w.write_all(b"220-mx.example ESMTP\r\n220 ready\r\n");
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    assert!(line.starts_with("EHLO "), "{line}");
    let _ = w.write_all(b"250-mx.example\r\n250 PIPELINING\r\n");
    line.clear();
    let _ = r.read_line(&mut line);
    assert_eq!(line, "QUIT\r\n");
    let _ = w.write_all(b"221 bye\r\n");
}

#[test]
fn smtp_probe() {
    let p = tcp_server(1, smtp_good).to_string();
    let (code, out) = asa(&["smtp", "127.0.0.1", &p, "1"]);
    assert_eq!(code, 0, "{out}");
    let busy = tcp_server(1, |mut s| {
        let _ = s.write_all(b"554 no service\r\n");
    });
    assert_eq!(asa(&["smtp", "127.0.0.1", &busy.to_string()]).0, 1);
    let not_smtp = tcp_server(1, |mut s| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    assert_eq!(asa(&["smtp", "127.0.0.1", &not_smtp.to_string()]).0, 1);
}

/// A UDP DNS responder that answers each query with `edit` applied to it.
fn dns_server(edit: fn(&mut Vec<u8>)) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = s.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut a = buf[..n].to_vec();
            edit(&mut a);
            let _ = s.send_to(&a, from);
        }
    });
    port
}

#[test]
fn dns_probe() {
    let ok = dns_server(|a| a[2] |= 0x80);
    let (code, out) = asa(&["dns", "127.0.0.1", &ok.to_string(), "2", "--name", "example.com"]);
    assert_eq!(code, 0, "{out}");
    let servfail = dns_server(|a| {
        a[2] |= 0x80;
        a[3] = 2;
    });
    assert_eq!(asa(&["dns", "127.0.0.1", &servfail.to_string()]).0, 1);
    // Echoing the query (QR clear) is not an answer; the probe waits for one and gives up.
    let echo = dns_server(|_| {});
    assert_eq!(asa(&["dns", "127.0.0.1", &echo.to_string(), "--timeout-ms", "300"]).0, 1);
}

#[test]
fn closed_ports_and_usage_errors() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port().to_string();
    drop(l);
    assert_eq!(asa(&["http", "127.0.0.1", &port]).0, 1);
    assert_eq!(asa(&["smtp", "127.0.0.1", &port]).0, 1);
    assert_eq!(asa(&["ftp", "127.0.0.1", &port]).0, 2);
    assert_eq!(asa(&["http", "127.0.0.1"]).0, 2);
    let (code, out) = asa(&[]);
    assert_eq!(code, 2);
    assert!(out.contains("usage: clusterserver-asa"), "{out}");
}

#[test]
fn dispatch_through_a_link_named_like_the_probe() {
    let dir = std::env::temp_dir().join(format!("cs-asa-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join("http");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(EXE, &link).expect("symlink");
    let p = tcp_server(1, http("200")).to_string();
    let out = Command::new(&link).args(["127.0.0.1", &p, "1"]).output().expect("run link");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
