"""One process per output directory: an exclusive lock on DIR/.lock, held until the process exits.

A training run directory (train_rlsr.py, train_sft.py, fresh or --resume) and eval.py's --out-dir are each written
by one process at a time. `lock_dir` takes fcntl.flock(LOCK_EX | LOCK_NB) on DIR/.lock and writes into it who holds
it (pid, host, command, start time); a second process is refused at once with that line. The kernel drops the lock
when the holder exits, however it exits (kill -9 included), so a stale lock file never blocks anyone: the file
stays, the lock does not. flock is advisory and, on some network file systems, local to one machine.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # directory -> descriptor holding its lock, for the life of the process


class LockedError(RuntimeError):
    """Another live process holds the directory."""


def lock_dir(path: str | Path) -> Path:
    """Lock the directory `path` (made if missing) for this process's life; LockedError names the holder. Taking a
    lock this process already holds does nothing."""
    path = Path(path).resolve()
    if path in _held:
        return path
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip()
        os.close(fd)
        raise LockedError(f"{path} is in use by another process ({describe(holder)}); wait for it to finish or "
                          "choose another directory") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _held[path] = fd
    return path


def describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def unlock_dir(path: str | Path):
    """Release a lock this process holds (tests; a process's locks are otherwise released when it exits)."""
    fd = _held.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)
