"""What every command shares: one-line warnings, and errors turned into a message and an exit code.

Exit codes: 2 for bad arguments, config or input (the message names the problem and the fix),
1 when the machine fails (out of memory, disk full, permissions, a non-finite loss).
`YOCO_TRACEBACK=1` lets the error propagate with its traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

USAGE = 2
FAILURE = 1

# ConfigError and CheckpointError are ValueErrors; ImportError: an optional extra is missing.
_BAD_INPUT = (
    ValueError,
    ImportError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
)
_FAILURES = (OSError, MemoryError, FloatingPointError)


def exit_code(error: BaseException) -> int | None:
    """2 for bad input, 1 for a failure of the machine, None for a bug (keep the traceback)."""
    if isinstance(error, _BAD_INPUT):
        return USAGE
    if isinstance(error, _FAILURES) or _out_of_memory(error):
        return FAILURE
    return None


def _out_of_memory(error: BaseException) -> bool:
    import jax

    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def message(error: BaseException, oom_hint: str = "") -> str:
    """The one line shown for `error`."""
    if _out_of_memory(error):
        first = str(error).strip().splitlines()[0][:200]
        return f"out of memory ({first})" + (f": {oom_hint}" if oom_hint else "")
    text = " ".join(str(error).split("\n")).strip()
    if exit_code(error) == FAILURE:  # what failed matters: PermissionError, MemoryError...
        return f"{type(error).__name__}: {text} (YOCO_TRACEBACK=1 shows the traceback)"
    return text


@contextlib.contextmanager
def reported(prog: str, oom_hint: str = ""):
    """Runs the block; a known error ends the program with `<prog>: error: <message>` and its
    exit code (`oom_hint`: what to lower when the device runs out of memory)."""
    try:
        yield
    except Exception as error:
        code = exit_code(error)
        if code is None or os.environ.get("YOCO_TRACEBACK") not in (None, "", "0"):
            raise
        sys.stderr.write(f"{prog}: error: {message(error, oom_hint)}\n")
        raise SystemExit(code) from None


def available_bytes() -> int:
    """Free memory of the device that runs the model (the host's for CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_output(flag: str, path, folder: bool = False) -> None:
    """Raises before any work when results cannot be written to `path` (a file, or with
    `folder` a folder, created later with its parents): the message names `flag`."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{flag} {path} is {kind}: give {'a folder' if folder else 'a file'} name")
    existing = path if path.exists() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    try:  # a real write: permissions alone miss read-only file systems (and root)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(
            f"{flag} {path}: cannot write in {existing} ({error.strerror}): give another path"
        ) from None


def integer(text: str) -> int:
    """An argparse type: an integer, or a usage error quoting the text."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def add_unverified_flag(parser) -> None:
    """--allow-unverified: load a checkpoint step that has no checksums (refused otherwise)."""
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="load a checkpoint step that has no checksums (unchecked, with a warning)",
    )


def one_line_warnings(prog: str) -> None:
    """Warnings (a damaged checkpoint step skipped, skipped data...) as `<prog>: warning: ...`."""
    warnings.formatwarning = lambda message, *_, **__: f"{prog}: warning: {message}\n"


def mesh_flag(items):
    """The mesh of `--mesh axis=size ...` (None without the flag): sizes as train.py's mesh.<axis>;
    without a -1, a mesh smaller than the machine takes the first devices."""
    if items is None:
        return None
    import jax  # here: a command's --help need not load jax

    from yoco_jax import sharding
    from yoco_jax.config_files import parse_overrides

    axes = parse_overrides(items)
    for axis, size in axes.items():
        if type(size) is not int:
            raise ValueError(f"--mesh {axis}={size!r}: the size must be an integer (-1 = the rest)")
    devices = jax.devices()
    if -1 not in axes.values():
        devices = devices[: max(1, math.prod(axes.values()))]
    return sharding.make_mesh(axes, devices)
