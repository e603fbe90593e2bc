//! Slow and stuck clients cannot stall service to others. With a single ring
//! worker (so any stall would show), these run at once: a raw session that
//! fills its SQ and never reads its completions (CQ full, more requests
//! waiting), one that publishes half a batch and never rings its doorbell,
//! one that never reads its control replies, and storm client processes
//! SIGSTOPped in the middle of their batches. Meanwhile a well-behaved client's
//! get latency stays bounded (a stall detector, not a benchmark).

use hreg_proto::control::ControlRequest;
use hreg_proto::entry::{sqe_flags, Sqe, ENTRY_SIZE};
use hreg_proto::ring::ClientCounters;
use hreg_proto::Opcode;
use hreg_tests::raw::{completed, RawSession};
use hreg_tests::{checked_value, wait_until, Daemon, Helper};
use rustix::process::{kill_process, Pid, Signal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn inline_insert(i: u32) -> [u8; ENTRY_SIZE] {
    let mut sqe = Sqe {
        user_data: u64::from(i),
        opcode: Opcode::Insert as u8,
        entry_flags: sqe_flags::INLINE,
        data_len: 4,
        ..Sqe::default()
    };
    sqe.inline[..4].copy_from_slice(&i.to_le_bytes());
    sqe.encode()
}

/// Latencies of `n` gets of a checksummed value, sorted.
fn get_latencies(client: &hreg::Client, n: usize) -> Vec<Duration> {
    let value = checked_value(42, 200);
    let h = client.insert(&value, 0).unwrap();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let began = Instant::now();
            let got = client.get(h).unwrap();
            let took = began.elapsed();
            assert_eq!(got, value);
            took
        })
        .collect();
    client.release(h).unwrap();
    times.sort();
    times
}

#[test]
fn stuck_clients_do_not_stall_the_others() {
    let daemon = Daemon::start(&["--workers", "1", "--ring-entries", "64"]);
    let good = daemon.client();
    let before = get_latencies(&good, 200);

    // 1. Never reads completions: a full SQ is served into the CQ, which
    //    then stays full; a second full SQ waits behind it forever.
    let deaf = RawSession::attach(&daemon.socket);
    let (view, doorbell) = deaf.open_ring();
    let entries = view.entries();
    let mut counters = ClientCounters::default();
    for _ in 0..entries {
        let entry = inline_insert(counters.sq_tail());
        view.push(&mut counters, &entry);
    }
    view.flush(&counters);
    rustix::io::write(&doorbell, &1u64.to_ne_bytes()).unwrap();
    wait_until("the deaf ring's CQ to fill", || completed(&view, entries));
    for _ in 0..entries {
        let entry = inline_insert(counters.sq_tail());
        view.push(&mut counters, &entry);
    }

    // 2. Half a batch published, doorbell never rung; the other half never
    //    written.
    let lazy = RawSession::attach(&daemon.socket);
    let (lazy_view, _lazy_bell) = lazy.open_ring();
    let mut lazy_counters = ClientCounters::default();
    for i in 0..lazy_view.entries() / 2 {
        lazy_view.push(&mut lazy_counters, &inline_insert(i));
    }

    // 3. Never reads its control replies: thousands of STATS requests
    //    pile up until its socket buffers are full.
    let mute = RawSession::attach(&daemon.socket);
    mute.conn.set_recv_timeout(Duration::from_millis(1));
    let stats = ControlRequest::Stats.encode();
    // Sending stops succeeding once the buffers are full (the send blocks:
    // SO_SNDTIMEO bounds it) or the daemon gives up on the session.
    rustix::net::sockopt::set_socket_timeout(
        &mute.conn.fd,
        rustix::net::sockopt::Timeout::Send,
        Some(Duration::from_millis(200)),
    )
    .unwrap();
    let mut unread = 0u32;
    while unread < 100_000 && mute.conn.try_send_with_fds(&stats, &[]).is_ok() {
        unread += 1;
    }

    // 4. Client processes stopped in the middle of their batches.
    let mut stopped: Vec<Helper> = (0..3)
        .map(|i| Helper::spawn(&daemon.socket, &["storm", "0", &(500 + i).to_string()]))
        .collect();
    for helper in &mut stopped {
        assert_eq!(helper.line(), "ready");
    }
    std::thread::sleep(Duration::from_millis(30));
    for helper in &stopped {
        let pid = Pid::from_raw(helper.child.id() as i32).unwrap();
        kill_process(pid, Signal::STOP).unwrap();
    }

    // The deaf ring gets its doorbell rung all along.
    let ringing = AtomicBool::new(true);
    let (during, control) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while ringing.load(Ordering::Relaxed) {
                let _ = rustix::io::write(&doorbell, &1u64.to_ne_bytes());
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let during = get_latencies(&good, 400);
        // The control thread still answers, and still lets sessions in.
        let began = Instant::now();
        let fresh = daemon.client();
        fresh.stats().unwrap();
        let h = fresh.insert(b"fresh", 0).unwrap();
        assert_eq!(good.get(h).unwrap(), b"fresh");
        let control = began.elapsed();
        ringing.store(false, Ordering::Relaxed);
        (during, control)
    });

    let median = |t: &[Duration]| t[t.len() / 2];
    let max = |t: &[Duration]| *t.last().unwrap();
    println!(
        "stuck clients: {unread} unread STATS requests queued; deaf ring full CQ: {}, SQ tail {}; \
         get latency before: median {:?} max {:?}; during: median {:?} p99 {:?} max {:?}; \
         connect+stats+insert+get during: {control:?}",
        completed(&view, entries),
        counters.sq_tail(),
        median(&before),
        max(&before),
        median(&during),
        during[during.len() * 99 / 100],
        max(&during)
    );
    assert!(median(&during) < Duration::from_millis(5), "{during:?}");
    assert!(max(&during) < Duration::from_secs(1), "{during:?}");
    assert!(control < Duration::from_secs(1));
    // The deaf ring was not served past its full CQ.
    assert!(completed(&view, entries) && !completed(&view, entries + 1));
    assert!(unread > 100, "the mute session should have queued requests");
    // The daemon does not buffer replies without end for a peer that does
    // not read: once the peer's socket is full, that session is closed.
    mute.conn.set_recv_timeout(Duration::from_secs(5));
    let mut replies = 0u32;
    while let Ok(Some(_)) = mute.conn.try_recv() {
        replies += 1;
    }
    println!("stuck clients: the mute session got {replies} replies, then EOF");
    assert!(replies < unread, "{replies} replies for {unread} requests");

    // Once the stuck ones go, their sessions end and their objects go too.
    for helper in &stopped {
        let pid = Pid::from_raw(helper.child.id() as i32).unwrap();
        kill_process(pid, Signal::CONT).unwrap();
    }
    for helper in stopped {
        helper.kill9();
    }
    drop((deaf, lazy, mute));
    wait_until("only the good sessions left", || {
        good.stats().unwrap().sessions == 1
    });
    // Only the storm clients' DETACHED objects outlive them.
    wait_until("the stuck sessions' objects gone", || {
        let objects = good.list_all(hreg::ListFilter::default()).unwrap();
        objects.iter().all(|o| o.flags & hreg::DETACHED != 0)
    });
}
