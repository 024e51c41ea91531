//! `clusterserver-asa`: the ASA (application status agent) programs shipped with
//! clusterserver, one multi-call binary.
//!
//! ```text
//! clusterserver-asa PROBE IP PORT [PROTO] [OPTIONS]     PROBE: http | smtp | dns
//! http IP PORT [PROTO] [OPTIONS]                         (called through a link named PROBE)
//! ```
//!
//! Installed as `/usr/lib/clusterserver/asa/clusterserver-asa` with the links
//! `/usr/lib/clusterserver/asa/{http,smtp,dns}` pointing at it (`scripts/install` makes
//! them); the program dispatches on the name it was called by, else on its first argument.
//! The argument order is TLCLB's agent convention, `IP PORT PROTO` (PROTO 1 = TCP,
//! 2 = UDP, optional), so the links work both as `kind: "agent"` checks and as `kind:
//! "exec"` checks with `["/usr/lib/clusterserver/asa/smtp", "{address}", "{port}"]`.
//!
//! Exit status: **0** the service answered correctly (up), **1** it did not (down), **2**
//! usage error. One line on stdout says what was seen (the daemon logs it).
//!
//! * **http**: `GET PATH` (default `/`, option `--path /health`); up on a 2xx or 3xx status.
//!   `--tls` speaks HTTPS (certificate not verified, as for the daemon's `https` checks).
//! * **smtp**: the greeting must be `220` (multi-line greetings allowed), `EHLO` must get
//!   `250`; then `QUIT`.
//! * **dns**: one query (default: `.` `SOA`, option `--name example.com`) over UDP, or
//!   TCP when PROTO is 1; up on a well-formed response (QR set, same id, same question)
//!   with RCODE NOERROR or NXDOMAIN. An authoritative server that refuses the root: pass
//!   `--name` with a zone it serves.
//!
//! Common option: `--timeout-ms N` (default 5000); the daemon also kills the program at the
//! check's `timeout_ms`.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clusterserver::platform::linux::checks::http_get;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

const PROBES: &[&str] = &["http", "smtp", "dns"];
const USAGE: &str =
    "usage: clusterserver-asa {http|smtp|dns} IP PORT [PROTO] [--path P] [--tls] [--name N] [--timeout-ms N]";

#[derive(Debug, PartialEq, Eq)]
struct Args {
    probe: String,
    address: IpAddr,
    port: u16,
    /// 1 = TCP, 2 = UDP (TLCLB); `None`: the probe's usual transport.
    proto: Option<u8>,
    path: String,
    /// http: HTTPS.
    tls: bool,
    name: String,
    timeout: Duration,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let called = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("");
    let (probe, rest) = if PROBES.contains(&called) {
        (called.to_string(), &argv[1.min(argv.len())..])
    } else {
        match argv.get(1) {
            Some(p) if PROBES.contains(&p.as_str()) => (p.clone(), &argv[2..]),
            Some(p) => return Err(format!("unknown probe {p:?}")),
            None => return Err("no probe named".into()),
        }
    };
    let mut positional = Vec::new();
    let (mut path, mut name, mut timeout) = ("/".to_string(), ".".to_string(), Duration::from_secs(5));
    let mut tls = false;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--path" => path = value()?,
            "--tls" => tls = true,
            "--name" => name = value()?,
            "--timeout-ms" => {
                let v = value()?;
                timeout = Duration::from_millis(v.parse().map_err(|_| format!("bad --timeout-ms {v:?}"))?);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => positional.push(s.to_string()),
        }
    }
    let (address, port, proto) = match positional.as_slice() {
        [a, p] => (a, p, None),
        [a, p, pr] => (a, p, Some(pr)),
        _ => return Err("expected IP PORT [PROTO]".into()),
    };
    let address = address.parse().map_err(|_| format!("bad IP address {address:?}"))?;
    let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let proto = match proto.map(String::as_str) {
        None => None,
        Some("1") => Some(1),
        Some("2") => Some(2),
        Some(p) => return Err(format!("bad PROTO {p:?} (1 = TCP, 2 = UDP)")),
    };
    if !path.starts_with('/') {
        return Err(format!("--path must start with '/', got {path:?}"));
    }
    Ok(Args { probe, address, port, proto, path, tls, name, timeout })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("clusterserver-asa: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("down: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async { tokio::time::timeout(args.timeout, probe(&args)).await });
    match result {
        Ok(Ok(what)) => {
            println!("up: {what}");
            ExitCode::SUCCESS
        }
        Ok(Err(why)) => {
            println!("down: {why}");
            ExitCode::from(1)
        }
        Err(_) => {
            println!("down: no answer within {} ms", args.timeout.as_millis());
            ExitCode::from(1)
        }
    }
}

async fn probe(a: &Args) -> Result<String, String> {
    match a.probe.as_str() {
        "http" => {
            let status = http_get(a.address, a.port, &a.path, a.tls).await.map_err(|e| e.to_string())?;
            match status {
                200..=399 => Ok(format!("HTTP {status} for {}", a.path)),
                _ => Err(format!("HTTP {status} for {}", a.path)),
            }
        }
        "smtp" => smtp(SocketAddr::new(a.address, a.port)).await,
        _ => dns(a).await,
    }
}

/// Reads one SMTP reply (all its lines); returns its code and last line.
async fn smtp_reply<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<(u16, String), String> {
    for _ in 0..64 {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        let (code, more) =
            parse_smtp_line(&line).ok_or_else(|| format!("not an SMTP reply: {:?}", line.trim_end()))?;
        if !more {
            return Ok((code, line.trim_end().to_string()));
        }
    }
    Err("reply longer than 64 lines".into())
}

/// Code and continuation flag of a reply line: `250-x` continues, `250 x` ends.
fn parse_smtp_line(line: &str) -> Option<(u16, bool)> {
    let b = line.as_bytes();
    let code = line.get(..3)?.parse().ok().filter(|c| (200..=599).contains(c))?;
    match b.get(3) {
        Some(b'-') => Some((code, true)),
        Some(b' ') | Some(b'\r') | Some(b'\n') | None => Some((code, false)),
        _ => None,
    }
}

async fn smtp(to: SocketAddr) -> Result<String, String> {
    let s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r.take(64 * 1024));
    let (code, banner) = smtp_reply(&mut r).await?;
    if code != 220 {
        return Err(format!("greeting {banner:?}"));
    }
    w.write_all(b"EHLO clusterserver-asa\r\n").await.map_err(|e| e.to_string())?;
    let (code, line) = smtp_reply(&mut r).await?;
    let _ = w.write_all(b"QUIT\r\n").await;
    if code != 250 {
        return Err(format!("EHLO answered {line:?}"));
    }
    let _ = smtp_reply(&mut r).await;
    Ok(format!("SMTP {banner}"))
}

/// A query for `name`, type SOA, class IN, recursion desired.
fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let len = u8::try_from(label.len()).ok().filter(|l| *l <= 63).ok_or("DNS label longer than 63")?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 6, 0, 1]);
    Ok(q)
}

/// Checks an answer to `query`: same id, QR set, one question equal to ours; returns RCODE.
fn dns_check(query: &[u8], answer: &[u8]) -> Result<u8, String> {
    if answer.len() < query.len() {
        return Err(format!("short DNS answer ({} bytes)", answer.len()));
    }
    if answer[..2] != query[..2] {
        return Err("DNS answer with another id".into());
    }
    if answer[2] & 0x80 == 0 {
        return Err("DNS packet is not a response".into());
    }
    if answer[4..6] != [0, 1] || answer[12..query.len()] != query[12..] {
        return Err("DNS answer to another question".into());
    }
    Ok(answer[3] & 0x0f)
}

async fn dns(a: &Args) -> Result<String, String> {
    let id = (std::collections::hash_map::RandomState::new().build_hasher().finish() & 0xffff) as u16;
    let query = dns_query(id, &a.name)?;
    let to = SocketAddr::new(a.address, a.port);
    let answer = if a.proto == Some(1) {
        let mut s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let mut framed = u16::try_from(query.len()).map_err(|_| "query too long")?.to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        s.write_all(&framed).await.map_err(|e| e.to_string())?;
        let len = s.read_u16().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        buf
    } else {
        let bind: SocketAddr =
            if a.address.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let s = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        s.connect(to).await.map_err(|e| e.to_string())?;
        s.send(&query).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        // Datagrams with another id (late answers to someone else) are skipped.
        loop {
            let n = s.recv(&mut buf).await.map_err(|e| e.to_string())?;
            if buf[..n.min(2)] == query[..2] {
                buf.truncate(n);
                break buf;
            }
        }
    };
    match dns_check(&query, &answer)? {
        0 => Ok(format!("DNS NOERROR for {}", a.name)),
        3 => Ok(format!("DNS NXDOMAIN for {}", a.name)),
        r => Err(format!("DNS RCODE {r} for {}", a.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn dispatch_on_name_or_first_argument() {
        let a = parse(&argv("/usr/lib/clusterserver/asa/smtp 10.0.0.3 25 1")).expect("ok");
        assert_eq!((a.probe.as_str(), a.port, a.proto), ("smtp", 25, Some(1)));
        let a = parse(&argv("clusterserver-asa http 10.0.0.3 8080 --path /health")).expect("ok");
        assert_eq!((a.probe.as_str(), a.path.as_str(), a.proto, a.tls), ("http", "/health", None, false));
        assert!(parse(&argv("http 10.0.0.3 443 1 --tls")).expect("ok").tls);
        let a = parse(&argv("dns ::1 53 2 --name example.com --timeout-ms 300")).expect("ok");
        assert_eq!((a.name.as_str(), a.timeout), ("example.com", Duration::from_millis(300)));
        for bad in [
            "clusterserver-asa",
            "clusterserver-asa ftp 10.0.0.3 21",
            "http 10.0.0.3",
            "http 10.0.0.3 99999",
            "http host 80",
            "http 10.0.0.3 80 3",
            "http 10.0.0.3 80 --path x",
            "http 10.0.0.3 80 --bogus",
        ] {
            assert!(parse(&argv(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn smtp_reply_lines() {
        assert_eq!(parse_smtp_line("220 mx ESMTP\r\n"), Some((220, false)));
        assert_eq!(parse_smtp_line("250-PIPELINING\r\n"), Some((250, true)));
        assert_eq!(parse_smtp_line("250\r\n"), Some((250, false)));
        assert_eq!(parse_smtp_line("HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse_smtp_line("2200 x"), None);
    }

    #[test]
    fn dns_query_and_answer_checks() {
        let q = dns_query(0xbeef, "example.com.").expect("query");
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x06\x00\x01");
        let root = dns_query(1, ".").expect("query");
        assert_eq!(root.len(), 12 + 1 + 4);
        let mut a = q.clone();
        a[2] |= 0x80;
        a[3] = 0x83; // RA + NXDOMAIN
        assert_eq!(dns_check(&q, &a), Ok(3));
        a.extend_from_slice(&[0xc0, 0x0c]); // answers may follow the question
        assert_eq!(dns_check(&q, &a), Ok(3));
        let mut wrong_id = a.clone();
        wrong_id[1] ^= 1;
        assert!(dns_check(&q, &wrong_id).is_err());
        assert!(dns_check(&q, &q).is_err(), "a query is not an answer");
        let mut other = a.clone();
        other[15] = b'z';
        assert!(dns_check(&q, &other).is_err());
        assert!(dns_check(&q, &a[..10]).is_err());
        assert!(dns_query(1, &"a".repeat(64)).is_err());
    }
}
