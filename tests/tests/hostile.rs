//! Clients that lie: descriptors sent unasked by `SCM_RIGHTS` (the daemon
//! closes them at once and its descriptor count returns to its baseline), a
//! chaos run where a hostile session scribbles random bytes over its own
//! rings and sends garbage on its control socket while well-behaved client
//! processes verify checksummed values (zero wrong values, zero errors, the
//! daemon stays up), and a symlink planted at the socket path (hregd refuses
//! to start and leaves the target alone).

use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::entry::{sqe_flags, Sqe, ENTRY_SIZE};
use hreg_proto::ring::{ClientCounters, ClientRing};
use hreg_proto::Status;
use hreg_tests::raw::{completed, RawConn, RawSession};
use hreg_tests::{wait_until, Daemon, Helper};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn still_serves(daemon: &Daemon) {
    let client = daemon.client();
    let h = client.insert(b"still here", 0).unwrap();
    assert_eq!(client.get(h).unwrap(), b"still here");
}

/// xorshift64: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes_upto(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1) as usize;
        self.bytes(len)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
        .expect("pipe")
}

/// Waits until every copy of the pipe's write end is closed (read sees EOF).
fn wait_for_eof(read_end: &OwnedFd, what: &str) {
    wait_until(what, || {
        let mut buf = [0u8; 8];
        matches!(rustix::io::read(read_end, &mut buf), Ok(0))
    });
}

#[test]
fn descriptors_sent_unasked_are_closed() {
    let daemon = Daemon::start(&[]);
    // Warm-up session, then a standing observer; the baseline is the
    // daemon's descriptors with only the observer attached.
    drop(RawSession::attach(&daemon.socket).open_ring());
    let observer = daemon.client();
    observer.stats().unwrap();
    wait_until("only the observer attached", || {
        observer.stats().unwrap().sessions == 1
    });
    let settle = |what: &str, baseline: usize| {
        wait_until(what, || {
            observer.stats().unwrap().sessions == 1 && daemon.fd_count() == baseline
        });
    };
    std::thread::sleep(Duration::from_millis(50));
    let baseline = daemon.fd_count();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let mut sent = 0usize;

    // HELLO with three descriptors, one the write end of a pipe whose read
    // end tells us when the daemon has closed its copy.
    let (hello_r, hello_w) = pipe();
    let conn = RawConn::connect(&daemon.socket);
    let hello = ControlRequest::Hello {
        version: hreg_proto::PROTOCOL_VERSION,
        name: "fd-pusher".into(),
    }
    .encode();
    let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    conn.try_send_with_fds(&hello, &[hello_w.as_fd(), devnull.as_fd(), eventfd.as_fd()])
        .unwrap();
    sent += 3;
    drop(hello_w);
    let Some((Reply::Welcome(_), Some(_memfd))) = conn.recv() else {
        panic!("HELLO with descriptors attached should still be welcomed");
    };
    wait_for_eof(&hello_r, "the daemon to close the fd sent with HELLO");

    // Later requests with descriptors, including more than the daemon's
    // ancillary buffer holds (the kernel truncates and discards the rest)
    // and the most one message may carry (253).
    for count in [1usize, 8, 9, 20, 253] {
        let (r, w) = pipe();
        let fds: Vec<BorrowedFd<'_>> = std::iter::repeat_n(w.as_fd(), count).collect();
        conn.try_send_with_fds(&ControlRequest::Stats.encode(), &fds)
            .unwrap();
        sent += count;
        drop(fds);
        drop(w);
        assert!(matches!(conn.recv(), Some((Reply::Stats(_), None))));
        wait_for_eof(
            &r,
            &format!("the daemon to close {count} fds sent with STATS"),
        );
    }
    // A RING_OPEN with descriptors still opens a ring (the daemon's own
    // eventfd comes back, ours do not stay).
    let (r, w) = pipe();
    conn.try_send_with_fds(&ControlRequest::RingOpen.encode(), &[w.as_fd(), w.as_fd()])
        .unwrap();
    sent += 2;
    drop(w);
    assert!(matches!(
        conn.recv(),
        Some((Reply::RingOpened { .. }, Some(_)))
    ));
    wait_for_eof(&r, "the daemon to close fds sent with RING_OPEN");

    // Garbage with descriptors, attached and before HELLO: the connection
    // goes, the descriptors too.
    let (r, w) = pipe();
    conn.try_send_with_fds(&[0xee; 40], &[w.as_fd()]).unwrap();
    sent += 1;
    drop(w);
    assert!(conn.recv().is_none(), "garbage closes the session");
    wait_for_eof(&r, "the daemon to close fds sent with garbage");
    drop(conn);
    let (r, w) = pipe();
    let early = RawConn::connect(&daemon.socket);
    early
        .try_send_with_fds(b"not a hello", &[w.as_fd(), devnull.as_fd()])
        .unwrap();
    sent += 2;
    drop(w);
    assert!(matches!(early.recv(), Some((Reply::Refused { .. }, None))));
    wait_for_eof(&r, "the daemon to close fds sent before HELLO");
    drop(early);
    settle("the descriptor count back at its baseline", baseline);

    // Many sessions doing the same: nothing accumulates.
    for round in 0..40 {
        let conn = RawConn::connect(&daemon.socket);
        let fds = [devnull.as_fd(), eventfd.as_fd(), devnull.as_fd()];
        conn.try_send_with_fds(&hello, &fds).unwrap();
        let _welcome = conn.recv().expect("WELCOME");
        conn.try_send_with_fds(&ControlRequest::RingOpen.encode(), &fds)
            .unwrap();
        let _ring = conn.recv().expect("RING_OPENED");
        conn.try_send_with_fds(&ControlRequest::Stats.encode(), &fds)
            .unwrap();
        let _stats = conn.recv().expect("STATS_REPLY");
        sent += 9;
        if round % 2 == 0 {
            conn.try_send_with_fds(&ControlRequest::Goodbye.encode(), &fds)
                .unwrap();
            sent += 3;
        }
    }
    settle("the descriptor count back at its baseline", baseline);
    println!(
        "unasked fds: sent {sent} descriptors; daemon fds {} (baseline {baseline})",
        daemon.fd_count()
    );
    still_serves(&daemon);
}

/// What the hostile session did.
#[derive(Debug, Default)]
struct Hostility {
    sessions: u64,
    entries: u64,
    messages: u64,
    scribbles: u64,
    error_completions: u64,
    ok_completions: u64,
    closed: u64,
    error_replies: u64,
}

/// Reads whatever the daemon sent on the control socket without blocking
/// for long; true when the connection is gone.
fn drain(conn: &RawConn, hostility: &mut Hostility) -> bool {
    loop {
        match conn.try_recv() {
            Ok(None) => return true,
            Ok(Some((Some(Reply::Error { .. } | Reply::Refused { .. }), _))) => {
                hostility.error_replies += 1
            }
            Ok(Some(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A random entry: pure noise, or a plausible one with random fields (the
/// handle is random or one this session got back from its own INSERTs).
fn hostile_entry(rng: &mut Rng, own: &[u64]) -> [u8; ENTRY_SIZE] {
    if rng.below(4) == 0 {
        return rng.bytes(ENTRY_SIZE).try_into().unwrap();
    }
    let opcodes = [1u8, 2, 3, 4, 5, 6, 16, 17, 0, 7, 255];
    let mut inline = [0u8; 32];
    inline.copy_from_slice(&rng.bytes(32));
    if rng.below(2) == 0 {
        inline[..8].copy_from_slice(&rng.below(1 << 20).to_le_bytes());
    }
    let handle = match rng.below(4) {
        0 => 0,
        1 if !own.is_empty() => own[rng.below(own.len() as u64) as usize],
        _ => rng.next(),
    };
    let sqe = Sqe {
        user_data: rng.next(),
        opcode: opcodes[rng.below(opcodes.len() as u64) as usize],
        entry_flags: [0, sqe_flags::INLINE, sqe_flags::STAGED, 3, 0x80][rng.below(5) as usize],
        // The ring overwrites it when publishing.
        stamp: rng.next() as u16,
        obj_flags: [0, 1, 2, 3, 4, rng.next() as u32][rng.below(6) as usize],
        handle,
        data_off: [0, 8, rng.next() as u32, u32::MAX, rng.below(70000) as u32]
            [rng.below(5) as usize],
        data_len: [
            0,
            5,
            32,
            33,
            4096,
            rng.next() as u32,
            rng.below(70000) as u32,
        ][rng.below(7) as usize],
        inline,
    };
    let mut bytes = sqe.encode();
    if rng.below(16) == 0 {
        bytes[10] = rng.next() as u8;
    }
    bytes
}

/// Publishes `count` hostile entries on a ring whose counters we keep
/// honest, rings its doorbell, and reads whatever completes within a short
/// while. Returns false if the completions stopped coming.
fn hostile_batch(
    rng: &mut Rng,
    view: &ClientRing<'_>,
    doorbell: &OwnedFd,
    counters: &mut ClientCounters,
    own: &mut Vec<u64>,
    hostility: &mut Hostility,
) -> bool {
    let count = 1 + rng.below(u64::from(view.entries())) as u32;
    let start = counters.sq_tail();
    for _ in 0..count {
        view.push(counters, &hostile_entry(rng, own));
    }
    let tail = counters.sq_tail();
    if rng.below(3) == 0 {
        // Noise in the data area too.
        let len = view.data_size() as usize;
        let noise = rng.bytes(len.min(4096));
        let off = rng.below((len - noise.len()) as u64 + 1) as u32;
        view.copy_to_data(off, &noise);
    }
    view.flush(counters);
    let _ = rustix::io::write(doorbell, &1u64.to_ne_bytes());
    hostility.entries += u64::from(count);
    let began = Instant::now();
    // Wait for the last completion's stamp, as a real client does (the CQ
    // tail word may be scribbled by this very session).
    while !completed(view, tail) {
        if began.elapsed() > Duration::from_millis(200) {
            return false;
        }
        std::thread::yield_now();
    }
    let mut at = ClientCounters::at(tail, start);
    for _ in 0..count {
        let Some(raw) = view.pop(&mut at) else {
            break;
        };
        let cqe = hreg_proto::entry::Cqe::decode(&raw);
        if cqe.status == Status::Ok as u32 {
            hostility.ok_completions += 1;
            if cqe.handle != 0 && own.len() < 256 {
                own.push(cqe.handle);
            }
        } else {
            hostility.error_completions += 1;
        }
    }
    *counters = ClientCounters::at(tail, tail);
    view.release(counters);
    true
}

/// A control packet a real client never sends: with `fatal`, anything
/// (most of it closes the session); without, only well-formed requests with
/// hostile arguments.
fn hostile_message(rng: &mut Rng, fatal: bool) -> Vec<u8> {
    let pick = if fatal {
        rng.below(8)
    } else {
        1 + rng.below(2) + 3 * rng.below(2)
    };
    match pick {
        0 => rng.bytes_upto(200),
        1 => ControlRequest::RingClose {
            index: rng.next() as u32,
        }
        .encode(),
        2 => ControlRequest::RingOpen.encode(),
        3 => {
            // A known kind with bytes after it.
            let mut bytes = ControlRequest::Stats.encode();
            bytes.extend(rng.bytes_upto(8));
            bytes
        }
        4 => ControlRequest::List {
            cursor: rng.next(),
            limit: rng.next() as u32,
            filter: hreg_proto::control::ListFilter {
                detached_only: rng.below(2) == 0,
                owner: None,
            },
        }
        .encode(),
        5 => ControlRequest::Sessions { cursor: rng.next() }.encode(),
        6 => ControlRequest::Hello {
            version: 1,
            name: "again".into(),
        }
        .encode(),
        _ => {
            let mut bytes = (rng.below(12) as u32).to_le_bytes().to_vec();
            bytes.extend(rng.bytes_upto(40));
            bytes
        }
    }
}

/// One hostile session, from attach until the daemon closes it (or a step
/// budget runs out).
fn hostile_session(socket: &std::path::Path, rng: &mut Rng, hostility: &mut Hostility) {
    let session = RawSession::attach(socket);
    hostility.sessions += 1;
    session.conn.set_recv_timeout(Duration::from_micros(200));
    let mut rings: Vec<(u32, ClientRing<'_>, OwnedFd, ClientCounters)> = Vec::new();
    let mut own = Vec::new();
    for _ in 0..1 + rng.below(3) {
        hostility.messages += 1;
        if let Some((index, view, doorbell)) = session.try_open_ring_at() {
            rings.push((index, view, doorbell, ClientCounters::default()));
        }
    }
    for _ in 0..200 {
        let action = rng.below(20);
        let closed = if rings.is_empty() || action < 4 {
            hostility.messages += 1;
            let fatal = rng.below(8) == 0;
            let message = hostile_message(rng, fatal);
            session.conn.try_send_with_fds(&message, &[]).is_err()
                || drain(&session.conn, hostility)
        } else {
            let which = rng.below(rings.len() as u64) as usize;
            let (index, view, doorbell, counters) = &mut rings[which];
            match action {
                4..=13 => {
                    if !hostile_batch(rng, view, doorbell, counters, &mut own, hostility) {
                        // No completions: find out whether we were closed.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    drain(&session.conn, hostility)
                }
                14 | 15 => {
                    // Scribble over the entries (random stamps among them)
                    // and data, then ring.
                    hostility.scribbles += 1;
                    let stride = session.welcome.ring_stride as usize;
                    let base = *index as usize * stride;
                    let sq = hreg_proto::ring::HEADER_SIZE;
                    session.scribble_range(rng.next(), base + sq, stride - sq);
                    hostility.entries += u64::from(view.entries());
                    let _ = rustix::io::write(&*doorbell, &1u64.to_ne_bytes());
                    std::thread::sleep(Duration::from_millis(1));
                    let cq_tail = session.cq_tail(*index);
                    *counters = ClientCounters::at(counters.sq_tail(), cq_tail);
                    view.release(counters);
                    drain(&session.conn, hostility)
                }
                16 => {
                    // Every byte of the session memory, counters included.
                    hostility.scribbles += 1;
                    session.scribble(rng.next());
                    for (_, _, doorbell, _) in &rings {
                        let _ = rustix::io::write(doorbell, &1u64.to_ne_bytes());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    drain(&session.conn, hostility)
                }
                17 => {
                    // A CQ head out of range.
                    view.release(&ClientCounters::at(0, rng.next() as u32));
                    let _ = rustix::io::write(&*doorbell, &1u64.to_ne_bytes());
                    std::thread::sleep(Duration::from_millis(2));
                    drain(&session.conn, hostility)
                }
                _ => {
                    // Doorbell noise.
                    let _ = rustix::io::write(&*doorbell, &rng.next().to_ne_bytes());
                    drain(&session.conn, hostility)
                }
            }
        };
        if closed {
            hostility.closed += 1;
            return;
        }
    }
}

/// Sessions that only send control garbage, one after another; returns
/// (messages, sessions closed).
fn garbage_sessions(socket: &std::path::Path, stop: &AtomicBool, seed: u64) -> (u64, u64, u64) {
    let mut rng = Rng(seed);
    let (mut messages, mut closed, mut sessions) = (0, 0, 0);
    let began = Instant::now();
    while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(15) {
        let session = RawSession::attach(socket);
        sessions += 1;
        session.conn.set_recv_timeout(Duration::from_micros(200));
        let mut ignored = Hostility::default();
        for _ in 0..100 {
            messages += 1;
            let fatal = rng.below(4) == 0;
            let message = hostile_message(&mut rng, fatal);
            if session.conn.try_send_with_fds(&message, &[]).is_err()
                || drain(&session.conn, &mut ignored)
            {
                closed += 1;
                break;
            }
        }
    }
    (messages, sessions, closed)
}

#[test]
fn chaos_from_one_session_costs_the_others_nothing() {
    let daemon = Daemon::start(&["--workers", "2"]);
    let mut goods: Vec<Helper> = (0..3)
        .map(|i| {
            Helper::spawn(
                &daemon.socket,
                &["mixed", "2", "30000", &(100 + i).to_string()],
            )
        })
        .collect();
    let stop = AtomicBool::new(false);
    let socket = daemon.socket.clone();
    let (hostility, reports) = std::thread::scope(|scope| {
        let hostile = scope.spawn(|| {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut hostility = Hostility::default();
            let began = Instant::now();
            while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(15) {
                hostile_session(&socket, &mut rng, &mut hostility);
            }
            hostility
        });
        let garbage = scope.spawn(|| garbage_sessions(&socket, &stop, 0x1234_5678_9abc_def1));
        let reports: Vec<String> = goods.iter_mut().map(Helper::line).collect();
        stop.store(true, Ordering::Relaxed);
        let mut hostility = hostile.join().expect("hostile thread");
        let (messages, sessions, closed) = garbage.join().expect("garbage thread");
        hostility.messages += messages;
        hostility.sessions += sessions;
        hostility.closed += closed;
        (hostility, reports)
    });
    for good in goods {
        good.finish();
    }
    println!("chaos: {hostility:?}");
    println!("chaos: well-behaved clients: {reports:?}");
    for report in &reports {
        assert!(report.starts_with("wrong=0 errors=0 "), "{report}");
    }
    assert!(hostility.entries > 1000, "{hostility:?}");
    assert!(hostility.messages > 100, "{hostility:?}");
    assert!(
        hostility.error_completions > 0 && hostility.closed > 0,
        "the hostile session must get errors and be closed: {hostility:?}"
    );
    let mut daemon = daemon;
    assert!(daemon.is_running(), "hregd died");
    still_serves(&daemon);
    wait_until("hostile sessions gone", || {
        daemon.client().stats().unwrap().sessions == 1
    });
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, b"do not touch").unwrap();
    let missing = dir.path().join("nothing-here");
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    for (i, pointee) in [&target, &missing, &subdir].into_iter().enumerate() {
        let link = dir.path().join(format!("hreg{i}.sock"));
        std::os::unix::fs::symlink(pointee, &link).unwrap();
        let before = std::fs::symlink_metadata(pointee)
            .ok()
            .map(|m| (m.ino(), m.mode(), m.mtime(), m.len()));
        let mut child = std::process::Command::new(hreg_tests::binary("hregd"))
            .arg("--socket")
            .arg(&link)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let began = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if began.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hregd served on a symlinked socket path ({})",
                    pointee.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success(), "hregd must refuse {}", link.display());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("not a socket"), "{stderr}");
        // The link and what it points to are as they were.
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_link(&link).unwrap(), *pointee);
        let after = std::fs::symlink_metadata(pointee)
            .ok()
            .map(|m| (m.ino(), m.mode(), m.mtime(), m.len()));
        assert_eq!(before, after, "{} changed", pointee.display());
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"do not touch");
    assert!(
        !missing.exists(),
        "no socket may appear at a symlink's target"
    );
    assert_eq!(std::fs::read_dir(&subdir).unwrap().count(), 0);
}
