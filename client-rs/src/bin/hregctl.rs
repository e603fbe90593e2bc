//! hregctl: a command-line client for hregd. It puts, gets and removes
//! objects and prints the registry's figures, through the `hreg` crate.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hreg::{Client, Handle};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "hregctl/metrics.rs"]
mod metrics;

/// What `hregctl --help` says after the commands.
fn after_help() -> String {
    format!(
        "Handles are printed in decimal and accepted in decimal or 0x hex. \
         Output is for pipes and terminals alike: `get` writes the value's raw \
         bytes (and a newline after it on a terminal); --json prints one compact \
         JSON object per line.\n\n{}\n\n\
         Exit status:\n  0  success\n  \
         1  an hreg error (no daemon, no such object, denied, ...) or an I/O error\n  \
         2  a usage error (bad arguments or handle syntax)",
        hreg_proto::SOCKET_LOOKUP
    )
}

/// Talk to hregd, the cross-process handle registry.
#[derive(Parser)]
#[command(name = "hregctl", version, after_help = after_help())]
struct Cli {
    /// Daemon socket [default: see "Socket" below].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print results as JSON: one compact object per line.
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
    /// Write an object's value to standard output: its raw bytes, and a
    /// newline after them when standard output is a terminal.
    Get {
        /// Handle, decimal or 0x hex.
        #[arg(value_name = "HANDLE", value_parser = parse_handle)]
        handle: Handle,
    },
    /// Remove an object now, whoever references it.
    Rm {
        /// Handle, decimal or 0x hex.
        #[arg(value_name = "HANDLE", value_parser = parse_handle)]
        handle: Handle,
    },
    /// Print the registry's figures: objects, bytes, sessions, ops/s,
    /// usage per uid against its caps, per-worker rings and requests, and
    /// how full the fullest and emptiest shards are.
    Stats {
        /// Print them in the Prometheus text format instead (every name
        /// starts with `hreg_`), for the node exporter's textfile collector
        /// or any scraper.
        #[arg(long)]
        prometheus: bool,
        /// Add each registry shard's object count.
        #[arg(long)]
        details: bool,
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
        #[arg(long, value_name = "UID", value_parser = parse_uid)]
        owner: Option<u32>,
        /// Print at most this many objects, then the cursor to continue
        /// from on standard error.
        #[arg(long, value_name = "N", value_parser = parse_count)]
        limit: Option<u64>,
        /// Start from this cursor (as printed by an earlier --limit).
        #[arg(long, value_name = "CURSOR", default_value_t = 0, value_parser = parse_count)]
        cursor: u64,
    },
    /// Check that hregd answers: attach, ask for its figures, print one
    /// line. Exits 0 when it answered within --timeout, 1 otherwise (for
    /// health checks and Kubernetes probes).
    Ping {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: f64,
    },
    /// Show the figures of `stats`, refreshed in place every second (with
    /// --json, one line per refresh).
    Watch {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS", value_parser = parse_seconds)]
        interval: f64,
        /// Stop after this many refreshes [default: never].
        #[arg(long, value_name = "N", value_parser = parse_count)]
        count: Option<u64>,
        /// Add each registry shard's object count.
        #[arg(long)]
        details: bool,
    },
}

impl Command {
    /// The command's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Put { .. } => "put",
            Command::Get { .. } => "get",
            Command::Rm { .. } => "rm",
            Command::Stats { .. } => "stats",
            Command::Sessions => "sessions",
            Command::Ls { .. } => "ls",
            Command::Watch { .. } => "watch",
            Command::Ping { .. } => "ping",
        }
    }
}

fn parse_handle(text: &str) -> Result<Handle, String> {
    text.parse().map_err(|e| match e {
        hreg_proto::handle::ParseHandleError::Zero => "not a handle (no handle is 0)".to_owned(),
        _ => "not a handle (a decimal or 0x hex number)".to_owned(),
    })
}

fn parse_uid(text: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| "not a uid (a number such as 1000; `id -u` prints yours)".to_owned())
}

fn parse_count(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| "not a count (a whole number, 0 or more)".to_owned())
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .ok_or_else(|| "not a number of seconds (more than 0, such as 0.5 or 2)".to_owned())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if cli.json
        && matches!(
            cli.command,
            Command::Stats {
                prometheus: true,
                ..
            }
        )
    {
        // `--json` is global, so clap cannot see the clash in every order.
        eprintln!("hregctl: stats: --prometheus and --json ask for different formats; give one");
        return ExitCode::from(2);
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let why: Vec<String> = e
                .chain()
                .map(|cause| hreg_proto::os_error_words(&cause.to_string()))
                .collect();
            eprintln!("hregctl: {}: {}", cli.command.name(), why.join(": "));
            ExitCode::from(1)
        }
    }
}

/// A command line clap refused, said as hregctl says every error
/// (`hregctl: COMMAND: WHAT: WHY`), with where to read more; exit 2. Help
/// and version go to standard output as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        _ => {}
    }
    let command = typed_command();
    let rendered = e.render().to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let why = match (
        e.kind(),
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) {
        (
            ErrorKind::ValueValidation,
            Some(ContextValue::String(arg)),
            Some(ContextValue::String(value)),
        ) => {
            // "--owner <UID>": the flag and the value; "<HANDLE>": the value.
            let reason = std::error::Error::source(&e)
                .map(|source| source.to_string())
                .unwrap_or_else(|| message.to_owned());
            match arg.split(' ').next().filter(|a| a.starts_with('-')) {
                Some(flag) => format!("{flag} {value}: {reason}"),
                None => format!("{value}: {reason}"),
            }
        }
        _ => message.to_owned(),
    };
    let prefix = command.map_or_else(|| "hregctl".to_owned(), |c| format!("hregctl: {c}"));
    eprintln!("{prefix}: {why}");
    for tip in lines.filter_map(|l| l.trim().strip_prefix("tip: ")) {
        eprintln!("  ({tip})");
    }
    let help = command.map_or_else(
        || "hregctl --help".to_owned(),
        |c| format!("hregctl {c} --help"),
    );
    eprintln!("Try '{help}'.");
    ExitCode::from(2)
}

/// The command named on the command line, if any (for usage errors, which
/// come before there is a parsed one).
fn typed_command() -> Option<&'static str> {
    let names = [
        "put", "get", "rm", "stats", "sessions", "ls", "watch", "ping",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut skip_value = false;
    for arg in &args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--socket" {
            skip_value = true;
        } else if let Some(name) = names.iter().find(|n| *n == arg) {
            return Some(name);
        }
    }
    None
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
        Command::Stats {
            prometheus,
            details,
        } => {
            let format = if *prometheus {
                StatsFormat::Prometheus
            } else {
                StatsFormat::plain_or_json(cli.json)
            };
            stats(cli, format, *details, &mut out)?
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
        Command::Watch {
            interval,
            count,
            details,
        } => watch(cli, *interval, *count, *details, &mut out)?,
        Command::Ping { timeout } => ping(cli, *timeout, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Ok(Client::connect_named(cli.socket.as_deref(), "hregctl")?)
}

/// `ping`: attaches and asks for the cheapest figures (STATS), waiting at
/// most `timeout` seconds for both; one line either way.
fn ping(cli: &Cli, timeout: f64, out: &mut impl Write) -> anyhow::Result<()> {
    let limit = std::time::Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--timeout: not a number of seconds (more than 0, such as 0.5 or 2)")?;
    let socket = cli.socket.clone();
    let started = std::time::Instant::now();
    let (answer, answered) = std::sync::mpsc::channel();
    // A daemon that accepts but never answers must not hang the probe: the
    // process exits at the deadline, leaving this thread behind.
    std::thread::spawn(move || {
        let stats = Client::connect_named(socket.as_deref(), "hregctl-ping")
            .and_then(|client| client.stats());
        let _ = answer.send(stats);
    });
    let stats = match answered.recv_timeout(limit) {
        Ok(stats) => stats?,
        Err(_) => anyhow::bail!("no answer from hregd within {timeout} s"),
    };
    let millis = started.elapsed().as_secs_f64() * 1e3;
    if cli.json {
        return print_json(
            out,
            &serde_json::json!({
                "ok": true, "sessions": stats.sessions, "objects": stats.objects,
                "millis": millis,
            }),
        );
    }
    writeln!(
        out,
        "hregd answers: {} sessions, {} objects ({millis:.1} ms)",
        stats.sessions, stats.objects
    )?;
    Ok(())
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
                .context("standard input")?;
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
    let handle = client.insert(&value, flags)?;
    if cli.json {
        print_json(out, &serde_json::json!({ "handle": handle.get() }))
    } else {
        writeln!(out, "{handle}")?;
        Ok(())
    }
}

/// `get`: the value, raw (a newline after it on a terminal), or as JSON
/// with text and hex forms.
fn get(cli: &Cli, handle: Handle, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let value = client
        .get(handle)
        .with_context(|| format!("handle {handle}"))?;
    if cli.json {
        let text = std::str::from_utf8(&value).ok();
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        print_json(
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
        // As redis-cli does: the prompt on a line of its own, the bytes
        // untouched in a pipe.
        if std::io::stdout().is_terminal() && !value.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// `rm`: removes the object; prints nothing unless `--json`.
fn rm(cli: &Cli, handle: Handle, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    client
        .remove(handle)
        .with_context(|| format!("handle {handle}"))?;
    if cli.json {
        print_json(out, &serde_json::json!({ "removed": handle.get() }))?;
    }
    Ok(())
}

/// `stats`: the registry's figures, once.
fn stats(
    cli: &Cli,
    format: StatsFormat,
    details: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = connect(cli)?;
    print_stats(&client, format, details, out)
}

/// `sessions`: the attached sessions the caller may see (JSON: one per
/// line).
fn sessions(cli: &Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let sessions = client.sessions()?;
    if cli.json {
        for s in &sessions {
            print_json(
                out,
                &serde_json::json!({
                    "id": s.id, "pid": s.pid, "uid": s.uid, "gid": s.gid,
                    "name": s.name, "rings": s.rings, "references": s.references,
                }),
            )?;
        }
        return Ok(());
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
/// most `limit` of them (JSON: one per line); the cursor to continue from
/// goes to stderr.
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
        let (found, next) = client.list(cursor, page, filter)?;
        objects.extend(found);
        cursor = next;
        if next == 0 {
            break;
        }
    }
    if cli.json {
        for o in &objects {
            print_json(
                out,
                &serde_json::json!({
                    "handle": o.handle, "size": o.size, "owner": o.owner,
                    "refs": o.refs, "flags": flag_names(o.flags),
                }),
            )?;
        }
    } else {
        let rows = objects
            .iter()
            .map(|o| {
                let flags = flag_names(o.flags);
                vec![
                    o.handle.to_string(),
                    o.size.to_string(),
                    o.owner.to_string(),
                    o.refs.to_string(),
                    if flags.is_empty() {
                        "-".to_owned()
                    } else {
                        flags.join(",")
                    },
                ]
            })
            .collect::<Vec<_>>();
        print_table(out, &["HANDLE", "SIZE", "OWNER", "REFS", "FLAGS"], &rows)?;
    }
    if cursor != 0 {
        eprintln!("more objects: continue with --cursor {cursor}");
    }
    Ok(())
}

/// `watch`: the figures of `stats`, every `interval` seconds, `count` times
/// (forever when `None`), redrawn in place unless `--json`.
fn watch(
    cli: &Cli,
    interval: f64,
    count: Option<u64>,
    details: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = connect(cli)?;
    let pause = std::time::Duration::from_secs_f64(interval);
    let format = StatsFormat::plain_or_json(cli.json);
    let mut shown = 0u64;
    loop {
        let mut frame = Vec::new();
        print_stats(&client, format, details, &mut frame)?;
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

/// The registry's figures, as `stats` and `watch` print them; `details`
/// adds each shard's count (Prometheus always has them).
fn print_stats(
    client: &Client,
    format: StatsFormat,
    details: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let figures = Figures {
        stats: client.stats()?,
        usage: client.usage()?,
    };
    match format {
        StatsFormat::Json => print_json(out, &figures.json(details)),
        StatsFormat::Prometheus => {
            out.write_all(metrics::exposition(&figures.stats, &figures.usage).as_bytes())?;
            Ok(())
        }
        StatsFormat::Plain => {
            figures.print_plain(out, details)?;
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
    fn json(&self, details: bool) -> serde_json::Value {
        let (s, u) = (&self.stats, &self.usage);
        let uids: Vec<_> = u
            .uids
            .iter()
            .map(|x| {
                serde_json::json!({
                    "uid": x.uid, "objects": x.objects, "value_bytes": x.value_bytes,
                    "references": x.references, "reserved": x.reserved, "credit": x.credit,
                })
            })
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
        let (least, most) = shard_range(&u.shards);
        let mut doc = serde_json::json!({
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
                "uid_max_references": u.uid_max_references,
                "uid_max_rings": u.uid_max_rings, "uid_max_fds": u.uid_max_fds,
            },
            "holds": holds,
            "uids": uids,
            "workers": workers,
            "shard_count": u.shards.len(),
            "shard_objects_min": least,
            "shard_objects_max": most,
        });
        if details {
            doc["shards"] = serde_json::json!(u.shards);
        }
        doc
    }

    fn print_plain(&self, out: &mut impl Write, details: bool) -> std::io::Result<()> {
        let (s, u) = (&self.stats, &self.usage);
        let (least, most) = shard_range(&u.shards);
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
            (
                "shards",
                format!("{} shards, {least} to {most} objects each", u.shards.len()),
            ),
        ] {
            writeln!(out, "{name:<12} {value}")?;
        }
        writeln!(out)?;
        let rows = u
            .uids
            .iter()
            .map(|x| {
                vec![
                    x.uid.to_string(),
                    format!("{} / {}", x.objects, u.uid_max_objects),
                    format!("{} / {}", x.value_bytes, u.uid_max_bytes),
                    format!("{} / {}", x.references, u.uid_max_references),
                    format!("{} handles, {} B", x.reserved, x.credit),
                ]
            })
            .collect::<Vec<_>>();
        print_table(
            out,
            &[
                "UID",
                "OBJECTS / CAP",
                "BYTES / CAP",
                "REFERENCES / CAP",
                "RESERVED AHEAD",
            ],
            &rows,
        )?;
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
        print_table(out, &["WORKER", "RINGS", "OPS"], &rows)?;
        if details {
            writeln!(out)?;
            let rows = u
                .shards
                .iter()
                .enumerate()
                .map(|(i, n)| vec![i.to_string(), n.to_string()])
                .collect::<Vec<_>>();
            print_table(out, &["SHARD", "OBJECTS"], &rows)?;
        }
        Ok(())
    }
}

/// The fewest and most objects any shard holds.
fn shard_range(shards: &[u64]) -> (u64, u64) {
    (
        shards.iter().min().copied().unwrap_or(0),
        shards.iter().max().copied().unwrap_or(0),
    )
}

/// A JSON document on one line: what `--json` prints, one per record.
fn print_json(out: &mut impl Write, doc: &serde_json::Value) -> anyhow::Result<()> {
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
fn flag_names(flags: u32) -> Vec<&'static str> {
    let mut names = Vec::new();
    if flags & hreg::SHARED != 0 {
        names.push("shared");
    }
    if flags & hreg::DETACHED != 0 {
        names.push("detached");
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        assert_eq!(cli.command.name(), "rm");
        assert!(matches!(cli.command, Command::Rm { handle } if handle.get() == 16));
        assert!(Cli::try_parse_from(["hregctl", "rm", "0"]).is_err());
        assert!(Cli::try_parse_from(["hregctl", "rm", "zz"]).is_err());
    }

    #[test]
    fn ping_takes_a_timeout() {
        let cli = Cli::try_parse_from(["hregctl", "ping"]).unwrap();
        assert!(matches!(cli.command, Command::Ping { timeout } if timeout == 5.0));
        let cli = Cli::try_parse_from(["hregctl", "ping", "--timeout", "0.5"]).unwrap();
        assert!(matches!(cli.command, Command::Ping { timeout } if timeout == 0.5));
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
