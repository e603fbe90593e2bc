//! The core object model end to end: real `hregd` processes, real client
//! processes, the real Rust client library.

use hreg::{Client, Completion, Error, Handle, Op, DETACHED, SHARED};
use hreg_tests::{wait_until, Daemon, Helper};
use rustix::process::Signal;
use std::time::{Duration, Instant};

fn handle(text: &str) -> Handle {
    text.parse()
        .unwrap_or_else(|_| panic!("not a handle: {text:?}"))
}

#[test]
fn an_object_lives_while_another_process_holds_it() {
    let daemon = Daemon::start(&[]);
    let baseline = daemon.objects();
    let mut producer = Helper::spawn(&daemon.socket, &["insert", "shared-bytes"]);
    let h = handle(&producer.line());

    let consumer = daemon.client();
    assert_eq!(consumer.get(h).unwrap(), b"shared-bytes");
    consumer.retain(h).unwrap();
    producer.finish();

    // The producer's reference is gone; ours keeps the object alive.
    wait_until("the producer's session to end", || {
        consumer.stats().unwrap().sessions == 1
    });
    assert_eq!(consumer.get(h).unwrap(), b"shared-bytes");
    assert_eq!(daemon.objects(), baseline + 1);

    consumer.release(h).unwrap();
    assert!(matches!(consumer.get(h), Err(Error::Stale)));
    assert_eq!(daemon.objects(), baseline);
}

#[test]
fn handles_go_stale_and_never_alias() {
    let daemon = Daemon::start(&["--shards", "1"]);
    let client = daemon.client();

    let removed = client.insert(b"removed", 0).unwrap();
    client.remove(removed).unwrap();
    for result in [
        client.get(removed).map(|_| ()),
        client.replace(removed, b"x"),
        client.retain(removed),
        client.release(removed),
        client.remove(removed),
    ] {
        assert!(matches!(result, Err(Error::Stale)), "{result:?}");
    }

    let released = client.insert(b"released", 0).unwrap();
    client.release(released).unwrap();
    assert!(matches!(client.get(released), Err(Error::Stale)));

    // With one shard the next insert reuses a freed slot: the old handles stay
    // stale, the new one works.
    let reused = client.insert(b"new", 0).unwrap();
    assert_ne!(reused, removed);
    assert_ne!(reused, released);
    assert!(matches!(client.get(removed), Err(Error::Stale)));
    assert!(matches!(client.get(released), Err(Error::Stale)));
    assert_eq!(client.get(reused).unwrap(), b"new");
}

#[test]
fn detached_objects_belong_to_the_registry() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let h = client.insert(b"detached", DETACHED).unwrap();
    assert!(matches!(client.release(h), Err(Error::NotHeld)));
    client.retain(h).unwrap();
    client.release(h).unwrap();
    assert_eq!(client.get(h).unwrap(), b"detached");
    drop(client);
    let other = daemon.client();
    assert_eq!(other.get(h).unwrap(), b"detached");
    other.remove(h).unwrap();
    assert!(matches!(other.get(h), Err(Error::Stale)));
}

#[test]
fn killing_a_client_drops_its_references() {
    let daemon = Daemon::start(&[]);
    let baseline = daemon.objects();
    let mut holder = Helper::spawn(&daemon.socket, &["hold", "10000", "7"]);
    assert_eq!(holder.line(), "ready");
    assert_eq!(daemon.objects(), baseline + 10_007);
    holder.kill9();
    wait_until("the killed client's references to drop", || {
        daemon.objects() == baseline + 7
    });
}

#[test]
fn a_waiting_client_sees_the_daemon_die() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let h = client.insert(b"v", 0).unwrap();
    client.flush().unwrap();
    // Stop the daemon so the next request waits, then kill it.
    daemon.signal(Signal::STOP);
    let waiter = std::thread::spawn(move || {
        // A replace always waits for the daemon's answer.
        let result = client.replace(h, b"w");
        (result, client)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "a stopped daemon is slow, not dead");
    let killed = Instant::now();
    daemon.signal(Signal::KILL);
    let (result, client) = waiter.join().unwrap();
    assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "took {:?}",
        killed.elapsed()
    );
    // Sticky.
    assert!(matches!(client.insert(b"x", 0), Err(Error::Disconnected)));
}

#[test]
fn two_processes_of_four_threads_lose_nothing() {
    let daemon = Daemon::start(&[]);
    let baseline = daemon.objects();
    let mut helpers: Vec<Helper> = (0..2)
        .map(|i| {
            Helper::spawn(
                &daemon.socket,
                &["mixed", "4", "3000", &(i + 1).to_string()],
            )
        })
        .collect();
    let mut live = 0;
    for helper in &mut helpers {
        let line = helper.line();
        let fields: Vec<u64> = line
            .split(' ')
            .map(|f| f.split('=').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(&fields[..2], &[0, 0], "wrong values or errors: {line}");
        live += fields[2];
    }
    assert_eq!(daemon.objects(), baseline + live);
    for helper in helpers {
        helper.finish();
    }
    wait_until("the helpers' objects to go", || {
        daemon.objects() == baseline
    });
}

#[test]
fn bad_arguments_get_clear_errors() {
    let daemon = Daemon::start(&["--max-objects", "50"]);
    let client = daemon.client();
    let made_up = Handle::new(0x0123_4567_89ab_cdef).unwrap();
    for result in [
        client.get(made_up).map(|_| ()),
        client.replace(made_up, b"x"),
        client.retain(made_up),
        client.release(made_up),
        client.remove(made_up),
    ] {
        assert!(matches!(result, Err(Error::Stale)), "{result:?}");
    }
    assert!(matches!(client.insert(b"x", 0x80), Err(Error::Invalid)));
    let max = client.max_value_size();
    assert!(matches!(
        client.insert(&vec![0; max + 1], 0),
        Err(Error::TooBig { .. })
    ));
    // Invalid beats TooBig.
    assert!(matches!(
        client.insert(&vec![0; max + 1], 0x80),
        Err(Error::Invalid)
    ));

    let kept: Vec<Handle> = (0..50)
        .map(|i| client.insert(&[i as u8], 0).unwrap())
        .collect();
    assert!(matches!(
        client.insert(b"one too many", 0),
        Err(Error::Quota { .. })
    ));
    client.release(kept[0]).unwrap();
    client.insert(b"fits again", 0).unwrap();
}

#[test]
fn values_of_exactly_the_maximum_work_alone_and_in_batches() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let max = client.max_value_size();
    assert_eq!(max, 1 << 20);
    let big = hreg_tests::checked_value(42, max);
    let h = client.insert(&big, 0).unwrap();
    assert_eq!(client.get(h).unwrap(), big);
    let mut buf = vec![0u8; max];
    assert_eq!(client.get_into(h, &mut buf).unwrap(), max);
    assert_eq!(buf, big);
    let mut small = [0u8; 10];
    assert!(
        matches!(client.get_into(h, &mut small), Err(Error::Buffer { needed }) if needed == max)
    );

    let other = hreg_tests::checked_value(7, max);
    let mut ops = vec![
        Op::Insert {
            value: &other,
            flags: 0,
        },
        Op::GetOwned { handle: h },
        Op::Replace {
            handle: h,
            value: &other,
        },
        Op::GetOwned { handle: h },
        Op::Insert {
            value: b"small",
            flags: 0,
        },
    ];
    let results = client.submit(&mut ops).unwrap();
    let inserted = match &results[0] {
        Ok(Completion::Inserted(h)) => *h,
        other => panic!("{other:?}"),
    };
    assert!(matches!(&results[1], Ok(Completion::Value(v)) if *v == big));
    assert!(matches!(&results[2], Ok(Completion::Done)));
    assert!(matches!(&results[3], Ok(Completion::Value(v)) if *v == other));
    assert!(matches!(&results[4], Ok(Completion::Inserted(_))));
    assert_eq!(client.get(inserted).unwrap(), other);

    let too_big = vec![1u8; max + 1];
    assert!(matches!(
        client.insert(&too_big, 0),
        Err(Error::TooBig { .. })
    ));
    let mut ops = vec![
        Op::Insert {
            value: &too_big,
            flags: 0,
        },
        Op::GetOwned { handle: h },
    ];
    let results = client.submit(&mut ops).unwrap();
    assert!(matches!(results[0], Err(Error::TooBig { .. })));
    assert!(matches!(&results[1], Ok(Completion::Value(v)) if *v == other));
}

#[test]
fn batches_run_in_order_and_report_each_op() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let stale = client.insert(b"gone", 0).unwrap();
    client.remove(stale).unwrap();
    let values: Vec<Vec<u8>> = (0..300)
        .map(|i| hreg_tests::checked_value(i, 8 + (i as usize * 37) % 6000))
        .collect();
    let mut ops: Vec<Op<'_>> = values
        .iter()
        .map(|value| Op::Insert { value, flags: 0 })
        .collect();
    ops.push(Op::Release(stale));
    let results = client.submit(&mut ops).unwrap();
    assert_eq!(results.len(), 301);
    assert!(matches!(results[300], Err(Error::Stale)));
    let handles: Vec<Handle> = results[..300]
        .iter()
        .map(|r| match r {
            Ok(Completion::Inserted(h)) => *h,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut gets: Vec<Op<'_>> = handles
        .iter()
        .map(|&handle| Op::GetOwned { handle })
        .collect();
    for (result, expected) in client.submit(&mut gets).unwrap().into_iter().zip(&values) {
        assert!(matches!(result, Ok(Completion::Value(ref v)) if v == expected));
    }
}

#[test]
fn many_threads_share_one_client() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    // More threads than the session's ring cap: the extra ones share a ring.
    std::thread::scope(|scope| {
        for t in 0..80u64 {
            let client = &client;
            scope.spawn(move || {
                for i in 0..50u64 {
                    let value = hreg_tests::checked_value(t * 1000 + i, 24);
                    let h = client.insert(&value, SHARED).unwrap();
                    assert_eq!(client.get(h).unwrap(), value);
                    client.release(h).unwrap();
                }
            });
        }
    });
    assert_eq!(daemon.objects(), 0);
}

#[test]
fn a_forked_child_connects_while_the_parent_keeps_working() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let h = client.insert(b"parent", 0).unwrap();
    // SAFETY: the child only connects, does requests and calls _exit; this
    // test's other threads are not touched by it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = (|| -> hreg::Result<bool> {
            let child = Client::connect(&daemon.socket)?;
            let mine = child.insert(b"child", 0)?;
            Ok(child.get(mine)? == b"child" && child.get(h)? == b"parent")
        })();
        // SAFETY: _exit never returns and runs no destructors of the parent's state.
        unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status}"
    );
    assert_eq!(client.get(h).unwrap(), b"parent");
    let h2 = client.insert(b"after", 0).unwrap();
    assert_eq!(client.get(h2).unwrap(), b"after");
    wait_until("the child's session to end", || {
        client.stats().unwrap().sessions == 1
    });
    assert_eq!(daemon.objects(), 2);
}

#[test]
fn stats_count_sessions_and_ops() {
    let daemon = Daemon::start(&[]);
    let a = daemon.client();
    let b = daemon.client();
    let h = a.insert(b"12345", 0).unwrap();
    // Resolved in b's process: not a request the daemon serves.
    assert_eq!(b.get(h).unwrap(), b"12345");
    b.retain(h).unwrap();
    let stats = a.stats().unwrap();
    assert_eq!(stats.sessions, 2);
    assert_eq!(stats.objects, 1);
    assert_eq!(stats.value_bytes, 5);
    assert!(stats.ops >= 2);
}

#[test]
fn every_size_works_whatever_the_data_area() {
    // A tiny ring: 2 entries and a 64-byte data area. Values travel inline,
    // through the data area, or in pieces; batches split into many rounds.
    let daemon = Daemon::start(&[
        "--ring-entries",
        "2",
        "--data-size",
        "64",
        "--max-value-size",
        "200000",
    ]);
    let client = daemon.client();
    let sizes = [0usize, 1, 32, 33, 64, 65, 1000, 199_999, 200_000];
    let values: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| hreg_tests::checked_value(n as u64 + 1, n))
        .collect();
    let mut ops: Vec<Op<'_>> = values
        .iter()
        .map(|value| Op::Insert { value, flags: 0 })
        .collect();
    let handles: Vec<Handle> = client
        .submit(&mut ops)
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Ok(Completion::Inserted(h)) => h,
            other => panic!("{other:?}"),
        })
        .collect();
    for (h, value) in handles.iter().zip(&values) {
        assert_eq!(&client.get(*h).unwrap(), value);
        let mut buf = vec![0u8; value.len()];
        assert_eq!(client.get_into(*h, &mut buf).unwrap(), value.len());
        assert_eq!(&buf, value);
    }
    let mut gets: Vec<Op<'_>> = handles
        .iter()
        .map(|&handle| Op::GetOwned { handle })
        .collect();
    for (result, value) in client.submit(&mut gets).unwrap().into_iter().zip(&values) {
        assert!(matches!(result, Ok(Completion::Value(ref v)) if v == value));
    }
    let too_big = vec![0u8; 200_001];
    assert!(matches!(
        client.insert(&too_big, 0),
        Err(Error::TooBig { .. })
    ));
}
