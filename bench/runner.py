"""What every section shares: the time budget, the measured machine rates, progress lines and
guarded cases (a failure or a skip becomes a row note, never a crash)."""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback

from bench.profiles import Profile


class Budget:
    """A global wall-clock budget cut into per-section shares; time a section leaves unused
    carries over to the next ones."""

    def __init__(self, total_s: float, shares: dict[str, float]):
        self.start = time.perf_counter()
        norm = sum(shares.values())
        acc, self.ends = 0.0, {}
        for name, share in shares.items():
            acc += share / norm
            self.ends[name] = acc * total_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, section: str) -> float:
        return self.ends[section] - self.elapsed()

    def allows(self, section: str, estimate_s: float = 0.0) -> bool:
        return self.left(section) > estimate_s


@dataclasses.dataclass
class Context:
    profile: Profile
    budget: Budget
    matmul_rate: float  # FLOP/s, measured in this run
    bandwidth: float  # bytes/s, measured in this run
    device_memory: int | None
    compile_s: float = 0.0  # the last measured compile time, the guess for the next one

    def log(self, message: str) -> None:
        print(f"[{self.budget.elapsed():6.1f}s] {message}", flush=True)


class Skip(Exception):
    """A case not run, with the reason written into its row."""


def guarded(ctx: Context, label: str, fn, *args, **kwargs) -> dict:
    """fn(*args) -> dict of results; on failure {'note': 'error: ...'} (and the traceback on
    stderr), on Skip {'note': reason}."""
    ctx.log(f"{label} ...")
    try:
        out = fn(*args, **kwargs)
        ctx.log(f"{label}: {out.get('summary', 'done')}")
        return out
    except Skip as e:
        ctx.log(f"{label}: skipped ({e})")
        return {"note": str(e)}
    except Exception as e:  # one failing case must not lose the rest of the run
        traceback.print_exc(file=sys.stderr)
        message = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        ctx.log(f"{label}: {message}")
        return {"note": message}
