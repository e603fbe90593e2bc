//! `hreg-borrower SOCKET`: a client driven line by line on stdin, for the
//! reclamation tests (`tests/borrows.rs`), as whatever uid it was started
//! as. Each command gets one line of answer on stdout; `error ...` when a
//! call fails where the command does not count failures. It exits when its
//! stdin closes.
//!
//! Commands:
//! - `insert LEN SEED [shared]`: inserts a checked value (attached); prints
//!   the handle.
//! - `borrow H`: borrows H (`get_ref`, kept until `drop` or the end);
//!   prints `ok LEN`.
//! - `check`: compares every value still borrowed with the copy taken when
//!   it was borrowed; prints `intact N` or `changed H..`.
//! - `drop`: releases every borrowed value; prints `ok N`.
//! - `replace H LEN SEED COUNT`: replaces H COUNT times with checked values
//!   (seeds SEED on); prints `ok` or the error and where.
//! - `inserts LEN COUNT`: COUNT attached inserts of LEN bytes, released
//!   again; prints `ok=A quota=Q other=O`.
//! - `get H`: prints `ok LEN` if H reads back intact, else the error.
//! - `replace-rate H LEN MS`: replaces H with LEN-byte values in batches of
//!   16 for MS milliseconds; prints `replaces=N errors=E`.

use hreg::{Client, Error, Handle, Op, OwnedValueRef};
use hreg_tests::{checked_value, value_is_intact};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let Some(socket) = std::env::args().nth(1) else {
        eprintln!("usage: hreg-borrower SOCKET");
        return ExitCode::from(2);
    };
    let client = match Client::connect(&socket) {
        Ok(client) => client,
        Err(e) => {
            println!("error connect: {e}");
            return ExitCode::from(1);
        }
    };
    let mut borrowed: Vec<(Handle, OwnedValueRef, Vec<u8>)> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = run(&client, &mut borrowed, &words);
        println!("{answer}");
        let _ = std::io::stdout().flush();
    }
    ExitCode::SUCCESS
}

fn run(
    client: &Client,
    borrowed: &mut Vec<(Handle, OwnedValueRef, Vec<u8>)>,
    words: &[&str],
) -> String {
    let number = |i: usize| -> u64 { words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0) };
    let handle = |i: usize| -> Option<Handle> { words.get(i)?.parse().ok() };
    match words.first().copied() {
        Some("insert") => {
            let flags = if words.get(3) == Some(&"shared") {
                hreg::SHARED
            } else {
                0
            };
            match client.insert(&checked_value(number(2), number(1) as usize), flags) {
                Ok(h) => h.to_string(),
                Err(e) => format!("error {e}"),
            }
        }
        Some("borrow") => {
            let Some(h) = handle(1) else {
                return "error no handle".into();
            };
            match client.get_ref_owned(h) {
                Ok(value) => {
                    let copy = value.to_vec();
                    let len = copy.len();
                    borrowed.push((h, value, copy));
                    format!("ok {len}")
                }
                Err(e) => format!("error {e}"),
            }
        }
        Some("check") => {
            let changed: Vec<String> = borrowed
                .iter()
                .filter(|(_, value, copy)| value[..] != copy[..])
                .map(|(h, _, _)| h.to_string())
                .collect();
            if changed.is_empty() {
                format!("intact {}", borrowed.len())
            } else {
                format!("changed {}", changed.join(" "))
            }
        }
        Some("drop") => {
            let n = borrowed.len();
            borrowed.clear();
            format!("ok {n}")
        }
        Some("replace") => {
            let Some(h) = handle(1) else {
                return "error no handle".into();
            };
            for i in 0..number(4) {
                let value = checked_value(number(3) + i, number(2) as usize);
                if let Err(e) = client.replace(h, &value) {
                    return format!("error {e} at {i}");
                }
            }
            "ok".into()
        }
        Some("inserts") => {
            let (mut ok, mut quota, mut other) = (0, 0, 0);
            let value = checked_value(number(2), number(1) as usize);
            for _ in 0..number(2) {
                match client.insert(&value, 0) {
                    Ok(h) => {
                        ok += 1;
                        let _ = client.release(h);
                    }
                    Err(Error::Quota { .. }) => quota += 1,
                    Err(_) => other += 1,
                }
            }
            format!("ok={ok} quota={quota} other={other}")
        }
        Some("get") => match handle(1).map(|h| client.get(h)) {
            Some(Ok(value)) if value_is_intact(&value) => format!("ok {}", value.len()),
            Some(Ok(_)) => "error not intact".into(),
            Some(Err(e)) => format!("error {e}"),
            None => "error no handle".into(),
        },
        Some("replace-rate") => {
            let Some(h) = handle(1) else {
                return "error no handle".into();
            };
            let value = checked_value(7, number(2) as usize);
            let until = Instant::now() + Duration::from_millis(number(3));
            let (mut replaces, mut errors) = (0u64, 0u64);
            while Instant::now() < until {
                let mut ops: Vec<Op<'_>> = (0..16)
                    .map(|_| Op::Replace {
                        handle: h,
                        value: &value,
                    })
                    .collect();
                match client.submit(&mut ops) {
                    Ok(results) => {
                        for result in results {
                            match result {
                                Ok(_) => replaces += 1,
                                Err(_) => errors += 1,
                            }
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            format!("replaces={replaces} errors={errors}")
        }
        _ => format!("error unknown command {words:?}"),
    }
}
