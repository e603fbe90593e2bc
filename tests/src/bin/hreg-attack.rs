//! `hreg-attack SOCKET ATTACK`: runs one attack of the hostile-client suite
//! (see `hreg_tests::attacks`) against the daemon at SOCKET, prints one
//! `ready ...` line once it is set up, and keeps it going until its stdin
//! closes. Tests start it under another uid where the attack's uid matters.

use hreg_tests::attacks::Attack;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, name] = args.as_slice() else {
        eprintln!("usage: hreg-attack SOCKET ATTACK");
        return ExitCode::from(2);
    };
    let Some(attack) = Attack::from_name(name) else {
        eprintln!("hreg-attack: unknown attack {name}");
        return ExitCode::from(2);
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        STOP.store(true, Ordering::Relaxed);
    });
    let socket = PathBuf::from(socket);
    attack.run(
        &socket,
        &mut |line| {
            println!("{line}");
            let _ = std::io::stdout().flush();
        },
        &STOP,
    );
    ExitCode::SUCCESS
}
