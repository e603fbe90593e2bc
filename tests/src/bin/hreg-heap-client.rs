//! `hreg-heap-client SOCKET MODE [ARGS]`: what the heap and state-directory
//! tests (issue 17 rows 2, 6, 6b, 6c) have another uid do. Prints one line
//! with the outcome, then waits until its stdin closes (a line on stdin may
//! ask for a next step, where the mode says so).
//!
//! Modes:
//! - `put LEN TEXT`: insert a private DETACHED value of LEN bytes, TEXT
//!   repeated; print the handle.
//! - `get HANDLE`: print `value TEXT` (the value's first 32 bytes, lossy)
//!   or `error STATUS`.
//! - `class-walk BYTES`: issue 17 row 2. For 24 value sizes from 49 B to
//!   56 KiB, smallest first: insert values of that size until the uid's
//!   quota refuses one (or BYTES of them are in), then remove them all.
//!   Print `walked sizes=24 inserted=N refused=R`.
//!
//! Modes that need no daemon (SOCKET is ignored):
//! - `hold-lock PATH`: open PATH read-only and take an exclusive `flock`
//!   on it; print `locked` or `error WHY`, and hold it until stdin closes.
//! - `swap A B`: swap the files A and B by renaming; print `swapped` or
//!   `error WHY`.
//! - `plant PATH LEN`: replace PATH with a new file of LEN bytes (zeroes)
//!   of this uid, mode 0600, kept open; print `planted`; then on each
//!   `truncate` line on stdin cut it to nothing and print `truncated`.

use hreg::{Client, Handle, DETACHED};
use std::io::{BufRead, Read};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, rest)) = args.split_first() else {
        eprintln!("usage: hreg-heap-client SOCKET MODE [ARGS]");
        return ExitCode::from(2);
    };
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    let connect = || Client::connect(socket).map_err(|e| format!("connect: {e}"));
    let outcome: Result<String, String> = match words.as_slice() {
        ["put", len, text] => connect().and_then(|c| put(&c, number(len), text)),
        ["get", handle] => connect().map(|c| get(&c, number(handle) as u64)),
        ["class-walk", bytes] => connect().map(|c| class_walk(&c, number(bytes) as u64)),
        ["hold-lock", path] => hold_lock(path),
        ["swap", a, b] => swap(a, b),
        ["plant", path, len] => return plant(path, number(len) as u64),
        _ => {
            eprintln!("hreg-heap-client: unknown mode {words:?}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => println!("error {e}"),
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    ExitCode::SUCCESS
}

fn number(text: &str) -> usize {
    text.parse().expect("a number argument")
}

fn put(client: &Client, len: usize, text: &str) -> Result<String, String> {
    let value: Vec<u8> = text.bytes().cycle().take(len).collect();
    client
        .insert(&value, DETACHED)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn get(client: &Client, handle: u64) -> String {
    let Some(handle) = Handle::new(handle) else {
        return "error handle 0".into();
    };
    match client.get(handle) {
        Ok(value) => format!(
            "value {}",
            String::from_utf8_lossy(&value[..value.len().min(32)])
        ),
        Err(e) => format!("error {e}"),
    }
}

/// Issue 17 row 2: each size class in turn filled to the uid's byte
/// quota, then emptied.
fn class_walk(client: &Client, bytes: u64) -> String {
    const SIZES: usize = 24;
    let (first, last) = (49f64, 56.0 * 1024.0);
    let (mut inserted, mut refused) = (0u64, 0u64);
    for k in 0..SIZES {
        let len = (first * (last / first).powf(k as f64 / (SIZES - 1) as f64)) as usize;
        let value = vec![k as u8; len];
        let mut held = Vec::new();
        let mut total = 0u64;
        while total + len as u64 <= bytes {
            let mut batch: Vec<hreg::Op<'_>> = (0..64)
                .map(|_| hreg::Op::Insert {
                    value: &value,
                    flags: 0,
                })
                .collect();
            let Ok(results) = client.submit(&mut batch) else {
                break;
            };
            let before = held.len();
            for result in results {
                match result {
                    Ok(hreg::Completion::Inserted(h)) => held.push(h),
                    _ => refused += 1,
                }
            }
            total += ((held.len() - before) * len) as u64;
            if held.len() - before < 64 {
                break;
            }
        }
        inserted += held.len() as u64;
        for chunk in held.chunks(64) {
            let mut removes: Vec<hreg::Op<'_>> =
                chunk.iter().map(|&h| hreg::Op::Remove(h)).collect();
            let _ = client.submit(&mut removes);
        }
    }
    format!("walked sizes={SIZES} inserted={inserted} refused={refused}")
}

fn hold_lock(path: &str) -> Result<String, String> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open: {e}"))?;
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| format!("flock: {e}"))?;
    // Held for as long as the process lives.
    std::mem::forget(fd);
    Ok("locked".into())
}

fn swap(a: &str, b: &str) -> Result<String, String> {
    let aside = format!("{a}.swap");
    std::fs::rename(a, &aside)
        .and_then(|()| std::fs::rename(b, a))
        .and_then(|()| std::fs::rename(&aside, b))
        .map(|()| "swapped".into())
        .map_err(|e| e.to_string())
}

fn plant(path: &str, len: u64) -> ExitCode {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|file| file.set_len(len).map(|()| file))
    {
        Ok(file) => file,
        Err(e) => {
            println!("error {e}");
            return ExitCode::from(1);
        }
    };
    println!("planted");
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("truncate") => match file.set_len(0) {
                Ok(()) => println!("truncated"),
                Err(e) => println!("error {e}"),
            },
            Ok(_) => println!("error unknown step"),
            Err(_) => break,
        }
    }
    ExitCode::SUCCESS
}
