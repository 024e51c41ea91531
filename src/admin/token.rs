//! The admin bearer token: read from `security.token_file`, which must be a regular file of
//! mode 0600 (or stricter) — a token readable by other users is no secret, so the daemon
//! refuses to start with one rather than warn — and compared in constant time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "admin token file {path} has mode {mode:04o}: it must be readable by its owner only (chmod 600 {path})"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("admin token file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("admin token file {path} holds {len} bytes after trimming: at least 8 are needed")]
    TooShort { path: PathBuf, len: usize },
}

/// A loaded token.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Shortest token accepted (bytes).
pub const MIN_TOKEN_LEN: usize = 8;

impl Token {
    /// Reads `path`, checking its type and mode. Surrounding whitespace is not part of it.
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let read = |source| TokenError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(TokenError::NotAFile { path: path.to_path_buf() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode { path: path.to_path_buf(), mode });
        }
        let text = std::fs::read(path).map_err(read)?;
        let token = text.trim_ascii().to_vec();
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { path: path.to_path_buf(), len: token.len() });
        }
        Ok(Token(token))
    }

    /// A token from bytes (tests, the CLI).
    pub fn from_bytes(b: &[u8]) -> Token {
        Token(b.to_vec())
    }

    /// The token as text for an `Authorization` header (the CLI).
    pub fn as_str(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Constant-time check of an `Authorization` header value (`Bearer TOKEN`).
    pub fn matches_header(&self, header: Option<&[u8]>) -> bool {
        let Some(h) = header else { return false };
        let Some(given) = h.strip_prefix(b"Bearer ") else { return false };
        // `ct_eq` on slices of different lengths is false without comparing contents; the
        // length of the token is not the secret.
        bool::from(given.trim_ascii().ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str, mode: u32) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cs-token-{}-{name}", std::process::id()));
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn a_0600_file_loads_and_matches_only_its_token() {
        let p = write("ok", "0123456789abcdef0123\n", 0o600);
        let t = Token::load(&p).expect("loads");
        assert!(t.matches_header(Some(b"Bearer 0123456789abcdef0123")));
        assert!(!t.matches_header(Some(b"Bearer 0123456789abcdef012")));
        assert!(!t.matches_header(Some(b"Bearer 0123456789abcdef01234")));
        assert!(!t.matches_header(Some(b"Basic 0123456789abcdef0123")));
        assert!(!t.matches_header(None));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_group_readable_or_short_file_is_refused_with_the_reason() {
        let p = write("mode", "0123456789abcdef0123", 0o640);
        let e = Token::load(&p).expect_err("0640 refused").to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        let _ = std::fs::remove_file(p);
        let p = write("short", "abc", 0o600);
        let e = Token::load(&p).expect_err("short refused").to_string();
        assert!(e.contains("at least 8"), "{e}");
        let _ = std::fs::remove_file(p);
    }
}
