//! A scripted hreg client for the tests of what each uid is charged for and
//! may learn (`tests/tests/charges.rs`), run as the uid a test gives it.
//!
//! `hreg-tenant SOCKET` attaches, prints `ready`, then runs one command per
//! line of stdin and prints one line for each, until stdin closes. Handles
//! travel between tenants in files of little-endian `u64`s.
//!
//! - `insert N LEN FLAGS FILE`: N objects of LEN bytes (byte i is
//!   `(i + n) % 251` for the n-th), FLAGS `none`, `shared`, `detached` or
//!   `shared+detached`, in batches of 64, appending each handle to FILE:
//!   `inserted=K refused=R limit=NAME` (the first refusal's limit).
//! - `retain FILE`, `release FILE`: the same op on every handle in FILE,
//!   in batches: `done=K refused=R status=S limit=NAME` (the first
//!   refusal's status and limit).
//! - `get FILE`: reads every handle in FILE and checks the bytes:
//!   `ok=K stale=S wrong=W other=O`.
//! - `stats`: what STATS and USAGE show this uid: `objects=.. value_bytes=..
//!   shards=.. reclaim=.. uids=UID:OBJECTS:BYTES:REFERENCES,..`.
//!
//! `hreg-tenant SOCKET lean MARGIN_MIB FILE` instead limits its own address
//! space (RLIMIT_AS) to what it uses plus MARGIN_MIB before it attaches,
//! then attaches and reads every handle in FILE (values as `insert` makes
//! them), and prints `vm_before=.. vm_attached=.. vm_after=..
//! heap_mapped=.. ok=K wrong=W other=O error=..` (address space in bytes;
//! the bytes of registry heap chunks mapped).

use hreg::{Client, Completion, Error, Handle, Op};
use std::io::{BufRead, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [socket, "lean", margin, file] => {
            println!("{}", lean(socket, number(margin), file));
            ExitCode::SUCCESS
        }
        [socket] => serve(socket),
        _ => {
            eprintln!("usage: hreg-tenant SOCKET | hreg-tenant SOCKET lean MARGIN_MIB FILE");
            ExitCode::from(2)
        }
    }
}

fn number(text: &str) -> u64 {
    text.parse().expect("a number argument")
}

/// The value the n-th object of an `insert` holds.
fn value(n: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((i + n) % 251) as u8).collect()
}

fn handles(file: &str) -> Vec<Handle> {
    std::fs::read(file)
        .unwrap_or_else(|e| panic!("read {file}: {e}"))
        .chunks_exact(8)
        .filter_map(|c| Handle::new(u64::from_le_bytes(c.try_into().expect("8"))))
        .collect()
}

fn limit_of(error: &Error) -> String {
    match error {
        Error::Quota {
            limit: Some(limit), ..
        } => limit.name().to_string(),
        _ => "none".to_string(),
    }
}

fn serve(socket: &str) -> ExitCode {
    let client = match Client::connect(socket) {
        Ok(client) => client,
        Err(e) => {
            println!("error {e}");
            return ExitCode::from(1);
        }
    };
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = match words.as_slice() {
            ["insert", n, len, flags, file] => insert(&client, number(n), number(len), flags, file),
            ["retain", file] => each(&client, file, Op::Retain),
            ["release", file] => each(&client, file, Op::Release),
            ["get", file] => get(&client, file),
            ["stats"] => stats(&client),
            _ => format!("unknown command {line:?}"),
        };
        println!("{out}");
        let _ = std::io::stdout().flush();
    }
    ExitCode::SUCCESS
}

fn insert(client: &Client, n: u64, len: u64, flags: &str, file: &str) -> String {
    let flags = match flags {
        "none" => 0,
        "shared" => hreg::SHARED,
        "detached" => hreg::DETACHED,
        "shared+detached" => hreg::SHARED | hreg::DETACHED,
        other => return format!("unknown flags {other}"),
    };
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .unwrap_or_else(|e| panic!("open {file}: {e}"));
    let (mut inserted, mut refused, mut limit) = (0u64, 0u64, "none".to_string());
    let mut next = 0u64;
    while next < n {
        let values: Vec<Vec<u8>> = (next..n.min(next + 64))
            .map(|k| value(k, len as usize))
            .collect();
        next += values.len() as u64;
        let mut ops: Vec<Op<'_>> = values
            .iter()
            .map(|v| Op::Insert { value: v, flags })
            .collect();
        let results = match client.submit(&mut ops) {
            Ok(results) => results,
            Err(e) => return format!("error {e}"),
        };
        let mut bytes = Vec::new();
        for result in results {
            match result {
                Ok(Completion::Inserted(h)) => {
                    inserted += 1;
                    bytes.extend_from_slice(&h.get().to_le_bytes());
                }
                Ok(other) => return format!("error unexpected {other:?}"),
                Err(e) => {
                    if refused == 0 {
                        limit = limit_of(&e);
                    }
                    refused += 1;
                }
            }
        }
        out.write_all(&bytes).expect("write handles");
    }
    format!("inserted={inserted} refused={refused} limit={limit}")
}

fn each(client: &Client, file: &str, op: fn(Handle) -> Op<'static>) -> String {
    let (mut done, mut refused) = (0u64, 0u64);
    let (mut status, mut limit) = ("none".to_string(), "none".to_string());
    for batch in handles(file).chunks(64) {
        let mut ops: Vec<Op<'_>> = batch.iter().map(|&h| op(h)).collect();
        let results = match client.submit(&mut ops) {
            Ok(results) => results,
            Err(e) => return format!("error {e}"),
        };
        for result in results {
            match result {
                Ok(_) => done += 1,
                Err(e) => {
                    if refused == 0 {
                        status = format!("{:?}", e.status());
                        limit = limit_of(&e);
                    }
                    refused += 1;
                }
            }
        }
    }
    format!("done={done} refused={refused} status={status} limit={limit}")
}

/// Reads every handle of `file`, checking each value against what
/// `insert` made (its position in the file is its n, less the handles
/// inserted before in other runs: the value's own first byte says n).
fn read_all(client: &Client, file: &str) -> (u64, u64, u64, u64) {
    let (mut ok, mut stale, mut wrong, mut other) = (0, 0, 0, 0);
    for h in handles(file) {
        match client.get(h) {
            Ok(v) if v.is_empty() || v == value(u64::from(v[0]), v.len()) => ok += 1,
            Ok(_) => wrong += 1,
            Err(Error::Stale) => stale += 1,
            Err(_) => other += 1,
        }
    }
    (ok, stale, wrong, other)
}

fn get(client: &Client, file: &str) -> String {
    let (ok, stale, wrong, other) = read_all(client, file);
    format!("ok={ok} stale={stale} wrong={wrong} other={other}")
}

fn stats(client: &Client) -> String {
    let (stats, usage) = match (client.stats(), client.usage()) {
        (Ok(stats), Ok(usage)) => (stats, usage),
        (Err(e), _) | (_, Err(e)) => return format!("error {e}"),
    };
    let uids: Vec<String> = usage
        .uids
        .iter()
        .map(|u| format!("{}:{}:{}:{}", u.uid, u.objects, u.value_bytes, u.references))
        .collect();
    format!(
        "objects={} value_bytes={} shards={} reclaim={} uids={}",
        stats.objects,
        stats.value_bytes,
        usage.shards.iter().sum::<u64>(),
        usage.reclaim_pending,
        uids.join(",")
    )
}

/// This process's address space (`VmSize`), in bytes.
fn vm_size() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of the registry's heap chunks this process maps (`hreg-d*-h*`
/// memfds, as `/proc/self/maps` names them).
fn heap_mapped() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(5)
                .is_some_and(|name| name.contains("memfd:hreg-d") && name.contains("-h"))
        })
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?)
        })
        .sum()
}

fn lean(socket: &str, margin_mib: u64, file: &str) -> String {
    let vm_before = vm_size();
    let limit = vm_before + (margin_mib << 20);
    let rlimit = rustix::process::Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::As, rlimit) {
        return format!("error setrlimit: {e}");
    }
    let client = match Client::connect(socket) {
        Ok(client) => client,
        Err(e) => return format!("vm_before={vm_before} error=connect:{e}"),
    };
    let vm_attached = vm_size();
    let (ok, stale, wrong, other) = read_all(&client, file);
    format!(
        "vm_before={vm_before} vm_attached={vm_attached} vm_after={} heap_mapped={} \
         ok={ok} stale={stale} wrong={wrong} other={other} error=none",
        vm_size(),
        heap_mapped()
    )
}
