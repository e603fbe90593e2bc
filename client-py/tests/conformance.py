"""The Python runner of the conformance suite: parses
tests/conformance/cases.txt (its format is described at the top of that
file) and runs a case with the hreg Python client. test_conformance.py makes
one pytest test of each case. Any line or op this runner does not know fails
the case: nothing is skipped silently.

Processes (``process P [nobody]``) are forked children that connect after the
fork (after dropping to uid 65534 for ``nobody``) and run one op per line
read from a pipe, answering ``STATUS NUMBER HEX`` per op.
"""

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import hreg

LANGUAGE = "python"
NOBODY = 65534
EVENTUALLY = 10.0  # seconds
CASES = Path(__file__).resolve().parents[2] / "tests" / "conformance" / "cases.txt"

STATUS_NAMES = {
    0: "OK",
    1: "INVALID",
    2: "STALE",
    3: "DENIED",
    4: "TOO_BIG",
    5: "BUFFER",
    6: "QUOTA",
    7: "NOT_HELD",
    8: "CONNECT",
    9: "DISCONNECTED",
    10: "VERSION",
    11: "PROTOCOL",
    12: "IO",
}

# The single ops and batch ops this runner can express.
OPS = {"insert", "get", "get_into", "replace", "retain", "release", "remove", "objects", "flush"}
BATCH_OPS = {"insert", "get", "replace", "retain", "release", "remove"}
FLAGS = {
    "none": {},
    "shared": {"shared": True},
    "detached": {"detached": True},
    "shared+detached": {"shared": True, "detached": True},
}


class CaseError(Exception):
    """A case did not behave as written, or cannot be run by this runner."""


@dataclass
class OpLine:
    line: int
    op: str
    args: List[str]
    expect: List[str]


@dataclass
class Step:
    kind: str  # session, process, op, batch, close, kill
    actor: str
    line: int = 0
    nobody: bool = False
    eventually: bool = False
    op: Optional[OpLine] = None
    ops: List[OpLine] = field(default_factory=list)
    result: str = "OK"


@dataclass
class Case:
    name: str
    line: int
    languages: Optional[List[str]] = None
    daemon: List[str] = field(default_factory=list)
    steps: List[Step] = field(default_factory=list)

    def runs_here(self) -> bool:
        return self.languages is None or LANGUAGE in self.languages

    def needs_root(self) -> bool:
        return any(s.kind == "process" and s.nobody for s in self.steps)


def _op_line(tokens: List[str], line: int) -> OpLine:
    if "->" not in tokens:
        raise CaseError(f"line {line}: no `->` in an op line")
    at = tokens.index("->")
    expect = tokens[at + 1 :]
    if not tokens[:at] or not 1 <= len(expect) <= 2:
        raise CaseError(f"line {line}: expected `OP ARG... -> STATUS [ARG]`")
    return OpLine(line, tokens[0], tokens[1:at], expect)


def parse(text: str) -> Tuple[List[str], List[Case]]:
    """The global daemon arguments and the cases; raises CaseError on any
    line it does not know."""
    global_args: List[str] = []
    cases: List[Case] = []
    case: Optional[Case] = None
    batch: Optional[Step] = None
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        first = tokens[0]
        if batch is not None:
            if first == "submit":
                batch.result = _op_line(["submit", *tokens[1:]], number).expect[0]
                case.steps.append(batch)
                batch = None
            else:
                batch.ops.append(_op_line(tokens, number))
            continue
        if case is None:
            if first == "daemon":
                global_args += tokens[1:]
            elif first == "case" and len(tokens) == 2:
                case = Case(tokens[1], number)
            else:
                raise CaseError(f"line {number}: unknown statement outside a case: {raw}")
            continue
        if first == "end" and len(tokens) == 1:
            cases.append(case)
            case = None
        elif first == "languages" and len(tokens) > 1:
            case.languages = tokens[1:]
        elif first == "daemon":
            case.daemon += tokens[1:]
        elif first == "session" and len(tokens) == 2:
            case.steps.append(Step("session", tokens[1], number))
        elif first == "process" and len(tokens) in (2, 3):
            if len(tokens) == 3 and tokens[2] != "nobody":
                raise CaseError(f"line {number}: unknown process kind {tokens[2]}")
            case.steps.append(Step("process", tokens[1], number, nobody=len(tokens) == 3))
        elif first in ("close", "kill") and len(tokens) == 2:
            case.steps.append(Step(first, tokens[1], number))
        elif first == "eventually" and len(tokens) >= 3:
            op = _op_line(tokens[2:], number)
            case.steps.append(Step("op", tokens[1], number, eventually=True, op=op))
        elif len(tokens) == 2 and tokens[1] == "batch":
            batch = Step("batch", first, number)
        elif len(tokens) >= 3:
            case.steps.append(Step("op", first, number, op=_op_line(tokens[1:], number)))
        else:
            raise CaseError(f"line {number}: unknown statement: {raw}")
    if case is not None or batch is not None:
        raise CaseError("the file ends inside a case or a batch")
    return global_args, cases


def load() -> Tuple[List[str], List[Case]]:
    return parse(CASES.read_text())


def validate(case: Case) -> None:
    """Fails on any op of the case that this runner cannot run."""
    for step in case.steps:
        if step.kind == "op":
            known, ops = OPS, [step.op]
        elif step.kind == "batch":
            known, ops = BATCH_OPS, step.ops
        else:
            continue
        for op in ops:
            flags_ok = op.op != "insert" or len(op.args) < 2 or op.args[1] in FLAGS
            if op.op not in known or not flags_ok:
                raise CaseError(
                    f"line {op.line}: the {LANGUAGE} runner cannot run `{' '.join([op.op, *op.args])}`"
                    f"{' in a batch' if step.kind == 'batch' else ''}; mark the case with"
                    f" `languages` if {LANGUAGE} cannot express it"
                )


def value(token: str) -> bytes:
    if token == "empty":
        return b""
    if token.startswith("v:"):
        return token[2:].encode()
    if token.startswith("fill:"):
        return bytes(ord("a") + i % 26 for i in range(int(token[5:])))
    raise CaseError(f"unknown value token {token}")


def flags(token: str) -> Dict[str, bool]:
    if token not in FLAGS:
        raise CaseError(f"the {LANGUAGE} runner cannot express the flags {token}")
    return FLAGS[token]


@dataclass
class Outcome:
    status: str
    number: int = 0
    data: Optional[bytes] = None

    @staticmethod
    def of_error(e: hreg.Error) -> "Outcome":
        return Outcome(STATUS_NAMES[e.status], getattr(e, "needed", 0))

    def to_line(self) -> str:
        data = "-" if self.data is None else "x" + self.data.hex()
        return f"{self.status} {self.number} {data}"

    @staticmethod
    def from_line(line: str) -> "Outcome":
        status, number, data = line.split()
        return Outcome(status, int(number), None if data == "-" else bytes.fromhex(data[1:]))


def execute(c: hreg.Client, op: str, args: List[str]) -> Outcome:
    """One single op; handles are numbers by now."""
    try:
        if op == "insert":
            return Outcome("OK", c.insert(value(args[0]), **flags(args[1])))
        if op == "get":
            data = c.get(int(args[0]))
            return Outcome("OK", len(data), data)
        if op == "get_into":
            buf = bytearray(int(args[1]))
            n = c.get_into(int(args[0]), buf)
            return Outcome("OK", n, bytes(buf[:n]))
        if op == "replace":
            c.replace(int(args[0]), value(args[1]))
        elif op in ("retain", "release", "remove"):
            getattr(c, op)(int(args[0]))
        elif op == "objects":
            return Outcome("OK", c.stats()["objects"])
        elif op == "flush":
            c.flush()
        else:
            raise CaseError(f"the {LANGUAGE} runner does not know the op `{op}`")
        return Outcome("OK")
    except hreg.Error as e:
        return Outcome.of_error(e)


def batch_op(op: str, args: List[str]):
    if op == "insert":
        return hreg.Insert(value(args[0]), **flags(args[1]))
    if op == "get":
        return hreg.Get(int(args[0]))
    if op == "replace":
        return hreg.Replace(int(args[0]), value(args[1]))
    kinds = {"retain": hreg.Retain, "release": hreg.Release, "remove": hreg.Remove}
    if op in kinds:
        return kinds[op](int(args[0]))
    raise CaseError(f"the {LANGUAGE} runner cannot express the batch op `{op}`")


def execute_batch(c: hreg.Client, ops: List[Tuple[str, List[str]]]) -> List[Outcome]:
    results = c.submit([batch_op(op, args) for op, args in ops])
    if len(results) != len(ops):
        raise CaseError(f"submit returned {len(results)} results for {len(ops)} ops")
    outcomes = []
    for result in results:
        if isinstance(result, hreg.Error):
            outcomes.append(Outcome.of_error(result))
        elif isinstance(result, bytes):
            outcomes.append(Outcome("OK", len(result), result))
        elif isinstance(result, int):
            outcomes.append(Outcome("OK", result))
        elif result is None:
            outcomes.append(Outcome("OK"))
        else:
            raise CaseError(f"submit returned {result!r}")
    return outcomes


def check(op: OpLine, got: Outcome, names: Dict[str, int]) -> None:
    want = op.expect[0]
    if want != got.status:
        raise CaseError(f"expected {' '.join(op.expect)}, got {got}")
    if len(op.expect) < 2:
        return
    extra = op.expect[1]
    if extra.startswith("$"):
        if op.op != "insert":
            raise CaseError(f"only an insert binds a handle, not {op.op}")
        names[extra[1:]] = got.number
    elif want == "BUFFER" or op.op == "objects":
        if int(extra) != got.number:
            raise CaseError(f"expected {want} {extra}, got {got.number}")
    elif got.data != value(extra):
        raise CaseError(f"expected the value {extra}, got {got.data!r}")


def resolve(args: List[str], names: Dict[str, int]) -> List[str]:
    out = []
    for a in args:
        if a.startswith("$"):
            if a[1:] not in names:
                raise CaseError(f"{a} is not bound")
            out.append(str(names[a[1:]]))
        else:
            out.append(a)
    return out


class Child:
    """A forked child process with its own client, driven through pipes."""

    def __init__(self, socket: str, nobody: bool) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(down_w)
            os.close(up_r)
            _child_main(socket, nobody, down_r, up_w)
        os.close(down_r)
        os.close(up_w)
        self.pid = pid
        self.to = os.fdopen(down_w, "w", buffering=1)
        self.frm = os.fdopen(up_r, "r")
        ready = self.frm.readline().strip()
        if ready != "ready":
            self.kill()
            raise CaseError(f"the child process did not start: {ready or 'it exited'}")

    def run(self, op: str, args: List[str]) -> Outcome:
        self.to.write(" ".join([op, *args]) + "\n")
        line = self.frm.readline().strip()
        if not line:
            raise CaseError("the child process exited")
        if line.startswith("ERROR "):
            raise CaseError(line[6:])
        return Outcome.from_line(line)

    def close(self) -> None:
        self.to.close()
        _, status = os.waitpid(self.pid, 0)
        self.frm.close()
        if status != 0:
            raise CaseError(f"the child process exited with status {status}")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.to.close()
        self.frm.close()


def _child_main(socket: str, nobody: bool, inp: int, out: int) -> None:
    """The child's whole life; never returns. Closes every inherited
    descriptor but its pipes (it must not keep the parent's sessions
    alive), drops to uid 65534 if asked, connects, then one op a line."""
    code = 1
    try:
        low, high = sorted((inp, out))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 65536)
        writer = os.fdopen(out, "w", buffering=1)
        try:
            if nobody:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            c = hreg.connect(socket)
        except (OSError, hreg.Error) as e:
            writer.write(f"{e}\n")
            os._exit(1)
        writer.write("ready\n")
        for line in os.fdopen(inp, "r"):
            op, *args = line.split()
            try:
                answer = execute(c, op, args).to_line()
            except (CaseError, IndexError, ValueError) as e:
                answer = f"ERROR {e}"
            writer.write(answer + "\n")
        c.close()
        code = 0
    finally:
        os._exit(code)


def run_case(case: Case, global_args: List[str], start_daemon) -> None:
    """Runs one case against a daemon from start_daemon(*args); raises
    CaseError when it does not behave as written."""
    validate(case)
    daemon = start_daemon(*global_args, *case.daemon)
    actors: Dict[str, object] = {}
    names: Dict[str, int] = {}
    try:
        for step in case.steps:
            if step.kind == "session":
                actors[step.actor] = hreg.connect(daemon.socket)
            elif step.kind == "process":
                actors[step.actor] = Child(daemon.socket, step.nobody)
            elif step.kind in ("close", "kill"):
                actor = actors.pop(step.actor, None)
                if actor is None or (step.kind == "kill" and not isinstance(actor, Child)):
                    raise CaseError(f"line {step.line}: cannot {step.kind} {step.actor}")
                getattr(actor, step.kind)()
            elif step.kind == "op":
                _run_op(step, actors, names)
            else:
                _run_batch(step, actors, names)
    finally:
        for actor in actors.values():
            if isinstance(actor, Child):
                actor.kill()
            else:
                actor.close()
        daemon.stop()


def _run_op(step: Step, actors: Dict[str, object], names: Dict[str, int]) -> None:
    op = step.op
    actor = actors.get(step.actor)
    if actor is None:
        raise CaseError(f"line {op.line}: no session or process {step.actor}")
    args = resolve(op.args, names)
    deadline = time.monotonic() + EVENTUALLY
    while True:
        if isinstance(actor, Child):
            got = actor.run(op.op, args)
        else:
            got = execute(actor, op.op, args)
        try:
            check(op, got, names)
            return
        except CaseError as e:
            if not step.eventually or time.monotonic() > deadline:
                raise CaseError(f"line {op.line}: {op.op} {' '.join(op.args)}: {e}") from None
            time.sleep(0.01)


def _run_batch(step: Step, actors: Dict[str, object], names: Dict[str, int]) -> None:
    c = actors.get(step.actor)
    if not isinstance(c, hreg.Client):
        raise CaseError(f"line {step.line}: a batch needs a session, not {step.actor}")
    outcomes = execute_batch(c, [(op.op, resolve(op.args, names)) for op in step.ops])
    for op, got in zip(step.ops, outcomes):
        try:
            check(op, got, names)
        except CaseError as e:
            raise CaseError(f"line {op.line} (in the batch): {op.op} {' '.join(op.args)}: {e}") from None
    first = next((o.status for o in outcomes if o.status != "OK"), "OK")
    if first != step.result:
        raise CaseError(f"line {step.line}: the batch's status is {first}, expected {step.result}")
