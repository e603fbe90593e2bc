"""Every client words a failure alike (README.md, "Errors"): the texts
asserted here are hreg_strerror's, with the details the client knows, and
the same words hregctl, Rust, C and Go print."""

import pytest

import hreg

from conftest import Daemon

STALE = "no such object (removed, or never issued by this daemon)"


def test_stale_and_too_big_say_what_happened():
    d = Daemon("--max-value-size", "100")
    try:
        with d.client() as c:
            with pytest.raises(hreg.StaleHandle) as stale:
                c.get(12345)
            assert str(stale.value) == f"get(12345): {STALE}"
            with pytest.raises(hreg.TooBig) as big:
                c.insert(bytes(101))
            assert str(big.value) == (
                "insert: value too big: 101 bytes, over the daemon's max_value_size of 100"
            )
    finally:
        d.stop()


def test_connect_names_the_path_once_and_why(tmp_path):
    path = tmp_path / "nothing.sock"
    with pytest.raises(hreg.ConnectError) as e:
        hreg.connect(path)
    assert str(e.value) == (
        f"connect: cannot connect to hregd at {path}: no socket there "
        "(is hregd running, and serving this path?)"
    )
    assert "os error" not in str(e.value)
