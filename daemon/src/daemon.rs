//! The running daemon: the registry, the ring worker threads it owns, the
//! control thread's connections ([`Control`]), and the event loop that ties
//! them to the signals (stop, reload) and to systemd (watchdog, status).

use crate::config::{Args, Config};
use crate::control_plane::{Control, FIRST_CONN_KEY};
use crate::listener::Listener;
use crate::state::{Keeping, Passed};
use crate::worker::{Spread, Worker};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const STOP_KEY: u64 = 2;
const RELOAD_KEY: u64 = 3;
const _: () = assert!(STOP_KEY < FIRST_CONN_KEY && RELOAD_KEY < FIRST_CONN_KEY);

/// Where the daemon learns of signals: each descriptor becomes readable when
/// its signal arrives (signal-hook's self-pipe).
pub struct Signals<'a> {
    /// SIGTERM, SIGINT: shut down.
    pub stop: BorrowedFd<'a>,
    /// SIGHUP: re-read the limits from the config file.
    pub reload: BorrowedFd<'a>,
    /// The command line the daemon was started with.
    pub args: &'a Args,
}

/// hregd, started: its threads run until [`Daemon::run`] returns.
pub struct Daemon {
    control: Control,
    workers: Vec<JoinHandle<()>>,
    /// The command line, to re-read the config file on SIGHUP.
    args: Args,
    reload: OwnedFd,
}

impl Daemon {
    /// Binds the socket (or takes systemd's), adopts the kept registry or
    /// makes a new one, and starts the workers.
    pub fn start(config: Config, signals: Signals<'_>) -> anyhow::Result<Daemon> {
        let mut passed = Passed::take()?;
        let listener = Listener::open(
            &config.socket,
            config.socket_mode,
            config.socket_group,
            std::mem::take(&mut passed.sockets),
        )?;
        let adopted = Keeping::open(config.state_dir.as_deref(), &mut passed)?
            .registry(config.shards, config.limits.registry)?;
        let registry = Arc::new(adopted.registry);
        registry.set_serving(true);
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        // A uid's share is one over all the workers.
        let spread = Arc::new(Spread::default());
        for id in 0..config.workers {
            let worker = Arc::new(Worker::sharing(
                Arc::clone(&registry),
                id,
                Arc::clone(&spread),
            )?);
            let runner = Arc::clone(&worker);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hreg-worker-{id}"))
                    .spawn(move || {
                        if let Err(e) = runner.run() {
                            tracing::error!(worker = id, error = %e, "worker failed");
                        }
                    })?,
            );
            workers.push(worker);
        }
        let control = Control::new(config, registry, workers, listener, adopted.sessions)?;
        control.watch(signals.stop, STOP_KEY)?;
        control.watch(signals.reload, RELOAD_KEY)?;
        Ok(Daemon {
            control,
            workers: threads,
            args: signals.args.clone(),
            reload: signals.reload.try_clone_to_owned()?,
        })
    }

    /// Serves until a stop signal, then tells every client, stops the
    /// workers and waits for them.
    pub fn run(mut self) -> anyhow::Result<()> {
        // Pet the watchdog twice per period; look at the world at least once
        // a second.
        let watchdog = sd_notify::watchdog_enabled();
        let period = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 2).min(Duration::from_secs(1))
        });
        let mut keys = Vec::new();
        let mut last_status = String::new();
        'serve: loop {
            self.control.wait(period, &mut keys)?;
            if keys.contains(&STOP_KEY) {
                break 'serve;
            }
            if keys.contains(&RELOAD_KEY) {
                self.reload();
            }
            self.control.dispatch_all(&keys);
            self.control.tick();
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            let status = self.control.status_line();
            if status != last_status {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
                last_status = status;
            }
        }
        self.control.shutdown();
        for thread in self.workers {
            let _ = thread.join();
        }
        self.control.finish();
        Ok(())
    }

    /// SIGHUP: re-reads the config file (flags still win) and applies what
    /// can change while serving: the limits on values, objects, bytes and
    /// sessions. The rest needs a restart, and the log says so.
    fn reload(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(self.reload.as_fd(), &mut buf), Ok(n) if n > 0) {}
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match Config::from_args(&self.args) {
            Ok(new) => {
                let old = self.control.config();
                let rest_unchanged = Config {
                    limits: old.limits,
                    log_level: old.log_level.clone(),
                    ..new.clone()
                };
                if &rest_unchanged != old {
                    tracing::warn!(
                        "config changes other than limits take effect at the next start"
                    );
                }
                self.control.apply_limits(new.limits);
                tracing::info!(limits = ?new.limits, "reloaded limits");
            }
            Err(e) => tracing::error!("reload refused, keeping the old limits: {e}"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}
