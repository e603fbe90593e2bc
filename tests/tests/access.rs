//! Per-user access across real uids: a forked child drops to uid/gid 65534
//! (nobody) before it connects, so `SO_PEERCRED` names another user. It
//! checks DENIED on another user's unshared object, read-only access to a
//! SHARED one, its own references and objects, the per-uid object cap, and
//! that listing another uid's objects is refused; root (the test process)
//! then does everything to the child's object.
//!
//! This file holds a single test on purpose: the child is forked from the
//! test process, and fewer threads around a fork means fewer surprises.

use hreg::{Client, Error, Handle, ListFilter, SHARED};
use hreg_tests::{wait_until, Daemon};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;

const NOBODY: u32 = 65534;
const UID_CAP: u64 = 8;

/// The name of an outcome, for a compact report from the child.
fn name<T>(result: &hreg::Result<T>) -> String {
    match result {
        Ok(_) => "OK".into(),
        Err(e) => format!("{:?}", e.status()),
    }
}

/// What the child checks, as `what=OUTCOME` lines; runs as uid 65534.
fn child_checks(socket: &std::path::Path, private: Handle, shared: Handle) -> String {
    let mut out = String::new();
    let mut note = |what: &str, outcome: String| {
        out.push_str(&format!("{what}={outcome}\n"));
    };
    let client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            note("connect", format!("{:?}", e.status()));
            return out;
        }
    };
    // Another user's unshared object: no access at all.
    note("private.get", name(&client.get(private)));
    note(
        "private.get_ref",
        match client.get_ref(private) {
            Ok(v) => format!("WRONG:{:?}", &*v),
            Err(e) => format!("{:?}", e.status()),
        },
    );
    note(
        "private.replace",
        name(&client.replace(private, b"mine now")),
    );
    note("private.remove", name(&client.remove(private)));
    note("private.retain", name(&client.retain(private)));
    note("private.release", name(&client.release(private)));
    // A SHARED object of another user: read and reference, never change.
    note(
        "shared.get",
        match client.get(shared) {
            Ok(v) if v == b"shared by root" => "OK".into(),
            Ok(v) => format!("WRONG:{v:?}"),
            Err(e) => format!("{:?}", e.status()),
        },
    );
    // Once the shared domain is mapped, too.
    note(
        "private.get_ref_later",
        match client.get_ref(private) {
            Ok(v) => format!("WRONG:{:?}", &*v),
            Err(e) => format!("{:?}", e.status()),
        },
    );
    note("private.get_later", name(&client.get(private)));
    note("shared.retain", name(&client.retain(shared)));
    note("shared.release", name(&client.release(shared)));
    note("shared.release_again", name(&client.release(shared)));
    note("shared.replace", name(&client.replace(shared, b"defaced")));
    note("shared.remove", name(&client.remove(shared)));
    // Its own objects: everything, up to its own uid's cap (root's usage
    // does not count against it).
    let own = client.insert(b"nobody's", 0);
    note("own.insert", name(&own));
    if let Ok(own) = own {
        note("own.replace", name(&client.replace(own, b"nobody's v2")));
        note("own.retain", name(&client.retain(own)));
        note("own.release", name(&client.release(own)));
        note("own.release_last", name(&client.release(own)));
    }
    let kept = client.insert(b"left for root", hreg::DETACHED);
    note("kept.insert", name(&kept));
    if let Ok(kept) = kept {
        note("kept.handle", kept.get().to_string());
    }
    // Fill up to the per-uid cap; the next insert is QUOTA.
    let mut filled = 1; // the DETACHED one
    while filled < UID_CAP {
        if client.insert(b"filler", 0).is_err() {
            break;
        }
        filled += 1;
    }
    note("fill.count", filled.to_string());
    note("fill.over", name(&client.insert(b"one too many", 0)));
    // Listing: its own uid's objects yes, root's no.
    let root_list = client.list(
        0,
        100,
        ListFilter {
            owner: Some(0),
            ..ListFilter::default()
        },
    );
    note("list.root", name(&root_list));
    let own_list = client.list(
        0,
        100,
        ListFilter {
            owner: Some(NOBODY),
            ..ListFilter::default()
        },
    );
    note("list.own", name(&own_list));
    if let Ok((objects, _)) = own_list {
        note(
            "list.own.all_mine",
            objects.iter().all(|o| o.owner == NOBODY).to_string(),
        );
    }
    out
}

#[test]
fn another_user_gets_exactly_the_access_the_design_gives() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("hreg.sock");
    let uid_cap = UID_CAP.to_string();
    let daemon = Daemon::start_at(
        dir,
        socket,
        &["--socket-mode", "666", "--uid-max-objects", &uid_cap],
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs as root (CI does)"
    );

    let root = daemon.client();
    let private = root.insert(b"root's secret", 0).unwrap();
    let shared = root.insert(b"shared by root", SHARED).unwrap();
    // Root fills its own per-uid cap: the child must still be able to insert.
    let mut root_objects = 2;
    while root.insert(b"root filler", 0).is_ok() {
        root_objects += 1;
    }
    assert_eq!(root_objects, UID_CAP, "root's own uid cap");

    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let socket = daemon.socket.clone();
    // SAFETY: the child drops privileges, connects, writes its report to the
    // pipe and calls _exit; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls in the child; the order matters
        // (groups and gid before uid, or we lose the right to change them).
        let dropped = unsafe {
            libc::close(fds[0]);
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0
                && libc::getuid() == NOBODY
                && libc::setuid(0) != 0
        };
        let report = if dropped {
            child_checks(&socket, private, shared)
        } else {
            "drop=FAILED\n".to_string()
        };
        // SAFETY: writing our own buffer to the pipe's write end, then
        // leaving without running the parent's destructors.
        unsafe {
            libc::write(fds[1], report.as_ptr().cast(), report.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end; the read end is ours alone.
    let mut reader = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut report = String::new();
    reader.read_to_string(&mut report).unwrap();
    let mut status = 0;
    // SAFETY: reaping the child we forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    println!("child report:\n{report}");
    let outcome = |what: &str| -> String {
        report
            .lines()
            .find_map(|l| l.strip_prefix(what)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {what} in child report:\n{report}"))
            .to_string()
    };
    for (what, expected) in [
        ("private.get", "Denied"),
        ("private.get_ref", "Denied"),
        ("private.get_ref_later", "Denied"),
        ("private.get_later", "Denied"),
        ("private.replace", "Denied"),
        ("private.remove", "Denied"),
        ("private.retain", "Denied"),
        ("private.release", "NotHeld"),
        ("shared.get", "OK"),
        ("shared.retain", "OK"),
        ("shared.release", "OK"),
        ("shared.release_again", "NotHeld"),
        ("shared.replace", "Denied"),
        ("shared.remove", "Denied"),
        ("own.insert", "OK"),
        ("own.replace", "OK"),
        ("own.retain", "OK"),
        ("own.release", "OK"),
        ("own.release_last", "OK"),
        ("kept.insert", "OK"),
        ("fill.count", &uid_cap),
        ("fill.over", "Quota"),
        ("list.root", "Denied"),
        ("list.own", "OK"),
        ("list.own.all_mine", "true"),
    ] {
        assert_eq!(outcome(what), expected, "{what}; full report:\n{report}");
    }

    // Root's objects came through untouched.
    assert_eq!(root.get(private).unwrap(), b"root's secret");
    assert_eq!(root.get(shared).unwrap(), b"shared by root");
    // Root can do everything to the child's DETACHED object.
    let kept = Handle::new(outcome("kept.handle").parse().unwrap()).unwrap();
    let nobodys = || {
        let filter = ListFilter {
            owner: Some(NOBODY),
            ..ListFilter::default()
        };
        root.list_all(filter).unwrap()
    };
    // The child's session ends a moment after the child does.
    wait_until("only the DETACHED object to outlive the child", || {
        nobodys().len() == 1
    });
    let listed = nobodys();
    assert_eq!(listed[0].handle, kept.get());
    assert_eq!(listed[0].owner, NOBODY);
    assert_eq!(root.get(kept).unwrap(), b"left for root");
    root.retain(kept).unwrap();
    root.release(kept).unwrap();
    root.replace(kept, b"root was here").unwrap();
    assert_eq!(root.get(kept).unwrap(), b"root was here");
    root.remove(kept).unwrap();
    assert!(matches!(root.get(kept), Err(Error::Stale)));
    // And to its own.
    root.replace(private, b"changed").unwrap();
    root.remove(shared).unwrap();
    assert!(matches!(root.get(shared), Err(Error::Stale)));
}
