//! `hreg-attack SOCKET ATTACK`: runs one attack of the hostile-client suite
//! (see `hreg_tests::attacks`) against the daemon at SOCKET, prints one
//! `ready ...` line once it is set up, and keeps it going until its stdin
//! closes. Tests start it under another uid where the attack's uid matters.
//!
//! `hreg-attack SOCKET silent COUNT`: holds COUNT connections that never say
//! HELLO (`hreg_tests::attacks::hold_silent`); prints `ready silent=N`, and
//! when its stdin closes, a `held ...` line saying what the daemon did with
//! them.
//!
//! Issue 18's holders, each printing one `ready ...` line:
//! `hreg-attack SOCKET rings N [busy]` holds N rings (idle, or each sending
//! a request every 20 ms); `hreg-attack SOCKET own-doorbells` rings its own
//! doorbells in a loop; `hreg-attack SOCKET unread-fds CONNS REQUESTS` sends
//! MAP_DOMAIN requests and never reads the replies; `hreg-attack SOCKET
//! sessions-flood SESSIONS IDLE` asks SESSIONS without pause.

use hreg_tests::attacks::{
    hold_rings, hold_silent, ring_own_doorbells, sessions_flood, unread_descriptors, Attack,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

type Job = Box<dyn FnOnce(&Path, &mut dyn FnMut(String), &AtomicBool)>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, job): (&String, Job) = match args.as_slice() {
        [socket, silent, count] if silent == "silent" => {
            let Ok(count) = count.parse::<usize>() else {
                eprintln!("hreg-attack: COUNT must be a number, not {count:?}");
                return ExitCode::from(2);
            };
            (
                socket,
                Box::new(move |socket, say, stop| hold_silent(socket, count, say, stop)),
            )
        }
        [socket, rings, count, rest @ ..] if rings == "rings" => {
            let Ok(count) = count.parse::<usize>() else {
                eprintln!("hreg-attack: N must be a number, not {count:?}");
                return ExitCode::from(2);
            };
            let busy = rest.first().is_some_and(|w| w == "busy");
            (
                socket,
                Box::new(move |socket, say, stop| {
                    hold_rings(socket, count, &AtomicBool::new(busy), say, stop)
                }),
            )
        }
        [socket, own] if own == "own-doorbells" => (socket, Box::new(ring_own_doorbells)),
        [socket, what, a, b] if what == "unread-fds" || what == "sessions-flood" => {
            let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                eprintln!("hreg-attack: {what} takes two numbers");
                return ExitCode::from(2);
            };
            if what == "unread-fds" {
                (
                    socket,
                    Box::new(move |socket, say, stop| unread_descriptors(socket, a, b, say, stop)),
                )
            } else {
                (
                    socket,
                    Box::new(move |socket, say, stop| sessions_flood(socket, a, b, say, stop)),
                )
            }
        }
        [socket, name] => {
            let Some(attack) = Attack::from_name(name) else {
                eprintln!("hreg-attack: unknown attack {name}");
                return ExitCode::from(2);
            };
            (
                socket,
                Box::new(move |socket, say, stop| attack.run(socket, say, stop)),
            )
        }
        _ => {
            eprintln!("usage: hreg-attack SOCKET ATTACK | hreg-attack SOCKET silent COUNT");
            return ExitCode::from(2);
        }
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        STOP.store(true, Ordering::Relaxed);
    });
    job(
        &PathBuf::from(socket),
        &mut |line| {
            println!("{line}");
            let _ = std::io::stdout().flush();
        },
        &STOP,
    );
    ExitCode::SUCCESS
}
