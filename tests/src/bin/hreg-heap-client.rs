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
//! - `class-walk BYTES [loop]`: issue 17 row 2. For 24 value sizes from
//!   49 B to 56 KiB, smallest first: insert values of that size until the
//!   uid's quota refuses one (or BYTES of them are in), then remove them
//!   all. Print `walked sizes=24 rounds=K classes=C inserted=N refused=R`
//!   (K whole walks, C sizes filled in all); with `loop`, walk again and
//!   again until stdin closes (the size being filled is finished), then
//!   print it.
//! - `fragment BYTES`: issue 17 row 16, until stdin closes. For 8 SHARED
//!   value sizes from 64 KiB to 1 MiB, smallest first: insert values of
//!   that size until the quota refuses one (or BYTES are in), then remove
//!   all but every fourth, so the next, larger size finds only holes too
//!   small; after the largest, remove everything and start again. Once
//!   stdin closes (checked between sizes), print `fragmented rounds=K
//!   inserted=N kept=M` (K rounds begun, M the most values kept at once).
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
use std::sync::atomic::{AtomicBool, Ordering};

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
        ["class-walk", bytes] => connect().map(|c| class_walk(&c, number(bytes) as u64, None)),
        ["class-walk", bytes, "loop"] => connect()
            .map(|c| until_stdin_closes(|stop| class_walk(&c, number(bytes) as u64, Some(stop)))),
        ["fragment", bytes] => {
            connect().map(|c| until_stdin_closes(|stop| fragment(&c, number(bytes) as u64, stop)))
        }
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

/// Runs `work` until stdin closes (`stop` is set then); its outcome.
fn until_stdin_closes(work: impl FnOnce(&AtomicBool) -> String) -> String {
    static STOP: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        STOP.store(true, Ordering::Relaxed);
    });
    work(&STOP)
}

/// Inserts `len`-byte values (`flags`) in batches of 64 until one is
/// refused or `bytes` of them are in; returns their handles and how many
/// were refused.
fn fill(client: &Client, len: usize, flags: u32, bytes: u64) -> (Vec<Handle>, u64) {
    let value = vec![len as u8; len];
    let (mut held, mut refused) = (Vec::new(), 0u64);
    while ((held.len() + 1) * len) as u64 <= bytes {
        let mut batch: Vec<hreg::Op<'_>> = (0..64)
            .map(|_| hreg::Op::Insert {
                value: &value,
                flags,
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
        if held.len() - before < 64 {
            break;
        }
    }
    (held, refused)
}

/// Removes every object in `handles`, in batches.
fn remove_all(client: &Client, handles: &[Handle]) {
    for chunk in handles.chunks(64) {
        let mut removes: Vec<hreg::Op<'_>> = chunk.iter().map(|&h| hreg::Op::Remove(h)).collect();
        let _ = client.submit(&mut removes);
    }
}

/// Issue 17 row 2: each size class in turn filled to the uid's byte
/// quota, then emptied: every size once, or over and over `until` it is
/// set.
fn class_walk(client: &Client, bytes: u64, until: Option<&AtomicBool>) -> String {
    const SIZES: usize = 24;
    let (first, last) = (49f64, 56.0 * 1024.0);
    let (mut inserted, mut refused, mut classes) = (0u64, 0u64, 0usize);
    loop {
        let k = classes % SIZES;
        let len = (first * (last / first).powf(k as f64 / (SIZES - 1) as f64)) as usize;
        let (held, no) = fill(client, len, 0, bytes);
        inserted += held.len() as u64;
        refused += no;
        remove_all(client, &held);
        classes += 1;
        let done = match until {
            None => classes == SIZES,
            Some(stop) => stop.load(Ordering::Relaxed),
        };
        if done {
            break;
        }
    }
    let rounds = classes / SIZES;
    format!(
        "walked sizes={SIZES} rounds={rounds} classes={classes} inserted={inserted} \
         refused={refused}"
    )
}

/// Issue 17 row 16: the SHARED heap fragmented over large sizes until
/// `stop`.
fn fragment(client: &Client, bytes: u64, stop: &AtomicBool) -> String {
    let (mut inserted, mut most_kept, mut rounds) = (0u64, 0usize, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let mut kept = Vec::new();
        for k in 0..8 {
            if k > 0 && stop.load(Ordering::Relaxed) {
                break;
            }
            let len = (64 << 10) + k * (128 << 10) - 1;
            let (held, _) = fill(client, len, hreg::SHARED, bytes);
            inserted += held.len() as u64;
            let go: Vec<Handle> = held
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 4 != 0)
                .map(|(_, &h)| h)
                .collect();
            remove_all(client, &go);
            kept.extend(held.iter().step_by(4));
            most_kept = most_kept.max(kept.len());
        }
        remove_all(client, &kept);
        rounds += 1;
    }
    format!("fragmented rounds={rounds} inserted={inserted} kept={most_kept}")
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
