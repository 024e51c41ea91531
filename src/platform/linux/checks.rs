//! The real health checkers: ICMP echo, TCP connect, HTTP and HTTPS GET, and external
//! programs (ASA programs and TLCLB agents). Each run returns a [`Report`] whose
//! [`Outcome`] the health state machine ([`crate::health`]) counts.
//!
//! * **ping**: one ICMP or ICMPv6 echo on a raw socket ([`super::icmp::ping_ip`]).
//! * **tcp**: a TCP connect; up once the handshake completes (the connection is closed at
//!   once).
//! * **http / https**: `GET path HTTP/1.1` with `Connection: close`, up iff the status
//!   line's code equals `expect_status`. A small hand-written client: only the status line
//!   is read (at most [`MAX_STATUS_LINE`] bytes).
//! * **HTTPS does not verify the server's certificate chain or name** (a deliberate
//!   choice): checks address servers by IP, behind a VIP whose name the certificate carries,
//!   often with internal or self-signed certificates, and a health check asks "does this
//!   server answer", not "is it who it claims". The handshake's signatures are still
//!   verified (the server holds the key of the certificate it sent), and TLS 1.2 and 1.3
//!   are offered with rustls' safe defaults.
//! * **exec**: the command with `{address}`, `{port}` and `{proto}` (1 = TCP, 2 = UDP)
//!   substituted; **agent**: the command followed by `IP PORT PROTO` (TLCLB's convention).
//!   Exit 0 = up. The program runs in its own process group (`process_group(0)`) with
//!   stdin from /dev/null; when the timeout expires the **whole group** gets SIGKILL
//!   (`killpg`) and the run is a timeout. At most [`MAX_OUTPUT`] bytes of stdout and of
//!   stderr are kept (the rest is read and dropped so the program never blocks on a full
//!   pipe) and returned for the log.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Check, CheckKind, Protocol, Server};
use crate::health::Outcome;
use crate::health::driver::Checker;

/// Longest HTTP status line read.
pub const MAX_STATUS_LINE: usize = 1024;
/// Bytes of stdout and of stderr kept from a program.
pub const MAX_OUTPUT: usize = 4096;

pub use crate::health::driver::{Report, Target};

/// The daemon's [`Checker`]: every check run for real by [`run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxChecker;

impl Checker for LinuxChecker {
    fn run<'a>(
        &'a self,
        check: &'a Check,
        _server: &'a Server,
        target: Target,
    ) -> impl Future<Output = Report> + 'a {
        run(check, target)
    }
}

/// Runs `check` once against `target`, giving up after the check's timeout.
pub async fn run(check: &Check, target: Target) -> Report {
    let timeout = Duration::from_millis(check.timeout_ms);
    let start = tokio::time::Instant::now();
    let fail = |reason: String| Outcome::Fail { latency: start.elapsed(), reason };
    let (outcome, output) = match check.kind {
        CheckKind::Exec | CheckKind::Agent => {
            let argv = command_line(check, target);
            let r = exec(&argv, timeout).await;
            let outcome = match r.status {
                _ if r.timed_out => Outcome::Timeout,
                Ok(0) => Outcome::Pass { latency: start.elapsed() },
                Ok(code) => fail(format!("exit_{code}")),
                Err(ref e) => fail(e.clone()),
            };
            (outcome, r.output)
        }
        kind => {
            let probe = async {
                match kind {
                    CheckKind::Ping => ping(target.address, timeout).await,
                    CheckKind::Tcp => TcpStream::connect((target.address, target.port)).await.map(drop),
                    _ => {
                        let path = check.path.as_deref().unwrap_or("/");
                        let want = check.expect_status.unwrap_or(200);
                        let tls = kind == CheckKind::Https;
                        match http_get(target.address, target.port, path, tls).await? {
                            s if s == want => Ok(()),
                            s => Err(io::Error::other(format!("status_{s}"))),
                        }
                    }
                }
            };
            let outcome = match tokio::time::timeout(timeout, probe).await {
                Err(_) => Outcome::Timeout,
                Ok(Ok(())) => Outcome::Pass { latency: start.elapsed() },
                Ok(Err(e)) => fail(reason(&e)),
            };
            (outcome, String::new())
        }
    };
    Report { outcome, output }
}

/// A short reason without spaces (`connection_refused`, `status_503`).
fn reason(e: &io::Error) -> String {
    let text = match e.kind() {
        io::ErrorKind::Other => e.to_string(),
        k => k.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join("_").to_lowercase()
}

async fn ping(address: IpAddr, timeout: Duration) -> io::Result<()> {
    match super::icmp::ping_ip(address, timeout).await? {
        true => Ok(()),
        false => Err(io::Error::other("no_echo_reply")),
    }
}

/// TLCLB's protocol numbers: 1 = TCP, 2 = UDP.
pub fn proto_number(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "1",
        Protocol::Udp => "2",
    }
}

/// The argv of an exec or agent check for `target`.
pub fn command_line(check: &Check, target: Target) -> Vec<String> {
    let addr = target.address.to_string();
    let port = target.port.to_string();
    let proto = proto_number(target.protocol);
    match check.kind {
        CheckKind::Agent => {
            let mut argv = check.command.clone();
            argv.extend([addr, port, proto.to_string()]);
            argv
        }
        _ => check
            .command
            .iter()
            .map(|a| a.replace("{address}", &addr).replace("{port}", &port).replace("{proto}", proto))
            .collect(),
    }
}

/// What a program did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit code; `Err`: it could not start, or died of a signal (as a reason word).
    pub status: Result<i32, String>,
    pub timed_out: bool,
    /// stdout then stderr, each bounded to [`MAX_OUTPUT`] bytes, lossy UTF-8, trimmed.
    pub output: String,
}

/// Runs `argv` in its own process group; after `timeout` the group is SIGKILLed.
pub async fn exec(argv: &[String], timeout: Duration) -> ExecResult {
    exec_env(argv, &[], timeout).await
}

/// [`exec`] with extra environment variables.
pub async fn exec_env(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> ExecResult {
    let err = |status: String| ExecResult { status: Err(status), timed_out: false, output: String::new() };
    let Some((program, args)) = argv.split_first() else { return err("empty_command".into()) };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return err(format!("cannot_run:{}", reason(&e))),
    };
    let pid = child.id();
    let (out, errs) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (status, out, errs) = tokio::join!(child.wait(), drain(out), drain(errs));
        (status, out, errs)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((status, out, errs)) => {
            let status = match status {
                Ok(s) => s.code().ok_or_else(|| "killed_by_signal".to_string()),
                Err(e) => Err(reason(&e)),
            };
            ExecResult { status, timed_out: false, output: join_output(&out, &errs) }
        }
        Err(_) => {
            // The leader is not reaped yet, so its pid still names our process group.
            if let Some(pid) = pid {
                let _ = super::netsys::kill_process_group(pid);
            }
            let _ = child.wait().await;
            ExecResult { status: Err("timeout".into()), timed_out: true, output: String::new() }
        }
    }
}

/// Reads a pipe to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn drain<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

fn join_output(out: &[u8], errs: &[u8]) -> String {
    let (o, e) = (String::from_utf8_lossy(out), String::from_utf8_lossy(errs));
    let (o, e) = (o.trim(), e.trim());
    match (o.is_empty(), e.is_empty()) {
        (_, true) => o.to_string(),
        (true, false) => e.to_string(),
        (false, false) => format!("{o} | {e}"),
    }
}

/// `GET path` from `address:port` over TCP (or TLS); the status code of the answer.
pub async fn http_get(address: IpAddr, port: u16, path: &str, tls: bool) -> io::Result<u16> {
    let tcp = TcpStream::connect(SocketAddr::new(address, port)).await?;
    let host = match address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: clusterserver-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if tls {
        let name = ServerName::IpAddress(address.into());
        let stream = tls_connector().connect(name, tcp).await?;
        status_of(stream, req.as_bytes()).await
    } else {
        status_of(tcp, req.as_bytes()).await
    }
}

/// Sends `req` and parses the status line of the answer.
pub async fn status_of<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> io::Result<u16> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut line = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while !line.contains(&b'\n') && line.len() < MAX_STATUS_LINE {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&line).ok_or_else(|| io::Error::other("bad_http_answer"))
}

/// The code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(data: &[u8]) -> Option<u16> {
    let end = data.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&data[..end]).ok()?.trim_end();
    let mut words = line.split(' ');
    let version = words.next()?;
    let code = words.next()?;
    let ok = version.starts_with("HTTP/1.") && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| code.parse().ok()).flatten().filter(|c| (100..=599).contains(c))
}

/// One TLS client configuration for every HTTPS check (see the module docs: no chain or
/// name verification).
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        })
        .clone()
}

/// Accepts any certificate chain and name; still checks handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
