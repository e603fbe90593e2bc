"""QUOTA names uid_max_references: a uid's sessions hold at most that many
reference-table entries together (an entry per session and object)."""

import pytest

import hreg
from conftest import Daemon


def test_references_past_the_uid_cap_are_quota_naming_it():
    d = Daemon("--uid-max-references", "3")
    try:
        with d.client() as c:
            handles = [c.insert(b"r", shared=True) for _ in range(3)]
            # A DETACHED object takes no reference; retaining it would.
            kept = c.insert(b"k", detached=True)
            with pytest.raises(hreg.QuotaExceeded) as refused:
                c.retain(kept)
            assert refused.value.limit == "uid_max_references"
            assert "uid_max_references" in str(refused.value)
            with pytest.raises(hreg.QuotaExceeded) as refused:
                c.insert(b"x")
            assert refused.value.limit == "uid_max_references"
            [failed] = c.submit([hreg.Retain(kept)])
            assert isinstance(failed, hreg.QuotaExceeded)
            assert failed.limit == "uid_max_references"
            # An entry given back makes room.
            c.release(handles[0])
            c.retain(kept)
            c.release(kept)
            c.remove(kept)
    finally:
        d.stop()
