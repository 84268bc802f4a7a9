"""GPU check of the flash kernels with a traced query offset (the per-device attention of the
context-parallel ops, yoco_jax/ops/context_kernels.py) on the real device, not interpret mode:
a half slice of queries at a global offset against the gathered K/V (and a windowed slice with
a halo whose first keys do not exist), against the blocked XLA path it replaces
(yoco_jax/ops/blocked_attention.py). Prints the max relative error of out/dq/dk/dv and the time
of a jitted forward+backward of each; exits 1 if an error is over its tolerance. GPU only: exits
2 without one (CPU interpret mode is tested by tests/ops/test_context_pallas.py).

    PYTHONPATH=. python bench/context_kernels_check.py
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# (name, Tq, Tk, q_offset, kv_start, window): B 1, 16 query heads over 4 kv heads, head dim 128.
CASES = [
    ("cross half slice", 2048, 16384, 9000, 0, None),
    ("window slice + halo", 2048, 3071, 1023, 300, 1024),
]
TOLERANCE = {"float32": 2e-3, "bfloat16": 3e-2}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _time(fn, *args, repeats=5) -> float:
    """Median milliseconds of a jitted call (after one warm-up)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def check(dtype, tq, tk, q_offset, kv_start, window):
    """(max relative errors out/dq/dk/dv, kernel ms, XLA ms) of one case."""
    from yoco_jax.kernels import flash_attention
    from yoco_jax.ops.blocked_attention import blocked_attention

    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (1, tq, 16, 128), dtype)
    k = jax.random.normal(keys[1], (1, tk, 4, 128), dtype)
    v = jax.random.normal(keys[2], (1, tk, 4, 128), dtype)
    q_pos = (q_offset + jnp.arange(tq))[None]
    kv_pos = jnp.where(jnp.arange(tk) >= kv_start, jnp.arange(tk), -1)[None]
    offset, start = jnp.int32(q_offset), jnp.int32(kv_start)
    kernel = lambda q, k, v: flash_attention(
        q, k, v, window=window, q_offset=offset, kv_start=start
    )
    xla = lambda q, k, v: blocked_attention(q, k, v, q_pos, kv_pos, window=window)

    def value_and_grads(fn):
        loss = lambda q, k, v: (fn(q, k, v).astype(jnp.float32) ** 2).sum()
        return jax.jit(lambda q, k, v: (fn(q, k, v), *jax.grad(loss, (0, 1, 2))(q, k, v)))

    got, want = value_and_grads(kernel)(q, k, v), value_and_grads(xla)(q, k, v)
    errors = [_rel(a, b) for a, b in zip(got, want)]
    return errors, _time(value_and_grads(kernel), q, k, v), _time(value_and_grads(xla), q, k, v)


def main() -> int:
    if jax.default_backend() != "gpu":
        print(
            f"context_kernels_check.py: no GPU found (JAX backend {jax.default_backend()!r}), "
            "nothing checked: run it on a GPU machine",
            file=sys.stderr,
        )
        return 2
    print("jax", jax.__version__, jax.devices()[0].device_kind, flush=True)
    failed = False
    for dtype in (jnp.float32, jnp.bfloat16):
        name_of_dtype = jnp.dtype(dtype).name
        for name, *case in CASES:
            errors, kernel_ms, xla_ms = check(dtype, *case)
            bad = max(errors) > TOLERANCE[name_of_dtype]
            failed |= bad
            print(
                f"[{'FAIL' if bad else 'ok'}] {name} {name_of_dtype} Tq,Tk,offset,start,window="
                f"{tuple(case)}: rel err out/dq/dk/dv "
                + ", ".join(f"{e:.1e}" for e in errors)
                + f"; fwd+bwd kernel {kernel_ms:.2f} ms, blocked XLA {xla_ms:.2f} ms",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
