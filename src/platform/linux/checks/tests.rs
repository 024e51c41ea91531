//! The checkers against real local servers (loopback, no root needed) and real programs.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn check(kind: CheckKind, command: &[&str], timeout_ms: u64) -> Check {
    let http = matches!(kind, CheckKind::Http | CheckKind::Https);
    Check {
        path: http.then(|| "/health".to_string()),
        command: command.iter().map(|s| s.to_string()).collect(),
        interval_ms: timeout_ms * 2,
        timeout_ms,
        rise: 1,
        fall: 1,
        ..crate::config::testkit::check(kind)
    }
}

fn target(port: u16) -> Target {
    Target { address: "127.0.0.1".parse().expect("ip"), port, protocol: Protocol::Tcp }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A loopback server answering every connection with `answer`; returns its port.
async fn http_server(answer: &'static str) -> u16 {
    http_server_on("127.0.0.1:0", answer).await
}

/// [`http_server`] on `bind` (`[::1]:0` for IPv6).
async fn http_server_on(bind: &str, answer: &'static str) -> u16 {
    let l = TcpListener::bind(bind).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            assert!(buf[..n].starts_with(b"GET /health HTTP/1.1\r\n"), "{:?}", &buf[..n]);
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    port
}

fn reason_of(o: &Outcome) -> &str {
    match o {
        Outcome::Fail { reason, .. } => reason,
        Outcome::Pass { .. } => "pass",
        Outcome::Timeout => "timeout",
    }
}

#[test]
fn status_lines() {
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
    assert_eq!(parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"), Some(503));
    assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None, "no end of line");
    assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
    assert_eq!(parse_status_line(b"HTTP/1.1 999 OK\r\n"), None);
}

#[test]
fn command_lines_for_exec_and_agents() {
    let t = Target { address: "10.0.0.3".parse().expect("ip"), port: 53, protocol: Protocol::Udp };
    let exec = check(CheckKind::Exec, &["/asa/dns", "{address}", "--port={port}", "{proto}"], 100);
    assert_eq!(command_line(&exec, t), ["/asa/dns", "10.0.0.3", "--port=53", "2"]);
    let agent = check(CheckKind::Agent, &["/usr/lib/tlclb/agent/dns", "-q"], 100);
    assert_eq!(command_line(&agent, t), ["/usr/lib/tlclb/agent/dns", "-q", "10.0.0.3", "53", "2"]);
    let t = Target { protocol: Protocol::Tcp, ..t };
    assert_eq!(command_line(&agent, t).last().map(String::as_str), Some("1"));
}

#[test]
fn tcp_and_http_checks_against_loopback_servers() {
    rt().block_on(async {
        let ok = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let sick = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let junk = http_server("hello\n").await;
        let r = run(&check(CheckKind::Http, &[], 1000), target(ok)).await;
        assert!(r.outcome.passed(), "{r:?}");
        let r = run(&check(CheckKind::Http, &[], 1000), target(sick)).await;
        assert_eq!(reason_of(&r.outcome), "status_503");
        let r = run(&check(CheckKind::Http, &[], 1000), target(junk)).await;
        assert_eq!(reason_of(&r.outcome), "bad_http_answer");
        assert!(run(&check(CheckKind::Tcp, &[], 1000), target(ok)).await.outcome.passed());
        // A port nobody listens on: a bound, never-listening socket holds it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let r = run(&check(CheckKind::Tcp, &[], 1000), target(port)).await;
        assert_eq!(reason_of(&r.outcome), "connection_refused", "{r:?}");
    });
}

#[test]
fn a_silent_server_times_out() {
    rt().block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        // Accepts (the kernel completes the handshake) and never answers.
        let held = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            std::future::pending::<()>().await;
            drop(s);
        });
        let r = run(&check(CheckKind::Http, &[], 150), target(port)).await;
        assert_eq!(r.outcome, Outcome::Timeout);
        held.abort();
    });
}

/// A TLS server (self-signed) on `bind` answering 200 to anything; returns its port.
async fn https_server(bind: &str) -> u16 {
    let cert = rcgen::generate_simple_self_signed(vec!["web.example".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind(bind).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let Ok(mut s) = acceptor.accept(s).await else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
    });
    port
}

#[test]
fn https_check_completes_a_handshake_with_a_self_signed_server() {
    rt().block_on(async {
        let port = https_server("127.0.0.1:0").await;
        let r = run(&check(CheckKind::Https, &[], 2000), target(port)).await;
        assert!(r.outcome.passed(), "{r:?}");
        // Plain HTTP to a TLS server is not an answer.
        let r = run(&check(CheckKind::Http, &[], 2000), target(port)).await;
        assert!(!r.outcome.passed(), "{r:?}");
    });
}

#[test]
fn every_check_kind_reaches_an_ipv6_server() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: no IPv6 loopback here");
        return;
    }
    rt().block_on(async {
        let v6 = |port| Target { address: "::1".parse().expect("ip"), port, protocol: Protocol::Tcp };
        let ok = http_server_on("[::1]:0", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let r = run(&check(CheckKind::Http, &[], 1000), v6(ok)).await;
        assert!(r.outcome.passed(), "{r:?}");
        // Last against this server: it wants a GET from every connection.
        assert!(run(&check(CheckKind::Tcp, &[], 1000), v6(ok)).await.outcome.passed());
        let tls = https_server("[::1]:0").await;
        let r = run(&check(CheckKind::Https, &[], 2000), v6(tls)).await;
        assert!(r.outcome.passed(), "{r:?}");
        // Programs get the address as written, without brackets (the TLCLB convention).
        let exec = check(
            CheckKind::Exec,
            &["/bin/sh", "-c", "test \"$0\" = ::1 && test \"$1\" = 8080", "{address}", "{port}"],
            5000,
        );
        assert!(run(&exec, v6(8080)).await.outcome.passed());
        let agent = check(CheckKind::Agent, &["/bin/sh", "-c", "test \"$0 $1 $2\" = \"::1 8080 1\""], 5000);
        assert!(run(&agent, v6(8080)).await.outcome.passed());
        assert!(!run(&agent, v6(8081)).await.outcome.passed());
    });
}

#[test]
fn programs_exit_codes_and_bounded_output() {
    rt().block_on(async {
        let sh = |script: &str| check(CheckKind::Exec, &["/bin/sh", "-c", script], 5000);
        let r = run(&sh("echo up on {address}:{port}; exit 0"), target(80)).await;
        assert!(r.outcome.passed());
        assert_eq!(r.output, "up on 127.0.0.1:80");
        let r = run(&sh("echo refused >&2; exit 1"), target(80)).await;
        assert_eq!((reason_of(&r.outcome), r.output.as_str()), ("exit_1", "refused"));
        // 200 kB of output: read to the end (the program never blocks), 4 kB kept.
        let r = run(&sh("head -c 200000 /dev/zero | tr '\\0' a; exit 0"), target(80)).await;
        assert!(r.outcome.passed());
        assert_eq!(r.output.len(), MAX_OUTPUT);
        let r = run(&check(CheckKind::Exec, &["/nonexistent/asa"], 1000), target(80)).await;
        assert_eq!(reason_of(&r.outcome), "cannot_run:entity_not_found");
        // A TLCLB-style agent: sees IP PORT PROTO.
        let agent =
            check(CheckKind::Agent, &["/bin/sh", "-c", "test \"$0 $1 $2\" = \"127.0.0.1 8080 1\""], 5000);
        assert!(run(&agent, target(8080)).await.outcome.passed());
        assert!(!run(&agent, target(8081)).await.outcome.passed());
    });
}

/// Whether `pid` is gone or a zombie (killed, not yet reaped by its new parent).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_program_past_its_timeout_dies_with_its_whole_group() {
    let dir = std::env::temp_dir().join(format!("cs-health-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pidfile = dir.join("child.pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    rt().block_on(async {
        let r = run(&check(CheckKind::Exec, &["/bin/sh", "-c", &script], 300), target(80)).await;
        assert_eq!(r.outcome, Outcome::Timeout);
    });
    let child: u32 = std::fs::read_to_string(&pidfile).expect("pid file").trim().parse().expect("pid");
    // SIGKILL is delivered before killpg returns; the state changes by the time we look,
    // give the kernel a few reads.
    let gone = (0..1000).any(|_| dead(child));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(gone, "the program's background child {child} survived the timeout");
}
