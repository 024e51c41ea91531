//! The lab's own traffic programs, run *inside* lab namespaces with `ip netns exec`:
//!
//! * `stream-server`: the long-lived TCP service on the real servers; answers each line
//!   `N` with `NAME N`.
//! * `load`: the client. Paced HTTP/1.0 requests to the VIP (each timestamped: start, end,
//!   ok, answering server), and `long_lived` stream connections that send a line every
//!   200 ms and must keep being answered by the same server. Bounded in count and time.
//!
//! The client writes one CSV line per request and per flow to its output file; times are
//! Unix milliseconds (wall clock: the runner, in another process, reads them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

const MAX_STREAM_CONNECTIONS: usize = 512;
const REQUEST_TIMEOUT_MS: u64 = 150;
const WORKERS: u64 = 8;
const SLOT_SLACK_MS: u64 = 50;
const FLOW_PERIOD_MS: u64 = 200;
/// A flow that was not answered in its last this-many ms counts as lost.
pub const FLOW_SILENCE_MS: u64 = 3000;
/// Upper bound of the load's requests per second.
pub const MAX_RATE: u32 = 2000;

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `stream-server PORT NAME MAX_S`: echoes lines prefixed with NAME, for at most MAX_S seconds.
pub fn stream_server(port: u16, name: &str, max_s: u64) -> anyhow::Result<()> {
    // Both families on one socket (`[::]`, not v6-only: IPv4 clients arrive v4-mapped);
    // IPv4 alone where the namespace has no IPv6.
    let listener = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| format!("bind port {port}"))?;
    let open = Arc::new(AtomicUsize::new(0));
    let deadline = unix_ms() + max_s * 1000;
    std::thread::spawn(move || {
        while unix_ms() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if open.load(Ordering::Relaxed) >= MAX_STREAM_CONNECTIONS {
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (open, name) = (open.clone(), name.to_string());
        std::thread::spawn(move || {
            let _ = echo(conn, &name);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn echo(conn: TcpStream, name: &str) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let line = line?;
        // One write per reply: `writeln!` on the bare socket writes each piece separately,
        // and with direct routing (replies straight to the client, its ACKs through the
        // ATM) Nagle then holds the rest of a line while a failover loses the ACK, so the
        // client's timed-out read split "node1 9" into "node1 " and "9".
        out.write_all(format!("{name} {}\n", line.trim()).as_bytes())?;
    }
    Ok(())
}

/// Parameters of the client load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub vip: SocketAddr,
    pub stream: SocketAddr,
    pub rate: u32,
    pub duration_ms: u64,
    pub flows: u32,
    pub out: std::path::PathBuf,
}

/// Runs the client load and writes the CSV file.
pub fn load(spec: &LoadSpec) -> anyhow::Result<()> {
    if spec.rate == 0 || spec.rate > MAX_RATE {
        bail!("rate must be 1..={MAX_RATE} requests/s");
    }
    let start = unix_ms();
    let end = start + spec.duration_ms;
    let total = u64::from(spec.rate) * spec.duration_ms / 1000;
    let mut lines: Vec<String> = Vec::new();
    let flows: Vec<_> = (0..spec.flows)
        .map(|i| {
            let s = spec.clone();
            std::thread::spawn(move || flow(i, &s, end))
        })
        .collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let s = spec.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut i = w;
                while i < total {
                    let at = start + i * 1000 / u64::from(s.rate);
                    let now = unix_ms();
                    if now >= end {
                        break;
                    }
                    // Slots missed while a request hung are skipped, not fired in a burst:
                    // the offered load never exceeds the rate.
                    if now > at + SLOT_SLACK_MS {
                        i += WORKERS;
                        continue;
                    }
                    if at > now {
                        std::thread::sleep(Duration::from_millis(at - now));
                    }
                    let t0 = unix_ms();
                    let r = request(s.vip);
                    let t1 = unix_ms();
                    let (ok, server) = match r {
                        Ok(name) => (1, name),
                        Err(e) => (0, e.kind().to_string().replace(',', ";")),
                    };
                    out.push(format!("req,{t0},{t1},{ok},{server}"));
                    i += WORKERS;
                }
                out
            })
        })
        .collect();
    for w in workers {
        lines.extend(w.join().unwrap_or_default());
    }
    for f in flows {
        lines.push(f.join().unwrap_or_else(|_| "flow,?,0,0,0,1,,panicked".into()));
    }
    let mut text = format!("start,{start},{end}\n");
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    std::fs::write(&spec.out, text).with_context(|| format!("writing {}", spec.out.display()))
}

/// One HTTP/1.0 GET; returns the body's first word (the answering server's name).
fn request(vip: SocketAddr) -> std::io::Result<String> {
    let t = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let mut s = TcpStream::connect_timeout(&vip, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")?;
    let mut buf = Vec::with_capacity(512);
    s.take(64 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let ok = text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").split_whitespace().next().unwrap_or("");
    if !ok || body.is_empty() {
        return Err(std::io::Error::other("bad-response"));
    }
    Ok(body.to_string())
}

/// One long-lived flow until `end`: `flow,ID,OPENED,LAST_REPLY,REPLIES,LOST,SERVERS,ERROR`.
fn flow(id: u32, s: &LoadSpec, end: u64) -> String {
    let t = Duration::from_millis(FLOW_PERIOD_MS);
    let mut conn = None;
    for _ in 0..25 {
        if let Ok(c) = TcpStream::connect_timeout(&s.stream, Duration::from_millis(REQUEST_TIMEOUT_MS)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(t);
    }
    let opened = unix_ms();
    let Some(conn) = conn else {
        return format!("flow,{id},{opened},0,0,1,,could-not-connect");
    };
    let _ = conn.set_read_timeout(Some(t));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => return format!("flow,{id},{opened},0,0,1,,{}", e.kind()),
    };
    let mut reader = BufReader::new(conn);
    let (mut last, mut replies, mut servers, mut error) = (0u64, 0u64, Vec::<String>::new(), String::new());
    let mut seq = 0u64;
    let mut line = String::new();
    while unix_ms() < end {
        seq += 1;
        if let Err(e) = writeln!(writer, "{seq}") {
            error = format!("write-{}", e.kind());
            break;
        }
        let sent = unix_ms();
        while unix_ms() < sent + FLOW_PERIOD_MS {
            // A read that times out mid-line keeps what it read in `line` (read_line appends):
            // only a complete line is taken and cleared.
            match reader.read_line(&mut line) {
                Ok(0) => {
                    error = "closed".into();
                    break;
                }
                Ok(_) if !line.ends_with('\n') => {}
                Ok(_) => {
                    let name = line.split_whitespace().next().unwrap_or("").to_string();
                    line.clear();
                    if !servers.contains(&name) {
                        servers.push(name);
                    }
                    replies += 1;
                    last = unix_ms();
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => {
                    error = format!("read-{}", e.kind());
                    break;
                }
            }
        }
        if !error.is_empty() {
            break;
        }
        let wait = (sent + FLOW_PERIOD_MS).saturating_sub(unix_ms());
        std::thread::sleep(Duration::from_millis(wait));
    }
    let silent = end.saturating_sub(last) > FLOW_SILENCE_MS;
    let lost = !error.is_empty() || silent || servers.len() != 1;
    let error = if error.is_empty() && silent { "silent".to_string() } else { error.replace(',', ";") };
    format!("flow,{id},{opened},{last},{replies},{},{},{error}", u8::from(lost), servers.join("+"))
}
