//! hregd's entry point: settings, logging (set up by [`hregd::logging`]),
//! signals, systemd notification, then the control loop until SIGTERM or
//! SIGINT.

use anyhow::Context;
use clap::Parser;
use hregd::config::{Args, Config};
use hregd::daemon::{Daemon, Signals};
use hregd::logging::Sink;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hregd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if args.check_state {
        return match hregd::state::check(config.state_dir.as_deref()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("hregd: {}", words(&e));
                ExitCode::from(2)
            }
        };
    }
    let sink = hregd::logging::init(Some(&config.log_level));
    match run(&args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once: to the journal as an error entry under systemd
            // (stderr is the journal there), else as one line on stderr.
            let why = words(&e);
            if sink == Sink::Journal {
                tracing::error!("{why}");
            } else {
                eprintln!("hregd: {why}");
            }
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes joined by ": ", without Rust's " (os error N)".
fn words(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| hreg_proto::os_error_words(&cause.to_string()))
        .collect::<Vec<_>>()
        .join(": ")
}

fn run(args: &Args, config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let stop = signal_pipe(&[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    let reload = signal_pipe(&[signal_hook::consts::SIGHUP])?;
    let socket = config.socket.clone();
    let signals = Signals {
        stop: stop.as_fd(),
        reload: reload.as_fd(),
        args,
    };
    let daemon = Daemon::start(config, signals)?;
    tracing::info!(socket = %socket.display(), "hregd serving");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let result = daemon.run();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    result
}

/// A socket that becomes readable when one of `signals` arrives.
fn signal_pipe(signals: &[i32]) -> anyhow::Result<UnixStream> {
    let (read, write) = UnixStream::pair().context("signal pipe")?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    for &signal in signals {
        signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
    }
    Ok(read)
}

/// Every session and ring holds descriptors; take the hard limit.
fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(maximum) = limit.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            },
        );
    }
}
