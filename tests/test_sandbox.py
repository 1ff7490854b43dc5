"""The code sandbox against hostile programs: each ends without reward (a non-"ok" status) and leaves the host
and this test process unharmed: no network, no write outside its own bounded tmpfs, nothing left on the host's
disk, no exception into the caller."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nextrl.env.sandbox import Limits, run_many, run_python, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
FAST = Limits(cpu_seconds=2, wall_seconds=4.0, memory_mb=256, processes=16, output_bytes=1 << 16)


def test_a_correct_program_passes_and_a_failing_one_does_not():
    assert run_python("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('ok')").stdout == "ok\n"
    r = run_python("assert 1 + 1 == 3")
    assert r.status == "error" and "AssertionError" in r.stderr


def test_fork_bomb_is_contained():
    t = time.time()
    r = run_python("import os\nwhile True:\n    os.fork()", FAST)
    assert not r.ok and time.time() - t < 10
    assert run_python("print('still works')").ok  # and the host can still start processes


def test_memory_bomb():
    r = run_python("x = bytearray(2 * 1024**3)\nprint(len(x))", FAST)
    assert r.status == "memory"


def test_infinite_loop_and_one_ignoring_sigterm():
    assert run_python("while True:\n    pass", FAST).status == "timeout"
    sleeper = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(1)"
    )
    t = time.time()
    r = run_python(sleeper, FAST)  # no CPU used: only the wall clock can end it
    assert r.status == "timeout" and time.time() - t < FAST.wall_seconds + 3


def test_no_network():
    code = "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=2)\nprint('connected')"
    r = run_python(code, FAST)
    assert not r.ok and "connected" not in r.stdout


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "pwned"
    os.chmod(tmp_path, 0o777)  # even a world-writable folder of the host stays read-only for it
    r = run_python(f"open({str(target)!r}, 'w').write('x')", FAST)
    assert not r.ok and not target.exists()
    assert run_python("open('inside.txt', 'w').write('x')\nprint(open('inside.txt').read())").stdout == "x\n"


def test_cannot_read_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEXTRL_TEST_SECRET", "hunter2")
    r = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ.get('NEXTRL_TEST_SECRET'))")
    assert "hunter2" not in r.stdout and "NEXTRL_TEST_SECRET" not in r.stdout


def test_cannot_kill_its_parent():
    code = "import os, signal\nprint(os.getpid(), os.getppid())\nos.kill(os.getppid(), signal.SIGKILL)"
    parent = os.getppid()
    r = run_python(code, FAST)
    assert r.stdout.split()[1] == "1"  # its parent is its namespace's init: the trainer is not even visible
    # this process (the trainer's stand-in) is alive, and so is its parent: had it died, we would have been
    # handed to another (a test run started in the background may have init as its parent from the start)
    assert os.getppid() == parent


def test_a_gigabyte_of_output_is_cut():
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", FAST)
    assert r.status in ("output_limit", "timeout") and len(r.stdout) <= FAST.output_bytes


def test_many_programs_run_in_parallel():
    t = time.time()
    results = run_many([f"import time\ntime.sleep(0.5)\nprint({i})" for i in range(8)], workers=8)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]
    assert time.time() - t < 8 * 0.5  # not one after the other


def test_cannot_make_the_filesystem_writable_again(tmp_path):
    """Root in its own user namespace, but without capabilities: remounting read-write is refused."""
    os.chmod(tmp_path, 0o777)
    target = tmp_path / "after"
    code = (
        "import subprocess\n"
        "print(subprocess.run(['mount', '-o', 'remount,bind,rw', '/'], capture_output=True).returncode)\n"
        f"open({str(target)!r}, 'w').write('x')\n"
    )
    r = run_python(code, FAST)
    assert not r.ok and not target.exists() and r.stdout.strip() != "0"


def test_cannot_see_host_processes_or_their_environment(monkeypatch):
    monkeypatch.setenv("NEXTRL_TEST_SECRET", "hunter2")
    code = (
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print(len(pids))\n"
        "for p in pids:\n"
        "    try:\n"
        "        print(open(f'/proc/{p}/environ', 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = run_python(code, FAST)
    assert r.ok and "hunter2" not in r.stdout and int(r.stdout.split()[0]) <= 4


# ---------------------------------------------------------------- the host's disk and the caller


@pytest.fixture
def host_tmp(monkeypatch):
    """A folder of its own for the sandbox's host folders (reachable by `nobody`): what a run puts on the
    host's disk is what appears under it."""
    folder = Path(tempfile.mkdtemp(prefix="nextrl-host-"))
    os.chmod(folder, 0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def host_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_watching(folder: Path, code: str, limits: Limits):
    """Run `code` while measuring, every 20 ms, the bytes under `folder`: the result and the most seen."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_python, code, limits)
        most = 0
        while not future.done():
            with contextlib.suppress(OSError):  # a file removed while walked
                most = max(most, host_bytes(folder))
            time.sleep(0.02)
        return future.result(), most


FILL = """
import os
made = 0
try:
    while True:
        with open(f"f{{made}}", "wb") as f:
            f.write(b"x" * {size})
        made += 1
except OSError:
    pass
print(sum(os.path.getsize(n) for n in os.listdir(".")), len(os.listdir(".")))
"""


@pytest.mark.parametrize(
    ("size", "work_mb", "inodes"),
    [((1 << 20) - 1, 16, 4096), (1 << 16, 8, 4096), (0, 8, 300)],  # the files; smaller; empty ones
)
def test_filling_the_disk_stops_at_its_bound_and_leaves_nothing(host_tmp, size, work_mb, inodes):
    """Files of 1 MB − 1 byte each pass RLIMIT_FSIZE; their sum is bounded by the tmpfs (and their number by
    its inodes), which is memory, not the host's disk, and is gone when the program ends."""
    limits = Limits(cpu_seconds=5, wall_seconds=10, work_mb=work_mb, work_inodes=inodes)
    r, most = run_watching(host_tmp, FILL.format(size=size), limits)
    written, files = map(int, r.stdout.split())
    assert r.ok and 0 < files <= inodes and written <= work_mb << 20
    if size:
        assert (
            written > (work_mb << 20) // 2
        )  # it did fill its space: the bound, not something else, stopped it
    assert most <= 2 * limits.output_bytes + (
        1 << 16
    )  # the host held only the program, its output, the prologue
    assert list(host_tmp.iterdir()) == []


def test_its_writable_space_is_a_tmpfs_of_the_configured_size():
    code = "import os\ns = os.statvfs('.')\nprint(s.f_blocks * s.f_frsize, s.f_files)"
    r = run_python(code, Limits(work_mb=5, work_inodes=123))
    assert r.ok and r.stdout.split() == [str(5 << 20), "123"]


@pytest.mark.parametrize("inodes", [40_000, 4096])  # deep enough for the 30,000 levels; stopped on the way
def test_a_30000_deep_tree_leaves_nothing_and_raises_nothing(host_tmp, inodes):
    code = "import os\nfor depth in range(1, 30_001):\n    os.mkdir('d')\n    os.chdir('d')\nprint(depth)"
    r = run_python(code, Limits(cpu_seconds=10, wall_seconds=20, work_inodes=inodes))
    assert (r.ok and r.stdout.strip() == "30000") if inodes > 30_000 else r.status == "error"
    assert list(host_tmp.iterdir()) == []


@pytest.mark.parametrize("where", ["mkdtemp", "Popen", "communicate", "read"])
def test_a_failing_sandbox_is_a_result_not_an_exception(monkeypatch, where):
    from nextrl.env import sandbox

    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded") if where == "read" else OSError(28, "full")

    target = {
        "mkdtemp": (sandbox.tempfile, "mkdtemp"),
        "Popen": (sandbox.subprocess, "Popen"),
        "communicate": (sandbox.subprocess.Popen, "communicate"),
        "read": (sandbox.Path, "read_bytes"),
    }[where]
    monkeypatch.setattr(*target, broken)
    r = run_python("print('hi')", FAST)
    assert r.status == "sandbox_error" and not r.ok and "the sandbox failed" in r.stderr


def test_hidden_folders_and_other_programs_files_are_out_of_its_sight(host_tmp):
    """The data set's folder (`hidden`) looks empty; the temporary folder, where every program's files are
    written, is its own tmpfs: a program running beside it is invisible."""
    data = Path(tempfile.mkdtemp(prefix="nextrl-data-", dir=host_tmp.parent))
    try:
        os.chmod(data, 0o755)
        (data / "tests.jsonl").write_text("secret")
        (data / "tests.jsonl").chmod(0o644)
        look = f"import os\nprint(sorted(os.listdir({str(data)!r})), sorted(os.listdir({str(host_tmp)!r})))"
        sleeper = "import time\ntime.sleep(1.5)"
        hidden, _ = run_many([look, sleeper], FAST, workers=2, hidden=[data / "tests.jsonl"])
        # its view of the data folder is empty; of the temporary folder, its own program only (no sleeper's)
        assert hidden.ok and hidden.stdout.split() == ["[]", "['main.py']"]
        shown = run_python(look, FAST)
        assert "tests.jsonl" in shown.stdout  # without `hidden`, it would have read them
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_a_folder_the_programs_need_cannot_be_hidden():
    from nextrl.env.sandbox import interpreter, unhideable

    assert "the sandbox's Python" in unhideable(Path(interpreter()).parent / "problems.jsonl")
    assert "could not run" in unhideable(Path(tempfile.gettempdir()).parent / "problems.jsonl")  # / for /tmp
    assert unhideable(Path(tempfile.gettempdir()) / "data" / "problems.jsonl") is None
