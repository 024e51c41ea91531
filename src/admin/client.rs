//! The HTTP/1.1 client of `cmc` (and of the tests): one request per connection, JSON bodies,
//! and the server-sent event stream. Small on purpose: the admin API is ours, on loopback or
//! a management network, and each failure is turned into what an operator can act on.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::model::{ActionDone, ApiError, EventRecord};

/// Why a request failed, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at {addr}: nothing listens there (is clusterserverd running on this host, with admin_port {port}?)", port = addr.port())]
    Down { addr: SocketAddr },
    #[error(
        "the daemon at {addr} closed the connection without answering: this host's address is most likely refused by its security.admin_allow / admin_deny lists"
    )]
    RefusedByAcl { addr: SocketAddr },
    #[error("the daemon refused the token ({0}): check security.token_file and its contents")]
    Unauthorized(String),
    #[error("{0}")]
    Api(String),
    #[error("no answer from the daemon at {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to the daemon at {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("the daemon at {addr} answered something that is not HTTP: {what}")]
    Protocol { addr: SocketAddr, what: String },
}

/// A response: status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A client of one daemon.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    token: Option<String>,
    pub timeout: Duration,
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Client { addr, token, timeout: Duration::from_secs(10) }
    }

    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let addr = self.addr;
        match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Err(_) => Err(ClientError::Timeout { addr, timeout: self.timeout }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(ClientError::Down { addr })
            }
            Ok(Err(source)) => Err(ClientError::Io { addr, source }),
            Ok(Ok(s)) => Ok(s),
        }
    }

    fn head(&self, method: &str, path: &str, body: Option<&str>, accept: &str) -> String {
        let mut h = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(t) = &self.token {
            h.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            h.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
        }
        h.push_str("\r\n");
        h.push_str(body.unwrap_or(""));
        h
    }

    /// Sends the request and reads the status line and headers.
    async fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        accept: &str,
    ) -> Result<(u16, bool, BufReader<TcpStream>), ClientError> {
        let addr = self.addr;
        let mut s = self.connect().await?;
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                ClientError::RefusedByAcl { addr }
            }
            _ => ClientError::Io { addr, source },
        };
        s.write_all(self.head(method, path, body, accept).as_bytes()).await.map_err(io)?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(io)?;
        if n == 0 {
            return Err(ClientError::RefusedByAcl { addr });
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| ClientError::Protocol { addr, what: line.trim().to_string() })?;
        let mut chunked = false;
        loop {
            line.clear();
            r.read_line(&mut line).await.map_err(io)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        Ok((status, chunked, r))
    }

    /// One request; the whole body.
    pub async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<Reply, ClientError> {
        let addr = self.addr;
        let fut = async {
            let (status, chunked, mut r) = self.open(method, path, body, "application/json").await?;
            let mut raw = Vec::new();
            r.read_to_end(&mut raw).await.map_err(|source| ClientError::Io { addr, source })?;
            let body = if chunked { dechunk(&raw) } else { raw };
            Ok(Reply { status, body: String::from_utf8_lossy(&body).into_owned() })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout { addr, timeout: self.timeout })?
    }

    fn check(&self, r: Reply) -> Result<String, ClientError> {
        let msg = || {
            serde_json::from_str::<ApiError>(&r.body).map_or_else(|_| r.body.trim().to_string(), |e| e.error)
        };
        match r.status {
            200..=299 => Ok(r.body),
            401 => Err(ClientError::Unauthorized(msg())),
            code => Err(ClientError::Api(format!("{} (HTTP {code})", msg()))),
        }
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.check(self.request("GET", path, None).await?)?;
        serde_json::from_str(&body)
            .map_err(|e| ClientError::Protocol { addr: self.addr, what: format!("{path}: {e}") })
    }

    /// `GET path` as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        self.check(self.request("GET", path, None).await?)
    }

    /// `POST path` with an optional JSON body; the daemon's confirmation.
    pub async fn post(&self, path: &str, body: Option<&str>) -> Result<String, ClientError> {
        let body = self.check(self.request("POST", path, body).await?)?;
        Ok(serde_json::from_str::<ActionDone>(&body).map_or(body, |d| d.done))
    }

    /// Follows `GET /v1/events`, calling `each` per event until it returns `false` or the
    /// stream ends.
    pub async fn events(&self, mut each: impl FnMut(EventRecord) -> bool) -> Result<(), ClientError> {
        let addr = self.addr;
        let io = |source| ClientError::Io { addr, source };
        let (status, chunked, mut r) = self.open("GET", "/v1/events", None, "text/event-stream").await?;
        if status != 200 {
            let mut raw = Vec::new();
            r.read_to_end(&mut raw).await.map_err(io)?;
            let body = if chunked { dechunk(&raw) } else { raw };
            self.check(Reply { status, body: String::from_utf8_lossy(&body).into_owned() })?;
            return Ok(());
        }
        let mut pending = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.map_err(io)? == 0 {
                return Ok(());
            }
            if chunked {
                // A chunk-size line, then that many bytes, then CRLF.
                let Ok(size) = usize::from_str_radix(line.trim(), 16) else { continue };
                if size == 0 {
                    return Ok(());
                }
                let mut chunk = vec![0u8; size + 2];
                r.read_exact(&mut chunk).await.map_err(io)?;
                pending.push_str(&String::from_utf8_lossy(&chunk[..size]));
            } else {
                pending.push_str(&line);
            }
            while let Some(end) = pending.find('\n') {
                let l: String = pending.drain(..=end).collect();
                if let Some(data) = l.trim_end().strip_prefix("data:")
                    && let Ok(ev) = serde_json::from_str::<EventRecord>(data.trim())
                    && !each(ev)
                {
                    return Ok(());
                }
            }
        }
    }
}

/// Joins a chunked body (malformed tails are cut).
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            std::str::from_utf8(&rest[..pos]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else { break };
        let start = pos + 2;
        let Some(chunk) = rest.get(start..start + size) else { break };
        out.extend_from_slice(chunk);
        rest = rest.get(start + size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(super::dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
