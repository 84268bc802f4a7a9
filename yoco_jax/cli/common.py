"""What every command shares: one-line warnings, and errors turned into a message and an exit code.

Exit codes: 2 for bad arguments, config or input (the message names the problem and the fix),
1 when the machine fails (out of memory, disk full, permissions, a non-finite loss).
`YOCO_TRACEBACK=1` lets the error propagate with its traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

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


def one_line_warnings(prog: str) -> None:
    """Warnings (a damaged checkpoint step skipped, skipped data...) as `<prog>: warning: ...`."""
    warnings.formatwarning = lambda message, *_, **__: f"{prog}: warning: {message}\n"
