"""One training run per output folder: an exclusive lock on `<output_dir>/run.lock`.

The lock is `flock` on an open file, held for the whole run: the kernel drops it when the process
ends in any way (SIGKILL included), so a killed run never leaves the folder locked; the file
itself stays and only records who holds it (pid, host, start time) for the message a second run
prints. Multi-host runs lock on process 0 (the folder is shared); every process learns whether it
succeeded, so all of them stop together.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings

import jax

LOCK_FILE = "run.lock"


class RunInUseError(FileExistsError):
    """Another run holds the output folder; the message names its process and host."""


class RunLock:
    """Context manager: holds the lock of `output_dir` (created if needed) while in the block."""

    def __init__(self, output_dir: str):
        self.output_dir = os.path.abspath(output_dir)
        self.path = os.path.join(self.output_dir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        problem = self._acquire() if jax.process_index() == 0 else None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            held = multihost_utils.broadcast_one_to_all(problem is None)
            if not held and problem is None:
                problem = f"{self.output_dir} is in use (process 0 could not lock it)"
        if problem:
            raise RunInUseError(problem)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _acquire(self) -> str | None:
        """None once locked, else why not."""
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return (
                f"{self.output_dir} is in use by another training run ({_holder(self.path)}); "
                "wait for it to end or stop it, or choose another output_dir"
            )
        except OSError as error:  # a filesystem without locks: go on, unprotected
            warnings.warn(
                f"could not lock {self.path} ({error}): make sure no other run uses this folder",
                stacklevel=3,
            )
            return None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(owner) + "\n").encode())
        self._fd = fd
        return None


def _holder(path: str) -> str:
    """'pid 123 on host h, since 2024-...' from the lock file (written just after locking)."""
    try:
        with open(path) as f:
            owner = json.loads(f.read() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"]))
        return f"pid {owner['pid']} on host {owner['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has just started"
