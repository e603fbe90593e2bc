//! hregd's settings: defaults, the TOML file and the command line, merged in
//! that order (flags win), then checked as a whole.

use clap::Parser;
use hreg_proto::ring::Layout;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Defaults of the settings that are plain numbers (the rest are shown
/// where they are computed).
const DEFAULT_MAX_SESSIONS: usize = 1024;
const DEFAULT_MAX_RINGS: u32 = 64;
const DEFAULT_RING_ENTRIES: u32 = 256;
const DEFAULT_DATA_SIZE: u32 = 256 * 1024;
const DEFAULT_RESUME_GRACE: u64 = 30;
const DEFAULT_LOG_LEVEL: &str = "info";
/// The levels `log_level` accepts alone or after `target=`.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `text [default: value]`, as every setting's help ends.
fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

fn registry_default() -> hreg_registry::Limits {
    hreg_registry::Limits::default()
}

/// Command-line flags. Each one, when given, overrides the config file.
#[derive(Clone, Debug, Default, Parser)]
#[command(
    name = "hregd",
    version,
    about = "hregd: the daemon of hreg, a cross-process handle registry",
    after_help = after_help()
)]
pub struct Args {
    #[arg(long, value_name = "FILE", help = with_default(
        "TOML file with any of the settings below, each named with `_` for `-` \
         (`hregd --check-config` prints one); flags win over it", "none"))]
    pub config: Option<PathBuf>,
    /// Check the settings, print them as a --config file (TOML) and exit.
    #[arg(long)]
    pub check_config: bool,
    #[arg(long, value_name = "PATH", help = with_default(
        "Socket to listen on", "see \"Socket\" below"))]
    pub socket: Option<PathBuf>,
    #[arg(long, value_name = "MODE", value_parser = parse_octal, help = with_default(
        "Socket file mode, octal", "600, or 660 under /run/hreg"))]
    pub socket_mode: Option<u32>,
    #[arg(long, value_name = "GROUP", help = with_default(
        "Group of the socket file, a name or a gid", "the daemon's group"))]
    pub socket_group: Option<String>,
    #[arg(long, value_name = "N", help = with_default(
        "Ring worker threads, 1 to 64", "one per two cores, 1 to 4"))]
    pub workers: Option<usize>,
    #[arg(long, value_name = "N", help = with_default(
        "Registry shards, a power of two up to 1024", hreg_registry::DEFAULT_SHARDS))]
    pub shards: Option<usize>,
    #[arg(long, value_name = "BYTES", help = with_default(
        "Largest value, up to 1073741824", registry_default().max_value_size))]
    pub max_value_size: Option<u64>,
    #[arg(long, value_name = "N", help = with_default(
        "Live objects in all", registry_default().max_objects))]
    pub max_objects: Option<u64>,
    #[arg(long, value_name = "BYTES", help = with_default(
        "Value bytes in all", registry_default().max_bytes))]
    pub max_bytes: Option<u64>,
    #[arg(long, value_name = "N", help = with_default(
        "Live objects one uid may own, at most max-objects", "max-objects"))]
    pub uid_max_objects: Option<u64>,
    #[arg(long, value_name = "BYTES", help = with_default(
        "Value bytes one uid may own, at most max-bytes", "max-bytes"))]
    pub uid_max_bytes: Option<u64>,
    #[arg(long, value_name = "N", help = with_default(
        "Objects one uid's sessions may reference together (an entry per session \
         and object)", "twice uid-max-objects"))]
    pub uid_max_references: Option<u64>,
    #[arg(long, value_name = "N", help = with_default(
        "Attached sessions", DEFAULT_MAX_SESSIONS))]
    pub max_sessions: Option<usize>,
    #[arg(long, value_name = "N", help = with_default(
        "Attached sessions of one uid (root is exempt), at most max-sessions",
        "half of max-sessions"))]
    pub uid_max_sessions: Option<usize>,
    #[arg(long, value_name = "N", help = with_default(
        "Rings per session, 1 to 4096; more threads share one", DEFAULT_MAX_RINGS))]
    pub max_rings: Option<u32>,
    #[arg(long, value_name = "N", help = with_default(
        "Rings one uid may have open over all its sessions (root is exempt); \
         its threads beyond share rings", DEFAULT_UID_MAX_RINGS))]
    pub uid_max_rings: Option<usize>,
    #[arg(long, value_name = "N", help = with_default(
        "Entries per submission and completion queue, a power of two from 2 to 32768",
        DEFAULT_RING_ENTRIES))]
    pub ring_entries: Option<u32>,
    #[arg(long, value_name = "BYTES", help = with_default(
        "Bytes of each ring's data area, a multiple of 8 from 64 to 1073741824",
        DEFAULT_DATA_SIZE))]
    pub data_size: Option<u32>,
    #[arg(long, value_name = "LEVEL", help = with_default(
        "Log filter: off, error, warn, info, debug or trace, or directives as in \
         RUST_LOG (`info,hregd::control=debug`)",
        format!("$RUST_LOG, else {DEFAULT_LOG_LEVEL}")))]
    pub log_level: Option<String>,
    #[arg(long, value_name = "DIR", help = with_default(
        "Keep the registry in this directory (on tmpfs) so that a restarted daemon \
         adopts every object and session",
        "none: nothing is kept, unless systemd's descriptor store is there (FDSTORE)"))]
    pub state_dir: Option<PathBuf>,
    /// Report what a start would adopt from --state-dir (or the descriptors
    /// systemd passed), change nothing, and exit: 0 adoptable or nothing
    /// kept, 1 unusable.
    #[arg(long)]
    pub check_state: bool,
    #[arg(long, value_name = "SECONDS", help = with_default(
        "Seconds a restarted daemon keeps each session of the state it adopted for \
         its client to come back, 0 to 86400; then its references are dropped as if \
         its client had died", DEFAULT_RESUME_GRACE))]
    pub resume_grace: Option<u64>,
    #[arg(long, help = with_default(
        "Serve clients whose uid is unmapped in hregd's user namespace (they all show \
         as the overflow uid, 65534, and share its domain); matters only when hregd \
         runs in a user namespace", "refused"))]
    pub allow_overflow_uid: bool,
}

/// What `hregd --help` says after the flags: where the socket is.
fn after_help() -> String {
    format!(
        "{}\n\nEvery setting is also a key of the --config file.\n\n\
         Exit status:\n  0  stopped by SIGTERM or SIGINT, or a check passed\n  \
         1  hregd cannot serve (or --check-state finds the state unusable)\n  \
         2  a bad setting",
        hreg_proto::SOCKET_LOOKUP
    )
}

fn parse_octal(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not an octal file mode (000 to 777)"))
}

/// The config file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub workers: Option<usize>,
    pub shards: Option<usize>,
    pub max_value_size: Option<u64>,
    pub max_objects: Option<u64>,
    pub max_bytes: Option<u64>,
    pub uid_max_objects: Option<u64>,
    pub uid_max_bytes: Option<u64>,
    pub uid_max_references: Option<u64>,
    pub max_sessions: Option<usize>,
    pub uid_max_sessions: Option<usize>,
    pub max_rings: Option<u32>,
    pub uid_max_rings: Option<usize>,
    pub ring_entries: Option<u32>,
    pub data_size: Option<u32>,
    pub log_level: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub resume_grace: Option<u64>,
    pub allow_overflow_uid: Option<bool>,
}

/// The settings hregd runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// The socket file's group, resolved to a gid.
    pub socket_group: Option<u32>,
    pub workers: usize,
    pub shards: usize,
    /// What SIGHUP may change, taken whole on reload.
    pub limits: Limits,
    /// The geometry of every session's rings.
    pub layout: Layout,
    /// The log filter in force: `--log-level`, else `$RUST_LOG`, else
    /// `info` (checked: see [`check_log_level`]).
    pub log_level: String,
    /// Where the registry is kept across restarts (`None`: nowhere, or in
    /// systemd's descriptor store when there is one).
    pub state_dir: Option<PathBuf>,
    /// How long an adopted session waits for its client.
    pub resume_grace: std::time::Duration,
    /// Whether peers that show as the overflow uid (unmapped in hregd's
    /// user namespace) may attach (see [`crate::peer::is_unmapped`]).
    pub allow_overflow_uid: bool,
}

/// Rings one uid may have open by default: enough for 128 sessions of 64
/// threads; past it a uid's threads share rings.
pub const DEFAULT_UID_MAX_RINGS: usize = 8192;

/// The limits a running daemon can take anew (SIGHUP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Values, objects and bytes, in all and per uid.
    pub registry: hreg_registry::Limits,
    /// Attached sessions in all.
    pub max_sessions: usize,
    /// Attached sessions of one uid (root is exempt).
    pub uid_max_sessions: usize,
    /// Open rings of one uid over all its sessions (root is exempt).
    pub uid_max_rings: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {}", .path.display(), hreg_proto::os_error_words(&.source.to_string()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("`{key}` = {value}: expected {expected}")]
    Range {
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error(
        "`{key}` = {value} is more than `{total}` = {total_value}: one uid could never \
         reach it; lower `{key}` or raise `{total}`"
    )]
    Above {
        key: &'static str,
        value: u64,
        total: &'static str,
        total_value: u64,
    },
    #[error("no socket path: pass --socket, set HREG_SOCKET, or set XDG_RUNTIME_DIR")]
    NoSocket,
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: parse_error_words(&text, &e),
                })?
            }
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    fn merge(args: &Args, file: FileConfig) -> Result<Config, ConfigError> {
        let socket = match args.socket.clone().or(file.socket) {
            Some(path) => path,
            None => default_socket_path().ok_or(ConfigError::NoSocket)?,
        };
        let file_mode = file
            .socket_mode
            .as_deref()
            .map(|text| {
                parse_octal(text).map_err(|_| ConfigError::Range {
                    key: "socket_mode",
                    value: format!("{text:?}"),
                    expected: "an octal file mode from \"000\" to \"777\"".into(),
                })
            })
            .transpose()?;
        let default_mode = if socket.starts_with("/run/hreg") {
            0o660
        } else {
            0o600
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let defaults = registry_default();
        let max_objects = args
            .max_objects
            .or(file.max_objects)
            .unwrap_or(defaults.max_objects);
        let max_bytes = args
            .max_bytes
            .or(file.max_bytes)
            .unwrap_or(defaults.max_bytes);
        let uid_max_objects = args
            .uid_max_objects
            .or(file.uid_max_objects)
            .unwrap_or(max_objects);
        let max_sessions = args
            .max_sessions
            .or(file.max_sessions)
            .unwrap_or(DEFAULT_MAX_SESSIONS);
        let max_value_size = args
            .max_value_size
            .or(file.max_value_size)
            .unwrap_or(defaults.max_value_size as u64);
        if max_value_size > hreg_proto::MAX_VALUE_SIZE_LIMIT {
            return Err(ConfigError::Range {
                key: "max_value_size",
                value: max_value_size.to_string(),
                expected: format!("0 to {}", hreg_proto::MAX_VALUE_SIZE_LIMIT),
            });
        }
        let socket_group = args
            .socket_group
            .clone()
            .or(file.socket_group)
            .map(|group| {
                resolve_group(&group).ok_or(ConfigError::Range {
                    key: "socket_group",
                    value: format!("{group:?}"),
                    expected: "a group name from /etc/group or a numeric gid".into(),
                })
            })
            .transpose()?;
        let log_level = match args.log_level.clone().or(file.log_level) {
            Some(level) => check_log_level("log_level", level)?,
            None => match std::env::var("RUST_LOG") {
                Ok(level) if !level.is_empty() => check_log_level("RUST_LOG", level)?,
                _ => DEFAULT_LOG_LEVEL.to_owned(),
            },
        };
        let config = Config {
            socket_group,
            socket_mode: args.socket_mode.or(file_mode).unwrap_or(default_mode),
            // A worker polls while its rings are busy; the clients whose
            // entries it serves need the other cores (on 2 cores, 1 worker
            // served an honest client under attack 2-4 times as fast as 2,
            // and 2 writing threads as fast or faster).
            workers: args
                .workers
                .or(file.workers)
                .unwrap_or((cores / 2).clamp(1, 4)),
            shards: args
                .shards
                .or(file.shards)
                .unwrap_or(hreg_registry::DEFAULT_SHARDS),
            limits: Limits {
                registry: hreg_registry::Limits {
                    max_value_size: max_value_size as usize,
                    max_objects,
                    max_bytes,
                    uid_max_objects,
                    uid_max_bytes: args
                        .uid_max_bytes
                        .or(file.uid_max_bytes)
                        .unwrap_or(max_bytes),
                    uid_max_references: args
                        .uid_max_references
                        .or(file.uid_max_references)
                        .unwrap_or_else(|| {
                            hreg_registry::Limits::default_uid_max_references(uid_max_objects)
                        }),
                },
                max_sessions,
                uid_max_sessions: args
                    .uid_max_sessions
                    .or(file.uid_max_sessions)
                    .unwrap_or((max_sessions / 2).max(1)),
                uid_max_rings: args
                    .uid_max_rings
                    .or(file.uid_max_rings)
                    .unwrap_or(DEFAULT_UID_MAX_RINGS),
            },
            layout: Layout {
                entries: args
                    .ring_entries
                    .or(file.ring_entries)
                    .unwrap_or(DEFAULT_RING_ENTRIES),
                data_size: args
                    .data_size
                    .or(file.data_size)
                    .unwrap_or(DEFAULT_DATA_SIZE),
                max_rings: args
                    .max_rings
                    .or(file.max_rings)
                    .unwrap_or(DEFAULT_MAX_RINGS),
            },
            log_level,
            state_dir: args.state_dir.clone().or(file.state_dir),
            resume_grace: std::time::Duration::from_secs(
                args.resume_grace
                    .or(file.resume_grace)
                    .unwrap_or(DEFAULT_RESUME_GRACE),
            ),
            allow_overflow_uid: args.allow_overflow_uid || file.allow_overflow_uid.unwrap_or(false),
            socket,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        fn range<T: std::fmt::Display>(
            key: &'static str,
            value: T,
            ok: bool,
            expected: &str,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Range {
                    key,
                    value: value.to_string(),
                    expected: expected.to_string(),
                })
            }
        }
        /// A per-uid limit above its total: it could never bind.
        fn at_most(
            key: &'static str,
            value: u64,
            total: &'static str,
            total_value: u64,
        ) -> Result<(), ConfigError> {
            if value <= total_value {
                Ok(())
            } else {
                Err(ConfigError::Above {
                    key,
                    value,
                    total,
                    total_value,
                })
            }
        }
        range(
            "workers",
            self.workers,
            (1..=64).contains(&self.workers),
            "1 to 64",
        )?;
        range(
            "shards",
            self.shards,
            self.shards.is_power_of_two() && self.shards <= 1024,
            "a power of two from 1 to 1024",
        )?;
        let limits = &self.limits;
        range(
            "max_objects",
            limits.registry.max_objects,
            limits.registry.max_objects >= 1,
            "at least 1",
        )?;
        range(
            "max_sessions",
            limits.max_sessions,
            limits.max_sessions >= 1,
            "at least 1",
        )?;
        range(
            "uid_max_sessions",
            limits.uid_max_sessions,
            limits.uid_max_sessions >= 1,
            "at least 1",
        )?;
        at_most(
            "uid_max_objects",
            limits.registry.uid_max_objects,
            "max_objects",
            limits.registry.max_objects,
        )?;
        at_most(
            "uid_max_bytes",
            limits.registry.uid_max_bytes,
            "max_bytes",
            limits.registry.max_bytes,
        )?;
        at_most(
            "uid_max_sessions",
            limits.uid_max_sessions as u64,
            "max_sessions",
            limits.max_sessions as u64,
        )?;
        range(
            "uid_max_rings",
            limits.uid_max_rings,
            limits.uid_max_rings >= 1,
            "at least 1",
        )?;
        range(
            "resume_grace",
            self.resume_grace.as_secs(),
            self.resume_grace.as_secs() <= 86_400,
            "0 to 86400 seconds",
        )?;
        // The ring geometry's ranges are the protocol's own.
        self.layout.validate().map_err(|e| {
            let value = match e.key() {
                "ring_entries" => self.layout.entries,
                "data_size" => self.layout.data_size,
                _ => self.layout.max_rings,
            };
            ConfigError::Range {
                key: e.key(),
                value: value.to_string(),
                expected: e.to_string(),
            }
        })
    }

    /// The settings as a `--config` file that gives them back: every key,
    /// in the README's order, with what it is; unset ones commented out.
    pub fn to_toml(&self) -> String {
        let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
        let path = |p: &Path| quoted(&p.to_string_lossy());
        let limits = &self.limits.registry;
        let mut out = String::from(
            "# hregd's settings, as `hregd --check-config` found them; \
             `hregd --config FILE` takes this file back.\n",
        );
        let mut line = |key: &str, value: Option<String>, unset: &str| {
            out.push_str(&match value {
                Some(value) => format!("{key} = {value}\n"),
                None => format!("# {key} is not set: {unset}\n"),
            });
        };
        line("socket", Some(path(&self.socket)), "");
        line(
            "socket_mode",
            Some(quoted(&format!("{:03o}", self.socket_mode))),
            "",
        );
        line(
            "socket_group",
            self.socket_group.map(|gid| quoted(&gid.to_string())),
            "the socket file keeps the daemon's group",
        );
        line("workers", Some(self.workers.to_string()), "");
        line("shards", Some(self.shards.to_string()), "");
        line(
            "max_value_size",
            Some(limits.max_value_size.to_string()),
            "",
        );
        line("max_objects", Some(limits.max_objects.to_string()), "");
        line("max_bytes", Some(limits.max_bytes.to_string()), "");
        line(
            "uid_max_objects",
            Some(limits.uid_max_objects.to_string()),
            "",
        );
        line("uid_max_bytes", Some(limits.uid_max_bytes.to_string()), "");
        line(
            "uid_max_references",
            Some(limits.uid_max_references.to_string()),
            "",
        );
        line(
            "max_sessions",
            Some(self.limits.max_sessions.to_string()),
            "",
        );
        line(
            "uid_max_sessions",
            Some(self.limits.uid_max_sessions.to_string()),
            "",
        );
        line("max_rings", Some(self.layout.max_rings.to_string()), "");
        line(
            "uid_max_rings",
            Some(self.limits.uid_max_rings.to_string()),
            "",
        );
        line("ring_entries", Some(self.layout.entries.to_string()), "");
        line("data_size", Some(self.layout.data_size.to_string()), "");
        line("log_level", Some(quoted(&self.log_level)), "");
        line(
            "state_dir",
            self.state_dir.as_deref().map(path),
            "nothing is kept across restarts (but in systemd's descriptor store)",
        );
        line(
            "resume_grace",
            Some(self.resume_grace.as_secs().to_string()),
            "",
        );
        out
    }
}

/// A TOML error on one line: where (line, and the key on it), then what.
fn parse_error_words(text: &str, error: &toml::de::Error) -> String {
    let what = error.message().lines().collect::<Vec<_>>().join("; ");
    let Some(span) = error.span() else {
        return what;
    };
    let start = span.start.min(text.len());
    let number = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => {
            format!("line {number}: `{}`: {what}", key.trim())
        }
        _ => format!("line {number}: {what}"),
    }
}

/// `level` if tracing's filter takes it and it names levels hregd logs at:
/// one of [`LOG_LEVELS`], or directives `target=level` (and levels) joined
/// by commas, as in `$RUST_LOG`. A bare word that is not a level would be
/// taken as a target name and silence every log, so it is refused.
fn check_log_level(key: &'static str, level: String) -> Result<String, ConfigError> {
    let is_level = |word: &str| LOG_LEVELS.contains(&word.trim().to_ascii_lowercase().as_str());
    let directives_ok = !level.trim().is_empty()
        && level
            .split(',')
            .all(|directive| match directive.rsplit_once('=') {
                Some((target, word)) => !target.trim().is_empty() && is_level(word),
                None => is_level(directive),
            });
    if directives_ok && tracing_subscriber::EnvFilter::try_new(&level).is_ok() {
        Ok(level)
    } else {
        Err(ConfigError::Range {
            key,
            value: format!("{level:?}"),
            expected: format!(
                "a level ({}) or directives as in RUST_LOG, such as \"info,hregd::control=debug\"",
                LOG_LEVELS.join(", ")
            ),
        })
    }
}

/// A group name (looked up in /etc/group) or a numeric gid.
fn resolve_group(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let table = std::fs::read_to_string("/etc/group").ok()?;
    table.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == group).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// `$HREG_SOCKET`, else `/run/hreg/hreg.sock` for root, else
/// `$XDG_RUNTIME_DIR/hreg.sock`.
pub fn default_socket_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HREG_SOCKET").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if rustix::process::geteuid().is_root() {
        return Some(Path::new("/run/hreg/hreg.sock").to_path_buf());
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|p| !p.is_empty())
        .map(|dir| Path::new(&dir).join("hreg.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(list: &[&str]) -> Args {
        Args::parse_from(std::iter::once("hregd").chain(list.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        let config =
            Config::merge(&args(&["--socket", "/tmp/x.sock"]), FileConfig::default()).unwrap();
        assert_eq!(config.limits.registry.max_value_size, 1 << 20);
        assert_eq!(config.limits.registry.uid_max_references, 1 << 25);
        assert_eq!(config.socket_mode, 0o600);
        assert!((1..=4).contains(&config.workers));
    }

    #[test]
    fn flags_override_file_and_bad_values_name_the_key() {
        let file: FileConfig = toml::from_str("shards = 8\nmax_objects = 5").unwrap();
        let config = Config::merge(&args(&["--socket", "/s", "--shards", "16"]), file).unwrap();
        assert_eq!((config.shards, config.limits.registry.max_objects), (16, 5));
        let err = Config::merge(
            &args(&["--socket", "/s", "--shards", "3"]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("shards"), "{err}");
        // uid_max_references follows uid_max_objects unless set.
        let file: FileConfig = toml::from_str("uid_max_objects = 1000").unwrap();
        let config = Config::merge(&args(&["--socket", "/s"]), file).unwrap();
        assert_eq!(config.limits.registry.uid_max_references, 2000);
        let file: FileConfig = toml::from_str("uid_max_references = 7").unwrap();
        let config = Config::merge(&args(&["--socket", "/s"]), file).unwrap();
        assert_eq!(config.limits.registry.uid_max_references, 7);
        let config = Config::merge(
            &args(&["--socket", "/s", "--uid-max-references", "9"]),
            toml::from_str("uid_max_references = 7").unwrap(),
        )
        .unwrap();
        assert_eq!(config.limits.registry.uid_max_references, 9);
        assert!(toml::from_str::<FileConfig>("bogus = 1")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }

    #[test]
    fn log_levels_are_checked() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,hregd::control=debug",
            "hregd=trace",
        ] {
            let config = Config::merge(
                &args(&["--socket", "/s", "--log-level", good]),
                FileConfig::default(),
            )
            .unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(config.log_level, good);
        }
        for bad in ["loud", "", "hregd", "hregd=loud", "=info", "info,,warn"] {
            let err = Config::merge(
                &args(&["--socket", "/s", "--log-level", bad]),
                FileConfig::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("`log_level` = "), "{bad}: {err}");
            assert!(
                err.contains("error, warn, info, debug, trace"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_uid_limit_above_its_total_is_refused() {
        for (flags, key) in [
            (
                ["--max-sessions", "10", "--uid-max-sessions", "20"],
                "uid_max_sessions",
            ),
            (
                ["--max-objects", "10", "--uid-max-objects", "11"],
                "uid_max_objects",
            ),
            (
                ["--max-bytes", "10", "--uid-max-bytes", "11"],
                "uid_max_bytes",
            ),
        ] {
            let mut list = vec!["--socket", "/s"];
            list.extend(flags);
            let err = Config::merge(&args(&list), FileConfig::default()).unwrap_err();
            assert!(err.to_string().starts_with(&format!("`{key}` = ")), "{err}");
            assert!(err.to_string().contains("could never reach it"), "{err}");
        }
        // Equal is fine, and so are the defaults derived from a low total.
        Config::merge(
            &args(&["--socket", "/s", "--max-sessions", "1"]),
            FileConfig::default(),
        )
        .unwrap();
    }

    #[test]
    fn check_config_output_is_a_config_file_that_gives_the_same_settings() {
        let config = Config::merge(
            &args(&[
                "--socket",
                "/tmp/a \"b\".sock",
                "--socket-group",
                "0",
                "--state-dir",
                "/run/x",
                "--max-objects",
                "99",
                "--socket-mode",
                "640",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        let text = config.to_toml();
        let file: FileConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let again = Config::merge(&Args::default(), file).unwrap();
        assert_eq!(again, config, "{text}");
        assert_eq!(again.to_toml(), text);
        assert!(text.contains("\nmax_objects = 99\n"), "{text}");
        assert!(text.contains("\nsocket_mode = \"640\"\n"), "{text}");
        // Unset keys are comments saying what that means.
        let plain = Config::merge(&args(&["--socket", "/s"]), FileConfig::default()).unwrap();
        assert!(
            plain.to_toml().contains("# state_dir is not set: "),
            "{}",
            plain.to_toml()
        );
    }

    #[test]
    fn every_setting_shows_its_default_and_a_placeholder_that_says_what_to_type() {
        let command = Args::command();
        for arg in command.get_arguments() {
            let long = arg.get_long().unwrap_or_default();
            if ["help", "version", "check-config", "check-state"].contains(&long) {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains(" [default: "), "--{long}: {help}");
            if !arg.get_action().takes_values() {
                continue; // a switch: nothing to type
            }
            let names = arg.get_value_names().unwrap_or_default();
            assert!(
                names.iter().all(|n| [
                    "FILE", "PATH", "MODE", "GROUP", "N", "BYTES", "LEVEL", "DIR", "SECONDS"
                ]
                .contains(&n.as_str())),
                "--{long}: {names:?}"
            );
        }
    }
}
