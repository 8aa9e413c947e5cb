"""One writer per run directory: an advisory lock held for the whole life of a run.

``fastvip run`` (process 0 under torchrun) takes ``RUN_DIR/.lock`` with ``flock`` before it
writes anything there, and holds it until it exits. A second ``run`` or ``--resume`` of the
directory fails at once with the holder's pid, host and start time, read from the lock file.

A lock cannot go stale: it belongs to the open file, not to the file's existence, so the
kernel drops it when its holder exits in any way (an exception, SIGKILL, the OOM killer).
On a shared file system (NFS v4, Lustre with ``-o flock``, GPFS) the lock lives on the
server: a node that crashes loses it when the server's lease for that client runs out
(NFS v4: about 90 s by default), after which another host may resume the run. The holder
text left in the file is only for the error message; a file without a live lock is
simply reused. ``predict``, ``export`` and ``plot`` only read a run directory, so they
never take the lock and work on a run in progress.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from fastvip.errors import FastvipError

LOCK_NAME = ".lock"


class RunLock:
    """The lock on ``run_dir``; :meth:`release` (or process exit) frees it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FastvipError(f"{self.path.parent} is in use by another run ({holder}); "
                                   "wait for it to end, or give this one another --out") from None
            raise FastvipError(f"cannot lock {self.path}: {e.strerror} (the file system does not "
                               "support flock; put the run directory on one that does)") from None
        # the lock is held: record who holds it, for the message a second run prints
        text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
