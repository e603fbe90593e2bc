//! `hreg-attack SOCKET ATTACK`: runs one attack of the hostile-client suite
//! (see `hreg_tests::attacks`) against the daemon at SOCKET, prints one
//! `ready ...` line once it is set up, and keeps it going until its stdin
//! closes. Tests start it under another uid where the attack's uid matters.
//!
//! `hreg-attack SOCKET silent COUNT`: holds COUNT connections that never say
//! HELLO (`hreg_tests::attacks::hold_silent`); prints `ready silent=N`, and
//! when its stdin closes, a `held ...` line saying what the daemon did with
//! them.

use hreg_tests::attacks::{hold_silent, Attack};
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
