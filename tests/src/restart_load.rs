//! The client side of the restart stress test (issue 12,
//! `tests/tests/restart_load.rs`): a client process runs a mixed load of
//! checksummed values while hregd is stopped and started again under it,
//! and tells the test what it holds whenever asked. The Rust client is
//! [`serve`] (`hreg-test-client SOCKET restart-load SEED`); the C client,
//! `tests/c/restart_load.c`, does the same over libhreg and speaks the same
//! lines, which [`Report`] reads.
//!
//! The lines, on the client's stdin and stdout:
//!
//! - the client prints `ready` once attached, then runs the load;
//! - `pause`: the client stops between two operations, settles what a
//!   DISCONNECTED left uncertain (waiting for its session to come back, up
//!   to [`SETTLE_PATIENCE`]) and prints its report: `object HANDLE FLAGS
//!   REFS LEN FNV` for each object it knows (REFS: the references it holds;
//!   FNV: [`crate::fnv`] of the value), `maybe FLAGS LEN FNV` for each
//!   insert that returned DISCONNECTED, `counts NAME=N ...` (see
//!   [`Counts`]), then `end`;
//! - `go`: the client forgets its `maybe`s (the test settled them) and goes
//!   on with the load;
//! - `quit` (after a pause): the client prints `bye` and ends its session.
//!
//! What a DISCONNECTED leaves uncertain, and how the client settles it once
//! its session is back: an insert may have made an object whose handle the
//! client never learnt (a `maybe`: the test looks for it among the objects
//! nobody knows); a replace left the old value or the new one (a get
//! tells); a remove, or the release of a non-DETACHED object's only
//! reference, may have killed the object (a get: STALE, or the value); a
//! retain or a release of a DETACHED object left one reference or none (a
//! release: OK or NOT_HELD, and none is left). An object with an uncertain
//! state gets no other operation until it is settled.

use crate::{checked_value, fnv, value_is_intact, Rng};
use hreg::{Client, Completion, Error, Handle, Op, DETACHED};
use std::io::{BufRead, Write};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// Longest a paused client waits for its session to come back.
pub const SETTLE_PATIENCE: Duration = Duration::from_secs(30);

/// Most objects a client keeps at once (inserts give way to the other
/// operations beyond).
pub const MAX_LIVE: usize = 48;

/// Value sizes: mostly small (inline in a slot up to 48 bytes, in the heap
/// beyond), one time in ten beyond 64 KiB.
pub const SMALL_SIZES: [usize; 10] = [8, 16, 40, 48, 49, 64, 200, 1000, 4096, 16_384];
/// The large value sizes.
pub const LARGE_SIZES: [usize; 2] = [70_000, 300_000];

/// One object a client knows, as its report gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLine {
    /// The handle.
    pub handle: u64,
    /// INSERT's flags.
    pub flags: u32,
    /// References the client holds on it.
    pub refs: u32,
    /// The value's length.
    pub len: u64,
    /// [`fnv`] of the value.
    pub fnv: u64,
}

/// An insert that returned DISCONNECTED: the object may exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaybeLine {
    /// INSERT's flags.
    pub flags: u32,
    /// The value's length.
    pub len: u64,
    /// [`fnv`] of the value.
    pub fnv: u64,
}

/// What a client counted since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations made.
    pub ops: u64,
    /// Values that were not the ones expected (not intact, not the last
    /// written, or a dead handle that resolved).
    pub wrong: u64,
    /// Objects that should live but were STALE.
    pub lost: u64,
    /// Statuses no operation should have returned.
    pub unexpected: u64,
    /// Calls that returned DISCONNECTED.
    pub disconnected: u64,
    /// Spells of DISCONNECTED that ended with a call that worked.
    pub stalls: u64,
    /// The longest of those spells, from the first DISCONNECTED to the next
    /// call that worked, in microseconds.
    pub longest_stall_us: u64,
}

impl Counts {
    const NAMES: [&'static str; 7] = [
        "ops",
        "wrong",
        "lost",
        "unexpected",
        "disconnected",
        "stalls",
        "longest_stall_us",
    ];

    fn fields(&mut self) -> [&mut u64; 7] {
        [
            &mut self.ops,
            &mut self.wrong,
            &mut self.lost,
            &mut self.unexpected,
            &mut self.disconnected,
            &mut self.stalls,
            &mut self.longest_stall_us,
        ]
    }

    /// Notes the outcome of a call: DISCONNECTED starts (or continues) a
    /// stall, anything else ends it.
    fn note(&mut self, disconnected: bool, stall: &mut Option<Instant>) {
        self.ops += 1;
        if disconnected {
            self.disconnected += 1;
            stall.get_or_insert_with(Instant::now);
        } else if let Some(began) = stall.take() {
            self.stalls += 1;
            let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.longest_stall_us = self.longest_stall_us.max(took);
        }
    }
}

/// A client's report (see the module's documentation for the lines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The objects it knows.
    pub objects: Vec<ObjectLine>,
    /// Its inserts that returned DISCONNECTED since the last `go`.
    pub maybes: Vec<MaybeLine>,
    /// Its counters.
    pub counts: Counts,
}

impl Report {
    /// Reads a report from `next_line` (each call gives the next line),
    /// up to its `end` line.
    pub fn read(mut next_line: impl FnMut() -> String) -> Result<Report, String> {
        let mut report = Report::default();
        loop {
            let line = next_line();
            let words: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| -> Result<u64, String> {
                words
                    .get(i)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| format!("bad report line {line:?}"))
            };
            match words.first().copied() {
                Some("end") => return Ok(report),
                Some("object") if words.len() == 6 => report.objects.push(ObjectLine {
                    handle: number(1)?,
                    flags: number(2)? as u32,
                    refs: number(3)? as u32,
                    len: number(4)?,
                    fnv: number(5)?,
                }),
                Some("maybe") if words.len() == 4 => report.maybes.push(MaybeLine {
                    flags: number(1)? as u32,
                    len: number(2)?,
                    fnv: number(3)?,
                }),
                Some("counts") => {
                    let mut seen = 0;
                    for word in &words[1..] {
                        let (name, value) = word
                            .split_once('=')
                            .ok_or_else(|| format!("bad counts {line:?}"))?;
                        let value: u64 = value
                            .parse()
                            .map_err(|_| format!("bad count in {line:?}"))?;
                        let at = Counts::NAMES
                            .iter()
                            .position(|n| *n == name)
                            .ok_or_else(|| format!("unknown count {name} in {line:?}"))?;
                        *report.counts.fields()[at] = value;
                        seen += 1;
                    }
                    if seen != Counts::NAMES.len() {
                        return Err(format!("counts missing in {line:?}"));
                    }
                }
                _ => return Err(format!("bad report line {line:?}")),
            }
        }
    }

    /// Writes the report's lines.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        for o in &self.objects {
            writeln!(
                out,
                "object {} {} {} {} {}",
                o.handle, o.flags, o.refs, o.len, o.fnv
            )?;
        }
        for m in &self.maybes {
            writeln!(out, "maybe {} {} {}", m.flags, m.len, m.fnv)?;
        }
        let mut counts = self.counts.clone();
        let values: Vec<String> = Counts::NAMES
            .iter()
            .zip(counts.fields())
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        writeln!(out, "counts {}", values.join(" "))?;
        writeln!(out, "end")?;
        out.flush()
    }
}

/// What a DISCONNECTED left open about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Uncertain {
    /// Nothing: the model is exact.
    No,
    /// A replace with this value may have been applied.
    Replaced(Vec<u8>),
    /// A remove (or the release of the only reference) may have killed it.
    Killed,
    /// A retain or release of a DETACHED object: one reference or none.
    Refs,
}

struct Object {
    handle: Handle,
    flags: u32,
    refs: u32,
    value: Vec<u8>,
    uncertain: Uncertain,
}

/// Dead handles kept to check that they stay STALE.
const DEAD_KEPT: usize = 32;

/// The Rust load client's state.
struct Load<'c> {
    client: &'c Client,
    rng: Rng,
    live: Vec<Object>,
    maybes: Vec<MaybeLine>,
    dead: Vec<Handle>,
    counts: Counts,
    stall: Option<Instant>,
}

impl<'c> Load<'c> {
    fn new(client: &'c Client, seed: u64) -> Load<'c> {
        Load {
            client,
            rng: Rng::new(seed),
            live: Vec::new(),
            maybes: Vec::new(),
            dead: Vec::new(),
            counts: Counts::default(),
            stall: None,
        }
    }

    /// Counts the outcome of a call and hands it back.
    fn call<T>(&mut self, result: hreg::Result<T>) -> hreg::Result<T> {
        let disconnected = matches!(result, Err(Error::Disconnected));
        self.counts.note(disconnected, &mut self.stall);
        result
    }

    fn unexpected(&mut self, what: &str, handle: Option<Handle>, e: &Error) {
        self.counts.unexpected += 1;
        eprintln!("restart-load: {what} {handle:?}: unexpected {e}");
    }

    fn wrong(&mut self, what: &str, handle: Handle) {
        self.counts.wrong += 1;
        eprintln!("restart-load: {what} {handle}: a wrong value");
    }

    fn lost(&mut self, at: usize, what: &str) {
        self.counts.lost += 1;
        let object = self.live.swap_remove(at);
        eprintln!("restart-load: {what} {}: STALE, lost", object.handle);
    }

    fn kill(&mut self, at: usize) {
        let object = self.live.swap_remove(at);
        if self.dead.len() == DEAD_KEPT {
            self.dead.remove(0);
        }
        self.dead.push(object.handle);
    }

    fn size(&mut self) -> usize {
        if self.rng.below(10) == 0 {
            LARGE_SIZES[self.rng.below(LARGE_SIZES.len() as u64) as usize]
        } else {
            SMALL_SIZES[self.rng.below(SMALL_SIZES.len() as u64) as usize]
        }
    }

    /// One operation of the load.
    fn step(&mut self) {
        if let Some(at) = self.live.iter().position(|o| o.uncertain != Uncertain::No) {
            if self.rng.below(2) == 0 {
                return self.settle_one(at);
            }
        }
        let roll = self.rng.below(100);
        if self.live.is_empty() || (roll < 25 && self.live.len() < MAX_LIVE) {
            return if roll.is_multiple_of(4) {
                self.insert_batch()
            } else {
                self.insert()
            };
        }
        let at = self.rng.below(self.live.len() as u64) as usize;
        if self.live[at].uncertain != Uncertain::No {
            return self.settle_one(at);
        }
        let detached = self.live[at].flags & DETACHED != 0;
        match roll {
            0..50 => self.get(at),
            50..65 => self.replace(at),
            65..75 => self.release(at),
            75..85 => self.remove(at),
            85..93 if detached && self.live[at].refs == 0 => self.retain(at),
            85..93 => self.get(at),
            _ => self.get_dead(),
        }
    }

    /// INSERT's flags: DETACHED about one time in three.
    fn flags(&mut self) -> u32 {
        if self.rng.below(100) < 35 {
            DETACHED
        } else {
            0
        }
    }

    /// A new checksummed value of a random size.
    fn value(&mut self) -> Vec<u8> {
        let size = self.size();
        checked_value(self.rng.next_u64(), size)
    }

    fn insert(&mut self) {
        let (flags, value) = (self.flags(), self.value());
        let result = self.client.insert(&value, flags);
        self.inserted(flags, value, result);
    }

    /// Counts an insert's outcome into the model.
    fn inserted(&mut self, flags: u32, value: Vec<u8>, result: hreg::Result<Handle>) {
        match self.call(result) {
            Ok(handle) => self.live.push(Object {
                handle,
                flags,
                refs: u32::from(flags & DETACHED == 0),
                value,
                uncertain: Uncertain::No,
            }),
            Err(Error::Disconnected) => self.maybes.push(MaybeLine {
                flags,
                len: value.len() as u64,
                fnv: fnv(&value),
            }),
            Err(e) => self.unexpected("insert", None, &e),
        }
    }

    /// A few inserts in one batch (more operations in flight when the
    /// daemon goes: some applied, some not).
    fn insert_batch(&mut self) {
        let values: Vec<(u32, Vec<u8>)> = (0..2 + self.rng.below(7))
            .map(|_| (self.flags(), self.value()))
            .collect();
        let mut ops: Vec<Op<'_>> = values
            .iter()
            .map(|(flags, value)| Op::Insert {
                value,
                flags: *flags,
            })
            .collect();
        let results: Vec<Option<hreg::Result<Completion>>> = match self.client.submit(&mut ops) {
            Ok(results) => results.into_iter().map(Some).collect(),
            // The batch stopped as a whole: any of them may have been made.
            Err(Error::Disconnected) => values.iter().map(|_| None).collect(),
            Err(e) => return self.unexpected("insert batch", None, &e),
        };
        for ((flags, value), result) in values.into_iter().zip(results) {
            let result = match result {
                Some(Ok(Completion::Inserted(handle))) => Ok(handle),
                Some(Ok(other)) => Err(Error::Protocol(format!("insert gave {other:?}"))),
                Some(Err(e)) => Err(e),
                None => Err(Error::Disconnected),
            };
            self.inserted(flags, value, result);
        }
    }

    fn get(&mut self, at: usize) {
        let handle = self.live[at].handle;
        match self.call(self.client.get(handle)) {
            Ok(got) if got == self.live[at].value && value_is_intact(&got) => {}
            Ok(_) => self.wrong("get", handle),
            Err(Error::Stale) => self.lost(at, "get"),
            Err(Error::Disconnected) => {}
            Err(e) => self.unexpected("get", Some(handle), &e),
        }
    }

    fn replace(&mut self, at: usize) {
        let handle = self.live[at].handle;
        let value = self.value();
        match self.call(self.client.replace(handle, &value)) {
            Ok(()) => self.live[at].value = value,
            Err(Error::Disconnected) => self.live[at].uncertain = Uncertain::Replaced(value),
            Err(Error::Stale) => self.lost(at, "replace"),
            Err(e) => self.unexpected("replace", Some(handle), &e),
        }
    }

    fn release(&mut self, at: usize) {
        let (handle, flags, refs) = {
            let o = &self.live[at];
            (o.handle, o.flags, o.refs)
        };
        let outcome = self.call(self.client.release(handle));
        match (outcome, flags & DETACHED != 0, refs) {
            // The only reference of a non-DETACHED object: it dies.
            (Ok(()), false, _) => self.kill(at),
            (Err(Error::Disconnected), false, _) => self.live[at].uncertain = Uncertain::Killed,
            (Ok(()), true, 1) => self.live[at].refs = 0,
            (Err(Error::Disconnected), true, 1) => self.live[at].uncertain = Uncertain::Refs,
            // A DETACHED object nobody retained: nothing to release.
            (Err(Error::NotHeld | Error::Disconnected), true, 0) => {}
            (Ok(()), true, _) => {
                self.counts.unexpected += 1;
                eprintln!("restart-load: release {handle}: released a reference never held");
            }
            (Err(Error::Stale), _, _) => self.lost(at, "release"),
            (Err(e), _, _) => self.unexpected("release", Some(handle), &e),
        }
    }

    fn remove(&mut self, at: usize) {
        let handle = self.live[at].handle;
        match self.call(self.client.remove(handle)) {
            Ok(()) => self.kill(at),
            Err(Error::Disconnected) => self.live[at].uncertain = Uncertain::Killed,
            Err(Error::Stale) => self.lost(at, "remove"),
            Err(e) => self.unexpected("remove", Some(handle), &e),
        }
    }

    fn retain(&mut self, at: usize) {
        let handle = self.live[at].handle;
        match self.call(self.client.retain(handle)) {
            Ok(()) => self.live[at].refs = 1,
            Err(Error::Disconnected) => self.live[at].uncertain = Uncertain::Refs,
            Err(Error::Stale) => self.lost(at, "retain"),
            Err(e) => self.unexpected("retain", Some(handle), &e),
        }
    }

    /// A removed or released object's handle stays STALE.
    fn get_dead(&mut self) {
        if self.dead.is_empty() {
            return;
        }
        let handle = self.dead[self.rng.below(self.dead.len() as u64) as usize];
        match self.call(self.client.get(handle)) {
            Err(Error::Stale | Error::Disconnected) => {}
            Ok(_) => self.wrong("get of a dead handle", handle),
            Err(e) => self.unexpected("get of a dead handle", Some(handle), &e),
        }
    }

    /// Tries once to settle what a DISCONNECTED left open about object `at`.
    fn settle_one(&mut self, at: usize) {
        let handle = self.live[at].handle;
        if self.live[at].uncertain == Uncertain::Refs {
            match self.call(self.client.release(handle)) {
                Ok(()) | Err(Error::NotHeld) => {
                    self.live[at].refs = 0;
                    self.live[at].uncertain = Uncertain::No;
                }
                Err(Error::Stale) => self.lost(at, "settling release"),
                Err(Error::Disconnected) => {}
                Err(e) => self.unexpected("settling release", Some(handle), &e),
            }
            return;
        }
        let got = match self.call(self.client.get(handle)) {
            Ok(got) => got,
            Err(Error::Disconnected) => return,
            Err(Error::Stale) if self.live[at].uncertain == Uncertain::Killed => {
                return self.kill(at)
            }
            Err(Error::Stale) => return self.lost(at, "settling get"),
            Err(e) => return self.unexpected("settling get", Some(handle), &e),
        };
        let uncertain = std::mem::replace(&mut self.live[at].uncertain, Uncertain::No);
        let intact = value_is_intact(&got);
        match uncertain {
            Uncertain::Replaced(new) if intact && got == new => self.live[at].value = new,
            _ if intact && got == self.live[at].value => {}
            _ => self.wrong("settling get", handle),
        }
    }

    /// Waits for the session to be back and settles every uncertain
    /// object (see the module's documentation).
    fn settle(&mut self) {
        let deadline = Instant::now() + SETTLE_PATIENCE;
        loop {
            let back = match self.call(self.client.stats()) {
                Ok(_) => true,
                Err(Error::Disconnected) => false,
                Err(e) => {
                    self.unexpected("stats", None, &e);
                    false
                }
            };
            let open: Vec<Handle> = self
                .live
                .iter()
                .filter(|o| o.uncertain != Uncertain::No)
                .map(|o| o.handle)
                .collect();
            if back && open.is_empty() {
                return;
            }
            for handle in open {
                if let Some(at) = self.live.iter().position(|o| o.handle == handle) {
                    self.settle_one(at);
                }
            }
            if Instant::now() > deadline {
                self.counts.unexpected += 1;
                eprintln!("restart-load: the session did not come back in {SETTLE_PATIENCE:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn report(&self) -> Report {
        Report {
            objects: self
                .live
                .iter()
                .map(|o| ObjectLine {
                    handle: o.handle.get(),
                    flags: o.flags,
                    refs: o.refs,
                    len: o.value.len() as u64,
                    fnv: fnv(&o.value),
                })
                .collect(),
            maybes: self.maybes.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// Lines of stdin, read by a thread of their own so that the load never
/// waits for them.
fn stdin_lines() -> Receiver<String> {
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if send.send(line.trim().to_owned()).is_err() {
                return;
            }
        }
    });
    lines
}

/// The Rust load client: prints `ready`, runs the load and answers the
/// test's lines until `quit` (or until stdin closes). Returns what to
/// print last (`bye`), or why it stopped.
pub fn serve(client: &Client, seed: u64) -> Result<String, String> {
    let commands = stdin_lines();
    let mut load = Load::new(client, seed);
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    loop {
        match commands.try_recv() {
            Err(TryRecvError::Empty) => {
                load.step();
                if load.stall.is_some() {
                    // The daemon is away: calls fail at once; no need to spin.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(TryRecvError::Disconnected) => return Err("stdin closed".into()),
            Ok(command) if command == "pause" => {
                load.settle();
                load.report().write(&mut out).map_err(|e| e.to_string())?;
                match commands.recv().as_deref() {
                    Ok("go") => load.maybes.clear(),
                    Ok("quit") => return Ok("bye".into()),
                    other => return Err(format!("after pause: {other:?}")),
                }
            }
            Ok(other) => return Err(format!("unknown command {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_what_was_written() {
        let report = Report {
            objects: vec![ObjectLine {
                handle: 1 << 40 | 7,
                flags: DETACHED,
                refs: 1,
                len: 70_000,
                fnv: u64::MAX,
            }],
            maybes: vec![MaybeLine {
                flags: 0,
                len: 8,
                fnv: 3,
            }],
            counts: Counts {
                ops: 10,
                stalls: 2,
                longest_stall_us: 12345,
                ..Counts::default()
            },
        };
        let mut text = Vec::new();
        report.write(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut lines = text.lines().map(str::to_owned);
        assert_eq!(Report::read(|| lines.next().unwrap()), Ok(report));
        let mut bad = ["object 1 2", "end"].into_iter().map(str::to_owned);
        assert!(Report::read(|| bad.next().unwrap()).is_err());
        let mut short = ["counts ops=1", "end"].into_iter().map(str::to_owned);
        assert!(Report::read(|| short.next().unwrap()).is_err());
    }
}
