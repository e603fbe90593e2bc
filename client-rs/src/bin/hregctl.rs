//! hregctl: a command-line client for hregd. It puts, gets and removes
//! objects and prints the registry's figures, through the `hreg` crate.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use hreg::{Client, Handle};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "hregctl/metrics.rs"]
mod metrics;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  an hreg error (no daemon, stale handle, denied, ...) or an I/O error
  2  usage error (bad arguments or handle syntax)

Handles are printed in decimal and accepted in decimal or 0x hex.";

/// Talk to hregd, the cross-process handle registry.
#[derive(Parser)]
#[command(name = "hregctl", version, after_help = EXIT_CODES)]
struct Cli {
    /// Daemon socket [default: $HREG_SOCKET, else $XDG_RUNTIME_DIR/hreg.sock,
    /// then /run/hreg/hreg.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store a value (the argument, else standard input) and print its
    /// handle. The object is DETACHED unless --attached: it outlives this
    /// command and lives until removed.
    Put {
        /// The value; read from standard input when absent.
        value: Option<std::ffi::OsString>,
        /// Let other users read the object.
        #[arg(long)]
        shared: bool,
        /// Tie the object to this command's session (it dies when hregctl
        /// exits, unless someone else holds it).
        #[arg(long)]
        attached: bool,
    },
    /// Write an object's value, raw, to standard output.
    Get {
        /// Handle, decimal or 0x hex.
        handle: Handle,
    },
    /// Remove an object now, whoever references it.
    Rm {
        /// Handle, decimal or 0x hex.
        handle: Handle,
    },
    /// Print the registry's figures: objects, bytes, sessions, ops/s,
    /// usage per uid against its caps, per-shard occupancy and per-worker
    /// rings and requests.
    Stats {
        /// Print them in the Prometheus text format instead (every name
        /// starts with `hreg_`), for the node exporter's textfile collector
        /// or any scraper.
        #[arg(long)]
        prometheus: bool,
    },
    /// List attached sessions: id, pid, uid, name, rings, references held
    /// (all sessions for root, your own otherwise).
    Sessions,
    /// List live objects: handle, size, owner uid, references, flags. Pages
    /// through the registry; only root may list other users' objects.
    Ls {
        /// Only DETACHED objects (to find orphans: remove them with `rm`).
        #[arg(long)]
        detached: bool,
        /// Only objects owned by this uid.
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
        /// Print at most this many objects, then the cursor to continue
        /// from on standard error.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Start from this cursor (as printed by an earlier --limit).
        #[arg(long, value_name = "CURSOR", default_value_t = 0)]
        cursor: u64,
    },
    /// Show the figures of `stats`, refreshed in place every second.
    Watch {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Stop after this many refreshes [default: never].
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors (and 0 for --help/--version).
    let cli = Cli::parse();
    if cli.json && matches!(cli.command, Command::Stats { prometheus: true }) {
        // `--json` is global, so clap cannot see the clash in every order.
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--prometheus and --json ask for different formats; give one",
            )
            .exit();
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hregctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the chosen subcommand, writing its result to standard output.
fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Put {
            value,
            shared,
            attached,
        } => put(cli, value.as_deref(), *shared, *attached, &mut out)?,
        Command::Get { handle } => get(cli, *handle, &mut out)?,
        Command::Rm { handle } => rm(cli, *handle, &mut out)?,
        Command::Stats { prometheus } => {
            let format = if *prometheus {
                StatsFormat::Prometheus
            } else {
                StatsFormat::plain_or_json(cli.json)
            };
            stats(cli, format, &mut out)?
        }
        Command::Sessions => sessions(cli, &mut out)?,
        Command::Ls {
            detached,
            owner,
            limit,
            cursor,
        } => {
            let filter = hreg::ListFilter {
                detached_only: *detached,
                owner: *owner,
            };
            ls(cli, filter, *limit, *cursor, &mut out)?
        }
        Command::Watch { interval, count } => watch(cli, *interval, *count, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let client = match &cli.socket {
        Some(path) => Client::connect_named(Some(path), "hregctl"),
        None => Client::connect_named(None, "hregctl"),
    };
    Ok(client?)
}

/// `put`: the value from the argument or standard input, DETACHED unless
/// `attached`; prints the handle.
fn put(
    cli: &Cli,
    value: Option<&std::ffi::OsStr>,
    shared: bool,
    attached: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let value = match value {
        Some(v) => v.as_encoded_bytes().to_vec(),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut v)
                .context("reading the value from standard input")?;
            v
        }
    };
    let mut flags = 0;
    if shared {
        flags |= hreg::SHARED;
    }
    if !attached {
        flags |= hreg::DETACHED;
    }
    let client = connect(cli)?;
    let handle = client.insert(&value, flags).context("put")?;
    if cli.json {
        print_json_line(out, &serde_json::json!({ "handle": handle.get() }))
    } else {
        writeln!(out, "{handle}")?;
        Ok(())
    }
}

/// `get`: the value, raw (or as JSON with text and hex forms).
fn get(cli: &Cli, handle: Handle, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let value = client
        .get(handle)
        .with_context(|| format!("get {handle}"))?;
    if cli.json {
        let text = std::str::from_utf8(&value).ok();
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        print_json_line(
            out,
            &serde_json::json!({
                "handle": handle.get(),
                "length": value.len(),
                "value": text,
                "hex": hex,
            }),
        )
    } else {
        out.write_all(&value)?;
        Ok(())
    }
}

/// `rm`: removes the object; prints nothing unless `--json`.
fn rm(cli: &Cli, handle: Handle, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    client
        .remove(handle)
        .with_context(|| format!("rm {handle}"))?;
    if cli.json {
        print_json_line(out, &serde_json::json!({ "removed": handle.get() }))?;
    }
    Ok(())
}

/// `stats`: the registry's figures, once.
fn stats(cli: &Cli, format: StatsFormat, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    print_stats(&client, format, out)
}

/// `sessions`: the attached sessions the caller may see.
fn sessions(cli: &Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let sessions = client.sessions().context("sessions")?;
    if cli.json {
        let list: Vec<_> = sessions
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id, "pid": s.pid, "uid": s.uid, "gid": s.gid,
                    "name": s.name, "rings": s.rings, "references": s.references,
                })
            })
            .collect();
        return print_json(out, &serde_json::Value::from(list));
    }
    let rows = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.pid.to_string(),
                s.uid.to_string(),
                s.name.clone(),
                s.rings.to_string(),
                s.references.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(out, &["ID", "PID", "UID", "NAME", "RINGS", "REFS"], &rows)?;
    Ok(())
}

/// `ls`: live objects matching `filter`, paged through from `cursor`, at
/// most `limit` of them; the cursor to continue from goes to stderr.
fn ls(
    cli: &Cli,
    filter: hreg::ListFilter,
    limit: Option<u64>,
    cursor: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let mut objects = Vec::new();
    let mut cursor = cursor;
    let wanted = limit.unwrap_or(u64::MAX);
    while (objects.len() as u64) < wanted {
        let page =
            (wanted - objects.len() as u64).min(u64::from(hreg_proto::control::MAX_PAGE)) as u32;
        let (found, next) = client.list(cursor, page, filter).context("ls")?;
        objects.extend(found);
        cursor = next;
        if next == 0 {
            break;
        }
    }
    if cli.json {
        let list: Vec<_> = objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "handle": o.handle, "size": o.size, "owner": o.owner,
                    "refs": o.refs, "flags": flag_names(o.flags),
                })
            })
            .collect();
        return print_json(
            out,
            &serde_json::json!({ "objects": list, "next_cursor": cursor }),
        );
    }
    let rows = objects
        .iter()
        .map(|o| {
            vec![
                o.handle.to_string(),
                o.size.to_string(),
                o.owner.to_string(),
                o.refs.to_string(),
                flag_names(o.flags),
            ]
        })
        .collect::<Vec<_>>();
    print_table(out, &["HANDLE", "SIZE", "OWNER", "REFS", "FLAGS"], &rows)?;
    if cursor != 0 {
        eprintln!("more objects: continue with --cursor {cursor}");
    }
    Ok(())
}

/// `watch`: the figures of `stats`, every `interval` seconds, `count` times
/// (forever when `None`), redrawn in place unless `--json`.
fn watch(cli: &Cli, interval: f64, count: Option<u64>, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let pause = std::time::Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")?;
    let format = StatsFormat::plain_or_json(cli.json);
    let mut shown = 0u64;
    loop {
        let mut frame = Vec::new();
        print_stats(&client, format, &mut frame)?;
        if format == StatsFormat::Plain {
            // Home the cursor and clear the screen: refresh in place.
            out.write_all(b"\x1b[H\x1b[2J")?;
        }
        out.write_all(&frame)?;
        out.flush()?;
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(pause);
    }
}

/// How `stats` and `watch` print the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatsFormat {
    Plain,
    Json,
    Prometheus,
}

impl StatsFormat {
    fn plain_or_json(json: bool) -> StatsFormat {
        if json {
            StatsFormat::Json
        } else {
            StatsFormat::Plain
        }
    }
}

/// The registry's figures, as `stats` and `watch` print them.
fn print_stats(client: &Client, format: StatsFormat, out: &mut impl Write) -> anyhow::Result<()> {
    let figures = Figures {
        stats: client.stats().context("stats")?,
        usage: client.usage().context("usage")?,
    };
    match format {
        StatsFormat::Json => print_json(out, &figures.json()),
        StatsFormat::Prometheus => {
            out.write_all(metrics::exposition(&figures.stats, &figures.usage).as_bytes())?;
            Ok(())
        }
        StatsFormat::Plain => {
            figures.print_plain(out)?;
            Ok(())
        }
    }
}

/// What STATS and USAGE say, together.
struct Figures {
    stats: hreg::Stats,
    usage: hreg::UsageReply,
}

impl Figures {
    fn json(&self) -> serde_json::Value {
        let (s, u) = (&self.stats, &self.usage);
        let uids: Vec<_> = u
            .uids
            .iter()
            .map(|x| serde_json::json!({ "uid": x.uid, "objects": x.objects, "value_bytes": x.value_bytes }))
            .collect();
        let workers: Vec<_> = u
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({ "worker": i, "rings": w.rings, "ops": w.ops }))
            .collect();
        let holds: Vec<_> = u
            .holds
            .iter()
            .map(|h| {
                serde_json::json!({
                    "uid": h.uid, "rings": h.rings, "fds": h.fds, "fds_in_flight": h.fds_in_flight,
                })
            })
            .collect();
        serde_json::json!({
            "objects": s.objects,
            "value_bytes": s.value_bytes,
            "sessions": s.sessions,
            "ops": s.ops,
            "ops_per_sec": u.ops_per_sec,
            "reclaim_pending_bytes": u.reclaim_pending,
            "uptime_secs": u.uptime_secs,
            "limits": {
                "max_objects": u.max_objects, "max_bytes": u.max_bytes,
                "uid_max_objects": u.uid_max_objects, "uid_max_bytes": u.uid_max_bytes,
                "uid_max_rings": u.uid_max_rings, "uid_max_fds": u.uid_max_fds,
            },
            "holds": holds,
            "uids": uids,
            "shards": u.shards,
            "workers": workers,
        })
    }

    fn print_plain(&self, out: &mut impl Write) -> std::io::Result<()> {
        let (s, u) = (&self.stats, &self.usage);
        for (name, value) in [
            ("objects", format!("{} of {}", s.objects, u.max_objects)),
            (
                "value bytes",
                format!("{} of {}", s.value_bytes, u.max_bytes),
            ),
            ("sessions", s.sessions.to_string()),
            ("ops", s.ops.to_string()),
            ("ops/s", u.ops_per_sec.to_string()),
            ("reclaiming", format!("{} bytes", u.reclaim_pending)),
            ("uptime", format!("{}s", u.uptime_secs)),
        ] {
            writeln!(out, "{name:<12} {value}")?;
        }
        let (min, max) = (
            u.shards.iter().min().copied().unwrap_or(0),
            u.shards.iter().max().copied().unwrap_or(0),
        );
        writeln!(
            out,
            "{:<12} {} shards, {min} to {max} objects each",
            "shards",
            u.shards.len()
        )?;
        writeln!(out)?;
        let rows = u
            .uids
            .iter()
            .map(|x| {
                vec![
                    x.uid.to_string(),
                    format!("{} / {}", x.objects, u.uid_max_objects),
                    format!("{} / {}", x.value_bytes, u.uid_max_bytes),
                ]
            })
            .collect::<Vec<_>>();
        print_table(out, &["UID", "OBJECTS / CAP", "BYTES / CAP"], &rows)?;
        writeln!(out)?;
        if !u.holds.is_empty() {
            let rows = u
                .holds
                .iter()
                .map(|h| {
                    vec![
                        h.uid.to_string(),
                        format!("{} / {}", h.rings, u.uid_max_rings),
                        format!("{} / {}", h.fds, u.uid_max_fds),
                        h.fds_in_flight.to_string(),
                    ]
                })
                .collect::<Vec<_>>();
            print_table(
                out,
                &["UID", "RINGS / CAP", "DESCRIPTORS / SHARE", "IN FLIGHT"],
                &rows,
            )?;
            writeln!(out)?;
        }
        let rows = u
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| vec![i.to_string(), w.rings.to_string(), w.ops.to_string()])
            .collect::<Vec<_>>();
        print_table(out, &["WORKER", "RINGS", "OPS"], &rows)
    }
}

/// A JSON document, pretty-printed (the read commands' `--json`).
fn print_json(out: &mut impl Write, doc: &serde_json::Value) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(doc)?)?;
    Ok(())
}

/// A JSON document on one line (the write commands' `--json`).
fn print_json_line(out: &mut impl Write, doc: &serde_json::Value) -> anyhow::Result<()> {
    writeln!(out, "{doc}")?;
    Ok(())
}

/// A table with a header row, columns padded to their widest cell.
fn print_table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// Object flags as words.
fn flag_names(flags: u32) -> String {
    let mut names = Vec::new();
    if flags & hreg::SHARED != 0 {
        names.push("shared");
    }
    if flags & hreg::DETACHED != 0 {
        names.push("detached");
    }
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let a = Cli::try_parse_from(["hregctl", "--socket", "/s", "--json", "stats"]).unwrap();
        let b = Cli::try_parse_from(["hregctl", "stats", "--json", "--socket", "/s"]).unwrap();
        assert!(a.json && b.json);
        assert_eq!(a.socket, b.socket);
    }

    #[test]
    fn handles_parse_in_decimal_and_hex() {
        let cli = Cli::try_parse_from(["hregctl", "get", "0x10"]).unwrap();
        assert!(matches!(cli.command, Command::Get { handle } if handle.get() == 16));
        let cli = Cli::try_parse_from(["hregctl", "rm", "16"]).unwrap();
        assert!(matches!(cli.command, Command::Rm { handle } if handle.get() == 16));
        assert!(Cli::try_parse_from(["hregctl", "rm", "0"]).is_err());
        assert!(Cli::try_parse_from(["hregctl", "rm", "zz"]).is_err());
    }

    #[test]
    fn put_flags() {
        let cli = Cli::try_parse_from(["hregctl", "put", "--shared", "abc"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Put {
                shared: true,
                attached: false,
                value: Some(_)
            }
        ));
        let cli = Cli::try_parse_from(["hregctl", "put", "--attached"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Put {
                attached: true,
                value: None,
                ..
            }
        ));
    }
}
