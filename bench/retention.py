"""Time and memory of the three gated-retention forms as T grows: parallel (O(T^2)), chunkwise
(linear time, memory bounded by a chunk) and recurrent (one token at a time, lax.scan)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.machine import planned_peak, timeit
from bench.runner import Context, Skip, guarded
from yoco_jax.ops.retention import chunkwise_retention, parallel_retention, recurrent_retention


def _recurrent(q, k, v, log_gate):
    b, _, h, dk = q.shape
    state = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)

    def step(state, xs):
        out, state = recurrent_retention(*xs, state)
        return state, out

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_gate))
    return jnp.moveaxis(jax.lax.scan(step, state, xs)[1], 0, 1)


def forms(chunk: int) -> dict:
    return {
        "parallel": parallel_retention,
        "chunkwise": lambda *a: chunkwise_retention(*a, chunk_size=chunk)[0],
        "recurrent": _recurrent,
    }


def flop_floor(form: str, b: int, t: int, h: int, d: int, chunk: int) -> float:
    """Matmul FLOPs: parallel scores every (i, j) pair; chunkwise c x c blocks plus the state;
    recurrent updates and reads the d x d state per token (its state stays in cache, so FLOPs,
    not bytes, bound it)."""
    if form == "parallel":
        return 4 * b * h * d * t * t
    if form == "chunkwise":
        return 4 * b * h * d * (chunk + d) * t
    return 4 * b * h * d * d * t


def case(ctx: Context, form: str, fn, length: int) -> dict:
    r = ctx.profile.retention
    b, h, d, c = r["batch"], r["heads"], r["head_dim"], r["chunk"]
    if not ctx.budget.allows("retention"):
        raise Skip("time budget")
    dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    keys = jax.random.split(jax.random.key(2), 4)
    q, k, v = (jax.random.normal(kk, (b, length, h, d), dtype) for kk in keys[:3])
    log_gate = jax.nn.log_sigmoid(jax.random.normal(keys[3], (b, length, h))) / 16
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(q, k, v, log_gate).compile()
    ctx.compile_s = time.perf_counter() - t0
    seconds = timeit(compiled, q, k, v, log_gate, repeats=5, min_time=1.0, best=True)
    floor = flop_floor(form, b, length, h, d, c) / ctx.matmul_rate
    return {
        "seconds": seconds,
        "ns_per_token": 1e9 * seconds / (b * length),
        "floor_fraction": floor / seconds,
        "planned_peak": planned_peak(compiled),
        "summary": f"{1e3 * seconds:.2f} ms",
    }


def run(ctx: Context) -> list[dict]:
    r = ctx.profile.retention
    limits = {"parallel": r["parallel_max"], "recurrent": r["recurrent_max"]}
    rows = []
    for length in r["lengths"]:
        row = {"length": length}
        for form, fn in forms(r["chunk"]).items():
            if length > limits.get(form, length):
                row[form] = {"note": "not run (too long for this form)"}
                continue
            row[form] = guarded(ctx, f"retention {form} T={length}", case, ctx, form, fn, length)
        rows.append(row)
    points = [(x["length"], x["chunkwise"]["seconds"]) for x in rows if "seconds" in x["chunkwise"]]
    if len(points) > 1:  # least-squares slope of log(time) on log(T): 1 is linear
        xs, ys = (np.log([p[i] for p in points]) for i in (0, 1))
        slope = float(np.polyfit(xs, ys, 1)[0])
        for row in rows:
            row["chunkwise_slope"] = slope
    return rows
