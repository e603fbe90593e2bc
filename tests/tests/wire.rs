//! What the daemon does with bytes the real client never sends: handle 0,
//! unknown opcodes and flags, garbage and wrong versions in HELLO, corrupt
//! ring counters. Each gets its clear error and the daemon keeps serving
//! everyone else.

use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::entry::{sqe_flags, Sqe};
use hreg_proto::ring::ClientCounters;
use hreg_proto::{Opcode, Status};
use hreg_tests::raw::{completed, sqe, submit_raw, RawConn, RawSession};
use hreg_tests::{wait_until, Daemon};

fn still_serves(daemon: &Daemon) {
    let client = daemon.client();
    let h = client.insert(b"still here", 0).unwrap();
    assert_eq!(client.get(h).unwrap(), b"still here");
}

#[test]
fn handle_zero_and_bad_entries_are_invalid() {
    let daemon = Daemon::start(&[]);
    let session = RawSession::attach(&daemon.socket);
    let (view, doorbell) = session.open_ring();
    let mut counters = ClientCounters::default();
    let public = [
        Opcode::Get,
        Opcode::Replace,
        Opcode::Retain,
        Opcode::Release,
        Opcode::Remove,
    ];
    let entries: Vec<_> = public.iter().map(|&op| sqe(op as u8, 0)).collect();
    for cqe in submit_raw(&view, &doorbell, &mut counters, &entries) {
        assert_eq!(cqe.status, Status::Invalid as u32);
        assert_eq!(cqe.user_data, 99);
    }
    let mut unknown_flags = Sqe {
        opcode: Opcode::Insert as u8,
        obj_flags: 0x100,
        ..Sqe::default()
    };
    let mut bad = vec![sqe(0, 1), sqe(7, 1), sqe(255, 1), unknown_flags.encode()];
    unknown_flags.obj_flags = 0;
    unknown_flags.entry_flags = 0x80;
    bad.push(unknown_flags.encode());
    // Flags on anything but INSERT.
    bad.push(
        Sqe {
            opcode: Opcode::Get as u8,
            obj_flags: 1,
            handle: 5,
            ..Sqe::default()
        }
        .encode(),
    );
    // Data outside the data area.
    bad.push(
        Sqe {
            opcode: Opcode::Insert as u8,
            data_off: u32::MAX - 2,
            data_len: 16,
            ..Sqe::default()
        }
        .encode(),
    );
    // An inline value longer than the inline area.
    bad.push(
        Sqe {
            opcode: Opcode::Insert as u8,
            entry_flags: sqe_flags::INLINE,
            data_len: 33,
            ..Sqe::default()
        }
        .encode(),
    );
    for cqe in submit_raw(&view, &doorbell, &mut counters, &bad) {
        assert_eq!(cqe.status, Status::Invalid as u32);
    }
    // The ring still works.
    let mut insert = Sqe {
        opcode: Opcode::Insert as u8,
        entry_flags: sqe_flags::INLINE,
        data_len: 3,
        ..Sqe::default()
    };
    insert.inline[..3].copy_from_slice(b"abc");
    let done = submit_raw(&view, &doorbell, &mut counters, &[insert.encode()]);
    assert_eq!(done[0].status, Status::Ok as u32);
    assert_ne!(done[0].handle, 0);
    still_serves(&daemon);
}

#[test]
fn garbage_and_wrong_versions_in_hello_are_refused() {
    let daemon = Daemon::start(&[]);
    let wrong = RawConn::connect(&daemon.socket);
    wrong.send(&ControlRequest::Hello {
        version: 999,
        name: "future".into(),
    });
    match wrong.recv() {
        Some((Reply::Refused { status, message }, None)) => {
            assert_eq!(status, Status::Version as u32);
            assert!(message.contains("999"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        wrong.recv().is_none(),
        "connection should close after REFUSED"
    );

    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[1, 0, 0, 0, b'X', b'Y'],
        &[0xff; 100],
    ] {
        let conn = RawConn::connect(&daemon.socket);
        conn.send_bytes(garbage);
        match conn.recv() {
            Some((Reply::Refused { status, .. }, None)) => {
                assert_eq!(status, Status::Protocol as u32)
            }
            other => panic!("{other:?}"),
        }
    }
    // A request before HELLO.
    let early = RawConn::connect(&daemon.socket);
    early.send(&ControlRequest::Stats);
    assert!(matches!(early.recv(), Some((Reply::Refused { .. }, None))));
    still_serves(&daemon);
}

#[test]
fn corrupt_ring_counters_close_only_that_session() {
    let daemon = Daemon::start(&[]);
    let good = daemon.client();
    let kept = good.insert(b"kept", 0).unwrap();
    let session = RawSession::attach(&daemon.socket);
    let (view, doorbell) = session.open_ring();
    let entries = view.entries();
    // Fill the CQ and never read it, then claim a CQ head beyond the tail
    // and submit once more: the daemon, out of room, reads the head.
    let mut counters = ClientCounters::default();
    for _ in 0..entries {
        view.push(&mut counters, &sqe(Opcode::Retain as u8, 1));
    }
    let _ = rustix::io::write(&doorbell, &1u64.to_ne_bytes());
    wait_until("the CQ to fill", || completed(&view, entries));
    view.release(&ClientCounters::at(entries, entries * 3));
    view.push(&mut counters, &sqe(Opcode::Retain as u8, 1));
    let _ = rustix::io::write(&doorbell, &1u64.to_ne_bytes());
    wait_until("the hostile session to be closed", || {
        session.conn.recv().is_none()
    });
    assert_eq!(good.get(kept).unwrap(), b"kept");
    wait_until("one session left", || good.stats().unwrap().sessions == 1);
    still_serves(&daemon);
}

#[test]
fn scribbled_session_memory_harms_no_one_else() {
    let daemon = Daemon::start(&[]);
    let good = daemon.client();
    let kept = good.insert(b"kept", 0).unwrap();
    for seed in 1..20u64 {
        let session = RawSession::attach(&daemon.socket);
        let (_view, doorbell) = session.open_ring();
        session.scribble(seed);
        let _ = rustix::io::write(&doorbell, &1u64.to_ne_bytes());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(good.get(kept).unwrap(), b"kept");
    }
    still_serves(&daemon);
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not_stolen() {
    let first = Daemon::start(&[]);
    let second = std::process::Command::new(hreg_tests::binary("hregd"))
        .arg("--socket")
        .arg(&first.socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another hregd is serving"), "{stderr}");
    still_serves(&first);

    // A daemon killed with SIGKILL leaves its socket file behind.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hreg.sock");
    let mut dead = Daemon::start_at(tempfile::tempdir().unwrap(), socket.clone(), &[]);
    dead.signal(rustix::process::Signal::KILL);
    wait_until("the daemon to die", || !dead.is_running());
    assert!(socket.exists());
    let again = Daemon::start_at(dir, socket, &[]);
    still_serves(&again);
}
