//! The reading side of the read-side tests (`tests/reads.rs`), as a process
//! of its own: `hreg-reader SOCKET MODE [ARGS]` attaches to the daemon with
//! the real client (as whatever uid it was started as), does what MODE says,
//! prints its findings as one line of `key=value` words, then waits until
//! its stdin closes.
//!
//! Modes:
//! - `probe SECRET CONTROL SHARED PRIVATE`: for a uid other than the owner
//!   of the objects named. SECRET and CONTROL are markers masked with
//!   [`readside::MARKER_MASK`], in hex (so this process never holds them in
//!   the clear); SHARED and PRIVATE are comma-separated handles. It reads
//!   the SHARED objects and objects of its own (so its session maps those
//!   domains); every way of reading a PRIVATE one must be DENIED; it asks
//!   for every domain's chunks by hand (MAP_DOMAIN), keeping what comes;
//!   then it scans every readable mapping of its process for both markers,
//!   and tries to write to every registry memfd and mapping it holds.
//! - `race DIRECTORY THREADS SEED`: prints `ready`; THREADS threads then
//!   read the handles the directory object lists (get, get_into, get_ref,
//!   batched gets) and check every value ([`readside::inspect`]) until stdin
//!   closes; prints the counts, then a line `stale H...` of the handles that
//!   were STALE.
//! - `outcomes PATH`: reads every handle listed in the file at PATH (one per
//!   line) by get, get_into and a batched get; prints one word per handle:
//!   `OK:<fnv of the value>`, the status, or `MIXED(...)` when the three
//!   ways disagree.
//! - `hold-refs HANDLE...`: borrows every HANDLE (`get_ref`), prints
//!   `held=BYTES` and keeps the references until stdin closes (or it is
//!   killed).

use hreg::{Client, Completion, Error, Handle, Op};
use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::handle::HandleParts;
use hreg_tests::raw::RawConn;
use hreg_tests::readside::{self, Seen, MARKER_MASK};
use hreg_tests::Rng;
use rustix::fd::{AsRawFd, OwnedFd};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, rest)) = args.split_first() else {
        eprintln!("usage: hreg-reader SOCKET MODE [ARGS]");
        return ExitCode::from(2);
    };
    let client = match Client::connect(socket) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("hreg-reader: connect: {e}");
            return ExitCode::from(1);
        }
    };
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    let outcome = match words.as_slice() {
        ["probe", secret, control, shared, private] => {
            probe(&client, socket, [secret, control], shared, private)
        }
        ["race", directory, threads, seed] => {
            match (handle(directory), threads.parse(), seed.parse()) {
                (Some(directory), Ok(threads), Ok(seed)) => {
                    Ok(race(&client, directory, threads, seed))
                }
                _ => Err(format!("bad race arguments {words:?}")),
            }
        }
        ["outcomes", path] => outcomes(&client, path),
        ["hold-refs", handles @ ..] => hold_refs(&client, handles),
        _ => Err(format!("unknown mode {words:?}")),
    };
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => {
            println!("error {e}");
            return ExitCode::from(1);
        }
    }
    let _ = std::io::stdout().flush();
    wait_for_stdin_to_close();
    ExitCode::SUCCESS
}

fn handle(text: &str) -> Option<Handle> {
    text.parse().ok()
}

fn handles(list: &str) -> Result<Vec<Handle>, String> {
    list.split(',')
        .map(|h| handle(h).ok_or_else(|| format!("not a handle: {h:?}")))
        .collect()
}

fn wait_for_stdin_to_close() {
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

/// An outcome's name: `OK` or the status (`Denied`, `Stale`, ...).
fn status<T>(result: &hreg::Result<T>) -> String {
    match result {
        Ok(_) => "OK".into(),
        Err(e) => format!("{:?}", e.status()),
    }
}

// ---------------------------------------------------------------- probe

/// Domains the probe asks for by hand: far more than the test makes.
const DOMAINS_ASKED: u32 = 64;

/// The findings of the probe, in order.
#[derive(Default)]
struct Report(Vec<(String, String)>);

impl Report {
    fn note(&mut self, key: &str, value: impl ToString) {
        self.0.push((key.to_string(), value.to_string()));
    }

    fn line(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn probe(
    client: &Client,
    socket: &str,
    markers: [&str; 2],
    shared: &str,
    private: &str,
) -> Result<String, String> {
    let [secret, control] = markers.map(|hex| {
        readside::masked_from_hex(hex).ok_or_else(|| format!("not a hex marker: {hex:?}"))
    });
    let (secret, control) = (secret?, control?);
    let (shared, private) = (handles(shared)?, handles(private)?);
    let mut report = Report::default();

    // The SHARED objects: readable, each with the control marker.
    let shared_reads: Vec<String> = shared
        .iter()
        .map(|&h| match client.get(h) {
            Ok(v) if count_masked(&v, &control, v.len()) > 0 => "OK".into(),
            Ok(v) => format!("WRONG({}B)", v.len()),
            Err(e) => format!("{:?}", e.status()),
        })
        .collect();
    report.note("shared", shared_reads.join(","));

    // Another uid's private objects: DENIED whichever way they are read.
    let mut buf = vec![0u8; 2 << 20];
    let mut refused = Vec::new();
    for &h in &private {
        let mut batch = [Op::GetOwned { handle: h }];
        let batched = client
            .submit(&mut batch)
            .and_then(|mut results| results.pop().unwrap_or(Err(Error::Invalid)));
        for (way, outcome) in [
            ("get", status(&client.get(h))),
            ("get_into", status(&client.get_into(h, &mut buf))),
            ("get_ref", status(&client.get_ref(h))),
            ("submit", status(&batched)),
        ] {
            if outcome != "Denied" {
                refused.push(format!("{way}:{h}:{outcome}"));
            }
        }
    }
    report.note(
        "private",
        if refused.is_empty() {
            "Denied".to_string()
        } else {
            refused.join(",")
        },
    );

    // Objects of its own, inline and in the heap: its own domain is mapped.
    let own: Vec<hreg::Result<Handle>> = [vec![0x11u8; 3000], vec![0x22u8; 20]]
        .iter()
        .map(|value| {
            let h = client.insert(value, 0)?;
            match client.get(h)? == *value {
                true => Ok(h),
                false => Err(Error::Protocol("own value came back wrong".into())),
            }
        })
        .collect();
    report.note("own", own.iter().map(status).collect::<Vec<_>>().join(","));
    let own_domain = own
        .first()
        .and_then(|h| h.as_ref().ok())
        .map(|h| HandleParts::decode(h.get()).domain);

    // By hand, as a client in another language would: WELCOME's descriptors
    // and every domain's chunks the daemon hands out. All are kept open.
    let conn = RawConn::connect(std::path::Path::new(socket));
    conn.send(&ControlRequest::Hello {
        version: hreg_proto::PROTOCOL_VERSION,
        name: "probe".into(),
    });
    let mut kept: Vec<OwnedFd> = match conn.try_recv_all() {
        Ok(Some((Some(Reply::Welcome(_)), fds))) => fds,
        other => return Err(format!("no WELCOME: {other:?}")),
    };
    report.note("welcome_fds", kept.len());
    let mut mapped = Vec::new();
    let mut refusals: HashMap<u32, String> = HashMap::new();
    for domain in 0..DOMAINS_ASKED {
        conn.send(&ControlRequest::MapDomain {
            domain,
            slot_chunk: 0,
            heap_chunk: 0,
        });
        match conn.try_recv_all() {
            Ok(Some((Some(Reply::DomainChunks { .. }), fds))) => {
                mapped.push(domain.to_string());
                kept.extend(fds);
            }
            Ok(Some((Some(Reply::Error { status, .. }), fds))) => {
                let name = hreg_proto::Status::from_u32(status)
                    .map_or_else(|| status.to_string(), |s| format!("{s:?}"));
                refusals.insert(domain, format!("{name}+{}fds", fds.len()));
            }
            other => return Err(format!("MAP_DOMAIN {domain}: {other:?}")),
        }
    }
    report.note("mapped_domains", mapped.join(","));
    report.note(
        "own_domain",
        own_domain.map_or("none".to_string(), |d| d.to_string()),
    );
    if let Some(&h) = private.first() {
        let domain = u32::from(HandleParts::decode(h.get()).domain);
        report.note(
            "private_domain",
            refusals
                .get(&domain)
                .cloned()
                .unwrap_or_else(|| "MAPPED".into()),
        );
    }

    // Every readable byte of this process.
    let scan = scan_memory(&[&secret, &control]);
    report.note("scanned_mib", scan.scanned >> 20);
    report.note("secret_hits", scan.hits[0].total);
    report.note("secret_where", scan.hits[0].places());
    report.note("control_hits", scan.hits[1].total);
    report.note("control_in_registry", scan.hits[1].in_registry);

    // Writing to the registry's memory, every way there is.
    let fds = registry_fds();
    report.note("registry_fds", fds.len());
    let maps = registry_mappings();
    report.note("registry_maps", maps.len());
    let tried = fds
        .iter()
        .flat_map(|&fd| fd_attacks(fd))
        .chain(maps.iter().flat_map(mapping_attacks));
    // How often each attack worked, in the order they were first tried.
    let mut worked: Vec<(&str, usize)> = Vec::new();
    for (attack, success) in tried {
        match worked.iter_mut().find(|(a, _)| *a == attack) {
            Some((_, n)) => *n += usize::from(success),
            None => worked.push((attack, usize::from(success))),
        }
    }
    for (attack, n) in worked {
        report.note(attack, n);
    }
    let daemon_pid = rustix::net::sockopt::socket_peercred(&conn.fd)
        .map(|cred| cred.pid.as_raw_nonzero().get())
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    report.note("daemon_fds_opened", open_daemon_fds(daemon_pid));
    drop(kept);
    Ok(report.line())
}

/// How often a marker was found, and where.
#[derive(Default)]
struct Hits {
    total: usize,
    /// In a mapping of the registry's memory.
    in_registry: usize,
    /// The names of the mappings it was found in (a few).
    places: BTreeSet<String>,
}

impl Hits {
    fn places(&self) -> String {
        if self.places.is_empty() {
            "none".into()
        } else {
            self.places
                .iter()
                .map(|p| p.replace(' ', "_"))
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

struct Scan {
    scanned: usize,
    hits: Vec<Hits>,
}

/// A mapping of this process, from `/proc/self/maps`.
struct Region {
    start: usize,
    end: usize,
    perms: String,
    name: String,
}

fn regions() -> Vec<Region> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            // "start-end perms offset dev inode    name" (the name may hold
            // spaces, or be missing).
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_string();
            let name = fields.nth(3).unwrap_or("").trim().to_string();
            Some(Region {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                perms,
                name,
            })
        })
        .collect()
}

/// Reads every readable mapping through `/proc/self/mem` (unreadable
/// pages, such as `[vvar]`, are skipped) and counts each masked marker.
fn scan_memory(markers: &[&[u8]]) -> Scan {
    const PIECE: usize = 1 << 20;
    const PAGE: usize = 4096;
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(1);
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let mut hits: Vec<Hits> = markers.iter().map(|_| Hits::default()).collect();
    let mut scanned = 0;
    let mut buf = vec![0u8; PIECE + longest];
    let mut count = |hay: &[u8], starts_before: usize, region: &Region| {
        for (marker, hits) in markers.iter().zip(hits.iter_mut()) {
            let n = count_masked(hay, marker, starts_before);
            if n > 0 {
                hits.total += n;
                if hreg_tests::is_registry_memory(&region.name) {
                    hits.in_registry += n;
                }
                if hits.places.len() < 8 {
                    let name = if region.name.is_empty() {
                        format!("anon@{:x}", region.start)
                    } else {
                        region.name.clone()
                    };
                    hits.places.insert(name);
                }
            }
        }
    };
    for region in regions().iter().filter(|r| r.perms.starts_with('r')) {
        let mut at = region.start;
        while at < region.end {
            // Each piece overlaps the next by a marker's length, so a marker
            // across the seam is seen (and counted in the piece it starts in).
            let piece = PIECE.min(region.end - at);
            let len = (piece + longest - 1).min(region.end - at);
            if mem.read_exact_at(&mut buf[..len], at as u64).is_ok() {
                count(&buf[..len], piece, region);
                scanned += piece;
            } else {
                for page in (at..at + piece).step_by(PAGE) {
                    let len = PAGE.min(region.end - page);
                    if mem.read_exact_at(&mut buf[..len], page as u64).is_ok() {
                        count(&buf[..len], len, region);
                        scanned += len;
                    }
                }
            }
            at += piece;
        }
    }
    Scan { scanned, hits }
}

/// How often `masked` (a marker XORed with [`MARKER_MASK`]) occurs in `hay`
/// unmasked, starting before `starts_before`. The marker is never unmasked
/// in memory: only its first byte, to find candidates.
fn count_masked(hay: &[u8], masked: &[u8], starts_before: usize) -> usize {
    let Some(&first) = masked.first() else {
        return 0;
    };
    let first = first ^ MARKER_MASK;
    let mut count = 0;
    let mut at = 0;
    while at < starts_before.min(hay.len()) {
        let rest = &hay[at..];
        // SAFETY: memchr reads at most rest.len() bytes of `rest`.
        let found = unsafe { libc::memchr(rest.as_ptr().cast(), i32::from(first), rest.len()) };
        if found.is_null() {
            break;
        }
        let i = at + (found as usize - rest.as_ptr() as usize);
        if i >= starts_before {
            break;
        }
        if hay.get(i..i + masked.len()).is_some_and(|window| {
            window
                .iter()
                .zip(masked)
                .all(|(&b, &m)| b ^ MARKER_MASK == m)
        }) {
            count += 1;
        }
        at = i + 1;
    }
    count
}

/// This process's descriptors of the registry's memory (by their
/// `/proc/self/fd` links).
fn registry_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            hreg_tests::is_registry_memory(&target.to_string_lossy()).then_some(fd)
        })
        .collect()
}

/// Every way of writing through descriptor `fd` of a registry memfd; each
/// with whether it worked.
fn fd_attacks(fd: i32) -> Vec<(&'static str, bool)> {
    // SAFETY: plain system calls on a descriptor this process holds; every
    // mapping made here is unmapped again before returning.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 || st.st_size <= 0 {
            return vec![("fstat_failed", true)];
        }
        let len = st.st_size as usize;
        let writable_map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        let mmap_write = writable_map != libc::MAP_FAILED;
        if mmap_write {
            libc::munmap(writable_map, len);
        }
        let read_only = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        let mmap_read_failed = read_only == libc::MAP_FAILED;
        let mut mprotect_write = false;
        if !mmap_read_failed {
            mprotect_write =
                libc::mprotect(read_only, len, libc::PROT_READ | libc::PROT_WRITE) == 0;
            libc::munmap(read_only, len);
        }
        let ftruncate = libc::ftruncate(fd, 0) == 0 || libc::ftruncate(fd, st.st_size + 4096) == 0;
        let byte = [0u8; 1];
        let write = libc::write(fd, byte.as_ptr().cast(), 1) >= 0
            || libc::pwrite(fd, byte.as_ptr().cast(), 1, 0) >= 0;
        let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
        let reopen = [libc::O_RDWR, libc::O_WRONLY].iter().any(|&mode| {
            let reopened = libc::open(path.as_ptr(), mode | libc::O_CLOEXEC);
            if reopened >= 0 {
                libc::close(reopened);
            }
            reopened >= 0
        });
        let fchmod = libc::fchmod(fd, 0o666) == 0;
        let punch = libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        ) == 0;
        let add_seal = libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) == 0;
        let not_read_only = libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE != libc::O_RDONLY;
        vec![
            ("fd_not_read_only", not_read_only),
            ("mmap_read_failed", mmap_read_failed),
            ("mmap_write", mmap_write),
            ("mprotect_write", mprotect_write),
            ("ftruncate", ftruncate),
            ("write", write),
            ("reopen_rdwr", reopen),
            ("fchmod", fchmod),
            ("punch_hole", punch),
            ("add_seal", add_seal),
        ]
    }
}

/// This process's mappings of the registry's memory (the client's own).
fn registry_mappings() -> Vec<Region> {
    regions()
        .into_iter()
        .filter(|r| hreg_tests::is_registry_memory(&r.name))
        .collect()
}

/// Every way of writing to a mapping of the registry's memory; each with
/// whether it worked. What is written, if anything gets through, is the
/// byte that is there already.
fn mapping_attacks(region: &Region) -> Vec<(&'static str, bool)> {
    let len = region.end - region.start;
    let addr = region.start as *mut libc::c_void;
    // SAFETY: the region is a mapping of this process (from /proc/self/maps)
    // that stays mapped (the client never unmaps registry memory); the calls
    // below only ask the kernel to change or write it, which must fail.
    let (mprotect_map, madvise_remove) = unsafe {
        (
            libc::mprotect(addr, len, libc::PROT_READ | libc::PROT_WRITE) == 0,
            libc::madvise(addr, len, libc::MADV_REMOVE) == 0,
        )
    };
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .expect("open /proc/self/mem");
    let mut byte = [0u8; 1];
    let procmem_write = mem.read_exact_at(&mut byte, region.start as u64).is_ok()
        && mem
            .write_at(&byte, region.start as u64)
            .is_ok_and(|n| n == 1);
    vec![
        ("writable_map", region.perms.contains('w')),
        ("mprotect_map", mprotect_map),
        ("madvise_remove", madvise_remove),
        ("procmem_write", procmem_write),
    ]
}

/// How many of the daemon's descriptors this process could open through
/// `/proc/PID/fd` (the first 256).
fn open_daemon_fds(pid: i32) -> usize {
    (0..256)
        .filter(|n| {
            std::fs::File::open(format!("/proc/{pid}/fd/{n}"))
                .map(|f| f.as_raw_fd() >= 0)
                .unwrap_or(false)
        })
        .count()
}

// ---------------------------------------------------------------- race

/// What one reading thread saw.
#[derive(Default)]
struct Tally {
    /// Values checked and found good.
    good: u64,
    torn: u64,
    foreign: u64,
    stale_generation: u64,
    short_mismatch: u64,
    /// A value older than one this thread had already read of that handle.
    went_back: u64,
    /// A borrowed value whose bytes changed while it was held.
    ref_changed: u64,
    borrowed: u64,
    /// Errors other than STALE, and the first of them.
    errors: u64,
    first_error: Option<String>,
    stale: BTreeSet<u64>,
    latest: HashMap<Handle, u64>,
}

impl Tally {
    /// Checks a value read for `handle`; its sequence number if good.
    fn value(&mut self, handle: Handle, value: &[u8]) -> Option<u64> {
        match readside::inspect(handle, value) {
            Seen::Good(seq) => {
                self.good += 1;
                let seq = seq?;
                let latest = *self.latest.entry(handle).or_insert(seq);
                if seq < latest {
                    self.went_back += 1;
                    self.note_first(format!("{handle}: version {seq} after {latest}"));
                } else {
                    self.latest.insert(handle, seq);
                }
                Some(seq)
            }
            seen => {
                match seen {
                    Seen::Torn => self.torn += 1,
                    Seen::Foreign => self.foreign += 1,
                    Seen::StaleGeneration => self.stale_generation += 1,
                    _ => self.short_mismatch += 1,
                }
                self.note_first(format!("{handle}: {seen:?} value of {} bytes", value.len()));
                None
            }
        }
    }

    /// [`Tally::value`], for a value whose sequence number is not needed.
    fn check(&mut self, handle: Handle, value: &[u8]) {
        self.value(handle, value);
    }

    fn failed(&mut self, handle: Handle, error: &Error) {
        if matches!(error, Error::Stale) {
            self.stale.insert(handle.get());
        } else {
            self.error(format!("{handle}: {error}"));
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.note_first(what);
    }

    fn note_first(&mut self, what: String) {
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    fn add(&mut self, other: Tally) {
        self.good += other.good;
        self.torn += other.torn;
        self.foreign += other.foreign;
        self.stale_generation += other.stale_generation;
        self.short_mismatch += other.short_mismatch;
        self.went_back += other.went_back;
        self.ref_changed += other.ref_changed;
        self.borrowed += other.borrowed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.stale.extend(other.stale);
    }
}

fn race(client: &Client, directory: Handle, threads: usize, seed: u64) -> String {
    println!("ready");
    let _ = std::io::stdout().flush();
    let stop = AtomicBool::new(false);
    let mut total = Tally::default();
    std::thread::scope(|scope| {
        let stop = &stop;
        let readers: Vec<_> = (0..threads as u64)
            .map(|t| scope.spawn(move || race_thread(client, directory, seed * 64 + t, stop)))
            .collect();
        wait_for_stdin_to_close();
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            total.add(reader.join().expect("reader thread"));
        }
    });
    let stale: Vec<String> = total.stale.iter().map(u64::to_string).collect();
    format!(
        "good={} torn={} foreign={} stale_generation={} short_mismatch={} went_back={} \
         ref_changed={} borrowed={} errors={} stale_handles={} first_error={}\nstale {}",
        total.good,
        total.torn,
        total.foreign,
        total.stale_generation,
        total.short_mismatch,
        total.went_back,
        total.ref_changed,
        total.borrowed,
        total.errors,
        total.stale.len(),
        total
            .first_error
            .as_deref()
            .unwrap_or("none")
            .replace(' ', "_"),
        stale.join(" ")
    )
}

fn pick(rng: &mut Rng, handles: &[Handle]) -> Handle {
    handles[rng.below(handles.len() as u64) as usize]
}

/// Borrowed values one reading thread keeps at once.
const HELD_REFS: usize = 8;

fn race_thread(client: &Client, directory: Handle, seed: u64, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 18];
    let mut held: VecDeque<(Handle, Option<u64>, hreg::ValueRef<'_>)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let listed = match client.get(directory) {
            Ok(value) if tally.value(directory, &value).is_some() => {
                readside::directory_handles(readside::body(&value))
            }
            Ok(_) => continue,
            Err(e) => {
                tally.error(format!("directory: {e}"));
                continue;
            }
        };
        if listed.is_empty() {
            tally.error("an empty directory".into());
            continue;
        }
        for _ in 0..8 {
            let h = pick(&mut rng, &listed);
            match rng.next_u64() % 4 {
                0 => match client.get(h) {
                    Ok(value) => tally.check(h, &value),
                    Err(e) => tally.failed(h, &e),
                },
                1 => match client.get_into(h, &mut buf) {
                    Ok(n) => tally.check(h, &buf[..n]),
                    Err(e) => tally.failed(h, &e),
                },
                2 => match client.get_ref(h) {
                    Ok(borrowed) => {
                        tally.borrowed += 1;
                        let seq = tally.value(h, &borrowed);
                        held.push_back((h, seq, borrowed));
                        if held.len() > HELD_REFS {
                            let (h, seq, borrowed) = held.pop_front().expect("not empty");
                            recheck(&mut tally, h, seq, &borrowed);
                        }
                    }
                    Err(e) => tally.failed(h, &e),
                },
                _ => {
                    let (a, b) = (pick(&mut rng, &listed), pick(&mut rng, &listed));
                    let mut ops = [
                        Op::GetOwned { handle: h },
                        Op::Get {
                            handle: a,
                            buf: &mut buf,
                        },
                        Op::GetOwned { handle: b },
                    ];
                    match client.submit(&mut ops) {
                        Ok(results) => {
                            for (result, handle) in results.into_iter().zip([h, a, b]) {
                                match result {
                                    Ok(Completion::Value(value)) => tally.check(handle, &value),
                                    Ok(Completion::Length(n)) => match &ops[1] {
                                        Op::Get { buf, .. } => tally.check(handle, &buf[..n]),
                                        _ => unreachable!("op 1 is the GET into a buffer"),
                                    },
                                    Ok(other) => tally.error(format!("{handle}: {other:?}")),
                                    Err(e) => tally.failed(handle, &e),
                                }
                            }
                        }
                        Err(e) => tally.error(format!("submit: {e}")),
                    }
                }
            }
        }
    }
    for (h, seq, borrowed) in held {
        recheck(&mut tally, h, seq, &borrowed);
    }
    tally
}

/// A borrowed value, about to be dropped, must hold what it held when
/// borrowed.
fn recheck(tally: &mut Tally, handle: Handle, seq: Option<u64>, borrowed: &[u8]) {
    let now = match readside::inspect(handle, borrowed) {
        Seen::Good(now) => now,
        _ => None,
    };
    if seq.is_some() && now != seq {
        tally.ref_changed += 1;
        tally.note_first(format!("{handle}: a borrowed value changed while held"));
    }
}

// ---------------------------------------------------------------- outcomes

fn outcomes(client: &Client, path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let named = |result: Result<&[u8], &Error>| match result {
        Ok(value) => format!("OK:{:016x}", hreg_tests::fnv(value)),
        Err(e) => format!("{:?}", e.status()),
    };
    let mut words = Vec::new();
    for line in text.lines() {
        let h = handle(line).ok_or_else(|| format!("not a handle: {line:?}"))?;
        let got = client.get(h);
        let got = named(got.as_deref());
        let into = client.get_into(h, &mut buf);
        let into = named(into.as_ref().map(|&n| &buf[..n]));
        let mut ops = [Op::GetOwned { handle: h }];
        let batched = match client.submit(&mut ops) {
            Ok(mut results) => match results.pop() {
                Some(Ok(Completion::Value(v))) => named(Ok(&v)),
                Some(Ok(other)) => format!("UNEXPECTED({other:?})"),
                Some(Err(e)) => named(Err(&e)),
                None => "NO_RESULT".into(),
            },
            Err(e) => named(Err(&e)),
        };
        words.push(if got == into && got == batched {
            got
        } else {
            format!("MIXED({got}|{into}|{batched})")
        });
    }
    Ok(words.join(" "))
}

// ---------------------------------------------------------------- hold-refs

fn hold_refs(client: &Client, list: &[&str]) -> Result<String, String> {
    let refs = list
        .iter()
        .map(|h| {
            let h = handle(h).ok_or_else(|| format!("not a handle: {h:?}"))?;
            client.get_ref(h).map_err(|e| format!("get_ref {h}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let held: usize = refs.iter().map(|r| r.len()).sum();
    println!("held={held}");
    let _ = std::io::stdout().flush();
    wait_for_stdin_to_close();
    Ok(format!("released={}", refs.len()))
}
