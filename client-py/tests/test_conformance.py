"""The conformance suite with the Python client: one test per case of
tests/conformance/cases.txt (see conformance.py). Cases for other languages
only are reported as skipped with the reason; cases that need root (a
process of uid 65534) say NOT RUN when not root. Any line or op this runner
does not know fails."""

import os

import pytest

import conformance
from conftest import Daemon

GLOBAL_ARGS, CASES = conformance.load()


def test_the_file_has_the_cases():
    assert len(CASES) >= 20
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names), "case names repeat"


def test_the_runner_refuses_what_it_does_not_know():
    for bad in [
        "case x\nsession a\na frobnicate 1 -> OK\nend\n",
        "case x\nsession a\na batch\nget_into 1 0 -> OK\nsubmit -> OK\nend\n",
        "case x\nsession a\na insert v:x unknown -> INVALID\nend\n",
        "case x\nwhatever\nend\n",
        "case x\nsession a\na get 1\nend\n",
        "bogus\n",
        "case x\nsession a\na batch\nget 1 -> OK\n",
    ]:
        with pytest.raises(conformance.CaseError):
            for case in conformance.parse(bad)[1]:
                conformance.validate(case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case):
    if not case.runs_here():
        pytest.skip(f"{case.name}: acknowledged, for {' '.join(case.languages)} only")
    if case.needs_root() and os.geteuid() != 0:
        pytest.skip(f"{case.name}: NOT RUN, needs root to run a process as uid 65534")
    conformance.run_case(case, GLOBAL_ARGS, Daemon)
