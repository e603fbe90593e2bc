//! hregctl: a command-line client for hregd. It puts, gets and removes
//! objects and prints the registry's figures, through the `hreg` crate.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hreg::{Client, Handle};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Print the registry's figures.
    Stats,
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors (and 0 for --help/--version).
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hregctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let client = match &cli.socket {
        Some(path) => Client::connect_named(Some(path), "hregctl"),
        None => Client::connect_named(None, "hregctl"),
    };
    Ok(client?)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Put {
            value,
            shared,
            attached,
        } => {
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
            if *shared {
                flags |= hreg::SHARED;
            }
            if !*attached {
                flags |= hreg::DETACHED;
            }
            let client = connect(cli)?;
            let handle = client.insert(&value, flags).context("put")?;
            if cli.json {
                writeln!(out, "{}", serde_json::json!({ "handle": handle.get() }))?;
            } else {
                writeln!(out, "{handle}")?;
            }
        }
        Command::Get { handle } => {
            let client = connect(cli)?;
            let value = client
                .get(*handle)
                .with_context(|| format!("get {handle}"))?;
            if cli.json {
                let text = std::str::from_utf8(&value).ok();
                let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                let doc = serde_json::json!({
                    "handle": handle.get(),
                    "length": value.len(),
                    "value": text,
                    "hex": hex,
                });
                writeln!(out, "{doc}")?;
            } else {
                out.write_all(&value)?;
            }
        }
        Command::Rm { handle } => {
            let client = connect(cli)?;
            client
                .remove(*handle)
                .with_context(|| format!("rm {handle}"))?;
            if cli.json {
                writeln!(out, "{}", serde_json::json!({ "removed": handle.get() }))?;
            }
        }
        Command::Stats => {
            let client = connect(cli)?;
            let s = client.stats().context("stats")?;
            if cli.json {
                let doc = serde_json::json!({
                    "objects": s.objects,
                    "value_bytes": s.value_bytes,
                    "sessions": s.sessions,
                    "ops": s.ops,
                });
                writeln!(out, "{doc}")?;
            } else {
                for (name, value) in [
                    ("objects", s.objects),
                    ("value bytes", s.value_bytes),
                    ("sessions", s.sessions),
                    ("ops", s.ops),
                ] {
                    writeln!(out, "{name:<12} {value:>14}")?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
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
