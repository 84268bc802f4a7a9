"""The machine under test: description, measured matmul rate and copy bandwidth, timing, memory.

Every floor in the tables divides by rates measured here in the same run, so a busy or throttled
machine shows up as a lower rate rather than as a worse fraction of floor.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak (FLOP/s) of accelerators we may meet; MFU is also given against the measured rate.
NOMINAL_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "GH200": 989e12}


def describe() -> dict:
    """Backend, device kind and count, JAX version, host CPU count."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": dev.device_kind,
        "n_devices": jax.device_count(),
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "device_memory": device_memory_limit(),
    }


def nominal_peak(device_kind: str) -> float | None:
    for name, peak in NOMINAL_PEAK.items():
        if name in device_kind:
            return peak
    return None


def timeit(fn, *args, repeats: int = 3, min_time: float = 0.0, best: bool = False) -> float:
    """Median (or best) seconds of `fn(*args)` (output blocked on), after one warm call.

    Stops repeating once `min_time` seconds have been spent (long cases run once or twice).
    """
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < repeats:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if min_time and sum(times) >= min_time:
            break
    times.sort()
    return times[0] if best else times[len(times) // 2]


def matmul_rate(n: int, dtype) -> float:
    """Measured FLOP/s of one n x n x n matmul in `dtype` (float32 accumulation), best of 7: the
    rate this machine can reach (a loaded CPU gives a lower best, and every floor follows)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(dtype))
    return 2 * n**3 / timeit(f, a, a, repeats=7, best=True)


def bandwidths(n_bytes: int) -> dict:
    """Measured bytes/s over an array of `n_bytes`, best of 7: `copy` streams it through x + 1
    (read + write), `read` sums it (read only; XLA's CPU elementwise loops are slower than its
    reductions, on GPUs the two agree). Floors use the faster: the rate reads can reach."""
    x = jnp.zeros((n_bytes // 4,), jnp.float32)
    copy = 2 * x.nbytes / timeit(jax.jit(lambda y: y + 1), x, repeats=7, best=True)
    read = x.nbytes / timeit(jax.jit(jnp.sum), x, repeats=7, best=True)
    return {"copy": copy, "read": read, "floor": max(copy, read)}


def device_memory_limit() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("bytes_limit")


def planned_peak(compiled) -> int | None:
    """XLA's buffer plan of a compiled program: arguments + outputs - aliased + temporaries."""
    try:
        m = compiled.memory_analysis()
        return int(
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
    except Exception:  # some backends / versions do not report it
        return None


def temp_bytes(compiled) -> int | None:
    """Temporary (activation) bytes XLA plans for a compiled program."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:
        return None


def compiled_flops(compiled) -> float | None:
    """XLA's cost_analysis FLOP count of a compiled program, where the backend reports it."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float(cost["flops"])
    except Exception:
        return None


class PeakTracker:
    """Device peak memory of one case from `memory_stats()` (GPU/TPU; None on CPU).

    The backend's peak counter cannot be reset, so a case's peak is known exactly only when the
    case raises the process record: then peak = record - (bytes in use before) + `owned_before`
    (bytes live before the case that the case itself uses, such as its model's weights).
    Cases are therefore run in increasing order of expected memory.
    """

    def __init__(self, owned_before: int = 0):
        self.owned_before = owned_before
        self.before = _stats()

    def peak(self) -> int | None:
        after = _stats()
        if not self.before or not after:
            return None
        if after["peak_bytes_in_use"] <= self.before["peak_bytes_in_use"]:
            return None
        return after["peak_bytes_in_use"] - self.before["bytes_in_use"] + self.owned_before


def _stats() -> dict | None:
    try:
        return jax.devices()[0].memory_stats()
    except Exception:
        return None
