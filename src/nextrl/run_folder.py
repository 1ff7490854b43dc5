"""The run folder: one writer at a time, no leftovers from a killed write, and a clear word when a folder
cannot be used as asked.

- A lock (`.lock`, an advisory `flock` held for the whole run and released by the kernel when the process
  dies, even on `kill -9`) refuses a second writer, naming the PID of the first.
- Temporary files and folders that a killed atomic write left behind (hidden `.name.*` entries) are removed
  when a writer takes the folder.
- A folder that holds only the config of a run that failed before its first stage finished can be used again
  without `--resume`; a folder holding a run's outputs never is, and `--resume` with another config names the
  keys that differ.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from nextrl.config import RunConfig, dump_config
from nextrl.errors import RunFolderError
from nextrl.utils.io import atomic_write_text, restore_old

LOCK = ".lock"
# what a run writes once a stage has finished (or started writing checkpoints)
# a killed format warm-up leaves its checkpoints in warmup/ (deleted once the warmed model is cached)
STAGE_OUTPUTS = ("warmup", "index", "rl", "baseline", "models", "eval", "summary.json", "report.html")


class RunLock:
    """An exclusive lock on a run folder for the life of this object (use as a context manager)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"run folder {self.path.parent} is in use by another nextrl process (PID {holder}); wait for "
                "it to finish or stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_leftovers(folder: Path) -> list[Path]:
    """Clean up after killed atomic writes anywhere in the run folder: a `.X.old` whose `X` is missing (a kill
    between `atomic_dir`'s two renames) is put back; temporary entries (`.X.<random>` folders and files,
    `.X.tmp`, `.X.<random>.tmp`, a `.X.old` beside its `X`) are removed. Other hidden files are left alone.
    Returns what was removed."""
    removed = []
    for path in sorted(Path(folder).rglob(".*"), key=lambda p: -len(p.parts)):
        if path.name == LOCK or not path.exists():
            continue
        stem = _leftover_of(path)
        if stem is None:
            continue
        target = path.with_name(stem)
        if path.name.endswith(".old") and path.is_dir() and restore_old(target):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


_LEFTOVER = re.compile(r"^\.(?P<stem>.+?)\.(?:old|tmp|[A-Za-z0-9_]{8}(?:\.tmp)?)$")


def _leftover_of(path: Path) -> str | None:
    """The name `X` whose temporary entry `path` is (`.X.old`, `.X.tmp`, `.X.abc123_x`, `.X.abc123_x.tmp`)."""
    m = _LEFTOVER.match(path.name)
    if m is None or not (path.parent / m.group("stem")).parent.exists():
        return None
    return m.group("stem")


def has_outputs(folder: Path) -> bool:
    """True when a stage of a run has written its output into `folder`. Logs alone (a pretraining that was
    stopped: its model lives in the cache, its rows are logged again) do not count."""
    return any((folder / name).exists() for name in STAGE_OUTPUTS)


def config_diff(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as 'key: saved → now'."""
    out = []
    for key in list(saved) + [k for k in now if k not in saved]:
        name = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} → {b!r}")
    return out


def check_foreign(out: Path) -> None:
    """Refuse a non-empty folder that is not a run folder, before anything is written into it."""
    is_run = (out / "config.yaml").is_file() or (out / LOCK).is_file()
    if out.is_dir() and not is_run and any(out.iterdir()):
        raise RunFolderError(
            f"--out {out} is a folder that holds other files and no nextrl run; choose a new or empty folder"
        )


def prepare_run_folder(out: Path, cfg: RunConfig, resume: bool) -> None:
    """Check that `out` may be written as asked, remove what killed writes left, and save the config (the
    caller holds the folder's lock)."""
    text = dump_config(cfg)
    saved = out / "config.yaml"
    if has_outputs(out):
        if not resume:
            raise RunFolderError(
                f"run folder {out} already holds a run; pass --resume to continue it or choose "
                "another --out (nothing is overwritten)"
            )
        if saved.is_file() and saved.read_text() != text:
            diff = config_diff(yaml.safe_load(saved.read_text()) or {}, yaml.safe_load(text))
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise RunFolderError(
                f"--resume: the config differs from the one saved in {saved} ({shown}); resume with the "
                "same preset and --set values"
            )
    leftovers = remove_leftovers(out)
    if leftovers:
        print(
            f"removed {len(leftovers)} temporary file(s) left by an interrupted write in {out}",
            file=sys.stderr,
        )
    # nothing finished yet (a fresh folder, or a run that failed before its first stage): (re)start it
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, text)
