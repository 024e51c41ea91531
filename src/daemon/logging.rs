//! Where the daemon's log lines go.
//!
//! * Started by systemd with stderr connected to the journal (`JOURNAL_STREAM` names the
//!   device and inode of that stream, and stderr is that stream): plain lines *without* a
//!   timestamp (journald stamps each line) and with a `<N>` syslog-priority prefix
//!   (journald's `SyslogLevelPrefix=`, on by default), so `journalctl -p warning` filters
//!   by level. Chosen over `tracing-journald` to keep one dependency-free path: the fields
//!   stay in the message text (`key=value`), which is what the labs and operators grep.
//! * Otherwise (a terminal, the init script's log file, the labs): the `tracing` fmt lines
//!   with an RFC 3339 timestamp, as before.
//!
//! `RUST_LOG` filters in both cases (default `info`).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether `journal_stream` (the `JOURNAL_STREAM` value, `DEV:INODE`) names the stream with
/// device `dev` and inode `ino`.
pub fn is_journal_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else { return false };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Whether this process's stderr is the journal stream systemd gave it.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(js) = std::env::var("JOURNAL_STREAM") else { return false };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => is_journal_stream(&js, m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// The syslog priority of a level (`<3>` error ... `<7>` debug and trace).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// The fmt line without a timestamp, prefixed with `<N>`.
#[derive(Debug)]
pub struct JournalFormat {
    inner: Format<Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        JournalFormat { inner: format().without_time().with_ansi(false) }
    }
}

fn format() -> Format<Full> {
    format::Format::default()
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the subscriber (once; later calls do nothing).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr);
    let _ = if stderr_is_journal() {
        builder.event_format(JournalFormat::default()).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(is_journal_stream("8:12345", 8, 12345));
        assert!(is_journal_stream("8:12345\n", 8, 12345));
        assert!(!is_journal_stream("8:12345", 8, 1234));
        assert!(!is_journal_stream("9:12345", 8, 12345));
        assert!(!is_journal_stream("garbage", 8, 12345));
        assert!(!is_journal_stream("", 0, 0));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
