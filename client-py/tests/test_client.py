"""The hreg Python client against a real hregd: every call, its errors and
argument checks, batches, threads sharing a client, Python processes sharing
handles (multiprocessing), and handles passed between C and Python
processes."""

import array
import multiprocessing
import os
import signal
import subprocess
import threading
import time

import pytest

import hreg
from conftest import Daemon, wait_until


def test_every_call(client):
    h = client.insert(b"hello", shared=True)
    assert isinstance(h, int) and 0 < h < 2**64
    assert client.get(h) == b"hello"
    buf = bytearray(16)
    assert client.get_into(h, buf) == 5
    assert buf[:5] == b"hello"
    client.replace(h, b"replaced")
    assert client.get(h) == b"replaced"
    client.retain(h)
    client.release(h)
    assert client.get(h) == b"replaced"
    stats = client.stats()
    assert stats["objects"] == 1 and stats["value_bytes"] == 8 and stats["sessions"] >= 1
    assert stats["ops"] > 0
    client.release(h)
    with pytest.raises(hreg.StaleHandle) as e:
        client.get(h)
    assert e.value.status == 2 and str(h) in str(e.value)
    assert client.stats()["objects"] == 0


def test_bytes_like_values(client):
    for value, raw in [
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"xmvx")[1:3], b"mv"),
        (array.array("H", [1, 2]), array.array("H", [1, 2]).tobytes()),
        (b"", b""),
    ]:
        h = client.insert(value)
        assert client.get(h) == raw
        client.replace(h, value)
        assert client.get(h) == raw
        client.remove(h)


def test_get_into_any_writable_buffer(client):
    h = client.insert(b"12345678")
    target = array.array("d", [0.0])
    assert client.get_into(h, target) == 8 and target.tobytes() == b"12345678"
    backing = bytearray(12)
    assert client.get_into(h, memoryview(backing)[2:]) == 8
    assert backing == b"\0\x0012345678\0\0"
    with pytest.raises(hreg.BufferTooSmall) as e:
        client.get_into(h, bytearray(3))
    assert e.value.needed == 8 and e.value.status == 5
    with pytest.raises(hreg.BufferTooSmall) as e:
        client.get_into(h, bytearray())  # a size probe
    assert e.value.needed == 8
    empty = client.insert(b"")
    assert client.get_into(empty, bytearray()) == 0
    with pytest.raises(TypeError, match="read-only"):
        client.get_into(h, b"immutable bytes")
    with pytest.raises(TypeError, match="bytes-like"):
        client.get_into(h, "a str")
    with pytest.raises(TypeError, match="contiguous"):
        client.get_into(h, memoryview(bytearray(16))[::2])


def test_bad_arguments_raise_clear_errors(client):
    h = client.insert(b"x")
    for bad in ("text", 12, None, [1, 2], 1.5):
        with pytest.raises(TypeError, match="bytes-like"):
            client.insert(bad)
        with pytest.raises(TypeError, match="bytes-like"):
            client.replace(h, bad)
    for call in (client.get, client.retain, client.release, client.remove):
        for bad in (0, -1, -(2**70), 2**64):
            with pytest.raises(ValueError, match="positive integer") as e:
                call(bad)
            assert isinstance(e.value, hreg.InvalidArgument) and e.value.status == 1
        with pytest.raises(TypeError, match="an int"):
            call("12")
    with pytest.raises(ValueError):
        client.get_into(0, bytearray(4))
    with pytest.raises(ValueError):
        client.replace(-5, b"x")
    with pytest.raises(TypeError):
        client.insert(b"x", True)  # flags are keyword-only
    with pytest.raises(TypeError):
        client.submit(5)
    with pytest.raises(TypeError, match="not an hreg op"):
        client.submit([hreg.Get(h), "get"])
    with pytest.raises(TypeError):
        hreg.Get("1")
    assert client.get(h) == b"x"


def test_errors_are_one_class_per_status():
    classes = [
        hreg.InvalidArgument, hreg.StaleHandle, hreg.Denied, hreg.TooBig,
        hreg.BufferTooSmall, hreg.QuotaExceeded, hreg.NotHeld, hreg.ConnectError,
        hreg.Disconnected, hreg.VersionMismatch, hreg.ProtocolError, hreg.IoError,
    ]
    for status, cls in enumerate(classes, start=1):
        assert cls.status == status and issubclass(cls, hreg.Error)
    assert issubclass(hreg.InvalidArgument, ValueError)


def test_submit_results_in_order(client):
    h = client.insert(b"one")
    gone = client.insert(b"gone")
    client.release(gone)
    results = client.submit([
        hreg.Insert(b"x", shared=True),
        hreg.Get(h),
        hreg.Replace(h, b"two"),
        hreg.Get(h),
        hreg.Get(gone),
        hreg.Get(0),
        hreg.Retain(h),
        hreg.Release(h),
        hreg.Insert(b"d", detached=True),
        hreg.Release(gone),
        hreg.Remove(h),
    ])
    assert isinstance(results[0], int) and client.get(results[0]) == b"x"
    assert results[1] == b"one" and results[2] is None and results[3] == b"two"
    assert isinstance(results[4], hreg.StaleHandle) and "op 4" in str(results[4])
    assert isinstance(results[5], hreg.InvalidArgument)
    assert results[6] is None and results[7] is None
    assert isinstance(results[8], int)
    assert isinstance(results[9], hreg.StaleHandle)
    assert results[10] is None
    assert client.submit([]) == []
    assert client.submit(op for op in [hreg.Get(results[8])]) == [b"d"]
    assert repr(hreg.Insert(b"ab", detached=True)) == "hreg.Insert(<2 bytes>, shared=False, detached=True)"
    assert hreg.Replace(7, b"v").handle == 7 and hreg.Replace(7, b"v").value == b"v"


def test_close_and_context_manager(daemon):
    c = daemon.client()
    h = c.insert(b"held by c")
    assert not c.closed
    c.close()
    assert c.closed
    for call in (lambda: c.get(h), lambda: c.insert(b"x"), c.stats, c.flush,
                 lambda: c.submit([]), lambda: c.get_into(h, bytearray(9))):
        with pytest.raises(hreg.Disconnected, match="closed"):
            call()
    c.close()  # again: nothing happens
    with daemon.client() as d:
        wait_until("the closed session's object to go", lambda: d.stats()["objects"] == 0)
        kept = d.insert(b"kept", detached=True)
    assert d.closed
    with daemon.client() as e:
        assert e.get(kept) == b"kept"
        e.remove(kept)


def test_connect_errors_and_default_socket(daemon, monkeypatch, tmp_path):
    with pytest.raises(hreg.ConnectError) as e:
        hreg.connect(tmp_path / "nothing.sock")
    assert "nothing.sock" in str(e.value) and e.value.status == 8
    monkeypatch.setenv("HREG_SOCKET", daemon.socket)
    assert hreg.default_socket_paths() == [daemon.socket]
    with hreg.connect(name="pytest") as c:
        assert c.stats()["sessions"] >= 1
    monkeypatch.delenv("HREG_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert hreg.default_socket_paths() == [str(tmp_path / "hreg.sock"), "/run/hreg/hreg.sock"]


def test_too_big_and_quota():
    d = Daemon("--max-value-size", "100", "--max-objects", "2")
    try:
        with d.client() as c:
            assert c.max_value_size == 100
            with pytest.raises(hreg.TooBig):
                c.insert(bytes(101))
            c.insert(bytes(100))
            c.insert(b"")
            with pytest.raises(hreg.QuotaExceeded) as refused:
                c.insert(b"third")
            assert refused.value.status == 6
            assert refused.value.limit == "max_objects"
            assert "max_objects" in str(refused.value)
            [failed] = c.submit([hreg.Insert(b"in a batch")])
            assert isinstance(failed, hreg.QuotaExceeded) and failed.limit == "max_objects"
    finally:
        d.stop()


def test_quota_names_the_limit():
    d = Daemon("--uid-max-bytes", "1000", "--max-sessions", "1")
    try:
        # The readiness probe's session may still be closing: retry a little.
        first = None

        def attached():
            nonlocal first
            try:
                first = d.client()
                return True
            except hreg.QuotaExceeded:
                return False

        wait_until("the one session to attach", attached)
        with first:
            with pytest.raises(hreg.QuotaExceeded) as refused:
                first.insert(bytes(1001))
            assert refused.value.limit == "uid_max_bytes"
            assert "uid_max_bytes" in str(refused.value)
            with pytest.raises(hreg.QuotaExceeded) as refused:
                d.client()
            assert refused.value.limit == "max_sessions"
            assert "max_sessions" in str(refused.value)
    finally:
        d.stop()


def test_disconnected_when_the_daemon_dies():
    d = Daemon()
    c = d.client()
    h = c.insert(b"x")
    c.flush()
    d.process.kill()
    d.process.wait()
    wait_until("DISCONNECTED", lambda: _fails_with(lambda: c.get(h), hreg.Disconnected))
    with pytest.raises(hreg.Disconnected):
        c.insert(b"y")
    with pytest.raises(hreg.Disconnected):
        c.flush()
    c.close()
    d.stop()


def test_flush_makes_a_release_visible(daemon):
    c = daemon.client()
    other = daemon.client()
    h = c.insert(b"short-lived", shared=True)
    assert c.flush() is None
    assert other.get(h) == b"short-lived"
    c.release(h)
    c.flush()
    with pytest.raises(hreg.StaleHandle):
        other.get(h)


def _fails_with(call, cls):
    try:
        call()
    except cls:
        return True
    except hreg.Error:
        return False
    return False


def test_threads_share_one_client(client):
    errors = []
    per_thread = 300

    def work(seed):
        try:
            for i in range(per_thread):
                value = f"{seed}:{i}".encode()
                h = client.insert(value)
                assert client.get(h) == value
                client.replace(h, value + b"!")
                assert client.submit([hreg.Get(h), hreg.Release(h)]) == [value + b"!", None]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert client.stats()["objects"] == 0


def test_waiting_releases_the_gil(daemon, client):
    # A call that waits for a stopped daemon must leave the GIL to other
    # threads (a replace: a get of a readable object no longer waits for the
    # daemon at all). A helper process resumes the daemon after 3 s whatever
    # happens, so a held GIL shows as a slow main thread, not a hang.
    h = client.insert(b"x")
    client.get(h)
    done = []
    os.kill(daemon.process.pid, signal.SIGSTOP)
    resume = subprocess.Popen(["sh", "-c", f"sleep 3; kill -CONT {daemon.process.pid}"])
    try:
        def wait_for_daemon():
            client.replace(h, b"y")
            done.append(client.get(h))

        waiter = threading.Thread(target=wait_for_daemon)
        start = time.monotonic()
        waiter.start()
        time.sleep(0.2)  # the waiter is now blocked in replace
        assert not done, "replace returned while the daemon was stopped"
        spins = sum(1 for _ in range(100_000))
        assert time.monotonic() - start < 2.0, "the main thread was starved: GIL held"
        assert spins == 100_000
    finally:
        resume.kill()
        resume.wait()
        os.kill(daemon.process.pid, signal.SIGCONT)
    waiter.join(20)
    assert done == [b"y"]


def _child_insert(socket, queue):
    with hreg.connect(socket) as c:
        queue.put(c.insert(b"from another Python process", shared=True, detached=True))


def _child_read(socket, handle, queue):
    with hreg.connect(socket) as c:
        queue.put(c.get(handle))
        c.replace(handle, b"the child was here")


def test_two_python_processes_share_a_handle(daemon, client):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child_insert, args=(daemon.socket, queue))
    p.start()
    h = queue.get(timeout=20)
    p.join(20)
    assert p.exitcode == 0
    assert client.get(h) == b"from another Python process"
    client.remove(h)

    mine = client.insert(b"from the parent")
    p = ctx.Process(target=_child_read, args=(daemon.socket, mine, queue))
    p.start()
    assert queue.get(timeout=20) == b"from the parent"
    p.join(20)
    assert p.exitcode == 0
    assert client.get(mine) == b"the child was here"


def test_c_and_python_processes_share_handles(daemon, client, c_programs):
    env = {**os.environ, "HREG_SOCKET": daemon.socket}
    # C inserts (DETACHED), Python resolves.
    out = subprocess.run([c_programs["producer"], "made in C"], env=env,
                         capture_output=True, text=True, timeout=20, check=True)
    h = int(out.stdout)
    assert client.get(h) == b"made in C"
    client.remove(h)
    # Python inserts, C resolves (and removes it).
    h = client.insert("made in Python \u00e9".encode(), detached=True)
    out = subprocess.run([c_programs["consumer"], str(h)], env=env,
                         capture_output=True, timeout=20, check=True)
    assert out.stdout.rstrip(b"\n") == "made in Python \u00e9".encode()
    with pytest.raises(hreg.StaleHandle):
        client.get(h)
