//! Sections 5 and 6: how gets and the daemon's memory behave as the number
//! of live objects grows, and what an idle daemon costs.
//!
//! Scale fills a fresh daemon with DETACHED 16-byte objects (inserted in
//! batches of 64) up to each level in turn, then times unbatched gets on
//! uniformly random handles and reads the daemon's resident memory.

use crate::procs::Proc;
use crate::stats::{value, Measured, Recorder, Rep, Rng};
use hreg::{Client, Handle, Op};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Value size of every scale object.
pub const SIZE: usize = 16;

/// Figures at one level.
pub struct Level {
    pub objects: usize,
    pub get: Measured,
    /// Resident memory growth per object beyond its value bytes.
    pub bytes_per_object: f64,
}

/// Runs every level on `daemon` (fresh: its memory before the first insert
/// is the baseline).
pub fn run(
    daemon: &Proc,
    client: &Client,
    levels: &[usize],
    per_rep: Duration,
    reps: usize,
) -> anyhow::Result<Vec<Level>> {
    let mut buf = [0u8; SIZE];
    let probe = client.insert(&value(SIZE, 0), hreg::DETACHED)?;
    client.get_into(probe, &mut buf)?;
    client.remove(probe)?;
    let baseline = daemon.rss_bytes()?;
    let mut handles: Vec<Handle> = Vec::new();
    let mut out = Vec::new();
    for &level in levels {
        fill(client, &mut handles, level)?;
        let rss = daemon.rss_bytes()?;
        let reps: Vec<Rep> = (0..reps)
            .map(|rep| {
                let mut rng = Rng::new(rep as u64 + 1);
                let mut rec = Recorder::new(1 << 20);
                let deadline = Instant::now() + per_rep;
                while Instant::now() < deadline {
                    let h = handles[rng.below(handles.len())];
                    rec.time(1, || client.get_into(h, &mut buf))?;
                }
                Ok(rec.finish())
            })
            .collect::<anyhow::Result<_>>()?;
        out.push(Level {
            objects: level,
            get: Measured::from_reps(&reps),
            bytes_per_object: (rss as f64 - baseline as f64) / level as f64 - SIZE as f64,
        });
    }
    Ok(out)
}

/// Inserts DETACHED objects, 64 to a batch, until `handles` holds `target`.
fn fill(client: &Client, handles: &mut Vec<Handle>, target: usize) -> anyhow::Result<()> {
    handles.reserve(target.saturating_sub(handles.len()));
    while handles.len() < target {
        let n = (target - handles.len()).min(64);
        let values: Vec<Vec<u8>> = (0..n)
            .map(|i| value(SIZE, (handles.len() + i) as u64))
            .collect();
        let mut ops: Vec<Op<'_>> = values
            .iter()
            .map(|v| Op::Insert {
                value: v,
                flags: hreg::DETACHED,
            })
            .collect();
        for result in client.submit(&mut ops)? {
            if let hreg::Completion::Inserted(h) = result? {
                handles.push(h);
            }
        }
    }
    Ok(())
}

/// The daemon's CPU use, as a fraction of one core, over `window` while
/// `clients` sessions, each with two threads' rings open, stay quiet.
pub fn idle(
    daemon: &Proc,
    socket: &std::path::Path,
    clients: usize,
    window: Duration,
) -> anyhow::Result<f64> {
    let sessions: Vec<Client> = (0..clients)
        .map(|_| Client::connect(socket))
        .collect::<hreg::Result<_>>()?;
    let h = sessions[0].insert(b"idle", hreg::SHARED)?;
    let threads = 2 * clients;
    let ready = Barrier::new(threads + 1);
    let done = AtomicBool::new(false);
    let share = std::thread::scope(|scope| {
        for client in &sessions {
            for _ in 0..2 {
                let (ready, done) = (&ready, &done);
                // Each thread opens its ring with one get, then stays quiet
                // (its ring stays open) until the window is over.
                scope.spawn(move || {
                    let result = client.get(h).map(drop);
                    ready.wait();
                    while !done.load(Ordering::Relaxed) {
                        std::thread::park_timeout(Duration::from_millis(50));
                    }
                    result
                });
            }
        }
        ready.wait();
        // Let the workers' spinning after the last request run out.
        std::thread::sleep(Duration::from_millis(200));
        let measured = (|| {
            let before = daemon.cpu_time()?;
            let start = Instant::now();
            std::thread::sleep(window);
            let used = daemon.cpu_time()? - before;
            anyhow::Ok(used.as_secs_f64() / start.elapsed().as_secs_f64())
        })();
        done.store(true, Ordering::Relaxed);
        measured
    })?;
    drop(sessions);
    Ok(share)
}
