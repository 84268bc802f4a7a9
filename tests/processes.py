"""Launching `train.py` in one or several local processes (CPU devices, gloo collectives), for
the tests that check a multi-process run against a one-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_train(args: list[str], processes: int, cache: Path, devices: int = 4):
    """Starts `train.py *args` in `processes` processes with `devices` CPU devices in all,
    sharing the persistent compilation cache `cache`; returns the Popen handles."""
    port = _free_port()
    per_process = devices // processes
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={per_process}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    distributed = lambda i: [
        f"--coordinator-address=localhost:{port}",
        f"--num-processes={processes}",
        f"--process-id={i}",
    ]
    command = [sys.executable, str(ROOT / "train.py"), *args]
    return [
        subprocess.Popen(
            command + (distributed(i) if processes > 1 else []),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]


def finish(runs, timeout: float = 400) -> str:
    """Waits for the processes of one run, asserts that each succeeded; process 0's output."""
    outputs = [run.communicate(timeout=timeout)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    return outputs[0]
