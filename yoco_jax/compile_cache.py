"""JAX's persistent compilation cache, on by default for the command-line tools.

A second `train.py` or `infer.py` run of the same model and shapes loads its executables from
disk instead of compiling them again (tens of seconds for a 3B model). The CLIs call `enable`;
library calls (and so the test suite) never turn it on. The folder is
`$XDG_CACHE_HOME/yoco-jax/jax-cache` (default `~/.cache/yoco-jax/jax-cache`).

    YOCO_COMPILE_CACHE=0            off (also --no-compile-cache)
    YOCO_COMPILE_CACHE=/some/dir    that folder instead
A folder already given to JAX itself (JAX_COMPILATION_CACHE_DIR) is kept; "off" means yoco-jax
does not add its default, JAX's own settings still apply. JAX stores only compilations that
took >= 1 s (`jax_persistent_cache_min_compile_time_secs`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

ENV = "YOCO_COMPILE_CACHE"
_OFF = ("0", "false", "no", "off")
_ON = ("", "1", "true", "yes", "on")


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "yoco-jax" / "jax-cache"


def add_flag(parser) -> None:
    """Adds `--no-compile-cache` to an argparse parser."""
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help=f"do not use the persistent compilation cache in {default_dir()} (or {ENV}=0)",
    )


def enable(off: bool = False) -> Path | None:
    """Turns the persistent compilation cache on (call before the first compilation) and
    returns its folder, or None when it is off (`off`, YOCO_COMPILE_CACHE=0, or the folder
    cannot be created: a warning, not an error, since the cache only saves time)."""
    setting = os.environ.get(ENV, "").strip()
    if off or setting.lower() in _OFF:
        return None
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    path = default_dir() if setting.lower() in _ON else Path(setting).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"warning: no compilation cache ({error}); set {ENV}=<dir> or 0", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
