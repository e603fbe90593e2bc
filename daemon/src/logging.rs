//! Where hregd's logs go, chosen once at start: the systemd journal natively
//! when stderr is the journal stream the service manager set up
//! (`$JOURNAL_STREAM` names stderr's device and inode), so the fields events
//! carry (`session`, `pid`, `uid`, `name`, `reason`, ...) become journal
//! fields (`journalctl -u hregd SESSION=12`); else lines on stderr, coloured
//! only when stderr is a terminal (and `$NO_COLOR` is unset). The filter is
//! `--log-level`, else `$RUST_LOG`, else `info`.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The journal's `SYSLOG_IDENTIFIER` of every entry.
pub const SYSLOG_IDENTIFIER: &str = "hregd";

/// Where log events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// The systemd journal, natively: one entry per event, fields as fields.
    Journal,
    /// Lines on stderr with ANSI colour.
    Terminal,
    /// Lines on stderr without escape sequences (a file, a pipe).
    Plain,
}

/// What decides the sink, read from the process's environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Surroundings {
    /// `$JOURNAL_STREAM`, if set (`DEVICE:INODE`, both decimal).
    pub journal_stream: Option<String>,
    /// Device and inode of stderr (`None` if it cannot be examined).
    pub stderr_id: Option<(u64, u64)>,
    /// Whether stderr is a terminal.
    pub stderr_is_terminal: bool,
    /// `$NO_COLOR` is set to something non-empty.
    pub no_color: bool,
}

impl Surroundings {
    /// This process's.
    pub fn current() -> Surroundings {
        let stderr = std::io::stderr();
        Surroundings {
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            stderr_id: rustix::fs::fstat(&stderr)
                .ok()
                .map(|st| (st.st_dev, st.st_ino)),
            stderr_is_terminal: stderr.is_terminal(),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        }
    }

    /// The sink these surroundings call for. The journal only when
    /// `$JOURNAL_STREAM` names stderr itself: a child whose stderr was
    /// redirected inherits the variable but not the stream.
    pub fn sink(&self) -> Sink {
        let stream = self
            .journal_stream
            .as_deref()
            .and_then(parse_journal_stream);
        if stream.is_some() && stream == self.stderr_id {
            Sink::Journal
        } else if self.stderr_is_terminal && !self.no_color {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }
}

/// `DEVICE:INODE` as systemd writes `$JOURNAL_STREAM`; `None` if malformed.
pub fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (device, inode) = text.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

/// The journal layer: event fields unprefixed (`session` becomes
/// `SESSION`, not tracing-journald's default `F_SESSION`), entries named
/// [`SYSLOG_IDENTIFIER`]. Fails when the journal's socket cannot be reached.
pub fn journal_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string()))
}

/// Installs the global subscriber for `level` (else `$RUST_LOG`, else
/// `info`) on the sink the surroundings call for, and returns the sink in
/// use. If the journal is called for but unreachable, logs plain lines to
/// stderr and says so once.
pub fn init(level: Option<&str>) -> Sink {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let sink = Surroundings::current().sink();
    let (journal, journal_error) = match sink {
        Sink::Journal => match journal_layer() {
            Ok(layer) => (Some(layer), None),
            Err(e) => (None, Some(e)),
        },
        Sink::Terminal | Sink::Plain => (None, None),
    };
    let lines = journal.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(sink == Sink::Terminal)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(lines)
        .init();
    match journal_error {
        Some(e) => {
            tracing::warn!(
                error = %e,
                "JOURNAL_STREAM names stderr but the journal socket cannot be reached; logging lines to stderr"
            );
            Sink::Plain
        }
        None => sink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn around(stream: Option<&str>, id: Option<(u64, u64)>, tty: bool) -> Surroundings {
        Surroundings {
            journal_stream: stream.map(str::to_string),
            stderr_id: id,
            stderr_is_terminal: tty,
            no_color: false,
        }
    }

    #[test]
    fn journal_stream_parses_as_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(
            parse_journal_stream("18446744073709551615:1"),
            Some((u64::MAX, 1))
        );
        for bad in [
            "", ":", "8", "8:", ":5", "a:b", "8:5:1", " 8:5", "8:5\n", "-1:5",
        ] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn journal_only_when_the_stream_is_stderr() {
        let id = Some((8, 12345));
        assert_eq!(around(Some("8:12345"), id, false).sink(), Sink::Journal);
        // Even on a terminal: the variable names the very stream.
        assert_eq!(around(Some("8:12345"), id, true).sink(), Sink::Journal);
        // Inherited by a process whose stderr went elsewhere.
        assert_eq!(around(Some("8:99"), id, false).sink(), Sink::Plain);
        assert_eq!(around(Some("9:12345"), id, true).sink(), Sink::Terminal);
        // Malformed, or stderr cannot be examined.
        assert_eq!(around(Some("junk"), id, false).sink(), Sink::Plain);
        assert_eq!(around(Some("8:12345"), None, false).sink(), Sink::Plain);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert_eq!(around(None, Some((1, 2)), true).sink(), Sink::Terminal);
        assert_eq!(around(None, Some((1, 2)), false).sink(), Sink::Plain);
        assert_eq!(around(None, None, false).sink(), Sink::Plain);
        let mut quiet = around(None, Some((1, 2)), true);
        quiet.no_color = true;
        assert_eq!(quiet.sink(), Sink::Plain);
    }

    #[test]
    fn this_test_process_is_read_consistently() {
        // Whatever runs the tests, the reading of the real process must
        // agree with what /proc says about fd 2.
        let here = Surroundings::current();
        let meta = std::fs::metadata("/proc/self/fd/2").expect("stat fd 2");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(here.stderr_id, Some((meta.dev(), meta.ino())));
        assert_eq!(here.stderr_is_terminal, std::io::stderr().is_terminal());
    }

    #[test]
    fn journal_layer_names_its_entries_hregd_or_says_why_not() {
        // Without a journal (a build machine, a container) construction
        // fails, which is what sends `init` to stderr lines; with one, the
        // entries carry hregd's identifier.
        match journal_layer() {
            Ok(layer) => assert_eq!(layer.syslog_identifier(), SYSLOG_IDENTIFIER),
            Err(e) => assert!(
                !std::path::Path::new("/run/systemd/journal/socket").exists()
                    || e.kind() != std::io::ErrorKind::NotFound,
                "{e}"
            ),
        }
    }
}
