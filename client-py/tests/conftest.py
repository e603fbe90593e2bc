"""Fixtures of the hreg Python tests: real hregd processes on private
sockets (from $HREG_BIN_DIR, else the repository's target/debug), and the C
toolchain for the tests that mix C and Python processes."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import hreg

REPO = Path(__file__).resolve().parents[2]
PATIENCE = 20.0  # seconds; only so that a broken build fails instead of hanging


def binary(name: str) -> Path:
    """A built binary of the workspace: $HREG_BIN_DIR/NAME, else target/debug/NAME."""
    directory = Path(os.environ.get("HREG_BIN_DIR", REPO / "target" / "debug"))
    path = directory / name
    if not path.exists():
        pytest.fail(f"{path} is not built; run `cargo build --workspace` (or set HREG_BIN_DIR)")
    return path


class Daemon:
    """A running hregd on a socket in its own directory (mode 0755, socket
    mode 666, so that another uid can attach too); stopped by stop()."""

    def __init__(self, *args: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="hreg-py-")
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "hreg.sock")
        self.process = subprocess.Popen(
            [str(binary("hregd")), "--socket", self.socket, "--socket-mode", "666", *args],
            env={**os.environ, "RUST_LOG": "error"},
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                hreg.connect(self.socket).close()
                return
            except hreg.ConnectError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"hregd {' '.join(args)} did not start")
                time.sleep(0.01)

    def client(self) -> hreg.Client:
        return hreg.connect(self.socket)

    def objects(self) -> int:
        with self.client() as c:
            return c.stats()["objects"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon():
    d = Daemon("--max-value-size", "65536")
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    with daemon.client() as c:
        yield c


def wait_until(what: str, done) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def c_programs(tmp_path_factory):
    """producer and consumer (client-c/examples) compiled against libhreg:
    the installed copy found through pkg-config when $PKG_CONFIG_PATH names
    one (./test installs it to a staging prefix), else the one cargo built
    in target/debug."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build the C programs with")
    out = tmp_path_factory.mktemp("c")
    examples = REPO / "client-c" / "examples"
    flags = None
    if shutil.which("pkg-config") and os.environ.get("PKG_CONFIG_PATH"):
        found = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "hreg"], capture_output=True, text=True
        )
        if found.returncode == 0:
            libdir = subprocess.run(
                ["pkg-config", "--variable=libdir", "hreg"], capture_output=True, text=True
            ).stdout.strip()
            flags = found.stdout.split() + [f"-Wl,-rpath,{libdir}"]
    if flags is None:
        built = REPO / "target" / "debug"
        if not (built / "libhreg_c.so").exists():
            pytest.fail("libhreg is neither installed (PKG_CONFIG_PATH) nor built in target/debug")
        lib = out / "lib"
        lib.mkdir()
        for name in ("libhreg.so", "libhreg.so.0"):
            (lib / name).symlink_to(built / "libhreg_c.so")
        flags = [f"-I{REPO / 'client-c' / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lhreg"]
    programs = {}
    for name in ("producer", "consumer"):
        exe = out / name
        subprocess.run([cc, str(examples / f"{name}.c"), *flags, "-o", str(exe)], check=True)
        programs[name] = exe
    return programs
