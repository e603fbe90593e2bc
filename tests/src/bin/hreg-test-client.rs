//! A scripted hreg client process for the multi-process tests.
//!
//! `hreg-test-client SOCKET MODE [ARGS]` attaches to the daemon, does what
//! MODE says, prints one line with the outcome, then waits until its stdin
//! closes (so the test decides when it exits, or kills it).
//!
//! Modes:
//! - `insert VALUE`: insert VALUE (attached); print the handle.
//! - `hold ATTACHED DETACHED`: insert that many objects of each kind in
//!   batches; print `ready`.
//! - `mixed THREADS OPS SEED`: THREADS threads do OPS mixed operations each on
//!   checksummed values; print `wrong=W errors=E live=L`.
//! - `storm BATCHES SEED`: print `ready`, then two threads (two rings) each
//!   loop BATCHES times (0: forever, until killed) over a batch of 64
//!   inserts (one of them DETACHED in thread 0), a batch of gets and a batch
//!   of releases; print `done`. Made to be SIGKILLed or SIGSTOPped mid-batch.
//! - `get-each`: reads `HANDLE INDEX` lines from stdin and gets each
//!   handle at once, expecting [`hreg_tests::numbered`]`(INDEX)`; at EOF prints
//!   `ok=N stale=S wrong=W other=O`.
//! - `insert-die N FLAGS`: inserts N values [`hreg_tests::numbered`]`(i)` with object
//!   flags FLAGS, printing `HANDLE i` after each insert returned, then
//!   SIGKILLs itself (made for posted inserts: each must be applied).
//! - `restart-load SEED`: the restart stress test's load client
//!   ([`hreg_tests::restart_load`]: it prints `ready`, answers `pause`,
//!   `go` and `quit` on stdin); print `bye` after `quit`.

use hreg::{Client, Handle, Op};
use hreg_tests::{checked_value, numbered, value_is_intact};
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, rest)) = args.split_first() else {
        eprintln!("usage: hreg-test-client SOCKET MODE [ARGS]");
        return ExitCode::from(2);
    };
    let client = match Client::connect(socket) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("hreg-test-client: connect: {e}");
            return ExitCode::from(1);
        }
    };
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    let outcome = match words.as_slice() {
        ["insert", value] => client.insert(value.as_bytes(), 0).map(|h| h.to_string()),
        ["hold", attached, detached] => hold(&client, number(attached), number(detached)),
        ["mixed", threads, ops, seed] => Ok(mixed(
            &client,
            number(threads),
            number(ops),
            number(seed) as u64,
        )),
        ["storm", batches, seed] => storm(&client, number(batches), number(seed) as u64),
        ["get-each"] => get_each(&client),
        ["insert-die", n, flags] => insert_die(&client, number(n), number(flags) as u32),
        ["restart-load", seed] => hreg_tests::restart_load::serve(&client, number(seed) as u64)
            .map_err(hreg::Error::Protocol),
        _ => {
            eprintln!("hreg-test-client: unknown mode {words:?}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => {
            println!("error {e}");
            return ExitCode::from(1);
        }
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    ExitCode::SUCCESS
}

fn get_each(client: &Client) -> hreg::Result<String> {
    use std::io::BufRead;
    let (mut ok, mut stale, mut wrong, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; 64];
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(hreg::Error::Io)?;
        let mut words = line.split_whitespace();
        let (Some(handle), Some(index)) = (words.next(), words.next()) else {
            continue;
        };
        let handle: Handle = handle.parse().expect("a handle");
        let index: u64 = index.parse().expect("an index");
        match client.get_into(handle, &mut buf) {
            Ok(n) if buf[..n] == numbered(index) => ok += 1,
            Ok(_) => wrong += 1,
            Err(hreg::Error::Stale) => stale += 1,
            Err(e) => {
                if other == 0 {
                    eprintln!("get-each: {e}");
                }
                other += 1;
            }
        }
    }
    Ok(format!("ok={ok} stale={stale} wrong={wrong} other={other}"))
}

fn insert_die(client: &Client, n: usize, flags: u32) -> hreg::Result<String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for i in 0..n as u64 {
        let handle = client.insert(&numbered(i), flags)?;
        writeln!(out, "{handle} {i}").map_err(hreg::Error::Io)?;
        out.flush().map_err(hreg::Error::Io)?;
    }
    // Right after the last insert returned: nothing may be lost.
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    unreachable!("SIGKILLed");
}

fn number(text: &str) -> usize {
    text.parse().expect("a number argument")
}

fn hold(client: &Client, attached: usize, detached: usize) -> hreg::Result<String> {
    let values: Vec<Vec<u8>> = (0..attached + detached)
        .map(|i| checked_value(i as u64, 24))
        .collect();
    for (chunk_start, chunk) in values.chunks(64).enumerate().map(|(i, c)| (i * 64, c)) {
        let mut ops: Vec<Op<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(i, value)| Op::Insert {
                value,
                flags: if chunk_start + i < attached {
                    0
                } else {
                    hreg::DETACHED
                },
            })
            .collect();
        for result in client.submit(&mut ops)? {
            result?;
        }
    }
    Ok("ready".to_string())
}

/// Mixed operations from several threads, each on its own objects, every
/// read checked against the value last written.
fn mixed(client: &Client, threads: usize, ops: usize, seed: u64) -> String {
    let results: Vec<(u64, u64, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    mixed_thread(client, ops, seed.wrapping_mul(1000).wrapping_add(t as u64))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker thread"))
            .collect()
    });
    let wrong: u64 = results.iter().map(|r| r.0).sum();
    let errors: u64 = results.iter().map(|r| r.1).sum();
    let live: usize = results.iter().map(|r| r.2).sum();
    format!("wrong={wrong} errors={errors} live={live}")
}

fn mixed_thread(client: &Client, ops: usize, seed: u64) -> (u64, u64, usize) {
    let mut live: Vec<(Handle, Vec<u8>)> = Vec::new();
    let (mut wrong, mut errors) = (0u64, 0u64);
    // The first few errors go to stderr: a count alone says nothing of why.
    let mut error = |what: &str, e: hreg::Error| {
        errors += 1;
        if errors <= 5 {
            eprintln!("mixed: {what} failed: {e}");
        }
    };
    let mut rng = hreg_tests::Rng::new(seed);
    let mut next = || rng.next_u64();
    for i in 0..ops {
        let roll = next() % 100;
        let len = [8usize, 16, 40, 200, 5000][(next() % 5) as usize];
        if live.is_empty() || roll < 30 {
            let value = checked_value(next(), len);
            match client.insert(&value, 0) {
                Ok(h) => live.push((h, value)),
                Err(e) => error("insert", e),
            }
        } else if roll < 70 {
            let (h, expected) = &live[i % live.len()];
            match client.get(*h) {
                Ok(got) if got == *expected && value_is_intact(&got) => {}
                Ok(_) => wrong += 1,
                Err(e) => error("get", e),
            }
        } else if roll < 85 {
            let at = i % live.len();
            let value = checked_value(next(), len);
            match client.replace(live[at].0, &value) {
                Ok(()) => live[at].1 = value,
                Err(e) => error("replace", e),
            }
        } else {
            let (h, _) = live.swap_remove(i % live.len());
            if let Err(e) = client.release(h) {
                error("release", e);
            }
        }
    }
    (wrong, errors, live.len())
}

/// Batches of inserts, gets and releases from two threads, forever when
/// `batches` is 0. Only the DETACHED objects outlive the process.
fn storm(client: &Client, batches: usize, seed: u64) -> hreg::Result<String> {
    use std::io::Write;
    println!("ready");
    let _ = std::io::stdout().flush();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| scope.spawn(move || storm_thread(client, batches, seed * 2 + t, t == 0)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("storm thread"))
    })?;
    Ok("done".to_string())
}

fn storm_thread(client: &Client, batches: usize, seed: u64, detach_one: bool) -> hreg::Result<()> {
    let values: Vec<Vec<u8>> = (0..64u64)
        .map(|i| checked_value(seed * 64 + i, [16usize, 40, 300, 3000][(i % 4) as usize]))
        .collect();
    let mut round = 0usize;
    while batches == 0 || round < batches {
        round += 1;
        let mut inserts: Vec<Op<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, value)| Op::Insert {
                value,
                flags: if detach_one && i == 0 {
                    hreg::DETACHED
                } else {
                    0
                },
            })
            .collect();
        let mut handles = Vec::with_capacity(64);
        for (i, result) in client.submit(&mut inserts)?.into_iter().enumerate() {
            if let hreg::Completion::Inserted(h) = result? {
                if !(detach_one && i == 0) {
                    handles.push(h);
                }
            }
        }
        let mut gets: Vec<Op<'_>> = handles
            .iter()
            .map(|&handle| Op::GetOwned { handle })
            .collect();
        for result in client.submit(&mut gets)? {
            match result? {
                hreg::Completion::Value(v) if value_is_intact(&v) => {}
                other => {
                    return Err(hreg::Error::Protocol(format!("bad value {other:?}")));
                }
            }
        }
        let mut releases: Vec<Op<'_>> = handles.iter().map(|&h| Op::Release(h)).collect();
        for result in client.submit(&mut releases)? {
            result?;
        }
    }
    Ok(())
}
