"""Run untrusted Python (generated code and its tests) in a throw-away sandbox, many at a time.

Mechanism (measured to work on this machine and in CI; no root needed): Linux namespaces through util-linux's
`unshare` — a user namespace (unprivileged), a mount namespace, a network namespace, a PID namespace and an
IPC namespace (no System V or POSIX message queue shared with another program) —
plus rlimits set before the program starts. Inside, a short shell prologue remounts every filesystem
read-only (and checks that the root is), mounts an empty read-only tmpfs over each `hidden` folder (the data
set whose tests decide the reward), mounts a tmpfs of its own over the temporary folder (`tempfile`'s: where
every program's files are written, so none sees another's) as the program's working directory and only
writable space (`Limits.work_mb`, 64 MB, and `work_inodes` files and folders), mounts a /proc of the new PID
namespace, drops every capability (`setpriv`, so the program cannot remount anything writable again) and
execs `python -I` with an empty environment. Run as root, the program runs as `nobody` (so it cannot read
root's private files either).

What it protects against (each case has a test in tests/test_sandbox.py): network access (the new network
namespace has no interface up); writing outside its directory (read-only mounts); reading the tests from
the data set or from another program's files (`hidden` folders, the tmpfs over the temporary folder; mounts
it has no capability to undo, locked for any namespace it creates); filling a disk (what it
writes lives in its tmpfs, bounded in bytes and inodes, and vanishes with its mount namespace when the program
ends: nothing of it is on the host to remove, whatever tree it built); reading the parent's secrets from the
environment (empty environment) or, when the trainer runs as root, from private files (it runs as `nobody`);
killing or even seeing the parent (own PID namespace, whose init is the prologue: when the program ends,
everything it started dies); fork bombs (RLIMIT_NPROC counted for an unprivileged uid: when run as root the
program runs as `nobody`); memory bombs (RLIMIT_AS); endless loops, also ones that ignore SIGTERM (RLIMIT_CPU,
then a wall-clock SIGKILL of the whole process group); floods of output (RLIMIT_FSIZE on its captured output
files); crashing its caller (`run_python` never raises: whatever fails, the program or the sandbox, is a
`RunResult`, "sandbox_error" when the sandbox itself failed).

What it does not protect against: reading files the user running it may read, but for the `hidden` folders
(a non-root trainer's own home directory included, and any copy of the tests not listed: run the trainer as
a dedicated user); kernel exploits (there is no seccomp filter; the
kernel's attack surface is the namespaces'); timing side channels; CPU and memory contention with the trainer
beyond the limits (use `workers` and the limits to size it; the tmpfs is memory: up to `workers` × `work_mb`).
Whether a program passes its tests is not decided here: `nextrl.env.verdict` keeps that out of its reach.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
PROLOGUE = r"""
HOST="$1"; TMP="$2"; SIZE="$3"; INODES="$4"; HIDE="$5"; shift 5
exec 3< "$HOST/main.py" || exit 97   # opened now: its folder is hidden below
for mp in $(awk '{print $2}' /proc/self/mounts | sort -u); do
  case "$mp" in /proc*) continue;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null
done
while [ "$HIDE" -gt 0 ]; do   # folders it must not read (the data set with the tests): an empty tmpfs over each
  if mount -t tmpfs -o ro,size=4k,nr_inodes=2,mode=0555 nextrl-hidden "$1"; then
    [ -z "$(ls -A "$1")" ] || exit 97
  else
    ( cd "$1" ) 2>/dev/null && exit 97   # fail closed, unless it cannot reach the folder anyway
  fi
  shift; HIDE=$((HIDE - 1))
done
# its only writable space: a tmpfs of its own, bounded in bytes and inodes, gone with its mount namespace,
# mounted over the temporary folder that holds every program's files (so no program sees another's)
mount -t tmpfs -o "size=$SIZE,nr_inodes=$INODES,mode=0700,nosuid,nodev" nextrl-work "$TMP" || exit 97
( : > /.nextrl-rw-probe ) 2>/dev/null && exit 97   # fail closed: the root must really be read-only now
cd "$TMP" && cat <&3 > main.py && exec 3<&- || exit 97
"$@"
exit $?
"""


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 5
    wall_seconds: float = 10.0
    memory_mb: int = 512
    processes: int = 32
    output_bytes: int = 1 << 20
    files: int = 64
    work_mb: int = 64  # its writable directory: a tmpfs of this size (RAM, not disk)
    work_inodes: int = 4096  # files and directories it may create there


@dataclass
class RunResult:
    # "ok", "error" (nonzero exit, e.g. a failed assert), "timeout", "memory", "output_limit", "sandbox_error"
    # (the sandbox itself failed: the program's fault or not, it gets no reward and the caller goes on)
    status: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@functools.cache
def unavailable() -> str | None:
    """Why the sandbox cannot run here, or None (a real run of a tiny program, once per process)."""
    if sys.platform != "linux":
        return "the sandbox needs Linux namespaces"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "the sandbox needs util-linux's `unshare` and `setpriv`"
    if interpreter() is None:
        return "no Python interpreter that the sandbox user may execute (install python3)"
    probe = run_python("open('probe', 'w').write('ok')\nprint(open('probe').read())")
    if probe.status != "ok" or probe.stdout != "ok\n":
        return (
            "unprivileged user namespaces with a tmpfs mount are not available "
            f"(a probe program ended {probe.status}, rc {probe.returncode}): {probe.stderr[-500:]}"
        )
    return None


def unhideable(path: str | Path) -> str | None:
    """Why the folder of `path` cannot be hidden from the programs (it holds what they need to run), or None."""
    folder = Path(path).resolve()
    folder = folder if folder.is_dir() else folder.parent
    python, tmp = Path(interpreter() or sys.executable).resolve(), Path(tempfile.gettempdir()).resolve()
    # (the temporary folder itself is hidden anyway, by the program's own tmpfs over it)
    for what, where in (("the sandbox's Python", python), ("the temporary folder", tmp.parent)):
        if where.is_relative_to(folder):
            return (
                f"{folder} holds {what} ({where}): the programs could not run with it hidden; move the file"
            )
    return None


def interpreter() -> str | None:
    """A Python the sandboxed program can execute: this one, unless it lives where `nobody` cannot reach (a
    root-owned pyenv under /root), then the system's python3. Only the standard library is needed."""
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in exe.parents):
        return str(exe)
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(cand).exists():
            return cand
    return None


def _as_nobody() -> dict:
    """Under root, run as `nobody`, so that RLIMIT_NPROC counts only the sandbox's processes."""
    if os.geteuid() != 0:
        return {}
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def _limit(limits: Limits, nproc: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.files, limits.files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(
    source: str, limits: Limits = Limits(), stdin: str = "", hidden: Sequence[str | Path] = ()
) -> RunResult:
    """Run `source` as a Python program in the sandbox and classify how it ended. `hidden` folders (a file
    hides its folder) look empty to it. Never raises (but for KeyboardInterrupt): whatever goes wrong, in the
    program or in the sandbox, is a `RunResult`."""
    t0 = time.time()
    host = None
    try:
        host = Path(tempfile.mkdtemp(prefix="nextrl-sbx-"))
        return _run(host, source, limits, stdin, hidden, t0)
    except Exception as e:  # one program must not stop the trainer's scoring
        return RunResult(
            "sandbox_error", -1, "", f"the sandbox failed: {type(e).__name__}: {e}", time.time() - t0
        )
    finally:
        if host is not None:
            _remove(host)


def _remove(host: Path) -> None:
    """Remove the run's host folder: only the files written here (the program's own lived in its tmpfs, gone
    with its mount namespace), so a flat folder; a failure to remove it is not the trainer's to raise."""
    with contextlib.suppress(Exception):
        shutil.rmtree(host, ignore_errors=True)


def _run(
    host: Path, source: str, limits: Limits, stdin: str, hidden: Sequence[str | Path], t0: float
) -> RunResult:
    (host / "main.py").write_text(source)
    folders = [(p if p.is_dir() else p.parent).resolve() for p in map(Path, hidden) if p.exists()]
    # those under the temporary folder are hidden with it, by the program's own tmpfs
    folders = [str(f) for f in folders if not f.is_relative_to(host.parent.resolve())]
    (host / "prologue.sh").write_text(PROLOGUE)
    if os.geteuid() == 0:
        os.chmod(host, 0o755)
    # processes of this uid that already exist count against RLIMIT_NPROC; as nobody there are ~none
    nproc = limits.processes + (0 if os.geteuid() == 0 else _processes_of_user())
    cmd = [
        "unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--fork", "--kill-child",
        "--mount-proc",  # its own /proc: the host's processes (and their environments) are not visible
        "sh", str(host / "prologue.sh"), str(host), str(host.parent), str(limits.work_mb << 20),
        str(limits.work_inodes), str(len(folders)), *folders,
        # the program keeps no capability in its namespace, so it cannot undo the read-only remounts
        "setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
        "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1",
        interpreter() or sys.executable, "-I", "-B", "main.py",
    ]  # fmt: skip
    with open(host / "out", "wb") as out, open(host / "err", "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            preexec_fn=_limit(limits, nproc),
            start_new_session=True,
            **_as_nobody(),
        )
        timed_out = False
        try:
            proc.communicate(stdin.encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.time() - t0
    stdout = (host / "out").read_bytes()[: limits.output_bytes].decode(errors="replace")
    stderr = (host / "err").read_bytes()[: limits.output_bytes].decode(errors="replace")
    rc = proc.returncode
    return RunResult(_status(rc, timed_out, stderr), rc, stdout, stderr, seconds)


def _status(rc: int, timed_out: bool, stderr: str) -> str:
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return "timeout"
    if rc in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in stderr:
        return "output_limit"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory"
    return "ok" if rc == 0 else "error"


def run_many(
    sources: list[str], limits: Limits = Limits(), workers: int = 4, hidden: Sequence[str | Path] = ()
) -> list[RunResult]:
    """Run programs concurrently (threads only wait on subprocesses, so the trainer is not blocked)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_python(s, limits, hidden=hidden), sources))


def _processes_of_user() -> int:
    uid = os.getuid()
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                n += p.stat().st_uid == uid
    return n
