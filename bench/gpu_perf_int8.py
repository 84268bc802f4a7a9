"""bench/gpu_perf.py's `int8` group: decode with the int8 K/V cache against the bf16 one.

    python -m bench.gpu_perf --out $OUT --groups int8 --budget-s 240

- one decode query against a full cache of 128K and 1M entries (batch 1, 24/8 heads, head dim
  128; `cache_attention` with attention_impl=auto: the Pallas split-K decode kernel on a GPU),
  bf16 cache vs int8 cache with float32 scales: ms, GB/s of the cache bytes read, and the int8
  output's relative max error against the bf16 one;
- yoco-3b-1m decode (random bf16 weights, 8 greedy steps in one loop, bench/models.decode) with
  1M tokens of context on a cache of zeros, `kv_cache_dtype` null vs int8: ms per step and the
  speed-up (issue 23 asks >= 1.6x; decode at 1M reads the global K/V once per cross layer).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.attention import _run_timed
from bench.gpu_perf_cases import _attempt
from bench.models import decode, empty_cache, random_params
from yoco_jax import get_config
from yoco_jax.kernels.int8 import quantize
from yoco_jax.ops.attention import cache_attention

FULL = {
    "heads": 24,
    "kv_heads": 8,
    "head_dim": 128,
    "lengths": [131072, 1048576],
    "model": "yoco-3b-1m",
    "context": 1048576,
    "steps": 8,
}
SMOKE = {
    "heads": 6,
    "kv_heads": 2,
    "head_dim": 32,
    "lengths": [256],
    "model": "yoco-tiny",
    "context": 512,
    "steps": 4,
}


def _kernel_row(row, length, sizes, reference):
    keys = jax.random.split(jax.random.key(length), 3)
    shape = (1, length, sizes["kv_heads"], sizes["head_dim"])
    q = jax.random.normal(keys[0], (1, 1, sizes["heads"], sizes["head_dim"]), jnp.bfloat16)
    k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys[1:])
    lengths = jnp.full((1,), length, jnp.int32)
    if row["cache"] == "int8":
        (k, k_scale), (v, v_scale) = jax.jit(quantize)(k), jax.jit(quantize)(v)
        scales = {"k_scale": k_scale, "v_scale": v_scale}
    else:
        scales = {}
    fn = jax.jit(lambda q, k, v, n, s: cache_attention(q, k, v, n, impl="auto", **s))
    seconds = _run_timed(fn, (q, k, v, lengths, scales))
    cache_bytes = sum(x.nbytes for x in (k, v, *scales.values()))
    row["ms"], row["cache_gb_per_s"] = seconds * 1e3, cache_bytes / seconds / 1e9
    out = np.asarray(fn(q, k, v, lengths, scales), np.float32)
    first = reference.setdefault(length, out)
    row["rel_err_vs_bf16"] = float(np.abs(out - first).max() / np.abs(first).max())


def _decode_row(row, cfg, params, context, steps, timings):
    token = jnp.zeros((1, 1), jnp.int32)
    runs = []
    for _ in range(2):  # the first call compiles; each consumes (donates) its cache
        cache = empty_cache(cfg, 1, context + steps, context)
        t0 = time.perf_counter()
        jax.block_until_ready(decode(cfg, params, cache, token, steps))
        runs.append(time.perf_counter() - t0)
        del cache
    row["first_s"], row["ms_per_step"] = runs[0], runs[1] / steps * 1e3
    timings[row["kv_cache_dtype"]] = runs[1]
    if "bf16" in timings and "int8" in timings:
        row["speedup_vs_bf16"] = timings["bf16"] / timings["int8"]


def int8_decode(cfg, deadline, smoke):
    """The kernel rows at each length (bf16 first), then the model's decode at `context`."""
    del cfg  # the attention sizes of gpu_perf_cases; this group has its own
    sizes = SMOKE if smoke else FULL
    reference = {}
    for length in sizes["lengths"]:
        for cache in ("bf16", "int8"):
            row = {"case": "decode attention", "T": length, "cache": cache}
            if not deadline.allows(3 if smoke else 10 + length / 65536):
                yield {**row, "skipped": "time budget"}
                continue
            yield _attempt(row, _kernel_row, length, sizes, reference)
    base = get_config(sizes["model"], dtype="bfloat16", param_dtype="bfloat16")
    params, timings = random_params(base), {}
    for kv in ("bf16", "int8"):
        row = {
            "case": f"{sizes['model']} decode",
            "context": sizes["context"],
            "kv_cache_dtype": kv,
        }
        if not deadline.allows(5 if smoke else 60):
            yield {**row, "skipped": "time budget"}
            continue
        cfg = dataclasses.replace(base, kv_cache_dtype="int8" if kv == "int8" else None)
        yield _attempt(row, _decode_row, cfg, params, sizes["context"], sizes["steps"], timings)
