//! hregd's settings: defaults, the TOML file and the command line, merged in
//! that order (flags win), then checked as a whole.

use clap::Parser;
use hreg_proto::ring::Layout;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Command-line flags. Each one, when given, overrides the config file.
#[derive(Clone, Debug, Default, Parser)]
#[command(
    name = "hregd",
    version,
    about = "hreg daemon: a cross-process handle registry"
)]
pub struct Args {
    /// TOML file with any of the settings below (same names, with `_`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Socket path [default: $HREG_SOCKET, else /run/hreg/hreg.sock for root,
    /// else $XDG_RUNTIME_DIR/hreg.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Socket file mode, octal [default: 600, 660 under /run/hreg].
    #[arg(long, value_parser = parse_octal)]
    pub socket_mode: Option<u32>,
    /// Group that owns the socket file (name or gid) [default: the daemon's].
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Ring worker threads [default: one per core, at most 4].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Registry shards (a power of two).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Largest value in bytes.
    #[arg(long)]
    pub max_value_size: Option<u64>,
    /// Most live objects in all.
    #[arg(long)]
    pub max_objects: Option<u64>,
    /// Most value bytes in all.
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Most live objects one uid may own [default: max-objects].
    #[arg(long)]
    pub uid_max_objects: Option<u64>,
    /// Most value bytes one uid may own [default: max-bytes].
    #[arg(long)]
    pub uid_max_bytes: Option<u64>,
    /// Most attached sessions.
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Most sessions one uid may have attached (root is exempt) [default:
    /// half of max-sessions].
    #[arg(long)]
    pub uid_max_sessions: Option<usize>,
    /// Rings per session (threads beyond share rings).
    #[arg(long)]
    pub max_rings: Option<u32>,
    /// Most rings one uid may have open over all its sessions (root is
    /// exempt; threads beyond share rings) [default: 8192].
    #[arg(long)]
    pub uid_max_rings: Option<usize>,
    /// Entries per submission and completion queue (a power of two).
    #[arg(long)]
    pub ring_entries: Option<u32>,
    /// Bytes of each ring's data area.
    #[arg(long)]
    pub data_size: Option<u32>,
    /// Log filter (error, warn, info, debug, trace) [default: $RUST_LOG, else info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Keep the registry in this directory (on tmpfs) so that a restarted
    /// daemon adopts every object and session [default: nothing is kept,
    /// unless systemd's descriptor store is there (FDSTORE)].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Report what a start would adopt from --state-dir (or the descriptors
    /// systemd passed), change nothing, and exit: 0 adoptable or nothing
    /// kept, 1 unusable.
    #[arg(long)]
    pub check_state: bool,
    /// Seconds a restarted daemon keeps each session of the state it
    /// adopted for its client to come back; then its references are
    /// dropped as if its client had died [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub resume_grace: Option<u64>,
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
    pub max_sessions: Option<usize>,
    pub uid_max_sessions: Option<usize>,
    pub max_rings: Option<u32>,
    pub uid_max_rings: Option<usize>,
    pub ring_entries: Option<u32>,
    pub data_size: Option<u32>,
    pub log_level: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub resume_grace: Option<u64>,
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
    pub log_level: Option<String>,
    /// Where the registry is kept across restarts (`None`: nowhere, or in
    /// systemd's descriptor store when there is one).
    pub state_dir: Option<PathBuf>,
    /// How long an adopted session waits for its client.
    pub resume_grace: std::time::Duration,
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
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{key}` = {value}: {expected}")]
    Range {
        key: &'static str,
        value: String,
        expected: String,
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
                    message: e.to_string(),
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
                    value: text.to_string(),
                    expected: "an octal file mode from 000 to 777".into(),
                })
            })
            .transpose()?;
        let default_mode = if socket.starts_with("/run/hreg") {
            0o660
        } else {
            0o600
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let defaults = hreg_registry::Limits::default();
        let max_objects = args
            .max_objects
            .or(file.max_objects)
            .unwrap_or(defaults.max_objects);
        let max_bytes = args
            .max_bytes
            .or(file.max_bytes)
            .unwrap_or(defaults.max_bytes);
        let max_sessions = args.max_sessions.or(file.max_sessions).unwrap_or(1024);
        let max_value_size = args
            .max_value_size
            .or(file.max_value_size)
            .unwrap_or(defaults.max_value_size as u64);
        if max_value_size > hreg_proto::MAX_VALUE_SIZE_LIMIT {
            return Err(ConfigError::Range {
                key: "max_value_size",
                value: max_value_size.to_string(),
                expected: "0 to 1073741824".into(),
            });
        }
        let socket_group = args
            .socket_group
            .clone()
            .or(file.socket_group)
            .map(|group| {
                resolve_group(&group).ok_or(ConfigError::Range {
                    key: "socket_group",
                    value: group,
                    expected: "a group name from /etc/group or a numeric gid".into(),
                })
            })
            .transpose()?;
        let config = Config {
            socket_group,
            socket_mode: args.socket_mode.or(file_mode).unwrap_or(default_mode),
            workers: args.workers.or(file.workers).unwrap_or(cores.min(4)),
            shards: args
                .shards
                .or(file.shards)
                .unwrap_or(hreg_registry::DEFAULT_SHARDS),
            limits: Limits {
                registry: hreg_registry::Limits {
                    max_value_size: max_value_size as usize,
                    max_objects,
                    max_bytes,
                    uid_max_objects: args
                        .uid_max_objects
                        .or(file.uid_max_objects)
                        .unwrap_or(max_objects),
                    uid_max_bytes: args
                        .uid_max_bytes
                        .or(file.uid_max_bytes)
                        .unwrap_or(max_bytes),
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
                entries: args.ring_entries.or(file.ring_entries).unwrap_or(256),
                data_size: args.data_size.or(file.data_size).unwrap_or(256 * 1024),
                max_rings: args.max_rings.or(file.max_rings).unwrap_or(64),
            },
            log_level: args.log_level.clone().or(file.log_level),
            state_dir: args.state_dir.clone().or(file.state_dir),
            resume_grace: std::time::Duration::from_secs(
                args.resume_grace.or(file.resume_grace).unwrap_or(30),
            ),
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

    fn args(list: &[&str]) -> Args {
        Args::parse_from(std::iter::once("hregd").chain(list.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        let config =
            Config::merge(&args(&["--socket", "/tmp/x.sock"]), FileConfig::default()).unwrap();
        assert_eq!(config.limits.registry.max_value_size, 1 << 20);
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
        assert!(toml::from_str::<FileConfig>("bogus = 1")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }
}
